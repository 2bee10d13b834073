//! Planning for the kernel backend: the nvmet target over configfs, its
//! fabrics connections to remote sources, and per-volume tc shaping.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use dpu_api::spec::VolumeSource;

use super::{
    Action, Op, Out, Owner, Phase, Refusal, RefusalReason, host_nqn_refusal, orphan_subsystems,
    sorted, trtype,
};
use crate::model::{BackendKind, DesiredVolume, NQN_PREFIX, Qos, VolumeKey, initiator_host_id};
use crate::nvmet::configfs::{self, ConfigfsOp, DeviceRef, NvmetObserved, PortConfig};
use crate::nvmet::tc::{TcObserved, TcOp};
use crate::nvmet::{ConnectOptions, FabricsController, IoMax};

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
        nqn: n.subnqn.to_string(),
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
    /// The agent's port `id` listening on `listen` over TCP (`ipv4` or
    /// `ipv6` as `listen` is), backing files in `backing_dir`, no QoS
    /// cgroup, every volume on that one port.
    pub fn tcp(id: u16, listen: std::net::SocketAddr, backing_dir: PathBuf) -> Self {
        NvmetPlanConfig {
            port: PortConfig {
                id,
                trtype: "tcp".into(),
                adrfam: if listen.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
                traddr: listen.ip().to_string(),
                trsvcid: listen.port().to_string(),
            },
            backing_dir,
            qos_cgroup: None,
            volume_ports: 0,
        }
    }

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

/// Unlinks from port `port_id` the subsystems among `subsystems` of
/// volumes still wanted (orphans are unlinked with the rest of their
/// state).
fn unlink_wanted(
    out: &mut Out,
    port_id: u16,
    subsystems: &[String],
    wanted: &BTreeSet<&VolumeKey>,
) {
    for n in subsystems {
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
    for (nqn, sub, key) in orphan_subsystems(&observed.subsystems, &wanted) {
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
                unlink_wanted(&mut out, port_id, &p.subsystems, &wanted);
                out.configfs(
                    &Owner::Shared,
                    Phase::DeleteDevice,
                    vec![configfs::remove_port(port_id)],
                );
            } else if same || !all_ours {
                // A port with foreign subsystems is left as it is.
                linked.extend(p.subsystems.iter().cloned());
            } else {
                unlink_wanted(&mut out, port_id, &p.subsystems, &wanted);
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
                unlink_wanted(&mut out, *id, &p.subsystems, &wanted);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::function_host_nqn;
    use crate::nvmet::configfs::{ObservedNamespace, ObservedNvmetSubsystem, ObservedPort};
    use crate::plan::fixtures::*;
    use dpu_api::spec::FunctionType;

    #[test]
    fn nvmet_fresh_remote_volume() {
        let d = with_qos(remote("acme", "db", FunctionType::Nvme), Some(500), None);
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
                subnqn: "nqn.2014-08.org.example:remote".parse().unwrap(),
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

    #[test]
    fn per_volume_ports_and_shaping_for_fresh_volumes() {
        let a = with_qos(remote("acme", "a", FunctionType::Nvme), None, Some(10));
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
        let d = with_qos(remote("acme", "db", FunctionType::Nvme), None, Some(10));
        let obs = converged_per_volume(&d);
        assert_eq!(
            nvmet_export(&obs, &d.key).as_deref(),
            Some("192.0.2.10:4421")
        );
        assert_eq!(plan_nvmet(&[d], &obs, &per_volume_cfg()), []);
    }

    #[test]
    fn qos_change_is_one_class_change() {
        let d = with_qos(remote("acme", "db", FunctionType::Nvme), None, Some(20));
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
        let b = with_qos(remote("acme", "b", FunctionType::Nvme), None, Some(5));
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
        n.hostnqn = Some("nqn.2014-08.org.example:acme-host".parse().unwrap());
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
    fn two_volumes_with_one_host_nqn_on_one_target_do_not_share_the_connection() {
        let mut a = remote("acme", "a", FunctionType::Nvme);
        let mut b = remote("acme", "b", FunctionType::Nvme);
        for d in [&mut a, &mut b] {
            let VolumeSource::Nvmeof(n) = &mut d.spec.source else {
                unreachable!()
            };
            n.hostnqn = Some("nqn.2014-08.org.example:acme-host".parse().unwrap());
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
