//! The kernel NVMe-oF initiator: connect by writing an options string to
//! `/dev/nvme-fabrics` and reading back `instance=N,cntlid=M` on the same
//! descriptor; find controllers and their namespace block devices under
//! `/sys/class/nvme`; disconnect by writing to `delete_controller`.
//!
//! With native multipath (the default on distribution kernels) a controller's
//! sysfs directory lists path devices `nvme<S>c<C>n<N>`; the block device
//! users see is the head `nvme<S>n<N>`. Without multipath it lists
//! `nvme<C>n<N>` directly. Both are handled.
//!
//! A controller's identity includes its host NQN and host id (`hostid`):
//! the backend connects with the agent's marker host id and resolves a
//! volume's device only from its own connection
//! ([`find_connection_device`]).

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::KernelPaths;
use super::configfs::NvmetError;

/// The options of one fabrics connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `tcp` or `rdma`.
    pub transport: String,
    pub traddr: String,
    pub trsvcid: String,
    pub nqn: String,
    pub hostnqn: String,
    /// The host id (a UUID) to connect with; the kernel's default when
    /// none. The agent sets [`crate::model::initiator_host_id`] as its
    /// ownership marker.
    pub hostid: Option<String>,
}

impl ConnectOptions {
    /// The string the kernel parses (`drivers/nvme/host/fabrics.c`). Values
    /// that would inject further options are refused.
    pub fn to_options(&self) -> Result<String, NvmetError> {
        for v in [
            &self.transport,
            &self.traddr,
            &self.trsvcid,
            &self.nqn,
            &self.hostnqn,
        ]
        .into_iter()
        .chain(self.hostid.as_ref())
        {
            if v.is_empty() || v.contains([',', '=', '\n', '\0']) {
                return Err(NvmetError::BadOption { value: v.clone() });
            }
        }
        Ok(self.to_string())
    }
}

impl fmt::Display for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transport={},traddr={},trsvcid={},nqn={},hostnqn={}",
            self.transport, self.traddr, self.trsvcid, self.nqn, self.hostnqn
        )?;
        match &self.hostid {
            Some(id) => write!(f, ",hostid={id}"),
            None => Ok(()),
        }
    }
}

/// Parses the kernel's answer `instance=N,cntlid=M`.
pub fn parse_connect_answer(answer: &str) -> Result<(u32, u16), NvmetError> {
    let bad = || NvmetError::BadConnectAnswer {
        answer: answer.to_string(),
    };
    let mut instance = None;
    let mut cntlid = None;
    for kv in answer.trim().split(',') {
        match kv.split_once('=') {
            Some(("instance", v)) => instance = v.parse().ok(),
            Some(("cntlid", v)) => cntlid = v.parse().ok(),
            _ => {}
        }
    }
    Ok((instance.ok_or_else(bad)?, cntlid.ok_or_else(bad)?))
}

/// Writes the options and reads the answer on one descriptor.
pub fn connect_on<D: Read + Write>(
    dev: &mut D,
    opts: &ConnectOptions,
) -> Result<(u32, u16), NvmetError> {
    let line = opts.to_options()?;
    let io = |source| NvmetError::Io {
        op: format!("fabrics connect {line}"),
        source,
    };
    dev.write_all(line.as_bytes()).map_err(io)?;
    let mut buf = [0u8; 256];
    let n = dev.read(&mut buf).map_err(io)?;
    parse_connect_answer(&String::from_utf8_lossy(&buf[..n]))
}

/// Connects through the fabrics device; returns (instance, cntlid). Timed
/// in [`crate::timing`] as backend `nvme_fabrics`.
pub fn connect(paths: &KernelPaths, opts: &ConnectOptions) -> Result<(u32, u16), NvmetError> {
    crate::timing::time("nvme_fabrics", "connect", || connect_untimed(paths, opts))
}

fn connect_untimed(paths: &KernelPaths, opts: &ConnectOptions) -> Result<(u32, u16), NvmetError> {
    let mut dev = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths.fabrics)
        .map_err(|source| NvmetError::Io {
            op: format!("open {}", paths.fabrics.display()),
            source,
        })?;
    connect_on(&mut dev, opts)
}

/// Deletes controller `nvme<instance>` (disconnects it). Timed as backend
/// `nvme_fabrics`.
pub fn disconnect(paths: &KernelPaths, instance: u32) -> Result<(), NvmetError> {
    crate::timing::time("nvme_fabrics", "disconnect", || {
        disconnect_untimed(paths, instance)
    })
}

fn disconnect_untimed(paths: &KernelPaths, instance: u32) -> Result<(), NvmetError> {
    let p = paths
        .sys_class_nvme
        .join(format!("nvme{instance}"))
        .join("delete_controller");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|source| NvmetError::Io {
            op: format!("open {}", p.display()),
            source,
        })?;
    f.write_all(b"1").map_err(|source| NvmetError::Io {
        op: format!("echo 1 > {}", p.display()),
        source,
    })
}

