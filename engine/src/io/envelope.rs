//! Client-side envelopes (`ferry cp --file-crypt`): the client seals each file it uploads into
//! a `docs/FORMAT.md` envelope as it sends it, and opens envelopes as a download brings them
//! in. The server stores and serves the envelope's bytes like any other file; it never sees the
//! passphrase, the data keys or a byte of plaintext.
//!
//! - [`Envelopes`] is the [`Storage`] of such a transfer: its source announces each file as
//!   `NAME.ferry` ([`SUFFIX`]) with the envelope's size and reads envelope bytes at any offset
//!   ([`SealingSource`]); its sink takes an envelope's bytes in any order and writes the
//!   plaintext ([`OpeningSink`]).
//! - **One derivation per transfer.** The passphrase's Argon2id output is derived once, under
//!   one random salt, and wraps every envelope's data key ([`PassphraseKey`]); each slot's
//!   wrapping key still differs by its envelope's file id. Opening derives once per distinct
//!   salt and costs met (at most [`MAX_DERIVED`] kept).
//! - **Memory and state are bounded, whatever the sizes and the number of files.** A source
//!   keeps one random seed; the header of envelope `i` is built from it again whenever its bytes
//!   are needed ([`EnvelopeBuilder::seeded`]). It keeps at most [`CACHED_SEGMENTS`] sealed
//!   segments and [`CACHED_CIPHERS`] file keys. A sink assembles at most
//!   [`MAX_OPEN_SEGMENTS`] encrypted segments (a block that would start one more is requested
//!   again, [`SinkError::Full`]).
//! - **No IV is ever used for two plaintexts.** Segments are sealed with synthetic IVs
//!   ([`SegmentCipher::seal_synthetic_in_place`]): a segment sealed again for a retransmission or for the
//!   digest is the same bytes, and one whose source bytes changed in between gets another IV
//!   (and fails the file's end-to-end verification, as a changed plain file does).
//! - **Nothing unauthenticated is written.** The sink writes a segment's plaintext only after
//!   its tag verified, under a key whose commitment verified, and the plaintext lands under its
//!   final name only once the whole envelope verified (the inner sink's partial and rename).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use zeroize::{Zeroize, Zeroizing};

use crate::atrest::{
    Argon2Params, AtRestError, ENC_SEGMENT_SIZE, EnvelopeBuilder, FileKey, HEADER_LEN, Header,
    Key32, MAGIC, MAX_PLAINTEXT_LEN, NewSlot, PassphraseKey, SEGMENT_OVERHEAD, SEGMENT_SIZE,
    SegmentCipher, envelope_len, segment_count, segment_plaintext_len,
};
use crate::control::FileEntry;
use crate::io::docroot::Docroot;
use crate::io::files::{Destination, FileSink, SinkLimits};
use crate::io::source::{SourceFile, SourceLimits};
use crate::io::storage::{Outgoing, PlainFiles, Storage};
use crate::session::{BlockSink, BlockSource, SinkError};

/// What an envelope's name ends with at the destination of an upload (and what a download
/// that opens envelopes takes off).
pub const SUFFIX: &str = ".ferry";
/// Passphrase keys a [`Passkey`] keeps for opening (one per distinct salt and costs).
pub const MAX_DERIVED: usize = 8;
/// Sealed segments a [`SealingSource`] keeps for the reads that follow (64 KiB each).
pub const CACHED_SEGMENTS: usize = 16;
/// File keys a [`SealingSource`] keeps.
pub const CACHED_CIPHERS: usize = 8;
/// Encrypted segments an [`OpeningSink`] assembles at once (64 KiB each: 32 MiB).
pub const MAX_OPEN_SEGMENTS: usize = 512;

/// The passphrase of a transfer's envelopes and the Argon2id keys derived from it.
pub struct Passkey {
    passphrase: Zeroizing<Vec<u8>>,
    params: Argon2Params,
    /// The key new envelopes are wrapped under (derived when first needed).
    sealing: Mutex<Option<Arc<PassphraseKey>>>,
    /// Keys derived for opening, most recent last.
    opening: Mutex<Vec<Arc<PassphraseKey>>>,
    /// Salts and costs this passphrase was derived under and opened nothing (so that many
    /// envelopes of another passphrase cost one derivation, not one each).
    refused: Mutex<Vec<([u8; 16], Argon2Params)>>,
    /// The first reason an envelope could not be opened (for the exit code).
    failure: Mutex<Option<AtRestError>>,
}

