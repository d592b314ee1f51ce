//! Ferry itself across a [`Testbed`]: a throwaway `ferry serve` in the server namespace and
//! `ferry cp` uploads from the client namespace, as real processes. Used by the grid rows
//! (`ferry-fixed`, `ferry-adaptive`), the link-sharing runs (`wan-grid share`) and the CI
//! correctness cells (`tests/ferry_link.rs`).
//!
//! The `ferry` binary is taken from the directory of the running executable (or its parent:
//! cargo puts test binaries in `target/<profile>/deps/`), so a release `wan-grid` uses the
//! release `ferry` and `cargo test` the debug one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::NetemError;
use crate::netns::{self, ChildGuard, Netns};
use crate::peers::{Row, RowOutcome, Workload, steady_from_samples, verify_copy};
use crate::probe;
use crate::testbed::{SERVER_IP, Testbed};

/// The UDP control port `ferry serve` listens on inside the server namespace.
pub const FERRY_PORT: u16 = 33001;

/// `ferry` in the directory of the running executable or its parent.
pub fn ferry_near_current_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let here = dir.join("ferry");
    if here.exists() { here } else { dir.parent().map(|p| p.join("ferry")).unwrap_or(here) }
}

/// The `ferry` binary next to the running executable, or an error saying how to build it
/// (with `--release` when the running executable is a release build).
pub fn ferry_binary() -> Result<PathBuf, String> {
    let p = ferry_near_current_exe();
    if p.is_file() {
        return Ok(p);
    }
    let release = p.components().any(|c| c.as_os_str() == "release");
    Err(format!(
        "{} not found: build it with `cargo build{} -p ferry` (the same target directory and profile as {})",
        p.display(),
        if release { " --release" } else { "" },
        std::env::current_exe().unwrap_or_default().display()
    ))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> NetemError {
    move |source| NetemError::Io { what, source }
}

/// A `ferry serve` process in the server namespace with a throwaway host identity, one
/// authorised client key and an empty docroot, all under one scratch directory. Killed when
/// dropped.
#[derive(Debug)]
pub struct FerryServer {
    /// The running `ferry serve` (none only inside [`FerryServer::kill_and_restart`]).
    guard: Option<ChildGuard>,
    /// Host-key fingerprint (`SHA256:...`), pinned by the clients.
    pub fingerprint: String,
    /// The authorised client's private key (`ferry keygen -f`).
    pub client_key: PathBuf,
    /// Where uploads land.
    pub docroot: PathBuf,
    /// The server's stderr (session logs), for error messages.
    pub log: PathBuf,
    /// The address it listens on, inside its namespace.
    pub ip: String,
    /// UDP control port.
    pub port: u16,
    ferry: PathBuf,
    /// Its scratch directory (identities, state, log).
    dir: PathBuf,
}

impl FerryServer {
    /// Creates the identities under `dir` and starts `ferry serve --listen SERVER_IP:port` in
    /// `ns`; returns once it said it listens (at most 10 s).
    pub fn start(ns: &Netns, ferry: &Path, dir: &Path, port: u16) -> Result<Self, NetemError> {
        Self::start_at(ns, ferry, dir, SERVER_IP, port)
    }

    /// [`FerryServer::start`] listening on `ip` (an address inside `ns`).
    pub fn start_at(
        ns: &Netns,
        ferry: &Path,
        dir: &Path,
        ip: &str,
        port: u16,
    ) -> Result<Self, NetemError> {
        let docroot = dir.join("root");
        std::fs::create_dir_all(&docroot).map_err(io(format!("creating {}", docroot.display())))?;
        let client_key = dir.join("client-id");
        netns::run(Command::new(ferry).arg("keygen").arg("-f").arg(&client_key))?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(dir.join("client-id.pub"), &authorized)
            .map_err(io("writing authorized_keys".into()))?;
        let state = dir.join("state");
        let fingerprint = netns::run(
            Command::new(ferry)
                .arg("serve")
                .arg("--state-dir")
                .arg(&state)
                .arg("--print-fingerprint"),
        )?
        .trim()
        .to_string();
        if !fingerprint.starts_with("SHA256:") {
            return Err(NetemError::Parse {
                what: "ferry serve --print-fingerprint".into(),
                text: fingerprint,
            });
        }
        let log = dir.join("serve.log");
        std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let mut server = Self {
            guard: None,
            fingerprint,
            client_key,
            docroot,
            log,
            ip: ip.to_string(),
            port,
            ferry: ferry.into(),
            dir: dir.into(),
        };
        server.launch(ns)?;
        Ok(server)
    }

    /// Kills the server (`SIGKILL`: no session ends cleanly, nothing is flushed) and starts it
    /// again with the same identity, docroot and port, as after a crash and a restart.
    pub fn kill_and_restart(&mut self, ns: &Netns) -> Result<(), NetemError> {
        self.guard = None;
        self.launch(ns)
    }

    /// Starts `ferry serve` in `ns` (its log appended to) and waits for `listening`.
    fn launch(&mut self, ns: &Netns) -> Result<(), NetemError> {
        let logf = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", self.log.display())))?;
        let mut cmd = ns.command(&self.ferry.to_string_lossy());
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("{}:{}", self.ip, self.port))
            .arg("--docroot")
            .arg(&self.docroot)
            .arg("--authorized-keys")
            .arg(self.dir.join("authorized_keys"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf);
        let mut guard = ChildGuard::spawn(&mut cmd, "ferry serve")?;
        let stdout = guard
            .child()
            .stdout
            .take()
            .ok_or_else(|| NetemError::Emulator("ferry serve: no stdout pipe".into()))?;
        // Drain stdout for the server's whole life; hand over the first line.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let first = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
            NetemError::Emulator(format!(
                "ferry serve did not report listening within 10 s; its log ({}): {}",
                self.log.display(),
                tail(&self.log)
            ))
        })?;
        let listening: Option<serde_json::Value> = serde_json::from_str(&first).ok();
        let ok = listening.is_some_and(|v| {
            v["event"] == "listening" && v["host_key"].as_str() == Some(self.fingerprint.as_str())
        });
        if !ok {
            return Err(NetemError::Parse {
                what: "ferry serve --json `listening` event".into(),
                text: first,
            });
        }
        self.guard = Some(guard);
        Ok(())
    }

    /// `ferry cp -i KEY --host-key FP -P PORT` run in `client`: the caller adds the rest.
    pub fn base_command(&self, client: &Netns) -> Command {
        let mut cmd = client.command(&self.ferry.to_string_lossy());
        cmd.arg("cp")
            .arg("-i")
            .arg(&self.client_key)
            .arg("--host-key")
            .arg(&self.fingerprint)
            .arg("-P")
            .arg(self.port.to_string())
            .env_remove("HOME");
        cmd
    }

    /// `root@IP:PATH`, a remote operand of `ferry cp`.
    pub fn remote(&self, path: &str) -> String {
        format!("root@{}:{path}", self.ip)
    }

    /// `ferry cp` uploading `file` into the docroot from `client` (stdout and stderr not yet
    /// redirected; the caller decides).
    pub fn cp_command(&self, client: &Netns, file: &Path, opts: &CpOptions) -> Command {
        let mut cmd = self.base_command(client);
        if let Some((policy, rate_bps)) = opts.policy {
            cmd.arg("-l")
                .arg(rate_bps.to_string())
                .arg("--policy")
                .arg(policy)
                .arg("-c")
                .arg("aes128");
        }
        cmd.arg(file).arg(self.remote("/"));
        if opts.debug_driver {
            cmd.env("FERRY_LOG", "ferry::driver=debug");
        }
        cmd
    }

    /// Where an upload of `file` lands.
    pub fn dest_of(&self, file: &Path) -> PathBuf {
        self.docroot.join(file.file_name().unwrap_or_default())
    }

    /// Bytes of `file`'s upload on disk so far: the partial file while it is being written
    /// (`.NAME.ferry-partial-*`), the final file once renamed into place. Partial files are
    /// allocated sparsely as blocks arrive, so this counts allocated blocks (`st_blocks`), not
    /// the length, capped at `total`.
    pub fn received_bytes(&self, file: &Path, total: u64) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let name = file.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let done = self.docroot.join(&name);
        if let Ok(m) = std::fs::metadata(&done) {
            return m.len();
        }
        let prefix = format!(".{name}.ferry-partial-");
        let Ok(rd) = std::fs::read_dir(&self.docroot) else { return 0 };
        rd.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter_map(|e| e.metadata().ok())
            .map(|m| (m.blocks() * 512).min(total))
            .max()
            .unwrap_or(0)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" / ")
}

