//! Messages of the reliable control channel that the sans-IO sessions exchange (file manifest,
//! digests, per-file results, abort). Session setup and authentication belong to the control
//! layer that carries these frames; see `docs/PROTOCOL.md`, "Control messages".

use crate::wire::ParseError;

/// Largest control frame (type byte and payload) accepted.
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest relative path accepted in a file entry, in bytes.
pub const MAX_PATH: usize = 4096;

/// A BLAKE3 digest of a whole file.
pub type Digest = [u8; 32];

/// One file of the session's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Index in the manifest, starting at 0 and increasing by one per entry.
    pub id: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 if not preserved).
    pub mtime_ns: i64,
    /// Unix permission bits (0 if not preserved).
    pub mode: u32,
    /// Relative path, `/`-separated, UTF-8. The receiving driver validates it against its docroot.
    pub path: String,
    /// `Some` when this entry is one part of a larger file that several sessions of one
    /// multi-session transfer send (`ferry cp -C N`): the entry's `size` bytes are the bytes
    /// at [`Part::offset`] of that file. Sent as a FILE_PART frame.
    pub part: Option<Part>,
}

/// Where a manifest entry's bytes sit in the larger file it is a part of (a FILE_PART frame).
///
/// The receiver assembles the parts of one file that carry the same `transfer` id into one
/// partial file and moves it into place once every byte of `[0, total)` arrived in a verified
/// part (docs/PROTOCOL.md, "Multi-session transfers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Offset of the entry's first byte in the whole file.
    pub offset: u64,
    /// Size of the whole file.
    pub total: u64,
    /// Random id the client draws for the whole multi-session transfer: parts assemble only
    /// with parts of the same transfer (another transfer to the same name cannot join in).
    pub transfer: [u8; 16],
}

/// Outcome of one file at the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Every byte arrived and the digest matched.
    Verified,
    /// All blocks arrived but the digest did not match the sender's.
    DigestMismatch,
    /// The receiver could not store the file (or refused it: it exists, its name is unusable).
    StorageFailed,
    /// The sender could not read the file (it shrank, vanished or failed to read); nothing of it
    /// was kept.
    SourceFailed,
    /// The receiver keeps the file of that name it already has, as the overwrite policy says
    /// (the reason says why: identical, not older, exists); nothing is sent. Not a failure.
    Skipped,
}

impl FileStatus {
    fn code(self) -> u8 {
        match self {
            FileStatus::Verified => 0,
            FileStatus::DigestMismatch => 1,
            FileStatus::StorageFailed => 2,
            FileStatus::SourceFailed => 3,
            FileStatus::Skipped => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(FileStatus::Verified),
            1 => Some(FileStatus::DigestMismatch),
            2 => Some(FileStatus::StorageFailed),
            3 => Some(FileStatus::SourceFailed),
            4 => Some(FileStatus::Skipped),
            _ => None,
        }
    }

    /// Whether the file's outcome is what was asked: verified, or skipped by the policy.
    pub fn is_ok(self) -> bool {
        matches!(self, FileStatus::Verified | FileStatus::Skipped)
    }
}

/// What the receiver does with a file whose name already exists at the destination (`ferry cp
/// --overwrite`, ascp's policies; docs/PROTOCOL.md 8.2). "Same" is judged by the resume level:
/// at 1 and above, the same size (levels 2 and 3 compare as 1 does for now); at 0, never.
/// "Older": the existing file's modification time is before the incoming one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// No policy given (Ferry's default, not one of ascp's): an existing file that is the same
    /// is skipped, one that is not fails and is kept.
    #[default]
    Keep,
    /// Every existing file is kept and the incoming one skipped.
    Never,
    /// Every existing file is replaced.
    Always,
    /// Replaced unless the same (then skipped): ascp's default.
    Diff,
    /// Replaced if older, else skipped.
    Older,
    /// Replaced if not the same and older, else skipped.
    DiffOlder,
}

