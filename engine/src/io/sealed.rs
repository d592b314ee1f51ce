//! Server-side encryption at rest (SSEAR) over the storage seam.
//!
//! [`Sealed`] wraps another [`Storage`]. An upload's blocks are assembled per 64 KiB segment in
//! memory and each segment is sealed ([`SegmentCipher::seal`], any order) the moment its last
//! block arrives; only the envelope header and sealed segments reach the inner sink, so the
//! partial file never holds plaintext. The file is an envelope of `docs/FORMAT.md` whose data
//! key is wrapped in one keystore slot naming the owner's active `ssear` secret version. A
//! download of such a file announces its plaintext size and decrypts segment by segment as the
//! session reads it; files in the docroot that are not the owner's SSEAR envelopes (stored before
//! SSEAR was turned on, or someone else's client-side envelopes) are sent as they are.
//!
//! The secret is resolved **once per session** ([`SessionKeys`]): the keystore is opened when the
//! session's sink or source is made, the versions it needs are read, and it is closed again;
//! every envelope of the session wraps or unwraps from that copy, which is zeroized when the
//! session ends. Assembly memory is bounded by [`MAX_OPEN_SEGMENTS`] per session: a block that
//! would start one more segment is refused as [`SinkError::Full`] (it is requested again),
//! while blocks of segments already being assembled are always taken, so the bound cannot
//! stall a transfer.
//!
//! **Resume.** In a resuming session the inner sink keeps the envelope under construction as
//! its partial, with a journal of the *plaintext* chunks received ([`SealingSink`] passes the
//! session's chunk values on). The next attempt's inner sink checks each recorded chunk with
//! `SealedChunks`: the partial's header opens with the session's key, the chunk's sixteen
//! segments authenticate and their plaintext has the recorded chaining value. The sink then
//! takes over that header (the same data key: the envelope stays one envelope), counts the held
//! segments as sealed, ignores the held bytes of blocks that straddle a held chunk's edge, and
//! seals the rest, each sealing with a fresh IV (FORMAT.md §6.1).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use ferry_keys::{KeyResolver, KeyState, Operation, ResolveError, ResolvedKey, SecretBytes};
use zeroize::Zeroize;

use crate::atrest::{
    AtRestError, ENC_SEGMENT_SIZE, EnvelopeBuilder, HEADER_LEN, Header, MAGIC, MAX_PLAINTEXT_LEN,
    NewSlot, SEGMENT_OVERHEAD, SEGMENT_SIZE, SegmentCipher, SlotKind, envelope_len, locate,
    segment_count, segment_offset, segment_plaintext_len,
};
use crate::control::FileEntry;
use crate::io::docroot::Docroot;
use crate::io::files::{Destination, SinkLimits};
use crate::io::source::{SourceFile, SourceLimits};
use crate::io::storage::{Outgoing, Storage};
use crate::session::{BlockSink, BlockSource, SinkError};

/// The keystore category of SSEAR secrets.
pub const CATEGORY: &str = "ssear";

/// Most segments one upload starts assembling on its own (64 KiB each: 32 MiB). Segments
/// complete in arrival order, so only those still missing a lost block wait here.
pub const MAX_OPEN_SEGMENTS: usize = 512;
/// Beyond [`MAX_OPEN_SEGMENTS`], segments a block may still start when it also completes part
/// of a segment already open (a block straddling a segment boundary): so that open segments
/// can always finish, with a hard bound all the same.
pub const STRADDLE_RESERVE: usize = 64;
/// Most segments all the uploads of this process assemble at once (64 KiB each: 2 GiB): a
/// budget that many sessions cannot multiply.
pub const MAX_OPEN_SEGMENTS_IN_ALL: usize = 32_768;
/// Emptied assembly buffers a session keeps for reuse; the others are wiped and freed.
const SPARE_BUFFERS: usize = 16;

/// Segments being assembled by every session of this process.
static ASSEMBLING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Takes `n` segments of the process-wide budget, if they are free.
fn reserve_segments(n: usize) -> bool {
    use std::sync::atomic::Ordering;
    let prev = ASSEMBLING.fetch_add(n, Ordering::AcqRel);
    if prev + n > MAX_OPEN_SEGMENTS_IN_ALL {
        ASSEMBLING.fetch_sub(n, Ordering::AcqRel);
        return false;
    }
    true
}

fn release_segments(n: usize) {
    ASSEMBLING.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
}

/// Decrypted segments a download keeps (a retransmitted block usually falls in a recent one;
/// a miss costs a whole 64 KiB segment read and opened for one block).
const CACHED_SEGMENTS: usize = 16;
/// Unlocked file keys a download keeps.
const CACHED_CIPHERS: usize = 4;

/// Where a session's SSEAR secrets come from: opened once per session.
pub trait SecretSource: Send + Sync + fmt::Debug {
    /// The keystore for one session. The error says what failed and what fixes it (it goes
    /// to the server's log, never to the peer).
    fn open(&self) -> io::Result<Box<dyn KeyResolver>>;
}