/// Settings of one `ferry cp`.
#[derive(Debug, Clone)]
pub struct CpOptions {
    /// `--policy POLICY -l RATE -c aes128` (policy fixed, high, fair or low; rate in bit/s);
    /// `None`: no rate, policy or cipher option at all, what a newcomer types.
    pub policy: Option<(&'static str, u64)>,
    /// Set `FERRY_LOG=ferry::driver=debug` (the driver's state every 250 ms on stderr).
    pub debug_driver: bool,
}

impl CpOptions {
    /// `--policy policy -l rate_bps -c aes128`.
    pub fn with(policy: &'static str, rate_bps: u64) -> Self {
        Self { policy: Some((policy, rate_bps)), debug_driver: false }
    }

    /// No options.
    pub fn defaults() -> Self {
        Self { policy: None, debug_driver: false }
    }

    /// How the row's note describes these options.
    fn note(&self) -> String {
        match self.policy {
            Some((policy, rate)) => format!("--policy {policy} -l {}, aes128", fmt_mbit(rate)),
            None => "no options (defaults)".into(),
        }
    }
}

/// One upload of `file` from the client namespace to a fresh server, bounded by `limit`.
/// Returns the outcome (verified byte for byte) and `ferry cp`'s stderr.
pub fn upload(
    tb: &Testbed,
    ferry: &Path,
    scratch: &Path,
    file: &Path,
    opts: &CpOptions,
    limit: Duration,
) -> Result<(RowOutcome, String), NetemError> {
    upload_sampled(tb, ferry, scratch, file, opts, limit).map(|(o, err, _)| (o, err))
}

/// [`upload`], also returning `(seconds since the start, bytes arrived)` every
/// [`SAMPLE_EVERY`] while the copy ran.
pub fn upload_sampled(
    tb: &Testbed,
    ferry: &Path,
    scratch: &Path,
    file: &Path,
    opts: &CpOptions,
    limit: Duration,
) -> Result<(RowOutcome, String, Samples), NetemError> {
    let server = FerryServer::start(tb.server(), ferry, scratch, FERRY_PORT)?;
    let mut cmd = server.cp_command(tb.client(), file, opts);
    let want = std::fs::metadata(file).map_err(io(format!("reading {}", file.display())))?.len();
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut samples = vec![(0.0, 0)];
    let ran = std::thread::scope(|scope| {
        let copy = scope.spawn(|| {
            let r = probe::run_bounded(&mut cmd, limit);
            done.store(true, std::sync::atomic::Ordering::Release);
            r
        });
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(SAMPLE_EVERY);
            samples.push((started.elapsed().as_secs_f64(), server.received_bytes(file, want)));
        }
        copy.join().expect("the copy thread")
    });
    let (out, err, in_time) = ran.map_err(|e| match e {
        NetemError::Command { command, status, stderr } => NetemError::Command {
            command,
            status,
            stderr: format!("{stderr}\nferry serve log: {}", server.log_tail()),
        },
        e => e,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let dest = server.dest_of(file);
    let (have, same) = verify_copy(file, &dest)?;
    if in_time && !same {
        return Err(NetemError::Emulator(format!(
            "ferry cp exited successfully but {} differs from the source ({have} of {want} bytes); ferry cp said: {} {}; server log: {}",
            dest.display(),
            out.trim(),
            err.trim(),
            server.log_tail()
        )));
    }
    let partial = if same { want } else { server.received_bytes(file, want) };
    let note = opts.note();
    samples.push((seconds, partial));
    Ok((
        RowOutcome {
            steady: None,
            payload_bytes: partial,
            seconds,
            completed: same,
            note: if same {
                note
            } else {
                format!(
                    "{note}; stopped after {:.0} s (bytes on disk counted)",
                    limit.as_secs_f64()
                )
            },
        },
        err,
        samples,
    ))
}

/// `(seconds since the start, bytes arrived)`, oldest first.
pub type Samples = Vec<(f64, u64)>;

/// How often [`upload_sampled`] looks at the bytes that have arrived (their granularity is the
/// receiver's write-behind run, 1 MiB).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Ferry's payload per IP byte on a 1500-byte MTU: a 1413-byte block in a 1472-byte datagram
/// (IPv4, UDP).
pub const PAYLOAD_SHARE: f64 = 1413.0 / 1500.0;

fn fmt_mbit(bps: u64) -> String {
    format!("{}m", bps as f64 / 1e6)
}

/// Which of Ferry's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FerryPolicy {
    /// `--policy fixed -l C`.
    Fixed,
    /// `--policy fair -l 2C`: the controller finds the rate.
    Adaptive,
    /// No rate, policy or cipher option: the defaults (no cap, the default policy).
    Default,
}

/// `ferry cp` to `ferry serve`, file to file, AES-128-GCM.
#[derive(Debug)]
pub struct FerryRow {
    /// Fixed or adaptive.
    pub policy: FerryPolicy,
}

impl Row for FerryRow {
    fn name(&self) -> String {
        match self.policy {
            FerryPolicy::Fixed => "Ferry fixed".into(),
            FerryPolicy::Adaptive => "Ferry adaptive (fair)".into(),
            FerryPolicy::Default => "Ferry default (no options)".into(),
        }
    }
    fn available(&self) -> Result<(), String> {
        ferry_binary().map(|_| ())
    }
    fn run(&self, tb: &Testbed, w: &Workload) -> Result<RowOutcome, NetemError> {
        let ferry = ferry_binary().map_err(NetemError::Unavailable)?;
        let opts = match self.policy {
            FerryPolicy::Fixed => CpOptions::with("fixed", w.rate_bps),
            // Twice the link rate: a ceiling the controller should never reach, so that the
            // rate it settles at is its own finding.
            FerryPolicy::Adaptive => CpOptions::with("fair", 2 * w.rate_bps),
            FerryPolicy::Default => CpOptions::defaults(),
        };
        let (mut o, stderr, samples) =
            upload_sampled(tb, &ferry, &w.scratch, &w.file, &opts, w.limit)?;
        if let Some(dir) = std::env::var_os("FERRY_GRID_LOGS") {
            // For investigations: `FERRY_GRID_LOGS=DIR FERRY_LOG=ferry=debug wan-grid ...` keeps
            // each copy's stderr (with FERRY_LOG, the client's log) and its arrival samples.
            let name = format!("{}ms-{}pct-{:?}", w.rtt_ms, w.loss * 100.0, self.policy);
            let dir = PathBuf::from(dir);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(format!("{name}.stderr")), &stderr);
            let lines: String = samples.iter().map(|(t, b)| format!("{t:.3} {b}\n")).collect();
            let _ = std::fs::write(dir.join(format!("{name}.samples")), lines);
        }
        // The ramp is judged over half a second or two round trips, whichever is longer.
        let window = (2.0 * w.rtt_ms as f64 / 1000.0).max(0.5);
        let ceiling = w.rate_bps as f64 * (1.0 - w.loss) * PAYLOAD_SHARE;
        o.steady = steady_from_samples(&samples, w.file_bytes, ceiling, window);
        Ok(o)
    }
}
