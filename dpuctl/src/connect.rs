//! Where `dpuctl` connects and with which identity: flags, then the
//! environment (clap's `env`), then the files `dpu-agent dev` writes under
//! the state directory.

use std::path::{Path, PathBuf};

use clap::Args;
use dpu_api::client::{Client, ClientError};

// The doc comments are clap's help text: `<state-dir>` there is the
// placeholder notation of `--help`, not an HTML tag.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The agent's URL; http:// only for an agent started with
    /// --insecure-listen.
    #[arg(
        long,
        env = "DPU_SERVER",
        default_value = "https://127.0.0.1:9443",
        global = true
    )]
    pub server: String,
    /// CA certificate(s) to trust [default: <state-dir>/pki/ca.pem]
    #[arg(long, env = "DPU_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate [default: <state-dir>/pki/admin.pem]
    #[arg(long, env = "DPU_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key [default: <state-dir>/pki/admin-key.pem]
    #[arg(long, env = "DPU_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// The `dpu-agent dev` state directory [default:
    /// $HOME/.local/state/dpu-agent/dev]
    #[arg(long, env = "DPU_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

/// The files a client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ConnectArgs {
    /// Flags (or their environment variables) win; what is missing comes
    /// from `<state-dir>/pki/`.
    pub fn identity(&self, home: Option<&Path>) -> Identity {
        let pki = self
            .state_dir
            .clone()
            .unwrap_or_else(|| {
                home.unwrap_or(Path::new("/root"))
                    .join(".local/state/dpu-agent/dev")
            })
            .join("pki");
        Identity {
            ca: self.ca.clone().unwrap_or_else(|| pki.join("ca.pem")),
            cert: self.cert.clone().unwrap_or_else(|| pki.join("admin.pem")),
            key: self
                .key
                .clone()
                .unwrap_or_else(|| pki.join("admin-key.pem")),
        }
    }

    pub fn client(&self) -> Result<Client, ClientError> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let id = self.identity(home.as_deref());
        Client::from_files(&self.server, &id.ca, Some((&id.cert, &id.key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(state_dir: Option<&str>, cert: Option<&str>) -> ConnectArgs {
        ConnectArgs {
            server: "https://127.0.0.1:9443".into(),
            ca: None,
            cert: cert.map(PathBuf::from),
            key: None,
            state_dir: state_dir.map(PathBuf::from),
        }
    }

    #[test]
    fn files_default_to_the_dev_state_dir() {
        let id = args(None, None).identity(Some(Path::new("/home/op")));
        assert_eq!(
            id.ca,
            Path::new("/home/op/.local/state/dpu-agent/dev/pki/ca.pem")
        );
        let id = args(Some("/tmp/dev"), Some("/etc/me.pem")).identity(None);
        assert_eq!(id.ca, Path::new("/tmp/dev/pki/ca.pem"));
        assert_eq!(id.cert, Path::new("/etc/me.pem"));
        assert_eq!(id.key, Path::new("/tmp/dev/pki/admin-key.pem"));
    }
}
