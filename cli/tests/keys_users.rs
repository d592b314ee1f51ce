//! Root and an unprivileged user: root initialises a user's local keystore and hands the files
//! over; the user runs `ferry keys` without privileges; files of another owner are refused.
//! Needs root and `setpriv` (util-linux) to switch to `nobody`; otherwise it says so and passes.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const NOBODY: u32 = 65534;

fn ferry(as_nobody: bool, env: &[(&str, &Path)], args: &[&str], stdin: &[u8]) -> Output {
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", FERRY]);
        c
    } else {
        Command::new(FERRY)
    };
    c.arg("keys").args(args).env_remove("FERRY_ROOT_KEYSTORE").env_remove("FERRY_LOCAL_KEYSTORE");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child =
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn root_hands_a_local_keystore_to_its_user() {
    let is_root = ferry_keystore::euid() == 0;
    let nobody_known = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("nobody:x:65534:"));
    if !is_root || !nobody_known || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root, setpriv and the nobody user");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let root_db = base.path().join("state/rootkeystore.db");
    let home = base.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let local = home.join(".ferry/localkeystore.db");
    let env =
        [("FERRY_ROOT_KEYSTORE", root_db.as_path()), ("FERRY_LOCAL_KEYSTORE", local.as_path())];

    // Root stores nobody's secret and initialises nobody's local keystore.
    ok(&ferry(false, &env, &["-u", "nobody", "-s", "ssear"], b"nobody-ssear"));
    ok(&ferry(false, &env, &["-s", "token-key", "--generate"], b""));
    let out = ok(&ferry(false, &env, &["-i", "-u", "nobody"], b""));
    assert!(out.contains("2 usable"), "{out}");
    for f in [
        home.join(".ferry"),
        local.clone(),
        local.with_extension("key"),
        local.with_extension("audit.jsonl"),
    ] {
        let md = std::fs::metadata(&f).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "{} not handed over", f.display());
    }
    // A root-side refresh keeps the files (and SQLite's WAL/SHM) usable by the user.
    ok(&ferry(false, &env, &["-u", "nobody", "-s", "ssear", "--rotate"], b""));

    // The user, unprivileged, reads their local keystore and stores a client passphrase.
    let listed = ok(&ferry(true, &env, &["--list", "--local", "--json"], b""));
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{listed}");
    ok(&ferry(true, &env, &["-s", "filepass"], b"client passphrase"));
    for f in std::fs::read_dir(home.join(".ferry")).unwrap() {
        let p = f.unwrap().path();
        assert_eq!(
            std::fs::metadata(&p).unwrap().uid(),
            NOBODY,
            "{} owned by someone else",
            p.display()
        );
    }

    // The user cannot reach the root keystore.
    let o = ferry(true, &env, &["--list"], b"");
    assert_eq!(o.status.code(), Some(21), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "ferry: error: {}: Permission denied (os error 13)\nferry: hint: run ferry as the \
             keystore's owner (the root keystore belongs to root or the service account)\n",
            root_db.display()
        )
    );

    // Root refuses to create its keystore in a directory of the user's (the user could swap
    // its files), like sshd's StrictModes.
    let foreign = home.join("foreign.db");
    let envf =
        [("FERRY_ROOT_KEYSTORE", foreign.as_path()), ("FERRY_LOCAL_KEYSTORE", local.as_path())];
    let o = ferry(false, &envf, &["-i"], b"");
    assert_eq!(o.status.code(), Some(21), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("it belongs to uid 65534"));
    // A keystore file in the user's directory that belongs to someone else is refused.
    let made = base.path().join("made.db");
    ok(&ferry(false, &[("FERRY_ROOT_KEYSTORE", made.as_path())], &["-i"], b""));
    for ext in ["db", "stash", "audit.jsonl", "db-wal", "db-shm"] {
        let from = made.with_extension(ext);
        if from.exists() {
            std::fs::rename(from, foreign.with_extension(ext)).unwrap();
        }
    }
    let o = ferry(true, &envf, &["--list"], b"");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        format!(
            "ferry: error: {p} is owned by uid 0, but ferry runs as uid 65534; refusing to use it \
             (fix: chown 65534 {p})\n",
            p = foreign.display()
        )
    );
    assert_eq!(o.status.code(), Some(21));
}
