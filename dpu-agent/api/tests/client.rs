//! The client against a scripted agent: a hyper server with rustls that
//! requires a client certificate from a CA made by rcgen at test time (and
//! the same server over plain HTTP). It checks what the client sends (paths,
//! queries, headers, bodies) and how it reads answers: revisions, problem
//! documents, NDJSON split at awkward places.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dpu_api::Kind;
use dpu_api::client::{Client, ClientError, Method, WatchFilter};
use dpu_api::object::{ApplyRequest, HostInventory, ObjectWrite, Prune};
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &ca).unwrap();

    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.subject_alt_names = vec![SanType::URI(
        "spiffe://dpu.local/fleet-controller".try_into().unwrap(),
    )];
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &ca).unwrap();

    Pki {
        ca: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    if_match: Option<String>,
    body: Value,
}

type Log = Arc<Mutex<Vec<Seen>>>;
type Body = BoxBody<Bytes, Infallible>;

fn object(kind: &str, id: &str, generation: u64) -> Value {
    json!({"kind": kind, "id": id, "tenant": "acme", "generation": generation,
           "spec": {"vni": 5, "cidr": "10.0.0.0/24", "encap": "vxlan"},
           "status": {"observed_generation": 0, "phase": "Pending", "conditions": []}})
}

fn event_line(revision: u64, id: &str) -> String {
    let mut line = json!({"revision": revision, "type": "added",
                          "object": object("Network", id, 1)})
    .to_string();
    line.push('\n');
    line
}

fn reply(
    status: u16,
    content_type: &str,
    revision: Option<u64>,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", content_type);
    if let Some(r) = revision {
        b = b.header("x-revision", r.to_string());
    }
    b.body(Full::new(body.into()).boxed()).unwrap()
}

fn json_reply(status: u16, revision: Option<u64>, v: Value) -> Response<Body> {
    reply(status, "application/json", revision, v.to_string())
}

fn problem(status: u16, title: &str, detail: &str, field: Option<&str>) -> Response<Body> {
    let mut p = json!({"type": "urn:dpu:problem:x", "title": title, "status": status,
                       "detail": detail});
    if let Some(f) = field {
        p["field"] = json!(f);
    }
    reply(status, "application/problem+json", None, p.to_string())
}

