//! Library-level tests of the at-rest envelope: round trips (including the zero-length and
//! exactly-one-segment edge cases), out-of-order encryption, random access, and every bad-input
//! case of issue 6 with its distinct error.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Cursor, Read};

use ferry_engine::atrest::{
    Argon2Params, AtRestError, ENC_SEGMENT_SIZE, EnvelopeBuilder, EnvelopeReader, HEADER_LEN,
    Header, KeyResolver, KeyState, NewSlot, ResolveError, ResolvedKey, SEGMENT_SIZE, SLOTS_OFFSET,
    SecretBytes, SlotKind, StreamDecryptor, StreamEncryptor, apply_plan, read_header,
    rewrap_keystore_to_active, rewrap_passphrase, segment_count, segment_offset,
    segment_plaintext_len,
};
use sha2::{Digest, Sha256};

const PASS: &[u8] = b"test passphrase";
const FAST: Argon2Params = Argon2Params::MIN;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed).collect()
}

fn encrypt(pt: &[u8], pass: &[u8]) -> Vec<u8> {
    let (header, cipher) = EnvelopeBuilder::new(pt.len() as u64)
        .slot(NewSlot::Passphrase { passphrase: pass, params: FAST })
        .build()
        .unwrap();
    let mut enc = StreamEncryptor::new(Vec::new(), &header, cipher).unwrap();
    for chunk in pt.chunks(10_000) {
        enc.update(chunk).unwrap();
    }
    enc.finish().unwrap()
}

/// Decrypt a whole envelope the way the CLI does (random-access reader over a seekable file).
fn decrypt(env: &[u8], pass: &[u8]) -> Result<Vec<u8>, AtRestError> {
    let header = Header::parse(env)?;
    let key = header.unlock_with_passphrase(pass)?;
    let mut reader = EnvelopeReader::new(Cursor::new(env), key)?;
    let mut out = Vec::new();
    reader.decrypt_to(&mut out)?;
    Ok(out)
}

/// Decrypt sequentially from a non-seekable stream.
fn decrypt_stream(env: &[u8], pass: &[u8]) -> Result<Vec<u8>, AtRestError> {
    let mut r = env;
    let header = read_header(&mut r)?;
    let key = header.unlock_with_passphrase(pass)?;
    let mut dec = StreamDecryptor::new(r, key);
    let mut out = Vec::new();
    while let Some(seg) = dec.next_segment()? {
        out.extend_from_slice(seg);
    }
    Ok(out)
}

#[test]
fn round_trips_including_edge_lengths() {
    for len in [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE, 200_000] {
        let pt = data(len, 7);
        let env = encrypt(&pt, PASS);
        assert_eq!(env.len() as u64, ferry_engine::atrest::envelope_len(len as u64));
        assert_eq!(decrypt(&env, PASS).unwrap(), pt, "len {len}");
        assert_eq!(decrypt_stream(&env, PASS).unwrap(), pt, "stream len {len}");
    }
}

#[test]
fn zero_length_file_has_one_empty_final_segment() {
    let env = encrypt(&[], PASS);
    assert_eq!(env.len(), HEADER_LEN + 28);
    assert_eq!(segment_count(0), 1);
    assert!(decrypt(&env, PASS).unwrap().is_empty());
    // Dropping the empty final segment is truncation, not an empty file.
    assert!(matches!(decrypt(&env[..HEADER_LEN], PASS), Err(AtRestError::Truncated { .. })));
    assert!(matches!(decrypt_stream(&env[..HEADER_LEN], PASS), Err(AtRestError::Truncated { .. })));
}

#[test]
fn exactly_one_segment_file() {
    let pt = data(SEGMENT_SIZE, 1);
    let env = encrypt(&pt, PASS);
    assert_eq!(segment_count(SEGMENT_SIZE as u64), 1);
    assert_eq!(env.len(), HEADER_LEN + ENC_SEGMENT_SIZE);
    assert_eq!(decrypt(&env, PASS).unwrap(), pt);
    // The final segment cannot be passed off as a non-final one of a longer file or vice versa.
    let mut cut = env.clone();
    cut.truncate(env.len() - 1);
    assert!(matches!(decrypt(&cut, PASS), Err(AtRestError::Truncated { .. })));
}

