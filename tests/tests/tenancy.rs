//! Tenant isolation at the API, attacked through a real `dpu-agent dev`
//! process with certificates issued by its dev CA: one test per invariant of
//! TENANCY.md that the API enforces (the data-plane halves are in
//! `tenancy_overlay.rs`, `tenancy_netctx.rs` and `storage_vm.rs`). Each
//! attack is what a tenant identity can send; each would succeed against
//! the agent before grants, bounds and confinement were added.

use std::process::Command;
use std::time::{Duration, Instant};

use dpu_api::client::{Client, Method};
use dpu_api::identity::Role;
use dpu_api::object::{ApplyRequest, ObjectWrite};
use dpu_api::{Kind, limits};
use dpu_tests::agent::{AgentProcess, binary};
use dpu_tests::fixtures::{
    IPSEC_KEY_A, IPSEC_KEY_B, detail_of, history, ipsec_tunnel_spec, put_ok, put_refused, status_of,
};
use serde_json::{Value, json};

/// `base` with the top-level fields of `patch` set.
fn merged(mut base: Value, patch: Value) -> Value {
    for (k, x) in patch.as_object().unwrap() {
        base[k] = x.clone();
    }
    base
}

/// Each attack (a spec, and the field its refusal must name) is refused
/// with 422 when red writes it as `kind` `{prefix}{i}`.
async fn all_refused(red: &Client, kind: Kind, prefix: &str, attacks: &[(Value, &str)]) {
    for (i, (spec, field)) in attacks.iter().enumerate() {
        let refused = put_refused(
            red,
            kind,
            &format!("{prefix}{i}"),
            Some("red"),
            spec.clone(),
        )
        .await;
        assert_eq!(refused, (422, Some(field.to_string())), "{spec}");
    }
}

/// Two tenants made by the fleet controller: `red` with VNIs 100-199,
/// `pf0` VFs 0-7, and `blue` with VNIs 200-299 and no function grant; each
/// with a network, blue with a function, a tunnel and a volume.
async fn two_tenants(agent: &AgentProcess) -> (Client, Client, Client) {
    let admin = agent.admin();
    let red = agent.client_for(&Role::Tenant("red".into()));
    let blue = agent.client_for(&Role::Tenant("blue".into()));
    let objects = [
        (
            &admin,
            Kind::Tenant,
            "red",
            None,
            json!({"grants": {"vni_ranges": ["100-199"],
                              "functions": {"pfs": ["pf0"], "vfs": "0-7"}}}),
        ),
        (
            &admin,
            Kind::Tenant,
            "blue",
            None,
            json!({"grants": {"vni_ranges": ["200-299"]}}),
        ),
        (
            &red,
            Kind::Network,
            "red-net",
            Some("red"),
            json!({"vni": 100, "cidr": "10.10.0.0/24", "encap": "vxlan"}),
        ),
        (
            &blue,
            Kind::Network,
            "blue-net",
            Some("blue"),
            json!({"vni": 200, "cidr": "10.20.0.0/24", "encap": "vxlan"}),
        ),
        // Hardware is the fleet controller's to place.
        (
            &admin,
            Kind::Function,
            "blue-disk",
            Some("blue"),
            json!({"type": "nvme", "pf": "pf0", "vf": 12}),
        ),
        (
            &blue,
            Kind::IpsecTunnel,
            "blue-tun",
            Some("blue"),
            ipsec_tunnel_spec("10.20.0.0/24", "10.99.0.0/24", 5000, 5001),
        ),
        (
            &blue,
            Kind::Volume,
            "blue-vol",
            Some("blue"),
            json!({"function": "blue-disk", "source": {"nvmeof": {"transport": "tcp",
               "address": "192.0.2.10", "port": 4420, "subnqn": "nqn.2014-08.org.example:shared",
               "hostnqn": "nqn.2020-01.com.blue:host"}}}),
        ),
    ];
    for (client, kind, id, tenant, spec) in objects {
        put_ok(client, kind, id, tenant, spec).await;
    }
    (admin, red, blue)
}

/// Red's NVMe function `red-disk`, for volumes to name.
async fn red_disk(red: &Client) {
    let spec = json!({"type": "nvme", "pf": "pf0"});
    put_ok(red, Kind::Function, "red-disk", Some("red"), spec).await;
}

