//! Keys never leak, checked on the real agent: a `dpu-agent dev` process
//! (debug logging, text and then JSON log format) gets an `ipsec-tunnels`
//! object and a `tls-listeners` object with known key material, a rekey, a
//! plan, and bad requests that carry the keys (wrong length, not hex, a TLS
//! key that does not match its certificate, malformed JSON). Then every
//! place a key could surface is searched for it, in every form it has (hex
//! as sent, upper-case hex, the raw bytes, the PEM body, the DER bytes):
//! the agent's stdout/stderr, the API's answers (PUT/GET/list, error
//! bodies, plan, watch events, `/metrics`), and the store's files on disk
//! (where keys are sealed by the store's AEAD). `Debug` output of the key
//! types is covered by the crate tests; here whatever `Debug` reaches the
//! debug-level log is covered by the log search.
//!
//! The TLS listener runs in the tenant's private network namespace (the
//! `dev` mode's tenant context), on addresses of the tenant's network.
//! The IPsec controller of `dpu-agent dev` programs a private network
//! namespace; this sandbox's kernel has no ESP, so the SA adds fail and the
//! kernel's refusal is reported in status — one more place searched.

use std::time::Duration;

use dpu_api::client::{Client, Method};
use dpu_tests::agent::AgentProcess;
use serde_json::{Value, json};

const KEY_IN: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75e0badf00d";
const KEY_OUT: &str = "a11ce5a11ce5a11ce5a11ce5a11ce5a1c0ffee00";
const KEY_REKEY: &str = "b0b5ecb0b5ecb0b5ecb0b5ecb0b5ecb0feedface";

/// Every form in which `secret` could show up.
struct Needle {
    what: String,
    bytes: Vec<u8>,
}

fn hex_needles(name: &str, hex_key: &str) -> Vec<Needle> {
    let raw = hex::decode(hex_key).unwrap();
    vec![
        Needle {
            what: format!("{name} (hex)"),
            bytes: hex_key.as_bytes().to_vec(),
        },
        Needle {
            what: format!("{name} (upper-case hex)"),
            bytes: hex_key.to_uppercase().into_bytes(),
        },
        // The AEAD key without the salt, and the middle of it: a substring
        // survives any framing.
        Needle {
            what: format!("{name} (raw bytes)"),
            bytes: raw[4..16].to_vec(),
        },
        Needle {
            what: format!("{name} (partial hex)"),
            bytes: hex_key.as_bytes()[8..32].to_vec(),
        },
    ]
}

fn pem_needles(name: &str, pem: &str) -> Vec<Needle> {
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .unwrap();
    let der = der.secret_der();
    let mut v: Vec<Needle> = body
        .iter()
        // The ends of the lines: the starts are the PKCS#8 header every
        // P-256 key shares.
        .map(|l| Needle {
            what: format!("{name} (PEM line)"),
            bytes: l.as_bytes()[l.len() - 20..].to_vec(),
        })
        .collect();
    // JSON escapes newlines; the base64 alone is enough to find.
    v.push(Needle {
        what: format!("{name} (DER bytes)"),
        bytes: der[der.len() - 24..].to_vec(),
    });
    v
}

fn find(needles: &[Needle], place: &str, hay: &[u8], found: &mut Vec<String>) {
    for n in needles {
        if hay.windows(n.bytes.len()).any(|w| w == n.bytes.as_slice()) {
            found.push(format!("{} in {place}", n.what));
        }
    }
}

fn free_port() -> u16 {
    dpu_tests::agent::free_port()
}

fn tunnel(key_in: &str, key_out: &str, spi_in: u32) -> Value {
    json!({"local": "192.0.2.1", "remote": "192.0.2.2", "local_subnets": ["10.1.0.0/24"],
           "remote_subnets": ["10.2.0.0/24"], "mode": "tunnel", "cipher": "aes-gcm-128",
           "spi_in": spi_in, "spi_out": spi_in + 1, "key_in": key_in, "key_out": key_out,
           "offload": "auto"})
}

fn body(tenant: Option<&str>, spec: &Value) -> Vec<u8> {
    let mut b = json!({ "spec": spec });
    if let Some(t) = tenant {
        b["tenant"] = json!(t);
    }
    serde_json::to_vec(&b).unwrap()
}

/// Sends one request, keeps the answer (status line and body) for the search.
async fn call(
    c: &Client,
    answers: &mut Vec<(String, Vec<u8>)>,
    method: Method,
    path: &str,
    payload: Option<Vec<u8>>,
) -> u16 {
    let r = c
        .raw(
            method.clone(),
            path,
            payload,
            &[("content-type", "application/json")],
        )
        .await
        .unwrap();
    answers.push((format!("{method} {path} → {}", r.status), r.body.to_vec()));
    r.status
}

