//! The tenant network context on the real agent (`dpu-agent dev`, root
//! only): TENANCY.md invariants 1 and 2 attacked through the API with a
//! tenant's own certificate from the dev CA.
//!
//! Each test makes its own network namespaces and starts the agent inside
//! one of them (the agent is spawned from a thread that `setns`ed there, and
//! every API call is made from that thread), so the "agent's namespace" the
//! attacks aim at is the test's, not the host's. Tenant namespaces are named
//! with a per-test prefix (`DPU_TENANT_NETNS_PREFIX`), so `ip netns` can
//! witness them; every namespace is removed on every path (guards).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dpu_api::Kind;
use dpu_api::client::Client;
use dpu_api::identity::Role;
use dpu_crypto::netns::NetnsThread;
use dpu_tests::agent::AgentProcess;
use dpu_tests::fixtures::{put_ok, tls_connector};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A missing environment fails the test; it never passes unrun.
fn require_root() {
    assert!(
        is_root(),
        "needs root for network namespaces: run the tests as root (scripts/test.sh does)"
    );
}

/// Runs a command; panics with its stderr when it fails.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a command succeeds (ping as the witness of traffic).
fn ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A namespace under `/run/netns` that this test owns; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    fn ip(&self, args: &str) -> String {
        let mut a = vec!["ip", "-n", &self.0];
        a.extend(args.split_whitespace());
        sh(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A tenant namespace the agent should make (and remove); deleted on drop in
/// case the test fails before the agent does it.
struct TenantNetnsGuard(String);

impl Drop for TenantNetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn netns_exists(name: &str) -> bool {
    sh(&["ip", "netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Runs `f` on a thread inside namespace `ns`, with a current-thread tokio
/// runtime: every socket it makes (the agent process it spawns, API
/// clients, servers) belongs to that namespace.
fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        // SAFETY: `file` is an open nsfs file; setns affects only this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Waits (up to 20 s) until the listener `web` has reconciled generation
/// `generation`.
async fn wait_reloaded(tenant: &Client, generation: u64) {
    wait_for("the reload", Duration::from_secs(20), || async {
        tenant
            .get(Kind::TlsListener, "web")
            .await
            .is_ok_and(|o| o.status.observed_generation >= generation)
    })
    .await;
}

/// Waits (up to 10 s) until the network namespace `name` is gone.
async fn wait_netns_removed(name: &str) {
    wait_for(
        "the tenant namespace removed",
        Duration::from_secs(10),
        || async { !netns_exists(name) },
    )
    .await;
}

async fn wait_for<F, Fut>(what: &str, within: Duration, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn phase(c: &Client, kind: Kind, id: &str) -> Option<(String, Value)> {
    let o = c.get(kind, id).await.ok()?;
    let v = serde_json::to_value(&o.status).ok()?;
    Some((v["phase"].as_str().unwrap_or("").to_string(), v))
}

/// The tenant, its grant and the network whose CIDR is its address space
/// (written by the fleet controller).
async fn tenant_with_network(admin: &Client, tenant: &str, cidr: &str, vni: u32) {
    let grants = json!({"grants": {"vni_ranges": [vni.to_string()]}});
    put_ok(admin, Kind::Tenant, tenant, Some(tenant), grants).await;
    let network = json!({"vni": vni, "cidr": cidr, "encap": "vxlan"});
    put_ok(
        admin,
        Kind::Network,
        &format!("{tenant}-net"),
        Some(tenant),
        network,
    )
    .await;
}

/// A plain TCP server in the calling thread's namespace that tells every
/// client a secret and counts them.
fn secret_server(addr: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind(addr).unwrap();
    let at = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"infrastructure secret\n");
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
        }
    });
    (at, seen)
}

/// Connects through the listener at `addr` from inside `ns` (TLS), sends a
/// request and returns every byte that came back.
async fn through_listener(ns: &NetnsThread, addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    let tcp = ns.tcp_connect(addr).await.unwrap();
    let mut tls = tls_connector(ca_pem)
        .connect(
            rustls::pki_types::ServerName::try_from("svc.example").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let _ = tls
        .write_all(b"GET /v1/inventory HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut got)).await;
    got
}

fn tls_identity() -> (String, String, String) {
    let ca = dpu_pki::Ca::generate("tenant service CA").unwrap();
    let id = ca
        .issue("spiffe://dpu.local/svc", &["svc.example"])
        .unwrap();
    (ca.cert_pem.clone(), id.cert_pem, id.key_pem)
}

/// TENANCY.md invariant 1 (reach infrastructure endpoints): a tenant's TLS
/// listener whose upstream is a server in the agent's own namespace — on an
/// address inside the tenant's CIDR, on the agent's loopback, or the agent's
/// own API port — relays nothing to it: the client gets no byte of it and
/// the server sees no connection. The listener's socket is in the tenant's
/// namespace (`ip netns exec <ns> ss -ltn`), not the agent's; with an
/// upstream inside that namespace the same listener relays (so the silence
/// above is the namespace, not a broken proxy); the namespace is gone after
/// the tenant's last listener is deleted.
#[test]
fn tenant_listener_cannot_relay_into_the_agents_namespace() {
    require_root();
    let pid = std::process::id();
    let agent_ns = Netns::new(format!("ntxa{pid}"));
    // An address of the tenant's CIDR that the agent's namespace holds: an
    // upstream there would be "inside the tenant's network" by admission.
    agent_ns.ip("addr add 10.78.0.1/32 dev lo");
    let prefix = format!("ntxa{pid}-");
    let tenant_ns = format!("{prefix}acme");
    let _guard = TenantNetnsGuard(tenant_ns.clone());

    let ns = agent_ns.0.clone();
    let result = run_in(&ns, move || {
        let agent = AgentProcess::start_with_env(
            &["--no-ovs"],
            &[("DPU_TENANT_NETNS_PREFIX", prefix.as_str())],
        );
        // Servers in the agent's namespace, the relay's targets.
        let (in_cidr, in_cidr_seen) = secret_server("10.78.0.1:0");
        let (loopback, loopback_seen) = secret_server("127.0.0.1:0");
        let api: SocketAddr = format!("127.0.0.1:{}", agent.port()).parse().unwrap();
        block_on(async move {
            let admin = agent.admin();
            tenant_with_network(&admin, "acme", "10.78.0.0/24", 178).await;
            let tenant = agent.client_for(&Role::Tenant("acme".into()));
            let (ca, cert, key) = tls_identity();
            let listen: SocketAddr = "10.78.0.10:8443".parse().unwrap();
            let spec = |upstream: SocketAddr| {
                json!({"listen": listen.to_string(), "upstream": upstream.to_string(),
                       "certificate_pem": cert, "private_key_pem": key, "ktls": "off"})
            };
            put_ok(
                &tenant,
                Kind::TlsListener,
                "web",
                Some("acme"),
                spec(in_cidr),
            )
            .await;
            wait_for("the listener Ready", Duration::from_secs(20), || async {
                matches!(phase(&tenant, Kind::TlsListener, "web").await, Some((p, _)) if p == "Ready")
            })
            .await;
            let (_, status) = phase(&tenant, Kind::TlsListener, "web").await.unwrap();
            assert_eq!(status["netns"], json!(tenant_ns), "{status}");

            // Witness: the socket listens in the tenant's namespace only.
            let theirs = sh(&["ip", "netns", "exec", &tenant_ns, "ss", "-ltn"]);
            assert!(theirs.contains("10.78.0.10:8443"), "{theirs}");
            let ours = sh(&["ss", "-ltn"]);
            assert!(
                !ours.contains(":8443"),
                "listener in the agent's namespace: {ours}"
            );

            let inside = Arc::new(
                NetnsThread::spawn(
                    &tenant_ns,
                    File::open(format!("/run/netns/{tenant_ns}")).unwrap(),
                )
                .unwrap(),
            );
            let got = through_listener(&inside, listen, &ca).await;
            assert!(
                got.is_empty(),
                "relayed: {:?}",
                String::from_utf8_lossy(&got)
            );
            assert_eq!(in_cidr_seen.load(Ordering::SeqCst), 0);

            // The agent's loopback and its own API as upstreams: refused at
            // the door (422, once admission knows), or unreachable.
            for target in [loopback, api] {
                match tenant
                    .put(Kind::TlsListener, "web", Some("acme"), spec(target), None)
                    .await
                {
                    Err(e) => assert_eq!(e.status(), Some(422), "{e}"),
                    Ok(r) => {
                        wait_reloaded(&tenant, r.object.generation).await;
                        let got = through_listener(&inside, listen, &ca).await;
                        assert!(
                            got.is_empty(),
                            "relayed to {target}: {:?}",
                            String::from_utf8_lossy(&got)
                        );
                    }
                }
            }
            assert_eq!(loopback_seen.load(Ordering::SeqCst), 0);
            assert_eq!(in_cidr_seen.load(Ordering::SeqCst), 0);

            // Control: an upstream inside the tenant's namespace is relayed.
            let echo = inside
                .tcp_listener("10.78.0.10:0".parse().unwrap())
                .await
                .unwrap();
            let echo_at = echo.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = echo.accept().await {
                    tokio::spawn(async move {
                        let _ = s.write_all(b"tenant service\n").await;
                    });
                }
            });
            let r = put_ok(
                &tenant,
                Kind::TlsListener,
                "web",
                Some("acme"),
                spec(echo_at),
            )
            .await;
            wait_reloaded(&tenant, r.object.generation).await;
            let got = through_listener(&inside, listen, &ca).await;
            assert_eq!(got, b"tenant service\n");
            drop(inside);

            // Deleting the tenant's last listener removes its namespace.
            tenant.delete(Kind::TlsListener, "web").await.unwrap();
            wait_for("the listener gone", Duration::from_secs(20), || async {
                tenant.get(Kind::TlsListener, "web").await.is_err()
            })
            .await;
            wait_netns_removed(&tenant_ns).await;
            drop(agent);
        })
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn ping(from: &Netns, to: &str) -> bool {
    ok(&[
        "ip", "netns", "exec", &from.0, "ping", "-c", "1", "-W", "1", to,
    ])
}

fn tunnel(spi: u32, scope: Option<&str>) -> Value {
    let mut t = json!({"local": "10.77.0.1", "remote": "10.77.0.2",
        "local_subnets": ["10.77.0.0/24"], "remote_subnets": ["10.77.0.0/24"],
        "mode": "tunnel", "cipher": "aes-gcm-128", "spi_in": spi, "spi_out": spi + 1,
        "key_in": "00112233445566778899aabbccddeeff01020304",
        "key_out": "ffeeddccbbaa99887766554433221100a0b0c0d0", "offload": "none"});
    if let Some(s) = scope {
        t["scope"] = json!(s);
    }
    t
}

/// TENANCY.md invariant 2 (touch B's or the infrastructure's packets): a
/// tenant's IPsec tunnel whose selectors cover the agent namespace's own
/// traffic (10.77.0.0/24 both ways, the tenant's whole network) does not
/// catch it: every policy (and SA) it installs carries the tenant's
/// `if_id`, so a ping between the agent's namespace and its peer still
/// answers. Control (run first: admission refuses two tunnels with
/// overlapping selectors to one remote): the same selectors as an
/// `infrastructure` tunnel written by the fleet controller (no `if_id`) do
/// catch it — the ping stops (this kernel has no ESP, so there is no SA to
/// send with) — and it answers again once that tunnel is deleted. The
/// tenant's namespace exists while it has the tunnel and is gone after.
#[test]
fn tenant_tunnel_cannot_catch_the_agents_traffic() {
    require_root();
    let pid = std::process::id();
    let a = Netns::new(format!("ntxb{pid}a"));
    let b = Netns::new(format!("ntxb{pid}b"));
    let veth_a = format!("ntx{pid}a");
    let veth_b = format!("ntx{pid}b");
    sh(&[
        "ip", "link", "add", &veth_a, "netns", &a.0, "type", "veth", "peer", "name", &veth_b,
        "netns", &b.0,
    ]);
    a.ip(&format!("addr add 10.77.0.1/24 dev {veth_a}"));
    b.ip(&format!("addr add 10.77.0.2/24 dev {veth_b}"));
    a.ip(&format!("link set {veth_a} up"));
    b.ip(&format!("link set {veth_b} up"));
    // The precondition, given time: a veth pair just set up answers its
    // first ping late on a loaded machine (ping waits 1 s).
    assert!(
        (0..5).any(|_| ping(&a, "10.77.0.2")),
        "the veth does not carry a ping"
    );

    let prefix = format!("ntxb{pid}-");
    let tenant_ns = format!("{prefix}acme");
    let _guard = TenantNetnsGuard(tenant_ns.clone());
    let xfrm_ns = format!("/run/netns/{}", a.0);
    let a_name = a.0.clone();
    let result = run_in(&a.0.clone(), move || {
        let agent = AgentProcess::start_with_env(
            &["--no-ovs"],
            &[
                ("DPU_TENANT_NETNS_PREFIX", prefix.as_str()),
                ("DPU_IPSEC_NETNS", xfrm_ns.as_str()),
            ],
        );
        block_on(async move {
            let admin = agent.admin();
            tenant_with_network(&admin, "acme", "10.77.0.0/24", 177).await;
            let tenant = agent.client_for(&Role::Tenant("acme".into()));
            let policies = || sh(&["ip", "-n", &a_name, "xfrm", "policy"]);
            let states = || sh(&["ip", "-n", &a_name, "xfrm", "state"]);
            let pinged = || {
                ok(&[
                    "ip",
                    "netns",
                    "exec",
                    &a_name,
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "10.77.0.2",
                ])
            };

            // Control first (admission refuses two tunnels with overlapping
            // selectors to one remote): the infrastructure's tunnel, written
            // by the fleet controller, with the same selectors.
            put_ok(&admin, Kind::Tenant, "infra", Some("infra"), json!({})).await;
            put_ok(
                &admin,
                Kind::IpsecTunnel,
                "underlay",
                Some("infra"),
                tunnel(0x7101, Some("infrastructure")),
            )
            .await;
            wait_for(
                "the infrastructure policies",
                Duration::from_secs(20),
                || async { policies().matches("dir ").count() == 3 },
            )
            .await;
            let listed = policies();
            assert_eq!(listed.matches("if_id").count(), 0, "{listed}");
            assert!(
                !pinged(),
                "an unscoped policy should drop the ping:\n{listed}"
            );
            admin.delete(Kind::IpsecTunnel, "underlay").await.unwrap();
            wait_for(
                "the infrastructure policies gone",
                Duration::from_secs(20),
                || async { policies().matches("dir ").count() == 0 },
            )
            .await;
            assert!(pinged(), "{}", policies());

            put_ok(
                &tenant,
                Kind::IpsecTunnel,
                "tun",
                Some("acme"),
                tunnel(0x7001, None),
            )
            .await;
            wait_for(
                "the tenant tunnel's policies",
                Duration::from_secs(20),
                || async { policies().matches("dir ").count() == 3 },
            )
            .await;
            let listed = policies();
            let (_, status) = phase(&tenant, Kind::IpsecTunnel, "tun").await.unwrap();
            let if_id = status["if_id"].as_u64().expect("status.if_id") as u32;
            assert_ne!(if_id, 0);
            assert_eq!(
                listed.matches(&format!("if_id {if_id:#x}")).count(),
                3,
                "every policy scoped: {listed}"
            );
            let sas = states();
            assert_eq!(
                sas.matches("src ").count(),
                sas.matches(&format!("if_id {if_id:#x}")).count(),
                "every SA scoped: {sas}"
            );
            assert!(
                pinged(),
                "the tenant tunnel caught the agent's traffic:\n{listed}"
            );
            assert!(netns_exists(&tenant_ns), "no tenant namespace");

            tenant.delete(Kind::IpsecTunnel, "tun").await.unwrap();
            wait_for(
                "the tenant policies gone",
                Duration::from_secs(20),
                || async { policies().matches("dir ").count() == 0 },
            )
            .await;
            wait_netns_removed(&tenant_ns).await;
            drop(agent);
        })
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    drop(b);
}
