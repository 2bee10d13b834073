//! A QEMU VM rig for kernel paths this sandbox's kernel lacks (ESP, kernel TLS,
//! nvmet, SR-IOV, VLAN, vfio, the openvswitch datapath).
//!
//! A test describes the VM with [`Vm::builder`]: emulated devices, kernel
//! modules to load, Debian packages and project binaries to copy in, and a
//! shell script. The rig boots Debian's stock amd64 kernel from a busybox
//! initramfs under `qemu-system-x86_64 -M q35`, runs the script with a
//! timeout and hands back its exit status, stdout, stderr and the files it
//! wrote to `$DPU_VM_OUT`, through a virtio-9p share.
//!
//! Guests can run concurrently and be joined by point-to-point links
//! ([`SocketLink`], QEMU socket netdevs on the host's loopback).
//!
//! Limits: the guest has no udev and no network beyond QEMU's user-mode
//! networking with `restrict=on` and socket links to other guests; drivers are loaded only when asked for
//! (directly or as a device's default). Packages come from the host's apt
//! lists (`tests/vm/setup.sh` sets them up); the rig never installs anything
//! on the host. See `tests/README.md`, section "VM rig".

mod apt;
mod builder;
mod initramfs;
mod kernel;
mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use builder::{LinkSide, RunningVm, SocketLink, Vm, VmBuilder, VmOutput};

/// The environment variable that turns the VM tests on.
pub const ENABLE_VAR: &str = "DPU_VM_TESTS";

/// Fails the calling test unless `DPU_VM_TESTS=1`.
///
/// VM tests boot QEMU under TCG and download Debian packages on first use,
/// so they are `#[ignore]`d: a plain `cargo test` reports them as ignored,
/// never as passed. `tests/vm/run.sh` (CI's VM stage) runs them with
/// `--ignored` and the variable set; asking for them (`--ignored`) without
/// the variable is an error that says what to do.
pub fn require() {
    assert!(
        std::env::var(ENABLE_VAR).is_ok_and(|v| v == "1"),
        "this VM test needs {ENABLE_VAR}=1 (and tests/vm/setup.sh run once); \
         tests/vm/run.sh sets both"
    );
}

/// Where the rig keeps downloaded and unpacked packages between runs:
/// `$DPU_VM_CACHE`, or `.cache/vm` at the workspace root (git-ignored).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DPU_VM_CACHE") {
        return PathBuf::from(dir);
    }
    workspace_root().join(".cache").join("vm")
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Path of a static x86-64 musl build of one of this crate's binaries
/// (`src/bin/NAME.rs`), as built by `tests/vm/run.sh`:
/// `cargo build -p dpu-tests --release --target x86_64-unknown-linux-musl --bin NAME`.
///
/// Looks in `$CARGO_TARGET_DIR` (or the target dir this test binary lives in),
/// release before debug.
pub fn musl_binary(name: &str) -> Result<PathBuf, VmError> {
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(dir));
    }
    // A test binary lives in TARGET/<profile>/deps/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(target) = exe.ancestors().nth(3)
    {
        roots.push(target.to_path_buf());
    }
    roots.push(workspace_root().join("target"));
    let mut tried = Vec::new();
    for root in roots {
        // Debug first: that is what tests/vm/run.sh builds.
        for profile in ["debug", "release"] {
            let path = root
                .join("x86_64-unknown-linux-musl")
                .join(profile)
                .join(name);
            if path.is_file() {
                return Ok(path);
            }
            tried.push(path);
        }
    }
    Err(VmError::BinaryMissing {
        name: name.to_string(),
        tried,
    })
}

/// The lines a guest script printed after its marker line `## NAME`, up
/// to the next line starting with `## ` (empty when the marker is absent).
/// The VM tests' scripts mark each part of their output this way.
pub fn section<'a>(stdout: &'a str, name: &str) -> &'a str {
    let header = format!("## {name}\n");
    let Some(start) = stdout.find(&header) else {
        return "";
    };
    let rest = &stdout[start + header.len()..];
    let end = if rest.starts_with("## ") {
        0
    } else {
        rest.find("\n## ").map_or(rest.len(), |i| i + 1)
    };
    &rest[..end]
}

