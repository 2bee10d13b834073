//! Conformance fuzzing of the served OpenAPI document: schemathesis (PyPI,
//! installed by `scripts/setup.sh`) against a real `dpu-agent dev` with
//! mutual TLS, once as the fleet controller and once as a tenant, all phases
//! that apply, bounded in examples and time. It fails on any 5xx, any
//! response that does not match the document, any undocumented status code
//! and any schema-violating request accepted.
//!
//! Left out, with why:
//! - `positive_data_acceptance` (ST202, "schema-valid request rejected"):
//!   the document cannot express cross-object rules (a port's network must
//!   exist), so such a request is rightly a 422;
//! - `use_after_free` (ST301, "deleted resource still available"): DELETE
//!   is 202 and the object stays readable, `Deleting`, until its controller
//!   has torn it down (API.md), so a GET right after it answers 200;
//! - `GET /v1/watch` and `GET /v1/host/assignments`: they stream until the
//!   client closes (schemathesis waits for the end of the body); they are
//!   tested in `agent_api.rs` and `host-stub`.

use std::path::Path;
use std::process::Command;

use dpu_api::identity::Role;
use dpu_tests::agent::AgentProcess;

/// Schemathesis' own upper bound per run, in seconds; the run stops earlier
/// when it is done.
const MAX_SECONDS: &str = "150";

/// The command that runs schemathesis: the module of the `python3` that
/// `scripts/setup.sh` installed it for.
fn schemathesis() -> Vec<String> {
    let cmd = ["python3", "-m", "schemathesis.cli"];
    let ok = Command::new(cmd[0])
        .args(&cmd[1..])
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "schemathesis is not installed for python3: run scripts/setup.sh (pip install schemathesis)"
    );
    cmd.iter().map(|s| s.to_string()).collect()
}

fn run(agent: &AgentProcess, who: &str, cert: &Path, key: &Path) {
    let ca = agent.state_dir().join("pki/ca.pem");
    // schemathesis keeps a cache in its working directory: not the repo's.
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .current_dir(scratch.path())
        .arg(MAX_SECONDS)
        .args(schemathesis())
        .args(["run", &format!("{}/v1/openapi.json", agent.url())])
        .arg("--tls-verify")
        .arg(&ca)
        .arg("--request-cert")
        .arg(cert)
        .arg("--request-cert-key")
        .arg(key)
        .args([
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "25",
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
            "--exclude-path",
            "/v1/watch",
            "--exclude-path",
            "/v1/host/assignments",
            "--request-timeout",
            "10",
            // A network-level failure (not a response) is retried: on a
            // loaded machine one POST /v1/plan as tenant once ended in "EOF
            // occurred in violation of protocol" and passed on rerun with the
            // same seed. Every response is still checked.
            "--request-retries",
            "2",
            "--seed",
            "20261205",
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Failures") || l.contains("❌"))
        .collect();
    println!("schemathesis as {who}: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "schemathesis as {who} found failures (exit {:?}):\n{text}\nagent log:\n{}",
        out.status.code(),
        agent.log()
    );
}

#[test]
fn the_served_document_holds_under_schemathesis() {
    let agent = AgentProcess::start();
    let pki = agent.state_dir().join("pki");
    run(
        &agent,
        "fleet controller",
        &pki.join("admin.pem"),
        &pki.join("admin-key.pem"),
    );

    // A tenant identity, issued by the dev CA.
    let ca = dpu_pki::Ca::from_pem(
        &std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(pki.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let id = ca
        .issue(&Role::Tenant("acme".into()).spiffe_id("dpu.local"), &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("t.pem"), dir.path().join("t-key.pem"));
    std::fs::write(&cert, &id.cert_pem).unwrap();
    std::fs::write(&key, &id.key_pem).unwrap();
    run(&agent, "tenant", &cert, &key);
}