/// A keystore failure, for the server's log, as [`io::ErrorKind::PermissionDenied`] (the kind
/// [`Sealed`] uses for "the key refuses": the server maps it to a refusal without the detail).
fn key_error(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// One resolved version, or why it cannot be used.
#[derive(Debug)]
enum Version {
    Usable(ResolvedKey),
    Refused { state: Option<KeyState>, why: String },
}

/// The SSEAR secrets of one session, read from the keystore once (see the module
/// documentation); a [`KeyResolver`] for the envelopes of that session only.
#[derive(Debug)]
pub struct SessionKeys {
    owner: String,
    active: Option<u32>,
    versions: Vec<(u32, Version)>,
}

impl SessionKeys {
    /// For an upload: the active version of `owner`'s `ssear` secret, which must permit
    /// protecting new data.
    pub fn for_upload(resolver: &dyn KeyResolver, owner: &str) -> io::Result<Self> {
        let no_key = |e: ResolveError| {
            key_error(format!("no usable {CATEGORY} secret for user {owner:?}: {e}"))
        };
        let version = resolver.active_version(owner, CATEGORY).map_err(no_key)?;
        let key = resolver.resolve(owner, CATEGORY, version).map_err(no_key)?;
        if !key.state.permits(Operation::Protect) {
            return Err(key_error(format!(
                "the {CATEGORY} secret of user {owner:?} (v{version}) is {}: it cannot protect new files",
                key.state
            )));
        }
        let versions = vec![(version, Version::Usable(key))];
        Ok(Self { owner: owner.to_owned(), active: Some(version), versions })
    }

    /// For a download: each of `versions` of `owner`'s `ssear` secret, or why it is refused.
    pub fn for_download(
        resolver: &dyn KeyResolver,
        owner: &str,
        versions: impl IntoIterator<Item = u32>,
    ) -> Self {
        let versions = versions
            .into_iter()
            .map(|v| {
                let got = match resolver.resolve(owner, CATEGORY, v) {
                    Ok(k) if k.state.permits(Operation::Process) => Version::Usable(k),
                    Ok(k) => Version::Refused { state: Some(k.state), why: k.state.to_string() },
                    Err(ResolveError::Unavailable { state }) => {
                        Version::Refused { state: Some(state), why: state.to_string() }
                    }
                    Err(e) => Version::Refused { state: None, why: e.to_string() },
                };
                (v, got)
            })
            .collect();
        Self { owner: owner.to_owned(), active: None, versions }
    }

    /// No secrets (a download of files that are not envelopes).
    fn none(owner: &str) -> Self {
        Self { owner: owner.to_owned(), active: None, versions: Vec::new() }
    }

    /// The owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The version new envelopes are wrapped under (uploads).
    pub fn active(&self) -> Option<u32> {
        self.active
    }

    /// The state that refuses `version`, when a state does.
    fn refused_state(&self, version: u32) -> Option<KeyState> {
        match self.versions.iter().find(|(v, _)| *v == version) {
            Some((_, Version::Refused { state, .. })) => *state,
            _ => None,
        }
    }

    /// Why `version` cannot open files, if it cannot.
    fn refusal(&self, version: u32) -> Option<&str> {
        match self.versions.iter().find(|(v, _)| *v == version) {
            Some((_, Version::Usable(_))) => None,
            Some((_, Version::Refused { why, .. })) => Some(why),
            None => Some("not resolved"),
        }
    }
}

impl KeyResolver for SessionKeys {
    fn resolve(
        &self,
        owner: &str,
        category: &str,
        version: u32,
    ) -> Result<ResolvedKey, ResolveError> {
        let not_found = || ResolveError::NotFound {
            owner: owner.to_owned(),
            category: category.to_owned(),
            version: version.to_string(),
        };
        if owner != self.owner || category != CATEGORY {
            return Err(not_found());
        }
        match self.versions.iter().find(|(v, _)| *v == version) {
            Some((_, Version::Usable(k))) => Ok(ResolvedKey {
                secret: SecretBytes::from_slice(k.secret.expose()),
                state: k.state,
            }),
            Some((_, Version::Refused { state: Some(state), .. })) => {
                Err(ResolveError::Unavailable { state: *state })
            }
            Some((_, Version::Refused { state: None, why })) => {
                Err(ResolveError::Backend(why.clone()))
            }
            None => Err(not_found()),
        }
    }

    fn active_version(&self, owner: &str, category: &str) -> Result<u32, ResolveError> {
        match self.active {
            Some(v) if owner == self.owner && category == CATEGORY => Ok(v),
            _ => Err(ResolveError::NotFound {
                owner: owner.to_owned(),
                category: category.to_owned(),
                version: "active".into(),
            }),
        }
    }
}

/// A storage that keeps `owner`'s files encrypted at rest under their `ssear` keystore secret
/// (see the module documentation).
#[derive(Debug)]
pub struct Sealed {
    inner: Arc<dyn Storage>,
    owner: String,
    secrets: Arc<dyn SecretSource>,
}

impl Sealed {
    /// Seals what `inner` stores, for the keystore user `owner`, with secrets from `secrets`.
    pub fn new(
        inner: Arc<dyn Storage>,
        owner: impl Into<String>,
        secrets: Arc<dyn SecretSource>,
    ) -> Self {
        Self { inner, owner: owner.into(), secrets }
    }
}

/// How a file of a download is stored.
#[derive(Debug, Clone)]
enum Stored {
    /// As it is (sent byte for byte).
    Plain,
    /// An envelope of the owner's: its plaintext length and the `ssear` versions of its slots.
    Sealed { len: u64, versions: Vec<u32> },
    /// An envelope of the owner's that cannot be sent: the file fails alone, with this reason.
    Damaged(String),
}

/// How `f` is stored: reads its first 1024 bytes. A file that is not a valid envelope of the
/// owner's (too short, another magic, version or owner, a damaged header, or unreadable now:
/// its read will say why) is sent as it is.
fn stored_form(f: &SourceFile, owner: &str) -> Stored {
    if f.size < HEADER_LEN as u64 {
        return Stored::Plain;
    }
    let mut head = vec![0u8; HEADER_LEN];
    let read = f.root.open_file(&f.path).and_then(|(file, _)| file.read_exact_at(&mut head, 0));
    if read.is_err() || head[..MAGIC.len()] != MAGIC {
        return Stored::Plain;
    }
    let Ok(header) = Header::parse(&head) else { return Stored::Plain };
    let versions: Vec<u32> = header
        .slots()
        .iter()
        .filter_map(|s| match &s.kind {
            SlotKind::Keystore { owner: o, category, version }
                if o == owner && category == CATEGORY =>
            {
                Some(*version)
            }
            _ => None,
        })
        .collect();
    if versions.is_empty() {
        return Stored::Plain;
    }
    if f.size != header.envelope_len() {
        let e = AtRestError::Truncated { actual: f.size, expected: header.envelope_len() };
        return Stored::Damaged(format!("the stored envelope cannot be opened: {e}"));
    }
    Stored::Sealed { len: header.plaintext_len(), versions }
}

impl Storage for Sealed {
    fn sink(
        &self,
        root: Arc<Docroot>,
        dest: Destination,
        limits: SinkLimits,
    ) -> io::Result<Box<dyn BlockSink + Send>> {
        // The key first: an upload the key refuses creates nothing.
        let keys = Arc::new(SessionKeys::for_upload(&*self.secrets.open()?, &self.owner)?);
        let check = Arc::new(SealedChunks { keys: keys.clone(), last: Mutex::new(None) });
        let limits = SinkLimits { chunk_check: Some(check.clone()), ..limits };
        let inner = self.inner.sink(root, dest, limits)?;
        Ok(Box::new(SealingSink::resuming(inner, keys, check)))
    }

    fn source(&self, files: Vec<SourceFile>, limits: SourceLimits) -> io::Result<Outgoing> {
        let stored: Vec<Stored> = files.iter().map(|f| stored_form(f, &self.owner)).collect();
        let needed: BTreeSet<u32> = stored
            .iter()
            .flat_map(|s| match s {
                Stored::Sealed { versions, .. } => versions.clone(),
                Stored::Plain | Stored::Damaged(_) => Vec::new(),
            })
            .collect();
        let keys = if needed.is_empty() {
            SessionKeys::none(&self.owner)
        } else {
            let resolver = self.secrets.open().map_err(|e| {
                // The detail (paths, the fix) is for the server's log only.
                tracing::warn!("ssear keys of {}: {e}", self.owner);
                key_error(format!(
                    "{}'s files are encrypted at rest and the server cannot open its keystore right now",
                    self.owner
                ))
            })?;
            SessionKeys::for_download(&*resolver, &self.owner, needed)
        };
        for (f, s) in files.iter().zip(&stored) {
            if let Stored::Sealed { versions, .. } = s
                && versions.iter().all(|&v| keys.refusal(v).is_some())
            {
                let why = keys.refusal(versions[0]).unwrap_or_default();
                tracing::warn!("ssear keys of {}: v{}: {why}", self.owner, versions[0]);
                let why =
                    keys.refused_state(versions[0]).map_or("unavailable".into(), |s| s.to_string());
                return Err(key_error(format!(
                    "{} is encrypted at rest under {}'s {CATEGORY} key v{}, which this server cannot use ({why})",
                    f.path.shown(),
                    self.owner,
                    versions[0],
                )));
            }
        }
        let mut out = self.inner.source(files, limits)?;
        for (e, s) in out.entries.iter_mut().zip(&stored) {
            if let Stored::Sealed { len, .. } = s {
                e.size = *len;
            }
        }
        let source = OpeningSource::new(out.source, stored, keys);
        Ok(Outgoing { entries: out.entries, source: Box::new(source) })
    }

    fn at_rest(&self) -> &'static str {
        "ssear"
    }
}

