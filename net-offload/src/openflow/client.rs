//! Async OpenFlow client for one switch connection: a bridge's management
//! socket (`unix:DIR/<bridge>.mgmt`, no controller configuration needed) or TCP.
//!
//! Two tasks own the socket halves: the reader frames incoming messages, answers
//! ECHO_REQUEST itself and forwards everything else; the writer sends byte
//! chunks in order. Operations take `&mut self`, so one operation runs at a
//! time; callers that share a client wrap it in a mutex.
//!
//! Throughput: flow_mods are encoded back to back into one buffer and handed to
//! the writer in large chunks; the client waits once, on a barrier (or the
//! bundle commit), and matches ERROR replies to flows by xid.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::bundle::{BundleAdd, BundleControl, BundleCtrlType, bundle_flags};
use super::error::{DecodeError, EncodeError, SwitchError};
use super::flow_mod::FlowMod;
use super::header::{Header, Version, frame_len, msg_type};
use super::message::{Message, OUR_VERSIONS, SwitchFeatures, decode, encode, negotiate};
use super::meter::MeterMod;
use super::multipart::{
    AggregateStats, FlowEntry, FlowStatsRequest, MultipartReply, MultipartReplyBody,
    MultipartRequest, OFPMP_AGGREGATE, REPLY_MORE,
};

/// Encoded bytes are handed to the writer task in chunks of about this size.
const CHUNK: usize = 256 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One flow the switch refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFailure {
    /// Position of the flow in the list passed to the client.
    pub index: usize,
    pub flow_mod: FlowMod,
    pub error: SwitchError,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenFlowError {
    #[error("cannot connect to OpenFlow endpoint {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("OpenFlow connection to {endpoint} failed")]
    Io {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("{endpoint} closed the OpenFlow connection")]
    Closed { endpoint: String },
    #[error(
        "{endpoint} offers no OpenFlow version we speak (its version bitmap {offered:#x}; we speak 1.3 and 1.4)"
    )]
    NoCommonVersion { endpoint: String, offered: u32 },
    #[error("{endpoint} sent a message that cannot be decoded")]
    Decode {
        endpoint: String,
        #[source]
        source: DecodeError,
    },
    #[error("cannot encode {what}")]
    Encode {
        what: String,
        #[source]
        source: EncodeError,
    },
    #[error("{endpoint} did not answer {request} within {timeout:?}")]
    Timeout {
        endpoint: String,
        request: &'static str,
        timeout: Duration,
    },
    #[error("{endpoint} rejected {request}: {error}")]
    Rejected {
        endpoint: String,
        request: &'static str,
        error: SwitchError,
    },
    #[error("{endpoint} answered {request} with unexpected message type {msg_type}")]
    Unexpected {
        endpoint: String,
        request: &'static str,
        msg_type: u8,
    },
    #[error("{}", describe_flow_failures(endpoint, *bundle, *total, failures))]
    FlowsRejected {
        endpoint: String,
        /// True for an atomic bundle: nothing was installed.
        bundle: bool,
        total: usize,
        failures: Vec<FlowFailure>,
    },
}

fn describe_flow_failures(
    endpoint: &str,
    bundle: bool,
    total: usize,
    failures: &[FlowFailure],
) -> String {
    let Some(first) = failures.first() else {
        return format!("{endpoint} rejected the bundle");
    };
    let mut s = format!(
        "{endpoint} rejected flow #{} of {total} `{}`: {}",
        first.index, first.flow_mod, first.error
    );
    if failures.len() > 1 {
        s.push_str(&format!(" (and {} more flows)", failures.len() - 1));
    }
    if bundle {
        s.push_str("; the bundle was discarded, no flow was changed");
    } else {
        s.push_str("; the other flow_mods were applied");
    }
    s
}

enum Incoming {
    Frame(Bytes),
    Closed,
    Io(io::Error),
    Decode(DecodeError),
}

/// An OpenFlow connection to one switch (bridge).
#[derive(Debug)]
pub struct OpenFlowClient {
    endpoint: String,
    version: Version,
    out_tx: mpsc::UnboundedSender<Bytes>,
    in_rx: mpsc::UnboundedReceiver<Incoming>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    next_xid: u32,
    next_bundle_id: u32,
    timeout: Duration,
    buf: BytesMut,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Incoming::Frame(b) => write!(f, "Frame({} bytes)", b.len()),
            Incoming::Closed => f.write_str("Closed"),
            Incoming::Io(e) => write!(f, "Io({e})"),
            Incoming::Decode(e) => write!(f, "Decode({e})"),
        }
    }
}

