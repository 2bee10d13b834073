//! Full-scan cost on a large host: builds a sysfs tree with one BlueField
//! PF carrying 256 VFs (each with a netdev and an IOMMU group), then times
//! `discover::scan` + `selectors::select` and reports the process's peak
//! RSS. Targets: ≤ 20 ms per full scan, ≤ 8 MB RSS.
//! Run: `cargo bench -p host-stub --bench scan`.

use std::time::{Duration, Instant};

use host_stub::discover;
use host_stub::fixture::{FixtureFunction, SysfsTree};
use host_stub::selectors;

const VFS: u32 = 256;
const ROUNDS: u32 = 50;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = SysfsTree::new(dir.path()).expect("tree");
    let pf = "0000:03:00.0";
    tree.add_function(&FixtureFunction {
        address: pf.into(),
        vendor: 0x15b3,
        device: 0xa2dc,
        class: 0x020000,
        driver: Some("mlx5_core".into()),
        iommu_group: Some(10),
        numa_node: Some(0),
        netdev: Some("ens1f0np0".into()),
        sriov_totalvfs: Some(VFS),
        dsn: Some(0x1122_3344_5566_7788),
        ..FixtureFunction::default()
    })
    .expect("pf");
    tree.set_num_vfs(pf, VFS, |i| FixtureFunction {
        address: format!("0000:{:02x}:{:02x}.{}", 4 + i / 256, (i / 8) % 32, i % 8),
        vendor: 0x15b3,
        device: 0x101e,
        class: 0x020000,
        driver: Some("mlx5_core".into()),
        iommu_group: Some(100 + i),
        numa_node: Some(0),
        netdev: Some(format!("ens1f0v{i}")),
        ..FixtureFunction::default()
    })
    .expect("vfs");

    let defaults = selectors::bluefield_defaults();
    // Warm the dentry cache once, as a running daemon would have it.
    let first = discover::scan(dir.path()).expect("scan");
    assert_eq!(first.len(), VFS as usize + 1);

    let mut times: Vec<Duration> = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let all = discover::scan(dir.path()).expect("scan");
        let kept = selectors::select(&defaults, &all);
        times.push(t.elapsed());
        assert_eq!(kept.len(), VFS as usize + 1);
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    let (rss, hwm) = rss_kib();
    println!("functions  rounds  median_ms  max_ms  rss_kib  peak_rss_kib");
    println!(
        "{:<9}  {:<6}  {:<9.2}  {:<6.2}  {:<7}  {}",
        VFS + 1,
        ROUNDS,
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        rss,
        hwm
    );
}

/// `VmRSS` and `VmHWM` from /proc/self/status, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
