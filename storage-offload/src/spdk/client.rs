//! JSON-RPC 2.0 client over a unix stream socket. One background task owns
//! the socket; [`SpdkClient`] is a cheap cloneable handle, so any number of
//! callers may have requests in flight at once. Responses are matched to
//! callers by request id.
//!
//! When the method list is loaded ([`SpdkClient::load_methods`]), calls to
//! methods the server does not offer fail with [`SpdkError::Unsupported`]
//! before anything is sent.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use super::framing::{FramingError, JsonStreamSplitter};
use super::methods::RpcMethod;

/// SPDK's default RPC socket (`SPDK_DEFAULT_RPC_ADDR`).
pub const DEFAULT_SOCKET: &str = "/var/tmp/spdk.sock";

/// Default time a call may take. Attaching a remote controller includes a
/// fabrics connect, which can take several seconds on a slow network.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// An error object the server returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// What an error code means, per JSON-RPC 2.0 and SPDK's own `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcErrorKind {
    /// -1: the method exists but cannot run in the current state (for
    /// example before `framework_start_init` with `--wait-for-rpc`).
    InvalidState,
    /// -32600
    InvalidRequest,
    /// -32601
    MethodNotFound,
    /// -32602: also what SPDK returns for most domain failures.
    InvalidParams,
    /// -32603
    Internal,
    /// -32700
    Parse,
    /// Any other code (SPDK handlers also return negated errno values).
    Other,
}

