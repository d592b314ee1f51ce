//! The server's audit log: one JSON object per line, appended to a file only the server's
//! account can read (created 0600; an existing one that others can read, a link or anything
//! but a regular file of this account is refused). Records carry `time` (RFC 3339, UTC) and
//! `event`, then the fields of the event (README.md, "Audit log"); never key material or
//! secrets. A writer thread owns the file, so no server task waits on the disk: records go
//! through a bounded queue, and when it is full they are counted and the count is logged as an
//! `audit_dropped` record. The file is rotated by size (`FILE` to `FILE.1` ... `FILE.N`) and
//! reopened on SIGHUP (for an outside rotation).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use serde_json::{Value, json};

/// Records queued for the writer at most.
const QUEUE: usize = 4096;

/// Where and how big.
#[derive(Debug, Clone)]
pub(crate) struct AuditOptions {
    pub(crate) path: PathBuf,
    /// Rotate when the file would grow past this.
    pub(crate) max_bytes: u64,
    /// Rotated files kept (`FILE.1` newest).
    pub(crate) keep: u32,
}

enum Msg {
    Record(Value),
    Reopen,
}

/// The log's sending end.
#[derive(Debug)]
pub(crate) struct Audit {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Audit {
    /// Opens (or creates) the log and starts its writer.
    pub(crate) fn open(options: AuditOptions) -> Result<Arc<Self>, String> {
        let file = open_private(&options.path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("ferry-audit".into())
            .spawn(move || write_loop(options, file, rx, counter))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Arc::new(Self { tx, dropped }))
    }

    /// Appends `event` with `fields` (an object) and the time.
    pub(crate) fn record(&self, event: &str, fields: Value) {
        let mut record = json!({ "time": super::log::timestamp(), "event": event });
        if let (Value::Object(r), Value::Object(f)) = (&mut record, fields) {
            r.extend(f);
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Record(record)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reopens the file (after an outside rotation).
    pub(crate) fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }
}

/// Opens `path` for appending without following a link, creating it 0600; refuses a file that
/// is not a regular file of this account or that others may read or write.
fn open_private(path: &Path) -> Result<File, String> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| format!("audit log {}: {e}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "the audit log {} is not a private file of this account (mode {:o}, owner uid {})",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid()
        ));
    }
    Ok(file)
}

fn write_loop(options: AuditOptions, mut file: File, rx: Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let mut size = file.metadata().map_or(0, |m| m.len());
    for msg in rx {
        let record = match msg {
            Msg::Reopen => {
                match open_private(&options.path) {
                    Ok(f) => {
                        size = f.metadata().map_or(0, |m| m.len());
                        file = f;
                    }
                    Err(e) => super::log::line(format_args!("audit log not reopened: {e}")),
                }
                continue;
            }
            Msg::Record(r) => r,
        };
        let mut text = String::new();
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let note =
                json!({ "time": super::log::timestamp(), "event": "audit_dropped", "count": lost });
            text.push_str(&format!("{note}\n"));
        }
        text.push_str(&format!("{record}\n"));
        if size + text.len() as u64 > options.max_bytes && size > 0 {
            match rotate(&options) {
                Ok(f) => {
                    file = f;
                    size = 0;
                }
                Err(e) => super::log::line(format_args!("audit log not rotated: {e}")),
            }
        }
        match file.write_all(text.as_bytes()) {
            Ok(()) => size += text.len() as u64,
            Err(e) => super::log::line(format_args!("audit log write failed: {e}")),
        }
    }
}

/// `FILE.{keep-1}` to `FILE.{keep}`, ..., `FILE` to `FILE.1`, and a new `FILE`.
fn rotate(o: &AuditOptions) -> Result<File, String> {
    let numbered = |i: u32| {
        let mut p = o.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    for i in (1..o.keep).rev() {
        let _ = std::fs::rename(numbered(i), numbered(i + 1));
    }
    if o.keep > 0 {
        std::fs::rename(&o.path, numbered(1)).map_err(|e| e.to_string())?;
    } else {
        std::fs::remove_file(&o.path).map_err(|e| e.to_string())?;
    }
    open_private(&o.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(p: &Path) -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn appends_rotates_and_refuses_shared_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let options = AuditOptions { path: path.clone(), max_bytes: 2000, keep: 2 };
        let audit = Audit::open(options).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        for i in 0..60 {
            audit.record("test", json!({ "n": i, "pad": "x".repeat(40) }));
        }
        drop(audit);
        let start = std::time::Instant::now();
        let numbered = |i: u32| dir.path().join(format!("audit.jsonl.{i}"));
        // The writer drains its queue after the sender is gone.
        while records(&path).last().is_none_or(|r| r["n"] != 59) {
            assert!(start.elapsed().as_secs() < 10, "the writer did not finish");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for p in [path.clone(), numbered(1), numbered(2)] {
            let rs = records(&p);
            assert!(!rs.is_empty(), "{}", p.display());
            assert!(std::fs::metadata(&p).unwrap().len() <= 2000);
            assert!(rs.iter().all(|r| r["event"] == "test" && r["time"].is_string()));
        }
        assert!(!numbered(3).exists(), "keeps two");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = AuditOptions { path: path.clone(), max_bytes: 1 << 20, keep: 1 };
        assert!(Audit::open(again).unwrap_err().contains("not a private file"));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let via = AuditOptions { path: link, max_bytes: 1 << 20, keep: 1 };
        assert!(Audit::open(via).is_err(), "a symbolic link is not followed");
    }
}
