//! A private Open vSwitch (ovsdb-server + ovs-vswitchd, userspace datapath)
//! in one directory, started exactly as RIG.md §1 shows: used by
//! `dpu-agent dev` and by tests.
//!
//! Everything lives in the directory: `conf.db`, `db.sock`, pid files, logs,
//! unixctl sockets, and `<bridge>.mgmt` (OpenFlow management socket), because
//! both daemons run with `OVS_RUNDIR`/`OVS_LOGDIR`/`OVS_DBDIR`/`OVS_SYSCONFDIR`
//! set to it. The root row of the database is created with our own OVSDB
//! client, not ovs-vsctl. Each daemon can be stopped, killed (SIGKILL) and
//! restarted on its own; dropping the sandbox stops both.
//!
//! The daemons run with `--detach`, which returns only once they are ready, so
//! they are not our children: they are tracked through their pid files and
//! awaited by polling `/proc`.
//!
//! Network namespace of ovs-vswitchd ([`Netns`]): the userspace datapath
//! creates tap devices (`ovs-netdev`, one per bridge and internal port) whose
//! names are global to a namespace, so two sandboxes in one namespace collide.
//! [`Netns::Private`] (what tests use) gives ovs-vswitchd a fresh namespace of
//! its own (`unshare(2)` before exec; its taps vanish with it);
//! [`Netns::Path`] enters a named one (`setns(2)`, e.g. `/run/netns/dpu1`,
//! for two-"DPU" setups joined by a veth). [`Netns::HostOrNamed`] is
//! `dpu-agent dev`'s rule: the caller's namespace while no other
//! ovs-vswitchd runs there, else a named namespace of the sandbox's own,
//! made natively (unshare + bind mount, [`crate::functions::netns`]) and
//! recorded in the directory's `netns` file, so that every later start in
//! the directory enters it again until [`stop_dir`] removes both.
//! ovsdb-server speaks only unix sockets and stays in the caller's namespace.
//!
//! Outliving its owner: [`OvsSandbox::start`] adopts a daemon of this
//! directory that is still running (its pid file names a live process whose
//! command line holds this directory's database or socket), so an agent
//! restarted after SIGTERM or SIGKILL finds the switch it left, with its
//! flows; [`OvsSandbox::leave_running`] lets go without stopping it, and
//! [`stop_dir`] stops what runs in a directory.
//!
//! Limits: Linux only; OVS 2.x/3.x command lines; the directory path must be
//! short enough for unix socket names (~100 bytes).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ovsdb::{ClientConfig, Endpoint, OvsdbClient, OvsdbError, VswitchError};

/// The schema OVS installs (Debian `openvswitch-common`).
pub const DEFAULT_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

const INSTALL_HINT: &str = "install Open vSwitch: apt-get install openvswitch-switch";

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "{program} not found in PATH, /usr/sbin, /usr/bin or /usr/lib/openvswitch-switch; {INSTALL_HINT}"
    )]
    NotInstalled { program: &'static str },
    #[error("OVS schema {0} not found; {INSTALL_HINT}")]
    SchemaMissing(PathBuf),
    #[error("cannot create sandbox directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}; see {log}")]
    Failed {
        program: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
        log: PathBuf,
    },
    #[error("{daemon} did not become ready within {timeout:?}; see {log}")]
    NotReady {
        daemon: &'static str,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("{daemon} (pid {pid}) did not exit within {timeout:?} even after SIGKILL")]
    StopTimeout {
        daemon: &'static str,
        pid: i32,
        timeout: Duration,
    },
    #[error(
        "another userspace Open vSwitch already runs in this network namespace ({other}): \
         its datapath holds the tap device ovs-netdev, so a second one cannot make its bridge; \
         stop it (for a dev agent: `dpu-agent dev --stop --state-dir DIR`) or run this one \
         without its own switch"
    )]
    DatapathTaken { other: String },
    #[error("cannot open network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot initialize the Open_vSwitch database at {socket}")]
    InitDb {
        socket: PathBuf,
        #[source]
        source: Box<VswitchError>,
    },
}

