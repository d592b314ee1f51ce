//! Sharing one bottleneck (issue 5, item 5): Ferry sessions and a TCP flow started together on
//! the same emulated link, with each flow's delivered rate sampled over time.
//!
//! * TCP is `iperf3 -C cubic`; its rate is the receiver's (the iperf3 server's JSON intervals,
//!   every 0.5 s).
//! * Ferry is `ferry cp` to a `ferry serve` in the server namespace; its rate is measured at
//!   the receiver without any help from Ferry: every 250 ms the harness reads how many bytes
//!   of the upload are on disk (the allocated blocks of the sparse partial file
//!   `.NAME.ferry-partial-*`, then the final file).
//!
//! Both become cumulative delivered bytes against time since the scenario started; rates per
//! 0.5 s bin (for the plot) and mean rates over a window (for the summary) come from the same
//! piecewise-linear curve, so every flow is measured the same way.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::NetemError;
use crate::ferry::{CpOptions, FERRY_PORT, FerryServer};
use crate::grid::Cell;
use crate::netns::ChildGuard;
use crate::peers::{make_file, wait_listening};
use crate::testbed::{SERVER_IP, Testbed, TestbedOptions};

/// A flow of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    /// Kernel TCP CUBIC (iperf3, memory to memory).
    Tcp,
    /// `ferry cp --policy P -l RATE`.
    Ferry {
        /// fixed, high, fair or low.
        policy: &'static str,
        /// `-l`, bit/s.
        rate_bps: u64,
    },
}

impl Flow {
    fn label(&self) -> String {
        match self {
            Flow::Tcp => "TCP cubic".into(),
            Flow::Ferry { policy, rate_bps } => {
                format!("Ferry {policy} (-l {}m)", *rate_bps as f64 / 1e6)
            }
        }
    }
}

/// A named set of flows started together.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name (`fair-vs-tcp`, ...), used in file names.
    pub key: &'static str,
    /// The flows.
    pub flows: Vec<Flow>,
}

/// The scenario names [`scenarios`] knows.
pub const SCENARIOS: &[&str] =
    &["fair-vs-tcp", "low-vs-tcp", "low-alone", "fixed-vs-tcp", "fair-vs-fair"];

/// The scenarios of issue 5 for a link of `rate_bps`: adaptive policies get `-l 2C` (a ceiling
/// they should never reach), fixed gets 60% of C.
pub fn scenarios(rate_bps: u64) -> Vec<Scenario> {
    let ferry = |policy| Flow::Ferry { policy, rate_bps: 2 * rate_bps };
    vec![
        Scenario { key: "fair-vs-tcp", flows: vec![ferry("fair"), Flow::Tcp] },
        Scenario { key: "low-vs-tcp", flows: vec![ferry("low"), Flow::Tcp] },
        Scenario { key: "low-alone", flows: vec![ferry("low")] },
        Scenario {
            key: "fixed-vs-tcp",
            flows: vec![Flow::Ferry { policy: "fixed", rate_bps: rate_bps * 6 / 10 }, Flow::Tcp],
        },
        Scenario { key: "fair-vs-fair", flows: vec![ferry("fair"), ferry("fair")] },
    ]
}

/// Settings of a sharing run.
#[derive(Debug, Clone)]
pub struct ShareSettings {
    /// Bottleneck rate, RTT and buffer (loss is 0).
    pub cell: Cell,
    /// How long the flows run together, s.
    pub seconds: u32,
    /// Ramp-up excluded from the means: the window starts this long after the last flow
    /// started, s.
    pub warmup_s: f64,
    /// Test bed options.
    pub testbed: TestbedOptions,
    /// The `ferry` binary.
    pub ferry: PathBuf,
    /// Scratch directory (payload files, server docroots).
    pub scratch: PathBuf,
    /// Pass `FERRY_LOG=ferry::driver=debug` to the Ferry flows.
    pub debug_driver: bool,
    /// Where to keep the Ferry flows' stderr (`<key>-buf<B>-flow<i>.stderr`), if anywhere.
    pub logs: Option<PathBuf>,
}

/// One flow's measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowTrace {
    /// Legend label.
    pub name: String,
    /// (seconds since the scenario started, cumulative bytes delivered).
    pub cumulative: Vec<(f64, f64)>,
    /// When the flow was started and when it ended (finished, or stopped), s.
    pub active: (f64, f64),
    /// Ferry: the copy completed within the run.
    pub completed: bool,
    /// Mean rate over the scenario's window, bit/s.
    pub mean_bps: f64,
    /// Rates over consecutive 1 s windows inside the scenario's window, bit/s.
    pub windows_1s_bps: Vec<f64>,
}

