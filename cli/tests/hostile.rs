//! Hostile QUIC clients against a real `ferry serve`, written with quinn for the tests: idle
//! after the handshake, half a hello, floods of streams and connections from one source, many
//! correctly signed hellos with unknown keys, a manifest flood after authentication. For each,
//! the hostile connections are closed or refused, the server's memory, descriptors and threads
//! stay under stated bounds, and a legitimate transfer run at the same time succeeds.
//!
//! The hostile clients use their own loopback source addresses (127.0.0.2 and up), as an
//! attacker would use its own address, so that per-source limits apply to them and not to the
//! legitimate client on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_engine::control::{ControlMessage, FileEntry};
use ferry_engine::setup::{self, ClientHello, Direction};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Bounds the server must stay under while attacked (a server at rest uses about 15 MiB, a
/// few tens of descriptors and a handful of threads on this machine).
const MAX_RSS_KIB: u64 = 160 * 1024;
const MAX_FDS: usize = 200;
const MAX_THREADS: u64 = 40;

/// Accepts any server certificate: the hostile client does not care who the server is.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ED25519]
    }
}

/// A client endpoint on `ip`, with a transport that never times out on its own.
fn endpoint(ip: &str) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"ferry/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    t.keep_alive_interval(Some(Duration::from_millis(500)));
    config.transport_config(Arc::new(t));
    let mut ep = quinn::Endpoint::client(format!("{ip}:0").parse().unwrap()).unwrap();
    ep.set_default_client_config(config);
    ep
}

fn server_addr(s: &Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], s.port))
}

