//! Drivers that connect the sans-IO sessions to real files and a real UDP socket.
//!
//! - [`docroot`]: the one way a path from a peer reaches the file system: a directory
//!   descriptor beneath which the kernel resolves every path (`openat2`, no `..`, no symbolic
//!   links).
//! - [`source`]: the sender's [`BlockSource`](crate::session::BlockSource): files listed
//!   beneath a docroot, opened lazily, read with `pread` into reused read-ahead buffers.
//! - [`files`]: the receiver's [`BlockSink`](crate::session::BlockSink): unique partial files
//!   beneath a docroot, created lazily, renamed into place once verified; in a resuming session
//!   a large file's partial keeps a `journal` of its chunks, so the next attempt resumes it.
//! - [`storage`]: the seam both meet: a [`Storage`](storage::Storage) makes the sink of an
//!   upload and the source of a download ([`storage::PlainFiles`]: the two above).
//! - [`sealed`]: server-side encryption at rest: a storage that seals each 64 KiB segment of an
//!   upload as it completes and opens envelopes for downloads.
//! - [`envelope`]: client-side envelopes (`ferry cp --file-crypt`): a storage whose source seals
//!   each file as it is sent and whose sink opens envelopes as they arrive.
//! - [`driver`]: the loop that runs one session on one connected UDP socket in its own thread.

pub mod assembly;
pub mod docroot;
pub mod driver;
pub mod envelope;
pub mod files;
pub mod filter;
mod journal;
pub use journal::{ChunkCheck, ClaimTicket, Claims, PlainChunks, SUPERSEDE_WAIT};
pub mod sealed;
pub mod source;
pub mod storage;

/// Puts `entry` into a small cache of at most `cap` entries: at the end while there is room,
/// else in place of the least recently used one (by `used`). Returns its position.
pub(crate) fn cache_put<T>(
    cache: &mut Vec<T>,
    cap: usize,
    used: impl Fn(&T) -> u64,
    entry: T,
) -> usize {
    if cache.len() < cap.max(1) {
        cache.push(entry);
        return cache.len() - 1;
    }
    let lru = (0..cache.len()).min_by_key(|&i| used(&cache[i])).expect("non-empty");
    cache[lru] = entry;
    lru
}
