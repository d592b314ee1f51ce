//! `ferry keys migrate --config FILE`: plaintext secrets move into the root keystore, the
//! configuration keeps its comments and is blanked atomically, and a 0600 backup is kept.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use ferry_keystore::{Category, Keystore, Options, Owner};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

const CONFIG: &str = r#"# Ferry server configuration
listen = "0.0.0.0:33001"
token_encryption_key = "legacy-token-key-123"   # shared

[[users]]
name = "alice"
docroot = "/srv/alice"
content_protection_secret = "alice-plaintext-secret"

[[users]]
name = "bob"
docroot = "/srv/bob"
content_protection_secret = ""   # already in the keystore

[user.carol]
docroot = "/srv/carol"
content_protection_secret = "carol-plaintext-secret"
"#;

fn migrate(dir: &std::path::Path, cfg: &std::path::Path) -> std::process::Output {
    Command::new(FERRY)
        .args(["keys", "migrate", "--config"])
        .arg(cfg)
        .env("FERRY_ROOT_KEYSTORE", dir.join("rootkeystore.db"))
        .output()
        .unwrap()
}

#[test]
fn migrate_moves_secrets_and_keeps_a_backup() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("ferry.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = migrate(d.path(), &cfg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("moved 3 secret(s) into root keystore "), "{out}");
    assert!(out.contains("alice/ssear v1 (from users[0].content_protection_secret)"), "{out}");
    assert!(out.contains("carol/ssear v1 (from user.carol.content_protection_secret)"), "{out}");
    assert!(out.contains("shared/token-key v1 (from token_encryption_key)"), "{out}");

    // Blanked, comments and layout preserved, mode preserved.
    let new = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(
        new,
        CONFIG
            .replace("\"legacy-token-key-123\"", "\"\"")
            .replace("\"alice-plaintext-secret\"", "\"\"")
            .replace("\"carol-plaintext-secret\"", "\"\"")
    );
    assert_eq!(std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777, 0o640);

    // The backup holds the original, private.
    let backups: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ferry.toml.bak-"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), CONFIG);
    assert_eq!(std::fs::metadata(&backups[0]).unwrap().permissions().mode() & 0o777, 0o600);

    // The keystore holds the values.
    let ks = Keystore::open_root(&d.path().join("rootkeystore.db"), &Options::new()).unwrap();
    let get = |o: Owner, c| ks.current(&o, c).unwrap().value().expose().to_vec();
    assert_eq!(get(Owner::user("alice").unwrap(), Category::Ssear), b"alice-plaintext-secret");
    assert_eq!(get(Owner::user("carol").unwrap(), Category::Ssear), b"carol-plaintext-secret");
    assert_eq!(get(Owner::Shared, Category::TokenKey), b"legacy-token-key-123");
    assert!(ks.list(Some(&Owner::user("bob").unwrap()), None).unwrap().is_empty());
    drop(ks);

    // Running it again finds nothing to do and changes nothing.
    let o = migrate(d.path(), &cfg);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8(o.stdout).unwrap(),
        format!("no plaintext secrets in {}; nothing to do\n", cfg.display())
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), new);
}

#[test]
fn migrate_refuses_ambiguous_or_broken_configs_without_changes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("ferry.toml");
    let text = "[server]\ncontent_protection_secret = \"whose?\"\n";
    std::fs::write(&cfg, text).unwrap();
    let o = migrate(d.path(), &cfg);
    assert_eq!(o.status.code(), Some(28));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "ferry: error: {} was not changed: cannot tell which user server.content_protection_secret \
             belongs to; add name = \"USER\" to its table\n",
            cfg.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
    assert!(!d.path().join("rootkeystore.db").exists());

    std::fs::write(&cfg, "this is = not [toml").unwrap();
    let o = migrate(d.path(), &cfg);
    assert_eq!(o.status.code(), Some(28));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .starts_with(&format!("ferry: error: cannot parse {} as TOML: ", cfg.display()))
    );
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "something was written");
}

/// Root runs the migration on a path it was given: a configuration that is a symbolic link (to
/// a file root owns), or that lies in a directory other users can write to, is refused and
/// nothing changes (before, root read through the link and replaced it, owner lost).
#[test]
fn migrate_refuses_links_and_shared_directories() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("real.toml");
    std::fs::write(&target, CONFIG).unwrap();
    let link = d.path().join("ferry.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = migrate(d.path(), &link);
    assert_eq!(o.status.code(), Some(28), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), CONFIG);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    let shared = d.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = shared.join("ferry.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let o = migrate(d.path(), &cfg);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("chmod go-w"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), CONFIG);
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 1, "no backup written");
}
