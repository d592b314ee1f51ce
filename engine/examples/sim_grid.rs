//! The WAN grid's cells in the seeded simulation (`ferry_engine::sim`): the rate controller
//! against a bottleneck with delay, random loss and a drop-tail buffer, one deterministic run
//! per cell, in seconds instead of minutes. For tuning the controller; the real grid
//! (`netem-tests`, `wan-grid`) is what BENCHMARKS.md reports.
//!
//! ```sh
//! cargo run --release -p ferry-engine --example sim_grid                # default policy
//! cargo run --release -p ferry-engine --example sim_grid -- low 4       # policy, buffer (BDP)
//! TRACE=200,1 cargo run --release -p ferry-engine --example sim_grid    # + that cell's rates
//! ```
//!
//! Per cell (median of `SEEDS` seeded runs, default 3): whole-transfer goodput of a file of 8 s at the payload ceiling, as a share of
//! that ceiling (`C x (1-p) x block/datagram`: the simulated link counts datagram bytes), the
//! transfer time, wire/unique and the largest queueing delay.

use std::time::Duration;

use ferry_engine::crypto::CipherSuite;
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::session::{MAX_STANDARD_BLOCK, SessionConfig};
use ferry_engine::sim::{self, LinkConfig, Scenario};
use ferry_engine::wire::DATA_OVERHEAD;

fn main() {
    let mut args = std::env::args().skip(1);
    let policy: Policy = args.next().map_or(Policy::Fair, |p| p.parse().expect("a policy"));
    let buffer: f64 = args.next().map_or(1.0, |b| b.parse().expect("a buffer in BDP"));
    let seconds: f64 = args.next().map_or(8.0, |s| s.parse().expect("seconds"));
    let rate = 100_000_000u64;
    let share = MAX_STANDARD_BLOCK as f64 / (MAX_STANDARD_BLOCK + DATA_OVERHEAD) as f64;
    println!(
        "policy {policy:?}, 100 Mbit/s, buffer {buffer} BDP, file of {seconds} s at the ceiling"
    );
    println!("| RTT (ms) | loss | of ceiling | time (s) | wire/unique | max queue (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (rtt_ms, loss) in [
        (50, 0.0),
        (50, 0.01),
        (50, 0.05),
        (200, 0.0),
        (200, 0.01),
        (200, 0.02),
        (200, 0.05),
        (1000, 0.05),
    ] {
        let one_way = Duration::from_millis(rtt_ms / 2);
        let mut forward = LinkConfig::clean(rate, one_way);
        forward.queue_bytes = (forward.queue_bytes as f64 * buffer) as usize;
        forward.loss = loss;
        let mut reverse = LinkConfig::clean(rate, one_way);
        reverse.loss = loss;
        let trace = std::env::var("TRACE").is_ok_and(|t| t == format!("{rtt_ms},{}", loss * 100.0));
        let ceiling = rate as f64 * (1.0 - loss) * share;
        let bytes = (ceiling / 8.0 * seconds) as usize;
        let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let limits = RateLimits { target: 10_000_000_000_000, min: 0 };
        let scenario = Scenario {
            files: vec![data],
            config: SessionConfig::new(1, CipherSuite::Aes128, limits),
            policy,
            forward,
            reverse,
            slow_sink: None,
            time_limit: Duration::from_secs(300),
            trace_every: trace.then(|| Duration::from_millis(rtt_ms.max(100))),
            rate_changes: Vec::new(),
            receiver_limits: Vec::new(),
            faults: Default::default(),
        };
        // Seeds 1..=SEEDS (default 3); the run with the median time is shown.
        let seeds: u64 = std::env::var("SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
        let mut runs: Vec<_> = (1..=seeds).map(|seed| sim::run(seed, &scenario)).collect();
        runs.sort_by_key(|o| o.elapsed);
        let o = &runs[runs.len() / 2];
        let secs = o.elapsed.as_secs_f64();
        let sent = o.sender.data_packets + o.sender.retransmitted_packets;
        let all_ok = runs.iter().all(|o| o.complete && o.files_match);
        println!(
            "| {rtt_ms} | {:.0}% | {:.1}% | {secs:.2} | {:.3} | {} |{}",
            loss * 100.0,
            bytes as f64 * 8.0 / secs / ceiling * 100.0,
            sent as f64 / o.sender.data_packets.max(1) as f64,
            o.forward.max_queue_delay.as_millis(),
            if all_ok { "" } else { " INCOMPLETE" }
        );
        for (ms, mbps) in &o.rate_trace {
            println!("    {ms:>6} ms {mbps:>8.1} Mbit/s");
        }
    }
}
