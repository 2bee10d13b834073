//! Arbitrary bytes read from the generic netlink socket must never panic
//! the devlink reply decoder, whatever sequence number is awaited.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net_offload::functions::devlink::{decode_replies, parse_attrs};

fuzz_target!(|data: &[u8]| {
    let seq = data
        .get(8..12)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    let mut out = Vec::new();
    let _ = decode_replies(data, seq, &mut out);
    for payload in &out {
        let _ = parse_attrs(payload);
    }
});
