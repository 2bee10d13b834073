//! MULTIPART_REQUEST/REPLY for individual flow statistics (`OFPMP_FLOW`, the
//! OpenFlow 1.3/1.4 layout `ofp11_flow_stats`). Other multipart types are
//! passed through undecoded.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::action::port;
use super::error::{DecodeError, EncodeError};
use super::flow_mod::{Flow, GROUP_ANY, TABLE_ALL};
use super::header::{Reader, Version};
use super::oxm::Match;

pub(crate) const OFPMP_FLOW: u16 = 1;
/// `OFPMP_AGGREGATE`: packet, byte and flow counts of the flows a
/// [`FlowStatsRequest`] selects, in one fixed-size reply.
pub(crate) const OFPMP_AGGREGATE: u16 = 2;
/// `OFPMPF_REPLY_MORE`: more replies with the same xid follow.
pub const REPLY_MORE: u16 = 1;

/// Which flows a flow-stats request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowStatsRequest {
    /// [`TABLE_ALL`] for every table.
    pub table: u8,
    pub out_port: u32,
    pub out_group: u32,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub matches: Match,
}

impl Default for FlowStatsRequest {
    fn default() -> Self {
        FlowStatsRequest {
            table: TABLE_ALL,
            out_port: port::ANY,
            out_group: GROUP_ANY,
            cookie: 0,
            cookie_mask: 0,
            matches: Match::new(),
        }
    }
}

impl FlowStatsRequest {
    /// All flows of `table` (`None` = every table) whose cookie matches under `cookie_mask`.
    pub fn new(table: Option<u8>, cookie: u64, cookie_mask: u64) -> Self {
        FlowStatsRequest {
            table: table.unwrap_or(TABLE_ALL),
            cookie,
            cookie_mask,
            ..Self::default()
        }
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u16(OFPMP_FLOW);
        out.put_u16(0);
        out.put_u32(0);
        self.encode_filter(out)
    }

    /// The selection after the multipart header; the same layout serves
    /// `OFPMP_FLOW` and `OFPMP_AGGREGATE`.
    pub(crate) fn encode_filter(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.table);
        out.put_bytes(0, 3);
        out.put_u32(self.out_port);
        out.put_u32(self.out_group);
        out.put_u32(0);
        out.put_u64(self.cookie);
        out.put_u64(self.cookie_mask);
        self.matches.encode(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let table = r.u8()?;
        r.skip(3)?;
        let out_port = r.u32()?;
        let out_group = r.u32()?;
        r.skip(4)?;
        let cookie = r.u64()?;
        let cookie_mask = r.u64()?;
        let matches = Match::decode(r)?;
        Ok(FlowStatsRequest {
            table,
            out_port,
            out_group,
            cookie,
            cookie_mask,
            matches,
        })
    }
}

/// The counts of an `OFPMP_AGGREGATE` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AggregateStats {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u32,
}

impl AggregateStats {
    /// `ofp_aggregate_stats_reply`: packet_count, byte_count, flow_count, pad[4].
    pub(crate) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "aggregate stats reply");
        let stats = AggregateStats {
            packets: r.u64()?,
            bytes: r.u64()?,
            flows: r.u32()?,
        };
        r.skip(4)?;
        Ok(stats)
    }
}

/// One flow as the switch reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowEntry {
    pub flow: Flow,
    pub duration_sec: u32,
    pub duration_nsec: u32,
    pub flags: u16,
    pub importance: u16,
    pub packet_count: u64,
    pub byte_count: u64,
}

impl FlowEntry {
    pub fn duration(&self) -> Duration {
        Duration::new(
            u64::from(self.duration_sec),
            self.duration_nsec.min(999_999_999),
        )
    }

