//! The functions backend's SR-IOV path against a real PF driver: Debian's
//! kernel in the VM rig with QEMU's igb (82576) SR-IOV NIC. After `echo 2 >
//! sriov_numvfs`, `vf-config` (net_offload::functions::sriov, static musl)
//! sets VF 0's MAC, VLAN, rate, trust and spoof-check through rtnetlink, and
//! Debian's iproute2 (`ip link show`) is the witness of each. Gated on
//! `DPU_VM_TESTS=1`; `tests/vm/run.sh` builds `vf-config` first.

use dpu_tests::vm::{self, Vm, section};

#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn sriov_backend_configures_an_igb_vf() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .igb()
        .binary(vm::musl_binary("vf-config")?)
        .script(
            r#"set -e
PF=$(ls -d /sys/bus/pci/drivers/igb/0000:* | head -1)
IF=$(ls "$PF/net")
ip link set "$IF" up
echo 2 > "$PF/sriov_numvfs"
# A tx rate needs the PF link up at 1 Gb/s.
for i in $(seq 50); do [ "$(cat /sys/class/net/$IF/carrier 2>/dev/null)" = 1 ] && break; sleep 0.1; done
echo '## agent'
vf-config "$IF" 0 02:00:00:00:00:01 100 100 on off
echo '## witness'
ip link show "$IF"
"#,
        )
        .run()?;
    assert!(out.success(), "{out}");
    let agent = section(&out.stdout, "agent");
    assert!(
        agent.contains(
            "read vf 0 mac 02:00:00:00:00:01 vlan 100 max_tx_rate 100 trust on spoofchk off"
        ),
        "the backend's own read-back\n{out}"
    );
    vm::assert_igb_vf0_configured(section(&out.stdout, "witness"), &out);
    Ok(())
}