/// A fabrics controller as sysfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FabricsController {
    pub instance: u32,
    pub transport: String,
    pub traddr: String,
    pub trsvcid: String,
    pub subnqn: String,
    pub hostnqn: String,
    /// The host id it connected with (`hostid`, a UUID).
    pub hostid: String,
    /// Namespace block devices, e.g. `nvme1n1`, sorted.
    pub block_devices: Vec<String>,
}

impl FabricsController {
    /// The block device of namespace 1 (else the first one shown).
    pub fn namespace_device(&self) -> Option<&str> {
        self.block_devices
            .iter()
            .find(|d| d.ends_with("n1"))
            .or(self.block_devices.first())
            .map(String::as_str)
    }

    /// Whether this is exactly the connection `opts` makes: same
    /// transport, target, host NQN and host id.
    pub fn is_connection_of(&self, opts: &ConnectOptions) -> bool {
        self.transport == opts.transport
            && self.traddr == opts.traddr
            && self.trsvcid == opts.trsvcid
            && self.subnqn == opts.nqn
            && self.hostnqn == opts.hostnqn
            && opts.hostid.as_deref() == Some(self.hostid.as_str())
    }
}

/// Parses `/sys/class/nvme/nvmeN/address`
/// (`traddr=192.0.2.1,trsvcid=4420[,src_addr=...]`).
pub fn parse_address(s: &str) -> (String, String) {
    let mut traddr = String::new();
    let mut trsvcid = String::new();
    for kv in s.trim().split(',') {
        match kv.split_once('=') {
            Some(("traddr", v)) => traddr = v.to_string(),
            Some(("trsvcid", v)) => trsvcid = v.to_string(),
            _ => {}
        }
    }
    (traddr, trsvcid)
}

/// The block device a namespace entry of a controller directory stands for:
/// `nvme0c1n2` → `nvme0n2`, `nvme1n1` → `nvme1n1`, anything else → None.
pub fn head_device(entry: &str) -> Option<String> {
    let rest = entry.strip_prefix("nvme")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (before_n, nsid) = rest.rsplit_once('n')?;
    if !digits(nsid) {
        return None;
    }
    match before_n.split_once('c') {
        Some((subsys, ctrl)) if digits(subsys) && digits(ctrl) => {
            Some(format!("nvme{subsys}n{nsid}"))
        }
        None if digits(before_n) => Some(format!("nvme{before_n}n{nsid}")),
        _ => None,
    }
}

fn read_trim(p: &Path) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Every fabrics (tcp/rdma) controller in `/sys/class/nvme`.
pub fn list_controllers(paths: &KernelPaths) -> Vec<FabricsController> {
    let Ok(rd) = fs::read_dir(&paths.sys_class_nvme) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some(instance) = name.strip_prefix("nvme").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let d = e.path();
        let transport = read_trim(&d.join("transport"));
        if transport != "tcp" && transport != "rdma" {
            continue;
        }
        let (traddr, trsvcid) = parse_address(&read_trim(&d.join("address")));
        let mut block_devices: Vec<String> = fs::read_dir(&d)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| head_device(&n))
                    .collect()
            })
            .unwrap_or_default();
        block_devices.sort();
        block_devices.dedup();
        out.push(FabricsController {
            instance,
            transport,
            traddr,
            trsvcid,
            subnqn: read_trim(&d.join("subsysnqn")),
            hostnqn: read_trim(&d.join("hostnqn")),
            hostid: read_trim(&d.join("hostid")),
            block_devices,
        });
    }
    out.sort_by_key(|c| c.instance);
    out
}

/// The device path of namespace 1 of exactly the connection `opts` makes
/// (target, host NQN and host id), if it is connected and shows one. Never
/// another host NQN's connection to the same target.
pub fn find_connection_device(paths: &KernelPaths, opts: &ConnectOptions) -> Option<PathBuf> {
    list_controllers(paths)
        .into_iter()
        .find(|c| c.is_connection_of(opts))
        .and_then(|c| c.namespace_device().map(|d| paths.dev.join(d)))
}

