//! Library behaviour: versions, states, minimum decryption version, sync, audit, tampering.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_keystore::{
    Category, KeyState, Keystore, KeystoreError, Options, Owner, PutOptions, SecretBytes,
    SyncOptions,
};

fn root(dir: &Path) -> (PathBuf, Keystore) {
    let p = dir.join("rootkeystore.db");
    let ks = Keystore::create_root(&p, &Options::new().actor("test")).unwrap();
    (p, ks)
}

fn alice() -> Owner {
    Owner::user("alice").unwrap()
}

fn put(ks: &Keystore, owner: &Owner, cat: Category, v: &[u8]) -> u32 {
    ks.put(owner, cat, SecretBytes::from_slice(v), &PutOptions::default()).unwrap().version
}

#[test]
fn versions_states_and_minimum() {
    let d = tempfile::tempdir().unwrap();
    let (_, ks) = root(d.path());
    let a = alice();
    assert_eq!(put(&ks, &a, Category::Ssear, b"first"), 1);
    assert_eq!(put(&ks, &a, Category::Ssear, b"second"), 2);
    // The newest version is active, the previous one deactivated but still decrypts.
    let cur = ks.current(&a, Category::Ssear).unwrap();
    assert_eq!(
        (cur.version(), cur.state(), cur.value().expose()),
        (2, KeyState::Active, &b"second"[..])
    );
    let old = ks.resolve(&a, Category::Ssear, 1).unwrap();
    assert_eq!((old.state(), old.value().expose()), (KeyState::Deactivated, &b"first"[..]));

    // Minimum decryption version.
    ks.set_min_decryption_version(&a, Category::Ssear, 2).unwrap();
    let e = ks.resolve(&a, Category::Ssear, 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot decrypt with alice/ssear v1: it is below the minimum decryption version 2"
    );
    let e = ks.set_min_decryption_version(&a, Category::Ssear, 3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the minimum decryption version of alice/ssear must be between 1 and 2"
    );
    ks.set_min_decryption_version(&a, Category::Ssear, 1).unwrap();
    assert!(ks.resolve(&a, Category::Ssear, 1).is_ok());

    // Suspend: fail closed for both operations; reactivate.
    ks.set_state(&a, Category::Ssear, 2, KeyState::Suspended).unwrap();
    assert_eq!(
        ks.current(&a, Category::Ssear).unwrap_err().to_string(),
        "alice/ssear has no active version"
    );
    assert_eq!(
        ks.resolve(&a, Category::Ssear, 2).unwrap_err().to_string(),
        "cannot decrypt with alice/ssear v2: it is suspended"
    );
    ks.set_state(&a, Category::Ssear, 2, KeyState::Active).unwrap();
    assert_eq!(ks.current(&a, Category::Ssear).unwrap().version(), 2);

    // Destroy only after deactivation.
    let e = ks.set_state(&a, Category::Ssear, 2, KeyState::Destroyed).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot move alice/ssear v2 from active to destroyed: deactivate it first"
    );
    ks.set_state(&a, Category::Ssear, 1, KeyState::Destroyed).unwrap();
    let info = ks.info(&a, Category::Ssear, 1).unwrap();
    assert_eq!((info.state, info.has_value), (KeyState::Destroyed, false));
    assert_eq!(
        ks.resolve(&a, Category::Ssear, 1).unwrap_err().to_string(),
        "cannot decrypt with alice/ssear v1: it is destroyed"
    );
    // Versions are never reused.
    assert_eq!(put(&ks, &a, Category::Ssear, b"third"), 3);

    // Compromised: no use; can only be destroyed.
    ks.set_state(&a, Category::Ssear, 2, KeyState::Compromised).unwrap();
    assert!(matches!(
        ks.resolve(&a, Category::Ssear, 2),
        Err(KeystoreError::WrongState { state: KeyState::Compromised, .. })
    ));
    assert!(ks.set_state(&a, Category::Ssear, 2, KeyState::Active).is_err());

    // Pre-active staging, then activation deactivates the current version.
    let staged = ks
        .generate(&a, Category::Ssear, &PutOptions { state: KeyState::PreActive, ttl: None })
        .unwrap();
    assert_eq!((staged.version, staged.state), (4, KeyState::PreActive));
    assert_eq!(ks.current(&a, Category::Ssear).unwrap().version(), 3);
    assert!(ks.resolve(&a, Category::Ssear, 4).is_err());
    ks.set_state(&a, Category::Ssear, 4, KeyState::Active).unwrap();
    assert_eq!(ks.current(&a, Category::Ssear).unwrap().version(), 4);
    assert_eq!(ks.info(&a, Category::Ssear, 3).unwrap().state, KeyState::Deactivated);

    // Exactly one active version.
    let active: Vec<_> = ks
        .list(Some(&a), None)
        .unwrap()
        .into_iter()
        .filter(|i| i.state == KeyState::Active)
        .collect();
    assert_eq!(active.len(), 1);
}

