//! Which of the host's functions belong to the DPU.
//!
//! Selectors follow sriov-network-device-plugin's `selectors` (`vendors`,
//! `devices`, `drivers`, `pfNames`): within one selector every non-empty
//! list must match (AND) and a list matches when any entry does (OR); a
//! function is the DPU's when any selector matches it. `subsystemVendors` is
//! our addition, to tell a DPU's emulated virtio function from a
//! hypervisor's. One rule is added on top: a VF or SF is only the DPU's when
//! its PF is, because VF ids such as `101e` are shared by every ConnectX.

use serde::{Deserialize, Serialize};

use crate::discover::{Function, FunctionKind};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Hex PCI vendor ids without `0x`, e.g. `15b3`.
    #[serde(default)]
    pub vendors: Vec<String>,
    /// Hex PCI device ids without `0x`, e.g. `a2dc`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Hex PCI subsystem vendor ids.
    #[serde(default)]
    pub subsystem_vendors: Vec<String>,
    /// Kernel driver names, e.g. `mlx5_core`, `vfio-pci`.
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Netdev names of the PF (of a VF's or SF's PF), optionally with a VF
    /// index range: `ens1f0`, `ens1f0#0-3`.
    #[serde(default)]
    pub pf_names: Vec<String>,
}

/// NVIDIA (Mellanox) PCI vendor id.
pub const MELLANOX: &str = "15b3";

/// Device ids of functions a BlueField shows the host, from the mlx5_core
/// PCI table (Linux `drivers/net/ethernet/mellanox/mlx5/core/main.c`,
/// `mlx5_core_pci_table`) and NVIDIA's SNAP documentation:
/// - `a2d2` BlueField integrated ConnectX-5, `a2d3` its VF;
/// - `a2d6` BlueField-2 integrated ConnectX-6 Dx;
/// - `a2dc` BlueField-3 integrated ConnectX-7;
/// - `a2df` BlueField-4 integrated ConnectX-8;
/// - `101e` "ConnectX Family mlx5Gen Virtual Function", the VF id of
///   BlueField-2/3 PFs (kept only under a selected PF, see the module doc);
/// - `6001` NVMe SNAP Controller, the NVMe function a BlueField emulates
///   (`lspci -nn` shows `Mellanox Technologies NVMe SNAP Controller
///   [15b3:6001]`).
///
/// `101d` (ConnectX-6 Dx) and `1021` (ConnectX-7) are plain NICs, not DPUs,
/// and are left out so that a host's ordinary NICs are not claimed; add them
/// with a selector for a BlueField run in NIC mode.
pub const BLUEFIELD_DEVICES: &[&str] = &["a2d2", "a2d3", "a2d6", "a2dc", "a2df", "101e", "6001"];

/// Virtio device ids a BlueField emulates: `1041` net and `1042` block
/// (modern ids, 0x1040 + virtio device id, virtio 1.2 §4.1.2.1). They are
/// only the DPU's with NVIDIA's subsystem vendor id; that the emulated
/// functions carry it is an assumption not yet checked on hardware.
pub const BLUEFIELD_VIRTIO_DEVICES: &[&str] = &["1041", "1042"];

/// The defaults: BlueField network, VF and NVMe functions, and virtio
/// functions with NVIDIA's subsystem vendor.
pub fn bluefield_defaults() -> Vec<Selector> {
    let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Selector {
            vendors: strings(&[MELLANOX]),
            devices: strings(BLUEFIELD_DEVICES),
            ..Selector::default()
        },
        Selector {
            vendors: strings(&["1af4"]),
            devices: strings(BLUEFIELD_VIRTIO_DEVICES),
            subsystem_vendors: strings(&[MELLANOX]),
            ..Selector::default()
        },
    ]
}

impl Selector {
    /// Whether this selector matches `f` on its own (without the PF rule).
    /// `pf` is the function's PF, when it has one.
    pub fn matches(&self, f: &Function, pf: Option<&Function>) -> bool {
        // An SF has no PCI ids of its own: it is matched through its PF.
        let ids = match f.kind() {
            FunctionKind::Sf => pf.unwrap_or(f),
            _ => f,
        };
        hex_matches(&self.vendors, ids.vendor)
            && hex_matches(&self.devices, ids.device)
            && hex_matches(&self.subsystem_vendors, ids.subsystem_vendor)
            && (self.drivers.is_empty()
                || ids
                    .driver
                    .as_ref()
                    .is_some_and(|d| self.drivers.contains(d)))
            && self.pf_name_matches(f, pf)
    }

    fn pf_name_matches(&self, f: &Function, pf: Option<&Function>) -> bool {
        if self.pf_names.is_empty() {
            return true;
        }
        let owner = pf.unwrap_or(f);
        self.pf_names.iter().any(|entry| {
            let (name, range) = match entry.split_once('#') {
                Some((n, r)) => (n, Some(r)),
                None => (entry.as_str(), None),
            };
            if !owner.netdevs.iter().any(|n| n == name) {
                return false;
            }
            match (range, f.kind(), f.vf_index) {
                (None, _, _) => true,
                (Some(r), FunctionKind::Vf, Some(index)) => in_range(r, index),
                // A range names VFs; the PF itself and SFs are outside it.
                (Some(_), _, _) => false,
            }
        })
    }
}

fn hex_matches(list: &[String], value: Option<u16>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(value) = value else {
        return false;
    };
    list.iter().any(|s| {
        u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).is_ok_and(|v| v == value)
    })
}

