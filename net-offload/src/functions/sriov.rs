//! The SR-IOV backend: a net function is a VF of a physical function,
//! configured through rtnetlink on the PF (a link change with
//! `IFLA_VFINFO_LIST { IFLA_VF_INFO { MAC, VLAN, TRUST, SPOOFCHK, RATE } }`,
//! sent exactly as iproute2 sends `ip link set PF vf N mac M vlan V trust
//! on|off spoofchk on|off min_tx_rate 0 max_tx_rate R`: an `RTM_NEWLINK`
//! without `NLM_F_CREATE`, which the kernel applies like `RTM_SETLINK`), and
//! found on the eswitch side by its representor name (BlueField: `pf0vfN`;
//! the pattern is configurable, see [`naming::representor_from_pattern`]).
//!
//! Limits: this is the legacy VF path. In switchdev mode mlx5 ignores or
//! refuses some legacy settings (VLAN, rate); there the MAC goes through
//! devlink's port function `hw_addr` ([`super::devlink`]), VLAN through the
//! network pipeline's flows. VFs cannot carry an owner tag, so `observe`
//! reports the PF's VFs without owners and orphan VFs are never reset
//! behind the controller's back. Creating VFs (`sriov_numvfs`) is the
//! host's business, not this backend's.

use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac, VfInfoRate,
    VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
};

use super::rtnl::{Rtnl, SET_FLAGS};
use super::{
    Applied, ExecuteFuture, FunctionAction, FunctionBackend, FunctionDesired, FunctionType,
    FunctionsError, Mac, Slot, foreign_action, naming, no_sub_functions,
};

/// The legacy settings of one VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfConfig {
    pub vf: u32,
    /// `None` leaves the MAC as it is.
    pub mac: Option<Mac>,
    /// 0: no VLAN.
    pub vlan: u16,
    /// 0: unlimited.
    pub max_tx_rate_mbps: u32,
    pub trust: bool,
    pub spoof_check: bool,
}

impl VfConfig {
    /// What a released VF goes back to: no MAC, no VLAN, no limit,
    /// untrusted, spoof-checked.
    pub fn reset(vf: u32) -> VfConfig {
        VfConfig {
            vf,
            mac: Some(Mac::default()),
            vlan: 0,
            max_tx_rate_mbps: 0,
            trust: false,
            spoof_check: true,
        }
    }

    /// The settings of `d` on its VF `vf`.
    pub fn from_desired(d: &FunctionDesired, vf: u32) -> VfConfig {
        VfConfig {
            vf,
            mac: d.mac,
            vlan: d.vlan.unwrap_or(0),
            max_tx_rate_mbps: d.max_tx_rate_mbps.unwrap_or(0),
            trust: d.trust,
            spoof_check: d.spoof_check,
        }
    }
}

/// One VF as the PF reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VfState {
    pub vf: u32,
    pub mac: Mac,
    pub vlan: u16,
    pub min_tx_rate_mbps: u32,
    pub max_tx_rate_mbps: u32,
    pub trust: bool,
    pub spoof_check: bool,
}

/// The `IFLA_VF_INFO` attributes for `cfg`, in iproute2's order.
pub fn vf_info(cfg: &VfConfig) -> LinkVfInfo {
    let mut info = Vec::new();
    if let Some(mac) = cfg.mac {
        info.push(VfInfo::Mac(VfInfoMac::new(cfg.vf, &mac.0)));
    }
    info.push(VfInfo::Vlan(VfInfoVlan::new(cfg.vf, cfg.vlan.into(), 0)));
    info.push(VfInfo::Trust(VfInfoTrust::new(cfg.vf, cfg.trust)));
    info.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(
        cfg.vf,
        cfg.spoof_check,
    )));
    info.push(VfInfo::Rate(VfInfoRate::new(
        cfg.vf,
        0,
        cfg.max_tx_rate_mbps,
    )));
    LinkVfInfo(info)
}

/// The complete request configuring one VF of the PF with index
/// `pf_index`: `RTM_NEWLINK` with `NLM_F_REQUEST | NLM_F_ACK` (no
/// `NLM_F_CREATE`, so it only changes the existing PF), as iproute2's.
pub fn vf_config_message(pf_index: u32, cfg: &VfConfig) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut link = LinkMessage::default();
    link.header.index = pf_index;
    link.attributes
        .push(LinkAttribute::VfInfoList(vec![vf_info(cfg)]));
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
    msg.header.flags = SET_FLAGS;
    msg.finalize();
    msg
}

