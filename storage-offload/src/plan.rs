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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use dpu_api::spec::{FunctionType, NvmeofTransport, VolumeSource};

use crate::model::{
    BackendKind, DesiredVolume, NQN_PREFIX, Qos, SpdkObserved, VolumeKey, initiator_host_id,
    initiator_nqn_allowed,
};
use crate::nvmet::configfs::{self, ConfigfsOp, DeviceRef, NvmetObserved, PortConfig};
use crate::nvmet::tc::{TcObserved, TcOp};
use crate::nvmet::{ConnectOptions, FabricsController, IoMax};
use crate::spdk::methods::{self as m, ListenAddress, QosLimits};
use crate::spdk::snap;
use crate::spdk::{RpcMethod, RpcRequest};

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

/// Volumes the SPDK backends refuse: a host NQN that is another volume's
/// (or a function's) derived NQN. Each remote source is a bdev_nvme
/// controller named after its volume (`dpu_<tenant>_<volume>_src`), found
/// by that name only, so volumes never share a controller or bdev there.
pub fn refusals_spdk(desired: &[DesiredVolume]) -> Vec<Refusal> {
    desired.iter().filter_map(host_nqn_refusal).collect()
}

/// The connection volume `d` makes to its remote source (None for a local
/// volume): the target, the host NQN it connects as, and the agent's host
/// id marker for that NQN ([`initiator_host_id`]).
pub fn source_connection(d: &DesiredVolume) -> Option<ConnectOptions> {
    let VolumeSource::Nvmeof(n) = &d.spec.source else {
        return None;
    };
    let hostnqn = d.initiator_nqn()?;
    Some(ConnectOptions {
        transport: trtype(n.transport).into(),
        traddr: n.address.clone(),
        trsvcid: n.port.to_string(),
        nqn: n.subnqn.clone(),
        hostid: Some(initiator_host_id(&hostnqn)),
        hostnqn,
    })
}

/// Whether the agent made controller `c`: its host NQN is a volume
/// initiator NQN the agent derives, or its host id is the agent's marker
/// for its host NQN. Anything else is never adopted nor disconnected.
fn agent_made(c: &FabricsController) -> bool {
    VolumeKey::from_initiator_nqn(&c.hostnqn).is_some() || c.hostid == initiator_host_id(&c.hostnqn)
}

/// Volumes the kernel backend refuses, so that no volume is ever handed a
/// connection or block device that is not its own:
///
/// - a host NQN in the agent's derived namespace that is not the volume's;
/// - a connection (target + host NQN) another desired volume already has:
///   the kernel keeps one per host NQN and target;
/// - a connection with that target and host NQN the agent did not make
///   (it is not adopted, and the kernel would refuse a second);
/// - with native multipath on, any other connection to the same remote
///   subsystem NQN: the kernel joins every controller of one subsystem
///   into one host-side subsystem whose namespaces are one shared block
///   device, whatever the host NQN.
///
/// Volumes that already hold their own connection are considered first, so
/// a newcomer never displaces an adopted one; then by key.
pub fn refusals_nvmet(desired: &[DesiredVolume], observed: &NvmetObserved) -> Vec<Refusal> {
    let supported = |d: &&DesiredVolume| BackendKind::Nvmet.unsupported(d.function.type_).is_none();
    let mut out: Vec<Refusal> = desired
        .iter()
        .filter(supported)
        .filter_map(host_nqn_refusal)
        .collect();
    let refused: BTreeSet<VolumeKey> = out.iter().map(|r| r.key.clone()).collect();
    // How firmly each volume holds its connection: 2 if it exists and the
    // volume's own subsystem exports its device (the volume made it; this
    // tells two volumes of one tenant-supplied host NQN apart), 1 if it
    // exists, 0 if not.
    let mut remote: Vec<(&DesiredVolume, ConnectOptions, u8)> = desired
        .iter()
        .filter(supported)
        .filter(|d| !refused.contains(&d.key))
        .filter_map(|d| {
            let c = source_connection(d)?;
            let conn = observed.controllers.iter().find(|x| x.is_connection_of(&c));
            let exported = conn.and_then(|x| x.namespace_device()).is_some_and(|dev| {
                let path = format!("/dev/{dev}");
                observed
                    .subsystems
                    .get(&d.key.subsystem_nqn())
                    .is_some_and(|s| s.namespaces.values().any(|ns| ns.device_path == path))
            });
            let hold = match (conn.is_some(), exported) {
                (true, true) => 2,
                (true, false) => 1,
                (false, _) => 0,
            };
            Some((d, c, hold))
        })
        .collect();
    remote.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.key.cmp(&b.0.key)));
    let mut claimed: BTreeSet<(String, String, String, String, String)> = BTreeSet::new();
    let mut claimed_subsystems: BTreeSet<String> = BTreeSet::new();
    for (d, c, _) in remote {
        let refuse = |message: String| Refusal {
            key: d.key.clone(),
            reason: RefusalReason::SourceInUse,
            message,
        };
        let target = format!("subsystem {} at {}:{}", c.nqn, c.traddr, c.trsvcid);
        let id = (
            c.transport.clone(),
            c.traddr.clone(),
            c.trsvcid.clone(),
            c.nqn.clone(),
            c.hostnqn.clone(),
        );
        let same_target = |x: &FabricsController| {
            x.transport == c.transport
                && x.traddr == c.traddr
                && x.trsvcid == c.trsvcid
                && x.subnqn == c.nqn
        };
        if claimed.contains(&id) {
            out.push(refuse(format!(
                "another volume on this DPU already connects to {target} as host NQN {}: \
                 volumes never share a connection; give this volume its own host NQN (omit \
                 spec.source.nvmeof.hostnqn)",
                c.hostnqn
            )));
            continue;
        }
        if observed
            .controllers
            .iter()
            .any(|x| same_target(x) && x.hostnqn == c.hostnqn && !agent_made(x))
        {
            out.push(refuse(format!(
                "a connection the agent did not make already uses {target} as host NQN {}; it \
                 is not adopted and the kernel refuses a second one: disconnect it",
                c.hostnqn
            )));
            continue;
        }
        if observed.multipath
            && (claimed_subsystems.contains(&c.nqn)
                || observed
                    .controllers
                    .iter()
                    .any(|x| x.subnqn == c.nqn && !x.is_connection_of(&c)))
        {
            out.push(refuse(format!(
                "another connection to remote subsystem {} exists on this DPU, and with the \
                 kernel's native NVMe multipath (nvme_core.multipath=Y) it would share one block \
                 device with this volume: one volume per remote subsystem; retried until the \
                 other goes (or boot the DPU with nvme_core.multipath=N)",
                c.nqn
            )));
            continue;
        }
        claimed.insert(id);
        claimed_subsystems.insert(c.nqn.clone());
    }
    out
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

// ---------------------------------------------------------------- SPDK / SNAP

/// Settings of the SPDK planners.
#[derive(Debug, Clone, PartialEq)]
pub struct SpdkPlanConfig {
    /// [`BackendKind::Snap`] or [`BackendKind::SpdkNvmf`].
    pub kind: BackendKind,
    /// Where nvmf subsystems listen (SpdkNvmf).
    pub listen: ListenAddress,
    /// Block size of local (malloc) volumes.
    pub local_block_size: u32,
}

impl Default for SpdkPlanConfig {
    fn default() -> Self {
        SpdkPlanConfig {
            kind: BackendKind::SpdkNvmf,
            listen: ListenAddress {
                trtype: "TCP".into(),
                adrfam: Some("IPv4".into()),
                traddr: "127.0.0.1".into(),
                trsvcid: Some("4420".into()),
            },
            local_block_size: 4096,
        }
    }
}

fn adrfam(address: &str) -> &'static str {
    if address.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    }
}

fn trtype(t: NvmeofTransport) -> &'static str {
    match t {
        NvmeofTransport::Tcp => "tcp",
        NvmeofTransport::Rdma => "rdma",
    }
}

/// SPDK limits for a volume's QoS; 0 is unlimited.
pub fn spdk_limits(q: &Qos) -> QosLimits {
    QosLimits {
        rw_ios_per_sec: q.max_iops.unwrap_or(0),
        rw_mbytes_per_sec: q.max_mbps.unwrap_or(0),
        r_mbytes_per_sec: 0,
        w_mbytes_per_sec: 0,
    }
}

/// Serial numbers are at most 20 ASCII characters; derive a stable one.
fn serial_of(key: &VolumeKey) -> String {
    // FNV-1a over the identity: stable across restarts and versions.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.tenant.bytes().chain([b'/']).chain(key.id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("DPU{h:016X}")
}

const MODEL: &str = "dpu-agent volume";

