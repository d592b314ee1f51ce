//! The envelope header: fixed layout, key slots, key commitment (see `docs/FORMAT.md`).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{AtRestError, Result};
use crate::crypto::Aead;

use super::keys::{
    Argon2Params, Key32, KeyResolver, Operation, ResolveError, ResolvedKey, argon2id, hkdf32,
};

/// Magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"FERRYENV";
/// Format version this module reads and writes.
pub const VERSION: u8 = 1;
/// Suite 1: AES-256-GCM segments with random 96-bit IVs, HKDF-SHA-256, Argon2id slots.
pub const SUITE: u8 = 1;
/// Plaintext bytes per segment (the final segment carries 0..=SEGMENT_SIZE bytes).
pub const SEGMENT_SIZE: usize = 65_536;
/// Per-segment overhead: 12-byte IV + 16-byte GCM tag.
pub const SEGMENT_OVERHEAD: usize = 28;
/// Bytes of a full encrypted segment.
pub const ENC_SEGMENT_SIZE: usize = SEGMENT_SIZE + SEGMENT_OVERHEAD;
/// Fixed header length; segment 0 starts here.
pub const HEADER_LEN: usize = 1024;
/// Number of key slot positions.
pub const SLOT_COUNT: usize = 4;
/// Bytes per key slot.
pub const SLOT_LEN: usize = 192;
/// Offset of slot 0.
pub const SLOTS_OFFSET: usize = 128;
/// Length of the immutable context (bytes 0..64 of the header).
pub const CONTEXT_LEN: usize = 64;
/// Segments per segment key: a new AES key every 2^20 segments (64 GiB).
pub const SEGMENTS_PER_KEY: u64 = 1 << 20;
/// Largest plaintext the format accepts (2^40 segments).
pub const MAX_PLAINTEXT_LEN: u64 = (1u64 << 40) * SEGMENT_SIZE as u64;
/// At most this many slots may be used, so one position stays free for crash-safe rewrap.
pub const MAX_USED_SLOTS: usize = SLOT_COUNT - 1;

const SLOT_TYPE_EMPTY: u8 = 0;
const SLOT_TYPE_PASSPHRASE: u8 = 1;
const SLOT_TYPE_KEYSTORE: u8 = 2;
/// Longest keystore owner name in a slot (the keystore allows user names of 1..=64 bytes).
const OWNER_MAX: usize = 64;
/// Longest keystore category name in a slot.
const CATEGORY_MAX: usize = 32;
/// The packed names area (`slot[96..176]`) holds two length bytes and both names.
const NAMES_LEN: usize = 80;

/// Number of segments of a plaintext of `len` bytes (at least 1: an empty file has one empty
/// final segment).
pub fn segment_count(len: u64) -> u64 {
    len.div_ceil(SEGMENT_SIZE as u64).max(1)
}

/// Plaintext length of segment `index` in a plaintext of `len` bytes.
pub fn segment_plaintext_len(len: u64, index: u64) -> usize {
    let n = segment_count(len);
    if index + 1 < n { SEGMENT_SIZE } else { (len - (n - 1) * SEGMENT_SIZE as u64) as usize }
}

/// Offset in the envelope of encrypted segment `index`.
pub fn segment_offset(index: u64) -> u64 {
    HEADER_LEN as u64 + index * ENC_SEGMENT_SIZE as u64
}

/// Total envelope length for a plaintext of `len` bytes.
pub fn envelope_len(len: u64) -> u64 {
    HEADER_LEN as u64 + segment_count(len) * SEGMENT_OVERHEAD as u64 + len
}

/// Envelope offset of the segment holding plaintext byte `offset`, and the byte's position in it.
pub fn locate(offset: u64) -> (u64, usize) {
    (offset / SEGMENT_SIZE as u64, (offset % SEGMENT_SIZE as u64) as usize)
}

/// What a key slot holds, as shown by `inspect` (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    /// A data key wrapped under an Argon2id-derived key.
    Passphrase {
        /// Argon2id costs.
        params: Argon2Params,
    },
    /// A data key wrapped under a keystore secret.
    Keystore {
        /// Owner (user) of the secret.
        owner: String,
        /// Category (for example `ssear`).
        category: String,
        /// Secret version.
        version: u32,
    },
}

