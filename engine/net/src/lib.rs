//! Ferry's transfer library: the network layer over the sans-IO engine (`ferry-engine`), in the
//! way quinn sits over quinn-proto.
//!
//! - [`client`]: connect to a server whose key is pinned, authenticate, run one upload or
//!   download ([`client::transfer`]), with typed errors ([`client::ClientError`]).
//! - [`server`]: accept sessions on one UDP port under limits, authenticate, hand each to a
//!   [`server::Policy`] that decides who the client is and where its files live.
//! - [`tls`]: QUIC and TLS 1.3 configuration, the pinned-key verifier.
//! - [`identity`], [`authorized_keys`], [`known_hosts`]: ed25519 keys in OpenSSH formats.
//! - [`bridge`]: the control stream to data-thread bridge (bounded queues, cancellation).
//! - [`sockets`]: the shared-port UDP sockets.
//! - [`limits`]: what a server allows before and after authentication.
//! - [`users`]: the server's transfer users (docroot, keys, rights), the policy of `ferry
//!   serve`.
//!
//! The engine's sans-IO core builds and is tested without any of this (`cargo test -p
//! ferry-engine`). Logs go through `tracing`.
#![forbid(unsafe_code)]

pub mod authorized_keys;
pub mod bridge;
pub mod client;
pub mod doctor;
pub mod identity;
pub mod known_hosts;
pub mod limits;
pub mod multi;
pub mod server;
pub mod sockets;
pub mod tls;
pub mod users;
