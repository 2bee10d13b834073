//! The network controllers (Network, Port, Endpoint) over ONE shared switch
//! reconciler (`net_offload::switch`). Every reconcile of any of these kinds
//! brings the desired networking up to the store (only when the store
//! moved: patched with the objects the store changed since, as
//! [`Store::changes_since`] names them, and built from the whole lists only
//! when the store no longer remembers them; unchanged ports share their
//! descriptions with the input before), hands it to the reconciler — which recomputes the whole flow set,
//! debounced, and syncs the bridge in one bundle — and then reports status
//! from the reconciler's last result: `Ready` with `Programmed=True` only
//! when the switch acknowledged the flows of that input.
//!
//! A port's representor is its function's `status.representor` (set by the
//! functions controller); until it exists the port is `Pending` and is looked
//! at again every second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, ObjectKey, Phase, WriteOutcome};
use dpu_api::report::{FlowsReport, PortReport};
use dpu_api::spec::{Encap as ApiEncap, PortSpec, Protocol, SecurityRule, Spec};
use net_offload::pipeline::{
    self, DesiredNetworking, Encap, EndpointDesc, NetworkDesc, OwnerKind, PortDesc, PortsByNetwork,
    QosDesc, RuleDesc, RuleProtocol, SecurityDesc,
};
use net_offload::switch::{
    Durations, InputChange, OrdSet, Pass, Phase as SwitchPhase, SwitchConfig, SwitchHandle,
    SwitchInput, SwitchReport, thread_cpu,
};
use tokio::sync::watch;

use super::backend_error::BackendStartError;
use super::set_programmed;
use super::unavailable::Unavailable;
use super::{
    BoxFuture, Context, Controller, Outcome, Reason, ReconcileError, Reconciling, condition,
};
use crate::config::{Config, OvsConfig};
use crate::error_chain;
use crate::store::{Store, StoredObject};

/// How long a reconcile waits for the switch to act on its input.
const SWITCH_WAIT: Duration = Duration::from_secs(5);
const PENDING_RETRY: Duration = Duration::from_secs(1);

/// What the network controllers need of the switch reconciler: hand it the
/// desired state, read and wait for its reports, and plan without I/O.
/// Implemented by [`SwitchHandle`] (the real reconciler over OVSDB and
/// OpenFlow) and, in the unit tests, by an in-memory fake that publishes
/// the report each case builds.
pub trait Switch: Send + Sync + std::fmt::Debug {
    /// Hands over a new desired state (replacing any not yet processed),
    /// shared rather than copied.
    fn set_input(&self, input: Arc<SwitchInput>);
    /// The version of the input last handed over.
    fn input_version(&self) -> u64;
    /// The last report.
    fn report(&self) -> Arc<SwitchReport>;
    /// Every report as it is published.
    fn subscribe(&self) -> watch::Receiver<Arc<SwitchReport>>;
    /// The first report about `version` or later, or the last one when
    /// none came within `timeout`.
    fn wait_for_version(&self, version: u64, timeout: Duration)
    -> BoxFuture<'_, Arc<SwitchReport>>;
    /// What converging to `input` would change, one line per operation.
    fn plan(&self, input: &SwitchInput) -> Vec<String>;
}

impl Switch for SwitchHandle {
    fn set_input(&self, input: Arc<SwitchInput>) {
        SwitchHandle::set_input(self, input)
    }

    fn input_version(&self) -> u64 {
        SwitchHandle::input_version(self)
    }

    fn report(&self) -> Arc<SwitchReport> {
        SwitchHandle::report(self)
    }

    fn subscribe(&self) -> watch::Receiver<Arc<SwitchReport>> {
        SwitchHandle::subscribe(self)
    }

