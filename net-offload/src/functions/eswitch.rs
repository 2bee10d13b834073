//! Eswitch discovery through devlink: `DEVLINK_CMD_PORT_GET` as a dump,
//! each `DEVLINK_CMD_PORT_NEW` answer decoded into a typed [`DevlinkPort`],
//! and [`Eswitch::discover`] grouping the ports per devlink device into its
//! uplinks (flavour physical) and its PFs (controller, pfnum), each with its
//! PF port (flavour pcipf, when the driver lists one), VF representors by
//! vfnum and SF representors by sfnum, each naming its netdev as the kernel
//! reports it (`DEVLINK_ATTR_PORT_NETDEV_NAME`). Nothing here looks at
//! netdev names: representors are found, not guessed by name
//! (`shared/design/TENANCY.md`, invariant 3).
//!
//! Attribute numbers and flavours are from the kernel's UAPI header
//! `include/uapi/linux/devlink.h` (`enum devlink_attr`,
//! `enum devlink_port_flavour`); what the kernel puts in a port message is
//! `devlink_nl_port_fill()` / `devlink_nl_port_attrs_put()` in
//! `net/core/devlink.c` (6.1; `net/devlink/port.c` later): bus and device
//! name, port index, type, the netdev's ifindex and name for an Ethernet
//! port with a netdev, splittable, flavour, then per flavour the controller,
//! pfnum, vfnum, sfnum, external, or the physical port number.
//!
//! Limits: the dump is of every devlink port of the network namespace (6.1
//! has no per-device dump filter); devices are grouped here. A port message
//! without bus name, device name or port index is an error naming the
//! missing attribute; attributes of a wrong size are errors naming them;
//! unknown attributes are skipped. Nothing panics on any bytes.

use std::collections::BTreeMap;

use dpu_netlink::attr as nla;
use serde::Serialize;

use super::FunctionsError;
use super::devlink::{DevlinkDev, DevlinkRequest, DevlinkSocket, attr, cmd};

/// `enum devlink_port_flavour` (UAPI): the values discovery tells apart.
pub mod flavour {
    pub const PHYSICAL: u16 = 0;
    pub const CPU: u16 = 1;
    pub const DSA: u16 = 2;
    pub const PCI_PF: u16 = 3;
    pub const PCI_VF: u16 = 4;
    pub const VIRTUAL: u16 = 5;
    pub const UNUSED: u16 = 6;
    pub const PCI_SF: u16 = 7;
}

/// A devlink port's flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortFlavour {
    /// An uplink: a port physically facing the network.
    Physical,
    /// The eswitch port facing a PCI PF.
    PciPf,
    /// The eswitch port (representor) facing a PCI VF.
    PciVf,
    /// The eswitch port (representor) facing a sub-function.
    PciSf,
    /// Any other flavour (cpu, dsa, virtual, unused, or newer), by number.
    Other(u16),
}

impl PortFlavour {
    pub fn from_u16(v: u16) -> PortFlavour {
        match v {
            flavour::PHYSICAL => PortFlavour::Physical,
            flavour::PCI_PF => PortFlavour::PciPf,
            flavour::PCI_VF => PortFlavour::PciVf,
            flavour::PCI_SF => PortFlavour::PciSf,
            other => PortFlavour::Other(other),
        }
    }

    /// devlink(8)'s name of the flavour (`devlink port show`).
    pub fn name(&self) -> String {
        match self {
            PortFlavour::Physical => "physical".into(),
            PortFlavour::PciPf => "pcipf".into(),
            PortFlavour::PciVf => "pcivf".into(),
            PortFlavour::PciSf => "pcisf".into(),
            PortFlavour::Other(flavour::CPU) => "cpu".into(),
            PortFlavour::Other(flavour::DSA) => "dsa".into(),
            PortFlavour::Other(flavour::VIRTUAL) => "virtual".into(),
            PortFlavour::Other(flavour::UNUSED) => "unused".into(),
            PortFlavour::Other(n) => format!("flavour {n}"),
        }
    }
}

