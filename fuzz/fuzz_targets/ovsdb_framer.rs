//! Arbitrary bytes from ovsdb-server, cut into arbitrary reads, must never
//! panic the framer or the JSON-RPC 1.0 decoder; every frame the framer
//! returns is one complete top-level object, whatever the cuts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net_offload::ovsdb::framing::JsonFramer;
use net_offload::ovsdb::jsonrpc::{Message, describe_error};

/// Small so that the length limit is exercised too.
const MAX_FRAME: usize = 4096;

fn frames(chunks: impl Iterator<Item = Vec<u8>>) -> (Vec<Vec<u8>>, bool) {
    let mut framer = JsonFramer::new(MAX_FRAME);
    let mut out = Vec::new();
    for chunk in chunks {
        framer.push(&chunk);
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => out.push(frame.to_vec()),
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
    let (chunked, chunked_failed) = frames(stream.chunks(step).map(<[u8]>::to_vec));
    let (whole, whole_failed) = frames(std::iter::once(stream.to_vec()));
    // How the stream was cut must not change what it frames to (the length
    // limit is checked per read, so only compare runs that ended cleanly).
    if !chunked_failed && !whole_failed {
        assert_eq!(chunked, whole);
    }
    for frame in &chunked {
        assert_eq!(frame.first(), Some(&b'{'));
        assert!(matches!(frame.last(), Some(b'}' | b']')));
        if let Ok(Message::Response { error, .. }) = Message::decode(frame) {
            let _ = describe_error(&error);
        }
    }
});
