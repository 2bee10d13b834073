//! Generates the kubelet device plugin API (`proto/deviceplugin_v1beta1.proto`)
//! with tonic/prost. The proto is parsed by `protox`, a pure-Rust protobuf
//! compiler, so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `has_promtool`: the promtool test of the stub's /metrics runs instead
    // of being reported as ignored.
    println!("cargo::rustc-check-cfg=cfg(has_promtool)");
    println!("cargo:rerun-if-env-changed=PATH");
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("promtool").is_file()));
    if found {
        println!("cargo:rustc-cfg=has_promtool");
    }
    let proto = "proto/deviceplugin_v1beta1.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
