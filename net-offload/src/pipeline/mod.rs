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

#[cfg(test)]
mod tests;
