//! `ferry serve`: the daemon. Its users come from a configuration file (`--config`, see
//! [`super::config`]; reread on SIGHUP) or, in the simple case, from flags (one user, one
//! docroot). Either becomes [`ServerOptions`] and a [`Users`] policy; the server itself is
//! `ferry_net::server`. Log lines go to stderr ([`super::log`]).

use std::io::Write;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_engine::io::docroot::Docroot;
use ferry_net::authorized_keys::AuthorizedKeys;
use ferry_net::identity::Identity;
use ferry_net::limits::{AuthFailures, PostAuth, PreAuth};
use ferry_net::server::{Grant, Policy, Server, ServerError, ServerOptions};
use ferry_net::users::{Keys, Users};
use serde_json::json;

use super::account::{self, Account};
use super::admin;
use super::audit::{Audit, AuditOptions};
use super::config;
use super::events::Tell;
use super::log::line;
use crate::error::CliError;
use crate::exit::Exit;

/// Arguments of `ferry serve`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ServeArgs {
    /// Steer a running server through its admin socket instead of starting one.
    #[command(subcommand)]
    command: Option<ServeCommand>,
    /// The server's configuration (TOML: users, their docroots, keys and rights, limits;
    /// `docs/examples/ferry-serve.toml`). Reread on SIGHUP. Instead of the flags that set the
    /// same things.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["docroot", "authorized_keys", "user", "listen", "state_dir"]
    )]
    config: Option<PathBuf>,
    /// Address and UDP port to listen on for control connections.
    #[arg(long, default_value = "0.0.0.0:33001")]
    listen: SocketAddr,
    /// The directory the transfer user is confined to.
    #[arg(long, required_unless_present_any = ["print_fingerprint", "config"])]
    docroot: Option<PathBuf>,
    /// OpenSSH authorized_keys file listing the ed25519 keys allowed to connect (`from=`,
    /// `expiry-time=`, `restrict` and `no-*` options are honoured; a key with any other option
    /// is refused).
    #[arg(long, required_unless_present_any = ["print_fingerprint", "config"])]
    authorized_keys: Option<PathBuf>,
    /// The name of the one transfer user (what clients write as `USER@host:PATH`; clients
    /// that name no user get it too). Default: the account the server runs as.
    #[arg(long, value_name = "NAME", value_parser = parse_user)]
    user: Option<String>,
    /// Where the server keeps its identity (host_ed25519_key, created on first start). Must
    /// belong to this user, be writable by no one else, and lie outside the docroot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Started as root, become this account before serving (its docroot and state directory
    /// belong to it). With --config, its run_as.
    #[arg(long, value_name = "ACCOUNT", conflicts_with = "config")]
    run_as: Option<String>,
    /// Print the server's host-key fingerprint (creating the key if needed) and exit.
    #[arg(long)]
    print_fingerprint: bool,
    /// Append an audit record (JSON lines, file mode 0600) for every authentication, session,
    /// refusal and reload; rotated at 100 MiB (5 kept), reopened on SIGHUP. With --config, its
    /// [audit] table.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    audit_log: Option<PathBuf>,
    /// The local admin socket that `ferry serve status|rate|cancel` use (mode 0600). Default:
    /// admin.sock in the state directory. With --config, its admin_socket.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    admin_socket: Option<PathBuf>,
    /// Print machine-readable events on stdout, one JSON object per line: `listening`,
    /// `authentication`, `session_started`, `session_ended`, `setup_failed`, `stopped` (see
    /// README.md).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What `ferry serve status|rate|cancel` do.
#[derive(Debug, clap::Subcommand)]
enum ServeCommand {
    /// List the running sessions: user, peer, direction, path, bytes, rate and ETA.
    Status {
        /// One JSON object on stdout instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AdminAt,
    },
    /// Change a running session's target rate (an upload's client is told: RATE_LIMIT).
    Rate {
        /// The session id, as `ferry serve status` shows it.
        session: String,
        /// The new target rate in bits/s with k/m/g suffixes.
        #[arg(value_parser = super::parse_rate)]
        rate: u64,
        #[command(flatten)]
        at: AdminAt,
    },
    /// End a running session; its client is told the reason, its partial files are removed.
    Cancel {
        /// The session id, as `ferry serve status` shows it.
        session: String,
        /// What the client is told.
        #[arg(long, default_value = "cancelled by the operator")]
        reason: String,
        #[command(flatten)]
        at: AdminAt,
    },
}

