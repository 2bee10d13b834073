//! Printing flows, flow mods, flow entries, matches, actions and
//! instructions in ovs-ofctl flow syntax (`Display`).

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use crate::openflow::action::{Action, CtZone, port};
use crate::openflow::flow_mod::{Flow, FlowMod, FlowModCommand, TABLE_ALL};
use crate::openflow::instruction::Instructions;
use crate::openflow::multipart::FlowEntry;
use crate::openflow::oxm::{Field, FieldMatch, Match, ValueFormat, ct_state, mac_octets};

use super::{ETH_TYPE_ARP, ETH_TYPE_IP, VLAN_PRESENT, subfield_name};

fn fmt_port(f: &mut impl fmt::Write, p: u32) -> fmt::Result {
    match port::NAMES.iter().find(|(_, v)| *v == p) {
        Some((name, _)) => f.write_str(name),
        None => write!(f, "{p}"),
    }
}

fn fmt_ipv4(f: &mut impl fmt::Write, v: u64) -> fmt::Result {
    write!(f, "{}", Ipv4Addr::from(v as u32))
}

fn fmt_mac(f: &mut impl fmt::Write, v: u64) -> fmt::Result {
    let o = mac_octets(v);
    write!(
        f,
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        o[0], o[1], o[2], o[3], o[4], o[5]
    )
}

/// Writes a value (not a match) of `field`.
fn fmt_value(f: &mut impl fmt::Write, field: Field, v: u64) -> fmt::Result {
    match field.format() {
        ValueFormat::Port => fmt_port(f, v as u32),
        ValueFormat::Mac => fmt_mac(f, v),
        ValueFormat::Ipv4 => fmt_ipv4(f, v),
        ValueFormat::Hex | ValueFormat::CtState => write!(f, "{v:#x}"),
        ValueFormat::Decimal => write!(f, "{v}"),
    }
}

/// Writes `value[/mask]` of a match field.
fn fmt_field_match(f: &mut impl fmt::Write, fm: &FieldMatch) -> fmt::Result {
    let Some(mask) = fm.mask else {
        return match (fm.field, fm.field.format()) {
            (Field::EthType, _) => write!(f, "{:#06x}", fm.value),
            (_, ValueFormat::CtState) => fmt_ct_state(f, fm.value, fm.field.full_mask()),
            _ => fmt_value(f, fm.field, fm.value),
        };
    };
    match fm.field.format() {
        ValueFormat::Mac => {
            fmt_mac(f, fm.value)?;
            f.write_char('/')?;
            fmt_mac(f, mask)
        }
        ValueFormat::Ipv4 => {
            fmt_ipv4(f, fm.value)?;
            let m = mask as u32;
            if m.leading_ones() + m.trailing_zeros() == 32 {
                write!(f, "/{}", m.leading_ones())
            } else {
                f.write_char('/')?;
                fmt_ipv4(f, mask)
            }
        }
        ValueFormat::CtState if mask & !0xff == 0 => fmt_ct_state(f, fm.value, mask),
        _ => write!(f, "{:#x}/{:#x}", fm.value, mask),
    }
}

fn fmt_ct_state(f: &mut impl fmt::Write, value: u64, mask: u64) -> fmt::Result {
    if mask & !0xff != 0 {
        return write!(f, "{value:#x}/{mask:#x}");
    }
    for (name, bit) in ct_state::NAMES {
        if mask & bit != 0 {
            let sign = if value & bit != 0 { '+' } else { '-' };
            write!(f, "{sign}{name}")?;
        }
    }
    Ok(())
}

/// The name a match field has in ovs-ofctl's flow syntax.
fn match_name(field: Field, l4_implied: bool) -> String {
    use Field::*;
    match field {
        EthSrc => "dl_src".into(),
        EthDst => "dl_dst".into(),
        EthType => "dl_type".into(),
        Ipv4Src => "nw_src".into(),
        Ipv4Dst => "nw_dst".into(),
        TcpSrc | UdpSrc if l4_implied => "tp_src".into(),
        TcpDst | UdpDst if l4_implied => "tp_dst".into(),
        other => other.name(),
    }
}

