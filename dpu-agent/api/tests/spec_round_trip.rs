//! Property: every spec survives `to_value` then `Spec::parse` unchanged,
//! whatever the values (validation is not part of parsing).

use dpu_api::Kind;
use dpu_api::spec::*;
use dpu_api::types::{Ipv4Cidr, Mac, Nqn, PfName, PortRange};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        any::<String>(),
    ]
}

fn pf_name() -> impl Strategy<Value = PfName> {
    "[a-zA-Z0-9_-]{1,15}".prop_map(|s| s.parse().expect("a valid PF name"))
}

fn nqn() -> impl Strategy<Value = Nqn> {
    "nqn\\.[0-9]{4}-[0-9]{2}\\.[a-z.]{1,30}:[!-~]{0,60}"
        .prop_map(|s| s.parse().expect("a valid NQN"))
}

fn mac() -> impl Strategy<Value = Mac> {
    any::<[u8; 6]>()
        .prop_map(|mut m| {
            m[0] &= 0xfe;
            Mac(m)
        })
        .prop_filter("not all zeros", |m| m.0 != [0; 6])
}

fn cidr() -> impl Strategy<Value = Ipv4Cidr> {
    (any::<Ipv4Addr>(), 0u8..=32)
        .prop_map(|(a, l)| Ipv4Cidr(ipnet::Ipv4Net::new(a, l).unwrap().trunc()))
}

fn ports() -> impl Strategy<Value = PortRange> {
    (1u16.., 1u16..).prop_map(|(a, b)| PortRange {
        lo: a.min(b),
        hi: a.max(b),
    })
}

fn tenant() -> impl Strategy<Value = TenantSpec> {
    (
        of(text()),
        of((of(any::<u32>()), of(any::<u32>()), of(any::<u32>()))),
    )
        .prop_map(|(description, quotas)| TenantSpec {
            description,
            quotas: quotas.map(|(functions, volumes, tunnels)| Quotas {
                functions,
                volumes,
                tunnels,
                ..Quotas::default()
            }),
            grants: None,
        })
}

fn function() -> impl Strategy<Value = FunctionSpec> {
    (
        (
            prop_oneof![
                Just(FunctionType::Net),
                Just(FunctionType::Nvme),
                Just(FunctionType::VirtioBlk)
            ],
            pf_name(),
            of(any::<u32>()),
            of(text()),
            of(prop_oneof![Just(Attach::Kernel), Just(Attach::Vfio)]),
            of(mac()),
            of(any::<u16>()),
            of(any::<u32>()),
            of(any::<bool>()),
            of(any::<bool>()),
            any::<bool>(),
        ),
        of(prop_oneof![Just(Carve::Vf), Just(Carve::Sf)]),
        of(any::<u32>()),
    )
        .prop_map(
            |(
                (
                    type_,
                    pf,
                    vf,
                    host,
                    attach,
                    mac,
                    vlan,
                    max_tx_rate_mbps,
                    trust,
                    spoof_check,
                    rdma,
                ),
                carve,
                sf,
            )| {
                FunctionSpec {
                    type_,
                    pf,
                    carve,
                    vf,
                    sf,
                    host,
                    attach,
                    mac,
                    vlan,
                    max_tx_rate_mbps,
                    trust,
                    spoof_check,
                    rdma,
                }
            },
        )
}

fn network() -> impl Strategy<Value = NetworkSpec> {
    (
        any::<u32>(),
        cidr(),
        of(any::<u16>()),
        prop_oneof![Just(Encap::Vxlan), Just(Encap::Geneve), Just(Encap::Local)],
    )
        .prop_map(|(vni, cidr, mtu, encap)| NetworkSpec {
            vni,
            cidr,
            mtu,
            encap,
        })
}

fn rule() -> impl Strategy<Value = SecurityRule> {
    (
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp),
            Just(Protocol::Any)
        ],
        of(cidr()),
        of(ports()),
    )
        .prop_map(|(protocol, cidr, ports)| SecurityRule {
            protocol,
            cidr,
            ports,
        })
}

fn port() -> impl Strategy<Value = PortSpec> {
    (
        text(),
        text(),
        mac(),
        vec(any::<Ipv4Addr>(), 0..4),
        of((vec(rule(), 0..3), of(vec(rule(), 0..3)))),
        of((any::<u32>(), any::<u32>())),
    )
        .prop_map(|(network, function, mac, ips, security, qos)| PortSpec {
            network,
            function,
            mac,
            ips,
            security: security.map(|(ingress, egress)| Security { ingress, egress }),
            qos: qos.map(|(max_rate_mbps, burst_kb)| PortQos {
                max_rate_mbps,
                burst_kb,
            }),
        })
}

