//! Arbitrary bytes read from the NETLINK_ROUTE socket must never panic the
//! function backends' reading of them: links (name, alias and the function
//! it names, MAC, up), VF states, addresses — as the shared `dpu_netlink`
//! decoder splits a datagram, `netlink-packet-route` decodes each message
//! and the backends read it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net_offload::functions::decode_route_datagram;

fuzz_target!(|data: &[u8]| {
    let _ = decode_route_datagram(data);
});
