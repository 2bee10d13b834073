//! Functions: the virtual hardware a tenant workload sees (API kind
//! `functions`), programmed behind [`FunctionBackend`]:
//!
//! - [`sriov`] — a real SR-IOV PF: VF MAC, VLAN, rate, trust and spoof-check
//!   through rtnetlink (`RTM_SETLINK` with `IFLA_VFINFO_LIST`), representors
//!   found by BlueField naming (`pf0vfN`), and [`devlink`] (eswitch mode,
//!   port function `hw_addr`/state, scalable functions) for switchdev.
//! - [`veth`] — a simulator for hosts without a DPU: per net function a veth
//!   pair whose representor end stays in the agent's namespace and whose
//!   other end is `eth0` in the namespace `dpu-fn-<id>`, addressed as the
//!   tenant would address it.
//! - [`external`] — functions made outside the agent (pre-provisioned VFs/SFs):
//!   only their representors are named, nothing is programmed.
//!
//! Everything a backend makes is named and tagged so that it can be told
//! apart from an operator's devices ([`naming`]), and found again after a
//! restart by [`FunctionBackend::observe`]. Only net functions are
//! programmed here; nvme and virtio-blk functions are emulated by the DPU's
//! storage path, which no backend here provides ([`Applied::Unsupported`]).

pub mod devlink;
pub mod eswitch;
pub mod external;
pub mod naming;
pub mod netns;
pub mod plan;
mod rtnl;
pub mod sriov;
pub mod switchdev;
pub mod veth;

pub use plan::{FunctionAction, Ran, VethPair};
pub use rtnl::decode_route_datagram;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`FunctionBackend::execute`] returns, one signature for every backend.
pub type ExecuteFuture<'a> = BoxFuture<'a, Result<Option<Applied>, FunctionsError>>;

/// The kind of virtual hardware (`spec.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionType {
    Net,
    Nvme,
    VirtioBlk,
}

/// Where a function is carved on its PF: a VF by index, or a scalable
/// function (SF) by its `sfnum` (`devlink port add … flavour pcisf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Vf(u32),
    Sf(u32),
}

impl Slot {
    /// The VF index, for a VF.
    pub fn vf(self) -> Option<u32> {
        match self {
            Slot::Vf(vf) => Some(vf),
            Slot::Sf(_) => None,
        }
    }
}

/// `vf N` or `sf N`, as plans and messages name it.
impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Vf(n) => write!(f, "vf {n}"),
            Slot::Sf(n) => write!(f, "sf {n}"),
        }
    }
}

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Mac {
    type Err = FunctionsError;

    fn from_str(s: &str) -> Result<Mac, FunctionsError> {
        let bad = || FunctionsError::Invalid(format!("{s:?} is not a MAC address"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// What the tenant configures inside its workload; only the `veth`
/// simulator applies it (it plays the tenant), taken from the Port attached
/// to the function and the prefix length of that Port's Network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantAddressing {
    pub mac: Mac,
    /// Addresses with the network's prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// One function as the controller wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionDesired {
    /// The function's id (a DNS label, unique among functions).
    pub id: String,
    pub type_: FunctionType,
    /// The physical function, e.g. `pf0`.
    pub pf: String,
    /// The VF index or SF number on `pf` (allocated by the controller when
    /// the spec has none).
    pub slot: Slot,
    pub mac: Option<Mac>,
    pub vlan: Option<u16>,
    pub max_tx_rate_mbps: Option<u32>,
    /// Default false.
    pub trust: bool,
    /// Default true.
    pub spoof_check: bool,
    /// The function also carries RDMA (RoCE): backends that switch RoCE
    /// per function ([`FunctionBackend::switches_roce`]) turn it on.
    pub rdma: bool,
    /// The tenant side (veth simulator only); `None` while no Port is attached.
    pub tenant: Option<TenantAddressing>,
}

/// What a backend reached for one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Programmed; `representor` is the netdev the network pipeline attaches.
    Ready {
        representor: String,
        /// The netdev the workload sees, where known (`eth0` in the
        /// simulator's namespace, the VF netdev on a host).
        host_device: Option<String>,
    },
    /// Programmed, but the representor netdev was not found (e.g. an eswitch
    /// in legacy mode, or a naming pattern that does not match the device).
    NoRepresentor { expected: String },
    /// This backend cannot provide this kind of function; nothing was done.
    Unsupported {
        reason: UnsupportedReason,
        message: String,
    },
}

/// Why a backend cannot provide a function (the agent maps it to its
/// status reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedReason {
    /// The backend cannot emulate this function type (block, NVMe, ...).
    NoEmulation,
    /// The spec asks for a VF setting that switchdev mode leaves to the
    /// network pipeline (VLAN, trust, spoof checking off).
    SwitchdevField,
    /// The backend cannot carve scalable functions (only the switchdev
    /// backend does, through devlink).
    NoSubFunctions,
}

/// Something a backend made, found by [`FunctionBackend::observe`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObservedFunction {
    /// The owning function's id, when the backend can tag what it makes.
    pub owner: Option<String>,
    /// What it is, for logs (`link fn-web-1`, `netns dpu-fn-web-1`, `pf0 vf 3`).
    pub what: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    #[error("{0}")]
    Invalid(String),
    #[error("network device {0:?} not found")]
    NoDevice(String),
    #[error(
        "network device {name:?} exists but is not the agent's (ifalias {alias:?}); rename or remove it"
    )]
    NotOurs { name: String, alias: Option<String> },
    #[error("netlink {op} failed")]
    Netlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {name}: {op} failed")]
    Netns {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel has no devlink generic netlink family; is this a DPU with devlink support?"
    )]
    NoDevlink(#[source] std::io::Error),
    #[error("devlink {op} failed")]
    Devlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel (or the driver) refused a devlink request; `reason` is
    /// its extended-ack message when it gave one.
    #[error("devlink {op} refused{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    DevlinkRefused {
        op: &'static str,
        reason: Option<String>,
        #[source]
        source: std::io::Error,
    },
    /// The kernel's devlink reply lacks what the request must return.
    #[error("devlink: {0}")]
    DevlinkReply(String),
}