pub(super) fn vf_state(info: &LinkVfInfo) -> Option<VfState> {
    let mut s = VfState::default();
    let mut seen = false;
    for attr in &info.0 {
        match attr {
            VfInfo::Mac(m) => {
                s.vf = m.vf_id;
                s.mac.0.copy_from_slice(&m.mac[..6]);
                seen = true;
            }
            VfInfo::Vlan(v) => s.vlan = v.vlan_id as u16,
            VfInfo::Rate(r) => {
                s.min_tx_rate_mbps = r.min_tx_rate;
                s.max_tx_rate_mbps = r.max_tx_rate;
            }
            VfInfo::Trust(t) => s.trust = t.enabled,
            VfInfo::SpoofCheck(c) => s.spoof_check = c.enabled,
            _ => {}
        }
    }
    seen.then_some(s)
}

async fn pf_index(rtnl: &Rtnl, pf: &str) -> Result<u32, FunctionsError> {
    rtnl.link_by_name(pf)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| FunctionsError::NoDevice(pf.to_string()))
}

/// Configures one VF of the PF netdev `pf` (needs a tokio runtime).
pub async fn set_vf(pf: &str, cfg: &VfConfig) -> Result<(), FunctionsError> {
    let rtnl = Rtnl::connect()?;
    let index = pf_index(&rtnl, pf).await?;
    rtnl.request(
        &format!("RTM_NEWLINK (change) {pf} vf {}", cfg.vf),
        vf_config_message(index, cfg),
    )
    .await
}

/// The representor netdev `name` up with the function's `alias`: Ready, or
/// `NoRepresentor` when no netdev has that name (the sriov and switchdev
/// backends' last action).
pub(super) async fn representor_up(name: &str, alias: &str) -> Result<Applied, FunctionsError> {
    let rtnl = Rtnl::connect()?;
    match rtnl.link_by_name(name).await? {
        Some(link) => {
            rtnl.configure(&link, alias, None).await?;
            Ok(Applied::Ready {
                representor: name.to_string(),
                host_device: None,
            })
        }
        None => Ok(Applied::NoRepresentor {
            expected: name.to_string(),
        }),
    }
}

/// Sets only the MAC of VF `vf` of the netdev `pf` (`ip link set PF vf N
/// mac M`): the switchdev backend's fallback where the driver refuses the
/// port function's `hw_addr`.
pub async fn set_vf_mac(pf: &str, vf: u32, mac: Mac) -> Result<(), FunctionsError> {
    let rtnl = Rtnl::connect()?;
    let index = pf_index(&rtnl, pf).await?;
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(vec![
            VfInfo::Mac(VfInfoMac::new(vf, &mac.0)),
        ])]));
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::NewLink(link));
    msg.header.flags = SET_FLAGS;
    msg.finalize();
    rtnl.request(&format!("RTM_NEWLINK (change) {pf} vf {vf} mac {mac}"), msg)
        .await
}

/// The VFs of the PF netdev `pf` (`RTM_GETLINK` with `RTEXT_FILTER_VF`).
pub async fn read_vfs(pf: &str) -> Result<Vec<VfState>, FunctionsError> {
    let rtnl = Rtnl::connect()?;
    let msgs: Vec<LinkMessage> = rtnl
        .link_messages(pf, vec![LinkAttribute::ExtMask(vec![LinkExtentMask::Vf])])
        .await?;
    let mut out = Vec::new();
    for msg in &msgs {
        for attr in &msg.attributes {
            if let LinkAttribute::VfInfoList(list) = attr {
                out.extend(list.iter().filter_map(vf_state));
            }
        }
    }
    Ok(out)
}

/// Where the backend finds devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SriovConfig {
    /// The PF netdev for a spec's `pf`; `{pf}`, `{pfnum}` as in representors.
    pub pf_netdev_pattern: String,
    /// The representor netdev of a VF (BlueField: `{pf}vf{vf}`).
    pub representor_pattern: String,
}

