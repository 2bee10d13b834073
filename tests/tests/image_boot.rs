//! The arm64 DPU image booted under `qemu-system-aarch64` (TCG) and managed
//! over the API like a fleet controller would: the image directory comes
//! from `DPU_IMAGE_DIR` (built by `images/build.sh`; CI's image stage sets
//! it), the DPU's identity from a provisioning file with certificates this
//! test's fleet CA issued.
//!
//! With mutual TLS as the fleet controller: wait for `/readyz`, apply a
//! tenant, a network, two `veth` functions and two ports, read back `Ready`
//! and the flow counts the agent reports; then cut the power and boot again
//! from the same disk (not a snapshot): the objects are still there and
//! converge again to the same flow counts. Prints boot-to-ready times (a
//! measurement, not an assertion beyond the 180 s wait).
//!
//! The second boot also proves systemd's watchdog on the agent
//! (`dpu-agent.service`: `Type=notify`, `WatchdogSec=30s`, `Restart=always`):
//! a test hook hangs the agent with `SIGSTOP` once it has been up a while;
//! systemd, no longer pinged, kills and restarts it, and `/readyz` comes
//! back with every object converged again. The hook is a script on a third
//! read-only disk (serial `dpu-test-hook`) run by the image's
//! `dpu-test-hook.service`, which is conditioned on `dpu.test_hook` on the
//! kernel command line (only this test's QEMU passes it; a shipped image's
//! boot skips the unit). The evidence comes from the guest's systemd: the
//! agent's main PID before and after, `NRestarts`, and systemd's own
//! "Watchdog timeout" journal line, all printed to the console by the hook.
//!
//! What runs in the guest is the image as shipped: Debian's arm64 kernel,
//! systemd, Open vSwitch 3.1 (userspace datapath) under the image's units,
//! the static aarch64 agent. The witness is the agent's API from outside the
//! VM, and the console; the guest has no other way in.

use std::time::Duration;

use dpu_api::client::Client;
use dpu_api::{Kind, Phase};
use dpu_tests::agent::free_port;
use dpu_tests::fixtures::put_net_function_and_port;
use dpu_tests::image::{
    FleetPki, ImageBoot, ImageVm, ProvisionApply, copy_disk, image_dir, provision_apply,
    test_hook_disk,
};
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(180);
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
const TENANT: &str = "acme";
/// Hook to watchdog restart: 40 s up + 30 s WatchdogSec + SIGABRT/SIGKILL,
/// restart and the agent's start, with TCG's slowness on top.
const WATCHDOG_WITHIN: Duration = Duration::from_secs(240);

/// The second boot's hook (run by `dpu-test-hook.service` in the guest):
/// once the agent has been active 40 s (past `/readyz` on an idle guest, and
/// longer than `WatchdogSec=30s`: with `NRestarts=0` then, its pings work),
/// stop it, wait until systemd runs a new one, and report what systemd says
/// about it.
const WATCHDOG_HOOK: &str = r#"
log() { echo "dpu-test-hook: $*"; }
unit=dpu-agent.service
until [ "$(systemctl is-active $unit)" = active ]; do sleep 1; done
sleep 40
pid=$(systemctl show -p MainPID --value $unit)
log "SIGSTOP $unit pid $pid after 40 s active, NRestarts=$(systemctl show -p NRestarts --value $unit) at $(cut -d' ' -f1 /proc/uptime)s"
kill -STOP "$pid"
while :; do
    new=$(systemctl show -p MainPID --value $unit)
    if [ "$new" != "$pid" ] && [ "$new" != 0 ] && [ "$(systemctl is-active $unit)" = active ]; then break; fi
    sleep 1
done
log "restarted: pid $pid -> $new, NRestarts=$(systemctl show -p NRestarts --value $unit) at $(cut -d' ' -f1 /proc/uptime)s"
journalctl -b -u $unit -o cat --no-pager | grep -i 'watchdog timeout' | sed 's/^/dpu-test-hook: journal: /'
log done
"#;

fn is_ready(o: &dpu_api::Object) -> bool {
    o.status.phase == Phase::Ready && o.status.observed_generation == o.generation
}

async fn put(c: &Client, kind: Kind, id: &str, spec: Value) {
    c.put(kind, id, Some(TENANT), spec, None)
        .await
        .unwrap_or_else(|e| panic!("PUT {} {id}: {e}", kind.path()));
}

