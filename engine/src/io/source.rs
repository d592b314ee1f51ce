//! The sender's files: listed beneath a [`Docroot`], opened lazily, read with `pread` into a
//! small pool of reused read-ahead buffers.
//!
//! Why not a memory map (the first design, `MmapSource`): a mapping of a file that another
//! process can truncate cannot be made safe. Touching a page past the new end raises SIGBUS,
//! which kills the whole process: on the server, every other session with it. A read error of
//! the disk does the same. `pread` turns both into an error that ends one file, which the
//! session reports ("cannot read FILE on the server") while the others go on. Mapping also
//! needs one map per file, and Linux allows 65,530 per process (`vm.max_map_count`): a tree of
//! more files could not be sent at all.
//!
//! Cost: one `pread` per [`CHUNK`] bytes read forward (about one system call per 185 blocks at
//! the default block size) and one copy from the chunk into the packet, where the map copied
//! from the page cache directly. A retransmission reads [`BACK_CHUNK`] bytes from its block on
//! into a separate small buffer, which serves the run of lost neighbours that usually follows
//! (reading just the block cost one system call per retransmitted packet, which showed in the
//! `fair` loopback runs). Memory is [`CHUNKS`] x [`CHUNK`] + [`BACK_CHUNKS`] x [`BACK_CHUNK`]
//! per session whatever the file sizes, and at most
//! [`SourceLimits::max_open`] descriptors are open at once whatever the number of files: a
//! file is opened when it is first read and closed when the least recently used descriptor
//! must make room (it is opened again if a retransmission needs it; a file replaced in the
//! meantime fails instead of sending other bytes).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::docroot::{Docroot, Kind, Meta, RelPath};
use super::filter::Rules;
use crate::control::Part;
use crate::session::BlockSource;

/// Bytes read ahead per `pread` when a file is read forward.
pub const CHUNK: usize = 256 << 10;
/// Read-ahead buffers per source (shared by all its files).
pub const CHUNKS: usize = 4;
/// Bytes read per `pread` for a read behind the read-ahead (a retransmission): losses come in
/// runs of neighbouring blocks, which one such read then serves (an isolated loss costs a
/// 32 KiB read instead of a 1.4 KiB one, still one system call).
pub const BACK_CHUNK: usize = 32 << 10;
/// Buffers for reads behind the read-ahead.
pub const BACK_CHUNKS: usize = 2;

/// One file to send.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The file's path in the manifest (relative, `/`-separated).
    pub manifest: String,
    /// The directory it is beneath.
    pub root: Arc<Docroot>,
    /// Where it is beneath `root`.
    pub path: RelPath,
    /// Its size when it was listed: what is sent.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// `Some` when only a part of the file is sent (a multi-session transfer, [`shares`]): the
    /// `size` bytes at [`Part::offset`].
    pub part: Option<Part>,
}

/// Bounds of a listing and of a [`FileSource`].
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    /// Most files a listing may hold (a larger tree is refused, not cut short).
    pub max_files: usize,
    /// Most descriptors open at once.
    pub max_open: usize,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self { max_files: 1_000_000, max_open: 64 }
    }
}

/// Lists `rel` beneath `root` for sending: a regular file as its name, a directory
/// recursively as `NAME/...` in name order, where NAME is the last component of `rel` (or the
/// docroot's own name). Symbolic links, special files and partial files are skipped. Each
/// directory is opened beneath the docroot on its own (at most one directory descriptor is open
/// at a time, however deep the tree). Blocking: run it off any async runtime.
pub fn list(
    root: &Arc<Docroot>,
    rel: &RelPath,
    limits: SourceLimits,
) -> io::Result<Vec<SourceFile>> {
    list_filtered(root, rel, limits, &Rules::default())
}

/// [`list`], keeping only what `rules` keep ([`filter`](super::filter): a directory left out is
/// not looked into). The source itself is judged too, by its name.
pub fn list_filtered(
    root: &Arc<Docroot>,
    rel: &RelPath,
    limits: SourceLimits,
    rules: &Rules,
) -> io::Result<Vec<SourceFile>> {
    let name = rel.file_name().unwrap_or(root.name()).to_owned();
    list_named(root, rel, name, limits, rules)
}

