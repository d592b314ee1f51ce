//! `ferry keys`: the keystore command, askmscli-compatible where askmscli has the verb.
//!
//! ```text
//! ferry keys -u alice -s ssear            # value from stdin (never argv)
//! ferry keys -s redis-master-key          # shared key, value from stdin
//! ferry keys -s token-key --generate      # random 256-bit value
//! ferry keys -i                           # create the root keystore
//! ferry keys -i -u alice                  # create/refresh alice's local keystore
//! ferry keys --list [-u alice] [-s ssear] # metadata only, never values
//! ferry keys -u alice -H ssear            # versions of one secret (askmscli -H)
//! ferry keys -u alice -s ssear --rotate | --suspend | --deactivate | --destroy --version N
//! ferry keys --audit
//! ferry keys migrate --config FILE
//! ```
//! Exit codes and messages: `docs/KEYSTORE.md`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Subcommand};
use ferry_keystore::{
    Category, Home, KeyState, Keystore, KeystoreError, KeystoreKind, Options, Owner, PutOptions,
    SecretBytes, SecretInfo, SyncOptions, time,
};

use crate::error::CliError;

mod migrate;

/// Exit codes of `ferry keys` (documented in docs/KEYSTORE.md).
pub(crate) mod exit {
    use crate::exit::Exit;
    /// A keystore or its key file does not exist.
    pub(crate) const MISSING: Exit = Exit::KeysMissing;
    /// A keystore file has unsafe permissions, owner or type.
    pub(crate) const UNSAFE_FILE: Exit = Exit::KeysUnsafeFile;
    /// A keystore file, key file or row is corrupted or was tampered with.
    pub(crate) const CORRUPT: Exit = Exit::KeysCorrupt;
    /// Wrong key file or stash passphrase, or none given.
    pub(crate) const WRONG_KEY: Exit = Exit::KeysWrongKey;
    /// The secret's state (or expiry, or minimum version) forbids the operation.
    pub(crate) const WRONG_STATE: Exit = Exit::KeysWrongState;
    /// No such secret or version.
    pub(crate) const NOT_FOUND: Exit = Exit::KeysNotFound;
    /// Invalid input: category, user, value, argument, place.
    pub(crate) const INVALID: Exit = Exit::KeysInvalid;
    /// I/O or database error (retryable, e.g. the database stayed busy).
    pub(crate) const IO: Exit = Exit::KeysIo;
    /// `migrate`: the configuration file cannot be read, parsed or rewritten.
    pub(crate) const CONFIG: Exit = Exit::KeysConfig;
}

/// Manage secrets in the root and local keystores (askmscli-compatible).
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    group(ArgGroup::new("action").multiple(false).args([
        "init", "list", "history", "audit", "generate", "rotate", "activate", "suspend",
        "deactivate", "compromised", "destroy", "min_decryption_version",
        "set_stash_passphrase", "remove_stash_passphrase", "rekey",
    ])),
    after_help = "The secret value is read from stdin, never from the command line: \
                  printf %s \"$SECRET\" | ferry keys -u alice -s ssear"
)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    pub(crate) command: Option<KeysCommand>,

    /// The user whose secret or local keystore to act on.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    user: Option<String>,

    /// The secret category: ssear, redis-master-key, token-key, filepass. Alone, stores a new
    /// version whose value is read from stdin (one trailing newline is removed).
    #[arg(short = 's', long = "set-secret-by-category", value_name = "CATEGORY")]
    category: Option<String>,

    /// Initialise a keystore: without -u the root keystore; with -u USER that user's local
    /// keystore, created if needed and refreshed from the root keystore.
    #[arg(short = 'i', long = "init-keystore")]
    init: bool,

    /// List secrets (names, versions, states, dates; never values).
    #[arg(long)]
    list: bool,

    /// Show the versions of one category (askmscli -H).
    #[arg(short = 'H', long = "history", value_name = "CATEGORY")]
    history: Option<String>,

    /// Show the audit trail of the keystore.
    #[arg(long)]
    audit: bool,

    /// Store a random 256-bit value as a new version of -s CATEGORY.
    #[arg(long)]
    generate: bool,

    /// Replace the active version of -s CATEGORY with a random 256-bit value.
    #[arg(long)]
    rotate: bool,

    /// Activate --version N (the previously active version is deactivated).
    #[arg(long, requires = "version")]
    activate: bool,

    /// Suspend a version (default: the active one); it can be reactivated.
    #[arg(long)]
    suspend: bool,

    /// Deactivate a version (default: the active one): it decrypts but no longer encrypts.
    #[arg(long)]
    deactivate: bool,

    /// Mark a version (default: the active one) as compromised: it is never used again.
    #[arg(long)]
    compromised: bool,

    /// Destroy --version N (it must be deactivated, compromised or pre-active first).
    #[arg(long, requires = "version")]
    destroy: bool,

    /// The version a state change applies to.
    #[arg(long, value_name = "N")]
    version: Option<u32>,

    /// Refuse decryption with versions below N (reversible; Vault's min_decryption_version).
    #[arg(long, value_name = "N")]
    min_decryption_version: Option<u32>,

    /// Protect the root keystore's stash with a new passphrase, read from
    /// --new-stash-passphrase-file or FERRY_NEW_STASH_PASSPHRASE.
    #[arg(long)]
    set_stash_passphrase: bool,

    /// Remove the passphrase protection of the root keystore's stash (file permissions only
    /// from then on).
    #[arg(long)]
    remove_stash_passphrase: bool,

    /// Rotate the root keystore key: a new random key, every value re-wrapped under it, a new
    /// stash (protected like the old one, or by --new-stash-passphrase-file).
    #[arg(long)]
    rekey: bool,

    /// File holding the new passphrase for --set-stash-passphrase or --rekey (mode 0600).
    #[arg(long, value_name = "FILE")]
    new_stash_passphrase_file: Option<PathBuf>,

    /// Store the new version as pre-active (activate it later with --activate --version N).
    #[arg(long)]
    pre_active: bool,

    /// Validity of a new version for encryption (e.g. 24h, 7d); token-key defaults to 24h.
    #[arg(long, value_name = "DURATION")]
    ttl: Option<String>,

    /// How long local copies stay usable before the next refresh (default 24h).
    #[arg(long, value_name = "DURATION")]
    copy_ttl: Option<String>,

    /// --list / --audit / -H: read the user's local keystore instead of the root keystore.
    #[arg(long)]
    local: bool,

    /// --audit: how many records to show (most recent).
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,

    /// Machine-readable output (JSON) for --list, -H and --audit.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    paths: KeystorePaths,
}

