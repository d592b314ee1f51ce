//! The journal of a resumable partial file (docs/PROTOCOL.md section 8.6).
//!
//! A receiver in a resuming session writes each file longer than one
//! [`RESUME_CHUNK`](crate::session::RESUME_CHUNK) into a partial file with a name that is the
//! same in every attempt ([`resume_suffix`](super::docroot::resume_suffix)), and beside it a
//! journal: a header naming the file (its final name, size and modification time) and one record
//! per aligned chunk received, holding the chunk's BLAKE3 chaining value. An interrupted attempt
//! leaves both behind; the next one checks every recorded chunk against the partial's bytes
//! and resumes from the chunks that match.
//!
//! Nothing here needs to be durable or written in order: a record whose bytes never reached
//! the partial, a torn record, a flipped bit in either file, a journal of another file or of
//! another version of it are all detected when the next attempt checks the journal, and what
//! they claim is received again. The journal is held under an exclusive `flock` while in use,
//! so two sessions never share a partial: the one that cannot lock it receives the file into a
//! partial of its own (and does not resume).
//!
//! Except when the holder is an older session of the same owner ([`Claims`]): a client killed
//! mid-transfer leaves its session on the server until the idle timeout, holding the lock, and
//! the client's next attempt would otherwise start that file from zero. The newer session asks
//! the older one to stop (it ends with ABORT code SUPERSEDED, which its client does not retry),
//! waits a bounded time for the lock, and resumes.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::docroot::{Dir, journal_name};
use crate::session::{RESUME_CHUNK, chunk_cv};

/// `FERRYJNL`.
const MAGIC: &[u8; 8] = b"FERRYJNL";
const VERSION: u32 = 1;
/// Header: magic, version, log2 of the chunk size, file size, mtime_ns, BLAKE3 of the final
/// name, check.
pub(crate) const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 32 + 8;
/// Record: chunk index, chaining value, check.
pub(crate) const RECORD_LEN: usize = 8 + 32 + 8;

/// A claimed journal (its lock held until it is dropped).
#[derive(Debug)]
pub(crate) struct Journal {
    file: File,
    check: [u8; 8],
    end: u64,
    /// Device and inode: the journal's identity in [`Claims`].
    key: (u64, u64),
}

impl Journal {
    pub(crate) fn key(&self) -> (u64, u64) {
        self.key
    }
}

/// How long a newer session waits for the journal an older one was asked to give up.
pub const SUPERSEDE_WAIT: Duration = Duration::from_secs(3);

/// Which session of which owner holds each journal in this process (a server's sessions share
/// one), and how to ask a session to stop. Only an owner's own sessions can take a journal
/// from one another: another owner's lock is never broken.
#[derive(Clone)]
pub struct Claims {
    inner: Arc<ClaimsInner>,
}

struct ClaimsInner {
    held: Mutex<HashMap<(u64, u64), (String, u64)>>,
    /// Asks session `id` to stop; false if it is not running.
    stop: Box<dyn Fn(u64) -> bool + Send + Sync>,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.held.lock().map_or(0, |h| h.len());
        f.debug_struct("Claims").field("held", &n).finish_non_exhaustive()
    }
}

