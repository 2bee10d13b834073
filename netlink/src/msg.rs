//! The netlink message header and the decoding of the kernel's answers to
//! one request; pure, no I/O, never panics on any bytes.
//!
//! Layout and rules from `include/uapi/linux/netlink.h`: every message
//! starts with a 16-byte `nlmsghdr` (length including the header, type,
//! flags, sequence number, port id; native endian) and is padded to 4
//! bytes. A request is answered by messages carrying its sequence number:
//! data messages (`NLM_F_MULTI` set in a dump), then `NLMSG_DONE` (a dump)
//! or `NLMSG_ERROR` (an ack when its error is 0, else the negative errno).

use crate::Error;

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// An `NLMSG_ERROR` message: its own header, `struct nlmsgerr` = `int error`
/// and the header of the request it answers (the kernel may append the
/// request's payload or extended-ack attributes after that).
pub const NLMSG_ERROR_MIN_LEN: usize = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// In an `NLMSG_ERROR`: the echoed request is cut to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an `NLMSG_ERROR`: extended-ack attributes follow the echoed request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the extended ack's human-readable reason.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// For new requests (same bit as `NLM_F_ROOT`).
pub const NLM_F_REPLACE: u16 = 0x100;
/// For new requests (same bit as `NLM_F_MATCH`).
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

/// The 4-byte alignment of messages and attributes.
pub const fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The whole message's length, header included, padding excluded.
    pub len: u32,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
}

impl Header {
    /// The header at the start of `b`, if there are 16 bytes.
    pub fn parse(b: &[u8]) -> Option<Header> {
        Some(Header {
            len: u32_at(b, 0)?,
            ty: u16_at(b, 4)?,
            flags: u16_at(b, 6)?,
            seq: u32_at(b, 8)?,
            pid: u32_at(b, 12)?,
        })
    }

    /// Appends the 16 header bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_ne_bytes());
        out.extend_from_slice(&self.ty.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&self.pid.to_ne_bytes());
    }
}

/// A whole message: header of type `ty` with `flags` and `seq`, then
/// `body` (the caller's fixed header and attributes), length filled in.
pub fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    start(&mut m, ty, flags, seq);
    m.extend_from_slice(body);
    finish(&mut m);
    m
}

/// Starts a message in `out` (which should be empty): a header with
/// length 0, to be filled in by [`finish`] once the body is written.
pub fn start(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    Header {
        len: 0,
        ty,
        flags,
        seq,
        pid: 0,
    }
    .write(out);
}

/// Writes the length of the message in `m` (all of it) into its header.
/// A buffer shorter than a header is left alone.
pub fn finish(m: &mut [u8]) {
    let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
    if let Some(h) = m.get_mut(0..4) {
        h.copy_from_slice(&len.to_ne_bytes());
    }
}

/// Writes `seq` into the header of the message in `m` (the socket numbers
/// requests as it sends them). A buffer shorter than a header is left alone.
pub fn set_seq(m: &mut [u8], seq: u32) {
    if let Some(h) = m.get_mut(8..12) {
        h.copy_from_slice(&seq.to_ne_bytes());
    }
}

/// The messages of one datagram: (header, payload after the header). A
/// length that does not fit, or trailing bytes shorter than a header, are
/// one `Malformed` error, after which the iterator ends.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    offset: usize,
}

/// The messages of datagram `b`.
pub fn messages(b: &[u8]) -> Messages<'_> {
    Messages { rest: b, offset: 0 }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(Header, &'a [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let b = std::mem::take(&mut self.rest);
        let Some(h) = Header::parse(b) else {
            return Some(Err(Error::Malformed(format!(
                "truncated netlink header ({} bytes at offset {}, needs {NLMSG_HDRLEN})",
                b.len(),
                self.offset
            ))));
        };
        let len = h.len as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Some(Err(Error::Malformed(format!(
                "netlink message length {len} at offset {} does not fit the {} bytes received",
                self.offset,
                b.len()
            ))));
        }
        let next = align(len).min(b.len());
        self.rest = &b[next..];
        self.offset += next;
        Some(Ok((h, &b[NLMSG_HDRLEN..len])))
    }
}

