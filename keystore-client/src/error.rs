//! The keystore's typed errors. Every message says what failed and why, and where it can, what
//! to do next; none ever contains a secret value.

use std::path::PathBuf;

use crate::category::{Category, Owner};
use crate::store::KeystoreKind;
use crate::time::rfc3339;
use ferry_keys::{KeyState, Operation};

/// Everything that can go wrong in the keystore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The keystore database does not exist. The message names the command that creates it.
    #[error(
        "{kind} keystore {} does not exist; create it with `{}`",
        .path.display(),
        match .kind { KeystoreKind::Root => "ferry keys -i", KeystoreKind::Local => "ferry keys -i -u USER" }
    )]
    NotFound {
        /// Root or local.
        kind: KeystoreKind,
        /// The database path that was looked for.
        path: PathBuf,
    },
    /// The database exists but its key file (root stash or local key file) does not.
    #[error(
        "keystore key file {} is missing, so {} cannot be opened; restore the key file from \
         backup (a new key cannot open the existing secrets)",
        .key_path.display(), .path.display()
    )]
    KeyFileMissing {
        /// The missing key file.
        key_path: PathBuf,
        /// The keystore database it belongs to.
        path: PathBuf,
    },
    /// A keystore file can be read or written by group or others.
    #[error(
        "{} has mode {mode:04o}: group or others can access it; refusing to use it \
         (fix: chmod 600 {})",
        .path.display(), .path.display()
    )]
    UnsafePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory holding keystore files can be written by group or others.
    #[error(
        "directory {} has mode {mode:04o}: group or others could replace the keystore files \
         in it; refusing to use it (fix: chmod go-w {})",
        .path.display(), .path.display()
    )]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A directory above the keystore could let another user swap the keystore's files.
    #[error("{}: {reason}; another user could replace the keystore's directory through it, so \
             it is refused (fix: make it belong to root or the keystore's user, and not \
             writable by group or others)", .path.display())]
    UnsafeParent {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A keystore file is a symbolic link or not a regular file.
    #[error("{} is a symbolic link or not a regular file; refusing to use it", .path.display())]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
    },
    /// A keystore file belongs to another user.
    #[error(
        "{} is owned by uid {owner}, but ferry runs as uid {uid}; refusing to use it \
         (fix: chown {uid} {})",
        .path.display(), .path.display()
    )]
    WrongOwner {
        /// The offending file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        uid: u32,
    },
    /// The database is damaged or is not a Ferry keystore.
    #[error(
        "{} is corrupted or is not a Ferry keystore ({reason}); it was left untouched: \
         restore it from backup",
        .path.display()
    )]
    Corrupt {
        /// The database path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file is damaged.
    #[error(
        "keystore key file {} is corrupted ({reason}); it was left untouched: restore it from \
         backup",
        .path.display()
    )]
    CorruptKeyFile {
        /// The key file path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file does not belong to the database (other keystore, or a different key).
    #[error(
        "the key in {} does not open {} ({reason}); use the key file that was created with \
         this keystore",
        .key_path.display(), .path.display()
    )]
    WrongKey {
        /// The database path.
        path: PathBuf,
        /// The key file path.
        key_path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// Another process replaced the keystore key (rekey) after this handle opened it.
    #[error(
        "the key of {} was replaced by another process (ferry keys --rekey) after it was \
         opened; open the keystore again",
        .path.display()
    )]
    Rekeyed {
        /// The database path.
        path: PathBuf,
    },
    /// The key file is passphrase-protected and no passphrase was given.
    #[error("{} is protected by a stash passphrase, and none was given", .key_path.display())]
    PassphraseRequired {
        /// The key file path.
        key_path: PathBuf,
    },
    /// The passphrase does not unlock the key file.
    #[error("wrong stash passphrase for {}", .key_path.display())]
    WrongPassphrase {
        /// The key file path.
        key_path: PathBuf,
    },
    /// The file is a keystore of the other kind (root vs local).
    #[error("{} is a {found} keystore, not a {expected} keystore", .path.display())]
    WrongKind {
        /// The database path.
        path: PathBuf,
        /// What the caller asked for.
        expected: KeystoreKind,
        /// What the file is.
        found: KeystoreKind,
    },
    /// A local keystore belongs to another user than the one asked for.
    #[error("{} is the local keystore of {found}, not of {expected}", .path.display())]
    OwnerMismatch {
        /// The database path.
        path: PathBuf,
        /// The user asked for.
        expected: String,
        /// The user it belongs to.
        found: String,
    },
    /// Creating a keystore would overwrite an existing file.
    #[error("{} already exists; refusing to overwrite it", .path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The category name is not one Ferry knows.
    #[error(
        "unknown secret category '{name}' (known: ssear, redis-master-key, token-key, filepass)"
    )]
    UnknownCategory {
        /// The name given.
        name: String,
    },
    /// The user name is not acceptable.
    #[error("invalid user name '{name}': {reason}")]
    InvalidOwner {
        /// The name given (truncated to 64 characters).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The secret value is not acceptable for its category.
    #[error("invalid {category} value: {reason}")]
    InvalidValue {
        /// The category.
        category: Category,
        /// Why it was refused.
        reason: String,
    },
    /// The owner does not fit the category (per-user vs shared), or the category does not
    /// belong in this keystore (root vs local).
    #[error("{category}: {reason}")]
    WrongPlace {
        /// The category.
        category: Category,
        /// What was wrong and what to do instead.
        reason: String,
    },
    /// An argument is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// No version at all exists for (owner, category).
    #[error("no records found for {owner}/{category}")]
    NoSuchSecret {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
    },
    /// The version does not exist.
    #[error("{owner}/{category} has no version {version}")]
    NoSuchVersion {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version asked for.
        version: u32,
    },
    /// No version is active (all suspended, deactivated, ...).
    #[error("{owner}/{category} has no active version")]
    NoActiveVersion {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
    },
    /// The version's state does not allow the operation.
    #[error("cannot {verb} {owner}/{category} v{version}: it is {state}", verb = .op.verb())]
    WrongState {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
        /// Its state.
        state: KeyState,
        /// What was attempted.
        op: Operation,
    },
    /// The state transition is not allowed.
    #[error("cannot move {owner}/{category} v{version} from {from} to {to}: {reason}")]
    Transition {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
        /// Its current state.
        from: KeyState,
        /// The state asked for.
        to: KeyState,
        /// Why not, and what to do instead.
        reason: &'static str,
    },
    /// The version is below the minimum decryption version.
    #[error(
        "cannot decrypt with {owner}/{category} v{version}: it is below the minimum decryption \
         version {min}"
    )]
    BelowMinimum {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
        /// The minimum decryption version.
        min: u32,
    },
    /// The active version is past its `not_after` time and may not protect new data.
    #[error(
        "{owner}/{category} v{version} expired at {}; rotate it to get a new version",
        rfc3339(*.not_after)
    )]
    Expired {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
        /// When it expired (Unix seconds).
        not_after: i64,
    },
    /// A local copy is past its expiry; the local keystore must be refreshed.
    #[error(
        "the local copy of {owner}/{category} v{version} expired at {}; refresh the local \
         keystore from the root keystore",
        rfc3339(*.expires_at)
    )]
    CopyExpired {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
        /// When the copy expired (Unix seconds).
        expires_at: i64,
    },
    /// A local copy carries metadata only (its state does not allow use), or was destroyed.
    #[error("{owner}/{category} v{version} has no stored value (it is {state})")]
    NoValue {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
        /// Its state.
        state: KeyState,
    },
    /// A wrapped value failed authentication.
    #[error(
        "{owner}/{category} v{version} failed authentication: the stored row was modified, or \
         moved from another keystore, owner, category or version"
    )]
    Integrity {
        /// The owner.
        owner: Owner,
        /// The category.
        category: Category,
        /// The version.
        version: u32,
    },
    /// A file system operation failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// SQLite failed (other than corruption, which is [`KeystoreError::Corrupt`]).
    #[error("database error in {}: {source}", .path.display())]
    Database {
        /// The database path.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The change is committed (and in the audit table) but the audit log append failed.
    #[error(
        "the change is committed and recorded in the audit table, but appending to the audit \
         log {} failed: {source}",
        .path.display()
    )]
    AuditLog {
        /// The audit log path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl KeystoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        KeystoreError::Io { path: path.into(), source }
    }
}
