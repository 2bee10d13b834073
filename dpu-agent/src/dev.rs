//! `dpu-agent dev`: the embedded default of API.md. Generates the PKI in
//! `STATE_DIR/pki/`, starts a private Open vSwitch (ovsdb-server and
//! ovs-vswitchd, userspace datapath) in `STATE_DIR/ovs/` when the programs
//! are installed, and prints how to talk to the agent. Compiled only with
//! the crate's `dev` feature (on by default; the flashed image leaves it
//! out).
//!
//! The private switch outlives the agent, as a production switch does: an
//! agent that stops (SIGTERM) or dies (SIGKILL) leaves it running with its
//! flows, the next `dpu-agent dev` on the same state directory adopts it
//! (zero flow churn), and `dpu-agent dev --stop` stops it (with
//! `exit --cleanup`, so the userspace datapath's persistent tap devices go
//! too, and the switch's own namespace if it has one).
//!
//! One userspace switch fits in a network namespace (its tap device
//! `ovs-netdev` and the bridges' taps are global to it). The first dev agent
//! runs its ovs-vswitchd in the host's namespace; one started while another
//! ovs-vswitchd already runs there gets a namespace of its own,
//! `dpu-dev-<scope of the state directory>` (`/run/netns/`, made natively),
//! recorded in `STATE_DIR/ovs/netns`; it keeps it across restarts until
//! `--stop`, and the veth simulator makes its representors there.

use std::path::Path;
use std::time::Duration;

use dpu_pki::{DevPki, PkiError};
use net_offload::functions::naming;
use net_offload::sandbox::{self, Netns, OvsSandbox, SandboxConfig, SandboxError, Stopped};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot create the dev PKI")]
    Pki(#[from] PkiError),
    #[error("cannot start the private Open vSwitch")]
    Ovs(#[source] SandboxError),
}

/// What dev mode set up; dropping it stops the private Open vSwitch.
#[derive(Debug)]
pub struct DevBootstrap {
    pub pki: DevPki,
    pub ovs: Option<OvsSandbox>,
    /// Why there is no OVS, when there is none.
    pub ovs_note: Option<String>,
}

/// Sets up the PKI and, with `want_ovs`, the private Open vSwitch.
pub async fn bootstrap(cfg: &Config, want_ovs: bool) -> Result<DevBootstrap, DevError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let listen_ip = cfg.listen.ip().to_string();
    let mut names = vec!["localhost", "127.0.0.1", "::1", listen_ip.as_str()];
    if !host.is_empty() {
        names.push(host.as_str());
    }
    names.dedup();
    let pki = dpu_pki::ensure_dev_pki(&cfg.state_dir.join("pki"), &cfg.trust_domain, &names)?;
    let (ovs, ovs_note) = if want_ovs {
        // Named from the state directory, canonical so that relative and
        // absolute spellings of one directory agree.
        let state = std::fs::canonicalize(&cfg.state_dir).unwrap_or_else(|_| cfg.state_dir.clone());
        let mut config = SandboxConfig::new(cfg.state_dir.join("ovs"));
        config.netns = Netns::HostOrNamed(naming::dev_switch_netns(&state.to_string_lossy()));
        match OvsSandbox::start(config).await {
            Ok(s) => (Some(s), None),
            Err(SandboxError::NotInstalled { program }) => {
                let note = format!(
                    "{program} is not installed, so no private Open vSwitch runs; install it with `apt-get install openvswitch-switch` (the network backend needs it)"
                );
                tracing::warn!("{note}");
                (None, Some(note))
            }
            Err(e) => return Err(DevError::Ovs(e)),
        }
    } else {
        (None, Some("--no-ovs: no private Open vSwitch".to_string()))
    };
    Ok(DevBootstrap { pki, ovs, ovs_note })
}

/// `dpu-agent dev --stop`: stops the private switch of `state_dir` and
/// removes its own network namespace, if it has one.
pub async fn stop_switch(state_dir: &Path) -> Result<Stopped, DevError> {
    sandbox::stop_dir(&state_dir.join("ovs"), Duration::from_secs(20))
        .await
        .map_err(DevError::Ovs)
}

impl DevBootstrap {
    /// The named namespace the private switch runs in, when it is not the
    /// agent's (see the module doc).
    pub fn switch_netns(&self) -> Option<String> {
        self.ovs
            .as_ref()
            .and_then(|s| s.named_netns().map(str::to_string))
    }

    /// Lets the agent exit without stopping the private switch.
    pub fn leave_switch_running(self) {
        if let Some(ovs) = self.ovs {
            ovs.leave_running();
        }
    }

    /// What to print for the person who started dev mode.
    pub fn banner(&self, cfg: &Config) -> String {
        let ca = self.pki.ca();
        let (cert, key) = self.pki.admin();
        let url = format!("https://{}", cfg.listen);
        let default_dir = crate::config::default_dev_state_dir() == cfg.state_dir;
        let export = if default_dir {
            String::new()
        } else {
            format!("    export DPU_STATE_DIR={}\n", cfg.state_dir.display())
        };
        let server = if cfg.listen.to_string() == "127.0.0.1:9443" {
            String::new()
        } else {
            format!("    export DPU_SERVER={url}\n")
        };
        let ovs = match (&self.ovs, &self.ovs_note) {
            (Some(s), _) => format!(
                "private Open vSwitch in {} (OVSDB {}, bridge {}{}); it keeps running when the \
                 agent stops — `dpu-agent dev --stop` stops it",
                s.dir().display(),
                s.db_socket().display(),
                cfg.ovs.bridge,
                s.named_netns()
                    .map(|n| format!(", datapath in network namespace {n}"))
                    .unwrap_or_default()
            ),
            (None, Some(note)) => note.clone(),
            (None, None) => "no private Open vSwitch".to_string(),
        };
        format!(
            "dpu-agent dev: state in {state}\n  API {url} (mutual TLS), identities in {pki}\n  {ovs}\n\nTalk to it:\n    curl --cacert {ca} --cert {cert} --key {key} {url}/v1/tenants\n{export}{server}    dpuctl apply -f examples/demo-tenant.yaml\n    dpuctl get tenants\n",
            state = cfg.state_dir.display(),
            pki = self.pki.dir.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        )
    }
}
