//! `ferry crypt` with keystore key slots against the real keystore (`ferry keys`, SQLite):
//! encrypt under a user's `ssear` secret, rotate, decrypt with the deactivated version, rewrap a
//! directory tree to the active version in place, and fail closed on destroyed and suspended
//! versions with a message naming the key, version and state.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const HEADER: usize = 1024;

fn ferry(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = Command::new(FERRY);
    c.current_dir(dir)
        .args(args)
        .env("FERRY_ROOT_KEYSTORE", dir.join("root.db"))
        .env_remove("FERRY_LOCAL_KEYSTORE")
        .env_remove("FERRY_FILEPASS")
        .env_remove("FERRY_STASH_PASSPHRASE")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn ferry");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "ferry failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn keystore_slots_rotation_rewrap_and_revocation() {
    // The keystore only runs where it can check file ownership (as root here, or as the user).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&ferry(d, &["keys", "-i"], None));
    ok(&ferry(d, &["keys", "-u", "alice", "-s", "ssear"], Some(&[0x42; 32])));

    std::fs::create_dir_all(d.join("tree/sub")).unwrap();
    let a: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let b = b"second file".to_vec();
    std::fs::write(d.join("tree/a"), &a).unwrap();
    std::fs::write(d.join("tree/sub/b"), &b).unwrap();
    for f in ["tree/a", "tree/sub/b"] {
        ok(&ferry(d, &["crypt", "encrypt", "--keystore-user", "alice", f], None));
        std::fs::remove_file(d.join(f)).unwrap();
    }
    let keep_v1 = std::fs::read(d.join("tree/a.ferry")).unwrap();
    let o = ferry(d, &["crypt", "inspect", "tree/a.ferry"], None);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("keystore secret alice/ssear v1, active"), "{text}");

    // A passphrase cannot open it; the keystore can.
    let o = ferry(d, &["crypt", "decrypt", "tree/a.ferry", "-o", "a.out"], None);
    ok(&o);
    assert_eq!(std::fs::read(d.join("a.out")).unwrap(), a);

    // Rotate: v2 active, v1 deactivated; files under v1 still open.
    ok(&ferry(d, &["keys", "-u", "alice", "-s", "ssear", "--rotate"], None));
    let o = ferry(d, &["crypt", "decrypt", "tree/a.ferry", "-o", "a2.out"], None);
    ok(&o);

    // Bulk rewrap of the tree to v2: only key slots change.
    let before = std::fs::read(d.join("tree/a.ferry")).unwrap();
    let o = ferry(d, &["crypt", "rewrap", "tree"], None);
    ok(&o);
    assert!(stderr(&o).contains("to alice/ssear v2"), "{}", stderr(&o));
    let after = std::fs::read(d.join("tree/a.ferry")).unwrap();
    assert_eq!(before[..128], after[..128]);
    assert_eq!(before[HEADER..], after[HEADER..]);
    let o = ferry(d, &["crypt", "inspect", "tree/sub/b.ferry"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("alice/ssear v2, active"));

    // Destroy v1: the un-rewrapped copy fails closed, naming key, version and state.
    ok(&ferry(d, &["keys", "-u", "alice", "-s", "ssear", "--destroy", "--version", "1"], None));
    std::fs::write(d.join("old.ferry"), &keep_v1).unwrap();
    let o = ferry(d, &["crypt", "decrypt", "old.ferry", "-o", "old.out"], None);
    assert_eq!(o.status.code(), Some(12), "{}", stderr(&o));
    assert!(stderr(&o).contains("alice/ssear v1 is destroyed"), "{}", stderr(&o));
    assert!(!d.join("old.out").exists());
    // The rewrapped files still open.
    let o = ferry(d, &["crypt", "decrypt", "tree/sub/b.ferry", "-o", "b.out"], None);
    ok(&o);
    assert_eq!(std::fs::read(d.join("b.out")).unwrap(), b);

    // Suspend v2: fails closed (reversibly), then reactivate and it opens again.
    ok(&ferry(d, &["keys", "-u", "alice", "-s", "ssear", "--suspend"], None));
    let o = ferry(d, &["crypt", "decrypt", "tree/a.ferry", "-o", "s.out"], None);
    assert_eq!(o.status.code(), Some(12));
    assert!(stderr(&o).contains("alice/ssear v2 is suspended"), "{}", stderr(&o));
    assert!(!d.join("s.out").exists());
    // No new files can be wrapped under a suspended secret either.
    std::fs::write(d.join("c"), b"c").unwrap();
    let o = ferry(d, &["crypt", "encrypt", "--keystore-user", "alice", "c"], None);
    assert!(!o.status.success());
    assert!(!d.join("c.ferry").exists());
    ok(&ferry(d, &["keys", "-u", "alice", "-s", "ssear", "--activate", "--version", "2"], None));
    ok(&ferry(d, &["crypt", "decrypt", "tree/a.ferry", "-o", "s.out"], None));
    assert_eq!(std::fs::read(d.join("s.out")).unwrap(), a);

    // Another user's secret does not open alice's file.
    ok(&ferry(d, &["keys", "-u", "bob", "-s", "ssear"], Some(&[0x43; 32])));
    // Bob's active version is v2, the version the (renamed) slot names.
    ok(&ferry(d, &["keys", "-u", "bob", "-s", "ssear", "--rotate"], None));
    let mut forged = std::fs::read(d.join("tree/a.ferry")).unwrap();
    // Rename the slot's owner to bob (fixing the slot check as an attacker would): the slot's
    // AAD binds the owner, so bob's secret cannot unwrap it.
    let slot = (0..4).find(|k| forged[128 + 192 * k] == 2).expect("a keystore slot");
    let off = 128 + 192 * slot;
    assert_eq!(&forged[off + 97..off + 102], b"alice");
    let mut names = vec![3u8];
    names.extend_from_slice(b"bob");
    names.push(5);
    names.extend_from_slice(b"ssear");
    names.resize(80, 0);
    forged[off + 96..off + 176].copy_from_slice(&names);
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"ferry/v1 slot-check");
    h.update(&forged[off..off + 176]);
    let c = h.finalize();
    forged[off + 176..off + 192].copy_from_slice(&c[..16]);
    std::fs::write(d.join("forged.ferry"), &forged).unwrap();
    let o = ferry(d, &["crypt", "decrypt", "forged.ferry", "-o", "f.out"], None);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not open this file"), "{}", stderr(&o));
    assert!(!d.join("f.out").exists());
}