/// Where the keystores are.
#[derive(Debug, Args)]
pub(crate) struct KeystorePaths {
    /// Root keystore database.
    #[arg(long, env = "FERRY_ROOT_KEYSTORE", value_name = "PATH",
          default_value = ferry_keystore::DEFAULT_ROOT_KEYSTORE)]
    root_keystore: PathBuf,

    /// Local keystore database (default: ~USER/.ferry/localkeystore.db).
    #[arg(long, env = "FERRY_LOCAL_KEYSTORE", value_name = "PATH")]
    local_keystore: Option<PathBuf>,

    /// The account the local keystore belongs to, when it is not the user's own: e.g. the
    /// account `ferry serve` runs as, for a transfer user's SSEAR secrets (with
    /// --local-keystore). Root creates and refreshes it with that account's credentials.
    #[arg(long, value_name = "ACCOUNT", requires = "local_keystore")]
    account: Option<String>,

    /// File holding the stash passphrase of the root keystore (mode 0600). The environment
    /// variable FERRY_STASH_PASSPHRASE is the alternative. With -i it protects a new stash.
    #[arg(long, value_name = "FILE")]
    stash_passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Move plaintext secrets from a server configuration file into the root keystore.
    Migrate(migrate::MigrateArgs),
}

/// Maps a keystore error to the user-facing message, hint and exit code.
pub(crate) fn keystore_error(e: KeystoreError, user: Option<&str>) -> CliError {
    use KeystoreError as E;
    let msg = e.to_string();
    let who = user.unwrap_or("USER");
    match &e {
        E::NotFound { kind: KeystoreKind::Root, .. } => CliError::new(exit::MISSING, msg).hint(
            "or store a first secret with `ferry keys -s CATEGORY`, or point --root-keystore / \
             FERRY_ROOT_KEYSTORE at the existing keystore",
        ),
        E::NotFound { kind: KeystoreKind::Local, path } => CliError::new(
            exit::MISSING,
            format!(
                "local keystore {} does not exist; create it with `ferry keys -i -u {who}`",
                path.display()
            ),
        ),
        E::KeyFileMissing { .. } => CliError::new(exit::MISSING, msg),
        E::UnsafePermissions { .. } => CliError::new(exit::UNSAFE_FILE, msg).hint(
            "keystore files must be readable and writable by their owner only, like ssh \
             private keys",
        ),
        E::WrongOwner { .. }
        | E::NotRegularFile { .. }
        | E::UnsafeDirectory { .. }
        | E::UnsafeParent { .. } => CliError::new(exit::UNSAFE_FILE, msg),
        E::Corrupt { .. } | E::CorruptKeyFile { .. } | E::Integrity { .. } => {
            CliError::new(exit::CORRUPT, msg)
        }
        E::WrongKey { .. } | E::WrongPassphrase { .. } => CliError::new(exit::WRONG_KEY, msg),
        E::Rekeyed { .. } => CliError::new(exit::IO, msg),
        E::PassphraseRequired { .. } => CliError::new(exit::WRONG_KEY, msg)
            .hint("set FERRY_STASH_PASSPHRASE or pass --stash-passphrase-file FILE"),
        E::WrongState { .. } | E::Transition { .. } | E::BelowMinimum { .. } | E::NoValue { .. } => {
            CliError::new(exit::WRONG_STATE, msg)
        }
        E::NoActiveVersion { owner, category } => CliError::new(exit::WRONG_STATE, msg).hint(
            format!("activate a version (`ferry keys {} -s {category} --activate --version N`) or generate a new one", user_flag(owner)),
        ),
        E::Expired { owner, category, .. } => CliError::new(exit::WRONG_STATE, msg)
            .hint(format!("`ferry keys {}-s {category} --rotate`", user_flag_sp(owner))),
        E::CopyExpired { owner, .. } => CliError::new(exit::WRONG_STATE, msg).hint(format!(
            "refresh it from the root keystore: `ferry keys -i -u {}`",
            match owner {
                Owner::User(u) => u.as_str(),
                Owner::Shared => who,
            }
        )),
        E::NoSuchSecret { owner, category } => CliError::new(exit::NOT_FOUND, msg).hint(format!(
            "store one with `ferry keys {}-s {category}` (value on stdin) or add --generate",
            user_flag_sp(owner)
        )),
        E::NoSuchVersion { owner, category, .. } => CliError::new(exit::NOT_FOUND, msg)
            .hint(format!("list the versions with `ferry keys {}-H {category}`", user_flag_sp(owner))),
        E::OwnerMismatch { .. }
        | E::WrongKind { .. }
        | E::AlreadyExists { .. }
        | E::UnknownCategory { .. }
        | E::InvalidOwner { .. }
        | E::InvalidValue { .. }
        | E::WrongPlace { .. }
        | E::InvalidArgument(_) => CliError::new(exit::INVALID, msg),
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            CliError::new(exit::UNSAFE_FILE, msg).hint(
                "run ferry as the keystore's owner (the root keystore belongs to root or the \
                 service account)",
            )
        }
        E::Database { .. } => CliError::new(exit::IO, msg)
            .hint("if another ferry process held the keystore for long, try again"),
        _ => CliError::new(exit::IO, msg),
    }
}

