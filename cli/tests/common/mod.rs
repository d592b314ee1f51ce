//! Helpers shared by the end-to-end tests: a `ferry serve` process with a fresh identity, a
//! docroot and one authorised client key; `ferry` runs bounded in time; file helpers; the
//! server's resource use read from `/proc`. Every process is bounded in time and killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The binary under test: this build's `ferry`, or the one `FERRY_TEST_BIN` names (to show
/// that a test fails on an older build: `FERRY_TEST_BIN=/path/to/old/ferry cargo test ...`).
pub static FERRY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("FERRY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ferry").to_owned())
});
pub const LIMIT: Duration = Duration::from_secs(120);
/// The transfer user of every test server (`ferry serve --user`).
pub const USER: &str = "tester";

pub struct Server {
    pub child: Child,
    /// Every event line the server has printed (`ferry serve --json`).
    events: Events,
    pub port: u16,
    pub fingerprint: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A server with default limits.
    pub fn start() -> Self {
        Self::with_args(&[])
    }

    /// A server given `extra` arguments (limits, say), on 127.0.0.1 and an ephemeral port, its
    /// log in `serve.log` beside the docroot.
    pub fn with_args(extra: &[&str]) -> Self {
        Self::in_dir(&std::env::temp_dir(), extra)
    }

    /// [`Server::with_args`] with its directories (docroot, state) below `base`.
    pub fn in_dir(base: &Path, extra: &[&str]) -> Self {
        Self::prepared(base, extra, |_| {})
    }

    /// A server whose docroot `setup` fills before it starts.
    pub fn prepared(base: &Path, extra: &[&str], setup: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir_in(base).unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("root")).unwrap();
        setup(&p.join("root"));
        keygen(&p.join("id"));
        std::fs::copy(p.join("id.pub"), p.join("authorized_keys")).unwrap();
        let state = p.join("state");
        let out = run(&["serve", "--state-dir", state.to_str().unwrap(), "--print-fingerprint"], p);
        assert!(out.status.success(), "{}", stderr(&out));
        let fingerprint = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
        let mut args = vec!["--listen", "127.0.0.1:0", "--docroot", "root"];
        args.extend(["--authorized-keys", "authorized_keys", "--state-dir", "state"]);
        args.extend(["--user", USER]);
        args.extend_from_slice(extra);
        let (child, events, listening) = launch(p, &args);
        assert_eq!(listening["host_key"], fingerprint.as_str(), "{listening}");
        let addr: std::net::SocketAddr = listening["address"].as_str().unwrap().parse().unwrap();
        Server { child, events, port: addr.port(), fingerprint, dir }
    }

    /// The events the server has printed so far, `listening` first.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn docroot(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("id")
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The server's resident memory, open descriptors and threads now.
    pub fn usage(&self) -> Usage {
        usage(self.child.id())
    }
}

fn stderr_file(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A process's resource use, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: u64,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    Usage { rss_kib: field("VmRSS:"), fds, threads: field("Threads:") }
}

/// What a `ferry serve --json` process has printed, collected by a thread.
pub type Events = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// Starts `ferry serve ARGS --json` in `dir` (its log in `dir/serve.log`) and waits for its
/// `listening` event; a thread drains stdout into the events so a busy server never blocks on
/// a full pipe.
pub fn launch(dir: &Path, args: &[&str]) -> (Child, Events, serde_json::Value) {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut child = Command::new(&*FERRY)
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let events = Events::default();
    let (first_tx, first) = std::sync::mpsc::channel();
    let sink = events.clone();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("ferry serve --json printed {line:?}: {e}"));
            let _ = first_tx.send(event.clone());
            sink.lock().unwrap().push(event);
        }
    });
    let Ok(listening) = first.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ferry serve did not report listening: {}", stderr_file(&dir.join("serve.log")));
    };
    assert_eq!(listening["event"], "listening", "{listening}");
    (child, events, listening)
}

pub fn keygen(path: &Path) {
    let out = run(&["keygen", "-f", path.to_str().unwrap()], Path::new("/"));
    assert!(out.status.success(), "keygen: {}", stderr(&out));
}

/// Runs ferry to completion within [`LIMIT`], killing it if it hangs.
pub fn run(args: &[&str], cwd: &Path) -> Output {
    run_env(args, cwd, &[])
}

/// [`run`] with these environment variables set.
pub fn run_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let child = Command::new(&*FERRY)
        .current_dir(cwd)
        .args(args)
        .env_remove("HOME")
        .env_remove("FERRY_FILEPASS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, &format!("ferry {args:?}"))
}

/// Waits for `child` within [`LIMIT`] (killing it and failing if it hangs), collecting its
/// output.
pub fn wait_output(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{what} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `ferry cp -i KEY -P PORT EXTRA...` against `s`.
pub fn cp(s: &Server, extra: &[&str], cwd: &Path) -> Output {
    let port = s.port.to_string();
    let key = s.key();
    let mut args = vec!["cp", "-i", key.to_str().unwrap(), "-P", &port];
    args.extend_from_slice(extra);
    run(&args, cwd)
}

/// [`cp`] with these environment variables set.
pub fn cp_env(s: &Server, extra: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let port = s.port.to_string();
    let key = s.key();
    let mut args =
        vec!["cp", "-i", key.to_str().unwrap(), "-P", &port, "--host-key", &s.fingerprint];
    args.extend_from_slice(extra);
    run_env(&args, cwd, env)
}

/// `ferry cp` against `s` pinned to its host key, started in the background.
pub fn spawn_cp(s: &Server, extra: &[&str], cwd: &Path) -> Child {
    spawn_cp_env(s, extra, cwd, &[])
}

/// [`spawn_cp`] with these environment variables set.
pub fn spawn_cp_env(s: &Server, extra: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Child {
    let port = s.port.to_string();
    let key = s.key();
    Command::new(&*FERRY)
        .current_dir(cwd)
        .args(["cp", "-i", key.to_str().unwrap(), "-P", &port, "--host-key", &s.fingerprint])
        .args(extra)
        .env_remove("HOME")
        .env_remove("FERRY_FILEPASS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        // Piped for the tests that read `--json` events; the others write one summary line.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for `child` and returns its exit status and stderr.
pub fn finish(mut child: Child, what: &str) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < LIMIT, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    (status, err)
}

pub fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, sig).unwrap();
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn digest(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

pub fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Every file below `dir` (relative paths), sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The names in `dir`.
pub fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits for `child` within `limit`, calling `tick` every 100 ms meanwhile; returns whether
/// it succeeded.
pub fn wait_watching(mut child: Child, limit: Duration, mut tick: impl FnMut()) -> bool {
    let start = Instant::now();
    loop {
        tick();
        if let Some(st) = child.try_wait().unwrap() {
            return st.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until `cond` holds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The journal of `name` in `dir`, if one is there: its length.
pub fn journal_len(dir: &Path, name: &str) -> Option<u64> {
    let prefix = format!(".{name}.ferry-journal-");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = e.file_name().into_string().ok()?;
        n.starts_with(&prefix).then(|| e.metadata().map(|m| m.len()).unwrap_or(0))
    })
}

/// The `done` event of a `--json` run.
pub fn done_event(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {}", String::from_utf8_lossy(stdout)))
}
