//! Segment encryption and decryption: out-of-order encryptor, sequential decryptor,
//! random-access reader.

use std::io::{self, Read, Seek, SeekFrom, Write};

use zeroize::Zeroize;

use super::error::{AtRestError, Result};
use super::format::{
    ENC_SEGMENT_SIZE, FileKey, HEADER_LEN, Header, NewSlot, SEGMENT_OVERHEAD, SEGMENT_SIZE,
    SEGMENTS_PER_KEY, SlotRandom, envelope_len, segment_count, segment_offset,
    segment_plaintext_len,
};
use super::keys::{Key32, hkdf32};
use crate::crypto::Aead;

/// The per-file segment cipher: derives the AES-256-GCM key of each group of 2^20 segments from
/// the data key and seals/opens segments. Caches the current group's cipher.
pub struct SegmentCipher {
    key: FileKey,
    group: Option<(u64, Aead)>,
    /// The key of synthetic IVs ([`SegmentCipher::seal_synthetic_in_place`]), derived when first used.
    siv: Option<Key32>,
}

impl std::fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCipher").field("key", &self.key).finish_non_exhaustive()
    }
}

fn segment_aad(index: u64, last: bool) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[..8].copy_from_slice(&index.to_be_bytes());
    aad[8] = u8::from(last);
    aad
}

impl SegmentCipher {
    /// Wrap an unlocked file key.
    pub fn new(key: FileKey) -> Self {
        Self { key, group: None, siv: None }
    }

    /// Declared plaintext length.
    pub fn plaintext_len(&self) -> u64 {
        self.key.plaintext_len
    }

    /// Number of segments.
    pub fn segment_count(&self) -> u64 {
        segment_count(self.key.plaintext_len)
    }

    fn cipher(&mut self, index: u64) -> &Aead {
        let g = index / SEGMENTS_PER_KEY;
        if self.group.as_ref().is_none_or(|(cur, _)| *cur != g) {
            let k: Key32 = hkdf32(
                self.key.dek.expose(),
                &self.key.file_id,
                &[b"ferry/v1 segment-key", &g.to_be_bytes(), &self.key.context],
            );
            self.group = Some((g, Aead::new(k.expose()).expect("32-byte key")));
        }
        &self.group.as_ref().expect("just set").1
    }

    fn check_index(&self, index: u64, len: usize) -> Result<bool> {
        let n = self.segment_count();
        if index >= n {
            return Err(AtRestError::InvalidSegment {
                index,
                reason: "index past the final segment",
            });
        }
        if len != segment_plaintext_len(self.key.plaintext_len, index) {
            return Err(AtRestError::InvalidSegment {
                index,
                reason: "plaintext length differs from the canonical segmentation",
            });
        }
        Ok(index + 1 == n)
    }

    /// Encrypt segment `index` into `out` (`plaintext.len() + 28` bytes: IV ‖ ciphertext ‖ tag)
    /// with a fresh random IV. Segments may be sealed in any order, and sealing a segment again
    /// (resume) is safe: each sealing draws a new IV.
    pub fn seal(&mut self, index: u64, plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
        let mut iv = [0u8; 12];
        rand::fill(&mut iv[..]);
        self.seal_with_iv(index, iv, plaintext, out)
    }

    /// Encrypt segment `index` in place as [`seal_in_place`](Self::seal_in_place) does (the
    /// plaintext already at `segment[12..len - 16]`), with a *synthetic* IV (FORMAT.md §6.2):
    /// the first 12 bytes of BLAKE3 keyed by
    /// `HKDF-SHA-256(DEK, file id, "ferry/v1 synthetic-iv" ‖ context)` over
    /// `uint64(index) ‖ plaintext`. Sealing the same bytes again gives the same segment (a
    /// sender can resend or re-hash it without keeping it), and different bytes get a
    /// different IV (a source that changed between two sealings never reuses an IV).
    pub fn seal_synthetic_in_place(&mut self, index: u64, segment: &mut [u8]) -> Result<()> {
        let plain = segment
            .get(12..segment.len().saturating_sub(16))
            .ok_or(AtRestError::InvalidSegment { index, reason: "output buffer too small" })?;
        let key = self.siv.get_or_insert_with(|| {
            hkdf32(
                self.key.dek.expose(),
                &self.key.file_id,
                &[b"ferry/v1 synthetic-iv", &self.key.context],
            )
        });
        let mut h = blake3::Hasher::new_keyed(key.expose());
        h.update(&index.to_be_bytes());
        h.update(plain);
        let mut iv = [0u8; 12];
        iv.copy_from_slice(&h.finalize().as_bytes()[..12]);
        self.seal_placed(index, iv, segment)
    }

