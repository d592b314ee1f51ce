//! The client role: connects to a server whose host key it pins, authenticates with its
//! identity, and runs one upload or download.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::control::ControlMessage;
use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::io::driver::{
    self, DataSocket, DriveError, DriveReport, Progress, ReceiverSide, SenderSide, Side,
};
use ferry_engine::io::storage::Outgoing;
use ferry_engine::rate::{Policy as RatePolicy, RateLimits};
use ferry_engine::session::{
    BlockSink, MAX_STANDARD_BLOCK, Receiver, Sender, SessionConfig, SessionError,
    block_size_for_datagram,
};
use ferry_engine::setup::{self, ClientHello, Direction, ServerHello, refusal};
use zeroize::Zeroizing;

use crate::bridge::{self, Cancel, ControlStream};
use crate::identity::Identity;

/// The default control port (UDP, QUIC).
pub const DEFAULT_PORT: u16 = 33001;

/// How the client knows the server's key.
#[derive(Debug, Clone)]
pub enum HostKey {
    /// This fingerprint (`SHA256:...`).
    Pinned(String),
    /// The fingerprint listed for the host in a known-hosts file (the default file when `None`).
    KnownHosts(Option<PathBuf>),
}

/// Who to connect to, as whom, and how to send.
#[derive(Debug)]
pub struct ClientOptions {
    /// Host name or address.
    pub host: String,
    /// UDP port of the server.
    pub port: u16,
    /// The client's key.
    pub identity: Identity,
    /// The server's key.
    pub host_key: HostKey,
    /// Transit cipher.
    pub cipher: CipherSuite,
    /// Target rate, bits/s.
    pub target_rate: u64,
    /// Minimum rate, bits/s.
    pub min_rate: u64,
    /// Rate policy.
    pub policy: RatePolicy,
    /// The transfer user to act as on the server (`user@host`); empty: the server's default
    /// user.
    pub user: String,
    /// The UDP payload of a full DATA packet, bytes (`-Z`), at most 8972. `None`: the largest
    /// the route to the server carries unfragmented
    /// ([`route_datagram_limit`](ferry_engine::io::driver::route_datagram_limit); 1472 when it
    /// cannot be told). The server may lower it to what its route back allows.
    pub datagram_size: Option<usize>,
    /// Upload: have the server create the destination directory if it is missing (`-d`); the
    /// destination then always names a directory.
    pub create_dir: bool,
    /// Have the receiver give each file its source's modification time (`-p`): the server on an
    /// upload, this end's sink on a download (which the caller makes, with
    /// [`SinkLimits::preserve_mtime`](ferry_engine::io::files::SinkLimits)).
    pub preserve_times: bool,
    /// The resume level (`-k`, 0 to 3): 1 or more makes every session a resuming one
    /// (docs/PROTOCOL.md 8.6): the receiver keeps an interrupted file's partial with a journal
    /// and the next attempt sends only what it does not hold. On a download the caller's sink
    /// must resume too ([`SinkLimits::resume`](ferry_engine::io::files::SinkLimits)).
    pub resume: u8,
    /// What the receiver does with files that exist at the destination (`--overwrite`): the
    /// server on an upload (within what its policy permits), this end's sink on a download
    /// ([`SinkLimits::overwrite`](ferry_engine::io::files::SinkLimits)).
    pub overwrite: ferry_engine::control::Overwrite,
    /// On an upload, the server names each partial file `NAME` + this while it arrives
    /// (`--partial-file-suffix`; a download's sink takes it from the caller, in
    /// [`SinkLimits::partial_suffix`](ferry_engine::io::files::SinkLimits)).
    pub partial_suffix: Option<String>,
    /// An upload whose source seals each file itself, anew every attempt (client-side
    /// envelopes, [`Envelopes`](ferry_engine::io::envelope::Envelopes)): CLIENT_HELLO flag bit
    /// 7, so that a resumed file's held head comes back to be adopted.
    pub sealed: bool,
}

fn for_user(user: &str) -> String {
    if user.is_empty() { String::new() } else { format!(" for user {user:?}") }
}

