//! Bundles: BUNDLE_CONTROL and BUNDLE_ADD_MESSAGE (OpenFlow 1.4 types 33/34, or
//! in 1.3 the ONF experimenter messages 2300/2301 with the same body). Only
//! FLOW_MOD is carried inside a bundle here; bundle properties are not used.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::flow_mod::FlowMod;
use super::header::{Header, Reader, Version, msg_type};

/// ONF experimenter types of the OF1.3 bundle extension.
pub(crate) const ONF_ET_BUNDLE_CONTROL: u32 = 2300;
pub(crate) const ONF_ET_BUNDLE_ADD_MESSAGE: u32 = 2301;

/// `OFPBF_*` bundle flags.
pub mod bundle_flags {
    pub const ATOMIC: u16 = 1;
    pub const ORDERED: u16 = 2;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BundleCtrlType {
    OpenRequest,
    OpenReply,
    CloseRequest,
    CloseReply,
    CommitRequest,
    CommitReply,
    DiscardRequest,
    DiscardReply,
}

impl BundleCtrlType {
    fn wire(self) -> u16 {
        self as u16
    }

    fn from_wire(value: u16) -> Result<Self, DecodeError> {
        use BundleCtrlType::*;
        Ok(match value {
            0 => OpenRequest,
            1 => OpenReply,
            2 => CloseRequest,
            3 => CloseReply,
            4 => CommitRequest,
            5 => CommitReply,
            6 => DiscardRequest,
            7 => DiscardReply,
            other => {
                return Err(DecodeError::Unsupported {
                    what: "bundle control type",
                    value: other.into(),
                });
            }
        })
    }
}

/// `ofp14_bundle_ctrl_msg` without properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BundleControl {
    pub bundle_id: u32,
    pub ctrl_type: BundleCtrlType,
    /// See [`bundle_flags`].
    pub flags: u16,
}

impl BundleControl {
    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u32(self.bundle_id);
        out.put_u16(self.ctrl_type.wire());
        out.put_u16(self.flags);
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "bundle control");
        Ok(BundleControl {
            bundle_id: r.u32()?,
            ctrl_type: BundleCtrlType::from_wire(r.u16()?)?,
            flags: r.u16()?,
        })
    }
}

/// `ofp14_bundle_add_msg` carrying one FLOW_MOD. The inner message takes the
/// outer message's version and xid, as OVS requires (`OFPBFC_MSG_BAD_XID`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BundleAdd {
    pub bundle_id: u32,
    pub flags: u16,
    pub flow_mod: FlowMod,
}

impl BundleAdd {
    pub(crate) fn encode_body(
        &self,
        version: Version,
        xid: u32,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        out.put_u32(self.bundle_id);
        out.put_u16(0);
        out.put_u16(self.flags);
        let inner = super::header::start_message(out, version, msg_type::FLOW_MOD, xid);
        self.flow_mod.encode_body(version, out)?;
        super::header::finish_message(out, inner)
    }

    pub(crate) fn decode_body(version: Version, body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body, "bundle add");
        let bundle_id = r.u32()?;
        r.skip(2)?;
        let flags = r.u16()?;
        let inner = Header::decode(r.rest())?;
        if inner.msg_type != msg_type::FLOW_MOD {
            return Err(DecodeError::Unsupported {
                what: "bundled message type",
                value: inner.msg_type.into(),
            });
        }
        if inner.version != version.wire() {
            return Err(DecodeError::UnsupportedVersion(inner.version));
        }
        let inner_bytes = r.bytes(usize::from(inner.length))?;
        // Trailing bundle properties, if any, are ignored.
        let flow_mod = FlowMod::decode_body(version, &inner_bytes[super::header::HEADER_LEN..])?;
        Ok(BundleAdd {
            bundle_id,
            flags,
            flow_mod,
        })
    }
}
