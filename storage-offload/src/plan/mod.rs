//! Pure planning: (desired volumes, observed backend state) → ordered
//! actions. No I/O; every function here is unit-tested.
//!
//! Order: teardown first, in reverse (unpresent → delete device → detach
//! source), then setup (attach source → create device → present), then QoS
//! changes, which are made in place. Objects whose names carry our prefix but
//! belong to no desired volume are orphans and are removed; anything else on
//! the backend is foreign and untouched.
//!
//! Each action renders as one line for `dpuctl plan`: the RPC with its
//! params, the configfs write, or the kernel call.
//!
//! Isolation (TENANCY.md invariant 4): a remote volume's kernel connection
//! is identified by target, host NQN and the agent's host id marker
//! ([`source_connection`]) and adopted only when all match; volumes that
//! would share a connection or a block device, or name another volume's
//! derived host NQN, are refused ([`refusals_nvmet`], [`refusals_spdk`])
//! and left out of the plan.
//!
//! This module holds what the planners share (phases, owners, actions,
//! refusals); the SPDK planners are in `spdk`, the kernel (nvmet) planner
//! in `nvmet`, and their public items are re-exported here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use dpu_api::spec::NvmeofTransport;

use crate::model::{BackendKind, DesiredVolume, NQN_PREFIX, VolumeKey, initiator_nqn_allowed};
use crate::nvmet::configfs::{ConfigfsOp, DeviceRef};
use crate::nvmet::tc::TcOp;
use crate::nvmet::{ConnectOptions, IoMax};
use crate::spdk::{RpcMethod, RpcRequest};

mod nvmet;
mod spdk;

pub use nvmet::{
    NvmetPlanConfig, backing_file_name, nvmet_export, plan_nvmet, refusals_nvmet,
    source_connection, volume_slots,
};
pub use spdk::{SpdkPlanConfig, plan_spdk, refusals_spdk, spdk_limits};

/// Where in a volume's life an action belongs; plans are sorted by phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Unpresent,
    DeleteDevice,
    DetachSource,
    AttachSource,
    CreateDevice,
    Present,
    Qos,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Unpresent => "unpresent",
            Phase::DeleteDevice => "delete-device",
            Phase::DetachSource => "detach-source",
            Phase::AttachSource => "attach-source",
            Phase::CreateDevice => "create-device",
            Phase::Present => "present",
            Phase::Qos => "qos",
        })
    }
}

/// Whose object an action touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A desired volume.
    Volume(VolumeKey),
    /// Left over from a volume that is no longer desired.
    Orphan(VolumeKey),
    /// Shared by all volumes (an nvmf transport, an nvmet port).
    Shared,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Volume(k) => write!(f, "volume {k}"),
            Owner::Orphan(k) => write!(f, "orphan {k}"),
            Owner::Shared => f.write_str("shared"),
        }
    }
}

/// One backend operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// An SPDK or SNAP JSON-RPC call.
    Rpc(RpcRequest),
    /// An nvmet configfs operation.
    Configfs(ConfigfsOp),
    /// Connect the kernel NVMe-oF initiator.
    FabricsConnect(ConnectOptions),
    /// Delete kernel controller `nvme<instance>`.
    FabricsDisconnect {
        instance: u32,
    },
    /// A sparse file holding a local volume (kernel backend).
    CreateBackingFile {
        path: PathBuf,
        size_bytes: u64,
    },
    RemoveBackingFile {
        path: PathBuf,
    },
    /// cgroup v2 `io.max` for the source device.
    SetIoMax {
        cgroup: PathBuf,
        device: DeviceRef,
        limits: IoMax,
    },
    /// Traffic control on the interface `dev` that holds the ports' address.
    Tc {
        dev: String,
        op: TcOp,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Rpc(r) => write!(f, "rpc {r}"),
            Op::Configfs(c) => write!(f, "{c}"),
            Op::FabricsConnect(o) => write!(f, "echo {o} > /dev/nvme-fabrics"),
            Op::FabricsDisconnect { instance } => {
                write!(
                    f,
                    "echo 1 > /sys/class/nvme/nvme{instance}/delete_controller"
                )
            }
            Op::CreateBackingFile { path, size_bytes } => {
                write!(f, "truncate -s {size_bytes} {}", path.display())
            }
            Op::RemoveBackingFile { path } => write!(f, "rm {}", path.display()),
            Op::SetIoMax {
                cgroup,
                device,
                limits,
            } => write!(
                f,
                "echo \"<MAJ:MIN of {device}> {limits}\" > {}",
                cgroup.join("io.max").display()
            ),
            Op::Tc { dev, op } => write!(f, "rtnetlink tc dev {dev} {op}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub owner: Owner,
    pub phase: Phase,
    pub op: Op,
}

/// `volume acme/db [attach-source] rpc bdev_nvme_attach_controller {...}`
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.owner, self.phase, self.op)
    }
}

