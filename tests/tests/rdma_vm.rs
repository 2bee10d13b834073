//! RoCE between two host guests through a DPU guest's pipeline (issue 14
//! item 4, issue 13 item 3), on four QEMU guests started together:
//!
//! ```text
//!   host1 (10.9.0.1, tenant a) ──socket link── pf0vf0 ┐
//!   host2 (10.9.0.2, tenant a) ──socket link── pf0vf1 ├ DPU guest: OVS br-int on the
//!   host3 (10.9.0.3, tenant b) ──socket link── pf0vf2 ┘ kernel datapath + dpu-agent run
//! ```
//!
//! The DPU guest runs Debian's Open vSwitch (ovsdb-server + ovs-vswitchd on
//! the `openvswitch` module) and the static musl `dpu-agent` in `run` mode
//! (`datapath_type = "system"`, `hw_offload = true`, functions backend
//! `external`, mTLS with a fleet PKI made by the test), driven by `dpuctl`
//! inside the guest. Its NICs facing the hosts are named like BlueField
//! representors (`pf0vfN`), which is what the `external` backend expects.
//! Each host has `rdma_rxe` (Soft-RoCE) on its one NIC in its initial
//! network namespace: the layout shared/RIG.md §6 found to carry RoCE.
//! Guests are ordered by signals through their 9p shares
//! ([`dpu_tests::vm::RunningVm::signal`]).

use std::time::{Duration, Instant};

use dpu_tests::image::FleetPki;
use dpu_tests::vm::{self, LinkSide, RunningVm, SocketLink, Vm, section};

const HOST_MODULES: [&str; 5] = [
    "virtio_pci",
    "virtio_net",
    "rdma_rxe",
    "ib_uverbs",
    "rdma_ucm",
];

const HOST_PACKAGES: [&str; 5] = [
    "ibverbs-utils",
    "ibverbs-providers",
    "rdmacm-utils",
    "libibverbs1",
    "iperf3",
];

/// `ibv_rc_pingpong` arguments both ends use (they must agree).
const PINGPONG: &str = "-n 100 -s 4096";

/// After [`vm::FLEET_AGENT_SHELL`] and [`vm::PORT_FLOWS_SHELL`].
const DPU_SCRIPT: &str = r###"signal() { # wait for the test's signal $1 (or stop), at most $2 s
    for i in $(seq 1 $(( $2 * 2 ))); do
        [ -e /out/signals/$1 ] && return 0
        [ -e /out/signals/stop ] && { echo "stopped waiting for $1"; return 1; }
        sleep 0.5
    done
    echo "no signal $1 after $2 s"; return 1
}
echo '## ovs'
start_ovs
echo '## agent'
start_agent
dpuctl apply -f /etc/dpu-vm/objects.yaml
for o in function/f0 function/f1 function/f2 port/p0 port/p1 port/p2; do
    k=${o%/*}; id=${o#*/}
    wait_phase $k $id Ready
    [ "$(phase $k $id)" = Ready ] || { dpuctl get $k $id -o json >&2; tail -n 20 /tmp/agent.log >&2; }
done
echo "bridge $(ovs-vsctl get bridge br-int datapath_type) ports $(ovs-vsctl list-ports br-int | tr '\n' ' ')"
echo "other_config $(ovs-vsctl get Open_vSwitch . other_config)"
ovs-appctl dpctl/show | head -n 1
touch $DPU_VM_OUT/applied
signal norule 400
echo '## norule'
# Tenant a's ports without their UDP 4791 rule: RoCE v2 must stop at the
# security stage like any other traffic the rules do not allow. Established
# conntrack entries outlive a rule change (stateful groups), so the test
# flushes them to start the next RoCE connection from nothing.
dpuctl apply -f /etc/dpu-vm/norule.yaml
gen() { dpuctl get port $1 -o json 2>/dev/null | tr -d ' \n' | grep -o '"observed_generation":[0-9]*' | cut -d: -f2; }
for p in p0 p1; do
    for i in $(seq 1 120); do [ "$(gen $p)" = 2 ] && [ "$(phase port $p)" = Ready ] && break; sleep 0.5; done
    echo "port $p generation $(gen $p) $(phase port $p)"
