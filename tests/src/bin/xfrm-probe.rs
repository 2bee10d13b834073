//! `xfrm-probe`: drives `dpu_crypto`'s XFRM planning and netlink code the
//! way the ipsec-tunnels controller does, inside the VM rig (built static
//! with musl and copied into the guest, whose kernel has ESP).
//!
//! ```text
//! xfrm-probe install NETNS LOCAL REMOTE LOCAL_NET REMOTE_NET SPI_IN SPI_OUT KEY_IN KEY_OUT
//! xfrm-probe sas NETNS
//! ```
//! `install` plans one tunnel-mode AES-GCM-128 tunnel (reqid 0x0d500001)
//! against what the namespace has, applies it, and prints each action (keys
//! never printed) then `applied N failed M`; it exits 1 if anything failed.
//! `sas` prints one line per SA: `sa spi=0x... dst=... packets=N bytes=N
//! offload=...`. Keys on the command line are test vectors, never secrets.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dpu_crypto::apply::{IpsecBackend, XfrmBackend, apply, chain};
use dpu_crypto::keys::SaKey;
use dpu_crypto::model::{Cipher, Mode, OffloadRequest, SaSpec, Tunnel};
use dpu_crypto::plan::plan;

fn parse_spi(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    v.map_err(|_| format!("bad SPI {s}"))
}

fn install(args: &[String]) -> Result<bool, String> {
    let [
        netns,
        local,
        remote,
        lnet,
        rnet,
        spi_in,
        spi_out,
        key_in,
        key_out,
    ] = args
    else {
        return Err("install needs 9 arguments".into());
    };
    let key = |k: &str| SaKey::from_hex(k, Cipher::AesGcm128).map_err(|e| e.to_string());
    let tunnel = Tunnel {
        name: "vm/probe".into(),
        reqid: 0x0d50_0001,
        local: local.parse().map_err(|_| "bad LOCAL")?,
        remote: remote.parse().map_err(|_| "bad REMOTE")?,
        local_subnets: vec![lnet.parse().map_err(|_| "bad LOCAL_NET")?],
        remote_subnets: vec![rnet.parse().map_err(|_| "bad REMOTE_NET")?],
        mode: Mode::Tunnel,
        cipher: Cipher::AesGcm128,
        inbound: SaSpec {
            spi: parse_spi(spi_in)?,
            key: key(key_in)?,
        },
        outbound: SaSpec {
            spi: parse_spi(spi_out)?,
            key: key(key_out)?,
        },
        replay_window: 128,
        esn: false,
        offload: OffloadRequest::Auto,
        offload_dev: None,
    };
    let mut backend = XfrmBackend::open(Some(Path::new(netns))).map_err(|e| chain(&e))?;
    let observed = backend.observe().map_err(|e| chain(&e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let p = plan(
        &[tunnel],
        &BTreeSet::new(),
        &observed,
        now,
        Duration::from_secs(2),
    );
    for a in &p.actions {
        println!("action {a}");
    }
    let report = apply(&mut backend, &p.actions);
    for f in &report.failures {
        println!("failed {}: {}", f.action, f.error);
    }
    println!(
        "applied {} failed {}",
        report.applied,
        report.failures.len()
    );
    Ok(report.failures.is_empty())
}

fn sas(args: &[String]) -> Result<bool, String> {
    let [netns] = args else {
        return Err("sas needs NETNS".into());
    };
    let mut backend = XfrmBackend::open(Some(Path::new(netns))).map_err(|e| chain(&e))?;
    let observed = backend.observe().map_err(|e| chain(&e))?;
    for sa in &observed.sas {
        println!(
            "sa spi=0x{:08x} src={} dst={} reqid=0x{:08x} packets={} bytes={} integrity_failed={} offload={}",
            sa.spi,
            sa.saddr,
            sa.daddr,
            sa.reqid,
            sa.counters.packets,
            sa.counters.bytes,
            sa.stats.integrity_failed,
            if sa.offload.is_some() {
                "device"
            } else {
                "none"
            }
        );
    }
    println!("policies {}", observed.policies.len());
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("install") => install(&args[1..]),
        Some("sas") => sas(&args[1..]),
        _ => Err("usage: xfrm-probe install ... | xfrm-probe sas NETNS".into()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xfrm-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
