//! `ferry serve`: the daemon for the simple case, one transfer user confined to a docroot.
//!
//! Every connection passes a gate before the server keeps state for it (caps on connections in
//! set-up, in all and per source address, and QUIC address validation under load), must
//! authenticate within the set-up deadline, and then runs as a session under per-key and
//! per-session limits ([`super::limits`]). Paths from the client are resolved beneath the
//! docroot by the kernel ([`ferry_engine::io::docroot`]); listings run off the async runtime.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::io::docroot::{Docroot, Kind, RelPath, escape};
use ferry_engine::io::driver::{DataSocket, ReceiverSide, SenderSide, Side};
use ferry_engine::io::files::{Destination, FileSink, SinkLimits};
use ferry_engine::io::source::{self, FileSource, SourceLimits};
use ferry_engine::rate::RateLimits;
use ferry_engine::session::{Receiver, Sender, SessionConfig};
use ferry_engine::setup::{self, ClientHello, Direction, ServerHello, refusal};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::limits::{Admission, Gate, PostAuth, PreAuth, SetupGuard};
use super::log::log;
use crate::authorized_keys::AuthorizedKeys;
use crate::error::CliError;
use crate::identity::{self, Identity};

/// Arguments of `ferry serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address and UDP port to listen on for control connections.
    #[arg(long, default_value = "0.0.0.0:33001")]
    listen: SocketAddr,
    /// The directory the transfer user is confined to.
    #[arg(long, required_unless_present = "print_fingerprint")]
    docroot: Option<PathBuf>,
    /// OpenSSH authorized_keys file listing the ed25519 keys allowed to connect (`from=`,
    /// `expiry-time=`, `restrict` and `no-*` options are honoured; a key with any other option
    /// is refused).
    #[arg(long, required_unless_present = "print_fingerprint")]
    authorized_keys: Option<PathBuf>,
    /// Where the server keeps its identity (host_ed25519_key, created on first start). Must
    /// belong to this user, be writable by no one else, and lie outside the docroot.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Print the server's host-key fingerprint (creating the key if needed) and exit.
    #[arg(long)]
    print_fingerprint: bool,
    #[command(flatten)]
    limits: LimitArgs,
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
    /// Files one session may upload or download.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_files: u32,
    /// Files (descriptors) one session holds open at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_open_files: usize,
    /// Bytes of file paths one upload may announce in all.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    max_manifest_bytes: u64,
}

impl LimitArgs {
    fn limits(&self) -> (PreAuth, PostAuth) {
        let pre = PreAuth {
            setup_timeout: Duration::from_secs(self.setup_timeout.max(1)),
            max_connections: self.max_setup.max(1),
            max_per_source: self.max_setup_per_source.max(1),
            retry_above: self.retry_above,
            stream_window: self.stream_window.clamp(16 * 1024, 16 << 20),
        };
        let post = PostAuth {
            max_sessions: self.max_sessions.max(1),
            max_sessions_per_key: self.max_sessions_per_key.max(1),
            max_files: self.max_files.max(1),
            max_open_files: self.max_open_files.max(1),
            max_manifest_bytes: self.max_manifest_bytes.max(1),
        };
        (pre, post)
    }
}

pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/var/lib".into());
    PathBuf::from(home).join(".local/state/ferry")
}

/// Partial files untouched for this long are left over from a session that ended without
/// cleaning up (a crash): they are removed at start and then every [`SWEEP_EVERY`].
const STALE_PARTIAL: Duration = Duration::from_secs(600);
/// How often stale partial files are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

struct Ctx {
    docroot: Arc<Docroot>,
    authorized_keys: PathBuf,
    /// The parsed authorized_keys file and the metadata it was read with.
    keys_cache: Mutex<Option<(std::fs::Metadata, Arc<AuthorizedKeys>)>>,
    /// The address the server listens on; data sockets share it.
    local: SocketAddr,
    /// Set when the server shuts down.
    cancel: super::Cancel,
    pre: PreAuth,
    post: PostAuth,
    gate: Arc<Gate>,
}

impl Ctx {
    /// The authorized keys, read again when the file changed.
    fn keys(&self) -> Result<Arc<AuthorizedKeys>, String> {
        let meta = std::fs::metadata(&self.authorized_keys)
            .map_err(|e| format!("{}: {e}", self.authorized_keys.display()))?;
        let mut cache = self.keys_cache.lock().expect("keys lock");
        if let Some((m, k)) = cache.as_ref()
            && m.modified().ok() == meta.modified().ok()
            && m.len() == meta.len()
            && std::os::unix::fs::MetadataExt::ino(m) == std::os::unix::fs::MetadataExt::ino(&meta)
        {
            return Ok(k.clone());
        }
        let keys = Arc::new(AuthorizedKeys::read(&self.authorized_keys)?);
        *cache = Some((meta, keys.clone()));
        Ok(keys)
    }
}

