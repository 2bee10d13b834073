//! CDI (Container Device Interface) specs for the functions assigned to this
//! host, one file per function in a directory (default `/var/run/cdi`, the
//! dynamic spec directory container runtimes read).
//!
//! Each spec carries the lowest `cdiVersion` its fields need, because
//! runtimes embed CDI libraries of different ages (Debian 12's podman 4.3
//! accepts at most 0.5.0). The rules are those of the CDI reference
//! library (`cncf-tags/container-device-interface`, `specs-go/version.go`,
//! `requiresV040`..`requiresV110`):
//! - 0.3.0 is the earliest version still accepted;
//! - 0.4.0: `mounts[].type`;
//! - 0.5.0: `deviceNodes[].hostPath`, or a device name starting with a digit;
//! - 0.6.0: annotations (spec or device), or a `.` in the class of `kind`;
//! - 0.7.0: `intelRdt`, `additionalGids` (never written here);
//! - 0.8.0, 1.0.0: no field changes;
//! - 1.1.0: `containerEdits.netDevices`.
//!
//! Planning is pure ([`plan`]); [`apply`] writes each file atomically (temp
//! file in the same directory, fsync, rename) and removes only files with
//! this crate's prefix, so specs written by others are left alone.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::discover::RdmaDevice;

pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";
/// `vendor/class` of the devices written; device names are function ids, so
/// containers ask for `dpu.local/function=<id>`.
pub const DEFAULT_KIND: &str = "dpu.local/function";
/// Prefix of every file this crate owns in the CDI directory.
pub const FILE_PREFIX: &str = "dpu-host-stub_";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdiSpec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub devices: Vec<CdiDevice>,
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdiDevice {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<NetDevice>,
}

/// An OCI hook (CDI `containerEdits.hooks`, there since 0.3.0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    /// `createRuntime`: in the runtime's namespace, once the container's
    /// namespaces exist and before its process starts.
    pub hook_name: String,
    pub path: String,
    /// The whole argv, `args[0]` included (OCI runtime spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self == &ContainerEdits::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Path in the container; also the host path when `host_path` is unset.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

