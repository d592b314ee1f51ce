//! A test bed: a client and a server namespace joined by one emulated link, through one of two
//! back-ends behind the [`LinkBackend`] trait:
//!
//! * [`BackendKind::Netem`]: a veth pair between the two namespaces with `tc qdisc ... netem`
//!   on each end (only where the kernel has `sch_netem`; detected at run time by
//!   [`netem_available`]);
//! * [`BackendKind::Emulator`]: `ferry-linkem`, the project's user-space emulator, running in a
//!   third ("router") namespace and holding one TUN device in the client namespace and one in
//!   the server namespace (the devices are created in the router namespace and moved).
//!
//! Addresses: the client is [`CLIENT_IP`], the server [`SERVER_IP`], on point-to-point links
//! that exist only inside the namespaces.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use crate::emulator::{LinkConfig, LinkStats};
use crate::error::NetemError;
use crate::model::DirectionConfig;
use crate::netns::{self, ChildGuard, Netns};

/// The client's address inside its namespace.
pub const CLIENT_IP: &str = "10.201.0.1";
/// The server's address inside its namespace.
pub const SERVER_IP: &str = "10.201.0.2";
/// Interface name of the link end in the client namespace.
pub const CLIENT_DEV: &str = "fe-a";
/// Interface name of the link end in the server namespace.
pub const SERVER_DEV: &str = "fe-b";
/// MTU of the emulated link.
pub const MTU: u32 = 1500;

/// Which back-end emulates the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BackendKind {
    /// Kernel `tc qdisc netem` on a veth pair.
    Netem,
    /// The user-space `ferry-linkem` over TUN devices.
    Emulator,
    /// A plain veth pair without any impairment: the reference the emulator's ceiling is
    /// compared with.
    Veth,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Netem => "netem",
            Self::Emulator => "ferry-linkem",
            Self::Veth => "plain veth",
        })
    }
}

/// The back-end requested by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// netem where the kernel has it, else the emulator.
    Auto,
    /// netem or fail.
    Netem,
    /// The user-space emulator.
    Emulator,
    /// A plain veth pair, only for an unimpaired configuration (reference measurements).
    Veth,
}

/// The interface both back-ends offer once the link is up.
pub trait LinkBackend: std::fmt::Debug + Send {
    /// Which back-end this is.
    fn kind(&self) -> BackendKind;
    /// Per-direction counters since the link was created.
    fn stats(&mut self) -> Result<LinkStats, NetemError>;
}

/// How to build a test bed.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// Back-end to use.
    pub backend: BackendChoice,
    /// Path of the `ferry-linkem` binary (needed for the emulator back-end).
    pub linkem: PathBuf,
    /// Seed of the emulator's random streams.
    pub seed: u64,
    /// Run the emulator under a real-time scheduling class (`chrt -r 20`, where `chrt`
    /// exists), so that on a busy machine its delay line is not late because ordinary
    /// processes (the endpoints, builds) hold the CPUs. The kernel's RT throttling still
    /// leaves 5% of each CPU to everything else.
    pub realtime: bool,
}

impl TestbedOptions {
    /// Emulator back-end with `ferry-linkem` found next to the running executable.
    pub fn emulator() -> Self {
        Self {
            backend: BackendChoice::Emulator,
            linkem: linkem_near_current_exe(),
            seed: 1,
            realtime: true,
        }
    }
}

/// `ferry-linkem` in the directory of the running executable or its parent (cargo puts test
/// binaries in `target/<profile>/deps/`).
pub fn linkem_near_current_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let here = dir.join("ferry-linkem");
    if here.exists() { here } else { dir.parent().map(|p| p.join("ferry-linkem")).unwrap_or(here) }
}

/// True when `chrt -r 20` can run a program here (root with real-time scheduling allowed; a
/// container may forbid it). Probed once per process.
pub fn realtime_allowed() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        Path::new("/usr/bin/chrt").exists()
            && netns::output(Command::new("/usr/bin/chrt").args(["-r", "20", "true"]))
                .map(|o| o.status.success())
                .unwrap_or(false)
    })
}

/// True when `tc qdisc ... netem` works on this kernel (probed in a throwaway namespace).
pub fn netem_available() -> bool {
    let Ok(ns) = Netns::create("probe") else {
        return false;
    };
    let ok = netns::run(Command::new("tc").args([
        "-n",
        ns.name(),
        "qdisc",
        "add",
        "dev",
        "lo",
        "root",
        "netem",
        "delay",
        "1ms",
    ]))
    .is_ok();
    drop(ns);
    ok
}

