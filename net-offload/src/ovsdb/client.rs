//! The connection: one background task owns the socket; [`OvsdbClient`] is a
//! cheap cloneable handle whose `&self` methods send requests to that task and
//! await their replies, matched by id (the shared `dpu_jsonrpc::Matcher`), so
//! any number of callers can be in flight at once. The task drives the
//! matcher itself (not `dpu_jsonrpc::Connection`) so that monitor
//! notifications are applied in stream order with the replies: a caller whose
//! `transact` returned sees its own update in the replica.
//!
//! The task answers the server's `echo` requests, optionally probes an idle
//! server with its own `echo`, keeps the monitor replica current, and on any
//! connection loss fails the requests in flight ([`OvsdbError::Disconnected`]:
//! a transaction may or may not have committed — re-observe, never blindly
//! retry), then reconnects with exponential backoff, fetches the schema again,
//! re-establishes the monitor (`monitor_cond_since` when the server has it,
//! else `monitor_cond`) and replaces the replica with the server's full view.
//! Each established session gets a new epoch in [`Session`]; a changed epoch
//! tells the reconcile to reprogram.
//!
//! Limits: no SSL; requests made while disconnected fail at once with
//! [`OvsdbError::NotConnected`] rather than wait.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::atom::Uuid;
use dpu_jsonrpc::{Failure, Matcher, Outcome, Routed};

use super::jsonrpc::{
    DEFAULT_MAX_LEN, FrameError, Framer, JsonRpcError, Message, VERSION, describe_error,
};
use super::monitor::{MonitorError, MonitorSpec, Replica, TableUpdates, decode_since_reply};
use super::schema::{DatabaseSchema, SchemaError};
use super::transact::{TransactError, TransactReply, Transaction};

/// Errors of the OVSDB client.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("invalid OVSDB endpoint {0:?} (expected unix:PATH or tcp:HOST:PORT)")]
    InvalidEndpoint(String),
    #[error(
        "no connection to ovsdb-server at {endpoint} within {timeout:?} (last error: {last_error}); is ovsdb-server running?"
    )]
    ConnectTimeout {
        endpoint: Endpoint,
        timeout: Duration,
        last_error: String,
    },
    #[error("not connected to ovsdb-server at {endpoint} (reconnecting)")]
    NotConnected { endpoint: Endpoint },
    #[error(
        "connection to ovsdb-server at {endpoint} was lost before the reply to {method}; its effect is unknown"
    )]
    Disconnected { endpoint: Endpoint, method: String },
    #[error("no reply to {method} from {endpoint} within {timeout:?}")]
    Timeout {
        endpoint: Endpoint,
        method: String,
        timeout: Duration,
    },
    #[error("the OVSDB client was shut down")]
    Closed,
    #[error("ovsdb-server rejected {method}: {error}")]
    Rpc { method: String, error: String },
    #[error("malformed reply to {method}: {reason}")]
    MalformedReply { method: String, reason: String },
    #[error("schema of database {db} cannot be read")]
    Schema {
        db: String,
        #[source]
        source: SchemaError,
    },
    #[error(transparent)]
    Transact(#[from] TransactError),
}

