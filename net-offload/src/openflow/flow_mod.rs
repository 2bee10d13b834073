//! FLOW_MOD (`ofp11_flow_mod` + match + instructions) and [`Flow`], the part of a
//! flow that identifies and defines it. A [`Flow`] is what the pipeline compiler
//! produces and what a flow-stats dump decodes back, so desired and observed
//! flows compare with `==`.

use bytes::{BufMut, BytesMut};

use super::action::port;
use super::error::{DecodeError, EncodeError};
use super::header::{Reader, Version};
use super::instruction::Instructions;
use super::oxm::Match;

/// `OFP_NO_BUFFER`.
pub const NO_BUFFER: u32 = 0xffff_ffff;
/// `OFPG_ANY`.
pub const GROUP_ANY: u32 = 0xffff_ffff;
/// `OFPTT_ALL`: all tables (delete and stats requests).
pub const TABLE_ALL: u8 = 0xff;

/// `OFPFF_*` flow-mod flags.
pub mod flow_flags {
    pub const SEND_FLOW_REM: u16 = 1;
    pub const CHECK_OVERLAP: u16 = 2;
    pub const RESET_COUNTS: u16 = 4;
    pub const NO_PKT_COUNTS: u16 = 8;
    pub const NO_BYT_COUNTS: u16 = 16;
}

/// One flow: where it lives, what it matches and what it does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flow {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub matches: Match,
    pub instructions: Instructions,
}

impl Flow {
    /// Reads the match and the instructions, which end a FLOW_MOD and a
    /// flow-stats entry alike (the decoders read the other fields where
    /// their layouts put them).
    pub(crate) fn decode_rules(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        self.matches = Match::decode(r)?;
        self.instructions = Instructions::decode(r.rest())?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowModCommand {
    Add,
    Modify,
    ModifyStrict,
    Delete,
    DeleteStrict,
}

impl FlowModCommand {
    fn wire(self) -> u8 {
        match self {
            FlowModCommand::Add => 0,
            FlowModCommand::Modify => 1,
            FlowModCommand::ModifyStrict => 2,
            FlowModCommand::Delete => 3,
            FlowModCommand::DeleteStrict => 4,
        }
    }

    fn from_wire(value: u8) -> Result<Self, DecodeError> {
        Ok(match value {
            0 => FlowModCommand::Add,
            1 => FlowModCommand::Modify,
            2 => FlowModCommand::ModifyStrict,
            3 => FlowModCommand::Delete,
            4 => FlowModCommand::DeleteStrict,
            other => {
                return Err(DecodeError::Unsupported {
                    what: "flow_mod command",
                    value: other.into(),
                });
            }
        })
    }
}

/// A FLOW_MOD message body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowMod {
    pub command: FlowModCommand,
    pub flow: Flow,
    pub cookie_mask: u64,
    pub buffer_id: u32,
    pub out_port: u32,
    pub out_group: u32,
    /// `OFPFF_*`, see [`flow_flags`].
    pub flags: u16,
    /// OpenFlow 1.4 only; encoded as padding in 1.3.
    pub importance: u16,
}

impl FlowMod {
    fn new(command: FlowModCommand, flow: Flow) -> Self {
        FlowMod {
            command,
            flow,
            cookie_mask: 0,
            buffer_id: NO_BUFFER,
            out_port: port::ANY,
            out_group: GROUP_ANY,
            flags: 0,
            importance: 0,
        }
    }

    /// Adds `flow` (replacing an identical match at the same priority).
    pub fn add(flow: Flow) -> Self {
        Self::new(FlowModCommand::Add, flow)
    }

    /// Replaces the instructions of the flow with exactly this table, priority and match.
    pub fn modify_strict(flow: Flow) -> Self {
        Self::new(FlowModCommand::ModifyStrict, flow)
    }

    /// Deletes the flow with exactly this table, priority and match.
    pub fn delete_strict(table: u8, priority: u16, matches: Match) -> Self {
        Self::new(
            FlowModCommand::DeleteStrict,
            Flow {
                table,
                priority,
                matches,
                ..Flow::default()
            },
        )
    }

    /// Deletes every flow in `table` (`None` = all tables) whose cookie matches
    /// `cookie` under `cookie_mask`.
    pub fn delete_by_cookie(table: Option<u8>, cookie: u64, cookie_mask: u64) -> Self {
        // Priority is ignored by a non-strict delete; 0x8000 is what ovs-ofctl sends.
        let flow = Flow {
            table: table.unwrap_or(TABLE_ALL),
            priority: 0x8000,
            cookie,
            ..Flow::default()
        };
        FlowMod {
            cookie_mask,
            ..Self::new(FlowModCommand::Delete, flow)
        }
    }

    /// Encodes the body (after the header).
    pub(crate) fn encode_body(
        &self,
        version: Version,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let f = &self.flow;
        out.put_u64(f.cookie);
        out.put_u64(self.cookie_mask);
        out.put_u8(f.table);
        out.put_u8(self.command.wire());
        out.put_u16(f.idle_timeout);
        out.put_u16(f.hard_timeout);
        out.put_u16(f.priority);
        out.put_u32(self.buffer_id);
        out.put_u32(self.out_port);
        out.put_u32(self.out_group);
        out.put_u16(self.flags);
        out.put_u16(version.importance(self.importance));
        f.matches.encode(out)?;
        f.instructions.encode(out)
    }

    pub(crate) fn decode_body(version: Version, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "flow_mod");
        let mut flow = Flow {
            cookie: r.u64()?,
            ..Flow::default()
        };
        let cookie_mask = r.u64()?;
        flow.table = r.u8()?;
        let command = FlowModCommand::from_wire(r.u8()?)?;
        flow.idle_timeout = r.u16()?;
        flow.hard_timeout = r.u16()?;
        flow.priority = r.u16()?;
        let buffer_id = r.u32()?;
        let out_port = r.u32()?;
        let out_group = r.u32()?;
        let flags = r.u16()?;
        let importance = version.importance(r.u16()?);
        flow.decode_rules(&mut r)?;
        Ok(FlowMod {
            command,
            flow,
            cookie_mask,
            buffer_id,
            out_port,
            out_group,
            flags,
            importance,
        })
    }
}
