//! Crash-safe in-place rewrap of an envelope's key slots (payload untouched).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use super::error::{AtRestError, Result};
use super::format::{FileKey, HEADER_LEN, Header, NewSlot, SlotKind, SlotWrite};
use super::keys::KeyResolver;

/// Read and parse the header at the start of `r` (reads at most [`HEADER_LEN`] bytes).
pub fn read_header<R: Read>(r: &mut R) -> Result<Header> {
    let mut buf = vec![0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if got == 0 {
        return Err(AtRestError::NotAnEnvelope);
    }
    Header::parse(&buf[..got])
}

/// Apply a rewrap plan to `file`, one slot at a time, each write followed by `fsync`, so an
/// interruption at any point leaves a header that opens with the old or the new key.
/// Returns the header as it is on disk afterwards.
pub fn apply_plan(file: &mut File, header: &Header, plan: &[SlotWrite]) -> Result<Header> {
    let mut current = header.clone();
    for write in plan {
        file.seek(SeekFrom::Start(write.offset()))?;
        file.write_all(&write.bytes)?;
        file.sync_data()?;
        current.apply(write)?;
    }
    Ok(current)
}

/// Replace every passphrase slot of the envelope `file` with one for `new_passphrase`.
/// The caller has unlocked the file (`key`).
pub fn rewrap_passphrase(
    file: &mut File,
    header: &Header,
    key: &FileKey,
    new_passphrase: &[u8],
    params: super::keys::Argon2Params,
) -> Result<Header> {
    let remove: Vec<usize> = header
        .slots()
        .iter()
        .filter(|s| matches!(s.kind, SlotKind::Passphrase { .. }))
        .map(|s| s.index)
        // Damaged slots (e.g. torn by an interrupted rewrap) are cleared as well.
        .chain(header.damaged_slots().iter().copied())
        .collect();
    let add = [NewSlot::Passphrase { passphrase: new_passphrase, params }];
    let plan = header.plan_rewrap(key, &remove, &add)?;
    apply_plan(file, header, &plan)
}

/// Move every keystore slot whose version is older than the active version of its
/// owner/category to the active version. Returns the new header and how many slots moved.
pub fn rewrap_keystore_to_active(
    file: &mut File,
    header: &Header,
    key: &FileKey,
    resolver: &dyn KeyResolver,
) -> Result<(Header, usize)> {
    let mut current = header.clone();
    let mut moved = 0;
    let stale: Vec<(usize, String, String)> = header
        .slots()
        .iter()
        .filter_map(|s| match &s.kind {
            SlotKind::Keystore { owner, category, version } => {
                match resolver.active_version(owner, category) {
                    Ok(active) if active != *version => {
                        Some(Ok((s.index, owner.clone(), category.clone())))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(AtRestError::from(e))),
                }
            }
            SlotKind::Passphrase { .. } => None,
        })
        .collect::<Result<_>>()?;
    for (index, owner, category) in stale {
        let add = [NewSlot::Keystore { resolver, owner: &owner, category: &category }];
        let plan = current.plan_rewrap(key, &[index], &add)?;
        current = apply_plan(file, &current, &plan)?;
        moved += 1;
    }
    Ok((current, moved))
}
