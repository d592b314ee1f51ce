//! Benchmark rows: a tool that moves data from the client namespace to the server namespace
//! across a [`Testbed`], measured the same way for every tool.
//!
//! A row implements [`Row`]; the grid runner gives it a fresh test bed per cell, snapshots the
//! link counters around [`Row::run`] (so "bytes on the wire" is measured by the link, not
//! reported by the tool), and turns the [`RowOutcome`] into a table line. Ferry's own rows
//! (`ferry cp` with `--policy fixed` and adaptive, [`crate::ferry`]) and the quinn bulk-copy rows
//! ([`QuicRow`]) plug in by implementing [`Row`] and adding a name to [`row_by_name`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::NetemError;
use crate::ferry::{FerryPolicy, FerryRow};
use crate::netns::{self, ChildGuard, Netns};
use crate::probe::{self, IperfMode};
use crate::testbed::{CLIENT_DEV, CLIENT_IP, SERVER_DEV, SERVER_IP, Testbed};

/// What the runner asks of a row in one cell.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The link's bottleneck rate, bit/s (tools with a rate setting are set to it).
    pub rate_bps: u64,
    /// The cell's random loss rate.
    pub loss: f64,
    /// Duration of time-bounded rows (iperf3); the runner makes it at least 20 RTTs.
    pub seconds: u32,
    /// The link's round-trip time, ms.
    pub rtt_ms: u64,
    /// The file copied by file-copy rows (random bytes, generated once per size).
    pub file: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// Wall-clock limit of file-copy rows; a copy still running then is stopped and reported
    /// with the bytes that had arrived.
    pub limit: Duration,
    /// A scratch directory for this row and cell (deleted by the runner).
    pub scratch: PathBuf,
}

/// What a row measured in one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOutcome {
    /// Application bytes delivered and verified at the receiver.
    pub payload_bytes: u64,
    /// Seconds over which they were delivered (the completion time of a finished copy).
    pub seconds: f64,
    /// True when the whole file arrived intact (always false for time-bounded rows).
    pub completed: bool,
    /// Free-form remark for the table (e.g. "timed out", the cipher used).
    pub note: String,
    /// For rows that watch their copy arrive (Ferry's): the ramp and the rate after it.
    pub steady: Option<Steady>,
}

/// How a copy ramped up and what it held after the ramp, from the bytes that had arrived,
/// sampled while it ran ([`steady_from_samples`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steady {
    /// Seconds from the command's start until the goodput over the sampling window first
    /// reached 90% of the payload ceiling (handshake and set-up included).
    pub ramp_s: f64,
    /// Goodput from the end of the ramp until 95% of the file had arrived (the session's tail
    /// excluded), bit/s.
    pub steady_bps: f64,
    /// That goodput over the row's payload ceiling `C x (1-p) x payload/datagram`.
    pub of_payload_ceiling: f64,
}

/// [`Steady`] from `(seconds since start, bytes arrived)` samples of a copy of `total` bytes
/// whose payload ceiling is `ceiling_bps`, judging the ramp over windows of `window_s`. `None`
/// when the copy never reached 90% of the ceiling, or reached it too late to leave a stretch of
/// at least one window before 95% had arrived.
pub fn steady_from_samples(
    samples: &[(f64, u64)],
    total: u64,
    ceiling_bps: f64,
    window_s: f64,
) -> Option<Steady> {
    let rate = |a: (f64, u64), b: (f64, u64)| (b.1 - a.1) as f64 * 8.0 / (b.0 - a.0);
    let mut ramp = None;
    for (j, &b) in samples.iter().enumerate() {
        // The latest sample at least a window before this one.
        let Some(a) = samples[..j].iter().rev().find(|a| b.0 - a.0 >= window_s) else { continue };
        if rate(*a, b) >= 0.9 * ceiling_bps {
            ramp = Some(b);
            break;
        }
    }
    let start = ramp?;
    let end = *samples.iter().find(|s| s.1 as f64 >= 0.95 * total as f64)?;
    if end.0 - start.0 < window_s {
        return None;
    }
    let steady_bps = rate(start, end);
    Some(Steady { ramp_s: start.0, steady_bps, of_payload_ceiling: steady_bps / ceiling_bps })
}

