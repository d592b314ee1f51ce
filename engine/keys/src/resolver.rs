//! How the at-rest code asks a keystore for a secret.

use crate::{KeyState, SecretBytes};

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
    #[error("{}", not_found(owner, category, version))]
    NotFound {
        /// Owner.
        owner: String,
        /// Category.
        category: String,
        /// Version (`active` when no version is active).
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

fn not_found(owner: &str, category: &str, version: &str) -> String {
    if version == "active" {
        format!("no active version of the secret {owner}/{category} in the keystore")
    } else {
        format!("no secret {owner}/{category} v{version} in the keystore")
    }
}

/// Resolves keystore secrets for keystore key slots. The keystore crate implements it, so that
/// the engine does not depend on the keystore.
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
