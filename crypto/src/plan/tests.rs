use std::net::Ipv4Addr;

use super::*;
use crate::keys::SaKey;
use crate::model::{Cipher, SaSpec};
use crate::xfrm::socket::XfrmError;
use crate::xfrm::{Mark, Selector};

const KEY_A: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeaf00c0c1c2c3";
const KEY_B: &str = "b1b2b3b4b5b6b7b8b9babbbcbdbebf00d0d1d2d3";
const GRACE: Duration = Duration::from_secs(30);

fn tunnel(name: &str, reqid: u32) -> Tunnel {
    Tunnel {
        name: name.into(),
        reqid,
        local: Ipv4Addr::new(192, 0, 2, 1),
        remote: Ipv4Addr::new(192, 0, 2, 2),
        // Distinct selectors per tunnel (reqid 1 → 10.1/16 to 10.2/16, 10.3.0/24).
        local_subnets: vec![format!("10.{}.0.0/16", reqid & 0xff).parse().unwrap()],
        remote_subnets: vec![
            format!("10.{}.0.0/16", (reqid & 0xff) + 1).parse().unwrap(),
            format!("10.{}.{}.0/24", (reqid & 0xff) + 2, reqid & 0xff)
                .parse()
                .unwrap(),
        ],
        mode: Mode::Tunnel,
        cipher: Cipher::AesGcm128,
        inbound: SaSpec {
            spi: 0x1000 + (reqid & 0xff) * 0x10,
            key: SaKey::from_hex(KEY_A, Cipher::AesGcm128).unwrap(),
        },
        outbound: SaSpec {
            spi: 0x2000 + (reqid & 0xff) * 0x10,
            key: SaKey::from_hex(KEY_B, Cipher::AesGcm128).unwrap(),
        },
        replay_window: 128,
        esn: false,
        offload: OffloadRequest::Auto,
        offload_dev: None,
        if_id: None,
    }
}

/// The kernel after applying `actions` to `obs` (first offload attempt
/// accepted), SAs stamped with `now`.
fn apply(obs: &Observed, actions: &[Action], now: u64) -> Observed {
    let mut o = obs.clone();
    for a in actions {
        match a {
            Action::AddSa {
                sa,
                offload_attempts,
                ..
            } => {
                let mut sa = (**sa).clone();
                sa.offload = offload_attempts[0];
                sa.counters.add_time = now;
                o.sas.push(sa);
            }
            Action::DeleteSa { id, .. } => o.sas.retain(|s| s.id() != *id),
            Action::PutPolicy { policy, .. } => {
                o.policies.retain(|p| p.id() != policy.id());
                o.policies.push((**policy).clone());
            }
            Action::DeletePolicy { id, .. } => o.policies.retain(|p| p.id() != *id),
        }
    }
    o
}

fn none() -> BTreeSet<u32> {
    BTreeSet::new()
}

/// The plan for `tunnels` against an empty kernel at time 1000.
fn plan_fresh(tunnels: &[Tunnel]) -> Plan {
    plan(tunnels, &none(), &Observed::default(), 1000, GRACE)
}

/// The kernel after `plan_fresh(tunnels)` was applied at time 1000.
fn installed(tunnels: &[Tunnel]) -> Observed {
    apply(&Observed::default(), &plan_fresh(tunnels).actions, 1000)
}

#[test]
fn fresh_tunnel_adds_inbound_then_outbound_then_policies() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let p = plan_fresh(&[t]);
    let kinds: Vec<String> = p.actions.iter().map(|a| a.to_string()).collect();
    assert!(kinds[0].starts_with("xfrm state add in "), "{kinds:#?}");
    assert!(kinds[1].starts_with("xfrm state add out "), "{kinds:#?}");
    // 1 local × 2 remote subnets × (out, in, fwd).
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::PutPolicy { .. }))
            .count(),
        6
    );
    assert!(p.rekeys.is_empty());
    assert!(!p.state["acme/t1"].programmed);
}