/// A used key slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// Position (0..SLOT_COUNT).
    pub index: usize,
    /// Generation (incremented by each rewrap; informative, bound into the slot's AAD).
    pub generation: u32,
    /// Type and parameters.
    pub kind: SlotKind,
    raw: [u8; SLOT_LEN],
}

/// A parsed envelope header. Parsing checks the structure and the check values; it needs no key.
#[derive(Debug, Clone)]
pub struct Header {
    bytes: [u8; HEADER_LEN],
    file_id: [u8; 16],
    plaintext_len: u64,
    slots: Vec<Slot>,
    damaged: Vec<usize>,
}

fn header_check(bytes: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"ferry/v1 header-check");
    h.update(&bytes[..96]);
    h.finalize()[..16].try_into().expect("16 bytes")
}

fn slot_check(slot: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"ferry/v1 slot-check");
    h.update(&slot[..176]);
    h.finalize()[..16].try_into().expect("16 bytes")
}

fn slot_aad(context: &[u8], slot: &[u8; SLOT_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(13 + CONTEXT_LEN + 20 + 80);
    aad.extend_from_slice(b"ferry/v1 slot");
    aad.extend_from_slice(context);
    aad.extend_from_slice(&slot[..20]);
    aad.extend_from_slice(&slot[96..176]);
    aad
}

fn slot_bytes(header: &[u8; HEADER_LEN], index: usize) -> &[u8; SLOT_LEN] {
    let off = SLOTS_OFFSET + index * SLOT_LEN;
    header[off..off + SLOT_LEN].try_into().expect("slot length")
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Parse the packed names area `owner_len ‖ owner ‖ category_len ‖ category ‖ zeros`.
fn read_names(area: &[u8]) -> Option<(String, String)> {
    let ol = area[0] as usize;
    if ol == 0 || ol > OWNER_MAX || 2 + ol > area.len() {
        return None;
    }
    let cl = area[1 + ol] as usize;
    if cl == 0 || cl > CATEGORY_MAX || 2 + ol + cl > area.len() {
        return None;
    }
    if area[2 + ol + cl..].iter().any(|&b| b != 0) {
        return None;
    }
    let owner = String::from_utf8(area[1..1 + ol].to_vec()).ok()?;
    let category = String::from_utf8(area[2 + ol..2 + ol + cl].to_vec()).ok()?;
    if check_name(&owner, OWNER_MAX).is_err() || check_name(&category, CATEGORY_MAX).is_err() {
        return None;
    }
    Some((owner, category))
}

fn check_name(name: &str, max: usize) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > max {
        "too long for a key slot"
    } else if name.bytes().any(|b| b.is_ascii_control()) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(AtRestError::InvalidName { name: name.to_owned(), reason })
}

impl Slot {
    fn parse(index: usize, raw: &[u8; SLOT_LEN]) -> Result<Option<Slot>> {
        if raw[0] == SLOT_TYPE_EMPTY {
            if raw.iter().any(|&b| b != 0) {
                return Err(AtRestError::SlotCorrupted { slot: index });
            }
            return Ok(None);
        }
        if slot_check(raw)[..] != raw[176..] {
            return Err(AtRestError::SlotCorrupted { slot: index });
        }
        if raw[1] != 0 || raw[2] != 0 || raw[3] != 0 {
            return Err(AtRestError::MalformedHeader {
                reason: "key slot flags/reserved bytes are not zero",
            });
        }
        let generation = be32(&raw[4..]);
        let kind = match raw[0] {
            SLOT_TYPE_PASSPHRASE => {
                if raw[96..176].iter().any(|&b| b != 0) {
                    return Err(AtRestError::MalformedHeader {
                        reason: "passphrase slot has a non-zero name area",
                    });
                }
                let params = Argon2Params {
                    m_cost_kib: be32(&raw[8..]),
                    t_cost: be32(&raw[12..]),
                    p_cost: be32(&raw[16..]),
                };
                if !params.in_bounds() {
                    return Err(AtRestError::KdfParamsOutOfBounds { slot: index, params });
                }
                SlotKind::Passphrase { params }
            }
            SLOT_TYPE_KEYSTORE => {
                if be32(&raw[12..]) != 0 || be32(&raw[16..]) != 0 {
                    return Err(AtRestError::MalformedHeader {
                        reason: "keystore slot reserved parameters are not zero",
                    });
                }
                let (owner, category) =
                    read_names(&raw[96..176]).ok_or(AtRestError::MalformedHeader {
                        reason: "keystore slot owner/category names are invalid",
                    })?;
                SlotKind::Keystore { owner, category, version: be32(&raw[8..]) }
            }
            _ => {
                return Err(AtRestError::MalformedHeader { reason: "unknown key slot type" });
            }
        };
        Ok(Some(Slot { index, generation, kind, raw: *raw }))
    }

    /// The raw 192 bytes of the slot (public data only: salt, nonce, wrapped key, tag).
    pub fn raw(&self) -> &[u8; SLOT_LEN] {
        &self.raw
    }

    fn unwrap_with(&self, context: &[u8], wrap_key: &Key32) -> Option<Key32> {
        let cipher = Aead::new(wrap_key.expose()).expect("32-byte key");
        let nonce: [u8; 12] = self.raw[36..48].try_into().expect("12 bytes");
        let tag: [u8; 16] = self.raw[80..96].try_into().expect("16 bytes");
        let mut dek = Key32::zeroed();
        dek.expose_mut().copy_from_slice(&self.raw[48..80]);
        let aad = slot_aad(context, &self.raw);
        cipher.open(&nonce, &aad, dek.expose_mut(), &tag).ok().map(|()| dek)
    }
}

/// How a new key slot wraps the data key.
pub enum NewSlot<'a> {
    /// Wrap under Argon2id(passphrase).
    Passphrase {
        /// The passphrase bytes (UTF-8 as typed).
        passphrase: &'a [u8],
        /// Argon2id costs (bounds-checked).
        params: Argon2Params,
    },
    /// Wrap under a passphrase whose Argon2id output was derived once
    /// ([`PassphraseKey`]): the slot stores that derivation's salt and costs, and its wrapping
    /// key still differs per envelope (by the file id, FORMAT.md §4.1). Many envelopes of one
    /// transfer are sealed this way at the cost of one derivation.
    PassphraseKey(&'a PassphraseKey),
    /// Wrap under the active version of a keystore secret.
    Keystore {
        /// Resolves the secret.
        resolver: &'a dyn KeyResolver,
        /// Owner of the secret.
        owner: &'a str,
        /// Category of the secret.
        category: &'a str,
    },
}

impl std::fmt::Debug for NewSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NewSlot::Passphrase { params, .. } => f
                .debug_struct("Passphrase")
                .field("passphrase", &"[redacted]")
                .field("params", params)
                .finish(),
            NewSlot::PassphraseKey(k) => f.debug_tuple("PassphraseKey").field(k).finish(),
            NewSlot::Keystore { owner, category, .. } => f
                .debug_struct("Keystore")
                .field("owner", owner)
                .field("category", category)
                .finish_non_exhaustive(),
        }
    }
}