impl From<(PathBuf, OvsdbError)> for SandboxError {
    fn from((socket, e): (PathBuf, OvsdbError)) -> Self {
        SandboxError::InitDb {
            socket,
            source: Box::new(e.into()),
        }
    }
}

/// One of the two daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    OvsdbServer,
    Vswitchd,
}

impl Daemon {
    pub fn program(self) -> &'static str {
        match self {
            Daemon::OvsdbServer => "ovsdb-server",
            Daemon::Vswitchd => "ovs-vswitchd",
        }
    }

    fn stem(self) -> &'static str {
        match self {
            Daemon::OvsdbServer => "ovsdb",
            Daemon::Vswitchd => "vswitchd",
        }
    }

    fn index(self) -> usize {
        match self {
            Daemon::OvsdbServer => 0,
            Daemon::Vswitchd => 1,
        }
    }
}

/// The network namespace ovs-vswitchd runs in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Netns {
    /// The caller's namespace, as RIG.md §1 does by hand.
    #[default]
    Host,
    /// A new, unnamed namespace per ovs-vswitchd start (parallel tests). A
    /// restart gets a new empty namespace; ovs-vswitchd recreates its taps.
    Private,
    /// An existing namespace file, e.g. `/run/netns/NAME`.
    Path(PathBuf),
    /// The caller's namespace while no other ovs-vswitchd runs there (and
    /// this directory has no recorded namespace); otherwise the named
    /// namespace `/run/netns/<name>`, created if absent and recorded in the
    /// directory's `netns` file: a switch that went there stays there
    /// (restarts, adoption) until [`stop_dir`]. A start with [`Netns::Host`]
    /// in a directory with such a record also enters it.
    HostOrNamed(String),
}

/// The file in a sandbox directory that names the namespace its
/// ovs-vswitchd was placed in by [`Netns::HostOrNamed`].
pub const NETNS_RECORD: &str = "netns";

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Holds the database, sockets, pid files and logs; created if absent.
    /// An existing `conf.db` is reused.
    pub dir: PathBuf,
    /// Where ovs-vswitchd runs (default: the caller's namespace).
    pub netns: Netns,
    /// Where to look first for the OVS programs.
    pub bin_dir: Option<PathBuf>,
    pub schema: PathBuf,
    /// Bound on each daemon's start and stop.
    pub timeout: Duration,
    /// Starts ovs-vswitchd with `--enable-dummy=override`: every `system`
    /// port is then a dummy netdev that needs no kernel device (OVS's own
    /// test suite does this), so thousands of representors cost no kernel
    /// state. For benchmarks at scale; no packet reaches such a port.
    pub dummy_netdevs: bool,
}

impl SandboxConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SandboxConfig {
            dir: dir.into(),
            netns: Netns::Host,
            bin_dir: None,
            schema: PathBuf::from(DEFAULT_SCHEMA),
            timeout: Duration::from_secs(20),
            dummy_netdevs: false,
        }
    }
}

/// Paths of the OVS programs.
#[derive(Debug, Clone)]
struct Programs {
    ovsdb_server: PathBuf,
    vswitchd: PathBuf,
    ovsdb_tool: PathBuf,
}