done
ovs-appctl dpctl/flush-conntrack
touch $DPU_VM_OUT/norule-applied
signal check 400
echo '## flows'
# The agent's port status against ovs-vswitchd's own dump, per port, until
# one reading agrees. A software tc flow (host2's IPv6 drop) is part of the
# reading.
match_port_flows pf0vf1 p0:pf0vf0 p1:pf0vf1
echo '## dump'
cat /tmp/all
echo '## status'
dpuctl get port p0 -o json
dpuctl get function f0 -o json
echo '## tc'
# What OVS's tc flow API did (tests/README.md: flows that recirculate after
# conntrack cannot go to tc on Debian's kernel, no CONFIG_NET_TC_SKB_EXT).
grep -E 'Flow API|flow API|probe tc|recirc_id sharing' /var/log/openvswitch/ovs-vswitchd.log | head -n 12 || true
/usr/sbin/tc filter show dev pf0vf0 ingress | grep -c 'flower' | sed 's/^/tc flower filters on pf0vf0: /' || true
touch $DPU_VM_OUT/checked
signal stop 120
echo '## agent log'
tail -n 30 /tmp/agent.log
"###;

/// The host side of every guest: address, rxe device, RoCE v2 GID index.
fn host_prelude(ip: &str) -> String {
    format!(
        r#"IP=/usr/bin/ip
signal() {{ # wait for the test's signal $1 (or stop), at most $2 s
    for i in $(seq 1 $(( $2 * 2 ))); do
        [ -e /out/signals/$1 ] && return 0
        [ -e /out/signals/stop ] && {{ echo "stopped waiting for $1"; return 1; }}
        sleep 0.5
    done
    echo "no signal $1 after $2 s"; return 1
}}
stopped() {{ [ -e /out/signals/stop ]; }}
$IP addr add {ip}/24 dev fn
rdma link add rxe0 type rxe netdev fn
# The RoCE v2 GID of {ip} (::ffff:{ip}).
G=
for i in $(seq 1 40); do
    for f in /sys/class/infiniband/rxe0/ports/1/gids/*; do
        n=${{f##*/}}
        case "$(cat $f 2>/dev/null)" in *ffff:*)
            [ "$(cat /sys/class/infiniband/rxe0/ports/1/gid_attrs/types/$n 2>/dev/null)" = "RoCE v2" ] && G=$n ;;
        esac
    done
    [ -n "$G" ] && break
    sleep 0.5
done
echo "rxe0 on fn, RoCE v2 gid index $G: $(cat /sys/class/infiniband/rxe0/ports/1/gids/$G)"
rdma link show
# rxe's own packet counters (RoCE packets sent and received by rxe0).
roce() {{ cat /sys/class/infiniband/rxe0/ports/1/hw_counters/$1 2>/dev/null || echo 0; }}
"#
    )
}

fn host1_script() -> String {
    host_prelude("10.9.0.1")
        + &format!(
            r#"iperf3 -s -D
( while [ ! -e /out/signals/stop ]; do ibv_rc_pingpong -d rxe0 -g $G {PINGPONG} >> /tmp/server.log 2>&1; done ) &
signal stop 500
echo '## server'
cat /tmp/server.log
"#
        )
}

fn host2_script() -> String {
    host_prelude("10.9.0.2")
        + &format!(
            r#"echo '## ping'
# The DPU applies its objects while this guest boots: wait for the path.
for i in $(seq 1 240); do ping -c 1 -W 1 10.9.0.1 >/dev/null 2>&1 && break; stopped && exit 1; done
ping -c 3 -W 2 10.9.0.1 && echo PING_OK
touch $DPU_VM_OUT/pipeline-up
echo '## rdma'
S0=$(roce sent_pkts); R0=$(roce rcvd_pkts)
for i in 1 2 3 4 5; do
    if timeout 120 ibv_rc_pingpong -d rxe0 -g $G {PINGPONG} 10.9.0.1; then echo RDMA_OK; break; fi
    stopped && exit 1
    sleep 2
done
echo "roce sent=$(( $(roce sent_pkts) - S0 )) rcvd=$(( $(roce rcvd_pkts) - R0 ))"
echo '## tcp'
timeout 60 iperf3 -c 10.9.0.1 -t 5 -f m | tail -n 4
ping -c 10 -i 0.2 10.9.0.1 | tail -n 1
touch $DPU_VM_OUT/rdma-done
signal norule 400 || exit 1
echo '## norule'
# The DPU dropped tenant a's UDP 4791 rule: the pingpong's TCP exchange
# still crosses (rxe sends RoCE packets only after it: the QP needs the
# server's QPN and GID), its RoCE packets do not, so nothing comes back.
S0=$(roce sent_pkts); R0=$(roce rcvd_pkts)
if timeout 45 ibv_rc_pingpong -d rxe0 -g $G {PINGPONG} 10.9.0.1; then echo NORULE_RDMA_OK; else echo NORULE_RDMA_BLOCKED; fi
echo "roce sent=$(( $(roce sent_pkts) - S0 )) rcvd=$(( $(roce rcvd_pkts) - R0 ))"
ping -c 2 -W 2 10.9.0.1 > /dev/null && echo NORULE_PING_OK
touch $DPU_VM_OUT/done
# Steady traffic while the DPU compares its datapath with the agent's status:
# IPv4 (through conntrack, so its flows stay in the openvswitch module) and
# IPv6 to all link-local nodes (the pipeline drops it without conntrack, so
# OVS puts that drop flow in tc, in software).
ping -i 0.5 10.9.0.1 > /dev/null 2>&1 &
ping -6 -i 0.5 -I fn ff02::1 > /dev/null 2>&1 &
signal stop 500
"#
        )
}

