//! The host stub: runs on the x86-64 host a BlueField DPU is plugged into,
//! finds the PCI functions the DPU made (PFs, VFs, SFs, emulated NVMe and
//! virtio), reports them to the DPU agent, and exposes the functions the
//! agent assigned to this host to containers (CDI specs) and VMs (vfio-pci).
//! It has no authority over the DPU. See README.md.
//!
//! Folders: [`discover`] reads sysfs (pure over a root), [`selectors`] picks
//! the DPU's functions, [`cdi`], [`vfio`] and
//! [`deviceplugin`] (kubelet) expose them, [`report`] speaks to
//! the agent, [`uevent`] listens for kernel device events, [`daemon`] ties
//! them together, [`config`] loads the daemon's file, [`metrics`] serves
//! the stub's own `/metrics` on loopback, [`rdma_netns`] moves an RDMA
//! device into a container's network namespace (an OCI hook). [`fixture`] builds
//! sysfs-shaped trees for tests and benchmarks.

pub mod assignments;
pub mod cdi;
pub mod config;
pub mod daemon;
pub mod deviceplugin;
pub mod discover;
pub mod fixture;
pub mod metrics;
pub mod rdma_netns;
pub mod report;
pub mod selectors;
pub mod sriov;
pub mod uevent;
pub mod vfio;
