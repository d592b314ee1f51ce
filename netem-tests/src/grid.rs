//! The WAN benchmark grid: cells (RTT x loss x rate x buffer), a fresh test bed per cell and
//! row, measurements, and the Markdown and SVG reports.
//!
//! Per cell and row:
//! * goodput = verified payload bytes / seconds (completion time for a finished copy);
//! * efficiency = goodput / (C x (1 - p)), C the bottleneck rate, p the random loss rate;
//! * wire ratio = IP bytes the sender put on the link (forward direction, headers and
//!   retransmissions included, measured by the link) / payload bytes delivered;
//! * completion time of file copies (or "-" when the row is time-bounded or timed out).
//!
//! The link is symmetric: each direction has half the RTT as delay, the same loss rate and the
//! same bottleneck, so acknowledgements cross the same kind of path as data.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::emulator::LinkConfig;
use crate::error::NetemError;
use crate::model::DirectionConfig;
use crate::peers::{Row, Workload, make_file};
use crate::probe::mathis_bps;
use crate::testbed::{Testbed, TestbedOptions};

/// One cell of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Cell {
    /// Round-trip time, ms.
    pub rtt_ms: u64,
    /// Random loss rate per direction, 0..1.
    pub loss: f64,
    /// Bottleneck rate, Mbit/s.
    pub rate_mbps: u64,
    /// Bottleneck queue, in bandwidth-delay products.
    pub buffer_bdp: f64,
}

impl Cell {
    /// Bottleneck rate in bit/s.
    pub fn rate_bps(&self) -> u64 {
        self.rate_mbps * 1_000_000
    }

    /// The symmetric link configuration of this cell.
    pub fn link_config(&self) -> LinkConfig {
        let bdp = crate::model::bdp_bytes(self.rate_bps(), self.rtt_ms * 1000);
        let d = DirectionConfig {
            delay_us: self.rtt_ms * 500,
            loss: self.loss,
            rate_bps: Some(self.rate_bps()),
            queue_bytes: Some(((bdp as f64 * self.buffer_bdp) as u64).max(64 * 1024)),
            ..Default::default()
        };
        LinkConfig::symmetric(d)
    }

    /// C x (1 - p), bit/s: the best goodput a loss-tolerant sender can reach.
    pub fn ideal_bps(&self) -> f64 {
        self.rate_bps() as f64 * (1.0 - self.loss)
    }
}

/// Named cells from Aspera's published comparisons.
pub fn preset(name: &str) -> Option<(u64, f64)> {
    match name {
        "aspera-200ms-2pct" => Some((200, 0.02)),
        "aspera-1s-5pct" => Some((1000, 0.05)),
        _ => None,
    }
}

/// The names [`preset`] accepts.
pub const PRESETS: &[&str] = &["aspera-200ms-2pct", "aspera-1s-5pct"];

/// The full grid of issue 5: RTT {10, 50, 150, 300, 600} ms x loss {0, 0.1, 1, 2, 5, 10} % x
/// rate {100, 500, 1000} Mbit/s (only rates up to `ceiling_mbps`) x buffer {1, 4} BDP.
pub fn full_grid(ceiling_mbps: u64) -> Vec<Cell> {
    let mut v = Vec::new();
    for rate_mbps in [100, 500, 1000].into_iter().filter(|r| *r <= ceiling_mbps) {
        for buffer_bdp in [1.0, 4.0] {
            for rtt_ms in [10, 50, 150, 300, 600] {
                for loss in [0.0, 0.001, 0.01, 0.02, 0.05, 0.10] {
                    v.push(Cell { rtt_ms, loss, rate_mbps, buffer_bdp });
                }
            }
        }
    }
    v
}

