//! The aq1 operator chain on one core: the ceiling the actor runtime is compared to.
//!
//! - `aq1_chain/operators`: window + hysteresis + baseline compiled from `pipelines/aq1.yaml`, on
//!   readings decoded once before timing (one chain per device, created on its first reading,
//!   every device flushed at the end).
//! - `aq1_chain/plain_loop_with_json`: the plain loop (`plume::plain::PlainRun`) on the raw lines:
//!   JSON decoding, the chains, and formatting every result as an output record.
//!
//! Input: `python3 ../shared/workloads/gen_aq1.py --devices 1000 --events 200000 --seed 1`, run
//! by the bench itself (or the file named by `PLUME_BENCH_AQ1`).
//!
//! ```text
//! cargo bench --bench operators
//! ```

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rustc_hash::FxHashMap;

use plume::operators::{DeviceChain, Reading};
use plume::pipeline::CompiledPipeline;
use plume::plain::PlainRun;

/// Processing time handed to the operators (aq1 needs none).
const NOW: i64 = 1_767_225_600_000;

fn aq1_input() -> Vec<u8> {
    if let Ok(path) = std::env::var("PLUME_BENCH_AQ1") {
        return std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    }
    let generator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/workloads/gen_aq1.py");
    let output = Command::new("python3")
        .arg(&generator)
        .args(["--devices", "1000", "--events", "200000", "--seed", "1"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", generator.display()));
    assert!(
        output.status.success(),
        "{}: {}",
        generator.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn aq1_pipeline() -> CompiledPipeline {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/aq1.yaml");
    let spec = plume::config::load_pipeline(&path).unwrap_or_else(|d| panic!("{d}"));
    CompiledPipeline::compile(spec).expect("aq1 compiles")
}

/// Runs every reading through its device's chain, then ends every chain; returns the number of
/// results.
fn run_chains(pipeline: &CompiledPipeline, devices: &[String], readings: Vec<(u32, Reading)>) -> usize {
    let mut chains: Vec<Option<DeviceChain>> = (0..devices.len()).map(|_| None).collect();
    let mut out = Vec::with_capacity(64);
    let mut results = 0;
    for (device, reading) in readings {
        let device = device as usize;
        let chain = chains[device].get_or_insert_with(|| pipeline.new_chain(&devices[device]));
        chain.on_reading(reading, NOW, &mut out);
        results += out.len();
        out.clear();
    }
    for chain in chains.iter_mut().flatten() {
        chain.on_end(&mut out);
        results += out.len();
        out.clear();
    }
    results
}

fn bench_aq1(c: &mut Criterion) {
    let input = aq1_input();
    let pipeline = aq1_pipeline();
    let lines: Vec<&[u8]> = input.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();

    // decoded once, before timing
    let mut index: FxHashMap<String, u32> = FxHashMap::default();
    let mut devices = Vec::new();
    let readings: Vec<(u32, Reading)> = lines
        .iter()
        .map(|line| {
            let decoded = pipeline.decoder.decode(line, None, NOW).expect("aq1 lines decode");
            let device = *index.entry(decoded.device.to_string()).or_insert_with(|| {
                devices.push(decoded.device.to_string());
                devices.len() as u32 - 1
            });
            (device, decoded.reading)
        })
        .collect();

    let mut group = c.benchmark_group("aq1_chain");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(readings.len() as u64));
    group.bench_function("operators", |b| {
        b.iter_batched(
            || readings.clone(),
            |readings| black_box(run_chains(&pipeline, &devices, readings)),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("plain_loop_with_json", |b| {
        b.iter(|| {
            let mut run = PlainRun::new(&pipeline);
            let mut bytes = 0usize;
            let mut sink = |record: plume::output::OutputRecord| bytes += record.json.len();
            for (i, line) in lines.iter().enumerate() {
                run.push_line(line, "bench", i as u64 + 1, NOW, &mut sink);
            }
            let totals = run.finish(&mut sink);
            black_box((totals, bytes))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_aq1);
criterion_main!(benches);
