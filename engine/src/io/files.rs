//! File sources and sinks for real transfers.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::control::FileEntry;
use crate::session::{BlockSink, BlockSource, SinkError};

/// The sender's files, memory-mapped read-only.
///
/// A file that another process truncates while it is mapped makes reads of the lost pages fault
/// (SIGBUS); Ferry sends files that are not being rewritten, like `ascp`. The digest covers the
/// bytes actually sent, so a file modified (not truncated) during the transfer fails verification
/// instead of landing silently corrupted.
///
/// Memory stays bounded whatever the file size: after every [`RELEASE_STEP`] bytes read, the
/// pages more than [`RELEASE_BEHIND`] behind the furthest read are released from this process's
/// mapping (`MADV_DONTNEED`; they stay in the page cache, so a retransmission that needs them
/// again faults them back in cheaply). Resident memory is then at most about `RELEASE_BEHIND +
/// RELEASE_STEP` of mapped file per file in flight.
#[derive(Debug, Default)]
pub struct MmapSource {
    files: Vec<Option<MappedFile>>,
}

#[derive(Debug)]
struct MappedFile {
    map: Mmap,
    /// The end of the furthest read so far.
    furthest: usize,
    /// Bytes read since the last release.
    read_since_release: usize,
}

/// How far behind the furthest read the mapping's pages are kept.
pub const RELEASE_BEHIND: usize = 32 << 20;
/// Pages are released after every this many bytes read (one `madvise` per step).
pub const RELEASE_STEP: usize = 32 << 20;

impl MmapSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `file` (opened for reading) as the next file id and returns its size.
    #[allow(unsafe_code)]
    pub fn add(&mut self, file: &File) -> io::Result<u64> {
        let size = file.metadata()?.len();
        if size == 0 {
            self.files.push(None);
            return Ok(0);
        }
        // SAFETY: the mapping is read-only and private to this process; Rust never sees a
        // reference into it that outlives `self`. Concurrent modification by another process
        // can change the bytes read (caught by the digest) or fault on truncation (documented
        // above); it cannot violate memory safety of this process's own data.
        let map = unsafe { Mmap::map(file)? };
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        self.files.push(Some(MappedFile { map, furthest: 0, read_since_release: 0 }));
        Ok(size)
    }
}

impl MappedFile {
    /// Records a read of `len` bytes at `offset`; once [`RELEASE_STEP`] bytes have been read
    /// since the last release (first transmissions and retransmissions alike), releases the
    /// pages more than [`RELEASE_BEHIND`] before the furthest read.
    #[allow(unsafe_code)]
    fn release_before(&mut self, offset: usize, len: usize) {
        self.furthest = self.furthest.max(offset + len);
        self.read_since_release += len;
        if self.read_since_release < RELEASE_STEP {
            return;
        }
        let Some(upto) = self.furthest.checked_sub(RELEASE_BEHIND) else { return };
        self.read_since_release = 0;
        // Whole pages only (the mapping starts page-aligned; 64 KiB is a multiple of every
        // page size Linux uses on the platforms Ferry supports).
        let upto = upto & !0xffff;
        // Everything before `upto`, not just the new step: retransmissions fault old pages back
        // in, and those must go again too.
        // SAFETY: MADV_DONTNEED on a read-only, shared, file-backed mapping only drops this
        // process's page-table entries; the next access faults the same file bytes back in from
        // the page cache. No reference into the range is held across this call (reads copy out).
        let _ =
            unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, upto) };
    }
}

impl MmapSource {
    /// Opens and maps the file at `path` (the descriptor is closed again; the mapping stays).
    pub fn add_path(&mut self, path: &Path) -> io::Result<u64> {
        self.add(&File::open(path)?)
    }
}

impl BlockSource for MmapSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let f =
            self.files.get_mut(file as usize).ok_or_else(|| io::Error::other("no such file"))?;
        let Some(f) = f else {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"))
            };
        };
        let src = f
            .map
            .get(start..start + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"))?;
        buf.copy_from_slice(src);
        f.release_before(start, buf.len());
        Ok(())
    }
}

/// Where a [`FileSink`] puts the files it receives.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Into this directory: each file at its manifest path below it.
    Dir(PathBuf),
    /// The session's single file lands under exactly this name.
    File(PathBuf),
}

