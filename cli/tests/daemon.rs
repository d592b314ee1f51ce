//! `ferry serve --config`: many users from one file, each with its docroot, keys and rights;
//! configuration errors refused at start with the file and line; SIGHUP reloads without
//! dropping the users that stay, and a bad new file keeps the old one.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;

use common::*;

/// A daemon with users alice (both directions, keys in a file), bob (downloads only, keys
/// inline) and carol (uploads, capped at 20 Mbit/s), each with a key and a docroot of its own.
struct Daemon {
    child: Child,
    events: Events,
    port: String,
    fingerprint: String,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn public_line(p: &Path) -> String {
    std::fs::read_to_string(p.with_extension("pub")).unwrap().trim().to_owned()
}

/// The configuration for `dir` (its users' keys and docroots beneath it), with `extra` at the
/// end of the top-level table.
fn config_text(dir: &Path, extra_users: &str) -> String {
    let d = dir.display();
    format!(
        r#"run_as = "nobody"
listen = "127.0.0.1:0"
state_dir = "{d}/state"

[audit]
path = "{d}/log/audit.jsonl"

[defaults]
directions = ["upload", "download"]

[[user]]
name = "alice"
docroot = "{d}/alice"
authorized_keys = "{d}/alice.keys"

[[user]]
name = "bob"
docroot = "{d}/bob"
keys = ["{bob}"]
directions = ["download"]

[[user]]
name = "carol"
docroot = "{d}/carol"
keys = ["{carol}"]
rate_cap = "20m"
file_names = "portable"
{extra_users}"#,
        bob = public_line(&dir.join("id-bob")),
        carol = public_line(&dir.join("id-carol")),
    )
}

/// Writes a configuration: root's, readable by the daemon's account (which rereads it on
/// SIGHUP), writable by root only.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Hands `p` to `nobody`, the account the daemon of these tests runs as.
fn give_to_daemon(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn prepare() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The daemon starts as root and becomes nobody (run_as): it must reach its state, its audit
    // directory and the keys file by path.
    give_to_daemon(d, 0o755);
    std::os::unix::fs::chown(d, Some(0), Some(0)).unwrap();
    for u in ["alice", "bob", "carol", "dave"] {
        std::fs::create_dir(d.join(u)).unwrap();
        give_to_daemon(&d.join(u), 0o755);
        keygen(&d.join(format!("id-{u}")));
    }
    for p in ["state", "log"] {
        std::fs::create_dir(d.join(p)).unwrap();
        give_to_daemon(&d.join(p), 0o700);
    }
    std::fs::copy(d.join("id-alice.pub"), d.join("alice.keys")).unwrap();
    std::fs::create_dir(d.join("local")).unwrap();
    write_private(&d.join("ferry.toml"), &config_text(d, ""));
    dir
}

impl Daemon {
    fn start() -> Self {
        let dir = prepare();
        let (child, events, listening) = launch(dir.path(), &["--config", "ferry.toml"]);
        let addr: std::net::SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();
        let fingerprint = listening["host_key"].as_str().unwrap().to_owned();
        Daemon { child, events, port: addr.port().to_string(), fingerprint, dir }
    }

