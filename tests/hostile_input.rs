//! Hostile and broken input (issue 16): plume neither hangs nor aborts, and what it cannot use
//! becomes a dead letter that says what and where, while the rest of the input is processed.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Runs `plume run` with a deadline; returns (success, stderr).
fn run_with_deadline(args: &[&str], input: &Path, output: &Path, deadline: Duration) -> (bool, String) {
    let mut child = plume()
        .arg("run")
        .args(args)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("plume run {args:?} did not end within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), reader.join().unwrap())
}

/// [`run_with_deadline`] with two minutes, which must succeed; its stderr.
fn run_ok(args: &[&str], input: &Path, output: &Path) -> String {
    let (ok, stderr) = run_with_deadline(args, input, output, Duration::from_secs(120));
    assert!(ok, "{stderr}");
    stderr
}

fn records(output: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn over_long_lines_become_dead_letters_and_reading_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("long-lines.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let reading = |device: &str, i: u64| {
        format!(
            r#"{{"device":"{device}","ts":{},"pm25":{}.5,"co2":450.0}}"#,
            1_700_000_000_000 + i * 1000,
            i % 50
        )
    };
    for i in 0..100 {
        writeln!(f, "{}", reading("a", i)).unwrap();
    }
    // line 101: 20 MiB, longer than a whole source chunk (16 MiB): the source skips it
    write!(f, r#"{{"device":"huge","note":""#).unwrap();
    f.write_all(&vec![b'x'; 20 << 20]).unwrap();
    writeln!(f, r#""}}"#).unwrap();
    for i in 100..200 {
        writeln!(f, "{}", reading("a", i)).unwrap();
    }
    // line 202: 2 MiB, shorter than a chunk but over the 1 MiB payload limit: the router skips it
    write!(f, r#"{{"device":"big","note":""#).unwrap();
    f.write_all(&vec![b'y'; 2 << 20]).unwrap();
    writeln!(f, r#""}}"#).unwrap();
    for i in 200..300 {
        writeln!(f, "{}", reading("b", i)).unwrap();
    }
    drop(f);

    let actors = dir.path().join("actors.jsonl");
    let stderr = run_ok(
        &["pipelines/aq1.yaml", "--no-checkpoints", "--shards", "2"],
        &input,
        &actors,
    );
    assert!(
        stderr.contains("longer than decode.max_payload_bytes"),
        "the skipped line is logged: {stderr}"
    );
    let got = records(&actors);
    let dead: Vec<&serde_json::Value> = got.iter().filter(|r| r["type"] == "dead_letter").collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    let at = |line: &str| dead.iter().find(|d| d["position"] == line).copied();
    let huge = at("line 101").expect("a dead letter for line 101");
    let reason = huge["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{} bytes", (20 << 20) + 27)) && reason.contains("max_payload_bytes"),
        "says how long and which limit: {reason}"
    );
    let raw = huge["raw"].as_str().unwrap();
    assert!(raw.starts_with(r#"{"device":"huge""#), "keeps the first bytes: {raw}");
    assert!(
        raw.len() <= 4096,
        "and only the first dead_letter_max_bytes: {} bytes",
        raw.len()
    );
    let big = at("line 202").expect("a dead letter for line 202");
    assert!(
        big["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{} bytes", (2 << 20) + 26))
    );

    let summary = got.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["readings"], 300, "every other line was read: {summary}");
    assert_eq!(summary["dead_letters"], 2);

    // the plain loop (the oracle) gives the same records
    let plain = dir.path().join("plain.jsonl");
    run_ok(&["pipelines/aq1.yaml", "--engine", "plain"], &input, &plain);
    assert_same_output(&actors, &plain);
}

#[test]
fn a_resumed_run_goes_past_an_over_long_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..10u64 {
        writeln!(
            f,
            r#"{{"device":"a","ts":{},"pm25":1.5,"co2":450.0}}"#,
            1_700_000_000_000 + i * 1000
        )
        .unwrap();
    }
    f.write_all(&vec![b'z'; 17 << 20]).unwrap();
    writeln!(f).unwrap();
    drop(f);
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let out1 = dir.path().join("out1.jsonl");
    run_ok(&["pipelines/aq1.yaml", "--data-dir", data_arg], &input, &out1);
    // more input after the long line; the second run resumes after what the first one read
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    for i in 10..20u64 {
        writeln!(
            f,
            r#"{{"device":"a","ts":{},"pm25":1.5,"co2":450.0}}"#,
            1_700_000_000_000 + i * 1000
        )
        .unwrap();
    }
    drop(f);
    let out2 = dir.path().join("out2.jsonl");
    run_ok(&["pipelines/aq1.yaml", "--data-dir", data_arg], &input, &out2);
    let second = records(&out2);
    assert!(
        !second.iter().any(|r| r["type"] == "dead_letter"),
        "the long line is not met again: {second:?}"
    );
    let summary = second.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["readings"], 20, "ten readings before, ten after: {summary}");
}

#[test]
fn a_checkpoint_interval_of_zero_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"device\":\"a\",\"ts\":1,\"pm25\":1,\"co2\":400}\n").unwrap();
    let out = plume()
        .args(["run", "pipelines/aq1.yaml", "--checkpoint-interval", "0s", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "an error exit, not a panic (101) or a signal: {:?} {err}",
        out.status
    );
    assert!(err.contains("--checkpoint-interval must be longer than 0s"), "{err}");
    assert!(
        !dir.path().join("out.jsonl").exists(),
        "refused before anything started"
    );
}

