//! Fuzzes the keystore key-file parser (root stash / local key file): arbitrary bytes must be
//! rejected or parsed without panicking, and parsing never runs the KDF (bounded work).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kf) = ferry_keystore::keyfile::KeyFile::parse(data) {
        // A parsed file is exactly the fixed size and names a keystore.
        assert_eq!(data.len(), ferry_keystore::keyfile::KEY_FILE_LEN);
        let _ = (kf.kind(), kf.keystore_id(), kf.is_protected());
    }
});
