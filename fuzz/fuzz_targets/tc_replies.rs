//! Arbitrary bytes read from the NETLINK_ROUTE socket in answer to the
//! volume QoS's qdisc, class and filter dumps must never panic the shared
//! netlink layer's reply decoder (`dpu_netlink::msg`, as the tc code's
//! socket runs it) nor what `observe` concludes from the bodies.
#![no_main]

use dpu_netlink::msg;
use libfuzzer_sys::fuzz_target;
use storage_offload::nvmet::tc::observe_dumps;

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    // Answer the sequence number and interface of the first message, so
    // that what the fuzzer writes is mostly taken as ours.
    let seq = u32_at(data, 8);
    let ifindex = u32_at(data, 20);
    let mut bodies = Vec::new();
    // Dumps (no ack) and changes (with an ack) alike.
    let _ = msg::decode_replies(data, seq, data.len() % 2 == 0, &mut bodies);
    // One datagram stands for each dump in turn.
    let obs = observe_dumps("eth0", ifindex, &bodies, &bodies, &bodies);
    let _ = obs.ours();
});
