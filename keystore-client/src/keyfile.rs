//! The keystore key file: the root keystore's stash (`rootkeystore.stash`) or a local
//! keystore's key file (`localkeystore.key`). Fixed size, 116 bytes, big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0   | 8  | magic `FERRYKEY` |
//! | 8   | 1  | format version, 1 |
//! | 9   | 1  | kind: 1 = root, 2 = local |
//! | 10  | 1  | protection: 0 = none (file permissions only), 1 = Argon2id passphrase |
//! | 11  | 1  | reserved, 0 |
//! | 12  | 16 | keystore id (equals `meta.keystore_id` of the database) |
//! | 28  | 4  | Argon2id m_cost in KiB (0 when unprotected) |
//! | 32  | 4  | Argon2id t_cost (0 when unprotected) |
//! | 36  | 4  | Argon2id p_cost (0 when unprotected) |
//! | 40  | 16 | Argon2id salt (zero when unprotected) |
//! | 56  | 12 | AES-GCM nonce (zero when unprotected) |
//! | 68  | 48 | body |
//!
//! Body, unprotected: `key (32) || check (16)`, `check = SHA-256("ferry-keystore/v1 keyfile\0"
//! || bytes[0..68] || key)[0..16]` (detects damage, not an attacker: the file is the key).
//! Body, protected: `AES-256-GCM(KEK, nonce, key, aad = bytes[0..68])` (32 + 16-byte tag), with
//! `KEK = Argon2id(passphrase, salt = "ferry-keystore/v1 stash" || salt, m, t, p, 32 bytes)`.
//! Parameters are bounded before the KDF runs: m ∈ [19 MiB, 1 GiB], t ∈ [2, 10], p ∈ [1, 16].

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::random_array;
use crate::secret::{Key32, SecretBytes};
use crate::store::KeystoreKind;
use ferry_keys::Argon2Params;

/// Size of a key file in bytes.
pub const KEY_FILE_LEN: usize = 116;
const HEADER_LEN: usize = 68;
const MAGIC: &[u8; 8] = b"FERRYKEY";

/// Why a key file could not be parsed or unlocked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The bytes are not a well-formed key file.
    #[error("{0}")]
    Malformed(String),
    /// A passphrase is needed.
    #[error("a stash passphrase is required")]
    PassphraseRequired,
    /// The passphrase does not decrypt the key.
    #[error("wrong stash passphrase")]
    WrongPassphrase,
}

/// A parsed (still locked) key file.
#[derive(Debug)]
pub struct KeyFile {
    raw: Zeroizing<[u8; KEY_FILE_LEN]>,
    kind: KeystoreKind,
    keystore_id: [u8; 16],
    params: Option<Argon2Params>,
}

