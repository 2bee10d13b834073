//! One table per validation rule of `dpu_api::validate`: each row is an
//! input and either `OK` or the field the error must name. Certificates and
//! keys are generated at test time with rcgen.

use std::collections::BTreeMap;

use dpu_api::Kind;
use dpu_api::spec::*;
use dpu_api::validate::*;
use serde_json::{Value, json};

/// The expected outcome of a row: accepted, or rejected naming this field.
type Want = Option<&'static str>;
const OK: Want = None;

fn check_rows<T>(rule: &str, rows: &[(T, Want)], run: impl Fn(&T) -> Result<(), FieldError>)
where
    T: std::fmt::Debug,
{
    let mut failures = Vec::new();
    for (input, want) in rows {
        let got = run(input);
        let matches = match (&got, want) {
            (Ok(()), None) => true,
            (Err(e), Some(field)) => e.field == *field,
            _ => false,
        };
        if !matches {
            failures.push(format!("  {input:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{rule}: {} row(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Parses and validates a spec on its own.
fn spec_check(kind: Kind, value: &Value) -> Result<(), FieldError> {
    let spec = Spec::parse(kind, value)?;
    validate_spec(&spec)
}

/// `base` with `patch`'s keys set (a `null` removes the key).
fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    let obj = v.as_object_mut().expect("base is an object");
    for (k, p) in patch.as_object().expect("patch is an object") {
        if p.is_null() {
            obj.remove(k);
        } else {
            obj.insert(k.clone(), p.clone());
        }
    }
    v
}

#[test]
fn dns_labels() {
    let long_ok = "a".repeat(63);
    let too_long = "a".repeat(64);
    let rows: Vec<(&str, Want)> = vec![
        ("a", OK),
        ("0", OK),
        ("web-1", OK),
        ("a-b-c9", OK),
        (long_ok.as_str(), OK),
        ("", Some("id")),
        (too_long.as_str(), Some("id")),
        ("-web", Some("id")),
        ("web-", Some("id")),
        ("Web", Some("id")),
        ("web_1", Some("id")),
        ("web.1", Some("id")),
        ("wéb", Some("id")),
        ("web 1", Some("id")),
    ];
    check_rows("check_label", &rows, |s| check_label("id", s));
}

#[test]
fn cidrs() {
    let rows: Vec<(&str, Want)> = vec![
        ("10.0.0.0/24", OK),
        ("192.168.0.0/16", OK),
        ("10.0.0.4/30", OK),
        ("10.0.0.1/24", Some("spec.cidr")),
        ("10.0.0.0/33", Some("spec.cidr")),
        ("10.0.0.0", Some("spec.cidr")),
        ("10.0.0/24", Some("spec.cidr")),
        ("fd00::/64", Some("spec.cidr")),
        ("::/0", Some("spec.cidr")),
        ("", Some("spec.cidr")),
    ];
    check_rows("parse_ipv4_cidr", &rows, |s| {
        parse_ipv4_cidr("spec.cidr", s).map(|_| ())
    });

    // A network needs room for at least two hosts.
    let net = json!({"vni": 10, "cidr": "10.0.0.0/24", "encap": "vxlan"});
    let rows: Vec<(&str, Want)> = vec![
        ("10.0.0.0/30", OK),
        ("10.0.0.0/8", OK),
        ("10.0.0.0/31", Some("spec.cidr")),
        ("10.0.0.0/32", Some("spec.cidr")),
        ("10.0.0.128/25", OK),
        ("10.0.0.129/25", Some("spec.cidr")),
        ("fd00::/64", Some("spec.cidr")),
    ];
    check_rows("network cidr", &rows, |cidr| {
        spec_check(Kind::Network, &with(&net, json!({"cidr": cidr})))
    });
}

#[test]
fn macs() {
    let rows: Vec<(&str, Want)> = vec![
        ("02:00:00:00:00:01", OK),
        ("02:ab:CD:ef:00:01", OK),
        ("00:00:00:00:00:01", OK),
        ("fe:ff:ff:ff:ff:ff", OK),
        ("01:00:5e:00:00:01", Some("spec.mac")),
        ("ff:ff:ff:ff:ff:ff", Some("spec.mac")),
        ("03:00:00:00:00:01", Some("spec.mac")),
        ("00:00:00:00:00:00", Some("spec.mac")),
        ("02:00:00:00:00", Some("spec.mac")),
        ("02:00:00:00:00:01:02", Some("spec.mac")),
        ("02-00-00-00-00-01", Some("spec.mac")),
        ("0200.0000.0001", Some("spec.mac")),
        ("02:00:00:00:00:0g", Some("spec.mac")),
        ("2:00:00:00:00:01", Some("spec.mac")),
        ("002:00:00:00:00:1", Some("spec.mac")),
        ("+2:00:00:00:00:01", Some("spec.mac")),
        ("02:00:00:00:00:+1", Some("spec.mac")),
        ("", Some("spec.mac")),
    ];
    check_rows("parse_mac", &rows, |s| parse_mac("spec.mac", s).map(|_| ()));
}

#[test]
fn vni_range() {
    let net = json!({"vni": 10, "cidr": "10.0.0.0/24", "encap": "geneve"});
    let rows: Vec<(Value, Want)> = vec![
        (json!(1), OK),
        (json!(4096), OK),
        (json!(16_777_215), OK),
        (json!(0), Some("spec.vni")),
        (json!(16_777_216), Some("spec.vni")),
        (json!(u32::MAX), Some("spec.vni")),
        (json!(-1), Some("spec.vni")),
        (json!("5"), Some("spec.vni")),
        (json!(1.5), Some("spec.vni")),
    ];
    check_rows("network vni", &rows, |vni| {
        spec_check(Kind::Network, &with(&net, json!({"vni": vni})))
    });
}

#[test]
fn mtu_range() {
    let net = json!({"vni": 10, "cidr": "10.0.0.0/24", "encap": "local"});
    let rows: Vec<(Value, Want)> = vec![
        (Value::Null, OK),
        (json!(576), OK),
        (json!(1450), OK),
        (json!(9000), OK),
        (json!(575), Some("spec.mtu")),
        (json!(9001), Some("spec.mtu")),
        (json!(0), Some("spec.mtu")),
        (json!(65536), Some("spec.mtu")),
    ];
    check_rows("network mtu", &rows, |mtu| {
        spec_check(Kind::Network, &with(&net, json!({"mtu": mtu})))
    });
}

#[test]
fn port_ranges() {
    let rows: Vec<(&str, Want)> = vec![
        ("80", OK),
        ("1", OK),
        ("65535", OK),
        ("1000-2000", OK),
        ("443-443", OK),
        ("1-65535", OK),
        ("0", Some("p")),
        ("65536", Some("p")),
        ("2000-1000", Some("p")),
        ("0-80", Some("p")),
        ("80-", Some("p")),
        ("-80", Some("p")),
        ("80-90-100", Some("p")),
        ("http", Some("p")),
        ("", Some("p")),
        ("+80", Some("p")),
        (" 80", Some("p")),
        ("80 - 90", Some("p")),
    ];
    check_rows("parse_port_range", &rows, |s| {
        parse_port_range("p", s).map(|_| ())
    });

    // In a security rule: ports only for tcp and udp, named by index.
    let port = json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01"});
    let rule = |protocol: &str, ports: &str| {
        json!({"security": {"ingress": [{"protocol": "tcp", "ports": "22"},
                                        {"protocol": protocol, "ports": ports}]}})
    };
    let rows: Vec<(Value, Want)> = vec![
        (rule("tcp", "80"), OK),
        (rule("udp", "5000-5100"), OK),
        (rule("icmp", "80"), Some("spec.security.ingress[1].ports")),
        (rule("any", "80"), Some("spec.security.ingress[1].ports")),
        (rule("tcp", "99999"), Some("spec.security.ingress[1].ports")),
        (
            json!({"security": {"egress": [{"protocol": "tcp", "cidr": "10.0.0.1/8"}]}}),
            Some("spec.security.egress[0].cidr"),
        ),
        (
            json!({"security": {"ingress": [{"protocol": "any", "cidr": "0.0.0.0/0"}]}}),
            OK,
        ),
    ];
    check_rows("security rules", &rows, |patch| {
        spec_check(Kind::Port, &with(&port, patch.clone()))
    });
}

#[test]
fn vlans_and_net_only_fields() {
    let net = json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"});
    let rows: Vec<(Value, Want)> = vec![
        (json!({}), OK),
        (json!({"vlan": 1}), OK),
        (json!({"rdma": true}), OK),
        (json!({"vlan": 4094}), OK),
        (json!({"vlan": 0}), Some("spec.vlan")),
        (json!({"vlan": 4095}), Some("spec.vlan")),
        (json!({"vlan": 70000}), Some("spec.vlan")),
        (json!({"mac": null}), Some("spec.mac")),
        (json!({"mac": "01:00:00:00:00:01"}), Some("spec.mac")),
        (
            json!({"max_tx_rate_mbps": 0}),
            Some("spec.max_tx_rate_mbps"),
        ),
        (json!({"max_tx_rate_mbps": 1000}), OK),
        (json!({"pf": ""}), Some("spec.pf")),
        (json!({"pf": "pf0 ; reboot"}), Some("spec.pf")),
        (json!({"pf": "p0123456789abcde"}), Some("spec.pf")),
        (json!({"host": "Host_1"}), Some("spec.host")),
        (json!({"host": "host-1", "attach": "vfio", "vf": 3}), OK),
        (json!({"attach": "pci"}), Some("spec.attach")),
        (json!({"type": "sriov"}), Some("spec.type")),
    ];
    check_rows("net function", &rows, |patch| {
        spec_check(Kind::Function, &with(&net, patch.clone()))
    });

    // Carving: a VF or a sub-function, never both; SFs are net functions
    // on the DPU (no host stub places them).
    let rows: Vec<(Value, Want)> = vec![
        (json!({"carve": "sf"}), OK),
        (json!({"carve": "sf", "sf": 88}), OK),
        (json!({"sf": 88}), OK),
        (json!({"carve": "vf", "vf": 2}), OK),
        (json!({"carve": "pcisf"}), Some("spec.carve")),
        (json!({"sf": -1}), Some("spec.sf")),
        (json!({"sf": "88"}), Some("spec.sf")),
        (json!({"sf": 4294967295u32}), Some("spec.sf")),
        (json!({"vf": 1, "sf": 88}), Some("spec.sf")),
        (json!({"carve": "vf", "sf": 88}), Some("spec.sf")),
        (json!({"carve": "sf", "vf": 1}), Some("spec.vf")),
        (json!({"carve": "sf", "host": "host-1"}), Some("spec.host")),
        (json!({"sf": 3, "attach": "kernel"}), Some("spec.attach")),
        (
            json!({"type": "nvme", "carve": "sf", "mac": null}),
            Some("spec.carve"),
        ),
        (
            json!({"type": "virtio-blk", "sf": 1, "mac": null}),
            Some("spec.carve"),
        ),
    ];
    check_rows("carve", &rows, |patch| {
        spec_check(Kind::Function, &with(&net, patch.clone()))
    });

    for type_ in ["nvme", "virtio-blk"] {
        let storage = json!({"type": type_, "pf": "pf0"});
        let rows: Vec<(Value, Want)> = vec![
            (json!({}), OK),
            (json!({"vf": 2, "host": "h1", "attach": "kernel"}), OK),
            (json!({"mac": "02:00:00:00:00:01"}), Some("spec.mac")),
            (json!({"vlan": 10}), Some("spec.vlan")),
            (
                json!({"max_tx_rate_mbps": 10}),
                Some("spec.max_tx_rate_mbps"),
            ),
            (json!({"trust": false}), Some("spec.trust")),
            (json!({"spoof_check": true}), Some("spec.spoof_check")),
            (json!({"rdma": true}), Some("spec.rdma")),
            (json!({"rdma": false}), OK),
        ];
        check_rows(&format!("{type_} function"), &rows, |patch| {
            spec_check(Kind::Function, &with(&storage, patch.clone()))
        });
    }
}

fn tunnel() -> Value {
    json!({
        "local": "192.0.2.1", "remote": "192.0.2.2",
        "local_subnets": ["10.1.0.0/16"], "remote_subnets": ["10.2.0.0/16"],
        "mode": "tunnel", "cipher": "aes-gcm-128",
        "spi_in": 256, "spi_out": 4096,
        "key_in": "00112233445566778899aabbccddeeff01020304",
        "key_out": "ffeeddccbbaa99887766554433221100a0b0c0d0",
        "offload": "auto"
    })
}

#[test]
fn cipher_keys() {
    let k128 = "ab".repeat(16 + 4);
    let k256 = "cd".repeat(32 + 4);
    let k128_no_salt = "ab".repeat(16);
    let k256_no_salt = "cd".repeat(32);
    let upper = k128.to_uppercase();
    let prefixed = format!("0x{}", &k128[2..]);
    let not_hex = format!("{}zz", &k128[2..]);
    let rows: Vec<((&str, &str), Want)> = vec![
        (("aes-gcm-128", &k128), OK),
        (("aes-gcm-128", &upper), OK),
        (("aes-gcm-256", &k256), OK),
        (("aes-gcm-128", &k256), Some("spec.key_in")),
        (("aes-gcm-256", &k128), Some("spec.key_in")),
        (("aes-gcm-128", &k128_no_salt), Some("spec.key_in")),
        (("aes-gcm-256", &k256_no_salt), Some("spec.key_in")),
        (("aes-gcm-128", &k128[1..]), Some("spec.key_in")),
        (("aes-gcm-128", &prefixed), Some("spec.key_in")),
        (("aes-gcm-128", &not_hex), Some("spec.key_in")),
        (("aes-gcm-128", ""), Some("spec.key_in")),
        (("aes-cbc-128", &k128), Some("spec.cipher")),
    ];
    check_rows("ipsec keys", &rows, |(cipher, key)| {
        // Both keys must fit the cipher; key_out follows key_in here so the
        // error names key_in.
        let v = with(
            &tunnel(),
            json!({"cipher": cipher, "key_in": key, "key_out": key}),
        );
        spec_check(Kind::IpsecTunnel, &v)
    });

    // The error must never quote the key.
    let secret = format!("{}99", "5e".repeat(16 + 4));
    let err = spec_check(
        Kind::IpsecTunnel,
        &with(&tunnel(), json!({"key_out": secret})),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.key_out");
    assert!(!err.to_string().contains("5e5e5e"), "{err}");
}

#[test]
fn ipsec_spis_and_addresses() {
    let rows: Vec<(Value, Want)> = vec![
        (json!({}), OK),
        (json!({"spi_in": 255}), Some("spec.spi_in")),
        (json!({"spi_in": 0}), Some("spec.spi_in")),
        (json!({"spi_in": 256}), OK),
        (json!({"spi_out": 1}), Some("spec.spi_out")),
        (json!({"spi_out": u32::MAX}), OK),
        (json!({"spi_out": -1}), Some("spec.spi_out")),
        (json!({"remote": "192.0.2.1"}), Some("spec.remote")),
        (json!({"local": "2001:db8::1"}), Some("spec.local")),
        (json!({"local_subnets": []}), Some("spec.local_subnets")),
        (json!({"remote_subnets": []}), Some("spec.remote_subnets")),
        (
            json!({"mode": "transport", "local_subnets": [], "remote_subnets": []}),
            OK,
        ),
        (
            json!({"remote_subnets": ["10.2.0.0/16", "10.3.0.1/16"]}),
            Some("spec.remote_subnets[1]"),
        ),
        (json!({"replay_window": 4096}), OK),
        (json!({"replay_window": 4097}), Some("spec.replay_window")),
        (json!({"offload": "full"}), Some("spec.offload")),
        // Left out, it is auto.
        (json!({"offload": null}), OK),
    ];
    check_rows("ipsec", &rows, |patch| {
        spec_check(Kind::IpsecTunnel, &with(&tunnel(), patch.clone()))
    });
}

struct Pems {
    cert: String,
    key: String,
    other_cert: String,
    other_key: String,
    ed_cert: String,
    ed_key: String,
    p384_cert: String,
    p384_key: String,
}

/// A self-signed certificate and its key, of the given algorithm.
fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["alg.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pems() -> Pems {
    let a = rcgen::generate_simple_self_signed(vec!["svc.example".to_string()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["other.example".to_string()]).unwrap();
    let (ed_cert, ed_key) = self_signed(&rcgen::PKCS_ED25519);
    let (p384_cert, p384_key) = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
    Pems {
        ed_cert,
        ed_key,
        p384_cert,
        p384_key,
        cert: a.cert.pem(),
        key: a.signing_key.serialize_pem(),
        other_cert: b.cert.pem(),
        other_key: b.signing_key.serialize_pem(),
    }
}

#[test]
fn pem_parsing() {
    let p = pems();
    let chain = format!("{}{}", p.cert, p.other_cert);
    let not_x509 =
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n".to_string();
    let bad_base64 =
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n".to_string();
    let commented = format!("comment before\n{}", p.cert);
    let cert_then_key = format!("{}{}", p.cert, p.key);
    let cert_rows: Vec<(&str, Want)> = vec![
        (&p.cert, OK),
        (&chain, OK),
        (&commented, OK),
        (&p.key, Some("f")),
        (&not_x509, Some("f")),
        (&bad_base64, Some("f")),
        ("", Some("f")),
        ("not pem at all", Some("f")),
    ];
    check_rows("check_pem certificates", &cert_rows, |s| {
        check_pem("f", s, PemWant::Certificates).map(|_| ())
    });
    assert_eq!(check_pem("f", &chain, PemWant::Certificates), Ok(2));

    let two_keys = format!("{}{}", p.key, p.other_key);
    let key_rows: Vec<(&str, Want)> = vec![
        (&p.key, OK),
        (&p.other_key, OK),
        (&cert_then_key, OK),
        (&two_keys, Some("f")),
        (&p.cert, Some("f")),
        ("", Some("f")),
    ];
    check_rows("check_pem private key", &key_rows, |s| {
        check_pem("f", s, PemWant::PrivateKey).map(|_| ())
    });

    let bogus_key =
        "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n".to_string();
    let bogus_sec1 =
        "-----BEGIN EC PRIVATE KEY-----\nMAMCAQE=\n-----END EC PRIVATE KEY-----\n".to_string();

    // The same rules through a TLS listener spec.
    let listener = json!({
        "listen": "10.0.0.1:443", "upstream": "10.0.0.10:8080",
        "certificate_pem": p.cert, "private_key_pem": p.key, "ktls": "auto"
    });
    let rows: Vec<(Value, Want)> = vec![
        (json!({}), OK),
        (json!({"client_ca_pem": p.other_cert}), OK),
        (json!({"alpn": ["h2", "http/1.1"]}), OK),
        (
            json!({"certificate_pem": p.key}),
            Some("spec.certificate_pem"),
        ),
        (
            json!({"private_key_pem": p.cert}),
            Some("spec.private_key_pem"),
        ),
        (
            json!({"private_key_pem": two_keys}),
            Some("spec.private_key_pem"),
        ),
        // The key must be the leaf certificate's.
        (json!({"private_key_pem": cert_then_key}), OK),
        (
            json!({"certificate_pem": format!("{}{}", p.cert, p.other_cert)}),
            OK,
        ),
        (
            json!({"private_key_pem": p.other_key}),
            Some("spec.private_key_pem"),
        ),
        (
            json!({"certificate_pem": p.other_cert}),
            Some("spec.private_key_pem"),
        ),
        (
            json!({"certificate_pem": format!("{}{}", p.other_cert, p.cert)}),
            Some("spec.private_key_pem"),
        ),
        (
            json!({"certificate_pem": p.ed_cert, "private_key_pem": p.ed_key}),
            OK,
        ),
        (
            json!({"certificate_pem": p.p384_cert, "private_key_pem": p.p384_key}),
            OK,
        ),
        (
            json!({"certificate_pem": p.ed_cert}),
            Some("spec.private_key_pem"),
        ),
        (
            json!({"private_key_pem": p.ed_key}),
            Some("spec.private_key_pem"),
        ),
        // A private-key block that is not a key at all.
        (
            json!({"private_key_pem": bogus_key}),
            Some("spec.private_key_pem"),
        ),
        (
            json!({"private_key_pem": bogus_sec1}),
            Some("spec.private_key_pem"),
        ),
        (json!({"client_ca_pem": "nope"}), Some("spec.client_ca_pem")),
        (json!({"alpn": ["h2", ""]}), Some("spec.alpn[1]")),
        (json!({"ktls": "on"}), Some("spec.ktls")),
        // Left out, it is auto.
        (json!({"ktls": null}), OK),
    ];
    check_rows("tls listener", &rows, |patch| {
        spec_check(Kind::TlsListener, &with(&listener, patch.clone()))
    });

    // A mismatch says so without quoting the key.
    let err = spec_check(
        Kind::TlsListener,
        &with(&listener, json!({"private_key_pem": p.other_key})),
    )
    .unwrap_err();
    assert!(err.message.contains("does not match"), "{err}");
    assert!(!err.message.contains("PRIVATE KEY"), "{err}");
}

#[test]
fn nqns() {
    let long = format!("nqn.2014-08.org.example:{}", "v".repeat(200));
    let rows: Vec<(&str, Want)> = vec![
        ("nqn.2014-08.org.example:vol1", OK),
        (
            "nqn.2014-08.org.nvmexpress:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            OK,
        ),
        ("nqn.2024-01.com.vendor.x", OK),
        (&long[..223], OK),
        (&long, Some("n")),
        ("iqn.2014-08.org.example:vol1", Some("n")),
        ("nqn.14-08.org.example:vol1", Some("n")),
        ("nqn.2014-8.org.example:vol1", Some("n")),
        ("nqn.2014_08.org.example:vol1", Some("n")),
        ("nqn.2014-08", Some("n")),
        ("nqn.2014-08.", Some("n")),
        ("nqn.2014-08.org.example:vol 1", Some("n")),
        ("nqn.2014-08.org.example:vol\t1", Some("n")),
        ("", Some("n")),
    ];
    check_rows("check_nqn", &rows, |s| check_nqn("n", s));

    let volume = json!({"function": "disk-0", "source": {"nvmeof": {
        "transport": "tcp", "address": "192.0.2.10", "port": 4420,
        "subnqn": "nqn.2014-08.org.example:vol1"}}});
    let nvmeof = |patch: Value| {
        let mut v = volume.clone();
        let src = v["source"]["nvmeof"].as_object_mut().unwrap();
        for (k, p) in patch.as_object().unwrap() {
            src.insert(k.clone(), p.clone());
        }
        v
    };
    let rows: Vec<(Value, Want)> = vec![
        (volume.clone(), OK),
        (nvmeof(json!({"address": "2001:db8::10"})), OK),
        (
            nvmeof(json!({"hostnqn": "nqn.2014-08.org.example:host1"})),
            OK,
        ),
        (
            nvmeof(json!({"hostnqn": "host1"})),
            Some("spec.source.nvmeof.hostnqn"),
        ),
        (
            nvmeof(json!({"subnqn": "vol1"})),
            Some("spec.source.nvmeof.subnqn"),
        ),
        (
            nvmeof(json!({"address": "storage.example"})),
            Some("spec.source.nvmeof.address"),
        ),
        (nvmeof(json!({"port": 0})), Some("spec.source.nvmeof.port")),
        (
            nvmeof(json!({"transport": "fc"})),
            Some("spec.source.nvmeof.transport"),
        ),
        (with(&volume, json!({"nsid": 0})), Some("spec.nsid")),
        (with(&volume, json!({"nsid": 1})), OK),
        (with(&volume, json!({"nsid": u32::MAX})), Some("spec.nsid")),
        (
            with(&volume, json!({"source": {"local": {"size_mib": 0}}})),
            Some("spec.source.local.size_mib"),
        ),
        (
            with(&volume, json!({"source": {"local": {"size_mib": 1024}}})),
            OK,
        ),
        (
            with(
                &volume,
                json!({"source": {"local": {"size_mib": 16_777_217}}}),
            ),
            Some("spec.source.local.size_mib"),
        ),
        (
            with(&volume, json!({"qos": {"max_iops": 0}})),
            Some("spec.qos.max_iops"),
        ),
        (
            with(&volume, json!({"qos": {"max_mbps": 0}})),
            Some("spec.qos.max_mbps"),
        ),
        (
            with(&volume, json!({"function": "Disk"})),
            Some("spec.function"),
        ),
    ];
    check_rows("volume", &rows, |v| spec_check(Kind::Volume, v));
}

#[test]
fn socket_addresses() {
    let rows: Vec<(&str, Want)> = vec![
        ("10.0.0.5:443", OK),
        ("0.0.0.0:8443", OK),
        ("[2001:db8::1]:443", OK),
        ("10.0.0.5:0", Some("a")),
        ("10.0.0.5", Some("a")),
        ("10.0.0.5:65536", Some("a")),
        ("example.com:443", Some("a")),
        ("2001:db8::1:443", Some("a")),
        (":443", Some("a")),
        ("", Some("a")),
    ];
    check_rows("parse_socket_addr", &rows, |s| {
        parse_socket_addr("a", s).map(|_| ())
    });
}

#[test]
fn envelopes() {
    let rows: Vec<((Kind, &str, &str), Want)> = vec![
        ((Kind::Tenant, "acme", "acme"), OK),
        ((Kind::Tenant, "acme", "other"), Some("tenant")),
        ((Kind::Tenant, "Acme", "Acme"), Some("id")),
        ((Kind::Port, "web-1", "acme"), OK),
        ((Kind::Port, "web-1", "web-1"), OK),
        ((Kind::Port, "Web-1", "acme"), Some("id")),
        ((Kind::Port, "web-1", "ACME"), Some("tenant")),
        ((Kind::Port, "web-1", ""), Some("tenant")),
        ((Kind::Network, "", "acme"), Some("id")),
    ];
    check_rows("validate_envelope", &rows, |(kind, id, tenant)| {
        validate_envelope(*kind, id, tenant)
    });
}

#[test]
fn spec_shape() {
    // Unknown, missing and mistyped fields are named; a non-object spec is
    // `spec`.
    let rows: Vec<((Kind, Value), Want)> = vec![
        ((Kind::Tenant, json!({})), OK),
        ((Kind::Tenant, json!({"quotas": {"functions": 4}})), OK),
        (
            (Kind::Tenant, json!({"quotas": {"cpus": 4}})),
            Some("spec.quotas.cpus"),
        ),
        (
            (Kind::Tenant, json!({"description": "x".repeat(1025)})),
            Some("spec.description"),
        ),
        ((Kind::Tenant, json!([])), Some("spec")),
        ((Kind::Tenant, json!(null)), Some("spec")),
        (
            (
                Kind::Endpoint,
                json!({"network": "n", "mac": "02:00:00:00:00:01", "ips": []}),
            ),
            Some("spec.vtep"),
        ),
        (
            (
                Kind::Endpoint,
                json!({"network": "n", "mac": "02:00:00:00:00:01", "vtep": "224.0.0.1"}),
            ),
            Some("spec.vtep"),
        ),
        (
            (
                Kind::Endpoint,
                json!({"network": "n", "mac": "02:00:00:00:00:01", "vtep": "192.0.2.7",
                       "ips": ["10.0.0.1", "10.0.0.1"]}),
            ),
            Some("spec.ips[1]"),
        ),
        (
            (
                Kind::Port,
                json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01",
                       "ips": ["10.0.0.1", "fd00::1"]}),
            ),
            Some("spec.ips[1]"),
        ),
        (
            (
                Kind::Port,
                json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01",
                       "qos": {"max_rate_mbps": 0, "burst_kb": 10}}),
            ),
            Some("spec.qos.max_rate_mbps"),
        ),
    ];
    check_rows("spec shape", &rows, |(kind, v)| spec_check(*kind, v));
}

/// A store in a map, for the context checks.
#[derive(Default)]
struct Objects(BTreeMap<(Kind, String), (String, Spec)>);

impl Objects {
    fn put(&mut self, kind: Kind, id: &str, tenant: &str, spec: Value) {
        let mut spec = Spec::parse(kind, &spec).unwrap_or_else(|e| panic!("fixture {id}: {e}"));
        validate_spec(&spec).unwrap_or_else(|e| panic!("fixture {id}: {e}"));
        // Lookups see stored objects without their secrets, as the store
        // hands them out.
        match &mut spec {
            Spec::IpsecTunnel(t) => {
                t.key_in.clear();
                t.key_out.clear();
            }
            Spec::TlsListener(t) => t.private_key_pem.clear(),
            _ => {}
        }
        self.0
            .insert((kind, id.to_string()), (tenant.to_string(), spec));
    }
}

impl ObjectLookup for Objects {
    fn get(&self, kind: Kind, id: &str) -> Option<(String, Spec)> {
        self.0.get(&(kind, id.to_string())).cloned()
    }

    fn list(&self, kind: Kind, tenant: Option<&str>) -> Vec<(String, Spec)> {
        self.0
            .iter()
            .filter(|((k, _), (t, _))| *k == kind && tenant.is_none_or(|want| want == t))
            .map(|((_, id), (_, spec))| (id.clone(), spec.clone()))
            .collect()
    }
}

/// A write to check in context: kind, id, tenant, spec.
type Write = (Kind, &'static str, &'static str, Value);

fn world() -> Objects {
    let mut w = Objects::default();
    w.put(Kind::Tenant, "acme", "acme", json!({}));
    w.put(Kind::Tenant, "other", "other", json!({}));
    w.put(
        Kind::Network,
        "net1",
        "acme",
        json!({"vni": 100, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
    );
    w.put(
        Kind::Network,
        "net-b",
        "other",
        json!({"vni": 200, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
    );
    for (id, tenant, type_) in [
        ("f1", "acme", "net"),
        ("f2", "acme", "net"),
        ("disk1", "acme", "nvme"),
        ("f-other", "other", "net"),
    ] {
        let spec = if type_ == "net" {
            json!({"type": type_, "pf": "pf0", "mac": "02:00:00:00:99:01"})
        } else {
            json!({"type": type_, "pf": "pf0"})
        };
        w.put(Kind::Function, id, tenant, spec);
    }
    w.put(
        Kind::Port,
        "p1",
        "acme",
        json!({"network": "net1", "function": "f1", "mac": "02:00:00:00:00:0a",
               "ips": ["10.0.0.10"]}),
    );
    w.put(
        Kind::Volume,
        "v0",
        "acme",
        json!({"function": "disk1", "nsid": 2, "source": {"local": {"size_mib": 64}}}),
    );
    w.put(
        Kind::Endpoint,
        "e1",
        "acme",
        json!({"network": "net1", "mac": "02:00:00:00:00:ee", "ips": ["10.0.0.20"],
               "vtep": "192.0.2.2"}),
    );
    w.put(
        Kind::Port,
        "pb",
        "other",
        json!({"network": "net-b", "function": "f-other", "mac": "02:00:00:00:00:0b",
               "ips": ["10.0.0.11"]}),
    );
    w
}

#[test]
fn context_checks() {
    let w = world();
    let port = json!({"network": "net1", "function": "f2", "mac": "02:00:00:00:00:0b",
                      "ips": ["10.0.0.11"]});
    let p = |patch: Value| (Kind::Port, "p2", "acme", with(&port, patch));
    let rows: Vec<(Write, Want)> = vec![
        // Same MAC and IP as a port of another tenant's network: fine.
        (p(json!({})), OK),
        (p(json!({"network": "nope"})), Some("spec.network")),
        (p(json!({"network": "net-b"})), Some("spec.network")),
        (p(json!({"function": "f-other"})), Some("spec.function")),
        (p(json!({"function": "ghost"})), Some("spec.function")),
        (p(json!({"ips": ["10.0.1.5"]})), Some("spec.ips[0]")),
        (
            p(json!({"ips": ["10.0.0.12", "192.168.0.1"]})),
            Some("spec.ips[1]"),
        ),
        (p(json!({"ips": ["10.0.0.0"]})), Some("spec.ips[0]")),
        (p(json!({"ips": ["10.0.0.255"]})), Some("spec.ips[0]")),
        (p(json!({"ips": ["10.0.0.1", "10.0.0.254"]})), OK),
        (p(json!({"mac": "02:00:00:00:00:0a"})), Some("spec.mac")),
        (p(json!({"mac": "02:00:00:00:00:0A"})), Some("spec.mac")),
        (p(json!({"mac": "02:00:00:00:00:ee"})), Some("spec.mac")),
        (p(json!({"ips": ["10.0.0.10"]})), Some("spec.ips[0]")),
        (
            p(json!({"ips": ["10.0.0.12", "10.0.0.20"]})),
            Some("spec.ips[1]"),
        ),
        (p(json!({"function": "f1"})), Some("spec.function")),
        (p(json!({"function": "disk1"})), Some("spec.function")),
        // Rewriting p1 as it is does not collide with itself.
        (
            (
                Kind::Port,
                "p1",
                "acme",
                json!({"network": "net1", "function": "f1", "mac": "02:00:00:00:00:0a",
                       "ips": ["10.0.0.10"]}),
            ),
            OK,
        ),
        (
            (Kind::Port, "p9", "ghost", with(&port, json!({}))),
            Some("spec.network"),
        ),
        // Endpoints follow the same address rules.
        (
            (
                Kind::Endpoint,
                "e2",
                "acme",
                json!({"network": "net1", "mac": "02:00:00:00:00:ef",
                       "ips": ["10.0.0.21"], "vtep": "192.0.2.3"}),
            ),
            OK,
        ),
        (
            (
                Kind::Endpoint,
                "e2",
                "acme",
                json!({"network": "net1", "mac": "02:00:00:00:00:0a",
                       "ips": ["10.0.0.21"], "vtep": "192.0.2.3"}),
            ),
            Some("spec.mac"),
        ),
        (
            (
                Kind::Endpoint,
                "e2",
                "acme",
                json!({"network": "net1", "mac": "02:00:00:00:00:ef",
                       "ips": ["10.9.0.21"], "vtep": "192.0.2.3"}),
            ),
            Some("spec.ips[0]"),
        ),
        // VNIs are unique on the DPU, across tenants.
        (
            (
                Kind::Network,
                "net2",
                "acme",
                json!({"vni": 200, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
            ),
            Some("spec.vni"),
        ),
        (
            (
                Kind::Network,
                "net1",
                "acme",
                json!({"vni": 100, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
            ),
            OK,
        ),
        (
            (
                Kind::Network,
                "net2",
                "ghost",
                json!({"vni": 300, "cidr": "10.1.0.0/24", "encap": "vxlan"}),
            ),
            Some("tenant"),
        ),
        // Volumes need a storage function of the same tenant.
        (
            (
                Kind::Volume,
                "v1",
                "acme",
                json!({"function": "disk1", "source": {"local": {"size_mib": 64}}}),
            ),
            OK,
        ),
        (
            (
                Kind::Volume,
                "v1",
                "acme",
                json!({"function": "f1", "source": {"local": {"size_mib": 64}}}),
            ),
            Some("spec.function"),
        ),
        (
            (
                Kind::Volume,
                "v1",
                "other",
                json!({"function": "disk1", "source": {"local": {"size_mib": 64}}}),
            ),
            Some("spec.function"),
        ),
        // One nsid per function (v0 holds nsid 2 on disk1; no nsid is 1).
        (
            (
                Kind::Volume,
                "v1",
                "acme",
                json!({"function": "disk1", "nsid": 2, "source": {"local": {"size_mib": 64}}}),
            ),
            Some("spec.nsid"),
        ),
        (
            (
                Kind::Volume,
                "v0",
                "acme",
                json!({"function": "disk1", "nsid": 2, "source": {"local": {"size_mib": 32}}}),
            ),
            OK,
        ),
        ((Kind::Tenant, "new", "new", json!({})), OK),
    ];
    check_rows("validate_in_context", &rows, |(kind, id, tenant, v)| {
        let spec = Spec::parse(*kind, v)?;
        validate_spec(&spec)?;
        validate_in_context(id, tenant, Writer::FleetController, &spec, &w)
    });
}

#[test]
fn ipsec_context() {
    let mut w = Objects::default();
    w.put(Kind::Tenant, "acme", "acme", json!({}));
    w.put(Kind::Tenant, "other", "other", json!({}));
    // A tenant tunnel protects its own networks' traffic.
    w.put(
        Kind::Network,
        "acme-net",
        "acme",
        json!({"vni": 100, "cidr": "10.0.0.0/8", "encap": "vxlan"}),
    );
    w.put(
        Kind::Network,
        "other-net",
        "other",
        json!({"vni": 200, "cidr": "10.5.0.0/16", "encap": "vxlan"}),
    );
    // t-a: 192.0.2.2, 10.1.0.0/16 <-> 10.2.0.0/16, SPIs 1000/1001.
    w.put(
        Kind::IpsecTunnel,
        "t-a",
        "acme",
        with(&tunnel(), json!({"spi_in": 1000, "spi_out": 1001})),
    );
    // t-b, another tenant: 192.0.2.9, 10.5.0.0/24 <-> 10.6.0.0/24, SPIs 2000/2001.
    w.put(
        Kind::IpsecTunnel,
        "t-b",
        "other",
        with(
            &tunnel(),
            json!({"remote": "192.0.2.9", "local_subnets": ["10.5.0.0/24"],
                   "remote_subnets": ["10.6.0.0/24"], "spi_in": 2000, "spi_out": 2001}),
        ),
    );
    // The new tunnel: to t-a's remote, but towards 10.3.0.0/16.
    let base = with(&tunnel(), json!({"remote_subnets": ["10.3.0.0/16"]}));
    let t = |patch: Value| (Kind::IpsecTunnel, "t-new", "acme", with(&base, patch));
    let rows: Vec<(Write, Want)> = vec![
        (t(json!({})), OK),
        // SPIs are unique on the DPU, in either direction, across tenants.
        (t(json!({"spi_in": 1000})), Some("spec.spi_in")),
        (t(json!({"spi_in": 1001})), Some("spec.spi_in")),
        (t(json!({"spi_in": 2001})), Some("spec.spi_in")),
        (t(json!({"spi_out": 1000})), Some("spec.spi_out")),
        (t(json!({"spi_out": 2000})), Some("spec.spi_out")),
        (t(json!({"spi_in": 1002, "spi_out": 2002})), OK),
        (
            (
                Kind::IpsecTunnel,
                "t-new",
                "other",
                with(
                    &base,
                    json!({"spi_in": 1000, "local_subnets": ["10.5.1.0/24"]}),
                ),
            ),
            Some("spec.spi_in"),
        ),
        // Rewriting t-a as it is collides with nothing.
        (
            (
                Kind::IpsecTunnel,
                "t-a",
                "acme",
                with(&tunnel(), json!({"spi_in": 1000, "spi_out": 1001})),
            ),
            OK,
        ),
        // Overlapping selectors to the same remote.
        (
            t(json!({"remote_subnets": ["10.2.0.0/16"]})),
            Some("spec.local_subnets"),
        ),
        (
            t(json!({"remote_subnets": ["10.2.128.0/17"]})),
            Some("spec.local_subnets"),
        ),
        (
            t(json!({"remote_subnets": ["10.3.0.0/16", "10.0.0.0/8"]})),
            Some("spec.local_subnets"),
        ),
        (
            t(json!({"local_subnets": ["10.1.5.0/24"], "remote_subnets": ["10.2.3.0/24"]})),
            Some("spec.local_subnets"),
        ),
        (
            t(
                json!({"local_subnets": ["10.9.0.0/16", "0.0.0.0/0"], "remote_subnets": ["10.2.0.0/16"]}),
            ),
            Some("spec.local_subnets[1]"),
        ),
        // Only one side overlapping is fine.
        (
            t(json!({"local_subnets": ["10.9.0.0/16"], "remote_subnets": ["10.2.0.0/16"]})),
            OK,
        ),
        (
            t(json!({"local_subnets": ["10.1.0.0/16"], "remote_subnets": ["10.4.0.0/16"]})),
            OK,
        ),
        (t(json!({"remote_subnets": ["10.1.0.0/16"]})), OK),
        // Adjacent but disjoint.
        (
            t(json!({"remote_subnets": ["10.3.0.0/16", "10.0.0.0/15"]})),
            OK,
        ),
        // Another remote: the same selectors are fine.
        (
            t(json!({"remote": "192.0.2.3", "remote_subnets": ["10.2.0.0/16"]})),
            OK,
        ),
        // Across tenants, to the same remote: each tenant's tunnels are
        // confined to its own XFRM interface id, so they do not compete.
        (
            t(
                json!({"remote": "192.0.2.9", "local_subnets": ["10.5.0.128/25"],
                     "remote_subnets": ["10.6.0.0/16"]}),
            ),
            OK,
        ),
        // A tenant tunnel's local side is inside the tenant's networks.
        (
            t(json!({"local_subnets": ["192.168.0.0/16"]})),
            Some("spec.local_subnets[0]"),
        ),
        (
            t(json!({"local_subnets": ["0.0.0.0/0"]})),
            Some("spec.local_subnets[0]"),
        ),
        // Transport mode has no selectors to overlap.
        (
            t(json!({"mode": "transport", "local_subnets": [], "remote_subnets": []})),
            OK,
        ),
    ];
    check_rows("ipsec in context", &rows, |(kind, id, tenant, v)| {
        let spec = Spec::parse(*kind, v)?;
        validate_spec(&spec)?;
        validate_in_context(id, tenant, Writer::FleetController, &spec, &w)
    });

    // The errors say which tunnel.
    let spec = Spec::parse(
        Kind::IpsecTunnel,
        &with(&base, json!({"remote_subnets": ["10.2.0.0/24"]})),
    )
    .unwrap();
    let err = validate_in_context("t-new", "acme", Writer::FleetController, &spec, &w).unwrap_err();
    assert!(err.message.contains("\"t-a\""), "{err}");
    // ... unless it is another tenant's (TENANCY.md invariant 5).
    let spec = Spec::parse(Kind::IpsecTunnel, &with(&base, json!({"spi_out": 2001}))).unwrap();
    let err = validate_in_context("t-new", "acme", Writer::FleetController, &spec, &w).unwrap_err();
    assert!(!err.message.contains("t-b"), "{err}");
    assert!(!err.message.contains("\"other\""), "{err}");
    assert!(err.message.contains("not available"), "{err}");

    // Infrastructure tunnels are the fleet controller's.
    let infra = with(
        &base,
        json!({"scope": "infrastructure", "local_subnets": ["0.0.0.0/0"]}),
    );
    let spec = Spec::parse(Kind::IpsecTunnel, &infra).unwrap();
    validate_in_context("t-new", "acme", Writer::FleetController, &spec, &w).unwrap();
    let err = validate_in_context("t-new", "acme", Writer::Tenant, &spec, &w).unwrap_err();
    assert_eq!(err.field, "spec.scope");
}

/// TENANCY.md invariant 6: every list and string in a spec has a maximum,
/// refused with the field named (and the oversized value not echoed).
#[test]
fn every_list_and_string_is_bounded() {
    use dpu_api::limits;
    let ips: Vec<String> = (0..=limits::IPS)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let rules: Vec<Value> = (0..=limits::RULES)
        .map(|_| json!({"protocol": "any"}))
        .collect();
    let subnets: Vec<String> = (0..=limits::SUBNETS)
        .map(|i| format!("10.{i}.0.0/16"))
        .collect();
    let huge = "1".repeat(1 << 20);
    let port = json!({"network": "n", "function": "f", "mac": "02:00:00:00:00:01"});
    let rows: Vec<((Kind, Value), Want)> = vec![
        (
            (Kind::Port, with(&port, json!({"ips": ips}))),
            Some("spec.ips"),
        ),
        (
            (
                Kind::Port,
                with(&port, json!({"security": {"ingress": rules}})),
            ),
            Some("spec.security.ingress"),
        ),
        (
            (
                Kind::Port,
                with(&port, json!({"security": {"egress": rules}})),
            ),
            Some("spec.security.egress"),
        ),
        (
            (Kind::Port, with(&port, json!({"mac": huge}))),
            Some("spec.mac"),
        ),
        (
            (
                Kind::Endpoint,
                json!({"network": "n", "mac": "02:00:00:00:00:02", "vtep": "192.0.2.1", "ips": ips}),
            ),
            Some("spec.ips"),
        ),
        (
            (
                Kind::IpsecTunnel,
                with(&tunnel(), json!({"local_subnets": subnets})),
            ),
            Some("spec.local_subnets"),
        ),
        (
            (
                Kind::IpsecTunnel,
                with(&tunnel(), json!({"remote_subnets": subnets})),
            ),
            Some("spec.remote_subnets"),
        ),
        (
            (
                Kind::Network,
                json!({"vni": 5, "cidr": huge, "encap": "vxlan"}),
            ),
            Some("spec.cidr"),
        ),
        (
            (
                Kind::Tenant,
                json!({"description": "x".repeat(limits::DESCRIPTION_BYTES + 1)}),
            ),
            Some("spec.description"),
        ),
        (
            (
                Kind::Tenant,
                json!({"grants": {"vni_ranges": (0..=limits::VNI_RANGES).map(|i| format!("{}", i + 1)).collect::<Vec<_>>()}}),
            ),
            Some("spec.grants.vni_ranges"),
        ),
        (
            (
                Kind::Tenant,
                json!({"grants": {"functions": {"pfs": ["pf0"], "hosts": vec!["h"; limits::GRANT_HOSTS + 1]}}}),
            ),
            Some("spec.grants.functions.hosts"),
        ),
    ];
    check_rows("bounds", &rows, |(kind, v)| spec_check(*kind, v));
    // A huge value is not echoed back.
    let err = spec_check(Kind::Port, &with(&port, json!({"mac": huge}))).unwrap_err();
    assert!(err.message.len() < 200, "{}", err.message.len());
}

/// Tenant grants: well-formed, non-overlapping VNI ranges within 1-16777215.
#[test]
fn grants_are_validated() {
    let rows: Vec<(Value, Want)> = vec![
        (json!({"grants": {}}), OK),
        (json!({"grants": {"vni_ranges": ["100-199", "300"]}}), OK),
        (
            json!({"grants": {"vni_ranges": ["0-5"]}}),
            Some("spec.grants.vni_ranges[0]"),
        ),
        (
            json!({"grants": {"vni_ranges": ["5-2"]}}),
            Some("spec.grants.vni_ranges[0]"),
        ),
        (
            json!({"grants": {"vni_ranges": ["1-16777216"]}}),
            Some("spec.grants.vni_ranges[0]"),
        ),
        (
            json!({"grants": {"vni_ranges": ["100-199", "150"]}}),
            Some("spec.grants.vni_ranges[1]"),
        ),
        (
            json!({"grants": {"functions": {"pfs": ["pf0", "p1"], "vfs": "0-15", "hosts": ["node-1"],
                   "allow_trust": true, "allow_spoof_check_off": true, "allow_rdma": true}}}),
            OK,
        ),
        (
            json!({"grants": {"functions": {"pfs": ["pf 0"]}}}),
            Some("spec.grants.functions.pfs[0]"),
        ),
        (
            json!({"grants": {"functions": {"pfs": ["pf0"], "vfs": "15-0"}}}),
            Some("spec.grants.functions.vfs"),
        ),
        (
            json!({"grants": {"functions": {"pfs": ["pf0"], "sfs": "1000-1999"}}}),
            OK,
        ),
        (
            json!({"grants": {"functions": {"pfs": ["pf0"], "sfs": "9-x"}}}),
            Some("spec.grants.functions.sfs"),
        ),
        (
            json!({"grants": {"functions": {"pfs": ["pf0"], "hosts": ["Node_1"]}}}),
            Some("spec.grants.functions.hosts[0]"),
        ),
        (json!({"grants": {"colour": 1}}), Some("spec.grants.colour")),
    ];
    check_rows("grants", &rows, |v| spec_check(Kind::Tenant, v));
}

/// TENANCY.md invariant 3: a tenant identity carves only the hardware its
/// grant names; the fleet controller is not bounded by grants.
#[test]
fn function_grants_bound_tenant_writers() {
    let mut w = Objects::default();
    w.put(
        Kind::Tenant,
        "acme",
        "acme",
        json!({"grants": {"functions": {"pfs": ["pf0"], "vfs": "4-7", "hosts": ["node-1"]}}}),
    );
    w.put(
        Kind::Tenant,
        "rdma",
        "rdma",
        json!({"grants": {"functions": {"pfs": ["pf0"], "allow_rdma": true}}}),
    );
    w.put(
        Kind::Tenant,
        "sfs",
        "sfs",
        json!({"grants": {"functions": {"pfs": ["pf0"], "sfs": "100-199"}}}),
    );
    w.put(Kind::Tenant, "bare", "bare", json!({}));
    let f = json!({"type": "net", "pf": "pf0", "mac": "02:00:00:00:00:01"});
    let rows: Vec<((&str, Writer, Value), Want)> = vec![
        (("acme", Writer::Tenant, f.clone()), OK),
        (
            (
                "acme",
                Writer::Tenant,
                with(&f, json!({"vf": 5, "host": "node-1"})),
            ),
            OK,
        ),
        (
            ("acme", Writer::Tenant, with(&f, json!({"pf": "pf1"}))),
            Some("spec.pf"),
        ),
        (
            ("acme", Writer::Tenant, with(&f, json!({"vf": 3}))),
            Some("spec.vf"),
        ),
        (
            ("acme", Writer::Tenant, with(&f, json!({"host": "node-2"}))),
            Some("spec.host"),
        ),
        (
            ("acme", Writer::Tenant, with(&f, json!({"trust": true}))),
            Some("spec.trust"),
        ),
        (
            ("acme", Writer::Tenant, with(&f, json!({"trust": false}))),
            OK,
        ),
        (
            (
                "acme",
                Writer::Tenant,
                with(&f, json!({"spoof_check": false})),
            ),
            Some("spec.spoof_check"),
        ),
        // RDMA needs grants.functions.allow_rdma.
        (
            ("acme", Writer::Tenant, with(&f, json!({"rdma": true}))),
            Some("spec.rdma"),
        ),
        (
            ("rdma", Writer::Tenant, with(&f, json!({"rdma": true}))),
            OK,
        ),
        (("bare", Writer::Tenant, f.clone()), Some("spec.pf")),
        // Sub-functions need grants.functions.sfs (absent: none at all),
        // and a named SF number stays inside it.
        (
            ("acme", Writer::Tenant, with(&f, json!({"carve": "sf"}))),
            Some("spec.carve"),
        ),
        (
            ("sfs", Writer::Tenant, with(&f, json!({"carve": "sf"}))),
            OK,
        ),
        (("sfs", Writer::Tenant, with(&f, json!({"sf": 150}))), OK),
        (
            ("sfs", Writer::Tenant, with(&f, json!({"sf": 99}))),
            Some("spec.sf"),
        ),
        (
            ("sfs", Writer::Tenant, with(&f, json!({"sf": 200}))),
            Some("spec.sf"),
        ),
        (
            ("bare", Writer::FleetController, with(&f, json!({"sf": 7}))),
            OK,
        ),
        // The fleet controller places functions wherever it decides.
        (
            (
                "bare",
                Writer::FleetController,
                with(
                    &f,
                    json!({"pf": "pf1", "vf": 3, "trust": true, "spoof_check": false}),
                ),
            ),
            OK,
        ),
    ];
    check_rows("function grants", &rows, |(tenant, writer, v)| {
        let spec = Spec::parse(Kind::Function, v)?;
        validate_spec(&spec)?;
        validate_in_context("f-new", tenant, *writer, &spec, &w)
    });
}

/// TENANCY.md invariants 2 and 5: a VNI belongs to one tenant; a conflict
/// with another tenant's network or grant does not name it.
#[test]
fn vnis_are_granted_per_tenant() {
    let mut w = Objects::default();
    w.put(
        Kind::Tenant,
        "acme",
        "acme",
        json!({"grants": {"vni_ranges": ["100-199"]}}),
    );
    w.put(
        Kind::Tenant,
        "other",
        "other",
        json!({"grants": {"vni_ranges": ["200-299"]}}),
    );
    w.put(Kind::Tenant, "legacy", "legacy", json!({}));
    w.put(
        Kind::Network,
        "other-net",
        "other",
        json!({"vni": 250, "cidr": "10.9.0.0/24", "encap": "vxlan"}),
    );
    w.put(
        Kind::Network,
        "legacy-net",
        "legacy",
        json!({"vni": 5000, "cidr": "10.9.0.0/24", "encap": "vxlan"}),
    );
    let n = |vni: u32| json!({"vni": vni, "cidr": "10.1.0.0/24", "encap": "vxlan"});
    let rows: Vec<((&str, Writer, Value), Want)> = vec![
        (("acme", Writer::Tenant, n(150)), OK),
        (("acme", Writer::Tenant, n(250)), Some("spec.vni")),
        (("acme", Writer::Tenant, n(5001)), Some("spec.vni")),
        (("acme", Writer::FleetController, n(5001)), OK),
        // Inside another tenant's grant: not even the fleet controller.
        (("acme", Writer::FleetController, n(260)), Some("spec.vni")),
        (
            ("legacy", Writer::FleetController, n(150)),
            Some("spec.vni"),
        ),
        // In use by another network.
        (("legacy", Writer::FleetController, n(5000)), OK),
        (("acme", Writer::FleetController, n(5000)), Some("spec.vni")),
    ];
    check_rows("vni grants", &rows, |(tenant, writer, v)| {
        let spec = Spec::parse(Kind::Network, v)?;
        validate_spec(&spec)?;
        // "legacy-net" itself may keep its VNI.
        let id = if *tenant == "legacy" {
            "legacy-net"
        } else {
            "n-new"
        };
        validate_in_context(id, tenant, *writer, &spec, &w)
    });
    for vni in [250, 5000] {
        let spec = Spec::parse(Kind::Network, &n(vni)).unwrap();
        let err =
            validate_in_context("n-new", "acme", Writer::FleetController, &spec, &w).unwrap_err();
        for secret in ["other", "legacy"] {
            assert!(!err.message.contains(secret), "{err}");
        }
    }
    // Grants of two tenants never overlap, and never hold another's network.
    let rows: Vec<(Value, Want)> = vec![
        (json!({"grants": {"vni_ranges": ["100-199"]}}), OK),
        (
            json!({"grants": {"vni_ranges": ["150-160"]}}),
            Some("spec.grants.vni_ranges[0]"),
        ),
        (
            json!({"grants": {"vni_ranges": ["4000-6000"]}}),
            Some("spec.grants.vni_ranges[0]"),
        ),
        (json!({"grants": {"vni_ranges": ["300-399"]}}), OK),
    ];
    check_rows("vni grant overlap", &rows, |v| {
        let spec = Spec::parse(Kind::Tenant, v)?;
        validate_spec(&spec)?;
        let id = if v["grants"]["vni_ranges"][0] == "100-199" {
            "acme"
        } else {
            "third"
        };
        validate_in_context(id, id, Writer::FleetController, &spec, &w)
    });
}

/// TENANCY.md invariant 1: a tenant's listener listens and connects only
/// on host addresses of the tenant's own networks.
#[test]
fn tls_listener_addresses_stay_in_the_tenants_networks() {
    let p = pems();
    let mut w = Objects::default();
    w.put(Kind::Tenant, "acme", "acme", json!({}));
    w.put(
        Kind::Network,
        "net1",
        "acme",
        json!({"vni": 100, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
    );
    w.put(Kind::Tenant, "other", "other", json!({}));
    w.put(
        Kind::Network,
        "net-b",
        "other",
        json!({"vni": 200, "cidr": "10.7.0.0/24", "encap": "vxlan"}),
    );
    let listener = json!({
        "listen": "10.0.0.1:443", "upstream": "10.0.0.10:8080",
        "certificate_pem": p.cert, "private_key_pem": p.key, "ktls": "auto"
    });
    let rows: Vec<(Value, Want)> = vec![
        (json!({}), OK),
        (json!({"upstream": "127.0.0.1:9443"}), Some("spec.upstream")),
        (json!({"upstream": "[::1]:9443"}), Some("spec.upstream")),
        (
            json!({"upstream": "169.254.169.254:80"}),
            Some("spec.upstream"),
        ),
        (json!({"listen": "0.0.0.0:443"}), Some("spec.listen")),
        (json!({"listen": "224.0.0.1:443"}), Some("spec.listen")),
        (
            json!({"upstream": "192.0.2.10:8080"}),
            Some("spec.upstream"),
        ),
        // Another tenant's network.
        (json!({"upstream": "10.7.0.5:8080"}), Some("spec.upstream")),
        // The network and broadcast addresses are no hosts.
        (json!({"listen": "10.0.0.255:443"}), Some("spec.listen")),
    ];
    check_rows("tls listener addresses", &rows, |patch| {
        let spec = Spec::parse(Kind::TlsListener, &with(&listener, patch.clone()))?;
        validate_spec(&spec)?;
        validate_in_context("l1", "acme", Writer::FleetController, &spec, &w)
    });
}

/// TENANCY.md invariant 4: a volume's host NQN is its own.
#[test]
fn host_nqns_are_per_volume() {
    let mut w = Objects::default();
    w.put(Kind::Tenant, "acme", "acme", json!({}));
    w.put(Kind::Tenant, "other", "other", json!({}));
    w.put(
        Kind::Function,
        "d1",
        "acme",
        json!({"type": "nvme", "pf": "pf0"}),
    );
    w.put(
        Kind::Function,
        "d2",
        "other",
        json!({"type": "nvme", "pf": "pf0"}),
    );
    let src = |hostnqn: Option<&str>| {
        let mut n = json!({"transport": "tcp", "address": "192.0.2.5", "port": 4420,
                           "subnqn": "nqn.2014-08.org.example:remote"});
        if let Some(h) = hostnqn {
            n["hostnqn"] = json!(h);
        }
        json!({"function": "d2", "source": {"nvmeof": n}})
    };
    w.put(
        Kind::Volume,
        "vol-b",
        "other",
        src(Some("nqn.2020-01.com.other:host")),
    );
    let v = |h: Option<&str>| with(&src(h), json!({"function": "d1"}));
    let rows: Vec<(Value, Want)> = vec![
        (v(None), OK),
        (v(Some("nqn.2020-01.com.acme:host")), OK),
        (
            v(Some("nqn.2026-11.dev.dpu-agent:acme:vol-a:initiator")),
            OK,
        ),
        (
            v(Some("nqn.2026-11.dev.dpu-agent:other:vol-b:initiator")),
            Some("spec.source.nvmeof.hostnqn"),
        ),
        (
            v(Some("nqn.2020-01.com.other:host")),
            Some("spec.source.nvmeof.hostnqn"),
        ),
    ];
    check_rows("host nqn", &rows, |v| {
        let spec = Spec::parse(Kind::Volume, v)?;
        validate_spec(&spec)?;
        validate_in_context("vol-a", "acme", Writer::Tenant, &spec, &w)
    });
}
