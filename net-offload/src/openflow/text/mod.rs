//! ovs-ofctl flow syntax for the supported subset: `Display` for [`Flow`],
//! [`FlowMod`], [`FlowEntry`], [`Match`], [`Action`] and [`Instructions`], and
//! `FromStr` for [`Flow`] and [`Action`].
//!
//! The printed form is accepted by `ovs-ofctl add-flow` and parses back to the
//! same value. The parser also accepts the lines `ovs-ofctl dump-flows` prints
//! (statistics such as `duration` and `n_packets`, and flow flags such as
//! `send_flow_rem`, are skipped) and OVS's alternative spellings (`dl_src` or
//! `eth_src`, `strip_vlan`, `load:V->F[]`, `mod_dl_src:`, NXM or OVS field names
//! in `move`). Our field order may differ from OVS's: compare parsed flows, not
//! strings. Not supported: IPv6, ICMP fields, `exec()`/`nat` in `ct`, partial
//! `load`, `note`, `learn`, groups.
//!
//! Printing (`Display`) is in `print`, parsing (`FromStr`, [`parse_dump_flows`])
//! in `parse`; the field names both use are here.
//!
//! [`Flow`]: crate::openflow::Flow
//! [`FlowMod`]: crate::openflow::FlowMod
//! [`FlowEntry`]: crate::openflow::FlowEntry
//! [`Match`]: crate::openflow::Match
//! [`Action`]: crate::openflow::Action
//! [`Instructions`]: crate::openflow::Instructions

use crate::openflow::oxm::Field;

mod parse;
mod print;

pub use parse::{TextError, parse_dump_flows};

const ETH_TYPE_IP: u64 = 0x0800;
const ETH_TYPE_ARP: u64 = 0x0806;
const VLAN_PRESENT: u64 = 0x1000;

/// NXM-style name of a field inside `move`/`ct(zone=...)`, as OVS prints it.
fn subfield_name(field: Field) -> String {
    use Field::*;
    match field {
        InPort => "NXM_OF_IN_PORT".into(),
        EthDst => "NXM_OF_ETH_DST".into(),
        EthSrc => "NXM_OF_ETH_SRC".into(),
        EthType => "NXM_OF_ETH_TYPE".into(),
        VlanVid => "OXM_OF_VLAN_VID".into(),
        IpProto => "NXM_OF_IP_PROTO".into(),
        Ipv4Src => "NXM_OF_IP_SRC".into(),
        Ipv4Dst => "NXM_OF_IP_DST".into(),
        TcpSrc => "NXM_OF_TCP_SRC".into(),
        TcpDst => "NXM_OF_TCP_DST".into(),
        UdpSrc => "NXM_OF_UDP_SRC".into(),
        UdpDst => "NXM_OF_UDP_DST".into(),
        ArpOp => "NXM_OF_ARP_OP".into(),
        ArpSpa => "NXM_OF_ARP_SPA".into(),
        ArpTpa => "NXM_OF_ARP_TPA".into(),
        ArpSha => "NXM_NX_ARP_SHA".into(),
        ArpTha => "NXM_NX_ARP_THA".into(),
        TunnelId => "NXM_NX_TUN_ID".into(),
        TunIpv4Src => "NXM_NX_TUN_IPV4_SRC".into(),
        TunIpv4Dst => "NXM_NX_TUN_IPV4_DST".into(),
        Reg(n) => format!("NXM_NX_REG{n}"),
        CtState => "NXM_NX_CT_STATE".into(),
        CtZone => "NXM_NX_CT_ZONE".into(),
        Metadata => "OXM_OF_METADATA".into(),
    }
}
