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
    NewSlot, ResolveError, ResolvedKey, SEGMENT_SIZE, SecretBytes, StreamEncryptor, apply_plan,
    envelope_len, read_header,
};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// 64 MiB per iteration for the whole-file runs.
const BYTES: usize = 64 << 20;

/// Per-core crypto cost of one 64 KiB segment with cache-resident buffers (the way the stream
/// encryptor and the reader work: read into a segment buffer, seal/open, write out), Ferry next
/// to ring's AES-256-GCM doing the same work. Both open paths copy the sealed segment into the
/// work buffer first (as a reader does when it reads the segment).
fn segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("atrest_segment_64KiB");
    g.throughput(Throughput::Bytes(SEGMENT_SIZE as u64));
    let len = 1u64 << 30;
    let (_, mut cipher) = EnvelopeBuilder::new(len)
        .slot(NewSlot::Passphrase { passphrase: b"bench", params: Argon2Params::MIN })
        .build()
        .unwrap();
    let pt = vec![0x5au8; SEGMENT_SIZE];
    let mut out = vec![0u8; ENC_SEGMENT_SIZE];
    let mut i = 0u64;
    g.bench_function("ferry_seal", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            black_box(cipher.seal(i, &pt, &mut out).unwrap());
        })
    });
    let mut sealed = vec![0u8; ENC_SEGMENT_SIZE];
    cipher.seal(7, &pt, &mut sealed).unwrap();
    let mut work = vec![0u8; ENC_SEGMENT_SIZE];
    g.bench_function("ferry_open", |b| {
        b.iter(|| {
            work.copy_from_slice(&sealed);
            black_box(cipher.open(7, &mut work).unwrap());
        })
    });

    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut buf = pt.clone();
    g.bench_function("ring_seal", |b| {
        b.iter(|| {
            key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([1; 12]),
                Aad::from([0u8; 9]),
                &mut buf,
            )
            .unwrap()
        })
    });
    let mut ring_sealed = pt.clone();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key([2; 12]),
            Aad::from([0u8; 9]),
            &mut ring_sealed,
        )
        .unwrap();
    g.bench_function("ring_open", |b| {
        b.iter(|| {
            buf.copy_from_slice(&ring_sealed);
            black_box(
                key.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key([2; 12]),
                    Aad::from([0u8; 9]),
                    tag,
                    &mut buf,
                    0..,
                )
                .expect("authentic"),
            );
        })
    });
    g.finish();
}

/// Whole 64 MiB files through the public streaming APIs (memory traffic included): the stream
/// encryptor writing to a sink, and the random-access reader decrypting everything to a sink.
fn file(c: &mut Criterion) {
    let mut g = c.benchmark_group("atrest_file_64MiB");
    g.throughput(Throughput::Bytes(BYTES as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let pt = vec![0x5au8; BYTES];
    let build = || {
        EnvelopeBuilder::new(BYTES as u64)
            .slot(NewSlot::Passphrase { passphrase: b"bench", params: Argon2Params::MIN })
            .build()
            .unwrap()
    };
    let (header, cipher) = build();
    let mut enc = StreamEncryptor::new(
        Vec::with_capacity(envelope_len(BYTES as u64) as usize),
        &header,
        cipher,
    )
    .unwrap();
    enc.update(&pt).unwrap();
    let env = enc.finish().unwrap();
    g.bench_function("ferry_stream_encrypt", |b| {
        b.iter_batched(
            build,
            |(header, cipher)| {
                let mut enc = StreamEncryptor::new(std::io::sink(), &header, cipher).unwrap();
                for chunk in pt.chunks(1 << 20) {
                    enc.update(chunk).unwrap();
                }
                enc.finish().unwrap();
            },
            BatchSize::PerIteration,
        )
    });
    let key = Header::parse(&env).unwrap().unlock_with_passphrase(b"bench").unwrap();
    let mut reader = EnvelopeReader::new(Cursor::new(&env), key).unwrap();
    g.bench_function("ferry_reader_decrypt", |b| {
        b.iter(|| black_box(reader.decrypt_to(&mut std::io::sink()).unwrap()))
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
    for (name, params) in
        [("default_64MiB_t3_p4", Argon2Params::DEFAULT), ("minimum_19MiB_t2_p1", Argon2Params::MIN)]
    {
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

criterion_group!(benches, segment, components, file, rewrap, argon2);
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