/// Asserts that the `vf 0` line of `ip link show PF` (in `ip_link`) shows
/// the settings the igb tests give VF 0: MAC 02:00:00:00:00:01, VLAN 100,
/// 100 Mbit/s, spoof checking off, trust on. `out` is printed on failure.
pub fn assert_igb_vf0_configured(ip_link: &str, out: &dyn std::fmt::Display) {
    let vf0 = ip_link
        .lines()
        .find(|l| l.trim_start().starts_with("vf 0"))
        .unwrap_or("");
    for expected in [
        "link/ether 02:00:00:00:00:01",
        "vlan 100",
        "max_tx_rate 100Mbps",
        "spoof checking off",
        "trust on",
    ] {
        assert!(
            vf0.contains(expected),
            "missing {expected:?} in {vf0:?}\n{out}"
        );
    }
}

/// Every cached `netdevsim.ko` (built by `tests/vm/netdevsim.sh` under
/// `<VM cache>/netdevsim/<release>/`), as `(guest path, bytes)` with guest
/// path `/opt/netdevsim/<release>/netdevsim.ko`: the guest script picks the
/// one for its `uname -r`. Fails naming the script when none is cached.
pub fn netdevsim_modules() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = cache_dir().join("netdevsim");
    let context = |what: &Path, e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("{}: {e} (run tests/vm/netdevsim.sh)", what.display()),
        )
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| context(&dir, e))? {
        let entry = entry.map_err(|e| context(&dir, e))?;
        let ko = entry.path().join("netdevsim.ko");
        if ko.is_file() {
            let release = entry.file_name().to_string_lossy().into_owned();
            out.push((
                format!("/opt/netdevsim/{release}/netdevsim.ko"),
                std::fs::read(&ko).map_err(|e| context(&ko, e))?,
            ));
        }
    }
    if out.is_empty() {
        return Err(std::io::Error::other(format!(
            "no netdevsim.ko under {}: run tests/vm/netdevsim.sh",
            dir.display()
        )));
    }
    Ok(out)
}

/// Modules for the kernel datapath with the tc flow API: `openvswitch`
/// (conntrack included) and what OVS's tc offload asks the kernel for
/// (there is no udev; the kernel's own module requests need the modules
/// staged).
pub const KERNEL_DATAPATH_MODULES: [&str; 15] = [
    "openvswitch",
    "nf_conntrack_netlink",
    "sch_ingress",
    "cls_flower",
    "act_mirred",
    "act_gact",
    "act_ct",
    "act_vlan",
    "act_tunnel_key",
    "act_pedit",
    "act_csum",
    "act_skbedit",
    "act_police",
    "act_sample",
    "nf_flow_table",
];