impl RpcError {
    pub fn kind(&self) -> RpcErrorKind {
        match self.code {
            -1 => RpcErrorKind::InvalidState,
            -32600 => RpcErrorKind::InvalidRequest,
            -32601 => RpcErrorKind::MethodNotFound,
            -32602 => RpcErrorKind::InvalidParams,
            -32603 => RpcErrorKind::Internal,
            -32700 => RpcErrorKind::Parse,
            _ => RpcErrorKind::Other,
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind() {
            RpcErrorKind::InvalidState => "invalid state",
            RpcErrorKind::InvalidRequest => "invalid request",
            RpcErrorKind::MethodNotFound => "method not found",
            RpcErrorKind::InvalidParams => "invalid params",
            RpcErrorKind::Internal => "internal error",
            RpcErrorKind::Parse => "parse error",
            RpcErrorKind::Other => "error",
        };
        write!(f, "code {} ({what}): {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

#[derive(Debug, Clone, Error)]
pub enum SpdkError {
    #[error("cannot connect to the SPDK RPC socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("SPDK refused {method}")]
    Rpc {
        method: String,
        #[source]
        error: RpcError,
    },
    #[error(
        "the SPDK server does not offer {method} (absent from rpc_get_methods); \
         check the SPDK/SNAP version and the modules it was built with"
    )]
    Unsupported { method: String },
    #[error("no answer to {method} within {timeout:?}")]
    Timeout { method: String, timeout: Duration },
    #[error("the answer to {method} does not have the documented shape")]
    Decode {
        method: String,
        #[source]
        source: Arc<serde_json::Error>,
    },
    #[error("the SPDK connection is closed")]
    Closed,
    #[error("the SPDK connection failed")]
    Io(#[source] Arc<std::io::Error>),
    #[error("the SPDK server sent bytes that are not JSON-RPC")]
    Framing(#[source] Arc<FramingError>),
    #[error("the SPDK server sent a malformed response")]
    BadResponse(#[source] Arc<serde_json::Error>),
    #[error("the SPDK server reported an error for no particular request")]
    Unattributed(#[source] RpcError),
}

impl SpdkError {
    /// The server's error code, if the server answered with an error.
    pub fn rpc_code(&self) -> Option<i64> {
        match self {
            SpdkError::Rpc { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// One request as it goes on the wire: a method and its named params.
/// `params` is omitted when there are none, as SPDK rejects params on
/// methods that take none.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    pub method: String,
    pub params: Option<Value>,
}

impl RpcRequest {
    /// Builds the request of a typed call.
    pub fn new<M: RpcMethod>(params: &M) -> Self {
        let value = serde_json::to_value(params).unwrap_or(Value::Null);
        let params = match value {
            Value::Null => None,
            Value::Object(ref m) if m.is_empty() => None,
            v => Some(v),
        };
        RpcRequest {
            method: M::METHOD.to_string(),
            params,
        }
    }

    /// The JSON text of the request with `id`, as sent.
    pub fn to_wire(&self, id: u64) -> Vec<u8> {
        let mut m = serde_json::Map::new();
        m.insert("jsonrpc".into(), Value::from("2.0"));
        m.insert("id".into(), Value::from(id));
        m.insert("method".into(), Value::from(self.method.clone()));
        if let Some(p) = &self.params {
            m.insert("params".into(), p.clone());
        }
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}

/// `method {params}` as an operator reads it in `dpuctl plan`.
impl fmt::Display for RpcRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.params {
            Some(p) => write!(f, "{} {}", self.method, p),
            None => f.write_str(&self.method),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

type Reply = Result<Value, SpdkError>;

#[derive(Debug)]
struct Outgoing {
    id: u64,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Reply>,
}

/// Cloneable handle to one SPDK RPC connection.
#[derive(Debug, Clone)]
pub struct SpdkClient {
    tx: mpsc::Sender<Outgoing>,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    offered: Arc<RwLock<Option<BTreeSet<String>>>>,
}

impl SpdkClient {
    /// Connects to the socket at `path` and starts the connection task.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, SpdkError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| SpdkError::Connect {
                path: path.to_path_buf(),
                source: Arc::new(source),
            })?;
        Ok(Self::from_stream(stream))
    }

    /// Runs the client over an already connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(connection_task(stream, rx));
        SpdkClient {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout: DEFAULT_TIMEOUT,
            offered: Arc::new(RwLock::new(None)),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Asks the server which methods it offers (`rpc_get_methods`) and from
    /// then on refuses calls to any other method.
    pub async fn load_methods(&self) -> Result<BTreeSet<String>, SpdkError> {
        let all: Vec<String> = self.call(&super::methods::RpcGetMethods::default()).await?;
        let set: BTreeSet<String> = all.into_iter().collect();
        if let Ok(mut g) = self.offered.write() {
            *g = Some(set.clone());
        }
        Ok(set)
    }

    /// Whether `method` is offered; `true` while the list is not loaded.
    pub fn offers(&self, method: &str) -> bool {
        match self.offered.read() {
            Ok(g) => g.as_ref().is_none_or(|s| s.contains(method)),
            Err(_) => true,
        }
    }

    /// A typed call.
    pub async fn call<M: RpcMethod>(&self, params: &M) -> Result<M::Output, SpdkError> {
        let value = self.request(&RpcRequest::new(params)).await?;
        serde_json::from_value(value).map_err(|source| SpdkError::Decode {
            method: M::METHOD.to_string(),
            source: Arc::new(source),
        })
    }

    /// An untyped call, for requests built ahead of time (plans). Timed in
    /// [`crate::timing`] as backend `spdk`, by method.
    pub async fn request(&self, req: &RpcRequest) -> Result<Value, SpdkError> {
        let started = std::time::Instant::now();
        let out = self.request_untimed(req).await;
        crate::timing::observe(
            "spdk",
            method_label(&req.method),
            started.elapsed().as_secs_f64(),
        );
        out
    }

    async fn request_untimed(&self, req: &RpcRequest) -> Result<Value, SpdkError> {
        if !self.offers(&req.method) {
            return Err(SpdkError::Unsupported {
                method: req.method.clone(),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let out = Outgoing {
            id,
            bytes: req.to_wire(id),
            reply,
        };
        self.tx.send(out).await.map_err(|_| SpdkError::Closed)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(SpdkError::Timeout {
                method: req.method.clone(),
                timeout: self.timeout,
            }),
            Ok(Err(_)) => Err(SpdkError::Closed),
            Ok(Ok(Err(SpdkError::Rpc { error, .. }))) => Err(SpdkError::Rpc {
                method: req.method.clone(),
                error,
            }),
            Ok(Ok(r)) => r,
        }
    }

    /// Typed helper that decodes into any type, for methods whose result shape
    /// is not confirmed (SNAP).
    pub async fn call_value<T: DeserializeOwned>(&self, req: &RpcRequest) -> Result<T, SpdkError> {
        let v = self.request(req).await?;
        serde_json::from_value(v).map_err(|source| SpdkError::Decode {
            method: req.method.clone(),
            source: Arc::new(source),
        })
    }
}

/// `method` as a metrics label: one of the methods this crate calls (a
/// closed set), else `other`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// Every method this crate sends (standard SPDK and SNAP).
const KNOWN_METHODS: &[&str] = &[
    "rpc_get_methods",
    "spdk_get_version",
    "bdev_get_bdevs",
    "bdev_get_iostat",
    "bdev_set_qos_limit",
    "bdev_malloc_create",
    "bdev_malloc_delete",
    "bdev_nvme_attach_controller",
    "bdev_nvme_detach_controller",
    "bdev_nvme_get_controllers",
    "nvmf_create_transport",
    "nvmf_get_transports",
    "nvmf_create_subsystem",
    "nvmf_get_subsystems",
    "nvmf_subsystem_add_ns",
    "nvmf_subsystem_remove_ns",
    "nvmf_subsystem_add_host",
    "nvmf_subsystem_add_listener",
    "nvmf_delete_subsystem",
    "vhost_create_blk_controller",
    "vhost_delete_controller",
    "vhost_get_controllers",
    "nvme_subsystem_create",
    "nvme_subsystem_destroy",
    "nvme_subsystem_list",
    "nvme_namespace_create",
    "nvme_namespace_destroy",
    "nvme_controller_create",
    "nvme_controller_destroy",
    "nvme_controller_list",
    "nvme_controller_attach_ns",
    "nvme_controller_detach_ns",
    "virtio_blk_controller_create",
    "virtio_blk_controller_destroy",
    "virtio_blk_controller_list",
    "emulation_function_list",
];

async fn connection_task(mut stream: UnixStream, mut rx: mpsc::Receiver<Outgoing>) {
    let mut pending: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
    let mut splitter = JsonStreamSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let fatal: SpdkError = loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else {
                    // Every handle is gone; nothing can be waiting.
                    return;
                };
                if let Err(e) = stream.write_all(&out.bytes).await {
                    let _ = out.reply.send(Err(SpdkError::Io(Arc::new(e))));
                    break SpdkError::Closed;
                }
                pending.insert(out.id, out.reply);
            }
            n = stream.read(&mut buf) => {
                let n = match n {
                    Ok(0) => break SpdkError::Closed,
                    Ok(n) => n,
                    Err(e) => break SpdkError::Io(Arc::new(e)),
                };
                splitter.push(&buf[..n]);
                loop {
                    match splitter.next_value() {
                        Ok(Some(bytes)) => {
                            if let Err(e) = dispatch(&bytes, &mut pending) {
                                tracing::warn!(error = %e, "dropping SPDK RPC connection");
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let err = SpdkError::Framing(Arc::new(e));
                            for (_, p) in pending.drain() {
                                let _ = p.send(Err(err.clone()));
                            }
                            return;
                        }
                    }
                }
            }
        }
    };
    for (_, p) in pending.drain() {
        let _ = p.send(Err(fatal.clone()));
    }
    // Later calls see a closed channel and get `Closed`.
}

/// What the callers waiting on `ids` receive when the connection task routes
/// one received value `bytes` (a response or a batch of them): each waiting
/// caller's reply, in the order of `ids`, callers not answered left out; an
/// error when the value is not JSON-RPC (the connection is then dropped).
/// Pure; for the fuzz target `spdk_replies` and tests.
pub fn dispatch_to(bytes: &[u8], ids: &[u64]) -> Result<Vec<(u64, Reply)>, SpdkError> {
    let mut pending = HashMap::new();
    let mut waiting = Vec::with_capacity(ids.len());
    for &id in ids {
        let (tx, rx) = oneshot::channel();
        pending.insert(id, tx);
        waiting.push((id, rx));
    }
    dispatch(bytes, &mut pending)?;
    Ok(waiting
        .into_iter()
        .filter_map(|(id, mut rx)| rx.try_recv().ok().map(|reply| (id, reply)))
        .collect())
}

/// Routes one received value (a response or a batch of them).
fn dispatch(
    bytes: &[u8],
    pending: &mut HashMap<u64, oneshot::Sender<Reply>>,
) -> Result<(), SpdkError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| SpdkError::BadResponse(Arc::new(e)))?;
    let items = match value {
        Value::Array(items) => items,
        v => vec![v],
    };
    for item in items {
        let resp: Response =
            serde_json::from_value(item).map_err(|e| SpdkError::BadResponse(Arc::new(e)))?;
        let reply = match (resp.error, resp.result) {
            (Some(error), _) => Err(SpdkError::Rpc {
                method: String::new(),
                error,
            }),
            (None, Some(result)) => Ok(result),
            (None, None) => Ok(Value::Null),
        };
        match resp.id.as_u64() {
            Some(id) => {
                if let Some(p) = pending.remove(&id) {
                    let _ = p.send(reply);
                }
                // A response for a caller that timed out and left: ignore.
            }
            None => {
                // The server could not read a request's id (a parse error);
                // it cannot be attributed, so every waiting caller learns it.
                let err = match reply {
                    Err(SpdkError::Rpc { error, .. }) => SpdkError::Unattributed(error),
                    _ => SpdkError::Unattributed(RpcError {
                        code: -32603,
                        message: "response without an id".into(),
                        data: None,
                    }),
                };
                for (_, p) in pending.drain() {
                    let _ = p.send(Err(err.clone()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON-RPC 2.0 §5/§6 responses as SPDK's `jsonrpc_server.c` sends them:
    /// a result, an error, a batch, and an error without an id that every
    /// waiting caller learns.
    #[test]
    fn dispatch_routes_results_errors_and_batches() {
        let got = dispatch_to(br#"{"jsonrpc":"2.0","id":1,"result":true}"#, &[1, 2]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1);
        assert_eq!(got[0].1.as_ref().unwrap(), &Value::Bool(true));

        let batch =
            br#"[{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Invalid parameters"}},
                        {"jsonrpc":"2.0","id":1,"result":[]}]"#;
        let got = dispatch_to(batch, &[1, 2]).unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0].1, Ok(Value::Array(a)) if a.is_empty()));
        assert_eq!(
            got[1].1.as_ref().unwrap_err().rpc_code(),
            Some(-32602),
            "{:?}",
            got[1].1
        );

        let parse_error =
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#;
        let got = dispatch_to(parse_error, &[4, 5]).unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            got.iter()
                .all(|(_, r)| matches!(r, Err(SpdkError::Unattributed(e)) if e.code == -32700))
        );
    }

    #[test]
    fn malformed_values_are_errors_not_panics() {
        for bad in [
            &b"{"[..],
            b"[1]",
            b"{\"id\":1,\"error\":{\"code\":\"x\"}}",
            b"\xff",
        ] {
            assert!(matches!(
                dispatch_to(bad, &[1]),
                Err(SpdkError::BadResponse(_))
            ));
        }
    }
}
