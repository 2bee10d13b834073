//! The functions controller: makes each `Function` through a
//! [`FunctionBackend`] (the veth simulator in dev, SR-IOV VFs in run) and
//! reports `vf`, `representor` and `host_device` in its status, and for a
//! function assigned to a host (`spec.host`) `host_pci_address` and
//! `host_device` as that host's stub last reported them (see
//! [`host_placement`]; re-read every [`HOST_POLL`]).
//!
//! - **VF index / SF number** (a typed [`Slot`]: VF 3 and SF 3 are
//!   different slots of a PF): `spec.vf` / `spec.sf` when given, else the
//!   one already in status, else the lowest number free on that `pf` among
//!   all functions (any tenant: a PF is the device's), inside the tenant's
//!   granted `vfs` / `sfs` range when it has one. Slots handed out but not
//!   yet in a stored status are held in memory so two reconciles cannot
//!   pick the same; a named slot another function holds fails the function
//!   (`VfInUse` / `SfInUse`) without naming another tenant's function. A
//!   kernel that refuses to add an SF port with `EOPNOTSUPP` (a driver
//!   without sub-functions, e.g. netdevsim) fails the function
//!   (`KernelRefused`, the kernel's reason) instead of retrying it.
//! - **Tenant side** (simulator only): the Port whose `function` is this
//!   function gives the MAC and addresses, its Network the prefix length. A
//!   Port change requeues the Port's tenant, not this function, so a net
//!   function on the simulator is looked at again every
//!   [`PORT_POLL`] (2 s): a new or changed Port reaches `eth0` within that.
//!   Unchanged input is not re-applied more often than every
//!   [`REAPPLY_EVERY`], which also repairs hand-made damage.
//! - **Orphans**: what the backend reports as made for a function id that
//!   no longer exists is removed (checked at most every [`REAPPLY_EVERY`]).
//!   The simulator is scoped by state directory, so several dev agents on
//!   one host never remove each other's functions (their ids must still
//!   differ: namespace names are per host).
//! - nvme/virtio-blk functions: with SNAP as the storage backend the
//!   storage path emulates them (their controller is made with the volume
//!   attached), so they follow that volume: `Pending` (`AwaitingVolume`)
//!   until one is attached, `Ready` when it is ([`emulated_status`]).
//!   Without SNAP they stay `Pending` with `Programmed=False`
//!   (`NoEmulation`); never a fake Ready.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, HostDevice, ObjectKey, Phase, Status, WriteOutcome};
use dpu_api::report::{FunctionReport, RdmaReport};
use dpu_api::spec::{Carve, FunctionSpec, FunctionType as ApiFunctionType, RefField, Slot, Spec};
use net_offload::functions::{
    Applied, FunctionBackend, FunctionDesired, FunctionType, Mac, TenantAddressing, plan,
};

use super::set_programmed;
use super::{Context, Controller, Outcome, Reason, ReconcileError, Reconciling, condition};
use crate::error_chain;
use crate::store::{StoredObject, pf_slot_space};

/// How often a simulated net function is looked at again for Port changes.
pub const PORT_POLL: Duration = Duration::from_secs(2);
/// A function assigned to a host is looked at again this often for the
/// host stub's latest report.
pub const HOST_POLL: Duration = Duration::from_secs(2);
/// Unchanged desired state is re-applied (and orphans swept) this often.
pub const REAPPLY_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct LastApplied {
    desired: FunctionDesired,
    applied: Applied,
    at: Instant,
}

#[derive(Debug)]
pub struct Functions {
    backend: Arc<dyn FunctionBackend>,
    /// Who owns nvme and virtio-blk functions: with a storage backend that
    /// presents them, their status follows the volume attached to them
    /// ([`emulated_status`]) instead of the functions backend.
    storage: StorageRole,
    /// The VFs and SFs handed out by this process.
    slots: Mutex<Held>,
    last: Mutex<HashMap<String, LastApplied>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// What the configured storage backend makes of nvme / virtio-blk
/// functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageRole {
    /// Nothing presents them: they stay Pending (`NoEmulation`).
    #[default]
    None,
    /// SNAP emulates an NVMe or virtio-blk controller on the function's VF,
    /// made by the volumes controller with the volume attached to it.
    Emulated,
    /// An NVMe-oF target (kernel nvmet, SPDK nvmf): an nvme function is the
    /// host's initiator identity (the host NQN its volume admits), Ready
    /// when that volume's export exists; virtio-blk has no such form.
    Fabric,
}

impl StorageRole {
    /// Whether this role presents functions of `type_`.
    pub fn presents(self, type_: ApiFunctionType) -> bool {
        match (self, type_) {
            (_, ApiFunctionType::Net) | (StorageRole::None, _) => false,
            (StorageRole::Emulated, _) => true,
            (StorageRole::Fabric, t) => t == ApiFunctionType::Nvme,
        }
    }
}

impl Functions {
    /// nvme and virtio-blk functions are the storage path's, as `role` says,
    /// rather than refused as `NoEmulation`.
    pub fn with_storage(mut self, role: StorageRole) -> Self {
        self.storage = role;
        self
    }

    pub fn new(backend: Arc<dyn FunctionBackend>) -> Self {
        Functions {
            backend,
            storage: StorageRole::None,
            slots: Mutex::new(Held::default()),
            last: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(None),
        }
    }
}

/// The VFs and SFs handed out by this process: by function, and by (slot
/// space, slot), so that "who else holds this slot" does not walk every
/// function (a walk per reconcile made a restart with 10 000 functions
/// quadratic).
#[derive(Debug, Default)]
struct Held {
    /// function id → (pf as its spec names it, slot).
    by_id: HashMap<String, (String, Slot)>,
    /// ([`pf_slot_space`], slot) → the functions holding it here.
    by_slot: HashMap<(String, Slot), BTreeSet<String>>,
}

impl Held {
    fn get(&self, id: &str) -> Option<&(String, Slot)> {
        self.by_id.get(id)
    }

    fn insert(&mut self, id: &str, pf: &str, slot: Slot) {
        if self.by_id.get(id) == Some(&(pf.to_string(), slot)) {
            return;
        }
        self.remove(id);
        self.by_id.insert(id.to_string(), (pf.to_string(), slot));
        self.by_slot
            .entry((pf_slot_space(pf), slot))
            .or_default()
            .insert(id.to_string());
    }

    fn remove(&mut self, id: &str) {
        let Some((pf, slot)) = self.by_id.remove(id) else {
            return;
        };
        let at = (pf_slot_space(&pf), slot);
        if let Some(ids) = self.by_slot.get_mut(&at) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_slot.remove(&at);
            }
        }
    }

    /// A function other than `except` holding `slot` in slot space `space`.
    fn holder(&self, space: &str, slot: Slot, except: &str) -> Option<String> {
        self.by_slot
            .get(&(space.to_string(), slot))?
            .iter()
            .find(|id| *id != except)
            .cloned()
    }

    /// The numbers of `carve` that functions other than `except` hold in
    /// slot space `space`.
    fn taken(&self, space: &str, carve: Carve, except: &str) -> BTreeSet<u32> {
        self.by_slot
            .iter()
            .filter(|((sp, slot), ids)| {
                sp == space && slot.carve() == carve && ids.iter().any(|id| id != except)
            })
            .map(|((_, slot), _)| slot.number())
            .collect()
    }
}

fn function_spec(obj: &StoredObject) -> Result<FunctionSpec, ReconcileError> {
    match &obj.spec {
        Spec::Function(f) => Ok(f.clone()),
        other => Err(ReconcileError {
            reason: Reason::InvalidSpec,
            message: format!("function {} holds a {} spec", obj.id, other.kind().path()),
        }),
    }
}

/// The slot a function's status records (its VF, or its SF).
fn status_slot(obj: &StoredObject) -> Option<Slot> {
    let facts = &obj.status.facts;
    facts.vf.map(Slot::Vf).or(facts.sf.map(Slot::Sf))
}

/// The slot handed out as the backend's typed slot.
fn backend_slot(slot: Slot) -> net_offload::functions::Slot {
    match slot {
        Slot::Vf(n) => net_offload::functions::Slot::Vf(n),
        Slot::Sf(n) => net_offload::functions::Slot::Sf(n),
    }
}

/// The lowest index not in `taken`.
pub fn lowest_free(taken: &BTreeSet<u32>) -> u32 {
    (0..).find(|i| !taken.contains(i)).unwrap_or(u32::MAX)
}

