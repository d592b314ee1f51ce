//! Seeded network simulation: property tests over many seeds and scripted scenarios.
//!
//! Replay one seed: `SIM_SEED=1234 cargo test -p ferry-engine --test sim random_seeds -- --nocapture`.
//! Run more seeds: `SIM_SEEDS=100000 cargo test -p ferry-engine --release --test sim random_seeds`.

use std::time::Duration;

use ferry_engine::control::FileStatus;
use ferry_engine::crypto::CipherSuite;
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::session::{MAX_STANDARD_BLOCK, SessionConfig};
use ferry_engine::sim::{self, Faults, GilbertElliott, LinkConfig, Outcome, Rng, Scenario};

/// Seeds per CI run (override with `SIM_SEEDS`).
const DEFAULT_SEEDS: u64 = 1000;

fn random_scenario(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed ^ 0x5eed_5eed);
    let block_size =
        if rng.chance(0.5) { MAX_STANDARD_BLOCK } else { rng.range(64, 1414) as usize };
    let nfiles = rng.range(0, 6) as usize;
    let mut files = Vec::new();
    for _ in 0..nfiles {
        let size = match rng.range(0, 9) {
            0 => 0,
            1 => 1,
            2 => block_size - 1,
            3 => block_size,
            4 => block_size + 1,
            5 => rng.range(0, 300_000) as usize,
            _ => rng.range(0, 40_000) as usize,
        };
        files.push((0..size).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>());
    }
    let rate = rng.range(5, 200) * 1_000_000;
    let delay = Duration::from_micros(rng.range(500, 150_000));
    let mut forward = LinkConfig::clean(rate, delay);
    match rng.range(0, 3) {
        0 => {}
        1 => forward.loss = rng.unit() * 0.10,
        2 => {
            forward.bursty = Some(GilbertElliott {
                p_good_to_bad: 0.01 + rng.unit() * 0.04,
                p_bad_to_good: 0.2 + rng.unit() * 0.5,
                loss_good: rng.unit() * 0.01,
                loss_bad: 0.3 + rng.unit() * 0.5,
            })
        }
        _ => forward.loss = rng.unit() * 0.02,
    }
    if rng.chance(0.3) {
        forward.jitter = Duration::from_micros(rng.range(0, 3000));
    }
    if rng.chance(0.3) {
        forward.reorder = rng.unit() * 0.05;
        forward.reorder_delay = Duration::from_micros(rng.range(100, 5000));
    }
    if rng.chance(0.2) {
        forward.duplicate = rng.unit() * 0.03;
    }
    if rng.chance(0.2) {
        forward.corrupt = rng.unit() * 0.03;
    }
    let mut reverse = LinkConfig::clean(rate, delay);
    reverse.loss = if rng.chance(0.5) { rng.unit() * 0.05 } else { 0.0 };
    reverse.corrupt = if rng.chance(0.2) { rng.unit() * 0.02 } else { 0.0 };
    let policy = [Policy::Fixed, Policy::Fair, Policy::High, Policy::Low][rng.range(0, 3) as usize];
    // A fixed-rate sender is told a rate the path can carry; adaptive ones may be told more.
    let target = if policy == Policy::Fixed { rate * 9 / 10 } else { rate * rng.range(1, 3) };
    let suite = CipherSuite::ALL[rng.range(0, 3) as usize];
    let mut config = SessionConfig::new(seed, suite, RateLimits { target, min: 0 });
    config.block_size = block_size;
    let slow_sink = rng.chance(0.15).then(|| (rng.range(8, 256), rate / rng.range(2, 8)));
    // Some files fail on the way (a source that shrinks, a refused name, a disk error): each
    // fails alone and the others must arrive.
    let mut faults = Faults::default();
    if nfiles > 0 && rng.chance(0.2) {
        for _ in 0..rng.range(1, 3) {
            let i = rng.range(0, nfiles as u64 - 1) as usize;
            let at = rng.range(0, files[i].len() as u64 + 1);
            match rng.range(0, 2) {
                0 => faults.source_fail_at.push((i, at)),
                1 => faults.sink_refuse.push(i),
                _ => faults.sink_fail_at.push((i, at)),
            }
        }
    }
    // Some receivers limit the sender's rate (a server's cap, an operator's change), at the
    // start or on the way. Drawn last, so the rest of each seed's scenario stays as it was.
    let mut receiver_limits = Vec::new();
    if rng.chance(0.15) {
        let at = Duration::from_millis(rng.range(0, 400));
        let cap = (target / rng.range(2, 5)).max(1_000_000);
        receiver_limits.push((at, RateLimits { target: cap, min: 0 }));
    }
    Scenario {
        files,
        config,
        policy,
        forward,
        reverse,
        slow_sink,
        time_limit: Duration::from_secs(600),
        trace_every: None,
        rate_changes: Vec::new(),
        receiver_limits,
        faults,
    }
}