/// Plans an SPDK backend: SNAP emulation on a BlueField or plain SPDK
/// (nvmf + vhost).
pub fn plan_spdk(
    desired: &[DesiredVolume],
    observed: &SpdkObserved,
    cfg: &SpdkPlanConfig,
) -> Vec<Action> {
    let mut out = Out(Vec::new());
    let snap = cfg.kind == BackendKind::Snap;
    let refused: BTreeSet<VolumeKey> = refusals_spdk(desired).into_iter().map(|r| r.key).collect();
    let wanted: BTreeSet<&VolumeKey> = desired
        .iter()
        .filter(|d| cfg.kind.unsupported(d.function.type_).is_none())
        .filter(|d| !refused.contains(&d.key))
        .map(|d| &d.key)
        .collect();

    // Orphans, in reverse order of creation.
    for ctrl in &observed.controllers {
        let Some(key) = VolumeKey::from_object_name(ctrl) else {
            continue;
        };
        if wanted.contains(&key) {
            continue;
        }
        let owner = Owner::Orphan(key);
        let ctrl = ctrl.clone();
        if !snap {
            out.rpc(
                &owner,
                Phase::Unpresent,
                m::VhostDeleteController { ctrlr: ctrl },
            );
        } else if ctrl.ends_with("_vblk") {
            out.rpc(
                &owner,
                Phase::Unpresent,
                snap::VirtioBlkControllerDestroy { ctrl },
            );
        } else {
            out.rpc(
                &owner,
                Phase::Unpresent,
                snap::NvmeControllerDestroy { ctrl },
            );
        }
    }
    for (nqn, sub) in &observed.subsystems {
        let Some(key) = VolumeKey::from_subsystem_nqn(nqn) else {
            continue;
        };
        if wanted.contains(&key) {
            continue;
        }
        let owner = Owner::Orphan(key);
        if snap {
            for nsid in sub.namespaces.keys() {
                out.rpc(
                    &owner,
                    Phase::DeleteDevice,
                    snap::NvmeNamespaceDestroy {
                        nqn: nqn.clone(),
                        nsid: *nsid,
                    },
                );
            }
            out.rpc(
                &owner,
                Phase::DeleteDevice,
                snap::NvmeSubsystemDestroy { nqn: nqn.clone() },
            );
        } else {
            out.rpc(
                &owner,
                Phase::DeleteDevice,
                m::NvmfDeleteSubsystem { nqn: nqn.clone() },
            );
        }
    }
    for name in &observed.nvme_controllers {
        let Some(key) = VolumeKey::from_object_name(name) else {
            continue;
        };
        if !wanted.contains(&key) {
            out.rpc(
                &Owner::Orphan(key),
                Phase::DetachSource,
                m::BdevNvmeDetachController { name: name.clone() },
            );
        }
    }
    for name in observed.bdevs.keys() {
        let Some(key) = VolumeKey::from_object_name(name) else {
            continue;
        };
        // Only malloc bdevs carry exactly the source name; bdevs of an
        // nvme controller go with the controller.
        if *name == key.source_name() && !wanted.contains(&key) {
            out.rpc(
                &Owner::Orphan(key),
                Phase::DetachSource,
                m::BdevMallocDelete { name: name.clone() },
            );
        }
    }

    // The nvmf transport, once, if any volume is presented over nvmf.
    let needs_transport = !snap
        && desired
            .iter()
            .any(|d| wanted.contains(&d.key) && d.function.type_ == FunctionType::Nvme);
    if needs_transport
        && !observed
            .nvmf_transports
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&cfg.listen.trtype))
    {
        out.rpc(
            &Owner::Shared,
            Phase::CreateDevice,
            m::NvmfCreateTransport {
                trtype: cfg.listen.trtype.clone(),
                ..Default::default()
            },
        );
    }

    for d in desired.iter().filter(|d| wanted.contains(&d.key)) {
        plan_spdk_volume(&mut out, d, observed, cfg);
    }
    sorted(out.0)
}

fn plan_spdk_volume(out: &mut Out, d: &DesiredVolume, obs: &SpdkObserved, cfg: &SpdkPlanConfig) {
    let owner = Owner::Volume(d.key.clone());
    let key = &d.key;
    let src = key.source_name();
    let remote = matches!(d.spec.source, VolumeSource::Nvmeof(_));
    let bdev = key.source_bdev(remote);
    let mut fresh = false;

    match &d.spec.source {
        VolumeSource::Nvmeof(n) if !obs.nvme_controllers.contains(&src) => {
            fresh = true;
            out.rpc(
                &owner,
                Phase::AttachSource,
                m::BdevNvmeAttachController {
                    name: src.clone(),
                    trtype: trtype(n.transport).into(),
                    traddr: n.address.clone(),
                    adrfam: Some(adrfam(&n.address).into()),
                    trsvcid: Some(n.port.to_string()),
                    subnqn: Some(n.subnqn.clone()),
                    hostnqn: Some(n.hostnqn.clone().unwrap_or_else(|| key.initiator_nqn())),
                    ..Default::default()
                },
            );
        }
        VolumeSource::Local(l) if !obs.bdevs.contains_key(&src) => {
            fresh = true;
            let bs = u64::from(cfg.local_block_size.max(512));
            out.rpc(
                &owner,
                Phase::AttachSource,
                m::BdevMallocCreate {
                    name: Some(src.clone()),
                    block_size: cfg.local_block_size.max(512),
                    num_blocks: l.size_mib.saturating_mul(1024 * 1024) / bs,
                    ..Default::default()
                },
            );
        }
        _ => {}
    }

    let nqn = key.subsystem_nqn();
    let nsid = d.nsid();
    let sub = obs.subsystems.get(&nqn);
    let has_ns = sub.is_some_and(|s| s.namespaces.get(&nsid) == Some(&bdev));
    match (cfg.kind, d.function.type_) {
        (BackendKind::Snap, FunctionType::Nvme) => {
            if sub.is_none() {
                out.rpc(
                    &owner,
                    Phase::CreateDevice,
                    snap::NvmeSubsystemCreate {
                        nqn: nqn.clone(),
                        serial_number: Some(serial_of(key)),
                        model_number: Some(MODEL.into()),
                    },
                );
            }
            if !has_ns {
                out.rpc(
                    &owner,
                    Phase::CreateDevice,
                    snap::NvmeNamespaceCreate {
                        nqn: nqn.clone(),
                        nsid,
                        bdev_name: bdev.clone(),
                        uuid: None,
                    },
                );
            }
            let ctrl = key.object_name("ctrl");
            let has_ctrl = obs.controllers.contains(&ctrl);
            if !has_ctrl {
                out.rpc(
                    &owner,
                    Phase::Present,
                    snap::NvmeControllerCreate {
                        nqn: nqn.clone(),
                        ctrl: ctrl.clone(),
                        pf_id: d.function.pf,
                        vf_id: d.function.vf,
                        num_queues: None,
                    },
                );
            }
            if !has_ctrl || !has_ns {
                out.rpc(
                    &owner,
                    Phase::Present,
                    snap::NvmeControllerAttachNs { ctrl, nsid },
                );
            }
        }
        (BackendKind::Snap, FunctionType::VirtioBlk) => {
            let ctrl = key.object_name("vblk");
            if !obs.controllers.contains(&ctrl) {
                out.rpc(
                    &owner,
                    Phase::Present,
                    snap::VirtioBlkControllerCreate {
                        ctrl,
                        pf_id: d.function.pf,
                        vf_id: d.function.vf,
                        bdev: bdev.clone(),
                        num_queues: None,
                    },
                );
            }
        }
        (_, FunctionType::Nvme) => {
            if sub.is_none() {
                out.rpc(
                    &owner,
                    Phase::CreateDevice,
                    m::NvmfCreateSubsystem {
                        nqn: nqn.clone(),
                        serial_number: Some(serial_of(key)),
                        model_number: Some(MODEL.into()),
                        allow_any_host: Some(false),
                        ..Default::default()
                    },
                );
            }
            if !has_ns {
                out.rpc(
                    &owner,
                    Phase::CreateDevice,
                    m::NvmfSubsystemAddNs {
                        nqn: nqn.clone(),
                        namespace: m::NvmfNamespace {
                            bdev_name: bdev.clone(),
                            nsid: Some(nsid),
                            uuid: None,
                        },
                    },
                );
            }
            if !sub.is_some_and(|s| s.hosts.contains(&d.function.host_nqn)) {
                out.rpc(
                    &owner,
                    Phase::Present,
                    m::NvmfSubsystemAddHost {
                        nqn: nqn.clone(),
                        host: d.function.host_nqn.clone(),
                    },
                );
            }
            let listening = sub.is_some_and(|s| {
                s.listeners.iter().any(|l| {
                    l.traddr == cfg.listen.traddr
                        && l.trsvcid == cfg.listen.trsvcid
                        && l.trtype.eq_ignore_ascii_case(&cfg.listen.trtype)
                })
            });
            if !listening {
                out.rpc(
                    &owner,
                    Phase::Present,
                    m::NvmfSubsystemAddListener {
                        nqn,
                        listen_address: cfg.listen.clone(),
                    },
                );
            }
        }
        (_, FunctionType::VirtioBlk) => {
            let ctrlr = key.object_name("vhost");
            if !obs.controllers.contains(&ctrlr) {
                out.rpc(
                    &owner,
                    Phase::Present,
                    m::VhostCreateBlkController {
                        ctrlr,
                        dev_name: bdev.clone(),
                        readonly: d.spec.read_only,
                        cpumask: None,
                    },
                );
            }
        }
        (_, FunctionType::Net) => {}
    }

    let want = spdk_limits(&Qos::of(&d.spec));
    let have = obs.bdevs.get(&bdev).cloned().unwrap_or_default();
    let limited = want != QosLimits::default();
    if (fresh && limited)
        || (!fresh
            && (have.rw_ios_per_sec, have.rw_mbytes_per_sec)
                != (want.rw_ios_per_sec, want.rw_mbytes_per_sec))
    {
        out.rpc(
            &owner,
            Phase::Qos,
            m::BdevSetQosLimit {
                name: bdev,
                rw_ios_per_sec: Some(want.rw_ios_per_sec),
                rw_mbytes_per_sec: Some(want.rw_mbytes_per_sec),
                ..Default::default()
            },
        );
    }
}