#[test]
fn out_of_order_encryption_and_resume_reencryption() {
    let pt = data(5 * SEGMENT_SIZE + 123, 3);
    let (header, mut cipher) = EnvelopeBuilder::new(pt.len() as u64)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .build()
        .unwrap();
    let n = segment_count(pt.len() as u64);
    let mut env = vec![0u8; ferry_engine::atrest::envelope_len(pt.len() as u64) as usize];
    env[..HEADER_LEN].copy_from_slice(header.as_bytes());
    let mut out = vec![0u8; ENC_SEGMENT_SIZE];
    let mut seal = |i: u64, env: &mut Vec<u8>| {
        let start = i as usize * SEGMENT_SIZE;
        let l = segment_plaintext_len(pt.len() as u64, i);
        let k = cipher.seal(i, &pt[start..start + l], &mut out).unwrap();
        let off = segment_offset(i) as usize;
        env[off..off + k].copy_from_slice(&out[..k]);
        out[..12].to_vec()
    };
    let mut ivs = Vec::new();
    for i in [3, 0, 5, 1, 4, 2] {
        ivs.push(seal(i, &mut env));
    }
    // Resume: segment 2 is sealed again; it gets a fresh IV, never the old one.
    let again = seal(2, &mut env);
    assert_ne!(again, ivs[5]);
    assert_eq!(n, 6);
    assert_eq!(decrypt(&env, PASS).unwrap(), pt);
}

#[test]
fn encryptor_refuses_non_canonical_segments() {
    let (_, mut cipher) = EnvelopeBuilder::new(100_000)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .build()
        .unwrap();
    let mut out = vec![0u8; ENC_SEGMENT_SIZE];
    assert!(matches!(
        cipher.seal(0, &[0u8; 10], &mut out),
        Err(AtRestError::InvalidSegment { .. })
    ));
    assert!(matches!(
        cipher.seal(2, &[0u8; 10], &mut out),
        Err(AtRestError::InvalidSegment { .. })
    ));
    let (header, cipher) = EnvelopeBuilder::new(10)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .build()
        .unwrap();
    let mut enc = StreamEncryptor::new(Vec::new(), &header, cipher).unwrap();
    assert!(matches!(enc.update(&[0u8; 11]), Err(AtRestError::LengthMismatch { .. })));
}

#[test]
fn random_access_reads() {
    let pt = data(4 * SEGMENT_SIZE + 999, 9);
    let env = encrypt(&pt, PASS);
    let header = Header::parse(&env).unwrap();
    let key = header.unlock_with_passphrase(PASS).unwrap();
    let mut r = EnvelopeReader::new(Cursor::new(&env), key).unwrap();
    for (off, len) in [
        (0usize, 10usize),
        (65_530, 20),
        (3 * SEGMENT_SIZE + 5, SEGMENT_SIZE + 900),
        (pt.len() - 1, 1),
    ] {
        let mut buf = vec![0u8; len];
        let got = r.read_at(off as u64, &mut buf).unwrap();
        assert_eq!(&buf[..got], &pt[off..(off + len).min(pt.len())]);
    }
    let mut buf = [0u8; 4];
    assert_eq!(r.read_at(pt.len() as u64, &mut buf).unwrap(), 0);
    assert!(matches!(
        r.read_at(pt.len() as u64 + 1, &mut buf),
        Err(AtRestError::OutOfRange { .. })
    ));
    // Segment 2 on its own.
    assert_eq!(r.segment(2).unwrap(), &pt[2 * SEGMENT_SIZE..3 * SEGMENT_SIZE]);
}

#[test]
fn wrong_passphrase() {
    let env = encrypt(&data(1000, 0), PASS);
    assert!(matches!(decrypt(&env, b"not it"), Err(AtRestError::WrongPassphrase)));
}

#[test]
fn not_an_envelope() {
    assert!(matches!(
        decrypt(b"hello, this is a plain text file", PASS),
        Err(AtRestError::NotAnEnvelope)
    ));
    assert!(matches!(decrypt(&[], PASS), Err(AtRestError::NotAnEnvelope)));
    let mut r: &[u8] = &[];
    assert!(matches!(read_header(&mut r), Err(AtRestError::NotAnEnvelope)));
}

