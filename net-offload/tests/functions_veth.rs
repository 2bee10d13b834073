//! The veth simulator against the real kernel (root): two net functions,
//! each a veth pair whose `eth0` lives in `dpu-fn-<id>` with the tenant's
//! MAC and address; `ip` (iproute2) is only the witness. The two
//! representors go into a Linux bridge made by the test, the two tenants
//! ping each other, and removing the functions leaves no namespace and no
//! link behind. Ids carry the process id so parallel runs do not collide;
//! a guard removes everything on every path, panics included.

use std::process::Command;

use net_offload::functions::netns;
use net_offload::functions::veth::VethBackend;
use net_offload::functions::{
    Applied, FunctionBackend, FunctionDesired, FunctionType, Slot, TenantAddressing, naming,
};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip(args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Removes what the test made, whatever happened.
struct Cleanup {
    ids: Vec<String>,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.bridge]);
        for id in &self.ids {
            let _ = ip(&["link", "del", &naming::veth_representor(id)]);
            let _ = ip(&["netns", "del", &naming::netns_name(id)]);
        }
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo over a raw socket (what `ping -c1` does; no ping binary
/// needed), retried for up to 3 s while neighbours resolve.
fn icmp_echo(target: std::net::IpAddr) -> std::io::Result<()> {
    let std::net::IpAddr::V4(v4) = target else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    // SAFETY: plain socket calls on buffers owned here; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        let id = (std::process::id() & 0xffff) as u16;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut seq = 0u16;
        let result = loop {
            if std::time::Instant::now() > deadline {
                break Err(std::io::Error::other("no echo reply within 3 s"));
            }
            seq += 1;
            let mut pkt = vec![8u8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"dpu-fn-test");
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let mut buf = [0u8; 1500];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n >= 28 {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                let icmp = &buf[ihl..n as usize];
                if buf[12..16] == v4.octets() && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                    break Ok(());
                }
            }
        };
        libc::close(fd);
        result
    }
}