/// `"0-3"` or `"5"`: inclusive.
fn in_range(range: &str, index: u32) -> bool {
    let parse = |s: &str| s.trim().parse::<u32>().ok();
    match range.split_once('-') {
        Some((lo, hi)) => match (parse(lo), parse(hi)) {
            (Some(lo), Some(hi)) => (lo..=hi).contains(&index),
            _ => false,
        },
        None => parse(range) == Some(index),
    }
}

/// Keeps the functions some selector matches and whose PF (if any) is kept
/// too, in their original order.
pub fn select(selectors: &[Selector], functions: &[Function]) -> Vec<Function> {
    let pf_of = |f: &Function| -> Option<&Function> {
        let pf = f.physfn.as_deref()?;
        functions
            .iter()
            .find(|p| p.pci_address == pf && p.kind() == FunctionKind::Pf)
    };
    let matched = |f: &Function| selectors.iter().any(|s| s.matches(f, pf_of(f)));
    functions
        .iter()
        .filter(|f| match f.kind() {
            FunctionKind::Pf => matched(f),
            FunctionKind::Vf | FunctionKind::Sf => matched(f) && pf_of(f).is_some_and(matched),
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(addr: &str, vendor: u16, device: u16, physfn: Option<&str>) -> Function {
        Function {
            pci_address: addr.into(),
            kind: Some(if physfn.is_some() {
                FunctionKind::Vf
            } else {
                FunctionKind::Pf
            }),
            vendor: Some(vendor),
            device: Some(device),
            subsystem_vendor: Some(vendor),
            driver: Some("mlx5_core".into()),
            physfn: physfn.map(Into::into),
            ..Function::default()
        }
    }

    #[test]
    fn defaults_keep_bluefield_and_drop_plain_connectx_vfs() {
        let mut bf_pf = pci("0000:03:00.0", 0x15b3, 0xa2dc, None);
        bf_pf.netdevs = vec!["ens1f0np0".into()];
        let bf_vf = Function {
            vf_index: Some(0),
            ..pci("0000:03:00.2", 0x15b3, 0x101e, Some("0000:03:00.0"))
        };
        let cx_pf = pci("0000:81:00.0", 0x15b3, 0x101d, None);
        let cx_vf = pci("0000:81:00.2", 0x15b3, 0x101e, Some("0000:81:00.0"));
        let nic = pci("0000:02:00.0", 0x8086, 0x1572, None);
        let sf = Function {
            pci_address: "0000:03:00.0".into(),
            kind: Some(FunctionKind::Sf),
            physfn: Some("0000:03:00.0".into()),
            aux_device: Some("mlx5_core.sf.2".into()),
            ..Function::default()
        };
        let all = vec![bf_pf, bf_vf, cx_pf, cx_vf, nic, sf];
        let kept: Vec<String> = select(&bluefield_defaults(), &all)
            .iter()
            .map(|f| f.id().to_string())
            .collect();
        assert_eq!(kept, ["0000:03:00.0", "0000:03:00.2", "mlx5_core.sf.2"]);
    }

    #[test]
    fn virtio_needs_nvidia_subsystem_vendor() {
        let mut dpu = pci("0000:04:00.0", 0x1af4, 0x1041, None);
        dpu.subsystem_vendor = Some(0x15b3);
        let qemu = pci("0000:00:03.0", 0x1af4, 0x1041, None);
        let kept = select(&bluefield_defaults(), &[dpu, qemu]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].pci_address, "0000:04:00.0");
    }

    #[test]
    fn pf_names_with_vf_range() {
        let mut pf = pci("0000:03:00.0", 0x15b3, 0xa2dc, None);
        pf.netdevs = vec!["p0".into()];
        let vfs: Vec<Function> = (0..4)
            .map(|i| Function {
                vf_index: Some(i),
                ..pci(
                    &format!("0000:03:00.{}", i + 2),
                    0x15b3,
                    0x101e,
                    Some("0000:03:00.0"),
                )
            })
            .collect();
        let sel = [
            Selector {
                pf_names: vec!["p0".into()],
                devices: vec!["a2dc".into()],
                ..Selector::default()
            },
            Selector {
                pf_names: vec!["p0#1-2".into()],
                ..Selector::default()
            },
        ];
        let mut all = vec![pf];
        all.extend(vfs);
        let kept: Vec<Option<u32>> = select(&sel, &all).iter().map(|f| f.vf_index).collect();
        assert_eq!(kept, [None, Some(1), Some(2)]);
    }

    #[test]
    fn drivers_and_bad_hex() {
        let f = pci("0000:03:00.0", 0x15b3, 0xa2dc, None);
        let s = Selector {
            drivers: vec!["vfio-pci".into()],
            ..Selector::default()
        };
        assert!(!s.matches(&f, None));
        let s = Selector {
            vendors: vec!["zz".into(), "0x15B3".into()],
            ..Selector::default()
        };
        assert!(s.matches(&f, None));
    }

    #[test]
    fn selector_json_is_camel_case_and_strict() {
        let s: Selector =
            serde_json::from_str(r#"{"vendors":["1b36"],"pfNames":["ens1"]}"#).unwrap();
        assert_eq!(s.pf_names, ["ens1"]);
        assert!(serde_json::from_str::<Selector>(r#"{"vendor":["1b36"]}"#).is_err());
    }
}