fn host3_script() -> String {
    host_prelude("10.9.0.3")
        + &format!(
            r#"signal go 500 || exit 1
echo '## cross'
# Tenant b's function, on an overlapping 10.9.0.0/24, tries tenant a's host.
ping -c 3 -W 2 10.9.0.1 && echo CROSS_PING_OK || echo CROSS_PING_BLOCKED
if timeout 60 ibv_rc_pingpong -d rxe0 -g $G {PINGPONG} 10.9.0.1; then echo CROSS_RDMA_OK; else echo CROSS_RDMA_BLOCKED; fi
$IP neigh show 10.9.0.1
touch $DPU_VM_OUT/done
signal stop 500
"#
        )
}

/// Tenant a's two ports, allowing ICMP, TCP and `udp` (e.g. RoCE v2's 4791) in.
fn ports_a(links: &[SocketLink; 3], udp: &str) -> String {
    let mac = |i: usize| links[i].mac(LinkSide::Connect);
    let allowed = format!("security: {{ingress: [{{protocol: icmp}}, {{protocol: tcp}}{udp}]}}");
    format!(
        r#"  - {{kind: Port, id: p0, tenant: a, spec: {{network: na, function: f0, mac: "{m0}", ips: [10.9.0.1], {allowed}}}}}
  - {{kind: Port, id: p1, tenant: a, spec: {{network: na, function: f1, mac: "{m1}", ips: [10.9.0.2], {allowed}}}}}
"#,
        m0 = mac(0),
        m1 = mac(1),
    )
}

const ROCE_RULE: &str = r#", {protocol: udp, ports: "4791"}"#;

fn objects(links: &[SocketLink; 3]) -> String {
    let mac = |i: usize| links[i].mac(LinkSide::Connect);
    format!(
        r#"kind: Tenant
id: a
spec: {{grants: {{functions: {{pfs: [pf0], allow_rdma: true}}}}}}
---
kind: Tenant
id: b
spec: {{}}
---
objects:
  - {{kind: Network, id: na, tenant: a, spec: {{vni: 901, cidr: 10.9.0.0/24, encap: local}}}}
  - {{kind: Network, id: nb, tenant: b, spec: {{vni: 902, cidr: 10.9.0.0/24, encap: local}}}}
  - {{kind: Function, id: f0, tenant: a, spec: {{type: net, pf: pf0, vf: 0, mac: "{m0}", rdma: true}}}}
  - {{kind: Function, id: f1, tenant: a, spec: {{type: net, pf: pf0, vf: 1, mac: "{m1}", rdma: true}}}}
  - {{kind: Function, id: f2, tenant: b, spec: {{type: net, pf: pf0, vf: 2, mac: "{m2}"}}}}
{ports}  - {{kind: Port, id: p2, tenant: b, spec: {{network: nb, function: f2, mac: "{m2}", ips: [10.9.0.3], security: {{ingress: [{{protocol: icmp}}]}}}}}}
"#,
        m0 = mac(0),
        m1 = mac(1),
        m2 = mac(2),
        ports = ports_a(links, ROCE_RULE),
    )
}

const AGENT_CONFIG: &str = r#"listen = "127.0.0.1:9443"
state_dir = "/var/lib/dpu-agent"
trust_domain = "dpu.local"
log_level = "info"
resync_seconds = 3
functions_backend = "external"

[ovs]
db = "unix:/var/run/openvswitch/db.sock"
bridge = "br-int"
datapath_type = "system"
hw_offload = true

[storage]
backend = "none"
"#;

