//! Confinement of peer-supplied paths to a directory: the only way Ferry touches a path that
//! came from the network (and, on the client, the destination tree of a download).
//!
//! A [`Docroot`] is an open directory descriptor. Every path beneath it is a [`RelPath`] (parsed,
//! never a raw string) and is resolved by the kernel relative to that descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: no component may be
//! `..`, a symbolic link or a magic link, so a path cannot leave the tree however the tree
//! changes while it is resolved. On kernels without `openat2` (before Linux 5.6) the same walk
//! is done one component at a time with `openat(O_NOFOLLOW)` from the previous descriptor,
//! which gives the same guarantee. The result is a descriptor ([`Dir`] or a [`File`]); every
//! later operation (create, rename, unlink, stat, list) is relative to a descriptor, never to a
//! path string again. Directories are created one component at a time beneath the deepest one
//! that exists, so nothing is created before the part of the path above it is known to be
//! inside.
//!
//! Symbolic links inside a docroot are never followed, whether they point inside or out:
//! listings and downloads skip them, and a path through one is refused. Special files (FIFOs,
//! sockets, devices) are skipped by listings and refused by name when asked for; files are
//! opened with `O_NONBLOCK`, so a FIFO swapped in at the last moment cannot make a read hang.
//!
//! Partial files (the names [`partial_name`] makes) are invisible: listings skip them, and a
//! path naming one is refused, so a download never serves another session's unfinished upload
//! and an upload cannot plant a file that looks like one.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

/// Longest file name component, in bytes (`NAME_MAX` on Linux file systems).
pub const NAME_MAX: usize = 255;

/// Marker in the name of a partial file: `.NAME.ferry-partial-HEX16`.
const PARTIAL_MARK: &str = ".ferry-partial-";
/// Hex digits of the random suffix of a partial file name.
const PARTIAL_SUFFIX_LEN: usize = 16;

/// A path beneath a [`Docroot`]: zero or more plain name components. The empty path is the
/// docroot itself.
///
/// Every component is a name a file system can hold and a peer may use: not empty, not `.` or
/// `..`, no `/`, NUL, backslash or control character, at most [`NAME_MAX`] bytes, and not the
/// name of a partial file.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath {
    /// The components joined by `/` (empty for the root): one allocation per path.
    path: String,
}

/// Why a path was refused. The messages quote the path escaped and shortened, because they are
/// logged and sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty where a name is needed.
    #[error("the path is empty")]
    Empty,
    /// The path starts with `/` where a relative path is needed.
    #[error("{0} is absolute")]
    Absolute(Shown),
    /// A component is empty, `.` or `..`.
    #[error("{0} has an empty, `.` or `..` component")]
    DotOrEmpty(Shown),
    /// A component holds a control character, a NUL or a backslash.
    #[error("{0} contains a control character or backslash")]
    BadCharacter(Shown),
    /// A component is longer than the file system allows.
    #[error("{0} has a name longer than {NAME_MAX} bytes")]
    TooLong(Shown),
    /// A component is reserved for Ferry's partial files.
    #[error("{0} names a partial file (names with {PARTIAL_MARK:?} are reserved)")]
    Reserved(Shown),
}

/// A peer-supplied string as it may appear in logs and messages: control characters and
/// quotes escaped, at most [`Shown::MAX`] characters (longer ones end in `...`).
#[derive(Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    /// Characters kept of a long string.
    pub const MAX: usize = 120;

    /// Escapes and shortens `s`.
    pub fn new(s: &str) -> Self {
        Self(escape(s, Self::MAX))
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `s` in double quotes with every control character, quote and backslash escaped (Rust's
/// `escape_debug`, which also escapes terminal escape sequences and bidirectional overrides),
/// cut to at most `max` characters of the original with `...` appended when cut. Use it for
/// every string a peer chose before it reaches a log line or a message.
pub fn escape(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 8);
    out.push('"');
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// Checks one name component (see [`RelPath`]).
pub fn check_name(name: &str, whole: &str) -> Result<(), PathError> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(PathError::DotOrEmpty(Shown::new(whole)));
    }
    if name.contains(['\0', '\\', '/']) || name.chars().any(char::is_control) {
        return Err(PathError::BadCharacter(Shown::new(whole)));
    }
    if name.len() > NAME_MAX {
        return Err(PathError::TooLong(Shown::new(whole)));
    }
    if is_partial_name(name) {
        return Err(PathError::Reserved(Shown::new(whole)));
    }
    Ok(())
}