/// A client and a server namespace joined by an emulated link. Dropping it stops the emulator
/// and deletes the namespaces (also on panic: everything is owned by guards).
#[derive(Debug)]
pub struct Testbed {
    // Field order is drop order: the link (and its emulator process) goes first.
    link: Box<dyn LinkBackend>,
    client: Netns,
    server: Netns,
    _router: Option<Netns>,
    config: LinkConfig,
}

impl Testbed {
    /// Creates the namespaces and the link. Stale namespaces of dead earlier runs are removed
    /// first.
    pub fn new(config: &LinkConfig, opts: &TestbedOptions) -> Result<Self, NetemError> {
        config.forward.validate().map_err(NetemError::Config)?;
        config.reverse.validate().map_err(NetemError::Config)?;
        netns::cleanup_stale();
        let kind = match opts.backend {
            BackendChoice::Emulator => BackendKind::Emulator,
            BackendChoice::Netem if netem_available() => BackendKind::Netem,
            BackendChoice::Netem => {
                return Err(NetemError::Unavailable(
                    "this kernel has no sch_netem (tc qdisc netem)".into(),
                ));
            }
            BackendChoice::Auto if netem_available() => BackendKind::Netem,
            BackendChoice::Auto => BackendKind::Emulator,
            BackendChoice::Veth if *config == LinkConfig::default() => BackendKind::Veth,
            BackendChoice::Veth => {
                return Err(NetemError::Config(
                    "a plain veth pair cannot impair the link; use the emulator or netem".into(),
                ));
            }
        };
        let client = Netns::create("c")?;
        let server = Netns::create("s")?;
        let (link, router): (Box<dyn LinkBackend>, Option<Netns>) = match kind {
            BackendKind::Emulator => {
                let router = Netns::create("r")?;
                let link = EmulatorLink::start(config, opts, &router, &client, &server)?;
                (Box::new(link), Some(router))
            }
            BackendKind::Netem => {
                (Box::new(NetemLink::start(config, &client, &server, true)?), None)
            }
            BackendKind::Veth => {
                (Box::new(NetemLink::start(config, &client, &server, false)?), None)
            }
        };
        for ns in [&client, &server] {
            // Let TCP windows grow to the bandwidth-delay products of the grid (up to 1 Gbit/s
            // x 600 ms = 75 MB), so that the TCP rows are limited by TCP, not by buffers.
            ns.sysctl("net.ipv4.tcp_rmem", "4096 131072 134217728")?;
            ns.sysctl("net.ipv4.tcp_wmem", "4096 16384 134217728")?;
            ns.sysctl("net.ipv4.tcp_no_metrics_save", "1")?;
        }
        Ok(Self { link, client, server, _router: router, config: config.clone() })
    }

    /// The client namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The server namespace.
    pub fn server(&self) -> &Netns {
        &self.server
    }

    /// The back-end in use.
    pub fn kind(&self) -> BackendKind {
        self.link.kind()
    }

    /// The link configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Counters of both directions, including kernel-side drops at the link ends.
    pub fn stats(&mut self) -> Result<LinkStats, NetemError> {
        self.link.stats()
    }
}

/// `ferry-linkem` in the router namespace.
#[derive(Debug)]
struct EmulatorLink {
    proc: ChildGuard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    client_ns: String,
    server_ns: String,
}

impl EmulatorLink {
    fn start(
        config: &LinkConfig,
        opts: &TestbedOptions,
        router: &Netns,
        client: &Netns,
        server: &Netns,
    ) -> Result<Self, NetemError> {
        if !opts.linkem.exists() {
            return Err(NetemError::Emulator(format!(
                "{} not found; build it with `cargo build -p ferry-netem --bin ferry-linkem`",
                opts.linkem.display()
            )));
        }
        let json = serde_json::to_string(config).map_err(|e| NetemError::Config(e.to_string()))?;
        let chrt = opts.realtime && realtime_allowed();
        let mut cmd = if chrt {
            let mut c = router.command("/usr/bin/chrt");
            c.args(["-r", "20"]).arg(&opts.linkem);
            c
        } else {
            router.command(&opts.linkem.to_string_lossy())
        };
        cmd.args([
            "--tun-a",
            CLIENT_DEV,
            "--tun-b",
            SERVER_DEV,
            "--seed",
            &opts.seed.to_string(),
            "--config",
            &json,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut proc = ChildGuard::spawn(&mut cmd, "ferry-linkem")?;
        let stdin = proc
            .child()
            .stdin
            .take()
            .ok_or_else(|| NetemError::Emulator("no stdin pipe".into()))?;
        let stdout = proc
            .child()
            .stdout
            .take()
            .ok_or_else(|| NetemError::Emulator("no stdout pipe".into()))?;
        let mut link = Self {
            proc,
            stdin,
            stdout: BufReader::new(stdout),
            client_ns: client.name().into(),
            server_ns: server.name().into(),
        };
        let ready = link.read_line()?;
        if !ready.contains("\"ready\"") {
            return Err(NetemError::Emulator(format!("unexpected start-up line: {ready}")));
        }
        for (ns, dev, addr, peer) in
            [(client, CLIENT_DEV, CLIENT_IP, SERVER_IP), (server, SERVER_DEV, SERVER_IP, CLIENT_IP)]
        {
            router.ip(&["link", "set", dev, "netns", ns.name()])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr}/32"),
                "peer",
                &format!("{peer}/32"),
                "dev",
                dev,
            ])?;
            ns.ip(&["link", "set", dev, "mtu", &MTU.to_string(), "txqueuelen", "10000", "up"])?;
        }
        Ok(link)
    }

    fn read_line(&mut self) -> Result<String, NetemError> {
        let mut line = String::new();
        let n =
            self.stdout.read_line(&mut line).map_err(|e| NetemError::Emulator(e.to_string()))?;
        if n == 0 {
            let status = self.proc.child().try_wait().ok().flatten();
            return Err(NetemError::Emulator(format!(
                "ferry-linkem exited ({status:?}); see its stderr above"
            )));
        }
        Ok(line)
    }
}

