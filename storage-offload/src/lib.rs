//! Storage offload: volumes realized on a block backend. See README.md.
//!
//! - [`model`]: backend-level types and the names of what the agent creates;
//! - [`plan`]: pure (desired volumes, observed backend) → ordered actions;
//! - [`spdk`]: SPDK/SNAP JSON-RPC client;
//! - [`nvmet`]: the kernel backend (nvmet configfs, NVMe/TCP initiator);
//! - [`apply`]: the [`apply::BlockBackend`] trait and its two implementations.

pub mod apply;
pub mod model;
pub mod nvmet;
pub mod plan;
pub mod spdk;
pub use dpu_timing as timing;