impl RelPath {
    /// The docroot itself.
    pub fn root() -> Self {
        Self::default()
    }

    /// Parses a manifest path: relative, `/`-separated, at least one component, every component
    /// a valid name (no leading or trailing `/`, no `//`).
    pub fn parse(path: &str) -> Result<Self, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.starts_with('/') {
            return Err(PathError::Absolute(Shown::new(path)));
        }
        for part in path.split('/') {
            check_name(part, path)?;
        }
        Ok(Self { path: path.to_owned() })
    }

    /// Parses a path a client asked for: like [`RelPath::parse`], but leading `/`s are
    /// relative to the docroot, `.`, `/` and the empty path mean the docroot, and trailing `/`s
    /// are allowed. Returns the path and whether it ended in `/` (the client wants a directory).
    pub fn parse_request(path: &str) -> Result<(Self, bool), PathError> {
        let trimmed = path.trim_start_matches('/');
        let wants_dir = trimmed.ends_with('/');
        let trimmed = trimmed.trim_end_matches('/');
        if trimmed.is_empty() || trimmed == "." {
            return Ok((Self::root(), wants_dir || !path.is_empty()));
        }
        let rel = Self::parse(trimmed).map_err(|e| match e {
            // Quote what the client sent, not the trimmed form.
            PathError::DotOrEmpty(_) => PathError::DotOrEmpty(Shown::new(path)),
            PathError::BadCharacter(_) => PathError::BadCharacter(Shown::new(path)),
            PathError::TooLong(_) => PathError::TooLong(Shown::new(path)),
            PathError::Reserved(_) => PathError::Reserved(Shown::new(path)),
            e => e,
        })?;
        Ok((rel, wants_dir))
    }

    /// Whether this is the docroot itself.
    pub fn is_root(&self) -> bool {
        self.path.is_empty()
    }

    /// The components, in order (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &str> + '_ {
        self.path.split('/').filter(|p| !p.is_empty())
    }

    /// The last component, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.split_last().map(|(_, n)| n)
    }

    /// The path without its last component, and that component. `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &str)> {
        if self.path.is_empty() {
            return None;
        }
        Some(match self.path.rsplit_once('/') {
            Some((rest, last)) => (RelPath { path: rest.to_owned() }, last),
            None => (RelPath::root(), self.path.as_str()),
        })
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        check_name(name, name)?;
        Ok(self.join_str(name))
    }

    fn join_str(&self, tail: &str) -> RelPath {
        if self.path.is_empty() {
            RelPath { path: tail.to_owned() }
        } else if tail.is_empty() {
            self.clone()
        } else {
            RelPath { path: format!("{}/{tail}", self.path) }
        }
    }

    /// This path followed by every component of `other`.
    pub fn join_path(&self, other: &RelPath) -> RelPath {
        self.join_str(&other.path)
    }

    /// The path as the kernel sees it (`.` for the root).
    fn to_os_path(&self) -> PathBuf {
        if self.path.is_empty() { PathBuf::from(".") } else { PathBuf::from(&self.path) }
    }

    /// The path for messages: escaped and shortened.
    pub fn shown(&self) -> Shown {
        Shown::new(&self.to_string())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shown())
    }
}

/// The mark of a resumable partial file's journal (as long as [`PARTIAL_MARK`]).
const JOURNAL_MARK: &str = ".ferry-journal-";