/// One tool in the comparison.
pub trait Row: std::fmt::Debug {
    /// Name shown in the table and the plots.
    fn name(&self) -> String;
    /// `Err(reason)` when the tool cannot run on this machine.
    fn available(&self) -> Result<(), String>;
    /// Moves data client -> server across `tb`.
    fn run(&self, tb: &Testbed, w: &Workload) -> Result<RowOutcome, NetemError>;
}

/// The rows this crate knows, by name: `iperf3-cubic`, `iperf3-bbr`, `scp`, `uftp`,
/// `ferry-default`, `ferry-fixed`, `ferry-adaptive` (these three in [`crate::ferry`]), `quic-cubic`, `quic-bbr`
/// ([`QuicRow`]).
pub fn row_by_name(name: &str) -> Option<Box<dyn Row>> {
    match name {
        "iperf3-cubic" => Some(Box::new(Iperf3Row { cc: "cubic" })),
        "iperf3-bbr" => Some(Box::new(Iperf3Row { cc: "bbr" })),
        "scp" => Some(Box::new(ScpRow)),
        "uftp" => Some(Box::new(UftpRow)),
        "ferry-default" => Some(Box::new(FerryRow { policy: FerryPolicy::Default })),
        "ferry-fixed" => Some(Box::new(FerryRow { policy: FerryPolicy::Fixed })),
        "ferry-adaptive" => Some(Box::new(FerryRow { policy: FerryPolicy::Adaptive })),
        "quic-cubic" => Some(Box::new(QuicRow { cc: "cubic" })),
        "quic-bbr" => Some(Box::new(QuicRow { cc: "bbr" })),
        _ => None,
    }
}

/// Every row name [`row_by_name`] accepts.
pub const ROW_NAMES: &[&str] = &[
    "iperf3-cubic",
    "iperf3-bbr",
    "scp",
    "uftp",
    "ferry-default",
    "ferry-fixed",
    "ferry-adaptive",
    "quic-cubic",
    "quic-bbr",
];

fn have(prog: &str) -> Result<(), String> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("{prog} is not installed (scripts/install-deps.sh installs it)"))
    }
}

/// Kernel TCP memory to memory with iperf3 (time-bounded).
#[derive(Debug)]
pub struct Iperf3Row {
    /// Congestion control: `cubic` or `bbr`.
    pub cc: &'static str,
}

impl Row for Iperf3Row {
    fn name(&self) -> String {
        format!("iperf3 TCP {}", self.cc)
    }
    fn available(&self) -> Result<(), String> {
        have("iperf3")
    }
    fn run(&self, tb: &Testbed, w: &Workload) -> Result<RowOutcome, NetemError> {
        let r = probe::iperf3(tb, IperfMode::Tcp(self.cc), w.seconds, 5201)?;
        Ok(RowOutcome {
            steady: None,
            payload_bytes: r.bytes_received,
            seconds: r.seconds,
            completed: false,
            note: format!("{} s, memory to memory", w.seconds),
        })
    }
}

/// Waits until something listens on `port` (TCP or UDP) inside `ns`, at most 5 s.
pub fn wait_listening(ns: &Netns, port: u16, udp: bool) -> Result<(), NetemError> {
    let flag = if udp { "-lunH" } else { "-ltnH" };
    for _ in 0..250 {
        let ss = netns::run(ns.command("ss").args([flag, &format!("sport = :{port}")]))
            .unwrap_or_default();
        if !ss.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(NetemError::Emulator(format!("nothing listens on port {port} in {} after 5 s", ns.name())))
}

/// Compares two files byte for byte; returns how many leading bytes of `got` are present and
/// whether it is identical to `want`.
pub fn verify_copy(want: &Path, got: &Path) -> Result<(u64, bool), NetemError> {
    let io = |what: &str, e| NetemError::Io { what: what.to_string(), source: e };
    let a = std::fs::read(want).map_err(|e| io("reading the source file", e))?;
    let b = match std::fs::read(got) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, false)),
        Err(e) => return Err(io("reading the copy", e)),
    };
    Ok((b.len() as u64, a == b))
}

