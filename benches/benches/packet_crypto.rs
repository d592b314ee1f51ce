//! Packet seal and open throughput for every transit cipher suite at 1200-, 1472- and
//! 8972-byte datagram payloads, with ring's AES-GCM (the fastest Rust AES-GCM; stitched assembly)
//! and RustCrypto's `aes-gcm` measured in the same groups as references.
//!
//! `cargo bench -p ferry-benches --bench packet_crypto`

use std::hint::black_box;

use aes_gcm::aead::{AeadInOut, KeyInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferry_engine::crypto::{CipherSuite, Direction, PacketProtection, SessionSecret, TAG_LEN};
use ferry_engine::wire::HEADER_LEN;
use ring::aead;

const PAYLOADS: [usize; 3] = [1200, 1472, 8972];

fn seal_open(c: &mut Criterion) {
    let secret = SessionSecret::new([1; 32]);
    for op in ["seal", "open"] {
        let mut group = c.benchmark_group(format!("packet_{op}"));
        for &size in &PAYLOADS {
            // `size` is the whole UDP payload: header, body and tag.
            let body = size - HEADER_LEN - TAG_LEN;
            group.throughput(Throughput::Bytes(body as u64));
            for suite in CipherSuite::ALL {
                let mut tx = PacketProtection::new(&secret, suite, Direction::Data);
                let mut rx = PacketProtection::new(&secret, suite, Direction::Data);
                let mut packet = vec![0u8; size];
                let mut pn = 0u64;
                let id = BenchmarkId::new(format!("ferry-{}", suite.name()), size);
                if op == "seal" {
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            pn += 1;
                            tx.seal(pn, black_box(&mut packet), HEADER_LEN).unwrap();
                        })
                    });
                } else {
                    tx.seal(7, &mut packet, HEADER_LEN).unwrap();
                    let sealed = packet.clone();
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            packet.copy_from_slice(&sealed);
                            rx.open(7, black_box(&mut packet), HEADER_LEN, 0).unwrap();
                        })
                    });
                }
            }
            for (name, alg) in
                [("ring-aes128", &aead::AES_128_GCM), ("ring-aes256", &aead::AES_256_GCM)]
            {
                let key = aead::LessSafeKey::new(
                    aead::UnboundKey::new(alg, &vec![7u8; alg.key_len()]).unwrap(),
                );
                let mut packet = vec![0u8; size];
                let id = BenchmarkId::new(name, size);
                let nonce = || aead::Nonce::assume_unique_for_key([3; 12]);
                if op == "seal" {
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            let (header, rest) = packet.split_at_mut(HEADER_LEN);
                            let (body, tag_out) = rest.split_at_mut(body);
                            let tag = key
                                .seal_in_place_separate_tag(
                                    nonce(),
                                    aead::Aad::from(&*header),
                                    body,
                                )
                                .unwrap();
                            tag_out.copy_from_slice(tag.as_ref());
                        })
                    });
                } else {
                    let (header, rest) = packet.split_at_mut(HEADER_LEN);
                    let (body_buf, tag_out) = rest.split_at_mut(body);
                    let tag = key
                        .seal_in_place_separate_tag(nonce(), aead::Aad::from(&*header), body_buf)
                        .unwrap();
                    tag_out.copy_from_slice(tag.as_ref());
                    let sealed = packet.clone();
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            packet.copy_from_slice(&sealed);
                            let (header, rest) = packet.split_at_mut(HEADER_LEN);
                            key.open_in_place(nonce(), aead::Aad::from(&*header), rest).unwrap();
                        })
                    });
                }
            }
            {
                let cipher = aes_gcm::Aes128Gcm::new(&[9u8; 16].into());
                let mut packet = vec![0u8; size];
                let id = BenchmarkId::new("rustcrypto-aes-gcm-128", size);
                let nonce = aes_gcm::Nonce::from([5u8; 12]);
                if op == "seal" {
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            let (header, rest) = packet.split_at_mut(HEADER_LEN);
                            let (body_buf, tag_out) = rest.split_at_mut(body);
                            let tag = cipher
                                .encrypt_inout_detached(&nonce, header, body_buf.into())
                                .unwrap();
                            tag_out.copy_from_slice(&tag);
                        })
                    });
                } else {
                    let (header, rest) = packet.split_at_mut(HEADER_LEN);
                    let (body_buf, tag_out) = rest.split_at_mut(body);
                    let tag =
                        cipher.encrypt_inout_detached(&nonce, header, body_buf.into()).unwrap();
                    tag_out.copy_from_slice(&tag);
                    let sealed = packet.clone();
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            packet.copy_from_slice(&sealed);
                            let (header, rest) = packet.split_at_mut(HEADER_LEN);
                            let (body_buf, tag_in) = rest.split_at_mut(body);
                            let tag = aes_gcm::Tag::try_from(&*tag_in).unwrap();
                            cipher
                                .decrypt_inout_detached(&nonce, header, body_buf.into(), &tag)
                                .unwrap();
                        })
                    });
                }
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = seal_open
}
criterion_main!(benches);
