//! Isolated test hosts: Linux network namespaces created and deleted by this harness (through
//! `ip netns`), and child processes that are killed when their guard is dropped.
//!
//! Every namespace is named `fnm-<pid>-<n>-<role>`, `<pid>` being the harness process. A later
//! run deletes namespaces whose harness process is gone ([`cleanup_stale`]), so a run killed by
//! `SIGKILL` leaves nothing behind for long. Nothing here touches the host's own interfaces:
//! links are created directly inside the namespaces.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::NetemError;

/// The prefix shared by every namespace this harness creates.
pub const PREFIX: &str = "fnm-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion and returns its stdout, or a typed error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, NetemError> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(NetemError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command to completion and returns its whole output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output, NetemError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| NetemError::Spawn { command: describe(cmd), source: e })
}

/// `prog arg arg ...` for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// True when this process runs as root (uid 0), read from `/proc/self/status`.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Why namespaced tests cannot run here, or `None` when they can (root, `ip netns` works).
pub fn unavailable_reason() -> Option<String> {
    if !is_root() {
        return Some("not running as root (network namespaces and TUN devices need root)".into());
    }
    if output(Command::new("ip").args(["netns", "list"]))
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return Some(
            "`ip netns` is unavailable (install iproute2: scripts/install-deps.sh)".into(),
        );
    }
    let probe =
        format!("{PREFIX}{}-probe{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    match Netns::create_named(&probe) {
        Ok(ns) => drop(ns),
        Err(e) => return Some(format!("cannot create a network namespace: {e}")),
    }
    None
}

/// A network namespace owned by this process; deleted (with every process still in it
/// killed) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fnm-<pid>-<n>-<role>` with its loopback up.
    pub fn create(role: &str) -> Result<Self, NetemError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::create_named(&format!("{PREFIX}{}-{n}-{role}", std::process::id()))
    }

    fn create_named(name: &str) -> Result<Self, NetemError> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.to_string() };
        // IPv4 only: no router solicitations or MLD reports on the measured links.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <prog>`: a command that runs inside the namespace.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetemError> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetemError> {
        run(self.command("sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(|_| ())
    }

    /// Reads an interface counter (`/sys/class/net/<dev>/statistics/<counter>`) inside the
    /// namespace.
    pub fn counter(&self, dev: &str, counter: &str) -> Result<u64, NetemError> {
        let path = format!("/sys/class/net/{dev}/statistics/{counter}");
        let s = run(self.command("cat").arg(&path))?;
        s.trim().parse().map_err(|_| NetemError::Parse { what: path, text: s })
    }

    /// Pids of the processes living in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_of(&self.name)
    }
}

fn pids_of(name: &str) -> Vec<u32> {
    run(Command::new("ip").args(["netns", "pids", name]))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_pids_and_delete(name: &str) {
    for pid in pids_of(name) {
        let _ = output(Command::new("kill").args(["-KILL", &pid.to_string()]));
    }
    let _ = output(Command::new("ip").args(["netns", "del", name]));
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_pids_and_delete(&self.name);
    }
}

/// Deletes namespaces left by earlier harness runs whose process no longer exists, and kills
/// what still runs inside them. Returns the names deleted.
pub fn cleanup_stale() -> Vec<String> {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else {
        return Vec::new();
    };
    let mut gone = Vec::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_pids_and_delete(name);
            gone.push(name.to_string());
        }
    }
    gone
}

/// Deletes every namespace this process created (killing what runs inside them). For signal
/// handlers: a harness interrupted by Ctrl-C or SIGTERM leaves nothing behind.
pub fn cleanup_own() {
    let Ok(list) = run(Command::new("ip").args(["netns", "list"])) else { return };
    let own = format!("{PREFIX}{}-", std::process::id());
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(&own) {
            kill_pids_and_delete(name);
        }
    }
}

/// A child process killed (by its pid) and reaped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd` under a guard; `what` names it in errors.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self, NetemError> {
        let child =
            cmd.spawn().map_err(|e| NetemError::Spawn { command: describe(cmd), source: e })?;
        Ok(Self { child: Some(child), what: what.to_string() })
    }

    /// The child process.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Waits up to `limit` for the child to exit by itself; kills it after that. Returns its
    /// output (stdout and stderr must have been piped) and whether it finished in time.
    pub fn wait_output(mut self, limit: Duration) -> Result<(Output, bool), NetemError> {
        let deadline = Instant::now() + limit;
        let mut child = self.child.take().expect("child present until drop");
        let mut in_time = true;
        // Drain pipes in threads so a chatty child cannot block on a full pipe.
        let out = child.stdout.take();
        let err = child.stderr.take();
        let read = |p: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut p) = p {
                    let _ = p.read_to_end(&mut v);
                }
                v
            })
        };
        let ho = read(out.map(|o| Box::new(o) as Box<dyn std::io::Read + Send>));
        let he = read(err.map(|e| Box::new(e) as Box<dyn std::io::Read + Send>));
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    in_time = false;
                    let _ = child.kill();
                    break child.wait().map_err(|e| NetemError::Spawn {
                        command: self.what.clone(),
                        source: e,
                    })?;
                }
                Err(e) => {
                    return Err(NetemError::Spawn { command: self.what.clone(), source: e });
                }
            }
        };
        let stdout = ho.join().unwrap_or_default();
        let stderr = he.join().unwrap_or_default();
        Ok((Output { status, stdout, stderr }, in_time))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
