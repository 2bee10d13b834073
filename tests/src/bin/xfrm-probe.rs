//! `xfrm-probe`: drives `dpu_crypto`'s XFRM planning and netlink code the
//! way the ipsec-tunnels controller does, inside the VM rig (built static
//! with musl and copied into the guest, whose kernel has ESP).
//!
//! ```text
//! xfrm-probe install NETNS LOCAL REMOTE LOCAL_NET REMOTE_NET SPI_IN SPI_OUT KEY_IN KEY_OUT
//! xfrm-probe sas NETNS
//! xfrm-probe sniff IFNAME SECONDS
//! ```
//! `install` plans one tunnel-mode AES-GCM-128 tunnel (reqid 0x0d500001)
//! against what the namespace has, applies it, and prints each action (keys
//! never printed) then `applied N failed M`; it exits 1 if anything failed.
//! With `XFRM_PROBE_IF_ID=0x…` in the environment the tunnel is scoped as
//! a tenant's (`XFRMA_IF_ID` on every SA and policy), else unscoped. With
//! `XFRM_PROBE_OFFLOAD_DEV=IFINDEX` the SAs ask for offload to that device
//! (`XFRMA_OFFLOAD_DEV`, `offload: auto`: packet, then crypto, then none).
//! `sas` prints one line per SA: `sa spi=0x... dst=... packets=N bytes=N
//! offload=...`. `sniff` watches the IPv4 packets on a netdev of the
//! current namespace (an `ETH_P_ALL` `AF_PACKET` socket, both directions)
//! for SECONDS and prints `wire esp_in=N esp_out=N icmp_in=N icmp_out=N`:
//! the independent witness that what leaves over the veth is ESP and not
//! plaintext ICMP. (`icmp_in` also counts the inner packets of tunnel-mode
//! ESP, which the kernel re-injects on the device after decapsulation, as
//! tcpdump shows them too.) Keys on the command line are test vectors,
//! never secrets.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dpu_api::error_chain as chain;
use dpu_crypto::apply::{IpsecBackend, XfrmBackend, apply};
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
        offload_dev: match std::env::var("XFRM_PROBE_OFFLOAD_DEV") {
            Ok(v) => Some(
                v.parse()
                    .map_err(|_| format!("bad XFRM_PROBE_OFFLOAD_DEV {v}"))?,
            ),
            Err(_) => None,
        },
        if_id: match std::env::var("XFRM_PROBE_IF_ID") {
            Ok(v) => Some(parse_spi(&v).map_err(|_| format!("bad XFRM_PROBE_IF_ID {v}"))?),
            Err(_) => None,
        },
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
    for f in &report.offload_fallbacks {
        println!(
            "fallback spi=0x{:08x} offload_requested={} refused: {}",
            f.spi,
            f.requested,
            chain(&f.error)
        );
    }
    for f in &report.failures {
        println!("failed {}", chain(f));
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

fn sniff(args: &[String]) -> Result<bool, String> {
    let [ifname, secs] = args else {
        return Err("usage: xfrm-probe sniff IFNAME SECONDS".into());
    };
    let secs: u64 = secs.parse().map_err(|_| "SECONDS: not a number")?;
    let name = std::ffi::CString::new(ifname.as_str()).map_err(|_| "IFNAME")?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("no netdev {ifname}"));
    }
    // ETH_P_ALL: protocol-specific packet sockets do not see outgoing frames.
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is closed below on every path.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    let result = (|| {
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set are plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: pointers to live locals with their true sizes; `fd` is open.
        let ok = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) == 0
                && libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                ) == 0
        };
        if !ok {
            return Err(format!(
                "bind to {ifname}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // [in, out] per protocol.
        let (mut esp, mut icmp) = ([0u64; 2], [0u64; 2]);
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            // SAFETY: an all-zero sockaddr_ll is valid output space.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf`, `from` and `len` are writable for their sizes;
            // `fd` is open.
            let n = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            // IPv4 only (SOCK_DGRAM: the buffer starts at the IP header).
            if n < 20 || buf[0] >> 4 != 4 {
                continue;
            }
            let dir = usize::from(from.sll_pkttype == libc::PACKET_OUTGOING);
            match buf[9] {
                50 => esp[dir] += 1,
                1 => icmp[dir] += 1,
                _ => {}
            }
        }
        println!(
            "wire esp_in={} esp_out={} icmp_in={} icmp_out={}",
            esp[0], esp[1], icmp[0], icmp[1]
        );
        Ok(true)
    })();
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("install") => install(&args[1..]),
        Some("sas") => sas(&args[1..]),
        Some("sniff") => sniff(&args[1..]),
        _ => Err(
            "usage: xfrm-probe install ... | xfrm-probe sas NETNS | xfrm-probe sniff IFNAME SECONDS"
                .into(),
        ),
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
