//! `loopback-bench`: Ferry against the baselines on loopback, side by side in one run.
//!
//! ```text
//! cargo build --release -p ferry -p ferry-benches --bins
//! target/release/loopback-bench [--size 1G] [--rounds 5] [--rows ferry-fixed,quic-cubic,...]
//! ```
//!
//! For each round, in alternation, every row copies one file of `--size` random bytes from page
//! cache (tmpfs, `--dir`, default /dev/shm) to page cache over 127.0.0.1: `ferry cp` against a
//! `ferry serve` (AES-128), `quic-copy` (quinn, cubic and BBR), iperf3 TCP and UDP (memory to
//! memory), and scp over a throwaway sshd. Every file copy is checked (size and BLAKE3) and the
//! run stops loudly if one differs. Every server is started fresh for each run, so the peak RSS
//! of both ends (`ru_maxrss` from wait4(2), which includes the process's reaped descendants) is
//! per run; /proc/PID/status is sampled every 10 ms for the peak anonymous RSS as well, since a
//! memory-mapped source file counts toward RSS while being read. Prints a Markdown table of
//! medians and ratios. See BENCHMARKS.md ("Loopback (real transfers)").

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

/// Every row this runner knows, in the order they run within a round.
const ROWS: &[&str] = &[
    "ferry-default",
    "ferry-1500",
    "ferry-c2",
    "ferry-k0",
    "ferry-crypt-up",
    "ferry-fixed",
    "ferry-fair",
    "ferry-small-up",
    "ferry-small-down",
    "ferry-small-up-c2",
    "ferry-small-down-c2",
    "scp-small-up",
    "rsync-small-up",
    "ferry-plain-up",
    "ferry-ssear-up",
    "ferry-plain-down",
    "ferry-ssear-down",
    "quic-cubic",
    "quic-bbr",
    "iperf3-tcp-cubic",
    "iperf3-tcp-bbr",
    "iperf3-udp",
    "scp",
];

#[derive(Parser, Debug)]
#[command(about = "Ferry vs quinn, iperf3 and scp on loopback: medians, ratios, peak RSS")]
struct Args {
    /// File size (k/M/G suffixes are powers of 1024).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Rounds; each round runs every row once, in alternation.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Comma-separated rows (default: all): ferry-default (`ferry cp` with no rate or policy
    /// option, the headline), ferry-1500 (the same with `-Z 1472`, a 1500-byte MTU's datagram),
    /// ferry-c2 (no options but `-C 2`: two sessions, the file in two parts), ferry-k0 (no
    /// options but `-k 0`: resume off), ferry-crypt-up (no options but `--file-crypt encrypt`:
    /// each file sealed into a client-side envelope as it is sent),
    /// ferry-fixed, ferry-fair, ferry-plain-up,
    /// ferry-ssear-up, ferry-plain-down, ferry-ssear-down (a `--config` server with a plain
    /// user and one with encryption at rest), quic-cubic, quic-bbr, iperf3-tcp-cubic,
    /// iperf3-tcp-bbr, iperf3-udp, scp.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
    /// Directory for the source file and the copies (tmpfs keeps both ends in page cache).
    #[arg(long, default_value = "/dev/shm")]
    dir: PathBuf,
    /// `ferry cp -l` target rate of the Ferry rows.
    #[arg(long, default_value = "100g")]
    ferry_rate: String,
    /// Transit cipher of the Ferry rows.
    #[arg(long, default_value = "aes128")]
    ferry_cipher: String,
    /// Wall-clock limit of one run, seconds; a run still going then is killed and reported.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Files of the small-files rows (ferry-small-up, ferry-small-down, their -C 2 variants
    /// ferry-small-up-c2 and ferry-small-down-c2, scp-small-up, rsync-small-up).
    #[arg(long, default_value_t = 10_000)]
    small_files: usize,
    /// Size of each of those files (k/M suffixes are powers of 1024).
    #[arg(long, default_value = "16k", value_parser = parse_size)]
    small_size: u64,
    /// Also write every run as one JSON object per line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (k, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("not a size: {s:?} (e.g. 1G, 256M)"))?;
    n.checked_mul(mult).filter(|&b| b > 0).ok_or_else(|| format!("size out of range: {s:?}"))
}

/// Median of a non-empty list (mean of the two middle values for an even count).
fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

use ferry_benches::runner::{Res, daemon_account, is_root, run_ok, sibling, ssear_secret};

// ---------------------------------------------------------------------------------------------
// Child processes: killed on drop and on Ctrl-C; reaped with wait4 for their peak RSS.

/// Pids of live children, killed by the Ctrl-C handler.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// The scratch directory, removed by the Ctrl-C handler.
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Peak memory of one process.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    /// `ru_maxrss` (KiB): peak resident set of the process and its reaped descendants.
    maxrss_kib: u64,
    /// Peak RssAnon seen by sampling /proc/PID/status every 10 ms (KiB).
    anon_kib: u64,
    /// User + system CPU seconds (from wait4, the process and its reaped descendants).
    cpu_s: f64,
}

/// A child process that is killed and reaped when dropped.
struct Proc {
    child: Option<Child>,
    name: String,
    sampler: Option<(Arc<AtomicBool>, std::thread::JoinHandle<u64>)>,
}