/// Invariant 5: another tenant's object answers exactly as a missing one,
/// and no error, list, watch event or plan names the other tenant or its
/// ids, subnets, VNIs or VF holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_5_no_existence_oracle() {
    let agent = AgentProcess::start();
    let (_admin, red, _blue) = two_tenants(&agent).await;

    for (kind, id) in [
        (Kind::Network, "blue-net"),
        (Kind::Function, "blue-disk"),
        (Kind::IpsecTunnel, "blue-tun"),
    ] {
        let taken = red.get(kind, id).await.unwrap_err();
        let missing = red.get(kind, "no-such-thing").await.unwrap_err();
        assert_eq!(taken.status(), Some(404), "GET {kind} {id}");
        assert_eq!(
            detail_of(&taken).replace(id, "X"),
            detail_of(&missing).replace("no-such-thing", "X"),
            "GET of another tenant's {kind} differs from a missing one"
        );
        let taken = red.delete(kind, id).await.unwrap_err();
        let missing = red.delete(kind, "no-such-thing").await.unwrap_err();
        assert_eq!(taken.status(), Some(404), "DELETE {kind} {id}");
        assert_eq!(
            detail_of(&taken).replace(id, "X"),
            detail_of(&missing).replace("no-such-thing", "X"),
        );
    }

    // Probes by 422 detail: each collides with one of blue's facts.
    let probes: Vec<(Kind, &str, Value)> = vec![
        // A create colliding with blue's id.
        (
            Kind::Network,
            "blue-net",
            json!({"vni": 101, "cidr": "10.11.0.0/24", "encap": "vxlan"}),
        ),
        // Blue's VNI, and a VNI inside blue's grant.
        (
            Kind::Network,
            "red-2",
            json!({"vni": 200, "cidr": "10.11.0.0/24", "encap": "vxlan"}),
        ),
        (
            Kind::Network,
            "red-3",
            json!({"vni": 250, "cidr": "10.11.0.0/24", "encap": "vxlan"}),
        ),
        // Blue's SPI.
        (
            Kind::IpsecTunnel,
            "red-tun",
            ipsec_tunnel_spec("10.10.0.0/24", "10.99.0.0/24", 5001, 6001),
        ),
        // Blue's host NQN.
        (
            Kind::Volume,
            "red-vol",
            json!({"function": "red-disk", "source": {"nvmeof": {"transport": "tcp",
                   "address": "192.0.2.10", "port": 4420,
                   "subnqn": "nqn.2014-08.org.example:shared",
                   "hostnqn": "nqn.2020-01.com.blue:host"}}}),
        ),
    ];
    red_disk(&red).await;
    for (kind, id, spec) in probes {
        let err = red
            .put(kind, id, Some("red"), spec, None)
            .await
            .unwrap_err();
        let status = err.status();
        assert!(matches!(status, Some(409 | 422)), "{kind} {id}: {status:?}");
        // The caller's own id is echoed; nothing else of blue's may be.
        let text = detail_of(&err).replace(id, "<id>");
        for secret in ["blue", "10.20.0", "10.99.0", "5000", "com.blue"] {
            assert!(
                !text.contains(secret),
                "{kind} {id}: the refusal names {secret:?}: {text}"
            );
        }
    }

    // Lists, watch and plan show red's own objects only.
    for kind in [Kind::Network, Kind::Function, Kind::IpsecTunnel] {
        let list = red.list(kind, None).await.unwrap();
        assert!(list.items.iter().all(|o| o.tenant == "red"), "{kind}");
    }
    for ev in history(&red).await {
        let text = serde_json::to_string(&ev).unwrap();
        assert!(!text.contains("blue"), "watch event names blue: {text}");
    }
    let plan = red
        .plan(&ApplyRequest {
            objects: vec![ObjectWrite {
                kind: "Function".into(),
                id: "red-fn".into(),
                tenant: Some("red".into()),
                spec: json!({"type": "nvme", "pf": "pf0", "vf": 7}),
            }],
            prune: None,
        })
        .await
        .unwrap();
    let text = serde_json::to_string(&plan).unwrap();
    assert!(!text.contains("blue"), "plan names blue: {text}");
}

/// Invariant 3: PF, VF index, host placement, trust and spoof checking are
/// the fleet controller's, or the tenant's grant's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_3_hardware_needs_a_grant() {
    let agent = AgentProcess::start();
    let (admin, red, blue) = two_tenants(&agent).await;
    let f = json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"});
    let with = |patch: Value| merged(f.clone(), patch);
    let attacks = [
        (with(json!({"pf": "pf1"})), "spec.pf"),
        (with(json!({"vf": 12})), "spec.vf"),
        (with(json!({"host": "node-9"})), "spec.host"),
        (with(json!({"trust": true})), "spec.trust"),
        (with(json!({"spoof_check": false})), "spec.spoof_check"),
    ];
    all_refused(&red, Kind::Function, "red-", &attacks).await;
    // Without any function grant, nothing.
    let refused = put_refused(
        &blue,
        Kind::Function,
        "blue-net-fn",
        Some("blue"),
        f.clone(),
    )
    .await;
    assert_eq!(refused, (422, Some("spec.pf".into())));
    // Within the grant: accepted.
    put_ok(
        &red,
        Kind::Function,
        "red-ok",
        Some("red"),
        with(json!({"vf": 3})),
    )
    .await;
    // The fleet controller places hardware as it decides.
    put_ok(
        &admin,
        Kind::Function,
        "red-special",
        Some("red"),
        with(
            json!({"pf": "pf1", "vf": 40, "trust": true, "spoof_check": false,
                        "mac": "02:00:00:00:00:02"}),
        ),
    )
    .await;
    // Nothing refused was stored.
    let names: Vec<String> = red
        .list(Kind::Function, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(names, ["red-ok", "red-special"]);
}

