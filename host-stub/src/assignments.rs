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
            Err(why) => out.unresolved.push(Unresolved {
                id: id.clone(),
                reason: why.to_string(),
            }),
        }
    }
    out
}

/// Why an assigned function is not exposed (yet); its text is the
/// `reason` the inventory report carries to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Unresolvable {
    #[error("spec is not a function spec: {0}")]
    Spec(serde_json::Error),
    #[error("{pci} has no IOMMU group (is the IOMMU on?)")]
    NoIommuGroup { pci: String },
    #[error("{pci} has no netdev yet (driver {driver:?} not bound or still probing)")]
    NoNetdev { pci: String, driver: Option<String> },
    #[error(
        "spec.rdma: {pci} ({netdev}) has no RDMA device yet (RoCE not enabled on it, or no software RDMA device such as rxe added to the netdev)"
    )]
    NoRdmaDevice { pci: String, netdev: String },
    #[error(
        "spec.rdma: RDMA device {device} of {pci} has no uverbs character device (is ib_uverbs loaded?)"
    )]
    NoUverbs { pci: String, device: String },
    #[error("{pci} has no block device yet (no namespace attached?)")]
    NoBlockDevice { pci: String },
    #[error("host_pci_address {0} is not a DPU function on this host")]
    NotOnThisHost(String),
    #[error("pf {0:?} is not pfN")]
    PfNotIndexed(String),
    #[error(
        "{cards} DPU cards on this host and no status.host_pci_address: cannot tell which {pf} is meant"
    )]
    WhichCard { cards: usize, pf: String },
    #[error("{pf} not found: {found} SR-IOV PFs on this host")]
    NoSuchPf { pf: String, found: usize },
    #[error("{0}: no VF index in spec or status yet")]
    NoVfIndex(String),
    #[error("VF {vf} of {pf} ({pci}) does not exist (sriov_numvfs = {numvfs})")]
    NoSuchVf {
        vf: u32,
        pf: String,
        pci: String,
        numvfs: u32,
    },
}

fn resolve_one(
    object: &Object,
    functions: &[Function],
) -> Result<(ExposedFunction, bool), Unresolvable> {
    let spec: FunctionSpec =
        serde_json::from_value(object.spec.clone()).map_err(Unresolvable::Spec)?;
    let f = find_function(object, &spec, functions)?;
    let vfio = spec.attach == Some(Attach::Vfio);
    let exposure = if vfio {
        let group = f.iommu_group.ok_or_else(|| Unresolvable::NoIommuGroup {
            pci: f.pci_address.clone(),
        })?;
        Exposure::Vfio { iommu_group: group }
    } else {
        match spec.type_ {
            FunctionType::Net => Exposure::Netdev {
                host_interface: f.netdevs.first().cloned().ok_or_else(|| {
                    Unresolvable::NoNetdev {
                        pci: f.pci_address.clone(),
                        driver: f.driver.clone(),
                    }
                })?,
            },
            FunctionType::Nvme | FunctionType::VirtioBlk => Exposure::Block {
                device: f.block_devices.first().cloned().ok_or_else(|| {
                    Unresolvable::NoBlockDevice {
                        pci: f.pci_address.clone(),
                    }
                })?,
            },
        }
    };
    // A VM's function (vfio) carries its RDMA capability to the guest's own
    // driver; a container's needs the host's verbs devices, and without them
    // it would get a function that cannot do what its spec asks.
    let rdma = match &exposure {
        Exposure::Netdev { host_interface } if spec.rdma => {
            let rdma = f.rdma.clone().ok_or_else(|| Unresolvable::NoRdmaDevice {
                pci: f.pci_address.clone(),
                netdev: host_interface.clone(),
            })?;
            if rdma.uverbs.is_none() {
                return Err(Unresolvable::NoUverbs {
                    pci: f.pci_address.clone(),
                    device: rdma.device,
                });
            }
            Some(rdma)
        }
        _ => None,
    };
    Ok((
        ExposedFunction {
            id: object.id.clone(),
            pci_address: f.pci_address.clone(),
            exposure,
            rdma,
        },
        vfio,
    ))
}

