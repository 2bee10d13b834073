//! IPsec programmed by `dpu_crypto` (through the `xfrm-probe` binary) in the
//! VM rig's stock Debian kernel, which has ESP: two namespaces joined by a
//! veth, one tunnel-mode tunnel each way. Gated by `DPU_VM_TESTS=1`; see
//! tests/README.md. One boot covers: traffic through ESP with SA counters
//! and ESP (no plaintext ICMP) seen on the veth by `xfrm-probe sniff`,
//! a wrong key stopping traffic (and its repair as drift), and a rekey under
//! a continuous ping followed by removal of the old SAs after the grace.
//!
//! Another boot (`tenant_scoped_esp_only_through_its_xfrm_interface`)
//! proves the tenant scoping of TENANCY.md invariant 2 with real ESP: SAs
//! and policies with `if_id` and selectors over everything leave the
//! underlay's traffic alone and carry exactly what enters the XFRM
//! interface with that id.
//!
//! A second boot (`ktls_handoff_through_the_proxy`) proves the TLS proxy's
//! kernel TLS hand-off: `ktls-probe proxy` runs `dpu_crypto::tls::TlsProxy`
//! with `ktls: auto` in front of an echo upstream and a rustls client through
//! it (TLS 1.3, then TLS 1.2); the kernel's `/proc/net/tls_stat` must count
//! both sessions in its software kTLS paths, the proxy must say
//! `ktls_active`, and 1 MiB must echo end to end each time.

use dpu_tests::vm::{self, Vm, section};

/// Namespaces `a` and `b` joined by the veth `va`–`vb` (192.168.50.1 and
/// .2/24), everything up: the underlay of every script below.
macro_rules! two_namespaces {
    () => {
        "ip netns add a
ip netns add b
ip link add va netns a type veth peer name vb netns b
ip -n a addr add 192.168.50.1/24 dev va
ip -n b addr add 192.168.50.2/24 dev vb
for n in a b; do ip -n $n link set lo up; done
ip -n a link set va up
ip -n b link set vb up
"
    };
}

/// The test keys (vectors, not secrets) `K1` and `K2`.
macro_rules! keys {
    () => {
        "K1=00112233445566778899aabbccddeeff01020304
K2=ffeeddccbbaa99887766554433221100a1a2a3a4
"
    };
}

const SCRIPT: &str = concat!(
    "set -e\n",
    keys!(),
    r#"K3=0f0e0d0c0b0a09080706050403020100b1b2b3b4
K4=1f1e1d1c1b1a19181716151413121110c1c2c3c4
BAD=deadbeefdeadbeefdeadbeefdeadbeefdeadbeef
"#,
    two_namespaces!(),
    r#"ip -n a addr add 10.0.1.1/32 dev lo
ip -n b addr add 10.0.2.1/32 dev lo
ip -n a route add 10.0.2.0/24 via 192.168.50.2 src 10.0.1.1
ip -n b route add 10.0.1.0/24 via 192.168.50.1 src 10.0.2.1
side_a() { xfrm-probe install /run/netns/a 192.168.50.1 192.168.50.2 10.0.1.0/24 10.0.2.0/24 "$@"; }
side_b() { xfrm-probe install /run/netns/b 192.168.50.2 192.168.50.1 10.0.2.0/24 10.0.1.0/24 "$@"; }
ping_b() { ip netns exec a ping -c "$1" -W 2 -I 10.0.1.1 10.0.2.1; }

echo '## install'
side_a 0x1001 0x2001 $K1 $K2
side_b 0x2001 0x1001 $K2 $K1
echo '## ping'
ip netns exec b xfrm-probe sniff vb 8 > /tmp/wire.out &
SNIFF=$!
sleep 2
ping_b 3 && echo PING_OK
wait $SNIFF || true
cat /tmp/wire.out
echo '## sas'
xfrm-probe sas /run/netns/a
ip -n a -s xfrm state | grep -E '^src|lifetime current|bytes' || true

echo '## wrongkey'
side_b 0x2001 0x1001 $BAD $K1
if ping_b 2; then echo WRONG_KEY_PASSED; else echo WRONG_KEY_STOPPED; fi
xfrm-probe sas /run/netns/b

echo '## repair'
side_b 0x2001 0x1001 $K2 $K1
ping_b 2 && echo REPAIR_OK

echo '## rekey'
ip netns exec a ping -c 40 -i 0.2 -W 2 -I 10.0.1.1 10.0.2.1 > /tmp/ping.out 2>&1 &
PING=$!
sleep 2
side_b 0x2002 0x1002 $K3 $K4
side_a 0x1002 0x2002 $K4 $K3
wait $PING || true
tail -3 /tmp/ping.out
sleep 3
side_a 0x1002 0x2002 $K4 $K3
side_b 0x2002 0x1002 $K3 $K4
echo '## after'
xfrm-probe sas /run/netns/a
ping_b 2 && echo AFTER_OK
"#
);