impl Overwrite {
    /// The CLIENT_HELLO code (`Keep` is the absence of the field).
    pub fn code(self) -> Option<u8> {
        match self {
            Overwrite::Keep => None,
            Overwrite::Never => Some(0),
            Overwrite::Always => Some(1),
            Overwrite::Diff => Some(2),
            Overwrite::Older => Some(3),
            Overwrite::DiffOlder => Some(4),
        }
    }

    /// The policy of a CLIENT_HELLO code.
    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Overwrite::Never,
            1 => Overwrite::Always,
            2 => Overwrite::Diff,
            3 => Overwrite::Older,
            4 => Overwrite::DiffOlder,
            _ => return None,
        })
    }

    /// What to do with an existing regular file given whether it is the same as the incoming
    /// one and whether it is older: `Ok(true)` replace, `Ok(false)` skip, `Err` keep it and fail
    /// the incoming file (the reason).
    pub fn decide(self, same: bool, older: bool) -> Result<bool, &'static str> {
        match self {
            Overwrite::Keep if same => Ok(false),
            Overwrite::Keep => Err("exists"),
            Overwrite::Never => Ok(false),
            Overwrite::Always => Ok(true),
            Overwrite::Diff => Ok(!same),
            Overwrite::Older => Ok(older),
            Overwrite::DiffOlder => Ok(!same && older),
        }
    }
}

/// A control-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Sender to receiver: the next manifest entry.
    File(FileEntry),
    /// Sender to receiver: the manifest is complete with this many files.
    ManifestEnd {
        /// Total number of files.
        files: u32,
    },
    /// Sender to receiver: the BLAKE3 digest of the file as sent.
    FileDigest {
        /// File id.
        file: u32,
        /// BLAKE3-256 of the file's bytes.
        digest: Digest,
    },
    /// Receiver to sender: the file's final outcome. A failure may come before the file was
    /// sent (the receiver refused it); the sender then skips its blocks.
    FileResult {
        /// File id.
        file: u32,
        /// Outcome.
        status: FileStatus,
        /// Why it failed (empty when verified), sanitised by the receiver.
        reason: String,
    },
    /// Sender to receiver: the sender cannot send this file (it could not read it) and skips
    /// its remaining blocks; the receiver discards what it has of it and answers with a
    /// [`FileStatus::SourceFailed`] result. The rest of the session goes on.
    FileAbandon {
        /// File id.
        file: u32,
        /// Why, sanitised by the sender.
        reason: String,
    },
    /// Receiver to sender: the receiving end's rate limits for what it is sent, bits/s. The
    /// sender paces within the lower of these and its own (`target >= 1`, `min <= target`).
    /// A server receiving an upload sends one at the start with the limits it negotiated, and
    /// another whenever they change while the session runs.
    RateLimit {
        /// The highest rate to send at.
        target: u64,
        /// The rate not to fall below.
        min: u64,
    },
    /// Receiver to sender, in a resuming session (docs/PROTOCOL.md 8.4): the blocks of file
    /// `file` the receiver already holds from an interrupted earlier attempt (verified against
    /// its journal), as ranges of block indexes relative to the file's first block, increasing
    /// and neither overlapping nor touching. The sender does not send them. Sent once for every
    /// resumable file, possibly with no range.
    FileHave {
        /// File id.
        file: u32,
        /// Held blocks `[start, end)`, relative to the file's first block.
        ranges: Vec<(u64, u64)>,
        /// In a session whose sender seals its files itself (CLIENT_HELLO flag bit 7), when
        /// the held ranges start at block 0: the file's first `min(size, MAX_HAVE_HEAD)` held
        /// bytes (an envelope's header, which the sender must reproduce). Else empty.
        head: Vec<u8>,
    },
    /// Sender to receiver, right before the FILE of `file` (docs/PROTOCOL.md 8.4): the file's
    /// content checksum at resume level 2 or 3 (ascp's sparse and full checksum), so that a
    /// receiver holding a file of that name and size can tell whether it is the same.
    FileSum {
        /// File id (the FILE that follows).
        file: u32,
        /// The checksum.
        sum: FileSum,
    },
    /// Either way: the session ends now.
    Abort {
        /// Machine-readable reason (see the protocol document).
        code: u16,
        /// Human-readable reason, sanitised by the sender of the message.
        reason: String,
    },
}

