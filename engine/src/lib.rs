//! Ferry's transfer engine.
//!
//! The protocol core is sans-IO: the session state machines in [`session`] take datagrams and
//! the current time as arguments and hand back datagrams to send, the next deadline and events.
//! They never read a clock or touch a socket, so every behaviour is testable deterministically
//! in simulated time (see `tests/sim.rs`).
//!
//! The wire format is specified in `docs/PROTOCOL.md` at the workspace root.
// `unsafe` is denied everywhere. (Source files are read with `pread`, not mapped: a mapping of a
// file another process can truncate cannot be made safe; see `io::source`.)
#![deny(unsafe_code)]

/// The protocol version this implementation speaks: the version byte of every data-path header
/// (docs/PROTOCOL.md section 3) and the version set-up negotiates (section 8.2). One number
/// for the whole protocol. Version 2: per-file failures (FILE_RESULT with a reason,
/// FILE_ABANDON). Version 3: the client names its transfer user in CLIENT_HELLO; the receiver's
/// RATE_LIMIT.
pub const PROTOCOL_VERSION: u8 = 3;

pub mod atrest;
pub mod control;
pub mod crypto;
pub mod io;
pub mod rate;
pub mod session;
pub mod setup;
pub mod sim;
pub mod wire;
