//! The DPU agent: the embedded store, the v1 API server with mutual TLS, the
//! reconcile engine and its controllers, and (feature `dev`, on by default)
//! the dev-mode bootstrap. The binaries in `src/bin` are thin wrappers over
//! this library. See README.md.

pub mod admission;
pub mod agent;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod metrics;
pub mod reconcile;
pub mod sd_notify;
pub mod server;
pub mod store;
pub mod time;

/// The project's one error-chain printer (`error: cause: cause`).
pub use dpu_api::error_chain;