/// What one `NLMSG_ERROR` payload says: `Ok(())` for an ack, the kernel's
/// errno as `Error::Kernel`, anything shorter than a `struct nlmsgerr`
/// (e.g. the 16-byte bare header) or a positive code `Malformed`.
pub fn error_of(payload: &[u8]) -> Result<(), Error> {
    error_with_ack_of(0, payload)
}

/// [`error_of`] for an `NLMSG_ERROR` whose header flags are `flags`: when
/// the kernel added extended-ack attributes (`NLM_F_ACK_TLVS`, sent to a
/// socket with `NETLINK_EXT_ACK` on, see [`crate::Socket::with_ext_ack`]),
/// a refusal carrying a reason (`NLMSGERR_ATTR_MSG`) is
/// `Error::Refused` with it. Attributes that do not parse are ignored: the
/// errno stands alone.
pub fn error_with_ack_of(flags: u16, payload: &[u8]) -> Result<(), Error> {
    let out = error_code_of(payload);
    match out {
        Err(Error::Kernel(source)) if flags & NLM_F_ACK_TLVS != 0 => {
            match ext_ack_message(flags, payload) {
                Some(message) => Err(Error::Refused { source, message }),
                None => Err(Error::Kernel(source)),
            }
        }
        other => other,
    }
}

/// The extended ack's message after the echoed request of an error payload.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    // `int error`, then the request's header, then (unless capped) the
    // rest of the request as its own header gives its length.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        usize::try_from(u32_at(payload, 4)?).ok()?
    };
    let start = 4usize.checked_add(align(echoed.min(payload.len())))?;
    let tlvs = payload.get(start..)?;
    let msg = crate::attr::attrs(tlvs).get(NLMSGERR_ATTR_MSG)?;
    let text = crate::attr::string(msg);
    (!text.is_empty()).then_some(text)
}

fn error_code_of(payload: &[u8]) -> Result<(), Error> {
    let len = NLMSG_HDRLEN + payload.len();
    if len < NLMSG_ERROR_MIN_LEN {
        return Err(Error::Malformed(format!(
            "truncated NLMSG_ERROR ({len} bytes, needs at least {NLMSG_ERROR_MIN_LEN})"
        )));
    }
    match u32_at(payload, 0).map(|c| c as i32) {
        Some(0) => Ok(()),
        // saturating: -i32::MIN overflows (a panic in debug builds).
        Some(e) if e < 0 => Err(Error::kernel(e.saturating_neg())),
        e => Err(Error::Malformed(format!(
            "NLMSG_ERROR with positive error {}",
            e.unwrap_or(0)
        ))),
    }
}

/// The decoding state of one request's answers.
///
/// The exchange is complete on `NLMSG_ERROR` (an ack, or the kernel's
/// error), on `NLMSG_DONE` (the end of a dump; a negative code in it is the
/// dump's error), or — when the request did not ask for an ack — on a
/// single answer without `NLM_F_MULTI`. Messages with another sequence
/// number (answers to earlier requests, notifications) are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    seq: u32,
    ack: bool,
    multi: bool,
    replies: usize,
}

impl Exchange {
    /// The answers to request `seq`; `ack` when it was sent with `NLM_F_ACK`.
    pub fn new(seq: u32, ack: bool) -> Exchange {
        Exchange {
            seq,
            ack,
            multi: false,
            replies: 0,
        }
    }

