//! The daemon's configuration file (TOML), with defaults for everything but
//! the agent's address and credentials. Unknown keys are refused so that a
//! typo is an error, not a silently ignored setting. Precedence: defaults <
//! file < command-line flags (applied in `main`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cdi::{self, CdiOptions};
use crate::discover::DEFAULT_SYSFS_ROOT;
use crate::selectors::{self, Selector};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/dpu-host-stub";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    #[serde(default = "default_sysfs_root")]
    pub sysfs_root: PathBuf,
    /// Where vfio bindings (to undo after a restart) and `health.json` live.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub cdi: CdiConfig,
    /// Full rescan and assignment resync period, seconds.
    #[serde(default = "default_rescan")]
    pub rescan_interval_secs: u64,
    /// How long the agent may be unreachable before the exposed functions
    /// are marked unhealthy, seconds.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// Delay between reconnection attempts, seconds.
    #[serde(default = "default_retry")]
    pub retry_secs: u64,
    /// The kubelet device plugin.
    #[serde(default)]
    pub device_plugin: DevicePluginConfig,
    /// Which functions are the DPU's; BlueField defaults when absent.
    #[serde(default = "selectors::bluefield_defaults")]
    pub selectors: Vec<Selector>,
    /// The stub's own `/metrics` endpoint (off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback `ip:port` to serve `GET /metrics` on, e.g.
    /// `127.0.0.1:9464`; absent: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `https://<dpu>:9443`.
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdiConfig {
    #[serde(default = "default_cdi_dir")]
    pub dir: PathBuf,
    #[serde(default = "default_cdi_kind")]
    pub kind: String,
    /// Write `netDevices` (CDI 1.1.0) for netdev functions.
    #[serde(default = "default_true")]
    pub net_devices: bool,
    /// Absolute path of the `host-stub` binary, to add to RDMA functions'
    /// specs as the `createRuntime` hook moving their RDMA device into the
    /// container's network namespace (hosts in exclusive RDMA netns mode).
    #[serde(default)]
    pub rdma_netns_hook: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePluginConfig {
    /// Serve the kubelet device plugin (it idles while `dir` is absent).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The kubelet's device-plugins directory (holds `kubelet.sock`).
    #[serde(default = "default_plugin_dir")]
    pub dir: PathBuf,
    /// Resources are `<resource_domain>/<tenant>-<class>`.
    #[serde(default = "default_resource_domain")]
    pub resource_domain: String,
}

impl Default for DevicePluginConfig {
    fn default() -> Self {
        DevicePluginConfig {
            enabled: true,
            dir: default_plugin_dir(),
            resource_domain: default_resource_domain(),
        }
    }
}

fn default_plugin_dir() -> PathBuf {
    PathBuf::from(crate::deviceplugin::DEFAULT_DIR)
}
fn default_resource_domain() -> String {
    crate::deviceplugin::DEFAULT_DOMAIN.to_string()
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            dir: default_cdi_dir(),
            kind: default_cdi_kind(),
            net_devices: true,
            rdma_netns_hook: None,
        }
    }
}

impl CdiConfig {
    pub fn options(&self) -> CdiOptions {
        CdiOptions {
            kind: self.kind.clone(),
            net_devices: self.net_devices,
            rdma_netns_hook: self
                .rdma_netns_hook
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
        }
    }
}