/// An upload file's sealing state.
#[derive(Debug)]
enum SealFile {
    /// Announced; nothing of it exists yet.
    Announced { size: u64 },
    /// Its envelope header is in the inner sink (written now, or held from an earlier
    /// attempt); segments are sealed with this cipher (`sealed` of them so far, the held ones
    /// included). `held`: the plaintext chunks (indexes, increasing) an earlier attempt left,
    /// whose segments are not written again.
    Sealing { size: u64, cipher: Box<SegmentCipher>, sealed: u64, held: Vec<u64> },
    /// Finished, refused or failed.
    Done,
}

/// Segments per journaled chunk: a plaintext chunk is exactly this many whole segments.
const SEGMENTS_PER_CHUNK: u64 = crate::session::RESUME_CHUNK / SEGMENT_SIZE as u64;

/// What [`SealedChunks`] found in the partial it checked last: its header and the plaintext
/// of its first bytes (for a receiver that asks for the held head).
struct Checked {
    header: Box<[u8; HEADER_LEN]>,
    head: Vec<u8>,
    chunks: Vec<(u64, [u8; 32])>,
}

/// Checks the journaled chunks of an SSEAR partial (an envelope under construction): opens the
/// partial's header with the session's keys, then each chunk's sixteen segments (their tags
/// authenticate them), and compares the plaintext's chaining value with the record. What it
/// found is kept for the sink that resumes the file.
struct SealedChunks {
    keys: Arc<SessionKeys>,
    last: Mutex<Option<Checked>>,
}

impl fmt::Debug for SealedChunks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedChunks").finish_non_exhaustive()
    }
}

impl crate::io::ChunkCheck for SealedChunks {
    fn check(
        &self,
        partial: &std::fs::File,
        size: u64,
        records: &[(u64, [u8; 32])],
    ) -> Vec<(u64, [u8; 32])> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut header = Box::new([0u8; HEADER_LEN]);
        if partial.read_exact_at(&mut header[..], 0).is_err() {
            return Vec::new();
        }
        let Ok(parsed) = Header::parse(&header[..]) else { return Vec::new() };
        if parsed.envelope_len() != size {
            return Vec::new();
        }
        let Ok(key) = parsed.unlock_with_keystore(&*self.keys) else { return Vec::new() };
        let plain_len = parsed.plaintext_len();
        let mut cipher = SegmentCipher::new(key);
        let mut enc = vec![0u8; ENC_SEGMENT_SIZE];
        let mut plain = vec![0u8; crate::session::RESUME_CHUNK as usize];
        let chunk = crate::session::RESUME_CHUNK;
        let mut good = Vec::new();
        // The plaintext of the file's first bytes, kept when chunk 0 checks out (for a receiver
        // that answers with the held head).
        let mut head = Vec::new();
        for &(k, cv) in records {
            if (k + 1) * chunk > plain_len {
                continue;
            }
            let opened = (0..SEGMENTS_PER_CHUNK).all(|j| {
                let i = k * SEGMENTS_PER_CHUNK + j;
                let at = j as usize * SEGMENT_SIZE;
                partial.read_exact_at(&mut enc, segment_offset(i)).is_ok()
                    && cipher
                        .open(i, &mut enc)
                        .map(|p| plain[at..at + p.len()].copy_from_slice(p))
                        .is_ok()
            });
            if opened && crate::session::chunk_cv(k * chunk, &plain) == cv {
                if k == 0 {
                    head = plain[..crate::control::MAX_HAVE_HEAD].to_vec();
                }
                good.push((k, cv));
            }
        }
        plain.zeroize();
        enc.zeroize();
        let found = Checked { header, head, chunks: good.clone() };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(found);
        good
    }
}

/// A segment being assembled from blocks.
struct Assembly {
    buf: Vec<u8>,
    filled: usize,
}

/// The sink of an SSEAR upload (see the module documentation).
pub struct SealingSink {
    inner: Box<dyn BlockSink + Send>,
    keys: Arc<SessionKeys>,
    files: Vec<SealFile>,
    open: HashMap<(u32, u64), Assembly>,
    spare: Vec<Vec<u8>>,
    /// The inner sink's chunk check, when it resumes partials.
    check: Option<Arc<SealedChunks>>,
    /// A resumed file's held chunks and plaintext head, until the session asks for them.
    resumed: HashMap<u32, (Chunks, Vec<u8>)>,
}

/// Chunks and their chaining values.
type Chunks = Vec<(u64, [u8; 32])>;

impl fmt::Debug for SealingSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingSink")
            .field("files", &self.files.len())
            .field("assembling", &self.open.len())
            .finish_non_exhaustive()
    }
}

fn sink_io(e: impl fmt::Display) -> SinkError {
    SinkError::Io(io::Error::other(e.to_string()))
}

impl SealingSink {
    /// Seals what goes to `inner` with `keys` (which must have an active version).
    pub fn new(inner: Box<dyn BlockSink + Send>, keys: SessionKeys) -> Self {
        Self::with_keys(inner, Arc::new(keys), None)
    }

