//! Smoke tests of the VM rig against Debian's stock kernel: each asserts on
//! kernel state observed inside the guest. Checks are grouped into few boots
//! (a TCG boot costs ~7 s). Gated by `DPU_VM_TESTS=1`; see tests/README.md.

use dpu_tests::vm::{self, Vm};

/// ESP SA with AES-GCM, kernel TLS and the openvswitch datapath: one boot.
#[test]
fn crypto_and_ovs_kernel_paths() -> anyhow::Result<()> {
    if !vm::enabled() {
        return Ok(());
    }
    let out = Vm::builder()
        .modules(&["esp4", "xfrm_user", "tls", "openvswitch"])
        .binary(vm::musl_binary("ktls-probe")?)
        .script(
            r#"set -e
echo '## xfrm'
ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 7 mode tunnel \
    aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
ip xfrm state
echo '## ktls'
ktls-probe
cat /proc/net/tls_stat
echo '## ovs'
grep -w '^openvswitch' /proc/modules
genl ctrl list | grep -o 'ovs_[a-z]*'
"#,
        )
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let xfrm = section(&out.stdout, "xfrm");
    assert!(
        xfrm.contains("proto esp spi 0x00001000 reqid 7 mode tunnel"),
        "{out}"
    );
    assert!(
        xfrm.contains("aead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128"),
        "{out}"
    );
    let ktls = section(&out.stdout, "ktls");
    assert!(
        ktls.contains("client setsockopt(TCP_ULP, \"tls\"): ok"),
        "{out}"
    );
    assert!(
        ktls.contains("roundtrip: hello through kernel TLS"),
        "{out}"
    );
    assert!(
        stat(ktls, "TlsTxSw") >= 1 && stat(ktls, "TlsRxSw") >= 1,
        "{out}"
    );
    let ovs = section(&out.stdout, "ovs");
    assert!(
        ovs.contains("ovs_datapath") && ovs.contains("ovs_flow"),
        "{out}"
    );
    Ok(())
}

/// The lines after `## name` up to the next `## ` header.
fn section<'a>(stdout: &'a str, name: &str) -> &'a str {
    let header = format!("## {name}\n");
    let Some(start) = stdout.find(&header) else {
        return "";
    };
    let rest = &stdout[start + header.len()..];
    &rest[..rest.find("\n## ").map_or(rest.len(), |i| i + 1)]
}

/// A counter from /proc/net/tls_stat (`Name<whitespace>value`).
fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}