impl KeyFile {
    /// Parses and checks the structure of a key file (no KDF runs here).
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        let bad = |m: &str| Err(KeyFileError::Malformed(m.to_owned()));
        if bytes.len() != KEY_FILE_LEN {
            return Err(KeyFileError::Malformed(format!(
                "it is {} bytes long, a key file is {KEY_FILE_LEN}",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return bad("bad magic: not a Ferry keystore key file");
        }
        if bytes[8] != 1 {
            return Err(KeyFileError::Malformed(format!(
                "unsupported format version {}",
                bytes[8]
            )));
        }
        let kind = match bytes[9] {
            1 => KeystoreKind::Root,
            2 => KeystoreKind::Local,
            k => {
                return Err(KeyFileError::Malformed(format!("unknown keystore kind {k}")));
            }
        };
        if bytes[11] != 0 {
            return bad("reserved byte is not zero");
        }
        let mut keystore_id = [0u8; 16];
        keystore_id.copy_from_slice(&bytes[12..28]);
        let be = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let params = match bytes[10] {
            0 => {
                if bytes[28..68].iter().any(|b| *b != 0) {
                    return bad("parameters of an unprotected key file are not zero");
                }
                let mut raw = Zeroizing::new([0u8; KEY_FILE_LEN]);
                raw.copy_from_slice(bytes);
                if checksum(&raw[..HEADER_LEN], &raw[68..100]) != raw[100..116] {
                    return bad("checksum mismatch (the file was damaged)");
                }
                None
            }
            1 => {
                let p = Argon2Params { m_cost_kib: be(28), t_cost: be(32), p_cost: be(36) };
                if !p.in_bounds() {
                    return Err(KeyFileError::Malformed(format!(
                        "Argon2id parameters out of bounds (m={} KiB, t={}, p={})",
                        p.m_cost_kib, p.t_cost, p.p_cost
                    )));
                }
                Some(p)
            }
            p => return Err(KeyFileError::Malformed(format!("unknown protection {p}"))),
        };
        let mut raw = Zeroizing::new([0u8; KEY_FILE_LEN]);
        raw.copy_from_slice(bytes);
        Ok(KeyFile { raw, kind, keystore_id, params })
    }

    /// Root or local.
    pub fn kind(&self) -> KeystoreKind {
        self.kind
    }

    /// The keystore id this key belongs to.
    pub fn keystore_id(&self) -> [u8; 16] {
        self.keystore_id
    }

    /// Whether a passphrase is needed to unlock it.
    pub fn is_protected(&self) -> bool {
        self.params.is_some()
    }

    /// Unlocks the key (runs Argon2id when the file is passphrase-protected).
    pub(crate) fn unlock(&self, passphrase: Option<&SecretBytes>) -> Result<Key32, KeyFileError> {
        let Some(params) = self.params else {
            let mut k = Key32::zeroed();
            k.expose_mut().copy_from_slice(&self.raw[68..100]);
            return Ok(k);
        };
        let pass = passphrase.ok_or(KeyFileError::PassphraseRequired)?;
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&self.raw[40..56]);
        let kek = derive_kek(pass, &salt, params)?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&self.raw[56..68]);
        let mut buf = Zeroizing::new(self.raw[68..116].to_vec());
        Aes256Gcm::new_from_slice(kek.expose())
            .expect("32-byte key")
            .decrypt_in_place(&Nonce::from(nonce), &self.raw[..HEADER_LEN], &mut *buf)
            .map_err(|_| KeyFileError::WrongPassphrase)?;
        let mut k = Key32::zeroed();
        k.expose_mut().copy_from_slice(&buf[..32]);
        Ok(k)
    }

