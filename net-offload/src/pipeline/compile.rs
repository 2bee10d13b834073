//! The compiler: desired networking → the complete flow set and meters of the
//! bridge. Pure; the table layout is documented in README.md ("Pipeline").

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use super::FlowKeyHasher;
use super::cookie::{Owner, OwnerKind};
use super::model::{
    DesiredNetworking, Encap, EndpointDesc, NetworkDesc, PortDesc, RuleDesc, RuleProtocol,
};
use super::ranges::port_range_masks;
use crate::openflow::{
    Action, Ct, CtZone, Field, Flow, Instructions, Match, MeterCommand, MeterMod, RegMove,
    WriteMetadata, action::port as ofp_port, ct_state, mac,
};

/// Table numbers of the pipeline.
pub mod table {
    /// in_port → network (metadata) and source port (reg6).
    pub const CLASSIFY: u8 = 0;
    /// Source MAC, IP and ARP of each local port; tunnel source (VTEP), MAC
    /// and IP of each remote endpoint.
    pub const ANTI_SPOOF: u8 = 10;
    /// Answers ARP requests for every known IP of the network.
    pub const ARP_RESPONDER: u8 = 20;
    /// Conntrack in the source port's zone.
    pub const EGRESS_CT: u8 = 30;
    /// Egress rules of the source port.
    pub const EGRESS_RULES: u8 = 31;
    /// Destination MAC → local port (reg7) or remote endpoint (tunnel).
    pub const L2_FORWARD: u8 = 40;
    /// Conntrack in the destination port's zone.
    pub const INGRESS_CT: u8 = 50;
    /// Ingress rules of the destination port.
    pub const INGRESS_RULES: u8 = 51;
    /// reg7 → output.
    pub const OUTPUT: u8 = 60;
    /// Every table the pipeline uses.
    pub const ALL: [u8; 9] = [
        CLASSIFY,
        ANTI_SPOOF,
        ARP_RESPONDER,
        EGRESS_CT,
        EGRESS_RULES,
        L2_FORWARD,
        INGRESS_CT,
        INGRESS_RULES,
        OUTPUT,
    ];
}

/// Register holding the source port's ofport (0 = from a tunnel).
pub const REG_SRC_PORT: u8 = 6;
/// Register holding the destination port's ofport.
pub const REG_DST_PORT: u8 = 7;

const ETH_IP: u64 = 0x0800;
const ETH_ARP: u64 = 0x0806;
const PROTO_ICMP: u64 = 1;
const PROTO_TCP: u64 = 6;
const PROTO_UDP: u64 = 17;

/// One flow and the object it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFlow {
    pub owner: Owner,
    pub flow: Flow,
}

/// What the bridge should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPipeline {
    pub flows: Vec<OwnedFlow>,
    /// One kbit/s drop meter per port with QoS, keyed by meter id.
    pub meters: BTreeMap<u32, MeterMod>,
    /// Ports that got no flows, with why (e.g. no representor yet).
    pub skipped_ports: BTreeMap<String, String>,
}