/// One devlink port as the kernel reports it. Optional fields are absent
/// when the kernel did not send the attribute (e.g. a port without netdev,
/// or a flavour that has no pfnum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevlinkPort {
    pub dev: DevlinkDev,
    /// `DEVLINK_ATTR_PORT_INDEX`.
    pub index: u32,
    /// `DEVLINK_ATTR_PORT_FLAVOUR`; `None` for a port whose attributes the
    /// driver did not set.
    pub flavour: Option<PortFlavour>,
    /// `DEVLINK_ATTR_PORT_TYPE` (`enum devlink_port_type`: 2 eth, 3 ib).
    pub port_type: Option<u16>,
    /// `DEVLINK_ATTR_PORT_NUMBER` (physical ports).
    pub number: Option<u32>,
    /// `DEVLINK_ATTR_PORT_CONTROLLER_NUMBER` (pcipf, pcivf, pcisf).
    pub controller: Option<u32>,
    /// `DEVLINK_ATTR_PORT_PCI_PF_NUMBER`.
    pub pfnum: Option<u16>,
    /// `DEVLINK_ATTR_PORT_PCI_VF_NUMBER`.
    pub vfnum: Option<u16>,
    /// `DEVLINK_ATTR_PORT_PCI_SF_NUMBER`.
    pub sfnum: Option<u32>,
    /// `DEVLINK_ATTR_PORT_EXTERNAL`: the function is on an external
    /// controller (a BlueField's host).
    pub external: Option<bool>,
    /// `DEVLINK_ATTR_PORT_SPLITTABLE`.
    pub splittable: Option<bool>,
    /// `DEVLINK_ATTR_PORT_NETDEV_IFINDEX`.
    pub ifindex: Option<u32>,
    /// `DEVLINK_ATTR_PORT_NETDEV_NAME`: the port's netdev (the representor).
    pub netdev: Option<String>,
}

impl DevlinkPort {
    /// Port `index` of `dev` with every optional attribute absent: what
    /// [`decode_port`] fills in from a message, and what tests build on.
    pub fn new(dev: DevlinkDev, index: u32) -> DevlinkPort {
        DevlinkPort {
            dev,
            index,
            flavour: None,
            port_type: None,
            number: None,
            controller: None,
            pfnum: None,
            vfnum: None,
            sfnum: None,
            external: None,
            splittable: None,
            ifindex: None,
            netdev: None,
        }
    }

    /// `bus/name/index`, as devlink(8) names a port.
    pub fn handle(&self) -> String {
        format!("{}/{}/{}", self.dev.bus, self.dev.name, self.index)
    }
}

fn field<T>(
    what: &'static str,
    v: Result<T, dpu_netlink::Error>,
) -> Result<Option<T>, FunctionsError> {
    v.map(Some)
        .map_err(|e| FunctionsError::DevlinkReply(format!("devlink port attribute {what}: {e}")))
}