/// [`list_filtered`], with the manifest paths starting at `name` instead of the source's own
/// name (`--src-base`: the whole of `rel`).
pub fn list_named(
    root: &Arc<Docroot>,
    rel: &RelPath,
    name: String,
    limits: SourceLimits,
    rules: &Rules,
) -> io::Result<Vec<SourceFile>> {
    let meta = root.meta(rel)?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", rel.shown()))
    })?;
    let refuse = |why: &str| {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} {why}", rel.shown())))
    };
    match meta.kind {
        Kind::File if !rules.keeps(&name, false) => Ok(Vec::new()),
        Kind::Dir if !rules.keeps(&name, true) => Ok(Vec::new()),
        Kind::File => Ok(vec![SourceFile::new(root, name, rel.clone(), &meta)]),
        Kind::Dir => walk(root, rel, name, limits, rules),
        Kind::Symlink => refuse("is a symbolic link (not followed)"),
        Kind::Special => refuse("is not a regular file or directory"),
    }
}

/// The files of the tree `rel` (a directory), named `name/...` in the manifest: depth first
/// in name order, a stack of directories each with its remaining entries (reversed, so the
/// next one pops off the end).
fn walk(
    root: &Arc<Docroot>,
    rel: &RelPath,
    name: String,
    limits: SourceLimits,
    rules: &Rules,
) -> io::Result<Vec<SourceFile>> {
    struct Frame {
        path: RelPath,
        manifest: String,
        /// The directory, kept open while its entries are examined (so each entry costs one
        /// `fstatat`, not an open of its parent first), for the [`OPEN_LEVELS`] levels nearest
        /// the top: a pathologically deep tree must not run out of descriptors.
        dir: Option<super::docroot::Dir>,
        entries: Vec<(String, Option<Kind>)>,
    }
    const OPEN_LEVELS: usize = 64;
    let read = |path: &RelPath, manifest: String, depth: usize| -> io::Result<Frame> {
        let dir = root.open_dir(path)?;
        let mut e = dir.entries()?;
        e.retain(|(n, _)| super::docroot::check_name(n, n).is_ok());
        e.sort_by(|a, b| b.0.cmp(&a.0));
        let dir = (depth < OPEN_LEVELS).then_some(dir);
        Ok(Frame { path: path.clone(), manifest, dir, entries: e })
    };
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let mut out = Vec::new();
    let mut stack = vec![read(rel, name, 0)?];
    while let Some(top) = stack.last_mut() {
        let Some((n, kind)) = top.entries.pop() else {
            stack.pop();
            continue;
        };
        let path = top.path.join(&n).map_err(io::Error::other)?;
        let manifest = format!("{}/{n}", top.manifest);
        if manifest.len() > crate::control::MAX_PATH {
            let max = crate::control::MAX_PATH;
            return Err(invalid(format!("{} is longer than {max} bytes", path.shown())));
        }
        if matches!(kind, Some(Kind::Symlink | Kind::Special)) {
            continue;
        }
        let m = match &top.dir {
            Some(dir) => dir.meta(&n)?,
            None => root.meta(&path)?,
        };
        let Some(m) = m else { continue };
        match m.kind {
            Kind::File if !rules.keeps(&manifest, false) => {}
            Kind::Dir if !rules.keeps(&manifest, true) => {}
            Kind::File => {
                if out.len() == limits.max_files {
                    return Err(invalid(format!(
                        "{} holds more than {} files (the limit of one session)",
                        rel.shown(),
                        limits.max_files
                    )));
                }
                out.push(SourceFile::new(root, manifest, path, &m));
            }
            Kind::Dir => {
                let frame = read(&path, manifest, stack.len())?;
                stack.push(frame);
            }
            Kind::Symlink | Kind::Special => {}
        }
    }
    Ok(out)
}

impl SourceFile {
    fn new(root: &Arc<Docroot>, manifest: String, path: RelPath, m: &Meta) -> Self {
        SourceFile {
            manifest,
            root: root.clone(),
            path,
            size: m.size,
            mode: m.mode & 0o777,
            mtime_ns: m.mtime_ns,
            part: None,
        }
    }

    /// Offset in the file of the first byte sent.
    fn base(&self) -> u64 {
        self.part.map_or(0, |p| p.offset)
    }
}

