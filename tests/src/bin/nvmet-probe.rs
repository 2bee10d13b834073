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

use std::process::ExitCode;

use dpu_tests::storage::{error_chain, kernel_backend, remote_volume};
use storage_offload::apply::{BlockBackend, NvmetBackend, apply_all};
use storage_offload::model::{DesiredVolume, VolumeKey};

async fn converge(b: &NvmetBackend, desired: &[DesiredVolume]) -> Result<(), String> {
    let observed = b.observe().await.map_err(|e| error_chain(&e))?;
    let actions = b.plan(desired, &observed);
    for a in &actions {
        println!("action {a}");
    }
    apply_all(b, &actions).await.map_err(|e| error_chain(&e))?;
    let observed = b.observe().await.map_err(|e| error_chain(&e))?;
    let left = b.plan(desired, &observed);
    if !left.is_empty() {
        let lines: Vec<String> = left.iter().map(|a| a.to_string()).collect();
        return Err(format!("not converged: {}", lines.join("; ")));
    }
    println!("converged");
    Ok(())
}

/// The TCP port the volume is exported on, from the command line.
fn export_port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| format!("bad export port {s}"))
}

async fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, addr, port, nqn, export, host] if cmd == "attach" => {
            let key = VolumeKey::new("t", "v");
            let port = port.parse().map_err(|_| format!("bad port {port}"))?;
            let d = remote_volume(key.clone(), addr, port, nqn.parse()?, host);
            converge(&kernel_backend(export_port(export)?), &[d]).await?;
            println!("subsystem {}", key.subsystem_nqn());
            Ok(())
        }
        [cmd, export] if cmd == "delete" => {
            converge(&kernel_backend(export_port(export)?), &[]).await
        }
        _ => Err(
            "usage: nvmet-probe attach ADDR PORT NQN EXPORT_PORT HOST_NQN | delete EXPORT_PORT"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    dpu_tests::probe::main("nvmet-probe", |args| async move { run(&args).await })
}