/// `packets=N` of the SA with `spi`.
fn sa_packets(text: &str, spi: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("sa ") && l.contains(&format!("spi={spi} ")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("packets="))?
        .parse()
        .ok()
}

#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn esp_tunnel_between_namespaces() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .modules(&["esp4", "xfrm_user", "veth"])
        .binary(vm::musl_binary("xfrm-probe")?)
        .script(SCRIPT)
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let install = section(&out.stdout, "install");
    assert!(install.contains("applied 5 failed 0"), "{out}");
    assert!(!install.contains("0011223344"), "key printed: {out}");

    let ping = section(&out.stdout, "ping");
    assert!(ping.contains("PING_OK"), "{out}");
    // On the wire, seen on b's veth by an AF_PACKET socket: the requests
    // arrive as ESP, the replies leave as ESP, no plaintext ICMP leaves.
    let wire = |k: &str| -> Option<u64> {
        ping.lines()
            .find(|l| l.starts_with("wire "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(k)))
            .and_then(|v| v.parse().ok())
    };
    assert!(wire("esp_in=").unwrap_or(0) >= 3, "no ESP arrived: {out}");
    assert!(wire("esp_out=").unwrap_or(0) >= 3, "no ESP left: {out}");
    assert_eq!(wire("icmp_out="), Some(0), "plaintext ICMP left: {out}");
    let sas = section(&out.stdout, "sas");
    assert!(
        sa_packets(sas, "0x00002001").unwrap_or(0) >= 3,
        "out SA: {out}"
    );
    assert!(
        sa_packets(sas, "0x00001001").unwrap_or(0) >= 3,
        "in SA: {out}"
    );

    let wrong = section(&out.stdout, "wrongkey");
    assert!(wrong.contains("drifted (key)"), "{out}");
    assert!(wrong.contains("WRONG_KEY_STOPPED"), "{out}");
    assert!(
        section(&out.stdout, "repair").contains("REPAIR_OK"),
        "{out}"
    );

    let rekey = section(&out.stdout, "rekey");
    let received: u64 = rekey
        .split(" packets received")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(received >= 39, "rekey lost more than one packet: {out}");
    assert!(rekey.contains("superseded"), "old SAs not removed: {out}");
    let after = section(&out.stdout, "after");
    assert!(
        after.contains("spi=0x00001002") && after.contains("spi=0x00002002"),
        "{out}"
    );
    assert!(
        !after.contains("spi=0x00001001") && !after.contains("spi=0x00002001"),
        "{out}"
    );
    assert!(after.contains("AFTER_OK"), "{out}");
    Ok(())
}