/// Files at least this large are split into parts across the sessions of a multi-session
/// transfer by default (`ferry cp -C N`; `--multi-session-threshold` sets another).
pub const DEFAULT_PART_THRESHOLD: u64 = 64 << 20;
/// Parts start at multiples of this (whole pages, whole write-behind runs).
pub const PART_ALIGN: u64 = 1 << 20;
/// What a file costs a session besides its bytes, in bytes, when whole files are dealt out:
/// its metadata round, its open, digest and rename (so that many small files spread evenly by
/// count as well as by size).
const FILE_COST: u64 = 64 << 10;

/// A new random id for a multi-session transfer ([`Part::transfer`]).
pub fn transfer_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::fill(&mut id);
    id
}

/// Deals `files` out to `n` sessions of one multi-session transfer: a file of `threshold`
/// bytes or more (when `n > 1`) is cut into up to `n` parts of equal size (aligned to
/// [`PART_ALIGN`]), part `k` to session `k`; every other file goes whole to the session with
/// the least work so far (bytes plus a fixed cost per file). Each share keeps the listing's
/// order; a share may be empty. Parts carry `transfer`, the transfer's random id. Deterministic:
/// the same listing gives the same shares.
pub fn shares(
    files: Vec<SourceFile>,
    n: usize,
    threshold: u64,
    transfer: [u8; 16],
) -> Vec<Vec<SourceFile>> {
    let n = n.max(1);
    let mut out: Vec<Vec<SourceFile>> = (0..n).map(|_| Vec::new()).collect();
    let mut load = vec![0u64; n];
    for f in files {
        if n > 1 && f.part.is_none() && f.size >= threshold.max(1) && f.size > PART_ALIGN {
            let len = f.size.div_ceil(n as u64).next_multiple_of(PART_ALIGN);
            let mut offset = 0;
            for (k, share) in out.iter_mut().enumerate() {
                if offset >= f.size {
                    break;
                }
                let size = len.min(f.size - offset);
                let part = Some(Part { offset, total: f.size, transfer });
                share.push(SourceFile { size, part, ..f.clone() });
                load[k] += size + FILE_COST;
                offset += size;
            }
            continue;
        }
        let k = (0..n).min_by_key(|&k| load[k]).expect("n >= 1");
        load[k] += f.size + FILE_COST;
        out[k].push(f);
    }
    out
}

/// A [`BlockSource`] over [`SourceFile`]s (see the [module docs](self)).
#[derive(Debug)]
pub struct FileSource {
    files: Vec<SourceFile>,
    state: Vec<FileState>,
    open: Vec<OpenFile>,
    chunks: Vec<Chunk>,
    limits: SourceLimits,
    tick: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct FileState {
    /// Device, inode and modification time when first opened: a reopened file must be the same
    /// one, unchanged (inode numbers are reused at once on some file systems).
    identity: Option<(u64, u64, i64)>,
    /// End of the furthest chunk loaded: a read at or beyond it is forward progress.
    loaded_end: u64,
}

#[derive(Debug)]
struct OpenFile {
    file: u32,
    handle: File,
    used: u64,
}

#[derive(Debug)]
struct Chunk {
    file: u32,
    start: u64,
    len: usize,
    buf: Vec<u8>,
    used: u64,
    /// A buffer for reads behind the read-ahead ([`BACK_CHUNK`] bytes) rather than ahead.
    back: bool,
}

impl FileSource {
    /// A source for `files`, in manifest order (file id = index).
    pub fn new(files: Vec<SourceFile>, limits: SourceLimits) -> Self {
        let state = vec![FileState::default(); files.len()];
        Self { files, state, open: Vec::new(), chunks: Vec::new(), limits, tick: 0 }
    }

    /// The files, in manifest order.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// Descriptors open right now.
    pub fn open_descriptors(&self) -> usize {
        self.open.len()
    }