/// Invariants 1 and 2 at the door: a tenant's listener and upstream are
/// host addresses of its own networks; its tunnels' selectors stay inside
/// its networks and infrastructure tunnels are the fleet controller's; its
/// networks use VNIs of its grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_1_and_2_specs_stay_inside_the_tenant() {
    let agent = AgentProcess::start();
    let (_admin, red, _blue) = two_tenants(&agent).await;
    let ca = dpu_pki::Ca::generate("test service CA").unwrap();
    let id = ca
        .issue("spiffe://dpu.local/svc", &["svc.example"])
        .unwrap();
    let listener = |listen: &str, upstream: &str| {
        json!({"listen": listen, "upstream": upstream, "certificate_pem": id.cert_pem,
               "private_key_pem": id.key_pem, "ktls": "auto"})
    };
    let api = format!("127.0.0.1:{}", agent.port());
    let attacks = [
        // Relay into the agent's API and loopback services.
        (listener("10.10.0.1:443", &api), "spec.upstream"),
        (listener("10.10.0.1:443", "[::1]:6640"), "spec.upstream"),
        (
            listener("10.10.0.1:443", "169.254.169.254:80"),
            "spec.upstream",
        ),
        // Into another tenant's network.
        (listener("10.10.0.1:443", "10.20.0.5:80"), "spec.upstream"),
        // Listening on every address of the DPU.
        (listener("0.0.0.0:443", "10.10.0.5:80"), "spec.listen"),
    ];
    all_refused(&red, Kind::TlsListener, "l", &attacks).await;
    put_ok(
        &red,
        Kind::TlsListener,
        "l-ok",
        Some("red"),
        listener("10.10.0.1:443", "10.10.0.5:80"),
    )
    .await;

    let tunnel = |local: &[&str], extra: Value| {
        let base = json!({"local": "192.0.2.1", "remote": "192.0.2.3", "local_subnets": local,
               "remote_subnets": ["10.77.0.0/24"], "mode": "tunnel", "cipher": "aes-gcm-128",
               "spi_in": 7000, "spi_out": 7001, "key_in": IPSEC_KEY_A, "key_out": IPSEC_KEY_B,
               "offload": "auto"});
        merged(base, extra)
    };
    let attacks = [
        // Capture blue's traffic, or everyone's.
        (
            tunnel(&["10.20.0.0/24"], json!({})),
            "spec.local_subnets[0]",
        ),
        (tunnel(&["0.0.0.0/0"], json!({})), "spec.local_subnets[0]"),
        // Claim the underlay.
        (
            tunnel(&["10.10.0.0/24"], json!({"scope": "infrastructure"})),
            "spec.scope",
        ),
    ];
    all_refused(&red, Kind::IpsecTunnel, "t", &attacks).await;
    put_ok(
        &red,
        Kind::IpsecTunnel,
        "t-ok",
        Some("red"),
        tunnel(&["10.10.0.0/25"], json!({})),
    )
    .await;

    // VNIs: outside the grant, or inside blue's.
    for vni in [5000, 250] {
        let refused = put_refused(
            &red,
            Kind::Network,
            &format!("n{vni}"),
            Some("red"),
            json!({"vni": vni, "cidr": "10.12.0.0/24", "encap": "vxlan"}),
        )
        .await;
        assert_eq!(refused, (422, Some("spec.vni".into())), "VNI {vni}");
    }
}

/// Invariant 4 at the door: a volume cannot claim another tenant's host
/// NQN, nor one the agent derives for another volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_4_host_nqns_are_the_volumes_own() {
    let agent = AgentProcess::start();
    let (_admin, red, _blue) = two_tenants(&agent).await;
    red_disk(&red).await;
    for hostnqn in [
        "nqn.2020-01.com.blue:host",
        "nqn.2026-11.dev.dpu-agent:blue:blue-vol:initiator",
    ] {
        let refused = put_refused(
            &red,
            Kind::Volume,
            "red-vol",
            Some("red"),
            json!({"function": "red-disk", "source": {"nvmeof": {"transport": "tcp",
                       "address": "192.0.2.10", "port": 4420,
                       "subnqn": "nqn.2014-08.org.example:shared", "hostnqn": hostnqn}}}),
        )
        .await;
        assert_eq!(
            refused,
            (422, Some("spec.source.nvmeof.hostnqn".into())),
            "{hostnqn}"
        );
    }
}

