//! The kernel storage backend against Debian's kernel in the VM rig: a
//! "storage server" nvmet-tcp target on loopback with a file-backed namespace
//! (set up with shell), then `nvmet-probe` (storage_offload's `NvmetBackend`,
//! real configfs) attaches it as a source over NVMe/TCP and exports it as the
//! agent's subsystem that only one host NQN may connect to. The host side
//! connects with nvme-cli, writes a pattern and reads it back (sha256 of the
//! pattern, of the device read back, and of the server's backing file);
//! another host NQN is refused; delete leaves configfs as found. Gated by
//! `DPU_VM_TESTS=1`; see tests/README.md.

use dpu_tests::vm::{self, Vm};

const SCRIPT: &str = r###"set -e
S=/sys/kernel/config/nvmet
SRV=nqn.2014-08.org.example:server
# The function host NQN the agent assigns by default (function f of tenant t).
HOST=nqn.2026-11.dev.dpu-agent:t:fn:f
OURS=nqn.2026-11.dev.dpu-agent:t:v
ip link set lo up
mkdir -p /etc/nvme
echo "## server"
dd if=/dev/zero of=/tmp/server.img bs=1M count=0 seek=64 2>/dev/null
mkdir $S/subsystems/$SRV
echo 1 > $S/subsystems/$SRV/attr_allow_any_host
mkdir $S/subsystems/$SRV/namespaces/1
# The guest's /tmp is in RAM, which has no O_DIRECT: buffered file I/O.
echo 1 > $S/subsystems/$SRV/namespaces/1/buffered_io
echo /tmp/server.img > $S/subsystems/$SRV/namespaces/1/device_path
echo 1 > $S/subsystems/$SRV/namespaces/1/enable
mkdir $S/ports/1
echo tcp > $S/ports/1/addr_trtype
echo ipv4 > $S/ports/1/addr_adrfam
echo 127.0.0.1 > $S/ports/1/addr_traddr
echo 4420 > $S/ports/1/addr_trsvcid
ln -s $S/subsystems/$SRV $S/ports/1/subsystems/$SRV
find $S | sort > /tmp/before
echo "## attach"
nvmet-probe attach 127.0.0.1 4420 $SRV 4421 $HOST
echo "namespace device_path $(cat $S/subsystems/$OURS/namespaces/1/device_path)"
echo "allow_any_host $(cat $S/subsystems/$OURS/attr_allow_any_host)"
echo "## intruder"
if nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $OURS --hostnqn nqn.2014-08.org.example:intruder 2>&1; then
    echo "intruder connected"
else
    echo "intruder refused"
fi
echo "## host"
nvme connect -t tcp -a 127.0.0.1 -s 4421 -n $OURS --hostnqn $HOST
dev=
for i in 1 2 3 4 5 6 7 8 9 10; do
    for d in /sys/class/nvme-subsystem/* /sys/class/nvme/*; do
        [ -e "$d/subsysnqn" ] || continue
        [ "$(cat $d/subsysnqn)" = "$OURS" ] || continue
        b=$(ls $d | grep -E '^nvme[0-9]+(c[0-9]+)?n[0-9]+$' | grep -v c | head -n 1)
        [ -n "$b" ] && dev=$b
    done
    [ -n "$dev" ] && [ -b /dev/$dev ] && break
    sleep 0.5
done
echo "host device /dev/$dev"
dd if=/dev/urandom of=/tmp/pattern bs=1M count=8 2>/dev/null
dd if=/tmp/pattern of=/dev/$dev bs=1M conv=fsync 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
echo "pattern $(sha256sum < /tmp/pattern | cut -d' ' -f1)"
echo "readback $(dd if=/dev/$dev bs=1M count=8 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "server $(head -c 8388608 /tmp/server.img | sha256sum | cut -d' ' -f1)"
nvme disconnect -n $OURS
echo "## delete"
nvmet-probe delete 4421
find $S | sort > /tmp/after
if diff /tmp/before /tmp/after; then echo "configfs as found"; fi
left=0
for d in /sys/class/nvme/*; do
    [ -e "$d/subsysnqn" ] && [ "$(cat $d/subsysnqn)" = "$SRV" ] && left=1
done
echo "initiator connections left $left"
"###;

fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("## {name}\n"))
        .map(|i| i + name.len() + 4)
        .unwrap_or(out.len());
    let rest = &out[start..];
    &rest[..rest.find("## ").unwrap_or(rest.len())]
}

fn value<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(' '))
}

#[test]
fn kernel_backend_exports_a_remote_namespace_to_one_host() -> anyhow::Result<()> {
    if !vm::enabled() {
        return Ok(());
    }
    let out = Vm::builder()
        .modules(&["nvmet", "nvmet_tcp", "nvme_tcp", "nvme_fabrics"])
        .packages(&["nvme-cli"])
        .binary(vm::musl_binary("nvmet-probe")?)
        .script(SCRIPT)
        .run()?;
    println!("{out}");
    assert!(out.success(), "{out}");

    let attach = section(&out.stdout, "attach");
    assert!(
        attach.contains("[attach-source] echo transport=tcp,traddr=127.0.0.1,trsvcid=4420"),
        "{out}"
    );
    assert!(attach.contains("converged"), "{out}");
    assert!(
        value(attach, "namespace device_path").is_some_and(|p| p.starts_with("/dev/nvme")),
        "{out}"
    );
    assert_eq!(value(attach, "allow_any_host"), Some("0"), "{out}");

    assert!(
        section(&out.stdout, "intruder").contains("intruder refused"),
        "{out}"
    );

    let host = section(&out.stdout, "host");
    let pattern = value(host, "pattern").expect("pattern checksum");
    assert_eq!(pattern.len(), 64, "{out}");
    assert_eq!(value(host, "readback"), Some(pattern), "{out}");
    assert_eq!(value(host, "server"), Some(pattern), "{out}");

    let delete = section(&out.stdout, "delete");
    assert!(delete.contains("converged"), "{out}");
    assert!(delete.contains("configfs as found"), "{out}");
    assert!(delete.contains("initiator connections left 0"), "{out}");
    Ok(())
}