#[test]
fn a_dead_letter_stays_small_whatever_value_it_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // a 900 KB string where a number belongs (under the 1 MiB payload limit, so it is decoded)
    let junk = "9".repeat(900_000) + "x";
    std::fs::write(
        &input,
        format!("{{\"device\":\"a\",\"ts\":1,\"pm25\":\"{junk}\",\"co2\":400}}\n{{\"device\":\"a\",\"ts\":2,\"pm25\":\"{junk}\",\"co2\":400}}\n"),
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    run_ok(&["pipelines/aq1.yaml", "--no-checkpoints"], &input, &output);
    let text = std::fs::read_to_string(&output).unwrap();
    let dead: Vec<&str> = text.lines().filter(|l| l.contains("\"dead_letter\"")).collect();
    assert_eq!(dead.len(), 2);
    for line in dead {
        assert!(line.len() < 8 * 1024, "a dead letter of {} bytes", line.len());
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.contains("pm25"), "still says which field: {reason}");
    }
}

#[test]
fn an_output_that_is_the_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let text = "{\"device\":\"a\",\"ts\":1,\"pm25\":1,\"co2\":400}\n";
    std::fs::write(&input, text).unwrap();
    for engine in ["actors", "plain"] {
        let out = plume()
            .args([
                "run",
                "pipelines/aq1.yaml",
                "--no-checkpoints",
                "--engine",
                engine,
                "--input",
            ])
            .arg(&input)
            .arg("--output")
            // the same file by another path
            .arg(dir.path().join(".").join("in.jsonl"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{engine}: refused");
        assert!(err.contains("both an input and an output"), "{engine}: {err}");
        assert_eq!(
            std::fs::read_to_string(&input).unwrap(),
            text,
            "{engine}: the input is intact"
        );
    }
}

#[test]
fn device_ids_that_are_too_long_or_hold_control_characters_are_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let long = "d".repeat(300);
    std::fs::write(
        &input,
        format!(
            "{{\"device\":\"{long}\",\"ts\":1,\"pm25\":1,\"co2\":400}}\n\
             {{\"device\":\"a\\nb\",\"ts\":2,\"pm25\":1,\"co2\":400}}\n\
             {{\"device\":\"ok\",\"ts\":3,\"pm25\":1,\"co2\":400}}\n"
        ),
    )
    .unwrap();
    let output = dir.path().join("out.jsonl");
    run_ok(&["pipelines/aq1.yaml", "--no-checkpoints"], &input, &output);
    let got = records(&output);
    let reasons: Vec<&str> = got
        .iter()
        .filter(|r| r["type"] == "dead_letter")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("300 bytes long") && r.contains("max_device_id_bytes"))
    );
    assert!(reasons.iter().any(|r| r.contains("control character (U+000A)")));
    let summary = got.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["readings"], 1);
}