/// One transfer.
pub enum Transfer {
    /// Send `files` to the directory (or, for one file, the name) `path` on the server.
    Upload {
        /// What to send: the manifest and where its bytes are read (a
        /// [`Storage`](ferry_engine::io::storage::Storage) makes it).
        files: Outgoing,
        /// Where, relative to the server's docroot.
        path: String,
    },
    /// Receive `path` from the server into `sink`.
    Download {
        /// What, relative to the server's docroot.
        path: String,
        /// Where it lands (a [`Storage`](ferry_engine::io::storage::Storage) makes it).
        sink: Box<dyn BlockSink + Send>,
    },
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transfer::Upload { files, path } => {
                f.debug_struct("Upload").field("files", files).field("path", path).finish()
            }
            Transfer::Download { path, .. } => {
                f.debug_struct("Download").field("path", path).finish_non_exhaustive()
            }
        }
    }
}

impl Transfer {
    fn direction(&self) -> Direction {
        match self {
            Transfer::Upload { .. } => Direction::Upload,
            Transfer::Download { .. } => Direction::Download,
        }
    }

    fn path(&self) -> &str {
        match self {
            Transfer::Upload { path, .. } | Transfer::Download { path, .. } => path,
        }
    }
}

/// The session, as set up.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Upload or download.
    pub direction: Direction,
    /// The server's control address.
    pub server: SocketAddr,
    /// The session id.
    pub session_id: u64,
    /// This end's data address.
    pub local_data: Option<SocketAddr>,
    /// The server's data address.
    pub remote_data: SocketAddr,
    /// Files to send (upload).
    pub files: usize,
    /// The session's block size (the payload of a full DATA datagram, which is 59 bytes longer).
    pub block_size: usize,
}

