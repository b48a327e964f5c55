//! The actor runtime in-process: activation, passivation and re-activation keep state exactly;
//! a device whose operator panics is restarted from its last good state and the other devices
//! are untouched; a blocked sink loses nothing and bounds memory (the source stops); a chunk's
//! records go out in parts and the chunk counts as in flight until the last is written.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use actix::System;
use plume::app::{self, OutputPlan, RuntimeOptions};
use plume::clock::Clock;
use plume::output::OutputRecord;
use plume::pipeline::CompiledPipeline;
use plume::plain::PlainRun;
use plume::runtime::ports::{Sink, SinkError};
use plume::runtime::routes::RouteTable;
use plume::runtime::shard::{DeviceObservation, ObserveShard};
use plume::runtime::{ChunkData, RuntimeMetrics};
use plume::spec::parse_pipeline;

fn aq1_pipeline(sink_queue: usize) -> Arc<CompiledPipeline> {
    aq1_pipeline_with(sink_queue, |_| {})
}

fn aq1_pipeline_with(sink_queue: usize, change: impl FnOnce(&mut plume::spec::PipelineSpec)) -> Arc<CompiledPipeline> {
    let text = std::fs::read_to_string(common::repo().join("pipelines/aq1.yaml")).unwrap();
    let mut spec = parse_pipeline("pipelines/aq1.yaml", &text, &|_| None).unwrap();
    spec.runtime.sink_queue = sink_queue;
    change(&mut spec);
    Arc::new(CompiledPipeline::compile(spec).unwrap())
}

/// Collects records in memory; optionally blocks every write until the gate opens.
#[derive(Clone, Default)]
struct MemorySink {
    records: Arc<Mutex<Vec<String>>>,
    gate: Option<Arc<(Mutex<bool>, Condvar)>>,
}

impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError> {
        if let Some(gate) = &self.gate {
            let (open, cv) = &**gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
        }
        self.records
            .lock()
            .unwrap()
            .extend(records.iter().map(|r| r.json.to_string()));
        Ok(())
    }
    fn flush(&mut self) -> Result<u64, SinkError> {
        Ok(0)
    }
    fn finish(&mut self) -> Result<u64, SinkError> {
        Ok(0)
    }
}

fn plan(pipeline: &CompiledPipeline, sink: &MemorySink) -> OutputPlan {
    OutputPlan {
        sinks: vec![Box::new(sink.clone())],
        routes: RouteTable::everything_to(pipeline, 0),
        dead_letters: Default::default(),
    }
}

/// The plain loop's records for these lines.
fn oracle(pipeline: &CompiledPipeline, lines: &[String]) -> Vec<String> {
    let mut run = PlainRun::new(pipeline);
    let mut out = Vec::new();
    let mut sink = |r: OutputRecord| out.push(r.json.to_string());
    for (i, l) in lines.iter().enumerate() {
        run.push_line(l.as_bytes(), "test", i as u64 + 1, plume::clock::now_ms(), &mut sink);
    }
    run.finish(&mut sink);
    out
}

/// Records grouped per device in order (dead letters and summary apart, sorted).
fn by_device(records: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in records {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let device = v.get("device").and_then(|d| d.as_str()).unwrap_or("").to_string();
        map.entry(device).or_default().push(line.clone());
    }
    if let Some(v) = map.get_mut("") {
        v.sort();
    }
    map
}

fn aq1_lines(devices: u32, events: u64, seed: u64) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = common::aq1_input(dir.path(), devices, events, seed);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn chunk_of(lines: &[String], first_line: u64) -> ChunkData {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    ChunkData::Lines {
        bytes: bytes.into(),
        first_line,
        start_offset: 0,
    }
}