impl Proc {
    fn spawn(cmd: &mut Command, name: &str) -> Res<Proc> {
        let child = cmd.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let pid = child.id() as i32;
        LIVE.lock().expect("lock").push(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || sample_anon(pid, &s));
        Ok(Proc { child: Some(child), name: name.to_owned(), sampler: Some((stop, handle)) })
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    fn stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    /// Waits up to `limit` for the process to exit (killing it then), reaps it, and returns
    /// whether it succeeded (false when killed) and its memory peaks.
    fn wait(&mut self, limit: Duration) -> Res<(bool, Mem)> {
        let pid = self.pid();
        let deadline = Instant::now() + limit;
        let mut killed = false;
        loop {
            if let Some((status, rss, cpu)) = wait4(pid, true)? {
                return Ok((!killed && status == 0, self.finish(rss, cpu)));
            }
            if Instant::now() >= deadline && !killed {
                eprintln!("  {} still running after {} s: killing it", self.name, limit.as_secs());
                // SAFETY: kill(2) on the pid of our own unreaped child: it cannot be reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after 2 s), reaps it, returns its memory peaks.
    fn stop(&mut self) -> Res<Mem> {
        let pid = self.pid();
        if let Some((_, rss, cpu)) = wait4(pid, true)? {
            return Ok(self.finish(rss, cpu));
        }
        // SAFETY: kill(2) on the pid of our own unreaped child: it cannot be reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let (_, m) = self.wait(Duration::from_secs(2))?;
        Ok(m)
    }

    fn finish(&mut self, maxrss_kib: u64, cpu_s: f64) -> Mem {
        let pid = self.pid();
        LIVE.lock().expect("lock").retain(|&p| p != pid);
        self.child = None;
        let anon_kib = match self.sampler.take() {
            Some((stop, h)) => {
                stop.store(true, Ordering::Relaxed);
                h.join().unwrap_or(0)
            }
            None => 0,
        };
        Mem { maxrss_kib, anon_kib, cpu_s }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            let pid = self.pid();
            // SAFETY: kill(2) on the pid of our own unreaped child: it cannot be reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = wait4(pid, false);
            self.finish(0, 0.0);
        }
    }
}

/// Reads a pipe to its end on a thread (so a child never blocks on a full pipe).
fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// wait4(2): `Some((exit code or 128+signal, ru_maxrss KiB, CPU seconds))` once `pid` has
/// exited.
fn wait4(pid: i32, nohang: bool) -> Res<Option<(i32, u64, f64)>> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: valid pointers to a local status word and rusage, for our own child's pid.
    let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
    if r == 0 {
        return Ok(None);
    }
    if r < 0 {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Some((code, ru.ru_maxrss.max(0) as u64, secs(ru.ru_utime) + secs(ru.ru_stime))))
}

/// Peak RssAnon of `pid` (KiB), sampled every 10 ms until `stop`.
fn sample_anon(pid: i32, stop: &AtomicBool) -> u64 {
    let path = format!("/proc/{pid}/status");
    let mut peak = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(kib) = fs::read_to_string(&path).ok().and_then(|s| status_field(&s, "RssAnon:"))
        {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    peak
}

/// A `Field:   123 kB` line of /proc/PID/status, in KiB.
fn status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Environment.

struct Env {
    args: Args,
    scratch: PathBuf,
    src: PathBuf,
    digest: blake3::Hash,
    ferry: PathBuf,
    quic_copy: PathBuf,
    /// Ferry: client key, authorized_keys, server state dir, host-key fingerprint.
    ferry_fp: String,
    /// scp: prepared key files (None when the row is skipped).
    ssh_ready: bool,
    /// The at-rest rows' server configuration and its host key (None when none of them runs).
    at_rest: Option<(PathBuf, String)>,
    /// The small-files tree and its digest (None when no small-files row runs).
    small: Option<(PathBuf, blake3::Hash)>,
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Writes `bytes` of incompressible data (BLAKE3 output stream) and returns its BLAKE3.
fn make_file(path: &Path, bytes: u64) -> Res<blake3::Hash> {
    let mut f = fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut xof = blake3::Hasher::new_derive_key("ferry loopback-bench source file").finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).map_err(|e| format!("writing {}: {e}", path.display()))?;
        left -= n as u64;
    }
    Ok(hasher.finalize())
}

fn digest_file(path: &Path) -> Res<(u64, blake3::Hash)> {
    let mut f = fs::File::open(path).map_err(|e| format!("the copy {}: {e}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher.finalize()))
}

/// Fails loudly unless `copy` has the source's size and BLAKE3; then deletes it.
fn verify_and_remove(env: &Env, copy: &Path, row: &str) -> Res<()> {
    let (size, digest) = digest_file(copy)?;
    if size != env.args.size || digest != env.digest {
        return Err(format!(
            "{row}: the copy {} is NOT identical to the source: {size} bytes (want {}), \
             BLAKE3 {} (want {})",
            copy.display(),
            env.args.size,
            digest.to_hex(),
            env.digest.to_hex()
        ));
    }
    fs::remove_file(copy).map_err(|e| format!("removing {}: {e}", copy.display()))
}

fn free_port(udp: bool) -> Res<u16> {
    let port = if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr())
    };
    port.map(|a| a.port()).map_err(|e| format!("cannot find a free port: {e}"))
}

/// Waits until a TCP socket listens on 127.0.0.1:`port` (from /proc/net/tcp), at most 5 s.
fn wait_tcp_listen(port: u16) -> Res<()> {
    let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
    for _ in 0..500 {
        if fs::read_to_string("/proc/net/tcp").map(|t| t.contains(&needle)).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("nothing listens on 127.0.0.1:{port} (TCP) after 5 s"))
}

/// Reads the first line of a child's stdout, at most `limit`.
fn first_line(p: &mut Proc, limit: Duration) -> Res<String> {
    let out = p.stdout().ok_or("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    rx.recv_timeout(limit).map_err(|_| format!("{} said nothing within {limit:?}", p.name))
}

// ---------------------------------------------------------------------------------------------
// Rows.

/// One measured run.
#[derive(Debug, Clone)]
struct RunResult {
    bytes: u64,
    /// Files copied (the small-files rows; 0 for one file).
    files: u64,
    seconds: f64,
    send: Mem,
    recv: Mem,
    note: String,
}

impl RunResult {
    fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

fn run_row(env: &Env, row: &str) -> Res<RunResult> {
    match row {
        "ferry-default" => run_ferry(env, None),
        // The datagram a 1500-byte Ethernet carries: what a WAN path gets (loopback's 64 KiB
        // MTU lets the default use 8972-byte datagrams).
        "ferry-1500" => run_ferry_with(
            env,
            "ferry-1500",
            &["-Z", "1472"],
            "no options but -Z 1472 (a 1500-byte MTU's datagram)".into(),
        ),
        // Two sessions at once, the file cut in two parts (a multi-session transfer).
        "ferry-c2" => run_ferry_with(
            env,
            "ferry-c2",
            &["-C", "2"],
            "no options but -C 2 (two sessions, the file in two parts)".into(),
        ),
        // Resume off: what the resume machinery (FILE_HAVE, the journal) costs a fresh copy.
        "ferry-k0" => {
            run_ferry_with(env, "ferry-k0", &["-k", "0"], "no options but -k 0 (resume off)".into())
        }
        // Client-side envelopes: sealing (synthetic IVs, AES-256-GCM) on the sending path.
        "ferry-crypt-up" => run_crypt_up(env),
        "ferry-fixed" => run_ferry(env, Some("fixed")),
        "ferry-fair" => run_ferry(env, Some("fair")),
        "ferry-small-up" => run_small_ferry(env, true, &[]),
        "ferry-small-down" => run_small_ferry(env, false, &[]),
        "ferry-small-up-c2" => run_small_ferry(env, true, &["-C", "2"]),
        "ferry-small-down-c2" => run_small_ferry(env, false, &["-C", "2"]),
        "scp-small-up" => run_small_scp(env),
        "rsync-small-up" => run_small_rsync(env),
        "ferry-plain-up" => run_at_rest(env, "plain", true),
        "ferry-ssear-up" => run_at_rest(env, "vault", true),
        "ferry-plain-down" => run_at_rest(env, "plain", false),
        "ferry-ssear-down" => run_at_rest(env, "vault", false),
        "quic-cubic" => run_quic(env, "cubic"),
        "quic-bbr" => run_quic(env, "bbr"),
        "iperf3-tcp-cubic" => run_iperf3(env, Some("cubic")),
        "iperf3-tcp-bbr" => run_iperf3(env, Some("bbr")),
        "iperf3-udp" => run_iperf3(env, None),
        "scp" => run_scp(env),
        _ => Err(format!("unknown row {row}")),
    }
}

/// Why a row cannot run here, if it cannot.
fn unavailable(env: &Env, row: &str) -> Option<String> {
    if row.starts_with("iperf3") && !have("iperf3") {
        return Some("iperf3 is not installed (apt-get install iperf3)".into());
    }
    if row.starts_with("rsync") && !have("rsync") {
        return Some("rsync is not installed (apt-get install rsync)".into());
    }
    if (row.starts_with("scp") || row.starts_with("rsync")) && !env.ssh_ready {
        return Some(
            "needs root, scp, ssh-keygen and /usr/sbin/sshd (apt-get install openssh-server \
             openssh-client)"
                .into(),
        );
    }
    None
}

/// `ferry cp` of the source to a flag-mode server: with no rate or policy option (`None`: what
/// a newcomer runs), or with `-l RATE --policy POLICY`.
fn run_ferry(env: &Env, policy: Option<&str>) -> Res<RunResult> {
    let (row, opts, note) = match policy {
        Some(p) => (
            format!("ferry-{p}"),
            vec!["-l", &env.args.ferry_rate, "--policy", p, "-c", &env.args.ferry_cipher],
            format!("{}, -l {}", env.args.ferry_cipher, env.args.ferry_rate),
        ),
        None => {
            ("ferry-default".into(), Vec::new(), "no options (aes128, fair, no rate cap)".into())
        }
    };
    run_ferry_with(env, &row, &opts, note)
}

/// One timed `ferry cp` of the source file with `opts` to a fresh flag-mode server, checked.
fn run_ferry_with(env: &Env, row: &str, opts: &[&str], note: String) -> Res<RunResult> {
    let s = &env.scratch;
    let docroot = s.join("ferry-docroot");
    fs::create_dir_all(&docroot).map_err(|e| format!("creating the docroot: {e}"))?;
    let serve = flag_serve(env, &docroot);
    let from = env.src.display().to_string();
    let copy = ferry_copy(env, &serve, &env.ferry_fp, opts, &from, "127.0.0.1:.")?;
    let name = env.src.file_name().ok_or("source has no name")?;
    verify_and_remove(env, &docroot.join(name), row)?;
    Ok(RunResult {
        bytes: env.args.size,
        files: 0,
        seconds: copy.seconds,
        send: copy.client,
        recv: copy.server,
        note: format!("{note}, cp said: {}", copy.said),
    })
}

/// The passphrase of the `ferry-crypt-up` row's envelopes (given as `FERRY_FILEPASS`).
const BENCH_PASS: &str = "loopback bench passphrase";

/// `ferry cp --file-crypt encrypt`: the envelope is opened again with `ferry crypt decrypt`
/// (outside the timing) and compared with the source.
fn run_crypt_up(env: &Env) -> Res<RunResult> {
    let s = &env.scratch;
    let docroot = s.join("ferry-docroot");
    fs::create_dir_all(&docroot).map_err(|e| format!("creating the docroot: {e}"))?;
    let serve = flag_serve(env, &docroot);
    let from = env.src.display().to_string();
    let opts = ["--file-crypt", "encrypt"];
    let copy = ferry_copy(env, &serve, &env.ferry_fp, &opts, &from, "127.0.0.1:.")?;
    let name = env.src.file_name().ok_or("source has no name")?.to_string_lossy();
    let sealed = docroot.join(format!("{name}.ferry"));
    let opened = s.join("ferry-crypt-opened");
    let _ = fs::remove_file(&opened);
    let status = Command::new(&env.ferry)
        .args(["crypt", "decrypt"])
        .arg(&sealed)
        .arg("-o")
        .arg(&opened)
        .env("FERRY_FILEPASS", BENCH_PASS)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("ferry crypt decrypt: {e}"))?;
    if !status.success() {
        return Err(format!("ferry-crypt-up: {} does not open", sealed.display()));
    }
    fs::remove_file(&sealed).map_err(|e| format!("removing {}: {e}", sealed.display()))?;
    verify_and_remove(env, &opened, "ferry-crypt-up")?;
    Ok(RunResult {
        bytes: env.args.size,
        files: 0,
        seconds: copy.seconds,
        send: copy.client,
        recv: copy.server,
        note: format!("no options but --file-crypt encrypt, cp said: {}", copy.said),
    })
}

/// The flag-mode server's arguments: `docroot`, this run's authorized key and state.
fn flag_serve(env: &Env, docroot: &Path) -> Vec<String> {
    let s = &env.scratch;
    vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--docroot".into(),
        docroot.display().to_string(),
        "--authorized-keys".into(),
        s.join("ferry-authorized_keys").display().to_string(),
        "--state-dir".into(),
        s.join("ferry-state").display().to_string(),
    ]
}

/// The small-files tree (`small/fNNNNN`, deterministic content) and its digest.
fn make_tree(dir: &Path, files: usize, size: u64) -> Res<blake3::Hash> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut xof = blake3::Hasher::new_derive_key("ferry loopback-bench small files").finalize_xof();
    let mut buf = vec![0u8; size as usize];
    for i in 0..files {
        xof.fill(&mut buf);
        let p = dir.join(format!("f{i:05}"));
        fs::write(&p, &buf).map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    tree_digest(dir)
}

/// BLAKE3 over every file of `dir` (names and contents, in name order).
fn tree_digest(dir: &Path) -> Res<blake3::Hash> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let mut h = blake3::Hasher::new();
    for n in names {
        let bytes = fs::read(dir.join(&n)).map_err(|e| format!("{n:?}: {e}"))?;
        h.update(n.as_encoded_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize())
}

/// Fails unless the tree at `copy` is the small-files tree; then deletes it.
fn verify_tree_and_remove(env: &Env, copy: &Path, row: &str) -> Res<()> {
    let (_, want) = env.small.as_ref().ok_or("the small-files tree is not set up")?;
    if tree_digest(copy)? != *want {
        return Err(format!("{row}: the tree {} is NOT identical to the source", copy.display()));
    }
    fs::remove_dir_all(copy).map_err(|e| format!("removing {}: {e}", copy.display()))
}

fn small_result(env: &Env, copy: Copy, what: &str) -> RunResult {
    let files = env.args.small_files as u64;
    let rate = files as f64 / copy.seconds;
    RunResult {
        bytes: files * env.args.small_size,
        files,
        seconds: copy.seconds,
        send: copy.client,
        recv: copy.server,
        note: format!("{files} x {} B, {rate:.0} files/s, {what}", env.args.small_size),
    }
}

/// The small-files tree up to a flag-mode server, or down from the copy stored at set-up
/// (`dl/small`), with `ferry cp` and no options.
fn run_small_ferry(env: &Env, up: bool, opts: &[&str]) -> Res<RunResult> {
    let s = &env.scratch;
    let (tree, _) = env.small.as_ref().ok_or("the small-files tree is not set up")?;
    let docroot = s.join("ferry-docroot");
    let down = s.join("small-down");
    fs::create_dir_all(&down).map_err(|e| format!("{}: {e}", down.display()))?;
    let (from, to, landed) = if up {
        (tree.display().to_string(), "127.0.0.1:.".to_owned(), docroot.join("small"))
    } else {
        ("127.0.0.1:dl/small".to_owned(), down.display().to_string(), down.join("small"))
    };
    let copy = ferry_copy(env, &flag_serve(env, &docroot), &env.ferry_fp, opts, &from, &to)?;
    let row = if up { "ferry-small-up" } else { "ferry-small-down" };
    verify_tree_and_remove(env, &landed, row)?;
    let what = if opts.is_empty() {
        "ferry cp, no options".into()
    } else {
        format!("ferry cp {}", opts.join(" "))
    };
    Ok(small_result(env, copy, &what))
}

/// One timed `ferry cp` through a fresh `ferry serve SERVE_ARGS --json`.
struct Copy {
    seconds: f64,
    client: Mem,
    server: Mem,
    /// The last line `ferry cp` printed.
    said: String,
}

/// Starts `ferry serve` with `serve` (and `--json`), copies `from` to `to` with `ferry cp`
/// (this run's key, `fp` pinned, the options `opts`), stops the server.
fn ferry_copy(
    env: &Env,
    serve: &[String],
    fp: &str,
    opts: &[&str],
    from: &str,
    to: &str,
) -> Res<Copy> {
    let mut cmd = Command::new(&env.ferry);
    cmd.arg("serve")
        .args(serve)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Proc::spawn(&mut cmd, "ferry serve")?;
    let line = first_line(&mut server, Duration::from_secs(10))?;
    let port = ferry_port(&line).ok_or_else(|| format!("ferry serve said {line:?}"))?;
    let mut cp = Command::new(&env.ferry);
    cp.args(["cp", "-i"])
        .arg(env.scratch.join("ferry-id"))
        .args(["--host-key", fp, "-P", &port.to_string()])
        .args(opts)
        .args([from, to])
        .env("FERRY_FILEPASS", BENCH_PASS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut client = Proc::spawn(&mut cp, "ferry cp")?;
    let out = collect(client.stdout());
    let errs = collect(client.stderr());
    let (ok, client_mem) = client.wait(Duration::from_secs(env.args.timeout))?;
    let seconds = started.elapsed().as_secs_f64();
    let server_mem = server.stop()?;
    let summary = out.join().unwrap_or_default();
    if !ok {
        let stderr = errs.join().unwrap_or_default();
        return Err(format!("ferry cp {from} {to} failed: {} {}", summary.trim(), stderr.trim()));
    }
    let said = summary.lines().last().unwrap_or("").trim().to_owned();
    Ok(Copy { seconds, client: client_mem, server: server_mem, said })
}

/// One copy `from` -> `to` through a fresh `ferry serve --config` of the at-rest rows.
fn at_rest_copy(env: &Env, from: &str, to: &str) -> Res<Copy> {
    let (config, fp) = env.at_rest.as_ref().ok_or("the at-rest server is not set up")?;
    let a = &env.args;
    let opts = ["-l", &a.ferry_rate, "--policy", "fixed", "-c", &a.ferry_cipher];
    ferry_copy(env, &["--config".into(), config.display().to_string()], fp, &opts, from, to)
}

/// The at-rest rows: through user `plain` or `vault` (SSEAR) of a `--config` server, an upload
/// of the source to the docroot, or a download of the copy stored there at set-up (`dl/`).
/// Same flags as the fixed row.
fn run_at_rest(env: &Env, user: &str, up: bool) -> Res<RunResult> {
    let s = &env.scratch;
    let name = env.src.file_name().ok_or("source has no name")?.to_string_lossy().into_owned();
    let down = s.join("at-rest-down");
    fs::create_dir_all(&down).map_err(|e| format!("{}: {e}", down.display()))?;
    let (from, to) = if up {
        (env.src.display().to_string(), format!("{user}@127.0.0.1:."))
    } else {
        (format!("{user}@127.0.0.1:dl/{name}"), down.display().to_string())
    };
    let Copy { seconds, client, server, said: last } = at_rest_copy(env, &from, &to)?;
    let row = format!("ferry-{user}-{}", if up { "up" } else { "down" });
    if !up {
        verify_and_remove(env, &down.join(&name), &row)?;
    } else if user == "plain" {
        verify_and_remove(env, &s.join("at-rest/plain").join(&name), &row)?;
    } else {
        // Stored sealed: the session verified the plaintext digest; here its envelope length.
        let stored = s.join("at-rest/vault").join(&name);
        let len = fs::metadata(&stored).map_err(|e| format!("{row}: {e}"))?.len();
        if len != envelope_len(env.args.size) {
            return Err(format!("{row}: {} holds {len} bytes, not an envelope", stored.display()));
        }
        fs::remove_file(&stored).map_err(|e| format!("removing {}: {e}", stored.display()))?;
    }
    let (send, recv) = if up { (client, server) } else { (server, client) };
    let mode = if user == "vault" { "SSEAR" } else { "plain" };
    let (cipher, rate) = (&env.args.ferry_cipher, &env.args.ferry_rate);
    let note = format!("{mode} at rest, {cipher}, -l {rate}, cp said: {last}");
    Ok(RunResult { bytes: env.args.size, files: 0, seconds, send, recv, note })
}

/// The envelope length of `len` plaintext bytes (docs/FORMAT.md section 2).
fn envelope_len(len: u64) -> u64 {
    1024 + len.div_ceil(65536).max(1) * 28 + len
}

/// The at-rest rows' server: a root keystore of the bench's own with `vault`'s `ssear`
/// secret, its copy in the local keystore of the server's account, docroots `plain` and
/// `vault` with the source stored under `dl/` (sealed for vault: uploaded once). Run as root,
/// the server becomes `nobody` (`run_as`), which owns its directories.
fn prepare_at_rest(env: &Env) -> Res<(PathBuf, String)> {
    use std::os::unix::fs::PermissionsExt;
    let s = env.scratch.join("at-rest");
    let root = is_root();
    let account = daemon_account();
    if root {
        "nobody".to_owned()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    let mode = |p: &Path, m: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(m))
            .map_err(|e| format!("chmod {}: {e}", p.display()))
    };
    for d in ["plain/dl", "vault/dl", "state/keystores", "keys"] {
        fs::create_dir_all(s.join(d)).map_err(|e| format!("{d}: {e}"))?;
    }
    for d in ["state", "state/keystores", "keys"] {
        mode(&s.join(d), 0o700)?;
    }
    let name = env.src.file_name().ok_or("source has no name")?;
    fs::copy(&env.src, s.join("plain/dl").join(name)).map_err(|e| format!("copy: {e}"))?;

    if root {
        mode(&env.scratch, 0o755)?;
        mode(&s, 0o755)?;
        for d in ["plain", "plain/dl", "vault", "vault/dl", "state", "state/keystores"] {
            std::os::unix::fs::chown(s.join(d), Some(65534), Some(65534))
                .map_err(|e| format!("chown {d}: {e}"))?;
        }
    }
    let (root_ks, ks) = (s.join("keys/rootkeystore.db"), s.join("state/keystores/vault.db"));
    ssear_secret(&env.ferry, &root_ks, "vault", &ks, &account)?;
    let public =
        fs::read_to_string(env.scratch.join("ferry-id.pub")).map_err(|e| format!("{e}"))?;
    let run_as = if root { format!("run_as = \"{account}\"\n") } else { String::new() };
    let config = format!(
        "{run_as}listen = \"127.0.0.1:0\"\nstate_dir = \"{d}/state\"\n\n\
         [[user]]\nname = \"plain\"\ndocroot = \"{d}/plain\"\nkeys = [\"{k}\"]\nciphers = [\"aes128\", \"aes256\", \"none\"]\n\n\
         [[user]]\nname = \"vault\"\ndocroot = \"{d}/vault\"\nkeys = [\"{k}\"]\nciphers = [\"aes128\", \"aes256\", \"none\"]\nssear = true\n",
        d = s.display(),
        k = public.trim()
    );
    let path = s.join("ferry-serve.toml");
    fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    mode(&path, if root { 0o644 } else { 0o600 })?;
    let fp = run_ok(
        Command::new(&env.ferry).args(["serve", "--config"]).arg(&path).arg("--print-fingerprint"),
        "ferry serve --print-fingerprint",
    )?;
    Ok((path, fp.trim().to_owned()))
}

/// The port in `ferry serve --json`'s first event,
/// `{"address":"127.0.0.1:PORT","host_key":"SHA256:...","event":"listening"}`.
fn ferry_port(line: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["event"] != "listening" {
        return None;
    }
    Some(v["address"].as_str()?.parse::<std::net::SocketAddr>().ok()?.port())
}

fn run_quic(env: &Env, cc: &str) -> Res<RunResult> {
    let out = env.scratch.join("quic-copy.out");
    let mut serve = Command::new(&env.quic_copy);
    serve
        .args(["serve", "--listen", "127.0.0.1:0", "--cc", cc, "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut server = Proc::spawn(&mut serve, "quic-copy serve")?;
    let line = first_line(&mut server, Duration::from_secs(10))?;
    let hello: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("quic-copy serve said {line:?}: {e}"))?;
    let (Some(addr), Some(cert)) = (hello["listening"].as_str(), hello["cert_sha256"].as_str())
    else {
        return Err(format!("quic-copy serve said {line:?}"));
    };
    let mut send = Command::new(&env.quic_copy);
    send.args(["send", "--connect", addr, "--cert-sha256", cert, "--cc", cc, "--file"])
        .arg(&env.src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut client = Proc::spawn(&mut send, "quic-copy send")?;
    let report = collect(client.stdout());
    let (ok, send_mem) = client.wait(Duration::from_secs(env.args.timeout))?;
    let seconds = started.elapsed().as_secs_f64();
    let (_, recv_mem) = server.wait(Duration::from_secs(15))?;
    let report = report.join().unwrap_or_default();
    if !ok {
        return Err(format!("quic-copy send failed: {}", report.trim()));
    }
    let r: serde_json::Value = serde_json::from_str(report.trim())
        .map_err(|e| format!("quic-copy send said {report:?}: {e}"))?;
    if r["verified"] != serde_json::Value::Bool(true) {
        return Err(format!("quic-copy: the copy was not verified: {report}"));
    }
    verify_and_remove(env, &out, &format!("quic-{cc}"))?;
    Ok(RunResult {
        bytes: env.args.size,
        files: 0,
        seconds,
        send: send_mem,
        recv: recv_mem,
        note: format!(
            "quinn {cc}, lost {} pkts, {} datagrams in {} sendmsg",
            r["lost_packets"], r["udp_tx_datagrams"], r["udp_tx_ios"]
        ),
    })
}

/// iperf3 memory to memory, `--size` bytes: TCP with congestion control `cc`, or UDP (`None`).
fn run_iperf3(env: &Env, cc: Option<&str>) -> Res<RunResult> {
    let port = free_port(false)?;
    let mut serve = Command::new("iperf3");
    serve
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = Proc::spawn(&mut serve, "iperf3 -s")?;
    wait_tcp_listen(port)?;
    let mut c = Command::new("iperf3");
    c.args(["-c", "127.0.0.1", "-p", &port.to_string(), "-J", "-n", &env.args.size.to_string()]);
    match cc {
        Some(cc) => c.args(["-C", cc]),
        None => c.args(["-u", "-b", "0", "-l", "1472"]),
    };
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut client = Proc::spawn(&mut c, "iperf3 -c")?;
    let json = collect(client.stdout());
    let (ok, send) = client.wait(Duration::from_secs(env.args.timeout))?;
    let recv = server.stop()?;
    let json = json.join().unwrap_or_default();
    let (bytes, seconds, note) = parse_iperf3(&json, cc.is_none())?;
    if !ok {
        return Err(format!("iperf3 client failed: {note}"));
    }
    Ok(RunResult { bytes, files: 0, seconds, send, recv, note })
}

/// Receiver-side bytes and seconds from iperf3's `-J` output, and a note.
fn parse_iperf3(json: &str, udp: bool) -> Res<(u64, f64, String)> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 -J output: {e}"))?;
    if let Some(err) = v["error"].as_str() {
        return Err(format!("iperf3: {err}"));
    }
    let r = &v["end"]["sum_received"];
    let bytes = r["bytes"].as_u64().ok_or("iperf3: no end.sum_received.bytes")?;
    let seconds = r["seconds"].as_f64().filter(|s| *s > 0.0).ok_or("iperf3: no seconds")?;
    let note = if udp {
        let sent = v["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
        format!(
            "UDP 1472 B, -b 0: sent {:.2} Gbit/s, lost {:.1}% at the receiver",
            sent as f64 * 8.0 / v["end"]["sum_sent"]["seconds"].as_f64().unwrap_or(seconds) / 1e9,
            r["lost_percent"].as_f64().unwrap_or(f64::NAN)
        )
    } else {
        let cc = v["end"]["sender_tcp_congestion"].as_str().unwrap_or("?");
        format!("TCP {cc}, memory to memory, receiver-side rate")
    };
    Ok((bytes, seconds, note))
}

fn prepare_ssh(s: &Path) -> Res<bool> {
    let root = is_root();
    if !root || !have("scp") || !have("ssh-keygen") || !Path::new("/usr/sbin/sshd").exists() {
        return Ok(false);
    }
    for k in ["ssh-hostkey", "ssh-id"] {
        run_ok(
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(s.join(k)),
            "ssh-keygen",
        )?;
    }
    fs::copy(s.join("ssh-id.pub"), s.join("ssh-authorized_keys"))
        .map_err(|e| format!("authorized_keys: {e}"))?;
    fs::create_dir_all(s.join("scp-dest")).map_err(|e| format!("scp dest: {e}"))?;
    // sshd refuses to start without its privilege-separation directory.
    fs::create_dir_all("/run/sshd").map_err(|e| format!("creating /run/sshd: {e}"))?;
    Ok(true)
}

/// A fresh sshd on loopback for the scp rows (this run's keys), and its port.
fn start_sshd(env: &Env) -> Res<(Proc, u16)> {
    let s = &env.scratch;
    let port = free_port(false)?;
    let hostpub = fs::read_to_string(s.join("ssh-hostkey.pub"))
        .map_err(|e| format!("reading the ssh host key: {e}"))?;
    fs::write(s.join("ssh-known_hosts"), format!("[127.0.0.1]:{port} {hostpub}"))
        .map_err(|e| format!("known_hosts: {e}"))?;
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/ssh-hostkey\n\
         AuthorizedKeysFile {d}/ssh-authorized_keys\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
         PidFile {d}/sshd.pid\nSubsystem sftp internal-sftp\n",
        d = s.display()
    );
    fs::write(s.join("sshd_config"), config).map_err(|e| format!("sshd_config: {e}"))?;
    let mut sshd = Command::new("/usr/sbin/sshd");
    sshd.args(["-D", "-e", "-f"])
        .arg(s.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Proc::spawn(&mut sshd, "sshd")?;
    wait_tcp_listen(port)?;
    Ok((server, port))
}

/// `scp` to the loopback sshd on `port`, `extra` arguments first.
fn scp_command(env: &Env, port: u16, extra: &[&str]) -> Command {
    let s = &env.scratch;
    let mut scp = Command::new("scp");
    scp.args(["-q", "-B", "-c", "aes128-gcm@openssh.com", "-P", &port.to_string(), "-i"])
        .arg(s.join("ssh-id"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", s.join("ssh-known_hosts").display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    scp
}

/// `scp -r` of the small-files tree to the loopback sshd.
fn run_small_scp(env: &Env) -> Res<RunResult> {
    small_over_ssh(
        env,
        "scp-small-up",
        "scp -r",
        "scp -r, aes128-gcm@openssh.com",
        |port, tree, dest| {
            let mut scp = scp_command(env, port, &["-r"]);
            scp.arg(tree).arg(format!("root@127.0.0.1:{}", dest.display()));
            scp
        },
    )
}

/// `rsync -a` of the small-files tree to the loopback sshd (ssh with the scp rows' cipher and
/// key; rsync's own delta algorithm has nothing to compare against: the destination is empty).
fn run_small_rsync(env: &Env) -> Res<RunResult> {
    let s = &env.scratch;
    let what = "rsync -a over ssh, aes128-gcm@openssh.com";
    small_over_ssh(env, "rsync-small-up", "rsync -a", what, |port, tree, dest| {
        let ssh = format!(
            "ssh -q -c aes128-gcm@openssh.com -p {port} -i {} -o UserKnownHostsFile={} \
             -o StrictHostKeyChecking=yes -o BatchMode=yes",
            s.join("ssh-id").display(),
            s.join("ssh-known_hosts").display()
        );
        let mut rsync = Command::new("rsync");
        rsync
            .args(["-a", "-e", &ssh])
            .arg(tree)
            .arg(format!("root@127.0.0.1:{}/", dest.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        rsync
    })
}

/// One timed copy of the small-files tree to a fresh loopback sshd: `command(port, tree, dest)`
/// makes the client's command (stderr piped), `what` names it in errors and `note` in the row;
/// the copy at `dest/small` is checked and removed.
fn small_over_ssh(
    env: &Env,
    row: &str,
    what: &str,
    note: &str,
    command: impl FnOnce(u16, &Path, &Path) -> Command,
) -> Res<RunResult> {
    let (tree, _) = env.small.as_ref().ok_or("the small-files tree is not set up")?;
    let (mut server, port) = start_sshd(env)?;
    let dest = env.scratch.join(format!("{row}-dest"));
    fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut cmd = command(port, tree, &dest);
    let started = Instant::now();
    let mut client = Proc::spawn(&mut cmd, what)?;
    let err = collect(client.stderr());
    let (ok, send) = client.wait(Duration::from_secs(env.args.timeout))?;
    let seconds = started.elapsed().as_secs_f64();
    let recv = server.stop()?;
    if !ok {
        return Err(format!("{what} failed: {}", err.join().unwrap_or_default().trim()));
    }
    verify_tree_and_remove(env, &dest.join("small"), row)?;
    let copy = Copy { seconds, client: send, server: recv, said: String::new() };
    Ok(small_result(env, copy, note))
}

fn run_scp(env: &Env) -> Res<RunResult> {
    let s = &env.scratch;
    let (mut server, port) = start_sshd(env)?;
    let dest = s.join("scp-dest").join("copy.bin");
    let mut scp = scp_command(env, port, &[]);
    scp.arg(&env.src).arg(format!("root@127.0.0.1:{}", dest.display()));
    let started = Instant::now();
    let mut client = Proc::spawn(&mut scp, "scp")?;
    let err = collect(client.stderr());
    let (ok, send) = client.wait(Duration::from_secs(env.args.timeout))?;
    let seconds = started.elapsed().as_secs_f64();
    let recv = server.stop()?;
    let err = err.join().unwrap_or_default();
    if !ok {
        return Err(format!("scp failed: {}", err.trim()));
    }
    verify_and_remove(env, &dest, "scp")?;
    Ok(RunResult {
        bytes: env.args.size,
        files: 0,
        seconds,
        send,
        recv,
        note: "aes128-gcm@openssh.com, TCP (system default congestion control)".into(),
    })
}

// ---------------------------------------------------------------------------------------------

fn setup(args: Args) -> Res<Env> {
    let ferry = sibling("ferry")?;
    let quic_copy = sibling("quic-copy")?;
    let scratch = tempfile::Builder::new()
        .prefix("ferry-loopback-bench-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("cannot create a scratch directory in {}: {e}", args.dir.display()))?
        .keep();
    *SCRATCH.lock().expect("lock") = Some(scratch.clone());
    let src = scratch.join(format!("source-{}.bin", args.size));
    eprintln!("writing {} bytes of random data to {} ...", args.size, src.display());
    let digest = make_file(&src, args.size)?;
    let s = &scratch;
    run_ok(Command::new(&ferry).arg("keygen").arg("-f").arg(s.join("ferry-id")), "ferry keygen")?;
    fs::copy(s.join("ferry-id.pub"), s.join("ferry-authorized_keys"))
        .map_err(|e| format!("authorized_keys: {e}"))?;
    let fp = run_ok(
        Command::new(&ferry)
            .args(["serve", "--print-fingerprint", "--state-dir"])
            .arg(s.join("ferry-state")),
        "ferry serve --print-fingerprint",
    )?;
    let ssh_ready = prepare_ssh(s)?;
    let wants_at_rest = args.rows.iter().any(|r| r.contains("plain") || r.contains("ssear"));
    let wants_small = args.rows.iter().any(|r| r.contains("small"));
    let mut env = Env {
        args,
        scratch,
        src,
        digest,
        ferry,
        quic_copy,
        ferry_fp: fp.trim().to_owned(),
        ssh_ready,
        at_rest: None,
        small: None,
    };
    if wants_small {
        let tree = env.scratch.join("small");
        eprintln!("writing {} files of {} bytes ...", env.args.small_files, env.args.small_size);
        let digest = make_tree(&tree, env.args.small_files, env.args.small_size)?;
        // The download row's copy, in the flag-mode docroot.
        let dl = env.scratch.join("ferry-docroot/dl/small");
        make_tree(&dl, env.args.small_files, env.args.small_size)?;
        env.small = Some((tree, digest));
    }
    if wants_at_rest {
        env.at_rest = Some(prepare_at_rest(&env)?);
        // vault's copy for the download rows: uploaded (sealed) once.
        let name = env.src.file_name().ok_or("source has no name")?.to_string_lossy().into_owned();
        at_rest_copy(&env, &env.src.display().to_string(), "vault@127.0.0.1:dl/")?;
        let stored = env.scratch.join("at-rest/vault/dl").join(&name);
        if !stored.exists() {
            return Err(format!("the sealed copy {} was not stored", stored.display()));
        }
    }
    Ok(env)
}

fn main() {
    let mut args = Args::parse();
    if args.rows.is_empty() {
        args.rows = ROWS.iter().map(|r| r.to_string()).collect();
    }
    if let Some(bad) = args.rows.iter().find(|r| !ROWS.contains(&r.as_str())) {
        eprintln!("loopback-bench: unknown row {bad:?}; rows: {}", ROWS.join(", "));
        std::process::exit(2);
    }
    let _ = ctrlc::set_handler(|| {
        for &pid in LIVE.lock().map(|l| l.clone()).unwrap_or_default().iter() {
            // SAFETY: kill(2) on our own children's pids (still registered, so unreaped).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(d) = SCRATCH.lock().ok().and_then(|s| s.clone()) {
            let _ = fs::remove_dir_all(d);
        }
        eprintln!("loopback-bench: interrupted; children killed, scratch files removed");
        std::process::exit(130);
    });
    let result = setup(args).and_then(|env| {
        let r = bench(&env);
        let _ = fs::remove_dir_all(&env.scratch);
        r
    });
    if let Err(e) = result {
        if let Some(d) = SCRATCH.lock().ok().and_then(|s| s.clone()) {
            let _ = fs::remove_dir_all(d);
        }
        eprintln!("loopback-bench: {e}");
        std::process::exit(1);
    }
}

fn bench(env: &Env) -> Res<()> {
    let a = &env.args;
    let mut json = match &a.json {
        Some(p) => Some(fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let mut rows: Vec<&str> = Vec::new();
    for r in &a.rows {
        match unavailable(env, r) {
            Some(why) => eprintln!("skipping {r}: {why}"),
            None => rows.push(r),
        }
    }
    let mut results: BTreeMap<&str, Vec<RunResult>> = BTreeMap::new();
    for round in 1..=a.rounds {
        for &row in &rows {
            let r = run_row(env, row)?;
            eprintln!(
                "round {round}/{}: {row:<17} {:>7.3} Gbit/s  {:>6.2} s  CPU send {:.2} / recv {:.2} s  \
                 RSS send {} / recv {} MiB (anon {} / {})  {}",
                a.rounds,
                r.gbps(),
                r.seconds,
                r.send.cpu_s,
                r.recv.cpu_s,
                r.send.maxrss_kib / 1024,
                r.recv.maxrss_kib / 1024,
                r.send.anon_kib / 1024,
                r.recv.anon_kib / 1024,
                r.note
            );
            if let Some(f) = json.as_mut() {
                let line = serde_json::json!({
                    "row": row, "round": round, "bytes": r.bytes, "files": r.files,
                    "seconds": r.seconds,
                    "gbit_per_s": r.gbps(), "send_maxrss_kib": r.send.maxrss_kib,
                    "recv_maxrss_kib": r.recv.maxrss_kib, "send_anon_kib": r.send.anon_kib,
                    "recv_anon_kib": r.recv.anon_kib, "send_cpu_s": r.send.cpu_s,
                    "recv_cpu_s": r.recv.cpu_s, "note": r.note,
                });
                writeln!(f, "{line}").map_err(|e| format!("writing the JSON log: {e}"))?;
            }
            results.entry(row).or_default().push(r);
        }
    }
    println!("{}", table(env, &rows, &results));
    Ok(())
}

fn table(env: &Env, rows: &[&str], results: &BTreeMap<&str, Vec<RunResult>>) -> String {
    let med = |row: &str| {
        results.get(row).map(|v| median(&v.iter().map(|r| r.gbps()).collect::<Vec<_>>()))
    };
    let quic = med("quic-cubic");
    let ferry = med("ferry-fixed");
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}", x / b),
        _ => "–".into(),
    };
    let mut t = format!(
        "\n{} rounds, {} bytes per copy ({:.2} GiB), {} -> {} over 127.0.0.1\n\n\
         | row | median Gbit/s | min–max | vs quic-cubic | vs ferry-fixed (SSEAR rows: vs plain) | CPU per GB send / recv (s) | peak RSS send / recv (MiB) | peak RssAnon send / recv (MiB) | note (last round) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        env.args.rounds,
        env.args.size,
        env.args.size as f64 / (1u64 << 30) as f64,
        env.args.dir.display(),
        env.args.dir.display(),
    );
    for &row in rows {
        let Some(v) = results.get(row) else { continue };
        let g: Vec<f64> = v.iter().map(|r| r.gbps()).collect();
        let m = median(&g);
        let min = g.iter().copied().fold(f64::INFINITY, f64::min);
        let max = g.iter().copied().fold(0.0, f64::max);
        let peak = |f: fn(&RunResult) -> u64| v.iter().map(f).max().unwrap_or(0) as f64 / 1024.0;
        t += &format!(
            "| {row} | **{m:.3}** | {min:.3}–{max:.3} | {} | {} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {} |\n",
            ratio(m, quic),
            ratio(
                m,
                match row.strip_prefix("ferry-ssear-") {
                    Some(dir) => med(&format!("ferry-plain-{dir}")),
                    None => ferry,
                }
            ),
            cpu_per_gb(v, |r| r.send.cpu_s),
            cpu_per_gb(v, |r| r.recv.cpu_s),
            peak(|r| r.send.maxrss_kib),
            peak(|r| r.recv.maxrss_kib),
            peak(|r| r.send.anon_kib),
            peak(|r| r.recv.anon_kib),
            v.last().map(|r| r.note.split(", cp said").next().unwrap_or("")).unwrap_or(""),
        );
    }
    let small: Vec<String> = rows
        .iter()
        .filter_map(|&row| {
            let v = results.get(row)?;
            let f: Vec<f64> =
                v.iter().filter(|r| r.files > 0).map(|r| r.files as f64 / r.seconds).collect();
            (!f.is_empty()).then(|| format!("| {row} | **{:.0}** |", median(&f)))
        })
        .collect();
    if !small.is_empty() {
        t += &format!(
            "\nsmall files ({} x {} bytes):\n\n| row | median files/s |\n|---|---|\n{}\n",
            env.args.small_files,
            env.args.small_size,
            small.join("\n")
        );
    }
    t
}

/// Median CPU seconds per 10^9 payload bytes.
fn cpu_per_gb(v: &[RunResult], f: fn(&RunResult) -> f64) -> f64 {
    median(&v.iter().map(|r| f(r) / (r.bytes as f64 / 1e9)).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_medians() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn parses_tool_output() {
        let line = r#"{"address":"127.0.0.1:50614","host_key":"SHA256:fZKB","event":"listening"}"#;
        assert_eq!(ferry_port(line), Some(50614));
        assert_eq!(ferry_port(r#"{"event":"stopped"}"#), None);
        assert_eq!(ferry_port("ferry serve: listening on 127.0.0.1:50614 (UDP)"), None);
        let status = "Name:\tferry\nVmHWM:\t 7788 kB\nRssAnon:\t     756 kB\nRssFile:\t 7032 kB\n";
        assert_eq!(status_field(status, "RssAnon:"), Some(756));
        assert_eq!(status_field(status, "RssShmem:"), None);
        let udp = r#"{"end":{"sum_sent":{"bytes":2000,"seconds":1.0},
            "sum_received":{"bytes":1000,"seconds":0.5,"lost_percent":50.0}}}"#;
        let (b, s, note) = parse_iperf3(udp, true).unwrap();
        assert_eq!((b, s), (1000, 0.5));
        assert!(note.contains("lost 50.0%"), "{note}");
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#, false).is_err());
    }
}
