//! `quic-copy`: a QUIC bulk file copy on quinn, the baseline Ferry's loopback and WAN
//! benchmarks compare against. Not a product: see benches/README.md.
//!
//! ```text
//! quic-copy serve --listen 127.0.0.1:0 --out PATH [--cc cubic|bbr]
//! quic-copy send --connect ADDR --file PATH [--cert-sha256 HEX] [--cc cubic|bbr]
//! ```
//!
//! One connection, one bidirectional stream: the sender writes an 8-byte big-endian length and
//! the file, then finishes its side; the receiver writes the bytes to `--out` (a real file
//! write, in 1 MiB batches), hashes them with BLAKE3, and answers with the byte count and its
//! digest; the sender compares them with its own and fails unless both match. Each side prints
//! one JSON line with its result. The server's first stdout line is
//! `{"listening":"IP:PORT","cert_sha256":"HEX"}`, so a harness can start it on port 0.
//!
//! The certificate is self-signed and generated at start. The client checks the TLS 1.3
//! handshake signature against the certificate's key and, when `--cert-sha256` is given, pins
//! the certificate; without it any certificate is accepted (a throughput baseline on a link the
//! harness controls, not an authenticated transfer).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use quinn::{EndpointConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

const ALPN: &[u8] = b"quic-copy/1";
/// Bytes per file read / file write and per BLAKE3 update (its multi-chunk SIMD path).
const BATCH: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(about = "QUIC (quinn) bulk file copy: the throughput baseline of Ferry's benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Cc {
    /// quinn's default congestion controller.
    Cubic,
    /// quinn's (experimental) BBR.
    Bbr,
}

#[derive(clap::Args, Debug)]
struct Tuning {
    /// Congestion controller.
    #[arg(long, value_enum, default_value = "cubic")]
    cc: Cc,
    /// Stream and connection receive windows and the send window, MiB (large enough that flow
    /// control never limits on loopback).
    #[arg(long, default_value_t = 128)]
    window_mib: u64,
    /// Maximum UDP payload used from the start (quinn's default starts at 1200 and probes up to
    /// 1452); 1452 matches the largest quinn's MTU discovery would reach by default.
    #[arg(long, default_value_t = 1452)]
    mtu: u16,
    /// Disable UDP GSO (quinn enables it by default where the kernel supports it).
    #[arg(long)]
    no_gso: bool,
    /// SO_RCVBUF / SO_SNDBUF requested, bytes (the kernel caps it at net.core.rmem_max /
    /// wmem_max; the same request as Ferry's data path makes).
    #[arg(long, default_value_t = 8 << 20)]
    socket_buffer: usize,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Accept one connection, receive one stream into --out, print a JSON result.
    Serve {
        /// Address to listen on (port 0: any; the first stdout line says which).
        #[arg(long)]
        listen: SocketAddr,
        /// Where to write the received file.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Send --file on one stream to a `quic-copy serve`, print a JSON result.
    Send {
        /// The server's address.
        #[arg(long)]
        connect: SocketAddr,
        /// The file to send.
        #[arg(long)]
        file: PathBuf,
        /// Pin the server certificate by the SHA-256 of its DER (hex, as `serve` prints it).
        #[arg(long)]
        cert_sha256: Option<String>,
        #[command(flatten)]
        tuning: Tuning,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the tokio runtime: {e}")),
    };
    let result = match cli.cmd {
        Cmd::Serve { listen, out, tuning } => rt.block_on(serve(listen, out, tuning)),
        Cmd::Send { connect, file, cert_sha256, tuning } => {
            rt.block_on(send(connect, file, cert_sha256, tuning))
        }
    };
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("quic-copy: {msg}");
    std::process::exit(1);
}

fn transport(t: &Tuning) -> Arc<TransportConfig> {
    let window = t.window_mib << 20;
    let mut c = TransportConfig::default();
    c.stream_receive_window(VarInt::from_u64(window).expect("window fits a VarInt"))
        .receive_window(VarInt::from_u64(window).expect("window fits a VarInt"))
        .send_window(window)
        .initial_mtu(t.mtu)
        .enable_segmentation_offload(!t.no_gso)
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("idle timeout")));
    if t.cc == Cc::Bbr {
        c.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    Arc::new(c)
}

