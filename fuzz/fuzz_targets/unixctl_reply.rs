//! Arbitrary bytes from ovs-vswitchd's control socket must never panic the
//! unixctl client: the shared framer, the reply decoding, the count of datapath
//! flows per port and each datapath's lookups in the result text.
#![no_main]

use dpu_jsonrpc::Framer;
use libfuzzer_sys::fuzz_target;
use net_offload::unixctl::{decode_reply, parse_datapath_flows, parse_datapath_show};

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::objects(64 * 1024);
    framer.push(data);
    // The client reads one reply and closes.
    let Ok(Some(frame)) = framer.next_frame() else {
        return;
    };
    if let Ok(text) = decode_reply("ovs-vswitchd.ctl", "dpctl/dump-flows", &frame) {
        for (port, flows) in parse_datapath_flows(&text) {
            assert!(!port.contains(')'));
            assert!(flows.offloaded <= flows.total);
        }
        for d in parse_datapath_show(&text) {
            assert!(d.datapath.contains('@'));
        }
    }
});
