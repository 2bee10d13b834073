//! The `volumes` controller: every stored volume, with its function, becomes
//! a [`DesiredVolume`]; the configured [`BlockBackend`] is observed, planned
//! against (pure) and the actions concerning the reconciled volume are
//! applied in order (attach source → device → present; teardown in reverse).
//! A volume is `Ready` with `Programmed=True` only when a fresh observation
//! plans nothing more for it. A backend that cannot be reached, or a source
//! that cannot be attached, is a [`ReconcileError`]: the engine keeps the
//! object `Pending`/`Degraded` with the reason and retries with backoff. The
//! API never calls the backend, so a down backend never fails a write.
//!
//! Limits: `size_bytes` is reported for local volumes only (a remote
//! namespace's size is not observed yet); `host_device` is copied from the
//! function's status once the host stub reports it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, ObjectKey, Phase, Status, WriteOutcome};
use dpu_api::report::VolumeReport;
use dpu_api::spec::{FunctionSpec, VolumeSource, VolumeSpec};
use storage_offload::apply::{BlockBackend, NvmetBackend, Observed, SpdkBackend, apply_all};
use storage_offload::model::{
    BackendKind, DesiredVolume, FunctionTarget, VolumeIo, VolumeKey, function_host_nqn,
};
use storage_offload::nvmet::KernelPaths;
use storage_offload::nvmet::configfs::{ConfigfsMode, PortConfig};
use storage_offload::plan::{
    Action, NvmetPlanConfig, Owner, Refusal, RefusalReason, SpdkPlanConfig,
};
use storage_offload::spdk::methods::ListenAddress;

use super::backend_error::BackendStartError;
use super::set_programmed;
use super::spec_error::SpecError;
use super::unavailable::Unavailable;
use super::{
    BoxFuture, Context, Controller, Outcome, Reason, ReconcileError, Reconciling, not_ready,
    unparsable_spec,
};
use crate::config::{Config, SpdkFlavor, StorageBackend};
use crate::error_chain;
use crate::store::StoredObject;

/// Makes the backend: connects to SPDK, or checks that nvmet is there.
/// Called again on every reconcile until it succeeds.
pub type Connect = Box<
    dyn Fn() -> BoxFuture<'static, Result<Box<dyn BlockBackend>, BackendStartError>>
        + Send
        + Sync
        + 'static,
>;

/// Volumes that are `Ready` are looked at again this often, so drift (a
/// dropped initiator connection, a removed subsystem) is repaired.
const RESYNC: Duration = Duration::from_secs(60);

pub struct Volumes {
    /// What the backend is, for operators: `nvmet (/sys/kernel/config/nvmet)`.
    name: String,
    connect: Connect,
    /// The connected backend; the lock also serializes reconciles, since a
    /// plan covers every volume on the backend.
    backend: tokio::sync::Mutex<Option<Arc<dyn BlockBackend>>>,
    /// The last backend and its observation, for the pure `plan`.
    last: std::sync::Mutex<Option<(Arc<dyn BlockBackend>, Observed)>>,
    /// When set, the only host NQN every volume's subsystem admits, instead
    /// of one per function.
    host_nqn: Option<String>,
    /// Stored volumes' I/O as the backend last counted it, for `/metrics`.
    io: std::sync::Mutex<BTreeMap<VolumeKey, VolumeIo>>,
}

impl std::fmt::Debug for Volumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volumes")
            .field("name", &self.name)
            .field("host_nqn", &self.host_nqn)
            .finish_non_exhaustive()
    }
}

impl Volumes {
    pub fn new(name: impl Into<String>, connect: Connect, host_nqn: Option<String>) -> Self {
        Volumes {
            name: name.into(),
            connect,
            backend: tokio::sync::Mutex::new(None),
            last: std::sync::Mutex::new(None),
            host_nqn,
            io: Default::default(),
        }
    }

    /// A controller over a backend that is already there (tests, tools).
    pub fn with_backend(backend: Arc<dyn BlockBackend>, host_nqn: Option<String>) -> Self {
        let v = Volumes::new(
            backend_name(backend.kind()),
            Box::new(|| Box::pin(async { Err(BackendStartError::Dropped) })),
            host_nqn,
        );
        *v.backend.try_lock().expect("new mutex is free") = Some(backend);
        v
    }

    async fn connected(
        &self,
        slot: &mut Option<Arc<dyn BlockBackend>>,
    ) -> Result<Arc<dyn BlockBackend>, ReconcileError> {
        if let Some(b) = slot {
            return Ok(b.clone());
        }
        let b: Arc<dyn BlockBackend> =
            Arc::from((self.connect)().await.map_err(|why| ReconcileError {
                reason: Reason::BackendUnreachable,
                message: format!(
                    "cannot reach the {} storage backend: {}; retrying with backoff",
                    self.name,
                    error_chain(&why)
                ),
            })?);
        tracing::info!(backend = %self.name, "storage backend connected");
        *slot = Some(b.clone());
        Ok(b)
    }

    fn remember(&self, backend: &Arc<dyn BlockBackend>, observed: &Observed) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((backend.clone(), observed.clone()));
    }
}