/// aq1 with `decode:` lines added (written next to the input).
fn aq1_with_decode(dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let text = text.replacen("decode:\n", &format!("decode:\n{extra}"), 1);
    let path = dir.join("aq1-window.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Device `a` every 10 s over the last hour, with one reading from a clock a month ahead in the
/// middle (line 101) and one from a clock reset to 1970 (line 151).
fn input_with_a_broken_clock(dir: &Path) -> std::path::PathBuf {
    let now = plume::clock::now_ms();
    let start = now - 3_600_000;
    let mut lines = Vec::new();
    for i in 0..300i64 {
        if i == 100 {
            lines.push(format!(
                r#"{{"device":"a","ts":{},"pm25":5.0,"co2":450.0}}"#,
                now + 30 * 86_400_000
            ));
        }
        if i == 149 {
            lines.push(r#"{"device":"a","ts":1000,"pm25":5.0,"co2":450.0}"#.to_string());
        }
        lines.push(format!(
            r#"{{"device":"a","ts":{},"pm25":5.0,"co2":450.0}}"#,
            start + i * 10_000
        ));
    }
    let input = dir.join("clock.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    input
}

#[test]
fn a_reading_from_a_broken_clock_is_refused_and_later_readings_are_not_late() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with_a_broken_clock(dir.path());
    let pipeline = aq1_with_decode(dir.path(), "  plausible_time: { ahead: 5m, behind: 30d }\n");
    let output = dir.path().join("out.jsonl");
    let stderr = run_ok(&[pipeline.to_str().unwrap(), "--no-checkpoints"], &input, &output);
    assert!(
        stderr.contains("limits hit: 2 implausible event times"),
        "the run reports the limit: {stderr}"
    );
    let got = records(&output);
    let dead: Vec<&serde_json::Value> = got.iter().filter(|r| r["type"] == "dead_letter").collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["position"], "line 101");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("is ahead of the source's time") && reason.contains("decode.plausible_time.ahead (300000 ms)"),
        "{reason}"
    );
    assert_eq!(dead[1]["position"], "line 151");
    assert!(
        dead[1]["reason"].as_str().unwrap().contains("plausible_time.behind"),
        "{dead:?}"
    );
    let summary = got.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["readings"], 300, "{summary}");
    // the month-ahead reading would have moved device a's windows a month on: every later
    // reading late, and no window after line 101
    assert_eq!(summary["late"], 0, "{summary}");
    let windows = got.iter().filter(|r| r["type"] == "window").count();
    assert!(windows >= 49, "{windows} windows for 50 minutes of readings");
}

