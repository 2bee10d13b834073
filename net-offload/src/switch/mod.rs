//! The switch reconciler: ONE task that owns the OVSDB and OpenFlow
//! connections of the integration bridge and converges it to the whole
//! desired networking state, level-triggered:
//!
//! 1. bridge (datapath type, `fail_mode=secure`, OpenFlow13+14) and
//!    `other_config:hw-offload` via OVSDB, only when the replica differs;
//! 2. representor and tunnel ports via OVSDB, added in one transaction and
//!    removed in one, each row marked with its owner;
//! 3. the flow set compiled by [`crate::pipeline`] (per network, only the
//!    networks whose inputs changed are recompiled), diffed against a dump
//!    in canonical form (or, when the switch holds exactly what the last
//!    pass installed, only the changed networks' flows against their
//!    previous ones), changes sent in ONE atomic bundle (meters first).
//!
//! It runs on every input change (coalesced), every OVSDB replica change or
//! new session (ovsdb-server restarted), and every `period` (a dump finds
//! flows deleted by hand and a restarted ovs-vswitchd, whose OpenFlow
//! connection broke and is re-made). Its [`SwitchReport`] says what is
//! really on the switch for which input version; the agent's controllers
//! turn it into status. See README.md, "Reconcile".

pub mod plan;
mod ports;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::openflow::{
    ErrorType, Flow, FlowStatsRequest, MeterCommand, MeterMod, OpenFlowClient, OpenFlowError,
};
use crate::ovsdb::{
    ClientConfig, Datum, Endpoint, Mutation, OvsdbClient, OvsdbError, RowError, Transaction,
    VswitchError, vswitch_monitor,
};
use crate::pipeline::{
    self, Changes, CompiledPipeline, DesiredNetworking, Encap, FlowPlan, IncrementalPipeline,
    Owner, OwnerKind, PortDesc, PortsByNetwork,
};
use plan::{
    BridgePlan, MeterPlan, MeterText, PortPlan, SwitchPlan, bridge_spec, plan_bridge, plan_meters,
    plan_meters_of, plan_ports_changed, plan_ports_of, port_ofport, resolve_ofports,
    tunnel_ofports, tunnel_port_name,
};
use ports::{BridgePorts, MovedOfports};

/// The persistent ordered map of [`SwitchReport`]'s `ports` and `flows`
/// (re-exported so users need no dependency of their own): cloning it is
/// O(1), and a change copies only the path to the entry it touches.
pub use imbl::{OrdMap, OrdSet};

/// `OFPMMFC_METER_EXISTS`.
const METER_EXISTS: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    pub db: Endpoint,
    pub bridge: String,
    pub datapath_type: String,
    pub hw_offload: bool,
    /// The bridge's OpenFlow management socket (`<rundir>/<bridge>.mgmt`).
    pub mgmt_socket: PathBuf,
    /// How often the flows are dumped and compared even without a change.
    pub period: Duration,
    /// Where ovs-vswitchd's control socket is (OVS's rundir, see
    /// [`crate::unixctl::vswitchd_socket`]): its datapath flows tell each
    /// port's datapath flow count and whether they are offloaded. `None`:
    /// not reported.
    pub rundir: Option<PathBuf>,
}

/// What the agent wants, with a version the report echoes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchInput {
    pub version: u64,
    /// Ports' `ofport` and `tunnel_ofports` are filled in by the reconciler
    /// (each port's `representor` is the input's).
    pub networking: DesiredNetworking,
    /// `networking`'s ports by network, when the maker of the input keeps
    /// them so (the agent does; it then promises the port ids strictly
    /// ascending): a pass that looks at some networks reads their ports
    /// alone. `None`: found by walking every port.
    pub by_network: Option<Arc<PortsByNetwork>>,
    /// With `by_network`: `(representor, port id)` of every port that has
    /// a representor (a persistent set: its maker keeps it and hands over
    /// a copy in constant time), so that a pass finds the ports of a
    /// representor without walking every port.
    pub by_representor: OrdSet<(String, String)>,
    /// Which networks' inputs alone differ from those of an earlier input
    /// (`None`: not said, every network is compared).
    pub changed: Option<InputChange>,
}

/// What differs between an input and input `since`: only the inputs of
/// `networks` (see [`IncrementalPipeline::update_networks`]; a port's
/// representor is one of its inputs). When the last successful
/// pass reached input `since`, a pass looks only at those networks: it
/// recompiles and diffs their segments and writes their ports' reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputChange {
    pub since: u64,
    pub networks: BTreeSet<String>,
}

impl SwitchInput {
    /// The networks whose inputs differ between `old` and this input
    /// ([`pipeline::changed_networks`]: a port whose representor changed
    /// is a changed port): what [`InputChange::networks`] says. `None` when
    /// ids are not strictly ascending (then only a whole comparison can
    /// tell).
    pub fn changed_networks(&self, old: &SwitchInput) -> Option<BTreeSet<String>> {
        pipeline::changed_networks(&old.networking, &self.networking)
    }

    /// Whether the port ids are strictly ascending: promised with
    /// `by_network`, else walked.
    pub fn ids_ascending(&self) -> bool {
        self.by_network.is_some() || self.networking.ports.windows(2).all(|w| w[0].id < w[1].id)
    }

    /// The ports of `networks`: those `by_network` lists, else every port
    /// whose network is one of them (in input order).
    pub fn ports_in<'a, S: std::borrow::Borrow<str> + Ord>(
        &'a self,
        networks: &'a BTreeSet<S>,
    ) -> Box<dyn Iterator<Item = &'a Arc<PortDesc>> + 'a> {
        match &self.by_network {
            Some(by) => Box::new(
                networks
                    .iter()
                    .filter_map(|n| by.get(n.borrow()))
                    .flat_map(|ports| ports.iter()),
            ),
            None => Box::new(
                self.networking
                    .ports
                    .iter()
                    .filter(|p| networks.contains(p.network.as_str())),
            ),
        }
    }

    /// The ports whose representor is `name`, in id order: from
    /// `by_representor` with `by_network`, else by walking every port.
    pub fn ports_of_representor<'a>(
        &'a self,
        name: &str,
    ) -> Box<dyn Iterator<Item = &'a Arc<PortDesc>> + 'a> {
        let name = name.to_string();
        if self.by_network.is_none() {
            return Box::new(
                self.networking
                    .ports
                    .iter()
                    .filter(move |p| p.representor.as_ref() == Some(&name)),
            );
        }
        let ports = &self.networking.ports;
        Box::new(
            self.by_representor
                .range((name.clone(), String::new())..)
                .take_while(move |(r, _)| *r == name)
                .filter_map(move |(_, id)| {
                    ports
                        .binary_search_by(|p| p.id.as_str().cmp(id))
                        .ok()
                        .map(|i| &ports[i])
                }),
        )
    }

    /// Whether `by_network` (when given) holds `networking`'s ports, by
    /// network in id order, those ids are strictly ascending, and
    /// `by_representor` holds their representors: what its maker promises
    /// (checked in debug builds).
    fn by_network_holds(&self) -> bool {
        let Some(by) = &self.by_network else {
            return true;
        };
        let representors: OrdSet<(String, String)> = self
            .networking
            .ports
            .iter()
            .filter_map(|p| Some((p.representor.clone()?, p.id.clone())))
            .collect();
        if representors != self.by_representor {
            return false;
        }
        let mut grouped: BTreeMap<&str, Vec<&Arc<PortDesc>>> = BTreeMap::new();
        for p in &self.networking.ports {
            grouped.entry(p.network.as_str()).or_default().push(p);
        }
        self.networking.ports.windows(2).all(|w| w[0].id < w[1].id)
            && grouped.len() == by.len()
            && grouped.iter().all(|(n, ports)| {
                by.get(*n).is_some_and(|b| {
                    b.len() == ports.len() && b.iter().zip(ports).all(|(a, b)| Arc::ptr_eq(a, b))
                })
            })
    }
}

/// Per-port result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortReport {
    pub ofport: Option<u32>,
    pub flows: usize,
    /// Why the port has no flows yet.
    pub pending: Option<String>,
    /// Datapath flows entering from the port's representor and how many of
    /// them the datapath says are offloaded; `None` while unknown.
    pub datapath: Option<crate::unixctl::DatapathFlows>,
}