#[test]
fn truncated_files() {
    let pt = data(3 * SEGMENT_SIZE + 10, 0);
    let env = encrypt(&pt, PASS);
    // Inside the header.
    assert!(matches!(decrypt(&env[..500], PASS), Err(AtRestError::HeaderTruncated { .. })));
    // Inside the payload, and at a segment boundary.
    for cut in [env.len() - 1, env.len() - 38, HEADER_LEN + ENC_SEGMENT_SIZE] {
        assert!(
            matches!(decrypt(&env[..cut], PASS), Err(AtRestError::Truncated { .. })),
            "cut {cut}"
        );
        assert!(
            matches!(decrypt_stream(&env[..cut], PASS), Err(AtRestError::Truncated { .. })),
            "stream cut {cut}"
        );
    }
}

fn seg_range(i: usize) -> std::ops::Range<usize> {
    HEADER_LEN + i * ENC_SEGMENT_SIZE..HEADER_LEN + (i + 1) * ENC_SEGMENT_SIZE
}

#[test]
fn segment_removed() {
    let env = encrypt(&data(4 * SEGMENT_SIZE + 10, 0), PASS);
    let mut cut = env[..seg_range(1).start].to_vec();
    cut.extend_from_slice(&env[seg_range(1).end..]);
    assert!(matches!(decrypt(&cut, PASS), Err(AtRestError::SegmentsRemoved { count: 1 })));
    // Sequentially, the hole shows as the segment at position 1 failing (it is segment 2).
    assert!(matches!(decrypt_stream(&cut, PASS), Err(AtRestError::SegmentCorrupted { index: 1 })));
}

#[test]
fn segment_duplicated() {
    let env = encrypt(&data(4 * SEGMENT_SIZE + 10, 0), PASS);
    // Overwrite segment 2 with a copy of segment 1.
    let mut dup = env.clone();
    dup.copy_within(seg_range(1), seg_range(2).start);
    assert!(matches!(decrypt(&dup, PASS), Err(AtRestError::SegmentDuplicated { index: 2, of: 1 })));
    // Insert an extra copy of segment 1.
    let mut ins = env[..seg_range(2).start].to_vec();
    ins.extend_from_slice(&env[seg_range(1)]);
    ins.extend_from_slice(&env[seg_range(2).start..]);
    assert!(matches!(decrypt(&ins, PASS), Err(AtRestError::SegmentsInserted { count: 1 })));
}

#[test]
fn segments_swapped() {
    let env = encrypt(&data(4 * SEGMENT_SIZE + 10, 0), PASS);
    let mut sw = env.clone();
    sw[seg_range(1)].copy_from_slice(&env[seg_range(2)]);
    sw[seg_range(2)].copy_from_slice(&env[seg_range(1)]);
    assert!(matches!(
        decrypt(&sw, PASS),
        Err(AtRestError::SegmentOutOfPlace { index: 1, found: 2 })
    ));
    assert!(matches!(decrypt_stream(&sw, PASS), Err(AtRestError::SegmentCorrupted { index: 1 })));
}

#[test]
fn header_from_another_file() {
    let a = encrypt(&data(3 * SEGMENT_SIZE, 1), PASS);
    let b = encrypt(&data(3 * SEGMENT_SIZE, 2), PASS);
    let mut spliced = b[..HEADER_LEN].to_vec();
    spliced.extend_from_slice(&a[HEADER_LEN..]);
    assert!(matches!(decrypt(&spliced, PASS), Err(AtRestError::HeaderMismatch)));
    // A segment spliced in from another file is a corrupted segment.
    let mut one = a.clone();
    one[seg_range(1)].copy_from_slice(&b[seg_range(1)]);
    assert!(matches!(decrypt(&one, PASS), Err(AtRestError::SegmentCorrupted { index: 1 })));
}

#[test]
fn trailing_data() {
    let mut env = encrypt(&data(1000, 0), PASS);
    env.extend_from_slice(b"extra");
    assert!(matches!(decrypt(&env, PASS), Err(AtRestError::TrailingData { extra: 5 })));
    assert!(matches!(decrypt_stream(&env, PASS), Err(AtRestError::TrailingData { extra: 5 })));
}

