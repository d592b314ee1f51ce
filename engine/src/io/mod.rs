//! Drivers that connect the sans-IO sessions to real files and a real UDP socket.
//!
//! - [`files`]: a memory-mapped [`BlockSource`](crate::session::BlockSource) for the sender and
//!   a [`BlockSink`](crate::session::BlockSink) that writes positioned into unique partial files,
//!   confined to a destination directory, and renames them into place once verified.
//! - [`driver`]: the loop that runs one session on one connected UDP socket in its own thread.
//!
//! This is the engine's only module with `unsafe` code (mapping a file and releasing its pages,
//! see [`files::MmapSource`]).

pub mod driver;
pub mod files;
