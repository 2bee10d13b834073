//! Arbitrary text given to `dpuctl apply` / `dpuctl plan` must never panic
//! the document reader (YAML or JSON, several documents, single objects and
//! batches), nor the typed spec parsing and validation of what it read.
#![no_main]

use dpu_api::Kind;
use dpu_api::spec::Spec;
use dpu_api::validate::validate_spec;
use dpuctl::documents::Documents;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut docs = Documents::default();
    if let Err(e) = docs.add("in.yaml", text) {
        let _ = e.to_string();
        return;
    }
    assert_eq!(docs.origins.len(), docs.request.objects.len());
    for (i, o) in docs.request.objects.iter().enumerate() {
        let kind = Kind::parse_loose(&o.kind).expect("documents keep only known kinds");
        assert_eq!(o.kind, kind.name());
        let _ = docs
            .origin_of_field(&format!("objects[{i}].spec"))
            .map(ToString::to_string);
        if let Ok(spec) = Spec::parse(kind, &o.spec) {
            let _ = validate_spec(&spec);
        }
    }
});
