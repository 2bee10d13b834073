//! The agent's configuration, resolved in one place with the precedence
//! defaults < config file < environment (`DPU_AGENT_*`) < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::server::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{name}={value:?} is invalid")]
    Env {
        name: &'static str,
        value: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("DPU_AGENT_LOG_FORMAT={0:?} is invalid: expected text or json")]
    LogFormat(String),
    #[error(transparent)]
    InsecureListen(#[from] crate::server::NotLoopback),
    #[error("trust domain {0:?} must be a bare name like dpu.local")]
    TrustDomain(String),
    #[error("host_lease_seconds must be at least 1 (the host stubs' lease_secs, default 90)")]
    HostLeaseZero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How the agent runs: `run` (production) or `dev` (embedded defaults, a
/// private OVS, a generated PKI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    Dev,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Dev => "dev",
        }
    }
}

/// The config file (TOML). Every field is optional; see
/// `dpu-agent/config.sample.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub insecure_listen: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub resync_seconds: Option<u64>,
    /// How long a host stub may stay silent before `/metrics` counts its
    /// lease as expired; match the host stubs' `lease_secs`.
    pub host_lease_seconds: Option<u64>,
    /// `veth` (simulator), `switchdev` (a BlueField's eswitch through
    /// devlink), `sriov` (legacy VFs of a real PF), `external` or `none`.
    pub functions_backend: Option<FunctionsBackend>,
    /// switchdev backend: put each eswitch found in legacy mode into
    /// switchdev mode at start (default false: the firmware's mode stands).
    pub eswitch_switchdev: Option<bool>,
    #[serde(default)]
    pub tls: TlsFileConfig,
    #[serde(default)]
    pub ovs: OvsFileConfig,
    #[serde(default)]
    pub storage: StorageFileConfig,
    #[serde(default)]
    pub ipsec: IpsecFileConfig,
}

/// The `[ipsec]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpsecFileConfig {
    /// The netdev (in the agent's namespace) IPsec SAs are offloaded to in
    /// `run` mode (a BlueField's uplink, `p0`); absent: software only.
    pub uplink: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvsFileConfig {
    pub db: Option<String>,
    pub bridge: Option<String>,
    pub datapath_type: Option<String>,
    pub hw_offload: Option<bool>,
}

/// What makes `functions`: the veth simulator (default in dev), VFs of a
/// BlueField's eswitch through devlink (`switchdev`, default in run),
/// legacy SR-IOV VFs of a real PF (`sriov`), functions made outside the agent
/// (`external`: representors named, nothing programmed), or nothing
/// (functions stay `Pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionsBackend {
    Veth,
    /// The eswitch read from devlink: VF ports, their representors,
    /// `hw_addr`, rate and RoCE per port.
    Switchdev,
    Sriov,
    /// Functions made outside the agent: representors named, nothing programmed.
    External,
    None,
}

/// The `[storage]` section: which block backend realizes `volumes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFileConfig {
    pub backend: Option<StorageBackend>,
    pub spdk_socket: Option<PathBuf>,
    pub spdk_flavor: Option<SpdkFlavor>,
    pub nvmet_configfs: Option<PathBuf>,
    pub nvmet_listen: Option<SocketAddr>,
    pub nvmet_port_id: Option<u16>,
    pub nvmet_volume_ports: Option<u16>,
    pub backing_dir: Option<PathBuf>,
    pub qos_cgroup: Option<PathBuf>,
    pub host_nqn: Option<String>,
}

/// What realizes `volumes`: nothing (they stay `Pending`), the kernel
/// (nvmet + NVMe/TCP initiator), or SPDK/SNAP over its RPC socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    None,
    Nvmet,
    Spdk,
}

/// Parses an environment variable's word as the config file does (serde's
/// lower-case variant names), so both accept the same words; the error
/// names the word and lists the ones accepted.
fn from_word<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, serde::de::value::Error> {
    use serde::de::IntoDeserializer;
    T::deserialize(s.into_deserializer())
}

