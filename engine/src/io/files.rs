//! The receiver's file sink: files land beneath a [`Docroot`] under a partial name and are
//! renamed into place once verified.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::Arc;

use super::docroot::{Dir, Docroot, PathError, RelPath, partial_name};
use crate::control::FileEntry;
use crate::session::{BlockSink, SinkError};

/// Where a [`FileSink`] puts the files it receives, beneath its docroot.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Into this directory: each file at its manifest path below it.
    Dir(RelPath),
    /// The session's single file lands under exactly this name.
    File(RelPath),
}

/// Bounds of a [`FileSink`].
#[derive(Debug, Clone)]
pub struct SinkLimits {
    /// Most partial files open at once (descriptors); others are closed and opened again when
    /// more of their blocks arrive.
    pub max_open: usize,
    /// Whether this end permits replacing: `false` (the default) never replaces an existing
    /// file; `true` lets a verified file replace an existing regular file of its name,
    /// atomically, at the end (until then the old file is untouched; a failed transfer leaves
    /// it as it was), where [`SinkLimits::overwrite`] says so. With
    /// [`Overwrite::Keep`](crate::control::Overwrite) (no policy asked for) it replaces every
    /// existing file, as before policies existed.
    pub replace: bool,
    /// The overwrite policy the client asked for (`--overwrite`): which existing files are
    /// replaced (if [`SinkLimits::replace`] permits), skipped or failed.
    pub overwrite: crate::control::Overwrite,
    /// Give each completed file the modification time its FILE frame carries (`-p`; a FILE with
    /// `mtime_ns` 0 keeps the time of writing).
    pub preserve_mtime: bool,
    /// A resuming session (docs/PROTOCOL.md 8.6): each resumable file is received into a
    /// partial named the same in every attempt, with a journal of its chunks; a session that
    /// ends before the file is verified leaves both, and the next one resumes from the chunks
    /// that check out ([`BlockSink::resumed`]).
    pub resume: bool,
    /// This session's place on its server's board of journal holders: a journal held by an
    /// older session of the same owner is taken over ([`Claims`](super::Claims)).
    pub claims: Option<super::ClaimTicket>,
    /// Name each file's partial `NAME` + this suffix beside its final name while it arrives
    /// (`--partial-file-suffix`, checked by
    /// [`check_partial_suffix`](crate::setup::check_partial_suffix)) instead of the hidden
    /// `.NAME.ferry-partial-HEX`. Such a name is created only where nothing has it (an existing
    /// file of that name fails the file, untouched) and removed only by the session that made
    /// it, or by one resuming it whose journal vouches for it. A file sent in parts, a
    /// resumable one whose journal another session holds, and a name too long for the suffix
    /// use the hidden name.
    pub partial_suffix: Option<String>,
    /// How a resumed partial's journaled chunks are checked (default: its bytes hashed,
    /// [`PlainChunks`](super::PlainChunks)); a storage that keeps partials in another form
    /// (encryption at rest) checks them its way.
    pub chunk_check: Option<Arc<dyn super::ChunkCheck>>,
}

impl Default for SinkLimits {
    fn default() -> Self {
        Self {
            max_open: 64,
            replace: false,
            overwrite: crate::control::Overwrite::Keep,
            preserve_mtime: false,
            resume: false,
            claims: None,
            partial_suffix: None,
            chunk_check: None,
        }
    }
}

/// Journals (descriptors, each holding its lock) one sink holds at most; further resumable
/// files are received without one (and are not resumable).
const MAX_JOURNALS: usize = 256;

/// The modification time of `mtime_ns` nanoseconds since the Unix epoch (before it if
/// negative), as a file's times to set; `None` for 0 (not carried).
pub(crate) fn mtime(mtime_ns: i64) -> Option<std::fs::FileTimes> {
    use std::time::{Duration, UNIX_EPOCH};
    let at = match mtime_ns {
        0 => return None,
        n if n > 0 => UNIX_EPOCH.checked_add(Duration::from_nanos(n as u64))?,
        n => UNIX_EPOCH.checked_sub(Duration::from_nanos(n.unsigned_abs()))?,
    };
    Some(std::fs::FileTimes::new().set_modified(at))
}

/// Directories kept open for the files being written (most trees are written one directory
/// after another).
const DIR_CACHE: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Announced; nothing exists on disk yet.
    Announced,
    /// The partial file exists.
    Created,
    /// Renamed into place or removed.
    Done,
}

#[derive(Debug)]
struct SinkFile {
    /// The directory it lands in, beneath the docroot (an index into [`FileSink::parents`]:
    /// the files of one directory share it).
    parent: u32,
    /// Its final name there.
    name: String,
    /// The random part of its partial name.
    suffix: u64,
    size: u64,
    mode: u32,
    stage: Stage,
    /// Device and inode of the partial file: a reopened partial must be the same file.
    identity: Option<(u64, u64)>,
    /// A part of a larger file (a multi-session transfer): the file is assembled with the
    /// other parts ([`assembly`](super::assembly)) once the first block arrives.
    part: Option<crate::control::Part>,
    /// The source's modification time (parts of one version agree on it).
    mtime_ns: i64,
    claim: Option<super::assembly::Claim>,
    /// A resumable file of a resuming session: its journal is claimed when it is announced
    /// (if its directory exists) or when its partial is created.
    resumable: bool,
    /// An existing file of its name is replaced when it moves into place (the overwrite
    /// policy decided so when it was announced).
    replace: bool,
    /// Its journal, while this sink holds it (then `suffix` is the deterministic one).
    journal: Option<Box<super::journal::Journal>>,
    /// Chunks resumed from an earlier attempt, until [`BlockSink::resumed`] takes them.
    resumed: Vec<(u64, [u8; 32])>,
    /// With chunk 0 resumed: the partial's first bytes, until [`BlockSink::held_head`] takes
    /// them.
    head: Vec<u8>,
    /// The partial's name when it is `NAME` + [`SinkLimits::partial_suffix`].
    visible: Option<String>,
}