/// NDJSON sent in pieces that cut lines in the middle, with a blank
/// keep-alive line and pauses so the pieces arrive as separate chunks.
fn chunked_events() -> Response<Body> {
    let text = format!(
        "{}\n{}{}",
        event_line(11, "net-a"),
        event_line(12, "net-b"),
        event_line(13, "net-c"),
    );
    let bytes = text.into_bytes();
    let cuts = [0, 7, 8, 150, 151, 152, bytes.len() - 3, bytes.len()];
    let pieces: Vec<Bytes> = cuts
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
        .collect();
    let stream = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(Frame::data(piece))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/x-ndjson")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

async fn handle(req: Request<Incoming>, log: Log) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let if_match = req
        .headers()
        .get("if-match")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    log.lock().unwrap().push(Seen {
        method: method.clone(),
        path_and_query: path_and_query.clone(),
        if_match: if_match.clone(),
        body,
    });
    let path = path_and_query.split('?').next().unwrap_or_default();
    let resp = match (method.as_str(), path) {
        ("PUT", "/v1/networks/net-a") if if_match.as_deref() == Some("\"3\"") => problem(
            412,
            "Precondition Failed",
            "networks/net-a is at generation 4, not 3",
            None,
        ),
        ("PUT", "/v1/networks/net-a") => json_reply(201, Some(7), object("Network", "net-a", 1)),
        ("PUT", "/v1/networks/net-b") => json_reply(200, Some(9), object("Network", "net-b", 2)),
        ("PUT", "/v1/networks/bad") => problem(
            422,
            "Unprocessable Content",
            "spec.vni: 0 is outside 1-16777215",
            Some("spec.vni"),
        ),
        ("GET", "/v1/networks/net-a") => json_reply(200, None, object("Network", "net-a", 1)),
        ("GET", "/v1/networks") => json_reply(
            200,
            None,
            json!({"revision": 9, "items": [object("Network", "net-a", 1)]}),
        ),
        ("DELETE", "/v1/networks/net-a") => reply(202, "application/json", Some(10), "{}"),
        ("DELETE", "/v1/networks/ghost") => problem(404, "Not Found", "no networks/ghost", None),
        ("POST", "/v1/apply") => json_reply(
            200,
            Some(20),
            json!({"revision": 20, "results": [
                {"kind": "Network", "id": "net-a", "outcome": "created", "generation": 1}]}),
        ),
        ("POST", "/v1/plan") => json_reply(
            200,
            None,
            json!({"revision": 19, "objects": [
                {"kind": "Network", "id": "net-a", "tenant": "acme", "outcome": "created",
                 "actions": ["add-flow table=0,tun_id=5 actions=goto_table:10"]}]}),
        ),
        ("GET", "/v1/watch") | ("GET", "/v1/host/assignments")
            if path_and_query.contains("watch=1") || path == "/v1/watch" =>
        {
            chunked_events()
        }
        ("GET", "/v1/host/assignments") => {
            json_reply(200, None, json!({"revision": 3, "items": []}))
        }
        ("GET", "/v1/inventory") => json_reply(
            200,
            None,
            json!({"dpu": {"version": "0.1.0"}, "hosts": [
                {"host": "h1", "reported_at": "2026-01-01T00:00:00Z", "devices": []}]}),
        ),
        ("PUT", "/v1/host/inventory") => reply(204, "text/plain", Some(4), ""),
        ("GET", "/healthz") => reply(200, "text/plain", None, "ok\n"),
        ("GET", "/readyz") => reply(503, "text/plain", None, "ovs: not connected\n"),
        ("GET", "/metrics") => reply(200, "text/plain", None, "dpu_objects 3\n"),
        ("GET", "/v1/openapi.json") => json_reply(200, None, json!({"openapi": "3.0.3"})),
        ("GET", "/v1/ports/boom") => reply(500, "text/plain", None, "x".repeat(10_000)),
        _ => reply(404, "text/plain", None, ""),
    };
    Ok(resp)
}

struct Server {
    url: String,
    log: Log,
}

impl Server {
    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().last().cloned().expect("a request")
    }
}

