//! Ferry's keystore: SQLite keystores of wrapped secrets, modelled on Aspera's `askmscli`.
//!
//! * The **root keystore** (`rootkeystore.db`, default [`DEFAULT_ROOT_KEYSTORE`]) is the source
//!   of truth: every user's `ssear` secret and the shared `redis-master-key` and `token-key`.
//!   Its key lives in a root-only **stash** file beside it (`rootkeystore.stash`), optionally
//!   protected by a stash passphrase through Argon2id.
//! * A user's **local keystore** (`~/.ferry/localkeystore.db`, key file `localkeystore.key`)
//!   holds copies of that user's secrets and of the shared keys ([`Keystore::sync_from_root`]),
//!   each copy expiring, plus the user's own client-side `filepass`.
//! * Values are stored only **wrapped** (AES-256-GCM, the row identity as associated data);
//!   every write creates a new **version**; versions follow the NIST SP 800-57 **states**
//!   ([`KeyState`]); every change and every read of a value is **audited**.
//!
//! # Using it from the engine or the daemon
//!
//! ```no_run
//! use ferry_keystore::{Category, Keystore, Options, Owner};
//! # fn main() -> Result<(), ferry_keystore::KeystoreError> {
//! let ks = Keystore::open_local(
//!     "/home/alice/.ferry/localkeystore.db".as_ref(),
//!     &Options::new().actor("ferry serve"),
//! )?;
//! let alice = Owner::user("alice")?;
//!
//! // Encrypting a new file: take the active version, remember its number.
//! let uk = ks.current(&alice, Category::Ssear)?;
//! let (version, key_bytes) = (uk.version(), uk.value().expose());
//! # let _ = (version, key_bytes);
//!
//! // Decrypting later: resolve exactly that version (fails closed if it was suspended,
//! // compromised, destroyed or is below the minimum decryption version).
//! let uk = ks.resolve(&alice, Category::Ssear, version)?;
//! assert!(uk.state().permits(ferry_keystore::Operation::Process));
//! # Ok(()) }
//! ```
//!
//! Administration (what `ferry keys` does): [`Keystore::open_or_create_root`],
//! [`Keystore::put`], [`Keystore::generate`], [`Keystore::rotate`], [`Keystore::set_state`],
//! [`Keystore::set_min_decryption_version`], [`Keystore::list`], [`Keystore::audit_records`],
//! [`Keystore::open_or_create_local`] + [`Keystore::sync_from_root`].
//!
//! The on-disk formats and the threat model are in `docs/KEYSTORE.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod category;
mod crypto;
mod error;
mod fsutil;
pub mod keyfile;
mod resolver;
mod secret;
mod store;
pub mod time;

pub use audit::AuditRecord;
pub use category::{Category, Home, MAX_SECRET_LEN, Owner, Scope, TOKEN_KEY_DEFAULT_TTL};
pub use error::KeystoreError;
pub use ferry_keys::{Argon2Params, KeyResolver, KeyState, Operation, ResolveError, ResolvedKey};
pub use fsutil::{
    PasswdEntry, check_private_dir, check_private_file, euid, passwd, replace_file,
    replace_file_owned, write_new_file,
};
pub use secret::{GENERATED_SECRET_LEN, SecretBytes};
pub use store::{
    APPLICATION_ID, DEFAULT_BUSY_TIMEOUT, DEFAULT_COPY_TTL, DEFAULT_ROOT_KEYSTORE, Keystore,
    KeystoreKind, Options, PutOptions, SCHEMA_VERSION, Secret, SecretInfo, SyncOptions, SyncReport,
    audit_log_path, default_local_keystore, key_file_path,
};
