//! Fuzz the at-rest envelope header parser (`docs/FORMAT.md` §3–4) and everything reachable
//! from an untrusted header without a passphrase: slot parsing and bounds checks, keystore-slot
//! unwrapping, commitment verification and the envelope-length checks of the reader.
//!
//! `cargo fuzz run atrest_header` (from `fuzz/`).
#![no_main]

use std::io::Cursor;

use ferry_engine::atrest::{
    EnvelopeReader, Header, KeyResolver, KeyState, ResolveError, ResolvedKey, SecretBytes, read_header,
};
use libfuzzer_sys::fuzz_target;

/// Resolves every keystore slot to a fixed secret (so unwrapping runs, and usually fails).
struct Fixed;

impl KeyResolver for Fixed {
    fn resolve(&self, _: &str, _: &str, version: u32) -> Result<ResolvedKey, ResolveError> {
        Ok(ResolvedKey { secret: SecretBytes::new(vec![version as u8; 32]), state: KeyState::Active })
    }
    fn active_version(&self, _: &str, _: &str) -> Result<u32, ResolveError> {
        Ok(1)
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = Header::parse(data);
    let mut r = data;
    let streamed = read_header(&mut r);
    assert_eq!(parsed.is_ok(), streamed.is_ok());
    if let Ok(h) = parsed {
        assert!(!h.slots().is_empty());
        let _ = h.envelope_len();
        // Passphrase slots are not tried here (Argon2id is too slow for fuzzing); their bounds
        // were checked by `parse`.
        if let Ok(key) = h.unlock_with_keystore(&Fixed) {
            if let Ok(mut reader) = EnvelopeReader::new(Cursor::new(data), key) {
                let _ = reader.segment(0);
            }
        }
    }
});
