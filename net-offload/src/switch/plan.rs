//! Pure planning of one convergence pass: the bridge row and
//! `hw-offload` ([`plan_bridge`]), which representor and tunnel ports to add
//! or remove ([`plan_ports`]), the QoS meters ([`plan_meters`]) and, with the
//! flows diffed by [`crate::pipeline::plan_flows`], the whole pass as data
//! ([`SwitchPlan`]): the reconciler executes exactly its parts, in the order
//! [`SwitchPlan::describe`] lists them, and `plan` shows the same list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::openflow::{MeterMod, meter_flags};
use crate::ovsdb::{
    BridgeRow, BridgeSpec, InterfaceRow, OpenVswitchRow, PortRow, PortSpec, owner_of, owner_value,
};
use crate::pipeline::{self, DesiredNetworking, Encap, FlowPlan, PortDesc};

/// The OpenFlow versions the agent's bridge speaks.
pub const BRIDGE_PROTOCOLS: [&str; 2] = ["OpenFlow13", "OpenFlow14"];

/// The bridge the agent wants: its name and datapath, `fail_mode=secure`
/// (no flows until the agent adds them), OpenFlow 1.3 and 1.4.
pub fn bridge_spec(name: &str, datapath_type: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.to_string(),
        datapath_type: datapath_type.to_string(),
        fail_mode: Some("secure".into()),
        protocols: BRIDGE_PROTOCOLS.iter().map(|p| p.to_string()).collect(),
        owner: owner_value("bridge", name),
    }
}

/// OVSDB changes to the bridge row and the switch-wide `hw-offload` key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgePlan {
    /// Create the bridge, or set its datapath type, fail mode and
    /// protocols, when the observed row differs (or is missing).
    pub ensure: Option<BridgeSpec>,
    /// Set `Open_vSwitch other_config:hw-offload=true`.
    pub hw_offload: bool,
}

impl BridgePlan {
    pub fn is_empty(&self) -> bool {
        self.ensure.is_none() && !self.hw_offload
    }

    /// One line per OVSDB operation, in the order they are sent.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(b) = &self.ensure {
            lines.push(format!(
                "ovsdb: ensure Bridge {} datapath_type={} fail_mode={} protocols={} external_ids:dpu-agent/owner={}",
                b.name,
                b.datapath_type,
                b.fail_mode.as_deref().unwrap_or("standalone"),
                b.protocols.join(","),
                b.owner
            ));
        }
        if self.hw_offload {
            lines.push("ovsdb: set Open_vSwitch other_config:hw-offload=true".to_string());
        }
        lines
    }
}

/// Plans the bridge: `want` unless `observed` already has its datapath
/// type, fail mode and protocols; `hw-offload=true` when `hw_offload` is
/// configured and the root row (when there is one) does not say so. Without
/// a root row there is nothing to set it on yet: the next pass does.
pub fn plan_bridge(
    want: &BridgeSpec,
    observed: Option<&BridgeRow>,
    hw_offload: bool,
    root: Option<&OpenVswitchRow>,
) -> BridgePlan {
    let protocols: BTreeSet<&str> = want.protocols.iter().map(String::as_str).collect();
    let ok = observed.is_some_and(|b| {
        b.datapath_type == want.datapath_type
            && b.fail_mode == want.fail_mode
            && b.protocols
                .iter()
                .map(String::as_str)
                .collect::<BTreeSet<_>>()
                == protocols
    });
    BridgePlan {
        ensure: (!ok).then(|| want.clone()),
        hw_offload: hw_offload
            && root.is_some_and(|r| {
                r.other_config.get("hw-offload").map(String::as_str) != Some("true")
            }),
    }
}

/// One meter as `ovs-ofctl add-meter` writes it:
/// `meter=ID,kbps,burst,band=type=drop,rate=R,burst_size=B`.
#[derive(Debug)]
pub struct MeterText<'a>(pub &'a MeterMod);

impl fmt::Display for MeterText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "meter={}", m.meter_id)?;
        for (flag, name) in [
            (meter_flags::KBPS, "kbps"),
            (meter_flags::PKTPS, "pktps"),
            (meter_flags::BURST, "burst"),
            (meter_flags::STATS, "stats"),
        ] {
            if m.flags & flag != 0 {
                write!(f, ",{name}")?;
            }
        }
        for b in &m.bands {
            write!(f, ",band=type=drop,rate={}", b.rate)?;
            if m.flags & meter_flags::BURST != 0 {
                write!(f, ",burst_size={}", b.burst_size)?;
            }
        }
        Ok(())
    }
}