/// Whether `name` is the name of a partial file ([`partial_name`]) or of a partial file's
/// journal ([`journal_name`]): both are reserved.
pub fn is_partial_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else { return false };
    [PARTIAL_MARK, JOURNAL_MARK].iter().any(|mark| {
        rest.rfind(mark).is_some_and(|at| {
            let suffix = &rest[at + mark.len()..];
            suffix.len() == PARTIAL_SUFFIX_LEN && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}

/// The journal's name of the resumable partial [`partial_name`]`(name, suffix)`:
/// `.NAME.ferry-journal-HEX16`, NAME shortened the same way.
pub fn journal_name(name: &str, suffix: u64) -> String {
    let partial = partial_name(name, suffix);
    let at = partial.len() - PARTIAL_SUFFIX_LEN - PARTIAL_MARK.len();
    format!("{}{JOURNAL_MARK}{suffix:016x}", &partial[..at])
}

/// The suffix of `name`'s resumable partial file: the same in every attempt (so the next one
/// finds it), the first 8 bytes of BLAKE3 of `"ferry/1 resumable partial" || 0x00 || name`.
pub fn resume_suffix(name: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry/1 resumable partial\0").update(name.as_bytes());
    u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The partial file name for `name` with the random `suffix`: `.NAME.ferry-partial-HEX16`,
/// with NAME shortened (on a character boundary) so that the whole stays within [`NAME_MAX`].
pub fn partial_name(name: &str, suffix: u64) -> String {
    let room = NAME_MAX - 1 - PARTIAL_MARK.len() - PARTIAL_SUFFIX_LEN;
    let mut end = name.len().min(room);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}{PARTIAL_MARK}{suffix:016x}", &name[..end])
}

/// What a path beneath a docroot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else: FIFO, socket, device.
    Special,
}

/// The metadata Ferry uses, read without following symbolic links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// What it is.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Owner.
    pub uid: u32,
    /// Device and inode: identity of the file.
    pub dev_ino: (u64, u64),
}

impl Meta {
    fn from_stat(st: &rustix::fs::Stat) -> Self {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Special,
        };
        Self {
            kind,
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            mtime_ns: st
                .st_mtime
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            uid: st.st_uid,
            dev_ino: (st.st_dev, st.st_ino),
        }
    }
}

/// Reads the metadata of an open descriptor.
pub fn fd_meta(fd: impl AsFd) -> io::Result<Meta> {
    Ok(Meta::from_stat(&rustix::fs::fstat(fd)?))
}

/// An open directory beneath a docroot (or the docroot itself). Operations on names in it are
/// relative to the descriptor and never follow a symbolic link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// An open directory that confines paths to the tree beneath it (see the [module docs](self)).
#[derive(Debug)]
pub struct Docroot {
    dir: Dir,
    /// The path it was opened at, for the operator's messages only (never used to reach files).
    path: PathBuf,
    /// Its last component, the manifest name of a download of the docroot itself.
    name: String,
}

/// Retries of `openat2` when the kernel reports a concurrent rename (`EAGAIN`).
const EAGAIN_RETRIES: usize = 8;

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Turns the kernel's refusals of a confined lookup into messages that say why.
fn explain(e: Errno, rel: &RelPath) -> io::Error {
    let kind = io::Error::from(e).kind();
    let msg = match e {
        Errno::LOOP => format!(
            "{} goes through a symbolic link (Ferry does not follow symbolic links on this side)",
            rel.shown()
        ),
        Errno::XDEV => format!("{} leads outside the root directory", rel.shown()),
        Errno::NOENT => format!("{} does not exist", rel.shown()),
        Errno::NOTDIR => format!("a component of {} is not a directory", rel.shown()),
        Errno::ACCESS | Errno::PERM => format!("{}: permission denied", rel.shown()),
        _ => format!("{}: {}", rel.shown(), io::Error::from(e)),
    };
    io::Error::new(kind, msg)
}

