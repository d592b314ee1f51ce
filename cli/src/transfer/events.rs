//! What `ferry serve` tells about itself: the `--json` lines on stdout and the audit log's
//! records, from one description of each event (README.md, "ferry serve --json" and "Audit
//! log").

use std::sync::Arc;

use ferry_engine::setup::Direction;
use ferry_net::server::{ServerEvent, ServerObserver, SessionSnapshot};
use serde_json::{Value, json};

use super::audit::Audit;
use super::progress::emit;

/// Where events go.
#[derive(Debug, Clone)]
pub(crate) struct Tell {
    /// JSON lines on stdout (`--json`).
    pub(crate) json: bool,
    /// The audit log, if there is one.
    pub(crate) audit: Option<Arc<Audit>>,
}

impl Tell {
    /// Tells `name` with `fields` (an object).
    pub(crate) fn event(&self, name: &str, fields: Value) {
        if let Some(a) = &self.audit {
            a.record(name, fields.clone());
        }
        if self.json {
            emit(name, fields);
        }
    }

    /// The server's observer: every [`ServerEvent`], told.
    pub(crate) fn observer(self) -> ServerObserver {
        Arc::new(move |e: ServerEvent<'_>| {
            let (name, fields) = describe(&e);
            self.event(name, fields);
        })
    }
}

/// An event's name and fields.
fn describe(event: &ServerEvent<'_>) -> (&'static str, Value) {
    match event {
        ServerEvent::Authentication { peer, user, key, refused } => (
            "authentication",
            json!({
                "peer": peer.to_string(),
                "user": user,
                "key": key,
                "result": if refused.is_some() { "refused" } else { "accepted" },
                "reason": refused,
            }),
        ),
        ServerEvent::Started(s) => {
            let mut fields = session_fields(s);
            fields["target_rate_bps"] = json!(s.target_rate);
            ("session_started", fields)
        }
        ServerEvent::Ended { session: s, report, error, elapsed } => {
            let seconds = elapsed.as_secs_f64();
            let rate = if seconds > 0.0 { report.side.bytes as f64 * 8.0 / seconds } else { 0.0 };
            let failed = report.files.iter().filter(|f| !f.reason.is_empty()).count();
            let mut fields = session_fields(s);
            let outcome = json!({
                "files": report.files.len(),
                "failed_files": failed,
                "bytes": report.side.bytes,
                "seconds": (seconds * 1e3).round() / 1e3,
                "rate_bps": rate.round(),
                "result": if error.is_some() { "failed" } else { "completed" },
                "error": error,
            });
            if let (Value::Object(f), Value::Object(o)) = (&mut fields, outcome) {
                f.extend(o);
            }
            ("session_ended", fields)
        }
        ServerEvent::LockedOut { source, failures, lockout } => (
            "lockout",
            json!({
                "source": source.to_string(),
                "failures": failures,
                "seconds": lockout.as_secs(),
            }),
        ),
        ServerEvent::SetupFailed { peer, reason } => {
            ("setup_failed", json!({ "peer": peer.to_string(), "reason": reason }))
        }
    }
}

/// What a session's start and end both say of it.
fn session_fields(s: &SessionSnapshot) -> Value {
    json!({
        "session": format!("{:016x}", s.id),
        "peer": s.peer.to_string(),
        "key": s.key,
        "user": s.user,
        "direction": direction(s.direction),
        "path": s.path,
        "cipher": s.suite.name(),
        "at_rest": s.at_rest,
    })
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Upload => "upload",
        Direction::Download => "download",
    }
}
