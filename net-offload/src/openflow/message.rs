//! Whole messages: [`Message`] and its framing ([`encode`], [`decode`]), plus
//! HELLO version negotiation.

use bytes::{BufMut, Bytes, BytesMut};

use super::bundle::{BundleAdd, BundleControl, ONF_ET_BUNDLE_ADD_MESSAGE, ONF_ET_BUNDLE_CONTROL};
use super::error::{DecodeError, EncodeError, ErrorType, SwitchError};
use super::flow_mod::FlowMod;
use super::header::{
    HEADER_LEN, Header, ONF_EXPERIMENTER, Reader, Version, finish_message, msg_type, start_message,
};
use super::meter::MeterMod;
use super::multipart::{MultipartReply, MultipartRequest};

const OFPHET_VERSIONBITMAP: u16 = 1;

/// Version bitmap we offer in HELLO: bit n set = wire version n.
pub const OUR_VERSIONS: u32 = (1 << 0x04) | (1 << 0x05);

/// FEATURES_REPLY body (OpenFlow 1.3/1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SwitchFeatures {
    pub datapath_id: u64,
    pub n_buffers: u32,
    pub n_tables: u8,
    pub auxiliary_id: u8,
    pub capabilities: u32,
}

/// A message of the supported subset. Messages we do not model keep their body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// HELLO with an optional version bitmap element.
    Hello {
        versions: Option<u32>,
    },
    Error(SwitchError),
    EchoRequest(Bytes),
    EchoReply(Bytes),
    FeaturesRequest,
    FeaturesReply(SwitchFeatures),
    FlowMod(FlowMod),
    MultipartRequest(MultipartRequest),
    MultipartReply(MultipartReply),
    BarrierRequest,
    BarrierReply,
    MeterMod(MeterMod),
    BundleControl(BundleControl),
    BundleAdd(BundleAdd),
    /// Any other message type (e.g. PORT_STATUS), body undecoded.
    Other {
        msg_type: u8,
        body: Bytes,
    },
}

/// Appends the encoding of `msg` with `version` and `xid` to `out`. On error
/// nothing is appended.
pub fn encode(
    msg: &Message,
    version: Version,
    xid: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let ty = match msg {
        Message::Hello { .. } => msg_type::HELLO,
        Message::Error(_) => msg_type::ERROR,
        Message::EchoRequest(_) => msg_type::ECHO_REQUEST,
        Message::EchoReply(_) => msg_type::ECHO_REPLY,
        Message::FeaturesRequest => msg_type::FEATURES_REQUEST,
        Message::FeaturesReply(_) => msg_type::FEATURES_REPLY,
        Message::FlowMod(_) => msg_type::FLOW_MOD,
        Message::MultipartRequest(_) => msg_type::MULTIPART_REQUEST,
        Message::MultipartReply(_) => msg_type::MULTIPART_REPLY,
        Message::BarrierRequest => msg_type::BARRIER_REQUEST,
        Message::BarrierReply => msg_type::BARRIER_REPLY,
        Message::MeterMod(_) => msg_type::METER_MOD,
        Message::BundleControl(_) | Message::BundleAdd(_) if version == Version::Of13 => {
            msg_type::EXPERIMENTER
        }
        Message::BundleControl(_) => msg_type::BUNDLE_CONTROL,
        Message::BundleAdd(_) => msg_type::BUNDLE_ADD_MESSAGE,
        Message::Other { msg_type, .. } => *msg_type,
    };
    let start = start_message(out, version, ty, xid);
    let result = encode_body(msg, version, xid, out);
    if result.is_err() {
        out.truncate(start);
        return result;
    }
    finish_message(out, start)
}