/// Writes `bytes` of pseudo-random data (incompressible, so no tool can cheat by compressing).
pub fn make_file(path: &Path, bytes: u64, seed: u64) -> Result<(), NetemError> {
    let io = |e| NetemError::Io { what: format!("writing {}", path.display()), source: e };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut rng = crate::rng::Rng::new(seed);
    let mut left = bytes;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(io)?;
        left -= n as u64;
    }
    f.flush().map_err(io)
}

fn file_copy_outcome(
    w: &Workload,
    dest: &Path,
    started: Instant,
    in_time: bool,
    note: &str,
) -> Result<RowOutcome, NetemError> {
    let seconds = started.elapsed().as_secs_f64();
    let (have, same) = verify_copy(&w.file, dest)?;
    if in_time && !same {
        return Err(NetemError::Emulator(format!(
            "{note}: the copy differs from the source ({have} of {} bytes)",
            w.file_bytes
        )));
    }
    Ok(RowOutcome {
        steady: None,
        payload_bytes: if same { w.file_bytes } else { have },
        seconds,
        completed: same,
        note: if same {
            note.to_string()
        } else {
            format!("{note}; stopped after {:.0} s", w.limit.as_secs_f64())
        },
    })
}

/// `scp` over a throwaway `sshd` in the server namespace: file to file, over TCP CUBIC (Linux's
/// usual default congestion control, set on the routes of both ends), AES-128-GCM.
#[derive(Debug)]
pub struct ScpRow;