    /// The answers to the request `msg` (its sequence number and flags).
    pub fn for_request(msg: &[u8]) -> Exchange {
        let h = Header::parse(msg).unwrap_or_default();
        Exchange::new(h.seq, h.flags & NLM_F_ACK != 0)
    }

    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Decodes one datagram, handing each data message answering the
    /// request to `on_reply` (header, payload after the header). `Ok(true)`
    /// once the exchange is complete, `Ok(false)` when more datagrams are to
    /// come. A malformed datagram or the kernel's error is an error; so is
    /// what `on_reply` returns.
    pub fn feed<E: From<Error>>(
        &mut self,
        datagram: &[u8],
        mut on_reply: impl FnMut(&Header, &[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        for m in messages(datagram) {
            let (h, payload) = m?;
            if h.seq != self.seq {
                continue;
            }
            match h.ty {
                NLMSG_ERROR => {
                    error_with_ack_of(h.flags, payload)?;
                    return Ok(true);
                }
                NLMSG_DONE => {
                    // The dump's error, when the kernel put one there.
                    if let Some(code) = u32_at(payload, 0).map(|c| c as i32)
                        && code < 0
                    {
                        return Err(Error::kernel(code.saturating_neg()).into());
                    }
                    return Ok(true);
                }
                NLMSG_NOOP => {}
                _ => {
                    self.multi |= h.flags & NLM_F_MULTI != 0;
                    self.replies += 1;
                    on_reply(&h, payload)?;
                }
            }
        }
        Ok(!self.ack && !self.multi && self.replies > 0)
    }
}

/// Decodes one datagram of answers to request `seq` (sent with `NLM_F_ACK`
/// when `ack`), appending the payload (after `nlmsghdr`) of each data
/// message to `out`. `Ok(true)` once the exchange is complete. For tests and
/// the fuzz targets; the socket uses [`Exchange`] itself.
pub fn decode_replies(
    datagram: &[u8],
    seq: u32,
    ack: bool,
    out: &mut Vec<Vec<u8>>,
) -> Result<bool, Error> {
    Exchange::new(seq, ack).feed(datagram, |_, p| {
        out.push(p.to_vec());
        Ok::<(), Error>(())
    })
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// An nlmsghdr: length, type, flags, seq, pid 0 (native endian).
    fn nlmsghdr(len: u32, ty: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut b = Vec::new();
        Header {
            len,
            ty,
            flags,
            seq,
            pid: 0,
        }
        .write(&mut b);
        b
    }

    /// NLMSG_ERROR of `len` bytes answering seq 7 with `errno`, followed by
    /// the original request's header (as much as `len` leaves room for).
    fn nlmsg_error(len: u32, errno: i32) -> Vec<u8> {
        let mut b = nlmsghdr(len, NLMSG_ERROR, 0, 7);
        b.extend_from_slice(&errno.to_ne_bytes());
        b.extend_from_slice(&nlmsghdr(56, 0x15, 0x05, 7));
        b.truncate(len as usize);
        b
    }

    /// One whole message, padded: header and body.
    fn nlmsg(t: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = message(t, flags, seq, body);
        m.resize(align(m.len()), 0);
        m
    }

    fn decode(b: &[u8]) -> Result<(bool, Vec<Vec<u8>>), Error> {
        let mut out = Vec::new();
        decode_replies(b, 7, true, &mut out).map(|done| (done, out))
    }

    /// An extended ack as the kernel's `netlink_ack()` builds it for a
    /// socket with `NETLINK_EXT_ACK` (capped: only the request's header is
    /// echoed) carries the driver's reason beside the errno; without
    /// `NLM_F_ACK_TLVS` the same bytes are a bare errno.
    #[test]
    fn extended_ack_reason_is_kept() {
        let reason = "Port doesn't support function attributes";
        let mut body = (-95i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&nlmsghdr(60, 0x13, 0x05, 7));
        crate::attr::put_str(&mut body, NLMSGERR_ATTR_MSG, reason);
        let capped = nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 7, &body);
        match decode(&capped) {
            Err(Error::Refused { source, message }) => {
                assert_eq!(source.raw_os_error(), Some(95));
                assert_eq!(message, reason);
            }
            other => panic!("{other:?}"),
        }
        let e = decode(&capped).unwrap_err();
        assert_eq!(e.errno(), Some(95));
        assert!(e.to_string().ends_with(reason), "{e}");
        let bare = nlmsg(NLMSG_ERROR, NLM_F_CAPPED, 7, &body);
        assert!(matches!(decode(&bare), Err(Error::Kernel(_))));
        // Uncapped: the whole request is echoed before the attributes.
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&message(0x13, 0x05, 7, &[9; 8]));
        crate::attr::put_str(&mut body, NLMSGERR_ATTR_MSG, "bad attribute");
        let whole = nlmsg(NLMSG_ERROR, NLM_F_ACK_TLVS, 7, &body);
        match decode(&whole) {
            Err(Error::Refused { message, .. }) => assert_eq!(message, "bad attribute"),
            other => panic!("{other:?}"),
        }
        // An echoed length past the end is not a panic, just no reason.
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&nlmsghdr(9999, 0x13, 0x05, 7));
        let lying = nlmsg(NLMSG_ERROR, NLM_F_ACK_TLVS, 7, &body);
        assert!(matches!(decode(&lying), Err(Error::Kernel(_))));
    }

    #[test]
    fn header_encodes_native_endian() {
        let m = message(0x15, NLM_F_REQUEST | NLM_F_ACK, 7, &[1, 2, 3, 4]);
        #[cfg(target_endian = "little")]
        assert_eq!(
            m,
            [
                20, 0, 0, 0, 0x15, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4
            ]
        );
        assert_eq!(
            Header::parse(&m),
            Some(Header {
                len: 20,
                ty: 0x15,
                flags: 5,
                seq: 7,
                pid: 0
            })
        );
        let mut m = m;
        set_seq(&mut m, 9);
        assert_eq!(Header::parse(&m).unwrap().seq, 9);
        let e = Exchange::for_request(&m);
        assert_eq!((e.seq(), e.ack), (9, true));
        // Too short to hold a header: left alone, no panic.
        let mut tiny = [0u8; 3];
        set_seq(&mut tiny, 1);
        finish(&mut tiny);
        assert_eq!(tiny, [0; 3]);
        assert_eq!(Header::parse(&tiny), None);
    }

    /// The 16-byte NLMSG_ERROR (a bare header, no `struct nlmsgerr`) used
    /// to index past its end and panic in devlink, and was read as an ack
    /// by tc; it is a decode error.
    #[test]
    fn sixteen_byte_nlmsg_error_is_an_error_not_a_panic() {
        #[cfg(target_endian = "little")]
        assert_eq!(
            nlmsg_error(16, 0),
            [16, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]
        );
        let e = decode(&nlmsg_error(16, 0)).unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{e}");
        assert!(
            e.to_string().contains("truncated NLMSG_ERROR (16 bytes"),
            "{e}"
        );
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidData);
        // With the error code but without the original header (20 and 35
        // bytes): still shorter than a nlmsgerr, still an error.
        for len in [17, 20, 35] {
            let e = decode(&nlmsg_error(len, -19)).unwrap_err();
            assert!(matches!(e, Error::Malformed(_)), "{len}: {e}");
        }
    }

    #[test]
    fn full_nlmsg_error_is_an_ack_or_the_errno() {
        // 36 bytes: header, error 0, original header — the kernel's ack.
        let ack = nlmsg_error(36, 0);
        assert_eq!(ack.len(), 36);
        assert_eq!(decode(&ack).unwrap(), (true, vec![]));
        // -ENODEV, with the original request's payload echoed after it.
        let mut err = nlmsg_error(36, -19);
        err[0] = 56;
        err.extend_from_slice(&[0u8; 20]);
        let e = decode(&err).unwrap_err();
        assert_eq!(e.errno(), Some(19));
        assert_eq!(io::Error::from(e).raw_os_error(), Some(19));
        // A positive error code is malformed; the most negative one is an
        // error, not an overflow panic.
        assert!(matches!(
            decode(&nlmsg_error(36, 5)).unwrap_err(),
            Error::Malformed(_)
        ));
        let e = decode(&nlmsg_error(36, i32::MIN)).unwrap_err();
        assert_eq!(e.errno(), Some(i32::MAX));
        // tc's vector: -ENOENT for seq 7.
        let e = decode(&nlmsg_error(36, -libc::ENOENT)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn replies_then_done_and_other_sequences_skipped() {
        // A genl reply (cmd 30, version 1, ESWITCH_MODE 1) for seq 7, one for
        // seq 8 (not ours), then NLMSG_DONE — in one datagram.
        let mut b = nlmsghdr(28, 0x15, NLM_F_MULTI, 7);
        b.extend_from_slice(&[30, 1, 0, 0, 0x06, 0x00, 25, 0x00, 0x01, 0x00, 0x00, 0x00]);
        let mut other = nlmsghdr(20, 0x15, NLM_F_MULTI, 8);
        other.extend_from_slice(&[30, 1, 0, 0]);
        b.extend_from_slice(&other);
        b.extend_from_slice(&nlmsghdr(20, NLMSG_DONE, NLM_F_MULTI, 7));
        b.extend_from_slice(&0i32.to_ne_bytes());
        let (done, out) = decode(&b).unwrap();
        assert!(done);
        assert_eq!(
            out,
            vec![vec![
                30, 1, 0, 0, 0x06, 0x00, 25, 0x00, 0x01, 0x00, 0x00, 0x00
            ]]
        );
        // Only a reply, no terminator yet: wait for more.
        assert!(!decode(&b[..28]).unwrap().0);
    }

    /// tc's dump vectors: NLMSG_DONE ends a dump, answers to other requests
    /// are skipped, a single non-multipart answer to a request without
    /// `NLM_F_ACK` ends it; with `NLM_F_ACK` the ack ends it.
    #[test]
    fn multipart_done_and_single_answers() {
        let q = [
            0u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0x56, 0x4e, 0xff, 0xff, 0xff, 0xff,
        ];
        let mut dgram = nlmsg(36, NLM_F_MULTI, 7, &q);
        dgram.extend(nlmsg(36, NLM_F_MULTI, 6, &q));
        let mut ex = Exchange::new(7, false);
        let mut out = Vec::new();
        let mut collect = |_: &Header, p: &[u8]| {
            out.push(p.to_vec());
            Ok::<(), Error>(())
        };
        assert!(!ex.feed(&dgram, &mut collect).unwrap());
        let done = nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, &[0; 4]);
        assert!(ex.feed(&done, &mut collect).unwrap());
        assert_eq!(out, vec![q.to_vec()]);

        let one = nlmsg(36, 0, 3, &q);
        let mut single = Vec::new();
        assert!(decode_replies(&one, 3, false, &mut single).unwrap());
        assert_eq!(single.len(), 1);
        // With NLM_F_ACK asked for, the answer alone does not end it.
        assert!(!decode_replies(&one, 3, true, &mut Vec::new()).unwrap());
        // Truncated lengths: an error, never a panic.
        for cut in 1..one.len() {
            assert!(decode_replies(&one[..cut], 3, false, &mut Vec::new()).is_err());
        }
        // A dump that failed: the negative code in NLMSG_DONE.
        let failed = nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, &(-libc::EINTR).to_ne_bytes());
        let e = decode_replies(&failed, 7, false, &mut Vec::new()).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINTR));
    }

    #[test]
    fn malformed_lengths_are_errors() {
        // Length past the datagram, length below a header, trailing bytes.
        let long = nlmsghdr(64, 0x15, 0, 7);
        assert!(matches!(decode(&long).unwrap_err(), Error::Malformed(_)));
        let short = nlmsghdr(4, 0x15, 0, 7);
        assert!(matches!(decode(&short).unwrap_err(), Error::Malformed(_)));
        let mut tail = nlmsg_error(36, 0);
        tail.truncate(10);
        assert!(decode(&tail).is_err());
        assert_eq!(decode(&[]).unwrap(), (false, vec![]));
        // The iterator reports the error once, then ends.
        let mut it = messages(&long);
        assert!(matches!(it.next(), Some(Err(_))));
        assert!(it.next().is_none());
    }

    #[test]
    fn a_callback_error_ends_the_exchange() {
        let one = nlmsg(36, 0, 3, &[0; 4]);
        let e = Exchange::new(3, true)
            .feed(&one, |_, _| Err(Error::Malformed("refused".into())))
            .unwrap_err();
        assert!(e.to_string().contains("refused"));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::default();
        runner
            .run(
                &(
                    proptest::collection::vec(any::<u8>(), 0..200),
                    any::<u32>(),
                    any::<bool>(),
                ),
                |(bytes, seq, ack)| {
                    let mut out = Vec::new();
                    let _ = decode_replies(&bytes, seq, ack, &mut out);
                    Ok(())
                },
            )
            .unwrap();
        // Every prefix of a valid exchange, too.
        let mut valid = nlmsghdr(28, 0x15, NLM_F_MULTI, 7);
        valid.extend_from_slice(&[30, 1, 0, 0, 0x06, 0x00, 25, 0x00, 0x01, 0x00, 0x00, 0x00]);
        valid.extend_from_slice(&nlmsg_error(36, 0));
        for n in 0..=valid.len() {
            let _ = decode(&valid[..n]);
        }
    }
}