fn user_flag(owner: &Owner) -> String {
    match owner {
        Owner::User(u) => format!("-u {u}"),
        Owner::Shared => String::new(),
    }
}

fn user_flag_sp(owner: &Owner) -> String {
    match owner {
        Owner::User(u) => format!("-u {u} "),
        Owner::Shared => String::new(),
    }
}

pub(crate) use ferry_keystore::passwd;

/// The name of the account this process runs as.
pub(crate) fn current_user_name() -> String {
    let uid = ferry_keystore::euid();
    passwd()
        .into_iter()
        .find(|e| e.uid == uid)
        .map(|e| e.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid{uid}"))
}

/// Reads a passphrase file (it must be private, like the keystore; one trailing newline is
/// removed).
fn read_passphrase_file(file: &Path) -> Result<SecretBytes, CliError> {
    ferry_keystore::check_private_file(file).map_err(|e| keystore_error(e, None))?;
    let bytes = std::fs::read(file)
        .map_err(|e| CliError::new(exit::IO, format!("cannot read {}: {e}", file.display())))?;
    Ok(strip_newline(SecretBytes::new(bytes)))
}

/// A non-empty secret from the environment.
fn env_secret(name: &str) -> Option<SecretBytes> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(name).filter(|v| !v.is_empty()).map(|v| SecretBytes::new(v.into_vec()))
}

/// Reads the stash passphrase from --stash-passphrase-file or FERRY_STASH_PASSPHRASE.
fn stash_passphrase(paths: &KeystorePaths) -> Result<Option<SecretBytes>, CliError> {
    match &paths.stash_passphrase_file {
        Some(file) => read_passphrase_file(file).map(Some),
        None => Ok(env_secret("FERRY_STASH_PASSPHRASE")),
    }
}

fn strip_newline(v: SecretBytes) -> SecretBytes {
    let b = v.expose();
    let n = if b.ends_with(b"\r\n") {
        2
    } else if b.ends_with(b"\n") {
        1
    } else {
        0
    };
    if n == 0 { v } else { SecretBytes::from_slice(&b[..b.len() - n]) }
}