const T_FILE: u8 = 1;
const T_MANIFEST_END: u8 = 2;
const T_FILE_DIGEST: u8 = 3;
const T_FILE_RESULT: u8 = 4;
const T_ABORT: u8 = 5;
const T_FILE_ABANDON: u8 = 6;
const T_RATE_LIMIT: u8 = 7;
const T_FILE_PART: u8 = 8;
const T_FILE_HAVE: u8 = 9;
const T_FILE_SUM: u8 = 10;

/// A file's content checksum (FILE_SUM): chunk CVs of sampled [`RESUME_CHUNK`]s, or the whole
/// file's BLAKE3 digest.
///
/// [`RESUME_CHUNK`]: crate::session::RESUME_CHUNK
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSum {
    /// Level 2 (sparse): `(chunk index, chaining value)` of at most [`MAX_SUM_CHUNKS`] whole
    /// chunks ([`crate::session::sparse_chunks`]), in increasing index order.
    Sparse(Vec<(u64, [u8; 32])>),
    /// Level 3 (full), or a file with no whole chunk: BLAKE3 of the file's bytes.
    Full([u8; 32]),
}

/// Most chunks a sparse FILE_SUM names.
pub const MAX_SUM_CHUNKS: usize = 8;

/// Most ranges in one FILE_HAVE (a receiver holding more offers the first ones; the rest is
/// sent again).
pub const MAX_HAVE_RANGES: usize = 1024;
/// Most bytes of a file's head a FILE_HAVE carries (an envelope header's length).
pub const MAX_HAVE_HEAD: usize = 1024;

/// Longest reason string carried in a frame, in bytes (longer ones are cut on a character
/// boundary).
pub const MAX_REASON: usize = 1024;