/// The start of a guest script that runs Debian's Open vSwitch and the
/// static `dpu-agent run` driven by `dpuctl` (see
/// [`VmBuilder::fleet_agent`]): `set -e`, dpuctl's environment, and shell
/// functions: `start_ovs` (a fresh conf.db, ovsdb-server and ovs-vswitchd
/// on the kernel datapath's module, not before 11 s of uptime: see the
/// script), `start_agent [env ...]` (until the
/// API answers, else the log and exit 1; its pid in `$AGENT`),
/// `stop_agent` (SIGTERM and wait), `phase KIND ID` and `wait_phase KIND
/// ID PHASE...` (2 min at most; prints `phase KIND ID <phase>`).
pub const FLEET_AGENT_SHELL: &str = r###"set -e
export DPU_SERVER=https://localhost:9443 DPU_CA=/etc/dpuctl/ca.pem DPU_CERT=/etc/dpuctl/cert.pem DPU_KEY=/etc/dpuctl/key.pem
start_ovs() {
    mkdir -p /var/run/openvswitch /etc/openvswitch /var/log/openvswitch /var/lib/dpu-agent /run/netns
    ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
    ovsdb-server /etc/openvswitch/conf.db --remote=punix:/var/run/openvswitch/db.sock \
        --pidfile --detach --log-file
    ovs-vsctl --no-wait init
    # Open vSwitch 3.1.0 does not count the CPUs in the first 10 s after
    # boot (fixed upstream by b354cee2e, "ovs-thread: Fix cpus not read for
    # the first 10s", in 3.1.1): a kernel datapath made then gets 0 upcall
    # handlers, and it loses every upcall for good (`dpctl/show`: `lost`
    # equals `missed`). Our guests boot faster than that.
    while [ "$(cut -d. -f1 /proc/uptime)" -lt 11 ]; do sleep 0.2; done
    /usr/lib/openvswitch-switch/ovs-vswitchd --pidfile --detach --log-file
    ovs-vsctl --version | head -n 1
}
phase() { dpuctl get $1 $2 -o json 2>/dev/null | tr -d ' \n' | grep -o '"phase":"[A-Za-z]*"' | head -n 1 | cut -d'"' -f4; }
wait_phase() { # kind id phase...
    k=$1; id=$2; shift 2
    for i in $(seq 1 240); do
        p=$(phase $k $id)
        for w in "$@"; do [ "$p" = "$w" ] && break 2; done
        sleep 0.5
    done
    echo "phase $k $id $(phase $k $id)"
}
AGENT=
start_agent() { # [env ...]: dpu-agent run with /etc/dpu-agent/config.toml, until it answers
    "$@" dpu-agent run --config /etc/dpu-agent/config.toml >> /tmp/agent.log 2>&1 &
    AGENT=$!
    for i in $(seq 1 240); do
        dpuctl get tenant >/dev/null 2>&1 && return 0
        kill -0 $AGENT 2>/dev/null || break
        sleep 0.5
    done
    echo "agent not ready"; tail -n 40 /tmp/agent.log; exit 1
}
stop_agent() { kill -TERM $AGENT; wait $AGENT || echo "agent exit $?"; }
"###;

