//! `switchdev`: the BlueField profile's functions backend. The eswitch is
//! read from devlink ([`super::eswitch`]), never from netdev names: a
//! function's `pf` names a PF the eswitch lists (`pfN`: pfnum N; with one
//! PF of that number on several controllers, the external one — the host's
//! — wins; `cCpfN` names controller C), its VF is the `pcivf` port with
//! that vfnum, and its representor is the netdev that port reports.
//!
//! A function carved as a sub-function (`Slot::Sf`) is first made: the
//! `pcisf` port with its sfnum on the PF's controller and pfnum
//! (`DEVLINK_CMD_PORT_NEW`, skipped when devlink lists it already), then
//! programmed like a VF port (no legacy MAC fallback: an SF has no legacy
//! settings), then activated (port function `state active`); its
//! representor is the netdev devlink reports for that port. Removal sets
//! it `inactive` and deletes the port (`DEVLINK_CMD_PORT_DEL`). No open
//! driver but mlx5 implements SF ports (netdevsim 6.1 refuses `PORT_NEW`
//! with `EOPNOTSUPP`): the messages are contract-tested against the
//! kernel's devlink UAPI, not proven on a kernel driver.
//!
//! What is programmed, per VF (or SF) port, through devlink:
//! - the MAC as the port function's `hw_addr`; a driver that refuses port
//!   function attributes with `EOPNOTSUPP` (netdevsim on 6.1) gets it the
//!   legacy way, through the eswitch's uplink netdev (`RTM_NEWLINK` with
//!   `IFLA_VF_MAC`, as `ip link set UPLINK vf N mac M`);
//! - the rate as the port's devlink rate object (`tx_max`, bytes/s; 0 =
//!   no limit);
//! - RoCE, when the spec asks for RDMA, as the port function's `roce`
//!   capability (kernel 6.2+, mlx5); a refusal fails the apply with the
//!   driver's own reason (extended ack).
//!
//! VLAN, trust and spoof checking are not VF settings in switchdev mode:
//! every packet of the VF crosses its representor, so the network
//! pipeline's flows do them (a Port's MAC/IP anti-spoofing, a Network's
//! encapsulation). A spec that asks for them on this backend is refused
//! ([`super::UnsupportedReason::SwitchdevField`]) rather than ignored.
//!
//! A VF the eswitch does not list yet (the host has not written
//! `sriov_numvfs`) ends the apply as [`Applied::NoRepresentor`]: the
//! function waits, nothing is guessed. Devlink calls are blocking and run
//! on tokio's blocking pool; each action dumps the eswitch's ports once.

use super::devlink::{DevlinkRequest, DevlinkSocket, EswitchMode};
use super::eswitch::{DevlinkPort, Eswitch, EswitchDevice, EswitchPf};
use super::{
    Applied, BoxFuture, ExecuteFuture, FunctionAction, FunctionBackend, FunctionDesired,
    FunctionType, FunctionsError, Mac, ObservedFunction, Slot, UnsupportedReason, foreign_action,
    naming, sriov,
};

/// One setting of a VF's eswitch port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSetting {
    /// The port function's `hw_addr` (falling back to the uplink's legacy
    /// VF MAC when the driver refuses port function attributes).
    HwAddr(Mac),
    /// The port's devlink rate `tx_max` in Mbit/s (0: no limit).
    TxMax { mbps: u32 },
    /// The port function's `roce` capability.
    Roce(bool),
    /// The port function's `state`: active (the SF's auxiliary device is
    /// made) or inactive.
    State(bool),
}

/// Which PF a function's `pf` names: `pfN` or `cCpfN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfRef {
    pub controller: Option<u32>,
    pub pfnum: u16,
}