/// Checks a manifest path: relative, `/`-separated, no empty, `.` or `..` components, no NUL or
/// backslash, and every component a plain name. Returns the components.
pub fn validate_relative(path: &str) -> Result<Vec<&str>, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} is absolute"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("{path:?} has an empty, `.` or `..` component"));
        }
        if part.contains(['\0', '\\']) || part.chars().any(char::is_control) {
            return Err(format!("{path:?} contains a control character or backslash"));
        }
        if !matches!(Path::new(part).components().next(), Some(Component::Normal(_))) {
            return Err(format!("{path:?} has an unusual component"));
        }
        parts.push(part);
    }
    Ok(parts)
}

#[derive(Debug)]
struct SinkFile {
    file: Option<Arc<File>>,
    partial: PathBuf,
    target: PathBuf,
    mode: u32,
    display: String,
}

/// A [`BlockSink`] writing each file at its offsets into a partial file
/// `.NAME.ferry-partial-<random>` beside its final name, renamed into place (without replacing
/// anything) once the digest verified, removed otherwise and when the sink is dropped unfinished.
///
/// Every path stays inside `root`: manifest paths are validated, created directories are checked
/// against the canonical root (a symlink pointing out is refused), and existing files are never
/// overwritten. Error messages name only the manifest path, never server-side absolute paths,
/// because they travel to the peer.
///
/// Blocks mostly arrive in order, so writes are coalesced: a run of contiguous blocks of one file
/// collects in a buffer of [`WRITE_BEHIND`] bytes, and full runs go to a writer thread (the
/// file stage) over a channel, which `pwrite`s them (one system call per ~700 blocks instead of
/// one per block, and the copy into the page cache off the network thread) and hands the buffer
/// back for reuse. At most [`WRITE_BUFFERS`] runs are in flight; a slow disk therefore slows the
/// session (flow control) instead of growing memory. Reads wait for the writes they depend on,
/// and a file is finished only after all of its writes completed.
#[derive(Debug)]
pub struct FileSink {
    root: PathBuf,
    dest: Destination,
    files: Vec<SinkFile>,
    pending: WriteBehind,
    writer: Option<Writer>,
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

impl FileSink {
    /// A sink confined to `root` (canonicalised here) writing to `dest` (inside `root`).
    pub fn new(root: &Path, dest: Destination) -> io::Result<Self> {
        let root = root.canonicalize()?;
        let pending = WriteBehind { file: 0, offset: 0, buf: Vec::with_capacity(WRITE_BEHIND) };
        Ok(Self { root, dest, files: Vec::new(), pending, writer: None })
    }

    /// Hands the pending run to the writer thread (started on first use).
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.buf.is_empty() {
            return Ok(());
        }
        let file = self.pending.file;
        let Some(f) = self.files.get(file as usize).and_then(|f| f.file.clone()) else {
            self.pending.buf.clear();
            return Err(io::Error::other("file not open"));
        };
        if self.writer.is_none() {
            self.writer = Some(Writer::start()?);
        }
        let writer = self.writer.as_mut().expect("started");
        let full = std::mem::take(&mut self.pending.buf);
        self.pending.buf = writer.submit((f, self.pending.offset, full))?;
        Ok(())
    }

    /// Flushes the pending run and waits until everything written so far is in the files.
    fn sync_writes(&mut self) -> io::Result<()> {
        self.flush()?;
        match &mut self.writer {
            Some(w) => w.wait_all(),
            None => Ok(()),
        }
    }

