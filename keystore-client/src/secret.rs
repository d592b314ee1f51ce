//! Secret-holding types: defined once in `ferry-keys`, re-exported here.

pub use ferry_keys::{Key32, SecretBytes};

/// Length in bytes of every key Ferry's keystore generates (256 bits).
pub const GENERATED_SECRET_LEN: usize = 32;
