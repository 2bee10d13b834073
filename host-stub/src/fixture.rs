//! Builds sysfs-shaped trees in a directory for tests, benchmarks and dry
//! runs of `host-stub discover --sysfs-root`. It writes what
//! [`crate::discover`] and [`crate::vfio`] read and write, in the kernel's
//! shape: real directories under `devices/pci0000:00/`, relative symlinks
//! from `bus/pci/devices/`, `driver`, `iommu_group`, `physfn`, `virtfnN`,
//! and `bus/auxiliary/devices/` for SFs, `class/infiniband`,
//! `class/infiniband_verbs` and `class/misc/rdma_cm` for RDMA devices. It
//! does not try to be complete.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// One PCI function to create. `address` is `dddd:bb:dd.f`.
#[derive(Debug, Clone, Default)]
pub struct FixtureFunction {
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: Option<u16>,
    pub class: u32,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
    pub netdev: Option<String>,
    /// `(controller, block device)`, e.g. `("nvme0", "nvme0n1")`.
    pub nvme: Option<(String, String)>,
    /// `(virtioN, "block" | "net", name)`.
    pub virtio: Option<(String, String, String)>,
    pub sriov_totalvfs: Option<u32>,
    pub dsn: Option<u64>,
    pub vpd_serial: Option<String>,
}

/// A sysfs tree rooted at a directory the caller owns.
#[derive(Debug, Clone)]
pub struct SysfsTree {
    root: PathBuf,
}