    /// [`SealingSink::new`] over an inner sink whose resumed partials `check` checks: a
    /// resumable file an earlier attempt left part of carries on under that envelope's header
    /// (its data key; every segment sealed again draws a fresh IV) and only its missing
    /// segments are written.
    fn resuming(
        inner: Box<dyn BlockSink + Send>,
        keys: Arc<SessionKeys>,
        check: Arc<SealedChunks>,
    ) -> Self {
        Self::with_keys(inner, keys, Some(check))
    }

    fn with_keys(
        inner: Box<dyn BlockSink + Send>,
        keys: Arc<SessionKeys>,
        check: Option<Arc<SealedChunks>>,
    ) -> Self {
        let (files, open, spare, resumed) =
            (Vec::new(), HashMap::new(), Vec::new(), HashMap::new());
        Self { inner, keys, files, open, spare, check, resumed }
    }

    /// After the inner sink opened `file`: if it resumed chunks of the partial (checked by
    /// [`SealedChunks`]), take over that envelope's header and count the held segments sealed.
    fn adopt(&mut self, file: u32, size: u64) {
        let Some(check) = &self.check else { return };
        let found = check.last.lock().unwrap_or_else(|e| e.into_inner()).take();
        let chunks = self.inner.resumed(file);
        let Some(found) =
            found.filter(|f| !chunks.is_empty() && f.chunks == chunks_by_index(&chunks))
        else {
            return;
        };
        let cipher = Header::parse(&found.header[..])
            .and_then(|h| h.unlock_with_keystore(&*self.keys))
            .map(SegmentCipher::new);
        let Ok(cipher) = cipher else { return };
        let held: Vec<u64> = found.chunks.iter().map(|&(k, _)| k).collect();
        let sealed = held.len() as u64 * SEGMENTS_PER_CHUNK;
        self.files[file as usize] =
            SealFile::Sealing { size, cipher: Box::new(cipher), sealed, held };
        self.resumed.insert(file, (chunks, found.head));
    }

    /// Whether segment `index` of `file` is held from an earlier attempt.
    fn held(&self, file: u32, index: u64) -> bool {
        matches!(&self.files[file as usize], SealFile::Sealing { held, .. }
            if held.binary_search(&(index / SEGMENTS_PER_CHUNK)).is_ok())
    }

    /// Segments being assembled right now.
    pub fn assembling(&self) -> usize {
        self.open.len()
    }

    /// Starts the envelope of `file` on its first byte: a new data key wrapped under the
    /// session's active version, the header written at offset 0.
    fn cipher(&mut self, file: u32) -> Result<&mut SegmentCipher, SinkError> {
        if let SealFile::Announced { size } = self.files[file as usize] {
            let slot = NewSlot::Keystore {
                resolver: &*self.keys,
                owner: &self.keys.owner,
                category: CATEGORY,
            };
            let (header, cipher) =
                EnvelopeBuilder::new(size).slot(slot).build().map_err(sink_io)?;
            match self.inner.write(file, 0, header.as_bytes()) {
                Err(SinkError::Full) => return Err(sink_io("the file stage refused the header")),
                other => other?,
            }
            self.files[file as usize] =
                SealFile::Sealing { size, cipher: Box::new(cipher), sealed: 0, held: Vec::new() };
        }
        match &mut self.files[file as usize] {
            SealFile::Sealing { cipher, .. } => Ok(cipher),
            _ => Err(SinkError::Io(io::Error::other("file not open"))),
        }
    }

    /// Seals the complete segment `index` of `file` in place (`segment` is `IV ‖ plaintext ‖
    /// tag`) and hands it to the inner sink.
    fn seal(&mut self, file: u32, index: u64, segment: &mut [u8]) -> Result<(), SinkError> {
        self.cipher(file)?.seal_in_place(index, segment).map_err(sink_io)?;
        match self.inner.write(file, segment_offset(index), segment) {
            Err(SinkError::Full) => return Err(sink_io("the file stage refused a sealed segment")),
            other => other?,
        }
        if let SealFile::Sealing { sealed, .. } = &mut self.files[file as usize] {
            *sealed += 1;
        }
        Ok(())
    }

    /// Keeps an emptied buffer for reuse (up to [`SPARE_BUFFERS`]), or wipes and frees it.
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            buf.clear();
            self.spare.push(buf);
        } else {
            buf.zeroize();
        }
    }

    /// Wipes the assembly buffers of `file` (plaintext of a file that did not complete) and
    /// returns them to the pool.
    fn drop_assemblies(&mut self, file: u32) {
        let mut taken = Vec::new();
        self.open.retain(|&(f, _), a| {
            if f == file {
                taken.push(std::mem::take(&mut a.buf));
            }
            f != file
        });
        release_segments(taken.len());
        for mut b in taken {
            b.zeroize();
            self.recycle(b);
        }
    }

    fn size(&self, file: u32) -> Option<u64> {
        match self.files.get(file as usize)? {
            SealFile::Announced { size } | SealFile::Sealing { size, .. } => Some(*size),
            SealFile::Done => None,
        }
    }

    /// The last checks of a verified file: an empty file still gets its one empty segment,
    /// and every segment must have been sealed.
    fn complete(&mut self, file: u32, size: u64) -> io::Result<()> {
        let to_io = |e: SinkError| match e {
            SinkError::Io(e) => e,
            SinkError::Full => io::Error::other("the file stage is full"),
        };
        if size == 0 {
            self.seal(file, 0, &mut [0u8; SEGMENT_OVERHEAD]).map_err(to_io)?;
        }
        let sealed = match &self.files[file as usize] {
            SealFile::Sealing { sealed, .. } => *sealed,
            _ => 0,
        };
        if sealed != segment_count(size) || self.open.keys().any(|&(f, _)| f == file) {
            return Err(io::Error::other("a segment of the file is incomplete"));
        }
        Ok(())
    }
}

