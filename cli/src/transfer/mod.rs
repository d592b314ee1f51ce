//! Real transfers: the QUIC control channel (TLS 1.3 on ring, ALPN `ferry/1`), session setup
//! (docs/PROTOCOL.md section 8), and the bridge between the control stream and the engine's
//! data-path driver thread. `ferry serve` and `ferry cp` are built on it.

pub(crate) mod cp;
pub(crate) mod limits;
pub(crate) mod log;
pub(crate) mod progress;
pub(crate) mod serve;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_engine::control::ControlMessage;
use ferry_engine::io::driver::{
    ControlIn, DataSocket, DriveError, DriveReport, Outbox, Progress, Side, drive,
};
use ferry_engine::session::abort_code;
use ferry_engine::setup;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::{self, Identity};

/// ALPN protocol id of the control channel.
pub(crate) const ALPN: &[u8] = b"ferry/1";
/// The default control port (UDP, QUIC).
pub(crate) const DEFAULT_PORT: u16 = 33001;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Flow-control credit of the control stream a client grants (the server's is
/// [`limits::PreAuth::stream_window`]). The set-up messages are a few KiB and control messages
/// are read as they arrive, so this bounds what a peer can make this end buffer.
const STREAM_WINDOW: u32 = 64 * 1024;
/// Bytes this end buffers for sending on the control stream before writes wait.
const SEND_WINDOW: u64 = 1 << 20;

/// QUIC transport parameters of the control connection, for either end. One bidirectional
/// stream (opened by the client) and no unidirectional ones, small windows, no QUIC datagrams.
/// Only the client sends keep-alives: a server keeps nothing alive on behalf of a peer that has
/// gone quiet (its idle timeout closes the connection), and a client that is moving data keeps
/// its own connection open.
fn transport(role: Role, stream_window: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(15).try_into().expect("idle timeout")));
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window(stream_window.into());
    // The connection carries exactly one stream.
    t.receive_window((2 * u64::from(stream_window)).try_into().expect("window"));
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(None);
    match role {
        Role::Server => {
            t.max_concurrent_bidi_streams(1u32.into());
            t.keep_alive_interval(None);
        }
        Role::Client => {
            // The server never opens a stream.
            t.max_concurrent_bidi_streams(0u32.into());
            // The control stream is quiet while data flows on the data path.
            t.keep_alive_interval(Some(Duration::from_secs(2)));
        }
    }
    Arc::new(t)
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Server,
    Client,
}

/// The server's QUIC configuration: a self-signed certificate carrying its ed25519 identity,
/// and the limits on connections that are not yet set up (see [`limits::PreAuth`]).
pub(crate) fn server_config(
    id: &Identity,
    pre_auth: &limits::PreAuth,
) -> Result<quinn::ServerConfig, String> {
    let pkcs8 = id.pkcs8_der();
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(|e| e.to_string())?;
    let params =
        rcgen::CertificateParams::new(vec!["ferry".to_owned()]).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(Role::Server, pre_auth.stream_window.max(4096)));
    // Connection migration would let a peer move the control connection to another address;
    // the data path is bound to the address the session was set up from.
    config.migration(false);
    // Handshakes waiting to be accepted, and the data they may hold, are bounded too.
    config.max_incoming(pre_auth.max_connections.max(1) * 2);
    config.incoming_buffer_size(16 * 1024);
    config.incoming_buffer_size_total(pre_auth.max_connections.max(1) as u64 * 16 * 1024);
    Ok(config)
}

/// The fingerprint of the key the server presented, once seen.
pub(crate) type SeenKey = Arc<Mutex<Option<String>>>;

/// The client's QUIC configuration, pinning the server key by fingerprint. The verifier records
/// the fingerprint it saw so a refusal can print it.
pub(crate) fn client_config(
    pinned: Option<String>,
) -> Result<(quinn::ClientConfig, SeenKey), String> {
    let seen = Arc::new(Mutex::new(None));
    let verifier = PinnedVerifier { pinned, seen: seen.clone() };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(Role::Client, STREAM_WINDOW));
    Ok((config, seen))
}

/// The ed25519 public key in a certificate's SubjectPublicKeyInfo (RFC 8410 encoding).
///
/// Used for the fingerprint check only: the handshake signature is then verified with this same
/// key, so a certificate that carries the pinned key anywhere but where it signs with it fails.
fn cert_ed25519_key(cert: &[u8]) -> Option<[u8; 32]> {
    const SPKI: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let at = cert.windows(SPKI.len()).position(|w| w == SPKI)?;
    cert.get(at + SPKI.len()..at + SPKI.len() + 32)?.try_into().ok()
}

