//! The packet AEAD: AES-GCM with the fastest correct backend for each key size.
//!
//! AES-128-GCM and AES-256-GCM (and AES-128-GMAC for the `none` suite) run on ring's stitched
//! AES-GCM, which selects AES-NI/PCLMULQDQ/VAES/AVX2 code at run time: about 4x the throughput of
//! the RustCrypto composition on the target machines (`BENCHMARKS.md`), so one generic binary
//! gets the CPU's fast paths without `target-cpu=native`. ring has no AES-192, so `aes192` runs on
//! [`AesGcm`], the RustCrypto composition, which is also the reference implementation the
//! known-answer tests check both backends against.

use ring::aead;

use super::gcm::{AesGcm, InvalidKeyLength, NONCE_LEN, TAG_LEN, TagMismatch};

/// AES-GCM under one key, backend chosen by key size.
pub enum PacketAead {
    /// ring (AES-128 and AES-256).
    Ring(aead::LessSafeKey),
    /// RustCrypto composition (AES-192).
    Composed(AesGcm),
}

impl std::fmt::Debug for PacketAead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketAead([redacted])")
    }
}

impl PacketAead {
    /// Prepares AES-GCM for a 16-, 24- or 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, InvalidKeyLength> {
        let alg = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            24 => return Ok(Self::Composed(AesGcm::new(key)?)),
            _ => return Err(InvalidKeyLength),
        };
        let key = aead::UnboundKey::new(alg, key).map_err(|_| InvalidKeyLength)?;
        Ok(Self::Ring(aead::LessSafeKey::new(key)))
    }

    /// Encrypts `buf` in place; returns the tag over `aad` and the ciphertext.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        match self {
            Self::Ring(k) => {
                let n = aead::Nonce::assume_unique_for_key(*nonce);
                let tag = k
                    .seal_in_place_separate_tag(n, aead::Aad::from(aad), buf)
                    .expect("AES-GCM input within ring's length limit");
                let mut out = [0u8; TAG_LEN];
                out.copy_from_slice(tag.as_ref());
                out
            }
            Self::Composed(g) => g.seal(nonce, aad, buf),
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
        match self {
            Self::Ring(k) => {
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
            Self::Composed(g) => g.open(nonce, aad, buf, tag),
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
