//! `ferry doctor [user@]HOST[:PORT]`: one screen of what stands between the user and a fast
//! transfer to that server, each problem with its fix (`ferry_net::doctor` does the checks).

use std::path::PathBuf;
use std::time::Duration;

use ferry_engine::crypto::CipherSuite;
use ferry_engine::rate::Policy;
use ferry_net::client::{ClientOptions, DEFAULT_PORT, HostKey};
use ferry_net::doctor::{self, Findings, KeyState, PortState};
use ferry_net::identity::Identity;

use crate::error::CliError;
use crate::exit::Exit;

/// Arguments of `ferry doctor`.
#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// The server: `[user@]host[:port]` (`[v6addr]:port` for an IPv6 address).
    #[arg(value_name = "[USER@]HOST[:PORT]")]
    server: String,
    /// The client identity to check (an empty upload: authenticated, nothing written). Without
    /// it the identity is not checked.
    #[arg(short = 'i', long = "identity", value_name = "KEYFILE")]
    identity: Option<PathBuf>,
    /// The server's host-key fingerprint, as `ferry cp --host-key` takes it.
    #[arg(long = "host-key", value_name = "FINGERPRINT")]
    host_key: Option<String>,
    /// File of pinned server keys, as `ferry cp --known-hosts` reads it.
    #[arg(long = "known-hosts", value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// The server's control port (UDP), if not in the server argument [default: 33001].
    #[arg(short = 'P', long = "port")]
    port: Option<u16>,
    /// How long to wait for the server to answer, seconds.
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 5)]
    timeout: u64,
    /// One JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

/// `[user@]host[:port]`.
fn split(server: &str) -> Result<(Option<String>, String, Option<u16>), CliError> {
    let bad = || {
        CliError::new(Exit::Usage, format!("{server:?} is not [user@]host[:port]"))
            .hint("e.g. ferry doctor alice@files.example.com:33001")
    };
    let (user, rest) = match server.split_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, server),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (h.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p.parse().map_err(|_| bad())?)),
            None => (rest.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((user, host, port))
}

pub(crate) fn run(args: DoctorArgs) -> Result<(), CliError> {
    let (user, host, port) = split(&args.server)?;
    let port = args.port.or(port).unwrap_or(DEFAULT_PORT);
    let identity = match &args.identity {
        Some(p) => Some(Identity::read(p).map_err(|e| {
            CliError::new(Exit::Identity, format!("cannot use the identity: {e}"))
                .hint("give an OpenSSH ed25519 private key (`ferry keygen -f PATH`)")
        })?),
        None => None,
    };
    let check_identity = identity.is_some();
    let host_key = match &args.host_key {
        Some(fp) => HostKey::Pinned(fp.clone()),
        None => HostKey::KnownHosts(args.known_hosts.clone()),
    };
    let opts = ClientOptions {
        host: host.clone(),
        port,
        identity: identity.unwrap_or_else(|| Identity::generate("ferry doctor")),
        host_key,
        cipher: CipherSuite::Aes128,
        target_rate: super::cp::UNCAPPED,
        min_rate: 0,
        policy: Policy::Fair,
        user: user.unwrap_or_default(),
        datagram_size: None,
        create_dir: false,
        preserve_times: false,
        resume: 0,
        overwrite: Default::default(),
    };
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(Exit::Failed, format!("cannot start the runtime: {e}")))?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let f = rt.block_on(doctor::examine(&opts, check_identity, timeout));
    let checks = checks(&f, &host, port, &opts.user, timeout);
    let problems = checks.iter().filter(|c| c.level == Level::Fail).count();
    if args.json {
        super::progress::emit("doctor", json(&f, &host, port, &checks));
    } else {
        println!("ferry doctor: {host} port {port}");
        for c in &checks {
            let mark = match c.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
                Level::Skip => "-   ",
            };
            println!("  {mark}  {}", c.what);
            if let Some(fix) = &c.fix {
                println!("        fix: {fix}");
            }
        }
    }
    if problems > 0 {
        return Err(CliError::new(
            Exit::Failed,
            format!("{problems} problem(s) stand between you and a transfer to {host}"),
        )
        .hint("each is listed above with its fix"));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
    Skip,
}

struct Check {
    name: &'static str,
    level: Level,
    what: String,
    fix: Option<String>,
}

fn check(name: &'static str, level: Level, what: String, fix: Option<String>) -> Check {
    Check { name, level, what, fix }
}