impl FunctionsError {
    /// The errno of a devlink refusal.
    pub fn devlink_errno(&self) -> Option<i32> {
        match self {
            FunctionsError::DevlinkRefused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: std::io::Error) -> Self {
        FunctionsError::Netlink {
            op: op.into(),
            source,
        }
    }
}

/// A way of making functions. Every change goes through a plan: a list of
/// [`FunctionAction`]s planned by a pure function and executed one by one
/// ([`plan::run`]). Actions are idempotent: applying a function that is
/// already as desired changes nothing.
pub trait FunctionBackend: Send + Sync + fmt::Debug + 'static {
    /// `veth` or `sriov`, for status and `/readyz`.
    fn name(&self) -> &'static str;

    /// Everything this backend made that exists now. By default nothing:
    /// for backends that make nothing they could find again (the external
    /// backend makes nothing; SR-IOV VFs carry no owner tag, the controller
    /// knows which it assigned).
    fn observe(&self) -> BoxFuture<'_, Result<Vec<ObservedFunction>, FunctionsError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// What applying `desired` takes, in order; pure. The last action ends
    /// the apply with its [`Applied`].
    fn plan_apply(&self, desired: &FunctionDesired) -> Vec<FunctionAction>;

    /// What removing everything made for function `id` (at `pf`/`vf` when
    /// known) takes; pure. Removing what is already gone succeeds.
    fn plan_remove(&self, id: &str, slot: Option<(&str, Slot)>) -> Vec<FunctionAction>;

    /// Executes one action of this backend's plans: `Some` ends an apply
    /// with its result. An action of another backend is an error (so are
    /// `Unsupported` and `Nothing`, which [`plan::run`] handles itself).
    fn execute<'a>(&'a self, action: &'a FunctionAction) -> ExecuteFuture<'a>;

    /// Whether the backend plays the tenant (the veth simulator configures
    /// the workload's side from the attached port), so a change of the
    /// port must reach it: the controller then looks again periodically.
    fn plays_tenant(&self) -> bool {
        false
    }

    /// Whether the backend turns RoCE on per function when asked
    /// (`FunctionDesired::rdma`); a Ready apply then means it is on.
    /// Elsewhere RoCE is as the driver or the host provides it.
    fn switches_roce(&self) -> bool {
        false
    }

    /// The operator's one-line account of a function this backend made
    /// Ready, for its `Programmed` condition.
    fn ready_message(&self, desired: &FunctionDesired, representor: &str) -> String {
        format!(
            "{} {} configured, representor {representor}",
            desired.pf, desired.slot
        )
    }

    /// Creates or reconfigures one function: runs [`Self::plan_apply`].
    fn apply<'a>(
        &'a self,
        desired: &'a FunctionDesired,
    ) -> BoxFuture<'a, Result<Applied, FunctionsError>> {
        Box::pin(async move { plan::run_apply(self, &self.plan_apply(desired)).await })
    }

    /// Removes function `id`: runs [`Self::plan_remove`].
    fn remove<'a>(
        &'a self,
        id: &'a str,
        slot: Option<(&'a str, Slot)>,
    ) -> BoxFuture<'a, Result<(), FunctionsError>> {
        Box::pin(async move {
            plan::run(self, &self.plan_remove(id, slot)).await?;
            Ok(())
        })
    }
}

/// What a backend that carves only VFs plans for an SF function.
pub(crate) fn no_sub_functions(backend: &str) -> FunctionAction {
    FunctionAction::Unsupported {
        reason: UnsupportedReason::NoSubFunctions,
        message: format!(
            "the {backend} functions backend carves VFs only; sub-functions (spec.carve: sf) need the switchdev backend (devlink)"
        ),
    }
}

/// The error for an action given to a backend that does not plan it.
pub(crate) fn foreign_action(backend: &str, action: &FunctionAction) -> FunctionsError {
    FunctionsError::Invalid(format!("the {backend} backend does not execute {action}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_prints() {
        let m: Mac = "02:00:0A:ff:00:01".parse().unwrap();
        assert_eq!(m.0, [2, 0, 10, 255, 0, 1]);
        assert_eq!(m.to_string(), "02:00:0a:ff:00:01");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "zz:00:00:00:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
