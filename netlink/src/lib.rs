//! One netlink layer for the control plane's netlink peers (XFRM in
//! `dpu-crypto`, devlink and rtnetlink in `net-offload`, tc in
//! `storage-offload`, the tenant namespaces' rtnetlink in `dpu-agent`):
//!
//! - [`msg`]: the message header, and the decoding of the kernel's answers
//!   to one request ([`msg::Exchange`]: sequence matching, `NLMSG_ERROR`,
//!   `NLMSG_DONE`, `NLM_F_MULTI`), pure and panic-free on any bytes;
//! - [`attr`]: one attribute writer and one attribute reader;
//! - [`genl`]: the generic netlink header and family id lookup;
//! - [`Socket`]: a blocking netlink socket of any protocol, optionally in
//!   another network namespace, with an optional receive timeout. The only
//!   `unsafe` code of the crate is there.
//!
//! Depends on `libc` and `thiserror` only.

pub mod attr;
mod error;
pub mod genl;
pub mod msg;
mod socket;

pub use error::Error;
pub use msg::{Exchange, Header};
pub use socket::Socket;

/// `NETLINK_ROUTE` (rtnetlink: links, addresses, routes, tc).
pub const NETLINK_ROUTE: i32 = 0;
/// `NETLINK_XFRM` (IPsec SAs and policies).
pub const NETLINK_XFRM: i32 = 6;
/// `NETLINK_GENERIC` (generic netlink: devlink and others).
pub const NETLINK_GENERIC: i32 = 16;
