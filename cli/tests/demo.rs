//! `ferry demo` runs end to end and reports every file verified, a client-side envelope up and
//! down, and an interrupted upload resumed.

use std::process::Command;

#[test]
fn demo_moves_and_verifies_every_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["demo", "--size-mib", "2", "--rtt-ms", "40", "--loss", "1"])
        .output()
        .expect("run ferry demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("204/204").count(), 2, "both runs verify all files:\n{stdout}");
    assert!(stdout.contains("envelope opened with the passphrase"), "{stdout}");
    assert!(stdout.contains("SSEAR:    user vault stores its files encrypted at rest"), "{stdout}");
    assert!(stdout.contains("envelope: `cp --file-crypt encrypt` upload complete"), "{stdout}");
    assert!(stdout.contains("`cp --file-crypt decrypt` brought back"), "{stdout}");
    assert!(stdout.contains("resume:   an upload of 2.0 MiB killed (SIGKILL)"), "{stdout}");
    assert!(stdout.contains("wrapped under keystore secret vault/ssear v1"), "{stdout}");
}

#[test]
fn demo_refuses_an_impossible_loss_rate() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["demo", "--loss", "75"])
        .output()
        .expect("run ferry demo");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--loss 75 is out of range") && stderr.contains("hint:"), "{stderr}");
}
