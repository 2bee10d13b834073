//! QoS for the kernel backend: cgroup v2 `io.max`.
//!
//! `io.max` limits the I/O that tasks of one cgroup issue to one block
//! device, by `MAJ:MIN`, separately for reads and writes: a line
//! `MAJ:MIN riops=N wiops=N rbps=N wbps=N`, `max` meaning no limit. So a
//! volume's `max_iops` and `max_mbps` become the same limit on each
//! direction; a combined read+write cap cannot be expressed. MB are MiB, as
//! in SPDK's `*_mbytes_per_sec`.
//!
//! Limit: nvmet serves I/O from kernel workers that belong to the root
//! cgroup, where `io.max` cannot be set. The limit therefore takes effect only
//! in the cgroup the agent is configured with, for I/O its tasks issue to the
//! source device (a VM or container consuming it on the same kernel, as on
//! the test rig); I/O a remote host sends through nvmet is not limited.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

use super::KernelPaths;
use super::configfs::NvmetError;
use crate::model::Qos;

const MIB: u64 = 1024 * 1024;

/// One `io.max` line's limits; `None` is `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoMax {
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
}

impl IoMax {
    pub fn from_qos(q: &Qos) -> IoMax {
        let bps = q.max_mbps.map(|m| m.saturating_mul(MIB));
        IoMax {
            riops: q.max_iops,
            wiops: q.max_iops,
            rbps: bps,
            wbps: bps,
        }
    }

    /// The line for device `maj:min`.
    pub fn line(&self, dev: &str) -> String {
        format!("{dev} {self}")
    }
}

impl fmt::Display for IoMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |o: Option<u64>| o.map_or("max".to_string(), |n| n.to_string());
        write!(
            f,
            "riops={} wiops={} rbps={} wbps={}",
            v(self.riops),
            v(self.wiops),
            v(self.rbps),
            v(self.wbps)
        )
    }
}

/// `MAJ:MIN` of block device `name` (e.g. `nvme1n1`), from sysfs.
pub fn device_numbers(paths: &KernelPaths, name: &str) -> Result<String, NvmetError> {
    let p = paths.sys_class_block.join(name).join("dev");
    fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|source| NvmetError::Io {
            op: format!("read {}", p.display()),
            source,
        })
}

/// Writes the limits of `dev` (`MAJ:MIN`) into `<cgroup>/io.max`.
pub fn write_io_max(cgroup: &Path, dev: &str, limits: &IoMax) -> Result<(), NvmetError> {
    let p = cgroup.join("io.max");
    let line = limits.line(dev);
    let io = |source| NvmetError::Io {
        op: format!("echo {line} > {}", p.display()),
        source,
    };
    let mut f = fs::OpenOptions::new().write(true).open(&p).map_err(io)?;
    f.write_all(line.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_lines() {
        let q = Qos {
            max_iops: Some(5000),
            max_mbps: Some(100),
        };
        assert_eq!(
            IoMax::from_qos(&q).line("259:3"),
            "259:3 riops=5000 wiops=5000 rbps=104857600 wbps=104857600"
        );
        assert_eq!(
            IoMax::from_qos(&Qos::default()).line("8:0"),
            "8:0 riops=max wiops=max rbps=max wbps=max"
        );
    }
}

/// Parses the fields after `MAJ:MIN` of an `io.max` line.
pub fn parse_io_max<'a>(fields: impl Iterator<Item = &'a str>) -> IoMax {
    let mut m = IoMax::default();
    for f in fields {
        let Some((k, v)) = f.split_once('=') else {
            continue;
        };
        let v = v.parse().ok();
        match k {
            "riops" => m.riops = v,
            "wiops" => m.wiops = v,
            "rbps" => m.rbps = v,
            "wbps" => m.wbps = v,
            _ => {}
        }
    }
    m
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn lines_parse_back() {
        let m = IoMax {
            riops: Some(5),
            wiops: None,
            rbps: Some(7),
            wbps: None,
        };
        let line = m.line("8:0");
        assert_eq!(parse_io_max(line.split_whitespace().skip(1)), m);
    }
}
