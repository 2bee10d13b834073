//! Operational endpoints: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text), `/v1/openapi.json`, the problem+json fallbacks, and the request
//! counter behind `dpu_agent_http_requests_total`.
//!
//! `/healthz` and `/readyz` answer any caller, certificate or not, so that
//! supervisors can probe them; everything else needs a role.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dpu_api::{Kind, Problem};
use serde_json::json;

use super::AppState;
use super::authz::{Caller, Operation, authorize};
use super::error::ApiError;

/// The OpenAPI 3 document of the v1 API, maintained beside the code.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Request counts by method and status.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // A closed set: any caller, authenticated or not, can send any method
    // name, and labels must not grow from unauthenticated input.
    let method = match req.method().as_str() {
        m @ ("GET" | "PUT" | "POST" | "DELETE" | "HEAD" | "PATCH" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_string();
    let resp = next.run(req).await;
    if let Ok(mut m) = state.metrics.requests.lock() {
        *m.entry((method, resp.status().as_u16())).or_default() += 1;
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
    for kind in Kind::ALL {
        let mut phases: BTreeMap<String, u64> = BTreeMap::new();
        for o in state.store.list(kind, None) {
            *phases.entry(o.status.phase.to_string()).or_default() += 1;
        }
        for (phase, n) in phases {
            let _ = writeln!(
                out,
                "dpu_agent_objects{{kind=\"{}\",phase=\"{phase}\"}} {n}",
                kind.path()
            );
        }
    }
    let e = &state.engine;
    let _ = writeln!(
        out,
        "# HELP dpu_agent_reconciles_total Reconciles run.\n# TYPE dpu_agent_reconciles_total counter"
    );
    let _ = writeln!(
        out,
        "dpu_agent_reconciles_total {}",
        e.reconciles.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP dpu_agent_reconcile_failures_total Reconciles that failed and were retried.\n# TYPE dpu_agent_reconcile_failures_total counter"
    );
    let _ = writeln!(
        out,
        "dpu_agent_reconcile_failures_total {}",
        e.failures.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP dpu_agent_reconcile_queue_depth Objects waiting to be reconciled.\n# TYPE dpu_agent_reconcile_queue_depth gauge"
    );
    let _ = writeln!(
        out,
        "dpu_agent_reconcile_queue_depth {}",
        e.queue_len.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP dpu_agent_backend_up Whether a backend is connected.\n# TYPE dpu_agent_backend_up gauge"
    );
    for (name, up) in state.controllers.backends() {
        let _ = writeln!(
            out,
            "dpu_agent_backend_up{{backend=\"{name}\"}} {}",
            u8::from(up)
        );
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
