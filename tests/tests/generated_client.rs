//! A client generated from the served OpenAPI document with a standard
//! generator (`openapi-python-client`, PyPI, installed by
//! `scripts/setup.sh`) creates a tenant, a network, a function and a port
//! against a real `dpu-agent dev` and reads them back typed
//! (`tests/clients/python_client_smoke.py`). A document too loose for a
//! generator to type each kind fails here.

use std::path::Path;
use std::process::Command;

use dpu_tests::agent::AgentProcess;

#[test]
fn a_generated_client_creates_a_tenant_network_and_port() {
    let agent = AgentProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("openapi.json");
    // The document the agent serves, not the checked-in file.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let served = rt.block_on(agent.admin().openapi()).unwrap();
    std::fs::write(&doc, serde_json::to_vec_pretty(&served).unwrap()).unwrap();
    let out = Command::new("python3")
        .args([
            "-m",
            "openapi_python_client",
            "generate",
            "--meta",
            "none",
            "--path",
        ])
        .arg(&doc)
        .arg("--output-path")
        .arg(dir.path().join("dpu_client"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "openapi-python-client (run scripts/setup.sh to install it) failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pki = agent.state_dir().join("pki");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python_client_smoke.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("PYTHONPATH", dir.path())
        .env("DPU_URL", agent.url())
        .env("DPU_CA", pki.join("ca.pem"))
        .env("DPU_CERT", pki.join("admin.pem"))
        .env("DPU_KEY", pki.join("admin-key.pem"))
        .output()
        .expect("python3");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(out.status.success(), "the generated client failed:\n{text}");
}