/// What a transfer reports while it runs.
#[derive(Debug)]
pub enum ClientEvent<'a> {
    /// The session is set up; data flows next.
    Session(&'a SessionInfo),
    /// Progress, about every 250 ms and once at the end (from the data thread).
    Progress(&'a Progress),
    /// A session failed in a way worth retrying, and is run again after a wait
    /// ([`multi`](crate::multi) transfers only).
    Retry(&'a crate::multi::RetryInfo),
}

/// Receives [`ClientEvent`]s.
pub type Observer = Arc<dyn Fn(ClientEvent<'_>) + Send + Sync>;

/// Why a transfer did not happen or did not complete. [`ClientError::retryable`] says whether
/// running it again may help.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host name did not resolve.
    #[error("cannot resolve {host:?}")]
    Resolve {
        /// The name.
        host: String,
    },
    /// A local socket could not be opened or set up.
    #[error("{what}: {source}")]
    LocalSocket {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The known-hosts file could not be read.
    #[error("cannot read the known-hosts file {}: {source}", path.display())]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection could not even be attempted.
    #[error("cannot connect to {server}: {detail}")]
    Connect {
        /// The server's address.
        server: SocketAddr,
        /// Why.
        detail: String,
    },
    /// No key was pinned for this server.
    #[error("the server at {server} is unknown: its host key is {seen}, and no key was pinned")]
    UnknownHostKey {
        /// The server's address.
        server: SocketAddr,
        /// The key it presented.
        seen: String,
    },
    /// The server presented another key than the pinned one.
    #[error(
        "the server at {server} presented host key {seen}, not the pinned {pinned}: refusing (it may be an impostor, or its key changed)"
    )]
    HostKeyMismatch {
        /// The server's address.
        server: SocketAddr,
        /// The key it presented.
        seen: String,
        /// The pinned key.
        pinned: String,
    },
    /// The server presented the pinned key but could not prove it holds it.
    #[error("the server at {server} failed to prove its host key {seen}: {detail}")]
    HostKeyNotProven {
        /// The server's address.
        server: SocketAddr,
        /// The key it presented.
        seen: String,
        /// The handshake error.
        detail: String,
    },
    /// The server's host said nothing listens on the port.
    #[error(
        "nothing is listening on UDP port {} at {}: the host answered that the port is closed ({detail})",
        server.port(),
        server.ip()
    )]
    PortClosed {
        /// The server's address.
        server: SocketAddr,
        /// The handshake error.
        detail: String,
    },
    /// Nothing answered at all.
    #[error(
        "no answer from {server}: the host is down or unreachable, or a firewall drops UDP ({detail})"
    )]
    NoAnswer {
        /// The server's address.
        server: SocketAddr,
        /// The handshake error.
        detail: String,
    },
    /// The control stream failed during set-up.
    #[error("control stream: {0}")]
    ControlStream(String),
    /// Set-up failed: protocol, version or parameters.
    #[error("session setup failed: {0}")]
    Setup(String),
    /// The server refused the client's key (for the user it named).
    #[error("the server refused the key {fingerprint}{}: {reason}", for_user(user))]
    KeyRefused {
        /// The client key's fingerprint.
        fingerprint: String,
        /// The user the client named (empty: none, the server's default).
        user: String,
        /// The server's reason.
        reason: String,
    },
    /// The server refused the path.
    #[error("the server refused the path {path:?}: {reason}")]
    PathRefused {
        /// The path asked for.
        path: String,
        /// The server's reason.
        reason: String,
    },
    /// The server is at a session limit.
    #[error("the server is busy: {reason}")]
    Busy {
        /// The server's reason.
        reason: String,
    },
    /// The server refused the connection before its handshake: it is at its limit of
    /// connections in set-up, or this address is locked out after failed authentications.
    #[error(
        "{server} refused the connection: it is at its limit of connections being set up, or \
         this address is locked out after too many failed authentications"
    )]
    ConnectionRefused {
        /// The server's address.
        server: SocketAddr,
    },
    /// The server refused the session for another reason.
    #[error("the server refused the session (code {code}): {reason}")]
    Refused {
        /// Its refusal code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// The transfer was cancelled here.
    #[error("the transfer was cancelled: {reason}")]
    Cancelled {
        /// Why (the signal).
        reason: String,
    },
    /// The server ended the transfer.
    #[error("the server aborted the transfer (code {code}): {reason}")]
    Aborted {
        /// Its abort code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// A file could not be stored here (the session ended with it).
    #[error("cannot store a file: {message}")]
    Storage {
        /// Why.
        message: String,
    },
    /// The transfer failed on the way (the network, the control connection).
    #[error("the transfer failed: {0}")]
    Failed(String),
}

impl ClientError {
    /// Whether trying again later may succeed without anyone changing anything: the network
    /// or the server was temporarily unavailable, as opposed to a refusal or a local problem.
    pub fn retryable(&self) -> bool {
        use ClientError::*;
        match self {
            Connect { .. }
            | PortClosed { .. }
            | NoAnswer { .. }
            | ControlStream(_)
            | Busy { .. }
            | ConnectionRefused { .. } => true,
            Aborted { code, .. } => *code == ferry_engine::session::abort_code::CANCELLED,
            Failed(_) => true,
            Resolve { .. } | LocalSocket { .. } | KnownHosts { .. } | UnknownHostKey { .. } => {
                false
            }
            HostKeyMismatch { .. } | HostKeyNotProven { .. } | Setup(_) | KeyRefused { .. } => {
                false
            }
            PathRefused { .. } | Refused { .. } | Cancelled { .. } | Storage { .. } => false,
        }
    }
}

/// Runs one transfer: resolve, connect (pinning the server's key), authenticate, set up, move
/// the files. Returns the data path's report; files that failed alone are in it, not errors.
pub async fn transfer(
    opts: &ClientOptions,
    transfer: Transfer,
    observer: Observer,
    cancel: Cancel,
) -> Result<DriveReport, ClientError> {
    let single = matches!(&transfer, Transfer::Upload { files, .. } if files.entries.len() == 1);
    let role = Role { single, share: None };
    let (result, report) = attempt(opts, transfer, role, observer, cancel).await;
    result.map(|()| report.expect("a completed session reports"))
}

/// What one session is within its transfer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Role {
    /// The upload is of one file (perhaps in parts), which the destination may name.
    pub single: bool,
    /// A download's share of the listing (multi-session).
    pub share: Option<setup::Share>,
}

/// One session: its outcome, and what its data path reported (also when it failed, if it got
/// that far).
pub(crate) async fn attempt(
    opts: &ClientOptions,
    transfer: Transfer,
    role: Role,
    observer: Observer,
    cancel: Cancel,
) -> (Result<(), ClientError>, Option<DriveReport>) {
    match connect_and_run(opts, transfer, role, observer, cancel).await {
        Ok(done) => done,
        Err(e) => (Err(e), None),
    }
}

