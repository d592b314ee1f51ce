//! The control channel's QUIC and TLS configuration: TLS 1.3 on ring, ALPN `ferry/1`, the
//! server's self-signed certificate carrying its ed25519 identity, and the client's verifier that
//! pins that key by fingerprint (docs/PROTOCOL.md section 8.1).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::{self, Identity};
use crate::limits;

/// ALPN protocol id of the control channel.
pub const ALPN: &[u8] = b"ferry/1";
/// The default control port (UDP, QUIC).
pub const DEFAULT_PORT: u16 = 33001;

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
pub fn server_config(
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
pub type SeenKey = Arc<Mutex<Option<String>>>;

/// The client's QUIC configuration, pinning the server key by fingerprint. The verifier records
/// the fingerprint it saw so a refusal can print it.
pub fn client_config(pinned: Option<String>) -> Result<(quinn::ClientConfig, SeenKey), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