/// OpenFlow meter changes: meters set before the flows that use them are
/// sent, meters no flow uses any more deleted after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeterPlan {
    /// Meters to add (or modify, when the switch already has the id).
    pub set: Vec<MeterMod>,
    /// Meter ids to delete.
    pub delete: Vec<u32>,
}

impl MeterPlan {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }

    /// The lines of the meters set, in `ovs-ofctl` syntax.
    pub fn describe_set(&self) -> Vec<String> {
        self.set
            .iter()
            .map(|m| format!("set meter {}", MeterText(m)))
            .collect()
    }

    pub fn describe_delete(&self) -> Vec<String> {
        self.delete
            .iter()
            .map(|id| format!("delete meter meter={id}"))
            .collect()
    }
}

/// Plans meters: every desired meter the switch does not hold exactly as
/// desired (as far as this connection installed them), and every installed
/// one no longer desired.
pub fn plan_meters(
    desired: &BTreeMap<u32, MeterMod>,
    installed: &BTreeMap<u32, MeterMod>,
) -> MeterPlan {
    MeterPlan {
        set: desired
            .iter()
            .filter(|(id, m)| installed.get(id) != Some(m))
            .map(|(_, m)| m.clone())
            .collect(),
        delete: installed
            .keys()
            .filter(|id| !desired.contains_key(id))
            .copied()
            .collect(),
    }
}

/// [`plan_meters`] of the meter ids `ids` alone: the whole plan when every
/// other id's meter is the same in `desired` and `installed`.
pub fn plan_meters_of(
    desired: &BTreeMap<u32, MeterMod>,
    installed: &BTreeMap<u32, MeterMod>,
    ids: &BTreeSet<u32>,
) -> MeterPlan {
    let mut plan = MeterPlan::default();
    for id in ids {
        match (desired.get(id), installed.get(id)) {
            (Some(d), i) if i != Some(d) => plan.set.push(d.clone()),
            (None, Some(_)) => plan.delete.push(*id),
            _ => {}
        }
    }
    plan
}

/// Everything one convergence pass changes, in the order it is applied:
/// bridge and `hw-offload`, ports, meters set, flows (one bundle), meters
/// deleted. Ports that get no flows yet are listed with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchPlan {
    pub bridge: BridgePlan,
    pub ports: PortPlan,
    pub meters: MeterPlan,
    pub flows: FlowPlan,
    /// Port id → why it has no flows (e.g. no ofport yet).
    pub skipped_ports: BTreeMap<String, String>,
}

impl SwitchPlan {
    /// True when the pass changes nothing on the switch.
    pub fn is_empty(&self) -> bool {
        self.bridge.is_empty()
            && self.ports.is_empty()
            && self.meters.is_empty()
            && self.flows.is_empty()
    }

    /// One line per operation in the backend's notation (OVSDB operations,
    /// then meters and flows in ovs-ofctl syntax), in the order applied,
    /// then the ports that get no flows yet.
    pub fn describe(&self, bridge: &str) -> Vec<String> {
        let mut lines = self.bridge.describe();
        lines.extend(self.ports.describe(bridge));
        lines.extend(self.meters.describe_set());
        lines.extend(self.flows.describe());
        lines.extend(self.meters.describe_delete());
        for (id, why) in &self.skipped_ports {
            lines.push(format!("port {id}: no flows yet ({why})"));
        }
        lines
    }
}

/// Name of the flow-based tunnel port of `encap`.
pub fn tunnel_port_name(encap: Encap) -> Option<&'static str> {
    match encap {
        Encap::Vxlan => Some("dpu-vxlan"),
        Encap::Geneve => Some("dpu-geneve"),
        Encap::Local => None,
    }
}

/// The ports the agent wants on the bridge: one system port per representor
/// (owner `port/<id>`) and one flow-based tunnel port per encapsulation in
/// use (owner `tunnel/<type>`).
pub fn desired_ports(networking: &DesiredNetworking) -> Vec<PortSpec> {
    let mut out: BTreeMap<String, PortSpec> = BTreeMap::new();
    for p in &networking.ports {
        if let Some(dev) = &p.representor {
            out.entry(dev.clone())
                .or_insert_with(|| PortSpec::system(dev, &owner_value("port", &p.id)));
        }
    }
    let encaps: BTreeSet<Encap> = networking.networks.iter().map(|n| n.encap).collect();
    for encap in encaps {
        if let (Some(name), Some(kind)) = (tunnel_port_name(encap), encap.interface_type()) {
            out.insert(
                name.to_string(),
                PortSpec::flow_tunnel(name, kind, &owner_value("tunnel", kind)),
            );
        }
    }
    out.into_values().collect()
}

