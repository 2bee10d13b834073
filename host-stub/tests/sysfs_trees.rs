//! Discovery and selection against sysfs trees built in a tempdir.

mod common;

use common::mlx;
use host_stub::discover::{self, Function, FunctionKind};
use host_stub::fixture::{FixtureFunction, SysfsTree};
use host_stub::report;
use host_stub::selectors::{self, Selector};

const DSN_A: u64 = 0xb8ce_f603_00a1_b2c3;

/// A host with two BlueField cards and some of its own devices:
///
/// | address      | what                                        | card            |
/// |--------------|---------------------------------------------|-----------------|
/// | 0000:03:00.0 | BF-3 PF0 (a2dc), 8 VFs max, 2 made, ens1f0np0, SF 88 | A: DSN     |
/// | 0000:03:00.1 | BF-3 PF1 (a2dc), ens1f1np1                  | A: DSN          |
/// | 0000:03:00.2 | VF 0 of PF0 (101e), ens1f0v0, group 50      | A (from PF0)    |
/// | 0000:03:00.3 | VF 1 of PF0 (101e), on vfio-pci, group 51   | A (from PF0)    |
/// | 0000:04:00.0 | emulated NVMe (15b3:6001), nvme1n1          | A: DSN          |
/// | 0000:05:00.0 | emulated virtio-net (1af4:1041, subsys 15b3), virtio2/net/eth7 | pci fallback |
/// | 0000:81:00.0 | BF-2 PF0 (a2d6), VPD SN only, NUMA 1        | B: VPD SN       |
/// | 0000:00:1f.6 | the host's own Intel NIC                    | not the DPU's   |
/// | 0000:00:03.0 | the hypervisor's virtio-blk (no 15b3 subsys)| not the DPU's   |
/// | 0000:02:00.0 | the host's own NVMe disk (8086)             | not the DPU's   |
fn bluefield_host(tree: &SysfsTree) {
    let add = |f: FixtureFunction| tree.add_function(&f).unwrap();
    add(FixtureFunction {
        netdev: Some("ens1f0np0".into()),
        iommu_group: Some(40),
        numa_node: Some(0),
        sriov_totalvfs: Some(8),
        dsn: Some(DSN_A),
        ..mlx("0000:03:00.0", 0xa2dc)
    });
    add(FixtureFunction {
        netdev: Some("ens1f1np1".into()),
        iommu_group: Some(41),
        numa_node: Some(0),
        dsn: Some(DSN_A),
        ..mlx("0000:03:00.1", 0xa2dc)
    });
    tree.set_num_vfs("0000:03:00.0", 2, |i| FixtureFunction {
        netdev: (i == 0).then(|| "ens1f0v0".to_string()),
        iommu_group: Some(50 + i),
        numa_node: Some(0),
        driver: Some(if i == 0 { "mlx5_core" } else { "vfio-pci" }.into()),
        ..mlx(&format!("0000:03:00.{}", 2 + i), 0x101e)
    })
    .unwrap();
    tree.add_sf("0000:03:00.0", 2, 88, Some("en3f0pf0sf88"))
        .unwrap();
    add(FixtureFunction {
        class: 0x010802,
        driver: Some("nvme".into()),
        nvme: Some(("nvme1".into(), "nvme1n1".into())),
        iommu_group: Some(60),
        dsn: Some(DSN_A),
        ..mlx("0000:04:00.0", 0x6001)
    });
    add(FixtureFunction {
        address: "0000:05:00.0".into(),
        vendor: 0x1af4,
        device: 0x1041,
        subsystem_vendor: Some(0x15b3),
        class: 0x020000,
        driver: Some("virtio-pci".into()),
        virtio: Some(("virtio2".into(), "net".into(), "eth7".into())),
        iommu_group: Some(61),
        ..FixtureFunction::default()
    });
    add(FixtureFunction {
        netdev: Some("ens2f0np0".into()),
        iommu_group: Some(90),
        numa_node: Some(1),
        sriov_totalvfs: Some(16),
        vpd_serial: Some("MT2142X09876".into()),
        ..mlx("0000:81:00.0", 0xa2d6)
    });
    add(FixtureFunction {
        address: "0000:00:1f.6".into(),
        vendor: 0x8086,
        device: 0x15bc,
        class: 0x020000,
        driver: Some("e1000e".into()),
        netdev: Some("eno1".into()),
        ..FixtureFunction::default()
    });
    add(FixtureFunction {
        address: "0000:00:03.0".into(),
        vendor: 0x1af4,
        device: 0x1042,
        class: 0x010000,
        driver: Some("virtio-pci".into()),
        virtio: Some(("virtio0".into(), "block".into(), "vda".into())),
        ..FixtureFunction::default()
    });
    add(FixtureFunction {
        address: "0000:02:00.0".into(),
        vendor: 0x8086,
        device: 0x0a54,
        class: 0x010802,
        driver: Some("nvme".into()),
        nvme: Some(("nvme0".into(), "nvme0c0n1".into())),
        ..FixtureFunction::default()
    });
}

