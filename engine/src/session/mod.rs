//! The sans-IO session state machines: [`Sender`] and [`Receiver`].
//!
//! Neither reads a clock nor touches a socket or a file. The caller (a driver, or the seeded
//! simulation in the tests) hands them datagrams, control messages and the current time, and asks
//! them for datagrams to send ([`Sender::poll_transmit`], [`Receiver::poll_transmit`]), control
//! messages to send (`poll_control`), the next deadline (`poll_timeout`) and events
//! (`poll_event`). File bytes come from a [`BlockSource`] and go to a [`BlockSink`], both passed
//! in by the caller.

mod gaps;
mod inbound;
mod layout;
mod ranges;
mod receiver;
mod rtt;
mod sender;
mod sendlog;
mod tree_hash;

pub use inbound::DropCounts;
pub use receiver::{Receiver, ReceiverStats};
pub use sender::{Sender, SenderStats};

use std::io;
use std::time::Duration;

use crate::control::{FileEntry, FileStatus};
use crate::crypto::CipherSuite;
use crate::rate::RateLimits;
use crate::wire::{DATA_OVERHEAD, MAX_DATAGRAM};

/// Smallest block payload a session may use.
pub const MIN_BLOCK_SIZE: usize = 64;

/// Parameters both ends of a session agree on during session setup.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Identifies the session in every datagram header.
    pub session_id: u64,
    /// Transit cipher suite.
    pub suite: CipherSuite,
    /// File bytes per DATA packet. Default 1413: a DATA packet is then exactly 1472 bytes, the
    /// largest UDP payload that fits a 1500-byte Ethernet MTU over IPv4 without fragmentation.
    pub block_size: usize,
    /// Most blocks the receiver tracks beyond its cumulative acknowledgement (the flow-control
    /// window cap). Default 1,048,576 blocks (about 1.4 GiB at the default block size): enough
    /// for 10 Gbit/s at 1 s RTT. The receiver's state is O(gaps), never O(window).
    pub max_window: u64,
    /// The least time the receiver waits after noticing a missing block before requesting it,
    /// to tolerate reordering. Default 2 ms; the receiver also waits at least RTT/8.
    pub reorder_delay: Duration,
    /// RTT assumed until the first measurement: the control layer sets it from its handshake.
    /// Default 100 ms (long enough that early reordering is not mistaken for loss).
    pub initial_rtt: Duration,
    /// A session with no valid packet from the peer for this long fails. Default 30 s.
    pub idle_timeout: Duration,
    /// Rate limits in bits per second (the sender's `-l` / `-m`).
    pub limits: RateLimits,
    /// The receiver's own bound on the files one session may announce (not negotiated): a
    /// manifest that goes past it ends the session with [`SessionError::Limit`]. Default
    /// 1,000,000. What the receiver keeps per announced file is about 150 bytes plus its path,
    /// so this and [`SessionConfig::max_manifest_bytes`] bound a session's memory.
    pub max_files: u32,
    /// The receiver's bound on the sum of the announced paths' lengths, in bytes. Default
    /// 256 MiB.
    pub max_manifest_bytes: u64,
    /// A resuming session (CLIENT_HELLO resume level 1 or more, docs/PROTOCOL.md 8.6): the
    /// receiver answers every whole file (not a part) longer than [`RESUME_CHUNK`] with a
    /// FILE_HAVE naming the blocks it holds from an earlier attempt, and the sender sends none of
    /// such a file's blocks before that answer (or the file's result) arrives. Default `false`.
    pub resume: bool,
    /// In a resuming session whose sender seals each file itself into an envelope it builds
    /// anew every attempt (CLIENT_HELLO flag bit 7, `ferry cp --file-crypt encrypt`): a
    /// FILE_HAVE whose held ranges start at block 0 carries the held head of the file
    /// ([`BlockSink::held_head`]), which the sender adopts ([`BlockSource::adopt_head`]) so that
    /// what it sends matches what is held. Default `false`.
    pub resume_head: bool,
}

/// Files longer than this are resumable; the journal of a partial file records the CV of each
/// aligned chunk of this many bytes (docs/PROTOCOL.md 8.6).
pub const RESUME_CHUNK: u64 = tree_hash::CHUNK;
pub use tree_hash::chunk_cv;