/// Which server: its admin socket, or the configuration that names it.
#[derive(Debug, clap::Args)]
struct AdminAt {
    /// The server's admin socket.
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// The server's configuration (its admin_socket, or admin.sock in its state_dir).
    #[arg(long, value_name = "FILE", conflicts_with = "admin_socket")]
    config: Option<PathBuf>,
}

impl AdminAt {
    fn path(&self) -> Result<PathBuf, CliError> {
        if let Some(p) = &self.admin_socket {
            return Ok(p.clone());
        }
        let config = self.config.as_deref().map(config::load).transpose().map_err(config_error)?;
        let account = config.as_ref().and_then(|c| c.run_as.as_ref());
        Ok(admin_path(config.as_ref(), None, &state_dir(config.as_ref(), None, account)))
    }
}

/// The state directory: the configuration's, else the flag, else the default.
fn state_dir(
    config: Option<&config::Config>,
    flag: Option<&Path>,
    account: Option<&Account>,
) -> PathBuf {
    config
        .and_then(|c| c.state_dir.clone())
        .or(flag.map(Path::to_owned))
        .unwrap_or_else(|| default_state_dir(account))
}

/// The admin socket: the flag, else the configuration's, else admin.sock in the state dir.
fn admin_path(config: Option<&config::Config>, flag: Option<&Path>, state: &Path) -> PathBuf {
    match flag.or(config.and_then(|c| c.admin_socket.as_deref())) {
        Some(p) => p.to_owned(),
        None => admin::default_path(state),
    }
}

/// `ferry serve status|rate|cancel`.
fn steer(command: ServeCommand) -> Result<(), CliError> {
    match command {
        ServeCommand::Status { json, at } => {
            let reply = admin::request(&at.path()?, &json!({ "op": "status" }))?;
            if json {
                println!("{reply}");
            } else {
                print_status(&reply);
            }
        }
        ServeCommand::Rate { session, rate, at } => {
            let req = json!({ "op": "rate", "session": session, "target_rate_bps": rate });
            admin::request(&at.path()?, &req)?;
            println!("session {session}: target rate {}", super::progress::human_rate(rate as f64));
        }
        ServeCommand::Cancel { session, reason, at } => {
            let req = json!({ "op": "cancel", "session": session, "reason": reason });
            admin::request(&at.path()?, &req)?;
            println!("session {session}: cancelled");
        }
    }
    Ok(())
}

fn print_status(reply: &serde_json::Value) {
    let sessions = reply["sessions"].as_array().cloned().unwrap_or_default();
    if sessions.is_empty() {
        println!("no sessions running");
        return;
    }
    println!(
        "{:<16}  {:<12} {:<21} {:<8} {:>10} {:>10} {:>12} {:>6}  PATH",
        "SESSION", "USER", "PEER", "DIR", "BYTES", "TOTAL", "RATE", "ETA"
    );
    for s in sessions {
        let eta = s["eta_s"]
            .as_f64()
            .map_or("-".into(), |e| format!("{}:{:02}", e as u64 / 60, e as u64 % 60));
        let rate = super::progress::human_rate(s["rate_bps"].as_f64().unwrap_or(0.0));
        println!(
            "{:<16}  {:<12} {:<21} {:<8} {:>10} {:>10} {:>12} {:>6}  {}",
            s["session"].as_str().unwrap_or(""),
            super::log::sanitize(s["user"].as_str().unwrap_or("")),
            s["peer"].as_str().unwrap_or(""),
            s["direction"].as_str().unwrap_or(""),
            s["bytes"],
            s["total_bytes"],
            rate,
            eta,
            super::log::sanitize(s["path"].as_str().unwrap_or("")),
        );
    }
}

/// The server's limits (see `SECURITY.md`, "Limits").
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Seconds a new connection has to complete its handshake and authenticate.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    setup_timeout: u64,
    /// Connections in handshake or set-up at once, from all sources.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_setup: usize,
    /// Connections in handshake or set-up at once from one address.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_setup_per_source: usize,
    /// Above this many connections in set-up, new ones must prove their address (QUIC Retry).
    #[arg(long, value_name = "N", default_value_t = 16)]
    retry_above: usize,
    /// Flow-control credit per control stream, bytes (the connection gets twice this).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    stream_window: u32,
    /// Sessions at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_sessions: usize,
    /// Sessions at once per client key.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_sessions_per_key: usize,
    /// Sessions at once per transfer user (all its keys).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_sessions_per_user: usize,
    /// Sessions at once from one client address.
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_sessions_per_source: usize,
    /// Files one session may upload or download.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_files: u32,
    /// Files (descriptors) one session holds open at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_open_files: usize,
    /// Bytes of file paths one upload may announce in all.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    max_manifest_bytes: u64,
    /// Failed authentications from one address (within --auth-failure-window) that lock it
    /// out: its connections are refused before their handshake for --lockout seconds.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_auth_failures: u32,
    /// Seconds within which failed authentications count together.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    auth_failure_window: u64,
    /// Seconds a locked-out address is refused.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    lockout: u64,
}