#[test]
fn converged_state_plans_nothing() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let obs = installed(std::slice::from_ref(&t));
    let p2 = plan(&[t], &none(), &obs, 1001, GRACE);
    assert!(p2.actions.is_empty(), "{:#?}", p2.actions);
    assert!(p2.state["acme/t1"].programmed);
    assert_eq!(
        p2.state["acme/t1"].offload_active,
        Some(OffloadActive::None)
    );
}

#[test]
fn transport_mode_without_subnets_protects_the_hosts() {
    let mut t = tunnel("acme/t1", 0x0d50_0001);
    t.mode = Mode::Transport;
    t.local_subnets.clear();
    t.remote_subnets.clear();
    let pols = desired_policies(&t, None);
    assert_eq!(pols.len(), 2, "no fwd in transport mode");
    assert_eq!(pols[0].sel.to_string(), "src 192.0.2.1/32 dst 192.0.2.2/32");
}

#[test]
fn rekey_adds_new_inbound_first_and_removes_old_after_grace() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let obs = installed(std::slice::from_ref(&t));

    let mut t2 = t.clone();
    t2.inbound = SaSpec {
        spi: 0x1011,
        key: SaKey::from_hex(KEY_B, Cipher::AesGcm128).unwrap(),
    };
    t2.outbound = SaSpec {
        spi: 0x2011,
        key: SaKey::from_hex(KEY_A, Cipher::AesGcm128).unwrap(),
    };
    let p2 = plan(std::slice::from_ref(&t2), &none(), &obs, 2000, GRACE);
    let lines: Vec<String> = p2.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("add in ") && lines[0].contains("0x00001011"));
    assert!(lines[1].contains("add out ") && lines[1].contains("0x00002011"));
    assert!(p2.rekeys.contains("acme/t1"));
    assert_eq!(p2.requeue_after, Some(GRACE));

    let obs = apply(&obs, &p2.actions, 2000);
    // Within the grace period: old SAs stay.
    let p3 = plan(std::slice::from_ref(&t2), &none(), &obs, 2010, GRACE);
    assert!(p3.actions.is_empty(), "{:#?}", p3.actions);
    assert_eq!(p3.requeue_after, Some(Duration::from_secs(20)));
    assert!(p3.rekeys.is_empty(), "a rekey counts once");
    // After it: both old SAs go, nothing else.
    let p4 = plan(std::slice::from_ref(&t2), &none(), &obs, 2030, GRACE);
    let lines: Vec<String> = p4.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("superseded")));
    assert!(lines.iter().any(|l| l.contains("0x00001010")));
    assert!(lines.iter().any(|l| l.contains("0x00002010")));
}

#[test]
fn changed_key_with_same_spi_is_drift_and_replaced() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let obs = installed(std::slice::from_ref(&t));
    let mut t2 = t.clone();
    t2.inbound.key = SaKey::from_hex(KEY_B, Cipher::AesGcm128).unwrap();
    let p2 = plan(&[t2], &none(), &obs, 1001, GRACE);
    let lines: Vec<String> = p2.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("delete") && lines[0].contains("drifted (key)"));
    assert!(lines[1].contains("add in"));
}

fn foreign_policy() -> Policy {
    Policy::new(
        Selector::v4(
            "10.9.0.0/16".parse().unwrap(),
            "10.8.0.0/16".parse().unwrap(),
        ),
        Dir::Out,
        vec![Tmpl::esp_v4(
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(2, 2, 2, 2),
            5,
            XFRM_MODE_TUNNEL,
        )],
    )
}