/// FILE_SUM checksums of an upload's files, by file id (empty: none).
type Sums = Vec<Option<ferry_engine::control::FileSum>>;

async fn connect_and_run(
    opts: &ClientOptions,
    transfer: Transfer,
    role: Role,
    observer: Observer,
    cancel: Cancel,
) -> Result<(Result<(), ClientError>, Option<DriveReport>), ClientError> {
    // -k 2 and 3: each file's checksum, for the server to compare with a copy it has. Before
    // the server is even reached (level 3 reads every file whole: the server's session must
    // not sit waiting for it), and off the async runtime.
    let (transfer, sums) = match transfer {
        Transfer::Upload { mut files, path } if opts.resume >= 2 => {
            let level = opts.resume;
            let (files, sums) = tokio::task::spawn_blocking(move || {
                let sums = files.sums(level);
                (files, sums)
            })
            .await
            .map_err(|e| ClientError::Failed(format!("checksumming the sources: {e}")))?;
            (Transfer::Upload { files, path }, sums)
        }
        t => (t, Vec::new()),
    };
    let server = (opts.host.as_str(), opts.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ClientError::Resolve { host: opts.host.clone() })?;
    let local_ip = local_ip_for(server);
    let pinned = match &opts.host_key {
        HostKey::Pinned(fp) => Some(fp.clone()),
        HostKey::KnownHosts(file) => {
            crate::known_hosts::lookup(file.as_deref(), &opts.host, opts.port).map_err(
                |source| {
                    let path =
                        file.clone().or_else(crate::known_hosts::default_path).unwrap_or_default();
                    ClientError::KnownHosts { path, source }
                },
            )?
        }
    };
    let endpoint = quinn::Endpoint::client(SocketAddr::new(local_ip, 0))
        .map_err(|source| ClientError::LocalSocket { what: "cannot open a UDP socket", source })?;
    let conn = connect(&endpoint, server, local_ip, pinned).await?;
    let outcome =
        match session(&conn, opts, (transfer, sums), role, local_ip, observer, cancel).await {
            Ok(done) => done,
            Err(e) => (Err(e), None),
        };
    conn.close(0u32.into(), b"done");
    // Long enough for the CONNECTION_CLOSE to leave (the endpoint sends it at once); not the
    // whole draining period (three probe timeouts, seconds on a long path): the session's
    // outcome is known, and a server that misses the close ends the connection by itself.
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
    Ok(outcome)
}

