//! Decoding netlink bytes from the kernel into typed replies; never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dpu_netlink::msg::{self, Header};
use zeroize::Zeroizing;

use super::types::*;
use crate::keys::SaKey;

struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn new(b: &'a [u8], what: &'static str, need: usize) -> Result<Rd<'a>, WireError> {
        if b.len() < need {
            return Err(WireError::Truncated {
                what,
                got: b.len(),
                need,
            });
        }
        Ok(Rd { b, at: 0 })
    }
    fn take<const N: usize>(&mut self) -> [u8; N] {
        // Callers check the length up front in `new`.
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.take())
    }
    fn be16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
    fn be32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn i32(&mut self) -> i32 {
        i32::from_ne_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }
    fn skip(&mut self, n: usize) {
        self.at += n;
    }
    fn raw_addr(&mut self) -> [u8; 16] {
        self.take()
    }
}

fn addr_of(raw: [u8; 16], family: u16) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

fn get_selector(r: &mut Rd<'_>) -> Selector {
    let d = r.raw_addr();
    let s = r.raw_addr();
    let dport = r.be16();
    let dport_mask = r.be16();
    let sport = r.be16();
    let sport_mask = r.be16();
    let family = r.u16();
    let prefixlen_d = r.u8();
    let prefixlen_s = r.u8();
    let proto = r.u8();
    r.skip(3);
    let ifindex = r.i32();
    let user = r.u32();
    Selector {
        family,
        daddr: addr_of(d, family),
        prefixlen_d,
        saddr: addr_of(s, family),
        prefixlen_s,
        dport,
        dport_mask,
        sport,
        sport_mask,
        proto,
        ifindex,
        user,
    }
}

fn get_counters(r: &mut Rd<'_>) -> Counters {
    Counters {
        bytes: r.u64(),
        packets: r.u64(),
        add_time: r.u64(),
        use_time: r.u64(),
    }
}

/// Attributes after a fixed header: (type without flags, payload), read
/// by the shared attribute reader.
fn attrs(b: &[u8]) -> dpu_netlink::attr::Attrs<'_> {
    dpu_netlink::attr::attrs(b)
}

struct CommonAttrs {
    mark: Option<Mark>,
    if_id: Option<u32>,
    offload: Option<OffloadDev>,
}

fn common_attr(c: &mut CommonAttrs, type_: u16, p: &[u8]) {
    match type_ {
        XFRMA_MARK if p.len() >= 8 => {
            c.mark = Some(Mark {
                value: u32::from_ne_bytes([p[0], p[1], p[2], p[3]]),
                mask: u32::from_ne_bytes([p[4], p[5], p[6], p[7]]),
            })
        }
        XFRMA_IF_ID if p.len() >= 4 => c.if_id = Some(u32::from_ne_bytes([p[0], p[1], p[2], p[3]])),
        XFRMA_OFFLOAD_DEV if p.len() >= 5 => {
            c.offload = Some(OffloadDev {
                ifindex: i32::from_ne_bytes([p[0], p[1], p[2], p[3]]),
                flags: p[4],
            })
        }
        _ => {}
    }
}

fn decode_sa(body: &[u8]) -> Result<Sa, WireError> {
    let mut r = Rd::new(body, "xfrm_usersa_info", USERSA_INFO_LEN)?;
    let sel = get_selector(&mut r);
    let daddr = r.raw_addr();
    let spi = r.be32();
    let proto = r.u8();
    r.skip(3);
    let saddr = r.raw_addr();
    r.skip(64); // lifetime_cfg
    let counters = get_counters(&mut r);
    let stats = SaStats {
        replay_window: r.u32(),
        replay: r.u32(),
        integrity_failed: r.u32(),
    };
    let _seq = r.u32();
    let reqid = r.u32();
    let family = r.u16();
    let mode = r.u8();
    let replay_window = r.u8();
    let flags = r.u8();
    let mut sa = Sa {
        sel,
        daddr: addr_of(daddr, family),
        spi,
        proto,
        saddr: addr_of(saddr, family),
        family,
        reqid,
        mode,
        replay_window,
        flags,
        counters,
        stats,
        aead: None,
        replay_esn: None,
        offload: None,
        mark: None,
        if_id: None,
    };
    let mut common = CommonAttrs {
        mark: None,
        if_id: None,
        offload: None,
    };
    for (type_, p) in attrs(&body[USERSA_INFO_LEN..]) {
        match type_ {
            XFRMA_ALG_AEAD if p.len() >= ALGO_AEAD_HDR_LEN => {
                let name_end = p[..64].iter().position(|&c| c == 0).unwrap_or(64);
                let name = String::from_utf8_lossy(&p[..name_end]).into_owned();
                let key_bits = u32::from_ne_bytes([p[64], p[65], p[66], p[67]]) as usize;
                let icv_bits = u32::from_ne_bytes([p[68], p[69], p[70], p[71]]);
                let key_len = key_bits.div_ceil(8).min(p.len() - ALGO_AEAD_HDR_LEN);
                let key =
                    Zeroizing::new(p[ALGO_AEAD_HDR_LEN..ALGO_AEAD_HDR_LEN + key_len].to_vec());
                sa.aead = Some(Aead {
                    name,
                    icv_bits,
                    key: SaKey::from_bytes(key),
                });
            }
            XFRMA_LTIME_CUR if p.len() >= 32 => {
                // The kernel writes both copies from `x->curlft` in one
                // call; the attribute is the one iproute2 prints, so it wins.
                let mut lr = Rd::new(p, "XFRMA_LTIME_CUR", 32)?;
                sa.counters = get_counters(&mut lr);
            }
            XFRMA_REPLAY_ESN_VAL if p.len() >= REPLAY_ESN_HDR_LEN => {
                let w = |i: usize| u32::from_ne_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
                sa.replay_esn = Some(ReplayEsn {
                    oseq: w(4),
                    seq: w(8),
                    oseq_hi: w(12),
                    seq_hi: w(16),
                    replay_window: w(20),
                });
            }
            t => common_attr(&mut common, t, p),
        }
    }
    sa.mark = common.mark;
    sa.if_id = common.if_id;
    sa.offload = common.offload;
    Ok(sa)
}