impl Docroot {
    /// Opens the directory at `path` (which the operator chose; symbolic links in it are
    /// followed once, here).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(errno(e).kind(), format!("{}: {}", path.display(), errno(e)))
        })?;
        let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        let name = canonical
            .file_name()
            .and_then(OsStr::to_str)
            .filter(|n| check_name(n, n).is_ok())
            .unwrap_or("root")
            .to_owned();
        Ok(Self { dir: Dir { fd }, path: canonical, name })
    }

    /// The path it was opened at (canonical when it could be resolved), for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The docroot's own name (its last path component).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The docroot as a directory.
    pub fn as_dir(&self) -> &Dir {
        &self.dir
    }

    /// Resolves `rel` beneath the docroot and opens it with `flags` (plus `O_CLOEXEC |
    /// O_NOFOLLOW`).
    fn resolve(&self, rel: &RelPath, flags: OFlags) -> io::Result<OwnedFd> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let path = rel.to_os_path();
        for _ in 0..EAGAIN_RETRIES {
            match rustix::fs::openat2(&self.dir.fd, &path, flags, Mode::empty(), how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                // No openat2 (old kernel, or filtered): walk one component at a time.
                Err(Errno::NOSYS) => return self.resolve_stepwise(rel, flags),
                Err(e) => return Err(explain(e, rel)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            format!("{}: the directory tree kept changing while it was resolved", rel.shown()),
        ))
    }

    /// [`Docroot::resolve`] without `openat2`: each component is opened relative to the
    /// previous descriptor with `O_NOFOLLOW`, so no symbolic link is ever followed and `..`
    /// never occurs (a [`RelPath`] holds none).
    fn resolve_stepwise(&self, rel: &RelPath, flags: OFlags) -> io::Result<OwnedFd> {
        let Some((parent, last)) = rel.split_last() else {
            return rustix::fs::openat(&self.dir.fd, ".", flags, Mode::empty())
                .map_err(|e| explain(e, rel));
        };
        let mut cur: Option<OwnedFd> = None;
        for part in parent.components() {
            let at = cur.as_ref().map_or(self.dir.fd.as_fd(), |f| f.as_fd());
            let next = rustix::fs::openat(
                at,
                part,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| explain(e, rel))?;
            cur = Some(next);
        }
        let at = cur.as_ref().map_or(self.dir.fd.as_fd(), |f| f.as_fd());
        rustix::fs::openat(at, last, flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| explain(e, rel))
    }

    /// Opens the directory `rel`.
    pub fn open_dir(&self, rel: &RelPath) -> io::Result<Dir> {
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Dir { fd })
    }

    /// Opens the regular file `rel` for reading; anything else (a directory, FIFO, device,
    /// symbolic link) is refused by name. Returns the file and its metadata.
    pub fn open_file(&self, rel: &RelPath) -> io::Result<(File, Meta)> {
        let fd = self.resolve(rel, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let meta = fd_meta(&fd)?;
        if meta.kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", rel.shown()),
            ));
        }
        Ok((File::from(fd), meta))
    }

    /// The metadata of `rel` (not following a final symbolic link); `None` if it does not exist.
    pub fn meta(&self, rel: &RelPath) -> io::Result<Option<Meta>> {
        let Some((parent, name)) = rel.split_last() else {
            return fd_meta(&self.dir.fd).map(Some);
        };
        let dir = match self.open_dir(&parent) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        dir.meta(name)
    }

    /// Opens the directory `rel`, creating it and any missing parents (mode 0777 less the
    /// umask, like `mkdir -p`). Each missing component is created relative to the descriptor of
    /// the one above it, then opened without following links: a component swapped for a
    /// symbolic link at any moment makes this fail, and nothing is ever created outside.
    pub fn create_dirs(&self, rel: &RelPath) -> io::Result<Dir> {
        match self.open_dir(rel) {
            Ok(d) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut cur = self.dir.try_clone()?;
        for part in rel.components() {
            cur = match cur.open_subdir(part) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&cur.fd, part, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(io::Error::new(
                                errno(e).kind(),
                                format!(
                                    "cannot create the directory {}: {}",
                                    rel.shown(),
                                    errno(e)
                                ),
                            ));
                        }
                    }
                    cur.open_subdir(part)
                        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", rel.shown())))?
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", rel.shown()))),
            };
        }
        Ok(cur)
    }
}

