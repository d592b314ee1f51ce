//! BLAKE3 of a file whose bytes arrive in any order, without reading any of them back.
//!
//! BLAKE3 is a tree hash: the input is split into 1 KiB chunks, and the chaining values (CVs) of
//! subtrees combine pairwise up a left-complete binary tree whose shape depends only on the input
//! length (the BLAKE3 paper, section 2.1). [`TreeHasher`] knows the file's length, so it knows the
//! tree. It collects arriving bytes into aligned regions of [`REGION`] bytes (a power-of-two
//! number of chunks, so every region is a subtree); a region whose bytes are all in is hashed as a
//! subtree at once (with the SIMD code path for several chunks) and its buffer reused, and its CV
//! merges with its sibling's as soon as that is known, up to the root. The result is exactly
//! `blake3::hash` of the file (tested against it with random arrival orders).
//!
//! Memory: a buffer per region that has some but not all of its bytes (a lost block leaves at
//! most two such regions), plus one CV per subtree waiting for its sibling (at most one per tree
//! level per gap). Files of at most one region are hashed in one call when complete.

use std::collections::HashMap;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root};

/// Bytes per region: 16 chunks, the width of BLAKE3's AVX-512 path (two batches of its AVX2
/// one). Measured on the development machine (AVX-512): subtrees of 8 KiB hash at 3.4 GB/s, of
/// 16 KiB at 5.3 GB/s, of 64 KiB at 5.4 GB/s; 16 KiB is the smallest region at full speed.
pub(crate) const REGION: u64 = 16 * 1024;
/// Spare region buffers kept for reuse (more are freed).
pub(crate) const POOL: usize = 32;

/// A region being filled.
#[derive(Debug)]
struct Partial {
    buf: Box<[u8]>,
    filled: u64,
}

/// Computes the BLAKE3 hash of a file of known length from byte ranges given in any order
/// (each byte exactly once).
#[derive(Debug)]
pub(crate) struct TreeHasher {
    len: u64,
    /// Regions with some of their bytes, by region index.
    partial: HashMap<u64, Partial>,
    /// CVs of complete subtrees whose sibling is not known yet, by (start offset, length).
    done: HashMap<(u64, u64), ChainingValue>,
    /// The hash, once every byte is in.
    root: Option<[u8; 32]>,
    /// Bytes in so far.
    received: u64,
    /// CVs of the aligned [`CHUNK`]-byte subtrees completed from bytes (not from
    /// [`TreeHasher::add_subtree`]) and not yet taken: a resumable receiver journals them.
    chunks: Vec<(u64, ChainingValue)>,
    /// Whether completed chunks are collected in `chunks`.
    report: bool,
}

/// The journal's chunk: aligned subtrees of this many bytes have their CVs reported
/// ([`TreeHasher::take_chunks`]). docs/PROTOCOL.md section 8.6.
pub(crate) const CHUNK: u64 = 1 << 20;

/// The CV of the [`CHUNK`]-aligned subtree `bytes` at `start` of a file longer than one
/// chunk (what [`TreeHasher::take_chunks`] reports for it).
pub fn chunk_cv(start: u64, bytes: &[u8]) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(start).update(bytes).finalize_non_root()
}

impl TreeHasher {
    /// A hasher for a file of `len` bytes.
    pub(crate) fn new(len: u64) -> Self {
        let mut h = Self {
            len,
            partial: HashMap::new(),
            done: HashMap::new(),
            root: None,
            received: 0,
            chunks: Vec::new(),
            report: false,
        };
        if len == 0 {
            h.root = Some(*blake3::hash(&[]).as_bytes());
        }
        h
    }

    /// The hash, once every byte has been added.
    pub(crate) fn finalize(&self) -> Option<[u8; 32]> {
        self.root
    }

