//! Full-scan cost on a large host: builds a sysfs tree with one BlueField
//! PF carrying 256 VFs (each with a netdev and an IOMMU group), then times
//! `discover::scan` + `selectors::select` and reports the process's peak
//! RSS. Targets: ≤ 20 ms per full scan, ≤ 8 MB RSS.
//!
//! Side by side in the same run:
//! - baseline: a bare walk of the same tree (`read_dir` of every function
//!   and reading each of its regular files, no parsing): the I/O floor a
//!   scan cannot beat;
//! - the `host-stub run` daemon itself over the same tree (device plugin on,
//!   in a tempdir; the agent address refuses connections, so the daemon
//!   keeps its client and retry loop but no TLS session): its peak RSS after
//!   a few rescans.
//!
//! Run: `cargo bench -p host-stub --bench scan`. The daemon measured is the
//! bench build's `host-stub` (release profile, features unified with the
//! dev-dependencies) unless `HOST_STUB_BIN` names another binary, e.g. the
//! shipped one: `cargo build --profile release-small -p host-stub` and
//! `HOST_STUB_BIN=target/release-small/host-stub`.
//! `benches/daemon-rss.sh` measures the daemon alone, without building this
//! bench (and so the agent).

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
    let (rss, hwm) = rss_kib(&std::fs::read_to_string("/proc/self/status").unwrap_or_default());
    let mut walk_times: Vec<Duration> = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let files = bare_walk(&dir.path().join("bus/pci/devices"));
        walk_times.push(t.elapsed());
        assert!(files > VFS as usize);
    }
    let (daemon_rss, daemon_hwm) = daemon_rss(dir.path());

    println!(
        "what                          functions  rounds  median_ms  max_ms  rss_kib  peak_rss_kib"
    );
    let row = |what: &str, times: &mut Vec<Duration>, rss: String, hwm: String| {
        times.sort();
        println!(
            "{what:<28}  {:<9}  {:<6}  {:<9.2}  {:<6.2}  {rss:<7}  {hwm}",
            VFS + 1,
            ROUNDS,
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
        );
    };
    row(
        "scan + select (this bench)",
        &mut times,
        rss.to_string(),
        hwm.to_string(),
    );
    row(
        "baseline: bare walk",
        &mut walk_times,
        "-".into(),
        "-".into(),
    );
    println!(
        "{:<28}  {:<9}  {:<6}  {:<9}  {:<6}  {daemon_rss:<7}  {daemon_hwm}",
        "host-stub run (daemon)",
        VFS + 1,
        "-",
        "-",
        "-"
    );
    // The rows with their targets as `bench-row` lines for
    // `scripts/bench.sh` (`times` are sorted by `row` above).
    let median_ms = |t: &[Duration]| t[t.len() / 2].as_secs_f64() * 1e3;
    let (scan, walk) = (median_ms(&times), median_ms(&walk_times));
    let verdict = |met: bool| if met { "met" } else { "missed" };
    println!();
    println!(
        "bench-row\tscan + select, {} functions, median\t{scan:.2} ms\t{walk:.2} ms (bare walk)\t{:.2}×\t≤ 20 ms\t{}",
        VFS + 1,
        scan / walk,
        verdict(scan <= 20.0)
    );
    let mb = daemon_rss as f64 * 1024.0 / 1e6;
    println!(
        "bench-row\thost-stub run (daemon) RSS\t{mb:.1} MB\t-\t-\t≤ 8 MB\t{}",
        verdict(mb <= 8.0)
    );
}

/// Lists every function directory and reads each regular file in it once.
fn bare_walk(devices: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(devices).expect("devices").flatten() {
        let Ok(dir) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for file in dir.flatten() {
            if file.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::read(file.path());
                n += 1;
            }
        }
    }
    n
}

/// Runs the daemon binary over `root` for a few seconds and returns its
/// `VmRSS` and `VmHWM` in KiB.
fn daemon_rss(root: &std::path::Path) -> (u64, u64) {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ca = dpu_pki::Ca::generate("bench").expect("ca");
    let id = ca
        .issue("spiffe://dpu.local/host-stub/bench", &[])
        .expect("identity");
    std::fs::write(w.join("ca.pem"), &ca.cert_pem).expect("ca.pem");
    std::fs::write(w.join("cert.pem"), &id.cert_pem).expect("cert");
    std::fs::write(w.join("key.pem"), &id.key_pem).expect("key");
    std::fs::create_dir(w.join("plugins")).expect("plugins dir");
    let config = format!(
        "rescan_interval_secs = 1\nlease_secs = 60\nretry_secs = 1\nstate_dir = \"{w}/state\"\n\
         [agent]\nurl = \"https://127.0.0.1:1\"\nca = \"{w}/ca.pem\"\ncert = \"{w}/cert.pem\"\nkey = \"{w}/key.pem\"\n\
         [cdi]\ndir = \"{w}/cdi\"\n[device_plugin]\ndir = \"{w}/plugins\"\n",
        w = w.display()
    );
    std::fs::write(w.join("stub.toml"), config).expect("config");
    let bin =
        std::env::var_os("HOST_STUB_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_host-stub").into());
    println!("daemon: {}", std::path::Path::new(&bin).display());
    let mut child = std::process::Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(w.join("stub.toml"))
        .arg("--sysfs-root")
        .arg(root)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("host-stub run");
    std::thread::sleep(Duration::from_secs(5));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    rss_kib(&status)
}

/// `VmRSS` and `VmHWM` from a /proc/<pid>/status, in KiB.
fn rss_kib(status: &str) -> (u64, u64) {
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