/// Decodes one port message's attributes (after the generic netlink
/// header). Bus name, device name and port index are required; every other
/// attribute is optional; a typed attribute of a wrong size is an error
/// naming it.
pub fn decode_port(attrs: &[u8]) -> Result<DevlinkPort, FunctionsError> {
    let (mut bus, mut name, mut index) = (None, None, None);
    let mut p = DevlinkPort::new(
        DevlinkDev {
            bus: String::new(),
            name: String::new(),
        },
        0,
    );
    for (ty, v) in nla::attrs(attrs) {
        match ty {
            attr::BUS_NAME => bus = Some(nla::string(v)),
            attr::DEV_NAME => name = Some(nla::string(v)),
            attr::PORT_INDEX => index = field("PORT_INDEX", nla::u32(v))?,
            attr::PORT_TYPE => p.port_type = field("PORT_TYPE", nla::u16(v))?,
            attr::PORT_NETDEV_IFINDEX => {
                p.ifindex = field("PORT_NETDEV_IFINDEX", nla::u32(v))?;
            }
            attr::PORT_NETDEV_NAME => p.netdev = Some(nla::string(v)),
            attr::PORT_FLAVOUR => {
                p.flavour = field("PORT_FLAVOUR", nla::u16(v))?.map(PortFlavour::from_u16);
            }
            attr::PORT_NUMBER => p.number = field("PORT_NUMBER", nla::u32(v))?,
            attr::PORT_PCI_PF_NUMBER => p.pfnum = field("PORT_PCI_PF_NUMBER", nla::u16(v))?,
            attr::PORT_PCI_VF_NUMBER => p.vfnum = field("PORT_PCI_VF_NUMBER", nla::u16(v))?,
            attr::PORT_PCI_SF_NUMBER => p.sfnum = field("PORT_PCI_SF_NUMBER", nla::u32(v))?,
            attr::PORT_CONTROLLER_NUMBER => {
                p.controller = field("PORT_CONTROLLER_NUMBER", nla::u32(v))?;
            }
            attr::PORT_EXTERNAL => {
                p.external = field("PORT_EXTERNAL", nla::u8(v))?.map(|b| b != 0);
            }
            attr::PORT_SPLITTABLE => {
                p.splittable = field("PORT_SPLITTABLE", nla::u8(v))?.map(|b| b != 0);
            }
            _ => {}
        }
    }
    let missing =
        |what: &str| FunctionsError::DevlinkReply(format!("devlink port message without {what}"));
    p.dev.bus = bus
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("BUS_NAME"))?;
    p.dev.name = name
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("DEV_NAME"))?;
    p.index = index.ok_or_else(|| missing("PORT_INDEX"))?;
    Ok(p)
}

/// Decodes the answers to a port dump (generic netlink payloads, as
/// [`DevlinkSocket::request`] returns them).
pub fn decode_port_dump(replies: &[Vec<u8>]) -> Result<Vec<DevlinkPort>, FunctionsError> {
    replies.iter().map(|r| decode_port(r)).collect()
}

/// A PF of an eswitch: (controller, pfnum) on one devlink device, with its
/// representors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EswitchPf {
    pub controller: u32,
    pub pfnum: u16,
    /// The pcipf port, when the driver lists one (mlx5 does for the host's
    /// PF on a BlueField; netdevsim 6.1 does not).
    pub port: Option<DevlinkPort>,
    /// VF representors by vfnum.
    pub vfs: BTreeMap<u16, DevlinkPort>,
    /// SF representors by sfnum.
    pub sfs: BTreeMap<u32, DevlinkPort>,
}

/// One devlink device's eswitch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EswitchDevice {
    pub dev: DevlinkDev,
    /// Ports of flavour physical, by port index.
    pub uplinks: Vec<DevlinkPort>,
    /// PFs by (controller, pfnum), in that order.
    pub pfs: Vec<EswitchPf>,
    /// Ports of any other flavour (or none), by port index.
    pub other: Vec<DevlinkPort>,
}

/// Every devlink device's eswitch, as the kernel's port dump shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Eswitch {
    pub devices: Vec<EswitchDevice>,
}

impl Eswitch {
    /// Dumps the devlink ports and groups them.
    pub fn discover() -> Result<Eswitch, FunctionsError> {
        let mut sock = DevlinkSocket::connect()?;
        Ok(Eswitch::from_ports(sock.ports()?))
    }