impl CompiledPipeline {
    /// Number of flows per owner.
    pub fn flow_counts(&self) -> BTreeMap<Owner, usize> {
        let mut counts = BTreeMap::new();
        for f in &self.flows {
            *counts.entry(f.owner.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// Meter id of a port's QoS meter: its ofport (unique on the bridge, never 0).
pub fn meter_id(ofport: u32) -> u32 {
    ofport
}

struct Builder {
    flows: Vec<OwnedFlow>,
    seen: HashSet<(u8, u16, Match), FlowKeyHasher>,
}

impl Builder {
    fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A builder with room for about `flows` flows (grown as needed).
    fn with_capacity(flows: usize) -> Self {
        Builder {
            flows: Vec::with_capacity(flows),
            seen: HashSet::with_capacity_and_hasher(flows, FlowKeyHasher::default()),
        }
    }

    /// Adds `f` unless a flow of its key is there already.
    fn push(&mut self, f: OwnedFlow) {
        if self
            .seen
            .insert((f.flow.table, f.flow.priority, f.flow.matches.clone()))
        {
            self.flows.push(f);
        }
    }

    fn add(&mut self, owner: &Owner, table: u8, priority: u16, matches: Match, ins: Instructions) {
        // The first owner of an identical (table, priority, match) wins; a
        // second one would only overwrite it on the switch.
        if !self.seen.insert((table, priority, matches.clone())) {
            return;
        }
        self.flows.push(OwnedFlow {
            owner: owner.clone(),
            flow: Flow {
                table,
                priority,
                cookie: owner.cookie(),
                idle_timeout: 0,
                hard_timeout: 0,
                matches,
                instructions: ins,
            },
        });
    }
}

fn goto(table: u8) -> Instructions {
    Instructions {
        goto_table: Some(table),
        ..Default::default()
    }
}

fn apply_goto(actions: Vec<Action>, table: u8) -> Instructions {
    Instructions {
        apply: actions,
        goto_table: Some(table),
        ..Default::default()
    }
}

fn drop_() -> Instructions {
    Instructions::default()
}

fn ip4(a: Ipv4Addr) -> u64 {
    u64::from(u32::from(a))
}

fn prefix_mask(len: u8) -> u64 {
    if len == 0 {
        0
    } else {
        u64::from(u32::MAX << (32 - u32::from(len.min(32))))
    }
}

fn ct_zone(reg: u8) -> CtZone {
    CtZone::Field {
        field: Field::Reg(reg),
        ofs: 0,
        n_bits: 16,
    }
}

fn ct_state_is(bits: u64) -> (u64, u64) {
    (bits, bits)
}

/// One network's share of the pipeline: its tunnel-classify flow, its
/// ports' flows and meters, its endpoints' flows, and its ports that got no
/// flows. A pure function of the network's inputs ([`compile_segment`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    pub flows: Vec<OwnedFlow>,
    pub meters: BTreeMap<u32, MeterMod>,
    pub skipped_ports: BTreeMap<String, String>,
}

/// What one network's [`Segment`] is compiled from.
#[derive(Debug, Clone)]
pub struct NetworkInputs<'a> {
    pub network: &'a NetworkDesc,
    /// The network's ports, in id order.
    pub ports: Vec<&'a PortDesc>,
    /// The network's endpoints, in id order.
    pub endpoints: Vec<&'a EndpointDesc>,
    /// OpenFlow port of the tunnel port of the network's encapsulation.
    pub tunnel: Option<u32>,
}

/// `desired` split per network (by id; of two networks with one id the
/// last wins, as the API never sends two), and the ports whose network is
/// not known (in id order).
pub fn group_by_network(
    desired: &DesiredNetworking,
) -> (BTreeMap<&str, NetworkInputs<'_>>, Vec<&PortDesc>) {
    let mut groups: BTreeMap<&str, NetworkInputs<'_>> = desired
        .networks
        .iter()
        .map(|n| {
            (
                n.id.as_str(),
                NetworkInputs {
                    network: n,
                    ports: Vec::new(),
                    endpoints: Vec::new(),
                    tunnel: desired.tunnel_ofports.get(&n.encap).copied(),
                },
            )
        })
        .collect();
    let mut orphans = Vec::new();
    for p in desired.ports.iter().map(|p| &**p) {
        match groups.get_mut(p.network.as_str()) {
            Some(g) => g.ports.push(p),
            None => orphans.push(p),
        }
    }
    for e in &desired.endpoints {
        if let Some(g) = groups.get_mut(e.network.as_str()) {
            g.endpoints.push(e);
        }
    }
    for g in groups.values_mut() {
        g.ports.sort_by(|a, b| a.id.cmp(&b.id));
        g.endpoints.sort_by(|a, b| a.id.cmp(&b.id));
    }
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    (groups, orphans)
}

/// Why a port whose network is not known gets no flows.
pub fn unknown_network(p: &PortDesc) -> String {
    format!("network {:?} is not known", p.network)
}

/// The constant part of the pipeline, owned by [`Owner::pipeline`]: every
/// table drops what no rule admits (fail_mode=secure has no NORMAL fallback
/// either), conntrack dispatch, established traffic. ARP the responder does
/// not answer (replies, unicast) goes on; it is added before the drops
/// because the first flow of a key wins.
pub fn skeleton() -> Vec<OwnedFlow> {
    let mut b = Builder::new();
    let base = Owner::pipeline();
    b.add(
        &base,
        table::ARP_RESPONDER,
        0,
        Match::new(),
        goto(table::EGRESS_CT),
    );
    for t in table::ALL {
        b.add(&base, t, 0, Match::new(), drop_());
    }
    let ip = Match::new().with(Field::EthType, ETH_IP);
    for dir in [&EGRESS, &INGRESS] {
        dir.add_ct(&mut b, &base, &ip);
    }
    for dir in [&EGRESS, &INGRESS] {
        dir.add_established(&mut b, &base, &ip);
    }
    b.flows
}

/// Compiles `desired` into the complete flow set of the bridge: the
/// [`skeleton`] and one [`compile_segment`] per network, with the first
/// flow of each (table, priority, match) kept across segments too. See
/// README.md ("The agent's own share") for why, with the unique
/// VNIs and ofports the API guarantees, no flow of one segment ever has the
/// key of another's, so the segments compiled apart add up to this.
pub fn compile(desired: &DesiredNetworking) -> CompiledPipeline {
    let mut b = Builder::new();
    let mut meters = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    for f in skeleton() {
        b.push(f);
    }
    let (groups, orphans) = group_by_network(desired);
    for g in groups.values() {
        let seg = compile_segment(g.network, &g.ports, &g.endpoints, g.tunnel);
        for f in seg.flows {
            b.push(f);
        }
        meters.extend(seg.meters);
        skipped.extend(seg.skipped_ports);
    }
    for p in orphans {
        skipped.insert(p.id.clone(), unknown_network(p));
    }
    CompiledPipeline {
        flows: b.flows,
        meters,
        skipped_ports: skipped,
    }
}

/// Compiles one network: `ports` and `endpoints` are the network's, in id
/// order; `tunnel` is the ofport of the tunnel port of its encapsulation.
pub fn compile_segment(
    net: &NetworkDesc,
    ports: &[&PortDesc],
    endpoints: &[&EndpointDesc],
    tunnel: Option<u32>,
) -> Segment {
    // Room for each port's flows (a few each and one per rule, more for a
    // rule with a port range) and each endpoint's: one allocation, not a
    // dozen as the lists double.
    let rules: usize = ports
        .iter()
        .map(|p| p.security.ingress.len() + p.security.egress.as_ref().map_or(0, Vec::len))
        .sum();
    let mut b = Builder::with_capacity(8 * (ports.len() + endpoints.len()) + rules + 8);
    let mut meters = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    let tunnel = tunnel.filter(|_| net.encap != Encap::Local);

    // Tunnel ingress, step 1: a packet from a tunnel with the network's VNI
    // is tagged with that network and goes to anti-spoofing, where only the
    // network's endpoints (their VTEP, MAC and IPs) get through. The VNI
    // alone proves nothing: anyone on the underlay can send it.
    if let Some(tun) = tunnel {
        b.add(
            &Owner::new(OwnerKind::Network, &net.id),
            table::CLASSIFY,
            100,
            Match::new()
                .with(Field::InPort, u64::from(tun))
                .with(Field::TunnelId, u64::from(net.vni)),
            Instructions {
                apply: vec![Action::set_field(Field::Reg(REG_SRC_PORT), 0)],
                write_metadata: Some(WriteMetadata {
                    value: u64::from(net.vni),
                    mask: u64::MAX,
                }),
                goto_table: Some(table::ANTI_SPOOF),
                ..Default::default()
            },
        );
    }

    for p in ports {
        let Some(ofport) = p.ofport else {
            skipped.insert(
                p.id.clone(),
                "the function's representor is not on the bridge yet".to_string(),
            );
            continue;
        };
        let owner = Owner::new(OwnerKind::Port, &p.id);
        let vni = u64::from(net.vni);
        let of = u64::from(ofport);
        let pmac = mac(p.mac);

        // Classification (and the QoS meter on what the function sends).
        let mut ins = Instructions {
            apply: vec![Action::set_field(Field::Reg(REG_SRC_PORT), of)],
            write_metadata: Some(WriteMetadata {
                value: vni,
                mask: u64::MAX,
            }),
            goto_table: Some(table::ANTI_SPOOF),
            ..Default::default()
        };
        if let Some(q) = p.qos {
            let id = meter_id(ofport);
            meters.insert(
                id,
                MeterMod::drop_kbps(MeterCommand::Add, id, q.max_rate_kbps, q.burst_kbits),
            );
            ins.meter = Some(id);
        }
        b.add(
            &owner,
            table::CLASSIFY,
            100,
            Match::new().with(Field::InPort, of),
            ins,
        );

        // Anti-spoofing: only its MAC and IPs, only ARP that tells the truth.
        let from_port = Match::new()
            .with(Field::InPort, of)
            .with(Field::EthSrc, pmac);
        for a in &p.ips {
            let ip = from_port
                .clone()
                .with(Field::EthType, ETH_IP)
                .with(Field::Ipv4Src, ip4(*a));
            let arp = from_port
                .clone()
                .with(Field::EthType, ETH_ARP)
                .with(Field::ArpSpa, ip4(*a))
                .with(Field::ArpSha, pmac);
            for m in [ip, arp] {
                b.add(
                    &owner,
                    table::ANTI_SPOOF,
                    100,
                    m,
                    goto(table::ARP_RESPONDER),
                );
            }
        }

        // Egress rules (source zone), committed on the way out.
        let egress_rules: Vec<RuleDesc> = match &p.security.egress {
            None => vec![RuleDesc {
                protocol: RuleProtocol::Any,
                cidr: None,
                ports: None,
            }],
            Some(rules) => rules.clone(),
        };
        EGRESS.add_rules(&mut b, &owner, of, &egress_rules);

        // L2: this port's MAC in its network.
        l2_forward(
            &mut b,
            &owner,
            vni,
            pmac,
            apply_goto(
                vec![Action::set_field(Field::Reg(REG_DST_PORT), of)],
                table::INGRESS_CT,
            ),
        );

        // Ingress rules (destination zone).
        INGRESS.add_rules(&mut b, &owner, of, &p.security.ingress);

        b.add(
            &owner,
            table::OUTPUT,
            100,
            Match::new().with(Field::Reg(REG_DST_PORT), of),
            Instructions::apply(vec![Action::output(ofport)]),
        );

        for a in &p.ips {
            arp_responder(&mut b, &owner, vni, pmac, *a);
        }
    }

    // Endpoints get flows only through the tunnel port.
    let Some(tun) = tunnel else {
        return Segment {
            flows: b.flows,
            meters,
            skipped_ports: skipped,
        };
    };
    for e in endpoints {
        // An endpoint of another tenant, or without a real underlay
        // address, never speaks for this network (the API refuses both;
        // this keeps the compiler safe on its own).
        if e.tenant != net.tenant || e.vtep.is_unspecified() || e.vtep.is_broadcast() {
            continue;
        }
        let owner = Owner::new(OwnerKind::Endpoint, &e.id);
        let vni = u64::from(net.vni);
        let emac = mac(e.mac);
        // Tunnel ingress, step 2 (anti-spoofing of remote endpoints): from
        // the endpoint's VTEP, only its MAC and IPs enter, straight to L2
        // forwarding (the sending DPU already ran its egress rules).
        for a in &e.ips {
            b.add(
                &owner,
                table::ANTI_SPOOF,
                100,
                Match::new()
                    .with(Field::InPort, u64::from(tun))
                    .with(Field::EthSrc, emac)
                    .with(Field::EthType, ETH_IP)
                    .with(Field::Ipv4Src, ip4(*a))
                    .with(Field::TunIpv4Src, ip4(e.vtep))
                    .with(Field::Metadata, vni),
                goto(table::L2_FORWARD),
            );
        }
        l2_forward(
            &mut b,
            &owner,
            vni,
            emac,
            Instructions::apply(vec![
                Action::set_field(Field::TunnelId, vni),
                Action::set_field(Field::TunIpv4Dst, ip4(e.vtep)),
                Action::output(tun),
            ]),
        );
        for a in &e.ips {
            arp_responder(&mut b, &owner, vni, emac, *a);
        }
    }

    Segment {
        flows: b.flows,
        meters,
        skipped_ports: skipped,
    }
}

/// Answers "who has `ip`" in network `vni` with `hw`, straight back out of
/// the asking port, so ARP is never flooded.
/// One direction of the security stage: conntrack, then the port's rules.
struct SecurityDirection {
    /// The table sending IP packets through conntrack.
    ct_table: u8,
    /// The table holding the rules.
    rules_table: u8,
    /// The field a rule's CIDR matches: the remote end of the connection.
    peer: Field,
    /// The register holding the port's ofport; its value is also the
    /// conntrack zone the connection is committed in.
    port_reg: u8,
    /// Where an admitted packet goes next.
    next: u8,
}

/// From a port (source zone, `REG_SRC_PORT`): rules on the destination.
const EGRESS: SecurityDirection = SecurityDirection {
    ct_table: table::EGRESS_CT,
    rules_table: table::EGRESS_RULES,
    peer: Field::Ipv4Dst,
    port_reg: REG_SRC_PORT,
    next: table::L2_FORWARD,
};

/// To a port (destination zone, `REG_DST_PORT`): rules on the source.
const INGRESS: SecurityDirection = SecurityDirection {
    ct_table: table::INGRESS_CT,
    rules_table: table::INGRESS_RULES,
    peer: Field::Ipv4Src,
    port_reg: REG_DST_PORT,
    next: table::OUTPUT,
};

impl SecurityDirection {
    /// IP (`ip`) goes through conntrack in the port's zone and on to the
    /// rules; anything else straight to `next`.
    fn add_ct(&self, b: &mut Builder, base: &Owner, ip: &Match) {
        b.add(
            base,
            self.ct_table,
            100,
            ip.clone(),
            Instructions::apply(vec![Action::Ct(Ct {
                zone: ct_zone(self.port_reg),
                table: Some(self.rules_table),
                ..Ct::default()
            })]),
        );
        b.add(base, self.ct_table, 50, Match::new(), goto(self.next));
    }

    /// Before any rule: invalid connections are dropped, established and
    /// related ones go on to `next`.
    fn add_established(&self, b: &mut Builder, base: &Owner, ip: &Match) {
        let (v, m) = ct_state_is(ct_state::INV | ct_state::TRK);
        b.add(
            base,
            self.rules_table,
            200,
            ip.clone().with_masked(Field::CtState, v, m),
            drop_(),
        );
        for bit in [ct_state::EST, ct_state::REL] {
            let (v, m) = ct_state_is(bit | ct_state::TRK);
            b.add(
                base,
                self.rules_table,
                190,
                ip.clone().with_masked(Field::CtState, v, m),
                goto(self.next),
            );
        }
    }

    /// A flow per match of each rule: a new connection of port `of` that the
    /// rule admits is committed in the port's zone and goes on to `next`.
    fn add_rules(&self, b: &mut Builder, owner: &Owner, of: u64, rules: &[RuleDesc]) {
        let commit = Action::Ct(Ct {
            commit: true,
            zone: ct_zone(self.port_reg),
            ..Ct::default()
        });
        let new = ct_state::NEW | ct_state::TRK;
        for rule in rules {
            for m in rule_matches(rule, self.peer) {
                b.add(
                    owner,
                    self.rules_table,
                    100,
                    m.with(Field::Reg(self.port_reg), of)
                        .with_masked(Field::CtState, new, new),
                    apply_goto(vec![commit.clone()], self.next),
                );
            }
        }
    }
}

/// L2 forwarding: what `ins` does with frames to `mac` in network `vni`
/// (a local port's or a remote endpoint's MAC).
fn l2_forward(b: &mut Builder, owner: &Owner, vni: u64, mac: u64, ins: Instructions) {
    b.add(
        owner,
        table::L2_FORWARD,
        100,
        Match::new()
            .with(Field::Metadata, vni)
            .with(Field::EthDst, mac),
        ins,
    );
}

fn arp_responder(b: &mut Builder, owner: &Owner, vni: u64, hw: u64, ip: Ipv4Addr) {
    b.add(
        owner,
        table::ARP_RESPONDER,
        100,
        Match::new()
            .with(Field::Metadata, vni)
            .with(Field::EthType, ETH_ARP)
            .with(Field::ArpOp, 1)
            .with(Field::ArpTpa, ip4(ip)),
        Instructions::apply(vec![
            Action::Move(RegMove::whole(Field::EthSrc, Field::EthDst)),
            Action::set_field(Field::EthSrc, hw),
            Action::set_field(Field::ArpOp, 2),
            Action::Move(RegMove::whole(Field::ArpSha, Field::ArpTha)),
            Action::Move(RegMove::whole(Field::ArpSpa, Field::ArpTpa)),
            Action::set_field(Field::ArpSha, hw),
            Action::set_field(Field::ArpSpa, ip4(ip)),
            Action::output(ofp_port::IN_PORT),
        ]),
    );
}

/// The matches (IPv4 only) one allow rule stands for; `peer` is the field the
/// rule's CIDR applies to. A port range becomes one match per mask.
fn rule_matches(rule: &RuleDesc, peer: Field) -> Vec<Match> {
    let mut m = Match::new().with(Field::EthType, ETH_IP);
    if let Some((addr, len)) = rule.cidr {
        m = m.with_masked(peer, ip4(addr), prefix_mask(len));
    }
    let (proto, dst_field) = match rule.protocol {
        RuleProtocol::Any => return vec![m],
        RuleProtocol::Icmp => return vec![m.with(Field::IpProto, PROTO_ICMP)],
        RuleProtocol::Tcp => (PROTO_TCP, Field::TcpDst),
        RuleProtocol::Udp => (PROTO_UDP, Field::UdpDst),
    };
    let m = m.with(Field::IpProto, proto);
    match rule.ports {
        None => vec![m],
        Some((lo, hi)) => port_range_masks(lo, hi)
            .into_iter()
            .map(|(v, mask)| {
                m.clone()
                    .with_masked(dst_field, u64::from(v), u64::from(mask))
            })
            .collect(),
    }
}