const SCOPED_SCRIPT: &str = concat!(
    "set -e\n",
    keys!(),
    two_namespaces!(),
    r#"ip -n a addr add 10.0.1.1/32 dev lo
ip -n b addr add 10.0.2.1/32 dev lo
ip -n b route add 10.0.1.0/24 via 192.168.50.1 src 10.0.2.1

echo '## install'
# a: a tenant's tunnel, scoped by if_id, with selectors over everything.
XFRM_PROBE_IF_ID=0x0d520001 xfrm-probe install /run/netns/a 192.168.50.1 192.168.50.2 0.0.0.0/0 0.0.0.0/0 0x1001 0x2001 $K1 $K2
# b: its unscoped peer.
xfrm-probe install /run/netns/b 192.168.50.2 192.168.50.1 10.0.2.0/24 10.0.1.0/24 0x2001 0x1001 $K2 $K1
echo "policies=$(ip -n a xfrm policy | grep -c '^src') scoped=$(ip -n a xfrm policy | grep -c 'if_id 0xd520001')"
echo "sas=$(ip -n a xfrm state | grep -c '^src') scoped=$(ip -n a xfrm state | grep -c 'if_id 0xd520001')"

echo '## underlay'
ip netns exec a ping -c 2 -W 2 192.168.50.2 && echo UNDERLAY_OK

echo '## interface'
ip -n a link add ipsec0 type xfrm dev va if_id 0x0d520001
ip -n a link set ipsec0 up
ip -n a route add 10.0.2.0/24 dev ipsec0 src 10.0.1.1
ip netns exec b xfrm-probe sniff vb 8 > /tmp/wire.out &
SNIFF=$!
sleep 2
ip netns exec a ping -c 3 -W 2 -I 10.0.1.1 10.0.2.1 && echo PING_OK
wait $SNIFF || true
cat /tmp/wire.out
xfrm-probe sas /run/netns/a
"#
);

/// TENANCY.md invariant 2 with ESP (the VM kernel has `esp4` and
/// `xfrm_interface`): a tenant-scoped tunnel (`if_id` on every SA and
/// policy, as the agent installs for `scope: tenant`) whose selectors cover
/// all traffic (0.0.0.0/0 both ways) does not touch the underlay — a ping
/// over the same veth answers in the clear — and still carries the
/// tenant's traffic that enters its XFRM interface: a ping routed through
/// `ipsec0` (if_id 0x0d520001) answers, leaves as ESP (seen on the peer's
/// veth by `xfrm-probe sniff`), and is counted on the scoped SAs.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn tenant_scoped_esp_only_through_its_xfrm_interface() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .modules(&["esp4", "xfrm_user", "veth", "xfrm_interface"])
        .binary(vm::musl_binary("xfrm-probe")?)
        .script(SCOPED_SCRIPT)
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let install = section(&out.stdout, "install");
    assert!(install.contains("policies=3 scoped=3"), "{out}");
    assert!(install.contains("sas=2 scoped=2"), "{out}");
    assert!(
        section(&out.stdout, "underlay").contains("UNDERLAY_OK"),
        "the scoped 0.0.0.0/0 policies caught the underlay: {out}"
    );
    let via = section(&out.stdout, "interface");
    assert!(via.contains("PING_OK"), "{out}");
    let wire = |k: &str| -> Option<u64> {
        via.lines()
            .find(|l| l.starts_with("wire "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(k)))
            .and_then(|v| v.parse().ok())
    };
    assert!(wire("esp_in=").unwrap_or(0) >= 3, "no ESP arrived: {out}");
    assert!(wire("esp_out=").unwrap_or(0) >= 3, "no ESP left: {out}");
    assert!(sa_packets(via, "0x00002001").unwrap_or(0) >= 3, "{out}");
    assert!(sa_packets(via, "0x00001001").unwrap_or(0) >= 3, "{out}");
    Ok(())
}