/// One scenario's measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario key.
    pub key: String,
    /// The link.
    pub cell: Cell,
    /// The flows.
    pub flows: Vec<FlowTrace>,
    /// The window over which means are taken (all flows active, after the warm-up), s.
    pub window: (f64, f64),
    /// Queueing delay at the forward bottleneck over the whole run, p50 / p95, ms.
    pub queue_ms: (f64, f64),
    /// Forward bottleneck queue drops.
    pub queue_drops: u64,
    /// Drops nobody accounted for (must be 0).
    pub unaccounted: i64,
    /// Emulator departure lateness p99, us.
    pub late_p99_us: u64,
}

/// Delivered bytes at `t` on a piecewise-linear cumulative curve (flat outside it).
pub fn bytes_at(c: &[(f64, f64)], t: f64) -> f64 {
    match c.iter().position(|&(x, _)| x >= t) {
        None => c.last().map_or(0.0, |p| p.1),
        Some(0) => c[0].1,
        Some(i) => {
            let (x0, y0) = c[i - 1];
            let (x1, y1) = c[i];
            if x1 <= x0 { y1 } else { y0 + (y1 - y0) * (t - x0) / (x1 - x0) }
        }
    }
}

/// Mean rate over `[t0, t1]`, bit/s.
pub fn mean_bps(c: &[(f64, f64)], t0: f64, t1: f64) -> f64 {
    if t1 <= t0 {
        return 0.0;
    }
    (bytes_at(c, t1) - bytes_at(c, t0)) * 8.0 / (t1 - t0)
}

/// Jain's fairness index of `x`: (sum x)^2 / (n sum x^2), 1 for equal shares.
pub fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let q: f64 = x.iter().map(|v| v * v).sum();
    if q == 0.0 { 0.0 } else { s * s / (x.len() as f64 * q) }
}

/// Parses the iperf3 server's `-J` output into a cumulative curve (s since the server's test
/// start, bytes), from its per-interval receiver byte counts.
pub fn iperf3_server_curve(json: &str) -> Option<Vec<(f64, f64)>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut c = vec![(0.0, 0.0)];
    let mut total = 0.0;
    for i in v["intervals"].as_array()? {
        let s = &i["sum"];
        total += s["bytes"].as_f64()?;
        c.push((s["end"].as_f64()?, total));
    }
    Some(c)
}