/// OVSDB changes for the bridge's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortPlan {
    pub add: Vec<PortSpec>,
    /// Names of agent-owned ports no longer wanted.
    pub remove: Vec<String>,
}

impl PortPlan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// One line per OVSDB operation, for `plan`: inserts, then deletes.
    pub fn describe(&self, bridge: &str) -> Vec<String> {
        let mut lines = self.describe_add(bridge);
        lines.extend(self.describe_remove(bridge));
        lines
    }

    pub fn describe_add(&self, bridge: &str) -> Vec<String> {
        self.add
            .iter()
            .map(|p| {
                let opts: Vec<String> =
                    p.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!(
                    "ovsdb: insert Port+Interface {} type={}{} external_ids:dpu-agent/owner={} into Bridge {bridge}",
                    p.name,
                    p.interface_type,
                    if opts.is_empty() {
                        String::new()
                    } else {
                        format!(" options:{{{}}}", opts.join(","))
                    },
                    p.owner
                )
            })
            .collect()
    }

    pub fn describe_remove(&self, bridge: &str) -> Vec<String> {
        self.remove
            .iter()
            .map(|name| format!("ovsdb: delete Port {name} from Bridge {bridge}"))
            .collect()
    }
}

/// Plans ports: add what is missing by name, remove agent-owned ports (owner
/// `port/` or `tunnel/`) not desired. A port of that name owned by someone
/// else (an operator, or a test attaching a representor by hand) is used as
/// it is, never replaced.
/// `observed` is the bridge's ports in uuid order (a slice, or the
/// reconciler's rows by uuid); removals are listed in that order.
pub fn plan_ports<'a>(
    desired: &[PortSpec],
    observed: impl IntoIterator<Item = &'a PortRow> + Clone,
) -> PortPlan {
    let wanted: BTreeSet<&str> = desired.iter().map(|p| p.name.as_str()).collect();
    let present: BTreeSet<&str> = observed
        .clone()
        .into_iter()
        .map(|p| p.name.as_str())
        .collect();
    let add = desired
        .iter()
        .filter(|p| !present.contains(p.name.as_str()))
        .cloned()
        .collect();
    PortPlan {
        add,
        remove: strays(observed, &wanted),
    }
}

/// The names of the agent-owned ports (owner `port/` or `tunnel/`) of
/// `observed` not in `wanted`, in `observed`'s order.
fn strays<'a>(
    observed: impl IntoIterator<Item = &'a PortRow>,
    wanted: &BTreeSet<&str>,
) -> Vec<String> {
    observed
        .into_iter()
        .filter(|p| !wanted.contains(p.name.as_str()))
        .filter(|p| agent_owned(p))
        .map(|p| p.name.clone())
        .collect()
}

/// Whether the agent made port `p` (owner `port/` or `tunnel/`), so may
/// remove it.
fn agent_owned(p: &PortRow) -> bool {
    owner_of(&p.external_ids).is_some_and(|o| o.starts_with("port/") || o.starts_with("tunnel/"))
}