#[test]
fn orphans_removed_foreign_and_other_tunnels_kept() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let other = tunnel("acme/t2", 0x0d50_0002);
    let orphan = tunnel("gone/t9", 0x0d50_0009);
    let everything = [t.clone(), other.clone(), orphan.clone()];
    let mut obs = installed(&everything);
    obs.policies.push(foreign_policy());
    let mut foreign_sa = Sa::esp_v4(
        Ipv4Addr::new(1, 1, 1, 1),
        Ipv4Addr::new(2, 2, 2, 2),
        0x999,
        5,
        XFRM_MODE_TUNNEL,
    );
    foreign_sa.mark = Some(Mark { value: 1, mask: 1 });
    obs.sas.push(foreign_sa);

    let live: BTreeSet<u32> = [other.reqid].into();
    let p = plan(&[t], &live, &obs, 1001, GRACE);
    assert!(
        p.actions.iter().all(|a| match a {
            Action::DeleteSa { why, id, .. } => *why == Why::Orphan && id.spi != 0x999,
            Action::DeletePolicy { why, .. } => *why == Why::Orphan,
            _ => false,
        }),
        "{:#?}",
        p.actions
    );
    // t9's 2 SAs and 6 policies; nothing of t1, t2 or the foreign state.
    assert_eq!(p.actions.len(), 8, "{:#?}", p.actions);
    let after = apply(&obs, &p.actions, 1001);
    assert!(after.policies.contains(&foreign_policy()));
    assert!(after.sas.iter().any(|s| s.spi == 0x999));
    assert!(after.sas.iter().all(|s| s.reqid != orphan.reqid));
}

#[test]
fn foreign_policy_on_a_wanted_selector_is_a_conflict_not_replaced() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let mut f = foreign_policy();
    f.sel = Selector::v4(
        "10.1.0.0/16".parse().unwrap(),
        "10.2.0.0/16".parse().unwrap(),
    );
    f.priority = POLICY_PRIORITY;
    let obs = Observed {
        sas: vec![],
        policies: vec![f.clone()],
    };
    let p = plan(&[t], &none(), &obs, 1000, GRACE);
    assert_eq!(p.conflicts.len(), 1, "{:?}", p.conflicts);
    assert!(p.actions.iter().all(|a| match a {
        Action::PutPolicy { policy, .. } => policy.id() != f.id(),
        Action::DeletePolicy { .. } => false,
        _ => true,
    }));
}

#[test]
fn auto_offload_tries_packet_then_crypto_then_none_and_mirrors_packet_on_policies() {
    let mut t = tunnel("acme/t1", 0x0d50_0001);
    t.offload_dev = Some(7);
    let attempts = offload_attempts(&t, SaDir::In);
    assert_eq!(attempts.len(), 3);
    assert_eq!(
        attempts[0].unwrap().flags,
        XFRM_OFFLOAD_PACKET | XFRM_OFFLOAD_INBOUND
    );
    assert_eq!(attempts[1].unwrap().flags, XFRM_OFFLOAD_INBOUND);
    assert_eq!(attempts[2], None);
    let p1 = plan_fresh(std::slice::from_ref(&t));
    assert_eq!(p1.requeue_after, Some(Duration::from_secs(1)));
    let obs = apply(&Observed::default(), &p1.actions, 1000);
    // The SAs got packet offload: the in and out policies must follow (fwd
    // stays in software).
    let p2 = plan(std::slice::from_ref(&t), &none(), &obs, 1001, GRACE);
    assert_eq!(p2.actions.len(), 4, "{:#?}", p2.actions);
    assert!(
        p2.actions
            .iter()
            .all(|a| a.to_string().contains("offload packet@ifindex7"))
    );
    let obs = apply(&obs, &p2.actions, 1001);
    let p3 = plan(&[t], &none(), &obs, 1002, GRACE);
    assert!(p3.actions.is_empty());
    assert_eq!(
        p3.state["acme/t1"].offload_active,
        Some(OffloadActive::Packet)
    );
}

#[test]
fn teardown_removes_only_the_tunnels_state() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let other = tunnel("acme/t2", 0x0d50_0002);
    let mut obs = installed(&[t.clone(), other]);
    obs.policies.push(foreign_policy());
    let actions = plan_teardown(t.reqid, &t.name, &obs);
    assert_eq!(actions.len(), 8);
    let after = apply(&obs, &actions, 1001);
    assert_eq!(after.sas.len(), 2);
    assert_eq!(after.policies.len(), 7);
}

