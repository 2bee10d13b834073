//! JSON-RPC 1.0 as OVSDB uses it (RFC 7047 §4): the framer, the messages and
//! the request/response matcher are the shared `dpu-jsonrpc` crate's, used
//! with [`Version::V1`] (requests `{"method","params","id"}`, replies
//! `{"id","result","error"}`, notifications with `"id": null`, never a
//! `"jsonrpc"` member: ovsdb-server rejects messages with unexpected
//! members). What is OVSDB's own is the shape of its errors.

use serde_json::{Map, Value};

pub use dpu_jsonrpc::{
    DEFAULT_MAX_LEN, FrameError, Framer, Message, MessageError as JsonRpcError, Version,
};

/// The JSON-RPC version OVSDB speaks.
pub const VERSION: Version = Version::V1;

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
    //! The message shapes themselves are tested in dpu-jsonrpc.

    use super::*;
    use serde_json::json;

    #[test]
    fn error_reply_is_described() {
        let msg = Message::decode(
            br#"{"id":3,"result":null,"error":{"error":"unknown database"}}"#,
            VERSION,
        )
        .unwrap();
        let Message::Response { error, .. } = msg else {
            panic!("not a response")
        };
        assert_eq!(describe_error(&error), "unknown database");
        assert_eq!(
            describe_error(&json!({"error": "syntax error", "details": "bad"})),
            "syntax error: bad"
        );
        assert_eq!(describe_error(&json!("plain")), "plain");
        assert_eq!(describe_error(&json!(7)), "7");
    }
}
