//! Tells the SPDK conformance tests (`tests/spdk_schema.rs`) whether SPDK's
//! reference data (`shared/ref/spdk/schema.yaml`, found by walking up from
//! this crate) is there. Without it they are `#[ignore]`d — reported as
//! ignored, never as passed. Nothing in the library uses the setting.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spdk_reference)");
    println!("cargo::rerun-if-changed=build.rs");
    let Some(here) = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from) else {
        return;
    };
    if let Some(schema) = here
        .ancestors()
        .map(|a| a.join("shared/ref/spdk/schema.yaml"))
        .find(|p| p.is_file())
    {
        println!("cargo::rustc-cfg=spdk_reference");
        println!("cargo::rerun-if-changed={}", schema.display());
    }
}
