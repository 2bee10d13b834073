//! The 8-byte OpenFlow header, message type numbers, protocol versions, and the
//! bounds-checked byte reader every decoder in this module uses.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};

pub const HEADER_LEN: usize = 8;

/// ONF experimenter id, used for the OF1.3 bundle extension.
pub const ONF_EXPERIMENTER: u32 = 0x4f4e_4600;
/// Nicira experimenter id (`NX_VENDOR_ID`), used by the Nicira actions and errors.
pub const NX_EXPERIMENTER: u32 = 0x0000_2320;

/// The OpenFlow versions this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// OpenFlow 1.3 (wire 0x04); bundles through the ONF extension.
    Of13,
    /// OpenFlow 1.4 (wire 0x05); native bundles.
    Of14,
}

impl Version {
    pub const fn wire(self) -> u8 {
        match self {
            Version::Of13 => 0x04,
            Version::Of14 => 0x05,
        }
    }

    /// A flow's `importance` as this version carries it: the value from
    /// OpenFlow 1.4 on; 1.3 has padding there, so 0 (sent and read back).
    pub const fn importance(self, importance: u16) -> u16 {
        match self {
            Version::Of13 => 0,
            Version::Of14 => importance,
        }
    }

    pub fn from_wire(value: u8) -> Result<Self, DecodeError> {
        match value {
            0x04 => Ok(Version::Of13),
            0x05 => Ok(Version::Of14),
            other => Err(DecodeError::UnsupportedVersion(other)),
        }
    }
}

/// OpenFlow 1.1+ message type numbers used here.
pub mod msg_type {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const EXPERIMENTER: u8 = 4;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const FLOW_MOD: u8 = 14;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const METER_MOD: u8 = 29;
    pub const BUNDLE_CONTROL: u8 = 33;
    pub const BUNDLE_ADD_MESSAGE: u8 = 34;
}

/// `{u8 version; u8 type; be16 length; be32 xid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u8,
    pub msg_type: u8,
    pub length: u16,
    pub xid: u32,
}

impl Header {
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, "header");
        let header = Header {
            version: r.u8()?,
            msg_type: r.u8()?,
            length: r.u16()?,
            xid: r.u32()?,
        };
        if usize::from(header.length) < HEADER_LEN {
            return Err(DecodeError::BadLength {
                what: "header",
                length: header.length.into(),
            });
        }
        Ok(header)
    }
}

/// Length of the first complete message in `buf`, if `buf` holds one.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if length < HEADER_LEN {
        return Err(DecodeError::BadLength {
            what: "header",
            length,
        });
    }
    Ok((buf.len() >= length).then_some(length))
}

/// Starts a message in `out`; returns the offset to pass to [`finish_message`].
pub(crate) fn start_message(out: &mut BytesMut, version: Version, msg_type: u8, xid: u32) -> usize {
    let start = out.len();
    out.put_u8(version.wire());
    out.put_u8(msg_type);
    out.put_u16(0);
    out.put_u32(xid);
    start
}

/// Writes the final length into the header started at `start`. A message longer
/// than the 16-bit length allows is removed from `out` again and reported.
pub(crate) fn finish_message(out: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start;
    let Ok(len16) = u16::try_from(len) else {
        out.truncate(start);
        return Err(EncodeError::TooLong(len));
    };
    out[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

/// Pads `out` with zeros so that `out.len() - start` is a multiple of 8.
pub(crate) fn pad_to_8(out: &mut BytesMut, start: usize) {
    let rem = (out.len() - start) % 8;
    if rem != 0 {
        out.put_bytes(0, 8 - rem);
    }
}

/// Writes a be16 length at `at + 2`, counting from `at` to the end of `out`. An
/// element that overflows 16 bits also overflows its message, which
/// [`finish_message`] rejects, so truncating here is harmless.
pub(crate) fn patch_len16(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as u16;
    out[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// A bounds-checked big-endian reader; every read returns `Truncated` instead of panicking.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.bytes(n).map(|_| ())
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Peeks a be16 at `offset` without consuming.
    pub fn peek_u16(&self, offset: usize) -> Result<u16, DecodeError> {
        match self.buf.get(offset..offset + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => Err(DecodeError::Truncated {
                what: self.what,
                needed: offset + 2,
                available: self.buf.len(),
            }),
        }
    }
}