#[test]
fn categories_and_places() {
    let d = tempfile::tempdir().unwrap();
    let (_, ks) = root(d.path());
    let e = ks.put(
        &Owner::Shared,
        Category::Ssear,
        SecretBytes::from_slice(b"x"),
        &PutOptions::default(),
    );
    assert_eq!(
        e.unwrap_err().to_string(),
        "ssear: these secrets belong to one user; name the user"
    );
    let e = ks.generate(&alice(), Category::RedisMasterKey, &PutOptions::default());
    assert_eq!(
        e.unwrap_err().to_string(),
        "redis-master-key: this is a shared secret; it belongs to no user"
    );
    let e = ks.generate(&alice(), Category::Filepass, &PutOptions::default());
    assert!(e.unwrap_err().to_string().starts_with("filepass: a client-side passphrase"));
    // Token keys expire for protection (default 24 h) but still decrypt afterwards.
    let t = ks
        .generate(
            &Owner::Shared,
            Category::TokenKey,
            &PutOptions { ttl: Some(Duration::from_secs(1)), ..Default::default() },
        )
        .unwrap();
    assert!(t.not_after.is_some());
    std::thread::sleep(Duration::from_millis(2100));
    let e = ks.current(&Owner::Shared, Category::TokenKey).unwrap_err();
    assert!(e.to_string().starts_with("shared/token-key v1 expired at "), "{e}");
    assert!(ks.resolve(&Owner::Shared, Category::TokenKey, 1).is_ok());
    let rotated = ks.rotate(&Owner::Shared, Category::TokenKey, &PutOptions::default()).unwrap();
    assert_eq!(rotated.version, 2);
    assert!(rotated.not_after.unwrap() - rotated.created_at == 24 * 3600);
    assert!(ks.current(&Owner::Shared, Category::TokenKey).is_ok());
    // Rotating something that does not exist.
    let e =
        ks.rotate(&Owner::Shared, Category::RedisMasterKey, &PutOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "no records found for shared/redis-master-key");
}

#[test]
fn sync_copies_states_and_expires() {
    let d = tempfile::tempdir().unwrap();
    let (_, rks) = root(d.path());
    let a = alice();
    let bob = Owner::user("bob").unwrap();
    put(&rks, &a, Category::Ssear, b"alice-1");
    put(&rks, &a, Category::Ssear, b"alice-2");
    put(&rks, &bob, Category::Ssear, b"bob-1");
    rks.generate(&Owner::Shared, Category::RedisMasterKey, &PutOptions::default()).unwrap();

    let lp = d.path().join("home/alice/.ferry/localkeystore.db");
    let local = Keystore::open_or_create_local(&lp, "alice", &Options::new()).unwrap();
    // The user's own client-side secret lives only here and survives syncs.
    local
        .put(
            &a,
            Category::Filepass,
            SecretBytes::from_slice(b"my passphrase"),
            &PutOptions::default(),
        )
        .unwrap();
    let rep = local.sync_from_root(&rks, &SyncOptions::default()).unwrap();
    assert_eq!((rep.with_value, rep.metadata_only), (3, 0));
    assert_eq!(local.current(&a, Category::Ssear).unwrap().value().expose(), b"alice-2");
    assert_eq!(local.resolve(&a, Category::Ssear, 1).unwrap().value().expose(), b"alice-1");
    assert_eq!(
        local.current(&Owner::Shared, Category::RedisMasterKey).unwrap().value().expose(),
        rks.current(&Owner::Shared, Category::RedisMasterKey).unwrap().value().expose()
    );
    // Bob's secrets never reach Alice's keystore.
    assert!(local.list(Some(&bob), None).unwrap().is_empty());
    assert!(local.current(&bob, Category::Ssear).is_err());
    // Synced categories cannot be changed locally.
    let e = local.generate(&a, Category::Ssear, &PutOptions::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("ssear: these secrets are managed in the root keystore"),
        "{e}"
    );

    // Revocation reaches the copy at the next sync, as metadata without the value.
    rks.set_state(&a, Category::Ssear, 2, KeyState::Suspended).unwrap();
    let rep =
        local.sync_from_root(&rks, &SyncOptions { copy_ttl: Duration::from_secs(1) }).unwrap();
    assert_eq!((rep.with_value, rep.metadata_only), (2, 1));
    assert_eq!(
        local.resolve(&a, Category::Ssear, 2).unwrap_err().to_string(),
        "cannot decrypt with alice/ssear v2: it is suspended"
    );
    assert_eq!(local.current(&a, Category::Filepass).unwrap().value().expose(), b"my passphrase");
    // Copies expire.
    std::thread::sleep(Duration::from_millis(2100));
    let e = local.resolve(&a, Category::Ssear, 1).unwrap_err();
    assert!(e.to_string().starts_with("the local copy of alice/ssear v1 expired at "), "{e}");
    // ... but the local secret does not.
    assert!(local.current(&a, Category::Filepass).is_ok());

    // A local keystore belongs to one user.
    drop(local);
    let e = Keystore::open_or_create_local(&lp, "bob", &Options::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is the local keystore of alice, not of bob", lp.display())
    );
}