impl PfRef {
    pub fn parse(name: &str) -> Result<PfRef, FunctionsError> {
        let bad = || {
            FunctionsError::Invalid(format!(
                "{name:?} names no eswitch PF: the switchdev backend takes pfN or cCpfN (controller C, pfnum N)"
            ))
        };
        let (controller, rest) = match name.strip_prefix('c') {
            Some(rest) => {
                let (c, pf) = rest.split_once("pf").ok_or_else(bad)?;
                (Some(c.parse().map_err(|_| bad())?), pf)
            }
            None => (None, name.strip_prefix("pf").ok_or_else(bad)?),
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(PfRef {
            controller,
            pfnum: rest.parse().map_err(|_| bad())?,
        })
    }
}

/// The PF `pf` names on `eswitch`, with its device; an error names what the
/// eswitch does list.
pub fn find_pf<'a>(
    eswitch: &'a Eswitch,
    pf: &str,
) -> Result<(&'a EswitchDevice, &'a EswitchPf), FunctionsError> {
    let want = PfRef::parse(pf)?;
    let all: Vec<(&EswitchDevice, &EswitchPf)> = eswitch
        .devices
        .iter()
        .flat_map(|d| d.pfs.iter().map(move |p| (d, p)))
        .collect();
    let mut found: Vec<_> = all
        .iter()
        .filter(|(_, p)| p.pfnum == want.pfnum && want.controller.is_none_or(|c| c == p.controller))
        .copied()
        .collect();
    if found.len() > 1 && want.controller.is_none() {
        // The host's PF (an external controller) over the DPU's own.
        let external: Vec<_> = found
            .iter()
            .filter(|(_, p)| pf_is_external(p))
            .copied()
            .collect();
        if !external.is_empty() {
            found = external;
        }
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => {
            let listed: Vec<String> = all
                .iter()
                .map(|(d, p)| {
                    format!(
                        "c{}pf{} ({}/{})",
                        p.controller, p.pfnum, d.dev.bus, d.dev.name
                    )
                })
                .collect();
            Err(FunctionsError::Invalid(format!(
                "no eswitch PF {pf}: devlink lists {}",
                if listed.is_empty() {
                    "no PF (is the eswitch in switchdev mode?)".to_string()
                } else {
                    listed.join(", ")
                }
            )))
        }
        many => Err(FunctionsError::Invalid(format!(
            "{pf} is ambiguous: {} eswitch devices have it; name its controller (cCpfN)",
            many.len()
        ))),
    }
}

fn pf_is_external(p: &EswitchPf) -> bool {
    p.port
        .iter()
        .chain(p.vfs.values())
        .any(|port| port.external == Some(true))
}

/// The port of function slot (`pf`, `slot`) — the pcivf port by vfnum or
/// the pcisf port by sfnum — or `None` while the eswitch does not list it;
/// with the uplink netdev of its device (for the legacy MAC fallback).
pub fn find_port(
    eswitch: &Eswitch,
    pf: &str,
    slot: Slot,
) -> Result<Option<(DevlinkPort, Option<String>)>, FunctionsError> {
    let (dev, p) = find_pf(eswitch, pf)?;
    let port = match slot {
        Slot::Vf(vf) => u16::try_from(vf).ok().and_then(|vf| p.vfs.get(&vf)),
        Slot::Sf(sf) => p.sfs.get(&sf),
    };
    Ok(port.map(|port| {
        (
            port.clone(),
            dev.uplinks.iter().find_map(|u| u.netdev.clone()),
        )
    }))
}

/// The devlink request that makes `setting` on `port`.
pub fn port_request(port: &DevlinkPort, setting: PortSetting) -> DevlinkRequest {
    let (dev, port) = (port.dev.clone(), port.index);
    match setting {
        PortSetting::HwAddr(mac) => DevlinkRequest::PortFunctionHwAddr { dev, port, mac },
        PortSetting::TxMax { mbps } => DevlinkRequest::RateSet {
            dev,
            port,
            tx_share: 0,
            tx_max: u64::from(mbps) * 125_000,
        },
        PortSetting::Roce(enable) => DevlinkRequest::PortFunctionRoce { dev, port, enable },
        PortSetting::State(active) => DevlinkRequest::PortFunctionState { dev, port, active },
    }
}

