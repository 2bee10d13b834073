//! Writes a PF's `sriov_numvfs` when the agent's assignments need more VFs
//! than it has ([`crate::assignments::numvfs_change`] decides, from the
//! agent's VF allocation). On a BlueField the host owns its PF's SR-IOV
//! capability; the DPU cannot create the host's VFs itself.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// `<root>/bus/pci/devices/<pf>/sriov_numvfs`.
pub fn numvfs_path(root: &Path, pf_pci: &str) -> PathBuf {
    root.join("bus/pci/devices")
        .join(pf_pci)
        .join("sriov_numvfs")
}

/// Sets the PF's VF count from `from` to `to`: through 0 when it has VFs
/// (the kernel refuses a change between two non-zero counts with EBUSY).
pub fn set_numvfs(root: &Path, pf_pci: &str, from: u32, to: u32) -> io::Result<()> {
    let path = numvfs_path(root, pf_pci);
    if from > 0 {
        fs::write(&path, "0\n")?;
    }
    fs::write(&path, format!("{to}\n"))
}
