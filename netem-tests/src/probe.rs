//! Measurements across a test bed with standard tools run inside the namespaces: `ping` for
//! RTT and loss, `iperf3` for UDP rate and TCP goodput. Every run is bounded in time.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::NetemError;
use crate::netns::{self, ChildGuard, Netns};
use crate::testbed::{SERVER_IP, Testbed};

/// Result of a ping run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingResult {
    /// Echo requests sent.
    pub sent: u64,
    /// Echo replies received.
    pub received: u64,
    /// Minimum RTT, ms.
    pub min_ms: f64,
    /// Mean RTT, ms.
    pub avg_ms: f64,
    /// Maximum RTT, ms.
    pub max_ms: f64,
    /// Duplicate replies ping saw (`+N duplicates`).
    pub duplicates: u64,
}

/// Pings the server from the client `count` times, `interval_ms` apart (ping's `-i`, needs
/// root below 200 ms), waiting at most 2 s for each reply; the whole run is bounded by
/// `count x interval + 10 s`.
pub fn ping(tb: &Testbed, count: u32, interval_ms: u32) -> Result<PingResult, NetemError> {
    let interval = format!("{:.3}", interval_ms as f64 / 1000.0);
    let mut cmd = tb.client().command("ping");
    cmd.args(["-n", "-q", "-c", &count.to_string(), "-i", &interval, "-W", "2", SERVER_IP]);
    let limit = Duration::from_millis(u64::from(count) * u64::from(interval_ms) + 10_000);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let guard = ChildGuard::spawn(&mut cmd, "ping")?;
    // ping exits with status 1 when some replies are missing: that is a measurement, not an error.
    let (out, _) = guard.wait_output(limit)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_ping(&text).ok_or(NetemError::Parse { what: "ping summary".into(), text })
}