#[test]
fn a_clamped_reading_moves_its_device_no_further_than_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let input = input_with_a_broken_clock(dir.path());
    let pipeline = aq1_with_decode(dir.path(), "  plausible_time: { ahead: 1s, outside: clamp }\n");
    let output = dir.path().join("out.jsonl");
    let before = plume::clock::now_ms();
    let stderr = run_ok(&[pipeline.to_str().unwrap(), "--no-checkpoints"], &input, &output);
    let after = plume::clock::now_ms();
    assert!(stderr.contains("limits hit: 1 implausible event times"), "{stderr}");
    let got = records(&output);
    let summary = got.iter().find(|r| r["type"] == "summary").unwrap();
    // nothing is refused (the 1970 reading is only late: no `behind`)
    assert_eq!(summary["readings"], 302, "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    // the month-ahead reading counts at the source's time + 1 s: no window a month on
    let last_end = got
        .iter()
        .filter(|r| r["type"] == "window")
        .map(|r| r["window_end"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(
        (before..=after + 61_000).contains(&last_end),
        "the last window ends at {last_end}, the run went from {before} to {after}"
    );
}

/// Three waves of 40 devices × 3 readings a minute of event time apart (devices 0–39, 40–79,
/// 0–39 again), and aq1 paced at 20x with room for 50 devices and `passivate_after`.
fn device_waves(dir: &Path, passivate_after: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let now = plume::clock::now_ms();
    let t0 = now - 3_600_000;
    let mut lines = Vec::new();
    for (wave, first) in [(0i64, 0), (1, 40), (2, 0)] {
        for step in 0..3i64 {
            for d in first..first + 40 {
                let ts = t0 + wave * 60_000 + step * 10_000;
                let pm25 = 20 + (d * 7 + wave * 13 + step * 11) % 30;
                lines.push(format!(
                    r#"{{"device":"d{d:03}","ts":{ts},"pm25":{pm25}.0,"co2":450.0}}"#
                ));
            }
        }
    }
    let input = dir.join("waves.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let text = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let text = text.replacen(
        r#"- file: { path: "${PLUME_INPUT:-aq1.jsonl}" }"#,
        r#"- file: { path: "${PLUME_INPUT:-aq1.jsonl}", pace: event_time, speed: 20 }"#,
        1,
    ) + &format!("\nruntime:\n  max_devices: 50\n  passivate_after: {passivate_after}\n");
    assert!(text.contains("pace: event_time"));
    let pipeline = dir.join("limited.yaml");
    std::fs::write(&pipeline, text).unwrap();
    (input, pipeline)
}

/// `plume run` of the waves, one shard, checkpoints every 200 ms: (stderr, records).
fn run_waves(dir: &Path, input: &Path, pipeline: &Path) -> (String, Vec<serde_json::Value>) {
    let output = dir.join("out.jsonl");
    let result = plume()
        .args(["run"])
        .arg(pipeline)
        .args(["--shards", "1", "--checkpoint-interval", "200ms", "--data-dir"])
        .arg(dir.join("state"))
        .env("PLUME_INPUT", input)
        .env("PLUME_OUTPUT", &output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stderr}");
    (stderr, records(&output))
}

#[test]
fn at_the_device_limit_stored_passive_devices_make_room_and_come_back_exactly() {
    // between the waves every device goes passive (after 300 ms) and a checkpoint stores it;
    // with room for 50, the second wave must drop stored passive devices from memory, and the
    // third reload them from the store
    let dir = tempfile::tempdir().unwrap();
    let (input, pipeline) = device_waves(dir.path(), "300ms");
    let (stderr, got) = run_waves(dir.path(), &input, &pipeline);
    assert!(
        !stderr.contains("new devices refused"),
        "room was made, nothing refused: {stderr}"
    );
    let summary = got.iter().find(|r| r["type"] == "summary").unwrap();
    assert_eq!(summary["readings"], 360, "{summary}");
    assert_eq!(summary["dead_letters"], 0, "{summary}");
    // and every device's results are those of a run without a limit
    let plain = dir.path().join("plain.jsonl");
    run_ok(&["pipelines/aq1.yaml", "--engine", "plain"], &input, &plain);
    assert_same_output(&dir.path().join("out.jsonl"), &plain);
}

#[test]
fn at_the_device_limit_the_least_recently_active_devices_are_passivated_to_make_room() {
    // no device is idle long enough to be passivated (an hour): at the limit the shard
    // passivates the least recently active ones itself, the next checkpoint stores them and
    // frees their room, and meanwhile readings of new devices are dead letters
    let dir = tempfile::tempdir().unwrap();
    let (input, pipeline) = device_waves(dir.path(), "1h");
    let (stderr, got) = run_waves(dir.path(), &input, &pipeline);
    let passivations: u64 = stderr
        .split(" passivations")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no passivation count: {stderr}"));
    assert!(
        passivations >= 5,
        "the least recently active devices were passivated: {stderr}"
    );
    let summary = got.iter().find(|r| r["type"] == "summary").unwrap();
    let (readings, dead) = (
        summary["readings"].as_u64().unwrap(),
        summary["dead_letters"].as_u64().unwrap(),
    );
    assert_eq!(
        readings + dead,
        360,
        "every reading processed or a dead letter: {summary}"
    );
    // more than the 50 devices of the first minute were served
    let devices: std::collections::BTreeSet<&str> = got.iter().filter_map(|r| r["device"].as_str()).collect();
    assert!(devices.len() > 50, "{} devices had results", devices.len());
    for letter in got.iter().filter(|r| r["type"] == "dead_letter") {
        assert!(
            letter["reason"].as_str().unwrap().contains("device limit reached"),
            "{letter}"
        );
    }
}

/// aq1 with CO2 limited to 250–10,000 ppm and `out_of_range` as given.
fn aq1_with_co2_range(dir: &Path, out_of_range: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let text = text.replacen(
        "co2: { type: float, required: true }",
        &format!("co2: {{ type: float, required: true, min: 250, max: 10000, out_of_range: {out_of_range} }}"),
        1,
    );
    let path = dir.join(format!("aq1-co2-{out_of_range}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_bad_field_is_left_out_and_dead_lettered_while_the_rest_of_its_reading_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // the PM2.5 that opens the event comes with a broken CO2 value
    std::fs::write(
        &input,
        "{\"device\":\"a\",\"ts\":1000,\"pm25\":10,\"co2\":500}\n\
         {\"device\":\"a\",\"ts\":2000,\"pm25\":48,\"co2\":99999}\n\
         {\"device\":\"a\",\"ts\":3000,\"pm25\":50,\"co2\":510}\n",
    )
    .unwrap();
    let kinds = |records: &[serde_json::Value], kind: &str| -> Vec<serde_json::Value> {
        records.iter().filter(|r| r["type"] == kind).cloned().collect()
    };
    // today's choice: the whole reading is a dead letter, and the event opens a reading later
    let whole = aq1_with_co2_range(dir.path(), "dead_letter");
    let out = dir.path().join("whole.jsonl");
    run_ok(&[whole.to_str().unwrap(), "--no-checkpoints"], &input, &out);
    let whole_records = records(&out);
    assert_eq!(kinds(&whole_records, "event_start")[0]["start_ts"], 3000);
    assert_eq!(kinds(&whole_records, "dead_letter").len(), 1);
    // field_dead_letter: the PM2.5 is used (the event starts at 2000), the CO2 is recorded
    let field = aq1_with_co2_range(dir.path(), "field_dead_letter");
    let mut outputs = Vec::new();
    for engine in ["actors", "plain"] {
        let out = dir.path().join(format!("field-{engine}.jsonl"));
        let state: &[&str] = if engine == "plain" { &[] } else { &["--no-checkpoints"] };
        run_ok(&[&[field.to_str().unwrap(), "--engine", engine], state].concat(), &input, &out);
        let records = records(&out);
        let starts = kinds(&records, "event_start");
        assert_eq!(starts.len(), 1, "{engine}: {records:?}");
        assert_eq!(starts[0]["start_ts"], 2000, "{engine}");
        let dead = kinds(&records, "dead_letter");
        assert_eq!(dead.len(), 1, "{engine}: {dead:?}");
        let reason = dead[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("field `co2`: 99999 is outside its range [250, 10000]"),
            "{reason}"
        );
        assert_eq!(dead[0]["position"], "line 2");
        assert!(dead[0]["raw"].as_str().unwrap().contains("99999"), "{:?}", dead[0]);
        let summary = kinds(&records, "summary");
        assert_eq!(summary[0]["readings"], 3, "{engine}: the reading counts");
        assert_eq!(summary[0]["dead_letters"], 1, "{engine}");
        // the window's CO2 average leaves the bad value out
        let window = &kinds(&records, "window")[0];
        assert_eq!(window["co2_avg"], 505.0, "{window}");
        outputs.push(records);
    }
    // the same records from the actors and the plain loop (in id order)
    let sorted = |mut v: Vec<serde_json::Value>| {
        v.sort_by_key(|r| r["id"].as_str().unwrap_or("").to_string() + &r.to_string());
        v
    };
    assert_eq!(sorted(outputs[0].clone()), sorted(outputs[1].clone()));
}

#[test]
fn readings_sent_twice_are_counted_once_with_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let clean = common::aq1_input(dir.path(), 20, 4_000, 11);
    let lines: Vec<String> = std::fs::read_to_string(&clean)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // an at-least-once gateway: every 7th reading again at once, every 11th again 5 lines later
    let mut doubled = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        doubled.push(line.clone());
        if i % 7 == 0 {
            doubled.push(line.clone());
        }
        if i >= 5 && (i - 5) % 11 == 0 {
            doubled.push(lines[i - 5].clone());
        }
    }
    let doubled_path = dir.path().join("doubled.jsonl");
    std::fs::write(&doubled_path, doubled.join("\n") + "\n").unwrap();
    let aq1 = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let with_dedup = dir.path().join("aq1-dedup.yaml");
    std::fs::write(&with_dedup, aq1.replacen("operators:\n", "operators:\n  - dedup: {}\n", 1)).unwrap();
    let without = |records: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = records
            .into_iter()
            .filter(|r| r["type"] != "summary")
            .map(|mut r| {
                // (the ids name the operator chain's pipeline only through its name: equal)
                r.as_object_mut().unwrap().remove("id");
                r
            })
            .collect();
        v.sort_by_key(|r| r.to_string());
        v
    };
    let run = |pipeline: &Path, input: &Path, name: &str, engine: &str| {
        let out = dir.path().join(format!("{name}-{engine}.jsonl"));
        let state: &[&str] = if engine == "plain" { &[] } else { &["--no-checkpoints"] };
        run_ok(&[&[pipeline.to_str().unwrap(), "--engine", engine], state].concat(), input, &out);
        records(&out)
    };
    let reference = without(run(&repo().join("pipelines/aq1.yaml"), &clean, "clean", "plain"));
    // without dedup the duplicates are counted: the windows differ
    let counted_twice = without(run(&repo().join("pipelines/aq1.yaml"), &doubled_path, "twice", "plain"));
    assert_ne!(counted_twice, reference, "the duplicates change the windows");
    for engine in ["actors", "plain"] {
        let deduplicated = without(run(&with_dedup, &doubled_path, "dedup", engine));
        assert_eq!(deduplicated.len(), reference.len(), "{engine}");
        assert!(deduplicated == reference, "{engine}: the records differ from the clean input's");
    }
}

#[test]
fn an_event_that_gets_worse_is_updated_and_a_route_can_page_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let updates = dir.path().join("updates.jsonl");
    let aq1 = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    // severity bands on the PM2.5 events, and a route that takes only their updates
    let text = aq1
        .replacen(
            "      enter: 35\n      exit: 25\n",
            "      enter: 35\n      exit: 25\n      severity: { moderate: 35, high: 55, very_high: 150 }\n",
            1,
        )
        .replacen(
            "outputs:\n",
            &format!(
                "outputs:\n  - when: pm25_event\n    events: [update]\n    to:\n      - file: {{ path: \"{}\" }}\n",
                updates.display()
            ),
            1,
        );
    assert!(text.contains("very_high") && text.contains("events: [update]"), "{text}");
    let pipeline = dir.path().join("aq1-bands.yaml");
    std::fs::write(&pipeline, text).unwrap();
    let input = dir.path().join("in.jsonl");
    let values = [10.0, 40.0, 50.0, 60.0, 58.0, 200.0, 30.0, 20.0];
    let lines: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{{\"device\":\"a\",\"ts\":{},\"pm25\":{v},\"co2\":500}}\n", (i as i64 + 1) * 1000))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out = dir.path().join("all.jsonl");
    let text = std::fs::read_to_string(&pipeline).unwrap();
    // (`--output` would replace every route: the file route of aq1.yaml takes PLUME_OUTPUT)
    let child = plume()
        .args(["run", pipeline.to_str().unwrap(), "--no-checkpoints", "--input"])
        .arg(&input)
        .env("PLUME_OUTPUT", &out)
        .output()
        .unwrap();
    assert!(child.status.success(), "{}\n{text}", String::from_utf8_lossy(&child.stderr));
    let all = records(&out);
    let kinds: Vec<&str> = all
        .iter()
        .filter(|r| r["operator"] == "pm25_event")
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["event_start", "event_update", "event_update", "event_end"]);
    let routed = records(&updates);
    assert_eq!(routed.len(), 2, "only the updates: {routed:?}");
    assert_eq!(
        (routed[0]["previous_severity"].as_str(), routed[0]["severity"].as_str(), routed[0]["decided_ts"].as_i64()),
        (Some("moderate"), Some("high"), Some(4000))
    );
    assert_eq!(routed[1]["severity"], "very_high");
    assert_ne!(routed[0]["id"], routed[1]["id"], "one id per band reached");
}