/// Drives the agent through everything that touches keys; returns the API's
/// answers.
async fn exercise(
    c: &Client,
    tls_cert: &str,
    tls_key: &str,
    other_key: &str,
    round: u32,
) -> Vec<(String, Vec<u8>)> {
    let mut a = Vec::new();
    let t = Some("acme");
    if round == 0 {
        assert_eq!(
            call(
                c,
                &mut a,
                Method::PUT,
                "/v1/tenants/acme",
                Some(body(Some("acme"), &json!({})))
            )
            .await,
            201
        );
        // The tenant's address space: the tunnel's local subnets and the
        // listener's addresses lie inside it.
        assert_eq!(
            call(
                c,
                &mut a,
                Method::PUT,
                "/v1/networks/acme-net",
                Some(body(
                    Some("acme"),
                    &json!({"vni": 4100, "cidr": "10.1.0.0/24", "encap": "vxlan"})
                ))
            )
            .await,
            201
        );
    }
    let spi = 0x4000 + round * 16;
    let st = call(
        c,
        &mut a,
        Method::PUT,
        "/v1/ipsec-tunnels/tun1",
        Some(body(t, &tunnel(KEY_IN, KEY_OUT, spi))),
    )
    .await;
    assert!(st == 200 || st == 201, "{a:?}");
    // In the tenant's network namespace (not the agent's loopback).
    let listener = json!({"listen": format!("10.1.0.10:{}", free_port()),
        "upstream": format!("10.1.0.20:{}", free_port()),
        "certificate_pem": tls_cert, "private_key_pem": tls_key, "ktls": "auto"});
    let st = call(
        c,
        &mut a,
        Method::PUT,
        "/v1/tls-listeners/web",
        Some(body(t, &listener)),
    )
    .await;
    assert!(
        st == 200 || st == 201,
        "{:?}",
        String::from_utf8_lossy(&a[a.len() - 1].1)
    );

    // Bad requests carrying the keys: each must fail without echoing them.
    let too_long = format!("{KEY_IN}{KEY_OUT}");
    let not_hex = format!("{}zz", &KEY_IN[..38]);
    let mut bad_len = tunnel(&too_long, KEY_OUT, spi + 2);
    bad_len["cipher"] = json!("aes-gcm-256");
    // (path, body, expected 422 field): the issue's bad-input cases, each
    // also a chance to echo a key.
    let mut spi_zero = tunnel(KEY_IN, KEY_OUT, spi + 10);
    spi_zero["spi_in"] = json!(0);
    let mut overlapping = tunnel(KEY_OUT, KEY_IN, spi + 12);
    overlapping["local_subnets"] = json!(["10.1.0.128/25"]);
    let bad: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "/v1/ipsec-tunnels/bad1",
            body(t, &bad_len),
            Some("spec.key_in"),
        ),
        (
            "/v1/ipsec-tunnels/bad2",
            body(t, &tunnel(&not_hex, KEY_OUT, spi + 4)),
            Some("spec.key_in"),
        ),
        // The key in a field of the wrong type.
        (
            "/v1/ipsec-tunnels/bad3",
            body(t, &{
                let mut s = tunnel(KEY_IN, KEY_OUT, spi + 6);
                s["key_in"] = json!([KEY_IN]);
                s
            }),
            None,
        ),
        // tun1's SPI again, with another key.
        (
            "/v1/ipsec-tunnels/bad4",
            body(t, &tunnel(KEY_OUT, KEY_IN, spi)),
            Some("spec.spi_in"),
        ),
        (
            "/v1/ipsec-tunnels/bad5",
            body(t, &spi_zero),
            Some("spec.spi_in"),
        ),
        (
            "/v1/ipsec-tunnels/bad6",
            body(t, &overlapping),
            Some("spec.local_subnets"),
        ),
        (
            "/v1/tls-listeners/bad7",
            body(t, &{
                let mut l = listener.clone();
                l["private_key_pem"] = json!(other_key);
                l
            }),
            Some("spec.private_key_pem"),
        ),
        (
            "/v1/tls-listeners/bad8",
            body(t, &{
                let mut l = listener.clone();
                l["certificate_pem"] = json!(tls_key);
                l
            }),
            Some("spec.certificate_pem"),
        ),
        // Not JSON at all, with the key in it.
        (
            "/v1/ipsec-tunnels/bad9",
            format!("{{\"tenant\": \"acme\", \"spec\": {{\"key_in\": \"{KEY_IN}\"").into_bytes(),
            None,
        ),
    ];
    for (path, payload, field) in bad {
        let st = call(c, &mut a, Method::PUT, path, Some(payload)).await;
        let answer: Value = serde_json::from_slice(&a[a.len() - 1].1).unwrap_or(Value::Null);
        match field {
            Some(f) => {
                assert_eq!(st, 422, "{path}: {answer}");
                assert_eq!(answer["field"], json!(f), "{path}: {answer}");
            }
            None => assert!((400..500).contains(&st), "{path}: {st} {answer}"),
        }
        // Nothing stored.
        let get = c.raw(Method::GET, path, None, &[]).await.unwrap();
        assert_eq!(get.status, 404, "{path} was stored");
    }
    // A plan of a rekey, and the rekey itself.
    let plan = json!({"objects": [{"kind": "ipsec-tunnels", "id": "tun1", "tenant": "acme",
        "spec": tunnel(KEY_REKEY, KEY_IN, spi + 8)}]});
    assert_eq!(
        call(
            c,
            &mut a,
            Method::POST,
            "/v1/plan",
            Some(serde_json::to_vec(&plan).unwrap())
        )
        .await,
        200
    );
    call(
        c,
        &mut a,
        Method::PUT,
        "/v1/ipsec-tunnels/tun1",
        Some(body(t, &tunnel(KEY_REKEY, KEY_IN, spi + 8))),
    )
    .await;
    // Let the controllers run (and fail to add SAs without ESP), then read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for path in [
        "/v1/ipsec-tunnels/tun1",
        "/v1/ipsec-tunnels?tenant=acme",
        "/v1/tls-listeners/web",
        "/v1/tls-listeners",
        "/metrics",
    ] {
        assert_eq!(
            call(c, &mut a, Method::GET, path, None).await,
            200,
            "{path}"
        );
    }
    let tun = a
        .iter()
        .find(|(w, _)| w.starts_with("GET /v1/ipsec-tunnels/tun1"))
        .map(|(_, b)| serde_json::from_slice::<Value>(b).unwrap())
        .unwrap();
    assert_eq!(tun["spec"]["key_in_set"], json!(true), "{tun}");
    assert_eq!(tun["spec"]["key_out_set"], json!(true), "{tun}");
    assert!(tun["spec"].get("key_in").is_none(), "{tun}");
    // The events so far, as a watcher sees them (the stream stays open: read
    // what arrives within a second).
    let mut events = Vec::new();
    if let Ok(Ok(resp)) = tokio::time::timeout(
        Duration::from_secs(2),
        c.raw(Method::GET, "/v1/watch?since=0", None, &[]),
    )
    .await
    {
        events = resp.body.to_vec();
    }
    a.push(("GET /v1/watch?since=0".into(), events));
    a
}

