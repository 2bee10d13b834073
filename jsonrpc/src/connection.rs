//! An async JSON-RPC connection: one task owns the socket; [`Connection`] is
//! a cheap cloneable handle whose `call` sends a request to that task and
//! awaits the reply matched by id, so any number of callers can be in flight.
//!
//! The task answers the peer's `echo` requests when asked to (OVSDB's
//! liveness check) and every other request with "method not found"; sends
//! notifications to a channel if one is given (else drops them); and when the
//! connection ends — end of stream, an I/O error, bytes that cannot be
//! framed, a message that is not JSON-RPC — fails every pending request with
//! the [`ConnectionError`] and stops. Later calls fail with
//! [`ConnectionError::Closed`]. No reconnect, no timeouts: callers bound
//! their wait themselves.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::framer::{DEFAULT_MAX_LEN, FrameError, Framer, TopLevel};
use crate::matcher::{Failure, Matcher, Outcome, Routed};
use crate::message::{Message, MessageError, Version, method_not_found};

/// Why a connection ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionError {
    #[error("the peer closed the connection")]
    Eof,
    #[error("connection I/O failed")]
    Io(#[source] Arc<std::io::Error>),
    #[error("the peer sent bytes that cannot be framed")]
    Framing(#[source] FrameError),
    #[error("the peer sent a message that is not JSON-RPC")]
    Message(#[source] Arc<MessageError>),
    #[error("the connection is closed")]
    Closed,
}

/// A notification of the peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

/// How a [`Connection`] speaks.
#[derive(Debug, Clone)]
pub struct Options {
    pub version: Version,
    /// The largest message accepted.
    pub max_len: usize,
    /// Answer the peer's `echo` requests with their params.
    pub answer_echo: bool,
    /// Where the peer's notifications go.
    pub notifications: Option<mpsc::UnboundedSender<Notification>>,
}

impl Options {
    /// Defaults of `version`: 2.0 accepts batches; no echo, notifications
    /// dropped, [`DEFAULT_MAX_LEN`].
    pub fn new(version: Version) -> Self {
        Options {
            version,
            max_len: DEFAULT_MAX_LEN,
            answer_echo: false,
            notifications: None,
        }
    }

    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    pub fn answer_echo(mut self, yes: bool) -> Self {
        self.answer_echo = yes;
        self
    }

    pub fn notifications(mut self, tx: mpsc::UnboundedSender<Notification>) -> Self {
        self.notifications = Some(tx);
        self
    }
}

struct Call {
    method: String,
    params: Value,
    reply: oneshot::Sender<Outcome<ConnectionError>>,
}

/// Handle to one connection; clone freely. The task stops when the
/// connection ends or the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Connection {
    calls: mpsc::Sender<Call>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("method", &self.method)
            .finish()
    }
}

impl Connection {
    /// Starts the connection task over `reader` and `writer`. Must be called
    /// inside a tokio runtime.
    pub fn spawn<R, W>(reader: R, writer: W, options: Options) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (calls, rx) = mpsc::channel(64);
        tokio::spawn(run(reader, writer, options, rx));
        Connection { calls }
    }

    /// Sends one request (`params` `Null`: none) and awaits its outcome.
    pub async fn call(&self, method: &str, params: Value) -> Outcome<ConnectionError> {
        let (reply, rx) = oneshot::channel();
        let call = Call {
            method: method.to_owned(),
            params,
            reply,
        };
        if self.calls.send(call).await.is_err() {
            return Err(Failure::Lost(ConnectionError::Closed));
        }
        rx.await
            .unwrap_or(Err(Failure::Lost(ConnectionError::Closed)))
    }

    /// Whether the task has stopped.
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }
}

async fn run<R, W>(mut reader: R, mut writer: W, options: Options, mut calls: mpsc::Receiver<Call>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let version = options.version;
    let top = match version {
        Version::V1 => TopLevel::Objects,
        Version::V2 => TopLevel::ObjectsAndArrays,
    };
    let mut framer = Framer::new(top, options.max_len);
    let mut matcher = Matcher::<ConnectionError>::new(version);
    let fatal = loop {
        tokio::select! {
            call = calls.recv() => {
                // Every handle is gone; nobody can be waiting.
                let Some(call) = call else { return };
                let (_, bytes) = matcher.start(&call.method, call.params, call.reply);
                if let Err(e) = writer.write_all(&bytes).await {
                    break ConnectionError::Io(Arc::new(e));
                }
            }
            n = reader.read_buf(framer.buffer_mut()) => {
                match n {
                    Ok(0) => break ConnectionError::Eof,
                    Ok(_) => {}
                    Err(e) => break ConnectionError::Io(Arc::new(e)),
                }
                match drain(&mut framer, &mut matcher, &options, &mut writer).await {
                    Ok(()) => {}
                    Err(e) => break e,
                }
            }
        }
    };
    matcher.fail_all(|_| fatal.clone());
    // Dropping `calls` makes later calls fail with `Closed`.
}