impl LimitArgs {
    fn limits(&self) -> (PreAuth, PostAuth) {
        let pre = PreAuth {
            setup_timeout: Duration::from_secs(self.setup_timeout.max(1)),
            max_connections: self.max_setup.max(1),
            max_per_source: self.max_setup_per_source.max(1),
            retry_above: self.retry_above,
            stream_window: self.stream_window.clamp(16 * 1024, 16 << 20),
            auth_failures: AuthFailures {
                max_failures: self.max_auth_failures.max(1),
                window: Duration::from_secs(self.auth_failure_window.max(1)),
                lockout: Duration::from_secs(self.lockout),
                ..AuthFailures::default()
            },
        };
        let post = PostAuth {
            max_sessions: self.max_sessions.max(1),
            max_sessions_per_key: self.max_sessions_per_key.max(1),
            max_sessions_per_user: self.max_sessions_per_user.max(1),
            max_sessions_per_source: self.max_sessions_per_source.max(1),
            max_files: self.max_files.max(1),
            max_open_files: self.max_open_files.max(1),
            max_manifest_bytes: self.max_manifest_bytes.max(1),
        };
        (pre, post)
    }
}

/// The audit log rotates past this size ...
pub(crate) const DEFAULT_AUDIT_BYTES: u64 = 100 << 20;
/// ... keeping this many old files.
pub(crate) const DEFAULT_AUDIT_KEEP: u32 = 5;