/// The local address to send from: loopback for a loopback server, else any.
pub(crate) fn local_ip_for(server: SocketAddr) -> IpAddr {
    match (server.ip().is_loopback(), server.is_ipv4()) {
        (true, true) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => Ipv4Addr::UNSPECIFIED.into(),
        (false, false) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The QUIC handshake with the pinned key; failures are told apart (unknown or wrong key, a
/// closed port, no answer).
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    local_ip: IpAddr,
    pinned: Option<String>,
) -> Result<quinn::Connection, ClientError> {
    let (config, seen) = crate::tls::client_config(pinned.clone())
        .map_err(|e| ClientError::Setup(format!("cannot configure TLS: {e}")))?;
    let connecting = endpoint
        .connect_with(config, server, "ferry")
        .map_err(|e| ClientError::Connect { server, detail: e.to_string() })?;
    // A closed port answers at once (ICMP port unreachable), which QUIC ignores: a probe beside
    // the handshake tells it in half a second instead of after the handshake's timeout.
    let mut probe =
        tokio::task::spawn_blocking(move || crate::sockets::port_refused(local_ip, server));
    tokio::pin!(connecting);
    let mut probing = true;
    let result = loop {
        tokio::select! {
            r = &mut connecting => break r,
            refused = &mut probe, if probing => {
                probing = false;
                if matches!(refused, Ok(true)) {
                    let detail = "ICMP port unreachable".to_owned();
                    return Err(ClientError::PortClosed { server, detail });
                }
            }
        }
    };
    let e = match result {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let detail = e.to_string();
    if let quinn::ConnectionError::ConnectionClosed(c) = &e
        && c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    {
        return Err(ClientError::ConnectionRefused { server });
    }
    if let Some(seen) = seen.lock().expect("lock").clone() {
        return Err(match pinned {
            None => ClientError::UnknownHostKey { server, seen },
            Some(p) if p != seen => ClientError::HostKeyMismatch { server, seen, pinned: p },
            Some(_) => ClientError::HostKeyNotProven { server, seen, detail },
        });
    }
    Err(if crate::sockets::port_refused(local_ip, server) {
        ClientError::PortClosed { server, detail }
    } else {
        ClientError::NoAnswer { server, detail }
    })
}

/// Hello, reply, then the session itself.
#[allow(clippy::too_many_arguments)]
async fn session(
    conn: &quinn::Connection,
    opts: &ClientOptions,
    (transfer, sums): (Transfer, Sums),
    role: Role,
    local_ip: IpAddr,
    observer: Observer,
    cancel: Cancel,
) -> Result<(Result<(), ClientError>, Option<DriveReport>), ClientError> {
    let stream_err = |e: &dyn std::fmt::Display| ClientError::ControlStream(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(&e))?;
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).map_err(|source| {
        ClientError::LocalSocket { what: "cannot open the data socket", source }
    })?;
    let data_port = socket.local_addr().map_err(|source| ClientError::LocalSocket {
        what: "cannot open the data socket",
        source,
    })?;
    let hello = hello(conn, opts, transfer.direction(), transfer.path(), data_port.port(), role)?;
    let mut out = Vec::new();
    hello.encode(&mut out);
    send.write_all(&out).await.map_err(|e| stream_err(&e))?;
    let (t, payload, leftover) =
        bridge::read_frame(&mut recv).await.map_err(|e| ClientError::Setup(e.to_string()))?;
    let reply = read_reply(t, &payload, opts, transfer.path())?;
    setup::accept_reply(&hello, &reply).map_err(|e| ClientError::Setup(e.to_string()))?;
    let remote_data = SocketAddr::new(conn.remote_address().ip(), reply.data_port);
    socket.connect(remote_data).map_err(|source| ClientError::LocalSocket {
        what: "cannot connect the data socket",
        source,
    })?;
    let socket = DataSocket::new(socket).map_err(|source| ClientError::LocalSocket {
        what: "cannot set up the data socket",
        source,
    })?;
    let files = match &transfer {
        Transfer::Upload { files, .. } => files.entries.len(),
        Transfer::Download { .. } => 0,
    };
    let info = SessionInfo {
        direction: transfer.direction(),
        server: conn.remote_address(),
        session_id: reply.session_id,
        local_data: socket.local_addr().ok(),
        remote_data,
        files,
        block_size: reply.block_size as usize,
    };
    observer(ClientEvent::Session(&info));
    let side = side(conn, opts, &reply, transfer, sums)?;
    let stream = ControlStream { send, recv, leftover };
    let on_progress = Box::new(move |p: &Progress| observer(ClientEvent::Progress(p)));
    let (result, report) =
        bridge::run_session(stream, side, socket, on_progress, cancel, |_| {}).await;
    Ok((result.map_err(drive_error), Some(report)))
}

/// How long the client waits for its CONNECTION_CLOSE to leave before it returns.
const CLOSE_LINGER: Duration = Duration::from_millis(100);

/// The signed CLIENT_HELLO.
fn hello(
    conn: &quinn::Connection,
    opts: &ClientOptions,
    direction: Direction,
    path: &str,
    data_port: u16,
    role: Role,
) -> Result<ClientHello, ClientError> {
    let mut hello = ClientHello {
        versions: vec![setup::VERSION],
        direction,
        suite: opts.cipher,
        block_size: block_size(opts, conn.remote_address()) as u32,
        target_rate: opts.target_rate,
        min_rate: opts.min_rate,
        policy: opts.policy,
        data_port,
        flags: if direction != Direction::Upload {
            0
        } else if opts.create_dir {
            setup::FLAG_CREATE_DIR
        } else {
            u8::from(role.single)
        } | if opts.preserve_times { setup::FLAG_PRESERVE_TIMES } else { 0 }
            | (opts.resume.min(3) << setup::RESUME_SHIFT)
            | if direction == Direction::Upload && opts.sealed { setup::FLAG_SEALED } else { 0 },
        path: if path.is_empty() { ".".into() } else { path.to_owned() },
        user: opts.user.clone(),
        share: role.share,
        overwrite: opts.overwrite,
        partial_suffix: if direction == Direction::Upload {
            opts.partial_suffix.clone()
        } else {
            None
        },
        public_key: *opts.identity.public(),
        signature: [0; 64],
    };
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, setup::AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| ClientError::Setup("TLS exporter unavailable".into()))?;
    hello.signature = opts.identity.sign(&hello.signed_message(&exporter));
    Ok(hello)
}

/// The block size to propose: `-Z`'s datagram, else the route's, else a 1500-byte MTU's.
fn block_size(opts: &ClientOptions, server: SocketAddr) -> usize {
    let datagram = opts.datagram_size.or_else(|| driver::route_datagram_limit(server));
    datagram.map_or(MAX_STANDARD_BLOCK, block_size_for_datagram)
}

/// The server's answer: its SERVER_HELLO, or its refusal as a typed error.
fn read_reply(
    t: u8,
    payload: &[u8],
    opts: &ClientOptions,
    path: &str,
) -> Result<ServerHello, ClientError> {
    if t == 5 {
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(t);
        frame.extend_from_slice(payload);
        let (code, reason) = match ControlMessage::decode(&frame) {
            Ok(Some((ControlMessage::Abort { code, reason }, _))) => (code, reason),
            _ => (0, "malformed refusal".into()),
        };
        return Err(match code {
            refusal::AUTHENTICATION => {
                let (fingerprint, user) = (opts.identity.fingerprint(), opts.user.clone());
                ClientError::KeyRefused { fingerprint, user, reason }
            }
            refusal::PATH | refusal::EXISTS => {
                ClientError::PathRefused { path: path.to_owned(), reason }
            }
            refusal::BUSY => ClientError::Busy { reason },
            code => ClientError::Refused { code, reason },
        });
    }
    if t != setup::T_SERVER_HELLO {
        return Err(ClientError::Setup("unexpected reply".into()));
    }
    ServerHello::decode(payload).map_err(|e| ClientError::Setup(e.to_string()))
}

/// The session's sender (upload) or receiver (download).
fn side(
    conn: &quinn::Connection,
    opts: &ClientOptions,
    reply: &ServerHello,
    transfer: Transfer,
    sums: Sums,
) -> Result<Box<dyn Side + Send>, ClientError> {
    let limits = RateLimits { target: opts.target_rate.max(1), min: opts.min_rate };
    let mut config = SessionConfig::new(reply.session_id, opts.cipher, limits);
    config.block_size = reply.block_size as usize;
    config.max_window = reply.max_window;
    config.resume = opts.resume > 0;
    config.resume_head =
        config.resume && opts.sealed && matches!(transfer, Transfer::Upload { .. });
    config.initial_rtt = conn.rtt().max(Duration::from_millis(1));
    config.validate().map_err(|e| ClientError::Setup(e.to_string()))?;
    let mut s = Zeroizing::new([0u8; 32]);
    conn.export_keying_material(
        s.as_mut(),
        setup::SESSION_EXPORTER_LABEL,
        &reply.session_id.to_be_bytes(),
    )
    .map_err(|_| ClientError::Setup("TLS exporter unavailable".into()))?;
    let secret = SessionSecret::new(*s);
    let now = Instant::now();
    let setup_err = |e: SessionError| ClientError::Setup(e.to_string());
    Ok(match transfer {
        Transfer::Upload { files, .. } => {
            let factory = opts.policy.factory();
            let mut sender =
                Sender::new(config, &secret, factory.as_ref(), now).map_err(setup_err)?;
            let mut sums = sums.into_iter();
            for entry in files.entries {
                sender.add_file_summed(entry, sums.next().flatten());
            }
            sender.finish_manifest();
            Box::new(SenderSide { sender, source: files.source })
        }
        Transfer::Download { sink, .. } => {
            let receiver = Receiver::new(config, &secret, now).map_err(setup_err)?;
            Box::new(ReceiverSide { receiver, sink })
        }
    })
}

fn drive_error(e: DriveError) -> ClientError {
    match e {
        DriveError::Cancelled(reason) => ClientError::Cancelled { reason },
        DriveError::Session(SessionError::PeerAborted { code, reason }) => {
            ClientError::Aborted { code, reason }
        }
        DriveError::Session(SessionError::Storage { message, .. }) => {
            ClientError::Storage { message }
        }
        e => ClientError::Failed(e.to_string()),
    }
}