/// Reads a secret value from stdin (never from a terminal, where it would echo).
fn read_value_from_stdin() -> Result<SecretBytes, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::new(
            exit::INVALID,
            "refusing to read a secret from a terminal (it would be echoed and kept in the \
             scrollback)",
        )
        .hint("pipe it in: printf %s \"$SECRET\" | ferry keys ... ; or use --generate"));
    }
    let limit = ferry_keystore::MAX_SECRET_LEN + 3;
    // Allocated once at its final size, so no reallocation leaves a copy of the value behind.
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(limit + 1));
    let limit = limit as u64;
    stdin
        .lock()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::new(exit::IO, format!("cannot read the secret from stdin: {e}")))?;
    Ok(strip_newline(SecretBytes::from_slice(&buf)))
}

struct Ctx<'a> {
    args: &'a KeysArgs,
    user: Option<&'a str>,
}

/// The local keystore's path, and the user (uid, gid) whose credentials open it when ferry runs
/// as root for another user.
struct LocalTarget {
    path: PathBuf,
    as_user: Option<(u32, u32)>,
    home: Option<PathBuf>,
}

/// Runs `f` with the credentials of `user` (uid, gid; supplementary groups: just the gid) in a
/// thread of its own, or here when `user` is `None`. The thread's credentials are set for that
/// thread only (`setresuid` and friends as raw system calls) and dropped irrevocably (real,
/// effective and saved ids alike); the thread ends with `f`.
fn as_user<T: Send>(
    user: Option<(u32, u32)>,
    f: impl FnOnce() -> Result<T, CliError> + Send,
) -> Result<T, CliError> {
    let Some((uid, gid)) = user else { return f() };
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            use rustix::process::{Gid, Uid};
            use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
            let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
            let dropped = set_thread_groups(&[g])
                .and_then(|()| set_thread_res_gid(g, g, g))
                .and_then(|()| set_thread_res_uid(u, u, u));
            if let Err(e) = dropped {
                return Err(CliError::new(
                    exit::IO,
                    format!("cannot switch to uid {uid} to reach the user's keystore: {e}"),
                ));
            }
            if ferry_keystore::euid() != uid {
                return Err(CliError::new(exit::IO, format!("could not switch to uid {uid}")));
            }
            f()
        });
        worker.join().unwrap_or_else(|_| {
            Err(CliError::new(exit::IO, "the thread acting for the user panicked"))
        })
    })
}

