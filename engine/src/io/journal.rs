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

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::docroot::{Dir, journal_name, partial_name};
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
/// with none is removed (the lock makes it this session's).
pub(crate) fn resume(
    dir: &Dir,
    name: &str,
    suffix: u64,
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
    let want = header(size, mtime_ns, name);
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
    let pname = partial_name(name, suffix);
    let mut chunks = Vec::new();
    let mut partial = None;
    if any && let Ok((p, pmeta)) = dir.open_rw(&pname) {
        if pmeta.size == size {
            let mut buf = vec![0u8; RESUME_CHUNK as usize];
            for (k, cv) in records.iter().enumerate() {
                let Some(cv) = cv else { continue };
                let start = k as u64 * RESUME_CHUNK;
                if p.read_exact_at(&mut buf, start).is_ok() && chunk_cv(start, &buf) == *cv {
                    chunks.push((start, *cv));
                }
            }
        }
        if !chunks.is_empty() {
            partial = Some(p);
        }
    }
    if partial.is_none() {
        match dir.remove_file(&pname) {
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
    let journal = Journal { file, check, end: out.len() as u64 };
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
        let r = resume(dir, name, suffix, data.len() as u64, mtime_ns).unwrap().unwrap();
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
        let r = resume(&dir, name, suffix, size, 7).unwrap().unwrap();
        assert_eq!(starts(&r), [0, 2, 3]);
        assert!(r.partial.is_some());
        // A second claim while this one holds the lock: refused (never shared).
        assert!(resume(&dir, name, suffix, size, 7).unwrap().is_none());
        drop(r);

        // A flipped byte in chunk 2 of the partial: chunk 2 is dropped (and the journal
        // rewritten without it).
        let mut damaged = bytes.clone();
        damaged[(2 * C + 100) as usize] ^= 0x40;
        std::fs::write(&ppath, &damaged).unwrap();
        let r = resume(&dir, name, suffix, size, 7).unwrap().unwrap();
        assert_eq!(starts(&r), [0, 3]);
        drop(r);
        let r = resume(&dir, name, suffix, size, 7).unwrap().unwrap();
        assert_eq!(starts(&r), [0, 3], "the rewritten journal holds what checked out");
        drop(r);

        // A torn last record, and a flipped bit in a record: that record and the rest go.
        leave(&dir, name, &bytes, 7, &[0, 1, 2]);
        let j = std::fs::read(&jpath).unwrap();
        std::fs::write(&jpath, &j[..j.len() - 5]).unwrap();
        assert_eq!(starts(&resume(&dir, name, suffix, size, 7).unwrap().unwrap()), [0, 1]);
        leave(&dir, name, &bytes, 7, &[0, 1, 2]);
        let mut j = std::fs::read(&jpath).unwrap();
        j[HEADER_LEN + RECORD_LEN + 9] ^= 1;
        std::fs::write(&jpath, &j).unwrap();
        assert_eq!(starts(&resume(&dir, name, suffix, size, 7).unwrap().unwrap()), [0]);

        // Another version (mtime), another size, a journal of another file: nothing resumes,
        // and the stale partial is removed.
        for (other_size, other_mtime) in [(size, 8), (size + 1, 7)] {
            leave(&dir, name, &bytes, 7, &[0, 1]);
            let r = resume(&dir, name, suffix, other_size, other_mtime).unwrap().unwrap();
            assert!(r.chunks.is_empty() && r.partial.is_none());
            assert!(!ppath.exists());
        }
        leave(&dir, "other.bin", &bytes, 7, &[0, 1]);
        let other = journal_name("other.bin", resume_suffix("other.bin"));
        std::fs::copy(tmp.path().join(other), &jpath).unwrap();
        std::fs::write(&ppath, &bytes).unwrap();
        assert!(resume(&dir, name, suffix, size, 7).unwrap().unwrap().chunks.is_empty());

        // The journal deleted: the partial is not trusted.
        leave(&dir, name, &bytes, 7, &[0, 1]);
        std::fs::remove_file(&jpath).unwrap();
        assert!(resume(&dir, name, suffix, size, 7).unwrap().unwrap().chunks.is_empty());
        assert!(!ppath.exists());

        // The partial truncated: nothing of it is trusted.
        leave(&dir, name, &bytes, 7, &[0, 1]);
        std::fs::write(&ppath, &bytes[..(2 * C) as usize]).unwrap();
        assert!(resume(&dir, name, suffix, size, 7).unwrap().unwrap().chunks.is_empty());
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
        assert!(resume(&dir, name, suffix, 3 * C, 1).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
