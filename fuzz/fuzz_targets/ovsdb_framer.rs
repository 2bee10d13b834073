//! Arbitrary bytes from ovsdb-server, cut into arbitrary reads, must never
//! panic the shared framer (`dpu_jsonrpc::Framer`, objects only), the
//! JSON-RPC 1.0 decoder or the request/response matcher; every frame is one
//! complete top-level object, and what the stream frames to — the error
//! included — does not depend on how it was cut.
#![no_main]

use dpu_jsonrpc::{Framer, Matcher, Message, Routed, Version};
use libfuzzer_sys::fuzz_target;
use net_offload::ovsdb::jsonrpc::describe_error;
use tokio::sync::oneshot;

/// Small so that the length limit is exercised too.
const MAX_FRAME: usize = 4096;

fn frames(chunks: impl Iterator<Item = Vec<u8>>) -> (Vec<Vec<u8>>, bool) {
    let mut framer = Framer::objects(MAX_FRAME);
    let mut out = Vec::new();
    for chunk in chunks {
        framer.push(&chunk);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size (1..=256 bytes per read).
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut) + 1;
    let chunked = frames(stream.chunks(step).map(<[u8]>::to_vec));
    let whole = frames(std::iter::once(stream.to_vec()));
    // The limit is checked byte by byte, so the cuts change nothing.
    assert_eq!(chunked, whole);
    // As the OVSDB session: ids 1..=3 pending, every message routed.
    let mut matcher = Matcher::<()>::new(Version::V1);
    let mut waiting = Vec::new();
    for method in ["list_dbs", "get_schema", "transact"] {
        let (tx, rx) = oneshot::channel();
        matcher.start(method, serde_json::json!([]), tx);
        waiting.push(rx);
    }
    for frame in &chunked.0 {
        assert_eq!(frame.first(), Some(&b'{'));
        assert!(matches!(frame.last(), Some(b'}' | b']')));
        let Ok(message) = Message::decode(frame, Version::V1) else {
            continue;
        };
        if let Message::Response { error, .. } = &message {
            let _ = describe_error(error);
        }
        if let Routed::Request { id, params, .. } = matcher.route(message) {
            let _ = Message::Response {
                id,
                result: params,
                error: serde_json::Value::Null,
            }
            .encode(Version::V1);
        }
    }
    matcher.fail_all(|_| ());
    for mut rx in waiting {
        assert!(
            rx.try_recv().is_ok(),
            "every pending request gets an outcome"
        );
    }
});