fn find_function<'a>(
    object: &Object,
    spec: &FunctionSpec,
    functions: &'a [Function],
) -> Result<&'a Function, Unresolvable> {
    let pci = |f: &&Function| f.kind() != FunctionKind::Sf;
    if let Some(addr) = object.status.facts.host_pci_address.as_deref() {
        return functions
            .iter()
            .filter(pci)
            .find(|f| f.pci_address == addr)
            .ok_or_else(|| Unresolvable::NotOnThisHost(addr.to_string()));
    }
    let pf = find_pf(spec, functions)?;
    // The VF the agent allocated is a typed status fact (`status.vf`).
    let vf = spec.vf.or(object.status.facts.vf);
    let Some(vf) = vf else {
        return Err(Unresolvable::NoVfIndex(object.id.clone()));
    };
    functions
        .iter()
        .find(|f| {
            f.kind() == FunctionKind::Vf
                && f.physfn.as_deref() == Some(pf.pci_address.as_str())
                && f.vf_index == Some(vf)
        })
        .ok_or_else(|| Unresolvable::NoSuchVf {
            vf,
            pf: spec.pf.to_string(),
            pci: pf.pci_address.clone(),
            numvfs: pf.sriov_numvfs.unwrap_or(0),
        })
}

/// The SR-IOV PF `spec.pf` (`pfN`) names on this host: the N-th SR-IOV PF
/// by address of the only DPU card.
fn find_pf<'a>(
    spec: &FunctionSpec,
    functions: &'a [Function],
) -> Result<&'a Function, Unresolvable> {
    let pf_index: usize = spec
        .pf
        .strip_prefix("pf")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Unresolvable::PfNotIndexed(spec.pf.to_string()))?;
    let mut pfs: Vec<&Function> = functions
        .iter()
        .filter(|f| f.kind() == FunctionKind::Pf && f.sriov_totalvfs.is_some())
        .collect();
    pfs.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
    let cards: BTreeSet<Option<&str>> = pfs.iter().map(|f| f.card.as_deref()).collect();
    if cards.len() > 1 {
        return Err(Unresolvable::WhichCard {
            cards: cards.len(),
            pf: spec.pf.to_string(),
        });
    }
    pfs.get(pf_index)
        .copied()
        .ok_or_else(|| Unresolvable::NoSuchPf {
            pf: spec.pf.to_string(),
            found: pfs.len(),
        })
}

/// What the agent's assignments need of one PF's SR-IOV: VFs `0..needed`
/// (the highest VF index the agent gave a function on it, plus one), beside
/// what the PF has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfCount {
    /// The PF's PCI address.
    pub pf_pci: String,
    pub needed: u32,
    pub current: u32,
    pub total: u32,
}

/// What to do about one PF's `sriov_numvfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumVfs {
    /// Write `needed` (through 0 when the PF already has VFs, as the kernel
    /// requires: none of them is in use).
    Write { pf_pci: String, from: u32, to: u32 },
    /// It cannot be done now, and why (for the log and the operator).
    Blocked { pf_pci: String, why: String },
}

/// The VF counts the assignments need, per PF, for the PFs that have fewer.
/// The number is the agent's (its VF allocation), the stub decides none.
pub fn vf_counts(assignments: &Assignments, functions: &[Function]) -> Vec<VfCount> {
    let mut needed: BTreeMap<&str, (u32, &Function)> = BTreeMap::new();
    for object in assignments.objects.values() {
        let Ok(spec) = serde_json::from_value::<FunctionSpec>(object.spec.clone()) else {
            continue;
        };
        let (Ok(pf), Some(vf)) = (
            find_pf(&spec, functions),
            spec.vf.or(object.status.facts.vf),
        ) else {
            continue;
        };
        let want = vf.saturating_add(1);
        let e = needed.entry(pf.pci_address.as_str()).or_insert((0, pf));
        e.0 = e.0.max(want);
    }
    needed
        .into_values()
        .map(|(needed, pf)| VfCount {
            pf_pci: pf.pci_address.clone(),
            needed,
            current: pf.sriov_numvfs.unwrap_or(0),
            total: pf.sriov_totalvfs.unwrap_or(0),
        })
        .filter(|c| c.current < c.needed)
        .collect()
}

