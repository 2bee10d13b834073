//! Actions (inside APPLY_ACTIONS): OpenFlow OUTPUT, SET_FIELD, PUSH_VLAN,
//! POP_VLAN, DEC_NW_TTL, and the Nicira extensions RESUBMIT_TABLE, CT (without
//! nested actions or NAT) and REG_MOVE. Anything else decodes to
//! [`Action::Raw`] and is re-encoded verbatim.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::header::{NX_EXPERIMENTER, Reader, pad_to_8, patch_len16};
use super::oxm::{Field, put_oxm};

const OFPAT_OUTPUT: u16 = 0;
const OFPAT_PUSH_VLAN: u16 = 17;
const OFPAT_POP_VLAN: u16 = 18;
const OFPAT_DEC_NW_TTL: u16 = 24;
const OFPAT_SET_FIELD: u16 = 25;
const OFPAT_EXPERIMENTER: u16 = 0xffff;

const NXAST_REG_MOVE: u16 = 6;
const NXAST_RESUBMIT_TABLE: u16 = 14;
const NXAST_CT: u16 = 35;

const NX_CT_F_COMMIT: u16 = 1;
const NX_CT_F_FORCE: u16 = 2;
const NX_CT_RECIRC_NONE: u8 = 0xff;

/// Reserved 32-bit port numbers (`ofp_port_no`).
pub mod port {
    pub const MAX: u32 = 0xffff_ff00;
    pub const IN_PORT: u32 = 0xffff_fff8;
    pub const TABLE: u32 = 0xffff_fff9;
    pub const NORMAL: u32 = 0xffff_fffa;
    pub const FLOOD: u32 = 0xffff_fffb;
    pub const ALL: u32 = 0xffff_fffc;
    pub const CONTROLLER: u32 = 0xffff_fffd;
    pub const LOCAL: u32 = 0xffff_fffe;
    pub const ANY: u32 = 0xffff_ffff;
    /// `OFPP_IN_PORT` in the 16-bit form Nicira actions use.
    pub const IN_PORT_16: u16 = 0xfff8;
    /// Names ovs-ofctl uses for reserved ports.
    pub const NAMES: [(&str, u32); 8] = [
        ("IN_PORT", IN_PORT),
        ("TABLE", TABLE),
        ("NORMAL", NORMAL),
        ("FLOOD", FLOOD),
        ("ALL", ALL),
        ("CONTROLLER", CONTROLLER),
        ("LOCAL", LOCAL),
        ("ANY", ANY),
    ];
}

/// Zone of a `ct` action: an immediate value or a bit range of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtZone {
    Imm(u16),
    Field { field: Field, ofs: u16, n_bits: u16 },
}

/// Nicira `ct(...)` (NXAST_CT) without nested actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ct {
    pub commit: bool,
    pub force: bool,
    pub zone: CtZone,
    /// Recirculate to this table after conntrack; `None` = no recirculation.
    pub table: Option<u8>,
    /// Application-layer gateway port (0 = none).
    pub alg: u16,
}

impl Default for Ct {
    fn default() -> Self {
        Ct {
            commit: false,
            force: false,
            zone: CtZone::Imm(0),
            table: None,
            alg: 0,
        }
    }
}

/// Nicira `move:SRC[a..b]->DST[c..d]` (NXAST_REG_MOVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegMove {
    pub src: Field,
    pub src_ofs: u16,
    pub dst: Field,
    pub dst_ofs: u16,
    pub n_bits: u16,
}

