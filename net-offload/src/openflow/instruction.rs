//! Instructions of a flow: METER, APPLY_ACTIONS, WRITE_METADATA and GOTO_TABLE,
//! held in a struct so that their order is canonical (the order OpenFlow 1.3/1.4
//! requires and OVS prints). Other instructions (WRITE_ACTIONS, CLEAR_ACTIONS,
//! experimenter) are kept verbatim in `raw`.

use bytes::{BufMut, Bytes, BytesMut};

use super::action::{Action, decode_actions, encode_actions};
use super::error::{DecodeError, EncodeError};
use super::header::{Reader, patch_len16};

const OFPIT_GOTO_TABLE: u16 = 1;
const OFPIT_WRITE_METADATA: u16 = 2;
const OFPIT_APPLY_ACTIONS: u16 = 4;
const OFPIT_METER: u16 = 6;

/// `write_metadata:VALUE/MASK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteMetadata {
    pub value: u64,
    pub mask: u64,
}

/// What a flow does. Empty `apply` means no APPLY_ACTIONS instruction; a flow
/// with no instructions at all drops (`actions=drop`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Instructions {
    pub meter: Option<u32>,
    pub apply: Vec<Action>,
    /// Unsupported instructions, whole TLVs, encoded after `apply`.
    pub raw: Vec<Bytes>,
    pub write_metadata: Option<WriteMetadata>,
    pub goto_table: Option<u8>,
}

impl Instructions {
    /// Only APPLY_ACTIONS with `actions`.
    pub fn apply(actions: Vec<Action>) -> Self {
        Instructions {
            apply: actions,
            ..Default::default()
        }
    }

    pub fn is_drop(&self) -> bool {
        *self == Instructions::default()
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        if let Some(meter) = self.meter {
            out.put_u16(OFPIT_METER);
            out.put_u16(8);
            out.put_u32(meter);
        }
        if !self.apply.is_empty() {
            let start = out.len();
            out.put_u16(OFPIT_APPLY_ACTIONS);
            out.put_u16(0);
            out.put_u32(0);
            encode_actions(&self.apply, out)?;
            patch_len16(out, start);
        }
        for raw in &self.raw {
            out.put_slice(raw);
        }
        if let Some(wm) = self.write_metadata {
            out.put_u16(OFPIT_WRITE_METADATA);
            out.put_u16(24);
            out.put_u32(0);
            out.put_u64(wm.value);
            out.put_u64(wm.mask);
        }
        if let Some(table) = self.goto_table {
            out.put_u16(OFPIT_GOTO_TABLE);
            out.put_u16(8);
            out.put_u8(table);
            out.put_bytes(0, 3);
        }
        Ok(())
    }

    /// Decodes instructions until `buf` is exhausted.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, "instructions");
        let mut ins = Instructions::default();
        let mut seen_apply = false;
        while !r.is_empty() {
            let kind = r.peek_u16(0)?;
            let len = usize::from(r.peek_u16(2)?);
            if len < 8 || !len.is_multiple_of(8) {
                return Err(DecodeError::BadLength {
                    what: "instruction",
                    length: len,
                });
            }
            let tlv = r.bytes(len)?;
            let mut t = Reader::new(&tlv[4..], "instruction");
            let dup = |what| DecodeError::Unsupported {
                what,
                value: u64::from(kind),
            };
            match (kind, len) {
                (OFPIT_METER, 8) if ins.meter.is_none() => ins.meter = Some(t.u32()?),
                (OFPIT_APPLY_ACTIONS, _) if !seen_apply => {
                    seen_apply = true;
                    t.skip(4)?;
                    ins.apply = decode_actions(t.rest())?;
                }
                (OFPIT_WRITE_METADATA, 24) if ins.write_metadata.is_none() => {
                    t.skip(4)?;
                    ins.write_metadata = Some(WriteMetadata {
                        value: t.u64()?,
                        mask: t.u64()?,
                    });
                }
                (OFPIT_GOTO_TABLE, 8) if ins.goto_table.is_none() => ins.goto_table = Some(t.u8()?),
                (
                    OFPIT_METER | OFPIT_APPLY_ACTIONS | OFPIT_WRITE_METADATA | OFPIT_GOTO_TABLE,
                    _,
                ) => {
                    return Err(dup("duplicate or malformed instruction"));
                }
                _ => ins.raw.push(Bytes::copy_from_slice(tlv)),
            }
        }
        Ok(ins)
    }
}
