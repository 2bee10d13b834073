//! The kernel storage backend as the storage probes (`src/bin`) drive it:
//! nvmet through the real configfs, one export port on loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use dpu_api::spec::{FunctionType, NvmeofSource, NvmeofTransport, VolumeSource, VolumeSpec};
use dpu_api::types::Nqn;
use storage_offload::apply::NvmetBackend;
use storage_offload::model::{DesiredVolume, FunctionTarget, VolumeKey};
use storage_offload::nvmet::KernelPaths;
use storage_offload::nvmet::configfs::ConfigfsMode;
use storage_offload::plan::NvmetPlanConfig;

/// The kernel backend on the real configfs, exporting on port 7 at
/// 127.0.0.1:`export_port`/tcp, local backing files in /tmp/dpu-volumes.
pub fn kernel_backend(export_port: u16) -> NvmetBackend {
    let listen = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), export_port);
    let plan = NvmetPlanConfig::tcp(7, listen, PathBuf::from("/tmp/dpu-volumes"));
    NvmetBackend::new(KernelPaths::default(), ConfigfsMode::Kernel, plan)
}

/// Volume `key` of NVMe function `f` (PF 0, no VF), its source the NVMe/TCP
/// subsystem `subnqn` at `address`:`port`, admitting `host_nqn`.
pub fn remote_volume(
    key: VolumeKey,
    address: &str,
    port: u16,
    subnqn: Nqn,
    host_nqn: &str,
) -> DesiredVolume {
    DesiredVolume {
        key,
        spec: VolumeSpec {
            function: "f".into(),
            nsid: None,
            source: VolumeSource::Nvmeof(NvmeofSource {
                transport: NvmeofTransport::Tcp,
                address: address.into(),
                port,
                subnqn,
                hostnqn: None,
            }),
            qos: None,
            read_only: None,
        },
        function: FunctionTarget {
            id: "f".into(),
            type_: FunctionType::Nvme,
            pf: 0,
            vf: None,
            host_nqn: host_nqn.into(),
        },
    }
}

/// `e` and each of its sources, joined by `: `.
pub use dpu_api::error_chain;
