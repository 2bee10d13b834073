//! Binding a function to vfio-pci for a VM, and giving it back.
//!
//! The kernel's `driver_override` flow (Documentation/ABI/testing/
//! sysfs-bus-pci): write `vfio-pci` to `driver_override`, unbind from the
//! current driver, write the address to `bus/pci/drivers_probe`; the group
//! is the `iommu_group` link and `/dev/vfio/<group>` appears. Release clears
//! `driver_override` (a newline), unbinds from vfio-pci, and binds the
//! previous driver again through its `bind` file.
//!
//! Everything is relative to a sysfs root, so the file writes are tested in
//! a tempdir; there the kernel's side effects (the `driver` link moving)
//! do not happen, and [`bind`] reports what it did rather than re-reading.
//! The `vfio-pci` module must be loaded (`modprobe vfio-pci`) beforehand; that
//! is the host's setup, not done here.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub const VFIO_PCI: &str = "vfio-pci";

/// One sysfs write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsWrite {
    /// Relative to the sysfs root.
    pub path: PathBuf,
    pub value: String,
}

/// What a bound function remembers to undo the bind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VfioBinding {
    pub pci_address: String,
    pub previous_driver: Option<String>,
    pub iommu_group: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("PCI function {0} not found under the sysfs root")]
    NotFound(String),
    #[error("PCI function {0} has no IOMMU group (is the IOMMU on? intel_iommu=on / amd_iommu=on)")]
    NoIommuGroup(String),
    #[error("writing {value:?} to {path} failed")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

fn device_rel(pci_address: &str) -> PathBuf {
    Path::new("bus/pci/devices").join(pci_address)
}

/// The writes that move a function from `current_driver` to vfio-pci.
/// Nothing when it is already there.
pub fn plan_bind(pci_address: &str, current_driver: Option<&str>) -> Vec<SysfsWrite> {
    if current_driver == Some(VFIO_PCI) {
        return Vec::new();
    }
    let mut writes = vec![SysfsWrite {
        path: device_rel(pci_address).join("driver_override"),
        value: VFIO_PCI.to_string(),
    }];
    if let Some(driver) = current_driver {
        writes.push(SysfsWrite {
            path: Path::new("bus/pci/drivers").join(driver).join("unbind"),
            value: pci_address.to_string(),
        });
    }
    writes.push(SysfsWrite {
        path: PathBuf::from("bus/pci/drivers_probe"),
        value: pci_address.to_string(),
    });
    writes
}

/// The writes that give a function back to `previous_driver`.
pub fn plan_release(
    pci_address: &str,
    current_driver: Option<&str>,
    previous_driver: Option<&str>,
) -> Vec<SysfsWrite> {
    let mut writes = vec![SysfsWrite {
        path: device_rel(pci_address).join("driver_override"),
        value: "\n".to_string(),
    }];
    if current_driver == Some(VFIO_PCI) {
        writes.push(SysfsWrite {
            path: Path::new("bus/pci/drivers").join(VFIO_PCI).join("unbind"),
            value: pci_address.to_string(),
        });
    }
    match previous_driver {
        Some(prev) if prev != VFIO_PCI => writes.push(SysfsWrite {
            path: Path::new("bus/pci/drivers").join(prev).join("bind"),
            value: pci_address.to_string(),
        }),
        _ => {}
    }
    writes
}

/// Executes writes in order; stops at the first failure.
pub fn apply(root: &Path, writes: &[SysfsWrite]) -> Result<(), VfioError> {
    for w in writes {
        let path = root.join(&w.path);
        // sysfs attributes take one write(2); fs::write does one for short
        // values.
        fs::write(&path, &w.value).map_err(|source| VfioError::Write {
            path: path.clone(),
            value: w.value.clone(),
            source,
        })?;
    }
    Ok(())
}

fn current_driver(root: &Path, pci_address: &str) -> Option<String> {
    let link = fs::read_link(root.join(device_rel(pci_address)).join("driver")).ok()?;
    link.file_name()?.to_str().map(str::to_owned)
}