// ---------------------------------------------------------------- nvmet

/// Settings of the kernel planner.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmetPlanConfig {
    /// The port every volume's subsystem listens on; the agent owns this id.
    pub port: PortConfig,
    /// Where backing files of local volumes live.
    pub backing_dir: PathBuf,
    /// The cgroup whose `io.max` carries volume QoS; none disables it.
    pub qos_cgroup: Option<PathBuf>,
    /// 0: every volume's subsystem is linked into the shared `port`. N > 0:
    /// each volume gets a port of its own, id `port.id + k` listening on
    /// `port.trsvcid + k` (k in 1..=N, the lowest free slot), the shared
    /// port is not used, and a volume's `qos.max_mbps` is enforced by
    /// shaping its port with traffic control ([`crate::nvmet::tc`]).
    pub volume_ports: u16,
}

impl NvmetPlanConfig {
    /// The port of volume slot `k` (1-based), if its id and TCP port fit.
    pub fn volume_port(&self, k: u16) -> Option<PortConfig> {
        let id = self.port.id.checked_add(k)?;
        let svc = self.port.trsvcid.parse::<u16>().ok()?.checked_add(k)?;
        Some(PortConfig {
            id,
            trsvcid: svc.to_string(),
            ..self.port.clone()
        })
    }

    fn is_volume_port(&self, id: u16) -> bool {
        self.volume_ports > 0
            && id > self.port.id
            && u32::from(id) <= u32::from(self.port.id) + u32::from(self.volume_ports)
    }
}

fn same_address(p: &configfs::ObservedPort, c: &PortConfig) -> bool {
    p.trtype == c.trtype && p.adrfam == c.adrfam && p.traddr == c.traddr && p.trsvcid == c.trsvcid
}

/// Which slot (1-based) each desired volume's own port has: the port it is
/// already linked into, else the lowest one that is absent or holds only
/// subsystems of volumes no longer wanted.
pub fn volume_slots(
    desired: &[&DesiredVolume],
    observed: &NvmetObserved,
    cfg: &NvmetPlanConfig,
) -> BTreeMap<VolumeKey, u16> {
    let mut slots = BTreeMap::new();
    if cfg.volume_ports == 0 {
        return slots;
    }
    let wanted: BTreeSet<&VolumeKey> = desired.iter().map(|d| &d.key).collect();
    let mut taken = BTreeSet::new();
    for d in desired {
        let nqn = d.key.subsystem_nqn();
        for k in 1..=cfg.volume_ports {
            let Some(vp) = cfg.volume_port(k) else { break };
            if !taken.contains(&k)
                && observed
                    .ports
                    .get(&vp.id)
                    .is_some_and(|p| p.subsystems.contains(&nqn))
            {
                slots.insert(d.key.clone(), k);
                taken.insert(k);
                break;
            }
        }
    }
    for d in desired {
        if slots.contains_key(&d.key) {
            continue;
        }
        for k in 1..=cfg.volume_ports {
            let Some(vp) = cfg.volume_port(k) else { break };
            let free = !taken.contains(&k)
                && observed.ports.get(&vp.id).is_none_or(|p| {
                    p.subsystems.iter().all(|n| {
                        VolumeKey::from_subsystem_nqn(n).is_some_and(|key| !wanted.contains(&key))
                    })
                });
            if free {
                slots.insert(d.key.clone(), k);
                taken.insert(k);
                break;
            }
        }
    }
    slots
}

/// Where the host reaches volume `key` (`traddr:trsvcid` of a port its
/// subsystem is linked into), from an observation.
pub fn nvmet_export(observed: &NvmetObserved, key: &VolumeKey) -> Option<String> {
    let nqn = key.subsystem_nqn();
    observed
        .ports
        .values()
        .find(|p| p.subsystems.contains(&nqn))
        .map(|p| {
            if p.adrfam == "ipv6" {
                format!("[{}]:{}", p.traddr, p.trsvcid)
            } else {
                format!("{}:{}", p.traddr, p.trsvcid)
            }
        })
}

const MIB: u64 = 1024 * 1024;

/// Traffic control for the volumes' own ports: one HTB class and one u32
/// filter per volume with `qos.max_mbps`; the root qdisc only while some
/// volume needs it.
fn plan_tc(
    out: &mut Out,
    desired: &[&DesiredVolume],
    slots: &BTreeMap<VolumeKey, u16>,
    tc: Option<&TcObserved>,
    cfg: &NvmetPlanConfig,
) {
    let empty = TcObserved {
        ifname: "?".into(),
        ..TcObserved::default()
    };
    let tc = tc.unwrap_or(&empty);
    let dev = tc.ifname.clone();
    let mut want: BTreeMap<u16, (u64, u16, &VolumeKey)> = BTreeMap::new();
    for d in desired {
        if let (Some(k), Some(mbps)) = (slots.get(&d.key), Qos::of(&d.spec).max_mbps)
            && let Some(vp) = cfg.volume_port(*k)
            && let Ok(sport) = vp.trsvcid.parse::<u16>()
        {
            want.insert(*k, (mbps.saturating_mul(MIB), sport, &d.key));
        }
    }
    let op = |op: TcOp| Op::Tc {
        dev: dev.clone(),
        op,
    };
    if want.is_empty() {
        if tc.ours() {
            out.op(&Owner::Shared, Phase::Qos, op(TcOp::DeleteRoot));
        }
        return;
    }
    let owner_of = |k: u16| {
        slots
            .iter()
            .find(|(_, s)| **s == k)
            .map(|(key, _)| Owner::Volume(key.clone()))
            .unwrap_or(Owner::Shared)
    };
    if !tc.ours() {
        out.op(&Owner::Shared, Phase::Qos, op(TcOp::AddRoot));
    }
    for (k, (rate, _, key)) in &want {
        if tc.classes.get(k) != Some(rate) {
            out.op(
                &Owner::Volume((*key).clone()),
                Phase::Qos,
                op(TcOp::SetClass {
                    minor: *k,
                    rate: *rate,
                }),
            );
        }
    }
    for (k, (_, sport, key)) in &want {
        if !tc.filter_prios.contains(k) {
            out.op(
                &Owner::Volume((*key).clone()),
                Phase::Qos,
                op(TcOp::AddFilter {
                    prio: *k,
                    sport: *sport,
                    minor: *k,
                }),
            );
        }
    }
    for k in tc.filter_prios.iter().filter(|k| !want.contains_key(k)) {
        out.op(
            &owner_of(*k),
            Phase::Qos,
            op(TcOp::DeleteFilter { prio: *k }),
        );
    }
    for k in tc.classes.keys().filter(|k| !want.contains_key(k)) {
        out.op(
            &owner_of(*k),
            Phase::Qos,
            op(TcOp::DeleteClass { minor: *k }),
        );
    }
}

/// The backing file of a local volume on the kernel backend.
pub fn backing_file_name(key: &VolumeKey) -> String {
    key.object_name("img")
}

