//! At-rest envelope benchmarks (issue 6): segment encrypt/decrypt throughput next to ring's
//! AES-256-GCM on the same 64 KiB segments, rewrap time for a 1 MiB file and a 10 GiB sparse
//! file, and the Argon2id cost of one passphrase slot.
//!
//! `cargo bench -p ferry-benches --bench atrest`; figures are recorded in BENCHMARKS.md.

use std::cell::Cell;
use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_engine::atrest::{
    Argon2Params, ENC_SEGMENT_SIZE, EnvelopeBuilder, EnvelopeReader, Header, KeyResolver, KeyState,
    NewSlot, ResolveError, ResolvedKey, SEGMENT_SIZE, SecretBytes, apply_plan, envelope_len,
    read_header,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// 64 MiB per iteration: large enough to stream through caches like a large file does.
const BYTES: usize = 64 << 20;
const SEGMENTS: usize = BYTES / SEGMENT_SIZE;

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("atrest_64KiB_segments");
    g.throughput(Throughput::Bytes(BYTES as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    let pt = vec![0x5au8; BYTES];

    // Ferry: seal every segment of a 64 MiB file (random IV, GCM, per-group key cached).
    let (header, mut cipher) = EnvelopeBuilder::new(BYTES as u64)
        .slot(NewSlot::Passphrase { passphrase: b"bench", params: Argon2Params::MINIMUM })
        .build()
        .unwrap();
    let mut env = vec![0u8; envelope_len(BYTES as u64) as usize];
    env[..1024].copy_from_slice(header.as_bytes());
    g.bench_function("ferry_encrypt", |b| {
        b.iter(|| {
            for i in 0..SEGMENTS {
                let off = 1024 + i * ENC_SEGMENT_SIZE;
                cipher
                    .seal(
                        i as u64,
                        &pt[i * SEGMENT_SIZE..(i + 1) * SEGMENT_SIZE],
                        &mut env[off..off + ENC_SEGMENT_SIZE],
                    )
                    .unwrap();
            }
            black_box(&env);
        })
    });

    // Ferry: authenticate + decrypt every segment through the random-access reader (copies
    // each segment once from the source, like reading a file).
    let key = Header::parse(&env).unwrap().unlock_with_passphrase(b"bench").unwrap();
    let mut reader = EnvelopeReader::new(Cursor::new(&env), key).unwrap();
    g.bench_function("ferry_decrypt", |b| {
        b.iter(|| {
            for i in 0..SEGMENTS as u64 {
                black_box(reader.segment(i).unwrap());
            }
        })
    });

    // ring AES-256-GCM on the same segment sizes, in place (no copy).
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut buf = pt.clone();
    let mut tags = Vec::with_capacity(SEGMENTS);
    g.bench_function("ring_seal", |b| {
        b.iter(|| {
            tags.clear();
            for (i, chunk) in buf.chunks_mut(SEGMENT_SIZE).enumerate() {
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&(i as u64).to_be_bytes());
                tags.push(
                    key.seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from([0u8; 9]),
                        chunk,
                    )
                    .unwrap(),
                );
            }
        })
    });
    g.bench_function("ring_open", |b| {
        b.iter_batched_ref(
            || buf.clone(),
            |data| {
                for (i, chunk) in data.chunks_mut(SEGMENT_SIZE).enumerate() {
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
                    // `buf` holds the output of the last sealing pass and `tags` its tags, so
                    // every open authenticates.
                    black_box(key.open_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from([0u8; 9]),
                        tags[i],
                        chunk,
                        0..,
                    ))
                    .expect("authentic");
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// A bench-local keystore: one owner/category with a version that can be bumped.
struct BenchResolver {
    active: Cell<u32>,
}

impl KeyResolver for BenchResolver {
    fn resolve(&self, _: &str, _: &str, version: u32) -> Result<ResolvedKey, ResolveError> {
        Ok(ResolvedKey {
            secret: SecretBytes::new(vec![version as u8; 32]),
            state: KeyState::Active,
        })
    }
    fn active_version(&self, _: &str, _: &str) -> Result<u32, ResolveError> {
        Ok(self.active.get())
    }
}

fn rewrap(c: &mut Criterion) {
    let mut g = c.benchmark_group("atrest_rewrap");
    g.sample_size(30);
    let dir = tempfile::tempdir().unwrap();
    let resolver = BenchResolver { active: Cell::new(1) };
    for (name, len) in [("1MiB", 1u64 << 20), ("10GiB_sparse", 10u64 << 30)] {
        let path = dir.path().join(name);
        let (header, _) = EnvelopeBuilder::new(len)
            .slot(NewSlot::Keystore { resolver: &resolver, owner: "bench", category: "ssear" })
            .build()
            .unwrap();
        let f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &f, header.as_bytes()).unwrap();
        // Segments are never read by a rewrap: a sparse file of the right length is enough.
        f.set_len(envelope_len(len)).unwrap();
        drop(f);
        g.bench_function(name, |b| {
            b.iter(|| {
                resolver.active.set(resolver.active.get() + 1);
                let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
                let h = read_header(&mut f).unwrap();
                let key = h.unlock_with_keystore(&resolver).unwrap();
                let idx = h.slots()[0].index;
                let plan = h
                    .plan_rewrap(
                        &key,
                        &[idx],
                        &[NewSlot::Keystore {
                            resolver: &resolver,
                            owner: "bench",
                            category: "ssear",
                        }],
                    )
                    .unwrap();
                black_box(apply_plan(&mut f, &h, &plan).unwrap());
            })
        });
    }
    g.finish();
}

fn argon2(c: &mut Criterion) {
    let mut g = c.benchmark_group("atrest_argon2id_slot");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, params) in [
        ("default_64MiB_t3_p4", Argon2Params::DEFAULT),
        ("minimum_19MiB_t2_p1", Argon2Params::MINIMUM),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    EnvelopeBuilder::new(0)
                        .slot(NewSlot::Passphrase { passphrase: b"bench", params })
                        .build()
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, throughput, components, rewrap, argon2);
criterion_main!(benches);

/// Where the time goes: the two passes of RustCrypto's GCM measured on their own.
fn components(c: &mut Criterion) {
    use aes::cipher::{KeyIvInit, StreamCipher};
    use ghash::universal_hash::UniversalHash;
    let mut g = c.benchmark_group("atrest_gcm_components_64KiB");
    g.throughput(Throughput::Bytes(SEGMENT_SIZE as u64));
    let mut buf = vec![0x11u8; SEGMENT_SIZE];
    g.bench_function("aes256_ctr32_keystream", |b| {
        b.iter(|| {
            let mut ctr = ctr::Ctr32BE::<aes::Aes256>::new(&[1u8; 32].into(), &[2u8; 16].into());
            ctr.apply_keystream(&mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("ghash", |b| {
        b.iter(|| {
            let mut gh = ghash::GHash::new(&[3u8; 16].into());
            gh.update_padded(&buf);
            black_box(gh.finalize());
        })
    });
    g.finish();
}
