//! `ferry-linkem`: Ferry's user-space link emulator.
//!
//! Creates two TUN devices (`--tun-a`, the client side, and `--tun-b`, the server side) in the
//! namespace it runs in, prints `{"ready":true}` on stdout, and forwards IP packets between
//! them with the impairments of `--config` (a JSON `LinkConfig`). The harness then moves each
//! device into its namespace and configures it.
//!
//! Control on stdin, one command per line: `stats` prints the counters as one JSON line;
//! `quit` or end of input makes it print the counters and exit (so it never outlives the
//! harness that started it).
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};

use clap::Parser;
use ferry_netem::emulator::{Emulator, LinkConfig};

#[derive(Parser, Debug)]
#[command(name = "ferry-linkem", about = "User-space WAN link emulator over two TUN devices")]
struct Args {
    /// Name of the client-side TUN device to create.
    #[arg(long)]
    tun_a: String,
    /// Name of the server-side TUN device to create.
    #[arg(long)]
    tun_b: String,
    /// Link configuration as JSON (`{"forward":{...},"reverse":{...}}`).
    #[arg(long)]
    config: String,
    /// Seed of the random loss, jitter, reordering and duplication streams.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MTU of both devices.
    #[arg(long, default_value_t = 1500)]
    mtu: u16,
}

fn main() {
    let args = Args::parse();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ferry-linkem: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn run(args: &Args) -> Result<(), String> {
    let cfg: LinkConfig = serde_json::from_str(&args.config)
        .map_err(|e| format!("--config is not a valid link configuration: {e}"))?;
    cfg.forward.validate().map_err(|e| format!("forward direction: {e}"))?;
    cfg.reverse.validate().map_err(|e| format!("reverse direction: {e}"))?;
    let make = |name: &str| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(args.mtu)
            .tx_queue_len(10_000)
            .build_sync()
            .map_err(|e| {
                format!("creating TUN device {name} failed: {e} (needs root and /dev/net/tun)")
            })
    };
    let a = make(&args.tun_a)?;
    let b = make(&args.tun_b)?;
    let emu =
        Emulator::start(a, b, &cfg, args.seed).map_err(|e| format!("starting threads: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{{\"ready\":true}}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "stats" => {
                let s = serde_json::to_string(&emu.stats()).map_err(|e| e.to_string())?;
                writeln!(out, "{s}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
            }
            "quit" => break,
            "" => {}
            other => eprintln!("ferry-linkem: unknown command {other:?} (use `stats` or `quit`)"),
        }
    }
    let s = serde_json::to_string(&emu.stats()).map_err(|e| e.to_string())?;
    let _ = writeln!(out, "{s}");
    Ok(())
}
