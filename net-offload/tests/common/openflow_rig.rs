//! A private Open vSwitch with one userspace bridge for the OpenFlow tests:
//! `net_offload::sandbox::OvsSandbox` in a fresh temporary directory, plus
//! `ovs-vsctl add-br` (a test-only witness tool). Dropping the rig stops both
//! daemons before the directory is removed, on every path including panics.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use net_offload::sandbox::{Netns, OvsSandbox, SandboxConfig, SandboxError};

pub const BRIDGE: &str = "br-int";

#[derive(Debug)]
pub struct Rig {
    // Field order matters: the sandbox is dropped (daemons stopped) before the directory.
    pub sandbox: OvsSandbox,
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// Starts ovsdb-server + ovs-vswitchd and creates `br-int` (datapath_type=netdev).
    /// Fails the test with a clear message when Open vSwitch is not installed.
    pub async fn start() -> Rig {
        // Short path: unix socket names are limited to ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("of")
            .tempdir_in("/tmp")
            .expect("tempdir");
        // A private network namespace: the userspace datapath's tap devices have
        // fixed names, so parallel sandboxes in one namespace would collide.
        let config = SandboxConfig {
            netns: Netns::Private,
            ..SandboxConfig::new(dir.path())
        };
        let sandbox = match OvsSandbox::start(config).await {
            Ok(s) => s,
            Err(e @ SandboxError::NotInstalled { .. }) => {
                panic!("Open vSwitch is required for this test and is missing: {e}")
            }
            Err(e) => panic!(
                "cannot start the OVS sandbox in {}: {e:?}",
                dir.path().display()
            ),
        };
        let rig = Rig { sandbox, dir };
        rig.vsctl(&[
            "add-br",
            BRIDGE,
            "--",
            "set",
            "bridge",
            BRIDGE,
            "datapath_type=netdev",
        ]);
        let mgmt = rig.mgmt();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mgmt.exists() {
            if Instant::now() > deadline {
                let listing: Vec<_> = std::fs::read_dir(rig.dir.path())
                    .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                let log = std::fs::read_to_string(rig.sandbox.dir().join("vswitchd.log"))
                    .unwrap_or_default();
                panic!(
                    "{} did not appear; dir has {listing:?}; vswitchd log:\n{log}",
                    mgmt.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rig
    }

    /// The bridge's OpenFlow management socket.
    pub fn mgmt(&self) -> PathBuf {
        self.sandbox.mgmt_socket(BRIDGE)
    }

    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.sandbox.db_socket().display());
        run(
            "ovs-vsctl",
            &[&[db.as_str(), "--timeout=20"], args].concat(),
        )
    }

    /// `ovs-ofctl -O OpenFlow14 --no-names CMD unix:MGMT ARGS...`
    pub fn ofctl(&self, cmd: &str, args: &[&str]) -> String {
        let target = format!("unix:{}", self.mgmt().display());
        run(
            "ovs-ofctl",
            &[
                &["-O", "OpenFlow14", "--no-names", cmd, target.as_str()],
                args,
            ]
            .concat(),
        )
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is Open vSwitch installed?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
