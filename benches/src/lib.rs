//! Benchmarks for Ferry live in `benches/` (criterion) and in this crate's binaries
//! (side-by-side comparison runners). See `BENCHMARKS.md` at the workspace root.
#![forbid(unsafe_code)]