/// Where a function is carved: the VF or SF its spec names, else the one
/// its status records, else newly allocated (of the spec's carve).
/// `Err` names the function already holding a requested slot.
fn slot_for(
    ctx: &Context,
    held: &Held,
    obj: &StoredObject,
    spec: &FunctionSpec,
) -> Result<Slot, SlotError> {
    let carve = spec.carve();
    // Slots other functions hold (recorded in their status: the store's PF
    // index; or allocated in this process), and slots they asked for
    // without holding them yet.
    // Slots are numbered per PF slot space: `pf0` and `c1pf0` may be one PF.
    let space = pf_slot_space(spec.pf.as_str());
    let in_process = |slot: Slot| held.holder(&space, slot, &obj.id);
    let own = spec
        .requested_slot()
        .or_else(|| status_slot(obj).filter(|s| s.carve() == carve))
        .or_else(|| {
            held.get(&obj.id)
                .filter(|(pf, s)| *pf == spec.pf && s.carve() == carve)
                .map(|(_, s)| *s)
        });
    match own {
        Some(slot) => {
            let claims = ctx.store.slot_claims(&spec.pf, slot, &obj.id);
            if let Some(holder) = claims.holder.or_else(|| in_process(slot)) {
                return Err(SlotError::InUse(holder));
            }
            // The lowest id among those asking wins a slot nobody holds.
            match claims.first_asker {
                Some(first) if spec.requested_slot() == Some(slot) && first < obj.id => {
                    Err(SlotError::InUse(first))
                }
                _ => Ok(slot),
            }
        }
        None => {
            // A tenant with a range in its grant draws from that range.
            let (lo, hi) = granted_range(ctx, &obj.tenant, carve).unwrap_or((0, u32::MAX - 1));
            let taken_here = held.taken(&space, carve, &obj.id);
            ctx.store
                .lowest_unclaimed(&spec.pf, carve, (lo, hi), &obj.id, &taken_here)
                .map(|n| Slot::new(carve, n))
                .ok_or(SlotError::NoneFree { carve, lo, hi })
        }
    }
}

/// Why a function has no slot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotError {
    /// The requested slot is held by this function.
    InUse(String),
    /// Every number of the tenant's granted range is taken.
    NoneFree { carve: Carve, lo: u32, hi: u32 },
}

/// The VF (`vfs`) or SF (`sfs`) range of a tenant's function grant, if it
/// sets one.
fn granted_range(ctx: &Context, tenant: &str, carve: Carve) -> Option<(u32, u32)> {
    let t = ctx.store.get(&ObjectKey::new(Kind::Tenant, tenant))?;
    let grant = t.spec.as_tenant()?.grants.as_ref()?.functions.as_ref()?;
    let range = match carve {
        Carve::Vf => grant.vfs.as_deref()?,
        Carve::Sf => grant.sfs.as_deref()?,
    };
    dpu_api::validate::parse_index_range("", range, u32::MAX - 1).ok()
}

/// A function's status when it gets no slot: Failed, with why.
fn no_slot_status(
    ctx: &Context,
    obj: &StoredObject,
    spec: &FunctionSpec,
    err: SlotError,
) -> Status {
    let mut status = obj.status.clone();
    status.phase = Phase::Failed;
    let (reason, message) = match err {
        SlotError::InUse(holder) => {
            // Another tenant's function is not named (TENANCY.md
            // invariant 5).
            let same_tenant = ctx
                .store
                .get(&ObjectKey::new(Kind::Function, holder.clone()))
                .is_some_and(|h| h.tenant == obj.tenant);
            let who = if same_tenant {
                format!("function {holder}'s")
            } else {
                "held by another function".to_string()
            };
            let slot = spec
                .requested_slot()
                .map(|s| s.to_string())
                .unwrap_or_default();
            match spec.carve() {
                Carve::Vf => (
                    Reason::VfInUse,
                    format!(
                        "{} {slot} is already {who}; choose another spec.vf or leave it out to have one allocated",
                        spec.pf
                    ),
                ),
                Carve::Sf => (
                    Reason::SfInUse,
                    format!(
                        "{} {slot} is already {who}; choose another spec.sf or leave it out to have one allocated",
                        spec.pf
                    ),
                ),
            }
        }
        SlotError::NoneFree { carve, lo, hi } => match carve {
            Carve::Vf => (
                Reason::NoFreeVf,
                format!(
                    "every VF of {} in the tenant's granted range {lo}-{hi} is taken",
                    spec.pf
                ),
            ),
            Carve::Sf => (
                Reason::NoFreeSf,
                format!(
                    "every SF number of {} in the tenant's granted range {lo}-{hi} is taken",
                    spec.pf
                ),
            ),
        },
    };
    status.set_condition(condition(
        "Programmed",
        ConditionStatus::False,
        reason,
        message,
    ));
    status
}

/// The tenant side of a function: its Port's MAC and addresses with the
/// prefix length of the Port's Network. `None` while no Port is attached.
pub fn tenant_addressing(ctx: &Context, tenant: &str, function: &str) -> Option<TenantAddressing> {
    let port = ctx
        .store
        .referring(Kind::Port, tenant, RefField::Function, function)
        .into_iter()
        .filter(|p| !p.deleting)
        .find_map(|p| match &p.spec {
            Spec::Port(spec) if spec.function == function => Some(spec.clone()),
            _ => None,
        })?;
    let mac = Mac(port.mac.0);
    let network = ctx
        .store
        .get(&ObjectKey::new(Kind::Network, port.network.clone()));
    let prefix = network
        .as_ref()
        .and_then(|n| Some(n.spec.as_network()?.cidr.prefix_len()))
        .unwrap_or(32);
    let addresses = port
        .ips
        .iter()
        .map(|ip| (IpAddr::V4(*ip), prefix))
        .collect();
    Some(TenantAddressing { mac, addresses })
}

fn desired(
    obj: &StoredObject,
    spec: &FunctionSpec,
    slot: Slot,
    tenant: Option<TenantAddressing>,
) -> Result<FunctionDesired, ReconcileError> {
    let mac = spec.mac.map(|m| Mac(m.0));
    Ok(FunctionDesired {
        id: obj.id.clone(),
        type_: match spec.type_ {
            ApiFunctionType::Net => FunctionType::Net,
            ApiFunctionType::Nvme => FunctionType::Nvme,
            ApiFunctionType::VirtioBlk => FunctionType::VirtioBlk,
        },
        pf: spec.pf.to_string(),
        slot: backend_slot(slot),
        mac,
        vlan: spec.vlan,
        max_tx_rate_mbps: spec.max_tx_rate_mbps,
        trust: spec.trust.unwrap_or(false),
        spoof_check: spec.spoof_check.unwrap_or(true),
        rdma: spec.rdma,
        tenant,
    })
}

/// Where the host sees a function, from its host stub's last report: the
/// PCI address and the netdev or block device (if it has one yet).
///
/// `pfN` is the N-th physical function (by address) of the function's class
/// (`pf` for net, `nvme`, `virtio-blk`) and the function is that PF's VF with
/// index `vf`. With functions of two cards in the report the PF cannot be
/// told apart and nothing is recorded, never guessed.
pub fn host_placement(
    devices: &[HostDevice],
    spec: &FunctionSpec,
    vf: u32,
) -> Option<(String, Option<String>)> {
    let f = host_function(devices, spec, vf)?;
    Some((
        f.pci_address.clone(),
        f.netdev.clone().or_else(|| f.block_device.clone()),
    ))
}

/// The host's device of a function (see [`host_placement`]).
pub fn host_function<'a>(
    devices: &'a [HostDevice],
    spec: &FunctionSpec,
    vf: u32,
) -> Option<&'a HostDevice> {
    let class = match spec.type_ {
        ApiFunctionType::Net => "pf",
        ApiFunctionType::Nvme => "nvme",
        ApiFunctionType::VirtioBlk => "virtio-blk",
    };
    let pf_index: usize = spec.pf.strip_prefix("pf")?.parse().ok()?;
    let mut pfs: Vec<&HostDevice> = devices
        .iter()
        .filter(|d| d.kind.as_deref() == Some("pf") && d.class == class)
        .collect();
    pfs.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
    let cards: BTreeSet<Option<&str>> = pfs.iter().map(|d| d.card.as_deref()).collect();
    if cards.len() > 1 {
        return None;
    }
    let pf = pfs.get(pf_index)?;
    devices
        .iter()
        .find(|d| d.physfn.as_deref() == Some(pf.pci_address.as_str()) && d.vf_index == Some(vf))
}