/// The `sriov_numvfs` change for `count`: raised to what the assignments
/// need, never lowered (VFs the agent released may be in use by the host's
/// operator). A PF that has VFs already changes only through 0, which
/// removes all of them: done only when none is exposed (`in_use`: PCI
/// addresses of exposed or vfio-bound functions), else blocked with the
/// reason. More than `sriov_totalvfs` is blocked.
pub fn numvfs_change(count: &VfCount, functions: &[Function], in_use: &BTreeSet<String>) -> NumVfs {
    let pf_pci = count.pf_pci.clone();
    if count.needed > count.total {
        return NumVfs::Blocked {
            pf_pci,
            why: format!(
                "the agent assigned VF {} but the PF has only {} (sriov_totalvfs)",
                count.needed - 1,
                count.total
            ),
        };
    }
    if count.current > 0 {
        let busy = functions
            .iter()
            .filter(|f| f.physfn.as_deref() == Some(count.pf_pci.as_str()))
            .filter(|f| in_use.contains(&f.pci_address))
            .count();
        if busy > 0 {
            return NumVfs::Blocked {
                pf_pci,
                why: format!(
                    "the assignments need {} VFs, the PF has {}; the kernel changes sriov_numvfs only through 0, which would remove {busy} VF(s) in use: waiting until they are released",
                    count.needed, count.current
                ),
            };
        }
    }
    NumVfs::Write {
        pf_pci,
        from: count.current,
        to: count.needed,
    }
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

    /// The VF count a PF needs is the agent's: its highest assigned VF
    /// index plus one (from spec or status). It is raised, never lowered;
    /// through 0 only when no VF of the PF is in use; never past
    /// `sriov_totalvfs`.
    #[test]
    fn vf_counts_come_from_the_agents_allocation() {
        let mut a = Assignments::default();
        a.replace(ObjectList {
            revision: 1,
            items: vec![
                function_object(
                    "web",
                    json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"}),
                    json!({"vf": 3}),
                ),
                function_object(
                    "db",
                    json!({"type": "net", "pf": "pf0", "vf": 1, "mac": "02:00:00:00:00:02"}),
                    json!({}),
                ),
                // No VF yet: needs nothing.
                function_object("new", json!({"type": "net", "pf": "pf0"}), json!({})),
            ],
        });
        let functions = inventory();
        let counts = vf_counts(&a, &functions);
        assert_eq!(
            counts,
            vec![VfCount {
                pf_pci: "0000:03:00.0".into(),
                needed: 4,
                current: 2,
                total: 8
            }]
        );
        // VF 1 (0000:03:00.3) is exposed: going through 0 would remove it.
        let busy = BTreeSet::from(["0000:03:00.3".to_string()]);
        assert!(matches!(
            numvfs_change(&counts[0], &functions, &busy),
            NumVfs::Blocked { ref why, .. } if why.contains("1 VF(s) in use")
        ));
        assert_eq!(
            numvfs_change(&counts[0], &functions, &BTreeSet::new()),
            NumVfs::Write {
                pf_pci: "0000:03:00.0".into(),
                from: 2,
                to: 4
            }
        );
        let too_many = VfCount {
            needed: 9,
            ..counts[0].clone()
        };
        assert!(matches!(
            numvfs_change(&too_many, &functions, &BTreeSet::new()),
            NumVfs::Blocked { ref why, .. } if why.contains("sriov_totalvfs")
        ));
        // Enough VFs already: nothing to do.
        let mut enough = Assignments::default();
        enough.replace(ObjectList {
            revision: 1,
            items: vec![function_object(
                "db",
                json!({"type": "net", "pf": "pf0", "vf": 1, "mac": "02:00:00:00:00:02"}),
                json!({}),
            )],
        });
        assert!(vf_counts(&enough, &functions).is_empty());
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
                    rdma: None,
                },
                ExposedFunction {
                    id: "web".into(),
                    pci_address: "0000:03:00.3".into(),
                    exposure: Exposure::Netdev {
                        host_interface: "ens1f0v1".into()
                    },
                    rdma: None,
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

    /// A function whose VF the agent allocated (no `spec.vf`) is found by
    /// the `vf` its status reports, before any host report placed it.
    #[test]
    fn resolves_by_the_vf_the_agent_allocated() {
        let mut a = Assignments::default();
        a.replace(ObjectList {
            revision: 6,
            items: vec![function_object(
                "db",
                json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:03"}),
                json!({"vf": 0, "representor": "pf0vf0"}),
            )],
        });
        let r = resolve(&a, &inventory());
        assert!(r.unresolved.is_empty(), "{:?}", r.unresolved);
        assert_eq!(r.exposed[0].pci_address, "0000:03:00.2");
    }

    /// `spec.rdma` carries the function's RDMA device into the exposure;
    /// without a device, or without its uverbs node, the function waits
    /// (unresolved, naming `spec.rdma`); a function not asking for RDMA
    /// gets none even where the host has a device; vfio never carries it.
    #[test]
    fn rdma_functions_carry_their_verbs_device() {
        use crate::discover::RdmaDevice;
        let rxe = RdmaDevice {
            device: "rxe0".into(),
            uverbs: Some("/dev/infiniband/uverbs0".into()),
            rdma_cm: None,
        };
        let mut inv = inventory();
        inv[2].rdma = Some(rxe.clone());
        let mut a = Assignments::default();
        a.replace(ObjectList {
            revision: 1,
            items: vec![
                function_object(
                    "rdma",
                    json!({"type": "net", "pf": "pf0", "vf": 1, "rdma": true}),
                    json!({}),
                ),
                function_object(
                    "plain",
                    json!({"type": "net", "pf": "pf0", "vf": 1}),
                    json!({}),
                ),
                function_object(
                    "vm",
                    json!({"type": "net", "pf": "pf0", "vf": 1, "rdma": true, "attach": "vfio"}),
                    json!({}),
                ),
                function_object(
                    "none",
                    json!({"type": "net", "pf": "pf0", "vf": 0, "rdma": true}),
                    json!({}),
                ),
            ],
        });
        let r = resolve(&a, &inv);
        let by_id = |id: &str| r.exposed.iter().find(|f| f.id == id).cloned();
        assert_eq!(by_id("rdma").unwrap().rdma, Some(rxe.clone()));
        assert_eq!(by_id("plain").unwrap().rdma, None);
        assert_eq!(by_id("vm").unwrap().rdma, None);
        assert!(by_id("none").is_none());
        assert_eq!(r.unresolved.len(), 1, "{:?}", r.unresolved);
        assert!(
            r.unresolved[0]
                .reason
                .starts_with("spec.rdma: 0000:03:00.2 (ens1f0v0) has no RDMA device"),
            "{:?}",
            r.unresolved
        );

        inv[2].rdma = Some(RdmaDevice {
            uverbs: None,
            ..rxe
        });
        let r = resolve(&a, &inv);
        assert!(by_id_absent(&r, "rdma"));
        assert!(
            r.unresolved
                .iter()
                .any(|u| u.id == "rdma" && u.reason.contains("ib_uverbs")),
            "{:?}",
            r.unresolved
        );
    }

    fn by_id_absent(r: &Resolution, id: &str) -> bool {
        r.exposed.iter().all(|f| f.id != id)
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
