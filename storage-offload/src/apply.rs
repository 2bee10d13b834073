//! Executes planned actions on a backend, behind the [`BlockBackend`] trait
//! the volumes controller drives: observe → [`plan`](BlockBackend::plan)
//! (pure) → [`apply`](BlockBackend::apply) each action in order. Apply stops
//! at the first failure; the next reconcile observes again and re-plans, so a
//! partial apply is just another diff.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;

use crate::model::{
    BackendKind, DesiredVolume, ObservedSubsystem, SpdkObserved, VolumeIo, VolumeKey,
    initiator_nqn_allowed,
};
use crate::nvmet::configfs::{self, ConfigfsExecutor, ConfigfsMode, DeviceRef, NvmetError};
use crate::nvmet::{KernelPaths, NvmetObserved, fabrics, qos, tc};
use crate::plan::{self, Action, NvmetPlanConfig, Op, Owner, Refusal, SpdkPlanConfig};
use crate::spdk::methods as m;
use crate::spdk::snap;
use crate::spdk::{RpcRequest, SpdkClient, SpdkError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend observed; the variant matches the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Spdk(SpdkObserved),
    Nvmet(NvmetObserved),
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("SPDK call failed")]
    Spdk(#[from] SpdkError),
    #[error("kernel storage operation failed")]
    Nvmet(#[from] NvmetError),
    #[error("the {backend:?} backend cannot perform {op}")]
    WrongBackend { backend: BackendKind, op: String },
    #[error(
        "{method} returned bdevs {got:?}, not {expected}: the remote subsystem's first \
         namespace must be nsid 1"
    )]
    UnexpectedBdev {
        method: String,
        expected: String,
        got: Vec<String>,
    },
    #[error("a blocking task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "refusing to connect as host NQN {hostnqn} for {owner}: only a volume's own initiator \
         NQN may be used in the agent's derived namespace"
    )]
    HostNqnRefused { owner: String, hostnqn: String },
}

/// Defence in depth below the planner: a connection to a remote source is
/// made only for a desired volume, and never as a host NQN the agent
/// derives for another volume or a function.
fn check_initiator(owner: &Owner, hostnqn: &str) -> Result<(), BackendError> {
    match owner {
        Owner::Volume(k) if initiator_nqn_allowed(k, hostnqn) => Ok(()),
        _ => Err(BackendError::HostNqnRefused {
            owner: owner.to_string(),
            hostnqn: hostnqn.to_string(),
        }),
    }
}

/// Creates `dir` (and its parents) if needed and makes it owner-only
/// (0700): it holds tenants' volume data.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates (or keeps) a sparse backing file of at least `size_bytes`,
/// owner-only (0600) in an owner-only directory; an existing file with a
/// looser mode is tightened. Never shrinks a file.
pub fn create_backing_file(path: &Path, size_bytes: u64) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.permissions().mode() & 0o777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    if meta.len() < size_bytes {
        f.set_len(size_bytes)?;
    }
    Ok(())
}

/// A failed action in a list, with its place and rendered line.
#[derive(Debug, Error)]
#[error("action {index} ({line}) failed")]
pub struct ApplyError {
    pub index: usize,
    pub line: String,
    #[source]
    pub source: BackendError,
}

/// A block backend the volumes controller can drive. Object-safe, so the
/// agent can hold a `Box<dyn BlockBackend>` chosen at startup.
pub trait BlockBackend: Send + Sync + fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Reads everything the planner needs from the backend.
    fn observe(&self) -> BoxFuture<'_, Result<Observed, BackendError>>;

    /// Pure: the actions that take `observed` to `desired`.
    fn plan(&self, desired: &[DesiredVolume], observed: &Observed) -> Vec<Action>;

    /// Performs one action.
    fn apply<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Desired volumes this backend will not realize, and why (pure, from
    /// the same observation as [`plan`](Self::plan), which leaves them out).
    fn refusals(&self, _desired: &[DesiredVolume], _observed: &Observed) -> Vec<Refusal> {
        Vec::new()
    }

    /// I/O counters of the volumes this backend serves, where it counts
    /// them (the crate README says which backend counts what); volumes it
    /// cannot count are absent.
    fn io_stats<'a>(
        &'a self,
        _observed: &'a Observed,
    ) -> BoxFuture<'a, Result<BTreeMap<VolumeKey, VolumeIo>, BackendError>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }

    /// Where the host connects to reach volume `key` over the network
    /// (`traddr:trsvcid`), when the backend exports it that way.
    fn export(&self, _key: &VolumeKey, _observed: &Observed) -> Option<String> {
        None
    }
}