/// Invariant 6: oversized lists are refused with the field named, quickly,
/// while the agent keeps answering others; unauthenticated callers grow no
/// metrics series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_6_bounded_admission() {
    let agent = AgentProcess::start();
    let (admin, red, _blue) = two_tenants(&agent).await;
    put_ok(
        &red,
        Kind::Function,
        "red-fn",
        Some("red"),
        json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"}),
    )
    .await;
    // ~60k addresses: under the 1 MiB body limit.
    let ips: Vec<String> = (0..60_000)
        .map(|i| format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256))
        .collect();
    let subnets: Vec<String> = (0..30_000)
        .map(|i| format!("10.10.{}.{}/32", (i / 256) % 256, i % 256))
        .collect();
    let big_port = json!({"network": "red-net", "function": "red-fn",
                          "mac": "02:00:00:00:00:01", "ips": ips});
    let big_tunnel = json!({"local": "192.0.2.1", "remote": "192.0.2.2",
        "local_subnets": subnets, "remote_subnets": ["10.99.0.0/24"], "mode": "tunnel",
        "cipher": "aes-gcm-128", "spi_in": 9000, "spi_out": 9001, "key_in": IPSEC_KEY_A,
        "key_out": IPSEC_KEY_B, "offload": "auto"});
    for (kind, spec, field) in [
        (Kind::Port, big_port, "spec.ips"),
        (Kind::IpsecTunnel, big_tunnel, "spec.local_subnets"),
    ] {
        let started = Instant::now();
        let (attack, reader) = tokio::join!(red.put(kind, "big", Some("red"), spec, None), async {
            // A read by another caller while the attack is admitted.
            admin.list(Kind::Tenant, None).await
        });
        let took = started.elapsed();
        assert_eq!(status_of(attack.unwrap_err()), (422, Some(field.into())));
        reader.unwrap();
        // A liveness bound, not a benchmark: seconds, where an unbounded
        // pairwise check would take minutes.
        assert!(
            took < Duration::from_secs(10),
            "{kind} refused after {took:?}"
        );
    }
    assert_eq!(limits::IPS, 64);

    // Method names from unauthenticated callers do not become label values.
    let anon = agent.anonymous();
    for m in ["FROBNICATE", "XYZZY"] {
        let r = anon
            .raw(
                Method::from_bytes(m.as_bytes()).unwrap(),
                "/v1/tenants",
                None,
                &[],
            )
            .await
            .unwrap();
        assert!(r.status >= 400, "{m}: {}", r.status);
    }
    let metrics = admin.metrics().await.unwrap();
    assert!(!metrics.contains("FROBNICATE"), "{metrics}");
    assert!(!metrics.contains("XYZZY"), "{metrics}");
}

/// Invariant 7: a store with sealed secrets does not start without its
/// key, nor with another key; it never makes a new one silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_7_fail_closed_on_a_lost_seal_key() {
    let mut agent = AgentProcess::start();
    let (_admin, _red, _blue) = two_tenants(&agent).await;
    agent.kill9();
    let state = agent.state_dir();
    let key = state.join("seal.key");
    let saved = std::fs::read(&key).expect("seal.key");
    let start = || {
        Command::new(binary("dpu-agent"))
            .arg("dev")
            .arg("--state-dir")
            .arg(&state)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", agent.port()))
            .arg("--no-ovs")
            .env("DPU_AGENT_FUNCTIONS_BACKEND", "none")
            .output()
            .expect("run dpu-agent")
    };

    std::fs::remove_file(&key).unwrap();
    let out = start();
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started without its key: {stderr}");
    assert!(stderr.contains("seal.key"), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    assert!(!key.exists(), "a new key was made");

    // Another key of the right shape.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .unwrap();
        std::io::Write::write_all(&mut f, &[7u8; 32]).unwrap();
    }
    let out = start();
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started with a wrong key: {stderr}");
    assert!(stderr.contains("does not open"), "{stderr}");

    // The right key: everything is back, secrets included.
    std::fs::write(&key, &saved).unwrap();
    agent.restart();
    let tun = agent
        .admin()
        .get(Kind::IpsecTunnel, "blue-tun")
        .await
        .unwrap();
    assert_eq!(tun.spec["key_in_set"], json!(true), "{}", tun.spec);

    // Owner-only modes on what holds secrets.
    use std::os::unix::fs::PermissionsExt;
    for path in [state.clone(), state.join("pki"), key.clone()] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    }
}