impl DeviceNode {
    fn at(path: String) -> Self {
        DeviceNode {
            path,
            host_path: None,
            type_: None,
            permissions: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetDevice {
    pub host_interface_name: String,
    pub name: String,
}

/// The CDI versions whose fields this crate may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CdiVersion {
    V0_3_0,
    V0_4_0,
    V0_5_0,
    V0_6_0,
    V1_1_0,
}

impl CdiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CdiVersion::V0_3_0 => "0.3.0",
            CdiVersion::V0_4_0 => "0.4.0",
            CdiVersion::V0_5_0 => "0.5.0",
            CdiVersion::V0_6_0 => "0.6.0",
            CdiVersion::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for CdiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lowest CDI version that has every field `spec` uses (module doc).
pub fn min_version(spec: &CdiSpec) -> CdiVersion {
    let edits: Vec<&ContainerEdits> = spec
        .devices
        .iter()
        .map(|d| &d.container_edits)
        .chain(std::iter::once(&spec.container_edits))
        .collect();
    if edits.iter().any(|e| !e.net_devices.is_empty()) {
        return CdiVersion::V1_1_0;
    }
    let class_has_dot = spec
        .kind
        .split_once('/')
        .is_some_and(|(_, class)| class.contains('.'));
    if class_has_dot
        || !spec.annotations.is_empty()
        || spec.devices.iter().any(|d| !d.annotations.is_empty())
    {
        return CdiVersion::V0_6_0;
    }
    let digit_name = spec
        .devices
        .iter()
        .any(|d| d.name.as_bytes().first().is_some_and(u8::is_ascii_digit));
    let host_path = edits
        .iter()
        .flat_map(|e| &e.device_nodes)
        .any(|n| n.host_path.as_deref().is_some_and(|p| !p.is_empty()));
    if digit_name || host_path {
        return CdiVersion::V0_5_0;
    }
    if edits
        .iter()
        .flat_map(|e| &e.mounts)
        .any(|m| m.type_.as_deref().is_some_and(|t| !t.is_empty()))
    {
        return CdiVersion::V0_4_0;
    }
    CdiVersion::V0_3_0
}

/// How the host exposes a function to a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// Bound to vfio-pci: the container (a VM runtime) gets the group node.
    Vfio { iommu_group: u32 },
    /// The kernel driver's netdev, moved into the container.
    Netdev { host_interface: String },
    /// The kernel driver's block device (`nvme0n1`, `vda`).
    Block { device: String },
}

/// One assigned function, resolved to what the host has for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedFunction {
    /// The function's id in the API; the CDI device name.
    pub id: String,
    pub pci_address: String,
    pub exposure: Exposure,
    /// The RDMA device on the function's netdev, for a function whose spec
    /// asks for RDMA: its character devices go into the spec.
    pub rdma: Option<RdmaDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdiOptions {
    pub kind: String,
    /// Write `netDevices` for netdevs (needs CDI 1.1.0). When off, a netdev
    /// function's spec only names the interface in the environment, for
    /// runtimes too old for 1.1.0 (Debian 12's podman 4.3).
    pub net_devices: bool,
    /// The `host-stub` binary to run as a `createRuntime` hook that moves an
    /// RDMA function's device into the container's network namespace
    /// (`host-stub rdma-netns-hook <dev>`), for hosts in exclusive RDMA
    /// network-namespace mode; `None`: no hook.
    pub rdma_netns_hook: Option<String>,
}

impl Default for CdiOptions {
    fn default() -> Self {
        CdiOptions {
            kind: DEFAULT_KIND.to_string(),
            net_devices: true,
            rdma_netns_hook: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("CDI kind {0:?} is not vendor/class (e.g. dpu.local/function)")]
    Kind(String),
    #[error("function id {0:?} is not a valid CDI device name")]
    DeviceName(String),
    #[error("cannot list CDI directory {path}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write CDI spec {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove CDI spec {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// CDI vendor and class: `[A-Za-z0-9]` then `[A-Za-z0-9_.-]` for the vendor,
/// the same without `.` for the class (a dot would need 0.6.0).
fn valid_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let ok = |s: &str, extra: &[u8]| {
        let b = s.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    ok(vendor, b"_.-") && ok(class, b"_-")
}

fn valid_device_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.:-".contains(c))
}

/// The spec for one function, at its minimum version.
pub fn spec_for(f: &ExposedFunction, opts: &CdiOptions) -> Result<CdiSpec, CdiError> {
    if !valid_kind(&opts.kind) {
        return Err(CdiError::Kind(opts.kind.clone()));
    }
    if !valid_device_name(&f.id) {
        return Err(CdiError::DeviceName(f.id.clone()));
    }
    let mut edits = ContainerEdits {
        env: vec![
            format!("DPU_FUNCTION={}", f.id),
            format!("DPU_PCI_ADDRESS={}", f.pci_address),
        ],
        ..ContainerEdits::default()
    };
    match &f.exposure {
        Exposure::Vfio { iommu_group } => {
            edits.device_nodes = vec![
                DeviceNode::at("/dev/vfio/vfio".into()),
                DeviceNode::at(format!("/dev/vfio/{iommu_group}")),
            ];
            edits.env.push(format!("DPU_VFIO_GROUP={iommu_group}"));
        }
        Exposure::Block { device } => {
            edits.device_nodes = vec![DeviceNode::at(format!("/dev/{device}"))];
            edits.env.push(format!("DPU_BLOCK_DEVICE=/dev/{device}"));
        }
        Exposure::Netdev { host_interface } => {
            if opts.net_devices {
                edits.net_devices = vec![NetDevice {
                    host_interface_name: host_interface.clone(),
                    name: host_interface.clone(),
                }];
            }
            edits.env.push(format!("DPU_NETDEV={host_interface}"));
        }
    }
    if let Some(rdma) = &f.rdma {
        // Plain `path` entries: no field beyond what the spec already needs.
        edits
            .device_nodes
            .extend(rdma.device_nodes().into_iter().map(DeviceNode::at));
        edits.env.push(format!("DPU_RDMA_DEVICE={}", rdma.device));
        if let Some(path) = &opts.rdma_netns_hook {
            edits.hooks.push(Hook {
                hook_name: "createRuntime".into(),
                path: path.clone(),
                args: vec![
                    "host-stub".into(),
                    "rdma-netns-hook".into(),
                    rdma.device.clone(),
                ],
            });
        }
    }
    let mut spec = CdiSpec {
        cdi_version: String::new(),
        kind: opts.kind.clone(),
        annotations: BTreeMap::new(),
        devices: vec![CdiDevice {
            name: f.id.clone(),
            annotations: BTreeMap::new(),
            container_edits: edits,
        }],
        container_edits: ContainerEdits::default(),
    };
    spec.cdi_version = min_version(&spec).to_string();
    Ok(spec)
}

pub fn file_name(function_id: &str) -> String {
    format!("{FILE_PREFIX}{function_id}.json")
}

/// One change to the CDI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdiAction {
    Write { file: String, contents: Vec<u8> },
    Remove { file: String },
}

/// What to change so that the directory holds exactly `desired` among this
/// crate's files. `existing` maps this crate's file names to their bytes.
pub fn plan(
    desired: &BTreeMap<String, CdiSpec>,
    existing: &BTreeMap<String, Vec<u8>>,
) -> Vec<CdiAction> {
    let mut actions = Vec::new();
    for (file, spec) in desired {
        let mut contents = serde_json::to_vec_pretty(spec).expect("CDI spec serializes");
        contents.push(b'\n');
        if existing.get(file) != Some(&contents) {
            actions.push(CdiAction::Write {
                file: file.clone(),
                contents,
            });
        }
    }
    for file in existing.keys() {
        if !desired.contains_key(file) {
            actions.push(CdiAction::Remove { file: file.clone() });
        }
    }
    actions
}

/// Functions whose spec could not be built, by id, with why.
pub type SpecErrors = Vec<(String, CdiError)>;

/// Desired files for a set of exposed functions; a function whose spec
/// cannot be built is returned with its error and left out.
pub fn desired_specs(
    functions: &[ExposedFunction],
    opts: &CdiOptions,
) -> (BTreeMap<String, CdiSpec>, SpecErrors) {
    let mut specs = BTreeMap::new();
    let mut errors = Vec::new();
    for f in functions {
        match spec_for(f, opts) {
            Ok(spec) => {
                specs.insert(file_name(&f.id), spec);
            }
            Err(e) => errors.push((f.id.clone(), e)),
        }
    }
    (specs, errors)
}

/// This crate's files in `dir` (created if missing) with their contents.
pub fn read_existing(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, CdiError> {
    fs::create_dir_all(dir).map_err(|source| CdiError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    let entries = fs::read_dir(dir).map_err(|source| CdiError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with(FILE_PREFIX) && name.ends_with(".json") {
            // An unreadable file is rewritten: treat it as empty.
            out.insert(name, fs::read(entry.path()).unwrap_or_default());
        }
    }
    Ok(out)
}

/// Carries out `actions` in `dir`. Writes go to `.<file>.tmp` (a name the
/// runtimes skip), are synced, then renamed over the target.
pub fn apply(dir: &Path, actions: &[CdiAction]) -> Result<(), CdiError> {
    for action in actions {
        match action {
            CdiAction::Write { file, contents } => {
                let path = dir.join(file);
                let tmp = dir.join(format!(".{file}.tmp"));
                let write = || -> std::io::Result<()> {
                    let mut f = fs::File::create(&tmp)?;
                    f.write_all(contents)?;
                    f.sync_all()?;
                    fs::rename(&tmp, &path)
                };
                if let Err(source) = write() {
                    let _ = fs::remove_file(&tmp);
                    return Err(CdiError::Write { path, source });
                }
            }
            CdiAction::Remove { file } => {
                let path = dir.join(file);
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(CdiError::Remove { path, source: e });
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Plans and applies in one go; returns what was done.
pub fn sync_dir(
    dir: &Path,
    functions: &[ExposedFunction],
    opts: &CdiOptions,
) -> Result<(Vec<CdiAction>, SpecErrors), CdiError> {
    let (desired, errors) = desired_specs(functions, opts);
    let existing = read_existing(dir)?;
    let actions = plan(&desired, &existing);
    apply(dir, &actions)?;
    Ok((actions, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(id: &str, exposure: Exposure) -> ExposedFunction {
        ExposedFunction {
            id: id.into(),
            pci_address: "0000:03:00.2".into(),
            exposure,
            rdma: None,
        }
    }

    fn all_kinds() -> Vec<ExposedFunction> {
        vec![
            func("vm-nic", Exposure::Vfio { iommu_group: 42 }),
            func(
                "7th-disk",
                Exposure::Block {
                    device: "nvme1n1".into(),
                },
            ),
            func(
                "web",
                Exposure::Netdev {
                    host_interface: "ens1f0v3".into(),
                },
            ),
            func(
                "db-disk",
                Exposure::Block {
                    device: "vda".into(),
                },
            ),
        ]
    }

    #[test]
    fn versions_are_minimal() {
        let opts = CdiOptions::default();
        let v = |f: &ExposedFunction| spec_for(f, &opts).unwrap().cdi_version;
        let fs = all_kinds();
        assert_eq!(v(&fs[0]), "0.3.0");
        assert_eq!(v(&fs[1]), "0.5.0", "device name starts with a digit");
        assert_eq!(v(&fs[2]), "1.1.0", "netDevices");
        assert_eq!(v(&fs[3]), "0.3.0");
        let old = CdiOptions {
            net_devices: false,
            ..CdiOptions::default()
        };
        assert_eq!(spec_for(&fs[2], &old).unwrap().cdi_version, "0.3.0");
    }

    #[test]
    fn min_version_rules() {
        let base = spec_for(&all_kinds()[0], &CdiOptions::default()).unwrap();
        let mut s = base.clone();
        s.devices[0].container_edits.mounts.push(Mount {
            host_path: "/a".into(),
            container_path: "/a".into(),
            options: vec![],
            type_: Some("bind".into()),
        });
        assert_eq!(min_version(&s), CdiVersion::V0_4_0);
        let mut s = base.clone();
        s.container_edits.device_nodes.push(DeviceNode {
            host_path: Some("/dev/x".into()),
            ..DeviceNode::at("/dev/y".into())
        });
        assert_eq!(min_version(&s), CdiVersion::V0_5_0);
        let mut s = base.clone();
        s.kind = "dpu.local/function.v2".into();
        assert_eq!(min_version(&s), CdiVersion::V0_6_0);
        let mut s = base.clone();
        s.devices[0].annotations.insert("k".into(), "v".into());
        assert_eq!(min_version(&s), CdiVersion::V0_6_0);
    }

    #[test]
    fn no_spec_without_net_devices_exceeds_0_5_0() {
        let opts = CdiOptions {
            net_devices: false,
            ..CdiOptions::default()
        };
        for f in all_kinds() {
            let spec = spec_for(&f, &opts).unwrap();
            assert!(spec.cdi_version.as_str() <= "0.5.0", "{}", spec.cdi_version);
        }
    }

    #[test]
    fn written_specs_parse_back_at_their_minimum_version() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CdiOptions::default();
        let (actions, errors) = sync_dir(dir.path(), &all_kinds(), &opts).unwrap();
        assert!(errors.is_empty());
        assert_eq!(actions.len(), 4);
        for f in all_kinds() {
            let bytes = fs::read(dir.path().join(file_name(&f.id))).unwrap();
            let spec: CdiSpec = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(spec, spec_for(&f, &opts).unwrap());
            assert_eq!(spec.cdi_version, min_version(&spec).as_str());
            assert_eq!(spec.devices[0].name, f.id);
        }
        // Nothing left behind but the specs.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with(FILE_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn vfio_spec_shape() {
        let spec = spec_for(&all_kinds()[0], &CdiOptions::default()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cdiVersion": "0.3.0",
                "kind": "dpu.local/function",
                "devices": [{
                    "name": "vm-nic",
                    "containerEdits": {
                        "env": ["DPU_FUNCTION=vm-nic", "DPU_PCI_ADDRESS=0000:03:00.2",
                                "DPU_VFIO_GROUP=42"],
                        "deviceNodes": [{"path": "/dev/vfio/vfio"}, {"path": "/dev/vfio/42"}]
                    }
                }]
            })
        );
    }

    /// An RDMA function's spec adds its uverbs node and rdma_cm as device
    /// nodes and names the RDMA device, at the version of its netdev part.
    #[test]
    fn rdma_spec_lists_verbs_nodes() {
        let mut f = all_kinds()[2].clone();
        f.rdma = Some(RdmaDevice {
            device: "mlx5_3".into(),
            uverbs: Some("/dev/infiniband/uverbs3".into()),
            rdma_cm: Some("/dev/infiniband/rdma_cm".into()),
        });
        for (net_devices, version) in [(true, "1.1.0"), (false, "0.3.0")] {
            let opts = CdiOptions {
                net_devices,
                ..CdiOptions::default()
            };
            let spec = spec_for(&f, &opts).unwrap();
            assert_eq!(spec.cdi_version, version);
            let edits = &spec.devices[0].container_edits;
            let nodes: Vec<&str> = edits.device_nodes.iter().map(|n| n.path.as_str()).collect();
            assert_eq!(
                nodes,
                ["/dev/infiniband/uverbs3", "/dev/infiniband/rdma_cm"]
            );
            assert!(edits.device_nodes.iter().all(|n| n.host_path.is_none()));
            assert!(edits.env.contains(&"DPU_RDMA_DEVICE=mlx5_3".to_string()));
            assert!(edits.hooks.is_empty(), "no hook unless configured");
        }
        // Exclusive mode: the hook that moves the device, no version change.
        let opts = CdiOptions {
            net_devices: false,
            rdma_netns_hook: Some("/usr/local/bin/host-stub".into()),
            ..CdiOptions::default()
        };
        let spec = spec_for(&f, &opts).unwrap();
        assert_eq!(spec.cdi_version, "0.3.0");
        assert_eq!(
            serde_json::to_value(&spec.devices[0].container_edits.hooks).unwrap(),
            serde_json::json!([{"hookName": "createRuntime", "path": "/usr/local/bin/host-stub",
                                "args": ["host-stub", "rdma-netns-hook", "mlx5_3"]}])
        );
        // Functions without RDMA never get it.
        let plain = spec_for(&all_kinds()[2], &opts).unwrap();
        assert!(plain.devices[0].container_edits.hooks.is_empty());
    }

    #[test]
    fn resync_removes_unassigned_and_keeps_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CdiOptions::default();
        fs::write(dir.path().join("nvidia.yaml"), "foreign").unwrap();
        sync_dir(dir.path(), &all_kinds(), &opts).unwrap();
        let (again, _) = sync_dir(dir.path(), &all_kinds(), &opts).unwrap();
        assert!(again.is_empty(), "unchanged specs are not rewritten");
        let (actions, _) = sync_dir(dir.path(), &all_kinds()[..1], &opts).unwrap();
        assert_eq!(actions.len(), 3);
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, CdiAction::Remove { .. }))
        );
        assert!(dir.path().join("nvidia.yaml").exists());
        assert!(dir.path().join(file_name("vm-nic")).exists());
        assert!(!dir.path().join(file_name("web")).exists());
    }

    #[test]
    fn invalid_names_are_refused() {
        let bad = CdiOptions {
            kind: "nokind".into(),
            ..CdiOptions::default()
        };
        assert!(matches!(
            spec_for(&all_kinds()[0], &bad),
            Err(CdiError::Kind(_))
        ));
        let f = func("a/b", Exposure::Vfio { iommu_group: 1 });
        assert!(matches!(
            spec_for(&f, &CdiOptions::default()),
            Err(CdiError::DeviceName(_))
        ));
    }
}