/// The volumes controller for `cfg.storage`: the kernel or SPDK backend,
/// connected lazily (an absent backend keeps volumes `Pending` with the
/// reason and is retried with backoff), or, for `none`, the `Unavailable`
/// controller saying so.
pub fn for_config(cfg: &Config) -> Arc<dyn Controller> {
    let s = &cfg.storage;
    match s.backend {
        StorageBackend::None => Arc::new(Unavailable::new(
            Kind::Volume,
            "storage (storage-offload: SPDK/SNAP or kernel nvmet)",
            "[storage] backend is \"none\" (the default in dev mode); set it to nvmet or spdk",
        )),
        StorageBackend::Nvmet => {
            let paths = KernelPaths {
                nvmet: s.nvmet_configfs.clone(),
                ..KernelPaths::default()
            };
            let plan = NvmetPlanConfig {
                port: PortConfig {
                    id: s.nvmet_port_id,
                    trtype: "tcp".into(),
                    adrfam: if s.nvmet_listen.is_ipv4() {
                        "ipv4"
                    } else {
                        "ipv6"
                    }
                    .into(),
                    traddr: s.nvmet_listen.ip().to_string(),
                    trsvcid: s.nvmet_listen.port().to_string(),
                },
                backing_dir: s.backing_dir.clone(),
                qos_cgroup: s.qos_cgroup.clone(),
                volume_ports: s.nvmet_volume_ports,
            };
            let name = format!("nvmet ({})", paths.nvmet.display());
            Arc::new(Volumes::new(
                name,
                Box::new(move || {
                    let (paths, plan) = (paths.clone(), plan.clone());
                    Box::pin(async move {
                        if !paths.nvmet.join("subsystems").is_dir() {
                            return Err(BackendStartError::NoNvmetSubsystems {
                                dir: paths.nvmet.display().to_string(),
                            });
                        }
                        // Tenants' volume data: owner-only (0700).
                        storage_offload::apply::ensure_private_dir(&plan.backing_dir).map_err(
                            |source| BackendStartError::BackingDir {
                                dir: plan.backing_dir.display().to_string(),
                                source,
                            },
                        )?;
                        let b: Box<dyn BlockBackend> =
                            Box::new(NvmetBackend::new(paths, ConfigfsMode::Kernel, plan));
                        Ok(b)
                    })
                }),
                s.host_nqn.clone(),
            ))
        }
        StorageBackend::Spdk => {
            let socket = s.spdk_socket.clone();
            let plan = SpdkPlanConfig {
                kind: match s.spdk_flavor {
                    SpdkFlavor::Snap => BackendKind::Snap,
                    SpdkFlavor::Nvmf => BackendKind::SpdkNvmf,
                },
                listen: ListenAddress {
                    trtype: "TCP".into(),
                    adrfam: Some(
                        if s.nvmet_listen.is_ipv4() {
                            "IPv4"
                        } else {
                            "IPv6"
                        }
                        .into(),
                    ),
                    traddr: s.nvmet_listen.ip().to_string(),
                    trsvcid: Some(s.nvmet_listen.port().to_string()),
                },
                local_block_size: 512,
            };
            let name = format!("spdk ({})", socket.display());
            Arc::new(Volumes::new(
                name,
                Box::new(move || {
                    let (socket, plan) = (socket.clone(), plan.clone());
                    Box::pin(async move {
                        let (b, _missing) = SpdkBackend::connect(&socket, plan).await?;
                        let b: Box<dyn BlockBackend> = Box::new(b);
                        Ok(b)
                    })
                }),
                s.host_nqn.clone(),
            ))
        }
    }
}

/// Replaces the build's default (unavailable) volumes controller with the
/// configured one; a controller given by the caller is kept.
pub fn with_configured(
    cfg: &Config,
    controllers: Vec<Arc<dyn Controller>>,
) -> Vec<Arc<dyn Controller>> {
    super::replace_placeholder(Kind::Volume, controllers, || for_config(cfg))
}

/// The status `backend` value.
pub fn backend_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Snap => "snap",
        BackendKind::SpdkNvmf => "spdk-nvmf",
        BackendKind::Nvmet => "nvmet",
    }
}

fn volume_spec(obj: &StoredObject) -> Option<VolumeSpec> {
    obj.spec.as_volume().cloned()
}

fn key_of(obj: &StoredObject) -> VolumeKey {
    VolumeKey::new(obj.tenant.clone(), obj.id.clone())
}

/// `pf0` → 0.
fn pf_index(pf: &str) -> Option<u32> {
    pf.strip_prefix("pf")?.parse().ok()
}

/// One volume as the backend must realize it, or why it cannot be built.
fn desired_of(
    ctx: &Context,
    obj: &StoredObject,
    spec: VolumeSpec,
    host_nqn: Option<&str>,
) -> Result<DesiredVolume, SpecError> {
    let f = ctx
        .store
        .get(&ObjectKey::new(Kind::Function, spec.function.clone()))
        .filter(|f| f.tenant == obj.tenant && !f.deleting)
        .ok_or_else(|| SpecError::NoFunction {
            function: spec.function.clone(),
            tenant: obj.tenant.clone(),
        })?;
    let fs: &FunctionSpec = f
        .spec
        .as_function()
        .ok_or_else(|| SpecError::NotAFunction {
            function: spec.function.clone(),
        })?;
    let pf = pf_index(&fs.pf).ok_or_else(|| SpecError::BadPf {
        function: spec.function.clone(),
        pf: fs.pf.to_string(),
    })?;
    // The VF the functions controller allocated, else the one asked for.
    let vf = f.status.facts.vf.or(fs.vf);
    Ok(DesiredVolume {
        key: key_of(obj),
        function: FunctionTarget {
            id: spec.function.clone(),
            type_: fs.type_,
            pf,
            vf,
            host_nqn: host_nqn
                .map(str::to_string)
                .unwrap_or_else(|| function_host_nqn(&obj.tenant, &spec.function)),
        },
        spec,
    })
}

