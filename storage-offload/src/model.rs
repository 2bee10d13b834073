//! Backend-level types: what a volume needs from a backend (the desired
//! side, built by the volumes controller from the API objects), what a
//! backend reports it has (the observed side), and the names the agent gives
//! every object it creates.
//!
//! Names carry the owning volume's identity (tenant and volume id), so a
//! restarted agent finds its own objects, removes orphans, and leaves
//! everything else alone. Tenant and volume ids are DNS labels (`a-z0-9-`),
//! so `_` and `:` separate them unambiguously.

use std::collections::BTreeMap;
use std::fmt;

use dpu_api::spec::{FunctionType, VolumeSpec};

/// The NQN prefix of every NVMe object the agent creates.
pub const NQN_PREFIX: &str = "nqn.2026-11.dev.dpu-agent:";

/// The namespace of every NQN the agent derives: subsystems, volume
/// initiators (`<tenant>:<volume>:initiator`) and function hosts
/// (`<tenant>:fn:<function>`). A tenant may name a host NQN in it only if
/// it is the volume's own initiator NQN (see [`initiator_nqn_allowed`]);
/// admission uses this prefix to refuse the rest.
pub fn derived_host_nqn_prefix() -> &'static str {
    NQN_PREFIX
}

/// Whether volume `key` may connect to its remote source as `hostnqn`:
/// an NQN outside the agent's derived namespace (admission keeps those to
/// one tenant), or inside it only the volume's own initiator NQN. Never
/// another volume's initiator NQN, a function's host NQN or a subsystem's.
pub fn initiator_nqn_allowed(key: &VolumeKey, hostnqn: &str) -> bool {
    !hostnqn.starts_with(NQN_PREFIX) || hostnqn == key.initiator_nqn()
}

/// The host id the agent connects with as `hostnqn`: its ownership marker
/// on a kernel NVMe-oF connection (`/sys/class/nvme/nvmeN/hostid`). A
/// controller whose host id is not this value for its host NQN was not made
/// by the agent and is never adopted. Derived from the host NQN alone, so
/// the kernel (which keeps one host id per host NQN) never sees two ids for
/// one NQN. A UUID (version 8, RFC 9562) from two FNV-1a hashes: stable
/// across restarts and versions.
pub fn initiator_host_id(hostnqn: &str) -> String {
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in b"dpu-agent initiator\0".iter().chain(hostnqn.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&fnv(0xcbf29ce484222325).to_be_bytes());
    b[8..].copy_from_slice(&fnv(0x84222325cbf29ce4).to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The prefix of SPDK/SNAP object names (bdevs, controllers) the agent
/// creates.
pub const NAME_PREFIX: &str = "dpu_";

/// Identity of a volume: its tenant and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeKey {
    pub tenant: String,
    pub id: String,
}

impl VolumeKey {
    pub fn new(tenant: impl Into<String>, id: impl Into<String>) -> Self {
        VolumeKey {
            tenant: tenant.into(),
            id: id.into(),
        }
    }

    /// `nqn.2026-11.dev.dpu-agent:<tenant>:<volume>`: the subsystem that
    /// presents the volume.
    pub fn subsystem_nqn(&self) -> String {
        format!("{NQN_PREFIX}{}:{}", self.tenant, self.id)
    }

    /// The host NQN the agent uses to reach a remote source when the volume
    /// does not name one.
    pub fn initiator_nqn(&self) -> String {
        format!("{NQN_PREFIX}{}:{}:initiator", self.tenant, self.id)
    }

    /// `dpu_<tenant>_<volume>_<role>`: SPDK controller, bdev and SNAP
    /// controller names. The role says which object of the volume it is.
    pub fn object_name(&self, role: &str) -> String {
        format!("{NAME_PREFIX}{}_{}_{role}", self.tenant, self.id)
    }

    /// The bdev holding the volume's data: a malloc bdev of this name, or
    /// the bdev_nvme controller of this name whose first namespace is
    /// [`source_bdev`](Self::source_bdev).
    pub fn source_name(&self) -> String {
        self.object_name("src")
    }

    /// The bdev of the source. SPDK names a controller's bdevs
    /// `<controller>n<nsid>`; the remote namespace used is nsid 1.
    pub fn source_bdev(&self, source_is_remote: bool) -> String {
        if source_is_remote {
            format!("{}n1", self.source_name())
        } else {
            self.source_name()
        }
    }

    /// Parses a subsystem NQN made by [`subsystem_nqn`](Self::subsystem_nqn).
    pub fn from_subsystem_nqn(nqn: &str) -> Option<Self> {
        let rest = nqn.strip_prefix(NQN_PREFIX)?;
        let (tenant, id) = rest.split_once(':')?;
        (is_label(tenant) && is_label(id)).then(|| VolumeKey::new(tenant, id))
    }

    /// Parses an initiator NQN made by [`initiator_nqn`](Self::initiator_nqn).
    pub fn from_initiator_nqn(nqn: &str) -> Option<Self> {
        let rest = nqn.strip_prefix(NQN_PREFIX)?.strip_suffix(":initiator")?;
        let (tenant, id) = rest.split_once(':')?;
        (is_label(tenant) && is_label(id)).then(|| VolumeKey::new(tenant, id))
    }

    /// Parses an SPDK/SNAP name made by [`object_name`](Self::object_name)
    /// (including SPDK's `n<nsid>` suffix on bdevs of a controller).
    pub fn from_object_name(name: &str) -> Option<Self> {
        let mut parts = name.strip_prefix(NAME_PREFIX)?.splitn(3, '_');
        let (tenant, id, role) = (parts.next()?, parts.next()?, parts.next()?);
        (is_label(tenant) && is_label(id) && !role.is_empty()).then(|| VolumeKey::new(tenant, id))
    }
}

impl fmt::Display for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.id)
    }
}