impl Ctx<'_> {
    fn err(&self, e: KeystoreError) -> CliError {
        keystore_error(e, self.user)
    }

    fn options(&self) -> Result<Options, CliError> {
        let mut o = Options::new().actor("ferry keys");
        if let Some(p) = stash_passphrase(&self.args.paths)? {
            o = o.passphrase(p);
        }
        Ok(o)
    }

    fn root_path(&self) -> &Path {
        &self.args.paths.root_keystore
    }

    fn open_root(&self) -> Result<Keystore, CliError> {
        Keystore::open_root(self.root_path(), &self.options()?).map_err(|e| self.err(e))
    }

    fn open_or_create_root(&self) -> Result<Keystore, CliError> {
        Keystore::open_or_create_root(self.root_path(), &self.options()?).map_err(|e| self.err(e))
    }

    /// The local keystore's user: -u USER, else the user running ferry.
    fn local_user(&self) -> String {
        self.user.map(str::to_owned).unwrap_or_else(current_user_name)
    }

    /// Where the local keystore is, and whose credentials touch it.
    fn local_target(&self) -> Result<LocalTarget, CliError> {
        let user = self.local_user();
        let account = self.args.paths.account.as_deref().unwrap_or(&user);
        let entry = passwd().into_iter().find(|e| e.name == account);
        if entry.is_none() && self.args.paths.account.is_some() {
            return Err(CliError::new(
                exit::INVALID,
                format!("there is no account '{account}' in /etc/passwd"),
            )
            .hint("name the account the keystore belongs to (e.g. the one ferry serve runs as)"));
        }
        let as_user = match &entry {
            Some(e) if ferry_keystore::euid() == 0 && e.uid != 0 => Some((e.uid, e.gid)),
            _ => None,
        };
        let home = entry.as_ref().map(|e| e.home.clone());
        if let Some(p) = &self.args.paths.local_keystore {
            return Ok(LocalTarget { path: p.clone(), as_user, home });
        }
        match entry {
            Some(e) => Ok(LocalTarget {
                path: ferry_keystore::default_local_keystore(&e.home),
                as_user,
                home,
            }),
            None => Err(CliError::new(
                exit::INVALID,
                format!("cannot find the home directory of '{user}' in /etc/passwd"),
            )
            .hint("pass --local-keystore PATH (or set FERRY_LOCAL_KEYSTORE)")),
        }
    }

    /// Runs `f` on the local keystore (created first when `create`). When root acts for
    /// another user, the keystore is opened and used only in a thread that runs with that
    /// user's uid, gid and groups, so nothing in the user's directory is touched with root's
    /// rights: a link or FIFO the user planted there reaches only what the user could reach
    /// anyway, and every file created belongs to the user without a chown.
    fn with_local<T: Send>(
        &self,
        create: bool,
        f: impl FnOnce(&Keystore) -> Result<T, CliError> + Send,
    ) -> Result<T, CliError> {
        let t = self.local_target()?;
        let user = self.local_user();
        // The stash passphrase protects the root keystore only; local key files rely on the
        // user's file permissions (see docs/KEYSTORE.md).
        let mut opts = Options::new().actor("ferry keys");
        if let Some(h) = &t.home {
            opts = opts.home(h);
        }
        as_user(t.as_user, || {
            let ks = if create {
                Keystore::open_or_create_local(&t.path, &user, &opts)
            } else {
                Keystore::open_local(&t.path, &opts)
            };
            f(&ks.map_err(|e| self.err(e))?)
        })
    }

    /// Runs `f` on the keystore that holds `category`'s source of truth.
    fn with_home<T: Send>(
        &self,
        category: Category,
        create: bool,
        f: impl FnOnce(&Keystore) -> Result<T, CliError> + Send,
    ) -> Result<T, CliError> {
        match (category.home(), create) {
            (Home::Root, false) => f(&self.open_root()?),
            (Home::Root, true) => f(&self.open_or_create_root()?),
            (Home::Local, create) => self.with_local(create, f),
        }
    }

    fn owner_for(&self, category: Category) -> Result<Owner, CliError> {
        use ferry_keystore::Scope;
        match (category.scope(), self.user) {
            (Scope::Shared, None) => Ok(Owner::Shared),
            (Scope::Shared, Some(_)) => Err(CliError::new(
                exit::INVALID,
                format!("{category} is a shared secret; it belongs to no user"),
            )
            .hint(format!("drop -u: `ferry keys -s {category}`"))),
            (Scope::PerUser, Some(u)) => Owner::user(u).map_err(|e| self.err(e)),
            (Scope::PerUser, None) if category.home() == Home::Local => {
                Owner::user(&self.local_user()).map_err(|e| self.err(e))
            }
            (Scope::PerUser, None) => Err(CliError::new(
                exit::INVALID,
                format!("{category} secrets belong to one user; name the user with -u USER"),
            )),
        }
    }

    fn put_options(&self) -> Result<PutOptions, CliError> {
        let ttl = match &self.args.ttl {
            Some(t) => Some(time::parse_duration(t).map_err(|e| CliError::new(exit::INVALID, e))?),
            None => None,
        };
        let state = if self.args.pre_active { KeyState::PreActive } else { KeyState::Active };
        Ok(PutOptions { state, ttl })
    }

    fn sync_options(&self) -> Result<SyncOptions, CliError> {
        let mut o = SyncOptions::default();
        if let Some(t) = &self.args.copy_ttl {
            o.copy_ttl = time::parse_duration(t).map_err(|e| CliError::new(exit::INVALID, e))?;
        }
        Ok(o)
    }
}

fn parse_category(s: &str) -> Result<Category, CliError> {
    s.parse::<Category>().map_err(|e| keystore_error(e, None))
}

fn out(line: impl AsRef<str>) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    match writeln!(o, "{}", line.as_ref()) {
        // A closed pipe (`ferry keys --list | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::new(exit::IO, format!("cannot write to stdout: {e}"))),
        Ok(()) => Ok(()),
    }
}

fn opt_time(t: Option<i64>) -> String {
    t.map(time::rfc3339).unwrap_or_else(|| "-".into())
}

fn info_json(i: &SecretInfo) -> serde_json::Value {
    serde_json::json!({
        "owner": i.owner.as_db(),
        "category": i.category.as_str(),
        "version": i.version,
        "state": i.state.as_str(),
        "created_at": time::rfc3339(i.created_at),
        "state_changed_at": time::rfc3339(i.state_changed_at),
        "activated_at": i.activated_at.map(time::rfc3339),
        "deactivated_at": i.deactivated_at.map(time::rfc3339),
        "not_after": i.not_after.map(time::rfc3339),
        "copy_expires_at": i.expires_at.map(time::rfc3339),
        "has_value": i.has_value,
        "synced": i.synced,
    })
}