fn bind(addr: SocketAddr, t: &Tuning) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind(addr).map_err(|e| format!("cannot bind UDP {addr}: {e}"))?;
    // Best effort, like Ferry's data path: the kernel caps the request at its maxima.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, t.socket_buffer);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, t.socket_buffer);
    Ok(socket)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve(listen: SocketAddr, out: PathBuf, t: Tuning) -> Result<(), String> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let cert_der = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .map_err(|e| format!("TLS server config: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(&t));
    let socket = bind(listen, &t)?;
    let endpoint = quinn::Endpoint::new(
        EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("cannot start the QUIC endpoint: {e}"))?;
    let local = endpoint.local_addr().map_err(|e| e.to_string())?;
    let cert_sha = hex(&sha2::Sha256::digest(cert_der.as_ref()));
    println!("{}", serde_json::json!({ "listening": local.to_string(), "cert_sha256": cert_sha }));
    std::io::stdout().flush().map_err(|e| e.to_string())?;

    let mut file =
        File::create(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let incoming = endpoint.accept().await.ok_or("the endpoint closed before a connection")?;
    let conn = incoming.await.map_err(|e| format!("handshake failed: {e}"))?;
    let started = Instant::now();
    let (mut tx, mut rx) = conn.accept_bi().await.map_err(|e| format!("no stream: {e}"))?;
    let mut len = [0u8; 8];
    rx.read_exact(&mut len).await.map_err(|e| format!("reading the length: {e}"))?;
    let expected = u64::from_be_bytes(len);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BATCH];
    let mut total = 0u64;
    let mut filled = 0;
    loop {
        let n = rx.read(&mut buf[filled..]).await.map_err(|e| format!("receiving: {e}"))?;
        if let Some(n) = n {
            filled += n;
        }
        if filled == buf.len() || (n.is_none() && filled > 0) {
            file.write_all(&buf[..filled])
                .map_err(|e| format!("writing {}: {e}", out.display()))?;
            hasher.update(&buf[..filled]);
            total += filled as u64;
            filled = 0;
        }
        if n.is_none() {
            break;
        }
    }
    file.flush().map_err(|e| format!("writing {}: {e}", out.display()))?;
    let digest = hasher.finalize();
    let mut answer = total.to_be_bytes().to_vec();
    answer.extend_from_slice(digest.as_bytes());
    tx.write_all(&answer).await.map_err(|e| format!("answering: {e}"))?;
    tx.finish().map_err(|e| format!("answering: {e}"))?;
    // Wait for the sender to close the connection (it has read the answer), at most 10 s.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    let seconds = started.elapsed().as_secs_f64();
    let ok = total == expected;
    println!(
        "{}",
        serde_json::json!({
            "role": "serve", "bytes": total, "expected": expected, "seconds": seconds,
            "blake3": digest.to_hex().to_string(), "cc": format!("{:?}", t.cc).to_lowercase(),
            "stats": format!("{:?}", conn.stats().path),
        })
    );
    endpoint.wait_idle().await;
    if ok {
        Ok(())
    } else {
        Err(format!("received {total} bytes, the sender announced {expected}"))
    }
}

async fn send(
    connect: SocketAddr,
    path: PathBuf,
    pin: Option<String>,
    t: Tuning,
) -> Result<(), String> {
    let mut file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
    let verifier = AnyCertVerifier { pin: pin.map(|p| p.to_lowercase()), provider: provider() };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(&t));
    let local: SocketAddr =
        if connect.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("wildcard address");
    let socket = bind(local, &t)?;
    let endpoint = quinn::Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| format!("cannot start the QUIC endpoint: {e}"))?;

    let started = Instant::now();
    let conn = endpoint
        .connect_with(config, connect, "localhost")
        .map_err(|e| format!("cannot connect to {connect}: {e}"))?
        .await
        .map_err(|e| format!("handshake with {connect} failed: {e}"))?;
    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| format!("no stream: {e}"))?;
    tx.write_all(&size.to_be_bytes()).await.map_err(|e| format!("sending: {e}"))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BATCH];
    let mut sent = 0u64;
    while sent < size {
        let want = (size - sent).min(BATCH as u64) as usize;
        file.read_exact(&mut buf[..want])
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        hasher.update(&buf[..want]);
        tx.write_all(&buf[..want]).await.map_err(|e| format!("sending: {e}"))?;
        sent += want as u64;
    }
    tx.finish().map_err(|e| format!("sending: {e}"))?;
    let digest = hasher.finalize();
    let answer = rx.read_to_end(64).await.map_err(|e| format!("reading the answer: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = conn.stats();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    if answer.len() != 40 {
        return Err(format!("the receiver's answer has {} bytes, expected 40", answer.len()));
    }
    let got = u64::from_be_bytes(answer[..8].try_into().expect("8 bytes"));
    let verified = got == size && answer[8..] == *digest.as_bytes();
    println!(
        "{}",
        serde_json::json!({
            "role": "send", "bytes": size, "received": got, "seconds": seconds,
            "gbit_per_s": size as f64 * 8.0 / seconds / 1e9, "blake3": digest.to_hex().to_string(),
            "receiver_blake3": hex(&answer[8..]), "verified": verified,
            "cc": format!("{:?}", t.cc).to_lowercase(), "mtu": t.mtu, "gso": !t.no_gso,
            "lost_packets": stats.path.lost_packets, "udp_tx_datagrams": stats.udp_tx.datagrams,
            "udp_tx_ios": stats.udp_tx.ios, "rtt_us": stats.path.rtt.as_micros() as u64,
        })
    );
    if verified {
        Ok(())
    } else {
        Err(format!(
            "copy NOT verified: sent {size} bytes (BLAKE3 {}), the receiver got {got} (BLAKE3 {})",
            digest.to_hex(),
            hex(&answer[8..])
        ))
    }
}

/// Accepts the server's self-signed certificate (pinned by SHA-256 when a pin is given) and
/// checks the TLS 1.3 handshake signature with its key.
#[derive(Debug)]
struct AnyCertVerifier {
    pin: Option<String>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Some(pin) if *pin != hex(&sha2::Sha256::digest(end_entity.as_ref())) => Err(
                rustls::Error::General(format!("the server certificate is not the pinned {pin}")),
            ),
            _ => Ok(ServerCertVerified::assertion()),
        }
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
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