impl fmt::Debug for Passkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passkey").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Passkey {
    /// The passphrase (its bytes as typed); new envelopes use Argon2id with `params`.
    pub fn new(passphrase: Zeroizing<Vec<u8>>, params: Argon2Params) -> Self {
        Self {
            passphrase,
            params,
            sealing: Mutex::new(None),
            opening: Mutex::new(Vec::new()),
            refused: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
        }
    }

    /// The key new envelopes are wrapped under: one derivation, under a fresh random salt, the
    /// first time.
    pub fn sealing_key(&self) -> Result<Arc<PassphraseKey>, AtRestError> {
        let mut k = self.sealing.lock().expect("passkey");
        if let Some(k) = &*k {
            return Ok(k.clone());
        }
        let key = Arc::new(PassphraseKey::derive(&self.passphrase, self.params)?);
        *k = Some(key.clone());
        Ok(key)
    }

    /// Opens `header`: with a key already derived for one of its passphrase slots' salt and
    /// costs, else after deriving one (the costs were bounded when the header was parsed).
    pub fn unlock(&self, header: &Header) -> Result<FileKey, AtRestError> {
        let mut known: Vec<Arc<PassphraseKey>> = self.opening.lock().expect("passkey").clone();
        known.extend(self.sealing.lock().expect("passkey").clone());
        let mut wrong = None;
        for key in &known {
            match header.unlock_with_passphrase_key(key) {
                Ok(k) => return Ok(k),
                Err(AtRestError::NoPassphraseSlot) => {}
                Err(e) => wrong = Some(e),
            }
        }
        if let Some(e) = wrong {
            return Err(e);
        }
        let salts = header.passphrase_salts();
        if salts.is_empty() {
            return Err(header
                .unlock_with_passphrase(&self.passphrase)
                .err()
                .unwrap_or(AtRestError::NoPassphraseSlot));
        }
        let mut last = AtRestError::WrongPassphrase;
        for (salt, params) in salts {
            if self.refused.lock().expect("passkey").contains(&(salt, params)) {
                continue;
            }
            let key = Arc::new(PassphraseKey::derive_with_salt(&self.passphrase, salt, params)?);
            match header.unlock_with_passphrase_key(&key) {
                Ok(k) => {
                    let mut opening = self.opening.lock().expect("passkey");
                    if opening.len() >= MAX_DERIVED {
                        opening.remove(0);
                    }
                    opening.push(key);
                    return Ok(k);
                }
                Err(e) => {
                    let mut refused = self.refused.lock().expect("passkey");
                    if refused.len() >= MAX_DERIVED {
                        refused.remove(0);
                    }
                    refused.push((salt, params));
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Records why an envelope could not be opened (the first reason is kept) and says it as
    /// the file's failure.
    fn failed(&self, e: AtRestError) -> io::Error {
        let err = io::Error::new(io::ErrorKind::InvalidData, format!("cannot decrypt: {e}"));
        self.failure.lock().expect("passkey").get_or_insert(e);
        err
    }

    /// The first reason an envelope of this transfer could not be opened, if one could not
    /// (taken: a second call says none).
    pub fn take_failure(&self) -> Option<AtRestError> {
        self.failure.lock().expect("passkey").take()
    }
}

/// The storage of a transfer whose files are client-side envelopes (see the module docs).
#[derive(Debug, Clone)]
pub struct Envelopes {
    passkey: Arc<Passkey>,
}

impl Envelopes {
    /// Envelopes sealed and opened with `passkey`.
    pub fn new(passkey: Arc<Passkey>) -> Self {
        Self { passkey }
    }

    /// The passkey (for [`Passkey::take_failure`] after a download).
    pub fn passkey(&self) -> &Arc<Passkey> {
        &self.passkey
    }
}

impl Storage for Envelopes {
    fn sink(
        &self,
        root: Arc<Docroot>,
        dest: Destination,
        limits: SinkLimits,
    ) -> io::Result<Box<dyn BlockSink + Send>> {
        // The inner sink holds plaintext offsets; a resume journal of them would not match the
        // envelope bytes the session verifies, so it keeps none.
        let inner = FileSink::new(root, dest, SinkLimits { resume: false, ..limits });
        Ok(Box::new(OpeningSink::new(Box::new(inner), self.passkey.clone())))
    }

    fn source(&self, files: Vec<SourceFile>, limits: SourceLimits) -> io::Result<Outgoing> {
        if files.iter().any(|f| f.part.is_some()) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an envelope is sealed by one session: it cannot be sent in parts",
            ));
        }
        // The plain files' manifest and source, each entry renamed and sized as its envelope.
        let Outgoing { mut entries, source } = PlainFiles.source(files, limits)?;
        let sizes = entries.iter().map(|e| e.size).collect();
        for e in &mut entries {
            e.size = sealed_len(e.size)?;
            e.path.push_str(SUFFIX);
        }
        let source = SealingSource::new(source, sizes, self.passkey.clone())?;
        Ok(Outgoing { entries, source: Box::new(source) })
    }

    fn at_rest(&self) -> &'static str {
        "client-envelope"
    }
}

/// The envelope length of a plaintext of `len` bytes, or why it cannot be sealed.
fn sealed_len(len: u64) -> io::Result<u64> {
    if len > MAX_PLAINTEXT_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a file of {len} bytes is larger than an envelope holds"),
        ));
    }
    Ok(envelope_len(len))
}

/// The plaintext length of an envelope of `len` bytes, if `len` is an envelope's length.
pub fn plaintext_len(len: u64) -> Option<u64> {
    let body = len.checked_sub(HEADER_LEN as u64)?;
    let n = body.div_ceil(ENC_SEGMENT_SIZE as u64).max(1);
    let plain = body.checked_sub(n * SEGMENT_OVERHEAD as u64)?;
    (envelope_len(plain) == len).then_some(plain)
}

/// Where envelope byte `offset` (at or after the header) lies: its segment and its position in
/// the encrypted segment.
fn locate_sealed(offset: u64) -> (u64, usize) {
    let body = offset - HEADER_LEN as u64;
    (body / ENC_SEGMENT_SIZE as u64, (body % ENC_SEGMENT_SIZE as u64) as usize)
}

