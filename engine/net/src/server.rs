//! The server role: accepts connections on one UDP port, admits them through the
//! [`Gate`](crate::limits::Gate), authenticates each client within the set-up deadline, hands the
//! session to a [`Policy`] that decides who the client is and where its files live, and runs it.
//!
//! Every connection passes the gate before the server keeps state for it (caps on connections
//! in set-up, in all and per source address, and QUIC address validation under load), must
//! authenticate within the set-up deadline, and then runs as a session under per-key and
//! per-session limits. Paths from the client are resolved beneath the docroot by the kernel
//! ([`ferry_engine::io::docroot`]); listings run off the async runtime. Log lines go through
//! `tracing`; every peer-chosen string in them is quoted and escaped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_engine::control::Overwrite;
use ferry_engine::crypto::SessionSecret;
use ferry_engine::io::docroot::{Docroot, Kind, RelPath, escape};
use ferry_engine::io::driver::{DataSocket, DriveReport, Progress, ReceiverSide, SenderSide, Side};
use ferry_engine::io::files::{Destination, SinkLimits};
use ferry_engine::io::source::{self, SourceLimits};
use ferry_engine::io::storage::Storage;
use ferry_engine::io::{ClaimTicket, Claims};
use ferry_engine::rate::RateLimits;
use ferry_engine::session::{Receiver, Sender, SessionConfig, block_size_for_datagram};
use ferry_engine::setup::{self, ClientHello, Direction, HelloError, Refusal, Rules};
use ring::rand::SecureRandom;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::bridge::{self, Cancel, ControlStream, SessionHandle};
use crate::identity::{self, Identity};
use crate::limits::{Admission, Gate, PostAuth, PreAuth, SetupGuard};
use crate::users::Rights;

/// Partial files untouched for this long are left over from a session that ended without
/// cleaning up (a crash): they are removed at start and then every [`SWEEP_EVERY`].
pub const STALE_PARTIAL: Duration = Duration::from_secs(600);
/// How often stale partial files are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// A running session, as [`Registry::list`] shows it.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// The session id.
    pub id: u64,
    /// The client's control address.
    pub peer: SocketAddr,
    /// The client key's fingerprint.
    pub key: String,
    /// The user the policy granted.
    pub user: String,
    /// Upload or download.
    pub direction: Direction,
    /// The path the client asked for (beneath its docroot).
    pub path: String,
    /// The transit cipher.
    pub suite: ferry_engine::crypto::CipherSuite,
    /// How its files are kept at rest (`plain`, `ssear`: [`Storage::at_rest`]).
    pub at_rest: &'static str,
    /// Its target rate, bits/s: the client's, capped by the server at set-up, then as
    /// [`Registry::set_limits`] last set it.
    pub target_rate: u64,
    /// When it started.
    pub started: std::time::SystemTime,
    /// Its latest progress report (about every 250 ms).
    pub progress: Progress,
}

/// The sessions running on a server: what each is doing, and handles to cancel one or change
/// its rate while it runs.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<u64, Running>>,
}

#[derive(Debug)]
struct Running {
    snapshot: SessionSnapshot,
    progress: Arc<Mutex<Progress>>,
    handle: Option<SessionHandle>,
}

impl Registry {
    /// The running sessions, oldest first.
    pub fn list(&self) -> Vec<SessionSnapshot> {
        let sessions = self.sessions.lock().expect("registry lock");
        let mut out: Vec<_> = sessions
            .values()
            .map(|r| {
                let mut s = r.snapshot.clone();
                s.progress = r.progress.lock().expect("progress lock").clone();
                s
            })
            .collect();
        out.sort_by_key(|s| s.started);
        out
    }

    fn handle(&self, id: u64) -> Option<SessionHandle> {
        self.sessions.lock().expect("registry lock").get(&id).and_then(|r| r.handle.clone())
    }

    /// Cancels session `id` (its partial files are removed, its client told `reason`). False if
    /// there is no such session running.
    pub async fn cancel(&self, id: u64, reason: &str) -> bool {
        match self.handle(id) {
            Some(h) => h.cancel(reason.to_owned()).await,
            None => false,
        }
    }

