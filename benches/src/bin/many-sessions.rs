//! Many concurrent sessions against one `ferry serve --config`: `--users` transfer users (every
//! second one with encryption at rest), `--sessions` `ferry cp` processes started at once, each
//! uploading a small tree as one of the users; then as many concurrent downloads of those
//! trees. Every file is checked byte for byte (the SSEAR users' through the downloads, and
//! their stored files must be envelopes). The server's threads, resident memory and
//! descriptors are sampled every 10 ms and reported with their peaks.
//!
//! ```text
//! cargo build --release -p ferry -p ferry-benches
//! target/release/many-sessions [--users 10] [--sessions 100] [--files 20] [--json FILE]
//! ```
//! Run as root, the server becomes `nobody` (`run_as`), which owns its directories. The
//! server's log is left in `DIR/many-sessions-serve.log`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Many concurrent ferry sessions from several users against one server")]
struct Args {
    /// Transfer users (every second one has SSEAR on).
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// Concurrent sessions (client processes), spread over the users.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Files per session's tree (1 KiB to 64 KiB each).
    #[arg(long, default_value_t = 20)]
    files: usize,
    /// Scratch directory.
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// Also write the result as one JSON object to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

use ferry_benches::runner::{Res, daemon_account, is_root, run_ok, sibling, ssear_secret};

fn mode(p: &Path, m: u32) -> Res<()> {
    fs::set_permissions(p, fs::Permissions::from_mode(m))
        .map_err(|e| format!("chmod {}: {e}", p.display()))
}

fn give(p: &Path) -> Res<()> {
    if is_root() {
        std::os::unix::fs::chown(p, Some(65534), Some(65534))
            .map_err(|e| format!("chown {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Deterministic content of file `i` of session `s`.
fn content(s: usize, i: usize) -> Vec<u8> {
    let len = 1024 + (s * 7919 + i * 104_729) % (63 * 1024);
    (0..len).map(|k| ((k * 31 + s * 17 + i * 13) % 251) as u8).collect()
}

/// Peaks of the server process, sampled while the sessions run.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    threads: u64,
    rss_kib: u64,
    fds: u64,
}

fn sample(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Peaks> {
    std::thread::spawn(move || {
        let mut p = Peaks::default();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(st) = fs::read_to_string(format!("/proc/{pid}/status")) {
                let field = |name: &str| {
                    st.lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                p.threads = p.threads.max(field("Threads:"));
                p.rss_kib = p.rss_kib.max(field("VmRSS:"));
            }
            if let Ok(d) = fs::read_dir(format!("/proc/{pid}/fd")) {
                p.fds = p.fds.max(d.count() as u64);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    })
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(pid: u32, name: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs `n` `ferry cp` processes at once; returns the wall time and how many failed (with
/// the first failure's message).
fn wave(cmds: Vec<Command>) -> Res<(f64, usize, String)> {
    let start = Instant::now();
    let mut children = Vec::new();
    for mut c in cmds {
        children.push(
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("ferry cp: {e}"))?,
        );
    }
    let (mut failed, mut first) = (0, String::new());
    for c in children {
        let out = c.wait_with_output().map_err(|e| format!("ferry cp: {e}"))?;
        if !out.status.success() {
            failed += 1;
            if first.is_empty() {
                first = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            }
        }
    }
    Ok((start.elapsed().as_secs_f64(), failed, first))
}

fn main() {
    let args = Args::parse();
    let scratch = match tempfile::Builder::new().prefix("ferry-many-").tempdir_in(&args.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("many-sessions: cannot create a scratch directory: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = bench(&args, scratch.path()) {
        eprintln!("many-sessions: {e}");
        std::process::exit(1);
    }
}

fn bench(args: &Args, w: &Path) -> Res<()> {
    let ferry = sibling("ferry")?;
    let root = is_root();
    let account = daemon_account();
    mode(w, 0o755)?;
    for d in ["state", "state/keystores", "keys", "local", "back"] {
        fs::create_dir_all(w.join(d)).map_err(|e| format!("{d}: {e}"))?;
    }
    for d in ["state", "state/keystores", "keys"] {
        mode(&w.join(d), 0o700)?;
    }
    give(&w.join("state"))?;
    give(&w.join("state/keystores"))?;
    run_ok(Command::new(&ferry).args(["keygen", "-f"]).arg(w.join("id")), "ferry keygen")?;
    let public = fs::read_to_string(w.join("id.pub")).map_err(|e| e.to_string())?;
    let root_ks = w.join("keys/rootkeystore.db");
    let mut config = format!(
        "{}listen = \"127.0.0.1:0\"\nstate_dir = \"{}/state\"\n\n[limits]\nmax_sessions = 512\n\
         max_sessions_per_source = 512\nmax_sessions_per_user = 512\nmax_sessions_per_key = 512\n\
         max_setup = 256\nmax_setup_per_source = 256\n",
        if root { format!("run_as = \"{account}\"\n") } else { String::new() },
        w.display()
    );
    for u in 0..args.users {
        let name = format!("user{u:02}");
        let docroot = w.join(&name);
        fs::create_dir(&docroot).map_err(|e| e.to_string())?;
        mode(&docroot, 0o755)?;
        give(&docroot)?;
        let ssear = u % 2 == 1;
        if ssear {
            let ks = w.join(format!("state/keystores/{name}.db"));
            ssear_secret(&ferry, &root_ks, &name, &ks, &account)?;
        }
        config += &format!(
            "\n[[user]]\nname = \"{name}\"\ndocroot = \"{}\"\nkeys = [\"{}\"]\nssear = {ssear}\n",
            docroot.display(),
            public.trim()
        );
    }
    let path = w.join("ferry-serve.toml");
    fs::write(&path, config).map_err(|e| e.to_string())?;
    mode(&path, if root { 0o644 } else { 0o600 })?;
    for s in 0..args.sessions {
        let tree = w.join(format!("local/s{s:03}"));
        fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
        for i in 0..args.files {
            fs::write(tree.join(format!("f{i:03}")), content(s, i)).map_err(|e| e.to_string())?;
        }
    }
    let fp = run_ok(
        Command::new(&ferry).args(["serve", "--config"]).arg(&path).arg("--print-fingerprint"),
        "fingerprint",
    )?;
    let fp = fp.trim().to_owned();
    let log_path = args.dir.join("many-sessions-serve.log");
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut child = Command::new(&ferry)
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("ferry serve: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let server = Server(child);
    let pid = server.0.id();
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{line}: {e}"))?;
    let port =
        v["address"].as_str().and_then(|a| a.rsplit(':').next()).ok_or("no address")?.to_owned();
    let idle = (status(pid, "Threads:"), status(pid, "VmRSS:"));
    let cp = |from: String, to: String| {
        let mut c = Command::new(&ferry);
        c.current_dir(w.join("local")).args(["cp", "-i"]).arg(w.join("id")).args([
            "--host-key",
            &fp,
            "-P",
            &port,
            "-l",
            "200m",
            &from,
            &to,
        ]);
        c
    };
    let user = |s: usize| format!("user{:02}", s % args.users);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(pid, stop.clone());
    let ups = (0..args.sessions)
        .map(|s| cp(format!("s{s:03}"), format!("{}@127.0.0.1:.", user(s))))
        .collect();
    let (up_s, up_failed, up_err) = wave(ups)?;
    let downs = (0..args.sessions)
        .map(|s| {
            let dest = w.join(format!("back/{s:03}"));
            let _ = fs::create_dir_all(&dest);
            cp(format!("{}@127.0.0.1:s{s:03}", user(s)), dest.display().to_string())
        })
        .collect();
    let (down_s, down_failed, down_err) = wave(downs)?;
    stop.store(true, Ordering::Relaxed);
    let peaks = sampler.join().map_err(|_| "sampler panicked")?;
    let after = (status(pid, "Threads:"), status(pid, "VmRSS:"));
    drop(server);
    // Every file: stored as sent (plain users) or as an envelope (SSEAR users), and back.
    let mut checked = 0;
    let mut wrong = Vec::new();
    for s in 0..args.sessions {
        let ssear = (s % args.users) % 2 == 1;
        for i in 0..args.files {
            let want = content(s, i);
            let stored =
                fs::read(w.join(format!("{}/s{s:03}/f{i:03}", user(s)))).unwrap_or_default();
            let stored_ok = if ssear {
                stored.starts_with(b"FERRYENV") && stored.len() == 1024 + 28 + want.len()
            } else {
                stored == want
            };
            let back = fs::read(w.join(format!("back/{s:03}/s{s:03}/f{i:03}"))).unwrap_or_default();
            if !stored_ok || back != want {
                wrong.push(format!("session {s} file {i}"));
            }
            checked += 1;
        }
    }
    let ok = up_failed == 0 && down_failed == 0 && wrong.is_empty();
    println!(
        "{} sessions from {} users ({} with SSEAR), {} files each ({} files, 1-64 KiB):\n\
         uploads   {up_s:.2} s wall, {up_failed} failed {up_err}\n\
         downloads {down_s:.2} s wall, {down_failed} failed {down_err}\n\
         files checked byte for byte: {checked}, wrong or missing: {}\n\
         server: idle {} threads / {} MiB RSS; peak {} threads, {} MiB RSS, {} descriptors; after {} threads / {} MiB",
        args.sessions,
        args.users,
        args.users / 2,
        args.files,
        args.sessions * args.files,
        wrong.len(),
        idle.0,
        idle.1 / 1024,
        peaks.threads,
        peaks.rss_kib / 1024,
        peaks.fds,
        after.0,
        after.1 / 1024,
    );
    if let Some(p) = &args.json {
        let v = serde_json::json!({
            "sessions": args.sessions, "users": args.users, "files_per_session": args.files,
            "upload_wall_s": up_s, "download_wall_s": down_s, "failed": up_failed + down_failed,
            "wrong": wrong.len(), "idle_threads": idle.0, "idle_rss_kib": idle.1,
            "peak_threads": peaks.threads, "peak_rss_kib": peaks.rss_kib, "peak_fds": peaks.fds,
            "after_threads": after.0, "after_rss_kib": after.1,
        });
        fs::write(p, format!("{v}\n")).map_err(|e| e.to_string())?;
    }
    if !ok {
        return Err(format!(
            "not every session completed correctly: {:?}",
            wrong.iter().take(5).collect::<Vec<_>>()
        ));
    }
    Ok(())
}