fn by_id<'a>(fs: &'a [Function], id: &str) -> &'a Function {
    fs.iter()
        .find(|f| f.id() == id)
        .unwrap_or_else(|| panic!("{id} not found"))
}

#[test]
fn bluefield_host_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::new(dir.path()).unwrap();
    bluefield_host(&tree);

    let all = discover::scan(dir.path()).unwrap();
    assert_eq!(all.len(), 11, "10 PCI functions and one SF");
    let dpu = selectors::select(&selectors::bluefield_defaults(), &all);
    let ids: Vec<&str> = dpu.iter().map(Function::id).collect();
    assert_eq!(
        ids,
        [
            "0000:03:00.0",
            "0000:03:00.1",
            "0000:03:00.2",
            "0000:03:00.3",
            "0000:04:00.0",
            "0000:05:00.0",
            "0000:81:00.0",
            "mlx5_core.sf.2",
        ]
    );

    let card_a = "dsn:b8-ce-f6-03-00-a1-b2-c3";
    let pf0 = by_id(&dpu, "0000:03:00.0");
    assert_eq!(pf0.kind(), FunctionKind::Pf);
    assert_eq!(pf0.card.as_deref(), Some(card_a));
    assert_eq!((pf0.sriov_totalvfs, pf0.sriov_numvfs), (Some(8), Some(2)));
    assert_eq!(pf0.api_class(), "pf");
    assert_eq!(by_id(&dpu, "0000:03:00.1").card.as_deref(), Some(card_a));

    let vf0 = by_id(&dpu, "0000:03:00.2");
    assert_eq!(vf0.kind(), FunctionKind::Vf);
    assert_eq!(vf0.physfn.as_deref(), Some("0000:03:00.0"));
    assert_eq!(vf0.vf_index, Some(0));
    assert_eq!(vf0.netdevs, ["ens1f0v0"]);
    assert_eq!(vf0.iommu_group, Some(50));
    assert_eq!(vf0.numa_node, Some(0));
    assert_eq!(
        vf0.card.as_deref(),
        Some(card_a),
        "a VF is on its PF's card"
    );
    let vf1 = by_id(&dpu, "0000:03:00.3");
    assert_eq!(
        (vf1.vf_index, vf1.driver.as_deref()),
        (Some(1), Some("vfio-pci"))
    );

    let sf = by_id(&dpu, "mlx5_core.sf.2");
    assert_eq!(sf.kind(), FunctionKind::Sf);
    assert_eq!(sf.pci_address, "0000:03:00.0");
    assert_eq!(sf.sf_index, Some(88));
    assert_eq!(sf.netdevs, ["en3f0pf0sf88"]);
    assert_eq!(sf.card.as_deref(), Some(card_a));

    let nvme = by_id(&dpu, "0000:04:00.0");
    assert_eq!(nvme.api_class(), "nvme");
    assert_eq!(nvme.block_devices, ["nvme1n1"]);

    let virtio = by_id(&dpu, "0000:05:00.0");
    assert_eq!(virtio.api_class(), "virtio-net");
    assert_eq!(virtio.netdevs, ["eth7"]);
    assert_eq!(virtio.card.as_deref(), Some("pci:0000:05:00.0"));

    let bf2 = by_id(&dpu, "0000:81:00.0");
    assert_eq!(bf2.card.as_deref(), Some("sn:MT2142X09876"));
    assert_eq!(bf2.numa_node, Some(1));

    // The host's own devices are seen by the scan, with multipath NVMe naming.
    assert_eq!(by_id(&all, "0000:02:00.0").block_devices, ["nvme0n1"]);
    assert_eq!(by_id(&all, "0000:00:03.0").block_devices, ["vda"]);
    assert_eq!(by_id(&all, "0000:00:1f.6").numa_node, None, "-1 is no NUMA");

    // The report keeps one device per function, with the new optional fields.
    let inv = report::host_inventory(&dpu);
    assert_eq!(inv.devices.len(), 8);
    let sf_dev = inv.devices.iter().find(|d| d.sf_index.is_some()).unwrap();
    assert_eq!(sf_dev.kind.as_deref(), Some("sf"));
    assert_eq!(sf_dev.aux_device.as_deref(), Some("mlx5_core.sf.2"));
    let json = serde_json::to_string(&inv).unwrap();
    let back: dpu_api::object::HostInventory = serde_json::from_str(&json).unwrap();
    assert_eq!(back, inv);

    // The table names every function once.
    let table = discover::render_table(&dpu);
    assert_eq!(table.lines().count(), 9);
    assert!(table.contains("0000:03:00.0 vf1"), "{table}");
}

