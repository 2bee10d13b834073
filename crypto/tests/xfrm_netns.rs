//! XFRM against the real kernel, in a network namespace each test creates
//! (root only; fails otherwise). This machine's kernel has XFRM policies
//! but no ESP states, so SA adds are expected to fail here and are checked
//! in the VM rig instead (tests/tests/crypto_vm.rs). `ip` is the witness.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dpu_crypto::apply::{XfrmBackend, apply};
use dpu_crypto::keys::SaKey;
use dpu_crypto::model::{Cipher, Mode, OffloadRequest, SaSpec, Tunnel};
use dpu_crypto::plan::{Action, plan, plan_teardown};

const KEY_HEX: &str = "5ec2e75ec2e75ec2e75ec2e75ec2e7aa0badf00d";

struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Option<Netns> {
        // A missing environment fails the test; it never passes unrun.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root for network namespaces: run the tests as root (scripts/test.sh does)"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dpucr-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?;
        assert!(ok.success(), "ip netns add {name}");
        Some(Netns { name })
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
    fn ip(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args.split_whitespace())
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn tunnel(reqid: u32) -> Tunnel {
    Tunnel {
        name: "acme/t1".into(),
        reqid,
        local: Ipv4Addr::new(192, 0, 2, 1),
        remote: Ipv4Addr::new(192, 0, 2, 2),
        local_subnets: vec!["10.1.0.0/16".parse().unwrap()],
        remote_subnets: vec!["10.2.0.0/16".parse().unwrap()],
        mode: Mode::Tunnel,
        cipher: Cipher::AesGcm128,
        inbound: SaSpec {
            spi: 0x1001,
            key: SaKey::from_hex(KEY_HEX, Cipher::AesGcm128).unwrap(),
        },
        outbound: SaSpec {
            spi: 0x2001,
            key: SaKey::from_hex(KEY_HEX, Cipher::AesGcm128).unwrap(),
        },
        replay_window: 128,
        esn: false,
        offload: OffloadRequest::Auto,
        offload_dev: None,
        if_id: None,
    }
}

const GRACE: Duration = Duration::from_secs(30);

#[test]
fn policies_installed_listed_and_removed() {
    let Some(ns) = Netns::new() else { return };
    let mut be = XfrmBackend::open(Some(&ns.path())).unwrap();
    let t = tunnel(0x0d50_0001);
    let obs = dpu_crypto::apply::IpsecBackend::observe(&mut be).unwrap();
    assert!(obs.policies.is_empty());
    let p = plan(std::slice::from_ref(&t), &BTreeSet::new(), &obs, 0, GRACE);
    let report = apply(&mut be, &p.actions);
    // Policies went in; the SAs only where the kernel has ESP.
    let listed = ns.ip("xfrm policy");
    for dir in ["dir out", "dir in", "dir fwd"] {
        assert!(listed.contains(dir), "{listed}");
    }
    assert!(
        listed.contains("src 10.1.0.0/16 dst 10.2.0.0/16"),
        "{listed}"
    );
    assert!(listed.contains("reqid 223346689 mode tunnel"), "{listed}");
    for f in &report.failures {
        assert!(f.action.contains("xfrm state add"), "{f:?}");
        // Neither the description nor anything in the typed error (its
        // Debug form holds every cause) carries key material.
        assert!(
            !f.action.contains(KEY_HEX) && !format!("{:?} {}", f.error, f.error).contains(KEY_HEX)
        );
    }

    // Our dump decodes what we installed: converged, nothing to do for policies.
    let obs = dpu_crypto::apply::IpsecBackend::observe(&mut be).unwrap();
    assert_eq!(obs.policies.len(), 3);
    let p = plan(std::slice::from_ref(&t), &BTreeSet::new(), &obs, 0, GRACE);
    assert!(
        p.actions.iter().all(|a| matches!(a, Action::AddSa { .. })),
        "{:#?}",
        p.actions
    );

    let teardown = plan_teardown(t.reqid, &t.name, &obs);
    let report = apply(&mut be, &teardown);
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(ns.ip("xfrm policy").trim(), "");
}

#[test]
fn orphans_removed_foreign_kept() {
    let Some(ns) = Netns::new() else { return };
    // An orphan with the agent's reqid range, a foreign policy, both by hand.
    ns.ip("xfrm policy add src 10.7.0.0/16 dst 10.8.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.9 proto esp reqid 0x0d50fff0 mode tunnel");
    ns.ip("xfrm policy add src 10.5.0.0/16 dst 10.6.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.8 proto esp reqid 7 mode tunnel");
    let mut be = XfrmBackend::open(Some(&ns.path())).unwrap();
    let t = tunnel(0x0d50_0001);
    let obs = dpu_crypto::apply::IpsecBackend::observe(&mut be).unwrap();
    assert_eq!(obs.policies.len(), 2);
    let p = plan(std::slice::from_ref(&t), &BTreeSet::new(), &obs, 0, GRACE);
    let deletes: Vec<String> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::DeletePolicy { .. }))
        .map(|a| a.to_string())
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert!(deletes[0].contains("10.7.0.0/16") && deletes[0].contains("orphan"));
    apply(&mut be, &p.actions);
    let listed = ns.ip("xfrm policy");
    assert!(!listed.contains("10.7.0.0/16"), "{listed}");
    assert!(
        listed.contains("src 10.5.0.0/16 dst 10.6.0.0/16"),
        "{listed}"
    );
    assert!(
        listed.contains("src 10.1.0.0/16 dst 10.2.0.0/16"),
        "{listed}"
    );
}

#[test]
fn drifted_policy_is_repaired() {
    let Some(ns) = Netns::new() else { return };
    let mut be = XfrmBackend::open(Some(&ns.path())).unwrap();
    let t = tunnel(0x0d50_0001);
    let obs = dpu_crypto::apply::IpsecBackend::observe(&mut be).unwrap();
    apply(
        &mut be,
        &plan(std::slice::from_ref(&t), &BTreeSet::new(), &obs, 0, GRACE).actions,
    );
    // Someone points our out policy at another peer.
    ns.ip("xfrm policy update src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 4096 tmpl src 192.0.2.1 dst 192.0.2.77 proto esp reqid 0x0d500001 mode tunnel");
    let obs = dpu_crypto::apply::IpsecBackend::observe(&mut be).unwrap();
    let p = plan(std::slice::from_ref(&t), &BTreeSet::new(), &obs, 0, GRACE);
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::PutPolicy { .. }) && a.to_string().contains("dir out")),
        "{:#?}",
        p.actions
    );
    apply(&mut be, &p.actions);
    let listed = ns.ip("xfrm policy");
    assert!(!listed.contains("192.0.2.77"), "{listed}");
}

#[test]
fn sa_add_failure_is_reported_without_the_key() {
    let Some(ns) = Netns::new() else { return };
    let mut be = XfrmBackend::open(Some(&ns.path())).unwrap();
    let t = tunnel(0x0d50_0001);
    let p = plan(
        std::slice::from_ref(&t),
        &BTreeSet::new(),
        &Default::default(),
        0,
        GRACE,
    );
    let report = apply(&mut be, &p.actions);
    let text = format!("{report:?}");
    assert!(!text.to_lowercase().contains(KEY_HEX), "{text}");
    assert!(!text.contains("5ec2e7"), "{text}");
}
