//! `ferry crypt` end to end: round trips, every bad-input case of issue 6 (distinct message,
//! non-zero exit code, no plaintext output file), rewrap, inspect, and the interoperability
//! test that decrypts a `ferry crypt` envelope with an independent Python implementation
//! written from `docs/FORMAT.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const PASS: &str = "cli test passphrase";
/// Cheapest accepted Argon2id parameters, to keep the tests fast.
const FAST: [&str; 6] = ["--argon2-memory", "19456", "--argon2-time", "2", "--argon2-lanes", "1"];
const HEADER: usize = 1024;
const ENC_SEG: usize = 65_536 + 28;

fn ferry(dir: &Path, args: &[&str], pass: Option<&str>) -> Output {
    let mut c = Command::new(FERRY);
    c.current_dir(dir).args(args).env_remove("FERRY_FILEPASS").env_remove("FERRY_FILEPASS_NEW");
    if let Some(p) = pass {
        c.env("FERRY_FILEPASS", p);
    }
    c.stdin(std::process::Stdio::null());
    c.output().expect("run ferry")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect()
}

/// Encrypt `len` bytes as `name` in `dir`; returns (plaintext, envelope path).
fn make(dir: &Path, name: &str, len: usize) -> (Vec<u8>, PathBuf) {
    let pt = data(len);
    std::fs::write(dir.join(name), &pt).unwrap();
    let mut args = vec!["crypt", "encrypt", name];
    args.extend(FAST);
    let o = ferry(dir, &args, Some(PASS));
    assert!(o.status.success(), "encrypt failed: {}", stderr(&o));
    (pt, dir.join(format!("{name}.ferry")))
}

/// The directory holds exactly `names` (no stray temporary or output files).
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want);
}

/// Decrypting `bad` must fail with `code`, a message containing `needle`, and no output file.
fn expect_failure(bad: &[u8], code: i32, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.ferry"), bad).unwrap();
    let o = ferry(dir.path(), &["crypt", "decrypt", "bad.ferry", "-o", "out.bin"], Some(PASS));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(err.contains("hint:"), "every failure carries a hint: {err}");
    assert_only(dir.path(), &["bad.ferry"]);
}

fn seg(i: usize) -> std::ops::Range<usize> {
    HEADER + i * ENC_SEG..HEADER + (i + 1) * ENC_SEG
}

#[test]
fn round_trip_sizes_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [("empty", 0usize), ("one", 65_536), ("multi", 200_001)] {
        let (pt, env) = make(dir.path(), name, len);
        std::fs::remove_file(dir.path().join(name)).unwrap();
        let o = ferry(
            dir.path(),
            &["crypt", "decrypt", env.file_name().unwrap().to_str().unwrap()],
            Some(PASS),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), pt, "{name}");
        let o =
            ferry(dir.path(), &["crypt", "decrypt", env.to_str().unwrap(), "-o", "-"], Some(PASS));
        assert!(o.status.success());
        assert_eq!(o.stdout, pt);
    }
}

#[test]
fn wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 1000);
    let o =
        ferry(dir.path(), &["crypt", "decrypt", env.to_str().unwrap(), "-o", "out"], Some("nope"));
    assert_eq!(o.status.code(), Some(11));
    assert!(stderr(&o).contains("wrong passphrase"));
    assert_only(dir.path(), &["f", "f.ferry"]);
}

#[test]
fn not_an_envelope() {
    expect_failure(b"just some text, not encrypted", 10, "not a Ferry envelope");
    expect_failure(b"", 10, "not a Ferry envelope");
}

#[test]
fn truncated() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 200_000);
    let b = std::fs::read(env).unwrap();
    expect_failure(&b[..b.len() - 10], 13, "truncated");
    expect_failure(&b[..600], 13, "too short to hold an envelope header");
}