/// QEMU's emulated NVMe controller with SR-IOV (`-device nvme,sriov_max_vfs=4`):
/// PF and VFs are 1b36:0010, class 010802; the PF is bound to `nvme` and has
/// a namespace, the VFs are not bound until their secondary controllers are
/// brought online.
fn qemu_nvme_host(tree: &SysfsTree) {
    let pf = "0000:00:04.0";
    tree.add_function(&FixtureFunction {
        address: pf.into(),
        vendor: 0x1b36,
        device: 0x0010,
        class: 0x010802,
        driver: Some("nvme".into()),
        nvme: Some(("nvme0".into(), "nvme0n1".into())),
        iommu_group: Some(4),
        sriov_totalvfs: Some(4),
        ..FixtureFunction::default()
    })
    .unwrap();
    tree.set_num_vfs(pf, 4, |i| FixtureFunction {
        address: format!("0000:00:04.{}", i + 1),
        vendor: 0x1b36,
        device: 0x0010,
        class: 0x010802,
        iommu_group: Some(5 + i),
        ..FixtureFunction::default()
    })
    .unwrap();
}

#[test]
fn qemu_nvme_needs_explicit_selectors() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::new(dir.path()).unwrap();
    qemu_nvme_host(&tree);
    let all = discover::scan(dir.path()).unwrap();
    assert_eq!(all.len(), 5);
    assert!(selectors::select(&selectors::bluefield_defaults(), &all).is_empty());

    let qemu = [Selector {
        vendors: vec!["1b36".into()],
        devices: vec!["0010".into()],
        ..Selector::default()
    }];
    let dpu = selectors::select(&qemu, &all);
    assert_eq!(dpu.len(), 5);
    let pf = by_id(&dpu, "0000:00:04.0");
    assert_eq!(pf.block_devices, ["nvme0n1"]);
    assert_eq!(pf.api_class(), "nvme");
    let vf_indexes: Vec<Option<u32>> = dpu.iter().skip(1).map(|f| f.vf_index).collect();
    assert_eq!(vf_indexes, [Some(0), Some(1), Some(2), Some(3)]);
    assert!(
        dpu.iter()
            .skip(1)
            .all(|f| f.api_class() == "nvme" && f.driver.is_none())
    );
    assert!(
        dpu.iter()
            .all(|f| f.card.as_deref() == Some("pci:0000:00:04.0"))
    );
}

