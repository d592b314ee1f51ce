//! A hostile user against root's routine provisioning (`ferry keys -i -u USER`): a symbolic
//! link (to a root-owned file), a FIFO or a directory planted at every name the keystore
//! creates or opens in the user's directory, before the command and (a racing helper renaming
//! links into place) while it runs. Whatever the outcome of the command, no file outside the
//! user's directory changes owner, mode or content, and the command never hangs.
//!
//! Before this was fixed, root followed a link at `localkeystore.audit.jsonl`, chowned its
//! target to the user and appended to it (a root-owned 0600 file became the user's).
//! Needs root and the `nobody` user; otherwise it says so and passes.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const NOBODY: u32 = 65534;
/// One command may take this long; longer is a hang.
const LIMIT: Duration = Duration::from_secs(20);

/// Every name the local keystore creates or opens beside `localkeystore.db`.
const NAMES: [&str; 6] = [
    "localkeystore.db",
    "localkeystore.key",
    "localkeystore.audit.jsonl",
    "localkeystore.db-wal",
    "localkeystore.db-shm",
    "localkeystore.db-journal",
];

fn applicable() -> bool {
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("nobody:x:65534:"));
    if rustix::process::geteuid().as_raw() != 0 || !nobody {
        eprintln!("skipped: needs root and the nobody user");
        return false;
    }
    true
}

/// What must not change: owner, mode, size, content and mtime of a file, or the entries of a
/// directory.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot(Vec<(PathBuf, u32, u32, u64, String, i64)>);

fn snapshot(paths: &[&Path]) -> Snapshot {
    let mut out = Vec::new();
    for p in paths {
        let mut all = vec![p.to_path_buf()];
        if p.is_dir() {
            all.extend(std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()));
        }
        for q in all {
            let md = std::fs::symlink_metadata(&q).unwrap();
            let content = if md.is_file() {
                String::from_utf8_lossy(&std::fs::read(&q).unwrap()).into_owned()
            } else {
                String::new()
            };
            out.push((q, md.uid(), md.mode(), md.len(), content, md.mtime()));
        }
    }
    out.sort();
    Snapshot(out)
}

struct Bed {
    base: tempfile::TempDir,
    root_db: PathBuf,
    victim: PathBuf,
    victim_dir: PathBuf,
}