#[test]
fn segment_removed_duplicated_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 4 * 65_536 + 7);
    let b = std::fs::read(env).unwrap();
    let mut removed = b[..seg(1).start].to_vec();
    removed.extend_from_slice(&b[seg(1).end..]);
    expect_failure(&removed, 13, "1 segment(s) were removed");
    let mut dup = b.clone();
    dup.copy_within(seg(0), seg(1).start);
    expect_failure(&dup, 13, "segment 0 appears again at position 1");
    let mut sw = b.clone();
    sw[seg(1)].copy_from_slice(&b[seg(2)]);
    sw[seg(2)].copy_from_slice(&b[seg(1)]);
    expect_failure(&sw, 13, "segment 2 was found at position 1");
}

#[test]
fn header_from_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = make(dir.path(), "a", 3 * 65_536);
    let (_, b) = make(dir.path(), "b", 3 * 65_536);
    let a = std::fs::read(a).unwrap();
    let b = std::fs::read(b).unwrap();
    let mut spliced = b[..HEADER].to_vec();
    spliced.extend_from_slice(&a[HEADER..]);
    expect_failure(&spliced, 13, "header does not belong to this payload");
}

#[test]
fn flipped_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 70_000);
    let b = std::fs::read(env).unwrap();
    let flip = |pos: usize| {
        let mut x = b.clone();
        x[pos] ^= 0x01;
        x
    };
    expect_failure(&flip(40), 13, "header is corrupted");
    expect_failure(&flip(128 + 50), 13, "key slot 0 is corrupted");
    expect_failure(&flip(HEADER + 500), 13, "segment 0 failed authentication");
    expect_failure(&flip(b.len() - 1), 13, "segment 1 failed authentication");
    expect_failure(&flip(1000), 10, "malformed envelope header");
}

#[test]
fn oversized_kdf_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 10);
    let mut b = std::fs::read(env).unwrap();
    // A 4 GiB memory cost, with the slot check recomputed as an attacker would.
    b[128 + 8..128 + 12].copy_from_slice(&(4u32 * 1024 * 1024).to_be_bytes());
    let mut h = Sha256::new();
    h.update(b"ferry/v1 slot-check");
    h.update(&b[128..128 + 176]);
    let c = h.finalize();
    b[128 + 176..128 + 192].copy_from_slice(&c[..16]);
    expect_failure(&b, 14, "outside the accepted bounds");
    // And the encryptor refuses them.
    let o = ferry(
        dir.path(),
        &["crypt", "encrypt", "f", "-o", "g", "--argon2-memory", "4194304"],
        Some(PASS),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid Argon2id parameters"));
}

#[test]
fn refuses_overwrite_and_missing_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 10);
    let o = ferry(dir.path(), &["crypt", "decrypt", env.to_str().unwrap()], Some(PASS));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"));
    let o = ferry(dir.path(), &["crypt", "decrypt", env.to_str().unwrap(), "-o", "x"], None);
    assert_eq!(o.status.code(), Some(5));
    assert!(stderr(&o).contains("FERRY_FILEPASS"));
    let o = ferry(dir.path(), &["crypt", "decrypt", "missing.ferry", "-o", "x"], Some(PASS));
    assert_eq!(o.status.code(), Some(3));
    assert_only(dir.path(), &["f", "f.ferry"]);
}

#[test]
fn inspect_shows_fields_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (_, env) = make(dir.path(), "f", 70_000);
    let o = ferry(dir.path(), &["crypt", "inspect", env.to_str().unwrap()], None);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    for needle in [
        "Ferry envelope v1",
        "plaintext length: 70000 bytes",
        "segments:         2",
        "matches the header",
        "slot 0:",
        "Argon2id m=19456 KiB t=2 p=1",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in {out}");
    }
    assert!(!out.contains(PASS));
}