/// A sealed segment kept for the reads that follow.
struct SealedSegment {
    file: u32,
    index: u64,
    buf: Vec<u8>,
    len: usize,
    used: u64,
}

/// A file's envelope header and cipher.
struct FileCipher {
    file: u32,
    header: Box<[u8; HEADER_LEN]>,
    cipher: SegmentCipher,
    used: u64,
}

/// The source of an upload of envelopes: reads plaintext through `inner` and hands out the
/// bytes of each file's envelope at any offset (see the module docs).
pub struct SealingSource {
    inner: Box<dyn BlockSource + Send>,
    /// Plaintext sizes, by file id.
    sizes: Vec<u64>,
    passkey: Arc<Passkey>,
    key: Arc<PassphraseKey>,
    /// Headers held by the receiver from an earlier attempt, taken over
    /// ([`BlockSource::adopt_head`]); 1 KiB per resumed file.
    adopted: HashMap<u32, Box<[u8; HEADER_LEN]>>,
    seed: Key32,
    ciphers: Vec<FileCipher>,
    segments: Vec<SealedSegment>,
    tick: u64,
}

impl fmt::Debug for SealingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingSource").field("files", &self.sizes.len()).finish_non_exhaustive()
    }
}

impl SealingSource {
    /// Envelopes of the files `inner` reads (plaintext `sizes` by file id), sealed with
    /// `passkey`.
    pub fn new(
        inner: Box<dyn BlockSource + Send>,
        sizes: Vec<u64>,
        passkey: Arc<Passkey>,
    ) -> io::Result<Self> {
        let key = passkey.sealing_key().map_err(io::Error::other)?;
        Ok(Self {
            inner,
            sizes,
            passkey,
            key,
            adopted: HashMap::new(),
            seed: Key32::random(),
            ciphers: Vec::new(),
            segments: Vec::new(),
            tick: 0,
        })
    }

    fn size(&self, file: u32) -> io::Result<u64> {
        self.sizes.get(file as usize).copied().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no file {file} in the source"))
        })
    }

    /// The position in the cache of file `file`'s header and cipher (built again from the seed
    /// if it was not kept: the same bytes; or opened again from the header the receiver holds).
    fn cipher(&mut self, file: u32) -> io::Result<usize> {
        self.tick += 1;
        if let Some(i) = self.ciphers.iter().position(|c| c.file == file) {
            self.ciphers[i].used = self.tick;
            return Ok(i);
        }
        let size = self.size(file)?;
        let (header, cipher) = match self.adopted.get(&file) {
            Some(head) => {
                let header = Header::parse(&head[..]).map_err(io::Error::other)?;
                let key = self.passkey.unlock(&header).map_err(io::Error::other)?;
                (header, SegmentCipher::new(key))
            }
            None => EnvelopeBuilder::new(size)
                .slot(NewSlot::PassphraseKey(&self.key))
                .seeded(&self.seed, u64::from(file))
                .build()
                .map_err(io::Error::other)?,
        };
        let entry =
            FileCipher { file, header: Box::new(*header.as_bytes()), cipher, used: self.tick };
        Ok(super::cache_put(&mut self.ciphers, CACHED_CIPHERS, |c| c.used, entry))
    }

    /// The position in the cache of segment `index` of `file`, sealed.
    fn segment(&mut self, file: u32, index: u64) -> io::Result<usize> {
        self.tick += 1;
        if let Some(i) = self.segments.iter().position(|s| s.file == file && s.index == index) {
            self.segments[i].used = self.tick;
            return Ok(i);
        }
        let size = self.size(file)?;
        let c = self.cipher(file)?;
        let slot = if self.segments.len() < CACHED_SEGMENTS {
            let buf = vec![0; ENC_SEGMENT_SIZE];
            self.segments.push(SealedSegment { file, index, buf, len: 0, used: 0 });
            self.segments.len() - 1
        } else {
            (0..self.segments.len()).min_by_key(|&i| self.segments[i].used).expect("non-empty")
        };
        // Invalidate first: a failed read must not leave another segment's bytes under this key.
        self.segments[slot].file = u32::MAX;
        let len = segment_plaintext_len(size, index);
        let s = &mut self.segments[slot];
        // Read where the segment is sealed (IV ‖ plaintext ‖ tag): no copy of the plaintext.
        let sealed = self
            .inner
            .read(file, index * SEGMENT_SIZE as u64, &mut s.buf[12..12 + len])
            .and_then(|()| {
                let segment = &mut s.buf[..len + SEGMENT_OVERHEAD];
                self.ciphers[c]
                    .cipher
                    .seal_synthetic_in_place(index, segment)
                    .map_err(io::Error::other)
            });
        if let Err(e) = sealed {
            s.buf.zeroize();
            s.buf.resize(ENC_SEGMENT_SIZE, 0);
            return Err(e);
        }
        *s = SealedSegment {
            file,
            index,
            buf: std::mem::take(&mut s.buf),
            len: len + SEGMENT_OVERHEAD,
            used: self.tick,
        };
        Ok(slot)
    }
}