/// Writes the match as comma-separated items (each preceded by `sep` except the first).
fn fmt_match_items(m: &Match, items: &mut Vec<String>) {
    let eth = m
        .get(Field::EthType)
        .filter(|f| f.mask.is_none())
        .map(|f| f.value);
    let proto = m
        .get(Field::IpProto)
        .filter(|f| f.mask.is_none())
        .map(|f| f.value);
    let (shorthand, eth_used, proto_used) = match (eth, proto) {
        (Some(ETH_TYPE_IP), Some(6)) => (Some("tcp"), true, true),
        (Some(ETH_TYPE_IP), Some(17)) => (Some("udp"), true, true),
        (Some(ETH_TYPE_IP), Some(1)) => (Some("icmp"), true, true),
        (Some(ETH_TYPE_IP), _) => (Some("ip"), true, false),
        (Some(ETH_TYPE_ARP), _) => (Some("arp"), true, false),
        _ => (None, false, false),
    };
    items.extend(shorthand.map(String::from));
    for fm in m.fields() {
        let mut s = String::new();
        match fm.field {
            Field::EthType if eth_used => continue,
            Field::IpProto if proto_used => continue,
            Field::VlanVid => {
                match (fm.value, fm.mask) {
                    (v, None) if v & VLAN_PRESENT != 0 => {
                        let _ = write!(s, "dl_vlan={}", v & 0xfff);
                    }
                    (0, None) => s.push_str("vlan_tci=0x0000"),
                    (v, Some(m)) => {
                        let _ = write!(s, "vlan_tci={v:#06x}/{m:#06x}");
                    }
                    (v, None) => {
                        let _ = write!(s, "vlan_vid={v:#06x}");
                    }
                }
                items.push(s);
                continue;
            }
            _ => {}
        }
        let l4_implied = match fm.field {
            Field::TcpSrc | Field::TcpDst => proto_used && proto == Some(6),
            Field::UdpSrc | Field::UdpDst => proto_used && proto == Some(17),
            _ => false,
        };
        s.push_str(&match_name(fm.field, l4_implied));
        s.push('=');
        let _ = fmt_field_match(&mut s, fm);
        items.push(s);
    }
    for raw in m.raw() {
        let mut s = format!("oxm={:#010x}:", raw.header);
        push_hex(&mut s, &raw.payload);
        items.push(s);
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        fmt_match_items(self, &mut items);
        f.write_str(&items.join(","))
    }
}

fn fmt_subfield(f: &mut impl fmt::Write, field: Field, ofs: u16, n_bits: u16) -> fmt::Result {
    f.write_str(&subfield_name(field))?;
    if ofs == 0 && n_bits == field.bits() {
        f.write_str("[]")
    } else if n_bits == 1 {
        write!(f, "[{ofs}]")
    } else {
        // n_bits 0 is no valid subfield, but a decoded message may carry
        // it: printed as the empty range `[ofs..ofs-1]` saturated, never a
        // panic (found by the openflow_decode fuzz target).
        let last = (u32::from(ofs) + u32::from(n_bits)).saturating_sub(1);
        write!(f, "[{ofs}..{last}]")
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output { port: p, max_len } => match *p {
                port::CONTROLLER => write!(f, "CONTROLLER:{max_len}"),
                p if p >= port::MAX => fmt_port(f, p),
                p => write!(f, "output:{p}"),
            },
            Action::SetField { field, value } => {
                f.write_str("set_field:")?;
                fmt_value(f, *field, *value)?;
                write!(f, "->{}", field.name())
            }
            Action::PushVlan { ethertype } => write!(f, "push_vlan:{ethertype:#06x}"),
            Action::PopVlan => f.write_str("pop_vlan"),
            Action::DecTtl => f.write_str("dec_ttl"),
            Action::Resubmit { port: p, table } => {
                f.write_str("resubmit(")?;
                if *p != port::IN_PORT_16 {
                    write!(f, "{p}")?;
                }
                f.write_char(',')?;
                if *table != TABLE_ALL {
                    write!(f, "{table}")?;
                }
                f.write_char(')')
            }
            Action::Ct(ct) => {
                let mut args = Vec::new();
                if ct.commit {
                    args.push("commit".to_string());
                }
                if ct.force {
                    args.push("force".to_string());
                }
                if let Some(t) = ct.table {
                    args.push(format!("table={t}"));
                }
                match ct.zone {
                    CtZone::Imm(0) => {}
                    CtZone::Imm(z) => args.push(format!("zone={z}")),
                    CtZone::Field { field, ofs, n_bits } => {
                        let mut s = "zone=".to_string();
                        fmt_subfield(&mut s, field, ofs, n_bits)?;
                        args.push(s);
                    }
                }
                match ct.alg {
                    0 => {}
                    21 => args.push("alg=ftp".into()),
                    69 => args.push("alg=tftp".into()),
                    n => args.push(format!("alg={n}")),
                }
                if args.is_empty() {
                    f.write_str("ct")
                } else {
                    write!(f, "ct({})", args.join(","))
                }
            }
            Action::Move(m) => {
                f.write_str("move:")?;
                fmt_subfield(f, m.src, m.src_ofs, m.n_bits)?;
                f.write_str("->")?;
                fmt_subfield(f, m.dst, m.dst_ofs, m.n_bits)
            }
            Action::Raw(bytes) => {
                let mut s = String::from("raw:");
                push_hex(&mut s, bytes);
                f.write_str(&s)
            }
        }
    }
}