fn put_reason(out: &mut Vec<u8>, reason: &str) {
    let reason = truncate_utf8(reason, MAX_REASON);
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

fn get_reason(r: &mut Reader<'_>) -> Result<String, ParseError> {
    let n = r.u16()? as usize;
    if n > MAX_REASON {
        return Err(ParseError::Invalid("reason too long"));
    }
    Ok(String::from_utf8_lossy(r.take(n)?).into_owned())
}

impl ControlMessage {
    /// The frame type of this message.
    fn frame_type(&self) -> u8 {
        match self {
            ControlMessage::File(f) if f.part.is_some() => T_FILE_PART,
            ControlMessage::File(_) => T_FILE,
            ControlMessage::ManifestEnd { .. } => T_MANIFEST_END,
            ControlMessage::FileDigest { .. } => T_FILE_DIGEST,
            ControlMessage::FileResult { .. } => T_FILE_RESULT,
            ControlMessage::Abort { .. } => T_ABORT,
            ControlMessage::FileAbandon { .. } => T_FILE_ABANDON,
            ControlMessage::RateLimit { .. } => T_RATE_LIMIT,
            ControlMessage::FileHave { .. } => T_FILE_HAVE,
            ControlMessage::FileSum { .. } => T_FILE_SUM,
        }
    }

    /// Appends the framed message (4-byte length, type, payload) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = begin_frame(out, self.frame_type());
        match self {
            ControlMessage::File(f) => {
                out.extend_from_slice(&f.id.to_be_bytes());
                out.extend_from_slice(&f.size.to_be_bytes());
                out.extend_from_slice(&f.mtime_ns.to_be_bytes());
                out.extend_from_slice(&f.mode.to_be_bytes());
                out.extend_from_slice(&(f.path.len() as u16).to_be_bytes());
                out.extend_from_slice(f.path.as_bytes());
                if let Some(p) = &f.part {
                    out.extend_from_slice(&p.offset.to_be_bytes());
                    out.extend_from_slice(&p.total.to_be_bytes());
                    out.extend_from_slice(&p.transfer);
                }
            }
            ControlMessage::ManifestEnd { files } => out.extend_from_slice(&files.to_be_bytes()),
            ControlMessage::FileDigest { file, digest } => {
                out.extend_from_slice(&file.to_be_bytes());
                out.extend_from_slice(digest);
            }
            ControlMessage::FileResult { file, status, reason } => {
                out.extend_from_slice(&file.to_be_bytes());
                out.push(status.code());
                put_reason(out, reason);
            }
            ControlMessage::FileAbandon { file, reason } => {
                out.extend_from_slice(&file.to_be_bytes());
                put_reason(out, reason);
            }
            ControlMessage::RateLimit { target, min } => {
                out.extend_from_slice(&target.to_be_bytes());
                out.extend_from_slice(&min.to_be_bytes());
            }
            ControlMessage::FileHave { file, ranges, head } => {
                out.extend_from_slice(&file.to_be_bytes());
                let n = ranges.len().min(MAX_HAVE_RANGES);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for (start, end) in &ranges[..n] {
                    out.extend_from_slice(&start.to_be_bytes());
                    out.extend_from_slice(&end.to_be_bytes());
                }
                if !head.is_empty() {
                    let h = &head[..head.len().min(MAX_HAVE_HEAD)];
                    out.extend_from_slice(&(h.len() as u16).to_be_bytes());
                    out.extend_from_slice(h);
                }
            }
            ControlMessage::Abort { code, reason } => {
                out.extend_from_slice(&code.to_be_bytes());
                put_reason(out, reason);
            }
            ControlMessage::FileSum { file, sum } => {
                out.extend_from_slice(&file.to_be_bytes());
                match sum {
                    FileSum::Sparse(chunks) => {
                        let n = chunks.len().min(MAX_SUM_CHUNKS);
                        out.push(2);
                        out.push(n as u8);
                        for (k, cv) in &chunks[..n] {
                            out.extend_from_slice(&k.to_be_bytes());
                            out.extend_from_slice(cv);
                        }
                    }
                    FileSum::Full(root) => {
                        out.push(3);
                        out.extend_from_slice(root);
                    }
                }
            }
        }
        end_frame(out, start);
    }

    /// Decodes one framed message from the front of `buf`. Returns `Ok(None)` if `buf` does not
    /// yet hold a whole frame, else the message and the bytes consumed.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, ParseError> {
        let Some((t, payload, used)) = split_frame(buf, MAX_FRAME)? else { return Ok(None) };
        let mut r = Reader(payload);
        let msg = match t {
            T_FILE | T_FILE_PART => {
                let id = r.u32()?;
                let size = r.u64()?;
                let mtime_ns = r.u64()? as i64;
                let mode = r.u32()?;
                let path_len = r.u16()? as usize;
                if path_len == 0 || path_len > MAX_PATH {
                    return Err(ParseError::Invalid("path length"));
                }
                let path = std::str::from_utf8(r.take(path_len)?)
                    .map_err(|_| ParseError::Invalid("path is not UTF-8"))?
                    .to_owned();
                let part = if t == T_FILE_PART {
                    let (offset, total) = (r.u64()?, r.u64()?);
                    let transfer = r.take(16)?.try_into().expect("16 bytes");
                    if size == 0 || offset.checked_add(size).is_none_or(|end| end > total) {
                        return Err(ParseError::Invalid("file part: empty, or beyond its file"));
                    }
                    Some(Part { offset, total, transfer })
                } else {
                    None
                };
                ControlMessage::File(FileEntry { id, size, mtime_ns, mode, path, part })
            }
            T_MANIFEST_END => ControlMessage::ManifestEnd { files: r.u32()? },
            T_FILE_DIGEST => {
                let file = r.u32()?;
                let digest = r.take(32)?.try_into().expect("32 bytes");
                ControlMessage::FileDigest { file, digest }
            }
            T_FILE_RESULT => {
                let file = r.u32()?;
                let status =
                    FileStatus::from_code(r.u8()?).ok_or(ParseError::Invalid("file status"))?;
                let reason = get_reason(&mut r)?;
                ControlMessage::FileResult { file, status, reason }
            }
            T_FILE_ABANDON => {
                let file = r.u32()?;
                ControlMessage::FileAbandon { file, reason: get_reason(&mut r)? }
            }
            T_RATE_LIMIT => {
                let (target, min) = (r.u64()?, r.u64()?);
                if target == 0 || min > target {
                    return Err(ParseError::Invalid("rate limit: target 0 or min above target"));
                }
                ControlMessage::RateLimit { target, min }
            }
            T_FILE_HAVE => {
                let file = r.u32()?;
                let n = r.u16()? as usize;
                if n > MAX_HAVE_RANGES {
                    return Err(ParseError::Invalid("file have: too many ranges"));
                }
                let mut ranges = Vec::with_capacity(n);
                let mut floor = 0u64;
                for i in 0..n {
                    let (start, end) = (r.u64()?, r.u64()?);
                    if start >= end || (i > 0 && start <= floor) {
                        return Err(ParseError::Invalid(
                            "file have: ranges empty, out of order, overlapping or touching",
                        ));
                    }
                    floor = end;
                    ranges.push((start, end));
                }
                let head = if r.0.is_empty() {
                    Vec::new()
                } else {
                    let len = r.u16()? as usize;
                    if len == 0 || len > MAX_HAVE_HEAD || ranges.first().is_none_or(|r| r.0 != 0) {
                        return Err(ParseError::Invalid(
                            "file have: a head that is empty, too long, or of unheld bytes",
                        ));
                    }
                    r.take(len)?.to_vec()
                };
                ControlMessage::FileHave { file, ranges, head }
            }
            T_FILE_SUM => {
                let file = r.u32()?;
                let sum = match r.u8()? {
                    2 => {
                        let n = r.u8()? as usize;
                        if n == 0 || n > MAX_SUM_CHUNKS {
                            return Err(ParseError::Invalid("file sum: 1 to 8 chunks"));
                        }
                        let mut chunks: Vec<(u64, [u8; 32])> = Vec::with_capacity(n);
                        for _ in 0..n {
                            let k = r.u64()?;
                            if chunks.last().is_some_and(|&(last, _)| last >= k) {
                                return Err(ParseError::Invalid("file sum: chunks out of order"));
                            }
                            chunks.push((k, r.take(32)?.try_into().expect("32")));
                        }
                        FileSum::Sparse(chunks)
                    }
                    3 => FileSum::Full(r.take(32)?.try_into().expect("32")),
                    _ => return Err(ParseError::Invalid("file sum: unknown kind")),
                };
                ControlMessage::FileSum { file, sum }
            }
            T_ABORT => {
                let code = r.u16()?;
                ControlMessage::Abort { code, reason: get_reason(&mut r)? }
            }
            t => return Err(ParseError::UnknownType(t)),
        };
        if !r.0.is_empty() {
            return Err(ParseError::Invalid("trailing bytes in control frame"));
        }
        Ok(Some((msg, used)))
    }
}

