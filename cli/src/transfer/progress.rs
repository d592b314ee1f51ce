//! What `ferry cp` tells the user while a transfer runs: a progress line on a terminal, JSON
//! events with `--json` (one object per line on stdout, documented in README.md), or nothing
//! with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use ferry_engine::io::driver::{DriveReport, Progress};
use serde_json::{Value, json};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// JSON events on stdout (and no human summary line).
    Json,
    /// A progress line on stderr, redrawn in place (only when stderr is a terminal).
    Bar,
    /// Nothing but the final summary line.
    Quiet,
}

impl Mode {
    pub(crate) fn choose(json: bool, quiet: bool) -> Self {
        if json {
            Self::Json
        } else if quiet || !std::io::stderr().is_terminal() {
            Self::Quiet
        } else {
            Self::Bar
        }
    }
}

/// Writes one JSON event line to stdout (a closed stdout is ignored: the transfer goes on).
pub(crate) fn emit(event: &str, mut fields: Value) {
    if let Value::Object(map) = &mut fields {
        map.insert("event".into(), Value::String(event.into()));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{fields}");
    let _ = out.flush();
}

/// Turns the driver's periodic [`Progress`] into the chosen display.
#[derive(Debug)]
pub(crate) struct Reporter {
    mode: Mode,
    last_bytes: u64,
    last_elapsed: Duration,
    drawn: bool,
    /// The target rate asked for (`-l`).
    asked: u64,
    /// The lower target the server set, once told.
    capped: Option<u64>,
    /// Sessions run again after a failure so far.
    retries: u32,
}

impl Reporter {
    pub(crate) fn new(mode: Mode, asked: u64) -> Self {
        let (last_bytes, last_elapsed) = (0, Duration::ZERO);
        Self { mode, last_bytes, last_elapsed, drawn: false, asked, capped: None, retries: 0 }
    }

    /// A failed session is about to be run again: a `retry` event, or a line on stderr.
    pub(crate) fn retry(&mut self, r: &ferry_net::multi::RetryInfo) {
        self.retries += 1;
        // The new session counts its bytes from zero.
        (self.last_bytes, self.last_elapsed) = (0, Duration::ZERO);
        if self.mode == Mode::Json {
            emit(
                "retry",
                json!({
                    "session": r.share,
                    "attempt": r.attempt,
                    "attempts": r.attempts,
                    "delay_s": round3(r.delay.as_secs_f64()),
                    "files_left": r.files_left,
                    "error": r.error,
                }),
            );
            return;
        }
        self.finish();
        let _ = writeln!(
            std::io::stderr(),
            "ferry cp: {}; retrying in {:.0} s (attempt {} of at most {}, {} file{} to go)",
            super::log::sanitize(&r.error),
            r.delay.as_secs_f64().ceil(),
            r.attempt,
            r.attempts,
            r.files_left,
            if r.files_left == 1 { "" } else { "s" }
        );
    }

    /// Sessions run again after a failure so far.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// Tells, once per new value, that the server's RATE_LIMIT holds this sender below the
    /// rate asked for.
    fn tell_cap(&mut self, target: u64) {
        if target == 0 || target >= self.asked || self.capped == Some(target) {
            return;
        }
        self.capped = Some(target);
        if self.mode == Mode::Json {
            emit("rate_capped", json!({ "target_rate_bps": target, "asked_bps": self.asked }));
            return;
        }
        self.finish();
        let cap = human_rate(target as f64);
        let asked = if self.asked >= super::cp::UNCAPPED {
            "no limit".to_owned()
        } else {
            human_rate(self.asked as f64)
        };
        let _ = writeln!(
            std::io::stderr(),
            "ferry cp: the server caps this transfer at {cap} (asked for {asked})"
        );
    }

    /// One periodic report.
    pub(crate) fn update(&mut self, p: &Progress) {
        self.tell_cap(p.side.target_rate_bps);
        let dt = p.elapsed.saturating_sub(self.last_elapsed).as_secs_f64();
        let rate = if dt > 0.0 {
            p.side.bytes.saturating_sub(self.last_bytes) as f64 * 8.0 / dt
        } else {
            0.0
        };
        self.last_bytes = p.side.bytes;
        self.last_elapsed = p.elapsed;
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => emit(
                "progress",
                json!({
                    "elapsed_s": round3(p.elapsed.as_secs_f64()),
                    "bytes": p.side.bytes,
                    "total_bytes": p.total_bytes,
                    "files_done": p.files_done,
                    "rate_bps": rate.round(),
                    "pacing_rate_bps": p.side.rate_bps,
                    "target_rate_bps": p.side.target_rate_bps,
                    "rtt_ms": p.side.rtt.map(|r| round3(r.as_secs_f64() * 1e3)),
                }),
            ),
            Mode::Bar => {
                let pct = if p.total_bytes > 0 {
                    p.side.bytes as f64 * 100.0 / p.total_bytes as f64
                } else {
                    0.0
                };
                let eta = if rate > 0.0 && p.total_bytes > p.side.bytes {
                    let s = (p.total_bytes - p.side.bytes) as f64 * 8.0 / rate;
                    format!("{}:{:02}", (s / 60.0) as u64, (s % 60.0) as u64)
                } else {
                    "-:--".into()
                };
                let width = 24usize;
                let filled = ((pct / 100.0) * width as f64).round() as usize;
                let bar: String =
                    (0..width).map(|i| if i < filled.min(width) { '#' } else { '.' }).collect();
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r[{bar}] {pct:5.1}%  {} / {}  {}  ETA {eta}   ",
                    human_bytes(p.side.bytes),
                    human_bytes(p.total_bytes),
                    human_rate(rate)
                );
                let _ = err.flush();
                self.drawn = true;
            }
        }
    }

    /// Clears the progress line (before the summary or an error is printed).
    pub(crate) fn finish(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r{:78}\r", "");
            self.drawn = false;
        }
    }
}