/// [`plan_ports_of`] for `now`, when it was empty for `before` against
/// the bridge's Port rows of some moment, and since then the inputs
/// changed only in those of `networks` (see
/// [`super::InputChange`]) and the Port rows only in those named `names`.
/// Only those names are looked at: the representors of those networks'
/// ports (before and now) and `names`; every other name is wanted and
/// present as it was, so it needs nothing. `rows_named` gives the bridge's
/// Port rows of a name in uuid order, `uuid` a row's uuid (removals are
/// listed in uuid order, as [`plan_ports_of`] lists them). `None` when only
/// the whole plan can tell: port or network ids not strictly ascending, a
/// tunnel port's name among those looked at, or the encapsulations in use
/// changed (a tunnel port to add or remove).
pub fn plan_ports_changed<'a>(
    now: &super::SwitchInput,
    before: &super::SwitchInput,
    networks: &BTreeSet<&str>,
    names: &BTreeSet<String>,
    rows_named: impl Fn(&str) -> Vec<&'a PortRow>,
) -> Option<PortPlan> {
    let ascending = |i: &super::SwitchInput| {
        i.ids_ascending() && i.networking.networks.windows(2).all(|w| w[0].id < w[1].id)
    };
    if !ascending(now) || !ascending(before) {
        return None;
    }
    let (now_inputs, before_inputs) = (now, before);
    let (now, before) = (&now.networking, &before.networking);
    // The encapsulations in use (hence the tunnel ports) are as they were
    // unless one of `networks` came, went or changed encapsulation.
    let network = |d: &DesiredNetworking, id: &str| {
        d.networks
            .binary_search_by(|n| n.id.as_str().cmp(id))
            .ok()
            .map(|i| d.networks[i].encap)
    };
    if networks
        .iter()
        .any(|id| network(now, id) != network(before, id))
    {
        let encaps = |d: &DesiredNetworking| -> BTreeSet<Encap> {
            d.networks.iter().map(|n| n.encap).collect()
        };
        if encaps(now) != encaps(before) {
            return None;
        }
    }
    let mut look: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for input in [now_inputs, before_inputs] {
        look.extend(
            input
                .ports_in(networks)
                .filter_map(|p| p.representor.as_deref()),
        );
    }
    let tunnels = [Encap::Vxlan, Encap::Geneve].map(tunnel_port_name);
    if look.iter().any(|n| tunnels.contains(&Some(*n))) {
        return None;
    }
    let mut plan = PortPlan::default();
    let mut remove: Vec<(&PortRow, &str)> = Vec::new();
    for name in look {
        // The first port (in id order) whose representor it is: the one
        // `plan_ports_of` names as its owner.
        let owner = now_inputs.ports_of_representor(name).next();
        let rows = rows_named(name);
        match owner {
            Some(p) if rows.is_empty() => plan
                .add
                .push(PortSpec::system(name, &owner_value("port", &p.id))),
            Some(_) => {}
            None => remove.extend(
                rows.into_iter()
                    .filter(|p| agent_owned(p))
                    .map(|p| (p, name)),
            ),
        }
    }
    remove.sort_by_key(|(p, _)| p.uuid);
    plan.remove = remove.into_iter().map(|(_, n)| n.to_string()).collect();
    Some(plan)
}

/// [`plan_ports`] of [`desired_ports`], without building the spec of
/// every desired port: only the missing ones get one (a pass where one
/// port is new copies one port's spec, not every port's).
pub fn plan_ports_of<'a>(
    networking: &DesiredNetworking,
    observed: impl IntoIterator<Item = &'a PortRow> + Clone,
) -> PortPlan {
    let present: BTreeSet<&str> = observed
        .clone()
        .into_iter()
        .map(|p| p.name.as_str())
        .collect();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    let mut add: BTreeMap<&str, PortSpec> = BTreeMap::new();
    for p in &networking.ports {
        if let Some(dev) = &p.representor
            && wanted.insert(dev)
            && !present.contains(dev.as_str())
        {
            add.insert(dev, PortSpec::system(dev, &owner_value("port", &p.id)));
        }
    }
    let encaps: BTreeSet<Encap> = networking.networks.iter().map(|n| n.encap).collect();
    for encap in encaps {
        if let (Some(name), Some(kind)) = (tunnel_port_name(encap), encap.interface_type()) {
            wanted.insert(name);
            if present.contains(name) {
                // A representor of that name is not added either: the
                // tunnel's spec replaces it, and the name is there.
                add.remove(name);
            } else {
                add.insert(
                    name,
                    PortSpec::flow_tunnel(name, kind, &owner_value("tunnel", kind)),
                );
            }
        }
    }
    PortPlan {
        add: add.into_values().collect(),
        remove: strays(observed, &wanted),
    }
}

/// `name → ofport` of the interfaces ovs-vswitchd opened (ofport > 0).
/// Of several interfaces of one name, the last one's ofport is kept.
pub fn ofports(interfaces: &[InterfaceRow]) -> BTreeMap<String, u32> {
    interfaces
        .iter()
        .filter_map(|i| Some((i.name.clone(), opened_ofport(i)?)))
        .collect()
}

/// The interface's ofport when ovs-vswitchd opened it (a valid port
/// number, not -1 and not a reserved one).
pub fn opened_ofport(interface: &InterfaceRow) -> Option<u32> {
    match interface.ofport {
        Some(n) if n > 0 && n < 0xff00 => Some(n as u32),
        _ => None,
    }
}

