//! The keystore: one SQLite database plus its key file. See the crate documentation for the
//! model and `docs/KEYSTORE.md` for the schema.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, params};

use crate::audit::{self, AuditRecord, NewRecord};
use crate::category::{Category, Home, Owner, Scope};
use crate::crypto::WrapKey;
use crate::error::KeystoreError;
use crate::fsutil;
use crate::keyfile::{KeyFile, KeyFileError};
use crate::secret::{GENERATED_SECRET_LEN, Key32, SecretBytes};
use crate::time;
use ferry_keys::Argon2Params;
use ferry_keys::{KeyState, Operation};

type Result<T> = std::result::Result<T, KeystoreError>;

/// SQLite `application_id` of a Ferry keystore: ASCII `FRRY`.
pub const APPLICATION_ID: i64 = 0x4652_5259;
/// Schema version written in `meta.schema_version` (and `PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;
/// Default location of the root keystore (under the server's state directory).
pub const DEFAULT_ROOT_KEYSTORE: &str = "/var/lib/ferry/rootkeystore.db";
/// Default lifetime of local copies made by [`Keystore::sync_from_root`].
pub const DEFAULT_COPY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default SQLite busy timeout: how long a writer waits for another process's transaction.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default local keystore of a user whose home directory is `home`:
/// `home/.ferry/localkeystore.db`.
pub fn default_local_keystore(home: &Path) -> PathBuf {
    home.join(".ferry").join("localkeystore.db")
}

/// The key file beside a keystore database: `<stem>.stash` for a root keystore (the stash),
/// `<stem>.key` for a local keystore.
pub fn key_file_path(db: &Path, kind: KeystoreKind) -> PathBuf {
    db.with_extension(match kind {
        KeystoreKind::Root => "stash",
        KeystoreKind::Local => "key",
    })
}

/// The audit log beside a keystore database: `<stem>.audit.jsonl`.
pub fn audit_log_path(db: &Path) -> PathBuf {
    db.with_extension("audit.jsonl")
}

/// Root keystore (source of truth) or a user's local keystore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeystoreKind {
    /// `rootkeystore.db`: every user's secrets and the shared keys.
    Root,
    /// `localkeystore.db`: one user's secrets and copies of the shared keys.
    Local,
}

impl KeystoreKind {
    /// `root` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeystoreKind::Root => "root",
            KeystoreKind::Local => "local",
        }
    }
}

impl fmt::Display for KeystoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to open or create a keystore.
#[derive(Debug)]
pub struct Options {
    passphrase: Option<SecretBytes>,
    argon2: Argon2Params,
    actor: Option<String>,
    busy_timeout: Duration,
    home: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            passphrase: None,
            argon2: Argon2Params::DEFAULT,
            actor: None,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            home: None,
        }
    }
}

impl Options {
    /// Defaults: no passphrase, actor `uid=N pid=P`, busy timeout [`DEFAULT_BUSY_TIMEOUT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The stash passphrase: unlocks a protected key file on open, and protects a new key file
    /// on creation (Argon2id; without it a new key file is protected by permissions only).
    pub fn passphrase(mut self, passphrase: SecretBytes) -> Self {
        self.passphrase = Some(passphrase);
        self
    }

    /// Argon2id cost for a new passphrase-protected key file (default: 64 MiB, t = 3, p = 4).
    pub fn argon2_params(mut self, params: Argon2Params) -> Self {
        self.argon2 = params;
        self
    }

    /// Who is acting, for the audit trail (e.g. `ferry serve`); uid and pid are appended.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// How long to wait for another process holding the write lock (default 30 s).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The home directory of the keystore's user: the check of the directories above the
    /// keystore ([`fsutil::check_dir_chain`]) stops there, as sshd's `StrictModes` does.
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }
}

/// Options for storing a new version.
#[derive(Clone, Copy, Debug)]
pub struct PutOptions {
    /// State of the new version: [`KeyState::Active`] (default; the previous active version is
    /// deactivated) or [`KeyState::PreActive`] (staged; activate it later).
    pub state: KeyState,
    /// Validity of the new version for protecting new data (`not_after = now + ttl`); `None`
    /// uses the category's default ([`Category::default_ttl`]).
    pub ttl: Option<Duration>,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self { state: KeyState::Active, ttl: None }
    }
}

/// Options for [`Keystore::sync_from_root`].
#[derive(Clone, Copy, Debug)]
pub struct SyncOptions {
    /// How long the copies stay usable without another sync (default 24 h).
    pub copy_ttl: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self { copy_ttl: DEFAULT_COPY_TTL }
    }
}

/// What a sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Versions copied with their value (usable for decryption).
    pub with_value: usize,
    /// Versions copied as metadata only (their state forbids use, or they are destroyed).
    pub metadata_only: usize,
    /// When the copies expire (Unix seconds).
    pub expires_at: i64,
}

/// Metadata of one secret version. Never contains the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretInfo {
    /// Whom it belongs to.
    pub owner: Owner,
    /// What it is.
    pub category: Category,
    /// Version number: 1, 2, ... per (owner, category); never reused.
    pub version: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Time of the last state change (Unix seconds).
    pub state_changed_at: i64,
    /// When it became active, if ever.
    pub activated_at: Option<i64>,
    /// When it was deactivated, if it was.
    pub deactivated_at: Option<i64>,
    /// End of its validity for protecting new data, if limited.
    pub not_after: Option<i64>,
    /// Local copies only: when the copy stops being usable.
    pub expires_at: Option<i64>,
    /// Whether a wrapped value is stored.
    pub has_value: bool,
    /// Local keystore only: true for a copy synced from the root keystore.
    pub synced: bool,
}

impl SecretInfo {
    /// `owner/category vN`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{} v{}", self.owner, self.category, self.version)
    }
}

/// A secret version with its value (zeroized on drop; `Debug` redacts it).
#[derive(Debug)]
pub struct Secret {
    info: SecretInfo,
    value: SecretBytes,
}

impl Secret {
    /// The version's metadata (version number, state, ...).
    pub fn info(&self) -> &SecretInfo {
        &self.info
    }

    /// The version number.
    pub fn version(&self) -> u32 {
        self.info.version
    }

    /// The state at the time of reading.
    pub fn state(&self) -> KeyState {
        self.info.state
    }

    /// The value.
    pub fn value(&self) -> &SecretBytes {
        &self.value
    }

    /// Takes the value.
    pub fn into_value(self) -> SecretBytes {
        self.value
    }
}

/// An open keystore (root or local). Not `Sync`: share it between threads behind a `Mutex`, or
/// open one per thread (SQLite coordinates processes and connections).
pub struct Keystore {
    conn: Connection,
    path: PathBuf,
    audit_path: PathBuf,
    kind: KeystoreKind,
    id: [u8; 16],
    owner: Option<Owner>,
    wrap: WrapKey,
    key: Key32,
    key_path: PathBuf,
    actor: String,
}

impl fmt::Debug for Keystore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keystore")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("id", &hex::encode(self.id))
            .field("owner", &self.owner)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Open,
    OpenOrCreate,
}