impl BlockSource for SealingSource {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = envelope_len(self.size(file)?);
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read beyond the file's size"));
        }
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let n = if pos < HEADER_LEN as u64 {
                let c = self.cipher(file)?;
                let from = pos as usize;
                let n = (HEADER_LEN - from).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&self.ciphers[c].header[from..from + n]);
                n
            } else {
                let (index, within) = locate_sealed(pos);
                let at = self.segment(file, index)?;
                let s = &self.segments[at];
                let n = (s.len - within).min(buf.len() - done);
                buf[done..done + n].copy_from_slice(&s.buf[within..within + n]);
                n
            };
            done += n;
        }
        Ok(())
    }

    fn name(&self, file: u32) -> Option<String> {
        self.inner.name(file)
    }

    /// The receiver holds the start of an envelope of this file from an earlier attempt: its
    /// header, under which the rest is sealed from now on (FORMAT.md §6.1: kept only for the
    /// same source; a changed source fails the file's verification, and the partial goes).
    fn adopt_head(&mut self, file: u32, head: &[u8]) -> io::Result<()> {
        let size = self.size(file)?;
        let name = self.inner.name(file).unwrap_or_else(|| format!("file {file}"));
        let refuse = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the server holds part of an earlier envelope of {name}, which {why}; it was \
                     discarded: run the transfer again to send the file whole"
                ),
            )
        };
        let header = Header::parse(head).map_err(|e| refuse(format!("is damaged ({e})")))?;
        if header.plaintext_len() != size {
            return Err(refuse("holds a file of another size".into()));
        }
        self.passkey
            .unlock(&header)
            .map_err(|e| refuse(format!("this passphrase does not open ({e})")))?;
        let mut kept = Box::new([0u8; HEADER_LEN]);
        kept.copy_from_slice(head);
        self.adopted.insert(file, kept);
        // Nothing of the file was read yet; drop what the seed built, to be sure.
        self.ciphers.retain(|c| c.file != file);
        self.segments.retain(|s| s.file != file);
        Ok(())
    }
}

impl Drop for SealingSource {
    fn drop(&mut self) {
        for s in &mut self.segments {
            s.buf.zeroize();
        }
    }
}

/// A download file's opening state.
enum Opening {
    /// Receiving: its envelope's length, header bytes so far, and once the header is in, its
    /// cipher.
    Receiving {
        len: u64,
        head: Box<[u8; HEADER_LEN]>,
        head_filled: usize,
        cipher: Option<Box<SegmentCipher>>,
        /// Segments opened and written so far.
        opened: u64,
    },
    /// Refused, failed or finished.
    Done,
}

/// An encrypted segment being assembled from blocks.
struct Assembly {
    buf: Vec<u8>,
    filled: usize,
}

/// The sink of a download of envelopes: assembles each encrypted segment, opens it once the
/// header's key is known and the segment is complete, and writes its plaintext to `inner` (see
/// the module docs).
pub struct OpeningSink {
    inner: Box<dyn BlockSink + Send>,
    passkey: Arc<Passkey>,
    files: Vec<Opening>,
    open: HashMap<(u32, u64), Assembly>,
}

impl fmt::Debug for OpeningSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpeningSink").field("assembling", &self.open.len()).finish_non_exhaustive()
    }
}

fn sink_err(e: io::Error) -> SinkError {
    SinkError::Io(e)
}

impl OpeningSink {
    /// Opens envelopes with `passkey` and writes their plaintext to `inner`.
    pub fn new(inner: Box<dyn BlockSink + Send>, passkey: Arc<Passkey>) -> Self {
        Self { inner, passkey, files: Vec::new(), open: HashMap::new() }
    }

    /// Segments being assembled right now.
    pub fn assembling(&self) -> usize {
        self.open.len()
    }

    /// Fails `file` for `e` (its assemblies are dropped; the session discards it).
    fn fail(&mut self, file: u32, e: AtRestError) -> SinkError {
        self.drop_assemblies(file);
        self.files[file as usize] = Opening::Done;
        SinkError::Io(self.passkey.failed(e))
    }

    fn drop_assemblies(&mut self, file: u32) {
        self.open.retain(|&(f, _), a| {
            if f == file {
                a.buf.zeroize();
            }
            f != file
        });
    }

    /// Takes header bytes; once all are in, unlocks the file and opens what was assembled.
    fn header_bytes(&mut self, file: u32, offset: usize, data: &[u8]) -> Result<(), SinkError> {
        let Opening::Receiving { len, head, head_filled, .. } = &mut self.files[file as usize]
        else {
            return Err(SinkError::Io(io::Error::other("file not open")));
        };
        head[offset..offset + data.len()].copy_from_slice(data);
        *head_filled += data.len();
        if *head_filled < HEADER_LEN {
            return Ok(());
        }
        let len = *len;
        let unlocked = Header::parse(&head[..]).and_then(|h| {
            if h.envelope_len() != len {
                return Err(AtRestError::Truncated { actual: len, expected: h.envelope_len() });
            }
            self.passkey.unlock(&h)
        });
        match unlocked {
            Ok(key) => {
                if let Opening::Receiving { cipher, .. } = &mut self.files[file as usize] {
                    *cipher = Some(Box::new(SegmentCipher::new(key)));
                }
                let ready: Vec<u64> = self
                    .open
                    .iter()
                    .filter(|&(&(f, i), a)| f == file && a.filled == enc_len(len, i))
                    .map(|(&(_, i), _)| i)
                    .collect();
                for index in ready {
                    self.open_segment(file, index)?;
                }
                Ok(())
            }
            Err(e) => Err(self.fail(file, e)),
        }
    }

