//! Arbitrary bytes read from the NETLINK_XFRM socket (an SA or policy dump)
//! must never panic the decoder (the shared `dpu_netlink` message splitter
//! and attribute reader under `dpu_crypto::xfrm::decode`), nor what the agent does with the decoded
//! state: plan orphan removal and tunnel teardown over it, print the
//! actions, encode their delete requests. (Decoded state is never
//! re-encoded whole by the agent, so that is not checked here.)
#![no_main]

use std::collections::BTreeSet;
use std::time::Duration;

use dpu_crypto::plan::{Action, Observed, plan, plan_teardown};
use dpu_crypto::xfrm::{Reply, Request, decode};
use libfuzzer_sys::fuzz_target;

fn encode_deletes(actions: &[Action]) {
    for a in actions {
        let _ = a.to_string();
        match a {
            Action::DeleteSa { id, .. } => drop(Request::DelSa(*id).encode(1)),
            Action::DeletePolicy { id, .. } => drop(Request::DelPolicy(*id).encode(1)),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = decode(data) else {
        return;
    };
    let mut observed = Observed::default();
    for m in messages {
        match m.reply {
            Reply::Sa(sa) => {
                let _ = sa.effective_replay_window();
                observed.sas.push(*sa);
            }
            Reply::Policy(p) => observed.policies.push(*p),
            _ => {}
        }
    }
    let p = plan(
        &[],
        &BTreeSet::new(),
        &observed,
        1_000,
        Duration::from_secs(30),
    );
    encode_deletes(&p.actions);
    let reqids: BTreeSet<u32> = observed.sas.iter().map(|s| s.reqid).collect();
    for reqid in reqids {
        encode_deletes(&plan_teardown(reqid, "t", &observed));
    }
});
