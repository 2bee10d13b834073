//! JSON-RPC messages of either version.
//!
//! - 1.0 (OVSDB, RFC 7047 §4; unixctl): requests `{"method","params","id"}`,
//!   replies `{"id","result","error"}` with both members present, one null;
//!   notifications are requests with `"id": null`. There is never a
//!   `"jsonrpc"` member: ovsdb-server rejects messages with unexpected
//!   members. The `error` is any JSON value (OVSDB: `{"error","details"}`,
//!   unixctl: a string). No batches.
//! - 2.0 (SPDK): every message has `"jsonrpc": "2.0"`; a notification is a
//!   request without `id`; `params` is left out when there are none (SPDK
//!   rejects params on methods that take none); a reply has `result` or
//!   `error`, the error an object `{"code": int, "message": string,
//!   "data"?}`; an array is a batch.
//!
//! Decoding is lenient where peers are: a 2.0 message without `"jsonrpc"` is
//! accepted (one with another value is not), and a reply may carry both
//! members with one null.

use serde::Serialize;
use serde_json::{Map, Value};

/// Which JSON-RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// JSON-RPC 1.0: OVSDB and unixctl.
    V1,
    /// JSON-RPC 2.0: SPDK and SNAP.
    V2,
}

/// Why a frame is not a JSON-RPC message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("batch is empty")]
    EmptyBatch,
    #[error("message has neither \"method\" nor \"result\"/\"error\"")]
    UnknownShape,
    #[error("\"method\" is not a string")]
    MethodNotString,
    #[error("\"jsonrpc\" is {0}, not \"2.0\"")]
    BadVersion(Value),
    #[error("\"error\" is not an object with an integer \"code\" and a string \"message\": {0}")]
    BadErrorObject(Value),
}

/// One decoded JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request that expects a reply with the same `id`.
    Request {
        id: Value,
        method: String,
        /// `Null` when absent (2.0 then leaves it out on the wire).
        params: Value,
    },
    /// A request without a reply (1.0: `"id": null`; 2.0: no `id`).
    Notification { method: String, params: Value },
    /// A reply: `error` is `Null` on success.
    Response {
        id: Value,
        result: Value,
        error: Value,
    },
}

impl Message {
    /// Decodes one framed message (an object).
    pub fn decode(frame: &[u8], version: Version) -> Result<Self, MessageError> {
        let value: Value = serde_json::from_slice(frame)?;
        Self::from_value(value, version)
    }

    /// Decodes one framed value: an object, or with 2.0 a non-empty batch.
    pub fn decode_batch(frame: &[u8], version: Version) -> Result<Vec<Self>, MessageError> {
        let value: Value = serde_json::from_slice(frame)?;
        match (value, version) {
            (Value::Array(items), Version::V2) => {
                if items.is_empty() {
                    return Err(MessageError::EmptyBatch);
                }
                items
                    .into_iter()
                    .map(|v| Self::from_value(v, version))
                    .collect()
            }
            (value, version) => Ok(vec![Self::from_value(value, version)?]),
        }
    }