#[test]
fn audit_records_changes_and_reads_without_values() {
    let d = tempfile::tempdir().unwrap();
    let (p, ks) = root(d.path());
    let a = alice();
    put(&ks, &a, Category::Ssear, b"audit-me-not-value");
    ks.resolve(&a, Category::Ssear, 1).unwrap();
    ks.set_state(&a, Category::Ssear, 1, KeyState::Suspended).unwrap();
    let recs = ks.audit_records(100).unwrap();
    let ops: Vec<_> = recs.iter().map(|r| r.op.as_str()).collect();
    assert_eq!(ops, ["create", "put", "read", "state"]);
    assert!(recs[1].actor.starts_with("test uid="), "{}", recs[1].actor);
    assert_eq!(recs[3].from_state.as_deref(), Some("active"));
    assert_eq!(recs[3].to_state.as_deref(), Some("suspended"));
    let log = std::fs::read_to_string(ferry_keystore::audit_log_path(&p)).unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2]["op"], "read");
    assert_eq!(lines[2]["version"], 1);
    assert!(!log.contains("audit-me-not-value"));
}

#[test]
fn debug_output_never_shows_values() {
    let d = tempfile::tempdir().unwrap();
    let (_, ks) = root(d.path());
    put(&ks, &alice(), Category::Ssear, b"debug-secret-value");
    let s = ks.current(&alice(), Category::Ssear).unwrap();
    let dbg = format!("{s:?} {ks:?}");
    assert!(!dbg.contains("debug-secret-value"));
    assert!(!dbg.contains(&hex::encode(b"debug-secret-value")));
    assert!(dbg.contains("[redacted]"));
}

fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 shell (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn swapped_or_modified_rows_fail_authentication() {
    let d = tempfile::tempdir().unwrap();
    let (p, ks) = root(d.path());
    let a = alice();
    let bob = Owner::user("bob").unwrap();
    put(&ks, &a, Category::Ssear, b"alice-secret");
    put(&ks, &bob, Category::Ssear, b"bob-secret");
    drop(ks);
    // Give Bob's row Alice's wrapped value: it must not decrypt as Bob's.
    sqlite(
        &p,
        "UPDATE secrets SET (nonce, wrapped) = (SELECT nonce, wrapped FROM secrets WHERE owner='alice') WHERE owner='bob';",
    );
    let ks = Keystore::open_root(&p, &Options::new()).unwrap();
    assert_eq!(
        ks.resolve(&bob, Category::Ssear, 1).unwrap_err().to_string(),
        "bob/ssear v1 failed authentication: the stored row was modified, or moved from another \
         keystore, owner, category or version"
    );
    assert_eq!(ks.resolve(&a, Category::Ssear, 1).unwrap().value().expose(), b"alice-secret");
    drop(ks);
    // Flip one bit of Alice's ciphertext.
    let hexv = sqlite(&p, "SELECT hex(wrapped) FROM secrets WHERE owner='alice';");
    let mut bytes = hex::decode(hexv.trim()).unwrap();
    bytes[0] ^= 1;
    sqlite(
        &p,
        &format!("UPDATE secrets SET wrapped = X'{}' WHERE owner='alice';", hex::encode(bytes)),
    );
    let ks = Keystore::open_root(&p, &Options::new()).unwrap();
    assert!(matches!(ks.resolve(&a, Category::Ssear, 1), Err(KeystoreError::Integrity { .. })));
}

#[test]
fn stash_passphrase() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("rootkeystore.db");
    let pass = || SecretBytes::from_slice(b"stash passphrase");
    let opts = Options::new().passphrase(pass()).argon2_params(ferry_keystore::Argon2Params::MIN);
    let ks = Keystore::create_root(&p, &opts).unwrap();
    put(&ks, &alice(), Category::Ssear, b"v");
    drop(ks);
    let stash = ferry_keystore::key_file_path(&p, ferry_keystore::KeystoreKind::Root);
    let e = Keystore::open_root(&p, &Options::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{} is protected by a stash passphrase, and none was given", stash.display())
    );
    let e = Keystore::open_root(&p, &Options::new().passphrase(SecretBytes::from_slice(b"nope")))
        .unwrap_err();
    assert_eq!(e.to_string(), format!("wrong stash passphrase for {}", stash.display()));
    let ks = Keystore::open_root(&p, &Options::new().passphrase(pass())).unwrap();
    assert_eq!(ks.current(&alice(), Category::Ssear).unwrap().value().expose(), b"v");
}