/// Volumes this backend cannot realize, with the reason; the planners skip
/// them, and the controller reports the reason in their status.
pub fn unsupported(kind: BackendKind, desired: &[DesiredVolume]) -> Vec<(VolumeKey, &'static str)> {
    desired
        .iter()
        .filter_map(|d| {
            kind.unsupported(d.function.type_)
                .map(|r| (d.key.clone(), r))
        })
        .collect()
}

// ---------------------------------------------------------------- refusals

/// Why a backend will not realize a volume (the agent maps it to its
/// status reason: `HostNqnRefused`, `SourceInUse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The volume's `hostnqn` is in the agent's derived namespace and is
    /// not the volume's own initiator NQN: another volume's, a function's.
    HostNqn,
    /// The volume would not get a connection and block device of its own:
    /// another volume (or a connection the agent did not make) holds the
    /// same connection or, under native multipath, the same remote
    /// subsystem. Retried: it clears when the other one goes.
    SourceInUse,
}

/// A volume the planner leaves out, with the reason for its status. Its
/// objects on the backend, if any, are torn down as orphans. The message
/// names only what the volume's own spec says, never another volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: VolumeKey,
    pub reason: RefusalReason,
    pub message: String,
}

fn host_nqn_refusal(d: &DesiredVolume) -> Option<Refusal> {
    let h = d.initiator_nqn()?;
    let own = d.key.initiator_nqn();
    (!initiator_nqn_allowed(&d.key, &h)).then(|| Refusal {
        key: d.key.clone(),
        reason: RefusalReason::HostNqn,
        message: format!(
            "spec.source.nvmeof.hostnqn {h:?} is in the agent's derived namespace \
             {NQN_PREFIX:?} and is not this volume's own ({own}); omit it to connect as {own}"
        ),
    })
}

/// The observed subsystems whose NQN names a volume (the agent made them)
/// that is not `wanted`, each with that volume's key: the orphan subsystems
/// both planners remove.
fn orphan_subsystems<'a, S>(
    subsystems: &'a BTreeMap<String, S>,
    wanted: &'a BTreeSet<&VolumeKey>,
) -> impl Iterator<Item = (&'a String, &'a S, VolumeKey)> {
    subsystems.iter().filter_map(|(nqn, sub)| {
        let key = VolumeKey::from_subsystem_nqn(nqn)?;
        (!wanted.contains(&key)).then_some((nqn, sub, key))
    })
}

fn sorted(mut actions: Vec<Action>) -> Vec<Action> {
    // Stable: within a phase, emission order is the required order.
    actions.sort_by_key(|a| a.phase);
    actions
}

struct Out(Vec<Action>);

impl Out {
    fn rpc<M: RpcMethod>(&mut self, owner: &Owner, phase: Phase, params: M) {
        self.0.push(Action {
            owner: owner.clone(),
            phase,
            op: Op::Rpc(RpcRequest::new(&params)),
        });
    }

    fn op(&mut self, owner: &Owner, phase: Phase, op: Op) {
        self.0.push(Action {
            owner: owner.clone(),
            phase,
            op,
        });
    }

    fn configfs(&mut self, owner: &Owner, phase: Phase, ops: Vec<ConfigfsOp>) {
        for c in ops {
            self.op(owner, phase, Op::Configfs(c));
        }
    }
}

fn trtype(t: NvmeofTransport) -> &'static str {
    match t {
        NvmeofTransport::Tcp => "tcp",
        NvmeofTransport::Rdma => "rdma",
    }
}

/// Groups actions by owner, for a per-volume view.
pub fn by_owner(actions: &[Action]) -> BTreeMap<String, Vec<&Action>> {
    let mut m: BTreeMap<String, Vec<&Action>> = BTreeMap::new();
    for a in actions {
        m.entry(a.owner.to_string()).or_default().push(a);
    }
    m
}

#[cfg(test)]
pub(super) mod fixtures {
    //! Volumes and planner settings the planners' tests share.

    use super::*;
    use crate::model::{FunctionTarget, function_host_nqn};
    use dpu_api::spec::{FunctionType, LocalSource, NvmeofSource, VolumeSource, VolumeSpec};

