//! `ferry serve --config FILE`: the daemon's configuration (TOML), documented in
//! `docs/examples/ferry-serve.toml`. Reading it checks everything a running server would trip
//! over later (unknown keys, bad values, unsafe permissions, missing docroots, keys files with
//! no usable key, secrets in clear) and says where (file, line) and what to do.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::crypto::CipherSuite;
use ferry_engine::io::docroot::Docroot;
use ferry_engine::io::sealed::SecretSource;
use ferry_net::authorized_keys::AuthorizedKeys;
use ferry_net::limits::{AuthFailures, PostAuth, PreAuth};
use ferry_net::users::{Keys, KeystoreSecrets, Rights, User, Users};
use serde::Deserialize;

use super::account::Account;
use super::audit::AuditOptions;
use toml::Spanned;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Spanned<String>>,
    run_as: Option<Spanned<String>>,
    state_dir: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    default_user: Option<Spanned<String>>,
    #[serde(default)]
    limits: LimitsTable,
    audit: Option<AuditTable>,
    #[serde(default)]
    defaults: RightsTable,
    #[serde(default, rename = "user")]
    users: Vec<UserTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditTable {
    path: PathBuf,
    max_bytes: Option<u64>,
    keep: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    setup_timeout: Option<u64>,
    max_setup: Option<usize>,
    max_setup_per_source: Option<usize>,
    retry_above: Option<usize>,
    stream_window: Option<u32>,
    max_sessions: Option<usize>,
    max_sessions_per_key: Option<usize>,
    max_sessions_per_user: Option<usize>,
    max_sessions_per_source: Option<usize>,
    max_files: Option<u32>,
    max_open_files: Option<usize>,
    max_manifest_bytes: Option<u64>,
    max_auth_failures: Option<u32>,
    auth_failure_window: Option<u64>,
    lockout: Option<u64>,
}

/// What a user may do; `[defaults]` and each `[[user]]` (which overrides the defaults).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RightsTable {
    directions: Option<Spanned<Vec<String>>>,
    rate_cap: Option<Spanned<String>>,
    ciphers: Option<Spanned<Vec<String>>>,
    file_names: Option<Spanned<String>>,
    ssear: Option<Spanned<bool>>,
    overwrite: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserTable {
    name: Spanned<String>,
    docroot: Spanned<PathBuf>,
    authorized_keys: Option<Spanned<PathBuf>>,
    keys: Option<Spanned<Vec<String>>>,
    directions: Option<Spanned<Vec<String>>>,
    rate_cap: Option<Spanned<String>>,
    ciphers: Option<Spanned<Vec<String>>>,
    file_names: Option<Spanned<String>>,
    ssear: Option<Spanned<bool>>,
    overwrite: Option<Spanned<String>>,
    keystore: Option<Spanned<PathBuf>>,
}

impl UserTable {
    /// Its own rights entries (the rest come from `[defaults]`).
    fn rights(&self) -> RightsTable {
        RightsTable {
            directions: self.directions.clone(),
            rate_cap: self.rate_cap.clone(),
            ciphers: self.ciphers.clone(),
            file_names: self.file_names.clone(),
            ssear: self.ssear.clone(),
            overwrite: self.overwrite.clone(),
        }
    }
}

/// A configuration ready to serve.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) listen: Option<SocketAddr>,
    /// The account to run as after binding (required when started as root).
    pub(crate) run_as: Option<Account>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) admin_socket: Option<PathBuf>,
    pub(crate) pre: PreAuth,
    pub(crate) post: PostAuth,
    pub(crate) users: Users,
    pub(crate) audit: Option<AuditOptions>,
    /// Names of the users that came with warnings (refused lines of their keys), and why.
    pub(crate) warnings: Vec<String>,
}

