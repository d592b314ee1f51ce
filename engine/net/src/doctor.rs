//! `ferry doctor HOST[:PORT]`: what stands between a user and a fast transfer, checked against
//! the real server: name resolution, whether the UDP port answers (open, closed, filtered),
//! the host key (pinned, unknown, or another one), whether the identity is accepted (an empty
//! upload: authenticated, nothing written), the round-trip time, the route's MTU and the socket
//! buffers the kernel grants.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::io::driver::{DataSocket, SOCKET_BUFFER, route_datagram_limit};
use ferry_engine::io::source::SourceLimits;
use ferry_engine::io::storage::{PlainFiles, Storage};

use crate::client::{self, ClientError, ClientOptions, HostKey, Transfer};

/// Whether the server's UDP port answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// A QUIC handshake reached the server.
    Open,
    /// The host answered that nothing listens there (ICMP port unreachable).
    Closed,
    /// No answer at all within the timeout: the host is down, or a firewall drops UDP.
    Filtered,
}

/// What the host key check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// The server proved the pinned key.
    Pinned(String),
    /// No key is pinned for this server; it presented this one.
    Unpinned(String),
    /// The server presented another key than the pinned one.
    Mismatch {
        /// What it presented.
        seen: String,
        /// What was pinned.
        pinned: String,
    },
    /// Not checked (the port did not answer), or the handshake failed otherwise (the reason).
    Unknown(String),
}

/// Everything `ferry doctor` found.
#[derive(Debug, Clone)]
pub struct Findings {
    /// The addresses the name resolved to (empty: it did not resolve), and how long it took.
    pub addresses: Vec<SocketAddr>,
    /// How long resolution took.
    pub resolve_time: Duration,
    /// The port's state, if the name resolved.
    pub port: Option<PortState>,
    /// The host key check.
    pub key: KeyState,
    /// The QUIC handshake's round-trip time, when it completed.
    pub rtt: Option<Duration>,
    /// The identity check: `None` when none was given or the handshake did not complete;
    /// `Some(Ok(()))` accepted; `Some(Err(why))` refused or failed.
    pub identity: Option<Result<(), String>>,
    /// The largest UDP payload the route to the server carries unfragmented (the local route's
    /// MTU less the IP and UDP headers), if it can be told.
    pub datagram: Option<usize>,
    /// Receive and send buffer sizes the kernel granted a data socket (Linux reports twice the
    /// usable size), and what Ferry asks for.
    pub buffers: Option<(usize, usize)>,
    /// What Ferry asks for each buffer.
    pub buffers_wanted: usize,
}

/// Checks `opts.host:opts.port` as `ferry cp` would reach it. `identity`: whether to try an
/// empty authenticated upload with `opts.identity`. `timeout` bounds the handshake.
pub async fn examine(opts: &ClientOptions, identity: bool, timeout: Duration) -> Findings {
    let started = Instant::now();
    let addresses: Vec<SocketAddr> =
        (opts.host.as_str(), opts.port).to_socket_addrs().map(|a| a.collect()).unwrap_or_default();
    let mut f = Findings {
        resolve_time: started.elapsed(),
        addresses: addresses.clone(),
        port: None,
        key: KeyState::Unknown("the name did not resolve".into()),
        rtt: None,
        identity: None,
        datagram: None,
        buffers: None,
        buffers_wanted: SOCKET_BUFFER,
    };
    let Some(&server) = addresses.first() else { return f };
    f.datagram = route_datagram_limit(server);
    f.buffers = granted_buffers(server);
    let pinned = match &opts.host_key {
        HostKey::Pinned(fp) => Some(fp.clone()),
        HostKey::KnownHosts(file) => {
            crate::known_hosts::lookup(file.as_deref(), &opts.host, opts.port).ok().flatten()
        }
    };
    let local_ip = client::local_ip_for(server);
    let Ok(endpoint) = quinn::Endpoint::client(SocketAddr::new(local_ip, 0)) else {
        f.key = KeyState::Unknown("cannot open a local UDP socket".into());
        return f;
    };
    let handshake = client::connect(&endpoint, server, local_ip, pinned.clone());
    let outcome = tokio::time::timeout(timeout, handshake).await;
    match outcome {
        Err(_) | Ok(Err(ClientError::NoAnswer { .. })) => {
            f.port = Some(PortState::Filtered);
            f.key = KeyState::Unknown("no answer".into());
        }
        Ok(Err(ClientError::PortClosed { .. })) => {
            f.port = Some(PortState::Closed);
            f.key = KeyState::Unknown("the port is closed".into());
        }
        Ok(Err(ClientError::UnknownHostKey { seen, .. })) => {
            f.port = Some(PortState::Open);
            f.key = KeyState::Unpinned(seen);
        }
        Ok(Err(ClientError::HostKeyMismatch { seen, pinned, .. })) => {
            f.port = Some(PortState::Open);
            f.key = KeyState::Mismatch { seen, pinned };
        }
        Ok(Err(e)) => {
            f.port = Some(PortState::Open);
            f.key = KeyState::Unknown(e.to_string());
        }
        Ok(Ok(conn)) => {
            f.port = Some(PortState::Open);
            f.key = KeyState::Pinned(pinned.unwrap_or_default());
            f.rtt = Some(conn.rtt());
            conn.close(0u32.into(), b"doctor");
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(100), endpoint.wait_idle()).await;
    if identity && matches!(f.key, KeyState::Pinned(_)) {
        f.identity = Some(empty_upload(opts).await);
    }
    f
}

/// An upload of nothing to the user's docroot: authenticates and sets up a session that
/// writes nothing.
async fn empty_upload(opts: &ClientOptions) -> Result<(), String> {
    let files =
        PlainFiles.source(Vec::new(), SourceLimits::default()).map_err(|e| e.to_string())?;
    let transfer = Transfer::Upload { files, path: ".".into() };
    let (_tx, cancel) = tokio::sync::watch::channel(None);
    client::transfer(opts, transfer, Arc::new(|_| {}), cancel).await.map(|_| ()).map_err(
        |e| match e {
            ClientError::KeyRefused { .. } => format!("refused: {e}"),
            e => format!("the key passed, then: {e}"),
        },
    )
}

/// The buffers the kernel grants a data socket towards `server` (as the transfers ask).
fn granted_buffers(server: SocketAddr) -> Option<(usize, usize)> {
    let local = SocketAddr::new(client::local_ip_for(server), 0);
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(server).ok()?;
    DataSocket::new(socket).ok().map(|s| s.buffer_sizes())
}
