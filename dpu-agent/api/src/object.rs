//! The object envelope, status and conditions, watch events, and the bodies of
//! the apply, plan and inventory endpoints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::kind::Kind;

/// A stored object as the API returns it. `spec` is the kind's spec with
/// write-only fields replaced by `<field>_set: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Object {
    pub kind: Kind,
    pub id: String,
    pub tenant: String,
    pub generation: u64,
    pub spec: Value,
    #[serde(default)]
    pub status: Status,
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            id: self.id.clone(),
        }
    }
}

/// Identifies an object: ids are unique within a kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub id: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, id: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            id: id.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.path(), self.id)
    }
}

/// Where a controller has got an object to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Pending,
    Ready,
    Degraded,
    Failed,
    Deleting,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Phase::Pending => "Pending",
            Phase::Ready => "Ready",
            Phase::Degraded => "Degraded",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        };
        f.write_str(s)
    }
}

/// Status written by the object's controller. Kind-specific fields (`vf`,
/// `ofport`, `usage`, ...) sit beside the common ones on the wire; the
/// facts other controllers and the host stub act on are typed
/// ([`StatusFacts`]), the rest (reports for people) are in `fields`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Must come before `fields`: it takes its keys out of the flattened
    /// map first.
    #[serde(flatten)]
    pub facts: StatusFacts,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// What one controller publishes in an object's status for another to act
/// on: a function's VF, representor and host-side device (read by the port,
/// volume and host controllers), and the host device a volume appears as;
/// and allocations a controller must find again after a restart (an IPsec
/// tunnel's `reqid` and `if_id`). Facts are written durably before the
/// engine goes on (dpu-agent README).
/// Top-level fields of `status` on the wire, absent when unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusFacts {
    /// Function: the VF index it holds on its PF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf: Option<u32>,
    /// Function carved as a sub-function: the SF number it holds on its PF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sf: Option<u32>,
    /// Function: the DPU-side netdev the switch attaches the function by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub representor: Option<String>,
    /// Function, volume: the device the host sees (netdev or block device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_device: Option<String>,
    /// Function: the host-side PCI address (from the host stub's report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_pci_address: Option<String>,
    /// IPsec tunnel: the XFRM `reqid` allocated to it (kept across
    /// restarts, so its SAs and policies stay its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reqid: Option<u32>,
    /// IPsec tunnel of tenant scope: the XFRM interface id allocated to
    /// its tenant (all of one tenant's tunnels share it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_id: Option<u32>,
}

impl Status {
    /// Sets a condition, keeping its `last_transition` when its status did not
    /// change.
    pub fn set_condition(&mut self, mut cond: Condition) {
        if let Some(old) = self.conditions.iter_mut().find(|c| c.type_ == cond.type_) {
            if old.status == cond.status {
                cond.last_transition = old.last_transition.clone();
            }
            *old = cond;
        } else {
            self.conditions.push(cond);
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    /// RFC 3339 UTC timestamp of the last change of `status`.
    pub last_transition: String,
}

/// The body of `PUT /v1/{kind}/{id}`. `kind` and `id` may be given (so that
/// what a GET returned minus server fields can be sent back) and must then
/// match the path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub kind: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tenant: Option<String>,
    pub spec: Value,
}

/// One object in an apply or plan body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectWrite {
    pub kind: String,
    pub id: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tenant: Option<String>,
    pub spec: Value,
}

/// `POST /v1/apply` and `POST /v1/plan`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub objects: Vec<ObjectWrite>,
    /// Absent, or an object: an explicit `null` is refused like any other
    /// wrong type (the OpenAPI document says "object").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub prune: Option<Prune>,
}

/// A field that may be left out but not set to `null`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    pub tenant: String,
}

/// What a write did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteOutcome {
    Created,
    Updated,
    Unchanged,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub kind: Kind,
    pub id: String,
    pub outcome: WriteOutcome,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub revision: u64,
    pub results: Vec<ApplyResult>,
}

/// One planned change to one object, with what its controller would do to
/// the world for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedObject {
    pub kind: Kind,
    pub id: String,
    pub tenant: String,
    pub outcome: WriteOutcome,
    /// Backend actions in the backend's own human syntax (OVSDB operations,
    /// flows in `ovs-ofctl` syntax, RPC calls, ...).
    #[serde(default)]
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanResponse {
    /// The store revision the plan was computed against.
    pub revision: u64,
    pub objects: Vec<PlannedObject>,
}

/// A watch event, one per line of `GET /v1/watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub object: Object,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    Status,
}

/// A list response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectList {
    pub revision: u64,
    pub items: Vec<Object>,
}

/// What a host stub reports about the host's PCI functions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInventory {
    /// Filled in by the agent from the caller's certificate; a value sent by
    /// the host is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub devices: Vec<HostDevice>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDevice {
    /// PCI address, `dddd:bb:dd.f`.
    pub pci_address: String,
    /// `pf`, `vf`, `nvme`, `virtio-net`, `virtio-blk` or `other`.
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// For a VF, the PF's PCI address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physfn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vf_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netdev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iommu_group: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<i32>,
    /// `pf`, `vf` or `sf` (a scalable function on the auxiliary bus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The physical card the function belongs to: its PCI Device Serial
    /// Number (`dsn:..`), VPD serial number (`sn:..`) or, failing both, the
    /// address of its function 0 (`pci:..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
    /// For an SF, its `sfnum`; `pci_address` is then its parent PF's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sf_index: Option<u32>,
    /// For an SF, its auxiliary device name (`mlx5_core.sf.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_device: Option<String>,
    /// The RDMA device bound to the function's netdev, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<HostRdma>,
}

/// The RDMA (verbs) device the host stub found on a function's netdev
/// through `/sys/class/infiniband/*/ports/*/gid_attrs/ndevs/*`: a PCI
/// function's own device (`mlx5_3`) or a software one (`rxe0`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostRdma {
    /// The RDMA device's name under `/sys/class/infiniband`.
    pub device: String,
    /// Its verbs character device (`/dev/infiniband/uverbs0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uverbs: Option<String>,
    /// The RDMA connection manager's character device
    /// (`/dev/infiniband/rdma_cm`), when the host has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_cm: Option<String>,
}

/// A host's last report, as `GET /v1/inventory` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// RFC 3339 UTC time of the report.
    pub reported_at: String,
    pub devices: Vec<HostDevice>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inventory {
    /// DPU-local facts: the agent's version, backends and their state.
    pub dpu: BTreeMap<String, Value>,
    pub hosts: Vec<HostReport>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_facts_are_typed_and_the_wire_form_is_unchanged() {
        let wire = json!({"observed_generation": 2, "phase": "Ready", "conditions": [],
                          "vf": 3, "representor": "pf0vf3", "host_device": "ens1f0v3",
                          "ofport": 7, "flows": 12});
        let status: Status = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(status.facts.vf, Some(3));
        assert_eq!(status.facts.representor.as_deref(), Some("pf0vf3"));
        assert_eq!(status.facts.host_device.as_deref(), Some("ens1f0v3"));
        assert_eq!(status.facts.host_pci_address, None);
        // The typed facts are not also in the free-form map.
        assert_eq!(
            status.fields.keys().collect::<Vec<_>>(),
            vec!["flows", "ofport"]
        );
        assert_eq!(serde_json::to_value(&status).unwrap(), wire);
    }

    #[test]
    fn a_fact_of_the_wrong_type_is_refused() {
        let err = serde_json::from_value::<Status>(json!({"vf": "three"})).unwrap_err();
        assert!(
            err.to_string().contains("u32") || err.to_string().contains("invalid type"),
            "{err}"
        );
    }
}
