//! nvmet configfs: the operations that build and tear down a subsystem,
//! namespace, allowed host and port ([`ConfigfsOp`], planned purely), an
//! executor that performs them under a configurable root
//! ([`ConfigfsExecutor`]), and a reader of what is there ([`observe_configfs`]).
//!
//! Order matters to the kernel: a namespace's `device_path` is written before
//! `enable`; a port's `addr_*` are immutable once any subsystem is linked to
//! it (-EACCES); a subsystem directory cannot be removed while it has
//! namespaces or links. Teardown is the reverse of setup.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::fabrics::{ConnectOptions, FabricsController};

/// How the plan names configfs paths to an operator.
pub const DISPLAY_ROOT: &str = "/sys/kernel/config/nvmet";

#[derive(Debug, Error)]
pub enum NvmetError {
    #[error("{op} failed")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no block device for {device}: the NVMe/TCP controller is not connected or shows no \
         namespace yet"
    )]
    DeviceNotFound { device: String },
    #[error("the kernel answered the fabrics connect with {answer:?}, not instance=N,cntlid=M")]
    BadConnectAnswer { answer: String },
    #[error("option value {value:?} contains ',', '=' or a line break")]
    BadOption { value: String },
}

/// The block device (or file) a namespace exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRef {
    /// A path known when planning: a backing file or an existing device.
    Path(PathBuf),
    /// Namespace 1 of exactly this NVMe/TCP connection (target, host NQN
    /// and host id: the volume's own, never another volume's connection to
    /// the same target); resolved when applying, since the kernel picks
    /// the name.
    Fabrics(ConnectOptions),
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Path(p) => write!(f, "{}", p.display()),
            DeviceRef::Fabrics(c) => write!(
                f,
                "<namespace 1 of {} at {}:{} as {}>",
                c.nqn, c.traddr, c.trsvcid, c.hostnqn
            ),
        }
    }
}

/// One configfs operation; paths are relative to the nvmet root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigfsOp {
    Mkdir(PathBuf),
    Write { attr: PathBuf, value: String },
    WriteDevicePath { attr: PathBuf, device: DeviceRef },
    Symlink { link: PathBuf, target: PathBuf },
    Unlink(PathBuf),
    Rmdir(PathBuf),
}

impl fmt::Display for ConfigfsOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = |p: &Path| format!("{DISPLAY_ROOT}/{}", p.display());
        match self {
            ConfigfsOp::Mkdir(d) => write!(f, "mkdir {}", p(d)),
            ConfigfsOp::Write { attr, value } => write!(f, "echo {value} > {}", p(attr)),
            ConfigfsOp::WriteDevicePath { attr, device } => {
                write!(f, "echo {device} > {}", p(attr))
            }
            ConfigfsOp::Symlink { link, target } => write!(f, "ln -s {} {}", p(target), p(link)),
            ConfigfsOp::Unlink(l) => write!(f, "rm {}", p(l)),
            ConfigfsOp::Rmdir(d) => write!(f, "rmdir {}", p(d)),
        }
    }
}

/// The TCP (or RDMA) port the target listens on. Ports are numbered, not
/// named, so the agent owns the port id it is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    pub id: u16,
    /// `tcp` or `rdma`.
    pub trtype: String,
    /// `ipv4` or `ipv6`.
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

fn subsys(nqn: &str) -> PathBuf {
    Path::new("subsystems").join(nqn)
}

fn port_dir(id: u16) -> PathBuf {
    Path::new("ports").join(id.to_string())
}

/// mkdir the subsystem and close it to any host.
pub fn create_subsystem(nqn: &str) -> Vec<ConfigfsOp> {
    vec![
        ConfigfsOp::Mkdir(subsys(nqn)),
        ConfigfsOp::Write {
            attr: subsys(nqn).join("attr_allow_any_host"),
            value: "0".into(),
        },
    ]
}