fn is_label(s: &str) -> bool {
    dpu_api::validate::check_label("", s).is_ok()
}

/// A volume's I/O as its backend counts it (ops and bytes since the
/// counted object was created; see the crate README for which backend
/// counts what).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeIo {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
}

impl VolumeIo {
    /// From a block device's `stat` file (`Documentation/block/stat.rst`):
    /// field 1 read I/Os, 3 read sectors, 5 write I/Os, 7 write sectors;
    /// sectors are 512 bytes whatever the device's block size. None when
    /// the text has fewer than 7 numeric fields.
    pub fn from_block_stat(text: &str) -> Option<VolumeIo> {
        let f: Vec<u64> = text
            .split_whitespace()
            .take(7)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        (f.len() == 7).then(|| VolumeIo {
            read_ops: f[0],
            read_bytes: f[2].saturating_mul(512),
            write_ops: f[4],
            write_bytes: f[6].saturating_mul(512),
        })
    }
}

/// The function a volume is shown on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionTarget {
    /// The function object's id.
    pub id: String,
    pub type_: FunctionType,
    /// Physical function index (`pf0` → 0).
    pub pf: u32,
    pub vf: Option<u32>,
    /// The NVMe host NQN allowed to connect, for backends that present over
    /// a fabric (nvmet, SPDK nvmf). Usually [`function_host_nqn`].
    pub host_nqn: String,
}

/// The host NQN the agent assigns to a function's host side.
pub fn function_host_nqn(tenant: &str, function: &str) -> String {
    format!("{NQN_PREFIX}{tenant}:fn:{function}")
}

/// One volume as a backend must realize it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVolume {
    pub key: VolumeKey,
    pub spec: VolumeSpec,
    pub function: FunctionTarget,
}

impl DesiredVolume {
    /// The namespace id on the function: the spec's, else 1.
    pub fn nsid(&self) -> u32 {
        self.spec.nsid.unwrap_or(1)
    }

    pub fn read_only(&self) -> bool {
        self.spec.read_only.unwrap_or(false)
    }

    /// The host NQN the volume connects to its remote source as: the
    /// spec's `hostnqn`, else the volume's own initiator NQN. None for a
    /// local volume.
    pub fn initiator_nqn(&self) -> Option<String> {
        match &self.spec.source {
            dpu_api::spec::VolumeSource::Nvmeof(n) => Some(
                n.hostnqn
                    .as_ref()
                    .map_or_else(|| self.key.initiator_nqn(), |h| h.to_string()),
            ),
            dpu_api::spec::VolumeSource::Local(_) => None,
        }
    }
}

/// QoS as a backend applies it; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Qos {
    pub max_iops: Option<u64>,
    pub max_mbps: Option<u64>,
}

impl Qos {
    pub fn of(spec: &VolumeSpec) -> Qos {
        spec.qos
            .as_ref()
            .map(|q| Qos {
                max_iops: q.max_iops,
                max_mbps: q.max_mbps,
            })
            .unwrap_or_default()
    }

    pub fn is_unlimited(&self) -> bool {
        self.max_iops.is_none() && self.max_mbps.is_none()
    }
}

/// Which backend a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// NVIDIA SNAP on a BlueField: emulated NVMe and virtio-blk functions.
    Snap,
    /// Plain SPDK (no DPU): NVMe functions as NVMe-oF/TCP subsystems,
    /// virtio-blk functions as vhost-user-blk controllers.
    SpdkNvmf,
    /// The Linux kernel: nvmet over configfs, the NVMe/TCP initiator.
    Nvmet,
}

impl BackendKind {
    /// Why this backend cannot present a function of `type_`, if it cannot.
    pub fn unsupported(self, type_: FunctionType) -> Option<&'static str> {
        match (self, type_) {
            (_, FunctionType::Net) => Some("a net function cannot show a volume"),
            (BackendKind::Nvmet, FunctionType::VirtioBlk) => {
                Some("the kernel nvmet backend presents NVMe only, not virtio-blk")
            }
            _ => None,
        }
    }
}

