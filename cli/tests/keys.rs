//! `ferry keys` end to end: the real binary, real SQLite files, exact user-facing messages.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use ferry_keystore::{Category, Keystore, Options, Owner};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A throwaway pair of keystore locations.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("state/rootkeystore.db")
    }
    fn stash(&self) -> PathBuf {
        self.dir.path().join("state/rootkeystore.stash")
    }
    fn local(&self) -> PathBuf {
        self.dir.path().join("home/.ferry/localkeystore.db")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.arg("keys")
            .args(args)
            .env("FERRY_ROOT_KEYSTORE", self.root())
            .env("FERRY_LOCAL_KEYSTORE", self.local())
            .env_remove("FERRY_STASH_PASSPHRASE");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, b"")
    }
    fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_stdin(self.cmd(args), stdin)
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "ferry keys {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
    fn ok_stdin(&self, args: &[&str], stdin: &[u8]) -> String {
        let o = self.run_stdin(args, stdin);
        assert!(
            o.status.success(),
            "ferry keys {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

fn run_with_stdin(mut c: Command, stdin: &[u8]) -> Output {
    let mut child =
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The child may exit before reading (a refused argument): a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

/// Asserts the exit code and the exact stderr.
fn fails(o: &Output, code: i32, stderr: &str) {
    assert_eq!(String::from_utf8_lossy(&o.stderr), stderr);
    assert_eq!(o.status.code(), Some(code), "stderr: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn askmscli_flow() {
    let e = Env::new();
    assert!(e.ok(&["-i"]).starts_with(&format!("created root keystore {}", e.root().display())));
    // `echo -n secret | ferry keys -u alice -s ssear`
    let out = e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"secret");
    assert_eq!(
        out,
        format!("stored alice/ssear v1 (active) in root keystore {}\n", e.root().display())
    );
    // A trailing newline (plain `echo`) is not part of the value.
    e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"secret2\n");
    e.ok_stdin(
        &["-s", "redis-master-key"],
        base64::engine::general_purpose::STANDARD.encode([9u8; 32]).as_bytes(),
    );
    e.ok(&["-s", "token-key", "--generate"]);
    let out = e.ok(&["-i", "-u", "alice"]);
    assert!(
        out.starts_with(&format!("initialised local keystore {} for alice", e.local().display())),
        "{out}"
    );

    let root = Keystore::open_root(&e.root(), &Options::new()).unwrap();
    let alice = Owner::user("alice").unwrap();
    assert_eq!(root.resolve(&alice, Category::Ssear, 1).unwrap().value().expose(), b"secret");
    assert_eq!(root.current(&alice, Category::Ssear).unwrap().value().expose(), b"secret2");
    assert_eq!(
        root.current(&Owner::Shared, Category::RedisMasterKey).unwrap().value().expose(),
        &[9u8; 32]
    );
    let local = Keystore::open_local(&e.local(), &Options::new()).unwrap();
    assert_eq!(local.current(&alice, Category::Ssear).unwrap().value().expose(), b"secret2");
    drop((root, local));

    // -H: versions and states, never values.
    let h = e.ok(&["-u", "alice", "-H", "ssear"]);
    assert!(h.contains("v1  deactivated") && h.contains("v2  active"), "{h}");
    assert!(!h.contains("secret"));
    let list = e.ok(&["--list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);

    // State changes refresh Alice's local keystore: a suspension reaches her copy.
    let out = e.ok(&["-u", "alice", "-s", "ssear", "--suspend"]);
    assert!(
        out.starts_with(&format!(
            "alice/ssear v2: now suspended (root keystore {})\nrefreshed local keystore",
            e.root().display()
        )),
        "{out}"
    );
    let local = Keystore::open_local(&e.local(), &Options::new()).unwrap();
    assert_eq!(
        local.resolve(&alice, Category::Ssear, 2).unwrap_err().to_string(),
        "cannot decrypt with alice/ssear v2: it is suspended"
    );
    drop(local);
    e.ok(&["-u", "alice", "-s", "ssear", "--activate", "--version", "2"]);
    e.ok(&["-u", "alice", "-s", "ssear", "--rotate"]);
    e.ok(&["-u", "alice", "-s", "ssear", "--min-decryption-version", "2"]);
    e.ok(&["-u", "alice", "-s", "ssear", "--destroy", "--version", "1"]);
    let audit = e.ok(&["--audit", "--json", "--limit", "1000"]);
    let ops: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["op"].as_str().unwrap().to_owned()
        })
        .collect();
    for op in ["create", "put", "generate", "export", "state", "rotate", "min-decryption-version"] {
        assert!(ops.iter().any(|o| o == op), "no {op} record in {ops:?}");
    }
    assert!(!audit.contains("secret2"));

    // filepass lives in the user's local keystore.
    e.ok_stdin(&["-u", "alice", "-s", "filepass"], b"my client passphrase");
    let local = Keystore::open_local(&e.local(), &Options::new()).unwrap();
    assert_eq!(
        local.current(&alice, Category::Filepass).unwrap().value().expose(),
        b"my client passphrase"
    );
}

#[test]
fn missing_keystores_name_the_creating_command() {
    let e = Env::new();
    fails(
        &e.run(&["--list"]),
        20,
        &format!(
            "ferry: error: root keystore {} does not exist; create it with `ferry keys -i`\nferry: \
             hint: or store a first secret with `ferry keys -s CATEGORY`, or point --root-keystore \
             / FERRY_ROOT_KEYSTORE at the existing keystore\n",
            e.root().display()
        ),
    );
    fails(
        &e.run(&["--list", "--local", "-u", "alice"]),
        20,
        &format!(
            "ferry: error: local keystore {} does not exist; create it with `ferry keys -i -u alice`\n",
            e.local().display()
        ),
    );
    // Nothing was created by looking.
    assert!(!e.root().exists() && !e.local().exists());
    // A missing stash beside an existing database.
    e.ok(&["-i"]);
    std::fs::remove_file(e.stash()).unwrap();
    fails(
        &e.run(&["--list"]),
        20,
        &format!(
            "ferry: error: keystore key file {} is missing, so {} cannot be opened; restore the key \
             file from backup (a new key cannot open the existing secrets)\n",
            e.stash().display(),
            e.root().display()
        ),
    );
}

#[test]
fn unsafe_permissions_are_refused_with_the_fix() {
    let e = Env::new();
    e.ok(&["-i"]);
    for (file, mode) in [(e.root(), 0o644), (e.stash(), 0o640)] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        fails(
            &e.run(&["--list"]),
            21,
            &format!(
                "ferry: error: {p} has mode {mode:04o}: group or others can access it; refusing to use \
                 it (fix: chmod 600 {p})\nferry: hint: keystore files must be readable and writable \
                 by their owner only, like ssh private keys\n",
                p = file.display()
            ),
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    e.ok(&["--list"]);
    // So is a directory others could write to.
    let dir = e.root().parent().unwrap().to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    fails(
        &e.run(&["--list"]),
        21,
        &format!(
            "ferry: error: directory {d} has mode 0775: group or others could replace the keystore \
             files in it; refusing to use it (fix: chmod go-w {d})\n",
            d = dir.display()
        ),
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A symlink is refused too.
    let link = e.dir.path().join("link.db");
    std::os::unix::fs::symlink(e.root(), &link).unwrap();
    let mut c = e.cmd(&["--list"]);
    c.env("FERRY_ROOT_KEYSTORE", &link);
    fails(
        &run_with_stdin(c, b""),
        21,
        &format!(
            "ferry: error: {} is a symbolic link or not a regular file; refusing to use it\n",
            link.display()
        ),
    );
}

fn sha256_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn corrupted_files_are_reported_and_left_untouched() {
    let e = Env::new();
    e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"v");
    // Garbage in place of the database.
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(e.root(), &garbage).unwrap();
    for args in [&["--list"][..], &["-i"], &["-u", "alice", "-s", "ssear", "--generate"]] {
        fails(
            &e.run(args),
            22,
            &format!(
                "ferry: error: {} is corrupted or is not a Ferry keystore (not an SQLite database); it \
                 was left untouched: restore it from backup\n",
                e.root().display()
            ),
        );
        assert_eq!(std::fs::read(e.root()).unwrap(), garbage, "{args:?} modified the file");
    }

    // A real database damaged in its b-tree pages.
    let e = Env::new();
    for i in 0..20 {
        e.ok_stdin(&["-u", &format!("user{i}"), "-s", "ssear"], &[b'x'; 2000]);
    }
    let mut bytes = std::fs::read(e.root()).unwrap();
    let len = bytes.len();
    for b in &mut bytes[4096..len.min(4096 * 6)] {
        *b = 0x5a;
    }
    std::fs::write(e.root(), &bytes).unwrap();
    let before = sha256_file(&e.root());
    let o = e.run(&["--list"]);
    assert_eq!(o.status.code(), Some(22), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "ferry: error: {} is corrupted or is not a Ferry keystore (",
            e.root().display()
        )),
        "{err}"
    );
    assert!(err.ends_with("it was left untouched: restore it from backup\n"), "{err}");
    assert_eq!(sha256_file(&e.root()), before);

    // A damaged stash.
    let e = Env::new();
    e.ok(&["-i"]);
    let mut stash = std::fs::read(e.stash()).unwrap();
    stash[80] ^= 1;
    std::fs::write(e.stash(), &stash).unwrap();
    fails(
        &e.run(&["--list"]),
        22,
        &format!(
            "ferry: error: keystore key file {} is corrupted (checksum mismatch (the file was damaged)); \
             it was left untouched: restore it from backup\n",
            e.stash().display()
        ),
    );
    assert_eq!(std::fs::read(e.stash()).unwrap(), stash);
}

#[test]
fn wrong_key_and_wrong_passphrase() {
    let a = Env::new();
    let b = Env::new();
    a.ok(&["-i"]);
    b.ok(&["-i"]);
    let a_stash = std::fs::read(a.stash()).unwrap();
    let b_stash = std::fs::read(b.stash()).unwrap();
    std::fs::write(b.stash(), &a_stash).unwrap();
    let b_db = std::fs::read(b.root()).unwrap();
    fails(
        &b.run(&["--list"]),
        23,
        &format!(
            "ferry: error: the key in {} does not open {} (the key file belongs to keystore {}, the \
             database is keystore {}); use the key file that was created with this keystore\n",
            b.stash().display(),
            b.root().display(),
            hex::encode(&a_stash[12..28]),
            hex::encode(&b_stash[12..28]),
        ),
    );
    assert_eq!(std::fs::read(b.root()).unwrap(), b_db);

    // Stash passphrase.
    let e = Env::new();
    let mut c = e.cmd(&["-i"]);
    c.env("FERRY_STASH_PASSPHRASE", "correct horse battery staple");
    let o = run_with_stdin(c, b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("protected by the stash passphrase"));
    fails(
        &e.run(&["--list"]),
        23,
        &format!(
            "ferry: error: {} is protected by a stash passphrase, and none was given\nferry: hint: set \
             FERRY_STASH_PASSPHRASE or pass --stash-passphrase-file FILE\n",
            e.stash().display()
        ),
    );
    let pf = e.dir.path().join("pass");
    std::fs::write(&pf, "wrong\n").unwrap();
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
    fails(
        &e.run(&["--list", "--stash-passphrase-file", pf.to_str().unwrap()]),
        23,
        &format!("ferry: error: wrong stash passphrase for {}\n", e.stash().display()),
    );
    std::fs::write(&pf, "correct horse battery staple\n").unwrap();
    e.ok(&["--list", "--stash-passphrase-file", pf.to_str().unwrap()]);
}

#[test]
fn wrong_states_and_bad_input() {
    let e = Env::new();
    e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"v1");
    fails(
        &e.run(&["-u", "alice", "-s", "ssear", "--destroy", "--version", "1"]),
        24,
        "ferry: error: cannot move alice/ssear v1 from active to destroyed: deactivate it first\n",
    );
    e.ok(&["-u", "alice", "-s", "ssear", "--deactivate"]);
    fails(
        &e.run(&["-u", "alice", "-s", "ssear", "--activate", "--version", "1"]),
        24,
        "ferry: error: cannot move alice/ssear v1 from deactivated to active: a deactivated version is \
         never reactivated; store or generate a new version\n",
    );
    fails(
        &e.run(&["-u", "alice", "-s", "ssear", "--suspend"]),
        24,
        "ferry: error: alice/ssear has no active version\nferry: hint: name the version with --version N\n",
    );
    fails(
        &e.run(&["-u", "alice", "-s", "ssear", "--destroy", "--version", "7"]),
        25,
        "ferry: error: alice/ssear has no version 7\nferry: hint: list the versions with `ferry keys -u alice -H ssear`\n",
    );
    fails(
        &e.run(&["-u", "bob", "-H", "ssear"]),
        25,
        "ferry: error: no records found for bob/ssear\nferry: hint: store one with `ferry keys -u bob -s ssear` (value on stdin) or add --generate\n",
    );
    fails(
        &e.run_stdin(&["-u", "alice", "-s", "redis-password"], b"x"),
        26,
        "ferry: error: unknown secret category 'redis-password' (known: ssear, redis-master-key, token-key, filepass)\n",
    );
    fails(
        &e.run_stdin(&["-s", "ssear"], b"x"),
        26,
        "ferry: error: ssear secrets belong to one user; name the user with -u USER\n",
    );
    fails(
        &e.run_stdin(&["-u", "alice", "-s", "ssear"], b""),
        26,
        "ferry: error: invalid ssear value: the value is empty\n",
    );
    fails(
        &e.run_stdin(&["-s", "redis-master-key"], b"too short"),
        26,
        "ferry: error: invalid redis-master-key value: a redis-master-key is 256 bits: 32 raw bytes, 64 \
         hex digits or 44 base64 characters, not 9 bytes\n",
    );
    fails(
        &e.run_stdin(&["-u", "../etc", "-s", "ssear"], b"x"),
        26,
        "ferry: error: invalid user name '../etc': a user name must not start with '-' or '.'\n",
    );
    fails(
        &e.run_stdin(&["-u", "alice", "-s", "ssear"], &vec![b'x'; 100_000]),
        26,
        "ferry: error: invalid ssear value: the value is longer than the limit of 4096 bytes\n",
    );
    // Nothing to do / clap usage errors exit 2.
    assert_eq!(e.run(&[]).status.code(), Some(2));
    assert_eq!(e.run(&["--list", "--audit"]).status.code(), Some(2));
}

