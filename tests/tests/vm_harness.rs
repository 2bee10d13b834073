//! Tests of the VM rig itself: host forwards, returned files, exit status,
//! stderr and the script timeout. Gated by `DPU_VM_TESTS=1`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dpu_tests::vm::{self, LinkSide, SocketLink, Vm};

/// A guest TCP listener answers on the forwarded 127.0.0.1 port; the script's
/// files, stderr and non-zero exit come back.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn forward_files_and_exit_status() -> anyhow::Result<()> {
    vm::require();
    let running = Vm::builder()
        .virtio_net()
        .forward(7000)
        .script(
            r#"echo "guest netdev $DPU_VM_NET_IF"
ip -4 addr show dev "$DPU_VM_NET_IF" | grep -o 'inet [0-9./]*'
echo "hello from $(uname -r)" | nc -l -p 7000 > /tmp/got
echo "host sent: $(cat /tmp/got)"
mkdir -p "$DPU_VM_OUT/sub"
echo report > "$DPU_VM_OUT/sub/report.txt"
echo 'something went wrong' >&2
exit 3
"#,
        )
        .start()?;
    let port = running.host_port(7000).expect("forwarded port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // QEMU accepts and drops connections until the guest listens: retry.
    let deadline = Instant::now() + Duration::from_secs(120);
    let greeting = loop {
        assert!(Instant::now() < deadline, "guest never answered on {addr}");
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() && !line.is_empty() {
                stream.write_all(b"ping\n")?;
                break line;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let out = running.wait()?;
    println!("{out}");
    assert!(greeting.starts_with("hello from 6.1.0-"), "{greeting:?}");
    assert_eq!(out.status, 3, "{out}");
    assert!(!out.success() && !out.timed_out, "{out}");
    assert!(out.stdout.contains("inet 10.0.2.15/24"), "{out}");
    assert!(out.stdout.contains("host sent: ping"), "{out}");
    assert_eq!(out.stderr, "something went wrong\n", "{out}");
    assert_eq!(out.file_text("sub/report.txt").as_deref(), Some("report\n"));
    Ok(())
}

/// A script that outlives its timeout is killed and reported as timed out.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn script_timeout_is_reported() -> anyhow::Result<()> {
    vm::require();
    let out = Vm::builder()
        .timeout(Duration::from_secs(3))
        .script("echo started\nsleep 600\necho never\n")
        .run()?;
    assert!(out.timed_out && !out.success(), "{out}");
    assert_eq!(out.stdout, "started\n", "{out}");
    Ok(())
}

/// A package apt cannot find stops the run before QEMU starts, naming it.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn unknown_package_is_a_clear_error() {
    vm::require();
    let err = Vm::builder()
        .packages(&["dpu-no-such-package"])
        .script("true")
        .run()
        .expect_err("an unknown package must fail the run");
    let message = err.to_string();
    assert!(
        message.contains("dpu-no-such-package") && message.contains("setup.sh"),
        "{message}"
    );
}

/// Two guests run at once, joined by a QEMU socket link (`listen` in one
/// QEMU, `connect` in the other, a virtio-net NIC on each end, named by the
/// rig): each pings the other's address on the link, and each sees the
/// other's MAC (as the rig derived it) in its neighbour table.
#[ignore = "VM test: tests/vm/run.sh runs it (DPU_VM_TESTS=1, QEMU)"]
#[test]
fn two_guests_ping_over_a_socket_link() -> anyhow::Result<()> {
    vm::require();
    let link = SocketLink::new()?;
    let script = |me: &str, peer: &str| {
        format!(
            r#"/usr/bin/ip addr add {me}/24 dev lnk
/usr/bin/ip -br link show lnk
for i in $(seq 1 90); do ping -c 1 -W 1 {peer} >/dev/null 2>&1 && break; sleep 1; done
ping -c 3 -W 2 {peer} && echo PING_OK
/usr/bin/ip neigh show dev lnk
# Stay up until the peer has pinged us too.
sleep 5
"#
        )
    };
    let a = Vm::builder()
        .memory_mib(256)
        .socket_nic(link, LinkSide::Listen, "lnk")
        .timeout(Duration::from_secs(150))
        .script(&script("10.77.0.1", "10.77.0.2"))
        .start()?;
    let b = Vm::builder()
        .memory_mib(256)
        .socket_nic(link, LinkSide::Connect, "lnk")
        .timeout(Duration::from_secs(150))
        .script(&script("10.77.0.2", "10.77.0.1"))
        .start()?;
    let (a, b) = (a.wait()?, b.wait()?);
    println!("a: {a}\nb: {b}");
    for (out, peer_mac) in [
        (&a, link.mac(LinkSide::Connect)),
        (&b, link.mac(LinkSide::Listen)),
    ] {
        assert!(out.success(), "{out}");
        assert!(out.stdout.contains("PING_OK"), "{out}");
        assert!(out.stdout.contains(&peer_mac), "{peer_mac} not seen: {out}");
    }
    Ok(())
}