#[test]
fn a_stuck_sensor_opens_no_event_when_health_suppresses_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    // one reading every 10 s: clean air, then a PM2.5 sensor stuck at 80 for 100 s, then clean
    let mut values = vec![10.0];
    values.extend([80.0; 10]);
    values.push(12.0);
    let lines: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{{\"device\":\"a\",\"ts\":{},\"pm25\":{v},\"co2\":500}}\n", (i as i64 + 1) * 10_000))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let aq1 = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let events = |suppress: bool| {
        let text = aq1
            .replacen(
                "operators:\n",
                &format!(
                    "operators:\n  - health: {{ flatline: [ {{ field: pm25, readings: 3, suppress: {suppress} }} ] }}\n"
                ),
                1,
            )
            .replacen("      enter: 35\n      exit: 25\n", "      enter: 35\n      exit: 25\n      min_duration: 30s\n", 1);
        let pipeline = dir.path().join(format!("aq1-stuck-{suppress}.yaml"));
        std::fs::write(&pipeline, text).unwrap();
        let out = dir.path().join(format!("out-{suppress}.jsonl"));
        run_ok(&[pipeline.to_str().unwrap(), "--no-checkpoints"], &input, &out);
        records(&out)
    };
    // without: the stuck value is taken for polluted air and pages
    let paged = events(false);
    assert_eq!(paged.iter().filter(|r| r["type"] == "event_start").count(), 1);
    // with: the flatline is reported, and no event opens
    let guarded = events(true);
    assert_eq!(guarded.iter().filter(|r| r["type"] == "event_start").count(), 0, "{guarded:?}");
    assert!(guarded.iter().any(|r| r["type"] == "health" && r["status"] == "flatline"));
    assert!(guarded.iter().any(|r| r["type"] == "health" && r["status"] == "flatline_cleared"));
}