/// Flip one bit in every byte position of a small envelope (header and payload): each flip is
/// detected, never yields plaintext, and the error names the damaged part.
#[test]
fn flipped_bits_anywhere() {
    let pt = data(SEGMENT_SIZE + 100, 5);
    let env = encrypt(&pt, PASS);
    // Every header byte (the expensive KDF runs only when the slot is intact), then a sample of
    // payload positions including IVs, bodies and tags of both segments.
    let mut positions: Vec<usize> = (0..HEADER_LEN).collect();
    let s1 = HEADER_LEN + ENC_SEGMENT_SIZE;
    positions.extend([
        HEADER_LEN,
        HEADER_LEN + 11,
        HEADER_LEN + 12,
        HEADER_LEN + 40_000,
        s1 - 16,
        s1 - 1,
        s1,
        s1 + 12,
        env.len() - 1,
    ]);
    for pos in positions {
        let mut bad = env.clone();
        bad[pos] ^= 0x10;
        // Unused slot positions: the damage is reported by the parsed header, and the file
        // still opens through slot 0 (a torn slot from an interrupted rewrap must not lock the
        // file); the content is unaffected because slots are not content.
        if (SLOTS_OFFSET + 192..SLOTS_OFFSET + 4 * 192).contains(&pos) {
            let h = Header::parse(&bad).unwrap();
            let slot = (pos - SLOTS_OFFSET) / 192;
            assert_eq!(h.damaged_slots(), &[slot]);
            assert!(matches!(h.slot_damage(slot), Some(AtRestError::SlotCorrupted { .. })));
            if (pos - SLOTS_OFFSET).is_multiple_of(192) {
                assert_eq!(decrypt(&bad, PASS).unwrap(), pt);
            }
            continue;
        }
        let err = match Header::parse(&bad) {
            Err(e) => e,
            Ok(_) => decrypt(&bad, PASS).expect_err("flip must be detected"),
        };
        let ok = match pos {
            0..8 => matches!(err, AtRestError::NotAnEnvelope),
            8..112 => matches!(err, AtRestError::HeaderCorrupted),
            112..128 => matches!(err, AtRestError::MalformedHeader { .. }),
            p if (SLOTS_OFFSET..SLOTS_OFFSET + 192).contains(&p) => {
                matches!(err, AtRestError::SlotCorrupted { slot: 0 })
            }
            p if p < HEADER_LEN => matches!(err, AtRestError::MalformedHeader { .. }),
            p if p < s1 => matches!(err, AtRestError::SegmentCorrupted { index: 0 }),
            _ => matches!(err, AtRestError::SegmentCorrupted { index: 1 }),
        };
        assert!(ok, "flip at {pos}: unexpected error {err:?}");
    }
}

/// Rewrite the check value of the header/slot after tampering, as an attacker would.
fn fix_header_check(b: &mut [u8]) {
    let mut h = Sha256::new();
    h.update(b"ferry/v1 header-check");
    h.update(&b[..96]);
    let c = h.finalize();
    b[96..112].copy_from_slice(&c[..16]);
}

fn fix_slot_check(b: &mut [u8], slot: usize) {
    let off = SLOTS_OFFSET + slot * 192;
    let mut h = Sha256::new();
    h.update(b"ferry/v1 slot-check");
    h.update(&b[off..off + 176]);
    let c = h.finalize();
    b[off + 176..off + 192].copy_from_slice(&c[..16]);
}

#[test]
fn tampering_that_fixes_check_values_is_still_caught() {
    let env = encrypt(&data(1000, 0), PASS);
    // Changing the declared length (context) breaks the slot AAD: no slot opens.
    let mut bad = env.clone();
    bad[43] ^= 1;
    fix_header_check(&mut bad);
    assert!(matches!(decrypt(&bad, PASS), Err(AtRestError::WrongPassphrase)));
    // Changing the commitment is caught after the slot opens.
    let mut bad = env.clone();
    bad[70] ^= 1;
    fix_header_check(&mut bad);
    assert!(matches!(decrypt(&bad, PASS), Err(AtRestError::CommitmentMismatch)));
}

#[test]
fn oversized_kdf_parameters_are_refused_before_derivation() {
    let env = encrypt(&data(10, 0), PASS);
    for (field, value) in [(8usize, 4 * 1024 * 1024u32), (12, 1000), (16, 255), (8, 1024)] {
        let mut bad = env.clone();
        let off = SLOTS_OFFSET + field;
        bad[off..off + 4].copy_from_slice(&value.to_be_bytes());
        fix_slot_check(&mut bad, 0);
        assert!(
            matches!(decrypt(&bad, PASS), Err(AtRestError::KdfParamsOutOfBounds { slot: 0, .. })),
            "field {field} = {value}"
        );
    }
    // The encryptor refuses them too.
    let huge = Argon2Params { m_cost_kib: 2 * 1024 * 1024, t_cost: 3, p_cost: 4 };
    let err = EnvelopeBuilder::new(1)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: huge })
        .build()
        .unwrap_err();
    assert!(matches!(err, AtRestError::InvalidKdfParams { .. }));
}