/// The bound on redundant data: blocks delivered twice may be at most 1% of the blocks plus a
/// small constant (tail effects of tiny transfers).
fn check(seed: u64, s: &Scenario, o: &Outcome) -> Result<(), String> {
    let replay = format!(
        "replay with: SIM_SEED={seed} cargo test -p ferry-engine --test sim random_seeds -- --nocapture"
    );
    if !o.errors.is_empty() {
        return Err(format!("seed {seed}: errors {:?}\n{replay}", o.errors));
    }
    if !o.complete {
        return Err(format!("seed {seed}: did not complete in {:?}\n{replay}", o.elapsed));
    }
    if !o.files_match || !o.written_once {
        return Err(format!(
            "seed {seed}: files_match={} written_once={}\n{replay}",
            o.files_match, o.written_once
        ));
    }
    if !o.nonces_unique {
        return Err(format!("seed {seed}: packet number reused\n{replay}"));
    }
    // A limit sent while the receiver was still active (it is done one control delay before
    // the sender) reached the sender, and bounds it.
    if let Some((at, cap)) = s.receiver_limits.last()
        && *at + s.reverse.delay + Duration::from_millis(1) < o.elapsed
        && o.final_limits.target > cap.target
    {
        return Err(format!(
            "seed {seed}: the sender ended at {:?}, above the receiver's {cap:?}\n{replay}",
            o.final_limits
        ));
    }
    for (i, st) in o.statuses.iter().enumerate() {
        let fails = s.faults.fails(i, s.files[i].len() as u64);
        let ok = match st {
            Some(FileStatus::Verified) => !fails,
            Some(FileStatus::SourceFailed | FileStatus::StorageFailed) => fails,
            _ => false,
        };
        if !ok {
            return Err(format!(
                "seed {seed}: file {i} ended {st:?} (meant to fail: {fails})\n{replay}"
            ));
        }
    }
    let blocks = |f: &Vec<u8>| (f.len() as u64).div_ceil(s.config.block_size as u64);
    let unique: u64 = o.sender.data_packets;
    let all_blocks: u64 = s.files.iter().map(blocks).sum();
    let faulted = (0..s.files.len()).any(|i| s.faults.fails(i, s.files[i].len() as u64));
    if faulted {
        // Failed files are skipped once known: the rest must still all have been sent.
        let needed: u64 = (0..s.files.len())
            .filter(|&i| !s.faults.fails(i, s.files[i].len() as u64))
            .map(|i| blocks(&s.files[i]))
            .sum();
        if unique < needed || unique > all_blocks {
            return Err(format!(
                "seed {seed}: sent {unique} new blocks, need {needed}..={all_blocks}"
            ));
        }
        return Ok(());
    }
    let expected_blocks = all_blocks;
    if unique != expected_blocks {
        return Err(format!("seed {seed}: sent {unique} new blocks, expected {expected_blocks}"));
    }
    // Second copies of tail repairs are redundant by design when the first got through.
    let dup = o.receiver.duplicate_blocks.saturating_sub(o.sender.second_copies);
    if dup > unique / 100 + 8 {
        return Err(format!(
            "seed {seed}: {dup} redundant blocks for {unique} unique (bound 1% + 8)\n{replay}\n{o:#?}"
        ));
    }
    // Bytes on the wire within 1/(1-p) of the ideal, p being the loss the data packets actually
    // met (random, bursty, corruption and queue drops), plus the redundancy bound above.
    let sent = o.sender.data_packets + o.sender.retransmitted_packets;
    let f = &o.forward;
    let lost = f.lost + f.queue_drops + f.corrupted;
    let p = lost as f64 / f.offered.max(1) as f64;
    let ideal = unique as f64 / (1.0 - p).max(0.05);
    let bound = ideal
        + (unique / 100 + 8) as f64
        + 4.0 * (ideal * p).sqrt()
        + o.sender.second_copies as f64;
    if sent as f64 > bound {
        return Err(format!(
            "seed {seed}: {sent} data packets for {unique} blocks at loss {p:.4} (bound {bound:.0})\n{replay}"
        ));
    }
    Ok(())
}