/// Why a session ended (reported in [`Session::last_error`], then reconnect).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Eof,
    #[error("framing: {0}")]
    Framing(#[from] FrameError),
    #[error("bad JSON-RPC message: {0}")]
    JsonRpc(#[from] JsonRpcError),
    #[error("monitor: {0}")]
    Monitor(#[from] MonitorError),
    #[error("schema: {0}")]
    Schema(#[from] SchemaError),
    #[error("{method} failed during session setup: {error}")]
    Setup { method: &'static str, error: String },
    #[error("no message from the server for {0:?} despite an echo probe")]
    ProbeTimeout(Duration),
    #[error("session setup took longer than {0:?}")]
    SetupTimeout(Duration),
    #[error("writer stopped")]
    WriterGone,
}

/// Where ovsdb-server listens: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = OvsdbError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:").filter(|a| a.contains(':')) {
            Ok(Endpoint::Tcp(addr.to_owned()))
        } else {
            Err(OvsdbError::InvalidEndpoint(s.to_owned()))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How to connect and what to replicate.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    /// Tables to replicate; `None` for a plain request/response client.
    pub monitor: Option<MonitorSpec>,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long [`OvsdbClient::connect`] waits for the first session.
    pub connect_timeout: Duration,
    /// How long a request waits for its reply (also bounds session setup).
    pub request_timeout: Duration,
    /// Send an `echo` after this long without traffic; drop the connection
    /// after twice this long. ovsdb-server does not probe unix clients.
    pub probe_interval: Option<Duration>,
    pub max_frame_len: usize,
}

impl ClientConfig {
    pub fn new(endpoint: Endpoint) -> Self {
        let probe_interval = match endpoint {
            Endpoint::Unix(_) => None,
            Endpoint::Tcp(_) => Some(Duration::from_secs(5)),
        };
        ClientConfig {
            endpoint,
            monitor: None,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            probe_interval,
            max_frame_len: DEFAULT_MAX_LEN,
        }
    }

    pub fn with_monitor(mut self, spec: MonitorSpec) -> Self {
        self.monitor = Some(spec);
        self
    }
}

/// The state of the connection as callers see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Incremented each time a session is established (and, with a monitor,
    /// the replica resynced). 0 until the first one.
    pub epoch: u64,
    pub connected: bool,
    /// Why the last connection attempt or session ended.
    pub last_error: Option<String>,
}

type Reply = oneshot::Sender<Outcome<OvsdbError>>;

struct Call {
    method: String,
    params: Value,
    reply: Reply,
}

/// State shared between the handles and the task (the task never holds the
/// command sender, so dropping the last handle stops it).
#[derive(Debug)]
struct State {
    replica: RwLock<Replica>,
    replica_version: watch::Sender<u64>,
    session: watch::Sender<Session>,
    schema: RwLock<Option<Arc<DatabaseSchema>>>,
}

struct Inner {
    config: ClientConfig,
    calls: mpsc::UnboundedSender<Call>,
    state: Arc<State>,
}

/// Handle to one OVSDB connection. Clone freely; the connection task stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct OvsdbClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for OvsdbClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OvsdbClient")
            .field("endpoint", &self.inner.config.endpoint)
            .field("session", &*self.inner.state.session.borrow())
            .finish()
    }
}