/// Fills in the ofports of ports (from their representors) and tunnels.
pub fn resolve_ofports(
    networking: &DesiredNetworking,
    ofports: &BTreeMap<String, u32>,
) -> DesiredNetworking {
    pipeline::resolved(
        networking,
        |p| port_ofport(p, ofports),
        &tunnel_ofports(ofports),
    )
}

/// The ofport of port `p`: its representor's (see [`ofports`]).
pub fn port_ofport(p: &PortDesc, ofports: &BTreeMap<String, u32>) -> Option<u32> {
    p.representor
        .as_deref()
        .and_then(|d| ofports.get(d))
        .copied()
}

/// The ofport of each encapsulation's flow-based tunnel port.
pub fn tunnel_ofports(ofports: &BTreeMap<String, u32>) -> BTreeMap<Encap, u32> {
    [Encap::Vxlan, Encap::Geneve]
        .into_iter()
        .filter_map(|e| {
            let name = tunnel_port_name(e)?;
            Some((e, *ofports.get(name)?))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ovsdb::{OWNER_KEY, Uuid};
    use crate::pipeline::{NetworkDesc, SecurityDesc};
    use std::sync::Arc;

    fn row(name: &str, owner: Option<&str>) -> PortRow {
        PortRow {
            uuid: Uuid::from_u128(1),
            name: name.into(),
            interfaces: BTreeSet::new(),
            tag: None,
            other_config: BTreeMap::new(),
            external_ids: owner
                .map(|o| BTreeMap::from([(OWNER_KEY.to_string(), o.to_string())]))
                .unwrap_or_default(),
        }
    }

    /// Port `id` of network `n` (tenant `t`), with no IPs, rules or QoS.
    pub(crate) fn port_desc(id: &str) -> PortDesc {
        PortDesc {
            id: id.into(),
            tenant: "t".into(),
            network: "n".into(),
            mac: [2, 0, 0, 0, 0, 1],
            ips: vec![],
            security: SecurityDesc::default(),
            qos: None,
            representor: None,
            ofport: None,
        }
    }

    fn desired() -> DesiredNetworking {
        DesiredNetworking {
            networks: vec![NetworkDesc {
                id: "n".into(),
                tenant: "t".into(),
                vni: 5,
                encap: Encap::Vxlan,
            }],
            ports: vec![Arc::new(PortDesc {
                representor: Some("rep1".into()),
                ..port_desc("p1")
            })],
            ..Default::default()
        }
    }

    #[test]
    fn adds_missing_removes_only_owned_strays() {
        let d = desired();
        let want = desired_ports(&d);
        let names: Vec<_> = want.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dpu-vxlan", "rep1"]);
        let observed = vec![
            row("br-int", Some("bridge/br-int")),
            row("dpu-vxlan", Some("tunnel/vxlan")),
            row("old", Some("port/gone")),
            row("operator", None),
        ];
        let plan = plan_ports(&want, &observed);
        assert_eq!(plan.add.len(), 1);
        assert_eq!(plan.add[0].name, "rep1");
        assert_eq!(plan.add[0].owner, "port/p1");
        assert_eq!(plan.remove, vec!["old".to_string()]);
        assert!(plan.describe("br-int")[0].contains("rep1 type=system"));
        // A representor already attached by someone else is used, not re-added.
        let plan = plan_ports(&want, &[row("rep1", None), row("dpu-vxlan", None)]);
        assert!(plan.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Planning ports from the input in place gives what planning them
        /// from every desired port's spec gives: ports (ids may repeat,
        /// representors may be shared or named like a tunnel port),
        /// networks of every encapsulation, and bridge ports present or
        /// not, owned by the agent or by someone else.
        #[test]
        fn plan_ports_of_equals_plan_of_desired_ports(
            ports in proptest::collection::vec((0u8..6, proptest::option::weighted(0.8, 0u8..7)), 0..10),
            encaps in proptest::collection::vec(0u8..3, 0..3),
            observed in proptest::collection::vec((0u8..9, 0u8..4), 0..10),
        ) {
            let names = |i: u8| match i {
                6 => "dpu-vxlan".to_string(),
                7 => "dpu-geneve".to_string(),
                8 => "br-int".to_string(),
                i => format!("rep{i}"),
            };
            let mut d = desired();
            d.ports.clear();
            d.networks.clear();
            for (i, (id, rep)) in ports.iter().enumerate() {
                let mut p = (*desired().ports[0]).clone();
                p.id = format!("p{id}");
                p.representor = rep.map(names);
                p.network = format!("n{i}");
                d.ports.push(Arc::new(p));
            }
            for (i, e) in encaps.iter().enumerate() {
                let mut n = desired().networks[0].clone();
                n.id = format!("n{i}");
                n.encap = [Encap::Vxlan, Encap::Geneve, Encap::Local][usize::from(*e)];
                d.networks.push(n);
            }
            let owners = [None, Some("port/p1"), Some("tunnel/vxlan"), Some("bridge/br-int")];
            let rows: Vec<PortRow> = observed
                .iter()
                .map(|(n, o)| row(&names(*n), owners[usize::from(*o)]))
                .collect();
            proptest::prop_assert_eq!(
                plan_ports_of(&d, &rows),
                plan_ports(&desired_ports(&d), &rows)
            );
        }
    }

    /// Generated inputs: ports `(id, network, representor)` and the
    /// encapsulation of networks `n0`–`n2` (`None`: no such network), in
    /// id order as the agent hands them over (of one id, the first kept).
    type PortsGen = Vec<(u8, u8, Option<u8>)>;

    fn gen_inputs(
        ports: &PortsGen,
        encaps: &[Option<u8>],
        names: impl Fn(u8) -> String,
    ) -> DesiredNetworking {
        let mut d = DesiredNetworking::default();
        for (i, e) in encaps.iter().enumerate() {
            if let Some(e) = e {
                let mut n = desired().networks[0].clone();
                n.id = format!("n{i}");
                n.encap = [Encap::Vxlan, Encap::Geneve, Encap::Local][usize::from(*e)];
                d.networks.push(n);
            }
        }
        let mut ports = ports.clone();
        ports.sort_by_key(|p| p.0);
        ports.dedup_by_key(|p| p.0);
        for (id, net, rep) in ports {
            let mut p = port_desc(&format!("p{id}"));
            p.network = format!("n{net}");
            p.representor = rep.map(&names);
            d.ports.push(Arc::new(p));
        }
        d
    }

    fn ports_gen() -> impl proptest::strategy::Strategy<Value = PortsGen> {
        proptest::collection::vec(
            (0u8..8, 0u8..4, proptest::option::weighted(0.8, 0u8..16)),
            0..8,
        )
    }

    fn encaps_gen() -> impl proptest::strategy::Strategy<Value = Vec<Option<u8>>> {
        proptest::collection::vec(proptest::option::weighted(0.8, 0u8..3), 3)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Planning only the names that can have changed gives what the
        /// whole plan gives: from inputs and Port rows for which the plan
        /// was empty, to other inputs (ports added, removed, moved between
        /// networks, representors changed or shared, networks added or
        /// removed, encapsulations changed) and rows changed by hand (added,
        /// removed, owned by the agent or not, named like a tunnel port),
        /// with the networks `SwitchInput::changed_networks` names and the
        /// names of the rows that changed. `None` only where it says.
        #[test]
        fn plan_ports_changed_equals_the_whole_plan(
            before in (ports_gen(), encaps_gen()),
            port_edits in proptest::collection::vec(
                (0usize..8, proptest::option::of((0u8..8, 0u8..4, proptest::option::weighted(0.8, 0u8..16)))),
                0..3,
            ),
            encaps_now in proptest::option::weighted(0.2, encaps_gen()),
            rows in proptest::collection::vec((0u8..16, 0u8..4), 0..8),
            edits in proptest::collection::vec((proptest::bool::ANY, 0u8..17, 0u8..4), 0..3),
        ) {
            use proptest::prelude::*;
            let names = |i: u8| match i {
                14 => "dpu-vxlan".to_string(),
                15 => "dpu-geneve".to_string(),
                16 => "br-int".to_string(),
                i => format!("rep{i}"),
            };
            // The inputs now: `before`'s with some ports replaced, removed
            // or added, and sometimes other networks.
            let mut now = (before.0.clone(), encaps_now.unwrap_or_else(|| before.1.clone()));
            for (i, edit) in &port_edits {
                match edit {
                    Some(p) if *i < now.0.len() => now.0[*i] = *p,
                    Some(p) => now.0.push(*p),
                    None if *i < now.0.len() => {
                        now.0.remove(*i);
                    }
                    None => {}
                }
            }
            let owners = [None, Some("port/p1"), Some("tunnel/vxlan"), Some("bridge/br-int")];
            let mut uuid = 0u128;
            let mut make = |name: &str, owner: Option<&str>| {
                uuid += 1;
                PortRow { uuid: Uuid::from_u128(uuid), ..row(name, owner) }
            };
            let d0 = gen_inputs(&before.0, &before.1, names);
            let d1 = gen_inputs(&now.0, &now.1, names);
            // Rows for which the plan of `before` is empty: the generated
            // ones with the plan applied.
            let mut bridge: Vec<PortRow> = rows
                .iter()
                .map(|(n, o)| make(&names(*n), owners[usize::from(*o)]))
                .collect();
            let plan = plan_ports_of(&d0, &bridge);
            bridge.retain(|p| !(plan.remove.contains(&p.name) && agent_owned(p)));
            for a in &plan.add {
                bridge.push(make(&a.name, Some(&a.owner)));
            }
            prop_assume!(plan_ports_of(&d0, &bridge).is_empty());
            // Rows changed by hand since.
            let mut changed: BTreeSet<String> = BTreeSet::new();
            for (add, n, o) in &edits {
                let name = names(*n);
                if *add {
                    bridge.push(make(&name, owners[usize::from(*o)]));
                    changed.insert(name);
                } else if let Some(i) = bridge.iter().position(|p| p.name == name) {
                    bridge.remove(i);
                    changed.insert(name);
                }
            }
            let input = |d: &DesiredNetworking| crate::switch::SwitchInput {
                networking: d.clone(),
                ..Default::default()
            };
            let networks = input(&d1).changed_networks(&input(&d0)).expect("ids ascending");
            let networks: BTreeSet<&str> = networks.iter().map(String::as_str).collect();
            let named = |name: &str| -> Vec<&PortRow> {
                let mut v: Vec<&PortRow> = bridge.iter().filter(|p| p.name == name).collect();
                v.sort_by_key(|p| p.uuid);
                v
            };
            let mut sorted = bridge.clone();
            sorted.sort_by_key(|p| p.uuid);
            let whole = plan_ports_of(&d1, &sorted);
            // With the ports by network (as the agent gives them) and without.
            let by_network = |d: &DesiredNetworking| {
                let mut groups: BTreeMap<String, Vec<Arc<PortDesc>>> = BTreeMap::new();
                for p in &d.ports {
                    groups.entry(p.network.clone()).or_default().push(p.clone());
                }
                let by: crate::pipeline::PortsByNetwork =
                    groups.into_iter().map(|(n, v)| (n, v.into())).collect();
                crate::switch::SwitchInput {
                    networking: d.clone(),
                    by_network: Some(Arc::new(by)),
                    by_representor: d
                        .ports
                        .iter()
                        .filter_map(|p| Some((p.representor.clone()?, p.id.clone())))
                        .collect(),
                    ..Default::default()
                }
            };
            let got = plan_ports_changed(&input(&d1), &input(&d0), &networks, &changed, named);
            prop_assert_eq!(
                &got,
                &plan_ports_changed(&by_network(&d1), &by_network(&d0), &networks, &changed, named)
            );
            match got {
                Some(got) => prop_assert_eq!(got, whole),
                None => {
                    // Only for a tunnel name looked at or other encapsulations.
                    let encaps = |d: &DesiredNetworking| -> BTreeSet<Encap> {
                        d.networks.iter().map(|n| n.encap).collect()
                    };
                    let tunnel_looked_at = changed.iter().any(|n| n.starts_with("dpu-"))
                        || [&d0, &d1].iter().any(|d| {
                            d.ports.iter().any(|p| {
                                networks.contains(p.network.as_str())
                                    && p.representor.as_ref().is_some_and(|n| n.starts_with("dpu-"))
                            })
                        });
                    prop_assert!(tunnel_looked_at || encaps(&d0) != encaps(&d1));
                }
            }
        }
    }

    fn bridge_row(spec: &BridgeSpec) -> BridgeRow {
        BridgeRow {
            uuid: Uuid::from_u128(2),
            name: spec.name.clone(),
            datapath_type: spec.datapath_type.clone(),
            fail_mode: spec.fail_mode.clone(),
            protocols: spec.protocols.iter().cloned().collect(),
            ports: BTreeSet::new(),
            other_config: BTreeMap::new(),
            external_ids: BTreeMap::new(),
        }
    }

    fn root(hw_offload: Option<&str>) -> OpenVswitchRow {
        OpenVswitchRow {
            uuid: Uuid::from_u128(3),
            bridges: BTreeSet::new(),
            next_cfg: 0,
            cur_cfg: 0,
            ovs_version: None,
            other_config: hw_offload
                .map(|v| BTreeMap::from([("hw-offload".to_string(), v.to_string())]))
                .unwrap_or_default(),
            external_ids: BTreeMap::new(),
        }
    }

    #[test]
    fn bridge_is_ensured_only_when_it_differs() {
        let want = bridge_spec("br-int", "netdev");
        let plan = plan_bridge(&want, None, false, None);
        assert_eq!(plan.ensure.as_ref(), Some(&want));
        assert_eq!(
            plan.describe(),
            [
                "ovsdb: ensure Bridge br-int datapath_type=netdev fail_mode=secure protocols=OpenFlow13,OpenFlow14 external_ids:dpu-agent/owner=bridge/br-int"
            ]
        );
        let same = bridge_row(&want);
        assert!(plan_bridge(&want, Some(&same), false, None).is_empty());
        for change in [
            |b: &mut BridgeRow| b.fail_mode = None,
            |b: &mut BridgeRow| b.datapath_type = "system".into(),
            |b: &mut BridgeRow| {
                b.protocols.remove("OpenFlow14");
            },
        ] {
            let mut drifted = same.clone();
            change(&mut drifted);
            assert!(
                plan_bridge(&want, Some(&drifted), false, None)
                    .ensure
                    .is_some()
            );
        }
    }

    #[test]
    fn hw_offload_is_set_once_the_root_row_lacks_it() {
        let want = bridge_spec("br-int", "system");
        let b = bridge_row(&want);
        assert!(!plan_bridge(&want, Some(&b), true, None).hw_offload);
        let plan = plan_bridge(&want, Some(&b), true, Some(&root(None)));
        assert!(plan.hw_offload);
        assert_eq!(
            plan.describe(),
            ["ovsdb: set Open_vSwitch other_config:hw-offload=true"]
        );
        assert!(plan_bridge(&want, Some(&b), true, Some(&root(Some("false")))).hw_offload);
        assert!(!plan_bridge(&want, Some(&b), true, Some(&root(Some("true")))).hw_offload);
        assert!(!plan_bridge(&want, Some(&b), false, Some(&root(None))).hw_offload);
    }

    #[test]
    fn meters_set_what_differs_and_delete_what_is_unused() {
        use crate::openflow::MeterCommand;
        let m = |id, rate| MeterMod::drop_kbps(MeterCommand::Add, id, rate, rate / 10);
        let desired = BTreeMap::from([(1, m(1, 1000)), (2, m(2, 2000)), (3, m(3, 3000))]);
        let installed = BTreeMap::from([(1, m(1, 1000)), (2, m(2, 500)), (4, m(4, 4000))]);
        let plan = plan_meters(&desired, &installed);
        assert_eq!(plan.set, vec![m(2, 2000), m(3, 3000)]);
        assert_eq!(plan.delete, vec![4]);
        assert_eq!(
            plan.describe_set(),
            [
                "set meter meter=2,kbps,burst,band=type=drop,rate=2000,burst_size=200",
                "set meter meter=3,kbps,burst,band=type=drop,rate=3000,burst_size=300"
            ]
        );
        assert_eq!(plan.describe_delete(), ["delete meter meter=4"]);
        assert!(plan_meters(&desired, &desired).is_empty());
        let no_burst = MeterMod::drop_kbps(MeterCommand::Add, 7, 100, 0);
        assert_eq!(
            MeterText(&no_burst).to_string(),
            "meter=7,kbps,band=type=drop,rate=100"
        );
    }

    #[test]
    fn resolves_ofports() {
        let d = desired();
        let ofp = BTreeMap::from([("rep1".to_string(), 4), ("dpu-vxlan".to_string(), 9)]);
        let r = resolve_ofports(&d, &ofp);
        assert_eq!(r.ports[0].ofport, Some(4));
        assert_eq!(r.tunnel_ofports.get(&Encap::Vxlan), Some(&9));
        let r = resolve_ofports(&d, &BTreeMap::new());
        assert_eq!(r.ports[0].ofport, None);
    }
}
