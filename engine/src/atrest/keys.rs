//! Key material, key derivation and the keystore resolution trait.

use std::fmt;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, Version};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::error::{AtRestError, Result};

/// Secret bytes (a keystore secret, a passphrase): zeroized on drop, redacted in `Debug`.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Take ownership of secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Explicitly expose the secret.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

/// A 256-bit key (data key or derived key): zeroized on drop, redacted in `Debug`, not `Clone`.
pub struct Key32(pub(crate) Zeroizing<[u8; 32]>);

impl Key32 {
    pub(crate) fn zero() -> Self {
        Self(Zeroizing::new([0u8; 32]))
    }

    pub(crate) fn random() -> Self {
        let mut k = Self::zero();
        rand::fill(&mut k.0[..]);
        k
    }

    /// Explicitly expose the key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32([redacted])")
    }
}

/// HKDF-SHA-256 (RFC 5869) with the given salt, input key and info parts, 32 bytes out.
pub(crate) fn hkdf32(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Key32 {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Key32::zero();
    hk.expand_multi_info(info, &mut out.0[..])
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

/// Lifecycle state of a keystore secret version (NIST SP 800-57 Part 1 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Generated but not yet usable.
    PreActive,
    /// Usable to encrypt (wrap) and decrypt (unwrap).
    Active,
    /// Temporarily revoked: refuses everything until reactivated.
    Suspended,
    /// Retired: decrypts existing files, never wraps new ones.
    Deactivated,
    /// Known compromised: refused.
    Compromised,
    /// Key material destroyed.
    Destroyed,
}

impl KeyState {
    /// May a secret in this state unwrap a data key (decrypt)?
    pub fn may_decrypt(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Deactivated)
    }

    /// May a secret in this state wrap a new data key (encrypt)?
    pub fn may_encrypt(self) -> bool {
        matches!(self, KeyState::Active)
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyState::PreActive => "pre-active",
            KeyState::Active => "active",
            KeyState::Suspended => "suspended",
            KeyState::Deactivated => "deactivated",
            KeyState::Compromised => "compromised",
            KeyState::Destroyed => "destroyed",
        })
    }
}

/// A keystore secret resolved for use in a key slot.
#[derive(Debug)]
pub struct ResolvedKey {
    /// The secret bytes (at least 32 bytes of key material for keystore slots).
    pub secret: SecretBytes,
    /// The version's lifecycle state.
    pub state: KeyState,
}

/// Why the keystore could not resolve a secret.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No such secret (owner, category, version) in the keystore.
    #[error("no secret {owner}/{category} v{version} in the keystore")]
    NotFound {
        /// Owner.
        owner: String,
        /// Category.
        category: String,
        /// Version (`None`: no version at all / no active version).
        version: String,
    },
    /// The version exists but its state forbids using it (suspended, destroyed, ...).
    #[error("the key version is {state}")]
    Unavailable {
        /// Its current state.
        state: KeyState,
    },
    /// The keystore failed (cannot open, permissions, below the minimum version, ...).
    #[error("{0}")]
    Backend(String),
}

/// Resolves keystore secrets for keystore key slots. Implemented by the keystore crate (or any
/// other backend) so that the engine does not depend on it.
pub trait KeyResolver {
    /// The secret `owner`/`category`/`version` and its current state.
    fn resolve(
        &self,
        owner: &str,
        category: &str,
        version: u32,
    ) -> Result<ResolvedKey, ResolveError>;
    /// The version currently active for `owner`/`category` (used to wrap new data keys).
    fn active_version(&self, owner: &str, category: &str) -> Result<u32, ResolveError>;
}

/// Argon2id cost parameters of a passphrase slot (stored in the slot, bounded on read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory cost in KiB.
    pub m_kib: u32,
    /// Time cost (number of passes).
    pub t: u32,
    /// Parallelism (lanes).
    pub p: u32,
}

impl Argon2Params {
    /// RFC 9106 §4 second recommended option (memory-constrained): 64 MiB, t = 3, p = 4. Files
    /// are attacked offline, so the default is above OWASP's interactive-login minimum.
    pub const DEFAULT: Argon2Params = Argon2Params { m_kib: 64 * 1024, t: 3, p: 4 };
    /// OWASP Password Storage Cheat Sheet minimum (19 MiB, t = 2, p = 1): the weakest accepted.
    pub const MINIMUM: Argon2Params = Argon2Params { m_kib: 19 * 1024, t: 2, p: 1 };
    /// Accepted memory range in KiB (19 MiB ..= 1 GiB).
    pub const M_RANGE: std::ops::RangeInclusive<u32> = 19 * 1024..=1024 * 1024;
    /// Accepted time-cost range.
    pub const T_RANGE: std::ops::RangeInclusive<u32> = 2..=10;
    /// Accepted parallelism range.
    pub const P_RANGE: std::ops::RangeInclusive<u32> = 1..=16;

    /// Are these parameters inside the accepted bounds?
    pub fn in_bounds(&self) -> bool {
        Self::M_RANGE.contains(&self.m_kib)
            && Self::T_RANGE.contains(&self.t)
            && Self::P_RANGE.contains(&self.p)
    }

    /// Check the bounds, naming the violated one.
    pub fn validate(&self) -> Result<()> {
        let reason = if !Self::M_RANGE.contains(&self.m_kib) {
            format!("memory {} KiB is outside 19456..=1048576 KiB", self.m_kib)
        } else if !Self::T_RANGE.contains(&self.t) {
            format!("time cost {} is outside 2..=10", self.t)
        } else if !Self::P_RANGE.contains(&self.p) {
            format!("parallelism {} is outside 1..=16", self.p)
        } else {
            return Ok(());
        };
        Err(AtRestError::InvalidKdfParams { reason })
    }

    /// Find parameters whose single derivation takes at least `target` on this machine
    /// (LUKS2-style calibration): start from [`Self::DEFAULT`], double the memory up to 1 GiB,
    /// then raise the time cost up to 10. Never goes below the default.
    pub fn calibrate(target: Duration) -> Result<Argon2Params> {
        let mut params = Self::DEFAULT;
        let mut elapsed = time_one(params)?;
        while elapsed < target && params.m_kib * 2 <= *Self::M_RANGE.end() {
            params.m_kib *= 2;
            elapsed = time_one(params)?;
        }
        while elapsed < target && params.t < *Self::T_RANGE.end() {
            params.t += 1;
            elapsed = time_one(params)?;
        }
        Ok(params)
    }
}

fn time_one(params: Argon2Params) -> Result<Duration> {
    let start = Instant::now();
    let _k = argon2id(b"ferry calibration", &[0u8; 16], params)?;
    Ok(start.elapsed())
}

/// Argon2id (version 0x13) of `passphrase` with `salt`, 32-byte output. Bounds are checked first.
pub(crate) fn argon2id(passphrase: &[u8], salt: &[u8; 16], params: Argon2Params) -> Result<Key32> {
    params.validate()?;
    let p = Params::new(params.m_kib, params.t, params.p, Some(32))
        .map_err(|e| AtRestError::InvalidKdfParams { reason: e.to_string() })?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
    let mut out = Key32::zero();
    argon
        .hash_password_into(passphrase, salt, &mut out.0[..])
        .map_err(|e| AtRestError::InvalidKdfParams { reason: e.to_string() })?;
    Ok(out)
}
