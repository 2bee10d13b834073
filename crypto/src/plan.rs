//! Pure planning: desired tunnels against the SAs and policies observed in
//! the kernel → the actions that converge them. No I/O.
//!
//! Ownership: every SA and every policy template the agent installs carries
//! a reqid in [`REQID_RANGE`]; state with such a reqid that no live tunnel
//! claims is an orphan and is removed. Everything else is foreign and never
//! touched: a foreign policy on a selector a tunnel wants is reported as a
//! conflict instead of being replaced.
//!
//! Rekey (a new SPI in a direction): the new SA is added next to the old
//! one (inbound and outbound; the kernel sends on the newest outbound SA of a
//! reqid), and the old one is removed once the new one has existed for the
//! grace period, so packets in flight under the old SPI still decrypt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::model::{Mode, OffloadActive, OffloadRequest, Tunnel};
use crate::xfrm::{
    AEAD_RFC4106_GCM_AES, Aead, Counters, Dir, IPPROTO_ESP, OffloadDev, Policy, PolicyId,
    ReplayEsn, Sa, SaId, Tmpl, XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL, XFRM_OFFLOAD_INBOUND,
    XFRM_OFFLOAD_PACKET, XFRM_STATE_ESN,
};

/// The agent's reqids: "DP" in the top byte pair, 65536 tunnels.
pub const REQID_RANGE: std::ops::Range<u32> = 0x0d50_0000..0x0d51_0000;

/// Policy priority of agent policies (lower wins; iproute2's default is 0).
pub const POLICY_PRIORITY: u32 = 0x1000;

pub fn is_agent_reqid(reqid: u32) -> bool {
    REQID_RANGE.contains(&reqid)
}

/// What the kernel has, as dumped.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub sas: Vec<Sa>,
    pub policies: Vec<Policy>,
}

impl Observed {
    pub fn is_agent_sa(sa: &Sa) -> bool {
        is_agent_reqid(sa.reqid)
    }
    pub fn is_agent_policy(p: &Policy) -> bool {
        p.tmpls.iter().any(|t| is_agent_reqid(t.reqid))
    }
}

/// SA direction relative to this DPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SaDir {
    In,
    Out,
}

impl SaDir {
    fn name(self) -> &'static str {
        match self {
            SaDir::In => "in",
            SaDir::Out => "out",
        }
    }
}

/// Why something is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Agent-owned, but no live tunnel claims its reqid.
    Orphan,
    /// Replaced by a rekey; the grace period is over.
    Superseded,
    /// Differs from the spec (field named); re-added right after.
    Drift(&'static str),
    /// The tunnel is being deleted.
    TunnelDeleted,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Orphan => f.write_str("orphan: no tunnel owns its reqid"),
            Why::Superseded => f.write_str("superseded by a rekey, grace period over"),
            Why::Drift(field) => write!(f, "drifted ({field})"),
            Why::TunnelDeleted => f.write_str("tunnel deleted"),
        }
    }
}

/// One change to the kernel. `Display` is the operator's view and never
/// shows key material; `Debug` redacts keys too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add an SA, trying each offload in order until the kernel accepts one
    /// (`None` = software).
    AddSa {
        tunnel: String,
        dir: SaDir,
        sa: Box<Sa>,
        offload_attempts: Vec<Option<OffloadDev>>,
    },
    DeleteSa {
        tunnel: Option<String>,
        id: SaId,
        why: Why,
    },
    /// Create or replace.
    PutPolicy { tunnel: String, policy: Box<Policy> },
    DeletePolicy {
        tunnel: Option<String>,
        id: PolicyId,
        why: Why,
    },
}

fn offload_name(o: &Option<OffloadDev>) -> String {
    match o {
        None => "none".into(),
        Some(d) if d.flags & XFRM_OFFLOAD_PACKET != 0 => format!("packet@ifindex{}", d.ifindex),
        Some(d) => format!("crypto@ifindex{}", d.ifindex),
    }
}

/// An SA's or template's mode as `ip xfrm` names it.
fn mode_name(mode: u8) -> &'static str {
    if mode == XFRM_MODE_TUNNEL {
        "tunnel"
    } else {
        "transport"
    }
}

