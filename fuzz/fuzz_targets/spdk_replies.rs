//! Arbitrary bytes from SPDK's (or SNAP's) RPC socket, cut into arbitrary
//! reads, must never panic the shared framer (`dpu_jsonrpc::Framer`, objects
//! and batches), the JSON-RPC 2.0 decoding and reply dispatch (the shared
//! matcher, through `dispatch_to`), the typed decoding of the results the backend reads, nor the
//! name search in SNAP's untyped lists.
#![no_main]

use dpu_jsonrpc::Framer;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use storage_offload::spdk::client::dispatch_to;
use storage_offload::spdk::methods::{self as m, RpcMethod};
use storage_offload::spdk::snap;

/// Small so that the length limit is exercised too.
const MAX_VALUE: usize = 4096;

fn typed<M: RpcMethod>(v: &Value) -> Option<M::Output> {
    serde_json::from_value(v.clone()).ok()
}

fn read_result(v: &Value) {
    let _ = typed::<m::RpcGetMethods>(v);
    let _ = typed::<m::SpdkGetVersion>(v);
    for b in typed::<m::BdevGetBdevs>(v).unwrap_or_default() {
        let _ = b.size_bytes();
    }
    let _ = typed::<m::BdevNvmeGetControllers>(v);
    let _ = typed::<m::NvmfGetTransports>(v);
    for s in typed::<m::NvmfGetSubsystems>(v).unwrap_or_default() {
        for n in &s.namespaces {
            let _ = n.bdev();
        }
    }
    let _ = typed::<m::VhostGetControllers>(v);
    let _ = typed::<m::NvmfSubsystemAddNs>(v);
    let _ = typed::<m::BdevMallocCreate>(v);
    for key in ["nqn", "name", "ctrl"] {
        let _ = snap::names_in(v, key);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size (1..=256 bytes per read).
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut framer = Framer::objects_and_arrays(MAX_VALUE);
    for chunk in stream.chunks(usize::from(cut) + 1) {
        framer.push(chunk);
        loop {
            match framer.next_frame() {
                Ok(Some(value)) => {
                    let Ok(replies) = dispatch_to(&value, &[0, 1, 2, 3]) else {
                        // As the connection: a message that is not JSON-RPC
                        // ends it.
                        return;
                    };
                    for (_, reply) in replies {
                        match reply {
                            Ok(v) => read_result(&v),
                            Err(e) => drop(e.to_string()),
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
