//! The Helios gRPC contract: the code generated from `proto/helios/v1/*.proto` and the agent
//! protocol's `proto/helios/agent/v1`, the one place that converts between protobuf messages
//! and `helios_core` types, and the mutual TLS every gRPC connection between Helios processes
//! uses (`tls`).

pub mod acl;
pub mod blocking;
pub mod convert;
pub mod errors;
pub mod node_proof;
pub mod pages;
pub mod retries;
pub mod tls;
pub mod wire;

/// The generated code, nested as the proto packages are, so that each package's code finds the
/// other's messages where prost expects them (`super::agent::v1`, `super::super::v1`).
#[allow(clippy::all, clippy::pedantic)]
mod generated {
    pub mod v1 {
        tonic::include_proto!("helios.v1");

        /// Encoded descriptors of every Helios proto file, for gRPC reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("helios_descriptor");
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("helios.agent.v1");
        }
    }
}

/// Generated messages of package `helios.agent.v1`: the agent protocol's own jobs, allocations,
/// task states and service registrations (see `convert::agent`).
pub use generated::agent::v1 as agent_pb;
/// Generated messages, clients and servers of package `helios.v1`: the public API, and the
/// services between Helios's own processes.
pub use generated::v1 as pb;

/// The client of OpenTelemetry's trace export (OTLP) and its messages: how servers send their
/// spans to a collector (`--otlp-endpoint`).
#[allow(clippy::all, clippy::pedantic)]
pub mod otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

pub use convert::{invalid_argument, ConversionResult};

/// Whether `path` (`/helios.v1.Service/Method`) names a method of a Helios service: what
/// metrics may use as a label (any other path would add a series per made-up name).
pub fn is_helios_method(path: &str) -> bool {
    use prost::Message;
    static METHODS: std::sync::OnceLock<std::collections::HashSet<String>> = std::sync::OnceLock::new();
    METHODS
        .get_or_init(|| {
            let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
            let mut methods = std::collections::HashSet::new();
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
            methods
        })
        .contains(path)
}
/// Protobuf's well-known types (`wait` is a `Duration`), for callers that build requests.
pub use prost_types;

/// A message's encoded size, for callers that bound what they send (protobuf stays here).
pub fn encoded_len(message: &impl prost::Message) -> usize {
    message.encoded_len()
}
