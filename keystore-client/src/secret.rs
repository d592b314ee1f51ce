//! Secret-holding types: zeroized on drop, redacted in `Debug`, never `Clone`.

use std::fmt;

use zeroize::Zeroizing;

/// Length in bytes of every key Ferry's keystore generates (256 bits).
pub const GENERATED_SECRET_LEN: usize = 32;

/// Secret bytes: a stored secret's value, a passphrase, or key material.
///
/// The buffer is zeroized when dropped; `Debug` prints `SecretBytes([redacted])`; there is no
/// `Clone` (copy explicitly with [`SecretBytes::from_slice`] when a second owner is really needed)
/// and no `Display`. Exposure is the explicit call [`SecretBytes::expose`].
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
        crate::crypto::fill_random(&mut v);
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

/// A 256-bit key (root key, local key, derived wrapping key). Zeroized on drop, redacted.
pub(crate) struct Key32(Zeroizing<[u8; 32]>);

impl Key32 {
    #[cfg(test)]
    pub(crate) fn from_array(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn zeroed() -> Self {
        Self(Zeroizing::new([0u8; 32]))
    }

    pub(crate) fn random() -> Self {
        let mut k = Self::zeroed();
        crate::crypto::fill_random(k.0.as_mut());
        k
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn expose_mut(&mut self) -> &mut [u8; 32] {
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
        let d = format!("{s:?}");
        assert_eq!(d, "SecretBytes([redacted])");
        let k = Key32::random();
        assert_eq!(format!("{k:?}"), "Key32([redacted])");
    }

    #[test]
    fn random_is_random() {
        let a = SecretBytes::random(32);
        let b = SecretBytes::random(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a.expose(), b.expose());
    }
}