/// Why a configuration cannot be used: where, what, and how to fix it.
#[derive(Debug)]
pub(crate) struct ConfigError {
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl ConfigError {
    fn new(message: String, hint: impl Into<String>) -> Self {
        Self { message, hint: hint.into() }
    }
}

/// Reads and checks `path`.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_private(path)?;
    let at = |span: std::ops::Range<usize>| format!("{}:{}", path.display(), line_of(&text, span));
    refuse_secrets(path, &text)?;
    let file: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(String::new(), |s| format!(":{}", line_of(&text, s)));
        ConfigError::new(
            format!("{}{line}: {}", path.display(), e.message().trim_end()),
            "fix the line named (docs/examples/ferry-serve.toml lists every key)",
        )
    })?;
    let listen = match &file.listen {
        None => None,
        Some(l) => Some(l.get_ref().parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                format!("{}: listen {:?} is not an address", at(l.span()), l.get_ref()),
                "write HOST:PORT with a numeric host, e.g. \"0.0.0.0:33001\"",
            )
        })?),
    };
    let run_as = match &file.run_as {
        None => None,
        Some(a) => Some(super::account::lookup(a.get_ref()).map_err(|e| {
            ConfigError::new(
                format!("{}: run_as: {e}", at(a.span())),
                "create the account (e.g. useradd --system ferry) or name an existing one",
            )
        })?),
    };
    let serving_uid = run_as.as_ref().map_or(rustix::process::geteuid().as_raw(), |a| a.uid);
    let keystores = file
        .state_dir
        .clone()
        .unwrap_or_else(|| super::serve::default_state_dir(run_as.as_ref()))
        .join("keystores");
    let (pre, post) = limits(&file.limits);
    let mut warnings = Vec::new();
    let mut users = Vec::new();
    if file.users.is_empty() {
        return Err(ConfigError::new(
            format!("{}: no [[user]] entries", path.display()),
            "add at least one [[user]] with a name, a docroot and its keys",
        ));
    }
    let docroots: Vec<PathBuf> =
        file.users.iter().filter_map(|u| u.docroot.get_ref().canonicalize().ok()).collect();
    let ctx = UserCtx {
        defaults: &file.defaults,
        at: &at,
        serving_uid,
        keystores: &keystores,
        docroots: &docroots,
    };
    let mut left_out = None;
    for u in &file.users {
        match user(u, &ctx, &mut warnings)? {
            Ok(user) => users.push(user),
            // A user whose docroot is unusable is left out; the others are served.
            Err(e) => {
                warnings
                    .push(format!("{} (the user is left out; the others are served)", e.message));
                left_out.get_or_insert(e);
            }
        }
    }
    if users.is_empty()
        && let Some(e) = left_out
    {
        return Err(e);
    }
    let default = file.default_user.as_ref().map(|d| d.get_ref().clone());
    let users = Users::new(users, default).map_err(|e| {
        let span = file.default_user.as_ref().map_or(0..0, |d| d.span());
        ConfigError::new(format!("{}: {e}", at(span)), "give each [[user]] its own name")
    })?;
    let audit = file.audit.as_ref().map(|a| AuditOptions {
        path: a.path.clone(),
        max_bytes: a.max_bytes.unwrap_or(super::serve::DEFAULT_AUDIT_BYTES).max(4096),
        keep: a.keep.unwrap_or(super::serve::DEFAULT_AUDIT_KEEP),
    });
    let (state_dir, admin_socket) = (file.state_dir.clone(), file.admin_socket.clone());
    Ok(Config { listen, run_as, state_dir, admin_socket, pre, post, users, audit, warnings })
}