/// The `PORT_NEW` that makes SF `sfnum` on the PF `pf` names (its device,
/// controller and pfnum, as devlink lists them), or `None` when devlink
/// lists that SF port already.
pub fn sf_add_request(
    eswitch: &Eswitch,
    pf: &str,
    sfnum: u32,
) -> Result<Option<DevlinkRequest>, FunctionsError> {
    let (dev, p) = find_pf(eswitch, pf)?;
    if p.sfs.contains_key(&sfnum) {
        return Ok(None);
    }
    Ok(Some(DevlinkRequest::SfPortNew {
        dev: dev.dev.clone(),
        pfnum: p.pfnum,
        sfnum,
        controller: Some(p.controller),
    }))
}

/// The `PORT_DEL` of SF `sfnum` of `pf`, or `None` when devlink lists no
/// such port (or no such PF any more: its SFs went with it).
pub fn sf_del_request(eswitch: &Eswitch, pf: &str, sfnum: u32) -> Option<DevlinkRequest> {
    let (_, p) = find_pf(eswitch, pf).ok()?;
    p.sfs.get(&sfnum).map(|port| DevlinkRequest::PortDel {
        dev: port.dev.clone(),
        port: port.index,
    })
}

/// Configuration of the switchdev backend.
#[derive(Debug, Clone, Default)]
pub struct SwitchdevConfig {
    /// Put every eswitch device found in legacy mode into switchdev mode
    /// when the agent starts ([`SwitchdevBackend::prepare`]).
    pub set_switchdev: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SwitchdevBackend {
    pub config: SwitchdevConfig,
}

/// Runs blocking devlink work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FunctionsError> + Send + 'static,
) -> Result<T, FunctionsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FunctionsError::Invalid(format!("devlink worker: {e}")))?
}

impl SwitchdevBackend {
    pub fn new(config: SwitchdevConfig) -> Self {
        SwitchdevBackend { config }
    }

    /// At start: the eswitch as devlink lists it, after setting every
    /// device in legacy mode to switchdev when configured. Returns the
    /// devices whose mode it changed.
    pub fn prepare(&self) -> Result<Vec<String>, FunctionsError> {
        let mut changed = Vec::new();
        if !self.config.set_switchdev {
            return Ok(changed);
        }
        let mut sock = DevlinkSocket::connect()?;
        let eswitch = Eswitch::from_ports(sock.ports()?);
        for d in &eswitch.devices {
            if d.uplinks.is_empty() {
                continue;
            }
            if sock.eswitch_mode(&d.dev)? == EswitchMode::Legacy {
                sock.set_eswitch_mode(&d.dev, EswitchMode::Switchdev)?;
                changed.push(format!("{}/{}", d.dev.bus, d.dev.name));
            }
        }
        Ok(changed)
    }

    /// One setting on the port of (`pf`, `slot`): `Some` ends the apply
    /// (the port is not listed yet).
    async fn set_port(
        &self,
        pf: &str,
        slot: Slot,
        setting: PortSetting,
    ) -> Result<Option<Applied>, FunctionsError> {
        let pf_name = pf.to_string();
        let found = blocking(move || {
            let mut sock = DevlinkSocket::connect()?;
            let eswitch = Eswitch::from_ports(sock.ports()?);
            let Some((port, uplink)) = find_port(&eswitch, &pf_name, slot)? else {
                return Ok(None);
            };
            match sock.request(&port_request(&port, setting)) {
                Ok(_) => Ok(Some(None)),
                Err(e)
                    if matches!(setting, PortSetting::HwAddr(_))
                        && slot.vf().is_some()
                        && e.devlink_errno() == Some(libc::EOPNOTSUPP) =>
                {
                    Ok(Some(Some((uplink, e))))
                }
                Err(e) => Err(e),
            }
        })
        .await?;
        match found {
            None => Ok(Some(Applied::NoRepresentor {
                expected: match slot {
                    Slot::Vf(_) => {
                        format!("{pf} {slot} (no devlink port yet: has the host created the VF?)")
                    }
                    Slot::Sf(_) => format!("{pf} {slot} (no devlink port)"),
                },
            })),
            Some(None) => Ok(None),
            // hw_addr refused: the uplink's legacy VF MAC.
            Some(Some((uplink, refused))) => {
                let (PortSetting::HwAddr(mac), Slot::Vf(vf)) = (setting, slot) else {
                    return Err(refused);
                };
                let Some(uplink) = uplink else {
                    return Err(refused);
                };
                sriov::set_vf_mac(&uplink, vf, mac).await.map(|()| None)
            }
        }
    }

