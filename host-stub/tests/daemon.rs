//! The daemon against an in-memory agent, a sysfs tree and a CDI directory
//! in a tempdir: reports, exposure, vfio binds and releases, the lease.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bluefield3_pf, mlx};
use dpu_api::Kind;
use dpu_api::object::{Event, EventType, HostInventory, Object, ObjectList, Status};
use host_stub::cdi::{self, CdiOptions, CdiSpec};
use host_stub::daemon::{Daemon, DaemonSettings};
use host_stub::fixture::{FixtureFunction, SysfsTree};
use host_stub::report::{AgentApi, AssignmentStream, Health, ReportError};
use host_stub::selectors;
use serde_json::json;
use tokio::sync::mpsc;

#[derive(Default)]
struct AgentState {
    up: bool,
    reports: Vec<HostInventory>,
    list: Vec<Object>,
    events: Option<mpsc::UnboundedReceiver<Event>>,
}

#[derive(Clone, Default)]
struct FakeAgent(Arc<Mutex<AgentState>>);

impl FakeAgent {
    fn down() -> Result<(), ReportError> {
        Err(ReportError::new("fake agent", "connection refused"))
    }
}

impl AgentApi for FakeAgent {
    async fn put_host_inventory(&self, inventory: &HostInventory) -> Result<(), ReportError> {
        let mut s = self.0.lock().unwrap();
        if !s.up {
            return FakeAgent::down();
        }
        s.reports.push(inventory.clone());
        Ok(())
    }

    async fn host_assignments(&self) -> Result<ObjectList, ReportError> {
        let s = self.0.lock().unwrap();
        if !s.up {
            FakeAgent::down()?;
        }
        Ok(ObjectList {
            revision: 1,
            items: s.list.clone(),
        })
    }

    async fn watch_host_assignments(&self) -> Result<AssignmentStream, ReportError> {
        let mut s = self.0.lock().unwrap();
        if !s.up {
            FakeAgent::down()?;
        }
        let rx = s
            .events
            .take()
            .ok_or_else(|| ReportError::new("watch", "already taken"))?;
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        )))
    }
}

fn function(id: &str, spec: serde_json::Value, host_pci_address: &str) -> Object {
    let mut status = Status::default();
    status.facts.host_pci_address = Some(host_pci_address.into());
    Object {
        kind: Kind::Function,
        id: id.into(),
        tenant: "acme".into(),
        generation: 1,
        spec,
        status,
    }
}

/// One BlueField-3 PF with two VFs bound to mlx5_core, and an emulated NVMe
/// function with a namespace.
fn tree(root: &Path) -> SysfsTree {
    let tree = SysfsTree::new(root).unwrap();
    bluefield3_pf(&tree, "p0", 2, "p0v");
    tree.add_function(&FixtureFunction {
        class: 0x010802,
        driver: Some("nvme".into()),
        nvme: Some(("nvme1".into(), "nvme1n1".into())),
        iommu_group: Some(30),
        ..mlx("0000:04:00.0", 0x6001)
    })
    .unwrap();
    // vfio-pci's bind/unbind files, as after `modprobe vfio-pci`.
    tree.bind_link("0000:04:00.0", "vfio-pci").unwrap();
    tree.bind_link("0000:04:00.0", "nvme").unwrap();
    tree
}

fn settings(root: &Path, cdi_dir: &Path, state: &Path) -> DaemonSettings {
    DaemonSettings {
        sysfs_root: root.to_path_buf(),
        state_dir: state.to_path_buf(),
        cdi_dir: cdi_dir.to_path_buf(),
        cdi: CdiOptions::default(),
        selectors: selectors::bluefield_defaults(),
        rescan_interval: Duration::from_millis(100),
        lease: Duration::from_millis(300),
        retry: Duration::from_millis(50),
        resource_domain: "dpu.local".into(),
    }
}

