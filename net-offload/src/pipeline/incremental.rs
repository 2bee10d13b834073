//! The incremental compiler: the pipeline kept as the [`skeleton`] plus one
//! [`Segment`] per network, each recompiled only when its inputs changed
//! (the network, its ports and endpoints in id order, its tunnel ofport).
//! The result is always what [`compile`] gives for the same desired state
//! (README.md, "The agent's own share").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::FlowKeyHasher;
use super::compile::{
    CompiledPipeline, NetworkInputs, OwnedFlow, Segment, compile, compile_segment,
    group_by_network, skeleton, unknown_network,
};
use super::cookie::Owner;
use super::diff::{FlowPlan, plan_flows};
use super::model::{DesiredNetworking, Encap, EndpointDesc, NetworkDesc, PortDesc, PortsByNetwork};
use crate::openflow::{Flow, Match, MeterMod};

/// One network's segment and the inputs it was compiled from.
#[derive(Debug, Clone)]
struct Cached {
    network: NetworkDesc,
    ports: Vec<PortDesc>,
    endpoints: Vec<EndpointDesc>,
    tunnel: Option<u32>,
    segment: Segment,
    /// Flows per owner in `segment`.
    counts: Vec<(Owner, usize)>,
}

/// Adds `counts` to `total`.
fn add_counts(total: &mut BTreeMap<Owner, usize>, counts: &[(Owner, usize)]) {
    for (owner, n) in counts {
        match total.get_mut(owner) {
            Some(t) => *t += n,
            None => {
                total.insert(owner.clone(), *n);
            }
        }
    }
}

/// Takes `counts` (added before) out of `total`; owners left with no flow
/// are removed, as [`CompiledPipeline::flow_counts`] has none.
fn sub_counts(total: &mut BTreeMap<Owner, usize>, counts: &[(Owner, usize)]) {
    for (owner, n) in counts {
        if let Some(t) = total.get_mut(owner) {
            *t -= n;
            if *t == 0 {
                total.remove(owner);
            }
        }
    }
}

/// Whether two ports are equal but for their ofport and representor (the
/// flows match the ofport alone).
fn same_but_ofport(a: &PortDesc, b: &PortDesc) -> bool {
    let PortDesc {
        id,
        tenant,
        network,
        mac,
        ips,
        security,
        qos,
        representor: _,
        ofport: _,
    } = a;
    *id == b.id
        && *tenant == b.tenant
        && *network == b.network
        && *mac == b.mac
        && *ips == b.ips
        && *security == b.security
        && *qos == b.qos
}

/// `desired` with each port's ofport `ofport(port)` and the tunnel ports'
/// `tunnels` (a copy).
pub fn resolved(
    desired: &DesiredNetworking,
    ofport: impl Fn(&PortDesc) -> Option<u32>,
    tunnels: &BTreeMap<Encap, u32>,
) -> DesiredNetworking {
    let mut out = desired.clone();
    for (p, o) in out.ports.iter_mut().zip(&desired.ports) {
        Arc::make_mut(p).ofport = ofport(o);
    }
    out.tunnel_ofports = tunnels.clone();
    out
}

/// The networks whose inputs differ between `old` and `new` (see
/// [`IncrementalPipeline::update_networks`]): networks added, removed or
/// changed, the networks (before and after) of ports and endpoints added,
/// removed or changed, and every network of an encapsulation whose tunnel
/// ofport moved. One ordered walk of each list; `None` when the ids of a
/// list are not strictly ascending (then only a whole comparison can tell).
pub fn changed_networks(
    old: &DesiredNetworking,
    new: &DesiredNetworking,
) -> Option<BTreeSet<String>> {
    let mut changed = BTreeSet::new();
    let mut note = |network: &String| {
        changed.insert(network.clone());
    };
    walk_changed(&old.networks, &new.networks, |n| &n.id, |n| note(&n.id))?;
    walk_changed(&old.ports, &new.ports, |p| &p.id, |p| note(&p.network))?;
    walk_changed(
        &old.endpoints,
        &new.endpoints,
        |e| &e.id,
        |e| note(&e.network),
    )?;
    if old.tunnel_ofports != new.tunnel_ofports {
        for n in old.networks.iter().chain(&new.networks) {
            if old.tunnel_ofports.get(&n.encap) != new.tunnel_ofports.get(&n.encap) {
                changed.insert(n.id.clone());
            }
        }
    }
    Some(changed)
}