impl SinkFile {
    /// Offset in the file of the entry's first byte.
    fn base(&self) -> u64 {
        self.part.map_or(0, |p| p.offset)
    }

    fn partial(&self) -> String {
        self.visible.clone().unwrap_or_else(|| partial_name(&self.name, self.suffix))
    }

    fn journal_name(&self) -> String {
        super::docroot::journal_name(&self.name, self.suffix)
    }
}

/// A [`BlockSink`] writing each file at its offsets into a partial file
/// `.NAME.ferry-partial-<random>` beside its final name, renamed into place (never replacing an
/// existing name) once the digest verified, removed otherwise and when the sink is dropped
/// unfinished.
///
/// Every path is a [`RelPath`] resolved beneath the sink's [`Docroot`] by the kernel (no `..`,
/// no symbolic links), so nothing lands outside it however the tree changes during the
/// transfer. A file is only checked when announced (it must not exist); its directories and its
/// partial file are created when its first block arrives (or, for an empty file, when it is
/// finished), so announcing many files costs no descriptors and no disk entries. At most
/// [`SinkLimits::max_open`] partial files are open at once. Error messages name only the path
/// beneath the docroot, never a server-side absolute path, because they travel to the peer.
///
/// Blocks mostly arrive in order, so writes are coalesced: a run of contiguous blocks of one file
/// collects in a buffer of [`WRITE_BEHIND`] bytes, and full runs go to a writer thread (the
/// file stage) over a channel, which `pwrite`s them (one system call per ~700 blocks instead of
/// one per block, and the copy into the page cache off the network thread) and hands the buffer
/// back for reuse. At most [`WRITE_BUFFERS`] runs are in flight; a slow disk therefore slows the
/// session (flow control) instead of growing memory. A file is finished only after all of its
/// writes completed. Nothing is read back: the session hashes blocks as it accepts them.
#[derive(Debug)]
pub struct FileSink {
    root: Arc<Docroot>,
    dest: Destination,
    files: Vec<SinkFile>,
    /// The distinct directories files land in, and their indexes.
    parents: Vec<RelPath>,
    parent_index: std::collections::HashMap<RelPath, u32>,
    /// Open partial files, least recently used first to go.
    open: Vec<(u32, Arc<File>, u64)>,
    /// Open directories of recent files.
    dirs: Vec<(RelPath, Dir)>,
    limits: SinkLimits,
    tick: u64,
    pending: WriteBehind,
    writer: Option<Writer>,
    /// With [`SinkLimits::replace`]: the targets of this session so far, so that a second
    /// file of one name is refused instead of silently replacing the first.
    claimed: std::collections::HashSet<(u32, String)>,
    /// Journals held now.
    journals: usize,
    /// The sender's content checksum of the file announced next (FILE_SUM; `None` inside: one
    /// that cannot be compared).
    sum: Option<(u32, Option<crate::control::FileSum>)>,
}

/// Size of one write-behind buffer.
pub const WRITE_BEHIND: usize = 1 << 20;
/// Write-behind buffers per sink (one collecting, the others in flight to the file).
pub const WRITE_BUFFERS: usize = 4;

/// A run handed to the writer thread.
type WriteJob = (Arc<File>, u64, Vec<u8>);
/// The buffer back, emptied, with the outcome of its write.
type WriteDone = (Vec<u8>, io::Result<()>);

/// The file stage: a thread writing runs, and the buffers it has not yet handed back.
#[derive(Debug)]
struct Writer {
    jobs: Option<crossbeam_channel::Sender<WriteJob>>,
    done: crossbeam_channel::Receiver<WriteDone>,
    /// Empty buffers ready for the next run.
    spare: Vec<Vec<u8>>,
    in_flight: usize,
    /// The first write error, reported by the next write, read or finish.
    error: Option<io::Error>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start() -> io::Result<Self> {
        let (jobs, job_rx) = crossbeam_channel::bounded::<WriteJob>(WRITE_BUFFERS);
        let (done_tx, done) = crossbeam_channel::bounded::<WriteDone>(WRITE_BUFFERS);
        let thread = std::thread::Builder::new().name("ferry-write".into()).spawn(move || {
            for (file, offset, mut buf) in job_rx {
                let result = file.write_all_at(&buf, offset);
                drop(file);
                buf.clear();
                if done_tx.send((buf, result)).is_err() {
                    return;
                }
            }
        })?;
        let spare = (0..WRITE_BUFFERS - 1).map(|_| Vec::with_capacity(WRITE_BEHIND)).collect();
        Ok(Self { jobs: Some(jobs), done, spare, in_flight: 0, error: None, thread: Some(thread) })
    }