/// One measured (cell, row) pair.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Result {
    /// The cell.
    pub cell: Cell,
    /// The row's name.
    pub tool: String,
    /// Verified payload bytes delivered.
    pub payload_bytes: u64,
    /// Seconds of the measurement.
    pub seconds: f64,
    /// Goodput, bit/s.
    pub goodput_bps: f64,
    /// goodput / (C x (1 - p)).
    pub efficiency: f64,
    /// Forward IP bytes on the link / payload bytes.
    #[serde(deserialize_with = "nan_if_null")]
    pub wire_ratio: f64,
    /// Completion time of a finished file copy, s.
    pub completion_s: Option<f64>,
    /// Queue drops at the bottleneck in the forward direction (self-inflicted congestion).
    pub queue_drops: u64,
    /// Drops nobody accounted for (must be 0 for the figure to count).
    pub unaccounted: i64,
    /// Link fidelity: 99th percentile of how late the emulator released packets, us (the
    /// larger of the two directions; 0 for kernel back-ends, which do not report it).
    pub late_p99_us: u64,
    /// Queueing delay the traffic built at the forward bottleneck: median and 95th
    /// percentile, ms (emulator only).
    pub queue_ms: (f64, f64),
    /// Seconds until the copy first delivered 90% of its payload ceiling (rows that watch their
    /// copy arrive: Ferry's).
    #[serde(default)]
    pub ramp_s: Option<f64>,
    /// Goodput after that ramp until 95% of the file had arrived, over the payload ceiling
    /// `C x (1-p) x payload/datagram`.
    #[serde(default)]
    pub steady_of_ceiling: Option<f64>,
    /// Remark, or the error when the row failed.
    pub note: String,
}

/// serde_json writes NaN as `null`; read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    <Option<f64> as serde::Deserialize>::deserialize(d).map(|v| v.unwrap_or(f64::NAN))
}

/// Settings of a grid run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Duration of time-bounded rows, s.
    pub seconds: u32,
    /// Target duration of an ideal file copy, s (sets the file size per cell).
    pub copy_seconds: f64,
    /// Smallest and largest file for file-copy rows, bytes.
    pub file_bounds: (u64, u64),
    /// Scratch directory (files, keys, received copies).
    pub scratch: PathBuf,
    /// Test bed options.
    pub testbed: TestbedOptions,
}

/// File size for a cell: `copy_seconds` at C x (1-p), within `file_bounds`, rounded to MiB.
pub fn file_size_for(cell: &Cell, s: &RunSettings) -> u64 {
    let ideal = cell.ideal_bps() / 8.0 * s.copy_seconds;
    let mib = 1u64 << 20;
    ((ideal as u64).clamp(s.file_bounds.0, s.file_bounds.1) / mib).max(1) * mib
}

/// Runs one row in one cell on a fresh test bed.
pub fn run_cell(
    cell: &Cell,
    row: &dyn Row,
    s: &RunSettings,
) -> std::result::Result<Result, NetemError> {
    let size = file_size_for(cell, s);
    let file = s.scratch.join(format!("payload-{size}.bin"));
    if !file.exists() {
        make_file(&file, size, size)?;
    }
    let work = tempfile::Builder::new()
        .prefix("row-")
        .tempdir_in(&s.scratch)
        .map_err(|e| NetemError::Io { what: "creating a scratch dir".into(), source: e })?;
    let ideal_s = size as f64 * 8.0 / cell.ideal_bps();
    let limit = Duration::from_secs_f64(
        (3.0 * ideal_s + 30.0 * cell.rtt_ms as f64 / 1000.0 + 15.0).min(240.0),
    );
    let w = Workload {
        rate_bps: cell.rate_bps(),
        loss: cell.loss,
        seconds: s.seconds.max((cell.rtt_ms * 20).div_ceil(1000) as u32),
        rtt_ms: cell.rtt_ms,
        file,
        file_bytes: size,
        limit,
        scratch: work.path().to_path_buf(),
    };
    let mut tb = Testbed::new(&cell.link_config(), &s.testbed)?;
    let before = tb.stats()?;
    let out = row.run(&tb, &w);
    // Let packets still in the delay line land before reading the counters.
    std::thread::sleep(Duration::from_millis(cell.rtt_ms.min(1500) + 50));
    let after = tb.stats()?;
    let wire = after.forward.rx_bytes.saturating_sub(before.forward.rx_bytes);
    let unaccounted = after.forward.unaccounted() + after.reverse.unaccounted();
    let kernel = after.forward.kernel_drops + after.reverse.kernel_drops;
    let base = |note: String| Result {
        cell: *cell,
        tool: row.name(),
        payload_bytes: 0,
        seconds: 0.0,
        goodput_bps: 0.0,
        efficiency: 0.0,
        wire_ratio: f64::NAN,
        completion_s: None,
        queue_drops: after.forward.drop_queue,
        unaccounted,
        late_p99_us: after.forward.late_p99_us.max(after.reverse.late_p99_us),
        queue_ms: (
            after.forward.queue_p50_us as f64 / 1000.0,
            after.forward.queue_p95_us as f64 / 1000.0,
        ),
        ramp_s: None,
        steady_of_ceiling: None,
        note,
    };
    Ok(match out {
        Ok(o) => {
            let goodput =
                if o.seconds > 0.0 { o.payload_bytes as f64 * 8.0 / o.seconds } else { 0.0 };
            let mut note = o.note;
            if kernel > 0 {
                let _ =
                    write!(note, "; {kernel} packets dropped by the kernel before the emulator");
            }
            Result {
                payload_bytes: o.payload_bytes,
                seconds: o.seconds,
                goodput_bps: goodput,
                efficiency: goodput / cell.ideal_bps(),
                wire_ratio: if o.payload_bytes > 0 {
                    wire as f64 / o.payload_bytes as f64
                } else {
                    f64::NAN
                },
                completion_s: o.completed.then_some(o.seconds),
                ramp_s: o.steady.map(|s| s.ramp_s),
                steady_of_ceiling: o.steady.map(|s| s.of_payload_ceiling),
                ..base(note)
            }
        }
        Err(e) => base(format!("failed: {e}")),
    })
}

