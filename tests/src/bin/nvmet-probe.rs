//! `nvmet-probe`: drives `storage_offload`'s kernel backend (`NvmetBackend`,
//! real configfs mode) the way the volumes controller does, inside the VM rig
//! (built static with musl and copied into the guest, whose kernel has nvmet).
//!
//! ```text
//! nvmet-probe attach SERVER_ADDR SERVER_PORT SERVER_NQN EXPORT_PORT HOST_NQN
//! nvmet-probe delete EXPORT_PORT
//! ```
//! `attach` desires one volume (tenant `t`, id `v`) whose source is the
//! NVMe/TCP subsystem SERVER_NQN, presented on an NVMe function whose host
//! NQN is HOST_NQN, on the agent's port 7 at 127.0.0.1:EXPORT_PORT. It prints
//! every planned action, applies them, observes again and prints
//! `converged` when nothing is left to do, then `subsystem <nqn>`.
//! `delete` desires nothing: every object of the volume is torn down in
//! reverse; it prints the actions then `converged`. Exits 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use dpu_api::spec::{FunctionType, NvmeofSource, NvmeofTransport, VolumeSource, VolumeSpec};
use storage_offload::apply::{BlockBackend, NvmetBackend, apply_all};
use storage_offload::model::{DesiredVolume, FunctionTarget, VolumeKey};
use storage_offload::nvmet::KernelPaths;
use storage_offload::nvmet::configfs::{ConfigfsMode, PortConfig};
use storage_offload::plan::NvmetPlanConfig;

fn backend(export_port: &str) -> NvmetBackend {
    NvmetBackend::new(
        KernelPaths::default(),
        ConfigfsMode::Kernel,
        NvmetPlanConfig {
            port: PortConfig {
                id: 7,
                trtype: "tcp".into(),
                adrfam: "ipv4".into(),
                traddr: "127.0.0.1".into(),
                trsvcid: export_port.into(),
            },
            backing_dir: PathBuf::from("/tmp/dpu-volumes"),
            qos_cgroup: None,
            volume_ports: 0,
        },
    )
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(&format!(": {x}"));
        src = x.source();
    }
    s
}

async fn converge(b: &NvmetBackend, desired: &[DesiredVolume]) -> Result<(), String> {
    let observed = b.observe().await.map_err(|e| chain(&e))?;
    let actions = b.plan(desired, &observed);
    for a in &actions {
        println!("action {a}");
    }
    apply_all(b, &actions).await.map_err(|e| chain(&e))?;
    let observed = b.observe().await.map_err(|e| chain(&e))?;
    let left = b.plan(desired, &observed);
    if !left.is_empty() {
        let lines: Vec<String> = left.iter().map(|a| a.to_string()).collect();
        return Err(format!("not converged: {}", lines.join("; ")));
    }
    println!("converged");
    Ok(())
}

async fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, addr, port, nqn, export, host] if cmd == "attach" => {
            let key = VolumeKey::new("t", "v");
            let d = DesiredVolume {
                key: key.clone(),
                spec: VolumeSpec {
                    function: "f".into(),
                    nsid: None,
                    source: VolumeSource::Nvmeof(NvmeofSource {
                        transport: NvmeofTransport::Tcp,
                        address: addr.clone(),
                        port: port.parse().map_err(|_| format!("bad port {port}"))?,
                        subnqn: nqn.parse()?,
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
                    host_nqn: host.clone(),
                },
            };
            converge(&backend(export), &[d]).await?;
            println!("subsystem {}", key.subsystem_nqn());
            Ok(())
        }
        [cmd, export] if cmd == "delete" => converge(&backend(export), &[]).await,
        _ => Err(
            "usage: nvmet-probe attach ADDR PORT NQN EXPORT_PORT HOST_NQN | delete EXPORT_PORT"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    dpu_tests::probe::main("nvmet-probe", |args| async move { run(&args).await })
}
