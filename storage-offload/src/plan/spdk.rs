//! Planning for the SPDK backends: SNAP emulation on a BlueField, or plain
//! SPDK (nvmf subsystems and vhost controllers), driven over JSON-RPC.

use std::collections::BTreeSet;

use dpu_api::spec::{FunctionType, VolumeSource};

use super::{
    Action, Out, Owner, Phase, Refusal, host_nqn_refusal, orphan_subsystems, sorted, trtype,
};
use crate::model::{BackendKind, DesiredVolume, Qos, SpdkObserved, VolumeKey};
use crate::spdk::methods::{self as m, ListenAddress, QosLimits};
use crate::spdk::snap;

/// Volumes the SPDK backends refuse: a host NQN that is another volume's
/// (or a function's) derived NQN. Each remote source is a bdev_nvme
/// controller named after its volume (`dpu_<tenant>_<volume>_src`), found
/// by that name only, so volumes never share a controller or bdev there.
pub fn refusals_spdk(desired: &[DesiredVolume]) -> Vec<Refusal> {
    desired.iter().filter_map(host_nqn_refusal).collect()
}

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
    for (nqn, sub, key) in orphan_subsystems(&observed.subsystems, &wanted) {
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
                    subnqn: Some(n.subnqn.to_string()),
                    hostnqn: Some(
                        n.hostnqn
                            .as_ref()
                            .map_or_else(|| key.initiator_nqn(), |h| h.to_string()),
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObservedSubsystem;
    use crate::plan::Op;
    use crate::plan::fixtures::*;

    #[test]
    fn spdk_nvmf_fresh_remote_volume_in_order() {
        let d = with_qos(remote("acme", "db", FunctionType::Nvme), Some(1000), None);
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
        let d = remote("acme", "db", FunctionType::Nvme);
        let obs = converged_nvmf(
            &d,
            QosLimits {
                rw_ios_per_sec: 1000,
                ..Default::default()
            },
        );
        let d = with_qos(d, None, Some(200));
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
}
