//! Request ids and the pending map: which caller waits for which reply.
//!
//! The matcher is synchronous and owns no socket: the task that owns one
//! ([`crate::Connection`], or OVSDB's session loop, which must apply
//! notifications in stream order with the replies) gives it every decoded
//! message with [`Matcher::route`]. Ids are integers counted from 1; a
//! response whose id the matcher did not issue (a probe's, or one for a
//! caller that gave up) is reported as [`Routed::Unmatched`].

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::message::{Message, Version};

/// Why a request got no result.
#[derive(Debug)]
pub enum Failure<E> {
    /// The peer answered with this `error` value.
    Rejected(Value),
    /// The peer sent an error with a null id (2.0 §5: it could not read a
    /// request's id); every request pending then gets it.
    Unattributed(Value),
    /// The connection ended (or the owner failed the request) with `E`.
    Lost(E),
}

/// What a caller receives.
pub type Outcome<E> = Result<Value, Failure<E>>;

/// What [`Matcher::route`] did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A response delivered to the caller waiting on `id` (or dropped if
    /// that caller had stopped listening).
    Delivered { id: u64 },
    /// A response nobody waits for.
    Unmatched { id: Value },
    /// An error without an id, given to every pending request.
    FailedAll { error: Value },
    /// A request of the peer: the owner answers it.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A notification of the peer.
    Notification { method: String, params: Value },
}

struct Waiter<E> {
    method: String,
    reply: oneshot::Sender<Outcome<E>>,
}

/// The pending requests of one connection.
pub struct Matcher<E> {
    version: Version,
    next_id: u64,
    pending: HashMap<u64, Waiter<E>>,
}

