//! `wan-grid`: the WAN benchmark grid (see BENCHMARKS.md, "WAN").
//!
//! `cargo run --release -p ferry-netem --bin wan-grid -- [OPTIONS]` (as root). Runs every row
//! in every cell on a fresh pair of namespaces joined by the emulated link, prints a Markdown
//! table and writes it, the raw results (JSON lines) and one SVG plot per (rate, buffer, RTT)
//! to `--out`. `--ceiling` measures the link emulator's own ceiling instead; `wan-grid share`
//! runs the link-sharing scenarios (Ferry against TCP and against itself, rate over time).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;
use ferry_netem::grid::{self, Cell, RunSettings};
use ferry_netem::peers::{self, ROW_NAMES};
use ferry_netem::probe::{self, IperfMode};
use ferry_netem::share::{self, ShareSettings};
use ferry_netem::testbed::linkem_near_current_exe;
use ferry_netem::{BackendChoice, DirectionConfig, LinkConfig, Testbed, TestbedOptions, netns};

#[derive(Parser, Debug)]
#[command(name = "wan-grid", about = "WAN benchmark grid: Ferry's peers across an emulated link")]
struct Args {
    /// RTTs in ms (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10u64, 50, 150])]
    rtt: Vec<u64>,
    /// Random loss rates in percent, per direction (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0f64, 1.0, 5.0])]
    loss: Vec<f64>,
    /// Bottleneck rates in Mbit/s (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100u64])]
    rate: Vec<u64>,
    /// Bottleneck buffers in bandwidth-delay products (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0f64])]
    buffer: Vec<f64>,
    /// The full grid: RTT {10,50,150,300,600} x loss {0,0.1,1,2,5,10}% x rate {100,500,1000}
    /// (up to --max-rate) x buffer {1,4}. Overrides --rtt/--loss/--rate/--buffer.
    #[arg(long)]
    full: bool,
    /// Highest rate of the full grid, Mbit/s (the emulator's measured ceiling on this machine).
    #[arg(long, default_value_t = 500)]
    max_rate: u64,
    /// Named cells added for each rate and buffer: aspera-200ms-2pct, aspera-1s-5pct.
    #[arg(long)]
    preset: Vec<String>,
    /// Only the presets (no --rtt x --loss cells).
    #[arg(long)]
    presets_only: bool,
    /// Rows to run (comma-separated): iperf3-cubic, iperf3-bbr, scp, uftp, ferry-default, ferry-fixed,
    /// ferry-adaptive (Ferry rows need `ferry` built next to this binary:
    /// `cargo build --release -p ferry`).
    #[arg(long, value_delimiter = ',', default_values_t = ROW_NAMES.iter().map(|s| s.to_string()))]
    rows: Vec<String>,
    /// Duration of time-bounded rows (iperf3), s.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// File size for copy rows: this many seconds at C x (1-p).
    #[arg(long, default_value_t = 8.0)]
    copy_seconds: f64,
    /// Largest file for copy rows, MiB.
    #[arg(long, default_value_t = 256)]
    max_file_mib: u64,
    /// Output directory (table, JSON lines, SVG plots).
    #[arg(long, default_value = "target/wan-grid")]
    out: PathBuf,
    /// Link back-end: auto (netem if the kernel has it), emulator, netem.
    #[arg(long, default_value = "auto", global = true)]
    backend: String,
    /// Seed of the emulator's random streams.
    #[arg(long, default_value_t = 1, global = true)]
    seed: u64,
    /// Run the emulator with ordinary scheduling instead of `chrt -r 20`.
    #[arg(long, global = true)]
    no_realtime: bool,
    /// Measure the link emulator's own ceiling (and a plain veth pair for reference) and exit.
    #[arg(long)]
    ceiling: bool,
    /// Run nothing: write the table, the Ferry ratio table and the plots to --out again from
    /// the results.jsonl of an earlier run.
    #[arg(long, value_name = "JSONL")]
    from_jsonl: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Sharing one bottleneck: Ferry fair / low / fixed against one TCP CUBIC flow, low alone,
    /// and two Ferry fair sessions, started together; per-flow rate over time (SVG per
    /// scenario), mean shares, Jain index and the targets (share.md, share.jsonl).
    Share(ShareArgs),
}

