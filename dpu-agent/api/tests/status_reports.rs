//! The typed status reports (`dpu_api::report`) and the served OpenAPI
//! document (`dpu-agent/openapi.json`) name the same status fields per
//! kind, so neither can drift from the other.

use std::collections::BTreeSet;

use dpu_api::report::{
    FlowsReport, FunctionReport, IpsecTunnelReport, PortReport, Report, TenantReport,
    TlsListenerReport, VolumeReport,
};

/// Fields every status has, and the typed facts (`StatusFacts`).
const COMMON: &[&str] = &["observed_generation", "phase", "conditions"];
const FACTS: &[&str] = &[
    "vf",
    "sf",
    "representor",
    "host_device",
    "host_pci_address",
    "reqid",
    "if_id",
];

fn schema_fields(schema: &str) -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read openapi.json"))
            .expect("openapi.json is JSON");
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{schema} has properties"))
        .keys()
        .filter(|k| !COMMON.contains(&k.as_str()) && !FACTS.contains(&k.as_str()))
        .cloned()
        .collect()
}

fn check<R: Report>(schema: &str) {
    let want: BTreeSet<String> = R::FIELDS.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        schema_fields(schema),
        want,
        "{schema} in openapi.json vs the report of {:?}",
        R::KIND
    );
}

#[test]
fn every_kind_report_is_its_status_schema() {
    check::<TenantReport>("TenantStatus");
    check::<FlowsReport>("NetworkStatus");
    check::<FlowsReport>("EndpointStatus");
    check::<PortReport>("PortStatus");
    check::<VolumeReport>("VolumeStatus");
    check::<IpsecTunnelReport>("IpsecTunnelStatus");
    check::<TlsListenerReport>("TlsListenerStatus");
    check::<FunctionReport>("FunctionStatus");
}