fn find_program(name: &'static str, first: Option<&Path>) -> Result<PathBuf, SandboxError> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    first
        .map(Path::to_path_buf)
        .into_iter()
        .chain(path_dirs)
        .chain(
            [
                "/usr/sbin",
                "/usr/bin",
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/lib/openvswitch-switch",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(SandboxError::NotInstalled { program: name })
}

/// A running private Open vSwitch. Dropping it stops both daemons.
#[derive(Debug)]
pub struct OvsSandbox {
    config: SandboxConfig,
    programs: Programs,
    /// Pids of the daemons we started and have not stopped, by [`Daemon`].
    pids: Mutex<[Option<i32>; 2]>,
    /// The named namespace (under `/run/netns`) ovs-vswitchd runs in, when
    /// [`Netns::HostOrNamed`] or the directory's record put it there.
    named_netns: Option<String>,
}

impl OvsSandbox {
    /// Creates the database if absent, starts ovsdb-server, creates the root
    /// row with our OVSDB client, then starts ovs-vswitchd.
    pub async fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        let programs = Programs {
            ovsdb_server: find_program("ovsdb-server", config.bin_dir.as_deref())?,
            vswitchd: find_program("ovs-vswitchd", config.bin_dir.as_deref())?,
            ovsdb_tool: find_program("ovsdb-tool", config.bin_dir.as_deref())?,
        };
        std::fs::create_dir_all(&config.dir).map_err(|source| SandboxError::Dir {
            path: config.dir.clone(),
            source,
        })?;
        // Absolute paths: the daemons chdir to / when they detach.
        let dir = std::fs::canonicalize(&config.dir).map_err(|source| SandboxError::Dir {
            path: config.dir.clone(),
            source,
        })?;
        let config = SandboxConfig { dir, ..config };
        let fallback = match &config.netns {
            Netns::HostOrNamed(name) => Some(name.clone()),
            _ => None,
        };
        let mut sandbox = OvsSandbox {
            config,
            programs,
            pids: Mutex::new([None, None]),
            named_netns: None,
        };
        sandbox.resolve_netns()?;
        sandbox.create_db().await?;
        sandbox.start_daemon(Daemon::OvsdbServer).await?;
        sandbox.init_db().await?;
        match sandbox.start_daemon(Daemon::Vswitchd).await {
            // Another switch took the caller's namespace since we looked.
            Err(SandboxError::DatapathTaken { other })
                if fallback.is_some() && sandbox.named_netns.is_none() =>
            {
                let name = fallback.unwrap_or_default();
                tracing::info!(netns = %name, %other, "the datapath here is taken; using a namespace of our own");
                sandbox.enter_named(&name)?;
                sandbox.start_daemon(Daemon::Vswitchd).await?;
            }
            other => other?,
        }
        Ok(sandbox)
    }

    /// Turns [`Netns::HostOrNamed`] (and [`Netns::Host`] in a directory
    /// whose record names a namespace) into the namespace to use.
    fn resolve_netns(&mut self) -> Result<(), SandboxError> {
        let recorded = recorded_netns(&self.config.dir);
        match self.config.netns.clone() {
            Netns::Host => {
                if let Some(name) = recorded {
                    tracing::info!(netns = %name, dir = %self.config.dir.display(), "entering the namespace this directory's switch was placed in");
                    self.enter_named(&name)?;
                }
            }
            Netns::HostOrNamed(name) => {
                if let Some(recorded) = recorded {
                    self.enter_named(&recorded)?;
                } else if running_in(&self.config.dir, Daemon::Vswitchd).is_some() {
                    // Adopted where it runs: with no record, the caller's.
                    self.config.netns = Netns::Host;
                } else if let Some(other) = other_vswitchd_here() {
                    tracing::info!(netns = %name, %other, "the datapath here is taken; using a namespace of our own");
                    self.enter_named(&name)?;
                } else {
                    self.config.netns = Netns::Host;
                }
            }
            Netns::Private | Netns::Path(_) => {}
        }
        Ok(())
    }

    /// Creates (if absent) and records the named namespace `name`, and
    /// makes it the one ovs-vswitchd starts in.
    fn enter_named(&mut self, name: &str) -> Result<(), SandboxError> {
        let path = crate::functions::netns::path(name);
        if !valid_netns_name(name) {
            return Err(SandboxError::Netns {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a namespace name is 1-64 of [A-Za-z0-9._-], not starting with a dot",
                ),
            });
        }
        crate::functions::netns::create(name).map_err(|source| SandboxError::Netns {
            path: path.clone(),
            source,
        })?;
        let record = self.config.dir.join(NETNS_RECORD);
        std::fs::write(&record, format!("{name}\n")).map_err(|source| SandboxError::Dir {
            path: record,
            source,
        })?;
        self.config.netns = Netns::Path(path);
        self.named_netns = Some(name.to_string());
        Ok(())
    }

    /// The named namespace (`/run/netns/<name>`) ovs-vswitchd runs in when
    /// [`Netns::HostOrNamed`] or the directory's record put it there; its
    /// tap devices and every port's device live there. `None`: the
    /// namespace the config gave (the caller's for [`Netns::Host`]).
    pub fn named_netns(&self) -> Option<&str> {
        self.named_netns.as_deref()
    }

    /// [`OvsSandbox::start`] with defaults in `dir`.
    pub async fn start_in(dir: impl Into<PathBuf>) -> Result<Self, SandboxError> {
        Self::start(SandboxConfig::new(dir)).await
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.dir.join("conf.db")
    }

    pub fn db_socket(&self) -> PathBuf {
        self.config.dir.join("db.sock")
    }

    pub fn db_endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.db_socket())
    }

    /// A client configuration for this sandbox's database.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.db_endpoint())
    }

    /// The OpenFlow management socket of `bridge` (`unix:` this path).
    pub fn mgmt_socket(&self, bridge: &str) -> PathBuf {
        self.config.dir.join(format!("{bridge}.mgmt"))
    }

    pub fn pid_file(&self, daemon: Daemon) -> PathBuf {
        self.config.dir.join(format!("{}.pid", daemon.stem()))
    }

    pub fn log_file(&self, daemon: Daemon) -> PathBuf {
        self.config.dir.join(format!("{}.log", daemon.stem()))
    }

    pub fn unixctl_socket(&self, daemon: Daemon) -> PathBuf {
        self.config.dir.join(format!("{}.ctl", daemon.stem()))
    }

    /// The pid of a daemon this sandbox started and that is still alive.
    pub fn pid(&self, daemon: Daemon) -> Option<i32> {
        self.lock_pids()[daemon.index()].filter(|&p| alive(p))
    }

    fn lock_pids(&self) -> std::sync::MutexGuard<'_, [Option<i32>; 2]> {
        self.pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
            cmd.env(var, &self.config.dir);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(
        &self,
        program: &'static str,
        mut cmd: tokio::process::Command,
        path: &Path,
        log: PathBuf,
    ) -> Result<(), SandboxError> {
        let run = tokio::time::timeout(self.config.timeout, cmd.output());
        let output = match run.await {
            Ok(out) => out.map_err(|source| SandboxError::Spawn {
                program: path.to_path_buf(),
                source,
            })?,
            Err(_) => {
                return Err(SandboxError::NotReady {
                    daemon: program,
                    timeout: self.config.timeout,
                    log,
                });
            }
        };
        if output.status.success() {
            Ok(())
        } else {
            Err(SandboxError::Failed {
                program,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                log,
            })
        }
    }

    async fn create_db(&self) -> Result<(), SandboxError> {
        if self.db_path().exists() {
            return Ok(());
        }
        if !self.config.schema.is_file() {
            return Err(SandboxError::SchemaMissing(self.config.schema.clone()));
        }
        let mut cmd = self.command(&self.programs.ovsdb_tool);
        cmd.arg("create")
            .arg(self.db_path())
            .arg(&self.config.schema);
        self.run("ovsdb-tool", cmd, &self.programs.ovsdb_tool, self.db_path())
            .await
    }

    async fn init_db(&self) -> Result<(), SandboxError> {
        let socket = self.db_socket();
        let mut config = self.client_config();
        config.connect_timeout = self.config.timeout;
        let client = OvsdbClient::connect(config)
            .await
            .map_err(|e| SandboxError::from((socket.clone(), e)))?;
        client
            .init_open_vswitch()
            .await
            .map_err(|source| SandboxError::InitDb {
                socket,
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Starts one daemon (no-op if it is running, or adopted when one this
    /// directory started earlier still runs) and waits until it is ready.
    pub async fn start_daemon(&self, daemon: Daemon) -> Result<(), SandboxError> {
        if self.pid(daemon).is_some() {
            return Ok(());
        }
        if let Some(pid) = running_in(&self.config.dir, daemon) {
            tracing::info!(
                daemon = daemon.program(),
                pid,
                dir = %self.config.dir.display(),
                "adopting the running daemon"
            );
            self.lock_pids()[daemon.index()] = Some(pid);
            return Ok(());
        }
        let dir = &self.config.dir;
        let pid_file = self.pid_file(daemon);
        let log = self.log_file(daemon);
        let path = match daemon {
            Daemon::OvsdbServer => &self.programs.ovsdb_server,
            Daemon::Vswitchd => &self.programs.vswitchd,
        };
        if daemon == Daemon::Vswitchd
            && matches!(self.config.netns, Netns::Host | Netns::HostOrNamed(_))
            && let Some(other) = other_vswitchd_here()
        {
            return Err(SandboxError::DatapathTaken { other });
        }
        let mut cmd = self.command(path);
        match daemon {
            Daemon::OvsdbServer => {
                cmd.arg(self.db_path())
                    .arg(arg("--remote=punix:", &self.db_socket()));
            }
            Daemon::Vswitchd => {
                cmd.arg(arg("unix:", &self.db_socket()));
                if self.config.dummy_netdevs {
                    cmd.arg("--enable-dummy=override");
                }
            }
        }
        cmd.arg(arg("--pidfile=", &pid_file))
            .arg("--detach")
            .arg(arg("--log-file=", &log))
            .arg(arg("--unixctl=", &self.unixctl_socket(daemon)));
        // Kept open until the child has been spawned.
        let _netns = match daemon {
            Daemon::Vswitchd => set_netns_before_exec(&mut cmd, &self.config.netns)?,
            Daemon::OvsdbServer => None,
        };
        tracing::debug!(daemon = daemon.program(), dir = %dir.display(), "starting");
        self.run(daemon.program(), cmd, path, log.clone()).await?;
        // --detach returns once the daemon is ready and has written its pid.
        let pid = read_pid(&pid_file)
            .filter(|&p| alive(p))
            .ok_or(SandboxError::NotReady {
                daemon: daemon.program(),
                timeout: self.config.timeout,
                log,
            })?;
        self.lock_pids()[daemon.index()] = Some(pid);
        Ok(())
    }

    /// Stops a daemon with SIGTERM (SIGKILL after the timeout) and waits for
    /// it to exit.
    pub async fn stop_daemon(&self, daemon: Daemon) -> Result<(), SandboxError> {
        self.signal_and_wait(daemon, libc::SIGTERM).await
    }

    /// Kills a daemon with SIGKILL (a crash, for tests) and waits for it.
    pub async fn kill_daemon(&self, daemon: Daemon) -> Result<(), SandboxError> {
        self.signal_and_wait(daemon, libc::SIGKILL).await
    }

    /// Stops (SIGTERM) and starts a daemon again with the same files.
    pub async fn restart_daemon(&self, daemon: Daemon) -> Result<(), SandboxError> {
        self.stop_daemon(daemon).await?;
        self.start_daemon(daemon).await
    }

    async fn signal_and_wait(&self, daemon: Daemon, signal: i32) -> Result<(), SandboxError> {
        let Some(pid) = self.lock_pids()[daemon.index()].take() else {
            return Ok(());
        };
        send_signal(pid, signal);
        wait_exit(
            daemon,
            pid,
            self.config.timeout,
            signal == libc::SIGKILL,
            || {
                tracing::warn!(
                    daemon = daemon.program(),
                    pid,
                    "no exit after SIGTERM; sending SIGKILL"
                );
            },
        )
        .await
    }

    /// Stops both daemons, ovs-vswitchd first.
    pub async fn stop(&self) -> Result<(), SandboxError> {
        self.stop_daemon(Daemon::Vswitchd).await?;
        self.stop_daemon(Daemon::OvsdbServer).await
    }

    /// Lets go of the daemons without stopping them: the switch outlives
    /// this process, as a production switch outlives its agent, and the
    /// next [`OvsSandbox::start`] in the same directory adopts it.
    pub fn leave_running(self) {
        *self.lock_pids() = [None, None];
    }
}

/// The pid of `daemon` running for the sandbox in `dir`, from its pid file,
/// if that process is alive and its command line names this directory (a
/// recycled pid of an unrelated process is not taken for it).
pub fn running_in(dir: &Path, daemon: Daemon) -> Option<i32> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let pid = read_pid(&dir.join(format!("{}.pid", daemon.stem())))?;
    if !alive(pid) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = dir.as_os_str().as_encoded_bytes();
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|a| a.windows(needle.len()).any(|w| w == needle))
        && cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(daemon.program().as_bytes()));
    ours.then_some(pid)
}