#[test]
fn events_decided_on_old_uploads_are_marked_backfill_and_kept_from_pages() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages.jsonl");
    let aq1 = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).unwrap();
    let text = aq1
        .replacen("      enter: 35\n      exit: 25\n", "      enter: 35\n      exit: 25\n      backfill_after: 1h\n", 1)
        .replacen(
            "outputs:\n",
            &format!(
                "outputs:\n  - when: pm25_event\n    backfill: skip\n    to:\n      - file: {{ path: \"{}\" }}\n",
                pages.display()
            ),
            1,
        );
    let pipeline = dir.path().join("aq1-backfill.yaml");
    std::fs::write(&pipeline, text).unwrap();
    // a gateway uploads a day-old episode of device `old`; device `live` has one now
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut lines = String::new();
    for (device, start) in [("old", now - 86_400_000), ("live", now - 60_000)] {
        for (i, v) in [10.0, 50.0, 60.0, 20.0].iter().enumerate() {
            lines.push_str(&format!(
                "{{\"device\":\"{device}\",\"ts\":{},\"pm25\":{v},\"co2\":500}}\n",
                start + i as i64 * 10_000
            ));
        }
    }
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines).unwrap();
    let all = dir.path().join("all.jsonl");
    let child = plume()
        .args(["run", pipeline.to_str().unwrap(), "--no-checkpoints", "--input"])
        .arg(&input)
        .env("PLUME_OUTPUT", &all)
        .output()
        .unwrap();
    assert!(child.status.success(), "{}", String::from_utf8_lossy(&child.stderr));
    let events: Vec<serde_json::Value> = records(&all)
        .into_iter()
        .filter(|r| r["operator"] == "pm25_event")
        .collect();
    assert_eq!(events.len(), 4, "{events:?}");
    for e in &events {
        let old = e["device"] == "old";
        assert_eq!(e["backfill"].as_bool(), old.then_some(true), "{e}");
        if old {
            assert!(e["backfill_lag_ms"].as_i64().unwrap() > 86_000_000, "{e}");
        }
    }
    // the pager route has the live device's start and end only
    let paged = records(&pages);
    assert_eq!(paged.len(), 2, "{paged:?}");
    assert!(paged.iter().all(|r| r["device"] == "live"), "{paged:?}");
}