#[test]
fn passphrase_rewrap_is_crash_safe_and_touches_only_slots() {
    let pt = data(2 * SEGMENT_SIZE + 5, 4);
    let env = encrypt(&pt, PASS);
    let header = Header::parse(&env).unwrap();
    let key = header.unlock_with_passphrase(PASS).unwrap();
    let new = b"new passphrase";
    let remove: Vec<usize> = header.slots().iter().map(|s| s.index).collect();
    let plan = header
        .plan_rewrap(&key, &remove, &[NewSlot::Passphrase { passphrase: new, params: FAST }])
        .unwrap();
    assert_eq!(plan.len(), 2, "write new slot, then erase old");
    // Every prefix of the plan (a crash after k writes) opens with the old or the new passphrase.
    for k in 0..=plan.len() {
        let mut b = env.clone();
        for w in &plan[..k] {
            let off = w.offset() as usize;
            b[off..off + 192].copy_from_slice(&w.bytes);
        }
        assert_eq!(&b[HEADER_LEN..], &env[HEADER_LEN..], "payload untouched");
        assert_eq!(&b[..SLOTS_OFFSET], &env[..SLOTS_OFFSET], "fixed header untouched");
        let old_ok = decrypt(&b, PASS).is_ok();
        let new_ok = decrypt(&b, new).is_ok();
        assert!(old_ok || new_ok, "after {k} writes the file opens with neither key");
        if k == plan.len() {
            assert!(!old_ok && new_ok);
            assert_eq!(decrypt(&b, new).unwrap(), pt);
        }
    }
    // The file-level helper gives the same result.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.ferry");
    std::fs::write(&path, &env).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let h2 = rewrap_passphrase(&mut f, &header, &key, new, FAST).unwrap();
    assert_eq!(h2.slots().len(), 1);
    assert_eq!(h2.slots()[0].generation, 2);
    drop(f);
    assert_eq!(decrypt(&std::fs::read(&path).unwrap(), new).unwrap(), pt);
}

/// An in-memory key resolver (test fixture for the engine's trait; the real implementation is
/// the keystore crate).
type KeyTable = HashMap<(String, String, u32), ([u8; 32], KeyState)>;

#[derive(Default)]
struct MemResolver {
    keys: RefCell<KeyTable>,
}

impl MemResolver {
    fn set(&self, owner: &str, cat: &str, v: u32, byte: u8, state: KeyState) {
        self.keys.borrow_mut().insert((owner.into(), cat.into(), v), ([byte; 32], state));
    }
}

impl KeyResolver for MemResolver {
    fn resolve(
        &self,
        owner: &str,
        category: &str,
        version: u32,
    ) -> Result<ResolvedKey, ResolveError> {
        let keys = self.keys.borrow();
        let (k, state) = keys.get(&(owner.into(), category.into(), version)).ok_or_else(|| {
            ResolveError::NotFound {
                owner: owner.into(),
                category: category.into(),
                version: version.to_string(),
            }
        })?;
        Ok(ResolvedKey { secret: SecretBytes::new(k.to_vec()), state: *state })
    }

    fn active_version(&self, owner: &str, category: &str) -> Result<u32, ResolveError> {
        self.keys
            .borrow()
            .iter()
            .filter(|((o, c, _), (_, s))| o == owner && c == category && *s == KeyState::Active)
            .map(|((_, _, v), _)| *v)
            .max()
            .ok_or_else(|| ResolveError::NotFound {
                owner: owner.into(),
                category: category.into(),
                version: "active".into(),
            })
    }
}

fn open_ks(env: &[u8], r: &MemResolver) -> Result<Vec<u8>, AtRestError> {
    let header = Header::parse(env)?;
    let key = header.unlock_with_keystore(r)?;
    let mut reader = EnvelopeReader::new(Cursor::new(env), key)?;
    let mut out = Vec::new();
    reader.decrypt_to(&mut out)?;
    Ok(out)
}