/// A live ovs-vswitchd in this process's network namespace, by its command
/// line (to name it in an error): two userspace datapaths in one namespace
/// fight over the tap device `ovs-netdev`.
fn other_vswitchd_here() -> Option<String> {
    let own_ns = std::fs::read_link("/proc/self/ns/net").ok()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let same_ns =
            std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() == Some(own_ns.clone());
        if args.first().is_some_and(|a| a.ends_with("ovs-vswitchd")) && same_ns && alive(pid) {
            return Some(format!("pid {pid}: {}", args.join(" ").trim()));
        }
    }
    None
}

/// The namespace name recorded in `dir` by [`Netns::HostOrNamed`], if the
/// record exists and names a namespace that exists.
pub fn recorded_netns(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(NETNS_RECORD)).ok()?;
    let name = text.trim();
    (valid_netns_name(name) && crate::functions::netns::exists(name)).then(|| name.to_string())
}

/// A name that stays one plain file under `/run/netns`: 1-64 of
/// `[A-Za-z0-9._-]`, not starting with a dot (so never `.` or `..`).
fn valid_netns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// What [`stop_dir`] stopped and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The programs stopped, ovs-vswitchd first.
    pub programs: Vec<&'static str>,
    /// The recorded namespace removed (see [`Netns::HostOrNamed`]).
    pub netns: Option<String>,
}