fn decode_policy(body: &[u8]) -> Result<Policy, WireError> {
    let mut r = Rd::new(body, "xfrm_userpolicy_info", USERPOLICY_INFO_LEN)?;
    let sel = get_selector(&mut r);
    r.skip(64 + 32); // lifetime_cfg, lifetime_cur
    let priority = r.u32();
    let index = r.u32();
    let dir = Dir::from_u8(r.u8());
    let action = r.u8();
    let flags = r.u8();
    let share = r.u8();
    let mut p = Policy {
        sel,
        priority,
        index,
        dir,
        action,
        flags,
        share,
        tmpls: Vec::new(),
        mark: None,
        if_id: None,
        offload: None,
    };
    let mut common = CommonAttrs {
        mark: None,
        if_id: None,
        offload: None,
    };
    for (type_, a) in attrs(&body[USERPOLICY_INFO_LEN..]) {
        if type_ == XFRMA_TMPL {
            for chunk in a.chunks_exact(USER_TMPL_LEN) {
                let mut r = Rd::new(chunk, "xfrm_user_tmpl", USER_TMPL_LEN)?;
                let daddr = r.raw_addr();
                let spi = r.be32();
                let proto = r.u8();
                r.skip(3);
                let family = r.u16();
                r.skip(2);
                let saddr = r.raw_addr();
                let reqid = r.u32();
                let mode = r.u8();
                let share = r.u8();
                let optional = r.u8();
                r.skip(1);
                p.tmpls.push(Tmpl {
                    daddr: addr_of(daddr, family),
                    spi,
                    proto,
                    family,
                    saddr: addr_of(saddr, family),
                    reqid,
                    mode,
                    share,
                    optional,
                    aalgos: r.u32(),
                    ealgos: r.u32(),
                    calgos: r.u32(),
                });
            }
        } else {
            common_attr(&mut common, type_, a);
        }
    }
    p.mark = common.mark;
    p.if_id = common.if_id;
    p.offload = common.offload;
    Ok(p)
}

/// Decodes one netlink message (header, payload after it) into its reply.
pub(crate) fn decode_message(h: &Header, body: &[u8]) -> Result<Message, WireError> {
    let reply = match h.ty {
        NLMSG_ERROR => match msg::error_of(body) {
            Ok(()) => Reply::Error(0),
            Err(dpu_netlink::Error::Kernel(e)) => {
                Reply::Error(e.raw_os_error().unwrap_or(i32::MAX).saturating_neg())
            }
            Err(e) => return Err(WireError::Netlink(e.to_string())),
        },
        NLMSG_DONE => Reply::Done,
        XFRM_MSG_NEWSA => Reply::Sa(Box::new(decode_sa(body)?)),
        XFRM_MSG_NEWPOLICY => Reply::Policy(Box::new(decode_policy(body)?)),
        t => Reply::Other(t),
    };
    Ok(Message {
        seq: h.seq,
        flags: h.flags,
        reply,
    })
}