    /// Opens the complete segment `index` of `file` (its header is unlocked) and writes its
    /// plaintext.
    fn open_segment(&mut self, file: u32, index: u64) -> Result<(), SinkError> {
        let mut a = self.open.remove(&(file, index)).expect("assembled");
        let Opening::Receiving { cipher: Some(cipher), opened, .. } =
            &mut self.files[file as usize]
        else {
            unreachable!("opened only with a cipher");
        };
        let opened_ok = match cipher.open(index, &mut a.buf) {
            Ok(_) => {
                *opened += 1;
                Ok(())
            }
            Err(e) => Err(e),
        };
        let result = match opened_ok {
            Ok(()) => {
                let plain = &a.buf[12..a.buf.len() - 16];
                self.inner.write(file, index * SEGMENT_SIZE as u64, plain)
            }
            Err(e) => Err(self.fail(file, e)),
        };
        a.buf.zeroize();
        result
    }
}

/// The encrypted length of segment `index` of an envelope of `len` bytes.
fn enc_len(len: u64, index: u64) -> usize {
    let plain = plaintext_len(len).unwrap_or(0);
    segment_plaintext_len(plain, index) + SEGMENT_OVERHEAD
}

impl BlockSink for OpeningSink {
    fn open(&mut self, file: &FileEntry) -> io::Result<()> {
        if file.id as usize != self.files.len() {
            return Err(io::Error::other("file ids out of sequence"));
        }
        self.files.push(Opening::Done);
        if file.part.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an envelope is opened by one session: it cannot be received in parts",
            ));
        }
        // A size no envelope has still goes on until the header says what the file is (not an
        // envelope, or a cut one); the inner sink sees the plaintext size it would have.
        let plain = plaintext_len(file.size).unwrap_or(0);
        let path = file.path.strip_suffix(SUFFIX).filter(|p| !p.is_empty() && !p.ends_with('/'));
        let entry = FileEntry {
            size: plain,
            path: path.unwrap_or(&file.path).to_owned(),
            part: None,
            ..file.clone()
        };
        self.inner.open(&entry)?;
        self.files[file.id as usize] = Opening::Receiving {
            len: file.size,
            head: Box::new([0; HEADER_LEN]),
            head_filled: 0,
            cipher: None,
            opened: 0,
        };
        Ok(())
    }

    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let len = match self.files.get(file as usize) {
            Some(Opening::Receiving { len, .. }) => *len,
            _ => return Err(sink_err(io::Error::other("file not open"))),
        };
        if data.is_empty() || offset.checked_add(data.len() as u64).is_none_or(|end| end > len) {
            return Err(sink_err(io::Error::other("a block outside the file")));
        }
        let Some(plain) = plaintext_len(len) else {
            // Not an envelope's size: keep only the header bytes, to say what it is at the end.
            if offset < HEADER_LEN as u64 {
                let n = (HEADER_LEN - offset as usize).min(data.len());
                if let Opening::Receiving { head, .. } = &mut self.files[file as usize] {
                    head[offset as usize..offset as usize + n].copy_from_slice(&data[..n]);
                }
            }
            return Ok(());
        };
        let in_header = if offset < HEADER_LEN as u64 {
            (HEADER_LEN - offset as usize).min(data.len())
        } else {
            0
        };
        if in_header < data.len() {
            // The bound first: a refused block must leave nothing behind (it comes again).
            let (first, _) = locate_sealed(offset + in_header as u64);
            let (last, _) = locate_sealed(offset + data.len() as u64 - 1);
            let starting = (first..=last).filter(|&i| !self.open.contains_key(&(file, i))).count();
            // A block that also completes an open segment may start one beyond the bound, so
            // that open segments can always finish; so may one with header bytes, so that
            // segments complete but waiting for the header's key can always be opened.
            let completes_open = starting <= (last - first) as usize;
            let cap = MAX_OPEN_SEGMENTS + if completes_open || in_header > 0 { 2 } else { 0 };
            if starting > 0 && self.open.len() + starting > cap {
                return Err(SinkError::Full);
            }
        }
        let mut pos = 0usize;
        if in_header > 0 {
            self.header_bytes(file, offset as usize, &data[..in_header])?;
            pos = in_header;
        }
        while pos < data.len() {
            let (index, within) = locate_sealed(offset + pos as u64);
            let want = segment_plaintext_len(plain, index) + SEGMENT_OVERHEAD;
            let n = (want - within).min(data.len() - pos);
            let a = self
                .open
                .entry((file, index))
                .or_insert_with(|| Assembly { buf: vec![0; want], filled: 0 });
            a.buf[within..within + n].copy_from_slice(&data[pos..pos + n]);
            a.filled += n;
            let complete = a.filled == want;
            let unlocked =
                matches!(&self.files[file as usize], Opening::Receiving { cipher: Some(_), .. });
            if complete && unlocked {
                self.open_segment(file, index)?;
            }
            pos += n;
        }
        Ok(())
    }

    fn expect_sum(&mut self, file: u32, _sum: Option<crate::control::FileSum>) {
        // The sum is of the bytes on the wire, the file here is of another form: no file
        // compares equal to it.
        self.inner.expect_sum(file, None)
    }

    fn free_blocks(&self) -> u64 {
        self.inner.free_blocks()
    }

    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        let state = match self.files.get_mut(file as usize) {
            Some(s) => std::mem::replace(s, Opening::Done),
            None => return self.inner.finish(file, verified),
        };
        self.drop_assemblies(file);
        let Opening::Receiving { len, head, head_filled, cipher, opened } = state else {
            return self.inner.finish(file, false);
        };
        if !verified {
            return self.inner.finish(file, false);
        }
        // Verified end to end: the envelope is exactly what the server holds. Whether it opened
        // whole is this sink's to say.
        let complete = cipher.is_some() && opened == segment_count(plaintext_len(len).unwrap_or(0));
        if complete {
            return self.inner.finish(file, true);
        }
        let _ = self.inner.finish(file, false);
        let e = if head[..MAGIC.len()] != MAGIC || (len as usize) < MAGIC.len() {
            AtRestError::NotAnEnvelope
        } else if head_filled < HEADER_LEN && len < HEADER_LEN as u64 {
            AtRestError::HeaderTruncated { expected: HEADER_LEN as u64, actual: len }
        } else {
            match Header::parse(&head[..]) {
                Err(e) => e,
                Ok(h) => AtRestError::Truncated { actual: len, expected: h.envelope_len() },
            }
        };
        Err(self.passkey.failed(e))
    }

    fn name(&self, file: u32) -> Option<String> {
        self.inner.name(file)
    }
}

