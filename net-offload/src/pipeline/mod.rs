//! The tenant-network pipeline compiler (pure, no I/O): desired networks,
//! ports and endpoints → the bridge's flows and meters, and the canonical
//! diff against a flow dump. The table layout and the cookie scheme are in
//! README.md, section "Pipeline"; [`crate::switch`] applies the result.
//!
//! Limits: IPv4 only (IPv6 from a port is dropped by anti-spoofing); no
//! broadcast or multicast forwarding at all (ARP is answered by the switch,
//! there is no DHCP); one tunnel port per encapsulation.

pub mod compile;
pub mod cookie;
pub mod diff;
pub mod incremental;
pub mod model;
pub mod ranges;

pub use compile::{
    CompiledPipeline, OwnedFlow, REG_DST_PORT, REG_SRC_PORT, Segment, compile, compile_segment,
    meter_id, skeleton, table,
};
pub use cookie::{AGENT_COOKIE, AGENT_COOKIE_MASK, Owner, OwnerKind, cookie, is_agent_cookie};
pub use diff::{FlowPlan, plan_flows};
pub use incremental::{Changes, IncrementalPipeline, changed_networks, resolved};
pub use model::{
    DesiredNetworking, Encap, EndpointDesc, NetworkDesc, PortDesc, PortsByNetwork, QosDesc,
    RuleDesc, RuleProtocol, SecurityDesc,
};

/// The hasher of the maps keyed by flow key (table, priority, match) that
/// the compile and the diff build for every flow they look at: foldhash,
/// several times faster than std's SipHash on a match's many small
/// fields (which took two thirds of the instructions of a pass), and
/// seeded at random per process and per map like std's, so that
/// colliding keys cannot be chosen from outside.
pub(crate) type FlowKeyHasher = foldhash::fast::RandomState;

#[cfg(test)]
mod tests;