/// Appends the header of a frame of type `t` (docs/PROTOCOL.md section 8.4: `u32 length` of
/// type and payload, `u8 type`, payload) and returns where it starts, for [`end_frame`]. The
/// one framing of both the set-up messages and the control messages.
pub(crate) fn begin_frame(out: &mut Vec<u8>, t: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(t);
    start
}

/// Writes the length of the frame begun at `start` (everything appended since).
pub(crate) fn end_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// One frame: its type, its payload and the bytes it took.
pub type Frame<'a> = (u8, &'a [u8], usize);

/// Splits one frame off the front of `buf`, whose length field (type and payload) may be at
/// most `max_len`: `Ok(None)` while `buf` holds less than a whole frame, else the type, the
/// payload and the bytes consumed.
pub fn split_frame(buf: &[u8], max_len: usize) -> Result<Option<Frame<'_>>, ParseError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 {
        return Err(ParseError::Truncated);
    }
    if len > max_len {
        return Err(ParseError::Oversized);
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((buf[4], &buf[5..4 + len], 4 + len)))
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A bounds-checked big-endian reader over a frame's payload (shared with `setup`).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.0.len() < n {
            return Err(ParseError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_partial_frames_wait() {
        let msgs = vec![
            ControlMessage::File(FileEntry {
                id: 3,
                size: 1 << 40,
                mtime_ns: -5,
                mode: 0o644,
                path: "dir/ünïcode name.bin".into(),
                part: None,
            }),
            ControlMessage::File(FileEntry {
                id: 4,
                size: 1 << 20,
                mtime_ns: 7,
                mode: 0o600,
                path: "big".into(),
                part: Some(Part { offset: 3 << 20, total: 4 << 20, transfer: [9; 16] }),
            }),
            ControlMessage::ManifestEnd { files: 4 },
            ControlMessage::FileDigest { file: 3, digest: [0xab; 32] },
            ControlMessage::FileResult {
                file: 3,
                status: FileStatus::DigestMismatch,
                reason: "digest mismatch".into(),
            },
            ControlMessage::FileResult { file: 4, status: FileStatus::Verified, reason: "".into() },
            ControlMessage::FileAbandon { file: 5, reason: "\"x\" shrank".into() },
            ControlMessage::RateLimit { target: 40_000_000, min: 0 },
            ControlMessage::RateLimit { target: u64::MAX, min: u64::MAX },
            ControlMessage::Abort { code: 2, reason: "disk full".into() },
            ControlMessage::FileHave { file: 6, ranges: vec![], head: vec![] },
            ControlMessage::FileHave { file: 7, ranges: vec![(0, 3), (5, 1 << 40)], head: vec![] },
            ControlMessage::FileHave { file: 8, ranges: vec![(0, 1)], head: vec![7; 1024] },
            ControlMessage::FileSum { file: 9, sum: FileSum::Full([5; 32]) },
            ControlMessage::FileSum {
                file: 9,
                sum: FileSum::Sparse(vec![(0, [1; 32]), (7, [2; 32])]),
            },
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let mut at = 0;
        for m in &msgs {
            assert_eq!(ControlMessage::decode(&buf[at..at + 3]), Ok(None));
            let (got, used) = ControlMessage::decode(&buf[at..]).unwrap().unwrap();
            assert_eq!(&got, m);
            at += used;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn a_part_must_be_inside_its_file() {
        let entry = |size: u64, offset: u64, total: u64| {
            let part = Some(Part { offset, total, transfer: [1; 16] });
            let mut buf = Vec::new();
            let f = FileEntry { id: 0, size, mtime_ns: 0, mode: 0, path: "f".into(), part };
            ControlMessage::File(f).encode(&mut buf);
            ControlMessage::decode(&buf).map(|m| m.is_some())
        };
        assert_eq!(entry(10, 90, 100), Ok(true));
        assert_eq!(
            entry(0, 0, 100),
            Err(ParseError::Invalid("file part: empty, or beyond its file"))
        );
        assert!(entry(11, 90, 100).is_err());
        assert!(entry(2, u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn held_ranges_must_increase_without_touching() {
        let have = |ranges: &[(u64, u64)]| {
            let mut buf = Vec::new();
            ControlMessage::FileHave { file: 0, ranges: ranges.to_vec(), head: vec![] }
                .encode(&mut buf);
            ControlMessage::decode(&buf).map(|m| m.is_some())
        };
        assert_eq!(have(&[(0, 1), (2, 3)]), Ok(true));
        // A head only of held bytes from block 0 on, 1 ..= 1024 bytes of it.
        let with_head = |ranges: &[(u64, u64)], head: Vec<u8>| {
            let mut buf = Vec::new();
            ControlMessage::FileHave { file: 0, ranges: ranges.to_vec(), head }.encode(&mut buf);
            ControlMessage::decode(&buf).map(|m| m.is_some())
        };
        assert_eq!(with_head(&[(0, 1)], vec![1; 1024]), Ok(true));
        assert!(with_head(&[(1, 2)], vec![1; 10]).is_err(), "a head of bytes not held");
        let mut payload = vec![T_FILE_HAVE, 0, 0, 0, 0, 0, 1];
        payload.extend_from_slice(&0u64.to_be_bytes());
        payload.extend_from_slice(&1u64.to_be_bytes());
        payload.extend_from_slice(&1025u16.to_be_bytes());
        payload.extend_from_slice(&[0; 1025]);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(ControlMessage::decode(&frame).is_err(), "a head longer than a header");
        for bad in [&[(1u64, 1u64)][..], &[(0, 2), (2, 3)], &[(4, 5), (0, 1)], &[(0, 5), (3, 9)]] {
            assert!(have(bad).is_err(), "{bad:?}");
        }
        // More ranges than a frame may carry are cut to the first ones by the encoder.
        let many: Vec<(u64, u64)> = (0..2000u64).map(|i| (3 * i, 3 * i + 1)).collect();
        let mut buf = Vec::new();
        ControlMessage::FileHave { file: 0, ranges: many.clone(), head: vec![] }.encode(&mut buf);
        let Some((ControlMessage::FileHave { ranges, .. }, _)) =
            ControlMessage::decode(&buf).unwrap()
        else {
            panic!("a file have")
        };
        assert_eq!(ranges, many[..MAX_HAVE_RANGES]);
    }

    #[test]
    fn rejects_oversized_unknown_and_trailing() {
        assert_eq!(ControlMessage::decode(&[0, 2, 0, 0, 1]), Err(ParseError::Oversized));
        assert_eq!(ControlMessage::decode(&[0, 0, 0, 1, 99]), Err(ParseError::UnknownType(99)));
        assert!(ControlMessage::decode(&[0, 0, 0, 6, T_MANIFEST_END, 0, 0, 0, 1, 9]).is_err());
        assert!(ControlMessage::decode(&[0, 0, 0, 0]).is_err());
        // A rate limit of zero, or with its minimum above its target, is malformed.
        for (target, min) in [(0u64, 0u64), (5, 6)] {
            let mut bad = vec![0, 0, 0, 17, T_RATE_LIMIT];
            bad.extend_from_slice(&target.to_be_bytes());
            bad.extend_from_slice(&min.to_be_bytes());
            assert!(matches!(ControlMessage::decode(&bad), Err(ParseError::Invalid(_))));
        }
    }

    #[test]
    /// ascp's policies (and Ferry's default) as a table of (same, older) to replace / skip /
    /// fail; status 4 (skipped) round-trips and is not a failure.
    fn overwrite_policies_decide_as_documented() {
        use super::Overwrite::*;
        let cases = [(true, true), (true, false), (false, false), (false, true)];
        let table = [
            (Keep, "SSFF"),
            (Never, "SSSS"),
            (Always, "RRRR"),
            (Diff, "SSRR"),
            (Older, "RSSR"),
            (DiffOlder, "SSSR"),
        ];
        for (policy, want) in table {
            let got: String = cases
                .iter()
                .map(|&(same, older)| match policy.decide(same, older) {
                    Ok(true) => 'R',
                    Ok(false) => 'S',
                    Err(_) => 'F',
                })
                .collect();
            assert_eq!(got, want, "{policy:?}");
            if let Some(c) = policy.code() {
                assert_eq!(super::Overwrite::from_code(c), Some(policy));
            }
        }
        assert_eq!(super::Overwrite::from_code(5), None);
        assert_eq!(
            super::FileStatus::from_code(super::FileStatus::Skipped.code()),
            Some(super::FileStatus::Skipped)
        );
        assert!(super::FileStatus::Skipped.is_ok() && !super::FileStatus::StorageFailed.is_ok());
    }
}
