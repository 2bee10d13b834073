//! Async client of the v1 API, over HTTPS with mutual TLS (rustls, ring) or,
//! for an agent started with `--insecure-listen` on loopback, plain HTTP.
//!
//! One method per endpoint of `design/API.md`, plus [`Client::raw`] for
//! tests that need to send what the typed methods would not. Error answers
//! become [`ClientError::Problem`] (the agent's `application/problem+json`,
//! with its status and field) or [`ClientError::Http`]. The client trusts
//! only the CA it is given, never the system roots, and holds its key only
//! inside the rustls configuration: neither errors nor `Debug` show it.

mod error;
pub mod ndjson;
mod tls;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue, IF_MATCH};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::ClientError;
pub use ndjson::NdjsonStream;
pub use reqwest::Method;
pub use reqwest::header::HeaderMap;

use crate::kind::Kind;
use crate::object::{
    ApplyRequest, ApplyResponse, Event, HostInventory, Inventory, Object, ObjectList, PlanResponse,
    PutBody,
};
use crate::problem::{self, Problem};
use tls::Pem;

/// The response header carrying the store revision after a change.
pub const REVISION_HEADER: &str = "x-revision";

/// Watch events as they arrive.
pub type EventStream = NdjsonStream<Event>;

/// How long a request other than a watch may take, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an unexpected error body is kept in [`ClientError::Http`].
const MAX_ERROR_BODY: usize = 4096;

/// A connection pool to one agent. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    MutualTls,
    ServerTls,
    Plain,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.base.as_str())
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// The result of [`Client::put`].
#[derive(Debug, Clone, PartialEq)]
pub struct PutResult {
    pub object: Object,
    /// 201 rather than 200.
    pub created: bool,
    /// The store revision after the write (`X-Revision`).
    pub revision: u64,
}

/// Which events [`Client::watch`] returns. `kind`, `id` and `follow` are
/// extensions of the contract's `?since=`: filter by kind and id, and with
/// `follow: false` return the stored events after `since` and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFilter {
    pub kind: Option<Kind>,
    pub id: Option<String>,
    pub follow: bool,
}

impl Default for WatchFilter {
    /// Everything, kept open.
    fn default() -> Self {
        WatchFilter {
            kind: None,
            id: None,
            follow: true,
        }
    }
}

/// What [`Client::raw`] got back, whatever the status.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `X-Revision` header, when present and numeric.
    pub fn revision(&self) -> Option<u64> {
        self.header(REVISION_HEADER).and_then(|v| v.parse().ok())
    }
}