impl LinkBackend for EmulatorLink {
    fn kind(&self) -> BackendKind {
        BackendKind::Emulator
    }

    fn stats(&mut self) -> Result<LinkStats, NetemError> {
        self.stdin
            .write_all(b"stats\n")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| NetemError::Emulator(e.to_string()))?;
        let line = self.read_line()?;
        let mut stats: LinkStats = serde_json::from_str(&line)
            .map_err(|_| NetemError::Parse { what: "emulator stats".into(), text: line })?;
        // Packets the kernel could not queue towards the emulator (TUN queue full).
        let counter = |ns: &str, dev: &str| -> Result<u64, NetemError> {
            let path = format!("/sys/class/net/{dev}/statistics/tx_dropped");
            let s = netns::run(Command::new("ip").args(["netns", "exec", ns, "cat", &path]))?;
            s.trim().parse().map_err(|_| NetemError::Parse { what: path, text: s })
        };
        stats.forward.kernel_drops = counter(&self.client_ns, CLIENT_DEV)?;
        stats.reverse.kernel_drops = counter(&self.server_ns, SERVER_DEV)?;
        Ok(stats)
    }
}

/// Kernel netem on a veth pair (or the bare veth pair when `netem` is false).
#[derive(Debug)]
struct NetemLink {
    client_ns: String,
    server_ns: String,
    netem: bool,
}

/// `tc qdisc add ... netem` arguments for one direction.
pub fn netem_args(d: &DirectionConfig) -> Vec<String> {
    let mut a = vec!["netem".to_string()];
    // netem's limit counts every packet it holds, the delay line included: size it for the
    // bottleneck queue plus one direction's delay at line rate.
    let in_delay =
        d.rate_bps.map_or(100_000, |r| crate::model::bdp_bytes(r, d.delay_us + d.jitter_us));
    let q = d.effective_queue_bytes().min(1 << 40);
    a.push("limit".into());
    a.push(((q + in_delay) / 1000 + 100).to_string());
    if d.delay_us > 0 || d.jitter_us > 0 {
        a.extend(["delay".into(), format!("{}us", d.delay_us)]);
        if d.jitter_us > 0 {
            a.push(format!("{}us", d.jitter_us));
        }
    }
    if let Some(g) = d.gilbert {
        a.extend([
            // netem's order: p (good->bad), r (bad->good), 1-h (loss in bad), 1-k (loss in good).
            "loss".into(),
            "gemodel".into(),
            format!("{}%", g.p_good_to_bad * 100.0),
            format!("{}%", g.p_bad_to_good * 100.0),
            format!("{}%", g.loss_bad * 100.0),
            format!("{}%", g.loss_good * 100.0),
        ]);
    } else if d.loss > 0.0 {
        a.extend(["loss".into(), "random".into(), format!("{}%", d.loss * 100.0)]);
    }
    if d.duplicate > 0.0 {
        a.extend(["duplicate".into(), format!("{}%", d.duplicate * 100.0)]);
    }
    if d.reorder > 0.0 {
        // netem sends the reordered share at once (ahead of the delayed rest), the emulator holds
        // it back: both make later packets overtake earlier ones.
        a.extend(["reorder".into(), format!("{}%", d.reorder * 100.0)]);
    }
    if let Some(r) = d.rate_bps {
        a.extend(["rate".into(), format!("{r}bit")]);
    }
    a
}