#[test]
fn vf_count_changes_show_in_the_rescan_diff() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::new(dir.path()).unwrap();
    bluefield_host(&tree);
    let pf = "0000:03:00.0";
    let vf = |i: u32| FixtureFunction {
        iommu_group: Some(50 + i),
        ..mlx(&format!("0000:03:00.{}", 2 + i), 0x101e)
    };
    let scan = || {
        selectors::select(
            &selectors::bluefield_defaults(),
            &discover::scan(dir.path()).unwrap(),
        )
    };

    tree.set_num_vfs(pf, 2, vf).unwrap();
    let two = scan();
    tree.set_num_vfs(pf, 4, vf).unwrap();
    let four = scan();
    let d = discover::diff(&two, &four);
    assert_eq!(d.added, ["0000:03:00.4", "0000:03:00.5"]);
    assert!(d.removed.is_empty());
    // PF0's sriov_numvfs changed, and so did VF0/VF1 (netdev/driver now
    // differ from the first tree's).
    assert!(d.changed.contains(&pf.to_string()), "{d:?}");

    tree.set_num_vfs(pf, 0, vf).unwrap();
    let zero = scan();
    let d = discover::diff(&four, &zero);
    assert_eq!(
        d.removed,
        [
            "0000:03:00.2",
            "0000:03:00.3",
            "0000:03:00.4",
            "0000:03:00.5"
        ]
    );
    assert_eq!(d.changed, [pf]);
    assert!(
        discover::diff(&zero, &scan()).is_empty(),
        "a rescan without change is quiet"
    );
}