/// mkdir `hosts/<host>` if needed and link it into the subsystem.
pub fn allow_host(nqn: &str, host: &str, host_exists: bool) -> Vec<ConfigfsOp> {
    let mut ops = Vec::new();
    if !host_exists {
        ops.push(ConfigfsOp::Mkdir(Path::new("hosts").join(host)));
    }
    ops.push(ConfigfsOp::Symlink {
        link: subsys(nqn).join("allowed_hosts").join(host),
        target: Path::new("hosts").join(host),
    });
    ops
}

/// mkdir the namespace, point it at the device, enable it.
pub fn create_namespace(nqn: &str, nsid: u32, device: DeviceRef) -> Vec<ConfigfsOp> {
    let ns = subsys(nqn).join("namespaces").join(nsid.to_string());
    vec![
        ConfigfsOp::Mkdir(ns.clone()),
        ConfigfsOp::WriteDevicePath {
            attr: ns.join("device_path"),
            device,
        },
        ConfigfsOp::Write {
            attr: ns.join("enable"),
            value: "1".into(),
        },
    ]
}

/// mkdir the port (unless it exists) and set its address.
pub fn create_port(port: &PortConfig, exists: bool) -> Vec<ConfigfsOp> {
    let d = port_dir(port.id);
    let mut ops = Vec::new();
    if !exists {
        ops.push(ConfigfsOp::Mkdir(d.clone()));
    }
    for (attr, value) in [
        ("addr_trtype", &port.trtype),
        ("addr_adrfam", &port.adrfam),
        ("addr_traddr", &port.traddr),
        ("addr_trsvcid", &port.trsvcid),
    ] {
        ops.push(ConfigfsOp::Write {
            attr: d.join(attr),
            value: value.clone(),
        });
    }
    ops
}

/// Link the subsystem into the port: from now on it listens there.
pub fn link_port(port: u16, nqn: &str) -> ConfigfsOp {
    ConfigfsOp::Symlink {
        link: port_dir(port).join("subsystems").join(nqn),
        target: subsys(nqn),
    }
}

pub fn unlink_port(port: u16, nqn: &str) -> ConfigfsOp {
    ConfigfsOp::Unlink(port_dir(port).join("subsystems").join(nqn))
}

pub fn remove_namespace(nqn: &str, nsid: u32) -> Vec<ConfigfsOp> {
    let ns = subsys(nqn).join("namespaces").join(nsid.to_string());
    vec![
        ConfigfsOp::Write {
            attr: ns.join("enable"),
            value: "0".into(),
        },
        ConfigfsOp::Rmdir(ns),
    ]
}

pub fn disallow_host(nqn: &str, host: &str) -> ConfigfsOp {
    ConfigfsOp::Unlink(subsys(nqn).join("allowed_hosts").join(host))
}

pub fn remove_subsystem(nqn: &str) -> ConfigfsOp {
    ConfigfsOp::Rmdir(subsys(nqn))
}

/// rmdir the port; configfs refuses while subsystems are linked into it.
pub fn remove_port(port: u16) -> ConfigfsOp {
    ConfigfsOp::Rmdir(port_dir(port))
}

pub fn remove_host(host: &str) -> ConfigfsOp {
    ConfigfsOp::Rmdir(Path::new("hosts").join(host))
}

/// Whether the root is the kernel's configfs or a plain directory (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigfsMode {
    /// configfs creates a group's attribute files and default groups on
    /// mkdir and removes them on rmdir.
    Kernel,
    /// A plain directory: the executor creates and removes those files
    /// itself, so the same operation sequences run in a temp dir.
    PlainDirectory,
}

/// Performs [`ConfigfsOp`]s under `root`.
#[derive(Debug, Clone)]
pub struct ConfigfsExecutor {
    pub root: PathBuf,
    pub mode: ConfigfsMode,
}

/// What configfs creates inside a new group: attribute files and default
/// subgroups (from `drivers/nvme/target/configfs.c`; the subset we use).
fn default_contents(rel: &Path) -> (&'static [&'static str], &'static [&'static str]) {
    let parts: Vec<_> = rel.iter().filter_map(|c| c.to_str()).collect();
    match parts.as_slice() {
        ["subsystems", _] => (&["attr_allow_any_host"], &["allowed_hosts", "namespaces"]),
        ["subsystems", _, "namespaces", _] => (&["device_path", "enable"], &[]),
        ["ports", _] => (
            &["addr_trtype", "addr_adrfam", "addr_traddr", "addr_trsvcid"],
            &["subsystems", "referrals"],
        ),
        _ => (&[], &[]),
    }
}