/// ` if_id 0x…` as `ip xfrm` spells it, when set.
fn write_if_id(f: &mut fmt::Formatter<'_>, if_id: Option<u32>) -> fmt::Result {
    match if_id {
        Some(id) => write!(f, " if_id 0x{id:08x}"),
        None => Ok(()),
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AddSa {
                tunnel,
                dir,
                sa,
                offload_attempts,
            } => {
                let alg = sa
                    .aead
                    .as_ref()
                    .map(|a| format!("{} {}-bit key", a.name, (a.key.len().saturating_sub(4)) * 8))
                    .unwrap_or_else(|| "no-alg".into());
                let offload: Vec<String> = offload_attempts.iter().map(offload_name).collect();
                write!(
                    f,
                    "xfrm state add {dir} src {} dst {} proto esp spi 0x{:08x} reqid 0x{:08x} mode {} aead {alg} replay-window {}{} offload {} (tunnel {tunnel})",
                    sa.saddr,
                    sa.daddr,
                    sa.spi,
                    sa.reqid,
                    mode_name(sa.mode),
                    sa.effective_replay_window(),
                    if sa.flags & XFRM_STATE_ESN != 0 {
                        " esn"
                    } else {
                        ""
                    },
                    offload.join(" then "),
                    dir = dir.name(),
                )?;
                write_if_id(f, sa.if_id)
            }
            Action::DeleteSa { tunnel, id, why } => {
                write!(
                    f,
                    "xfrm state delete dst {} proto esp spi 0x{:08x}",
                    id.daddr, id.spi
                )?;
                if let Some(t) = tunnel {
                    write!(f, " (tunnel {t})")?;
                }
                write!(f, ": {why}")
            }
            Action::PutPolicy { tunnel, policy } => {
                write!(
                    f,
                    "xfrm policy update {} dir {}",
                    policy.sel,
                    policy.dir.name()
                )?;
                for t in &policy.tmpls {
                    write!(
                        f,
                        " tmpl src {} dst {} proto esp reqid 0x{:08x} mode {}",
                        t.saddr,
                        t.daddr,
                        t.reqid,
                        mode_name(t.mode)
                    )?;
                }
                if let Some(o) = &policy.offload {
                    write!(f, " offload {}", offload_name(&Some(*o)))?;
                }
                write_if_id(f, policy.if_id)?;
                write!(f, " (tunnel {tunnel})")
            }
            Action::DeletePolicy { tunnel, id, why } => {
                write!(f, "xfrm policy delete {} dir {}", id.sel, id.dir.name())?;
                write_if_id(f, id.if_id)?;
                if let Some(t) = tunnel {
                    write!(f, " (tunnel {t})")?;
                }
                write!(f, ": {why}")
            }
        }
    }
}

/// What a tunnel looks like in the kernel right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelState {
    /// Weakest offload among the tunnel's current SAs (none if any is missing).
    pub offload_active: Option<OffloadActive>,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    /// The kernel's `xfrm_stats` summed over the tunnel's SAs (inbound
    /// packets dropped as outside the replay window, as replayed, and for a
    /// failed integrity check). Like the byte counters they belong to SAs:
    /// an SA replaced by a rekey takes its counts with it.
    pub replay_window_drops: u64,
    pub replay_drops: u64,
    pub integrity_failures: u64,
    /// Both current SAs and all policies are in place.
    pub programmed: bool,
}

/// The plan.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Selectors a tunnel wants that foreign policies hold; left alone.
    pub conflicts: Vec<String>,
    /// Tunnel names whose plan starts a rekey (a new SA next to an old one).
    pub rekeys: BTreeSet<String>,
    /// Look again after this long (an old SA's grace period is running, or
    /// offload must be mirrored onto policies once SAs exist).
    pub requeue_after: Option<Duration>,
    /// Per tunnel, what is observed (before the actions).
    pub state: BTreeMap<String, TunnelState>,
}

fn mode_u8(m: Mode) -> u8 {
    match m {
        Mode::Tunnel => XFRM_MODE_TUNNEL,
        Mode::Transport => XFRM_MODE_TRANSPORT,
    }
}

