//! The functions the agent assigned to this host, kept up to date from the
//! list and the watch, and resolved to local PCI functions and to how each
//! is exposed. Pure: no I/O.
//!
//! A `functions` object names its function DPU-side (`pf: "pf0"`, `vf`);
//! the host-side address is in `status.host_pci_address` once the agent
//! knows it. Without it, `pfN` is the N-th SR-IOV PF (by address) of the
//! only DPU card on the host, and the VF is that PF's `virtfn<vf>`; with two
//! cards and no address the function is left unresolved rather than
//! guessed.

use std::collections::{BTreeMap, BTreeSet};

use dpu_api::Kind;
use dpu_api::object::{Event, EventType, Object, ObjectList};
use dpu_api::spec::{Attach, FunctionSpec, FunctionType};

use crate::cdi::{ExposedFunction, Exposure};
use crate::discover::{Function, FunctionKind};

/// Assigned `functions` objects by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignments {
    objects: BTreeMap<String, Object>,
    revision: u64,
}

impl Assignments {
    /// Replaces everything with a full list (level-triggered resync).
    pub fn replace(&mut self, list: ObjectList) {
        self.objects = list
            .items
            .into_iter()
            .filter(|o| o.kind == Kind::Function)
            .map(|o| (o.id.clone(), o))
            .collect();
        self.revision = list.revision;
    }

    /// Applies one watch event; returns whether anything changed.
    pub fn apply(&mut self, event: Event) -> bool {
        if event.object.kind != Kind::Function {
            return false;
        }
        self.revision = self.revision.max(event.revision);
        let id = event.object.id.clone();
        match event.type_ {
            EventType::Deleted => self.objects.remove(&id).is_some(),
            _ => self.objects.insert(id, event.object.clone()).as_ref() != Some(&event.object),
        }
    }

    pub fn ids(&self) -> BTreeSet<&str> {
        self.objects.keys().map(String::as_str).collect()
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// A function the host cannot expose (yet), and why, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    pub id: String,
    pub reason: String,
}

/// How each assignment maps onto this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Functions to expose. For `Exposure::Vfio` the function must first be
    /// bound to vfio-pci (see `to_bind`).
    pub exposed: Vec<ExposedFunction>,
    /// PCI addresses that must be on vfio-pci.
    pub to_bind: BTreeSet<String>,
    pub unresolved: Vec<Unresolved>,
}

/// Resolves every assignment against the current scan (the DPU's functions).
pub fn resolve(assignments: &Assignments, functions: &[Function]) -> Resolution {
    let mut out = Resolution::default();
    for (id, object) in &assignments.objects {
        match resolve_one(object, functions) {
            Ok((exposed, bind)) => {
                if bind {
                    out.to_bind.insert(exposed.pci_address.clone());
                }
                out.exposed.push(exposed);
            }
            Err(reason) => out.unresolved.push(Unresolved {
                id: id.clone(),
                reason,
            }),
        }
    }
    out
}

fn resolve_one(object: &Object, functions: &[Function]) -> Result<(ExposedFunction, bool), String> {
    let spec: FunctionSpec = serde_json::from_value(object.spec.clone())
        .map_err(|e| format!("spec is not a function spec: {e}"))?;
    let f = find_function(object, &spec, functions)?;
    let vfio = spec.attach == Some(Attach::Vfio);
    let exposure = if vfio {
        let group = f
            .iommu_group
            .ok_or_else(|| format!("{} has no IOMMU group (is the IOMMU on?)", f.pci_address))?;
        Exposure::Vfio { iommu_group: group }
    } else {
        match spec.type_ {
            FunctionType::Net => Exposure::Netdev {
                host_interface: f.netdevs.first().cloned().ok_or_else(|| {
                    format!(
                        "{} has no netdev yet (driver {:?} not bound or still probing)",
                        f.pci_address, f.driver
                    )
                })?,
            },
            FunctionType::Nvme | FunctionType::VirtioBlk => Exposure::Block {
                device: f.block_devices.first().cloned().ok_or_else(|| {
                    format!(
                        "{} has no block device yet (no namespace attached?)",
                        f.pci_address
                    )
                })?,
            },
        }
    };
    Ok((
        ExposedFunction {
            id: object.id.clone(),
            pci_address: f.pci_address.clone(),
            exposure,
        },
        vfio,
    ))
}

