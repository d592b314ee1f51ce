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

pub mod atrest;
pub mod control;
pub mod crypto;
pub mod io;
pub mod rate;
pub mod session;
pub mod setup;
pub mod sim;
pub mod wire;