/// What the last convergence reached. Published after every pass as a
/// clone whose size does not grow with the bridge: `ports` and `flows`
/// share their unchanged entries with the reconciler's copy, `applied` is
/// shared whole.
#[derive(Debug, Clone, Default)]
pub struct SwitchReport {
    /// The input version this report is about.
    pub version: u64,
    pub ovsdb_connected: bool,
    pub openflow_connected: bool,
    /// True when the switch acknowledged every flow of `version` (the bundle
    /// was committed, or a dump showed nothing to change).
    pub programmed: bool,
    /// The last failure, for the person on call (typed; the agent prints
    /// its chain into the network's status).
    pub error: Option<Arc<SwitchError>>,
    pub ports: OrdMap<String, PortReport>,
    /// Flows per owner as installed.
    pub flows: OrdMap<Owner, usize>,
    /// flow_mods sent since start (0 on a restart with nothing to change).
    pub flow_mods_sent: u64,
    /// Bundles committed since start.
    pub bundles: u64,
    /// How long each OpenFlow bundle took (sent to committed or refused).
    pub bundle_durations: Durations,
    /// How long each OVSDB transaction the reconciler sent took (bridge,
    /// `hw-offload`, ports added, ports removed).
    pub ovsdb_transaction_durations: Durations,
    /// Where the reconciler's time went, by kind of pass and [`Phase`]
    /// (`[pass][phase]`, see [`Pass::ALL`] and [`Phase::ALL`]).
    pub phases: [[Durations; Phase::ALL.len()]; Pass::ALL.len()],
    /// The CPU time of the same (the thread's, [`thread_cpu`]), for the
    /// phases that compute without I/O: `compile` (the pass's parts
    /// between its I/O) and `diff`. Unlike their wall time it leaves out
    /// the time the thread waited for a core, which on a DPU's few cores
    /// busy with ovs-vswitchd can be most of it.
    pub cpu: [[Durations; Phase::ALL.len()]; Pass::ALL.len()],
    /// Each datapath's lookup counters (hit, missed, lost) as ovs-vswitchd
    /// last reported them (`dpctl/show`, read with the datapath flows; empty
    /// while unknown): `lost` counts the packets that needed ovs-vswitchd
    /// and never reached it.
    pub datapaths: Arc<Vec<crate::unixctl::DatapathLookups>>,
    /// True once a read of the datapath has ended since the switch task
    /// started (whether or not it could read the flows). Until then each
    /// port's `datapath` is `None` for want of a read, not because the
    /// datapath could not say: a restarted agent keeps what it last
    /// reported rather than rewriting every port's status as unknown.
    pub datapath_read: bool,
    /// What the last pass that changed the switch sent, one line per
    /// operation in [`SwitchPlan::describe`]'s notation, each written once
    /// the switch accepted it (a failed pass lists what it got through).
    pub applied: Arc<Vec<String>>,
}

/// Why a pass ran: a change (input, OVSDB replica or session), or the
/// periodic check with nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Change,
    Periodic,
}

impl Pass {
    pub const ALL: [Pass; 2] = [Pass::Change, Pass::Periodic];

    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Change => "change",
            Pass::Periodic => "periodic",
        }
    }
}

/// One phase of the reconciler's time (a closed set, a metrics label).
/// Within a convergence pass the phases partition its wall time exactly:
/// `compile` is what is left once the others are taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The wait after an input change that follows a pass within 20 ms,
    /// so a burst is converged in one pass (2 ms).
    Debounce,
    /// Planning without I/O: ports to add or remove, the flow set compiled
    /// (only the networks whose inputs changed), the per-port report.
    Compile,
    /// The compiled flows diffed against the observed ones (only the
    /// changed networks' flows when the switch is believed).
    Diff,
    /// The bridge's ports and interfaces read (and parsed) from the OVSDB
    /// replica (skipped when no update was applied since the last read;
    /// only the rows changed since, when the replica can tell).
    Replica,
    /// OVSDB transactions (bridge, `hw-offload`, ports), sent to answered.
    Ovsdb,
    /// OpenFlow flow dump (a fresh connection or the periodic full check).
    Dump,
    /// OpenFlow meter mods.
    Meters,
    /// The OpenFlow bundle: open, flow_mods, commit, until the commit is
    /// acknowledged (the switch acks it after its barrier-like commit).
    Bundle,
    /// Idle, waiting for ovs-vswitchd to give ports the agent added an
    /// ofport (end of the pass that added them to the next pass). The
    /// switch's time, not the agent's.
    VswitchdWait,
    /// The periodic pass's flow count (`OFPMP_AGGREGATE`), until answered
    /// or abandoned for an input change.
    Check,
    /// Starting the periodic read of the datapath flows over unixctl (it
    /// runs on a task of its own; no pass waits for it).
    Datapath,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Debounce,
        Phase::Compile,
        Phase::Diff,
        Phase::Replica,
        Phase::Ovsdb,
        Phase::Dump,
        Phase::Meters,
        Phase::Bundle,
        Phase::VswitchdWait,
        Phase::Check,
        Phase::Datapath,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Debounce => "debounce",
            Phase::Compile => "compile",
            Phase::Diff => "diff",
            Phase::Replica => "replica",
            Phase::Ovsdb => "ovsdb",
            Phase::Dump => "dump",
            Phase::Meters => "meters",
            Phase::Bundle => "bundle",
            Phase::VswitchdWait => "vswitchd_wait",
            Phase::Check => "check",
            Phase::Datapath => "datapath",
        }
    }
}

impl SwitchReport {
    /// The durations of `phase` in passes of kind `pass`.
    pub fn phase(&self, pass: Pass, phase: Phase) -> &Durations {
        &self.phases[pass as usize][phase as usize]
    }

    /// The CPU time of `phase` in passes of kind `pass` (see
    /// [`SwitchReport::cpu`]).
    pub fn phase_cpu(&self, pass: Pass, phase: Phase) -> &Durations {
        &self.cpu[pass as usize][phase as usize]
    }
}

/// The CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`);
/// zero where it cannot be read. The difference of two readings is the
/// CPU a stretch of code without `.await` took.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Upper bounds in seconds of [`Durations`]' buckets: an OVSDB transaction or
/// a bundle of a few flows takes about a millisecond on an idle switch, a
/// bundle of thousands of flows on a loaded one up to seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Durations of one kind of operation since start, by [`DURATION_BUCKETS`]
/// (per bucket, not cumulative; the last slot is `+Inf`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durations {
    pub counts: Vec<u64>,
    pub sum_nanos: u64,
}

impl Durations {
    pub fn observe(&mut self, took: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let secs = took.as_secs_f64();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum_nanos = self
            .sum_nanos
            .saturating_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl SwitchReport {
    pub fn flows_of(&self, kind: OwnerKind, id: &str) -> usize {
        self.flows.get(&Owner::new(kind, id)).copied().unwrap_or(0)
    }
}

/// The switch as last observed, for planning without I/O.
#[derive(Debug, Clone, Default)]
struct Observed {
    /// The last flow dump; empty while `installed`.
    flows: Vec<Flow>,
    /// The flow set compiled per network, as the last pass planned it.
    pipeline: IncrementalPipeline,
    /// The switch holds exactly `pipeline`'s flows (the last pass
    /// installed them over this OpenFlow connection).
    installed: bool,
    /// The bridge's ports and ofports as last read from the OVSDB replica.
    ports: BridgePorts,
    /// Meters installed over the current OpenFlow connection.
    meters: BTreeMap<u32, MeterMod>,
}

/// A handle on the running reconciler.
#[derive(Debug, Clone)]
pub struct SwitchHandle {
    input: watch::Sender<Arc<SwitchInput>>,
    report: watch::Receiver<Arc<SwitchReport>>,
    observed: Arc<Mutex<Observed>>,
    config: Arc<SwitchConfig>,
    /// The reconciler's OVSDB client, for reading its replica.
    ovsdb: OvsdbClient,
}

impl Observed {
    /// The flows on the switch as last observed (a copy).
    fn switch_flows(&self) -> Vec<Flow> {
        if self.installed {
            self.pipeline.flows().map(|f| f.flow.clone()).collect()
        } else {
            self.flows.clone()
        }
    }

    fn switch_flow_count(&self) -> usize {
        if self.installed {
            self.pipeline.flow_count()
        } else {
            self.flows.len()
        }
    }
}

impl SwitchHandle {
    /// Starts the reconciler; it stops when `shutdown` turns true or every
    /// handle is dropped.
    pub fn spawn(config: SwitchConfig, shutdown: watch::Receiver<bool>) -> Self {
        let (input_tx, input_rx) = watch::channel(Arc::new(SwitchInput::default()));
        let (report_tx, report_rx) = watch::channel(Arc::new(SwitchReport::default()));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let config = Arc::new(config);
        let (datapath_tx, datapath_rx) = tokio::sync::mpsc::channel(1);
        let ovsdb = OvsdbClient::spawn(
            ClientConfig::new(config.db.clone()).with_monitor(vswitch_monitor()),
        );
        let task = Reconciler {
            config: config.clone(),
            ovsdb: ovsdb.clone(),
            openflow: None,
            prefetch: None,
            meters: BTreeMap::new(),
            observed: observed.clone(),
            report: SwitchReport::default(),
            report_tx,
            believed: false,
            last_ok: None,
            synced: None,
            port_base: None,
            replica_version: ovsdb.replica_changes(),
            replica_read: None,
            bridge_ok_at: None,
            ticks: 0,
            full_check_at: Instant::now(),
            full_check_took: Duration::ZERO,
            full_check_running: false,
            datapath: None,
            datapath_reading: false,
            datapath_tx,
            pass: Pass::Change,
            pass_timed: Duration::ZERO,
            pass_cpu: Duration::ZERO,
            awaiting_ofport: BTreeMap::new(),
            waiting_since: None,
            applied: Vec::new(),
            started: Instant::now(),
        };
        tokio::spawn(task.run(input_rx, shutdown, datapath_rx));
        SwitchHandle {
            input: input_tx,
            report: report_rx,
            observed,
            config,
            ovsdb,
        }
    }

    /// Hands over a new desired state (replacing any not yet processed);
    /// an `Arc` is handed over as it is, not copied.
    /// Nothing is changed on the switch before the first input (version ≥ 1).
    pub fn set_input(&self, input: impl Into<Arc<SwitchInput>>) {
        self.input.send_replace(input.into());
    }

    /// The version of the input last handed over.
    pub fn input_version(&self) -> u64 {
        self.input.borrow().version
    }

    pub fn report(&self) -> Arc<SwitchReport> {
        self.report.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<SwitchReport>> {
        self.report.clone()
    }

    /// Waits until a report about `version` or later exists.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> Arc<SwitchReport> {
        let mut rx = self.report.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| r.version >= version)).await;
        rx.borrow().clone()
    }