fn read_spec(dir: &Path, id: &str) -> Option<CdiSpec> {
    let bytes = std::fs::read(dir.join(cdi::file_name(id))).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn assignments_become_cdi_specs_and_vfio_binds() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let (sys, cdi_dir, state) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let _tree = tree(sys);
    let agent = FakeAgent::default();
    {
        let mut s = agent.0.lock().unwrap();
        s.up = true;
        s.list = vec![
            function(
                "web",
                json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"}),
                "0000:03:00.2",
            ),
            function(
                "vm",
                json!({"type": "net", "pf": "pf0", "attach": "vfio", "mac": "02:00:00:00:00:02"}),
                "0000:03:00.3",
            ),
            function("disk", json!({"type": "nvme", "pf": "pf0"}), "0000:04:00.0"),
        ];
    }
    let mut d = Daemon::new(agent.clone(), settings(sys, cdi_dir, state));
    assert!(d.rescan());
    assert!(d.report_if_needed().await);
    assert!(d.resync().await);
    d.reconcile();

    let reports = agent.0.lock().unwrap().reports.clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].devices.len(), 4);

    let web = read_spec(cdi_dir, "web").unwrap();
    assert_eq!(web.cdi_version, "1.1.0");
    assert_eq!(
        web.devices[0].container_edits.net_devices[0].host_interface_name,
        "p0v0"
    );
    let disk = read_spec(cdi_dir, "disk").unwrap();
    assert_eq!(disk.cdi_version, "0.3.0");
    assert_eq!(
        disk.devices[0].container_edits.device_nodes[0].path,
        "/dev/nvme1n1"
    );
    let vm = read_spec(cdi_dir, "vm").unwrap();
    assert_eq!(
        vm.devices[0].container_edits.device_nodes[1].path,
        "/dev/vfio/21"
    );

    // vfio-pci bind through driver_override, recorded for a restart.
    let dev = sys.join("bus/pci/devices/0000:03:00.3");
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        std::fs::read_to_string(sys.join("bus/pci/drivers/mlx5_core/unbind")).unwrap(),
        "0000:03:00.3"
    );
    assert!(d.bindings().contains_key("0000:03:00.3"));
    assert!(state.join("vfio-bindings.json").exists());

    // Unchanged inventory: no second report.
    d.rescan();
    assert!(d.report_if_needed().await);
    assert_eq!(agent.0.lock().unwrap().reports.len(), 1);

    // The vm function is unassigned: spec removed, driver given back.
    let vm_obj = agent.0.lock().unwrap().list[1].clone();
    assert!(d.on_event(Event {
        revision: 2,
        type_: EventType::Deleted,
        object: vm_obj,
    }));
    d.reconcile();
    assert!(read_spec(cdi_dir, "vm").is_none());
    assert!(read_spec(cdi_dir, "web").is_some());
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).unwrap(),
        "\n"
    );
    assert_eq!(
        std::fs::read_to_string(sys.join("bus/pci/drivers/mlx5_core/bind")).unwrap(),
        "0000:03:00.3"
    );
    assert!(d.bindings().is_empty());
    // A restarted daemon finds no binding to undo.
    let d2 = Daemon::new(agent.clone(), settings(sys, cdi_dir, state));
    assert!(d2.bindings().is_empty());
}

#[tokio::test]
async fn lease_marks_unhealthy_and_recovers() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let (sys, cdi_dir, state) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let _tree = tree(sys);
    let agent = FakeAgent::default();
    let mut d = Daemon::new(agent.clone(), settings(sys, cdi_dir, state));
    let health = d.health();
    d.rescan();
    assert!(!d.report_if_needed().await, "agent down");
    d.check_lease(Instant::now() + Duration::from_millis(100));
    assert_eq!(*health.borrow(), Health::Healthy, "within the lease");
    d.check_lease(Instant::now() + Duration::from_secs(1));
    assert_eq!(*health.borrow(), Health::Unhealthy);
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("health.json")).unwrap()).unwrap();
    assert_eq!(file["healthy"], json!(false));

    agent.0.lock().unwrap().up = true;
    assert!(d.report_if_needed().await);
    assert_eq!(*health.borrow(), Health::Healthy);
}

