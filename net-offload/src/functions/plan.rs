//! Plans as data: what a functions backend does to apply or remove one
//! function is a list of [`FunctionAction`]s, planned by a pure function
//! ([`super::FunctionBackend::plan_apply`], `plan_remove`) and executed one
//! by one by [`run`] — the only way a backend changes anything — so the
//! plan `/v1/plan` shows is the list apply runs.

use std::fmt;

use super::sriov::VfConfig;
use super::switchdev::PortSetting;
use super::{
    Applied, FunctionBackend, FunctionsError, Mac, Slot, TenantAddressing, UnsupportedReason,
};

/// One operation of a functions backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionAction {
    /// The backend cannot make this function type: the apply ends with
    /// [`Applied::Unsupported`], nothing is changed.
    Unsupported {
        reason: UnsupportedReason,
        message: String,
    },
    /// Nothing to do, and why (e.g. a function made outside the agent).
    Nothing { why: String },
    /// veth: the network namespace `/run/netns/<name>`, made if absent
    /// (unshare `CLONE_NEWNET`, bind mount).
    NetnsAdd { name: String },
    /// veth: the pair and both ends configured — see [`VethPair`]. Ends an
    /// apply with [`Applied::Ready`].
    VethPair(VethPair),
    /// veth: the representor deleted (its peer goes with it) unless another
    /// owner tagged it.
    VethDelete {
        /// The function whose representor it is.
        id: String,
        representor: String,
        /// The named namespace the representor lives in (the switch's);
        /// `None`: the agent's.
        switch_netns: Option<String>,
        /// The function's namespace, where the peer is.
        netns: String,
    },
    /// veth: the namespace unmounted (`MNT_DETACH`) and unlinked; absent is
    /// fine.
    NetnsDel { name: String },
    /// sriov: one VF's legacy settings through the PF (`RTM_NEWLINK`
    /// without `NLM_F_CREATE`, `IFLA_VFINFO_LIST`, as iproute2 sends
    /// `ip link set PF vf N ...`).
    SetVf { pf_netdev: String, config: VfConfig },
    /// sriov: a released VF back to its defaults ([`VfConfig::reset`]); a
    /// PF that is gone has nothing left to reset.
    ResetVf { pf_netdev: String, vf: u32 },
    /// sriov: the VF's representor up with the function's alias. Ends an
    /// apply with [`Applied::Ready`], or [`Applied::NoRepresentor`] when no
    /// netdev has that name.
    RepresentorUp { representor: String, alias: String },
    /// switchdev: one setting of the function's eswitch port through
    /// devlink, the port found in the eswitch's port dump by (PF, vfnum) or
    /// (PF, sfnum). Ends an apply with [`Applied::NoRepresentor`] while
    /// devlink lists no such port.
    EswitchPort {
        pf: String,
        slot: Slot,
        setting: PortSetting,
    },
    /// switchdev: the representor devlink names for the function's port, up
    /// with the function's alias. Ends an apply with [`Applied::Ready`] (or
    /// [`Applied::NoRepresentor`]).
    EswitchRepresentorUp {
        pf: String,
        slot: Slot,
        alias: String,
    },
    /// switchdev: the SF port `sfnum` on the PF `pf` names, made when
    /// devlink does not list it (`DEVLINK_CMD_PORT_NEW`, flavour pcisf, with
    /// the PF's controller and pfnum).
    EswitchSfAdd { pf: String, sfnum: u32 },
    /// switchdev: the SF port `sfnum` of `pf` deleted
    /// (`DEVLINK_CMD_PORT_DEL`) when devlink lists it.
    EswitchSfDel { pf: String, sfnum: u32 },
    /// external: the representor of a function made outside the agent,
    /// named and not programmed. Ends an apply with [`Applied::Ready`].
    NameRepresentor {
        pf: String,
        vf: u32,
        representor: String,
    },
}

/// The veth simulator's pair for one function: the representor in the
/// switch's namespace and `eth0` in the function's, made in one
/// `RTM_NEWLINK` when absent (and made again, once, when the representor
/// outlived its `eth0`); the representor up with the alias; inside the
/// function's namespace `lo` up, `eth0` with its MAC, up, with the alias,
/// transmit checksums computed (`SIOCETHTOOL`), and exactly the tenant's
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    pub id: String,
    pub representor: String,
    pub switch_netns: Option<String>,
    pub netns: String,
    pub alias: String,
    /// `eth0`'s MAC: the attached port's, else the function's.
    pub mac: Option<Mac>,
    /// The attached port's addressing; `None`: no port, no address.
    pub tenant: Option<TenantAddressing>,
}