impl Claims {
    /// A board whose sessions are stopped with `stop(session id)`.
    pub fn new(stop: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        Self { inner: Arc::new(ClaimsInner { held: Mutex::default(), stop: Box::new(stop) }) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), (String, u64)>> {
        self.inner.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Journals held right now.
    pub fn len(&self) -> usize {
        self.held().len()
    }

    /// Whether no journal is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session's place on a [`Claims`] board: its owner (the account it writes as) and its id.
#[derive(Clone, Debug)]
pub struct ClaimTicket {
    pub claims: Claims,
    pub owner: String,
    pub session: u64,
}

impl ClaimTicket {
    /// Records that this session holds `key`.
    pub(crate) fn hold(&self, key: (u64, u64)) {
        self.claims.held().insert(key, (self.owner.clone(), self.session));
    }

    /// Records that this session no longer holds `key` (if it still did).
    pub(crate) fn release(&self, key: (u64, u64)) {
        let mut held = self.claims.held();
        if held.get(&key).is_some_and(|(_, s)| *s == self.session) {
            held.remove(&key);
        }
    }

    /// The journal at `key` is locked: if an older session of this owner holds it, asks that
    /// one to stop and returns true (the caller then waits for the lock); false if another
    /// owner, or nobody on this board, holds it.
    pub(crate) fn supersede(&self, key: (u64, u64)) -> bool {
        let holder = self.claims.held().get(&key).cloned();
        match holder {
            Some((owner, session)) if owner == self.owner && session != self.session => {
                (self.claims.inner.stop)(session)
            }
            _ => false,
        }
    }
}

/// [`resume`], and when another session of the same owner holds the journal, that session
/// asked to stop and the lock awaited for at most [`SUPERSEDE_WAIT`]. `None`: held by someone
/// else (or not given up in time).
pub(crate) fn claim(
    dir: &Dir,
    name: &str,
    suffix: u64,
    partial: &Partial<'_>,
    size: u64,
    mtime_ns: i64,
    ticket: Option<&ClaimTicket>,
) -> io::Result<Option<Resumed>> {
    if let Some(r) = resume(dir, name, suffix, partial, size, mtime_ns)? {
        return Ok(Some(r));
    }
    let Some(ticket) = ticket else { return Ok(None) };
    let Some(meta) = dir.meta(&journal_name(name, suffix))? else { return Ok(None) };
    if !ticket.supersede(meta.dev_ino) {
        return Ok(None);
    }
    let deadline = Instant::now() + SUPERSEDE_WAIT;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        if let Some(r) = resume(dir, name, suffix, partial, size, mtime_ns)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// How the chunks a journal records are checked against the bytes of its partial: plain
/// files hash the partial's bytes ([`PlainChunks`]); a partial kept in another form (an
/// envelope, encryption at rest) is checked by what reads that form.
pub trait ChunkCheck: Send + Sync + std::fmt::Debug {
    /// Of `records` (chunk index, CV) of a file whose partial is `partial` (of the entry's
    /// `size`), those the partial holds, in the same order.
    fn check(&self, partial: &File, size: u64, records: &[(u64, [u8; 32])])
    -> Vec<(u64, [u8; 32])>;
}

/// Chunk `k` of a plain partial is its bytes `[k * RESUME_CHUNK, (k + 1) * RESUME_CHUNK)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainChunks;

impl ChunkCheck for PlainChunks {
    fn check(
        &self,
        partial: &File,
        _size: u64,
        records: &[(u64, [u8; 32])],
    ) -> Vec<(u64, [u8; 32])> {
        let mut buf = vec![0u8; RESUME_CHUNK as usize];
        records
            .iter()
            .filter(|(k, cv)| {
                let start = k * RESUME_CHUNK;
                partial.read_exact_at(&mut buf, start).is_ok() && chunk_cv(start, &buf) == *cv
            })
            .copied()
            .collect()
    }
}

/// The partial a journal describes: its name, and whether it is a name anyone could have made
/// (`NAME` + a partial-file suffix) rather than one reserved for partials.
#[derive(Debug, Clone)]
pub(crate) struct Partial<'a> {
    pub name: String,
    pub visible: bool,
    /// How its chunks are checked.
    pub check: &'a dyn ChunkCheck,
}

/// What an earlier attempt left that checked out.
#[derive(Debug)]
pub(crate) struct Resumed {
    pub journal: Journal,
    /// The partial file, if chunks of it checked out.
    pub partial: Option<File>,
    /// The chunks that match their records: start offsets (increasing) and CVs.
    pub chunks: Vec<(u64, [u8; 32])>,
}

fn header(size: u64, mtime_ns: i64, name: &str) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_be_bytes());
    h[12..16].copy_from_slice(&RESUME_CHUNK.trailing_zeros().to_be_bytes());
    h[16..24].copy_from_slice(&size.to_be_bytes());
    h[24..32].copy_from_slice(&mtime_ns.to_be_bytes());
    h[32..64].copy_from_slice(blake3::hash(name.as_bytes()).as_bytes());
    let check = blake3::hash(&h[..64]);
    h[64..].copy_from_slice(&check.as_bytes()[..8]);
    h
}

fn record(check: &[u8; 8], chunk: u64, cv: &[u8; 32]) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..8].copy_from_slice(&chunk.to_be_bytes());
    r[8..40].copy_from_slice(cv);
    let mut h = blake3::Hasher::new();
    h.update(check).update(&r[..40]);
    r[40..].copy_from_slice(&h.finalize().as_bytes()[..8]);
    r
}