impl BlockSink for SealingSink {
    fn open(&mut self, file: &FileEntry) -> io::Result<()> {
        if file.id as usize != self.files.len() {
            return Err(io::Error::other("file ids out of sequence"));
        }
        self.files.push(SealFile::Done);
        if file.size > MAX_PLAINTEXT_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the file is too large to encrypt at rest",
            ));
        }
        let stored = FileEntry { size: envelope_len(file.size), part: None, ..file.clone() };
        if let Some(c) = &self.check {
            // What the check finds while the inner sink opens this file is this file's alone.
            *c.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.inner.open(&stored)?;
        if file.part.is_some() {
            // The inner sink saw the file (nothing is created before a block arrives) and
            // discards it when the session finishes it as failed.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this user's files are encrypted at rest, and an envelope is sealed by one \
                 session: send this file whole (ferry cp -C 1, or a --multi-session-threshold \
                 above its size)",
            ));
        }
        self.files[file.id as usize] = SealFile::Announced { size: file.size };
        self.adopt(file.id, file.size);
        Ok(())
    }

    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let Some(size) = self.size(file) else {
            return Err(SinkError::Io(io::Error::other("file not open")));
        };
        if data.is_empty() || offset.checked_add(data.len() as u64).is_none_or(|end| end > size) {
            return Err(sink_io("a block outside the file"));
        }
        let (first, _) = locate(offset);
        let (last, _) = locate(offset + data.len() as u64 - 1);
        let starting = (first..=last)
            .filter(|&i| !self.open.contains_key(&(file, i)) && !self.held(file, i))
            .count();
        if starting > 0 {
            // A block that also completes part of an open segment may use the reserve.
            let completes_open = starting <= (last - first) as usize;
            let cap = MAX_OPEN_SEGMENTS + if completes_open { STRADDLE_RESERVE } else { 0 };
            if self.open.len() + starting > cap || !reserve_segments(starting) {
                return Err(SinkError::Full);
            }
        }
        // Budget taken for segments this block starts and not yet theirs (given back if the
        // block fails half-way).
        let mut unclaimed = starting;
        let mut pos = 0;
        while pos < data.len() {
            let (index, within) = locate(offset + pos as u64);
            let want = segment_plaintext_len(size, index);
            let n = (want - within).min(data.len() - pos);
            if self.held(file, index) {
                // A block across a held chunk's edge: its held bytes are sealed already.
                pos += n;
                continue;
            }
            let spare = &mut self.spare;
            let a = self.open.entry((file, index)).or_insert_with(|| {
                unclaimed -= 1;
                let mut buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(ENC_SEGMENT_SIZE));
                // IV ‖ plaintext ‖ tag: the segment is sealed where it was assembled.
                buf.resize(want + SEGMENT_OVERHEAD, 0);
                Assembly { buf, filled: 0 }
            });
            a.buf[12 + within..12 + within + n].copy_from_slice(&data[pos..pos + n]);
            a.filled += n;
            if a.filled == want {
                let a = self.open.remove(&(file, index)).expect("present");
                release_segments(1);
                let mut buf = a.buf;
                let sealed = self.seal(file, index, &mut buf);
                self.recycle(buf);
                if let Err(e) = sealed {
                    release_segments(unclaimed);
                    return Err(e);
                }
            }
            pos += n;
        }
        Ok(())
    }

    fn free_blocks(&self) -> u64 {
        // Blocks of segments being assembled are always taken; see `write` for new segments.
        self.inner.free_blocks()
    }

    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        let Some(size) = self.size(file) else {
            return self.inner.finish(file, verified);
        };
        let checked = if verified { self.complete(file, size) } else { Ok(()) };
        self.drop_assemblies(file);
        self.files[file as usize] = SealFile::Done;
        match checked {
            Ok(()) => self.inner.finish(file, verified),
            Err(e) => {
                let _ = self.inner.finish(file, false);
                Err(e)
            }
        }
    }

    fn name(&self, file: u32) -> Option<String> {
        self.inner.name(file)
    }

    fn expect_sum(&mut self, file: u32, _sum: Option<crate::control::FileSum>) {
        // The sum is of the bytes on the wire, the file here is of another form: no file
        // compares equal to it.
        self.inner.expect_sum(file, None)
    }

    fn resumed(&mut self, file: u32) -> Vec<(u64, [u8; 32])> {
        self.resumed.get_mut(&file).map(|r| std::mem::take(&mut r.0)).unwrap_or_default()
    }

    fn held_head(&mut self, file: u32) -> Vec<u8> {
        self.resumed.remove(&file).map(|r| r.1).unwrap_or_default()
    }

    fn chunk_received(&mut self, file: u32, offset: u64, cv: &[u8; 32]) {
        // Plaintext chunks: what the journal records and SealedChunks checks.
        self.inner.chunk_received(file, offset, cv)
    }
}

/// `(start offset, CV)` chunks as `(chunk index, CV)`.
fn chunks_by_index(chunks: &[(u64, [u8; 32])]) -> Vec<(u64, [u8; 32])> {
    chunks.iter().map(|&(start, cv)| (start / crate::session::RESUME_CHUNK, cv)).collect()
}

impl Drop for SealingSink {
    fn drop(&mut self) {
        release_segments(self.open.len());
        for a in self.open.values_mut() {
            a.buf.zeroize();
        }
        for b in &mut self.spare {
            b.zeroize();
        }
    }
}

/// A decrypted segment kept for the reads that follow.
struct CachedSegment {
    file: u32,
    index: u64,
    /// `IV ‖ plaintext ‖ tag` after opening in place; the plaintext is `buf[12..12 + len]`.
    buf: Vec<u8>,
    len: usize,
    used: u64,
}

/// The source of an SSEAR download: the inner source reads the stored bytes; envelopes are
/// opened segment by segment (see the module documentation).
struct OpeningSource {
    inner: Box<dyn BlockSource + Send>,
    stored: Vec<Stored>,
    keys: SessionKeys,
    ciphers: Vec<(u32, SegmentCipher, u64)>,
    segments: Vec<CachedSegment>,
    tick: u64,
}

impl fmt::Debug for OpeningSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpeningSource").field("files", &self.stored.len()).finish_non_exhaustive()
    }
}

impl OpeningSource {
    fn new(inner: Box<dyn BlockSource + Send>, stored: Vec<Stored>, keys: SessionKeys) -> Self {
        Self { inner, stored, keys, ciphers: Vec::new(), segments: Vec::new(), tick: 0 }
    }