/// Runs one scenario on a fresh test bed.
pub fn run_scenario(sc: &Scenario, s: &ShareSettings) -> Result<ScenarioResult, NetemError> {
    let io = |what: String| move |source| NetemError::Io { what, source };
    let cell = &s.cell;
    let mut tb = Testbed::new(&cell.link_config(), &s.testbed)?;
    let work = tempfile::Builder::new()
        .prefix("share-")
        .tempdir_in(&s.scratch)
        .map_err(io("creating a scratch dir".into()))?;
    let w = work.path();
    // Files big enough to keep a flow busy for the whole run even alone on the link.
    let size = ((cell.rate_bps() as f64 / 8.0 * f64::from(s.seconds) * 1.2) as u64 >> 20) << 20;
    let src = s.scratch.join(format!("share-payload-{size}.bin"));
    if !src.exists() {
        make_file(&src, size, 42)?;
    }
    let has_tcp = sc.flows.contains(&Flow::Tcp);
    let has_ferry = sc.flows.iter().any(|f| matches!(f, Flow::Ferry { .. }));
    let mut iperf_server = if has_tcp {
        let mut cmd = tb.server().command("iperf3");
        cmd.args(["-s", "-1", "-J", "-i", "0.5", "-B", SERVER_IP, "-p", "5201"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let g = ChildGuard::spawn(&mut cmd, "iperf3 server")?;
        wait_listening(tb.server(), 5201, false)?;
        Some(g)
    } else {
        None
    };
    let server = if has_ferry {
        Some(FerryServer::start(tb.server(), &s.ferry, &w.join("serve"), FERRY_PORT)?)
    } else {
        None
    };
    let run_for = Duration::from_secs(u64::from(s.seconds));
    let t0 = Instant::now();
    // Start every flow.
    enum Running {
        Tcp(ChildGuard),
        Ferry { guard: ChildGuard, file: PathBuf, samples: Vec<(f64, f64)>, end: Option<f64> },
    }
    let mut running = Vec::new();
    let mut starts = Vec::new();
    for (i, f) in sc.flows.iter().enumerate() {
        starts.push(t0.elapsed().as_secs_f64());
        match f {
            Flow::Tcp => {
                let mut cmd = tb.client().command("iperf3");
                cmd.args(["-c", SERVER_IP, "-p", "5201", "-C", "cubic", "-t"])
                    .arg(s.seconds.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                running.push(Running::Tcp(ChildGuard::spawn(&mut cmd, "iperf3 client")?));
            }
            Flow::Ferry { policy, rate_bps } => {
                let file = w.join(format!("flow{i}.bin"));
                std::fs::hard_link(&src, &file)
                    .or_else(|_| std::fs::copy(&src, &file).map(|_| ()))
                    .map_err(io(format!("linking {}", file.display())))?;
                let srv = server.as_ref().expect("a Ferry server for Ferry flows");
                let opts =
                    CpOptions { policy: Some((policy, *rate_bps)), debug_driver: s.debug_driver };
                let mut cmd = srv.cp_command(tb.client(), &file, &opts);
                let err = std::fs::File::create(w.join(format!("flow{i}.stderr")))
                    .map_err(io("creating a log".into()))?;
                cmd.stdout(Stdio::null()).stderr(err);
                let guard = ChildGuard::spawn(&mut cmd, "ferry cp")?;
                running.push(Running::Ferry {
                    guard,
                    file,
                    samples: vec![(starts[i], 0.0)],
                    end: None,
                });
            }
        }
    }
    // Sample the Ferry uploads every 250 ms until the run's end (plus a little for TCP's
    // last interval).
    let deadline = run_for + Duration::from_millis(500);
    while t0.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = t0.elapsed().as_secs_f64();
        for r in &mut running {
            if let Running::Ferry { guard, file, samples, end } = r {
                if end.is_some() {
                    continue;
                }
                let b = server.as_ref().expect("server").received_bytes(file, size);
                samples.push((now, b as f64));
                if matches!(guard.child().try_wait(), Ok(Some(_))) {
                    *end = Some(now);
                }
            }
        }
    }
    let stop = t0.elapsed().as_secs_f64();
    let mut flows = Vec::new();
    for (i, r) in running.into_iter().enumerate() {
        let name = sc.flows[i].label();
        match r {
            Running::Tcp(guard) => {
                // The client runs `-t seconds`; give it a moment to finish, then read the
                // server's intervals. The server's test starts once the client's control
                // and data connections are up: about 2 RTTs after launch.
                let _ = guard.wait_output(Duration::from_secs(5));
                let g = iperf_server.take();
                let (out, _) = g
                    .ok_or_else(|| NetemError::Emulator("one TCP flow per scenario".into()))?
                    .wait_output(Duration::from_secs(5))?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let curve = iperf3_server_curve(&text).ok_or_else(|| NetemError::Parse {
                    what: "iperf3 server JSON".into(),
                    text: text.chars().take(400).collect(),
                })?;
                let offset = starts[i] + 2.0 * cell.rtt_ms as f64 / 1000.0;
                let cumulative: Vec<(f64, f64)> =
                    curve.into_iter().map(|(t, b)| (t + offset, b)).collect();
                let end = cumulative.last().map_or(stop, |p| p.0);
                flows.push(FlowTrace {
                    name,
                    cumulative,
                    active: (starts[i], end),
                    completed: false,
                    mean_bps: 0.0,
                    windows_1s_bps: Vec::new(),
                });
            }
            Running::Ferry { guard, file, samples, end } => {
                drop(guard);
                if let Some(dir) = &s.logs {
                    let _ = std::fs::copy(
                        w.join(format!("flow{i}.stderr")),
                        dir.join(format!("{}-buf{}-flow{i}.stderr", sc.key, cell.buffer_bdp)),
                    );
                }
                let completed = server
                    .as_ref()
                    .expect("server")
                    .dest_of(&file)
                    .metadata()
                    .is_ok_and(|m| m.len() == size);
                flows.push(FlowTrace {
                    name,
                    cumulative: samples,
                    active: (starts[i], end.unwrap_or(stop)),
                    completed,
                    mean_bps: 0.0,
                    windows_1s_bps: Vec::new(),
                });
            }
        }
    }
    std::thread::sleep(Duration::from_millis(cell.rtt_ms + 50));
    let after = tb.stats()?;
    let w0 = flows.iter().map(|f| f.active.0).fold(0.0, f64::max) + s.warmup_s;
    let w1 = flows.iter().map(|f| f.active.1).fold(f64::MAX, f64::min);
    for f in &mut flows {
        f.mean_bps = mean_bps(&f.cumulative, w0, w1);
        let mut t = w0;
        while t + 1.0 <= w1 {
            f.windows_1s_bps.push(mean_bps(&f.cumulative, t, t + 1.0));
            t += 1.0;
        }
    }
    Ok(ScenarioResult {
        key: sc.key.into(),
        cell: *cell,
        flows,
        window: (w0, w1),
        queue_ms: (
            after.forward.queue_p50_us as f64 / 1000.0,
            after.forward.queue_p95_us as f64 / 1000.0,
        ),
        queue_drops: after.forward.drop_queue,
        unaccounted: after.forward.unaccounted() + after.reverse.unaccounted(),
        late_p99_us: after.forward.late_p99_us.max(after.reverse.late_p99_us),
    })
}

/// Rate per `bin_s` bin while the flow was active, (bin centre s, Mbit/s).
pub fn rate_series(f: &FlowTrace, bin_s: f64) -> Vec<(f64, f64)> {
    let mut v = Vec::new();
    let mut t = (f.active.0 / bin_s).floor() * bin_s;
    while t + bin_s <= f.active.1 + 1e-9 {
        v.push((t + bin_s / 2.0, mean_bps(&f.cumulative, t, t + bin_s) / 1e6));
        t += bin_s;
    }
    v
}

/// Flow names for the legend and the table, numbered (`#1`, `#2`) where several flows share
/// one.
pub fn display_names(flows: &[FlowTrace]) -> Vec<String> {
    flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let same: Vec<usize> = (0..flows.len()).filter(|&j| flows[j].name == f.name).collect();
            if same.len() > 1 {
                let k = same.iter().position(|&j| j == i).unwrap_or(0) + 1;
                format!("{} #{k}", f.name)
            } else {
                f.name.clone()
            }
        })
        .collect()
}