impl Client {
    /// A client of `server_url` (`https://host:port`) trusting only the CA
    /// certificates in `ca_pem` and, when given, authenticating with the
    /// certificate chain and private key PEMs. For an `http://` URL the PEMs
    /// are not used.
    pub fn from_pem(
        server_url: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Client, ClientError> {
        let base = parse_base(server_url)?;
        if base.scheme() == "http" {
            return Client::build(base, None);
        }
        let config = tls::client_config(
            Pem {
                name: "<ca PEM>",
                bytes: ca_pem,
            },
            identity.map(|(cert, key)| {
                (
                    Pem {
                        name: "<client certificate PEM>",
                        bytes: cert,
                    },
                    Pem {
                        name: "<client key PEM>",
                        bytes: key,
                    },
                )
            }),
        )?;
        Client::build(base, Some((config, identity.is_some())))
    }

    /// Like [`Client::from_pem`], reading the PEM files; errors name the
    /// file. For an `http://` URL the files are not read.
    pub fn from_files(
        server_url: &str,
        ca_path: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Client, ClientError> {
        let base = parse_base(server_url)?;
        if base.scheme() == "http" {
            return Client::build(base, None);
        }
        let ca = tls::read_file(ca_path)?;
        let ca_name = ca_path.display().to_string();
        let ca = Pem {
            name: &ca_name,
            bytes: &ca,
        };
        let config = match identity {
            Some((cert_path, key_path)) => {
                let cert = tls::read_file(cert_path)?;
                let key = tls::read_secret_file(key_path)?;
                let cert_name = cert_path.display().to_string();
                let key_name = key_path.display().to_string();
                tls::client_config(
                    ca,
                    Some((
                        Pem {
                            name: &cert_name,
                            bytes: &cert,
                        },
                        Pem {
                            name: &key_name,
                            bytes: &key,
                        },
                    )),
                )?
            }
            None => tls::client_config(ca, None)?,
        };
        Client::build(base, Some((config, identity.is_some())))
    }

    /// A client of an `http://` agent (started with `--insecure-listen`).
    pub fn plain(server_url: &str) -> Result<Client, ClientError> {
        let base = parse_base(server_url)?;
        if base.scheme() != "http" {
            return Err(ClientError::Config(format!(
                "{server_url} is not an http:// URL; HTTPS needs a CA (Client::from_files)"
            )));
        }
        Client::build(base, None)
    }

    fn build(base: Url, tls: Option<(rustls::ClientConfig, bool)>) -> Result<Client, ClientError> {
        let builder = reqwest::Client::builder()
            .user_agent(concat!("dpu-api/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        let (builder, transport) = match tls {
            Some((config, mutual)) => (
                builder.use_preconfigured_tls(config).https_only(true),
                if mutual {
                    Transport::MutualTls
                } else {
                    Transport::ServerTls
                },
            ),
            None => (builder, Transport::Plain),
        };
        let http = builder
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            transport,
        })
    }

    /// The server this client talks to.
    pub fn server_url(&self) -> &str {
        self.base.as_str()
    }

    /// `PUT /v1/{kind}/{id}`: create or replace. With `if_match`, the write
    /// fails with 412 unless the stored generation is that one.
    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        tenant: Option<&str>,
        spec: Value,
        if_match: Option<u64>,
    ) -> Result<PutResult, ClientError> {
        let url = self.url(&["v1", kind.path(), id], &[]);
        let body = PutBody {
            kind: None,
            id: None,
            tenant: tenant.map(str::to_string),
            spec,
        };
        let mut req = self.http.put(url.clone()).json(&body);
        if let Some(generation) = if_match {
            req = req.header(IF_MATCH, format!("\"{generation}\""));
        }
        let resp = self.send(Method::PUT, &url, req, true).await?;
        let created = resp.status() == StatusCode::CREATED;
        let revision = revision(&resp, "PUT", &url)?;
        let object = decode(resp, "PUT", &url).await?;
        Ok(PutResult {
            object,
            created,
            revision,
        })
    }

    /// `GET /v1/{kind}/{id}`.
    pub async fn get(&self, kind: Kind, id: &str) -> Result<Object, ClientError> {
        let url = self.url(&["v1", kind.path(), id], &[]);
        self.get_json(&url).await
    }

    /// `GET /v1/{kind}`, of one tenant when given.
    pub async fn list(&self, kind: Kind, tenant: Option<&str>) -> Result<ObjectList, ClientError> {
        let query: Vec<(&str, &str)> = tenant.map(|t| ("tenant", t)).into_iter().collect();
        let url = self.url(&["v1", kind.path()], &query);
        self.get_json(&url).await
    }

    /// `DELETE /v1/{kind}/{id}`; returns the revision of the change. The
    /// object may still be there (phase `Deleting`) until its controller has
    /// torn it down.
    pub async fn delete(&self, kind: Kind, id: &str) -> Result<u64, ClientError> {
        let url = self.url(&["v1", kind.path(), id], &[]);
        let req = self.http.delete(url.clone());
        let resp = self.send(Method::DELETE, &url, req, true).await?;
        revision(&resp, "DELETE", &url)
    }

