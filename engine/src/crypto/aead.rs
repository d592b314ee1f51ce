//! The engine's one AES-GCM: packets (`PacketProtection`), at-rest segments and key slots
//! (`atrest`) all seal and open through [`Aead`], with the fastest correct backend for each key
//! size.
//!
//! AES-128-GCM and AES-256-GCM run on ring's stitched AES-GCM, which selects
//! AES-NI/PCLMULQDQ/VAES/AVX2 code at run time: about 3x the throughput of the RustCrypto
//! composition on the target machines (`BENCHMARKS.md`), so one generic binary gets the CPU's
//! fast paths without `target-cpu=native`. ring has no AES-192, so `aes192` runs on [`AesGcm`],
//! the RustCrypto composition, which is also the reference implementation the known-answer tests
//! check both backends against. The `none` suite's GMAC also uses the composition (see
//! `PacketProtection`): ring's associated-data path is not its fast path.

use ring::aead;

use super::gcm::{AesGcm, InvalidKeyLength, NONCE_LEN, TAG_LEN, TagMismatch};

/// AES-GCM under one key, backend chosen by key size.
pub struct Aead(Backend);

enum Backend {
    /// ring (AES-128 and AES-256).
    Ring(aead::LessSafeKey),
    /// RustCrypto composition (AES-192, GMAC, and the reference the tests check ring against).
    Composed(AesGcm),
}

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead([redacted])")
    }
}

impl Aead {
    /// Prepares AES-GCM for a 16-, 24- or 32-byte key, on the fastest backend for its size.
    pub fn new(key: &[u8]) -> Result<Self, InvalidKeyLength> {
        let alg = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            24 => return Self::composed(key),
            _ => return Err(InvalidKeyLength),
        };
        let key = aead::UnboundKey::new(alg, key).map_err(|_| InvalidKeyLength)?;
        Ok(Self(Backend::Ring(aead::LessSafeKey::new(key))))
    }

    /// The same AES-GCM on the RustCrypto composition (`aes` + `ghash`), whatever the key
    /// size: the faster backend when all the input is associated data (GMAC), and the
    /// reference the known-answer tests check ring against.
    pub fn composed(key: &[u8]) -> Result<Self, InvalidKeyLength> {
        Ok(Self(Backend::Composed(AesGcm::new(key)?)))
    }

    /// Encrypts `buf` in place; returns the tag over `aad` and the ciphertext.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        match &self.0 {
            Backend::Ring(k) => {
                let n = aead::Nonce::assume_unique_for_key(*nonce);
                let tag = k
                    .seal_in_place_separate_tag(n, aead::Aad::from(aad), buf)
                    .expect("AES-GCM input within ring's length limit");
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
            Backend::Composed(g) => g.seal(nonce, aad, buf),
        }
    }

    /// Verifies and decrypts `buf` in place. On failure `buf` is zeroed: no unauthenticated
    /// plaintext is ever released.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        match &self.0 {
            Backend::Ring(k) => {
                let n = aead::Nonce::assume_unique_for_key(*nonce);
                let t = aead::Tag::from(*tag);
                match k.open_in_place_separate_tag(n, aead::Aad::from(aad), t, buf, 0..) {
                    Ok(_) => Ok(()),
                    Err(_) => {
                        buf.fill(0);
                        Err(TagMismatch)
                    }
                }
            }
            Backend::Composed(g) => g.open(nonce, aad, buf, tag),
        }
    }

    /// GMAC: the tag over `aad` alone (GCM with an empty plaintext).
    pub fn mac(&self, nonce: &[u8; NONCE_LEN], aad: &[u8]) -> [u8; TAG_LEN] {
        self.seal(nonce, aad, &mut [])
    }

    /// Verifies a GMAC tag over `aad`.
    pub fn verify_mac(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        self.open(nonce, aad, &mut [], tag)
    }
}