impl OvsdbClient {
    /// Starts the connection task and returns at once; the task keeps trying
    /// to connect. Must be called inside a tokio runtime.
    pub fn spawn(config: ClientConfig) -> Self {
        let (calls, calls_rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            replica: RwLock::new(Replica::default()),
            replica_version: watch::channel(0).0,
            session: watch::channel(Session::default()).0,
            schema: RwLock::new(None),
        });
        tokio::spawn(run(config.clone(), state.clone(), calls_rx));
        OvsdbClient {
            inner: Arc::new(Inner {
                config,
                calls,
                state,
            }),
        }
    }

    /// Starts the connection task and waits for the first session (and the
    /// initial replica) for up to `config.connect_timeout`.
    pub async fn connect(config: ClientConfig) -> Result<Self, OvsdbError> {
        let timeout = config.connect_timeout;
        let client = Self::spawn(config);
        client.wait_connected(timeout).await?;
        Ok(client)
    }

    /// Connects to a unix socket without a monitor.
    pub async fn connect_unix(path: impl Into<PathBuf>) -> Result<Self, OvsdbError> {
        Self::connect(ClientConfig::new(Endpoint::Unix(path.into()))).await
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.config.endpoint
    }

    /// Waits until a session is established.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), OvsdbError> {
        let mut session = self.inner.state.session.subscribe();
        let waited = tokio::time::timeout(timeout, session.wait_for(|s| s.connected))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(OvsdbError::Closed),
            Err(_) => Err(OvsdbError::ConnectTimeout {
                endpoint: self.inner.config.endpoint.clone(),
                timeout,
                last_error: session
                    .borrow()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "none".into()),
            }),
        }
    }

    /// Connection state; `changed()` fires on connect, disconnect and
    /// reconnect (new epoch).
    pub fn session(&self) -> watch::Receiver<Session> {
        self.inner.state.session.subscribe()
    }

    /// Replica generation; `changed()` fires after every applied update,
    /// including the full resync after a reconnect.
    pub fn replica_changes(&self) -> watch::Receiver<u64> {
        self.inner.state.replica_version.subscribe()
    }

    /// Runs `f` on the replica under a read lock (keep `f` short).
    pub fn read_replica<R>(&self, f: impl FnOnce(&Replica) -> R) -> R {
        let guard = self
            .inner
            .state
            .replica
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// Waits until `pred` holds on the replica.
    pub async fn wait_for_replica(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Replica) -> bool,
    ) -> Result<(), OvsdbError> {
        let mut changes = self.replica_changes();
        let wait = async {
            loop {
                if self.read_replica(&mut pred) {
                    return Ok(());
                }
                if changes.changed().await.is_err() {
                    return Err(OvsdbError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(OvsdbError::Timeout {
                    endpoint: self.inner.config.endpoint.clone(),
                    method: "replica condition".into(),
                    timeout,
                })
            })
    }

    /// Sends one request and awaits its `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .calls
            .send(Call {
                method: method.to_owned(),
                params,
                reply,
            })
            .map_err(|_| OvsdbError::Closed)?;
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(Failure::Lost(error)))) => Err(error),
            Ok(Ok(Err(Failure::Rejected(error) | Failure::Unattributed(error)))) => {
                Err(OvsdbError::Rpc {
                    method: method.to_owned(),
                    error: describe_error(&error),
                })
            }
            Ok(Err(_)) => Err(OvsdbError::Closed),
            Err(_) => Err(OvsdbError::Timeout {
                endpoint: self.inner.config.endpoint.clone(),
                method: method.to_owned(),
                timeout,
            }),
        }
    }

    /// `list_dbs` (RFC 7047 §4.1.1).
    pub async fn list_dbs(&self) -> Result<Vec<String>, OvsdbError> {
        let result = self.call("list_dbs", json!([])).await?;
        serde_json::from_value(result).map_err(|e| OvsdbError::MalformedReply {
            method: "list_dbs".into(),
            reason: e.to_string(),
        })
    }

    /// `get_schema` (RFC 7047 §4.1.2), as the raw JSON document.
    pub async fn get_schema_json(&self, db: &str) -> Result<Value, OvsdbError> {
        self.call("get_schema", json!([db])).await
    }

    /// `get_schema` (RFC 7047 §4.1.2), parsed.
    pub async fn get_schema(&self, db: &str) -> Result<DatabaseSchema, OvsdbError> {
        let value = self.get_schema_json(db).await?;
        DatabaseSchema::from_json(&value).map_err(|source| OvsdbError::Schema {
            db: db.to_owned(),
            source,
        })
    }

    /// `echo` (RFC 7047 §4.1.11): a round trip through the server.
    pub async fn echo(&self) -> Result<(), OvsdbError> {
        self.call("echo", json!(["dpu-agent"])).await.map(|_| ())
    }

    /// `transact` (RFC 7047 §4.1.3). An empty transaction is not sent.
    pub async fn transact(&self, txn: &Transaction) -> Result<TransactReply, OvsdbError> {
        if txn.is_empty() {
            return Ok(TransactReply {
                results: Vec::new(),
            });
        }
        let result = self.call("transact", txn.to_params()).await?;
        let schema = self
            .inner
            .state
            .schema
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|s| s.name == txn.db());
        Ok(txn.decode_reply(&result, schema.as_deref())?)
    }

    /// The schema of the monitored database, once a session has fetched it.
    pub fn monitored_schema(&self) -> Option<Arc<DatabaseSchema>> {
        self.inner
            .state
            .schema
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

async fn open(endpoint: &Endpoint) -> std::io::Result<(BoxRead, BoxWrite)> {
    match endpoint {
        Endpoint::Unix(path) => {
            let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Endpoint::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// What the connection task remembers across sessions.
struct Memory {
    last_txn_id: Option<Uuid>,
    since_supported: bool,
    epoch: u64,
}

enum End {
    /// Every handle is gone.
    Closed,
    /// The session ended; reconnect. `true` if it had been established.
    Lost(SessionError, bool),
}

const MONITOR_ID: &str = "dpu-agent-replica";

async fn run(config: ClientConfig, state: Arc<State>, mut calls: mpsc::UnboundedReceiver<Call>) {
    let mut memory = Memory {
        last_txn_id: None,
        since_supported: true,
        epoch: 0,
    };
    let mut backoff = config.backoff_initial;
    loop {
        let end = match tokio::time::timeout(config.request_timeout, open(&config.endpoint)).await {
            Ok(Ok((reader, writer))) => {
                session(&config, &state, &mut calls, &mut memory, reader, writer).await
            }
            Ok(Err(e)) => End::Lost(SessionError::Connect(e), false),
            Err(_) => End::Lost(
                SessionError::Connect(std::io::ErrorKind::TimedOut.into()),
                false,
            ),
        };
        let (error, established) = match end {
            End::Closed => return,
            End::Lost(error, established) => (error, established),
        };
        if established {
            tracing::warn!(endpoint = %config.endpoint, %error, "OVSDB connection lost; reconnecting");
            backoff = config.backoff_initial;
        } else {
            tracing::debug!(endpoint = %config.endpoint, %error, ?backoff, "OVSDB connect failed");
        }
        state.session.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(error.to_string());
        });
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                call = calls.recv() => match call {
                    None => return,
                    Some(call) => {
                        let _ = call.reply.send(Err(Failure::Lost(OvsdbError::NotConnected {
                            endpoint: config.endpoint.clone(),
                        })));
                    }
                },
            }
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// One connection's reader side and bookkeeping; the writer is a separate
/// task so a slow peer never blocks reading.
struct Conn {
    reader: BoxRead,
    framer: Framer,
    out: mpsc::UnboundedSender<Vec<u8>>,
    matcher: Matcher<OvsdbError>,
    last_rx: Instant,
}

impl Conn {
    /// Cancel-safe: bytes go straight into the framer's buffer.
    async fn read_message(&mut self) -> Result<Message, SessionError> {
        loop {
            if let Some(frame) = self.framer.next_frame()? {
                self.last_rx = Instant::now();
                return Ok(Message::decode(&frame, VERSION)?);
            }
            if self.reader.read_buf(self.framer.buffer_mut()).await? == 0 {
                return Err(SessionError::Eof);
            }
        }
    }

    fn send(&mut self, msg: &Message) -> Result<(), SessionError> {
        self.out
            .send(msg.encode(VERSION))
            .map_err(|_| SessionError::WriterGone)
    }

    /// Sends a request whose outcome goes to `reply`.
    fn request(&mut self, method: &str, params: Value, reply: Reply) -> Result<(), SessionError> {
        let (_, bytes) = self.matcher.start(method, params, reply);
        self.out.send(bytes).map_err(|_| SessionError::WriterGone)
    }

    /// Answers requests from the server (only `echo` is defined).
    fn answer(&mut self, id: Value, method: &str, params: Value) -> Result<(), SessionError> {
        let reply = if method == "echo" {
            Message::Response {
                id,
                result: params,
                error: Value::Null,
            }
        } else {
            Message::Response {
                id,
                result: Value::Null,
                error: dpu_jsonrpc::message::method_not_found(VERSION, method),
            }
        };
        self.send(&reply)
    }

    /// Setup-time request: waits for its reply, answering echoes meanwhile.
    /// Returns the `result` or the server's `error`.
    async fn setup_call(
        &mut self,
        method: &'static str,
        params: Value,
    ) -> Result<Result<Value, Value>, SessionError> {
        let (reply, mut rx) = oneshot::channel();
        self.request(method, params, reply)?;
        loop {
            let message = self.read_message().await?;
            match self.matcher.route(message) {
                Routed::Request { id, method, params } => self.answer(id, &method, params)?,
                Routed::Delivered { .. } => match rx.try_recv() {
                    Ok(Ok(result)) => return Ok(Ok(result)),
                    Ok(Err(Failure::Rejected(error) | Failure::Unattributed(error))) => {
                        return Ok(Err(error));
                    }
                    Ok(Err(Failure::Lost(_))) | Err(_) => {}
                },
                other => tracing::debug!(?other, "OVSDB message ignored during setup"),
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn write_loop(mut writer: BoxWrite, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(buf) = rx.recv().await {
        if let Err(error) = writer.write_all(&buf).await {
            tracing::debug!(%error, "OVSDB write failed");
            return;
        }
    }
}

async fn session(
    config: &ClientConfig,
    state: &State,
    calls: &mut mpsc::UnboundedReceiver<Call>,
    memory: &mut Memory,
    reader: BoxRead,
    writer: BoxWrite,
) -> End {
    let (out, out_rx) = mpsc::unbounded_channel();
    let mut writer_task = AbortOnDrop(tokio::spawn(write_loop(writer, out_rx)));
    let mut conn = Conn {
        reader,
        framer: Framer::objects(config.max_frame_len),
        out,
        matcher: Matcher::new(VERSION),
        last_rx: Instant::now(),
    };
    let setup = tokio::time::timeout(
        config.request_timeout,
        setup(config, state, memory, &mut conn),
    );
    let monitor = match setup.await {
        Ok(Ok(monitor)) => monitor,
        Ok(Err(e)) => return End::Lost(e, false),
        Err(_) => return End::Lost(SessionError::SetupTimeout(config.request_timeout), false),
    };
    memory.epoch += 1;
    let epoch = memory.epoch;
    state.session.send_modify(|s| {
        s.epoch = epoch;
        s.connected = true;
    });
    tracing::info!(endpoint = %config.endpoint, epoch, "OVSDB session established");

    let result = serve(
        config,
        state,
        calls,
        memory,
        &mut conn,
        &mut writer_task,
        monitor,
    )
    .await;
    conn.matcher.fail_all(|method| OvsdbError::Disconnected {
        endpoint: config.endpoint.clone(),
        method: method.to_owned(),
    });
    match result {
        Ok(()) => End::Closed,
        Err(e) => End::Lost(e, true),
    }
}

/// Monitor state of an established session.
struct ActiveMonitor {
    spec: MonitorSpec,
    schema: Arc<DatabaseSchema>,
}

async fn setup(
    config: &ClientConfig,
    state: &State,
    memory: &mut Memory,
    conn: &mut Conn,
) -> Result<Option<ActiveMonitor>, SessionError> {
    let Some(spec) = config.monitor.clone() else {
        return Ok(None);
    };
    let schema_json = conn
        .setup_call("get_schema", json!([spec.db]))
        .await?
        .map_err(|e| SessionError::Setup {
            method: "get_schema",
            error: describe_error(&e),
        })?;
    let schema = Arc::new(DatabaseSchema::from_json(&schema_json)?);
    spec.check(&schema)?;
    *state.schema.write().unwrap_or_else(PoisonError::into_inner) = Some(schema.clone());

    let requests = spec.requests_json();
    let mut reply = None;
    if memory.since_supported {
        let last = memory.last_txn_id.unwrap_or(Uuid::ZERO);
        let params = json!([spec.db, MONITOR_ID, requests, last.to_string()]);
        match conn.setup_call("monitor_cond_since", params).await? {
            Ok(result) => reply = Some(decode_since_reply(&result, &schema)?),
            Err(error) => {
                tracing::info!(error = %describe_error(&error),
                    "monitor_cond_since not available; using monitor_cond");
                memory.since_supported = false;
            }
        }
    }
    let (found, updates) = match reply {
        Some((found, txn, updates)) => {
            memory.last_txn_id = Some(txn);
            (found, updates)
        }
        None => {
            let params = json!([spec.db, MONITOR_ID, requests]);
            let result = conn
                .setup_call("monitor_cond", params)
                .await?
                .map_err(|e| SessionError::Setup {
                    method: "monitor_cond",
                    error: describe_error(&e),
                })?;
            (false, TableUpdates::decode(&result, &schema)?)
        }
    };
    {
        let mut replica = state
            .replica
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if found {
            // The server sent only what changed since our last transaction.
            replica.apply(updates, &spec, &schema);
        } else {
            // A new replica instance: readers' cursors of the old one get
            // "cannot tell" from `changed_since` and read everything.
            let mut fresh = Replica::default();
            fresh.apply(updates, &spec, &schema);
            *replica = fresh;
        }
    }
    state.replica_version.send_modify(|v| *v += 1);
    Ok(Some(ActiveMonitor { spec, schema }))
}

async fn serve(
    config: &ClientConfig,
    state: &State,
    calls: &mut mpsc::UnboundedReceiver<Call>,
    memory: &mut Memory,
    conn: &mut Conn,
    writer_task: &mut AbortOnDrop,
    monitor: Option<ActiveMonitor>,
) -> Result<(), SessionError> {
    let probe_every = config.probe_interval;
    let mut probe_sent = false;
    let mut ticker = tokio::time::interval(probe_every.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = conn.read_message() => {
                probe_sent = false;
                match conn.matcher.route(message?) {
                    Routed::Request { id, method, params } => conn.answer(id, &method, params)?,
                    // Delivered to its caller; or a reply to our probe, or to
                    // a caller that gave up.
                    Routed::Delivered { .. } | Routed::Unmatched { .. } | Routed::FailedAll { .. } => {}
                    Routed::Notification { method, params } => {
                        notification(state, memory, monitor.as_ref(), &method, params)?;
                    }
                }
            }
            call = calls.recv() => {
                let Some(call) = call else { return Ok(()) };
                conn.request(&call.method, call.params, call.reply)?;
            }
            _ = &mut writer_task.0 => return Err(SessionError::WriterGone),
            _ = ticker.tick(), if probe_every.is_some() => {
                let Some(every) = probe_every else { continue };
                if conn.last_rx.elapsed() >= every {
                    if probe_sent {
                        return Err(SessionError::ProbeTimeout(every * 2));
                    }
                    conn.send(&Message::Request {
                        id: json!("probe"),
                        method: "echo".into(),
                        params: json!([]),
                    })?;
                    probe_sent = true;
                }
            }
        }
    }
}

fn notification(
    state: &State,
    memory: &mut Memory,
    monitor: Option<&ActiveMonitor>,
    method: &str,
    params: Value,
) -> Result<(), SessionError> {
    let (Some(monitor), "update2" | "update3") = (monitor, method) else {
        tracing::debug!(method, "OVSDB notification ignored");
        return Ok(());
    };
    let Value::Array(mut params) = params else {
        return Err(MonitorError::NotAnObject.into());
    };
    if params.first() != Some(&json!(MONITOR_ID)) {
        return Ok(());
    }
    let updates = params.pop().unwrap_or(Value::Null);
    let updates = TableUpdates::decode(&updates, &monitor.schema)?;
    if method == "update3" {
        let txn = params
            .get(1)
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok());
        memory.last_txn_id = txn.or(memory.last_txn_id);
    }
    state
        .replica
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .apply(updates, &monitor.spec, &monitor.schema);
    state.replica_version.send_modify(|v| *v += 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Protocol behaviour against a scripted in-process server on a unix
    //! socket pair; the real ovsdb-server is exercised in tests/ovsdb_*.rs.

    use super::*;
    use tokio::net::UnixListener;

    struct FakeServer {
        _dir: tempfile::TempDir,
        path: PathBuf,
        listener: UnixListener,
    }

    impl FakeServer {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db.sock");
            let listener = UnixListener::bind(&path).unwrap();
            FakeServer {
                _dir: dir,
                path,
                listener,
            }
        }
    }

    async fn next(stream: &mut tokio::net::UnixStream, framer: &mut Framer) -> Value {
        loop {
            if let Some(frame) = framer.next_frame().unwrap() {
                return serde_json::from_slice(&frame).unwrap();
            }
            assert!(stream.read_buf(framer.buffer_mut()).await.unwrap() > 0);
        }
    }

    #[tokio::test]
    async fn answers_echo_and_matches_out_of_order_replies() {
        let server = FakeServer::new();
        let client = OvsdbClient::connect_unix(&server.path);
        let (accepted, client) = tokio::join!(server.listener.accept(), client);
        let (mut stream, _) = accepted.unwrap();
        let client = client.unwrap();

        let (c1, c2) = (client.clone(), client.clone());
        let a = tokio::spawn(async move { c1.call("list_dbs", json!([])).await });
        let b = tokio::spawn(async move { c2.call("get_schema", json!(["X"])).await });
        let mut framer = Framer::objects(DEFAULT_MAX_LEN);
        let first = next(&mut stream, &mut framer).await;
        let second = next(&mut stream, &mut framer).await;
        assert!(first.get("jsonrpc").is_none());

        // The server's echo must be answered with the same id and params.
        stream
            .write_all(br#"{"method":"echo","params":["hi"],"id":"echo"}"#)
            .await
            .unwrap();
        assert_eq!(
            next(&mut stream, &mut framer).await,
            json!({"id": "echo", "result": ["hi"], "error": null})
        );

        // Reply in reverse order, both in one write.
        let reply = |req: &Value, result: Value| {
            json!({"id": req["id"], "result": result, "error": null}).to_string()
        };
        let (dbs, schema) = if first["method"] == "list_dbs" {
            (&first, &second)
        } else {
            (&second, &first)
        };
        let both = reply(schema, json!("schema")) + &reply(dbs, json!(["Open_vSwitch"]));
        stream.write_all(both.as_bytes()).await.unwrap();
        assert_eq!(a.await.unwrap().unwrap(), json!(["Open_vSwitch"]));
        assert_eq!(b.await.unwrap().unwrap(), json!("schema"));
    }

    #[tokio::test]
    async fn in_flight_request_fails_on_disconnect_then_reconnects() {
        let server = FakeServer::new();
        let (accepted, client) = tokio::join!(
            server.listener.accept(),
            OvsdbClient::connect_unix(&server.path)
        );
        let (stream, _) = accepted.unwrap();
        let client = client.unwrap();
        let mut session = client.session();
        assert_eq!(session.borrow_and_update().epoch, 1);

        let c = client.clone();
        let call = tokio::spawn(async move { c.call("list_dbs", json!([])).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, OvsdbError::Disconnected { .. }), "{err}");

        let (_stream2, _) = server.listener.accept().await.unwrap();
        session
            .wait_for(|s| s.connected && s.epoch == 2)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn error_reply_is_an_rpc_error() {
        let server = FakeServer::new();
        let (accepted, client) = tokio::join!(
            server.listener.accept(),
            OvsdbClient::connect_unix(&server.path)
        );
        let (mut stream, _) = accepted.unwrap();
        let client = client.unwrap();
        let call = tokio::spawn(async move { client.call("bogus", json!([])).await });
        let mut framer = Framer::objects(DEFAULT_MAX_LEN);
        let req = next(&mut stream, &mut framer).await;
        let reply = json!({"id": req["id"], "result": null, "error": {"error": "unknown method"}});
        stream
            .write_all(reply.to_string().as_bytes())
            .await
            .unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "ovsdb-server rejected bogus: unknown method"
        );
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/run/db.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/db.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6640".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:6640".into())
        );
        assert!("ssl:1.2.3.4:6640".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
    }
}