/// Decodes every netlink message in `buf` (one `recv`), split by the shared
/// netlink layer (`dpu_netlink::msg::messages`).
pub fn decode(buf: &[u8]) -> Result<Vec<Message>, WireError> {
    msg::messages(buf)
        .map(|m| {
            let (h, body) = m.map_err(|e| WireError::Netlink(e.to_string()))?;
            decode_message(&h, body)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::xfrm::wire::encode_sa_report;
    use crate::xfrm::wire::fixtures::*;

    #[test]
    fn decodes_error_and_done() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&36u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-17i32).to_ne_bytes());
        buf.extend_from_slice(&[0u8; 16]);
        buf.extend_from_slice(&16u32.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 10]);
        let m = decode(&buf).unwrap();
        assert_eq!(m[0].reply, Reply::Error(-17));
        assert_eq!(m[0].seq, 9);
        assert_eq!(m[1].reply, Reply::Done);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let msg = encode_sa_report(&iproute_sa(), 1);
        for cut in 0..msg.len() {
            let _ = decode(&msg[..cut]);
        }
        let mut short = msg[..100].to_vec();
        short[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(decode(&short).is_err());
    }

    /// A dump reply laid out by hand from `include/uapi/linux/xfrm.h`:
    /// `xfrm_usersa_info` is `sel` (56) · `id` (24) · `saddr` (16) · `lft` (64) ·
    /// `curlft` at offset 160 (`bytes`, `packets`, `add_time`, `use_time`, u64
    /// each) · `stats` at 192 (`replay_window`, `replay`, `integrity_failed`,
    /// u32 each) · `seq` 204 · `reqid` 208 · `family` 212 · `mode` 214 ·
    /// `replay_window` 215 · `flags` 216 · 7 bytes padding = 224; then
    /// `XFRMA_PAD` (27, empty, from `nla_put_64bit`) and `XFRMA_LTIME_CUR` (6,
    /// a 32-byte `xfrm_lifetime_cur`), as `copy_to_user_state_extra` emits them.
    #[test]
    fn counters_and_stats_decode_from_the_uapi_layout() {
        let mut body = vec![0u8; 224];
        body[52..56].copy_from_slice(&0u32.to_ne_bytes()); // sel.user
        body[56..60].copy_from_slice(&[192, 0, 2, 2]); // id.daddr
        body[72..76].copy_from_slice(&0x1001u32.to_be_bytes()); // id.spi
        body[76] = IPPROTO_ESP;
        body[80..84].copy_from_slice(&[192, 0, 2, 1]); // saddr
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        // The body's curlft: stale values, overridden by the attribute.
        put64(&mut body, 160, 1);
        put64(&mut body, 168, 2);
        body[192..196].copy_from_slice(&3u32.to_ne_bytes());
        body[196..200].copy_from_slice(&5u32.to_ne_bytes());
        body[200..204].copy_from_slice(&7u32.to_ne_bytes());
        body[208..212].copy_from_slice(&0x0d50_0001u32.to_ne_bytes());
        body[212..214].copy_from_slice(&AF_INET.to_ne_bytes());
        body[214] = XFRM_MODE_TUNNEL;
        // XFRMA_PAD, then XFRMA_LTIME_CUR.
        body.extend_from_slice(&4u16.to_ne_bytes());
        body.extend_from_slice(&27u16.to_ne_bytes());
        body.extend_from_slice(&36u16.to_ne_bytes());
        body.extend_from_slice(&XFRMA_LTIME_CUR.to_ne_bytes());
        for v in [123_456u64, 789, 1_700_000_000, 1_700_000_100] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&XFRM_MSG_NEWSA.to_ne_bytes());
        msg.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        msg.extend_from_slice(&4u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        let m = decode(&msg).unwrap();
        let Reply::Sa(sa) = &m[0].reply else {
            panic!("not an SA: {:?}", m[0].reply);
        };
        assert_eq!(sa.spi, 0x1001);
        assert_eq!(sa.reqid, 0x0d50_0001);
        assert_eq!(
            sa.counters,
            Counters {
                bytes: 123_456,
                packets: 789,
                add_time: 1_700_000_000,
                use_time: 1_700_000_100,
            }
        );
        assert_eq!(
            sa.stats,
            SaStats {
                replay_window: 3,
                replay: 5,
                integrity_failed: 7,
            }
        );
        // Without the attribute the body's copy is used.
        let plain = &msg[..16 + 224];
        let mut plain = plain.to_vec();
        plain[0..4].copy_from_slice(&(16u32 + 224).to_ne_bytes());
        let Reply::Sa(sa) = &decode(&plain).unwrap()[0].reply else {
            panic!("not an SA");
        };
        assert_eq!((sa.counters.bytes, sa.counters.packets), (1, 2));
        // A short attribute is ignored, not a panic.
        let mut short = msg[..16 + 224 + 4 + 20].to_vec();
        short[16 + 224 + 4..16 + 224 + 6].copy_from_slice(&20u16.to_ne_bytes());
        let len = short.len() as u32;
        short[0..4].copy_from_slice(&len.to_ne_bytes());
        let Reply::Sa(sa) = &decode(&short).unwrap()[0].reply else {
            panic!("not an SA");
        };
        assert_eq!(sa.counters.bytes, 1);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
