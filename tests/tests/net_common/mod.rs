//! Shared by the `net_*` end-to-end tests: the real `dpu-agent` binary
//! (`dev --no-ovs`, plain HTTP on loopback) against an Open vSwitch sandbox
//! the test owns, so the switch survives agent restarts. `ovs-ofctl`,
//! `ovs-vsctl` and `ip` are witnesses and setup only. Everything started
//! here is stopped on drop, on every path.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::Client;
use net_offload::sandbox::{Netns, OvsSandbox, SandboxConfig};
use serde_json::Value;

pub const BRIDGE: &str = "br-int";

/// The agent binary, built once per test process (a no-op when fresh).
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "dpu-agent", "--bin", "dpu-agent"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p dpu-agent");
        assert!(status.success(), "cargo build -p dpu-agent failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let bin = target.join("debug/dpu-agent");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private OVS (ovsdb-server + ovs-vswitchd) in `dir`.
pub async fn start_ovs(dir: &Path, netns: Netns) -> OvsSandbox {
    let config = SandboxConfig {
        netns,
        ..SandboxConfig::new(dir)
    };
    OvsSandbox::start(config)
        .await
        .unwrap_or_else(|e| panic!("Open vSwitch sandbox in {}: {e:?}", dir.display()))
}

/// A test's temp dir under /tmp and the private OVS it holds (in `ovs/`);
/// an agent's state goes in `state/`.
pub struct Switch {
    pub dir: tempfile::TempDir,
    pub ovs: OvsSandbox,
}

/// A temp dir named `prefix…` and an Open vSwitch started in it, in
/// `netns`.
pub async fn private_switch(prefix: &str, netns: Netns) -> Switch {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    let ovs = start_ovs(&dir.path().join("ovs"), netns).await;
    Switch { dir, ovs }
}

/// A running `dpu-agent dev --no-ovs` using the OVSDB at `db`.
#[derive(Debug)]
pub struct Agent {
    pub state_dir: PathBuf,
    pub db: String,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
}

impl Agent {
    pub async fn start(state_dir: &Path, db: &Path, extra_env: &[(&str, &str)]) -> Agent {
        let mut agent = Agent {
            state_dir: state_dir.to_path_buf(),
            db: format!("unix:{}", db.display()),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            log: state_dir.join("agent.log"),
            child: None,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.spawn().await;
        agent
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.state_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(agent_bin());
        cmd.args(["dev", "--no-ovs", "--state-dir"])
            .arg(&self.state_dir)
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--insecure-listen")
            .arg(self.http.to_string())
            .env("DPU_AGENT_OVS_DB", &self.db)
            .env("DPU_AGENT_LOG_LEVEL", "info,net_offload=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start dpu-agent"));
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = client.healthz().await {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dpu-agent exited with {status}; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "dpu-agent not healthy in 30 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn client(&self) -> Client {
        Client::plain(&format!("http://{}", self.http)).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Waits until `kind/id` is Ready at its current generation
    /// ([`is_ready`]), returning it.
    pub async fn wait_ready(&self, kind: Kind, id: &str, within: Duration) -> dpu_api::Object {
        self.wait_object(kind, id, within, is_ready).await
    }

    /// Waits until `kind/id` satisfies `pred`, returning it.
    pub async fn wait_object(
        &self,
        kind: Kind,
        id: &str,
        within: Duration,
        pred: impl Fn(&dpu_api::Object) -> bool,
    ) -> dpu_api::Object {
        let client = self.client();
        let deadline = Instant::now() + within;
        loop {
            let last = client.get(kind, id).await;
            if let Ok(o) = &last
                && pred(o)
            {
                return o.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{} {id}: condition not reached in {within:?}; last: {last:?}\nagent log:\n{}",
                kind.name(),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn put(client: &Client, kind: Kind, id: &str, tenant: &str, spec: Value) {
    client
        .put(kind, id, Some(tenant), spec, None)
        .await
        .unwrap_or_else(|e| panic!("PUT {} {id}: {e}", kind.path()));
}

/// Tenant `acme` (no grants) and its VXLAN network `id`.
pub async fn acme_vxlan_network(c: &Client, id: &str, vni: u32, cidr: &str) {
    put(c, Kind::Tenant, "acme", "acme", serde_json::json!({})).await;
    let spec = serde_json::json!({"vni": vni, "cidr": cidr, "encap": "vxlan"});
    put(c, Kind::Network, id, "acme", spec).await;
}

pub fn is_ready(o: &dpu_api::Object) -> bool {
    o.status.phase == dpu_api::Phase::Ready && o.status.observed_generation == o.generation
}

pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command succeeds (for traffic checks that may fail).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `ovs-ofctl -O OpenFlow14 dump-flows` of the bridge, agent cookies only
/// (cookie=0xd0...), one line per flow.
pub fn agent_flow_lines(ovs: &OvsSandbox) -> Vec<String> {
    let target = format!("unix:{}", ovs.mgmt_socket(BRIDGE).display());
    run(
        "ovs-ofctl",
        &["-O", "OpenFlow14", "--no-names", "dump-flows", &target],
    )
    .lines()
    .filter(|l| l.contains("cookie=0xd0"))
    .map(str::to_string)
    .collect()
}

pub fn ofctl(ovs: &OvsSandbox, cmd: &str, args: &[&str]) -> String {
    let target = format!("unix:{}", ovs.mgmt_socket(BRIDGE).display());
    run(
        "ovs-ofctl",
        &[
            &["-O", "OpenFlow14", "--no-names", cmd, target.as_str()],
            args,
        ]
        .concat(),
    )
}

/// `duration=12.345s` of a dump-flows line.
pub fn duration_of(line: &str) -> f64 {
    line.split("duration=")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"))
}

/// The part of a dump-flows line that identifies the flow and what it does
/// (without counters).
pub fn flow_identity(line: &str) -> String {
    line.split(", ")
        .filter(|p| {
            ![
                "duration=",
                "n_packets=",
                "n_bytes=",
                "idle_age=",
                "hard_age=",
                " duration=",
            ]
            .iter()
            .any(|k| p.trim_start().starts_with(k))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The network namespaces a test made, removed on drop (last first, on
/// every path).
pub struct NetnsCleanup(pub Vec<String>);

impl Drop for NetnsCleanup {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Ping from `ns` to `dst`, retried for up to `within`.
pub fn ping_within(ns: &str, dst: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if succeeds(
            "ip",
            &["netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst],
        ) {
            return true;
        }
    }
    false
}

/// One of two "DPUs" carrying tenant `acme`'s network `net-x` over VXLAN.
pub struct VxlanDpu {
    /// The namespace (made by the test) the DPU's OVS and agent run in.
    pub ns: String,
    /// Its underlay address, on `br-phy`.
    pub vtep: &'static str,
    /// The underlay device in `ns` that `br-phy` gets as its port.
    pub uplink: String,
    pub function: String,
    pub mac: &'static str,
    pub ip: &'static str,
    /// The tenant's spec.
    pub tenant: Value,
    pub vni: u32,
    /// The port's `security.ingress` rules.
    pub ingress: Value,
}

/// Runs one DPU on a thread of its own: OVS with a `br-phy` underlay bridge
/// (userspace datapath) holding the VTEP address, an agent, the tenant, its
/// network, a function with a port, and the other DPU's port (`peer`: MAC,
/// IP, VTEP) as the Endpoint `peer`. Sends its VTEP and the integration
/// bridge's OpenFlow socket when ready and keeps everything up until `done`
/// is dropped; stops everything it started on every path.
pub fn vxlan_dpu_thread(
    me: VxlanDpu,
    peer: (&'static str, &'static str, &'static str),
    ready: std::sync::mpsc::Sender<(&'static str, PathBuf)>,
    done: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    use serde_json::json;
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let ns_path = format!("/run/netns/{}", me.ns);
        let f = std::fs::File::open(&ns_path).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace fd.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        run("ip", &["link", "set", "lo", "up"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let Switch { dir, ovs } = private_switch("vx", Netns::Path(ns_path.into())).await;
            let db = format!("--db=unix:{}", ovs.db_socket().display());
            run(
                "ovs-vsctl",
                &[
                    &db,
                    "add-br",
                    "br-phy",
                    "--",
                    "set",
                    "bridge",
                    "br-phy",
                    "datapath_type=netdev",
                    "--",
                    "add-port",
                    "br-phy",
                    &me.uplink,
                ],
            );
            run(
                "ip",
                &["addr", "add", &format!("{}/24", me.vtep), "dev", "br-phy"],
            );
            run("ip", &["link", "set", "br-phy", "up"]);
            let agent = Agent::start(&dir.path().join("state"), &ovs.db_socket(), &[]).await;
            let c = agent.client();
            put(&c, Kind::Tenant, "acme", "acme", me.tenant).await;
            put(
                &c,
                Kind::Network,
                "net-x",
                "acme",
                json!({"vni": me.vni, "cidr": "10.30.0.0/24", "encap": "vxlan"}),
            )
            .await;
            put(
                &c,
                Kind::Function,
                &me.function,
                "acme",
                json!({"type": "net", "pf": "pf0", "mac": me.mac}),
            )
            .await;
            put(
                &c,
                Kind::Port,
                &me.function,
                "acme",
                json!({"network": "net-x", "function": me.function, "mac": me.mac,
                       "ips": [me.ip], "security": {"ingress": me.ingress}}),
            )
            .await;
            put(
                &c,
                Kind::Endpoint,
                "peer",
                "acme",
                json!({"network": "net-x", "mac": peer.0, "ips": [peer.1], "vtep": peer.2}),
            )
            .await;
            agent
                .wait_ready(Kind::Port, &me.function, Duration::from_secs(60))
                .await;
            agent
                .wait_ready(Kind::Endpoint, "peer", Duration::from_secs(20))
                .await;
            let _ = ready.send((me.vtep, ovs.mgmt_socket(BRIDGE)));
            // Until the test is done (or gave up and dropped the sender).
            let _ = done.recv();
            drop(agent);
            drop(ovs);
        });
    })
}