fn find_function<'a>(
    object: &Object,
    spec: &FunctionSpec,
    functions: &'a [Function],
) -> Result<&'a Function, String> {
    let pci = |f: &&Function| f.kind() != FunctionKind::Sf;
    if let Some(addr) = object.status.facts.host_pci_address.as_deref() {
        return functions
            .iter()
            .filter(pci)
            .find(|f| f.pci_address == addr)
            .ok_or_else(|| format!("host_pci_address {addr} is not a DPU function on this host"));
    }
    let pf_index: usize = spec
        .pf
        .strip_prefix("pf")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("pf {:?} is not pfN", spec.pf))?;
    let mut pfs: Vec<&Function> = functions
        .iter()
        .filter(|f| f.kind() == FunctionKind::Pf && f.sriov_totalvfs.is_some())
        .collect();
    pfs.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
    let cards: BTreeSet<Option<&str>> = pfs.iter().map(|f| f.card.as_deref()).collect();
    if cards.len() > 1 {
        return Err(format!(
            "{} DPU cards on this host and no status.host_pci_address: cannot tell which {} is meant",
            cards.len(),
            spec.pf
        ));
    }
    let pf = pfs.get(pf_index).ok_or_else(|| {
        format!(
            "{} not found: {} SR-IOV PFs on this host",
            spec.pf,
            pfs.len()
        )
    })?;
    let vf = spec.vf.or_else(|| {
        object
            .status
            .fields
            .get("vf")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
    });
    let Some(vf) = vf else {
        return Err(format!("{}: no VF index in spec or status yet", object.id));
    };
    functions
        .iter()
        .find(|f| {
            f.kind() == FunctionKind::Vf
                && f.physfn.as_deref() == Some(pf.pci_address.as_str())
                && f.vf_index == Some(vf)
        })
        .ok_or_else(|| {
            format!(
                "VF {vf} of {} ({}) does not exist (sriov_numvfs = {})",
                spec.pf,
                pf.pci_address,
                pf.sriov_numvfs.unwrap_or(0)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_api::object::Status;
    use serde_json::json;

    fn function_object(id: &str, spec: serde_json::Value, status: serde_json::Value) -> Object {
        // As the agent's JSON arrives.
        let s: Status = serde_json::from_value(status).unwrap();
        Object {
            kind: Kind::Function,
            id: id.into(),
            tenant: "acme".into(),
            generation: 1,
            spec,
            status: s,
        }
    }

    fn vf(addr: &str, index: u32) -> Function {
        Function {
            pci_address: addr.into(),
            kind: Some(FunctionKind::Vf),
            physfn: Some("0000:03:00.0".into()),
            vf_index: Some(index),
            netdevs: vec![format!("ens1f0v{index}")],
            iommu_group: Some(40 + index),
            card: Some("dsn:a".into()),
            ..Function::default()
        }
    }

    fn inventory() -> Vec<Function> {
        vec![
            Function {
                pci_address: "0000:03:00.0".into(),
                kind: Some(FunctionKind::Pf),
                sriov_totalvfs: Some(8),
                sriov_numvfs: Some(2),
                card: Some("dsn:a".into()),
                ..Function::default()
            },
            vf("0000:03:00.2", 0),
            vf("0000:03:00.3", 1),
        ]
    }

    #[test]
    fn resolves_by_pf_vf_and_by_address() {
        let mut a = Assignments::default();
        a.replace(ObjectList {
            revision: 5,
            items: vec![
                function_object(
                    "web",
                    json!({"type": "net", "pf": "pf0", "vf": 1, "mac": "02:00:00:00:00:01"}),
                    json!({}),
                ),
                function_object(
                    "vm",
                    json!({"type": "net", "pf": "pf0", "attach": "vfio", "mac": "02:00:00:00:00:02"}),
                    json!({"host_pci_address": "0000:03:00.2"}),
                ),
                function_object("gone", json!({"type": "net", "pf": "pf0", "vf": 7}), json!({})),
            ],
        });
        let r = resolve(&a, &inventory());
        assert_eq!(
            r.exposed,
            vec![
                ExposedFunction {
                    id: "vm".into(),
                    pci_address: "0000:03:00.2".into(),
                    exposure: Exposure::Vfio { iommu_group: 40 },
                },
                ExposedFunction {
                    id: "web".into(),
                    pci_address: "0000:03:00.3".into(),
                    exposure: Exposure::Netdev {
                        host_interface: "ens1f0v1".into()
                    },
                },
            ]
        );
        assert_eq!(r.to_bind, BTreeSet::from(["0000:03:00.2".to_string()]));
        assert_eq!(r.unresolved.len(), 1);
        assert!(
            r.unresolved[0].reason.contains("VF 7"),
            "{:?}",
            r.unresolved
        );
    }

    #[test]
    fn two_cards_without_address_is_unresolved() {
        let mut inv = inventory();
        inv.push(Function {
            pci_address: "0000:81:00.0".into(),
            kind: Some(FunctionKind::Pf),
            sriov_totalvfs: Some(8),
            card: Some("dsn:b".into()),
            ..Function::default()
        });
        let mut a = Assignments::default();
        a.replace(ObjectList {
            revision: 1,
            items: vec![function_object(
                "web",
                json!({"type": "net", "pf": "pf0", "vf": 0}),
                json!({}),
            )],
        });
        let r = resolve(&a, &inv);
        assert!(r.exposed.is_empty());
        assert!(r.unresolved[0].reason.contains("2 DPU cards"));
    }

    #[test]
    fn watch_events_update_the_set() {
        let mut a = Assignments::default();
        let obj = function_object(
            "web",
            json!({"type": "net", "pf": "pf0", "vf": 0}),
            json!({}),
        );
        let ev = |type_, object: &Object| Event {
            revision: 7,
            type_,
            object: object.clone(),
        };
        assert!(a.apply(ev(EventType::Added, &obj)));
        assert!(!a.apply(ev(EventType::Status, &obj)), "same object twice");
        assert_eq!(a.ids(), BTreeSet::from(["web"]));
        assert!(a.apply(ev(EventType::Deleted, &obj)));
        assert!(a.is_empty());
    }
}