/// The file's text, if only its owner (this account or root) may change it.
fn read_private(path: &Path) -> Result<String, ConfigError> {
    let io = |e: std::io::Error| {
        ConfigError::new(
            format!("cannot read the configuration {}: {e}", path.display()),
            "pass an existing TOML file with --config",
        )
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let me = rustix::process::geteuid().as_raw();
    if meta.mode() & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
        return Err(ConfigError::new(
            format!(
                "the configuration {} can be changed by others (mode {:o}, owner uid {})",
                path.display(),
                meta.mode() & 0o7777,
                meta.uid()
            ),
            format!(
                "it decides who may read and write which files: chmod go-w {} and make it \
                 belong to this account or root",
                path.display()
            ),
        ));
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Secrets belong in the keystore, never in the configuration.
fn refuse_secrets(path: &Path, text: &str) -> Result<(), ConfigError> {
    for (i, line) in text.lines().enumerate() {
        let key = line.trim_start().split(['=', ' ', '\t']).next().unwrap_or("");
        if matches!(key, "content_protection_secret" | "secret" | "password" | "passphrase") {
            return Err(ConfigError::new(
                format!("{}:{}: {key} holds a secret in clear", path.display(), i + 1),
                "move it into the keystore with `ferry keys migrate --config FILE` (it stores the \
                 secret wrapped and removes it from the file), then start again",
            ));
        }
    }
    Ok(())
}

fn line_of(text: &str, span: std::ops::Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

fn limits(l: &LimitsTable) -> (PreAuth, PostAuth) {
    let (p, q, a) = (PreAuth::default(), PostAuth::default(), AuthFailures::default());
    let pre = PreAuth {
        setup_timeout: l.setup_timeout.map_or(p.setup_timeout, |s| Duration::from_secs(s.max(1))),
        max_connections: l.max_setup.unwrap_or(p.max_connections).max(1),
        max_per_source: l.max_setup_per_source.unwrap_or(p.max_per_source).max(1),
        retry_above: l.retry_above.unwrap_or(p.retry_above),
        stream_window: l.stream_window.unwrap_or(p.stream_window).clamp(16 * 1024, 16 << 20),
        auth_failures: AuthFailures {
            max_failures: l.max_auth_failures.unwrap_or(a.max_failures).max(1),
            window: l.auth_failure_window.map_or(a.window, |s| Duration::from_secs(s.max(1))),
            lockout: l.lockout.map_or(a.lockout, Duration::from_secs),
            ..a
        },
    };
    let post = PostAuth {
        max_sessions: l.max_sessions.unwrap_or(q.max_sessions).max(1),
        max_sessions_per_key: l.max_sessions_per_key.unwrap_or(q.max_sessions_per_key).max(1),
        max_sessions_per_user: l.max_sessions_per_user.unwrap_or(q.max_sessions_per_user).max(1),
        max_sessions_per_source: l
            .max_sessions_per_source
            .unwrap_or(q.max_sessions_per_source)
            .max(1),
        max_files: l.max_files.unwrap_or(q.max_files).max(1),
        max_open_files: l.max_open_files.unwrap_or(q.max_open_files).max(1),
        max_manifest_bytes: l.max_manifest_bytes.unwrap_or(q.max_manifest_bytes).max(1),
    };
    (pre, post)
}

/// What every `[[user]]` is checked against.
struct UserCtx<'a> {
    defaults: &'a RightsTable,
    at: &'a dyn Fn(std::ops::Range<usize>) -> String,
    /// The uid the server serves as (its `run_as` account, else this process's).
    serving_uid: u32,
    /// Where SSEAR users' keystores are unless their entry names one.
    keystores: &'a Path,
    /// Every user's docroot, canonical (no keystore may lie beneath one).
    docroots: &'a [PathBuf],
}

/// One `[[user]]`, checked: its name, its docroot (opened now; an unusable one leaves the user
/// out: the inner error), its keys (read now: at least one usable), its rights over the
/// defaults, its SSEAR keystore.
fn user(
    u: &UserTable,
    ctx: &UserCtx<'_>,
    warnings: &mut Vec<String>,
) -> Result<Result<User, ConfigError>, ConfigError> {
    let at = ctx.at;
    let name = u.name.get_ref().clone();
    ferry_keys::check_user_name(&name).map_err(|e| {
        ConfigError::new(format!("{}: user name {name:?}: {e}", at(u.name.span())), "rename it")
    })?;
    let rights = rights(&name, &u.rights(), ctx.defaults, at)?;
    let docroot = match docroot(u, &name, &rights, ctx) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let keys = match (&u.authorized_keys, &u.keys) {
        (Some(file), None) => {
            let parsed = AuthorizedKeys::read(file.get_ref()).map_err(|e| {
                let m = format!("{}: user {name:?}: authorized_keys: {e}", at(file.span()));
                ConfigError::new(m, "point authorized_keys at a readable OpenSSH file")
            })?;
            usable(&name, &parsed, at(file.span()), warnings)?;
            Keys::file(file.get_ref().clone())
        }
        (None, Some(lines)) => {
            let parsed = AuthorizedKeys::parse(&lines.get_ref().join("\n")).map_err(|e| {
                let m = format!("{}: user {name:?}: keys: {e}", at(lines.span()));
                ConfigError::new(m, "write each key as an OpenSSH line, \"ssh-ed25519 AAAA...\"")
            })?;
            usable(&name, &parsed, at(lines.span()), warnings)?;
            Keys::Inline(Arc::new(parsed))
        }
        _ => {
            return Err(ConfigError::new(
                format!(
                    "{}: user {name:?} needs exactly one of authorized_keys and keys",
                    at(u.name.span())
                ),
                "give authorized_keys = \"FILE\" or keys = [\"ssh-ed25519 ...\"]",
            ));
        }
    };
    let ssear = u.ssear.as_ref().or(ctx.defaults.ssear.as_ref()).is_some_and(|s| *s.get_ref());
    let ssear = if ssear {
        let path = u
            .keystore
            .as_ref()
            .map_or_else(|| ctx.keystores.join(format!("{name}.db")), |k| k.get_ref().clone());
        let parent = path.parent().unwrap_or(Path::new("/"));
        let dir = parent.canonicalize().unwrap_or_else(|_| parent.to_owned());
        if ctx.docroots.iter().any(|d| dir.starts_with(d)) {
            let span = u.keystore.as_ref().map_or(u.name.span(), |k| k.span());
            return Err(ConfigError::new(
                format!(
                    "{}: user {name:?}: its keystore {} lies inside a docroot",
                    at(span),
                    path.display()
                ),
                "keep keystores out of every docroot (clients could download or plant one): e.g. state_dir/keystores",
            ));
        }
        let secrets = KeystoreSecrets { path, user: name.clone() };
        if !secrets.path.exists() {
            warnings.push(format!(
                "{}: user {name:?}: SSEAR is on and its keystore {} does not exist yet, so its \
                 uploads are refused until it does; create it {}",
                at(u.name.span()),
                secrets.path.display(),
                secrets.sync_command()
            ));
        }
        Some(Arc::new(secrets) as Arc<dyn SecretSource>)
    } else if u.keystore.is_some() {
        let k = u.keystore.as_ref().expect("checked");
        return Err(ConfigError::new(
            format!("{}: user {name:?}: keystore is set but ssear is off", at(k.span())),
            "add ssear = true to encrypt its files at rest, or remove keystore",
        ));
    } else {
        None
    };
    Ok(Ok(User { name, docroot: Arc::new(docroot), keys, rights, ssear }))
}

/// The user's docroot, opened, if it is safe: a directory no one but its owner may change,
/// and, for a user who may upload, owned by the account the server serves as.
fn docroot(
    u: &UserTable,
    name: &str,
    rights: &Rights,
    ctx: &UserCtx<'_>,
) -> Result<Docroot, ConfigError> {
    let at = (ctx.at)(u.docroot.span());
    let root = u.docroot.get_ref();
    let docroot = Docroot::open(root).map_err(|e| {
        ConfigError::new(
            format!("{at}: user {name:?}: docroot {e}"),
            "create the directory (owned by the account the server runs as) or fix the path",
        )
    })?;
    // The directory kept open, not whatever the path names by now.
    let meta = ferry_engine::io::docroot::fd_meta(docroot.as_dir().as_fd()).map_err(|e| {
        ConfigError::new(
            format!("{at}: user {name:?}: docroot {}: {e}", root.display()),
            "fix the path",
        )
    })?;
    let mode = meta.mode;
    if mode & 0o022 != 0 {
        return Err(ConfigError::new(
            format!(
                "{at}: user {name:?}: docroot {} can be changed by others (mode {mode:o})",
                root.display()
            ),
            format!(
                "others could plant files and links among the user's: chmod go-w {}",
                root.display()
            ),
        ));
    }
    if rights.upload && meta.uid != ctx.serving_uid {
        return Err(ConfigError::new(
            format!(
                "{at}: user {name:?}: docroot {} belongs to uid {}, not to uid {}, the account the server serves as, so uploads could not be stored",
                root.display(),
                meta.uid,
                ctx.serving_uid
            ),
            "chown it to that account, or make the user download-only (directions = [\"download\"])",
        ));
    }
    Ok(docroot)
}

fn usable(
    name: &str,
    keys: &AuthorizedKeys,
    at: String,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for r in &keys.refused {
        warnings.push(format!("{at}: user {name:?}: key line {} refused: {}", r.line, r.reason));
    }
    if keys.keys.is_empty() {
        return Err(ConfigError::new(
            format!("{at}: user {name:?} has no usable ssh-ed25519 key"),
            "add a client's public key (the .pub file `ferry keygen` wrote)",
        ));
    }
    Ok(())
}

/// A user's rights: its own entries, else the defaults, else [`Rights::default`].
fn rights(
    name: &str,
    own: &RightsTable,
    defaults: &RightsTable,
    at: &dyn Fn(std::ops::Range<usize>) -> String,
) -> Result<Rights, ConfigError> {
    let mut r = Rights::default();
    if let Some(d) = own.directions.as_ref().or(defaults.directions.as_ref()) {
        let (mut up, mut down) = (false, false);
        for v in d.get_ref() {
            match v.as_str() {
                "upload" => up = true,
                "download" => down = true,
                other => {
                    return Err(ConfigError::new(
                        format!("{}: user {name:?}: unknown direction {other:?}", at(d.span())),
                        "directions are \"upload\" and \"download\"",
                    ));
                }
            }
        }
        (r.upload, r.download) = (up, down);
    }
    if let Some(c) = own.rate_cap.as_ref().or(defaults.rate_cap.as_ref()) {
        let cap = super::parse_rate(c.get_ref()).map_err(|e| {
            ConfigError::new(
                format!("{}: user {name:?}: rate_cap {e}", at(c.span())),
                "e.g. \"500m\"",
            )
        })?;
        r.rate_cap = Some(cap.max(1));
    }
    if let Some(c) = own.ciphers.as_ref().or(defaults.ciphers.as_ref()) {
        let mut suites = Vec::new();
        for v in c.get_ref() {
            let s = CipherSuite::ALL.into_iter().find(|s| s.name() == v).ok_or_else(|| {
                ConfigError::new(
                    format!("{}: user {name:?}: unknown cipher {v:?}", at(c.span())),
                    "ciphers are \"aes128\", \"aes192\", \"aes256\" and \"none\"",
                )
            })?;
            suites.push(s);
        }
        r.suites = suites;
    }
    let either = |key: &str, v: Option<&Spanned<String>>, off: &str, on: &str, hint: &str| {
        let Some(v) = v else { return Ok(None) };
        match v.get_ref().as_str() {
            s if s == off => Ok(Some(false)),
            s if s == on => Ok(Some(true)),
            other => Err(ConfigError::new(
                format!("{}: user {name:?}: unknown {key} {other:?}", at(v.span())),
                hint,
            )),
        }
    };
    let file_names = own.file_names.as_ref().or(defaults.file_names.as_ref());
    let hint = "file_names is \"any\" or \"portable\" (names a Windows client can store)";
    if let Some(p) = either("file_names", file_names, "any", "portable", hint)? {
        r.portable_names = p;
    }
    let overwrite = own.overwrite.as_ref().or(defaults.overwrite.as_ref());
    let hint = "overwrite is \"never\" (an existing name is refused) or \"always\" (a verified \
                upload replaces it)";
    if let Some(o) = either("overwrite", overwrite, "never", "always", hint)? {
        r.overwrite = o;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example names every key the server knows, and nothing else.
    #[test]
    fn the_example_parses() {
        let text = include_str!("../../../docs/examples/ferry-serve.toml");
        let f: File = toml::from_str(text).unwrap();
        assert_eq!(f.users.len(), 2);
        assert_eq!(f.audit.as_ref().unwrap().keep, Some(5));
        assert!(
            f.limits.max_sessions_per_source.is_some() && f.limits.max_manifest_bytes.is_some()
        );
        let reports = &f.users[1];
        let keys = AuthorizedKeys::parse(&reports.keys.as_ref().unwrap().get_ref().join("\n"));
        assert_eq!(keys.unwrap().keys.len(), 1);
        let at = |_| String::new();
        let r = rights("reports", &reports.rights(), &f.defaults, &at).unwrap();
        assert_eq!((r.upload, r.download, r.rate_cap), (false, true, Some(200_000_000)));
        let r = rights("alice", &f.users[0].rights(), &f.defaults, &at).unwrap();
        assert_eq!((r.upload, r.download, r.rate_cap), (true, true, Some(1_000_000_000)));
        assert!(!r.suites.contains(&CipherSuite::None));
        assert_eq!(f.users[0].ssear.as_ref().map(|s| *s.get_ref()), Some(true));
        assert!(f.users[0].keystore.is_some() && f.users[1].ssear.is_none());
        assert_eq!(f.run_as.as_ref().map(|a| a.get_ref().as_str()), Some("ferry"));
    }

    #[test]
    fn lines_and_secrets() {
        assert_eq!(line_of("a\nb\nc", 4..5), 3);
        assert_eq!(line_of("a", 0..1), 1);
        let p = Path::new("f.toml");
        assert!(refuse_secrets(p, "[[user]]\nname = \"a\"\n").is_ok());
        let e = refuse_secrets(p, "x = 1\n  content_protection_secret = \"s\"\n").unwrap_err();
        assert!(e.message.starts_with("f.toml:2: content_protection_secret"), "{}", e.message);
        assert!(e.hint.contains("ferry keys migrate"), "{}", e.hint);
        assert!(!e.message.contains('"'), "the secret is not repeated: {}", e.message);
    }
}