#[tokio::test]
async fn run_loop_follows_the_watch_and_rescans() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let (sys, cdi_dir, state) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let tree = tree(sys);
    let agent = FakeAgent::default();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    {
        let mut s = agent.0.lock().unwrap();
        s.up = true;
        s.events = Some(events_rx);
    }
    let d = Daemon::new(agent.clone(), settings(sys, cdi_dir, state));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(d.run(stop_rx, None));

    let wait_for = |what: &'static str, cond: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let a = agent.clone();
    wait_for(
        "first report",
        Box::new(move || !a.0.lock().unwrap().reports.is_empty()),
    )
    .await;

    // The agent's list and its watch agree, as a real agent's do; the
    // periodic resync would otherwise undo the event.
    let web = function(
        "web",
        json!({"type": "net", "pf": "pf0", "vf": 1}),
        "0000:03:00.3",
    );
    agent.0.lock().unwrap().list.push(web.clone());
    events_tx
        .send(Event {
            revision: 3,
            type_: EventType::Added,
            object: web,
        })
        .unwrap();
    let dir = cdi_dir.to_path_buf();
    wait_for(
        "web spec",
        Box::new(move || read_spec(&dir, "web").is_some()),
    )
    .await;

    // Two more VFs appear; the periodic rescan reports them.
    tree.set_num_vfs("0000:03:00.0", 4, |i| FixtureFunction {
        address: format!("0000:03:00.{}", 2 + i),
        vendor: 0x15b3,
        device: 0x101e,
        class: 0x020000,
        driver: Some("mlx5_core".into()),
        netdev: Some(format!("p0v{i}")),
        iommu_group: Some(20 + i),
        ..FixtureFunction::default()
    })
    .unwrap();
    let a = agent.clone();
    wait_for(
        "report with 6 devices",
        Box::new(move || {
            a.0.lock()
                .unwrap()
                .reports
                .last()
                .is_some_and(|r| r.devices.len() == 6)
        }),
    )
    .await;

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("daemon stops on shutdown")
        .unwrap();
}

/// The kubelet side of the device plugin API for tests: a `Registration`
/// server on `kubelet.sock` that hands every request to the test, generated
/// from the same proto as the plugin.
mod test_kubelet {
    use std::path::Path;

    use host_stub::deviceplugin::v1beta1::registration_server::{Registration, RegistrationServer};
    use host_stub::deviceplugin::v1beta1::{Empty, RegisterRequest};
    use tokio::net::UnixListener;
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Request, Response, Status};

    struct Kubelet(mpsc::UnboundedSender<RegisterRequest>);

    #[tonic::async_trait]
    impl Registration for Kubelet {
        async fn register(
            &self,
            request: Request<RegisterRequest>,
        ) -> Result<Response<Empty>, Status> {
            let _ = self.0.send(request.into_inner());
            Ok(Response::new(Empty {}))
        }
    }

    /// A running test kubelet; dropping it stops the server.
    pub struct TestKubelet {
        stop: Option<oneshot::Sender<()>>,
        pub registrations: mpsc::UnboundedReceiver<RegisterRequest>,
    }

    impl TestKubelet {
        /// Like a kubelet start: removes every socket in `dir` (as the
        /// kubelet's device manager does) and serves a new `kubelet.sock`.
        pub fn start(dir: &Path) -> TestKubelet {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "sock") {
                    std::fs::remove_file(&path).unwrap();
                }
            }
            let listener = UnixListener::bind(dir.join("kubelet.sock")).unwrap();
            let (tx, registrations) = mpsc::unbounded_channel();
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(RegistrationServer::new(Kubelet(tx)))
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                        let _ = stopped.await;
                    }),
            );
            TestKubelet {
                stop: Some(stop),
                registrations,
            }
        }
    }

    impl Drop for TestKubelet {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// What the device-plugin tests start from: temp dirs for sysfs, CDI specs,
/// state and the kubelet's plugin sockets, the fixture tree in the first, an
/// in-memory agent that is up, lists `web` (VF 0, for node-1) and delivers
/// `events` as its watch, a test kubelet, and a daemon over them (not yet
/// running).
struct PluginRig {
    /// Held so the sysfs tree's and the daemon's state dirs live as long as the rig.
    _root: tempfile::TempDir,
    cdi_dir: tempfile::TempDir,
    _state: tempfile::TempDir,
    plugins: tempfile::TempDir,
    tree: SysfsTree,
    agent: FakeAgent,
    kubelet: test_kubelet::TestKubelet,
}

/// The kubelet's side of a device plugin socket.
type PluginClient = host_stub::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient<
    tonic::transport::Channel,
>;

/// A device plugin client on the socket `endpoint` in `plugins`.
async fn plugin_client(plugins: &Path, endpoint: &str) -> PluginClient {
    let channel = host_stub::deviceplugin::unix_channel(&plugins.join(endpoint))
        .await
        .unwrap();
    PluginClient::new(channel)
}

/// Opens `client`'s ListAndWatch stream.
async fn list_and_watch(
    client: &mut PluginClient,
) -> tonic::Streaming<host_stub::deviceplugin::v1beta1::ListAndWatchResponse> {
    client
        .list_and_watch(host_stub::deviceplugin::v1beta1::Empty {})
        .await
        .unwrap()
        .into_inner()
}

/// Allocates the devices `ids` for one container through `client`.
async fn allocate(
    client: &mut PluginClient,
    ids: &[&str],
) -> Result<host_stub::deviceplugin::v1beta1::AllocateResponse, tonic::Status> {
    use host_stub::deviceplugin::v1beta1::{AllocateRequest, ContainerAllocateRequest};
    let request = AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_ids: ids.iter().map(|s| s.to_string()).collect(),
        }],
    };
    client
        .allocate(request)
        .await
        .map(tonic::Response::into_inner)
}