/// Every volume the backend must keep, except `skip` (being deleted or
/// planned separately); volumes that cannot be built are left out, and
/// their keys returned so their objects on the backend are left alone.
fn desired_all(
    ctx: &Context,
    skip: &VolumeKey,
    host_nqn: Option<&str>,
) -> (Vec<DesiredVolume>, BTreeSet<VolumeKey>) {
    let mut desired = Vec::new();
    let mut kept = BTreeSet::new();
    for o in ctx.store.list(Kind::Volume, None) {
        let key = key_of(&o);
        if o.deleting || key == *skip {
            continue;
        }
        kept.insert(key);
        if let Some(spec) = volume_spec(&o)
            && let Ok(d) = desired_of(ctx, &o, spec, host_nqn)
        {
            desired.push(d);
        }
    }
    (desired, kept)
}

/// Whether reconciling `key` may perform `a`: its own actions, shared ones,
/// and true orphans (no stored, non-deleting volume of that key).
fn concerns(a: &Action, key: &VolumeKey, kept: &BTreeSet<VolumeKey>) -> bool {
    match &a.owner {
        Owner::Volume(k) => k == key,
        Owner::Orphan(k) => k == key || !kept.contains(k),
        Owner::Shared => true,
    }
}

/// Actions still owned by `key` (as a volume or an orphan).
fn own(actions: &[Action], key: &VolumeKey) -> Vec<String> {
    actions
        .iter()
        .filter(|a| matches!(&a.owner, Owner::Volume(k) | Owner::Orphan(k) if k == key))
        .map(|a| a.to_string())
        .collect()
}

fn backend_error(what: &str, e: &dyn std::error::Error) -> ReconcileError {
    ReconcileError {
        reason: Reason::BackendError,
        message: format!("{what}: {}; retrying with backoff", error_chain(e)),
    }
}

/// The outcome for a volume the backend refuses (`r`): `Failed` for a host
/// NQN it may not use (a spec change is needed), a retried error while its
/// source is in use by another tenant's volume. Pure.
fn refused(status: Status, r: Refusal) -> Result<Outcome, ReconcileError> {
    match r.reason {
        RefusalReason::HostNqn => Ok(not_ready(
            status,
            Phase::Failed,
            "Programmed",
            Reason::from(r.reason),
            r.message,
        )),
        RefusalReason::SourceInUse => Err(ReconcileError {
            reason: Reason::from(r.reason),
            message: format!("{}; retrying with backoff", r.message),
        }),
    }
}

/// The status of a volume the backend converged (a fresh observation plans
/// nothing more for it), from what was applied for it (`d` on `backend`),
/// where the observation says the host connects (`export`) and the
/// function's host report (`host_device`): `Ready`, `Programmed=True`, the
/// typed [`VolumeReport`] and the `host_device` fact. Pure.
fn ready_status(
    mut status: Status,
    d: &DesiredVolume,
    backend: BackendKind,
    export: Option<String>,
    host_device: Option<String>,
) -> Status {
    status.set_report(&VolumeReport {
        backend: Some(backend_name(backend).to_string()),
        size_bytes: match &d.spec.source {
            VolumeSource::Local(l) => Some(l.size_mib.saturating_mul(1024 * 1024)),
            VolumeSource::Nvmeof(_) => None,
        },
        export,
    });
    status.facts.host_device = host_device;
    set_programmed(
        &mut status,
        Phase::Ready,
        ConditionStatus::True,
        Reason::Applied,
        format!(
            "presented on function {} by {}",
            d.function.id,
            backend_name(backend)
        ),
    );
    status
}

impl Controller for Volumes {
    fn kind(&self) -> Kind {
        Kind::Volume
    }

    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            let key = key_of(obj);
            let host_nqn = self.host_nqn.as_deref();
            let mut slot = self.backend.lock().await;
            let backend = self.connected(&mut slot).await?;
            let status = obj.status.clone();

            let (mut desired, kept) = desired_all(ctx, &key, host_nqn);
            if !obj.deleting {
                let Some(spec) = volume_spec(obj) else {
                    return Ok(unparsable_spec(status, "Programmed"));
                };
                match desired_of(ctx, obj, spec, host_nqn) {
                    Ok(d) => {
                        if let Some(why) = backend.kind().unsupported(d.function.type_) {
                            return Ok(not_ready(
                                status,
                                Phase::Failed,
                                "Programmed",
                                Reason::Unsupported,
                                format!(
                                    "{why} (backend {}); use another function",
                                    backend_name(backend.kind())
                                ),
                            ));
                        }
                        desired.push(d);
                    }
                    Err(why) => {
                        return Ok(not_ready(
                            status,
                            Phase::Pending,
                            "Programmed",
                            Reason::FunctionUnavailable,
                            error_chain(&why),
                        ));
                    }
                }
            }