    pub(crate) fn encode(&self, version: Version, out: &mut BytesMut) -> Result<(), EncodeError> {
        let start = out.len();
        let f = &self.flow;
        out.put_u16(0);
        out.put_u8(f.table);
        out.put_u8(0);
        out.put_u32(self.duration_sec);
        out.put_u32(self.duration_nsec);
        out.put_u16(f.priority);
        out.put_u16(f.idle_timeout);
        out.put_u16(f.hard_timeout);
        out.put_u16(self.flags);
        out.put_u16(version.importance(self.importance));
        out.put_u16(0);
        out.put_u64(f.cookie);
        out.put_u64(self.packet_count);
        out.put_u64(self.byte_count);
        f.matches.encode(out)?;
        f.instructions.encode(out)?;
        // `length` is the entry's first field; truncation is caught by finish_message.
        let len = (out.len() - start) as u16;
        out[start..start + 2].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    fn decode(version: Version, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let length = usize::from(r.peek_u16(0)?);
        if length < 56 {
            return Err(DecodeError::BadLength {
                what: "flow stats",
                length,
            });
        }
        let mut e = Reader::new(r.bytes(length)?, "flow stats");
        e.skip(2)?;
        let mut flow = Flow {
            table: e.u8()?,
            ..Flow::default()
        };
        e.skip(1)?;
        let duration_sec = e.u32()?;
        let duration_nsec = e.u32()?;
        flow.priority = e.u16()?;
        flow.idle_timeout = e.u16()?;
        flow.hard_timeout = e.u16()?;
        let flags = e.u16()?;
        let importance = version.importance(e.u16()?);
        e.skip(2)?;
        flow.cookie = e.u64()?;
        let packet_count = e.u64()?;
        let byte_count = e.u64()?;
        flow.decode_rules(&mut e)?;
        Ok(FlowEntry {
            flow,
            duration_sec,
            duration_nsec,
            flags,
            importance,
            packet_count,
            byte_count,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultipartRequest {
    Flow(FlowStatsRequest),
    Other {
        mp_type: u16,
        flags: u16,
        body: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MultipartReplyBody {
    Flow(Vec<FlowEntry>),
    Other { mp_type: u16, body: Bytes },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultipartReply {
    /// [`REPLY_MORE`] when more parts follow.
    pub flags: u16,
    pub body: MultipartReplyBody,
}

impl MultipartRequest {
    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            MultipartRequest::Flow(req) => req.encode_body(out),
            MultipartRequest::Other {
                mp_type,
                flags,
                body,
            } => {
                out.put_u16(*mp_type);
                out.put_u16(*flags);
                out.put_u32(0);
                out.put_slice(body);
                Ok(())
            }
        }
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "multipart request");
        let mp_type = r.u16()?;
        let flags = r.u16()?;
        r.skip(4)?;
        if mp_type == OFPMP_FLOW {
            let req = FlowStatsRequest::decode_body(&mut r)?;
            if !r.is_empty() {
                return Err(DecodeError::BadLength {
                    what: "flow stats request",
                    length: body.len(),
                });
            }
            Ok(MultipartRequest::Flow(req))
        } else {
            Ok(MultipartRequest::Other {
                mp_type,
                flags,
                body: Bytes::copy_from_slice(r.rest()),
            })
        }
    }
}

impl MultipartReply {
    pub(crate) fn encode_body(
        &self,
        version: Version,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match &self.body {
            MultipartReplyBody::Flow(entries) => {
                out.put_u16(OFPMP_FLOW);
                out.put_u16(self.flags);
                out.put_u32(0);
                entries.iter().try_for_each(|e| e.encode(version, out))
            }
            MultipartReplyBody::Other { mp_type, body } => {
                out.put_u16(*mp_type);
                out.put_u16(self.flags);
                out.put_u32(0);
                out.put_slice(body);
                Ok(())
            }
        }
    }

    pub(crate) fn decode_body(version: Version, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "multipart reply");
        let mp_type = r.u16()?;
        let flags = r.u16()?;
        r.skip(4)?;
        let body = if mp_type == OFPMP_FLOW {
            let mut entries = Vec::new();
            while !r.is_empty() {
                entries.push(FlowEntry::decode(version, &mut r)?);
            }
            MultipartReplyBody::Flow(entries)
        } else {
            MultipartReplyBody::Other {
                mp_type,
                body: Bytes::copy_from_slice(r.rest()),
            }
        };
        Ok(MultipartReply { flags, body })
    }
}
