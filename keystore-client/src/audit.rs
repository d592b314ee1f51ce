//! Audit records: one per change and per read of a secret, in the keystore's `audit` table and,
//! as a JSON line, in the audit log beside the keystore (`<name>.audit.jsonl`, mode 0600).
//! Records name who, what, which version and when; they never contain a secret value.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::time::rfc3339;

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Row id in the audit table (monotonic).
    pub id: i64,
    /// When (Unix seconds).
    pub ts: i64,
    /// When, as RFC 3339 UTC.
    pub time: String,
    /// Who: the actor label given when the keystore was opened, plus uid and pid.
    pub actor: String,
    /// What: `create`, `put`, `generate`, `state`, `min-decryption-version`, `read`, `export`,
    /// `sync`.
    pub op: String,
    /// The owner (`*` for shared), when the record concerns a secret.
    pub owner: Option<String>,
    /// The category, when the record concerns a secret.
    pub category: Option<String>,
    /// The version, when the record concerns one version.
    pub version: Option<u32>,
    /// State before a transition.
    pub from_state: Option<String>,
    /// State after a transition (or of a new version).
    pub to_state: Option<String>,
    /// Free-form detail (never a value).
    pub detail: Option<String>,
}

/// A record about to be written (the id and time are assigned on insert).
#[derive(Debug, Default)]
pub(crate) struct NewRecord<'a> {
    pub op: &'a str,
    pub owner: Option<&'a str>,
    pub category: Option<&'a str>,
    pub version: Option<u32>,
    pub from_state: Option<&'a str>,
    pub to_state: Option<&'a str>,
    pub detail: Option<String>,
}

/// Inserts `rec` in the audit table (inside the caller's transaction) and returns the stored
/// record, to be appended to the log once the transaction commits.
pub(crate) fn insert(
    conn: &Connection,
    ts: i64,
    actor: &str,
    rec: NewRecord<'_>,
) -> rusqlite::Result<AuditRecord> {
    conn.execute(
        "INSERT INTO audit (ts, actor, op, owner, category, version, from_state, to_state, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            ts,
            actor,
            rec.op,
            rec.owner,
            rec.category,
            rec.version,
            rec.from_state,
            rec.to_state,
            rec.detail
        ],
    )?;
    Ok(AuditRecord {
        id: conn.last_insert_rowid(),
        ts,
        time: rfc3339(ts),
        actor: actor.to_owned(),
        op: rec.op.to_owned(),
        owner: rec.owner.map(str::to_owned),
        category: rec.category.map(str::to_owned),
        version: rec.version,
        from_state: rec.from_state.map(str::to_owned),
        to_state: rec.to_state.map(str::to_owned),
        detail: rec.detail,
    })
}

/// Reads the most recent `limit` records, oldest first.
pub(crate) fn read(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<AuditRecord>> {
    let mut stmt = conn.prepare(
        "SELECT id, ts, actor, op, owner, category, version, from_state, to_state, detail \
         FROM audit ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        let ts: i64 = r.get(1)?;
        Ok(AuditRecord {
            id: r.get(0)?,
            ts,
            time: rfc3339(ts),
            actor: r.get(2)?,
            op: r.get(3)?,
            owner: r.get(4)?,
            category: r.get(5)?,
            version: r.get(6)?,
            from_state: r.get(7)?,
            to_state: r.get(8)?,
            detail: r.get(9)?,
        })
    })?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    out.reverse();
    Ok(out)
}

/// Appends records to the JSON-lines log, one `write` per record (O_APPEND keeps concurrent
/// writers' lines whole). The log is opened without following a symbolic link or blocking on a
/// FIFO (created with mode 0600 if missing), and checked through its descriptor: a regular file,
/// private, owned by this user. Anything else at its name is refused, never written through.
/// (Root never writes a user's log as root: it acts in users' directories with the user's
/// credentials, see `docs/KEYSTORE.md`.)
pub(crate) fn append_log(path: &Path, records: &[AuditRecord]) -> std::io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    use crate::fsutil::libc_flags;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::NONBLOCK)
        .open(path)
        .map_err(|e| std::io::Error::other(crate::fsutil::not_followed(path, e)))?;
    crate::fsutil::check_open_file(&f, path).map_err(std::io::Error::other)?;
    for r in records {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
    }
    Ok(())
}