/// The device path of namespace 1 of a controller connected to
/// (`subnqn`, `traddr`, `trsvcid`) with any host NQN, if it is connected
/// and shows one. For tools acting as the host; the backend resolves its
/// sources with [`find_connection_device`].
pub fn find_namespace_device(
    paths: &KernelPaths,
    subnqn: &str,
    traddr: &str,
    trsvcid: &str,
) -> Option<PathBuf> {
    list_controllers(paths)
        .into_iter()
        .find(|c| c.subnqn == subnqn && c.traddr == traddr && c.trsvcid == trsvcid)
        .and_then(|c| c.namespace_device().map(|d| paths.dev.join(d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn opts() -> ConnectOptions {
        ConnectOptions {
            transport: "tcp".into(),
            traddr: "192.0.2.1".into(),
            trsvcid: "4420".into(),
            nqn: "nqn.2014-08.org.example:remote".into(),
            hostnqn: "nqn.2026-11.dev.dpu-agent:t:v:initiator".into(),
            hostid: None,
        }
    }

    /// The fabrics device: remembers what was written, answers a read.
    struct FakeFabrics {
        written: Vec<u8>,
        answer: Cursor<Vec<u8>>,
    }
    impl Read for FakeFabrics {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.answer.read(b)
        }
    }
    impl Write for FakeFabrics {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn connect_writes_options_and_reads_instance() {
        let mut dev = FakeFabrics {
            written: Vec::new(),
            answer: Cursor::new(b"instance=3,cntlid=1\n".to_vec()),
        };
        assert_eq!(connect_on(&mut dev, &opts()).unwrap(), (3, 1));
        assert_eq!(
            String::from_utf8(dev.written).unwrap(),
            "transport=tcp,traddr=192.0.2.1,trsvcid=4420,\
             nqn=nqn.2014-08.org.example:remote,hostnqn=nqn.2026-11.dev.dpu-agent:t:v:initiator"
        );
    }

    #[test]
    fn option_injection_is_refused() {
        let mut o = opts();
        o.nqn = "nqn.x,hostnqn=evil".into();
        assert!(o.to_options().is_err());
        let mut o = opts();
        o.hostid = Some("x,hostnqn=evil".into());
        assert!(o.to_options().is_err());
    }

    #[test]
    fn host_id_is_passed_when_set() {
        let mut o = opts();
        o.hostid = Some("0f8fad5b-d9cb-869f-a165-70867728950e".into());
        assert!(
            o.to_options()
                .unwrap()
                .ends_with(",hostnqn=nqn.2026-11.dev.dpu-agent:t:v:initiator,hostid=0f8fad5b-d9cb-869f-a165-70867728950e"),
        );
    }

    #[test]
    fn bad_answers_are_errors() {
        assert!(parse_connect_answer("").is_err());
        assert!(parse_connect_answer("instance=x,cntlid=1").is_err());
        assert_eq!(
            parse_connect_answer("instance=0,cntlid=65535").unwrap(),
            (0, 65535)
        );
    }

    #[test]
    fn head_devices() {
        assert_eq!(head_device("nvme0c1n2").as_deref(), Some("nvme0n2"));
        assert_eq!(head_device("nvme1n1").as_deref(), Some("nvme1n1"));
        assert_eq!(head_device("nvme1"), None);
        assert_eq!(head_device("power"), None);
        assert_eq!(head_device("nvme1nx"), None);
        assert_eq!(head_device("nvmecn1"), None);
    }

    #[test]
    fn controllers_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let paths = KernelPaths::under(dir.path());
        let c = paths.sys_class_nvme.join("nvme2");
        fs::create_dir_all(c.join("nvme1c2n1")).unwrap();
        fs::write(c.join("transport"), "tcp\n").unwrap();
        fs::write(
            c.join("address"),
            "traddr=192.0.2.1,trsvcid=4420,src_addr=192.0.2.9\n",
        )
        .unwrap();
        fs::write(c.join("subsysnqn"), "nqn.r\n").unwrap();
        fs::write(c.join("hostnqn"), "nqn.h\n").unwrap();
        fs::write(c.join("hostid"), "0f8fad5b-d9cb-869f-a165-70867728950e\n").unwrap();
        // A PCIe controller is not ours to manage.
        let p = paths.sys_class_nvme.join("nvme0");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("transport"), "pcie\n").unwrap();

        let all = list_controllers(&paths);
        assert_eq!(
            all,
            [FabricsController {
                instance: 2,
                transport: "tcp".into(),
                traddr: "192.0.2.1".into(),
                trsvcid: "4420".into(),
                subnqn: "nqn.r".into(),
                hostnqn: "nqn.h".into(),
                hostid: "0f8fad5b-d9cb-869f-a165-70867728950e".into(),
                block_devices: vec!["nvme1n1".into()],
            }]
        );
        let mut own = ConnectOptions {
            transport: "tcp".into(),
            traddr: "192.0.2.1".into(),
            trsvcid: "4420".into(),
            nqn: "nqn.r".into(),
            hostnqn: "nqn.h".into(),
            hostid: Some("0f8fad5b-d9cb-869f-a165-70867728950e".into()),
        };
        assert_eq!(
            find_connection_device(&paths, &own),
            Some(paths.dev.join("nvme1n1"))
        );
        // Another host NQN's connection to the same target is not this one.
        own.hostnqn = "nqn.other".into();
        assert_eq!(find_connection_device(&paths, &own), None);
        own.hostnqn = "nqn.h".into();
        own.hostid = None;
        assert_eq!(find_connection_device(&paths, &own), None);
        assert_eq!(
            find_namespace_device(&paths, "nqn.r", "192.0.2.1", "4420"),
            Some(paths.dev.join("nvme1n1"))
        );
        assert_eq!(
            find_namespace_device(&paths, "nqn.r", "192.0.2.1", "4421"),
            None
        );

        fs::write(c.join("delete_controller"), "").unwrap();
        disconnect(&paths, 2).unwrap();
        assert_eq!(
            fs::read_to_string(c.join("delete_controller")).unwrap(),
            "1"
        );
    }
}