impl Bed {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let root_db = base.path().join("state/rootkeystore.db");
        let victim = base.path().join("victim");
        std::fs::write(&victim, b"root's secret\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let victim_dir = base.path().join("victim-dir");
        std::fs::create_dir(&victim_dir).unwrap();
        std::fs::set_permissions(&victim_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let bed = Self { base, root_db, victim, victim_dir };
        let out =
            bed.keys(&bed.base.path().join("unused.db"), &["-u", "nobody", "-s", "ssear"], b"s1");
        assert!(out.0 == Some(0), "{}", out.1);
        bed
    }

    /// A fresh home for nobody with `~/.ferry` (mode 0700), returning the `.ferry` path.
    fn home(&self, name: &str) -> PathBuf {
        let home = self.base.path().join(name);
        std::fs::create_dir(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dir = home.join(".ferry");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// Runs `ferry keys ARGS` as root within [`LIMIT`]; `None` as the code means it hung.
    fn keys(&self, local: &Path, args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
        let mut child = Command::new(FERRY)
            .arg("keys")
            .args(args)
            .env("FERRY_ROOT_KEYSTORE", &self.root_db)
            .env("FERRY_LOCAL_KEYSTORE", local)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                return (status.code(), err);
            }
            if started.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                return (None, "hung".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn protected(&self) -> Snapshot {
        snapshot(&[&self.victim, &self.victim_dir])
    }
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[test]
fn planted_links_fifos_and_directories_change_nothing_outside() {
    if !applicable() {
        return;
    }
    let bed = Bed::new();
    let before = bed.protected();
    let mut n = 0;
    for name in NAMES {
        for kind in ["link", "dirlink", "fifo", "dir"] {
            n += 1;
            let dir = bed.home(&format!("h{n}"));
            let planted = dir.join(name);
            match kind {
                "link" => std::os::unix::fs::symlink(&bed.victim, &planted).unwrap(),
                "dirlink" => std::os::unix::fs::symlink(&bed.victim_dir, &planted).unwrap(),
                "fifo" => mkfifo(&planted),
                _ => {
                    std::fs::create_dir(&planted).unwrap();
                    std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
                }
            }
            let (code, err) = bed.keys(&dir.join("localkeystore.db"), &["-i", "-u", "nobody"], b"");
            assert!(code.is_some(), "{name} as a {kind}: the command hung");
            assert_ne!(code, Some(0), "{name} as a {kind}: accepted: {err}");
            assert!(err.contains(name), "{name} as a {kind}: not refused by name: {err}");
            assert_eq!(bed.protected(), before, "{name} as a {kind} changed a file outside");
        }
    }
    // The keystore directory itself a link to a root-owned directory.
    let dir = bed.home("hdir");
    std::fs::remove_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&bed.victim_dir, &dir).unwrap();
    let (code, err) = bed.keys(&dir.join("localkeystore.db"), &["-i", "-u", "nobody"], b"");
    assert!(code.is_some() && code != Some(0), "a linked keystore directory: {code:?} {err}");
    assert_eq!(bed.protected(), before, "a linked keystore directory changed a file outside");
}

#[test]
fn a_racing_helper_renaming_links_into_place_changes_nothing_outside() {
    if !applicable() {
        return;
    }
    let bed = Bed::new();
    let before = bed.protected();
    // One name per round, swapped for a link to the victim file (or for a FIFO) as fast as the
    // helper can, for as long as the command runs.
    for round in 0..2 * NAMES.len() {
        let name = NAMES[round % NAMES.len()];
        let fifo = round >= NAMES.len();
        let dir = bed.home(&format!("r{round}"));
        let stop = Arc::new(AtomicBool::new(false));
        let helper = {
            let (dir, victim, stop) = (dir.clone(), bed.victim.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let tmp = dir.join(format!(".swap{i}"));
                    if fifo {
                        mkfifo(&tmp);
                    } else {
                        let _ = std::os::unix::fs::symlink(&victim, &tmp);
                    }
                    let _ = std::fs::rename(&tmp, dir.join(name));
                    i += 1;
                    if i.is_multiple_of(64) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        };
        let (code, err) = bed.keys(&dir.join("localkeystore.db"), &["-i", "-u", "nobody"], b"");
        stop.store(true, Ordering::Relaxed);
        helper.join().unwrap();
        let what = if fifo { "a FIFO" } else { "a link" };
        assert!(code.is_some(), "{name} swapped for {what}: the command hung");
        assert_eq!(
            bed.protected(),
            before,
            "{name} swapped for {what} changed a file outside ({code:?}: {err})"
        );
    }
    // Refreshes of an existing keystore (state changes in the root keystore) under the same race.
    let dir = bed.home("refresh");
    let local = dir.join("localkeystore.db");
    assert_eq!(bed.keys(&local, &["-i", "-u", "nobody"], b"").0, Some(0));
    let stop = Arc::new(AtomicBool::new(false));
    let helper = {
        let (dir, victim, stop) = (dir.clone(), bed.victim.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let tmp = dir.join(format!(".swap{i}"));
                let _ = std::os::unix::fs::symlink(&victim, &tmp);
                let _ = std::fs::rename(&tmp, dir.join(NAMES[2 + i % 2]));
                i += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    for _ in 0..8 {
        let (code, _) = bed.keys(&local, &["-u", "nobody", "-s", "ssear", "--rotate"], b"");
        assert!(code.is_some(), "a refresh hung");
    }
    stop.store(true, Ordering::Relaxed);
    helper.join().unwrap();
    assert_eq!(bed.protected(), before, "a refresh under the race changed a file outside");
}
