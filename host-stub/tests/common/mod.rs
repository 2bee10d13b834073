//! Sysfs fixtures the host-stub suites share.

#![allow(dead_code)]

use host_stub::fixture::{FixtureFunction, SysfsTree};

/// A Mellanox (15b3) Ethernet function, device id `device`, at `address`,
/// bound to mlx5_core.
pub fn mlx(address: &str, device: u16) -> FixtureFunction {
    FixtureFunction {
        address: address.into(),
        vendor: 0x15b3,
        device,
        class: 0x020000,
        driver: Some("mlx5_core".into()),
        ..FixtureFunction::default()
    }
}

/// Adds a BlueField-3 PF (a2dc) at 0000:03:00.0 with netdev `pf_netdev`,
/// IOMMU group 10 and room for 8 VFs, and makes `vfs` of its VFs (101e) at
/// 0000:03:00.2 on, with netdevs `{vf_netdev_prefix}{i}` and IOMMU groups
/// 20 on.
pub fn bluefield3_pf(tree: &SysfsTree, pf_netdev: &str, vfs: u32, vf_netdev_prefix: &str) {
    tree.add_function(&FixtureFunction {
        sriov_totalvfs: Some(8),
        netdev: Some(pf_netdev.into()),
        iommu_group: Some(10),
        ..mlx("0000:03:00.0", 0xa2dc)
    })
    .unwrap();
    tree.set_num_vfs("0000:03:00.0", vfs, |i| FixtureFunction {
        netdev: Some(format!("{vf_netdev_prefix}{i}")),
        iommu_group: Some(20 + i),
        ..mlx(&format!("0000:03:00.{}", 2 + i), 0x101e)
    })
    .unwrap();
}
