//! The MQTT ingest log's synced appends (`cargo bench --bench ingest`): what one append of a
//! batch costs in CPU and time, format 2 (zero-filled segment files, `IngestLog`) beside format 1
//! (a RocksDB write batch, one key per entry, synced), the same entries written the same way.
//!
//! 300,000 aq1-sized entries (a 14-byte topic, a 100-byte payload) in batches of 86 (what the
//! embedded-broker bench's appends hold on average) and of 1,000; each round writes a fresh log
//! of each kind, the kinds alternating; medians of `PLUME_BENCH_INGEST_ROUNDS` rounds (default
//! 5). CPU is this process's (user + system), which includes the kernel's work in the syncs.

use std::time::Instant;

use plume::connectors::mqtt::ingest::{IngestLog, encode_entry};

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

const ENTRIES: usize = 300_000;
const PAYLOAD: &[u8] =
    br#"{"device":"dev-000123","ts":1767225600000,"co2":612.4,"pm25":7.25,"voc":0.113,"temp":21.5,"rh":41.2}"#;

fn batches(batch: usize) -> impl Iterator<Item = Vec<Vec<u8>>> {
    (0..ENTRIES).step_by(batch).map(move |start| {
        (start..(start + batch).min(ENTRIES))
            .map(|i| encode_entry("aq1/dev-000123", PAYLOAD, i as i64))
            .collect()
    })
}

/// Format 2: `IngestLog::append`, one synced write per batch. (seconds, CPU seconds)
fn segments(dir: &std::path::Path, batch: usize) -> (f64, f64) {
    let log = IngestLog::open(dir, "bench").unwrap();
    let (cpu, began) = (cpu_seconds(), Instant::now());
    for entries in batches(batch) {
        log.append(&entries, &[], None).unwrap();
    }
    (began.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

/// Format 1, as plume wrote it until 2026-12-06: a RocksDB write batch per append (one key per
/// entry, the next number in `meta`), synced.
fn rocksdb(dir: &std::path::Path, batch: usize) -> (f64, f64) {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::None);
    let cfs = ["log", "acks", "meta"].map(|n| rocksdb::ColumnFamilyDescriptor::new(n, o.clone()));
    let db = rocksdb::DB::open_cf_descriptors(&o, dir, cfs).unwrap();
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let (cpu, began) = (cpu_seconds(), Instant::now());
    let mut next = 0u64;
    for entries in batches(batch) {
        let mut wb = rocksdb::WriteBatch::default();
        let log = db.cf_handle("log").unwrap();
        for value in &entries {
            wb.put_cf(log, next.to_be_bytes(), value);
            next += 1;
        }
        wb.put_cf(
            db.cf_handle("meta").unwrap(),
            b"next",
            plume::store::seal(&next.to_le_bytes()),
        );
        db.write_opt(wb, &sync).unwrap();
    }
    let measured = (began.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    db.cancel_all_background_work(true);
    measured
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("PLUME_BENCH_INGEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("# ingest log: {ENTRIES} entries, synced appends, medians of {rounds} rounds\n");
    println!("| batch | format | seconds | CPU s | µs per append | CPU µs per entry |");
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    for batch in [86, 1000] {
        let appends = ENTRIES.div_ceil(batch) as f64;
        let (mut seg, mut rdb) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let dir = tempfile::tempdir().unwrap();
            let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
            for is_segments in order {
                if is_segments {
                    seg.push(segments(&dir.path().join("segments"), batch));
                } else {
                    rdb.push(rocksdb(&dir.path().join("rocksdb"), batch));
                }
            }
        }
        for (name, runs) in [("2: segments", &seg), ("1: RocksDB", &rdb)] {
            let (wall, cpu) = (
                median(runs.iter().map(|r| r.0).collect()),
                median(runs.iter().map(|r| r.1).collect()),
            );
            println!(
                "| {batch} | {name} | {wall:.3} | {cpu:.3} | {:.0} | {:.2} |",
                wall / appends * 1e6,
                cpu / ENTRIES as f64 * 1e6
            );
        }
        let ratio = |i: usize| median(seg.iter().zip(&rdb).map(|(s, r)| [s.0 / r.0, s.1 / r.1][i]).collect());
        println!(
            "| {batch} | segments / RocksDB, paired | {:.2} | {:.2} | | |",
            ratio(0),
            ratio(1)
        );
    }
}