    fn shrank(&self, id: u32, now: u64) -> io::Error {
        let f = &self.files[id as usize];
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} shrank while being sent (it had {} bytes, now {now})",
                f.path.shown(),
                f.part.map_or(f.size, |p| p.total)
            ),
        )
    }

    /// The open descriptor of file `id`, opening it (and closing the least recently used one)
    /// if needed.
    fn handle(&mut self, id: u32) -> io::Result<usize> {
        self.tick += 1;
        if let Some(i) = self.open.iter().position(|o| o.file == id) {
            self.open[i].used = self.tick;
            return Ok(i);
        }
        let f = &self.files[id as usize];
        let (handle, meta) = f.root.open_file(&f.path)?;
        if meta.size < f.base() + f.size {
            return Err(self.shrank(id, meta.size));
        }
        let st = &mut self.state[id as usize];
        let identity = (meta.dev_ino.0, meta.dev_ino.1, meta.mtime_ns);
        match st.identity {
            Some(known) if known != identity => {
                return Err(io::Error::other(format!(
                    "{} was replaced or changed while being sent",
                    f.path.shown()
                )));
            }
            _ => st.identity = Some(identity),
        }
        if f.part.is_some() && meta.mtime_ns != f.mtime_ns {
            // The other parts are read from the file as listed; this one would not match them.
            return Err(io::Error::other(format!(
                "{} changed since it was listed (sent in parts, all from one version)",
                f.path.shown()
            )));
        }
        if self.open.len() >= self.limits.max_open.max(1) {
            let lru = (0..self.open.len()).min_by_key(|&i| self.open[i].used).expect("non-empty");
            self.open.swap_remove(lru);
        }
        self.open.push(OpenFile { file: id, handle, used: self.tick });
        Ok(self.open.len() - 1)
    }

    fn explain(&self, id: u32, wanted_end: u64, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            let now =
                self.open.iter().find(|o| o.file == id).and_then(|o| o.handle.metadata().ok());
            return self.shrank(id, now.map_or(wanted_end.saturating_sub(1), |m| m.len()));
        }
        io::Error::new(e.kind(), format!("{}: {e}", self.files[id as usize].path.shown()))
    }

    /// Loads the chunk of file `id` starting at `start` into the least recently used buffer
    /// of its kind: a read-ahead buffer, or one for reads behind it (`back`).
    fn load(&mut self, id: u32, start: u64, back: bool) -> io::Result<usize> {
        let (size, base) = (self.files[id as usize].size, self.files[id as usize].base());
        let (cap, count) = if back { (BACK_CHUNK, BACK_CHUNKS) } else { (CHUNK, CHUNKS) };
        let len = (size - start).min(cap as u64) as usize;
        let mine = || (0..self.chunks.len()).filter(|&i| self.chunks[i].back == back);
        let slot = if mine().count() < count {
            let buf = vec![0; cap];
            self.chunks.push(Chunk { file: id, start, len: 0, buf, used: 0, back });
            self.chunks.len() - 1
        } else {
            mine().min_by_key(|&i| self.chunks[i].used).expect("non-empty")
        };
        // Invalidate first: a failed read must not leave stale bytes under the new key.
        self.chunks[slot].len = 0;
        let i = self.handle(id)?;
        let chunk = &mut self.chunks[slot];
        if let Err(e) = read_full(&self.open[i].handle, base + start, &mut chunk.buf[..len]) {
            return Err(self.explain(id, base + start + len as u64, e));
        }
        let chunk = &mut self.chunks[slot];
        chunk.file = id;
        chunk.start = start;
        chunk.len = len;
        if !back {
            let st = &mut self.state[id as usize];
            st.loaded_end = st.loaded_end.max(start + len as u64);
        }
        Ok(slot)
    }
}

/// `pread` until `buf` is full; end of file first is `UnexpectedEof`.
fn read_full(f: &File, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl FileSource {
    /// Hands `f` the bytes of `file` in `[offset, end)` straight from the chunk buffers,
    /// loading chunks as needed.
    fn each_slice(
        &mut self,
        file: u32,
        offset: u64,
        end: u64,
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let size = self.files.get(file as usize).map(|f| f.size).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no file {file} in the source"))
        })?;
        if end > size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read beyond the file's size"));
        }
        let mut pos = offset;
        while pos < end {
            self.tick += 1;
            let tick = self.tick;
            let hit = self
                .chunks
                .iter_mut()
                .find(|c| c.file == file && c.start <= pos && pos < c.start + c.len as u64);
            let slot = match hit {
                Some(c) => {
                    c.used = tick;
                    let from = (pos - c.start) as usize;
                    let n = ((end - pos) as usize).min(c.len - from);
                    f(&c.buf[from..from + n]);
                    pos += n as u64;
                    continue;
                }
                None if pos >= self.state[file as usize].loaded_end => {
                    self.load(file, pos, false)?
                }
                // Behind the read-ahead (a retransmission): a small read from here on.
                None => self.load(file, pos, true)?,
            };
            self.chunks[slot].used = tick;
        }
        Ok(())
    }
}