    fn complete(&mut self, (buf, result): WriteDone) {
        self.in_flight -= 1;
        self.spare.push(buf);
        if let Err(e) = result {
            self.error.get_or_insert(e);
        }
    }

    /// Sends a run to the writer thread and returns an empty buffer for the next one (waiting
    /// for one to come back when all are in flight).
    fn submit(&mut self, job: WriteJob) -> io::Result<Vec<u8>> {
        while let Ok(d) = self.done.try_recv() {
            self.complete(d);
        }
        let jobs = self.jobs.as_ref().expect("writer running");
        jobs.send(job).map_err(|_| io::Error::other("the file writer thread stopped"))?;
        self.in_flight += 1;
        if self.spare.is_empty() {
            let d = self.done.recv().map_err(|_| io::Error::other("the file writer stopped"))?;
            self.complete(d);
        }
        self.take_error()?;
        Ok(self.spare.pop().expect("a buffer came back"))
    }

    /// Waits until every submitted run is written.
    fn wait_all(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            let d = self.done.recv().map_err(|_| io::Error::other("the file writer stopped"))?;
            self.complete(d);
        }
        self.take_error()
    }

    fn take_error(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the job channel ends the thread once it has written what it holds; joining it
        // guarantees no write lands after the sink removed its partial files.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A run of contiguous bytes of one file not yet written to it.
#[derive(Debug)]
struct WriteBehind {
    file: u32,
    offset: u64,
    buf: Vec<u8>,
}

fn invalid(e: PathError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

pub(crate) fn random_suffix() -> u64 {
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    u64::from_le_bytes(b)
}

impl FileSink {
    /// A sink writing to `dest` beneath `root`.
    pub fn new(root: Arc<Docroot>, dest: Destination, limits: SinkLimits) -> Self {
        let pending = WriteBehind { file: 0, offset: 0, buf: Vec::with_capacity(WRITE_BEHIND) };
        Self {
            root,
            dest,
            files: Vec::new(),
            parents: Vec::new(),
            parent_index: std::collections::HashMap::new(),
            open: Vec::new(),
            dirs: Vec::new(),
            limits,
            tick: 0,
            pending,
            writer: None,
            claimed: std::collections::HashSet::new(),
            journals: 0,
            sum: None,
        }
    }

    /// Claims the journal of resumable `file` in `dir` (see [`super::journal::resume`]): on
    /// success the file's partial gets its deterministic name and what checked out is kept for
    /// [`BlockSink::resumed`]. Returns the partial left by an earlier attempt, if any checked
    /// out. Without a journal (another session holds it, too many are held, or it cannot be
    /// used) the file is received as in a session that does not resume.
    fn claim_journal(&mut self, file: u32, dir: &Dir) -> Option<File> {
        let sf = &mut self.files[file as usize];
        sf.resumable = false;
        if self.journals >= MAX_JOURNALS {
            return None;
        }
        let suffix = super::docroot::resume_suffix(&sf.name);
        let ticket = self.limits.claims.as_ref();
        let partial = super::journal::Partial {
            name: sf.visible.clone().unwrap_or_else(|| partial_name(&sf.name, suffix)),
            visible: sf.visible.is_some(),
            check: self.limits.chunk_check.as_deref().unwrap_or(&super::PlainChunks),
        };
        let claimed =
            super::journal::claim(dir, &sf.name, suffix, &partial, sf.size, sf.mtime_ns, ticket);
        if !matches!(claimed, Ok(Some(_))) {
            // Received into a partial of its own (another session holds this one).
            sf.visible = None;
        }
        match claimed {
            Ok(Some(r)) => {
                if let Some(t) = ticket {
                    t.hold(r.journal.key());
                }
                self.journals += 1;
                sf.suffix = suffix;
                sf.journal = Some(Box::new(r.journal));
                sf.resumed = r.chunks;
                if let (Some(p), Some((0, _))) = (&r.partial, sf.resumed.first()) {
                    // Its bytes checked out against the journal a moment ago.
                    let mut head =
                        vec![0; sf.size.min(crate::control::MAX_HAVE_HEAD as u64) as usize];
                    if std::os::unix::fs::FileExt::read_exact_at(p, &mut head, 0).is_ok() {
                        sf.head = head;
                    }
                }
                r.partial
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot use the journal of a resumable file");
                None
            }
        }
    }

    /// Drops the journal of `file`, removing it (`remove`) or leaving it for the next attempt.
    fn release_journal(&mut self, file: u32, remove: bool) {
        let sf = &mut self.files[file as usize];
        let Some(journal) = sf.journal.take() else { return };
        self.journals -= 1;
        let key = journal.key();
        if remove {
            let name = sf.journal_name();
            if let Ok(dir) = self.root.open_dir(&self.parents[sf.parent as usize]) {
                let _ = dir.remove_file(&name);
            }
        }
        // Unlocked before it leaves the board: a session that finds it locked meanwhile still
        // finds this one as its holder.
        drop(journal);
        if let Some(t) = &self.limits.claims {
            t.release(key);
        }
    }

    /// Partial files open right now.
    pub fn open_descriptors(&self) -> usize {
        self.open.len()
    }

    /// Hands the pending run to the writer thread (started on first use).
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.buf.is_empty() {
            return Ok(());
        }
        let file = self.pending.file;
        let f = match self.handle(file) {
            Ok(f) => f,
            Err(e) => {
                self.pending.buf.clear();
                return Err(e);
            }
        };
        if self.writer.is_none() {
            self.writer = Some(Writer::start()?);
        }
        let at = self.files[file as usize].base() + self.pending.offset;
        let writer = self.writer.as_mut().expect("started");
        let full = std::mem::take(&mut self.pending.buf);
        self.pending.buf = writer.submit((f, at, full))?;
        Ok(())
    }

    /// Flushes the pending run and waits until everything written so far is in the files.
    /// With nothing in flight at the writer thread the pending run is written here: handing it
    /// over and waiting for it would cost two thread switches (per file, for small files) and
    /// save nothing.
    fn sync_writes(&mut self) -> io::Result<()> {
        let idle = self.writer.as_mut().is_none_or(|w| {
            while let Ok(d) = w.done.try_recv() {
                w.complete(d);
            }
            w.in_flight == 0
        });
        if idle && !self.pending.buf.is_empty() {
            if let Some(w) = &mut self.writer {
                w.take_error()?;
            }
            let file = self.pending.file;
            let at = self.files.get(file as usize).map_or(0, SinkFile::base) + self.pending.offset;
            let written = self.handle(file).and_then(|f| f.write_all_at(&self.pending.buf, at));
            self.pending.buf.clear();
            return written;
        }
        self.flush()?;
        match &mut self.writer {
            Some(w) => w.wait_all(),
            None => Ok(()),
        }
    }

    /// The open directory `rel` beneath the docroot, created if needed.
    fn dir(&mut self, rel: &RelPath) -> io::Result<&Dir> {
        if let Some(i) = self.dirs.iter().position(|(p, _)| p == rel) {
            let entry = self.dirs.remove(i);
            self.dirs.push(entry);
        } else {
            let d = self.root.create_dirs(rel)?;
            if self.dirs.len() == DIR_CACHE {
                self.dirs.remove(0);
            }
            self.dirs.push((rel.clone(), d));
        }
        Ok(&self.dirs.last().expect("just pushed").1)
    }

    /// The open partial file of `file`, creating it on first use and reopening it if its
    /// descriptor was closed to make room.
    fn handle(&mut self, file: u32) -> io::Result<Arc<File>> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(o) = self.open.iter_mut().find(|o| o.0 == file) {
            o.2 = tick;
            return Ok(o.1.clone());
        }
        let sf = self.files.get(file as usize).ok_or_else(|| io::Error::other("no such file"))?;
        if let Some(claim) = &sf.claim {
            return Ok(claim.file().clone());
        }
        let parent = self.parents[sf.parent as usize].clone();
        let (partial, stage, size, resumable) = (sf.partial(), sf.stage, sf.size, sf.resumable);
        let shown = parent.join(&sf.name).map_or_else(|_| sf.name.clone(), |p| p.to_string());
        let context = |what: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{}: {what}: {e}", super::docroot::escape(&shown, 120)),
            )
        };
        let handle = match stage {
            Stage::Done => return Err(io::Error::other("the file is already finished")),
            Stage::Created if sf.part.is_some() => {
                return Err(io::Error::other("the file's part was given up"));
            }
            Stage::Announced if sf.part.is_some() => {
                let (part, name, mtime_ns) =
                    (sf.part.expect("a part"), sf.name.clone(), sf.mtime_ns);
                let dir =
                    self.dir(&parent).map_err(|e| context("cannot create its directory", e))?;
                let claim = super::assembly::claim(dir, &name, &part, size, mtime_ns)
                    .map_err(|e| context("cannot join the file's other parts", e))?;
                let f = claim.file().clone();
                let sf = &mut self.files[file as usize];
                sf.stage = Stage::Created;
                sf.claim = Some(claim);
                return Ok(f);
            }
            Stage::Announced => {
                let dir =
                    self.dir(&parent).map_err(|e| context("cannot create its directory", e))?;
                let mut partial = partial;
                if resumable {
                    // Its directory did not exist when it was announced: nothing to resume,
                    // but this attempt keeps a journal for the next one.
                    let dir = dir.try_clone()?;
                    if let Some(left) = self.claim_journal(file, &dir) {
                        // Another session made the directory and left a partial meanwhile:
                        // the receiver was told nothing is held, so start it again.
                        drop(left);
                        let sf = &mut self.files[file as usize];
                        sf.resumed.clear();
                        sf.head.clear();
                        let _ = dir.remove_file(&sf.partial());
                    }
                    partial = self.files[file as usize].partial();
                }
                let visible = self.files[file as usize].visible.is_some();
                let dir = self.dir(&parent).map_err(|e| context("cannot open its directory", e))?;
                let f = dir.create_new(&partial, 0o600).map_err(|e| {
                    if visible && e.kind() == io::ErrorKind::AlreadyExists {
                        let why = format!(
                            "{partial} exists, and it is the partial name --partial-file-suffix \
                             gives this file (Ferry does not overwrite it): remove or rename it, \
                             or choose another suffix"
                        );
                        return io::Error::new(io::ErrorKind::AlreadyExists, why);
                    }
                    context("cannot create the partial file", e)
                })?;
                let identity = super::docroot::fd_meta(&f)?.dev_ino;
                if let Err(e) = f.set_len(size) {
                    let _ = dir.remove_file(&partial);
                    return Err(context("cannot size it", e));
                }
                let sf = &mut self.files[file as usize];
                sf.stage = Stage::Created;
                sf.identity = Some(identity);
                f
            }
            Stage::Created => {
                let dir = self.dir(&parent).map_err(|e| context("cannot open its directory", e))?;
                let (f, meta) = dir
                    .open_rw(&partial)
                    .map_err(|e| context("cannot reopen the partial file", e))?;
                if Some(meta.dev_ino) != self.files[file as usize].identity {
                    return Err(context(
                        "cannot reopen the partial file",
                        io::Error::other("it was replaced by another file"),
                    ));
                }
                f
            }
        };
        let handle = Arc::new(handle);
        if self.open.len() >= self.limits.max_open.max(1) {
            let lru = (0..self.open.len()).min_by_key(|&i| self.open[i].2).expect("non-empty");
            self.open.swap_remove(lru);
        }
        self.open.push((file, handle.clone(), tick));
        Ok(handle)
    }

    fn close(&mut self, file: u32) {
        self.open.retain(|o| o.0 != file);
    }

    /// Where the file of `entry` goes: its directory and name beneath the docroot.
    /// Also whether an existing file of its name is to be replaced (the overwrite policy);
    /// an existing file the policy keeps makes this a [`skip`](crate::session::skip) error.
    fn resolve(&self, entry: &FileEntry) -> io::Result<(RelPath, String, bool)> {
        let rel = RelPath::parse(&entry.path).map_err(invalid)?;
        let target = match &self.dest {
            Destination::Dir(dir) => dir.join_path(&rel),
            Destination::File(file) => {
                if entry.id != 0 || rel.components().count() != 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{}: the destination is a file name, so only a single file can be sent to it; name an existing directory instead",
                            rel.shown()
                        ),
                    ));
                }
                file.clone()
            }
        };
        let (parent, name) = target.split_last().expect("a target has a name");
        let name = name.to_owned();
        // Through the directory cache when the parent is in it (a tree of small files keeps
        // landing in the same few directories): one fstatat instead of an open of the parent.
        let existing = match self.dirs.iter().find(|(p, _)| *p == parent) {
            Some((_, dir)) => dir.meta(&name).ok().flatten(),
            None => self.root.meta(&target).ok().flatten(),
        };
        let Some(existing) = existing else { return Ok((parent, name, false)) };
        let shown = rel.shown();
        if existing.kind != super::docroot::Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{shown} already exists at the destination and is not a regular file; Ferry replaces only files (remove it or choose another destination)"
                ),
            ));
        }
        use crate::control::Overwrite;
        let policy = self.limits.overwrite;
        let whole = entry.part.map_or(entry.size, |p| p.total);
        let sum = self.sum.as_ref().filter(|(id, _)| *id == entry.id).map(|(_, s)| s.as_ref());
        let same = self.limits.resume
            && existing.size == whole
            && sum.is_none_or(|sum| sum.is_some_and(|sum| self.same_content(&target, whole, sum)));
        let sum = sum.flatten();
        let older = existing.mtime_ns < entry.mtime_ns;
        let verdict = if policy == Overwrite::Keep && self.limits.replace {
            Ok(true)
        } else {
            policy.decide(same, older)
        };
        match verdict {
            Ok(true) if self.limits.replace => Ok((parent, name, true)),
            Ok(true) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{shown} already exists at the destination and the receiving end does not allow replacing files (its administrator decides); nothing was changed"
                ),
            )),
            Ok(false) => Err(crate::session::skip(match policy {
                Overwrite::Never => "exists at the destination (--overwrite never)".to_owned(),
                _ if same && sum.is_some() => format!(
                    "the same content at the destination: kept (compared by {})",
                    match sum {
                        Some(crate::control::FileSum::Sparse(c)) => {
                            format!("size and {} sampled 1 MiB chunks, -k 2", c.len())
                        }
                        _ => "size and BLAKE3 of the whole file, -k 3".to_owned(),
                    }
                ),
                _ if same => format!(
                    "the same size ({} bytes) at the destination: kept (compared by size, as -k 1 \
                     does)",
                    existing.size
                ),
                _ => "the destination's copy is not older: kept".to_owned(),
            })),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{shown} already exists at the destination with another size; Ferry does not overwrite files unless asked (--overwrite diff replaces it once the new copy verified; remove it or choose another destination)"
                ),
            )),
        }
    }

    /// Whether the existing file at `target` (of `size` bytes) has the content `sum` says,
    /// read through the docroot (no link followed). A file that cannot be read is not the same.
    fn same_content(&self, target: &RelPath, size: u64, sum: &crate::control::FileSum) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok((f, meta)) = self.root.open_file(target) else { return false };
        if meta.size != size {
            return false;
        }
        let level = if matches!(sum, crate::control::FileSum::Sparse(_)) { 2 } else { 3 };
        let mine = crate::session::file_sum(level, size, |at, buf| f.read_exact_at(buf, at));
        mine.is_ok_and(|m| m.as_ref() == Some(sum))
    }

    /// Renames the complete partial of `file` into place (for a part: counts it, and moves the
    /// file into place if it was the last).
    fn publish(&mut self, file: u32) -> io::Result<()> {
        if self.files[file as usize].part.is_some() {
            // A part with no block yet (nothing claimed) cannot be verified: parts are never
            // empty.
            let sf = &mut self.files[file as usize];
            let claim = sf.claim.take().ok_or_else(|| io::Error::other("no bytes of the part"))?;
            let claim = if self.limits.preserve_mtime { claim.preserving_mtime() } else { claim };
            claim.complete(sf.mode, sf.replace)?;
            sf.stage = Stage::Done;
            return Ok(());
        }
        let f = self.handle(file)?;
        let sf = &self.files[file as usize];
        let parent = self.parents[sf.parent as usize].clone();
        let (mode, partial, name) = (sf.mode, sf.partial(), sf.name.clone());
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if self.limits.preserve_mtime
            && let Some(times) = mtime(sf.mtime_ns)
        {
            f.set_times(times)?;
        }
        f.sync_all()?;
        self.close(file);
        drop(f);
        let replace = self.files[file as usize].replace;
        let dir = self.dir(&parent)?;
        move_into_place(dir, &partial, &name, replace)?;
        self.files[file as usize].stage = Stage::Done;
        self.release_journal(file, true);
        Ok(())
    }

    /// The index of directory `rel` in [`FileSink::parents`].
    fn intern(&mut self, rel: RelPath) -> u32 {
        if let Some(&i) = self.parent_index.get(&rel) {
            return i;
        }
        let i = self.parents.len() as u32;
        self.parents.push(rel.clone());
        self.parent_index.insert(rel, i);
        i
    }

    /// Removes the partial of `file`, if it was created (a part gives up its claim instead:
    /// the partial is the whole file's).
    fn discard(&mut self, file: u32) {
        self.close(file);
        self.release_journal(file, true);
        let sf = &mut self.files[file as usize];
        if sf.part.is_some() {
            sf.claim = None;
        } else if sf.stage == Stage::Created {
            let partial = sf.partial();
            if let Ok(dir) = self.root.open_dir(&self.parents[sf.parent as usize]) {
                // A visible partial is removed only if it is still the file this sink had (a
                // name anyone can use: never someone else's file that took its place).
                let same = || {
                    dir.meta(&partial)
                        .ok()
                        .flatten()
                        .is_some_and(|m| Some(m.dev_ino) == sf.identity)
                };
                if sf.visible.is_none() || same() {
                    let _ = dir.remove_file(&partial);
                }
            }
        }
        self.files[file as usize].stage = Stage::Done;
    }
}

