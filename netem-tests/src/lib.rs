//! WAN test bench: network namespaces, tc/netem or Ferry's own link emulator, the benchmark grid.
//!
//! Not built yet: see the WAN test bench issue.
#![forbid(unsafe_code)]
