//! Known-answer test for the envelope format: the worked example in `docs/FORMAT.md`.
//! The expected values live in `tests/data/atrest_vector.json` (and in the document).

use ferry_engine::atrest::{
    Argon2Params, EnvelopeBuilder, Header, KeyResolver, KeyState, NewSlot, ResolveError,
    ResolvedKey, SecretBytes, SlotRandom, StreamDecryptor,
};
use sha2::{Digest, Sha256};

const PASSPHRASE: &[u8] = b"correct horse battery staple";

fn seq(start: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| start.wrapping_add(i as u8)).collect()
}

fn plaintext() -> Vec<u8> {
    (0..70_000u32).map(|i| (i % 251) as u8).collect()
}

/// Build the worked example deterministically; returns (envelope bytes, named values).
fn build() -> (Vec<u8>, Vec<(&'static str, String)>) {
    let dek: [u8; 32] = seq(0x00, 32).try_into().unwrap();
    let file_id: [u8; 16] = seq(0xa0, 16).try_into().unwrap();
    let rnd = SlotRandom {
        salt: seq(0x10, 16).try_into().unwrap(),
        nonce: seq(0xc0, 12).try_into().unwrap(),
    };
    let pt = plaintext();
    let (header, mut cipher) = EnvelopeBuilder::new(pt.len() as u64)
        .fixed_for_test_vectors(
            dek,
            file_id,
            NewSlot::Passphrase { passphrase: PASSPHRASE, params: Argon2Params::MIN },
            rnd,
        )
        .build()
        .unwrap();
    let mut env = header.as_bytes().to_vec();
    let mut out = vec![0u8; 65_536 + 28];
    let n0 =
        cipher.seal_with_iv(0, seq(0xd0, 12).try_into().unwrap(), &pt[..65_536], &mut out).unwrap();
    env.extend_from_slice(&out[..n0]);
    let n1 =
        cipher.seal_with_iv(1, seq(0xe0, 12).try_into().unwrap(), &pt[65_536..], &mut out).unwrap();
    env.extend_from_slice(&out[..n1]);
    let seg0 = &env[1024..1024 + n0];
    let values = vec![
        ("header_0_128", hex::encode(&env[..128])),
        ("slot0", hex::encode(&env[128..320])),
        ("seg0_first_48", hex::encode(&seg0[..48])),
        ("seg0_tag", hex::encode(&seg0[seg0.len() - 16..])),
        ("seg1_tag", hex::encode(&env[env.len() - 16..])),
        ("envelope_len", env.len().to_string()),
        ("envelope_sha256", hex::encode(Sha256::digest(&env))),
    ];
    (env, values)
}

#[test]
fn worked_example_matches_recorded_vector() {
    let (env, values) = build();
    let recorded: serde_json::Value =
        serde_json::from_str(include_str!("data/atrest_vector.json")).expect("vector file parses");
    for (name, value) in &values {
        assert_eq!(recorded[name].as_str(), Some(value.as_str()), "vector field {name}");
    }
    // And it decrypts with the passphrase to the documented plaintext.
    let header = Header::parse(&env).unwrap();
    let key = header.unlock_with_passphrase(PASSPHRASE).unwrap();
    assert_eq!(hex::encode(key.expose_dek()), hex::encode(seq(0, 32)));
    let mut dec = StreamDecryptor::new(&env[1024..], key);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut dec, &mut out).unwrap();
    assert_eq!(out, plaintext());
}

/// Prints the values (run with `--ignored --nocapture` to regenerate the vector file).
#[test]
#[ignore]
fn print_worked_example() {
    let (_, values) = build();
    let map: serde_json::Map<String, serde_json::Value> =
        values.into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
    println!("{}", serde_json::to_string_pretty(&map).unwrap());
}

/// A keystore that holds one secret: alice/ssear v3 = 0x42 × 32, active.
struct OneSecret;

impl KeyResolver for OneSecret {
    fn resolve(
        &self,
        owner: &str,
        category: &str,
        version: u32,
    ) -> Result<ResolvedKey, ResolveError> {
        if (owner, category, version) == ("alice", "ssear", 3) {
            Ok(ResolvedKey { secret: SecretBytes::new(vec![0x42; 32]), state: KeyState::Active })
        } else {
            Err(ResolveError::NotFound {
                owner: owner.into(),
                category: category.into(),
                version: version.to_string(),
            })
        }
    }
    fn active_version(&self, _: &str, _: &str) -> Result<u32, ResolveError> {
        Ok(3)
    }
}

/// Second worked example (docs/FORMAT.md §10.2): a keystore slot and a one-segment file.
fn build_keystore() -> (Vec<u8>, Vec<(&'static str, String)>) {
    let rnd = SlotRandom {
        salt: seq(0x20, 16).try_into().unwrap(),
        nonce: seq(0x30, 12).try_into().unwrap(),
    };
    let pt = b"hello, keystore";
    let (header, mut cipher) = EnvelopeBuilder::new(pt.len() as u64)
        .fixed_for_test_vectors(
            seq(0x00, 32).try_into().unwrap(),
            seq(0xb0, 16).try_into().unwrap(),
            NewSlot::Keystore { resolver: &OneSecret, owner: "alice", category: "ssear" },
            rnd,
        )
        .build()
        .unwrap();
    let mut env = header.as_bytes().to_vec();
    let mut out = vec![0u8; 64];
    let n = cipher.seal_with_iv(0, seq(0x40, 12).try_into().unwrap(), pt, &mut out).unwrap();
    env.extend_from_slice(&out[..n]);
    let values = vec![
        ("header_0_128", hex::encode(&env[..128])),
        ("slot0", hex::encode(&env[128..320])),
        ("segment0", hex::encode(&env[1024..])),
        ("envelope_sha256", hex::encode(Sha256::digest(&env))),
    ];
    (env, values)
}

#[test]
fn keystore_example_matches_recorded_vector() {
    let (env, values) = build_keystore();
    let recorded: serde_json::Value =
        serde_json::from_str(include_str!("data/atrest_vector_keystore.json")).expect("parses");
    for (name, value) in &values {
        assert_eq!(recorded[name].as_str(), Some(value.as_str()), "vector field {name}");
    }
    let key = Header::parse(&env).unwrap().unlock_with_keystore(&OneSecret).unwrap();
    let mut dec = StreamDecryptor::new(&env[1024..], key);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut dec, &mut out).unwrap();
    assert_eq!(out, b"hello, keystore");
}

#[test]
#[ignore]
fn print_keystore_example() {
    let (_, values) = build_keystore();
    let map: serde_json::Map<String, serde_json::Value> =
        values.into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
    println!("{}", serde_json::to_string_pretty(&map).unwrap());
}