#[test]
fn random_seeds() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED must be an integer")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (0..n).collect()
        }
    };
    let verbose = seeds.len() == 1;
    let mut failures = Vec::new();
    for &seed in &seeds {
        let scenario = random_scenario(seed);
        let Ok(outcome) = std::panic::catch_unwind(|| sim::run(seed, &scenario)) else {
            eprintln!(
                "seed {seed}: panicked\nreplay with: SIM_SEED={seed} cargo test -p ferry-engine --test sim random_seeds -- --nocapture"
            );
            failures.push(seed);
            continue;
        };
        if verbose {
            println!("{scenario:#?}\n{outcome:#?}");
        }
        if let Err(e) = check(seed, &scenario, &outcome) {
            eprintln!("{e}");
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed: {:?}",
        failures.len(),
        seeds.len(),
        failures
    );
}

/// Resuming sessions (docs/PROTOCOL.md 8.6) over lossy, reordering links: the receiver holds
/// some chunks of a file from an earlier attempt; none of the blocks wholly inside them is sent,
/// the file's digest covers the held bytes, and the file arrives exact. Held chunks of another
/// version of the file fail its digest instead of being trusted.
#[test]
fn resumed_sessions_send_only_what_is_missing() {
    const C: u64 = ferry_engine::session::RESUME_CHUNK;
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed ^ 0x7e5);
        let block_size = [MAX_STANDARD_BLOCK, 1000, 8913][rng.range(0, 2) as usize];
        let big = (3 * C + rng.range(0, C)) as usize;
        let sizes = [big, rng.range(0, 5000) as usize, (C + 1) as usize];
        let files: Vec<Vec<u8>> =
            sizes.iter().map(|&n| (0..n).map(|_| rng.next_u64() as u8).collect()).collect();
        let held: Vec<u64> = (0..3).filter(|_| rng.chance(0.6)).collect();
        let stale = rng.chance(0.25) && !held.is_empty();
        let mut config = SessionConfig::new(
            seed,
            CipherSuite::Aes128,
            RateLimits { target: 400_000_000, min: 0 },
        );
        config.block_size = block_size;
        config.resume = true;
        let mut forward = LinkConfig::clean(400_000_000, Duration::from_millis(rng.range(1, 40)));
        forward.loss = rng.unit() * 0.05;
        forward.reorder = rng.unit() * 0.03;
        forward.reorder_delay = Duration::from_micros(500);
        let reverse = LinkConfig::clean(400_000_000, forward.delay);
        let faults = Faults {
            held: vec![(0, held.clone())],
            held_stale: if stale { vec![0] } else { vec![] },
            ..Faults::default()
        };
        let s = Scenario {
            files,
            config,
            policy: Policy::Fair,
            forward,
            reverse,
            slow_sink: None,
            time_limit: Duration::from_secs(120),
            trace_every: None,
            rate_changes: Vec::new(),
            receiver_limits: Vec::new(),
            faults,
        };
        let o = sim::run(seed, &s);
        let replay = format!(
            "seed {seed} (SIM_SEEDS={} cargo test -p ferry-engine --test sim resumed_sessions)",
            seed + 1
        );
        assert!(o.errors.is_empty() && o.complete, "{replay}: {:?}", o.errors);
        assert!(o.files_match && o.written_once && o.nonces_unique, "{replay}: {o:#?}");
        let want0 = if stale { FileStatus::DigestMismatch } else { FileStatus::Verified };
        assert_eq!(o.statuses[0], Some(want0), "{replay}");
        assert_eq!(o.statuses[1..], [Some(FileStatus::Verified); 2], "{replay}");
        // New blocks: every block of the files but those wholly inside held chunks (a block
        // across two held neighbours is held too).
        let bs = block_size as u64;
        let inside = |b: u64| {
            let (start, end) = (b * bs, ((b + 1) * bs).min(big as u64));
            (start / C..=(end - 1) / C).all(|k| held.contains(&k))
        };
        let blocks0 = (big as u64).div_ceil(bs);
        let new0 = (0..blocks0).filter(|&b| !inside(b)).count() as u64;
        let others: u64 = sizes[1..].iter().map(|&n| (n as u64).div_ceil(bs)).sum();
        assert_eq!(o.sender.data_packets, new0 + others, "{replay}");
    }
}