const AGENT_SCRIPT: &str = concat!(
    "set -e\nexport DPU_STATE_DIR=/tmp/agent\n",
    keys!(),
    r###"BAD=deadbeefdeadbeefdeadbeefdeadbeefdeadbeef
# The tunnel's counters as the agent read them from the kernel (status,
# refreshed at each reconcile, every 30 s; /metrics renders the same values)
# once `$1` matches, within 60 s.
counters() {
    for i in $(seq 1 120); do
        J=$(dpuctl get ipsec-tunnel tun -o json | tr -d ' \n')
        echo "$J" | grep -q "$1" && break
        sleep 0.5
    done
    echo "counters $(echo "$J" | grep -o '"[a-z_]*\(bytes\|packets\|drops\|failures\)[a-z_]*":[0-9]*' | tr -d '"' | tr ':' '=' | tr '\n' ' ')"
}
ip link set lo up
"###,
    two_namespaces!(),
    r###"ip -n b addr add 10.0.2.1/32 dev lo
ip -n b route add 10.0.1.0/24 via 192.168.50.1 src 10.0.2.1
# b: the unscoped peer.
xfrm-probe install /run/netns/b 192.168.50.2 192.168.50.1 10.0.2.0/24 10.0.1.0/24 0x2001 0x1001 $K2 $K1 >/dev/null

echo '## agent'
env DPU_AGENT_FUNCTIONS_BACKEND=none DPU_IPSEC_NETNS=/run/netns/a DPU_TENANT_NETNS_PREFIX=tn-     dpu-agent dev --no-ovs --state-dir /tmp/agent --listen 127.0.0.1:9443 >> /tmp/agent.log 2>&1 &
for i in $(seq 1 240); do
    [ -e /tmp/agent/pki/admin.pem ] && dpuctl get tenant >/dev/null 2>&1 && break
    sleep 0.5
done
cat > /tmp/t.yaml <<EOT
kind: Tenant
id: acme
spec: {}
---
objects:
  - {kind: Network, id: net, tenant: acme, spec: {vni: 100, cidr: 10.0.1.0/24, encap: vxlan}}
  - kind: IpsecTunnel
    id: tun
    tenant: acme
    spec: {local: 192.168.50.1, remote: 192.168.50.2, local_subnets: [10.0.1.0/24], remote_subnets: [10.0.2.0/24], mode: tunnel, cipher: aes-gcm-128, spi_in: 4097, spi_out: 8193, key_in: "$K1", key_out: "$K2", offload: none}
EOT
dpuctl apply -f /tmp/t.yaml
for i in $(seq 1 120); do
    ip netns exec tn-acme ip link show ipsec0 >/dev/null 2>&1 && break
    sleep 0.5
done
sleep 2
echo "xfrm_interface $(dpuctl get ipsec-tunnel tun -o json | tr -d '\n' | grep -o '"xfrm_interface": *"[^"]*"')"
echo "policies=$(ip -n a xfrm policy | grep -c '^src') scoped=$(ip -n a xfrm policy | grep -c 'if_id 0x')"
echo "sas=$(ip -n a xfrm state | grep -c '^src') scoped=$(ip -n a xfrm state | grep -c 'if_id 0x')"
ip -n tn-acme -d link show ipsec0
ip -n tn-acme route
counters '"packets_out":0'

echo '## traffic'
# The tenant's own address (its network is not plumbed into the namespace
# by the agent yet).
ip -n tn-acme addr add 10.0.1.1/32 dev lo
ip netns exec b xfrm-probe sniff vb 8 > /tmp/wire.out &
SNIFF=$!
sleep 2
ip netns exec tn-acme ping -c 3 -W 2 -I 10.0.1.1 10.0.2.1 && echo TENANT_PING_OK
wait $SNIFF || true
cat /tmp/wire.out
ip netns exec a ping -c 2 -W 2 192.168.50.2 && echo UNDERLAY_OK
xfrm-probe sas /run/netns/a

echo '## counters'
counters '"packets_in":[1-9]'

echo '## integrity'
# The peer's outbound SA is replaced by one with a wrong key. Its sequence
# numbers start again at 1: the first 3 replies are replays for the
# tunnel's inbound SA (dropped before decryption), the next ones fail its
# integrity check.
xfrm-probe install /run/netns/b 192.168.50.2 192.168.50.1 10.0.2.0/24 10.0.1.0/24 0x2001 0x1001 $K2 $BAD >/dev/null
ip netns exec tn-acme ping -c 6 -W 2 -I 10.0.1.1 10.0.2.1 || echo BAD_KEY_STOPPED
counters '"integrity_failures":[1-9]'

echo '## delete'
dpuctl delete ipsec-tunnel tun
for i in $(seq 1 120); do
    ip netns list | grep -q tn-acme || break
    sleep 0.5
done
ip netns list | grep -q tn-acme && echo "tenant namespace left" || echo "tenant namespace gone"
echo "policies left $(ip -n a xfrm policy | grep -c '^src' || true)"
"###
);

/// TENANCY.md invariant 2 end to end, with the real agent (static musl
/// `dpu-agent dev`, XFRM database in namespace `a` via `DPU_IPSEC_NETNS`)
/// in the VM kernel (ESP, xfrm interfaces): a tenant's tunnel, applied with
/// `dpuctl`, gets `if_id` on both SAs and all three policies, and the agent
/// makes the tenant's XFRM interface (`ipsec0`, created in `a` and moved
/// into `tn-acme`) with a route to the remote subnet. A ping from the
/// tenant's namespace crosses as ESP (seen on the peer's veth) and is
/// answered; the underlay's own ping is untouched. Deleting the tunnel
/// removes its state and the tenant namespace (with the interface).
///
/// The per-tunnel counters behind `dpu_agent_ipsec_*` (issue 18), as the
/// agent reads them from the kernel (XFRM dump: `XFRMA_LTIME_CUR` and
/// `xfrm_stats`) into the tunnel's status, start at 0, grow with the ESP
/// traffic (packets and bytes both ways), and, once the peer's SA is
/// replaced by one with a wrong key (its sequence numbers restarting),
/// count replayed packets and then integrity failures.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn agent_tenant_tunnel_carries_traffic_only_through_its_xfrm_interface() -> anyhow::Result<()> {
    vm::require();
    let bins = tempfile::tempdir()?;
    let strip = |name: &str| vm::stripped_musl_binary(name, bins.path());
    let out = Vm::builder()
        .modules(&["esp4", "xfrm_user", "veth", "xfrm_interface"])
        .binary(strip("xfrm-probe")?)
        .binary(strip("dpu-agent")?)
        .binary(strip("dpuctl")?)
        .script(AGENT_SCRIPT)
        .timeout(std::time::Duration::from_secs(600))
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let agent = section(&out.stdout, "agent");
    assert!(agent.contains("\"ipsec0 in tn-acme\""), "{out}");
    assert!(agent.contains("policies=3 scoped=3"), "{out}");
    assert!(agent.contains("sas=2 scoped=2"), "{out}");
    assert!(agent.contains("10.0.2.0/24 dev ipsec0"), "{out}");
    let traffic = section(&out.stdout, "traffic");
    assert!(traffic.contains("TENANT_PING_OK"), "{out}");
    assert!(traffic.contains("UNDERLAY_OK"), "{out}");
    let wire = |k: &str| -> Option<u64> {
        traffic
            .lines()
            .find(|l| l.starts_with("wire "))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix(k)))
            .and_then(|v| v.parse().ok())
    };
    assert!(wire("esp_in=").unwrap_or(0) >= 3, "no ESP arrived: {out}");
    assert!(wire("esp_out=").unwrap_or(0) >= 3, "no ESP left: {out}");
    assert!(sa_packets(traffic, "0x00002001").unwrap_or(0) >= 3, "{out}");
    // `counters k=v ...` of a section.
    let counter = |sec: &str, k: &str| -> Option<u64> {
        section(&out.stdout, sec)
            .lines()
            .find(|l| l.starts_with("counters "))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))?
            .parse()
            .ok()
    };
    for k in ["packets_in", "packets_out", "bytes_in", "bytes_out"] {
        assert_eq!(counter("agent", k), Some(0), "{k} before traffic: {out}");
    }
    assert!(counter("counters", "packets_in").unwrap_or(0) >= 3, "{out}");
    assert!(
        counter("counters", "packets_out").unwrap_or(0) >= 3,
        "{out}"
    );
    // ESP payload of 3 pings of 84-byte IPv4 packets each way.
    assert!(
        counter("counters", "bytes_in").unwrap_or(0) >= 3 * 84,
        "{out}"
    );
    assert!(
        counter("counters", "bytes_out").unwrap_or(0) >= 3 * 84,
        "{out}"
    );
    assert_eq!(counter("counters", "integrity_failures"), Some(0), "{out}");
    assert_eq!(counter("counters", "replay_drops"), Some(0), "{out}");
    let integrity = section(&out.stdout, "integrity");
    assert!(integrity.contains("BAD_KEY_STOPPED"), "{out}");
    assert!(
        counter("integrity", "replay_drops").unwrap_or(0) >= 3,
        "{out}"
    );
    assert!(
        counter("integrity", "integrity_failures").unwrap_or(0) >= 1,
        "{out}"
    );
    assert_eq!(counter("integrity", "packets_in"), Some(3), "{out}");
    let delete = section(&out.stdout, "delete");
    assert!(delete.contains("tenant namespace gone"), "{out}");
    assert!(delete.contains("policies left 0"), "{out}");
    Ok(())
}

