//! Secret categories and owners: what a secret is for and whom it belongs to.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::KeystoreError;
use crate::secret::SecretBytes;

/// Largest secret value accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 4096;

/// Default validity (`not_after`) of a new `token-key` version: dynamic token keys are rotated
/// at least daily (askmscli's dynamic token encryption key; Vault's `auto_rotate_period` ≥ 1 h).
pub const TOKEN_KEY_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The kind of secret. Unknown names are refused ([`KeystoreError::UnknownCategory`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `ssear`: a user's server-side encryption-at-rest secret (per user, root keystore).
    Ssear,
    /// `redis-master-key`: the node's shared 256-bit master key (shared, root keystore).
    /// askmscli 4.4 calls it `redis-primary-key`; that name is accepted as an alias.
    RedisMasterKey,
    /// `token-key`: the dynamic token encryption key (shared, root keystore, versions expire).
    TokenKey,
    /// `filepass`: a user's client-side envelope passphrase (per user, local keystore only).
    Filepass,
}

/// Whether a category's secrets belong to one user or are shared by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One secret per user; an [`Owner::User`] is required.
    PerUser,
    /// One node-wide secret; the owner is [`Owner::Shared`].
    Shared,
}

/// Where a category's secrets are written (their source of truth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// Written in the root keystore and copied to local keystores by sync.
    Root,
    /// Written directly in the user's local keystore (client-side secrets); never synced.
    Local,
}

impl Category {
    /// Every category, in display order.
    pub const ALL: [Category; 4] =
        [Category::Ssear, Category::RedisMasterKey, Category::TokenKey, Category::Filepass];

    /// The category's name as used on the command line and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Ssear => "ssear",
            Category::RedisMasterKey => "redis-master-key",
            Category::TokenKey => "token-key",
            Category::Filepass => "filepass",
        }
    }

    /// Per-user or shared.
    pub fn scope(self) -> Scope {
        match self {
            Category::Ssear | Category::Filepass => Scope::PerUser,
            Category::RedisMasterKey | Category::TokenKey => Scope::Shared,
        }
    }

    /// Root keystore or local keystore.
    pub fn home(self) -> Home {
        match self {
            Category::Filepass => Home::Local,
            _ => Home::Root,
        }
    }

    /// Validity given to a new version when the caller does not choose one.
    pub fn default_ttl(self) -> Option<Duration> {
        match self {
            Category::TokenKey => Some(TOKEN_KEY_DEFAULT_TTL),
            _ => None,
        }
    }

    /// Checks (and for `redis-master-key`, decodes) a value supplied by a user.
    ///
    /// Every category takes 1 to [`MAX_SECRET_LEN`] bytes. `redis-master-key` must be exactly
    /// 256 bits: 32 raw bytes, or 64 hex digits, or the standard base64 of 32 bytes (what
    /// `openssl rand -base64 32` prints), which is decoded to the 32 bytes.
    pub fn normalize_value(self, value: SecretBytes) -> Result<SecretBytes, KeystoreError> {
        let v = value.expose();
        if v.is_empty() {
            return Err(KeystoreError::InvalidValue {
                category: self,
                reason: "the value is empty".into(),
            });
        }
        if v.len() > MAX_SECRET_LEN {
            return Err(KeystoreError::InvalidValue {
                category: self,
                reason: format!("the value is longer than the limit of {MAX_SECRET_LEN} bytes"),
            });
        }
        if self != Category::RedisMasterKey {
            return Ok(value);
        }
        if v.len() == 32 {
            return Ok(value);
        }
        if v.len() == 64 && v.iter().all(u8::is_ascii_hexdigit) {
            let mut out = vec![0u8; 32];
            if hex::decode_to_slice(v, &mut out).is_ok() {
                return Ok(SecretBytes::new(out));
            }
        }
        if v.len() == 44 {
            let mut out = vec![0u8; 33];
            if let Ok(32) = base64::engine::general_purpose::STANDARD.decode_slice(v, &mut out) {
                out.truncate(32);
                return Ok(SecretBytes::new(out));
            }
        }
        Err(KeystoreError::InvalidValue {
            category: self,
            reason: format!(
                "a redis-master-key is 256 bits: 32 raw bytes, 64 hex digits or 44 base64 \
                 characters, not {} bytes",
                v.len()
            ),
        })
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = KeystoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ssear" => Ok(Category::Ssear),
            "redis-master-key" | "redis-primary-key" => Ok(Category::RedisMasterKey),
            "token-key" => Ok(Category::TokenKey),
            "filepass" => Ok(Category::Filepass),
            other => Err(KeystoreError::UnknownCategory { name: other.chars().take(64).collect() }),
        }
    }
}

/// Whom a secret belongs to: one user, or the whole node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// Node-wide (stored as `*`; shown as `shared`).
    Shared,
    /// A user name: 1 to 64 of `A-Z a-z 0-9 . _ - @`, not starting with `-` or `.`.
    User(String),
}

impl Owner {
    /// A user owner, validated (see [`Owner::User`]).
    pub fn user(name: &str) -> Result<Self, KeystoreError> {
        let bad = |reason: &str| KeystoreError::InvalidOwner {
            name: name.chars().take(64).collect(),
            reason: reason.into(),
        };
        ferry_keys::check_user_name(name).map_err(bad)?;
        Ok(Owner::User(name.to_owned()))
    }

    /// The owner as stored in the database (`*` for shared).
    pub fn as_db(&self) -> &str {
        match self {
            Owner::Shared => "*",
            Owner::User(u) => u,
        }
    }

    pub(crate) fn from_db(s: &str) -> Result<Self, KeystoreError> {
        if s == "*" { Ok(Owner::Shared) } else { Owner::user(s) }
    }

    /// A stable 16-byte identifier for this owner, the same in every keystore:
    /// the first 16 bytes of `SHA-256("ferry-keystore/v1 owner-id\0" || name)` (`*` for shared).
    /// The at-rest envelope binds it as its "owner id".
    pub fn id(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(b"ferry-keystore/v1 owner-id\0");
        h.update(self.as_db().as_bytes());
        let d = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        out
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Shared => f.write_str("shared"),
            Owner::User(u) => f.write_str(u),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip_and_unknown_refused() {
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>().unwrap(), c);
        }
        assert_eq!("redis-primary-key".parse::<Category>().unwrap(), Category::RedisMasterKey);
        let e = "redis-password".parse::<Category>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown secret category 'redis-password' (known: ssear, redis-master-key, token-key, filepass)"
        );
    }

    #[test]
    fn owners_are_validated() {
        assert!(Owner::user("alice").is_ok());
        assert!(Owner::user("svc.ferry-1@corp").is_ok());
        for bad in ["", "-rf", ".hidden", "a b", "a/b", "*", &"x".repeat(65)] {
            assert!(Owner::user(bad).is_err(), "{bad:?} accepted");
        }
        assert_ne!(Owner::Shared.id(), Owner::user("alice").unwrap().id());
    }

    #[test]
    fn redis_master_key_forms() {
        let raw = [7u8; 32];
        let hexs = hex::encode(raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        for form in [raw.to_vec(), hexs.into_bytes(), b64.into_bytes()] {
            let v = Category::RedisMasterKey.normalize_value(SecretBytes::new(form)).unwrap();
            assert_eq!(v.expose(), &raw);
        }
        let e = Category::RedisMasterKey
            .normalize_value(SecretBytes::from_slice(b"short"))
            .unwrap_err();
        assert!(e.to_string().contains("256 bits"), "{e}");
        assert!(Category::Ssear.normalize_value(SecretBytes::new(vec![])).is_err());
    }
}