/// Parses ping's summary lines.
pub fn parse_ping(text: &str) -> Option<PingResult> {
    let stats = text.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u64> =
        stats.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
    let (sent, received) = (*nums.first()?, *nums.get(1)?);
    let duplicates = stats
        .split(',')
        .find(|p| p.contains("duplicates"))
        .and_then(|p| p.trim().trim_start_matches('+').split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let rtt = text.lines().find(|l| l.contains("min/avg/max"));
    let (min_ms, avg_ms, max_ms) = match rtt {
        Some(l) => {
            let v: Vec<f64> = l
                .split('=')
                .nth(1)?
                .trim()
                .split(' ')
                .next()?
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            (*v.first()?, *v.get(1)?, *v.get(2)?)
        }
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    Some(PingResult { sent, received, min_ms, avg_ms, max_ms, duplicates })
}

/// An `iperf3` server in the server namespace (one test, then it exits).
#[derive(Debug)]
pub struct Iperf3Server {
    _guard: ChildGuard,
    /// TCP/UDP port it listens on.
    pub port: u16,
}

impl Iperf3Server {
    /// Starts `iperf3 -s -1` bound to the server address and waits until it accepts.
    pub fn start(ns: &Netns, port: u16) -> Result<Self, NetemError> {
        let mut cmd = ns.command("iperf3");
        cmd.args(["-s", "-1", "-B", SERVER_IP, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let guard = ChildGuard::spawn(&mut cmd, "iperf3 server")?;
        // Wait until the port is bound (ss inside the namespace), at most 5 s.
        for _ in 0..250 {
            let ss = netns::run(ns.command("ss").args(["-ltnH", &format!("sport = :{port}")]))
                .unwrap_or_default();
            if !ss.trim().is_empty() {
                return Ok(Self { _guard: guard, port });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(NetemError::Emulator("iperf3 server did not start listening within 5 s".into()))
    }
}

/// What an iperf3 client run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Bytes the receiver got.
    pub bytes_received: u64,
    /// Seconds measured at the receiver.
    pub seconds: f64,
    /// Receiver goodput, bit/s.
    pub bits_per_second: f64,
    /// UDP only: datagrams lost, as iperf3 counts them.
    pub lost_packets: u64,
    /// UDP only: datagrams sent.
    pub packets: u64,
}

/// iperf3 flavours used by the tests and the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IperfMode<'a> {
    /// TCP with the named congestion control (`cubic`, `bbr`, `reno`).
    Tcp(&'a str),
    /// UDP at the given offered rate (bit/s) with the given datagram payload.
    Udp {
        /// Offered rate, bit/s.
        rate_bps: u64,
        /// UDP payload bytes.
        len: u32,
    },
}

/// Runs an iperf3 client in the client namespace for `seconds` against a fresh server.
pub fn iperf3(
    tb: &Testbed,
    mode: IperfMode<'_>,
    seconds: u32,
    port: u16,
) -> Result<IperfResult, NetemError> {
    let _server = Iperf3Server::start(tb.server(), port)?;
    let mut cmd = tb.client().command("iperf3");
    cmd.args(["-c", SERVER_IP, "-p", &port.to_string(), "-J", "-t", &seconds.to_string()]);
    match mode {
        IperfMode::Tcp(cc) => {
            cmd.args(["-C", cc]);
        }
        IperfMode::Udp { rate_bps, len } => {
            // A 4 MiB socket buffer (net.core.rmem_max here) so that the receiving tool, not
            // the link, is never what drops datagrams in a burst.
            cmd.args(["-u", "-b", &rate_bps.to_string(), "-l", &len.to_string(), "-w", "4M"]);
        }
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = netns::describe(&cmd);
    let guard = ChildGuard::spawn(&mut cmd, &what)?;
    // Long RTTs make iperf3's setup and teardown slow: allow generous slack.
    let (out, in_time) = guard.wait_output(Duration::from_secs(u64::from(seconds) + 30))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !in_time {
        return Err(NetemError::Emulator(format!("`{what}` did not finish in time")));
    }
    parse_iperf3(&text, matches!(mode, IperfMode::Udp { .. }))
}

/// Parses iperf3's `-J` output.
pub fn parse_iperf3(text: &str, udp: bool) -> Result<IperfResult, NetemError> {
    let err = || NetemError::Parse {
        what: "iperf3 JSON".into(),
        text: text.chars().take(2000).collect(),
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| err())?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(NetemError::Emulator(format!("iperf3: {e}")));
    }
    let end = &v["end"];
    if udp {
        let s = &end["sum"];
        let packets = s["packets"].as_u64().ok_or_else(err)?;
        let lost = s["lost_packets"].as_u64().ok_or_else(err)?;
        let seconds = s["seconds"].as_f64().ok_or_else(err)?;
        // iperf3's receiver-side UDP figures: bytes actually received.
        let recv = &end["sum_received"];
        let bytes_received =
            recv["bytes"].as_u64().unwrap_or_else(|| s["bytes"].as_u64().unwrap_or(0));
        let rs = recv["seconds"].as_f64().unwrap_or(seconds);
        let bps = recv["bits_per_second"].as_f64().unwrap_or(bytes_received as f64 * 8.0 / rs);
        Ok(IperfResult {
            bytes_received,
            seconds: rs,
            bits_per_second: bps,
            lost_packets: lost,
            packets,
        })
    } else {
        let r = &end["sum_received"];
        Ok(IperfResult {
            bytes_received: r["bytes"].as_u64().ok_or_else(err)?,
            seconds: r["seconds"].as_f64().ok_or_else(err)?,
            bits_per_second: r["bits_per_second"].as_f64().ok_or_else(err)?,
            lost_packets: 0,
            packets: 0,
        })
    }
}

/// The Mathis et al. ceiling of one Reno/CUBIC-like TCP flow: `MSS/RTT x C/sqrt(p)`, bit/s,
/// with C = sqrt(3/2).
pub fn mathis_bps(mss_bytes: f64, rtt_s: f64, loss: f64) -> f64 {
    mss_bytes * 8.0 / rtt_s * (1.5f64).sqrt() / loss.sqrt()
}

/// Runs `cmd` (already configured) with a time limit; returns stdout, stderr and whether it
/// finished in time, failing if it exited unsuccessfully in time.
pub fn run_bounded(
    cmd: &mut Command,
    limit: Duration,
) -> Result<(String, String, bool), NetemError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = netns::describe(cmd);
    let guard = ChildGuard::spawn(cmd, &what)?;
    let (out, in_time) = guard.wait_output(limit)?;
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    if in_time && !out.status.success() {
        return Err(NetemError::Command {
            command: what,
            status: out.status.to_string(),
            stderr: se.trim().to_string(),
        });
    }
    Ok((so, se, in_time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summary() {
        let t = "PING 10.201.0.2 (10.201.0.2) 56(84) bytes of data.\n\n--- 10.201.0.2 ping statistics ---\n\
                 20 packets transmitted, 19 received, 5% packet loss, time 1901ms\n\
                 rtt min/avg/max/mdev = 100.101/100.302/101.020/0.215 ms\n";
        let r = parse_ping(t).unwrap();
        assert_eq!((r.sent, r.received), (20, 19));
        assert!((r.avg_ms - 100.302).abs() < 1e-9);
        assert_eq!(r.duplicates, 0);
        let d =
            "200 packets transmitted, 200 received, +41 duplicates, 0% packet loss, time 401ms\n";
        assert_eq!(parse_ping(d).unwrap().duplicates, 41);
    }

    #[test]
    fn mathis_matches_the_anchor_table() {
        // performance.md 4.1: 100 ms, 1%, MSS 1448 -> 1.42 Mbit/s.
        let m = mathis_bps(1448.0, 0.1, 0.01);
        assert!((m / 1e6 - 1.42).abs() < 0.01, "{m}");
    }
}
