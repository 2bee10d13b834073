//! Encoding and decoding of XFRM netlink messages; pure, no I/O.
//!
//! The message types and constants are in `types`, the byte encoding in
//! `encode`, the decoding in `decode`; all are re-exported here.

mod decode;
mod encode;
mod types;

pub use decode::decode;
pub(crate) use decode::decode_message;
pub use encode::{encode_policy_report, encode_sa_report};
pub use types::*;

#[cfg(test)]
mod fixtures {
    //! Policies and SAs the encoding and decoding tests share.

    use std::net::Ipv4Addr;

    use super::*;
    use crate::keys::SaKey;
    use crate::model::Cipher;

    pub(super) const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub(super) const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    pub(super) fn iproute_policy() -> Policy {
        Policy::new(
            Selector::v4(
                "10.1.0.0/16".parse().unwrap(),
                "10.2.0.0/16".parse().unwrap(),
            ),
            Dir::Out,
            vec![Tmpl::esp_v4(A, B, 0x0d50_0001, XFRM_MODE_TUNNEL)],
        )
    }

    pub(super) fn iproute_sa() -> Sa {
        let mut sa = Sa::esp_v4(A, B, 0x1001, 0x0d50_0001, XFRM_MODE_TUNNEL);
        sa.aead = Some(Aead {
            name: AEAD_RFC4106_GCM_AES.into(),
            icv_bits: 128,
            key: SaKey::from_hex(
                "00112233445566778899aabbccddeeff01020304",
                Cipher::AesGcm128,
            )
            .unwrap(),
        });
        sa
    }
}

#[cfg(test)]
mod tests {
    //! Round trips: what `encode` writes, `decode` reads back unchanged.

    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::keys::SaKey;

    fn arb_v4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    fn arb_selector() -> impl Strategy<Value = Selector> {
        (
            arb_v4(),
            0u8..=32,
            arb_v4(),
            0u8..=32,
            any::<u8>(),
            any::<(u16, u16)>(),
        )
            .prop_map(|(d, pd, s, ps, proto, (dport, sport))| Selector {
                family: AF_INET,
                daddr: IpAddr::V4(d),
                prefixlen_d: pd,
                saddr: IpAddr::V4(s),
                prefixlen_s: ps,
                dport,
                dport_mask: 0xffff,
                sport,
                sport_mask: 0,
                proto,
                ifindex: 3,
                user: 0,
            })
    }

    fn arb_sa() -> impl Strategy<Value = Sa> {
        (
            arb_selector(),
            arb_v4(),
            arb_v4(),
            any::<u32>(),
            any::<u32>(),
            0u8..2,
            proptest::collection::vec(any::<u8>(), 20..=36),
            proptest::option::of(1u32..4096),
            proptest::option::of((any::<i32>(), 0u8..8)),
            proptest::option::of((any::<u32>(), any::<u32>())),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                |(sel, s, d, spi, reqid, mode, key, esn, off, mark, if_id)| {
                    let mut sa = Sa::esp_v4(s, d, spi, reqid, mode);
                    sa.sel = sel;
                    sa.aead = Some(Aead {
                        name: AEAD_RFC4106_GCM_AES.into(),
                        icv_bits: 128,
                        key: SaKey::from_bytes(zeroize::Zeroizing::new(key)),
                    });
                    if let Some(w) = esn {
                        sa.flags = XFRM_STATE_ESN;
                        sa.replay_esn = Some(ReplayEsn {
                            replay_window: w,
                            ..Default::default()
                        });
                    } else {
                        sa.replay_window = 32;
                    }
                    sa.offload = off.map(|(ifindex, flags)| OffloadDev { ifindex, flags });
                    sa.mark = mark.map(|(value, mask)| Mark { value, mask });
                    sa.if_id = if_id;
                    sa
                },
            )
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (
            arb_selector(),
            any::<u32>(),
            0u8..3,
            proptest::collection::vec((arb_v4(), arb_v4(), any::<u32>(), 0u8..2), 0..3),
            proptest::option::of((any::<u32>(), any::<u32>())),
            proptest::option::of((any::<i32>(), 0u8..8)),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(sel, priority, dir, tmpls, mark, off, if_id)| Policy {
                sel,
                priority,
                index: 0,
                dir: Dir::from_u8(dir),
                action: 0,
                flags: 0,
                share: 0,
                tmpls: tmpls
                    .into_iter()
                    .map(|(s, d, reqid, mode)| Tmpl::esp_v4(s, d, reqid, mode))
                    .collect(),
                mark: mark.map(|(value, mask)| Mark { value, mask }),
                if_id,
                offload: off.map(|(ifindex, flags)| OffloadDev { ifindex, flags }),
            })
    }

    proptest! {
        #[test]
        fn sa_round_trips(sa in arb_sa(), seq in any::<u32>()) {
            let m = decode(&encode_sa_report(&sa, seq)).unwrap();
            prop_assert_eq!(m.len(), 1);
            prop_assert_eq!(m[0].seq, seq);
            prop_assert_eq!(&m[0].reply, &Reply::Sa(Box::new(sa)));
        }

        #[test]
        fn policy_round_trips(p in arb_policy()) {
            let m = decode(&encode_policy_report(&p, 5)).unwrap();
            prop_assert_eq!(&m[0].reply, &Reply::Policy(Box::new(p)));
        }
    }
}
