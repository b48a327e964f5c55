//! A flood of device ids (issue 16): 10 million distinct devices with one reading each, as
//! anyone who can publish could send. The run completes, its peak memory stays under 1 GiB
//! (`runtime.max_devices` at its default, 500,000), and the overflow is reported: the readings
//! of the devices beyond the limit are dead letters, and a warning says why.
//!
//! (Its own test binary: the peak RSS is read with `getrusage(RUSAGE_CHILDREN)`, which covers
//! every child this process waited for.)

mod common;

use std::io::Write;

const DEVICES: u64 = 10_000_000;

#[test]
fn ten_million_device_ids_stay_under_a_gibibyte_and_the_overflow_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("flood.jsonl");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input).unwrap());
    for i in 0..DEVICES {
        writeln!(
            w,
            r#"{{"device":"f{i:08}","ts":{},"pm25":12.5,"co2":450.0}}"#,
            1_700_000_000_000u64 + i % 60_000
        )
        .unwrap();
    }
    drop(w);
    // the aq1 chain, and only the summary written (9 million dead letters need not hit the disk)
    let out = dir.path().join("summary.jsonl");
    let pipeline = dir.path().join("flood.yaml");
    let aq1 = std::fs::read_to_string(common::repo().join("pipelines/aq1.yaml")).unwrap();
    let outputs = aq1.find("\noutputs:").unwrap();
    std::fs::write(
        &pipeline,
        format!(
            "{}\noutputs:\n  - when: summary\n    to:\n      - file: {{ path: \"{}\" }}\nruntime: {{ shards: 2 }}\n",
            &aq1[..outputs],
            out.display()
        ),
    )
    .unwrap();
    let result = common::plume()
        .arg("run")
        .arg(&pipeline)
        .arg("--input")
        .arg(&input)
        .arg("--no-checkpoints")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    let peak_mib = usage.ru_maxrss as f64 / 1024.0;
    eprintln!("flood: {DEVICES} devices, peak RSS {peak_mib:.0} MiB");
    assert!(peak_mib < 1024.0, "peak RSS {peak_mib:.0} MiB");

    let summary: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().last().unwrap()).unwrap();
    // 250,000 devices per shard are kept (their readings applied); every other device's
    // reading is a dead letter: nothing is lost without a record
    assert_eq!(summary["devices"], 500_000, "{summary}");
    assert_eq!(summary["readings"], 500_000, "{summary}");
    assert_eq!(summary["dead_letters"], DEVICES - 500_000, "{summary}");
    assert!(
        stderr.contains("device limit reached (runtime.max_devices)"),
        "the overflow is reported: {stderr}"
    );
}
