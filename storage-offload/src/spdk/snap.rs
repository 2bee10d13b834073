//! NVIDIA SNAP (DOCA SNAP-4, BlueField-3) extension methods: emulated NVMe
//! subsystems, namespaces and controllers, and virtio-blk controllers, on the
//! PCIe functions the DPU shows the host. SNAP is an SPDK application, so the
//! same socket and client serve both.
//!
//! What is confirmed, and by what (searched November 2026):
//! - NVIDIA's "SNAP-4 Service RPC Commands" page (docs.nvidia.com/doca/sdk)
//!   names `emulation_function_list`, `snap_log_level_set`, and sections for
//!   NVMe subsystems, namespaces and controllers and for virtio-blk
//!   controllers. The text we could read does not show the JSON param keys.
//! - NVIDIA-authored examples (the DPF `doca-snap` service template, the
//!   virtio VF examples) call `snap_rpc.py nvme_subsystem_create --nqn`,
//!   `nvme_controller_create --nqn --ctrl --pf_id`, and
//!   `virtio_blk_controller_create --pf_id --bdev --ctrl`; third-party
//!   scripts add `nvme_namespace_create --nqn --nsid --bdev_name --uuid`,
//!   `nvme_controller_attach_ns --ctrl --nsid`, and `--vf_id`/`--vuid`.
//!
//! Those are command-line flags. That `snap_rpc.py` sends them as JSON params
//! with the same names is an inference, so every params struct below is marked
//! unconfirmed; results are kept as untyped JSON. Verify against a real SNAP
//! (`rpc_get_methods`, and `snap_rpc.py -v` prints the JSON it sends) before
//! relying on them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::methods::RpcMethod;

macro_rules! method {
    ($ty:ty, $name:literal, $out:ty) => {
        impl RpcMethod for $ty {
            const METHOD: &'static str = $name;
            type Output = $out;
        }
    };
}

/// Lists the emulated PCIe functions (PFs, VFs) with their ids and state.
/// Name confirmed in NVIDIA's SNAP-4 RPC documentation; the result's shape is
/// not, hence untyped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulationFunctionList {}
method!(EmulationFunctionList, "emulation_function_list", Value);

/// UNCONFIRMED param keys (`nqn`, `serial_number`, `model_number`): the
/// method name appears in NVIDIA examples as `snap_rpc.py nvme_subsystem_create
/// --nqn ...`; the JSON keys of `-sn`/`-mn` are guesses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeSubsystemCreate {
    pub nqn: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model_number: Option<String>,
}
method!(NvmeSubsystemCreate, "nvme_subsystem_create", Value);

/// UNCONFIRMED: name from the same documentation family; key `nqn` inferred.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeSubsystemDestroy {
    pub nqn: String,
}
method!(NvmeSubsystemDestroy, "nvme_subsystem_destroy", Value);

/// Name listed as confirmed in BACKENDS.md §5.3 (not re-checked); result
/// untyped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeSubsystemList {}
method!(NvmeSubsystemList, "nvme_subsystem_list", Value);

/// UNCONFIRMED keys (`nqn`, `nsid`, `bdev_name`, `uuid`), inferred from
/// `snap_rpc.py nvme_namespace_create --nqn --nsid --bdev_name --uuid` in
/// public scripts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeNamespaceCreate {
    pub nqn: String,
    pub nsid: u32,
    pub bdev_name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uuid: Option<String>,
}
method!(NvmeNamespaceCreate, "nvme_namespace_create", Value);

/// UNCONFIRMED: name and keys (`nqn`, `nsid`) inferred.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeNamespaceDestroy {
    pub nqn: String,
    pub nsid: u32,
}
method!(NvmeNamespaceDestroy, "nvme_namespace_destroy", Value);

/// UNCONFIRMED keys (`nqn`, `ctrl`, `pf_id`, `vf_id`, `num_queues`), inferred
/// from `snap_rpc.py nvme_controller_create --nqn --ctrl --pf_id [--vf_id]`
/// in NVIDIA's DPF example. `ctrl` names the controller; later calls use it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeControllerCreate {
    pub nqn: String,
    pub ctrl: String,
    pub pf_id: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vf_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_queues: Option<u32>,
}
method!(NvmeControllerCreate, "nvme_controller_create", Value);

/// UNCONFIRMED: name and key `ctrl` inferred.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeControllerDestroy {
    pub ctrl: String,
}
method!(NvmeControllerDestroy, "nvme_controller_destroy", Value);

/// UNCONFIRMED name (listed as unconfirmed in BACKENDS.md §5.3); result untyped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeControllerList {}
method!(NvmeControllerList, "nvme_controller_list", Value);

/// UNCONFIRMED keys (`ctrl`, `nsid`), inferred from
/// `snap_rpc.py nvme_controller_attach_ns --ctrl --nsid`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeControllerAttachNs {
    pub ctrl: String,
    pub nsid: u32,
}
method!(NvmeControllerAttachNs, "nvme_controller_attach_ns", Value);

/// UNCONFIRMED: name and keys (`ctrl`, `nsid`) inferred.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeControllerDetachNs {
    pub ctrl: String,
    pub nsid: u32,
}
method!(NvmeControllerDetachNs, "nvme_controller_detach_ns", Value);

/// UNCONFIRMED keys (`ctrl`, `pf_id`, `vf_id`, `bdev`, `num_queues`),
/// inferred from `snap_rpc.py virtio_blk_controller_create --pf_id --bdev
/// --ctrl` in NVIDIA's examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioBlkControllerCreate {
    pub ctrl: String,
    pub pf_id: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vf_id: Option<u32>,
    pub bdev: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_queues: Option<u32>,
}
method!(
    VirtioBlkControllerCreate,
    "virtio_blk_controller_create",
    Value
);

/// UNCONFIRMED: name and key `ctrl` inferred.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioBlkControllerDestroy {
    pub ctrl: String,
}
method!(
    VirtioBlkControllerDestroy,
    "virtio_blk_controller_destroy",
    Value
);

/// Name listed as confirmed in BACKENDS.md §5.3 (not re-checked); result
/// untyped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioBlkControllerList {}
method!(VirtioBlkControllerList, "virtio_blk_controller_list", Value);

/// Collects the string values of `key` anywhere in an untyped list result;
/// used to find our object names in SNAP's `*_list` answers without relying
/// on their unconfirmed shape.
pub fn names_in(value: &Value, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect(value, key, &mut out);
    out
}

fn collect(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                if k == key
                    && let Some(s) = v.as_str()
                {
                    out.push(s.to_string());
                }
                collect(v, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect(v, key, out)),
        _ => {}
    }
}
