//! JSON-RPC 2.0 client over a unix stream socket. One background task owns
//! the socket (`dpu_jsonrpc::Connection`: the shared framer, messages and
//! request/response matcher); [`SpdkClient`] is a cheap cloneable handle, so
//! any number of callers may have requests in flight at once. Responses are
//! matched to callers by request id; a batch is routed item by item; an error
//! with a null id (SPDK could not read a request) fails every waiting caller
//! with [`SpdkError::Unattributed`]; when the connection ends (closed, I/O
//! error, bytes that are not JSON-RPC) every waiting caller fails.
//!
//! When the method list is loaded ([`SpdkClient::load_methods`]), calls to
//! methods the server does not offer fail with [`SpdkError::Unsupported`]
//! before anything is sent.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dpu_jsonrpc::{
    Connection, ConnectionError, Failure, FrameError, Matcher, Message, MessageError, Options,
    Outcome, Version,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::methods::RpcMethod;

/// The largest single value accepted: SPDK's send buffer grows to 32 MiB, so
/// twice that leaves room while still bounding memory on a confused peer.
pub const DEFAULT_MAX_VALUE_LEN: usize = 64 * 1024 * 1024;

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
    Framing(#[source] Arc<FrameError>),
    #[error("the SPDK server sent a malformed response")]
    BadResponse(#[source] Arc<MessageError>),
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
        Message::Request {
            id: Value::from(id),
            method: self.method.clone(),
            params: self.params.clone().unwrap_or(Value::Null),
        }
        .encode(Version::V2)
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

type Reply = Result<Value, SpdkError>;

/// Cloneable handle to one SPDK RPC connection.
#[derive(Debug, Clone)]
pub struct SpdkClient {
    conn: Connection,
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
        let (reader, writer) = stream.into_split();
        let options = Options::new(Version::V2).max_len(DEFAULT_MAX_VALUE_LEN);
        SpdkClient {
            conn: Connection::spawn(reader, writer, options),
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
        let params = req.params.clone().unwrap_or(Value::Null);
        let call = self.conn.call(&req.method, params);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(SpdkError::Timeout {
                method: req.method.clone(),
                timeout: self.timeout,
            }),
            Ok(outcome) => reply_of(&req.method, outcome),
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

/// What a caller of `method` receives for the outcome of its request.
fn reply_of(method: &str, outcome: Outcome<ConnectionError>) -> Reply {
    let rpc_error = |error: Value| {
        serde_json::from_value::<RpcError>(error)
            .map_err(|e| SpdkError::BadResponse(Arc::new(MessageError::Json(e))))
    };
    match outcome {
        Ok(result) => Ok(result),
        Err(Failure::Rejected(error)) => Err(SpdkError::Rpc {
            method: method.to_string(),
            error: rpc_error(error)?,
        }),
        Err(Failure::Unattributed(error)) => Err(SpdkError::Unattributed(rpc_error(error)?)),
        Err(Failure::Lost(lost)) => Err(match lost {
            ConnectionError::Eof | ConnectionError::Closed => SpdkError::Closed,
            ConnectionError::Io(e) => SpdkError::Io(e),
            ConnectionError::Framing(e) => SpdkError::Framing(Arc::new(e)),
            ConnectionError::Message(e) => SpdkError::BadResponse(e),
        }),
    }
}

/// What the callers waiting on `ids` receive when the connection task routes
/// one received value `bytes` (a response or a batch of them): each waiting
/// caller's reply, in the order of `ids`, callers not answered left out; an
/// error when the value is not JSON-RPC (the connection is then dropped).
/// Pure, on the same decoder and matcher as the connection; for the fuzz
/// target `spdk_replies` and tests.
pub fn dispatch_to(bytes: &[u8], ids: &[u64]) -> Result<Vec<(u64, Reply)>, SpdkError> {
    let messages = Message::decode_batch(bytes, Version::V2)
        .map_err(|e| SpdkError::BadResponse(Arc::new(e)))?;
    let mut matcher = Matcher::<ConnectionError>::new(Version::V2);
    let mut waiting = Vec::with_capacity(ids.len());
    for &id in ids {
        let (tx, rx) = oneshot::channel();
        matcher.insert(id, "", tx);
        waiting.push((id, rx));
    }
    for message in messages {
        matcher.route(message);
    }
    Ok(waiting
        .into_iter()
        .filter_map(|(id, mut rx)| rx.try_recv().ok().map(|o| (id, reply_of("", o))))
        .collect())
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