/// Renames the complete, synced `partial` in `dir` to `name` (replacing an existing file only
/// with `replace`), then syncs the directory.
pub(crate) fn move_into_place(
    dir: &Dir,
    partial: &str,
    name: &str,
    replace: bool,
) -> io::Result<()> {
    let renamed = if replace {
        dir.rename_replace(partial, name)
    } else {
        dir.rename_noreplace(partial, name)
    };
    renamed.map_err(|e| {
        let shown = super::docroot::escape(name, 120);
        if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(
                e.kind(),
                format!("{shown} appeared at the destination during the transfer; Ferry does not overwrite files"),
            )
        } else {
            io::Error::new(e.kind(), format!("{shown}: cannot move into place: {e}"))
        }
    })?;
    let _ = dir.sync();
    Ok(())
}

impl BlockSink for FileSink {
    fn open(&mut self, entry: &FileEntry) -> io::Result<()> {
        if entry.id as usize != self.files.len() {
            return Err(io::Error::other("file ids out of sequence"));
        }
        let resolved = self.resolve(entry).and_then(|(p, n, replace)| {
            let parent = self.intern(p);
            if self.limits.replace && !self.claimed.insert((parent, n.clone())) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} appears twice in this transfer",
                        RelPath::parse(&entry.path)
                            .map_or_else(|_| entry.path.clone(), |r| r.shown().to_string())
                    ),
                ));
            }
            Ok((parent, n, replace))
        });
        let (parent, name, replace, stage, result) = match resolved {
            Ok((p, n, r)) => (p, n, r, Stage::Announced, Ok(())),
            // Refused: nothing will be written; the manifest path is kept for reports.
            Err(e) => {
                (self.intern(RelPath::root()), entry.path.clone(), false, Stage::Done, Err(e))
            }
        };
        self.files.push(SinkFile {
            parent,
            name,
            suffix: random_suffix(),
            size: entry.size,
            mode: if entry.mode & 0o777 != 0 { entry.mode & 0o777 } else { 0o644 },
            stage,
            identity: None,
            part: entry.part,
            mtime_ns: entry.mtime_ns,
            claim: None,
            resumable: false,
            journal: None,
            resumed: Vec::new(),
            head: Vec::new(),
            visible: None,
            replace,
        });
        if result.is_ok()
            && entry.part.is_none()
            && let Some(sfx) = &self.limits.partial_suffix
        {
            let sf = &mut self.files[entry.id as usize];
            let visible = format!("{}{sfx}", sf.name);
            // Never a name reserved for partials and journals (another file's, say).
            if visible.len() <= super::docroot::NAME_MAX
                && !super::docroot::is_partial_name(&visible)
            {
                sf.visible = Some(visible);
            }
        }
        if result.is_ok()
            && self.limits.resume
            && crate::session::resumable(entry.size, entry.part.is_some())
        {
            self.files[entry.id as usize].resumable = true;
            let parent = self.parents[parent as usize].clone();
            // A missing directory holds nothing to resume; the journal is claimed when the
            // partial is created.
            if let Ok(dir) = self.root.open_dir(&parent)
                && let Some(left) = self.claim_journal(entry.id, &dir)
            {
                let identity = super::docroot::fd_meta(&left)?.dev_ino;
                let sf = &mut self.files[entry.id as usize];
                sf.stage = Stage::Created;
                sf.identity = Some(identity);
            }
        }
        result
    }

    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        if self.files.get(file as usize).is_none_or(|f| f.stage == Stage::Done) {
            return Err(SinkError::Io(io::Error::other("file not open")));
        }
        let p = &self.pending;
        let continues = p.file == file && p.offset + p.buf.len() as u64 == offset;
        if !p.buf.is_empty() && (!continues || p.buf.len() + data.len() > WRITE_BEHIND) {
            self.flush().map_err(SinkError::Io)?;
        }
        if self.pending.buf.is_empty() {
            self.pending.file = file;
            self.pending.offset = offset;
        }
        self.pending.buf.extend_from_slice(data);
        Ok(())
    }

    fn free_blocks(&self) -> u64 {
        u64::MAX
    }

    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        if self.files.get(file as usize).is_none_or(|f| f.stage == Stage::Done) {
            return Ok(());
        }
        if self.pending.file == file && !verified {
            self.pending.buf.clear();
        }
        // Every run of this file (and, simply, of the others) must be written before it is
        // synced and moved into place, or before its partial is removed.
        let synced = self.sync_writes();
        let result = match (verified, synced) {
            (true, Ok(())) => self.publish(file),
            (_, Err(e)) => Err(e),
            (false, Ok(())) => Ok(()),
        };
        self.discard(file);
        result
    }

    fn name(&self, file: u32) -> Option<String> {
        let f = self.files.get(file as usize)?;
        let parent = &self.parents[f.parent as usize];
        Some(parent.join(&f.name).map_or_else(|_| f.name.clone(), |p| p.to_string()))
    }

    fn resumed(&mut self, file: u32) -> Vec<(u64, [u8; 32])> {
        self.files
            .get_mut(file as usize)
            .map(|f| std::mem::take(&mut f.resumed))
            .unwrap_or_default()
    }

    fn held_head(&mut self, file: u32) -> Vec<u8> {
        self.files.get_mut(file as usize).map(|f| std::mem::take(&mut f.head)).unwrap_or_default()
    }

    fn expect_sum(&mut self, file: u32, sum: Option<crate::control::FileSum>) {
        self.sum = Some((file, sum));
    }

    fn chunk_received(&mut self, file: u32, offset: u64, cv: &[u8; 32]) {
        let Some(journal) = self.files.get_mut(file as usize).and_then(|f| f.journal.as_mut())
        else {
            return;
        };
        if let Err(e) = journal.record(offset, cv) {
            // The file still arrives; only a later attempt could not resume it.
            tracing::debug!(error = %e, "cannot write a partial file's journal");
            self.release_journal(file, true);
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        // Stop the writer first: nothing may be written after a partial file is removed.
        self.writer = None;
        for id in 0..self.files.len() {
            let f = &self.files[id];
            if f.journal.is_some() && f.stage == Stage::Created {
                // Interrupted: the partial and its journal stay for the next attempt.
                self.release_journal(id as u32, false);
                continue;
            }
            self.discard(id as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, path: &str, size: u64) -> FileEntry {
        FileEntry { id, size, mtime_ns: 0, mode: 0o640, path: path.into(), part: None }
    }

    fn sink(dir: &std::path::Path) -> FileSink {
        let root = Arc::new(Docroot::open(dir).unwrap());
        FileSink::new(root, Destination::Dir(RelPath::root()), SinkLimits::default())
    }

    #[test]
    /// The write-behind buffer: runs coalesce, two files interleave, a block held back lands
    /// at its offset, and a failed file's pending bytes are discarded without touching the
    /// other file.
    fn write_behind_coalesces_and_interleaves() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path());
        let size = 3 * WRITE_BEHIND as u64 + 100;
        sink.open(&entry(0, "a", size)).unwrap();
        sink.open(&entry(1, "b", 10)).unwrap();
        let want: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        // In order, in 1000-byte blocks, except one block held back and sent last.
        let held = 5 * 1000;
        for off in (0..size as usize).step_by(1000).filter(|&o| o != held) {
            let end = (off + 1000).min(size as usize);
            sink.write(0, off as u64, &want[off..end]).unwrap();
            if off == 2 * WRITE_BEHIND {
                // Interleave the other file: the run of `a` is flushed, nothing is lost.
                sink.write(1, 0, b"0123456789").unwrap();
            }
        }
        sink.write(0, held as u64, &want[held..held + 1000]).unwrap();
        sink.finish(1, false).unwrap();
        sink.finish(0, true).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), want);
        assert!(!dir.path().join("b").exists());
    }

    #[test]
    fn writes_partial_then_renames() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path());
        sink.open(&entry(0, "sub/ü.bin", 6)).unwrap();
        // Announcing creates nothing.
        assert!(!dir.path().join("sub").exists());
        sink.write(0, 3, b"def").unwrap();
        sink.write(0, 0, b"abc").unwrap();
        assert!(!dir.path().join("sub/ü.bin").exists());
        sink.finish(0, true).unwrap();
        assert_eq!(std::fs::read(dir.path().join("sub/ü.bin")).unwrap(), b"abcdef");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1, "partial removed");
    }

    #[test]
    fn long_names_and_empty_files_land() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path());
        let long = "n".repeat(250);
        sink.open(&entry(0, &long, 2)).unwrap();
        sink.open(&entry(1, "empty", 0)).unwrap();
        sink.write(0, 0, b"hi").unwrap();
        sink.finish(0, true).unwrap();
        sink.finish(1, true).unwrap();
        assert_eq!(std::fs::read(dir.path().join(&long)).unwrap(), b"hi");
        assert_eq!(std::fs::read(dir.path().join("empty")).unwrap(), b"");
    }

    #[test]
    fn descriptors_stay_bounded_across_many_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = Arc::new(Docroot::open(dir.path()).unwrap());
        let mut sink = FileSink::new(
            root,
            Destination::Dir(RelPath::root()),
            SinkLimits { max_open: 3, ..SinkLimits::default() },
        );
        for i in 0..20 {
            sink.open(&entry(i, &format!("d{}/f{i}", i % 4), 2 * WRITE_BEHIND as u64)).unwrap();
        }
        // Interleaved writes to all of them: partials are closed and reopened.
        let block = vec![9u8; WRITE_BEHIND];
        for round in 0..2u64 {
            for i in 0..20 {
                sink.write(i, round * WRITE_BEHIND as u64, &block).unwrap();
                assert!(sink.open_descriptors() <= 3);
            }
        }
        for i in 0..20 {
            sink.finish(i, true).unwrap();
            let got = std::fs::metadata(dir.path().join(format!("d{}/f{i}", i % 4))).unwrap();
            assert_eq!(got.len(), 2 * WRITE_BEHIND as u64);
        }
    }

    #[test]
    fn failed_and_dropped_files_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink(dir.path());
        sink.open(&entry(0, "a", 3)).unwrap();
        sink.open(&entry(1, "b", 3)).unwrap();
        sink.write(0, 0, b"abc").unwrap();
        sink.write(1, 0, b"abc").unwrap();
        sink.finish(0, false).unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_escape_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("exists"), b"keep").unwrap();
        let mut sink = sink(dir.path());
        sink.open(&entry(0, "link/x", 1)).unwrap();
        let e = sink.write(0, 0, b"x").and_then(|()| sink.finish(0, true).map_err(SinkError::Io));
        assert!(e.is_err());
        assert!(sink.open(&entry(1, "../x", 1)).is_err());
        let e = sink.open(&entry(2, "exists", 1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(!e.to_string().contains(dir.path().to_str().unwrap()), "no server paths: {e}");
        assert_eq!(std::fs::read(dir.path().join("exists")).unwrap(), b"keep");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}

/// What [`sweep_partials`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Stale partial files removed.
    pub removed: usize,
    /// Partial files left because they changed recently (a session may still be writing them).
    pub recent: usize,
    /// Directories visited.
    pub dirs: usize,
}