impl ConfigfsExecutor {
    pub fn new(root: impl Into<PathBuf>, mode: ConfigfsMode) -> Self {
        ConfigfsExecutor {
            root: root.into(),
            mode,
        }
    }

    /// Performs `op`. `resolve` turns a [`DeviceRef`] into a path. Timed in
    /// [`crate::timing`] as backend `configfs`, by operation.
    pub fn apply(
        &self,
        op: &ConfigfsOp,
        resolve: &dyn Fn(&DeviceRef) -> Result<PathBuf, NvmetError>,
    ) -> Result<(), NvmetError> {
        let label = match op {
            ConfigfsOp::Mkdir(_) => "mkdir",
            ConfigfsOp::Write { .. } => "write",
            ConfigfsOp::WriteDevicePath { .. } => "write_device_path",
            ConfigfsOp::Symlink { .. } => "symlink",
            ConfigfsOp::Unlink(_) => "unlink",
            ConfigfsOp::Rmdir(_) => "rmdir",
        };
        crate::timing::time("configfs", label, || self.apply_untimed(op, resolve))
    }

    fn apply_untimed(
        &self,
        op: &ConfigfsOp,
        resolve: &dyn Fn(&DeviceRef) -> Result<PathBuf, NvmetError>,
    ) -> Result<(), NvmetError> {
        let io = |source| NvmetError::Io {
            op: op.to_string(),
            source,
        };
        match op {
            ConfigfsOp::Mkdir(d) => {
                let path = self.root.join(d);
                fs::create_dir(&path).map_err(io)?;
                if self.mode == ConfigfsMode::PlainDirectory {
                    let (files, dirs) = default_contents(d);
                    for f in files {
                        fs::write(path.join(f), b"").map_err(io)?;
                    }
                    for sub in dirs {
                        fs::create_dir(path.join(sub)).map_err(io)?;
                    }
                }
            }
            ConfigfsOp::Write { attr, value } => self.write_attr(attr, value).map_err(io)?,
            ConfigfsOp::WriteDevicePath { attr, device } => {
                let path = resolve(device)?;
                self.write_attr(attr, &path.to_string_lossy()).map_err(io)?;
            }
            ConfigfsOp::Symlink { link, target } => {
                std::os::unix::fs::symlink(self.root.join(target), self.root.join(link))
                    .map_err(io)?
            }
            ConfigfsOp::Unlink(l) => fs::remove_file(self.root.join(l)).map_err(io)?,
            ConfigfsOp::Rmdir(d) => {
                let path = self.root.join(d);
                if self.mode == ConfigfsMode::PlainDirectory {
                    let (files, dirs) = default_contents(d);
                    for f in files {
                        let _ = fs::remove_file(path.join(f));
                    }
                    for sub in dirs {
                        // Fails, like the kernel, while the group has children.
                        fs::remove_dir(path.join(sub)).map_err(io)?;
                    }
                }
                fs::remove_dir(&path).map_err(io)?;
            }
        }
        Ok(())
    }

    /// Writes an attribute. configfs attributes exist from mkdir on and are
    /// written in place, never created or truncated.
    fn write_attr(&self, attr: &Path, value: &str) -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(self.root.join(attr))?;
        if self.mode == ConfigfsMode::PlainDirectory {
            f.set_len(0)?;
        }
        f.write_all(value.as_bytes())
    }
}