    /// The final paths of the files announced so far.
    pub fn targets(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.target.as_path())
    }

    fn resolve(&self, entry: &FileEntry) -> io::Result<PathBuf> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let parts = validate_relative(&entry.path).map_err(bad)?;
        let target = match &self.dest {
            Destination::Dir(dir) => {
                let mut t = dir.clone();
                t.extend(&parts);
                t
            }
            Destination::File(file) => {
                if entry.id != 0 || parts.len() != 1 {
                    return Err(bad(format!(
                        "{:?}: the destination is a file name, so only a single file can be sent to it; name an existing directory instead",
                        entry.path
                    )));
                }
                file.clone()
            }
        };
        let parent = target.parent().ok_or_else(|| bad("no parent directory".into()))?;
        fs::create_dir_all(parent).map_err(|e| {
            io::Error::new(e.kind(), format!("{:?}: cannot create its directory: {e}", entry.path))
        })?;
        let canon = parent.canonicalize()?;
        if !canon.starts_with(&self.root) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{:?} leads outside the destination root (symlink)", entry.path),
            ));
        }
        let name = target.file_name().ok_or_else(|| bad("no file name".into()))?;
        let target = canon.join(name);
        if target.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{:?} already exists at the destination; Ferry does not overwrite files (remove it or choose another destination)",
                    entry.path
                ),
            ));
        }
        Ok(target)
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl BlockSink for FileSink {
    fn open(&mut self, entry: &FileEntry) -> io::Result<()> {
        let target = self.resolve(entry)?;
        let name = target.file_name().expect("resolved target has a name").to_string_lossy();
        let partial = target.with_file_name(format!(".{name}.ferry-partial-{}", random_suffix()));
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&partial);
        let file = file.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{:?}: cannot create the partial file: {e}", entry.path),
            )
        })?;
        let mut sf = SinkFile {
            file: Some(Arc::new(file)),
            partial,
            target,
            mode: if entry.mode & 0o777 != 0 { entry.mode & 0o777 } else { 0o644 },
            display: entry.path.clone(),
        };
        if let Err(e) = sf.file.as_ref().expect("open").set_len(entry.size) {
            let _ = fs::remove_file(&sf.partial);
            sf.file = None;
            return Err(io::Error::new(e.kind(), format!("{:?}: cannot size it: {e}", entry.path)));
        }
        self.files.push(sf);
        Ok(())
    }

    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        if self.files.get(file as usize).and_then(|f| f.file.as_ref()).is_none() {
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

    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let p = &self.pending;
        if p.file == file && !p.buf.is_empty() {
            let end = offset + buf.len() as u64;
            let p_end = p.offset + p.buf.len() as u64;
            if offset >= p.offset && end <= p_end {
                // Hashing in order mostly reads what was just written: serve it from the buffer.
                let start = (offset - p.offset) as usize;
                buf.copy_from_slice(&p.buf[start..start + buf.len()]);
                return Ok(());
            }
            if offset < p_end && end > p.offset {
                self.flush()?;
            }
        }
        // The bytes may be in a run still on its way to the file.
        if let Some(w) = &mut self.writer {
            w.wait_all()?;
        }
        let f = self.files.get(file as usize).and_then(|f| f.file.as_ref());
        f.ok_or_else(|| io::Error::other("file not open"))?.read_exact_at(buf, offset)
    }

    fn free_blocks(&self) -> u64 {
        u64::MAX
    }

    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        if self.pending.file == file && !verified {
            self.pending.buf.clear();
        }
        // Every run of this file (and, simply, of the others) must be written before it is
        // synced and linked into place, or before its partial is removed.
        self.sync_writes()?;
        let sf = self.files.get_mut(file as usize).ok_or_else(|| io::Error::other("no file"))?;
        let Some(f) = sf.file.take() else { return Ok(()) };
        let result = if verified {
            (|| {
                f.set_permissions(fs::Permissions::from_mode(sf.mode))?;
                f.sync_all()?;
                drop(f);
                // A hard link never replaces an existing name: no file the user did not ask to
                // overwrite is lost, even one created during the transfer.
                fs::hard_link(&sf.partial, &sf.target).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("{:?}: cannot move into place: {e}", sf.display),
                    )
                })?;
                if let Some(dir) = sf.target.parent() {
                    let _ = File::open(dir).and_then(|d| d.sync_all());
                }
                Ok(())
            })()
        } else {
            Ok(())
        };
        let _ = fs::remove_file(&sf.partial);
        result
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        // Stop the writer first: nothing may be written after a partial file is removed.
        self.writer = None;
        for sf in &mut self.files {
            if sf.file.take().is_some() {
                let _ = fs::remove_file(&sf.partial);
            }
        }
    }
}

/// A file to send: its manifest path and where it is. Files are opened one at a time when they
/// are mapped ([`MmapSource::add_path`]), so a large tree never holds a descriptor per file.
#[derive(Debug)]
pub struct SourceFile {
    /// Relative `/`-separated path for the manifest.
    pub rel: String,
    /// The file on disk.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
}

/// Enumerates `path` for sending: a regular file as its base name, a directory recursively as
/// `NAME/...` (sorted, symlinks and special files skipped). When `root` is given, `path` must lie
/// inside it (canonically).
pub fn enumerate(path: &Path, root: Option<&Path>) -> io::Result<Vec<SourceFile>> {
    let canon = path.canonicalize()?;
    if let Some(root) = root
        && !canon.starts_with(root.canonicalize()?)
    {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "path leads outside the root"));
    }
    let name = canon
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the name is not UTF-8"))?
        .to_owned();
    let mut out = Vec::new();
    walk(&canon, name, &mut out)?;
    Ok(out)
}