    fn wait_for_version(
        &self,
        version: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, Arc<SwitchReport>> {
        Box::pin(SwitchHandle::wait_for_version(self, version, timeout))
    }

    fn plan(&self, input: &SwitchInput) -> Vec<String> {
        SwitchHandle::plan(self, input)
    }
}

/// The switch reconciler and the last input handed to it.
#[derive(Debug)]
pub struct NetworkBackend {
    switch: Box<dyn Switch>,
    last: Mutex<LastInput>,
    // Keeps the reconciler running as long as the backend lives.
    _shutdown: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct LastInput {
    inputs: Option<InputRevisions>,
    /// Shared with the switch reconciler (handed over without a copy).
    input: Arc<SwitchInput>,
    /// What `input` was built from (`None`: nothing built yet).
    index: Option<Index>,
    /// Time spent building the desired networking from the store (the
    /// `input` phase of `dpu_agent_switch_phase_seconds`), and the CPU time
    /// of it (of `dpu_agent_switch_phase_cpu_seconds`).
    built: Durations,
    built_cpu: Durations,
}

/// The store revisions the desired networking is derived from: the specs of
/// networks, ports, endpoints and functions, and functions' status (their
/// representor). A port's own status write does not move them, so the
/// reconcile of each of 10k ports does not rebuild the whole state.
type InputRevisions = [(u64, u64); 4];

fn input_revisions(store: &Store) -> InputRevisions {
    let spec = |kind| (store.kind_revisions(kind).0, 0);
    [
        spec(Kind::Network),
        spec(Kind::Port),
        spec(Kind::Endpoint),
        store.kind_revisions(Kind::Function),
    ]
}

/// OVS's run directory for the OVSDB at `db`: the directory of a unix
/// socket; for tcp, the standard `/var/run/openvswitch`.
pub fn rundir(db: &str) -> PathBuf {
    db.strip_prefix("unix:")
        .and_then(|p| PathBuf::from(p).parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/openvswitch"))
}

/// The OpenFlow management socket of `bridge` for the OVSDB at `db`:
/// `<rundir>/<bridge>.mgmt`.
pub fn mgmt_socket(db: &str, bridge: &str) -> PathBuf {
    rundir(db).join(format!("{bridge}.mgmt"))
}

impl NetworkBackend {
    /// Starts the switch reconciler for `ovs` (must be called in a tokio runtime).
    pub fn start(ovs: &OvsConfig) -> Result<Arc<Self>, BackendStartError> {
        let db = ovs
            .db
            .parse()
            .map_err(|source| BackendStartError::OvsdbAddress {
                db: ovs.db.clone(),
                source,
            })?;
        let (tx, rx) = watch::channel(false);
        let switch = SwitchHandle::spawn(
            SwitchConfig {
                db,
                bridge: ovs.bridge.clone(),
                datapath_type: ovs.datapath_type.clone(),
                hw_offload: ovs.hw_offload,
                mgmt_socket: mgmt_socket(&ovs.db, &ovs.bridge),
                period: Duration::from_millis(500),
                rundir: Some(rundir(&ovs.db)),
            },
            rx,
        );
        Ok(NetworkBackend::over(Box::new(switch), tx))
    }

    /// A backend over `switch`; `shutdown` is kept as long as the backend
    /// lives (dropping it stops the real reconciler).
    fn over(switch: Box<dyn Switch>, shutdown: watch::Sender<bool>) -> Arc<Self> {
        Arc::new(NetworkBackend {
            switch,
            last: Mutex::new(LastInput::default()),
            _shutdown: shutdown,
        })
    }

    /// Whether port `id` had its function's representor in the last input
    /// handed to the reconciler (a port without one waits for its
    /// function's reconcile, not for the switch).
    fn has_representor(&self, id: &str) -> bool {
        let last = self.last.lock().expect("network input lock");
        last.index
            .as_ref()
            .and_then(|index| index.ports.get(id))
            .is_some_and(|(_, desc)| desc.representor.is_some())
    }

    /// Hands the store's current networking to the reconciler if it changed;
    /// returns the input version to wait for.
    fn sync(&self, store: &Store) -> u64 {
        let mut last = self.last.lock().expect("network input lock");
        let revisions = input_revisions(store);
        if last.inputs == Some(revisions) {
            return last.input.version;
        }
        let started = std::time::Instant::now();
        let cpu = thread_cpu();
        // Patched with the objects the store changed since the last build
        // when it still knows which (it always does unless far behind),
        // else built from the whole lists.
        let patched = last.index.as_mut().and_then(|index| {
            let (revision, keys) = store.changes_since(index.revision, &INPUT_KINDS)?;
            Some(index.patch(store, revision, &keys))
        });
        if patched.is_none() {
            last.index = Some(Index::build(store, None, last.index.as_ref()));
        }
        let index = last.index.as_ref().expect("built above");
        let (networking, by_network, by_representor) = (
            index.networking(),
            index.by_network(),
            index.by_representor.clone(),
        );
        last.inputs = Some(revisions);
        let mut next = SwitchInput {
            version: last.input.version + 1,
            networking,
            by_network: Some(by_network),
            by_representor,
            changed: None,
        };
        // Which networks changed, so the switch looks only at those: as
        // the patch says, else from the lists (in id order: one walk; else
        // compared whole).
        if let Some(patched) = &patched {
            debug_assert!(
                next.changed_networks(&last.input)
                    .is_some_and(|walked| walked.is_subset(patched)),
                "the patch names every changed network"
            );
        }
        let changed = match patched.or_else(|| next.changed_networks(&last.input)) {
            Some(networks) if networks.is_empty() => false,
            Some(networks) => {
                next.changed = Some(InputChange {
                    since: last.input.version,
                    networks,
                });
                true
            }
            None => next.networking != last.input.networking,
        };
        if changed {
            last.input = Arc::new(next);
        }
        last.built.observe(started.elapsed());
        last.built_cpu.observe(thread_cpu().saturating_sub(cpu));
        if changed {
            self.switch.set_input(last.input.clone());
        }
        last.input.version
    }

    /// The three controllers sharing this backend.
    pub fn controllers(self: &Arc<Self>) -> Vec<Arc<dyn Controller>> {
        [Kind::Network, Kind::Port, Kind::Endpoint]
            .into_iter()
            .map(|kind| {
                Arc::new(NetworkController {
                    kind,
                    backend: self.clone(),
                }) as Arc<dyn Controller>
            })
            .collect()
    }
}

fn rule(r: &SecurityRule) -> RuleDesc {
    RuleDesc {
        protocol: match r.protocol {
            Protocol::Tcp => RuleProtocol::Tcp,
            Protocol::Udp => RuleProtocol::Udp,
            Protocol::Icmp => RuleProtocol::Icmp,
            Protocol::Any => RuleProtocol::Any,
        },
        cidr: r.cidr.map(|c| (c.addr(), c.prefix_len())),
        ports: r.ports.map(|p| (p.lo, p.hi)),
    }
}

/// A change to apply on top of the store (for `plan`).
type Overlay<'a> = Option<(&'a StoredObject, bool)>;

/// The desired networking as last built, by id, with what a change to one
/// object needs to patch it: each port's stored object and function, the
/// representor of each function and the ports that name each function.
/// Built whole from the store's lists ([`Index::build`]), then moved by
/// the store's changed keys ([`Index::patch`]). The store's objects are
/// immutable and shared, so an object still in the store as the same `Arc`
/// has the same description: a rebuild or patch after one port changed
/// makes one description and shares the rest with the input before. The
/// switch then compares, copies and frees the unchanged ports by pointer,
/// without reading them.
#[derive(Debug, Default, Clone)]
struct Index {
    /// The store revision whose objects this holds (every change up to it
    /// applied).
    revision: u64,
    networks: BTreeMap<String, NetworkDesc>,
    /// Port id → its stored object and description.
    ports: BTreeMap<String, (Arc<StoredObject>, Arc<PortDesc>)>,
    endpoints: BTreeMap<String, EndpointDesc>,
    /// Function id → its representor, of the functions (not being deleted)
    /// that have one.
    representors: BTreeMap<String, String>,
    /// Function id → the ids of the ports that name it.
    ports_of: BTreeMap<String, BTreeSet<String>>,
    /// Network id → the ids of the ports that name it ...
    ports_in: BTreeMap<String, BTreeSet<String>>,
    /// ... and their descriptions, as the switch reads them
    /// ([`SwitchInput::by_network`]).
    by_network: PortsByNetwork,
    /// `(representor, port id)` of the ports that have one
    /// ([`SwitchInput::by_representor`]).
    by_representor: OrdSet<(String, String)>,
}

fn network_desc(o: &StoredObject) -> Option<NetworkDesc> {
    let Spec::Network(n) = &o.spec else {
        return None;
    };
    Some(NetworkDesc {
        id: o.id.clone(),
        tenant: o.tenant.clone(),
        vni: n.vni,
        encap: match n.encap {
            ApiEncap::Vxlan => Encap::Vxlan,
            ApiEncap::Geneve => Encap::Geneve,
            ApiEncap::Local => Encap::Local,
        },
    })
}

fn endpoint_desc(o: &StoredObject) -> Option<EndpointDesc> {
    let Spec::Endpoint(e) = &o.spec else {
        return None;
    };
    Some(EndpointDesc {
        id: o.id.clone(),
        tenant: o.tenant.clone(),
        network: e.network.clone(),
        mac: e.mac.0,
        ips: e.ips.clone(),
        vtep: e.vtep,
    })
}

fn port_spec(o: &StoredObject) -> Option<&PortSpec> {
    match &o.spec {
        Spec::Port(p) => Some(p),
        _ => None,
    }
}

fn port_desc(o: &StoredObject, p: &PortSpec, representor: Option<&str>) -> PortDesc {
    let security = p.security.clone().unwrap_or_default();
    PortDesc {
        id: o.id.clone(),
        tenant: o.tenant.clone(),
        network: p.network.clone(),
        mac: p.mac.0,
        ips: p.ips.clone(),
        security: SecurityDesc {
            ingress: security.ingress.iter().map(rule).collect(),
            egress: security.egress.map(|e| e.iter().map(rule).collect()),
        },
        qos: p.qos.as_ref().map(|q| QosDesc {
            max_rate_kbps: q.max_rate_mbps.saturating_mul(1000),
            burst_kbits: q.burst_kb.saturating_mul(8),
        }),
        representor: representor.map(str::to_string),
        ofport: None,
    }
}

/// `o`'s description with `representor`: `old`'s (the one built before)
/// when `o` is the same object with the same representor, or describes
/// the same.
fn shared_port_desc(
    old: Option<&(Arc<StoredObject>, Arc<PortDesc>)>,
    o: &StoredObject,
    p: &PortSpec,
    representor: Option<&str>,
) -> Arc<PortDesc> {
    match old {
        Some((was, desc))
            if std::ptr::eq(&**was, o) && desc.representor.as_deref() == representor =>
        {
            desc.clone()
        }
        Some((_, desc)) => {
            // Another version of the object (its status moved, say), or its
            // function's representor moved: the old description if nothing
            // it holds changed.
            let built = port_desc(o, p, representor);
            if **desc == built {
                desc.clone()
            } else {
                Arc::new(built)
            }
        }
        None => Arc::new(port_desc(o, p, representor)),
    }
}

/// Takes port `was`'s `(representor, id)` out of `set` and puts `now`'s in.
fn represent(
    set: &mut OrdSet<(String, String)>,
    was: Option<&Arc<PortDesc>>,
    now: Option<&Arc<PortDesc>>,
) {
    let entry = |p: &Arc<PortDesc>| Some((p.representor.clone()?, p.id.clone()));
    if let Some(e) = was.and_then(entry) {
        set.remove(&e);
    }
    if let Some(e) = now.and_then(entry) {
        set.insert(e);
    }
}

/// The kinds the desired networking is derived from.
const INPUT_KINDS: [Kind; 4] = [Kind::Network, Kind::Port, Kind::Endpoint, Kind::Function];

impl Index {
    /// The desired networking (validated objects that are not being
    /// deleted), each port with its function's representor, from the store
    /// with an optional overlay object (replacing or, when the flag is
    /// true, removing the stored one). Unchanged ports share their
    /// descriptions with `old`'s.
    fn build(store: &Store, overlay: Overlay<'_>, old: Option<&Index>) -> Index {
        let revision = store.revision();
        let list = |kind: Kind| -> Vec<Arc<StoredObject>> {
            let mut objs: Vec<Arc<StoredObject>> = store
                .list(kind, None)
                .into_iter()
                .filter(|o| overlay.is_none_or(|(ov, _)| ov.kind() != kind || ov.id != o.id))
                .collect();
            if let Some((ov, removed)) = overlay
                && ov.kind() == kind
                && !removed
            {
                objs.push(Arc::new(ov.clone()));
            }
            objs.retain(|o| !o.deleting);
            objs
        };
        let mut index = Index {
            revision,
            ..Index::default()
        };
        for o in list(Kind::Network) {
            index
                .networks
                .extend(network_desc(&o).map(|n| (o.id.clone(), n)));
        }
        for o in list(Kind::Function) {
            if let Some(rep) = &o.status.facts.representor {
                index.representors.insert(o.id.clone(), rep.clone());
            }
        }
        for o in list(Kind::Port) {
            let Some(p) = port_spec(&o) else {
                continue;
            };
            let representor = index.representors.get(&p.function).map(String::as_str);
            let was = old.and_then(|old| old.ports.get(&o.id));
            let desc = shared_port_desc(was, &o, p, representor);
            index
                .ports_of
                .entry(p.function.clone())
                .or_default()
                .insert(o.id.clone());
            index
                .ports_in
                .entry(p.network.clone())
                .or_default()
                .insert(o.id.clone());
            index.represent(None, Some(&desc));
            index.ports.insert(o.id.clone(), (o, desc));
        }
        let networks: Vec<String> = index.ports_in.keys().cloned().collect();
        index.regroup(networks.iter());
        for o in list(Kind::Endpoint) {
            index
                .endpoints
                .extend(endpoint_desc(&o).map(|e| (o.id.clone(), e)));
        }
        index
    }