impl Functions {
    async fn sweep_orphans(&self, ctx: &Context) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < REAPPLY_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let observed = match self.backend.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(backend = self.backend.name(), error = %error_chain(&e), "cannot list what the functions backend made; orphans are not swept this time");
                return;
            }
        };
        let live: BTreeSet<String> = ctx
            .store
            .list(Kind::Function, None)
            .iter()
            .map(|o| o.id.clone())
            .collect();
        let orphans: BTreeSet<String> = observed
            .into_iter()
            .filter_map(|o| o.owner)
            .filter(|owner| !live.contains(owner))
            .collect();
        for id in orphans {
            tracing::info!(function = %id, backend = self.backend.name(), "removing what was made for a function that no longer exists");
            if let Err(e) = self.backend.remove(&id, None).await {
                tracing::warn!(function = %id, error = %error_chain(&e), "cannot remove an orphaned function");
            }
        }
    }

    async fn reconcile_live(
        &self,
        ctx: &Context,
        obj: &StoredObject,
    ) -> Result<Outcome, ReconcileError> {
        let spec = function_spec(obj)?;
        let status = obj.status.clone();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match slot_for(ctx, &slots, obj, &spec) {
                Ok(slot) => {
                    slots.insert(&obj.id, spec.pf.as_str(), slot);
                    slot
                }
                Err(err) => {
                    return Ok(Outcome {
                        status: no_slot_status(ctx, obj, &spec, err),
                        finalized: false,
                        requeue_after: None,
                    });
                }
            }
        };
        if self.storage.presents(spec.type_) {
            let volume = presenting_volume(ctx, &obj.tenant, &obj.id);
            return Ok(Outcome {
                status: emulated_status(status, &spec, slot, self.storage, volume.as_ref()),
                finalized: false,
                // A volume's progress is not this object's event.
                requeue_after: Some(HOST_POLL),
            });
        }
        let tenant = if spec.type_ == ApiFunctionType::Net {
            tenant_addressing(ctx, &obj.tenant, &obj.id)
        } else {
            None
        };
        let want = desired(obj, &spec, slot, tenant)?;
        let cached = {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.get(&obj.id)
                .filter(|l| l.desired == want && l.at.elapsed() < REAPPLY_EVERY)
                .map(|l| l.applied.clone())
        };
        let applied = match cached {
            Some(a) => a,
            None => {
                let applied = match self.backend.apply(&want).await {
                    Ok(applied) => applied,
                    // The driver cannot make sub-functions: retrying will
                    // not change that; the function fails with its reason.
                    Err(e) if is_sf_add_refusal(&e) => {
                        return Ok(Outcome {
                            status: refused_status(
                                status,
                                slot,
                                format!("{} backend: {}", self.backend.name(), error_chain(&e)),
                            ),
                            finalized: false,
                            requeue_after: None,
                        });
                    }
                    Err(e) => {
                        return Err(ReconcileError {
                            reason: Reason::BackendError,
                            message: format!(
                                "{} backend: {}",
                                self.backend.name(),
                                error_chain(&e)
                            ),
                        });
                    }
                };
                self.last.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    obj.id.clone(),
                    LastApplied {
                        desired: want.clone(),
                        applied: applied.clone(),
                        at: Instant::now(),
                    },
                );
                applied
            }
        };
        self.sweep_orphans(ctx).await;

        let ready = match &applied {
            Applied::Ready { representor, .. } => self.backend.ready_message(&want, representor),
            _ => String::new(),
        };
        let hosts = ctx.store.hosts();
        let report = spec
            .host
            .as_deref()
            .and_then(|host| hosts.iter().find(|r| r.host == host));
        let status = programmed_status(
            status,
            &spec,
            slot,
            &applied,
            ready,
            self.backend.switches_roce(),
            report.map(|r| r.devices.as_slice()),
        );
        let mut requeue_after =
            (self.backend.plays_tenant() && want.type_ == FunctionType::Net).then_some(PORT_POLL);
        if spec.host.is_some() {
            // A host report is not an object event: look again for the
            // host's view (VF count, driver, netdev changes).
            requeue_after = Some(requeue_after.map_or(HOST_POLL, |d| d.min(HOST_POLL)));
        }
        Ok(Outcome {
            status,
            finalized: false,
            requeue_after,
        })
    }

    async fn tear_down(&self, obj: &StoredObject) -> Result<Outcome, ReconcileError> {
        let spec = function_spec(obj).ok();
        // Only the VF this function held: its allocation in this process or
        // the one its status records. A requested `spec.vf` it never got
        // (VfInUse) is another function's and is not touched (TENANCY.md
        // invariant 3).
        let held = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&obj.id)
            .cloned();
        let slot = held.or_else(|| {
            spec.as_ref()
                .zip(status_slot(obj))
                .map(|(s, slot)| (s.pf.to_string(), slot))
        });
        self.backend
            .remove(
                &obj.id,
                slot.as_ref()
                    .map(|(pf, slot)| (pf.as_str(), backend_slot(*slot))),
            )
            .await
            .map_err(|e| ReconcileError {
                reason: Reason::TeardownFailed,
                message: format!("{} backend: {}", self.backend.name(), error_chain(&e)),
            })?;
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&obj.id);
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&obj.id);
        Ok(Outcome::finalized(obj.status.clone()))
    }
}

/// The status of a function once its backend was asked: a pure function of
/// the previous status, the spec, the VF or SF it holds, what the backend
/// reached (`ready`: the backend's account of a Ready function; `roce`:
/// whether the backend switches RoCE itself, so a Ready apply of an RDMA
/// function turned it on) and the devices its host reports (`None`: no
/// host in the spec, or no report).
pub fn programmed_status(
    mut status: Status,
    spec: &FunctionSpec,
    slot: Slot,
    applied: &Applied,
    ready: String,
    roce: bool,
    host_devices: Option<&[HostDevice]>,
) -> Status {
    (status.facts.vf, status.facts.sf) = match slot {
        Slot::Vf(vf) => (Some(vf), None),
        Slot::Sf(sf) => (None, Some(sf)),
    };
    match applied {
        Applied::Ready {
            representor,
            host_device,
        } => {
            status.facts.representor = Some(representor.clone());
            status.facts.host_device = host_device.clone();
            set_programmed(
                &mut status,
                Phase::Ready,
                ConditionStatus::True,
                Reason::Programmed,
                ready,
            );
        }
        Applied::NoRepresentor { expected } => {
            status.facts.representor = None;
            set_programmed(
                &mut status,
                Phase::Degraded,
                ConditionStatus::False,
                Reason::RepresentorMissing,
                format!(
                    "{} {slot} is configured but its representor {expected} was not found; is the eswitch in switchdev mode and the representor pattern right?",
                    spec.pf
                ),
            );
        }
        Applied::Unsupported { reason, message } => {
            set_programmed(
                &mut status,
                Phase::Pending,
                ConditionStatus::False,
                Reason::from(*reason),
                message.clone(),
            );
        }
    }
    let backend_device = match applied {
        Applied::Ready { host_device, .. } => host_device.clone(),
        _ => None,
    };
    // Host stubs see VFs only (an SF is never placed on a host).
    let host = host_devices
        .zip(slot.vf_index())
        .and_then(|(devices, vf)| host_function(devices, spec, vf));
    match host {
        Some(f) => {
            status.facts.host_pci_address = Some(f.pci_address.clone());
            status.facts.host_device = f
                .netdev
                .clone()
                .or_else(|| f.block_device.clone())
                .or(backend_device);
        }
        None => status.facts.host_pci_address = None,
    }
    rdma_status(&mut status, spec, applied, roce, host);
    status
}

/// Whether `e` is the kernel refusing to add an SF port because the driver
/// has no sub-functions (`EOPNOTSUPP`, e.g. netdevsim).
fn is_sf_add_refusal(e: &net_offload::functions::FunctionsError) -> bool {
    matches!(
        e,
        net_offload::functions::FunctionsError::DevlinkRefused {
            op: "sf_port_new",
            ..
        }
    ) && e.devlink_errno() == Some(libc::EOPNOTSUPP)
}

/// The status of a function whose carving the kernel refused for good:
/// Failed, `KernelRefused`, with the kernel's reason; its slot is still
/// recorded (it stays reserved to this function), no representor.
pub fn refused_status(mut status: Status, slot: Slot, message: String) -> Status {
    (status.facts.vf, status.facts.sf) = match slot {
        Slot::Vf(vf) => (Some(vf), None),
        Slot::Sf(sf) => (None, Some(sf)),
    };
    status.facts.representor = None;
    status.phase = Phase::Failed;
    status.set_condition(condition(
        "Programmed",
        ConditionStatus::False,
        Reason::KernelRefused,
        message,
    ));
    status
}