async fn run_round(
    format: &str,
    round: u32,
    agent: &mut Option<AgentProcess>,
    tls: &(String, String),
    other_key: &str,
) -> Vec<String> {
    let agent = agent.get_or_insert_with(|| {
        AgentProcess::start_with(&["--no-ovs", "--log-level", "debug", "--log-format", format])
    });
    let c = agent.admin();
    let answers = exercise(&c, &tls.0, &tls.1, other_key, round).await;
    let mut needles = Vec::new();
    for (n, k) in [
        ("key_in", KEY_IN),
        ("key_out", KEY_OUT),
        ("rekey key", KEY_REKEY),
    ] {
        needles.extend(hex_needles(n, k));
    }
    needles.extend(pem_needles("TLS private key", &tls.1));
    needles.extend(pem_needles("mismatched TLS key", other_key));
    // The search itself works: it finds every key where it is.
    let mut control = Vec::new();
    let sent = serde_json::to_vec(&tunnel(KEY_IN, KEY_OUT, 1)).unwrap();
    find(&needles, "control", &sent, &mut control);
    find(
        &needles,
        "control",
        &hex::decode(KEY_REKEY).unwrap(),
        &mut control,
    );
    find(&needles, "control", tls.1.as_bytes(), &mut control);
    let der = rustls_pemfile::private_key(&mut other_key.as_bytes())
        .unwrap()
        .unwrap();
    find(&needles, "control", der.secret_der(), &mut control);
    assert!(control.len() >= 8, "the search is blind: {control:?}");
    let mut found = Vec::new();
    for (what, body) in &answers {
        find(&needles, what, body, &mut found);
    }
    let log = agent.log();
    assert!(
        log.contains("DEBUG") || log.contains("\"level\":\"DEBUG\""),
        "debug logging is not on: {log}"
    );
    find(
        &needles,
        &format!("the agent's {format} log"),
        log.as_bytes(),
        &mut found,
    );
    // The store on disk: sealed secrets only.
    for entry in walk(&agent.state_dir()) {
        if let Ok(bytes) = std::fs::read(&entry) {
            find(&needles, &entry.display().to_string(), &bytes, &mut found);
        }
    }
    found
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_in_logs_answers_plan_metrics_or_store() {
    let ca = dpu_pki::Ca::generate("tenant web CA").unwrap();
    let id = ca.issue("spiffe://dpu.local/web", &["localhost"]).unwrap();
    let other = ca
        .issue("spiffe://dpu.local/other", &["localhost"])
        .unwrap();
    let tls = (id.cert_pem.clone(), id.key_pem.clone());

    // One agent logging text, one logging JSON, both at debug level.
    let mut found = Vec::new();
    for format in ["text", "json"] {
        let mut agent = None;
        found.extend(run_round(format, 0, &mut agent, &tls, &other.key_pem).await);
    }
    assert!(found.is_empty(), "keys leaked:\n{}", found.join("\n"));
}