fn print_infos(infos: &[SecretInfo], json: bool) -> Result<(), CliError> {
    if json {
        let v: Vec<_> = infos.iter().map(info_json).collect();
        return out(serde_json::Value::Array(v).to_string());
    }
    if infos.is_empty() {
        return out("no records found");
    }
    out(format!(
        "{:<16} {:<17} {:>7}  {:<12} {:<20}  {:<20}  {:<20}",
        "OWNER", "CATEGORY", "VERSION", "STATE", "CREATED", "NOT AFTER", "COPY EXPIRES"
    ))?;
    for i in infos {
        out(format!(
            "{:<16} {:<17} {:>7}  {:<12} {:<20}  {:<20}  {:<20}",
            i.owner.to_string(),
            i.category.as_str(),
            format!("v{}", i.version),
            i.state.as_str(),
            time::rfc3339(i.created_at),
            opt_time(i.not_after),
            opt_time(i.expires_at),
        ))?;
    }
    Ok(())
}

fn describe(ks: &Keystore) -> String {
    format!("{} keystore {}", ks.kind(), ks.path().display())
}

/// Runs `ferry keys`.
pub(crate) fn run(args: KeysArgs) -> Result<(), CliError> {
    if let Some(KeysCommand::Migrate(m)) = &args.command {
        return migrate::run(m);
    }
    if let Some(u) = &args.user {
        Owner::user(u).map_err(|e| keystore_error(e, None))?;
    }
    let ctx = Ctx { args: &args, user: args.user.as_deref() };
    let category = args.category.as_deref().map(parse_category).transpose()?;

    if args.init {
        return init(&ctx);
    }
    if args.list || args.history.is_some() {
        let cat = match &args.history {
            Some(h) => Some(parse_category(h)?),
            None => category,
        };
        let local = args.local || cat.is_some_and(|c| c.home() == Home::Local);
        let owner = match (&args.history, cat) {
            (Some(_), Some(c)) => Some(ctx.owner_for(c)?),
            _ => args.user.as_deref().map(Owner::user).transpose().map_err(|e| ctx.err(e))?,
        };
        let list = |ks: &Keystore| ks.list(owner.as_ref(), cat).map_err(|e| ctx.err(e));
        let infos = if local { ctx.with_local(false, list)? } else { list(&ctx.open_root()?)? };
        if let (Some(_), Some(c), Some(o), true) = (&args.history, cat, &owner, infos.is_empty()) {
            return Err(ctx.err(KeystoreError::NoSuchSecret { owner: o.clone(), category: c }));
        }
        return print_infos(&infos, args.json);
    }
    if args.new_stash_passphrase_file.is_some() && !(args.set_stash_passphrase || args.rekey) {
        return Err(CliError::new(
            crate::exit::Exit::Usage,
            "--new-stash-passphrase-file goes with --set-stash-passphrase or --rekey",
        ));
    }
    if args.set_stash_passphrase || args.remove_stash_passphrase {
        return reprotect(&ctx);
    }
    if args.rekey {
        return rekey(&ctx);
    }
    if args.audit {
        let read = |ks: &Keystore| ks.audit_records(args.limit).map_err(|e| ctx.err(e));
        let records =
            if args.local { ctx.with_local(false, read)? } else { read(&ctx.open_root()?)? };
        for r in records {
            if args.json {
                out(serde_json::to_string(&r)
                    .map_err(|e| CliError::new(exit::IO, e.to_string()))?)?;
            } else {
                let owner = r.owner.as_deref().map(|o| if o == "*" { "shared" } else { o });
                let what = match (owner, &r.category, r.version) {
                    (Some(o), Some(c), Some(v)) => format!("{o}/{c} v{v}"),
                    (Some(o), Some(c), None) => format!("{o}/{c}"),
                    (Some(o), None, _) => o.to_owned(),
                    _ => "-".into(),
                };
                let change = match (&r.from_state, &r.to_state) {
                    (Some(a), Some(b)) => format!("{a} -> {b}"),
                    (None, Some(b)) => b.clone(),
                    _ => String::new(),
                };
                out(format!(
                    "{}  {:<8} {:<28} {:<24} {}  [{}]",
                    r.time,
                    r.op,
                    what,
                    change,
                    r.detail.as_deref().unwrap_or(""),
                    r.actor
                ))?;
            }
        }
        return Ok(());
    }

    let Some(category) = category else {
        return Err(CliError::new(
            crate::exit::Exit::Usage,
            "nothing to do: name a category with -s CATEGORY, or use -i, --list, -H or --audit",
        )
        .hint("see `ferry keys --help`"));
    };
    let owner = ctx.owner_for(category)?;
    let state_change = [
        (args.activate, KeyState::Active),
        (args.suspend, KeyState::Suspended),
        (args.deactivate, KeyState::Deactivated),
        (args.compromised, KeyState::Compromised),
        (args.destroy, KeyState::Destroyed),
    ]
    .into_iter()
    .find_map(|(on, s)| on.then_some(s));

    if let Some(to) = state_change {
        ctx.with_home(category, false, |ks| {
            let version = match args.version {
                Some(v) => v,
                None => match ks.current_version(&owner, category).map_err(|e| ctx.err(e))? {
                    Some(i) => i.version,
                    None => {
                        let err = if ks
                            .list(Some(&owner), Some(category))
                            .map_err(|e| ctx.err(e))?
                            .is_empty()
                        {
                            KeystoreError::NoSuchSecret { owner: owner.clone(), category }
                        } else {
                            KeystoreError::NoActiveVersion { owner: owner.clone(), category }
                        };
                        return Err(ctx.err(err).hint("name the version with --version N"));
                    }
                },
            };
            let info = ks.set_state(&owner, category, version, to).map_err(|e| ctx.err(e))?;
            out(format!("{}: now {} ({})", info.label(), info.state, describe(ks)))
        })?;
        return refresh_after_change(&ctx, &owner, category);
    }
    if let Some(min) = args.min_decryption_version {
        ctx.with_home(category, false, |ks| {
            ks.set_min_decryption_version(&owner, category, min).map_err(|e| ctx.err(e))?;
            out(format!(
                "{owner}/{category}: minimum decryption version is now {min} ({})",
                describe(ks)
            ))
        })?;
        return refresh_after_change(&ctx, &owner, category);
    }
    let put_opts = ctx.put_options()?;
    if args.rotate {
        ctx.with_home(category, false, |ks| {
            let i = ks.rotate(&owner, category, &put_opts).map_err(|e| ctx.err(e))?;
            out(format!(
                "rotated {owner}/{category}: new version {} is {} ({})",
                i.version,
                i.state,
                describe(ks)
            ))
        })?;
    } else if args.generate {
        ctx.with_home(category, true, |ks| {
            let i = ks.generate(&owner, category, &put_opts).map_err(|e| ctx.err(e))?;
            out(format!("generated {} ({}) in {}", i.label(), i.state, describe(ks)))
        })?;
    } else {
        let value = read_value_from_stdin()?;
        let value = category.normalize_value(value).map_err(|e| ctx.err(e))?;
        ctx.with_home(category, true, |ks| {
            let i = ks.put(&owner, category, value, &put_opts).map_err(|e| ctx.err(e))?;
            out(format!("stored {} ({}) in {}", i.label(), i.state, describe(ks)))
        })?;
    }
    refresh_after_change(&ctx, &owner, category)
}

