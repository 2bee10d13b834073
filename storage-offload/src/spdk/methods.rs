//! Typed params and results of the standard SPDK methods this crate uses.
//! Param names, types and required flags follow SPDK's `schema/schema.yaml`;
//! `tests/spdk_schema.rs` checks every request against that schema and decodes
//! the documented example responses into these result types.
//!
//! Params structs deny unknown fields and leave out absent optionals, since
//! SPDK rejects unknown params. Result structs accept unknown fields: servers
//! add fields over time.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A typed JSON-RPC method: its name, params (`Self`) and result.
pub trait RpcMethod: Serialize {
    const METHOD: &'static str;
    type Output: DeserializeOwned;
}

macro_rules! method {
    ($ty:ty, $name:literal, $out:ty) => {
        impl RpcMethod for $ty {
            const METHOD: &'static str = $name;
            type Output = $out;
        }
    };
}

fn is_false(b: &bool) -> bool {
    !*b
}

// ---- app framework ----

/// Lists the methods the server offers. With `current`, only those callable
/// in the current state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcGetMethods {
    #[serde(skip_serializing_if = "is_false", default)]
    pub current: bool,
    #[serde(skip_serializing_if = "is_false", default)]
    pub include_aliases: bool,
}
method!(RpcGetMethods, "rpc_get_methods", Vec<String>);

/// Takes no params.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpdkGetVersion {}
method!(SpdkGetVersion, "spdk_get_version", SpdkVersion);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpdkVersion {
    pub version: String,
    #[serde(default)]
    pub fields: Option<SpdkVersionFields>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpdkVersionFields {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    #[serde(default)]
    pub suffix: String,
}

// ---- bdev ----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevGetBdevs {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// Milliseconds to wait for `name` to appear.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout: Option<u32>,
}
method!(BdevGetBdevs, "bdev_get_bdevs", Vec<Bdev>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bdev {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub product_name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub claimed: bool,
    #[serde(default)]
    pub assigned_rate_limits: Option<QosLimits>,
    #[serde(default)]
    pub driver_specific: Option<Value>,
}

impl Bdev {
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(u64::from(self.block_size))
    }
}

/// I/O statistics of bdevs: every bdev without `names`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevGetIostat {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub names: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub per_channel: Option<bool>,
}
method!(BdevGetIostat, "bdev_get_iostat", BdevIostats);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BdevIostats {
    /// Ticks per second of the latency fields (not used here).
    #[serde(default)]
    pub tick_rate: u64,
    #[serde(default)]
    pub bdevs: Vec<BdevIostat>,
}

/// One bdev's counters since it was created (or last reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BdevIostat {
    pub name: String,
    #[serde(default)]
    pub bytes_read: u64,
    #[serde(default)]
    pub num_read_ops: u64,
    #[serde(default)]
    pub bytes_written: u64,
    #[serde(default)]
    pub num_write_ops: u64,
}

/// Rate limits as `bdev_get_bdevs` reports them; 0 means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosLimits {
    #[serde(default)]
    pub rw_ios_per_sec: u64,
    #[serde(default)]
    pub rw_mbytes_per_sec: u64,
    #[serde(default)]
    pub r_mbytes_per_sec: u64,
    #[serde(default)]
    pub w_mbytes_per_sec: u64,
}

/// Sets rate limits on a bdev; 0 removes a limit. Absent fields are left
/// as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevSetQosLimit {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rw_ios_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rw_mbytes_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub r_mbytes_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub w_mbytes_per_sec: Option<u64>,
}
method!(BdevSetQosLimit, "bdev_set_qos_limit", bool);

/// A RAM-backed bdev. Returns its name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMallocCreate {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    pub block_size: u32,
    pub num_blocks: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub optimal_io_boundary: Option<u32>,
}
method!(BdevMallocCreate, "bdev_malloc_create", String);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevMallocDelete {
    pub name: String,
}
method!(BdevMallocDelete, "bdev_malloc_delete", bool);

// ---- bdev_nvme (the NVMe-oF initiator) ----

