//! Which keystore `ferry crypt` opens for keystore key slots. The keystore itself resolves the
//! slots' secrets: it implements the at-rest format's `KeyResolver` (`ferry-keystore`,
//! `resolver.rs`).

use std::path::{Path, PathBuf};

use clap::Args;
use ferry_keystore::{Keystore, Options};

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
    pub(crate) fn open(&self) -> Result<Keystore, CliError> {
        let local = match &self.local_keystore {
            Some(p) => Some(p.clone()),
            None if ferry_keystore::euid() != 0 => std::env::var_os("HOME")
                .map(|h| ferry_keystore::default_local_keystore(Path::new(&h))),
            None => None,
        };
        match local {
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
        .map_err(|e| crate::keys::keystore_error(e, None))
    }
}