fn encode_body(
    msg: &Message,
    version: Version,
    xid: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    match msg {
        Message::Hello { versions } => {
            if let Some(bitmap) = versions {
                out.put_u16(OFPHET_VERSIONBITMAP);
                out.put_u16(8);
                out.put_u32(*bitmap);
            }
        }
        Message::Error(e) => {
            out.put_u16(e.type_code);
            match e.experimenter {
                Some(exp) => {
                    out.put_u16(e.code);
                    out.put_u32(exp);
                }
                None => out.put_u16(e.code),
            }
            out.put_slice(&e.data);
        }
        Message::EchoRequest(data) | Message::EchoReply(data) => out.put_slice(data),
        Message::FeaturesRequest | Message::BarrierRequest | Message::BarrierReply => {}
        Message::FeaturesReply(f) => {
            out.put_u64(f.datapath_id);
            out.put_u32(f.n_buffers);
            out.put_u8(f.n_tables);
            out.put_u8(f.auxiliary_id);
            out.put_u16(0);
            out.put_u32(f.capabilities);
            out.put_u32(0);
        }
        Message::FlowMod(fm) => fm.encode_body(version, out)?,
        Message::MultipartRequest(req) => req.encode_body(out)?,
        Message::MultipartReply(rep) => rep.encode_body(version, out)?,
        Message::MeterMod(mm) => mm.encode_body(out),
        Message::BundleControl(bc) => {
            if version == Version::Of13 {
                out.put_u32(ONF_EXPERIMENTER);
                out.put_u32(ONF_ET_BUNDLE_CONTROL);
            }
            bc.encode_body(out);
        }
        Message::BundleAdd(ba) => {
            if version == Version::Of13 {
                out.put_u32(ONF_EXPERIMENTER);
                out.put_u32(ONF_ET_BUNDLE_ADD_MESSAGE);
            }
            ba.encode_body(version, xid, out)?;
        }
        Message::Other { body, .. } => out.put_slice(body),
    }
    Ok(())
}

/// Decodes the first message in `buf` (which must hold at least one whole
/// message, see [`super::header::frame_len`]). Never panics.
///
/// HELLO and ERROR are accepted with any version (they are how versions are
/// negotiated and refused); every other message must be OpenFlow 1.3 or 1.4.
pub fn decode(buf: &[u8]) -> Result<(Header, Message), DecodeError> {
    let header = Header::decode(buf)?;
    let len = usize::from(header.length);
    if buf.len() < len {
        return Err(DecodeError::Truncated {
            what: "message",
            needed: len,
            available: buf.len(),
        });
    }
    let body = &buf[HEADER_LEN..len];
    let msg = match header.msg_type {
        msg_type::HELLO => Message::Hello {
            versions: decode_hello(body)?,
        },
        msg_type::ERROR => Message::Error(decode_error(header.xid, body)?),
        _ => {
            let version = Version::from_wire(header.version)?;
            decode_versioned(version, header, body)?
        }
    };
    Ok((header, msg))
}

fn decode_versioned(version: Version, header: Header, body: &[u8]) -> Result<Message, DecodeError> {
    let empty = |msg: Message| {
        if body.is_empty() {
            Ok(msg)
        } else {
            Err(DecodeError::BadLength {
                what: "empty message",
                length: body.len() + HEADER_LEN,
            })
        }
    };
    Ok(match header.msg_type {
        msg_type::ECHO_REQUEST => Message::EchoRequest(Bytes::copy_from_slice(body)),
        msg_type::ECHO_REPLY => Message::EchoReply(Bytes::copy_from_slice(body)),
        msg_type::FEATURES_REQUEST => empty(Message::FeaturesRequest)?,
        msg_type::FEATURES_REPLY => {
            let mut r = Reader::new(body, "features reply");
            let datapath_id = r.u64()?;
            let n_buffers = r.u32()?;
            let n_tables = r.u8()?;
            let auxiliary_id = r.u8()?;
            r.skip(2)?;
            let capabilities = r.u32()?;
            Message::FeaturesReply(SwitchFeatures {
                datapath_id,
                n_buffers,
                n_tables,
                auxiliary_id,
                capabilities,
            })
        }
        msg_type::FLOW_MOD => Message::FlowMod(FlowMod::decode_body(version, body)?),
        msg_type::MULTIPART_REQUEST => {
            Message::MultipartRequest(MultipartRequest::decode_body(body)?)
        }
        msg_type::MULTIPART_REPLY => {
            Message::MultipartReply(MultipartReply::decode_body(version, body)?)
        }
        msg_type::BARRIER_REQUEST => empty(Message::BarrierRequest)?,
        msg_type::BARRIER_REPLY => empty(Message::BarrierReply)?,
        msg_type::METER_MOD => Message::MeterMod(MeterMod::decode_body(body)?),
        msg_type::BUNDLE_CONTROL if version >= Version::Of14 => {
            Message::BundleControl(BundleControl::decode_body(body)?)
        }
        msg_type::BUNDLE_ADD_MESSAGE if version >= Version::Of14 => {
            Message::BundleAdd(decode_bundle_add(version, header, body)?)
        }
        msg_type::EXPERIMENTER if version == Version::Of13 => {
            let mut r = Reader::new(body, "experimenter");
            let experimenter = r.u32()?;
            let exp_type = r.u32()?;
            match (experimenter, exp_type) {
                (ONF_EXPERIMENTER, ONF_ET_BUNDLE_CONTROL) => {
                    Message::BundleControl(BundleControl::decode_body(r.rest())?)
                }
                (ONF_EXPERIMENTER, ONF_ET_BUNDLE_ADD_MESSAGE) => {
                    Message::BundleAdd(decode_bundle_add(version, header, r.rest())?)
                }
                _ => Message::Other {
                    msg_type: header.msg_type,
                    body: Bytes::copy_from_slice(body),
                },
            }
        }
        other => Message::Other {
            msg_type: other,
            body: Bytes::copy_from_slice(body),
        },
    })
}