/// A rig's daemon and its device plugin server, running until [`Running::stop`].
struct Running {
    stop_tx: tokio::sync::watch::Sender<bool>,
    plugin_task: tokio::task::JoinHandle<()>,
    daemon_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Spawns `d` and a device plugin server registering sockets in
    /// `plugins`, counting registrations in `metrics`.
    fn start(
        d: Daemon<FakeAgent>,
        plugins: &Path,
        metrics: Arc<host_stub::metrics::StubMetrics>,
    ) -> Running {
        use host_stub::deviceplugin::{self, PluginSettings};
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let plugin_task = tokio::spawn(deviceplugin::run_with_metrics(
            PluginSettings {
                dir: plugins.to_path_buf(),
            },
            d.plugin_state(),
            stop_rx.clone(),
            metrics,
        ));
        let daemon_task = tokio::spawn(d.run(stop_rx, None));
        Running {
            stop_tx,
            plugin_task,
            daemon_task,
        }
    }

    /// Signals stop and waits for the daemon, then the plugin server.
    async fn stop(self) {
        self.stop_tx.send(true).unwrap();
        self.daemon_task.await.unwrap();
        self.plugin_task.await.unwrap();
    }
}

/// The rig (its temp dirs live as long as it does) and the daemon to start in it.
fn plugin_rig(events: mpsc::UnboundedReceiver<Event>) -> (PluginRig, Daemon<FakeAgent>) {
    let [root, cdi_dir, state, plugins] = std::array::from_fn(|_| tempfile::tempdir().unwrap());
    let tree = tree(root.path());
    let agent = FakeAgent::default();
    {
        let mut s = agent.0.lock().unwrap();
        s.up = true;
        s.events = Some(events);
        s.list = vec![function(
            "web",
            json!({"type": "net", "pf": "pf0", "vf": 0, "host": "node-1"}),
            "0000:03:00.2",
        )];
    }
    let kubelet = test_kubelet::TestKubelet::start(plugins.path());
    let daemon = Daemon::new(
        agent.clone(),
        settings(root.path(), cdi_dir.path(), state.path()),
    );
    let rig = PluginRig {
        _root: root,
        cdi_dir,
        _state: state,
        plugins,
        tree,
        agent,
        kubelet,
    };
    (rig, daemon)
}

