//! Argon2id (RFC 9106, version 0x13): bounded cost parameters and the derivation.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Params, Version};

use crate::Key32;

/// Argon2id cost parameters of a passphrase (stored beside what they protect, bounded on read
/// so that a crafted file cannot demand unbounded memory or time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Time cost (passes).
    pub t_cost: u32,
    /// Parallelism (lanes).
    pub p_cost: u32,
}

/// Why Argon2id parameters were refused or the derivation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct KdfError {
    /// Which bound was violated, or what the derivation refused.
    pub reason: String,
}

impl Argon2Params {
    /// RFC 9106 §4 second recommended option (memory-constrained): 64 MiB, t = 3, p = 4. What
    /// these protect is attacked offline, so the default is above OWASP's interactive minimum.
    pub const DEFAULT: Argon2Params = Argon2Params { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 4 };
    /// OWASP Password Storage Cheat Sheet minimum (19 MiB, t = 2, p = 1): the weakest accepted.
    pub const MIN: Argon2Params = Argon2Params { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 };
    /// The strongest accepted (1 GiB, t = 10, p = 16): bounds the work a file can demand.
    pub const MAX: Argon2Params = Argon2Params { m_cost_kib: 1024 * 1024, t_cost: 10, p_cost: 16 };

    fn ranges() -> [(RangeInclusive<u32>, &'static str, &'static str); 3] {
        [
            (Self::MIN.m_cost_kib..=Self::MAX.m_cost_kib, "memory", " KiB"),
            (Self::MIN.t_cost..=Self::MAX.t_cost, "time cost", ""),
            (Self::MIN.p_cost..=Self::MAX.p_cost, "parallelism", ""),
        ]
    }

    fn values(&self) -> [u32; 3] {
        [self.m_cost_kib, self.t_cost, self.p_cost]
    }

    /// Are these parameters inside the accepted bounds ([`Self::MIN`] ..= [`Self::MAX`])?
    pub fn in_bounds(&self) -> bool {
        self.validate().is_ok()
    }

    /// Checks the bounds, naming the violated one.
    pub fn validate(&self) -> Result<(), KdfError> {
        for ((range, what, unit), v) in Self::ranges().into_iter().zip(self.values()) {
            if !range.contains(&v) {
                let (lo, hi) = range.into_inner();
                let reason = format!("{what} {v}{unit} is outside {lo}..={hi}{unit}");
                return Err(KdfError { reason });
            }
        }
        Ok(())
    }

    /// Argon2id of `passphrase` with `salt`, 32 bytes out. The bounds are checked first.
    pub fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<Key32, KdfError> {
        self.validate()?;
        let failed = |e: argon2::Error| KdfError { reason: format!("Argon2id refused: {e}") };
        let params =
            Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32)).map_err(failed)?;
        let mut out = Key32::zeroed();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, salt, out.expose_mut())
            .map_err(failed)?;
        Ok(out)
    }

    /// Parameters whose single derivation takes at least `target` on this machine
    /// (LUKS2-style calibration): start from [`Self::DEFAULT`], double the memory up to the
    /// maximum, then raise the time cost up to the maximum. Never below the default.
    pub fn calibrate(target: Duration) -> Result<Argon2Params, KdfError> {
        let time = |p: Argon2Params| {
            let start = Instant::now();
            p.derive(b"ferry calibration", &[0u8; 16]).map(|_| start.elapsed())
        };
        let mut params = Self::DEFAULT;
        let mut elapsed = time(params)?;
        while elapsed < target && params.m_cost_kib * 2 <= Self::MAX.m_cost_kib {
            params.m_cost_kib *= 2;
            elapsed = time(params)?;
        }
        while elapsed < target && params.t_cost < Self::MAX.t_cost {
            params.t_cost += 1;
            elapsed = time(params)?;
        }
        Ok(params)
    }
}

impl fmt::Display for Argon2Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m = {} KiB, t = {}, p = {}", self.m_cost_kib, self.t_cost, self.p_cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(Argon2Params::MIN.in_bounds() && Argon2Params::MAX.in_bounds());
        assert!(Argon2Params::DEFAULT.in_bounds());
        let e = Argon2Params { m_cost_kib: 1024, ..Argon2Params::MIN }.validate().unwrap_err();
        assert_eq!(e.reason, "memory 1024 KiB is outside 19456..=1048576 KiB");
        let e = Argon2Params { t_cost: 11, ..Argon2Params::MIN }.validate().unwrap_err();
        assert_eq!(e.reason, "time cost 11 is outside 2..=10");
        let e = Argon2Params { p_cost: 0, ..Argon2Params::MIN }.validate().unwrap_err();
        assert_eq!(e.reason, "parallelism 0 is outside 1..=16");
        // Out of bounds is refused before any memory is allocated.
        let huge = Argon2Params { m_cost_kib: u32::MAX, ..Argon2Params::MIN };
        assert!(huge.derive(b"p", &[0; 16]).is_err());
    }

    /// The reference implementation's Argon2id v0x13 test (phc-winner-argon2 `src/test.c`):
    /// "password", salt "somesalt", m = 65536 KiB, t = 2, p = 1, 32 bytes out.
    #[test]
    fn reference_vector_and_salting() {
        let p = Argon2Params { m_cost_kib: 65536, t_cost: 2, p_cost: 1 };
        let k = p.derive(b"password", b"somesalt").unwrap();
        let hex: String = k.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "09316115d5cf24ed5a15a31a3ba326e5cf32edc24702987c02b6566f61913cf7");
        let other = p.derive(b"password", b"othersalt").unwrap();
        assert_ne!(k.expose(), other.expose());
    }
}