    #[doc(hidden)]
    pub fn seal_with_iv(
        &mut self,
        index: u64,
        iv: [u8; 12],
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        let total = plaintext.len() + SEGMENT_OVERHEAD;
        if out.len() < total {
            return Err(AtRestError::InvalidSegment { index, reason: "output buffer too small" });
        }
        out[12..12 + plaintext.len()].copy_from_slice(plaintext);
        self.seal_placed(index, iv, &mut out[..total])?;
        Ok(total)
    }

    /// Encrypt segment `index` in place: `segment` is the whole encrypted segment's space
    /// (`IV ‖ plaintext ‖ tag`, 28 bytes more than the plaintext) with the plaintext already at
    /// `segment[12..len - 16]`; the IV (fresh, random) and the tag are written around it. The
    /// receive path assembles segments this way, so sealing copies nothing.
    pub fn seal_in_place(&mut self, index: u64, segment: &mut [u8]) -> Result<()> {
        let mut iv = [0u8; 12];
        rand::fill(&mut iv[..]);
        self.seal_placed(index, iv, segment)
    }

    fn seal_placed(&mut self, index: u64, iv: [u8; 12], segment: &mut [u8]) -> Result<()> {
        let len = segment
            .len()
            .checked_sub(SEGMENT_OVERHEAD)
            .ok_or(AtRestError::InvalidSegment { index, reason: "output buffer too small" })?;
        let last = self.check_index(index, len)?;
        segment[..12].copy_from_slice(&iv);
        let (body, tag_out) = segment[12..].split_at_mut(len);
        let tag = self.cipher(index).seal(&iv, &segment_aad(index, last), body);
        tag_out.copy_from_slice(&tag);
        Ok(())
    }

    /// Authenticate and decrypt encrypted segment `index` in place; returns the plaintext
    /// sub-slice. On failure the buffer is wiped and nothing is released.
    pub fn open<'b>(&mut self, index: u64, enc: &'b mut [u8]) -> Result<&'b [u8]> {
        let n = self.segment_count();
        let expect = segment_plaintext_len(self.key.plaintext_len, index) + SEGMENT_OVERHEAD;
        if index >= n || enc.len() != expect {
            return Err(AtRestError::SegmentCorrupted { index });
        }
        if self.try_open(index, index + 1 == n, enc) {
            Ok(&enc[12..enc.len() - 16])
        } else {
            Err(AtRestError::SegmentCorrupted { index })
        }
    }

    /// Does `enc` authenticate as segment `index` (final or not)? Decrypts in place on success;
    /// wipes the body on failure.
    fn try_open(&mut self, index: u64, last: bool, enc: &mut [u8]) -> bool {
        if enc.len() < SEGMENT_OVERHEAD {
            return false;
        }
        let iv: [u8; 12] = enc[..12].try_into().expect("12 bytes");
        let len = enc.len();
        let tag: [u8; 16] = enc[len - 16..].try_into().expect("16 bytes");
        let body = &mut enc[12..len - 16];
        let ok = self.cipher(index).open(&iv, &segment_aad(index, last), body, &tag).is_ok();
        if !ok {
            body.zeroize();
        }
        ok
    }

    /// Does `enc` (a copy is used; `enc` is untouched) authenticate as segment `index`?
    fn authenticates(&mut self, index: u64, enc: &[u8]) -> bool {
        let n = self.segment_count();
        if index >= n
            || enc.len() != segment_plaintext_len(self.key.plaintext_len, index) + SEGMENT_OVERHEAD
        {
            return false;
        }
        let mut copy = enc.to_vec();
        let ok = self.try_open(index, index + 1 == n, &mut copy);
        copy.zeroize();
        ok
    }
}

