//! Keystore key slots for `ferry crypt`: opens the ferry keystore (`ferry-keystore`) and
//! resolves secrets for the engine through its [`KeyResolver`] trait.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use ferry_engine::atrest::{self, KeyResolver, ResolveError, ResolvedKey};
use ferry_keystore::{Category, KeyState, Keystore, KeystoreError, Options, Owner};

use crate::error::CliError;

/// Which keystore holds the secrets.
#[derive(Debug, Args)]
pub(crate) struct KeystoreArgs {
    /// Root keystore database (used when running as root and no local keystore is named).
    #[arg(long, env = "FERRY_ROOT_KEYSTORE", value_name = "PATH",
          default_value = ferry_keystore::DEFAULT_ROOT_KEYSTORE)]
    root_keystore: PathBuf,
    /// Local keystore database (default for non-root users: ~/.ferry/localkeystore.db).
    #[arg(long, env = "FERRY_LOCAL_KEYSTORE", value_name = "PATH")]
    local_keystore: Option<PathBuf>,
}

impl KeystoreArgs {
    /// Open the keystore: the local one when named (or when not root), else the root one.
    /// The root keystore's stash passphrase comes from FERRY_STASH_PASSPHRASE if set.
    pub(crate) fn open(&self) -> Result<FerryKeystore, CliError> {
        let local = match &self.local_keystore {
            Some(p) => Some(p.clone()),
            None if ferry_keystore::euid() != 0 => std::env::var_os("HOME")
                .map(|h| ferry_keystore::default_local_keystore(Path::new(&h))),
            None => None,
        };
        let ks = match local {
            Some(p) => Keystore::open_local(&p, &Options::new().actor("ferry crypt")),
            None => {
                let mut opts = Options::new().actor("ferry crypt");
                if let Some(v) =
                    std::env::var_os("FERRY_STASH_PASSPHRASE").filter(|v| !v.is_empty())
                {
                    use std::os::unix::ffi::OsStringExt;
                    opts = opts.passphrase(ferry_keystore::SecretBytes::new(v.into_vec()));
                }
                Keystore::open_root(&self.root_keystore, &opts)
            }
        }
        .map_err(|e| crate::keys::keystore_error(e, None))?;
        Ok(FerryKeystore { ks })
    }
}

/// The ferry keystore as the engine's key resolver.
pub(crate) struct FerryKeystore {
    ks: Keystore,
}

impl std::fmt::Debug for FerryKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FerryKeystore").field("path", &self.ks.path()).finish()
    }
}

/// The keystore owner named by a slot (`*` is the node-wide owner).
fn parse_owner(owner: &str) -> Result<Owner, ResolveError> {
    if owner == "*" {
        return Ok(Owner::Shared);
    }
    Owner::user(owner).map_err(|e| ResolveError::Backend(e.to_string()))
}

fn parse_category(category: &str) -> Result<Category, ResolveError> {
    Category::from_str(category).map_err(|e| ResolveError::Backend(e.to_string()))
}

fn engine_state(s: KeyState) -> atrest::KeyState {
    match s {
        KeyState::PreActive => atrest::KeyState::PreActive,
        KeyState::Active => atrest::KeyState::Active,
        KeyState::Suspended => atrest::KeyState::Suspended,
        KeyState::Deactivated => atrest::KeyState::Deactivated,
        KeyState::Compromised => atrest::KeyState::Compromised,
        KeyState::Destroyed => atrest::KeyState::Destroyed,
    }
}

fn resolve_error(e: KeystoreError, owner: &str, category: &str, version: String) -> ResolveError {
    match e {
        KeystoreError::WrongState { state, .. } => {
            ResolveError::Unavailable { state: engine_state(state) }
        }
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

impl KeyResolver for FerryKeystore {
    fn resolve(
        &self,
        owner: &str,
        category: &str,
        version: u32,
    ) -> Result<ResolvedKey, ResolveError> {
        let (o, c) = (parse_owner(owner)?, parse_category(category)?);
        let secret = self
            .ks
            .resolve(&o, c, version)
            .map_err(|e| resolve_error(e, owner, category, version.to_string()))?;
        Ok(ResolvedKey {
            secret: atrest::SecretBytes::new(secret.value().expose().to_vec()),
            state: engine_state(secret.state()),
        })
    }

    /// The active version, checked as usable to protect new data (state, expiry) by the
    /// keystore's `current`.
    fn active_version(&self, owner: &str, category: &str) -> Result<u32, ResolveError> {
        let (o, c) = (parse_owner(owner)?, parse_category(category)?);
        let secret = self
            .ks
            .current(&o, c)
            .map_err(|e| resolve_error(e, owner, category, "active".into()))?;
        Ok(secret.version())
    }
}

impl FerryKeystore {
    /// The state of a version, for `inspect` (metadata only; no value is read).
    pub(crate) fn state_of(&self, owner: &str, category: &str, version: u32) -> Option<String> {
        let (o, c) = (parse_owner(owner).ok()?, parse_category(category).ok()?);
        self.ks.info(&o, c, version).ok().map(|i| i.state.as_str().to_owned())
    }
}
