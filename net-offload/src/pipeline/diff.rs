//! The pure flow diff: desired flows against a dump of the bridge, compared
//! in decoded canonical form (never as text). A flow is identified by
//! (table, priority, match), as the switch identifies it.
//!
//! - desired, absent → `ADD`;
//! - present with the same cookie and instructions → untouched (its counters
//!   keep counting);
//! - present with other instructions → `MODIFY_STRICT` (OVS keeps counters);
//! - present with another cookie → `ADD` (replaces it, cookie included);
//! - present in the agent's cookie space but not desired → `DELETE_STRICT`;
//! - any other flow (an operator's cookie) is left alone.

use std::collections::HashMap;

use super::FlowKeyHasher;
use super::cookie::is_agent_cookie;
use crate::openflow::{Flow, FlowMod, Match};

/// What to send to make the bridge hold the desired flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowPlan {
    pub add: Vec<Flow>,
    pub modify: Vec<Flow>,
    pub delete: Vec<Flow>,
}

impl FlowPlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.modify.is_empty() && self.delete.is_empty()
    }

    pub fn len(&self) -> usize {
        self.add.len() + self.modify.len() + self.delete.len()
    }

    /// The flow_mods, deletes first (a delete never removes a flow added in
    /// the same bundle: their keys differ).
    pub fn flow_mods(&self) -> Vec<FlowMod> {
        let mut mods = Vec::with_capacity(self.len());
        for f in &self.delete {
            mods.push(FlowMod::delete_strict(
                f.table,
                f.priority,
                f.matches.clone(),
            ));
        }
        mods.extend(self.add.iter().cloned().map(FlowMod::add));
        mods.extend(self.modify.iter().cloned().map(FlowMod::modify_strict));
        mods
    }

    /// One line per change in ovs-ofctl syntax: `add ...`, `modify ...`,
    /// `delete ...`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::with_capacity(self.len());
        lines.extend(self.delete.iter().map(|f| format!("delete flow {f}")));
        lines.extend(self.add.iter().map(|f| format!("add flow {f}")));
        lines.extend(self.modify.iter().map(|f| format!("modify flow {f}")));
        lines
    }
}

type Key<'a> = (u8, u16, &'a Match);

fn key(f: &Flow) -> Key<'_> {
    (f.table, f.priority, &f.matches)
}

/// Plans the changes that turn `observed` into `desired`.
///
/// One hash of each observed flow's key (into the index) and one of each
/// desired flow's (its lookup); an observed flow is marked when a desired
/// flow finds it, so the deletes need no second map.
pub fn plan_flows<'a>(desired: impl IntoIterator<Item = &'a Flow>, observed: &[Flow]) -> FlowPlan {
    let mut observed_by_key: HashMap<Key<'_>, usize, FlowKeyHasher> =
        HashMap::with_capacity_and_hasher(observed.len(), FlowKeyHasher::default());
    for (i, f) in observed.iter().enumerate() {
        observed_by_key.insert(key(f), i);
    }
    let mut wanted = vec![false; observed.len()];
    let mut plan = FlowPlan::default();
    for d in desired {
        let Some(&i) = observed_by_key.get(&key(d)) else {
            plan.add.push(d.clone());
            continue;
        };
        wanted[i] = true;
        let o = &observed[i];
        if o.cookie != d.cookie {
            plan.add.push(d.clone());
        } else if o.instructions != d.instructions
            || o.idle_timeout != d.idle_timeout
            || o.hard_timeout != d.hard_timeout
        {
            plan.modify.push(d.clone());
        }
    }
    for (i, o) in observed.iter().enumerate() {
        // A key dumped twice (never from a switch) is indexed at its last
        // flow, which a desired flow of that key marked.
        if is_agent_cookie(o.cookie) && !wanted[i] && !wanted[observed_by_key[&key(o)]] {
            plan.delete.push(o.clone());
        }
    }
    plan
}