/// After a change in the root keystore, refreshes the affected user's local keystore when it
/// exists (shared keys: only the one named by --local-keystore / FERRY_LOCAL_KEYSTORE). The
/// change itself is committed by then, so a failed refresh is a warning, not an error.
fn refresh_after_change(ctx: &Ctx<'_>, owner: &Owner, category: Category) -> Result<(), CliError> {
    if category.home() != Home::Root {
        return Ok(());
    }
    let target = match owner {
        Owner::User(_) => match ctx.local_target() {
            Ok(t) => t,
            Err(_) => return Ok(()),
        },
        Owner::Shared if ctx.args.paths.local_keystore.is_none() => return Ok(()),
        Owner::Shared => match ctx.local_target() {
            Ok(t) => t,
            Err(_) => return Ok(()),
        },
    };
    let path = target.path.clone();
    // Whether it exists is asked with the user's credentials too.
    if !as_user(target.as_user, || Ok(path.symlink_metadata().is_ok()))? {
        return Ok(());
    }
    let refresh = || -> Result<Option<String>, CliError> {
        let Some((who, id)) = ctx.with_local(false, |local| {
            let (o, id) = local.local_identity().map_err(|e| ctx.err(e))?;
            Ok((matches!(owner, Owner::Shared) || &o == owner).then_some((o, id)))
        })?
        else {
            return Ok(None);
        };
        let export = ctx.open_root()?.export_for_local(&who, id).map_err(|e| ctx.err(e))?;
        let sync = ctx.sync_options()?;
        ctx.with_local(false, |local| {
            let rep = local.import_from_root(export, &sync).map_err(|e| ctx.err(e))?;
            Ok(Some(format!(
                "refreshed {} ({} usable, {} metadata only; copies expire at {})",
                describe(local),
                rep.with_value,
                rep.metadata_only,
                time::rfc3339(rep.expires_at)
            )))
        })
    };
    match refresh() {
        Ok(Some(line)) => out(line),
        Ok(None) => Ok(()),
        Err(e) => {
            eprintln!(
                "ferry: warning: the change is committed, but refreshing the local keystore {} \
                 failed: {}",
                path.display(),
                e.message
            );
            let who = match owner {
                Owner::User(u) => u.as_str(),
                Owner::Shared => "USER",
            };
            eprintln!("ferry: hint: refresh it later with `ferry keys -i -u {who}`");
            Ok(())
        }
    }
}

