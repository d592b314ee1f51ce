//! Files assembled from parts that several sessions of one multi-session transfer send
//! (`ferry cp -C N`, FILE_PART entries; docs/PROTOCOL.md, "Multi-session transfers").
//!
//! The sessions of a transfer run in one process at the receiving end (the daemon, or the
//! downloading client), each with its own [`FileSink`](super::files::FileSink). The first part
//! of a file to receive a block creates the file's partial (`.NAME.ferry-partial-HEX16`, sized
//! to the whole file) and registers it here under its directory, its name and the transfer's
//! random id; the other parts join it. Each part writes its own bytes at their offsets, so no
//! byte is written twice and nothing is copied afterwards. A part counts once its session
//! verified its digest and its writes are in the file; the part that completes the file moves
//! it into place (fsync, then a rename that never replaces an existing name unless the
//! overwrite policy says so). Until then the final name does not exist.
//!
//! A session that dies gives up its claim: its range may be sent again, by a retry of its share
//! or by another session. A file no session holds any more stays for [`ORPHAN_LINGER`] (the
//! client retries in that time) and is then removed. At most [`MAX_ASSEMBLIES`] files are
//! assembled at once in a process: a peer cannot make it hold unbounded descriptors.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::docroot::{Dir, partial_name};
use crate::control::Part;

/// Most files being assembled from parts at once, in this process.
pub const MAX_ASSEMBLIES: usize = 1024;
/// How long a file no session holds waits for its missing parts before it is removed.
pub const ORPHAN_LINGER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// Device and inode of the directory the file lands in.
    dir: (u64, u64),
    name: String,
    transfer: [u8; 16],
}

#[derive(Debug)]
struct Assembly {
    dir: Dir,
    partial: String,
    file: Arc<File>,
    total: u64,
    /// The source file's modification time the first part named: parts of another version of
    /// the file do not join.
    mtime_ns: i64,
    /// Verified ranges, `[start, end)`, sorted and merged.
    verified: Vec<(u64, u64)>,
    /// Ranges sessions are sending now (a retry may claim a range a session that died, as far
    /// as its client knows, still holds: both write the same bytes of the same version).
    claimed: Vec<(u64, u64)>,
    /// Since when no session holds it.
    orphaned: Option<Instant>,
}

impl Assembly {
    fn remove(&self) {
        let _ = self.dir.remove_file(&self.partial);
    }

    fn complete(&self) -> bool {
        self.verified == [(0, self.total)]
    }
}

fn registry() -> &'static Mutex<HashMap<Key, Assembly>> {
    static REGISTRY: std::sync::OnceLock<Mutex<HashMap<Key, Assembly>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<Key, Assembly>> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes the files no session held for [`ORPHAN_LINGER`] before `now`.
fn sweep(map: &mut HashMap<Key, Assembly>, now: Instant) {
    map.retain(|_, a| {
        let keep = a.orphaned.is_none_or(|t| now.saturating_duration_since(t) < ORPHAN_LINGER);
        if !keep {
            a.remove();
        }
        keep
    });
}

/// One session's hold on one part of an assembled file; dropped without
/// [`complete`](Claim::complete), it gives the part up.
#[derive(Debug)]
pub struct Claim {
    key: Key,
    range: (u64, u64),
    file: Arc<File>,
    done: bool,
    /// Give the completed file its parts' modification time.
    preserve: bool,
}

/// Joins (or starts) the assembly of `name` in `dir` for the `size` bytes of `part`: the
/// returned claim's [`file`](Claim::file) is the whole file's partial, to write at
/// `part.offset + offset`. Refused when another part named another size or modification time
/// `mtime_ns` (the source changed between sessions), or when [`MAX_ASSEMBLIES`] are in
/// progress.
pub fn claim(dir: &Dir, name: &str, part: &Part, size: u64, mtime_ns: i64) -> io::Result<Claim> {
    let range = (part.offset, part.offset.saturating_add(size));
    if size == 0 || range.1 > part.total {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a part beyond its file"));
    }
    let key = Key { dir: dir.identity()?, name: name.to_owned(), transfer: part.transfer };
    let mut map = lock();
    sweep(&mut map, Instant::now());
    if let Some(a) = map.get_mut(&key) {
        if a.total != part.total || a.mtime_ns != mtime_ns {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the parts of this file disagree on its size or version ({} and {} bytes): \
                     the source changed during the transfer; send it again",
                    a.total, part.total
                ),
            ));
        }
        a.claimed.push(range);
        a.orphaned = None;
        return Ok(Claim { key, range, file: a.file.clone(), done: false, preserve: false });
    }
    if map.len() >= MAX_ASSEMBLIES {
        return Err(io::Error::new(
            io::ErrorKind::QuotaExceeded,
            format!(
                "{MAX_ASSEMBLIES} files are being assembled from parts here already; send this \
                 one later or whole"
            ),
        ));
    }
    let partial = partial_name(name, super::files::random_suffix());
    let file = dir.create_new(&partial, 0o600)?;
    if let Err(e) = file.set_len(part.total) {
        let _ = dir.remove_file(&partial);
        return Err(e);
    }
    let file = Arc::new(file);
    let assembly = Assembly {
        dir: dir.try_clone()?,
        partial,
        file: file.clone(),
        total: part.total,
        mtime_ns,
        verified: Vec::new(),
        claimed: vec![range],
        orphaned: None,
    };
    map.insert(key.clone(), assembly);
    Ok(Claim { key, range, file, done: false, preserve: false })
}