/// Creates new envelopes: a fresh random data key and file id, one or more key slots.
#[derive(Debug)]
pub struct EnvelopeBuilder<'a> {
    plaintext_len: u64,
    slots: Vec<(NewSlot<'a>, SlotRandom)>,
    fixed: Option<(Key32, [u8; 16])>,
}

/// The key, file id and slot randomness of envelope `index` drawn from `seed`
/// ([`EnvelopeBuilder::seeded`]): HKDF-SHA-256 with the seed as input key, no salt, and
/// `"ferry/v1 seeded " ‖ what ‖ uint64(index) [‖ uint8(slot)]` as info.
fn seeded(seed: &Key32, what: &str, index: u64, slot: Option<u8>) -> Key32 {
    let slot = slot.map(|k| [k]);
    let info: [&[u8]; 4] = [
        b"ferry/v1 seeded ",
        what.as_bytes(),
        &index.to_be_bytes(),
        slot.as_ref().map_or(&[], |k| &k[..]),
    ];
    hkdf32(seed.expose(), &[], &info)
}

impl<'a> EnvelopeBuilder<'a> {
    /// A new envelope for a plaintext of exactly `plaintext_len` bytes.
    pub fn new(plaintext_len: u64) -> Self {
        Self { plaintext_len, slots: Vec::new(), fixed: None }
    }

    /// Add a key slot (at most 3).
    pub fn slot(mut self, slot: NewSlot<'a>) -> Self {
        let mut rnd = SlotRandom { salt: [0; 16], nonce: [0; 12] };
        rand::fill(&mut rnd.salt[..]);
        rand::fill(&mut rnd.nonce[..]);
        self.slots.push((slot, rnd));
        self
    }

    /// Draws the data key, the file id and every slot's salt and nonce from `seed` and
    /// `index` instead of the system RNG (call it after the slots are added): a sender that
    /// keeps one random 256-bit seed per transfer can build envelope `index`'s header again,
    /// byte for byte, whenever it needs its bytes, and holds no per-file state. Each index
    /// must name one envelope; the keys of distinct indexes are independent (HKDF outputs).
    pub fn seeded(mut self, seed: &Key32, index: u64) -> Self {
        let mut id = [0u8; 16];
        id.copy_from_slice(&seeded(seed, "file id", index, None).expose()[..16]);
        self.fixed = Some((seeded(seed, "dek", index, None), id));
        for (k, (_, rnd)) in self.slots.iter_mut().enumerate() {
            let r = seeded(seed, "slot", index, Some(k as u8));
            rnd.salt.copy_from_slice(&r.expose()[..16]);
            rnd.nonce.copy_from_slice(&r.expose()[16..28]);
        }
        self
    }

    #[doc(hidden)]
    pub fn fixed_for_test_vectors(
        mut self,
        dek: [u8; 32],
        file_id: [u8; 16],
        slot: NewSlot<'a>,
        rnd: SlotRandom,
    ) -> Self {
        let mut k = Key32::zeroed();
        k.expose_mut().copy_from_slice(&dek);
        self.fixed = Some((k, file_id));
        self.slots = vec![(slot, rnd)];
        self
    }

    /// Derive the slots and the key commitment; returns the header and the segment cipher.
    pub fn build(self) -> Result<(Header, SegmentCipher)> {
        let (dek, file_id) = match self.fixed {
            Some(f) => f,
            None => {
                let mut id = [0u8; 16];
                rand::fill(&mut id[..]);
                (Key32::random(), id)
            }
        };
        let header = Header::build(self.plaintext_len, file_id, &dek, &self.slots)?;
        let key = FileKey {
            dek,
            file_id,
            context: header.context().try_into().expect("64 bytes"),
            plaintext_len: self.plaintext_len,
        };
        Ok((header, SegmentCipher::new(key)))
    }
}