#[test]
fn keystore_slots_rotation_and_states() {
    let r = MemResolver::default();
    r.set("alice", "ssear", 1, 0x11, KeyState::Active);
    let pt = data(70_000, 6);
    let (header, cipher) = EnvelopeBuilder::new(pt.len() as u64)
        .slot(NewSlot::Keystore { resolver: &r, owner: "alice", category: "ssear" })
        .build()
        .unwrap();
    let mut enc = StreamEncryptor::new(Vec::new(), &header, cipher).unwrap();
    enc.update(&pt).unwrap();
    let env = enc.finish().unwrap();
    assert!(matches!(&header.slots()[0].kind, SlotKind::Keystore { version: 1, .. }));
    assert_eq!(open_ks(&env, &r).unwrap(), pt);
    // A passphrase does not open a keystore-only file.
    assert!(matches!(decrypt(&env, PASS), Err(AtRestError::NoPassphraseSlot)));

    // Rotate: v2 active, v1 deactivated. The file still opens (v1 may decrypt).
    r.set("alice", "ssear", 1, 0x11, KeyState::Deactivated);
    r.set("alice", "ssear", 2, 0x22, KeyState::Active);
    assert_eq!(open_ks(&env, &r).unwrap(), pt);
    // Suspended or destroyed versions fail closed with a message naming key, version and state.
    for state in [KeyState::Suspended, KeyState::Destroyed] {
        r.set("alice", "ssear", 1, 0x11, state);
        match open_ks(&env, &r) {
            Err(AtRestError::KeyUnavailable { owner, version: 1, state: s, .. }) => {
                assert_eq!(owner, "alice");
                assert_eq!(s, state);
            }
            other => panic!("expected KeyUnavailable, got {other:?}"),
        }
    }
    r.set("alice", "ssear", 1, 0x11, KeyState::Deactivated);
    // A different secret under the same name is a wrong keystore key.
    let wrong = MemResolver::default();
    wrong.set("alice", "ssear", 1, 0x99, KeyState::Active);
    assert!(matches!(open_ks(&env, &wrong), Err(AtRestError::WrongKeystoreKey { version: 1, .. })));

    // Rewrap to the active version in place: payload untouched, now opens with v2 only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.ferry");
    std::fs::write(&path, &env).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let h = read_header(&mut f).unwrap();
    let key = h.unlock_with_keystore(&r).unwrap();
    let (h2, moved) = rewrap_keystore_to_active(&mut f, &h, &key, &r).unwrap();
    assert_eq!(moved, 1);
    assert!(matches!(&h2.slots()[0].kind, SlotKind::Keystore { version: 2, .. }));
    drop(f);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[HEADER_LEN..], &env[HEADER_LEN..]);
    r.set("alice", "ssear", 1, 0x11, KeyState::Destroyed);
    assert_eq!(open_ks(&after, &r).unwrap(), pt);
    // Suspended versions cannot wrap new files.
    r.set("alice", "ssear", 2, 0x22, KeyState::Suspended);
    let err = EnvelopeBuilder::new(1)
        .slot(NewSlot::Keystore { resolver: &r, owner: "alice", category: "ssear" })
        .build();
    assert!(matches!(err, Err(AtRestError::Keystore(_))));
}

#[test]
fn mixed_slots_and_slot_limit() {
    let r = MemResolver::default();
    r.set("bob", "ssear", 7, 0x33, KeyState::Active);
    let (header, cipher) = EnvelopeBuilder::new(5)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .slot(NewSlot::Keystore { resolver: &r, owner: "bob", category: "ssear" })
        .build()
        .unwrap();
    let mut enc = StreamEncryptor::new(Vec::new(), &header, cipher).unwrap();
    enc.update(b"hello").unwrap();
    let env = enc.finish().unwrap();
    assert_eq!(decrypt(&env, PASS).unwrap(), b"hello");
    assert_eq!(open_ks(&env, &r).unwrap(), b"hello");
    let four = EnvelopeBuilder::new(5)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .build();
    assert!(matches!(four, Err(AtRestError::NoFreeSlot { max: 3 })));
    let long = "x".repeat(65);
    let err = EnvelopeBuilder::new(5)
        .slot(NewSlot::Keystore { resolver: &r, owner: &long, category: "ssear" })
        .build();
    assert!(matches!(err, Err(AtRestError::InvalidName { .. })));
    // apply_plan on a real file with an empty plan is a no-op.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m");
    std::fs::write(&p, &env).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    apply_plan(&mut f, &header, &[]).unwrap();
}