fn fmt_rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} G", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.1} M", bps / 1e6)
    } else {
        format!("{:.0} k", bps / 1e3)
    }
}

/// The Markdown table of a run (one line per cell and row, with the Mathis bound per cell).
pub fn markdown(results: &[Result]) -> String {
    let mut s = String::new();
    s.push_str(
        "| rate (Mbit/s) | buffer (BDP) | RTT (ms) | loss | tool | goodput (bit/s) | efficiency | wire / payload | completion (s) | ramp (s) | after ramp, of payload ceiling | Mathis (bit/s) | queue p50 / p95 (ms) | link late p99 (us) | note |\n",
    );
    s.push_str("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in results {
        let c = &r.cell;
        let mathis = if c.loss > 0.0 {
            fmt_rate(mathis_bps(1448.0, c.rtt_ms as f64 / 1000.0, c.loss))
        } else {
            "-".into()
        };
        let wire =
            if r.wire_ratio.is_finite() { format!("{:.3}", r.wire_ratio) } else { "-".into() };
        let done = r.completion_s.map_or("-".into(), |t| format!("{t:.1}"));
        let ramp = r.ramp_s.map_or("-".into(), |t| format!("{t:.1}"));
        let steady = r.steady_of_ceiling.map_or("-".into(), |e| format!("{:.1}%", e * 100.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}% | {} | {} | {:.1}% | {} | {} | {} | {} | {} | {:.1} / {:.1} | {} | {} |",
            c.rate_mbps,
            c.buffer_bdp,
            c.rtt_ms,
            c.loss * 100.0,
            r.tool,
            fmt_rate(r.goodput_bps),
            r.efficiency * 100.0,
            wire,
            done,
            ramp,
            steady,
            mathis,
            r.queue_ms.0,
            r.queue_ms.1,
            r.late_p99_us,
            r.note.replace('|', "/")
        );
    }
    s
}

/// Ferry's goodput relative to every other row, per cell: one line per cell and Ferry row
/// (rows whose name starts with "Ferry"), one column per peer ("-" where the peer did not run
/// or delivered nothing).
pub fn ratios_markdown(results: &[Result]) -> String {
    let is_ferry = |r: &Result| r.tool.starts_with("Ferry");
    let mut peers: Vec<&str> = Vec::new();
    for r in results.iter().filter(|r| !is_ferry(r)) {
        if !peers.contains(&r.tool.as_str()) {
            peers.push(&r.tool);
        }
    }
    let mut s = String::from(
        "| rate (Mbit/s) | buffer (BDP) | RTT (ms) | loss | Ferry row | goodput (bit/s) |",
    );
    for p in &peers {
        let _ = write!(s, " / {p} |");
    }
    s.push_str("\n|---:|---:|---:|---:|---|---:|");
    for _ in &peers {
        s.push_str("---:|");
    }
    s.push('\n');
    for f in results.iter().filter(|r| is_ferry(r)) {
        let c = &f.cell;
        let _ = write!(
            s,
            "| {} | {} | {} | {}% | {} | {} |",
            c.rate_mbps,
            c.buffer_bdp,
            c.rtt_ms,
            c.loss * 100.0,
            f.tool,
            fmt_rate(f.goodput_bps)
        );
        for p in &peers {
            let peer = results.iter().find(|r| r.cell == f.cell && r.tool == *p);
            match peer {
                Some(r) if r.goodput_bps > 0.0 => {
                    let _ = write!(s, " {:.2}x |", f.goodput_bps / r.goodput_bps);
                }
                _ => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Reads the results of an earlier run (`results.jsonl`).
pub fn read_jsonl(path: &Path) -> std::result::Result<Vec<Result>, NetemError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NetemError::Io { what: format!("reading {}", path.display()), source: e })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| NetemError::Parse {
                what: format!("{}: {e}", path.display()),
                text: l.chars().take(200).collect(),
            })
        })
        .collect()
}

