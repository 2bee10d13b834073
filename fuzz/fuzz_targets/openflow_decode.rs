//! Arbitrary bytes from the switch must never panic the OpenFlow decoder; what
//! decodes must re-encode, and a decoded flow must print and parse as text.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use net_offload::openflow::{Flow, Message, Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    let Ok((header, msg)) = decode(data) else {
        return;
    };
    let version = if header.version == 0x04 {
        Version::Of13
    } else {
        Version::Of14
    };
    let mut out = BytesMut::new();
    let _ = encode(&msg, version, header.xid, &mut out);
    if let Message::FlowMod(fm) = &msg {
        let text = fm.flow.to_string();
        let _ = text.parse::<Flow>();
    }
});