    /// Changes the rate limits of session `id`, either way: a download's sender is this
    /// server; an uploading client is sent a RATE_LIMIT and paces within it (and within its
    /// own `-l`). False if there is no such session running.
    pub async fn set_limits(&self, id: u64, limits: RateLimits) -> bool {
        let Some(h) = self.handle(id) else { return false };
        if !h.set_limits(limits).await {
            return false;
        }
        // What `list` shows is the rate the session runs at now.
        if let Some(r) = self.sessions.lock().expect("registry lock").get_mut(&id) {
            r.snapshot.target_rate = limits.target;
        }
        true
    }

    fn insert(&self, snapshot: SessionSnapshot) -> Arc<Mutex<Progress>> {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let id = snapshot.id;
        let running = Running { snapshot, progress: progress.clone(), handle: None };
        self.sessions.lock().expect("registry lock").insert(id, running);
        progress
    }

    fn set_handle(&self, id: u64, handle: SessionHandle) {
        if let Some(r) = self.sessions.lock().expect("registry lock").get_mut(&id) {
            r.handle = Some(handle);
        }
    }

    fn remove(&self, id: u64) {
        self.sessions.lock().expect("registry lock").remove(&id);
    }
}

/// What happens on a server, for an observer ([`Server::with_observer`]): `ferry serve --json`
/// prints these as events.
#[derive(Debug)]
pub enum ServerEvent<'a> {
    /// A client was authenticated and its session set up; data flows next.
    Started(&'a SessionSnapshot),
    /// A session ended, with its final counters, and why if it failed.
    Ended {
        /// The session as it was listed.
        session: &'a SessionSnapshot,
        /// Its outcome per file and its counters.
        report: &'a DriveReport,
        /// Why it failed (`None`: it completed; files that failed alone are in `report`).
        error: Option<&'a str>,
        /// How long it ran.
        elapsed: Duration,
    },
    /// A client's key was checked for the user it named: accepted, or refused and why (a
    /// signature that does not verify, a user or key the policy does not know).
    Authentication {
        /// The client's address.
        peer: SocketAddr,
        /// The user it named (empty: none).
        user: &'a str,
        /// Its key's fingerprint.
        key: &'a str,
        /// Why it was refused (`None`: accepted).
        refused: Option<&'a str>,
    },
    /// An address had too many failed authentications: its connections are refused, before
    /// any handshake, for `lockout`.
    LockedOut {
        /// The address.
        source: IpAddr,
        /// Its failures within the window.
        failures: u32,
        /// How long it is refused.
        lockout: Duration,
    },
    /// A connection ended before any session started: refused, timed out or closed by the
    /// client during set-up.
    SetupFailed {
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        reason: &'a str,
    },
}

/// Receives [`ServerEvent`]s (from the server's tasks; keep it quick).
pub type ServerObserver = Arc<dyn Fn(ServerEvent<'_>) + Send + Sync>;

/// What a [`Policy`] grants an authenticated client.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who the client is, for logs and the [`Registry`].
    pub user: String,
    /// The directory the client's paths are confined to.
    pub docroot: Arc<Docroot>,
    /// How its files are stored ([`PlainFiles`](ferry_engine::io::storage::PlainFiles) stores them as they are).
    pub storage: Arc<dyn Storage>,
    /// What it may do: directions, ciphers, and the highest target rate of its sessions, on
    /// top of the server's [`Rules`] (the lower rate cap applies).
    pub rights: Rights,
}

impl setup::Permits for Grant {
    fn rate_cap(&self) -> Option<u64> {
        self.rights.rate_cap
    }

    fn permit(
        &self,
        direction: Direction,
        suite: ferry_engine::crypto::CipherSuite,
    ) -> Result<(), String> {
        self.rights.permit(&self.user, direction, suite)
    }
}