/// A passphrase's Argon2id output for one salt and one set of costs (FORMAT.md §4.1's `k`):
/// derived once, it opens or wraps the passphrase slots of every envelope with that salt and
/// those costs. Zeroized when dropped.
pub struct PassphraseKey {
    salt: [u8; 16],
    params: Argon2Params,
    k: Key32,
}

impl std::fmt::Debug for PassphraseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassphraseKey")
            .field("params", &self.params)
            .field("k", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl PassphraseKey {
    /// Derives the key of `passphrase` under a fresh random salt (for new envelopes).
    pub fn derive(passphrase: &[u8], params: Argon2Params) -> Result<Self> {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt[..]);
        Self::derive_with_salt(passphrase, salt, params)
    }

    /// Derives the key of `passphrase` under `salt` (to open slots that have that salt).
    pub fn derive_with_salt(
        passphrase: &[u8],
        salt: [u8; 16],
        params: Argon2Params,
    ) -> Result<Self> {
        params.validate()?;
        let k = argon2id(passphrase, &salt, params)?;
        Ok(Self { salt, params, k })
    }

    /// The salt.
    pub fn salt(&self) -> &[u8; 16] {
        &self.salt
    }

    /// The Argon2id costs.
    pub fn params(&self) -> Argon2Params {
        self.params
    }

    fn wrap_key(&self, file_id: &[u8; 16]) -> Key32 {
        hkdf32(self.k.expose(), file_id, &[b"ferry/v1 passphrase-wrap"])
    }
}

