//! IPsec (XFRM) and TLS offload for the DPU agent. See README.md.
//!
//! - [`keys`]: zeroizing key buffers, hex parsing.
//! - [`model`]: a tunnel as desired, with keys opened.
//! - [`xfrm`]: the XFRM netlink protocol and a socket.
//! - [`plan`]: pure diff of desired tunnels against observed SAs/policies.
//! - [`apply`]: actions → kernel, behind [`apply::IpsecBackend`].
//! - [`tls`]: the TLS-terminating proxy.
//! - [`netns`]: a thread parked in another network namespace that makes
//!   sockets there (the proxy's tenant context).

pub mod apply;
pub mod keys;
pub mod model;
pub mod mtls;
pub mod netns;
pub mod plan;
pub use dpu_timing as timing;
pub mod tls;
pub mod xfrm;
