//! A kubelet device plugin (API v1beta1, `proto/deviceplugin_v1beta1.proto`,
//! generated with tonic/prost): the functions assigned to this host become
//! schedulable resources, one per tenant and function class
//! (`dpu.local/acme-net`, `dpu.local/acme-nvme`, `dpu.local/acme-net-vfio`
//! for `attach: vfio`).
//!
//! - Each resource is served on its own socket `dpu-<tenant>-<class>.sock`
//!   in the device-plugins directory and registered with the kubelet on
//!   `kubelet.sock` there.
//! - `ListAndWatch` sends the resource's devices (the function ids) and
//!   again after every change; a device is `Healthy` while it is exposed
//!   (resolved on this host, bound to vfio-pci if asked) and the agent's
//!   lease holds, `Unhealthy` otherwise.
//! - `Allocate` answers the CDI device names (`dpu.local/function=<id>`, the
//!   specs the daemon writes) and `DPU_FUNCTIONS` / `DPU_PCI_ADDRESSES` in
//!   the environment; it refuses ids that are not this resource's or not
//!   healthy, naming them.
//! - A restarted kubelet recreates `kubelet.sock` and removes the plugins'
//!   sockets: the manager notices the new socket (checked every
//!   [`POLL`]), serves again on fresh sockets and registers every resource
//!   anew.
//! - A resource whose functions all went away stays registered with no
//!   devices (the kubelet then shows 0 allocatable).
//!
//! Nothing is done while the device-plugins directory does not exist (a
//! host without kubelet).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{UnixListenerStream, WatchStream};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::assignments::Assignments;
use crate::cdi::ExposedFunction;

/// Generated from `proto/deviceplugin_v1beta1.proto`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}

use v1beta1::device_plugin_server::{DevicePlugin, DevicePluginServer};
use v1beta1::registration_client::RegistrationClient;

pub const API_VERSION: &str = "v1beta1";
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
pub const KUBELET_SOCKET: &str = "kubelet.sock";
pub const DEFAULT_DOMAIN: &str = "dpu.local";
pub const HEALTHY: &str = "Healthy";
pub const UNHEALTHY: &str = "Unhealthy";
/// How often the kubelet socket and the plugin sockets are checked.
pub const POLL: Duration = Duration::from_millis(500);

/// One device of one resource, as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDevice {
    /// `dpu.local/acme-net`.
    pub resource: String,
    /// The function id.
    pub id: String,
    /// Exposed on this host (before the lease is applied).
    pub exposed: bool,
    /// `dpu.local/function=<id>`.
    pub cdi_name: String,
    pub pci_address: Option<String>,
    pub numa_node: Option<i32>,
    /// Character devices `Allocate` hands over beside the CDI name (an RDMA
    /// function's `/dev/infiniband/uverbsN` and `rdma_cm`).
    pub device_nodes: Vec<String>,
}

/// The devices with the lease applied, as the plugin serves them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginState {
    pub devices: Vec<PluginDevice>,
    pub agent_healthy: bool,
}

impl PluginState {
    pub fn healthy(&self, d: &PluginDevice) -> bool {
        d.exposed && self.agent_healthy
    }

    pub fn resources(&self) -> BTreeSet<String> {
        self.devices.iter().map(|d| d.resource.clone()).collect()
    }

    fn of(&self, resource: &str) -> Vec<&PluginDevice> {
        self.devices
            .iter()
            .filter(|d| d.resource == resource)
            .collect()
    }
}

/// `<domain>/<tenant>-<class>`, `None` when the name would break the
/// kubelet's rule (name part at most 63 characters).
pub fn resource_name(domain: &str, tenant: &str, class: &str) -> Option<String> {
    let name = format!("{tenant}-{class}");
    (name.len() <= 63).then(|| format!("{domain}/{name}"))
}