/// Stops the daemons running for the sandbox in `dir` (ovs-vswitchd first),
/// whichever process started them, then removes the namespace the
/// directory's record names and the record: `dpu-agent dev --stop`.
pub async fn stop_dir(dir: &Path, timeout: Duration) -> Result<Stopped, SandboxError> {
    let mut stopped = Vec::new();
    for daemon in [Daemon::Vswitchd, Daemon::OvsdbServer] {
        let Some(pid) = running_in(dir, daemon) else {
            continue;
        };
        // `exit --cleanup` makes ovs-vswitchd delete its datapath and the
        // tap devices the userspace datapath made persistent; a plain
        // SIGTERM would leave them behind.
        let asked = daemon == Daemon::Vswitchd
            && crate::unixctl::call(
                &std::fs::canonicalize(dir)
                    .unwrap_or_else(|_| dir.to_path_buf())
                    .join("vswitchd.ctl"),
                "exit",
                &["--cleanup"],
                timeout,
            )
            .await
            .is_ok();
        if !asked {
            send_signal(pid, libc::SIGTERM);
        }
        wait_exit(daemon, pid, timeout, false, || {}).await?;
        stopped.push(daemon.program());
    }
    let record = dir.join(NETNS_RECORD);
    let netns = match std::fs::read_to_string(&record) {
        Ok(text) => {
            let name = text.trim().to_string();
            // A record that is not a plain name (edited by hand) is not
            // followed out of /run/netns; the record itself still goes.
            if valid_netns_name(&name) {
                let n = name.clone();
                tokio::task::spawn_blocking(move || crate::functions::netns::remove(&n))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                    .map_err(|source| SandboxError::Netns {
                        path: crate::functions::netns::path(&name),
                        source,
                    })?;
            }
            std::fs::remove_file(&record).map_err(|source| SandboxError::Dir {
                path: record.clone(),
                source,
            })?;
            valid_netns_name(&name).then_some(name)
        }
        Err(_) => None,
    };
    Ok(Stopped {
        programs: stopped,
        netns,
    })
}

