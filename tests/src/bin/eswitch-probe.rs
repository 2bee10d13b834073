//! `eswitch-probe`: the eswitch discovery of `net_offload::functions`,
//! run inside the VM rig (built static with musl and copied into the guest).
//!
//! - `eswitch-probe discover` prints `Eswitch::discover()` (one devlink
//!   port dump, grouped into uplinks, PFs and VF/SF representors) as JSON;
//! - `eswitch-probe set-mode BUS/DEV legacy|switchdev` sets the eswitch
//!   mode with `DevlinkSocket::set_eswitch_mode`, reads it back with
//!   `DevlinkSocket::eswitch_mode` and prints `mode MODE`;
//! - `eswitch-probe apply ID PF VF MAC RATE_MBPS RDMA(on|off)` plans and
//!   runs one net function on the `switchdev` backend (`plan::run`) and
//!   prints each executed action and the result (`ready REPRESENTOR`), or
//!   the error chain (exit 1); `sfN` for VF carves the function as the
//!   sub-function with sfnum N;
//! - `eswitch-probe remove ID PF VF|sfN` runs the backend's removal plan.
//!
//! Exits 1 naming what failed.

use std::process::ExitCode;

use net_offload::functions::devlink::{DevlinkDev, DevlinkSocket, EswitchMode};
use net_offload::functions::eswitch::Eswitch;
use net_offload::functions::switchdev::SwitchdevBackend;
use net_offload::functions::{Applied, FunctionBackend, FunctionDesired, FunctionType, Slot, plan};

/// Runs a plan on the switchdev backend, printing what ran.
fn run_plan(
    plan_of: impl FnOnce(&SwitchdevBackend) -> Vec<plan::FunctionAction>,
) -> Result<(), String> {
    let backend = SwitchdevBackend::default();
    let actions = plan_of(&backend);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ran = rt.block_on(plan::run(&backend, &actions));
    match ran {
        Ok(ran) => {
            for a in &ran.executed {
                println!("ran {a}");
            }
            match ran.applied {
                Some(Applied::Ready { representor, .. }) => println!("ready {representor}"),
                Some(other) => println!("result {other:?}"),
                None => println!("done"),
            }
            Ok(())
        }
        Err(e) => Err(format!("apply: {}", error_chain(&e))),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd] if cmd == "discover" => {
            let e = Eswitch::discover().map_err(|e| format!("discover: {}", error_chain(&e)))?;
            let json = serde_json::to_string_pretty(&e).map_err(|e| e.to_string())?;
            println!("{json}");
            Ok(())
        }
        [cmd, dev, mode] if cmd == "set-mode" => {
            let dev: DevlinkDev = dev.parse().map_err(|e| format!("device: {e}"))?;
            let mode = match mode.as_str() {
                "legacy" => EswitchMode::Legacy,
                "switchdev" => EswitchMode::Switchdev,
                other => return Err(format!("mode {other:?}: expected legacy or switchdev")),
            };
            let mut sock =
                DevlinkSocket::connect().map_err(|e| format!("connect: {}", error_chain(&e)))?;
            sock.set_eswitch_mode(&dev, mode)
                .map_err(|e| format!("set mode: {}", error_chain(&e)))?;
            let now = sock
                .eswitch_mode(&dev)
                .map_err(|e| format!("read mode: {}", error_chain(&e)))?;
            println!(
                "mode {}",
                match now {
                    EswitchMode::Legacy => "legacy",
                    EswitchMode::Switchdev => "switchdev",
                }
            );
            Ok(())
        }
        [cmd, id, pf, vf, mac, rate, rdma] if cmd == "apply" => {
            let desired = FunctionDesired {
                id: id.clone(),
                type_: FunctionType::Net,
                pf: pf.clone(),
                slot: slot(vf)?,
                mac: Some(mac.parse().map_err(|e| format!("mac: {e}"))?),
                vlan: None,
                max_tx_rate_mbps: Some(rate.parse().map_err(|e| format!("rate: {e}"))?)
                    .filter(|r| *r > 0),
                trust: false,
                spoof_check: true,
                rdma: rdma == "on",
                tenant: None,
            };
            run_plan(|b| b.plan_apply(&desired))
        }
        [cmd, id, pf, vf] if cmd == "remove" => {
            let slot = slot(vf)?;
            run_plan(|b| b.plan_remove(id, Some((pf.as_str(), slot))))
        }
        _ => Err("usage: eswitch-probe discover | set-mode BUS/DEV legacy|switchdev | apply ID PF VF|sfN MAC RATE on|off | remove ID PF VF|sfN".into()),
    }
}

/// `N` is VF N, `sfN` the sub-function with sfnum N.
fn slot(s: &str) -> Result<Slot, String> {
    match s.strip_prefix("sf") {
        Some(n) => n.parse().map(Slot::Sf).map_err(|e| format!("sfnum: {e}")),
        None => s.parse().map(Slot::Vf).map_err(|e| format!("vf: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eswitch-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