impl Default for SriovConfig {
    fn default() -> Self {
        SriovConfig {
            pf_netdev_pattern: "{pf}".to_string(),
            representor_pattern: naming::DEFAULT_REPRESENTOR_PATTERN.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SriovBackend {
    pub config: SriovConfig,
}

impl SriovBackend {
    pub fn new(config: SriovConfig) -> Self {
        SriovBackend { config }
    }

    fn pf_netdev(&self, pf: &str) -> String {
        naming::representor_from_pattern(&self.config.pf_netdev_pattern, pf, 0)
    }

    fn representor(&self, pf: &str, vf: u32) -> String {
        naming::representor_from_pattern(&self.config.representor_pattern, pf, vf)
    }
}

impl FunctionBackend for SriovBackend {
    fn name(&self) -> &'static str {
        "sriov"
    }

    fn plan_apply(&self, d: &FunctionDesired) -> Vec<FunctionAction> {
        if d.type_ != FunctionType::Net {
            return vec![FunctionAction::no_storage_emulation()];
        }
        let Slot::Vf(vf) = d.slot else {
            return vec![no_sub_functions(self.name())];
        };
        vec![
            FunctionAction::SetVf {
                pf_netdev: self.pf_netdev(&d.pf),
                config: VfConfig::from_desired(d, vf),
            },
            FunctionAction::RepresentorUp {
                representor: self.representor(&d.pf, vf),
                alias: naming::alias(&d.id),
            },
        ]
    }

    fn plan_remove(&self, _id: &str, slot: Option<(&str, Slot)>) -> Vec<FunctionAction> {
        match slot {
            Some((pf, Slot::Vf(vf))) => vec![FunctionAction::ResetVf {
                pf_netdev: self.pf_netdev(pf),
                vf,
            }],
            Some((_, Slot::Sf(_))) => vec![FunctionAction::Nothing {
                why: "this backend carves no sub-functions".into(),
            }],
            None => vec![FunctionAction::Nothing {
                why: "no VF was assigned".into(),
            }],
        }
    }

    fn execute<'a>(&'a self, action: &'a FunctionAction) -> ExecuteFuture<'a> {
        Box::pin(async move {
            match action {
                FunctionAction::SetVf { pf_netdev, config } => {
                    set_vf(pf_netdev, config).await.map(|()| None)
                }
                FunctionAction::ResetVf { pf_netdev, vf } => {
                    match set_vf(pf_netdev, &VfConfig::reset(*vf)).await {
                        // The PF (or its VFs) went away: nothing left to reset.
                        Err(FunctionsError::NoDevice(_)) => Ok(None),
                        other => other.map(|()| None),
                    }
                }
                FunctionAction::RepresentorUp { representor, alias } => {
                    representor_up(representor, alias).await.map(Some)
                }
                other => Err(foreign_action(self.name(), other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(msg: &NetlinkMessage<RouteNetlinkMessage>, seq: u32) -> Vec<u8> {
        let mut msg = msg.clone();
        msg.header.sequence_number = seq;
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    /// Byte-exact against iproute2 6.1.0 on this machine: captured with
    /// `strace -f -e trace=sendmsg -e write=3 ip link set fnvfcap0 vf 0 mac
    /// 02:00:00:00:00:01 vlan 100 min_tx_rate 0 max_tx_rate 100 trust on
    /// spoofchk off` against a veth (ifindex 12; this kernel has no dummy
    /// driver). The kernel refuses the VF operation on a veth (EOPNOTSUPP)
    /// but the request is sent whole. Every byte is compared; the sequence
    /// number (bytes 8..12) is set to iproute2's. Note iproute2 sends
    /// `RTM_NEWLINK` (16), not `RTM_SETLINK` (19).
    #[test]
    fn vf_setlink_matches_iproute2() {
        let captured: [u8; 136] = [
            0x88, 0x00, 0x00, 0x00, 0x10, 0x00, 0x05, 0x00, 0x07, 0x5f, 0x09, 0x6b, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x68, 0x00, 0x16, 0x00, 0x64, 0x00, 0x01, 0x00, 0x28, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00,
            0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x04, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x06, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x00,
        ];
        let cfg = VfConfig {
            vf: 0,
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            vlan: 100,
            max_tx_rate_mbps: 100,
            trust: true,
            spoof_check: false,
        };
        assert_eq!(bytes(&vf_config_message(12, &cfg), 0x6b09_5f07), captured);
    }

    /// Without a MAC only the other four are sent; the rate attribute alone
    /// matches iproute2's `ip link set fnvfcap0 vf 3 min_tx_rate 0
    /// max_tx_rate 250` (ifindex 10), captured the same way.
    #[test]
    fn vf_rate_attribute_matches_iproute2() {
        let captured_rate_nest: [u8; 24] = [
            0x18, 0x00, 0x16, 0x00, 0x14, 0x00, 0x01, 0x00, 0x10, 0x00, 0x06, 0x00, 0x03, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, 0x00, 0x00, 0x00,
        ];
        let cfg = VfConfig {
            vf: 3,
            mac: None,
            vlan: 0,
            max_tx_rate_mbps: 250,
            trust: false,
            spoof_check: true,
        };
        let buf = bytes(&vf_config_message(10, &cfg), 1);
        // nlmsghdr(16) + ifinfomsg(16), then IFLA_VFINFO_LIST.
        assert_eq!(&buf[20..24], &[0x0a, 0, 0, 0]);
        let list = &buf[32..];
        // VLAN(16) + TRUST(12) + SPOOFCHK(12) + RATE(16) in one IFLA_VF_INFO.
        assert_eq!(
            u16::from_le_bytes([list[0], list[1]]) as usize,
            4 + 4 + 16 + 12 + 12 + 16
        );
        assert_eq!(&list[list.len() - 16..], &captured_rate_nest[8..]);
        assert_eq!(&list[2..4], &[0x16, 0x00]);
    }

    #[test]
    fn parses_what_it_emits() {
        let cfg = VfConfig {
            vf: 2,
            mac: Some("02:11:22:33:44:55".parse().unwrap()),
            vlan: 7,
            max_tx_rate_mbps: 1000,
            trust: true,
            spoof_check: false,
        };
        let s = vf_state(&vf_info(&cfg)).unwrap();
        assert_eq!(
            s,
            VfState {
                vf: 2,
                mac: cfg.mac.unwrap(),
                vlan: 7,
                min_tx_rate_mbps: 0,
                max_tx_rate_mbps: 1000,
                trust: true,
                spoof_check: false
            }
        );
    }

    /// An `RTM_NEWLINK` with `IFLA_VFINFO_LIST` (the layout the kernel's
    /// `RTM_GETLINK` answer uses) reads back through the backends' decoding;
    /// every truncation and a trailing half message decode without a panic.
    #[test]
    fn route_datagram_reads_link_and_vf_back() {
        let cfg = VfConfig {
            vf: 1,
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            vlan: 100,
            max_tx_rate_mbps: 100,
            trust: true,
            spoof_check: false,
        };
        let mut buf = bytes(&vf_config_message(12, &cfg), 1);
        let facts = crate::functions::decode_route_datagram(&buf);
        assert_eq!(facts.len(), 2, "{facts:?}");
        assert!(facts[0].starts_with("link 12 "), "{facts:?}");
        assert!(
            facts[1].contains("vf: 1") && facts[1].contains("vlan: 100"),
            "{facts:?}"
        );
        let whole = buf.len();
        for cut in 0..whole {
            let _ = crate::functions::decode_route_datagram(&buf[..cut]);
        }
        buf.extend_from_slice(&[0xff; 20]);
        assert_eq!(crate::functions::decode_route_datagram(&buf).len(), 2);
    }

    #[test]
    fn plan_and_names() {
        let b = SriovBackend::default();
        assert_eq!(b.representor("pf0", 3), "pf0vf3");
        assert_eq!(b.pf_netdev("pf1"), "pf1");
        let custom = SriovBackend::new(SriovConfig {
            pf_netdev_pattern: "p{pfnum}".into(),
            representor_pattern: naming::DEFAULT_REPRESENTOR_PATTERN.into(),
        });
        assert_eq!(custom.pf_netdev("pf1"), "p1");
        let plan = custom.plan_remove("x", Some(("pf1", Slot::Vf(4))));
        assert_eq!(
            plan,
            [FunctionAction::ResetVf {
                pf_netdev: "p1".into(),
                vf: 4
            }]
        );
        assert!(
            plan[0]
                .to_string()
                .starts_with("RTM_NEWLINK (change) p1 vf 4 mac 00:00:00:00:00:00"),
            "{plan:?}"
        );
    }
}