/// Accepts exactly the server whose ed25519 key has the pinned fingerprint, proven by the TLS
/// 1.3 handshake signature. There is no trust on first use: without a pin every server is
/// refused (and its fingerprint reported).
#[derive(Debug)]
struct PinnedVerifier {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl PinnedVerifier {
    fn check(&self, cert: &[u8]) -> Result<[u8; 32], rustls::Error> {
        let key = cert_ed25519_key(cert).ok_or_else(|| {
            rustls::Error::General("the server's certificate has no ed25519 key".into())
        })?;
        let fp = identity::fingerprint(&key);
        *self.seen.lock().expect("lock") = Some(fp.clone());
        match &self.pinned {
            Some(p) if *p == fp => Ok(key),
            _ => Err(rustls::Error::General(format!("unknown host key {fp}"))),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let key = self.check(cert)?;
        if dss.scheme == SignatureScheme::ED25519
            && identity::verify(&key, message, dss.signature())
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Reads one setup frame: its type, payload, and any bytes read beyond it. At most
/// [`setup::MAX_SETUP_FRAME`] bytes are accepted (the caller bounds the time).
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
) -> Result<(u8, Vec<u8>, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4 * 1024];
    loop {
        match setup::split_frame(&buf) {
            Ok(Some((t, payload, used))) => {
                let payload = payload.to_vec();
                let rest = buf[used..].to_vec();
                return Ok((t, payload, rest));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("malformed setup frame: {e}")),
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(None) => return Err("the peer closed the control stream during setup".into()),
            Err(e) => return Err(format!("control stream: {e}")),
        }
    }
}

/// Control messages queued between the control stream and the data thread, each way.
const CONTROL_QUEUE: usize = 1024;

/// Cancels sessions: set to `Some(reason)` (e.g. on SIGTERM) and every session watching it ends,
/// removing its partial files and telling the peer the reason.
pub(crate) type Cancel = tokio::sync::watch::Receiver<Option<&'static str>>;

/// Resolves when the process receives SIGINT or SIGTERM, with a description of the signal.
pub(crate) async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "terminated (SIGTERM)",
        _ = int.recv() => "interrupted (SIGINT)",
    }
}