/// The device plugin, fed by the daemon (in-memory agent, sysfs tree), seen
/// from a test kubelet: registration, ListAndWatch on assignment and lease
/// changes, Allocate with CDI names, and re-registration after the kubelet
/// restarts.
#[tokio::test]
async fn device_plugin_registers_lists_allocates_and_reregisters() {
    use host_stub::deviceplugin::v1beta1;

    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (mut rig, d) = plugin_rig(events_rx);
    let running = Running::start(d, rig.plugins.path(), Default::default());

    let reg = within("registration", rig.kubelet.registrations.recv())
        .await
        .unwrap();
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.resource_name, "dpu.local/acme-net");
    assert_eq!(reg.endpoint, "dpu-acme-net.sock");

    let mut client = plugin_client(rig.plugins.path(), &reg.endpoint).await;
    let mut list = list_and_watch(&mut client).await;
    let devices = |r: v1beta1::ListAndWatchResponse| -> Vec<(String, String)> {
        r.devices.into_iter().map(|d| (d.id, d.health)).collect()
    };
    let first = within("first list", list.message()).await.unwrap().unwrap();
    assert_eq!(devices(first), [("web".to_string(), "Healthy".to_string())]);

    // A new assignment arrives on the watch (and is in the agent's list for
    // later resyncs): the list follows.
    let web2 = function(
        "web2",
        json!({"type": "net", "pf": "pf0", "vf": 1, "host": "node-1"}),
        "0000:03:00.3",
    );
    rig.agent.0.lock().unwrap().list.push(web2.clone());
    events_tx
        .send(Event {
            revision: 2,
            type_: EventType::Added,
            object: web2,
        })
        .unwrap();
    let second = within("list after a new assignment", list.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        devices(second),
        [
            ("web".to_string(), "Healthy".to_string()),
            ("web2".to_string(), "Healthy".to_string())
        ]
    );

    // Allocate: CDI names of the specs the daemon wrote, and the addresses.
    let answer = allocate(&mut client, &["web", "web2"]).await.unwrap();
    let c = &answer.container_responses[0];
    let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["dpu.local/function=web", "dpu.local/function=web2"]);
    for name in &names {
        let id = name.split_once('=').unwrap().1;
        let spec = read_spec(rig.cdi_dir.path(), id).expect("a CDI spec for every allocated name");
        assert_eq!(format!("{}={}", spec.kind, spec.devices[0].name), *name);
    }
    assert_eq!(c.envs["DPU_PCI_ADDRESSES"], "0000:03:00.2,0000:03:00.3");
    let refused = allocate(&mut client, &["someone-else"]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // The agent goes away: unhealthy within the lease; back: healthy.
    rig.agent.0.lock().unwrap().up = false;
    let down = within("unhealthy list", list.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        down.devices.iter().all(|d| d.health == "Unhealthy"),
        "{down:?}"
    );
    rig.agent.0.lock().unwrap().up = true;
    let up = within("healthy list", list.message())
        .await
        .unwrap()
        .unwrap();
    assert!(up.devices.iter().all(|d| d.health == "Healthy"), "{up:?}");

    // The kubelet restarts (new kubelet.sock, plugin sockets removed): the
    // plugin registers again and serves on a new socket.
    drop(rig.kubelet);
    std::fs::remove_file(rig.plugins.path().join("kubelet.sock")).unwrap();
    rig.kubelet = test_kubelet::TestKubelet::start(rig.plugins.path());
    let again = within("re-registration", rig.kubelet.registrations.recv())
        .await
        .unwrap();
    assert_eq!(again.resource_name, "dpu.local/acme-net");
    let mut client = plugin_client(rig.plugins.path(), &again.endpoint).await;
    let mut list = list_and_watch(&mut client).await;
    let after = within("list after restart", list.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.devices.len(), 2);

    running.stop().await;
    assert!(
        !rig.plugins.path().join("dpu-acme-net.sock").exists(),
        "the plugin removes its socket on the way out"
    );
}

