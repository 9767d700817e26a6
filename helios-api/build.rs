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
                "../proto/helios/agent/v1/types.proto",
                "../proto/helios/v1/api.proto",
                "../proto/helios/v1/raft.proto",
                "../proto/helios/v1/agent.proto",
                "../proto/helios/v1/client.proto",
                "../proto/helios/v1/acl.proto",
                "../proto/helios/v1/events.proto",
            ],
            &["../proto"],
        )?;
    encoded_event_service();
    // OTLP's trace export, which servers call and never serve: apart, so that neither gRPC
    // reflection nor the API's metrics see it among Helios's own services.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["../proto/opentelemetry/trace_export.proto"], &["../proto"])?;
    Ok(())
}

/// The server side of `EventService` once more, answering with `wire::EncodedEventBatch`: the
/// same bytes on the wire as `EventBatch`, with each event encoded once for every subscriber
/// rather than once per subscriber. Clients use the generated `event_service_client`.
fn encoded_event_service() {
    let subscribe = tonic_build::manual::Method::builder()
        .name("subscribe")
        .route_name("Subscribe")
        .input_type("crate::pb::SubscribeRequest")
        .output_type("crate::wire::EncodedEventBatch")
        .codec_path("tonic_prost::ProstCodec")
        .server_streaming()
        .build();
    let service =
        tonic_build::manual::Service::builder().name("EventService").package("helios.v1").method(subscribe).build();
    tonic_build::manual::Builder::new().build_client(false).compile(&[service]);
}