/// `KEY=VALUE` from a line of `ktls-probe proxy` output starting with `tag `.
fn field<'a>(stdout: &'a str, tag: &str, key: &str) -> Option<&'a str> {
    let line = stdout.lines().find(|l| l.starts_with(&format!("{tag} ")))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn ktls_handoff_through_the_proxy() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .modules(&["tls"])
        .binary(vm::musl_binary("ktls-probe")?)
        .script("ktls-probe proxy\n")
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let s = out.stdout.as_str();
    let f = |tag: &str, key: &str| field(s, tag, key).unwrap_or("missing").to_string();
    assert!(s.contains("13 ECHO_OK bytes=1048576"), "{out}");
    assert!(s.contains("12 ECHO_OK bytes=1048576"), "{out}");
    // The proxy's word...
    assert_eq!(f("stats13", "ktls_active"), "true", "{out}");
    assert_eq!(f("stats13", "ktls_sessions"), "1", "{out}");
    assert_eq!(f("stats12", "ktls_sessions"), "2", "{out}");
    assert_eq!(f("stats_end", "ktls_failures"), "0", "{out}");
    // ...and the kernel's: the open session is in kernel TLS both ways.
    assert_eq!(f("tls_stat_open13", "TlsCurrTxSw"), "1", "{out}");
    assert_eq!(f("tls_stat_open13", "TlsCurrRxSw"), "1", "{out}");
    // Cumulative counters, as differences: the proxy's kernel probe also
    // installs (TX-only) states on loopback sockets when it starts.
    let n = |tag: &str, key: &str| f(tag, key).parse::<i64>().unwrap_or(-1000);
    assert_eq!(
        n("tls_stat_open12", "TlsRxSw") - n("tls_stat_start", "TlsRxSw"),
        2,
        "{out}"
    );
    assert_eq!(
        n("tls_stat_open12", "TlsTxSw") - n("tls_stat_open13", "TlsTxSw"),
        1,
        "{out}"
    );
    assert_eq!(f("tls_stat_end", "TlsCurrTxSw"), "0", "{out}");
    assert_eq!(f("tls_stat_end", "TlsCurrRxSw"), "0", "{out}");
    assert_eq!(f("tls_stat_end", "TlsDecryptError"), "0", "{out}");
    Ok(())
}
