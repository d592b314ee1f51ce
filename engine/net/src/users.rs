//! The server's transfer users: each confined to a docroot, with the keys that may act as it,
//! what it may do (directions, transit ciphers) and the rate it is allowed. [`Users`] is the
//! [`Policy`] of `ferry serve`: one user from flags ([`Users::single`]) or many from a
//! configuration file.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_engine::crypto::CipherSuite;
use ferry_engine::io::docroot::Docroot;
use ferry_engine::io::sealed::{self, Sealed, SecretSource};
use ferry_engine::io::storage::{PlainFiles, Portable, Storage};
use ferry_engine::setup::Direction;

use crate::authorized_keys::AuthorizedKeys;
use crate::server::{Grant, Policy};

/// A parsed keys file and the metadata it was read with.
type Cached = (std::fs::Metadata, Arc<AuthorizedKeys>);

/// Where a user's keys come from.
#[derive(Debug)]
pub enum Keys {
    /// An OpenSSH `authorized_keys` file, read again whenever it changes.
    File {
        /// The file.
        path: PathBuf,
        /// The parsed file and the metadata it was read with.
        cache: Box<Mutex<Option<Cached>>>,
    },
    /// Lines given inline (in the configuration), parsed once.
    Inline(Arc<AuthorizedKeys>),
}

impl Keys {
    /// Keys read from `path` (when a client connects; see [`Keys::File`]).
    pub fn file(path: PathBuf) -> Self {
        Keys::File { path, cache: Box::new(Mutex::new(None)) }
    }

    /// The keys now.
    pub fn current(&self) -> Result<Arc<AuthorizedKeys>, String> {
        let (path, cache) = match self {
            Keys::Inline(k) => return Ok(k.clone()),
            Keys::File { path, cache } => (path, cache),
        };
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut cache = cache.lock().expect("keys lock");
        if let Some((m, k)) = cache.as_ref()
            && m.modified().ok() == meta.modified().ok()
            && m.len() == meta.len()
            && m.ino() == meta.ino()
        {
            return Ok(k.clone());
        }
        let keys = Arc::new(AuthorizedKeys::read(path)?);
        *cache = Some((meta, keys.clone()));
        Ok(keys)
    }
}

/// What a user may do, besides where ([`User::docroot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    /// Uploads allowed.
    pub upload: bool,
    /// Downloads allowed.
    pub download: bool,
    /// Transit ciphers allowed (on top of the server's rules).
    pub suites: Vec<CipherSuite>,
    /// The highest target rate of its sessions, bits/s (`None`: only the server's cap).
    pub rate_cap: Option<u64>,
    /// Uploads may only create names a Windows client can store
    /// ([`portable_name`](ferry_engine::io::storage::portable_name)).
    pub portable_names: bool,
    /// The overwrite policy: an upload may replace an existing file of its name (atomically,
    /// once verified); otherwise such a file is refused.
    pub overwrite: bool,
}

impl Default for Rights {
    /// Both directions, the ciphers that encrypt (not `none`), no rate cap of its own, never
    /// overwrite.
    fn default() -> Self {
        let suites = CipherSuite::ALL.into_iter().filter(|s| *s != CipherSuite::None).collect();
        Self {
            upload: true,
            download: true,
            suites,
            rate_cap: None,
            portable_names: false,
            overwrite: false,
        }
    }
}

impl Rights {
    /// Whether a session in `direction` with `suite` is allowed; the error says why not.
    pub fn permit(
        &self,
        user: &str,
        direction: Direction,
        suite: CipherSuite,
    ) -> Result<(), String> {
        let (allowed, what) = match direction {
            Direction::Upload => (self.upload, "uploads"),
            Direction::Download => (self.download, "downloads"),
        };
        if !allowed {
            return Err(format!("{what} are not allowed for user {user:?}"));
        }
        if !self.suites.contains(&suite) {
            let names: Vec<_> = self.suites.iter().map(|s| s.name()).collect();
            return Err(format!(
                "cipher {} is not allowed for user {user:?} (allowed: {})",
                suite.name(),
                names.join(", ")
            ));
        }
        Ok(())
    }
}

/// One transfer user.
#[derive(Debug)]
pub struct User {
    /// Its name (what clients write as `user@host`).
    pub name: String,
    /// The directory its paths are confined to.
    pub docroot: Arc<Docroot>,
    /// The keys that may act as it.
    pub keys: Keys,
    /// What it may do.
    pub rights: Rights,
    /// Where its SSEAR secret comes from when its uploads are encrypted at rest (`None`: files
    /// are stored as they arrive).
    pub ssear: Option<Arc<dyn SecretSource>>,
}

impl User {
    /// How its files are stored: names checked when it must use portable ones, sealed under
    /// its keystore secret when SSEAR is on.
    pub fn storage(&self) -> Arc<dyn Storage> {
        let plain: Arc<dyn Storage> = if self.rights.portable_names {
            Arc::new(Portable(PlainFiles))
        } else {
            Arc::new(PlainFiles)
        };
        match &self.ssear {
            Some(secrets) => Arc::new(Sealed::new(plain, self.name.clone(), secrets.clone())),
            None => plain,
        }
    }
}