/// The `done` event's fields from the data path's final report.
pub(crate) fn done_fields(r: &DriveReport, direction: &str, seconds: f64) -> Value {
    let d = &r.side.dropped;
    let failed: Vec<Value> = r
        .files
        .iter()
        .filter(|f| f.status != ferry_engine::control::FileStatus::Verified)
        .map(|f| json!({ "path": f.path, "status": status_name(f.status), "reason": f.reason }))
        .collect();
    json!({
        "direction": direction,
        "files": r.files.len(),
        "files_failed": failed.len(),
        "failed": failed,
        "bytes": r.file_bytes,
        "seconds": round3(seconds),
        "rate_bps": if seconds > 0.0 { (r.file_bytes as f64 * 8.0 / seconds).round() } else { 0.0 },
        "retransmitted_bytes": r.side.retransmitted_bytes,
        "datagrams_in": r.datagrams_in,
        "datagrams_out": r.datagrams_out,
        "send_drops": r.send_drops,
        "foreign_source": r.foreign_source,
        "dropped": {
            "malformed": d.malformed,
            "foreign": d.foreign,
            "replay": d.replay,
            "auth": d.auth,
        },
    })
}

/// The `--json` name of a file outcome.
pub(crate) fn status_name(s: ferry_engine::control::FileStatus) -> &'static str {
    use ferry_engine::control::FileStatus::*;
    match s {
        Verified => "verified",
        DigestMismatch => "digest_mismatch",
        StorageFailed => "storage_failed",
        SourceFailed => "source_failed",
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

pub(crate) fn human_rate(bps: f64) -> String {
    if bps >= 1e9 { format!("{:.2} Gbit/s", bps / 1e9) } else { format!("{:.1} Mbit/s", bps / 1e6) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::control::FileStatus;
    use ferry_engine::io::driver::FileReport;

    #[test]
    fn units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_rate(2.5e9), "2.50 Gbit/s");
        assert_eq!(human_rate(12.34e6), "12.3 Mbit/s");
    }

    #[test]
    fn done_event_carries_the_counters() {
        let mut r = DriveReport { file_bytes: 1000, datagrams_in: 7, ..Default::default() };
        r.side.dropped.auth = 3;
        let report = |file, status, reason: &str, path: &str| FileReport {
            file,
            status,
            reason: reason.into(),
            path: path.into(),
        };
        r.files = vec![
            report(0, FileStatus::Verified, "", ""),
            report(1, FileStatus::StorageFailed, "\"b\" already exists", "d/b"),
        ];
        let v = done_fields(&r, "download", 0.5);
        assert_eq!(v["files_failed"], 1);
        assert_eq!(v["failed"][0]["path"], "d/b");
        assert_eq!(v["failed"][0]["status"], "storage_failed");
        assert_eq!(v["bytes"], 1000);
        assert_eq!(v["rate_bps"], 16000.0);
        assert_eq!(v["dropped"]["auth"], 3);
        assert_eq!(v["datagrams_in"], 7);
        assert_eq!(v["files"], 2);
    }
}
