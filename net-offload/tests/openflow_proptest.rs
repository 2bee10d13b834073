//! Property tests for the OpenFlow codec: encode → decode → equal, flow →
//! ovs-ofctl text → flow → equal, and the decoder never panics on arbitrary or
//! corrupted bytes (the fuzz target in `fuzz/` does the same at scale).

use bytes::BytesMut;
use net_offload::openflow::{
    Action, Ct, CtZone, Field, Flow, FlowEntry, FlowMod, FlowModCommand, Instructions, Match,
    Message, MultipartReply, MultipartReplyBody, RegMove, Version, WriteMetadata, decode, encode,
    port,
};
use proptest::prelude::*;

fn field() -> impl Strategy<Value = Field> {
    let all: Vec<Field> = Field::all().collect();
    proptest::sample::select(all)
}

fn match_strategy() -> impl Strategy<Value = Match> {
    proptest::collection::vec((field(), any::<u64>(), any::<u64>(), any::<bool>()), 0..8).prop_map(
        |items| {
            let mut m = Match::new();
            for (f, v, mask, masked) in items {
                // in_port is not maskable in OXM.
                let mask = (masked && f != Field::InPort).then_some(mask);
                m.set(f, v, mask);
            }
            m
        },
    )
}

fn subfield(max_bits: u16) -> impl Strategy<Value = (Field, u16, u16)> {
    field().prop_flat_map(move |f| {
        let bits = f.bits().min(max_bits);
        (1..=bits).prop_flat_map(move |n| (Just(f), 0..=(f.bits() - n), Just(n)))
    })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        prop_oneof![
            any::<u32>(),
            Just(port::IN_PORT),
            Just(port::CONTROLLER),
            Just(port::LOCAL)
        ]
        .prop_map(Action::output),
        (field(), any::<u64>()).prop_map(|(f, v)| Action::set_field(f, v)),
        any::<u16>().prop_map(|ethertype| Action::PushVlan { ethertype }),
        Just(Action::PopVlan),
        Just(Action::DecTtl),
        (
            prop_oneof![Just(port::IN_PORT_16), any::<u16>()],
            any::<u8>()
        )
            .prop_map(|(port, table)| Action::Resubmit { port, table }),
        (
            any::<bool>(),
            any::<bool>(),
            prop_oneof![
                any::<u16>().prop_map(CtZone::Imm),
                subfield(16).prop_map(|(field, ofs, n_bits)| CtZone::Field { field, ofs, n_bits }),
            ],
            proptest::option::of(0u8..255),
            any::<u16>()
        )
            .prop_map(|(commit, force, zone, table, alg)| Action::Ct(Ct {
                commit,
                force,
                zone,
                table,
                alg
            })),
        (field(), field()).prop_flat_map(|(src, dst)| {
            let max = src.bits().min(dst.bits());
            (1..=max).prop_flat_map(move |n| {
                (0..=(src.bits() - n), 0..=(dst.bits() - n)).prop_map(move |(so, d_o)| {
                    Action::Move(RegMove {
                        src,
                        src_ofs: so,
                        dst,
                        dst_ofs: d_o,
                        n_bits: n,
                    })
                })
            })
        }),
    ]
}

fn instructions() -> impl Strategy<Value = Instructions> {
    (
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(action(), 0..6),
        proptest::option::of((any::<u64>(), any::<u64>())),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(meter, apply, wm, goto_table)| Instructions {
            meter,
            apply,
            raw: Vec::new(),
            write_metadata: wm.map(|(value, mask)| WriteMetadata { value, mask }),
            goto_table,
        })
}

fn flow() -> impl Strategy<Value = Flow> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<u64>(),
        any::<u16>(),
        any::<u16>(),
        match_strategy(),
        instructions(),
    )
        .prop_map(
            |(table, priority, cookie, idle_timeout, hard_timeout, matches, instructions)| Flow {
                table,
                priority,
                cookie,
                idle_timeout,
                hard_timeout,
                matches,
                instructions,
            },
        )
}

fn round_trip(msg: &Message, version: Version) -> Message {
    let mut out = BytesMut::new();
    encode(msg, version, 42, &mut out).unwrap();
    let (header, decoded) = decode(&out).unwrap();
    assert_eq!(header.xid, 42);
    assert_eq!(usize::from(header.length), out.len());
    // Re-encoding the decoded message gives the same bytes.
    let mut again = BytesMut::new();
    encode(&decoded, version, 42, &mut again).unwrap();
    assert_eq!(out, again);
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn flow_mod_encode_decode(flow in flow(), cmd in 0..5usize, cookie_mask: u64, flags: u16,
                              importance: u16, of13: bool) {
        let command = [FlowModCommand::Add, FlowModCommand::Modify, FlowModCommand::ModifyStrict,
                       FlowModCommand::Delete, FlowModCommand::DeleteStrict][cmd];
        let version = if of13 { Version::Of13 } else { Version::Of14 };
        let fm = FlowMod { command, cookie_mask, flags,
                           importance: if of13 { 0 } else { importance }, ..FlowMod::add(flow) };
        let msg = Message::FlowMod(fm);
        prop_assert_eq!(round_trip(&msg, version), msg);
    }

    #[test]
    fn flow_stats_reply_encode_decode(flows in proptest::collection::vec(flow(), 0..4),
                                      packets: u64, bytes: u64, sec: u32, more: bool) {
        let entries = flows.into_iter().map(|flow| FlowEntry {
            flow, duration_sec: sec, duration_nsec: 5, flags: 0, importance: 3,
            packet_count: packets, byte_count: bytes,
        }).collect();
        let msg = Message::MultipartReply(MultipartReply {
            flags: u16::from(more), body: MultipartReplyBody::Flow(entries) });
        prop_assert_eq!(round_trip(&msg, Version::Of14), msg);
    }

    #[test]
    fn flow_text_round_trip(flow in flow()) {
        let text = flow.to_string();
        let parsed: Flow = text.parse().map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&parsed, &flow, "{}", text);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_corrupted_never_panics(flow in flow(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut out = BytesMut::new();
        encode(&Message::FlowMod(FlowMod::add(flow)), Version::Of14, 1, &mut out).unwrap();
        for (at, byte) in flips {
            let i = at % out.len();
            out[i] = byte;
        }
        let _ = decode(&out);
    }
}