#[test]
fn concurrent_creation_and_threads_lose_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("rootkeystore.db");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let ks = Keystore::open_or_create_root(&p, &Options::new()).unwrap();
                for i in 0..10 {
                    let v = format!("t{t}-i{i}");
                    ks.put(
                        &Owner::user("alice").unwrap(),
                        Category::Ssear,
                        SecretBytes::from_slice(v.as_bytes()),
                        &PutOptions::default(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ks = Keystore::open_root(&p, &Options::new()).unwrap();
    let list = ks.list(None, None).unwrap();
    assert_eq!(list.len(), 40);
    let mut seen: Vec<String> = (1..=40)
        .map(|v| {
            String::from_utf8(
                ks.resolve(&alice(), Category::Ssear, v).unwrap().value().expose().to_vec(),
            )
            .unwrap()
        })
        .collect();
    seen.sort();
    let mut want: Vec<String> =
        (0..4).flat_map(|t| (0..10).map(move |i| format!("t{t}-i{i}"))).collect();
    want.sort();
    assert_eq!(seen, want);
}

/// The engine and the daemon share a keystore between threads behind a mutex.
#[test]
fn keystore_is_send() {
    fn send<T: Send>() {}
    send::<Keystore>();
    send::<ferry_keystore::Secret>();
}

/// Library users (the daemon) get the creating command in the error itself.
#[test]
fn missing_keystores_name_the_creating_command() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("rootkeystore.db");
    assert_eq!(
        Keystore::open_root(&p, &Options::new()).unwrap_err().to_string(),
        format!("root keystore {} does not exist; create it with `ferry keys -i`", p.display())
    );
    let l = d.path().join("localkeystore.db");
    assert_eq!(
        Keystore::open_local(&l, &Options::new()).unwrap_err().to_string(),
        format!(
            "local keystore {} does not exist; create it with `ferry keys -i -u USER`",
            l.display()
        )
    );
    assert!(!p.exists() && !l.exists());
}

#[test]
fn rekey_rewraps_everything_and_retires_the_old_key() {
    let d = tempfile::tempdir().unwrap();
    let (p, mut ks) = root(d.path());
    let a = alice();
    put(&ks, &a, Category::Ssear, b"one");
    put(&ks, &a, Category::Ssear, b"two");
    ks.generate(&Owner::Shared, Category::RedisMasterKey, &PutOptions::default()).unwrap();
    ks.set_state(&a, Category::Ssear, 1, KeyState::Destroyed).unwrap();
    let redis = ks.current(&Owner::Shared, Category::RedisMasterKey).unwrap().into_value();
    let stash = ferry_keystore::key_file_path(&p, ferry_keystore::KeystoreKind::Root);
    let old_stash = std::fs::read(&stash).unwrap();
    // Another handle, opened before the rekey.
    let stale = Keystore::open_root(&p, &Options::new()).unwrap();

    assert_eq!(ks.rekey(None, ferry_keystore::Argon2Params::MIN).unwrap(), 2);
    assert_ne!(std::fs::read(&stash).unwrap(), old_stash);
    assert!(!d.path().join("rootkeystore.stash.new").exists());
    // Same handle keeps working; values are intact.
    assert_eq!(ks.current(&a, Category::Ssear).unwrap().value().expose(), b"two");
    put(&ks, &a, Category::Ssear, b"three");
    drop(ks);
    let ks = Keystore::open_root(&p, &Options::new()).unwrap();
    assert_eq!(ks.resolve(&a, Category::Ssear, 2).unwrap().value().expose(), b"two");
    assert_eq!(ks.resolve(&a, Category::Ssear, 3).unwrap().value().expose(), b"three");
    assert_eq!(
        ks.current(&Owner::Shared, Category::RedisMasterKey).unwrap().value().expose(),
        redis.expose()
    );
    assert!(ks.audit_records(100).unwrap().iter().any(|r| r.op == "rekey"));
    drop(ks);

    // The stale handle may not write under the old key.
    let e = stale.generate(&a, Category::Ssear, &PutOptions::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the key of {} was replaced by another process (ferry keys --rekey) after it was \
             opened; open the keystore again",
            p.display()
        )
    );
    drop(stale);

    // The old stash no longer opens the keystore.
    let new_stash = std::fs::read(&stash).unwrap();
    std::fs::write(&stash, &old_stash).unwrap();
    let e = Keystore::open_root(&p, &Options::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the key in {} does not open {} (the key check value does not verify); use the key \
             file that was created with this keystore",
            stash.display(),
            p.display()
        )
    );

    // A rekey interrupted after its commit (new key still under `.new`) is completed on open.
    std::fs::write(d.path().join("rootkeystore.stash.new"), &new_stash).unwrap();
    std::fs::set_permissions(
        d.path().join("rootkeystore.stash.new"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let ks = Keystore::open_root(&p, &Options::new()).unwrap();
    assert_eq!(ks.resolve(&a, Category::Ssear, 3).unwrap().value().expose(), b"three");
    assert_eq!(std::fs::read(&stash).unwrap(), new_stash);
    assert!(!d.path().join("rootkeystore.stash.new").exists());
}

/// Writers racing a root key rotation: a handle opened before the rotation is refused
/// (`Rekeyed`), reopens and retries; afterwards every value decrypts under the new key.
#[test]
fn rekey_under_concurrent_writers_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("rootkeystore.db");
    drop(Keystore::create_root(&p, &Options::new()).unwrap());
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let owner = Owner::user(&format!("w{t}")).unwrap();
                let mut ks = Keystore::open_root(&p, &Options::new()).unwrap();
                let mut refused = 0;
                for i in 0..15 {
                    let v = format!("w{t}-{i}");
                    loop {
                        match ks.put(
                            &owner,
                            Category::Ssear,
                            SecretBytes::from_slice(v.as_bytes()),
                            &PutOptions::default(),
                        ) {
                            Ok(_) => break,
                            Err(KeystoreError::Rekeyed { .. }) => {
                                refused += 1;
                                assert!(refused < 100);
                                ks = Keystore::open_root(&p, &Options::new()).unwrap();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    let mut admin = Keystore::open_root(&p, &Options::new()).unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(20));
        admin.rekey(None, ferry_keystore::Argon2Params::MIN).unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    drop(admin);
    let ks = Keystore::open_root(&p, &Options::new()).unwrap();
    for t in 0..3 {
        let owner = Owner::user(&format!("w{t}")).unwrap();
        let mut got: Vec<Vec<u8>> = (1..=15u32)
            .map(|v| ks.resolve(&owner, Category::Ssear, v).unwrap().value().expose().to_vec())
            .collect();
        got.sort();
        let mut want: Vec<Vec<u8>> = (0..15).map(|i| format!("w{t}-{i}").into_bytes()).collect();
        want.sort();
        assert_eq!(got, want);
    }
}
