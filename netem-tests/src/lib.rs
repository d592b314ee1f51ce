//! WAN test bench for Ferry: isolated test hosts (network namespaces), two link back-ends
//! (kernel `tc netem` where the kernel has it, else Ferry's own user-space link emulator
//! `ferry-linkem` over TUN devices), peer tools as benchmark rows, and the benchmark grid
//! (`wan-grid`). See `BENCHMARKS.md` ("WAN") for the commands and the measured figures.
#![forbid(unsafe_code)]

pub mod emulator;
pub mod error;
pub mod ferry;
pub mod grid;
pub mod model;
pub mod netns;
pub mod peers;
pub mod probe;
pub mod rng;
pub mod share;
pub mod svg;
pub mod testbed;

pub use emulator::{DirectionStats, LinkConfig, LinkStats};
pub use error::NetemError;
pub use model::{DirectionConfig, GilbertElliott};
pub use testbed::{BackendChoice, BackendKind, Testbed, TestbedOptions};