#[test]
/// Both directions of the path go down for seconds mid-transfer (a peer killed and restarted,
/// a cable pulled): the sender stops sending data once the receiver has been silent for four
/// smoothed RTTs (at least 250 ms), probes until it answers, and then completes. Without that
/// rule it would send at full rate into the void for the whole outage.
fn an_outage_stops_data_until_the_receiver_answers() {
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed ^ 0x0a7a);
        let rate = rng.range(20, 80) * 1_000_000;
        let one_way = Duration::from_millis(rng.range(5, 30));
        let from = Duration::from_millis(rng.range(800, 1500));
        let outage = (from, from + Duration::from_millis(rng.range(1500, 3000)));
        // About four seconds of data at the link's rate.
        let size = (rate / 8 * 4) as usize;
        let files = vec![(0..size).map(|_| rng.next_u64() as u8).collect()];
        let mut forward = LinkConfig::clean(rate, one_way);
        forward.loss = rng.unit() * 0.02;
        forward.outage = Some(outage);
        let mut reverse = LinkConfig::clean(rate, one_way);
        reverse.outage = Some(outage);
        let s = Scenario {
            files,
            config: SessionConfig::new(
                seed,
                CipherSuite::Aes128,
                RateLimits { target: 4 * rate, min: 0 },
            ),
            policy: Policy::Fair,
            forward,
            reverse,
            slow_sink: None,
            time_limit: Duration::from_secs(60),
            trace_every: None,
            rate_changes: Vec::new(),
            receiver_limits: Vec::new(),
            faults: Faults::default(),
        };
        let o = sim::run(seed, &s);
        let replay = format!(
            "seed {seed} (SIM_SEEDS={} cargo test -p ferry-engine --test sim an_outage)",
            seed + 1
        );
        assert!(o.errors.is_empty() && o.complete, "{replay}: {:?}", o.errors);
        assert!(o.files_match && o.written_once && o.nonces_unique, "{replay}");
        // What the sender offered while the path was down: the silence it waits out (four
        // smoothed RTTs; a full one-BDP queue doubles the RTT), at up to 1.5x the link's rate,
        // and its probes; not the outage's length at the full rate.
        let rtt = 2 * one_way;
        let silence = (8 * rtt).max(Duration::from_millis(250)) + Duration::from_millis(100);
        let bound = (rate as f64 * 1.5 / 8.0 * silence.as_secs_f64()) as u64;
        let whole = (rate as f64 / 8.0 * (outage.1 - outage.0).as_secs_f64()) as u64;
        assert!(
            o.forward.outage_bytes <= bound,
            "{replay}: {} bytes sent into a {:?} outage (bound {bound}, the outage at full rate \
             {whole})",
            o.forward.outage_bytes,
            outage.1 - outage.0
        );
    }
}