/// Shell functions for a guest script after [`FLEET_AGENT_SHELL`] that
/// compare the agent's port status with ovs-vswitchd's own datapath dump:
/// `count FILE REP` (the dump lines in `FILE` with `in_port(REP)`),
/// `report PORT FIELD` (a field of the port's status), and
/// `match_port_flows TC_REP ID:REP...`, which reads both, per port `ID` and
/// its representor `REP`, until one reading agrees (40 readings, 2 s apart:
/// the agent reads the datapath at each reconcile, every resync_seconds;
/// datapath flows come and go with the traffic) and there is a tc flow on
/// `TC_REP`; every reading is a line `MATCH` or `differ` followed by
/// `ID dump_all=N dump_offloaded=N dump_ovs=N dump_tc=N
/// agent_datapath_flows=N agent_offloaded_flows=N agent_offloaded=B;` per
/// port. The dumps stay in `/tmp/all`, `/tmp/off`, `/tmp/ovs` and `/tmp/tc`.
pub const PORT_FLOWS_SHELL: &str = r###"count() { grep -c "in_port($2)" $1 || true; }
report() { dpuctl get port $1 -o json | tr -d ' \n' | grep -o "\"$2\":[a-z0-9]*" | head -n 1 | cut -d: -f2; }
match_port_flows() { # TC_REP ID:REP...
    tc_rep=$1; shift
    for i in $(seq 1 40); do
        ovs-appctl dpctl/dump-flows -m --names > /tmp/all
        ovs-appctl dpctl/dump-flows -m --names type=offloaded > /tmp/off || true
        ovs-appctl dpctl/dump-flows -m --names type=ovs > /tmp/ovs || true
        ovs-appctl dpctl/dump-flows -m --names type=tc > /tmp/tc || true
        ok=1
        line=""
        [ "$(count /tmp/tc $tc_rep)" -gt 0 ] || ok=0
        for p in "$@"; do
            id=${p%:*}; rep=${p#*:}
            all=$(count /tmp/all $rep); off=$(count /tmp/off $rep)
            dp=$(report $id datapath_flows); of=$(report $id offloaded_flows); od=$(report $id offloaded)
            line="$line $id dump_all=$all dump_offloaded=$off dump_ovs=$(count /tmp/ovs $rep) dump_tc=$(count /tmp/tc $rep) agent_datapath_flows=$dp agent_offloaded_flows=$of agent_offloaded=$od;"
            # Every flow is in the kernel: the openvswitch module or tc.
            [ "$all" -gt 0 ] && [ "$all" = "$dp" ] && [ "$off" = "$of" ] \
                && [ $(( $(count /tmp/ovs $rep) + $(count /tmp/tc $rep) )) = "$all" ] || ok=0
        done
        if [ $ok = 1 ]; then echo "MATCH$line"; break; fi
        echo "differ$line"
        sleep 2
    done
}
"###;

/// [`musl_binary`] copied into `dir` without debug info: the debug builds
/// are ~200 MB each, which the guest's gzip-compressed initramfs would
/// carry (and TCG unpack) for nothing. Falls back to the original when
/// binutils' `strip` is not there.
pub fn stripped_musl_binary(name: &str, dir: &Path) -> Result<PathBuf, VmError> {
    let original = musl_binary(name)?;
    let copy = dir.join(name);
    let ok = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(&original)
        .status()
        .is_ok_and(|s| s.success());
    Ok(if ok { copy } else { original })
}

/// Everything that can stop a VM run. Messages say what to do; the cause, if
/// any, is in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "`{binary}` not found on PATH: run tests/vm/setup.sh (installs QEMU >= 8 from bookworm-backports)"
    )]
    QemuMissing { binary: String },
    #[error("{version} has no `{device}` device (needs QEMU >= 8): run tests/vm/setup.sh")]
    QemuLacksDevice { version: String, device: String },
    #[error(
        "apt has no installable package `{name}`: run tests/vm/setup.sh (apt-get update) or check the name"
    )]
    PackageNotFound { name: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {kernel} has no module `{module}` (neither loadable nor built in)")]
    ModuleNotFound { module: String, kernel: String },
    #[error("kernel package {package} holds no {what}")]
    KernelLayout { package: String, what: String },
    #[error(
        "static binary `{name}` not built; run `cargo build -p dpu-tests --release --target x86_64-unknown-linux-musl --bin {name}` (tried {tried:?})"
    )]
    BinaryMissing { name: String, tried: Vec<PathBuf> },
    #[error("{path}: {what}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid VM description: {0}")]
    Invalid(String),
    #[error("VM still running after {after:?}, killed; last console lines:\n{console_tail}")]
    Timeout {
        after: Duration,
        console_tail: String,
    },
    #[error("guest setup failed: {message}; last console lines:\n{console_tail}")]
    GuestSetup {
        message: String,
        console_tail: String,
    },
    #[error(
        "VM stopped ({qemu_status}) without reporting the script's result; last console lines:\n{console_tail}"
    )]
    NoResult {
        qemu_status: String,
        console_tail: String,
    },
}

impl VmError {
    fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| VmError::Io { what, path, source }
    }
}

/// The last `n` lines of a console log, for error messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::section;

    #[test]
    fn sections_end_at_the_next_marker_line() {
        let out = "boot\n## a\nx 1\ny ## not a marker\n## b\n## c\nz\n";
        assert_eq!(section(out, "a"), "x 1\ny ## not a marker\n");
        assert_eq!(section(out, "b"), "", "an empty part");
        assert_eq!(section(out, "c"), "z\n");
        assert_eq!(section(out, "d"), "", "no such marker");
    }
}