            let observed = backend
                .observe()
                .await
                .map_err(|e| backend_error("observing the storage backend failed", &e))?;
            self.remember(&backend, &observed);
            // Every volume's I/O comes with one backend call; refreshed on
            // each reconcile (a Ready volume every RESYNC at the latest).
            match backend.io_stats(&observed).await {
                Ok(io) => {
                    let stored: BTreeSet<VolumeKey> = ctx
                        .store
                        .list(Kind::Volume, None)
                        .iter()
                        .map(|o| key_of(o))
                        .collect();
                    *self.io.lock().unwrap_or_else(|e| e.into_inner()) =
                        io.into_iter().filter(|(k, _)| stored.contains(k)).collect();
                }
                Err(e) => {
                    tracing::debug!(backend = %self.name, error = %error_chain(&e), "volume I/O counters not read")
                }
            }
            let actions: Vec<Action> = backend
                .plan(&desired, &observed)
                .into_iter()
                .filter(|a| concerns(a, &key, &kept))
                .collect();
            if let Err(e) = apply_all(backend.as_ref(), &actions).await {
                // The engine logs the returned error, rate-limited.
                tracing::debug!(volume = %key, error = %error_chain(&e), "volume not programmed");
                return Err(backend_error(&format!("volume {key}"), &e));
            }
            // A refused volume has no actions of its own (its leftovers were
            // torn down above as orphans); say why.
            if let Some(r) = backend
                .refusals(&desired, &observed)
                .into_iter()
                .find(|r| r.key == key)
            {
                return refused(status, r);
            }

            // Converged only if a fresh observation plans nothing more.
            let observed = backend
                .observe()
                .await
                .map_err(|e| backend_error("observing the storage backend failed", &e))?;
            self.remember(&backend, &observed);
            let left = own(&backend.plan(&desired, &observed), &key);
            if !left.is_empty() {
                return Err(ReconcileError {
                    reason: Reason::NotConverged,
                    message: format!(
                        "after applying, the backend still needs: {}",
                        left.join("; ")
                    ),
                });
            }

            if obj.deleting {
                return Ok(Outcome::finalized(status));
            }
            let d = desired
                .iter()
                .find(|d| d.key == key)
                .expect("this volume is desired");
            let host_device = ctx
                .store
                .get(&ObjectKey::new(Kind::Function, d.function.id.clone()))
                .and_then(|f| f.status.facts.host_device.clone());
            Ok(Outcome {
                status: ready_status(
                    status,
                    d,
                    backend.kind(),
                    backend.export(&key, &observed),
                    host_device,
                ),
                finalized: false,
                requeue_after: Some(RESYNC),
            })
        })
    }

    fn plan(&self, ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((backend, observed)) = last else {
            return vec![format!(
                "nothing yet: the {} storage backend has not been observed; the volume is \
                 programmed once it is",
                self.name
            )];
        };
        if outcome == WriteOutcome::Unchanged {
            return Vec::new();
        }
        let key = key_of(obj);
        let host_nqn = self.host_nqn.as_deref();
        let (mut desired, kept) = desired_all(ctx, &key, host_nqn);
        if outcome != WriteOutcome::Deleted && !obj.deleting {
            let Some(spec) = volume_spec(obj) else {
                return vec!["nothing: the spec does not parse".into()];
            };
            match desired_of(ctx, obj, spec, host_nqn) {
                Ok(d) => {
                    if let Some(why) = backend.kind().unsupported(d.function.type_) {
                        return vec![format!("nothing: {why}")];
                    }
                    desired.push(d);
                }
                Err(why) => return vec![format!("nothing: {}", error_chain(&why))],
            }
        }
        let refused = backend
            .refusals(&desired, &observed)
            .into_iter()
            .find(|r| r.key == key)
            .map(|r| {
                format!(
                    "nothing for this volume: {}: {}",
                    Reason::from(r.reason),
                    r.message
                )
            });
        refused
            .into_iter()
            .chain(
                backend
                    .plan(&desired, &observed)
                    .iter()
                    .filter(|a| concerns(a, &key, &kept))
                    .map(|a| a.to_string()),
            )
            .collect()
    }

    fn metrics(&self, out: &mut String) {
        let io = self.io.lock().unwrap_or_else(|e| e.into_inner()).clone();
        render_volume_metrics(out, &io);
    }

    fn backend(&self) -> Option<(String, bool)> {
        let connected = self.last.lock().map(|l| l.is_some()).unwrap_or_default();
        Some((format!("storage: {}", self.name), connected))
    }
}

