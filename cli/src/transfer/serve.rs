//! `ferry serve`: the daemon for the simple case, one transfer user confined to a docroot.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::crypto::{CipherSuite, SessionSecret};
use ferry_engine::io::driver::{DataSocket, ReceiverSide, SenderSide, Side};
use ferry_engine::io::files::{self, Destination, FileSink, MmapSource};
use ferry_engine::rate::RateLimits;
use ferry_engine::session::{Receiver, Sender, SessionConfig};
use ferry_engine::setup::{self, ClientHello, Direction, ServerHello, refusal};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::error::CliError;
use crate::identity::{self, Identity};

/// Writes a log line to stderr, ignoring a closed stderr (the daemon must not die of it).
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Arguments of `ferry serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address and UDP port to listen on for control connections.
    #[arg(long, default_value = "0.0.0.0:33001")]
    listen: SocketAddr,
    /// The directory the transfer user is confined to.
    #[arg(long, required_unless_present = "print_fingerprint")]
    docroot: Option<PathBuf>,
    /// OpenSSH authorized_keys file listing the ed25519 keys allowed to connect.
    #[arg(long, required_unless_present = "print_fingerprint")]
    authorized_keys: Option<PathBuf>,
    /// Where the server keeps its identity (host_ed25519_key, created on first start).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Print the server's host-key fingerprint (creating the key if needed) and exit.
    #[arg(long)]
    print_fingerprint: bool,
}

pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("ferry");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/var/lib".into());
    PathBuf::from(home).join(".local/state/ferry")
}

struct Ctx {
    docroot: PathBuf,
    authorized_keys: PathBuf,
    /// The address the server listens on; data sockets share it.
    local: SocketAddr,
    /// Set when the server shuts down.
    cancel: super::Cancel,
}

pub(crate) fn run(args: ServeArgs) -> Result<(), CliError> {
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    let id = Identity::load_or_create_host(&state_dir).map_err(|e| {
        CliError::new(36, format!("cannot load the server identity: {e}"))
            .hint("check that --state-dir is a directory this user can write, with the key file mode 0600")
    })?;
    if args.print_fingerprint {
        println!("{}", id.fingerprint());
        return Ok(());
    }
    super::raise_fd_limit();
    let docroot = args.docroot.expect("clap requires it");
    let docroot = docroot.canonicalize().map_err(|e| {
        CliError::new(34, format!("docroot {}: {e}", docroot.display()))
            .hint("create the directory or pass an existing one with --docroot")
    })?;
    let authorized_keys = args.authorized_keys.expect("clap requires it");
    let keys = identity::read_authorized_keys(&authorized_keys).map_err(|e| {
        CliError::new(36, format!("cannot read the authorized keys: {e}"))
            .hint("pass an OpenSSH authorized_keys file with at least one ssh-ed25519 line")
    })?;
    if keys.is_empty() {
        return Err(CliError::new(
            36,
            format!("{} lists no ssh-ed25519 key", authorized_keys.display()),
        )
        .hint("add a client's public key (the .pub file `ferry keygen` wrote)"));
    }
    let config = super::server_config(&id)
        .map_err(|e| CliError::new(1, format!("cannot configure TLS: {e}")))?;
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(1, format!("cannot start the runtime: {e}")))?;
    rt.block_on(async move {
        let cannot_listen = |e: std::io::Error| {
            CliError::new(30, format!("cannot listen on {}: {e}", args.listen))
                .hint("choose a free port with --listen HOST:PORT")
        };
        let socket = super::listening_socket(args.listen).map_err(cannot_listen)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(cannot_listen)?;
        let local = endpoint.local_addr().map_err(|e| CliError::new(1, e.to_string()))?;
        let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
        let ctx = Arc::new(Ctx { docroot, authorized_keys, local, cancel });
        // Ignore write errors: whoever started the server may have closed its stdout.
        let mut stdout = std::io::stdout();
        let _ = writeln!(
            stdout,
            "ferry serve: listening on {local} (UDP), host key {}",
            id.fingerprint()
        );
        let _ = writeln!(
            stdout,
            "ferry serve: clients pin it with: ferry cp --host-key {} ...",
            id.fingerprint()
        );
        let _ = std::io::stdout().flush();
        let mut sessions = tokio::task::JoinSet::new();
        let signal = super::termination_signal();
        tokio::pin!(signal);
        let reason = loop {
            let incoming = tokio::select! {
                reason = &mut signal => break reason,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break "the endpoint closed" };
            while sessions.try_join_next().is_some() {}
            let ctx = ctx.clone();
            sessions.spawn(async move {
                let peer = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        if let Err(e) = handle(conn, &ctx).await {
                            log!("ferry serve: {peer}: {e}");
                        }
                    }
                    Err(e) => log!("ferry serve: {peer}: handshake failed: {e}"),
                }
            });
        };
        // Graceful shutdown: every session ends now, removing its partial files and telling its
        // client why; then the connections close.
        log!("ferry serve: {reason}: ending {} sessions", sessions.len());
        let _ = cancel_tx.send(Some("the server is shutting down"));
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        log!("ferry serve: stopped");
        Ok(())
    })
}

async fn handle(conn: quinn::Connection, ctx: &Ctx) -> Result<(), String> {
    let peer = conn.remote_address();
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .map_err(|_| "no control stream within 10 s".to_string())?
        .map_err(|e| format!("control stream: {e}"))?;
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
    // Authentication: the key must be authorised and must have signed this connection's
    // exporter value together with the hello.
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, setup::AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    let authorized = identity::read_authorized_keys(&ctx.authorized_keys)
        .map(|keys| keys.contains(&hello.public_key))
        .unwrap_or(false);
    let fp = identity::fingerprint(&hello.public_key);
    if !authorized
        || !identity::verify(&hello.public_key, &hello.signed_message(&exporter), &hello.signature)
    {
        super::send_abort(&mut send, refusal::AUTHENTICATION, "authentication refused").await;
        return Err(format!("authentication refused for key {fp}"));
    }
    log!(
        "ferry serve: {peer}: authenticated {fp}, {} {:?}",
        match hello.direction {
            Direction::Upload => "upload to",
            Direction::Download => "download of",
        },
        hello.path
    );

    let Some(suite) = CipherSuite::from_code(hello.suite) else {
        super::send_abort(&mut send, refusal::PARAMETERS, "unknown cipher suite").await;
        return Err("unknown cipher suite".into());
    };
    let mut session_id = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut session_id).map_err(|_| "random".to_string())?;
    let session_id = u64::from_be_bytes(session_id);
    let mut config = SessionConfig::new(
        session_id,
        suite,
        RateLimits { target: hello.target_rate, min: hello.min_rate },
    );
    config.block_size = hello.block_size as usize;
    config.initial_rtt = conn.rtt().max(Duration::from_millis(1));
    if let Err(e) = config.validate() {
        super::send_abort(&mut send, refusal::PARAMETERS, &e.to_string()).await;
        return Err(e.to_string());
    }

    // Resolve the path inside the docroot before answering.
    let rel = hello.path.trim_start_matches('/');
    let base = if rel.is_empty() || rel == "." {
        ctx.docroot.clone()
    } else {
        match files::validate_relative(rel) {
            Ok(parts) => parts.iter().fold(ctx.docroot.clone(), |p, c| p.join(c)),
            Err(e) => {
                super::send_abort(&mut send, refusal::PATH, &e).await;
                return Err(e);
            }
        }
    };
    // The data socket shares the listening port (SO_REUSEPORT): connected to the client's data
    // address, it takes that address's datagrams; everything else still reaches QUIC.
    let socket = super::data_port_socket(ctx.local)
        .map_err(|e| format!("cannot bind a data socket on {}: {e}", ctx.local))?;
    socket
        .connect(SocketAddr::new(peer.ip(), hello.data_port))
        .map_err(|e| format!("cannot connect the data socket: {e}"))?;
    let data_port = ctx.local.port();
    let socket = DataSocket::new(socket).map_err(|e| format!("data socket: {e}"))?;
    let secret = |conn: &quinn::Connection| -> Result<SessionSecret, String> {
        let mut s = Zeroizing::new([0u8; 32]);
        conn.export_keying_material(
            s.as_mut(),
            setup::SESSION_EXPORTER_LABEL,
            &session_id.to_be_bytes(),
        )
        .map_err(|_| "TLS exporter unavailable".to_string())?;
        Ok(SessionSecret::new(*s))
    };
    let now = Instant::now();
    let side: Box<dyn Side + Send> = match hello.direction {
        Direction::Upload => {
            let dest = match upload_destination(&ctx.docroot, &base, hello.flags & 1 != 0) {
                Ok(d) => d,
                Err(e) => {
                    super::send_abort(&mut send, refusal::PATH, &e).await;
                    return Err(e);
                }
            };
            let sink = match FileSink::new(&ctx.docroot, dest) {
                Ok(s) => s,
                Err(_) => {
                    super::send_abort(&mut send, refusal::SERVER, "docroot unavailable").await;
                    return Err("docroot unavailable".into());
                }
            };
            let receiver =
                Receiver::new(config.clone(), &secret(&conn)?, now).map_err(|e| e.to_string())?;
            Box::new(ReceiverSide { receiver, sink })
        }
        Direction::Download => {
            let list = match files::enumerate(&base, Some(&ctx.docroot)) {
                Ok(l) => l,
                Err(_) => {
                    let msg =
                        format!("{:?} does not exist on the server or cannot be read", hello.path);
                    super::send_abort(&mut send, refusal::PATH, &msg).await;
                    return Err(msg);
                }
            };
            let policy = policy_from_code(hello.policy);
            let factory = policy.factory();
            let mut sender = Sender::new(config.clone(), &secret(&conn)?, factory.as_ref(), now)
                .map_err(|e| e.to_string())?;
            let mut source = MmapSource::new();
            for f in list {
                let size = source.add_path(&f.path).map_err(|e| format!("{}: {e}", f.rel))?;
                sender.add_file(ferry_engine::control::FileEntry {
                    id: 0,
                    size,
                    mtime_ns: 0,
                    mode: f.mode,
                    path: f.rel,
                });
            }
            sender.finish_manifest();
            Box::new(SenderSide { sender, source })
        }
    };
    let mut out = Vec::new();
    ServerHello {
        version: setup::VERSION,
        session_id,
        suite: suite.code(),
        block_size: config.block_size as u32,
        max_window: config.max_window,
        data_port,
    }
    .encode(&mut out);
    send.write_all(&out).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (result, report) = super::run_session(
        send,
        recv,
        leftover,
        side,
        socket,
        Box::new(|_| {}),
        ctx.cancel.clone(),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    // Let the client close the connection (it has the last word), bounded.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    match result {
        Ok(()) => {
            log!(
                "ferry serve: {peer}: session {session_id:016x} complete, {} files in {secs:.2} s",
                report.files.len()
            );
            Ok(())
        }
        Err(e) => Err(format!("session {session_id:016x} failed: {e}")),
    }
}

fn upload_destination(
    docroot: &Path,
    base: &Path,
    may_name_file: bool,
) -> Result<Destination, String> {
    let shown = base.strip_prefix(docroot).unwrap_or(base).display().to_string();
    let inside = |p: &Path| p.canonicalize().is_ok_and(|c| c.starts_with(docroot));
    if base.is_dir() {
        if !inside(base) {
            return Err(format!("{shown:?} leads outside the docroot"));
        }
        return Ok(Destination::Dir(base.to_owned()));
    }
    let parent = base.parent().unwrap_or(docroot);
    if may_name_file && parent.is_dir() {
        if !inside(parent) {
            return Err(format!("{shown:?} leads outside the docroot"));
        }
        return Ok(Destination::File(base.to_owned()));
    }
    Err(format!("the destination directory {shown:?} does not exist on the server"))
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
