//! Ferry across the emulated WAN link (issue 5, item 7): real `ferry serve` and `ferry cp`
//! processes in the server and client namespaces move a file across a link with delay and
//! loss, once per link back-end available here (the user-space emulator always, kernel netem
//! where the kernel has it). Checked: the file arrives byte-identical. Nothing about timing.
//!
//! Needs root (skipped with a message otherwise) and the `ferry` binary of the same profile
//! next to the test executable (`cargo test --workspace` builds it; alone: `cargo build -p
//! ferry`).

use std::path::PathBuf;
use std::time::Duration;

use ferry_netem::ferry::{CpOptions, ferry_binary, upload};
use ferry_netem::peers::make_file;
use ferry_netem::testbed::netem_available;
use ferry_netem::{
    BackendChoice, DirectionConfig, GilbertElliott, LinkConfig, Testbed, TestbedOptions, netns,
};

/// One test bed at a time (each uses the CPU for its emulator and endpoints).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The serial lock and the `ferry` binary, or `None` (after saying why) when the test cannot
/// run here. A missing `ferry` binary is a failure, not a skip: the workspace builds it.
fn setup() -> Option<(std::sync::MutexGuard<'static, ()>, PathBuf)> {
    if let Some(why) = netns::unavailable_reason() {
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let ferry = ferry_binary().unwrap_or_else(|e| panic!("{e}"));
    Some((SERIAL.lock().unwrap_or_else(|e| e.into_inner()), ferry))
}

fn backends() -> Vec<TestbedOptions> {
    let linkem = PathBuf::from(env!("CARGO_BIN_EXE_ferry-linkem"));
    let mut v = vec![TestbedOptions {
        backend: BackendChoice::Emulator,
        linkem: linkem.clone(),
        seed: 11,
        realtime: true,
    }];
    if netem_available() {
        v.push(TestbedOptions { backend: BackendChoice::Netem, linkem, seed: 11, realtime: true });
    } else {
        eprintln!("note: kernel netem unavailable here; the user-space emulator only");
    }
    v
}

/// Uploads a 3 MiB file across `cfg` with each back-end and policy and checks it arrived
/// intact (`upload` compares it byte for byte; a copy still incomplete at the limit is a
/// failure here).
fn copy_across(cfg: &LinkConfig, label: &str) {
    let Some((_serial, ferry)) = setup() else { return };
    let scratch = tempfile::tempdir().expect("scratch dir");
    let file = scratch.path().join("payload.bin");
    make_file(&file, 3 << 20, 5).expect("payload");
    for opts in backends() {
        for policy in ["default", "fair", "fixed"] {
            let tb = Testbed::new(cfg, &opts).expect("test bed");
            let work = tempfile::tempdir_in(scratch.path()).expect("work dir");
            let cp = match policy {
                "default" => CpOptions::defaults(),
                p => CpOptions::with(p, 40_000_000),
            };
            let (out, stderr) =
                upload(&tb, &ferry, work.path(), &file, &cp, Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("{label}, {}, {policy}: {e}", tb.kind()));
            eprintln!("{label}, {}, {policy}: {out:?}", tb.kind());
            assert!(
                out.completed,
                "{label}, {}, {policy}: the file did not arrive intact within 20 s ({} bytes on disk); ferry cp stderr: {stderr}",
                tb.kind(),
                out.payload_bytes
            );
            assert_eq!(out.payload_bytes, 3 << 20);
        }
    }
}

#[test]
fn file_arrives_intact_across_delay_and_random_loss() {
    // 20 ms RTT, 2% loss each way (control and acknowledgements lose packets too), 50 Mbit/s.
    let d = DirectionConfig {
        delay_us: 10_000,
        loss: 0.02,
        rate_bps: Some(50_000_000),
        ..Default::default()
    };
    copy_across(&LinkConfig::symmetric(d), "20 ms, 2% loss, 50 Mbit/s");
}

#[test]
fn file_arrives_intact_across_bursty_loss_reordering_and_duplication() {
    // Gilbert-Elliott loss (mean 3%, bursts of 4 packets), 10% of packets held back 3 ms
    // (reordered), 1% duplicated, jitter; 30 ms RTT, 50 Mbit/s.
    let d = DirectionConfig {
        delay_us: 15_000,
        jitter_us: 500,
        gilbert: Some(GilbertElliott::with_mean(0.03, 4.0)),
        reorder: 0.10,
        reorder_extra_us: 3_000,
        duplicate: 0.01,
        rate_bps: Some(50_000_000),
        ..Default::default()
    };
    copy_across(&LinkConfig::symmetric(d), "30 ms, bursty 3% loss, reordering, duplicates");
}