impl NetemLink {
    fn start(
        config: &LinkConfig,
        client: &Netns,
        server: &Netns,
        netem: bool,
    ) -> Result<Self, NetemError> {
        client.ip(&[
            "link",
            "add",
            CLIENT_DEV,
            "type",
            "veth",
            "peer",
            "name",
            SERVER_DEV,
            "netns",
            server.name(),
        ])?;
        for (ns, dev, addr, dir) in [
            (client, CLIENT_DEV, CLIENT_IP, &config.forward),
            (server, SERVER_DEV, SERVER_IP, &config.reverse),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.ip(&["link", "set", dev, "mtu", &MTU.to_string(), "up"])?;
            if !netem {
                continue;
            }
            let mut tc = Command::new("tc");
            tc.args(["-n", ns.name(), "qdisc", "add", "dev", dev, "root"]).args(netem_args(dir));
            netns::run(&mut tc)?;
        }
        Ok(Self { client_ns: client.name().into(), server_ns: server.name().into(), netem })
    }
}

impl LinkBackend for NetemLink {
    fn kind(&self) -> BackendKind {
        if self.netem { BackendKind::Netem } else { BackendKind::Veth }
    }

    fn stats(&mut self) -> Result<LinkStats, NetemError> {
        if !self.netem {
            let dev = |ns: &str, dev: &str, c: &str| -> Result<u64, NetemError> {
                let path = format!("/sys/class/net/{dev}/statistics/{c}");
                let s = netns::run(Command::new("ip").args(["netns", "exec", ns, "cat", &path]))?;
                s.trim().parse().map_err(|_| NetemError::Parse { what: path, text: s })
            };
            let dir = |from_ns: &str,
                       from: &str,
                       to_ns: &str,
                       to: &str|
             -> Result<crate::emulator::DirectionStats, NetemError> {
                Ok(crate::emulator::DirectionStats {
                    rx_packets: dev(from_ns, from, "tx_packets")?,
                    rx_bytes: dev(from_ns, from, "tx_bytes")?,
                    tx_packets: dev(to_ns, to, "rx_packets")?,
                    tx_bytes: dev(to_ns, to, "rx_bytes")?,
                    kernel_drops: dev(from_ns, from, "tx_dropped")? + dev(to_ns, to, "rx_dropped")?,
                    ..Default::default()
                })
            };
            return Ok(LinkStats {
                forward: dir(&self.client_ns, CLIENT_DEV, &self.server_ns, SERVER_DEV)?,
                reverse: dir(&self.server_ns, SERVER_DEV, &self.client_ns, CLIENT_DEV)?,
            });
        }
        let read = |ns: &str, dev: &str| -> Result<crate::emulator::DirectionStats, NetemError> {
            let text = netns::run(
                Command::new("tc").args(["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev]),
            )?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| NetemError::Parse { what: "tc -s -j".into(), text: text.clone() })?;
            let q = v.as_array().and_then(|a| a.iter().find(|q| q["kind"] == "netem")).ok_or_else(
                || NetemError::Parse { what: "netem qdisc".into(), text: text.clone() },
            )?;
            let n = |k: &str| q[k].as_u64().unwrap_or(0);
            // netem reports one drop counter for every cause; they are all counted as random loss.
            Ok(crate::emulator::DirectionStats {
                rx_packets: n("packets") + n("drops") + n("qlen"),
                rx_bytes: n("bytes") + n("backlog"),
                tx_packets: n("packets"),
                tx_bytes: n("bytes"),
                drop_random: n("drops"),
                in_flight: n("qlen"),
                ..Default::default()
            })
        };
        Ok(LinkStats {
            forward: read(&self.client_ns, CLIENT_DEV)?,
            reverse: read(&self.server_ns, SERVER_DEV)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GilbertElliott;

    #[test]
    fn netem_arguments_cover_every_impairment() {
        let d = DirectionConfig {
            delay_us: 50_000,
            jitter_us: 1_000,
            loss: 0.01,
            rate_bps: Some(100_000_000),
            queue_bytes: Some(1_250_000),
            reorder: 0.05,
            duplicate: 0.001,
            ..Default::default()
        };
        let a = netem_args(&d).join(" ");
        // Limit in packets: (1.25 MB queue + 51 ms at 100 Mbit/s = 637.5 kB) / 1000 B + 100.
        assert_eq!(
            a,
            "netem limit 1987 delay 50000us 1000us loss random 1% duplicate 0.1% reorder 5% rate 100000000bit"
        );
        let g = DirectionConfig {
            gilbert: Some(GilbertElliott::with_mean(0.01, 4.0)),
            ..Default::default()
        };
        let a = netem_args(&g).join(" ");
        assert!(a.contains("loss gemodel"), "{a}");
        assert!(a.contains(" 25% 100% 0%"), "{a}");
    }
}