/// Writes an ABORT frame and finishes the stream.
pub(crate) async fn send_abort(send: &mut quinn::SendStream, code: u16, reason: &str) {
    let mut bytes = Vec::new();
    ControlMessage::Abort { code, reason: reason.to_owned() }.encode(&mut bytes);
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Runs a session: the driver on its own thread with `socket`, control messages bridged to the
/// QUIC stream in both directions. Returns when the session is over and the peer has received
/// every control message (or a bounded wait ran out).
pub(crate) async fn run_session(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    leftover: Vec<u8>,
    mut side: Box<dyn Side + Send>,
    socket: DataSocket,
    mut on_progress: Box<dyn FnMut(&Progress) + Send>,
    mut cancel: Cancel,
) -> (Result<(), DriveError>, DriveReport) {
    // Both ways the queue between the control stream and the data thread is bounded: a peer
    // that floods control messages is slowed by QUIC flow control (the reader waits for room),
    // and one that stops reading stops the session's output instead of growing memory.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<ControlIn>(CONTROL_QUEUE);
    // Cancellation (a signal): the driver ends as if the control channel had closed, which drops
    // its file sink (partial files are removed), and the peer gets an ABORT saying why.
    let cancel_tx = in_tx.clone();
    let cancelled = Arc::new(Mutex::new(None::<&'static str>));
    let cancel_task = {
        let cancelled = cancelled.clone();
        tokio::spawn(async move {
            let reason = match cancel.wait_for(Option::is_some).await {
                Ok(r) => (*r).expect("waited for Some"),
                Err(_) => return,
            };
            *cancelled.lock().expect("lock") = Some(reason);
            let _ = cancel_tx.send(ControlIn::Closed(reason.to_owned())).await;
        })
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<ControlMessage>(CONTROL_QUEUE);
    let driver = std::thread::Builder::new()
        .name("ferry-data".into())
        .spawn(move || {
            use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
            let mut out = |m| match out_tx.try_send(m) {
                Ok(()) => Outbox::Sent,
                Err(TrySendError::Full(m)) => Outbox::Full(m),
                Err(TrySendError::Closed(_)) => Outbox::Closed,
            };
            let mut input = || match in_rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    Some(ControlIn::Closed("control layer gone".into()))
                }
            };
            let mut socket = socket;
            drive(side.as_mut(), &mut socket, &mut input, &mut out, on_progress.as_mut())
        })
        .map_err(|e| format!("cannot start the data-path thread: {e}"));
    let driver = match driver {
        Ok(d) => d,
        Err(e) => {
            cancel_task.abort();
            return (Err(DriveError::ControlClosed(e)), DriveReport::default());
        }
    };
    let reader = tokio::spawn(async move {
        let mut buf = leftover;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            loop {
                match ControlMessage::decode(&buf) {
                    Ok(Some((m, used))) => {
                        buf.drain(..used);
                        if in_tx.send(ControlIn::Message(m)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let reason = format!("malformed control frame: {e}");
                        let _ = in_tx.send(ControlIn::Closed(reason)).await;
                        return;
                    }
                }
            }
            match recv.read(&mut chunk).await {
                Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(None) => {
                    let reason = "the peer closed the control stream".to_owned();
                    let _ = in_tx.send(ControlIn::Closed(reason)).await;
                    return;
                }
                Err(e) => {
                    let _ = in_tx.send(ControlIn::Closed(e.to_string())).await;
                    return;
                }
            }
        }
    });
    let mut bytes = Vec::new();
    while let Some(m) = out_rx.recv().await {
        bytes.clear();
        m.encode(&mut bytes);
        if send.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let reason = *cancelled.lock().expect("lock");
    if let Some(reason) = reason {
        bytes.clear();
        ControlMessage::Abort { code: abort_code::CANCELLED, reason: reason.to_owned() }
            .encode(&mut bytes);
        let _ = send.write_all(&bytes).await;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    cancel_task.abort();
    let outcome = tokio::task::spawn_blocking(move || driver.join())
        .await
        .expect("join task")
        .unwrap_or_else(|_| {
            (
                Err(DriveError::ControlClosed("the data-path thread panicked".into())),
                DriveReport::default(),
            )
        });
    reader.abort();
    outcome
}

/// The server's listening socket: UDP on `addr`, with `SO_REUSEPORT` so that the sessions' data
/// sockets ([`data_port_socket`]) can share its port. Linux delivers a datagram to the socket
/// whose connected peer address matches its source, and to the unconnected (QUIC) socket
/// otherwise.
///
/// `SO_REUSEPORT` would also let a second server of the same user start on the same port and
/// silently take half the new connections, so the port is first claimed without it: if anything
/// holds it, this fails with "address in use" like any server.
pub(crate) fn listening_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let probe = reuseport_socket(addr, false)?;
    let addr = probe.local_addr()?; // a port of 0 becomes the port the kernel chose
    drop(probe);
    reuseport_socket(addr, true)
}

/// A data socket on the server's listening address and port (see [`listening_socket`]).
pub(crate) fn data_port_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    reuseport_socket(addr, true)
}

fn reuseport_socket(
    addr: std::net::SocketAddr,
    reuse: bool,
) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = socket(family, SocketType::DGRAM, None)?;
    if reuse {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    if addr.is_ipv6() {
        // Like std's bind: a wildcard IPv6 address also takes IPv4 (mapped) peers.
        let _ = sockopt::set_ipv6_v6only(&fd, false);
    }
    bind(&fd, &addr)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Raises the soft limit on open files to the hard limit: every session holds a few
/// descriptors (its sockets, a bounded number of files), and a server runs many sessions.
pub(crate) fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

/// Parses a rate in bits/s: a number with an optional `k`, `m` or `g` suffix (powers of 1000),
/// e.g. `500m`, `1.5g`, `100000`.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a rate: use bits/s with an optional k, m or g suffix, e.g. 500m")
    })?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e13 {
        return Err(format!("{s:?} is out of range (0 to 10000g)"));
    }
    Ok((v * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500m").unwrap(), 500_000_000);
        assert_eq!(parse_rate("1.5G").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("100k").unwrap(), 100_000);
        assert_eq!(parse_rate("12345").unwrap(), 12_345);
        assert_eq!(parse_rate("0").unwrap(), 0);
        for bad in ["", "m", "fast", "-1m", "1t", "1e20"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_the_certificate_key() {
        let id = Identity::generate("t");
        let pkcs8 = id.pkcs8_der();
        let key = rcgen::KeyPair::try_from(pkcs8.as_slice()).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ferry".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(cert_ed25519_key(cert.der()), Some(*id.public()));
    }
}