/// Claims the journal of `name` (a file of `size` bytes, modified at `mtime_ns`) in `dir` and
/// checks what an earlier attempt left: `None` if another session holds it. The journal is
/// created if missing and rewritten to hold exactly the records that checked out; a partial
/// with none is removed (the lock makes it this session's) — a visible one only if the journal,
/// bound to that name, recorded chunks (else it may be anyone's file, and it stays).
pub(crate) fn resume(
    dir: &Dir,
    name: &str,
    suffix: u64,
    partial_file: &Partial<'_>,
    size: u64,
    mtime_ns: i64,
) -> io::Result<Option<Resumed>> {
    let jname = journal_name(name, suffix);
    let (file, meta) = dir.open_or_create(&jname, 0o600)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    // A visible partial's journal is bound to that partial's name too: one written with
    // another suffix (or none) vouches for nothing here.
    let bound = if partial_file.visible {
        format!("{name}\0{}", partial_file.name)
    } else {
        name.to_owned()
    };
    let want = header(size, mtime_ns, &bound);
    let full_chunks = size / RESUME_CHUNK;
    // Bounded: one record per chunk of the file, and as many again from earlier attempts
    // (a chunk received again is recorded again); a longer journal is not trusted.
    let most = HEADER_LEN as u64 + 2 * RECORD_LEN as u64 * full_chunks.max(1);
    let mut records: Vec<Option<[u8; 32]>> = vec![None; full_chunks as usize];
    let mut any = false;
    if meta.size >= HEADER_LEN as u64 && meta.size <= most {
        let mut bytes = vec![0u8; meta.size as usize];
        file.read_exact_at(&mut bytes, 0)?;
        if bytes[..HEADER_LEN] == want {
            let check: [u8; 8] = want[64..].try_into().expect("8 bytes");
            for r in bytes[HEADER_LEN..].chunks_exact(RECORD_LEN) {
                let chunk = u64::from_be_bytes(r[..8].try_into().expect("8 bytes"));
                let cv: [u8; 32] = r[8..40].try_into().expect("32 bytes");
                if chunk >= full_chunks || record(&check, chunk, &cv)[..] != r[..] {
                    // Torn or damaged: what follows is not trusted either.
                    break;
                }
                records[chunk as usize] = Some(cv);
                any = true;
            }
        }
    }
    let pname = &partial_file.name;
    let mut chunks = Vec::new();
    let mut partial = None;
    if any && let Ok((p, pmeta)) = dir.open_rw(pname) {
        if pmeta.size == size {
            let recorded: Vec<(u64, [u8; 32])> = records
                .iter()
                .enumerate()
                .filter_map(|(k, cv)| cv.map(|cv| (k as u64, cv)))
                .collect();
            chunks = partial_file
                .check
                .check(&p, size, &recorded)
                .into_iter()
                .map(|(k, cv)| (k * RESUME_CHUNK, cv))
                .collect();
        }
        if !chunks.is_empty() {
            partial = Some(p);
        }
    }
    // A visible partial (a name anyone could have made) is removed only when the journal,
    // bound to its name, recorded chunks: then this transfer created it and wrote into it.
    if partial.is_none() && (!partial_file.visible || any) {
        match dir.remove_file(pname) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let check: [u8; 8] = want[64..].try_into().expect("8 bytes");
    let mut out = Vec::with_capacity(HEADER_LEN + chunks.len() * RECORD_LEN);
    out.extend_from_slice(&want);
    for (start, cv) in &chunks {
        out.extend_from_slice(&record(&check, start / RESUME_CHUNK, cv));
    }
    file.set_len(0)?;
    file.write_all_at(&out, 0)?;
    let journal = Journal { file, check, end: out.len() as u64, key: meta.dev_ino };
    Ok(Some(Resumed { journal, partial, chunks }))
}

impl Journal {
    /// Records that the aligned chunk at `offset` has all its bytes, with CV `cv`.
    pub(crate) fn record(&mut self, offset: u64, cv: &[u8; 32]) -> io::Result<()> {
        let r = record(&self.check, offset / RESUME_CHUNK, cv);
        self.file.write_all_at(&r, self.end)?;
        self.end += RECORD_LEN as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::docroot::partial_name;

    /// The reserved (hidden) partial of `name`.
    fn hidden(name: &str, suffix: u64) -> Partial<'static> {
        Partial { name: partial_name(name, suffix), visible: false, check: &PlainChunks }
    }

    /// A visible partial (`NAME` + a suffix) is removed only when the journal was this file's:
    /// else it may be anyone's file.
    #[test]
    fn a_visible_partial_without_its_journal_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Docroot::open(tmp.path()).unwrap();
        let dir = root.open_dir(&RelPath::root()).unwrap();
        let (name, suffix, size) = ("v.bin", 9u64, 3 * RESUME_CHUNK);
        let visible = Partial { name: "v.bin.part".into(), visible: true, check: &PlainChunks };
        std::fs::write(tmp.path().join("v.bin.part"), b"someone's own file").unwrap();
        let r = resume(&dir, name, suffix, &visible, size, 1).unwrap().unwrap();
        assert!(r.chunks.is_empty() && r.partial.is_none());
        drop(r);
        assert_eq!(std::fs::read(tmp.path().join("v.bin.part")).unwrap(), b"someone's own file");
        // The journal is this file's now (written above) but records nothing: still not
        // vouched for.
        let r = resume(&dir, name, suffix, &visible, size, 1).unwrap().unwrap();
        drop(r);
        assert!(tmp.path().join("v.bin.part").exists());
        // With a recorded chunk that does not check out: this transfer's stale partial, gone.
        let mut r = resume(&dir, name, suffix, &visible, size, 1).unwrap().unwrap();
        r.journal.record(0, &[9; 32]).unwrap();
        drop(r);
        let r = resume(&dir, name, suffix, &visible, size, 1).unwrap().unwrap();
        assert!(r.chunks.is_empty());
        drop(r);
        assert!(!tmp.path().join("v.bin.part").exists());
        // A journal written for another suffix vouches for nothing.
        std::fs::write(tmp.path().join("v.bin.part"), b"again someone's").unwrap();
        let other = Partial { name: "v.bin.bak".into(), visible: true, check: &PlainChunks };
        let mut r = resume(&dir, name, suffix, &other, size, 1).unwrap().unwrap();
        r.journal.record(0, &[9; 32]).unwrap();
        drop(r);
        let r = resume(&dir, name, suffix, &visible, size, 1).unwrap().unwrap();
        drop(r);
        assert_eq!(std::fs::read(tmp.path().join("v.bin.part")).unwrap(), b"again someone's");
    }
    use crate::io::docroot::{Docroot, RelPath, resume_suffix};

    const C: u64 = RESUME_CHUNK;

    fn data(size: u64, seed: u8) -> Vec<u8> {
        (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Writes what an interrupted attempt leaves: the partial with `data` and a journal with
    /// a record for each of `chunks`.
    fn leave(dir: &Dir, name: &str, data: &[u8], mtime_ns: i64, chunks: &[u64]) {
        let suffix = resume_suffix(name);
        let _ = dir.remove_file(&journal_name(name, suffix));
        let _ = dir.remove_file(&partial_name(name, suffix));
        let r = resume(dir, name, suffix, &hidden(name, suffix), data.len() as u64, mtime_ns)
            .unwrap()
            .unwrap();
        let mut journal = r.journal;
        let p = dir.open_or_create(&partial_name(name, suffix), 0o600).unwrap().0;
        p.set_len(data.len() as u64).unwrap();
        p.write_all_at(data, 0).unwrap();
        for &k in chunks {
            let s = (k * C) as usize;
            journal.record(k * C, &chunk_cv(k * C, &data[s..s + C as usize])).unwrap();
        }
    }

    fn starts(r: &Resumed) -> Vec<u64> {
        r.chunks.iter().map(|(s, _)| s / C).collect()
    }

    #[test]
    fn resumes_the_chunks_that_check_out_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Docroot::open(tmp.path()).unwrap();
        let dir = root.open_dir(&RelPath::root()).unwrap();
        let (name, size) = ("big.bin", 4 * C + 5);
        let suffix = resume_suffix(name);
        let bytes = data(size, 1);
        let jpath = tmp.path().join(journal_name(name, suffix));
        let ppath = tmp.path().join(partial_name(name, suffix));

        // Intact: every recorded chunk resumes; the partial is handed back open.
        leave(&dir, name, &bytes, 7, &[0, 2, 3]);
        let r = resume(&dir, name, suffix, &hidden(name, suffix), size, 7).unwrap().unwrap();
        assert_eq!(starts(&r), [0, 2, 3]);
        assert!(r.partial.is_some());
        // A second claim while this one holds the lock: refused (never shared).
        assert!(resume(&dir, name, suffix, &hidden(name, suffix), size, 7).unwrap().is_none());
        drop(r);

        // A flipped byte in chunk 2 of the partial: chunk 2 is dropped (and the journal
        // rewritten without it).
        let mut damaged = bytes.clone();
        damaged[(2 * C + 100) as usize] ^= 0x40;
        std::fs::write(&ppath, &damaged).unwrap();
        let r = resume(&dir, name, suffix, &hidden(name, suffix), size, 7).unwrap().unwrap();
        assert_eq!(starts(&r), [0, 3]);
        drop(r);
        let r = resume(&dir, name, suffix, &hidden(name, suffix), size, 7).unwrap().unwrap();
        assert_eq!(starts(&r), [0, 3], "the rewritten journal holds what checked out");
        drop(r);

        // A torn last record, and a flipped bit in a record: that record and the rest go.
        leave(&dir, name, &bytes, 7, &[0, 1, 2]);
        let j = std::fs::read(&jpath).unwrap();
        std::fs::write(&jpath, &j[..j.len() - 5]).unwrap();
        assert_eq!(
            starts(&resume(&dir, name, suffix, &hidden(name, suffix), size, 7).unwrap().unwrap()),
            [0, 1]
        );
        leave(&dir, name, &bytes, 7, &[0, 1, 2]);
        let mut j = std::fs::read(&jpath).unwrap();
        j[HEADER_LEN + RECORD_LEN + 9] ^= 1;
        std::fs::write(&jpath, &j).unwrap();
        assert_eq!(
            starts(&resume(&dir, name, suffix, &hidden(name, suffix), size, 7).unwrap().unwrap()),
            [0]
        );

        // Another version (mtime), another size, a journal of another file: nothing resumes,
        // and the stale partial is removed.
        for (other_size, other_mtime) in [(size, 8), (size + 1, 7)] {
            leave(&dir, name, &bytes, 7, &[0, 1]);
            let r = resume(&dir, name, suffix, &hidden(name, suffix), other_size, other_mtime)
                .unwrap()
                .unwrap();
            assert!(r.chunks.is_empty() && r.partial.is_none());
            assert!(!ppath.exists());
        }
        leave(&dir, "other.bin", &bytes, 7, &[0, 1]);
        let other = journal_name("other.bin", resume_suffix("other.bin"));
        std::fs::copy(tmp.path().join(other), &jpath).unwrap();
        std::fs::write(&ppath, &bytes).unwrap();
        assert!(
            resume(&dir, name, suffix, &hidden(name, suffix), size, 7)
                .unwrap()
                .unwrap()
                .chunks
                .is_empty()
        );

        // The journal deleted: the partial is not trusted.
        leave(&dir, name, &bytes, 7, &[0, 1]);
        std::fs::remove_file(&jpath).unwrap();
        assert!(
            resume(&dir, name, suffix, &hidden(name, suffix), size, 7)
                .unwrap()
                .unwrap()
                .chunks
                .is_empty()
        );
        assert!(!ppath.exists());

        // The partial truncated: nothing of it is trusted.
        leave(&dir, name, &bytes, 7, &[0, 1]);
        std::fs::write(&ppath, &bytes[..(2 * C) as usize]).unwrap();
        assert!(
            resume(&dir, name, suffix, &hidden(name, suffix), size, 7)
                .unwrap()
                .unwrap()
                .chunks
                .is_empty()
        );
    }

    #[test]
    /// A journal held by an older session of the same owner is taken over (that session asked
    /// to stop, the lock awaited); one held by another owner, or by nobody on the board, is not.
    fn a_newer_session_of_the_same_owner_takes_the_journal_over() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Docroot::open(tmp.path()).unwrap();
        let dir = root.open_dir(&RelPath::root()).unwrap();
        let (name, size) = ("big.bin", 3 * C);
        let suffix = resume_suffix(name);
        // Session 1's journal lives in a thread that drops it when told to stop.
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<u64>();
        let stops = Arc::new(Mutex::new(Vec::new()));
        let claims = {
            let (stops, stop_tx) = (stops.clone(), Mutex::new(stop_tx));
            Claims::new(move |id| {
                stops.lock().unwrap().push(id);
                stop_tx.lock().unwrap().send(id).is_ok()
            })
        };
        let ticket = |owner: &str, session| ClaimTicket {
            claims: claims.clone(),
            owner: owner.into(),
            session,
        };
        let first =
            claim(&dir, name, suffix, &hidden(name, suffix), size, 1, Some(&ticket("alice", 1)))
                .unwrap()
                .unwrap();
        ticket("alice", 1).hold(first.journal.key());
        let holder = std::thread::spawn(move || {
            let id = stop_rx.recv().unwrap();
            drop(first);
            id
        });
        // Another owner: refused, nobody asked to stop.
        assert!(
            claim(&dir, name, suffix, &hidden(name, suffix), size, 1, Some(&ticket("bob", 2)))
                .unwrap()
                .is_none()
        );
        // No ticket: refused.
        assert!(claim(&dir, name, suffix, &hidden(name, suffix), size, 1, None).unwrap().is_none());
        assert!(stops.lock().unwrap().is_empty());
        // The same owner's newer session: session 1 is asked to stop, and the claim succeeds.
        let second =
            claim(&dir, name, suffix, &hidden(name, suffix), size, 1, Some(&ticket("alice", 3)))
                .unwrap();
        assert!(second.is_some(), "taken over");
        assert_eq!(*stops.lock().unwrap(), [1]);
        assert_eq!(holder.join().unwrap(), 1);
        // Leaving the board: only the holder's own release removes its entry.
        let key = second.unwrap().journal.key();
        ticket("alice", 3).hold(key);
        ticket("alice", 1).release(key);
        assert_eq!(claims.len(), 1);
        ticket("alice", 3).release(key);
        assert!(claims.is_empty());
    }

    #[test]
    fn journals_are_never_followed_through_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Docroot::open(tmp.path()).unwrap();
        let dir = root.open_dir(&RelPath::root()).unwrap();
        let name = "f";
        let suffix = resume_suffix(name);
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join(journal_name(name, suffix))).unwrap();
        assert!(resume(&dir, name, suffix, &hidden(name, suffix), 3 * C, 1).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