/// The volume of `tenant` attached to function `function` (not being
/// deleted), with its phase and host device.
pub fn presenting_volume(ctx: &Context, tenant: &str, function: &str) -> Option<PresentingVolume> {
    ctx.store
        .referring(Kind::Volume, tenant, RefField::Function, function)
        .into_iter()
        .filter(|v| !v.deleting)
        .find_map(|v| match &v.spec {
            Spec::Volume(spec) if spec.function == function => Some(PresentingVolume {
                id: v.id.clone(),
                phase: v.status.phase,
                host_device: v.status.facts.host_device.clone(),
            }),
            _ => None,
        })
}

/// A volume presented on a storage-emulated function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentingVolume {
    pub id: String,
    pub phase: Phase,
    pub host_device: Option<String>,
}

/// The status of an nvme / virtio-blk function the storage path presents:
/// SNAP (`Emulated`) makes its emulated controller on (`pf`, `vf`) with the
/// volume attached to it; an NVMe-oF target (`Fabric`) exports that volume
/// to the host's initiator, whose host NQN is the function's. Either way
/// the function is Ready when that volume is, Pending until then (waiting
/// for a volume, or for the volume's own progress) — pure, and never Ready
/// with nothing made.
pub fn emulated_status(
    mut status: Status,
    spec: &FunctionSpec,
    slot: Slot,
    role: StorageRole,
    volume: Option<&PresentingVolume>,
) -> Status {
    (status.facts.vf, status.facts.sf) = match slot {
        Slot::Vf(vf) => (Some(vf), None),
        Slot::Sf(sf) => (None, Some(sf)),
    };
    status.facts.representor = None;
    let kind = match spec.type_ {
        ApiFunctionType::VirtioBlk => "virtio-blk",
        _ => "NVMe",
    };
    let made = match role {
        StorageRole::Fabric => "NVMe-oF export for this function's host NQN".to_string(),
        _ => format!("emulated {kind} controller on {} {slot}", spec.pf),
    };
    let (phase, state, reason, message) = match volume {
        Some(v) if v.phase == Phase::Ready => (
            Phase::Ready,
            ConditionStatus::True,
            Reason::Programmed,
            format!("{made}, made by the storage path for volume {}", v.id),
        ),
        Some(v) => (
            Phase::Pending,
            ConditionStatus::False,
            Reason::Converging,
            format!(
                "the storage path makes the {made} with volume {}, which is {:?}",
                v.id, v.phase
            ),
        ),
        None => (
            Phase::Pending,
            ConditionStatus::False,
            Reason::AwaitingVolume,
            format!("the storage path makes the {made} when a volume is attached to this function"),
        ),
    };
    status.phase = phase;
    status.facts.host_device = volume.and_then(|v| v.host_device.clone());
    status.set_condition(condition("Programmed", state, reason, message));
    status
}

/// A function's `rdma` report and `Rdma` condition (only when its spec
/// asks for RDMA): on where the backend switched RoCE on for a Ready
/// function, or where the host stub reports an RDMA device on it; the
/// host's RDMA device when reported. The function's phase is not held
/// back: a backend's refusal to turn RoCE on already failed the apply with
/// the driver's reason.
fn rdma_status(
    status: &mut Status,
    spec: &FunctionSpec,
    applied: &Applied,
    roce: bool,
    host: Option<&HostDevice>,
) {
    if !spec.rdma {
        status.set_report(&FunctionReport::default());
        status.conditions.retain(|c| c.type_ != "Rdma");
        return;
    }
    let switched = roce && matches!(applied, Applied::Ready { .. });
    let host_rdma = host.and_then(|h| h.rdma.as_ref());
    let enabled = switched || host_rdma.is_some();
    status.set_report(&FunctionReport {
        rdma: Some(RdmaReport {
            enabled,
            device: None,
            host_device: host_rdma.map(|r| r.device.clone()),
        }),
    });
    let (state, reason, message) = match (switched, host_rdma) {
        (_, Some(r)) => (
            ConditionStatus::True,
            Reason::RdmaEnabled,
            format!(
                "the host reports RDMA device {}{}",
                r.device,
                r.uverbs
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default()
            ),
        ),
        (true, None) => (
            ConditionStatus::True,
            Reason::RdmaEnabled,
            "RoCE is on for the function's eswitch port; the host has not reported its RDMA device yet".to_string(),
        ),
        (false, None) => (
            ConditionStatus::False,
            Reason::RdmaNotReported,
            if roce {
                "RoCE is turned on once the function is programmed".to_string()
            } else {
                "this functions backend has no RoCE switch of its own: RDMA is on when the host stub reports an RDMA device on the function".to_string()
            },
        ),
    };
    status.set_condition(condition("Rdma", state, reason, message));
}

impl Controller for Functions {
    fn kind(&self) -> Kind {
        Kind::Function
    }

    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            if obj.deleting {
                self.tear_down(obj).await
            } else {
                self.reconcile_live(ctx, obj).await
            }
        })
    }

    fn plan(&self, ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String> {
        let Ok(spec) = function_spec(obj) else {
            return vec![format!("nothing: function {} has no valid spec", obj.id)];
        };
        match outcome {
            WriteOutcome::Unchanged => Vec::new(),
            WriteOutcome::Deleted => {
                let held = self
                    .slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&obj.id)
                    .map(|(_, slot)| *slot);
                let slot = held.or_else(|| status_slot(obj));
                plan::lines(&self.backend.plan_remove(
                    &obj.id,
                    slot.map(|slot| (spec.pf.as_str(), backend_slot(slot))),
                ))
            }
            WriteOutcome::Created | WriteOutcome::Updated => {
                let slot = slot_for(
                    ctx,
                    &self.slots.lock().unwrap_or_else(|e| e.into_inner()),
                    obj,
                    &spec,
                );
                let slot = match slot {
                    Ok(slot) => slot,
                    Err(SlotError::InUse(_)) => {
                        return vec![format!(
                            "nothing: {} {} is held by another function",
                            spec.pf,
                            spec.requested_slot()
                                .map(|s| s.to_string())
                                .unwrap_or_default()
                        )];
                    }
                    Err(SlotError::NoneFree { carve, lo, hi }) => {
                        return vec![format!(
                            "nothing: every {} of {} in the granted range {lo}-{hi} is taken",
                            match carve {
                                Carve::Vf => "VF",
                                Carve::Sf => "SF number",
                            },
                            spec.pf
                        )];
                    }
                };
                let tenant = tenant_addressing(ctx, &obj.tenant, &obj.id);
                match desired(obj, &spec, slot, tenant) {
                    Ok(d) => plan::lines(&self.backend.plan_apply(&d)),
                    Err(e) => vec![format!("nothing: {}", e.message)],
                }
            }
        }
    }

    fn backend(&self) -> Option<(String, bool)> {
        Some((format!("functions/{}", self.backend.name()), true))
    }
}

/// The functions controller for the configured backend, or the
/// `Unavailable` placeholder for `none`.
pub fn for_config(cfg: &crate::config::Config) -> Arc<dyn Controller> {
    use crate::config::{FunctionsBackend as B, SpdkFlavor, StorageBackend};
    use net_offload::functions::{external, naming, sriov, switchdev, veth};
    // SNAP emulates nvme and virtio-blk functions (made with their volume);
    // an NVMe-oF target serves the host's initiator.
    let role = match (cfg.storage.backend, cfg.storage.spdk_flavor) {
        (StorageBackend::Spdk, SpdkFlavor::Snap) => StorageRole::Emulated,
        (StorageBackend::Spdk, SpdkFlavor::Nvmf) | (StorageBackend::Nvmet, _) => {
            StorageRole::Fabric
        }
        (StorageBackend::None, _) => StorageRole::None,
    };
    let functions = |backend: Arc<dyn FunctionBackend>| -> Arc<dyn Controller> {
        Arc::new(Functions::new(backend).with_storage(role))
    };
    match cfg.functions_backend {
        B::Switchdev => {
            let backend = switchdev::SwitchdevBackend::new(switchdev::SwitchdevConfig {
                set_switchdev: cfg.eswitch_switchdev,
            });
            // A DPU without devlink still starts: each apply then fails
            // with the reason, in the function's status.
            match backend.prepare() {
                Ok(changed) if !changed.is_empty() => {
                    tracing::info!(devices = ?changed, "eswitch set to switchdev mode");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "cannot prepare the eswitch");
                }
            }
            functions(Arc::new(backend))
        }
        // Scoped by state directory: dev agents sharing a host (tests) only
        // ever sweep their own orphans.
        B::Veth => functions(Arc::new(veth::VethBackend::scoped(naming::scope_of(
            &cfg.state_dir.to_string_lossy(),
        )))),
        B::Sriov => functions(Arc::new(sriov::SriovBackend::new(
            sriov::SriovConfig::default(),
        ))),
        B::External => functions(Arc::new(external::ExternalBackend::default())),
        B::None => Arc::new(super::unavailable::Unavailable::new(
            Kind::Function,
            "functions (net-offload: switchdev/sriov/veth/external)",
            "functions_backend is none in the configuration",
        )),
    }
}