    /// What converging to `input` would change, against the switch as last
    /// observed (bridge row, ports, meters and flows): the same parts a
    /// pass executes, computed by the same functions. Pure. Flows of ports
    /// this plan adds need their ofports, which ovs-vswitchd assigns after
    /// the insert: they show as "no flows yet" and come with a later pass.
    pub fn plan_switch(&self, input: &SwitchInput) -> SwitchPlan {
        let observed = self.observed.lock().map(|o| o.clone()).unwrap_or_default();
        let bridge = bridge_plan(&self.ovsdb, &self.config);
        let (ports, compiled) = plan_all(&observed, input);
        let flows = pipeline::plan_flows(
            compiled.flows.iter().map(|f| &f.flow),
            &observed.switch_flows(),
        );
        SwitchPlan {
            bridge,
            ports,
            meters: plan_meters(&compiled.meters, &observed.meters),
            flows,
            skipped_ports: compiled.skipped_ports,
        }
    }

    /// [`SwitchHandle::plan_switch`] as lines ([`SwitchPlan::describe`]).
    pub fn plan(&self, input: &SwitchInput) -> Vec<String> {
        self.plan_switch(input).describe(&self.config.bridge)
    }
}

/// [`plan_bridge`] over the replica's bridge (without its ports, which it
/// does not read) and root rows.
fn bridge_plan(ovsdb: &OvsdbClient, config: &SwitchConfig) -> BridgePlan {
    let (bridge, root) = ovsdb.read_replica(|r| {
        (
            r.bridge_settings_by_name(&config.bridge).ok().flatten(),
            r.open_vswitch().ok().flatten(),
        )
    });
    plan_bridge(
        &bridge_spec(&config.bridge, &config.datapath_type),
        bridge.as_ref(),
        config.hw_offload,
        root.as_ref(),
    )
}

fn plan_all(observed: &Observed, input: &SwitchInput) -> (PortPlan, CompiledPipeline) {
    let ports = plan_ports_of(&input.networking, observed.ports.ports());
    let resolved = resolve_ofports(&input.networking, observed.ports.ofports());
    (ports, pipeline::compile(&resolved))
}

/// What the report says of one port.
#[derive(Clone, Copy)]
struct PortState<'a> {
    ofport: Option<u32>,
    flows: usize,
    pending: Option<&'a str>,
    datapath: Option<crate::unixctl::DatapathFlows>,
}

impl PortState<'_> {
    fn is(&self, r: &PortReport) -> bool {
        r.ofport == self.ofport
            && r.flows == self.flows
            && r.pending.as_deref() == self.pending
            && r.datapath == self.datapath
    }

    fn report(&self) -> PortReport {
        PortReport {
            ofport: self.ofport,
            flows: self.flows,
            pending: self.pending.map(str::to_string),
            datapath: self.datapath,
        }
    }
}

/// The pipeline's ports that got no flows, with why: a map by port id, or
/// the pipeline itself (which finds a port in its network's segment).
trait Skipped {
    fn skipped(&self, p: &PortDesc) -> Option<&str>;
}

impl Skipped for BTreeMap<String, String> {
    fn skipped(&self, p: &PortDesc) -> Option<&str> {
        self.get(&p.id).map(String::as_str)
    }
}

impl Skipped for IncrementalPipeline {
    fn skipped(&self, p: &PortDesc) -> Option<&str> {
        self.skipped_port(p)
    }
}

/// What the report says of port `p`: the ofport its flows match (none when
/// `skipped` names it: the pipeline's ports without flows, with why), its
/// flows (`owner` is a scratch key, so the lookup copies nothing), why it
/// has none, and what `datapath` (the datapath flows per representor, when
/// known) says of its representor.
fn port_state<'a>(
    p: &PortDesc,
    ofports: &BTreeMap<String, u32>,
    skipped: &'a impl Skipped,
    counts: &BTreeMap<Owner, usize>,
    datapath: Option<&BTreeMap<String, crate::unixctl::DatapathFlows>>,
    owner: &mut Owner,
) -> PortState<'a> {
    let skip = skipped.skipped(p);
    let ofport = if skip.is_some() {
        None
    } else {
        port_ofport(p, ofports)
    };
    let pending = skip.or_else(|| {
        p.representor
            .is_none()
            .then_some("its function has no representor yet")
    });
    owner.id.clear();
    owner.id.push_str(&p.id);
    PortState {
        ofport,
        flows: counts.get(owner).copied().unwrap_or(0),
        pending,
        datapath: datapath.map(|found| {
            p.representor
                .as_ref()
                .and_then(|rep| found.get(rep))
                .copied()
                .unwrap_or_default()
        }),
    }
}

/// Every input port's report (see [`port_state`]), built anew.
fn port_reports<'a>(
    input: &'a SwitchInput,
    ofports: &'a BTreeMap<String, u32>,
    skipped: &'a impl Skipped,
    counts: &'a BTreeMap<Owner, usize>,
    datapath: Option<&'a BTreeMap<String, crate::unixctl::DatapathFlows>>,
) -> impl Iterator<Item = (String, PortReport)> + 'a {
    let mut owner = Owner::new(OwnerKind::Port, String::new());
    input.networking.ports.iter().map(move |p| {
        let s = port_state(p, ofports, skipped, counts, datapath, &mut owner);
        (p.id.clone(), s.report())
    })
}

/// Makes `reports` what [`port_reports`] builds, in place: only the
/// entries that differ are written (a pass that changed one port copies
/// one port's report, not every port's). With `only`, of the ports of
/// those networks alone: when `reports` was synced to an input that
/// differs from this one (of distinct port ids) only in those networks'
/// inputs and segments, the other ports' reports are as they were; the
/// ports of those networks that left are the caller's to remove.
fn sync_port_reports(
    reports: &mut OrdMap<String, PortReport>,
    input: &SwitchInput,
    ofports: &BTreeMap<String, u32>,
    skipped: &impl Skipped,
    counts: &BTreeMap<Owner, usize>,
    datapath: Option<&BTreeMap<String, crate::unixctl::DatapathFlows>>,
    only: Option<&BTreeSet<String>>,
) {
    let mut owner = Owner::new(OwnerKind::Port, String::new());
    let ports = match only {
        Some(networks) => input.ports_in(networks),
        None => Box::new(input.networking.ports.iter()),
    };
    for p in ports {
        let s = port_state(p, ofports, skipped, counts, datapath, &mut owner);
        // Looked at before written: a write copies the entry's path even
        // when the value stays the same.
        match reports.get(&p.id) {
            Some(r) if s.is(r) => {}
            _ => {
                reports.insert(p.id.clone(), s.report());
            }
        }
    }
    if only.is_some() {
        // The same ports as before but for those of `only`'s networks,
        // which the caller removes when they left.
        return;
    }
    // Every input port is in `reports` now: as many entries as ports of
    // distinct ids means no other is.
    let ports = &input.networking.ports;
    let distinct = ports.windows(2).all(|w| w[0].id < w[1].id);
    if !distinct || reports.len() != ports.len() {
        let ids: BTreeSet<&str> = ports.iter().map(|p| p.id.as_str()).collect();
        let gone: Vec<String> = reports
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            reports.remove(&id);
        }
    }
}

/// Makes `target`'s entries of `owners` those of `counts` (none where
/// `counts` has none); the other entries are left as they are.
fn sync_owners<'a>(
    target: &mut OrdMap<Owner, usize>,
    counts: &BTreeMap<Owner, usize>,
    owners: impl Iterator<Item = &'a Owner>,
) {
    // A segment's flows come grouped by owner: each run looked at once.
    let mut last: Option<&Owner> = None;
    for o in owners {
        if last == Some(o) {
            continue;
        }
        last = Some(o);
        match counts.get(o) {
            Some(n) if target.get(o) == Some(n) => {}
            Some(n) => {
                target.insert(o.clone(), *n);
            }
            // Removing an absent key would still copy its path.
            None if target.contains_key(o) => {
                target.remove(o);
            }
            None => {}
        }
    }
}

/// The networks whose segments may have changed when only the ofports of
/// interfaces `names` moved: those of the ports whose representor is one
/// of them, and those of the encapsulation of a tunnel port among them.
fn networks_of_moved<'a>(input: &'a SwitchInput, names: &BTreeSet<String>) -> BTreeSet<&'a str> {
    let mut networks = BTreeSet::new();
    if names.is_empty() {
        return networks;
    }
    for encap in [Encap::Vxlan, Encap::Geneve] {
        if tunnel_port_name(encap).is_some_and(|t| names.contains(t)) {
            networks.extend(
                input
                    .networking
                    .networks
                    .iter()
                    .filter(|n| n.encap == encap)
                    .map(|n| n.id.as_str()),
            );
        }
    }
    for name in names {
        networks.extend(input.ports_of_representor(name).map(|p| p.network.as_str()));
    }
    networks
}