impl Drop for OpeningSink {
    fn drop(&mut self) {
        for a in self.open.values_mut() {
            a.buf.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atrest::EnvelopeReader;
    use crate::io::docroot::RelPath;
    use crate::io::source;

    /// The cheapest costs the format accepts (the tests derive often).
    const CHEAP: Argon2Params = Argon2Params { m_cost_kib: 19_456, t_cost: 2, p_cost: 1 };

    fn passkey(pass: &str) -> Arc<Passkey> {
        Arc::new(Passkey::new(Zeroizing::new(pass.as_bytes().to_vec()), CHEAP))
    }

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
    }

    /// A source dir holding `files` (name, bytes) and the upload's `Outgoing` for them.
    fn outgoing(keys: &Envelopes, files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Outgoing) {
        let d = tempfile::tempdir().unwrap();
        for (name, data) in files {
            std::fs::write(d.path().join(name), data).unwrap();
        }
        let root = Arc::new(Docroot::open(d.path()).unwrap());
        let mut listed = Vec::new();
        for (name, _) in files {
            let rel = RelPath::parse(name).unwrap();
            listed.extend(source::list(&root, &rel, SourceLimits::default()).unwrap());
        }
        let out = keys.source(listed, SourceLimits::default()).unwrap();
        (d, out)
    }

    /// The whole envelope of file `id`, read in `step`-byte pieces from the end backwards.
    fn read_all(src: &mut dyn BlockSource, size: u64, id: u32, step: usize) -> Vec<u8> {
        let mut out = vec![0u8; size as usize];
        let mut end = out.len();
        while end > 0 {
            let start = end.saturating_sub(step);
            src.read(id, start as u64, &mut out[start..end]).unwrap();
            end = start;
        }
        out
    }

    fn decrypt(pass: &str, env: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let header = Header::parse(env)?;
        let key = header.unlock_with_passphrase(pass.as_bytes())?;
        let mut back = Vec::new();
        EnvelopeReader::new(std::io::Cursor::new(env.to_vec()), key)?.decrypt_to(&mut back)?;
        Ok(back)
    }

    #[test]
    fn the_source_hands_out_envelopes_that_open_with_the_passphrase_and_never_change() {
        let keys = Envelopes::new(passkey("correct horse"));
        let big = content(3 * SEGMENT_SIZE + 4321, 1);
        let (_d, mut out) =
            outgoing(&keys, &[("big", big.clone()), ("empty", Vec::new()), ("one", vec![9])]);
        let names: Vec<_> = out.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["big.ferry", "empty.ferry", "one.ferry"]);
        for (i, (e, plain)) in
            out.entries.clone().iter().zip([big, Vec::new(), vec![9]]).enumerate()
        {
            assert_eq!(e.size, envelope_len(plain.len() as u64));
            // Read forwards in big steps, then backwards in small ones past every cache.
            let a = read_all(&mut out.source, e.size, i as u32, 1 << 20);
            let b = read_all(&mut out.source, e.size, i as u32, 1000);
            assert_eq!(a, b, "the same envelope bytes at every read");
            assert_eq!(decrypt("correct horse", &a).unwrap(), plain);
            assert!(matches!(decrypt("wrong", &a), Err(AtRestError::WrongPassphrase)));
            if plain.len() >= 64 {
                assert!(!a.windows(64).any(|w| w == &plain[1000..1064]), "no plaintext in it");
            }
        }
        // One derivation for the whole transfer: every envelope has the same slot salt.
        let salts: Vec<_> = (0..3u32)
            .map(|i| {
                let mut h = vec![0u8; HEADER_LEN];
                out.source.read(i, 0, &mut h).unwrap();
                Header::parse(&h).unwrap().passphrase_salts()
            })
            .collect();
        assert!(salts.iter().all(|s| s.len() == 1 && s[0] == salts[0][0]));
        // ... and different files, keys and IVs.
        let mut h0 = vec![0u8; HEADER_LEN];
        let mut h2 = vec![0u8; HEADER_LEN];
        out.source.read(0, 0, &mut h0).unwrap();
        out.source.read(2, 0, &mut h2).unwrap();
        assert_ne!(Header::parse(&h0).unwrap().file_id(), Header::parse(&h2).unwrap().file_id());
    }