    /// Decodes one message from its JSON value.
    pub fn from_value(value: Value, version: Version) -> Result<Self, MessageError> {
        let Value::Object(mut obj) = value else {
            return Err(MessageError::NotAnObject);
        };
        if version == Version::V2 {
            match obj.remove("jsonrpc") {
                None => {}
                Some(Value::String(v)) if v == "2.0" => {}
                Some(other) => return Err(MessageError::BadVersion(other)),
            }
        }
        let id = obj.remove("id");
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(MessageError::MethodNotString);
            };
            let params = obj.remove("params").unwrap_or(Value::Null);
            let notification = match version {
                Version::V1 => id.as_ref().is_none_or(Value::is_null),
                Version::V2 => id.is_none(),
            };
            return Ok(match id {
                Some(id) if !notification => Message::Request { id, method, params },
                _ => Message::Notification { method, params },
            });
        }
        if obj.contains_key("result") || obj.contains_key("error") {
            let error = obj.remove("error").unwrap_or(Value::Null);
            if version == Version::V2 && !error.is_null() && !is_error_object(&error) {
                return Err(MessageError::BadErrorObject(error));
            }
            return Ok(Message::Response {
                id: id.unwrap_or(Value::Null),
                result: obj.remove("result").unwrap_or(Value::Null),
                error,
            });
        }
        Err(MessageError::UnknownShape)
    }

    /// Encodes the message: 1.0 with members in the order of RFC 7047 §4,
    /// 2.0 with `"jsonrpc":"2.0"` first.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        const NULL: &Value = &Value::Null;
        let encoded = match (version, self) {
            (Version::V1, Message::Request { id, method, params }) => {
                serde_json::to_vec(&V1Request { method, params, id })
            }
            (Version::V1, Message::Notification { method, params }) => {
                serde_json::to_vec(&V1Request {
                    method,
                    params,
                    id: NULL,
                })
            }
            (Version::V1, Message::Response { id, result, error }) => {
                serde_json::to_vec(&V1Response { id, result, error })
            }
            (Version::V2, Message::Request { id, method, params }) => {
                serde_json::to_vec(&V2Request {
                    jsonrpc: "2.0",
                    id: Some(id),
                    method,
                    params: (!params.is_null()).then_some(params),
                })
            }
            (Version::V2, Message::Notification { method, params }) => {
                serde_json::to_vec(&V2Request {
                    jsonrpc: "2.0",
                    id: None,
                    method,
                    params: (!params.is_null()).then_some(params),
                })
            }
            (Version::V2, Message::Response { id, result, error }) => {
                let (result, error) = if error.is_null() {
                    (Some(result), None)
                } else {
                    (None, Some(error))
                };
                serde_json::to_vec(&V2Response {
                    jsonrpc: "2.0",
                    id,
                    result,
                    error,
                })
            }
        };
        // Serializing strings and Values cannot fail.
        encoded.unwrap_or_default()
    }
}

fn is_error_object(error: &Value) -> bool {
    let Value::Object(obj) = error else {
        return false;
    };
    obj.get("code").is_some_and(|c| c.as_i64().is_some())
        && obj.get("message").is_some_and(Value::is_string)
}

/// The 2.0 error object for "no such method" (§5.1), what a peer answers to
/// a request it does not serve; 1.0 peers get OVSDB's shape.
pub fn method_not_found(version: Version, method: &str) -> Value {
    let mut obj = Map::new();
    match version {
        Version::V1 => {
            obj.insert("error".into(), "unknown method".into());
            obj.insert("details".into(), method.into());
        }
        Version::V2 => {
            obj.insert("code".into(), (-32601).into());
            obj.insert("message".into(), "Method not found".into());
            obj.insert("data".into(), method.into());
        }
    }
    Value::Object(obj)
}

#[derive(Serialize)]
struct V1Request<'a> {
    method: &'a str,
    params: &'a Value,
    id: &'a Value,
}

#[derive(Serialize)]
struct V1Response<'a> {
    id: &'a Value,
    result: &'a Value,
    error: &'a Value,
}

#[derive(Serialize)]
struct V2Request<'a> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a Value>,
}

