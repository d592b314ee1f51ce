//! Encryption at rest: Ferry's documented envelope format (`docs/FORMAT.md`).
//!
//! An envelope is a fixed 1024-byte header followed by AES-256-GCM segments of 64 KiB
//! plaintext. The header holds the immutable context (format, file id, plaintext length), a key
//! commitment to the per-file random data key (DEK), and up to four key slots that wrap the DEK
//! under a passphrase (Argon2id) or a keystore secret (owner, category, version).
//!
//! Properties:
//! - **Key commitment**: a slot's unwrapped DEK must reproduce the header's commitment before any
//!   segment is touched; a wrong key is reported as such, never as garbage plaintext.
//! - **Position and finality** of every segment are in its GCM associated data, so truncation,
//!   reordering, duplication and splicing between files are detected.
//! - **Random access**: segment `i` lives at `1024 + i × 65564`; any segment opens on its own.
//! - **No nonce reuse**: each sealing draws a fresh random 96-bit IV and the AES key changes every
//!   2^20 segments, so re-encrypting a segment during resume is safe.
//! - **Rewrap** rewrites only key slots, one 192-byte slot per `fsync`, new slot before old.
//!
//! APIs: [`EnvelopeBuilder`] + [`SegmentCipher::seal`] (segments in any order, for the receive
//! path) or [`StreamEncryptor`]; [`StreamDecryptor`] (sequential); [`EnvelopeReader`] (random
//! access); [`rewrap_passphrase`] / [`rewrap_keystore_to_active`] (slots only).

mod error;
mod format;
mod keys;
mod rewrap;
mod segment;

pub use error::{AtRestError, Result};
pub use format::{
    CONTEXT_LEN, ENC_SEGMENT_SIZE, FileKey, HEADER_LEN, Header, MAGIC, MAX_PLAINTEXT_LEN,
    MAX_USED_SLOTS, NewSlot, PassphraseKey, SEGMENT_OVERHEAD, SEGMENT_SIZE, SEGMENTS_PER_KEY,
    SLOT_COUNT, SLOT_LEN, SLOTS_OFFSET, Slot, SlotKind, SlotRandom, SlotWrite, VERSION,
    envelope_len, locate, segment_count, segment_offset, segment_plaintext_len,
};
pub use keys::{
    Argon2Params, Key32, KeyResolver, KeyState, Operation, ResolveError, ResolvedKey, SecretBytes,
};
pub use rewrap::{apply_plan, read_header, rewrap_keystore_to_active, rewrap_passphrase};
pub use segment::{
    EnvelopeBuilder, EnvelopeReader, SegmentCipher, StreamDecryptor, StreamEncryptor,
};