    /// [`Daemon::start`] with a fourth user, dave, whom the server lets replace files
    /// (`overwrite = "always"`).
    fn with_dave() -> Self {
        let dir = prepare();
        let dave = format!(
            "\n[[user]]\nname = \"dave\"\ndocroot = \"{}\"\nkeys = [\"{}\"]\noverwrite = \"always\"\n",
            dir.path().join("dave").display(),
            public_line(&dir.path().join("id-dave"))
        );
        write_private(&dir.path().join("ferry.toml"), &config_text(dir.path(), &dave));
        let (child, events, listening) = launch(dir.path(), &["--config", "ferry.toml"]);
        let addr: std::net::SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();
        let fingerprint = listening["host_key"].as_str().unwrap().to_owned();
        Daemon { child, events, port: addr.port().to_string(), fingerprint, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `ferry cp` with `who`'s key, from the local directory.
    fn cp(&self, who: &str, args: &[&str]) -> std::process::Output {
        let key = self.path(&format!("id-{who}"));
        let mut all = vec!["cp", "-i", key.to_str().unwrap(), "-P", &self.port];
        all.extend(["--host-key", &self.fingerprint, "-l", "200m"]);
        all.extend_from_slice(args);
        run(&all, &self.path("local"))
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }
}

#[test]
fn users_get_their_docroots_keys_and_rights() {
    let d = Daemon::start();
    let payload = data(400_000, 9);
    std::fs::write(d.path("local/f"), &payload).unwrap();

    // Alice uploads into her docroot, and downloads it back.
    let out = d.cp("alice", &["f", "alice@127.0.0.1:up"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(d.path("alice/up")).unwrap(), payload);
    let out = d.cp("alice", &["alice@127.0.0.1:up", "back"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(d.path("local/back")).unwrap(), payload);

    // Bob may download from his docroot but not upload.
    std::fs::write(d.path("bob/report"), b"quarterly").unwrap();
    let out = d.cp("bob", &["bob@127.0.0.1:report", "report"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(d.path("local/report")).unwrap(), b"quarterly");
    let out = d.cp("bob", &["f", "bob@127.0.0.1:f"]);
    assert_eq!(out.status.code(), Some(37), "{}", stderr(&out));
    assert!(stderr(&out).contains("uploads are not allowed for user \"bob\""), "{}", stderr(&out));
    assert!(!d.path("bob/f").exists());

    // A key acts only as its own user; no user named and no default user: refused.
    let out = d.cp("alice", &["f", "bob@127.0.0.1:x"]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    let out = d.cp("bob", &["f", "alice@127.0.0.1:x"]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    let out = d.cp("alice", &["f", "127.0.0.1:x"]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    let out = d.cp("dave", &["f", "dave@127.0.0.1:x"]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
    for u in ["alice", "bob"] {
        assert!(!d.path(u).join("x").exists());
    }
    let refusals: Vec<_> =
        d.events().into_iter().filter(|e| e["event"] == "setup_failed").collect();
    let reasons: Vec<_> = refusals.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("no transfer user \"dave\"")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("named no user")), "{reasons:?}");

    // Carol asks for 200 Mbit/s and gets her cap: the upload is paced at 20 (the client's
    // progress events show the sender's pacing rate).
    let out = d.cp("carol", &["--json", "f", "carol@127.0.0.1:f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pacing: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "progress")
        .filter_map(|e| e["pacing_rate_bps"].as_u64())
        .filter(|&r| r > 0)
        .collect();
    assert!(!pacing.is_empty(), "no progress events");
    assert!(pacing.iter().all(|&r| r <= 20_000_000), "{pacing:?}");
    let capped = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "rate_capped")
        .expect("the client is told of the cap");
    assert_eq!(capped["target_rate_bps"], 20_000_000, "{capped}");
    assert_eq!(capped["asked_bps"], 200_000_000, "{capped}");
    // Without --json, one line says so.
    let out = d.cp("carol", &["f", "carol@127.0.0.1:f2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("the server caps this transfer at 20"), "{}", stderr(&out));
    assert_eq!(std::fs::read(d.path("carol/f")).unwrap(), payload);
    let started: Vec<_> =
        d.events().into_iter().filter(|e| e["event"] == "session_started").collect();
    let users: Vec<_> = started.iter().map(|e| e["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["alice", "alice", "bob", "carol", "carol"]);
    check_audit(&d);
}

/// Every record of the audit log parses, has its fields, and holds no key material.
fn check_audit(d: &Daemon) {
    use std::os::unix::fs::MetadataExt;
    let path = d.path("log/audit.jsonl");
    // The writer appends off the server's tasks: wait for the last session's end.
    wait_for("the audit records", || {
        std::fs::read_to_string(&path).unwrap_or_default().matches("session_ended").count() == 5
    });
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for r in &records {
        assert!(r["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        let fields: &[&str] = match r["event"].as_str().unwrap() {
            "listening" => &["address", "host_key", "users"],
            "authentication" => &["peer", "user", "key", "result"],
            "session_started" => &[
                "session",
                "peer",
                "key",
                "user",
                "direction",
                "path",
                "cipher",
                "target_rate_bps",
                "at_rest",
            ],
            "session_ended" => &[
                "session",
                "peer",
                "user",
                "direction",
                "path",
                "cipher",
                "at_rest",
                "files",
                "bytes",
                "seconds",
                "rate_bps",
                "result",
            ],
            "setup_failed" => &["peer", "reason"],
            other => panic!("unexpected audit record {other}: {r}"),
        };
        for f in fields {
            assert!(!r[*f].is_null(), "{f} missing in {r}");
        }
    }
    let count = |event: &str, result: &str| {
        records.iter().filter(|r| r["event"] == event && r["result"] == result).count()
    };
    // Accepted: alice twice, bob twice (one download, one refused upload: authenticated, then
    // refused for its direction), carol; refused: alice as bob, bob as alice, alice as nobody,
    // dave.
    assert_eq!(count("authentication", "accepted"), 6, "{text}");
    assert_eq!(count("authentication", "refused"), 4, "{text}");
    assert_eq!(count("session_ended", "completed"), 5, "{text}");
    let refused = records.iter().find(|r| r["result"] == "refused" && r["user"] == "dave").unwrap();
    assert!(refused["key"].as_str().unwrap().starts_with("SHA256:"), "{refused}");
    let ended = records.iter().find(|r| r["event"] == "session_ended" && r["path"] == "f");
    let ended = ended.unwrap();
    assert_eq!(
        (ended["direction"].as_str(), ended["bytes"].as_u64()),
        (Some("upload"), Some(400_000))
    );
    // No key material: no private key, no public key blob, nothing base64 of a key file.
    for u in ["alice", "bob", "carol", "dave"] {
        let private = std::fs::read_to_string(d.path(&format!("id-{u}"))).unwrap();
        for line in private.lines().filter(|l| l.len() > 20 && !l.starts_with("-----")) {
            assert!(!text.contains(line), "private key material of {u} in the audit log");
        }
        let public = public_line(&d.path(&format!("id-{u}")));
        let blob = public.split_whitespace().nth(1).unwrap();
        assert!(!text.contains(blob), "the public key blob of {u} in the audit log");
    }
}

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_old_one() {
    let d = Daemon::start();
    std::fs::write(d.path("local/f"), b"hello").unwrap();
    let out = d.cp("dave", &["f", "dave@127.0.0.1:f"]);
    assert_eq!(out.status.code(), Some(32), "dave is not a user yet: {}", stderr(&out));

    let dave = format!(
        "\n[[user]]\nname = \"dave\"\ndocroot = \"{}\"\nkeys = [\"{}\"]\n",
        d.path("dave").display(),
        public_line(&d.path("id-dave"))
    );
    write_private(&d.path("ferry.toml"), &config_text(d.dir.path(), &dave));
    signal(&d.child, rustix::process::Signal::HUP);
    let reloaded = |d: &Daemon, what: &str| d.events().iter().any(|e| e["event"] == what);
    wait_for("the reload", || reloaded(&d, "config_reloaded"));
    let out = d.cp("dave", &["f", "dave@127.0.0.1:f"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(d.path("dave/f")).unwrap(), b"hello");

    // A bad file (an unknown key) is refused with its line; the users of the old one stay.
    let bad = format!(
        "{}\n[[user]]\nname = \"eve\"\ndocroot = \"/\"\nshell = \"/bin/sh\"\n",
        config_text(d.dir.path(), &dave)
    );
    write_private(&d.path("ferry.toml"), &bad);
    signal(&d.child, rustix::process::Signal::HUP);
    wait_for("the refusal", || reloaded(&d, "config_rejected"));
    let rejected = d.events().into_iter().find(|e| e["event"] == "config_rejected").unwrap();
    let error = rejected["error"].as_str().unwrap();
    let line = bad.lines().position(|l| l.starts_with("shell")).unwrap() + 1;
    assert!(error.contains(&format!("ferry.toml:{line}")), "{error}");
    assert!(error.contains("shell"), "{error}");
    let out = d.cp("dave", &["f", "dave@127.0.0.1:g"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.cp("alice", &["f", "alice@127.0.0.1:f"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Starts `ferry serve --config` on `text` and returns its exit code and stderr.
fn refused(text: &str, mode: u32) -> (Option<i32>, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = prepare();
    // These files name no run_as: the server would serve as root, so the docroots are root's.
    for u in ["alice", "bob", "carol", "dave"] {
        std::os::unix::fs::chown(dir.path().join(u), Some(0), Some(0)).unwrap();
    }
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text.replace("@DIR@", &dir.path().display().to_string())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let out = run(&["serve", "--config", path.to_str().unwrap()], dir.path());
    // The scratch directory reads as @DIR@ again, as in the text.
    (out.status.code(), stderr(&out).replace(&dir.path().display().to_string(), "@DIR@"))
}

#[test]
fn configuration_errors_name_the_file_the_line_and_a_fix() {
    let user = "[[user]]\nname = \"alice\"\ndocroot = \"@DIR@/alice\"\nauthorized_keys = \"@DIR@/alice.keys\"\n";
    let cases: Vec<(String, u32, &str)> = vec![
        (format!("{user}colour = \"blue\"\n"), 0o600, "bad.toml:5: unknown field `colour`"),
        (format!("listen = 7\n{user}"), 0o600, "bad.toml:1: invalid type"),
        (
            user.replace("@DIR@/alice\"", "@DIR@/nowhere\""),
            0o600,
            "bad.toml:3: user \"alice\": docroot",
        ),
        (
            user.replace("alice.keys", "bob.pub2"),
            0o600,
            "bad.toml:4: user \"alice\": authorized_keys",
        ),
        (format!("{user}directions = [\"sideways\"]\n"), 0o600, "unknown direction \"sideways\""),
        (format!("{user}rate_cap = \"fast\"\n"), 0o600, "bad.toml:5: user \"alice\": rate_cap"),
        (format!("{user}ciphers = [\"rot13\"]\n"), 0o600, "unknown cipher \"rot13\""),
        (format!("{user}{}", user), 0o600, "user \"alice\" is defined twice"),
        (format!("default_user = \"zed\"\n{user}"), 0o600, "the default user \"zed\""),
        (
            user.replace("name = \"alice\"", "name = \"-rf\""),
            0o600,
            "bad.toml:2: user name \"-rf\"",
        ),
        (String::new(), 0o600, "no [[user]] entries"),
        (user.to_owned(), 0o600, "refusing to serve as root"),
        (format!("run_as = \"no-such-account\"\n{user}"), 0o600, "bad.toml:1: run_as"),
        (format!("{user}keystore = \"/k.db\"\n"), 0o600, "keystore is set but ssear is off"),
        (format!("{user}overwrite = \"sometimes\"\n"), 0o600, "unknown overwrite \"sometimes\""),
        (
            format!("{user}ssear = true\nkeystore = \"@DIR@/alice/k.db\"\n"),
            0o600,
            "its keystore @DIR@/alice/k.db lies inside a docroot",
        ),
        (
            format!(
                "run_as = \"nobody\"\nlisten = \"127.0.0.1:80\"\n{user}directions = [\"download\"]\n"
            ),
            0o644,
            "port 80 is privileged",
        ),
        (user.to_owned(), 0o666, "can be changed by others"),
        (
            format!("{user}content_protection_secret = \"hunter2\"\n"),
            0o600,
            "bad.toml:5: content_protection_secret holds a secret in clear",
        ),
    ];
    for (text, mode, expected) in cases {
        let (code, err) = refused(&text, mode);
        assert_eq!(code, Some(41), "{text}\n{err}");
        assert!(err.contains(expected), "expected {expected:?} for\n{text}\ngot: {err}");
        assert!(err.contains("hint:") || err.lines().count() > 1, "no fix offered: {err}");
        assert!(!err.contains("hunter2"), "the secret was repeated: {err}");
    }
    let (_, err) = refused(&format!("{user}content_protection_secret = \"x\"\n"), 0o600);
    assert!(err.contains("ferry keys migrate"), "{err}");
    // A docroot others may change is refused (here the only user: the server does not start).
    let unsafe_root = format!("{user}directions = [\"download\"]\n");
    let dir = prepare();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("alice"), std::fs::Permissions::from_mode(0o777))
        .unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, unsafe_root.replace("@DIR@", &dir.path().display().to_string())).unwrap();
    let out = run(&["serve", "--config", path.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(41), "{}", stderr(&out));
    assert!(stderr(&out).contains("can be changed by others (mode 777)"), "{}", stderr(&out));
    // The flags that the file sets cannot be given beside it.
    let dir = prepare();
    let out = run(&["serve", "--config", "ferry.toml", "--docroot", "alice"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// The overwrite policy: alice (the default, "never") cannot replace a file, and her old file
/// is untouched; dave ("always") replaces his, a single file and a file in a tree alike.
#[test]
fn the_overwrite_policy_replaces_only_when_allowed() {
    let d = Daemon::with_dave();
    std::fs::create_dir(d.path("local/t")).unwrap();
    for (who, content) in [("alice", "first"), ("dave", "first")] {
        std::fs::write(d.path("local/f"), content).unwrap();
        std::fs::write(d.path("local/t/g"), content).unwrap();
        assert!(d.cp(who, &["f", &format!("{who}@127.0.0.1:f")]).status.success());
        assert!(d.cp(who, &["t", &format!("{who}@127.0.0.1:.")]).status.success());
    }
    std::fs::write(d.path("local/f"), "second").unwrap();
    std::fs::write(d.path("local/t/g"), "second").unwrap();
    let out = d.cp("alice", &["f", "alice@127.0.0.1:f"]);
    assert!(!out.status.success() && stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = d.cp("alice", &["t", "alice@127.0.0.1:."]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(d.path("alice/f")).unwrap(), "first");
    assert_eq!(std::fs::read_to_string(d.path("alice/t/g")).unwrap(), "first");
    assert!(d.cp("dave", &["f", "dave@127.0.0.1:f"]).status.success());
    assert!(d.cp("dave", &["t", "dave@127.0.0.1:."]).status.success());
    assert_eq!(std::fs::read_to_string(d.path("dave/f")).unwrap(), "second");
    assert_eq!(std::fs::read_to_string(d.path("dave/t/g")).unwrap(), "second");
    assert_eq!(names(&d.path("dave")).len(), 2, "{:?}", names(&d.path("dave")));
}

/// A user whose docroot is unsafe is left out with the reason; the others are served.
#[test]
fn a_user_with_an_unsafe_docroot_is_left_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = prepare();
    std::fs::set_permissions(dir.path().join("carol"), std::fs::Permissions::from_mode(0o777))
        .unwrap();
    let (child, events, listening) = launch(dir.path(), &["--config", "ferry.toml"]);
    let addr: std::net::SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();
    let fingerprint = listening["host_key"].as_str().unwrap().to_owned();
    let d = Daemon { child, events, port: addr.port().to_string(), fingerprint, dir };
    assert_eq!(listening["users"], 2, "{listening}");
    let log = std::fs::read_to_string(d.path("serve.log")).unwrap();
    assert!(log.contains("user \"carol\": docroot") && log.contains("left out"), "{log}");
    std::fs::write(d.path("local/f"), b"hello").unwrap();
    assert!(d.cp("alice", &["f", "alice@127.0.0.1:f"]).status.success());
    let out = d.cp("carol", &["f", "carol@127.0.0.1:f"]);
    assert_eq!(out.status.code(), Some(32), "{}", stderr(&out));
}

/// A user with `file_names = "portable"` gets only names a Windows client can store: another
/// file fails alone, a destination with such a name is refused; other users are not affected.
#[test]
fn portable_file_names_for_one_user() {
    let d = Daemon::start();
    std::fs::create_dir(d.path("local/tree")).unwrap();
    std::fs::write(d.path("local/tree/ok.txt"), b"fine").unwrap();
    std::fs::write(d.path("local/tree/a:b.txt"), b"colon").unwrap();
    std::fs::write(d.path("local/tree/aux.log"), b"device").unwrap();
    let out = d.cp("carol", &["tree", "carol@127.0.0.1:."]);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Windows cannot store"), "{err}");
    assert!(err.contains("device name on Windows"), "{err}");
    assert_eq!(names(&d.path("carol/tree")), ["ok.txt"]);
    std::fs::write(d.path("local/f"), b"x").unwrap();
    let out = d.cp("carol", &["f", "carol@127.0.0.1:CON"]);
    assert_eq!(out.status.code(), Some(35), "{}", stderr(&out));
    assert!(!d.path("carol/CON").exists());
    // Alice has no such rule.
    let out = d.cp("alice", &["tree", "alice@127.0.0.1:."]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut landed = names(&d.path("alice/tree"));
    landed.sort();
    assert_eq!(landed, ["a:b.txt", "aux.log", "ok.txt"]);
}

/// `ferry serve status|rate|cancel` steer a running transfer through the admin socket.
#[test]
fn status_rate_and_cancel_a_running_transfer() {
    let d = Daemon::start();
    let socket = d.path("state/admin.sock");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket() && meta.mode() & 0o777 == 0o600, "{meta:?}");
    std::fs::write(d.path("local/big"), data(24 << 20, 4)).unwrap();
    // 24 MiB at 8 Mbit/s: about 25 s, time enough to look at it.
    // --retry 0: the cancellation is to end the transfer here (retries have their own tests).
    let args = ["--retry", "0", "-l", "8m", "--policy", "fixed", "big", "alice@127.0.0.1:big"];
    let mut client = spawn_alice_cp(&d, &d.path("local"), &args);
    let status = |json: bool| {
        let mut args = vec!["serve", "status", "--config", "ferry.toml"];
        if json {
            args.push("--json");
        }
        let out = run(&args, d.dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let session = loop {
        let reply: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
        let moving = reply["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["bytes"].as_u64() > Some(0))
            .cloned();
        if let Some(s) = moving {
            break s;
        }
        assert!(client.try_wait().unwrap().is_none(), "the transfer ended early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(
        (session["user"].as_str(), session["direction"].as_str()),
        (Some("alice"), Some("upload"))
    );
    assert_eq!(session["path"], "big");
    assert_eq!(session["total_bytes"], 24 << 20);
    assert!(session["eta_s"].as_f64().is_some(), "{session}");
    let id = session["session"].as_str().unwrap().to_owned();
    let table = status(false);
    assert!(table.contains(&id) && table.contains("alice") && table.contains("upload"), "{table}");

    // Slower: the uploading client is told, and paces at the new rate.
    let out = run(
        &["serve", "rate", &id, "2m", "--admin-socket", socket.to_str().unwrap()],
        d.dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let now = reply["sessions"].as_array().unwrap().iter().find(|s| s["session"] == id.as_str());
    assert_eq!(now.unwrap()["target_rate_bps"], 2_000_000, "status shows the new rate");
    // Cancelled, with a reason the client sees; nothing is left under the final name.
    let args = ["serve", "cancel", &id, "--reason", "maintenance window", "--config", "ferry.toml"];
    let out = run(&args, d.dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, err) = finish_child(&mut client);
    assert_ne!(code, Some(0), "the cancelled upload succeeded");
    assert!(err.contains("maintenance window"), "{err}");
    assert!(
        err.contains("the server caps this transfer at 2"),
        "the rate change was not told: {err}"
    );
    assert!(!d.path("alice/big").exists());
    // Unknown sessions and bad requests are refused with a message.
    let out = run(&["serve", "cancel", "00000000000000ff", "--config", "ferry.toml"], d.dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no such session"), "{}", stderr(&out));
}

/// `ferry cp -C 2`: a large file goes up in two parts on two sessions at once, and small
/// files whole; the server cancels one session mid-way, the client runs that share again, and
/// the file lands complete and byte-exact under its name, with no partial left behind.
#[test]
fn a_multi_session_upload_survives_one_session_dying() {
    let d = Daemon::start();
    let big = data(24 << 20, 5);
    std::fs::write(d.path("local/big"), &big).unwrap();
    std::fs::create_dir_all(d.path("local/tree")).unwrap();
    for i in 0..6 {
        std::fs::write(d.path(&format!("local/tree/f{i}")), data(3000 + i, i as u32)).unwrap();
    }
    let (code, err, stdout) =
        cp_two_sessions_cancelling_one(&d, &d.path("local"), &["big", "tree", "alice@127.0.0.1:."]);
    assert_eq!(code, Some(0), "{err}\n{stdout}");
    let sessions_seen = stdout.lines().filter(|l| l.contains("\"event\":\"session\"")).count();
    assert_eq!(sessions_seen, 3, "two sessions and one retry: {stdout}");
    let done = stdout.lines().find(|l| l.contains("\"event\":\"done\"")).unwrap();
    let done: serde_json::Value = serde_json::from_str(done).unwrap();
    assert_eq!(done["files"], 7, "{done}");
    assert_eq!(done["bytes"], (24 << 20) + (0..6).map(|i| 3000 + i).sum::<u64>(), "{done}");
    assert_eq!(std::fs::read(d.path("alice/big")).unwrap(), big, "the assembled file");
    for i in 0..6 {
        let name = format!("tree/f{i}");
        assert_eq!(
            digest(&d.path(&format!("alice/{name}"))),
            digest(&d.path(&format!("local/{name}")))
        );
    }
    let mut left = names(&d.path("alice"));
    left.sort();
    assert_eq!(left, ["big", "tree"], "a partial was left behind");
}

/// `ferry cp -C 2` the other way: the server deals its listing out, each session asks for its
/// share; one session cancelled mid-way asks again, and what it had already received is not
/// sent twice; the download lands byte-exact with no partial left behind.
#[test]
fn a_multi_session_download_survives_one_session_dying() {
    let d = Daemon::start();
    let big = data(24 << 20, 6);
    std::fs::create_dir_all(d.path("alice/out/tree")).unwrap();
    std::fs::write(d.path("alice/out/big"), &big).unwrap();
    for i in 0..5 {
        std::fs::write(d.path(&format!("alice/out/tree/f{i}")), data(2000 + i, i as u32)).unwrap();
    }
    let back = tempfile::tempdir().unwrap();
    let (code, err, stdout) =
        cp_two_sessions_cancelling_one(&d, back.path(), &["alice@127.0.0.1:out", "."]);
    assert_eq!(code, Some(0), "{err}\n{stdout}");
    let done = stdout.lines().find(|l| l.contains("\"event\":\"done\"")).unwrap();
    let done: serde_json::Value = serde_json::from_str(done).unwrap();
    assert_eq!(done["files"], 6, "each file once: {done}");
    assert_eq!(done["bytes"], (24 << 20) + (0..5).map(|i| 2000 + i).sum::<u64>(), "{done}");
    let b = back.path();
    assert_eq!(std::fs::read(b.join("out/big")).unwrap(), big, "the assembled file");
    assert_eq!(tree(b).len(), 6, "{:?}", tree(b));
    for i in 0..5 {
        let name = format!("out/tree/f{i}");
        assert_eq!(digest(&b.join(&name)), digest(&d.path(&format!("alice/{name}"))));
    }
    assert_eq!(names(&b.join("out")).len(), 2, "a partial was left: {:?}", names(&b.join("out")));
}

/// Starts `ferry cp` as alice with `args` from `cwd`, its output piped.
fn spawn_alice_cp(d: &Daemon, cwd: &Path, args: &[&str]) -> Child {
    let key = d.path("id-alice");
    std::process::Command::new(&*FERRY)
        .current_dir(cwd)
        .args(["cp", "-i", key.to_str().unwrap(), "-P", &d.port, "--host-key", &d.fingerprint])
        .args(args)
        .env_remove("HOME")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `ferry cp -C 2` as alice with `paths` from `cwd` (8 MiB threshold, 24 Mbit/s per
/// session: a 12 MiB part takes about 4 s), cancels one of its two sessions through the admin
/// socket once both move, and returns the client's exit code, stderr and `--json` stdout.
fn cp_two_sessions_cancelling_one(
    d: &Daemon,
    cwd: &Path,
    paths: &[&str],
) -> (Option<i32>, String, String) {
    let (code, err, out) = cp_cancelling_one(d, cwd, 2, paths);
    let retry = out.lines().find(|l| l.contains("\"event\":\"retry\"")).expect("a retry event");
    assert!(retry.contains("fault test"), "the retry names the cause: {retry}");
    (code, err, out)
}

/// Runs `ferry cp -C count` as alice with `args` (options, then paths) from `cwd` (8 MiB
/// threshold, 24 Mbit/s per session), cancels one of its sessions through the admin socket
/// once all of them move, and returns the client's exit code, stderr and `--json` stdout.
fn cp_cancelling_one(
    d: &Daemon,
    cwd: &Path,
    count: usize,
    paths: &[&str],
) -> (Option<i32>, String, String) {
    let n = count.to_string();
    let mut args = vec!["-C", &n, "--multi-session-threshold", "8m", "-l", "24m"];
    args.extend(["--policy", "fixed", "--json"]);
    args.extend_from_slice(paths);
    let mut client = spawn_alice_cp(d, cwd, &args);
    let sessions = || -> Vec<serde_json::Value> {
        let out = run(&["serve", "status", "--json", "--config", "ferry.toml"], d.dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        reply["sessions"].as_array().unwrap().clone()
    };
    let stdout = |client: &mut Child| {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut client.stdout.take().unwrap(), &mut out).unwrap();
        out
    };
    let victim = loop {
        let now = sessions();
        let moving: Vec<_> = now.iter().filter(|s| s["bytes"].as_u64() > Some(1 << 20)).collect();
        if now.len() == count && moving.len() == count {
            break moving[0]["session"].as_str().unwrap().to_owned();
        }
        if client.try_wait().unwrap().is_some() {
            let (code, err) = finish_child(&mut client);
            panic!("the transfer ended early ({code:?}): {err}\n{}", stdout(&mut client));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let args = ["serve", "cancel", &victim, "--reason", "fault test", "--config", "ferry.toml"];
    let out = run(&args, d.dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, err) = finish_child(&mut client);
    let out = stdout(&mut client);
    (code, err, out)
}

/// `ferry cp` retries by default: one session, cancelled by the server mid-way, runs again for
/// what had no outcome (the `retry` event says so, the `done` event counts it), and the upload
/// lands byte-exact with no partial left. With `--retry 0` the same cancellation fails the
/// transfer with the retryable exit code (33), leaving no partial either.
#[test]
fn a_single_session_upload_is_retried_by_default() {
    let d = Daemon::start();
    let big = data(12 << 20, 7);
    std::fs::write(d.path("local/big"), &big).unwrap();
    std::fs::write(d.path("local/small"), data(5000, 8)).unwrap();
    let (code, err, stdout) =
        cp_cancelling_one(&d, &d.path("local"), 1, &["big", "small", "alice@127.0.0.1:."]);
    assert_eq!(code, Some(0), "{err}\n{stdout}");
    let events: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kind = |k: &'static str| events.iter().filter(move |e| e["event"] == k);
    assert_eq!(kind("session").count(), 2, "the session and its retry: {stdout}");
    let retry = kind("retry").next().expect("a retry event");
    assert_eq!(retry["attempt"], 2, "{retry}");
    assert_eq!(retry["attempts"], 6, "five retries by default: {retry}");
    assert!(retry["error"].as_str().unwrap().contains("fault test"), "{retry}");
    assert!(retry["files_left"].as_u64().unwrap() >= 1, "{retry}");
    let done = kind("done").next().expect("a done event");
    assert_eq!(done["retries"], 1, "{done}");
    assert_eq!(done["files"], 2, "each file once: {done}");
    assert_eq!(std::fs::read(d.path("alice/big")).unwrap(), big);
    assert_eq!(std::fs::read(d.path("alice/small")).unwrap(), data(5000, 8));
    let mut left = names(&d.path("alice"));
    left.sort();
    assert_eq!(left, ["big", "small"], "a partial was left behind");

    // The same without retries: the cancellation ends the transfer, retryable, nothing left.
    std::fs::write(d.path("local/other"), &big).unwrap();
    let (code, err, stdout) =
        cp_cancelling_one(&d, &d.path("local"), 1, &["--retry", "0", "other", "alice@127.0.0.1:."]);
    assert_eq!(code, Some(33), "{err}\n{stdout}");
    let error = stdout.lines().find(|l| l.contains("\"event\":\"error\"")).expect("an error event");
    let error: serde_json::Value = serde_json::from_str(error).unwrap();
    assert_eq!(error["retryable"], true, "{error}");
    assert!(error["message"].as_str().unwrap().contains("fault test"), "{error}");
    assert!(!stdout.contains("\"event\":\"retry\""), "--retry 0 retries nothing: {stdout}");
    // Nothing under the final name; the interrupted file's partial and its journal stay for
    // the next attempt (resume, `-k 1` by default), which completes it and removes both.
    let mut left = names(&d.path("alice"));
    left.sort();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left[0].starts_with(".other.ferry-journal-"), "{left:?}");
    assert!(left[1].starts_with(".other.ferry-partial-"), "{left:?}");
    let mut client =
        spawn_alice_cp(&d, &d.path("local"), &["--retry", "0", "other", "alice@127.0.0.1:."]);
    let (code, err) = finish_child(&mut client);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read(d.path("alice/other")).unwrap(), big);
    let mut left = names(&d.path("alice"));
    left.sort();
    assert_eq!(left, ["big", "other", "small"], "the partial and its journal are gone");
}

/// A single-session download cancelled by the server mid-way is retried by default; what the
/// first session had received is kept, the rest arrives, byte-exact, no partial left.
#[test]
fn a_single_session_download_is_retried_by_default() {
    let d = Daemon::start();
    let big = data(12 << 20, 9);
    std::fs::create_dir_all(d.path("alice/out")).unwrap();
    std::fs::write(d.path("alice/out/a"), data(4000, 10)).unwrap();
    std::fs::write(d.path("alice/out/big"), &big).unwrap();
    let back = tempfile::tempdir().unwrap();
    let (code, err, stdout) = cp_cancelling_one(&d, back.path(), 1, &["alice@127.0.0.1:out", "."]);
    assert_eq!(code, Some(0), "{err}\n{stdout}");
    assert_eq!(stdout.matches("\"event\":\"retry\"").count(), 1, "{stdout}");
    let done = stdout.lines().find(|l| l.contains("\"event\":\"done\"")).unwrap();
    let done: serde_json::Value = serde_json::from_str(done).unwrap();
    assert_eq!(done["files"], 2, "each file once: {done}");
    assert_eq!(done["retries"], 1, "{done}");
    let b = back.path();
    assert_eq!(std::fs::read(b.join("out/big")).unwrap(), big);
    assert_eq!(std::fs::read(b.join("out/a")).unwrap(), data(4000, 10));
    assert_eq!(names(&b.join("out")).len(), 2, "a partial was left: {:?}", names(&b.join("out")));
}

fn finish_child(child: &mut Child) -> (Option<i32>, String) {
    use std::io::Read;
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < LIMIT, "the client did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (child.wait().unwrap().code(), err)
}

/// The documented systemd unit is one systemd accepts (`systemd-analyze verify`, where it is
/// installed), with this build's binary in ExecStart.
#[test]
fn the_systemd_unit_verifies() {
    let Ok(which) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is not checked here");
        return;
    };
    assert!(which.status.success());
    let unit = include_str!("../../docs/examples/ferry-serve.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/ferry serve --config"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry-serve.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ferry", &FERRY)).unwrap();
    let out =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("ferry-serve.service:"), "{err}");
}

/// The four cases of a file whose name exists at the destination, against the source: the
/// same bytes (the existing copy older), the same size with other bytes (newer), another
/// size (newer), another size (older).
const CASES: [&str; 4] = ["identical", "samesize", "newer", "older"];

/// Writes the sources of the cases (and `absent`, which has no existing copy) into `src` and
/// their existing copies into `dst`, with modification times around one instant.
fn overwrite_cases(src: &Path, dst: &Path) {
    let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let hour = std::time::Duration::from_secs(3600);
    std::fs::create_dir_all(src).unwrap();
    std::fs::create_dir_all(dst).unwrap();
    let write = |p: &Path, bytes: &[u8], t: std::time::SystemTime| {
        std::fs::write(p, bytes).unwrap();
        std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
    };
    let cases: [(&str, &[u8], &[u8], std::time::SystemTime); 4] = [
        ("identical", b"the same bytes", b"the same bytes", t0 - hour),
        ("samesize", b"source bytes!!", b"other bytes!!!", t0 + hour),
        ("newer", b"a longer source file", b"short", t0 + hour),
        ("older", b"a longer source file", b"short", t0 - hour),
    ];
    for (name, source, existing, t) in cases {
        write(&src.join(name), source, t0);
        write(&dst.join(name), existing, t);
    }
    write(&src.join("absent"), b"new here", t0);
}

/// Checks the outcome of one policy: `want[i]` for `CASES[i]` is `R` (replaced by the source),
/// `S` (skipped: kept, status `skipped`) or `F` (failed: kept, a failure); `absent` always
/// arrives. Returns nothing; panics with `what`.
fn check_overwrite(out: &std::process::Output, src: &Path, dst: &Path, want: &str, what: &str) {
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["event"] == "file")
        .collect();
    let status_of = |name: &str| {
        events
            .iter()
            .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(&format!("/{name}"))))
            .map(|e| e["status"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{what}: no file event for {name}: {events:?}"))
    };
    for (name, w) in CASES.iter().zip(want.chars()) {
        let got = std::fs::read(dst.join(name)).unwrap();
        let source = std::fs::read(src.join(name)).unwrap();
        let (status, replaced) = (status_of(name), got == source && *name != "identical");
        match w {
            'R' => {
                assert_eq!(got, source, "{what}: {name} should be replaced");
                assert_eq!(status, "verified", "{what}: {name}");
            }
            'S' => {
                assert!(!replaced, "{what}: {name} should be kept");
                assert_eq!(status, "skipped", "{what}: {name}");
            }
            _ => {
                assert!(!replaced, "{what}: {name} should be kept");
                assert_eq!(status, "storage_failed", "{what}: {name}");
            }
        }
    }
    assert_eq!(std::fs::read(dst.join("absent")).unwrap(), b"new here", "{what}");
    let code = if want.contains('F') { 39 } else { 0 };
    assert_eq!(out.status.code(), Some(code), "{what}: {}", stderr(out));
    let strays: Vec<_> = names(dst).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(strays.is_empty(), "{what}: left behind {strays:?}");
}

/// `--overwrite` against the table of cases, both ways: on an upload to a user the server lets
/// replace (dave) and to one it does not (alice), and on a download (this end decides).
#[test]
fn overwrite_policies_follow_the_table_both_ways() {
    let d = Daemon::with_dave();
    // (policy, what replacing is allowed gives, what "none given" means on a download)
    let table = [
        (None, "SSFF"),
        (Some("never"), "SSSS"),
        (Some("always"), "RRRR"),
        (Some("diff"), "SSRR"),
        (Some("older"), "RSSR"),
        (Some("diff+older"), "SSSR"),
    ];
    for (i, (policy, want)) in table.iter().enumerate() {
        let mut opts = vec!["--json"];
        if let Some(p) = policy {
            opts.extend(["--overwrite", p]);
        }
        let what = |how: &str| format!("{how}, --overwrite {}", policy.unwrap_or("(none)"));
        // Download: the sources on the server, the existing copies here.
        let name = format!("down{i}");
        let (src, dst) = (d.path(&format!("dave/{name}")), d.path(&format!("local/d{i}/{name}")));
        overwrite_cases(&src, &dst);
        let mut args = opts.clone();
        let (from, into) = (format!("dave@127.0.0.1:{name}"), format!("d{i}"));
        args.extend([from.as_str(), into.as_str()]);
        check_overwrite(&d.cp("dave", &args), &src, &dst, want, &what("download"));
        // Upload to dave (who may replace): with no policy the server's own ("always") holds.
        let name = format!("up{i}");
        let (src, dst) = (d.path(&format!("local/{name}")), d.path(&format!("dave/{name}")));
        overwrite_cases(&src, &dst);
        give_to_daemon(&dst, 0o755);
        let mut args = opts.clone();
        args.extend([name.as_str(), "dave@127.0.0.1:."]);
        let want_up = if policy.is_none() { "RRRR" } else { want };
        check_overwrite(&d.cp("dave", &args), &src, &dst, want_up, &what("upload, may replace"));
    }
    // Upload to alice, whom the server does not let replace: nothing is replaced; what the
    // policy would replace fails and is kept.
    for (policy, want) in [(None, "SSFF"), (Some("always"), "FFFF"), (Some("diff"), "SSFF")] {
        let name = format!("alice-{}", policy.unwrap_or("none"));
        let (src, dst) = (d.path(&format!("local/{name}")), d.path(&format!("alice/{name}")));
        overwrite_cases(&src, &dst);
        give_to_daemon(&dst, 0o755);
        let mut args = vec!["--json"];
        if let Some(p) = policy {
            args.extend(["--overwrite", p]);
        }
        args.extend([name.as_str(), "alice@127.0.0.1:."]);
        let what = format!("upload, may not replace, --overwrite {}", policy.unwrap_or("(none)"));
        check_overwrite(&d.cp("alice", &args), &src, &dst, want, &what);
    }
}

/// `-k 2` and `-k 3` (ascp's sparse and full checksum) decide "the same" for `--overwrite diff`
/// by content, both ways: a change in a chunk the sparse checksum samples (the first) is seen
/// at level 2, one in a chunk it does not sample (the second of twenty) only at level 3; level
/// 1 compares sizes alone.
#[test]
fn resume_levels_two_and_three_compare_content() {
    const MIB: usize = 1 << 20;
    let d = Daemon::with_dave();
    let w = d.path("local");
    let w = w.as_path();
    let stored = d.path("dave/f.bin");
    let original = data(20 * MIB, 44);
    std::fs::write(w.join("f.bin"), &original).unwrap();
    let up = |level: &str| {
        let out = d.cp(
            "dave",
            &["--json", "-k", level, "--overwrite", "diff", "f.bin", "dave@127.0.0.1:."],
        );
        assert!(out.status.success(), "{} {}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        done_event(&out.stdout)["files_skipped"].as_u64().unwrap()
    };
    assert_eq!(up("1"), 0);
    let changed = |at: usize| {
        let mut d = original.clone();
        d[at] ^= 0x5a;
        std::fs::write(w.join("f.bin"), &d).unwrap();
        d
    };
    // A change in chunk 1, which the sparse checksum does not sample.
    let d1 = changed(MIB + 17);
    assert_eq!(up("1"), 1, "level 1: the same size is the same");
    assert_eq!(up("2"), 1, "level 2: the sampled chunks agree");
    assert_eq!(up("3"), 0, "level 3: replaced");
    assert_eq!(std::fs::read(&stored).unwrap(), d1);
    // A change in chunk 0, which it samples.
    let d0 = changed(100);
    assert_eq!(up("2"), 0, "level 2: replaced");
    assert_eq!(std::fs::read(&stored).unwrap(), d0);
    assert_eq!(up("3"), 1, "level 3: now the same");

    // Download: the server's checksums against the copy here.
    let dest = w.join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("f.bin"), &d1).unwrap();
    let down = |level: &str| {
        let out = d.cp(
            "dave",
            &["--json", "-k", level, "--overwrite", "diff", "dave@127.0.0.1:f.bin", "dest"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        done_event(&out.stdout)["files_skipped"].as_u64().unwrap()
    };
    assert_eq!(down("2"), 0, "chunk 0 differs: replaced");
    assert_eq!(std::fs::read(dest.join("f.bin")).unwrap(), d0);
    let mut only_chunk1 = d0.clone();
    only_chunk1[MIB + 17] ^= 0x5a;
    std::fs::write(dest.join("f.bin"), &only_chunk1).unwrap();
    assert_eq!(down("2"), 1, "only chunk 1 differs: the same to level 2");
    assert_eq!(down("3"), 0, "level 3: replaced");
    assert_eq!(std::fs::read(dest.join("f.bin")).unwrap(), d0);
}