/// Refuses a state directory and a docroot that contain each other: the host key must never be
/// downloadable, and uploads must never land among the server's own files.
fn check_separate(docroot: &Path, state: &Path, keys: &Path) -> Result<(), CliError> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let (root, state) = (canon(docroot), canon(state));
    if state.starts_with(&root) || root.starts_with(&state) {
        return Err(CliError::new(
            34,
            format!(
                "the state directory {} and the docroot {} overlap: clients could read the host \
                 key or write among the server's files",
                state.display(),
                root.display()
            ),
        )
        .hint("keep --state-dir outside --docroot (and the docroot outside the state directory)"));
    }
    let keys = canon(keys);
    if keys.starts_with(&root) {
        return Err(CliError::new(
            34,
            format!("the authorized keys file {} lies inside the docroot", keys.display()),
        )
        .hint("move it out of the docroot: clients must not be able to read or replace it"));
    }
    Ok(())
}

pub(crate) fn run(args: ServeArgs) -> Result<(), CliError> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let id = Identity::load_or_create_host(&state_dir).map_err(|e| {
        CliError::new(36, format!("cannot load the server identity: {e}")).hint(
            "use a --state-dir that belongs to this user with mode 0700 (chmod 700 DIR), holding \
             host_ed25519_key with mode 0600",
        )
    })?;
    if args.print_fingerprint {
        println!("{}", id.fingerprint());
        return Ok(());
    }
    super::raise_fd_limit();
    let docroot_path = args.docroot.expect("clap requires it");
    let docroot = Docroot::open(&docroot_path).map_err(|e| {
        CliError::new(34, format!("docroot {}: {e}", docroot_path.display()))
            .hint("create the directory or pass an existing one with --docroot")
    })?;
    let authorized_keys = args.authorized_keys.expect("clap requires it");
    check_separate(docroot.path(), &state_dir, &authorized_keys)?;
    let keys = AuthorizedKeys::read(&authorized_keys).map_err(|e| {
        CliError::new(36, format!("cannot read the authorized keys: {e}"))
            .hint("pass an OpenSSH authorized_keys file with at least one ssh-ed25519 line")
    })?;
    for r in &keys.refused {
        log!("{}: line {}: key refused: {}", authorized_keys.display(), r.line, r.reason);
    }
    if keys.keys.is_empty() {
        return Err(CliError::new(
            36,
            format!("{} lists no usable ssh-ed25519 key", authorized_keys.display()),
        )
        .hint("add a client's public key (the .pub file `ferry keygen` wrote)"));
    }
    let (pre, post) = args.limits.limits();
    let config = super::server_config(&id, &pre)
        .map_err(|e| CliError::new(1, format!("cannot configure TLS: {e}")))?;
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(1, format!("cannot start the runtime: {e}")))?;
    let listen = args.listen;
    rt.block_on(async move {
        let cannot_listen = |e: std::io::Error| {
            CliError::new(30, format!("cannot listen on {listen}: {e}"))
                .hint("choose a free port with --listen HOST:PORT")
        };
        let socket = super::listening_socket(listen).map_err(cannot_listen)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(cannot_listen)?;
        let local = endpoint.local_addr().map_err(|e| CliError::new(1, e.to_string()))?;
        let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
        let ctx = Arc::new(Ctx {
            docroot: Arc::new(docroot),
            authorized_keys,
            keys_cache: Mutex::new(None),
            local,
            cancel,
            pre,
            post,
            gate: Arc::new(Gate::default()),
        });
        // Ignore write errors: whoever started the server may have closed its stdout.
        let mut stdout = std::io::stdout();
        let fp = id.fingerprint();
        let _ = writeln!(stdout, "ferry serve: listening on {local} (UDP), host key {fp}");
        let _ = writeln!(stdout, "ferry serve: clients pin it with: ferry cp --host-key {fp} ...");
        let _ = stdout.flush();
        let sweeper = tokio::spawn(sweep_forever(ctx.docroot.clone()));
        let reason = accept_loop(&endpoint, &ctx).await;
        sweeper.abort();
        shutdown(&endpoint, &ctx, cancel_tx, reason).await;
        Ok(())
    })
}