impl BlockSource for FileSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        self.each_slice(file, offset, offset + buf.len() as u64, &mut |bytes| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        })
    }

    fn visit(
        &mut self,
        file: u32,
        offset: u64,
        len: usize,
        _scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        self.each_slice(file, offset, offset + len as u64, f)
    }

    fn name(&self, file: u32) -> Option<String> {
        self.files.get(file as usize).map(|f| f.manifest.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Arc<Docroot>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("t/sub")).unwrap();
        std::fs::write(p.join("t/b"), b"bee").unwrap();
        std::fs::write(p.join("t/a"), b"").unwrap();
        std::fs::write(p.join("t/sub/c"), vec![7u8; 3 * CHUNK + 5]).unwrap();
        std::fs::write(p.join("t/.c.ferry-partial-0123456789abcdef"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("t/link")).unwrap();
        let root = Arc::new(Docroot::open(p).unwrap());
        (d, root)
    }

    #[test]
    fn lists_in_order_without_links_or_partials() {
        let (_d, root) = tree();
        let l = list(&root, &RelPath::parse("t").unwrap(), SourceLimits::default()).unwrap();
        let names: Vec<_> = l.iter().map(|f| f.manifest.as_str()).collect();
        assert_eq!(names, ["t/a", "t/b", "t/sub/c"]);
        assert_eq!(l[2].size, 3 * CHUNK as u64 + 5);
        let small = SourceLimits { max_files: 2, ..SourceLimits::default() };
        let e = list(&root, &RelPath::parse("t").unwrap(), small).unwrap_err();
        assert!(e.to_string().contains("more than 2 files"), "{e}");
        assert!(list(&root, &RelPath::parse("t/link").unwrap(), small).is_err());
    }

    #[test]
    fn reads_forward_back_and_fails_cleanly_on_truncation() {
        let (d, root) = tree();
        let l = list(&root, &RelPath::parse("t").unwrap(), SourceLimits::default()).unwrap();
        let mut src = FileSource::new(l, SourceLimits { max_files: 10, max_open: 1 });
        let mut buf = vec![0u8; 1000];
        for off in (0..3 * CHUNK as u64 - 1000).step_by(1000) {
            src.read(2, off, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 7));
        }
        src.read(1, 0, &mut buf[..3]).unwrap();
        assert_eq!(&buf[..3], b"bee");
        assert_eq!(src.open_descriptors(), 1);
        // Back to the first file (reopened) behind the read-ahead: read directly.
        src.read(2, 10, &mut buf[..100]).unwrap();
        // Truncated while being sent: an error naming the file, no signal.
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.path().join("t/sub/c"))
            .unwrap()
            .set_len(100)
            .unwrap();
        let e = src.read(2, 3 * CHUNK as u64, &mut buf[..5]).unwrap_err();
        assert!(e.to_string().contains("shrank"), "{e}");
    }

    /// `visit` hands over the same bytes as `read`, across chunk boundaries, without a copy.
    #[test]
    fn shares_cut_large_files_into_parts_and_deal_small_ones_out_whole() {
        let d = tempfile::tempdir().unwrap();
        let big = 5 * PART_ALIGN as usize + 3;
        let data: Vec<u8> = (0..big as u32).map(|i| (i % 253) as u8).collect();
        std::fs::create_dir(d.path().join("t")).unwrap();
        std::fs::write(d.path().join("t/big"), &data).unwrap();
        for name in ["a", "c", "d"] {
            std::fs::write(d.path().join("t").join(name), b"small").unwrap();
        }
        let root = Arc::new(Docroot::open(d.path()).unwrap());
        let l = list(&root, &RelPath::parse("t").unwrap(), SourceLimits::default()).unwrap();
        let id = [7; 16];
        let cut = shares(l.clone(), 3, PART_ALIGN, id);
        let names = |s: &[SourceFile]| -> Vec<String> {
            let at = |f: &SourceFile| f.part.map_or(String::new(), |p| format!("@{}", p.offset));
            s.iter().map(|f| format!("{}{}", f.manifest, at(f))).collect()
        };
        // t/a, t/big, t/c, t/d in listing order: parts of 2 MiB (5 MiB + 3 over 3, aligned up),
        // the last one shorter; the small files after it go to the session with least to do.
        assert_eq!(names(&cut[0]), ["t/a", "t/big@0"]);
        assert_eq!(names(&cut[1]), ["t/big@2097152"]);
        assert_eq!(names(&cut[2]), ["t/big@4194304", "t/c", "t/d"]);
        let parts: Vec<_> =
            cut.iter().flatten().filter_map(|f| f.part.map(|p| (p, f.size))).collect();
        assert_eq!(parts.iter().map(|(_, n)| n).sum::<u64>(), big as u64);
        assert!(parts.iter().all(|(p, _)| p.total == big as u64 && p.transfer == id));
        // Deterministic; one session, or a threshold above every file: nothing is cut.
        assert_eq!(names(&shares(l.clone(), 3, PART_ALIGN, id)[1]), names(&cut[1]));
        assert_eq!(shares(l.clone(), 1, 1, id)[0].len(), 4);
        assert!(shares(l, 2, big as u64 + 1, id).iter().flatten().all(|f| f.part.is_none()));

        // A part reads its own bytes of the file.
        let mut src = FileSource::new(cut[1].clone(), SourceLimits::default());
        let mut buf = vec![0; 2 * PART_ALIGN as usize];
        src.read(0, 0, &mut buf).unwrap();
        assert_eq!(buf, &data[2 * PART_ALIGN as usize..4 * PART_ALIGN as usize]);
        let e = src.read(0, 2 * PART_ALIGN - 1, &mut [0; 2]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "beyond the part: {e}");
        // The file changed since it was listed: a part refuses to read it.
        let mut src = FileSource::new(cut[0].clone(), SourceLimits::default());
        let f = std::fs::File::options().write(true).open(d.path().join("t/big")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let e = src.read(1, 0, &mut [0; 10]).unwrap_err();
        assert!(e.to_string().contains("changed since it was listed"), "{e}");
    }

    #[test]
    fn visit_sees_what_read_reads() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK as u32 + 777).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("f"), &data).unwrap();
        let root = Arc::new(Docroot::open(d.path()).unwrap());
        let l = list(&root, &RelPath::parse("f").unwrap(), SourceLimits::default()).unwrap();
        let mut src = FileSource::new(l, SourceLimits::default());
        for (offset, len) in [(0usize, 100usize), (CHUNK - 10, 20), (5, 2 * CHUNK + 700)] {
            let mut seen = Vec::new();
            let mut slices = 0;
            src.visit(0, offset as u64, len, &mut [], &mut |b| {
                seen.extend_from_slice(b);
                slices += 1;
            })
            .unwrap();
            assert_eq!(seen, &data[offset..offset + len]);
            assert!(slices >= 1);
            let mut buf = vec![0; len];
            src.read(0, offset as u64, &mut buf).unwrap();
            assert_eq!(buf, seen);
        }
        let e = src.visit(0, data.len() as u64 - 1, 2, &mut [], &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_file_replaced_while_being_sent_is_refused_when_reopened() {
        let (d, root) = tree();
        let l = list(&root, &RelPath::parse("t").unwrap(), SourceLimits::default()).unwrap();
        let mut src = FileSource::new(l, SourceLimits { max_files: 10, max_open: 1 });
        let mut buf = vec![0u8; 1000];
        // Read all of file 2 forward (its first chunk is evicted by the later ones), then file
        // 1 (which closes file 2's descriptor).
        for off in (0..3 * CHUNK as u64 + 5 - 1000).step_by(1000) {
            src.read(2, off, &mut buf).unwrap();
        }
        src.read(2, 3 * CHUNK as u64, &mut buf[..5]).unwrap();
        src.read(1, 0, &mut buf[..3]).unwrap();
        let c = d.path().join("t/sub/c");
        std::fs::remove_file(&c).unwrap();
        std::fs::write(&c, vec![8u8; 3 * CHUNK + 5]).unwrap();
        let e = src.read(2, 0, &mut buf[..5]).unwrap_err();
        assert!(e.to_string().contains("replaced"), "{e}");
    }
}