/// Randomness for a new slot (fixed only by the test-vector generator).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct SlotRandom {
    pub salt: [u8; 16],
    pub nonce: [u8; 12],
}

impl SlotRandom {
    fn fresh() -> Self {
        let mut r = SlotRandom { salt: [0; 16], nonce: [0; 12] };
        rand::fill(&mut r.salt[..]);
        rand::fill(&mut r.nonce[..]);
        r
    }
}

/// Resolve a keystore secret, turning a refusal by state into [`AtRestError::KeyUnavailable`].
fn resolve(
    resolver: &dyn KeyResolver,
    owner: &str,
    category: &str,
    version: u32,
    operation: &'static str,
) -> Result<ResolvedKey> {
    match resolver.resolve(owner, category, version) {
        Ok(k) => Ok(k),
        Err(ResolveError::Unavailable { state }) => Err(AtRestError::KeyUnavailable {
            owner: owner.to_string(),
            category: category.to_string(),
            version,
            state,
            operation,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Build the 192 bytes of a new slot wrapping `dek`.
pub(crate) fn build_slot(
    context: &[u8],
    file_id: &[u8; 16],
    dek: &Key32,
    generation: u32,
    spec: &NewSlot<'_>,
    rnd: SlotRandom,
) -> Result<[u8; SLOT_LEN]> {
    let mut raw = [0u8; SLOT_LEN];
    raw[4..8].copy_from_slice(&generation.to_be_bytes());
    raw[20..36].copy_from_slice(&rnd.salt);
    raw[36..48].copy_from_slice(&rnd.nonce);
    let wrap_key = match spec {
        NewSlot::Passphrase { passphrase, params } => {
            params.validate()?;
            raw[0] = SLOT_TYPE_PASSPHRASE;
            raw[8..12].copy_from_slice(&params.m_cost_kib.to_be_bytes());
            raw[12..16].copy_from_slice(&params.t_cost.to_be_bytes());
            raw[16..20].copy_from_slice(&params.p_cost.to_be_bytes());
            let k = argon2id(passphrase, &rnd.salt, *params)?;
            hkdf32(k.expose(), file_id, &[b"ferry/v1 passphrase-wrap"])
        }
        NewSlot::PassphraseKey(key) => {
            raw[0] = SLOT_TYPE_PASSPHRASE;
            raw[8..12].copy_from_slice(&key.params.m_cost_kib.to_be_bytes());
            raw[12..16].copy_from_slice(&key.params.t_cost.to_be_bytes());
            raw[16..20].copy_from_slice(&key.params.p_cost.to_be_bytes());
            raw[20..36].copy_from_slice(&key.salt);
            key.wrap_key(file_id)
        }
        NewSlot::Keystore { resolver, owner, category } => {
            check_name(owner, OWNER_MAX)?;
            check_name(category, CATEGORY_MAX)?;
            if 2 + owner.len() + category.len() > NAMES_LEN {
                return Err(AtRestError::InvalidName {
                    name: format!("{owner}/{category}"),
                    reason: "owner and category together exceed 78 bytes",
                });
            }
            let version = resolver.active_version(owner, category)?;
            let key = resolve(*resolver, owner, category, version, "encrypt")?;
            if !key.state.permits(Operation::Protect) {
                return Err(AtRestError::KeyUnavailable {
                    owner: owner.to_string(),
                    category: category.to_string(),
                    version,
                    state: key.state,
                    operation: "encrypt",
                });
            }
            raw[0] = SLOT_TYPE_KEYSTORE;
            raw[8..12].copy_from_slice(&version.to_be_bytes());
            let (ol, cl) = (owner.len(), category.len());
            debug_assert!(2 + ol + cl <= NAMES_LEN);
            raw[96] = ol as u8;
            raw[97..97 + ol].copy_from_slice(owner.as_bytes());
            raw[97 + ol] = cl as u8;
            raw[98 + ol..98 + ol + cl].copy_from_slice(category.as_bytes());
            hkdf32(key.secret.expose(), &rnd.salt, &[b"ferry/v1 keystore-wrap", file_id])
        }
    };
    let cipher = Aead::new(wrap_key.expose()).expect("32-byte key");
    let aad = slot_aad(context, &raw);
    let mut wrapped = Key32::zeroed();
    wrapped.expose_mut().copy_from_slice(dek.expose());
    let tag = cipher.seal(&rnd.nonce, &aad, wrapped.expose_mut());
    raw[48..80].copy_from_slice(wrapped.expose());
    raw[80..96].copy_from_slice(&tag);
    let check = slot_check(&raw);
    raw[176..].copy_from_slice(&check);
    Ok(raw)
}

/// The key commitment: HKDF-SHA-256(ikm = DEK, salt = file id, info = "ferry/v1 commit" ‖ context).
pub(crate) fn commitment(dek: &Key32, file_id: &[u8; 16], context: &[u8]) -> Key32 {
    hkdf32(dek.expose(), file_id, &[b"ferry/v1 commit", context])
}

impl Header {
    /// Build the header of a new envelope: context, commitment and slots.
    pub(crate) fn build(
        plaintext_len: u64,
        file_id: [u8; 16],
        dek: &Key32,
        slots: &[(NewSlot<'_>, SlotRandom)],
    ) -> Result<Header> {
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(AtRestError::TooLarge { len: plaintext_len });
        }
        if slots.is_empty() {
            return Err(AtRestError::NoSlots);
        }
        if slots.len() > MAX_USED_SLOTS {
            return Err(AtRestError::NoFreeSlot { max: MAX_USED_SLOTS });
        }
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8] = VERSION;
        b[9] = SUITE;
        b[10..14].copy_from_slice(&(SEGMENT_SIZE as u32).to_be_bytes());
        b[14..16].copy_from_slice(&(HEADER_LEN as u16).to_be_bytes());
        b[16] = SLOT_COUNT as u8;
        b[18..20].copy_from_slice(&(SLOT_LEN as u16).to_be_bytes());
        b[20..36].copy_from_slice(&file_id);
        b[36..44].copy_from_slice(&plaintext_len.to_be_bytes());
        let commit = commitment(dek, &file_id, &b[..CONTEXT_LEN]);
        b[64..96].copy_from_slice(commit.expose());
        let check = header_check(&b);
        b[96..112].copy_from_slice(&check);
        for (i, (spec, rnd)) in slots.iter().enumerate() {
            let raw = build_slot(&b[..CONTEXT_LEN], &file_id, dek, 1, spec, *rnd)?;
            let off = SLOTS_OFFSET + i * SLOT_LEN;
            b[off..off + SLOT_LEN].copy_from_slice(&raw);
        }
        Header::parse(&b)
    }

    /// Parse and structurally check a header (the first [`HEADER_LEN`] bytes of an envelope).
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            // A short prefix of the magic is still "not an envelope" unless it is a prefix.
            if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) && !bytes.is_empty() {
                return Err(AtRestError::HeaderTruncated {
                    expected: HEADER_LEN as u64,
                    actual: bytes.len() as u64,
                });
            }
            return Err(AtRestError::NotAnEnvelope);
        }
        if bytes.len() < HEADER_LEN {
            return Err(AtRestError::HeaderTruncated {
                expected: HEADER_LEN as u64,
                actual: bytes.len() as u64,
            });
        }
        let b: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("length checked");
        if header_check(&b)[..] != b[96..112] {
            return Err(AtRestError::HeaderCorrupted);
        }
        if b[8] != VERSION {
            return Err(AtRestError::UnsupportedVersion { version: b[8] });
        }
        if b[9] != SUITE {
            return Err(AtRestError::UnsupportedSuite { suite: b[9] });
        }
        if be32(&b[10..]) != SEGMENT_SIZE as u32 {
            return Err(AtRestError::MalformedHeader { reason: "segment size is not 65536" });
        }
        if u16::from_be_bytes([b[14], b[15]]) != HEADER_LEN as u16 {
            return Err(AtRestError::MalformedHeader { reason: "header length is not 1024" });
        }
        if b[16] != SLOT_COUNT as u8 || u16::from_be_bytes([b[18], b[19]]) != SLOT_LEN as u16 {
            return Err(AtRestError::MalformedHeader {
                reason: "slot layout is not 4 slots of 192 bytes",
            });
        }
        if b[17] != 0 || b[44..64].iter().any(|&x| x != 0) {
            return Err(AtRestError::MalformedHeader {
                reason: "reserved context bytes are not zero",
            });
        }
        if b[112..128].iter().any(|&x| x != 0)
            || b[SLOTS_OFFSET + SLOT_COUNT * SLOT_LEN..].iter().any(|&x| x != 0)
        {
            return Err(AtRestError::MalformedHeader {
                reason: "reserved header bytes are not zero",
            });
        }
        let plaintext_len = be64(&b[36..]);
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(AtRestError::MalformedHeader {
                reason: "plaintext length exceeds the format limit",
            });
        }
        // A damaged slot (failed check, out-of-bounds parameters, bad fields) does not make the
        // header unreadable: a torn write during a rewrap must leave the other slot usable.
        // It is remembered and reported if no usable slot opens.
        let mut slots = Vec::new();
        let mut damaged = Vec::new();
        for i in 0..SLOT_COUNT {
            match Slot::parse(i, slot_bytes(&b, i)) {
                Ok(Some(s)) => slots.push(s),
                Ok(None) => {}
                Err(_) => damaged.push(i),
            }
        }
        if slots.is_empty() && damaged.is_empty() {
            return Err(AtRestError::NoSlots);
        }
        Ok(Header {
            file_id: b[20..36].try_into().expect("16 bytes"),
            plaintext_len,
            slots,
            damaged,
            bytes: b,
        })
    }

    /// Positions of slots that are neither empty nor valid (torn, altered, out of bounds).
    pub fn damaged_slots(&self) -> &[usize] {
        &self.damaged
    }

    /// Why slot `index` is unusable (re-derived from its bytes), if it is damaged.
    pub fn slot_damage(&self, index: usize) -> Option<AtRestError> {
        Slot::parse(index, slot_bytes(&self.bytes, index)).err()
    }

    fn first_damage(&self) -> Option<AtRestError> {
        self.damaged.first().and_then(|&i| self.slot_damage(i))
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8; HEADER_LEN] {
        &self.bytes
    }

    /// The immutable context (first 64 bytes): bound into the commitment, segment keys, slots.
    pub fn context(&self) -> &[u8] {
        &self.bytes[..CONTEXT_LEN]
    }

    /// The random per-file identifier.
    pub fn file_id(&self) -> &[u8; 16] {
        &self.file_id
    }

    /// The plaintext length the header declares.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Number of segments.
    pub fn segment_count(&self) -> u64 {
        segment_count(self.plaintext_len)
    }

    /// Exact length of the whole envelope.
    pub fn envelope_len(&self) -> u64 {
        envelope_len(self.plaintext_len)
    }

    /// The used key slots.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The key commitment bytes (public).
    pub fn commitment_bytes(&self) -> &[u8] {
        &self.bytes[64..96]
    }

    fn verify_commitment(&self, dek: Key32) -> Result<FileKey> {
        let c = commitment(&dek, &self.file_id, self.context());
        if bool::from(c.expose().ct_eq(&self.bytes[64..96])) {
            Ok(FileKey {
                dek,
                file_id: self.file_id,
                context: self.context().try_into().expect("64"),
                plaintext_len: self.plaintext_len,
            })
        } else {
            Err(AtRestError::CommitmentMismatch)
        }
    }

    /// Open with a passphrase: try each passphrase slot (Argon2id bounds were checked at parse
    /// time), then verify the key commitment before anything else is decrypted.
    pub fn unlock_with_passphrase(&self, passphrase: &[u8]) -> Result<FileKey> {
        let mut any = false;
        for slot in &self.slots {
            if let SlotKind::Passphrase { params } = slot.kind {
                any = true;
                let salt: [u8; 16] = slot.raw[20..36].try_into().expect("16 bytes");
                let k = argon2id(passphrase, &salt, params)?;
                let wrap_key = hkdf32(k.expose(), &self.file_id, &[b"ferry/v1 passphrase-wrap"]);
                if let Some(dek) = slot.unwrap_with(self.context(), &wrap_key) {
                    return self.verify_commitment(dek);
                }
            }
        }
        Err(if any {
            AtRestError::WrongPassphrase
        } else {
            self.first_damage().unwrap_or(AtRestError::NoPassphraseSlot)
        })
    }

    /// Open with a derived passphrase key: the passphrase slots with its salt and costs (no
    /// derivation runs), then the key commitment. [`AtRestError::WrongPassphrase`] if such a
    /// slot does not open, [`AtRestError::NoPassphraseSlot`] if there is none (the passphrase
    /// may still open another slot: [`passphrase_salts`](Self::passphrase_salts)).
    pub fn unlock_with_passphrase_key(&self, key: &PassphraseKey) -> Result<FileKey> {
        let mut any = false;
        for slot in &self.slots {
            if let SlotKind::Passphrase { params } = slot.kind
                && params == key.params
                && slot.raw[20..36] == key.salt
            {
                any = true;
                if let Some(dek) = slot.unwrap_with(self.context(), &key.wrap_key(&self.file_id)) {
                    return self.verify_commitment(dek);
                }
            }
        }
        Err(if any { AtRestError::WrongPassphrase } else { AtRestError::NoPassphraseSlot })
    }

    /// The salt and costs of each passphrase slot (public), to derive a [`PassphraseKey`] for.
    pub fn passphrase_salts(&self) -> Vec<([u8; 16], Argon2Params)> {
        self.slots
            .iter()
            .filter_map(|s| match s.kind {
                SlotKind::Passphrase { params } => {
                    Some((s.raw[20..36].try_into().expect("16 bytes"), params))
                }
                SlotKind::Keystore { .. } => None,
            })
            .collect()
    }

    /// Open with keystore secrets: resolve each keystore slot's secret, refuse versions whose
    /// state forbids decryption, unwrap, then verify the key commitment.
    pub fn unlock_with_keystore(&self, resolver: &dyn KeyResolver) -> Result<FileKey> {
        let mut first_err: Option<AtRestError> = None;
        for slot in &self.slots {
            if let SlotKind::Keystore { owner, category, version } = &slot.kind {
                let attempt = (|| {
                    let key = resolve(resolver, owner, category, *version, "decrypt")?;
                    if !key.state.permits(Operation::Process) {
                        return Err(AtRestError::KeyUnavailable {
                            owner: owner.clone(),
                            category: category.clone(),
                            version: *version,
                            state: key.state,
                            operation: "decrypt",
                        });
                    }
                    let wrap_key = hkdf32(
                        key.secret.expose(),
                        &slot.raw[20..36],
                        &[b"ferry/v1 keystore-wrap", &self.file_id],
                    );
                    slot.unwrap_with(self.context(), &wrap_key).ok_or_else(|| {
                        AtRestError::WrongKeystoreKey {
                            owner: owner.clone(),
                            category: category.clone(),
                            version: *version,
                        }
                    })
                })();
                match attempt {
                    Ok(dek) => return self.verify_commitment(dek),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        Err(first_err.or_else(|| self.first_damage()).unwrap_or(AtRestError::NoKeystoreSlot))
    }

    /// Plan the slot writes that replace the slots at `remove` with `add`, in crash-safe order:
    /// each new slot is written into a free position before an old one is erased, so every
    /// prefix of the plan leaves a header that opens with the old or the new key.
    pub fn plan_rewrap(
        &self,
        key: &FileKey,
        remove: &[usize],
        add: &[NewSlot<'_>],
    ) -> Result<Vec<SlotWrite>> {
        self.plan_rewrap_with(key, remove, add, &mut SlotRandom::fresh)
    }

    #[doc(hidden)]
    pub fn plan_rewrap_with(
        &self,
        key: &FileKey,
        remove: &[usize],
        add: &[NewSlot<'_>],
        rnd: &mut dyn FnMut() -> SlotRandom,
    ) -> Result<Vec<SlotWrite>> {
        let mut used = [false; SLOT_COUNT];
        for s in &self.slots {
            used[s.index] = true;
        }
        for &d in &self.damaged {
            used[d] = true;
        }
        if self.slots.len() + self.damaged.len()
            - remove.iter().filter(|&&i| i < SLOT_COUNT && used[i]).count()
            + add.len()
            > MAX_USED_SLOTS
        {
            return Err(AtRestError::NoFreeSlot { max: MAX_USED_SLOTS });
        }
        if self.slots.len().saturating_sub(remove.len()) + add.len() == 0 {
            // Never erase the last usable slot without a replacement.
            return Err(AtRestError::NoSlots);
        }
        let generation =
            self.slots.iter().map(|s| s.generation).max().unwrap_or(0).saturating_add(1);
        let mut plan = Vec::new();
        for step in 0..remove.len().max(add.len()) {
            if let Some(spec) = add.get(step) {
                let free = (0..SLOT_COUNT)
                    .find(|&i| !used[i])
                    .ok_or(AtRestError::NoFreeSlot { max: MAX_USED_SLOTS })?;
                let raw =
                    build_slot(self.context(), &self.file_id, &key.dek, generation, spec, rnd())?;
                used[free] = true;
                plan.push(SlotWrite { index: free, bytes: raw });
            }
            if let Some(&old) = remove.get(step) {
                if old >= SLOT_COUNT || !used[old] {
                    return Err(AtRestError::MalformedHeader {
                        reason: "rewrap names a key slot that is not in use",
                    });
                }
                used[old] = false;
                plan.push(SlotWrite { index: old, bytes: [0u8; SLOT_LEN] });
            }
        }
        Ok(plan)
    }

    /// Apply one planned slot write to this in-memory header (re-checking it).
    pub fn apply(&mut self, write: &SlotWrite) -> Result<()> {
        let off = SLOTS_OFFSET + write.index * SLOT_LEN;
        let mut b = self.bytes;
        b[off..off + SLOT_LEN].copy_from_slice(&write.bytes);
        *self = Header::parse(&b)?;
        Ok(())
    }
}

/// One slot write of a rewrap plan: `bytes` go to header offset `128 + 192 × index`.
#[derive(Debug, Clone)]
pub struct SlotWrite {
    /// Slot position.
    pub index: usize,
    /// The slot's new bytes (all zero to erase it).
    pub bytes: [u8; SLOT_LEN],
}

impl SlotWrite {
    /// Envelope offset of this write.
    pub fn offset(&self) -> u64 {
        (SLOTS_OFFSET + self.index * SLOT_LEN) as u64
    }
}

/// An unlocked file: the data key whose commitment verified, and the context it belongs to.
pub struct FileKey {
    pub(crate) dek: Key32,
    pub(crate) file_id: [u8; 16],
    pub(crate) context: [u8; CONTEXT_LEN],
    pub(crate) plaintext_len: u64,
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey")
            .field("dek", &"[redacted]")
            .field("plaintext_len", &self.plaintext_len)
            .finish()
    }
}

impl FileKey {
    /// Declared plaintext length.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// The data key, for test-vector output only.
    #[doc(hidden)]
    pub fn expose_dek(&self) -> &[u8; 32] {
        self.dek.expose()
    }
}