    /// Groups `ports` per device (by bus/name), then into uplinks, PFs and
    /// the rest. A VF or SF port without pfnum, or a VF without vfnum / an SF
    /// without sfnum, goes to `other`; a missing controller is 0 (kernels
    /// before 5.9 did not send it).
    pub fn from_ports(ports: Vec<DevlinkPort>) -> Eswitch {
        let mut devs: BTreeMap<(String, String), EswitchDevice> = BTreeMap::new();
        let mut pfs: PfsByDevice = BTreeMap::new();
        let mut sorted = ports;
        sorted.sort_by(|a, b| {
            (&a.dev.bus, &a.dev.name, a.index).cmp(&(&b.dev.bus, &b.dev.name, b.index))
        });
        for p in sorted {
            let key = (p.dev.bus.clone(), p.dev.name.clone());
            let d = devs.entry(key.clone()).or_insert_with(|| EswitchDevice {
                dev: p.dev.clone(),
                uplinks: Vec::new(),
                pfs: Vec::new(),
                other: Vec::new(),
            });
            let pf_key = p.pfnum.map(|n| (p.controller.unwrap_or(0), n));
            match (p.flavour, pf_key) {
                (Some(PortFlavour::Physical), _) => d.uplinks.push(p),
                (Some(PortFlavour::PciPf), Some(k)) => {
                    let pf = pf_entry(&mut pfs, &key, k);
                    if pf.port.is_none() {
                        pf.port = Some(p);
                    } else {
                        d.other.push(p);
                    }
                }
                (Some(PortFlavour::PciVf), Some(k)) if p.vfnum.is_some() => {
                    let vf = p.vfnum.unwrap_or_default();
                    let pf = pf_entry(&mut pfs, &key, k);
                    if let std::collections::btree_map::Entry::Vacant(e) = pf.vfs.entry(vf) {
                        e.insert(p);
                    } else {
                        d.other.push(p);
                    }
                }
                (Some(PortFlavour::PciSf), Some(k)) if p.sfnum.is_some() => {
                    let sf = p.sfnum.unwrap_or_default();
                    let pf = pf_entry(&mut pfs, &key, k);
                    if let std::collections::btree_map::Entry::Vacant(e) = pf.sfs.entry(sf) {
                        e.insert(p);
                    } else {
                        d.other.push(p);
                    }
                }
                _ => d.other.push(p),
            }
        }
        for (key, d) in devs.iter_mut() {
            if let Some(list) = pfs.remove(key) {
                d.pfs = list.into_values().collect();
            }
        }
        Eswitch {
            devices: devs.into_values().collect(),
        }
    }

    /// The device `dev`'s eswitch, if devlink lists it.
    pub fn device(&self, dev: &DevlinkDev) -> Option<&EswitchDevice> {
        self.devices.iter().find(|d| &d.dev == dev)
    }
}

/// PFs by (controller, pfnum), per device (bus, name).
type PfsByDevice = BTreeMap<(String, String), BTreeMap<(u32, u16), EswitchPf>>;

fn pf_entry<'a>(
    pfs: &'a mut PfsByDevice,
    key: &(String, String),
    (controller, pfnum): (u32, u16),
) -> &'a mut EswitchPf {
    pfs.entry(key.clone())
        .or_default()
        .entry((controller, pfnum))
        .or_insert_with(|| EswitchPf {
            controller,
            pfnum,
            port: None,
            vfs: BTreeMap::new(),
            sfs: BTreeMap::new(),
        })
}

impl EswitchDevice {
    /// The PF (controller, pfnum).
    pub fn pf(&self, controller: u32, pfnum: u16) -> Option<&EswitchPf> {
        self.pfs
            .iter()
            .find(|p| p.controller == controller && p.pfnum == pfnum)
    }
}

impl EswitchPf {
    /// The netdev of VF `vfnum`'s representor, when it has one.
    pub fn vf_netdev(&self, vfnum: u16) -> Option<&str> {
        self.vfs.get(&vfnum)?.netdev.as_deref()
    }

    /// The netdev of SF `sfnum`'s representor, when it has one.
    pub fn sf_netdev(&self, sfnum: u32) -> Option<&str> {
        self.sfs.get(&sfnum)?.netdev.as_deref()
    }
}

impl DevlinkSocket {
    /// Every devlink port of the socket's network namespace
    /// (`DEVLINK_CMD_PORT_GET` with `NLM_F_DUMP`).
    pub fn ports(&mut self) -> Result<Vec<DevlinkPort>, FunctionsError> {
        let replies = self.request(&DevlinkRequest::PortDump)?;
        decode_port_dump(&replies)
    }
}

/// The command the kernel answers a port dump with (`DEVLINK_CMD_PORT_NEW`).
pub const PORT_DUMP_REPLY_CMD: u8 = cmd::PORT_NEW;

#[cfg(test)]
mod devlink_tests {
    use dpu_netlink::{genl, msg};

    use super::*;