/// Decides, per session, who the client is and what it may do.
pub trait Policy: Send + Sync + 'static {
    /// Whether `key` (whose signature has been verified) may start a session as `user` from
    /// `peer` now, and with what. `user` is what the client named (`user@host`), its syntax
    /// checked ([`ferry_keys::check_user_name`]), or empty when it named none: the server's
    /// default user, if it has one. The error is logged; the client only learns that it was
    /// refused.
    fn authorize(&self, user: &str, key: &[u8; 32], peer: IpAddr) -> Result<Grant, String>;
}

/// How a server runs.
#[derive(Debug)]
pub struct ServerOptions {
    /// Address and UDP port to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The server's host key.
    pub identity: Identity,
    /// Limits before authentication.
    pub pre: PreAuth,
    /// Limits after authentication.
    pub post: PostAuth,
    /// What set-up accepts (ciphers, rate cap).
    pub rules: Rules,
    /// Directories whose stale partial files are swept at start and hourly (the users'
    /// docroots).
    pub sweep: Vec<Arc<Docroot>>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS configuration could not be built from the identity.
    #[error("cannot configure TLS: {0}")]
    Tls(String),
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound server, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    cancel_tx: tokio::sync::watch::Sender<Option<&'static str>>,
    sweep: Vec<Arc<Docroot>>,
    fingerprint: String,
}

#[derive(Debug)]
struct Ctx {
    /// The address the server listens on; data sockets share it.
    local: SocketAddr,
    /// Set when the server shuts down.
    cancel: Cancel,
    pre: PreAuth,
    post: PostAuth,
    rules: Rules,
    gate: Arc<Gate>,
    policy: Arc<dyn Policy>,
    registry: Arc<Registry>,
    /// Which upload holds which partial's journal: a newer session of the same user takes one
    /// over from an older session (whose client was killed, say) instead of waiting out its
    /// idle timeout.
    claims: Claims,
    observer: Option<Observed>,
}

/// The observer, shown as such in `Debug`.
struct Observed(ServerObserver);

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerObserver")
    }
}

impl Ctx {
    fn notify(&self, event: ServerEvent<'_>) {
        if let Some(Observed(o)) = &self.observer {
            o(event);
        }
    }
}

impl std::fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy")
    }
}

impl Server {
    /// Binds the listening port. Must be called inside a Tokio runtime.
    pub fn bind(options: ServerOptions, policy: Arc<dyn Policy>) -> Result<Self, ServerError> {
        let ServerOptions { listen, identity, pre, post, rules, sweep } = options;
        let config = crate::tls::server_config(&identity, &pre).map_err(ServerError::Tls)?;
        let cannot = |source| ServerError::Listen { addr: listen, source };
        let socket = crate::sockets::listening_socket(listen).map_err(cannot)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(cannot)?;
        let local = endpoint.local_addr().map_err(cannot)?;
        let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
        let gate = Arc::new(Gate::default());
        let registry = Arc::new(Registry::default());
        let claims = {
            let registry = registry.clone();
            Claims::new(move |id| {
                registry.handle(id).is_some_and(|h| {
                    h.supersede_now(
                        "a newer transfer by the same user to the same destination took over \
                         this one's partial file"
                            .into(),
                    )
                })
            })
        };
        let ctx = Arc::new(Ctx {
            local,
            cancel,
            pre,
            post,
            rules,
            gate,
            policy,
            registry,
            claims,
            observer: None,
        });
        Ok(Self { endpoint, ctx, cancel_tx, sweep, fingerprint: identity.fingerprint() })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local
    }

    /// The host key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Tells `observer` what happens: sessions started and ended, set-ups that failed.
    pub fn with_observer(mut self, observer: ServerObserver) -> Self {
        Arc::get_mut(&mut self.ctx).expect("the server is not running yet").observer =
            Some(Observed(observer));
        self
    }

    /// The sessions running on it.
    pub fn registry(&self) -> Arc<Registry> {
        self.ctx.registry.clone()
    }