    fn damaged(&self, file: u32, e: &dyn fmt::Display) -> io::Error {
        let name = self.inner.name(file).unwrap_or_else(|| format!("file {file}"));
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name}: the stored envelope cannot be opened: {e}"),
        )
    }

    /// The unlocked cipher of `file` (its header is read again through the inner source, so it
    /// is the header of the very file being sent).
    fn cipher(&mut self, file: u32, len: u64) -> io::Result<usize> {
        self.tick += 1;
        if let Some(i) = self.ciphers.iter().position(|c| c.0 == file) {
            self.ciphers[i].2 = self.tick;
            return Ok(i);
        }
        let mut head = vec![0u8; HEADER_LEN];
        self.inner.read(file, 0, &mut head)?;
        let header = Header::parse(&head).map_err(|e| self.damaged(file, &e))?;
        if header.plaintext_len() != len {
            return Err(io::Error::other("the file was replaced while being sent"));
        }
        let key = header.unlock_with_keystore(&self.keys).map_err(|e| self.damaged(file, &e))?;
        let entry = (file, SegmentCipher::new(key), self.tick);
        Ok(super::cache_put(&mut self.ciphers, CACHED_CIPHERS, |c| c.2, entry))
    }

    /// The position in the cache of segment `index` of `file`, decrypted.
    fn segment(&mut self, file: u32, len: u64, index: u64) -> io::Result<usize> {
        self.tick += 1;
        if let Some(i) = self.segments.iter().position(|s| s.file == file && s.index == index) {
            self.segments[i].used = self.tick;
            return Ok(i);
        }
        let c = self.cipher(file, len)?;
        let slot = if self.segments.len() < CACHED_SEGMENTS {
            self.segments.push(CachedSegment { file, index, buf: Vec::new(), len: 0, used: 0 });
            self.segments.len() - 1
        } else {
            (0..self.segments.len()).min_by_key(|&i| self.segments[i].used).expect("non-empty")
        };
        let plain = segment_plaintext_len(len, index);
        let mut buf = std::mem::take(&mut self.segments[slot].buf);
        buf.resize(plain + SEGMENT_OVERHEAD, 0);
        let opened = match self.inner.read(file, segment_offset(index), &mut buf) {
            Ok(()) => match self.ciphers[c].1.open(index, &mut buf) {
                Ok(_) => Ok(()),
                Err(e) => Err(self.damaged(file, &e)),
            },
            Err(e) => Err(e),
        };
        let s = &mut self.segments[slot];
        *s = CachedSegment { file, index, buf, len: plain, used: self.tick };
        if let Err(e) = opened {
            s.file = u32::MAX;
            return Err(e);
        }
        Ok(slot)
    }
}

impl BlockSource for OpeningSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = match self.stored.get(file as usize) {
            Some(Stored::Sealed { len, .. }) => *len,
            Some(Stored::Damaged(why)) => {
                let name = self.inner.name(file).unwrap_or_else(|| format!("file {file}"));
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {why}")));
            }
            _ => return self.inner.read(file, offset, buf),
        };
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a read past the end of the file",
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let (index, within) = locate(offset + done as u64);
            let at = self.segment(file, len, index)?;
            let s = &self.segments[at];
            let n = (s.len - within).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&s.buf[12 + within..12 + within + n]);
            done += n;
        }
        Ok(())
    }

    fn name(&self, file: u32) -> Option<String> {
        self.inner.name(file)
    }
}

