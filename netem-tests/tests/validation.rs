//! Emulator validation: measured RTT, loss and bottleneck rate match the configuration, and
//! kernel TCP behaves as theory predicts across the emulated link. Needs root and `ip netns`
//! (skipped with a message otherwise). Runs against the user-space emulator always, and against
//! kernel netem too where the kernel has it. Tolerances are generous: the machine is shared.

use std::path::PathBuf;

use ferry_netem::probe::{self, IperfMode};
use ferry_netem::testbed::netem_available;
use ferry_netem::{
    BackendChoice, DirectionConfig, GilbertElliott, LinkConfig, Testbed, TestbedOptions, netns,
};

/// The tests measure timing, so they run one at a time (cargo runs tests in parallel threads).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the serial lock, or returns `None` (after saying why) when the tests cannot run here.
fn setup() -> Option<std::sync::MutexGuard<'static, ()>> {
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

fn backends() -> Vec<TestbedOptions> {
    let linkem = PathBuf::from(env!("CARGO_BIN_EXE_ferry-linkem"));
    let mut v = vec![TestbedOptions {
        backend: BackendChoice::Emulator,
        linkem: linkem.clone(),
        seed: 7,
        realtime: true,
    }];
    if netem_available() {
        v.push(TestbedOptions { backend: BackendChoice::Netem, linkem, seed: 7, realtime: true });
    } else {
        eprintln!("note: kernel netem unavailable here; validating the user-space emulator only");
    }
    v
}

fn dir(delay_ms: u64) -> DirectionConfig {
    DirectionConfig { delay_us: delay_ms * 1000, ..Default::default() }
}

#[test]
fn rtt_matches_configured_delay() {
    let Some(_serial) = setup() else { return };
    for opts in backends() {
        // 20 ms one way each direction: 40 ms RTT.
        let mut tb = Testbed::new(&LinkConfig::symmetric(dir(20)), &opts).expect("test bed");
        let r = probe::ping(&tb, 20, 20).expect("ping");
        eprintln!("{}: ping {r:?}\n{:?}", tb.kind(), tb.stats());
        assert_eq!(r.received, r.sent, "no loss configured");
        // Never early; at most a few ms late on a busy machine.
        assert!(r.min_ms >= 40.0, "RTT below the configured 40 ms: {r:?}");
        assert!(r.avg_ms < 40.0 + 5.0, "RTT far above the configured 40 ms: {r:?}");
    }
}

#[test]
fn loss_rate_matches_configuration_and_drops_are_accounted() {
    let Some(_serial) = setup() else { return };
    for opts in backends() {
        // 10% forward loss only, no delay, so 1000 pings take about 2 s.
        let cfg = LinkConfig {
            forward: DirectionConfig { loss: 0.10, ..Default::default() },
            reverse: dir(0),
        };
        let mut tb = Testbed::new(&cfg, &opts).expect("test bed");
        let r = probe::ping(&tb, 1000, 2).expect("ping");
        let lost = (r.sent - r.received) as f64 / r.sent as f64;
        eprintln!("{}: ping loss {lost:.4} ({r:?})", tb.kind());
        // Binomial 99.9% interval at n = 1000, p = 0.1: +-3.3 sigma = +-0.031.
        assert!((lost - 0.10).abs() < 0.035, "measured loss {lost} vs configured 0.10");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = tb.stats().expect("stats");
        eprintln!("{}: stats {s:?}", tb.kind());
        assert_eq!(s.forward.unaccounted(), 0, "forward: {:?}", s.forward);
        assert_eq!(s.reverse.unaccounted(), 0, "reverse: {:?}", s.reverse);
        assert!(s.forward.rx_packets >= 1000);
        assert_eq!(s.forward.drop_random, s.forward.rx_packets - s.forward.tx_packets);
    }
}

#[test]
fn bursty_loss_has_the_configured_mean() {
    let Some(_serial) = setup() else { return };
    let opts = &backends()[0];
    let g = GilbertElliott::with_mean(0.05, 3.0);
    let cfg = LinkConfig {
        forward: DirectionConfig { gilbert: Some(g), ..Default::default() },
        reverse: dir(0),
    };
    let mut tb = Testbed::new(&cfg, opts).expect("test bed");
    let r = probe::ping(&tb, 1000, 2).expect("ping");
    let s = tb.stats().expect("stats");
    let rate = s.forward.random_loss_rate();
    eprintln!("GE loss {rate:.4}, ping {r:?}");
    assert!(s.forward.drop_burst > 0 && s.forward.drop_random == 0);
    // Bursts make the variance larger than binomial: wide bounds.
    assert!((0.02..0.09).contains(&rate), "GE mean loss {rate} vs configured 0.05");
}