fn endpoint() -> impl Strategy<Value = EndpointSpec> {
    (
        text(),
        mac(),
        vec(any::<Ipv4Addr>(), 0..4),
        any::<Ipv4Addr>(),
    )
        .prop_map(|(network, mac, ips, vtep)| EndpointSpec {
            network,
            mac,
            ips,
            vtep,
        })
}

fn volume() -> impl Strategy<Value = VolumeSpec> {
    let source = prop_oneof![
        (
            prop_oneof![Just(NvmeofTransport::Tcp), Just(NvmeofTransport::Rdma)],
            text(),
            any::<u16>(),
            nqn(),
            of(nqn()),
        )
            .prop_map(|(transport, address, port, subnqn, hostnqn)| {
                VolumeSource::Nvmeof(NvmeofSource {
                    transport,
                    address,
                    port,
                    subnqn,
                    hostnqn,
                })
            }),
        any::<u64>().prop_map(|size_mib| VolumeSource::Local(LocalSource { size_mib })),
    ];
    (
        text(),
        of(any::<u32>()),
        source,
        of((of(any::<u64>()), of(any::<u64>()))),
        of(any::<bool>()),
    )
        .prop_map(|(function, nsid, source, qos, read_only)| VolumeSpec {
            function,
            nsid,
            source,
            qos: qos.map(|(max_iops, max_mbps)| VolumeQos { max_iops, max_mbps }),
            read_only,
        })
}

fn ipsec() -> impl Strategy<Value = IpsecTunnelSpec> {
    (
        (text(), text(), vec(text(), 0..3), vec(text(), 0..3)),
        prop_oneof![Just(IpsecMode::Tunnel), Just(IpsecMode::Transport)],
        prop_oneof![Just(Cipher::AesGcm128), Just(Cipher::AesGcm256)],
        (any::<u32>(), any::<u32>()),
        ("[0-9a-f]{40}", "[0-9a-f]{72}"),
        of(any::<u32>()),
        of(any::<bool>()),
        prop_oneof![
            Just(OffloadRequest::Auto),
            Just(OffloadRequest::Packet),
            Just(OffloadRequest::Crypto),
            Just(OffloadRequest::None)
        ],
    )
        .prop_map(
            |(
                (local, remote, local_subnets, remote_subnets),
                mode,
                cipher,
                (spi_in, spi_out),
                (key_in, key_out),
                replay_window,
                esn,
                offload,
            )| IpsecTunnelSpec {
                local,
                remote,
                local_subnets,
                remote_subnets,
                mode,
                cipher,
                spi_in,
                spi_out,
                key_in: key_in.into(),
                key_out: key_out.into(),
                replay_window,
                esn,
                offload,
                scope: None,
            },
        )
}

fn tls_listener() -> impl Strategy<Value = TlsListenerSpec> {
    (
        text(),
        text(),
        text(),
        text(),
        of(text()),
        of(vec(text(), 0..3)),
        prop_oneof![Just(Ktls::Auto), Just(Ktls::Off)],
    )
        .prop_map(
            |(listen, upstream, certificate_pem, private_key_pem, client_ca_pem, alpn, ktls)| {
                TlsListenerSpec {
                    listen,
                    upstream,
                    certificate_pem,
                    private_key_pem: private_key_pem.into(),
                    client_ca_pem,
                    alpn,
                    ktls,
                }
            },
        )
}

fn any_spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        tenant().prop_map(Spec::Tenant),
        function().prop_map(Spec::Function),
        network().prop_map(Spec::Network),
        port().prop_map(Spec::Port),
        endpoint().prop_map(Spec::Endpoint),
        volume().prop_map(Spec::Volume),
        ipsec().prop_map(Spec::IpsecTunnel),
        tls_listener().prop_map(Spec::TlsListener),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn spec_survives_to_value_and_parse(spec in any_spec()) {
        let value = spec.to_value();
        let back = Spec::parse(spec.kind(), &value)
            .map_err(|e| TestCaseError::fail(format!("{e} in {value}")))?;
        prop_assert_eq!(back, spec);
    }

    #[test]
    fn spec_survives_json_text(spec in any_spec()) {
        // Through bytes too, as the API sees it.
        let text = serde_json::to_string(&spec.to_value()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Spec::parse(spec.kind(), &value).unwrap(), spec);
    }

    #[test]
    fn spec_survives_the_stores_reading(spec in any_spec()) {
        // As the store reads a row: typed straight from the text.
        let text = serde_json::to_string(&spec.to_value()).unwrap();
        let back = Spec::parse_stored(spec.kind(), &text)
            .map_err(|e| TestCaseError::fail(format!("{e} in {text}")))?;
        prop_assert_eq!(back, spec);
    }

    #[test]
    fn a_spec_parses_only_as_its_own_kind_or_fails_cleanly(spec in any_spec()) {
        // Parsing as another kind may fail but must not panic.
        let value = spec.to_value();
        for kind in Kind::ALL {
            let _ = Spec::parse(kind, &value);
        }
    }
}