#[test]
fn a_failed_refresh_after_a_committed_change_is_a_warning() {
    let e = Env::new();
    e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"v1");
    e.ok(&["-i", "-u", "alice"]);
    std::fs::set_permissions(e.local(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = e.run(&["-u", "alice", "-s", "ssear", "--rotate"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "rotated alice/ssear: new version 2 is active (root keystore {})\n",
            e.root().display()
        )
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "ferry: warning: the change is committed, but refreshing the local keystore {p} failed: \
             {p} has mode 0644: group or others can access it; refusing to use it (fix: chmod 600 \
             {p})\nferry: hint: refresh it later with `ferry keys -i -u alice`\n",
            p = e.local().display()
        )
    );
}

#[test]
fn stash_passphrase_can_be_set_and_removed() {
    let e = Env::new();
    e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"v1");
    let pf = e.dir.path().join("newpass");
    std::fs::write(&pf, "a new stash passphrase\n").unwrap();
    std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out =
        e.ok(&["--set-stash-passphrase", "--new-stash-passphrase-file", pf.to_str().unwrap()]);
    assert_eq!(
        out,
        format!(
            "{} of root keystore {} is now protected by the new passphrase\n",
            e.stash().display(),
            e.root().display()
        )
    );
    assert_eq!(std::fs::metadata(e.stash()).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(e.stash()).unwrap()[10], 1, "stash not marked as protected");
    // From now on the passphrase is needed ...
    assert_eq!(e.run(&["--list"]).status.code(), Some(23));
    let mut c = e.cmd(&["-u", "alice", "-H", "ssear"]);
    c.env("FERRY_STASH_PASSPHRASE", "a new stash passphrase");
    let o = run_with_stdin(c, b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // ... and the secrets are unchanged (same key, re-protected).
    let ks = Keystore::open_root(
        &e.root(),
        &Options::new()
            .passphrase(ferry_keystore::SecretBytes::from_slice(b"a new stash passphrase")),
    )
    .unwrap();
    assert_eq!(
        ks.current(&Owner::user("alice").unwrap(), Category::Ssear).unwrap().value().expose(),
        b"v1"
    );
    drop(ks);
    // Removing the protection needs the current passphrase.
    let mut c = e.cmd(&["--remove-stash-passphrase"]);
    c.env("FERRY_STASH_PASSPHRASE", "a new stash passphrase");
    let o = run_with_stdin(c, b"");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    e.ok(&["--list"]);
    let audit = e.ok(&["--audit", "--json"]);
    assert_eq!(audit.matches("\"op\":\"key-file\"").count(), 2, "{audit}");
    assert!(!audit.contains("a new stash passphrase"));
}