    /// `d` with QoS limits `max_iops` and `max_mbps`.
    pub(super) fn with_qos(
        mut d: DesiredVolume,
        max_iops: Option<u64>,
        max_mbps: Option<u64>,
    ) -> DesiredVolume {
        d.spec.qos = Some(dpu_api::spec::VolumeQos { max_iops, max_mbps });
        d
    }

    pub(super) fn remote(tenant: &str, id: &str, type_: FunctionType) -> DesiredVolume {
        DesiredVolume {
            key: VolumeKey::new(tenant, id),
            spec: VolumeSpec {
                function: "f1".into(),
                nsid: None,
                source: VolumeSource::Nvmeof(NvmeofSource {
                    transport: NvmeofTransport::Tcp,
                    address: "192.0.2.1".into(),
                    port: 4420,
                    subnqn: "nqn.2014-08.org.example:remote".parse().unwrap(),
                    hostnqn: None,
                }),
                qos: None,
                read_only: None,
            },
            function: FunctionTarget {
                id: "f1".into(),
                type_,
                pf: 0,
                vf: Some(3),
                host_nqn: function_host_nqn(tenant, "f1"),
            },
        }
    }

    pub(super) fn local(tenant: &str, id: &str) -> DesiredVolume {
        let mut d = remote(tenant, id, FunctionType::Nvme);
        d.spec.source = VolumeSource::Local(LocalSource { size_mib: 64 });
        d
    }

    pub(super) fn lines(a: &[Action]) -> Vec<String> {
        a.iter().map(|a| a.to_string()).collect()
    }

    pub(super) fn nvmf_cfg() -> SpdkPlanConfig {
        SpdkPlanConfig::default()
    }

    pub(super) fn nvmet_cfg() -> NvmetPlanConfig {
        NvmetPlanConfig {
            qos_cgroup: Some("/sys/fs/cgroup/dpu-volumes".into()),
            ..NvmetPlanConfig::tcp(
                1,
                "192.0.2.10:4420".parse().unwrap(),
                "/var/lib/dpu-agent/volumes".into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::model::{SpdkObserved, function_host_nqn};
    use crate::nvmet::configfs::NvmetObserved;
    use dpu_api::spec::{FunctionType, VolumeSource};

    #[test]
    fn unsupported_functions_are_reported_not_planned() {
        let d = remote("t", "v", FunctionType::VirtioBlk);
        assert_eq!(
            unsupported(BackendKind::Nvmet, std::slice::from_ref(&d)).len(),
            1
        );
        assert_eq!(
            plan_nvmet(&[d], &NvmetObserved::default(), &nvmet_cfg()),
            []
        );
    }

    #[test]
    fn another_volumes_derived_host_nqn_is_refused_on_every_backend() {
        let victim = VolumeKey::new("victim", "db");
        for hostnqn in [
            victim.initiator_nqn(),
            function_host_nqn("victim", "f1"),
            victim.subsystem_nqn(),
        ] {
            let mut a = remote("acme", "db", FunctionType::Nvme);
            let VolumeSource::Nvmeof(n) = &mut a.spec.source else {
                unreachable!()
            };
            n.hostnqn = Some(hostnqn.parse().unwrap());
            let r = refusals_nvmet(std::slice::from_ref(&a), &NvmetObserved::default());
            assert_eq!(r.len(), 1, "{hostnqn}");
            assert_eq!(r[0].reason, RefusalReason::HostNqn);
            assert!(
                r[0].message.contains("spec.source.nvmeof.hostnqn"),
                "{}",
                r[0].message
            );
            let plan = plan_nvmet(
                std::slice::from_ref(&a),
                &NvmetObserved::default(),
                &nvmet_cfg(),
            );
            assert_eq!(plan, [], "{hostnqn}");
            assert_eq!(refusals_spdk(std::slice::from_ref(&a)), r);
            assert_eq!(
                plan_spdk(
                    std::slice::from_ref(&a),
                    &SpdkObserved::default(),
                    &nvmf_cfg()
                ),
                [],
                "{hostnqn}"
            );
        }
        // Its own derived NQN, spelled out, is fine.
        let mut a = remote("acme", "db", FunctionType::Nvme);
        let VolumeSource::Nvmeof(n) = &mut a.spec.source else {
            unreachable!()
        };
        n.hostnqn = Some(a.key.initiator_nqn().parse().unwrap());
        assert_eq!(
            refusals_nvmet(std::slice::from_ref(&a), &NvmetObserved::default()),
            []
        );
    }
}
