//! The key types Ferry's at-rest format (`ferry-engine`) and its keystore (`ferry-keystore`)
//! share, defined once:
//!
//! - [`SecretBytes`] and [`Key32`]: secret material, zeroized on drop, redacted in `Debug`,
//!   never `Clone`.
//! - [`KeyState`] and [`Operation`]: a secret version's lifecycle (NIST SP 800-57 Part 1 §7)
//!   and what each state allows.
//! - [`Argon2Params`]: the bounded Argon2id cost of a passphrase, and the derivation.
//! - [`KeyResolver`]: how the at-rest code asks a keystore for a secret, so that the engine
//!   does not depend on the keystore (the keystore implements it).
//! - [`check_user_name`]: what a user name may be, for the keystore and for set-up alike.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod argon2id;
mod resolver;
mod secret;
mod state;
mod user;

pub use argon2id::{Argon2Params, KdfError};
pub use resolver::{KeyResolver, ResolveError, ResolvedKey};
pub use secret::{Key32, SecretBytes, fill_random};
pub use state::{KeyState, Operation};
pub use user::{MAX_USER_NAME, check_user_name};
