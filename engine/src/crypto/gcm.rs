//! AES-GCM (NIST SP 800-38D) composed from the RustCrypto `aes` block cipher and `ghash`: one
//! of the two backends of [`Aead`](super::Aead).
//!
//! The counter-mode keystream and the GHASH update run in one pass over the packet, a chunk of
//! [`CHUNK_BLOCKS`] blocks at a time, so each chunk of ciphertext is hashed while it is still in
//! L1 cache. The AES round keys and the GHASH key powers are computed once per key, never per
//! packet.

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;

/// Length of a GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Length of a GCM nonce (IV) in bytes.
pub const NONCE_LEN: usize = 12;

/// Blocks processed per keystream batch: large enough for the AES backend's parallel (VAES)
/// path and the 4-block aggregated GHASH, small enough to stay in L1.
const CHUNK_BLOCKS: usize = 16;
const BLOCK: usize = 16;

type Block = Array<u8, aes::cipher::consts::U16>;

/// An AES key schedule of one of the three key sizes.
#[derive(Clone)]
enum Aes {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Aes {
    fn new(key: &[u8]) -> Result<Self, InvalidKeyLength> {
        Ok(match key.len() {
            16 => Aes::A128(Aes128::new(&Array::try_from(key).map_err(|_| InvalidKeyLength)?)),
            24 => Aes::A192(Aes192::new(&Array::try_from(key).map_err(|_| InvalidKeyLength)?)),
            32 => Aes::A256(Aes256::new(&Array::try_from(key).map_err(|_| InvalidKeyLength)?)),
            _ => return Err(InvalidKeyLength),
        })
    }

    #[inline]
    fn encrypt_blocks(&self, blocks: &mut [Block]) {
        match self {
            Aes::A128(c) => c.encrypt_blocks(blocks),
            Aes::A192(c) => c.encrypt_blocks(blocks),
            Aes::A256(c) => c.encrypt_blocks(blocks),
        }
    }

    #[inline]
    fn encrypt_block(&self, block: &mut Block) {
        match self {
            Aes::A128(c) => c.encrypt_block(block),
            Aes::A192(c) => c.encrypt_block(block),
            Aes::A256(c) => c.encrypt_block(block),
        }
    }
}

/// The key had a length other than 16, 24 or 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AES key must be 16, 24 or 32 bytes")]
pub struct InvalidKeyLength;

/// The tag did not verify: the data was altered, truncated, or protected under another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication tag mismatch")]
pub struct TagMismatch;

/// AES-GCM under one key. Cheap to use for many packets: the key schedule and the GHASH key
/// are prepared once in [`AesGcm::new`].
#[derive(Clone)]
pub struct AesGcm {
    aes: Aes,
    ghash: GHash,
}

impl std::fmt::Debug for AesGcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesGcm([redacted])")
    }
}

