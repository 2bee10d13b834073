//! Arbitrary bytes read from the generic netlink socket must never panic
//! the shared netlink layer's reply decoder (`dpu_netlink::msg`, as the
//! devlink client's socket runs it) nor its attribute reader on the
//! generic netlink payloads, whatever sequence number is awaited; nor the
//! devlink port decoder and eswitch grouping (`net_offload::functions::
//! eswitch`), on the payloads of a dump and on the raw bytes as one port.
#![no_main]

use dpu_netlink::{attr, genl, msg};
use libfuzzer_sys::fuzz_target;
use net_offload::functions::eswitch;

fuzz_target!(|data: &[u8]| {
    let seq = data
        .get(8..12)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    let mut out = Vec::new();
    // devlink requests ask for an ack.
    let _ = msg::decode_replies(data, seq, true, &mut out);
    let _ = genl::family_id(&out);
    let attrs: Vec<Vec<u8>> = out.iter().map(|p| genl::attrs_of(p).to_vec()).collect();
    if let Ok(ports) = eswitch::decode_port_dump(&attrs) {
        let _ = eswitch::Eswitch::from_ports(ports);
    }
    if let Ok(port) = eswitch::decode_port(data) {
        let _ = eswitch::Eswitch::from_ports(vec![port]);
    }
    // A dump is not acked.
    let mut dump = Vec::new();
    let _ = msg::decode_replies(data, seq, false, &mut dump);
    for payload in &out {
        for (_, p) in attr::attrs(genl::attrs_of(payload)) {
            let _ = (attr::u16(p), attr::u32(p), attr::string(p));
            let _ = attr::attrs(p).count();
        }
    }
});
