//! The kernel storage backend against Debian's kernel in the VM rig: a
//! "storage server" nvmet-tcp target on loopback with a file-backed namespace
//! (set up with shell), then `nvmet-probe` (storage_offload's `NvmetBackend`,
//! real configfs) attaches it as a source over NVMe/TCP and exports it as the
//! agent's subsystem that only one host NQN may connect to. The host side
//! connects with nvme-cli, writes a pattern and reads it back (sha256 of the
//! pattern, of the device read back, and of the server's backing file);
//! another host NQN is refused; delete leaves configfs as found. Gated by
//! `DPU_VM_TESTS=1`; see tests/README.md.

use dpu_tests::vm::{self, Vm, section};

/// Every script's start: `set -e`, `nvmet_server PORT`, the loopback
/// "storage server" both kinds of test start (a 64 MiB file-backed
/// namespace exported by nvmet-tcp on 127.0.0.1:PORT to any host; then
/// `/tmp/before` lists configfs, for the clean-up checks), and
/// `configfs_as_found` (prints `configfs as found` when configfs lists as
/// in `/tmp/before`, else the difference).
const SERVER: &str = r###"set -e
nvmet_server() {
    ip link set lo up
    mkdir -p /etc/nvme
    echo "## server"
    dd if=/dev/zero of=/tmp/server.img bs=1M count=0 seek=64 2>/dev/null
    mkdir $S/subsystems/$SRV
    echo 1 > $S/subsystems/$SRV/attr_allow_any_host
    mkdir $S/subsystems/$SRV/namespaces/1
    # The guest's /tmp is in RAM, which has no O_DIRECT: buffered file I/O.
    echo 1 > $S/subsystems/$SRV/namespaces/1/buffered_io
    echo /tmp/server.img > $S/subsystems/$SRV/namespaces/1/device_path
    echo 1 > $S/subsystems/$SRV/namespaces/1/enable
    mkdir $S/ports/1
    echo tcp > $S/ports/1/addr_trtype
    echo ipv4 > $S/ports/1/addr_adrfam
    echo 127.0.0.1 > $S/ports/1/addr_traddr
    echo $1 > $S/ports/1/addr_trsvcid
    ln -s $S/subsystems/$SRV $S/ports/1/subsystems/$SRV
    find $S | sort > /tmp/before
}
configfs_as_found() {
    find $S | sort > /tmp/after
    if diff /tmp/before /tmp/after; then echo "configfs as found"; fi
}
"###;

/// After [`SERVER`].
const SCRIPT: &str = r###"S=/sys/kernel/config/nvmet
SRV=nqn.2014-08.org.example:server
# The function host NQN the agent assigns by default (function f of tenant t).
HOST=nqn.2026-11.dev.dpu-agent:t:fn:f
OURS=nqn.2026-11.dev.dpu-agent:t:v
nvmet_server 4420
echo "## attach"
nvmet-probe attach 127.0.0.1 4420 $SRV 4421 $HOST
echo "namespace device_path $(cat $S/subsystems/$OURS/namespaces/1/device_path)"
echo "allow_any_host $(cat $S/subsystems/$OURS/attr_allow_any_host)"
echo "## intruder"
if nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $OURS --hostnqn nqn.2014-08.org.example:intruder 2>&1; then
    echo "intruder connected"
else
    echo "intruder refused"