impl SysfsTree {
    pub fn new(root: &Path) -> io::Result<Self> {
        for dir in [
            "bus/pci/devices",
            "bus/pci/drivers",
            "bus/auxiliary/devices",
            "kernel/iommu_groups",
            "devices/pci0000:00",
        ] {
            fs::create_dir_all(root.join(dir))?;
        }
        fs::write(root.join("bus/pci/drivers_probe"), "")?;
        Ok(SysfsTree {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real directory of a PCI function.
    pub fn device_dir(&self, address: &str) -> PathBuf {
        self.root.join("devices/pci0000:00").join(address)
    }

    pub fn add_function(&self, f: &FixtureFunction) -> io::Result<PathBuf> {
        let dir = self.device_dir(&f.address);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("vendor"), format!("0x{:04x}\n", f.vendor))?;
        fs::write(dir.join("device"), format!("0x{:04x}\n", f.device))?;
        let subsystem_vendor = f.subsystem_vendor.unwrap_or(f.vendor);
        fs::write(
            dir.join("subsystem_vendor"),
            format!("0x{subsystem_vendor:04x}\n"),
        )?;
        fs::write(dir.join("class"), format!("0x{:06x}\n", f.class))?;
        fs::write(
            dir.join("numa_node"),
            format!("{}\n", f.numa_node.unwrap_or(-1)),
        )?;
        fs::write(dir.join("driver_override"), "(null)\n")?;
        fs::write(dir.join("config"), config_space(f))?;
        if let Some(sn) = &f.vpd_serial {
            fs::write(dir.join("vpd"), vpd_with_serial(sn))?;
        }
        if let Some(total) = f.sriov_totalvfs {
            fs::write(dir.join("sriov_totalvfs"), format!("{total}\n"))?;
            fs::write(dir.join("sriov_numvfs"), "0\n")?;
        }
        if let Some(driver) = &f.driver {
            self.bind_link(&f.address, driver)?;
        }
        if let Some(group) = f.iommu_group {
            let gdir = self
                .root
                .join("kernel/iommu_groups")
                .join(group.to_string());
            fs::create_dir_all(gdir.join("devices"))?;
            symlink(
                format!("../../../kernel/iommu_groups/{group}"),
                dir.join("iommu_group"),
            )?;
        }
        if let Some(netdev) = &f.netdev {
            fs::create_dir_all(dir.join("net").join(netdev))?;
        }
        if let Some((ctrl, ns)) = &f.nvme {
            fs::create_dir_all(dir.join("nvme").join(ctrl).join(ns))?;
        }
        if let Some((virtio, sub, name)) = &f.virtio {
            fs::create_dir_all(dir.join(virtio).join(sub).join(name))?;
        }
        symlink(
            format!("../../../devices/pci0000:00/{}", f.address),
            self.root.join("bus/pci/devices").join(&f.address),
        )?;
        Ok(dir)
    }

    /// Points the function's `driver` link at `bus/pci/drivers/<driver>`,
    /// creating the driver directory with `bind` and `unbind` files.
    pub fn bind_link(&self, address: &str, driver: &str) -> io::Result<()> {
        let ddir = self.root.join("bus/pci/drivers").join(driver);
        fs::create_dir_all(&ddir)?;
        for file in ["bind", "unbind", "new_id"] {
            if !ddir.join(file).exists() {
                fs::write(ddir.join(file), "")?;
            }
        }
        let link = self.device_dir(address).join("driver");
        let _ = fs::remove_file(&link);
        symlink(format!("../../../bus/pci/drivers/{driver}"), link)
    }

    /// Adds VF `index` of `pf` at `vf.address`, linked both ways.
    pub fn add_vf(&self, pf: &str, index: u32, vf: &FixtureFunction) -> io::Result<()> {
        let dir = self.add_function(vf)?;
        symlink(format!("../{pf}"), dir.join("physfn"))?;
        symlink(
            format!("../{}", vf.address),
            self.device_dir(pf).join(format!("virtfn{index}")),
        )
    }

    /// Sets `sriov_numvfs` of `pf` to `count`, as the kernel does: removes
    /// every existing VF, then creates `count` from `template(index)`.
    pub fn set_num_vfs(
        &self,
        pf: &str,
        count: u32,
        template: impl Fn(u32) -> FixtureFunction,
    ) -> io::Result<()> {
        let pf_dir = self.device_dir(pf);
        for entry in fs::read_dir(&pf_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("virtfn") {
                if let Ok(target) = fs::read_link(entry.path())
                    && let Some(vf) = target.file_name()
                {
                    self.remove_function(&vf.to_string_lossy())?;
                }
                fs::remove_file(entry.path())?;
            }
        }
        for index in 0..count {
            self.add_vf(pf, index, &template(index))?;
        }
        fs::write(pf_dir.join("sriov_numvfs"), format!("{count}\n"))
    }

    pub fn remove_function(&self, address: &str) -> io::Result<()> {
        let _ = fs::remove_file(self.root.join("bus/pci/devices").join(address));
        match fs::remove_dir_all(self.device_dir(address)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Adds SF `mlx5_core.sf.<aux_index>` with `sfnum` under `parent`, with
    /// its netdev under an `mlx5_core.eth.<aux_index>` child.
    pub fn add_sf(
        &self,
        parent: &str,
        aux_index: u32,
        sfnum: u32,
        netdev: Option<&str>,
    ) -> io::Result<()> {
        let name = format!("mlx5_core.sf.{aux_index}");
        let dir = self.device_dir(parent).join(&name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("sfnum"), format!("{sfnum}\n"))?;
        if let Some(netdev) = netdev {
            fs::create_dir_all(
                dir.join(format!("mlx5_core.eth.{aux_index}"))
                    .join("net")
                    .join(netdev),
            )?;
        }
        symlink(
            format!("../../../devices/pci0000:00/{parent}/{name}"),
            self.root.join("bus/auxiliary/devices").join(name),
        )
    }
}

/// One RDMA device to create with [`SysfsTree::add_rdma_device`].
#[derive(Debug, Clone, Default)]
pub struct FixtureRdma {
    /// `mlx5_3`, `rxe0`.
    pub name: String,
    /// The PCI function it belongs to (its `device` link); `None` for a
    /// software device (rxe, siw), which lives under `devices/virtual`.
    pub pci: Option<String>,
    /// Populated GID entries of port 1: `(index, netdev)`.
    pub gids: Vec<(u32, String)>,
    /// How many further GID entries exist unpopulated (the kernel lists
    /// the whole table; reading an empty entry fails).
    pub empty_gids: u32,
    /// N of its `uverbsN` node, if `ib_uverbs` is "loaded".
    pub uverbs: Option<u32>,
}

impl SysfsTree {
    /// Adds an RDMA device in the kernel's shape: the real directory under
    /// the PCI function (or `devices/virtual/infiniband`), the
    /// `class/infiniband/<name>` link, `ports/1/gid_attrs/ndevs/<i>`, and
    /// its `infiniband_verbs/uverbsN` with `ibdev`.
    pub fn add_rdma_device(&self, r: &FixtureRdma) -> io::Result<()> {
        let parent = match &r.pci {
            Some(pci) => format!("devices/pci0000:00/{pci}"),
            None => "devices/virtual".to_string(),
        };
        let dir = self.root.join(&parent).join("infiniband").join(&r.name);
        let ndevs = dir.join("ports/1/gid_attrs/ndevs");
        fs::create_dir_all(&ndevs)?;
        if let Some(pci) = &r.pci {
            // `<pci>/infiniband/<name>/device` → `<pci>`, as the kernel links it.
            symlink(format!("../../../{pci}"), dir.join("device"))?;
        }
        for (index, netdev) in &r.gids {
            fs::write(ndevs.join(index.to_string()), format!("{netdev}\n"))?;
        }
        let first_empty = r.gids.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
        for index in first_empty..first_empty + r.empty_gids {
            // A directory stands for an entry whose read fails.
            fs::create_dir_all(ndevs.join(index.to_string()))?;
        }
        fs::create_dir_all(self.root.join("class/infiniband"))?;
        symlink(
            format!("../../{parent}/infiniband/{}", r.name),
            self.root.join("class/infiniband").join(&r.name),
        )?;
        if let Some(n) = r.uverbs {
            let vdir = self
                .root
                .join(&parent)
                .join("infiniband_verbs")
                .join(format!("uverbs{n}"));
            fs::create_dir_all(&vdir)?;
            fs::write(vdir.join("ibdev"), format!("{}\n", r.name))?;
            fs::create_dir_all(self.root.join("class/infiniband_verbs"))?;
            symlink(
                format!("../../{parent}/infiniband_verbs/uverbs{n}"),
                self.root
                    .join("class/infiniband_verbs")
                    .join(format!("uverbs{n}")),
            )?;
        }
        Ok(())
    }

    /// `class/misc/rdma_cm`, as `rdma_ucm` makes it.
    pub fn add_rdma_cm(&self) -> io::Result<()> {
        fs::create_dir_all(self.root.join("devices/virtual/misc/rdma_cm"))?;
        fs::create_dir_all(self.root.join("class/misc"))?;
        symlink(
            "../../devices/virtual/misc/rdma_cm",
            self.root.join("class/misc/rdma_cm"),
        )
    }
}

/// 4 KiB of config space: ids and class in the header, and a DSN extended
/// capability at 0x100 when the fixture has one.
fn config_space(f: &FixtureFunction) -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    c[0..2].copy_from_slice(&f.vendor.to_le_bytes());
    c[2..4].copy_from_slice(&f.device.to_le_bytes());
    c[9..12].copy_from_slice(&f.class.to_le_bytes()[..3]);
    if let Some(dsn) = f.dsn {
        let header: u32 = 0x0003 | (1 << 16);
        c[0x100..0x104].copy_from_slice(&header.to_le_bytes());
        c[0x104..0x108].copy_from_slice(&(dsn as u32).to_le_bytes());
        c[0x108..0x10c].copy_from_slice(&((dsn >> 32) as u32).to_le_bytes());
    }
    c
}

fn vpd_with_serial(serial: &str) -> Vec<u8> {
    let mut v = vec![0x82, 3, 0, b'D', b'P', b'U'];
    let mut ro = Vec::new();
    ro.extend_from_slice(b"SN");
    ro.push(serial.len() as u8);
    ro.extend_from_slice(serial.as_bytes());
    ro.extend_from_slice(b"RV\x01\x00");
    v.push(0x90);
    v.extend_from_slice(&(ro.len() as u16).to_le_bytes());
    v.extend_from_slice(&ro);
    v.push(0x78);
    v
}
