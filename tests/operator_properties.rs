//! Property tests of the operator library (proptest; moved out of `src/operators` so that the
//! operators layer imports nothing but `model`), over whole operators and a compiled chain
//! that holds every operator kind.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use smallvec::smallvec;

use plume::operators::baseline::Learner;
use plume::operators::*;
use plume::output::RecordFormatter;
use plume::pipeline::CompiledPipeline;
use plume::spec::{Aggregate, BaselineMethod, Direction};

/// A pipeline with every operator kind (and every baseline and smoothing method), each reading
/// what an earlier one derived where it can.
const EVERY_KIND: &str = r#"
version: 1
pipeline: every-kind
decode:
  time: { field: ts }
  fields:
    pm25: { min: 0, max: 500 }
    co2: { min: 300, max: 5000, out_of_range: keep }
operators:
  - health: { name: health, offline_after: 10m, flatline: [ { field: co2, readings: 4 } ], report_every: 7 }
  - window:
      name: window
      every: 60s
      slide: 20s
      lateness: 5s
      idle_flush: 2m
      fields: [pm25, co2]
      aggregates: [count, sum, avg, min, max, last, stddev]
  - calibrate: { name: pm25_cal, field: pm25, table: { dev-1: { offset: 1.5, gain: 0.9 } } }
  - hysteresis:
      name: pm25_event
      field: pm25
      enter: 35
      exit: 25
      min_duration: 20s
      min_clear: 10s
      severity: { moderate: 35, high: 55 }
  - baseline: { name: co2_ewma, field: co2, method: ewma, alpha: 0.05, emit: every }
  - baseline: { name: co2_welford, field: co2, method: welford, warmup: 5, zscore: 1.5 }
  - baseline: { name: co2_min, field: co2, method: rolling_min, days: 2 }
  - baseline: { name: pm25_profile, field: pm25, method: hourly_profile, alpha: 0.2, utc_offset_hours: 2 }
  - calibrate: { name: co2_abc, field: co2, baseline: co2_min, reference: 420 }
  - smooth: { name: pm25_sma, field: pm25, method: sma, n: 4, emit: true }
  - smooth: { name: co2_smooth, field: co2, method: ewma, alpha: 0.3, emit: true }
  - smooth: { name: pm25_holt, field: pm25, method: holt, alpha: 0.5, beta: 0.3, output: pm25_trend, emit: true }
  - threshold: { name: co2_high, field: co2, above: 1200 }
  - threshold: { name: pm25_vs_profile, field: pm25_smooth, above: 0, relative_to: pm25_profile, factor: 1.5, changes_only: false }
"#;

fn every_kind_pipeline() -> CompiledPipeline {
    let spec = plume::spec::parse_pipeline("every-kind.yaml", EVERY_KIND, &|_| None).expect("the test pipeline parses");
    CompiledPipeline::compile(spec).expect("the test pipeline compiles")
}