    /// Applies the store's objects of `keys` (changed since this index's
    /// revision) and moves it to `revision`. Returns the networks whose
    /// inputs changed: those of the networks, ports and endpoints (before
    /// and after) whose description changed, came or went, and of the
    /// ports whose function's representor changed.
    fn patch(&mut self, store: &Store, revision: u64, keys: &[ObjectKey]) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for key in keys {
            let obj = store.get(key).filter(|o| !o.deleting);
            match key.kind {
                Kind::Network => {
                    let now = obj.as_deref().and_then(network_desc);
                    if self.networks.get(&key.id) != now.as_ref() {
                        changed.insert(key.id.clone());
                        match now {
                            Some(n) => self.networks.insert(key.id.clone(), n),
                            None => self.networks.remove(&key.id),
                        };
                    }
                }
                Kind::Endpoint => {
                    let now = obj.as_deref().and_then(endpoint_desc);
                    let was = self.endpoints.get(&key.id);
                    if was != now.as_ref() {
                        changed.extend(was.map(|e| e.network.clone()));
                        changed.extend(now.as_ref().map(|e| e.network.clone()));
                        match now {
                            Some(e) => self.endpoints.insert(key.id.clone(), e),
                            None => self.endpoints.remove(&key.id),
                        };
                    }
                }
                Kind::Function => {
                    let now = obj.and_then(|o| o.status.facts.representor.clone());
                    if self.representors.get(&key.id) == now.as_ref() {
                        continue;
                    }
                    for id in self.ports_of.get(&key.id).into_iter().flatten() {
                        if let Some((o, desc)) = self.ports.get_mut(id)
                            && let Some(p) = port_spec(o)
                        {
                            let built = port_desc(o, p, now.as_deref());
                            if **desc != built {
                                changed.insert(desc.network.clone());
                                let built = Arc::new(built);
                                represent(&mut self.by_representor, Some(desc), Some(&built));
                                *desc = built;
                            }
                        }
                    }
                    match now {
                        Some(rep) => self.representors.insert(key.id.clone(), rep),
                        None => self.representors.remove(&key.id),
                    };
                }
                Kind::Port => {
                    let was = self.ports.remove(&key.id);
                    self.represent(was.as_ref().map(|(_, d)| d), None);
                    if let Some(p) = was.as_ref().and_then(|(o, _)| port_spec(o)) {
                        for (map, at) in [
                            (&mut self.ports_of, &p.function),
                            (&mut self.ports_in, &p.network),
                        ] {
                            if let Some(ids) = map.get_mut(at) {
                                ids.remove(&key.id);
                                if ids.is_empty() {
                                    map.remove(at);
                                }
                            }
                        }
                    }
                    let now = obj.and_then(|o| {
                        let p = port_spec(&o)?;
                        let representor = self.representors.get(&p.function).map(String::as_str);
                        let desc = shared_port_desc(was.as_ref(), &o, p, representor);
                        for (map, at) in [
                            (&mut self.ports_of, &p.function),
                            (&mut self.ports_in, &p.network),
                        ] {
                            map.entry(at.clone()).or_default().insert(key.id.clone());
                        }
                        Some((o, desc))
                    });
                    let was = was.map(|(_, d)| d);
                    if was.as_ref() != now.as_ref().map(|(_, d)| d) {
                        changed.extend(was.map(|d| d.network.clone()));
                        changed.extend(now.as_ref().map(|(_, d)| d.network.clone()));
                    }
                    if let Some(now) = now {
                        self.represent(None, Some(&now.1));
                        self.ports.insert(key.id.clone(), now);
                    }
                }
                _ => {}
            }
        }
        self.regroup(changed.iter());
        self.revision = revision;
        changed
    }

    /// Takes port `was`'s representor out of `by_representor` and puts
    /// `now`'s in.
    fn represent(&mut self, was: Option<&Arc<PortDesc>>, now: Option<&Arc<PortDesc>>) {
        represent(&mut self.by_representor, was, now);
    }

    /// Makes `by_network`'s entries of `networks` their ports' descriptions.
    fn regroup<'a>(&mut self, networks: impl Iterator<Item = &'a String>) {
        for n in networks {
            match self.ports_in.get(n) {
                Some(ids) => {
                    let ports: Vec<Arc<PortDesc>> = ids
                        .iter()
                        .filter_map(|id| self.ports.get(id).map(|(_, d)| d.clone()))
                        .collect();
                    self.by_network.insert(n.clone(), ports.into());
                }
                None => {
                    self.by_network.remove(n);
                }
            }
        }
    }

    /// Its ports by network, shared with the index (a copy of the map).
    fn by_network(&self) -> Arc<PortsByNetwork> {
        Arc::new(self.by_network.clone())
    }

    /// The desired networking this holds, in id order.
    fn networking(&self) -> DesiredNetworking {
        DesiredNetworking {
            networks: self.networks.values().cloned().collect(),
            ports: self.ports.values().map(|(_, d)| d.clone()).collect(),
            endpoints: self.endpoints.values().cloned().collect(),
            ..DesiredNetworking::default()
        }
    }
}

/// The desired networking (see [`Index::build`]) from the store with an
/// optional overlay object.
fn desired_from_store(store: &Store, overlay: Overlay<'_>) -> DesiredNetworking {
    Index::build(store, overlay, None).networking()
}

/// The controller of one kind over the shared backend.
#[derive(Debug)]
pub struct NetworkController {
    kind: Kind,
    backend: Arc<NetworkBackend>,
}

fn owner_kind(kind: Kind) -> OwnerKind {
    match kind {
        Kind::Network => OwnerKind::Network,
        Kind::Endpoint => OwnerKind::Endpoint,
        _ => OwnerKind::Port,
    }
}

impl NetworkController {
    /// A port whose representor was just added to the bridge has no ofport
    /// until ovs-vswitchd assigns one; the switch reconciler programs it on
    /// the replica change that follows. Wait (briefly) for that report
    /// rather than answering Pending and looking again a second later.
    async fn without_pending(
        &self,
        id: &str,
        version: u64,
        report: Arc<SwitchReport>,
    ) -> Arc<SwitchReport> {
        let pending = |r: &SwitchReport| r.ports.get(id).is_none_or(|p| p.pending.is_some());
        if !pending(&report) {
            return report;
        }
        let mut rx = self.backend.switch.subscribe();
        let found = tokio::time::timeout(
            PENDING_RETRY,
            rx.wait_for(|r| r.version >= version && r.programmed && !pending(r)),
        )
        .await;
        match found {
            Ok(Ok(r)) => r.clone(),
            _ => report,
        }
    }
}

