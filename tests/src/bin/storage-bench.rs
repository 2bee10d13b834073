//! `storage-bench`: the storage benchmark's guest half, run inside the VM
//! rig (static musl build) by `tests/benches/storage_bench.rs`, which prints
//! its table.
//!
//! ```text
//! storage-bench VOLUMES SERVER_PORT SERVER_NQN_PREFIX SERVER_FILE
//! ```
//! The guest script has set up a loopback "storage server": nvmet-tcp on
//! 127.0.0.1:SERVER_PORT with subsystems `SERVER_NQN_PREFIX1..=VOLUMES`,
//! each with one namespace; the first is backed by SERVER_FILE.
//!
//! 1. Attach latency: for volume i = 1..=VOLUMES, the kernel backend
//!    (`NvmetBackend`, real configfs, the code the volumes controller runs)
//!    converges desired = volumes 1..=i (NVMe/TCP connect to the source,
//!    export on 127.0.0.1:4420 to the host NQN), then the "host" connects
//!    through `/dev/nvme-fabrics` (the same initiator code) and waits for the
//!    block device node. Time from the start of the converge to the node.
//! 2. Throughput of volume 1 through the exported path (host device, O_DIRECT)
//!    vs SERVER_FILE read directly: sequential 1 MiB reads and 4 KiB random
//!    reads at queue depth 1.
//!
//! Prints `key value` lines; tears everything down at the end.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dpu_tests::storage::{error_chain, kernel_backend, remote_volume};
use storage_offload::apply::{BlockBackend, NvmetBackend, apply_all};
use storage_offload::model::{DesiredVolume, VolumeKey};
use storage_offload::nvmet::{ConnectOptions, KernelPaths, fabrics};

const HOST: &str = "nqn.2026-11.dev.dpu-agent:bench:fn:f";
const SEQ_BYTES: usize = 64 << 20;
const RANDOM_READS: usize = 4000;

fn volume(i: usize, port: u16, prefix: &str) -> DesiredVolume {
    let key = VolumeKey::new("bench", format!("v{i}"));
    let subnqn = format!("{prefix}{i}").parse().expect("an NQN");
    remote_volume(key, "127.0.0.1", port, subnqn, HOST)
}

async fn converge(b: &NvmetBackend, desired: &[DesiredVolume]) -> Result<(), String> {
    let observed = b.observe().await.map_err(|e| error_chain(&e))?;
    let actions = b.plan(desired, &observed);
    apply_all(b, &actions).await.map_err(|e| error_chain(&e))?;
    Ok(())
}

/// Connects the host to volume `key`'s export; returns the controller
/// instance and the block device once its node exists.
fn host_attach(paths: &KernelPaths, key: &VolumeKey) -> Result<(u32, PathBuf), String> {
    let nqn = key.subsystem_nqn();
    let (instance, _) = fabrics::connect(
        paths,
        &ConnectOptions {
            transport: "tcp".into(),
            traddr: "127.0.0.1".into(),
            trsvcid: "4420".into(),
            nqn: nqn.clone(),
            hostnqn: HOST.into(),
            hostid: None,
        },
    )
    .map_err(|e| format!("host connect to {nqn}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(dev) = fabrics::find_namespace_device(paths, &nqn, "127.0.0.1", "4420")
            && dev.exists()
        {
            return Ok((instance, dev));
        }
        if Instant::now() > deadline {
            return Err(format!("no block device for {nqn} after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A 4 KiB-aligned buffer for O_DIRECT.
struct Aligned {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + 4096];
        let off = (4096 - (raw.as_ptr() as usize % 4096)) % 4096;
        Aligned { raw, off, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// (MiB/s sequential, IOPS 4 KiB random) over the first `size` bytes.
fn throughput(path: &Path, direct: bool, size: usize) -> Result<(f64, f64), String> {
    let open = || {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
            .map_err(|e| format!("open {}: {e}", path.display()))
    };
    let mut f: File = open()?;
    let mut big = Aligned::new(1 << 20);
    let t = Instant::now();
    let mut done = 0;
    while done < size {
        let n = f
            .read(big.buf())
            .map_err(|e| format!("read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    let seq = done as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();

    let f = open()?;
    let mut small = Aligned::new(4096);
    let blocks = (size / 4096) as u64;
    // xorshift: reproducible offsets, no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t = Instant::now();
    for _ in 0..RANDOM_READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % blocks) * 4096;
        f.read_exact_at(small.buf(), off)
            .map_err(|e| format!("pread {}: {e}", path.display()))?;
    }
    let iops = RANDOM_READS as f64 / t.elapsed().as_secs_f64();
    Ok((seq, iops))
}

async fn run(args: &[String]) -> Result<(), String> {
    let [n, port, prefix, file] = args else {
        return Err(
            "usage: storage-bench VOLUMES SERVER_PORT SERVER_NQN_PREFIX SERVER_FILE".into(),
        );
    };
    let n: usize = n.parse().map_err(|_| format!("bad count {n}"))?;
    let port: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let paths = KernelPaths::default();
    let b = kernel_backend(4420);

    let mut desired = Vec::new();
    let mut hosts = Vec::new();
    let mut ms = Vec::new();
    let mut agent_ms = Vec::new();
    for i in 1..=n {
        desired.push(volume(i, port, prefix));
        let t = Instant::now();
        converge(&b, &desired).await?;
        agent_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let (instance, dev) = host_attach(&paths, &desired[i - 1].key)?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        hosts.push((instance, dev));
    }
    agent_ms.sort_by(f64::total_cmp);
    println!("attach_agent_p50_ms {:.1}", percentile(&agent_ms, 0.50));
    println!("attach_agent_p99_ms {:.1}", percentile(&agent_ms, 0.99));
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    println!("attach_volumes {n}");
    println!("attach_p50_ms {:.1}", percentile(&sorted, 0.50));
    println!("attach_p99_ms {:.1}", percentile(&sorted, 0.99));
    println!("attach_max_ms {:.1}", sorted[sorted.len() - 1]);
    println!("attach_first_ms {:.1}", ms[0]);

    let (seq_dev, iops_dev) = throughput(&hosts[0].1, true, SEQ_BYTES)?;
    let (seq_file, iops_file) = throughput(Path::new(file), false, SEQ_BYTES)?;
    println!("exported_seq_mib_s {seq_dev:.1}");
    println!("exported_rand4k_iops {iops_dev:.0}");
    println!("direct_seq_mib_s {seq_file:.1}");
    println!("direct_rand4k_iops {iops_file:.0}");
    println!("device {}", hosts[0].1.display());

    for (instance, _) in &hosts {
        fabrics::disconnect(&paths, *instance).map_err(|e| e.to_string())?;
    }
    converge(&b, &[]).await?;
    println!("torn down");
    Ok(())
}

fn main() -> ExitCode {
    dpu_tests::probe::main("storage-bench", |args| async move { run(&args).await })
}