    /// `POST /v1/apply`: all objects in one transaction.
    pub async fn apply(&self, request: &ApplyRequest) -> Result<ApplyResponse, ClientError> {
        let url = self.url(&["v1", "apply"], &[]);
        self.post_json(&url, request).await
    }

    /// `POST /v1/plan`: what that apply would do, without doing it.
    pub async fn plan(&self, request: &ApplyRequest) -> Result<PlanResponse, ClientError> {
        let url = self.url(&["v1", "plan"], &[]);
        self.post_json(&url, request).await
    }

    /// `GET /v1/watch?since=REV`: events after revision `since`. Errors of
    /// the request itself (refused, 403, ...) come back here; the stream
    /// yields the events and ends when the server closes it.
    pub async fn watch(
        &self,
        since: u64,
        filter: &WatchFilter,
    ) -> Result<EventStream, ClientError> {
        let since = since.to_string();
        let mut query = vec![("since", since.as_str())];
        if let Some(kind) = filter.kind {
            query.push(("kind", kind.path()));
        }
        if let Some(id) = &filter.id {
            query.push(("id", id.as_str()));
        }
        if !filter.follow {
            query.push(("follow", "false"));
        }
        let url = self.url(&["v1", "watch"], &query);
        self.stream(&url).await
    }

    /// `GET /v1/inventory`.
    pub async fn inventory(&self) -> Result<Inventory, ClientError> {
        let url = self.url(&["v1", "inventory"], &[]);
        self.get_json(&url).await
    }

    /// `PUT /v1/host/inventory` (role host-stub).
    pub async fn put_host_inventory(&self, report: &HostInventory) -> Result<(), ClientError> {
        let url = self.url(&["v1", "host", "inventory"], &[]);
        let req = self.http.put(url.clone()).json(report);
        self.send(Method::PUT, &url, req, true).await?;
        Ok(())
    }

    /// `GET /v1/host/assignments`: the functions assigned to the calling
    /// host.
    pub async fn host_assignments(&self) -> Result<ObjectList, ClientError> {
        let url = self.url(&["v1", "host", "assignments"], &[]);
        self.get_json(&url).await
    }

    /// `GET /v1/host/assignments?watch=1`: changes to them, as events.
    pub async fn watch_host_assignments(&self) -> Result<EventStream, ClientError> {
        let url = self.url(&["v1", "host", "assignments"], &[("watch", "1")]);
        self.stream(&url).await
    }

    /// `GET /healthz`: status and body, whatever the status.
    pub async fn healthz(&self) -> Result<(u16, String), ClientError> {
        self.probe("healthz").await
    }