    /// Serialises a key file for `key`, protected by `passphrase` when given.
    pub(crate) fn encode(
        kind: KeystoreKind,
        keystore_id: [u8; 16],
        key: &Key32,
        passphrase: Option<(&SecretBytes, Argon2Params)>,
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyFileError> {
        let mut out = Zeroizing::new([0u8; KEY_FILE_LEN]);
        out[..8].copy_from_slice(MAGIC);
        out[8] = 1;
        out[9] = match kind {
            KeystoreKind::Root => 1,
            KeystoreKind::Local => 2,
        };
        out[12..28].copy_from_slice(&keystore_id);
        match passphrase {
            None => {
                out[68..100].copy_from_slice(key.expose());
                let c = checksum(&out[..HEADER_LEN], &out[68..100]);
                out[100..116].copy_from_slice(&c);
            }
            Some((pass, params)) => {
                if !params.in_bounds() {
                    return Err(KeyFileError::Malformed(
                        "Argon2id parameters out of bounds".into(),
                    ));
                }
                out[10] = 1;
                out[28..32].copy_from_slice(&params.m_cost_kib.to_be_bytes());
                out[32..36].copy_from_slice(&params.t_cost.to_be_bytes());
                out[36..40].copy_from_slice(&params.p_cost.to_be_bytes());
                let salt = random_array::<16>();
                let nonce = random_array::<12>();
                out[40..56].copy_from_slice(&salt);
                out[56..68].copy_from_slice(&nonce);
                let kek = derive_kek(pass, &salt, params)?;
                let mut buf = Zeroizing::new(key.expose().to_vec());
                let header: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().expect("68 bytes");
                Aes256Gcm::new_from_slice(kek.expose())
                    .expect("32-byte key")
                    .encrypt_in_place(&Nonce::from(nonce), &header, &mut *buf)
                    .expect("AES-GCM encryption cannot fail");
                out[68..116].copy_from_slice(&buf);
            }
        }
        Ok(out)
    }
}

fn checksum(header: &[u8], key: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"ferry-keystore/v1 keyfile\0");
    h.update(header);
    h.update(key);
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn derive_kek(pass: &SecretBytes, salt: &[u8; 16], p: Argon2Params) -> Result<Key32, KeyFileError> {
    let mut full_salt = b"ferry-keystore/v1 stash".to_vec();
    full_salt.extend_from_slice(salt);
    p.derive(pass.expose(), &full_salt)
        .map_err(|e| KeyFileError::Malformed(format!("Argon2id parameters rejected: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9106 §5.3 Argon2id test vector, through the same argon2 crate.
    #[test]
    fn argon2id_rfc9106_vector() {
        let params = argon2::ParamsBuilder::new()
            .m_cost(32)
            .t_cost(3)
            .p_cost(4)
            .data(argon2::AssociatedData::new(&[4u8; 12]).unwrap())
            .output_len(32)
            .build()
            .unwrap();
        let a = argon2::Argon2::new_with_secret(
            &[3u8; 8],
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        )
        .unwrap();
        let mut out = [0u8; 32];
        a.hash_password_into(&[1u8; 32], &[2u8; 16], &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
        );
    }

    #[test]
    fn unprotected_round_trip_and_damage() {
        let key = Key32::random();
        let bytes = KeyFile::encode(KeystoreKind::Root, [5; 16], &key, None).unwrap();
        let kf = KeyFile::parse(&*bytes).unwrap();
        assert_eq!(kf.kind(), KeystoreKind::Root);
        assert_eq!(kf.keystore_id(), [5; 16]);
        assert!(!kf.is_protected());
        assert_eq!(kf.unlock(None).unwrap().expose(), key.expose());
        for i in 0..KEY_FILE_LEN {
            let mut b = *bytes;
            b[i] ^= 0x40;
            assert!(KeyFile::parse(&b).is_err(), "flip at {i} accepted");
        }
        assert!(KeyFile::parse(&bytes[..100]).is_err());
    }

    #[test]
    fn protected_round_trip() {
        let key = Key32::random();
        let pass = SecretBytes::from_slice(b"correct horse");
        let bytes =
            KeyFile::encode(KeystoreKind::Local, [6; 16], &key, Some((&pass, Argon2Params::MIN)))
                .unwrap();
        let kf = KeyFile::parse(&*bytes).unwrap();
        assert!(kf.is_protected());
        assert_eq!(kf.unlock(Some(&pass)).unwrap().expose(), key.expose());
        assert_eq!(kf.unlock(None).unwrap_err(), KeyFileError::PassphraseRequired);
        let wrong = SecretBytes::from_slice(b"wrong horse");
        assert_eq!(kf.unlock(Some(&wrong)).unwrap_err(), KeyFileError::WrongPassphrase);
        // Out-of-bounds parameters are refused before any KDF work.
        let mut b = *bytes;
        b[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(KeyFile::parse(&b), Err(KeyFileError::Malformed(_))));
    }

    /// The fuzz target's property, run over seeded random inputs and mutations of valid files.
    #[test]
    fn parse_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = KeyFile::encode(KeystoreKind::Root, [1; 16], &Key32::random(), None).unwrap();
        for i in 0..20_000 {
            let mut buf = if i % 2 == 0 {
                valid.to_vec()
            } else {
                (0..(next() % 200) as usize).map(|_| next() as u8).collect()
            };
            for _ in 0..(next() % 4) {
                if !buf.is_empty() {
                    let at = (next() as usize) % buf.len();
                    buf[at] = next() as u8;
                }
            }
            if i % 3 == 0 && buf.len() > 10 {
                buf[10] = 1; // protected: parameters must be bounded before any KDF work
            }
            let _ = KeyFile::parse(&buf);
        }
    }
}