impl Claim {
    /// The whole file's partial.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Counts the part as verified (its bytes are in the file). If that completes the file,
    /// it is given permission bits `mode`, synced and moved into place under its name
    /// (replacing an existing file only with `replace`): returns `true` then.
    /// Gives the file its parts' modification time when this claim completes it (`-p`).
    pub fn preserving_mtime(mut self) -> Self {
        self.preserve = true;
        self
    }

    pub fn complete(mut self, mode: u32, replace: bool) -> io::Result<bool> {
        self.done = true;
        let done = {
            let mut map = lock();
            let Some(a) = map.get_mut(&self.key) else {
                let shown = super::docroot::escape(&self.key.name, 120);
                return Err(io::Error::other(format!(
                    "{shown}: the file's other parts were given up (their sessions ended long ago)"
                )));
            };
            if let Some(i) = a.claimed.iter().position(|&r| r == self.range) {
                a.claimed.swap_remove(i);
            }
            a.verified.push(self.range);
            a.verified.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(a.verified.len());
            for &(s, e) in &a.verified {
                match merged.last_mut() {
                    Some(last) if last.1 >= s => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            a.verified = merged;
            if !a.complete() {
                if a.claimed.is_empty() {
                    a.orphaned = Some(Instant::now());
                }
                return Ok(false);
            }
            map.remove(&self.key).expect("present")
        };
        // Outside the lock: syncing a large file takes a while.
        let moved = (|| {
            use std::os::unix::fs::PermissionsExt;
            done.file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            if self.preserve
                && let Some(times) = super::files::mtime(done.mtime_ns)
            {
                done.file.set_times(times)?;
            }
            done.file.sync_all()?;
            super::files::move_into_place(&done.dir, &done.partial, &self.key.name, replace)
        })();
        if moved.is_err() {
            done.remove();
        }
        moved.map(|()| true)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut map = lock();
        if let Some(a) = map.get_mut(&self.key) {
            if let Some(i) = a.claimed.iter().position(|&r| r == self.range) {
                a.claimed.swap_remove(i);
            }
            if a.claimed.is_empty() {
                a.orphaned = Some(Instant::now());
            }
        }
    }
}

/// Removes the files of multi-session transfer `transfer` that no session holds any more (the
/// transfer ended without them): the receiving client calls it when its transfer ends.
pub fn abandon(transfer: &[u8; 16]) {
    lock().retain(|k, a| {
        let drop = k.transfer == *transfer && a.claimed.is_empty();
        if drop {
            a.remove();
        }
        !drop
    });
}

/// Removes the files no session has held for [`ORPHAN_LINGER`] (a long-running receiver calls
/// it now and then: claims also sweep, but only when parts keep coming).
pub fn sweep_orphans() {
    sweep(&mut lock(), Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn part(offset: u64, total: u64, transfer: u8) -> Part {
        Part { offset, total, transfer: [transfer; 16] }
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parts_assemble_in_any_order_and_only_the_last_moves_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::io::docroot::Docroot::open(tmp.path()).unwrap();
        let dir = dir.open_dir(&crate::io::docroot::RelPath::root()).unwrap();
        let (a, b, c) = (part(0, 30, 1), part(10, 30, 1), part(20, 30, 1));
        let cb = claim(&dir, "f", &b, 10, 5).unwrap();
        let cc = claim(&dir, "f", &c, 10, 5).unwrap();
        let ca = claim(&dir, "f", &a, 10, 5).unwrap();
        // A disagreeing size or version: refused.
        assert!(claim(&dir, "f", &part(30, 40, 1), 10, 5).is_err());
        assert!(claim(&dir, "f", &part(0, 30, 1), 10, 6).is_err());
        // Another transfer to the same name does not join in.
        let other = claim(&dir, "f", &part(0, 30, 2), 30, 5).unwrap();
        drop(other);
        for (cl, byte) in [(&ca, b'a'), (&cb, b'b'), (&cc, b'c')] {
            cl.file().write_all_at(&[byte; 10], cl.range.0).unwrap();
        }
        assert!(!cc.complete(0o640, false).unwrap());
        assert!(!ca.complete(0o640, false).unwrap());
        assert!(!tmp.path().join("f").exists());
        assert!(cb.complete(0o640, false).unwrap());
        let got = std::fs::read(tmp.path().join("f")).unwrap();
        assert_eq!(got, [[b'a'; 10], [b'b'; 10], [b'c'; 10]].concat());
        // The other transfer's orphan is still there, for its retry; swept after the linger.
        assert_eq!(names(tmp.path()).len(), 2, "{:?}", names(tmp.path()));
        sweep(&mut lock(), Instant::now() + ORPHAN_LINGER + Duration::from_secs(1));
        assert_eq!(names(tmp.path()), ["f"]);
    }

    #[test]
    fn a_given_up_part_can_be_claimed_again_and_an_existing_name_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let root = crate::io::docroot::Docroot::open(tmp.path()).unwrap();
        let dir = root.open_dir(&crate::io::docroot::RelPath::root()).unwrap();
        let first = claim(&dir, "g", &part(0, 20, 3), 10, 0).unwrap();
        let second = claim(&dir, "g", &part(10, 20, 3), 10, 0).unwrap();
        drop(second);
        let again = claim(&dir, "g", &part(10, 20, 3), 10, 0).unwrap();
        std::fs::write(tmp.path().join("g"), b"someone else's").unwrap();
        assert!(!first.complete(0o600, false).unwrap());
        let e = again.complete(0o600, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(tmp.path().join("g")).unwrap(), b"someone else's");
        assert_eq!(names(tmp.path()), ["g"], "the partial was removed");
    }
}
