//! The `host-stub run` loop: scan, report, follow the assignments, expose.
//!
//! One task owns all state. It rescans every `rescan_interval` and, debounced,
//! after a kernel uevent; it re-reports the inventory when the scan changed
//! or the last report failed; it resyncs the full assignment list on every
//! rescan (level-triggered: a lost watch event is repaired within one
//! interval) and follows the watch in between. Every answer from the agent
//! renews the [`Lease`]; when it runs out the exposed functions are marked
//! unhealthy in `<state_dir>/health.json`, on [`Daemon::health`] and to the
//! kubelet ([`Daemon::plugin_state`]), and stay exposed: a workload keeps its
//! device while the DPU is unreachable. The inventory is reported again when
//! the agent answers after that.
//!
//! After every change it reconciles: vfio-pci bindings for `attach: vfio`
//! functions (the previous driver is kept in `<state_dir>/vfio-bindings.json`
//! so a restart can still give it back) and the CDI specs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use crate::assignments::{self, Assignments, Unresolved};
use crate::cdi::{self, CdiOptions};
use crate::config::Config;
use crate::deviceplugin::{self, PluginDevice, PluginState};
use crate::discover::{self, Function};
use crate::metrics::{AgentOp, StubMetrics};
use crate::report::{self, AgentApi, AssignmentStream, Health, Lease};
use crate::selectors::{self, Selector};
use crate::vfio::{self, VfioBinding};

/// How long to wait after a uevent before rescanning, so that a burst (256
/// VFs appearing) costs one scan.
const UEVENT_DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    pub sysfs_root: PathBuf,
    pub state_dir: PathBuf,
    pub cdi_dir: PathBuf,
    pub cdi: CdiOptions,
    pub selectors: Vec<Selector>,
    pub rescan_interval: Duration,
    pub lease: Duration,
    pub retry: Duration,
    /// Resource names of the kubelet device plugin: `<domain>/<tenant>-<class>`.
    pub resource_domain: String,
}