/// Every assigned function as a device of its resource: exposed ones with
/// their address, the others (not found here yet, bind failed) listed too so
/// the kubelet counts them, unhealthy.
pub fn plugin_devices(
    assignments: &Assignments,
    exposed: &[ExposedFunction],
    numa: impl Fn(&str) -> Option<i32>,
    domain: &str,
    cdi_kind: &str,
) -> Vec<PluginDevice> {
    let exposed: BTreeMap<&str, &ExposedFunction> =
        exposed.iter().map(|f| (f.id.as_str(), f)).collect();
    let mut out = Vec::new();
    for object in assignments.objects() {
        let Ok(spec) = serde_json::from_value::<dpu_api::spec::FunctionSpec>(object.spec.clone())
        else {
            continue;
        };
        let mut class = match spec.type_ {
            dpu_api::spec::FunctionType::Net => "net",
            dpu_api::spec::FunctionType::Nvme => "nvme",
            dpu_api::spec::FunctionType::VirtioBlk => "virtio-blk",
        }
        .to_string();
        if spec.attach == Some(dpu_api::spec::Attach::Vfio) {
            class.push_str("-vfio");
        }
        let Some(resource) = resource_name(domain, &object.tenant, &class) else {
            continue;
        };
        let f = exposed.get(object.id.as_str());
        out.push(PluginDevice {
            resource,
            id: object.id.clone(),
            exposed: f.is_some(),
            cdi_name: format!("{cdi_kind}={}", object.id),
            pci_address: f.map(|f| f.pci_address.clone()),
            numa_node: f.and_then(|f| numa(&f.pci_address)),
            device_nodes: f
                .and_then(|f| f.rdma.as_ref())
                .map(|r| r.device_nodes())
                .unwrap_or_default(),
        });
    }
    out
}

/// The list `ListAndWatch` sends for `resource`.
pub fn list_response(state: &PluginState, resource: &str) -> v1beta1::ListAndWatchResponse {
    v1beta1::ListAndWatchResponse {
        devices: state
            .of(resource)
            .into_iter()
            .map(|d| v1beta1::Device {
                id: d.id.clone(),
                health: if state.healthy(d) { HEALTHY } else { UNHEALTHY }.to_string(),
                topology: d
                    .numa_node
                    .filter(|n| *n >= 0)
                    .map(|n| v1beta1::TopologyInfo {
                        nodes: vec![v1beta1::NumaNode { id: n.into() }],
                    }),
            })
            .collect(),
    }
}

/// The answer to `Allocate` for `resource` (pure).
pub fn allocate(
    state: &PluginState,
    resource: &str,
    request: &v1beta1::AllocateRequest,
) -> Result<v1beta1::AllocateResponse, Status> {
    let mine = state.of(resource);
    let mut responses = Vec::new();
    for (i, container) in request.container_requests.iter().enumerate() {
        let mut cdi_devices = Vec::new();
        let mut ids = Vec::new();
        let mut addresses = Vec::new();
        let mut devices: Vec<v1beta1::DeviceSpec> = Vec::new();
        for id in &container.devices_ids {
            let Some(d) = mine.iter().find(|d| &d.id == id) else {
                return Err(Status::invalid_argument(format!(
                    "container_requests[{i}].devices_ids: {id:?} is not a device of {resource}"
                )));
            };
            if !state.healthy(d) {
                return Err(Status::failed_precondition(format!(
                    "container_requests[{i}].devices_ids: {id:?} is unhealthy ({})",
                    if d.exposed {
                        "the DPU agent is unreachable"
                    } else {
                        "not exposed on this host"
                    }
                )));
            }
            cdi_devices.push(v1beta1::CdiDevice {
                name: d.cdi_name.clone(),
            });
            ids.push(d.id.clone());
            addresses.extend(d.pci_address.clone());
            for node in &d.device_nodes {
                // `rdma_cm` is shared by every RDMA function: once per container.
                if devices.iter().all(|s| &s.host_path != node) {
                    devices.push(v1beta1::DeviceSpec {
                        container_path: node.clone(),
                        host_path: node.clone(),
                        permissions: "rw".to_string(),
                    });
                }
            }
        }
        let mut envs = std::collections::HashMap::new();
        envs.insert("DPU_FUNCTIONS".to_string(), ids.join(","));
        envs.insert("DPU_PCI_ADDRESSES".to_string(), addresses.join(","));
        responses.push(v1beta1::ContainerAllocateResponse {
            envs,
            cdi_devices,
            devices,
            ..Default::default()
        });
    }
    Ok(v1beta1::AllocateResponse {
        container_responses: responses,
    })
}