    /// Makes SF `sfnum` on `pf` unless devlink lists it already.
    async fn sf_add(&self, pf: &str, sfnum: u32) -> Result<Option<Applied>, FunctionsError> {
        let pf = pf.to_string();
        blocking(move || {
            let mut sock = DevlinkSocket::connect()?;
            let eswitch = Eswitch::from_ports(sock.ports()?);
            if let Some(DevlinkRequest::SfPortNew {
                dev,
                pfnum,
                sfnum,
                controller,
            }) = sf_add_request(&eswitch, &pf, sfnum)?
            {
                let port = sock.sf_port_new(&dev, pfnum, sfnum, controller)?;
                tracing::info!(port = %port.handle(), netdev = ?port.netdev, "sub-function port added");
            }
            Ok(None)
        })
        .await
    }

    /// Deletes SF `sfnum` of `pf` when devlink lists it.
    async fn sf_del(&self, pf: &str, sfnum: u32) -> Result<Option<Applied>, FunctionsError> {
        let pf = pf.to_string();
        blocking(move || {
            let mut sock = DevlinkSocket::connect()?;
            let eswitch = Eswitch::from_ports(sock.ports()?);
            if let Some(req) = sf_del_request(&eswitch, &pf, sfnum) {
                sock.request(&req)?;
            }
            Ok(None)
        })
        .await
    }

    /// The function's representor (as devlink reports it) up with the alias.
    async fn representor_up(
        &self,
        pf: &str,
        slot: Slot,
        alias: &str,
    ) -> Result<Applied, FunctionsError> {
        let pf_name = pf.to_string();
        let port = blocking(move || {
            let mut sock = DevlinkSocket::connect()?;
            let eswitch = Eswitch::from_ports(sock.ports()?);
            Ok(find_port(&eswitch, &pf_name, slot)?.map(|(p, _)| p))
        })
        .await?;
        let Some(netdev) = port.as_ref().and_then(|p| p.netdev.clone()) else {
            return Ok(Applied::NoRepresentor {
                expected: match port {
                    Some(p) => format!("the netdev of devlink port {}", p.handle()),
                    None => format!("{pf} {slot} (no devlink port yet)"),
                },
            });
        };
        sriov::representor_up(&netdev, alias).await
    }
}