/// Plans the kernel backend.
pub fn plan_nvmet(
    desired: &[DesiredVolume],
    observed: &NvmetObserved,
    cfg: &NvmetPlanConfig,
) -> Vec<Action> {
    let mut out = Out(Vec::new());
    let refused: BTreeSet<VolumeKey> = refusals_nvmet(desired, observed)
        .into_iter()
        .map(|r| r.key)
        .collect();
    let desired: Vec<&DesiredVolume> = desired
        .iter()
        .filter(|d| BackendKind::Nvmet.unsupported(d.function.type_).is_none())
        .filter(|d| !refused.contains(&d.key))
        .collect();
    let wanted: BTreeSet<&VolumeKey> = desired.iter().map(|d| &d.key).collect();
    let port_id = cfg.port.id;
    let port = observed.ports.get(&port_id);
    let per_volume = cfg.volume_ports > 0;
    let slots = volume_slots(&desired, observed, cfg);

    // Orphan subsystems: unlink from ports, remove namespaces and host links.
    for (nqn, sub) in &observed.subsystems {
        let Some(key) = VolumeKey::from_subsystem_nqn(nqn) else {
            continue;
        };
        if wanted.contains(&key) {
            continue;
        }
        let owner = Owner::Orphan(key);
        for (id, p) in &observed.ports {
            if p.subsystems.contains(nqn) {
                out.configfs(
                    &owner,
                    Phase::Unpresent,
                    vec![configfs::unlink_port(*id, nqn)],
                );
            }
        }
        for nsid in sub.namespaces.keys() {
            out.configfs(
                &owner,
                Phase::Unpresent,
                configfs::remove_namespace(nqn, *nsid),
            );
        }
        for h in &sub.allowed_hosts {
            out.configfs(
                &owner,
                Phase::Unpresent,
                vec![configfs::disallow_host(nqn, h)],
            );
        }
        out.configfs(
            &owner,
            Phase::Unpresent,
            vec![configfs::remove_subsystem(nqn)],
        );
    }
    // Our host entries nobody will reference any more.
    let referenced: BTreeSet<&str> = desired
        .iter()
        .map(|d| d.function.host_nqn.as_str())
        .chain(
            observed
                .subsystems
                .iter()
                .filter(|(nqn, _)| VolumeKey::from_subsystem_nqn(nqn).is_none())
                .flat_map(|(_, s)| s.allowed_hosts.iter().map(String::as_str)),
        )
        .collect();
    for h in &observed.hosts {
        if h.starts_with(NQN_PREFIX) && !referenced.contains(h.as_str()) {
            out.configfs(
                &Owner::Shared,
                Phase::Unpresent,
                vec![configfs::remove_host(h)],
            );
        }
    }
    // Orphan initiator connections: the agent's, and no desired volume's
    // own (target, host NQN and marker). Anyone else's are not touched.
    let connections: Vec<ConnectOptions> = desired
        .iter()
        .filter_map(|d| source_connection(d))
        .collect();
    for c in observed.controllers.iter().filter(|c| agent_made(c)) {
        if connections.iter().any(|o| c.is_connection_of(o)) {
            continue;
        }
        // A tenant-supplied host NQN does not name its volume.
        let owner = VolumeKey::from_initiator_nqn(&c.hostnqn)
            .map(Owner::Orphan)
            .unwrap_or(Owner::Shared);
        out.op(
            &owner,
            Phase::DetachSource,
            Op::FabricsDisconnect {
                instance: c.instance,
            },
        );
    }
    for f in &observed.backing_files {
        let Some(key) = VolumeKey::from_object_name(f) else {
            continue;
        };
        if *f == backing_file_name(&key) && !wanted.contains(&key) {
            out.op(
                &Owner::Orphan(key),
                Phase::DetachSource,
                Op::RemoveBackingFile {
                    path: cfg.backing_dir.join(f),
                },
            );
        }
    }

    // The port: create it, or fix its address if only our subsystems use it.
    let mut linked: BTreeSet<String> = BTreeSet::new();
    match port {
        None if !desired.is_empty() && !per_volume => {
            out.configfs(
                &Owner::Shared,
                Phase::Present,
                configfs::create_port(&cfg.port, false),
            );
        }
        None => {}
        Some(p) => {
            let same = p.trtype == cfg.port.trtype
                && p.adrfam == cfg.port.adrfam
                && p.traddr == cfg.port.traddr
                && p.trsvcid == cfg.port.trsvcid;
            let all_ours = p
                .subsystems
                .iter()
                .all(|n| VolumeKey::from_subsystem_nqn(n).is_some());
            if (desired.is_empty() || per_volume) && all_ours {
                // No volume left (or every volume has a port of its own):
                // remove the agent's port too, so a full teardown leaves
                // configfs as the agent found it. Orphan subsystems were
                // unlinked above; wanted ones move to their own ports.
                for n in &p.subsystems {
                    if let Some(k) = VolumeKey::from_subsystem_nqn(n)
                        && wanted.contains(&k)
                    {
                        out.configfs(
                            &Owner::Volume(k),
                            Phase::Unpresent,
                            vec![configfs::unlink_port(port_id, n)],
                        );
                    }
                }
                out.configfs(
                    &Owner::Shared,
                    Phase::DeleteDevice,
                    vec![configfs::remove_port(port_id)],
                );
            } else if same || !all_ours {
                // A port with foreign subsystems is left as it is.
                linked.extend(p.subsystems.iter().cloned());
            } else {
                for n in &p.subsystems {
                    if let Some(k) = VolumeKey::from_subsystem_nqn(n)
                        && wanted.contains(&k)
                    {
                        out.configfs(
                            &Owner::Volume(k),
                            Phase::Unpresent,
                            vec![configfs::unlink_port(port_id, n)],
                        );
                    }
                }
                out.configfs(
                    &Owner::Shared,
                    Phase::Present,
                    configfs::create_port(&cfg.port, true),
                );
            }
        }
    }

    // Volume ports nobody is assigned to any more (orphans were unlinked
    // above); ports there holding foreign subsystems are left alone.
    if per_volume {
        let assigned: BTreeSet<u16> = slots
            .values()
            .filter_map(|k| cfg.volume_port(*k).map(|p| p.id))
            .collect();
        for (id, p) in &observed.ports {
            let only_ours = p
                .subsystems
                .iter()
                .all(|n| VolumeKey::from_subsystem_nqn(n).is_some());
            if cfg.is_volume_port(*id) && !assigned.contains(id) && only_ours {
                for n in &p.subsystems {
                    if let Some(k) = VolumeKey::from_subsystem_nqn(n)
                        && wanted.contains(&k)
                    {
                        out.configfs(
                            &Owner::Volume(k),
                            Phase::Unpresent,
                            vec![configfs::unlink_port(*id, n)],
                        );
                    }
                }
                out.configfs(
                    &Owner::Shared,
                    Phase::DeleteDevice,
                    vec![configfs::remove_port(*id)],
                );
            }
        }
    }

    let mut hosts: BTreeSet<String> = observed.hosts.iter().cloned().collect();
    for d in &desired {
        let own_port = slots.get(&d.key).and_then(|k| cfg.volume_port(*k));
        plan_nvmet_volume(
            &mut out,
            d,
            observed,
            cfg,
            &linked,
            own_port.as_ref(),
            &mut hosts,
        );
    }
    if per_volume {
        plan_tc(&mut out, &desired, &slots, observed.tc.as_ref(), cfg);
    }
    sorted(out.0)
}

