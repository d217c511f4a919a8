//! Generates the Rust code for Hutch's `.proto` contracts.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate unless `PROTOC` is set,
//! so a fresh machine needs no manual install step.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    let root = PathBuf::from("proto");
    let protos = [
        root.join("hutch/plugin/v1/plugin.proto"),
        root.join("hutch/admin/v1/admin.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure()
        // Admin messages print as `hutchctl --json`: enumerations are strings
        // in admin.proto, so the derived JSON is readable as is.
        .type_attribute(".hutch.admin.v1", "#[derive(serde::Serialize)]")
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &[root])?;
    Ok(())
}
