//! Typed errors of the at-rest envelope library.

use std::io;

use super::keys::{KeyState, ResolveError};

/// Everything that can go wrong while creating, opening, reading or rewrapping an envelope.
///
/// Variants are deliberately fine-grained so that the CLI can say *what* is wrong with a file
/// (wrong passphrase, truncated, a segment removed, ...) instead of a generic "decryption failed".
/// Failures that need a key to be detected are only reported after the key commitment verified.
#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    /// Reading or writing the underlying file or stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The data does not start with the envelope magic bytes: it is not a Ferry envelope.
    #[error("not a Ferry envelope (the file does not start with the FERRYENV magic bytes)")]
    NotAnEnvelope,
    /// The envelope was written by a newer format version than this build understands.
    #[error("unsupported envelope format version {version} (this build reads version 1)")]
    UnsupportedVersion {
        /// The version byte found in the header.
        version: u8,
    },
    /// The header names a cipher suite this build does not implement.
    #[error("unsupported cipher suite {suite} (this build implements suite 1)")]
    UnsupportedSuite {
        /// The suite byte found in the header.
        suite: u8,
    },
    /// The header is shorter than the fixed header length.
    #[error("the file is too short to hold an envelope header ({actual} of {expected} bytes)")]
    HeaderTruncated {
        /// Bytes the header needs.
        expected: u64,
        /// Bytes available.
        actual: u64,
    },
    /// A structural field of the header has a value the format does not allow.
    #[error("malformed envelope header: {reason}")]
    MalformedHeader {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// The header check value does not match: the fixed header fields were altered or damaged.
    #[error("the envelope header is corrupted (header check value mismatch)")]
    HeaderCorrupted,
    /// A key slot's check value does not match: the slot was altered or damaged.
    #[error("key slot {slot} is corrupted (slot check value mismatch)")]
    SlotCorrupted {
        /// Index of the slot (0-based).
        slot: usize,
    },
    /// A passphrase slot asks for Argon2id parameters outside the accepted bounds (refused
    /// before any key derivation runs, so a crafted file cannot exhaust memory or CPU).
    #[error(
        "key slot {slot} asks for Argon2id parameters outside the accepted bounds \
         ({params}; accepted m 19456..=1048576 KiB, t 2..=10, p 1..=16)"
    )]
    KdfParamsOutOfBounds {
        /// Index of the slot (0-based).
        slot: usize,
        /// What the slot asks for.
        params: super::keys::Argon2Params,
    },
    /// Argon2id parameters given to the encryptor are outside the accepted bounds.
    #[error("Argon2id parameters out of bounds: {reason}")]
    InvalidKdfParams {
        /// Which bound was violated.
        reason: String,
    },
    /// The envelope has no passphrase slot, so a passphrase cannot open it.
    #[error("the envelope has no passphrase key slot")]
    NoPassphraseSlot,
    /// The envelope has no keystore slot, so a keystore secret cannot open it.
    #[error("the envelope has no keystore key slot")]
    NoKeystoreSlot,
    /// No passphrase slot opened with the given passphrase.
    #[error("wrong passphrase (no passphrase key slot opens with it)")]
    WrongPassphrase,
    /// The keystore secret resolved for a slot does not open it.
    #[error("the keystore secret {owner}/{category} v{version} does not open this file")]
    WrongKeystoreKey {
        /// Owner named by the slot.
        owner: String,
        /// Category named by the slot.
        category: String,
        /// Version named by the slot.
        version: u32,
    },
    /// The keystore secret exists but its state forbids the operation (suspended, destroyed...).
    #[error(
        "keystore secret {owner}/{category} v{version} is {state}, so it may not be used to {operation}"
    )]
    KeyUnavailable {
        /// Owner of the secret.
        owner: String,
        /// Category of the secret.
        category: String,
        /// Version of the secret.
        version: u32,
        /// Its current state.
        state: KeyState,
        /// "decrypt" or "encrypt".
        operation: &'static str,
    },
    /// The keystore could not resolve a secret.
    #[error("keystore: {0}")]
    Keystore(#[from] ResolveError),
    /// A key slot opened but the data key does not match the header's key commitment: the
    /// header's fixed fields were altered together with their check value.
    #[error("the data key does not match the header's key commitment (the header was altered)")]
    CommitmentMismatch,
    /// The file ends before the last byte the header announces.
    #[error("the envelope is truncated: {actual} of {expected} bytes present")]
    Truncated {
        /// Length the header implies.
        expected: u64,
        /// Length found.
        actual: u64,
    },
    /// Whole segments are missing from the middle of the file (its final segment is intact).
    #[error("{count} segment(s) were removed from the envelope (the final segment is intact)")]
    SegmentsRemoved {
        /// Number of missing segments.
        count: u64,
    },
    /// Whole extra segments were inserted into the file.
    #[error("the envelope holds {count} segment(s) more than its header announces")]
    SegmentsInserted {
        /// Number of extra segments.
        count: u64,
    },
    /// Bytes follow the final segment.
    #[error("{extra} unexpected byte(s) follow the final segment")]
    TrailingData {
        /// Number of extra bytes.
        extra: u64,
    },
    /// A segment failed authentication: its bytes were modified or damaged.
    #[error("segment {index} failed authentication (its bytes were modified or damaged)")]
    SegmentCorrupted {
        /// Index of the segment.
        index: u64,
    },
    /// A valid segment sits at the wrong position (segments were swapped or moved).
    #[error("segment {found} was found at position {index} (segments were reordered)")]
    SegmentOutOfPlace {
        /// Position where it was found.
        index: u64,
        /// The segment's real index.
        found: u64,
    },
    /// A valid segment appears twice (one copy overwrote another segment).
    #[error("segment {of} appears again at position {index} (a segment was duplicated)")]
    SegmentDuplicated {
        /// Position of the copy.
        index: u64,
        /// The duplicated segment's index.
        of: u64,
    },
    /// The header is self-consistent but no segment authenticates under it.
    #[error("the header does not belong to this payload (no segment authenticates under it)")]
    HeaderMismatch,
    /// The caller passed a segment of the wrong length or index to the encryptor.
    #[error("invalid segment {index}: {reason}")]
    InvalidSegment {
        /// Index of the segment.
        index: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The stream encryptor saw a different number of plaintext bytes than declared.
    #[error("plaintext length mismatch: {declared} bytes declared, {actual} seen")]
    LengthMismatch {
        /// Declared length.
        declared: u64,
        /// Bytes actually seen.
        actual: u64,
    },
    /// The plaintext is longer than the format allows.
    #[error("plaintext of {len} bytes exceeds the format limit")]
    TooLarge {
        /// Requested length.
        len: u64,
    },
    /// A keystore owner or category name does not fit the slot (or is not valid).
    #[error("invalid keystore name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Every key slot position is in use, so no slot can be added.
    #[error("all key slots are in use (at most {max} slots, one kept free for crash-safe rewrap)")]
    NoFreeSlot {
        /// Maximum number of used slots.
        max: usize,
    },
    /// An envelope needs at least one key slot.
    #[error("an envelope needs at least one key slot")]
    NoSlots,
    /// A read asked for bytes past the end of the plaintext.
    #[error("offset {offset} is past the end of the plaintext ({len} bytes)")]
    OutOfRange {
        /// Requested plaintext offset.
        offset: u64,
        /// Plaintext length.
        len: u64,
    },
}

impl AtRestError {
    /// Convert an `io::Error` produced by this module's `Read` adapters back into the typed
    /// error it carries (or wrap it as [`AtRestError::Io`]).
    pub fn from_io(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<AtRestError>()) {
            match e.into_inner().map(|b| b.downcast::<AtRestError>()) {
                Some(Ok(b)) => *b,
                Some(Err(other)) => AtRestError::Io(io::Error::other(other)),
                None => AtRestError::Io(io::Error::other("unknown")),
            }
        } else {
            AtRestError::Io(e)
        }
    }
}

/// Result alias for the at-rest module.
pub type Result<T, E = AtRestError> = std::result::Result<T, E>;