const SCHEMA: &str = "
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    keystore_id BLOB NOT NULL CHECK (length(keystore_id) = 16),
    kind TEXT NOT NULL CHECK (kind IN ('root', 'local')),
    owner TEXT,
    created_at INTEGER NOT NULL,
    key_check_nonce BLOB NOT NULL,
    key_check BLOB NOT NULL,
    last_sync_at INTEGER,
    source_keystore_id BLOB
);
CREATE TABLE secrets (
    owner TEXT NOT NULL,
    category TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    state TEXT NOT NULL CHECK (state IN
        ('pre-active', 'active', 'suspended', 'deactivated', 'compromised', 'destroyed')),
    nonce BLOB,
    wrapped BLOB,
    created_at INTEGER NOT NULL,
    state_changed_at INTEGER NOT NULL,
    activated_at INTEGER,
    deactivated_at INTEGER,
    not_after INTEGER,
    expires_at INTEGER,
    origin TEXT NOT NULL CHECK (origin IN ('here', 'root')),
    PRIMARY KEY (owner, category, version),
    CHECK (state <> 'destroyed' OR (wrapped IS NULL AND nonce IS NULL)),
    CHECK ((wrapped IS NULL) = (nonce IS NULL))
);
CREATE UNIQUE INDEX secrets_one_active ON secrets (owner, category) WHERE state = 'active';
CREATE TABLE policies (
    owner TEXT NOT NULL,
    category TEXT NOT NULL,
    min_decryption_version INTEGER NOT NULL CHECK (min_decryption_version >= 1),
    PRIMARY KEY (owner, category)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    op TEXT NOT NULL,
    owner TEXT,
    category TEXT,
    version INTEGER,
    from_state TEXT,
    to_state TEXT,
    detail TEXT
);
";

const INFO_COLS: &str = "owner, category, version, state, created_at, state_changed_at, \
     activated_at, deactivated_at, not_after, expires_at, wrapped IS NOT NULL, origin";