fn walk(path: &Path, rel: String, out: &mut Vec<SourceFile>) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_file() {
        out.push(SourceFile {
            rel,
            path: path.to_owned(),
            mode: meta.permissions().mode() & 0o777,
        });
    } else if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)?.collect::<Result<_, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let Some(n) = e.file_name().to_str().map(str::to_owned) else { continue };
            walk(&e.path(), format!("{rel}/{n}"), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, path: &str, size: u64) -> FileEntry {
        FileEntry { id, size, mtime_ns: 0, mode: 0o640, path: path.into() }
    }

    #[test]
    fn validates_paths() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\\b", "a\0b"] {
            assert!(validate_relative(bad).is_err(), "{bad:?}");
        }
        assert_eq!(validate_relative("a/b c/ü.txt").unwrap(), vec!["a", "b c", "ü.txt"]);
    }

    #[test]
    /// The write-behind buffer: runs coalesce, reads see pending bytes (from the buffer, from
    /// the file, or across both), two files interleave, and a failed file's pending bytes are
    /// discarded without touching the other file.
    fn write_behind_coalesces_and_reads_see_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path(), Destination::Dir(dir.path().into())).unwrap();
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
                let mut buf = vec![0u8; 3000];
                // Entirely in the file already.
                sink.read(0, 10_000, &mut buf).unwrap();
                assert_eq!(buf, want[10_000..13_000]);
            }
        }
        // Within the pending run.
        let mut buf = vec![0u8; 500];
        let tail = size as usize - 600;
        sink.read(0, tail as u64, &mut buf).unwrap();
        assert_eq!(buf, want[tail..tail + 500]);
        sink.write(0, held as u64, &want[held..held + 1000]).unwrap();
        // Across the file and the pending run.
        let mut buf = vec![0u8; 4000];
        sink.read(0, held as u64 - 1000, &mut buf).unwrap();
        assert_eq!(buf, want[held - 1000..held + 3000]);
        sink.finish(1, false).unwrap();
        sink.finish(0, true).unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), want);
        assert!(!dir.path().join("b").exists());
    }

    #[test]
    fn writes_partial_then_renames() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path(), Destination::Dir(dir.path().into())).unwrap();
        sink.open(&entry(0, "sub/ü.bin", 6)).unwrap();
        sink.write(0, 3, b"def").unwrap();
        sink.write(0, 0, b"abc").unwrap();
        assert!(!dir.path().join("sub/ü.bin").exists());
        let mut buf = [0u8; 6];
        sink.read(0, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"abcdef");
        sink.finish(0, true).unwrap();
        assert_eq!(fs::read(dir.path().join("sub/ü.bin")).unwrap(), b"abcdef");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1, "partial removed");
    }

    #[test]
    fn failed_and_dropped_files_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path(), Destination::Dir(dir.path().into())).unwrap();
        sink.open(&entry(0, "a", 3)).unwrap();
        sink.open(&entry(1, "b", 3)).unwrap();
        sink.finish(0, false).unwrap();
        drop(sink);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_escape_and_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        fs::write(dir.path().join("exists"), b"keep").unwrap();
        let mut sink = FileSink::new(dir.path(), Destination::Dir(dir.path().into())).unwrap();
        assert!(sink.open(&entry(0, "link/x", 1)).is_err());
        assert!(sink.open(&entry(0, "../x", 1)).is_err());
        let e = sink.open(&entry(0, "exists", 1)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(!e.to_string().contains(dir.path().to_str().unwrap()), "no server paths: {e}");
        assert_eq!(fs::read(dir.path().join("exists")).unwrap(), b"keep");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn mmap_source_reads() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"hello").unwrap();
        fs::write(dir.path().join("e"), b"").unwrap();
        let mut src = MmapSource::new();
        assert_eq!(src.add(&File::open(dir.path().join("f")).unwrap()).unwrap(), 5);
        assert_eq!(src.add(&File::open(dir.path().join("e")).unwrap()).unwrap(), 0);
        let mut b = [0u8; 3];
        src.read(0, 2, &mut b).unwrap();
        assert_eq!(&b, b"llo");
        assert!(src.read(0, 4, &mut b).is_err());
        let files = enumerate(dir.path(), None).unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        let rels: Vec<_> = files.iter().map(|f| f.rel.clone()).collect();
        assert_eq!(rels, vec![format!("{name}/e"), format!("{name}/f")]);
    }
}