/// Routes every complete message in the framer.
async fn drain<W: AsyncWrite + Unpin>(
    framer: &mut Framer,
    matcher: &mut Matcher<ConnectionError>,
    options: &Options,
    writer: &mut W,
) -> Result<(), ConnectionError> {
    while let Some(frame) = framer.next_frame().map_err(ConnectionError::Framing)? {
        let messages = Message::decode_batch(&frame, options.version)
            .map_err(|e| ConnectionError::Message(Arc::new(e)))?;
        for message in messages {
            match matcher.route(message) {
                Routed::Request { id, method, params } => {
                    let (result, error) = if options.answer_echo && method == "echo" {
                        (params, Value::Null)
                    } else {
                        (Value::Null, method_not_found(options.version, &method))
                    };
                    let reply = Message::Response { id, result, error }.encode(options.version);
                    writer
                        .write_all(&reply)
                        .await
                        .map_err(|e| ConnectionError::Io(Arc::new(e)))?;
                }
                Routed::Notification { method, params } => {
                    if let Some(tx) = &options.notifications {
                        let _ = tx.send(Notification { method, params });
                    }
                }
                Routed::Delivered { .. } | Routed::Unmatched { .. } | Routed::FailedAll { .. } => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    async fn next(stream: &mut UnixStream, framer: &mut Framer, version: Version) -> Message {
        loop {
            if let Some(frame) = framer.next_frame().unwrap() {
                return Message::decode(&frame, version).unwrap();
            }
            assert!(stream.read_buf(framer.buffer_mut()).await.unwrap() > 0);
        }
    }

    fn spawn(stream: UnixStream, options: Options) -> Connection {
        let (r, w) = stream.into_split();
        Connection::spawn(r, w, options)
    }

    /// Two callers answered in reverse order in one write; the peer's echo
    /// answered; a notification delivered to the channel in between.
    #[tokio::test]
    async fn concurrent_calls_echo_and_notifications() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let (ntx, mut nrx) = mpsc::unbounded_channel();
        let conn = spawn(
            a,
            Options::new(Version::V1)
                .answer_echo(true)
                .notifications(ntx),
        );
        let (c1, c2) = (conn.clone(), conn.clone());
        let one = tokio::spawn(async move { c1.call("list_dbs", json!([])).await });
        let two = tokio::spawn(async move { c2.call("get_schema", json!(["X"])).await });
        let mut framer = Framer::objects(DEFAULT_MAX_LEN);
        let mut reqs = Vec::new();
        for _ in 0..2 {
            let Message::Request { id, method, .. } =
                next(&mut peer, &mut framer, Version::V1).await
            else {
                panic!("not a request")
            };
            reqs.push((id, method));
        }
        peer.write_all(br#"{"method":"echo","params":["hi"],"id":"echo"}"#)
            .await
            .unwrap();
        assert_eq!(
            next(&mut peer, &mut framer, Version::V1).await,
            Message::Response {
                id: json!("echo"),
                result: json!(["hi"]),
                error: Value::Null
            }
        );
        let mut wire = br#"{"id":null,"method":"update2","params":[1]}"#.to_vec();
        for (id, method) in reqs.iter().rev() {
            wire.extend(
                Message::Response {
                    id: id.clone(),
                    result: json!(method),
                    error: Value::Null,
                }
                .encode(Version::V1),
            );
        }
        peer.write_all(&wire).await.unwrap();
        assert_eq!(one.await.unwrap().unwrap(), json!("list_dbs"));
        assert_eq!(two.await.unwrap().unwrap(), json!("get_schema"));
        assert_eq!(
            nrx.recv().await.unwrap(),
            Notification {
                method: "update2".into(),
                params: json!([1])
            }
        );
    }

    /// A closed connection fails every pending request, then later calls.
    #[tokio::test]
    async fn closed_connection_fails_pending_and_later_calls() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let conn = spawn(a, Options::new(Version::V2));
        let c = conn.clone();
        let call = tokio::spawn(async move { c.call("spdk_get_version", Value::Null).await });
        let mut framer = Framer::objects_and_arrays(DEFAULT_MAX_LEN);
        let req = next(&mut peer, &mut framer, Version::V2).await;
        assert!(matches!(req, Message::Request { ref params, .. } if params.is_null()));
        drop(peer);
        assert!(matches!(
            call.await.unwrap(),
            Err(Failure::Lost(ConnectionError::Eof))
        ));
        assert!(matches!(
            conn.call("x", Value::Null).await,
            Err(Failure::Lost(ConnectionError::Closed))
        ));
    }

    /// Garbage fails the pending request with the framing error; a 2.0
    /// request of the peer is answered "method not found".
    #[tokio::test]
    async fn garbage_and_unknown_requests() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let conn = spawn(a, Options::new(Version::V2));
        let c = conn.clone();
        let call = tokio::spawn(async move { c.call("m", json!({"a": 1})).await });
        let mut framer = Framer::objects_and_arrays(DEFAULT_MAX_LEN);
        next(&mut peer, &mut framer, Version::V2).await;
        peer.write_all(br#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#)
            .await
            .unwrap();
        let answer = next(&mut peer, &mut framer, Version::V2).await;
        assert!(matches!(answer, Message::Response { error, .. } if error["code"] == -32601));
        peer.write_all(b"nonsense").await.unwrap();
        assert!(matches!(
            call.await.unwrap(),
            Err(Failure::Lost(ConnectionError::Framing(
                FrameError::UnexpectedByte { byte: b'n' }
            )))
        ));
    }
}