#[derive(Serialize)]
struct V2Response<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7047 §4.1.11 (Echo): the request and the reply a server expects.
    #[test]
    fn echo_request_and_reply_shapes() {
        let req =
            Message::decode(br#"{"method":"echo","params":[],"id":"echo"}"#, Version::V1).unwrap();
        assert_eq!(
            req,
            Message::Request {
                id: json!("echo"),
                method: "echo".into(),
                params: json!([])
            }
        );
        let reply = Message::Response {
            id: json!("echo"),
            result: json!([]),
            error: Value::Null,
        };
        assert_eq!(
            reply.encode(Version::V1),
            br#"{"id":"echo","result":[],"error":null}"#
        );
    }

    /// RFC 7047 §4.1.1 (List Databases): request shape; no "jsonrpc" member.
    #[test]
    fn v1_request_never_has_jsonrpc_member() {
        let msg = Message::Request {
            id: json!(0),
            method: "list_dbs".into(),
            params: json!([]),
        };
        assert_eq!(
            msg.encode(Version::V1),
            br#"{"method":"list_dbs","params":[],"id":0}"#
        );
    }

    /// RFC 7047 §4.1.6 (Update Notification): `"id": null` makes a notification.
    #[test]
    fn v1_notification_has_null_id() {
        let msg = Message::decode(
            br#"{"id":null,"method":"update2","params":["m",{}]}"#,
            Version::V1,
        )
        .unwrap();
        assert!(matches!(msg, Message::Notification { ref method, .. } if method == "update2"));
        // In 2.0 only a missing id makes a notification.
        let msg = Message::decode(br#"{"jsonrpc":"2.0","method":"x"}"#, Version::V2).unwrap();
        assert!(matches!(msg, Message::Notification { .. }));
    }

    /// The unixctl request `ovs-appctl` sends (lib/unixctl.c) and its reply.
    #[test]
    fn unixctl_shapes() {
        let msg = Message::Request {
            id: json!(1),
            method: "dpctl/dump-flows".into(),
            params: json!(["-m", "--names"]),
        };
        assert_eq!(
            msg.encode(Version::V1),
            br#"{"method":"dpctl/dump-flows","params":["-m","--names"],"id":1}"#
        );
        let reply = Message::decode(
            br#"{"id":1,"result":null,"error":"no such command\n"}"#,
            Version::V1,
        )
        .unwrap();
        assert_eq!(
            reply,
            Message::Response {
                id: json!(1),
                result: Value::Null,
                error: json!("no such command\n")
            }
        );
    }

    /// JSON-RPC 2.0 §4 as SPDK's `rpc.py` sends it: params left out when
    /// there are none.
    #[test]
    fn v2_requests_as_spdk_reads_them() {
        let with = Message::Request {
            id: json!(7),
            method: "bdev_malloc_create".into(),
            params: json!({"block_size": 512, "num_blocks": 1}),
        };
        assert_eq!(
            with.encode(Version::V2),
            br#"{"jsonrpc":"2.0","id":7,"method":"bdev_malloc_create","params":{"block_size":512,"num_blocks":1}}"#
        );
        let without = Message::Request {
            id: json!(1),
            method: "spdk_get_version".into(),
            params: Value::Null,
        };
        assert_eq!(
            without.encode(Version::V2),
            br#"{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}"#
        );
    }

    /// JSON-RPC 2.0 §5/§6 responses as SPDK's `jsonrpc_server.c` sends them.
    #[test]
    fn v2_responses_and_batches() {
        let got = Message::decode_batch(
            br#"[{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Invalid parameters"}},
                 {"jsonrpc":"2.0","id":1,"result":[]}]"#,
            Version::V2,
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Message::Response { error, .. } if error["code"] == -32602));
        assert!(
            matches!(&got[1], Message::Response { result, error: Value::Null, .. } if result == &json!([]))
        );
        let err = Message::Response {
            id: json!(3),
            result: Value::Null,
            error: json!({"code": -1, "message": "no"}),
        };
        assert_eq!(
            err.encode(Version::V2),
            br#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"no"}}"#
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let v1 = |b: &[u8]| Message::decode(b, Version::V1);
        let v2 = |b: &[u8]| Message::decode_batch(b, Version::V2);
        assert!(matches!(v1(b"[]"), Err(MessageError::NotAnObject)));
        assert!(matches!(
            v1(br#"{"id":1}"#),
            Err(MessageError::UnknownShape)
        ));
        assert!(matches!(
            v1(br#"{"method":1}"#),
            Err(MessageError::MethodNotString)
        ));
        assert!(matches!(v1(b"{"), Err(MessageError::Json(_))));
        assert!(matches!(v2(b"[]"), Err(MessageError::EmptyBatch)));
        assert!(matches!(v2(b"[1]"), Err(MessageError::NotAnObject)));
        assert!(matches!(
            v2(br#"{"id":1,"error":{"code":"x"}}"#),
            Err(MessageError::BadErrorObject(_))
        ));
        assert!(matches!(
            v2(br#"{"jsonrpc":"1.0","id":1,"result":1}"#),
            Err(MessageError::BadVersion(_))
        ));
        // 1.0 errors are any value.
        assert!(v1(br#"{"id":1,"result":null,"error":{"error":"x"}}"#).is_ok());
    }
}