/// The rate-over-time plot of one scenario.
pub fn plot(r: &ScenarioResult) -> String {
    let series: Vec<crate::svg::Series> = r
        .flows
        .iter()
        .zip(display_names(&r.flows))
        .map(|(f, name)| crate::svg::Series { name, points: rate_series(f, 0.5) })
        .collect();
    let c = &r.cell;
    crate::svg::line_chart_with_x_step(
        &format!(
            "{}: {} Mbit/s, RTT {} ms, buffer {} BDP",
            r.key, c.rate_mbps, c.rtt_ms, c.buffer_bdp
        ),
        "time since the flows started (s), 0.5 s bins",
        "delivered rate (Mbit/s)",
        &series,
        false,
        Some(5.0),
    )
}

/// The SVG file name of a scenario's plot.
pub fn plot_name(r: &ScenarioResult) -> String {
    format!(
        "share-{}-{}mbps-{}ms-buf{}.svg",
        r.key, r.cell.rate_mbps, r.cell.rtt_ms, r.cell.buffer_bdp
    )
}

/// The verdict on issue 5's target for a scenario: (target, measured, met).
pub fn verdict(r: &ScenarioResult) -> (String, String, Option<bool>) {
    let m: Vec<f64> = r.flows.iter().map(|f| f.mean_bps).collect();
    let sum: f64 = m.iter().sum();
    let c = r.cell.rate_bps() as f64;
    let ferry_idx = r.flows.iter().position(|f| f.name.starts_with("Ferry"));
    match r.key.as_str() {
        "fair-vs-tcp" | "fair-vs-fair" if m.len() == 2 && sum > 0.0 => {
            let ratios: Vec<f64> = m.iter().map(|x| x / (sum / 2.0)).collect();
            let j = jain(&m);
            if r.key == "fair-vs-tcp" {
                let ok = ratios.iter().all(|x| (0.5..=2.0).contains(x));
                (
                    "each flow 0.5x-2x of an equal share".into(),
                    format!("ratios {:.2} / {:.2} (Jain {j:.3})", ratios[0], ratios[1]),
                    Some(ok),
                )
            } else {
                (
                    "Jain index >= 0.95".into(),
                    format!("Jain {j:.3}, ratios {:.2} / {:.2}", ratios[0], ratios[1]),
                    Some(j >= 0.95),
                )
            }
        }
        "low-vs-tcp" if m.len() == 2 && sum > 0.0 => {
            let low = m[ferry_idx.unwrap_or(0)] / sum;
            (
                "low takes at most 20% while TCP is active".into(),
                format!("low's share {:.1}%", low * 100.0),
                Some(low <= 0.20),
            )
        }
        "low-alone" if m.len() == 1 => {
            let e = m[0] / c;
            (
                "low alone near the full rate (>= 90% of C)".into(),
                format!("{:.1}% of C", e * 100.0),
                Some(e >= 0.90),
            )
        }
        "fixed-vs-tcp" if m.len() == 2 => {
            let i = ferry_idx.unwrap_or(0);
            let f = &r.flows[i];
            let target = c * 0.6;
            let mean = f.mean_bps;
            let (lo, hi) = f
                .windows_1s_bps
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            let dev = f
                .windows_1s_bps
                .iter()
                .map(|x| (x - mean).abs() / mean.max(1.0))
                .fold(0.0, f64::max);
            (
                "fixed holds its rate: every 1 s window within 2% of its mean, mean >= 90% of -l (which counts datagram bytes)".into(),
                format!(
                    "mean {:.1} Mbit/s = {:.1}% of -l; 1 s windows {:.1}-{:.1} Mbit/s (max deviation {:.1}%)",
                    mean / 1e6,
                    100.0 * mean / target,
                    lo / 1e6,
                    hi / 1e6,
                    dev * 100.0
                ),
                Some(!f.windows_1s_bps.is_empty() && dev <= 0.02 && mean >= 0.9 * target),
            )
        }
        _ => ("-".into(), "no common window".into(), None),
    }
}