/// Replaces the placeholder functions controller of `controllers` (one that
/// drives no backend) with the configured one; a functions controller that
/// drives a backend, given by the caller, is kept.
pub fn with_configured(
    cfg: &crate::config::Config,
    controllers: Vec<Arc<dyn Controller>>,
) -> Vec<Arc<dyn Controller>> {
    super::replace_placeholder(Kind::Function, controllers, || for_config(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreError};
    use net_offload::functions::{
        FunctionAction, FunctionsError, ObservedFunction, Slot as BackendSlot, UnsupportedReason,
    };
    use serde_json::Value;
    use serde_json::json;

    /// `Held`'s slot index answers as a walk over every held slot would,
    /// after random inserts, moves and removals (PF spellings of one slot
    /// space mixed).
    #[test]
    fn held_slots_index_agrees_with_a_walk() {
        let mut held = Held::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let pfs = ["pf0", "pf00", "c1pf0", "pf1", "p0"];
        for step in 0..1500 {
            let id = format!("f{}", next(40));
            match next(3) {
                0 => held.remove(&id),
                _ => {
                    let n = next(6) as u32;
                    let slot = if next(2) == 0 {
                        Slot::Vf(n)
                    } else {
                        Slot::Sf(n)
                    };
                    held.insert(&id, pfs[next(5) as usize], slot);
                }
            }
            // The walk's view: every other holder with its slot space
            // (computed once per step; the walk is the oracle, not fast).
            let others: Vec<(&String, String, Slot)> = held
                .by_id
                .iter()
                .filter(|(hid, _)| **hid != id)
                .map(|(hid, (p, s))| (hid, pf_slot_space(p), *s))
                .collect();
            for pf in pfs {
                let space = pf_slot_space(pf);
                for n in 0..6 {
                    for slot in [Slot::Vf(n), Slot::Sf(n)] {
                        let walk: BTreeSet<&String> = others
                            .iter()
                            .filter(|(_, sp, s)| *sp == space && *s == slot)
                            .map(|(hid, _, _)| *hid)
                            .collect();
                        match held.holder(&space, slot, &id) {
                            Some(h) => assert!(walk.contains(&h), "step {step}: {h}"),
                            None => assert!(walk.is_empty(), "step {step}: {walk:?}"),
                        }
                    }
                }
                for carve in [Carve::Vf, Carve::Sf] {
                    let walk: BTreeSet<u32> = others
                        .iter()
                        .filter(|(_, sp, s)| *sp == space && s.carve() == carve)
                        .map(|(_, _, s)| s.number())
                        .collect();
                    assert_eq!(held.taken(&space, carve, &id), walk, "step {step}");
                }
            }
            let indexed: usize = held.by_slot.values().map(BTreeSet::len).sum();
            assert_eq!(indexed, held.by_id.len(), "step {step}");
        }
    }

    #[test]
    fn lowest_free_fills_holes() {
        assert_eq!(lowest_free(&BTreeSet::new()), 0);
        assert_eq!(lowest_free(&[0, 1, 3].into_iter().collect()), 2);
        assert_eq!(lowest_free(&[1, 2].into_iter().collect()), 0);
    }

    /// A function id and the (pf, VF or SF) it was removed from.
    type Removed = (String, Option<(String, BackendSlot)>);

    /// Records what it was asked; makes nothing.
    #[derive(Debug, Default)]
    struct Fake {
        applied: Mutex<Vec<FunctionDesired>>,
        removed: Mutex<Vec<Removed>>,
        orphans: Vec<String>,
        /// Refuses SF port adds as a driver without `port_new` does.
        refuse_sfs: bool,
    }

    impl FunctionBackend for Fake {
        fn name(&self) -> &'static str {
            "veth"
        }
        fn observe(
            &self,
        ) -> net_offload::functions::BoxFuture<'_, Result<Vec<ObservedFunction>, FunctionsError>>
        {
            let found = self
                .orphans
                .iter()
                .map(|o| ObservedFunction {
                    owner: Some(o.clone()),
                    what: format!("link fn-{o}"),
                })
                .collect();
            Box::pin(async move { Ok(found) })
        }
        fn apply<'a>(
            &'a self,
            d: &'a FunctionDesired,
        ) -> net_offload::functions::BoxFuture<'a, Result<Applied, FunctionsError>> {
            Box::pin(async move {
                self.applied.lock().unwrap().push(d.clone());
                if self.refuse_sfs && matches!(d.slot, BackendSlot::Sf(_)) {
                    return Err(FunctionsError::DevlinkRefused {
                        op: "sf_port_new",
                        reason: None,
                        source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                    });
                }
                if d.type_ != FunctionType::Net {
                    return Ok(Applied::Unsupported {
                        reason: UnsupportedReason::NoEmulation,
                        message: "no".into(),
                    });
                }
                Ok(Applied::Ready {
                    representor: format!("fn-{}", d.id),
                    host_device: Some("eth0".into()),
                })
            })
        }
        fn remove<'a>(
            &'a self,
            id: &'a str,
            slot: Option<(&'a str, BackendSlot)>,
        ) -> net_offload::functions::BoxFuture<'a, Result<(), FunctionsError>> {
            Box::pin(async move {
                self.removed
                    .lock()
                    .unwrap()
                    .push((id.to_string(), slot.map(|(p, v)| (p.to_string(), v))));
                Ok(())
            })
        }
        // Plays the tenant and words its Ready as the simulator does.
        fn plays_tenant(&self) -> bool {
            true
        }
        fn ready_message(&self, d: &FunctionDesired, representor: &str) -> String {
            net_offload::functions::veth::VethBackend::new().ready_message(d, representor)
        }
        fn plan_apply(&self, d: &FunctionDesired) -> Vec<FunctionAction> {
            vec![FunctionAction::Nothing {
                why: format!("make {} {}", d.id, d.slot),
            }]
        }
        fn plan_remove(&self, id: &str, _slot: Option<(&str, BackendSlot)>) -> Vec<FunctionAction> {
            vec![FunctionAction::Nothing {
                why: format!("remove {id}"),
            }]
        }
        fn execute<'a>(
            &'a self,
            _action: &'a FunctionAction,
        ) -> net_offload::functions::BoxFuture<'a, Result<Option<Applied>, FunctionsError>>
        {
            Box::pin(async { Ok(None) })
        }
    }

    use super::super::testing;

    fn put(store: &Store, kind: Kind, id: &str, spec: Value) {
        put_in(store, "acme", kind, id, spec);
    }

    /// Stores function `id` with `spec` in tenant `acme`.
    fn put_fn(store: &Store, id: &str, spec: Value) {
        put(store, Kind::Function, id, spec);
    }

    fn put_in(store: &Store, tenant: &str, kind: Kind, id: &str, spec: Value) {
        testing::put(store, tenant, kind, id, spec, false);
    }

    fn obj(store: &Store, kind: Kind, id: &str) -> StoredObject {
        testing::stored(store, kind, id)
    }

    /// Stores function `id` with `spec` in tenant `acme`, then reconciles it
    /// with `c`.
    async fn put_and_reconcile(c: &Functions, ctx: &Context, id: &str, spec: Value) -> Outcome {
        put_fn(&ctx.store, id, spec);
        reconcile_fn(c, ctx, id).await
    }

    /// Reconciles the stored function `id` with `c`; the outcome, unwrapped.
    async fn reconcile_fn(c: &Functions, ctx: &Context, id: &str) -> Outcome {
        c.reconcile(ctx, &obj(&ctx.store, Kind::Function, id))
            .await
            .unwrap()
    }

    /// The spec of a net function on `pf` with MAC `02:00:00:00:00:<mac>`,
    /// plus the fields of `extra` (`vf`, `sf`, `carve`, `host`).
    fn net_fn(pf: &str, mac: u8, extra: Value) -> Value {
        let mut f = json!({"type": "net", "pf": pf, "mac": format!("02:00:00:00:00:{mac:02x}")});
        for (k, v) in extra.as_object().unwrap() {
            f[k] = v.clone();
        }
        f
    }

    /// Stores tenant `tenant` with `functions` as its functions grant.
    fn grant(store: &Store, tenant: &str, functions: Value) {
        put(
            store,
            Kind::Tenant,
            tenant,
            json!({"grants": {"functions": functions}}),
        );
    }

    /// Marks the stored function `id` deleting with `status` (what its last
    /// reconcile left) and reconciles it with `c`; the outcome, unwrapped.
    async fn delete_fn(c: &Functions, ctx: &Context, id: &str, status: Status) -> Outcome {
        let mut gone = obj(&ctx.store, Kind::Function, id);
        gone.deleting = true;
        gone.status = status;
        c.reconcile(ctx, &gone).await.unwrap()
    }

    fn setup() -> (tempfile::TempDir, Context) {
        let (dir, ctx) = testing::context();
        put(&ctx.store, Kind::Tenant, "acme", json!({}));
        (dir, ctx)
    }

    #[tokio::test]
    async fn allocates_lowest_free_vf_and_reports_ready() {
        let (_dir, ctx) = setup();
        put_fn(&ctx.store, "a", net_fn("pf0", 0x0a, json!({"vf": 0})));
        put_fn(&ctx.store, "b", net_fn("pf0", 0x0b, json!({})));
        put_fn(&ctx.store, "c", net_fn("pf1", 0x0c, json!({})));
        let fake = Arc::new(Fake::default());
        let c = Functions::new(fake.clone());
        let b = reconcile_fn(&c, &ctx, "b").await;
        assert_eq!(b.status.facts.vf, Some(1));
        assert_eq!(b.status.facts.representor.as_deref(), Some("fn-b"));
        assert_eq!(b.status.phase, Phase::Ready);
        assert_eq!(
            b.status.condition("Programmed").unwrap().status,
            ConditionStatus::True
        );
        assert_eq!(b.requeue_after, Some(PORT_POLL));
        // Another PF has its own indexes.
        let cc = reconcile_fn(&c, &ctx, "c").await;
        assert_eq!(cc.status.facts.vf, Some(0));
        // Held in memory before any status is stored: the next one gets 2.
        let d = put_and_reconcile(&c, &ctx, "d", net_fn("pf0", 0x0d, json!({}))).await;
        assert_eq!(d.status.facts.vf, Some(2));
        // A requested index that another function holds is refused, by name.
        let e = put_and_reconcile(&c, &ctx, "e", net_fn("pf0", 0x0e, json!({"vf": 0}))).await;
        assert_eq!(e.status.phase, Phase::Failed);
        let cond = e.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, "VfInUse");
        assert!(cond.message.contains("function a"), "{}", cond.message);
    }

    /// TENANCY.md invariants 3 and 5: a function that asked for a VF another
    /// tenant's function holds fails without naming the holder, and its
    /// teardown leaves the holder's VF alone.
    #[tokio::test]
    async fn teardown_of_a_vf_in_use_leaves_the_holder_alone() {
        let (_dir, ctx) = setup();
        put(&ctx.store, Kind::Tenant, "blue", json!({}));
        put_fn(&ctx.store, "a", net_fn("pf0", 0x0a, json!({"vf": 3})));
        put_in(
            &ctx.store,
            "blue",
            Kind::Function,
            "x",
            net_fn("pf0", 0x0b, json!({"vf": 3})),
        );
        let fake = Arc::new(Fake::default());
        let c = Functions::new(fake.clone());
        let a = reconcile_fn(&c, &ctx, "a").await;
        assert_eq!(a.status.phase, Phase::Ready);
        let x = reconcile_fn(&c, &ctx, "x").await;
        assert_eq!(x.status.phase, Phase::Failed);
        let cond = x.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, "VfInUse");
        assert!(!cond.message.contains("function a"), "{}", cond.message);
        // Delete x: nothing of pf0 vf 3 is touched.
        let out = delete_fn(&c, &ctx, "x", x.status.clone()).await;
        assert!(out.finalized);
        let removed = fake.removed.lock().unwrap().clone();
        assert_eq!(removed, vec![("x".to_string(), None)]);
    }

    /// A tenant whose grant names a VF range gets VFs from it, and a clear
    /// reason when it is used up.
    #[tokio::test]
    async fn vfs_come_from_the_granted_range() {
        let (_dir, ctx) = setup();
        grant(&ctx.store, "acme", json!({"pfs": ["pf0"], "vfs": "4-5"}));
        let c = Functions::new(Arc::new(Fake::default()));
        for (id, want) in [("f1", Some(4)), ("f2", Some(5)), ("f3", None)] {
            put_fn(&ctx.store, id, net_fn("pf0", 0x0a, json!({})));
            let out = reconcile_fn(&c, &ctx, id).await;
            match want {
                Some(vf) => assert_eq!(out.status.facts.vf, Some(vf), "{id}"),
                None => {
                    assert_eq!(out.status.phase, Phase::Failed);
                    assert_eq!(
                        out.status.condition("Programmed").unwrap().reason,
                        "NoFreeVf"
                    );
                }
            }
        }
    }

    /// Sub-functions (TENANCY.md invariants 3 and 5): SF numbers are
    /// allocated per PF across tenants from each tenant's granted `sfs`
    /// range, never colliding with each other and independent of VF
    /// indexes (VF 0 and SF 0 coexist); status reports `sf` (no `vf`) and
    /// the representor; a tenant naming an SF another tenant's function
    /// holds fails `SfInUse` without naming the holder, and its teardown
    /// leaves the holder's SF alone; the holder's teardown removes its SF.
    #[tokio::test]
    async fn sfs_are_allocated_per_pf_across_tenants() {
        let (_dir, ctx) = setup();
        grant(&ctx.store, "acme", json!({"pfs": ["pf0"], "sfs": "0-1"}));
        grant(&ctx.store, "blue", json!({"pfs": ["pf0"], "sfs": "0-9"}));
        let fake = Arc::new(Fake::default());
        let c = Functions::new(fake.clone());
        let net = |extra: Value| net_fn("pf0", 0x0a, extra);
        let vf = put_and_reconcile(&c, &ctx, "v", net(json!({}))).await;
        assert_eq!(vf.status.facts.vf, Some(0));
        let a = put_and_reconcile(&c, &ctx, "a", net(json!({"carve": "sf"}))).await;
        assert_eq!((a.status.facts.vf, a.status.facts.sf), (None, Some(0)));
        assert_eq!(a.status.facts.representor.as_deref(), Some("fn-a"));
        assert_eq!(a.status.phase, Phase::Ready);
        let applied = fake.applied.lock().unwrap().clone();
        assert_eq!(applied.last().unwrap().slot, BackendSlot::Sf(0));
        // Held in memory before any status is stored: blue gets SF 1.
        put_in(
            &ctx.store,
            "blue",
            Kind::Function,
            "b",
            net(json!({"carve": "sf"})),
        );
        let b = reconcile_fn(&c, &ctx, "b").await;
        assert_eq!(b.status.facts.sf, Some(1));
        // acme's range 0-1 is used up (SF 1 is blue's).
        let full = put_and_reconcile(&c, &ctx, "full", net(json!({"carve": "sf"}))).await;
        assert_eq!(full.status.phase, Phase::Failed);
        let cond = full.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, "NoFreeSf");
        // blue names acme's SF 0: refused, acme not named.
        put_in(
            &ctx.store,
            "blue",
            Kind::Function,
            "x",
            net(json!({"sf": 0})),
        );
        let x = reconcile_fn(&c, &ctx, "x").await;
        assert_eq!(x.status.phase, Phase::Failed);
        let cond = x.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, "SfInUse");
        assert!(!cond.message.contains("function a"), "{}", cond.message);
        assert!(cond.message.contains("pf0 sf 0"), "{}", cond.message);
        assert!(delete_fn(&c, &ctx, "x", x.status.clone()).await.finalized);
        assert!(delete_fn(&c, &ctx, "a", a.status.clone()).await.finalized);
        assert_eq!(
            fake.removed.lock().unwrap().clone(),
            vec![
                ("x".to_string(), None),
                (
                    "a".to_string(),
                    Some(("pf0".to_string(), BackendSlot::Sf(0)))
                ),
            ]
        );
    }

    /// Spellings of one PF share its VF numbers (TENANCY.md invariants 3
    /// and 5): the switchdev backend resolves `pf0`, `pf00` and `c1pf0` to
    /// the same hardware PF where controller 1 is the host's (or the only
    /// one), so a tenant granted `c1pf0` never gets, by allocation or by
    /// naming it, the VF another tenant holds as `pf0`; a legacy PF's
    /// netdev name (`p0`) stays its own space.
    #[tokio::test]
    async fn spellings_of_one_pf_share_its_vf_numbers() {
        assert_eq!(pf_slot_space("c1pf0"), "pf0");
        assert_eq!(pf_slot_space("pf00"), "pf0");
        assert_eq!(pf_slot_space("c0pf12"), "pf12");
        assert_eq!(pf_slot_space("p0"), "p0");
        assert_eq!(pf_slot_space("cpf0"), "cpf0");
        let (_dir, ctx) = setup();
        grant(&ctx.store, "acme", json!({"pfs": ["pf0"], "vfs": "0-3"}));
        grant(
            &ctx.store,
            "blue",
            json!({"pfs": ["c1pf0", "pf00"], "vfs": "0-3"}),
        );
        let c = Functions::new(Arc::new(Fake::default()));
        let net = |pf: &str| json!({"type": "net", "pf": pf, "mac": "02:00:00:00:00:0a"});
        let a = put_and_reconcile(&c, &ctx, "a", net("pf0")).await;
        assert_eq!(a.status.facts.vf, Some(0));
        put_in(&ctx.store, "blue", Kind::Function, "b", net("c1pf0"));
        let b = reconcile_fn(&c, &ctx, "b").await;
        assert_eq!(
            b.status.facts.vf,
            Some(1),
            "not acme's VF 0 under another name"
        );
        let mut named = net("pf00");
        named["vf"] = json!(0);
        put_in(&ctx.store, "blue", Kind::Function, "x", named);
        let x = reconcile_fn(&c, &ctx, "x").await;
        assert_eq!(x.status.phase, Phase::Failed);
        assert_eq!(x.status.condition("Programmed").unwrap().reason, "VfInUse");
    }

    /// A driver without sub-functions (netdevsim: `EOPNOTSUPP` on
    /// `PORT_NEW`) fails an SF function for good — Failed, `KernelRefused`,
    /// the kernel's refusal in the message, its SF number still reserved —
    /// rather than retrying it as a transient backend error; VFs on the
    /// same backend are unaffected.
    #[tokio::test]
    async fn an_sf_the_driver_cannot_make_fails_with_the_kernels_reason() {
        let (_dir, ctx) = setup();
        let c = Functions::new(Arc::new(Fake {
            refuse_sfs: true,
            ..Fake::default()
        }));
        let sf = put_and_reconcile(&c, &ctx, "s", net_fn("pf0", 0x0a, json!({"sf": 88}))).await;
        assert_eq!(sf.status.phase, Phase::Failed);
        assert_eq!(sf.status.facts.sf, Some(88));
        assert_eq!(sf.status.facts.representor, None);
        let cond = sf.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, "KernelRefused");
        assert!(
            cond.message.contains("devlink sf_port_new refused"),
            "{}",
            cond.message
        );
        let vf = put_and_reconcile(&c, &ctx, "v", net_fn("pf0", 0x0b, json!({}))).await;
        assert_eq!(vf.status.phase, Phase::Ready);
    }

    fn dev(addr: &str, kind: &str, class: &str) -> HostDevice {
        HostDevice {
            pci_address: addr.into(),
            class: class.into(),
            kind: Some(kind.into()),
            card: Some("dsn:01".into()),
            ..HostDevice::default()
        }
    }

    fn vf_dev(addr: &str, physfn: &str, index: u32, netdev: &str) -> HostDevice {
        HostDevice {
            physfn: Some(physfn.into()),
            vf_index: Some(index),
            netdev: Some(netdev.into()),
            ..dev(addr, "vf", "vf")
        }
    }

    /// `programmed_status` for VF 1, the slot every status test places its
    /// function in, with `made` as the backend's Ready message.
    fn vf1_status(
        previous: Status,
        spec: &FunctionSpec,
        applied: &Applied,
        roce: bool,
        host_devices: Option<&[HostDevice]>,
    ) -> Status {
        programmed_status(
            previous,
            spec,
            Slot::Vf(1),
            applied,
            "made".into(),
            roce,
            host_devices,
        )
    }

    /// Status derivation is pure: the same inputs give the same status,
    /// each outcome of the backend maps to its phase, reason and facts, and
    /// a host's report places the function without asking anything.
    #[test]
    fn programmed_status_follows_what_the_backend_reached() {
        let spec: FunctionSpec =
            serde_json::from_value(json!({"type": "net", "pf": "pf0", "host": "node-1"})).unwrap();
        let ready = Applied::Ready {
            representor: "pf0vf1".into(),
            host_device: None,
        };
        let s = vf1_status(Status::default(), &spec, &ready, false, None);
        assert_eq!(s.phase, Phase::Ready);
        assert_eq!(s.facts.vf, Some(1));
        assert_eq!(s.facts.representor.as_deref(), Some("pf0vf1"));
        assert_eq!(s.facts.host_pci_address, None);
        let cond = s.condition("Programmed").unwrap();
        assert_eq!(
            (cond.reason.as_str(), cond.message.as_str()),
            ("Programmed", "made")
        );

        // The host reports the VF: its address and netdev are recorded.
        let devices = [
            dev("0000:03:00.0", "pf", "pf"),
            vf_dev("0000:03:00.2", "0000:03:00.0", 1, "ens1f0v1"),
        ];
        let placed = vf1_status(s.clone(), &spec, &ready, false, Some(&devices[..]));
        assert_eq!(
            placed.facts.host_pci_address.as_deref(),
            Some("0000:03:00.2")
        );
        assert_eq!(placed.facts.host_device.as_deref(), Some("ens1f0v1"));

        // The representor went missing: Degraded, no representor fact.
        let missing = vf1_status(
            placed,
            &spec,
            &Applied::NoRepresentor {
                expected: "pf0vf1".into(),
            },
            false,
            None,
        );
        assert_eq!(missing.phase, Phase::Degraded);
        assert_eq!(missing.facts.representor, None);
        assert_eq!(missing.facts.host_pci_address, None);
        assert_eq!(
            missing.condition("Programmed").unwrap().reason,
            "RepresentorMissing"
        );

        let unsupported = vf1_status(
            Status::default(),
            &spec,
            &Applied::Unsupported {
                reason: UnsupportedReason::NoEmulation,
                message: "no SNAP".into(),
            },
            false,
            None,
        );
        assert_eq!(unsupported.phase, Phase::Pending);
        assert_eq!(
            unsupported.condition("Programmed").unwrap().reason,
            "NoEmulation"
        );
    }

    /// A function asking for RDMA: on where the backend switches RoCE and
    /// made it Ready, or where its host reports an RDMA device (named in
    /// status); otherwise the `Rdma` condition says why not, and the phase
    /// stays what programming reached. Without `rdma` nothing is reported.
    #[test]
    fn rdma_status_is_derived_from_backend_and_host() {
        let spec: FunctionSpec = serde_json::from_value(
            json!({"type": "net", "pf": "pf0", "host": "node-1", "mac": "02:00:00:00:00:01", "rdma": true}),
        )
        .unwrap();
        let ready = Applied::Ready {
            representor: "pf0vf1".into(),
            host_device: None,
        };
        let rdma = |s: &Status| s.report::<FunctionReport>().rdma;
        // A backend without a RoCE switch, no host report yet.
        let s = vf1_status(Status::default(), &spec, &ready, false, None);
        assert_eq!(s.phase, Phase::Ready);
        assert_eq!(
            rdma(&s),
            Some(RdmaReport {
                enabled: false,
                device: None,
                host_device: None
            })
        );
        let c = s.condition("Rdma").unwrap();
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "RdmaNotReported")
        );
        // The switchdev backend turned RoCE on.
        let s = vf1_status(Status::default(), &spec, &ready, true, None);
        assert!(rdma(&s).unwrap().enabled);
        assert_eq!(s.condition("Rdma").unwrap().reason, "RdmaEnabled");
        // The host reports rxe0 on the VF.
        let mut vf = vf_dev("0000:03:00.2", "0000:03:00.0", 1, "ens1f0v1");
        vf.rdma = Some(dpu_api::object::HostRdma {
            device: "rxe0".into(),
            uverbs: Some("/dev/infiniband/uverbs0".into()),
            rdma_cm: Some("/dev/infiniband/rdma_cm".into()),
        });
        let devices = [dev("0000:03:00.0", "pf", "pf"), vf];
        let s = vf1_status(s, &spec, &ready, false, Some(&devices[..]));
        assert_eq!(
            rdma(&s),
            Some(RdmaReport {
                enabled: true,
                device: None,
                host_device: Some("rxe0".into())
            })
        );
        assert!(
            s.condition("Rdma")
                .unwrap()
                .message
                .contains("rxe0 (/dev/infiniband/uverbs0)")
        );
        // RDMA dropped from the spec: report and condition go.
        let mut plain = spec.clone();
        plain.rdma = false;
        let s = vf1_status(s, &plain, &ready, true, Some(&devices[..]));
        assert_eq!(rdma(&s), None);
        assert!(s.condition("Rdma").is_none());
        assert!(!s.fields.contains_key("rdma"));
    }

    #[tokio::test]
    async fn host_report_gives_host_address_and_device() {
        let (_dir, ctx) = setup();
        put_fn(
            &ctx.store,
            "h",
            net_fn("pf1", 0x0a, json!({"vf": 1, "host": "node-1"})),
        );
        let c = Functions::new(Arc::new(Fake::default()));
        // No report yet: the backend's device, no address, looked at again.
        let before = reconcile_fn(&c, &ctx, "h").await;
        assert!(before.status.facts.host_pci_address.is_none());
        assert_eq!(before.status.facts.host_device.as_deref(), Some("eth0"));
        assert_eq!(before.requeue_after, Some(HOST_POLL));
        let devices = vec![
            dev("0000:03:00.0", "pf", "pf"),
            dev("0000:03:00.1", "pf", "pf"),
            dev("0000:03:00.2", "pf", "nvme"),
            vf_dev("0000:03:00.3", "0000:03:00.0", 1, "ens1f0v1"),
            vf_dev("0000:03:01.3", "0000:03:00.1", 0, "ens1f1v0"),
            vf_dev("0000:03:01.4", "0000:03:00.1", 1, "ens1f1v1"),
        ];
        ctx.store
            .transact(|t| {
                t.put_host(dpu_api::object::HostReport {
                    host: "node-1".into(),
                    reported_at: "2026-11-27T00:00:00Z".into(),
                    devices: devices.clone(),
                });
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let after = reconcile_fn(&c, &ctx, "h").await;
        assert_eq!(
            after.status.facts.host_pci_address.as_deref(),
            Some("0000:03:01.4")
        );
        assert_eq!(after.status.facts.host_device.as_deref(), Some("ens1f1v1"));
        // Another host's report is not this function's.
        let spec = |pf: &str, host: &str| -> FunctionSpec {
            serde_json::from_value(
                json!({"type": "net", "pf": pf, "host": host, "mac": "02:00:00:00:00:0a"}),
            )
            .unwrap()
        };
        assert_eq!(
            host_placement(&devices, &spec("pf0", "x"), 1),
            Some(("0000:03:00.3".into(), Some("ens1f0v1".into())))
        );
        assert_eq!(host_placement(&devices, &spec("pf2", "x"), 0), None);
        assert_eq!(host_placement(&devices, &spec("eth0", "x"), 0), None);
        // Two cards: which pf1 is meant cannot be told.
        let mut two = devices.clone();
        two[1].card = Some("dsn:02".into());
        assert_eq!(host_placement(&two, &spec("pf0", "x"), 1), None);
    }

    #[tokio::test]
    async fn port_and_network_give_the_tenant_side() {
        let (_dir, ctx) = setup();
        put_fn(&ctx.store, "web", net_fn("pf0", 0x01, json!({})));
        put(
            &ctx.store,
            Kind::Network,
            "blue",
            json!({"vni": 100, "cidr": "10.0.0.0/24", "encap": "local"}),
        );
        let fake = Arc::new(Fake::default());
        let c = Functions::new(fake.clone());
        reconcile_fn(&c, &ctx, "web").await;
        assert_eq!(fake.applied.lock().unwrap()[0].tenant, None);
        put(
            &ctx.store,
            Kind::Port,
            "web-p",
            json!({"network": "blue", "function": "web", "mac": "02:00:00:00:00:01", "ips": ["10.0.0.5"]}),
        );
        let out = reconcile_fn(&c, &ctx, "web").await;
        {
            let applied = fake.applied.lock().unwrap();
            assert_eq!(
                applied.len(),
                2,
                "a port change is applied on the next look"
            );
            assert_eq!(
                applied[1].tenant,
                Some(TenantAddressing {
                    mac: "02:00:00:00:00:01".parse().unwrap(),
                    addresses: vec![("10.0.0.5".parse().unwrap(), 24)],
                })
            );
        }
        assert!(
            out.status
                .condition("Programmed")
                .unwrap()
                .message
                .contains("netns dpu-fn-web")
        );
        // Unchanged: not applied again within REAPPLY_EVERY.
        reconcile_fn(&c, &ctx, "web").await;
        assert_eq!(fake.applied.lock().unwrap().len(), 2);
        let plan = c.plan(
            &ctx,
            &obj(&ctx.store, Kind::Function, "web"),
            WriteOutcome::Updated,
        );
        assert_eq!(plan, vec!["nothing: make web vf 0".to_string()]);
    }

    #[tokio::test]
    async fn storage_emulated_functions_follow_their_volume() {
        let (_dir, ctx) = setup();
        put_fn(&ctx.store, "disk", json!({"type": "nvme", "pf": "pf0"}));
        let fake = Arc::new(Fake::default());
        let c = Functions::new(fake.clone()).with_storage(StorageRole::Emulated);
        let out = reconcile_fn(&c, &ctx, "disk").await;
        // No volume yet: waiting, VF held, the backend never asked.
        assert_eq!(out.status.phase, Phase::Pending);
        assert_eq!(out.status.facts.vf, Some(0));
        let cond = out.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, "AwaitingVolume");
        assert!(fake.applied.lock().unwrap().is_empty());
        // The volume's phase decides, purely.
        let spec: FunctionSpec =
            serde_json::from_value(json!({"type": "virtio-blk", "pf": "pf0"})).unwrap();
        let mut v = PresentingVolume {
            id: "vol".into(),
            phase: Phase::Pending,
            host_device: None,
        };
        // SNAP presents the function on VF 2.
        let on_vf2 = |previous: Status, volume: Option<&PresentingVolume>| {
            emulated_status(previous, &spec, Slot::Vf(2), StorageRole::Emulated, volume)
        };
        let s = on_vf2(Status::default(), Some(&v));
        assert_eq!(s.phase, Phase::Pending);
        assert_eq!(s.condition("Programmed").unwrap().reason, "Converging");
        v.phase = Phase::Ready;
        v.host_device = Some("vda".into());
        let s = on_vf2(s, Some(&v));
        assert_eq!(s.phase, Phase::Ready);
        assert_eq!(s.facts.host_device.as_deref(), Some("vda"));
        assert!(
            s.condition("Programmed")
                .unwrap()
                .message
                .contains("emulated virtio-blk controller on pf0 vf 2")
        );
        let gone = on_vf2(s, None);
        assert_eq!(gone.phase, Phase::Pending);
        assert_eq!(gone.facts.host_device, None);
        // An NVMe-oF target presents nvme functions (the host's initiator),
        // not virtio-blk ones; SNAP both; nothing presents net functions.
        assert!(StorageRole::Fabric.presents(ApiFunctionType::Nvme));
        assert!(!StorageRole::Fabric.presents(ApiFunctionType::VirtioBlk));
        assert!(StorageRole::Emulated.presents(ApiFunctionType::VirtioBlk));
        assert!(!StorageRole::Emulated.presents(ApiFunctionType::Net));
        let nvme: FunctionSpec =
            serde_json::from_value(json!({"type": "nvme", "pf": "pf0"})).unwrap();
        let exported = emulated_status(
            Status::default(),
            &nvme,
            Slot::Vf(0),
            StorageRole::Fabric,
            Some(&v),
        );
        assert_eq!(exported.phase, Phase::Ready);
        assert!(
            exported
                .condition("Programmed")
                .unwrap()
                .message
                .contains("NVMe-oF export for this function's host NQN")
        );
    }

    #[tokio::test]
    async fn storage_functions_stay_pending_and_delete_tears_down() {
        let (_dir, ctx) = setup();
        put_fn(&ctx.store, "disk", json!({"type": "nvme", "pf": "pf0"}));
        let fake = Arc::new(Fake {
            orphans: vec!["gone".into()],
            ..Fake::default()
        });
        let c = Functions::new(fake.clone());
        let out = reconcile_fn(&c, &ctx, "disk").await;
        assert_eq!(out.status.phase, Phase::Pending);
        assert_eq!(
            out.status.condition("Programmed").unwrap().reason,
            "NoEmulation"
        );
        assert_eq!(out.requeue_after, None);
        // The orphan "gone" was swept.
        assert_eq!(fake.removed.lock().unwrap()[0], ("gone".to_string(), None));
        let done = delete_fn(&c, &ctx, "disk", out.status).await;
        assert!(done.finalized);
        assert_eq!(
            fake.removed.lock().unwrap()[1],
            (
                "disk".to_string(),
                Some(("pf0".to_string(), BackendSlot::Vf(0)))
            )
        );
    }
}
