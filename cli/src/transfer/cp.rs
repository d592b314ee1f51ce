//! `ferry cp`: upload or download files and directory trees.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_engine::control::{FileEntry, FileStatus};
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::io::docroot::{Docroot, RelPath};
use ferry_engine::io::driver::{
    DataSocket, DriveError, DriveReport, Progress, ReceiverSide, SenderSide, Side,
};
use ferry_engine::io::files::{Destination, FileSink, SinkLimits};
use ferry_engine::io::source::{self, FileSource, SourceFile, SourceLimits};
use ferry_engine::rate::{Policy, RateLimits};
use ferry_engine::session::{MAX_STANDARD_BLOCK, Receiver, SessionConfig, SessionError};
use ferry_engine::setup::{self, ClientHello, Direction, ServerHello, refusal};
use zeroize::Zeroizing;

use super::progress::{self, Mode, Reporter};
use crate::error::CliError;
use crate::identity::Identity;

/// Arguments of `ferry cp`.
#[derive(Debug, clap::Args)]
pub(crate) struct CpArgs {
    /// The client identity: an OpenSSH ed25519 private key (`ferry keygen -f PATH`).
    #[arg(short = 'i', long = "identity", value_name = "KEYFILE")]
    identity: PathBuf,
    /// The server's host-key fingerprint (`SHA256:...`, from `ferry serve --print-fingerprint`).
    #[arg(long = "host-key", value_name = "FINGERPRINT")]
    host_key: Option<String>,
    /// File of pinned server keys, one `HOST[:PORT] SHA256:...` per line (`#` comments), used
    /// when --host-key is not given. Default: `$HOME/.config/ferry/known_hosts` if it exists.
    #[arg(long = "known-hosts", value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// The server's control port (UDP).
    #[arg(short = 'P', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Target rate in bits/s with k/m/g suffixes (e.g. 500m).
    #[arg(short = 'l', long = "target-rate", default_value = "1g", value_parser = super::parse_rate)]
    target_rate: u64,
    /// Minimum rate in bits/s with k/m/g suffixes.
    #[arg(short = 'm', long = "min-rate", default_value = "0", value_parser = super::parse_rate)]
    min_rate: u64,
    /// Rate policy: fixed, high, fair or low.
    #[arg(long, default_value = "fair")]
    policy: Policy,
    /// Transit cipher: aes128, aes192, aes256 or none (packets are authenticated even with none).
    #[arg(short = 'c', long = "cipher", default_value = "aes128", value_parser = parse_suite)]
    cipher: CipherSuite,
    /// Machine-readable output: JSON events, one object per line on stdout (`session`,
    /// `progress` about every 250 ms, then `done` or `error`), instead of the progress bar and
    /// the summary line.
    #[arg(long)]
    json: bool,
    /// No progress bar (it is shown only when stderr is a terminal anyway).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Sources then the destination; exactly one side is remote: `[user@]host[:port]:path`.
    #[arg(required = true, num_args = 2.., value_name = "SOURCE... DEST")]
    paths: Vec<String>,
}

fn parse_suite(s: &str) -> Result<CipherSuite, String> {
    CipherSuite::ALL
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("unknown cipher {s:?}: expected aes128, aes192, aes256 or none"))
}

/// A remote location `[user@]host[:port]:path`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    host: String,
    port: Option<u16>,
    path: String,
}

/// Parses a remote spec; `None` for a local path.
pub(crate) fn parse_remote(s: &str) -> Option<Remote> {
    if s.starts_with('/') || s.starts_with('.') {
        return None;
    }
    let rest = s.split_once('@').map_or(s, |(_, r)| r);
    let (host, after) = if let Some(r) = rest.strip_prefix('[') {
        let (h, a) = r.split_once(']')?;
        (h.to_owned(), a.strip_prefix(':')?)
    } else {
        let (h, a) = rest.split_once(':')?;
        if h.contains('/') || h.is_empty() {
            return None;
        }
        (h.to_owned(), a)
    };
    let (port, path) = match after.split_once(':') {
        Some((p, path)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (p.parse().ok(), path)
        }
        _ => (None, after),
    };
    Some(Remote { host, port, path: path.to_owned() })
}

pub(crate) fn run(args: CpArgs) -> Result<(), CliError> {
    let json = args.json;
    let result = run_inner(args);
    if json && let Err(e) = &result {
        progress::emit(
            "error",
            serde_json::json!({ "code": e.code, "message": e.message, "hint": e.hint }),
        );
    }
    result
}