/// Sequential encryption to a `Write`: writes the header, then buffers exactly one segment.
/// The number of plaintext bytes must equal the declared length ([`StreamEncryptor::finish`]
/// checks it).
#[derive(Debug)]
pub struct StreamEncryptor<W: Write> {
    w: W,
    cipher: SegmentCipher,
    buf: Vec<u8>,
    out: Vec<u8>,
    index: u64,
    seen: u64,
}

impl<W: Write> StreamEncryptor<W> {
    /// Write `header` to `w` and start encrypting.
    pub fn new(mut w: W, header: &Header, cipher: SegmentCipher) -> Result<Self> {
        w.write_all(header.as_bytes())?;
        Ok(Self {
            w,
            cipher,
            buf: Vec::with_capacity(SEGMENT_SIZE),
            out: vec![0u8; ENC_SEGMENT_SIZE],
            index: 0,
            seen: 0,
        })
    }

    fn flush_segment(&mut self) -> Result<()> {
        let n = self.cipher.seal(self.index, &self.buf, &mut self.out)?;
        self.w.write_all(&self.out[..n])?;
        self.buf.zeroize();
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Feed plaintext.
    pub fn update(&mut self, mut data: &[u8]) -> Result<()> {
        let declared = self.cipher.plaintext_len();
        if self.seen + data.len() as u64 > declared {
            return Err(AtRestError::LengthMismatch {
                declared,
                actual: self.seen + data.len() as u64,
            });
        }
        self.seen += data.len() as u64;
        while !data.is_empty() {
            // Whole non-final segments straight from the caller's buffer (no staging copy).
            if self.buf.is_empty()
                && data.len() >= SEGMENT_SIZE
                && self.index + 1 < self.cipher.segment_count()
            {
                let n = self.cipher.seal(self.index, &data[..SEGMENT_SIZE], &mut self.out)?;
                self.w.write_all(&self.out[..n])?;
                self.index += 1;
                data = &data[SEGMENT_SIZE..];
                continue;
            }
            let take = (SEGMENT_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            // A full buffer is flushed unless it is the final segment (flushed by finish()).
            if self.buf.len() == SEGMENT_SIZE && self.index + 1 < self.cipher.segment_count() {
                self.flush_segment()?;
            }
        }
        Ok(())
    }

    /// Seal the final segment and return the writer (not flushed or synced).
    pub fn finish(mut self) -> Result<W> {
        let declared = self.cipher.plaintext_len();
        if self.seen != declared {
            return Err(AtRestError::LengthMismatch { declared, actual: self.seen });
        }
        self.flush_segment()?;
        Ok(self.w)
    }
}

/// Read-only access to encrypted segments by position (implemented for any `Read + Seek`).
trait SegmentSource {
    fn len(&mut self) -> io::Result<u64>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<R: Read + Seek> SegmentSource for R {
    fn len(&mut self) -> io::Result<u64> {
        self.seek(SeekFrom::End(0))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.seek(SeekFrom::Start(offset))?;
        self.read_exact(buf)
    }
}

fn enc_len(plaintext_len: u64, index: u64) -> usize {
    segment_plaintext_len(plaintext_len, index) + SEGMENT_OVERHEAD
}

/// Random-access reader over a seekable envelope. Checks the exact envelope length when opened
/// (diagnosing truncation, removed or inserted segments, trailing bytes); every read authenticates
/// whole segments before copying plaintext out. Memory: one segment buffer.
#[derive(Debug)]
pub struct EnvelopeReader<R: Read + Seek> {
    src: R,
    cipher: SegmentCipher,
    buf: Vec<u8>,
}

impl<R: Read + Seek> EnvelopeReader<R> {
    /// Wrap `src` (a whole envelope, header included) opened with `key`.
    pub fn new(mut src: R, key: FileKey) -> Result<Self> {
        let mut cipher = SegmentCipher::new(key);
        let len = cipher.plaintext_len();
        let expected = envelope_len(len);
        let actual = src.len()?;
        let n = cipher.segment_count();
        if actual < expected {
            let short = expected - actual;
            let last = enc_len(len, n - 1);
            if short.is_multiple_of(ENC_SEGMENT_SIZE as u64)
                && actual >= HEADER_LEN as u64 + last as u64
            {
                let mut tail = vec![0u8; last];
                src.read_at(actual - last as u64, &mut tail)?;
                if cipher.authenticates(n - 1, &tail) {
                    return Err(AtRestError::SegmentsRemoved {
                        count: short / ENC_SEGMENT_SIZE as u64,
                    });
                }
            }
            return Err(AtRestError::Truncated { expected, actual });
        }
        if actual > expected {
            let extra = actual - expected;
            let last = enc_len(len, n - 1);
            let mut tail = vec![0u8; last];
            src.read_at(actual - last as u64, &mut tail)?;
            if extra.is_multiple_of(ENC_SEGMENT_SIZE as u64) && cipher.authenticates(n - 1, &tail) {
                return Err(AtRestError::SegmentsInserted {
                    count: extra / ENC_SEGMENT_SIZE as u64,
                });
            }
            return Err(AtRestError::TrailingData { extra });
        }
        Ok(Self { src, cipher, buf: vec![0u8; ENC_SEGMENT_SIZE] })
    }

    /// Declared plaintext length.
    pub fn plaintext_len(&self) -> u64 {
        self.cipher.plaintext_len()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> u64 {
        self.cipher.segment_count()
    }

    /// Authenticate and decrypt segment `index`; returns its plaintext.
    pub fn segment(&mut self, index: u64) -> Result<&[u8]> {
        let n = self.cipher.segment_count();
        if index >= n {
            return Err(AtRestError::OutOfRange {
                offset: index.saturating_mul(SEGMENT_SIZE as u64),
                len: self.plaintext_len(),
            });
        }
        let l = enc_len(self.cipher.plaintext_len(), index);
        self.src.read_at(segment_offset(index), &mut self.buf[..l])?;
        if self.cipher.try_open(index, index + 1 == n, &mut self.buf[..l]) {
            return Ok(&self.buf[12..l - 16]);
        }
        // Failure path only: read the (public) encrypted bytes again to diagnose.
        let mut probe = vec![0u8; l];
        if let Err(e) = self.src.read_at(segment_offset(index), &mut probe) {
            return Err(e.into());
        }
        Err(self.diagnose(index, &probe))
    }

    /// Work out why segment `index` (bytes `enc`) failed: moved, duplicated, header from
    /// another file, or damaged. Only called on the failure path; bounded work.
    fn diagnose(&mut self, index: u64, enc: &[u8]) -> AtRestError {
        let n = self.cipher.segment_count();
        let len = self.cipher.plaintext_len();
        let lo = index.saturating_sub(16);
        let hi = (index + 16).min(n - 1);
        let mut candidates: Vec<u64> = (lo..=hi).collect();
        candidates.extend([0, n - 1]);
        candidates.sort_unstable();
        candidates.dedup();
        for &j in candidates.iter().filter(|&&j| j != index) {
            if self.cipher.authenticates(j, enc) {
                let mut at_j = vec![0u8; enc_len(len, j)];
                if self.src.read_at(segment_offset(j), &mut at_j).is_ok()
                    && self.cipher.authenticates(j, &at_j)
                {
                    return AtRestError::SegmentDuplicated { index, of: j };
                }
                return AtRestError::SegmentOutOfPlace { index, found: j };
            }
        }
        // Does anything authenticate under this header? If neither the first nor the final
        // segment (nor a neighbour) does, the header was taken from another file.
        if n > 1 {
            let mut any = false;
            for &j in candidates.iter().filter(|&&j| j != index) {
                let mut at_j = vec![0u8; enc_len(len, j)];
                if self.src.read_at(segment_offset(j), &mut at_j).is_ok()
                    && self.cipher.authenticates(j, &at_j)
                {
                    any = true;
                    break;
                }
            }
            if !any {
                return AtRestError::HeaderMismatch;
            }
        }
        AtRestError::SegmentCorrupted { index }
    }

    /// Read plaintext starting at `offset` into `out`; returns the bytes copied (0 at the end).
    /// Only authenticated bytes are copied.
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize> {
        let len = self.plaintext_len();
        if offset > len {
            return Err(AtRestError::OutOfRange { offset, len });
        }
        let mut done = 0;
        let mut pos = offset;
        while done < out.len() && pos < len {
            let index = pos / SEGMENT_SIZE as u64;
            let within = (pos % SEGMENT_SIZE as u64) as usize;
            let seg = self.segment(index)?;
            let take = (seg.len() - within).min(out.len() - done);
            out[done..done + take].copy_from_slice(&seg[within..within + take]);
            done += take;
            pos += take as u64;
        }
        Ok(done)
    }

    /// Decrypt everything to `w`, one authenticated segment at a time.
    pub fn decrypt_to<W: Write>(&mut self, w: &mut W) -> Result<u64> {
        let mut total = 0;
        for i in 0..self.segment_count() {
            let seg = self.segment(i)?;
            w.write_all(seg)?;
            total += seg.len() as u64;
        }
        Ok(total)
    }
}

impl<R: Read + Seek> Drop for EnvelopeReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Sequential decryption from a non-seekable stream (the header already read and unlocked).
/// Releases a segment's plaintext only after its tag verified; detects truncation (EOF before
/// the final segment) and trailing bytes after it. Memory: one segment buffer.
#[derive(Debug)]
pub struct StreamDecryptor<R: Read> {
    r: R,
    cipher: SegmentCipher,
    buf: Vec<u8>,
    next: u64,
    pos: usize,
    end: usize,
    done: bool,
    consumed: u64,
}

impl<R: Read> StreamDecryptor<R> {
    /// `r` is positioned right after the header.
    pub fn new(r: R, key: FileKey) -> Self {
        Self {
            r,
            cipher: SegmentCipher::new(key),
            buf: vec![0u8; ENC_SEGMENT_SIZE],
            next: 0,
            pos: 0,
            end: 0,
            done: false,
            consumed: HEADER_LEN as u64,
        }
    }

    /// The next authenticated segment's plaintext, or `None` after the final one.
    pub fn next_segment(&mut self) -> Result<Option<&[u8]>> {
        if self.done {
            return Ok(None);
        }
        let len = self.cipher.plaintext_len();
        let n = self.cipher.segment_count();
        let index = self.next;
        let l = enc_len(len, index);
        let mut got = 0;
        while got < l {
            match self.r.read(&mut self.buf[got..l]) {
                Ok(0) => {
                    return Err(AtRestError::Truncated {
                        expected: envelope_len(len),
                        actual: self.consumed + got as u64,
                    });
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.consumed += l as u64;
        if !self.cipher.try_open(index, index + 1 == n, &mut self.buf[..l]) {
            return Err(AtRestError::SegmentCorrupted { index });
        }
        self.next += 1;
        if index + 1 == n {
            let mut probe = [0u8; 1];
            loop {
                match self.r.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {
                        let mut extra = 1u64;
                        extra += io::copy(&mut self.r, &mut io::sink())?;
                        self.buf.zeroize();
                        return Err(AtRestError::TrailingData { extra });
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.done = true;
        }
        Ok(Some(&self.buf[12..l - 16]))
    }
}

impl<R: Read> Read for StreamDecryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.end {
            let seg_len = match self.next_segment().map_err(io::Error::other)? {
                None => return Ok(0),
                Some(s) => s.len(),
            };
            self.pos = 12;
            self.end = 12 + seg_len;
        }
        let take = (self.end - self.pos).min(out.len());
        out[..take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
        self.pos += take;
        Ok(take)
    }
}

impl<R: Read> Drop for StreamDecryptor<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}
