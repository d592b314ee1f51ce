//! Packet protection for the data path (`docs/PROTOCOL.md`, "Packet protection").
//!
//! Every datagram is sealed with AES-GCM (or, for the `none` suite, authenticated with GMAC and
//! sent in clear). Keys are per session, per direction and per key epoch, derived with HKDF-SHA256
//! from a 32-byte session secret that the control layer exports from its authenticated TLS 1.3
//! handshake. The nonce is the epoch IV XOR the 64-bit packet number, and packet numbers never
//! repeat within a direction, so a nonce never repeats under a key.

mod aead;
mod gcm;
mod replay;

pub use aead::Aead;

pub use gcm::{InvalidKeyLength, NONCE_LEN, TAG_LEN, TagMismatch, aes_ctr32_apply};
pub use replay::{ReplayCheck, ReplayWindow};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// Packets per key epoch: `2^23`, the AES-GCM confidentiality limit of RFC 9001 section 6.6.
/// The epoch of a packet is `packet_number >> EPOCH_BITS`; both ends derive the epoch's key from
/// the packet number alone, so changing keys needs no signalling.
pub const EPOCH_BITS: u32 = 23;

/// The largest packet number a sender may use. Sealing beyond it is refused rather than wrapping.
pub const MAX_PACKET_NUMBER: u64 = (1 << 62) - 1;

/// The transit cipher suite, chosen per session (`-c aes128|aes192|aes256|none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// AES-128-GCM.
    Aes128,
    /// AES-192-GCM.
    Aes192,
    /// AES-256-GCM.
    Aes256,
    /// No encryption: the payload travels in clear but every packet is still authenticated with
    /// AES-128-GMAC over the whole packet.
    None,
}

impl CipherSuite {
    /// All suites, in wire-code order.
    pub const ALL: [CipherSuite; 4] =
        [CipherSuite::Aes128, CipherSuite::Aes192, CipherSuite::Aes256, CipherSuite::None];

    /// The one-byte code used in key derivation and session setup.
    pub fn code(self) -> u8 {
        match self {
            CipherSuite::Aes128 => 1,
            CipherSuite::Aes192 => 2,
            CipherSuite::Aes256 => 3,
            CipherSuite::None => 4,
        }
    }

    /// The suite with the given code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The AES key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            CipherSuite::Aes128 | CipherSuite::None => 16,
            CipherSuite::Aes192 => 24,
            CipherSuite::Aes256 => 32,
        }
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes128 => "aes128",
            CipherSuite::Aes192 => "aes192",
            CipherSuite::Aes256 => "aes256",
            CipherSuite::None => "none",
        }
    }
}

impl std::str::FromStr for CipherSuite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            format!("unknown cipher {s:?}: expected one of aes128, aes192, aes256, none")
        })
    }
}

/// Which way a packet travels; each direction has its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the sending end to the receiving end (DATA and STATUS packets).
    Data,
    /// From the receiving end to the sending end (FEEDBACK packets).
    Feedback,
}

impl Direction {
    fn label(self) -> &'static [u8] {
        match self {
            Direction::Data => b"data",
            Direction::Feedback => b"feedback",
        }
    }
}

/// The 32-byte secret a session's packet keys derive from. The control layer exports it from
/// the TLS 1.3 handshake (`docs/PROTOCOL.md`); it is zeroized on drop and never printed.
#[derive(Clone)]
pub struct SessionSecret(Zeroizing<[u8; 32]>);

impl SessionSecret {
    /// Wraps exported secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSecret([redacted])")
    }
}

/// Why a datagram was refused by packet protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than a header plus a tag.
    #[error("datagram too short")]
    Truncated,
    /// The packet number is in an epoch the receiver does not hold keys for.
    #[error("packet number outside the acceptable key epochs")]
    EpochOutOfRange,
    /// The tag did not verify.
    #[error("authentication failed")]
    Forged,
}

/// The sender refused to seal: the packet-number space is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet number space exhausted; the session must end")]
pub struct PacketNumberExhausted;

struct EpochKey {
    epoch: u64,
    aead: Aead,
    iv: [u8; NONCE_LEN],
}

impl Drop for EpochKey {
    fn drop(&mut self) {
        self.iv.zeroize();
    }
}

/// Packet protection for one direction of one session: derives and caches the keys of the
/// current and previous key epochs.
pub struct PacketProtection {
    suite: CipherSuite,
    direction: Direction,
    prk: Zeroizing<[u8; 32]>,
    keys: [Option<EpochKey>; 2],
}