/// The chunks a sparse [`FileSum`](crate::control::FileSum) of a file of `size` bytes names:
/// every whole [`RESUME_CHUNK`] if it has at most eight, else the first, the last and six spread
/// evenly between (`i * (n - 1) / 7`); none for a file with no whole chunk.
pub fn sparse_chunks(size: u64) -> Vec<u64> {
    let n = size / RESUME_CHUNK;
    let most = crate::control::MAX_SUM_CHUNKS as u64;
    if n <= most {
        return (0..n).collect();
    }
    (0..most).map(|i| i * (n - 1) / (most - 1)).collect()
}

/// The content checksum of a file of `size` bytes at resume `level` (`None` below 2), reading
/// it with `read(offset, buf)`: level 2 the CVs of [`sparse_chunks`] (a few MiB read), level 3
/// (or a file with no whole chunk) BLAKE3 of all of it.
pub fn file_sum(
    level: u8,
    size: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<Option<crate::control::FileSum>> {
    use crate::control::FileSum;
    if level < 2 {
        return Ok(None);
    }
    let mut buf = vec![0u8; RESUME_CHUNK as usize];
    let sparse = sparse_chunks(size);
    if level == 2 && !sparse.is_empty() {
        let mut chunks = Vec::with_capacity(sparse.len());
        for k in sparse {
            read(k * RESUME_CHUNK, &mut buf)?;
            chunks.push((k, chunk_cv(k * RESUME_CHUNK, &buf)));
        }
        return Ok(Some(FileSum::Sparse(chunks)));
    }
    let mut h = blake3::Hasher::new();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(RESUME_CHUNK) as usize;
        read(at, &mut buf[..n])?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(Some(FileSum::Full(*h.finalize().as_bytes())))
}

/// Whether a manifest entry gets a FILE_HAVE in a resuming session.
pub(crate) fn resumable(entry_size: u64, part: bool) -> bool {
    !part && entry_size > RESUME_CHUNK
}

impl SessionConfig {
    /// Defaults for the given session id and suite, sending at up to `limits`.
    pub fn new(session_id: u64, suite: CipherSuite, limits: RateLimits) -> Self {
        Self {
            session_id,
            suite,
            block_size: MAX_STANDARD_BLOCK,
            max_window: 1 << 20,
            reorder_delay: Duration::from_millis(2),
            initial_rtt: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(30),
            limits,
            max_files: 1_000_000,
            max_manifest_bytes: 256 << 20,
            resume: false,
            resume_head: false,
        }
    }

    /// Checks the parameters a peer proposed.
    pub fn validate(&self) -> Result<(), SessionError> {
        if self.block_size < MIN_BLOCK_SIZE || self.block_size + DATA_OVERHEAD > MAX_DATAGRAM {
            return Err(SessionError::Config("block size out of range"));
        }
        if self.max_window == 0 {
            return Err(SessionError::Config("window must be positive"));
        }
        if self.limits.target == 0 {
            return Err(SessionError::Config("target rate must be positive"));
        }
        Ok(())
    }
}

/// File bytes the sender hashes per BLAKE3 call. Hashing block by block would keep BLAKE3
/// on its one-chunk path (measured: a third of the whole session's time); 64 KiB batches let it
/// compress many chunks in parallel (SIMD).
pub(crate) const HASH_BATCH: usize = 64 * 1024;

/// The default block size: a DATA packet fills a 1500-byte MTU (IPv4, UDP).
pub const MAX_STANDARD_BLOCK: usize = 1472 - DATA_OVERHEAD;

/// The block size whose full DATA packets are `datagram` bytes long (within the protocol's
/// range: at most [`MAX_DATAGRAM`], at least [`MIN_BLOCK_SIZE`] of payload).
pub fn block_size_for_datagram(datagram: usize) -> usize {
    datagram.min(MAX_DATAGRAM).saturating_sub(DATA_OVERHEAD).max(MIN_BLOCK_SIZE)
}

/// Where a [`Sender`] reads file bytes.
pub trait BlockSource {
    /// Fills `buf` with the bytes of file `file` at `offset` (exactly `buf.len()` bytes).
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Hands `f` the `len` bytes of file `file` at `offset`, in order, in one or more slices:
    /// a source holding them in memory passes its own buffers (no copy); the default reads
    /// them into `scratch` (at least `len` bytes) first.
    fn visit(
        &mut self,
        file: u32,
        offset: u64,
        len: usize,
        scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        let buf = &mut scratch[..len];
        self.read(file, offset, buf)?;
        f(buf);
        Ok(())
    }
    /// The file's name for reports, if the source knows it.
    fn name(&self, _file: u32) -> Option<String> {
        None
    }
    /// In a session with [`SessionConfig::resume_head`]: the receiver holds the first bytes of
    /// file `file` from an earlier attempt, `head`; the file's bytes from now on must agree
    /// with them (a source that builds its bytes, such as an envelope, takes over the header
    /// they hold). Called before any of the file's bytes are read. An error abandons the file.
    /// The default accepts any head (a source that reads a file as it is).
    fn adopt_head(&mut self, _file: u32, _head: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Why a [`BlockSink`] did not take a block.
#[derive(Debug)]
pub enum SinkError {
    /// The sink's buffers are full; the block is dropped and requested again later.
    Full,
    /// Storage failed.
    Io(io::Error),
}

/// The error of a [`BlockSink::open`] that keeps an existing file by the overwrite policy
/// ([`skip`]): the file is reported [`FileStatus::Skipped`](crate::control::FileStatus), not
/// failed.
#[derive(Debug)]
struct Skip(String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// An error for [`BlockSink::open`] saying the file is skipped, with `reason`.
pub fn skip(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, Skip(reason))
}

/// Whether `e` came from [`skip`].
pub fn is_skip(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Skip>())
}

/// Where a [`Receiver`] writes file bytes.
pub trait BlockSink {
    /// A new file was announced; prepare to receive it. An error refuses this file only (it is
    /// reported as failed and its blocks are skipped, or as skipped if it came from [`skip`]);
    /// the session goes on. After a refusal the
    /// sink is not asked about the file again except by [`BlockSink::finish`] with `false`.
    fn open(&mut self, file: &FileEntry) -> io::Result<()>;
    /// Stores `data` at `offset` of file `file`. Blocks arrive in any order, each exactly once.
    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError>;
    /// How many more blocks the sink can take right now (flow control).
    fn free_blocks(&self) -> u64;
    /// The file is complete: `verified` says whether its digest matched. A verified file is
    /// moved to its final name; a failed one is discarded.
    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()>;
    /// The file's name for reports, if the sink knows it.
    fn name(&self, _file: u32) -> Option<String> {
        None
    }
    /// In a resuming session, right after a successful [`BlockSink::open`] of a resumable
    /// file: the aligned [`RESUME_CHUNK`]s the sink already holds from an earlier attempt
    /// (start offsets, increasing) and each one's CV ([`chunk_cv`] of its bytes, checked
    /// against the stored bytes now). Those bytes are not sent again; the file's digest is
    /// computed over them as over received ones. The default holds nothing.
    fn resumed(&mut self, _file: u32) -> Vec<(u64, [u8; 32])> {
        Vec::new()
    }
    /// The aligned chunk at `offset` of file `file` has all its bytes, whose CV is `cv` (for a
    /// journal of a resumable file; the file is not verified yet). The default ignores it.
    fn chunk_received(&mut self, _file: u32, _offset: u64, _cv: &[u8; 32]) {}
    /// Right before [`BlockSink::open`] of `file`: the sender's content checksum of it (FILE_SUM,
    /// resume level 2 or 3), to tell whether a file of its name and size at the destination is
    /// the same (for the overwrite policy). `None`: a checksum came that a sink in between
    /// cannot compare (it changes the bytes' form): no file is the same. The default ignores it
    /// (the same size is the same).
    fn expect_sum(&mut self, _file: u32, _sum: Option<crate::control::FileSum>) {}
    /// Right after [`BlockSink::resumed`] named a chunk at offset 0: the file's first
    /// `min(size, MAX_HAVE_HEAD)` bytes as held, if the sink can read them (for
    /// [`SessionConfig::resume_head`]). The default has none.
    fn held_head(&mut self, _file: u32) -> Vec<u8> {
        Vec::new()
    }
}

impl<T: BlockSource + ?Sized> BlockSource for Box<T> {
    fn read(&mut self, file: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read(file, offset, buf)
    }
    fn visit(
        &mut self,
        file: u32,
        offset: u64,
        len: usize,
        scratch: &mut [u8],
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        (**self).visit(file, offset, len, scratch, f)
    }
    fn name(&self, file: u32) -> Option<String> {
        (**self).name(file)
    }
    fn adopt_head(&mut self, file: u32, head: &[u8]) -> io::Result<()> {
        (**self).adopt_head(file, head)
    }
}

impl<T: BlockSink + ?Sized> BlockSink for Box<T> {
    fn open(&mut self, file: &FileEntry) -> io::Result<()> {
        (**self).open(file)
    }
    fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<(), SinkError> {
        (**self).write(file, offset, data)
    }
    fn free_blocks(&self) -> u64 {
        (**self).free_blocks()
    }
    fn finish(&mut self, file: u32, verified: bool) -> io::Result<()> {
        (**self).finish(file, verified)
    }
    fn name(&self, file: u32) -> Option<String> {
        (**self).name(file)
    }
    fn resumed(&mut self, file: u32) -> Vec<(u64, [u8; 32])> {
        (**self).resumed(file)
    }
    fn chunk_received(&mut self, file: u32, offset: u64, cv: &[u8; 32]) {
        (**self).chunk_received(file, offset, cv)
    }
    fn held_head(&mut self, file: u32) -> Vec<u8> {
        (**self).held_head(file)
    }
    fn expect_sum(&mut self, file: u32, sum: Option<crate::control::FileSum>) {
        (**self).expect_sum(file, sum)
    }
}

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file has its outcome: it arrived and its digest matched, or it failed (receiver); or
    /// the receiver said so (sender).
    FileDone {
        /// File id.
        file: u32,
        /// Outcome.
        status: FileStatus,
        /// Why it failed (empty when verified).
        reason: String,
    },
    /// Every file of the closed manifest has an outcome; the session is over.
    Complete,
    /// The session failed and is over.
    Failed(SessionError),
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Session parameters are unusable.
    #[error("invalid session parameters: {0}")]
    Config(&'static str),
    /// The peer sent a control message that breaks the protocol.
    #[error("protocol violation by the peer: {0}")]
    Protocol(&'static str),
    /// Reading a source file failed.
    #[error("cannot read file {file}: {message}")]
    Source {
        /// File id.
        file: u32,
        /// The I/O error.
        message: String,
    },
    /// Storing a file failed.
    #[error("cannot store file {file}: {message}")]
    Storage {
        /// File id.
        file: u32,
        /// The I/O error.
        message: String,
    },
    /// The peer aborted the session.
    #[error("peer aborted (code {code}): {reason}")]
    PeerAborted {
        /// Abort code.
        code: u16,
        /// Reason given by the peer.
        reason: String,
    },
    /// Nothing valid arrived from the peer for the idle timeout.
    #[error("no valid packet from the peer for {0:?}")]
    IdleTimeout(Duration),
    /// The packet-number space ran out.
    #[error("packet number space exhausted")]
    PacketNumbersExhausted,
    /// The peer went past a limit of this end (files or manifest bytes per session).
    #[error("session limit exceeded: {0}")]
    Limit(String),
}

/// Abort codes carried in [`crate::control::ControlMessage::Abort`].
pub mod abort_code {
    /// The sender could not read a file. (Since protocol version 2 a file that cannot be read
    /// fails alone, with FILE_ABANDON; the code stays reserved.)
    pub const SOURCE: u16 = 1;
    /// The receiver could not store a file. (Since version 2 a file that cannot be stored fails
    /// alone, with its FILE_RESULT; the code stays reserved.)
    pub const STORAGE: u16 = 2;
    /// The peer broke the protocol.
    pub const PROTOCOL: u16 = 3;
    /// The user cancelled.
    pub const CANCELLED: u16 = 4;
    /// The peer went past a limit of this end (files or manifest bytes per session).
    pub const LIMIT: u16 = 5;
    /// A newer session of the same user took over a file this one was receiving (docs/
    /// PROTOCOL.md 8.6): not worth retrying, the newer session carries on.
    pub const SUPERSEDED: u16 = 6;
}
