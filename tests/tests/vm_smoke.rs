//! Smoke tests of the VM rig against Debian's stock kernel: each asserts on
//! kernel state observed inside the guest. Checks are grouped into few boots
//! (a TCG boot costs ~7 s). Gated by `DPU_VM_TESTS=1`; see tests/README.md.

use dpu_tests::vm::{self, Vm, section};

/// ESP SA with AES-GCM, kernel TLS and the openvswitch datapath: one boot.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn crypto_and_ovs_kernel_paths() -> anyhow::Result<()> {
    vm::require();
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

/// A counter from /proc/net/tls_stat (`Name<whitespace>value`).
fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The emulated NVMe controller as an SR-IOV PF with 2 VFs, and an nvmet
/// TCP target on loopback backed by a virtio disk, read back over nvme-tcp.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn nvme_sriov_and_nvmet_tcp() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .nvme_sriov()
        .virtio_blk(8)
        .modules(&["nvmet", "nvmet-tcp", "nvme-tcp"])
        .packages(&["nvme-cli"])
        .script(
            r#"set -e
echo '## sriov'
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/sriov_totalvfs" ] && [ "$(cat "$d/class")" = 0x010802 ] && PF=$d
done
echo "pf ${PF##*/} totalvfs $(cat "$PF/sriov_totalvfs")"
# No driver for the VFs: QEMU's VFs stay offline until assigned resources.
echo 0 > "$PF/sriov_drivers_autoprobe"
echo 2 > "$PF/sriov_numvfs"
echo "numvfs $(cat "$PF/sriov_numvfs")"
for v in virtfn0 virtfn1; do
    vf=$(readlink -f "$PF/$v")
    echo "$v ${vf##*/} physfn=$(readlink -f "$vf/physfn" | sed 's,.*/,,') id=$(cat "$vf/vendor"):$(cat "$vf/device")"
done
echo '## nvmet'
dd if=/dev/urandom of=/dev/vda bs=1M count=8 2>/dev/null
echo "source $(sha256sum /dev/vda | cut -d' ' -f1)"
NQN=nqn.2024-01.io.dpu:vm-smoke
S=/sys/kernel/config/nvmet/subsystems/$NQN
P=/sys/kernel/config/nvmet/ports/1
mkdir "$S"
echo 1 > "$S/attr_allow_any_host"
mkdir "$S/namespaces/1"
echo -n /dev/vda > "$S/namespaces/1/device_path"
echo 1 > "$S/namespaces/1/enable"
mkdir "$P"
echo ipv4 > "$P/addr_adrfam"
echo tcp > "$P/addr_trtype"
echo 127.0.0.1 > "$P/addr_traddr"
echo 4420 > "$P/addr_trsvcid"
ln -s "$S" "$P/subsystems/$NQN"
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n "$NQN" \
    -q nqn.2014-08.org.nvmexpress:uuid:8f0e2a4e-6a8c-4b55-9a38-0c5d1b3f9e11
for i in $(seq 50); do
    DEV=$(ls /dev/nvme*n1 2>/dev/null | head -1)
    [ -n "$DEV" ] && break
    sleep 0.1
done
echo "device $DEV size $(cat /sys/block/${DEV##*/}/size)"
echo "read $(sha256sum "$DEV" | cut -d' ' -f1)"
nvme list-subsys
nvme disconnect -n "$NQN"
"#,
        )
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let sriov = section(&out.stdout, "sriov");
    assert!(
        sriov.contains("totalvfs 4") && sriov.contains("numvfs 2"),
        "{out}"
    );
    assert!(
        sriov.contains("virtfn0 0000:") && sriov.contains("virtfn1 0000:"),
        "{out}"
    );
    let nvmet = section(&out.stdout, "nvmet");
    let source = field(nvmet, "source");
    assert_eq!(source.len(), 64, "{out}");
    assert_eq!(field(nvmet, "read"), source, "{out}");
    assert!(nvmet.contains("size 16384"), "{out}");
    assert!(
        nvmet.contains("nqn.2024-01.io.dpu:vm-smoke") && nvmet.contains("tcp traddr=127.0.0.1"),
        "{out}"
    );
    Ok(())
}

/// An igb SR-IOV PF with 2 VF netdevs, legacy VF settings reflected by
/// iproute2, and a VF bound to vfio-pci behind the emulated Intel IOMMU.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn igb_vfs_and_vfio() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .igb()
        .iommu()
        .modules(&["igbvf", "vfio-pci"])
        .script(
            r#"set -e
PF=$(ls -d /sys/bus/pci/drivers/igb/0000:* | head -1)
IF=$(ls "$PF/net")
echo '## pf'
echo "pf ${PF##*/} netdev $IF totalvfs $(cat "$PF/sriov_totalvfs")"
ip link set "$IF" up
echo 2 > "$PF/sriov_numvfs"
echo '## vfs'
for v in virtfn0 virtfn1; do
    vf=$(readlink -f "$PF/$v")
    echo "$v ${vf##*/} driver=$(readlink -f "$vf/driver" | sed 's,.*/,,') netdev=$(ls "$vf/net")"
done
echo '## vfconfig'
# tx rate needs the PF link up at 1 Gb/s.
for i in $(seq 50); do [ "$(cat /sys/class/net/$IF/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
ip link set "$IF" vf 0 mac 02:00:00:00:00:01 vlan 100 rate 100 trust on spoofchk off
ip link show "$IF"
echo '## vfio'
VF=$(readlink -f "$PF/virtfn1")
echo vfio-pci > "$VF/driver_override"
[ -e "$VF/driver" ] && echo "${VF##*/}" > "$VF/driver/unbind"
echo "${VF##*/}" > /sys/bus/pci/drivers_probe
G=$(readlink -f "$VF/iommu_group" | sed 's,.*/,,')
echo "vf ${VF##*/} driver=$(readlink -f "$VF/driver" | sed 's,.*/,,') group=$G"
ls /dev/vfio/
[ -c "/dev/vfio/$G" ] && echo "chardev /dev/vfio/$G"
"#,
        )
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");
    let pf = section(&out.stdout, "pf");
    assert!(pf.contains("totalvfs 7"), "{out}");
    let vfs = section(&out.stdout, "vfs");
    for v in ["virtfn0", "virtfn1"] {
        let line = vfs.lines().find(|l| l.starts_with(v)).unwrap_or("");
        assert!(
            line.contains("driver=igbvf") && line.contains("netdev=eth"),
            "{out}"
        );
    }
    vm::assert_igb_vf0_configured(section(&out.stdout, "vfconfig"), &out);
    let vfio = section(&out.stdout, "vfio");
    let group = field(vfio, "vf")
        .split("group=")
        .nth(1)
        .unwrap_or("")
        .to_string();
    assert!(vfio.contains("driver=vfio-pci"), "{out}");
    assert!(
        !group.is_empty() && vfio.contains(&format!("chardev /dev/vfio/{group}")),
        "{out}"
    );
    Ok(())
}

/// The rest of the first line starting with `name `.
fn field(text: &str, name: &str) -> String {
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or("")
        .to_string()
}