fn conv_err(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

#[derive(Debug)]
struct BadText(String);
impl fmt::Display for BadText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BadText {}

fn info_from_row(r: &Row<'_>) -> rusqlite::Result<SecretInfo> {
    let owner: String = r.get(0)?;
    let category: String = r.get(1)?;
    let state: String = r.get(3)?;
    let origin: String = r.get(11)?;
    Ok(SecretInfo {
        owner: Owner::from_db(&owner).map_err(|e| conv_err(0, e))?,
        category: category.parse().map_err(|e| conv_err(1, e))?,
        version: r.get(2)?,
        state: state.parse::<KeyState>().map_err(|e| conv_err(3, BadText(e)))?,
        created_at: r.get(4)?,
        state_changed_at: r.get(5)?,
        activated_at: r.get(6)?,
        deactivated_at: r.get(7)?,
        not_after: r.get(8)?,
        expires_at: r.get(9)?,
        has_value: r.get(10)?,
        synced: origin == "root",
    })
}

impl Keystore {
    /// Creates a new root keystore at `path` (and its stash file beside it). Fails with
    /// [`KeystoreError::AlreadyExists`] if the database exists.
    pub fn create_root(path: &Path, opts: &Options) -> Result<Keystore> {
        Self::open_impl(path, KeystoreKind::Root, None, opts, Mode::Create)
    }

    /// Opens an existing root keystore.
    pub fn open_root(path: &Path, opts: &Options) -> Result<Keystore> {
        Self::open_impl(path, KeystoreKind::Root, None, opts, Mode::Open)
    }

    /// Opens the root keystore, creating it first if it does not exist (safe when several
    /// processes race to create it).
    pub fn open_or_create_root(path: &Path, opts: &Options) -> Result<Keystore> {
        Self::open_impl(path, KeystoreKind::Root, None, opts, Mode::OpenOrCreate)
    }

    /// Creates a new local keystore for `user` at `path` (and its key file beside it).
    pub fn create_local(path: &Path, user: &str, opts: &Options) -> Result<Keystore> {
        Self::open_impl(path, KeystoreKind::Local, Some(Owner::user(user)?), opts, Mode::Create)
    }

    /// Opens an existing local keystore (of whichever user it belongs to; see
    /// [`Keystore::owner`]).
    pub fn open_local(path: &Path, opts: &Options) -> Result<Keystore> {
        Self::open_impl(path, KeystoreKind::Local, None, opts, Mode::Open)
    }

    /// Opens `user`'s local keystore, creating it if it does not exist. Fails with
    /// [`KeystoreError::OwnerMismatch`] if it belongs to another user.
    pub fn open_or_create_local(path: &Path, user: &str, opts: &Options) -> Result<Keystore> {
        let owner = Owner::user(user)?;
        Self::open_impl(path, KeystoreKind::Local, Some(owner), opts, Mode::OpenOrCreate)
    }

    fn open_impl(
        path: &Path,
        kind: KeystoreKind,
        owner: Option<Owner>,
        opts: &Options,
        mode: Mode,
    ) -> Result<Keystore> {
        let key_path = key_file_path(path, kind);
        let audit_path = audit_log_path(path);
        if let Some(dir) = path.parent() {
            fsutil::check_private_dir(dir)?;
            fsutil::check_dir_chain(dir, opts.home.as_deref())?;
        }
        let db_exists = fsutil::check_private_file(path)?;
        match (db_exists, mode) {
            (true, Mode::Create) => {
                return Err(KeystoreError::AlreadyExists { path: path.to_owned() });
            }
            (false, Mode::Open) => {
                return Err(KeystoreError::NotFound { kind, path: path.to_owned() });
            }
            _ => {}
        }
        // Every other name the keystore (and SQLite beside it) opens must be absent or a private
        // regular file of this user: a symbolic link, FIFO or directory planted there is
        // refused by name, never followed.
        fsutil::check_private_file(&audit_path)?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            fsutil::check_private_file(Path::new(&p))?;
        }
        if db_exists {
            if !fsutil::check_private_file(&key_path)? {
                return Err(KeystoreError::KeyFileMissing { key_path, path: path.to_owned() });
            }
        } else {
            if let Some(dir) = path.parent() {
                fsutil::ensure_dir(dir)?;
            }
            if !fsutil::check_private_file(&key_path)? {
                let key = Key32::random();
                let id = crate::crypto::random_array::<16>();
                let pass = opts.passphrase.as_ref().map(|p| (p, opts.argon2));
                let bytes = KeyFile::encode(kind, id, &key, pass)
                    .map_err(|e| KeystoreError::InvalidArgument(e.to_string()))?;
                match fsutil::write_new_file(&key_path, &*bytes, 0o600) {
                    Ok(()) => {}
                    // Another process created it first: use theirs.
                    Err(KeystoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            fsutil::create_empty_private(path)?;
            fsutil::create_empty_private(&audit_path)?;
            fsutil::check_private_file(path)?;
            fsutil::check_private_file(&key_path)?;
        }

        // Unlock the key.
        // Unprotected key files hold the key itself: keep the bytes in a zeroizing buffer.
        let key_bytes = fsutil::read_private(&key_path)?;
        let key_file = KeyFile::parse(&key_bytes).map_err(|e| KeystoreError::CorruptKeyFile {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        if key_file.kind() != kind {
            return Err(KeystoreError::WrongKey {
                path: path.to_owned(),
                key_path,
                reason: format!("it is the key file of a {} keystore", key_file.kind()),
            });
        }
        let key = key_file.unlock(opts.passphrase.as_ref()).map_err(|e| match e {
            KeyFileError::PassphraseRequired => {
                KeystoreError::PassphraseRequired { key_path: key_path.clone() }
            }
            KeyFileError::WrongPassphrase => {
                KeystoreError::WrongPassphrase { key_path: key_path.clone() }
            }
            KeyFileError::Malformed(reason) => {
                KeystoreError::CorruptKeyFile { path: key_path.clone(), reason }
            }
        })?;
        let wrap = WrapKey::derive(&key, key_file.keystore_id());

        // Only metadata here: opening and closing the database file ourselves would drop the
        // POSIX locks SQLite holds on it for other connections of this process.
        let len = std::fs::metadata(path).map_err(|e| KeystoreError::io(path, e))?.len();
        if len == 0 && mode == Mode::Open {
            return Err(KeystoreError::Corrupt {
                path: path.to_owned(),
                reason: "the file is empty: its creation was interrupted; `ferry keys -i` \
                         (with -u USER for a local keystore) finishes it"
                    .into(),
            });
        }

        let db_err = |e: rusqlite::Error| map_db_err(path, e);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(db_err)?;
        conn.busy_timeout(opts.busy_timeout).map_err(db_err)?;
        conn.execute_batch("PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;")
            .map_err(db_err)?;
        let actor = format!(
            "{}uid={} pid={}",
            opts.actor.as_deref().map(|a| format!("{a} ")).unwrap_or_default(),
            fsutil::euid(),
            std::process::id()
        );
        let app_id: i64 =
            conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(db_err)?;
        if app_id == 0 && mode != Mode::Open {
            Self::initialise(&conn, path, kind, owner.as_ref(), &wrap, &actor)?;
        } else if app_id != APPLICATION_ID {
            return Err(KeystoreError::Corrupt {
                path: path.to_owned(),
                reason: format!("application_id is {app_id:#x}, not Ferry's {APPLICATION_ID:#x}"),
            });
        }
        let journal: String =
            conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(db_err)?;
        if !journal.eq_ignore_ascii_case("wal") {
            let _: String =
                conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(db_err)?;
        }
        conn.execute_batch("PRAGMA synchronous = FULL;").map_err(db_err)?;
        let check: String =
            conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(db_err)?;
        if check != "ok" {
            return Err(KeystoreError::Corrupt {
                path: path.to_owned(),
                reason: format!("integrity check: {check}"),
            });
        }

        type MetaRow = (i64, Vec<u8>, String, Option<String>, Vec<u8>, Vec<u8>);
        let meta: Option<MetaRow> = conn
            .query_row(
                "SELECT schema_version, keystore_id, kind, owner, key_check_nonce, key_check \
                 FROM meta WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(db_err)?;
        let Some((schema, id, found_kind, found_owner, check_nonce, check)) = meta else {
            return Err(KeystoreError::Corrupt {
                path: path.to_owned(),
                reason: "the meta row is missing".into(),
            });
        };
        if schema != SCHEMA_VERSION {
            return Err(KeystoreError::Corrupt {
                path: path.to_owned(),
                reason: format!(
                    "schema version {schema}; this ferry reads version {SCHEMA_VERSION}"
                ),
            });
        }
        let found_kind = match found_kind.as_str() {
            "root" => KeystoreKind::Root,
            _ => KeystoreKind::Local,
        };
        if found_kind != kind {
            return Err(KeystoreError::WrongKind {
                path: path.to_owned(),
                expected: kind,
                found: found_kind,
            });
        }
        let id: [u8; 16] = id.as_slice().try_into().map_err(|_| KeystoreError::Corrupt {
            path: path.to_owned(),
            reason: "bad keystore id".into(),
        })?;
        if id != key_file.keystore_id() {
            return Err(KeystoreError::WrongKey {
                path: path.to_owned(),
                key_path,
                reason: format!(
                    "the key file belongs to keystore {}, the database is keystore {}",
                    hex::encode(key_file.keystore_id()),
                    hex::encode(id)
                ),
            });
        }
        let (key, wrap) = if wrap.verify_key_check(&check_nonce, &check) {
            (key, wrap)
        } else if let Some(found) =
            key_after_rekey(&key_path, &key_bytes, kind, id, opts, &check_nonce, &check)
        {
            found
        } else {
            return Err(KeystoreError::WrongKey {
                path: path.to_owned(),
                key_path,
                reason: "the key check value does not verify".into(),
            });
        };
        let found_owner = match (kind, found_owner) {
            (KeystoreKind::Local, Some(o)) => Some(Owner::from_db(&o).map_err(|_| {
                KeystoreError::Corrupt { path: path.to_owned(), reason: "bad owner".into() }
            })?),
            (KeystoreKind::Local, None) => {
                return Err(KeystoreError::Corrupt {
                    path: path.to_owned(),
                    reason: "a local keystore without an owner".into(),
                });
            }
            (KeystoreKind::Root, _) => None,
        };
        if let (Some(want), Some(found)) = (&owner, &found_owner)
            && want != found
        {
            return Err(KeystoreError::OwnerMismatch {
                path: path.to_owned(),
                expected: want.to_string(),
                found: found.to_string(),
            });
        }
        let ks = Keystore {
            conn,
            path: path.to_owned(),
            audit_path,
            kind,
            id,
            owner: found_owner,
            wrap,
            key,
            key_path,
            actor,
        };
        Ok(ks)
    }

    fn initialise(
        conn: &Connection,
        path: &Path,
        kind: KeystoreKind,
        owner: Option<&Owner>,
        wrap: &WrapKey,
        actor: &str,
    ) -> Result<()> {
        let db_err = |e: rusqlite::Error| map_db_err(path, e);
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
        let result = (|| -> Result<Option<AuditRecord>> {
            let app_id: i64 =
                conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(db_err)?;
            if app_id == APPLICATION_ID {
                return Ok(None); // another process initialised it while we waited
            }
            let tables: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(db_err)?;
            if tables != 0 {
                return Err(KeystoreError::Corrupt {
                    path: path.to_owned(),
                    reason: "an SQLite database that is not a Ferry keystore".into(),
                });
            }
            conn.execute_batch(SCHEMA).map_err(db_err)?;
            let now = time::now();
            let (nonce, check) = wrap.make_key_check();
            conn.execute(
                "INSERT INTO meta (id, schema_version, keystore_id, kind, owner, created_at, \
                 key_check_nonce, key_check) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    SCHEMA_VERSION,
                    wrap_id(wrap).as_slice(),
                    kind.as_str(),
                    owner.map(Owner::as_db),
                    now,
                    nonce.as_slice(),
                    check
                ],
            )
            .map_err(db_err)?;
            conn.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(db_err)?;
            let rec = audit::insert(
                conn,
                now,
                actor,
                NewRecord {
                    op: "create",
                    owner: owner.map(Owner::as_db),
                    detail: Some(format!("{kind} keystore {}", hex::encode(wrap_id(wrap)))),
                    ..Default::default()
                },
            )
            .map_err(db_err)?;
            Ok(Some(rec))
        })();
        let result = result.and_then(|rec| {
            conn.execute_batch("COMMIT").map_err(db_err)?;
            Ok(rec)
        });
        match result {
            Ok(Some(rec)) => {
                let _ = audit::append_log(&audit_log_path(path), &[rec]);
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        let _: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(db_err)?;
        Ok(())
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The audit log path (`<stem>.audit.jsonl` beside the database).
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_path
    }

    /// Root or local.
    pub fn kind(&self) -> KeystoreKind {
        self.kind
    }

    /// The keystore's random 16-byte id (bound into every row's associated data).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// For a local keystore, the user it belongs to.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    fn db_err(&self, e: rusqlite::Error) -> KeystoreError {
        map_db_err(&self.path, e)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction (waiting up to the busy timeout for other
    /// writers), commits, then appends the audit records `f` produced to the audit log.
    fn write_tx<T>(
        &self,
        f: impl FnOnce(&Connection, &mut Vec<AuditRecord>) -> Result<T>,
    ) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.db_err(e))?;
        if let Err(e) = self.check_key_unchanged() {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        let mut records = Vec::new();
        let value = match f(&self.conn, &mut records) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(self.db_err(e));
        }
        audit::append_log(&self.audit_path, &records)
            .map_err(|source| KeystoreError::AuditLog { path: self.audit_path.clone(), source })?;
        Ok(value)
    }

    fn record(
        &self,
        conn: &Connection,
        records: &mut Vec<AuditRecord>,
        now: i64,
        rec: NewRecord<'_>,
    ) -> Result<()> {
        let r = audit::insert(conn, now, &self.actor, rec).map_err(|e| self.db_err(e))?;
        records.push(r);
        Ok(())
    }

    /// Checks that `owner` fits `category` and, for changes, that `category` lives in this
    /// keystore.
    fn check_place(&self, owner: &Owner, category: Category, change: bool) -> Result<()> {
        let wrong = |reason: String| Err(KeystoreError::WrongPlace { category, reason });
        match (category.scope(), owner) {
            (Scope::PerUser, Owner::Shared) => {
                return wrong("these secrets belong to one user; name the user".into());
            }
            (Scope::Shared, Owner::User(_)) => {
                return wrong("this is a shared secret; it belongs to no user".into());
            }
            _ => {}
        }
        if self.kind == KeystoreKind::Local
            && let (Owner::User(_), Some(mine)) = (owner, &self.owner)
            && owner != mine
        {
            return wrong(format!("this local keystore belongs to {mine}, not to {owner}"));
        }
        if change {
            match (self.kind, category.home()) {
                (KeystoreKind::Root, Home::Local) => {
                    return wrong(
                        "a client-side passphrase is kept in the user's local keystore, not in \
                         the root keystore"
                            .into(),
                    );
                }
                (KeystoreKind::Local, Home::Root) => {
                    return wrong(
                        "these secrets are managed in the root keystore and copied to local \
                         keystores by a sync; change them in the root keystore"
                            .into(),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn load_info(
        &self,
        conn: &Connection,
        owner: &Owner,
        category: Category,
        version: u32,
    ) -> Result<SecretInfo> {
        let info = conn
            .query_row(
                &format!(
                    "SELECT {INFO_COLS} FROM secrets WHERE owner = ?1 AND category = ?2 AND version = ?3"
                ),
                params![owner.as_db(), category.as_str(), version],
                info_from_row,
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        match info {
            Some(i) => Ok(i),
            None => {
                if self.max_version(conn, owner, category)?.is_none() {
                    Err(KeystoreError::NoSuchSecret { owner: owner.clone(), category })
                } else {
                    Err(KeystoreError::NoSuchVersion { owner: owner.clone(), category, version })
                }
            }
        }
    }

    fn active_info(
        &self,
        conn: &Connection,
        owner: &Owner,
        category: Category,
    ) -> Result<Option<SecretInfo>> {
        conn.query_row(
            &format!(
                "SELECT {INFO_COLS} FROM secrets WHERE owner = ?1 AND category = ?2 AND state = 'active'"
            ),
            params![owner.as_db(), category.as_str()],
            info_from_row,
        )
        .optional()
        .map_err(|e| self.db_err(e))
    }

    fn max_version(
        &self,
        conn: &Connection,
        owner: &Owner,
        category: Category,
    ) -> Result<Option<u32>> {
        conn.query_row(
            "SELECT max(version) FROM secrets WHERE owner = ?1 AND category = ?2",
            params![owner.as_db(), category.as_str()],
            |r| r.get(0),
        )
        .map_err(|e| self.db_err(e))
    }

    fn min_version(&self, conn: &Connection, owner: &Owner, category: Category) -> Result<u32> {
        conn.query_row(
            "SELECT min_decryption_version FROM policies WHERE owner = ?1 AND category = ?2",
            params![owner.as_db(), category.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map(|v| v.unwrap_or(1))
        .map_err(|e| self.db_err(e))
    }

    fn unwrap_value(&self, conn: &Connection, info: &SecretInfo) -> Result<SecretBytes> {
        let (nonce, wrapped): (Option<Vec<u8>>, Option<Vec<u8>>) = conn
            .query_row(
                "SELECT nonce, wrapped FROM secrets WHERE owner = ?1 AND category = ?2 AND version = ?3",
                params![info.owner.as_db(), info.category.as_str(), info.version],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.db_err(e))?;
        let (Some(nonce), Some(wrapped)) = (nonce, wrapped) else {
            return Err(KeystoreError::NoValue {
                owner: info.owner.clone(),
                category: info.category,
                version: info.version,
                state: info.state,
            });
        };
        let aad = self.wrap.row_aad(&info.owner, info.category, info.version);
        self.wrap.open(&nonce, &aad, &wrapped).ok_or_else(|| KeystoreError::Integrity {
            owner: info.owner.clone(),
            category: info.category,
            version: info.version,
        })
    }

    /// Deactivates the active version of (owner, category), if any, inside a transaction.
    fn deactivate_current(
        &self,
        conn: &Connection,
        records: &mut Vec<AuditRecord>,
        now: i64,
        owner: &Owner,
        category: Category,
        except: Option<u32>,
    ) -> Result<()> {
        if let Some(prev) = self.active_info(conn, owner, category)?
            && Some(prev.version) != except
        {
            conn.execute(
                "UPDATE secrets SET state = 'deactivated', state_changed_at = ?4, \
                 deactivated_at = ?4 WHERE owner = ?1 AND category = ?2 AND version = ?3",
                params![owner.as_db(), category.as_str(), prev.version, now],
            )
            .map_err(|e| self.db_err(e))?;
            self.record(
                conn,
                records,
                now,
                NewRecord {
                    op: "state",
                    owner: Some(owner.as_db()),
                    category: Some(category.as_str()),
                    version: Some(prev.version),
                    from_state: Some("active"),
                    to_state: Some("deactivated"),
                    detail: Some("superseded by a new active version".into()),
                },
            )?;
        }
        Ok(())
    }

    fn insert_version(
        &self,
        owner: &Owner,
        category: Category,
        value: &SecretBytes,
        opts: &PutOptions,
        op: &str,
        require_active: bool,
    ) -> Result<SecretInfo> {
        if !matches!(opts.state, KeyState::Active | KeyState::PreActive) {
            return Err(KeystoreError::InvalidArgument(format!(
                "a new version starts active or pre-active, not {}",
                opts.state
            )));
        }
        self.write_tx(|conn, records| {
            let now = time::now();
            let max = self.max_version(conn, owner, category)?;
            if require_active && self.active_info(conn, owner, category)?.is_none() {
                return Err(match max {
                    None => KeystoreError::NoSuchSecret { owner: owner.clone(), category },
                    Some(_) => KeystoreError::NoActiveVersion { owner: owner.clone(), category },
                });
            }
            let version = max.unwrap_or(0).checked_add(1).ok_or_else(|| {
                KeystoreError::InvalidArgument("version numbers are exhausted".into())
            })?;
            let not_after = opts
                .ttl
                .or(category.default_ttl())
                .map(|d| now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
            let active = opts.state == KeyState::Active;
            if active {
                self.deactivate_current(conn, records, now, owner, category, None)?;
            }
            let aad = self.wrap.row_aad(owner, category, version);
            let (nonce, wrapped) = self.wrap.seal(&aad, value.expose());
            conn.execute(
                "INSERT INTO secrets (owner, category, version, state, nonce, wrapped, created_at, \
                 state_changed_at, activated_at, not_after, origin) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, 'here')",
                params![
                    owner.as_db(),
                    category.as_str(),
                    version,
                    opts.state.as_str(),
                    nonce.as_slice(),
                    wrapped,
                    now,
                    active.then_some(now),
                    not_after
                ],
            )
            .map_err(|e| self.db_err(e))?;
            self.record(
                conn,
                records,
                now,
                NewRecord {
                    op,
                    owner: Some(owner.as_db()),
                    category: Some(category.as_str()),
                    version: Some(version),
                    to_state: Some(opts.state.as_str()),
                    ..Default::default()
                },
            )?;
            self.load_info(conn, owner, category, version)
        })
    }

    /// Stores `value` as a new version of (owner, category). By default the new version is
    /// active and the previous active version becomes deactivated (it still decrypts).
    /// `redis-master-key` values are normalised to 32 bytes (see [`Category::normalize_value`]).
    pub fn put(
        &self,
        owner: &Owner,
        category: Category,
        value: SecretBytes,
        opts: &PutOptions,
    ) -> Result<SecretInfo> {
        self.check_place(owner, category, true)?;
        let value = category.normalize_value(value)?;
        self.insert_version(owner, category, &value, opts, "put", false)
    }

    /// Stores a fresh random 256-bit value as a new version (like [`Keystore::put`]).
    pub fn generate(
        &self,
        owner: &Owner,
        category: Category,
        opts: &PutOptions,
    ) -> Result<SecretInfo> {
        self.check_place(owner, category, true)?;
        let value = SecretBytes::random(GENERATED_SECRET_LEN);
        self.insert_version(owner, category, &value, opts, "generate", false)
    }

    /// Replaces the active version with a fresh random 256-bit one; fails if nothing is active
    /// ([`KeystoreError::NoSuchSecret`] / [`KeystoreError::NoActiveVersion`]).
    pub fn rotate(
        &self,
        owner: &Owner,
        category: Category,
        opts: &PutOptions,
    ) -> Result<SecretInfo> {
        self.check_place(owner, category, true)?;
        let value = SecretBytes::random(GENERATED_SECRET_LEN);
        self.insert_version(owner, category, &value, opts, "rotate", true)
    }

    /// **The secret to protect new data with**: the active version of (owner, category), with
    /// its value. Fails closed when there is no active version, the active version is past its
    /// `not_after`, or (local copies) the copy has expired. Audited as a read.
    ///
    /// Record `secret.version()` beside whatever you protect, and later get the same secret
    /// back with [`Keystore::resolve`].
    pub fn current(&self, owner: &Owner, category: Category) -> Result<Secret> {
        self.check_place(owner, category, false)?;
        self.write_tx(|conn, records| {
            let now = time::now();
            let info = match self.active_info(conn, owner, category)? {
                Some(i) => i,
                None => {
                    return Err(match self.max_version(conn, owner, category)? {
                        None => KeystoreError::NoSuchSecret { owner: owner.clone(), category },
                        Some(_) => {
                            KeystoreError::NoActiveVersion { owner: owner.clone(), category }
                        }
                    });
                }
            };
            self.check_usable(conn, &info, Operation::Protect, now)?;
            let value = self.unwrap_value(conn, &info)?;
            self.record_read(conn, records, now, &info, Operation::Protect)?;
            Ok(Secret { info, value })
        })
    }

    /// **The secret to process (decrypt) existing data with**: version `version` of
    /// (owner, category), with its value and state. Allowed for `active` and `deactivated`
    /// versions at or above the minimum decryption version; `pre-active`, `suspended`,
    /// `compromised` and `destroyed` versions fail closed ([`KeystoreError::WrongState`]),
    /// as do expired local copies. Audited as a read.
    pub fn resolve(&self, owner: &Owner, category: Category, version: u32) -> Result<Secret> {
        self.check_place(owner, category, false)?;
        self.write_tx(|conn, records| {
            let now = time::now();
            let info = self.load_info(conn, owner, category, version)?;
            self.check_usable(conn, &info, Operation::Process, now)?;
            let value = self.unwrap_value(conn, &info)?;
            self.record_read(conn, records, now, &info, Operation::Process)?;
            Ok(Secret { info, value })
        })
    }

    fn check_usable(
        &self,
        conn: &Connection,
        info: &SecretInfo,
        op: Operation,
        now: i64,
    ) -> Result<()> {
        if !info.state.permits(op) {
            return Err(KeystoreError::WrongState {
                owner: info.owner.clone(),
                category: info.category,
                version: info.version,
                state: info.state,
                op,
            });
        }
        let min = self.min_version(conn, &info.owner, info.category)?;
        if info.version < min {
            return Err(KeystoreError::BelowMinimum {
                owner: info.owner.clone(),
                category: info.category,
                version: info.version,
                min,
            });
        }
        if let Some(expires_at) = info.expires_at
            && now >= expires_at
        {
            return Err(KeystoreError::CopyExpired {
                owner: info.owner.clone(),
                category: info.category,
                version: info.version,
                expires_at,
            });
        }
        if op == Operation::Protect
            && let Some(not_after) = info.not_after
            && now >= not_after
        {
            return Err(KeystoreError::Expired {
                owner: info.owner.clone(),
                category: info.category,
                version: info.version,
                not_after,
            });
        }
        Ok(())
    }

    fn record_read(
        &self,
        conn: &Connection,
        records: &mut Vec<AuditRecord>,
        now: i64,
        info: &SecretInfo,
        op: Operation,
    ) -> Result<()> {
        self.record(
            conn,
            records,
            now,
            NewRecord {
                op: "read",
                owner: Some(info.owner.as_db()),
                category: Some(info.category.as_str()),
                version: Some(info.version),
                detail: Some(
                    match op {
                        Operation::Protect => "to protect new data",
                        Operation::Process => "to process protected data",
                    }
                    .into(),
                ),
                ..Default::default()
            },
        )
    }

    /// Metadata of the active version (no value is read, nothing is audited), or `None`.
    pub fn current_version(&self, owner: &Owner, category: Category) -> Result<Option<SecretInfo>> {
        self.active_info(&self.conn, owner, category)
    }

    /// Metadata of one version (no value is read).
    pub fn info(&self, owner: &Owner, category: Category, version: u32) -> Result<SecretInfo> {
        self.load_info(&self.conn, owner, category, version)
    }

    /// Metadata of every version, optionally filtered, ordered by owner, category, version.
    /// Never reads values.
    pub fn list(
        &self,
        owner: Option<&Owner>,
        category: Option<Category>,
    ) -> Result<Vec<SecretInfo>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {INFO_COLS} FROM secrets WHERE (?1 IS NULL OR owner = ?1) \
                 AND (?2 IS NULL OR category = ?2) ORDER BY owner, category, version"
            ))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map(
                params![owner.map(Owner::as_db), category.map(Category::as_str)],
                info_from_row,
            )
            .map_err(|e| self.db_err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.db_err(e))
    }

    /// Moves version `version` of (owner, category) to state `to` (see [`crate::state`] for the
    /// allowed transitions). Activating a version deactivates the previously active one.
    /// Destroying erases the wrapped value (SQLite `secure_delete`, then a WAL checkpoint).
    pub fn set_state(
        &self,
        owner: &Owner,
        category: Category,
        version: u32,
        to: KeyState,
    ) -> Result<SecretInfo> {
        self.check_place(owner, category, true)?;
        let info = self.write_tx(|conn, records| {
            let now = time::now();
            let info = self.load_info(conn, owner, category, version)?;
            info.state.check_transition(to).map_err(|reason| KeystoreError::Transition {
                owner: owner.clone(),
                category,
                version,
                from: info.state,
                to,
                reason,
            })?;
            if to == KeyState::Active {
                self.deactivate_current(conn, records, now, owner, category, Some(version))?;
            }
            conn.execute(
                "UPDATE secrets SET state = ?4, state_changed_at = ?5, \
                 activated_at = CASE WHEN ?4 = 'active' THEN coalesce(activated_at, ?5) ELSE activated_at END, \
                 deactivated_at = CASE WHEN ?4 = 'deactivated' THEN ?5 ELSE deactivated_at END, \
                 nonce = CASE WHEN ?4 = 'destroyed' THEN NULL ELSE nonce END, \
                 wrapped = CASE WHEN ?4 = 'destroyed' THEN NULL ELSE wrapped END \
                 WHERE owner = ?1 AND category = ?2 AND version = ?3",
                params![owner.as_db(), category.as_str(), version, to.as_str(), now],
            )
            .map_err(|e| self.db_err(e))?;
            self.record(conn, records, now, NewRecord {
                op: "state",
                owner: Some(owner.as_db()),
                category: Some(category.as_str()),
                version: Some(version),
                from_state: Some(info.state.as_str()),
                to_state: Some(to.as_str()),
                ..Default::default()
            })?;
            self.load_info(conn, owner, category, version)
        })?;
        if to == KeyState::Destroyed {
            // Push the erased page out of the WAL; best effort (a concurrent reader may hold it).
            let _ =
                self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        }
        Ok(info)
    }

    /// The minimum decryption version of (owner, category) (1 unless raised).
    pub fn min_decryption_version(&self, owner: &Owner, category: Category) -> Result<u32> {
        self.min_version(&self.conn, owner, category)
    }

    /// Sets the minimum decryption version: versions below it are refused for decryption
    /// (Vault Transit's `min_decryption_version`; reversible, unlike destroy). It must lie in
    /// 1..=the active version (or the latest version when none is active).
    pub fn set_min_decryption_version(
        &self,
        owner: &Owner,
        category: Category,
        min: u32,
    ) -> Result<()> {
        self.check_place(owner, category, true)?;
        self.write_tx(|conn, records| {
            let now = time::now();
            let Some(max) = self.max_version(conn, owner, category)? else {
                return Err(KeystoreError::NoSuchSecret { owner: owner.clone(), category });
            };
            let limit = self.active_info(conn, owner, category)?.map_or(max, |i| i.version);
            if min == 0 || min > limit {
                return Err(KeystoreError::InvalidArgument(format!(
                    "the minimum decryption version of {owner}/{category} must be between 1 and \
                     {limit}"
                )));
            }
            let old = self.min_version(conn, owner, category)?;
            conn.execute(
                "INSERT INTO policies (owner, category, min_decryption_version) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (owner, category) DO UPDATE SET min_decryption_version = excluded.min_decryption_version",
                params![owner.as_db(), category.as_str(), min],
            )
            .map_err(|e| self.db_err(e))?;
            self.record(conn, records, now, NewRecord {
                op: "min-decryption-version",
                owner: Some(owner.as_db()),
                category: Some(category.as_str()),
                detail: Some(format!("{old} -> {min}")),
                ..Default::default()
            })
        })
    }

    /// Inside a write transaction: fails with [`KeystoreError::Rekeyed`] if another process
    /// replaced the keystore key since this handle opened it (a value wrapped under the old key
    /// would be lost).
    fn check_key_unchanged(&self) -> Result<()> {
        let (nonce, check): (Vec<u8>, Vec<u8>) = self
            .conn
            .query_row("SELECT key_check_nonce, key_check FROM meta WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.db_err(e))?;
        if self.wrap.verify_key_check(&nonce, &check) {
            Ok(())
        } else {
            Err(KeystoreError::Rekeyed { path: self.path.clone() })
        }
    }

    /// **Root key rotation**: replaces the keystore key with a fresh random one and re-wraps
    /// every stored value under it, in one transaction, without any value leaving the process.
    /// The new key file is protected by `passphrase` (Argon2id, `params`) or, with `None`, by
    /// file permissions only. Returns the number of values re-wrapped. Audited as `rekey`.
    ///
    /// Crash safety: the new key file is written as `<key file>.new` (fsynced) while the
    /// database write lock is held, the rows and the key check are rewritten and committed,
    /// and only then is `<key file>.new` renamed over the key file. If the process dies between
    /// the commit and the rename, the next open finds that the old key no longer verifies,
    /// verifies `<key file>.new` instead and completes the rename. Other open handles notice
    /// the new key at their next write ([`KeystoreError::Rekeyed`]) and must reopen.
    pub fn rekey(
        &mut self,
        passphrase: Option<&SecretBytes>,
        params: Argon2Params,
    ) -> Result<usize> {
        use std::os::unix::fs::MetadataExt;
        if passphrase.is_some_and(SecretBytes::is_empty) {
            return Err(KeystoreError::InvalidArgument("the stash passphrase is empty".into()));
        }
        let new_key = Key32::random();
        let new_wrap = WrapKey::derive(&new_key, self.id);
        let bytes = KeyFile::encode(self.kind, self.id, &new_key, passphrase.map(|p| (p, params)))
            .map_err(|e| KeystoreError::InvalidArgument(e.to_string()))?;
        let pending = pending_key_path(&self.key_path);
        let md =
            std::fs::metadata(&self.key_path).map_err(|e| KeystoreError::io(&self.key_path, e))?;

        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.db_err(e))?;
        let result = (|| -> Result<(usize, AuditRecord)> {
            self.check_key_unchanged()?;
            // Holding the write lock: any `.new` left here is from a rekey that never committed.
            fsutil::replace_file_owned(&pending, &*bytes, 0o600, Some((md.uid(), md.gid())))?;
            let conn = &self.conn;
            let mut stmt = conn
                .prepare(&format!("SELECT {INFO_COLS} FROM secrets WHERE wrapped IS NOT NULL"))
                .map_err(|e| self.db_err(e))?;
            let infos = stmt
                .query_map([], info_from_row)
                .map_err(|e| self.db_err(e))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.db_err(e))?;
            drop(stmt);
            for info in &infos {
                let value = self.unwrap_value(conn, info)?;
                let aad = new_wrap.row_aad(&info.owner, info.category, info.version);
                let (nonce, wrapped) = new_wrap.seal(&aad, value.expose());
                conn.execute(
                    "UPDATE secrets SET nonce = ?4, wrapped = ?5 \
                     WHERE owner = ?1 AND category = ?2 AND version = ?3",
                    params![
                        info.owner.as_db(),
                        info.category.as_str(),
                        info.version,
                        nonce.as_slice(),
                        wrapped
                    ],
                )
                .map_err(|e| self.db_err(e))?;
            }
            let (nonce, check) = new_wrap.make_key_check();
            conn.execute(
                "UPDATE meta SET key_check_nonce = ?1, key_check = ?2 WHERE id = 1",
                params![nonce.as_slice(), check],
            )
            .map_err(|e| self.db_err(e))?;
            let rec = audit::insert(
                conn,
                time::now(),
                &self.actor,
                NewRecord {
                    op: "rekey",
                    detail: Some(format!(
                        "new keystore key; {} value(s) re-wrapped; key file protected by {}",
                        infos.len(),
                        if passphrase.is_some() { "a passphrase" } else { "file permissions only" }
                    )),
                    ..Default::default()
                },
            )
            .map_err(|e| self.db_err(e))?;
            Ok((infos.len(), rec))
        })();
        let (count, rec) = match result.and_then(|v| {
            self.conn.execute_batch("COMMIT").map_err(|e| self.db_err(e))?;
            Ok(v)
        }) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                let _ = std::fs::remove_file(&pending);
                return Err(e);
            }
        };
        // Committed: from here on only the new key opens the database.
        self.key = new_key;
        self.wrap = new_wrap;
        std::fs::rename(&pending, &self.key_path)
            .map_err(|e| KeystoreError::io(&self.key_path, e))?;
        fsutil::fsync_parent(&self.key_path);
        let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        audit::append_log(&self.audit_path, &[rec])
            .map_err(|source| KeystoreError::AuditLog { path: self.audit_path.clone(), source })?;
        Ok(count)
    }

    /// The key file beside the database (`.stash` for root, `.key` for local).
    pub fn key_file_path(&self) -> &Path {
        &self.key_path
    }

    /// Re-protects the key file: under `passphrase` through Argon2id with `params`, or, with
    /// `None`, by file permissions only. The key itself and the database do not change; the file
    /// is replaced atomically (temporary name, fsync, rename) with its owner and mode 0600
    /// kept. Audited as `key-file`.
    pub fn reprotect_key_file(
        &self,
        passphrase: Option<&SecretBytes>,
        params: Argon2Params,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if passphrase.is_some_and(SecretBytes::is_empty) {
            return Err(KeystoreError::InvalidArgument("the stash passphrase is empty".into()));
        }
        let bytes = KeyFile::encode(self.kind, self.id, &self.key, passphrase.map(|p| (p, params)))
            .map_err(|e| KeystoreError::InvalidArgument(e.to_string()))?;
        let md =
            std::fs::metadata(&self.key_path).map_err(|e| KeystoreError::io(&self.key_path, e))?;
        // Inside the write transaction: it re-verifies that no other process rotated the key
        // since this handle opened it (writing the old key back would lock everyone out).
        self.write_tx(|conn, records| {
            fsutil::replace_file_owned(&self.key_path, &*bytes, 0o600, Some((md.uid(), md.gid())))?;
            self.record(
                conn,
                records,
                time::now(),
                NewRecord {
                    op: "key-file",
                    detail: Some(match passphrase {
                        Some(_) => format!(
                            "key file re-protected by a passphrase (Argon2id m={} KiB, t={}, p={})",
                            params.m_cost_kib, params.t_cost, params.p_cost
                        ),
                        None => "key file re-protected by file permissions only".into(),
                    }),
                    ..Default::default()
                },
            )
        })
    }

    /// The most recent `limit` audit records, oldest first.
    pub fn audit_records(&self, limit: usize) -> Result<Vec<AuditRecord>> {
        audit::read(&self.conn, limit).map_err(|e| self.db_err(e))
    }

    /// Refreshes this local keystore from `root`: copies the owner's own secrets and the shared
    /// keys (every version, with its state and minimum decryption version), re-wrapped under
    /// this keystore's key, each copy expiring after `opts.copy_ttl`. Values are copied only
    /// for versions that may decrypt (active, deactivated at or above the minimum); others are
    /// copied as metadata so their state (suspended, compromised, ...) reaches the user. Copies
    /// that the root keystore no longer holds are removed; the user's own local secrets
    /// (`filepass`) are untouched. Each exported value is audited in the root keystore, the sync
    /// in this one.
    pub fn sync_from_root(&self, root: &Keystore, opts: &SyncOptions) -> Result<SyncReport> {
        let (owner, local_id) = self.local_identity()?;
        let export = root.export_for_local(&owner, local_id)?;
        self.import_from_root(export, opts)
    }

    /// The owner and id of this local keystore, for [`Keystore::export_for_local`].
    pub fn local_identity(&self) -> Result<(Owner, [u8; 16])> {
        if self.kind != KeystoreKind::Local {
            return Err(KeystoreError::WrongKind {
                path: self.path.clone(),
                expected: KeystoreKind::Local,
                found: self.kind,
            });
        }
        let owner = self.owner.clone().ok_or_else(|| KeystoreError::Corrupt {
            path: self.path.clone(),
            reason: "a local keystore without an owner".into(),
        })?;
        Ok((owner, self.id))
    }

    /// The first half of [`Keystore::sync_from_root`], on the root keystore: what `owner`'s local
    /// keystore `local_id` receives (each exported value is audited here). The two halves may run
    /// with different credentials: root reads its keystore as root and hands the export to a
    /// thread that writes the user's local keystore as the user.
    pub fn export_for_local(&self, owner: &Owner, local_id: [u8; 16]) -> Result<RootExport> {
        let root = self;
        if root.kind != KeystoreKind::Root {
            return Err(KeystoreError::WrongKind {
                path: root.path.clone(),
                expected: KeystoreKind::Root,
                found: root.kind,
            });
        }
        let owner = owner.clone();
        let local_id = hex::encode(local_id);
        type Policy = (String, String, u32);
        let (rows, policies): (Vec<(SecretInfo, Option<SecretBytes>)>, Vec<Policy>) = root
            .write_tx(|conn, records| {
                let now = time::now();
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {INFO_COLS} FROM secrets WHERE (owner = ?1 OR owner = '*') \
                         AND category <> 'filepass' ORDER BY owner, category, version"
                    ))
                    .map_err(|e| root.db_err(e))?;
                let infos = stmt
                    .query_map([owner.as_db()], info_from_row)
                    .map_err(|e| root.db_err(e))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| root.db_err(e))?;
                let mut out = Vec::with_capacity(infos.len());
                for info in infos {
                    let min = root.min_version(conn, &info.owner, info.category)?;
                    let usable = info.state.permits(Operation::Process)
                        && info.version >= min
                        && info.has_value;
                    let value = if usable {
                        let v = root.unwrap_value(conn, &info)?;
                        root.record(
                            conn,
                            records,
                            now,
                            NewRecord {
                                op: "export",
                                owner: Some(info.owner.as_db()),
                                category: Some(info.category.as_str()),
                                version: Some(info.version),
                                detail: Some(format!(
                                    "copied to local keystore {local_id} of {owner}"
                                )),
                                ..Default::default()
                            },
                        )?;
                        Some(v)
                    } else {
                        None
                    };
                    out.push((info, value));
                }
                let mut stmt = conn
                    .prepare(
                        "SELECT owner, category, min_decryption_version FROM policies \
                         WHERE (owner = ?1 OR owner = '*') AND category <> 'filepass'",
                    )
                    .map_err(|e| root.db_err(e))?;
                let pols = stmt
                    .query_map([owner.as_db()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(|e| root.db_err(e))?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|e| root.db_err(e))?;
                Ok((out, pols))
            })?;
        Ok(RootExport { root_id: root.id, owner, rows, policies })
    }

    /// The second half of [`Keystore::sync_from_root`], on the local keystore.
    pub fn import_from_root(&self, export: RootExport, opts: &SyncOptions) -> Result<SyncReport> {
        let (owner, _) = self.local_identity()?;
        if owner != export.owner {
            return Err(KeystoreError::OwnerMismatch {
                path: self.path.clone(),
                expected: export.owner.to_string(),
                found: owner.to_string(),
            });
        }
        let RootExport { root_id, rows, policies, .. } = export;
        self.write_tx(|conn, records| {
            let now = time::now();
            let expires_at = now
                .saturating_add(i64::try_from(opts.copy_ttl.as_secs()).unwrap_or(i64::MAX));
            conn.execute("DELETE FROM secrets WHERE origin = 'root'", [])
                .map_err(|e| self.db_err(e))?;
            conn.execute("DELETE FROM policies WHERE category <> 'filepass'", [])
                .map_err(|e| self.db_err(e))?;
            let mut report = SyncReport { with_value: 0, metadata_only: 0, expires_at };
            for (info, value) in &rows {
                let (nonce, wrapped) = match value {
                    Some(v) => {
                        let aad = self.wrap.row_aad(&info.owner, info.category, info.version);
                        let (n, w) = self.wrap.seal(&aad, v.expose());
                        report.with_value += 1;
                        (Some(n.to_vec()), Some(w))
                    }
                    None => {
                        report.metadata_only += 1;
                        (None, None)
                    }
                };
                conn.execute(
                    "INSERT INTO secrets (owner, category, version, state, nonce, wrapped, \
                     created_at, state_changed_at, activated_at, deactivated_at, not_after, \
                     expires_at, origin) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'root')",
                    params![
                        info.owner.as_db(),
                        info.category.as_str(),
                        info.version,
                        info.state.as_str(),
                        nonce,
                        wrapped,
                        info.created_at,
                        info.state_changed_at,
                        info.activated_at,
                        info.deactivated_at,
                        info.not_after,
                        expires_at
                    ],
                )
                .map_err(|e| self.db_err(e))?;
            }
            for (o, c, m) in &policies {
                conn.execute(
                    "INSERT INTO policies (owner, category, min_decryption_version) VALUES (?1, ?2, ?3)",
                    params![o, c, m],
                )
                .map_err(|e| self.db_err(e))?;
            }
            conn.execute(
                "UPDATE meta SET last_sync_at = ?1, source_keystore_id = ?2 WHERE id = 1",
                params![now, root_id.as_slice()],
            )
            .map_err(|e| self.db_err(e))?;
            self.record(conn, records, now, NewRecord {
                op: "sync",
                owner: Some(owner.as_db()),
                detail: Some(format!(
                    "from root keystore {}: {} with value, {} metadata only, copies expire at {}",
                    hex::encode(root_id),
                    report.with_value,
                    report.metadata_only,
                    time::rfc3339(expires_at)
                )),
                ..Default::default()
            })?;
            Ok(report)
        })
    }
}

/// Secrets and policies a root keystore exports to one user's local keystore
/// ([`Keystore::export_for_local`]); values stay in zeroizing memory, Debug shows none.
pub struct RootExport {
    root_id: [u8; 16],
    owner: Owner,
    rows: Vec<(SecretInfo, Option<SecretBytes>)>,
    policies: Vec<(String, String, u32)>,
}

impl std::fmt::Debug for RootExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootExport")
            .field("owner", &self.owner)
            .field("versions", &self.rows.len())
            .finish_non_exhaustive()
    }
}

fn wrap_id(wrap: &WrapKey) -> [u8; 16] {
    wrap.keystore_id()
}

fn map_db_err(path: &Path, e: rusqlite::Error) -> KeystoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => KeystoreError::Corrupt {
            path: path.to_owned(),
            reason: "not an SQLite database".into(),
        },
        Some(ErrorCode::DatabaseCorrupt) => {
            KeystoreError::Corrupt { path: path.to_owned(), reason: e.to_string() }
        }
        _ => KeystoreError::Database { path: path.to_owned(), source: e },
    }
}

/// Where an in-progress rekey writes the new key file: `<key file>.new`.
fn pending_key_path(key_path: &Path) -> PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// When the key check fails, a rekey may be the reason: one that committed but died before
/// renaming `<key file>.new` over the key file (completed here), or one that completed while
/// this process was opening (the key file changed since it was read). Returns the key that
/// verifies, if any.
fn key_after_rekey(
    key_path: &Path,
    read_before: &[u8],
    kind: KeystoreKind,
    id: [u8; 16],
    opts: &Options,
    check_nonce: &[u8],
    check: &[u8],
) -> Option<(Key32, WrapKey)> {
    let try_file = |path: &Path| -> Option<(Key32, WrapKey)> {
        if !fsutil::check_private_file(path).ok()? {
            return None;
        }
        let bytes = fsutil::read_private(path).ok()?;
        if path == key_path && bytes.as_slice() == read_before {
            return None;
        }
        let kf = KeyFile::parse(&bytes).ok()?;
        if kf.kind() != kind || kf.keystore_id() != id {
            return None;
        }
        let key = kf.unlock(opts.passphrase.as_ref()).ok()?;
        let wrap = WrapKey::derive(&key, id);
        wrap.verify_key_check(check_nonce, check).then_some((key, wrap))
    };
    let pending = pending_key_path(key_path);
    if let Some(found) = try_file(&pending) {
        // Another opener may have completed it first; the key is the same either way.
        let _ = std::fs::rename(&pending, key_path);
        fsutil::fsync_parent(key_path);
        return Some(found);
    }
    try_file(key_path)
}