fi
echo "## host"
nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $OURS --hostnqn $HOST
dev=
for i in 1 2 3 4 5 6 7 8 9 10; do
    for d in /sys/class/nvme-subsystem/* /sys/class/nvme/*; do
        [ -e "$d/subsysnqn" ] || continue
        [ "$(cat $d/subsysnqn)" = "$OURS" ] || continue
        b=$(ls $d | grep -E '^nvme[0-9]+(c[0-9]+)?n[0-9]+$' | grep -v c | head -n 1)
        [ -n "$b" ] && dev=$b
    done
    [ -n "$dev" ] && [ -b /dev/$dev ] && break
    sleep 0.5
done
echo "host device /dev/$dev"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
dd if=/tmp/pattern of=/dev/$dev bs=1M conv=fsync 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
echo "pattern $(sha256sum < /tmp/pattern | cut -d' ' -f1)"
echo "readback $(dd if=/dev/$dev bs=1M count=8 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "server $(head -c 8388608 /tmp/server.img | sha256sum | cut -d' ' -f1)"
nvme disconnect -n $OURS
echo "## delete"
nvmet-probe delete 4421
configfs_as_found
left=0
for d in /sys/class/nvme/*; do
    [ -e "$d/subsysnqn" ] && [ "$(cat $d/subsysnqn)" = "$SRV" ] && left=1
done
echo "initiator connections left $left"
"###;

fn value<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(' '))
}

/// An initiator controller as the guest's `initiators` helper prints it.
#[derive(Debug)]
struct Initiator {
    name: String,
    hostnqn: String,
    hostid: String,
    device: String,
}

fn initiators(text: &str) -> Vec<Initiator> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["initiator", name, hostnqn, hostid, device] => Some(Initiator {
                    name: name.to_string(),
                    hostnqn: hostnqn.to_string(),
                    hostid: hostid.to_string(),
                    device: device.to_string(),
                }),
                _ => None,
            }
        })
        .collect()
}

#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn kernel_backend_exports_a_remote_namespace_to_one_host() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .modules(&["nvmet", "nvmet_tcp", "nvme_tcp", "nvme_fabrics"])
        .packages(&["nvme-cli"])
        .binary(vm::musl_binary("nvmet-probe")?)
        .script(&format!("{SERVER}{SCRIPT}"))
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");

    let attach = section(&out.stdout, "attach");
    assert!(
        attach.contains("[attach-source] echo transport=tcp,traddr=127.0.0.1,trsvcid=4420"),
        "{out}"
    );
    assert!(attach.contains("converged"), "{out}");
    assert!(
        value(attach, "namespace device_path").is_some_and(|p| p.starts_with("/dev/nvme")),
        "{out}"
    );
    assert_eq!(value(attach, "allow_any_host"), Some("0"), "{out}");

    assert!(
        section(&out.stdout, "intruder").contains("intruder refused"),
        "{out}"
    );

    let host = section(&out.stdout, "host");
    let pattern = value(host, "pattern").expect("pattern checksum");
    assert_eq!(pattern.len(), 64, "{out}");
    assert_eq!(value(host, "readback"), Some(pattern), "{out}");
    assert_eq!(value(host, "server"), Some(pattern), "{out}");

    let delete = section(&out.stdout, "delete");
    assert!(delete.contains("converged"), "{out}");
    assert!(delete.contains("configfs as found"), "{out}");
    assert!(delete.contains("initiator connections left 0"), "{out}");
    Ok(())
}

/// The agent tests' guest setup: the loopback storage server on port 4430
/// and shell helpers (`start_agent`, `field`, `wait_phase`, ...).
const AGENT_COMMON: &str = r###"S=/sys/kernel/config/nvmet
SRV=nqn.2014-08.org.example:server
HOST=nqn.2026-11.dev.dpu-agent:t:fn:f
OURS=nqn.2026-11.dev.dpu-agent:t:v
export DPU_STATE_DIR=/tmp/agent
nvmet_server 4430

start_agent() {
    env DPU_AGENT_STORAGE_BACKEND=nvmet DPU_AGENT_FUNCTIONS_BACKEND=external $AGENT_ENV \
        dpu-agent dev --no-ovs --state-dir /tmp/agent --listen 127.0.0.1:9443 \
        --log-format json >> /tmp/agent.log 2>&1 &
    AGENT=$!
    for i in $(seq 1 240); do
        [ -e /tmp/agent/pki/admin.pem ] && dpuctl get tenant >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "agent not ready"; cat /tmp/agent.log; exit 1
}
field() { # KIND ID FIELD: the first "FIELD": value of the object's JSON
    dpuctl get $1 $2 -o json 2>/dev/null | tr -d ' \n' | grep -o "\"$3\":[^,}]*" | head -n 1 | cut -d: -f2- | tr -d '"'
}
wait_phase() { # ID PHASE
    for i in $(seq 1 600); do
        [ "$(field volume $1 phase)" = "$2" ] && return 0
        sleep 0.5
    done
    echo "volume $1 never $2"; dpuctl get volume $1 -o json; tail -n 40 /tmp/agent.log; exit 1
}
host_ctrl() { # the host's controller (nvmeN) connected to NQN $1 with host NQN $2
    for d in /sys/class/nvme/*; do
        [ "$(cat $d/subsysnqn)" = "$1" ] && [ "$(cat $d/hostnqn)" = "$2" ] && basename $d
    done
    return 0
}
host_device() { # sets $dev to the block device of the host's controller to $OURS (10 s at most), prints it
    dev=
    for i in $(seq 1 20); do
        H=$(host_ctrl $OURS $HOST)
        [ -n "$H" ] && dev=$(ls /sys/class/nvme/$H | grep -E '^nvme[0-9]+c[0-9]+n[0-9]+$|^nvme[0-9]+n[0-9]+$' | head -n 1)
        [ -n "$dev" ] && dev=$(echo $dev | sed -E 's/^(nvme[0-9]+)c[0-9]+(n[0-9]+)$/\1\2/')
        [ -n "$dev" ] && [ -b /dev/$dev ] && break
        dev=
        sleep 0.5
    done
    echo "host device /dev/$dev"
}
ctrls_of() { # controllers of subsystem NQN $1
    for d in /sys/class/nvme/*; do
        [ -e $d/subsysnqn ] && [ "$(cat $d/subsysnqn)" = "$1" ] && basename $d
    done
    return 0
}
T_INIT=nqn.2026-11.dev.dpu-agent:t:v:initiator
U_INIT=nqn.2026-11.dev.dpu-agent:u:w:initiator
U_OURS=nqn.2026-11.dev.dpu-agent:u:w
volume_yaml() { # TENANT FUNCTION VOLUME [QOS]: the tenant, its nvme function and its volume on the storage server; QOS: the qos part of the volume's spec
cat <<EOT
kind: Tenant
id: $1
spec: {}
---
objects:
  - {kind: Function, id: $2, tenant: $1, spec: {type: nvme, pf: pf0}}
  - kind: Volume
    id: $3
    tenant: $1
    spec: {function: $2, $4 source: {nvmeof: {transport: tcp, address: 127.0.0.1, port: 4430, subnqn: "$SRV"}}}
EOT
}
tenant_u() { # tenant u's volume w on the same storage server as t's v
volume_yaml u g w > /tmp/u.yaml
dpuctl apply -f /tmp/u.yaml >/dev/null
}
initiators() { # one line per controller to the storage server: NAME HOSTNQN HOSTID DEVICE
    for c in $(ctrls_of $SRV); do
        b=$(ls /sys/class/nvme/$c | grep -E '^nvme[0-9]+(c[0-9]+)?n[0-9]+$' | head -n 1 | sed -E 's/^(nvme[0-9]+)c[0-9]+(n[0-9]+)$/\1\2/')
        echo "initiator $c $(cat /sys/class/nvme/$c/hostnqn) $(cat /sys/class/nvme/$c/hostid) /dev/$b"
    done
}
delete_volume() { # ID
    dpuctl delete volume $1
    for i in $(seq 1 600); do
        dpuctl get volume $1 >/dev/null 2>&1 || return 0
        sleep 0.5
    done
    echo "volume $1 still there"
}
"###;

/// The real agent (static musl `dpu-agent dev`, storage backend `nvmet`)
/// inside the VM, driven over its API with `dpuctl` in the guest: a
/// loopback "storage server" (nvmet-tcp on 127.0.0.1:4430, file-backed
/// namespace set up with shell) becomes volume `t/v` of NVMe function `f`;
/// the agent attaches it, exports it on its own port (127.0.0.1:4420) to the
/// function's host NQN, and the "host" connects with nvme-cli and does I/O
/// (sha256 of the pattern, of the device read back, of the server's file).
/// Then: the agent is killed (SIGKILL) and started again while a reader
/// keeps doing direct I/O: the host's controller and the agent's initiator
/// controller stay the same, no new NVMe/TCP controller is created on either
/// target (dmesg), I/O continued without error. The volume is moved to an
/// unreachable target: the write is accepted, the volume turns `Degraded`
/// with the failing action in its reason, retried with growing backoff.
/// Delete leaves configfs as it was before the agent started.
///
/// TENANCY.md invariant 4 (with native multipath, the guest kernel's
/// default): tenant `u`'s volume on the same storage server is refused
/// (`SourceInUse`, naming nothing of `t`'s) rather than handed `t`'s
/// block device: the only initiator controller to the server stays `t`'s
/// (host NQN and the agent's host id marker in sysfs), and `u` gets no
/// subsystem. `agent_limits_...` below covers multipath off.
const AGENT_SCRIPT: &str = r###"
echo "## attach"
start_agent
volume_yaml t f v > /tmp/v.yaml
dpuctl apply -f /tmp/v.yaml
wait_phase v Ready
# The nvme function is the host's initiator identity: Ready with its export.
for i in $(seq 1 40); do [ "$(field function f phase)" = Ready ] && break; sleep 0.5; done
echo "function $(field function f phase)"
echo "backend $(field volume v backend)"
echo "allow_any_host $(cat $S/subsystems/$OURS/attr_allow_any_host)"
echo "namespace device_path $(cat $S/subsystems/$OURS/namespaces/1/device_path)"
echo "port $(cat $S/ports/4420/addr_traddr):$(cat $S/ports/4420/addr_trsvcid)"

echo "## host"
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $OURS --hostnqn $HOST
host_device
dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
dd if=/tmp/pattern of=/dev/$dev bs=1M conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
echo "pattern $(sha256sum < /tmp/pattern | cut -d' ' -f1)"
echo "readback $(dd if=/dev/$dev bs=1M count=8 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "server $(head -c 8388608 /tmp/server.img | sha256sum | cut -d' ' -f1)"

echo "## second tenant"
# Native multipath (Debian's default) would give u's connection the same
# block device as t's: u's volume is refused, never handed t's device.
echo "multipath $(cat /sys/module/nvme_core/parameters/multipath)"
tenant_u
for i in $(seq 1 600); do
    [ "$(field volume w reason)" = "SourceInUse" ] && break
    sleep 0.5
done
echo "phase $(field volume w phase)"
echo "reason $(field volume w reason)"
dpuctl get volume w -o json | tr -d '\n' | grep -o '"message": *"[^"]*"' | sed 's/^/condition /'
initiators
echo "u subsystem $([ -d $S/subsystems/$U_OURS ] && echo present || echo absent)"
delete_volume w

echo "## restart"
H1=$(host_ctrl $OURS $HOST)
I1=$(ctrls_of $SRV | tr '\n' ' ')
N1=$(dmesg | grep -c 'creating nvm controller' || true)
rm -f /tmp/stop /tmp/ioerr
( n=0; while [ ! -e /tmp/stop ]; do
    if dd if=/dev/$dev of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null; then n=$((n+1)); else echo err >> /tmp/ioerr; fi
  done; echo $n > /tmp/ioruns ) &
READER=$!
sleep 1
kill -9 $AGENT
wait $AGENT 2>/dev/null || true
echo "agent killed"
: > /tmp/agent.log
start_agent
for i in $(seq 1 240); do
    grep -q 'storage backend connected' /tmp/agent.log && break
    sleep 0.5
done
wait_phase v Ready
sleep 3
touch /tmp/stop
wait $READER || true
H2=$(host_ctrl $OURS $HOST)
I2=$(ctrls_of $SRV | tr '\n' ' ')
N2=$(dmesg | grep -c 'creating nvm controller' || true)
echo "host controller before $H1 after $H2 state $(cat /sys/class/nvme/$H2/state)"
echo "initiator before $I1 after $I2"
echo "controllers created before $N1 after $N2"
echo "reader runs $(cat /tmp/ioruns) errors $(cat /tmp/ioerr 2>/dev/null | wc -l)"
dd if=/dev/urandom of=/tmp/pattern2 bs=1M count=4 2>/dev/null
dd if=/tmp/pattern2 of=/dev/$dev bs=1M conv=fsync 2>/dev/null
echo "pattern2 $(sha256sum < /tmp/pattern2 | cut -d' ' -f1)"
echo "readback2 $(dd if=/dev/$dev bs=1M count=4 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
nvme disconnect -n $OURS

echo "## unreachable"
sed -i 's/port: 4430/port: 4499/' /tmp/v.yaml
if dpuctl apply -f /tmp/v.yaml; then echo "apply accepted"; fi
wait_phase v Degraded
sleep 4
echo "reason $(field volume v reason)"
dpuctl get volume v -o json | tr -d '\n' | grep -o '"message": *"[^"]*"' | sed 's/^/condition /'
grep 'reconcile failed' /tmp/agent.log | grep '"object":"volumes/v"' | grep -o '"retry_in_ms":[0-9]*' | cut -d: -f2 | tr '\n' ' ' | sed 's/^/retries /'
echo

echo "## delete"
delete_volume v
configfs_as_found
echo "initiator connections left $(ctrls_of $SRV | wc -l)"
kill $AGENT
"###;

/// Boots a guest with nvmet, the NVMe/TCP initiator and nvme-cli, the
/// static agent and dpuctl (without debug info), and runs
/// [`AGENT_COMMON`] then `script` (900 s at most); `extra` adds to the
/// guest. The run must succeed; its output is printed.
fn run_agent_guest(
    extra: impl FnOnce(vm::VmBuilder) -> vm::VmBuilder,
    script: &str,
) -> anyhow::Result<vm::VmOutput> {
    let bins = tempfile::tempdir()?;
    let builder = Vm::builder()
        .modules(&["nvmet", "nvmet_tcp", "nvme_tcp", "nvme_fabrics"])
        .packages(&["nvme-cli"])
        .binary(vm::stripped_musl_binary("dpu-agent", bins.path())?)
        .binary(vm::stripped_musl_binary("dpuctl", bins.path())?)
        .script(&format!("{SERVER}{AGENT_COMMON}{script}"))
        .timeout(std::time::Duration::from_secs(900));
    let out = extra(builder).run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    Ok(out)
}

#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn agent_exports_a_volume_survives_restart_and_cleans_up() -> anyhow::Result<()> {
    vm::require();
    let out = run_agent_guest(|b| b, AGENT_SCRIPT)?;

    let attach = section(&out.stdout, "attach");
    assert_eq!(value(attach, "backend"), Some("nvmet"), "{out}");
    // Issue 13 item 5: with kernel nvmet, the nvme function is Ready once
    // its volume's export exists (functions backend `external`: no VF
    // programming; the storage path owns the function).
    assert_eq!(value(attach, "function"), Some("Ready"), "{out}");
    assert_eq!(value(attach, "allow_any_host"), Some("0"), "{out}");
    assert!(
        value(attach, "namespace device_path").is_some_and(|p| p.starts_with("/dev/nvme")),
        "{out}"
    );
    assert_eq!(value(attach, "port"), Some("127.0.0.1:4420"), "{out}");

    let host = section(&out.stdout, "host");
    let pattern = value(host, "pattern").expect("pattern checksum");
    assert_eq!(pattern.len(), 64, "{out}");
    assert_eq!(value(host, "readback"), Some(pattern), "{out}");
    assert_eq!(value(host, "server"), Some(pattern), "{out}");

    let second = section(&out.stdout, "second tenant");
    assert_eq!(value(second, "multipath"), Some("Y"), "{out}");
    assert_eq!(value(second, "reason"), Some("SourceInUse"), "{out}");
    assert_eq!(value(second, "phase"), Some("Pending"), "{out}");
    let condition = value(second, "condition").unwrap_or_default();
    assert!(condition.contains("multipath"), "{out}");
    assert!(!condition.contains("nqn.2026-11.dev.dpu-agent:t:"), "{out}");
    let inits = initiators(second);
    assert_eq!(inits.len(), 1, "{out}");
    assert_eq!(
        inits[0].hostnqn, "nqn.2026-11.dev.dpu-agent:t:v:initiator",
        "{out}"
    );
    assert_eq!(
        inits[0].hostid,
        storage_offload::model::initiator_host_id(&inits[0].hostnqn),
        "{out}"
    );
    assert_eq!(value(second, "u subsystem"), Some("absent"), "{out}");
    assert!(!second.contains("still there"), "{out}");

    let restart = section(&out.stdout, "restart");
    let ctrl = value(restart, "host controller before").expect("host controller line");
    let words: Vec<&str> = ctrl.split_whitespace().collect();
    assert!(
        matches!(words.as_slice(), [a, "after", b, "state", "live"] if a == b && a.starts_with("nvme")),
        "{out}"
    );
    let init = value(restart, "initiator before").expect("initiator line");
    let (before, after) = init.split_once(" after ").expect("before/after");
    assert!(!before.trim().is_empty(), "{out}");
    assert_eq!(before.trim(), after.trim(), "{out}");
    let created = value(restart, "controllers created before").expect("dmesg counts");
    let (n1, n2) = created.split_once(" after ").expect("before/after");
    assert_eq!(n1, n2, "a controller was created during the restart: {out}");
    let reader = value(restart, "reader runs").expect("reader line");
    let (runs, errors) = reader.split_once(" errors ").expect("runs/errors");
    assert!(runs.parse::<u32>().is_ok_and(|n| n > 0), "{out}");
    assert_eq!(errors, "0", "{out}");
    let pattern2 = value(restart, "pattern2").expect("pattern2");
    assert_eq!(value(restart, "readback2"), Some(pattern2), "{out}");

    let unreachable = section(&out.stdout, "unreachable");
    assert!(unreachable.contains("apply accepted"), "{out}");
    assert_eq!(value(unreachable, "reason"), Some("BackendError"), "{out}");
    assert!(unreachable.contains("4499"), "{out}");
    let retries: Vec<u64> = value(unreachable, "retries")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(retries.len() >= 2, "{out}");
    assert!(retries.windows(2).all(|w| w[0] <= w[1]), "{out}");
    assert!(retries.last() > retries.first(), "{out}");

    let delete = section(&out.stdout, "delete");
    assert!(!delete.contains("volume v still there"), "{out}");
    assert!(delete.contains("configfs as found"), "{out}");
    assert!(delete.contains("initiator connections left 0"), "{out}");
    Ok(())
}

/// QoS through the kernel backend, with the real agent in the VM
/// (`DPU_AGENT_NVMET_VOLUME_PORTS=4`: each volume gets a port of its own and
/// `qos.max_mbps` is enforced by the agent's HTB class and u32 filter on the
/// port's interface, programmed over rtnetlink). The host reads the volume
/// with direct I/O: first without a limit (the baseline must be well above
/// the limits for the test to mean anything), then with `max_mbps: 8`, then
/// changed live to 16 on the same connection, then the limit is removed
/// (the agent's qdisc goes) and the volume deleted (configfs and `lo`'s
/// qdisc as found). `tc` (iproute2) is only the witness.
///
/// TENANCY.md invariant 4 (guest booted with `nvme_core.multipath=N`):
/// tenant `u`'s volume on the same storage server as `t`'s gets its own
/// NVMe/TCP controller (sysfs: its own host NQN and the agent's host id
/// marker) and its own block device, and each agent subsystem exports the
/// device of its own volume's controller; deleting `u`'s volume removes
/// only `u`'s controller, `t`'s host connection stays live.
const QOS_SCRIPT: &str = r###"
vol() { # $1: the qos part of the volume spec, or nothing
volume_yaml t f v "$1" > /tmp/v.yaml
dpuctl apply -f /tmp/v.yaml >/dev/null
}
measure() { # NAME MIB: MiB read with direct I/O and the guest's clock around it
    t0=$(cut -d' ' -f1 /proc/uptime)
    dd if=/dev/$dev of=/dev/null bs=1M count=$2 iflag=direct 2>/dev/null
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "rate $1 $2 $t0 $t1"
}
classes() { tc class show dev lo | tr '\n' ' '; }
wait_classes_change() { # OLD
    for i in $(seq 1 240); do
        [ "$(classes)" != "$1" ] && return 0
        sleep 0.5
    done
    echo "tc classes never changed"; tail -n 40 /tmp/agent.log; exit 1
}
AGENT_ENV=DPU_AGENT_NVMET_VOLUME_PORTS=4
tc qdisc show dev lo > /tmp/qdisc-before
echo "## attach"
start_agent
vol ""
wait_phase v Ready
EXPORT=$(field volume v export)
echo "export $EXPORT"
echo "shared port $([ -d $S/ports/4420 ] && echo present || echo absent)"
nvme connect -t tcp -a 127.0.0.1 -s ${EXPORT#*:} -n $OURS --hostnqn $HOST
host_device
H1=$(host_ctrl $OURS $HOST)
measure baseline 96

echo "## limited"
old=$(classes)
vol "qos: {max_mbps: 8},"
wait_classes_change "$old"
wait_phase v Ready
tc qdisc show dev lo
tc class show dev lo
tc filter show dev lo
measure limit8 32
old=$(classes)
vol "qos: {max_mbps: 16},"
wait_classes_change "$old"
tc class show dev lo
measure limit16 64
echo "host controller before $H1 after $(host_ctrl $OURS $HOST)"

echo "## second tenant"
# nvme_core.multipath=N (kernel command line): each connection has its own
# namespace block device, so u's volume gets its own connection and device.
echo "multipath $(cat /sys/module/nvme_core/parameters/multipath)"
tenant_u
wait_phase w Ready
initiators
echo "t device $(cat $S/subsystems/$OURS/namespaces/1/device_path)"
echo "u device $(cat $S/subsystems/$U_OURS/namespaces/1/device_path)"
echo "u export $(field volume w export)"
delete_volume w
echo "after delete"
initiators
echo "host controller $(cat /sys/class/nvme/$H1/state)"

echo "## unlimited"
vol ""
for i in $(seq 1 240); do
    tc qdisc show dev lo | grep -q htb || break
    sleep 0.5
done
if tc qdisc show dev lo | diff /tmp/qdisc-before -; then echo "qdisc as found"; fi

echo "## delete"
nvme disconnect -n $OURS
delete_volume v
configfs_as_found
kill $AGENT
"###;

/// MiB/s of a `rate NAME MIB T0 T1` line.
fn rate(out: &str, name: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["rate", n, mib, t0, t1] if *n == name => {
                let secs = t1.parse::<f64>().ok()? - t0.parse::<f64>().ok()?;
                Some(mib.parse::<f64>().ok()? / secs)
            }
            _ => None,
        }
    })
}

#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn agent_limits_a_volume_rate_with_traffic_shaping_and_changes_it_live() -> anyhow::Result<()> {
    vm::require();
    // HTB shaping, and one controller per connection (no multipath).
    let out = run_agent_guest(
        |b| {
            b.modules(&["sch_htb", "cls_u32"])
                .kernel_args("nvme_core.multipath=N")
        },
        QOS_SCRIPT,
    )?;

    let attach = section(&out.stdout, "attach");
    assert_eq!(value(attach, "export"), Some("127.0.0.1:4421"), "{out}");
    assert_eq!(value(attach, "shared port"), Some("absent"), "{out}");
    let baseline = rate(attach, "baseline").expect("baseline rate");

    let limited = section(&out.stdout, "limited");
    assert!(limited.contains("qdisc htb 4e56: root"), "{out}");
    assert!(limited.contains("class htb 4e56:1"), "{out}");
    let r8 = rate(limited, "limit8").expect("rate at 8 MiB/s");
    let r16 = rate(limited, "limit16").expect("rate at 16 MiB/s");
    println!("baseline {baseline:.1} MiB/s, limit 8 → {r8:.1} MiB/s, limit 16 → {r16:.1} MiB/s");
    assert!(
        baseline > 16.0 * 1.5,
        "unlimited reads ({baseline:.1} MiB/s) are too slow to show a 16 MiB/s limit"
    );
    assert!((r8 - 8.0).abs() <= 8.0 * 0.2, "limit 8: {r8:.1} MiB/s");
    assert!((r16 - 16.0).abs() <= 16.0 * 0.2, "limit 16: {r16:.1} MiB/s");
    let ctrl = value(limited, "host controller before").expect("controller line");
    let (a, b) = ctrl.split_once(" after ").expect("before/after");
    assert_eq!(a, b, "the host reconnected during the live change: {out}");

    let second = section(&out.stdout, "second tenant");
    assert_eq!(value(second, "multipath"), Some("N"), "{out}");
    let (both, after) = second.split_once("after delete").expect("after delete");
    let inits = initiators(both);
    let of = |nqn: &str| {
        inits
            .iter()
            .find(|i| i.hostnqn == nqn)
            .unwrap_or_else(|| panic!("no controller with host NQN {nqn}: {out}"))
    };
    let t = of("nqn.2026-11.dev.dpu-agent:t:v:initiator");
    let u = of("nqn.2026-11.dev.dpu-agent:u:w:initiator");
    assert_eq!(inits.len(), 2, "{out}");
    assert_ne!(t.name, u.name, "{out}");
    assert_ne!(t.device, u.device, "{out}");
    assert!(t.device.len() > "/dev/nvme".len(), "{out}");
    assert!(u.device.len() > "/dev/nvme".len(), "{out}");
    for i in [t, u] {
        assert_eq!(
            i.hostid,
            storage_offload::model::initiator_host_id(&i.hostnqn),
            "{out}"
        );
    }
    assert_eq!(value(both, "t device"), Some(t.device.as_str()), "{out}");
    assert_eq!(value(both, "u device"), Some(u.device.as_str()), "{out}");
    assert_eq!(value(both, "u export"), Some("127.0.0.1:4422"), "{out}");
    assert!(!second.contains("still there"), "{out}");
    let left = initiators(after);
    assert_eq!(left.len(), 1, "{out}");
    assert_eq!(left[0].name, t.name, "{out}");
    assert_eq!(value(after, "host controller"), Some("live"), "{out}");

    assert!(
        section(&out.stdout, "unlimited").contains("qdisc as found"),
        "{out}"
    );
    assert!(
        section(&out.stdout, "delete").contains("configfs as found"),
        "{out}"
    );
    Ok(())
}
