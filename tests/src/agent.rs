//! A real `dpu-agent` process for end-to-end tests: started in `dev` mode in
//! its own state directory on a free loopback port, with clients for every
//! role, `kill -9` and restart. Dropping it kills the process.
//!
//! The binary is built once per test process (`cargo build -p dpu-agent
//! --bins`, a no-op when up to date) next to the test executable, so a test
//! always drives the agent of the same source tree.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dpu_api::client::Client;
use dpu_api::identity::Role;
use dpu_pki::Ca;

/// The value of sample `name` (with its labels, as the agent writes
/// them: `family{a="x"}`) in the text of `/metrics`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The target profile directory of the running test (`target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/debug/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, built if needed.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = target_dir();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "dpu-agent", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build -p dpu-agent failed: {s}")),
            Err(e) => Err(format!("cannot run cargo to build dpu-agent: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = target_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// The ports of `br-int` on the private Open vSwitch that `dpu-agent dev
/// --state-dir STATE` runs (`ovs-vsctl list-ports`, on `STATE/ovs/db.sock`).
pub fn dev_switch_ports(state: &Path) -> Vec<String> {
    let db = format!("--db=unix:{}", state.join("ovs/db.sock").display());
    let out = Command::new("ovs-vsctl")
        .args([&db, "list-ports", "br-int"])
        .output()
        .expect("ovs-vsctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running agent.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Starts `dpu-agent dev` without Open vSwitch, and waits until it is
    /// ready.
    pub fn start() -> AgentProcess {
        Self::start_with(&["--no-ovs"])
    }

    /// Starts `dpu-agent dev` with extra arguments.
    pub fn start_with(args: &[&str]) -> AgentProcess {
        Self::start_with_env(args, &[])
    }

    /// Starts `dpu-agent dev` with extra arguments and environment, set after
    /// (so overriding) the defaults above, e.g.
    /// `DPU_AGENT_FUNCTIONS_BACKEND=veth` for a test that needs functions
    /// made (and then must delete them, so no namespace is left behind).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> AgentProcess {
        let dir = tempfile::Builder::new()
            .prefix("dpu-agent-test")
            .tempdir()
            .expect("temp dir");
        let mut agent = AgentProcess {
            child: None,
            dir,
            port: free_port(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let child = Command::new(binary("dpu-agent"))
            .arg("dev")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(&self.extra_args)
            .env("DPU_AGENT_RESYNC_SECONDS", "5")
            // The API tests need no real functions: with the veth simulator a
            // net function would leave a namespace behind on this host.
            .env("DPU_AGENT_FUNCTIONS_BACKEND", "none")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start dpu-agent");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30));
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.state_dir().join("pki").join(file)
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Tests call this from inside their own runtime: probe on a thread
        // with a runtime of its own.
        let probe = |client: Client| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(client.readyz()).ok()
            })
            .join()
            .ok()
            .flatten()
        };
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "dpu-agent exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            if self.pki("admin.pem").exists() {
                let client = self.admin();
                if let Some((200, _)) = probe(client) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "dpu-agent not ready after {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client with the fleet-controller identity `dpu-agent dev` wrote.
    pub fn admin(&self) -> Client {
        Client::from_files(
            &self.url(),
            &self.pki("ca.pem"),
            Some((&self.pki("admin.pem"), &self.pki("admin-key.pem"))),
        )
        .expect("admin client")
    }

    /// A client with a freshly issued identity for `role`.
    pub fn client_for(&self, role: &Role) -> Client {
        self.client_for_spiffe(&role.spiffe_id("dpu.local"))
    }

    /// A client whose certificate carries any URI SAN, signed by the agent's CA.
    pub fn client_for_spiffe(&self, spiffe_id: &str) -> Client {
        let ca = Ca::from_pem(
            &std::fs::read_to_string(self.pki("ca.pem")).expect("ca.pem"),
            &std::fs::read_to_string(self.pki("ca-key.pem")).expect("ca-key.pem"),
        )
        .expect("dev CA");
        let id = ca.issue(spiffe_id, &[]).expect("issue identity");
        let ca_pem = std::fs::read(self.pki("ca.pem")).expect("ca.pem");
        Client::from_pem(
            &self.url(),
            &ca_pem,
            Some((id.cert_pem.as_bytes(), id.key_pem.as_bytes())),
        )
        .expect("client")
    }

    /// A client that presents no certificate.
    pub fn anonymous(&self) -> Client {
        let ca_pem = std::fs::read(self.pki("ca.pem")).expect("ca.pem");
        Client::from_pem(&self.url(), &ca_pem, None).expect("anonymous client")
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().expect("wait for dpu-agent")
    }

    /// Starts the agent again on the same state directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