impl Drop for OpenFlowClient {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// The error of a failed connect to `endpoint` (a `map_err` argument).
fn connect_error(endpoint: &str) -> impl Fn(io::Error) -> OpenFlowError + '_ {
    move |source| OpenFlowError::Connect {
        endpoint: endpoint.to_string(),
        source,
    }
}

impl OpenFlowClient {
    /// Connects to a unix socket, e.g. `/var/run/openvswitch/br-int.mgmt`, and
    /// negotiates the version.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Self, OpenFlowError> {
        let endpoint = format!("unix:{}", path.as_ref().display());
        let stream = tokio::net::UnixStream::connect(path.as_ref())
            .await
            .map_err(connect_error(&endpoint))?;
        let (rd, wr) = stream.into_split();
        Self::handshake(endpoint, Box::new(rd), Box::new(wr)).await
    }

    /// Connects to `host:port` over TCP and negotiates the version.
    pub async fn connect_tcp(addr: &str) -> Result<Self, OpenFlowError> {
        let endpoint = format!("tcp:{addr}");
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(connect_error(&endpoint))?;
        stream.set_nodelay(true).map_err(connect_error(&endpoint))?;
        let (rd, wr) = stream.into_split();
        Self::handshake(endpoint, Box::new(rd), Box::new(wr)).await
    }

    async fn handshake(
        endpoint: String,
        rd: Box<dyn AsyncRead + Send + Unpin>,
        wr: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Result<Self, OpenFlowError> {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(wr, out_rx, in_tx.clone()));
        let reader = tokio::spawn(read_loop(rd, out_tx.clone(), in_tx));
        let mut client = OpenFlowClient {
            endpoint,
            version: Version::Of14,
            out_tx,
            in_rx,
            reader,
            writer,
            next_xid: 1,
            next_bundle_id: 1,
            timeout: DEFAULT_TIMEOUT,
            buf: BytesMut::with_capacity(CHUNK * 2),
        };
        let xid = client.xid();
        client.push(
            &Message::Hello {
                versions: Some(OUR_VERSIONS),
            },
            xid,
            "hello",
        )?;
        client.flush()?;
        let deadline = Instant::now() + client.timeout;
        let (header, msg) = client.recv(deadline, "hello").await?;
        match msg {
            Message::Hello { versions } => {
                let offered = versions.unwrap_or(1 << header.version.min(31));
                client.version = negotiate(OUR_VERSIONS, header.version, versions).ok_or(
                    OpenFlowError::NoCommonVersion {
                        endpoint: client.endpoint.clone(),
                        offered,
                    },
                )?;
                tracing::debug!(endpoint = %client.endpoint, version = ?client.version, "OpenFlow connected");
                Ok(client)
            }
            Message::Error(error) => Err(OpenFlowError::Rejected {
                endpoint: client.endpoint.clone(),
                request: "hello",
                error,
            }),
            _ => Err(OpenFlowError::Unexpected {
                endpoint: client.endpoint.clone(),
                request: "hello",
                msg_type: header.msg_type,
            }),
        }
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// How long one operation may wait for the switch (default 60 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn xid(&mut self) -> u32 {
        let xid = self.next_xid;
        // xid 0 is avoided so that it never matches an unsolicited message.
        self.next_xid = self.next_xid.checked_add(1).unwrap_or(1);
        xid
    }

    /// Encodes `msg` into the pending buffer, flushing a full chunk to the writer.
    fn push(&mut self, msg: &Message, xid: u32, what: &str) -> Result<(), OpenFlowError> {
        encode(msg, self.version, xid, &mut self.buf).map_err(|source| OpenFlowError::Encode {
            what: what.to_string(),
            source,
        })?;
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), OpenFlowError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK * 2);
        self.out_tx.send(chunk).map_err(|_| OpenFlowError::Closed {
            endpoint: self.endpoint.clone(),
        })
    }

    /// Queues `msg` as `xid`, sends everything queued and returns the
    /// deadline for the answer.
    fn send_now(&mut self, msg: &Message, xid: u32, what: &str) -> Result<Instant, OpenFlowError> {
        self.push(msg, xid, what)?;
        self.flush()?;
        Ok(Instant::now() + self.timeout)
    }

    /// The next message from the switch.
    async fn recv(
        &mut self,
        deadline: Instant,
        request: &'static str,
    ) -> Result<(Header, Message), OpenFlowError> {
        let endpoint = &self.endpoint;
        let incoming = tokio::time::timeout_at(deadline.into(), self.in_rx.recv())
            .await
            .map_err(|_| OpenFlowError::Timeout {
                endpoint: endpoint.clone(),
                request,
                timeout: self.timeout,
            })?;
        match incoming {
            Some(Incoming::Frame(frame)) => {
                decode(&frame).map_err(|source| OpenFlowError::Decode {
                    endpoint: endpoint.clone(),
                    source,
                })
            }
            Some(Incoming::Io(source)) => Err(OpenFlowError::Io {
                endpoint: endpoint.clone(),
                source,
            }),
            Some(Incoming::Decode(source)) => Err(OpenFlowError::Decode {
                endpoint: endpoint.clone(),
                source,
            }),
            Some(Incoming::Closed) | None => Err(OpenFlowError::Closed {
                endpoint: endpoint.clone(),
            }),
        }
    }

    fn unexpected(&self, request: &'static str, header: &Header) -> OpenFlowError {
        OpenFlowError::Unexpected {
            endpoint: self.endpoint.clone(),
            request,
            msg_type: header.msg_type,
        }
    }

    fn rejected(&self, request: &'static str, error: SwitchError) -> OpenFlowError {
        OpenFlowError::Rejected {
            endpoint: self.endpoint.clone(),
            request,
            error,
        }
    }

    /// Sends one request and waits for the reply with its xid.
    async fn request(
        &mut self,
        msg: &Message,
        request: &'static str,
    ) -> Result<(Header, Message), OpenFlowError> {
        let xid = self.xid();
        let deadline = self.send_now(msg, xid, request)?;
        loop {
            let (header, msg) = self.recv(deadline, request).await?;
            if header.xid != xid {
                tracing::trace!(
                    xid = header.xid,
                    msg_type = header.msg_type,
                    "ignoring OpenFlow message"
                );
                continue;
            }
            return match msg {
                Message::Error(error) => Err(self.rejected(request, error)),
                other => Ok((header, other)),
            };
        }
    }

    /// Round-trip time of an ECHO request.
    pub async fn echo(&mut self) -> Result<Duration, OpenFlowError> {
        let start = Instant::now();
        match self
            .request(&Message::EchoRequest(Bytes::new()), "echo")
            .await?
        {
            (_, Message::EchoReply(_)) => Ok(start.elapsed()),
            (h, _) => Err(self.unexpected("echo", &h)),
        }
    }

    pub async fn features(&mut self) -> Result<SwitchFeatures, OpenFlowError> {
        match self.request(&Message::FeaturesRequest, "features").await? {
            (_, Message::FeaturesReply(f)) => Ok(f),
            (h, _) => Err(self.unexpected("features", &h)),
        }
    }

    /// Waits until the switch has processed everything sent before.
    pub async fn barrier(&mut self) -> Result<(), OpenFlowError> {
        match self.request(&Message::BarrierRequest, "barrier").await? {
            (_, Message::BarrierReply) => Ok(()),
            (h, _) => Err(self.unexpected("barrier", &h)),
        }
    }

    /// Sends `mods` back to back, then one barrier, and reports every flow the
    /// switch refused. Not atomic: the accepted ones stay applied (use
    /// [`Self::bundle`] for all-or-nothing).
    pub async fn flow_mods(&mut self, mods: &[FlowMod]) -> Result<(), OpenFlowError> {
        if mods.is_empty() {
            return Ok(());
        }
        let first = self.next_xid;
        let xids = self.push_flow_mods(mods, None)?;
        let barrier = self.xid();
        let deadline = self.send_now(&Message::BarrierRequest, barrier, "barrier")?;
        let mut failures = Vec::new();
        loop {
            let (header, msg) = self.recv(deadline, "flow_mods").await?;
            match msg {
                Message::BarrierReply if header.xid == barrier => break,
                Message::Error(error) => match flow_index(xids, first, header.xid) {
                    Some(index) => failures.push(FlowFailure {
                        index,
                        flow_mod: mods[index].clone(),
                        error,
                    }),
                    None if header.xid == barrier => return Err(self.rejected("barrier", error)),
                    None => tracing::debug!(%error, "OpenFlow error for an unknown request"),
                },
                _ => {}
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(OpenFlowError::FlowsRejected {
                endpoint: self.endpoint.clone(),
                bundle: false,
                total: mods.len(),
                failures,
            })
        }
    }

    /// Encodes FLOW_MODs (or, with a bundle id, BUNDLE_ADD_MESSAGEs) with
    /// consecutive xids; returns the xid range `(first, count)`.
    fn push_flow_mods(
        &mut self,
        mods: &[FlowMod],
        bundle_id: Option<u32>,
    ) -> Result<usize, OpenFlowError> {
        for (i, fm) in mods.iter().enumerate() {
            let xid = self.xid();
            let msg = match bundle_id {
                None => Message::FlowMod(fm.clone()),
                Some(bundle_id) => Message::BundleAdd(BundleAdd {
                    bundle_id,
                    flags: bundle_flags::ATOMIC | bundle_flags::ORDERED,
                    flow_mod: fm.clone(),
                }),
            };
            encode(&msg, self.version, xid, &mut self.buf).map_err(|source| {
                OpenFlowError::Encode {
                    what: format!("flow #{i} `{fm}`"),
                    source,
                }
            })?;
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
        }
        Ok(mods.len())
    }

    /// Applies `mods` atomically in one ordered bundle: open, every flow_mod
    /// streamed without waiting, a barrier, then commit — or, if the switch
    /// refused any flow while it was added, discard. Either all flows are
    /// applied or none; the error names the refused flows.
    pub async fn bundle(&mut self, mods: &[FlowMod]) -> Result<(), OpenFlowError> {
        if mods.is_empty() {
            return Ok(());
        }
        let bundle_id = self.next_bundle_id;
        self.next_bundle_id = self.next_bundle_id.wrapping_add(1);
        let flags = bundle_flags::ATOMIC | bundle_flags::ORDERED;
        let control = |ctrl_type| {
            Message::BundleControl(BundleControl {
                bundle_id,
                ctrl_type,
                flags,
            })
        };

        let open = self.xid();
        self.push(&control(BundleCtrlType::OpenRequest), open, "bundle open")?;
        let first = self.next_xid;
        let count = self.push_flow_mods(mods, Some(bundle_id))?;
        let barrier = self.xid();
        let deadline = self.send_now(&Message::BarrierRequest, barrier, "barrier")?;
        let mut failures = Vec::new();
        let mut open_error = None;
        loop {
            let (header, msg) = self.recv(deadline, "bundle add").await?;
            match msg {
                Message::BarrierReply if header.xid == barrier => break,
                Message::Error(error) if header.xid == open => open_error = Some(error),
                Message::Error(error) => match flow_index(count, first, header.xid) {
                    Some(index) => failures.push(FlowFailure {
                        index,
                        flow_mod: mods[index].clone(),
                        error,
                    }),
                    None => tracing::debug!(%error, "OpenFlow error for an unknown request"),
                },
                _ => {}
            }
        }
        if let Some(error) = open_error {
            return Err(self.rejected("bundle open", error));
        }
        if !failures.is_empty() {
            // Best effort: the switch may already have dropped the bundle.
            if let Err(e) = self
                .request(&control(BundleCtrlType::DiscardRequest), "bundle discard")
                .await
            {
                tracing::debug!(error = %e, "bundle discard after failed add");
            }
            return Err(self.flows_rejected(mods.len(), failures));
        }

        let commit = self.xid();
        let deadline = self.send_now(
            &control(BundleCtrlType::CommitRequest),
            commit,
            "bundle commit",
        )?;
        loop {
            let (header, msg) = self.recv(deadline, "bundle commit").await?;
            match msg {
                Message::BundleControl(bc)
                    if header.xid == commit && bc.ctrl_type == BundleCtrlType::CommitReply =>
                {
                    return Ok(());
                }
                Message::Error(error) if header.xid == commit => {
                    // OVS first reports the failing flow (with its add xid), then fails the commit.
                    return Err(if failures.is_empty() {
                        self.rejected("bundle commit", error)
                    } else {
                        self.flows_rejected(mods.len(), failures)
                    });
                }
                Message::Error(error) => {
                    if let Some(index) = flow_index(count, first, header.xid) {
                        failures.push(FlowFailure {
                            index,
                            flow_mod: mods[index].clone(),
                            error,
                        });
                    }
                }
                _ if header.xid == commit => return Err(self.unexpected("bundle commit", &header)),
                _ => {}
            }
        }
    }

    fn flows_rejected(&self, total: usize, failures: Vec<FlowFailure>) -> OpenFlowError {
        OpenFlowError::FlowsRejected {
            endpoint: self.endpoint.clone(),
            bundle: true,
            total,
            failures,
        }
    }

    /// Every flow matching `request`, following multipart continuations.
    pub async fn dump_flows(
        &mut self,
        request: &FlowStatsRequest,
    ) -> Result<Vec<FlowEntry>, OpenFlowError> {
        let xid = self.xid();
        let deadline = self.send_now(
            &Message::MultipartRequest(MultipartRequest::Flow(request.clone())),
            xid,
            "flow stats request",
        )?;
        let mut entries = Vec::new();
        loop {
            let (header, msg) = self.recv(deadline, "dump_flows").await?;
            if header.xid != xid {
                continue;
            }
            match msg {
                Message::MultipartReply(reply) => {
                    let MultipartReplyBody::Flow(mut part) = reply.body else {
                        return Err(self.unexpected("dump_flows", &header));
                    };
                    entries.append(&mut part);
                    if reply.flags & REPLY_MORE == 0 {
                        return Ok(entries);
                    }
                }
                Message::Error(error) => return Err(self.rejected("dump_flows", error)),
                _ => return Err(self.unexpected("dump_flows", &header)),
            }
        }
    }

    /// `OFPMP_AGGREGATE` over the flows `request` selects: how many there
    /// are, in one small reply however many flows the switch holds.
    pub async fn aggregate(
        &mut self,
        request: &FlowStatsRequest,
    ) -> Result<AggregateStats, OpenFlowError> {
        let xid = self.xid();
        let mut body = bytes::BytesMut::new();
        request
            .encode_filter(&mut body)
            .map_err(|e| OpenFlowError::Encode {
                what: "aggregate stats request".into(),
                source: e,
            })?;
        let deadline = self.send_now(
            &Message::MultipartRequest(MultipartRequest::Other {
                mp_type: OFPMP_AGGREGATE,
                flags: 0,
                body: body.freeze(),
            }),
            xid,
            "aggregate stats request",
        )?;
        loop {
            let (header, msg) = self.recv(deadline, "aggregate").await?;
            if header.xid != xid {
                continue;
            }
            return match msg {
                Message::MultipartReply(MultipartReply {
                    body: MultipartReplyBody::Other { mp_type, body },
                    ..
                }) if mp_type == OFPMP_AGGREGATE => {
                    AggregateStats::decode(&body).map_err(|e| OpenFlowError::Decode {
                        endpoint: self.endpoint.clone(),
                        source: e,
                    })
                }
                Message::Error(error) => Err(self.rejected("aggregate", error)),
                _ => Err(self.unexpected("aggregate", &header)),
            };
        }
    }

    /// Sends a METER_MOD and waits for the switch to have processed it.
    pub async fn meter_mod(&mut self, meter: &MeterMod) -> Result<(), OpenFlowError> {
        let xid = self.xid();
        self.push(&Message::MeterMod(meter.clone()), xid, "meter_mod")?;
        let barrier = self.xid();
        let deadline = self.send_now(&Message::BarrierRequest, barrier, "barrier")?;
        loop {
            let (header, msg) = self.recv(deadline, "meter_mod").await?;
            match msg {
                Message::Error(error) if header.xid == xid || header.xid == barrier => {
                    return Err(self.rejected("meter_mod", error));
                }
                Message::BarrierReply if header.xid == barrier => return Ok(()),
                _ => {}
            }
        }
    }
}