impl RegMove {
    /// Moves a whole field into another of the same width.
    pub fn whole(src: Field, dst: Field) -> Self {
        RegMove {
            src,
            src_ofs: 0,
            dst,
            dst_ofs: 0,
            n_bits: src.bits().min(dst.bits()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `output:PORT`; `max_len` matters only for `CONTROLLER`.
    Output {
        port: u32,
        max_len: u16,
    },
    SetField {
        field: Field,
        value: u64,
    },
    PushVlan {
        ethertype: u16,
    },
    PopVlan,
    DecTtl,
    /// `resubmit(PORT,TABLE)`; `port` is 16-bit, [`port::IN_PORT_16`] for `resubmit(,T)`.
    Resubmit {
        port: u16,
        table: u8,
    },
    Ct(Ct),
    Move(RegMove),
    /// An action outside the supported subset, kept verbatim (whole TLV).
    Raw(Bytes),
}

impl Action {
    pub fn output(port: u32) -> Self {
        let max_len = if port == port::CONTROLLER { 0xffff } else { 0 };
        Action::Output { port, max_len }
    }

    /// `resubmit(,table)`.
    pub fn resubmit(table: u8) -> Self {
        Action::Resubmit {
            port: port::IN_PORT_16,
            table,
        }
    }

    pub fn set_field(field: Field, value: u64) -> Self {
        Action::SetField {
            field,
            value: value & field.full_mask(),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        match self {
            Action::Output { port, max_len } => {
                out.put_u16(OFPAT_OUTPUT);
                out.put_u16(16);
                out.put_u32(*port);
                out.put_u16(*max_len);
                out.put_bytes(0, 6);
            }
            Action::SetField { field, value } => {
                out.put_u16(OFPAT_SET_FIELD);
                out.put_u16(0);
                put_oxm(out, *field, *value, None)?;
                pad_to_8(out, start);
                patch_len16(out, start);
            }
            Action::PushVlan { ethertype } => {
                out.put_u16(OFPAT_PUSH_VLAN);
                out.put_u16(8);
                out.put_u16(*ethertype);
                out.put_u16(0);
            }
            Action::PopVlan => {
                out.put_u16(OFPAT_POP_VLAN);
                out.put_u16(8);
                out.put_u32(0);
            }
            Action::DecTtl => {
                out.put_u16(OFPAT_DEC_NW_TTL);
                out.put_u16(8);
                out.put_u32(0);
            }
            Action::Resubmit { port, table } => {
                put_nx_header(out, 16, NXAST_RESUBMIT_TABLE);
                out.put_u16(*port);
                out.put_u8(*table);
                out.put_bytes(0, 3);
            }
            Action::Ct(ct) => {
                put_nx_header(out, 24, NXAST_CT);
                let mut flags = 0;
                if ct.commit {
                    flags |= NX_CT_F_COMMIT;
                }
                if ct.force {
                    flags |= NX_CT_F_FORCE;
                }
                out.put_u16(flags);
                match ct.zone {
                    CtZone::Imm(zone) => {
                        out.put_u32(0);
                        out.put_u16(zone);
                    }
                    CtZone::Field { field, ofs, n_bits } => {
                        out.put_u32(field.move_header()?);
                        out.put_u16((ofs << 6) | (n_bits.wrapping_sub(1) & 0x3f));
                    }
                }
                out.put_u8(ct.table.unwrap_or(NX_CT_RECIRC_NONE));
                out.put_bytes(0, 3);
                out.put_u16(ct.alg);
            }
            Action::Move(m) => {
                put_nx_header(out, 24, NXAST_REG_MOVE);
                out.put_u16(m.n_bits);
                out.put_u16(m.src_ofs);
                out.put_u16(m.dst_ofs);
                out.put_u32(m.src.move_header()?);
                out.put_u32(m.dst.move_header()?);
            }
            Action::Raw(bytes) => out.put_slice(bytes),
        }
        Ok(())
    }

    /// Decodes one action TLV from the front of `r`.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = usize::from(r.peek_u16(2)?);
        if len < 8 || !len.is_multiple_of(8) {
            return Err(DecodeError::BadLength {
                what: "action",
                length: len,
            });
        }
        let tlv = r.bytes(len)?;
        Ok(decode_known(tlv).unwrap_or_else(|| Action::Raw(Bytes::copy_from_slice(tlv))))
    }
}

fn put_nx_header(out: &mut BytesMut, len: u16, subtype: u16) {
    out.put_u16(OFPAT_EXPERIMENTER);
    out.put_u16(len);
    out.put_u32(NX_EXPERIMENTER);
    out.put_u16(subtype);
}

/// Decodes a supported action; `None` means "keep it raw". Canonical forms only:
/// an encoding we would not produce ourselves stays raw, so re-encoding is exact.
fn decode_known(tlv: &[u8]) -> Option<Action> {
    let mut r = Reader::new(tlv, "action");
    let action_type = r.u16().ok()?;
    let len = r.u16().ok()?;
    let action = match (action_type, len) {
        (OFPAT_OUTPUT, 16) => Action::Output {
            port: r.u32().ok()?,
            max_len: r.u16().ok()?,
        },
        (OFPAT_PUSH_VLAN, 8) => Action::PushVlan {
            ethertype: r.u16().ok()?,
        },
        (OFPAT_POP_VLAN, 8) => Action::PopVlan,
        (OFPAT_DEC_NW_TTL, 8) => Action::DecTtl,
        (OFPAT_SET_FIELD, _) => {
            let (field, value) = super::oxm::decode_set_field(r.rest())?;
            Action::SetField { field, value }
        }
        (OFPAT_EXPERIMENTER, _) => {
            if r.u32().ok()? != NX_EXPERIMENTER {
                return None;
            }
            match (r.u16().ok()?, len) {
                (NXAST_RESUBMIT_TABLE, 16) => {
                    let port = r.u16().ok()?;
                    let table = r.u8().ok()?;
                    Action::Resubmit { port, table }
                }
                (NXAST_CT, 24) => {
                    let flags = r.u16().ok()?;
                    if flags & !(NX_CT_F_COMMIT | NX_CT_F_FORCE) != 0 {
                        return None;
                    }
                    let zone_src = r.u32().ok()?;
                    let zone_val = r.u16().ok()?;
                    let zone = if zone_src == 0 {
                        CtZone::Imm(zone_val)
                    } else {
                        let field = Field::from_header_u32(zone_src)?;
                        if zone_src != field.move_header().ok()? {
                            return None;
                        }
                        CtZone::Field {
                            field,
                            ofs: zone_val >> 6,
                            n_bits: (zone_val & 0x3f) + 1,
                        }
                    };
                    let recirc = r.u8().ok()?;
                    r.skip(3).ok()?;
                    let alg = r.u16().ok()?;
                    Action::Ct(Ct {
                        commit: flags & NX_CT_F_COMMIT != 0,
                        force: flags & NX_CT_F_FORCE != 0,
                        zone,
                        table: (recirc != NX_CT_RECIRC_NONE).then_some(recirc),
                        alg,
                    })
                }
                (NXAST_REG_MOVE, 24) => {
                    let n_bits = r.u16().ok()?;
                    let src_ofs = r.u16().ok()?;
                    let dst_ofs = r.u16().ok()?;
                    let src_h = r.u32().ok()?;
                    let dst_h = r.u32().ok()?;
                    let src = Field::from_header_u32(src_h)?;
                    let dst = Field::from_header_u32(dst_h)?;
                    if src.move_header().ok()? != src_h || dst.move_header().ok()? != dst_h {
                        return None;
                    }
                    Action::Move(RegMove {
                        src,
                        src_ofs,
                        dst,
                        dst_ofs,
                        n_bits,
                    })
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    // Reject what we would encode differently (non-zero padding, odd max_len, ...).
    let mut check = BytesMut::new();
    action.encode(&mut check).ok()?;
    (check[..] == tlv[..]).then_some(action)
}

/// Encodes a list of actions back to back.
pub(crate) fn encode_actions(actions: &[Action], out: &mut BytesMut) -> Result<(), EncodeError> {
    actions.iter().try_for_each(|a| a.encode(out))
}

/// Decodes actions until `buf` is exhausted.
pub(crate) fn decode_actions(buf: &[u8]) -> Result<Vec<Action>, DecodeError> {
    let mut r = Reader::new(buf, "actions");
    let mut actions = Vec::new();
    while !r.is_empty() {
        actions.push(Action::decode(&mut r)?);
    }
    Ok(actions)
}
