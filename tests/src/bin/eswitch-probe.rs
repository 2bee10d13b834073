//! `eswitch-probe`: the eswitch discovery of `net_offload::functions`,
//! run inside the VM rig (built static with musl and copied into the guest).
//!
//! - `eswitch-probe discover` prints `Eswitch::discover()` (one devlink
//!   port dump, grouped into uplinks, PFs and VF/SF representors) as JSON;
//! - `eswitch-probe set-mode BUS/DEV legacy|switchdev` sets the eswitch
//!   mode with `DevlinkSocket::set_eswitch_mode`, reads it back with
//!   `DevlinkSocket::eswitch_mode` and prints `mode MODE`.
//!
//! Exits 1 naming what failed.

use std::process::ExitCode;

use net_offload::functions::devlink::{DevlinkDev, DevlinkSocket, EswitchMode};
use net_offload::functions::eswitch::Eswitch;

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
        _ => Err("usage: eswitch-probe discover | set-mode BUS/DEV legacy|switchdev".into()),
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