/// One step of a device's life: a reading arriving `wait` ms of processing time after the
/// previous step, or only time passing.
#[derive(Debug, Clone)]
enum Step {
    Reading {
        ts_step: i64,
        pm25: Option<f64>,
        co2: Option<f64>,
        wait: i64,
    },
    Tick {
        wait: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    // values that hit the thresholds, repeat (flatlines) and leave the declared ranges
    let pm25 = prop::sample::select(vec![
        None,
        Some(3.0),
        Some(12.5),
        Some(30.0),
        Some(36.0),
        Some(60.0),
        Some(120.0),
        Some(700.0),
    ]);
    let co2 = prop::sample::select(vec![
        None,
        Some(410.0),
        Some(410.0),
        Some(420.0),
        Some(800.0),
        Some(1250.0),
        Some(6000.0),
        Some(250.0),
    ]);
    let ts_step = prop_oneof![8 => -30_000i64..40_000, 1 => 3_600_000i64..30_000_000];
    prop_oneof![
        9 => (ts_step, pm25, co2, 0i64..200_000).prop_map(|(ts_step, pm25, co2, wait)| Step::Reading { ts_step, pm25, co2, wait }),
        1 => (0i64..900_000).prop_map(|wait| Step::Tick { wait }),
    ]
}

/// Runs `steps` through `chain` (decoding each reading from JSON like a source would),
/// starting at event time `ts` and processing time `now`.
fn run_steps(
    pipeline: &CompiledPipeline,
    chain: &mut DeviceChain,
    steps: &[Step],
    ts: &mut i64,
    now: &mut i64,
    out: &mut Vec<Emit>,
) {
    for step in steps {
        match *step {
            Step::Reading {
                ts_step,
                pm25,
                co2,
                wait,
            } => {
                *ts += ts_step;
                *now += wait;
                let mut line = format!(r#"{{"device":"dev-1","ts":{}"#, *ts);
                if let Some(p) = pm25 {
                    line.push_str(&format!(r#","pm25":{p}"#));
                }
                if let Some(c) = co2 {
                    line.push_str(&format!(r#","co2":{c}"#));
                }
                line.push('}');
                let decoded = pipeline
                    .decoder
                    .decode(line.as_bytes(), None, *now)
                    .expect("test lines decode");
                chain.on_reading(decoded.reading, *now, out);
            }
            Step::Tick { wait } => {
                *now += wait;
                chain.on_time(*now, out);
            }
        }
    }
}

const START_TS: i64 = 1_767_225_600_000;
const START_NOW: i64 = 1_800_000_000_000;

fn debug_all(emits: &[Emit]) -> Vec<String> {
    emits.iter().map(|e| format!("{e:?}")).collect()
}

#[test]
fn the_every_kind_pipeline_has_every_kind_and_formats_every_result() {
    let pipeline = every_kind_pipeline();
    let kinds: BTreeSet<&str> = pipeline.operators.iter().map(|o| o.kind()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "baseline",
            "calibrate",
            "health",
            "hysteresis",
            "smooth",
            "threshold",
            "window"
        ])
    );
    let mut chain = pipeline.new_chain("dev-1");
    let (mut ts, mut now) = (START_TS, START_NOW);
    let mut steps = Vec::new();
    for (i, pm25) in [5.0, 40.0, 45.0, 50.0, 60.0, 40.0, 20.0, 10.0, 10.0, 700.0, 5.0]
        .into_iter()
        .enumerate()
    {
        let co2 = [410.0, 410.0, 410.0, 410.0, 1300.0, 6000.0, 900.0, 420.0][i % 8];
        steps.push(Step::Reading {
            ts_step: 10_000,
            pm25: Some(pm25),
            co2: Some(co2),
            wait: 10_000,
        });
    }
    steps.push(Step::Reading {
        ts_step: -100_000,
        pm25: Some(1.0),
        co2: None,
        wait: 1_000,
    });
    steps.push(Step::Tick { wait: 3_600_000 });
    steps.push(Step::Reading {
        ts_step: 200_000,
        pm25: Some(1.0),
        co2: Some(405.0),
        wait: 1_000,
    });
    let mut out = Vec::new();
    run_steps(&pipeline, &mut chain, &steps, &mut ts, &mut now, &mut out);
    chain.on_end(&mut out);
    let formatter = RecordFormatter::new(&pipeline);
    let mut types = BTreeSet::new();
    let mut health = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for emit in &out {
        let record = formatter.format("dev-1", emit);
        let json: serde_json::Value = serde_json::from_str(&record.json).expect("records are JSON");
        assert_eq!(json["type"], record.kind.as_str());
        assert_eq!(json["operator"], pipeline.operator_name(emit.op()));
        if record.kind == plume::model::RecordKind::Health {
            health.insert(json["status"].as_str().unwrap().to_string());
        }
        types.insert(record.kind.as_str());
        ids.insert(record.id);
    }
    assert_eq!(
        types,
        BTreeSet::from([
            "baseline",
            "deviation",
            "event_end",
            "event_update",
            "event_start",
            "health",
            "late",
            "smoothed",
            "threshold",
            "window"
        ])
    );
    assert_eq!(
        health,
        BTreeSet::from(["flatline", "flatline_cleared", "offline", "online", "report"].map(String::from))
    );
    // baseline `every` and the final report of the same reading say the same thing: one id
    let baseline_every_and_final = 1;
    assert_eq!(
        ids.len(),
        out.len() - baseline_every_and_final,
        "ids are unique per result"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Snapshot at any point (through the stored bytes), restore, continue: exactly the output
    /// of the uninterrupted run, for a chain with every operator kind.
    #[test]
    fn snapshot_restore_continue_equals_an_uninterrupted_run(steps in prop::collection::vec(step(), 1..120)) {
        let pipeline = every_kind_pipeline();
        let mut whole = pipeline.new_chain("dev-1");
        let (mut ts, mut now) = (START_TS, START_NOW);
        let mut expected = Vec::new();
        // positions (ts, now, emits so far) and snapshots before each step
        let mut cuts = Vec::with_capacity(steps.len() + 1);
        for i in 0..=steps.len() {
            cuts.push((ts, now, expected.len(), whole.snapshot().encode()));
            if i < steps.len() {
                run_steps(&pipeline, &mut whole, &steps[i..=i], &mut ts, &mut now, &mut expected);
            }
        }
        whole.on_end(&mut expected);
        let expected = debug_all(&expected);

        for (i, (ts_at, now_at, emitted, bytes)) in cuts.into_iter().enumerate() {
            let snapshot = DeviceSnapshot::decode(&bytes).expect("a snapshot decodes");
            prop_assert_eq!(snapshot.encode(), bytes.clone(), "encoding is stable");
            let mut restored = DeviceChain::restore(&pipeline.operators, "dev-1", snapshot, false).expect("restores");
            let (mut ts, mut now) = (ts_at, now_at);
            let mut rest = Vec::new();
            run_steps(&pipeline, &mut restored, &steps[i..], &mut ts, &mut now, &mut rest);
            restored.on_end(&mut rest);
            let mut got = expected[..emitted].to_vec();
            got.extend(debug_all(&rest));
            prop_assert_eq!(&got, &expected, "restored before step {}", i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A copy made with `clone_from` (as a shard keeps each device's last good state, into a
    /// copy that held another device's state before) continues exactly as the original, for a
    /// chain with every operator kind: the same snapshot, the same output.
    #[test]
    fn a_chain_copied_into_another_continues_as_the_original(
        lived in prop::collection::vec(step(), 0..80),
        other in prop::collection::vec(step(), 0..80),
        rest in prop::collection::vec(step(), 1..60),
    ) {
        let pipeline = every_kind_pipeline();
        let (mut original, mut copy) = (pipeline.new_chain("dev-1"), pipeline.new_chain("dev-1"));
        let (mut ts, mut now) = (START_TS, START_NOW);
        let mut ignored = Vec::new();
        run_steps(&pipeline, &mut original, &lived, &mut ts, &mut now, &mut ignored);
        let (mut other_ts, mut other_now) = (START_TS + 7_000, START_NOW);
        run_steps(&pipeline, &mut copy, &other, &mut other_ts, &mut other_now, &mut ignored);
        copy.clone_from(&original);
        prop_assert_eq!(copy.snapshot().encode(), original.snapshot().encode());
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let (ts0, now0) = (ts, now);
        run_steps(&pipeline, &mut original, &rest, &mut ts, &mut now, &mut expected);
        original.on_end(&mut expected);
        let (mut ts, mut now) = (ts0, now0);
        run_steps(&pipeline, &mut copy, &rest, &mut ts, &mut now, &mut got);
        copy.on_end(&mut got);
        prop_assert_eq!(debug_all(&got), debug_all(&expected));
    }
}

fn window_op(size: i64, slide: i64, lateness: i64) -> WindowOp {
    let aggs = vec![
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
    ];
    WindowOp::new(Arc::new(WindowConfig::new(
        0,
        "w",
        size,
        slide,
        lateness,
        None,
        vec![(0, "pm25".into(), aggs)],
    )))
}

/// Every window emitted for `readings` in that order, and whether any was late.
fn windows_of(mut op: WindowOp, readings: &[(i64, f64)]) -> (Vec<Emit>, bool) {
    let mut out = Vec::new();
    let mut late = false;
    for &(ts, x) in readings {
        let mut r = Reading {
            ts,
            values: smallvec![x],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        };
        late |= op.on_reading(&mut r, 0, &mut out) == Flow::Late;
        op.after_reading(0, &mut out);
    }
    op.on_end(&mut out);
    (out, late)
}

fn window_shape() -> impl Strategy<Value = (i64, i64)> {
    prop::sample::select(vec![
        (60_000, 60_000),
        (10_000, 10_000),
        (60_000, 20_000),
        (30_000, 7_500),
        (45_000, 30_000),
    ])
}

proptest! {
    /// Readings that arrive out of order but never later than the allowed lateness (arrival =
    /// event time + a delay below the lateness, like the aq1 generator) give the same windows as
    /// the same readings in event-time order.
    #[test]
    fn window_results_do_not_depend_on_arrival_order_within_the_lateness(
        (size, slide) in window_shape(),
        lateness in 1i64..20_000,
        origin in -200_000i64..200_000,
        readings in prop::collection::vec((0i64..400_000, 0u32..1_000, 0.0f64..1.0), 1..80),
    ) {
        // integer values: sums are exact in any order
        let timed: Vec<(i64, f64, i64)> = readings
            .iter()
            .map(|&(offset, value, delay)| (origin + offset, f64::from(value), (delay * lateness as f64) as i64))
            .collect();
        let mut arrival = timed.clone();
        arrival.sort_by_key(|&(ts, _, delay)| ts + delay.min(lateness - 1));
        let mut in_order = timed;
        in_order.sort_by_key(|&(ts, _, _)| ts);
        let strip = |v: &[(i64, f64, i64)]| v.iter().map(|&(ts, x, _)| (ts, x)).collect::<Vec<_>>();
        let (mut shuffled, late) = windows_of(window_op(size, slide, lateness), &strip(&arrival));
        prop_assert!(!late, "no reading is late");
        let (ordered, late) = windows_of(window_op(size, slide, lateness), &strip(&in_order));
        prop_assert!(!late);
        let start = |e: &Emit| match e {
            Emit::Window { start, .. } => *start,
            other => panic!("{other:?}"),
        };
        prop_assert!(ordered.windows(2).all(|w| start(&w[0]) < start(&w[1])), "ascending, each once");
        shuffled.sort_by_key(start);
        prop_assert_eq!(shuffled, ordered);
    }

    /// Hysteresis: events alternate start/end (an end always closes the start before it), and a
    /// reading strictly inside the band never changes the state, with or without debounce.
    #[test]
    fn hysteresis_alternates_and_never_flaps_inside_the_band(
        below in any::<bool>(),
        enter_half in 40u32..120,
        gap_half in 1u32..40,
        min_duration in prop::sample::select(vec![0i64, 15_000, 60_000]),
        min_clear in prop::sample::select(vec![0i64, 10_000, 45_000]),
        readings in prop::collection::vec((-5_000i64..20_000, 0u32..200), 1..300),
    ) {
        let enter = f64::from(enter_half) / 2.0;
        let exit = if below { enter + f64::from(gap_half) / 2.0 } else { enter - f64::from(gap_half) / 2.0 };
        let mut op = HysteresisOp::new(Arc::new(HysteresisConfig {
            index: 0,
            name: "ev".into(),
            slot: 0,
            field: "x".into(),
            enter,
            exit,
            direction: if below { Direction::Below } else { Direction::Above },
            min_duration_ms: min_duration,
            min_clear_ms: min_clear,
            severity: vec![],
            backfill_after_ms: None,
            escalate_after_ms: 0,
            de_escalate_after_ms: None,
            remind_every_ms: None,
            timeout_ms: None,
            suspect: plume::operators::hysteresis::Suspect::Use,
        }));
        let (low, high) = if below { (enter, exit) } else { (exit, enter) };
        let mut out = Vec::new();
        let mut ts = 0i64;
        for &(step, half) in &readings {
            ts += step;
            let x = f64::from(half) / 2.0;
            let was_open = op.state().open.is_some();
            let before = out.len();
            op.on_reading(&mut Reading { ts, values: smallvec![x], out_of_range: 0, arrival: 0, suspect: 0 }, 0, &mut out);
            prop_assert!(out.len() - before <= 1);
            if low < x && x < high {
                prop_assert_eq!(out.len(), before, "{} inside ({}, {}) emitted", x, low, high);
                prop_assert_eq!(op.state().open.is_some(), was_open, "{} inside the band changed the state", x);
            }
        }
        let mut open: Option<(u64, i64)> = None;
        for e in &out {
            match (e, open) {
                (Emit::EventStart { seq, start_ts, .. }, None) => open = Some((*seq, *start_ts)),
                (Emit::EventEnd { seq, start_ts, .. }, Some(started)) => {
                    prop_assert_eq!((*seq, *start_ts), started);
                    open = None;
                }
                (e, _) => prop_assert!(false, "{:?} out of turn in {:?}", e, out),
            }
        }
    }
}

/// `n` values of `level` plus uniform noise in `[-amplitude, amplitude)`.
fn noisy(seed: u64, level: f64, amplitude: f64, n: usize) -> Vec<f64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|_| level + amplitude * (2.0 * rng.random::<f64>() - 1.0))
        .collect()
}

fn baseline_op(method: BaselineMethod, tweak: impl FnOnce(&mut BaselineConfig)) -> BaselineOp {
    let mut cfg = BaselineConfig::new(0, "b", 0, "x", method);
    cfg.output_slot = Some(1);
    tweak(&mut cfg);
    BaselineOp::new(Arc::new(cfg))
}

/// Feeds `(ts, x)`; returns the derived value after the last reading.
fn learn(op: &mut BaselineOp, readings: impl IntoIterator<Item = (i64, f64)>) -> f64 {
    let mut derived = f64::NAN;
    for (ts, x) in readings {
        let mut r = Reading {
            ts,
            values: smallvec![x, ABSENT],
            out_of_range: 0,
            arrival: 0,
            suspect: 0,
        };
        op.on_reading(&mut r, 0, &mut Vec::new());
        derived = r.values[1];
    }
    derived
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ewma_and_welford_converge_to_the_level_of_noisy_data(
        seed in any::<u64>(),
        level in 300.0f64..1500.0,
        amplitude in 0.0f64..50.0,
    ) {
        let values = noisy(seed, level, amplitude, 3_000);
        let mut ewma = baseline_op(BaselineMethod::Ewma, |c| c.alpha = 0.02);
        let b = learn(&mut ewma, values.iter().map(|&x| (0, x)));
        prop_assert!((b - level).abs() <= 0.3 * amplitude + 1e-9, "ewma {} for level {} ± {}", b, level, amplitude);
        let mut welford = baseline_op(BaselineMethod::Welford, |_| {});
        let mean = learn(&mut welford, values.iter().map(|&x| (0, x)));
        prop_assert!((mean - level).abs() <= 0.1 * amplitude + 1e-9, "mean {} for level {} ± {}", mean, level, amplitude);
        match &welford.state().learner {
            Learner::Welford(m) => {
                // the standard deviation of uniform noise is amplitude / sqrt(3)
                let sd = amplitude / 3f64.sqrt();
                prop_assert!((m.stddev() - sd).abs() <= 0.1 * sd + 1e-9, "stddev {} for {}", m.stddev(), sd);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Sensor drift up: the rolling minimum keeps the old floor for `days` days (the newest one
    /// included), then settles exactly on the new floor.
    #[test]
    fn rolling_min_settles_on_the_new_floor_after_days(
        seed in any::<u64>(),
        days in 1u32..5,
        floor in 380.0f64..450.0,
        drift in 1.0f64..80.0,
        amplitude in 0.0f64..300.0,
    ) {
        const DAY: i64 = 86_400_000;
        const EVERY: i64 = 600_000;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut op = baseline_op(BaselineMethod::RollingMin, |c| c.days = days);
        let day_of = |rng: &mut SmallRng, day: i64, floor: f64| {
            // one reading at the floor at a random time of each day, the others above it
            let at_floor = rng.random_range(0..DAY / EVERY);
            (0..DAY / EVERY)
                .map(|k| (day * DAY + k * EVERY, if k == at_floor { floor } else { floor + amplitude * rng.random::<f64>() }))
                .collect::<Vec<_>>()
        };
        let first_days = 3;
        for day in 0..first_days {
            let readings = day_of(&mut rng, day, floor);
            prop_assert_eq!(learn(&mut op, readings), floor);
        }
        for d in 0..=i64::from(days) {
            let readings = day_of(&mut rng, first_days + d, floor + drift);
            let b = learn(&mut op, readings);
            if d + 1 < i64::from(days) {
                prop_assert_eq!(b, floor, "day {} after the drift still remembers the old floor", d);
            } else {
                prop_assert_eq!(b, floor + drift, "day {} after the drift", d);
            }
        }
    }

    /// Each hour of the local day converges to its own level, and the derived field of a
    /// reading is the value of its local hour.
    #[test]
    fn hourly_profile_converges_to_each_hours_level(
        seed in any::<u64>(),
        offset in -12i32..=14,
        levels in prop::array::uniform24(5.0f64..200.0),
        amplitude in 0.0f64..10.0,
    ) {
        const HOUR: i64 = 3_600_000;
        let mut op = baseline_op(BaselineMethod::HourlyProfile, |c| {
            c.alpha = 0.05;
            c.utc_offset_hours = offset
        });
        let mut rng = SmallRng::seed_from_u64(seed);
        let local_hour = |ts: i64| (ts + i64::from(offset) * HOUR).div_euclid(HOUR).rem_euclid(24) as usize;
        let start = START_TS;
        for k in 0..(30 * 24 * 12) {
            let ts = start + k * 300_000;
            let x = levels[local_hour(ts)] + amplitude * (2.0 * rng.random::<f64>() - 1.0);
            learn(&mut op, [(ts, x)]);
        }
        let Learner::HourlyProfile(hours) = op.state().learner.clone() else {
            return Err(TestCaseError::fail("not a profile"));
        };
        for (hour, learned) in hours.iter().enumerate() {
            let learned = learned.expect("every hour learned");
            prop_assert!((learned - levels[hour]).abs() <= 0.5 * amplitude + 1e-9, "hour {}: {} vs {}", hour, learned, levels[hour]);
        }
        for h in 0..24 {
            let ts = start + h * HOUR + 1;
            let derived = learn(&mut op, [(ts, ABSENT)]);
            prop_assert_eq!(Some(derived), hours[local_hour(ts)]);
        }
    }
}