    /// Serves until `shutdown` resolves (with a reason), then ends every session (removing its
    /// partial files and telling its client why) and closes the endpoint.
    pub async fn run(self, shutdown: impl std::future::Future<Output = &'static str>) {
        let sweeper = tokio::spawn(sweep_forever(self.sweep.clone()));
        let reason = accept_loop(&self.endpoint, &self.ctx, shutdown).await;
        sweeper.abort();
        self.shutdown(reason).await;
    }

    async fn shutdown(&self, reason: &str) {
        let (setup, sessions) = self.ctx.gate.load();
        info!("{reason}: ending {sessions} sessions ({setup} connections in set-up)");
        let _ = self.cancel_tx.send(Some("the server is shutting down"));
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.ctx.gate.load().1 > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!("stopped");
    }
}

/// Accepts connections until `shutdown`, each in its own task; returns why it stopped.
async fn accept_loop(
    endpoint: &quinn::Endpoint,
    ctx: &Arc<Ctx>,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> &'static str {
    tokio::pin!(shutdown);
    let mut refused_logged = Instant::now() - Duration::from_secs(60);
    loop {
        let incoming = tokio::select! {
            reason = &mut shutdown => return reason,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return "the endpoint closed" };
        let peer = incoming.remote_address();
        if let Some(left) = ctx.gate.locked_out(peer.ip(), Instant::now()) {
            if refused_logged.elapsed() >= Duration::from_secs(1) {
                warn!("{peer}: connection refused: locked out for {}s more", left.as_secs());
                refused_logged = Instant::now();
            }
            incoming.refuse();
            continue;
        }
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
                    warn!("{peer}: connection refused: {why}");
                    refused_logged = Instant::now();
                }
                incoming.refuse();
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(incoming, &ctx, guard).await {
                warn!("{peer}: {e}");
            }
        });
    }
}