#[derive(clap::Args, Debug)]
struct ShareArgs {
    /// Bottleneck rate, Mbit/s.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Round-trip time, ms.
    #[arg(long, default_value_t = 50)]
    rtt: u64,
    /// Bottleneck buffers in bandwidth-delay products (comma-separated); each scenario runs
    /// once per buffer.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0f64, 4.0])]
    buffer: Vec<f64>,
    /// How long the flows run together, s.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Ramp-up excluded from the means: the window starts this long after the last flow
    /// started, s.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Scenarios (comma-separated; default all): fair-vs-tcp, low-vs-tcp, low-alone,
    /// fixed-vs-tcp, fair-vs-fair.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Output directory (share.md, share.jsonl, one SVG per scenario and buffer).
    #[arg(long, default_value = "target/wan-grid/share")]
    out: PathBuf,
    /// Run Ferry with FERRY_LOG=ferry::driver=debug and keep each Ferry flow's stderr in --out.
    #[arg(long)]
    debug_driver: bool,
    /// Run nothing: redraw the plots and share.md in --out from this share.jsonl.
    #[arg(long, value_name = "JSONL")]
    replot: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("wan-grid: cannot run: {why}");
        std::process::exit(2);
    }
    // On Ctrl-C or SIGTERM, kill what runs in our namespaces and delete them before exiting.
    if let Err(e) = ctrlc::set_handler(|| {
        netns::cleanup_own();
        std::process::exit(130);
    }) {
        eprintln!(
            "wan-grid: warning: no signal handler ({e}); an interrupted run leaves namespaces for the next run to delete"
        );
    }
    let outcome = match &args.cmd {
        Some(Cmd::Share(s)) => share(&args, s),
        None if args.ceiling => ceiling(&args),
        None => run(&args),
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wan-grid: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn options(args: &Args) -> Result<TestbedOptions, String> {
    let backend = match args.backend.as_str() {
        "auto" => BackendChoice::Auto,
        "emulator" => BackendChoice::Emulator,
        "netem" => BackendChoice::Netem,
        other => {
            return Err(format!("unknown --backend {other:?}: use auto, emulator or netem"));
        }
    };
    Ok(TestbedOptions {
        backend,
        linkem: linkem_near_current_exe(),
        seed: args.seed,
        realtime: !args.no_realtime,
    })
}

fn cells(args: &Args) -> Result<Vec<Cell>, String> {
    let mut v = Vec::new();
    if args.full {
        v = grid::full_grid(args.max_rate);
    } else if !args.presets_only {
        for &rate_mbps in &args.rate {
            for &buffer_bdp in &args.buffer {
                for &rtt_ms in &args.rtt {
                    for &loss in &args.loss {
                        v.push(Cell { rtt_ms, loss: loss / 100.0, rate_mbps, buffer_bdp });
                    }
                }
            }
        }
    }
    for p in &args.preset {
        let (rtt_ms, loss) = grid::preset(p)
            .ok_or_else(|| format!("unknown preset {p:?}: use one of {:?}", grid::PRESETS))?;
        for &rate_mbps in &args.rate {
            for &buffer_bdp in &args.buffer {
                v.push(Cell { rtt_ms, loss, rate_mbps, buffer_bdp });
            }
        }
    }
    if v.is_empty() {
        return Err("no cells to run".into());
    }
    Ok(v)
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(path) = &args.from_jsonl {
        let results = grid::read_jsonl(path).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&args.out)
            .map_err(|e| format!("creating {}: {e}", args.out.display()))?;
        return report(&results, &args.out);
    }
    let opts = options(args)?;
    let cells = cells(args)?;
    let mut rows = Vec::new();
    for name in &args.rows {
        let row = peers::row_by_name(name)
            .ok_or_else(|| format!("unknown row {name:?}: use {ROW_NAMES:?}"))?;
        match row.available() {
            Ok(()) => rows.push(row),
            Err(why) => eprintln!("wan-grid: skipping row {name}: {why}"),
        }
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let scratch =
        tempfile::Builder::new().prefix("wan-grid-").tempdir().map_err(|e| e.to_string())?;
    let settings = RunSettings {
        seconds: args.seconds,
        copy_seconds: args.copy_seconds,
        file_bounds: (4 << 20, args.max_file_mib << 20),
        scratch: scratch.path().to_path_buf(),
        testbed: opts,
    };
    let jsonl_path = args.out.join("results.jsonl");
    let mut jsonl = std::fs::File::create(&jsonl_path)
        .map_err(|e| format!("creating {}: {e}", jsonl_path.display()))?;
    let mut results = Vec::new();
    let total = cells.len() * rows.len();
    for cell in &cells {
        for row in &rows {
            eprintln!(
                "[{}/{total}] {} Mbit/s, {} BDP, {} ms, {}%: {}",
                results.len() + 1,
                cell.rate_mbps,
                cell.buffer_bdp,
                cell.rtt_ms,
                cell.loss * 100.0,
                row.name()
            );
            let r = grid::run_cell(cell, row.as_ref(), &settings).map_err(|e| e.to_string())?;
            eprintln!(
                "    goodput {:.2} Mbit/s, efficiency {:.1}%, {}",
                r.goodput_bps / 1e6,
                r.efficiency * 100.0,
                r.note
            );
            let line = serde_json::to_string(&r).map_err(|e| e.to_string())?;
            writeln!(jsonl, "{line}").map_err(|e| e.to_string())?;
            results.push(r);
        }
    }
    report(&results, &args.out)?;
    println!("raw: {}", jsonl_path.display());
    Ok(())
}

/// Writes `results.md` (the table, then Ferry's goodput ratios to every peer) and the plots to
/// `out`, and prints them.
fn report(results: &[grid::Result], out: &std::path::Path) -> Result<(), String> {
    let mut table = grid::markdown(results);
    if results.iter().any(|r| r.tool.starts_with("Ferry")) {
        table.push_str("\nFerry's goodput relative to each peer in the same cell:\n\n");
        table.push_str(&grid::ratios_markdown(results));
    }
    let md = out.join("results.md");
    std::fs::write(&md, &table).map_err(|e| format!("writing {}: {e}", md.display()))?;
    let plots = grid::plots(results, out).map_err(|e| e.to_string())?;
    println!("{table}");
    println!("table: {}", md.display());
    for p in plots {
        println!("plot: {}", p.display());
    }
    Ok(())
}

fn share(args: &Args, s: &ShareArgs) -> Result<(), String> {
    if let Some(jsonl) = &s.replot {
        let results = share::replot(jsonl, &s.out).map_err(|e| e.to_string())?;
        println!("{}", share::markdown(&results));
        return Ok(());
    }
    let ferry = ferry_netem::ferry::ferry_binary()?;
    let scratch =
        tempfile::Builder::new().prefix("wan-share-").tempdir().map_err(|e| e.to_string())?;
    let settings = ShareSettings {
        cell: Cell { rtt_ms: s.rtt, loss: 0.0, rate_mbps: s.rate, buffer_bdp: 1.0 },
        seconds: s.seconds,
        warmup_s: s.warmup,
        testbed: options(args)?,
        ferry,
        scratch: scratch.path().to_path_buf(),
        debug_driver: s.debug_driver,
        logs: s.debug_driver.then(|| s.out.clone()),
    };
    let results =
        share::run(&s.scenarios, &s.buffer, &settings, &s.out).map_err(|e| e.to_string())?;
    println!("{}", share::markdown(&results));
    println!("summary: {}", s.out.join("share.md").display());
    for r in &results {
        println!("plot: {}", s.out.join(share::plot_name(r)).display());
    }
    Ok(())
}

/// One iperf3 measurement of the ceiling table: its label and mode.
type CeilingTest<'a> = (String, IperfMode<'a>);