/// A transfer user's SSEAR secrets in a local keystore of their own (`ferry keys -i -u USER
/// --account ACCOUNT --local-keystore PATH`, run by root, copies them from the root keystore),
/// which belongs to the account the server runs as: the daemon reads exactly the secrets of the
/// users it serves, and no secret is ever in its configuration.
#[derive(Debug, Clone)]
pub struct KeystoreSecrets {
    /// The local keystore database.
    pub path: PathBuf,
    /// The transfer user (the keystore's owner).
    pub user: String,
}

impl KeystoreSecrets {
    /// How to (re)create the keystore, for messages.
    pub fn sync_command(&self) -> String {
        format!(
            "as root: `ferry keys -i -u {} --account {} --local-keystore {}`",
            self.user,
            crate::users::account_name(),
            self.path.display()
        )
    }
}

/// The name of the account this process runs as (for messages).
pub fn account_name() -> String {
    let uid = ferry_keystore::euid();
    ferry_keystore::passwd()
        .into_iter()
        .find(|e| e.uid == uid)
        .map_or_else(|| uid.to_string(), |e| e.name)
}

impl SecretSource for KeystoreSecrets {
    fn open(&self) -> std::io::Result<Box<dyn ferry_keystore::KeyResolver>> {
        use ferry_keystore::{Keystore, KeystoreError, Options, Owner};
        let denied = |m: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, m);
        let opts = Options::new().actor("ferry serve");
        let ks = Keystore::open_local(&self.path, &opts).map_err(|e| match e {
            KeystoreError::NotFound { .. } => denied(format!(
                "the keystore {} of user {:?} does not exist; create it {}",
                self.path.display(),
                self.user,
                self.sync_command()
            )),
            e => denied(format!("user {:?}: {e}", self.user)),
        })?;
        if ks.owner() != Some(&Owner::user(&self.user).map_err(|e| denied(e.to_string()))?) {
            return Err(denied(format!(
                "the keystore {} does not belong to user {:?}; point its keystore at the user's own",
                self.path.display(),
                self.user
            )));
        }
        let fix = format!(
            "give it an active {c} secret in the root keystore (`ferry keys -u {u} -s {c} --generate`, or --activate) and copy it here {}",
            self.sync_command(),
            c = sealed::CATEGORY,
            u = self.user,
        );
        Ok(Box::new(WithFix { ks, fix }))
    }
}

/// The keystore, with the fix added to "no active version" (the upload refusal the server
/// logs names what the administrator does about it).
struct WithFix {
    ks: ferry_keystore::Keystore,
    fix: String,
}

impl ferry_keystore::KeyResolver for WithFix {
    fn resolve(
        &self,
        owner: &str,
        category: &str,
        version: u32,
    ) -> Result<ferry_keystore::ResolvedKey, ferry_keystore::ResolveError> {
        ferry_keystore::KeyResolver::resolve(&self.ks, owner, category, version)
    }

    fn active_version(
        &self,
        owner: &str,
        category: &str,
    ) -> Result<u32, ferry_keystore::ResolveError> {
        ferry_keystore::KeyResolver::active_version(&self.ks, owner, category)
            .map_err(|e| ferry_keystore::ResolveError::Backend(format!("{e}; {}", self.fix)))
    }
}

/// The server's users, and the one a client gets when it names none.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    default: Option<String>,
}

impl Users {
    /// `users` by name; `default` (one of them) serves clients that name no user. Refuses two
    /// users of one name and a default that is not among them.
    pub fn new(users: Vec<User>, default: Option<String>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for u in users {
            let name = u.name.clone();
            if by_name.insert(name.clone(), Arc::new(u)).is_some() {
                return Err(format!("user {name:?} is defined twice"));
            }
        }
        if let Some(d) = &default
            && !by_name.contains_key(d)
        {
            return Err(format!("the default user {d:?} is not one of the users"));
        }
        Ok(Self { by_name, default })
    }

    /// The simple case: one user, `docroot`, the keys of `authorized_keys`, every right but
    /// the cipher `none`; clients that name no user get it.
    pub fn single(
        name: impl Into<String>,
        docroot: Arc<Docroot>,
        authorized_keys: PathBuf,
    ) -> Self {
        let name = name.into();
        let user = User {
            name: name.clone(),
            docroot,
            keys: Keys::file(authorized_keys),
            rights: Rights { suites: CipherSuite::ALL.to_vec(), ..Rights::default() },
            ssear: None,
        };
        Self::new(vec![user], Some(name)).expect("one user")
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// Every user.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<User>> {
        self.by_name.values()
    }

    /// Every user's docroot (for sweeping stale partial files).
    pub fn docroots(&self) -> Vec<Arc<Docroot>> {
        self.by_name.values().map(|u| u.docroot.clone()).collect()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl Policy for Users {
    fn authorize(&self, user: &str, key: &[u8; 32], peer: IpAddr) -> Result<Grant, String> {
        let name = match (user, &self.default) {
            ("", Some(d)) => d.as_str(),
            ("", None) => return Err("the client named no user and there is no default".into()),
            (u, _) => u,
        };
        let Some(u) = self.by_name.get(name) else {
            return Err(format!("no transfer user {name:?} on this server"));
        };
        let keys = u.keys.current()?;
        keys.check(key, peer, ferry_keystore::time::now())
            .map_err(|d| format!("user {name:?}: {d}"))?;
        Ok(Grant {
            user: u.name.clone(),
            docroot: u.docroot.clone(),
            storage: u.storage(),
            rights: u.rights.clone(),
        })
    }
}