impl Dir {
    /// Device and inode of the directory.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        Ok(fd_meta(&self.fd)?.dev_ino)
    }

    /// Another descriptor for the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir { fd: self.fd.try_clone()? })
    }

    /// Opens the subdirectory `name` (not following a symbolic link).
    pub fn open_subdir(&self, name: &str) -> io::Result<Dir> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Creates the file `name` (which must not exist: `O_EXCL`, never through a symbolic link),
    /// open for reading and writing, with permission bits `mode` (less the umask).
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for reading and writing, creating it (empty, permission
    /// bits `mode`) if it does not exist; never through a symbolic link, and refusing anything
    /// but a regular file without blocking on a FIFO.
    pub fn open_or_create(&self, name: &str, mode: u32) -> io::Result<(File, Meta)> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::CLOEXEC
                | OFlags::NOCTTY,
            Mode::from_raw_mode(mode),
        )
        .map_err(errno)?;
        let meta = fd_meta(&fd)?;
        if meta.kind != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok((File::from(fd), meta))
    }

    /// Opens the existing regular file `name` for reading and writing (refusing anything else,
    /// without blocking on a FIFO).
    pub fn open_rw(&self, name: &str) -> io::Result<(File, Meta)> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(errno)?;
        let meta = fd_meta(&fd)?;
        if meta.kind != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok((File::from(fd), meta))
    }

    /// Opens the existing regular file `name` for reading (see [`Dir::open_rw`]).
    pub fn open_read(&self, name: &str) -> io::Result<(File, Meta)> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(errno)?;
        let meta = fd_meta(&fd)?;
        if meta.kind != Kind::File {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok((File::from(fd), meta))
    }

    /// The metadata of `name` (not following a symbolic link); `None` if it does not exist.
    pub fn meta(&self, name: &str) -> io::Result<Option<Meta>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::from_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Renames `from` to `to` in this directory without ever replacing an existing `to`
    /// (`renameat2(RENAME_NOREPLACE)`; where the file system lacks it, a hard link then an
    /// unlink, which refuses an existing name too).
    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        match rustix::fs::renameat_with(&self.fd, from, &self.fd, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL) | Err(Errno::NOSYS) | Err(Errno::NOTSUP) => {
                rustix::fs::linkat(&self.fd, from, &self.fd, to, AtFlags::empty())
                    .map_err(errno)?;
                let _ = rustix::fs::unlinkat(&self.fd, from, AtFlags::empty());
                Ok(())
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// Renames `from` to `to` in this directory, atomically replacing an existing `to` (the
    /// overwrite policy `always`): readers see the old file or the new one, never a mix.
    pub fn rename_replace(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(errno)
    }

    /// Removes the file `name`.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(errno)
    }

    /// Removes the directory `name` if it is empty.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR).map_err(errno)
    }

    /// Makes changes to the directory's entries durable (best effort callers ignore the error).
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(errno)
    }

    /// The directory's entries (not `.` and `..`) with their types as the directory reports
    /// them, in no particular order. Names that are not UTF-8 are left out.
    pub fn entries(&self) -> io::Result<Vec<(String, Option<Kind>)>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd).map_err(errno)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else { continue };
            let kind = match entry.file_type() {
                FileType::RegularFile => Some(Kind::File),
                FileType::Directory => Some(Kind::Dir),
                FileType::Symlink => Some(Kind::Symlink),
                FileType::Unknown => None,
                _ => Some(Kind::Special),
            };
            out.push((name.to_owned(), kind));
        }
        Ok(out)
    }

    /// The descriptor.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `name` as an OS string (for messages that need a path).