fn decode_bundle_add(
    version: Version,
    header: Header,
    body: &[u8],
) -> Result<BundleAdd, DecodeError> {
    let add = BundleAdd::decode_body(version, body)?;
    // The inner xid must equal the outer one; BundleAdd cannot represent anything else.
    let inner = Header::decode(body.get(8..).unwrap_or_default())?;
    if inner.xid != header.xid {
        return Err(DecodeError::Unsupported {
            what: "bundled message xid",
            value: inner.xid.into(),
        });
    }
    Ok(add)
}

fn decode_hello(body: &[u8]) -> Result<Option<u32>, DecodeError> {
    let mut r = Reader::new(body, "hello");
    let mut versions = None;
    // Elements are {be16 type, be16 length, ...} padded to 8; unknown ones are skipped.
    while r.remaining() >= 4 {
        let el_type = r.u16()?;
        let el_len = usize::from(r.u16()?);
        if el_len < 4 {
            return Err(DecodeError::BadLength {
                what: "hello element",
                length: el_len,
            });
        }
        let payload = r.bytes(el_len - 4)?;
        let padded = el_len.div_ceil(8) * 8;
        r.skip((padded - el_len).min(r.remaining()))?;
        if el_type == OFPHET_VERSIONBITMAP && versions.is_none() {
            // Only the first 32-bit word matters for versions below 32.
            let word = payload.get(..4).ok_or(DecodeError::BadLength {
                what: "hello version bitmap",
                length: el_len,
            })?;
            versions = Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    Ok(versions)
}

fn decode_error(xid: u32, body: &[u8]) -> Result<SwitchError, DecodeError> {
    let mut r = Reader::new(body, "error");
    let type_code = r.u16()?;
    let code = r.u16()?;
    let error_type = ErrorType::from_wire(type_code);
    let experimenter = if error_type == ErrorType::Experimenter {
        Some(r.u32()?)
    } else {
        None
    };
    Ok(SwitchError {
        xid,
        error_type,
        type_code,
        code,
        experimenter,
        data: Bytes::copy_from_slice(r.rest()),
    })
}

/// The version both sides speak, from the peer's HELLO header version and
/// optional bitmap (OpenFlow 1.3.1+ §6.3.1): the highest common bit of the
/// bitmaps, or without a bitmap the smaller of the two highest versions.
pub fn negotiate(ours: u32, peer_version: u8, peer_bitmap: Option<u32>) -> Option<Version> {
    if ours == 0 {
        return None;
    }
    let common = match peer_bitmap {
        Some(bitmap) => ours & bitmap,
        None => {
            let our_max = 31 - ours.leading_zeros();
            let v = u32::from(peer_version).min(our_max);
            if v < 32 { ours & (1 << v) } else { 0 }
        }
    };
    if common == 0 {
        return None;
    }
    Version::from_wire((31 - common.leading_zeros()) as u8).ok()
}