async fn connect(ep: &quinn::Endpoint, s: SocketAddr) -> Result<quinn::Connection, String> {
    let connecting = ep.connect(s, "ferry").map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// A legitimate upload started next to the attack.
fn legitimate(s: &Server, dir: &Path, name: &str) -> Child {
    std::fs::write(dir.join(name), data(1 << 20, 5)).unwrap();
    spawn_cp(s, &[name, "127.0.0.1:."], dir)
}

fn assert_legitimate_succeeded(s: &Server, dir: &Path, name: &str, c: Child) {
    let (status, err) = finish(c, "the legitimate transfer");
    assert!(status.success(), "the legitimate transfer failed during the attack: {err}");
    assert_eq!(digest(&s.docroot().join(name)), digest(&dir.join(name)));
}

fn assert_bounded(s: &Server, when: &str) -> Usage {
    let u = s.usage();
    eprintln!("server {when}: {u:?}");
    assert!(u.rss_kib < MAX_RSS_KIB, "{when}: RSS {} KiB", u.rss_kib);
    assert!(u.fds < MAX_FDS, "{when}: {} descriptors", u.fds);
    assert!(u.threads < MAX_THREADS, "{when}: {} threads", u.threads);
    u
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Before: the server sent keep-alives on behalf of any connection and had no deadline for
/// the first message, so idle connections stayed open indefinitely.
#[test]
fn idle_and_half_open_connections_are_closed_at_the_setup_deadline() {
    let s = Server::with_args(&["--setup-timeout", "2"]);
    let local = tempfile::tempdir().unwrap();
    let addr = server_addr(&s);
    let rt = rt();
    rt.block_on(async {
        let ep = endpoint("127.0.0.2");
        let mut conns = Vec::new();
        for _ in 0..5 {
            conns.push(connect(&ep, addr).await.expect("handshake"));
        }
        // One opens the control stream and sends the first bytes of a hello, then stalls.
        let (mut send, _recv) = conns[0].open_bi().await.unwrap();
        send.write_all(&[0, 0, 1, 0, setup::T_CLIENT_HELLO, 1]).await.unwrap();
        let legit = legitimate(&s, local.path(), "legit");
        let started = Instant::now();
        for c in &conns {
            let closed = tokio::time::timeout(Duration::from_secs(10), c.closed()).await;
            assert!(closed.is_ok(), "an idle connection was still open after 10 s");
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(9), "closed after {took:?}");
        assert_legitimate_succeeded(&s, local.path(), "legit", legit);
    });
    assert!(s.log().contains("no authenticated set-up within 2s"), "{}", s.log());
    assert_bounded(&s, "after idle connections");
}

/// Before: quinn's defaults (100 streams per connection, large windows, no caps on connections
/// in all or per source): two unauthenticated connections grew the server from 50 to 161 MB.
#[test]
fn floods_of_streams_and_connections_from_one_source_stay_bounded() {
    let mut s = Server::start();
    let local = tempfile::tempdir().unwrap();
    let addr = server_addr(&s);
    let before = s.usage();
    let rt = rt();
    let (established, refused) = rt.block_on(async {
        let ep = endpoint("127.0.0.3");
        let legit = legitimate(&s, local.path(), "legit");
        // 60 connections at once from one address: at most 8 are taken at a time.
        let results = all((0..60).map(|_| {
            let ep = ep.clone();
            async move { connect(&ep, addr).await }
        }))
        .await;
        let conns: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let refused = results.len() - conns.len();
        // Each opens as many streams as it can and pushes data: one bidirectional stream, no
        // unidirectional ones, and 64 KiB of credit.
        let mut pushed = 0u64;
        for c in &conns {
            let more = tokio::time::timeout(Duration::from_millis(300), async {
                let a = c.open_bi().await;
                let b = c.open_bi().await;
                (a, b)
            })
            .await;
            if let Ok((Ok((mut send, _)), _)) = more {
                let junk = vec![0x41u8; 256 * 1024];
                if let Ok(Ok(())) =
                    tokio::time::timeout(Duration::from_millis(500), send.write_all(&junk)).await
                {
                    pushed += junk.len() as u64;
                }
            }
            let uni = tokio::time::timeout(Duration::from_millis(100), c.open_uni()).await;
            assert!(uni.is_err() || uni.unwrap().is_err(), "a unidirectional stream was allowed");
        }
        assert_eq!(pushed, 0, "the server gave more than its stream window of credit");
        assert_bounded(&s, "during the flood");
        assert_legitimate_succeeded(&s, local.path(), "legit", legit);
        (conns.len(), refused)
    });
    eprintln!("{established} connections established, {refused} refused");
    assert!(established <= 8, "{established} connections from one source");
    assert!(refused >= 40, "only {refused} of 60 refused");
    let after = assert_bounded(&s, "after the flood");
    assert!(after.rss_kib < before.rss_kib + 64 * 1024, "{before:?} -> {after:?}");
    assert!(s.alive());
}

/// A hello signed by a key the server does not know.
async fn stranger_hello(c: &quinn::Connection) -> Result<u16, String> {
    let key = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(key.as_ref()).unwrap();
    let (mut send, mut recv) = c.open_bi().await.map_err(|e| e.to_string())?;
    let hello = signed_hello(c, &key, Direction::Upload, 40000);
    send.write_all(&hello).await.map_err(|e| e.to_string())?;
    read_abort(&mut recv).await
}

fn signed_hello(c: &quinn::Connection, key: &Ed25519KeyPair, d: Direction, port: u16) -> Vec<u8> {
    let mut hello = ClientHello {
        versions: vec![setup::VERSION],
        direction: d,
        suite: ferry_engine::crypto::CipherSuite::Aes128,
        block_size: 1413,
        target_rate: 100_000_000,
        min_rate: 0,
        policy: ferry_engine::rate::Policy::Fixed,
        data_port: port,
        flags: 0,
        path: ".".into(),
        user: String::new(),
        share: None,
        overwrite: Default::default(),
        partial_suffix: None,
        public_key: key.public_key().as_ref().try_into().unwrap(),
        signature: [0; 64],
    };
    let mut exporter = [0u8; 32];
    c.export_keying_material(&mut exporter, setup::AUTH_EXPORTER_LABEL, b"").unwrap();
    hello.signature = key.sign(&hello.signed_message(&exporter)).as_ref().try_into().unwrap();
    let mut out = Vec::new();
    hello.encode(&mut out);
    out
}

/// Reads control frames until an ABORT, returning its code.
async fn read_abort(recv: &mut quinn::RecvStream) -> Result<u16, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 5 {
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            if buf[4] == 5
                && let Ok(Some((ControlMessage::Abort { code, .. }, _))) =
                    ControlMessage::decode(&buf)
            {
                return Ok(code);
            }
            buf.drain(..4 + len);
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(None) => return Err("stream ended without an ABORT".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn many_signed_hellos_with_unknown_keys_leave_the_server_responsive() {
    // The lockout after failed authentications (tested on its own in transfer.rs) would stop
    // this flood after ten; lifted here, so every hello costs the server a signature check.
    let mut s = Server::with_args(&["--max-auth-failures", "1000000"]);
    let local = tempfile::tempdir().unwrap();
    let addr = server_addr(&s);
    let rt = rt();
    rt.block_on(async {
        let ep = endpoint("127.0.0.4");
        let legit = legitimate(&s, local.path(), "legit");
        let mut codes = Vec::new();
        for _round in 0..40 {
            let batch = all((0..4).map(|_| {
                let ep = ep.clone();
                async move {
                    let c = connect(&ep, addr).await?;
                    stranger_hello(&c).await
                }
            }))
            .await;
            codes.extend(batch);
        }
        let refused = codes.iter().filter(|c| matches!(c, Ok(11))).count();
        assert!(refused >= 150, "{refused} of {} refused with code 11: {codes:?}", codes.len());
        assert_bounded(&s, "after 160 stranger hellos");
        assert_legitimate_succeeded(&s, local.path(), "legit", legit);
    });
    assert!(s.alive());
    assert!(s.log().contains("authentication refused for key SHA256:"));
}

/// Both at once, with the server's default limits: a flood of handshakes from one source
/// (connections opened as fast as they are refused, the accepted ones held idle) and failed
/// authentications from 40 other sources (each locked out after its tenth). The authorised
/// client's transfer, started meanwhile, completes; every failing source is locked out and
/// audited; the server stays bounded.
#[test]
fn a_handshake_flood_and_failures_from_many_sources_do_not_stop_an_authorised_client() {
    let mut s = Server::start();
    let local = tempfile::tempdir().unwrap();
    let addr = server_addr(&s);
    let rt = rt();
    rt.block_on(async {
        let legit = legitimate(&s, local.path(), "legit");
        let flood = tokio::spawn(async move {
            let ep = endpoint("127.0.0.2");
            let mut held = Vec::new();
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..10 {
                let batch = all((0..20).map(|_| {
                    let ep = ep.clone();
                    async move { connect(&ep, addr).await }
                }))
                .await;
                for r in batch {
                    match r {
                        Ok(c) => {
                            ok += 1;
                            held.push(c);
                        }
                        Err(_) => refused += 1,
                    }
                }
            }
            (ok, refused)
        });
        let failing = all((10..50).map(|i| async move {
            let ep = endpoint(&format!("127.0.0.{i}"));
            let mut codes = Vec::new();
            for _ in 0..12 {
                let code = match connect(&ep, addr).await {
                    Ok(c) => stranger_hello(&c).await.unwrap_or(0),
                    Err(_) => 0,
                };
                codes.push(code);
            }
            codes
        }))
        .await;
        let (ok, refused) = flood.await.unwrap();
        eprintln!("flood: {ok} handshakes accepted, {refused} refused");
        assert!(ok <= 8 * 10 + 8, "{ok} handshakes accepted from one source");
        for codes in &failing {
            let refused = codes.iter().filter(|&&c| c == 11).count();
            assert!((1..=10).contains(&refused), "a failing source got {codes:?}");
        }
        assert_bounded(&s, "during the flood and the failures");
        assert_legitimate_succeeded(&s, local.path(), "legit", legit);
    });
    let locked: std::collections::BTreeSet<String> = s
        .events()
        .iter()
        .filter(|e| e["event"] == "lockout")
        .map(|e| e["source"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(locked.len(), 40, "every failing source is locked out: {locked:?}");
    assert!(!locked.contains("127.0.0.1"), "the authorised client's address was locked out");
    assert!(s.alive());
}

/// The server's authorised client key, for a hostile client that authenticates.
fn authorised_key(s: &Server) -> Ed25519KeyPair {
    let key = ssh_key::PrivateKey::read_openssh_file(&s.key()).unwrap();
    let kp = key.key_data().ed25519().unwrap();
    Ed25519KeyPair::from_seed_and_public_key(&kp.private.to_bytes(), &kp.public.0).unwrap()
}

/// Before: every announced file opened a partial file and a descriptor ("too many open files"
/// at file 19,987), with no cap on files per session.
#[test]
fn a_manifest_flood_after_authentication_hits_the_file_cap() {
    let mut s = Server::with_args(&["--max-files", "3000"]);
    let local = tempfile::tempdir().unwrap();
    let addr = server_addr(&s);
    let key = authorised_key(&s);
    let rt = rt();
    rt.block_on(async {
        let ep = endpoint("127.0.0.5");
        let c = connect(&ep, addr).await.unwrap();
        let data_port = std::net::UdpSocket::bind("127.0.0.5:0").unwrap();
        let port = data_port.local_addr().unwrap().port();
        let (mut send, mut recv) = c.open_bi().await.unwrap();
        send.write_all(&signed_hello(&c, &key, Direction::Upload, port)).await.unwrap();
        let legit = legitimate(&s, local.path(), "legit");
        // Announce files without end (no data): the receiver stops at its cap.
        let writer = async move {
            let mut frame = Vec::new();
            for id in 0..200_000u32 {
                let path = format!("flood/{id:08}-{}", "x".repeat(80));
                let entry =
                    FileEntry { id, size: 1 << 20, mtime_ns: 0, mode: 0o644, path, part: None };
                ControlMessage::File(entry).encode(&mut frame);
                if frame.len() > 32 * 1024 {
                    if send.write_all(&frame).await.is_err() {
                        return id;
                    }
                    frame.clear();
                }
            }
            200_000
        };
        let reader = async move {
            // The server hello first, then the abort.
            let mut buf = [0u8; 4];
            recv.read_exact(&mut buf).await.unwrap();
            let len = u32::from_be_bytes(buf) as usize;
            let mut hello = vec![0u8; len];
            recv.read_exact(&mut hello).await.unwrap();
            assert_eq!(hello[0], setup::T_SERVER_HELLO);
            read_abort(&mut recv).await
        };
        let (sent, code) = tokio::join!(writer, reader);
        assert_eq!(code, Ok(ferry_engine::session::abort_code::LIMIT), "after {sent} files");
        assert!(sent < 200_000, "the server kept taking files");
        assert_bounded(&s, "after the manifest flood");
        assert_legitimate_succeeded(&s, local.path(), "legit", legit);
    });
    // No partial file, directory or descriptor was created for announced files.
    assert_eq!(tree(&s.docroot()), ["legit"]);
    assert!(s.alive());
    wait_for("the session's end in the log", || s.log().contains("more than 3000 files"));
}

/// Runs every future at once (each a task) and returns their outputs in order.
async fn all<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