/// `--set-stash-passphrase` / `--remove-stash-passphrase`.
fn reprotect(ctx: &Ctx<'_>) -> Result<(), CliError> {
    let new = if ctx.args.set_stash_passphrase {
        Some(new_stash_passphrase(ctx)?.ok_or_else(|| {
            CliError::new(exit::INVALID, "no new stash passphrase given")
                .hint("pass --new-stash-passphrase-file FILE or set FERRY_NEW_STASH_PASSPHRASE")
        })?)
    } else {
        None
    };
    if ctx.args.local {
        return Err(CliError::new(
            exit::INVALID,
            "a stash passphrase protects the root keystore only; local key files rely on the \
             user's file permissions",
        ));
    }
    let ks = ctx.open_root()?;
    ks.reprotect_key_file(new.as_ref(), ferry_keystore::Argon2Params::DEFAULT)
        .map_err(|e| ctx.err(e))?;
    out(format!(
        "{} of {} is now protected by {}",
        ks.key_file_path().display(),
        describe(&ks),
        if new.is_some() { "the new passphrase" } else { "file permissions only" }
    ))
}

/// The new stash passphrase, if one was given.
fn new_stash_passphrase(ctx: &Ctx<'_>) -> Result<Option<SecretBytes>, CliError> {
    match &ctx.args.new_stash_passphrase_file {
        Some(file) => read_passphrase_file(file).map(Some),
        None => Ok(env_secret("FERRY_NEW_STASH_PASSPHRASE")),
    }
}

/// `--rekey`: root key rotation.
fn rekey(ctx: &Ctx<'_>) -> Result<(), CliError> {
    if ctx.args.local {
        return Err(CliError::new(
            exit::INVALID,
            "--rekey rotates the root keystore key; a local keystore gets new copies with \
             `ferry keys -i -u USER`",
        ));
    }
    let mut ks = ctx.open_root()?;
    let stash = ks.key_file_path().to_owned();
    let protected = std::fs::read(&stash)
        .ok()
        .map(zeroize::Zeroizing::new)
        .and_then(|b| ferry_keystore::keyfile::KeyFile::parse(&b).ok())
        .is_some_and(|k| k.is_protected());
    let pass = match new_stash_passphrase(ctx)? {
        Some(p) => Some(p),
        None if protected => stash_passphrase(&ctx.args.paths)?,
        None => None,
    };
    let n =
        ks.rekey(pass.as_ref(), ferry_keystore::Argon2Params::DEFAULT).map_err(|e| ctx.err(e))?;
    out(format!(
        "re-keyed {}: {n} value(s) re-wrapped under a new key; new stash {} ({})",
        describe(&ks),
        stash.display(),
        if pass.is_some() {
            "protected by the stash passphrase"
        } else {
            "protected by file permissions only"
        }
    ))
}

fn init(ctx: &Ctx<'_>) -> Result<(), CliError> {
    match ctx.user {
        None => {
            let opts = ctx.options()?;
            match Keystore::create_root(ctx.root_path(), &opts) {
                Ok(ks) => out(format!(
                    "created {} (stash {}{})",
                    describe(&ks),
                    ferry_keystore::key_file_path(ks.path(), KeystoreKind::Root).display(),
                    if stash_passphrase(&ctx.args.paths)?.is_some() {
                        ", protected by the stash passphrase"
                    } else {
                        ", protected by file permissions only"
                    }
                )),
                Err(KeystoreError::AlreadyExists { .. }) => {
                    // Already there: open it to prove it is healthy (and finish a creation that
                    // was interrupted before the schema was written).
                    let ks = ctx.open_or_create_root()?;
                    out(format!("{} already exists; nothing to do", describe(&ks)))
                }
                Err(e) => Err(ctx.err(e)),
            }
        }
        Some(_) => {
            // Root's part as root, the user's part as the user (see `Ctx::with_local`).
            let root = ctx.open_root()?;
            let (owner, id) =
                ctx.with_local(true, |local| local.local_identity().map_err(|e| ctx.err(e)))?;
            let export = root.export_for_local(&owner, id).map_err(|e| ctx.err(e))?;
            let sync = ctx.sync_options()?;
            let root_name = describe(&root);
            ctx.with_local(false, |local| {
                let rep = local.import_from_root(export, &sync).map_err(|e| ctx.err(e))?;
                out(format!(
                    "initialised {} for {} from {root_name}: {} usable, {} metadata only; copies \
                     expire at {}",
                    describe(local),
                    ctx.local_user(),
                    rep.with_value,
                    rep.metadata_only,
                    time::rfc3339(rep.expires_at)
                ))
            })
        }
    }
}