/// Starts the scripted agent, with mutual TLS when given the PKI.
async fn start(pki: Option<&Pki>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let acceptor = pki.map(|pki| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki.ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain = CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let server_log = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = server_log.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, log.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        // A refused handshake is what some tests want.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    let scheme = if pki.is_some() { "https" } else { "http" };
    Server {
        url: format!("{scheme}://localhost:{}", addr.port()),
        log,
    }
}

fn mtls_client(server: &Server, pki: &Pki) -> Client {
    Client::from_pem(
        &server.url,
        pki.ca.as_bytes(),
        Some((pki.client_cert.as_bytes(), pki.client_key.as_bytes())),
    )
    .unwrap()
}

#[tokio::test]
async fn crud_over_mutual_tls() {
    let pki = pki();
    let server = start(Some(&pki)).await;
    let client = mtls_client(&server, &pki);

    let spec = json!({"vni": 5, "cidr": "10.0.0.0/24", "encap": "vxlan"});
    let put = client
        .put(Kind::Network, "net-a", Some("acme"), spec.clone(), None)
        .await
        .unwrap();
    assert!(put.created);
    assert_eq!(put.revision, 7);
    assert_eq!(put.object.id, "net-a");
    let seen = server.last();
    assert_eq!(seen.path_and_query, "/v1/networks/net-a");
    assert_eq!(seen.body, json!({"tenant": "acme", "spec": spec}));
    assert_eq!(seen.if_match, None);

    let put = client
        .put(Kind::Network, "net-b", None, spec.clone(), Some(1))
        .await
        .unwrap();
    assert!(!put.created);
    assert_eq!(put.revision, 9);
    assert_eq!(server.last().if_match.as_deref(), Some("\"1\""));
    assert_eq!(server.last().body, json!({"spec": spec}));

    let err = client
        .put(Kind::Network, "net-a", None, spec.clone(), Some(3))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(412));

    let got = client.get(Kind::Network, "net-a").await.unwrap();
    assert_eq!(got.generation, 1);
    let list = client.list(Kind::Network, Some("acme")).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(server.last().path_and_query, "/v1/networks?tenant=acme");
    client.list(Kind::Network, None).await.unwrap();
    assert_eq!(server.last().path_and_query, "/v1/networks");

    assert_eq!(client.delete(Kind::Network, "net-a").await.unwrap(), 10);
    assert_eq!(server.last().method, "DELETE");
    let err = client.delete(Kind::Network, "ghost").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[tokio::test]
async fn apply_plan_inventory_and_probes() {
    let pki = pki();
    let server = start(Some(&pki)).await;
    let client = mtls_client(&server, &pki);

    let request = ApplyRequest {
        objects: vec![ObjectWrite {
            kind: "networks".into(),
            id: "net-a".into(),
            tenant: Some("acme".into()),
            spec: json!({"vni": 5, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
        }],
        prune: Some(Prune {
            tenant: "acme".into(),
        }),
    };
    let applied = client.apply(&request).await.unwrap();
    assert_eq!(applied.revision, 20);
    assert_eq!(
        server.last().body,
        serde_json::to_value(&request).unwrap(),
        "the apply body is the request as is"
    );
    let plan = client.plan(&request).await.unwrap();
    assert_eq!(plan.objects[0].actions.len(), 1);
    assert_eq!(server.last().path_and_query, "/v1/plan");

    let inv = client.inventory().await.unwrap();
    assert_eq!(inv.hosts[0].host, "h1");
    client
        .put_host_inventory(&HostInventory::default())
        .await
        .unwrap();
    assert_eq!(server.last().method, "PUT");
    assert_eq!(server.last().path_and_query, "/v1/host/inventory");
    assert_eq!(client.host_assignments().await.unwrap().revision, 3);

    assert_eq!(client.healthz().await.unwrap(), (200, "ok\n".to_string()));
    assert_eq!(
        client.readyz().await.unwrap(),
        (503, "ovs: not connected\n".to_string())
    );
    assert_eq!(client.metrics().await.unwrap(), "dpu_objects 3\n");
    assert_eq!(client.openapi().await.unwrap()["openapi"], "3.0.3");
}

#[tokio::test]
async fn errors_keep_the_problem_or_the_body() {
    let pki = pki();
    let server = start(Some(&pki)).await;
    let client = mtls_client(&server, &pki);

    let err = client
        .put(Kind::Network, "bad", Some("acme"), json!({"vni": 0}), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert_eq!(err.field(), Some("spec.vni"));
    assert_eq!(
        err.to_string(),
        "422 Unprocessable Content: spec.vni: 0 is outside 1-16777215 (field spec.vni)"
    );

    let raw = client
        .raw(Method::GET, "/v1/ports/boom", None, &[])
        .await
        .unwrap();
    assert_eq!(raw.status, 500, "raw returns error answers as they are");
    assert_eq!(raw.body.len(), 10_000);
    match client.get(Kind::Port, "boom").await.unwrap_err() {
        ClientError::Http { status, body } => {
            assert_eq!(status, 500);
            assert!(body.len() < 5000, "error bodies are cut: {}", body.len());
        }
        other => panic!("want Http, got {other:?}"),
    }
    let err = client.get(Kind::Port, "x").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Http { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn watch_reassembles_lines_and_sends_the_filter() {
    let pki = pki();
    let server = start(Some(&pki)).await;
    let client = mtls_client(&server, &pki);

    let filter = WatchFilter {
        kind: Some(Kind::IpsecTunnel),
        id: Some("t-1".into()),
        follow: false,
    };
    let events: Vec<_> = client
        .watch(10, &filter)
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        events.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [11, 12, 13]
    );
    assert_eq!(events[1].object.id, "net-b");
    assert_eq!(
        server.last().path_and_query,
        "/v1/watch?since=10&kind=ipsec-tunnels&id=t-1&follow=false"
    );

    client
        .watch(0, &WatchFilter::default())
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.last().path_and_query, "/v1/watch?since=0");

    let events: Vec<_> = client
        .watch_host_assignments()
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(events.len(), 3);
    assert_eq!(server.last().path_and_query, "/v1/host/assignments?watch=1");
}

#[tokio::test]
async fn the_handshake_needs_the_right_ca_and_a_client_certificate() {
    let pki = pki();
    let server = start(Some(&pki)).await;

    let anonymous = Client::from_pem(&server.url, pki.ca.as_bytes(), None).unwrap();
    let err = anonymous.healthz().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");

    let other = self::pki();
    let wrong_ca = Client::from_pem(
        &server.url,
        other.ca.as_bytes(),
        Some((pki.client_cert.as_bytes(), pki.client_key.as_bytes())),
    )
    .unwrap();
    let err = wrong_ca.healthz().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");

    // A client certificate from another CA.
    let stranger = Client::from_pem(
        &server.url,
        pki.ca.as_bytes(),
        Some((other.client_cert.as_bytes(), other.client_key.as_bytes())),
    )
    .unwrap();
    assert!(stranger.healthz().await.is_err());
    assert!(server.seen().is_empty(), "no request got through");
}

#[tokio::test]
async fn plain_http_for_insecure_listen() {
    let server = start(None).await;
    let missing = Path::new("/nonexistent/ca.pem");
    let client = Client::from_files(&server.url, missing, Some((missing, missing))).unwrap();
    assert_eq!(client.healthz().await.unwrap().0, 200);
    let client = Client::plain(&server.url).unwrap();
    let put = client
        .put(Kind::Network, "net-a", Some("acme"), json!({}), None)
        .await
        .unwrap();
    assert_eq!(put.revision, 7);
    assert!(Client::plain("https://127.0.0.1:9443").is_err());
}

#[test]
fn pem_files_are_named_and_keys_never_shown() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = write("ca.pem", &pki.ca);
    let cert = write("admin.pem", &pki.client_cert);
    let key = write("admin-key.pem", &pki.client_key);
    let garbage = write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    );
    let url = "https://127.0.0.1:9443";

    let client = Client::from_files(url, &ca, Some((&cert, &key))).unwrap();
    let dbg = format!("{client:?}");
    let key_body: String = pki
        .client_key
        .lines()
        .nth(1)
        .unwrap()
        .chars()
        .take(20)
        .collect();
    assert!(!dbg.contains(&key_body), "{dbg}");
    assert!(dbg.contains("127.0.0.1:9443"), "{dbg}");

    let missing = dir.path().join("nope.pem");
    let err = Client::from_files(url, &missing, None).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let err = Client::from_files(url, &garbage, None).unwrap_err();
    assert!(err.to_string().contains("garbage.pem"), "{err}");

    // The certificate where the key should be, and the reverse.
    let err = Client::from_files(url, &ca, Some((&cert, &cert))).unwrap_err();
    assert!(err.to_string().contains("admin.pem"), "{err}");
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    let err = Client::from_files(url, &ca, Some((&key, &key))).unwrap_err();
    assert!(err.to_string().contains("admin-key.pem"), "{err}");
    assert!(!err.to_string().contains(&key_body), "{err}");

    // A key that does not belong to the certificate.
    let other = self::pki();
    let other_key = write("other-key.pem", &other.client_key);
    let err = Client::from_files(url, &ca, Some((&cert, &other_key))).unwrap_err();
    let chain = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(matches!(err, ClientError::Tls(_)), "{chain}");
    assert!(!chain.contains(&key_body), "{chain}");

    for bad in ["127.0.0.1:9443", "ftp://x", "https://", "https://h:1/?q=1"] {
        let err = Client::from_pem(bad, pki.ca.as_bytes(), None).unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{bad}: {err:?}");
    }
}