#[test]
fn rewrap_changes_only_key_slots() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tree")).unwrap();
    let (pt, env) = make(&dir.path().join("tree"), "f", 150_000);
    let before = std::fs::read(&env).unwrap();
    let mut args = vec!["crypt", "rewrap", "tree"];
    args.extend(FAST);
    let o = Command::new(FERRY)
        .current_dir(dir.path())
        .args(&args)
        .env("FERRY_FILEPASS", PASS)
        .env("FERRY_FILEPASS_NEW", "brand new")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::read(&env).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(before[..128], after[..128], "fixed header untouched");
    assert_eq!(before[HEADER..], after[HEADER..], "payload untouched");
    assert_ne!(before[128..HEADER], after[128..HEADER]);
    let o =
        ferry(dir.path(), &["crypt", "decrypt", env.to_str().unwrap(), "-o", "old"], Some(PASS));
    assert_eq!(o.status.code(), Some(11));
    let o = ferry(
        dir.path(),
        &["crypt", "decrypt", env.to_str().unwrap(), "-o", "new"],
        Some("brand new"),
    );
    assert!(o.status.success());
    assert_eq!(std::fs::read(dir.path().join("new")).unwrap(), pt);
}

/// The document is sufficient: `scripts/ferry_envelope_decrypt.py` (Python `cryptography`, written
/// from docs/FORMAT.md alone) decrypts what `ferry crypt encrypt` wrote.
#[test]
fn interop_python_cryptography_decrypts_ferry_output() {
    let have = Command::new("python3")
        .args(["-c", "import cryptography.hazmat.primitives.kdf.argon2"])
        .status();
    assert!(
        have.is_ok_and(|s| s.success()),
        "python3 with the `cryptography` package (>= 44, for Argon2id) is required: run scripts/install-deps.sh"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ferry_envelope_decrypt.py");
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [("zero", 0usize), ("one", 65_536), ("many", 3 * 65_536 + 12_345)] {
        let (pt, env) = make(dir.path(), name, len);
        let out = dir.path().join(format!("{name}.py"));
        let o = Command::new("python3")
            .arg(&script)
            .arg(&env)
            .arg(&out)
            .env("FERRY_FILEPASS", PASS)
            .output()
            .unwrap();
        assert!(o.status.success(), "python decryptor failed: {}", stderr(&o));
        assert_eq!(std::fs::read(&out).unwrap(), pt, "{name}");
        // And it rejects a tampered file.
        let mut bad = std::fs::read(&env).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&env, &bad).unwrap();
        let o = Command::new("python3")
            .arg(&script)
            .arg(&env)
            .arg(dir.path().join("t"))
            .env("FERRY_FILEPASS", PASS)
            .output()
            .unwrap();
        assert!(!o.status.success());
    }
}

/// Before: decrypt wrote to a named temporary file beside the output, which a SIGKILL (or a
/// crash) left behind full of plaintext. Now the output has no name until it is complete: at
/// no moment during a decrypt does any other name appear, and a decrypt killed midway leaves
/// only the envelope.
#[test]
fn an_interrupted_decrypt_leaves_no_plaintext_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pt, env) = make(d, "big", 96 << 20);
    std::fs::remove_file(d.join("big")).unwrap();
    let allowed = |names: &[String]| names.iter().all(|n| n == "big.ferry" || n == "big");
    let list = || -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    // Watched while it runs.
    let mut child = Command::new(FERRY)
        .current_dir(d)
        .args(["crypt", "decrypt", "big.ferry"])
        .env("FERRY_FILEPASS", PASS)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        let names = list();
        assert!(allowed(&names), "a name appeared during the decrypt: {names:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "decrypt hung");
    }
    assert_eq!(Sha256::digest(std::fs::read(d.join("big")).unwrap()), Sha256::digest(&pt));
    std::fs::remove_file(d.join("big")).unwrap();
    // Killed midway (SIGKILL: no chance to clean up).
    for delay_ms in [50, 150, 300] {
        let mut child = Command::new(FERRY)
            .current_dir(d)
            .args(["crypt", "decrypt", "big.ferry"])
            .env("FERRY_FILEPASS", PASS)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let names = list();
        if names.iter().any(|n| n == "big") {
            // It finished first: then the output is complete.
            assert_eq!(Sha256::digest(std::fs::read(d.join("big")).unwrap()), Sha256::digest(&pt));
            std::fs::remove_file(d.join("big")).unwrap();
        }
        assert_only(d, &["big.ferry"]);
    }
    assert!(env.exists());
}