/// The emulator's own ceiling: iperf3 TCP and UDP through an unimpaired link (no rate cap, and
/// a 10 Gbit/s cap with a 20 ms RTT so the delay line and the rate scheduler are exercised),
/// next to the same measurements over a plain veth pair.
fn ceiling(args: &Args) -> Result<(), String> {
    let mut opts = options(args)?;
    if opts.backend == BackendChoice::Auto {
        opts.backend = BackendChoice::Emulator;
    }
    let capped = |rate_bps: u64| {
        LinkConfig::symmetric(DirectionConfig {
            delay_us: 10_000,
            rate_bps: Some(rate_bps),
            ..Default::default()
        })
    };
    let tcp = [("TCP cubic", IperfMode::Tcp("cubic")), ("TCP bbr", IperfMode::Tcp("bbr"))];
    let udp = |mbps: u64| {
        (
            format!("UDP 1400 B at {mbps} Mbit/s"),
            IperfMode::Udp { rate_bps: mbps * 1_000_000, len: 1400 },
        )
    };
    let all: Vec<(String, IperfMode<'_>)> =
        tcp.iter().map(|(n, m)| (n.to_string(), *m)).chain([udp(1000), udp(2000)]).collect();
    let capped_tests = |offered_mbps: u64| -> Vec<(String, IperfMode<'_>)> {
        tcp.iter().map(|(n, m)| (n.to_string(), *m)).chain([udp(offered_mbps)]).collect()
    };
    let setups: Vec<(&str, BackendChoice, LinkConfig, Vec<CeilingTest<'_>>)> = vec![
        ("plain veth (reference)", BackendChoice::Veth, LinkConfig::default(), all.clone()),
        (
            "ferry-linkem, no impairment",
            BackendChoice::Emulator,
            LinkConfig::default(),
            all.clone(),
        ),
        (
            "ferry-linkem, 10 Gbit/s cap, 20 ms RTT",
            BackendChoice::Emulator,
            capped(10_000_000_000),
            all.clone(),
        ),
        (
            "ferry-linkem, 1 Gbit/s cap, 20 ms RTT, 1 BDP",
            BackendChoice::Emulator,
            capped(1_000_000_000),
            capped_tests(900),
        ),
        (
            "ferry-linkem, 500 Mbit/s cap, 20 ms RTT, 1 BDP",
            BackendChoice::Emulator,
            capped(500_000_000),
            capped_tests(450),
        ),
    ];
    let secs = args.seconds.min(10);
    println!("| link | iperf3 test | receiver goodput (Mbit/s) | loss / notes |");
    println!("|---|---|---:|---|");
    for (label, backend, cfg, tests) in setups {
        let o = TestbedOptions { backend, ..opts.clone() };
        for (name, mode) in tests {
            let mut tb = Testbed::new(&cfg, &o).map_err(|e| e.to_string())?;
            let r = probe::iperf3(&tb, mode, secs, 5201)
                .map_err(|e| format!("{label}, {name}: {e}"))?;
            std::thread::sleep(std::time::Duration::from_millis(100));
            let s = tb.stats().map_err(|e| e.to_string())?;
            let mut note = String::new();
            if let IperfMode::Udp { .. } = mode {
                note = format!(
                    "{:.2}% datagrams lost",
                    100.0 * r.lost_packets as f64 / r.packets.max(1) as f64
                );
            }
            if tb.kind() == ferry_netem::BackendKind::Emulator {
                note.push_str(&format!(
                    "{}kernel drops before the emulator: {}, unaccounted: {}, departure lateness p99 {} us",
                    if note.is_empty() { "" } else { "; " },
                    s.forward.kernel_drops,
                    s.forward.unaccounted(),
                    s.forward.late_p99_us
                ));
            }
            println!("| {label} | {name} | {:.0} | {note} |", r.bits_per_second / 1e6);
        }
    }
    Ok(())
}