fn run_inner(args: CpArgs) -> Result<(), CliError> {
    let usage = |m: String| {
        CliError::new(2, m).hint(
            "ferry cp -i KEY --host-key SHA256:... SOURCE... [user@]host:PATH, or host:PATH LOCAL",
        )
    };
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    let remote_dest = parse_remote(dest);
    let remote_sources: Vec<_> = sources.iter().map(|s| parse_remote(s)).collect();
    let direction = match (&remote_dest, remote_sources.iter().all(Option::is_none)) {
        (Some(_), true) => Direction::Upload,
        (None, _) if remote_sources.iter().all(Option::is_some) => {
            if sources.len() != 1 {
                return Err(usage("a download takes one remote source".into()));
            }
            Direction::Download
        }
        _ => return Err(usage("exactly one side must be remote (host:path)".into())),
    };
    let remote = match direction {
        Direction::Upload => remote_dest.expect("upload"),
        Direction::Download => remote_sources.into_iter().next().flatten().expect("download"),
    };
    super::raise_fd_limit();
    let id = Identity::read(&args.identity).map_err(|e| {
        CliError::new(36, format!("cannot use the identity: {e}")).hint(
            "create one with `ferry keygen -f PATH` (private key mode 0600) and pass it with -i",
        )
    })?;
    let port = args.port.or(remote.port).unwrap_or(super::DEFAULT_PORT);
    let server =
        (remote.host.as_str(), port).to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(
            || {
                CliError::new(30, format!("cannot resolve {:?}", remote.host))
                    .hint("check the host name")
            },
        )?;

    // Local side, prepared before connecting so local mistakes cost no round trip.
    let mut upload_files = Vec::new();
    let mut download_dest = None;
    match direction {
        Direction::Upload => {
            for s in sources {
                upload_files.extend(local_sources(s)?);
            }
        }
        Direction::Download => download_dest = Some(download_sink(dest)?),
    }

    let local_ip: IpAddr = match (server.ip().is_loopback(), server.is_ipv4()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => Ipv4Addr::UNSPECIFIED.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let pinned = match &args.host_key {
        Some(fp) => Some(fp.clone()),
        None => known_host(args.known_hosts.as_deref(), &remote.host, port)?,
    };
    let (client_config, seen) = super::client_config(pinned.clone())
        .map_err(|e| CliError::new(1, format!("cannot configure TLS: {e}")))?;
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(1, format!("cannot start the runtime: {e}")))?;
    let started = Instant::now();
    let reporter = Arc::new(Mutex::new(Reporter::new(Mode::choose(args.json, args.quiet))));
    let result = rt.block_on(async {
        let endpoint = quinn::Endpoint::client(SocketAddr::new(local_ip, 0))
            .map_err(|e| CliError::new(1, format!("cannot open a UDP socket: {e}")))?;
        let connecting = endpoint.connect_with(client_config, server, "ferry").map_err(|e| {
            CliError::new(30, format!("cannot connect to {server}: {e}"))
        })?;
        let conn = match connecting.await {
            Ok(c) => c,
            Err(e) => {
                if let Some(fp) = seen.lock().expect("lock").clone() {
                    return Err(match &pinned {
                        None => CliError::new(31, format!(
                            "the server at {server} is unknown: its host key is {fp}, and no key was pinned"
                        )),
                        Some(p) if *p != fp => CliError::new(31, format!(
                            "the server at {server} presented host key {fp}, not the pinned {p}: refusing (it may be an impostor, or its key changed)"
                        )),
                        Some(_) => CliError::new(31, format!("the server at {server} failed to prove its host key {fp}: {e}")),
                    }
                    .hint(format!(
                        "if you trust this server (compare with `ferry serve --print-fingerprint` on it), run: ferry cp --host-key {fp} ... (or add the line \"{}:{port} {fp}\" to the known-hosts file)", remote.host
                    )));
                }
                return Err(if port_refused(local_ip, server) {
                    CliError::new(38, format!(
                        "nothing is listening on UDP port {port} at {}: the host answered that the port is closed ({e})", server.ip()
                    ))
                    .hint(format!("start `ferry serve` there, or give the port it listens on with -P (now {port})"))
                } else {
                    CliError::new(30, format!("no answer from {server}: the host is down or unreachable, or a firewall drops UDP ({e})"))
                        .hint(format!("check the address, that the host is up, and that UDP port {port} is open on the way (Ferry needs only that one port)"))
                });
            }
        };
        let outcome = session(&conn, &id, &args, &remote, direction, upload_files, download_dest, local_ip, reporter.clone()).await;
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        outcome
    });
    reporter.lock().expect("reporter").finish();
    let report = result?;
    let secs = started.elapsed().as_secs_f64();
    let what = match direction {
        Direction::Upload => "upload",
        Direction::Download => "download",
    };
    let failed: Vec<_> = report.files.iter().filter(|f| f.status != FileStatus::Verified).collect();
    let (bytes, nfiles) = (report.file_bytes, report.files.len());
    if args.json {
        progress::emit("done", progress::done_fields(&report, what, secs));
    } else {
        let rate = if secs > 0.0 { bytes as f64 * 8.0 / secs / 1e6 } else { 0.0 };
        let files = if failed.is_empty() {
            format!("complete: {nfiles} files")
        } else {
            format!("finished: {} of {nfiles} files", nfiles - failed.len())
        };
        println!(
            "ferry: {what} {files}, {} ({bytes} bytes) in {secs:.2} s ({rate:.1} Mbit/s)",
            progress::human_bytes(bytes)
        );
        const SHOWN: usize = 50;
        for f in failed.iter().take(SHOWN) {
            eprintln!(
                "ferry: failed: {}: {}",
                ferry_engine::io::docroot::escape(&f.path, 300),
                super::log::sanitize(&f.reason)
            );
        }
        if failed.len() > SHOWN {
            eprintln!("ferry: ... and {} more (--json lists them all)", failed.len() - SHOWN);
        }
    }
    if !failed.is_empty() {
        let side = if direction == Direction::Upload { "on the server" } else { "here" };
        return Err(CliError::new(
            39,
            format!(
                "{} of {nfiles} files failed (each is named with its reason); the other {} were transferred",
                failed.len(),
                nfiles - failed.len()
            ),
        )
        .hint(format!(
            "fix what each message says and send the failed files again (the transferred ones \
             are now {side}, and Ferry does not overwrite them)"
        )));
    }
    Ok(())
}