#[test]
fn stream_decryptor_read_adapter() {
    let pt = data(150_000, 8);
    let env = encrypt(&pt, PASS);
    let mut r: &[u8] = &env;
    let header = read_header(&mut r).unwrap();
    let key = header.unlock_with_passphrase(PASS).unwrap();
    let mut out = Vec::new();
    StreamDecryptor::new(r, key).read_to_end(&mut out).unwrap();
    assert_eq!(out, pt);
    // Errors come back typed through io::Error.
    let mut bad = env.clone();
    bad[HEADER_LEN + 100] ^= 1;
    let mut r: &[u8] = &bad;
    let header = read_header(&mut r).unwrap();
    let key = header.unlock_with_passphrase(PASS).unwrap();
    let e = StreamDecryptor::new(r, key).read_to_end(&mut Vec::new()).unwrap_err();
    assert!(matches!(AtRestError::from_io(e), AtRestError::SegmentCorrupted { index: 0 }));
}

/// A crash in the middle of a slot write (torn write) still leaves a file that opens: the torn
/// slot is reported as damaged and skipped; rerunning the rewrap clears it.
#[test]
fn torn_slot_writes_during_rewrap() {
    let pt = data(3000, 2);
    let env = encrypt(&pt, PASS);
    let header = Header::parse(&env).unwrap();
    let key = header.unlock_with_passphrase(PASS).unwrap();
    let new = b"the new one";
    let plan = header
        .plan_rewrap(&key, &[0], &[NewSlot::Passphrase { passphrase: new, params: FAST }])
        .unwrap();
    // Step 1 torn: only the first 100 bytes of the new slot reached the disk.
    let mut torn = env.clone();
    let off = plan[0].offset() as usize;
    torn[off..off + 100].copy_from_slice(&plan[0].bytes[..100]);
    assert_eq!(Header::parse(&torn).unwrap().damaged_slots(), &[plan[0].index]);
    assert_eq!(decrypt(&torn, PASS).unwrap(), pt);
    // Step 2 torn: the new slot is complete, the old one half erased.
    let mut torn2 = env.clone();
    torn2[off..off + 192].copy_from_slice(&plan[0].bytes);
    torn2[SLOTS_OFFSET..SLOTS_OFFSET + 50].fill(0);
    assert_eq!(decrypt(&torn2, new).unwrap(), pt);
    // Rerunning the rewrap from the torn state clears the damaged slot.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    std::fs::write(&path, &torn).unwrap();
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let h = read_header(&mut f).unwrap();
    let k = h.unlock_with_passphrase(PASS).unwrap();
    let h2 = rewrap_passphrase(&mut f, &h, &k, new, FAST).unwrap();
    assert!(h2.damaged_slots().is_empty());
    assert_eq!(h2.slots().len(), 1);
    drop(f);
    assert_eq!(decrypt(&std::fs::read(&path).unwrap(), new).unwrap(), pt);
}

#[test]
fn argon2_calibration_never_goes_below_the_default() {
    // A target below one derivation's cost returns the RFC 9106 default unchanged.
    let p = Argon2Params::calibrate(std::time::Duration::from_millis(1)).unwrap();
    assert_eq!(p, Argon2Params::DEFAULT);
    assert!(p.in_bounds());
    assert!(Argon2Params::MIN.in_bounds());
}

#[test]
fn stream_encryptor_any_write_pattern_gives_a_valid_envelope() {
    let pt = data(5 * SEGMENT_SIZE + 77, 3);
    for chunk in
        [1usize, 1000, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE, pt.len()]
    {
        let (header, cipher) = EnvelopeBuilder::new(pt.len() as u64)
            .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
            .build()
            .unwrap();
        let mut enc = StreamEncryptor::new(Vec::new(), &header, cipher).unwrap();
        // A small first write, so the direct (unstaged) path starts mid-stream too.
        enc.update(&pt[..3]).unwrap();
        for c in pt[3..].chunks(chunk) {
            enc.update(c).unwrap();
        }
        let env = enc.finish().unwrap();
        assert_eq!(decrypt(&env, PASS).unwrap(), pt, "chunk {chunk}");
    }
    // Exactly whole segments, written in one call: the final full segment waits for finish().
    let pt = data(2 * SEGMENT_SIZE, 4);
    let (header, cipher) = EnvelopeBuilder::new(pt.len() as u64)
        .slot(NewSlot::Passphrase { passphrase: PASS, params: FAST })
        .build()
        .unwrap();
    let mut enc = StreamEncryptor::new(Vec::new(), &header, cipher).unwrap();
    enc.update(&pt).unwrap();
    assert_eq!(decrypt(&enc.finish().unwrap(), PASS).unwrap(), pt);
}