impl<E> std::fmt::Debug for Matcher<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("version", &self.version)
            .field("next_id", &self.next_id)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<E> Matcher<E> {
    pub fn new(version: Version) -> Self {
        Self {
            version,
            next_id: 1,
            pending: HashMap::new(),
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Registers a request under a fresh id and returns the id and the
    /// bytes to send.
    pub fn start(
        &mut self,
        method: &str,
        params: Value,
        reply: oneshot::Sender<Outcome<E>>,
    ) -> (u64, Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = Message::Request {
            id: Value::from(id),
            method: method.to_owned(),
            params,
        }
        .encode(self.version);
        self.insert(id, method, reply);
        (id, bytes)
    }

    /// Registers a caller waiting on `id` (sent by other means).
    pub fn insert(&mut self, id: u64, method: &str, reply: oneshot::Sender<Outcome<E>>) {
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.pending.insert(
            id,
            Waiter {
                method: method.to_owned(),
                reply,
            },
        );
    }

    /// Requests still waiting.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Routes one message from the peer.
    pub fn route(&mut self, message: Message) -> Routed {
        match message {
            Message::Request { id, method, params } => Routed::Request { id, method, params },
            Message::Notification { method, params } => Routed::Notification { method, params },
            Message::Response { id, result, error } => {
                if id.is_null() && !error.is_null() && self.version == Version::V2 {
                    for (_, w) in self.pending.drain() {
                        let _ = w.reply.send(Err(Failure::Unattributed(error.clone())));
                    }
                    return Routed::FailedAll { error };
                }
                let Some(waiter) = id.as_u64().and_then(|n| self.pending.remove(&n)) else {
                    return Routed::Unmatched { id };
                };
                let outcome = if error.is_null() {
                    Ok(result)
                } else {
                    Err(Failure::Rejected(error))
                };
                let _ = waiter.reply.send(outcome);
                Routed::Delivered {
                    id: id.as_u64().unwrap_or_default(),
                }
            }
        }
    }

    /// Fails every pending request with `lost(method)`: the connection ended.
    pub fn fail_all(&mut self, mut lost: impl FnMut(&str) -> E) {
        for (_, w) in self.pending.drain() {
            let _ = w.reply.send(Err(Failure::Lost(lost(&w.method))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(id: Value, result: Value, error: Value) -> Message {
        Message::Response { id, result, error }
    }

    #[test]
    fn out_of_order_replies_reach_their_callers() {
        let mut m = Matcher::<()>::new(Version::V1);
        let (t1, mut r1) = oneshot::channel();
        let (t2, mut r2) = oneshot::channel();
        let (id1, bytes1) = m.start("list_dbs", json!([]), t1);
        let (id2, _) = m.start("get_schema", json!(["X"]), t2);
        assert_eq!((id1, id2), (1, 2));
        assert_eq!(bytes1, br#"{"method":"list_dbs","params":[],"id":1}"#);
        assert_eq!(
            m.route(response(json!(2), json!("s"), Value::Null)),
            Routed::Delivered { id: 2 }
        );
        assert_eq!(
            m.route(response(json!(1), Value::Null, json!({"error": "x"}))),
            Routed::Delivered { id: 1 }
        );
        assert!(matches!(r2.try_recv(), Ok(Ok(v)) if v == json!("s")));
        assert!(matches!(r1.try_recv(), Ok(Err(Failure::Rejected(e))) if e["error"] == "x"));
        assert_eq!(m.pending_len(), 0);
        // A probe's reply, a repeat, a string id: nobody waits.
        assert_eq!(
            m.route(response(json!("probe"), json!([]), Value::Null)),
            Routed::Unmatched { id: json!("probe") }
        );
        assert_eq!(
            m.route(response(json!(1), json!([]), Value::Null)),
            Routed::Unmatched { id: json!(1) }
        );
    }

    #[test]
    fn requests_and_notifications_go_to_the_owner() {
        let mut m = Matcher::<()>::new(Version::V1);
        let echo = Message::decode(
            br#"{"method":"echo","params":["hi"],"id":"echo"}"#,
            Version::V1,
        )
        .unwrap();
        assert!(matches!(m.route(echo), Routed::Request { method, .. } if method == "echo"));
        let n = Message::decode(
            br#"{"method":"update2","params":[],"id":null}"#,
            Version::V1,
        )
        .unwrap();
        assert!(matches!(m.route(n), Routed::Notification { .. }));
    }

    /// JSON-RPC 2.0 §5: an error with a null id cannot be attributed, so
    /// every waiting caller learns it; in 1.0 it is just unmatched.
    #[test]
    fn null_id_error_fails_everyone_in_v2_only() {
        let mut m = Matcher::<()>::new(Version::V2);
        let (t4, mut r4) = oneshot::channel();
        let (t5, mut r5) = oneshot::channel();
        m.insert(4, "a", t4);
        m.insert(5, "b", t5);
        let parse = json!({"code": -32700, "message": "Parse error"});
        assert!(matches!(
            m.route(response(Value::Null, Value::Null, parse.clone())),
            Routed::FailedAll { .. }
        ));
        for r in [&mut r4, &mut r5] {
            assert!(matches!(r.try_recv(), Ok(Err(Failure::Unattributed(e))) if e == parse));
        }
        let mut v1 = Matcher::<()>::new(Version::V1);
        let (t, _r) = oneshot::channel();
        v1.insert(1, "a", t);
        assert!(matches!(
            v1.route(response(Value::Null, Value::Null, json!("x"))),
            Routed::Unmatched { .. }
        ));
        assert_eq!(v1.pending_len(), 1);
    }

    #[test]
    fn fail_all_names_each_method() {
        let mut m = Matcher::<String>::new(Version::V2);
        let (t, mut r) = oneshot::channel();
        let (_, bytes) = m.start("spdk_get_version", Value::Null, t);
        assert_eq!(
            bytes,
            br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#
        );
        m.fail_all(|method| format!("lost before {method}"));
        assert!(
            matches!(r.try_recv(), Ok(Err(Failure::Lost(e))) if e == "lost before spdk_get_version")
        );
    }
}
