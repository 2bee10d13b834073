//! Network offload for the DPU agent: a native OVSDB (RFC 7047) client, a native
//! OpenFlow 1.4 codec and client, and, with the `sandbox` feature, a private
//! Open vSwitch sandbox used by `dpu-agent dev` and by tests. See README.md.

pub mod functions;
pub mod openflow;
pub mod ovsdb;
pub mod pipeline;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod switch;
pub use dpu_timing as timing;
pub mod unixctl;