/// The Markdown summary of a sharing run.
pub fn markdown(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    s.push_str("| buffer (BDP) | scenario | flows: mean rate in the window (Mbit/s), share | window (s) | queue p50 / p95 (ms) | target | measured | met |\n");
    s.push_str("|---:|---|---|---:|---:|---|---|---|\n");
    for r in results {
        let sum: f64 = r.flows.iter().map(|f| f.mean_bps).sum();
        let flows: Vec<String> = r
            .flows
            .iter()
            .zip(display_names(&r.flows))
            .map(|(f, name)| {
                format!(
                    "{name}: {:.1} ({:.0}%){}",
                    f.mean_bps / 1e6,
                    if sum > 0.0 { 100.0 * f.mean_bps / sum } else { 0.0 },
                    if f.completed { ", completed" } else { "" }
                )
            })
            .collect();
        let (target, measured, met) = verdict(r);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1}-{:.1} | {:.1} / {:.1} | {} | {} | {} |",
            r.cell.buffer_bdp,
            r.key,
            flows.join("<br>"),
            r.window.0,
            r.window.1,
            r.queue_ms.0,
            r.queue_ms.1,
            target,
            measured,
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        );
    }
    s
}

/// Writes the plots and `share.md` again from a `share.jsonl` of an earlier run (e.g. after a
/// change to the report), into `out`. Returns the results read.
pub fn replot(jsonl: &Path, out: &Path) -> Result<Vec<ScenarioResult>, NetemError> {
    let io = |what: String| move |source| NetemError::Io { what, source };
    let text =
        std::fs::read_to_string(jsonl).map_err(io(format!("reading {}", jsonl.display())))?;
    let mut results = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let r: ScenarioResult = serde_json::from_str(line).map_err(|e| NetemError::Parse {
            what: format!("{}: {e}", jsonl.display()),
            text: line.chars().take(200).collect(),
        })?;
        results.push(r);
    }
    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    for r in &results {
        let svg = out.join(plot_name(r));
        std::fs::write(&svg, plot(r)).map_err(io(format!("writing {}", svg.display())))?;
    }
    let md = out.join("share.md");
    std::fs::write(&md, markdown(&results)).map_err(io(format!("writing {}", md.display())))?;
    Ok(results)
}