/// The status of a network, port or endpoint (`kind`) from the switch's
/// report about an input that included the store's current networking:
/// pure. Not programmed: a `SwitchUnavailable` error; deleting: finalized;
/// a port without flows yet: `Pending` with `RepresentorMissing`; else
/// `Ready` with `Programmed=True` and the flows (and, for a port, its ofport
/// and datapath flows) in the typed report.
fn status_for(
    kind: Kind,
    obj: &StoredObject,
    report: &SwitchReport,
) -> Result<Outcome, ReconcileError> {
    let mut status = obj.status.clone();
    if !report.programmed {
        return Err(ReconcileError {
            reason: Reason::SwitchUnavailable,
            message: report.error.as_deref().map_or_else(
                || "the switch has not been programmed yet".into(),
                |e| error_chain(e),
            ),
        });
    }
    if obj.deleting {
        return Ok(Outcome::finalized(status));
    }
    let flows = report.flows_of(owner_kind(kind), &obj.id) as u64;
    if kind == Kind::Port {
        let port = report.ports.get(&obj.id).cloned().unwrap_or_default();
        // What the datapath says of the flows entering from this port
        // (read over unixctl every 2 s, written at the port's reconcile).
        // Before the switch's first read since the agent started, the
        // stored figures stand: a restart does not rewrite every port as
        // unknown (a write, and an event to every watcher, per port).
        let datapath = if report.datapath_read {
            PortReport {
                datapath_flows: port.datapath.map(|dp| dp.total as u64),
                offloaded_flows: port.datapath.map(|dp| dp.offloaded as u64),
                offloaded: port
                    .datapath
                    .map(|dp| dp.total > 0 && dp.offloaded == dp.total),
                ..PortReport::default()
            }
        } else {
            obj.status.report::<PortReport>()
        };
        status.set_report(&PortReport {
            flows,
            ofport: port.ofport,
            ..datapath
        });
        if let Some(why) = port.pending {
            set_programmed(
                &mut status,
                Phase::Pending,
                ConditionStatus::False,
                Reason::RepresentorMissing,
                format!(
                    "no flows yet: {why}; the port is programmed as soon as its function's representor is on the bridge"
                ),
            );
            return Ok(Outcome {
                status,
                finalized: false,
                requeue_after: Some(PENDING_RETRY),
            });
        }
    } else {
        status.set_report(&FlowsReport { flows });
    }
    set_programmed(
        &mut status,
        Phase::Ready,
        ConditionStatus::True,
        Reason::FlowsInstalled,
        format!(
            "{flows} flows acknowledged by the switch (tables {}-{})",
            pipeline::table::CLASSIFY,
            pipeline::table::OUTPUT
        ),
    );
    Ok(Outcome {
        status,
        finalized: false,
        requeue_after: None,
    })
}

/// The status of an object while the switch has not processed the input
/// that includes it (`report` is about an older one): `Pending` (or still
/// `Deleting`) with `SwitchBusy`, looked at again shortly. Pure.
fn busy_status(obj: &StoredObject, report: &SwitchReport) -> Outcome {
    let mut status = obj.status.clone();
    status.phase = if obj.deleting {
        Phase::Deleting
    } else {
        Phase::Pending
    };
    status.set_condition(condition(
        "Programmed",
        ConditionStatus::False,
        Reason::SwitchBusy,
        format!(
            "the switch reconciler has not processed this change within {SWITCH_WAIT:?}; {}",
            report
                .error
                .as_deref()
                .map_or_else(|| "still working".into(), |e| error_chain(e))
        ),
    ));
    Outcome {
        status,
        finalized: false,
        requeue_after: Some(PENDING_RETRY),
    }
}

impl Controller for NetworkController {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            let version = self.backend.sync(&ctx.store);
            let report = self
                .backend
                .switch
                .wait_for_version(version, SWITCH_WAIT)
                .await;
            if report.version < version {
                return Ok(busy_status(obj, &report));
            }
            // A port whose function has no representor yet is not waited
            // for: its function's reconcile, which names the representor,
            // may be queued behind it in the engine (ports applied with
            // their functions waited 1 s each, one at a time).
            let report = if self.kind == Kind::Port
                && !obj.deleting
                && self.backend.has_representor(&obj.id)
            {
                self.without_pending(&obj.id, version, report).await
            } else {
                report
            };
            status_for(self.kind, obj, &report)
        })
    }

    fn plan(&self, ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String> {
        if outcome == WriteOutcome::Unchanged {
            return Vec::new();
        }
        let removed = outcome == WriteOutcome::Deleted;
        let networking = desired_from_store(&ctx.store, Some((obj, removed)));
        let all = self.backend.switch.plan(&SwitchInput {
            version: 0,
            networking,
            by_network: None,
            by_representor: Default::default(),
            changed: None,
        });
        let cookie = format!("{:#x}", pipeline::cookie(owner_kind(self.kind), &obj.id));
        let owner = format!("{}/{}", owner_kind(self.kind).name(), obj.id);
        let mine: Vec<String> = all
            .into_iter()
            .filter(|l| {
                l.contains(&cookie)
                    || l.contains(&owner)
                    || l.starts_with(&format!("port {}:", obj.id))
                    || (self.kind == Kind::Network && l.contains("tunnel/"))
            })
            .collect();
        if mine.is_empty() {
            vec!["nothing to change on the switch".to_string()]
        } else {
            mine
        }
    }

    fn backend(&self) -> Option<(String, bool)> {
        let r = self.backend.switch.report();
        Some(("ovs".to_string(), r.ovsdb_connected && r.openflow_connected))
    }

    fn metrics(&self, out: &mut String) {
        // Written once, by the Network controller (the three share the switch).
        if self.kind != Kind::Network {
            return;
        }
        use std::fmt::Write as _;
        let r = self.backend.switch.report();
        let wanted = self.backend.switch.input_version();
        let flows: usize = r.flows.values().sum();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP dpu_agent_switch_{name} {help}\n# TYPE dpu_agent_switch_{name} {kind}\ndpu_agent_switch_{name} {value}"
            );
        };
        metric(
            "flow_mods_total",
            "counter",
            "flow_mods sent to the bridge since the agent started.",
            r.flow_mods_sent,
        );
        metric(
            "bundles_total",
            "counter",
            "OpenFlow bundles committed since the agent started.",
            r.bundles,
        );
        metric(
            "flows",
            "gauge",
            "Flows the agent owns on the bridge, as last acknowledged.",
            flows as u64,
        );
        metric(
            "input_version",
            "gauge",
            "Version of the desired state last handed to the switch reconciler.",
            wanted,
        );
        metric(
            "converged",
            "gauge",
            "1 when the switch acknowledged every flow of the latest desired state.",
            u64::from(r.programmed && r.version == wanted && wanted > 0),
        );
        // Per datapath: a nonzero `lost` rate means packets that needed
        // ovs-vswitchd (first packets of new flows) are dropped.
        crate::metrics::header(
            out,
            "dpu_agent_switch_datapath_lookups_total",
            "counter",
            "Packets each datapath looked up, by result: hit (a datapath flow matched), missed (sent up to ovs-vswitchd), lost (needed ovs-vswitchd and dropped). Counted by the datapath since it was created.",
        );
        for d in r.datapaths.iter() {
            for (result, n) in [("hit", d.hit), ("missed", d.missed), ("lost", d.lost)] {
                crate::metrics::sample(
                    out,
                    "dpu_agent_switch_datapath_lookups_total",
                    &[("datapath", &d.datapath), ("result", result)],
                    n,
                );
            }
        }
        use crate::metrics::Histogram;
        use net_offload::switch::DURATION_BUCKETS;
        let nanos = |d: &net_offload::switch::Durations| d.sum_nanos as f64 / 1e9;
        Histogram::from_parts(
            DURATION_BUCKETS,
            &r.bundle_durations.counts,
            nanos(&r.bundle_durations),
        )
        .render_family(
            out,
            "dpu_agent_switch_bundle_duration_seconds",
            "Time one OpenFlow bundle took, sent to committed or refused.",
        );
        Histogram::from_parts(
            DURATION_BUCKETS,
            &r.ovsdb_transaction_durations.counts,
            nanos(&r.ovsdb_transaction_durations),
        )
        .render_family(
            out,
            "dpu_agent_switch_ovsdb_transaction_duration_seconds",
            "Time one OVSDB transaction of the switch reconciler took.",
        );
        let (built, built_cpu) = self
            .backend
            .last
            .lock()
            .map(|l| (l.built.clone(), l.built_cpu.clone()))
            .unwrap_or_default();
        phase_family(
            out,
            "dpu_agent_switch_phase_seconds",
            "Where the network controllers' and the switch reconciler's time went, by pass (change, periodic) and phase.",
            &built,
            &SwitchPhase::ALL,
            |pass, phase| r.phase(pass, phase),
        );
        phase_family(
            out,
            "dpu_agent_switch_phase_cpu_seconds",
            "The CPU time of the phases that compute without I/O (input, compile, diff), by pass: their wall time without the waits for a core.",
            &built_cpu,
            &[SwitchPhase::Compile, SwitchPhase::Diff],
            |pass, phase| r.phase_cpu(pass, phase),
        );
    }
}