#[test]
fn plan_output_and_debug_never_show_keys() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let p = plan_fresh(std::slice::from_ref(&t));
    let text = format!(
        "{}\n{:?}\n{:?}",
        p.actions
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        p,
        t
    );
    for key in [KEY_A, KEY_B, &KEY_A[..8], &KEY_B[..8]] {
        assert!(!text.to_lowercase().contains(key), "key leaked: {text}");
    }
    // Nor as decimal bytes (a derived Debug of Vec<u8> would print these).
    assert!(!text.contains("161, 162, 163"), "{text}");
}

/// TENANCY.md invariant 2 at the planning level: a tenant tunnel's SAs and
/// policies all carry its `if_id`; an infrastructure tunnel's none; a tunnel
/// whose scope changes has its SAs replaced (drift `if_id`) and its old,
/// unscoped policies removed.
#[test]
fn tenant_tunnels_carry_if_id_on_every_sa_and_policy_and_scope_changes_converge() {
    let mut t = tunnel("acme/t1", 0x0d50_0001);
    t.if_id = Some(0x0d52_0007);
    let p = plan_fresh(std::slice::from_ref(&t));
    let obs = apply(&Observed::default(), &p.actions, 1000);
    assert_eq!(obs.sas.len(), 2);
    assert_eq!(obs.policies.len(), 6);
    assert!(obs.sas.iter().all(|s| s.if_id == Some(0x0d52_0007)));
    assert!(obs.policies.iter().all(|p| p.if_id == Some(0x0d52_0007)));
    assert!(
        p.actions
            .iter()
            .all(|a| a.to_string().contains("if_id 0x0d520007")),
        "{:#?}",
        p.actions
    );
    assert!(
        plan(std::slice::from_ref(&t), &none(), &obs, 1001, GRACE)
            .actions
            .is_empty()
    );

    // The same tunnel made unscoped (infrastructure): everything replaced.
    t.if_id = None;
    let p2 = plan(std::slice::from_ref(&t), &none(), &obs, 1002, GRACE);
    let after = apply(&obs, &p2.actions, 1002);
    assert_eq!(after.sas.len(), 2, "{:#?}", p2.actions);
    assert_eq!(after.policies.len(), 6, "{:#?}", p2.actions);
    assert!(after.sas.iter().all(|s| s.if_id.is_none()));
    assert!(after.policies.iter().all(|p| p.if_id.is_none()));
    assert!(
        p2.actions
            .iter()
            .any(|a| a.to_string().contains("drifted (if_id)")),
        "{:#?}",
        p2.actions
    );
    assert!(plan(&[t], &none(), &after, 1003, GRACE).actions.is_empty());
}

#[test]
fn tunnel_state_sums_counters_and_xfrm_stats_of_its_sas() {
    let t = tunnel("acme/t1", 0x0d50_0001);
    let mut obs = installed(std::slice::from_ref(&t));
    let other = tunnel("acme/t2", 0x0d50_0002);
    for (i, sa) in obs.sas.iter_mut().enumerate() {
        let i = i as u64 + 1;
        sa.counters.bytes = 100 * i;
        sa.counters.packets = i;
        sa.stats.replay_window = 1;
        sa.stats.replay = 2;
        sa.stats.integrity_failed = 3;
    }
    let p = plan(&[t, other], &none(), &obs, 1001, GRACE);
    let s = &p.state["acme/t1"];
    assert_eq!(s.bytes_in + s.bytes_out, 300);
    assert_eq!(s.packets_in + s.packets_out, 3);
    assert_eq!(
        (s.replay_window_drops, s.replay_drops, s.integrity_failures),
        (2, 4, 6)
    );
    // Another tunnel's SAs count nothing for it.
    assert_eq!(p.state["acme/t2"].integrity_failures, 0);
}

