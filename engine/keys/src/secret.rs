//! Secret-holding types: zeroized on drop, redacted in `Debug`, never `Clone`.

use std::fmt;

use rand::TryRng;
use zeroize::Zeroizing;

/// Fills `buf` from the operating system's CSPRNG (getrandom). Panics only if the OS has no
/// randomness source, which no supported platform lacks.
pub fn fill_random(buf: &mut [u8]) {
    rand::rngs::SysRng
        .try_fill_bytes(buf)
        .expect("the operating system's random number generator failed");
}

/// Secret bytes: a stored secret's value, a passphrase, or key material.
///
/// The buffer is zeroized when dropped; `Debug` prints `SecretBytes([redacted])`; there is no
/// `Clone` (copy explicitly with [`SecretBytes::from_slice`] when a second owner is really
/// needed) and no `Display`. Exposure is the explicit call [`SecretBytes::expose`].
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` (the vector is zeroized when this value drops).
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret buffer (the caller remains responsible for its copy).
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// A fresh secret of `len` bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> Self {
        let mut v = Zeroizing::new(vec![0u8; len]);
        fill_random(&mut v);
        Self(v)
    }

    /// The secret bytes. Keep the borrow short and never log or format them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the secret has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

/// A 256-bit key (a data key, a keystore's key, a derived wrapping key): zeroized on drop,
/// redacted in `Debug`, not `Clone`.
pub struct Key32(Zeroizing<[u8; 32]>);

impl Key32 {
    /// An all-zero key, to be filled through [`Key32::expose_mut`].
    pub fn zeroed() -> Self {
        Self(Zeroizing::new([0u8; 32]))
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut k = Self::zeroed();
        fill_random(k.0.as_mut());
        k
    }

    /// Takes `bytes` as a key (the caller's copy is its own to zeroize).
    pub fn from_array(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key bytes. Keep the borrow short and never log or format them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key bytes, to fill in place (a derivation's or a decryption's output).
    pub fn expose_mut(&mut self) -> &mut [u8; 32] {
        &mut self.0
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::from_slice(b"hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "SecretBytes([redacted])");
        let k = Key32::random();
        assert_eq!(format!("{k:?}"), "Key32([redacted])");
    }

    #[test]
    fn random_is_random() {
        let a = SecretBytes::random(32);
        let b = SecretBytes::random(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert_ne!(Key32::random().expose(), Key32::random().expose());
    }
}