/// `FromStr` (for environment variables) by [`from_word`] for each type.
macro_rules! from_str_by_word {
    ($($t:ty),*) => {
        $(impl std::str::FromStr for $t {
            type Err = serde::de::value::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                from_word(s)
            }
        })*
    };
}

from_str_by_word!(FunctionsBackend, StorageBackend);

/// SNAP on a BlueField (emulated NVMe/virtio-blk functions) or plain SPDK
/// (NVMe-oF subsystems, vhost-blk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpdkFlavor {
    Snap,
    Nvmf,
}

/// Storage settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub spdk_socket: PathBuf,
    pub spdk_flavor: SpdkFlavor,
    /// The nvmet configfs root, `/sys/kernel/config/nvmet`.
    pub nvmet_configfs: PathBuf,
    /// Where the agent's nvmet port (and SPDK nvmf listener) listens.
    pub nvmet_listen: SocketAddr,
    /// The nvmet port id the agent owns.
    pub nvmet_port_id: u16,
    /// 0: every volume on the shared port. N > 0: each volume gets a port
    /// of its own (ids and TCP ports `nvmet_port_id`/`nvmet_listen` + 1..=N)
    /// and `qos.max_mbps` is enforced by traffic shaping of that port.
    pub nvmet_volume_ports: u16,
    /// Backing files of local volumes (kernel backend).
    pub backing_dir: PathBuf,
    /// cgroup v2 whose `io.max` carries kernel QoS; none disables it.
    pub qos_cgroup: Option<PathBuf>,
    /// When set, the one host NQN every volume admits (default: one per
    /// function, `nqn.2026-11.dev.dpu-agent:<tenant>:fn:<function>`).
    pub host_nqn: Option<String>,
}

/// Flags that override everything else (set by the binary's clap parser).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub listen: Option<SocketAddr>,
    pub insecure_listen: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub trust_domain: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

/// Open vSwitch settings for the network backend.
#[derive(Debug, Clone, PartialEq)]
pub struct OvsConfig {
    /// The OVSDB socket, `unix:/path` or `tcp:ip:port`.
    pub db: String,
    pub bridge: String,
    pub datapath_type: String,
    pub hw_offload: bool,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub listen: SocketAddr,
    pub insecure_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    pub trust_domain: String,
    pub tls: TlsFiles,
    pub log_format: LogFormat,
    pub log_level: String,
    pub resync: Duration,
    /// A host stub not heard from for this long has an expired lease
    /// (`dpu_agent_host_stub_leases`); default 90 s, the host stub's
    /// default `lease_secs`.
    pub host_lease: Duration,
    pub ovs: OvsConfig,
    /// `run` mode: the IPsec offload uplink (`[ipsec] uplink`, env
    /// `DPU_AGENT_IPSEC_UPLINK`).
    pub ipsec_uplink: Option<String>,
    pub functions_backend: FunctionsBackend,
    /// switchdev backend: set legacy eswitches to switchdev at start.
    pub eswitch_switchdev: bool,
    pub storage: StorageConfig,
    /// Dev mode: the named network namespace (`/run/netns/<name>`) the
    /// private switch's ovs-vswitchd runs in, when it is not the agent's own
    /// (a second dev agent on the host); the veth simulator then makes the
    /// representors there. Set by `dev::bootstrap`, never resolved from
    /// files or the environment; `None` in `run` mode.
    pub switch_netns: Option<String>,
}

/// The host stub's default `lease_secs`.
pub const DEFAULT_HOST_LEASE_SECONDS: u64 = 90;

/// The dev state directory when none is given: `$DPU_STATE_DIR`, else
/// `$HOME/.local/state/dpu-agent/dev`.
pub fn default_dev_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DPU_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/state/dpu-agent/dev")
}