impl Drop for OpeningSource {
    fn drop(&mut self) {
        for s in &mut self.segments {
            s.buf.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::atrest::{EnvelopeReader, SEGMENT_SIZE};
    use crate::io::docroot::RelPath;
    use crate::io::storage::PlainFiles;

    /// An in-memory keystore: versions of alice's `ssear` secret and their states.
    #[derive(Debug, Default, Clone)]
    struct MemKeys {
        versions: Vec<(u32, [u8; 32], KeyState)>,
    }

    impl KeyResolver for MemKeys {
        fn resolve(
            &self,
            owner: &str,
            category: &str,
            version: u32,
        ) -> Result<ResolvedKey, ResolveError> {
            let found = (owner == "alice" && category == CATEGORY)
                .then(|| self.versions.iter().find(|v| v.0 == version))
                .flatten();
            match found {
                Some((_, s, state)) if state.keeps_value() => {
                    Ok(ResolvedKey { secret: SecretBytes::from_slice(s), state: *state })
                }
                Some((_, _, state)) => Err(ResolveError::Unavailable { state: *state }),
                None => Err(ResolveError::NotFound {
                    owner: owner.into(),
                    category: category.into(),
                    version: version.to_string(),
                }),
            }
        }
        fn active_version(&self, owner: &str, category: &str) -> Result<u32, ResolveError> {
            self.versions.iter().rev().find(|v| v.2 == KeyState::Active).map(|v| v.0).ok_or(
                ResolveError::NotFound {
                    owner: owner.into(),
                    category: category.into(),
                    version: "active".into(),
                },
            )
        }
    }

    /// A secret source that counts how often it is opened.
    #[derive(Debug, Default)]
    struct Store {
        keys: Mutex<MemKeys>,
        opened: Mutex<usize>,
    }

    impl SecretSource for Store {
        fn open(&self) -> io::Result<Box<dyn KeyResolver>> {
            *self.opened.lock().unwrap() += 1;
            Ok(Box::new(self.keys.lock().unwrap().clone()))
        }
    }

    impl Store {
        fn with(versions: &[(u32, u8, KeyState)]) -> Arc<Self> {
            let versions = versions.iter().map(|&(v, b, s)| (v, [b; 32], s)).collect();
            Arc::new(Store { keys: Mutex::new(MemKeys { versions }), opened: Mutex::new(0) })
        }
        fn set_state(&self, version: u32, state: KeyState) {
            let mut k = self.keys.lock().unwrap();
            k.versions.iter_mut().find(|v| v.0 == version).unwrap().2 = state;
        }
    }

    fn sealed(store: &Arc<Store>) -> Sealed {
        Sealed::new(Arc::new(PlainFiles), "alice", store.clone())
    }

    /// The sink of an upload into `dir`.
    fn sealing(store: &Arc<Store>, dir: &std::path::Path) -> Box<dyn BlockSink + Send> {
        let root = Arc::new(Docroot::open(dir).unwrap());
        sealed(store).sink(root, Destination::Dir(RelPath::root()), SinkLimits::default()).unwrap()
    }

    /// The plaintext of the envelope at `path`.
    fn opened(store: &Arc<Store>, path: &std::path::Path) -> Vec<u8> {
        let raw = std::fs::read(path).unwrap();
        let keys = store.keys.lock().unwrap().clone();
        let key = Header::parse(&raw).unwrap().unlock_with_keystore(&keys).unwrap();
        let mut back = Vec::new();
        EnvelopeReader::new(std::io::Cursor::new(raw), key).unwrap().decrypt_to(&mut back).unwrap();
        back
    }

    fn content(len: usize, seed: u8) -> Vec<u8> {
        let mut v: Vec<u8> =
            (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        // A canary the raw scans look for.
        if len >= 64 {
            v[len / 2..len / 2 + 16].copy_from_slice(b"CANARY-PLAINTEXT");
        }
        v
    }

    fn entry(id: u32, path: &str, size: usize) -> FileEntry {
        FileEntry { id, size: size as u64, mtime_ns: 0, mode: 0o640, path: path.into(), part: None }
    }

    /// The blocks of a file of `len` bytes, in a scrambled order (every 7th first, then the rest
    /// backwards), like a lossy network would deliver them.
    fn blocks(len: usize, block: usize) -> Vec<(usize, usize)> {
        let all: Vec<(usize, usize)> =
            (0..len).step_by(block).map(|o| (o, (o + block).min(len))).collect();
        let mut order: Vec<_> = all.iter().copied().step_by(7).collect();
        order.extend(all.iter().enumerate().rev().filter(|(i, _)| i % 7 != 0).map(|(_, b)| *b));
        order
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Every file beneath `dir`, read raw.
    fn raw_files(dir: &std::path::Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                out.push(std::fs::read(&p).unwrap());
            }
        }
        out
    }

    #[test]
    /// Blocks out of order, segments straddled by blocks: the stored files are envelopes under
    /// alice's active version that open to the exact plaintext; no stored byte, partial or
    /// final, holds the plaintext; the keystore was opened once for the session.
    fn an_upload_is_sealed_segment_by_segment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Deactivated), (2, 9, KeyState::Active)]);
        let mut sink = sealing(&store, dir.path());
        let sizes = [0usize, 1, 1400, SEGMENT_SIZE, SEGMENT_SIZE + 1, 200_000];
        let files: Vec<Vec<u8>> = sizes.iter().map(|&n| content(n, n as u8)).collect();
        for (i, f) in files.iter().enumerate() {
            sink.open(&entry(i as u32, &format!("f{i}"), f.len())).unwrap();
        }
        for (i, f) in files.iter().enumerate() {
            let order = blocks(f.len(), 1400);
            for (k, (a, b)) in order.iter().enumerate() {
                sink.write(i as u32, *a as u64, &f[*a..*b]).unwrap();
                if k == order.len() / 2 {
                    // Half-way: what is on disk (partial files included) holds no plaintext.
                    for raw in raw_files(dir.path()) {
                        assert!(!contains(&raw, b"CANARY-PLAINTEXT"));
                    }
                }
            }
            sink.finish(i as u32, true).unwrap();
        }
        drop(sink);
        assert_eq!(*store.opened.lock().unwrap(), 1);
        let keys = store.keys.lock().unwrap().clone();
        for (i, f) in files.iter().enumerate() {
            let raw = std::fs::read(dir.path().join(format!("f{i}"))).unwrap();
            assert_eq!(raw.len() as u64, envelope_len(f.len() as u64));
            assert!(!contains(&raw, b"CANARY-PLAINTEXT") || f.len() < 64);
            let header = Header::parse(&raw).unwrap();
            let slots: Vec<_> = header.slots().iter().map(|s| s.kind.clone()).collect();
            assert_eq!(
                slots,
                [SlotKind::Keystore {
                    owner: "alice".into(),
                    category: CATEGORY.into(),
                    version: 2
                }]
            );
            let key = header.unlock_with_keystore(&keys).unwrap();
            let mut reader = EnvelopeReader::new(std::io::Cursor::new(raw), key).unwrap();
            let mut back = Vec::new();
            reader.decrypt_to(&mut back).unwrap();
            assert_eq!(&back, f, "file {i}");
        }
    }

    #[test]
    /// Assembly memory is bounded: a block that would start one segment too many is refused as
    /// Full (and taken later), while blocks of segments already assembling are always taken.
    fn assembly_is_bounded_without_stalling() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Active)]);
        let mut sink = sealing(&store, dir.path());
        let n = MAX_OPEN_SEGMENTS + 2;
        let data = content(n * SEGMENT_SIZE, 3);
        sink.open(&entry(0, "big", data.len())).unwrap();
        // The first 1000 bytes of every segment: the last two find no room.
        let mut refused = Vec::new();
        for i in 0..n {
            let at = i * SEGMENT_SIZE;
            match sink.write(0, at as u64, &data[at..at + 1000]) {
                Ok(()) => {}
                Err(SinkError::Full) => refused.push(i),
                Err(SinkError::Io(e)) => panic!("{e}"),
            }
        }
        assert_eq!(refused, [n - 2, n - 1]);
        // The rest of each accepted segment completes it and frees room.
        for i in 0..n {
            let at = i * SEGMENT_SIZE;
            let from = if refused.contains(&i) { at } else { at + 1000 };
            sink.write(0, from as u64, &data[from..at + SEGMENT_SIZE]).unwrap();
        }
        sink.finish(0, true).unwrap();
        drop(sink);
        assert!(opened(&store, &dir.path().join("big")) == data);
    }

    #[test]
    /// At the bound, a block that straddles into a new segment is still taken when it also
    /// completes part of an open one (so open segments can always finish); one that only
    /// starts a new segment is refused.
    fn a_straddling_block_is_taken_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Active)]);
        let mut sink = sealing(&store, dir.path());
        let n = 2 * MAX_OPEN_SEGMENTS;
        let data = content(n * SEGMENT_SIZE, 4);
        sink.open(&entry(0, "big", data.len())).unwrap();
        // The even segments' first 1000 bytes: MAX_OPEN_SEGMENTS open.
        for i in (0..n).step_by(2) {
            let at = i * SEGMENT_SIZE;
            sink.write(0, at as u64, &data[at..at + 1000]).unwrap();
        }
        // Only a new (odd) segment: refused.
        let odd = 3 * SEGMENT_SIZE + 100;
        assert!(matches!(sink.write(0, odd as u64, &data[odd..odd + 1400]), Err(SinkError::Full)));
        // The end of segment 0 and the start of segment 1: taken.
        let edge = SEGMENT_SIZE - 700;
        sink.write(0, edge as u64, &data[edge..edge + 1400]).unwrap();
        // Everything else, in order: the file completes.
        let mut have = vec![false; data.len()];
        for i in (0..n).step_by(2) {
            have[i * SEGMENT_SIZE..i * SEGMENT_SIZE + 1000].fill(true);
        }
        have[edge..edge + 1400].fill(true);
        let mut at = 0;
        while at < data.len() {
            let end = (at..data.len()).find(|&k| have[k]).unwrap_or(data.len());
            if end > at {
                sink.write(0, at as u64, &data[at..end]).unwrap();
            }
            at = (end..data.len()).find(|&k| !have[k]).unwrap_or(data.len());
        }
        sink.finish(0, true).unwrap();
    }

    #[test]
    /// Files that only look like envelopes are sent as they are; an envelope of the owner's
    /// with the wrong length fails alone, the others are sent.
    fn odd_files_do_not_stop_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Active)]);
        upload(&store, dir.path(), &[("good", content(5000, 1)), ("cut", content(90_000, 2))]);
        let mut fake = b"FERRYENV".to_vec();
        fake.resize(3000, 7);
        std::fs::write(dir.path().join("fake"), &fake).unwrap();
        let cut = dir.path().join("cut");
        let raw = std::fs::read(&cut).unwrap();
        std::fs::write(&cut, &raw[..raw.len() - 100]).unwrap();
        let out = sealed(&store).source(list(dir.path()), SourceLimits::default()).unwrap();
        let sizes: Vec<u64> = out.entries.iter().map(|e| e.size).collect();
        assert_eq!(sizes, [raw.len() as u64 - 100, 3000, 5000], "cut (as stored), fake, good");
        let mut src = out.source;
        let mut buf = vec![0u8; 1000];
        let e = src.read(0, 0, &mut buf).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        src.read(1, 0, &mut buf).unwrap();
        assert_eq!(buf, fake[..1000]);
        let mut good = vec![0u8; 5000];
        src.read(2, 0, &mut good).unwrap();
        assert_eq!(good, content(5000, 1));
    }

    fn list(dir: &std::path::Path) -> Vec<SourceFile> {
        let root = Arc::new(Docroot::open(dir).unwrap());
        crate::io::source::list(&root, &RelPath::root(), SourceLimits::default()).unwrap()
    }

    /// Stores `files` through a sealing sink.
    fn upload(store: &Arc<Store>, dir: &std::path::Path, files: &[(&str, Vec<u8>)]) {
        let root = Arc::new(Docroot::open(dir).unwrap());
        let mut sink = sealed(store)
            .sink(root, Destination::Dir(RelPath::root()), SinkLimits::default())
            .unwrap();
        for (i, (name, data)) in files.iter().enumerate() {
            sink.open(&entry(i as u32, name, data.len())).unwrap();
            for (a, b) in blocks(data.len(), 1300) {
                sink.write(i as u32, a as u64, &data[a..b]).unwrap();
            }
            sink.finish(i as u32, true).unwrap();
        }
    }

    #[test]
    /// A download announces plaintext sizes and reads plaintext at any offset, across segment
    /// boundaries; a plain file beside the envelopes is sent as it is; files under an older
    /// (deactivated) version still open after a rotation.
    fn a_download_opens_envelopes_transparently() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Active)]);
        let a = content(3 * SEGMENT_SIZE + 77, 1);
        upload(&store, dir.path(), &[("a", a.clone())]);
        // Rotate: v1 deactivated, v2 active; b is sealed under v2.
        store.set_state(1, KeyState::Deactivated);
        store.keys.lock().unwrap().versions.push((2, [8; 32], KeyState::Active));
        let b = content(5000, 2);
        upload(&store, dir.path(), &[("b", b.clone())]);
        std::fs::write(dir.path().join("c"), b"plain bytes").unwrap();
        let opened_before = *store.opened.lock().unwrap();

        let out = sealed(&store).source(list(dir.path()), SourceLimits::default()).unwrap();
        assert_eq!(*store.opened.lock().unwrap(), opened_before + 1, "one keystore open");
        let sizes: Vec<(String, u64)> =
            out.entries.iter().map(|e| (e.path.clone(), e.size)).collect();
        let top = dir.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(
            sizes,
            [
                (format!("{top}/a"), a.len() as u64),
                (format!("{top}/b"), 5000),
                (format!("{top}/c"), 11)
            ]
        );
        let mut src = out.source;
        let mut buf = vec![0u8; 1400];
        for off in [0usize, 1400, SEGMENT_SIZE - 700, 2 * SEGMENT_SIZE + 5, a.len() - 1400, 700] {
            src.read(0, off as u64, &mut buf).unwrap();
            assert_eq!(buf, a[off..off + 1400], "offset {off}");
        }
        let mut whole = vec![0u8; 5000];
        src.read(1, 0, &mut whole).unwrap();
        assert_eq!(whole, b);
        let mut c = vec![0u8; 11];
        src.read(2, 0, &mut c).unwrap();
        assert_eq!(&c, b"plain bytes");
        assert!(src.read(1, 4000, &mut buf).is_err(), "past the end");
    }

    #[test]
    /// Revocation: a suspended or destroyed version refuses the download naming the file and
    /// the state; an upload without an active version is refused before anything is created;
    /// a tampered segment fails its file with a clear error.
    fn revoked_keys_refuse_and_tampering_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Active)]);
        upload(&store, dir.path(), &[("a", content(100_000, 5))]);

        store.set_state(1, KeyState::Suspended);
        let e = sealed(&store).source(list(dir.path()), SourceLimits::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().contains("\"a\" is encrypted at rest under alice's ssear key v1")
                && e.to_string().contains("suspended"),
            "{e}"
        );

        let root = Arc::new(Docroot::open(dir.path()).unwrap());
        let e = sealed(&store)
            .sink(root, Destination::Dir(RelPath::root()), SinkLimits::default())
            .err()
            .expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("no usable ssear secret"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing created");

        store.set_state(1, KeyState::Destroyed);
        let e = sealed(&store).source(list(dir.path()), SourceLimits::default()).unwrap_err();
        assert!(e.to_string().contains("destroyed"), "{e}");

        store.set_state(1, KeyState::Active);
        let path = dir.path().join("a");
        let mut raw = std::fs::read(&path).unwrap();
        raw[segment_offset(1) as usize + 100] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let out = sealed(&store).source(list(dir.path()), SourceLimits::default()).unwrap();
        let mut src = out.source;
        let mut buf = vec![0u8; 1000];
        src.read(0, 0, &mut buf).unwrap();
        let e = src.read(0, SEGMENT_SIZE as u64, &mut buf).unwrap_err();
        assert!(e.to_string().contains("segment 1 failed authentication"), "{e}");
    }

    #[test]
    /// A failed file's partial is removed and its assembly buffers are released.
    fn a_failed_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::with(&[(1, 7, KeyState::Active)]);
        let root = Arc::new(Docroot::open(dir.path()).unwrap());
        let mut sink = SealingSink::new(
            PlainFiles
                .sink(root, Destination::Dir(RelPath::root()), SinkLimits::default())
                .unwrap(),
            SessionKeys::for_upload(&*store.open().unwrap(), "alice").unwrap(),
        );
        let data = content(300_000, 9);
        sink.open(&entry(0, "x", data.len())).unwrap();
        for (a, b) in blocks(data.len(), 1400).into_iter().take(120) {
            sink.write(0, a as u64, &data[a..b]).unwrap();
        }
        assert!(sink.assembling() > 0);
        sink.finish(0, false).unwrap();
        assert_eq!(sink.assembling(), 0);
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