impl FunctionBackend for SwitchdevBackend {
    fn name(&self) -> &'static str {
        "switchdev"
    }

    fn observe(&self) -> BoxFuture<'_, Result<Vec<ObservedFunction>, FunctionsError>> {
        // VF ports carry no owner tag; the controller knows which it holds.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn switches_roce(&self) -> bool {
        true
    }

    fn plan_apply(&self, d: &FunctionDesired) -> Vec<FunctionAction> {
        if d.type_ != FunctionType::Net {
            return vec![FunctionAction::no_storage_emulation()];
        }
        let refused = [
            (d.vlan.is_some(), "spec.vlan"),
            (d.trust, "spec.trust"),
            (!d.spoof_check, "spec.spoof_check"),
        ];
        if let Some((_, field)) = refused.iter().find(|(set, _)| *set) {
            return vec![FunctionAction::Unsupported {
                reason: UnsupportedReason::SwitchdevField,
                message: format!(
                    "{field} is not a VF setting in switchdev mode: the network pipeline's flows tag and check every packet at the representor; leave {field} out"
                ),
            }];
        }
        let port = |setting| FunctionAction::EswitchPort {
            pf: d.pf.clone(),
            slot: d.slot,
            setting,
        };
        let mut plan = Vec::new();
        if let Slot::Sf(sfnum) = d.slot {
            plan.push(FunctionAction::EswitchSfAdd {
                pf: d.pf.clone(),
                sfnum,
            });
        }
        if let Some(mac) = d.mac {
            plan.push(port(PortSetting::HwAddr(mac)));
        }
        plan.push(port(PortSetting::TxMax {
            mbps: d.max_tx_rate_mbps.unwrap_or(0),
        }));
        if d.rdma {
            plan.push(port(PortSetting::Roce(true)));
        }
        if let Slot::Sf(_) = d.slot {
            // Last: a function's attributes are set before it is
            // activated (the kernel's devlink-port documentation).
            plan.push(port(PortSetting::State(true)));
        }
        plan.push(FunctionAction::EswitchRepresentorUp {
            pf: d.pf.clone(),
            slot: d.slot,
            alias: naming::alias(&d.id),
        });
        plan
    }

    fn plan_remove(&self, _id: &str, slot: Option<(&str, Slot)>) -> Vec<FunctionAction> {
        let port = |pf: &str, slot, setting| FunctionAction::EswitchPort {
            pf: pf.to_string(),
            slot,
            setting,
        };
        match slot {
            Some((pf, slot @ Slot::Vf(_))) => vec![
                port(pf, slot, PortSetting::HwAddr(Mac::default())),
                port(pf, slot, PortSetting::TxMax { mbps: 0 }),
            ],
            Some((pf, slot @ Slot::Sf(sfnum))) => vec![
                port(pf, slot, PortSetting::State(false)),
                FunctionAction::EswitchSfDel {
                    pf: pf.to_string(),
                    sfnum,
                },
            ],
            None => vec![FunctionAction::Nothing {
                why: "no VF or SF was assigned".into(),
            }],
        }
    }

    fn execute<'a>(&'a self, action: &'a FunctionAction) -> ExecuteFuture<'a> {
        Box::pin(async move {
            match action {
                FunctionAction::EswitchPort { pf, slot, setting } => {
                    self.set_port(pf, *slot, *setting).await
                }
                FunctionAction::EswitchRepresentorUp { pf, slot, alias } => {
                    self.representor_up(pf, *slot, alias).await.map(Some)
                }
                FunctionAction::EswitchSfAdd { pf, sfnum } => self.sf_add(pf, *sfnum).await,
                FunctionAction::EswitchSfDel { pf, sfnum } => self.sf_del(pf, *sfnum).await,
                other => Err(foreign_action(self.name(), other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::devlink::DevlinkDev;
    use crate::functions::eswitch::PortFlavour;

    fn port(dev: &str, index: u32, flavour: PortFlavour, netdev: &str) -> DevlinkPort {
        DevlinkPort {
            flavour: Some(flavour),
            port_type: Some(2),
            splittable: Some(false),
            netdev: Some(netdev.into()),
            ..DevlinkPort::new(dev.parse::<DevlinkDev>().unwrap(), index)
        }
    }

    fn vf(dev: &str, index: u32, c: u32, pfnum: u16, vfnum: u16, ext: bool) -> DevlinkPort {
        DevlinkPort {
            controller: Some(c),
            pfnum: Some(pfnum),
            vfnum: Some(vfnum),
            external: Some(ext),
            ..port(
                dev,
                index,
                PortFlavour::PciVf,
                &format!("pf{pfnum}vf{vfnum}"),
            )
        }
    }

    /// A BlueField's DPU side as `devlink port show` lists it: uplink p0,
    /// the host's PF 0 and its VFs on external controller 1, and the ECPF's
    /// own PF 0 on controller 0.
    fn bluefield() -> Eswitch {
        let d = "pci/0000:03:00.0";
        Eswitch::from_ports(vec![
            port(d, 65535, PortFlavour::Physical, "p0"),
            DevlinkPort {
                controller: Some(0),
                pfnum: Some(0),
                external: Some(false),
                ..port(d, 65534, PortFlavour::PciPf, "pf0hpf_local")
            },
            DevlinkPort {
                controller: Some(1),
                pfnum: Some(0),
                external: Some(true),
                ..port(d, 65536, PortFlavour::PciPf, "pf0hpf")
            },
            vf(d, 65537, 1, 0, 0, true),
            vf(d, 65538, 1, 0, 1, true),
            DevlinkPort {
                controller: Some(1),
                pfnum: Some(0),
                sfnum: Some(88),
                external: Some(true),
                ..port(d, 98304, PortFlavour::PciSf, "en3f0pf0sf88")
            },
        ])
    }

    #[test]
    fn pf_names_parse() {
        assert_eq!(
            PfRef::parse("pf0").unwrap(),
            PfRef {
                controller: None,
                pfnum: 0
            }
        );
        assert_eq!(
            PfRef::parse("c1pf2").unwrap(),
            PfRef {
                controller: Some(1),
                pfnum: 2
            }
        );
        for bad in ["", "pf", "p0", "pf-1", "c1", "cxpf0", "pf0vf1", "pf99999"] {
            assert!(PfRef::parse(bad).is_err(), "{bad}");
        }
    }

    /// The host's PF wins over the DPU's own PF of the same number; VFs are
    /// found by vfnum with the representor devlink names, never by name.
    #[test]
    fn the_external_pf_is_the_hosts() {
        let e = bluefield();
        let (dev, pf) = find_pf(&e, "pf0").unwrap();
        assert_eq!(pf.controller, 1);
        assert_eq!(dev.uplinks[0].netdev.as_deref(), Some("p0"));
        let (port, uplink) = find_port(&e, "pf0", Slot::Vf(1)).unwrap().unwrap();
        assert_eq!(port.index, 65538);
        assert_eq!(port.netdev.as_deref(), Some("pf0vf1"));
        assert_eq!(uplink.as_deref(), Some("p0"));
        assert!(
            find_port(&e, "pf0", Slot::Vf(7)).unwrap().is_none(),
            "not created yet"
        );
        assert_eq!(find_pf(&e, "c0pf0").unwrap().1.controller, 0);
        let err = find_pf(&e, "pf3").unwrap_err().to_string();
        assert!(err.contains("c1pf0 (pci/0000:03:00.0)"), "{err}");
    }

    fn desired() -> FunctionDesired {
        FunctionDesired {
            id: "web".into(),
            type_: FunctionType::Net,
            pf: "pf0".into(),
            slot: Slot::Vf(1),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            vlan: None,
            max_tx_rate_mbps: Some(100),
            trust: false,
            spoof_check: true,
            rdma: true,
            tenant: None,
        }
    }

    #[test]
    fn plan_is_devlink_per_port() {
        let b = SwitchdevBackend::default();
        let lines = crate::functions::plan::lines(&b.plan_apply(&desired()));
        assert_eq!(
            lines,
            [
                "devlink port function set pf0 vf 1 hw_addr 02:00:00:00:00:01 (if the driver refuses port function attributes: RTM_NEWLINK (change) UPLINK vf 1 mac 02:00:00:00:00:01)",
                "devlink port function rate set pf0 vf 1 tx_max 100mbit",
                "devlink port function set pf0 vf 1 roce enable",
                "RTM_SETLINK <pf0 vf 1's representor, from devlink> up alias \"dpu-agent function web\"",
            ]
        );
        let mut vlan = desired();
        vlan.vlan = Some(10);
        assert!(matches!(
            b.plan_apply(&vlan).as_slice(),
            [FunctionAction::Unsupported {
                reason: UnsupportedReason::SwitchdevField,
                ..
            }]
        ));
        let removal =
            crate::functions::plan::lines(&b.plan_remove("web", Some(("pf0", Slot::Vf(1)))));
        assert_eq!(removal.len(), 2, "{removal:?}");
    }

    /// An SF function's plan: the pcisf port made (when absent), MAC as
    /// the port function's hw_addr (no legacy fallback), rate, state
    /// active after them, the representor devlink names; its removal is
    /// state inactive, then the port deleted. VF-only backends refuse it.
    #[test]
    fn sf_plan_adds_programs_activates_and_removes() {
        let b = SwitchdevBackend::default();
        let mut d = desired();
        d.slot = Slot::Sf(88);
        d.rdma = false;
        let plan = b.plan_apply(&d);
        assert_eq!(
            crate::functions::plan::lines(&plan),
            [
                "devlink port add <pf0's device> flavour pcisf controller <pf0's> pfnum <pf0's> sfnum 88 (if devlink lists no such port)",
                "devlink port function set pf0 sf 88 hw_addr 02:00:00:00:00:01",
                "devlink port function rate set pf0 sf 88 tx_max 100mbit",
                "devlink port function set pf0 sf 88 state active",
                "RTM_SETLINK <pf0 sf 88's representor, from devlink> up alias \"dpu-agent function web\"",
            ]
        );
        assert_eq!(
            b.plan_remove("web", Some(("pf0", Slot::Sf(88)))),
            [
                FunctionAction::EswitchPort {
                    pf: "pf0".into(),
                    slot: Slot::Sf(88),
                    setting: PortSetting::State(false),
                },
                FunctionAction::EswitchSfDel {
                    pf: "pf0".into(),
                    sfnum: 88,
                },
            ]
        );
        for other in [
            &super::super::sriov::SriovBackend::default() as &dyn FunctionBackend,
            &super::super::external::ExternalBackend::default(),
        ] {
            assert!(
                matches!(
                    other.plan_apply(&d).as_slice(),
                    [FunctionAction::Unsupported {
                        reason: UnsupportedReason::NoSubFunctions,
                        ..
                    }]
                ),
                "{}",
                other.name()
            );
        }
    }

    /// On a fake eswitch: SF ports are found by (PF, sfnum) with the
    /// netdev devlink reports; `PORT_NEW` goes to the PF's device with its
    /// controller and pfnum, and is skipped for an SF devlink lists;
    /// `PORT_DEL` names the listed port's index and is skipped when absent.
    #[test]
    fn sf_requests_from_the_eswitch() {
        let e = bluefield();
        let (port, _) = find_port(&e, "pf0", Slot::Sf(88)).unwrap().unwrap();
        assert_eq!(port.index, 98304);
        assert_eq!(port.netdev.as_deref(), Some("en3f0pf0sf88"));
        assert!(find_port(&e, "pf0", Slot::Sf(89)).unwrap().is_none());
        assert!(
            find_port(&e, "pf0", Slot::Vf(88)).unwrap().is_none(),
            "sfnum is not vfnum"
        );

        let dev: DevlinkDev = "pci/0000:03:00.0".parse().unwrap();
        assert_eq!(sf_add_request(&e, "pf0", 88).unwrap(), None);
        assert_eq!(
            sf_add_request(&e, "pf0", 89).unwrap(),
            Some(DevlinkRequest::SfPortNew {
                dev: dev.clone(),
                pfnum: 0,
                sfnum: 89,
                controller: Some(1),
            })
        );
        assert_eq!(
            sf_add_request(&e, "c0pf0", 88).unwrap(),
            Some(DevlinkRequest::SfPortNew {
                dev: dev.clone(),
                pfnum: 0,
                sfnum: 88,
                controller: Some(0),
            }),
            "sfnums are per PF"
        );
        let err = sf_add_request(&e, "pf4", 1).unwrap_err().to_string();
        assert!(err.contains("no eswitch PF pf4"), "{err}");

        assert_eq!(
            sf_del_request(&e, "pf0", 88),
            Some(DevlinkRequest::PortDel {
                dev: dev.clone(),
                port: 98304,
            })
        );
        assert_eq!(sf_del_request(&e, "pf0", 89), None);
        assert_eq!(sf_del_request(&e, "pf4", 88), None);

        assert_eq!(
            port_request(&port, PortSetting::State(true)),
            DevlinkRequest::PortFunctionState {
                dev,
                port: 98304,
                active: true,
            }
        );
    }
}