#[test]
fn an_interrupted_creation_is_finished_by_init() {
    let e = Env::new();
    e.ok(&["-i"]);
    // Simulate a crash after the stash and the empty database file were created.
    std::fs::write(e.root(), b"").unwrap();
    let o = e.run(&["--list"]);
    assert_eq!(o.status.code(), Some(22));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("`ferry keys -i` (with -u USER for a local keystore) finishes it")
    );
    assert_eq!(
        e.ok(&["-i"]),
        format!("root keystore {} already exists; nothing to do\n", e.root().display())
    );
    assert_eq!(e.ok(&["--list"]), "no records found\n");
}

#[test]
fn rekey_rotates_the_root_key() {
    let e = Env::new();
    e.ok_stdin(&["-u", "alice", "-s", "ssear"], b"v1");
    e.ok(&["-s", "token-key", "--generate"]);
    let old = std::fs::read(e.stash()).unwrap();
    assert_eq!(
        e.ok(&["--rekey"]),
        format!(
            "re-keyed root keystore {}: 2 value(s) re-wrapped under a new key; new stash {} \
             (protected by file permissions only)\n",
            e.root().display(),
            e.stash().display()
        )
    );
    assert_ne!(std::fs::read(e.stash()).unwrap(), old);
    assert_eq!(std::fs::metadata(e.stash()).unwrap().permissions().mode() & 0o777, 0o600);
    let ks = Keystore::open_root(&e.root(), &Options::new()).unwrap();
    assert_eq!(
        ks.current(&Owner::user("alice").unwrap(), Category::Ssear).unwrap().value().expose(),
        b"v1"
    );
}