/// Index of the flow a reply xid refers to, if it is one of `count` xids from `first`.
fn flow_index(count: usize, first: u32, xid: u32) -> Option<usize> {
    // Allocation skips xid 0 on wrap-around; account for it.
    let mut offset = xid.wrapping_sub(first) as usize;
    if xid < first && first != 0 {
        offset = offset.checked_sub(1)?;
    }
    (offset < count).then_some(offset)
}

async fn write_loop(
    mut wr: Box<dyn AsyncWrite + Send + Unpin>,
    mut out_rx: mpsc::UnboundedReceiver<Bytes>,
    in_tx: mpsc::UnboundedSender<Incoming>,
) {
    while let Some(chunk) = out_rx.recv().await {
        let mut result = wr.write_all(&chunk).await;
        // Coalesce what queued up meanwhile before flushing.
        while result.is_ok() {
            match out_rx.try_recv() {
                Ok(more) => result = wr.write_all(&more).await,
                Err(_) => break,
            }
        }
        if let Err(e) = result.and(wr.flush().await) {
            let _ = in_tx.send(Incoming::Io(e));
            return;
        }
    }
}

async fn read_loop(
    mut rd: Box<dyn AsyncRead + Send + Unpin>,
    out_tx: mpsc::UnboundedSender<Bytes>,
    in_tx: mpsc::UnboundedSender<Incoming>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            match frame_len(&buf) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n);
                    if frame[1] == msg_type::ECHO_REQUEST {
                        let mut reply = frame;
                        reply[1] = msg_type::ECHO_REPLY;
                        let _ = out_tx.send(reply.freeze());
                    } else if in_tx.send(Incoming::Frame(frame.freeze())).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = in_tx.send(Incoming::Decode(e));
                    return;
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = in_tx.send(Incoming::Closed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = in_tx.send(Incoming::Io(e));
                return;
            }
        }
    }
}