impl Drop for OvsSandbox {
    fn drop(&mut self) {
        // Synchronous: Drop may run outside any runtime or on a runtime thread
        // that is shutting down.
        let pids = *self.lock_pids();
        for daemon in [Daemon::Vswitchd, Daemon::OvsdbServer] {
            let Some(pid) = pids[daemon.index()] else {
                continue;
            };
            send_signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if alive(pid) {
                send_signal(pid, libc::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn arg(prefix: &str, path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits until `pid` (a `daemon`, just signalled) has exited. After
/// `timeout` it gets SIGKILL (after `before_kill`), unless `killed` says
/// SIGKILL is what it got; one that outlives SIGKILL is a
/// [`SandboxError::StopTimeout`].
async fn wait_exit(
    daemon: Daemon,
    pid: i32,
    timeout: Duration,
    mut killed: bool,
    before_kill: impl Fn(),
) -> Result<(), SandboxError> {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            if killed {
                return Err(SandboxError::StopTimeout {
                    daemon: daemon.program(),
                    pid,
                    timeout,
                });
            }
            before_kill();
            send_signal(pid, libc::SIGKILL);
            killed = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// True while the process exists and is not a zombie (a detached daemon is
/// not our child, so whoever adopted it may reap it late or never).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a positive
    // pid read from a pid file this sandbox's daemon wrote.
    if pid > 0 && unsafe { libc::kill(pid, signal) } != 0 {
        tracing::debug!(pid, signal, error = %std::io::Error::last_os_error(), "kill failed");
    }
}

/// Makes the child switch network namespace before exec. Returns the open
/// namespace file, which must stay open until the child is spawned.
fn set_netns_before_exec(
    cmd: &mut tokio::process::Command,
    netns: &Netns,
) -> Result<Option<File>, SandboxError> {
    let path = match netns {
        // HostOrNamed is resolved by `start`; unresolved it is the caller's.
        Netns::Host | Netns::HostOrNamed(_) => return Ok(None),
        Netns::Private => {
            // SAFETY: the closure runs in the forked child before exec and
            // only calls unshare(2), which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            return Ok(None);
        }
        Netns::Path(path) => path,
    };
    let file = File::open(path).map_err(|source| SandboxError::Netns {
        path: path.to_path_buf(),
        source,
    })?;
    let fd = file.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setns(2), which is async-signal-safe; `fd` stays open in the parent
    // (the returned File) until the spawn has completed.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn missing_program_names_the_package() {
        let err = find_program("definitely-not-ovs", Some(Path::new("/nonexistent"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("definitely-not-ovs"), "{text}");
        assert!(
            text.contains("apt-get install openvswitch-switch"),
            "{text}"
        );
    }

    #[test]
    fn recorded_namespace_names_stay_under_run_netns() {
        for good in ["dpu-dev-0badf00d", "a", "x.y_z-1"] {
            assert!(valid_netns_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../run",
            "a/b",
            ".hidden",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(!valid_netns_name(bad), "{bad}");
        }
    }

    #[test]
    fn own_process_is_alive_and_bogus_pid_is_not() {
        assert!(alive(std::process::id() as i32));
        assert!(!alive(i32::MAX));
    }

    #[test]
    fn paths_follow_rig_layout() {
        let sandbox = OvsSandbox {
            config: SandboxConfig::new("/tmp/x"),
            programs: Programs {
                ovsdb_server: "ovsdb-server".into(),
                vswitchd: "ovs-vswitchd".into(),
                ovsdb_tool: "ovsdb-tool".into(),
            },
            pids: Mutex::new([None, None]),
            named_netns: None,
        };
        assert_eq!(sandbox.db_socket(), Path::new("/tmp/x/db.sock"));
        assert_eq!(
            sandbox.mgmt_socket("br-int"),
            Path::new("/tmp/x/br-int.mgmt")
        );
        assert_eq!(
            sandbox.pid_file(Daemon::Vswitchd),
            Path::new("/tmp/x/vswitchd.pid")
        );
        assert_eq!(
            sandbox.log_file(Daemon::OvsdbServer),
            Path::new("/tmp/x/ovsdb.log")
        );
        assert_eq!(
            sandbox.unixctl_socket(Daemon::OvsdbServer).file_name(),
            Some(OsStr::new("ovsdb.ctl"))
        );
    }
}