/// An IPsec backend that records each kernel call it gets, refusing packet
/// offload as a NIC without it would (`EOPNOTSUPP`).
#[derive(Default)]
struct Recording {
    calls: Vec<String>,
}

impl crate::apply::IpsecBackend for Recording {
    fn observe(&mut self) -> Result<Observed, XfrmError> {
        Ok(Observed::default())
    }
    fn add_sa(&mut self, sa: &Sa) -> Result<(), XfrmError> {
        if sa
            .offload
            .is_some_and(|o| o.flags & XFRM_OFFLOAD_PACKET != 0)
        {
            self.calls.push(format!("add_sa {:#x} refused", sa.spi));
            return Err(XfrmError::kernel("XFRM_MSG_NEWSA", libc::EOPNOTSUPP));
        }
        self.calls.push(format!("add_sa {:#x}", sa.spi));
        Ok(())
    }
    fn delete_sa(&mut self, id: &SaId) -> Result<(), XfrmError> {
        self.calls.push(format!("delete_sa {:#x}", id.spi));
        Ok(())
    }
    fn put_policy(&mut self, p: &Policy) -> Result<(), XfrmError> {
        self.calls.push(format!("put_policy {:?}", p.id()));
        Ok(())
    }
    fn delete_policy(&mut self, id: &PolicyId) -> Result<(), XfrmError> {
        self.calls.push(format!("delete_policy {id:?}"));
        Ok(())
    }
}

/// `apply` sends exactly the plan: one kernel call per planned action, in
/// the plan's order, for that action's own SA or policy — an offload the
/// kernel refuses under `auto` is retried within the same action with the
/// next offload it lists, never with anything unplanned — and the report
/// counts every action applied. So the list `/v1/plan` shows is the list
/// the kernel gets (TENANCY.md invariant 5: a tenant's SAs and policies are
/// only those planned for its tunnels).
#[test]
fn apply_sends_exactly_the_planned_actions_in_order() {
    let mut t = tunnel("acme/t1", 0x0d50_0001);
    t.offload_dev = Some(7);
    let p = plan_fresh(&[t]);
    let mut want = Vec::new();
    for a in &p.actions {
        match a {
            Action::AddSa { sa, .. } => {
                // Packet refused, then crypto offload accepted.
                want.push(format!("add_sa {:#x} refused", sa.spi));
                want.push(format!("add_sa {:#x}", sa.spi));
            }
            Action::DeleteSa { id, .. } => want.push(format!("delete_sa {:#x}", id.spi)),
            Action::PutPolicy { policy, .. } => want.push(format!("put_policy {:?}", policy.id())),
            Action::DeletePolicy { id, .. } => want.push(format!("delete_policy {id:?}")),
        }
    }
    let mut backend = Recording::default();
    let report = crate::apply::apply(&mut backend, &p.actions);
    assert_eq!(backend.calls, want);
    assert_eq!(report.applied, p.actions.len());
    assert!(report.failures.is_empty());
    assert_eq!(report.offload_fallbacks.len(), 2, "one per SA");

    // The teardown plan, likewise.
    let obs = apply(&Observed::default(), &p.actions, 1000);
    let teardown = plan_teardown(0x0d50_0001, "acme/t1", &obs);
    assert!(!teardown.is_empty());
    let mut backend = Recording::default();
    let report = crate::apply::apply(&mut backend, &teardown);
    assert_eq!(report.applied, teardown.len());
    let deleted: Vec<String> = teardown
        .iter()
        .map(|a| match a {
            Action::DeleteSa { id, .. } => format!("delete_sa {:#x}", id.spi),
            Action::DeletePolicy { id, .. } => format!("delete_policy {id:?}"),
            other => panic!("teardown plans {other}"),
        })
        .collect();
    assert_eq!(backend.calls, deleted);
}