pub fn os_name(name: &str) -> &OsStr {
    OsStr::from_bytes(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        for bad in
            ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\\b", "a\0b", "a\x1b"]
        {
            assert!(RelPath::parse(bad).is_err(), "{bad:?}");
        }
        let p = RelPath::parse("a/b c/ü.txt").unwrap();
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b c", "ü.txt"]);
        assert_eq!(p.split_last().unwrap(), (RelPath::parse("a/b c").unwrap(), "ü.txt"));
        assert_eq!(
            RelPath::root().join("x").unwrap().split_last().unwrap(),
            (RelPath::root(), "x")
        );
        assert_eq!(RelPath::root().join_path(&p), p);
        assert_eq!(p.to_string(), "a/b c/ü.txt");
        assert!(RelPath::parse(&"x".repeat(255)).is_ok());
        assert!(matches!(RelPath::parse(&"x".repeat(256)), Err(PathError::TooLong(_))));
        let partial = partial_name("f", 7);
        assert!(matches!(RelPath::parse(&partial), Err(PathError::Reserved(_))));
    }

    #[test]
    fn parses_requests() {
        let r = |s: &str| RelPath::parse_request(s).unwrap();
        assert_eq!(r("incoming/"), (RelPath::parse("incoming").unwrap(), true));
        assert_eq!(r("/incoming//"), (RelPath::parse("incoming").unwrap(), true));
        assert_eq!(r("a/b"), (RelPath::parse("a/b").unwrap(), false));
        assert_eq!(r("."), (RelPath::root(), true));
        assert_eq!(r("/"), (RelPath::root(), true));
        assert!(RelPath::parse_request("../x").is_err());
        assert!(RelPath::parse_request("a/../../x").is_err());
    }

    #[test]
    fn partial_names_fit_and_are_recognised() {
        for name in ["f", "a.txt", &"é".repeat(127), &"x".repeat(255)] {
            let p = partial_name(name, u64::MAX);
            assert!(p.len() <= NAME_MAX, "{} bytes", p.len());
            assert!(is_partial_name(&p), "{p}");
            let j = journal_name(name, resume_suffix(name));
            assert!(j.len() <= NAME_MAX && is_partial_name(&j), "{j}");
            assert_eq!(j.len(), partial_name(name, 7).len());
        }
        assert_eq!(journal_name("a.txt", 0xab), ".a.txt.ferry-journal-00000000000000ab");
        assert!(!is_partial_name("f"));
        assert!(!is_partial_name(".f.ferry-partial-xyz"));
        assert!(!is_partial_name("f.ferry-partial-0123456789abcdef"));
    }

    #[test]
    fn escapes_peer_strings() {
        assert_eq!(escape("a\nb\x1b[31m\"", 100), r#""a\nb\u{1b}[31m\"""#);
        assert_eq!(escape("abcdef", 3), "\"abc...\"");
    }

    #[test]
    fn resolves_beneath_without_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("out")).unwrap();
        std::os::unix::fs::symlink("sub", d.path().join("inside")).unwrap();
        let root = Docroot::open(d.path()).unwrap();
        let (_, meta) = root.open_file(&RelPath::parse("sub/f").unwrap()).unwrap();
        assert_eq!(meta.size, 5);
        for bad in ["out/secret", "inside/f", "out"] {
            let e = root.open_file(&RelPath::parse(bad).unwrap()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{bad}: {e}");
        }
        assert!(root.create_dirs(&RelPath::parse("out/new").unwrap()).is_err());
        assert!(root.create_dirs(&RelPath::parse("sub/f/x").unwrap()).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
        let made = root.create_dirs(&RelPath::parse("a/b/c").unwrap()).unwrap();
        made.create_new("x", 0o600).unwrap();
        assert!(d.path().join("a/b/c/x").is_file());
        // The stepwise fallback refuses the same things.
        assert!(
            root.resolve_stepwise(&RelPath::parse("out/secret").unwrap(), OFlags::RDONLY).is_err()
        );
        assert!(root.resolve_stepwise(&RelPath::parse("inside").unwrap(), OFlags::RDONLY).is_err());
        assert!(root.resolve_stepwise(&RelPath::parse("sub/f").unwrap(), OFlags::RDONLY).is_ok());
    }

    #[test]
    fn refuses_fifos_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let root = Docroot::open(d.path()).unwrap();
        let e = root.open_file(&RelPath::parse("fifo").unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(root.as_dir().open_rw("fifo").is_err());
    }

    #[test]
    fn renames_never_replace() {
        let d = tempfile::tempdir().unwrap();
        let root = Docroot::open(d.path()).unwrap();
        let dir = root.as_dir();
        dir.create_new("a", 0o600).unwrap();
        dir.create_new("b", 0o600).unwrap();
        assert_eq!(
            dir.rename_noreplace("a", "b").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        dir.rename_noreplace("a", "c").unwrap();
        let mut names: Vec<_> = dir.entries().unwrap().into_iter().map(|(n, _)| n).collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
    }
}