/// Everything per volume the SPDK backends observed, keyed by owner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpdkObserved {
    /// Bdev name → current limits (all bdevs, ours or not).
    pub bdevs: BTreeMap<String, crate::spdk::methods::QosLimits>,
    /// Names of attached bdev_nvme controllers.
    pub nvme_controllers: Vec<String>,
    /// nvmf subsystems (SpdkNvmf) or SNAP NVMe subsystems, by NQN.
    pub subsystems: BTreeMap<String, ObservedSubsystem>,
    /// vhost controllers (SpdkNvmf) or SNAP controllers, by name.
    pub controllers: Vec<String>,
    /// nvmf transport types present (`TCP`, `RDMA`), SpdkNvmf only.
    pub nvmf_transports: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSubsystem {
    pub hosts: Vec<String>,
    /// nsid → bdev name.
    pub namespaces: BTreeMap<u32, String>,
    pub listeners: Vec<crate::spdk::methods::ListenAddress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 17 fields of a `/sys/block/<dev>/stat` line as Linux 6.1 prints
    /// them (`%8lu` each): read I/Os, merges, sectors, ticks; the same for
    /// writes; in flight, io ticks, time in queue; discards; flushes.
    #[test]
    fn block_stat_fields_are_ios_and_512_byte_sectors() {
        let line = "     130        0     8530       51       12        3      200       22        0      168       74        0        0        0        0        0        0\n";
        assert_eq!(
            VolumeIo::from_block_stat(line),
            Some(VolumeIo {
                read_ops: 130,
                read_bytes: 8530 * 512,
                write_ops: 12,
                write_bytes: 200 * 512,
            })
        );
        assert_eq!(VolumeIo::from_block_stat("1 2 3"), None);
        assert_eq!(VolumeIo::from_block_stat("1 2 x 4 5 6 7"), None);
        assert_eq!(VolumeIo::from_block_stat(""), None);
    }

    #[test]
    fn names_round_trip() {
        let k = VolumeKey::new("acme-prod", "db-1");
        assert_eq!(
            k.subsystem_nqn(),
            "nqn.2026-11.dev.dpu-agent:acme-prod:db-1"
        );
        assert_eq!(
            VolumeKey::from_subsystem_nqn(&k.subsystem_nqn()),
            Some(k.clone())
        );
        assert_eq!(
            VolumeKey::from_initiator_nqn(&k.initiator_nqn()),
            Some(k.clone())
        );
        assert_eq!(k.source_name(), "dpu_acme-prod_db-1_src");
        assert_eq!(k.source_bdev(true), "dpu_acme-prod_db-1_srcn1");
        assert_eq!(
            VolumeKey::from_object_name("dpu_acme-prod_db-1_src"),
            Some(k.clone())
        );
        assert_eq!(
            VolumeKey::from_object_name("dpu_acme-prod_db-1_srcn1"),
            Some(k)
        );
    }

    #[test]
    fn initiator_nqns_in_the_derived_namespace_are_the_volumes_own_only() {
        let k = VolumeKey::new("acme", "db");
        assert_eq!(derived_host_nqn_prefix(), "nqn.2026-11.dev.dpu-agent:");
        assert!(initiator_nqn_allowed(&k, &k.initiator_nqn()));
        assert!(initiator_nqn_allowed(&k, "nqn.2014-08.org.example:host"));
        for other in [
            VolumeKey::new("evil", "db").initiator_nqn(),
            VolumeKey::new("acme", "other").initiator_nqn(),
            function_host_nqn("acme", "f"),
            k.subsystem_nqn(),
            "nqn.2026-11.dev.dpu-agent:made-up".into(),
        ] {
            assert!(!initiator_nqn_allowed(&k, &other), "{other}");
        }
    }

    #[test]
    fn host_ids_are_stable_uuids_per_host_nqn() {
        let a = initiator_host_id("nqn.2026-11.dev.dpu-agent:a:v:initiator");
        let b = initiator_host_id("nqn.2026-11.dev.dpu-agent:b:v:initiator");
        assert_ne!(a, b);
        assert_eq!(
            a,
            initiator_host_id("nqn.2026-11.dev.dpu-agent:a:v:initiator")
        );
        // 8-4-4-4-12 lowercase hex, version 8, RFC variant: what the
        // kernel's uuid_parse takes and sysfs prints back (`%pU`).
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            a.bytes()
                .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert!(groups[2].starts_with('8'), "{a}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{a}"
        );
    }

    #[test]
    fn foreign_names_are_not_ours() {
        assert_eq!(VolumeKey::from_object_name("Malloc0"), None);
        assert_eq!(VolumeKey::from_object_name("dpu_Bad_x_src"), None);
        assert_eq!(VolumeKey::from_object_name("dpu_t_v"), None);
        assert_eq!(
            VolumeKey::from_subsystem_nqn("nqn.2016-06.io.spdk:cnode1"),
            None
        );
        assert_eq!(
            VolumeKey::from_subsystem_nqn("nqn.2026-11.dev.dpu-agent:t:fn:f"),
            None
        );
    }
}
