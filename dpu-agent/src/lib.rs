//! The DPU agent: the embedded store, the v1 API server with mutual TLS, the
//! reconcile engine and its controllers, and the dev-mode bootstrap. The
//! binaries in `src/bin` are thin wrappers over this library. See README.md.

pub mod admission;
pub mod agent;
pub mod config;
pub mod dev;
pub mod metrics;
pub mod pki;
pub mod reconcile;
pub mod server;
pub mod store;
pub mod time;