    /// `GET /readyz`: status (503 while a backend is not connected or
    /// reconciled) and body.
    pub async fn readyz(&self) -> Result<(u16, String), ClientError> {
        self.probe("readyz").await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url(&["metrics"], &[]);
        let req = self.http.get(url.clone());
        let resp = self.send(Method::GET, &url, req, true).await?;
        let body = body_bytes(resp, "GET", &url).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /v1/openapi.json`.
    pub async fn openapi(&self) -> Result<Value, ClientError> {
        let url = self.url(&["v1", "openapi.json"], &[]);
        self.get_json(&url).await
    }

    /// Sends any request to `path` (with its query, e.g. `/v1/ports?tenant=a`)
    /// and returns the answer whatever its status: for tests of the server's
    /// edge cases. Only transport failures are errors.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, ClientError> {
        let base = self.base.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{base}{path}"))
            .map_err(|e| ClientError::Config(format!("bad request path {path:?}: {e}")))?;
        let mut req = self.http.request(method.clone(), url.clone());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ClientError::Config(format!("bad header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| ClientError::Config(format!("bad value for header {name}")))?;
            req = req.header(name, value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = self.send(method.clone(), &url, req, false).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = body_bytes(resp, method.as_str(), &url).await?;
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        // `parse_base` only accepts http(s) URLs, which always have a path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn probe(&self, name: &str) -> Result<(u16, String), ClientError> {
        let raw = self
            .raw(Method::GET, &format!("/{name}"), None, &[])
            .await?;
        Ok((raw.status, raw.text()))
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, ClientError> {
        let req = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/json");
        let resp = self.send(Method::GET, url, req, true).await?;
        decode(resp, "GET", url).await
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        url: &Url,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let req = self.http.post(url.clone()).json(body);
        let resp = self.send(Method::POST, url, req, true).await?;
        decode(resp, "POST", url).await
    }

    async fn stream(&self, url: &Url) -> Result<EventStream, ClientError> {
        // No overall timeout: a watch stays open as long as the server keeps
        // it.
        let req = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/x-ndjson");
        let resp = self.send_with(Method::GET, url, req, true, None).await?;
        Ok(ndjson::decode_lines(
            Box::pin(resp.bytes_stream()),
            "GET",
            url.as_str(),
        ))
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        req: RequestBuilder,
        require_success: bool,
    ) -> Result<Response, ClientError> {
        self.send_with(method, url, req, require_success, Some(REQUEST_TIMEOUT))
            .await
    }

    async fn send_with(
        &self,
        method: Method,
        url: &Url,
        req: RequestBuilder,
        require_success: bool,
        timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        let req = match timeout {
            Some(t) => req.timeout(t),
            None => req,
        };
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            method: method.to_string(),
            url: url.to_string(),
            source: source.without_url(),
        })?;
        if require_success && !resp.status().is_success() {
            return Err(error_from(resp, method.as_str(), url).await);
        }
        Ok(resp)
    }
}

fn parse_base(server_url: &str) -> Result<Url, ClientError> {
    let url = Url::parse(server_url).map_err(|e| {
        ClientError::Config(format!(
            "server URL {server_url:?} is not a URL like https://127.0.0.1:9443: {e}"
        ))
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ClientError::Config(format!(
            "server URL {server_url:?} must start with https:// (or http:// for --insecure-listen)"
        )));
    }
    if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
        return Err(ClientError::Config(format!(
            "server URL {server_url:?} must be scheme://host:port with no query"
        )));
    }
    Ok(url)
}

/// The `X-Revision` header of a changing request's answer.
fn revision(resp: &Response, method: &str, url: &Url) -> Result<u64, ClientError> {
    let value = resp
        .headers()
        .get(REVISION_HEADER)
        .ok_or_else(|| ClientError::decode(format!("{method} {url}"), "no X-Revision header"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ClientError::decode(
                format!("{method} {url}"),
                format!("X-Revision {value:?} is not a number"),
            )
        })
}

async fn body_bytes(resp: Response, method: &str, url: &Url) -> Result<Bytes, ClientError> {
    resp.bytes().await.map_err(|source| ClientError::Transport {
        method: method.to_string(),
        url: url.to_string(),
        source: source.without_url(),
    })
}

async fn decode<T: DeserializeOwned>(
    resp: Response,
    method: &str,
    url: &Url,
) -> Result<T, ClientError> {
    let body = body_bytes(resp, method, url).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::decode(format!("{method} {url}"), e))
}

/// Turns a non-2xx answer into [`ClientError::Problem`] when it is a
/// problem document, [`ClientError::Http`] otherwise.
async fn error_from(resp: Response, method: &str, url: &Url) -> ClientError {
    let status = resp.status().as_u16();
    let is_problem = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(problem::CONTENT_TYPE));
    let body = match body_bytes(resp, method, url).await {
        Ok(body) => body,
        Err(e) => return e,
    };
    if is_problem && let Ok(problem) = serde_json::from_slice::<Problem>(&body) {
        return ClientError::Problem(problem);
    }
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if text.len() > MAX_ERROR_BODY {
        let mut cut = MAX_ERROR_BODY;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    ClientError::Http { status, body: text }
}
