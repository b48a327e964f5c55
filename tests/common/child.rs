//! A plume child process whose standard error is collected line by line (ANSI colours
//! stripped), for tests and benches that wait for what it logs. Shared by the MQTT and Kafka
//! helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LoggedChild {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A line without its ANSI escape sequences.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl LoggedChild {
    /// Starts `command` (standard output discarded, standard error collected).
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("plume runs");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(strip_ansi(&line));
                }
            })
        };
        LoggedChild {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Lines that contain every one of `texts`.
    pub fn count(&self, texts: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| texts.iter().all(|t| l.contains(t)))
            .count()
    }

    /// The newest line that satisfies `pick`, mapped.
    pub fn newest<T>(&self, pick: impl FnMut(&String) -> Option<T>) -> Option<T> {
        self.log.lock().unwrap().iter().rev().find_map(pick)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until at least `n` lines contain every one of `texts`, or panics with the log.
    pub fn wait_logged(&self, texts: &[&str], n: usize, timeout: Duration) {
        let started = Instant::now();
        while self.count(texts) < n {
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {texts:?} x{n}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Ctrl-C, then waits for the graceful end (which must succeed); returns the log.
    pub fn interrupt(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        let text = self.log_text();
        assert!(status.success(), "plume failed ({status}):\n{text}");
        text
    }

    /// SIGKILL: no chance to drain, flush or checkpoint; returns the log so far.
    pub fn kill(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.log_text()
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