/// Makes `target` equal to `source`, writing only the entries that differ
/// (one ordered walk of both, nothing copied that is already there).
fn sync_map<K: Ord + Clone, V: PartialEq + Clone>(
    target: &mut OrdMap<K, V>,
    source: &BTreeMap<K, V>,
) {
    let mut set: Vec<(&K, &V)> = Vec::new();
    let mut remove: Vec<K> = Vec::new();
    let mut old = target.iter().peekable();
    let mut new = source.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                remove.push((*k).clone());
                old.next();
            }
            (None, Some((k, v))) => {
                set.push((k, v));
                new.next();
            }
            (Some((ko, vo)), Some((kn, vn))) => match ko.cmp(kn) {
                std::cmp::Ordering::Less => {
                    remove.push((*ko).clone());
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    set.push((kn, vn));
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if vo != vn {
                        set.push((kn, vn));
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
    for k in remove {
        target.remove(&k);
    }
    for (k, v) in set {
        target.insert(k.clone(), v.clone());
    }
}

/// The dump of a new OpenFlow connection, read while the agent starts (the
/// store, the engine's first input): a restart's first pass, which must
/// compare every flow, then starts from it. The flows can only have been
/// changed since by someone else, which the periodic checks find as they
/// find a change made just after any dump; and a dump older than
/// [`PREFETCH_FRESH`] when the first pass comes is read again. Aborted when
/// dropped.
struct Prefetch(
    tokio::task::JoinHandle<(OpenFlowClient, Result<Vec<Flow>, OpenFlowError>, Instant)>,
);

/// How old a prefetched dump may be for the first pass to use it (the
/// store and the replica of thousands of ports load in well under it).
const PREFETCH_FRESH: Duration = Duration::from_secs(2);

impl Prefetch {
    fn start(mut client: OpenFlowClient) -> Prefetch {
        Prefetch(tokio::spawn(async move {
            let dumped = client
                .dump_flows(&FlowStatsRequest::new(None, 0, 0))
                .await
                .map(|entries| entries.into_iter().map(|e| e.flow).collect());
            (client, dumped, Instant::now())
        }))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Reconciler {
    config: Arc<SwitchConfig>,
    ovsdb: OvsdbClient,
    openflow: Option<OpenFlowClient>,
    /// A dump of a new OpenFlow connection taken before the first input
    /// (the connection is in it until the first pass takes its result).
    prefetch: Option<Prefetch>,
    /// Meters installed over the current OpenFlow connection.
    meters: BTreeMap<u32, MeterMod>,
    observed: Arc<Mutex<Observed>>,
    report: SwitchReport,
    report_tx: watch::Sender<Arc<SwitchReport>>,
    /// The switch holds exactly the pipeline's flows this OpenFlow
    /// connection installed (the last pass succeeded): an input change is
    /// then diffed per changed network without a dump. Any failure or new
    /// connection clears it.
    believed: bool,
    /// The input version of the last successful pass.
    last_ok: Option<u64>,
    /// The input the last successful pass brought the pipeline and the
    /// report to (`None` after a failure: the next pass looks at all).
    synced: Option<Arc<SwitchInput>>,
    /// An input for which the port plan was empty, and the names of the
    /// bridge's Port rows that changed since: a pass plans only the names
    /// these and the input's [`InputChange`] can have touched.
    port_base: Option<PortBase>,
    /// The OVSDB replica's generation (every applied update bumps it).
    replica_version: watch::Receiver<u64>,
    /// The generation the bridge's ports were last read at.
    replica_read: Option<u64>,
    /// A generation at which the bridge row and `hw-offload` needed no
    /// change (the plan is a function of the replica and the config).
    bridge_ok_at: Option<u64>,
    /// Periodic passes since start (the datapath is read every
    /// [`DATAPATH_EVERY`]th).
    ticks: u64,
    /// When the last scheduled full check (a periodic pass that dumps and
    /// compares every flow) ended, or when the reconciler started.
    full_check_at: Instant,
    /// How long that check's pass took.
    full_check_took: Duration,
    /// The running pass is a scheduled full check.
    full_check_running: bool,
    /// Datapath flows per input port name, from the last successful query
    /// (every [`DATAPATH_EVERY`] periods); `None` while unknown.
    datapath: Option<BTreeMap<String, crate::unixctl::DatapathFlows>>,
    /// Whether a datapath read is running (on a task of its own: an
    /// ovs-vswitchd busy reconfiguring answers late, and a change must not
    /// wait for it).
    datapath_reading: bool,
    datapath_tx: tokio::sync::mpsc::Sender<DatapathRead>,
    /// The kind of the pass running, for [`Reconciler::timed`].
    pass: Pass,
    /// Time of the running convergence pass already put in a phase.
    pass_timed: Duration,
    /// CPU time of the running pass's `compile` parts so far.
    pass_cpu: Duration,
    /// Ports this reconciler added that have no ofport yet, with when
    /// (given up after [`OFPORT_WAIT_MAX`]: a port ovs-vswitchd cannot open
    /// never gets one).
    awaiting_ofport: BTreeMap<String, Instant>,
    /// When the last pass ended with `awaiting_ofport` not empty.
    waiting_since: Option<Instant>,
    /// What the running pass sent so far (see [`SwitchReport::applied`]).
    applied: Vec<String>,
    /// When the task started: a pass in its first [`FIRST_SESSION_GRACE`]
    /// waits for OVSDB's first session instead of reporting it down.
    started: Instant,
}

/// See [`Reconciler::port_base`].
#[derive(Debug)]
struct PortBase {
    input: Arc<SwitchInput>,
    names: BTreeSet<String>,
}

/// The wait that coalesces a burst of input changes into one pass ...
const DEBOUNCE: Duration = Duration::from_millis(2);

/// ... when the change came this soon after the last pass ended.
const BURST: Duration = Duration::from_millis(20);

/// How long after start a pass waits for OVSDB's first session rather than
/// report the switch down. A restarted agent's first pass starts while its
/// OVSDB client is still connecting (the flows are prefetched meanwhile);
/// failing it would turn every network `Degraded` for those milliseconds,
/// a status write and an event per object, and back again at the next pass.
const FIRST_SESSION_GRACE: Duration = Duration::from_secs(2);

/// How long a port added to the bridge counts as waiting for its ofport.
const OFPORT_WAIT_MAX: Duration = Duration::from_secs(10);

/// One read of the datapath over unixctl.
struct DatapathRead {
    /// The datapath flows per input port, or `None` when they could not be
    /// read.
    flows: Option<BTreeMap<String, crate::unixctl::DatapathFlows>>,
    /// Each datapath's lookup counters (empty when they could not be read).
    lookups: Vec<crate::unixctl::DatapathLookups>,
}

/// Datapath flows are read every this many periods (2 s).
const DATAPATH_EVERY: u64 = 4;

/// A periodic pass with nothing changed only counts the agent's flows
/// (`OFPMP_AGGREGATE`, one small reply); every this many periods it dumps
/// them all and compares contents (a flow modified by hand keeps the count)
/// — or less often, see [`FULL_CHECK_SHARE`].
const FULL_DUMP_EVERY: u32 = 20;

/// A scheduled full check starts no sooner than this many times its last
/// pass's duration after that pass ended, so it takes at most about 1/20 of
/// the reconciler's time however large the bridge or slow the cores (at
/// 3000 ports on an emulated CPU one took longer than its 10 s period, and
/// changes waited behind back-to-back dumps).
const FULL_CHECK_SHARE: u32 = 20;

/// Why a convergence pass stopped; the typed cause is the `#[source]`
/// (printed as a chain by whoever shows it: the agent's status message).
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("OVSDB at {db} is not connected")]
    OvsdbDown { db: String },
    #[error("OVSDB")]
    Vswitch(#[from] VswitchError),
    #[error("OVSDB")]
    Ovsdb(#[from] OvsdbError),
    #[error("OVSDB")]
    Replica(#[from] RowError),
    #[error("OpenFlow")]
    OpenFlow(#[from] OpenFlowError),
}

/// Brings the pipeline to `input` (the compile of a pass), recompiling
/// only the networks whose inputs changed. The input is read in place,
/// each port with its representor's ofport. When `synced` (the input the
/// last successful pass reached) is this input, or the one this input
/// says it differs from only in some networks ([`InputChange`]), and the
/// replica can say which ofports moved, only those networks and the
/// networks of the moved ports (and tunnels) are looked at: they are
/// returned with the changes, for the ports' reports.
fn compile_pass(
    observed: &Mutex<Observed>,
    input: &SwitchInput,
    synced: Option<&Arc<SwitchInput>>,
) -> (Changes, Option<BTreeSet<String>>) {
    let mut observed = observed.lock().expect("observed lock");
    let Observed {
        pipeline, ports, ..
    } = &mut *observed;
    let moved = ports.take_moved();
    let ofports = ports.ofports();
    let ofport = |p: &PortDesc| port_ofport(p, ofports);
    let tunnels = tunnel_ofports(ofports);
    let said: Option<BTreeSet<&str>> = match (synced, &input.changed) {
        (Some(s), _) if std::ptr::eq(&**s, input) => Some(BTreeSet::new()),
        (Some(s), Some(c)) if c.since == s.version => {
            Some(c.networks.iter().map(String::as_str).collect())
        }
        _ => None,
    };
    let only = match (&moved, said) {
        (MovedOfports::Names(names), Some(mut networks)) => {
            networks.extend(networks_of_moved(input, names));
            pipeline
                .update_networks(
                    &input.networking,
                    input.by_network.as_deref(),
                    &networks,
                    ofport,
                    &tunnels,
                )
                .map(|changes| {
                    let networks: BTreeSet<String> =
                        networks.into_iter().map(str::to_string).collect();
                    (changes, networks)
                })
        }
        _ => None,
    };
    match only {
        Some((changes, networks)) => (changes, Some(networks)),
        None => (
            pipeline.update_resolving(&input.networking, ofport, &tunnels),
            None,
        ),
    }
}

impl Reconciler {
    async fn run(
        mut self,
        mut input: watch::Receiver<Arc<SwitchInput>>,
        mut shutdown: watch::Receiver<bool>,
        mut datapath_rx: tokio::sync::mpsc::Receiver<DatapathRead>,
    ) {
        let mut replica = self.ovsdb.replica_changes();
        let mut session = self.ovsdb.session();
        let mut tick = tokio::time::interval(self.config.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        // An input change took while a periodic check was running: the next
        // pass starts at once.
        let mut change_waiting = false;
        // When the last convergence pass ended: an input change moments
        // after one is taken as part of a burst.
        let mut last_pass: Option<Instant> = None;
        loop {
            let mut periodic = false;
            let mut by_input = change_waiting;
            if change_waiting {
                change_waiting = false;
            } else {
                tokio::select! {
                    _ = shutdown.changed() => if *shutdown.borrow() { break },
                    r = input.changed() => {
                        if r.is_err() {
                            break;
                        }
                        by_input = true;
                    }
                    _ = replica.changed() => {}
                    _ = session.changed() => {}
                    _ = tick.tick() => periodic = true,
                    Some(found) = datapath_rx.recv() => {
                        // A datapath read ended: fold it into the report of
                        // the input now current; no pass.
                        self.datapath_reading = false;
                        self.datapath = found.flows;
                        let current = input.borrow().clone();
                        let first_read = !self.report.datapath_read;
                        self.report.datapath_read = true;
                        let lookups_moved = *self.report.datapaths != found.lookups;
                        if lookups_moved {
                            self.report.datapaths = Arc::new(found.lookups);
                        }
                        if self.apply_datapath(&current) || lookups_moved || first_read {
                            self.report_tx.send_replace(Arc::new(self.report.clone()));
                        }
                        continue;
                    }
                }
            }
            let woke = Instant::now();
            let waited = self.waiting_since.take().map(|t| woke - t);
            if by_input && last_pass.is_some_and(|t| woke.saturating_duration_since(t) < BURST) {
                // Coalesce a burst of input changes into one pass. An input
                // after a quiet spell, and an OVSDB update (each comes
                // whole, one per transaction), are converged at once: the
                // 2 ms timer costs about 3 ms on an idle machine and 9 ms
                // beside a busy ovs-vswitchd, and a port added takes three
                // passes.
                tokio::time::sleep(DEBOUNCE).await;
            }
            let debounced = woke.elapsed();
            // Taken before the pass is named: an input that arrives while a
            // tick is being handled makes it a change pass, so its work is
            // timed as the change's.
            let current = input.borrow_and_update().clone();
            let periodic = periodic
                && current.version == self.report.version
                && !replica.has_changed().unwrap_or(true)
                && !session.has_changed().unwrap_or(true);
            self.pass = if periodic {
                Pass::Periodic
            } else {
                Pass::Change
            };
            if let Some(waited) = waited {
                self.timed(Phase::VswitchdWait, waited);
            }
            if !periodic {
                self.timed(Phase::Debounce, debounced);
            }
            if current.version == 0 {
                // No desired state yet: converging to "nothing" would delete
                // every flow and port a previous agent left, re-sending them
                // all moments later. Only connect (bridge, OpenFlow), so the
                // agent's readiness says whether the switch is reachable
                // even while no network exists.
                let result = self.connect().await;
                if !self.believed
                    && let Some(client) = self.openflow.take()
                {
                    self.prefetch = Some(Prefetch::start(client));
                }
                self.report.ovsdb_connected = self.ovsdb.session().borrow().connected;
                self.report.openflow_connected = self.openflow_connected();
                if let Err(e) = result {
                    let key = format!("{e:?}");
                    if last_error.as_deref() != Some(key.as_str()) {
                        tracing::warn!(bridge = %self.config.bridge, error = &e as &dyn std::error::Error, detail = ?e, "switch not reachable; retrying every {:?}", self.config.period);
                        last_error = Some(key);
                    }
                }
                self.report_tx.send_replace(Arc::new(self.report.clone()));
                continue;
            }
            if periodic && self.ticks.is_multiple_of(DATAPATH_EVERY) {
                let started = Instant::now();
                self.start_datapath_read();
                self.timed(Phase::Datapath, started.elapsed());
            }
            if periodic {
                let started = Instant::now();
                // A change arriving while ovs-vswitchd is slow to answer the
                // count does not wait behind it: the check is abandoned
                // (the OpenFlow client skips its late reply by xid) and the
                // change's pass runs now.
                let checked = tokio::select! {
                    in_sync = self.in_sync(&current) => Some(in_sync),
                    r = input.changed() => {
                        if r.is_err() {
                            break;
                        }
                        None
                    }
                };
                self.timed(Phase::Check, started.elapsed());
                let Some(in_sync) = checked else {
                    change_waiting = true;
                    continue;
                };
                if in_sync {
                    if !self.awaiting_ofport.is_empty() {
                        self.waiting_since = Some(Instant::now());
                    }
                    continue;
                }
            }
            let started = Instant::now();
            let result = self.converge(&current).await;
            last_pass = Some(Instant::now());
            if std::mem::take(&mut self.full_check_running) {
                self.full_check_at = Instant::now();
                self.full_check_took = started.elapsed();
            }
            if result.is_err() {
                self.believed = false;
                self.last_ok = None;
            } else {
                self.last_ok = Some(current.version);
            }
            self.report.version = current.version;
            self.report.ovsdb_connected = self.ovsdb.session().borrow().connected;
            self.report.openflow_connected = self.openflow_connected();
            match result {
                Ok(()) => {
                    self.report.programmed = true;
                    self.report.error = None;
                    last_error = None;
                }
                Err(e) => {
                    // Logged once per distinct failure, not every period
                    // (the Debug form tells failures apart, causes included).
                    let key = format!("{e:?}");
                    if last_error.as_deref() != Some(key.as_str()) {
                        tracing::warn!(bridge = %self.config.bridge, error = &e as &dyn std::error::Error, detail = ?e, "switch not converged; retrying every {:?}", self.config.period);
                        last_error = Some(key);
                    }
                    self.report.programmed = false;
                    self.report.error = Some(Arc::new(e));
                }
            }
            self.report_tx.send_replace(Arc::new(self.report.clone()));
        }
        tracing::info!(bridge = %self.config.bridge, "switch reconciler stopped");
    }

    /// Starts reading the datapath flows over unixctl on a task of its
    /// own (unless one is running); the result comes back to the run loop,
    /// which puts each port's share in the report. A pass never waits for
    /// it.
    fn start_datapath_read(&mut self) {
        let Some(rundir) = &self.config.rundir else {
            return;
        };
        if self.datapath_reading {
            return;
        }
        self.datapath_reading = true;
        let rundir = rundir.clone();
        let tx = self.datapath_tx.clone();
        tokio::spawn(async move {
            let not_read = |what: &'static str| {
                move |e: crate::unixctl::UnixctlError| {
                    tracing::debug!(
                        error = &e as &dyn std::error::Error,
                        detail = ?e,
                        "{what} not read"
                    )
                }
            };
            let found = match crate::unixctl::vswitchd_socket(&rundir) {
                Some(socket) => {
                    let timeout = Duration::from_secs(2);
                    DatapathRead {
                        flows: crate::unixctl::datapath_flows(&socket, timeout)
                            .await
                            .map_err(not_read("datapath flows"))
                            .ok(),
                        lookups: crate::unixctl::datapath_lookups(&socket, timeout)
                            .await
                            .map_err(not_read("datapath lookups"))
                            .unwrap_or_default(),
                    }
                }
                None => DatapathRead {
                    flows: None,
                    lookups: Vec::new(),
                },
            };
            let _ = tx.send(found).await;
        });
    }

    /// Puts each port's datapath flows in the report; true when any
    /// changed.
    fn apply_datapath(&mut self, input: &SwitchInput) -> bool {
        // Only the ports whose datapath flows changed are written (a write
        // copies the entry's path in the shared map).
        let changed: Vec<(String, Option<crate::unixctl::DatapathFlows>)> = input
            .networking
            .ports
            .iter()
            .filter_map(|p| {
                let port = self.report.ports.get(&p.id)?;
                let datapath = self.datapath.as_ref().map(|flows| {
                    p.representor
                        .as_ref()
                        .and_then(|rep| flows.get(rep))
                        .copied()
                        .unwrap_or_default()
                });
                (port.datapath != datapath).then(|| (p.id.clone(), datapath))
            })
            .collect();
        for (id, datapath) in &changed {
            if let Some(port) = self.report.ports.get_mut(id) {
                port.datapath = *datapath;
            }
        }
        !changed.is_empty()
    }

    /// For a periodic pass with nothing changed: true when the switch still
    /// holds what the last pass installed, checked by the agent's flow count
    /// (and, when a full check is due, not at all: the full pass then dumps
    /// and compares every flow).
    async fn in_sync(&mut self, input: &SwitchInput) -> bool {
        self.ticks += 1;
        let full_check_due = self.full_check_at.elapsed()
            >= (self.config.period * FULL_DUMP_EVERY).max(self.full_check_took * FULL_CHECK_SHARE);
        if !self.believed
            || self.last_ok != Some(input.version)
            || self.openflow.is_none()
            || full_check_due
        {
            self.full_check_running = full_check_due;
            self.believed = false;
            return false;
        }
        let want = self
            .observed
            .lock()
            .map(|o| o.switch_flow_count())
            .unwrap_or(0);
        let request =
            FlowStatsRequest::new(None, pipeline::AGENT_COOKIE, pipeline::AGENT_COOKIE_MASK);
        match self.of(async |c| c.aggregate(&request).await).await {
            Ok(stats) if stats.flows as usize == want => true,
            _ => {
                self.believed = false;
                false
            }
        }
    }

    /// Puts `took` in `phase` of the running pass.
    fn timed(&mut self, phase: Phase, took: Duration) {
        self.report.phases[self.pass as usize][phase as usize].observe(took);
        self.pass_timed += took;
    }

    /// Adds the CPU time since `from` (a [`thread_cpu`] reading on this
    /// thread, with no `.await` since) to the running pass's `compile`.
    fn compile_cpu(&mut self, from: Duration) {
        self.pass_cpu += thread_cpu().saturating_sub(from);
    }

    /// One convergence pass, its wall time split into phases: what the
    /// I/O and the diff did not take is `compile`.
    async fn converge(&mut self, input: &Arc<SwitchInput>) -> Result<(), SwitchError> {
        let started = Instant::now();
        self.pass_timed = Duration::ZERO;
        self.pass_cpu = Duration::ZERO;
        self.applied.clear();
        let result = self.converge_timed(input).await;
        self.publish_applied();
        let rest = started.elapsed().saturating_sub(self.pass_timed);
        self.timed(Phase::Compile, rest);
        self.report.cpu[self.pass as usize][Phase::Compile as usize].observe(self.pass_cpu);
        // Ports added but not opened yet: the time until the next pass is
        // ovs-vswitchd's.
        if !self.awaiting_ofport.is_empty() {
            self.waiting_since = Some(Instant::now());
        }
        result
    }

    async fn converge_timed(&mut self, input: &Arc<SwitchInput>) -> Result<(), SwitchError> {
        debug_assert!(input.by_network_holds(), "by_network as promised");
        // Set again only when this pass succeeds.
        let synced = self.synced.take();
        let mut session = self.ovsdb.session();
        let first = session.borrow().epoch == 0;
        if first && let Some(left) = FIRST_SESSION_GRACE.checked_sub(self.started.elapsed()) {
            // Not yet connected since start: no verdict before the first
            // session (or the grace) ends.
            let _ = tokio::time::timeout(left, session.wait_for(|s| s.connected)).await;
        }
        if !session.borrow().connected {
            return Err(SwitchError::OvsdbDown {
                db: format!("{:?}", self.config.db),
            });
        }
        // The bridge row is planned again only when the replica moved
        // since it last needed nothing.
        let version = *self.replica_version.borrow();
        if self.bridge_ok_at != Some(version) {
            let cpu = thread_cpu();
            let plan = bridge_plan(&self.ovsdb, &self.config);
            self.compile_cpu(cpu);
            self.apply_bridge(&plan).await?;
            if plan.is_empty() {
                self.bridge_ok_at = Some(version);
            }
        }
        let ports_moved = self.refresh_ports()?;
        if !ports_moved
            && self.believed
            && self.openflow.is_some()
            && self.last_ok == Some(input.version)
        {
            // Woken by an OVSDB change that moved nothing the plan reads
            // (the echo of our own insert, `cur_cfg`, a row of another
            // bridge): the last pass's result stands.
            self.synced = synced;
            return Ok(());
        }
        let cpu = thread_cpu();
        let port_plan = {
            let mut observed = self.observed.lock().expect("observed lock");
            // The base stays valid while the Port rows can say which
            // changed (no full read since).
            match (observed.ports.take_changed_names(), &mut self.port_base) {
                (Some(names), Some(base)) => base.names.extend(names),
                _ => self.port_base = None,
            }
            let bridge = &observed.ports;
            let since_base = self.port_base.as_ref().and_then(|base| {
                let networks: BTreeSet<&str> = if Arc::ptr_eq(&base.input, input) {
                    if base.names.is_empty() {
                        // Nothing to add or remove for this input and rows.
                        return Some(PortPlan::default());
                    }
                    BTreeSet::new()
                } else {
                    let change = input
                        .changed
                        .as_ref()
                        .filter(|c| c.since == base.input.version)?;
                    change.networks.iter().map(String::as_str).collect()
                };
                plan_ports_changed(input, &base.input, &networks, &base.names, |name| {
                    bridge.ports_named(name).collect()
                })
            });
            let whole = || plan_ports_of(&input.networking, bridge.ports());
            match since_base {
                Some(plan) => {
                    // Tests check every pass against the whole plan.
                    debug_assert_eq!(plan, whole(), "port plan of the changed names");
                    plan
                }
                None => whole(),
            }
        };
        if port_plan.is_empty() {
            self.port_base = Some(PortBase {
                input: input.clone(),
                names: BTreeSet::new(),
            });
        }
        self.compile_cpu(cpu);
        if !port_plan.is_empty() {
            self.apply_ports(&port_plan).await?;
            self.refresh_ports()?;
        }
        if !self.awaiting_ofport.is_empty() {
            let observed = self.observed.lock().expect("observed lock");
            self.awaiting_ofport.retain(|name, added| {
                !observed.ports.ofports().contains_key(name) && added.elapsed() < OFPORT_WAIT_MAX
            });
        }
        self.connect_openflow().await?;
        // The pipeline brought to the input (timed as `compile`). When the
        // switch's flows are to be dumped (not believed), the compile runs
        // on a blocking thread while the dump is read, and its CPU time is
        // that thread's.
        let mut dumped = None;
        let (changes, only) = if self.believed {
            let cpu = thread_cpu();
            let compiled = compile_pass(&self.observed, input, synced.as_ref());
            self.compile_cpu(cpu);
            compiled
        } else {
            let compiling = {
                let (observed, input, synced) =
                    (self.observed.clone(), input.clone(), synced.clone());
                tokio::task::spawn_blocking(move || {
                    let cpu = thread_cpu();
                    let compiled = compile_pass(&observed, &input, synced.as_ref());
                    (compiled, thread_cpu().saturating_sub(cpu))
                })
            };
            dumped = Some(match self.prefetch.take() {
                Some(prefetch) => self.prefetched(prefetch).await,
                None => self.dump().await,
            });
            let (compiled, cpu) = match compiling.await {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Not started (the runtime is shutting down): here, then.
                Err(_) => {
                    let cpu = thread_cpu();
                    let compiled = compile_pass(&self.observed, input, synced.as_ref());
                    (compiled, thread_cpu().saturating_sub(cpu))
                }
            };
            self.pass_cpu += cpu;
            compiled
        };
        let segments = match changes {
            Changes::Segments(segments) => Some(segments),
            Changes::All => None,
        };
        // Only the ports of those networks and of the changed segments can
        // have a new report when the port ids are distinct (otherwise a
        // port's report is that of the last of its id).
        let report_only: Option<BTreeSet<String>> = match (&segments, only) {
            (Some(segments), Some(mut networks)) if input.ids_ascending() => {
                networks.extend(segments.keys().cloned());
                Some(networks)
            }
            _ => None,
        };
        // Believed (the switch holds exactly the last pass's flows): only
        // the changed networks' flows are diffed, each against its previous
        // ones. Otherwise every flow against a fresh dump.
        let changed_segments = segments.as_ref().filter(|_| self.believed);
        if changed_segments.is_none() {
            let flows = match dumped {
                Some(flows) => flows?,
                None => self.dump().await?,
            };
            let mut observed = self.observed.lock().expect("observed lock");
            observed.flows = flows;
            observed.installed = false;
        }
        let (flow_plan, meter_plan) = {
            let observed = self.observed.lock().expect("observed lock");
            let diffing = Instant::now();
            let cpu = thread_cpu();
            let plan = match changed_segments {
                Some(segments) => observed.pipeline.plan_segments(segments),
                None => pipeline::plan_flows(
                    observed.pipeline.flows().map(|f| &f.flow),
                    &observed.flows,
                ),
            };
            let took = diffing.elapsed();
            // Believed, the switch holds the last pass's meters: only the
            // changed segments' meter ids can need a change.
            let meters = observed.pipeline.meters();
            let meter_plan = match changed_segments {
                Some(segments) => {
                    let ids = observed.pipeline.meter_ids_of(segments);
                    let plan = plan_meters_of(meters, &self.meters, &ids);
                    // Tests check every pass against the whole plan.
                    debug_assert_eq!(plan, plan_meters(meters, &self.meters), "meter plan");
                    plan
                }
                None => plan_meters(meters, &self.meters),
            };
            drop(observed);
            let cpu = thread_cpu().saturating_sub(cpu);
            self.timed(Phase::Diff, took);
            self.report.cpu[self.pass as usize][Phase::Diff as usize].observe(cpu);
            (plan, meter_plan)
        };
        let applied = async {
            self.apply_meters(&meter_plan).await?;
            self.apply_flows(&flow_plan).await?;
            self.remove_stale_meters(&meter_plan).await
        }
        .await;
        let mut observed = self.observed.lock().expect("observed lock");
        let ofports = observed.ports.ofports();
        let skipped = &observed.pipeline;
        if let Err(e) = applied {
            // Each port's ofport and why it has none, without flows.
            self.report.ports =
                port_reports(input, ofports, skipped, &BTreeMap::new(), None).collect();
            return Err(e);
        }
        let cpu = thread_cpu();
        // Each port's ofport (the one its flows match, unless it got none),
        // flows and datapath flows, written only where they changed.
        let counts = observed.pipeline.owner_flows();
        sync_port_reports(
            &mut self.report.ports,
            input,
            ofports,
            skipped,
            counts,
            self.datapath.as_ref(),
            report_only.as_ref(),
        );
        match (&report_only, &segments) {
            (Some(networks), Some(segments)) => {
                // The ports of those networks that left with the input
                // this one counts from.
                if let Some(old) = synced.as_ref().filter(|s| !Arc::ptr_eq(s, input)) {
                    let now = &input.networking.ports;
                    for p in old.ports_in(networks) {
                        if now.binary_search_by(|q| q.id.cmp(&p.id)).is_err() {
                            self.report.ports.remove(&p.id);
                        }
                    }
                }
                // Only the owners of the changed segments' flows, old and
                // new.
                let owners = segments
                    .iter()
                    .flat_map(|(id, old)| {
                        old.iter()
                            .chain(observed.pipeline.segment(id))
                            .flat_map(|s| &s.flows)
                    })
                    .map(|f| &f.owner);
                sync_owners(&mut self.report.flows, counts, owners);
            }
            _ => sync_map(&mut self.report.flows, counts),
        }
        // Tests check every pass against the whole computation.
        debug_assert_eq!(
            self.report.ports,
            port_reports(input, ofports, skipped, counts, self.datapath.as_ref()).collect(),
            "per-port report written in place"
        );
        debug_assert_eq!(
            self.report.flows,
            OrdMap::from(counts),
            "flow counts written in place"
        );
        // The switch now holds the pipeline's flows; the dump is dropped.
        observed.flows = Vec::new();
        observed.installed = true;
        drop(observed);
        self.believed = self.openflow.is_some();
        // The input before is dropped here, in the pass.
        self.synced = Some(input.clone());
        drop(synced);
        self.compile_cpu(cpu);
        Ok(())
    }

    /// The bridge and the OpenFlow connection, nothing else. The OpenFlow
    /// connection is tried even before OVSDB answers: a restarting agent's
    /// bridge is there, and its flows are read while the replica is.
    async fn connect(&mut self) -> Result<(), SwitchError> {
        if !self.ovsdb.session().borrow().connected {
            // Its failure (no bridge yet) is the next pass's to report.
            let _ = self.connect_openflow().await;
            return Err(SwitchError::OvsdbDown {
                db: format!("{:?}", self.config.db),
            });
        }
        self.applied.clear();
        let r = self.ensure_bridge().await;
        self.publish_applied();
        r?;
        self.connect_openflow().await
    }

    /// What this pass sent, into the report, when it sent anything.
    fn publish_applied(&mut self) {
        if !self.applied.is_empty() {
            self.report.applied = Arc::new(std::mem::take(&mut self.applied));
        }
    }

    /// Executes the bridge part of the plan ([`plan_bridge`] over the
    /// replica's bridge and root rows).
    async fn ensure_bridge(&mut self) -> Result<(), SwitchError> {
        let plan = bridge_plan(&self.ovsdb, &self.config);
        self.apply_bridge(&plan).await
    }

    async fn apply_bridge(&mut self, plan: &BridgePlan) -> Result<(), SwitchError> {
        let mut lines = plan.describe().into_iter();
        if let Some(spec) = &plan.ensure {
            tracing::info!(bridge = %self.config.bridge, datapath_type = %self.config.datapath_type, "ensuring bridge (fail_mode=secure, OpenFlow13+14)");
            let started = Instant::now();
            let r = self.ovsdb.ensure_bridge(spec).await;
            self.ovsdb_timed(started.elapsed());
            r?;
            self.applied.extend(lines.next());
        }
        if plan.hw_offload {
            let mut txn = Transaction::new("Open_vSwitch");
            txn.mutate(
                "Open_vSwitch",
                vec![],
                vec![
                    Mutation::delete("other_config", Datum::set(["hw-offload"])),
                    Mutation::insert("other_config", Datum::map([("hw-offload", "true")])),
                ],
            );
            txn.comment("dpu-agent: other_config:hw-offload=true");
            let started = Instant::now();
            let r = self.ovsdb.transact(&txn).await;
            self.ovsdb_timed(started.elapsed());
            r?;
            self.applied.extend(lines.next());
        }
        Ok(())
    }

    fn ovsdb_timed(&mut self, took: Duration) {
        self.report.ovsdb_transaction_durations.observe(took);
        self.timed(Phase::Ovsdb, took);
    }

    /// Reads the bridge's ports and every interface's ofport from the
    /// replica (only the rows changed since the last read, when the
    /// replica can tell); true when they differ from what was observed
    /// before.
    fn refresh_ports(&mut self) -> Result<bool, SwitchError> {
        let started = Instant::now();
        let r = self.refresh_ports_untimed();
        self.timed(Phase::Replica, started.elapsed());
        r
    }

    fn refresh_ports_untimed(&mut self) -> Result<bool, SwitchError> {
        // Taken before the read: an update applied meanwhile only makes the
        // next pass read again.
        let version = *self.replica_version.borrow();
        if self.replica_read == Some(version) {
            // No update applied since the last read: nothing to read.
            return Ok(false);
        }
        let bridge = &self.config.bridge;
        // Only the rows changed since the last read, when the replica can
        // say which (under the observed lock: it is short).
        let incremental = {
            let mut observed = self.observed.lock().expect("observed lock");
            self.ovsdb
                .read_replica(|r| observed.ports.refresh(r, bridge))
        };
        let moved = match incremental {
            Some(moved) => moved,
            None => {
                // Everything, outside the observed lock.
                let read = self.ovsdb.read_replica(|r| BridgePorts::read(r, bridge))?;
                self.observed
                    .lock()
                    .expect("observed lock")
                    .ports
                    .replace(read)
            }
        };
        self.replica_read = Some(version);
        Ok(moved)
    }

    async fn apply_ports(&mut self, plan: &PortPlan) -> Result<(), SwitchError> {
        let bridge = self.config.bridge.clone();
        for line in plan.describe(&bridge) {
            tracing::info!(bridge = %bridge, "{line}");
        }
        if !plan.add.is_empty() {
            let started = Instant::now();
            let r = self.ovsdb.add_ports(&bridge, &plan.add).await;
            self.ovsdb_timed(started.elapsed());
            r?;
            self.applied.extend(plan.describe_add(&bridge));
            let now = Instant::now();
            self.awaiting_ofport
                .extend(plan.add.iter().map(|p| (p.name.clone(), now)));
        }
        if !plan.remove.is_empty() {
            for name in &plan.remove {
                self.awaiting_ofport.remove(name);
            }
            let names: Vec<&str> = plan.remove.iter().map(String::as_str).collect();
            let started = Instant::now();
            let r = self.ovsdb.remove_ports(&bridge, &names).await;
            self.ovsdb_timed(started.elapsed());
            r?;
            self.applied.extend(plan.describe_remove(&bridge));
        }
        Ok(())
    }

    fn openflow_connected(&self) -> bool {
        self.openflow.is_some() || self.prefetch.is_some()
    }

    async fn connect_openflow(&mut self) -> Result<(), SwitchError> {
        if self.openflow_connected() {
            return Ok(());
        }
        match OpenFlowClient::connect_unix(&self.config.mgmt_socket).await {
            Ok(mut c) => {
                // Generous: a dead ovs-vswitchd breaks the connection at
                // once, but a live one with thousands of ports on the
                // userspace datapath can spend tens of seconds in one
                // reconfiguration before it reads the next message; giving
                // up then would re-dump and retry forever.
                c.set_timeout(Duration::from_secs(120));
                tracing::info!(socket = %self.config.mgmt_socket.display(), version = ?c.version(), "OpenFlow connected; reprogramming from a fresh dump");
                self.meters.clear();
                self.observed.lock().expect("observed lock").meters.clear();
                self.believed = false;
                self.openflow = Some(c);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs one OpenFlow operation; a broken connection is dropped so the
    /// next pass reconnects (ovs-vswitchd restarted) and re-dumps.
    async fn of<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut OpenFlowClient) -> Result<T, OpenFlowError>,
    ) -> Result<T, OpenFlowError> {
        let client = self.openflow.as_mut().expect("connected");
        let result = f(client).await;
        if let Err(e) = &result
            && !matches!(
                e,
                OpenFlowError::FlowsRejected { .. } | OpenFlowError::Rejected { .. }
            )
        {
            self.openflow = None;
            self.believed = false;
        }
        result
    }

    /// The prefetched dump, its connection back in place (dropped, as
    /// [`Self::of`] drops it, when the dump failed); the wait is the pass's
    /// `dump`.
    async fn prefetched(&mut self, mut prefetch: Prefetch) -> Result<Vec<Flow>, SwitchError> {
        let started = Instant::now();
        let joined = (&mut prefetch.0).await;
        self.timed(Phase::Dump, started.elapsed());
        match joined {
            Ok((client, Ok(flows), at)) => {
                self.openflow = Some(client);
                if at.elapsed() > PREFETCH_FRESH {
                    drop(flows);
                    return self.dump().await;
                }
                Ok(flows)
            }
            Ok((_, Err(e), _)) => Err(e.into()),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(OpenFlowError::Closed {
                endpoint: self.config.mgmt_socket.display().to_string(),
            }
            .into()),
        }
    }

    async fn dump(&mut self) -> Result<Vec<Flow>, SwitchError> {
        let started = Instant::now();
        let entries = self
            .of(async |c| c.dump_flows(&FlowStatsRequest::new(None, 0, 0)).await)
            .await;
        self.timed(Phase::Dump, started.elapsed());
        let entries = entries?;
        Ok(entries.into_iter().map(|e| e.flow).collect())
    }

    async fn apply_flows(&mut self, plan: &FlowPlan) -> Result<(), SwitchError> {
        if plan.is_empty() {
            return Ok(());
        }
        let mods = plan.flow_mods();
        tracing::info!(
            bridge = %self.config.bridge,
            add = plan.add.len(),
            modify = plan.modify.len(),
            delete = plan.delete.len(),
            "applying flows in one bundle"
        );
        for line in plan.describe().iter().take(20) {
            tracing::debug!("{line}");
        }
        let started = Instant::now();
        let r = self.of(async |c| c.bundle(&mods).await).await;
        let took = started.elapsed();
        self.report.bundle_durations.observe(took);
        self.timed(Phase::Bundle, took);
        r?;
        self.report.flow_mods_sent += mods.len() as u64;
        self.report.bundles += 1;
        self.applied.extend(plan.describe());
        Ok(())
    }

    async fn apply_meters(&mut self, plan: &MeterPlan) -> Result<(), SwitchError> {
        let started = Instant::now();
        let r = self.apply_meters_untimed(plan).await;
        self.timed(Phase::Meters, started.elapsed());
        r
    }

    /// Sets each meter of the plan: added, or modified when the switch
    /// already has its id (a meter left by a previous connection).
    async fn apply_meters_untimed(&mut self, plan: &MeterPlan) -> Result<(), SwitchError> {
        for meter in &plan.set {
            let mut add = meter.clone();
            add.command = MeterCommand::Add;
            let added = self.of(async |c| c.meter_mod(&add).await).await;
            match added {
                Ok(()) => {}
                Err(OpenFlowError::Rejected { error, .. })
                    if error.error_type == ErrorType::MeterModFailed
                        && error.code == METER_EXISTS =>
                {
                    let mut modify = meter.clone();
                    modify.command = MeterCommand::Modify;
                    self.of(async |c| c.meter_mod(&modify).await).await?;
                }
                Err(e) => return Err(e.into()),
            }
            self.meters.insert(meter.meter_id, meter.clone());
            self.observed
                .lock()
                .expect("observed lock")
                .meters
                .insert(meter.meter_id, meter.clone());
            self.applied.push(format!("set meter {}", MeterText(meter)));
        }
        Ok(())
    }

    async fn remove_stale_meters(&mut self, plan: &MeterPlan) -> Result<(), SwitchError> {
        let started = Instant::now();
        let r = self.remove_stale_meters_untimed(plan).await;
        self.timed(Phase::Meters, started.elapsed());
        r
    }

    async fn remove_stale_meters_untimed(&mut self, plan: &MeterPlan) -> Result<(), SwitchError> {
        for &id in &plan.delete {
            self.of(async |c| c.meter_mod(&MeterMod::delete(id)).await)
                .await?;
            self.meters.remove(&id);
            self.observed
                .lock()
                .expect("observed lock")
                .meters
                .remove(&id);
            self.applied.push(format!("delete meter meter={id}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_index_their_table() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{}", p.as_str());
        }
        for (i, p) in Pass::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{}", p.as_str());
        }
        let mut r = SwitchReport::default();
        r.phases[Pass::Periodic as usize][Phase::Bundle as usize].observe(Duration::from_millis(1));
        assert_eq!(r.phase(Pass::Periodic, Phase::Bundle).count(), 1);
        assert_eq!(r.phase(Pass::Change, Phase::Bundle).count(), 0);
    }

    mod in_place {
        use super::*;
        use crate::pipeline::{Encap, NetworkDesc};
        use crate::unixctl::DatapathFlows;
        use proptest::prelude::*;

        /// Port ids, networks, representors, ofports, skipped ports, flow
        /// counts and datapath flows drawn from small ranges, so that
        /// successive states share, change and drop entries (ids may repeat
        /// and come unsorted).
        type PortGen = (u8, Option<u8>, Option<u16>, bool, u8, Option<u8>);

        /// A pass's input, ofports, skipped ports, flow counts and datapath
        /// flows.
        type State = (
            SwitchInput,
            BTreeMap<String, u32>,
            BTreeMap<String, String>,
            BTreeMap<Owner, usize>,
            Option<BTreeMap<String, DatapathFlows>>,
        );

        fn state(ports: &[PortGen], sort: bool, datapath: bool) -> State {
            let mut input = SwitchInput::default();
            input.networking.networks.push(NetworkDesc {
                id: "n".into(),
                tenant: "t".into(),
                vni: 1,
                encap: Encap::Vxlan,
            });
            let (mut ofports, mut skipped, mut counts) =
                (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
            let mut found = BTreeMap::new();
            for &(id, rep, ofport, skip, flows, dp) in ports {
                let id = format!("p{id}");
                let mut port = plan::tests::port_desc(&id);
                if let Some(rep) = rep {
                    let rep = format!("rep{rep}");
                    if let Some(o) = ofport {
                        ofports.insert(rep.clone(), u32::from(o));
                    }
                    if let Some(dp) = dp {
                        found.insert(
                            rep.clone(),
                            DatapathFlows {
                                total: usize::from(dp),
                                offloaded: usize::from(dp / 2),
                            },
                        );
                    }
                    port.representor = Some(rep);
                }
                input.networking.ports.push(Arc::new(port));
                if skip {
                    skipped.insert(id.clone(), format!("why {flows}"));
                }
                if flows > 0 {
                    counts.insert(Owner::new(OwnerKind::Port, id), usize::from(flows));
                }
            }
            if sort {
                input.networking.ports.sort_by(|a, b| a.id.cmp(&b.id));
                input.networking.ports.dedup_by(|a, b| a.id == b.id);
            }
            (input, ofports, skipped, counts, datapath.then_some(found))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Updating the per-port report and the flow counts in place,
            /// pass after pass, gives what building them anew gives.
            #[test]
            fn in_place_reports_equal_rebuilt_ones(
                states in prop::collection::vec(
                    (
                        prop::collection::vec(
                            (
                                0u8..8,
                                prop::option::weighted(0.8, 0u8..6),
                                prop::option::weighted(0.8, 1u16..5),
                                prop::bool::weighted(0.2),
                                0u8..3,
                                prop::option::of(0u8..4),
                            ),
                            0..10,
                        ),
                        prop::bool::weighted(0.8),
                        any::<bool>(),
                    ),
                    1..8,
                )
            ) {
                let mut reports = OrdMap::new();
                let mut flows = OrdMap::new();
                for (ports, sort, datapath) in &states {
                    let (input, ofports, skipped, counts, found) = state(ports, *sort, *datapath);
                    sync_port_reports(
                        &mut reports,
                        &input,
                        &ofports,
                        &skipped,
                        &counts,
                        found.as_ref(),
                        None,
                    );
                    let whole: OrdMap<String, PortReport> =
                        port_reports(&input, &ofports, &skipped, &counts, found.as_ref())
                            .collect();
                    prop_assert_eq!(&reports, &whole);
                    sync_map(&mut flows, &counts);
                    prop_assert_eq!(&flows, &OrdMap::from(&counts));
                }
            }
        }
    }

    #[test]
    fn durations_fall_in_their_buckets() {
        let mut d = Durations::default();
        assert_eq!(d.count(), 0);
        d.observe(Duration::from_micros(300));
        d.observe(Duration::from_millis(3));
        d.observe(Duration::from_secs(60));
        assert_eq!(d.counts.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(d.counts[0], 1);
        assert_eq!(d.counts[3], 1);
        assert_eq!(d.counts[DURATION_BUCKETS.len()], 1);
        assert_eq!(d.count(), 3);
        assert_eq!(d.sum_nanos, 60_003_300_000);
    }
}
