//! JSON-RPC 1.0 messages as OVSDB uses them (RFC 7047 §4).
//!
//! Requests are `{"method","params","id"}`, replies `{"id","result","error"}`,
//! notifications are requests with `"id": null`. There is never a `"jsonrpc"`
//! member: ovsdb-server rejects messages with unexpected members.

use serde_json::{Map, Value};

/// Why a frame is not a JSON-RPC 1.0 message.
#[derive(Debug, thiserror::Error)]
pub enum JsonRpcError {
    #[error("message is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("message is not a JSON object")]
    NotAnObject,
    #[error("message has neither \"method\" nor \"result\"/\"error\"")]
    UnknownShape,
    #[error("\"method\" is not a string")]
    MethodNotString,
}

/// One decoded JSON-RPC 1.0 message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request that expects a reply with the same `id`.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A request with `"id": null`; no reply.
    Notification { method: String, params: Value },
    /// A reply: exactly one of `result` and `error` is non-null.
    Response {
        id: Value,
        result: Value,
        error: Value,
    },
}

impl Message {
    /// Decodes one framed message.
    pub fn decode(frame: &[u8]) -> Result<Self, JsonRpcError> {
        let value: Value = serde_json::from_slice(frame)?;
        let Value::Object(mut obj) = value else {
            return Err(JsonRpcError::NotAnObject);
        };
        let id = obj.remove("id").unwrap_or(Value::Null);
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(JsonRpcError::MethodNotString);
            };
            let params = obj.remove("params").unwrap_or(Value::Null);
            return Ok(if id.is_null() {
                Message::Notification { method, params }
            } else {
                Message::Request { id, method, params }
            });
        }
        if obj.contains_key("result") || obj.contains_key("error") {
            return Ok(Message::Response {
                id,
                result: obj.remove("result").unwrap_or(Value::Null),
                error: obj.remove("error").unwrap_or(Value::Null),
            });
        }
        Err(JsonRpcError::UnknownShape)
    }

    /// Encodes the message with members in the order of RFC 7047 §4.
    pub fn encode(&self) -> Vec<u8> {
        const NULL: &Value = &Value::Null;
        let encoded = match self {
            Message::Request { id, method, params } => {
                serde_json::to_vec(&RequestOut { method, params, id })
            }
            Message::Notification { method, params } => serde_json::to_vec(&RequestOut {
                method,
                params,
                id: NULL,
            }),
            Message::Response { id, result, error } => {
                serde_json::to_vec(&ResponseOut { id, result, error })
            }
        };
        // Serializing strings and Values cannot fail.
        encoded.unwrap_or_default()
    }
}

#[derive(serde::Serialize)]
struct RequestOut<'a> {
    method: &'a str,
    params: &'a Value,
    id: &'a Value,
}

#[derive(serde::Serialize)]
struct ResponseOut<'a> {
    id: &'a Value,
    result: &'a Value,
    error: &'a Value,
}

/// Renders a JSON-RPC `error` value for people: OVSDB uses
/// `{"error": "...", "details": "..."}` or a bare string.
pub fn describe_error(error: &Value) -> String {
    match error {
        Value::String(s) => s.clone(),
        Value::Object(obj) => describe_error_object(obj),
        other => other.to_string(),
    }
}

fn describe_error_object(obj: &Map<String, Value>) -> String {
    let error = obj.get("error").and_then(Value::as_str).unwrap_or("error");
    match obj.get("details").and_then(Value::as_str) {
        Some(details) => format!("{error}: {details}"),
        None => error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7047 §4.1.11 (Echo): the request and the reply a server expects.
    #[test]
    fn echo_request_and_reply_shapes() {
        let req = Message::decode(br#"{"method":"echo","params":[],"id":"echo"}"#).unwrap();
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
        assert_eq!(reply.encode(), br#"{"id":"echo","result":[],"error":null}"#);
    }

    /// RFC 7047 §4.1.1 (List Databases): request shape; no "jsonrpc" member.
    #[test]
    fn request_never_has_jsonrpc_member() {
        let msg = Message::Request {
            id: json!(0),
            method: "list_dbs".into(),
            params: json!([]),
        };
        assert_eq!(msg.encode(), br#"{"method":"list_dbs","params":[],"id":0}"#);
    }

    /// RFC 7047 §4.1.6 (Update Notification): `"id": null` makes a notification.
    #[test]
    fn notification_has_null_id() {
        let msg = Message::decode(br#"{"id":null,"method":"update2","params":["m",{}]}"#).unwrap();
        assert!(matches!(msg, Message::Notification { ref method, .. } if method == "update2"));
    }

    #[test]
    fn error_reply_and_bad_shapes() {
        let msg =
            Message::decode(br#"{"id":3,"result":null,"error":{"error":"unknown database"}}"#)
                .unwrap();
        let Message::Response { error, .. } = msg else {
            panic!("not a response")
        };
        assert_eq!(describe_error(&error), "unknown database");
        assert!(matches!(
            Message::decode(b"[]"),
            Err(JsonRpcError::NotAnObject)
        ));
        assert!(matches!(
            Message::decode(br#"{"id":1}"#),
            Err(JsonRpcError::UnknownShape)
        ));
        assert!(matches!(
            Message::decode(br#"{"method":1}"#),
            Err(JsonRpcError::MethodNotString)
        ));
    }
}