/// An RDMA function (`spec.rdma`, issue 14) through the daemon and the
/// device plugin, seen from the test kubelet: while VF 1 has no RDMA device
/// it is listed Unhealthy and Allocate refuses it; once an mlx5-like device
/// (`device` link + GID entry naming `p0v1`, `uverbs1`) and `rdma_cm` appear
/// in sysfs, the rescan reports the device to the agent (`HostDevice.rdma`),
/// the CDI spec lists `/dev/infiniband/uverbs1` and `/dev/infiniband/rdma_cm`
/// as device nodes, and Allocate returns them as `DeviceSpec`s (host path =
/// container path, `rw`) beside the CDI name. The plain function beside it
/// gets no verbs nodes.
#[tokio::test]
async fn rdma_function_gets_its_verbs_nodes_in_cdi_and_allocate() {
    use host_stub::deviceplugin::v1beta1;
    use host_stub::fixture::FixtureRdma;

    let (_events_tx, events_rx) = mpsc::unbounded_channel();
    let (mut rig, d) = plugin_rig(events_rx);
    rig.agent.0.lock().unwrap().list.push(function(
        "roce",
        json!({"type": "net", "pf": "pf0", "vf": 1, "host": "node-1", "rdma": true}),
        "0000:03:00.3",
    ));
    let running = Running::start(d, rig.plugins.path(), Default::default());

    let reg = within("registration", rig.kubelet.registrations.recv())
        .await
        .unwrap();
    assert_eq!(reg.resource_name, "dpu.local/acme-net");
    let mut client = plugin_client(rig.plugins.path(), &reg.endpoint).await;
    let mut list = list_and_watch(&mut client).await;
    let health = |r: &v1beta1::ListAndWatchResponse, id: &str| {
        r.devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.health.clone())
    };

    // No RDMA device yet: listed, unhealthy, refused; no spec.
    let mut current = within("first list", list.message()).await.unwrap().unwrap();
    while health(&current, "roce").is_none() {
        current = within("list with roce", list.message())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(health(&current, "roce").as_deref(), Some("Unhealthy"));
    assert_eq!(health(&current, "web").as_deref(), Some("Healthy"));
    let refused = allocate(&mut client, &["roce"]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(read_spec(rig.cdi_dir.path(), "roce").is_none());

    // The driver makes VF 1's RDMA device (RoCE enabled), rdma_ucm is loaded.
    rig.tree
        .add_rdma_device(&FixtureRdma {
            name: "mlx5_3".into(),
            pci: Some("0000:03:00.3".into()),
            gids: vec![(0, "p0v1".into())],
            empty_gids: 3,
            uverbs: Some(1),
        })
        .unwrap();
    rig.tree.add_rdma_cm().unwrap();
    while health(&current, "roce").as_deref() != Some("Healthy") {
        current = within("roce healthy after the rescan", list.message())
            .await
            .unwrap()
            .unwrap();
    }

    let answer = allocate(&mut client, &["roce", "web"]).await.unwrap();
    let c = &answer.container_responses[0];
    let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["dpu.local/function=roce", "dpu.local/function=web"]);
    let specs = host_stub::deviceplugin::device_specs(c);
    assert_eq!(
        specs,
        [
            ("/dev/infiniband/uverbs1", "/dev/infiniband/uverbs1", "rw"),
            ("/dev/infiniband/rdma_cm", "/dev/infiniband/rdma_cm", "rw"),
        ]
    );

    let spec = read_spec(rig.cdi_dir.path(), "roce").expect("roce's CDI spec");
    let edits = &spec.devices[0].container_edits;
    let nodes: Vec<&str> = edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
    assert_eq!(
        nodes,
        ["/dev/infiniband/uverbs1", "/dev/infiniband/rdma_cm"]
    );
    assert!(edits.env.contains(&"DPU_RDMA_DEVICE=mlx5_3".to_string()));
    assert_eq!(spec.cdi_version, "1.1.0", "netDevices decide the version");
    let web = read_spec(rig.cdi_dir.path(), "web").expect("web's CDI spec");
    assert!(web.devices[0].container_edits.device_nodes.is_empty());

    // The agent got the device in the report (reporting may trail the
    // exposure by a moment).
    let reported = || {
        rig.agent.0.lock().unwrap().reports.last().is_some_and(|r| {
            r.devices
                .iter()
                .any(|d| d.pci_address == "0000:03:00.3" && d.rdma.is_some())
        })
    };
    within("a report with VF 1's RDMA device", async {
        while !reported() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let report = rig.agent.0.lock().unwrap().reports.last().cloned().unwrap();
    let vf1 = report
        .devices
        .iter()
        .find(|d| d.pci_address == "0000:03:00.3")
        .unwrap();
    assert_eq!(
        vf1.rdma,
        Some(dpu_api::object::HostRdma {
            device: "mlx5_3".into(),
            uverbs: Some("/dev/infiniband/uverbs1".into()),
            rdma_cm: Some("/dev/infiniband/rdma_cm".into()),
        })
    );
    let vf0 = report
        .devices
        .iter()
        .find(|d| d.pci_address == "0000:03:00.2")
        .unwrap();
    assert_eq!(vf0.rdma, None);

    running.stop().await;
}

/// `GET /metrics` over a plain TCP connection, as Prometheus would; the
/// body of a 200 answer.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample `line_start` (name and labels) in `text`.
fn value(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .parse()
        .unwrap()
}

/// The host stub's own `/metrics` on loopback, read while the daemon and
/// the device plugin run against an in-memory agent and a test kubelet:
/// functions found by kind and class, exposure, CDI specs written, the
/// kubelet registration, and the agent's reachability moving when the
/// agent goes away and comes back; anything but `GET /metrics` is refused.
/// TENANCY.md invariant 6: every label is from a closed set (kind, class,
/// outcome, action, operation), so nothing a caller or the agent sends can
/// grow the series, and the endpoint serves at most 8 connections at once.
#[tokio::test]
async fn metrics_endpoint_counts_functions_registrations_cdi_and_agent_reachability() {
    use host_stub::metrics;

    let (mut rig, d) = plugin_rig(mpsc::unbounded_channel().1);
    let m = d.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let running = Running::start(d, rig.plugins.path(), m.clone());
    let server = tokio::spawn(metrics::serve(
        listener,
        m.clone(),
        running.stop_tx.subscribe(),
    ));
    within("registration", rig.kubelet.registrations.recv())
        .await
        .unwrap();
    // The registration is counted right after the kubelet saw it.
    let mut text = scrape(addr).await;
    for _ in 0..100 {
        if value(
            &text,
            "host_stub_device_plugin_registrations_total{outcome=\"ok\"}",
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(addr).await;
    }
    assert_eq!(
        value(&text, "host_stub_functions{kind=\"pf\",class=\"network\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "host_stub_functions{kind=\"vf\",class=\"network\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "host_stub_functions{kind=\"pf\",class=\"nvme\"}"),
        1.0
    );
    assert_eq!(value(&text, "host_stub_exposed_functions"), 1.0);
    assert!(value(&text, "host_stub_cdi_specs_total{action=\"written\"}") >= 1.0);
    assert_eq!(
        value(
            &text,
            "host_stub_device_plugin_registrations_total{outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "host_stub_agent_reachable"), 1.0);
    let last = value(&text, "host_stub_agent_last_success_timestamp_seconds");
    assert!(last > 1.7e9, "{last}");

    // The agent goes away: calls fail, and once the lease (300 ms here)
    // runs out the stub says the agent is unreachable.
    rig.agent.0.lock().unwrap().up = false;
    let down = within("agent unreachable in /metrics", async {
        loop {
            let t = scrape(addr).await;
            if value(&t, "host_stub_agent_reachable") == 0.0 {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let failures: f64 = ["report", "assignments", "watch"]
        .iter()
        .map(|op| {
            value(
                &down,
                &format!("host_stub_agent_failures_total{{operation=\"{op}\"}}"),
            )
        })
        .sum();
    assert!(failures >= 1.0, "{down}");
    assert_eq!(
        value(&down, "host_stub_agent_last_success_timestamp_seconds"),
        last,
        "no answer since"
    );
    rig.agent.0.lock().unwrap().up = true;
    within("agent reachable again in /metrics", async {
        while value(&scrape(addr).await, "host_stub_agent_reachable") != 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Anything but GET /metrics is refused.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/secrets HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    }

    running.stop().await;
    server.await.unwrap();
    drop(rig.kubelet);
}

/// `promtool check metrics` finds nothing to lint in the stub's `/metrics`
/// after a scan, a report and a reconcile. Ignored where promtool (Debian
/// package `prometheus`) is not installed; `build.rs` looks for it. (Format
/// conformance; the label bounds of TENANCY.md invariant 6 are the test
/// above.)
#[tokio::test]
#[cfg_attr(
    not(has_promtool),
    ignore = "promtool not installed (Debian package prometheus)"
)]
async fn metrics_pass_promtool_check() {
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let _tree = tree(dirs[0].path());
    let agent = FakeAgent::default();
    {
        let mut s = agent.0.lock().unwrap();
        s.up = true;
        s.list = vec![function(
            "web",
            json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"}),
            "0000:03:00.2",
        )];
    }
    let mut d = Daemon::new(
        agent,
        settings(dirs[0].path(), dirs[1].path(), dirs[2].path()),
    );
    d.rescan();
    d.report_if_needed().await;
    d.resync().await;
    d.reconcile();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(host_stub::metrics::serve(listener, d.metrics(), stop_rx));
    let text = scrape(addr).await;
    stop_tx.send(true).unwrap();
    server.await.unwrap();
    assert!(
        text.contains("host_stub_cdi_specs_total{action=\"written\"} 1\n"),
        "{text}"
    );

    let said = dpu_tests::promtool::check_metrics(&text);
    assert!(said.trim().is_empty(), "promtool lints: {said}\n{text}");
}