/// Walks `old` and `new` (each in strictly ascending `id` order, else
/// `None`) side by side and calls `changed` with both sides of every entry
/// that is not in both or differs.
pub(crate) fn walk_changed<T: PartialEq>(
    old: &[T],
    new: &[T],
    id: impl Fn(&T) -> &String,
    mut changed: impl FnMut(&T),
) -> Option<()> {
    let ascending = |v: &[T]| v.windows(2).all(|w| id(&w[0]) < id(&w[1]));
    if !ascending(old) || !ascending(new) {
        return None;
    }
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return Some(()),
            (Some(x), None) => {
                changed(x);
                a.next();
            }
            (None, Some(y)) => {
                changed(y);
                b.next();
            }
            (Some(x), Some(y)) => match id(x).cmp(id(y)) {
                std::cmp::Ordering::Less => {
                    changed(x);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    changed(y);
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if x != y {
                        changed(x);
                        changed(y);
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

fn count_owners(flows: &[OwnedFlow]) -> Vec<(Owner, usize)> {
    let mut counts: Vec<(Owner, usize)> = Vec::new();
    for f in flows {
        match counts.last_mut() {
            Some((o, n)) if *o == f.owner => *n += 1,
            _ => counts.push((f.owner.clone(), 1)),
        }
    }
    counts
}

impl Cached {
    /// Compiles `g`, each port with the ofport `ofport` gives it (only this
    /// network's ports are copied).
    fn new(g: &NetworkInputs<'_>, ofport: &impl Fn(&PortDesc) -> Option<u32>) -> Self {
        let ports: Vec<PortDesc> = g
            .ports
            .iter()
            .map(|p| PortDesc {
                ofport: ofport(p),
                ..(*p).clone()
            })
            .collect();
        let refs: Vec<&PortDesc> = ports.iter().collect();
        let segment = compile_segment(g.network, &refs, &g.endpoints, g.tunnel);
        Cached {
            counts: count_owners(&segment.flows),
            network: g.network.clone(),
            ports,
            endpoints: g.endpoints.iter().map(|e| (*e).clone()).collect(),
            tunnel: g.tunnel,
            segment,
        }
    }

    /// Whether `g`, each port with the ofport `ofport` gives it, is what
    /// this segment was compiled from (compared in place, nothing copied).
    fn compiled_from(
        &self,
        g: &NetworkInputs<'_>,
        ofport: &impl Fn(&PortDesc) -> Option<u32>,
    ) -> bool {
        self.tunnel == g.tunnel
            && self.network == *g.network
            && self.ports.len() == g.ports.len()
            && self.endpoints.len() == g.endpoints.len()
            && self
                .ports
                .iter()
                .zip(&g.ports)
                .all(|(a, b)| same_but_ofport(a, b) && a.ofport == ofport(b))
            && self
                .endpoints
                .iter()
                .zip(&g.endpoints)
                .all(|(a, b)| a == *b)
    }
}

/// What an [`IncrementalPipeline::update`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Anything may have changed: the first update, or the whole-state
    /// compile was used now or the time before (inputs whose keys collide).
    All,
    /// Only these networks' segments may differ; each with its previous
    /// segment (`None`: the network is new).
    Segments(BTreeMap<String, Option<Segment>>),
}

/// The pipeline compiled per network and cached; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct IncrementalPipeline {
    skeleton: Vec<OwnedFlow>,
    skeleton_counts: Vec<(Owner, usize)>,
    segments: BTreeMap<String, Cached>,
    /// Ports whose network is not known: port id → (that network, why).
    orphans: BTreeMap<String, (String, String)>,
    /// The whole-state result while the inputs break the uniqueness the
    /// segments rely on (two networks with one id or VNI, two ports with
    /// one ofport): only an API bug sends that, and then the whole-state
    /// dedup decides, as [`compile`] does.
    whole: Option<CompiledPipeline>,
    /// Flows per owner of the whole result, kept up to date as segments
    /// come and go (so a pass does not count every owner again).
    counts: BTreeMap<Owner, usize>,
    /// How many ports of the cached segments have each ofport, kept up to
    /// date with them (so an update of some networks checks its ofports
    /// without collecting every other network's).
    ofports: BTreeMap<u32, usize>,
    /// Every meter of the cached segments, kept up to date as they come
    /// and go (meter ids are ofports, unique while the segments are used).
    meters: BTreeMap<u32, MeterMod>,
    started: bool,
}

/// Adds (`add`) or takes out the ofports of `c`'s ports to or from `counts`.
fn count_ofports(counts: &mut BTreeMap<u32, usize>, c: &Cached, add: bool) {
    for of in c.ports.iter().filter_map(|p| p.ofport) {
        if add {
            *counts.entry(of).or_default() += 1;
        } else if let Some(n) = counts.get_mut(&of) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&of);
            }
        }
    }
}

