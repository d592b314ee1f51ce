//! Faults and races against a real server: files truncated or deleted while they are sent, a
//! helper swapping directories and files for links and FIFOs during transfers, listings while
//! another session uploads into the same directory, 100,000 small files, and the small items of
//! the hardening issue (trailing-slash destinations, long names, the state directory, key
//! options, log lines). Every process is bounded in time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// Before: source files were memory-mapped, so truncating one during its download raised
/// SIGBUS and killed `ferry serve` with every other session. Now the file fails alone with a
/// clear message, the other files of the session and the other sessions complete, and the
/// server keeps serving.
#[test]
fn a_file_truncated_or_deleted_during_its_download_fails_alone() {
    let mut s = Server::start();
    let root = s.docroot();
    std::fs::create_dir(root.join("set")).unwrap();
    std::fs::write(root.join("set/a-small"), data(100_000, 1)).unwrap();
    std::fs::write(root.join("set/b-big"), data(48 << 20, 2)).unwrap();
    std::fs::write(root.join("set/c-small"), data(100_000, 3)).unwrap();
    std::fs::write(root.join("other"), data(24 << 20, 4)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::create_dir(l.join("one")).unwrap();
    std::fs::create_dir(l.join("two")).unwrap();
    // 48 MiB at 40 Mbit/s: about 10 s, so the truncation lands mid-file.
    let victim = spawn_cp(&s, &["-l", "40m", "--policy", "fixed", "127.0.0.1:set", "one"], l);
    let bystander = spawn_cp(&s, &["-l", "40m", "--policy", "fixed", "127.0.0.1:other", "two"], l);
    wait_for("the big file's partial", || {
        l.join("one/set").is_dir() && names(&l.join("one/set")).iter().any(|n| n.contains("b-big"))
    });
    std::thread::sleep(Duration::from_millis(500));
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("set/b-big"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let (status, err) = finish(victim, "the download of the truncated file");
    assert_eq!(status.code(), Some(39), "{err}");
    assert!(err.contains("set/b-big") && err.contains("shrank"), "{err}");
    assert!(s.alive(), "the server died");
    assert_eq!(
        tree(&l.join("one")),
        ["set/a-small", "set/c-small"],
        "no partial, no truncated file"
    );
    assert_eq!(digest(&l.join("one/set/c-small")), digest(&root.join("set/c-small")));
    let (status, err) = finish(bystander, "the other session");
    assert!(status.success(), "{err}");
    assert_eq!(digest(&l.join("two/other")), digest(&root.join("other")));

    // Deleted while being sent: the open descriptor keeps the bytes (or, if it had to be
    // reopened, the file fails by name); the server lives on either way.
    std::fs::create_dir(l.join("three")).unwrap();
    let c = spawn_cp(&s, &["-l", "40m", "--policy", "fixed", "127.0.0.1:other", "three"], l);
    wait_for("the partial", || names(&l.join("three")).iter().any(|n| n.contains("other")));
    std::fs::remove_file(root.join("other")).unwrap();
    let (status, err) = finish(c, "the download of the deleted file");
    assert!(status.success() || status.code() == Some(39), "{err}");
    assert!(s.alive(), "the server died");
    std::fs::write(root.join("after"), b"still serving").unwrap();
    let out = cp(&s, &["--host-key", &s.fingerprint, "127.0.0.1:after", "."], l);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A helper swaps a directory inside the docroot for a link to a directory outside (and
/// back), and a file for a link to a file outside or for a FIFO, as fast as it can, while
/// uploads into that directory and downloads of it run. Nothing outside the docroot is
/// created, read or changed, and nothing hangs.
#[test]
fn swapping_links_and_fifos_in_during_transfers_reaches_nothing_outside() {
    let s = Server::start();
    let root = s.docroot();
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path();
    std::fs::create_dir(o.join("dir")).unwrap();
    std::fs::write(o.join("dir/secret"), b"OUTSIDE-SECRET").unwrap();
    std::fs::write(o.join("secret"), b"OUTSIDE-SECRET").unwrap();
    // Every entry outside, directories included, with the content of files.
    fn entries(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let content = if md.is_file() { std::fs::read(&p).unwrap() } else { Vec::new() };
            out.push((p.display().to_string(), content));
            if md.is_dir() {
                entries(&p, out);
            }
        }
    }
    let snapshot = || {
        let mut out = Vec::new();
        entries(o, &mut out);
        out.sort();
        out
    };
    let before = snapshot();
    std::fs::create_dir(root.join("in")).unwrap();
    std::fs::write(root.join("in/file"), data(200_000, 1)).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("up"), data(300_000, 2)).unwrap();
    std::fs::create_dir(l.join("tree")).unwrap();
    std::fs::write(l.join("tree/t"), data(50_000, 3)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let helper = {
        let (root, o, stop) = (root.clone(), o.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tmp = root.join(format!(".swap{i}"));
                match i % 4 {
                    // The directory becomes a link to outside, then a real directory again.
                    0 => {
                        let _ = std::os::unix::fs::symlink(o.join("dir"), &tmp);
                        let _ = std::fs::rename(&tmp, root.join("in"));
                    }
                    1 => {
                        let _ = std::fs::remove_file(root.join("in"));
                        let _ = std::fs::create_dir(root.join("in"));
                        // Never open what is there (it may be a FIFO): replace it.
                        let _ = std::fs::write(&tmp, b"inside");
                        let _ = std::fs::rename(&tmp, root.join("in/file"));
                    }
                    // The file becomes a link to a file outside, or a FIFO.
                    2 => {
                        let _ = std::os::unix::fs::symlink(o.join("secret"), &tmp);
                        let _ = std::fs::rename(&tmp, root.join("in/file"));
                    }
                    _ => {
                        let _ = rustix::fs::mknodat(
                            rustix::fs::CWD,
                            &tmp,
                            rustix::fs::FileType::Fifo,
                            rustix::fs::Mode::from_raw_mode(0o600),
                            0,
                        );
                        let _ = std::fs::rename(&tmp, root.join("in/file"));
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let started = Instant::now();
    for round in 0..12 {
        let back = l.join(format!("back{round}"));
        std::fs::create_dir(&back).unwrap();
        for args in [
            vec!["up", "127.0.0.1:in/"],
            vec!["tree", "127.0.0.1:in"],
            vec!["127.0.0.1:in", back.to_str().unwrap()],
            vec!["127.0.0.1:in/file", back.to_str().unwrap()],
        ] {
            let mut all = vec!["--host-key", s.fingerprint.as_str(), "-q"];
            all.extend(args);
            // Any outcome but a hang (bounded by `run`) or a leak is fine.
            let _ = cp(&s, &all, l);
        }
        // Whatever was downloaded holds no byte from outside.
        for p in tree(&back) {
            let got = std::fs::read(back.join(&p)).unwrap();
            assert!(!got.windows(14).any(|w| w == b"OUTSIDE-SECRET"), "{p} came from outside");
        }
    }
    stop.store(true, Ordering::Relaxed);
    helper.join().unwrap();
    eprintln!("48 transfers under the race in {:?}", started.elapsed());
    assert_eq!(snapshot(), before, "something outside the docroot changed");
}

/// Before: a download of a directory listed and served the partial file of an upload still
/// running into it, as a complete, "verified" file.
#[test]
fn a_download_never_lists_another_sessions_partial_file() {
    let s = Server::start();
    std::fs::create_dir(s.docroot().join("shared")).unwrap();
    std::fs::write(s.docroot().join("shared/done"), b"complete").unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("growing"), data(20 << 20, 7)).unwrap();
    let up = spawn_cp(&s, &["-l", "20m", "--policy", "fixed", "growing", "127.0.0.1:shared"], l);
    let shared = s.docroot().join("shared");
    wait_for("the upload's partial", || {
        names(&shared).iter().any(|n| n.contains(".ferry-partial-"))
    });
    std::fs::create_dir(l.join("back")).unwrap();
    let out = cp(&s, &["--host-key", &s.fingerprint, "127.0.0.1:shared", "back"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(tree(&l.join("back")), ["shared/done"]);
    // Asking for the partial by name is refused too.
    let partial = names(&shared).into_iter().find(|n| n.contains(".ferry-partial-"));
    if let Some(p) = partial {
        let out = cp(&s, &["--host-key", &s.fingerprint, &format!("127.0.0.1:shared/{p}"), "."], l);
        assert_eq!(out.status.code(), Some(35), "{}", stderr(&out));
    }
    let (status, err) = finish(up, "the upload");
    assert!(status.success(), "{err}");
}

/// 100,000 small files up and down in one session each, with the server's memory and
/// descriptors bounded, while another client's small transfer completes. (Before: one
/// descriptor per announced file, "too many open files" at 19,987; a download of about 65,000
/// files ran out of memory maps; the tree walk blocked the runtime every connection shares.)
/// In tmpfs, where this machine keeps the test fast.
#[test]
fn a_hundred_thousand_small_files_with_bounded_memory() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let mut s = Server::in_dir(shm, &[]);
    let work = tempfile::tempdir_in(shm).unwrap();
    let w = work.path();
    let src = w.join("many");
    for d in 0..100 {
        let dir = src.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("f{f:04}")), format!("{d}/{f}")).unwrap();
        }
    }
    let fp = s.fingerprint.clone();
    let peak = std::cell::Cell::new(s.usage());
    let watch = |s: &Server| {
        let (u, p) = (s.usage(), peak.get());
        peak.set(Usage {
            rss_kib: p.rss_kib.max(u.rss_kib),
            fds: p.fds.max(u.fds),
            threads: p.threads.max(u.threads),
        });
    };
    let up = spawn_cp(&s, &["-q", "many", "127.0.0.1:."], w);
    // Another client's small transfer while the big one runs.
    wait_for("the upload to start", || s.docroot().join("many").exists());
    std::fs::write(w.join("small"), b"a small file").unwrap();
    let out = cp(&s, &["--host-key", &fp, "small", "127.0.0.1:."], w);
    assert!(out.status.success(), "the small transfer during the big one: {}", stderr(&out));
    assert!(wait_watching(up, LIMIT * 3, || watch(&s)), "the upload of 100,000 files failed");
    assert_eq!(tree(&s.docroot().join("many")).len(), 100_000);
    let back = w.join("back");
    std::fs::create_dir(&back).unwrap();
    let down = spawn_cp(&s, &["-q", "127.0.0.1:many", back.to_str().unwrap()], w);
    // Another small transfer while the server lists and sends the 100,000 files (the listing
    // runs off the runtime every connection shares).
    std::fs::create_dir(w.join("small-back")).unwrap();
    let out = cp(&s, &["--host-key", &fp, "127.0.0.1:small", "small-back"], w);
    assert!(out.status.success(), "the small transfer during the download: {}", stderr(&out));
    assert!(wait_watching(down, LIMIT * 3, || watch(&s)), "the download of 100,000 files failed");
    assert_eq!(tree(&back.join("many")).len(), 100_000);
    assert_eq!(std::fs::read_to_string(back.join("many/d042/f0420")).unwrap(), "42/420");
    let peak = peak.get();
    eprintln!("server peak during 100,000 files up and down: {peak:?}");
    assert!(peak.rss_kib < 128 * 1024, "{peak:?}");
    assert!(peak.fds < 200, "{peak:?}");
    assert!(s.alive());
}

/// The README's own example (`server:incoming/`) was refused for its trailing slash, and a
/// 240-byte name could not be uploaded (its partial name did not fit NAME_MAX).
#[test]
fn trailing_slash_destinations_and_long_names_work() {
    let s = Server::start();
    std::fs::create_dir(s.docroot().join("incoming")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    let long = format!("{}.bin", "n".repeat(236));
    assert_eq!(long.len(), 240);
    std::fs::write(l.join(&long), data(5000, 1)).unwrap();
    std::fs::write(l.join("f"), b"file").unwrap();
    let fp = s.fingerprint.clone();
    for (src, dst) in [("f", "127.0.0.1:incoming/"), (long.as_str(), "127.0.0.1:incoming/")] {
        let out = cp(&s, &["--host-key", &fp, src, dst], l);
        assert!(out.status.success(), "{src} -> {dst}: {}", stderr(&out));
    }
    assert_eq!(digest(&s.docroot().join("incoming").join(&long)), digest(&l.join(&long)));
    // A trailing slash on a file that is not a directory is refused, not taken as a name.
    let out = cp(&s, &["--host-key", &fp, "f", "127.0.0.1:incoming/f/"], l);
    assert_eq!(out.status.code(), Some(35), "{}", stderr(&out));
    // And the long name comes back down.
    std::fs::create_dir(l.join("back")).unwrap();
    let src = format!("127.0.0.1:incoming/{long}");
    let out = cp(&s, &["--host-key", &fp, &src, "back/"], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(&l.join("back").join(&long)), digest(&l.join(&long)));
}

fn serve(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    run(&all, dir)
}

/// Before: with `--docroot .` the host private key could be downloaded. The server refuses a
/// state directory inside the docroot (or the reverse), an authorized_keys file inside the
/// docroot, and a state directory other users can write to.
#[test]
fn the_servers_own_files_stay_out_of_the_docroot() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    keygen(&p.join("id"));
    std::fs::create_dir_all(p.join("root/sub")).unwrap();
    std::fs::copy(p.join("id.pub"), p.join("ak")).unwrap();
    std::fs::copy(p.join("id.pub"), p.join("root/ak")).unwrap();
    for (args, needle) in [
        (
            vec!["--docroot", "root", "--authorized-keys", "ak", "--state-dir", "root/state"],
            "overlap",
        ),
        (vec!["--docroot", ".", "--authorized-keys", "ak", "--state-dir", "state"], "overlap"),
        (
            vec!["--docroot", "root/sub", "--authorized-keys", "ak", "--state-dir", "root"],
            "overlap",
        ),
        (
            vec!["--docroot", "root", "--authorized-keys", "root/ak", "--state-dir", "state"],
            "inside the docroot",
        ),
    ] {
        let out = serve(p, &args);
        assert_eq!(out.status.code(), Some(34), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    std::fs::create_dir(p.join("shared-state")).unwrap();
    std::fs::set_permissions(
        p.join("shared-state"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out =
        serve(p, &["--docroot", "root", "--authorized-keys", "ak", "--state-dir", "shared-state"]);
    assert_eq!(out.status.code(), Some(36), "{}", stderr(&out));
    assert!(stderr(&out).contains("writable by group or others"), "{}", stderr(&out));
    assert!(!p.join("shared-state/host_ed25519_key").exists(), "no key written there");
}

/// Before: `from=`, `expiry-time=` and `restrict` were silently ignored, so a restricted key
/// worked from anywhere.
#[test]
fn authorized_keys_options_restrict_or_refuse_keys() {
    let s = Server::start();
    let ak = s.dir.path().join("authorized_keys");
    let line = std::fs::read_to_string(s.dir.path().join("id.pub")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), b"x").unwrap();
    let fp = s.fingerprint.clone();
    for (options, ok, logged) in [
        (r#"from="10.9.9.9""#, false, "only from=\"10.9.9.9\""),
        (r#"restrict,expiry-time="20000101Z""#, false, "the key expired"),
        (r#"command="/bin/sh""#, false, "option \"command\" is not supported"),
        (r#"restrict,no-pty,from="10.0.0.0/8,127.0.0.0/8",expiry-time="29991231Z""#, true, ""),
    ] {
        // A different length each time, so the server sees the file changed.
        std::fs::write(&ak, format!("# {options}\n{options} {line}")).unwrap();
        let _ = std::fs::remove_file(s.docroot().join("f"));
        let out = cp(&s, &["--host-key", &fp, "f", "127.0.0.1:."], l);
        if ok {
            assert!(out.status.success(), "{options}: {}", stderr(&out));
        } else {
            assert_eq!(out.status.code(), Some(32), "{options}: {}", stderr(&out));
            wait_for("the refusal in the log", || s.log().contains(logged));
        }
    }
    // A file whose only key carries an unsupported option: the server does not start, and says
    // which option.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ak"), format!("command=\"true\" {line}")).unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let out =
        serve(d.path(), &["--docroot", "root", "--authorized-keys", "ak", "--state-dir", "st"]);
    assert_eq!(out.status.code(), Some(36), "{}", stderr(&out));
    assert!(stderr(&out).contains("option \"command\" is not supported"), "{}", stderr(&out));
}

/// Before: peer-supplied strings reached the log unescaped: a path could end the line and
/// forge another, or send terminal escape sequences. Log lines also carry a timestamp now.
#[test]
fn peer_strings_cannot_forge_log_lines() {
    let s = Server::start();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("f"), b"x").unwrap();
    let evil = "127.0.0.1:x\u{1b}[2J\n2099-01-01T00:00:00Z ferry serve: forged line\r";
    let out = cp(&s, &["--host-key", &s.fingerprint, "f", evil], l);
    assert_eq!(out.status.code(), Some(35), "{}", stderr(&out));
    wait_for("the session in the log", || s.log().contains("forged line"));
    let log = s.log();
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    for line in log.lines() {
        assert!(!line.starts_with("2099"), "a forged line: {line:?}");
        assert!(line.as_bytes().get(19) == Some(&b'Z'), "no timestamp: {line:?}");
    }
}

/// Before: partial files left by a crash were never removed. Stale ones are swept when the
/// server starts (and every hour); recent ones are left to any session still writing them.
#[test]
fn stale_partials_are_swept_at_start() {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let s = Server::prepared(&std::env::temp_dir(), &[], |root| {
        std::fs::create_dir(root.join("d")).unwrap();
        let old = root.join("d/.crashed.bin.ferry-partial-0123456789abcdef");
        std::fs::write(&old, b"left by a crash").unwrap();
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(hour_ago).unwrap();
        std::fs::write(root.join(".fresh.ferry-partial-fedcba9876543210"), b"in use").unwrap();
    });
    wait_for("the sweep", || s.log().contains("removed 1 stale partial"));
    assert_eq!(names(&s.docroot().join("d")), Vec::<String>::new());
    assert!(s.docroot().join(".fresh.ferry-partial-fedcba9876543210").exists());
}

/// Before: an upload through a symbolic link inside the docroot created its directories
/// outside (create_dir_all, then the check) before it was refused.
#[test]
fn an_upload_through_a_link_creates_nothing_outside() {
    let s = Server::start();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), s.docroot().join("link")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    // A local tree whose manifest paths start with the link's name.
    std::fs::create_dir_all(l.join("link/new/deeper")).unwrap();
    std::fs::write(l.join("link/new/deeper/f"), b"x").unwrap();
    let out = cp(&s, &["--host-key", &s.fingerprint, "link", "127.0.0.1:."], l);
    assert_eq!(names(outside.path()), Vec::<String>::new(), "created outside the docroot");
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
}

/// Sessions per client key are capped; the refused client is told the server is busy.
#[test]
fn sessions_per_key_are_capped() {
    let s = Server::with_args(&["--max-sessions-per-key", "1"]);
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("slow"), data(8 << 20, 1)).unwrap();
    std::fs::write(l.join("second"), b"second").unwrap();
    let first = spawn_cp(&s, &["-l", "10m", "--policy", "fixed", "slow", "127.0.0.1:."], l);
    wait_for("the first session", || names(&s.docroot()).iter().any(|n| n.contains("slow")));
    // --retry 0: by default the refused client would retry until the first one is done.
    let out = cp(&s, &["--retry", "0", "--host-key", &s.fingerprint, "second", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(40), "{}", stderr(&out));
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    let (status, err) = finish(first, "the first session");
    assert!(status.success(), "{err}");
    let out = cp(&s, &["--host-key", &s.fingerprint, "second", "127.0.0.1:."], l);
    assert!(out.status.success(), "after the first ended: {}", stderr(&out));
}

/// A small file system mounted for one test, unmounted when dropped.
struct SmallFs(PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The disk fills during an upload: that file fails alone with a clear reason, its partial is
/// removed, and the server goes on serving (a smaller upload then lands).
#[test]
fn a_full_disk_fails_the_file_and_the_server_goes_on() {
    let base = tempfile::tempdir().unwrap();
    let mount = base.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(ok.success(), "mounting a 3 MiB tmpfs needs root (the tests run as root)");
    let _fs = SmallFs(mount.clone());
    let s = Server::in_dir(&mount, &[]);
    let local = tempfile::tempdir().unwrap();
    let l = local.path();
    std::fs::write(l.join("big"), data(8 << 20, 5)).unwrap();
    std::fs::write(l.join("small"), data(100_000, 6)).unwrap();
    let out = cp(&s, &["--host-key", &s.fingerprint, "big", "127.0.0.1:."], l);
    assert_eq!(out.status.code(), Some(39), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("big") && err.to_lowercase().contains("no space"), "{err}");
    wait_for("the partial to go", || names(&s.docroot()).is_empty());
    let out = cp(&s, &["--host-key", &s.fingerprint, "small", "127.0.0.1:."], l);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(digest(&s.docroot().join("small")), digest(&l.join("small")));
    drop(s);
}