/// Applies `actions` in order, stopping at the first failure.
pub async fn apply_all(backend: &dyn BlockBackend, actions: &[Action]) -> Result<(), ApplyError> {
    for (index, a) in actions.iter().enumerate() {
        tracing::info!(action = %a, "applying");
        backend.apply(a).await.map_err(|source| ApplyError {
            index,
            line: a.to_string(),
            source,
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------- SPDK

/// SPDK or SNAP over its RPC socket.
#[derive(Debug, Clone)]
pub struct SpdkBackend {
    pub client: SpdkClient,
    pub config: SpdkPlanConfig,
}

/// Methods each flavour needs; `connect` reports the missing ones.
pub fn required_methods(kind: BackendKind) -> &'static [&'static str] {
    match kind {
        BackendKind::Snap => &[
            "bdev_get_bdevs",
            "bdev_nvme_attach_controller",
            "bdev_nvme_detach_controller",
            "bdev_nvme_get_controllers",
            "bdev_set_qos_limit",
            "nvme_subsystem_create",
            "nvme_subsystem_list",
            "nvme_namespace_create",
            "nvme_controller_create",
            "nvme_controller_list",
            "nvme_controller_attach_ns",
            "virtio_blk_controller_create",
            "virtio_blk_controller_list",
        ],
        _ => &[
            "bdev_get_bdevs",
            "bdev_malloc_create",
            "bdev_nvme_attach_controller",
            "bdev_nvme_detach_controller",
            "bdev_nvme_get_controllers",
            "bdev_set_qos_limit",
            "nvmf_create_transport",
            "nvmf_get_transports",
            "nvmf_create_subsystem",
            "nvmf_get_subsystems",
            "nvmf_subsystem_add_ns",
            "nvmf_subsystem_add_host",
            "nvmf_subsystem_add_listener",
            "nvmf_delete_subsystem",
            "vhost_create_blk_controller",
            "vhost_get_controllers",
        ],
    }
}

impl SpdkBackend {
    /// Connects, loads the server's method list (from then on the client
    /// refuses methods the server does not offer), and returns the backend
    /// with the required methods the server lacks, for the operator.
    pub async fn connect(
        socket: impl AsRef<Path>,
        config: SpdkPlanConfig,
    ) -> Result<(Self, Vec<&'static str>), SpdkError> {
        let client = SpdkClient::connect(socket).await?;
        let offered = client.load_methods().await?;
        let missing: Vec<&'static str> = required_methods(config.kind)
            .iter()
            .copied()
            .filter(|mth| !offered.contains(*mth))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "the SPDK server lacks methods; volumes needing them will fail"
            );
        }
        Ok((SpdkBackend { client, config }, missing))
    }

    async fn observe_spdk(&self) -> Result<SpdkObserved, SpdkError> {
        let c = &self.client;
        let mut obs = SpdkObserved::default();
        for b in c.call(&m::BdevGetBdevs::default()).await? {
            obs.bdevs
                .insert(b.name, b.assigned_rate_limits.unwrap_or_default());
        }
        obs.nvme_controllers = c
            .call(&m::BdevNvmeGetControllers::default())
            .await?
            .into_iter()
            .map(|n| n.name)
            .collect();
        if self.config.kind == BackendKind::Snap {
            let subs = c.call(&snap::NvmeSubsystemList::default()).await?;
            for nqn in snap::names_in(&subs, "nqn") {
                // Namespaces per subsystem are not observable until the
                // list's shape is confirmed; the planner re-creates them only
                // with the subsystem.
                obs.subsystems.entry(nqn).or_default();
            }
            for list in [
                c.call(&snap::NvmeControllerList::default()).await?,
                c.call(&snap::VirtioBlkControllerList::default()).await?,
            ] {
                obs.controllers.extend(snap::names_in(&list, "name"));
                obs.controllers.extend(snap::names_in(&list, "ctrl"));
            }
        } else {
            obs.nvmf_transports = c
                .call(&m::NvmfGetTransports::default())
                .await?
                .into_iter()
                .map(|t| t.trtype)
                .collect();
            for s in c.call(&m::NvmfGetSubsystems::default()).await? {
                obs.subsystems.insert(
                    s.nqn.clone(),
                    ObservedSubsystem {
                        hosts: s.hosts.into_iter().map(|h| h.nqn).collect(),
                        namespaces: s
                            .namespaces
                            .iter()
                            .map(|n| (n.nsid, n.bdev().to_string()))
                            .collect(),
                        listeners: s.listen_addresses,
                    },
                );
            }
            obs.controllers = c
                .call(&m::VhostGetControllers::default())
                .await?
                .into_iter()
                .map(|v| v.ctrlr)
                .collect();
        }
        Ok(obs)
    }

    async fn apply_rpc(&self, req: &RpcRequest) -> Result<(), BackendError> {
        let result = self.client.request(req).await?;
        if req.method == "bdev_nvme_attach_controller" {
            // The plan names the source bdev `<controller>n1`; check SPDK
            // agrees, so a remote with another first nsid fails loudly here.
            let name = req
                .params
                .as_ref()
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_default();
            let expected = format!("{name}n1");
            let got: Vec<String> = serde_json::from_value(result).unwrap_or_default();
            if !got.contains(&expected) {
                return Err(BackendError::UnexpectedBdev {
                    method: req.method.clone(),
                    expected,
                    got,
                });
            }
        }
        Ok(())
    }
}

impl BlockBackend for SpdkBackend {
    fn kind(&self) -> BackendKind {
        self.config.kind
    }

    fn observe(&self) -> BoxFuture<'_, Result<Observed, BackendError>> {
        Box::pin(async move { Ok(Observed::Spdk(self.observe_spdk().await?)) })
    }

    fn plan(&self, desired: &[DesiredVolume], observed: &Observed) -> Vec<Action> {
        match observed {
            Observed::Spdk(o) => plan::plan_spdk(desired, o, &self.config),
            Observed::Nvmet(_) => Vec::new(),
        }
    }

    fn refusals(&self, desired: &[DesiredVolume], _observed: &Observed) -> Vec<Refusal> {
        plan::refusals_spdk(desired)
    }

    /// `bdev_get_iostat` of every bdev; a volume's I/O is its source bdev's
    /// (the malloc bdev, or namespace 1 of its remote controller).
    fn io_stats<'a>(
        &'a self,
        _observed: &'a Observed,
    ) -> BoxFuture<'a, Result<BTreeMap<VolumeKey, VolumeIo>, BackendError>> {
        Box::pin(async move {
            let reply = self.client.call(&m::BdevGetIostat::default()).await?;
            Ok(spdk_volume_io(&reply))
        })
    }

    fn apply<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            match &action.op {
                Op::Rpc(req) => {
                    if req.method == "bdev_nvme_attach_controller" {
                        let hostnqn = req
                            .params
                            .as_ref()
                            .and_then(|p| p.get("hostnqn"))
                            .and_then(|n| n.as_str())
                            .unwrap_or_default();
                        check_initiator(&action.owner, hostnqn)?;
                    }
                    self.apply_rpc(req).await
                }
                other => Err(BackendError::WrongBackend {
                    backend: self.config.kind,
                    op: other.to_string(),
                }),
            }
        })
    }
}

