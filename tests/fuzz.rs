//! A bounded fuzz pass over everything that reads bytes plume did not write itself (issue 16):
//! the JSON and influx decoders with the router's device-id scan, the pipeline-file loader, and
//! every stored format's decoder (device snapshots, checkpoint records, export bodies, Kafka
//! hand-offs, outbox entries, notifier policy states, MQTT ingest-log entries).
//!
//! It runs on the stable toolchain (no `cargo fuzz`): each target starts from its corpus
//! (`tests/fuzz/corpus/<target>/`, kept in the repository, plus seeds encoded here from real
//! values for the binary formats) and mutates it with a seeded generator (bit flips, interesting
//! bytes and tokens, deletions, duplications, splices), calling the target on every input. A
//! panic fails the test and saves the input under `<target dir>/fuzz-failures/`. The decoders'
//! invariants are checked too: whatever decodes, `device_of` finds the same device (the routers
//! shard by it).
//!
//! `PLUME_FUZZ_SECONDS` (default 8) bounds each target; `PLUME_FUZZ_SEED` picks the generator's
//! seed (default: the time, printed so a failure can be replayed). Executions per target are
//! printed.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plume::pipeline::CompiledPipeline;
use plume::spec::parse_pipeline;

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING_BYTES: &[u8] = &[
    0, 0xff, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'\n', b'=', b' ', b'e',
    b'-', b'9', b'&', b'*', b'#', b'\'', b'\t',
];

const INTERESTING_TOKENS: &[&str] = &[
    "1e999",
    "-1e999",
    "NaN",
    "null",
    "true",
    "\\u0000",
    "\\ud800",
    "99999999999999999999999",
    "-9223372036854775808",
    "&a [*a, *a, *a]",
    "*a",
    "<<: *a",
    "${X}",
    "${X:-1}",
    "$$",
    "!!binary",
    "\u{feff}",
    "é",
    "\"device\":",
    "\"ts\":",
    ",tag=v",
    " f=1i ",
    "=\"x\"",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 => {
                let token = INTERESTING_TOKENS[rng.below(INTERESTING_TOKENS.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                input.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(64)).min(len);
                let piece = input[from..to].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let to = (from + 1 + rng.below(128)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            7 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            _ if len > 0 => {
                // a run of one byte (long numbers, deep nesting)
                let b = input[rng.below(len)];
                let at = rng.below(len + 1);
                input.splice(at..at, std::iter::repeat_n(b, 1 + rng.below(300)));
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 16);
}

fn corpus_of(target: &str) -> Vec<Vec<u8>> {
    let dir = common::repo().join("tests/fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("PLUME_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8.0),
    )
}

fn seed() -> u64 {
    common::seed_from_env("PLUME_FUZZ_SEED") | 1
}

/// Runs `target` on the corpus and its mutations for the time budget; panics are failures.
/// The target says whether it accepted the input (decoded, loaded), for the report.
fn fuzz(name: &str, mut corpus: Vec<Vec<u8>>, target: impl Fn(&[u8]) -> bool) {
    assert!(!corpus.is_empty(), "{name}: no corpus");
    let seed = seed();
    let mut rng = Rng(seed);
    let budget = seconds();
    let started = Instant::now();
    let mut executions = 0u64;
    let mut accepted = 0u64;
    let mut slowest = (Duration::ZERO, 0usize);
    let run = |input: &[u8], executions: &mut u64, accepted: &mut u64, slowest: &mut (Duration, usize)| {
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
        let took = t.elapsed();
        if took > slowest.0 {
            *slowest = (took, input.len());
        }
        *executions += 1;
        if let Ok(true) = outcome {
            *accepted += 1;
        }
        if let Err(panic) = outcome {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{:016x}", xxhash_rust::xxh3::xxh3_64(input)));
            std::fs::write(&file, input).unwrap();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz {name} (seed {seed}): a panic ({message}) on the input saved in {}: {:?}",
                file.display(),
                String::from_utf8_lossy(&input[..input.len().min(200)])
            );
        }
    };
    for input in corpus.clone() {
        run(&input, &mut executions, &mut accepted, &mut slowest);
    }
    while started.elapsed() < budget {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input, &corpus);
        let before = accepted;
        run(&input, &mut executions, &mut accepted, &mut slowest);
        // keep some accepted mutants as seeds of their own, so mutations stack on inputs that
        // get past the first checks
        if accepted > before && rng.below(8) == 0 && corpus.len() < 4096 {
            corpus.push(input);
        }
    }
    eprintln!(
        "fuzz {name}: {executions} executions ({accepted} accepted) in {:.1} s (seed {seed}), slowest {:.1} ms on {} bytes",
        started.elapsed().as_secs_f64(),
        slowest.0.as_secs_f64() * 1000.0,
        slowest.1
    );
}