    /// A port message's attributes as `devlink_nl_port_fill()` (6.1) puts
    /// them, in its order: BUS_NAME, DEV_NAME, PORT_INDEX, PORT_TYPE (eth),
    /// NETDEV_IFINDEX, NETDEV_NAME, SPLITTABLE, FLAVOUR, then per flavour.
    fn port_attrs(index: u32, ifindex: u32, netdev: &str, tail: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        nla::put_str(&mut a, attr::BUS_NAME, "netdevsim");
        nla::put_str(&mut a, attr::DEV_NAME, "netdevsim1");
        nla::put_u32(&mut a, attr::PORT_INDEX, index);
        nla::put_u16(&mut a, attr::PORT_TYPE, 2);
        nla::put_u32(&mut a, attr::PORT_NETDEV_IFINDEX, ifindex);
        nla::put_str(&mut a, attr::PORT_NETDEV_NAME, netdev);
        nla::put_u8(&mut a, attr::PORT_SPLITTABLE, 0);
        a.extend_from_slice(tail);
        a
    }

    /// The physical port netdevsim1/0 (port number 1, netdev eth0): bytes
    /// written out from `include/uapi/linux/devlink.h` as the kernel sends
    /// them (little-endian host), not through the writer under test.
    #[cfg(target_endian = "little")]
    const PHYSICAL_PORT: &[u8] = &[
        // BUS_NAME (1) "netdevsim\0": 4 + 10 = 14, padded to 16
        14, 0, 1, 0, b'n', b'e', b't', b'd', b'e', b'v', b's', b'i', b'm', 0, 0, 0,
        // DEV_NAME (2) "netdevsim1\0": 4 + 11 = 15, padded to 16
        15, 0, 2, 0, b'n', b'e', b't', b'd', b'e', b'v', b's', b'i', b'm', b'1', 0, 0,
        // PORT_INDEX (3) u32 0
        8, 0, 3, 0, 0, 0, 0, 0, //
        // PORT_TYPE (4) u16 2 (eth)
        6, 0, 4, 0, 2, 0, 0, 0, //
        // PORT_NETDEV_IFINDEX (6) u32 2
        8, 0, 6, 0, 2, 0, 0, 0, //
        // PORT_NETDEV_NAME (7) "eth0\0"
        9, 0, 7, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0, //
        // PORT_SPLITTABLE (148) u8 0
        5, 0, 148, 0, 0, 0, 0, 0, //
        // PORT_FLAVOUR (77) u16 0 (physical)
        6, 0, 77, 0, 0, 0, 0, 0, //
        // PORT_NUMBER (78) u32 1
        8, 0, 78, 0, 1, 0, 0, 0,
    ];

    /// VF representor netdevsim1/129: controller 0, pfnum 0, vfnum 1,
    /// external 0, netdev eth2 — the per-flavour tail of
    /// `devlink_nl_port_attrs_put()` for pcivf.
    #[cfg(target_endian = "little")]
    const VF_TAIL: &[u8] = &[
        // PORT_FLAVOUR (77) u16 4 (pcivf)
        6, 0, 77, 0, 4, 0, 0, 0, //
        // PORT_CONTROLLER_NUMBER (150) u32 0
        8, 0, 150, 0, 0, 0, 0, 0, //
        // PORT_PCI_PF_NUMBER (127) u16 0
        6, 0, 127, 0, 0, 0, 0, 0, //
        // PORT_PCI_VF_NUMBER (128) u16 1
        6, 0, 128, 0, 1, 0, 0, 0, //
        // PORT_EXTERNAL (149) u8 0
        5, 0, 149, 0, 0, 0, 0, 0,
    ];

    fn vf(index: u32, vfnum: u16, netdev: &str) -> Vec<u8> {
        let mut tail = Vec::new();
        nla::put_u16(&mut tail, attr::PORT_FLAVOUR, flavour::PCI_VF);
        nla::put_u32(&mut tail, attr::PORT_CONTROLLER_NUMBER, 0);
        nla::put_u16(&mut tail, attr::PORT_PCI_PF_NUMBER, 0);
        nla::put_u16(&mut tail, attr::PORT_PCI_VF_NUMBER, vfnum);
        nla::put_u8(&mut tail, attr::PORT_EXTERNAL, 0);
        port_attrs(index, 3 + u32::from(vfnum), netdev, &tail)
    }