impl Row for ScpRow {
    fn name(&self) -> String {
        "scp (TCP cubic)".into()
    }
    fn available(&self) -> Result<(), String> {
        have("scp")?;
        have("ssh-keygen")?;
        if Path::new("/usr/sbin/sshd").exists() {
            Ok(())
        } else {
            Err("/usr/sbin/sshd is not installed (openssh-server)".into())
        }
    }
    fn run(&self, tb: &Testbed, w: &Workload) -> Result<RowOutcome, NetemError> {
        let d = &w.scratch;
        let io = |what: &str, e| NetemError::Io { what: what.to_string(), source: e };
        // Only the initial namespace may change the default to a restricted algorithm, so
        // CUBIC is set per route (`congctl`), on both ends.
        tb.client().ip(&[
            "route",
            "replace",
            &format!("{SERVER_IP}/32"),
            "dev",
            CLIENT_DEV,
            "congctl",
            "cubic",
        ])?;
        tb.server().ip(&[
            "route",
            "replace",
            &format!("{CLIENT_IP}/32"),
            "dev",
            SERVER_DEV,
            "congctl",
            "cubic",
        ])?;
        let keygen = |file: &Path| {
            netns::run(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(file),
            )
            .map(|_| ())
        };
        keygen(&d.join("hostkey"))?;
        keygen(&d.join("id"))?;
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys"))
            .map_err(|e| io("authorized_keys", e))?;
        let hostpub =
            std::fs::read_to_string(d.join("hostkey.pub")).map_err(|e| io("host key", e))?;
        std::fs::write(d.join("known_hosts"), format!("{SERVER_IP} {hostpub}"))
            .map_err(|e| io("known_hosts", e))?;
        let config = format!(
            "Port 22\nListenAddress {SERVER_IP}\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPidFile {d}/sshd.pid\nSubsystem sftp internal-sftp\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| io("sshd_config", e))?;
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").map_err(|e| io("creating /run/sshd", e))?;
        let mut sshd = tb.server().command("/usr/sbin/sshd");
        sshd.args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _sshd = ChildGuard::spawn(&mut sshd, "sshd")?;
        wait_listening(tb.server(), 22, false)?;
        let dest = d.join("received.bin");
        let mut scp = tb.client().command("scp");
        scp.args(["-q", "-B", "-c", "aes128-gcm@openssh.com", "-i"])
            .arg(d.join("id"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", d.join("known_hosts").display()))
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg(&w.file)
            .arg(format!("root@{SERVER_IP}:{}", dest.display()));
        let started = Instant::now();
        let (_, _, in_time) = probe::run_bounded(&mut scp, w.limit)?;
        file_copy_outcome(w, &dest, started, in_time, "scp, aes128-gcm")
    }
}

/// UFTP (Debian `uftp`/`uftpd`), unicast to the server address, closed group (`-H` with the
/// receiver's id), AES-128-GCM with an ECDH key exchange, sending at the link rate (`-R`,
/// UFTP's fixed-rate mode).
#[derive(Debug)]
pub struct UftpRow;

impl Row for UftpRow {
    fn name(&self) -> String {
        "UFTP".into()
    }
    fn available(&self) -> Result<(), String> {
        have("uftp")?;
        have("uftpd")
    }
    fn run(&self, tb: &Testbed, w: &Workload) -> Result<RowOutcome, NetemError> {
        let d = &w.scratch;
        let recv = d.join("recv");
        std::fs::create_dir_all(&recv)
            .map_err(|e| NetemError::Io { what: "creating the receive dir".into(), source: e })?;
        let mut uftpd = tb.server().command("uftpd");
        uftpd
            .args([
                "-d",
                "-E",
                "-p",
                "1044",
                "-I",
                SERVER_DEV,
                "-B",
                "8388608",
                "-K",
                "ec:prime256v1",
                "-D",
            ])
            .arg(&recv)
            .arg("-L")
            .arg(d.join("uftpd.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _uftpd = ChildGuard::spawn(&mut uftpd, "uftpd")?;
        wait_listening(tb.server(), 1044, true)?;
        let rate_kbps = (w.rate_bps / 1000).to_string();
        let mut uftp = tb.client().command("uftp");
        // Closed group with the receiver's id (its IPv4 address, uftpd's default), so the
        // sender starts as soon as it has registered instead of announcing for a fixed time.
        let receiver_id =
            SERVER_IP.split('.').fold(0u32, |acc, o| (acc << 8) | o.parse::<u32>().unwrap_or(0));
        uftp.args(["-M", SERVER_IP, "-I", CLIENT_IP, "-H", &format!("0x{receiver_id:08X}")])
            .args(["-p", "1044", "-R", &rate_kbps])
            .args(["-Y", "aes128-gcm", "-h", "sha256", "-e", "ecdh_ecdsa", "-B", "8388608"])
            // The base directory stripped from the sent path must end in a slash.
            .arg("-E")
            .arg(format!("{}/", w.file.parent().unwrap_or(Path::new("")).display()))
            .arg("-L")
            .arg(d.join("uftp.log"))
            .arg(&w.file);
        let started = Instant::now();
        let (_, _, in_time) = probe::run_bounded(&mut uftp, w.limit)?;
        let name = w.file.file_name().unwrap_or_default();
        file_copy_outcome(
            w,
            &recv.join(name),
            started,
            in_time,
            "unicast, aes128-gcm, -R link rate",
        )
    }
}

/// `quic-copy` (benches/src/bin/quic-copy.rs): a quinn bulk file copy on one stream, flow-control
/// windows large enough not to limit, congestion control `cubic` (quinn's default) or `bbr`. The
/// server writes the file in the server namespace and answers with its BLAKE3, which the sender
/// checks; the runner compares the copy with the source as for every file-copy row.
#[derive(Debug)]
pub struct QuicRow {
    /// Congestion control: `cubic` or `bbr`.
    pub cc: &'static str,
}

/// `quic-copy` in the directory of the running executable or its parent (as for `ferry-linkem`).
pub fn quic_copy_near_current_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let here = dir.join("quic-copy");
    if here.exists() { here } else { dir.parent().map(|p| p.join("quic-copy")).unwrap_or(here) }
}

impl Row for QuicRow {
    fn name(&self) -> String {
        format!("QUIC quinn {}", self.cc)
    }
    fn available(&self) -> Result<(), String> {
        let bin = quic_copy_near_current_exe();
        if bin.exists() {
            Ok(())
        } else {
            Err(format!(
                "{} not found: build it next to this runner with \
                 `cargo build --release -p ferry-benches --bin quic-copy`",
                bin.display()
            ))
        }
    }
    fn run(&self, tb: &Testbed, w: &Workload) -> Result<RowOutcome, NetemError> {
        use std::io::BufRead;
        const PORT: u16 = 4433;
        let bin = quic_copy_near_current_exe();
        let bin = bin.to_str().ok_or_else(|| NetemError::Config("non-UTF-8 path".into()))?;
        let dest = w.scratch.join("quic-received.bin");
        let mut serve = tb.server().command(bin);
        serve
            .args(["serve", "--listen", &format!("{SERVER_IP}:{PORT}"), "--cc", self.cc])
            .arg("--out")
            .arg(&dest)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut server = ChildGuard::spawn(&mut serve, "quic-copy serve")?;
        // First line: {"listening":..., "cert_sha256":...}; the reader stays open until the end
        // so the server can print its result line.
        let mut out = std::io::BufReader::new(
            server.child().stdout.take().ok_or_else(|| NetemError::Emulator("no pipe".into()))?,
        );
        let mut hello = String::new();
        out.read_line(&mut hello)
            .map_err(|e| NetemError::Io { what: "reading quic-copy serve".into(), source: e })?;
        let v: serde_json::Value = serde_json::from_str(&hello).map_err(|_| NetemError::Parse {
            what: "quic-copy serve's address".into(),
            text: hello.clone(),
        })?;
        let cert = v["cert_sha256"].as_str().unwrap_or_default().to_string();
        wait_listening(tb.server(), PORT, true)?;
        let mut send = tb.client().command(bin);
        send.args(["send", "--connect", &format!("{SERVER_IP}:{PORT}"), "--cc", self.cc])
            .args(["--cert-sha256", &cert])
            .arg("--file")
            .arg(&w.file);
        let started = Instant::now();
        let (_, _, in_time) = probe::run_bounded(&mut send, w.limit)?;
        let outcome = file_copy_outcome(w, &dest, started, in_time, &format!("quinn {}", self.cc));
        drop(out);
        outcome
    }
}

#[cfg(test)]
mod steady_tests {
    use super::*;

    /// Nothing for a second, a ramp, 80 Mbit/s held, a slow tail.
    #[test]
    fn ramp_and_steady_rate_from_samples() {
        let mut samples = Vec::new();
        let (mut t, mut bytes) = (0.0f64, 0u64);
        let total = 100_000_000u64;
        while bytes < total {
            samples.push((t, bytes));
            let rate = if t < 1.0 {
                0.0
            } else if t < 2.0 {
                80e6 * (t - 1.0)
            } else if (bytes as f64) < 0.97 * total as f64 {
                80e6
            } else {
                8e6
            };
            bytes = (bytes + (rate * 0.05 / 8.0) as u64).min(total);
            t += 0.05;
        }
        samples.push((t, bytes));
        let s = steady_from_samples(&samples, total, 80e6, 0.5).expect("ramped");
        assert!((2.0..2.3).contains(&s.ramp_s), "{s:?}");
        assert!((s.of_payload_ceiling - 1.0).abs() < 0.02, "{s:?}");
        // A copy that never gets there has no steady figure.
        assert_eq!(steady_from_samples(&samples, total, 200e6, 0.5), None);
    }
}