fn iommu_group(root: &Path, pci_address: &str) -> Option<u32> {
    let link = fs::read_link(root.join(device_rel(pci_address)).join("iommu_group")).ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Binds `pci_address` to vfio-pci and returns what is needed to undo it.
pub fn bind(root: &Path, pci_address: &str) -> Result<VfioBinding, VfioError> {
    if !root.join(device_rel(pci_address)).exists() {
        return Err(VfioError::NotFound(pci_address.to_string()));
    }
    let group = iommu_group(root, pci_address)
        .ok_or_else(|| VfioError::NoIommuGroup(pci_address.to_string()))?;
    let previous = current_driver(root, pci_address);
    apply(root, &plan_bind(pci_address, previous.as_deref()))?;
    Ok(VfioBinding {
        pci_address: pci_address.to_string(),
        previous_driver: previous.filter(|d| d != VFIO_PCI),
        iommu_group: group,
    })
}

/// Gives the function back to the driver it had before [`bind`].
pub fn release(root: &Path, binding: &VfioBinding) -> Result<(), VfioError> {
    release_to(
        root,
        &binding.pci_address,
        binding.previous_driver.as_deref(),
    )
}

/// Clears `driver_override`, unbinds from vfio-pci and binds `driver`.
pub fn release_to(root: &Path, pci_address: &str, driver: Option<&str>) -> Result<(), VfioError> {
    if !root.join(device_rel(pci_address)).exists() {
        return Err(VfioError::NotFound(pci_address.to_string()));
    }
    let current = current_driver(root, pci_address);
    apply(root, &plan_release(pci_address, current.as_deref(), driver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{FixtureFunction, SysfsTree};

    const VF: &str = "0000:03:00.2";

    fn tree() -> (tempfile::TempDir, SysfsTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = SysfsTree::new(dir.path()).unwrap();
        tree.add_function(&FixtureFunction {
            address: VF.into(),
            vendor: 0x15b3,
            device: 0x101e,
            class: 0x020000,
            driver: Some("mlx5_core".into()),
            iommu_group: Some(42),
            ..FixtureFunction::default()
        })
        .unwrap();
        fs::create_dir_all(dir.path().join("bus/pci/drivers/vfio-pci")).unwrap();
        for f in ["bind", "unbind"] {
            fs::write(dir.path().join("bus/pci/drivers/vfio-pci").join(f), "").unwrap();
        }
        (dir, tree)
    }

    fn read(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap()
    }

    #[test]
    fn plan_bind_order() {
        let w = plan_bind(VF, Some("mlx5_core"));
        let paths: Vec<_> = w.iter().map(|w| w.path.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "bus/pci/devices/0000:03:00.2/driver_override",
                "bus/pci/drivers/mlx5_core/unbind",
                "bus/pci/drivers_probe",
            ]
        );
        assert!(plan_bind(VF, Some("vfio-pci")).is_empty());
        assert_eq!(plan_bind(VF, None).len(), 2);
    }

    #[test]
    fn bind_writes_override_unbind_probe() {
        let (dir, _tree) = tree();
        let b = bind(dir.path(), VF).unwrap();
        assert_eq!(
            b,
            VfioBinding {
                pci_address: VF.into(),
                previous_driver: Some("mlx5_core".into()),
                iommu_group: 42,
            }
        );
        let root = dir.path();
        assert_eq!(
            read(root, "bus/pci/devices/0000:03:00.2/driver_override"),
            "vfio-pci"
        );
        assert_eq!(read(root, "bus/pci/drivers/mlx5_core/unbind"), VF);
        assert_eq!(read(root, "bus/pci/drivers_probe"), VF);
    }

    #[test]
    fn release_restores_previous_driver() {
        let (dir, tree) = tree();
        let b = bind(dir.path(), VF).unwrap();
        // What the kernel would have done on drivers_probe.
        tree.bind_link(VF, "vfio-pci").unwrap();
        release(dir.path(), &b).unwrap();
        let root = dir.path();
        assert_eq!(
            read(root, "bus/pci/devices/0000:03:00.2/driver_override"),
            "\n"
        );
        assert_eq!(read(root, "bus/pci/drivers/vfio-pci/unbind"), VF);
        assert_eq!(read(root, "bus/pci/drivers/mlx5_core/bind"), VF);
    }

    #[test]
    fn missing_function_and_group() {
        let (dir, tree) = tree();
        assert!(matches!(
            bind(dir.path(), "0000:99:00.0"),
            Err(VfioError::NotFound(_))
        ));
        tree.add_function(&FixtureFunction {
            address: "0000:04:00.0".into(),
            ..FixtureFunction::default()
        })
        .unwrap();
        assert!(matches!(
            bind(dir.path(), "0000:04:00.0"),
            Err(VfioError::NoIommuGroup(_))
        ));
    }
}