fn pipeline(text: &str) -> Arc<CompiledPipeline> {
    Arc::new(CompiledPipeline::compile(parse_pipeline("fuzz.yaml", text, &|_| None).unwrap()).unwrap())
}

fn aq1() -> Arc<CompiledPipeline> {
    let text = std::fs::read_to_string(common::repo().join("pipelines/aq1.yaml")).unwrap();
    Arc::new(CompiledPipeline::compile(parse_pipeline("aq1.yaml", &text, &|_| None).unwrap()).unwrap())
}

/// The source's time the payloads are decoded against (2027-01-15): the corpora's event times
/// are plausible (behind it), a far-future one is not.
const SOURCE_TIME: i64 = 1_800_000_000_000;

/// Decodes `payload`; whatever decodes, the device-id scan the routers shard by agrees.
fn decode_agrees(p: &CompiledPipeline, payload: &[u8], topic: Option<&str>) -> bool {
    let decoder = &p.decoder;
    let scanned = decoder.device_of(payload, topic).map(|d| d.into_owned());
    if let Ok(decoded) = decoder.decode(payload, topic, SOURCE_TIME) {
        assert_eq!(
            scanned.as_deref(),
            Some(decoded.device.as_ref()),
            "device_of and decode disagree"
        );
        // and the chain takes the reading
        let mut chain = p.new_chain(&decoded.device);
        let mut out = Vec::new();
        chain.on_reading(decoded.reading, 0, &mut out);
        chain.on_end(&mut out);
        return true;
    }
    false
}

#[test]
fn fuzz_json_decoder() {
    let p = aq1();
    fuzz("json", corpus_of("json"), |input| decode_agrees(&p, input, None));
}

#[test]
fn fuzz_influx_decoder() {
    let p = pipeline(
        "version: 1\npipeline: f\ndecode:\n  format: influx\n  device: { tag: room }\n  fields:\n    pm25: { min: 0, max: 1000 }\n    co2: { type: int }\n    open: { type: bool }\noperators:\n  - window: { every: 60s, fields: [pm25, co2], aggregates: [avg, max, stddev] }\n  - baseline: { field: co2, method: welford }\n",
    );
    fuzz("influx", corpus_of("influx"), |input| decode_agrees(&p, input, None));
}

#[test]
fn fuzz_pipeline_loader() {
    let mut corpus = corpus_of("yaml");
    for dir in ["pipelines", "pipelines/score"] {
        for entry in std::fs::read_dir(common::repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                corpus.push(std::fs::read(path).unwrap());
            }
        }
    }
    fuzz("yaml", corpus, |input| {
        let text = String::from_utf8_lossy(input);
        match parse_pipeline("fuzz.yaml", &text, &|_| Some("1".into())) {
            Ok(spec) => {
                // a spec that loads compiles (validation is the compiler's guard)
                CompiledPipeline::compile(spec).expect("a validated pipeline compiles");
                true
            }
            Err(_) => false,
        }
    });
}

/// Encoded device snapshots of the aq1 chain after a few readings: the binary seeds.
fn snapshot_seeds(p: &CompiledPipeline) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    let lines = [
        r#"{"device":"d","ts":1700000000000,"pm25":40.5,"co2":800}"#,
        r#"{"device":"d","ts":1700000061000,"pm25":20.5,"co2":450}"#,
        r#"{"device":"d","ts":1700000122000,"pm25":50.5,"co2":900}"#,
    ];
    let mut chain = p.new_chain("d");
    let mut out = Vec::new();
    for line in lines {
        let decoded = p.decoder.decode(line.as_bytes(), None, SOURCE_TIME).unwrap();
        chain.on_reading(decoded.reading, 0, &mut out);
        seeds.push(chain.snapshot().encode());
    }
    seeds
}