/// Waits until `vm` wrote `file`; `false` if a guest stopped or time ran out.
fn wait_file(vms: &mut [RunningVm], who: usize, file: &str, until: Instant) -> bool {
    loop {
        if vms[who].out_file(file).is_some() {
            return true;
        }
        if Instant::now() >= until || vms.iter_mut().any(|v| !v.is_running()) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// TENANCY.md invariant 1 (a tenant's traffic reaches only its own
/// networks) for RoCE: two RDMA functions of tenant a, each a host guest
/// with Soft-RoCE on its NIC, pass `ibv_rc_pingpong` (100 RC round trips of
/// 4 KiB) through the DPU guest's OVS pipeline on the kernel datapath, as
/// programmed by the real agent in `run` mode with the `external` functions
/// backend; tenant b's function, on an overlapping 10.9.0.0/24, can neither
/// ping tenant a's host nor connect `ibv_rc_pingpong` to it, in the same
/// run. The security stage applies to RoCE as to any traffic: once tenant
/// a's ports lose their UDP 4791 ingress rule (and conntrack is flushed),
/// the same pingpong fails while ICMP still passes. Issue 13 item 3: the flows went through the kernel datapath
/// (`dpctl/dump-flows` lists them by representor) and each port's
/// `datapath_flows` / `offloaded_flows` in the agent's status equal what
/// `ovs-appctl dpctl/dump-flows` (all / `type=offloaded`) reports. Prints
/// a benchmark line (RDMA vs iperf3 TCP between the same guests), not
/// asserted.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn roce_between_tenant_functions_through_the_kernel_datapath() -> anyhow::Result<()> {
    vm::require();
    let bins = tempfile::tempdir()?;
    let pki = FleetPki::generate("dpu.local", &["localhost"]);
    let links = [SocketLink::new()?, SocketLink::new()?, SocketLink::new()?];
    let timeout = Duration::from_secs(420);

    let dpu = Vm::builder()
        .memory_mib(512)
        .socket_nic(links[0], LinkSide::Listen, "pf0vf0")
        .socket_nic(links[1], LinkSide::Listen, "pf0vf1")
        .socket_nic(links[2], LinkSide::Listen, "pf0vf2")
        .modules(&vm::KERNEL_DATAPATH_MODULES)
        .packages(&["openvswitch-switch", "openvswitch-common"])
        .fleet_agent(bins.path(), &pki, AGENT_CONFIG)?
        .file("/etc/dpu-vm/objects.yaml", objects(&links), 0o644)
        .file(
            "/etc/dpu-vm/norule.yaml",
            format!("objects:\n{}", ports_a(&links, "")),
            0o644,
        )
        .timeout(timeout)
        .script(&format!(
            "{}{}{DPU_SCRIPT}",
            vm::FLEET_AGENT_SHELL,
            vm::PORT_FLOWS_SHELL
        ))
        .start()?;
    let host = |i: usize, script: String| {
        Vm::builder()
            .memory_mib(384)
            .socket_nic(links[i], LinkSide::Connect, "fn")
            .modules(&HOST_MODULES)
            .packages(&HOST_PACKAGES)
            .timeout(timeout)
            .script(&script)
            .start()
    };
    let host1 = host(0, host1_script())?;
    let host2 = host(1, host2_script())?;
    let host3 = host(2, host3_script())?;

    // The steps across guests; any guest that stops early ends them.
    const DPU: usize = 0;
    const HOST2: usize = 2;
    const HOST3: usize = 3;
    let mut vms = [dpu, host1, host2, host3];
    let until = Instant::now() + timeout;
    let _ = wait_file(&mut vms, HOST2, "pipeline-up", until)
        && vms[HOST3].signal("go").is_ok()
        && wait_file(&mut vms, HOST2, "rdma-done", until)
        && vms[DPU].signal("norule").is_ok()
        && wait_file(&mut vms, DPU, "norule-applied", until)
        && vms[HOST2].signal("norule").is_ok()
        && wait_file(&mut vms, HOST2, "done", until)
        && wait_file(&mut vms, HOST3, "done", until)
        && vms[DPU].signal("check").is_ok()
        && wait_file(&mut vms, DPU, "checked", until);
    for vm in &vms {
        vm.signal("stop")?;
    }
    let [dpu, host1, host2, host3] = vms;
    let dpu = dpu.wait()?;
    let host1 = host1.wait()?;
    let host2 = host2.wait()?;
    let host3 = host3.wait()?;
    println!("=== dpu\n{dpu}\n=== host1\n{host1}\n=== host2\n{host2}\n=== host3\n{host3}");

    let applied = section(&dpu.stdout, "agent");
    for object in [
        "function f0",
        "function f1",
        "function f2",
        "port p0",
        "port p1",
        "port p2",
    ] {
        assert!(
            applied.contains(&format!("phase {object} Ready")),
            "{object} not Ready: {dpu}"
        );
    }
    assert!(
        applied.contains("bridge system"),
        "br-int not on the kernel datapath: {dpu}"
    );
    assert!(applied.contains("hw-offload=\"true\""), "{dpu}");
    assert!(
        applied.contains("system@ovs-system:"),
        "no kernel datapath: {dpu}"
    );

    assert!(
        host2.stdout.contains("PING_OK"),
        "same-tenant ping: {host2}"
    );
    let rdma = section(&host2.stdout, "rdma");
    assert!(rdma.contains("RDMA_OK"), "same-tenant RoCE: {host2}");
    assert!(rdma.contains("iters in"), "{host2}");

    assert!(
        section(&dpu.stdout, "norule").contains("port p1 generation 2 Ready"),
        "{dpu}"
    );
    let norule = section(&host2.stdout, "norule");
    assert!(
        norule.contains("NORULE_RDMA_BLOCKED"),
        "RoCE crossed without its rule: {host2}"
    );
    assert!(norule.contains("NORULE_PING_OK"), "{host2}");
    // rxe's counters: RoCE went both ways with the rule; without it host2
    // sent (so the TCP exchange had crossed) and nothing came back.
    let roce = |text: &str| -> Option<(u64, u64)> {
        let line = text.lines().find(|l| l.starts_with("roce sent="))?;
        let mut it = line
            .split_whitespace()
            .skip(1)
            .map(|w| w.split_once('=').and_then(|(_, v)| v.parse::<u64>().ok()));
        Some((it.next()??, it.next()??))
    };
    let with_rule = roce(section(&host2.stdout, "rdma"));
    assert!(
        with_rule.is_some_and(|(sent, rcvd)| sent > 0 && rcvd > 0),
        "{with_rule:?}: {host2}"
    );
    let without = roce(norule);
    assert!(
        without.is_some_and(|(sent, rcvd)| sent > 0 && rcvd == 0),
        "{without:?}: {host2}"
    );
    let cross = section(&host3.stdout, "cross");
    assert!(
        cross.contains("CROSS_PING_BLOCKED"),
        "cross-tenant ping answered: {host3}"
    );
    assert!(
        cross.contains("CROSS_RDMA_BLOCKED"),
        "cross-tenant RoCE connected: {host3}"
    );

    // f0 asks for RDMA on the `external` backend, which has no RoCE switch
    // and no host stub reports here: the agent says so rather than claim it.
    let status: String = section(&dpu.stdout, "status")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert!(
        status.contains(r#""rdma":{"enabled":false}"#) && status.contains("RdmaNotReported"),
        "f0's RDMA status: {status}"
    );

    let flows = section(&dpu.stdout, "flows");
    assert!(
        flows.lines().any(|l| l.starts_with("MATCH")),
        "agent status never matched dpctl/dump-flows: {dpu}"
    );
    let dump = section(&dpu.stdout, "dump");
    // Not in hardware: virtio-net has no tc offload, so OVS reports no
    // offloaded flow and the agent says so.
    let matched = flows.lines().find(|l| l.starts_with("MATCH")).unwrap_or("");
    assert!(
        matched.contains("p0 dump_all=") && !matched.contains("agent_offloaded=true"),
        "{matched}"
    );
    assert_eq!(matched.matches("dump_offloaded=0 ").count(), 2, "{matched}");
    // Issue 13 item 3: flows went through tc (software: no `offloaded:yes`),
    // and the agent counted them among the port's datapath flows.
    let p1 = matched.split("p1 dump_all").nth(1).unwrap_or("");
    assert!(
        !p1.is_empty() && !p1.contains("dump_tc=0 "),
        "no tc flow on pf0vf1: {matched}"
    );
    assert!(
        dump.lines()
            .any(|l| l.contains("in_port(pf0vf1)") && l.contains("dp:tc")),
        "{dpu}"
    );
    let dump = section(&dpu.stdout, "dump");
    assert!(
        dump.contains("in_port(pf0vf0)") && dump.contains("in_port(pf0vf1)"),
        "{dpu}"
    );

    // The benchmark line (printed, not asserted).
    let pick = |text: &str, needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let tcp = section(&host2.stdout, "tcp");
    println!(
        "BENCH rdma ibv_rc_pingpong {PINGPONG}: {} | {} || tcp iperf3: {} | ping {}",
        pick(rdma, "bytes in"),
        pick(rdma, "iters in"),
        pick(tcp, "receiver"),
        pick(tcp, "round-trip"),
    );
    Ok(())
}
