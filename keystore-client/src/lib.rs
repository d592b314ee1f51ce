//! Ferry's local keystore (root and per-user SQLite keystores of wrapped secrets).
//!
//! Not built yet: see the keystore issue. This crate exists so the workspace has its final shape.
#![forbid(unsafe_code)]