/// Runs `keys` (all of [`SCENARIOS`] when empty) once per buffer size and writes the plots,
/// `share.md` and `share.jsonl` to `out`. Returns the results.
pub fn run(
    keys: &[String],
    buffers: &[f64],
    base: &ShareSettings,
    out: &Path,
) -> Result<Vec<ScenarioResult>, NetemError> {
    let io = |what: String| move |source| NetemError::Io { what, source };
    let all = scenarios(base.cell.rate_bps());
    let chosen: Vec<&Scenario> = if keys.is_empty() {
        all.iter().collect()
    } else {
        keys.iter()
            .map(|k| {
                all.iter().find(|s| s.key == k).ok_or_else(|| {
                    NetemError::Config(format!("unknown scenario {k:?}: use {SCENARIOS:?}"))
                })
            })
            .collect::<Result<_, _>>()?
    };
    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let jsonl = out.join("share.jsonl");
    let mut results = Vec::new();
    let mut lines = String::new();
    for &b in buffers {
        for sc in &chosen {
            let s = ShareSettings { cell: Cell { buffer_bdp: b, ..base.cell }, ..base.clone() };
            eprintln!("share: {} at {} BDP ({} s)", sc.key, b, s.seconds);
            let r = run_scenario(sc, &s)?;
            let (_, measured, met) = verdict(&r);
            eprintln!("    {measured} (target met: {met:?}; queue p95 {:.1} ms)", r.queue_ms.1);
            let svg = out.join(plot_name(&r));
            std::fs::write(&svg, plot(&r)).map_err(io(format!("writing {}", svg.display())))?;
            lines.push_str(
                &serde_json::to_string(&r).map_err(|e| NetemError::Config(e.to_string()))?,
            );
            lines.push('\n');
            std::fs::write(&jsonl, &lines).map_err(io(format!("writing {}", jsonl.display())))?;
            results.push(r);
        }
    }
    let md = out.join("share.md");
    std::fs::write(&md, markdown(&results)).map_err(io(format!("writing {}", md.display())))?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_interpolate_and_indices_are_right() {
        let c = vec![(0.0, 0.0), (1.0, 1000.0), (3.0, 1000.0), (4.0, 3000.0)];
        assert_eq!(bytes_at(&c, 0.5), 500.0);
        assert_eq!(bytes_at(&c, 2.0), 1000.0);
        assert_eq!(bytes_at(&c, 9.0), 3000.0);
        assert_eq!(mean_bps(&c, 0.0, 4.0), 3000.0 * 8.0 / 4.0);
        assert!((jain(&[1.0, 1.0]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
        let j = r#"{"intervals":[{"sum":{"start":0,"end":0.5,"bytes":100}},{"sum":{"start":0.5,"end":1.0,"bytes":300}}]}"#;
        assert_eq!(iperf3_server_curve(j).unwrap(), vec![(0.0, 0.0), (0.5, 100.0), (1.0, 400.0)]);
    }

    #[test]
    fn verdicts_follow_the_issue_targets() {
        let flow = |name: &str, mbps: f64| FlowTrace {
            name: name.into(),
            cumulative: vec![(0.0, 0.0), (10.0, mbps * 1e6 / 8.0 * 10.0)],
            active: (0.0, 10.0),
            completed: false,
            mean_bps: mbps * 1e6,
            windows_1s_bps: vec![mbps * 1e6; 5],
        };
        let result = |key: &str, flows| ScenarioResult {
            key: key.into(),
            cell: Cell { rtt_ms: 50, loss: 0.0, rate_mbps: 100, buffer_bdp: 1.0 },
            flows,
            window: (5.0, 10.0),
            queue_ms: (0.0, 0.0),
            queue_drops: 0,
            unaccounted: 0,
            late_p99_us: 0,
        };
        let ferry = "Ferry fair (-l 200m)";
        assert_eq!(
            verdict(&result("fair-vs-tcp", vec![flow(ferry, 30.0), flow("TCP cubic", 60.0)])).2,
            Some(true)
        );
        assert_eq!(
            verdict(&result("fair-vs-tcp", vec![flow(ferry, 2.0), flow("TCP cubic", 90.0)])).2,
            Some(false)
        );
        assert_eq!(
            verdict(&result("low-vs-tcp", vec![flow("Ferry low", 15.0), flow("TCP cubic", 80.0)]))
                .2,
            Some(true)
        );
        assert_eq!(verdict(&result("low-alone", vec![flow("Ferry low", 80.0)])).2, Some(false));
        assert_eq!(
            verdict(&result(
                "fixed-vs-tcp",
                vec![flow("Ferry fixed", 58.0), flow("TCP cubic", 40.0)]
            ))
            .2,
            Some(true)
        );
        let two = vec![flow(ferry, 45.0), flow(ferry, 50.0)];
        assert_eq!(display_names(&two), [format!("{ferry} #1"), format!("{ferry} #2")]);
        assert_eq!(verdict(&result("fair-vs-fair", two)).2, Some(true));
        assert_eq!(
            verdict(&result("fair-vs-fair", vec![flow(ferry, 20.0), flow(ferry, 70.0)])).2,
            Some(false)
        );
    }
}
