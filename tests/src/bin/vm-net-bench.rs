//! `vm-net-bench`: `net-agent-bench --datapath system` (rows 3 and 4 of
//! net-offload's benchmarks on ovs-vswitchd's kernel datapath) inside a VM
//! rig guest, whose Debian kernel has the `openvswitch` module this host's
//! kernel lacks. A benchmark, not a test: CI does not run it.
//!
//! The guest (QEMU, TCG here: an emulated CPU, so compare its numbers with
//! the baselines of the same run, not with the host's rows) gets Debian's
//! Open vSwitch packages, the `openvswitch` and `dummy` modules, and the
//! static musl builds of `dpu-agent` and `net-agent-bench` (release
//! profile, from `--bin-dir`). Its table and `bench-row` lines are printed
//! on stdout here as the guest printed them; the guest's progress
//! (`net-agent-bench`'s stderr) goes to stderr every 30 s while it runs.
//!
//! ```text
//! export CC_x86_64_unknown_linux_musl=gcc
//! cargo build --locked --release --target x86_64-unknown-linux-musl \
//!     -p dpu-tests --bin net-agent-bench -p dpu-agent --bin dpu-agent
//! cargo build --locked --release -p dpu-tests --bin vm-net-bench
//! target/release/vm-net-bench [--ports 1000] [--rules 0] [--runs 20] [--baseline-runs 10] [--restarts 1] \
//!     [--memory-mib 4096] [--cpus 2] [--timeout-minutes 120] [--bin-dir DIR]
//! ```
//!
//! The VM rig's cache (`$DPU_VM_CACHE`, see `dpu_tests::vm::cache_dir`)
//! must hold Debian's kernel and packages (`tests/vm/setup.sh`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dpu_tests::vm::Vm;

struct Options {
    /// Passed on to `net-agent-bench`: `--ports`, `--rules`, `--runs`,
    /// `--baseline-runs`, `--restarts`.
    bench_args: Vec<String>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    bin_dir: PathBuf,
}

impl Options {
    fn parse() -> Result<Options, String> {
        // This binary lives in TARGET/<profile>/; the guest's in
        // TARGET/x86_64-unknown-linux-musl/release/.
        let target = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .ancestors()
            .nth(2)
            .map(PathBuf::from)
            .unwrap_or_default();
        let mut o = Options {
            bench_args: Vec::new(),
            memory_mib: 4096,
            cpus: 2,
            timeout: Duration::from_secs(120 * 60),
            bin_dir: target.join("x86_64-unknown-linux-musl").join("release"),
        };
        let mut bench: Vec<(&str, String)> = vec![
            ("--ports", "1000".into()),
            ("--rules", "0".into()),
            ("--runs", "20".into()),
            ("--baseline-runs", "10".into()),
            // One: a restart in the TCG guest takes seconds to a minute.
            ("--restarts", "1".into()),
        ];
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let value = args.next().ok_or(format!("{a} needs a value"))?;
            let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{a}: {e}"));
            match a.as_str() {
                "--memory-mib" => o.memory_mib = number(&value)? as u32,
                "--cpus" => o.cpus = number(&value)? as u32,
                "--timeout-minutes" => o.timeout = Duration::from_secs(number(&value)? * 60),
                "--bin-dir" => o.bin_dir = PathBuf::from(value),
                other => {
                    number(&value)?;
                    let slot = bench
                        .iter_mut()
                        .find(|(name, _)| *name == other)
                        .ok_or(format!("unknown argument {other}"))?;
                    slot.1 = value;
                }
            }
        }
        o.bench_args = bench
            .into_iter()
            .flat_map(|(name, value)| [name.to_string(), value])
            .collect();
        Ok(o)
    }
}

/// The guest's script: no file-descriptor limit in the way of ten thousand
/// ports, then the bench on the kernel datapath, its progress in a file the
/// host reads while it runs.
fn script(bench_args: &[String]) -> String {
    format!(
        "ulimit -n 65536\n\
         echo \"guest: $(nproc) vCPUs, $(grep MemTotal /proc/meminfo), kernel $(uname -r), $(/usr/lib/openvswitch-switch/ovs-vswitchd --version | head -n 1)\" >&2\n\
         net-agent-bench --datapath system {} 2> \"$DPU_VM_OUT/progress\"\n\
         status=$?\n\
         cat \"$DPU_VM_OUT/progress\" >&2\n\
         exit $status\n",
        bench_args.join(" ")
    )
}

fn main() -> ExitCode {
    let o = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vm-net-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let bins = ["dpu-agent", "net-agent-bench"].map(|b| o.bin_dir.join(b));
    if let Some(missing) = bins.iter().find(|b| !b.is_file()) {
        eprintln!(
            "vm-net-bench: {} not built; see this binary's doc comment (`cargo build --release --target x86_64-unknown-linux-musl ...`)",
            missing.display()
        );
        return ExitCode::from(2);
    }
    let mut vm = Vm::builder()
        .memory_mib(o.memory_mib)
        .cpus(o.cpus)
        .modules(&["openvswitch", "dummy"])
        .packages(&["openvswitch-switch", "openvswitch-common"])
        .timeout(o.timeout)
        .script(&script(&o.bench_args));
    for b in &bins {
        vm = vm.binary(b);
    }
    eprintln!(
        "vm-net-bench: booting a guest ({} MiB, {} vCPUs) for net-agent-bench --datapath system {}",
        o.memory_mib,
        o.cpus,
        o.bench_args.join(" ")
    );
    let started = Instant::now();
    let mut running = match vm.start() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vm-net-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = 0;
    while running.is_running() {
        std::thread::sleep(Duration::from_secs(10));
        let progress = running.out_file("progress").unwrap_or_default();
        for line in progress.lines().skip(shown) {
            eprintln!(
                "vm-net-bench: [{:.0} s] {line}",
                started.elapsed().as_secs_f64()
            );
            shown += 1;
        }
    }
    match running.wait() {
        Ok(out) => {
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            eprintln!(
                "vm-net-bench: guest script exit status {}{} after {:.0} s",
                out.status,
                if out.timed_out { " (timed out)" } else { "" },
                out.elapsed.as_secs_f64()
            );
            if out.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vm-net-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