/// Removes stale partial files now and then, off the runtime.
async fn sweep_forever(docroots: Vec<Arc<Docroot>>) {
    loop {
        // Files of multi-session uploads whose parts stopped coming.
        let _ = tokio::task::spawn_blocking(ferry_engine::io::assembly::sweep_orphans).await;
        for docroot in &docroots {
            let root = docroot.clone();
            let swept = tokio::task::spawn_blocking(move || {
                ferry_engine::io::files::sweep_partials(&root, STALE_PARTIAL)
            })
            .await;
            let at = docroot.path().display();
            match swept {
                Ok(Ok(s)) if s.removed > 0 => {
                    info!("{at}: removed {} stale partial files of earlier sessions", s.removed)
                }
                Ok(Err(e)) => warn!("{at}: sweeping stale partial files failed: {e}"),
                _ => {}
            }
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// An authenticated client, its control stream and the session negotiated.
struct Authenticated {
    conn: quinn::Connection,
    stream: ControlStream,
    hello: ClientHello,
    plan: setup::Plan,
    fingerprint: String,
    grant: Grant,
}

async fn handle(incoming: quinn::Incoming, ctx: &Ctx, guard: SetupGuard) -> Result<(), String> {
    let peer = incoming.remote_address();
    match admit(incoming, ctx, guard).await {
        Ok(admitted) => run(admitted, ctx).await,
        Err(reason) => {
            ctx.notify(ServerEvent::SetupFailed { peer, reason: &reason });
            Err(reason)
        }
    }
}

/// A session set up and told so (SERVER_HELLO sent), about to run.
struct Admitted {
    conn: quinn::Connection,
    stream: ControlStream,
    prepared: Prepared,
    snapshot: SessionSnapshot,
    /// Held while the session runs (the session limits: in all, per key, user and address).
    key_guard: crate::limits::SessionGuard,
}

/// Everything before data flows: set-up within its deadline, the session limits, the
/// policy's storage and paths, the reply.
async fn admit(
    incoming: quinn::Incoming,
    ctx: &Ctx,
    guard: SetupGuard,
) -> Result<Admitted, String> {
    let peer = incoming.remote_address();
    let deadline = ctx.pre.setup_timeout;
    let auth = match tokio::time::timeout(deadline, set_up(incoming, ctx)).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("no authenticated set-up within {deadline:?}: closed")),
    };
    // Set up: no longer counted against the limits on connections in set-up.
    drop(guard);
    let Authenticated { conn, mut stream, hello, plan, fingerprint, grant } = auth;
    let key_guard =
        match ctx.gate.start_session(hello.public_key, &grant.user, peer.ip(), &ctx.post) {
            Ok(g) => g,
            Err(why) => {
                bridge::send_abort(&mut stream.send, Refusal::Busy(why.clone()).code(), &why).await;
                return Err(format!("key {fingerprint}: refused: {why}"));
            }
        };
    let what = match hello.direction {
        Direction::Upload => "upload to",
        Direction::Download => "download of",
    };
    let user = escape(&grant.user, 64);
    info!("{peer}: authenticated {fingerprint} as {user}, {what} {}", escape(&hello.path, 200));
    let (session_id, suite, target_rate) = (plan.session_id, plan.suite, plan.limits.target);
    let prepared = match prepare(ctx, &conn, plan, &grant).await {
        Ok(p) => p,
        Err(r) => {
            bridge::send_abort(&mut stream.send, r.code(), &r.to_string()).await;
            return Err(format!("session refused: {r}"));
        }
    };
    stream.send.write_all(&prepared.reply).await.map_err(|e| e.to_string())?;
    let snapshot = SessionSnapshot {
        id: session_id,
        peer,
        key: fingerprint,
        user: grant.user,
        direction: hello.direction,
        path: hello.path,
        suite,
        at_rest: grant.storage.at_rest(),
        target_rate,
        started: std::time::SystemTime::now(),
        progress: Progress::default(),
    };
    Ok(Admitted { conn, stream, prepared, snapshot, key_guard })
}

/// Runs an admitted session, listed in the registry while it runs.
async fn run(admitted: Admitted, ctx: &Ctx) -> Result<(), String> {
    let Admitted { conn, stream, prepared, snapshot, key_guard } = admitted;
    let (session_id, peer) = (snapshot.id, snapshot.peer);
    let started = Instant::now();
    ctx.notify(ServerEvent::Started(&snapshot));
    let progress = ctx.registry.insert(snapshot.clone());
    let on_progress = Box::new(move |p: &Progress| *progress.lock().expect("progress") = p.clone());
    let registry = ctx.registry.clone();
    let on_start = move |h| registry.set_handle(session_id, h);
    let (result, report) = bridge::run_session(
        stream,
        prepared.side,
        prepared.socket,
        on_progress,
        ctx.cancel.clone(),
        on_start,
    )
    .await;
    ctx.registry.remove(session_id);
    // Let the client close the connection (it has the last word), bounded.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    drop(key_guard);
    log_end(peer, session_id, started, &report);
    let result = result.map_err(|e| format!("session {session_id:016x} failed: {e}"));
    let error = result.as_ref().err().map(String::as_str);
    let elapsed = started.elapsed();
    ctx.notify(ServerEvent::Ended { session: &snapshot, report: &report, error, elapsed });
    result
}

fn log_end(peer: SocketAddr, session_id: u64, started: Instant, report: &DriveReport) {
    let failed: Vec<_> = report.files.iter().filter(|f| !f.reason.is_empty()).collect();
    for f in failed.iter().take(20) {
        warn!("session {session_id:016x}: {}: {}", escape(&f.path, 200), f.reason);
    }
    let secs = started.elapsed().as_secs_f64();
    info!(
        "{peer}: session {session_id:016x} ended, {} files ({} failed) in {secs:.2} s",
        report.files.len(),
        failed.len()
    );
}

/// Handshake, control stream, hello, and the sans-IO negotiation (version, signature, the
/// policy's verdict on the key, parameters, path syntax): everything that must happen within the
/// set-up deadline.
async fn set_up(incoming: quinn::Incoming, ctx: &Ctx) -> Result<Authenticated, String> {
    let conn = incoming
        .accept()
        .map_err(|e| format!("handshake failed: {e}"))?
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    let peer = conn.remote_address();
    let (mut send, mut recv) =
        conn.accept_bi().await.map_err(|e| format!("control stream: {e}"))?;
    let (t, payload, leftover) = bridge::read_frame(&mut recv).await.map_err(|e| e.to_string())?;
    let decoded = match t {
        setup::T_CLIENT_HELLO => ClientHello::decode(&payload).map_err(|e| match e {
            HelloError::Malformed(_) => Refusal::Protocol,
            e => Refusal::Parameters(e.to_string()),
        }),
        _ => Err(Refusal::Protocol),
    };
    let mut exporter = [0u8; 32];
    conn.export_keying_material(&mut exporter, setup::AUTH_EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    let mut id = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut id).map_err(|_| "no randomness".to_string())?;
    // The policy's verdict is told as it is given; a refusal before it (a signature that does
    // not verify, a user name no server could have) is told below.
    let asked = std::cell::Cell::new(false);
    let outcome = decoded.and_then(|hello| {
        let authorize = |user: &str, key: &[u8; 32]| {
            asked.set(true);
            let verdict = ctx.policy.authorize(user, key, peer.ip());
            let fp = identity::fingerprint(key);
            let refused = verdict.as_ref().err().map(String::as_str);
            ctx.notify(ServerEvent::Authentication { peer, user, key: &fp, refused });
            verdict
        };
        let (mut plan, grant) =
            setup::negotiate(&hello, &exporter, u64::from_be_bytes(id), &ctx.rules, authorize)?;
        // Datagrams no larger than this end's route to the client carries unfragmented (the
        // client chose by its own route; the data of a download travels this one).
        if let Some(datagram) = ferry_engine::io::driver::route_datagram_limit(peer) {
            plan.block_size = plan.block_size.min(block_size_for_datagram(datagram));
        }
        Ok((hello, plan, grant))
    });
    match outcome {
        Ok((hello, plan, grant)) => {
            let stream = ControlStream { send, recv, leftover };
            let fingerprint = identity::fingerprint(&hello.public_key);
            Ok(Authenticated { conn, stream, hello, plan, fingerprint, grant })
        }
        Err(r) => {
            if matches!(r, Refusal::Authentication(_)) {
                // Counted before the client hears of it, so its next attempt already finds
                // the lockout this failure may start.
                count_failure(ctx, peer);
            }
            bridge::send_abort(&mut send, r.code(), &r.to_string()).await;
            Err(match r {
                Refusal::Authentication(why) => {
                    let hello = ClientHello::decode(&payload).ok();
                    let fp = hello
                        .as_ref()
                        .map_or_else(|| "?".into(), |h| identity::fingerprint(&h.public_key));
                    if !asked.get() {
                        let user = hello.as_ref().map_or("", |h| h.user.as_str());
                        let (key, refused) = (fp.as_str(), Some(why.as_str()));
                        ctx.notify(ServerEvent::Authentication { peer, user, key, refused });
                    }
                    format!("authentication refused for key {fp}: {why}")
                }
                Refusal::UnsupportedVersion => "no common version".into(),
                r => format!("session refused: {r}"),
            })
        }
    }
}

/// Counts a failed authentication against `peer`'s address, and tells of a lockout it starts.
fn count_failure(ctx: &Ctx, peer: SocketAddr) {
    let l = &ctx.pre.auth_failures;
    if let Some(failures) = ctx.gate.auth_failed(peer.ip(), Instant::now(), l) {
        let source = peer.ip();
        warn!(
            "{source}: locked out for {}s after {failures} failed authentications",
            l.lockout.as_secs()
        );
        ctx.notify(ServerEvent::LockedOut { source, failures, lockout: l.lockout });
    }
}

/// What an accepted session runs with.
struct Prepared {
    reply: Vec<u8>,
    side: Box<dyn Side + Send>,
    socket: DataSocket,
}

/// The I/O half of set-up, after [`setup::negotiate`]: the data socket, the session secret,
/// then the sink (resolving the destination) or the source (listing, off the runtime).
async fn prepare(
    ctx: &Ctx,
    conn: &quinn::Connection,
    plan: setup::Plan,
    grant: &Grant,
) -> Result<Prepared, Refusal> {
    let mut config = plan.config();
    config.initial_rtt = conn.rtt().max(Duration::from_millis(1));
    config.max_files = ctx.post.max_files;
    config.max_manifest_bytes = ctx.post.max_manifest_bytes;
    let socket = data_socket(ctx, conn.remote_address(), plan.data_port)?;
    let secret = {
        let mut s = Zeroizing::new([0u8; 32]);
        let context = plan.session_id.to_be_bytes();
        conn.export_keying_material(s.as_mut(), setup::SESSION_EXPORTER_LABEL, &context)
            .map_err(|_| Refusal::Server("TLS exporter unavailable".into()))?;
        SessionSecret::new(*s)
    };
    let reply_hello = plan.reply(ctx.local.port());
    let side = match plan.direction {
        Direction::Upload => receiver(ctx, grant, config, &secret, &plan)?,
        Direction::Download => sender(ctx, grant, config, &secret, plan).await?,
    };
    let mut reply = Vec::new();
    reply_hello.encode(&mut reply);
    Ok(Prepared { reply, side, socket })
}

/// The session's data socket: on the listening port (SO_REUSEPORT), connected to the client's
/// data address, so it takes that address's datagrams while everything else still reaches QUIC.
fn data_socket(ctx: &Ctx, peer: SocketAddr, port: u16) -> Result<DataSocket, Refusal> {
    let fail = |what: &str, e: std::io::Error| {
        warn!("{peer}: {what}: {e}");
        Refusal::Server("the server could not set up the data path".into())
    };
    let socket = crate::sockets::data_port_socket(ctx.local)
        .map_err(|e| fail("cannot bind a data socket", e))?;
    socket
        .connect(SocketAddr::new(peer.ip(), port))
        .map_err(|e| fail("cannot connect the data socket", e))?;
    DataSocket::new(socket).map_err(|e| fail("data socket", e))
}

fn receiver(
    ctx: &Ctx,
    grant: &Grant,
    config: SessionConfig,
    secret: &SessionSecret,
    plan: &setup::Plan,
) -> Result<Box<dyn Side + Send>, Refusal> {
    let root = &grant.docroot;
    let replace = grant.rights.overwrite;
    let dest = upload_destination(
        root,
        plan.path.clone(),
        plan.wants_dir,
        plan.may_name_file,
        plan.create_dir,
        replace || plan.overwrite != Overwrite::Keep || plan.resume > 0,
    )?;
    let limits = SinkLimits {
        max_open: ctx.post.max_open_files,
        replace,
        overwrite: plan.overwrite,
        preserve_mtime: plan.preserve_times,
        resume: plan.resume > 0,
        partial_suffix: plan.partial_suffix.clone(),
        chunk_check: None,
        claims: Some(ClaimTicket {
            claims: ctx.claims.clone(),
            owner: grant.user.clone(),
            session: plan.session_id,
        }),
    };
    let sink = grant.storage.sink(root.clone(), dest, limits).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            // The storage refuses the destination's name (its message quotes only that).
            return Refusal::Path(e.to_string());
        }
        warn!("storage for {}: {e}", escape(&grant.user, 64));
        if e.kind() == std::io::ErrorKind::PermissionDenied && grant.storage.at_rest() == "ssear" {
            // The at-rest key refuses: the log has the keystore's reason and the fix.
            return Refusal::Server(format!(
                "the server encrypts {}'s files at rest and cannot use its key right now, so \
                 nothing was stored; ask the server's administrator (the server's log says why)",
                grant.user
            ));
        }
        Refusal::Server("the server cannot store files for this session".into())
    })?;
    let mut receiver = Receiver::new(config, secret, Instant::now())
        .map_err(|e| Refusal::Parameters(e.to_string()))?;
    // The uploading client paces within what was negotiated (the caps of the rules and the
    // grant): its first control message from us says so.
    receiver.set_limits(plan.limits);
    Ok(Box::new(ReceiverSide { receiver, sink }))
}

