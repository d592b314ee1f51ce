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
    /// The progress bar (indicatif, on stderr), once the first report arrived.
    bar: Option<indicatif::ProgressBar>,
    /// The latest file to finish, for the bar.
    last_file: String,
    /// The target rate asked for (`-l`).
    asked: u64,
    /// The lower target the server set, once told.
    capped: Option<u64>,
    /// Sessions run again after a failure so far.
    retries: u32,
    /// Hold back the `file` events of verified files (`--file-checksum`: they are emitted
    /// after the transfer, with their digest).
    defer_verified: bool,
}

impl Reporter {
    pub(crate) fn new(mode: Mode, asked: u64) -> Self {
        let (last_bytes, last_elapsed) = (0, Duration::ZERO);
        Self {
            mode,
            last_bytes,
            last_elapsed,
            bar: None,
            last_file: String::new(),
            asked,
            capped: None,
            retries: 0,
            defer_verified: false,
        }
    }

    /// See [`Reporter::defer_verified`]'s field.
    pub(crate) fn defer_verified(&mut self, on: bool) {
        self.defer_verified = on;
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
        self.say(&format!(
            "ferry cp: {}; retrying in {:.0} s (attempt {} of at most {}, {} file{} to go)",
            super::log::sanitize(&r.error),
            r.delay.as_secs_f64().ceil(),
            r.attempt,
            r.attempts,
            r.files_left,
            if r.files_left == 1 { "" } else { "s" }
        ));
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
        let cap = human_rate(target as f64);
        let asked = if self.asked >= super::cp::UNCAPPED {
            "no limit".to_owned()
        } else {
            human_rate(self.asked as f64)
        };
        self.say(&format!("ferry cp: the server caps this transfer at {cap} (asked for {asked})"));
    }

    /// A line on stderr, above the bar if one is drawn.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
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
        if self.mode == Mode::Json {
            // Each file's outcome as it arrives, before the progress that counts it.
            for f in &p.finished {
                if self.defer_verified && f.status == ferry_engine::control::FileStatus::Verified {
                    continue;
                }
                emit(
                    "file",
                    json!({ "path": f.path, "status": status_name(f.status), "reason": f.reason }),
                );
            }
        }
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => emit(
                "progress",
                json!({
                    "elapsed_s": round3(p.elapsed.as_secs_f64()),
                    "bytes": p.side.bytes,
                    "total_bytes": p.total_bytes,
                    "files_done": p.files_done,
                    "files_total": p.files_total,
                    "rate_bps": rate.round(),
                    "pacing_rate_bps": p.side.rate_bps,
                    "target_rate_bps": p.side.target_rate_bps,
                    "rtt_ms": p.side.rtt.map(|r| round3(r.as_secs_f64() * 1e3)),
                }),
            ),
            Mode::Bar => self.draw(p, rate),
        }
    }

    /// The bar: bytes against the total announced so far, the rate, files done of those
    /// announced and the file under way with its own percentage (else the latest to finish),
    /// the ETA.
    fn draw(&mut self, p: &Progress, rate: f64) {
        if let Some(f) = p.finished.last() {
            self.last_file = ferry_engine::io::docroot::escape(&f.path, 48);
        }
        let bar = self.bar.get_or_insert_with(|| {
            let style = indicatif::ProgressStyle::with_template(
                "[{bar:24}] {percent:>3}%  {bytes}/{total_bytes}  {msg}  ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("#>.");
            indicatif::ProgressBar::new(p.total_bytes).with_style(style)
        });
        bar.set_length(p.total_bytes.max(p.side.bytes));
        bar.set_position(p.side.bytes);
        let files = if p.files_total > 1 {
            let now = match &p.side.current {
                // The file under way, with its own progress.
                Some((name, done, size)) if *size > 0 => format!(
                    "{} {}%",
                    ferry_engine::io::docroot::escape(name, 40),
                    done.saturating_mul(100) / size
                ),
                _ => self.last_file.clone(),
            };
            format!("  files {}/{}  {now}", p.files_done, p.files_total)
        } else {
            String::new()
        };
        bar.set_message(format!("{}{files}", human_rate(rate)));
    }

    /// Clears the progress bar (before the summary or an error is printed).
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// The `done` event's fields from the data path's final report.
pub(crate) fn done_fields(r: &DriveReport, direction: &str, seconds: f64) -> Value {
    let d = &r.side.dropped;
    let failed: Vec<Value> = r
        .files
        .iter()
        .filter(|f| !f.status.is_ok())
        .map(|f| json!({ "path": f.path, "status": status_name(f.status), "reason": f.reason }))
        .collect();
    let skipped =
        r.files.iter().filter(|f| f.status == ferry_engine::control::FileStatus::Skipped).count();
    json!({
        "direction": direction,
        "files": r.files.len(),
        "files_failed": failed.len(),
        "files_skipped": skipped,
        "failed": failed,
        "bytes": r.file_bytes,
        "seconds": round3(seconds),
        "rate_bps": if seconds > 0.0 { (r.file_bytes as f64 * 8.0 / seconds).round() } else { 0.0 },
        "retransmitted_bytes": r.side.retransmitted_bytes,
        "new_bytes": r.side.bytes,
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
        Skipped => "skipped",
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