    /// Tested against the kernel's devlink UAPI, bytes as the kernel sends
    /// them: a physical port and a VF representor decode to every field.
    #[test]
    #[cfg(target_endian = "little")]
    fn decodes_ports_from_uapi_bytes() {
        let p = decode_port(PHYSICAL_PORT).unwrap();
        assert_eq!(p.dev, "netdevsim/netdevsim1".parse().unwrap());
        assert_eq!(p.index, 0);
        assert_eq!(p.flavour, Some(PortFlavour::Physical));
        assert_eq!(p.port_type, Some(2));
        assert_eq!(p.number, Some(1));
        assert_eq!(p.ifindex, Some(2));
        assert_eq!(p.netdev.as_deref(), Some("eth0"));
        assert_eq!(p.splittable, Some(false));
        assert_eq!((p.controller, p.pfnum, p.vfnum), (None, None, None));
        assert_eq!(p.handle(), "netdevsim/netdevsim1/0");

        let mut bytes = PHYSICAL_PORT[..40].to_vec(); // bus, dev, index
        bytes[36..40].copy_from_slice(&129u32.to_le_bytes());
        bytes.extend_from_slice(&[6, 0, 4, 0, 2, 0, 0, 0]); // PORT_TYPE eth
        bytes.extend_from_slice(&[8, 0, 6, 0, 4, 0, 0, 0]); // IFINDEX 4
        bytes.extend_from_slice(&[9, 0, 7, 0, b'e', b't', b'h', b'2', 0, 0, 0, 0]);
        bytes.extend_from_slice(&[5, 0, 148, 0, 0, 0, 0, 0]); // SPLITTABLE 0
        bytes.extend_from_slice(VF_TAIL);
        let v = decode_port(&bytes).unwrap();
        assert_eq!(v.index, 129);
        assert_eq!(v.flavour, Some(PortFlavour::PciVf));
        assert_eq!(
            (v.controller, v.pfnum, v.vfnum, v.external),
            (Some(0), Some(0), Some(1), Some(false))
        );
        assert_eq!(v.netdev.as_deref(), Some("eth2"));
        // The writer agrees with the hand-written bytes.
        assert_eq!(vf(129, 1, "eth2"), bytes);
    }