/// The tenant's interface inside the function's namespace.
pub const TENANT_IFNAME: &str = "eth0";

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

impl FunctionAction {
    /// What a VF backend plans for an nvme or virtio-blk function: nothing,
    /// those are the storage path's (SNAP) to emulate.
    pub fn no_storage_emulation() -> FunctionAction {
        FunctionAction::Unsupported {
            reason: UnsupportedReason::NoEmulation,
            message: "nvme and virtio-blk functions are emulated by the DPU's storage path (storage backend spdk with SNAP), not by this functions backend".to_string(),
        }
    }

    /// The action in the backend's notation, one line per kernel operation
    /// (netlink messages as iproute2 would send them, namespace and ioctl
    /// calls).
    pub fn lines(&self) -> Vec<String> {
        match self {
            FunctionAction::Unsupported { message, .. } => vec![format!("nothing: {message}")],
            FunctionAction::Nothing { why } => vec![format!("nothing: {why}")],
            FunctionAction::NetnsAdd { name } => vec![format!(
                "netns add {name} (unshare CLONE_NEWNET, bind mount on /run/netns/{name})"
            )],
            FunctionAction::VethPair(p) => p.lines(),
            FunctionAction::VethDelete {
                representor,
                switch_netns,
                netns,
                ..
            } => vec![format!(
                "{}RTM_DELLINK {representor} (and its peer {TENANT_IFNAME} in {netns})",
                in_netns(switch_netns)
            )],
            FunctionAction::NetnsDel { name } => vec![format!(
                "netns del {name} (umount2 MNT_DETACH, unlink /run/netns/{name})"
            )],
            FunctionAction::SetVf { pf_netdev, config } => {
                let mac = config.mac.map(|m| format!("mac {m} ")).unwrap_or_default();
                vec![format!(
                    "RTM_NEWLINK (change) {pf_netdev} vf {} {mac}vlan {} trust {} spoofchk {} min_tx_rate 0 max_tx_rate {}",
                    config.vf,
                    config.vlan,
                    on_off(config.trust),
                    on_off(config.spoof_check),
                    config.max_tx_rate_mbps
                )]
            }
            FunctionAction::ResetVf { pf_netdev, vf } => vec![format!(
                "RTM_NEWLINK (change) {pf_netdev} vf {vf} mac 00:00:00:00:00:00 vlan 0 trust off spoofchk on min_tx_rate 0 max_tx_rate 0 (if {pf_netdev} exists)"
            )],
            FunctionAction::RepresentorUp { representor, alias } => vec![format!(
                "RTM_SETLINK {representor} up alias {alias:?} (the representor)"
            )],
            FunctionAction::EswitchPort { pf, slot, setting } => vec![match (setting, slot) {
                (PortSetting::HwAddr(mac), Slot::Vf(vf)) => format!(
                    "devlink port function set {pf} vf {vf} hw_addr {mac} (if the driver refuses port function attributes: RTM_NEWLINK (change) UPLINK vf {vf} mac {mac})"
                ),
                (PortSetting::HwAddr(mac), Slot::Sf(_)) => {
                    format!("devlink port function set {pf} {slot} hw_addr {mac}")
                }
                (PortSetting::TxMax { mbps: 0 }, _) => {
                    format!("devlink port function rate set {pf} {slot} tx_max 0 (no limit)")
                }
                (PortSetting::TxMax { mbps }, _) => {
                    format!("devlink port function rate set {pf} {slot} tx_max {mbps}mbit")
                }
                (PortSetting::Roce(on), _) => format!(
                    "devlink port function set {pf} {slot} roce {}",
                    if *on { "enable" } else { "disable" }
                ),
                (PortSetting::State(on), _) => format!(
                    "devlink port function set {pf} {slot} state {}",
                    if *on { "active" } else { "inactive" }
                ),
            }],
            FunctionAction::EswitchRepresentorUp { pf, slot, alias } => vec![format!(
                "RTM_SETLINK <{pf} {slot}'s representor, from devlink> up alias {alias:?}"
            )],
            FunctionAction::EswitchSfAdd { pf, sfnum } => vec![format!(
                "devlink port add <{pf}'s device> flavour pcisf controller <{pf}'s> pfnum <{pf}'s> sfnum {sfnum} (if devlink lists no such port)"
            )],
            FunctionAction::EswitchSfDel { pf, sfnum } => vec![format!(
                "devlink port del <{pf} sf {sfnum}'s port> (if devlink lists it)"
            )],
            FunctionAction::NameRepresentor {
                pf,
                vf,
                representor,
            } => vec![format!(
                "nothing to program: {pf} vf {vf} is made outside the agent; representor {representor}"
            )],
        }
    }
}

