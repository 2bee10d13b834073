//! Discovery of PCI functions and mlx5 scalable functions from a sysfs tree.
//!
//! Pure over a root directory (`/sys` in production, a tempdir in tests): it
//! only reads files and symlinks under it. A function that vanishes while it
//! is being read (hot unplug, `sriov_numvfs` lowered) just loses the
//! attributes it no longer has; the next scan drops it. Which functions
//! belong to the DPU is not decided here but in [`crate::selectors`].
//!
//! Layout read (Documentation/ABI/testing/sysfs-bus-pci, drivers/pci/iov.c):
//! `bus/pci/devices/<addr>/{vendor,device,subsystem_vendor,class,numa_node,
//! sriov_totalvfs,sriov_numvfs,config,vpd}`, the symlinks `driver`,
//! `iommu_group`, `physfn`, `virtfnN`, the children `net/<if>`,
//! `nvme/nvmeN/nvmeNnM`, `virtioN/{block,net}/<name>`, and
//! `bus/auxiliary/devices/mlx5_core.sf.N` (its real path is under its PF).
//!
//! RDMA (verbs) devices, see `assign_rdma`: `class/infiniband/<dev>/device`
//! and `class/infiniband/<dev>/ports/<p>/gid_attrs/ndevs/<i>`,
//! `class/infiniband_verbs/uverbsN/ibdev`, `class/misc/rdma_cm`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

/// PCI vendor id of virtio devices (Red Hat / Qumranet).
pub const VIRTIO_VENDOR: u16 = 0x1af4;

/// How a function sits on its card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    /// A PCI function that is not a VF (an SR-IOV PF or a plain function).
    Pf,
    /// An SR-IOV virtual function (has a `physfn` link).
    Vf,
    /// An mlx5 scalable function on the auxiliary bus.
    Sf,
}

impl FunctionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionKind::Pf => "pf",
            FunctionKind::Vf => "vf",
            FunctionKind::Sf => "sf",
        }
    }
}

/// One function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Function {
    /// `dddd:bb:dd.f`; for an SF, its parent PF's address.
    pub pci_address: String,
    pub kind: Option<FunctionKind>,
    /// PCI ids; `None` for an SF, which has none of its own.
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    pub subsystem_vendor: Option<u16>,
    /// The 24-bit class code (`0x010802` is NVMe).
    pub class: Option<u32>,
    pub driver: Option<String>,
    /// For a VF, its PF's address; for an SF, its parent PF's address.
    pub physfn: Option<String>,
    /// For a VF, N of the PF's `virtfnN` link that points to it.
    pub vf_index: Option<u32>,
    pub sriov_totalvfs: Option<u32>,
    pub sriov_numvfs: Option<u32>,
    pub netdevs: Vec<String>,
    pub block_devices: Vec<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
    /// See [`card_identity`].
    pub card: Option<String>,
    /// For an SF, its `sfnum`.
    pub sf_index: Option<u32>,
    /// For an SF, its auxiliary device name.
    pub aux_device: Option<String>,
    /// The RDMA device on this function (its own, or a software one bound
    /// to its netdev), see `assign_rdma`.
    pub rdma: Option<RdmaDevice>,
}

/// An RDMA (verbs) device as the host sees it, with the character devices
/// a workload needs to use it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RdmaDevice {
    /// Its name under `/sys/class/infiniband` (`mlx5_3`, `rxe0`).
    pub device: String,
    /// Its verbs character device, `/dev/infiniband/uverbsN` (absent while
    /// `ib_uverbs` is not loaded).
    pub uverbs: Option<String>,
    /// `/dev/infiniband/rdma_cm` when the host has the RDMA connection
    /// manager's character device (`rdma_ucm` loaded).
    pub rdma_cm: Option<String>,
}

impl RdmaDevice {
    /// The character devices a container needs, in a stable order.
    pub fn device_nodes(&self) -> Vec<String> {
        self.uverbs.iter().chain(&self.rdma_cm).cloned().collect()
    }
}

impl Function {
    pub fn kind(&self) -> FunctionKind {
        self.kind.unwrap_or(FunctionKind::Pf)
    }