    /// Bytes still held in partly filled regions.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.partial.values().map(|p| p.buf.len()).sum()
    }

    /// Reports completed chunks ([`TreeHasher::take_chunks`]).
    pub(crate) fn reporting(mut self) -> Self {
        self.report = true;
        self
    }

    /// Adds the aligned [`CHUNK`] `[start, start + CHUNK)` (of a file longer than one chunk) by
    /// its CV, computed by [`chunk_cv`] from bytes held from an earlier attempt: as if its
    /// bytes had been added, without reporting it again.
    pub(crate) fn add_chunk(&mut self, start: u64, cv: ChainingValue) {
        debug_assert!(start.is_multiple_of(CHUNK) && start + CHUNK <= self.len && self.len > CHUNK);
        self.received += CHUNK;
        self.complete(start, CHUNK, cv);
    }

    /// The aligned chunks completed from bytes since the last call: start offsets and CVs.
    pub(crate) fn take_chunks(&mut self) -> std::vec::Drain<'_, (u64, ChainingValue)> {
        self.chunks.drain(..)
    }

    /// Adds the bytes at `offset` (never added before). Empty buffers from `pool` are used for
    /// new regions and the buffers of completed ones go back to it.
    pub(crate) fn add(&mut self, offset: u64, mut data: &[u8], pool: &mut Vec<Box<[u8]>>) {
        debug_assert!(offset + data.len() as u64 <= self.len);
        self.received += data.len() as u64;
        let mut pos = offset;
        while !data.is_empty() {
            let region = pos / REGION;
            let start = region * REGION;
            let region_len = (self.len - start).min(REGION);
            let at = (pos - start) as usize;
            let n = data.len().min(region_len as usize - at);
            let p = self.partial.entry(region).or_insert_with(|| Partial {
                buf: pool.pop().unwrap_or_else(|| vec![0; REGION as usize].into_boxed_slice()),
                filled: 0,
            });
            p.buf[at..at + n].copy_from_slice(&data[..n]);
            p.filled += n as u64;
            if p.filled == region_len {
                let p = self.partial.remove(&region).expect("present");
                self.complete_region(start, &p.buf[..region_len as usize]);
                if pool.len() < POOL {
                    pool.push(p.buf);
                }
            }
            pos += n as u64;
            data = &data[n..];
        }
    }

    /// A region's bytes are all in: hash it and merge upwards.
    fn complete_region(&mut self, start: u64, bytes: &[u8]) {
        if self.len <= REGION {
            // The whole file is one region: its hash is a root, not a subtree's CV.
            self.root = Some(*blake3::hash(bytes).as_bytes());
            return;
        }
        let cv = blake3::Hasher::new().set_input_offset(start).update(bytes).finalize_non_root();
        self.complete(start, bytes.len() as u64, cv);
    }

    /// Subtree `[start, start + len)` has `cv`: merge it with its sibling while the sibling is
    /// known, else keep it until the sibling arrives.
    fn complete(&mut self, mut start: u64, mut len: u64, mut cv: ChainingValue) {
        loop {
            let Some(parent) = self.parent_of(start, len) else {
                unreachable!("the root is completed by a merge")
            };
            let (p_start, p_len, left_len) = parent;
            let (sibling, is_left) = if start == p_start {
                ((p_start + left_len, p_len - left_len), true)
            } else {
                ((p_start, left_len), false)
            };
            let Some(other) = self.done.remove(&sibling) else {
                self.done.insert((start, len), cv);
                return;
            };
            let (left, right) = if is_left { (cv, other) } else { (other, cv) };
            if p_start == 0 && p_len == self.len {
                self.root = Some(
                    *blake3::hazmat::merge_subtrees_root(&left, &right, Mode::Hash).as_bytes(),
                );
                return;
            }
            cv = merge_subtrees_non_root(&left, &right, Mode::Hash);
            (start, len) = (p_start, p_len);
            if self.report && len == CHUNK && start.is_multiple_of(CHUNK) {
                self.chunks.push((start, cv));
            }
        }
    }

    /// The parent of subtree `[start, start + len)` in the file's tree: its start, length and
    /// the length of its left child. `None` for the root.
    fn parent_of(&self, start: u64, len: u64) -> Option<(u64, u64, u64)> {
        let (mut s, mut l) = (0, self.len);
        let mut parent = None;
        while !(s == start && l == len) {
            if l <= REGION {
                unreachable!("[{start}, +{len}) is not a subtree of a {}-byte file", self.len);
            }
            let left = left_subtree_len(l);
            parent = Some((s, l, left));
            if start < s + left {
                l = left;
            } else {
                s += left;
                l -= left;
            }
        }
        parent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Every size class and block size, blocks in random order (with runs in order, as on a
    /// real path), against `blake3::hash`; buffers end empty.
    #[test]
    fn matches_blake3_in_any_order() {
        let mut next = rng(0x5eed);
        let sizes = [0u64, 1, 1023, 1024, 1025, 8191, 8192, 8193, 16384, 70_000, 300_001, 1 << 20];
        let mut pool = Vec::new();
        for &size in &sizes {
            for &block in &[64u64, 1000, 1413, 8913] {
                let data: Vec<u8> = (0..size).map(|_| next() as u8).collect();
                let want = *blake3::hash(&data).as_bytes();
                let mut blocks: Vec<u64> = (0..size.div_ceil(block)).collect();
                // Swap a fifth of the blocks far away: arrival out of order.
                for i in 0..blocks.len() {
                    if next().is_multiple_of(5) {
                        let j = (next() as usize) % blocks.len();
                        blocks.swap(i, j);
                    }
                }
                let mut h = TreeHasher::new(size);
                for (k, &b) in blocks.iter().enumerate() {
                    assert!(size == 0 || h.finalize().is_none() || k == blocks.len());
                    let start = b * block;
                    let end = (start + block).min(size);
                    h.add(start, &data[start as usize..end as usize], &mut pool);
                }
                assert_eq!(h.finalize(), Some(want), "size {size}, block {block}");
                assert_eq!(h.buffered(), 0);
                assert!(h.done.is_empty());
            }
        }
        assert!(!pool.is_empty() && pool.len() <= POOL, "buffers are reused: {}", pool.len());
    }

    /// Every full aligned chunk is reported once, with the CV [`chunk_cv`] computes from its
    /// bytes; a file hashed partly from bytes and partly from reported chunks (a resumed
    /// attempt) has the same hash, and fed chunks are not reported again.
    #[test]
    fn reports_chunks_and_resumes_from_them() {
        let mut next = rng(42);
        let mut pool = Vec::new();
        for size in [CHUNK + 1, 3 * CHUNK, 5 * CHUNK + 12_345] {
            let data: Vec<u8> = (0..size).map(|_| next() as u8).collect();
            let want = *blake3::hash(&data).as_bytes();
            let mut h = TreeHasher::new(size).reporting();
            // Backwards in 8913-byte blocks: chunks complete out of order.
            let starts: Vec<u64> = (0..size.div_ceil(8913)).rev().map(|b| b * 8913).collect();
            let mut got = Vec::new();
            for s in starts {
                let e = (s + 8913).min(size);
                h.add(s, &data[s as usize..e as usize], &mut pool);
                got.extend(h.take_chunks());
            }
            assert_eq!(h.finalize(), Some(want));
            got.sort();
            let full = size / CHUNK;
            assert_eq!(got.len() as u64, full, "size {size}");
            for (k, (start, cv)) in got.iter().enumerate() {
                assert_eq!(*start, k as u64 * CHUNK);
                let bytes = &data[*start as usize..(*start + CHUNK) as usize];
                assert_eq!(*cv, chunk_cv(*start, bytes));
            }
            // Resume: the even chunks from their CVs, everything else from bytes.
            let mut h = TreeHasher::new(size).reporting();
            let mut reported = 0;
            for (start, cv) in got.iter().step_by(2) {
                h.add_chunk(*start, *cv);
            }
            let mut s = 0;
            while s < size {
                let k = s / CHUNK;
                if k < full && k.is_multiple_of(2) {
                    s += CHUNK;
                    continue;
                }
                let e = if k < full { s + CHUNK } else { size };
                h.add(s, &data[s as usize..e as usize], &mut pool);
                reported += h.take_chunks().count();
                s = e;
            }
            assert_eq!(h.finalize(), Some(want), "resumed, size {size}");
            assert_eq!(reported as u64, full / 2, "only the chunks added as bytes are reported");
        }
    }

    /// In order, only one region is ever partly filled.
    #[test]
    fn in_order_holds_one_region() {
        let data = vec![7u8; 1 << 20];
        let mut h = TreeHasher::new(data.len() as u64);
        let mut pool = Vec::new();
        for (i, block) in data.chunks(1413).enumerate() {
            h.add(i as u64 * 1413, block, &mut pool);
            assert!(h.buffered() <= REGION as usize);
        }
        assert_eq!(h.finalize(), Some(*blake3::hash(&data).as_bytes()));
    }
}
