//! Scripted scenarios whose rate trajectories are snapshotted (insta), so a change in controller
//! behaviour shows up in review. Review changes with `cargo insta review` (or delete the `.snap`
//! file and rerun to accept).

use std::fmt::Write;
use std::time::Duration;

use ferry_engine::crypto::CipherSuite;
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::session::SessionConfig;
use ferry_engine::sim::{self, LinkConfig, Scenario};

const MBIT: u64 = 1_000_000;

fn scenario(policy: Policy, target: u64, link: LinkConfig, bytes: usize) -> Scenario {
    let data: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let reverse = LinkConfig::clean(link.rate_bps, link.delay);
    Scenario {
        files: vec![data],
        config: SessionConfig::new(1, CipherSuite::Aes128, RateLimits { target, min: 0 }),
        policy,
        forward: link,
        reverse,
        slow_sink: None,
        time_limit: Duration::from_secs(120),
        trace_every: Some(Duration::from_millis(100)),
        rate_changes: Vec::new(),
        receiver_limits: Vec::new(),
        faults: Default::default(),
    }
}

/// A compact, stable rendering: the summary, then the rate every 100 ms as a bar.
fn render(s: &Scenario, seed: u64) -> String {
    let o = sim::run(seed, s);
    assert!(o.complete && o.files_match, "scenario must complete: {:?}", o.errors);
    let secs = o.elapsed.as_secs_f64();
    let goodput = o.file_bytes as f64 * 8.0 / secs / 1e6;
    let sent = o.sender.data_packets + o.sender.retransmitted_packets;
    let mut out = String::new();
    writeln!(out, "completed in {:.2} s, goodput {:.1} Mbit/s", secs, goodput).unwrap();
    writeln!(
        out,
        "data packets {} (retransmitted {}), redundant arrivals {}, wire/unique {:.3}",
        sent,
        o.sender.retransmitted_packets,
        o.receiver.duplicate_blocks,
        sent as f64 / o.sender.data_packets as f64
    )
    .unwrap();
    writeln!(
        out,
        "link: queue drops {}, random losses {}, max queueing delay {} ms",
        o.forward.queue_drops,
        o.forward.lost,
        o.forward.max_queue_delay.as_millis()
    )
    .unwrap();
    for (ms, mbps) in &o.rate_trace {
        let bar = "#".repeat((mbps / 10.0).round() as usize);
        writeln!(out, "{ms:>6} ms {mbps:>8.1} Mbit/s {bar}").unwrap();
    }
    out
}

fn wan(rate: u64, rtt_ms: u64) -> LinkConfig {
    LinkConfig::clean(rate, Duration::from_millis(rtt_ms / 2))
}

#[test]
fn adaptive_ramps_to_a_clean_bottleneck() {
    let s = scenario(Policy::Fair, 1000 * MBIT, wan(100 * MBIT, 50), 25_000_000);
    insta::assert_snapshot!(render(&s, 1));
}

#[test]
fn adaptive_ignores_random_loss() {
    let mut link = wan(100 * MBIT, 100);
    link.loss = 0.02;
    let s = scenario(Policy::Fair, 1000 * MBIT, link, 25_000_000);
    insta::assert_snapshot!(render(&s, 2));
}

#[test]
fn adaptive_backs_off_when_the_bottleneck_halves() {
    let mut s = scenario(Policy::Fair, 1000 * MBIT, wan(100 * MBIT, 50), 30_000_000);
    s.rate_changes = vec![(Duration::from_millis(1200), 50 * MBIT)];
    insta::assert_snapshot!(render(&s, 3));
}

#[test]
fn adaptive_on_a_deep_buffer() {
    let mut link = wan(100 * MBIT, 50);
    link.queue_bytes *= 4;
    let s = scenario(Policy::Fair, 1000 * MBIT, link, 25_000_000);
    insta::assert_snapshot!(render(&s, 4));
}

#[test]
fn fixed_holds_its_rate_under_heavy_loss() {
    let mut link = wan(100 * MBIT, 100);
    link.loss = 0.10;
    let s = scenario(Policy::Fixed, 80 * MBIT, link, 20_000_000);
    insta::assert_snapshot!(render(&s, 5));
}

#[test]
fn low_policy_alone_on_a_deep_buffer() {
    let mut link = wan(100 * MBIT, 50);
    link.queue_bytes *= 4;
    let s = scenario(Policy::Low, 1000 * MBIT, link, 20_000_000);
    insta::assert_snapshot!(render(&s, 6));
}

/// Files that fail on the way fail alone: a 20 MB file the receiver refuses when it is
/// announced (an existing name), one the sender cannot read past 1 MB (it shrank), one the
/// receiver cannot store past 2 MB (a disk error). The three small files around them arrive
/// verified, the session completes, and the refused file costs next to nothing on the wire (its
/// blocks are skipped once the refusal is known: at most about one RTT's worth is sent).
#[test]
fn failed_files_fail_alone_and_cost_little() {
    use ferry_engine::control::FileStatus;
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i % 253) as u8).collect();
    let small = |n: u8| vec![n; 50_000];
    let mut s = scenario(
        Policy::Fixed,
        100 * MBIT,
        LinkConfig::clean(200 * MBIT, Duration::from_millis(10)),
        0,
    );
    s.trace_every = None;
    s.files = vec![small(1), big.clone(), small(2), big.clone(), small(3), big, small(4)];
    s.faults.sink_refuse = vec![1];
    s.faults.source_fail_at = vec![(3, 1_000_000)];
    s.faults.sink_fail_at = vec![(5, 2_000_000)];
    let o = sim::run(7, &s);
    assert!(o.complete && o.errors.is_empty(), "{:?}", o.errors);
    assert!(o.files_match && o.written_once);
    use FileStatus::*;
    let want = [Verified, StorageFailed, Verified, SourceFailed, Verified, StorageFailed, Verified];
    let got: Vec<_> = o.statuses.iter().map(|s| s.unwrap()).collect();
    assert_eq!(got, want);
    // 100 Mbit/s for one 20 ms RTT is 250 kB: the refused file costs less than 1 MB, the
    // others stop within about 1 MB of where they failed.
    let sent = o.sender.new_payload_bytes;
    let small_bytes = 4 * 50_000;
    assert!(sent < small_bytes + 1_000_000 + 1_000_000 + 2_000_000 + 3_000_000, "sent {sent}");
    assert_eq!(o.sender.files_abandoned, 1);
    assert_eq!(o.receiver.files_failed, 3);
}
