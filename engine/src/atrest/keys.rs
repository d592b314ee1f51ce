//! Key derivation for the at-rest format. The key types themselves (secret bytes, 256-bit keys,
//! key states, Argon2id parameters, the resolver trait) are defined once, in `ferry-keys`.

use hkdf::Hkdf;
use sha2::Sha256;

pub use ferry_keys::{
    Argon2Params, KdfError, Key32, KeyResolver, KeyState, Operation, ResolveError, ResolvedKey,
    SecretBytes,
};

use super::error::{AtRestError, Result};

/// HKDF-SHA-256 (RFC 5869) with the given salt, input key and info parts, 32 bytes out.
pub(crate) fn hkdf32(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Key32 {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Key32::zeroed();
    hk.expand_multi_info(info, out.expose_mut())
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

/// Argon2id (version 0x13) of `passphrase` with `salt`, 32-byte output. Bounds are checked first.
pub(crate) fn argon2id(passphrase: &[u8], salt: &[u8; 16], params: Argon2Params) -> Result<Key32> {
    params.derive(passphrase, salt).map_err(AtRestError::from)
}

impl From<KdfError> for AtRestError {
    fn from(e: KdfError) -> Self {
        AtRestError::InvalidKdfParams { reason: e.reason }
    }
}
