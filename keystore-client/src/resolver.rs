//! The keystore as the at-rest format's [`KeyResolver`]: how `ferry crypt`, the server and
//! anything else that opens keystore key slots finds a secret by owner, category and version.

use std::str::FromStr;

use ferry_keys::{KeyResolver, KeyState, ResolveError, ResolvedKey};

use crate::{Category, Keystore, KeystoreError, Owner};

/// The keystore owner a key slot names (`*` is the node-wide owner).
fn owner(name: &str) -> Result<Owner, ResolveError> {
    if name == "*" {
        return Ok(Owner::Shared);
    }
    Owner::user(name).map_err(|e| ResolveError::Backend(e.to_string()))
}

fn category(name: &str) -> Result<Category, ResolveError> {
    Category::from_str(name).map_err(|e| ResolveError::Backend(e.to_string()))
}

fn resolve_error(e: KeystoreError, owner: &str, category: &str, version: String) -> ResolveError {
    match e {
        KeystoreError::WrongState { state, .. } => ResolveError::Unavailable { state },
        KeystoreError::NoSuchSecret { .. }
        | KeystoreError::NoSuchVersion { .. }
        | KeystoreError::NoActiveVersion { .. } => ResolveError::NotFound {
            owner: owner.to_owned(),
            category: category.to_owned(),
            version,
        },
        other => ResolveError::Backend(other.to_string()),
    }
}

impl KeyResolver for Keystore {
    /// Exactly that version, checked by the keystore's `resolve` (fails closed when it is
    /// suspended, compromised, destroyed or below the minimum decryption version); the read
    /// is audited.
    fn resolve(
        &self,
        owner_name: &str,
        category_name: &str,
        version: u32,
    ) -> Result<ResolvedKey, ResolveError> {
        let (o, c) = (owner(owner_name)?, category(category_name)?);
        let secret = Keystore::resolve(self, &o, c, version)
            .map_err(|e| resolve_error(e, owner_name, category_name, version.to_string()))?;
        let state = secret.state();
        Ok(ResolvedKey { secret: secret.into_value(), state })
    }

    /// The active version, checked as usable to protect new data (state, expiry) by the
    /// keystore's `current`.
    fn active_version(&self, owner_name: &str, category_name: &str) -> Result<u32, ResolveError> {
        let (o, c) = (owner(owner_name)?, category(category_name)?);
        let secret = self
            .current(&o, c)
            .map_err(|e| resolve_error(e, owner_name, category_name, "active".into()))?;
        Ok(secret.version())
    }
}

impl Keystore {
    /// The state of version `version` of a key slot's `owner`/`category` (metadata only: no
    /// value is read, nothing is audited). `None` when there is no such version.
    pub fn slot_state(
        &self,
        owner_name: &str,
        category_name: &str,
        version: u32,
    ) -> Option<KeyState> {
        let (o, c) = (owner(owner_name).ok()?, category(category_name).ok()?);
        self.info(&o, c, version).ok().map(|i| i.state)
    }
}