/// Lists a source argument for upload. The argument itself may be a symbolic link (it is
/// followed, as `scp` does); inside a directory, links and special files are skipped.
fn local_sources(arg: &str) -> Result<Vec<SourceFile>, CliError> {
    let cannot = |e: String| {
        CliError::new(34, format!("cannot read {arg}: {e}"))
            .hint("check the source path and its permissions")
    };
    let canon = Path::new(arg).canonicalize().map_err(|e| cannot(e.to_string()))?;
    let (Some(parent), Some(name)) = (canon.parent(), canon.file_name()) else {
        return Err(cannot("the root directory itself cannot be sent; name what is in it".into()));
    };
    let name = name.to_str().ok_or_else(|| cannot("the name is not UTF-8".into()))?;
    let rel = RelPath::parse(name).map_err(|e| cannot(e.to_string()))?;
    let root = Arc::new(Docroot::open(parent).map_err(|e| cannot(e.to_string()))?);
    source::list(&root, &rel, SourceLimits::default()).map_err(|e| cannot(e.to_string()))
}

/// The sink of a download into `dest`: an existing directory, or a new file name in one.
fn download_sink(dest: &str) -> Result<FileSink, CliError> {
    let d = std::path::absolute(dest).map_err(|e| CliError::new(34, format!("{dest}: {e}")))?;
    let open = |p: &Path| {
        Docroot::open(p).map(Arc::new).map_err(|e| CliError::new(34, format!("{dest}: {e}")))
    };
    if d.is_dir() {
        let root = open(&d)?;
        return Ok(FileSink::new(root, Destination::Dir(RelPath::root()), SinkLimits::default()));
    }
    let parent = match d.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() || dest.ends_with('/') {
        return Err(CliError::new(34, format!("{dest}: no such directory"))
            .hint("create the destination directory first"));
    }
    let name = d.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let name = RelPath::parse(name).map_err(|e| CliError::new(34, format!("{dest}: {e}")))?;
    Ok(FileSink::new(open(&parent)?, Destination::File(name), SinkLimits::default()))
}

