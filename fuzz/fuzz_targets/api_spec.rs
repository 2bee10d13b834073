//! Arbitrary JSON bodies sent to the v1 API must never panic the path from
//! JSON to a typed spec to its validation: the request envelopes (PUT body,
//! apply batch) and `dpu_api::spec::Spec::parse` +
//! `dpu_api::validate::validate_spec` for every kind. A spec that validates
//! prints as JSON that parses and validates again.
#![no_main]

use dpu_api::Kind;
use dpu_api::object::{ApplyRequest, ObjectWrite, PutBody};
use dpu_api::spec::Spec;
use dpu_api::validate::{validate_envelope, validate_spec};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check(kind: Kind, spec: &Value) {
    let Ok(parsed) = Spec::parse(kind, spec) else {
        return;
    };
    let _ = parsed.references();
    if validate_spec(&parsed).is_ok() {
        let again = parsed.to_value();
        let reparsed = Spec::parse(kind, &again)
            .unwrap_or_else(|e| panic!("{kind:?} spec {again} does not parse back: {e}"));
        assert!(
            validate_spec(&reparsed).is_ok(),
            "{kind:?} spec {again} no longer validates"
        );
    }
}

fn envelope(kind: &str, id: &str, tenant: Option<&str>, spec: &Value) {
    let Some(kind) = Kind::parse_loose(kind) else {
        return;
    };
    let _ = validate_envelope(kind, id, tenant.unwrap_or(id));
    check(kind, spec);
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for kind in Kind::ALL {
        check(kind, &value);
    }
    if let Ok(o) = serde_json::from_value::<ObjectWrite>(value.clone()) {
        envelope(&o.kind, &o.id, o.tenant.as_deref(), &o.spec);
    }
    if let Ok(p) = serde_json::from_value::<PutBody>(value.clone()) {
        let kind = p.kind.as_deref().unwrap_or("Port");
        envelope(
            kind,
            p.id.as_deref().unwrap_or("x"),
            p.tenant.as_deref(),
            &p.spec,
        );
    }
    if let Ok(req) = serde_json::from_value::<ApplyRequest>(value) {
        for o in &req.objects {
            envelope(&o.kind, &o.id, o.tenant.as_deref(), &o.spec);
        }
    }
});
