//! How fast one core runs the whole sans-IO session (sender, receiver, packet protection,
//! feedback, reassembly, BLAKE3 digests) over the simulated network: a 64 MiB file over a clean,
//! infinitely fast link with 1 ms one-way delay, AES-128, fixed rate of 1 Tbit/s (so the
//! session, not the pacer, is the limit). Throughput is simulated file bytes per second of CPU.
//!
//! `cargo bench -p ferry-benches --bench sim_transfer`

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_engine::crypto::CipherSuite;
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::session::SessionConfig;
use ferry_engine::sim::{self, LinkConfig, Scenario};

fn transfer(c: &mut Criterion) {
    let bytes = 64 << 20;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 131 % 251) as u8).collect();
    let mut link = LinkConfig::clean(0, Duration::from_millis(1));
    link.queue_bytes = usize::MAX;
    let scenario = Scenario {
        files: vec![data],
        config: SessionConfig::new(
            1,
            CipherSuite::Aes128,
            RateLimits { target: 1_000_000_000_000, min: 0 },
        ),
        policy: Policy::Fixed,
        forward: link.clone(),
        reverse: link,
        slow_sink: None,
        time_limit: Duration::from_secs(60),
        trace_every: None,
        rate_changes: Vec::new(),
        receiver_limits: Vec::new(),
        faults: Default::default(),
    };
    let mut group = c.benchmark_group("sim_transfer");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(10);
    group.bench_function("64MiB-aes128-clean", |b| {
        b.iter(|| {
            let o = sim::run(1, &scenario);
            assert!(o.complete && o.files_match);
        })
    });
    group.finish();
}

criterion_group!(benches, transfer);
criterion_main!(benches);
