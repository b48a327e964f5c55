//! Standard output: JSON lines, or one readable line per record (the demo).

use std::io::Write;

use serde_json::Value;

use crate::model::{OutputRecord, RecordKind};
use crate::runtime::ports::{Sink, SinkError};
use crate::spec::StdoutFormat;

pub struct StdoutSink {
    format: StdoutFormat,
    /// Text lines start by clearing the terminal line, where a live progress line may stand.
    clear_line: bool,
}

impl StdoutSink {
    pub fn new(format: StdoutFormat) -> Self {
        use std::io::IsTerminal;
        let clear_line = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        StdoutSink { format, clear_line }
    }
}

fn clock(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => ms.to_string(),
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// One readable line for a record, or nothing for a health report without any out-of-range
/// reading (every device sends one at the end of input).
pub fn render_text(record: &OutputRecord) -> Option<String> {
    if record.kind == RecordKind::Health {
        let v: Value = serde_json::from_str(&record.json).ok()?;
        if v["status"] == "report" {
            let counts = v["out_of_range"].as_object()?;
            let bad: Vec<String> = counts
                .iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if bad.is_empty() {
                return None;
            }
            let device = v["device"].as_str().unwrap_or("");
            return Some(format!(
                "{}  {:<12} health: out-of-range readings so far: {}",
                clock(v["ts"].as_i64().unwrap_or(0)),
                device,
                bad.join(", ")
            ));
        }
    }
    Some(render_line(record))
}

fn render_line(record: &OutputRecord) -> String {
    let v: Value = match serde_json::from_str(&record.json) {
        Ok(v) => v,
        Err(_) => return record.json.to_string(),
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let i = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    let severity = v
        .get("severity")
        .and_then(Value::as_str)
        .map(|s| format!(" [{s}]"))
        .unwrap_or_default();
    match record.kind {
        RecordKind::EventStart => {
            let peak = if v.get("peak").is_some() && v["peak"] != v["value"] {
                format!(" (peak {})", num(&v["peak"]))
            } else {
                String::new()
            };
            format!(
                "{}  {:<12} {} STARTED  {}={}{}{}",
                clock(i("start_ts")),
                s("device"),
                s("operator"),
                s("field"),
                num(&v["value"]),
                peak,
                severity
            )
        }
        RecordKind::EventEnd => format!(
            "{}  {:<12} {} ended    peak {}={}, mean {}, lasted {}{}",
            clock(i("end_ts")),
            s("device"),
            s("operator"),
            s("field"),
            num(&v["peak"]),
            num(&v["mean"]),
            duration(i("duration_ms")),
            severity
        ),
        RecordKind::EventUpdate => format!(
            "{}  {:<12} {} WORSE    {}={}{}",
            clock(i("decided_ts")),
            s("device"),
            s("operator"),
            s("field"),
            num(&v["peak"]),
            severity
        ),
        RecordKind::Window => {
            let mut line = format!(
                "{}  {:<12} {} count={}",
                clock(i("window_start")),
                s("device"),
                s("operator"),
                i("count")
            );
            if let Some(obj) = v.as_object() {
                for (k, val) in obj {
                    if !matches!(
                        k.as_str(),
                        "v" | "type" | "operator" | "device" | "id" | "window_start" | "window_end" | "count"
                    ) {
                        line.push_str(&format!(" {k}={}", num(val)));
                    }
                }
            }
            line
        }
        RecordKind::Baseline => format!(
            "{:<12} {} baseline {}={}",
            s("device"),
            s("operator"),
            s("field"),
            num(&v["baseline"])
        ),
        RecordKind::Health => {
            let field = v
                .get("field")
                .and_then(Value::as_str)
                .map(|f| format!(" {f}"))
                .unwrap_or_default();
            let detail = match s("status").as_str() {
                "flatline" => format!(" (stuck at {} for {} readings)", num(&v["value"]), i("readings")),
                "offline" => format!(" (last seen {})", clock(i("last_seen"))),
                _ => String::new(),
            };
            format!(
                "{}  {:<12} health: {}{}{}",
                clock(i("ts")),
                s("device"),
                s("status"),
                field,
                detail
            )
        }
        RecordKind::DeadLetter => format!("dead letter from {} ({}): {}", s("source"), s("position"), s("reason")),
        RecordKind::Summary => format!(
            "summary: {} readings, {} late, {} dead letters, {} devices",
            i("readings"),
            i("late"),
            i("dead_letters"),
            i("devices")
        ),
        _ => record.json.to_string(),
    }
}

impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout".into()
    }

    fn write(&mut self, records: &[OutputRecord]) -> Result<(), SinkError> {
        let mut out = std::io::stdout().lock();
        let err = |e| SinkError::Io {
            sink: "stdout".into(),
            operation: "writing",
            source: e,
        };
        for r in records {
            match self.format {
                StdoutFormat::Json => writeln!(out, "{}", r.json).map_err(err)?,
                StdoutFormat::Text => {
                    if let Some(line) = render_text(r) {
                        let clear = if self.clear_line { "\r\x1b[K" } else { "" };
                        writeln!(out, "{clear}{line}").map_err(err)?
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<u64, SinkError> {
        std::io::stdout().flush().map_err(|e| SinkError::Io {
            sink: "stdout".into(),
            operation: "flushing",
            source: e,
        })?;
        Ok(0)
    }

    fn finish(&mut self) -> Result<u64, SinkError> {
        self.flush()
    }
}
