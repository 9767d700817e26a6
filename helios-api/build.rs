fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: building needs no system protobuf compiler.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("helios_descriptor.bin"))
        .btree_map(".")
        .compile_protos(
            &[
                "../proto/helios/v1/types.proto",
                "../proto/helios/v1/api.proto",
                "../proto/helios/v1/raft.proto",
                "../proto/helios/v1/agent.proto",
                "../proto/helios/v1/client.proto",
                "../proto/helios/v1/acl.proto",
            ],
            &["../proto"],
        )?;
    Ok(())
}