// ---------------------------------------------------------------- kernel

/// The kernel backend: nvmet configfs, the NVMe/TCP initiator, io.max.
#[derive(Debug, Clone)]
pub struct NvmetBackend {
    pub paths: KernelPaths,
    pub mode: ConfigfsMode,
    pub config: NvmetPlanConfig,
    /// How long to wait for a connected controller's namespace to appear.
    pub device_wait: Duration,
}

impl NvmetBackend {
    pub fn new(paths: KernelPaths, mode: ConfigfsMode, config: NvmetPlanConfig) -> Self {
        NvmetBackend {
            paths,
            mode,
            config,
            device_wait: Duration::from_secs(10),
        }
    }

    fn observe_sync(&self) -> NvmetObserved {
        let mut obs = configfs::observe_configfs(&self.paths.nvmet);
        obs.controllers = fabrics::list_controllers(&self.paths);
        obs.backing_files = std::fs::read_dir(&self.config.backing_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        obs.backing_files.sort();
        if let Some(cg) = &self.config.qos_cgroup {
            obs.io_max = read_io_max(&self.paths, cg);
        }
        obs.multipath = crate::nvmet::multipath_enabled(&self.paths.nvme_multipath);
        if self.config.volume_ports > 0 && self.mode == ConfigfsMode::Kernel {
            match self
                .tc_interface()
                .and_then(|(name, index)| tc::observe(&name, index))
            {
                Ok(t) => obs.tc = Some(t),
                Err(e) => tracing::warn!(error = %e, "cannot read traffic control"),
            }
        }
        obs
    }

    /// The interface holding the ports' address, for traffic control.
    fn tc_interface(&self) -> std::io::Result<(String, u32)> {
        let addr: std::net::IpAddr = self.config.port.traddr.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "port address {:?} is not an IP address",
                    self.config.port.traddr
                ),
            )
        })?;
        tc::interface_of(addr)
    }

    fn resolve(&self, d: &DeviceRef) -> Result<PathBuf, NvmetError> {
        match d {
            DeviceRef::Path(p) => Ok(p.clone()),
            DeviceRef::Fabrics(opts) => {
                let deadline = std::time::Instant::now() + self.device_wait;
                loop {
                    if let Some(p) = fabrics::find_connection_device(&self.paths, opts) {
                        return Ok(p);
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(NvmetError::DeviceNotFound {
                            device: d.to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn apply_sync(&self, op: &Op) -> Result<(), BackendError> {
        match op {
            Op::Configfs(c) => {
                let ex = ConfigfsExecutor::new(&self.paths.nvmet, self.mode);
                ex.apply(c, &|d| self.resolve(d))?;
            }
            Op::FabricsConnect(o) => {
                let (instance, cntlid) = fabrics::connect(&self.paths, o)?;
                tracing::info!(instance, cntlid, nqn = %o.nqn, "NVMe/TCP controller connected");
            }
            Op::FabricsDisconnect { instance } => fabrics::disconnect(&self.paths, *instance)?,
            Op::CreateBackingFile { path, size_bytes } => {
                create_backing_file(path, *size_bytes).map_err(|source| NvmetError::Io {
                    op: op.to_string(),
                    source,
                })?;
            }
            Op::RemoveBackingFile { path } => {
                std::fs::remove_file(path).map_err(|source| NvmetError::Io {
                    op: op.to_string(),
                    source,
                })?
            }
            Op::SetIoMax {
                cgroup,
                device,
                limits,
            } => {
                let path = self.resolve(device)?;
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let dev = qos::device_numbers(&self.paths, name)?;
                qos::write_io_max(cgroup, &dev, limits)?;
            }
            Op::Tc { op: t, .. } => {
                let io = |source| NvmetError::Io {
                    op: op.to_string(),
                    source,
                };
                let (_, index) = self.tc_interface().map_err(io)?;
                tc::apply(index, t).map_err(io)?;
            }
            Op::Rpc(_) => {
                return Err(BackendError::WrongBackend {
                    backend: BackendKind::Nvmet,
                    op: op.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Reads `<cgroup>/io.max` into device path → limits.
fn read_io_max(
    paths: &KernelPaths,
    cgroup: &Path,
) -> std::collections::BTreeMap<String, qos::IoMax> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(cgroup.join("io.max")) else {
        return out;
    };
    // MAJ:MIN → device name, from /sys/class/block/*/dev.
    let mut names = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(&paths.sys_class_block) {
        for e in rd.filter_map(|e| e.ok()) {
            if let (Ok(n), Ok(d)) = (
                e.file_name().into_string(),
                std::fs::read_to_string(e.path().join("dev")),
            ) {
                names.insert(d.trim().to_string(), n);
            }
        }
    }
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next() else { continue };
        let Some(name) = names.get(dev) else { continue };
        out.insert(
            paths.dev.join(name).to_string_lossy().into_owned(),
            qos::parse_io_max(it),
        );
    }
    out
}

/// Volume I/O from a `bdev_get_iostat` reply: the counters of each agent
/// volume's source bdev; other bdevs are ignored.
pub fn spdk_volume_io(reply: &m::BdevIostats) -> BTreeMap<VolumeKey, VolumeIo> {
    let mut out = BTreeMap::new();
    for b in &reply.bdevs {
        let Some(key) = VolumeKey::from_object_name(&b.name) else {
            continue;
        };
        if b.name != key.source_bdev(false) && b.name != key.source_bdev(true) {
            continue;
        }
        out.insert(
            key,
            VolumeIo {
                read_ops: b.num_read_ops,
                read_bytes: b.bytes_read,
                write_ops: b.num_write_ops,
                write_bytes: b.bytes_written,
            },
        );
    }
    out
}

/// Volume I/O of the kernel backend: for each agent subsystem, the
/// `stat` of the block device under its namespaces (`/sys/class/block/
/// <dev>/stat`). File-backed namespaces (local volumes) have no such
/// counters and are absent.
pub fn nvmet_volume_io(
    paths: &KernelPaths,
    observed: &NvmetObserved,
) -> BTreeMap<VolumeKey, VolumeIo> {
    let mut out = BTreeMap::new();
    for (nqn, sub) in &observed.subsystems {
        let Some(key) = VolumeKey::from_subsystem_nqn(nqn) else {
            continue;
        };
        let mut total: Option<VolumeIo> = None;
        for ns in sub.namespaces.values() {
            let Ok(rel) = Path::new(&ns.device_path).strip_prefix(&paths.dev) else {
                continue;
            };
            let Some(dev) = rel.to_str().filter(|d| !d.is_empty() && !d.contains('/')) else {
                continue;
            };
            let Some(io) = std::fs::read_to_string(paths.sys_class_block.join(dev).join("stat"))
                .ok()
                .and_then(|t| VolumeIo::from_block_stat(&t))
            else {
                continue;
            };
            let t = total.get_or_insert_with(VolumeIo::default);
            t.read_ops = t.read_ops.saturating_add(io.read_ops);
            t.read_bytes = t.read_bytes.saturating_add(io.read_bytes);
            t.write_ops = t.write_ops.saturating_add(io.write_ops);
            t.write_bytes = t.write_bytes.saturating_add(io.write_bytes);
        }
        if let Some(t) = total {
            out.insert(key, t);
        }
    }
    out
}

impl BlockBackend for NvmetBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nvmet
    }

    fn observe(&self) -> BoxFuture<'_, Result<Observed, BackendError>> {
        Box::pin(async move {
            let me = self.clone();
            Ok(Observed::Nvmet(
                tokio::task::spawn_blocking(move || me.observe_sync()).await?,
            ))
        })
    }

    fn plan(&self, desired: &[DesiredVolume], observed: &Observed) -> Vec<Action> {
        match observed {
            Observed::Nvmet(o) => plan::plan_nvmet(desired, o, &self.config),
            Observed::Spdk(_) => Vec::new(),
        }
    }

    fn refusals(&self, desired: &[DesiredVolume], observed: &Observed) -> Vec<Refusal> {
        match observed {
            Observed::Nvmet(o) => plan::refusals_nvmet(desired, o),
            Observed::Spdk(_) => Vec::new(),
        }
    }

    fn io_stats<'a>(
        &'a self,
        observed: &'a Observed,
    ) -> BoxFuture<'a, Result<BTreeMap<VolumeKey, VolumeIo>, BackendError>> {
        Box::pin(async move {
            let Observed::Nvmet(o) = observed else {
                return Ok(BTreeMap::new());
            };
            let (paths, o) = (self.paths.clone(), o.clone());
            Ok(tokio::task::spawn_blocking(move || nvmet_volume_io(&paths, &o)).await?)
        })
    }

    fn export(&self, key: &VolumeKey, observed: &Observed) -> Option<String> {
        match observed {
            Observed::Nvmet(o) => plan::nvmet_export(o, key),
            Observed::Spdk(_) => None,
        }
    }

    fn apply<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if let Op::FabricsConnect(o) = &action.op {
                check_initiator(&action.owner, &o.hostnqn)?;
            }
            let me = self.clone();
            let op = action.op.clone();
            tokio::task::spawn_blocking(move || me.apply_sync(&op)).await?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FunctionTarget, VolumeKey, function_host_nqn};
    use dpu_api::spec::{FunctionType, LocalSource, VolumeSource, VolumeSpec};

    /// A kernel backend in plain directories under `paths` (no configfs),
    /// its port 7 on 127.0.0.1:4420/tcp, backing files in `backing_dir`.
    fn test_backend(paths: KernelPaths, backing_dir: PathBuf) -> NvmetBackend {
        let listen = "127.0.0.1:4420".parse().unwrap();
        let plan = NvmetPlanConfig::tcp(7, listen, backing_dir);
        NvmetBackend::new(paths, ConfigfsMode::PlainDirectory, plan)
    }

    /// Kernel backend I/O: the `stat` of the block device under an agent
    /// subsystem's namespace; file-backed namespaces and foreign
    /// subsystems count nothing.
    #[test]
    fn nvmet_volume_io_reads_the_namespace_devices_stat() {
        use crate::nvmet::configfs::{ObservedNamespace, ObservedNvmetSubsystem};
        let dir = tempfile::tempdir().unwrap();
        let paths = KernelPaths::under(dir.path());
        let stat = paths.sys_class_block.join("nvme1n1");
        std::fs::create_dir_all(&stat).unwrap();
        std::fs::write(
            stat.join("stat"),
            "       4        0       64        1        2        0       16        1        0        2        2\n",
        )
        .unwrap();
        let ns = |p: String| ObservedNvmetSubsystem {
            namespaces: [(
                1,
                ObservedNamespace {
                    device_path: p,
                    enabled: true,
                },
            )]
            .into(),
            ..Default::default()
        };
        let remote = VolumeKey::new("acme", "db");
        let local = VolumeKey::new("acme", "scratch");
        let mut o = NvmetObserved::default();
        let dev = paths.dev.join("nvme1n1").display().to_string();
        o.subsystems.insert(remote.subsystem_nqn(), ns(dev.clone()));
        o.subsystems.insert(
            local.subsystem_nqn(),
            ns("/var/lib/dpu/volumes/x.img".into()),
        );
        o.subsystems
            .insert("nqn.2014-08.org.example:other".into(), ns(dev));
        let io = nvmet_volume_io(&paths, &o);
        assert_eq!(io.len(), 1, "{io:?}");
        assert_eq!(
            io[&remote],
            VolumeIo {
                read_ops: 4,
                read_bytes: 64 * 512,
                write_ops: 2,
                write_bytes: 16 * 512,
            }
        );
    }

    #[test]
    fn spdk_volume_io_takes_each_volumes_source_bdev() {
        let b = |name: &str, ops: u64| m::BdevIostat {
            name: name.into(),
            num_read_ops: ops,
            bytes_read: ops * 4096,
            ..Default::default()
        };
        let reply = m::BdevIostats {
            tick_rate: 1,
            bdevs: vec![
                b("dpu_acme_db_srcn1", 3),
                b("dpu_acme_tmp_src", 5),
                b("dpu_acme_tmp_other", 7),
                b("Nvme0n1", 9),
            ],
        };
        let io = spdk_volume_io(&reply);
        assert_eq!(io.len(), 2, "{io:?}");
        assert_eq!(io[&VolumeKey::new("acme", "db")].read_ops, 3);
        assert_eq!(io[&VolumeKey::new("acme", "tmp")].read_bytes, 5 * 4096);
    }

    /// The kernel backend end to end over a temp dir: plan, apply, observe
    /// converged, remove, observe clean.
    #[tokio::test]
    async fn kernel_backend_converges_in_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KernelPaths::under(dir.path());
        for d in ["subsystems", "ports", "hosts"] {
            std::fs::create_dir_all(paths.nvmet.join(d)).unwrap();
        }
        let backing = dir.path().join("volumes");
        std::fs::create_dir_all(&backing).unwrap();
        let b = test_backend(paths, backing.clone());
        let desired = vec![DesiredVolume {
            key: VolumeKey::new("t", "v"),
            spec: VolumeSpec {
                function: "f".into(),
                nsid: None,
                source: VolumeSource::Local(LocalSource { size_mib: 1 }),
                qos: None,
                read_only: None,
            },
            function: FunctionTarget {
                id: "f".into(),
                type_: FunctionType::Nvme,
                pf: 0,
                vf: None,
                host_nqn: function_host_nqn("t", "f"),
            },
        }];
        let obs = b.observe().await.unwrap();
        let actions = b.plan(&desired, &obs);
        assert!(!actions.is_empty());
        apply_all(&b, &actions).await.unwrap();
        let obs = b.observe().await.unwrap();
        assert_eq!(b.plan(&desired, &obs), []);
        assert_eq!(
            std::fs::metadata(backing.join("dpu_t_v_img"))
                .unwrap()
                .len(),
            1024 * 1024
        );

        let teardown = b.plan(&[], &obs);
        apply_all(&b, &teardown).await.unwrap();
        let Observed::Nvmet(obs) = b.observe().await.unwrap() else {
            panic!()
        };
        assert!(obs.subsystems.is_empty() && obs.hosts.is_empty());
        assert!(obs.backing_files.is_empty());
        assert!(
            obs.ports.is_empty(),
            "the agent's port is removed with the last volume"
        );
    }

    /// Local volume data is the tenant's: the backing directory is 0700 and
    /// each backing file 0600, also when they existed with looser modes.
    #[tokio::test]
    async fn backing_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let backing = dir.path().join("state/volumes");
        let b = test_backend(KernelPaths::under(dir.path()), backing.clone());
        let file = backing.join("dpu_t_v_img");
        let create = Action {
            owner: Owner::Volume(VolumeKey::new("t", "v")),
            phase: plan::Phase::AttachSource,
            op: Op::CreateBackingFile {
                path: file.clone(),
                size_bytes: 4096,
            },
        };
        b.apply(&create).await.unwrap();
        assert_eq!(mode(&backing), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 4096);

        std::fs::set_permissions(&backing, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        b.apply(&create).await.unwrap();
        assert_eq!(mode(&backing), 0o700);
        assert_eq!(mode(&file), 0o600);
    }

    /// Below the planner: a connect as another volume's (or a function's)
    /// derived host NQN, or for no volume, is refused before the kernel
    /// is touched.
    #[tokio::test]
    async fn connecting_as_another_volumes_host_nqn_is_refused_when_applying() {
        let dir = tempfile::tempdir().unwrap();
        let b = test_backend(KernelPaths::under(dir.path()), dir.path().join("volumes"));
        let me = VolumeKey::new("acme", "db");
        let connect = |owner: Owner, hostnqn: String| Action {
            owner,
            phase: plan::Phase::AttachSource,
            op: Op::FabricsConnect(crate::nvmet::ConnectOptions {
                transport: "tcp".into(),
                traddr: "192.0.2.1".into(),
                trsvcid: "4420".into(),
                nqn: "nqn.2014-08.org.example:remote".into(),
                hostnqn,
                hostid: None,
            }),
        };
        for (owner, nqn) in [
            (
                Owner::Volume(me.clone()),
                VolumeKey::new("victim", "db").initiator_nqn(),
            ),
            (Owner::Volume(me.clone()), function_host_nqn("victim", "f")),
            (Owner::Shared, me.initiator_nqn()),
        ] {
            let e = b.apply(&connect(owner, nqn.clone())).await.unwrap_err();
            assert!(
                matches!(&e, BackendError::HostNqnRefused { hostnqn, .. } if *hostnqn == nqn),
                "{e}"
            );
        }
        // The volume's own NQN passes the check (and then fails on the
        // absent fabrics device of the temp dir, not on the check).
        let e = b
            .apply(&connect(Owner::Volume(me.clone()), me.initiator_nqn()))
            .await
            .unwrap_err();
        assert!(matches!(e, BackendError::Nvmet(_)), "{e}");
    }
}