    /// Unique within one host: the PCI address, or the auxiliary device name
    /// of an SF.
    pub fn id(&self) -> &str {
        self.aux_device.as_deref().unwrap_or(&self.pci_address)
    }

    /// The class the API uses (`HostDevice::class`): `nvme`, `virtio-net`,
    /// `virtio-blk`, `pf`, `vf` or `other`.
    pub fn api_class(&self) -> &'static str {
        if self.class.map(|c| c >> 8) == Some(0x0108) {
            return "nvme";
        }
        if self.vendor == Some(VIRTIO_VENDOR) {
            // Transitional ids 0x1000/0x1001, modern 0x1040 + virtio device id
            // (1 = net, 2 = block): virtio 1.2 §4.1.2.1.
            match self.device {
                Some(0x1000) | Some(0x1041) => return "virtio-net",
                Some(0x1001) | Some(0x1042) => return "virtio-blk",
                _ => return "other",
            }
        }
        match self.kind() {
            FunctionKind::Vf => "vf",
            FunctionKind::Pf if self.class.map(|c| c >> 16) == Some(0x02) => "pf",
            _ => "other",
        }
    }
}

/// One line of `host-stub discover -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunctionSummary {
    pub pci_address: String,
    pub kind: FunctionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux_device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sf_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub physfn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vf_index: Option<u32>,
    pub class: &'static str,
    pub vendor: Option<String>,
    pub device: Option<String>,
    pub driver: Option<String>,
    pub netdev: Option<String>,
    pub block_device: Option<String>,
    pub iommu_group: Option<u32>,
    pub numa_node: Option<i32>,
    pub card: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sriov_numvfs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rdma: Option<RdmaDevice>,
}

impl Function {
    pub fn summary(&self) -> FunctionSummary {
        let hex4 = |v: Option<u16>| v.map(|v| format!("{v:04x}"));
        FunctionSummary {
            pci_address: self.pci_address.clone(),
            kind: self.kind(),
            aux_device: self.aux_device.clone(),
            sf_index: self.sf_index,
            physfn: self
                .physfn
                .clone()
                .filter(|_| self.kind() == FunctionKind::Vf),
            vf_index: self.vf_index,
            class: self.api_class(),
            vendor: hex4(self.vendor),
            device: hex4(self.device),
            driver: self.driver.clone(),
            netdev: self.netdevs.first().cloned(),
            block_device: self.block_devices.first().cloned(),
            iommu_group: self.iommu_group,
            numa_node: self.numa_node,
            card: self.card.clone(),
            sriov_numvfs: self.sriov_numvfs,
            rdma: self.rdma.clone(),
        }
    }
}