/// Removes partial files left beneath `root` by sessions that ended without cleaning up (the
/// process was killed, the machine crashed): every file with a partial name that has not been
/// modified for `stale`. A running session writes its partials continuously, so they are never
/// that old. Directories are visited one at a time beneath the docroot, without following
/// symbolic links. Blocking: run it off any async runtime.
pub fn sweep_partials(root: &Docroot, stale: std::time::Duration) -> io::Result<Sweep> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let stale_ns = stale.as_nanos() as i64;
    let mut out = Sweep::default();
    let mut stack = vec![RelPath::root()];
    while let Some(rel) = stack.pop() {
        let Ok(dir) = root.open_dir(&rel) else { continue };
        out.dirs += 1;
        for (name, kind) in dir.entries()? {
            use super::docroot::{Kind, is_partial_name};
            if is_partial_name(&name) {
                let Ok(Some(m)) = dir.meta(&name) else { continue };
                if m.kind != Kind::File {
                    continue;
                }
                if now.saturating_sub(m.mtime_ns) >= stale_ns {
                    if dir.remove_file(&name).is_ok() {
                        out.removed += 1;
                    }
                } else {
                    out.recent += 1;
                }
                continue;
            }
            let is_dir = match kind {
                Some(Kind::Dir) => true,
                None => dir.meta(&name).ok().flatten().is_some_and(|m| m.kind == Kind::Dir),
                _ => false,
            };
            if is_dir && let Ok(sub) = rel.join(&name) {
                stack.push(sub);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod sweep_tests {
    use super::*;

    #[test]
    fn sweeps_only_stale_partials() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        let old = d.path().join("a/b").join(partial_name("x", 1));
        let fresh = d.path().join("a").join(partial_name("y", 2));
        std::fs::write(&old, b"old").unwrap();
        std::fs::write(&fresh, b"new").unwrap();
        std::fs::write(d.path().join("a/keep"), b"k").unwrap();
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&old).unwrap().set_modified(past).unwrap();
        let root = Docroot::open(d.path()).unwrap();
        let s = sweep_partials(&root, std::time::Duration::from_secs(600)).unwrap();
        assert_eq!((s.removed, s.recent, s.dirs), (1, 1, 3));
        assert!(!old.exists() && fresh.exists() && d.path().join("a/keep").exists());
    }
}