/// One histogram family of phases: the input phase (`input`, change
/// passes) and `phases` of the switch's passes of either kind, as `of`
/// gives them.
fn phase_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    input: &'a Durations,
    phases: &[SwitchPhase],
    of: impl Fn(Pass, SwitchPhase) -> &'a Durations,
) {
    crate::metrics::header(out, name, "histogram", help);
    let series = std::iter::once((Pass::Change, "input", input)).chain(
        Pass::ALL
            .into_iter()
            .flat_map(|pass| phases.iter().map(move |phase| (pass, *phase)))
            .map(|(pass, phase)| (pass, phase.as_str(), of(pass, phase))),
    );
    for (pass, phase, d) in series {
        crate::metrics::Histogram::from_parts(
            net_offload::switch::DURATION_BUCKETS,
            &d.counts,
            d.sum_nanos as f64 / 1e9,
        )
        .render(out, name, &[("pass", pass.as_str()), ("phase", phase)]);
    }
}

/// `controllers` with the network controllers (Network, Port, Endpoint over
/// one switch reconciler) in place of whatever served those kinds, when the
/// OVSDB socket of `cfg` is reachable; otherwise those kinds stay `Pending`
/// with a condition saying why. Must be called inside the tokio runtime.
pub fn with_configured(
    cfg: &Config,
    mut controllers: Vec<Arc<dyn Controller>>,
) -> Vec<Arc<dyn Controller>> {
    const KINDS: [Kind; 3] = [Kind::Network, Kind::Port, Kind::Endpoint];
    let db = &cfg.ovs.db;
    let reachable = match db.strip_prefix("unix:") {
        Some(path) => std::path::Path::new(path).exists(),
        // tcp: the reconciler connects, and reconnects, by itself.
        None => true,
    };
    let backend = if reachable {
        NetworkBackend::start(&cfg.ovs)
    } else {
        Err(BackendStartError::NoOvsdbSocket { db: db.clone() })
    };
    controllers.retain(|c| !KINDS.contains(&c.kind()));
    match backend {
        Ok(backend) => {
            tracing::info!(db = %db, bridge = %cfg.ovs.bridge, "network controllers drive Open vSwitch");
            controllers.extend(backend.controllers());
        }
        Err(e) => {
            let why = error_chain(&e);
            tracing::warn!(db = %db, "networks, ports and endpoints stay Pending: {why}");
            for kind in KINDS {
                controllers.push(Arc::new(Unavailable::new(
                    kind,
                    "network (net-offload: OVSDB/OpenFlow)",
                    why.clone(),
                )));
            }
        }
    }
    controllers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use dpu_api::object::{EventType, ObjectKey};
    use net_offload::pipeline::OwnedFlow;
    use net_offload::switch::OrdMap;
    use net_offload::switch::PortReport as SwitchPortReport;
    use net_offload::switch::plan::{
        BridgePlan, SwitchPlan, desired_ports, plan_meters, plan_ports, resolve_ofports,
    };

    use crate::reconcile::testing;
    use crate::store::StoreError;

    /// An in-memory switch: every input is recorded and answered at once
    /// with the report `respond` builds from it; `plan` runs the real pure
    /// planners against an empty bridge.
    #[derive(Debug)]
    struct FakeSwitch {
        reports: watch::Sender<Arc<SwitchReport>>,
        inputs: Arc<Mutex<Vec<SwitchInput>>>,
        respond: fn(&SwitchInput) -> SwitchReport,
    }

    impl Switch for FakeSwitch {
        fn set_input(&self, input: Arc<SwitchInput>) {
            self.reports.send_replace(Arc::new((self.respond)(&input)));
            self.inputs.lock().unwrap().push((*input).clone());
        }

        fn input_version(&self) -> u64 {
            self.inputs.lock().unwrap().last().map_or(0, |i| i.version)
        }

        fn report(&self) -> Arc<SwitchReport> {
            self.reports.borrow().clone()
        }

        fn subscribe(&self) -> watch::Receiver<Arc<SwitchReport>> {
            self.reports.subscribe()
        }

        /// Reports are published as the input arrives: whatever is there
        /// now is all there will be (no waiting out the timeout).
        fn wait_for_version(&self, _: u64, _: Duration) -> BoxFuture<'_, Arc<SwitchReport>> {
            let report = self.report();
            Box::pin(async move { report })
        }

        fn plan(&self, input: &SwitchInput) -> Vec<String> {
            let (ports, compiled) = compile(input);
            SwitchPlan {
                bridge: BridgePlan::default(),
                ports,
                meters: plan_meters(&compiled.meters, &BTreeMap::new()),
                flows: pipeline::plan_flows(
                    compiled.flows.iter().map(|f: &OwnedFlow| &f.flow),
                    &[],
                ),
                skipped_ports: compiled.skipped_ports,
            }
            .describe("br-int")
        }
    }

    /// Representor `pf0vfN` has ofport `10 + N` on the fake bridge.
    fn ofport_of(representor: &str) -> Option<u32> {
        Some(10 + representor.strip_prefix("pf0vf")?.parse::<u32>().ok()?)
    }

    /// What the fake bridge would get for `input`: the ports to add and the
    /// compiled flows and meters.
    fn compile(
        input: &SwitchInput,
    ) -> (
        net_offload::switch::plan::PortPlan,
        pipeline::CompiledPipeline,
    ) {
        let ports = plan_ports(&desired_ports(&input.networking), &[]);
        let ofports: BTreeMap<String, u32> = input
            .networking
            .ports
            .iter()
            .filter_map(|p| p.representor.as_ref())
            .filter_map(|r| Some((r.clone(), ofport_of(r)?)))
            .collect();
        let resolved = resolve_ofports(&input.networking, &ofports);
        (ports, pipeline::compile(&resolved))
    }

    /// The report of a switch that programmed `input` fully: its flows per
    /// owner, each port's ofport and flow count, and why a port without a
    /// representor has none.
    fn converged(input: &SwitchInput) -> SwitchReport {
        let (_, compiled) = compile(input);
        let flows = compiled.flow_counts();
        let ports = input
            .networking
            .ports
            .iter()
            .map(|p| {
                let rep = p.representor.as_ref();
                let report = SwitchPortReport {
                    ofport: rep.and_then(|r| ofport_of(r)),
                    flows: flows
                        .get(&pipeline::Owner::new(OwnerKind::Port, &p.id))
                        .copied()
                        .unwrap_or(0),
                    pending: compiled.skipped_ports.get(&p.id).cloned(),
                    datapath: None,
                };
                (p.id.clone(), report)
            })
            .collect();
        SwitchReport {
            version: input.version,
            ovsdb_connected: true,
            openflow_connected: true,
            programmed: true,
            ports,
            flows: flows.into(),
            ..SwitchReport::default()
        }
    }

    /// Network `blue`; function `f1` with representor `pf0vf1` and `f2`
    /// without one yet; port `p1` on `f1`, `p2` on `f2`.
    fn store() -> (tempfile::TempDir, Context) {
        let (dir, ctx) = testing::context();
        let obj = |kind, id: &str, spec| StoredObject::from_json(None, kind, id, "acme", &spec);
        let mut f1 = obj(
            Kind::Function,
            "f1",
            serde_json::json!({"type": "net", "pf": "pf0"}),
        );
        f1.status.facts.representor = Some("pf0vf1".into());
        let port = |id: &str, function: &str, n: u8| {
            obj(
                Kind::Port,
                id,
                serde_json::json!({
                    "network": "blue", "function": function,
                    "mac": format!("02:00:00:00:00:0{n}"), "ips": [format!("10.7.0.{n}")]
                }),
            )
        };
        let objects = [
            obj(
                Kind::Network,
                "blue",
                serde_json::json!({"vni": 7, "cidr": "10.7.0.0/24", "encap": "vxlan"}),
            ),
            f1,
            obj(
                Kind::Function,
                "f2",
                serde_json::json!({"type": "net", "pf": "pf0"}),
            ),
            port("p1", "f1", 1),
            port("p2", "f2", 2),
        ];
        testing::put_all(&ctx, objects);
        (dir, ctx)
    }

    /// The controller of `kind` over a fake switch answering with
    /// `respond`, and the inputs the fake was handed.
    fn controller(
        kind: Kind,
        respond: fn(&SwitchInput) -> SwitchReport,
    ) -> (NetworkController, Arc<Mutex<Vec<SwitchInput>>>) {
        let inputs = Arc::new(Mutex::new(Vec::new()));
        let fake = FakeSwitch {
            reports: watch::channel(Arc::new(SwitchReport::default())).0,
            inputs: inputs.clone(),
            respond,
        };
        let backend = NetworkBackend::over(Box::new(fake), watch::channel(false).0);
        (NetworkController { kind, backend }, inputs)
    }

    /// The phase families: wall time of every phase, CPU time of input,
    /// compile and diff, each series once, for both kinds of pass; the
    /// input's after a reconcile built it.
    #[tokio::test]
    async fn metrics_have_the_phases_by_wall_and_cpu_time() {
        let (_dir, ctx) = store();
        let (c, _) = controller(Kind::Network, converged);
        c.reconcile(&ctx, &get(&ctx, Kind::Network, "blue"))
            .await
            .unwrap();
        let mut out = String::new();
        c.metrics(&mut out);
        let count = |needle: &str| out.lines().filter(|l| l.starts_with(needle)).count();
        for name in [
            "dpu_agent_switch_phase_seconds",
            "dpu_agent_switch_phase_cpu_seconds",
        ] {
            assert_eq!(count(&format!("# TYPE {name} histogram")), 1, "{out}");
            assert_eq!(
                count(&format!(
                    "{name}_count{{pass=\"change\",phase=\"input\"}} 1"
                )),
                1,
                "{out}"
            );
            for pass in ["change", "periodic"] {
                for phase in ["compile", "diff"] {
                    let series = format!("{name}_sum{{pass=\"{pass}\",phase=\"{phase}\"}}");
                    assert_eq!(count(&series), 1, "{series}\n{out}");
                }
            }
        }
        assert_eq!(
            count("dpu_agent_switch_phase_cpu_seconds_sum{pass=\"change\",phase=\"bundle\"}"),
            0,
            "no CPU time of I/O"
        );
        assert_eq!(
            count("dpu_agent_switch_phase_seconds_sum{pass=\"change\",phase=\"bundle\"}"),
            1
        );
    }

    fn get(ctx: &Context, kind: Kind, id: &str) -> StoredObject {
        testing::stored(&ctx.store, kind, id)
    }

    fn programmed(outcome: &Outcome) -> &dpu_api::object::Condition {
        outcome.status.condition("Programmed").unwrap()
    }

    /// A port whose function's representor is on the bridge is Ready with
    /// the flows and ofport the switch reported; the switch was handed the
    /// store's networking with that representor.
    #[tokio::test]
    async fn port_with_representor_on_the_bridge_is_ready() {
        let (_dir, ctx) = store();
        let (c, inputs) = controller(Kind::Port, converged);
        let out = c
            .reconcile(&ctx, &get(&ctx, Kind::Port, "p1"))
            .await
            .unwrap();
        assert_eq!(out.status.phase, Phase::Ready);
        assert_eq!(programmed(&out).status, ConditionStatus::True);
        assert_eq!(programmed(&out).reason, Reason::FlowsInstalled.as_str());
        let report: PortReport = out.status.report();
        assert_eq!(report.ofport, Some(11));
        assert!(report.flows > 0, "{report:?}");
        let input = inputs.lock().unwrap()[0].clone();
        assert_eq!(input.version, 1);
        let p1 = input
            .networking
            .ports
            .iter()
            .find(|p| p.id == "p1")
            .unwrap();
        assert_eq!(p1.representor.as_deref(), Some("pf0vf1"));
        assert_eq!(input.networking.ports.len(), 2);
    }

    /// The switch gets a new input only when the store's networking moved:
    /// reconciling a second object of an unchanged store hands nothing
    /// over; a new port does, with the next version.
    #[tokio::test]
    async fn the_switch_gets_an_input_only_when_the_store_moved() {
        let (_dir, ctx) = store();
        let (c, inputs) = controller(Kind::Port, converged);
        c.reconcile(&ctx, &get(&ctx, Kind::Port, "p1"))
            .await
            .unwrap();
        c.reconcile(&ctx, &get(&ctx, Kind::Port, "p2"))
            .await
            .unwrap();
        assert_eq!(inputs.lock().unwrap().len(), 1);
        testing::put(
            &ctx.store,
            "acme",
            Kind::Port,
            "p3",
            serde_json::json!({"network": "blue", "function": "f1", "mac": "02:00:00:00:00:03"}),
            false,
        );
        let out = c
            .reconcile(&ctx, &get(&ctx, Kind::Port, "p3"))
            .await
            .unwrap();
        assert_eq!(out.status.phase, Phase::Ready);
        let inputs = inputs.lock().unwrap();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[1].version, 2);
        assert_eq!(inputs[1].networking.ports.len(), 3);
    }

    /// A port whose function has no representor yet is Pending with
    /// `RepresentorMissing`, looked at again a second later, and its
    /// reconcile does not wait for the switch to program it (the engine
    /// works one object at a time, and the function that would name the
    /// representor may be queued behind the port): on the paused clock no
    /// time passes.
    #[tokio::test(start_paused = true)]
    async fn port_without_representor_is_pending() {
        let (_dir, ctx) = store();
        let (c, _) = controller(Kind::Port, converged);
        let started = tokio::time::Instant::now();
        let out = c
            .reconcile(&ctx, &get(&ctx, Kind::Port, "p2"))
            .await
            .unwrap();
        assert!(
            started.elapsed() < PENDING_RETRY,
            "waited {:?} for a port without representor",
            started.elapsed()
        );
        assert_eq!(out.status.phase, Phase::Pending);
        assert_eq!(programmed(&out).status, ConditionStatus::False);
        assert_eq!(programmed(&out).reason, Reason::RepresentorMissing.as_str());
        assert_eq!(out.requeue_after, Some(PENDING_RETRY));
        assert!(!out.finalized);
    }

    /// A switch that has not programmed the input is a retryable
    /// `SwitchUnavailable` error.
    #[tokio::test]
    async fn switch_not_programmed_is_switch_unavailable() {
        let (_dir, ctx) = store();
        let (c, _) = controller(Kind::Network, |input| SwitchReport {
            programmed: false,
            ..converged(input)
        });
        let err = c
            .reconcile(&ctx, &get(&ctx, Kind::Network, "blue"))
            .await
            .unwrap_err();
        assert_eq!(err.reason, Reason::SwitchUnavailable);
        assert!(err.message.contains("not been programmed"), "{err}");
    }

    /// A switch still on an older input leaves the object Pending with
    /// `SwitchBusy` (Deleting when it is being deleted, not finalized).
    #[tokio::test]
    async fn switch_behind_the_input_is_switch_busy() {
        let (_dir, ctx) = store();
        let behind = |input: &SwitchInput| SwitchReport {
            version: input.version - 1,
            ..converged(input)
        };
        let (c, _) = controller(Kind::Network, behind);
        let mut blue = get(&ctx, Kind::Network, "blue");
        let out = c.reconcile(&ctx, &blue).await.unwrap();
        assert_eq!(out.status.phase, Phase::Pending);
        assert_eq!(programmed(&out).reason, Reason::SwitchBusy.as_str());
        assert_eq!(out.requeue_after, Some(PENDING_RETRY));
        blue.deleting = true;
        let out = c.reconcile(&ctx, &blue).await.unwrap();
        assert_eq!(out.status.phase, Phase::Deleting);
        assert!(!out.finalized);
    }

    /// A port being deleted is finalized once the switch programmed an
    /// input without it.
    #[tokio::test]
    async fn deleting_port_is_finalized_once_the_switch_dropped_it() {
        let (_dir, ctx) = store();
        let mut p1 = get(&ctx, Kind::Port, "p1");
        p1.deleting = true;
        ctx.store
            .transact(|t| {
                t.put(p1.clone(), EventType::Modified);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let (c, inputs) = controller(Kind::Port, converged);
        let out = c.reconcile(&ctx, &p1).await.unwrap();
        assert!(out.finalized);
        let input = inputs.lock().unwrap().last().unwrap().clone();
        assert!(input.networking.ports.iter().all(|p| p.id != "p1"));
    }

    /// `plan` shows only the object's own lines of the switch's plan: a
    /// port its representor port and its flows, not the other port's; the
    /// network its tunnel port.
    #[test]
    fn plan_keeps_the_objects_own_lines() {
        let (_dir, ctx) = store();
        let (port, _) = controller(Kind::Port, converged);
        let p1 = get(&ctx, Kind::Port, "p1");
        let lines = port.plan(&ctx, &p1, WriteOutcome::Created);
        let mine = format!("{:#x}", pipeline::cookie(OwnerKind::Port, "p1"));
        let other = format!("{:#x}", pipeline::cookie(OwnerKind::Port, "p2"));
        assert!(lines.iter().any(|l| l.contains(&mine)), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ovsdb: insert Port+Interface pf0vf1 ")
                    && l.contains("port/p1")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .all(|l| !l.contains(&other) && !l.contains("p2")),
            "{lines:#?}"
        );
        let p2 = port.plan(&ctx, &get(&ctx, Kind::Port, "p2"), WriteOutcome::Created);
        assert!(p2.iter().all(|l| !l.contains(&mine)), "{p2:#?}");
        assert!(
            p2.iter().any(|l| l.starts_with("port p2: no flows yet")),
            "{p2:#?}"
        );

        let (network, _) = controller(Kind::Network, converged);
        let blue = get(&ctx, Kind::Network, "blue");
        let lines = network.plan(&ctx, &blue, WriteOutcome::Created);
        assert!(lines.iter().any(|l| l.contains("dpu-vxlan")), "{lines:#?}");
        assert!(lines.iter().all(|l| !l.contains(&mine)), "{lines:#?}");
        assert_eq!(
            network.plan(&ctx, &blue, WriteOutcome::Unchanged),
            Vec::<String>::new()
        );
    }

    /// A programmed report with `flows` flows for `owner` and, for port
    /// `p1`, `port`.
    fn report_with(owner: pipeline::Owner, flows: usize, port: SwitchPortReport) -> SwitchReport {
        SwitchReport {
            version: 3,
            programmed: true,
            ports: OrdMap::unit("p1".to_string(), port),
            flows: OrdMap::unit(owner, flows),
            datapath_read: true,
            ..SwitchReport::default()
        }
    }

    /// Port `p1` (no representor needed: `status_for` reads only the report).
    fn p1() -> StoredObject {
        StoredObject::from_json(
            None,
            Kind::Port,
            "p1",
            "acme",
            &serde_json::json!({"network": "blue", "function": "f1", "mac": "02:00:00:00:00:01"}),
        )
    }

    /// Port `p1`'s report from a switch that programmed it: ofport 7, 9
    /// flows, and `total` datapath flows of which `offloaded` offloaded.
    fn programmed_port(total: usize, offloaded: usize) -> SwitchPortReport {
        SwitchPortReport {
            ofport: Some(7),
            flows: 9,
            pending: None,
            datapath: Some(net_offload::unixctl::DatapathFlows { total, offloaded }),
        }
    }

    /// Status derivation (pure): a programmed port is Ready with its flows,
    /// ofport and datapath counts in the typed report; all datapath flows in
    /// hardware is `offloaded`.
    #[test]
    fn status_of_a_programmed_port() {
        let port = programmed_port(4, 4);
        let owner = pipeline::Owner::new(OwnerKind::Port, "p1");
        let out = status_for(Kind::Port, &p1(), &report_with(owner, 9, port)).unwrap();
        assert_eq!(out.status.phase, Phase::Ready);
        assert_eq!(out.requeue_after, None);
        let cond = out.status.condition("Programmed").unwrap();
        assert_eq!(
            (cond.status, cond.reason.as_str()),
            (ConditionStatus::True, Reason::FlowsInstalled.as_str())
        );
        assert!(cond.message.starts_with("9 flows acknowledged"), "{cond:?}");
        assert_eq!(
            out.status.report::<PortReport>(),
            PortReport {
                flows: 9,
                ofport: Some(7),
                datapath_flows: Some(4),
                offloaded_flows: Some(4),
                offloaded: Some(true),
            }
        );
    }

    /// Status derivation (pure): before the switch's first datapath read
    /// since start (a restarted agent), a port keeps the datapath figures
    /// its stored status has, so its status is unchanged and not rewritten;
    /// once a read ended, what it found stands, unknown included.
    #[test]
    fn datapath_figures_survive_a_restart_until_the_first_read() {
        let owner = pipeline::Owner::new(OwnerKind::Port, "p1");
        let port = programmed_port(3, 0);
        let mut before = p1();
        before.status = status_for(
            Kind::Port,
            &before,
            &report_with(owner.clone(), 9, port.clone()),
        )
        .unwrap()
        .status;
        assert_eq!(before.status.report::<PortReport>().datapath_flows, Some(3));

        // Restarted: the switch reprogrammed (nothing to change) but has
        // not read the datapath yet.
        let restarted = SwitchReport {
            datapath_read: false,
            ..report_with(
                owner.clone(),
                9,
                SwitchPortReport {
                    datapath: None,
                    ..port.clone()
                },
            )
        };
        let out = status_for(Kind::Port, &before, &restarted).unwrap();
        assert_eq!(
            out.status, before.status,
            "nothing to write after a restart"
        );

        // A read that could not say: unknown, and written as such.
        let unknown = report_with(
            owner,
            9,
            SwitchPortReport {
                datapath: None,
                ..port
            },
        );
        let out = status_for(Kind::Port, &before, &unknown).unwrap();
        let r = out.status.report::<PortReport>();
        assert_eq!(
            (
                r.datapath_flows,
                r.offloaded_flows,
                r.offloaded,
                r.flows,
                r.ofport
            ),
            (None, None, None, 9, Some(7))
        );
    }

    /// Status derivation (pure): a port the switch skipped is Pending with
    /// `RepresentorMissing` and the switch's reason in the message; a
    /// network is Ready with its flow count; deleting is finalized.
    #[test]
    fn status_of_pending_port_network_and_deletion() {
        let port = SwitchPortReport {
            pending: Some("no representor".into()),
            ..SwitchPortReport::default()
        };
        let owner = pipeline::Owner::new(OwnerKind::Network, "blue");
        let report = report_with(owner, 5, port);
        let out = status_for(Kind::Port, &p1(), &report).unwrap();
        assert_eq!(out.status.phase, Phase::Pending);
        assert_eq!(out.requeue_after, Some(PENDING_RETRY));
        let cond = out.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::RepresentorMissing.as_str());
        assert!(cond.message.contains("no representor"), "{cond:?}");
        assert_eq!(out.status.report::<PortReport>().flows, 0);

        let blue = StoredObject::from_json(
            None,
            Kind::Network,
            "blue",
            "acme",
            &serde_json::json!({"vni": 7, "cidr": "10.7.0.0/24", "encap": "vxlan"}),
        );
        let out = status_for(Kind::Network, &blue, &report).unwrap();
        assert_eq!(out.status.phase, Phase::Ready);
        assert_eq!(out.status.report::<FlowsReport>(), FlowsReport { flows: 5 });

        let mut gone = p1();
        gone.deleting = true;
        let out = status_for(Kind::Port, &gone, &report).unwrap();
        assert!(out.finalized);
        assert_eq!(out.status, gone.status);
    }

    /// Status derivation (pure): an unprogrammed switch is a
    /// `SwitchUnavailable` error, a lagging one `SwitchBusy` (Deleting kept
    /// for an object being deleted).
    #[test]
    fn status_while_the_switch_is_down_or_behind() {
        let report = SwitchReport::default();
        let err = status_for(Kind::Port, &p1(), &report).unwrap_err();
        assert_eq!(err.reason, Reason::SwitchUnavailable);
        assert_eq!(err.message, "the switch has not been programmed yet");

        let out = busy_status(&p1(), &report);
        assert_eq!(out.status.phase, Phase::Pending);
        let cond = out.status.condition("Programmed").unwrap();
        assert_eq!(
            (cond.status, cond.reason.as_str()),
            (ConditionStatus::False, Reason::SwitchBusy.as_str())
        );
        assert!(cond.message.ends_with("still working"), "{cond:?}");
        let mut gone = p1();
        gone.deleting = true;
        let out = busy_status(&gone, &report);
        assert_eq!((out.status.phase, out.finalized), (Phase::Deleting, false));
    }

    /// Builds and patches after one port's spec changed and another's
    /// status moved share every unchanged description with the input
    /// before (the same allocation, so the switch compares and frees them
    /// by pointer), including the port whose stored object is new but
    /// describes the same; they make a new one only for the changed spec
    /// or representor, and they equal a build without the index before.
    #[test]
    fn a_rebuild_shares_the_unchanged_ports() {
        let (_dir, ctx) = store();
        let port = |n: u8| {
            serde_json::json!({
                "network": "blue", "function": "f2",
                "mac": format!("02:00:00:00:00:0{n}"), "ips": [format!("10.7.0.{n}")]
            })
        };
        testing::put(&ctx.store, "acme", Kind::Port, "p3", port(3), false);
        let first = Index::build(&ctx.store, None, None);
        let before = first.networking();
        assert_eq!(before.ports.len(), 3);

        testing::put(&ctx.store, "acme", Kind::Port, "p2", port(9), false);
        ctx.store
            .transact(|t| {
                let mut status = testing::stored(&ctx.store, Kind::Port, "p3").status;
                status.phase = Phase::Ready;
                t.set_status(&ObjectKey::new(Kind::Port, "p3"), status);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        for after in [Index::build(&ctx.store, None, Some(&first)).networking(), {
            let (revision, keys) = ctx
                .store
                .changes_since(first.revision, &INPUT_KINDS)
                .unwrap();
            let mut index = first.clone();
            let changed = index.patch(&ctx.store, revision, &keys);
            assert_eq!(changed, BTreeSet::from(["blue".to_string()]));
            index.networking()
        }] {
            let ids: Vec<&str> = after.ports.iter().map(|p| p.id.as_str()).collect();
            assert_eq!(ids, ["p1", "p2", "p3"]);
            assert!(
                Arc::ptr_eq(&before.ports[0], &after.ports[0]),
                "p1 unchanged"
            );
            assert!(
                !Arc::ptr_eq(&before.ports[1], &after.ports[1]),
                "p2 changed"
            );
            assert_eq!(after.ports[1].mac, [2, 0, 0, 0, 0, 9]);
            assert!(
                Arc::ptr_eq(&before.ports[2], &after.ports[2]),
                "p3's status moved, its description did not"
            );
            assert_eq!(after, desired_from_store(&ctx.store, None));
        }
    }

    /// An index patched with the store's changed keys, write after write,
    /// holds what a build from the whole lists holds, and names at least
    /// every network the switch's walk of the two inputs finds changed;
    /// writes that change no description (a port's status) name none.
    #[test]
    fn a_patch_equals_a_build() {
        let (_dir, ctx) = store();
        let s = &ctx.store;
        let port = |function: &str, network: &str, n: u8| {
            serde_json::json!({
                "network": network, "function": function,
                "mac": format!("02:00:00:00:01:0{n}"), "ips": [format!("10.7.1.{n}")]
            })
        };
        let representor = |id: &str, rep: Option<&str>| {
            s.transact(|t| {
                let mut status = testing::stored(s, Kind::Function, id).status;
                status.facts.representor = rep.map(str::to_string);
                t.set_status(&ObjectKey::new(Kind::Function, id), status);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        };
        let remove = |kind: Kind, id: &str| {
            s.transact(|t| {
                t.remove(&ObjectKey::new(kind, id));
                Ok::<_, StoreError>(())
            })
            .unwrap();
        };
        let network =
            |vni: u32| serde_json::json!({"vni": vni, "cidr": "10.8.0.0/24", "encap": "vxlan"});
        let mut index = Index::build(s, None, None);
        let mut input = SwitchInput {
            networking: index.networking(),
            ..SwitchInput::default()
        };
        type Step<'a> = (&'static str, Box<dyn Fn() + 'a>);
        let steps: Vec<Step> = vec![
            (
                "a port on f1",
                Box::new(|| {
                    testing::put(s, "acme", Kind::Port, "p5", port("f1", "blue", 5), false)
                }),
            ),
            (
                "f2 gets a representor",
                Box::new(|| representor("f2", Some("pf0vf2"))),
            ),
            (
                "a network",
                Box::new(|| testing::put(s, "acme", Kind::Network, "red", network(77), false)),
            ),
            (
                "a port moves to it",
                Box::new(|| testing::put(s, "acme", Kind::Port, "p5", port("f1", "red", 5), false)),
            ),
            (
                "f1 loses its representor",
                Box::new(|| representor("f1", None)),
            ),
            (
                "a port's status",
                Box::new(|| {
                    s.transact(|t| {
                        let mut status = testing::stored(s, Kind::Port, "p1").status;
                        status.phase = Phase::Ready;
                        t.set_status(&ObjectKey::new(Kind::Port, "p1"), status);
                        Ok::<_, StoreError>(())
                    })
                    .unwrap();
                }),
            ),
            (
                "a function being deleted",
                Box::new(|| {
                    let mut f = testing::stored(s, Kind::Function, "f2");
                    f.deleting = true;
                    testing::put_all(&ctx, [f]);
                }),
            ),
            (
                "a port being deleted",
                Box::new(|| testing::put(s, "acme", Kind::Port, "p2", port("f2", "blue", 2), true)),
            ),
            ("a port removed", Box::new(|| remove(Kind::Port, "p1"))),
            (
                "a network removed",
                Box::new(|| remove(Kind::Network, "red")),
            ),
        ];
        for (what, step) in steps {
            step();
            let (revision, keys) = s.changes_since(index.revision, &INPUT_KINDS).expect(what);
            let changed = index.patch(s, revision, &keys);
            let now = SwitchInput {
                networking: index.networking(),
                ..SwitchInput::default()
            };
            assert_eq!(now.networking, desired_from_store(s, None), "{what}");
            let built = Index::build(s, None, None);
            assert_eq!(index.by_network, built.by_network, "{what}");
            assert_eq!(index.by_representor, built.by_representor, "{what}");
            let walked = now.changed_networks(&input).expect("ids ascending");
            assert!(walked.is_subset(&changed), "{what}: {walked:?} {changed:?}");
            if what == "a port's status" {
                assert!(changed.is_empty(), "{what}: {changed:?}");
            } else {
                assert!(!changed.is_empty(), "{what}");
            }
            input = now;
        }
    }

    /// A store that forgot the changes since a revision says so, and so
    /// does one opened after it; one that remembers names each changed key
    /// once.
    #[test]
    fn changes_since_a_forgotten_revision_is_none() {
        let (dir, ctx) = store();
        let revision = ctx.store.revision();
        assert_eq!(
            ctx.store.changes_since(revision, &INPUT_KINDS),
            Some((revision, Vec::new()))
        );
        let grey = |n: usize| {
            testing::put(
                &ctx.store,
                "acme",
                Kind::Network,
                "grey",
                serde_json::json!({"vni": 900 + n % 2, "cidr": "10.9.0.0/24", "encap": "vxlan"}),
                false,
            )
        };
        grey(0);
        grey(1);
        assert_eq!(
            ctx.store.changes_since(revision, &INPUT_KINDS),
            Some((revision + 2, vec![ObjectKey::new(Kind::Network, "grey")]))
        );
        assert_eq!(
            ctx.store.changes_since(revision, &[Kind::Port]),
            Some((revision + 2, Vec::new()))
        );
        for n in 0..crate::store::CHANGE_LOG {
            grey(n);
        }
        assert_eq!(ctx.store.changes_since(revision, &INPUT_KINDS), None);
        let now = ctx.store.revision();
        assert!(ctx.store.changes_since(now - 1, &INPUT_KINDS).is_some());
        drop(ctx);
        let reopened = Store::open(dir.path()).unwrap();
        assert_eq!(reopened.changes_since(now - 1, &INPUT_KINDS), None);
        assert_eq!(
            reopened.changes_since(now, &INPUT_KINDS),
            Some((now, Vec::new()))
        );
    }

    #[test]
    fn rules_come_from_the_typed_spec() {
        let r: SecurityRule = serde_json::from_value(serde_json::json!(
            {"protocol": "tcp", "cidr": "10.0.0.0/8", "ports": "1000-2000"}
        ))
        .unwrap();
        let d = rule(&r);
        assert_eq!(d.cidr, Some((Ipv4Addr::new(10, 0, 0, 0), 8)));
        assert_eq!(d.ports, Some((1000, 2000)));
    }

    #[test]
    fn mgmt_socket_next_to_the_db_socket() {
        assert_eq!(
            mgmt_socket("unix:/s/ovs/db.sock", "br-int"),
            PathBuf::from("/s/ovs/br-int.mgmt")
        );
        assert_eq!(
            mgmt_socket("tcp:127.0.0.1:6640", "br-int"),
            PathBuf::from("/var/run/openvswitch/br-int.mgmt")
        );
    }
}