    /// A whole dump as the kernel sends it: PORT_NEW messages with
    /// NLM_F_MULTI, then NLMSG_DONE; decoded through the shared exchange
    /// and grouped: one uplink, PF (0, 0) with VFs 0..2 by vfnum, an SF.
    #[test]
    fn dump_groups_uplinks_pfs_and_representors() {
        let seq = 9;
        let mut sf_tail = Vec::new();
        nla::put_u16(&mut sf_tail, attr::PORT_FLAVOUR, flavour::PCI_SF);
        nla::put_u32(&mut sf_tail, attr::PORT_CONTROLLER_NUMBER, 0);
        nla::put_u16(&mut sf_tail, attr::PORT_PCI_PF_NUMBER, 0);
        nla::put_u32(&mut sf_tail, attr::PORT_PCI_SF_NUMBER, 88);
        nla::put_u8(&mut sf_tail, attr::PORT_EXTERNAL, 0);
        let mut phys_tail = Vec::new();
        nla::put_u16(&mut phys_tail, attr::PORT_FLAVOUR, flavour::PHYSICAL);
        nla::put_u32(&mut phys_tail, attr::PORT_NUMBER, 1);
        let ports = [
            vf(130, 2, "eth4"),
            port_attrs(0, 2, "eth0", &phys_tail),
            vf(128, 0, "eth2"),
            vf(129, 1, "eth3"),
            port_attrs(200, 9, "en3f0pf0sf88", &sf_tail),
        ];
        let mut datagram = Vec::new();
        for a in &ports {
            datagram.extend(genl::message(
                0x15,
                msg::NLM_F_MULTI,
                seq,
                PORT_DUMP_REPLY_CMD,
                1,
                a,
            ));
        }
        datagram.extend(msg::message(
            msg::NLMSG_DONE,
            msg::NLM_F_MULTI,
            seq,
            &0i32.to_ne_bytes(),
        ));
        let mut out = Vec::new();
        assert!(msg::decode_replies(&datagram, seq, false, &mut out).unwrap());
        let replies: Vec<Vec<u8>> = out.iter().map(|p| genl::attrs_of(p).to_vec()).collect();
        let ports = decode_port_dump(&replies).unwrap();
        assert_eq!(ports.len(), 5);
        let e = Eswitch::from_ports(ports);
        assert_eq!(e.devices.len(), 1);
        let d = e.device(&"netdevsim/netdevsim1".parse().unwrap()).unwrap();
        assert_eq!(d.uplinks.len(), 1);
        assert_eq!(d.uplinks[0].netdev.as_deref(), Some("eth0"));
        assert_eq!(d.pfs.len(), 1);
        let pf = d.pf(0, 0).unwrap();
        assert!(pf.port.is_none());
        assert_eq!(
            pf.vfs.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "by vfnum"
        );
        assert_eq!(pf.vf_netdev(0), Some("eth2"));
        assert_eq!(pf.vf_netdev(2), Some("eth4"));
        assert_eq!(pf.sf_netdev(88), Some("en3f0pf0sf88"));
        assert!(d.other.is_empty());
        // The JSON the VM probe prints.
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["devices"][0]["pfs"][0]["vfs"]["1"]["netdev"], "eth3");
        assert_eq!(j["devices"][0]["uplinks"][0]["flavour"], "physical");
    }

    /// The dump request: PORT_GET with NLM_F_REQUEST | NLM_F_DUMP, no
    /// attributes (6.1 dumps every device's ports).
    #[test]
    fn port_dump_request() {
        let req = DevlinkRequest::PortDump.encode(0x15, 4);
        #[cfg(target_endian = "little")]
        assert_eq!(
            req,
            [
                20, 0, 0, 0, 0x15, 0, 0x01, 0x03, 4, 0, 0, 0, 0, 0, 0, 0, 5, 1, 0, 0
            ]
        );
        assert_eq!(req.len(), 20);
    }

    /// Missing identity attributes and wrong sizes are errors naming the
    /// attribute; unknown attributes are skipped; a pcivf without vfnum is
    /// not a representor.
    #[test]
    fn malformed_ports_are_named_errors() {
        let mut no_index = Vec::new();
        nla::put_str(&mut no_index, attr::BUS_NAME, "pci");
        nla::put_str(&mut no_index, attr::DEV_NAME, "0000:03:00.0");
        let e = decode_port(&no_index).unwrap_err().to_string();
        assert!(e.contains("PORT_INDEX"), "{e}");
        let e = decode_port(&[]).unwrap_err().to_string();
        assert!(e.contains("BUS_NAME"), "{e}");

        let mut short = no_index.clone();
        nla::put_u32(&mut short, attr::PORT_INDEX, 1);
        nla::put_u8(&mut short, attr::PORT_FLAVOUR, 4);
        let e = decode_port(&short).unwrap_err().to_string();
        assert!(e.contains("PORT_FLAVOUR"), "{e}");

        let mut odd = no_index.clone();
        nla::put_u32(&mut odd, attr::PORT_INDEX, 1);
        nla::put_u32(&mut odd, 999, 7);
        nla::put_u16(&mut odd, attr::PORT_FLAVOUR, flavour::PCI_VF);
        nla::put_u16(&mut odd, attr::PORT_PCI_PF_NUMBER, 0);
        let p = decode_port(&odd).unwrap();
        let e = Eswitch::from_ports(vec![p]);
        assert!(e.devices[0].pfs.is_empty());
        assert_eq!(e.devices[0].other.len(), 1);
        assert_eq!(PortFlavour::from_u16(5).name(), "virtual");
    }

    proptest::proptest! {
        /// Any bytes: decoding returns, never panics.
        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(p) = decode_port(&b) {
                let _ = Eswitch::from_ports(vec![p]);
            }
        }
    }
}