impl fmt::Display for FunctionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("; "))
    }
}

/// `in netns NAME: ` before what is done in a named namespace.
fn in_netns(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map(|n| format!("in netns {n}: "))
        .unwrap_or_default()
}

impl VethPair {
    fn lines(&self) -> Vec<String> {
        let (rep, ns, alias) = (&self.representor, &self.netns, &self.alias);
        let sw = in_netns(&self.switch_netns);
        let mac = self
            .mac
            .map(|m| format!(" address {m}"))
            .unwrap_or_default();
        let mut out = vec![
            format!(
                "{sw}RTM_NEWLINK {rep} type veth peer {TENANT_IFNAME} netns {ns}{mac} (if absent)"
            ),
            format!("{sw}RTM_SETLINK {rep} up alias {alias:?}"),
            format!("in netns {ns}: RTM_SETLINK lo up"),
            format!("in netns {ns}: RTM_SETLINK {TENANT_IFNAME}{mac} up alias {alias:?}"),
            format!("in netns {ns}: SIOCETHTOOL {TENANT_IFNAME} tx checksum off"),
        ];
        match &self.tenant {
            Some(t) => {
                out.extend(t.addresses.iter().map(|(ip, p)| {
                    format!("in netns {ns}: RTM_NEWADDR {ip}/{p} dev {TENANT_IFNAME}")
                }))
            }
            None => out.push(format!(
                "in netns {ns}: no port attached, {TENANT_IFNAME} gets no address"
            )),
        }
        out.push(format!(
            "in netns {ns}: RTM_DELADDR any other address on {TENANT_IFNAME}"
        ));
        out
    }
}

/// Every line of a plan, in order.
pub fn lines(plan: &[FunctionAction]) -> Vec<String> {
    plan.iter().flat_map(FunctionAction::lines).collect()
}

/// What running a plan did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The result the plan ended with (`None` for a removal).
    pub applied: Option<Applied>,
    /// The actions executed, in order, each recorded once the backend
    /// returned from it without an error.
    pub executed: Vec<FunctionAction>,
}

/// Executes `plan` on `backend`, action by action, stopping at the first
/// error or at the action that ends an apply with its result.
/// [`FunctionAction::Unsupported`] and [`FunctionAction::Nothing`] are the
/// same for every backend and handled here; the rest goes to
/// [`FunctionBackend::execute`].
pub async fn run<B: FunctionBackend + ?Sized>(
    backend: &B,
    plan: &[FunctionAction],
) -> Result<Ran, FunctionsError> {
    let mut executed = Vec::with_capacity(plan.len());
    for action in plan {
        let applied = match action {
            FunctionAction::Unsupported { reason, message } => Some(Applied::Unsupported {
                reason: *reason,
                message: message.clone(),
            }),
            FunctionAction::Nothing { .. } => None,
            own => backend.execute(own).await?,
        };
        executed.push(action.clone());
        if applied.is_some() {
            return Ok(Ran { applied, executed });
        }
    }
    Ok(Ran {
        applied: None,
        executed,
    })
}

/// Runs an apply plan: its result, or an error when the plan ends without
/// one (a backend bug, never a panic).
pub async fn run_apply<B: FunctionBackend + ?Sized>(
    backend: &B,
    plan: &[FunctionAction],
) -> Result<Applied, FunctionsError> {
    run(backend, plan).await?.applied.ok_or_else(|| {
        FunctionsError::Invalid(format!(
            "the {} backend's plan ended without a result: {}",
            backend.name(),
            lines(plan).join("; ")
        ))
    })
}