fn checks(f: &Findings, host: &str, port: u16, user: &str, timeout: Duration) -> Vec<Check> {
    use Level::*;
    let mut out = Vec::new();
    if f.addresses.is_empty() {
        let fix = format!("check the name {host:?} (a typo? DNS reachable?), or give an address");
        out.push(check("resolve", Fail, format!("{host} does not resolve"), Some(fix)));
        return out;
    }
    let list: Vec<String> = f.addresses.iter().map(|a| a.ip().to_string()).collect();
    let ms = f.resolve_time.as_secs_f64() * 1e3;
    out.push(check(
        "resolve",
        Ok,
        format!("{host} resolves to {} ({ms:.1} ms)", list.join(", ")),
        None,
    ));
    let port_check = match &f.port {
        Some(PortState::Open) => {
            let rtt = f.rtt.map(|r| format!(", round trip {:.1} ms", r.as_secs_f64() * 1e3));
            check("port", Ok, format!("UDP port {port} answers (QUIC{})", rtt.unwrap_or_default()), None)
        }
        Some(PortState::Closed) => check(
            "port",
            Fail,
            format!("UDP port {port} is closed: the host answered that nothing listens there"),
            Some(format!("start `ferry serve` on {host}, or give the port it listens on (-P)")),
        ),
        Some(PortState::Filtered) | None => check(
            "port",
            Fail,
            format!("no answer from UDP port {port} within {} s", timeout.as_secs()),
            Some("the host is down, or a firewall drops UDP: open UDP port on the server's firewall (and any between); ferry needs only that one port".into()),
        ),
    };
    out.push(port_check);
    out.push(match &f.key {
        KeyState::Pinned(fp) => check("host_key", Ok, format!("host key {fp} is pinned and the server proved it"), None),
        KeyState::Unpinned(seen) => check(
            "host_key",
            Fail,
            format!("no host key is pinned for {host}:{port}; the server presents {seen}"),
            Some(format!("confirm {seen} with the server's operator (`ferry serve --print-fingerprint`), then pass --host-key {seen} or add `{host}:{port} {seen}` to ~/.config/ferry/known_hosts")),
        ),
        KeyState::Mismatch { seen, pinned } => check(
            "host_key",
            Fail,
            format!("the server presents {seen}, not the pinned {pinned}"),
            Some("do not send anything until the operator confirms the new key (it may be an impostor); then update the pin".into()),
        ),
        KeyState::Unknown(why) => check("host_key", Skip, format!("host key not checked ({why})"), None),
    });
    let as_user = if user.is_empty() {
        "the server's default user".to_owned()
    } else {
        format!("user {user:?}")
    };
    out.push(match &f.identity {
        Some(Result::Ok(())) => check(
            "identity",
            Ok,
            format!("the identity is accepted as {as_user} (an empty upload)"),
            None,
        ),
        Some(Err(why)) => check(
            "identity",
            Fail,
            format!("the identity, as {as_user}: {why}"),
            Some("have the server's operator add your public key (PATH.pub) for that user".into()),
        ),
        None => check(
            "identity",
            Skip,
            "identity not checked (give it with -i, and a pinned host key)".into(),
            None,
        ),
    });
    out.push(match f.datagram {
        Some(d) => {
            let mtu = d + if f.addresses[0].is_ipv4() { 28 } else { 48 };
            let what = if d >= 8972 {
                format!(
                    "the route's MTU is at least {mtu} (jumbo frames or loopback): data packets \
                     of {d} bytes, Ferry's largest"
                )
            } else {
                format!("the route's MTU is {mtu}: data packets of {d} bytes")
            };
            check("mtu", Ok, what, None)
        }
        None => check(
            "mtu",
            Warn,
            "the route's MTU cannot be told: 1500 is assumed".into(),
            Some("if a tunnel or VPN is on the path, give cp a smaller -Z".into()),
        ),
    });
    out.push(match f.buffers {
        Some((r, w)) if r / 2 >= f.buffers_wanted && w / 2 >= f.buffers_wanted => check(
            "buffers",
            Ok,
            format!("socket buffers: {} MiB each way granted", (r / 2) >> 20),
            None,
        ),
        Some((r, w)) => check(
            "buffers",
            Warn,
            format!(
                "socket buffers: the kernel grants {} KiB receive and {} KiB send of {} MiB asked; at high rates packets are dropped in bursts",
                (r / 2) >> 10,
                (w / 2) >> 10,
                f.buffers_wanted >> 20
            ),
            Some(format!(
                "as root: sysctl -w net.core.rmem_max={0} net.core.wmem_max={0} (and in /etc/sysctl.d/ to keep it)",
                2 * f.buffers_wanted
            )),
        ),
        None => check("buffers", Warn, "socket buffers could not be measured".into(), None),
    });
    out
}

fn json(f: &Findings, host: &str, port: u16, checks: &[Check]) -> serde_json::Value {
    let level = |l: Level| match l {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Fail => "fail",
        Level::Skip => "skipped",
    };
    let port_state = f.port.as_ref().map(|p| match p {
        PortState::Open => "open",
        PortState::Closed => "closed",
        PortState::Filtered => "filtered",
    });
    let (key_state, seen) = match &f.key {
        KeyState::Pinned(k) => ("pinned", Some(k.clone())),
        KeyState::Unpinned(k) => ("unpinned", Some(k.clone())),
        KeyState::Mismatch { seen, .. } => ("mismatch", Some(seen.clone())),
        KeyState::Unknown(_) => ("unknown", None),
    };
    serde_json::json!({
        "host": host,
        "port": port,
        "addresses": f.addresses.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>(),
        "port_state": port_state,
        "rtt_ms": f.rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
        "host_key": { "state": key_state, "presented": seen },
        "identity": match &f.identity {
            None => serde_json::Value::Null,
            Some(Ok(())) => serde_json::json!({ "accepted": true }),
            Some(Err(e)) => serde_json::json!({ "accepted": false, "detail": e }),
        },
        "datagram": f.datagram,
        "buffers": f.buffers.map(|(r, w)| serde_json::json!({
            "recv": r / 2, "send": w / 2, "wanted": f.buffers_wanted
        })),
        "checks": checks.iter().map(|c| serde_json::json!({
            "check": c.name, "result": level(c.level), "what": c.what, "fix": c.fix,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_arguments() {
        let s = |a: &str| split(a).unwrap();
        assert_eq!(s("h"), (None, "h".into(), None));
        assert_eq!(s("alice@h:9"), (Some("alice".into()), "h".into(), Some(9)));
        assert_eq!(s("[::1]:33001"), (None, "::1".into(), Some(33001)));
        assert_eq!(s("[::1]"), (None, "::1".into(), None));
        for bad in ["", "h:port", "[::1", "[::1]x", "@"] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }
}
