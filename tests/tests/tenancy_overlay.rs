//! TENANCY.md invariant 2 (overlay): what a tenant network accepts from a
//! tunnel is confined to that network's own endpoints. A packet carrying the
//! network's VNI from an underlay address that is not the VTEP of one of its
//! Endpoints is dropped by the switch; the legitimate peer keeps working.
//!
//! Real components only: two "DPUs", each a real `dpu-agent` with its own
//! Open vSwitch in its own network namespace, carry one tenant network over
//! VXLAN (as `net_vxlan.rs` does); their underlay is a Linux bridge in a
//! fourth namespace. A third sender on the same underlay — a Linux `vxlan`
//! device with the right VNI, in a namespace of its own, under an address
//! that no Endpoint names — sends UDP to the port on DPU 2, first as itself
//! and then impersonating the peer's MAC and IP; last, with the underlay
//! source forged as the peer's VTEP but its own inner MAC and IP (the inner
//! source is bound to the endpoints behind a VTEP). The port's socket receives
//! the peer's datagrams and none of the third sender's; DPU 2's own flow
//! counters (`ovs-ofctl dump-flows`) show the third sender's packets reached
//! the bridge and were classified into the network, and that anti-spoofing
//! admitted none of them. `ip`, `ethtool` and `ovs-ofctl` are setup and
//! witnesses only; every namespace, agent and OVS is stopped on every path.

mod net_common;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use net_common::*;
use serde_json::json;

const VNI: u32 = 300;
const UDP_PORT: u16 = 7777;
const VTEP1: &str = "192.168.99.1";
const VTEP2: &str = "192.168.99.2";
/// The third sender's underlay address: on the underlay, but no Endpoint's.
const VTEP_UNKNOWN: &str = "192.168.99.3";
const MAC1: &str = "02:00:0a:1e:00:01";
const MAC2: &str = "02:00:0a:1e:00:02";
const IP1: &str = "10.30.0.1";
const IP2: &str = "10.30.0.2";