/// The `DevicePlugin` service of one resource.
#[derive(Debug, Clone)]
pub struct ResourcePlugin {
    resource: String,
    state: watch::Receiver<PluginState>,
}

type ListStream =
    Pin<Box<dyn Stream<Item = Result<v1beta1::ListAndWatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl DevicePlugin for ResourcePlugin {
    type ListAndWatchStream = ListStream;

    async fn get_device_plugin_options(
        &self,
        _: Request<v1beta1::Empty>,
    ) -> Result<Response<v1beta1::DevicePluginOptions>, Status> {
        Ok(Response::new(v1beta1::DevicePluginOptions::default()))
    }

    async fn list_and_watch(
        &self,
        _: Request<v1beta1::Empty>,
    ) -> Result<Response<ListStream>, Status> {
        let resource = self.resource.clone();
        let mut last: Option<v1beta1::ListAndWatchResponse> = None;
        let stream = WatchStream::new(self.state.clone()).filter_map(move |state| {
            let list = list_response(&state, &resource);
            let changed = last.as_ref() != Some(&list);
            last = Some(list.clone());
            std::future::ready(changed.then_some(Ok(list)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        _: Request<v1beta1::PreferredAllocationRequest>,
    ) -> Result<Response<v1beta1::PreferredAllocationResponse>, Status> {
        // Not offered in the options: any healthy function will do.
        Ok(Response::new(
            v1beta1::PreferredAllocationResponse::default(),
        ))
    }

    async fn allocate(
        &self,
        request: Request<v1beta1::AllocateRequest>,
    ) -> Result<Response<v1beta1::AllocateResponse>, Status> {
        let state = self.state.borrow().clone();
        let answer = allocate(&state, &self.resource, request.get_ref())?;
        info!(resource = %self.resource, request = ?request.get_ref().container_requests, "allocated");
        Ok(Response::new(answer))
    }

    async fn pre_start_container(
        &self,
        _: Request<v1beta1::PreStartContainerRequest>,
    ) -> Result<Response<v1beta1::PreStartContainerResponse>, Status> {
        Ok(Response::new(v1beta1::PreStartContainerResponse {}))
    }
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is not used to connect; the connector dials the socket.
    Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// The device nodes of one container's Allocate answer as (host path,
/// container path, permissions), in the answer's order.
pub fn device_specs(c: &v1beta1::ContainerAllocateResponse) -> Vec<(&str, &str, &str)> {
    c.devices
        .iter()
        .map(|d| {
            (
                d.host_path.as_str(),
                d.container_path.as_str(),
                d.permissions.as_str(),
            )
        })
        .collect()
}

/// `dpu-acme-net.sock` for `dpu.local/acme-net`.
pub fn socket_name(resource: &str) -> String {
    let name = resource.rsplit('/').next().unwrap_or(resource);
    format!("dpu-{name}.sock")
}

#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// The kubelet's device-plugins directory.
    pub dir: PathBuf,
}

#[derive(Debug)]
struct Served {
    socket: PathBuf,
    /// Identity of the socket file we made.
    ino: FileId,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// The kubelet socket identity this resource was registered with.
    registered_with: Option<FileId>,
}

impl Served {
    /// Stops serving at once: a graceful shutdown would wait for the
    /// kubelet's ListAndWatch streams, which never end by themselves.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
        if identity(&self.socket) == Some(self.ino) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// A socket file's identity: device, inode and change time, so that a file
/// recreated on a recycled inode still counts as new.
type FileId = (u64, u64, i64, i64);

fn identity(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Serves and registers every resource in `state` until `shutdown`; removes
/// its sockets on the way out.
pub async fn run(
    settings: PluginSettings,
    state: watch::Receiver<PluginState>,
    shutdown: watch::Receiver<bool>,
) {
    run_with_metrics(settings, state, shutdown, Default::default()).await
}

/// [`run`], counting registrations with the kubelet in `metrics`.
pub async fn run_with_metrics(
    settings: PluginSettings,
    mut state: watch::Receiver<PluginState>,
    mut shutdown: watch::Receiver<bool>,
    metrics: std::sync::Arc<crate::metrics::StubMetrics>,
) {
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
            changed = state.changed() => {
                if changed.is_err() { break; }
            }
            _ = tick.tick() => {}
        }
        if !settings.dir.is_dir() {
            continue;
        }
        let kubelet = identity(&settings.dir.join(KUBELET_SOCKET));
        let wanted = state.borrow().resources();
        for resource in wanted {
            // A kubelet restart removes our sockets: serve again on a new one.
            if let Some(s) = served.get(&resource)
                && identity(&s.socket) != Some(s.ino)
            {
                info!(%resource, "plugin socket gone (kubelet restarted?); serving again");
                if let Some(s) = served.remove(&resource) {
                    s.stop().await;
                }
            }
            if !served.contains_key(&resource) {
                match serve(&settings.dir, &resource, state.clone()) {
                    Ok(s) => {
                        served.insert(resource.clone(), s);
                    }
                    Err(e) => {
                        warn!(%resource, error = %e, "cannot serve the device plugin socket");
                        continue;
                    }
                }
            }
            let Some(s) = served.get_mut(&resource) else {
                continue;
            };
            if kubelet.is_some() && s.registered_with != kubelet {
                match register(&settings.dir, &resource).await {
                    Ok(()) => {
                        metrics.registration(true);
                        info!(%resource, "registered with the kubelet");
                        s.registered_with = kubelet;
                    }
                    Err(e) => {
                        metrics.registration(false);
                        warn!(%resource, error = %e, "cannot register with the kubelet; will retry")
                    }
                }
            }
        }
    }
    for (_, s) in served {
        s.stop().await;
    }
}

fn serve(
    dir: &Path,
    resource: &str,
    state: watch::Receiver<PluginState>,
) -> std::io::Result<Served> {
    let socket = dir.join(socket_name(resource));
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&socket)?;
    let ino = identity(&socket).ok_or_else(|| std::io::Error::other("socket vanished"))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let service = DevicePluginServer::new(ResourcePlugin {
        resource: resource.to_string(),
        state,
    });
    let name = resource.to_string();
    let task = tokio::spawn(async move {
        // One service per socket, served without tonic's router (axum):
        // the generated server answers any other path `Unimplemented` itself.
        let result = Server::builder()
            .serve_with_incoming_shutdown(service, UnixListenerStream::new(listener), async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = result {
            warn!(resource = %name, error = %e, "device plugin server failed");
        }
    });
    info!(resource, socket = %socket.display(), "serving device plugin");
    Ok(Served {
        socket,
        ino,
        stop: Some(stop_tx),
        task,
        registered_with: None,
    })
}

async fn register(dir: &Path, resource: &str) -> Result<(), Box<dyn std::error::Error>> {
    let channel = unix_channel(&dir.join(KUBELET_SOCKET)).await?;
    RegistrationClient::new(channel)
        .register(v1beta1::RegisterRequest {
            version: API_VERSION.to_string(),
            endpoint: socket_name(resource),
            resource_name: resource.to_string(),
            options: Some(v1beta1::DevicePluginOptions::default()),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::Exposure;
    use dpu_api::Kind;
    use dpu_api::object::{Event, EventType, Object};
    use serde_json::json;

    fn assign(a: &mut Assignments, id: &str, tenant: &str, spec: serde_json::Value) {
        a.apply(Event {
            revision: 1,
            type_: EventType::Added,
            object: Object {
                kind: Kind::Function,
                id: id.into(),
                tenant: tenant.into(),
                generation: 1,
                spec,
                status: Default::default(),
            },
        });
    }

    fn state() -> PluginState {
        let mut a = Assignments::default();
        assign(
            &mut a,
            "web",
            "acme",
            json!({"type": "net", "pf": "pf0", "vf": 1}),
        );
        assign(
            &mut a,
            "vm",
            "acme",
            json!({"type": "net", "pf": "pf0", "vf": 2, "attach": "vfio"}),
        );
        assign(&mut a, "db", "beta", json!({"type": "nvme", "pf": "pf0"}));
        assign(
            &mut a,
            "roce",
            "acme",
            json!({"type": "net", "pf": "pf0", "vf": 3, "rdma": true}),
        );
        assign(
            &mut a,
            "roce2",
            "acme",
            json!({"type": "net", "pf": "pf0", "vf": 4, "rdma": true}),
        );
        let netdev =
            |id: &str, addr: &str, ifname: &str, rdma: Option<(&str, &str)>| ExposedFunction {
                id: id.into(),
                pci_address: addr.into(),
                exposure: Exposure::Netdev {
                    host_interface: ifname.into(),
                },
                rdma: rdma.map(|(dev, uverbs)| crate::discover::RdmaDevice {
                    device: dev.into(),
                    uverbs: Some(uverbs.into()),
                    rdma_cm: Some("/dev/infiniband/rdma_cm".into()),
                }),
            };
        let exposed = vec![
            netdev("web", "0000:03:00.3", "ens1f0v1", None),
            netdev(
                "roce",
                "0000:03:00.5",
                "ens1f0v3",
                Some(("mlx5_3", "/dev/infiniband/uverbs3")),
            ),
            netdev(
                "roce2",
                "0000:03:00.6",
                "ens1f0v4",
                Some(("mlx5_4", "/dev/infiniband/uverbs4")),
            ),
        ];
        PluginState {
            devices: plugin_devices(
                &a,
                &exposed,
                |_| Some(0),
                DEFAULT_DOMAIN,
                "dpu.local/function",
            ),
            agent_healthy: true,
        }
    }

    #[test]
    fn one_resource_per_tenant_and_class() {
        let s = state();
        assert_eq!(
            s.resources().into_iter().collect::<Vec<_>>(),
            [
                "dpu.local/acme-net",
                "dpu.local/acme-net-vfio",
                "dpu.local/beta-nvme"
            ]
        );
        let list = list_response(&s, "dpu.local/acme-net");
        assert_eq!(list.devices.len(), 3);
        assert_eq!(list.devices[2].id, "web");
        assert_eq!(list.devices[0].health, HEALTHY);
        assert_eq!(list.devices[0].topology.as_ref().unwrap().nodes[0].id, 0);
        // Not resolved on this host: listed, unhealthy.
        assert_eq!(
            list_response(&s, "dpu.local/beta-nvme").devices[0].health,
            UNHEALTHY
        );
        assert_eq!(socket_name("dpu.local/acme-net"), "dpu-acme-net.sock");
        assert_eq!(resource_name("d", &"t".repeat(60), "net"), None);
    }

    #[test]
    fn allocate_names_cdi_devices_and_refuses_others() {
        let mut s = state();
        let req = |ids: &[&str]| v1beta1::AllocateRequest {
            container_requests: vec![v1beta1::ContainerAllocateRequest {
                devices_ids: ids.iter().map(|s| s.to_string()).collect(),
            }],
        };
        let r = allocate(&s, "dpu.local/acme-net", &req(&["web"])).unwrap();
        let c = &r.container_responses[0];
        assert_eq!(c.cdi_devices[0].name, "dpu.local/function=web");
        assert_eq!(c.envs["DPU_PCI_ADDRESSES"], "0000:03:00.3");
        assert_eq!(c.envs["DPU_FUNCTIONS"], "web");
        assert!(c.devices.is_empty(), "no RDMA, no device nodes");
        // RDMA functions: their uverbs nodes and one rdma_cm, host path =
        // container path, read-write.
        let r = allocate(&s, "dpu.local/acme-net", &req(&["roce", "roce2"])).unwrap();
        let c = &r.container_responses[0];
        let specs = device_specs(c);
        assert_eq!(
            specs,
            [
                ("/dev/infiniband/uverbs3", "/dev/infiniband/uverbs3", "rw"),
                ("/dev/infiniband/rdma_cm", "/dev/infiniband/rdma_cm", "rw"),
                ("/dev/infiniband/uverbs4", "/dev/infiniband/uverbs4", "rw"),
            ]
        );
        assert_eq!(c.cdi_devices.len(), 2);
        let e = allocate(&s, "dpu.local/acme-net", &req(&["db"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("\"db\""), "{}", e.message());
        s.agent_healthy = false;
        assert_eq!(
            list_response(&s, "dpu.local/acme-net").devices[0].health,
            UNHEALTHY
        );
        let e = allocate(&s, "dpu.local/acme-net", &req(&["web"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    }
}