/// The SA a tunnel wants in `dir` (no offload; see `offload_attempts`).
pub fn desired_sa(t: &Tunnel, dir: SaDir) -> Sa {
    let (src, dst, spec) = match dir {
        SaDir::In => (t.remote, t.local, &t.inbound),
        SaDir::Out => (t.local, t.remote, &t.outbound),
    };
    let mut sa = Sa::esp_v4(src, dst, spec.spi, t.reqid, mode_u8(t.mode));
    sa.aead = Some(Aead {
        name: AEAD_RFC4106_GCM_AES.into(),
        icv_bits: 128,
        key: spec.key.clone(),
    });
    if t.esn || t.replay_window > 0 {
        // The window goes in XFRMA_REPLAY_ESN_VAL (any size); the legacy u8
        // field must then be 0.
        sa.replay_esn = Some(ReplayEsn {
            replay_window: t.replay_window,
            ..Default::default()
        });
    }
    if t.esn {
        sa.flags |= XFRM_STATE_ESN;
    }
    sa.if_id = t.if_id;
    sa
}

/// The offloads to try for an SA, best first.
pub fn offload_attempts(t: &Tunnel, dir: SaDir) -> Vec<Option<OffloadDev>> {
    let Some(ifindex) = t.offload_dev else {
        return vec![None];
    };
    let base = if dir == SaDir::In {
        XFRM_OFFLOAD_INBOUND
    } else {
        0
    };
    let packet = Some(OffloadDev {
        ifindex: ifindex as i32,
        flags: base | XFRM_OFFLOAD_PACKET,
    });
    let crypto = Some(OffloadDev {
        ifindex: ifindex as i32,
        flags: base,
    });
    match t.offload {
        OffloadRequest::Auto => vec![packet, crypto, None],
        OffloadRequest::Packet => vec![packet],
        OffloadRequest::Crypto => vec![crypto],
        OffloadRequest::None => vec![None],
    }
}

/// The policies a tunnel wants. Policies carry packet offload only when
/// `packet_dev` says the tunnel's SAs got it (the kernel wants both).
pub fn desired_policies(t: &Tunnel, packet_dev: Option<i32>) -> Vec<Policy> {
    let mode = mode_u8(t.mode);
    let mut out = Vec::new();
    for (l, r) in t.selector_pairs() {
        let mut dirs = vec![
            (
                Dir::Out,
                l,
                r,
                Tmpl::esp_v4(t.local, t.remote, t.reqid, mode),
            ),
            (
                Dir::In,
                r,
                l,
                Tmpl::esp_v4(t.remote, t.local, t.reqid, mode),
            ),
        ];
        if t.mode == Mode::Tunnel {
            dirs.push((
                Dir::Fwd,
                r,
                l,
                Tmpl::esp_v4(t.remote, t.local, t.reqid, mode),
            ));
        }
        for (dir, src, dst, tmpl) in dirs {
            let offload = match (packet_dev, dir) {
                (Some(ifindex), Dir::Out) => Some(OffloadDev {
                    ifindex,
                    flags: XFRM_OFFLOAD_PACKET,
                }),
                (Some(ifindex), Dir::In) => Some(OffloadDev {
                    ifindex,
                    flags: XFRM_OFFLOAD_PACKET | XFRM_OFFLOAD_INBOUND,
                }),
                _ => None,
            };
            out.push(Policy {
                priority: POLICY_PRIORITY,
                if_id: t.if_id,
                offload,
                ..Policy::new(crate::xfrm::Selector::v4(src, dst), dir, vec![tmpl])
            });
        }
    }
    out
}

/// The first field in which an observed SA differs from the desired one.
fn sa_drift(want: &Sa, have: &Sa) -> Option<&'static str> {
    if have.saddr != want.saddr {
        return Some("source address");
    }
    if have.mode != want.mode {
        return Some("mode");
    }
    match (&want.aead, &have.aead) {
        (Some(w), Some(h)) => {
            if w.name != h.name || w.icv_bits != h.icv_bits {
                return Some("algorithm");
            }
            if !w.key.ct_eq(&h.key) {
                return Some("key");
            }
        }
        (Some(_), None) => return Some("algorithm"),
        _ => {}
    }
    if have.effective_replay_window() != want.effective_replay_window() {
        return Some("replay window");
    }
    if (have.flags & XFRM_STATE_ESN) != (want.flags & XFRM_STATE_ESN) {
        return Some("esn");
    }
    if have.if_id != want.if_id {
        return Some("if_id");
    }
    None
}