fn function(id: &str, n: u8) -> FunctionDesired {
    FunctionDesired {
        id: id.to_string(),
        type_: FunctionType::Net,
        pf: "pf0".into(),
        slot: Slot::Vf(u32::from(n)),
        mac: Some(format!("02:fe:00:00:00:{n:02x}").parse().unwrap()),
        vlan: None,
        max_tx_rate_mbps: None,
        trust: false,
        spoof_check: true,
        rdma: false,
        tenant: Some(TenantAddressing {
            mac: format!("02:fe:00:00:01:{n:02x}").parse().unwrap(),
            addresses: vec![(
                format!("10.251.{}.{n}", std::process::id() % 250)
                    .parse()
                    .unwrap(),
                24,
            )],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_veth_functions_ping_through_a_bridge_and_leave_nothing() {
    // A missing environment fails the test; it never passes unrun.
    assert!(
        is_root(),
        "needs root (network namespaces, veth): run the tests as root (scripts/test.sh does)"
    );
    let pid = std::process::id();
    let ids = [format!("t{pid}-a"), format!("t{pid}-b")];
    let bridge = format!("brfn{}", pid % 100_000_000);
    let _cleanup = Cleanup {
        ids: ids.to_vec(),
        bridge: bridge.clone(),
    };
    let backend = VethBackend::new();
    let fa = function(&ids[0], 1);
    let fb = function(&ids[1], 2);

    for f in [&fa, &fb] {
        let applied = backend.apply(f).await.expect("apply");
        assert_eq!(
            applied,
            Applied::Ready {
                representor: naming::veth_representor(&f.id),
                host_device: Some("eth0".into()),
            }
        );
        // Idempotent: a second apply changes nothing and succeeds.
        backend.apply(f).await.expect("apply again");
    }

    for f in [&fa, &fb] {
        let ns = naming::netns_name(&f.id);
        let (ok, out) = ip(&["-n", &ns, "addr", "show", "dev", "eth0"]);
        assert!(ok, "{out}");
        let t = f.tenant.as_ref().unwrap();
        let (addr, prefix) = t.addresses[0];
        assert!(out.contains(&format!("link/ether {}", t.mac)), "{out}");
        assert!(out.contains(&format!("inet {addr}/{prefix}")), "{out}");
        assert!(out.contains(",UP"), "{out}");
        let (_, lo) = ip(&["-n", &ns, "link", "show", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
        let (ok, alias) = ip(&["-d", "link", "show", &naming::veth_representor(&f.id)]);
        assert!(
            ok && alias.contains(&format!("alias dpu-agent function {}", f.id)),
            "{alias}"
        );
    }

    let observed = backend.observe().await.expect("observe");
    for id in &ids {
        let mine: Vec<_> = observed
            .iter()
            .filter(|o| o.owner.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(
            mine.len(),
            2,
            "a link and a namespace for {id}: {observed:?}"
        );
    }

    // Another agent's scoped backend on this host does not claim them.
    let other = VethBackend::scoped("0the0ther");
    let theirs = other.observe().await.expect("observe (other scope)");
    assert!(
        !theirs
            .iter()
            .any(|o| ids.iter().any(|id| o.owner.as_deref() == Some(id.as_str()))),
        "{theirs:?}"
    );

    // Not yet bridged: the echo must fail, or the witness below proves nothing.
    let target = fb.tenant.as_ref().unwrap().addresses[0].0;
    let ns_a = naming::netns_name(&ids[0]);
    let unbridged = netns::run_in(&ns_a, move || async move { icmp_echo(target) })
        .await
        .expect("enter the namespace");
    assert!(unbridged.is_err(), "echo answered without a bridge");

    let (ok, out) = ip(&["link", "add", &bridge, "type", "bridge"]);
    assert!(ok, "{out}");
    for id in &ids {
        let (ok, out) = ip(&[
            "link",
            "set",
            &naming::veth_representor(id),
            "master",
            &bridge,
        ]);
        assert!(ok, "{out}");
    }
    let (ok, out) = ip(&["link", "set", &bridge, "up"]);
    assert!(ok, "{out}");
    let reply = netns::run_in(&ns_a, move || async move { icmp_echo(target) })
        .await
        .expect("enter the namespace");
    assert!(reply.is_ok(), "ping {target} from {ns_a}: {reply:?}");

    // The port's addressing changes: the old address goes, the new one comes.
    let mut moved = fa.clone();
    let new_addr = format!("10.252.{}.9", pid % 250);
    moved.tenant.as_mut().unwrap().addresses = vec![(new_addr.parse().unwrap(), 16)];
    backend.apply(&moved).await.expect("re-address");
    let (_, out) = ip(&["-n", &ns_a, "addr", "show", "dev", "eth0"]);
    assert!(out.contains(&format!("inet {new_addr}/16")), "{out}");
    assert!(!out.contains("10.251."), "{out}");

    for id in &ids {
        backend.remove(id, None).await.expect("remove");
        backend.remove(id, None).await.expect("remove again");
        let (_, list) = ip(&["netns", "list"]);
        assert!(!list.contains(&naming::netns_name(id)), "{list}");
        let (exists, _) = ip(&["link", "show", &naming::veth_representor(id)]);
        assert!(!exists, "representor of {id} still there");
        assert!(!std::path::Path::new(&format!("/run/netns/{}", naming::netns_name(id))).exists());
    }
    let left = backend.observe().await.expect("observe");
    assert!(
        !left
            .iter()
            .any(|o| ids.iter().any(|id| o.owner.as_deref() == Some(id.as_str()))),
        "{left:?}"
    );
}

/// A half-gone function (its namespace removed behind the agent's back) is
/// made whole again by the next apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_namespace_is_recreated() {
    // A missing environment fails the test; it never passes unrun.
    assert!(
        is_root(),
        "needs root (network namespaces, veth): run the tests as root (scripts/test.sh does)"
    );
    let id = format!("t{}-c", std::process::id());
    let _cleanup = Cleanup {
        ids: vec![id.clone()],
        bridge: format!("brfx{}", std::process::id() % 100_000_000),
    };
    let backend = VethBackend::new();
    let f = function(&id, 3);
    backend.apply(&f).await.expect("apply");
    let (ok, out) = ip(&["netns", "del", &naming::netns_name(&id)]);
    assert!(ok, "{out}");
    backend
        .apply(&f)
        .await
        .expect("apply after the namespace was lost");
    let (ok, out) = ip(&[
        "-n",
        &naming::netns_name(&id),
        "addr",
        "show",
        "dev",
        "eth0",
    ]);
    assert!(ok && out.contains("inet 10.251."), "{out}");
    backend.remove(&id, None).await.expect("remove");
}

/// Plans are what runs: the veth backend's apply and remove plans, run
/// action by action with `plan::run`, execute exactly the planned list
/// (each action recorded once the kernel accepted it), and what each
/// action says it does is there afterwards, seen by `ip`: the namespace,
/// the representor with its alias, `eth0` with the tenant's address; after
/// the remove plan, neither. An action of another backend is refused, not
/// run. (TENANCY.md invariant 1: what `/v1/plan` shows for a function is
/// all the agent does to the host's network for it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_shown_is_the_list_apply_runs() {
    use net_offload::functions::{FunctionAction, plan};

    // A missing environment fails the test; it never passes unrun.
    assert!(
        is_root(),
        "needs root (network namespaces, veth): run the tests as root (scripts/test.sh does)"
    );
    let id = format!("t{}-p", std::process::id());
    let _cleanup = Cleanup {
        ids: vec![id.clone()],
        bridge: format!("brfp{}", std::process::id() % 100_000_000),
    };
    let backend = VethBackend::new();
    let f = function(&id, 4);
    let planned = backend.plan_apply(&f);
    assert!(
        matches!(
            planned.as_slice(),
            [FunctionAction::NetnsAdd { .. }, FunctionAction::VethPair(_)]
        ),
        "{planned:#?}"
    );
    let ran = plan::run(&backend, &planned)
        .await
        .expect("run the apply plan");
    assert_eq!(ran.executed, planned);
    let Some(Applied::Ready { representor, .. }) = ran.applied else {
        panic!("apply ended with {:?}", ran.applied);
    };
    let ns = naming::netns_name(&id);
    let (ok, out) = ip(&["link", "show", "dev", &representor]);
    assert!(
        ok && out.contains(&format!("alias dpu-agent function {id}")),
        "{out}"
    );
    let (ok, out) = ip(&["-n", &ns, "addr", "show", "dev", "eth0"]);
    assert!(
        ok && out.contains("inet 10.251.") && out.contains("02:fe:00:00:01:04"),
        "{out}"
    );
    // Converged: the same plan again (every action is idempotent), and
    // running it changes nothing `ip` can see.
    assert_eq!(backend.plan_apply(&f), planned);
    let before = ip(&["-n", &ns, "-d", "addr", "show"]).1;
    plan::run(&backend, &planned).await.expect("run again");
    assert_eq!(ip(&["-n", &ns, "-d", "addr", "show"]).1, before);

    // A plan of another backend is refused before anything is done.
    let foreign = [FunctionAction::ResetVf {
        pf_netdev: "pf0".into(),
        vf: 4,
    }];
    let err = plan::run(&backend, &foreign)
        .await
        .expect_err("foreign action");
    assert!(
        err.to_string().contains("veth backend does not execute"),
        "{err}"
    );

    let removal = backend.plan_remove(&id, None);
    let ran = plan::run(&backend, &removal)
        .await
        .expect("run the remove plan");
    assert_eq!(ran.executed, removal);
    assert_eq!(ran.applied, None);
    assert!(
        !ip(&["link", "show", "dev", &representor]).0,
        "representor left"
    );
    assert!(!netns::exists(&ns), "namespace left");
}