    #[test]
    fn a_source_that_changes_is_sealed_under_another_iv() {
        let keys = Envelopes::new(passkey("pw"));
        let data = content(CACHED_SEGMENTS * SEGMENT_SIZE * 2, 3);
        let (d, mut out) = outgoing(&keys, &[("f", data.clone())]);
        let size = out.entries[0].size;
        let first = read_all(&mut out.source, size, 0, 1 << 20);
        // The same bytes, rewritten in place (same size; the source's identity check is by
        // mtime, which a fast rewrite may keep): segment 0 changes.
        let mut changed = data.clone();
        changed[10] ^= 0xff;
        let f = std::fs::OpenOptions::new().write(true).open(d.path().join("f")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &changed[..SEGMENT_SIZE], 0).unwrap();
        let mtime = std::fs::metadata(d.path().join("f")).unwrap().modified().unwrap();
        drop(f);
        let mut seg = vec![0u8; ENC_SEGMENT_SIZE];
        // Past the cache first (read_all ends at segment 0, which it then holds).
        let mut tail = vec![0u8; (size - (HEADER_LEN + ENC_SEGMENT_SIZE) as u64) as usize];
        out.source.read(0, size - tail.len() as u64, &mut tail).unwrap();
        match out.source.read(0, HEADER_LEN as u64, &mut seg) {
            Ok(()) => {
                let old = &first[HEADER_LEN..HEADER_LEN + ENC_SEGMENT_SIZE];
                assert_ne!(&seg[..12], &old[..12], "another plaintext, another IV");
                assert_ne!(seg, old);
            }
            // The source noticed the change itself (its modification time moved on).
            Err(e) => assert!(e.to_string().contains("changed"), "{e} {mtime:?}"),
        }
    }

    /// Feeds the envelope `env` to a download sink into `dir` as file 0 named `name`, in
    /// scrambled blocks, and finishes it as verified.
    fn land(pass: &str, dir: &std::path::Path, name: &str, env: &[u8]) -> io::Result<()> {
        let root = Arc::new(Docroot::open(dir).unwrap());
        let keys = Envelopes::new(passkey(pass));
        let mut sink =
            keys.sink(root, Destination::Dir(RelPath::root()), SinkLimits::default()).unwrap();
        let entry = FileEntry {
            id: 0,
            size: env.len() as u64,
            mtime_ns: 0,
            mode: 0o600,
            path: name.into(),
            part: None,
        };
        sink.open(&entry)?;
        let block = 1400;
        let n = env.len().div_ceil(block);
        let order: Vec<usize> =
            (0..n).filter(|i| i % 7 == 3).chain((0..n).filter(|i| i % 7 != 3).rev()).collect();
        for i in order {
            let (s, e) = (i * block, ((i + 1) * block).min(env.len()));
            match sink.write(0, s as u64, &env[s..e]) {
                Ok(()) => {}
                Err(SinkError::Full) => unreachable!("the test stays under the bound"),
                Err(SinkError::Io(e)) => {
                    let _ = sink.finish(0, false);
                    return Err(e);
                }
            }
        }
        sink.finish(0, true)
    }

    #[test]
    fn the_sink_lands_the_plaintext_under_the_name_without_the_suffix() {
        let keys = Envelopes::new(passkey("s3cret"));
        let data = content(5 * SEGMENT_SIZE + 17, 7);
        let (_d, mut out) = outgoing(&keys, &[("doc", data.clone())]);
        let env = read_all(&mut out.source, out.entries[0].size, 0, 1 << 20);
        let dst = tempfile::tempdir().unwrap();
        land("s3cret", dst.path(), "doc.ferry", &env).unwrap();
        assert_eq!(std::fs::read(dst.path().join("doc")).unwrap(), data);
        let names: Vec<_> =
            std::fs::read_dir(dst.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["doc"], "nothing else is left");
    }

