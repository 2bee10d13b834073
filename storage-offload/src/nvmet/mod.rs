//! The kernel backend: the NVMe target (`nvmet`) programmed through configfs,
//! the NVMe/TCP initiator driven through `/dev/nvme-fabrics` and sysfs, and
//! QoS by traffic shaping of per-volume ports over rtnetlink ([`tc`]; cgroup
//! v2 `io.max` in [`qos`] does not limit what nvmet serves, see there).
//!
//! Paths are configurable ([`KernelPaths`]) so the same code runs against the
//! real kernel and against a temporary directory in tests. Needs root and the
//! `nvmet`, `nvmet-tcp` and `nvme-tcp` modules on a real system (and
//! `sch_htb` + `cls_u32` for QoS, which the kernel loads on first use).

pub mod configfs;
pub mod fabrics;
pub mod qos;
pub mod tc;

use std::path::PathBuf;

pub use configfs::{ConfigfsExecutor, ConfigfsMode, ConfigfsOp, DeviceRef, NvmetObserved};
pub use fabrics::{ConnectOptions, FabricsController};

/// Whether the kernel merges every connection to one subsystem NQN into
/// one namespace block device (native multipath), from the `nvme_core`
/// parameter at `path`: `N` is off; `Y`, or a file that cannot be read, is
/// taken as on (the safe side: a second volume on the same subsystem is
/// refused rather than handed a shared device).
pub fn multipath_enabled(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).map_or(true, |s| s.trim() != "N")
}
pub use qos::IoMax;

/// Where the kernel interfaces live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPaths {
    /// `/sys/kernel/config/nvmet`
    pub nvmet: PathBuf,
    /// `/dev/nvme-fabrics`
    pub fabrics: PathBuf,
    /// `/sys/class/nvme`
    pub sys_class_nvme: PathBuf,
    /// `/sys/class/block`, to read a block device's `dev` (major:minor).
    pub sys_class_block: PathBuf,
    /// `/dev`, where block devices appear.
    pub dev: PathBuf,
    /// `/sys/module/nvme_core/parameters/multipath` (`Y` or `N`).
    pub nvme_multipath: PathBuf,
}

impl Default for KernelPaths {
    fn default() -> Self {
        KernelPaths {
            nvmet: "/sys/kernel/config/nvmet".into(),
            fabrics: "/dev/nvme-fabrics".into(),
            sys_class_nvme: "/sys/class/nvme".into(),
            sys_class_block: "/sys/class/block".into(),
            dev: "/dev".into(),
            nvme_multipath: "/sys/module/nvme_core/parameters/multipath".into(),
        }
    }
}

impl KernelPaths {
    /// Every path under `root`, same layout; for tests.
    pub fn under(root: &std::path::Path) -> Self {
        KernelPaths {
            nvmet: root.join("sys/kernel/config/nvmet"),
            fabrics: root.join("dev/nvme-fabrics"),
            sys_class_nvme: root.join("sys/class/nvme"),
            sys_class_block: root.join("sys/class/block"),
            dev: root.join("dev"),
            nvme_multipath: root.join("sys/module/nvme_core/parameters/multipath"),
        }
    }
}