fn plan_nvmet_volume(
    out: &mut Out,
    d: &DesiredVolume,
    obs: &NvmetObserved,
    cfg: &NvmetPlanConfig,
    linked: &BTreeSet<String>,
    own_port: Option<&PortConfig>,
    hosts: &mut BTreeSet<String>,
) {
    let owner = Owner::Volume(d.key.clone());
    let key = &d.key;
    let nqn = key.subsystem_nqn();

    // Attach the source; know which device the namespace must point at.
    let (device, device_now): (DeviceRef, Option<String>) = match &d.spec.source {
        VolumeSource::Nvmeof(_) => {
            let Some(opts) = source_connection(d) else {
                return;
            };
            // Only the volume's own connection is adopted: same target,
            // host NQN and the agent's marker.
            let conn = obs.controllers.iter().find(|c| c.is_connection_of(&opts));
            if conn.is_none() {
                out.op(
                    &owner,
                    Phase::AttachSource,
                    Op::FabricsConnect(opts.clone()),
                );
            }
            (
                DeviceRef::Fabrics(opts),
                conn.and_then(|c| c.namespace_device())
                    .map(|b| format!("/dev/{b}")),
            )
        }
        VolumeSource::Local(l) => {
            let name = backing_file_name(key);
            let path = cfg.backing_dir.join(&name);
            if !obs.backing_files.contains(&name) {
                out.op(
                    &owner,
                    Phase::AttachSource,
                    Op::CreateBackingFile {
                        path: path.clone(),
                        size_bytes: l.size_mib.saturating_mul(1024 * 1024),
                    },
                );
            }
            let now = path.to_string_lossy().into_owned();
            (DeviceRef::Path(path), Some(now))
        }
    };

    // The subsystem, its host and its namespace.
    let sub = obs.subsystems.get(&nqn);
    let host = &d.function.host_nqn;
    match sub {
        None => out.configfs(
            &owner,
            Phase::CreateDevice,
            configfs::create_subsystem(&nqn),
        ),
        Some(s) if s.allow_any_host => out.configfs(
            &owner,
            Phase::CreateDevice,
            vec![ConfigfsOp::Write {
                attr: PathBuf::from("subsystems")
                    .join(&nqn)
                    .join("attr_allow_any_host"),
                value: "0".into(),
            }],
        ),
        Some(_) => {}
    }
    let nsid = d.nsid();
    if let Some(s) = sub {
        for (n, ns) in &s.namespaces {
            let stale = *n != nsid || device_now.as_deref() != Some(ns.device_path.as_str());
            if stale {
                out.configfs(
                    &owner,
                    Phase::Unpresent,
                    configfs::remove_namespace(&nqn, *n),
                );
            }
        }
        for h in s.allowed_hosts.iter().filter(|h| *h != host) {
            out.configfs(
                &owner,
                Phase::Unpresent,
                vec![configfs::disallow_host(&nqn, h)],
            );
        }
    }
    let ns_ok = sub.is_some_and(|s| {
        s.namespaces
            .get(&nsid)
            .is_some_and(|ns| ns.enabled && device_now.as_deref() == Some(ns.device_path.as_str()))
    });
    if !ns_ok {
        let exists_disabled = sub.is_some_and(|s| {
            s.namespaces
                .get(&nsid)
                .is_some_and(|ns| device_now.as_deref() == Some(ns.device_path.as_str()))
        });
        if exists_disabled {
            out.configfs(
                &owner,
                Phase::CreateDevice,
                vec![ConfigfsOp::Write {
                    attr: PathBuf::from("subsystems")
                        .join(&nqn)
                        .join("namespaces")
                        .join(nsid.to_string())
                        .join("enable"),
                    value: "1".into(),
                }],
            );
        } else {
            out.configfs(
                &owner,
                Phase::CreateDevice,
                configfs::create_namespace(&nqn, nsid, device.clone()),
            );
        }
    }
    if !sub.is_some_and(|s| s.allowed_hosts.contains(host)) {
        // The host entry may serve several volumes: it is shared, so a
        // controller applying one volume's actions still creates it.
        if !hosts.contains(host) {
            out.configfs(
                &Owner::Shared,
                Phase::CreateDevice,
                vec![ConfigfsOp::Mkdir(PathBuf::from("hosts").join(host))],
            );
        }
        out.configfs(
            &owner,
            Phase::CreateDevice,
            configfs::allow_host(&nqn, host, true),
        );
        hosts.insert(host.clone());
    }

    match own_port {
        Some(vp) => {
            let have = obs.ports.get(&vp.id);
            match have {
                None => out.configfs(&owner, Phase::Present, configfs::create_port(vp, false)),
                Some(p) if !same_address(p, vp) => {
                    // Addresses are immutable while linked: unlink first.
                    for n in &p.subsystems {
                        out.configfs(
                            &owner,
                            Phase::Unpresent,
                            vec![configfs::unlink_port(vp.id, n)],
                        );
                    }
                    out.configfs(&owner, Phase::Present, configfs::create_port(vp, true));
                }
                Some(_) => {}
            }
            let linked_here =
                have.is_some_and(|p| same_address(p, vp) && p.subsystems.contains(&nqn));
            if !linked_here {
                out.configfs(
                    &owner,
                    Phase::Present,
                    vec![configfs::link_port(vp.id, &nqn)],
                );
            }
        }
        // Per-volume ports but no free slot: not presented (README, limits).
        None if cfg.volume_ports > 0 => {}
        None => {
            if !linked.contains(&nqn) {
                out.configfs(
                    &owner,
                    Phase::Present,
                    vec![configfs::link_port(cfg.port.id, &nqn)],
                );
            }
        }
    }

    // QoS: only block devices can carry io.max; backing files cannot.
    if let (Some(cgroup), VolumeSource::Nvmeof(_)) = (&cfg.qos_cgroup, &d.spec.source) {
        let want = IoMax::from_qos(&Qos::of(&d.spec));
        let have = device_now
            .as_ref()
            .and_then(|p| obs.io_max.get(p))
            .copied()
            .unwrap_or_default();
        if want != have {
            out.op(
                &owner,
                Phase::Qos,
                Op::SetIoMax {
                    cgroup: cgroup.clone(),
                    device,
                    limits: want,
                },
            );
        }
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
mod tests {
    use super::*;
    use crate::model::{FunctionTarget, ObservedSubsystem, function_host_nqn};
    use crate::nvmet::FabricsController;
    use crate::nvmet::configfs::{ObservedNamespace, ObservedNvmetSubsystem, ObservedPort};
    use dpu_api::spec::{LocalSource, NvmeofSource, VolumeQos, VolumeSpec};

    fn remote(tenant: &str, id: &str, type_: FunctionType) -> DesiredVolume {
        DesiredVolume {
            key: VolumeKey::new(tenant, id),
            spec: VolumeSpec {
                function: "f1".into(),
                nsid: None,
                source: VolumeSource::Nvmeof(NvmeofSource {
                    transport: NvmeofTransport::Tcp,
                    address: "192.0.2.1".into(),
                    port: 4420,
                    subnqn: "nqn.2014-08.org.example:remote".into(),
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

    fn local(tenant: &str, id: &str) -> DesiredVolume {
        let mut d = remote(tenant, id, FunctionType::Nvme);
        d.spec.source = VolumeSource::Local(LocalSource { size_mib: 64 });
        d
    }

    fn lines(a: &[Action]) -> Vec<String> {
        a.iter().map(|a| a.to_string()).collect()
    }

    fn nvmf_cfg() -> SpdkPlanConfig {
        SpdkPlanConfig::default()
    }

    #[test]
    fn spdk_nvmf_fresh_remote_volume_in_order() {
        let mut d = remote("acme", "db", FunctionType::Nvme);
        d.spec.qos = Some(VolumeQos {
            max_iops: Some(1000),
            max_mbps: None,
        });
        let plan = plan_spdk(&[d], &SpdkObserved::default(), &nvmf_cfg());
        assert_eq!(
            lines(&plan),
            [
                "volume acme/db [attach-source] rpc bdev_nvme_attach_controller \
                 {\"adrfam\":\"ipv4\",\"hostnqn\":\"nqn.2026-11.dev.dpu-agent:acme:db:initiator\",\
                 \"name\":\"dpu_acme_db_src\",\"subnqn\":\"nqn.2014-08.org.example:remote\",\
                 \"traddr\":\"192.0.2.1\",\"trsvcid\":\"4420\",\"trtype\":\"tcp\"}",
                "shared [create-device] rpc nvmf_create_transport {\"trtype\":\"TCP\"}",
                "volume acme/db [create-device] rpc nvmf_create_subsystem \
                 {\"allow_any_host\":false,\"model_number\":\"dpu-agent volume\",\
                 \"nqn\":\"nqn.2026-11.dev.dpu-agent:acme:db\",\"serial_number\":\"DPU79FCB66C7F2049AA\"}",
                "volume acme/db [create-device] rpc nvmf_subsystem_add_ns \
                 {\"namespace\":{\"bdev_name\":\"dpu_acme_db_srcn1\",\"nsid\":1},\
                 \"nqn\":\"nqn.2026-11.dev.dpu-agent:acme:db\"}",
                "volume acme/db [present] rpc nvmf_subsystem_add_host \
                 {\"host\":\"nqn.2026-11.dev.dpu-agent:acme:fn:f1\",\
                 \"nqn\":\"nqn.2026-11.dev.dpu-agent:acme:db\"}",
                "volume acme/db [present] rpc nvmf_subsystem_add_listener \
                 {\"listen_address\":{\"adrfam\":\"IPv4\",\"traddr\":\"127.0.0.1\",\
                 \"trsvcid\":\"4420\",\"trtype\":\"TCP\"},\
                 \"nqn\":\"nqn.2026-11.dev.dpu-agent:acme:db\"}",
                "volume acme/db [qos] rpc bdev_set_qos_limit \
                 {\"name\":\"dpu_acme_db_srcn1\",\"rw_ios_per_sec\":1000,\"rw_mbytes_per_sec\":0}",
            ]
        );
    }

    fn converged_nvmf(d: &DesiredVolume, limits: QosLimits) -> SpdkObserved {
        let k = &d.key;
        let mut obs = SpdkObserved {
            nvme_controllers: vec![k.source_name()],
            nvmf_transports: vec!["TCP".into()],
            ..Default::default()
        };
        obs.bdevs.insert(k.source_bdev(true), limits);
        obs.bdevs.insert("Malloc0".into(), QosLimits::default());
        obs.subsystems.insert(
            k.subsystem_nqn(),
            ObservedSubsystem {
                hosts: vec![d.function.host_nqn.clone()],
                namespaces: [(1, k.source_bdev(true))].into(),
                listeners: vec![nvmf_cfg().listen],
            },
        );
        obs.subsystems.insert(
            "nqn.2016-06.io.spdk:cnode1".into(),
            ObservedSubsystem::default(),
        );
        obs
    }

    #[test]
    fn converged_spdk_state_plans_nothing_and_foreign_objects_stay() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let obs = converged_nvmf(&d, QosLimits::default());
        assert_eq!(plan_spdk(&[d], &obs, &nvmf_cfg()), []);
    }

    #[test]
    fn qos_change_is_made_in_place() {
        let mut d = remote("acme", "db", FunctionType::Nvme);
        let obs = converged_nvmf(
            &d,
            QosLimits {
                rw_ios_per_sec: 1000,
                ..Default::default()
            },
        );
        d.spec.qos = Some(VolumeQos {
            max_iops: None,
            max_mbps: Some(200),
        });
        assert_eq!(
            lines(&plan_spdk(&[d], &obs, &nvmf_cfg())),
            ["volume acme/db [qos] rpc bdev_set_qos_limit \
              {\"name\":\"dpu_acme_db_srcn1\",\"rw_ios_per_sec\":0,\"rw_mbytes_per_sec\":200}"]
        );
    }

    #[test]
    fn removed_volume_is_torn_down_in_reverse() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let mut obs = converged_nvmf(&d, QosLimits::default());
        obs.bdevs
            .insert("dpu_acme_old_src".into(), QosLimits::default());
        obs.controllers.push("dpu_acme_old_vhost".into());
        obs.controllers.push("foreign-vhost".into());
        let plan = plan_spdk(&[], &obs, &nvmf_cfg());
        assert_eq!(
            lines(&plan),
            [
                "orphan acme/old [unpresent] rpc vhost_delete_controller {\"ctrlr\":\"dpu_acme_old_vhost\"}",
                "orphan acme/db [delete-device] rpc nvmf_delete_subsystem \
                 {\"nqn\":\"nqn.2026-11.dev.dpu-agent:acme:db\"}",
                "orphan acme/db [detach-source] rpc bdev_nvme_detach_controller {\"name\":\"dpu_acme_db_src\"}",
                "orphan acme/old [detach-source] rpc bdev_malloc_delete {\"name\":\"dpu_acme_old_src\"}",
            ]
        );
    }

    #[test]
    fn snap_nvme_and_virtio_blk() {
        let cfg = SpdkPlanConfig {
            kind: BackendKind::Snap,
            ..Default::default()
        };
        let n = local("t", "a");
        let mut v = remote("t", "b", FunctionType::VirtioBlk);
        v.function.vf = None;
        let plan = plan_spdk(&[n, v], &SpdkObserved::default(), &cfg);
        let methods: Vec<_> = plan
            .iter()
            .map(|a| match &a.op {
                Op::Rpc(r) => r.method.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(
            methods,
            [
                "bdev_malloc_create",
                "bdev_nvme_attach_controller",
                "nvme_subsystem_create",
                "nvme_namespace_create",
                "nvme_controller_create",
                "nvme_controller_attach_ns",
                "virtio_blk_controller_create",
            ]
        );
        assert_eq!(
            plan[0].to_string(),
            "volume t/a [attach-source] rpc bdev_malloc_create \
             {\"block_size\":4096,\"name\":\"dpu_t_a_src\",\"num_blocks\":16384}"
        );
        assert_eq!(
            plan[4].to_string(),
            "volume t/a [present] rpc nvme_controller_create \
             {\"ctrl\":\"dpu_t_a_ctrl\",\"nqn\":\"nqn.2026-11.dev.dpu-agent:t:a\",\"pf_id\":0,\"vf_id\":3}"
        );
    }

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

    fn nvmet_cfg() -> NvmetPlanConfig {
        NvmetPlanConfig {
            port: PortConfig {
                id: 1,
                trtype: "tcp".into(),
                adrfam: "ipv4".into(),
                traddr: "192.0.2.10".into(),
                trsvcid: "4420".into(),
            },
            backing_dir: "/var/lib/dpu-agent/volumes".into(),
            qos_cgroup: Some("/sys/fs/cgroup/dpu-volumes".into()),
            volume_ports: 0,
        }
    }

    #[test]
    fn nvmet_fresh_remote_volume() {
        let mut d = remote("acme", "db", FunctionType::Nvme);
        d.spec.qos = Some(VolumeQos {
            max_iops: Some(500),
            max_mbps: None,
        });
        let plan = plan_nvmet(&[d], &NvmetObserved::default(), &nvmet_cfg());
        let s = "/sys/kernel/config/nvmet/subsystems/nqn.2026-11.dev.dpu-agent:acme:db";
        let h = "nqn.2026-11.dev.dpu-agent:acme:fn:f1";
        let i = "nqn.2026-11.dev.dpu-agent:acme:db:initiator";
        let dev =
            format!("<namespace 1 of nqn.2014-08.org.example:remote at 192.0.2.1:4420 as {i}>");
        assert_eq!(
            lines(&plan),
            [
                format!(
                    "volume acme/db [attach-source] echo transport=tcp,traddr=192.0.2.1,\
                     trsvcid=4420,nqn=nqn.2014-08.org.example:remote,hostnqn={i},hostid={} \
                     > /dev/nvme-fabrics",
                    initiator_host_id(i)
                ),
                format!("volume acme/db [create-device] mkdir {s}"),
                format!("volume acme/db [create-device] echo 0 > {s}/attr_allow_any_host"),
                format!("volume acme/db [create-device] mkdir {s}/namespaces/1"),
                format!("volume acme/db [create-device] echo {dev} > {s}/namespaces/1/device_path"),
                format!("volume acme/db [create-device] echo 1 > {s}/namespaces/1/enable"),
                format!("shared [create-device] mkdir /sys/kernel/config/nvmet/hosts/{h}"),
                format!(
                    "volume acme/db [create-device] ln -s /sys/kernel/config/nvmet/hosts/{h} \
                     {s}/allowed_hosts/{h}"
                ),
                "shared [present] mkdir /sys/kernel/config/nvmet/ports/1".into(),
                "shared [present] echo tcp > /sys/kernel/config/nvmet/ports/1/addr_trtype".into(),
                "shared [present] echo ipv4 > /sys/kernel/config/nvmet/ports/1/addr_adrfam".into(),
                "shared [present] echo 192.0.2.10 > /sys/kernel/config/nvmet/ports/1/addr_traddr"
                    .into(),
                "shared [present] echo 4420 > /sys/kernel/config/nvmet/ports/1/addr_trsvcid".into(),
                format!(
                    "volume acme/db [present] ln -s {s} \
                     /sys/kernel/config/nvmet/ports/1/subsystems/nqn.2026-11.dev.dpu-agent:acme:db"
                ),
                format!(
                    "volume acme/db [qos] echo \"<MAJ:MIN of {dev}> riops=500 wiops=500 rbps=max \
                     wbps=max\" > /sys/fs/cgroup/dpu-volumes/io.max"
                ),
            ]
        );
    }

    fn converged_nvmet(d: &DesiredVolume) -> NvmetObserved {
        let nqn = d.key.subsystem_nqn();
        let mut obs = NvmetObserved {
            hosts: vec![d.function.host_nqn.clone(), "nqn.foreign-host".into()],
            controllers: vec![FabricsController {
                instance: 1,
                transport: "tcp".into(),
                traddr: "192.0.2.1".into(),
                trsvcid: "4420".into(),
                subnqn: "nqn.2014-08.org.example:remote".into(),
                hostnqn: d.key.initiator_nqn(),
                hostid: initiator_host_id(&d.key.initiator_nqn()),
                block_devices: vec!["nvme1n1".into()],
            }],
            ..Default::default()
        };
        obs.subsystems.insert(
            nqn.clone(),
            ObservedNvmetSubsystem {
                allow_any_host: false,
                allowed_hosts: vec![d.function.host_nqn.clone()],
                namespaces: [(
                    1,
                    ObservedNamespace {
                        device_path: "/dev/nvme1n1".into(),
                        enabled: true,
                    },
                )]
                .into(),
            },
        );
        obs.subsystems
            .insert("nqn.foreign".into(), ObservedNvmetSubsystem::default());
        obs.ports.insert(
            1,
            ObservedPort {
                trtype: "tcp".into(),
                adrfam: "ipv4".into(),
                traddr: "192.0.2.10".into(),
                trsvcid: "4420".into(),
                subsystems: vec![nqn],
            },
        );
        obs
    }

    #[test]
    fn converged_nvmet_plans_nothing() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let obs = converged_nvmet(&d);
        assert_eq!(plan_nvmet(&[d], &obs, &nvmet_cfg()), []);
    }

    #[test]
    fn nvmet_orphan_teardown_is_reverse_and_spares_foreign() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let mut obs = converged_nvmet(&d);
        obs.backing_files = vec!["dpu_acme_db_img".into(), "other.img".into()];
        let s = "/sys/kernel/config/nvmet/subsystems/nqn.2026-11.dev.dpu-agent:acme:db";
        let h = "nqn.2026-11.dev.dpu-agent:acme:fn:f1";
        assert_eq!(
            lines(&plan_nvmet(&[], &obs, &nvmet_cfg())),
            [
                "orphan acme/db [unpresent] rm \
                 /sys/kernel/config/nvmet/ports/1/subsystems/nqn.2026-11.dev.dpu-agent:acme:db"
                    .to_string(),
                format!("orphan acme/db [unpresent] echo 0 > {s}/namespaces/1/enable"),
                format!("orphan acme/db [unpresent] rmdir {s}/namespaces/1"),
                format!("orphan acme/db [unpresent] rm {s}/allowed_hosts/{h}"),
                format!("orphan acme/db [unpresent] rmdir {s}"),
                format!("shared [unpresent] rmdir /sys/kernel/config/nvmet/hosts/{h}"),
                "shared [delete-device] rmdir /sys/kernel/config/nvmet/ports/1".into(),
                "orphan acme/db [detach-source] echo 1 > /sys/class/nvme/nvme1/delete_controller"
                    .into(),
                "orphan acme/db [detach-source] rm /var/lib/dpu-agent/volumes/dpu_acme_db_img"
                    .into(),
            ]
        );
    }

    #[test]
    fn nvmet_local_volume_uses_a_backing_file_and_no_io_max() {
        let d = local("t", "a");
        let plan = plan_nvmet(&[d], &NvmetObserved::default(), &nvmet_cfg());
        assert_eq!(
            plan[0].to_string(),
            "volume t/a [attach-source] truncate -s 67108864 \
             /var/lib/dpu-agent/volumes/dpu_t_a_img"
        );
        assert!(plan.iter().all(|a| a.phase != Phase::Qos));
    }

    #[test]
    fn nvmet_port_with_wrong_address_is_relinked() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let mut obs = converged_nvmet(&d);
        obs.ports.get_mut(&1).unwrap().traddr = "192.0.2.99".into();
        let l = lines(&plan_nvmet(&[d], &obs, &nvmet_cfg()));
        assert!(
            l[0].ends_with("ports/1/subsystems/nqn.2026-11.dev.dpu-agent:acme:db"),
            "{l:?}"
        );
        assert!(l[0].contains("[unpresent] rm "));
        assert!(l.iter().any(|x| x.contains("echo 192.0.2.10 > ")));
        assert!(l.last().unwrap().contains("[present] ln -s "));
    }

    // ------------------------------------------- per-volume ports and tc

    fn per_volume_cfg() -> NvmetPlanConfig {
        NvmetPlanConfig {
            qos_cgroup: None,
            volume_ports: 4,
            ..nvmet_cfg()
        }
    }

    /// `converged_nvmet`, but the volume sits on its own port (slot 1: id 2,
    /// TCP 4421) with a 10 MiB/s class and its filter.
    fn converged_per_volume(d: &DesiredVolume) -> NvmetObserved {
        let mut obs = converged_nvmet(d);
        let mut p = obs.ports.remove(&1).unwrap();
        p.trsvcid = "4421".into();
        obs.ports.insert(2, p);
        obs.tc = Some(TcObserved {
            ifname: "eth0".into(),
            ifindex: 2,
            root: Some(("htb".into(), crate::nvmet::tc::QDISC_MAJOR)),
            classes: [(1, 10 * MIB)].into(),
            filter_prios: [1].into(),
        });
        obs
    }

    fn limited(mut d: DesiredVolume, mbps: u64) -> DesiredVolume {
        d.spec.qos = Some(VolumeQos {
            max_iops: None,
            max_mbps: Some(mbps),
        });
        d
    }

    #[test]
    fn per_volume_ports_and_shaping_for_fresh_volumes() {
        let a = limited(remote("acme", "a", FunctionType::Nvme), 10);
        let b = remote("acme", "b", FunctionType::Nvme);
        let plan = lines(&plan_nvmet(
            &[a, b],
            &NvmetObserved::default(),
            &per_volume_cfg(),
        ));
        let p = "/sys/kernel/config/nvmet/ports";
        for (vol, id, svc) in [("a", 2, 4421), ("b", 3, 4422)] {
            assert!(
                plan.contains(&format!("volume acme/{vol} [present] mkdir {p}/{id}")),
                "{plan:#?}"
            );
            assert!(
                plan.contains(&format!(
                    "volume acme/{vol} [present] echo {svc} > {p}/{id}/addr_trsvcid"
                )),
                "{plan:#?}"
            );
            assert!(
                plan.contains(&format!(
                    "volume acme/{vol} [present] ln -s /sys/kernel/config/nvmet/subsystems/\
                     nqn.2026-11.dev.dpu-agent:acme:{vol} {p}/{id}/subsystems/\
                     nqn.2026-11.dev.dpu-agent:acme:{vol}"
                )),
                "{plan:#?}"
            );
        }
        assert!(
            !plan.iter().any(|l| l.contains(&format!("{p}/1"))),
            "{plan:#?}"
        );
        let tc: Vec<&String> = plan.iter().filter(|l| l.contains("[qos]")).collect();
        assert_eq!(
            tc,
            [
                "shared [qos] rtnetlink tc dev ? qdisc add root handle 4e56: htb default 0",
                "volume acme/a [qos] rtnetlink tc dev ? class replace parent 4e56: classid 4e56:1 \
                 htb rate 10485760Bps ceil 10485760Bps",
                "volume acme/a [qos] rtnetlink tc dev ? filter add parent 4e56: protocol ip prio 1 \
                 u32 match ip protocol 6 0xff match ip sport 4421 0xffff flowid 4e56:1",
            ]
        );
    }

    #[test]
    fn per_volume_converged_plans_nothing_and_export_is_its_port() {
        let d = limited(remote("acme", "db", FunctionType::Nvme), 10);
        let obs = converged_per_volume(&d);
        assert_eq!(
            nvmet_export(&obs, &d.key).as_deref(),
            Some("192.0.2.10:4421")
        );
        assert_eq!(plan_nvmet(&[d], &obs, &per_volume_cfg()), []);
    }

    #[test]
    fn qos_change_is_one_class_change() {
        let d = limited(remote("acme", "db", FunctionType::Nvme), 20);
        let obs = converged_per_volume(&d);
        assert_eq!(
            lines(&plan_nvmet(&[d], &obs, &per_volume_cfg())),
            [
                "volume acme/db [qos] rtnetlink tc dev eth0 class replace parent 4e56: classid \
                 4e56:1 htb rate 20971520Bps ceil 20971520Bps"
            ]
        );
    }

    #[test]
    fn last_limit_removed_drops_the_qdisc() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let obs = converged_per_volume(&d);
        assert_eq!(
            lines(&plan_nvmet(&[d], &obs, &per_volume_cfg())),
            ["shared [qos] rtnetlink tc dev eth0 qdisc del root handle 4e56:"]
        );
    }

    #[test]
    fn a_limit_removed_while_another_stays_drops_its_filter_then_class() {
        let a = remote("acme", "a", FunctionType::Nvme);
        let b = limited(remote("acme", "b", FunctionType::Nvme), 5);
        let mut obs = converged_per_volume(&a);
        let mut obs_b = converged_per_volume(&b);
        let mut pb = obs_b.ports.remove(&2).unwrap();
        pb.trsvcid = "4422".into();
        obs.ports.insert(3, pb);
        // b has its own connection to the same target, and its own device.
        let mut cb = obs_b.controllers.remove(0);
        cb.instance = 2;
        cb.block_devices = vec!["nvme2n1".into()];
        obs.controllers.push(cb);
        obs_b
            .subsystems
            .get_mut(&b.key.subsystem_nqn())
            .unwrap()
            .namespaces
            .get_mut(&1)
            .unwrap()
            .device_path = "/dev/nvme2n1".into();
        obs.subsystems.append(&mut obs_b.subsystems);
        let tc = obs.tc.as_mut().unwrap();
        tc.classes.insert(2, 5 * MIB);
        tc.filter_prios.insert(2);
        let plan = lines(&plan_nvmet(&[a, b], &obs, &per_volume_cfg()));
        assert_eq!(
            plan,
            [
                "volume acme/a [qos] rtnetlink tc dev eth0 filter del parent 4e56: protocol ip \
                 prio 1",
                "volume acme/a [qos] rtnetlink tc dev eth0 class del classid 4e56:1",
            ]
        );
    }

    #[test]
    fn deleted_volume_frees_its_port_and_the_shared_port_is_retired() {
        let d = remote("acme", "db", FunctionType::Nvme);
        let mut obs = converged_per_volume(&d);
        obs.tc = None;
        // A port from before per-volume ports, still holding the volume.
        let mut shared = obs.ports[&2].clone();
        shared.trsvcid = "4420".into();
        obs.ports.insert(1, shared);
        let plan = lines(&plan_nvmet(&[], &obs, &per_volume_cfg()));
        let p = "/sys/kernel/config/nvmet/ports";
        assert!(
            plan.contains(&format!("shared [delete-device] rmdir {p}/1")),
            "{plan:#?}"
        );
        assert!(
            plan.contains(&format!("shared [delete-device] rmdir {p}/2")),
            "{plan:#?}"
        );
        // Kept volume: it moves off the shared port to its own.
        let plan = lines(&plan_nvmet(&[d], &obs, &per_volume_cfg()));
        assert_eq!(
            plan,
            [
                format!(
                    "volume acme/db [unpresent] rm {p}/1/subsystems/nqn.2026-11.dev.dpu-agent:acme:db"
                ),
                format!("shared [delete-device] rmdir {p}/1"),
            ]
        );
    }

    // ------------------------------- per-volume connections (TENANCY.md 4)

    /// A controller exactly as the agent connects volume `d` (its host NQN
    /// and marker), instance `n`, showing `nvme<n>n1`.
    fn own_controller(d: &DesiredVolume, n: u32) -> FabricsController {
        let o = source_connection(d).unwrap();
        FabricsController {
            instance: n,
            transport: o.transport,
            traddr: o.traddr,
            trsvcid: o.trsvcid,
            subnqn: o.nqn,
            hostid: o.hostid.unwrap(),
            hostnqn: o.hostnqn,
            block_devices: vec![format!("nvme{n}n1")],
        }
    }

    fn connects(plan: &[Action]) -> Vec<(String, ConnectOptions)> {
        plan.iter()
            .filter_map(|a| match (&a.owner, &a.op) {
                (Owner::Volume(k), Op::FabricsConnect(o)) => Some((k.to_string(), o.clone())),
                _ => None,
            })
            .collect()
    }

    fn disconnects(plan: &[Action]) -> Vec<u32> {
        plan.iter()
            .filter_map(|a| match a.op {
                Op::FabricsDisconnect { instance } => Some(instance),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn two_tenants_on_one_remote_target_get_two_connections() {
        let a = remote("acme", "db", FunctionType::Nvme);
        let b = remote("evil", "db", FunctionType::Nvme);
        let desired = [a.clone(), b.clone()];
        let obs = NvmetObserved::default();
        assert_eq!(refusals_nvmet(&desired, &obs), []);
        let plan = plan_nvmet(&desired, &obs, &nvmet_cfg());
        let c = connects(&plan);
        assert_eq!(c.len(), 2, "{:#?}", lines(&plan));
        assert_eq!(c[0].0, "acme/db");
        assert_eq!(
            c[0].1.hostnqn,
            "nqn.2026-11.dev.dpu-agent:acme:db:initiator"
        );
        assert_eq!(c[1].0, "evil/db");
        assert_eq!(
            c[1].1.hostnqn,
            "nqn.2026-11.dev.dpu-agent:evil:db:initiator"
        );
        assert_ne!(c[0].1.hostid, c[1].1.hostid);

        // A connected and exported; B is not handed A's controller or
        // device: it connects its own and its namespace waits for that.
        let mut obs = converged_nvmet(&a);
        let plan = plan_nvmet(&desired, &obs, &nvmet_cfg());
        let c = connects(&plan);
        assert_eq!(c.len(), 1, "{:#?}", lines(&plan));
        assert_eq!(
            (c[0].0.as_str(), c[0].1.hostnqn.as_str()),
            ("evil/db", "nqn.2026-11.dev.dpu-agent:evil:db:initiator")
        );
        let b_lines: Vec<String> = lines(&plan)
            .into_iter()
            .filter(|l| l.starts_with("volume evil/db"))
            .collect();
        assert!(
            b_lines.iter().all(|l| !l.contains("nvme1n1")),
            "{b_lines:#?}"
        );
        assert!(
            b_lines.iter().any(|l| l.contains("device_path")
                && l.contains("as nqn.2026-11.dev.dpu-agent:evil:db:initiator>")),
            "{b_lines:#?}"
        );
        // Both connected: two controllers, two devices, nothing left.
        obs.controllers.push(own_controller(&b, 2));
        let nqn = b.key.subsystem_nqn();
        let mut sub = obs.subsystems[&a.key.subsystem_nqn()].clone();
        sub.namespaces.get_mut(&1).unwrap().device_path = "/dev/nvme2n1".into();
        obs.subsystems.insert(nqn.clone(), sub);
        obs.ports.get_mut(&1).unwrap().subsystems.push(nqn);
        obs.hosts.push(function_host_nqn("evil", "f1"));
        let mut sub = obs.subsystems[&b.key.subsystem_nqn()].clone();
        sub.allowed_hosts = vec![function_host_nqn("evil", "f1")];
        obs.subsystems.insert(b.key.subsystem_nqn(), sub);
        assert_eq!(
            lines(&plan_nvmet(&desired, &obs, &nvmet_cfg())),
            Vec::<String>::new()
        );
    }

    #[test]
    fn under_native_multipath_the_second_volume_on_a_subsystem_is_refused() {
        // "aaa" sorts first, but "acme" already holds its connection.
        let a = remote("acme", "db", FunctionType::Nvme);
        let b = remote("aaa", "db", FunctionType::Nvme);
        let desired = [a.clone(), b.clone()];
        let mut obs = converged_nvmet(&a);
        obs.multipath = true;
        let r = refusals_nvmet(&desired, &obs);
        assert_eq!(r.len(), 1, "{r:#?}");
        assert_eq!(r[0].key, b.key);
        assert_eq!(r[0].reason, RefusalReason::SourceInUse);
        assert!(
            r[0].message.contains("nvme_core.multipath"),
            "{}",
            r[0].message
        );
        // The message names nothing of the other volume's.
        assert!(!r[0].message.contains("acme"), "{}", r[0].message);
        let plan = plan_nvmet(&desired, &obs, &nvmet_cfg());
        assert_eq!(
            lines(&plan),
            Vec::<String>::new(),
            "A converged, B not planned"
        );

        // Neither connected yet: the first by key connects, the other waits.
        let mut fresh = NvmetObserved {
            multipath: true,
            ..Default::default()
        };
        let r = refusals_nvmet(&desired, &fresh);
        assert_eq!(r.iter().map(|r| &r.key).collect::<Vec<_>>(), [&a.key]);
        let c = connects(&plan_nvmet(&desired, &fresh, &nvmet_cfg()));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "aaa/db");
        // Without multipath each gets its own connection.
        fresh.multipath = false;
        assert_eq!(refusals_nvmet(&desired, &fresh), []);
    }

    #[test]
    fn a_stray_connection_with_another_host_nqn_is_not_adopted() {
        let a = remote("acme", "db", FunctionType::Nvme);
        let mut obs = converged_nvmet(&a);
        // Not A's: B's derived NQN (B no longer exists: the agent's orphan)
        // and a host NQN the agent never uses (someone else's).
        let gone = remote("evil", "gone", FunctionType::Nvme);
        let mut b = own_controller(&gone, 1);
        b.block_devices = vec!["nvme1n1".into()];
        let mut stray = b.clone();
        stray.instance = 4;
        stray.hostnqn = "nqn.2014-08.org.example:stray".into();
        stray.hostid = "0f8fad5b-d9cb-869f-a165-70867728950e".into();
        stray.block_devices = vec!["nvme4n1".into()];
        obs.controllers = vec![b, stray];
        let plan = plan_nvmet(std::slice::from_ref(&a), &obs, &nvmet_cfg());
        let c = connects(&plan);
        assert_eq!(c.len(), 1, "{:#?}", lines(&plan));
        assert_eq!(c[0].1.hostnqn, a.key.initiator_nqn());
        // The orphan goes; the stray is not the agent's to touch.
        assert_eq!(disconnects(&plan), [1]);
        assert!(
            lines(&plan).contains(
                &"orphan evil/gone [detach-source] echo 1 > /sys/class/nvme/nvme1/delete_controller"
                    .to_string()
            ),
            "{:#?}",
            lines(&plan)
        );
        // A's namespace stops pointing at the orphan's device.
        assert!(
            lines(&plan)
                .iter()
                .any(|l| l.contains("volume acme/db [unpresent] rmdir")),
            "{:#?}",
            lines(&plan)
        );
        // Under multipath the stray shares the subsystem: A is refused.
        obs.multipath = true;
        let r = refusals_nvmet(std::slice::from_ref(&a), &obs);
        assert_eq!(r.len(), 1);
        assert!(connects(&plan_nvmet(std::slice::from_ref(&a), &obs, &nvmet_cfg())).is_empty());
    }

    #[test]
    fn a_connection_with_the_volumes_host_nqn_but_not_the_agents_marker_is_not_adopted() {
        let a = remote("acme", "db", FunctionType::Nvme);
        let mut obs = converged_nvmet(&a);
        // Same target and derived host NQN, another host id (made by
        // someone else, or by an agent before the marker): replaced.
        obs.controllers[0].hostid = "0f8fad5b-d9cb-869f-a165-70867728950e".into();
        let plan = plan_nvmet(std::slice::from_ref(&a), &obs, &nvmet_cfg());
        assert_eq!(disconnects(&plan), [1]);
        assert_eq!(connects(&plan).len(), 1);

        // A tenant-supplied host NQN: without the marker it is someone
        // else's connection, never adopted; the volume says why.
        let mut c = remote("acme", "custom", FunctionType::Nvme);
        let VolumeSource::Nvmeof(n) = &mut c.spec.source else {
            unreachable!()
        };
        n.hostnqn = Some("nqn.2014-08.org.example:acme-host".into());
        let mut own = own_controller(&c, 5);
        let mut obs = NvmetObserved {
            controllers: vec![own.clone()],
            ..Default::default()
        };
        assert_eq!(refusals_nvmet(std::slice::from_ref(&c), &obs), []);
        assert!(connects(&plan_nvmet(std::slice::from_ref(&c), &obs, &nvmet_cfg())).is_empty());
        own.hostid = "0f8fad5b-d9cb-869f-a165-70867728950e".into();
        obs.controllers = vec![own];
        let r = refusals_nvmet(std::slice::from_ref(&c), &obs);
        assert_eq!(r.len(), 1);
        assert!(r[0].message.contains("did not make"), "{}", r[0].message);
        let plan = plan_nvmet(std::slice::from_ref(&c), &obs, &nvmet_cfg());
        assert!(connects(&plan).is_empty() && disconnects(&plan).is_empty());
    }

    #[test]
    fn restart_adopts_the_volumes_own_connection() {
        let a = remote("acme", "db", FunctionType::Nvme);
        let b = remote("evil", "db", FunctionType::Nvme);
        let mut obs = converged_nvmet(&a);
        obs.multipath = true;
        // A fresh agent observes A's controller (its NQN and marker):
        // adopted, nothing planned, no new connection.
        assert_eq!(plan_nvmet(std::slice::from_ref(&a), &obs, &nvmet_cfg()), []);
        // Only B's controller there: not A's, so A does not take it over
        // (without multipath, A connects its own; B's, now an orphan, goes).
        let mut obs = NvmetObserved {
            controllers: vec![own_controller(&b, 3)],
            ..Default::default()
        };
        let plan = plan_nvmet(std::slice::from_ref(&a), &obs, &nvmet_cfg());
        assert_eq!(disconnects(&plan), [3]);
        assert_eq!(connects(&plan)[0].1.hostnqn, a.key.initiator_nqn());
        // With B still desired, B keeps its own and A gets another.
        obs.multipath = false;
        let plan = plan_nvmet(&[a.clone(), b.clone()], &obs, &nvmet_cfg());
        assert_eq!(disconnects(&plan), Vec::<u32>::new());
        assert_eq!(connects(&plan).len(), 1);
        assert_eq!(connects(&plan)[0].0, "acme/db");
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
            n.hostnqn = Some(hostnqn.clone());
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
        n.hostnqn = Some(a.key.initiator_nqn());
        assert_eq!(
            refusals_nvmet(std::slice::from_ref(&a), &NvmetObserved::default()),
            []
        );
    }

    #[test]
    fn two_volumes_with_one_host_nqn_on_one_target_do_not_share_the_connection() {
        let mut a = remote("acme", "a", FunctionType::Nvme);
        let mut b = remote("acme", "b", FunctionType::Nvme);
        for d in [&mut a, &mut b] {
            let VolumeSource::Nvmeof(n) = &mut d.spec.source else {
                unreachable!()
            };
            n.hostnqn = Some("nqn.2014-08.org.example:acme-host".into());
        }
        // B made it and exports its device: A (first by key) is refused,
        // not handed B's connection.
        let mut obs = NvmetObserved {
            controllers: vec![own_controller(&b, 1)],
            ..Default::default()
        };
        obs.subsystems.insert(
            b.key.subsystem_nqn(),
            ObservedNvmetSubsystem {
                namespaces: [(
                    1,
                    ObservedNamespace {
                        device_path: "/dev/nvme1n1".into(),
                        enabled: true,
                    },
                )]
                .into(),
                ..Default::default()
            },
        );
        let r = refusals_nvmet(&[a.clone(), b.clone()], &obs);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].key, a.key);
        assert!(r[0].message.contains("never share"), "{}", r[0].message);
        let plan = plan_nvmet(&[a, b], &obs, &nvmet_cfg());
        assert!(
            lines(&plan).iter().all(|l| !l.contains("acme/a")),
            "{:#?}",
            lines(&plan)
        );
    }
}