/// Sends `lines` as chunks of `size` lines, each when there is room for it.
async fn send_in_chunks(feeder: &mut plume::runtime::ports::ChunkFeeder, lines: &[String], size: usize) {
    for (i, part) in lines.chunks(size).enumerate() {
        let permit = feeder.room().await;
        feeder.send(
            chunk_of(part, (i * size + 1) as u64),
            plume::model::Position::START,
            permit,
        );
    }
}

/// Lets the writes a [`MemorySink`] holds back through.
fn open_gate(gate: &(Mutex<bool>, Condvar)) {
    let (open, cv) = gate;
    *open.lock().unwrap() = true;
    cv.notify_all();
}

/// The end of a run that read `readings`: the runtime shut down, the records the sink got.
async fn run_ended(
    rt: app::Runtime,
    done: tokio::sync::oneshot::Receiver<plume::runtime::coordinator::RunOutcome>,
    readings: u64,
    sink: &MemorySink,
) -> Vec<String> {
    let outcome = done.await.unwrap();
    assert_eq!(outcome.totals.readings, readings);
    rt.shut_down();
    sink.records.lock().unwrap().clone()
}

async fn settle(metrics: &RuntimeMetrics) {
    let started = Instant::now();
    while metrics.chunks_in_flight.load(Ordering::Relaxed) > 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "chunks never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The runtime on 2 shards with `clock` for processing time, every record to `sink`.
fn start_on_clock(
    pipeline: &Arc<CompiledPipeline>,
    sink: &MemorySink,
    clock: &Clock,
) -> (
    app::Runtime,
    tokio::sync::oneshot::Receiver<plume::runtime::coordinator::RunOutcome>,
) {
    app::start(
        pipeline.clone(),
        plan(pipeline, sink),
        1,
        RuntimeOptions {
            shards: Some(2),
            clock: clock.clone(),
            ..Default::default()
        },
    )
}

/// What every shard can be observed to hold.
async fn observe_shards(rt: &app::Runtime) -> Vec<plume::runtime::shard::ShardObservation> {
    let mut all = Vec::new();
    for s in &rt.shards {
        all.push(s.send(ObserveShard { devices: vec![] }).await.unwrap());
    }
    all
}

#[test]
fn passivation_and_reactivation_keep_state_exactly() {
    // devices idle for an hour of processing time are passivated by the shards' own timer; the
    // runtime's clock is a manual one, moved two hours on between chunks, so every device goes
    // idle between chunks (at once, not an hour later) and none while a chunk is processed
    let pipeline = aq1_pipeline_with(10_000, |spec| {
        spec.runtime.passivate_after = plume::spec::DurationSpec::from_millis(3_600_000);
    });
    let lines = aq1_lines(40, 8_000, 5);
    let expected = oracle(&pipeline, &lines);
    let sink = MemorySink::default();
    let clock = Clock::manual(plume::clock::now_ms());
    let (got, shard_counters) = System::new().block_on({
        let (pipeline, sink, lines, clock) = (pipeline.clone(), sink.clone(), lines.clone(), clock.clone());
        async move {
            let (rt, done) = start_on_clock(&pipeline, &sink, &clock);
            let mut feeder = rt.feeder(0, "test");
            let observe = || observe_shards(&rt);
            for (i, part) in lines.chunks(1_000).enumerate() {
                let permit = feeder.room().await;
                feeder.send(
                    chunk_of(part, (i * 1000 + 1) as u64),
                    plume::model::Position::START,
                    permit,
                );
                settle(&rt.metrics).await;
                let active: u64 = observe().await.iter().map(|o| o.counters.active).sum();
                assert!(
                    active > 0,
                    "the clock stood still: no device went idle during the chunk"
                );
                // two hours later every device is idle: the passivation timer passivates them,
                // and each is re-activated from its encoded state by the next reading
                clock.advance(7_200_000);
                let started = Instant::now();
                while observe().await.iter().map(|o| o.counters.active).sum::<u64>() > 0 {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "devices were never passivated"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            let passivated = RuntimeMetrics::get(&rt.metrics.passivations);
            assert!(passivated >= 40 * 7, "devices were passivated ({passivated})");
            let counters: Vec<_> = observe().await.into_iter().map(|o| o.counters).collect();
            feeder.end();
            let outcome = done.await.unwrap();
            assert_eq!(outcome.totals.readings, 8_000);
            rt.shut_down();
            (sink.records.lock().unwrap().clone(), counters)
        }
    });
    let reactivations: u64 = shard_counters.iter().map(|c| c.reactivations).sum();
    let passive: u64 = shard_counters.iter().map(|c| c.passive).sum();
    assert!(reactivations >= 40 * 6, "re-activations: {reactivations}");
    assert_eq!(passive, 40, "every device passive at the end");
    assert_eq!(by_device(&got), by_device(&expected));
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_panicking_device_restarts_from_its_last_good_state_and_others_are_untouched() {
    let pipeline = aq1_pipeline(10_000);
    let mut lines = aq1_lines(30, 6_000, 9);
    let clean = lines.clone();
    // two poison readings for one device in the middle of one chunk (chunks of 500 lines:
    // 3,000 to 3,499), after some of its readings there: the device restarts from its state
    // before the chunk and applies those again, and after the second panic again without the
    // first poison
    let victim = "dev-000003";
    for poison_at in [3_400, 3_250] {
        let ts: i64 = serde_json::from_str::<serde_json::Value>(&lines[poison_at]).unwrap()["ts"]
            .as_i64()
            .unwrap();
        lines.insert(
            poison_at,
            format!(r#"{{"device":"{victim}","ts":{ts},"pm25":666.0,"co2":500.0}}"#),
        );
    }
    assert!(
        lines[3_000..3_250].iter().any(|l| l.contains(victim)),
        "the victim has readings in the chunk before the poison"
    );
    let expected = oracle(&pipeline, &clean);
    let pm25 = pipeline.slot_of("pm25").unwrap();
    let hook: plume::runtime::shard::FaultHook = Arc::new(move |device, reading| {
        if device == victim && reading.values[pm25] == 666.0 {
            panic!("injected operator fault");
        }
    });
    let sink = MemorySink::default();
    let (got, victim_counters, other_counters, restarts) = System::new().block_on({
        let (pipeline, sink) = (pipeline.clone(), sink.clone());
        async move {
            let options = RuntimeOptions {
                shards: Some(2),
                fault_hook: Some(hook),
                ..Default::default()
            };
            let (rt, done) = app::start(pipeline.clone(), plan(&pipeline, &sink), 1, options);
            let mut feeder = rt.feeder(0, "test");
            send_in_chunks(&mut feeder, &lines, 500).await;
            settle(&rt.metrics).await;
            let mut victim_counters = None;
            let mut other_counters = None;
            for s in &rt.shards {
                let seen = s
                    .send(ObserveShard {
                        devices: vec![victim.into(), "dev-000004".into()],
                    })
                    .await
                    .unwrap();
                for (device, observed) in seen.devices {
                    let DeviceObservation::Active { counters, .. } = observed else {
                        panic!("{device} is passive")
                    };
                    if device == victim {
                        victim_counters = Some(counters);
                    } else {
                        other_counters = Some(counters);
                    }
                }
            }
            feeder.end();
            let outcome = done.await.unwrap();
            assert_eq!(outcome.totals.dead_letters, 2);
            let restarts = RuntimeMetrics::get(&rt.metrics.restarts);
            rt.shut_down();
            (
                sink.records.lock().unwrap().clone(),
                victim_counters.unwrap(),
                other_counters.unwrap(),
                restarts,
            )
        }
    });
    assert_eq!(restarts, 2);
    assert_eq!(victim_counters.restarts, 2);
    assert_eq!(victim_counters.poisoned_readings, 2);
    assert_eq!(other_counters.restarts, 0);
    let mut got = by_device(&got);
    let mut expected = by_device(&expected);
    // apart from the dead letter and the summary's dead-letter count, exactly the clean run
    let extra = got.remove("").unwrap();
    let want_extra = expected.remove("").unwrap();
    assert_eq!(got, expected);
    let dead: Vec<&String> = extra.iter().filter(|l| l.contains("\"dead_letter\"")).collect();
    assert_eq!(dead.len(), 2);
    for d in dead {
        assert!(d.contains("injected operator fault"), "{d}");
        assert!(d.contains("666"), "the raw reading is kept: {d}");
    }
    let summary = extra.iter().find(|l| l.contains("\"summary\"")).unwrap();
    assert_eq!(
        summary,
        &want_extra[0].replace("\"dead_letters\":0", "\"dead_letters\":2")
    );
}

#[test]
fn a_blocked_sink_loses_nothing_and_stops_the_source_instead_of_growing_memory() {
    let pipeline = aq1_pipeline(200);
    let lines = aq1_lines(100, 40_000, 2);
    let expected = oracle(&pipeline, &lines);
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let sink = MemorySink {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let got = System::new().block_on({
        let (pipeline, sink) = (pipeline.clone(), sink.clone());
        async move {
            let options = RuntimeOptions {
                shards: Some(2),
                chunks_in_flight: 3,
                ..Default::default()
            };
            let (rt, done) = app::start(pipeline.clone(), plan(&pipeline, &sink), 1, options);
            let mut feeder = rt.feeder(0, "test");
            let finished = Arc::new(AtomicBool::new(false));
            let source = {
                let finished = finished.clone();
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for (i, part) in lines.chunks(400).enumerate() {
                        let permit = feeder.wait_for_room();
                        feeder.send(
                            chunk_of(part, (i * 400 + 1) as u64),
                            plume::model::Position::START,
                            permit,
                        );
                    }
                    feeder.end();
                    finished.store(true, Ordering::Relaxed);
                })
            };
            // the sink is blocked: the source must stall with a bounded amount in flight
            let mut max_in_flight = 0;
            let mut max_waiting = 0;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                max_in_flight = max_in_flight.max(rt.metrics.chunks_in_flight.load(Ordering::Relaxed));
                max_waiting = max_waiting.max(rt.sinks[0].waiting());
            }
            assert!(
                !finished.load(Ordering::Relaxed),
                "the source should be stalled by the blocked sink"
            );
            assert!(max_in_flight <= 3, "chunks in flight: {max_in_flight}");
            assert!(max_waiting <= 200, "records queued for the sink: {max_waiting}");
            // unblock: everything arrives
            open_gate(&gate);
            source.join().unwrap();
            run_ended(rt, done, 40_000, &sink).await
        }
    });
    assert_eq!(got.len(), expected.len());
    assert_eq!(by_device(&got), by_device(&expected));
}

#[test]
fn a_passivated_device_that_goes_silent_is_still_reported_offline() {
    // indoor-air.yaml reports a room offline after 10 minutes of silence; with the default
    // `passivate_after` (5 minutes) a silent room is passivated before it is offline. The
    // shard's deadline index wakes it at its offline time. (Before the index, passive devices
    // got no time at all and this run reported nothing.)
    let text = std::fs::read_to_string(common::repo().join("pipelines/indoor-air.yaml")).unwrap();
    let mut spec = parse_pipeline("pipelines/indoor-air.yaml", &text, &|_| None).unwrap();
    // (the file keeps devices for 30 minutes; the default is 5)
    spec.runtime.passivate_after = plume::spec::DurationSpec::from_millis(5 * 60_000);
    let pipeline = Arc::new(CompiledPipeline::compile(spec).unwrap());
    let start = plume::clock::now_ms();
    let lines: Vec<String> = (0..3)
        .flat_map(|d| {
            (0..5).map(move |i| {
                format!(
                    r#"{{"device":"room-{d}","ts":{},"pm25":8,"co2":600,"voc":100,"temp":21,"hum":40}}"#,
                    start + i * 10_000
                )
            })
        })
        .collect();
    let sink = MemorySink::default();
    let clock = Clock::manual(start);
    let offline = |sink: &MemorySink| {
        sink.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(r#""status":"offline""#))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (reports, wakeups) = System::new().block_on({
        let (pipeline, sink, clock) = (pipeline.clone(), sink.clone(), clock.clone());
        async move {
            let (rt, done) = start_on_clock(&pipeline, &sink, &clock);
            let mut feeder = rt.feeder(0, "test");
            let observe = || async {
                observe_shards(&rt)
                    .await
                    .into_iter()
                    .map(|o| o.counters)
                    .collect::<Vec<_>>()
            };
            let wait = |what: &'static str, done: Box<dyn Fn(&[plume::runtime::shard::ShardCounters]) -> bool>| {
                let observe = &observe;
                async move {
                    let started = Instant::now();
                    loop {
                        if done(&observe().await) {
                            return;
                        }
                        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            let permit = feeder.room().await;
            feeder.send(chunk_of(&lines, 1), plume::model::Position::START, permit);
            settle(&rt.metrics).await;
            // 6 minutes of silence: passivated, not offline yet
            clock.advance(6 * 60_000);
            wait(
                "the rooms were never passivated",
                Box::new(|c| c.iter().map(|c| c.active).sum::<u64>() == 0),
            )
            .await;
            assert!(offline(&sink).is_empty(), "{:?}", offline(&sink));
            // 11 minutes after their last readings: each room is reported offline, once, and
            // is passive again
            clock.advance(5 * 60_000);
            let started = Instant::now();
            while offline(&sink).len() < 3 {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "passive rooms were never reported offline: {:?}",
                    observe().await
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let woken = |c: &[plume::runtime::shard::ShardCounters]| c.iter().map(|c| c.deadline_wakeups).sum::<u64>();
            let wakeups = woken(&observe().await);
            // reported: nothing is due any more, however long they stay quiet
            clock.advance(3_600_000);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let counters = observe().await;
            assert_eq!(woken(&counters), wakeups, "a room with nothing due was woken");
            assert_eq!(counters.iter().map(|c| c.active).sum::<u64>(), 0);
            assert_eq!(counters.iter().map(|c| c.passive).sum::<u64>(), 3);
            let reports = offline(&sink);
            feeder.end();
            done.await.unwrap();
            rt.shut_down();
            (reports, wakeups)
        }
    });
    // each room: its offline report, and its minute window's idle flush (`idle_flush: 5m`)
    // when the passivation timer came before the tick at 6 minutes
    assert!((3..=6).contains(&wakeups), "{wakeups} wake-ups for 3 rooms");
    assert_eq!(reports.len(), 3, "{reports:?}");
    for d in 0..3 {
        let report = reports
            .iter()
            .find(|r| r.contains(&format!(r#""device":"room-{d}""#)))
            .unwrap_or_else(|| panic!("room-{d} was not reported offline: {reports:?}"));
        // last seen: the processing time of its last reading (the clock when it arrived)
        assert!(report.contains(&format!(r#""last_seen":{start}"#)), "{report}");
    }
}

/// A first reading whose keys come in another order than every reading after it: the decoder's
/// fast path matches keys against the order it learned from its first reading, and the shards,
/// counting across chunks, have it learn the later readings' order (chunks of 200 lines: fewer
/// than the 256 in a row it takes, whichever shard they go to). The records are the plain
/// loop's, which learns it too.
#[test]
fn the_shards_learn_the_key_order_of_the_readings_after_a_first_in_another() {
    let mut lines = aq1_lines(20, 4_000, 3);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let moved = ["ts", "device", "co2", "pm25", "voc", "temp", "hum"];
    lines[0] = format!("{{{}}}", moved.map(|k| format!("{k:?}:{}", first[k])).join(","));
    let aq1_order: Vec<String> = ["device", "ts", "pm25", "co2", "voc", "temp", "hum"]
        .map(String::from)
        .to_vec();
    assert!(lines[1].starts_with(r#"{"device":"#), "{}", lines[1]);
    let oracle_pipeline = aq1_pipeline(10_000);
    let expected = oracle(&oracle_pipeline, &lines);
    assert_eq!(
        oracle_pipeline.decoder.learned_key_order(),
        Some(aq1_order.clone()),
        "the plain loop learned the later readings' order"
    );
    let pipeline = aq1_pipeline(10_000);
    let sink = MemorySink::default();
    let clock = Clock::manual(plume::clock::now_ms());
    let got = System::new().block_on({
        let (pipeline, sink, lines) = (pipeline.clone(), sink.clone(), lines.clone());
        async move {
            let (rt, done) = start_on_clock(&pipeline, &sink, &clock);
            let mut feeder = rt.feeder(0, "test");
            send_in_chunks(&mut feeder, &lines, 200).await;
            feeder.end();
            run_ended(rt, done, 4_000, &sink).await
        }
    });
    assert_eq!(
        pipeline.decoder.learned_key_order(),
        Some(aq1_order),
        "the shards learned the later readings' order"
    );
    assert_eq!(by_device(&got), by_device(&expected));
}

#[test]
fn a_chunks_records_go_out_in_parts_and_the_chunk_is_in_flight_until_the_last_is_written() {
    let pipeline = aq1_pipeline(1 << 20);
    let lines = aq1_lines(100, 80_000, 4);
    let expected = oracle(&pipeline, &lines);
    let expected_bytes: usize = expected.iter().map(|r| r.len() + 1).sum();
    assert!(
        expected_bytes > 4 * plume::runtime::SEND_AFTER_BYTES,
        "the chunk's records ({expected_bytes} bytes) must fill several parts on each shard"
    );
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let sink = MemorySink {
        gate: Some(gate.clone()),
        ..Default::default()
    };
    let got = System::new().block_on({
        let (pipeline, sink, lines) = (pipeline.clone(), sink.clone(), lines.clone());
        async move {
            let options = RuntimeOptions {
                shards: Some(2),
                ..Default::default()
            };
            let (rt, done) = app::start(pipeline.clone(), plan(&pipeline, &sink), 1, options);
            let mut feeder = rt.feeder(0, "test");
            // the whole input as one chunk
            send_in_chunks(&mut feeder, &lines, lines.len()).await;
            let started = Instant::now();
            while rt.metrics.readings.load(Ordering::Relaxed) < 80_000 {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the shards never ran the chunk"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // the shards are done with the chunk, and sent its records in parts as they went:
            // once the hub's count stops moving it has them all
            let (mut last, mut still, started) = (u64::MAX, 0, Instant::now());
            let counters = loop {
                let counters = rt.hub.send(plume::runtime::hub::ReportHubCounters).await.unwrap();
                still = if counters.records == last { still + 1 } else { 0 };
                last = counters.records;
                if still == 5 && last > 0 {
                    break counters;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "records never reached the hub"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let from_the_chunk = counters.records as usize;
            assert!(
                counters.batches >= 4,
                "one chunk of {from_the_chunk} records on two shards reached the hub in {} batches",
                counters.batches
            );
            // none is written yet (the sink is blocked): the chunk still holds its place
            assert_eq!(rt.metrics.chunks_in_flight.load(Ordering::Relaxed), 1);
            open_gate(&gate);
            settle(&rt.metrics).await;
            let written = sink.records.lock().unwrap().len();
            assert!(
                written >= from_the_chunk,
                "the chunk left the count with {written} of its {from_the_chunk} records written"
            );
            feeder.end();
            run_ended(rt, done, 80_000, &sink).await
        }
    });
    assert_eq!(got.len(), expected.len());
    assert_eq!(by_device(&got), by_device(&expected));
}