impl From<&Config> for DaemonSettings {
    fn from(c: &Config) -> Self {
        DaemonSettings {
            sysfs_root: c.sysfs_root.clone(),
            state_dir: c.state_dir.clone(),
            cdi_dir: c.cdi.dir.clone(),
            cdi: c.cdi.options(),
            selectors: c.selectors.clone(),
            rescan_interval: c.rescan_interval(),
            lease: c.lease(),
            retry: c.retry(),
            resource_domain: c.device_plugin.resource_domain.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Daemon<A> {
    agent: A,
    settings: DaemonSettings,
    functions: Vec<Function>,
    reported: Option<Vec<Function>>,
    assignments: Assignments,
    lease: Lease,
    health_tx: watch::Sender<Health>,
    plugin_tx: watch::Sender<PluginState>,
    plugin_devices: Vec<PluginDevice>,
    bindings: BTreeMap<String, VfioBinding>,
    last_unresolved: Vec<Unresolved>,
    /// The last `sriov_numvfs` changes that could not be made (logged when
    /// the set changes).
    last_blocked: Vec<assignments::NumVfs>,
    metrics: Arc<StubMetrics>,
}

impl<A: AgentApi> Daemon<A> {
    pub fn new(agent: A, settings: DaemonSettings) -> Self {
        let bindings = load_bindings(&bindings_path(&settings.state_dir));
        let lease = Lease::new(settings.lease, Instant::now().into_std());
        Daemon {
            agent,
            settings,
            functions: Vec::new(),
            reported: None,
            assignments: Assignments::default(),
            lease,
            health_tx: watch::Sender::new(Health::Healthy),
            plugin_tx: watch::Sender::new(PluginState {
                devices: Vec::new(),
                agent_healthy: true,
            }),
            plugin_devices: Vec::new(),
            bindings,
            last_unresolved: Vec::new(),
            last_blocked: Vec::new(),
            metrics: Arc::default(),
        }
    }

    /// What the daemon counts, for [`crate::metrics::serve`] (and the
    /// device plugin's registrations: pass it to
    /// [`deviceplugin::run_with_metrics`]).
    pub fn metrics(&self) -> Arc<StubMetrics> {
        self.metrics.clone()
    }

    /// Health of the exposed functions, for consumers such as a device
    /// plugin.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health_tx.subscribe()
    }

    /// The assigned functions as kubelet device plugin devices, with the
    /// lease applied; see [`deviceplugin::run`].
    pub fn plugin_state(&self) -> watch::Receiver<PluginState> {
        self.plugin_tx.subscribe()
    }

    fn publish_plugin_state(&self) {
        let next = PluginState {
            devices: self.plugin_devices.clone(),
            agent_healthy: *self.health_tx.borrow() == Health::Healthy,
        };
        self.plugin_tx.send_if_modified(|s| {
            let changed = *s != next;
            if changed {
                *s = next;
            }
            changed
        });
    }

    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    pub fn assignments(&self) -> &Assignments {
        &self.assignments
    }

    pub fn bindings(&self) -> &BTreeMap<String, VfioBinding> {
        &self.bindings
    }

    /// Rescans; returns whether the DPU's functions changed.
    pub fn rescan(&mut self) -> bool {
        match discover::scan(&self.settings.sysfs_root) {
            Ok(all) => {
                let selected = selectors::select(&self.settings.selectors, &all);
                let diff = discover::diff(&self.functions, &selected);
                if !diff.is_empty() {
                    info!(
                        added = ?diff.added,
                        removed = ?diff.removed,
                        changed = ?diff.changed,
                        "DPU functions changed"
                    );
                }
                self.functions = selected;
                self.metrics.set_functions(&self.functions);
                !diff.is_empty()
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "scan failed; keeping the previous inventory");
                false
            }
        }
    }

    /// Sends the inventory when it changed since the last successful report.
    pub async fn report_if_needed(&mut self) -> bool {
        if self.reported.as_deref() == Some(self.functions.as_slice()) {
            return true;
        }
        let body = report::host_inventory(&self.functions);
        match self.agent.put_host_inventory(&body).await {
            Ok(()) => {
                info!(devices = body.devices.len(), "inventory reported");
                self.reported = Some(self.functions.clone());
                self.contact();
                true
            }
            Err(e) => {
                self.metrics.agent_failed(AgentOp::Report);
                warn!(error = %error_chain(&e), "cannot report the inventory to the DPU agent; will retry");
                false
            }
        }
    }

    /// Replaces the assignments with the agent's full list.
    pub async fn resync(&mut self) -> bool {
        match self.agent.host_assignments().await {
            Ok(list) => {
                self.assignments.replace(list);
                self.contact();
                true
            }
            Err(e) => {
                self.metrics.agent_failed(AgentOp::Assignments);
                warn!(error = %error_chain(&e), "cannot list this host's assignments; will retry");
                false
            }
        }
    }

    pub async fn open_watch(&mut self) -> Option<AssignmentStream> {
        match self.agent.watch_host_assignments().await {
            Ok(stream) => {
                self.contact();
                Some(stream)
            }
            Err(e) => {
                self.metrics.agent_failed(AgentOp::Watch);
                warn!(error = %error_chain(&e), "cannot watch this host's assignments; will retry");
                None
            }
        }
    }

    /// Applies one watch event; returns whether the assignments changed.
    pub fn on_event(&mut self, event: dpu_api::Event) -> bool {
        self.contact();
        self.assignments.apply(event)
    }

    fn contact(&mut self) {
        self.metrics.agent_answered();
        self.lease.renew(Instant::now().into_std());
        self.set_health(Health::Healthy);
    }

    /// Marks the functions unhealthy once the lease ran out.
    pub fn check_lease(&mut self, now: std::time::Instant) {
        let health = self.lease.health(now);
        self.set_health(health);
    }

    fn set_health(&mut self, health: Health) {
        if *self.health_tx.borrow() == health {
            return;
        }
        match health {
            Health::Healthy => info!("DPU agent reachable again; assigned functions healthy"),
            Health::Unhealthy => {
                warn!(
                    lease_secs = self.settings.lease.as_secs(),
                    "DPU agent unreachable for longer than the lease; assigned functions marked unhealthy"
                );
                // The agent may come back without our report (a new DPU
                // image, a fresh store): report again once it answers.
                self.reported = None;
            }
        }
        self.metrics.set_agent_reachable(health == Health::Healthy);
        self.health_tx.send_replace(health);
        self.write_health();
        self.publish_plugin_state();
    }

    fn write_health(&self) {
        let body = serde_json::json!({
            "healthy": *self.health_tx.borrow() == Health::Healthy,
            "functions": self.assignments.ids(),
        });
        let path = self.settings.state_dir.join("health.json");
        if let Err(e) = write_atomic(&path, body.to_string().as_bytes()) {
            warn!(path = %path.display(), error = %e, "cannot write health file");
        }
    }

    /// Raises each PF's `sriov_numvfs` to what the assignments need (the
    /// agent's VF allocation): returns whether it wrote any, so the caller
    /// scans again.
    fn set_vf_counts(&mut self, in_use: &BTreeSet<String>) -> bool {
        let root = self.settings.sysfs_root.clone();
        let mut wrote = false;
        let mut blocked = Vec::new();
        for count in assignments::vf_counts(&self.assignments, &self.functions) {
            match assignments::numvfs_change(&count, &self.functions, in_use) {
                assignments::NumVfs::Write { pf_pci, from, to } => {
                    match crate::sriov::set_numvfs(&root, &pf_pci, from, to) {
                        Ok(()) => {
                            info!(pf = %pf_pci, from, to, "sriov_numvfs set for the agent's assignments");
                            wrote = true;
                        }
                        Err(e) => {
                            warn!(pf = %pf_pci, to, error = %e, "cannot set sriov_numvfs");
                        }
                    }
                }
                b @ assignments::NumVfs::Blocked { .. } => blocked.push(b),
            }
        }
        if blocked != self.last_blocked {
            for b in &blocked {
                if let assignments::NumVfs::Blocked { pf_pci, why } = b {
                    warn!(pf = %pf_pci, reason = %why, "sriov_numvfs not changed");
                }
            }
            self.last_blocked = blocked;
        }
        wrote
    }

    /// Brings vfio bindings and CDI specs in line with the assignments.
    pub fn reconcile(&mut self) {
        let mut resolution = assignments::resolve(&self.assignments, &self.functions);
        let in_use: BTreeSet<String> = resolution
            .exposed
            .iter()
            .map(|f| f.pci_address.clone())
            .chain(self.bindings.keys().cloned())
            .collect();
        if self.set_vf_counts(&in_use) && self.rescan() {
            resolution = assignments::resolve(&self.assignments, &self.functions);
        }
        let root = self.settings.sysfs_root.clone();
        let before = self.bindings.clone();

        let stale: Vec<String> = self
            .bindings
            .keys()
            .filter(|a| !resolution.to_bind.contains(*a))
            .cloned()
            .collect();
        for addr in stale {
            let binding = self.bindings[&addr].clone();
            match vfio::release(&root, &binding) {
                Ok(()) => {
                    info!(pci = %addr, driver = ?binding.previous_driver, "released from vfio-pci");
                    self.bindings.remove(&addr);
                }
                Err(e) => {
                    warn!(pci = %addr, error = %error_chain(&e), "cannot give the function back to its driver")
                }
            }
        }
        let mut failed = BTreeSet::new();
        for addr in &resolution.to_bind {
            let bound_by_us = self.bindings.contains_key(addr);
            let on_vfio = self
                .functions
                .iter()
                .any(|f| &f.pci_address == addr && f.driver.as_deref() == Some(vfio::VFIO_PCI));
            if bound_by_us || on_vfio {
                continue;
            }
            match vfio::bind(&root, addr) {
                Ok(binding) => {
                    info!(pci = %addr, group = binding.iommu_group, "bound to vfio-pci");
                    self.bindings.insert(addr.clone(), binding);
                }
                Err(e) => {
                    warn!(pci = %addr, error = %error_chain(&e), "cannot bind to vfio-pci; not exposing it");
                    failed.insert(addr.clone());
                }
            }
        }
        resolution
            .exposed
            .retain(|f| !failed.contains(&f.pci_address));
        self.metrics.set_exposed(resolution.exposed.len());
        if self.bindings != before {
            let path = bindings_path(&self.settings.state_dir);
            let json = serde_json::to_vec_pretty(&self.bindings).expect("bindings serialize");
            if let Err(e) = write_atomic(&path, &json) {
                warn!(path = %path.display(), error = %e, "cannot record vfio bindings; a restart may not restore drivers");
            }
        }

        let functions = &self.functions;
        self.plugin_devices = deviceplugin::plugin_devices(
            &self.assignments,
            &resolution.exposed,
            |addr| {
                functions
                    .iter()
                    .find(|f| f.pci_address == addr)
                    .and_then(|f| f.numa_node)
            },
            &self.settings.resource_domain,
            &self.settings.cdi.kind,
        );
        self.publish_plugin_state();
        match cdi::sync_dir(
            &self.settings.cdi_dir,
            &resolution.exposed,
            &self.settings.cdi,
        ) {
            Ok((actions, errors)) => {
                let written = actions
                    .iter()
                    .filter(|a| matches!(a, cdi::CdiAction::Write { .. }))
                    .count();
                self.metrics
                    .cdi(written, actions.len() - written, errors.len());
                for a in &actions {
                    match a {
                        cdi::CdiAction::Write { file, .. } => info!(file, "CDI spec written"),
                        cdi::CdiAction::Remove { file } => info!(file, "CDI spec removed"),
                    }
                }
                for (id, e) in errors {
                    warn!(function = %id, error = %error_chain(&e), "no CDI spec for this function");
                }
            }
            Err(e) => {
                self.metrics.cdi(0, 0, resolution.exposed.len());
                warn!(error = %error_chain(&e), "cannot update CDI specs")
            }
        }
        // Logged when the set changes only: the agent (a tenant's request)
        // can make these, so they must not flood the log every rescan.
        if resolution.unresolved != self.last_unresolved {
            for u in &resolution.unresolved {
                warn!(function = %u.id, reason = %u.reason, "assigned function not exposed");
            }
            self.last_unresolved = resolution.unresolved;
        }
    }

    /// Runs until `shutdown` turns true. `uevents` carries a unit per
    /// relevant kernel event (see [`spawn_uevent_listener`]).
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut uevents: Option<mpsc::Receiver<()>>,
    ) {
        let mut watch: Option<AssignmentStream> = None;
        self.rescan();
        self.write_health();
        if self.report_if_needed().await && self.resync().await {
            watch = self.open_watch().await;
        }
        self.reconcile();

        let mut rescan_tick = tokio::time::interval(self.settings.rescan_interval);
        rescan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        rescan_tick.tick().await;
        let mut retry_tick = tokio::time::interval(self.settings.retry);
        retry_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut debounce: Option<Instant> = None;

        loop {
            let healthy = *self.health_tx.borrow() == Health::Healthy;
            let lease_end = Instant::from_std(self.lease.expires_at()) + Duration::from_millis(1);
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                _ = rescan_tick.tick() => {
                    self.rescan();
                    self.report_if_needed().await;
                    if self.resync().await && watch.is_none() {
                        watch = self.open_watch().await;
                    }
                    self.reconcile();
                }
                _ = retry_tick.tick(), if watch.is_none() || self.reported.is_none() => {
                    if self.report_if_needed().await && self.resync().await {
                        watch = self.open_watch().await;
                        self.reconcile();
                    }
                }
                event = next_event(&mut watch) => match event {
                    Some(Ok(event)) => {
                        if self.on_event(event) {
                            self.reconcile();
                            // A reconcile that set sriov_numvfs scanned again.
                            self.report_if_needed().await;
                        }
                    }
                    Some(Err(e)) => {
                        self.metrics.agent_failed(AgentOp::Watch);
                        warn!(error = %error_chain(&e), "assignment watch broke; reconnecting");
                        watch = None;
                    }
                    None => {
                        self.metrics.agent_failed(AgentOp::Watch);
                        warn!("assignment watch closed by the agent; reconnecting");
                        watch = None;
                    }
                },
                Some(()) = next_uevent(&mut uevents) => {
                    debounce.get_or_insert(Instant::now() + UEVENT_DEBOUNCE);
                }
                _ = sleep_until_opt(debounce) => {
                    debounce = None;
                    let changed = self.rescan();
                    // Also what a reconcile's own scan found and did not report.
                    self.report_if_needed().await;
                    if changed {
                        self.reconcile();
                    }
                }
                _ = tokio::time::sleep_until(lease_end), if healthy => {}
            }
            self.check_lease(Instant::now().into_std());
        }
        info!("host stub stopped");
    }
}

async fn next_event(
    watch: &mut Option<AssignmentStream>,
) -> Option<Result<dpu_api::Event, report::ReportError>> {
    match watch {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

async fn next_uevent(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => match rx.recv().await {
            Some(()) => Some(()),
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Listens for kernel uevents and sends a unit for each relevant one.
/// Returns `None` (and the daemon relies on periodic rescans) when the
/// socket cannot be opened, e.g. without root.
pub fn spawn_uevent_listener() -> Option<mpsc::Receiver<()>> {
    let socket = match crate::uevent::UeventSocket::open() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot open the uevent socket; relying on periodic rescans");
            return None;
        }
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match socket.next().await {
                Ok(ev) if ev.is_relevant() => {
                    // A full channel already holds a pending rescan.
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "uevent socket failed; relying on periodic rescans");
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Some(rx)
}

fn bindings_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vfio-bindings.json")
}

fn load_bindings(path: &Path) -> BTreeMap<String, VfioBinding> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!(path = %path.display(), error = %e, "vfio bindings file unreadable; starting without it");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// `error: cause: cause`, printed once at the edge.
pub use dpu_api::error_chain;
