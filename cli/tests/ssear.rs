//! Server-side encryption at rest through real processes: `ferry serve --config` started as
//! root becomes an unprivileged account (`run_as = "nobody"`), serves three users (alice with
//! SSEAR, bob plain, carol download-only) and a fourth (dave, SSEAR without a keystore); the
//! SSEAR secret is alice's, copied by root from the root keystore into a local keystore that
//! belongs to the daemon's account. Uploads and downloads are checked byte for byte, the stored
//! files are envelopes that `ferry crypt inspect` describes and that hold no plaintext;
//! rotation, bulk rewrap and revocation; the audit log's at-rest mode. A second test kills the
//! server and the client in the middle of an SSEAR upload and scans every byte on disk for the
//! plaintext. Needs root (to start the daemon as root and switch to `nobody`).

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;

const NOBODY: u32 = 65534;
const CANARY: &[u8] = b"CANARY-7f3e-PLAINTEXT-";
/// Alice's first `ssear` secret (later versions are generated).
const SECRET: &[u8] = b"alice-ssear-secret-3b9f0c71d2e8a6f4b5c1";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Content that holds the canary every 4 KiB, so any plaintext block on disk would show it.
fn canary_data(len: usize, seed: u32) -> Vec<u8> {
    let mut v = data(len, seed);
    for at in (0..len.saturating_sub(CANARY.len())).step_by(4096) {
        v[at..at + CANARY.len()].copy_from_slice(CANARY);
    }
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file below `dir`, hidden partial files included, read raw.
fn raw_scan(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(raw_scan(&p));
        } else if m.is_file() {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn chown_nobody(p: &Path, mode: u32) {
    std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn public_line(p: &Path) -> String {
    std::fs::read_to_string(p.with_extension("pub")).unwrap().trim().to_owned()
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn keystore(&self) -> String {
        self.path("state/keystores/alice.db").display().to_string()
    }

    /// `ferry ARGS` as root with the site's root keystore, `stdin` fed in.
    fn ferry(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(&*FERRY)
            .args(args)
            .env("FERRY_ROOT_KEYSTORE", self.path("root/rootkeystore.db"))
            .env_remove("FERRY_LOCAL_KEYSTORE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        wait_output(child, &format!("ferry {args:?}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ferry(args, b"");
        assert!(out.status.success(), "ferry {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry keys ARGS` on alice's secret, refreshing the daemon's copy.
    fn keys(&self, args: &[&str]) -> String {
        let ks = self.keystore();
        let mut all = vec!["keys", "-u", "alice"];
        all.extend_from_slice(args);
        all.extend(["--account", "nobody", "--local-keystore", &ks]);
        self.ok(&all)
    }

    /// `ferry crypt ARGS` as the daemon's account (whose keystore it opens).
    fn crypt_as_daemon(&self, args: &[&str]) -> String {
        let ks = self.keystore();
        let out = Command::new("runuser")
            .args(["-u", "nobody", "--", &FERRY, "crypt"])
            .args(args)
            .args(["--local-keystore", &ks])
            .output()
            .unwrap();
        assert!(out.status.success(), "ferry crypt {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry crypt inspect` of a stored file.
    fn inspect(&self, file: &str) -> String {
        self.crypt_as_daemon(&["inspect", self.path(file).to_str().unwrap()])
    }
}

/// The site: keys, docroots (alice's and bob's belong to nobody; carol's to root, read-only,
/// with a report in it), the root keystore with alice's `ssear` secret and its copy in the
/// daemon's keystore, and the configuration.
fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let s = Site { dir };
    let d = s.dir.path();
    // nobody must reach its state and docroots by path (reload, the host key).
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for u in ["alice", "bob", "carol", "dave"] {
        std::fs::create_dir(d.join(u)).unwrap();
        keygen(&d.join(format!("id-{u}")));
    }
    for u in ["alice", "bob", "dave"] {
        chown_nobody(&d.join(u), 0o755);
    }
    std::fs::write(d.join("carol/report.csv"), b"a,b\n1,2\n").unwrap();
    for (p, mode) in [("state", 0o700), ("state/keystores", 0o700), ("log", 0o700)] {
        std::fs::create_dir(d.join(p)).unwrap();
        chown_nobody(&d.join(p), mode);
    }
    std::fs::create_dir(d.join("root")).unwrap();
    std::fs::set_permissions(d.join("root"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(d.join("local")).unwrap();
    s.ok(&["keys", "-i"]);
    // A known value, so that the test can look for it where it must never be.
    let out = s.ferry(&["keys", "-u", "alice", "-s", "ssear"], SECRET);
    assert!(out.status.success(), "{}", stderr(&out));
    let init = s.keys(&["-i"]);
    assert!(init.contains("initialised"), "{init}");
    let copy = std::fs::metadata(s.keystore()).unwrap();
    assert_eq!((copy.uid(), copy.mode() & 0o777), (NOBODY, 0o600), "the daemon's keystore");
    let text = format!(
        r#"run_as = "nobody"
listen = "127.0.0.1:0"
state_dir = "{d}/state"

[audit]
path = "{d}/log/audit.jsonl"

[[user]]
name = "alice"
docroot = "{d}/alice"
keys = ["{alice}"]
ssear = true

[[user]]
name = "bob"
docroot = "{d}/bob"
keys = ["{bob}"]

[[user]]
name = "carol"
docroot = "{d}/carol"
keys = ["{carol}"]
directions = ["download"]

[[user]]
name = "dave"
docroot = "{d}/dave"
keys = ["{dave}"]
ssear = true
"#,
        d = d.display(),
        alice = public_line(&d.join("id-alice")),
        bob = public_line(&d.join("id-bob")),
        carol = public_line(&d.join("id-carol")),
        dave = public_line(&d.join("id-dave")),
    );
    std::fs::write(d.join("ferry.toml"), text).unwrap();
    std::fs::set_permissions(d.join("ferry.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    s
}

struct Daemon {
    child: Child,
    _events: Events,
    port: String,
    fingerprint: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(s: &Site) -> Self {
        let (child, events, listening) = launch(s.dir.path(), &["--config", "ferry.toml"]);
        let addr: std::net::SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();
        let fingerprint = listening["host_key"].as_str().unwrap().to_owned();
        Daemon { child, _events: events, port: addr.port().to_string(), fingerprint }
    }

    /// `ferry cp` with `who`'s key, from the site's local directory.
    fn cp(&self, s: &Site, who: &str, args: &[&str]) -> Output {
        let key = s.path(&format!("id-{who}"));
        let mut all = vec!["cp", "-i", key.to_str().unwrap(), "-P", &self.port];
        all.extend(["--host-key", &self.fingerprint, "-l", "300m"]);
        all.extend_from_slice(args);
        run(&all, &s.path("local"))
    }

    fn spawn_cp(&self, s: &Site, who: &str, args: &[&str]) -> Child {
        let key = s.path(&format!("id-{who}"));
        Command::new(&*FERRY)
            .current_dir(s.path("local"))
            .args(["cp", "-i", key.to_str().unwrap(), "-P", &self.port])
            .args(["--host-key", &self.fingerprint])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

#[test]
fn three_users_ssear_plain_and_download_only_with_rotation_rewrap_and_revocation() {
    if !is_root() {
        eprintln!("skipped: needs root to start the daemon as root and become nobody");
        return;
    }
    let s = site();
    let d = Daemon::start(&s);
    // The daemon runs as nobody, not root.
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_owned();
    assert_eq!(uids.split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{uids}");

    // Alice (SSEAR): a file and a tree, stored as envelopes holding no plaintext.
    let big = canary_data(3 * 1024 * 1024 + 12_345, 1);
    std::fs::write(s.path("local/big.bin"), &big).unwrap();
    std::fs::create_dir(s.path("local/tree")).unwrap();
    std::fs::write(s.path("local/tree/empty"), b"").unwrap();
    std::fs::write(s.path("local/tree/small.txt"), canary_data(5000, 2)).unwrap();
    ok(&d.cp(&s, "alice", &["big.bin", "alice@127.0.0.1:big.bin"]));
    ok(&d.cp(&s, "alice", &["tree", "alice@127.0.0.1:."]));
    for (p, raw) in raw_scan(&s.path("alice")) {
        assert!(raw.starts_with(b"FERRYENV"), "{} is not an envelope", p.display());
        assert!(!contains(&raw, CANARY), "plaintext in {}", p.display());
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), NOBODY);
    }
    let stored = std::fs::metadata(s.path("alice/big.bin")).unwrap().len();
    assert_eq!(stored, 1024 + 28 * 49 + big.len() as u64, "envelope length");
    let inspected = s.inspect("alice/big.bin");
    assert!(inspected.contains("keystore secret alice/ssear v1, active"), "{inspected}");
    assert!(inspected.contains(&format!("plaintext length: {} bytes", big.len())), "{inspected}");

    // Downloads are decrypted by the server: byte for byte, with plaintext sizes.
    ok(&d.cp(&s, "alice", &["alice@127.0.0.1:big.bin", "back.bin"]));
    assert!(std::fs::read(s.path("local/back.bin")).unwrap() == big);
    std::fs::create_dir(s.path("local/back")).unwrap();
    ok(&d.cp(&s, "alice", &["alice@127.0.0.1:tree", "back"]));
    assert_eq!(std::fs::read(s.path("local/back/tree/small.txt")).unwrap(), canary_data(5000, 2));
    assert_eq!(std::fs::read(s.path("local/back/tree/empty")).unwrap(), b"");

    // Bob (plain) stores as is; carol may only download.
    ok(&d.cp(&s, "bob", &["big.bin", "bob@127.0.0.1:big.bin"]));
    assert!(std::fs::read(s.path("bob/big.bin")).unwrap() == big);
    ok(&d.cp(&s, "carol", &["carol@127.0.0.1:report.csv", "report.csv"]));
    assert_eq!(std::fs::read(s.path("local/report.csv")).unwrap(), b"a,b\n1,2\n");
    let out = d.cp(&s, "carol", &["big.bin", "carol@127.0.0.1:big.bin"]);
    assert!(!out.status.success() && !s.path("carol/big.bin").exists(), "{}", stderr(&out));

    // Dave has SSEAR on and no keystore: refused before anything is stored, the fix logged.
    let out = d.cp(&s, "dave", &["big.bin", "dave@127.0.0.1:big.bin"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("encrypts dave's files at rest") && err.contains("administrator"),
        "{err}"
    );
    assert!(
        !err.contains(s.dir.path().to_str().unwrap()),
        "a server path reached the client: {err}"
    );
    assert!(names(&s.path("dave")).is_empty(), "{:?}", names(&s.path("dave")));
    let log = std::fs::read_to_string(s.path("serve.log")).unwrap();
    assert!(log.contains("ferry keys -i -u dave --account nobody --local-keystore"), "{log}");

    // Rotation: new uploads use v2, the v1 files still open.
    s.keys(&["-s", "ssear", "--rotate"]);
    std::fs::write(s.path("local/new.txt"), canary_data(70_000, 3)).unwrap();
    ok(&d.cp(&s, "alice", &["new.txt", "alice@127.0.0.1:new.txt"]));
    assert!(s.inspect("alice/new.txt").contains("alice/ssear v2, active"));
    assert!(s.inspect("alice/big.bin").contains("alice/ssear v1, deactivated"));
    ok(&d.cp(&s, "alice", &["alice@127.0.0.1:big.bin", "back1.bin"]));
    assert!(std::fs::read(s.path("local/back1.bin")).unwrap() == big);

    // Bulk rewrap, as the daemon's account: key slots only, every file to v2; then v1 can be
    // destroyed and everything still opens.
    let before = std::fs::read(s.path("alice/big.bin")).unwrap();
    let alice = s.path("alice");
    s.crypt_as_daemon(&["rewrap", alice.to_str().unwrap()]);
    let after = std::fs::read(s.path("alice/big.bin")).unwrap();
    assert_eq!(before.len(), after.len());
    assert!(before[1024..] == after[1024..], "rewrap rewrote the payload");
    for f in ["alice/big.bin", "alice/tree/small.txt", "alice/tree/empty"] {
        let i = s.inspect(f);
        assert!(i.contains("alice/ssear v2") && !i.contains("ssear v1"), "{f}: {i}");
    }
    s.keys(&["-s", "ssear", "--destroy", "--version", "1"]);
    ok(&d.cp(&s, "alice", &["alice@127.0.0.1:big.bin", "back2.bin"]));
    assert!(std::fs::read(s.path("local/back2.bin")).unwrap() == big);

    // Revocation: v2 suspended: downloads fail saying so, uploads are refused (nothing
    // stored); reactivated, both work again.
    s.keys(&["-s", "ssear", "--suspend"]);
    let out = d.cp(&s, "alice", &["alice@127.0.0.1:big.bin", "back3.bin"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("suspended"), "{err}");
    assert!(!s.path("local/back3.bin").exists());
    let out = d.cp(&s, "alice", &["new.txt", "alice@127.0.0.1:new2.txt"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(!names(&s.path("alice")).iter().any(|n| n.contains("new2")));
    let log = std::fs::read_to_string(s.path("serve.log")).unwrap();
    assert!(log.contains("no active version of the secret alice/ssear"), "{log}");
    assert!(log.contains("ferry keys -u alice -s ssear --generate"), "the fix: {log}");
    s.keys(&["-s", "ssear", "--activate", "--version", "2"]);
    ok(&d.cp(&s, "alice", &["alice@127.0.0.1:new.txt", "back4.txt"]));

    // The audit trail has the at-rest mode of every session, and no secret.
    let audit = std::fs::read_to_string(s.path("log/audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> =
        audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mode_of = |user: &str| {
        records
            .iter()
            .filter(|r| r["event"] == "session_started" && r["user"] == user)
            .map(|r| r["at_rest"].as_str().unwrap().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(mode_of("alice").into_iter().collect::<Vec<_>>(), ["ssear"]);
    assert_eq!(mode_of("bob").into_iter().collect::<Vec<_>>(), ["plain"]);
    assert!(!contains(audit.as_bytes(), CANARY));
    // The secret is nowhere but in the keystores: not in the audit, the server's log, its
    // events, the configuration, or any stored file.
    drop(d);
    let mut places = raw_scan(&s.path("alice"));
    places.extend(raw_scan(&s.path("log")));
    for f in ["serve.log", "ferry.toml"] {
        places.push((s.path(f), std::fs::read(s.path(f)).unwrap()));
    }
    for (p, raw) in places {
        assert!(!contains(&raw, SECRET), "the ssear secret in {}", p.display());
    }
}

/// Killed in the middle of an SSEAR upload (the server with SIGKILL, then the client): no
/// byte on disk (final names, partial files) holds the plaintext, no file has the final name.
#[test]
fn an_ssear_upload_killed_midway_leaves_no_plaintext() {
    if !is_root() {
        eprintln!("skipped: needs root to start the daemon as root and become nobody");
        return;
    }
    let s = site();
    let big = canary_data(48 * 1024 * 1024, 9);
    std::fs::write(s.path("local/big.bin"), &big).unwrap();
    let partial_growing = |s: &Site| {
        raw_scan(&s.path("alice")).iter().any(|(p, raw)| {
            p.to_string_lossy().contains("ferry-partial") && raw.iter().skip(1024).any(|&b| b != 0)
        })
    };
    for kill_server in [true, false] {
        let mut d = Daemon::start(&s);
        let mut client =
            d.spawn_cp(&s, "alice", &["-l", "40m", "big.bin", "alice@127.0.0.1:big.bin"]);
        wait_for("sealed segments in the partial file", || partial_growing(&s));
        if kill_server {
            signal(&d.child, rustix::process::Signal::KILL);
            let _ = d.child.wait();
        } else {
            signal(&client, rustix::process::Signal::KILL);
        }
        let scanned = raw_scan(&s.path("alice"));
        assert!(!scanned.is_empty());
        for (p, raw) in &scanned {
            assert!(!contains(raw, CANARY), "plaintext in {}", p.display());
        }
        assert!(!s.path("alice/big.bin").exists(), "a file under the final name");
        let _ = client.kill();
        let _ = client.wait();
        drop(d);
        for (p, _) in scanned {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Resume into a user with encryption at rest: an upload killed part way leaves an envelope
/// under construction and its journal of plaintext chunks; the rerun checks each recorded
/// chunk by opening its segments under the partial's own header, carries on under that header
/// (segments written again draw fresh IVs) and sends only the rest. The stored file is an
/// envelope with no plaintext on disk, and the server's download gives back the exact file.
#[test]
fn an_ssear_upload_resumes_under_the_envelope_it_started() {
    if !is_root() {
        eprintln!("skipped: needs root to start the daemon as root and become nobody");
        return;
    }
    const MIB: usize = 1 << 20;
    let s = site();
    let size = 24 * MIB + 77;
    let big = canary_data(size, 12);
    std::fs::write(s.path("local/big.bin"), &big).unwrap();
    let d = Daemon::start(&s);
    let mut client = d.spawn_cp(&s, "alice", &["-l", "40m", "big.bin", "alice@127.0.0.1:big.bin"]);
    let start = std::time::Instant::now();
    while journal_len(&s.path("alice"), "big.bin").is_none_or(|n| n < 72 + 48 * 6) {
        assert!(start.elapsed() < LIMIT, "the upload never journaled six chunks");
        assert!(client.try_wait().unwrap().is_none(), "the upload ended before it was killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(&client, rustix::process::Signal::KILL);
    let _ = client.wait();
    let out = d.cp(&s, "alice", &["--json", "big.bin", "alice@127.0.0.1:big.bin"]);
    ok(&out);
    let new = done_event(&out.stdout)["new_bytes"].as_u64().unwrap();
    assert!(new <= (size - 4 * MIB) as u64, "resumed: {new} of {size} bytes sent again");
    let stored = std::fs::read(s.path("alice/big.bin")).unwrap();
    assert!(stored.starts_with(b"FERRYENV"), "stored as an envelope");
    assert!(!contains(&stored, CANARY), "no plaintext at rest");
    for (p, raw) in raw_scan(&s.path("alice")) {
        assert!(!contains(&raw, CANARY), "plaintext in {}", p.display());
    }
    let back = d.cp(&s, "alice", &["alice@127.0.0.1:big.bin", "back.bin"]);
    ok(&back);
    assert_eq!(std::fs::read(s.path("local/back.bin")).unwrap(), big, "the download is exact");
}
