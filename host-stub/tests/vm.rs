//! host-stub against a real kernel: QEMU's emulated NVMe controller with
//! SR-IOV behind an emulated Intel IOMMU, in the VM rig (`dpu_tests::vm`).
//! Skipped unless `DPU_VM_TESTS=1` (see tests/README.md of the workspace).
//!
//! The guest runs the host's `host-stub` binary (glibc, like the guest's
//! Debian 12) to discover the PF and its VFs while `sriov_numvfs` goes
//! 2 → 4 → 0, and binds a VF to vfio-pci and back.

use std::path::PathBuf;

use dpu_tests::vm::{self, Vm};
use serde_json::Value;

/// The binary without debug info, so the initramfs stays small.
fn stripped_binary() -> anyhow::Result<PathBuf> {
    let src = PathBuf::from(env!("CARGO_BIN_EXE_host-stub"));
    let dir = std::env::temp_dir().join(format!("host-stub-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dst = dir.join("host-stub");
    let stripped = std::process::Command::new("strip")
        .arg("-o")
        .arg(&dst)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&src, &dst)?;
    }
    Ok(dst)
}

const SCRIPT: &str = r#"set -e
for d in /sys/bus/pci/devices/*; do
    [ -e "$d/sriov_totalvfs" ] && [ "$(cat "$d/class")" = 0x010802 ] && PF=$d
done
echo "pf ${PF##*/}"
echo "blocks $(ls /sys/block | tr '\n' ' ')"
echo "nvme-children $(ls "$PF"/nvme/* | tr '\n' ' ')"
disc() { host-stub discover --vendor 1b36 --device 0010 -o json > "$DPU_VM_OUT/$1.json"; }
# QEMU's VFs stay offline (no driver) until assigned resources.
echo 0 > "$PF/sriov_drivers_autoprobe"
echo 2 > "$PF/sriov_numvfs"
disc two
echo 0 > "$PF/sriov_numvfs"
echo 4 > "$PF/sriov_numvfs"
disc four
echo '## vfio'
VF=$(readlink -f "$PF/virtfn1")
A=${VF##*/}
host-stub vfio bind "$A"
G=$(readlink -f "$VF/iommu_group" | sed 's,.*/,,')
echo "bound driver=$(readlink -f "$VF/driver" | sed 's,.*/,,') override=$(cat "$VF/driver_override") group=$G"
[ -c "/dev/vfio/$G" ] && echo "chardev /dev/vfio/$G"
disc bound
host-stub vfio release "$A"
D=none; [ -e "$VF/driver" ] && D=$(readlink -f "$VF/driver" | sed 's,.*/,,')
echo "released driver=$D override=$(cat "$VF/driver_override")"
echo '## end'
echo 0 > "$PF/sriov_numvfs"
disc zero
"#;

fn parse(out: &vm::VmOutput, name: &str) -> Vec<Value> {
    let text = out
        .file_text(&format!("{name}.json"))
        .unwrap_or_else(|| panic!("no {name}.json\n{out}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.json: {e}\n{text}"))
}

#[test]
fn qemu_nvme_sriov_discovery_and_vfio() -> anyhow::Result<()> {
    if !vm::enabled() {
        return Ok(());
    }
    let binary = stripped_binary()?;
    let out = Vm::builder()
        .nvme_sriov()
        .iommu()
        .modules(&["vfio-pci"])
        .packages(&["libgcc-s1"])
        .binary(&binary)
        .script(SCRIPT)
        .run();
    if let Some(dir) = binary.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
    let out = out?;
    println!("{out}");
    assert!(out.success(), "{out}");

    let two = parse(&out, "two");
    let four = parse(&out, "four");
    let zero = parse(&out, "zero");
    assert_eq!(two.len(), 3, "PF + 2 VFs\n{out}");
    assert_eq!(four.len(), 5, "PF + 4 VFs\n{out}");
    assert_eq!(zero.len(), 1, "PF only\n{out}");

    let pf = &four[0];
    assert_eq!(pf["kind"], "pf");
    assert_eq!(pf["class"], "nvme");
    assert_eq!(pf["driver"], "nvme");
    // The rig's controller has no namespace of its own: the block device
    // the kernel lists (if any) must be the one reported.
    let blocks = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("blocks "))
        .unwrap_or("");
    let nvme_block = blocks.split_whitespace().find(|b| b.starts_with("nvme"));
    assert_eq!(pf["block_device"].as_str(), nvme_block, "{out}");
    let pf_addr = pf["pci_address"].as_str().unwrap();
    for (i, vf) in four[1..].iter().enumerate() {
        assert_eq!(vf["kind"], "vf", "{vf}");
        assert_eq!(vf["physfn"], pf_addr, "{vf}");
        assert_eq!(vf["vf_index"], i as u64, "{vf}");
        assert!(vf["iommu_group"].is_u64(), "{vf}");
        assert_eq!(vf["card"], pf["card"], "{vf}");
    }

    let vfio = out
        .stdout
        .split("## vfio")
        .nth(1)
        .and_then(|s| s.split("## end").next())
        .unwrap_or("");
    assert!(
        vfio.contains("bound driver=vfio-pci override=vfio-pci"),
        "{out}"
    );
    assert!(vfio.contains("chardev /dev/vfio/"), "{out}");
    assert!(
        vfio.contains("released driver=none override=(null)"),
        "{out}"
    );
    let bound = parse(&out, "bound");
    assert_eq!(bound[2]["driver"], "vfio-pci", "{out}");
    Ok(())
}