/// RDMA discovery (issue 14) over the BlueField host above plus RDMA
/// devices in the kernel's shape:
///
/// | device  | where                          | link / GIDs                         | uverbs   |
/// |---------|--------------------------------|-------------------------------------|----------|
/// | mlx5_2  | VF 0 (0000:03:00.2)            | `device` link, GIDs on `ens1f0v0`   | uverbs2  |
/// | rxe9    | software                       | GID on `ens1f0v0` too (loses to the link) | uverbs9 |
/// | mlx5_0  | PF 0                           | `device` link, no GID yet           | uverbs0  |
/// | mlx5_5  | the SF (no PCI address)        | GID on `en3f0pf0sf88`               | uverbs5  |
/// | rxe0    | software, on virtio-net `eth7` | GIDs only, 8 unpopulated entries    | uverbs10 |
/// | rxe1    | software, on the host's `eno1` | GID (not a DPU function)            | none     |
///
/// Proves: a VF's own device is found by its `device` link and wins over a
/// software device on the same netdev; a device with no populated GID is
/// still its function's; a software device is found by its GID entries on
/// the function's netdev (virtio); an SF's by its netdev only (it shares
/// the PF's address); uverbs by `ibdev`, `rdma_cm` from `class/misc`; VF 1
/// and NVMe get none; `host-stub discover -o json` shows them and the
/// inventory report carries them.
#[test]
fn rdma_devices_of_a_vf_and_of_a_software_device() {
    use host_stub::fixture::FixtureRdma;

    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::new(dir.path()).unwrap();
    bluefield_host(&tree);
    let rdma = |name: &str, pci: Option<&str>, gids: &[&str], empty: u32, uverbs: Option<u32>| {
        tree.add_rdma_device(&FixtureRdma {
            name: name.into(),
            pci: pci.map(str::to_owned),
            gids: gids
                .iter()
                .enumerate()
                .map(|(i, n)| (i as u32, n.to_string()))
                .collect(),
            empty_gids: empty,
            uverbs,
        })
        .unwrap();
    };
    rdma(
        "mlx5_2",
        Some("0000:03:00.2"),
        &["ens1f0v0", "ens1f0v0"],
        4,
        Some(2),
    );
    rdma("rxe9", None, &["ens1f0v0"], 0, Some(9));
    rdma("mlx5_0", Some("0000:03:00.0"), &[], 16, Some(0));
    rdma("mlx5_5", None, &["en3f0pf0sf88"], 2, Some(5));
    rdma("rxe0", None, &["eth7"], 8, Some(10));
    rdma("rxe1", None, &["eno1"], 0, None);
    tree.add_rdma_cm().unwrap();

    let all = discover::scan(dir.path()).unwrap();
    let dpu = selectors::select(&selectors::bluefield_defaults(), &all);
    let rdma_of = |id: &str| {
        by_id(&all, id)
            .rdma
            .as_ref()
            .map(|r| (r.device.clone(), r.uverbs.clone(), r.rdma_cm.clone()))
    };
    let cm = Some("/dev/infiniband/rdma_cm".to_string());
    let expect = |dev: &str, uverbs: &str| {
        Some((
            dev.to_string(),
            Some(format!("/dev/infiniband/{uverbs}")),
            cm.clone(),
        ))
    };
    assert_eq!(rdma_of("0000:03:00.2"), expect("mlx5_2", "uverbs2"));
    assert_eq!(rdma_of("0000:03:00.0"), expect("mlx5_0", "uverbs0"));
    assert_eq!(rdma_of("mlx5_core.sf.2"), expect("mlx5_5", "uverbs5"));
    assert_eq!(rdma_of("0000:05:00.0"), expect("rxe0", "uverbs10"));
    assert_eq!(
        rdma_of("0000:00:1f.6"),
        Some(("rxe1".into(), None, cm.clone()))
    );
    assert_eq!(rdma_of("0000:03:00.3"), None);
    assert_eq!(rdma_of("0000:04:00.0"), None);

    // `host-stub discover -o json` (the BlueField defaults) shows them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host-stub"))
        .args(["discover", "-o", "json", "--sysfs-root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let entry = |addr: &str| {
        json.iter()
            .find(|e| e["pci_address"] == addr && e.get("aux_device").is_none())
            .unwrap_or_else(|| panic!("{addr} in {json:?}"))
    };
    assert_eq!(
        entry("0000:03:00.2")["rdma"],
        serde_json::json!({"device": "mlx5_2", "uverbs": "/dev/infiniband/uverbs2",
                           "rdma_cm": "/dev/infiniband/rdma_cm"})
    );
    assert_eq!(
        entry("0000:05:00.0")["rdma"],
        serde_json::json!({"device": "rxe0", "uverbs": "/dev/infiniband/uverbs10",
                           "rdma_cm": "/dev/infiniband/rdma_cm"})
    );
    assert!(
        entry("0000:03:00.3").get("rdma").is_none(),
        "absent, not null"
    );

    // The inventory report carries them.
    let inv = report::host_inventory(&dpu);
    let virtio = inv
        .devices
        .iter()
        .find(|d| d.pci_address == "0000:05:00.0")
        .unwrap();
    assert_eq!(
        virtio.rdma,
        Some(dpu_api::object::HostRdma {
            device: "rxe0".into(),
            uverbs: Some("/dev/infiniband/uverbs10".into()),
            rdma_cm: cm.clone(),
        })
    );
}

/// Without `class/infiniband` (no RDMA on the host) nothing has RDMA, and
/// a `class/infiniband` entry that is a dangling link or has unreadable
/// parts is skipped without error.
#[test]
fn rdma_absent_or_broken_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::new(dir.path()).unwrap();
    bluefield_host(&tree);
    assert!(
        discover::scan(dir.path())
            .unwrap()
            .iter()
            .all(|f| f.rdma.is_none())
    );
    let ib = dir.path().join("class/infiniband");
    std::fs::create_dir_all(&ib).unwrap();
    std::os::unix::fs::symlink("../../devices/virtual/infiniband/gone", ib.join("gone")).unwrap();
    std::fs::create_dir_all(ib.join("odd/ports/x/gid_attrs/ndevs/0")).unwrap();
    std::fs::create_dir_all(dir.path().join("class/infiniband_verbs/uverbsX")).unwrap();
    assert!(
        discover::scan(dir.path())
            .unwrap()
            .iter()
            .all(|f| f.rdma.is_none())
    );
}