/// The sender of a download; the listing runs off the async runtime.
async fn sender(
    ctx: &Ctx,
    grant: &Grant,
    config: SessionConfig,
    secret: &SessionSecret,
    plan: setup::Plan,
) -> Result<Box<dyn Side + Send>, Refusal> {
    let (rel, share, level) = (plan.path, plan.share, plan.resume);
    let limits =
        SourceLimits { max_files: ctx.post.max_files as usize, max_open: ctx.post.max_open_files };
    let shown = rel.shown();
    let root = grant.docroot.clone();
    let (storage, user) = (grant.storage.clone(), grant.user.clone());
    // Listing and the storage's look at each file (SSEAR reads headers and the keystore) are
    // blocking: off the async runtime.
    let outgoing = tokio::task::spawn_blocking(move || {
        let list = source::list(&root, &rel, limits).map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                format!("{shown} does not exist on the server")
            } else {
                format!("{shown} cannot be sent: {e}")
            };
            Refusal::Path(why)
        })?;
        // One session of a multi-session download sends its share of the listing. Files kept
        // in a form only read whole (encrypted at rest) are dealt out whole.
        let list = match share {
            Some(sh) => {
                let threshold = if storage.at_rest() == "plain" { sh.threshold } else { u64::MAX };
                let mut shares = source::shares(list, sh.count.into(), threshold, sh.transfer);
                shares.swap_remove(sh.index.into())
            }
            None => list,
        };
        let mut out = storage.source(list, limits).map_err(|e| {
            warn!("storage for {}: {e}", escape(&user, 64));
            match e.kind() {
                // Revocation: the message names the file (beneath the docroot) and the key's
                // state, nothing of the server's.
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidData => {
                    Refusal::Server(format!("{e}; ask the server's administrator"))
                }
                _ => Refusal::Server("the server cannot read files for this session".into()),
            }
        })?;
        // -k 2 and 3: each file's checksum, for the client to compare with a copy it has.
        let sums = out.sums(level);
        Ok::<_, Refusal>((out, sums))
    })
    .await
    .map_err(|_| Refusal::Server("listing failed".into()))??;
    let (outgoing, sums) = outgoing;
    let factory = plan.policy.factory();
    let mut sender = Sender::new(config, secret, factory.as_ref(), Instant::now())
        .map_err(|e| Refusal::Parameters(e.to_string()))?;
    for (entry, sum) in outgoing.entries.into_iter().zip(sums) {
        sender.add_file_summed(entry, sum);
    }
    sender.finish_manifest();
    Ok(Box::new(SenderSide { sender, source: outgoing.source }))
}