/// The table `host-stub discover` prints: one line per function.
pub fn render_table(functions: &[Function]) -> String {
    let header = [
        "ADDRESS", "KIND", "CLASS", "ID", "DRIVER", "PF/VF", "NETDEV", "BLOCK", "IOMMU", "NUMA",
        "CARD",
    ];
    let dash = || "-".to_string();
    let rows: Vec<[String; 11]> = functions
        .iter()
        .map(|f| {
            let s = f.summary();
            let id = match (&s.vendor, &s.device) {
                (Some(v), Some(d)) => format!("{v}:{d}"),
                _ => s.aux_device.clone().unwrap_or_else(dash),
            };
            let rel = match f.kind() {
                FunctionKind::Vf => format!(
                    "{} vf{}",
                    f.physfn.as_deref().unwrap_or("?"),
                    f.vf_index.map_or("?".into(), |i| i.to_string())
                ),
                FunctionKind::Sf => {
                    format!("sf{}", f.sf_index.map_or("?".into(), |i| i.to_string()))
                }
                FunctionKind::Pf => match (f.sriov_numvfs, f.sriov_totalvfs) {
                    (Some(n), Some(t)) => format!("{n}/{t} vfs"),
                    _ => dash(),
                },
            };
            [
                s.pci_address,
                f.kind().as_str().to_string(),
                s.class.to_string(),
                id,
                s.driver.unwrap_or_else(dash),
                rel,
                s.netdev.unwrap_or_else(dash),
                s.block_device.unwrap_or_else(dash),
                s.iommu_group.map_or_else(dash, |g| g.to_string()),
                s.numa_node.map_or_else(dash, |n| n.to_string()),
                s.card.unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("cannot list PCI devices in {path} (is the sysfs root right?)")]
    ListDevices {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads every PCI function under `<root>/bus/pci/devices` and every mlx5 SF
/// under `<root>/bus/auxiliary/devices`, sorted by [`Function::id`].
pub fn scan(root: &Path) -> Result<Vec<Function>, DiscoverError> {
    let pci_dir = root.join("bus/pci/devices");
    let entries = fs::read_dir(&pci_dir).map_err(|source| DiscoverError::ListDevices {
        path: pci_dir.clone(),
        source,
    })?;
    let mut functions: BTreeMap<String, Function> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(address) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let function = read_pci_function(&pci_dir.join(&address), address.clone());
        functions.insert(address, function);
    }
    assign_vf_indexes(&pci_dir, &mut functions);
    assign_cards(&pci_dir, &mut functions);

    let mut all: Vec<Function> = functions.into_values().collect();
    all.extend(scan_scalable_functions(root, &all));
    all.sort_by(|a, b| a.id().cmp(b.id()));
    assign_rdma(root, &mut all);
    Ok(all)
}

/// The most GID entries read per port: the kernel's tables are at most a
/// few hundred long (rxe 1024 in 6.1); the bound keeps a hostile or broken
/// tree from making a scan arbitrarily long.
const MAX_GIDS_PER_PORT: usize = 4096;
/// The most ports read per RDMA device (an HCA has one or two).
const MAX_PORTS: usize = 64;

/// Gives each function its RDMA device:
///
/// 1. a device whose `class/infiniband/<dev>/device` link names the
///    function's own PCI address (a PF's or VF's own device, e.g. an mlx5
///    VF's `mlx5_3`, even before any GID is populated) wins;
/// 2. otherwise a device with a GID entry whose
///    `ports/<p>/gid_attrs/ndevs/<i>` names one of the function's netdevs
///    (a software device such as `rxe0` bound to the netdev, or an SF's
///    device, which has no PCI address of its own); of several, the first
///    by name.
///
/// SFs share their parent PF's address, so only rule 2 applies to them.
/// The GID tables of devices settled by rule 1 are not read: on a host with
/// hundreds of VFs with RoCE that would be a file read per GID entry.
/// The uverbs node is the `uverbsN` whose `class/infiniband_verbs/uverbsN/ibdev`
/// names the device; `rdma_cm` is given when `class/misc/rdma_cm` exists.
fn assign_rdma(root: &Path, functions: &mut [Function]) {
    let ib_dir = root.join("class/infiniband");
    let devices = list_names(&ib_dir);
    if devices.is_empty() {
        return;
    }
    let mut uverbs: BTreeMap<String, String> = BTreeMap::new();
    let verbs_dir = root.join("class/infiniband_verbs");
    let mut nodes: Vec<(u64, String)> = list_names(&verbs_dir)
        .into_iter()
        .filter(|n| is_numbered(n, "uverbs"))
        .filter_map(|n| Some((n["uverbs".len()..].parse().ok()?, n)))
        .collect();
    // One node per device; should a tree show two, the lowest N is taken.
    nodes.sort();
    for (_, node) in nodes {
        if let Some(dev) = read_trimmed(&verbs_dir.join(&node).join("ibdev")) {
            uverbs
                .entry(dev)
                .or_insert_with(|| format!("/dev/infiniband/{node}"));
        }
    }
    let rdma_cm = fs::symlink_metadata(root.join("class/misc/rdma_cm"))
        .is_ok()
        .then(|| "/dev/infiniband/rdma_cm".to_string());

    let mut by_pci: BTreeMap<String, String> = BTreeMap::new();
    let mut by_netdev: BTreeMap<String, String> = BTreeMap::new();
    let addresses: BTreeSet<&str> = functions
        .iter()
        .filter(|f| f.kind() != FunctionKind::Sf)
        .map(|f| f.pci_address.as_str())
        .collect();
    for dev in &devices {
        let dir = ib_dir.join(dev);
        if let Some(pci) = link_basename(&dir.join("device"))
            && addresses.contains(pci.as_str())
        {
            // Rule 1 settles this device; its GID table (hundreds of entries
            // on an mlx5 port, one read each) is not needed.
            by_pci.entry(pci).or_insert_with(|| dev.clone());
            continue;
        }
        for netdev in gid_netdevs(&dir) {
            by_netdev.entry(netdev).or_insert_with(|| dev.clone());
        }
    }
    for f in functions.iter_mut() {
        let own = (f.kind() != FunctionKind::Sf)
            .then(|| by_pci.get(&f.pci_address))
            .flatten();
        let found = own.or_else(|| f.netdevs.iter().find_map(|n| by_netdev.get(n)));
        f.rdma = found.map(|dev| RdmaDevice {
            device: dev.clone(),
            uverbs: uverbs.get(dev).cloned(),
            rdma_cm: rdma_cm.clone(),
        });
    }
}

/// The netdev names in a device's populated GID entries. An unpopulated
/// entry's file cannot be read (the kernel answers `EINVAL`) and is skipped.
fn gid_netdevs(dev_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ports = dev_dir.join("ports");
    for port in list_names(&ports).into_iter().take(MAX_PORTS) {
        let ndevs = ports.join(&port).join("gid_attrs/ndevs");
        for entry in list_names(&ndevs).into_iter().take(MAX_GIDS_PER_PORT) {
            if let Some(name) = read_trimmed(&ndevs.join(entry)) {
                out.insert(name);
            }
        }
    }
    out
}

fn read_pci_function(dir: &Path, pci_address: String) -> Function {
    let physfn = link_basename(&dir.join("physfn"));
    let mut block_devices = nvme_block_devices(dir);
    let mut netdevs = list_names(&dir.join("net"));
    for virtio in list_names(dir)
        .into_iter()
        .filter(|n| is_numbered(n, "virtio"))
    {
        block_devices.extend(list_names(&dir.join(&virtio).join("block")));
        netdevs.extend(list_names(&dir.join(&virtio).join("net")));
    }
    block_devices.sort();
    netdevs.sort();
    Function {
        kind: Some(if physfn.is_some() {
            FunctionKind::Vf
        } else {
            FunctionKind::Pf
        }),
        vendor: read_hex(&dir.join("vendor")).map(|v| v as u16),
        device: read_hex(&dir.join("device")).map(|v| v as u16),
        subsystem_vendor: read_hex(&dir.join("subsystem_vendor")).map(|v| v as u16),
        class: read_hex(&dir.join("class")),
        driver: link_basename(&dir.join("driver")),
        physfn,
        vf_index: None,
        sriov_totalvfs: read_parsed(&dir.join("sriov_totalvfs")),
        sriov_numvfs: read_parsed(&dir.join("sriov_numvfs")),
        netdevs,
        block_devices,
        iommu_group: link_basename(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
        // -1 is the kernel's "no NUMA information".
        numa_node: read_parsed::<i32>(&dir.join("numa_node")).filter(|n| *n >= 0),
        card: None,
        sf_index: None,
        aux_device: None,
        rdma: None,
        pci_address,
    }
}

/// Block devices of an NVMe controller: `nvme/nvme0/nvme0n1` without native
/// multipath, `nvme/nvme0/nvme0c0n1` (a path of head `nvme0n1`) with it.
fn nvme_block_devices(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ctrl in list_names(&dir.join("nvme")) {
        for ns in list_names(&dir.join("nvme").join(&ctrl)) {
            if let Some(name) = nvme_namespace_name(&ns) {
                out.push(name);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `nvme0n1` → itself, `nvme0c1n2` → `nvme0n2`, anything else → `None`.
pub fn nvme_namespace_name(entry: &str) -> Option<String> {
    let rest = entry.strip_prefix("nvme")?;
    let (subsys, rest) = split_digits(rest)?;
    let rest = match rest.strip_prefix('c') {
        Some(r) => split_digits(r)?.1,
        None => rest,
    };
    let ns = rest.strip_prefix('n')?;
    let (nsid, tail) = split_digits(ns)?;
    tail.is_empty().then(|| format!("nvme{subsys}n{nsid}"))
}

fn split_digits(s: &str) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

fn is_numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A VF's index is the N of the PF's `virtfnN` link that points to it.
fn assign_vf_indexes(pci_dir: &Path, functions: &mut BTreeMap<String, Function>) {
    let pfs: Vec<String> = functions
        .values()
        .filter(|f| f.sriov_totalvfs.is_some())
        .map(|f| f.pci_address.clone())
        .collect();
    for pf in pfs {
        for link in list_names(&pci_dir.join(&pf)) {
            let Some(index) = link
                .strip_prefix("virtfn")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(vf) = link_basename(&pci_dir.join(&pf).join(&link)) else {
                continue;
            };
            if let Some(f) = functions.get_mut(&vf) {
                f.vf_index = Some(index);
            }
        }
    }
}

/// Cards: a PF's identity from its own config space or VPD, function 0's
/// address as the fallback; VFs take their PF's.
fn assign_cards(pci_dir: &Path, functions: &mut BTreeMap<String, Function>) {
    let mut cards = BTreeMap::new();
    for f in functions.values().filter(|f| f.physfn.is_none()) {
        let dir = pci_dir.join(&f.pci_address);
        cards.insert(f.pci_address.clone(), card_identity(&dir, &f.pci_address));
    }
    for f in functions.values_mut() {
        let owner = f.physfn.as_ref().unwrap_or(&f.pci_address);
        f.card = cards.get(owner).cloned();
    }
}

/// The identity of the card a PF sits on: `dsn:xx-..-xx` from the PCIe
/// Device Serial Number extended capability (id 0x0003) in `config` (only
/// readable past 64 bytes by root), else `sn:...` from the VPD `SN` keyword
/// in `vpd`, else `pci:` and the address of function 0 of the same device.
pub fn card_identity(dir: &Path, pci_address: &str) -> String {
    if let Some(dsn) = read_limited(&dir.join("config"), 4096).and_then(|c| parse_dsn(&c)) {
        let bytes = dsn.to_be_bytes().map(|b| format!("{b:02x}"));
        return format!("dsn:{}", bytes.join("-"));
    }
    if let Some(sn) = read_limited(&dir.join("vpd"), 32 * 1024).and_then(|v| parse_vpd_serial(&v)) {
        return format!("sn:{sn}");
    }
    let function0 = match pci_address.rsplit_once('.') {
        Some((device, _)) => format!("{device}.0"),
        None => pci_address.to_string(),
    };
    format!("pci:{function0}")
}

/// Walks the PCIe extended capability list (from offset 0x100; header:
/// id in bits 0-15, version 16-19, next offset 20-31) for the Device Serial
/// Number capability (id 0x0003, PCIe base spec §7.9.3): lower dword at +4,
/// upper at +8.
pub fn parse_dsn(config: &[u8]) -> Option<u64> {
    let dword = |off: usize| -> Option<u32> {
        let b = config.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut offset = 0x100usize;
    // The list lives in 0x100..0x1000 and has at most (0x1000-0x100)/4 entries;
    // the bound also stops a looping list.
    for _ in 0..(0x1000 - 0x100) / 4 {
        let header = dword(offset)?;
        if header == 0 || header == u32::MAX {
            return None;
        }
        if header & 0xffff == 0x0003 {
            let low = dword(offset + 4)?;
            let high = dword(offset + 8)?;
            return Some((u64::from(high) << 32) | u64::from(low));
        }
        let next = ((header >> 20) & 0xffc) as usize;
        if next < 0x100 {
            return None;
        }
        offset = next;
    }
    None
}

/// Finds the `SN` keyword in the VPD read-only (0x90) or read-write (0x91)
/// large resources (PCI local bus spec 3.0 §6.4, PCIe base spec §6.28).
pub fn parse_vpd_serial(vpd: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < vpd.len() {
        let tag = vpd[i];
        if tag & 0x80 != 0 {
            let len = usize::from(u16::from_le_bytes([*vpd.get(i + 1)?, *vpd.get(i + 2)?]));
            let body = vpd.get(i + 3..i + 3 + len)?;
            if tag == 0x90 || tag == 0x91 {
                let mut j = 0;
                while j + 3 <= body.len() {
                    let key = &body[j..j + 2];
                    let klen = usize::from(body[j + 2]);
                    let data = body.get(j + 3..j + 3 + klen)?;
                    if key == b"SN" {
                        let sn = String::from_utf8_lossy(data);
                        let sn = sn.trim_matches(|c: char| c == '\0' || c.is_whitespace());
                        let printable = sn.chars().all(|c| c.is_ascii_graphic() || c == ' ');
                        return (!sn.is_empty() && printable).then(|| sn.to_string());
                    }
                    j += 3 + klen;
                }
            }
            i += 3 + len;
        } else {
            // Small resource: name in bits 3-6, length in bits 0-2; 0x0f is End.
            if (tag >> 3) & 0x0f == 0x0f {
                return None;
            }
            i += 1 + usize::from(tag & 0x07);
        }
    }
    None
}

/// mlx5 SFs: `bus/auxiliary/devices/mlx5_core.sf.N` links into the parent
/// PF's directory; the netdev is under its `mlx5_core.eth.N` child.
fn scan_scalable_functions(root: &Path, pci: &[Function]) -> Vec<Function> {
    let aux_dir = root.join("bus/auxiliary/devices");
    let mut out = Vec::new();
    for name in list_names(&aux_dir) {
        let Some(aux_index) = name.strip_prefix("mlx5_core.sf.") else {
            continue;
        };
        let link = aux_dir.join(&name);
        let Ok(real) = fs::canonicalize(&link) else {
            continue;
        };
        let Some(parent) = real
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        else {
            continue;
        };
        let parent_fn = pci.iter().find(|f| f.pci_address == parent);
        let mut netdevs = list_names(&real.join("net"));
        for child in list_names(&real)
            .into_iter()
            .filter(|c| c.contains(".eth."))
        {
            netdevs.extend(list_names(&real.join(child).join("net")));
        }
        netdevs.sort();
        out.push(Function {
            pci_address: parent.to_string(),
            kind: Some(FunctionKind::Sf),
            driver: link_basename(&real.join("driver")),
            physfn: Some(parent.to_string()),
            netdevs,
            numa_node: parent_fn.and_then(|f| f.numa_node),
            card: parent_fn.and_then(|f| f.card.clone()),
            sf_index: read_parsed(&real.join("sfnum")).or_else(|| aux_index.parse().ok()),
            aux_device: Some(name),
            ..Function::default()
        });
    }
    out
}

/// What changed between two scans, by [`Function::id`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl ScanDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub fn diff(old: &[Function], new: &[Function]) -> ScanDiff {
    let old: BTreeMap<&str, &Function> = old.iter().map(|f| (f.id(), f)).collect();
    let new: BTreeMap<&str, &Function> = new.iter().map(|f| (f.id(), f)).collect();
    let ids: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    let mut d = ScanDiff::default();
    for id in ids {
        match (old.get(id), new.get(id)) {
            (None, Some(_)) => d.added.push(id.to_string()),
            (Some(_), None) => d.removed.push(id.to_string()),
            (Some(a), Some(b)) if a != b => d.changed.push(id.to_string()),
            _ => {}
        }
    }
    d
}

fn list_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn link_basename(path: &Path) -> Option<String> {
    let target = fs::read_link(path).ok()?;
    target.file_name()?.to_str().map(str::to_owned)
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_hex(path: &Path) -> Option<u32> {
    let s = read_trimmed(path)?;
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn read_parsed<T: std::str::FromStr>(path: &Path) -> Option<T> {
    read_trimmed(path)?.parse().ok()
}

fn read_limited(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Config space with an AER capability at 0x100 chaining to a DSN
    /// capability at 0x148, as `lspci -vvv` shows on ConnectX/BlueField cards.
    fn config_with_dsn(dsn: u64) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        let aer: u32 = 0x0001 | (2 << 16) | (0x148 << 20);
        c[0x100..0x104].copy_from_slice(&aer.to_le_bytes());
        let hdr: u32 = 0x0003 | (1 << 16);
        c[0x148..0x14c].copy_from_slice(&hdr.to_le_bytes());
        c[0x14c..0x150].copy_from_slice(&(dsn as u32).to_le_bytes());
        c[0x150..0x154].copy_from_slice(&((dsn >> 32) as u32).to_le_bytes());
        c
    }

    #[test]
    fn dsn_found_after_walking_the_chain() {
        let c = config_with_dsn(0xb8ce_f603_00a1_b2c3);
        assert_eq!(parse_dsn(&c), Some(0xb8ce_f603_00a1_b2c3));
    }

    #[test]
    fn dsn_absent_in_unprivileged_64_byte_read() {
        let c = config_with_dsn(1);
        assert_eq!(parse_dsn(&c[..64]), None);
    }

    #[test]
    fn dsn_list_loop_terminates() {
        let mut c = vec![0u8; 4096];
        let looped: u32 = 0x0001 | (0x100 << 20);
        c[0x100..0x104].copy_from_slice(&looped.to_le_bytes());
        assert_eq!(parse_dsn(&c), None);
    }

    #[test]
    fn vpd_serial_from_read_only_section() {
        let mut v = vec![0x82, 4, 0, b'B', b'F', b'-', b'3'];
        let ro = b"PN\x03ABCSN\x0cMT2245X01234RV\x01\x00";
        v.push(0x90);
        v.extend_from_slice(&(ro.len() as u16).to_le_bytes());
        v.extend_from_slice(ro);
        v.push(0x78);
        assert_eq!(parse_vpd_serial(&v).as_deref(), Some("MT2245X01234"));
    }

    #[test]
    fn vpd_without_serial() {
        assert_eq!(parse_vpd_serial(&[0x82, 1, 0, b'x', 0x78]), None);
        assert_eq!(parse_vpd_serial(&[]), None);
    }

    #[test]
    fn nvme_names() {
        assert_eq!(nvme_namespace_name("nvme0n1").as_deref(), Some("nvme0n1"));
        assert_eq!(nvme_namespace_name("nvme2c3n4").as_deref(), Some("nvme2n4"));
        assert_eq!(nvme_namespace_name("nvme0"), None);
        assert_eq!(nvme_namespace_name("nvme0n1p1"), None);
        assert_eq!(nvme_namespace_name("ng0n1"), None);
    }

    #[test]
    fn api_class_mapping() {
        let f = |vendor, device, class, kind| Function {
            vendor: Some(vendor),
            device: Some(device),
            class: Some(class),
            kind: Some(kind),
            ..Function::default()
        };
        for (vendor, device, class, kind, expected) in [
            (0x15b3, 0x6001, 0x010802, FunctionKind::Pf, "nvme"),
            (0x1af4, 0x1041, 0x020000, FunctionKind::Vf, "virtio-net"),
            (0x1af4, 0x1042, 0x010000, FunctionKind::Pf, "virtio-blk"),
            (0x15b3, 0xa2dc, 0x020000, FunctionKind::Pf, "pf"),
            (0x15b3, 0x101e, 0x020000, FunctionKind::Vf, "vf"),
            (0x15b3, 0xc2d5, 0x080500, FunctionKind::Pf, "other"),
        ] {
            assert_eq!(
                f(vendor, device, class, kind).api_class(),
                expected,
                "{vendor:04x}:{device:04x} class {class:06x} {kind:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_vpd_serial(&bytes);
            let mut padded = vec![0u8; 0x100];
            padded.extend_from_slice(&bytes);
            let _ = parse_dsn(&padded);
        }

        #[test]
        fn dsn_round_trip(dsn in any::<u64>()) {
            prop_assume!(dsn != 0);
            prop_assert_eq!(parse_dsn(&config_with_dsn(dsn)), Some(dsn));
        }
    }
}
