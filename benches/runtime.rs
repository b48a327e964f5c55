//! The actor runtime against the single-core plain loop, side by side, on the aq1 workload; and
//! the memory the runtime needs per device. Not a test: it only measures and prints.
//!
//! ```text
//! cargo bench --bench runtime                  # everything (about 5 minutes on 2 cores)
//! cargo bench --bench runtime -- --reps 5      # more repetitions of the throughput runs
//! cargo bench --bench runtime -- --only throughput   (or: idle, passivation, metrics, time-index)
//! cargo bench --bench runtime -- --only floor --reps 5   (issue 18; or: floor-micro, floor-checkpoints)
//! ```
//!
//! Every run is a child process of the release `plume` binary, so its peak RSS (`ru_maxrss`
//! from `wait4`) and CPU time are its own. Inputs are generated once with plume's aq1 generator
//! (`plume generate aq1`) and cached in `<target dir>/plume-bench/`.
//!
//! 1. **Throughput**: aq1 with 10,000 devices and 5,000,000 readings from a file, written to an
//!    output file. Each repetition runs, in turn, `plume run --engine plain` (parse + operator
//!    chain + format on one thread: the single-core ceiling) and the actor runtime with 2 and
//!    with 1 shard (`plume run pipelines/aq1.yaml --input FILE --output OUT --shards N`, each run
//!    with a fresh `--data-dir`, so it ends with its RocksDB checkpoint as `plume run` does), and
//!    with 2 shards and `--no-checkpoints` (in memory, like the plain loop); the order rotates
//!    between repetitions so that a burst of load elsewhere does not always hit the same engine. Reports median readings/s (wall time of the whole process), the ratio
//!    actors / plain, CPU seconds and peak RSS; checks that every run wrote the same summary.
//! 2. **Idle devices**: 200,000 devices send two readings each through stdin and then stay
//!    idle but active (`passivate_after: 1h`); once the process has stopped using CPU, its RSS
//!    is compared with the same run over 1,000 devices (same number of readings). The
//!    difference divided by the difference in devices is the memory per idle active device.
//! 3. **Passivation**: 1,000,000 distinct devices (two readings each) with
//!    `passivate_after: 1s`; reports peak RSS (target: under 2 GiB) and the passivations.