/// Connects to a remote (or PCIe) NVMe controller; its namespaces become
/// bdevs named `<name>n<nsid>`. Returns those names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevNvmeAttachController {
    pub name: String,
    /// `tcp`, `rdma` or `pcie`.
    pub trtype: String,
    pub traddr: String,
    /// `ipv4` or `ipv6` for fabrics.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adrfam: Option<String>,
    /// A port number, as a string.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trsvcid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subnqn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hostnqn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hostaddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hdgst: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ddgst: Option<bool>,
    /// -1 reconnects forever, 0 never.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ctrlr_loss_timeout_sec: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reconnect_delay_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fast_io_fail_timeout_sec: Option<u32>,
}
method!(
    BdevNvmeAttachController,
    "bdev_nvme_attach_controller",
    Vec<String>
);

/// Detaches a controller and deletes its bdevs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevNvmeDetachController {
    pub name: String,
}
method!(
    BdevNvmeDetachController,
    "bdev_nvme_detach_controller",
    bool
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevNvmeGetControllers {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}
method!(
    BdevNvmeGetControllers,
    "bdev_nvme_get_controllers",
    Vec<NvmeController>
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmeController {
    pub name: String,
    #[serde(default)]
    pub trid: Option<Value>,
    #[serde(default)]
    pub ctrlrs: Option<Value>,
}

// ---- nvmf (the NVMe-oF target) ----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfCreateTransport {
    /// `TCP` or `RDMA`.
    pub trtype: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_queue_depth: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_io_qpairs_per_ctrlr: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub in_capsule_data_size: Option<u32>,
}
method!(NvmfCreateTransport, "nvmf_create_transport", bool);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfCreateSubsystem {
    pub nqn: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_namespaces: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allow_any_host: Option<bool>,
}
method!(NvmfCreateSubsystem, "nvmf_create_subsystem", bool);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfSubsystemAddNs {
    pub nqn: String,
    pub namespace: NvmfNamespace,
}
// Returns the namespace id given.
method!(NvmfSubsystemAddNs, "nvmf_subsystem_add_ns", u32);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfNamespace {
    pub bdev_name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nsid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfSubsystemRemoveNs {
    pub nqn: String,
    pub nsid: u32,
}
method!(NvmfSubsystemRemoveNs, "nvmf_subsystem_remove_ns", bool);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfSubsystemAddListener {
    pub nqn: String,
    pub listen_address: ListenAddress,
}
method!(
    NvmfSubsystemAddListener,
    "nvmf_subsystem_add_listener",
    bool
);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenAddress {
    pub trtype: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adrfam: Option<String>,
    pub traddr: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trsvcid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfSubsystemAddHost {
    pub nqn: String,
    pub host: String,
}
method!(NvmfSubsystemAddHost, "nvmf_subsystem_add_host", bool);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfDeleteSubsystem {
    pub nqn: String,
}
method!(NvmfDeleteSubsystem, "nvmf_delete_subsystem", bool);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfGetSubsystems {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nqn: Option<String>,
}
method!(NvmfGetSubsystems, "nvmf_get_subsystems", Vec<NvmfSubsystem>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmfSubsystem {
    pub nqn: String,
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub listen_addresses: Vec<ListenAddress>,
    #[serde(default)]
    pub hosts: Vec<NvmfHost>,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub model_number: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<NvmfSubsystemNamespace>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmfHost {
    pub nqn: String,
}

/// Servers report the bdev as `name`, newer ones also as `bdev_name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmfSubsystemNamespace {
    pub nsid: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bdev_name: Option<String>,
}

impl NvmfSubsystemNamespace {
    pub fn bdev(&self) -> &str {
        self.bdev_name
            .as_deref()
            .or(self.name.as_deref())
            .unwrap_or_default()
    }
}

// ---- vhost ----

/// A vhost-user-blk controller (a socket named `ctrlr`) over a bdev.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostCreateBlkController {
    pub ctrlr: String,
    pub dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub readonly: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpumask: Option<String>,
}
method!(
    VhostCreateBlkController,
    "vhost_create_blk_controller",
    bool
);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostDeleteController {
    pub ctrlr: String,
}
method!(VhostDeleteController, "vhost_delete_controller", bool);

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostGetControllers {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}
method!(
    VhostGetControllers,
    "vhost_get_controllers",
    Vec<VhostController>
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostController {
    pub ctrlr: String,
    #[serde(default)]
    pub backend_specific: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfGetTransports {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trtype: Option<String>,
}
method!(NvmfGetTransports, "nvmf_get_transports", Vec<NvmfTransport>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NvmfTransport {
    pub trtype: String,
}
