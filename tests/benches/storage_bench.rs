//! Storage benchmark (kernel backend) in the VM rig: boots Debian's kernel,
//! sets up a loopback "storage server" (nvmet-tcp on 127.0.0.1:4430, one
//! subsystem per volume, file-backed namespaces in the guest's RAM), runs
//! `storage-bench` (static musl, `tests/src/bin/storage-bench.rs`) in the
//! guest and prints a table:
//!
//! - volume attach → host block device ready, p50/p99 over N volumes (the
//!   kernel backend's converge plus the host's NVMe/TCP connect, until the
//!   device node exists);
//! - sequential (1 MiB) and random 4 KiB (queue depth 1) reads of volume 1
//!   through the exported path (host `/dev/nvmeXnY` → the agent's nvmet
//!   export → its NVMe/TCP initiator → the server's nvmet → the file) beside
//!   the same file read directly in the guest, and the ratio.
//!
//! ```text
//! tests/vm/setup.sh   # once
//! CC_x86_64_unknown_linux_musl=gcc cargo build -p dpu-tests \
//!     --target x86_64-unknown-linux-musl --bin storage-bench
//! cargo bench --profile dev -p dpu-tests --bench storage_bench [-- VOLUMES]
//! ```
//! `--profile dev`: this side only boots the VM (what is measured runs in the
//! guest's kernel), so a release build of the workspace would buy nothing.

use dpu_tests::vm::{self, Vm};

const SCRIPT: &str = r###"set -e
S=/sys/kernel/config/nvmet
N=__N__
ip link set lo up
mkdir $S/ports/1
echo tcp > $S/ports/1/addr_trtype
echo ipv4 > $S/ports/1/addr_adrfam
echo 127.0.0.1 > $S/ports/1/addr_traddr
echo 4430 > $S/ports/1/addr_trsvcid
# Volume 1 has real data (the throughput runs read it); the others are sparse.
dd if=/dev/urandom of=/tmp/srv1.img bs=1M count=64 2>/dev/null
for i in $(seq 1 $N); do
    [ -e /tmp/srv$i.img ] || dd if=/dev/zero of=/tmp/srv$i.img bs=1M count=0 seek=16 2>/dev/null
    q=nqn.2014-08.org.example:bench$i
    mkdir $S/subsystems/$q
    echo 1 > $S/subsystems/$q/attr_allow_any_host
    mkdir $S/subsystems/$q/namespaces/1
    echo 1 > $S/subsystems/$q/namespaces/1/buffered_io
    echo /tmp/srv$i.img > $S/subsystems/$q/namespaces/1/device_path
    echo 1 > $S/subsystems/$q/namespaces/1/enable
    ln -s $S/subsystems/$q $S/ports/1/subsystems/$q
done
echo "kernel $(uname -r)"
echo "cpus $(nproc)"
storage-bench $N 4430 nqn.2014-08.org.example:bench /tmp/srv1.img
"###;

fn main() -> anyhow::Result<()> {
    let volumes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let out = Vm::builder()
        .modules(&["nvmet", "nvmet_tcp", "nvme_tcp", "nvme_fabrics"])
        .binary(vm::musl_binary("storage-bench")?)
        .memory_mib(2048)
        .script(&SCRIPT.replace("__N__", &volumes.to_string()))
        .timeout(std::time::Duration::from_secs(1200))
        .run()?;
    if !out.success() {
        anyhow::bail!("the guest failed:\n{out}");
    }
    let v = |k: &str| -> String {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ').map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    let f = |k: &str| v(k).parse::<f64>().unwrap_or(f64::NAN);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "storage-bench: kernel backend in the VM rig (guest kernel {}, {} vCPU; host {} x {cpu})",
        v("kernel"),
        v("cpus"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| attach → host block device ready ({} volumes) | p50 | p99 | max | first |",
        v("attach_volumes")
    );
    println!("|---|---|---|---|---|");
    println!(
        "| total, ms | {} | {} | {} | {} |",
        v("attach_p50_ms"),
        v("attach_p99_ms"),
        v("attach_max_ms"),
        v("attach_first_ms")
    );
    println!(
        "| of which the backend's converge (source connect + export), ms | {} | {} | | |",
        v("attach_agent_p50_ms"),
        v("attach_agent_p99_ms")
    );
    println!();
    println!("| read of volume 1 (64 MiB) | sequential 1 MiB, MiB/s | random 4 KiB QD1, IOPS |");
    println!("|---|---|---|");
    println!(
        "| exported path ({} ← nvmet ← NVMe/TCP initiator ← server nvmet ← file) | {} | {} |",
        v("device"),
        v("exported_seq_mib_s"),
        v("exported_rand4k_iops")
    );
    println!(
        "| the same file read directly (tmpfs) | {} | {} |",
        v("direct_seq_mib_s"),
        v("direct_rand4k_iops")
    );
    println!(
        "| ratio exported / direct | {:.3} | {:.3} |",
        f("exported_seq_mib_s") / f("direct_seq_mib_s"),
        f("exported_rand4k_iops") / f("direct_rand4k_iops")
    );
    // The same figures as `bench-row` lines for `scripts/bench.sh` (no
    // targets: under TCG they bound nothing on real hardware).
    println!();
    println!(
        "bench-row\tstorage (VM, TCG): attach → host block device ready p50 / p99\t{} / {} ms\t-\t-\t-\t-",
        v("attach_p50_ms"),
        v("attach_p99_ms")
    );
    for (what, unit, key) in [
        ("sequential 1 MiB reads", "MiB/s", "seq_mib_s"),
        ("random 4 KiB QD1 reads", "IOPS", "rand4k_iops"),
    ] {
        println!(
            "bench-row\tstorage (VM, TCG): {what}\t{} {unit}\t{} {unit} (the file read directly)\t{:.3}×\t-\t-",
            v(&format!("exported_{key}")),
            v(&format!("direct_{key}")),
            f(&format!("exported_{key}")) / f(&format!("direct_{key}"))
        );
    }
    Ok(())
}
