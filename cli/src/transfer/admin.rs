//! The daemon's local admin socket and the commands that use it: `ferry serve status`, `ferry
//! serve rate SESSION RATE`, `ferry serve cancel SESSION`.
//!
//! The socket is a Unix stream socket, mode 0600, owned by the daemon's account (and a
//! connecting process must run as that account or root: checked with `SO_PEERCRED`). One
//! request per connection, one JSON line each way:
//! `{"op":"status"}` -> `{"sessions":[...]}`;
//! `{"op":"rate","session":"HEX","target_rate_bps":N}` and
//! `{"op":"cancel","session":"HEX","reason":"..."}` -> `{"ok":true}`; any failure ->
//! `{"error":"..."}`. Connections are bounded in number, request size and time.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_engine::rate::RateLimits;
use ferry_net::server::{Registry, SessionSnapshot};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::CliError;
use crate::exit::Exit;

/// Admin connections served at once.
const MAX_CLIENTS: usize = 8;
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// Time a connection has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket's default place: beside the host key.
pub(crate) fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

/// Binds the socket at `path` (replacing a stale socket, never a live one or another kind of
/// file), 0600.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, CliError> {
    let fail = |what: String| {
        CliError::new(Exit::Local, what)
            .hint("give the admin socket a path in a directory of this account (admin_socket)")
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail(format!(
                    "another ferry serve is running with the admin socket {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(|e| fail(format!("cannot replace {}: {e}", path.display())))?;
        }
        Ok(_) => {
            return Err(fail(format!("{} exists and is not a socket", path.display())));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("cannot restrict {}: {e}", path.display())))?;
    Ok(listener)
}

/// Serves admin requests until the task is dropped.
pub(crate) async fn serve(listener: UnixListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning on the error.
                super::log::line(format_args!("admin socket: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Over the limit, the connection is closed unanswered (the command says so).
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
        });
    }
}

async fn answer(stream: UnixStream, registry: &Registry) -> std::io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let reply = if uid != me && uid != 0 {
        json!({ "error": "only the server's account or root may use its admin socket" })
    } else {
        let mut line = String::new();
        let mut limited = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST as u64));
        limited.read_line(&mut line).await?;
        match serde_json::from_str::<Value>(&line) {
            Ok(req) => handle(&req, registry).await,
            Err(e) => json!({ "error": format!("not a JSON request: {e}") }),
        }
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    write.shutdown().await
}

async fn handle(req: &Value, registry: &Registry) -> Value {
    let session = || {
        req["session"]
            .as_str()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or("give the session id (hex, as `ferry serve status` shows it)")
    };
    let result = match req["op"].as_str() {
        Some("status") => {
            let sessions: Vec<Value> = registry.list().iter().map(describe).collect();
            return json!({ "sessions": sessions });
        }
        Some("rate") => match (session(), req["target_rate_bps"].as_u64()) {
            (Ok(id), Some(target)) if target > 0 => {
                let limits = RateLimits { target, min: 0 };
                registry.set_limits(id, limits).await.then_some(()).ok_or("no such session")
            }
            (Err(e), _) => Err(e),
            _ => Err("give target_rate_bps, above 0"),
        },
        Some("cancel") => match session() {
            Ok(id) => {
                let reason = req["reason"].as_str().unwrap_or("cancelled by the operator");
                let reason = super::log::sanitize(reason);
                registry.cancel(id, &reason).await.then_some(()).ok_or("no such session")
            }
            Err(e) => Err(e),
        },
        _ => Err("unknown op: status, rate or cancel"),
    };
    match result {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "error": e }),
    }
}

/// One running session, as `status` lists it.
fn describe(s: &SessionSnapshot) -> Value {
    let p = &s.progress;
    let seconds = p.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { p.side.bytes as f64 * 8.0 / seconds } else { 0.0 };
    let eta = (rate > 0.0 && p.total_bytes > p.side.bytes)
        .then(|| ((p.total_bytes - p.side.bytes) as f64 * 8.0 / rate).round());
    let started = s.started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({
        "session": format!("{:016x}", s.id),
        "user": s.user,
        "peer": s.peer.to_string(),
        "direction": match s.direction {
            ferry_engine::setup::Direction::Upload => "upload",
            ferry_engine::setup::Direction::Download => "download",
        },
        "path": s.path,
        "bytes": p.side.bytes,
        "total_bytes": p.total_bytes,
        "rate_bps": rate.round(),
        "target_rate_bps": s.target_rate,
        "eta_s": eta,
        "started": ferry_keystore::time::rfc3339(started as i64),
    })
}

/// Sends one request to the socket at `path` and returns the reply.
pub(crate) fn request(path: &Path, req: &Value) -> Result<Value, CliError> {
    use std::io::{BufRead, Write};
    let fail = |e: std::io::Error| {
        CliError::new(Exit::Connect, format!("cannot reach the server at {}: {e}", path.display()))
            .hint("is `ferry serve` running? run this as its account, with its --config or --admin-socket")
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
    stream.write_all(format!("{req}\n").as_bytes()).map_err(fail)?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(fail)?;
    if line.is_empty() {
        return Err(CliError::new(
            Exit::Busy,
            format!("the server at {} closed the admin connection unanswered", path.display()),
        )
        .hint("it answers a few admin connections at once: try again in a moment"));
    }
    let reply: Value = serde_json::from_str(&line)
        .map_err(|e| CliError::new(Exit::Failed, format!("the server answered {line:?}: {e}")))?;
    if let Some(e) = reply["error"].as_str() {
        return Err(CliError::new(Exit::Failed, format!("the server refused: {e}"))
            .hint("`ferry serve status` lists the running sessions and their ids"));
    }
    Ok(reply)
}