impl std::fmt::Debug for PacketProtection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketProtection")
            .field("suite", &self.suite)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// HKDF salt for the session's pseudo-random key (`docs/PROTOCOL.md`).
const KDF_SALT: &[u8] = b"ferry/1 packet protection";

impl PacketProtection {
    /// Prepares protection for `direction` of the session whose secret is `secret`.
    pub fn new(secret: &SessionSecret, suite: CipherSuite, direction: Direction) -> Self {
        let (prk, _) = Hkdf::<Sha256>::extract(Some(KDF_SALT), secret.0.as_ref());
        let mut prk_bytes = Zeroizing::new([0u8; 32]);
        prk_bytes.copy_from_slice(&prk);
        Self { suite, direction, prk: prk_bytes, keys: [None, None] }
    }

    /// The cipher suite in use.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    fn derive(&self, epoch: u64) -> EpochKey {
        let hk = Hkdf::<Sha256>::from_prk(self.prk.as_ref()).expect("32-byte PRK");
        let mut info = Vec::with_capacity(32);
        let mut key = Zeroizing::new([0u8; 32]);
        let key = &mut key[..self.suite.key_len()];
        info_for(&mut info, self.direction, b"key", self.suite, epoch);
        hk.expand(&info, key).expect("valid HKDF length");
        let mut iv = [0u8; NONCE_LEN];
        info_for(&mut info, self.direction, b"iv", self.suite, epoch);
        hk.expand(&info, &mut iv).expect("valid HKDF length");
        // GMAC (`none`) authenticates the whole packet as associated data; ring's AAD path is
        // not its fast path (about 1 GB/s), the composed GHASH is ~3x faster (BENCHMARKS.md).
        let aead = if self.suite == CipherSuite::None {
            Aead::composed(key).expect("suite key length")
        } else {
            Aead::new(key).expect("suite key length")
        };
        EpochKey { epoch, aead, iv }
    }

    fn key_for(&mut self, epoch: u64) -> &EpochKey {
        let slot = (epoch & 1) as usize;
        if self.keys[slot].as_ref().is_none_or(|k| k.epoch != epoch) {
            self.keys[slot] = Some(self.derive(epoch));
        }
        self.keys[slot].as_ref().expect("just filled")
    }

    /// Seals `packet` in place. `packet` is the header (`header_len` bytes, authenticated, sent in
    /// clear), then the body, then [`TAG_LEN`] bytes of room for the tag.
    pub fn seal(
        &mut self,
        packet_number: u64,
        packet: &mut [u8],
        header_len: usize,
    ) -> Result<(), PacketNumberExhausted> {
        if packet_number > MAX_PACKET_NUMBER {
            return Err(PacketNumberExhausted);
        }
        debug_assert!(packet.len() >= header_len + TAG_LEN);
        let suite = self.suite;
        let key = self.key_for(packet_number >> EPOCH_BITS);
        let nonce = nonce(&key.iv, packet_number);
        let tag_at = packet.len() - TAG_LEN;
        let (covered, tag_out) = packet.split_at_mut(tag_at);
        let tag = if suite == CipherSuite::None {
            key.aead.mac(&nonce, covered)
        } else {
            let (header, body) = covered.split_at_mut(header_len);
            key.aead.seal(&nonce, header, body)
        };
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Verifies and decrypts `packet` (header, body, tag) in place and returns the length of the
    /// body. The caller has already checked the packet number against its replay window;
    /// `current_epoch` is the epoch of the highest packet number it accepted (0 before any), and
    /// only epochs `current_epoch - 1 ..= current_epoch + 1` are opened (docs/PROTOCOL.md 4.2).
    pub fn open(
        &mut self,
        packet_number: u64,
        packet: &mut [u8],
        header_len: usize,
        current_epoch: u64,
    ) -> Result<usize, OpenError> {
        if packet.len() < header_len + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let epoch = packet_number >> EPOCH_BITS;
        if epoch + 1 < current_epoch || epoch > current_epoch + 1 {
            return Err(OpenError::EpochOutOfRange);
        }
        let suite = self.suite;
        let key = self.key_for(epoch);
        let nonce = nonce(&key.iv, packet_number);
        let tag_at = packet.len() - TAG_LEN;
        let (covered, tag) = packet.split_at_mut(tag_at);
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().expect("tag length");
        let result = if suite == CipherSuite::None {
            key.aead.verify_mac(&nonce, covered, tag)
        } else {
            let (header, body) = covered.split_at_mut(header_len);
            key.aead.open(&nonce, header, body, tag)
        };
        result.map_err(|_| OpenError::Forged)?;
        Ok(tag_at - header_len)
    }
}

