//! Client-side helpers the end-to-end suites share: creating objects,
//! reading a refusal, replaying the watch history.

use dpu_api::Kind;
use dpu_api::client::{Client, ClientError, PutResult, WatchFilter};
use dpu_api::object::Event;
use futures_util::StreamExt;
use serde_json::Value;

/// `PUT` `spec` as `kind`/`id` (of `tenant`, no precondition); a refusal
/// fails the test with the call and the agent's answer.
pub async fn put_ok(
    client: &Client,
    kind: Kind,
    id: &str,
    tenant: Option<&str>,
    spec: Value,
) -> PutResult {
    client
        .put(kind, id, tenant, spec, None)
        .await
        .unwrap_or_else(|e| panic!("PUT {kind} {id}: {e}"))
}

/// The HTTP status (0 when none came) and the field a refusal names.
pub fn status_of(e: ClientError) -> (u16, Option<String>) {
    (e.status().unwrap_or(0), e.field().map(str::to_string))
}

/// A refusal's detail and field as one line (the error's text when the
/// agent sent no problem document).
pub fn detail_of(e: &ClientError) -> String {
    e.problem()
        .map(|p| format!("{} {:?}", p.detail, p.field))
        .unwrap_or_else(|| e.to_string())
}

/// The events `client` may see from `since` on, as `filter` selects them,
/// up to now (the watch is not followed).
pub async fn history_since(client: &Client, since: u64, filter: WatchFilter) -> Vec<Event> {
    let filter = WatchFilter {
        follow: false,
        ..filter
    };
    let mut watch = client
        .watch(since, &filter)
        .await
        .unwrap_or_else(|e| panic!("watch since {since}: {e}"));
    let mut events = Vec::new();
    while let Some(ev) = watch.next().await {
        events.push(ev.unwrap_or_else(|e| panic!("watch event: {e}")));
    }
    events
}

/// Every event `client` may see, from the start up to now.
pub async fn history(client: &Client) -> Vec<Event> {
    history_since(client, 0, WatchFilter::default()).await
}

/// A `PUT` the agent must refuse: its status and the field it names (as
/// [`status_of`]). An acceptance fails the test.
pub async fn put_refused(
    client: &Client,
    kind: Kind,
    id: &str,
    tenant: Option<&str>,
    spec: Value,
) -> (u16, Option<String>) {
    match client.put(kind, id, tenant, spec, None).await {
        Ok(_) => panic!("PUT {kind} {id} was accepted"),
        Err(e) => status_of(e),
    }
}

/// A TLS client (ring; the default protocol versions) that trusts only the
/// CA certificates in `ca_pem`.
pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// An IPsec key the suites use (hex: a 16-byte AES-GCM-128 key and its
/// 4-byte salt).
pub const IPSEC_KEY_A: &str = "00112233445566778899aabbccddeeff0a0b0c0d";
/// A second key, for the other direction (see [`IPSEC_KEY_A`]).
pub const IPSEC_KEY_B: &str = "ffeeddccbbaa99887766554433221100deadbeef";

/// The spec of an AES-GCM-128 tunnel-mode IPsec tunnel from 192.0.2.1 to
/// 192.0.2.2 between `local_subnet` and `remote_subnet`, with SPIs `spi_in`
/// and `spi_out`, [`IPSEC_KEY_A`] in and [`IPSEC_KEY_B`] out, offload `auto`:
/// the tunnel the suites create when the tunnel itself is not what they test.
pub fn ipsec_tunnel_spec(
    local_subnet: &str,
    remote_subnet: &str,
    spi_in: u32,
    spi_out: u32,
) -> Value {
    serde_json::json!({"local": "192.0.2.1", "remote": "192.0.2.2",
        "local_subnets": [local_subnet], "remote_subnets": [remote_subnet],
        "mode": "tunnel", "cipher": "aes-gcm-128", "spi_in": spi_in, "spi_out": spi_out,
        "key_in": IPSEC_KEY_A, "key_out": IPSEC_KEY_B, "offload": "auto"})
}

/// A tenant's NIC as the network suites make it: `net` function `id` on
/// PF 0 with `mac`, and port `id` of it on `network` with `mac`, the
/// address `ip` and the ingress security rules `ingress`, both of `tenant`
/// (as [`put_ok`]).
pub async fn put_net_function_and_port(
    client: &Client,
    tenant: &str,
    network: &str,
    id: &str,
    mac: &str,
    ip: &str,
    ingress: Value,
) {
    let function = serde_json::json!({"type": "net", "pf": "pf0", "mac": mac});
    put_ok(client, Kind::Function, id, Some(tenant), function).await;
    let port = serde_json::json!({"network": network, "function": id, "mac": mac, "ips": [ip],
        "security": {"ingress": ingress}});
    put_ok(client, Kind::Port, id, Some(tenant), port).await;
}