/// The per-volume families of `/metrics`: `tenant` and `volume` (an
/// authenticated tenant's object id; volumes count against its quota) and
/// the closed set `op` (read, write). Only volumes the backend counts are
/// present (storage-offload README, "Volume I/O counters").
pub fn render_volume_metrics(out: &mut String, io: &BTreeMap<VolumeKey, VolumeIo>) {
    use crate::metrics::{header, sample};
    for (name, help, ops) in [
        (
            "dpu_agent_volume_io_operations_total",
            "I/O operations on a volume by op (read, write), where the storage backend counts them.",
            true,
        ),
        (
            "dpu_agent_volume_io_bytes_total",
            "Bytes read and written on a volume by op, where the storage backend counts them.",
            false,
        ),
    ] {
        header(out, name, "counter", help);
        for (k, v) in io {
            for (op, n) in [
                ("read", if ops { v.read_ops } else { v.read_bytes }),
                ("write", if ops { v.write_ops } else { v.write_bytes }),
            ] {
                sample(
                    out,
                    name,
                    &[("tenant", &k.tenant), ("volume", &k.id), ("op", op)],
                    n,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::testing::{self, stored as obj};
    use crate::store::Store;
    use serde_json::Value;
    use serde_json::json;
    use std::sync::Mutex;
    use storage_offload::apply::BackendError;
    use storage_offload::nvmet::NvmetObserved;

    /// Admission (dpu-api) and the storage backend reserve the same host
    /// NQN namespace and derive the same NQN for a volume.
    #[test]
    fn admission_and_backend_agree_on_derived_host_nqns() {
        assert_eq!(
            dpu_api::validate::DERIVED_HOST_NQN_PREFIX,
            storage_offload::model::derived_host_nqn_prefix()
        );
        let key = storage_offload::model::VolumeKey::new("acme", "db");
        assert_eq!(
            dpu_api::validate::derived_host_nqn("acme", "db"),
            key.initiator_nqn()
        );
    }

    /// A desired volume `v1` on function `disk` (nvme, pf0 vf 2) from `source`.
    fn desired(source: Value) -> DesiredVolume {
        DesiredVolume {
            key: VolumeKey::new("acme", "v1"),
            spec: serde_json::from_value(json!({"function": "disk", "source": source})).unwrap(),
            function: FunctionTarget {
                id: "disk".into(),
                type_: dpu_api::spec::FunctionType::Nvme,
                pf: 0,
                vf: Some(2),
                host_nqn: function_host_nqn("acme", "disk"),
            },
        }
    }

    /// Status derivation (pure): a converged local volume is Ready with
    /// `Applied`, its backend, size and export in the typed report and the
    /// function's host device as its fact; a remote one reports no size.
    #[test]
    fn status_of_a_converged_volume() {
        let d = desired(json!({"local": {"size_mib": 2}}));
        let status = ready_status(
            Status::default(),
            &d,
            BackendKind::Nvmet,
            Some("127.0.0.1:4420".into()),
            Some("nvme0n1".into()),
        );
        assert_eq!(status.phase, Phase::Ready);
        let cond = status.condition("Programmed").unwrap();
        assert_eq!(
            (cond.status, cond.reason.as_str()),
            (ConditionStatus::True, Reason::Applied.as_str())
        );
        assert_eq!(cond.message, "presented on function disk by nvmet");
        assert_eq!(
            status.report::<VolumeReport>(),
            VolumeReport {
                backend: Some("nvmet".into()),
                size_bytes: Some(2 * 1024 * 1024),
                export: Some("127.0.0.1:4420".into()),
            }
        );
        assert_eq!(status.facts.host_device.as_deref(), Some("nvme0n1"));

        let d = desired(json!({"nvmeof": {
            "transport": "tcp", "address": "192.0.2.1", "port": 4420,
            "subnqn": "nqn.2014-08.org.example:remote"
        }}));
        let status = ready_status(Status::default(), &d, BackendKind::SpdkNvmf, None, None);
        assert_eq!(
            status.report::<VolumeReport>(),
            VolumeReport {
                backend: Some("spdk-nvmf".into()),
                size_bytes: None,
                export: None,
            }
        );
        assert_eq!(status.facts.host_device, None);
    }

    /// Status derivation (pure): a refused host NQN fails the volume with
    /// the refusal's reason and message; a source in use is a retried error.
    #[test]
    fn status_of_a_refused_volume() {
        let refusal = |reason| Refusal {
            key: VolumeKey::new("acme", "v1"),
            reason,
            message: "why".into(),
        };
        let out = refused(Status::default(), refusal(RefusalReason::HostNqn)).unwrap();
        assert_eq!(out.status.phase, Phase::Failed);
        let cond = out.status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::from(RefusalReason::HostNqn).as_str());
        assert_eq!(
            (cond.status, cond.message.as_str()),
            (ConditionStatus::False, "why")
        );
        assert!(!out.finalized);
        let err = refused(Status::default(), refusal(RefusalReason::SourceInUse)).unwrap_err();
        assert_eq!(err.reason, Reason::from(RefusalReason::SourceInUse));
        assert_eq!(err.message, "why; retrying with backoff");
    }

    fn put(store: &Store, kind: Kind, id: &str, spec: Value, deleting: bool) {
        testing::put(store, "acme", kind, id, spec, deleting);
    }

    /// A second local volume `v2` (nsid 2) on function `disk`.
    fn put_v2(ctx: &Context, deleting: bool) {
        put(
            &ctx.store,
            Kind::Volume,
            "v2",
            json!({"function": "disk", "nsid": 2, "source": {"local": {"size_mib": 1}}}),
            deleting,
        );
    }

    fn setup() -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store")).unwrap());
        put(&store, Kind::Tenant, "acme", json!({}), false);
        put(
            &store,
            Kind::Function,
            "disk",
            json!({"type": "nvme", "pf": "pf0", "vf": 2}),
            false,
        );
        put(
            &store,
            Kind::Volume,
            "v1",
            json!({"function": "disk", "source": {"local": {"size_mib": 1}}}),
            false,
        );
        (dir, Context { store })
    }

    fn kernel_in(dir: &std::path::Path) -> (Arc<dyn BlockBackend>, KernelPaths) {
        let paths = KernelPaths::under(dir);
        for d in ["subsystems", "ports", "hosts"] {
            std::fs::create_dir_all(paths.nvmet.join(d)).unwrap();
        }
        let backing = dir.join("volumes");
        std::fs::create_dir_all(&backing).unwrap();
        let b = NvmetBackend::new(
            paths.clone(),
            ConfigfsMode::PlainDirectory,
            NvmetPlanConfig {
                port: PortConfig {
                    id: 7,
                    trtype: "tcp".into(),
                    adrfam: "ipv4".into(),
                    traddr: "127.0.0.1".into(),
                    trsvcid: "4420".into(),
                },
                backing_dir: backing,
                qos_cgroup: None,
                volume_ports: 0,
            },
        );
        (Arc::new(b), paths)
    }

    /// Lists every path under `root`, for before/after comparisons.
    fn tree(root: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
                out.push(e.path().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn local_volume_becomes_ready_and_delete_leaves_configfs_as_found() {
        let (dir, ctx) = setup();
        let (backend, paths) = kernel_in(dir.path());
        let before = tree(&paths.nvmet);
        let c = Volumes::with_backend(backend, None);

        let v = obj(&ctx.store, Kind::Volume, "v1");
        let planned = c.plan(&ctx, &v, WriteOutcome::Created);
        assert!(planned[0].contains("not been observed"), "{planned:?}");

        let out = c.reconcile(&ctx, &v).await.unwrap();
        assert_eq!(out.status.phase, Phase::Ready, "{:?}", out.status);
        let cond = out.status.condition("Programmed").unwrap();
        assert_eq!(cond.status, ConditionStatus::True);
        assert_eq!(out.status.fields["backend"], json!("nvmet"));
        assert_eq!(out.status.fields["size_bytes"], json!(1024 * 1024));
        let nqn = "nqn.2026-11.dev.dpu-agent:acme:v1";
        let sub = paths.nvmet.join("subsystems").join(nqn);
        assert_eq!(
            std::fs::read_to_string(sub.join("attr_allow_any_host")).unwrap(),
            "0"
        );
        assert!(
            sub.join("allowed_hosts")
                .join("nqn.2026-11.dev.dpu-agent:acme:fn:disk")
                .exists()
        );
        // Converged: plan shows nothing, a second reconcile changes nothing.
        assert_eq!(
            c.plan(&ctx, &v, WriteOutcome::Updated),
            Vec::<String>::new()
        );
        let after_first = tree(&paths.nvmet);
        c.reconcile(&ctx, &v).await.unwrap();
        assert_eq!(tree(&paths.nvmet), after_first);
        // A file-backed namespace has no block device statistics on the
        // kernel backend: the family is there, the volume is not counted.
        let mut m = String::new();
        c.metrics(&mut m);
        assert!(
            m.contains("# TYPE dpu_agent_volume_io_bytes_total counter"),
            "{m}"
        );
        assert!(!m.contains("volume=\"v1\""), "{m}");

        // The plan of a delete names the configfs writes, in reverse.
        let lines = c.plan(&ctx, &v, WriteOutcome::Deleted);
        assert!(
            lines[0].starts_with("orphan acme/v1 [unpresent] rm"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("[delete-device] rmdir") && l.contains("ports/7")),
            "{lines:?}"
        );
        put(
            &ctx.store,
            Kind::Volume,
            "v1",
            json!({"function": "disk", "source": {"local": {"size_mib": 1}}}),
            true,
        );
        let v = obj(&ctx.store, Kind::Volume, "v1");
        let out = c.reconcile(&ctx, &v).await.unwrap();
        assert!(out.finalized);
        assert_eq!(tree(&paths.nvmet), before);
        assert_eq!(
            std::fs::read_dir(dir.path().join("volumes"))
                .unwrap()
                .count(),
            0
        );
    }

    /// The real nvmet backend (over a plain directory), recording each
    /// action it performed once it returned without an error.
    #[derive(Debug)]
    struct Recording {
        inner: Arc<dyn BlockBackend>,
        ran: Mutex<Vec<String>>,
    }

    impl BlockBackend for Recording {
        fn kind(&self) -> BackendKind {
            self.inner.kind()
        }
        fn observe(&self) -> storage_offload::apply::BoxFuture<'_, Result<Observed, BackendError>> {
            self.inner.observe()
        }
        fn plan(&self, desired: &[DesiredVolume], observed: &Observed) -> Vec<Action> {
            self.inner.plan(desired, observed)
        }
        fn apply<'a>(
            &'a self,
            action: &'a Action,
        ) -> storage_offload::apply::BoxFuture<'a, Result<(), BackendError>> {
            Box::pin(async move {
                self.inner.apply(action).await?;
                self.ran.lock().unwrap().push(action.to_string());
                Ok(())
            })
        }
        fn refusals(
            &self,
            desired: &[DesiredVolume],
            observed: &Observed,
        ) -> Vec<storage_offload::plan::Refusal> {
            self.inner.refusals(desired, observed)
        }
    }

    /// The plan `/v1/plan` shows for a volume (computed from the last
    /// observation) is, line for line, what the next reconcile has the
    /// backend perform: for a new volume and for its deletion, on the real
    /// nvmet backend writing configfs (a plain directory here), whose tree
    /// is the witness. (TENANCY.md invariant 4: what an operator reviews for
    /// a tenant's volume is all that is exported for it.)
    #[tokio::test]
    async fn the_plan_shown_is_what_the_reconcile_performs() {
        let (dir, ctx) = setup();
        let (inner, paths) = kernel_in(dir.path());
        let backend = Arc::new(Recording {
            inner,
            ran: Mutex::new(Vec::new()),
        });
        let c = Volumes::with_backend(backend.clone(), None);
        let ran = || std::mem::take(&mut *backend.ran.lock().unwrap());
        c.reconcile(&ctx, &obj(&ctx.store, Kind::Volume, "v1"))
            .await
            .unwrap();
        ran();

        put_v2(&ctx, false);
        let v2 = obj(&ctx.store, Kind::Volume, "v2");
        let planned = c.plan(&ctx, &v2, WriteOutcome::Created);
        assert!(
            planned.iter().any(|l| l.contains("acme:v2")),
            "{planned:#?}"
        );
        let out = c.reconcile(&ctx, &v2).await.unwrap();
        assert_eq!(out.status.phase, Phase::Ready, "{:?}", out.status);
        assert_eq!(ran(), planned);
        let sub = paths
            .nvmet
            .join("subsystems/nqn.2026-11.dev.dpu-agent:acme:v2");
        assert!(sub.join("namespaces/2").exists(), "{}", sub.display());
        assert_eq!(
            c.plan(&ctx, &v2, WriteOutcome::Updated),
            Vec::<String>::new()
        );

        let planned = c.plan(&ctx, &v2, WriteOutcome::Deleted);
        assert!(!planned.is_empty());
        put_v2(&ctx, true);
        let out = c
            .reconcile(&ctx, &obj(&ctx.store, Kind::Volume, "v2"))
            .await
            .unwrap();
        assert!(out.finalized);
        assert_eq!(ran(), planned);
        assert!(!sub.exists(), "{} left", sub.display());
    }

    #[tokio::test]
    async fn another_volume_is_not_touched_by_this_ones_reconcile() {
        let (dir, ctx) = setup();
        put_v2(&ctx, false);
        let (backend, paths) = kernel_in(dir.path());
        let c = Volumes::with_backend(backend, Some("nqn.2014-08.org.example:host".into()));
        c.reconcile(&ctx, &obj(&ctx.store, Kind::Volume, "v1"))
            .await
            .unwrap();
        let subs = paths.nvmet.join("subsystems");
        assert!(subs.join("nqn.2026-11.dev.dpu-agent:acme:v1").exists());
        assert!(!subs.join("nqn.2026-11.dev.dpu-agent:acme:v2").exists());
        assert!(
            subs.join(
                "nqn.2026-11.dev.dpu-agent:acme:v1/allowed_hosts/nqn.2014-08.org.example:host"
            )
            .exists()
        );
    }

    #[derive(Debug)]
    struct Down;

    impl BlockBackend for Down {
        fn kind(&self) -> BackendKind {
            BackendKind::Nvmet
        }
        fn observe(&self) -> storage_offload::apply::BoxFuture<'_, Result<Observed, BackendError>> {
            Box::pin(async { Ok(Observed::Nvmet(NvmetObserved::default())) })
        }
        fn plan(&self, desired: &[DesiredVolume], observed: &Observed) -> Vec<Action> {
            let Observed::Nvmet(o) = observed else {
                return Vec::new();
            };
            storage_offload::plan::plan_nvmet(
                desired,
                o,
                &NvmetPlanConfig {
                    port: PortConfig {
                        id: 1,
                        trtype: "tcp".into(),
                        adrfam: "ipv4".into(),
                        traddr: "127.0.0.1".into(),
                        trsvcid: "4420".into(),
                    },
                    backing_dir: "/nonexistent".into(),
                    qos_cgroup: None,
                    volume_ports: 0,
                },
            )
        }
        fn apply<'a>(
            &'a self,
            action: &'a Action,
        ) -> storage_offload::apply::BoxFuture<'a, Result<(), BackendError>> {
            Box::pin(async move {
                Err(BackendError::WrongBackend {
                    backend: BackendKind::Nvmet,
                    op: format!("{} (target unreachable)", action.op),
                })
            })
        }
    }

    #[tokio::test]
    async fn unreachable_target_is_a_retried_error_naming_the_action() {
        let (_dir, ctx) = setup();
        let c = Volumes::with_backend(Arc::new(Down), None);
        let err = c
            .reconcile(&ctx, &obj(&ctx.store, Kind::Volume, "v1"))
            .await
            .unwrap_err();
        assert_eq!(err.reason, Reason::BackendError);
        assert!(err.message.contains("volume acme/v1"), "{err}");
        assert!(err.message.contains("retrying"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_backend_is_a_retried_error() {
        let (_dir, ctx) = setup();
        let c = Volumes::new(
            "spdk (/nonexistent.sock)",
            Box::new(|| {
                Box::pin(async {
                    Err(BackendStartError::BackingDir {
                        dir: "/nonexistent".into(),
                        source: std::io::Error::other("connection refused"),
                    })
                })
            }),
            None,
        );
        let err = c
            .reconcile(&ctx, &obj(&ctx.store, Kind::Volume, "v1"))
            .await
            .unwrap_err();
        assert_eq!(err.reason, Reason::BackendUnreachable);
        assert!(err.message.contains("connection refused"), "{err}");
        assert_eq!(
            c.backend(),
            Some(("storage: spdk (/nonexistent.sock)".into(), false))
        );
    }

    /// Reconciles `v1` on a kernel backend under `dir`, which must leave it
    /// `Failed`: the controller and the volume's `Programmed` condition.
    async fn v1_fails_on_the_kernel(
        dir: &std::path::Path,
        ctx: &Context,
    ) -> (Volumes, dpu_api::object::Condition) {
        let (backend, _) = kernel_in(dir);
        let c = Volumes::with_backend(backend, None);
        let out = c
            .reconcile(ctx, &obj(&ctx.store, Kind::Volume, "v1"))
            .await
            .unwrap();
        assert_eq!(out.status.phase, Phase::Failed, "{:?}", out.status);
        let cond = out.status.condition("Programmed").unwrap().clone();
        (c, cond)
    }

    #[tokio::test]
    async fn virtio_blk_on_nvmet_fails_with_the_reason() {
        let (dir, ctx) = setup();
        put(
            &ctx.store,
            Kind::Function,
            "disk",
            json!({"type": "virtio-blk", "pf": "pf0"}),
            false,
        );
        let (_, cond) = v1_fails_on_the_kernel(dir.path(), &ctx).await;
        assert_eq!(cond.reason, "Unsupported");
        assert!(cond.message.contains("virtio-blk"), "{}", cond.message);
    }

    /// TENANCY.md invariant 4 at the controller: a volume naming another
    /// volume's derived host NQN fails with the field named; nothing is
    /// connected.
    #[tokio::test]
    async fn another_volumes_host_nqn_fails_the_volume() {
        let (dir, ctx) = setup();
        put(
            &ctx.store,
            Kind::Volume,
            "v1",
            json!({"function": "disk", "source": {"nvmeof": {
                "transport": "tcp", "address": "192.0.2.1", "port": 4420,
                "subnqn": "nqn.2014-08.org.example:remote",
                "hostnqn": "nqn.2026-11.dev.dpu-agent:other:db:initiator"}}}),
            false,
        );
        let (c, cond) = v1_fails_on_the_kernel(dir.path(), &ctx).await;
        assert_eq!(cond.reason, "HostNqnRefused");
        assert!(
            cond.message.contains("spec.source.nvmeof.hostnqn"),
            "{}",
            cond.message
        );
        let planned = c.plan(
            &ctx,
            &obj(&ctx.store, Kind::Volume, "v1"),
            WriteOutcome::Updated,
        );
        assert!(planned[0].contains("HostNqnRefused"), "{planned:?}");
        assert!(
            planned.iter().all(|l| !l.contains("nvme-fabrics")),
            "{planned:?}"
        );
    }

    /// TENANCY.md invariant 4 at the controller: tenant acme's volume holds
    /// its own connection to a remote subsystem (seen in sysfs, with the
    /// agent's marker); tenant evil's volume on the same subsystem, with
    /// the kernel's native multipath on, is refused with a retried
    /// `SourceInUse` that names nothing of acme's, and is never pointed at
    /// acme's block device.
    #[tokio::test]
    async fn a_second_tenant_on_the_same_subsystem_is_refused_not_handed_the_device() {
        let (dir, ctx) = setup();
        let source = json!({"nvmeof": {"transport": "tcp", "address": "192.0.2.1",
            "port": 4420, "subnqn": "nqn.2014-08.org.example:remote"}});
        put(
            &ctx.store,
            Kind::Volume,
            "v1",
            json!({"function": "disk", "source": source}),
            false,
        );
        testing::put(&ctx.store, "evil", Kind::Tenant, "evil", json!({}), false);
        testing::put(
            &ctx.store,
            "evil",
            Kind::Function,
            "edisk",
            json!({"type": "nvme", "pf": "pf0", "vf": 3}),
            false,
        );
        testing::put(
            &ctx.store,
            "evil",
            Kind::Volume,
            "w",
            json!({"function": "edisk", "source": source}),
            false,
        );
        let (backend, paths) = kernel_in(dir.path());
        let hostnqn = VolumeKey::new("acme", "v1").initiator_nqn();
        let ctrl = paths.sys_class_nvme.join("nvme1");
        std::fs::create_dir_all(ctrl.join("nvme1c1n1")).unwrap();
        for (f, v) in [
            ("transport", "tcp".to_string()),
            ("address", "traddr=192.0.2.1,trsvcid=4420".into()),
            ("subsysnqn", "nqn.2014-08.org.example:remote".into()),
            ("hostnqn", hostnqn.clone()),
            (
                "hostid",
                storage_offload::model::initiator_host_id(&hostnqn),
            ),
        ] {
            std::fs::write(ctrl.join(f), format!("{v}\n")).unwrap();
        }
        let c = Volumes::with_backend(backend, None);
        let w = obj(&ctx.store, Kind::Volume, "w");
        let err = c.reconcile(&ctx, &w).await.unwrap_err();
        assert_eq!(err.reason, Reason::SourceInUse);
        assert!(err.message.contains("multipath"), "{err}");
        assert!(!err.message.contains("acme"), "{err}");
        let subs = paths.nvmet.join("subsystems");
        assert!(!subs.join("nqn.2026-11.dev.dpu-agent:evil:w").exists());
        let planned = c.plan(&ctx, &w, WriteOutcome::Updated);
        assert!(
            planned.iter().all(|l| !l.contains("nvme1n1")),
            "{planned:?}"
        );
    }

    /// TENANCY.md invariant 6: a volume's series carry only its tenant, its
    /// id (a quota'd kind) and the closed set `op`.
    #[test]
    fn volume_metrics_render_ops_and_bytes_by_op() {
        let io = BTreeMap::from([(
            VolumeKey::new("acme", "db"),
            VolumeIo {
                read_ops: 2,
                read_bytes: 36864,
                write_ops: 1,
                write_bytes: 4096,
            },
        )]);
        let mut out = String::new();
        render_volume_metrics(&mut out, &io);
        for line in [
            "dpu_agent_volume_io_operations_total{tenant=\"acme\",volume=\"db\",op=\"read\"} 2",
            "dpu_agent_volume_io_operations_total{tenant=\"acme\",volume=\"db\",op=\"write\"} 1",
            "dpu_agent_volume_io_bytes_total{tenant=\"acme\",volume=\"db\",op=\"read\"} 36864",
            "dpu_agent_volume_io_bytes_total{tenant=\"acme\",volume=\"db\",op=\"write\"} 4096",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