fn info_for(info: &mut Vec<u8>, direction: Direction, what: &[u8], suite: CipherSuite, epoch: u64) {
    info.clear();
    info.extend_from_slice(b"ferry/1 ");
    info.extend_from_slice(direction.label());
    info.push(b' ');
    info.extend_from_slice(what);
    info.push(suite.code());
    info.extend_from_slice(&epoch.to_be_bytes());
}

/// The per-packet nonce: the epoch IV XOR the packet number, right-aligned big-endian.
fn nonce(iv: &[u8; NONCE_LEN], packet_number: u64) -> [u8; NONCE_LEN] {
    let mut n = *iv;
    for (b, p) in n[4..].iter_mut().zip(packet_number.to_be_bytes()) {
        *b ^= p;
    }
    n
}

/// Verifies an Ed25519 (RFC 8032) signature of `msg` by `public`.
pub fn ed25519_verify(public: &[u8; 32], msg: &[u8], signature: &[u8]) -> bool {
    use ring::signature::{ED25519, UnparsedPublicKey};
    UnparsedPublicKey::new(&ED25519, public).verify(msg, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: CipherSuite) -> (PacketProtection, PacketProtection) {
        let s = SessionSecret::new([7; 32]);
        (
            PacketProtection::new(&s, suite, Direction::Data),
            PacketProtection::new(&s, suite, Direction::Data),
        )
    }

    #[test]
    fn round_trip_every_suite_and_epoch_boundary() {
        for suite in CipherSuite::ALL {
            let (mut tx, mut rx) = pair(suite);
            for pn in [0, 1, (1 << EPOCH_BITS) - 1, 1 << EPOCH_BITS, (1 << EPOCH_BITS) + 5] {
                let mut pkt = vec![0u8; 10 + 100 + TAG_LEN];
                pkt[..10].copy_from_slice(b"header0123");
                for (i, b) in pkt[10..110].iter_mut().enumerate() {
                    *b = i as u8;
                }
                let plain = pkt.clone();
                tx.seal(pn, &mut pkt, 10).unwrap();
                if suite == CipherSuite::None {
                    assert_eq!(pkt[..110], plain[..110], "none sends the body in clear");
                } else {
                    assert_ne!(pkt[10..110], plain[10..110], "{suite:?} encrypts");
                }
                let n = rx.open(pn, &mut pkt, 10, pn >> EPOCH_BITS).unwrap();
                assert_eq!(n, 100);
                assert_eq!(pkt[..110], plain[..110]);
            }
        }
    }

    #[test]
    fn directions_and_suites_have_distinct_keys() {
        let s = SessionSecret::new([9; 32]);
        let mut a = PacketProtection::new(&s, CipherSuite::Aes128, Direction::Data);
        let mut b = PacketProtection::new(&s, CipherSuite::Aes128, Direction::Feedback);
        let mut pkt = vec![1u8; 40];
        a.seal(3, &mut pkt, 8).unwrap();
        assert_eq!(b.open(3, &mut pkt, 8, 0), Err(OpenError::Forged));
    }

    #[test]
    fn refuses_exhausted_packet_numbers_and_far_epochs() {
        let (mut tx, mut rx) = pair(CipherSuite::Aes256);
        let mut pkt = vec![0u8; 40];
        assert_eq!(tx.seal(MAX_PACKET_NUMBER + 1, &mut pkt, 8), Err(PacketNumberExhausted));
        tx.seal(5 << EPOCH_BITS, &mut pkt, 8).unwrap();
        assert_eq!(rx.open(5 << EPOCH_BITS, &mut pkt, 8, 0), Err(OpenError::EpochOutOfRange));
        // One epoch either side of the current one, no further (PROTOCOL-FINDINGS 2: the
        // previous check accepted two above when the current epoch was 0).
        for (epoch, current, ok) in
            [(2, 0, false), (1, 0, true), (0, 1, true), (2, 1, true), (3, 1, false), (0, 2, false)]
        {
            let pn = epoch << EPOCH_BITS;
            let mut pkt = vec![0u8; 40];
            tx.seal(pn, &mut pkt, 8).unwrap();
            let got = rx.open(pn, &mut pkt, 8, current);
            assert_eq!(got.is_ok(), ok, "epoch {epoch} at current {current}: {got:?}");
        }
        assert_eq!(rx.open(0, &mut pkt[..20], 8, 0), Err(OpenError::Truncated));
    }
}
