//! Operational endpoints: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text), `/v1/openapi.json`, the problem+json fallbacks, and the request
//! counter and latency histogram behind `dpu_agent_http_requests_total` and
//! `dpu_agent_http_request_duration_seconds`.
//!
//! Request labels come from closed sets only: the method (unknown ones are
//! `OTHER`), the route *template* the path matches in [`super::ROUTES`]
//! (`unmatched` otherwise; never the raw path) and the status class. The
//! duration is until the response head is ready, so a watch counts its
//! set-up, not how long it stays open.
//!
//! Host-stub leases: the agent notes when each host stub last called it
//! (inventory report or assignments); a host not heard from for
//! the configured lease (`host_lease_seconds`, default [`HOST_LEASE`]: the
//! host stub's default `lease_secs`) is `expired`, which is when that host
//! stub marks its functions unhealthy. A host known from
//! a stored report but not heard from since the agent started is counted
//! from the start.
//!
//! `/healthz` and `/readyz` answer any caller, certificate or not, so that
//! supervisors can probe them; everything else needs a role.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dpu_api::object::{ConditionStatus, Phase};
use dpu_api::{Kind, Problem};
use serde_json::json;

use super::AppState;
use super::authz::{Caller, Operation, authorize};
use super::error::ApiError;
use crate::metrics::{self, HTTP_BUCKETS, HistogramVec};

/// The OpenAPI 3 document of the v1 API, maintained beside the code.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// How long a host stub may stay silent before its lease counts as
/// expired: the host stub's default `lease_secs`.
pub const HOST_LEASE: Duration = Duration::from_secs(90);
/// Hosts whose last contact is remembered; more are not tracked (a host
/// identity needs a certificate from the agent's CA, so this is a guard,
/// not a limit anyone meets).
const MAX_TRACKED_HOSTS: usize = 4096;

/// What the server itself measures: requests by method and status, their
/// latency, and when each host stub last called.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    request_seconds: HistogramVec<3>,
    host_contacts: Mutex<BTreeMap<String, Instant>>,
    started: Instant,
    lease: Duration,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            request_seconds: HistogramVec::new(HTTP_BUCKETS, ["method", "route", "status_class"]),
            host_contacts: Mutex::default(),
            started: Instant::now(),
            lease: HOST_LEASE,
        }
    }
}

impl Metrics {
    /// With a host-stub lease other than [`HOST_LEASE`] (config
    /// `host_lease_seconds`).
    pub fn with_host_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// A host stub answered for `host` just now.
    pub fn host_contact(&self, host: &str) {
        if let Ok(mut m) = self.host_contacts.lock() {
            if let Some(t) = m.get_mut(host) {
                *t = Instant::now();
            } else if m.len() < MAX_TRACKED_HOSTS {
                m.insert(host.to_string(), Instant::now());
            }
        }
    }
}

/// `held` or `expired`: whether a host last heard from at `last` (or never
/// since `started`) is still within `lease` at `now`.
pub fn lease_state(
    last: Option<Instant>,
    started: Instant,
    now: Instant,
    lease: Duration,
) -> &'static str {
    let since = last.unwrap_or(started);
    if now.saturating_duration_since(since) > lease {
        "expired"
    } else {
        "held"
    }
}

/// The method as a label: a closed set, since any caller, authenticated or
/// not, can send any method name.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// The route template of [`super::ROUTES`] that `path` matches, preferring
/// the one with the most literal segments (as the router does), or
/// `unmatched`.
pub fn route_template(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(&'static str, usize)> = None;
    for (_, template) in super::ROUTES {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let fits = parts.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                !s.is_empty()
            } else {
                literal += 1;
                p == s
            }
        });
        if fits && best.is_none_or(|(_, l)| literal > l) {
            best = Some((template, literal));
        }
    }
    best.map(|(t, _)| t).unwrap_or("unmatched")
}

pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method().as_str());
    let route = route_template(req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    state.metrics.request_seconds.observe(
        [method, route, metrics::status_class(status)],
        started.elapsed().as_secs_f64(),
    );
    if let Ok(mut m) = state.metrics.requests.lock() {
        *m.entry((method, status)).or_default() += 1;
    }
    resp
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let synced = state.engine.initial_sync_done.load(Ordering::Relaxed);
    let backends = state.controllers.backends();
    let ready = synced && backends.values().all(|up| *up);
    let body = json!({
        "ready": ready,
        "initial_sync_done": synced,
        "backends": backends,
        "revision": state.store.revision(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

pub async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    authorize(&caller, &Operation::Metrics)?;
    let mut out = String::new();
    let info = &state.info;
    let _ = writeln!(
        out,
        "# HELP dpu_agent_info The agent's version and mode.\n# TYPE dpu_agent_info gauge"
    );
    let _ = writeln!(
        out,
        "dpu_agent_info{{version=\"{}\",mode=\"{}\"}} 1",
        info.version, info.mode
    );
    let _ = writeln!(
        out,
        "# HELP dpu_agent_store_revision The store's revision.\n# TYPE dpu_agent_store_revision gauge"
    );
    let _ = writeln!(out, "dpu_agent_store_revision {}", state.store.revision());
    let _ = writeln!(
        out,
        "# HELP dpu_agent_objects Stored objects by kind and phase.\n# TYPE dpu_agent_objects gauge"
    );
    // Objects whose status says they are not programmed, by the reason of
    // that condition: what the on-call person looks at first.
    let mut failing: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    for kind in Kind::ALL {
        // Counted by value, named once: a scrape at 10k objects allocates
        // nothing per object.
        let mut phases: Vec<(Phase, u64)> = Vec::new();
        for o in state.store.list(kind, None) {
            match phases.iter_mut().find(|(p, _)| *p == o.status.phase) {
                Some((_, n)) => *n += 1,
                None => phases.push((o.status.phase, 1)),
            }
            if o.status.phase != Phase::Ready
                && let Some(c) = o
                    .status
                    .conditions
                    .iter()
                    .find(|c| c.status == ConditionStatus::False)
            {
                *failing
                    .entry((kind.path(), metrics::reason_label(&c.reason)))
                    .or_default() += 1;
            }
        }
        let phases: BTreeMap<String, u64> = phases
            .into_iter()
            .map(|(p, n)| (p.to_string(), n))
            .collect();
        for (phase, n) in phases {
            let _ = writeln!(
                out,
                "dpu_agent_objects{{kind=\"{}\",phase=\"{phase}\"}} {n}",
                kind.path()
            );
        }
    }
    metrics::header(
        &mut out,
        "dpu_agent_reconcile_failing_objects",
        "gauge",
        "Objects not Ready with a False condition, by kind and that condition's reason (unknown reasons are Other).",
    );
    for ((kind, reason), n) in &failing {
        metrics::sample(
            &mut out,
            "dpu_agent_reconcile_failing_objects",
            &[("kind", kind), ("reason", reason)],
            n,
        );
    }
    let e = &state.engine;
    for (name, type_, help, value) in [
        (
            "dpu_agent_reconciles_total",
            "counter",
            "Reconciles run.",
            &e.reconciles,
        ),
        (
            "dpu_agent_reconcile_failures_total",
            "counter",
            "Reconciles that failed and were retried.",
            &e.failures,
        ),
        (
            "dpu_agent_reconcile_queue_depth",
            "gauge",
            "Objects waiting to be reconciled.",
            &e.queue_len,
        ),
    ] {
        metrics::header(&mut out, name, type_, help);
        metrics::sample(&mut out, name, &[], value.load(Ordering::Relaxed));
    }
    metrics::header(
        &mut out,
        "dpu_agent_reconcile_errors_total",
        "counter",
        "Failed reconciles by kind and reason (unknown reasons are Other).",
    );
    if let Ok(m) = e.errors.lock() {
        for ((kind, reason), n) in m.iter() {
            metrics::sample(
                &mut out,
                "dpu_agent_reconcile_errors_total",
                &[("kind", kind), ("reason", reason)],
                n,
            );
        }
    }
    e.reconcile_seconds.render(
        &mut out,
        "dpu_agent_reconcile_duration_seconds",
        "Time one reconcile took, by kind and outcome (ok, error).",
    );
    e.queue_seconds.render(
        &mut out,
        "dpu_agent_reconcile_queue_seconds",
        "Time from the change event that queued an object to the start of its reconcile, by kind.",
    );
    metrics::header(
        &mut out,
        "dpu_agent_reconcile_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful reconcile of an object of this kind; time() minus it is the seconds since.",
    );
    if let Ok(m) = e.last_success.lock() {
        for (kind, t) in m.iter() {
            metrics::sample(
                &mut out,
                "dpu_agent_reconcile_last_success_timestamp_seconds",
                &[("kind", kind)],
                t,
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP dpu_agent_backend_up Whether a backend is connected.\n# TYPE dpu_agent_backend_up gauge"
    );
    let backends = state.controllers.backends();
    for (name, up) in &backends {
        let _ = writeln!(
            out,
            "dpu_agent_backend_up{{backend=\"{name}\"}} {}",
            u8::from(*up)
        );
    }
    let synced = e.initial_sync_done.load(Ordering::Relaxed);
    metrics::header(
        &mut out,
        "dpu_agent_ready",
        "gauge",
        "1 when /readyz answers 200: the first reconcile pass is done and every backend is connected.",
    );
    metrics::sample(
        &mut out,
        "dpu_agent_ready",
        &[],
        u8::from(synced && backends.values().all(|up| *up)),
    );
    metrics::header(
        &mut out,
        "dpu_agent_host_stub_leases",
        "gauge",
        "Host stubs by lease state: held (heard from within the lease) or expired.",
    );
    let mut leases: BTreeMap<&'static str, u64> = [("held", 0), ("expired", 0)].into();
    if let Ok(contacts) = state.metrics.host_contacts.lock() {
        let now = Instant::now();
        let mut hosts: Vec<String> = state.store.hosts().into_iter().map(|h| h.host).collect();
        hosts.extend(contacts.keys().cloned());
        hosts.sort();
        hosts.dedup();
        for h in &hosts {
            let s = lease_state(
                contacts.get(h).copied(),
                state.metrics.started,
                now,
                state.metrics.lease,
            );
            *leases.entry(s).or_default() += 1;
        }
    }
    for (s, n) in &leases {
        metrics::sample(&mut out, "dpu_agent_host_stub_leases", &[("state", s)], n);
    }
    let _ = writeln!(
        out,
        "# HELP dpu_agent_http_requests_total API requests by method and status.\n# TYPE dpu_agent_http_requests_total counter"
    );
    if let Ok(m) = state.metrics.requests.lock() {
        for ((method, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "dpu_agent_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
    }
    state.metrics.request_seconds.render(
        &mut out,
        "dpu_agent_http_request_duration_seconds",
        "API request latency until the response head, by method, route template and status class.",
    );
    state.store.commit_metrics(&mut out);
    state.controllers.metrics(&mut out);
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

pub async fn openapi(Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    authorize(&caller, &Operation::OpenApi)?;
    let mut resp = (StatusCode::OK, OPENAPI).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

pub async fn not_found() -> ApiError {
    ApiError(Problem::new(404, "no such endpoint; see /v1/openapi.json"))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError(Problem::new(
        405,
        "method not allowed on this endpoint; see /v1/openapi.json",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_api::Kind;

    /// Route labels are the router's templates, never a caller's path.
    #[test]
    fn route_templates_are_a_closed_set() {
        assert_eq!(route_template("/v1/networks/net1"), "/v1/{kind}/{id}");
        assert_eq!(route_template("/v1/networks"), "/v1/{kind}");
        assert_eq!(route_template("/v1/apply"), "/v1/apply");
        assert_eq!(
            route_template("/v1/host/assignments"),
            "/v1/host/assignments"
        );
        assert_eq!(route_template("/v1/openapi.json"), "/v1/openapi.json");
        assert_eq!(route_template("/metrics"), "/metrics");
        assert_eq!(route_template("/v1/a/b/c"), "unmatched");
        assert_eq!(route_template("/../../etc/passwd"), "unmatched");
        assert_eq!(route_template("/v1/"), "unmatched");
        assert_eq!(route_template(""), "unmatched");
        assert_eq!(method_label("BREW"), "OTHER");
    }

    #[test]
    fn host_leases_expire_after_the_lease() {
        let t0 = Instant::now();
        let later = t0 + HOST_LEASE + Duration::from_secs(1);
        assert_eq!(lease_state(Some(t0), t0, t0, HOST_LEASE), "held");
        assert_eq!(lease_state(Some(t0), t0, later, HOST_LEASE), "expired");
        assert_eq!(lease_state(None, t0, later, HOST_LEASE), "expired");
        assert_eq!(lease_state(Some(later), t0, later, HOST_LEASE), "held");
        // A longer configured lease still holds then.
        let long = HOST_LEASE * 2;
        assert_eq!(lease_state(Some(t0), t0, later, long), "held");
        assert_eq!(Metrics::default().with_host_lease(long).lease, long);
    }

    /// The router's routes with `{kind}` expanded to every kind's path, as
    /// the document lists them (one path per kind).
    fn served_paths() -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (method, path) in super::super::ROUTES {
            if path.contains("{kind}") {
                for kind in Kind::ALL {
                    out.push((method.to_string(), path.replace("{kind}", kind.path())));
                }
            } else {
                out.push((method.to_string(), path.to_string()));
            }
        }
        out
    }

    /// Every route the router serves is documented, with its method, and
    /// nothing documented is not served.
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let served = served_paths();
        for (method, path) in &served {
            let item = &doc["paths"][path.as_str()];
            assert!(item.is_object(), "{path} missing from openapi.json");
            assert!(
                item[method.as_str()].is_object(),
                "{method} {path} missing from openapi.json"
            );
        }
        let documented = doc["paths"].as_object().unwrap();
        for (path, item) in documented {
            for method in item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
            {
                assert!(
                    served.iter().any(|(m, p)| m == method && p == path),
                    "openapi.json documents {method} {path}, which is not served"
                );
            }
        }
    }

    /// Each kind's paths carry that kind's own body and object schemas.
    #[test]
    fn each_kind_has_its_own_schemas() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        for kind in Kind::ALL {
            let item = &doc["paths"][format!("/v1/{}/{{id}}", kind.path()).as_str()];
            let body = &item["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                body.as_str(),
                Some(format!("#/components/schemas/{}PutBody", kind.name()).as_str())
            );
            let spec = &doc["components"]["schemas"][format!("{}PutBody", kind.name()).as_str()]["properties"]
                ["spec"]["$ref"];
            assert_eq!(
                spec.as_str(),
                Some(format!("#/components/schemas/{}Spec", kind.name()).as_str())
            );
            let got =
                &item["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                got.as_str(),
                Some(format!("#/components/schemas/{}Object", kind.name()).as_str())
            );
        }
    }

    /// The top-level fields of every spec schema are exactly the Rust
    /// type's (read through serde's own field list), so the document
    /// cannot drift from the types.
    #[test]
    fn spec_schemas_name_the_rust_fields() {
        use dpu_api::spec::*;
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let fields: Vec<(Kind, &'static [&'static str])> = vec![
            (Kind::Tenant, serde_fields::<TenantSpec>()),
            (Kind::Function, serde_fields::<FunctionSpec>()),
            (Kind::Network, serde_fields::<NetworkSpec>()),
            (Kind::Port, serde_fields::<PortSpec>()),
            (Kind::Endpoint, serde_fields::<EndpointSpec>()),
            (Kind::Volume, serde_fields::<VolumeSpec>()),
            (Kind::IpsecTunnel, serde_fields::<IpsecTunnelSpec>()),
            (Kind::TlsListener, serde_fields::<TlsListenerSpec>()),
        ];
        for (kind, rust) in fields {
            let schema = &doc["components"]["schemas"][format!("{}Spec", kind.name()).as_str()];
            let mut documented: Vec<String> = schema["properties"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| v["readOnly"] != serde_json::Value::Bool(true))
                .map(|(k, _)| k.clone())
                .collect();
            documented.sort();
            let mut rust: Vec<String> = rust.iter().map(|s| s.to_string()).collect();
            rust.sort();
            assert_eq!(documented, rust, "{} spec fields", kind.name());
        }
    }

    /// The field names serde knows for a struct: a deserializer that only
    /// records what `deserialize_struct` is told.
    fn serde_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        struct Probe(std::rc::Rc<std::cell::Cell<&'static [&'static str]>>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("probe")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for Probe {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0.set(fields);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        let cell = std::rc::Rc::new(std::cell::Cell::new(&[][..]));
        let _ = T::deserialize(Probe(cell.clone()));
        cell.get()
    }

    /// The document states the maxima that admission enforces
    /// (`dpu_api::limits`), field by field.
    #[test]
    fn openapi_maxima_match_the_limits() {
        use dpu_api::limits;
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let schemas = &doc["components"]["schemas"];
        let nvmeof = "/VolumeSpec/properties/source/oneOf/0/properties/nvmeof/properties";
        let rows: Vec<(String, &str, usize)> = vec![
            (
                "/TenantSpec/properties/description".into(),
                "maxLength",
                limits::DESCRIPTION_BYTES,
            ),
            (
                "/TenantSpec/properties/grants/properties/vni_ranges".into(),
                "maxItems",
                limits::VNI_RANGES,
            ),
            (
                "/TenantSpec/properties/grants/properties/functions/properties/pfs".into(),
                "maxItems",
                limits::GRANT_PFS,
            ),
            (
                "/TenantSpec/properties/grants/properties/functions/properties/hosts".into(),
                "maxItems",
                limits::GRANT_HOSTS,
            ),
            (
                "/FunctionSpec/properties/pf".into(),
                "maxLength",
                limits::PF_BYTES,
            ),
            (
                "/FunctionSpec/properties/mac".into(),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            (
                "/NetworkSpec/properties/cidr".into(),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            ("/PortSpec/properties/ips".into(), "maxItems", limits::IPS),
            (
                "/PortSpec/properties/ips/items".into(),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            (
                "/PortSpec/properties/security/properties/ingress".into(),
                "maxItems",
                limits::RULES,
            ),
            (
                "/PortSpec/properties/security/properties/egress".into(),
                "maxItems",
                limits::RULES,
            ),
            (
                "/EndpointSpec/properties/ips".into(),
                "maxItems",
                limits::IPS,
            ),
            (
                "/EndpointSpec/properties/vtep".into(),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            (
                format!("{nvmeof}/address"),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            (format!("{nvmeof}/subnqn"), "maxLength", limits::NQN_BYTES),
            (format!("{nvmeof}/hostnqn"), "maxLength", limits::NQN_BYTES),
            (
                "/IpsecTunnelSpec/properties/local_subnets".into(),
                "maxItems",
                limits::SUBNETS,
            ),
            (
                "/IpsecTunnelSpec/properties/remote_subnets".into(),
                "maxItems",
                limits::SUBNETS,
            ),
            (
                "/TlsListenerSpec/properties/listen".into(),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            (
                "/TlsListenerSpec/properties/upstream".into(),
                "maxLength",
                limits::ADDRESS_BYTES,
            ),
            (
                "/TlsListenerSpec/properties/certificate_pem".into(),
                "maxLength",
                limits::CERTIFICATE_PEM_BYTES,
            ),
            (
                "/TlsListenerSpec/properties/private_key_pem".into(),
                "maxLength",
                limits::PRIVATE_KEY_PEM_BYTES,
            ),
            (
                "/TlsListenerSpec/properties/client_ca_pem".into(),
                "maxLength",
                limits::CLIENT_CA_PEM_BYTES,
            ),
            (
                "/TlsListenerSpec/properties/alpn".into(),
                "maxItems",
                limits::ALPN,
            ),
            (
                "/TlsListenerSpec/properties/alpn/items".into(),
                "maxLength",
                limits::ALPN_BYTES,
            ),
        ];
        for (path, key, want) in rows {
            let got = schemas.pointer(&path).map(|s| &s[key]);
            assert_eq!(
                got.and_then(serde_json::Value::as_u64),
                Some(want as u64),
                "{path} {key}"
            );
        }
    }
}