/// A namespace as configfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedNamespace {
    pub device_path: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedNvmetSubsystem {
    pub allow_any_host: bool,
    pub allowed_hosts: Vec<String>,
    pub namespaces: BTreeMap<u32, ObservedNamespace>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPort {
    pub trtype: String,
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
    /// NQNs linked into the port.
    pub subsystems: Vec<String>,
}

/// What the kernel backend has: nvmet configfs, initiator controllers, and
/// backing files of local volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvmetObserved {
    pub subsystems: BTreeMap<String, ObservedNvmetSubsystem>,
    pub ports: BTreeMap<u16, ObservedPort>,
    pub hosts: Vec<String>,
    pub controllers: Vec<FabricsController>,
    /// File names in the backing-file directory.
    pub backing_files: Vec<String>,
    /// Device path (`/dev/nvme1n1`) → its `io.max` limits in the QoS
    /// cgroup; devices without a line are absent.
    pub io_max: BTreeMap<String, super::qos::IoMax>,
    /// Traffic control on the ports' interface, when volumes have ports of
    /// their own (`volume_ports` > 0) and the interface was found.
    pub tc: Option<super::tc::TcObserved>,
    /// Whether the kernel's native NVMe multipath is on
    /// (`nvme_core.multipath`): then every controller connected to one
    /// subsystem NQN, whatever its host NQN, shares one namespace block
    /// device, so two volumes on one remote subsystem cannot have separate
    /// devices.
    pub multipath: bool,
}

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads the nvmet tree under `root`. A missing root (module not loaded)
/// reads as empty.
pub fn observe_configfs(root: &Path) -> NvmetObserved {
    let mut obs = NvmetObserved {
        hosts: names(&root.join("hosts")),
        ..Default::default()
    };
    for nqn in names(&root.join("subsystems")) {
        let d = root.join("subsystems").join(&nqn);
        let mut s = ObservedNvmetSubsystem {
            allow_any_host: read_trim(&d.join("attr_allow_any_host")) == "1",
            allowed_hosts: names(&d.join("allowed_hosts")),
            ..Default::default()
        };
        for ns in names(&d.join("namespaces")) {
            let Ok(nsid) = ns.parse::<u32>() else {
                continue;
            };
            let nd = d.join("namespaces").join(&ns);
            s.namespaces.insert(
                nsid,
                ObservedNamespace {
                    device_path: read_trim(&nd.join("device_path")),
                    enabled: read_trim(&nd.join("enable")) == "1",
                },
            );
        }
        obs.subsystems.insert(nqn, s);
    }
    for id in names(&root.join("ports")) {
        let Ok(n) = id.parse::<u16>() else { continue };
        let d = root.join("ports").join(&id);
        obs.ports.insert(
            n,
            ObservedPort {
                trtype: read_trim(&d.join("addr_trtype")),
                adrfam: read_trim(&d.join("addr_adrfam")),
                traddr: read_trim(&d.join("addr_traddr")),
                trsvcid: read_trim(&d.join("addr_trsvcid")),
                subsystems: names(&d.join("subsystems")),
            },
        );
    }
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_resolve(d: &DeviceRef) -> Result<PathBuf, NvmetError> {
        match d {
            DeviceRef::Path(p) => Ok(p.clone()),
            other => Err(NvmetError::DeviceNotFound {
                device: other.to_string(),
            }),
        }
    }

    fn port() -> PortConfig {
        PortConfig {
            id: 1,
            trtype: "tcp".into(),
            adrfam: "ipv4".into(),
            traddr: "192.0.2.10".into(),
            trsvcid: "4420".into(),
        }
    }

    fn setup_ops(nqn: &str, host: &str) -> Vec<ConfigfsOp> {
        let mut ops = create_subsystem(nqn);
        ops.extend(allow_host(nqn, host, false));
        ops.extend(create_namespace(
            nqn,
            1,
            DeviceRef::Path("/dev/nvme1n1".into()),
        ));
        ops.extend(create_port(&port(), false));
        ops.push(link_port(1, nqn));
        ops
    }

    fn teardown_ops(nqn: &str, host: &str) -> Vec<ConfigfsOp> {
        let mut ops = vec![unlink_port(1, nqn)];
        ops.extend(remove_namespace(nqn, 1));
        ops.push(disallow_host(nqn, host));
        ops.push(remove_subsystem(nqn));
        ops.push(remove_host(host));
        ops
    }

    #[test]
    fn setup_renders_as_configfs_writes() {
        let lines: Vec<String> = setup_ops("nqn.x:t:v", "nqn.h")
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "mkdir /sys/kernel/config/nvmet/subsystems/nqn.x:t:v",
                "echo 0 > /sys/kernel/config/nvmet/subsystems/nqn.x:t:v/attr_allow_any_host",
                "mkdir /sys/kernel/config/nvmet/hosts/nqn.h",
                "ln -s /sys/kernel/config/nvmet/hosts/nqn.h \
                 /sys/kernel/config/nvmet/subsystems/nqn.x:t:v/allowed_hosts/nqn.h",
                "mkdir /sys/kernel/config/nvmet/subsystems/nqn.x:t:v/namespaces/1",
                "echo /dev/nvme1n1 > \
                 /sys/kernel/config/nvmet/subsystems/nqn.x:t:v/namespaces/1/device_path",
                "echo 1 > /sys/kernel/config/nvmet/subsystems/nqn.x:t:v/namespaces/1/enable",
                "mkdir /sys/kernel/config/nvmet/ports/1",
                "echo tcp > /sys/kernel/config/nvmet/ports/1/addr_trtype",
                "echo ipv4 > /sys/kernel/config/nvmet/ports/1/addr_adrfam",
                "echo 192.0.2.10 > /sys/kernel/config/nvmet/ports/1/addr_traddr",
                "echo 4420 > /sys/kernel/config/nvmet/ports/1/addr_trsvcid",
                "ln -s /sys/kernel/config/nvmet/subsystems/nqn.x:t:v \
                 /sys/kernel/config/nvmet/ports/1/subsystems/nqn.x:t:v",
            ]
        );
    }

    #[test]
    fn setup_then_observe_then_teardown_in_a_temp_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nvmet");
        for d in ["subsystems", "ports", "hosts"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let ex = ConfigfsExecutor::new(&root, ConfigfsMode::PlainDirectory);
        for op in setup_ops("nqn.x:t:v", "nqn.h") {
            ex.apply(&op, &no_resolve).unwrap();
        }
        let obs = observe_configfs(&root);
        let s = &obs.subsystems["nqn.x:t:v"];
        assert!(!s.allow_any_host);
        assert_eq!(s.allowed_hosts, ["nqn.h"]);
        assert_eq!(
            s.namespaces[&1],
            ObservedNamespace {
                device_path: "/dev/nvme1n1".into(),
                enabled: true
            }
        );
        assert_eq!(obs.ports[&1].traddr, "192.0.2.10");
        assert_eq!(obs.ports[&1].subsystems, ["nqn.x:t:v"]);
        assert_eq!(obs.hosts, ["nqn.h"]);

        // Removing the subsystem before its namespace fails, as in the kernel.
        assert!(
            ex.apply(&remove_subsystem("nqn.x:t:v"), &no_resolve)
                .is_err()
        );

        for op in teardown_ops("nqn.x:t:v", "nqn.h") {
            ex.apply(&op, &no_resolve).unwrap();
        }
        let obs = observe_configfs(&root);
        assert!(obs.subsystems.is_empty());
        assert!(obs.hosts.is_empty());
        assert!(obs.ports[&1].subsystems.is_empty());
    }

    #[test]
    fn unresolved_device_fails_the_write_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let ex = ConfigfsExecutor::new(dir.path(), ConfigfsMode::PlainDirectory);
        let op = ConfigfsOp::WriteDevicePath {
            attr: "x".into(),
            device: DeviceRef::Fabrics(ConnectOptions {
                transport: "tcp".into(),
                traddr: "192.0.2.1".into(),
                trsvcid: "4420".into(),
                nqn: "nqn.r".into(),
                hostnqn: "nqn.h".into(),
                hostid: None,
            }),
        };
        let e = ex.apply(&op, &no_resolve).unwrap_err().to_string();
        assert!(e.contains("nqn.r at 192.0.2.1:4420 as nqn.h"), "{e}");
    }
}