fn offload_of(sa: &Sa) -> OffloadActive {
    match sa.offload {
        None => OffloadActive::None,
        Some(o) if o.flags & XFRM_OFFLOAD_PACKET != 0 => OffloadActive::Packet,
        Some(_) => OffloadActive::Crypto,
    }
}

fn add_counters(total: &mut (u64, u64), c: &Counters) {
    total.0 = total.0.saturating_add(c.bytes);
    total.1 = total.1.saturating_add(c.packets);
}

/// Plans `desired` against `observed`. `live_reqids` are reqids of tunnels
/// that exist but are not in `desired` (planned elsewhere): their state is
/// neither planned nor an orphan. `now` is seconds since the epoch (the
/// clock of SAs' `add_time`).
pub fn plan(
    desired: &[Tunnel],
    live_reqids: &BTreeSet<u32>,
    observed: &Observed,
    now: u64,
    grace: Duration,
) -> Plan {
    let mut plan = Plan::default();
    let requeue = |plan: &mut Plan, d: Duration| {
        plan.requeue_after = Some(plan.requeue_after.map_or(d, |r| r.min(d)));
    };
    let desired_reqids: BTreeSet<u32> = desired.iter().map(|t| t.reqid).collect();
    let mut wanted_policy_ids = BTreeSet::new();

    for t in desired {
        let mut state = TunnelState::default();
        let mine: Vec<&Sa> = observed
            .sas
            .iter()
            .filter(|s| s.reqid == t.reqid && s.proto == IPPROTO_ESP)
            .collect();
        let mut adds = Vec::new();
        let mut deletes = Vec::new();
        let mut sa_offloads = Vec::new();
        let mut packet_dev = None;
        let mut all_present = true;
        let mut rekey = false;
        for dir in [SaDir::In, SaDir::Out] {
            let want = desired_sa(t, dir);
            let (src, dst) = (want.saddr, want.daddr);
            let same_path: Vec<&&Sa> = mine
                .iter()
                .filter(|s| s.daddr == dst && s.saddr == src)
                .collect();
            let mut counters = (0u64, 0u64);
            for s in &same_path {
                add_counters(&mut counters, &s.counters);
                state.replay_window_drops = state
                    .replay_window_drops
                    .saturating_add(u64::from(s.stats.replay_window));
                state.replay_drops = state.replay_drops.saturating_add(u64::from(s.stats.replay));
                state.integrity_failures = state
                    .integrity_failures
                    .saturating_add(u64::from(s.stats.integrity_failed));
            }
            match dir {
                SaDir::In => (state.bytes_in, state.packets_in) = counters,
                SaDir::Out => (state.bytes_out, state.packets_out) = counters,
            }
            let current = same_path.iter().find(|s| s.spi == want.spi);
            let current_since = match current {
                Some(have) => match sa_drift(&want, have) {
                    Some(field) => {
                        deletes.push(Action::DeleteSa {
                            tunnel: Some(t.name.clone()),
                            id: have.id(),
                            why: Why::Drift(field),
                        });
                        adds.push((dir, want.clone()));
                        all_present = false;
                        None
                    }
                    None => {
                        let o = offload_of(have);
                        if o == OffloadActive::Packet {
                            packet_dev = have.offload.map(|d| d.ifindex);
                        }
                        sa_offloads.push(o);
                        Some(have.counters.add_time)
                    }
                },
                None => {
                    if !same_path.is_empty() {
                        rekey = true;
                    }
                    adds.push((dir, want.clone()));
                    all_present = false;
                    None
                }
            };
            // Old SAs on this path: kept through the grace period of the new one.
            for old in same_path.iter().filter(|s| s.spi != want.spi) {
                match current_since {
                    Some(since) if now >= since.saturating_add(grace.as_secs()) => {
                        deletes.push(Action::DeleteSa {
                            tunnel: Some(t.name.clone()),
                            id: old.id(),
                            why: Why::Superseded,
                        });
                    }
                    Some(since) => {
                        let left = since.saturating_add(grace.as_secs()).saturating_sub(now);
                        requeue(&mut plan, Duration::from_secs(left.max(1)));
                    }
                    None => requeue(&mut plan, grace.max(Duration::from_secs(1))),
                }
            }
        }
        // The tunnel's reqid on other paths (endpoints changed): gone now.
        for s in mine.iter().filter(|s| {
            !((s.saddr == IpAddr::V4(t.remote) && s.daddr == IpAddr::V4(t.local))
                || (s.saddr == IpAddr::V4(t.local) && s.daddr == IpAddr::V4(t.remote)))
        }) {
            deletes.push(Action::DeleteSa {
                tunnel: Some(t.name.clone()),
                id: s.id(),
                why: Why::Drift("endpoints"),
            });
        }
        if rekey {
            plan.rekeys.insert(t.name.clone());
        }
        // Deletions of drifted SAs go first so the re-add does not collide.
        let (drifted, rest): (Vec<Action>, Vec<Action>) = deletes.into_iter().partition(|a| {
            matches!(
                a,
                Action::DeleteSa {
                    why: Why::Drift(_),
                    ..
                }
            )
        });
        plan.actions.extend(drifted);
        // Inbound before outbound: the peer may switch as soon as we do.
        for (dir, sa) in adds {
            plan.actions.push(Action::AddSa {
                tunnel: t.name.clone(),
                dir,
                offload_attempts: offload_attempts(t, dir),
                sa: Box::new(sa),
            });
        }
        if !all_present && t.offload_dev.is_some() && t.offload != OffloadRequest::None {
            // Once the SAs exist, mirror packet offload onto the policies.
            requeue(&mut plan, Duration::from_secs(1));
        }
        state.offload_active = if all_present {
            sa_offloads.iter().min().copied()
        } else {
            None
        };

        let mut policies_ok = true;
        for want in desired_policies(t, packet_dev) {
            let id = want.id();
            wanted_policy_ids.insert(id);
            match observed.policies.iter().find(|p| p.id() == id) {
                Some(have) if !Observed::is_agent_policy(have) => {
                    policies_ok = false;
                    plan.conflicts.push(format!(
                        "tunnel {}: a policy not owned by the agent already holds {} dir {}; remove it or change the tunnel's subnets",
                        t.name,
                        id.sel,
                        id.dir.name()
                    ));
                }
                Some(have)
                    if have.tmpls == want.tmpls
                        && have.priority == want.priority
                        && have.action == want.action
                        && have.offload == want.offload => {}
                _ => {
                    policies_ok = false;
                    plan.actions.push(Action::PutPolicy {
                        tunnel: t.name.clone(),
                        policy: Box::new(want),
                    });
                }
            }
        }
        plan.actions.extend(rest);
        state.programmed = all_present && policies_ok;
        plan.state.insert(t.name.clone(), state);
    }

    // Agent-owned state no live tunnel claims.
    let claimed = |reqid: u32| desired_reqids.contains(&reqid) || live_reqids.contains(&reqid);
    for p in &observed.policies {
        if !Observed::is_agent_policy(p) || wanted_policy_ids.contains(&p.id()) {
            continue;
        }
        let owners: Vec<u32> = p.tmpls.iter().map(|t| t.reqid).collect();
        if owners.iter().any(|&r| live_reqids.contains(&r)) {
            continue;
        }
        let tunnel = desired
            .iter()
            .find(|t| owners.contains(&t.reqid))
            .map(|t| t.name.clone());
        let why = if tunnel.is_some() {
            Why::Drift("selector")
        } else {
            Why::Orphan
        };
        plan.actions.push(Action::DeletePolicy {
            tunnel,
            id: p.id(),
            why,
        });
    }
    for s in &observed.sas {
        if Observed::is_agent_sa(s) && !claimed(s.reqid) {
            plan.actions.push(Action::DeleteSa {
                tunnel: None,
                id: s.id(),
                why: Why::Orphan,
            });
        }
    }
    plan
}

/// Everything that removes `tunnel`'s state (for a tunnel being deleted).
pub fn plan_teardown(reqid: u32, name: &str, observed: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    for p in &observed.policies {
        if p.tmpls.iter().any(|t| t.reqid == reqid) && is_agent_reqid(reqid) {
            out.push(Action::DeletePolicy {
                tunnel: Some(name.to_string()),
                id: p.id(),
                why: Why::TunnelDeleted,
            });
        }
    }
    for s in &observed.sas {
        if s.reqid == reqid && is_agent_reqid(reqid) {
            out.push(Action::DeleteSa {
                tunnel: Some(name.to_string()),
                id: s.id(),
                why: Why::TunnelDeleted,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
