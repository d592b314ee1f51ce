//! No secret value reaches the disk in any form: raw bytes of every file the keystore writes
//! (database, WAL, shared memory, key files, audit logs) and the `sqlite3` shell's dump.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use ferry_keystore::{
    Category, KeyState, Keystore, Options, Owner, PutOptions, SecretBytes, SyncOptions,
};

/// Every encoding of `v` a careless implementation might store.
fn forms(v: &[u8]) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    vec![
        ("raw".into(), v.to_vec()),
        ("hex".into(), hex::encode(v).into_bytes()),
        ("HEX".into(), hex::encode_upper(v).into_bytes()),
        ("base64".into(), STANDARD.encode(v).into_bytes()),
        ("base64-nopad".into(), STANDARD_NO_PAD.encode(v).into_bytes()),
        ("base64url".into(), URL_SAFE_NO_PAD.encode(v).into_bytes()),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Scans every file in `dir` and the sqlite3 dump of every database; returns how many files
/// and dumps were scanned.
fn assert_absent(dir: &Path, secrets: &[Vec<u8>]) -> usize {
    let mut scanned = 0;
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in walk(dir) {
        // Read through another process: opening and closing a database file in this process
        // would release the POSIX locks the open keystores hold on it.
        let cat = Command::new("cat").arg(&entry).output().unwrap();
        assert!(
            cat.status.success(),
            "cat {}: {}",
            entry.display(),
            String::from_utf8_lossy(&cat.stderr)
        );
        let bytes = cat.stdout;
        blobs.push((entry.display().to_string(), bytes));
        if entry.extension().is_some_and(|e| e == "db") {
            let out = Command::new("sqlite3")
                .arg(&entry)
                .arg(".dump")
                .output()
                .expect("the sqlite3 shell (scripts/install-deps.sh installs it)");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let dump = out.stdout;
            // Positive control: the dump does show the rows (owner names, wrapped blobs).
            assert!(
                contains(&dump, b"INSERT INTO secrets"),
                "dump of {} has no rows",
                entry.display()
            );
            blobs.push((format!("sqlite3 .dump of {}", entry.display()), dump));
        }
    }
    for (name, bytes) in &blobs {
        scanned += 1;
        for s in secrets {
            for (form, needle) in forms(s) {
                assert!(!contains(bytes, &needle), "{form} form of a secret found in {name}");
            }
        }
    }
    scanned
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn secrets_never_appear_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let rp = d.path().join("root/rootkeystore.db");
    let lp = d.path().join("home/.ferry/localkeystore.db");
    let mut root = Keystore::create_root(&rp, &Options::new()).unwrap();
    let alice = Owner::user("alice").unwrap();
    let canary = |tag: &str| {
        format!("FERRY-CANARY-{tag}-{}", hex::encode(SecretBytes::random(8).expose())).into_bytes()
    };
    let mut secrets = vec![canary("ssear-1"), canary("ssear-2"), canary("filepass")];
    let redis = SecretBytes::random(32).expose().to_vec();
    for v in &secrets[..2] {
        root.put(&alice, Category::Ssear, SecretBytes::from_slice(v), &PutOptions::default())
            .unwrap();
    }
    root.put(
        &Owner::Shared,
        Category::RedisMasterKey,
        SecretBytes::from_slice(&redis),
        &PutOptions::default(),
    )
    .unwrap();
    secrets.push(redis);
    // Root key rotation re-wraps in place; nothing leaks on the way.
    assert_eq!(root.rekey(None, ferry_keystore::Argon2Params::MIN).unwrap(), 3);
    let local = Keystore::open_or_create_local(&lp, "alice", &Options::new()).unwrap();
    local.sync_from_root(&root, &SyncOptions::default()).unwrap();
    local
        .put(
            &alice,
            Category::Filepass,
            SecretBytes::from_slice(&secrets[2]),
            &PutOptions::default(),
        )
        .unwrap();
    // Generated values (never seen by the caller until read back) are covered too.
    root.generate(&Owner::Shared, Category::TokenKey, &PutOptions::default()).unwrap();
    secrets
        .push(root.current(&Owner::Shared, Category::TokenKey).unwrap().value().expose().to_vec());
    for v in 1..=2 {
        local.resolve(&alice, Category::Ssear, v).unwrap();
    }

    // While both keystores are open, their WAL and shared-memory files exist.
    let wal = rp.with_extension("db-wal");
    assert!(wal.exists(), "expected a WAL file while the keystore is open");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let n = assert_absent(d.path(), &secrets);
    assert!(n >= 10, "only {n} files scanned");

    // Destroy one version; after closing, everything is checkpointed into the main files.
    root.set_state(&alice, Category::Ssear, 1, KeyState::Destroyed).unwrap();
    drop(local);
    drop(root);
    assert_absent(d.path(), &secrets);

    // Positive control for the scanner itself: a value stored in the clear would be found.
    let plain = d.path().join("plain.db");
    let out = Command::new("sqlite3")
        .arg(&plain)
        .arg(format!(
            "CREATE TABLE secrets (v BLOB); INSERT INTO secrets VALUES (X'{}');",
            hex::encode(&secrets[0])
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let found = std::panic::catch_unwind(|| assert_absent(d.path(), &secrets));
    let msg = found.expect_err("the scanner missed a plaintext value");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("form of a secret found in"), "{msg}");
}