async fn wait_ready_object(vm: &ImageVm, c: &Client, kind: Kind, id: &str) -> dpu_api::Object {
    let deadline = tokio::time::Instant::now() + CONVERGE_WITHIN;
    loop {
        let last = tokio::time::timeout(Duration::from_secs(10), c.get(kind, id)).await;
        if let Ok(Ok(o)) = &last
            && is_ready(o)
        {
            return o.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} {id} not Ready within {CONVERGE_WITHIN:?}; last: {last:?}\nconsole:\n{}",
            kind.name(),
            vm.console_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn flows(o: &dpu_api::Object) -> u64 {
    o.status.fields["flows"]
        .as_u64()
        .unwrap_or_else(|| panic!("{} {} has no status.flows: {o:?}", o.kind.name(), o.id))
}

/// Ready status and flow counts of the network and both ports.
async fn converged(vm: &ImageVm, c: &Client) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for id in ["web", "db"] {
        let f = wait_ready_object(vm, c, Kind::Function, id).await;
        assert!(
            f.status.facts.representor.is_some(),
            "function {id} has no representor: {f:?}"
        );
    }
    for id in ["web", "db"] {
        let p = wait_ready_object(vm, c, Kind::Port, id).await;
        assert!(p.status.fields["ofport"].as_u64().is_some(), "{p:?}");
        assert!(flows(&p) > 5, "port {id}: {p:?}");
        out.push((format!("port/{id}"), flows(&p)));
    }
    // A local network's flows are its ports' (status.flows counts its own).
    let n = wait_ready_object(vm, c, Kind::Network, "net").await;
    out.push(("network/net".into(), flows(&n)));
    out
}

async fn ids(c: &Client, kind: Kind) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = c
        .list(kind, None)
        .await
        .unwrap_or_else(|e| panic!("GET {}: {e}", kind.path()))
        .items
        .into_iter()
        .map(|o| (o.id, o.spec))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[ignore = "image test: images/ci.sh runs it (DPU_IMAGE_DIR, qemu-system-aarch64)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_boots_is_managed_over_the_api_and_survives_a_power_cycle() {
    let dir = image_dir();
    for f in ["Image", "initrd.img", "disk.img"] {
        assert!(
            dir.join(f).is_file(),
            "{} has no {f}: build it with images/build.sh --out {}",
            dir.display(),
            dir.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("dpu-image-boot")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let pki = FleetPki::generate("fleet.test", &["localhost", "127.0.0.1"]);
    let provisioning = pki.provisioning_file("dpu-test-1", work.path());
    // The BlueField path: bf.cfg's bfb_modify_os(), which NVIDIA's installer
    // calls with the new root on /mnt, writes exactly this file there (run
    // in a private mount namespace with a tmpfs on /mnt).
    let bf = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /mnt && . \"$0\" && bfb_modify_os && cmp /mnt/etc/dpu-agent/provision.tar \"$1\"")
        .arg(work.path().join("bf.cfg"))
        .arg(&provisioning)
        .status()
        .expect("run unshare");
    assert!(
        bf.success(),
        "bf.cfg's bfb_modify_os did not write the provisioning file: {bf}"
    );
    let disk = work.path().join("disk.img");
    copy_disk(&dir.join("disk.img"), &disk);
    let hook = test_hook_disk(work.path(), WATCHDOG_HOOK);
    let boot = |n: u32| ImageBoot {
        image_dir: dir.clone(),
        disk: disk.clone(),
        provisioning: Some(provisioning.clone()),
        test_hook: (n == 2).then(|| hook.clone()),
        port: free_port(),
        console: work.path().join(format!("console-{n}.log")),
    };

    // First boot: provisioning applied, OVS database created, agent up.
    let mut vm = ImageVm::boot(&boot(1));
    let c = pki.controller_client(&vm.url());
    let (first_ready, body) = vm.wait_ready(&c, READY_WITHIN).await;
    let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["backends"]["ovs"], json!(true), "{body}");
    assert_eq!(ready["backends"]["functions/veth"], json!(true), "{body}");
    let console = vm.console();
    assert!(
        console.contains("provision: applied /dev/vd"),
        "the provisioning file was not applied:\n{}",
        vm.console_tail(40)
    );
    assert!(console.contains("created /etc/openvswitch/conf.db"));
    // A caller without a certificate from this fleet's CA is refused.
    let stranger = FleetPki::generate("fleet.test", &[]);
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        stranger
            .controller_client(&vm.url())
            .list(Kind::Tenant, None),
    )
    .await
    .expect("answer to a stranger");
    assert!(refused.is_err(), "a foreign CA's client was served");

    put(&c, Kind::Tenant, TENANT, json!({})).await;
    put(
        &c,
        Kind::Network,
        "net",
        json!({"vni": 100, "cidr": "10.10.0.0/24", "encap": "local"}),
    )
    .await;
    for (id, mac, ip) in [
        ("web", "02:00:0a:0a:00:01", "10.10.0.1"),
        ("db", "02:00:0a:0a:00:02", "10.10.0.2"),
    ] {
        let ingress = json!([{"protocol": "icmp"}, {"protocol": "tcp", "ports": "80"}]);
        put_net_function_and_port(&c, TENANT, "net", id, mac, ip, ingress).await;
    }
    let before = converged(&vm, &c).await;
    let mut objects = Vec::new();
    for kind in [Kind::Tenant, Kind::Network, Kind::Function, Kind::Port] {
        objects.push(ids(&c, kind).await);
    }

    // Power cycle on the same disk.
    vm.power_off();
    drop(vm);
    let mut vm = ImageVm::boot(&boot(2));
    let c = pki.controller_client(&vm.url());
    let (second_ready, _) = vm.wait_ready(&c, READY_WITHIN).await;
    // Whether the hook had already stopped the agent (then the time above
    // includes a watchdog restart).
    let hung_before_ready = vm.console().contains("dpu-test-hook: SIGSTOP");
    assert!(
        vm.console().contains("already applied"),
        "second boot re-applied the provisioning file:\n{}",
        vm.console_tail(40)
    );

    // The watchdog: the hook hangs the agent; systemd restarts it.
    let stopped = vm
        .wait_console_line(
            "dpu-test-hook: SIGSTOP dpu-agent.service pid ",
            WATCHDOG_WITHIN,
        )
        .await;
    let restarted = vm
        .wait_console_line("dpu-test-hook: restarted: pid ", WATCHDOG_WITHIN)
        .await;
    vm.wait_console_line("dpu-test-hook: done", Duration::from_secs(30))
        .await;
    let console = vm.console();
    let watchdog_line = console
        .lines()
        .find(|l| l.contains("dpu-test-hook: journal: ") && l.contains("Watchdog timeout"))
        .unwrap_or_else(|| {
            panic!(
                "systemd logged no watchdog timeout for dpu-agent.service:\n{}",
                vm.console_tail(60)
            )
        })
        .trim_end()
        .to_string();
    // The value after `key` in the hook's part of a console line (journald
    // may prefix the console copy with its own identifier and pid).
    let after_pid = |line: &str, key: &str| -> String {
        let line = &line[line.find("dpu-test-hook:").unwrap_or(0)..];
        let rest = &line[line.find(key).map_or(line.len(), |i| i + key.len())..];
        rest.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let old_pid = after_pid(&stopped, "pid ");
    let (from, to) = (
        after_pid(&restarted, "pid "),
        after_pid(&restarted, "-> ")
            .trim_end_matches(',')
            .to_string(),
    );
    assert_eq!(from, old_pid, "{restarted}");
    assert!(
        !to.is_empty() && to != old_pid,
        "systemd runs the same agent pid: {restarted}"
    );
    let restarts = |line: &str| -> u32 {
        after_pid(line, "NRestarts=")
            .parse()
            .unwrap_or_else(|_| panic!("no NRestarts in {line:?}"))
    };
    // 40 s active without a restart: the agent's pings kept systemd's 30 s
    // watchdog quiet; then exactly the one restart the hang caused.
    assert_eq!(restarts(&stopped), 0, "{stopped}");
    assert_eq!(restarts(&restarted), 1, "{restarted}");
    let (back_ready, _) = vm.wait_ready(&c, READY_WITHIN).await;
    let mut after_objects = Vec::new();
    for kind in [Kind::Tenant, Kind::Network, Kind::Function, Kind::Port] {
        after_objects.push(ids(&c, kind).await);
    }
    assert_eq!(after_objects, objects, "objects changed across the reboot");
    let after = converged(&vm, &c).await;
    assert_eq!(after, before, "flow counts differ after the reboot");

    println!("\nimage boot (qemu-system-aarch64 -cpu cortex-a72, TCG, 2 vCPUs)");
    println!("{:<44} {:>10}", "measurement", "seconds");
    println!(
        "{:<44} {:>10.1}",
        "first boot: QEMU start -> /readyz 200",
        first_ready.as_secs_f64()
    );
    println!(
        "{:<44} {:>10.1}{}",
        "after power cycle: QEMU start -> /readyz 200",
        second_ready.as_secs_f64(),
        if hung_before_ready {
            "  (includes a watchdog restart)"
        } else {
            ""
        }
    );
    println!(
        "{:<44} {:>10.1}",
        "watchdog: QEMU start -> /readyz 200 again",
        back_ready.as_secs_f64()
    );
    println!("watchdog evidence (guest console):\n  {stopped}\n  {watchdog_line}\n  {restarted}");
    for (what, n) in &after {
        println!("flows {what:<38} {n:>10}");
    }
}

/// The provisioning file's `profile` (images/README.md "Provisioning"), with
/// the image's own `provision apply` script run on the host in a private
/// mount namespace over an overlay of `/etc` (`provision_apply`): `bluefield`
/// installs the shipped `config.bluefield.toml` as the agent's config; an
/// explicit `config.toml` in the bundle wins over the profile; an unknown
/// profile is refused by `provision.sh` and, in a hand-made tar, by the
/// image, which then changes nothing (no config, certificate, key, host name
/// or applied-marker written). The BlueField boot itself needs its hardware
/// (the boot test keeps the generic profile).
#[ignore = "needs root (unshare -m, overlay on /etc): images/ci.sh runs it"]
#[test]
fn provisioning_profile_selects_the_agent_config() {
    let work = tempfile::Builder::new()
        .prefix("dpu-provision-profile")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    let pki = FleetPki::generate("fleet.test", &["127.0.0.1"]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bluefield = std::fs::read_to_string(root.join("dpu-agent/config.bluefield.toml"))
        .expect("dpu-agent/config.bluefield.toml");
    let generic = std::fs::read_to_string(root.join("images/rootfs/etc/dpu-agent/config.toml"))
        .expect("generic config");
    assert_ne!(bluefield, generic);
    let case = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).expect("case dir");
        d
    };
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let config_toml = |run: &ProvisionApply| read(run.etc.join("dpu-agent/config.toml"));
    let said = |run: &ProvisionApply, text: &str| {
        assert!(run.output.contains(text), "{}", run.output);
    };

    // --profile bluefield: the shipped BlueField config becomes config.toml.
    let d = case("bluefield");
    let tar = pki
        .provisioning_file_with("dpu-bf-1", &d, Some("bluefield"), None)
        .expect("provision.sh --profile bluefield");
    let run = provision_apply(&tar, &d);
    assert!(run.success, "{}", run.output);
    said(&run, "installed the bluefield profile's config.toml");
    assert_eq!(config_toml(&run), bluefield);
    assert_eq!(read(run.etc.join("dpu-agent/profile")), "bluefield\n");
    assert!(run.etc.join("dpu-agent/pki/server.pem").is_file());

    // An explicit config.toml wins over the profile.
    let d = case("explicit");
    let own = d.join("site.toml");
    std::fs::write(&own, "# a site's own config\nlisten = \"0.0.0.0:9443\"\n").expect("site.toml");
    let tar = pki
        .provisioning_file_with("dpu-bf-2", &d, Some("bluefield"), Some(&own))
        .expect("provision.sh --profile bluefield --config");
    let run = provision_apply(&tar, &d);
    assert!(run.success, "{}", run.output);
    assert_eq!(config_toml(&run), read(own.clone()));

    // An unknown profile: provision.sh refuses it ...
    let d = case("unknown");
    let refused = pki.provisioning_file_with("dpu-x-1", &d, Some("bluefeld"), None);
    let err = refused.expect_err("provision.sh accepted --profile bluefeld");
    assert!(err.contains("--profile \"bluefeld\""), "{err}");
    // ... and a hand-made file with one is refused by the image, nothing changed.
    let tar = pki
        .provisioning_file_with("dpu-x-1", &d, Some("generic"), None)
        .expect("provision.sh");
    let unpacked = d.join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("unpack dir");
    let ok = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar -x");
    assert!(ok.success());
    std::fs::write(unpacked.join("dpu-provision/profile"), "bluefeld\n").expect("profile");
    let bad = d.join("bad.tar");
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&bad)
        .arg("-C")
        .arg(&unpacked)
        .arg("dpu-provision")
        .status()
        .expect("tar -c");
    assert!(ok.success());
    let run = provision_apply(&bad, &d);
    assert!(
        !run.success,
        "an unknown profile was applied: {}",
        run.output
    );
    said(&run, "profile \"bluefeld\" is not generic or bluefield");
    assert_eq!(config_toml(&run), generic);
    for untouched in [
        "dpu-agent/pki",
        "dpu-agent/provision.applied",
        "dpu-agent/provisioned.env",
        "dpu-agent/profile",
        "hostname",
    ] {
        assert!(
            !run.etc.join(untouched).exists(),
            "{untouched} written for a refused file: {}",
            run.output
        );
    }
}
