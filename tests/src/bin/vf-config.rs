//! `vf-config`: the functions backend's SR-IOV path, run inside the VM rig
//! (built static with musl and copied into the guest).
//!
//! `vf-config PF VF MAC VLAN MAX_TX_RATE_MBPS TRUST SPOOFCHK` configures one
//! VF with `net_offload::functions::sriov::set_vf` (one rtnetlink request
//! on the PF, as the agent sends it), then reads the PF's VFs back with
//! `read_vfs` and prints one line per VF. TRUST and SPOOFCHK are `on|off`.
//! Exits 1 naming what failed.

use std::process::ExitCode;

use net_offload::functions::Mac;
use net_offload::functions::sriov::{self, VfConfig};

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
}

fn parse(args: &[String]) -> Result<(String, VfConfig), String> {
    let [pf, vf, mac, vlan, rate, trust, spoofchk] = args else {
        return Err(
            "usage: vf-config PF VF MAC VLAN MAX_TX_RATE_MBPS on|off(trust) on|off(spoofchk)"
                .into(),
        );
    };
    let num = |what: &str, s: &str| s.parse::<u32>().map_err(|e| format!("{what} {s:?}: {e}"));
    Ok((
        pf.clone(),
        VfConfig {
            vf: num("VF", vf)?,
            mac: Some(mac.parse::<Mac>().map_err(|e| e.to_string())?),
            vlan: u16::try_from(num("VLAN", vlan)?).map_err(|e| e.to_string())?,
            max_tx_rate_mbps: num("rate", rate)?,
            trust: on_off(trust)?,
            spoof_check: on_off(spoofchk)?,
        },
    ))
}

async fn run(args: &[String]) -> Result<(), String> {
    let (pf, cfg) = parse(args)?;
    sriov::set_vf(&pf, &cfg).await.map_err(|e| {
        format!(
            "set {pf} vf {}: {e}: {:?}",
            cfg.vf,
            std::error::Error::source(&e)
        )
    })?;
    println!("configured {pf} vf {}", cfg.vf);
    for vf in sriov::read_vfs(&pf)
        .await
        .map_err(|e| format!("read {pf} VFs: {e}"))?
    {
        println!(
            "read vf {} mac {} vlan {} max_tx_rate {} trust {} spoofchk {}",
            vf.vf,
            vf.mac,
            vf.vlan,
            vf.max_tx_rate_mbps,
            if vf.trust { "on" } else { "off" },
            if vf.spoof_check { "on" } else { "off" }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    dpu_tests::probe::main("vf-config", |args| async move { run(&args).await })
}