/// Accepts connections until a termination signal, each in its own task; returns why it stopped.
async fn accept_loop(endpoint: &quinn::Endpoint, ctx: &Arc<Ctx>) -> &'static str {
    let signal = super::termination_signal();
    tokio::pin!(signal);
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let incoming = tokio::select! {
            reason = &mut signal => return reason,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return "the endpoint closed" };
        let peer = incoming.remote_address();
        let guard = match ctx.gate.admit(peer.ip(), incoming.remote_address_validated(), &ctx.pre) {
            Admission::Accept(g) => g,
            Admission::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            Admission::Refuse(why) => {
                // One line per second at most: a flood must not flood the log too.
                if refused_logged.elapsed() >= Duration::from_secs(1) {
                    log!("{peer}: connection refused: {why}");
                    refused_logged = Instant::now();
                }
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(incoming, &ctx, guard).await {
                log!("{peer}: {e}");
            }
        });
    }
}

/// Graceful shutdown: every session ends now, removing its partial files and telling its
/// client why; then the connections close.
async fn shutdown(
    endpoint: &quinn::Endpoint,
    ctx: &Ctx,
    cancel_tx: tokio::sync::watch::Sender<Option<&'static str>>,
    reason: &str,
) {
    let (setup, sessions) = ctx.gate.load();
    log!("{reason}: ending {sessions} sessions ({setup} connections in set-up)");
    let _ = cancel_tx.send(Some("the server is shutting down"));
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while ctx.gate.load().1 > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    log!("stopped");
}