/// One SVG per (rate, buffer, RTT): goodput (log scale) against loss, one line per tool, plus
/// the C x (1-p) line. Returns the files written.
pub fn plots(results: &[Result], dir: &Path) -> std::result::Result<Vec<PathBuf>, NetemError> {
    let mut keys: Vec<(u64, u64, u64)> = results
        .iter()
        .map(|r| (r.cell.rate_mbps, (r.cell.buffer_bdp * 100.0) as u64, r.cell.rtt_ms))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut files = Vec::new();
    for (rate, buf100, rtt) in keys {
        let sel: Vec<&Result> = results
            .iter()
            .filter(|r| {
                r.cell.rate_mbps == rate
                    && (r.cell.buffer_bdp * 100.0) as u64 == buf100
                    && r.cell.rtt_ms == rtt
            })
            .collect();
        let mut losses: Vec<f64> = sel.iter().map(|r| r.cell.loss).collect();
        losses.sort_by(f64::total_cmp);
        losses.dedup();
        if losses.len() < 2 {
            continue;
        }
        let mut tools: Vec<String> = sel.iter().map(|r| r.tool.clone()).collect();
        tools.dedup();
        tools.sort();
        tools.dedup();
        let mut series: Vec<crate::svg::Series> = tools
            .iter()
            .map(|t| crate::svg::Series {
                name: t.clone(),
                points: losses
                    .iter()
                    .filter_map(|l| {
                        sel.iter()
                            .find(|r| &r.tool == t && r.cell.loss == *l)
                            .map(|r| (l * 100.0, r.goodput_bps / 1e6))
                    })
                    .collect(),
            })
            .collect();
        series.push(crate::svg::Series {
            name: "C x (1-p)".into(),
            points: losses.iter().map(|l| (l * 100.0, rate as f64 * (1.0 - l))).collect(),
        });
        let title = format!(
            "goodput vs loss: {rate} Mbit/s, RTT {rtt} ms, buffer {} BDP",
            buf100 as f64 / 100.0
        );
        let svg = crate::svg::line_chart(
            &title,
            "random loss per direction (%)",
            "goodput (Mbit/s, log)",
            &series,
            true,
        );
        let path = dir.join(format!("goodput-{rate}mbps-{rtt}ms-buf{}.svg", buf100 as f64 / 100.0));
        std::fs::write(&path, svg).map_err(|e| NetemError::Io {
            what: format!("writing {}", path.display()),
            source: e,
        })?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(tool: &str, goodput_bps: f64) -> Result {
        Result {
            cell: Cell { rtt_ms: 50, loss: 0.01, rate_mbps: 100, buffer_bdp: 1.0 },
            tool: tool.into(),
            payload_bytes: 0,
            seconds: 1.0,
            goodput_bps,
            efficiency: 0.0,
            wire_ratio: f64::NAN,
            completion_s: None,
            queue_drops: 0,
            unaccounted: 0,
            late_p99_us: 0,
            queue_ms: (0.0, 0.0),
            ramp_s: None,
            steady_of_ceiling: None,
            note: String::new(),
        }
    }

    #[test]
    fn ratios_compare_ferry_with_every_peer_and_results_round_trip() {
        let rs =
            vec![result("iperf3 TCP cubic", 2e6), result("UFTP", 0.0), result("Ferry fixed", 80e6)];
        let t = ratios_markdown(&rs);
        assert!(t.contains("/ iperf3 TCP cubic | / UFTP |"), "{t}");
        assert!(t.contains("| Ferry fixed | 80.0 M | 40.00x | - |"), "{t}");
        // NaN wire ratios are written as null and read back as NaN.
        let line = serde_json::to_string(&rs[0]).unwrap();
        let back: Result = serde_json::from_str(&line).unwrap();
        assert!(back.wire_ratio.is_nan() && back.tool == rs[0].tool);
    }
}