impl fmt::Display for Instructions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_drop() {
            return f.write_str("drop");
        }
        let mut items: Vec<String> = Vec::new();
        if let Some(m) = self.meter {
            items.push(format!("meter:{m}"));
        }
        items.extend(self.apply.iter().map(|a| a.to_string()));
        for raw in &self.raw {
            let mut s = String::from("raw_instruction:");
            push_hex(&mut s, raw);
            items.push(s);
        }
        if let Some(wm) = self.write_metadata {
            if wm.mask == u64::MAX {
                items.push(format!("write_metadata:{:#x}", wm.value));
            } else {
                items.push(format!("write_metadata:{:#x}/{:#x}", wm.value, wm.mask));
            }
        }
        if let Some(t) = self.goto_table {
            items.push(format!("goto_table:{t}"));
        }
        f.write_str(&items.join(","))
    }
}

fn flow_items(flow: &Flow, items: &mut Vec<String>) {
    if flow.idle_timeout != 0 {
        items.push(format!("idle_timeout={}", flow.idle_timeout));
    }
    if flow.hard_timeout != 0 {
        items.push(format!("hard_timeout={}", flow.hard_timeout));
    }
    fmt_match_items(&flow.matches, items);
}

/// `table=T, priority=P, cookie=0xC, MATCH..., actions=...` (ovs-ofctl add-flow syntax).
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = vec![
            format!("table={}", self.table),
            format!("priority={}", self.priority),
            format!("cookie={:#x}", self.cookie),
        ];
        flow_items(self, &mut items);
        items.push(format!("actions={}", self.instructions));
        f.write_str(&items.join(", "))
    }
}

/// The command, then the flow (`add table=...`); delete-by-cookie prints the
/// cookie mask and no actions.
impl fmt::Display for FlowMod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.flow;
        match self.command {
            FlowModCommand::Add => write!(f, "add {flow}"),
            FlowModCommand::Modify => write!(f, "modify {flow}"),
            FlowModCommand::ModifyStrict => write!(f, "modify_strict {flow}"),
            FlowModCommand::Delete | FlowModCommand::DeleteStrict => {
                let strict = self.command == FlowModCommand::DeleteStrict;
                let mut items = vec![if flow.table == TABLE_ALL {
                    "table=all".to_string()
                } else {
                    format!("table={}", flow.table)
                }];
                if strict {
                    items.push(format!("priority={}", flow.priority));
                }
                if self.cookie_mask != 0 {
                    items.push(format!("cookie={:#x}/{:#x}", flow.cookie, self.cookie_mask));
                }
                fmt_match_items(&flow.matches, &mut items);
                let verb = if strict { "delete_strict" } else { "delete" };
                write!(f, "{verb} {}", items.join(", "))
            }
        }
    }
}

/// Like one line of `ovs-ofctl dump-flows`.
impl fmt::Display for FlowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = &self.flow;
        let d = self.duration();
        write!(
            f,
            "cookie={:#x}, duration={}.{:03}s, table={}, n_packets={}, n_bytes={}, ",
            flow.cookie,
            d.as_secs(),
            d.subsec_millis(),
            flow.table,
            self.packet_count,
            self.byte_count
        )?;
        let mut items = vec![format!("priority={}", flow.priority)];
        flow_items(flow, &mut items);
        write!(f, "{} actions={}", items.join(","), flow.instructions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subfield of zero bits (invalid, but decodable from a message)
    /// prints without an arithmetic overflow: the `openflow_decode` fuzz
    /// target's crash, kept in `fuzz/seeds/openflow_decode/`.
    #[test]
    fn zero_bit_subfield_prints() {
        let mut s = String::new();
        fmt_subfield(&mut s, Field::Reg(6), 3, 0).unwrap();
        assert_eq!(s, "NXM_NX_REG6[3..2]");
    }
}