#[test]
fn bottleneck_rate_matches_configuration() {
    let Some(_serial) = setup() else { return };
    for opts in backends() {
        // 50 Mbit/s bottleneck, 5 ms each way, offered 80 Mbit/s of UDP for 3 s.
        let d =
            DirectionConfig { delay_us: 5000, rate_bps: Some(50_000_000), ..Default::default() };
        let mut tb = Testbed::new(&LinkConfig::symmetric(d), &opts).expect("test bed");
        let r = probe::iperf3(&tb, IperfMode::Udp { rate_bps: 80_000_000, len: 1400 }, 3, 5201)
            .expect("iperf3 udp");
        let s = tb.stats().expect("stats");
        eprintln!("{}: UDP through 50 Mbit/s: {r:?}\nstats {:?}", tb.kind(), s.forward);
        let mbps = r.bits_per_second / 1e6;
        // iperf3 counts UDP payload; the link carries 28 more header bytes per 1400: 49.0 Mbit/s.
        assert!(
            (44.0..=51.0).contains(&mbps),
            "received {mbps} Mbit/s through a 50 Mbit/s bottleneck"
        );
        assert!(
            s.forward.drop_queue > 0 || tb.kind() == ferry_netem::BackendKind::Netem,
            "overload must overflow the queue"
        );
        assert_eq!(s.forward.unaccounted(), 0);
        if tb.kind() == ferry_netem::BackendKind::Emulator {
            // A full default queue (one BDP, at least 64 KiB) at 50 Mbit/s holds 10.5 ms.
            assert!(
                (8_000..=11_000).contains(&s.forward.queue_p95_us),
                "queueing delay p95 {} us",
                s.forward.queue_p95_us
            );
        }
    }
}

#[test]
fn tcp_under_loss_follows_mathis_for_cubic_and_bbr_is_far_above() {
    let Some(_serial) = setup() else { return };
    let opts = &backends()[0];
    // 100 ms RTT, 1% loss each way (acks lost too, as on a real path), 100 Mbit/s bottleneck.
    let d = DirectionConfig {
        delay_us: 50_000,
        loss: 0.01,
        rate_bps: Some(100_000_000),
        ..Default::default()
    };
    let tb = Testbed::new(&LinkConfig::symmetric(d), opts).expect("test bed");
    let cubic = probe::iperf3(&tb, IperfMode::Tcp("cubic"), 6, 5202).expect("iperf3 cubic");
    let bbr = probe::iperf3(&tb, IperfMode::Tcp("bbr"), 6, 5203).expect("iperf3 bbr");
    let mathis = probe::mathis_bps(1448.0, 0.1, 0.01);
    eprintln!(
        "cubic {:.2} Mbit/s, bbr {:.2} Mbit/s, Mathis {:.2} Mbit/s",
        cubic.bits_per_second / 1e6,
        bbr.bits_per_second / 1e6,
        mathis / 1e6
    );
    // Mathis is an approximation (slow start and SACK shift it): accept 0.25x..5x.
    let ratio = cubic.bits_per_second / mathis;
    assert!((0.25..5.0).contains(&ratio), "cubic at {ratio:.2} x Mathis");
    assert!(bbr.bits_per_second > 3.0 * cubic.bits_per_second, "bbr should ignore random loss");
}

/// One tiny grid cell per file-copy peer: the file arrives intact across a lossy, delayed
/// emulated link, and every packet the link dropped has a recorded cause.
#[test]
fn tiny_cells_copy_files_intact_across_a_lossy_link() {
    let Some(_serial) = setup() else { return };
    use ferry_netem::grid::{Cell, RunSettings, run_cell};
    let scratch = tempfile::tempdir().expect("scratch dir");
    let s = RunSettings {
        seconds: 2,
        copy_seconds: 0.5,
        file_bounds: (1 << 20, 1 << 20),
        scratch: scratch.path().to_path_buf(),
        testbed: backends().remove(0),
    };
    let cell = Cell { rtt_ms: 20, loss: 0.01, rate_mbps: 50, buffer_bdp: 1.0 };
    for name in ["scp", "uftp"] {
        let row = ferry_netem::peers::row_by_name(name).expect("known row");
        if let Err(why) = row.available() {
            eprintln!("SKIPPED row {name}: {why}");
            continue;
        }
        let r = run_cell(&cell, row.as_ref(), &s).expect("cell runs");
        eprintln!("{name}: {r:?}");
        assert!(r.completion_s.is_some(), "{name}: the copy did not complete: {}", r.note);
        assert_eq!(r.payload_bytes, 1 << 20);
        assert_eq!(r.unaccounted, 0);
        // Headers and retransmissions: more than the payload, far less than twice it.
        assert!(r.wire_ratio > 1.0 && r.wire_ratio < 2.0, "{name}: wire ratio {}", r.wire_ratio);
    }
}

#[test]
fn duplication_and_reordering_reach_the_receiver() {
    let Some(_serial) = setup() else { return };
    let opts = &backends()[0];
    // 20% of echo requests duplicated, 20% held back 5 ms (pings leave every 2 ms, so later
    // ones overtake them).
    let fwd = DirectionConfig {
        delay_us: 1000,
        duplicate: 0.2,
        reorder: 0.2,
        reorder_extra_us: 5000,
        ..Default::default()
    };
    let mut tb =
        Testbed::new(&LinkConfig { forward: fwd, reverse: dir(1) }, opts).expect("test bed");
    let r = probe::ping(&tb, 300, 2).expect("ping");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let s = tb.stats().expect("stats");
    eprintln!("ping {r:?}\nforward {:?}", s.forward);
    assert_eq!(r.received, r.sent, "nothing configured to drop");
    // Binomial n = 300, p = 0.2: mean 60, sd 6.9; accept +-4 sd.
    assert!((32..=88).contains(&r.duplicates), "duplicates {}", r.duplicates);
    assert_eq!(s.forward.duplicated, r.duplicates);
    assert!((32..=88).contains(&s.forward.reordered), "reordered {}", s.forward.reordered);
    assert_eq!(s.forward.unaccounted(), 0);
    assert_eq!(s.forward.tx_packets, s.forward.rx_packets + s.forward.duplicated);
}
