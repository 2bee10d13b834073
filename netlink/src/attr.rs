//! Netlink attributes (`struct nlattr`: u16 length including the 4-byte
//! header, u16 type, payload, padding to 4 bytes; native endian): one writer
//! and one reader.
//!
//! The writer appends to a `Vec<u8>` (a message body after its fixed
//! header, or a nest's payload). The reader iterates (type without the
//! `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` bits, payload) and stops at the
//! first attribute whose length does not fit; its typed getters read the
//! leading bytes of a payload and fail with `Malformed` when it is short.

use crate::Error;
use crate::msg::align;

/// The attribute's payload is itself attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// The payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// The type bits of `nla_type`.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;

/// Pads `buf` with zeros to a multiple of 4 bytes.
pub fn pad(buf: &mut Vec<u8>) {
    buf.resize(align(buf.len()), 0);
}

/// Appends attribute `ty` with `payload`, padded to 4 bytes.
pub fn put(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    put_with(buf, ty, |b| b.extend_from_slice(payload));
}

/// Appends attribute `ty` whose payload `f` writes in place (a fixed
/// struct, or attributes without the `NLA_F_NESTED` flag as some families
/// expect, e.g. `IFLA_LINKINFO` as iproute2 writes it); padded to 4 bytes.
/// A payload longer than an attribute can say (64 KiB) gets length 0xffff.
pub fn put_with(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    f(buf);
    let len = u16::try_from(buf.len() - start).unwrap_or(u16::MAX);
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    pad(buf);
}

/// Appends a nested attribute `ty | NLA_F_NESTED` whose inner attributes
/// `f` writes.
pub fn nested(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    put_with(buf, ty | NLA_F_NESTED, f);
}

pub fn put_u8(buf: &mut Vec<u8>, ty: u16, v: u8) {
    put(buf, ty, &[v]);
}

pub fn put_u16(buf: &mut Vec<u8>, ty: u16, v: u16) {
    put(buf, ty, &v.to_ne_bytes());
}

pub fn put_u32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put(buf, ty, &v.to_ne_bytes());
}

pub fn put_u64(buf: &mut Vec<u8>, ty: u16, v: u64) {
    put(buf, ty, &v.to_ne_bytes());
}

/// A string with its terminating NUL (`NLA_NUL_STRING`, `NLA_STRING` as
/// the kernel's tools write it).
pub fn put_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    put_with(buf, ty, |b| {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    });
}

/// The attributes of `b` (a body after its fixed header, or a nest's
/// payload).
pub fn attrs(b: &[u8]) -> Attrs<'_> {
    Attrs { rest: b }
}

/// Iterator of (type without flag bits, payload); ends at the first
/// attribute whose length is below 4 or past the end of the buffer.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = std::mem::take(&mut self.rest);
        let len = usize::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
        let ty = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > b.len() {
            return None;
        }
        self.rest = &b[align(len).min(b.len())..];
        Some((ty, &b[NLA_HDRLEN..len]))
    }
}

impl<'a> Attrs<'a> {
    /// The payload of the first attribute of type `ty`.
    pub fn get(mut self, ty: u16) -> Option<&'a [u8]> {
        self.find(|(t, _)| *t == ty).map(|(_, p)| p)
    }
}

fn short(what: &str, got: usize, need: usize) -> Error {
    Error::Malformed(format!(
        "attribute payload too short for {what}: {got} bytes, needs {need}"
    ))
}

fn lead<const N: usize>(p: &[u8], what: &str) -> Result<[u8; N], Error> {
    p.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| short(what, p.len(), N))
}

/// The first byte of a payload.
pub fn u8(p: &[u8]) -> Result<u8, Error> {
    Ok(lead::<1>(p, "u8")?[0])
}

/// A native-endian u16 from the first 2 bytes of a payload.
pub fn u16(p: &[u8]) -> Result<u16, Error> {
    lead(p, "u16").map(u16::from_ne_bytes)
}

/// A native-endian u32 from the first 4 bytes of a payload.
pub fn u32(p: &[u8]) -> Result<u32, Error> {
    lead(p, "u32").map(u32::from_ne_bytes)
}

/// A native-endian i32 from the first 4 bytes of a payload.
pub fn i32(p: &[u8]) -> Result<i32, Error> {
    lead(p, "i32").map(i32::from_ne_bytes)
}

/// A native-endian u64 from the first 8 bytes of a payload.
pub fn u64(p: &[u8]) -> Result<u64, Error> {
    lead(p, "u64").map(u64::from_ne_bytes)
}

/// A native-endian u32 at byte `off` of a fixed struct, if it is there.
pub fn u32_at(p: &[u8], off: usize) -> Option<u32> {
    u32(p.get(off..)?).ok()
}