/// Runs `f` on a fresh thread inside the named network namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Sends `count` datagrams `tag-N` from `src` to the port on DPU 2.
fn send_udp(ns: &str, src: &'static str, tag: &'static str, count: usize) {
    in_netns(ns, move || {
        let sock = UdpSocket::bind((src, 0)).unwrap_or_else(|e| panic!("bind {src}: {e}"));
        for i in 0..count {
            sock.send_to(format!("{tag}-{i}").as_bytes(), (IP2, UDP_PORT))
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// The port's own socket on DPU 2: every datagram it receives, with the
/// source address the kernel saw.
struct Receiver {
    got: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(ns: &str) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let sock = UdpSocket::bind(("0.0.0.0", UDP_PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let _ = bound_tx.send(());
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    g.lock().unwrap().push((
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                        from.ip().to_string(),
                    ));
                }
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver bound");
        Receiver {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self, tag: &str) -> Vec<(String, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(tag))
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `n_packets` of the first agent flow in `table` whose dump line contains
/// every one of `needles`, if there is one.
fn packets_of(mgmt: &Path, table: u8, needles: &[&str]) -> Option<u64> {
    let dump = run(
        "ovs-ofctl",
        &[
            "-O",
            "OpenFlow14",
            "--no-names",
            "dump-flows",
            &format!("unix:{}", mgmt.display()),
            &format!("table={table}"),
        ],
    );
    let line = dump
        .lines()
        .find(|l| l.contains("cookie=0xd0") && needles.iter().all(|n| l.contains(n)))?;
    let n = line
        .split("n_packets=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok());
    Some(n.unwrap_or_else(|| panic!("no n_packets in {line}")))
}

/// A counter reading once two readings 1.5 s apart agree (ovs-vswitchd's
/// revalidators move datapath statistics to flows about every second).
fn settled<T: PartialEq + std::fmt::Debug>(read: impl Fn() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = read();
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "counters never settled: {now:?}");
        last = now;
    }
}

#[test]
fn overlay_accepts_a_vni_only_from_the_networks_vteps() {
    let tag = format!("{:04x}", std::process::id() % 0xffff);
    let (ns1, ns2) = (format!("dpu-o1-{tag}"), format!("dpu-o2-{tag}"));
    let (nsu, nsa) = (format!("ovl-ul-{tag}"), format!("ovl-att-{tag}"));
    let (f1, f2) = (format!("o1{tag}"), format!("o2{tag}"));
    let (fn1, fn2) = (format!("dpu-fn-{f1}"), format!("dpu-fn-{f2}"));
    let _cleanup = NetnsCleanup(vec![
        fn1.clone(),
        fn2.clone(),
        ns1.clone(),
        ns2.clone(),
        nsa.clone(),
        nsu.clone(),
    ]);
    for ns in [&nsu, &ns1, &ns2, &nsa] {
        run("ip", &["netns", "add", ns]);
    }
    // The underlay: one Linux bridge, a veth to each DPU and to the third
    // sender.
    run("ip", &["-n", &nsu, "link", "add", "ul", "type", "bridge"]);
    run("ip", &["-n", &nsu, "link", "set", "ul", "up"]);
    let (u1, u2, ua) = (
        format!("u1-{tag}"),
        format!("u2-{tag}"),
        format!("ua-{tag}"),
    );
    for (i, (ns, dev)) in [(&ns1, &u1), (&ns2, &u2), (&nsa, &ua)].iter().enumerate() {
        let port = format!("p{i}");
        run(
            "ip",
            &[
                "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                &nsu,
            ],
        );
        run("ip", &["-n", ns, "link", "set", dev, "up"]);
        run("ip", &["-n", &nsu, "link", "set", &port, "master", "ul"]);
        run("ip", &["-n", &nsu, "link", "set", &port, "up"]);
    }

    // Build first, so a build failure fails here with everything cleaned up.
    agent_bin();
    let tenant =
        json!({"grants": {"vni_ranges": [VNI.to_string()], "functions": {"pfs": ["pf0"]}}});
    let ingress = json!([
        {"protocol": "icmp"},
        {"protocol": "udp", "ports": UDP_PORT.to_string()}]);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done1_tx, done1_rx) = mpsc::channel::<()>();
    let (done2_tx, done2_rx) = mpsc::channel::<()>();
    let t1 = vxlan_dpu_thread(
        VxlanDpu {
            ns: ns1.clone(),
            vtep: VTEP1,
            uplink: u1.clone(),
            function: f1.clone(),
            mac: MAC1,
            ip: IP1,
            tenant: tenant.clone(),
            vni: VNI,
            ingress: ingress.clone(),
        },
        (MAC2, IP2, VTEP2),
        ready_tx.clone(),
        done1_rx,
    );
    let t2 = vxlan_dpu_thread(
        VxlanDpu {
            ns: ns2.clone(),
            vtep: VTEP2,
            uplink: u2.clone(),
            function: f2.clone(),
            mac: MAC2,
            ip: IP2,
            tenant: tenant.clone(),
            vni: VNI,
            ingress: ingress.clone(),
        },
        (MAC1, IP1, VTEP1),
        ready_tx,
        done2_rx,
    );
    let mgmts: Vec<(&str, PathBuf)> = (0..2)
        .filter_map(|_| ready_rx.recv_timeout(Duration::from_secs(120)).ok())
        .collect();
    let result = std::panic::catch_unwind(|| {
        assert_eq!(mgmts.len(), 2, "the DPUs did not get ready");
        attack(&nsa, &ua, &fn1, &fn2, &mgmts)
    });
    drop(done1_tx);
    drop(done2_tx);
    let j1 = t1.join();
    let j2 = t2.join();
    if let Err(p) = result.and(j1).and(j2) {
        std::panic::resume_unwind(p);
    }
}

fn attack(nsa: &str, ua: &str, fn1: &str, fn2: &str, mgmts: &[(&str, PathBuf)]) {
    let dpu2 = mgmts
        .iter()
        .find(|(vtep, _)| *vtep == VTEP2)
        .map(|(_, m)| m.clone())
        .unwrap();

    // The legitimate peer works, both ways, and its datagrams arrive.
    assert!(
        ping_within(fn1, IP2, Duration::from_secs(15)),
        "ping DPU 1 -> DPU 2 over VXLAN failed"
    );
    assert!(
        ping_within(fn2, IP1, Duration::from_secs(5)),
        "ping DPU 2 -> DPU 1 over VXLAN failed"
    );
    let victim = Receiver::start(fn2);
    send_udp(fn1, IP1, "legit-before", 5);

    // The third sender: a Linux vxlan device on the right VNI, from an
    // underlay address no Endpoint names. Checksums are filled in by
    // software so nothing but the switch's decision can stop the packets.
    let ip = |args: &[&str]| run("ip", &[&["-n", nsa], args].concat());
    ip(&["addr", "add", &format!("{VTEP_UNKNOWN}/24"), "dev", ua]);
    run(
        "ip",
        &["netns", "exec", nsa, "ethtool", "-K", ua, "tx", "off"],
    );
    let vxlan_from = |local: &str| {
        ip(&[
            "link",
            "add",
            "vxa",
            "type",
            "vxlan",
            "id",
            &VNI.to_string(),
            "local",
            local,
            "remote",
            VTEP2,
            "dstport",
            "4789",
            "dev",
            ua,
        ]);
        run(
            "ip",
            &["netns", "exec", nsa, "ethtool", "-K", "vxa", "tx", "off"],
        );
    };
    vxlan_from(VTEP_UNKNOWN);
    let become_ = |mac: &str, addr: &str| {
        ip(&["link", "set", "vxa", "down"]);
        ip(&["link", "set", "vxa", "address", mac]);
        ip(&["addr", "flush", "dev", "vxa"]);
        ip(&["addr", "add", &format!("{addr}/24"), "dev", "vxa"]);
        ip(&["link", "set", "vxa", "up"]);
        ip(&[
            "neigh",
            "replace",
            IP2,
            "lladdr",
            MAC2,
            "dev",
            "vxa",
            "nud",
            "permanent",
        ]);
    };
    let classified = |m: &Path| packets_of(m, 0, &["tun_id=0x12c"]).unwrap_or(0);
    let admitted = |m: &Path| packets_of(m, 10, &[&format!("tun_src={VTEP1}")]);
    // ovs-vswitchd moves datapath counters to the flows about once a
    // second: let the peer's packets settle before the first reading.
    let (classified_before, admitted_before) = settled(|| (classified(&dpu2), admitted(&dpu2)));

    // As itself, and then as the peer (its MAC and IP).
    const ATTACKS: usize = 10;
    become_("02:00:0a:1e:00:66", "10.30.0.66");
    send_udp(nsa, "10.30.0.66", "attack-own", ATTACKS);
    become_(MAC1, IP1);
    send_udp(nsa, IP1, "attack-spoof", ATTACKS);

    // Then with the underlay source forged as the peer's VTEP (the limit
    // the README names) but its own MAC and IP: the inner source is bound
    // to the endpoints behind that VTEP, so this is dropped too. The sender
    // sends no ARP for it (a static neighbour) and answers none, so the
    // underlay keeps mapping VTEP 1 to DPU 1.
    let neigh = ip(&["neigh", "show", VTEP2, "dev", ua]);
    let vtep2_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("the third sender never resolved {VTEP2}: {neigh:?}"))
        .to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            nsa,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.arp_ignore=8",
        ],
    );
    ip(&[
        "neigh",
        "replace",
        VTEP2,
        "lladdr",
        &vtep2_mac,
        "dev",
        ua,
        "nud",
        "permanent",
    ]);
    ip(&["link", "del", "vxa"]);
    ip(&["addr", "add", &format!("{VTEP1}/32"), "dev", ua]);
    vxlan_from(VTEP1);
    become_("02:00:0a:1e:00:66", "10.30.0.66");
    let classified_before_forged = settled(|| classified(&dpu2));
    send_udp(nsa, "10.30.0.66", "attack-forged", ATTACKS);
    let (classified_after, admitted_after) = settled(|| (classified(&dpu2), admitted(&dpu2)));
    assert!(
        classified_after - classified_before_forged >= ATTACKS as u64,
        "DPU 2 classified only {} packets from the forged VTEP",
        classified_after - classified_before_forged
    );

    // The legitimate peer still gets through afterwards.
    send_udp(fn1, IP1, "legit-after", 5);
    assert!(
        ping_within(fn1, IP2, Duration::from_secs(5)),
        "the peer's ping stopped working after the attack"
    );
    std::thread::sleep(Duration::from_millis(300));

    let attacks = victim.received("attack");
    assert!(
        attacks.is_empty(),
        "the port received the third sender's datagrams: {attacks:?}"
    );
    // The witness saw the third sender's packets arrive at DPU 2's bridge
    // with the network's VNI (so the test is not passing for want of
    // traffic) and anti-spoofing admit none of them.
    let admitted_before = admitted_before.expect("DPU 2's anti-spoof flow for VTEP 1");
    assert!(
        classified_after - classified_before >= 3 * ATTACKS as u64,
        "DPU 2 classified only {} tunnel packets during the attack",
        classified_after - classified_before
    );
    assert_eq!(
        admitted_after,
        Some(admitted_before),
        "the peer's anti-spoof flow admitted packets during the attack"
    );
    assert!(
        victim.received("legit-before").len() >= 4,
        "the peer's datagrams before: {:?}",
        victim.got.lock().unwrap()
    );
    assert!(
        victim.received("legit-after").len() >= 4,
        "the peer's datagrams after: {:?}",
        victim.got.lock().unwrap()
    );
    assert!(victim.received("legit").iter().all(|(_, from)| from == IP1));
}
