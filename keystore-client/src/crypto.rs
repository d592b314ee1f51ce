//! Row wrapping: AES-256-GCM under a key derived from the keystore key, with the row identity
//! as associated data.
//!
//! * wrapping key `WK = HKDF-SHA-256(salt = keystore id (16 bytes), ikm = keystore key,
//!   info = "ferry-keystore/v1 wrap", L = 32)`
//! * row: `nonce` = 12 random bytes, `wrapped = AES-256-GCM(WK, nonce, value, aad)` (ciphertext
//!   followed by the 16-byte tag)
//! * `aad = "ferry-keystore/v1 row\0" || keystore id (16) || BE16(len owner) || owner ||
//!   BE16(len category) || category || BE32(version)` — a row moved to another keystore, owner,
//!   category or version fails authentication.
//! * key check (stored in `meta`): `AES-256-GCM(WK, nonce, "ferry keystore key check v1",
//!   aad = "ferry-keystore/v1 key-check\0" || keystore id)`; proves on open that the key file
//!   belongs to the database before any secret is touched.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::category::{Category, Owner};
use crate::secret::{Key32, SecretBytes};

/// AES-GCM nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;

const KEY_CHECK_PLAINTEXT: &[u8] = b"ferry keystore key check v1";

pub(crate) use ferry_keys::fill_random;

pub(crate) fn random_array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    fill_random(&mut a);
    a
}

/// The per-keystore wrapping key.
#[derive(Debug)]
pub(crate) struct WrapKey {
    cipher_key: Key32,
    keystore_id: [u8; 16],
}

impl WrapKey {
    pub(crate) fn derive(keystore_key: &Key32, keystore_id: [u8; 16]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(&keystore_id), keystore_key.expose());
        let mut k = Key32::zeroed();
        hk.expand(b"ferry-keystore/v1 wrap", k.expose_mut())
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        Self { cipher_key: k, keystore_id }
    }

    /// The keystore id this key is bound to.
    pub(crate) fn keystore_id(&self) -> [u8; 16] {
        self.keystore_id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.cipher_key.expose()).expect("32-byte key")
    }

    /// Encrypts `plaintext` with a fresh random nonce; returns (nonce, ciphertext || tag).
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
        let nonce = random_array::<NONCE_LEN>();
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.cipher()
            .encrypt_in_place(&Nonce::from(nonce), aad, &mut buf)
            .expect("AES-GCM encryption of a keystore value cannot fail");
        (nonce, buf)
    }

    /// Decrypts and authenticates; `None` on any failure (wrong key, tampering, wrong AAD).
    pub(crate) fn open(&self, nonce: &[u8], aad: &[u8], wrapped: &[u8]) -> Option<SecretBytes> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        if wrapped.len() < TAG_LEN {
            return None;
        }
        let mut buf = Zeroizing::new(wrapped.to_vec());
        self.cipher().decrypt_in_place(&Nonce::from(nonce), aad, &mut *buf).ok()?;
        Some(SecretBytes::new(std::mem::take(&mut *buf)))
    }

    /// The associated data binding a row to its identity.
    pub(crate) fn row_aad(&self, owner: &Owner, category: Category, version: u32) -> Vec<u8> {
        let owner = owner.as_db().as_bytes();
        let cat = category.as_str().as_bytes();
        let mut aad = Vec::with_capacity(64 + owner.len());
        aad.extend_from_slice(b"ferry-keystore/v1 row\0");
        aad.extend_from_slice(&self.keystore_id);
        aad.extend_from_slice(&u16::try_from(owner.len()).unwrap_or(u16::MAX).to_be_bytes());
        aad.extend_from_slice(owner);
        aad.extend_from_slice(&u16::try_from(cat.len()).unwrap_or(u16::MAX).to_be_bytes());
        aad.extend_from_slice(cat);
        aad.extend_from_slice(&version.to_be_bytes());
        aad
    }

    fn key_check_aad(&self) -> Vec<u8> {
        let mut aad = b"ferry-keystore/v1 key-check\0".to_vec();
        aad.extend_from_slice(&self.keystore_id);
        aad
    }

    /// A fresh key check value (nonce, ciphertext).
    pub(crate) fn make_key_check(&self) -> ([u8; NONCE_LEN], Vec<u8>) {
        self.seal(&self.key_check_aad(), KEY_CHECK_PLAINTEXT)
    }

    /// True when the key check value was made with this key.
    pub(crate) fn verify_key_check(&self, nonce: &[u8], check: &[u8]) -> bool {
        self.open(nonce, &self.key_check_aad(), check)
            .is_some_and(|p| p.expose() == KEY_CHECK_PLAINTEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wk(byte: u8, id: u8) -> WrapKey {
        WrapKey::derive(&Key32::from_array([byte; 32]), [id; 16])
    }

    /// RFC 5869 test case 1, through the same hkdf/sha2 crates used for the wrapping key.
    #[test]
    fn hkdf_rfc5869_a1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(Some(&salt), &ikm).expand(&info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    /// McGrew–Viega GCM test case 14 (AES-256, zero key, zero IV, one zero block).
    #[test]
    fn aes256_gcm_known_answer() {
        let cipher = Aes256Gcm::new_from_slice(&[0u8; 32]).unwrap();
        let mut buf = vec![0u8; 16];
        cipher.encrypt_in_place(&Nonce::from([0u8; 12]), b"", &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"
        );
    }

    #[test]
    fn seal_open_and_tamper() {
        let k = wk(1, 2);
        let owner = Owner::user("alice").unwrap();
        let aad = k.row_aad(&owner, Category::Ssear, 1);
        let (nonce, ct) = k.seal(&aad, b"top secret");
        assert_eq!(k.open(&nonce, &aad, &ct).unwrap().expose(), b"top secret");
        // Any change of identity, key, nonce or ciphertext fails.
        let bob = Owner::user("bob").unwrap();
        assert!(k.open(&nonce, &k.row_aad(&bob, Category::Ssear, 1), &ct).is_none());
        assert!(k.open(&nonce, &k.row_aad(&owner, Category::Filepass, 1), &ct).is_none());
        assert!(k.open(&nonce, &k.row_aad(&owner, Category::Ssear, 2), &ct).is_none());
        assert!(
            wk(1, 3).open(&nonce, &wk(1, 3).row_aad(&owner, Category::Ssear, 1), &ct).is_none()
        );
        assert!(wk(9, 2).open(&nonce, &aad, &ct).is_none());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(k.open(&nonce, &aad, &bad).is_none());
        let mut bad_nonce = nonce;
        bad_nonce[11] ^= 1;
        assert!(k.open(&bad_nonce, &aad, &ct).is_none());
        assert!(k.open(&nonce, &aad, &ct[..10]).is_none());
    }

    #[test]
    fn key_check() {
        let (n, c) = wk(1, 2).make_key_check();
        assert!(wk(1, 2).verify_key_check(&n, &c));
        assert!(!wk(2, 2).verify_key_check(&n, &c));
        assert!(!wk(1, 3).verify_key_check(&n, &c));
    }
}