fn parse_user(s: &str) -> Result<String, String> {
    ferry_keys::check_user_name(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

/// `~/.local/state/ferry` of the account the server runs as (`$XDG_STATE_HOME/ferry` when
/// it is this process's own account and that is set).
pub(crate) fn default_state_dir(account: Option<&Account>) -> PathBuf {
    if let Some(a) = account {
        return a.home.join(".local/state/ferry");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/var/lib".into());
    PathBuf::from(home).join(".local/state/ferry")
}

/// Refuses a state directory and a docroot that contain each other: the host key must never be
/// downloadable, and uploads must never land among the server's own files.
fn check_separate(docroot: &Path, state: &Path, keys: Option<&Path>) -> Result<(), CliError> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let (root, state) = (canon(docroot), canon(state));
    if state.starts_with(&root) || root.starts_with(&state) {
        return Err(CliError::new(
            Exit::Local,
            format!(
                "the state directory {} and the docroot {} overlap: clients could read the host \
                 key or write among the server's files",
                state.display(),
                root.display()
            ),
        )
        .hint("keep --state-dir outside --docroot (and the docroot outside the state directory)"));
    }
    let Some(keys) = keys.map(canon) else { return Ok(()) };
    if keys.starts_with(&root) {
        return Err(CliError::new(
            Exit::Local,
            format!("the authorized keys file {} lies inside the docroot", keys.display()),
        )
        .hint("move it out of the docroot: clients must not be able to read or replace it"));
    }
    Ok(())
}

pub(crate) fn run(mut args: ServeArgs) -> Result<(), CliError> {
    if let Some(command) = args.command.take() {
        return steer(command);
    }
    let config = args.config.as_deref().map(config::load).transpose().map_err(config_error)?;
    let account = match (&config, &args.run_as) {
        (Some(c), _) => c.run_as.clone(),
        (None, Some(name)) => Some(account::lookup(name).map_err(|e| {
            CliError::new(Exit::Local, format!("--run-as: {e}"))
                .hint("name an existing unprivileged account (e.g. useradd --system ferry)")
        })?),
        (None, None) => None,
    };
    let state_dir = state_dir(config.as_ref(), args.state_dir.as_deref(), account.as_ref());
    let admin_socket = admin_path(config.as_ref(), args.admin_socket.as_deref(), &state_dir);
    // Everything root may be needed for is read first: the configuration, the docroots
    // (opened: kept as descriptors) and the keys; then the server becomes its account, before
    // it touches its state, binds or serves.
    let (listen, (pre, post), users, audit, warnings) = match config {
        Some(c) => {
            let listen = c.listen.unwrap_or(args.listen);
            (listen, (c.pre, c.post), c.users, c.audit, c.warnings)
        }
        None => {
            let audit = args.audit_log.clone().map(|path| AuditOptions {
                path,
                max_bytes: DEFAULT_AUDIT_BYTES,
                keep: DEFAULT_AUDIT_KEEP,
            });
            let users = if args.print_fingerprint {
                Users::new(Vec::new(), None).expect("empty")
            } else {
                flag_user(&args)?
            };
            (args.listen, args.limits.limits(), users, audit, Vec::new())
        }
    };
    let warning = drop_privileges(account.as_ref(), args.config.is_some(), listen.port())?;
    let id = Identity::load_or_create_host(&state_dir).map_err(|e| {
        CliError::new(Exit::Identity, format!("cannot load the server identity: {e}")).hint(
            "use a --state-dir that belongs to this user with mode 0700 (chmod 700 DIR), holding \
             host_ed25519_key with mode 0600",
        )
    })?;
    if args.print_fingerprint {
        println!("{}", id.fingerprint());
        return Ok(());
    }
    super::log::install("ferry serve", "ferry=info");
    ferry_net::sockets::raise_fd_limit();
    for w in warning.iter().chain(&warnings) {
        line(format_args!("{w}"));
    }
    for u in users.iter() {
        let keys = match &u.keys {
            Keys::File { path, .. } => Some(path.as_path()),
            Keys::Inline(_) => None,
        };
        check_separate(u.docroot.path(), &state_dir, keys)?;
    }
    let audit = match audit {
        Some(o) => Some(Audit::open(o).map_err(|e| {
            CliError::new(Exit::Local, e)
                .hint("give the audit log a path in a directory of this account, mode 0600")
        })?),
        None => None,
    };
    let tell = Tell { json: args.json, audit };
    let sweep = users.docroots();
    let policy = Arc::new(Reloadable(RwLock::new(Arc::new(users))));
    let options =
        ServerOptions { listen, identity: id, pre, post, rules: Default::default(), sweep };
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(Exit::Failed, format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(options, policy, args.config, tell, admin_socket))
}

/// Started as root, becomes `account` (see [`account`]); refuses to serve as root from a
/// configuration that names none, and a privileged `port` it could no longer bind; returns a
/// warning for the flag mode.
fn drop_privileges(
    account: Option<&Account>,
    configured: bool,
    port: u16,
) -> Result<Option<String>, CliError> {
    let me = rustix::process::geteuid().as_raw();
    if account.is_some() && account::is_root() && (1..1024).contains(&port) {
        // Becoming the account clears every capability, so the port could not be bound.
        return Err(CliError::new(
            Exit::ServeConfig,
            format!("port {} is privileged, and the server drops root before it binds", port),
        )
        .hint(
            "listen on a port from 1024 up (the default is 33001), or start the server as the \
               account itself with CAP_NET_BIND_SERVICE (systemd: User= and AmbientCapabilities=)",
        ));
    }

    match account {
        None if account::is_root() && configured => Err(CliError::new(
            Exit::ServeConfig,
            "refusing to serve as root: a transfer server that runs as root turns every bug \
             into a root compromise",
        )
        .hint(
            "name the account to run as in the configuration: run_as = \"ferry\" (create it \
               with useradd --system ferry; its docroots, state and keystores belong to it)",
        )),
        None if account::is_root() => Ok(Some(
            "warning: serving as root; pass --run-as ACCOUNT to serve as an unprivileged account"
                .into(),
        )),
        None => Ok(None),
        Some(a) if a.uid == me => Ok(None),
        Some(a) if account::is_root() => {
            account::become_account(a).map_err(|e| CliError::new(Exit::Local, e))?;
            Ok(None)
        }
        Some(a) => Err(CliError::new(
            Exit::Local,
            format!("the server should run as {} but was started as uid {me}", a.name),
        )
        .hint(format!("start it as root (it becomes {} at once) or as {} itself", a.name, a.name))),
    }
}

/// The one user of the flag mode.
fn flag_user(args: &ServeArgs) -> Result<Users, CliError> {
    let docroot_path = args.docroot.as_ref().expect("clap requires it");
    let docroot = Docroot::open(docroot_path).map_err(|e| {
        CliError::new(Exit::Local, format!("docroot {e}"))
            .hint("create the directory or pass an existing one with --docroot")
    })?;
    let authorized_keys = args.authorized_keys.clone().expect("clap requires it");
    check_keys(&authorized_keys)?;
    let name = args.user.clone().unwrap_or_else(crate::keys::current_user_name);
    Ok(Users::single(name, Arc::new(docroot), authorized_keys))
}

/// Binds, says where it listens, serves until SIGTERM or SIGINT; SIGHUP rereads `config`
/// and reopens the audit log.
async fn serve(
    options: ServerOptions,
    policy: Arc<Reloadable>,
    config: Option<PathBuf>,
    tell: Tell,
    admin_socket: PathBuf,
) -> Result<(), CliError> {
    let server = Server::bind(options, policy.clone()).map_err(|e| match e {
        ServerError::Listen { .. } => CliError::new(Exit::Connect, e.to_string())
            .hint("choose a free port with --listen HOST:PORT (or listen in the configuration)"),
        ServerError::Tls(_) => CliError::new(Exit::Failed, e.to_string()),
    })?;
    let admin = admin::bind(&admin_socket)?;
    let (local, fp) = (server.local_addr(), server.fingerprint().to_owned());
    let users = policy.0.read().expect("users lock").len();
    tell.event(
        "listening",
        json!({ "address": local.to_string(), "host_key": fp, "users": users }),
    );
    if !tell.json {
        // Ignore write errors: whoever started the server may have closed its stdout.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ferry serve: listening on {local} (UDP), host key {fp}");
        let _ = writeln!(stdout, "ferry serve: clients pin it with: ferry cp --host-key {fp} ...");
        let _ = stdout.flush();
    }
    let server = server.with_observer(tell.clone().observer());
    let hangup = tokio::spawn(on_hangup(config, policy, tell.clone()));
    let steering = tokio::spawn(admin::serve(admin, server.registry()));
    let reason = ferry_net::bridge::termination_signal();
    server.run(reason).await;
    hangup.abort();
    steering.abort();
    let _ = std::fs::remove_file(&admin_socket);
    tell.event("stopped", json!({}));
    Ok(())
}

/// The users now: replaced as a whole when the configuration is reloaded, so a session set
/// up before keeps the grant it got.
#[derive(Debug)]
struct Reloadable(RwLock<Arc<Users>>);

impl Policy for Reloadable {
    fn authorize(&self, user: &str, key: &[u8; 32], peer: IpAddr) -> Result<Grant, String> {
        let users = self.0.read().expect("users lock").clone();
        users.authorize(user, key, peer)
    }
}

/// On every SIGHUP: reopens the audit log, and rereads the configuration: a good one replaces
/// the users (running sessions go on), a bad one is refused with its reason and the old one
/// stays.
async fn on_hangup(config: Option<PathBuf>, policy: Arc<Reloadable>, tell: Tell) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        if let Some(a) = &tell.audit {
            a.reopen();
        }
        let Some(path) = config.clone() else { continue };
        let shown = path.display().to_string();
        match tokio::task::spawn_blocking(move || config::load(&path)).await {
            Ok(Ok(c)) => {
                for w in &c.warnings {
                    line(format_args!("{w}"));
                }
                let n = c.users.len();
                *policy.0.write().expect("users lock") = Arc::new(c.users);
                line(format_args!(
                    "configuration reloaded from {shown}: {n} users (listen, state_dir, [limits] \
                     and [audit] apply at the next start)"
                ));
                tell.event("config_reloaded", json!({ "path": shown, "users": n }));
            }
            Ok(Err(e)) => {
                line(format_args!("configuration not reloaded (the old one stays): {}", e.message));
                tell.event("config_rejected", json!({ "error": e.message, "hint": e.hint }));
            }
            Err(_) => {}
        }
    }
}

fn config_error(e: config::ConfigError) -> CliError {
    CliError::new(Exit::ServeConfig, e.message).hint(e.hint)
}

/// Reads the authorized keys once at start: lines whose key is refused for an option are
/// logged (by line and option), and a file with no usable key stops the server.
fn check_keys(path: &Path) -> Result<(), CliError> {
    let keys = AuthorizedKeys::read(path).map_err(|e| {
        CliError::new(Exit::Identity, format!("cannot read the authorized keys: {e}"))
            .hint("pass an OpenSSH authorized_keys file with at least one ssh-ed25519 line")
    })?;
    for r in &keys.refused {
        line(format_args!("{}: line {}: key refused: {}", path.display(), r.line, r.reason));
    }
    if keys.keys.is_empty() {
        let reasons: Vec<_> = keys.refused.iter().map(|r| r.reason.as_str()).collect();
        return Err(CliError::new(
            Exit::Identity,
            format!(
                "{} lists no usable ssh-ed25519 key{}",
                path.display(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join("; "))
                }
            ),
        )
        .hint("add a client's public key (the .pub file `ferry keygen` wrote)"));
    }
    Ok(())
}