/// Removes stale partial files now and then, off the runtime.
async fn sweep_forever(docroot: Arc<Docroot>) {
    loop {
        let root = docroot.clone();
        match tokio::task::spawn_blocking(move || {
            ferry_engine::io::files::sweep_partials(&root, STALE_PARTIAL)
        })
        .await
        {
            Ok(Ok(s)) if s.removed > 0 => {
                log!("removed {} stale partial files left by earlier sessions", s.removed)
            }
            Ok(Err(e)) => log!("sweeping stale partial files failed: {e}"),
            _ => {}
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// An authenticated client, its control stream and what it asked for.
struct Authenticated {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    leftover: Vec<u8>,
    hello: ClientHello,
    fingerprint: String,
}

/// A refusal sent to the client as an ABORT (code, message) and logged.
struct Refusal(u16, String);

async fn handle(incoming: quinn::Incoming, ctx: &Ctx, guard: SetupGuard) -> Result<(), String> {
    let peer = incoming.remote_address();
    let deadline = ctx.pre.setup_timeout;
    let auth = match tokio::time::timeout(deadline, set_up(incoming, ctx)).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("no authenticated set-up within {deadline:?}: closed")),
    };
    // Set up: no longer counted against the limits on connections in set-up.
    drop(guard);
    let Authenticated { conn, mut send, recv, leftover, hello, fingerprint } = auth;
    let key_guard = match ctx.gate.start_session(hello.public_key, &ctx.post) {
        Ok(g) => g,
        Err(why) => {
            super::send_abort(&mut send, refusal::BUSY, &why).await;
            return Err(format!("key {fingerprint}: refused: {why}"));
        }
    };
    log!(
        "{peer}: authenticated {fingerprint}, {} {}",
        match hello.direction {
            Direction::Upload => "upload to",
            Direction::Download => "download of",
        },
        escape(&hello.path, 200)
    );
    let plan = match plan(ctx, &conn, &hello).await {
        Ok(p) => p,
        Err(Refusal(code, why)) => {
            super::send_abort(&mut send, code, &why).await;
            return Err(format!("session refused: {why}"));
        }
    };
    let session_id = plan.session_id;
    send.write_all(&plan.reply).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (result, report) = super::run_session(
        send,
        recv,
        leftover,
        plan.side,
        plan.socket,
        Box::new(|_| {}),
        ctx.cancel.clone(),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    // Let the client close the connection (it has the last word), bounded.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    drop(key_guard);
    let failed: Vec<_> = report.files.iter().filter(|f| !f.reason.is_empty()).collect();
    for f in failed.iter().take(20) {
        log!("session {session_id:016x}: {}: {}", escape(&f.path, 200), f.reason);
    }
    match result {
        Ok(()) => {
            log!(
                "{peer}: session {session_id:016x} complete, {} files ({} failed) in {secs:.2} s",
                report.files.len(),
                failed.len()
            );
            Ok(())
        }
        Err(e) => Err(format!("session {session_id:016x} failed: {e}")),
    }
}

/// Handshake, control stream, hello, version and authentication: everything that must happen
/// within the set-up deadline.
async fn set_up(incoming: quinn::Incoming, ctx: &Ctx) -> Result<Authenticated, String> {
    let conn = incoming
        .accept()
        .map_err(|e| format!("handshake failed: {e}"))?
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let peer = conn.remote_address();
    let (mut send, mut recv) =
        conn.accept_bi().await.map_err(|e| format!("control stream: {e}"))?;
    let (t, payload, leftover) = super::read_frame(&mut recv).await?;
    let hello = match (t == setup::T_CLIENT_HELLO).then(|| ClientHello::decode(&payload)) {
        Some(Ok(h)) => h,
        _ => {
            super::send_abort(&mut send, 3, "protocol violation: expected a client hello").await;
            return Err("protocol violation: expected a client hello".into());
        }
    };
    if !hello.versions.contains(&setup::VERSION) {
        super::send_abort(&mut send, refusal::UNSUPPORTED_VERSION, "unsupported version").await;
        return Err(format!("no common version (client offers {:?})", hello.versions));
    }
    // Authentication: the key must be authorised (from this address, now) and must have signed
    // this connection's exporter value together with the hello.
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, setup::AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    let fingerprint = identity::fingerprint(&hello.public_key);
    let signed =
        identity::verify(&hello.public_key, &hello.signed_message(&exporter), &hello.signature);
    let allowed = ctx.keys().and_then(|k| {
        k.check(&hello.public_key, peer.ip(), ferry_keystore::time::now())
            .map_err(|d| d.to_string())
    });
    if let (true, Ok(())) = (signed, &allowed) {
        return Ok(Authenticated { conn, send, recv, leftover, hello, fingerprint });
    }
    super::send_abort(&mut send, refusal::AUTHENTICATION, "authentication refused").await;
    let why = match allowed {
        Err(e) => e,
        Ok(()) => "the signature does not verify".into(),
    };
    Err(format!("authentication refused for key {fingerprint}: {why}"))
}

/// What an accepted session runs with.
struct Plan {
    session_id: u64,
    reply: Vec<u8>,
    side: Box<dyn Side + Send>,
    socket: DataSocket,
}

/// Decides the session: parameters, path, data socket, sink or source. Listing a download runs
/// off the async runtime.
async fn plan(ctx: &Ctx, conn: &quinn::Connection, hello: &ClientHello) -> Result<Plan, Refusal> {
    let refuse = |code, why: String| Refusal(code, why);
    let suite = CipherSuite::from_code(hello.suite)
        .ok_or_else(|| refuse(refusal::PARAMETERS, "unknown cipher suite".into()))?;
    let mut id = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| refuse(refusal::SERVER, "no randomness".into()))?;
    let session_id = u64::from_be_bytes(id);
    let limits = RateLimits { target: hello.target_rate, min: hello.min_rate };
    let mut config = SessionConfig::new(session_id, suite, limits);
    config.block_size = hello.block_size as usize;
    config.initial_rtt = conn.rtt().max(Duration::from_millis(1));
    config.max_files = ctx.post.max_files;
    config.max_manifest_bytes = ctx.post.max_manifest_bytes;
    config.validate().map_err(|e| refuse(refusal::PARAMETERS, e.to_string()))?;
    let (rel, wants_dir) =
        RelPath::parse_request(&hello.path).map_err(|e| refuse(refusal::PATH, e.to_string()))?;
    let peer = conn.remote_address();
    // The data socket shares the listening port (SO_REUSEPORT): connected to the client's data
    // address, it takes that address's datagrams; everything else still reaches QUIC.
    let server_error = |what: &str, e: std::io::Error| {
        log!("{peer}: {what}: {e}");
        refuse(refusal::SERVER, "the server could not set up the data path".into())
    };
    let socket = super::data_port_socket(ctx.local)
        .map_err(|e| server_error("cannot bind a data socket", e))?;
    socket
        .connect(SocketAddr::new(peer.ip(), hello.data_port))
        .map_err(|e| server_error("cannot connect the data socket", e))?;
    let socket = DataSocket::new(socket).map_err(|e| server_error("data socket", e))?;
    let secret = {
        let mut s = Zeroizing::new([0u8; 32]);
        conn.export_keying_material(s.as_mut(), setup::SESSION_EXPORTER_LABEL, &id)
            .map_err(|_| refuse(refusal::SERVER, "TLS exporter unavailable".into()))?;
        SessionSecret::new(*s)
    };
    let now = Instant::now();
    let side: Box<dyn Side + Send> = match hello.direction {
        Direction::Upload => {
            let dest = upload_destination(&ctx.docroot, rel, wants_dir, hello.flags & 1 != 0)?;
            let sink_limits = SinkLimits { max_open: ctx.post.max_open_files };
            let sink = FileSink::new(ctx.docroot.clone(), dest, sink_limits);
            let receiver = Receiver::new(config.clone(), &secret, now)
                .map_err(|e| refuse(refusal::PARAMETERS, e.to_string()))?;
            Box::new(ReceiverSide { receiver, sink })
        }
        Direction::Download => {
            let limits = SourceLimits {
                max_files: ctx.post.max_files as usize,
                max_open: ctx.post.max_open_files,
            };
            let root = ctx.docroot.clone();
            let shown = rel.shown();
            let list = tokio::task::spawn_blocking(move || source::list(&root, &rel, limits))
                .await
                .map_err(|_| refuse(refusal::SERVER, "listing failed".into()))?
                .map_err(|e| {
                    let why = if e.kind() == std::io::ErrorKind::NotFound {
                        format!("{shown} does not exist on the server")
                    } else {
                        format!("{shown} cannot be sent: {e}")
                    };
                    refuse(refusal::PATH, why)
                })?;
            let policy = policy_from_code(hello.policy);
            let factory = policy.factory();
            let mut sender = Sender::new(config.clone(), &secret, factory.as_ref(), now)
                .map_err(|e| refuse(refusal::PARAMETERS, e.to_string()))?;
            for f in &list {
                sender.add_file(ferry_engine::control::FileEntry {
                    id: 0,
                    size: f.size,
                    mtime_ns: 0,
                    mode: f.mode,
                    path: f.manifest.clone(),
                });
            }
            sender.finish_manifest();
            Box::new(SenderSide { sender, source: FileSource::new(list, limits) })
        }
    };
    let mut reply = Vec::new();
    ServerHello {
        version: setup::VERSION,
        session_id,
        suite: suite.code(),
        block_size: config.block_size as u32,
        max_window: config.max_window,
        data_port: ctx.local.port(),
    }
    .encode(&mut reply);
    Ok(Plan { session_id, reply, side, socket })
}

/// Where an upload to `rel` lands: into it when it is a directory; as that very name when the
/// client may name its single file and `rel`'s parent is a directory (and `rel` did not end in
/// `/`). Nothing is created here.
fn upload_destination(
    root: &Docroot,
    rel: RelPath,
    wants_dir: bool,
    may_name_file: bool,
) -> Result<Destination, Refusal> {
    let path_refusal = |why: String| Refusal(refusal::PATH, why);
    let meta = root.meta(&rel).map_err(|e| path_refusal(e.to_string()))?;
    match meta.map(|m| m.kind) {
        Some(Kind::Dir) => return Ok(Destination::Dir(rel)),
        Some(Kind::Symlink) => {
            return Err(path_refusal(format!(
                "{} is a symbolic link, which Ferry does not follow",
                rel.shown()
            )));
        }
        Some(_) if wants_dir => {
            return Err(path_refusal(format!("{} is not a directory", rel.shown())));
        }
        // An existing file: the sink refuses to overwrite it (that file fails, by name).
        Some(_) if may_name_file => return Ok(Destination::File(rel)),
        _ => {}
    }
    if may_name_file
        && !wants_dir
        && let Some((parent, _)) = rel.split_last()
        && root.meta(&parent).ok().flatten().is_some_and(|m| m.kind == Kind::Dir)
    {
        return Ok(Destination::File(rel));
    }
    Err(path_refusal(format!(
        "the destination directory {} does not exist on the server",
        rel.shown()
    )))
}

pub(crate) fn policy_from_code(code: u8) -> ferry_engine::rate::Policy {
    use ferry_engine::rate::Policy;
    match code {
        0 => Policy::Fixed,
        1 => Policy::High,
        3 => Policy::Low,
        _ => Policy::Fair,
    }
}

pub(crate) fn policy_code(p: ferry_engine::rate::Policy) -> u8 {
    use ferry_engine::rate::Policy;
    match p {
        Policy::Fixed => 0,
        Policy::High => 1,
        Policy::Fair => 2,
        Policy::Low => 3,
    }
}