/// A string payload up to its first NUL (or all of it), lossily decoded.
pub fn string(p: &[u8]) -> String {
    let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// devlink's vectors: BUS_NAME "pci\0", DEV_NAME "0000:03:00.0\0" (13
    /// bytes, padded to 16), a u16, a nest with NLA_F_NESTED.
    #[test]
    fn writer_matches_the_devlink_vectors() {
        let mut b = Vec::new();
        put_str(&mut b, 1, "pci");
        put_str(&mut b, 2, "0000:03:00.0");
        put_u16(&mut b, 25, 1);
        nested(&mut b, 145, |n| put(n, 1, &[2, 0, 0, 0, 0, 9]));
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x08, 0x00, 0x01, 0x00, b'p', b'c', b'i', 0x00,
            0x11, 0x00, 0x02, 0x00, b'0', b'0', b'0', b'0', b':', b'0', b'3', b':', b'0', b'0',
            b'.', b'0', 0x00, 0, 0, 0,
            0x06, 0x00, 25, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x10, 0x00, 0x91, 0x80, 0x0a, 0x00, 0x01, 0x00, 2, 0, 0, 0, 0, 9, 0, 0,
        ];
        #[cfg(target_endian = "little")]
        assert_eq!(b, want);
        let mut b = Vec::new();
        put_u8(&mut b, 2, 1);
        put_u32(&mut b, 3, 65538);
        put_u64(&mut b, 6, 1 << 40);
        #[cfg(target_endian = "little")]
        assert_eq!(
            b,
            [
                5, 0, 2, 0, 1, 0, 0, 0, //
                8, 0, 3, 0, 2, 0, 1, 0, //
                12, 0, 6, 0, 0, 0, 0, 0, 0, 1, 0, 0
            ]
        );
    }

    /// tenant_netns's vector: `IFLA_LINKINFO` as iproute2 writes it, without
    /// `NLA_F_NESTED`, with the kind without a NUL.
    #[test]
    fn put_with_writes_unflagged_nests() {
        let mut b = Vec::new();
        put_with(&mut b, 18, |info| {
            put(info, 1, b"xfrm");
            put_with(info, 2, |data| {
                put_u32(data, 2, 0x0d52_0001);
                put_u32(data, 1, 1);
            });
        });
        #[cfg(target_endian = "little")]
        assert_eq!(
            b,
            [
                0x20, 0, 0x12, 0, 0x08, 0, 0x01, 0, b'x', b'f', b'r', b'm', 0x14, 0, 0x02, 0, 0x08,
                0, 0x02, 0, 0x01, 0, 0x52, 0x0d, 0x08, 0, 0x01, 0, 0x01, 0, 0, 0
            ]
        );
    }

    #[test]
    fn reader_strips_flags_and_padding() {
        let mut b = Vec::new();
        put_str(&mut b, 2, "devlink");
        nested(&mut b, 145, |n| put_u8(n, 2, 1));
        put(&mut b, 5, &[1, 2, 3, 4, 5]);
        let all: Vec<_> = attrs(&b).collect();
        assert_eq!(all[0], (2, &b"devlink\0"[..]));
        assert_eq!(all[1].0, 145);
        assert_eq!(attrs(all[1].1).collect::<Vec<_>>(), vec![(2, &[1u8][..])]);
        assert_eq!(all[2], (5, &[1, 2, 3, 4, 5][..]));
        assert_eq!(string(attrs(&b).get(2).unwrap()), "devlink");
        assert_eq!(attrs(&b).get(9), None);
        // Malformed: a length past the end, below a header, a short buffer.
        assert_eq!(attrs(&[0xff, 0x00, 0x01]).count(), 0);
        assert_eq!(attrs(&[0x02, 0x00, 0x01, 0x00]).count(), 0);
        let mut bad = b.clone();
        bad.extend_from_slice(&[0x40, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(attrs(&bad).count(), 3);
    }

    #[test]
    fn typed_getters_fail_on_short_payloads() {
        assert_eq!(u8(&[7]).unwrap(), 7);
        assert_eq!(u16(&1u16.to_ne_bytes()).unwrap(), 1);
        assert_eq!(u32(&5u32.to_ne_bytes()).unwrap(), 5);
        assert_eq!(i32(&(-5i32).to_ne_bytes()).unwrap(), -5);
        assert_eq!(u64(&9u64.to_ne_bytes()).unwrap(), 9);
        assert_eq!(
            u32_at(&[0, 0, 0, 0, 1, 0, 0, 0], 4),
            Some(u32::from_ne_bytes([1, 0, 0, 0]))
        );
        assert_eq!(u32_at(&[0; 6], 4), None);
        assert_eq!(u32_at(&[0; 6], usize::MAX), None);
        let e = u32(&[1, 2]).unwrap_err();
        assert!(e.to_string().contains("2 bytes, needs 4"), "{e}");
        assert!(u8(&[]).is_err() && u16(&[1]).is_err() && u64(&[0; 7]).is_err());
        assert_eq!(string(b"htb\0\0"), "htb");
        assert_eq!(string(b"xfrm"), "xfrm");
    }

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            for (_, p) in attrs(&b) {
                let _ = (u8(p), u16(p), u32(p), u64(p), string(p));
                let _ = attrs(p).count();
            }
        }

        #[test]
        fn written_attributes_read_back(items in proptest::collection::vec((0u16..0x3fff, proptest::collection::vec(any::<u8>(), 0..40)), 0..8)) {
            let mut b = Vec::new();
            for (t, p) in &items {
                put(&mut b, *t, p);
                prop_assert_eq!(b.len() % 4, 0);
            }
            let back: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(t, p)| (t, p.to_vec())).collect();
            prop_assert_eq!(back, items);
        }
    }
}