/// After a failed connection: whether the server's host says its UDP port is closed (an ICMP
/// port-unreachable, seen as a refused connection on a connected socket), as opposed to no
/// answer at all. A single one-byte datagram is sent, which no QUIC server accepts.
fn port_refused(local_ip: IpAddr, server: SocketAddr) -> bool {
    let probe = || -> std::io::Result<bool> {
        let s = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.send(&[0])?;
        let mut buf = [0u8; 16];
        Ok(matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
    };
    probe().unwrap_or(false)
}

/// The pinned fingerprint for `host` (and `port`) in a known-hosts file: lines
/// `HOST[:PORT] SHA256:...`; a line with a port wins over one without.
fn known_host(file: Option<&Path>, host: &str, port: u16) -> Result<Option<String>, CliError> {
    let default;
    let path = match file {
        Some(p) => p,
        None => {
            let Some(home) = std::env::var_os("HOME") else { return Ok(None) };
            default = PathBuf::from(home).join(".config/ferry/known_hosts");
            if !default.exists() {
                return Ok(None);
            }
            &default
        }
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::new(36, format!("cannot read the known-hosts file {}: {e}", path.display()))
    })?;
    let with_port = format!("{host}:{port}");
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(h), Some(fp)) = (it.next(), it.next()) else { continue };
        if h == with_port {
            return Ok(Some(fp.to_owned()));
        }
        if h == host && found.is_none() {
            found = Some(fp.to_owned());
        }
    }
    Ok(found)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    conn: &quinn::Connection,
    id: &Identity,
    args: &CpArgs,
    remote: &Remote,
    direction: Direction,
    upload_files: Vec<SourceFile>,
    download_sink: Option<FileSink>,
    local_ip: IpAddr,
    reporter: Arc<Mutex<Reporter>>,
) -> Result<DriveReport, CliError> {
    let failed = |m: String| CliError::new(33, m);
    let (mut send, mut recv) =
        conn.open_bi().await.map_err(|e| failed(format!("control stream: {e}")))?;
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .map_err(|e| CliError::new(1, format!("cannot open the data socket: {e}")))?;
    let mut hello = ClientHello {
        versions: vec![setup::VERSION],
        direction,
        suite: args.cipher.code(),
        block_size: MAX_STANDARD_BLOCK as u32,
        target_rate: args.target_rate,
        min_rate: args.min_rate,
        policy: super::serve::policy_code(args.policy),
        data_port: socket.local_addr().map_err(|e| CliError::new(1, e.to_string()))?.port(),
        flags: u8::from(direction == Direction::Upload && upload_files.len() == 1),
        path: if remote.path.is_empty() { ".".into() } else { remote.path.clone() },
        public_key: *id.public(),
        signature: [0; 64],
    };
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, setup::AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| failed("TLS exporter unavailable".into()))?;
    hello.signature = id.sign(&hello.signed_message(&exporter));
    let mut out = Vec::new();
    hello.encode(&mut out);
    send.write_all(&out).await.map_err(|e| failed(format!("control stream: {e}")))?;
    let (t, payload, leftover) = super::read_frame(&mut recv)
        .await
        .map_err(|e| CliError::new(37, format!("session setup failed: {e}")))?;
    if t == 5 {
        let msg = ferry_engine::control::ControlMessage::decode(&frame_bytes(t, &payload));
        let (code, reason) = match msg {
            Ok(Some((ferry_engine::control::ControlMessage::Abort { code, reason }, _))) => {
                (code, reason)
            }
            _ => (0, "malformed refusal".into()),
        };
        return Err(match code {
            refusal::AUTHENTICATION => CliError::new(
                32,
                format!("the server refused the key {}: {reason}", id.fingerprint()),
            )
            .hint(format!(
                "add the contents of {}.pub to the server's authorized keys file",
                args.identity.display()
            )),
            refusal::PATH => CliError::new(
                35,
                format!("the server refused the path {:?}: {reason}", remote.path),
            )
            .hint(
                "paths are relative to the server's docroot; the destination directory must exist",
            ),
            refusal::BUSY => CliError::new(37, format!("the server is busy: {reason}"))
                .hint("try again later, when fewer sessions are running"),
            _ => {
                CliError::new(37, format!("the server refused the session (code {code}): {reason}"))
            }
        });
    }
    if t != setup::T_SERVER_HELLO {
        return Err(CliError::new(37, "session setup failed: unexpected reply".to_string()));
    }
    let reply = ServerHello::decode(&payload)
        .map_err(|e| CliError::new(37, format!("session setup failed: {e}")))?;
    if reply.version != setup::VERSION || reply.suite != args.cipher.code() {
        return Err(CliError::new(
            37,
            "the server chose parameters this client did not offer".to_string(),
        ));
    }
    socket
        .connect(SocketAddr::new(conn.remote_address().ip(), reply.data_port))
        .map_err(|e| CliError::new(1, format!("cannot connect the data socket: {e}")))?;
    let socket = DataSocket::new(socket)
        .map_err(|e| CliError::new(1, format!("cannot set up the data socket: {e}")))?;
    if args.json {
        let addr = |a: std::io::Result<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        progress::emit(
            "session",
            serde_json::json!({
                "direction": if direction == Direction::Upload { "upload" } else { "download" },
                "server": conn.remote_address().to_string(),
                "session_id": format!("{:016x}", reply.session_id),
                "local_data": addr(socket.local_addr()),
                "remote_data": SocketAddr::new(conn.remote_address().ip(), reply.data_port).to_string(),
                "cipher": args.cipher.name(),
                "policy": format!("{:?}", args.policy).to_lowercase(),
                "target_rate_bps": args.target_rate,
                "files": upload_files.len(),
            }),
        );
    }
    let mut config = SessionConfig::new(
        reply.session_id,
        args.cipher,
        RateLimits { target: args.target_rate.max(1), min: args.min_rate },
    );
    config.block_size = reply.block_size as usize;
    config.max_window = reply.max_window;
    config.initial_rtt = conn.rtt().max(Duration::from_millis(1));
    config.validate().map_err(|e| CliError::new(37, format!("session setup failed: {e}")))?;
    let mut s = Zeroizing::new([0u8; 32]);
    conn.export_keying_material(
        s.as_mut(),
        setup::SESSION_EXPORTER_LABEL,
        &reply.session_id.to_be_bytes(),
    )
    .map_err(|_| failed("TLS exporter unavailable".into()))?;
    let secret = SessionSecret::new(*s);
    let now = Instant::now();
    let side: Box<dyn Side + Send> = match direction {
        Direction::Upload => {
            let factory = args.policy.factory();
            let mut sender =
                ferry_engine::session::Sender::new(config, &secret, factory.as_ref(), now)
                    .map_err(|e| CliError::new(37, e.to_string()))?;
            for f in &upload_files {
                let path = f.manifest.clone();
                sender.add_file(FileEntry { id: 0, size: f.size, mtime_ns: 0, mode: f.mode, path });
            }
            sender.finish_manifest();
            let source = FileSource::new(upload_files, SourceLimits::default());
            Box::new(SenderSide { sender, source })
        }
        Direction::Download => {
            let receiver = Receiver::new(config, &secret, now)
                .map_err(|e| CliError::new(37, e.to_string()))?;
            Box::new(ReceiverSide { receiver, sink: download_sink.expect("download sink") })
        }
    };
    let on_progress = Box::new(move |p: &Progress| reporter.lock().expect("reporter").update(p));
    // Ctrl-C or SIGTERM: end the session cleanly (no partial file left, the server told why).
    let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
    let interrupt = tokio::spawn(async move {
        let _ = cancel_tx.send(Some(super::termination_signal().await));
    });
    let (result, report) =
        super::run_session(send, recv, leftover, side, socket, on_progress, cancel).await;
    interrupt.abort();
    result.map_err(|e| match e {
        DriveError::ControlClosed(reason) if reason.contains("(SIG") => {
            CliError::new(130, format!("the transfer was cancelled: {reason}")).hint(
                "nothing was kept: partial files were removed; run the command again to restart",
            )
        }
        DriveError::Session(SessionError::PeerAborted { code, reason }) => {
            CliError::new(33, format!("the server aborted the transfer (code {code}): {reason}"))
        }
        DriveError::Session(SessionError::Storage { message, .. }) => {
            CliError::new(34, format!("cannot store a file: {message}"))
        }
        e => failed(format!("the transfer failed: {e}")),
    })?;
    Ok(report)
}

fn frame_bytes(t: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(t);
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs() {
        let r = |h: &str, p: Option<u16>, path: &str| {
            Some(Remote { host: h.into(), port: p, path: path.into() })
        };
        assert_eq!(parse_remote("host:dir/f"), r("host", None, "dir/f"));
        assert_eq!(parse_remote("me@127.0.0.1:7000:in"), r("127.0.0.1", Some(7000), "in"));
        assert_eq!(parse_remote("[::1]:x"), r("::1", None, "x"));
        assert_eq!(parse_remote("h:"), r("h", None, ""));
        assert_eq!(parse_remote("./a:b"), None);
        assert_eq!(parse_remote("/abs:x"), None);
        assert_eq!(parse_remote("plain"), None);
        assert_eq!(parse_remote("dir/a:b"), None);
    }
}