fn default_sysfs_root() -> PathBuf {
    PathBuf::from(DEFAULT_SYSFS_ROOT)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_cdi_dir() -> PathBuf {
    PathBuf::from(cdi::DEFAULT_CDI_DIR)
}
fn default_cdi_kind() -> String {
    cdi::DEFAULT_KIND.to_string()
}
fn default_true() -> bool {
    true
}
fn default_rescan() -> u64 {
    30
}
fn default_lease() -> u64 {
    90
}
fn default_retry() -> u64 {
    5
}

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
    #[error("config file {path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |what: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if config.rescan_interval_secs == 0 || config.retry_secs == 0 {
            return Err(invalid(
                "rescan_interval_secs and retry_secs must be at least 1",
            ));
        }
        if config.lease_secs < config.rescan_interval_secs {
            return Err(invalid(
                "lease_secs must be at least rescan_interval_secs (the resync renews the lease)",
            ));
        }
        let domain = &config.device_plugin.resource_domain;
        if domain.is_empty()
            || domain.len() > 253
            || !domain
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(invalid(
                "device_plugin.resource_domain must be a DNS name like dpu.local",
            ));
        }
        if let Some(listen) = config.metrics.listen {
            crate::metrics::check_listen(listen).map_err(|e| invalid(&e.to_string()))?;
        }
        if let Some(hook) = &config.cdi.rdma_netns_hook
            && (!hook.is_absolute() || hook.to_str().is_none())
        {
            return Err(invalid(&format!(
                "cdi.rdma_netns_hook {} must be an absolute UTF-8 path (the host-stub binary)",
                hook.display()
            )));
        }
        if config.selectors.is_empty() {
            return Err(invalid(
                "selectors is empty: no function would be the DPU's",
            ));
        }
        Ok(config)
    }

    pub fn rescan_interval(&self) -> Duration {
        Duration::from_secs(self.rescan_interval_secs)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
    pub fn retry(&self) -> Duration {
        Duration::from_secs(self.retry_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[agent]
url = "https://dpu.local:9443"
ca = "/etc/dpu/ca.pem"
cert = "/etc/dpu/host-stub.pem"
key = "/etc/dpu/host-stub-key.pem"
"#;

    #[test]
    fn defaults() {
        let c = Config::parse(MINIMAL, Path::new("x.toml")).unwrap();
        assert_eq!(c.sysfs_root, Path::new("/sys"));
        assert_eq!(c.cdi.dir, Path::new("/var/run/cdi"));
        assert_eq!(c.cdi.kind, "dpu.local/function");
        assert!(c.cdi.net_devices);
        assert_eq!(c.selectors, selectors::bluefield_defaults());
        assert_eq!((c.rescan_interval_secs, c.lease_secs), (30, 90));
    }

    #[test]
    fn explicit_selectors_and_cdi() {
        // Top-level keys go before the first table.
        let text = format!(
            "lease_secs = 60\n{MINIMAL}\n[cdi]\nnet_devices = false\n\
             [[selectors]]\nvendors = [\"1b36\"]\ndevices = [\"0010\"]\n"
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert!(!c.cdi.net_devices);
        assert_eq!(c.selectors.len(), 1);
        assert_eq!(c.selectors[0].vendors, ["1b36"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let typo = format!("lease_sec = 5\n{MINIMAL}");
        assert!(matches!(
            Config::parse(&typo, Path::new("x.toml")),
            Err(ConfigError::Parse { .. })
        ));
        let open = format!("{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n");
        let err = Config::parse(&open, Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("metrics.listen"), "{err}");
        let hook = format!("{MINIMAL}\n[cdi]\nrdma_netns_hook = \"host-stub\"\n");
        let err = Config::parse(&hook, Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("cdi.rdma_netns_hook"), "{err}");
        let hook = format!("{MINIMAL}\n[cdi]\nrdma_netns_hook = \"/usr/bin/host-stub\"\n");
        let c = Config::parse(&hook, Path::new("x.toml")).unwrap();
        assert_eq!(
            c.cdi.options().rdma_netns_hook.as_deref(),
            Some("/usr/bin/host-stub")
        );
        let local = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n");
        let c = Config::parse(&local, Path::new("x.toml")).unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            Config::parse(MINIMAL, Path::new("x.toml"))
                .unwrap()
                .metrics
                .listen,
            None
        );
        let short = format!("lease_secs = 5\n{MINIMAL}");
        assert!(matches!(
            Config::parse(&short, Path::new("x.toml")),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