    #[test]
    fn bad_envelopes_leave_nothing_and_say_which() {
        let keys = Envelopes::new(passkey("right"));
        let data = content(2 * SEGMENT_SIZE + 5, 2);
        let (_d, mut out) = outgoing(&keys, &[("x", data)]);
        let env = read_all(&mut out.source, out.entries[0].size, 0, 1 << 20);
        let mut flipped = env.clone();
        flipped[HEADER_LEN + ENC_SEGMENT_SIZE + 100] ^= 1;
        type Expected = fn(&AtRestError) -> bool;
        let cases: Vec<(&str, &str, Vec<u8>, Expected)> = vec![
            ("wrong passphrase", "wrong", env.clone(), |e| {
                matches!(e, AtRestError::WrongPassphrase)
            }),
            ("not an envelope", "right", b"just some text, not sealed".to_vec(), |e| {
                matches!(e, AtRestError::NotAnEnvelope)
            }),
            ("truncated", "right", env[..env.len() - 1000].to_vec(), |e| {
                matches!(e, AtRestError::Truncated { .. })
            }),
            ("cut inside the header", "right", env[..500].to_vec(), |e| {
                matches!(e, AtRestError::HeaderTruncated { .. })
            }),
            ("a flipped bit", "right", flipped, |e| {
                matches!(e, AtRestError::SegmentCorrupted { index: 1 })
            }),
        ];
        for (what, pass, bytes, expected) in cases {
            let dst = tempfile::tempdir().unwrap();
            let root = Arc::new(Docroot::open(dst.path()).unwrap());
            let keys = Envelopes::new(passkey(pass));
            let mut sink =
                keys.sink(root, Destination::Dir(RelPath::root()), SinkLimits::default()).unwrap();
            let entry = FileEntry {
                id: 0,
                size: bytes.len() as u64,
                mtime_ns: 0,
                mode: 0o600,
                path: "x.ferry".into(),
                part: None,
            };
            sink.open(&entry).unwrap();
            let mut failed = false;
            for (i, c) in bytes.chunks(1400).enumerate() {
                if sink.write(0, (i * 1400) as u64, c).is_err() {
                    failed = true;
                    let _ = sink.finish(0, false);
                    break;
                }
            }
            if !failed {
                assert!(sink.finish(0, true).is_err(), "{what}: refused at the end");
            }
            drop(sink);
            let e =
                keys.passkey().take_failure().unwrap_or_else(|| panic!("{what}: no failure kept"));
            assert!(expected(&e), "{what}: {e:?}");
            let left: Vec<_> = std::fs::read_dir(dst.path()).unwrap().collect();
            assert!(left.is_empty(), "{what}: nothing is left ({left:?})");
        }
    }

    /// A new attempt (a new seed) that adopts the held header reproduces the first attempt's
    /// envelope byte for byte; a header another passphrase sealed, or of another size, is
    /// refused.
    #[test]
    fn an_adopted_header_reproduces_the_earlier_envelope() {
        let keys = Envelopes::new(passkey("again"));
        let data = content(3 * SEGMENT_SIZE + 99, 8);
        let (d, mut first) = outgoing(&keys, &[("f", data.clone())]);
        let size = first.entries[0].size;
        let before = read_all(&mut first.source, size, 0, 1 << 20);
        let root = Arc::new(Docroot::open(d.path()).unwrap());
        let mut second = keys.source(second_listing(&root), SourceLimits::default()).unwrap();
        assert_ne!(read_all(&mut second.source, size, 0, 1 << 20), before, "a new seed");
        let mut third = keys.source(second_listing(&root), SourceLimits::default()).unwrap();
        third.source.adopt_head(0, &before[..HEADER_LEN]).unwrap();
        assert_eq!(read_all(&mut third.source, size, 0, 1000), before);

        let stranger = Envelopes::new(passkey("someone else"));
        let mut other = stranger.source(second_listing(&root), SourceLimits::default()).unwrap();
        let e = other.source.adopt_head(0, &before[..HEADER_LEN]).unwrap_err();
        assert!(e.to_string().contains("this passphrase does not open"), "{e}");
        let (_d2, mut small) = outgoing(&keys, &[("g", vec![1; 10])]);
        let e = small.source.adopt_head(0, &before[..HEADER_LEN]).unwrap_err();
        assert!(e.to_string().contains("another size"), "{e}");
    }

    fn second_listing(root: &Arc<Docroot>) -> Vec<SourceFile> {
        source::list(root, &RelPath::parse("f").unwrap(), SourceLimits::default()).unwrap()
    }

    /// The IV is FORMAT.md §6.2's formula, computed here from its parts.
    #[test]
    fn synthetic_ivs_follow_the_documented_formula() {
        let keys = Envelopes::new(passkey("iv"));
        let data = content(SEGMENT_SIZE + 10, 4);
        let (_d, mut out) = outgoing(&keys, &[("f", data.clone())]);
        let env = read_all(&mut out.source, out.entries[0].size, 0, 1 << 20);
        let header = Header::parse(&env).unwrap();
        let key = header.unlock_with_passphrase(b"iv").unwrap();
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(header.file_id()), key.expose_dek());
        let mut siv = [0u8; 32];
        let mut info = b"ferry/v1 synthetic-iv".to_vec();
        info.extend_from_slice(header.context());
        hk.expand(&info, &mut siv).unwrap();
        for (i, plain) in [(0u64, &data[..SEGMENT_SIZE]), (1, &data[SEGMENT_SIZE..])] {
            let mut h = blake3::Hasher::new_keyed(&siv);
            h.update(&i.to_be_bytes());
            h.update(plain);
            let at = HEADER_LEN + i as usize * ENC_SEGMENT_SIZE;
            assert_eq!(&env[at..at + 12], &h.finalize().as_bytes()[..12], "segment {i}");
        }
    }

    #[test]
    fn envelope_lengths_invert() {
        for len in [0u64, 1, 65_535, 65_536, 65_537, 3 * 65_536, 10_000_000] {
            assert_eq!(plaintext_len(envelope_len(len)), Some(len), "{len}");
        }
        for bad in [0u64, 1023, 1024, 1051, envelope_len(65_536) + 1, envelope_len(65_536) + 28] {
            assert_eq!(plaintext_len(bad), None, "{bad}");
        }
    }
}