impl AesGcm {
    /// Prepares AES-GCM for a 16-, 24- or 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, InvalidKeyLength> {
        let aes = Aes::new(key)?;
        let mut h = Block::default();
        aes.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        Ok(Self { aes, ghash })
    }

    /// Encrypts `buf` in place and returns the tag over `aad` and the ciphertext.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let mut ghash = self.ghash.clone();
        ghash.update_padded(aad);
        self.apply_keystream(nonce, buf, |ghash_input| ghash.update_padded(ghash_input), true);
        self.finish(nonce, ghash, aad.len(), buf.len())
    }

    /// Verifies the tag and decrypts `buf` in place. On failure `buf` is zeroed, so no
    /// unauthenticated plaintext is ever released.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        let mut ghash = self.ghash.clone();
        ghash.update_padded(aad);
        self.apply_keystream(nonce, buf, |ghash_input| ghash.update_padded(ghash_input), false);
        let expected = self.finish(nonce, ghash, aad.len(), buf.len());
        if bool::from(expected.ct_eq(tag)) {
            Ok(())
        } else {
            buf.fill(0);
            Err(TagMismatch)
        }
    }

    /// XORs the GCM keystream (counter blocks from inc32(J0)) into `buf`, feeding GHASH with the
    /// ciphertext of each chunk: after the XOR when sealing, before it when opening.
    #[inline]
    fn apply_keystream(
        &self,
        nonce: &[u8; NONCE_LEN],
        buf: &mut [u8],
        mut hash: impl FnMut(&[u8]),
        sealing: bool,
    ) {
        let mut counter: u32 = 2;
        let mut ks = [Block::default(); CHUNK_BLOCKS];
        for chunk in buf.chunks_mut(CHUNK_BLOCKS * BLOCK) {
            let nblocks = chunk.len().div_ceil(BLOCK);
            for block in &mut ks[..nblocks] {
                block[..NONCE_LEN].copy_from_slice(nonce);
                block[NONCE_LEN..].copy_from_slice(&counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            self.aes.encrypt_blocks(&mut ks[..nblocks]);
            if !sealing {
                hash(chunk);
            }
            let keystream = Array::slice_as_flattened(&ks[..nblocks]);
            xor_in_place(chunk, &keystream[..chunk.len()]);
            if sealing {
                hash(chunk);
            }
        }
    }

    fn finish(
        &self,
        nonce: &[u8; NONCE_LEN],
        mut ghash: GHash,
        aad_len: usize,
        ct_len: usize,
    ) -> [u8; TAG_LEN] {
        let mut lengths = Block::default();
        lengths[..8].copy_from_slice(&((aad_len as u64) * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&((ct_len as u64) * 8).to_be_bytes());
        ghash.update(std::slice::from_ref(&lengths));
        let mut s = ghash.finalize();
        let mut j0 = Block::default();
        j0[..NONCE_LEN].copy_from_slice(nonce);
        j0[15] = 1;
        self.aes.encrypt_block(&mut j0);
        let mut tag = [0u8; TAG_LEN];
        for i in 0..TAG_LEN {
            tag[i] = s[i] ^ j0[i];
        }
        s.fill(0);
        tag
    }
}

/// Applies raw AES-CTR with a full 128-bit big-endian counter block (NIST SP 800-38A F.5),
/// incrementing the low 32 bits as GCM does. Exposed for the known-answer tests of the
/// counter-mode component; packets use [`AesGcm`].
pub fn aes_ctr32_apply(
    key: &[u8],
    initial_counter: &[u8; 16],
    buf: &mut [u8],
) -> Result<(), InvalidKeyLength> {
    let aes = Aes::new(key)?;
    let mut prefix = [0u8; 12];
    prefix.copy_from_slice(&initial_counter[..12]);
    let mut counter = u32::from_be_bytes([
        initial_counter[12],
        initial_counter[13],
        initial_counter[14],
        initial_counter[15],
    ]);
    let mut ks = [Block::default(); CHUNK_BLOCKS];
    for chunk in buf.chunks_mut(CHUNK_BLOCKS * BLOCK) {
        let nblocks = chunk.len().div_ceil(BLOCK);
        for block in &mut ks[..nblocks] {
            block[..12].copy_from_slice(&prefix);
            block[12..].copy_from_slice(&counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        aes.encrypt_blocks(&mut ks[..nblocks]);
        let keystream = Array::slice_as_flattened(&ks[..nblocks]);
        xor_in_place(chunk, &keystream[..chunk.len()]);
    }
    Ok(())
}

#[inline]
fn xor_in_place(dst: &mut [u8], src: &[u8]) {
    // Word-at-a-time XOR; the compiler vectorises this loop.
    let n = dst.len().min(src.len());
    let (d8, dtail) = dst[..n].split_at_mut(n - n % 8);
    let (s8, stail) = src[..n].split_at(n - n % 8);
    for (d, s) in d8.chunks_exact_mut(8).zip(s8.chunks_exact(8)) {
        let x = u64::from_ne_bytes(d.try_into().expect("8-byte chunk"))
            ^ u64::from_ne_bytes(s.try_into().expect("8-byte chunk"));
        d.copy_from_slice(&x.to_ne_bytes());
    }
    for (d, s) in dtail.iter_mut().zip(stail) {
        *d ^= s;
    }
}