impl Config {
    /// Reads the config file, if any.
    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Resolves defaults < `file` < `env` < `flags`. `env` looks up an
    /// environment variable (a parameter so tests need not touch the real
    /// environment).
    pub fn resolve(
        mode: Mode,
        file: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
        flags: Flags,
    ) -> Result<Config, ConfigError> {
        fn env_parse<T: std::str::FromStr>(
            env: &dyn Fn(&str) -> Option<String>,
            name: &'static str,
        ) -> Result<Option<T>, ConfigError>
        where
            T::Err: std::error::Error + Send + Sync + 'static,
        {
            match env(name) {
                None => Ok(None),
                Some(v) => v.parse::<T>().map(Some).map_err(|e| ConfigError::Env {
                    name,
                    value: v.clone(),
                    source: Box::new(e),
                }),
            }
        }
        let (default_listen, default_state) = match mode {
            Mode::Run => ("0.0.0.0:9443", PathBuf::from("/var/lib/dpu-agent")),
            Mode::Dev => ("127.0.0.1:9443", default_dev_state_dir()),
        };
        let listen = flags
            .listen
            .or(env_parse::<SocketAddr>(env, "DPU_AGENT_LISTEN")?)
            .or(file.listen)
            .unwrap_or_else(|| {
                default_listen
                    .parse()
                    .expect("default listen address parses")
            });
        let insecure_listen = flags
            .insecure_listen
            .or(env_parse::<SocketAddr>(env, "DPU_AGENT_INSECURE_LISTEN")?)
            .or(file.insecure_listen);
        if let Some(addr) = insecure_listen {
            crate::server::check_insecure_addr(addr)?;
        }
        let state_dir = flags
            .state_dir
            .or(env("DPU_AGENT_STATE_DIR").map(PathBuf::from))
            .or(file.state_dir)
            .unwrap_or(default_state);
        let trust_domain = flags
            .trust_domain
            .or(env("DPU_AGENT_TRUST_DOMAIN"))
            .or(file.trust_domain)
            .unwrap_or_else(|| dpu_api::identity::DEFAULT_TRUST_DOMAIN.to_string());
        if trust_domain.is_empty() || trust_domain.contains('/') {
            return Err(ConfigError::TrustDomain(trust_domain));
        }
        let log_format = match flags.log_format {
            Some(f) => f,
            None => match env("DPU_AGENT_LOG_FORMAT").as_deref() {
                Some("json") => LogFormat::Json,
                Some("text") => LogFormat::Text,
                Some(other) => return Err(ConfigError::LogFormat(other.to_string())),
                None => file.log_format.unwrap_or(LogFormat::Text),
            },
        };
        let log_level = flags
            .log_level
            .or(env("DPU_AGENT_LOG_LEVEL"))
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_string());
        let resync = Duration::from_secs(
            env_parse::<u64>(env, "DPU_AGENT_RESYNC_SECONDS")?
                .or(file.resync_seconds)
                .unwrap_or(30)
                .max(1),
        );
        let host_lease_seconds = env_parse::<u64>(env, "DPU_AGENT_HOST_LEASE_SECONDS")?
            .or(file.host_lease_seconds)
            .unwrap_or(DEFAULT_HOST_LEASE_SECONDS);
        if host_lease_seconds == 0 {
            return Err(ConfigError::HostLeaseZero);
        }
        let host_lease = Duration::from_secs(host_lease_seconds);
        // In dev mode the PKI lives in the state directory; in production
        // it is provisioned under /etc/dpu-agent/pki.
        let pki = match mode {
            Mode::Dev => state_dir.join("pki"),
            Mode::Run => PathBuf::from("/etc/dpu-agent/pki"),
        };
        // Environment, else file, else the file named `default` in `pki`.
        let pki_file = |var: &str, from_file: Option<PathBuf>, default: &str| {
            env(var)
                .map(PathBuf::from)
                .or(from_file)
                .unwrap_or_else(|| pki.join(default))
        };
        let tls = TlsFiles {
            cert: pki_file("DPU_AGENT_TLS_CERT", file.tls.cert, "server.pem"),
            key: pki_file("DPU_AGENT_TLS_KEY", file.tls.key, "server-key.pem"),
            client_ca: pki_file("DPU_AGENT_TLS_CLIENT_CA", file.tls.client_ca, "ca.pem"),
        };
        let default_db = match mode {
            Mode::Dev => format!("unix:{}", state_dir.join("ovs/db.sock").display()),
            Mode::Run => "unix:/var/run/openvswitch/db.sock".to_string(),
        };
        let ovs = OvsConfig {
            db: env("DPU_AGENT_OVS_DB")
                .or(file.ovs.db)
                .unwrap_or(default_db),
            bridge: file.ovs.bridge.unwrap_or_else(|| "br-int".to_string()),
            datapath_type: env("DPU_AGENT_OVS_DATAPATH_TYPE")
                .or(file.ovs.datapath_type)
                .unwrap_or_else(|| match mode {
                    Mode::Dev => "netdev".to_string(),
                    Mode::Run => "system".to_string(),
                }),
            hw_offload: file.ovs.hw_offload.unwrap_or(mode == Mode::Run),
        };
        let functions_backend = env_parse::<FunctionsBackend>(env, "DPU_AGENT_FUNCTIONS_BACKEND")?
            .or(file.functions_backend)
            .unwrap_or(match mode {
                Mode::Dev => FunctionsBackend::Veth,
                Mode::Run => FunctionsBackend::Switchdev,
            });
        let eswitch_switchdev = file.eswitch_switchdev.unwrap_or(false);
        // Dev mode defaults to no storage backend: the sandbox kernel has no
        // nvmet and there is no SPDK, so volumes stay Pending, saying why.
        let storage = StorageConfig {
            backend: env_parse::<StorageBackend>(env, "DPU_AGENT_STORAGE_BACKEND")?
                .or(file.storage.backend)
                .unwrap_or(match mode {
                    Mode::Dev => StorageBackend::None,
                    Mode::Run => StorageBackend::Spdk,
                }),
            spdk_socket: file
                .storage
                .spdk_socket
                .unwrap_or_else(|| PathBuf::from("/var/tmp/spdk.sock")),
            spdk_flavor: file.storage.spdk_flavor.unwrap_or(SpdkFlavor::Snap),
            nvmet_configfs: file
                .storage
                .nvmet_configfs
                .unwrap_or_else(|| PathBuf::from("/sys/kernel/config/nvmet")),
            nvmet_listen: file
                .storage
                .nvmet_listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4420))),
            nvmet_port_id: file.storage.nvmet_port_id.unwrap_or(4420),
            nvmet_volume_ports: env_parse::<u16>(env, "DPU_AGENT_NVMET_VOLUME_PORTS")?
                .or(file.storage.nvmet_volume_ports)
                .unwrap_or(0),
            backing_dir: file
                .storage
                .backing_dir
                .unwrap_or_else(|| state_dir.join("volumes")),
            qos_cgroup: file.storage.qos_cgroup,
            host_nqn: file.storage.host_nqn,
        };
        Ok(Config {
            mode,
            listen,
            insecure_listen,
            state_dir,
            trust_domain,
            tls,
            log_format,
            log_level,
            resync,
            host_lease,
            ovs,
            ipsec_uplink: env("DPU_AGENT_IPSEC_UPLINK")
                .or(file.ipsec.uplink)
                .filter(|u| !u.is_empty()),
            functions_backend,
            eswitch_switchdev,
            storage,
            switch_netns: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::env_of;

    /// Resolves `file` in `mode` with only the variables `env` set and no
    /// flags.
    fn resolve(mode: Mode, file: FileConfig, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::resolve(mode, file, &env_of(env), Flags::default())
    }

    /// Parses `text` as a config file.
    fn file_config(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let c = resolve(Mode::Run, FileConfig::default(), &[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(c.trust_domain, "dpu.local");

        let file = file_config("listen = \"127.0.0.1:1000\"\ntrust_domain = \"file.td\"");
        let c = resolve(Mode::Run, file.clone(), &[]).unwrap();
        assert_eq!(c.listen.port(), 1000);
        assert_eq!(c.trust_domain, "file.td");

        let env = &[("DPU_AGENT_LISTEN", "127.0.0.1:2000")];
        let c = resolve(Mode::Run, file.clone(), env).unwrap();
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.trust_domain, "file.td");

        let flags = Flags {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..Flags::default()
        };
        let c = Config::resolve(Mode::Run, file, &env_of(env), flags).unwrap();
        assert_eq!(c.listen.port(), 3000);
    }

    #[test]
    fn bad_values_are_named() {
        let env = &[("DPU_AGENT_LISTEN", "nope")];
        let err = resolve(Mode::Run, FileConfig::default(), env).unwrap_err();
        assert!(err.to_string().contains("DPU_AGENT_LISTEN"), "{err}");
        // The cause is the parser's typed error, printed after it.
        assert_eq!(
            crate::error_chain(&err),
            "DPU_AGENT_LISTEN=\"nope\" is invalid: invalid socket address syntax"
        );
        let env = &[("DPU_AGENT_FUNCTIONS_BACKEND", "vf")];
        let err = resolve(Mode::Run, FileConfig::default(), env).unwrap_err();
        let text = crate::error_chain(&err);
        assert!(
            text.starts_with("DPU_AGENT_FUNCTIONS_BACKEND=\"vf\" is invalid: unknown variant `vf`"),
            "{text}"
        );
        let env = &[("DPU_AGENT_LOG_FORMAT", "xml")];
        let err = resolve(Mode::Run, FileConfig::default(), env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DPU_AGENT_LOG_FORMAT=\"xml\" is invalid: expected text or json"
        );
        let flags = Flags {
            insecure_listen: Some("0.0.0.0:80".parse().unwrap()),
            ..Flags::default()
        };
        let err =
            Config::resolve(Mode::Run, FileConfig::default(), &env_of(&[]), flags).unwrap_err();
        assert!(
            matches!(err, ConfigError::InsecureListen(crate::server::NotLoopback { addr }) if addr.port() == 80),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "--insecure-listen 0.0.0.0:80 is not a loopback address; plain HTTP is only allowed on 127.0.0.0/8 or ::1"
        );
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
    }

    #[test]
    fn host_lease_defaults_to_90_s_and_is_configurable() {
        let c = resolve(Mode::Run, FileConfig::default(), &[]).unwrap();
        assert_eq!(c.host_lease, Duration::from_secs(90));
        let file = file_config("host_lease_seconds = 300");
        let c = resolve(Mode::Run, file.clone(), &[]).unwrap();
        assert_eq!(c.host_lease, Duration::from_secs(300));
        let env = &[("DPU_AGENT_HOST_LEASE_SECONDS", "45")];
        let c = resolve(Mode::Run, file.clone(), env).unwrap();
        assert_eq!(c.host_lease, Duration::from_secs(45));
        let zero = file_config("host_lease_seconds = 0");
        let err = resolve(Mode::Run, zero, &[]).unwrap_err();
        assert!(err.to_string().contains("host_lease_seconds"), "{err}");
        let bad = &[("DPU_AGENT_HOST_LEASE_SECONDS", "soon")];
        let err = resolve(Mode::Run, file, bad).unwrap_err();
        assert!(
            err.to_string().contains("DPU_AGENT_HOST_LEASE_SECONDS"),
            "{err}"
        );
        assert!(toml::from_str::<FileConfig>("host_lease_seconds = -1").is_err());
    }

    #[test]
    fn functions_backend_defaults_by_mode_and_is_overridable() {
        let run = resolve(Mode::Run, FileConfig::default(), &[]).unwrap();
        assert_eq!(run.functions_backend, FunctionsBackend::Switchdev);
        assert!(!run.eswitch_switchdev);
        assert_eq!(run.ipsec_uplink, None);
        let file = file_config("[ipsec]\nuplink = \"p0\"");
        let c = resolve(Mode::Run, file.clone(), &[]).unwrap();
        assert_eq!(c.ipsec_uplink.as_deref(), Some("p0"));
        let env = &[("DPU_AGENT_IPSEC_UPLINK", "p1")];
        let c = resolve(Mode::Run, file, env).unwrap();
        assert_eq!(c.ipsec_uplink.as_deref(), Some("p1"));
        let dev = resolve(Mode::Dev, FileConfig::default(), &[]).unwrap();
        assert_eq!(dev.functions_backend, FunctionsBackend::Veth);
        let file = file_config("functions_backend = \"none\"");
        let c = resolve(Mode::Run, file.clone(), &[]).unwrap();
        assert_eq!(c.functions_backend, FunctionsBackend::None);
        let env = &[("DPU_AGENT_FUNCTIONS_BACKEND", "veth")];
        let c = resolve(Mode::Run, file, env).unwrap();
        assert_eq!(c.functions_backend, FunctionsBackend::Veth);
        let bad = &[("DPU_AGENT_FUNCTIONS_BACKEND", "tap")];
        assert!(resolve(Mode::Run, FileConfig::default(), bad).is_err());
    }

    #[test]
    fn datapath_type_defaults_by_mode_and_the_environment_overrides_the_file() {
        let dev = resolve(Mode::Dev, FileConfig::default(), &[]).unwrap();
        assert_eq!(dev.ovs.datapath_type, "netdev");
        let run = resolve(Mode::Run, FileConfig::default(), &[]).unwrap();
        assert_eq!(run.ovs.datapath_type, "system");
        let env = &[("DPU_AGENT_OVS_DATAPATH_TYPE", "system")];
        let c = resolve(Mode::Dev, FileConfig::default(), env).unwrap();
        assert_eq!(c.ovs.datapath_type, "system");
        let file = file_config("[ovs]\ndatapath_type = \"netdev\"");
        assert_eq!(
            resolve(Mode::Run, file.clone(), &[])
                .unwrap()
                .ovs
                .datapath_type,
            "netdev"
        );
        let c = resolve(Mode::Run, file, env).unwrap();
        assert_eq!(c.ovs.datapath_type, "system");
    }

    #[test]
    fn storage_defaults_to_none_in_dev_and_is_overridable() {
        let dev = resolve(Mode::Dev, FileConfig::default(), &[]).unwrap();
        assert_eq!(dev.storage.backend, StorageBackend::None);
        let file = file_config("[storage]\nbackend = \"nvmet\"\nnvmet_listen = \"10.0.0.1:4421\"");
        let c = resolve(Mode::Dev, file.clone(), &[]).unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Nvmet);
        assert_eq!(c.storage.nvmet_listen.port(), 4421);
        let env = &[("DPU_AGENT_STORAGE_BACKEND", "none")];
        let c = resolve(Mode::Dev, file, env).unwrap();
        assert_eq!(c.storage.backend, StorageBackend::None);
        let bad = &[("DPU_AGENT_STORAGE_BACKEND", "ceph")];
        assert!(resolve(Mode::Dev, FileConfig::default(), bad).is_err());
        assert!(toml::from_str::<FileConfig>("[storage]\nbakend = \"none\"").is_err());
    }

    #[test]
    fn the_sample_config_parses() {
        let text = include_str!("../config.sample.toml");
        let file: FileConfig = toml::from_str(text).expect("config.sample.toml parses");
        resolve(Mode::Run, file, &[]).unwrap();
    }

    /// The BlueField profile resolves, with nothing from the environment,
    /// to the production path: switchdev functions, the kernel datapath
    /// with offload, IPsec offload on the uplink, SNAP.
    #[test]
    fn the_bluefield_profile_is_the_production_path() {
        let text = include_str!("../config.bluefield.toml");
        let file: FileConfig = toml::from_str(text).expect("config.bluefield.toml parses");
        let c = resolve(Mode::Run, file, &[]).unwrap();
        assert_eq!(c.functions_backend, FunctionsBackend::Switchdev);
        assert_eq!(c.ovs.datapath_type, "system");
        assert!(c.ovs.hw_offload);
        assert_eq!(c.ipsec_uplink.as_deref(), Some("p0"));
        assert_eq!(c.storage.backend, StorageBackend::Spdk);
        assert_eq!(c.storage.spdk_flavor, SpdkFlavor::Snap);
    }
}