#[test]
fn fuzz_stored_device_snapshots() {
    let p = aq1();
    let mut corpus = snapshot_seeds(&p);
    corpus.extend(corpus_of("snapshot"));
    fuzz("snapshot", corpus, |input| {
        if let Ok(mut chain) = p.restore_chain("d", input, true) {
            let mut out = Vec::new();
            let decoded = p
                .decoder
                .decode(
                    br#"{"device":"d","ts":1700000200000,"pm25":1,"co2":1}"#,
                    None,
                    SOURCE_TIME,
                )
                .unwrap();
            chain.on_reading(decoded.reading, 0, &mut out);
            chain.on_time(i64::MAX, &mut out);
            chain.on_end(&mut out);
            let _ = chain.snapshot().encode();
            return true;
        }
        false
    });
}

#[test]
fn fuzz_stored_records_exports_handoffs_and_outbox_entries() {
    use plume::model::codec::bincode_decode;
    use plume::store::CheckpointRecord;
    use plume::store::export::ExportBody;
    use plume::store::partitions::PartitionHandoff;
    let record = CheckpointRecord {
        id: 7,
        pipeline: "aq1".into(),
        pipeline_hash: "0123456789abcdef0123456789abcdef".into(),
        created_ms: 1_700_000_000_000,
        sources: vec![plume::store::StoredPosition {
            source: 0,
            name: "file:aq1.jsonl".into(),
            offset: 12_345,
            line: 99,
            fingerprint: 42,
        }],
        sinks: vec![plume::store::StoredSink {
            name: "file:out.jsonl".into(),
            length: 777,
        }],
        dead_letters: 3,
        devices: 2,
        key_groups: 256,
        devices_written: 2,
    };
    let p = aq1();
    let snapshots = snapshot_seeds(&p);
    let encode = |v: &dyn erased::Encode| v.encode();
    let export = ExportBody {
        record: record.clone(),
        entries: vec![("devices".into(), b"\0\0d".to_vec(), snapshots[0].clone())],
    };
    let handoff = PartitionHandoff {
        topic: "aq1".into(),
        partition: 3,
        next_offset: 1000,
        pipeline_hash: record.pipeline_hash.clone(),
        key_groups: 256,
        checkpoint: 7,
        written_ms: 1,
        devices: vec![("d".into(), snapshots[1].clone())],
    };
    let policy_state = plume::notify::PolicyState {
        last: vec![("d".into(), "pm25_event".into(), 1_700_000_000_000)],
        suppressed: vec![("d".into(), "pm25_event".into(), 1_700_000_100_000)],
        newest_ms: 1_700_000_100_000,
        next_sweep_ms: 1_700_000_400_000,
        suppressed_total: 2,
        evicted_total: 0,
        release_at_ms: i64::MAX,
    };
    let corpus = vec![
        [&[0u8][..], &encode(&record)].concat(),
        [&[1u8][..], &encode(&export)].concat(),
        [&[2u8][..], &encode(&handoff)].concat(),
        [
            &[3u8][..],
            &plume::connectors::mqtt::ingest::encode_entry("s/d/air", b"{\"x\":1}", 5)[..],
        ]
        .concat(),
        [&[4u8][..], &encode(&policy_state)].concat(),
    ];
    fuzz("stored", corpus, |input| {
        let Some((&kind, bytes)) = input.split_first() else {
            return false;
        };
        match kind % 5 {
            0 => bincode_decode::<CheckpointRecord>(bytes).is_ok_and(|(r, _)| r.check().is_ok()),
            1 => bincode_decode::<ExportBody>(bytes).is_ok(),
            2 => bincode_decode::<PartitionHandoff>(bytes).is_ok(),
            4 => {
                // a notifier's policy state: the bincode inside, and the sealed value
                let sealed = plume::notify::policy::decode_state(bytes).is_ok();
                bincode_decode::<plume::notify::PolicyState>(bytes).is_ok() || sealed
            }
            _ => {
                // the sealed entry (checksum first) and the entry inside it
                let sealed = plume::connectors::mqtt::ingest::parse_entry(bytes).is_ok();
                plume::connectors::mqtt::ingest::parse_entry(bytes.get(12..).unwrap_or_default()).is_ok() || sealed
            }
        }
    });
}

mod erased {
    /// bincode (standard configuration) of any serializable value, as plume stores it.
    pub trait Encode {
        fn encode(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap()
        }
    }
}