/// Where an upload to `rel` lands: into it when it is a directory; as that very name when the
/// client may name its single file and `rel`'s parent is a directory (and `rel` did not end in
/// `/`). Nothing is created here.
fn upload_destination(
    root: &Docroot,
    rel: RelPath,
    wants_dir: bool,
    may_name_file: bool,
    create_dir: bool,
    // Whether an existing single file can be decided for once it is announced (replaced,
    // skipped or failed by the sink): a policy could keep or replace it.
    decided_per_file: bool,
) -> Result<Destination, Refusal> {
    let path_refusal = Refusal::Path;
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
        // The single file the client names exists: decided for the file (replaced at the end,
        // skipped or failed) when a policy could keep or replace it, else refused now
        // (PROTOCOL 8.2).
        Some(Kind::File) if may_name_file && decided_per_file => {
            return Ok(Destination::File(rel));
        }
        Some(_) if may_name_file => return Err(Refusal::Exists(rel.shown().to_string())),
        _ => {}
    }
    if create_dir {
        // `-d`: the destination is a directory, made here (beneath the docroot, through its
        // descriptors, no link followed) with whatever parents it lacks.
        root.create_dirs(&rel).map_err(|e| {
            path_refusal(format!("cannot create the directory {}: {e}", rel.shown()))
        })?;
        return Ok(Destination::Dir(rel));
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