/// Whether no flow key of one segment can be another's: network ids and
/// VNIs unique, ofports of the ports of known networks unique.
fn segments_disjoint(
    desired: &DesiredNetworking,
    groups: &BTreeMap<&str, NetworkInputs<'_>>,
    ofport: &impl Fn(&PortDesc) -> Option<u32>,
) -> bool {
    if groups.len() != desired.networks.len() {
        return false;
    }
    let mut vnis = HashSet::with_capacity(groups.len());
    if !groups.values().all(|g| vnis.insert(g.network.vni)) {
        return false;
    }
    let mut ofports = HashSet::with_capacity(desired.ports.len());
    groups
        .values()
        .flat_map(|g| g.ports.iter().filter_map(|p| ofport(p)))
        .all(|of| ofports.insert(of))
}

impl IncrementalPipeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the pipeline to `desired`, recompiling only the networks whose
    /// inputs changed, and says which.
    pub fn update(&mut self, desired: &DesiredNetworking) -> Changes {
        self.update_resolving(desired, |p| p.ofport, &desired.tunnel_ofports)
    }

    /// [`IncrementalPipeline::update`] to `desired` with each port's ofport
    /// replaced by `ofport(port)` and the tunnel ports' by `tunnels`
    /// ([`resolved`]), without copying `desired`: only the ports of the
    /// networks that changed are copied (the common case; the whole-state
    /// fallback copies everything).
    pub fn update_resolving(
        &mut self,
        desired: &DesiredNetworking,
        ofport: impl Fn(&PortDesc) -> Option<u32>,
        tunnels: &BTreeMap<Encap, u32>,
    ) -> Changes {
        if !self.started {
            self.skeleton = skeleton();
            self.skeleton_counts = count_owners(&self.skeleton);
        }
        let (mut groups, orphans) = group_by_network(desired);
        for g in groups.values_mut() {
            g.tunnel = tunnels.get(&g.network.encap).copied();
        }
        let mut orphaned = BTreeMap::new();
        for p in orphans {
            orphaned.insert(p.id.clone(), (p.network.clone(), unknown_network(p)));
        }
        self.orphans = orphaned;
        let all = !self.started || self.whole.is_some();
        self.started = true;
        if !segments_disjoint(desired, &groups, &ofport) {
            let whole = compile(&resolved(desired, &ofport, tunnels));
            self.counts = whole.flow_counts();
            self.whole = Some(whole);
            self.segments.clear();
            self.ofports.clear();
            self.meters.clear();
            return Changes::All;
        }
        if all {
            // No segment yet (first update, or after the whole-state
            // compile): the counts start from the skeleton's.
            self.whole = None;
            self.counts.clear();
            add_counts(&mut self.counts, &self.skeleton_counts);
        }
        let mut changed = BTreeMap::new();
        let gone: Vec<String> = self
            .segments
            .keys()
            .filter(|id| !groups.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(c) = self.segments.remove(&id) {
                count_ofports(&mut self.ofports, &c, false);
                sub_counts(&mut self.counts, &c.counts);
                changed.insert(id, Some(c.segment));
            }
        }
        for g in groups.values() {
            self.refresh_segment(g, &ofport, &mut changed);
        }
        if all {
            self.meters.clear();
        }
        self.patch_meters(&changed);
        if all {
            Changes::All
        } else {
            Changes::Segments(changed)
        }
    }

    /// [`IncrementalPipeline::update_resolving`] when `desired` differs from
    /// the desired state of the last update only in the inputs of
    /// `networks`: those networks themselves (added, removed or changed),
    /// the ports and endpoints whose network is or was one of them, those
    /// ports' ofports, and the tunnel ofports of their encapsulations (a
    /// tunnel that moved lists every network of its encapsulation). Only
    /// those networks are regrouped, compared and (when they differ)
    /// recompiled; of the others only the cached VNIs are read (still
    /// unique?; the cached ofports are counted as segments come and go),
    /// and the endpoints are walked once to find those of `networks`; the
    /// ports too, unless `by_network` gives `desired`'s ports by network
    /// (whose maker promises their ids strictly ascending). `None`, with
    /// nothing changed, when only the whole update can tell: no update yet,
    /// the whole-state compile in use, port ids not strictly ascending, or
    /// network ids, VNIs or ofports no longer unique.
    pub fn update_networks(
        &mut self,
        desired: &DesiredNetworking,
        by_network: Option<&PortsByNetwork>,
        networks: &BTreeSet<&str>,
        ofport: impl Fn(&PortDesc) -> Option<u32>,
        tunnels: &BTreeMap<Encap, u32>,
    ) -> Option<Changes> {
        if !self.started || self.whole.is_some() {
            return None;
        }
        // The listed networks that exist, each once.
        let mut found: BTreeMap<&str, &NetworkDesc> = BTreeMap::new();
        for n in &desired.networks {
            if networks.contains(n.id.as_str()) && found.insert(n.id.as_str(), n).is_some() {
                return None;
            }
        }
        // Their ports (of a listed network that does not exist: orphans),
        // in id order, as `group_by_network` sorts them.
        let mut ports: BTreeMap<&str, Vec<&PortDesc>> =
            networks.iter().map(|id| (*id, Vec::new())).collect();
        match by_network {
            Some(by_network) => {
                for (id, v) in ports.iter_mut() {
                    v.extend(
                        by_network
                            .get(*id)
                            .into_iter()
                            .flat_map(|g| g.iter().map(|p| &**p)),
                    );
                }
            }
            None => {
                let mut last: Option<&str> = None;
                for p in &desired.ports {
                    if last.is_some_and(|l| l >= p.id.as_str()) {
                        return None;
                    }
                    last = Some(p.id.as_str());
                    if let Some(v) = ports.get_mut(p.network.as_str()) {
                        v.push(p);
                    }
                }
            }
        }
        let mut endpoints: BTreeMap<&str, Vec<&EndpointDesc>> = BTreeMap::new();
        for e in &desired.endpoints {
            if found.contains_key(e.network.as_str()) {
                endpoints.entry(e.network.as_str()).or_default().push(e);
            }
        }
        // VNIs still unique: the cached ones of the other networks, the
        // listed ones'.
        let mut vnis: HashSet<u32> = self
            .segments
            .iter()
            .filter(|(id, _)| !networks.contains(id.as_str()))
            .map(|(_, c)| c.network.vni)
            .collect();
        if !found.values().all(|n| vnis.insert(n.vni)) {
            return None;
        }
        let groups: Vec<NetworkInputs<'_>> = found
            .iter()
            .map(|(id, n)| {
                let mut endpoints = endpoints.remove(id).unwrap_or_default();
                endpoints.sort_by(|a, b| a.id.cmp(&b.id));
                NetworkInputs {
                    network: n,
                    ports: ports.remove(id).unwrap_or_default(),
                    endpoints,
                    tunnel: tunnels.get(&n.encap).copied(),
                }
            })
            .collect();
        // Ofports still unique: the new ones of these networks, among
        // themselves and against the cached ones of the other networks
        // (all cached ones but these networks' own).
        let mut leaving: BTreeMap<u32, usize> = BTreeMap::new();
        for id in networks {
            if let Some(c) = self.segments.get(*id) {
                count_ofports(&mut leaving, c, true);
            }
        }
        let mut new = HashSet::new();
        for of in groups
            .iter()
            .flat_map(|g| g.ports.iter().filter_map(|p| ofport(p)))
        {
            let cached = self.ofports.get(&of).copied().unwrap_or(0);
            if !new.insert(of) || cached > leaving.get(&of).copied().unwrap_or(0) {
                return None;
            }
        }
        // What is left in `ports`: the ports of listed networks that do
        // not exist.
        self.orphans
            .retain(|_, (network, _)| !networks.contains(network.as_str()));
        for p in ports.into_values().flatten() {
            self.orphans
                .insert(p.id.clone(), (p.network.clone(), unknown_network(p)));
        }
        let mut changed = BTreeMap::new();
        for id in networks {
            if !found.contains_key(id)
                && let Some(c) = self.segments.remove(*id)
            {
                count_ofports(&mut self.ofports, &c, false);
                sub_counts(&mut self.counts, &c.counts);
                changed.insert(id.to_string(), Some(c.segment));
            }
        }
        for g in &groups {
            self.refresh_segment(g, &ofport, &mut changed);
        }
        self.patch_meters(&changed);
        Some(Changes::Segments(changed))
    }

    /// Recompiles network `g`'s segment unless the cached one was compiled
    /// from the same inputs; a recompiled or new segment is recorded in
    /// `changed` with its previous segment (`None`: new) and the flow
    /// counts follow.
    fn refresh_segment(
        &mut self,
        g: &NetworkInputs<'_>,
        ofport: &impl Fn(&PortDesc) -> Option<u32>,
        changed: &mut BTreeMap<String, Option<Segment>>,
    ) {
        let id = g.network.id.as_str();
        match self.segments.get_mut(id) {
            Some(c) if c.compiled_from(g, ofport) => {}
            Some(c) => {
                let old = std::mem::replace(c, Cached::new(g, ofport));
                count_ofports(&mut self.ofports, &old, false);
                count_ofports(&mut self.ofports, c, true);
                sub_counts(&mut self.counts, &old.counts);
                add_counts(&mut self.counts, &c.counts);
                changed.insert(id.to_string(), Some(old.segment));
            }
            None => {
                let c = Cached::new(g, ofport);
                count_ofports(&mut self.ofports, &c, true);
                add_counts(&mut self.counts, &c.counts);
                self.segments.insert(id.to_string(), c);
                changed.insert(id.to_string(), None);
            }
        }
    }

    /// Brings `meters` to the segments after the segments `changed` lists
    /// changed (each with its previous segment): first every previous
    /// segment's meters out, then every current one's in, so that a meter
    /// that moved from one changed segment to another stays. Exact while
    /// meter ids are unique among the segments before and after (their
    /// ofports are: see [`segments_disjoint`]); unchanged segments' meters
    /// are not looked at.
    fn patch_meters(&mut self, changed: &BTreeMap<String, Option<Segment>>) {
        for old in changed.values().flatten() {
            for id in old.meters.keys() {
                self.meters.remove(id);
            }
        }
        for id in changed.keys() {
            if let Some(c) = self.segments.get(id) {
                self.meters
                    .extend(c.segment.meters.iter().map(|(k, v)| (*k, v.clone())));
            }
        }
    }

    /// Every flow, as [`compile`] lists them.
    pub fn flows(&self) -> Box<dyn Iterator<Item = &OwnedFlow> + '_> {
        match &self.whole {
            Some(w) => Box::new(w.flows.iter()),
            None => Box::new(
                self.skeleton
                    .iter()
                    .chain(self.segments.values().flat_map(|c| c.segment.flows.iter())),
            ),
        }
    }

    /// The number of flows.
    pub fn flow_count(&self) -> usize {
        match &self.whole {
            Some(w) => w.flows.len(),
            None => {
                self.skeleton.len()
                    + self
                        .segments
                        .values()
                        .map(|c| c.segment.flows.len())
                        .sum::<usize>()
            }
        }
    }

    /// The current segment of network `id` (none while the whole-state
    /// compile is used).
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.get(id).map(|c| &c.segment)
    }

    /// Every meter (kept up to date by each update, not gathered again).
    pub fn meters(&self) -> &BTreeMap<u32, MeterMod> {
        match &self.whole {
            Some(w) => &w.meters,
            None => &self.meters,
        }
    }

    /// The meter ids of the segments `changes` lists, before and now: the
    /// only ones whose meter an update that gave `changes` can have
    /// changed.
    pub fn meter_ids_of(&self, changes: &BTreeMap<String, Option<Segment>>) -> BTreeSet<u32> {
        changes
            .iter()
            .flat_map(|(id, old)| old.iter().chain(self.segment(id)))
            .flat_map(|s| s.meters.keys().copied())
            .collect()
    }

    /// Why port `p` got no flows, if it got none: what
    /// [`IncrementalPipeline::skipped_ports`] says of its id, found in its
    /// network's segment (or among the ports of unknown networks) without
    /// gathering every segment's. For a port whose id another port of
    /// another network shares (an input the API never makes), this port's
    /// own reason.
    pub fn skipped_port(&self, p: &PortDesc) -> Option<&str> {
        match &self.whole {
            Some(w) => w.skipped_ports.get(&p.id),
            None => self
                .orphans
                .get(&p.id)
                .filter(|(network, _)| *network == p.network)
                .map(|(_, why)| why)
                .or_else(|| {
                    self.segments
                        .get(&p.network)
                        .and_then(|c| c.segment.skipped_ports.get(&p.id))
                }),
        }
        .map(String::as_str)
    }

    /// Every port that got no flows, with why.
    pub fn skipped_ports(&self) -> BTreeMap<String, String> {
        match &self.whole {
            Some(w) => w.skipped_ports.clone(),
            None => {
                let mut s = BTreeMap::new();
                for c in self.segments.values() {
                    s.extend(c.segment.skipped_ports.clone());
                }
                s.extend(
                    self.orphans
                        .iter()
                        .map(|(id, (_, why))| (id.clone(), why.clone())),
                );
                s
            }
        }
    }

    /// Number of flows per owner, as [`CompiledPipeline::flow_counts`]
    /// gives it (a copy of [`IncrementalPipeline::owner_flows`]).
    pub fn flow_counts(&self) -> BTreeMap<Owner, usize> {
        self.counts.clone()
    }

    /// Number of flows per owner, as [`CompiledPipeline::flow_counts`]
    /// gives it: kept up to date by each update (each segment counted when
    /// it is compiled), not counted again.
    pub fn owner_flows(&self) -> &BTreeMap<Owner, usize> {
        &self.counts
    }

    /// The whole result, as [`compile`] would give it (a copy).
    pub fn compiled(&self) -> CompiledPipeline {
        CompiledPipeline {
            flows: self.flows().cloned().collect(),
            meters: self.meters().clone(),
            skipped_ports: self.skipped_ports(),
        }
    }

    /// The flow plan of the segments `changes` lists, each against its
    /// previous flows. When the switch holds exactly the flows of the
    /// previous state, it is the plan [`plan_flows`] gives for every flow
    /// against every installed one, as a set (unchanged segments have
    /// nothing to change): a key that left one segment and entered another
    /// (a port moved to another network keeps its ofport) is resolved as
    /// the whole diff would, not deleted and re-added.
    pub fn plan_segments(&self, changes: &BTreeMap<String, Option<Segment>>) -> FlowPlan {
        let mut plan = FlowPlan::default();
        for (id, old) in changes {
            let before: Vec<Flow> = old
                .iter()
                .flat_map(|s| s.flows.iter().map(|f| f.flow.clone()))
                .collect();
            let now = self.segment(id).map(|s| &s.flows[..]).unwrap_or(&[]);
            let p = plan_flows(now.iter().map(|f| &f.flow), &before);
            plan.add.extend(p.add);
            plan.modify.extend(p.modify);
            plan.delete.extend(p.delete);
        }
        let mut deleted: HashMap<(u8, u16, Match), Flow, FlowKeyHasher> = plan
            .delete
            .drain(..)
            .map(|f| ((f.table, f.priority, f.matches.clone()), f))
            .collect();
        let mut add = Vec::with_capacity(plan.add.len());
        for d in std::mem::take(&mut plan.add) {
            match deleted.remove(&(d.table, d.priority, d.matches.clone())) {
                None => add.push(d),
                Some(o) if o.cookie != d.cookie => add.push(d),
                Some(o)
                    if o.instructions != d.instructions
                        || o.idle_timeout != d.idle_timeout
                        || o.hard_timeout != d.hard_timeout =>
                {
                    plan.modify.push(d)
                }
                Some(_) => {}
            }
        }
        plan.add = add;
        plan.delete = deleted.into_values().collect();
        plan
    }
}