#[path = "floor/reference.rs"]
mod reference;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const THROUGHPUT_DEVICES: u32 = 10_000;
const THROUGHPUT_READINGS: u64 = 5_000_000;
const IDLE_DEVICES: u32 = 200_000;
const IDLE_FEW_DEVICES: u32 = 1_000;
const PASSIVATION_DEVICES: u32 = 1_000_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<target dir>/plume-bench`: the bench executable is `<target dir>/<profile>/deps/runtime-…`.
fn data_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("plume-bench");
    std::fs::create_dir_all(&dir).expect("creating the bench data directory");
    dir
}

/// An aq1 input from plume's generator, generated once.
fn aq1_input(devices: u32, readings: u64) -> PathBuf {
    let path = data_dir().join(format!("aq1-{devices}-{readings}-1.jsonl"));
    if path.exists() {
        return path;
    }
    eprintln!("generating {} (once) …", path.display());
    let partial = path.with_extension("partial");
    let file = File::create(&partial).expect("creating the aq1 input");
    let spec = plume::workload::Aq1Spec {
        devices,
        readings,
        seed: 1,
    };
    plume::workload::generate_aq1(spec, &mut std::io::BufWriter::with_capacity(1 << 22, file))
        .expect("generating the aq1 input");
    std::fs::rename(&partial, &path).expect("renaming the generated input");
    path
}

/// `pipelines/aq1.yaml` with a `runtime:` section of our own.
fn aq1_pipeline_with(name: &str, runtime: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).expect("reading pipelines/aq1.yaml");
    assert!(
        !text.contains("\nruntime:"),
        "pipelines/aq1.yaml has its own runtime section"
    );
    let path = data_dir().join(name);
    std::fs::write(&path, format!("{text}\nruntime:\n{runtime}")).expect("writing a bench pipeline");
    path
}

/// What one child process did.
struct Measured {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
    stderr: String,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits for `child` with `wait4`, which gives its own resource usage.
fn wait_measured(child: std::process::Child, started: Instant, stderr_path: &Path) -> Measured {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: plain syscall on our own child; `rusage` is plain old data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child); // reaped above
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "plume failed ({status}):\n{stderr}"
    );
    Measured {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
        stderr,
    }
}

/// The `plume` binary the runs use: this build's, or `PLUME_BENCH_BIN` (to measure another
/// build, such as the code before a change, with the same bench).
fn plume_binary() -> String {
    std::env::var("PLUME_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_plume").to_string())
}

/// A fresh state directory for an actor run (`plume run` resumes from an existing one).
fn fresh_state_dir() -> PathBuf {
    let dir = data_dir().join("state");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Starts `plume ARGS`; an actor run (`run` without `--engine plain` or `--no-checkpoints`) gets a
/// fresh `--data-dir`, so every run starts from nothing, as the plain loop does.
fn plume(args: &[&str], stdin: Stdio, stderr_path: &Path) -> (std::process::Child, Instant) {
    plume_with_env(args, &[], stdin, stderr_path)
}

fn plume_with_env(
    args: &[&str],
    env: &[(&str, String)],
    stdin: Stdio,
    stderr_path: &Path,
) -> (std::process::Child, Instant) {
    plume_with_binary(&plume_binary(), args, env, stdin, stderr_path)
}

fn plume_with_binary(
    binary: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: Stdio,
    stderr_path: &Path,
) -> (std::process::Child, Instant) {
    let mut command = Command::new(binary);
    command.current_dir(repo()).args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    if args[0] == "run" && !args.contains(&"plain") && !args.contains(&"--no-checkpoints") {
        command.arg("--data-dir").arg(fresh_state_dir());
    }
    let started = Instant::now();
    let child = command
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(File::create(stderr_path).expect("stderr file"))
        .spawn()
        .expect("starting plume");
    (child, started)
}

fn run_file(args: &[&str]) -> Measured {
    let stderr_path = data_dir().join("stderr.txt");
    let (child, started) = plume(args, Stdio::null(), &stderr_path);
    wait_measured(child, started, &stderr_path)
}

/// The summary record: the last line of an output file. (Only its tail is read: a child's
/// `ru_maxrss` starts from this process's peak RSS at the fork, so this process stays small.)
fn summary_of(path: &Path) -> String {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).expect("opening an output");
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).expect("seeking");
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).expect("reading an output");
    String::from_utf8_lossy(&tail).lines().last().unwrap_or("").to_string()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn throughput(reps: usize) {
    let input = aq1_input(THROUGHPUT_DEVICES, THROUGHPUT_READINGS);
    let input = input.to_str().expect("utf-8 path");
    let out = data_dir().join("out.jsonl");
    let out_s = out.to_str().expect("utf-8 path");
    let engines: [(&str, Vec<&str>); 4] = [
        ("plain loop (1 thread)", vec!["--engine", "plain"]),
        ("actors, 2 shards", vec!["--shards", "2"]),
        (
            "actors, 2 shards, no state store",
            vec!["--shards", "2", "--no-checkpoints"],
        ),
        ("actors, 1 shard", vec!["--shards", "1"]),
    ];
    let mut results: Vec<Vec<Measured>> = engines.iter().map(|_| Vec::new()).collect();
    let mut summary: Option<String> = None;
    println!(
        "\n## Throughput: aq1, {THROUGHPUT_DEVICES} devices, {THROUGHPUT_READINGS} readings, {reps} repetitions (load average before: {})",
        load_average()
    );
    for rep in 0..reps {
        for k in 0..engines.len() {
            let e = (k + rep) % engines.len();
            let (name, extra) = &engines[e];
            let mut args = vec!["run", "pipelines/aq1.yaml", "--input", input, "--output", out_s];
            args.extend(extra.iter().copied());
            let m = run_file(&args);
            let s = summary_of(&out);
            match &summary {
                None => summary = Some(s),
                Some(first) => assert_eq!(first, &s, "{name} wrote a different summary"),
            }
            eprintln!(
                "  rep {rep} {name:<33} {:>7.3} s  {:>10.0} readings/s  cpu {:>6.2} s  peak RSS {:>7.1} MiB  (load {})",
                m.wall.as_secs_f64(),
                THROUGHPUT_READINGS as f64 / m.wall.as_secs_f64(),
                m.cpu.as_secs_f64(),
                mib(m.max_rss_kib),
                load_average()
            );
            results[e].push(m);
        }
    }
    let _ = std::fs::remove_file(&out);
    let rate = |ms: &[Measured]| {
        median(
            ms.iter()
                .map(|m| THROUGHPUT_READINGS as f64 / m.wall.as_secs_f64())
                .collect(),
        )
    };
    let plain = rate(&results[0]);
    println!("\n| run | median readings/s | × plain loop | median CPU s | peak RSS (max) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (e, (name, _)) in engines.iter().enumerate() {
        let r = rate(&results[e]);
        let cpu = median(results[e].iter().map(|m| m.cpu.as_secs_f64()).collect());
        let rss = results[e].iter().map(|m| m.max_rss_kib).max().unwrap_or(0);
        println!(
            "| {name} | {:.0} | {:.2} | {cpu:.2} | {:.0} MiB |",
            r,
            r / plain,
            mib(rss)
        );
    }
    // ratio per repetition (each pair ran back to back)
    let per_rep: Vec<String> = (0..reps)
        .map(|i| {
            format!(
                "{:.2}",
                results[0][i].wall.as_secs_f64() / results[1][i].wall.as_secs_f64()
            )
        })
        .collect();
    println!(
        "\nactors (2 shards) / plain, per repetition: {}; summary: {}",
        per_rep.join(", "),
        summary.unwrap_or_default()
    );
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Feeds `input` to `plume run PIPELINE --input -` and keeps stdin open; once the process is
/// idle (no CPU used for a second), returns its resident memory (KiB) and lets it finish.
fn idle_rss(pipeline: &Path, input: &Path) -> (u64, Measured) {
    let stderr_path = data_dir().join("stderr.txt");
    let out = data_dir().join("idle-out.jsonl");
    let args = [
        "run",
        pipeline.to_str().unwrap(),
        "--input",
        "-",
        "--output",
        out.to_str().unwrap(),
        "--shards",
        "2",
    ];
    let (mut child, started) = plume(&args, Stdio::piped(), &stderr_path);
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut file = File::open(input).expect("opening the input");
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).expect("reading the input");
        if n == 0 {
            break;
        }
        stdin.write_all(&buf[..n]).expect("feeding plume");
    }
    stdin.flush().ok();
    let mut last = cpu_ticks(pid);
    let mut still = 0;
    while still < 4 {
        std::thread::sleep(Duration::from_millis(250));
        let now = cpu_ticks(pid);
        if now == last {
            still += 1
        } else {
            still = 0
        }
        last = now;
    }
    let rss = proc_field(pid, "status", "VmRSS:").expect("VmRSS");
    drop(stdin);
    let m = wait_measured(child, started, &stderr_path);
    let _ = std::fs::remove_file(&out);
    (rss, m)
}

fn idle_devices() {
    println!(
        "\n## Memory per idle active device (load average before: {})",
        load_average()
    );
    let pipeline = aq1_pipeline_with("aq1-no-passivation.yaml", "  passivate_after: 1h\n");
    let readings = 2 * IDLE_DEVICES as u64;
    let many = aq1_input(IDLE_DEVICES, readings);
    let few = aq1_input(IDLE_FEW_DEVICES, readings);
    let (rss_few, _) = idle_rss(&pipeline, &few);
    let (rss_many, m) = idle_rss(&pipeline, &many);
    let per_device = (rss_many as f64 - rss_few as f64) * 1024.0 / (IDLE_DEVICES - IDLE_FEW_DEVICES) as f64;
    println!("\n| devices (all active, idle) | readings | RSS when idle | peak RSS |");
    println!("| ---: | ---: | ---: | ---: |");
    println!("| {IDLE_FEW_DEVICES} | {readings} | {:.1} MiB | |", mib(rss_few));
    println!(
        "| {IDLE_DEVICES} | {readings} | {:.1} MiB | {:.1} MiB |",
        mib(rss_many),
        mib(m.max_rss_kib)
    );
    println!("\nper idle active device: {per_device:.0} bytes (target: at most 1024)");
}

fn passivation() {
    println!(
        "\n## {PASSIVATION_DEVICES} distinct devices with passivation (load average before: {})",
        load_average()
    );
    let pipeline = aq1_pipeline_with("aq1-passivate-1s.yaml", "  passivate_after: 1s\n");
    let readings = 2 * PASSIVATION_DEVICES as u64;
    let input = aq1_input(PASSIVATION_DEVICES, readings);
    let out = data_dir().join("passivation-out.jsonl");
    let m = run_file(&[
        "run",
        pipeline.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--shards",
        "2",
    ]);
    let _ = std::fs::remove_file(&out);
    let report = m
        .stderr
        .lines()
        .rfind(|l| l.starts_with("done:"))
        .unwrap_or("")
        .to_string();
    println!(
        "\npeak RSS {:.1} MiB (target: under 2048 MiB), {:.2} s, cpu {:.2} s\n`{report}`",
        mib(m.max_rss_kib),
        m.wall.as_secs_f64(),
        m.cpu.as_secs_f64()
    );
}

/// A `key=value` number from a log line.
fn log_number(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// 4. **Time index**: 1,000,000 devices that each sent two readings and then went quiet (99 % of
///    the fleet: they are passivated after 2 s), while 10,000 devices go on with the aq1 traffic
///    (5,000,000 readings). The same pipeline (aq1 with a `health` operator) runs with
///    `offline_after: 1h`, so every quiet device has an entry in the deadline index, and without
///    it, so none has; the difference is what the index costs: throughput ratio (readings/s of
///    the whole run, medians), and bytes per device (the shards' own count of the index's memory,
///    and the RSS difference while the quiet devices are passive as a cross-check).
fn time_index(reps: usize) {
    println!(
        "\n## time index: {PASSIVATION_DEVICES} devices, 99 % passive (load average before: {})",
        load_average()
    );
    let input = data_dir().join("time-index-input.jsonl");
    if !input.exists() {
        let quiet = aq1_input(PASSIVATION_DEVICES, 2 * PASSIVATION_DEVICES as u64);
        let traffic = aq1_input(THROUGHPUT_DEVICES, THROUGHPUT_READINGS);
        let partial = input.with_extension("partial");
        let mut out = File::create(&partial).expect("creating the time index input");
        for part in [quiet, traffic] {
            std::io::copy(&mut File::open(part).expect("an aq1 input"), &mut out).expect("copying");
        }
        std::fs::rename(&partial, &input).expect("renaming the input");
    }
    let readings = 2 * PASSIVATION_DEVICES as u64 + THROUGHPUT_READINGS;
    let text = std::fs::read_to_string(repo().join("pipelines/aq1.yaml")).expect("reading pipelines/aq1.yaml");
    let with_health = |name: &str, offline: &str| {
        let path = data_dir().join(name);
        let health = format!(
            "operators:\n  - health:\n      name: sensor_health\n{offline}      flatline: [{{ field: co2, readings: 1000 }}]\n"
        );
        let body = text.replacen("operators:\n", &health, 1);
        // (the default `max_devices`, 500,000, would refuse half the fleet)
        std::fs::write(
            &path,
            format!("{body}\nruntime:\n  passivate_after: 2s\n  max_devices: 2000000\n"),
        )
        .expect("writing a bench pipeline");
        path
    };
    let without = with_health("aq1-health.yaml", "");
    let with = with_health("aq1-health-offline.yaml", "      offline_after: 1h\n");
    let out = data_dir().join("time-index-out.jsonl");
    // (name, readings/s, CPU s, RSS while passive KiB, index entries, index bytes)
    type Runs = (&'static str, Vec<f64>, Vec<f64>, Vec<u64>, u64, u64);
    let mut results: Vec<Runs> = vec![
        ("without the index", vec![], vec![], vec![], 0, 0),
        ("offline_after: 1h", vec![], vec![], vec![], 0, 0),
    ];
    for rep in 0..reps {
        for k in 0..2 {
            let which = (k + rep) % 2;
            let pipeline = if which == 0 { &without } else { &with };
            let stderr_path = data_dir().join("stderr.txt");
            let (child, started) = plume_with_env(
                &[
                    "run",
                    pipeline.to_str().unwrap(),
                    "--input",
                    input.to_str().unwrap(),
                    "--output",
                    out.to_str().unwrap(),
                    "--shards",
                    "2",
                ],
                // (the shards log their index's size at the end at level info)
                &[("PLUME_LOG", "warn,plume::runtime::shard=info".to_string())],
                Stdio::null(),
                &stderr_path,
            );
            // RSS while the quiet devices are passive and the traffic flows: sampled every
            // 100 ms, the median of the samples from 50 % to 80 % of the run
            let pid = child.id();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Some(kib) = proc_field(pid, "status", "VmRSS:") {
                            samples.push((started.elapsed(), kib));
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    samples
                })
            };
            let m = wait_measured(child, started, &stderr_path);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let samples = sampler.join().expect("the RSS sampler");
            let steady: Vec<f64> = samples
                .iter()
                .filter(|(t, _)| *t >= m.wall.mul_f64(0.5) && *t <= m.wall.mul_f64(0.8))
                .map(|(_, kib)| *kib as f64)
                .collect();
            let logged = |key: &str| -> u64 {
                m.stderr
                    .lines()
                    .filter(|l| l.contains("deadline index"))
                    .filter_map(|l| log_number(l, key))
                    .sum()
            };
            let r = &mut results[which];
            r.1.push(readings as f64 / m.wall.as_secs_f64());
            r.2.push(m.cpu.as_secs_f64());
            r.3.push(if steady.is_empty() { 0 } else { median(steady) as u64 });
            r.4 = r.4.max(logged("entries_peak"));
            r.5 = r.5.max(logged("bytes_peak"));
        }
    }
    let _ = std::fs::remove_file(&out);
    println!(
        "\n| pipeline | readings/s (median) | ratio | CPU s | RSS while passive MiB | index entries (peak) | index MiB (peak) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let base = median(results[0].1.clone());
    for (name, rates, cpu, rss, entries, bytes) in &results {
        let rate = median(rates.clone());
        println!(
            "| {name} | {rate:.0} | {:.3} | {:.2} | {:.0} | {entries} | {:.1} |",
            rate / base,
            median(cpu.clone()),
            mib(median(rss.iter().map(|&k| k as f64).collect()) as u64),
            *bytes as f64 / (1024.0 * 1024.0),
        );
    }
    let rss_diff_kib = median(results[1].3.iter().map(|&k| k as f64).collect())
        - median(results[0].3.iter().map(|&k| k as f64).collect());
    println!(
        "\nindex: {:.1} bytes per device of the fleet ({} devices; the shards' own count of the heap, id \
         arena and stored set, by capacity, at their peak); RSS difference while passive {:.1} bytes per \
         device (medians of {reps})",
        results[1].5 as f64 / PASSIVATION_DEVICES as f64,
        PASSIVATION_DEVICES,
        rss_diff_kib * 1024.0 / PASSIVATION_DEVICES as f64
    );
}

/// `GET /metrics` on 127.0.0.1:`port` every `every` until `stop`; returns the scrapes answered.
fn scrape_until(port: u16, every: Duration, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    let mut answered = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(stream, "GET /metrics HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            if stream.read_to_string(&mut body).is_ok() && body.contains("plume_readings_total") {
                answered += 1;
            }
        }
        std::thread::sleep(every);
    }
    answered
}

/// A minimal OTLP/HTTP collector on 127.0.0.1: answers every POST with 200 (what it receives
/// is checked by `tests/otlp.rs`; here only its cost to plume matters). Returns its port and
/// the count of requests answered.
fn otlp_sink() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, answered)
}

/// 4. **Metrics**: the throughput run (2 shards, a checkpoint every second) three ways, in
///    rotating order: without any export; with `--metrics` and a scraper asking for `/metrics`
///    every 100 ms (150 times as often as Prometheus's default 15 s); and with that and OTLP
///    export of metrics every second (60 times the default) and spans (a checkpoint span with
///    its phases every second) to a local collector. Median readings/s of each and the ratios.
fn metrics_cost(reps: usize) {
    let input = aq1_input(THROUGHPUT_DEVICES, THROUGHPUT_READINGS);
    let input = input.to_str().expect("utf-8 path");
    let out = data_dir().join("out.jsonl");
    let out_s = out.to_str().expect("utf-8 path");
    let (collector, exports) = otlp_sink();
    let (mut off, mut on, mut otlp, mut scrapes) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut cpu: [Vec<f64>; 3] = Default::default();
    println!(
        "\n## metrics and OTLP export on vs off ({THROUGHPUT_READINGS} readings, 2 shards, a checkpoint every second)"
    );
    const MODES: [&str; 3] = ["off", "/metrics", "/metrics + OTLP"];
    for rep in 0..reps {
        for k in 0..3 {
            let mode = (rep + k) % 3;
            let base = ["run", "pipelines/aq1.yaml", "--input", input, "--output", out_s];
            let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            args.extend(["--shards", "2", "--checkpoint-interval", "1s"].map(String::from));
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if mode > 0 {
                args.extend(["--metrics".to_string(), format!("127.0.0.1:{port}")]);
            }
            let env: Vec<(&str, String)> = if mode == 2 {
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{collector}")),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "1000".into()),
                    ("OTEL_BSP_SCHEDULE_DELAY", "1000".into()),
                ]
            } else {
                Vec::new()
            };
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scraper = (mode > 0).then(|| {
                let stop = stop.clone();
                std::thread::spawn(move || scrape_until(port, Duration::from_millis(100), stop))
            });
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let stderr_path = data_dir().join("stderr.txt");
            let (child, started) = plume_with_env(&args, &env, Stdio::null(), &stderr_path);
            let m = wait_measured(child, started, &stderr_path);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(s) = scraper {
                scrapes += s.join().unwrap();
            }
            let rate = THROUGHPUT_READINGS as f64 / m.wall.as_secs_f64();
            println!(
                "  rep {rep}: {:>15}: {rate:.0} readings/s ({:.2} s, cpu {:.2} s)",
                MODES[mode],
                m.wall.as_secs_f64(),
                m.cpu.as_secs_f64()
            );
            [&mut off, &mut on, &mut otlp][mode].push(rate);
            cpu[mode].push(m.cpu.as_secs_f64());
        }
    }
    let (off, on, otlp) = (median(off), median(on), median(otlp));
    println!(
        "  median: off {off:.0}/s, /metrics {on:.0}/s, /metrics + OTLP {otlp:.0}/s: /metrics/off = {:.3}, \
         (/metrics + OTLP)/off = {:.3} ({scrapes} scrapes answered, {} OTLP requests received)",
        on / off,
        otlp / off,
        exports.load(std::sync::atomic::Ordering::Relaxed)
    );
    let [c_off, c_on, c_otlp] = cpu.map(median);
    println!(
        "  median CPU seconds: off {c_off:.2}, /metrics {c_on:.2}, /metrics + OTLP {c_otlp:.2}: \
         (/metrics + OTLP)/off = {:.3}",
        c_otlp / c_off
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // the reference of `--only floor`, run as a child process like every plume run
    if args.first().map(String::as_str) == Some("--reference-child") {
        let output = args.get(2).map(String::as_str);
        let t = reference::run(&args[1], output);
        println!(
            "readings {} late {} bad_lines {} devices {} records {}",
            t.readings, t.late, t.bad_lines, t.devices, t.records
        );
        return;
    }
    let mut reps = 3;
    let mut only: Option<String> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--reps" => {
                reps = args.get(i + 1).and_then(|s| s.parse().ok()).expect("--reps N");
                i += 1;
            }
            "--only" => {
                only = args.get(i + 1).cloned();
                i += 1;
            }
            _ => {} // `--bench` and filters from cargo
        }
        i += 1;
    }
    let want = |part: &str| only.as_deref().is_none_or(|o| o == part);
    println!(
        "plume runtime bench: {} CPUs, plume = {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        plume_binary()
    );
    // children's ru_maxrss cannot be below this process's own peak (see `summary_of`)
    let own = proc_field(std::process::id(), "status", "VmHWM:").unwrap_or(0);
    println!("(this process's peak RSS: {:.1} MiB)", mib(own));
    if want("throughput") {
        throughput(reps.max(1));
    }
    if want("idle") {
        idle_devices();
    }
    if want("passivation") {
        passivation();
    }
    if want("metrics") {
        metrics_cost(reps.max(1));
    }
    if want("time-index") {
        time_index(reps.max(1));
    }
    if only.as_deref() == Some("floor") {
        // the runs first: a child's peak RSS starts from this process's, and the per-line
        // measurements hold 100 MB of input
        floor(reps.max(1));
        floor_micro();
    }
    if only.as_deref() == Some("floor-micro") {
        floor_micro();
    }
    if only.as_deref() == Some("floor-checkpoints") {
        let input = aq1_input(THROUGHPUT_DEVICES, THROUGHPUT_READINGS);
        let input = input.to_str().expect("utf-8 path");
        floor_fixed_cost(input, reps.max(1));
        floor_checkpoint_cost(input, reps.max(1));
    }
}

/// CPU time per thread of a running process (utime + stime in clock ticks), by thread name and
/// rank, from `/proc/<pid>/task/*/stat` sampled every 50 ms until the
/// process is gone: a thread's last sample is at most 50 ms before it ended.
fn sample_threads(pid: u32, done: std::sync::Arc<std::sync::atomic::AtomicBool>) -> BTreeMap<String, ThreadUse> {
    let mut per_tid: BTreeMap<u32, (String, ThreadUse)> = BTreeMap::new();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            break;
        };
        for entry in dir.flatten() {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_string();
            let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ticks = f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let switches = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            let used = ThreadUse {
                ticks,
                waited: switches("voluntary_ctxt_switches:"),
                preempted: switches("nonvoluntary_ctxt_switches:"),
            };
            per_tid.insert(tid, (name, used));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // threads of one name (the shards' actix threads are all `actix-rt|system`) are told apart
    // by their rank in CPU time: `name #1` used the most
    let mut threads: Vec<(String, ThreadUse)> = per_tid.into_values().collect();
    threads.sort_by(|a, b| b.1.ticks.cmp(&a.1.ticks));
    let mut by_name: BTreeMap<String, ThreadUse> = BTreeMap::new();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for (name, used) in threads {
        let rank = seen.entry(name.clone()).or_default();
        *rank += 1;
        by_name.insert(format!("{name} #{rank}"), used);
    }
    by_name
}

/// What one thread of a child used: CPU (clock ticks), and how often it left the CPU because it
/// waited (voluntary context switches: a blocking call, an empty mailbox) or was preempted
/// (other runnable threads, here or elsewhere on the machine).
#[derive(Clone, Copy, Default)]
struct ThreadUse {
    ticks: u64,
    waited: u64,
    preempted: u64,
}

/// Waits for `child` as [`wait_measured`] does, sampling its threads' CPU meanwhile.
fn wait_sampled(
    child: std::process::Child,
    started: Instant,
    stderr_path: &Path,
) -> (Measured, BTreeMap<String, ThreadUse>) {
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || sample_threads(pid, done))
    };
    let m = wait_measured(child, started, stderr_path);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (m, sampler.join().expect("the thread sampler"))
}

/// The floor's run of two references at once.
const TWO_REFERENCES: &str = "two references at once (the machine's ceiling)";

/// Issue 18: plume against a no-framework loop doing the same aq1 work (`benches/floor/
/// reference.rs`), side by side, interleaved; readings/s as medians and ratios to the reference,
/// and where the CPU goes per thread in the 2-shard runs.
fn floor(reps: usize) {
    let input = aq1_input(THROUGHPUT_DEVICES, THROUGHPUT_READINGS);
    let input = input.to_str().expect("utf-8 path");
    let out = data_dir().join("floor-out.jsonl");
    let out_s = out.to_str().expect("utf-8 path");
    let reference_out = data_dir().join("floor-reference-out.jsonl");
    let reference_out_s = reference_out.to_str().expect("utf-8 path");
    // (name, plume arguments or None for the reference, the reference's output path if any,
    // the plume binary)
    let this = plume_binary();
    let mut runs: Vec<(String, Option<Vec<&str>>, Option<&str>, String)> = vec![
        (
            "reference (serde_json struct, no output)".into(),
            None,
            None,
            this.clone(),
        ),
        (
            "reference, writing its records".into(),
            None,
            Some(reference_out_s),
            this.clone(),
        ),
        (
            "plume --engine plain".into(),
            Some(vec!["--engine", "plain"]),
            None,
            this.clone(),
        ),
        (
            "plume --shards 1".into(),
            Some(vec!["--shards", "1", "--checkpoint-interval", "10s"]),
            None,
            this.clone(),
        ),
        (
            "plume --shards 2, checkpoints every 10 s".into(),
            Some(vec!["--shards", "2", "--checkpoint-interval", "10s"]),
            None,
            this.clone(),
        ),
        (
            "plume --shards 2 --no-checkpoints".into(),
            Some(vec!["--shards", "2", "--no-checkpoints"]),
            None,
            this.clone(),
        ),
    ];
    // `PLUME_BENCH_BEFORE=<another plume binary>`: its runs too, interleaved with these (a
    // before/after comparison in one run)
    if let Ok(before) = std::env::var("PLUME_BENCH_BEFORE") {
        for k in 2..6 {
            let (name, args, _, _) = runs[k].clone();
            runs.push((format!("before: {name}"), args, None, before.clone()));
        }
    }
    // the machine's own ceiling for two threads: two references at once, each on the whole
    // input, timed until both are done (readings/s counts both copies' readings). What two
    // shards could reach at best on these two vCPUs, shared as they are (memory bandwidth,
    // caches, the host's other guests), with no framework at all.
    let two_references = runs.len();
    runs.push((TWO_REFERENCES.into(), None, None, this.clone()));
    let copies = |e: usize| if e == two_references { 2.0 } else { 1.0 };
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut results: Vec<Vec<(Measured, BTreeMap<String, ThreadUse>)>> = runs.iter().map(|_| Vec::new()).collect();
    let mut summary: Option<String> = None;
    println!(
        "\n## Floor (issue 18): aq1, {THROUGHPUT_DEVICES} devices, {THROUGHPUT_READINGS} readings, {reps} repetitions (load average before: {})",
        load_average()
    );
    for rep in 0..reps {
        for k in 0..runs.len() {
            let e = (k + rep) % runs.len();
            let (name, plume_args, reference_output, binary) = &runs[e];
            let stderr_path = data_dir().join("stderr.txt");
            // every run starts with no output file, as it starts with no state: truncating the
            // previous run's (200 MB, in the page cache) delayed the first readings by 10–40 ms
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&reference_out);
            let (m, threads) = match plume_args {
                Some(extra) => {
                    let mut args = vec!["run", "pipelines/aq1.yaml", "--input", input, "--output", out_s];
                    args.extend(extra.iter().copied());
                    let (child, started) = plume_with_binary(binary, &args, &[], Stdio::null(), &stderr_path);
                    let measured = wait_sampled(child, started, &stderr_path);
                    let s = summary_of(&out);
                    match &summary {
                        None => summary = Some(s),
                        Some(first) => assert_eq!(first, &s, "{name} wrote a different summary"),
                    }
                    measured
                }
                None => {
                    let reference = |stdout: &str| {
                        let mut command = Command::new(std::env::current_exe().expect("current exe"));
                        command.arg("--reference-child").arg(input);
                        if let Some(o) = reference_output {
                            command.arg(o);
                        }
                        command
                            .stdout(File::create(data_dir().join(stdout)).expect("stdout file"))
                            .stderr(File::create(&stderr_path).expect("stderr file"))
                            .spawn()
                            .expect("starting the reference")
                    };
                    let started = Instant::now();
                    if e == two_references {
                        let (first, second) = (reference("reference-1.txt"), reference("reference-2.txt"));
                        let (a, b) = (
                            wait_measured(first, started, &stderr_path),
                            wait_measured(second, started, &stderr_path),
                        );
                        for out in ["reference-1.txt", "reference-2.txt"] {
                            assert_eq!(
                                std::fs::read_to_string(data_dir().join(out)).expect("a reference's result"),
                                std::fs::read_to_string(data_dir().join("reference.txt"))
                                    .expect("the reference's result"),
                                "two references at once find what one alone finds"
                            );
                        }
                        let both = Measured {
                            wall: a.wall.max(b.wall),
                            cpu: a.cpu + b.cpu,
                            max_rss_kib: a.max_rss_kib + b.max_rss_kib,
                            stderr: String::new(),
                        };
                        (both, BTreeMap::new())
                    } else {
                        wait_sampled(reference("reference.txt"), started, &stderr_path)
                    }
                }
            };
            eprintln!(
                "  rep {rep} {name:<42} {:>7.3} s  {:>10.0} readings/s  cpu {:>6.2} s  peak RSS {:>7.1} MiB  (load {})",
                m.wall.as_secs_f64(),
                copies(e) * THROUGHPUT_READINGS as f64 / m.wall.as_secs_f64(),
                m.cpu.as_secs_f64(),
                mib(m.max_rss_kib),
                load_average()
            );
            results[e].push((m, threads));
        }
    }
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&reference_out);
    // readings/s of run `e`, the median over the repetitions
    let rate = |e: usize| {
        median(
            results[e]
                .iter()
                .map(|(m, _)| copies(e) * THROUGHPUT_READINGS as f64 / m.wall.as_secs_f64())
                .collect(),
        )
    };
    let reference = rate(0);
    let reference_writing = rate(1);
    println!(
        "\nreference: {}",
        std::fs::read_to_string(data_dir().join("reference.txt"))
            .unwrap_or_default()
            .trim()
    );
    println!("plume's summary: {}", summary.unwrap_or_default());
    println!(
        "\n| run | median readings/s | × reference | × reference, paired (median of the repetitions' ratios) | × reference writing its records | median CPU s | CPU ns per reading | CPU / wall | peak RSS (max) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (e, (name, _, _, _)) in runs.iter().enumerate() {
        let r = rate(e);
        let cpu = median(results[e].iter().map(|(m, _)| m.cpu.as_secs_f64()).collect());
        let busy = median(
            results[e]
                .iter()
                .map(|(m, _)| m.cpu.as_secs_f64() / m.wall.as_secs_f64())
                .collect(),
        );
        let rss = results[e].iter().map(|(m, _)| m.max_rss_kib).max().unwrap_or(0);
        // each repetition's own ratio (its runs are minutes apart at most, so a slow spell of
        // the shared machine weighs on both sides of it), then their median
        let paired = median(
            (0..reps)
                .map(|i| copies(e) * results[0][i].0.wall.as_secs_f64() / results[e][i].0.wall.as_secs_f64())
                .collect(),
        );
        println!(
            "| {name} | {r:.0} | {:.2} | {paired:.2} | {:.2} | {cpu:.2} | {:.0} | {busy:.2} | {:.0} MiB |",
            r / reference,
            r / reference_writing,
            cpu * 1e9 / (copies(e) * THROUGHPUT_READINGS as f64),
            mib(rss)
        );
    }
    let per_rep = |a: usize, b: usize| -> String {
        (0..reps)
            .map(|i| {
                format!(
                    "{:.2}",
                    results[b][i].0.wall.as_secs_f64() / results[a][i].0.wall.as_secs_f64()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("\nper repetition: plain / reference {}", per_rep(2, 0));
    println!(
        "per repetition: 2 shards with checkpoints / reference {}",
        per_rep(4, 0)
    );
    println!(
        "checkpoints every 10 s cost (2 shards, medians): {:+.1} %",
        (1.0 - rate(4) / rate(5)) * 100.0
    );
    let paired = |f: &dyn Fn(usize) -> f64| median((0..reps).map(f).collect());
    println!(
        "two references at once / one alone (this machine's ceiling for two threads), paired: {:.2}; 2 shards without checkpoints / that ceiling, paired: {:.2}",
        paired(&|i| 2.0 * results[0][i].0.wall.as_secs_f64() / results[two_references][i].0.wall.as_secs_f64()),
        paired(&|i| results[two_references][i].0.wall.as_secs_f64() / (2.0 * results[5][i].0.wall.as_secs_f64())),
    );
    floor_fixed_cost(input, reps);
    floor_checkpoint_cost(input, reps);
    // per-thread utilisation: each thread's CPU over the run's wall time (median over the
    // repetitions), threads of one name by rank
    for e in (2..runs.len()).filter(|&e| e != 7 && runs[e].1.is_some()) {
        let mut names: BTreeMap<String, Vec<(f64, u64, u64)>> = BTreeMap::new();
        for (m, threads) in &results[e] {
            for (name, used) in threads {
                names.entry(name.clone()).or_default().push((
                    used.ticks as f64 / clk_tck / m.wall.as_secs_f64(),
                    used.waited,
                    used.preempted,
                ));
            }
        }
        let mut rows: Vec<(String, f64, f64, f64)> = names
            .into_iter()
            .map(|(name, v)| {
                let pick = |f: &dyn Fn(&(f64, u64, u64)) -> f64| {
                    let mut x: Vec<f64> = v.iter().map(f).collect();
                    x.resize(reps, 0.0);
                    median(x)
                };
                (name, pick(&|t| t.0), pick(&|t| t.1 as f64), pick(&|t| t.2 as f64))
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = rows
            .iter()
            .filter(|(_, u, _, _)| *u >= 0.005)
            .map(|(name, u, waited, preempted)| {
                format!(
                    "{name} {:.0} % (waited {waited:.0}×, preempted {preempted:.0}×)",
                    u * 100.0
                )
            })
            .collect();
        println!(
            "\nthreads of `{}` (CPU / wall, and context switches, medians): {}",
            runs[e].0,
            shown.join(", ")
        );
    }
}

/// What a 2-shard run costs whatever its input: the same runs over the first 20,000 lines
/// (10,000 devices), with checkpoints (opening RocksDB, the final checkpoint of every device)
/// and without; the difference is what checkpoints cost a run of any length.
fn floor_fixed_cost(input: &str, reps: usize) {
    let small = data_dir().join("aq1-first-20000.jsonl");
    if !small.exists() {
        let text = std::fs::read(input).expect("reading the input");
        let end = memchr::memchr_iter(b'\n', &text).nth(19_999).expect("20,000 lines") + 1;
        std::fs::write(&small, &text[..end]).expect("writing the small input");
    }
    let small = small.to_str().expect("utf-8 path");
    let out = data_dir().join("floor-out.jsonl");
    let out_s = out.to_str().expect("utf-8 path");
    let configs: [(&str, &[&str]); 2] = [
        (
            "--shards 2, checkpoints every 10 s",
            &["--shards", "2", "--checkpoint-interval", "10s"],
        ),
        ("--shards 2 --no-checkpoints", &["--shards", "2", "--no-checkpoints"]),
    ];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    for _ in 0..reps.max(3) {
        for (k, (_, extra)) in configs.iter().enumerate() {
            let mut args = vec!["run", "pipelines/aq1.yaml", "--input", small, "--output", out_s];
            args.extend(extra.iter().copied());
            walls[k].push(run_file(&args).wall.as_secs_f64());
        }
    }
    let _ = std::fs::remove_file(&out);
    let with = median(walls[0].clone());
    let without = median(walls[1].clone());
    println!(
        "\nfixed cost, 20,000 readings of 10,000 devices (median of {}): {} {with:.3} s, {} {without:.3} s: checkpoints add {:.3} s to any run",
        walls[0].len(),
        configs[0].0,
        configs[1].0,
        with - without
    );
}

/// What one checkpoint costs a 2-shard run while it runs: the whole input with checkpoints every
/// 10 s (none fires in a run this short: only the final one) and every 250 ms, interleaved; the
/// difference over the extra checkpoints taken (counted with `plume checkpoints list`) is the
/// cost of one, and that cost every 10 s is what `checkpoint.interval: 10s` costs a long run.
fn floor_checkpoint_cost(input: &str, reps: usize) {
    let out = data_dir().join("floor-out.jsonl");
    let out_s = out.to_str().expect("utf-8 path");
    let intervals = ["10s", "250ms"];
    let mut runs: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(), Vec::new()];
    for _ in 0..reps.max(3) {
        for (k, interval) in intervals.iter().enumerate() {
            let args = [
                "run",
                "pipelines/aq1.yaml",
                "--input",
                input,
                "--output",
                out_s,
                "--shards",
                "2",
                "--checkpoint-interval",
                interval,
            ];
            let m = run_file(&args);
            // the newest checkpoint's id is the number taken (ids start at 1 in a fresh directory)
            let list = Command::new(plume_binary())
                .args(["checkpoints", "--data-dir"])
                .arg(data_dir().join("state"))
                .arg("list")
                .output()
                .expect("plume checkpoints list");
            let taken = String::from_utf8_lossy(&list.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            runs[k].push((m.wall.as_secs_f64(), m.cpu.as_secs_f64(), taken));
        }
    }
    let _ = std::fs::remove_file(&out);
    let med = |k: usize, f: &dyn Fn(&(f64, f64, u64)) -> f64| median(runs[k].iter().map(f).collect());
    let (wall, cpu, taken) = (
        [med(0, &|r| r.0), med(1, &|r| r.0)],
        [med(0, &|r| r.1), med(1, &|r| r.1)],
        [med(0, &|r| r.2 as f64), med(1, &|r| r.2 as f64)],
    );
    let extra = (taken[1] - taken[0]).max(1.0);
    let per_wall = (wall[1] - wall[0]) / extra;
    let per_cpu = (cpu[1] - cpu[0]) / extra;
    println!(
        "\ncheckpoint cost, 2 shards, 10,000 devices (medians of {}): every 10 s: {:.3} s wall, {:.2} s CPU, {:.0} checkpoints; every 250 ms: {:.3} s wall, {:.2} s CPU, {:.0} checkpoints: {:.1} ms wall and {:.1} ms CPU per checkpoint, so {:.2} % of a long run's time at one every 10 s",
        runs[0].len(),
        wall[0],
        cpu[0],
        taken[0],
        wall[1],
        cpu[1],
        taken[1],
        per_wall * 1e3,
        per_cpu * 1e3,
        per_wall / 10.0 * 100.0
    );
}

/// Issue 18, in-process: what one line costs in each step a router takes, on the first
/// 1,000,000 lines of the aq1 input held in memory (ns per line, median of 7 passes): splitting
/// lines, the device-id scan every router does on every line (`Decoder::device_of` and the
/// key group's xxh3), the full decode (schema-driven fast path, and the general serde path it
/// falls back to), and the reference's `serde_json::from_slice` into a struct.
fn floor_micro() {
    const LINES: usize = 1_000_000;
    let input = aq1_input(THROUGHPUT_DEVICES, THROUGHPUT_READINGS);
    let mut text = Vec::new();
    File::open(&input)
        .expect("opening the input")
        .take(LINES as u64 * 120)
        .read_to_end(&mut text)
        .expect("reading the input");
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    lines.pop(); // possibly cut
    lines.truncate(LINES);
    let path = repo().join("pipelines/aq1.yaml");
    let spec = plume::spec::load_pipeline(&path).unwrap_or_else(|d| panic!("{d}"));
    let pipeline = plume::pipeline::CompiledPipeline::compile(spec.clone()).expect("aq1 compiles");
    let decoder = &pipeline.decoder;
    let now = 1_767_225_600_000i64 + 86_400_000;
    // decoders that have read nothing yet, one per pass (a decoder learns the key order of the
    // first reading it reads)
    let unused_decoders = std::cell::RefCell::new(
        (0..21)
            .map(|_| {
                plume::pipeline::CompiledPipeline::compile(spec.clone())
                    .expect("aq1 compiles")
                    .decoder
            })
            .collect::<Vec<_>>(),
    );
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Line<'a> {
        device: &'a str,
        ts: i64,
        pm25: f64,
        co2: f64,
    }
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let time = |name: &str, f: &dyn Fn() -> u64| -> f64 {
        let mut passes = Vec::new();
        let mut check = 0;
        for _ in 0..7 {
            let started = Instant::now();
            check = std::hint::black_box(f());
            passes.push(started.elapsed().as_secs_f64() * 1e9 / lines.len() as f64);
        }
        let ns = median(passes);
        println!("| {name} | {ns:.1} | {:.2} M/s | {check} |", 1e3 / ns);
        ns
    };
    println!(
        "\n## Floor, per line (issue 18): {} aq1 lines ({} bytes) in memory, one thread, median of 7 passes (load average before: {})\n",
        lines.len(),
        bytes,
        load_average()
    );
    println!("| step | ns per line | lines/s | check |");
    println!("| --- | ---: | ---: | ---: |");
    let split = time("split lines (memchr), as every router does", &|| {
        let mut n = 0u64;
        let mut rest = &text[..bytes];
        while let Some(i) = memchr::memchr(b'\n', rest) {
            n += 1;
            rest = &rest[i + 1..];
        }
        n
    });
    let scan = time("device-id scan + xxh3 (`device_of`, every router, every line)", &|| {
        lines
            .iter()
            .map(|l| {
                let d = decoder.device_of(l, None).expect("a device");
                xxhash_rust::xxh3::xxh3_64(d.as_bytes()) & 1
            })
            .sum()
    });
    let fast = time("full decode (`Decoder::decode`: the schema-driven fast path)", &|| {
        lines
            .iter()
            .map(|l| decoder.decode(l, None, now).expect("decodes").reading.ts as u64 & 1)
            .sum()
    });
    // the first reading in another key order than the rest (the aq1 line's keys moved)
    let odd_first =
        br#"{"ts":1767225600041,"device":"dev-002129","co2":646.6,"pm25":15.5,"voc":222.6,"temp":19.4,"hum":40.5}"#;
    // (as the shards and the plain loop decode: a count kept from payload to payload lets the
    // decoder learn the key order again)
    let decode_all = |decoder: &plume::decode::Decoder| -> u64 {
        let mut differing = plume::decode::DifferingKeyOrders::default();
        let mut decoded = decoder.decode(lines[0], None, now).expect("decodes");
        lines
            .iter()
            .map(|l| {
                decoder
                    .decode_into_learning(l, None, now, &mut decoded, &mut differing)
                    .expect("decodes");
                decoded.reading.ts as u64 & 1
            })
            .sum()
    };
    // (as every caller did before: `Decoder::decode` keeps no count)
    let decode_each = |decoder: &plume::decode::Decoder| -> i64 {
        lines
            .iter()
            .map(|l| decoder.decode(l, None, now).expect("decodes").reading.ts)
            .sum()
    };
    let odd_first_pass = || {
        let decoder = unused_decoders.borrow_mut().pop().expect("a decoder per pass");
        decoder.decode(odd_first, None, now).expect("decodes");
        decode_all(&decoder)
    };
    time(
        "full decode, the first line in another key order (a decoder that has read nothing before it)",
        &odd_first_pass,
    );
    // side by side, pass by pass: the same lines with and without that first line, decoded
    // keeping a count, and by `Decoder::decode` (no count kept: the first line's order stays,
    // as it did for every caller before the decoder learned orders again)
    let (mut ratios, mut ratios_kept) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let started = Instant::now();
        std::hint::black_box(decode_all(decoder));
        let plain = started.elapsed().as_secs_f64();
        let started = Instant::now();
        std::hint::black_box(odd_first_pass());
        ratios.push(started.elapsed().as_secs_f64() / plain);
        let started = Instant::now();
        std::hint::black_box(decode_each(decoder));
        let plain = started.elapsed().as_secs_f64();
        let kept = unused_decoders.borrow_mut().pop().expect("a decoder per pass");
        let started = Instant::now();
        kept.decode(odd_first, None, now).expect("decodes");
        std::hint::black_box(decode_each(&kept));
        ratios_kept.push(started.elapsed().as_secs_f64() / plain);
    }
    let (odd_first_ratio, odd_first_kept_ratio) = (median(ratios), median(ratios_kept));
    let general = time("full decode, general path (serde_json visitor into slots)", &|| {
        lines
            .iter()
            .map(|l| decoder.decode_general(l, None, now).expect("decodes").reading.ts as u64 & 1)
            .sum()
    });
    let reference = time("reference: `serde_json::from_slice` into a struct", &|| {
        lines
            .iter()
            .map(|l| serde_json::from_slice::<Line>(l).expect("parses").ts as u64 & 1)
            .sum()
    });
    println!(
        "\nscan / full decode: {:.1} % (fast path), {:.1} % (general path); split + scan / fast decode: {:.1} %; fast path / general path: {:.2}; fast path / reference struct: {:.2}",
        scan / fast * 100.0,
        scan / general * 100.0,
        (split + scan) / fast * 100.0,
        fast / general,
        fast / reference
    );
    println!(
        "a first line in another key order / none, the same lines, paired per pass (median of 7): {odd_first_ratio:.3} with the order learned again, {odd_first_kept_ratio:.3} with the first line's order kept (`Decoder::decode`)"
    );
}
