//! Standard gRPC tooling works against a server: health checks and reflection (v1, and the
//! v1alpha that older clients such as grpcio-reflection's speak) on the API port, and the status
//! codes clients key on: a request that does not decode is INVALID_ARGUMENT.

mod common;

use common::TestCluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1alpha;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_on_the_api_port() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let channel = cluster.channel(1).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "helios.v1.JobService", "helios.v1.ClusterService", "helios.v1.RaftPeer"] {
        let reply = health
            .check(HealthCheckRequest { service: service.to_string() })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner();
        assert_eq!(reply.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        reflection.server_reflection_info(futures::stream::iter([request])).await.expect("reflection").into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in
        ["helios.v1.JobService", "helios.v1.AllocationService", "helios.v1.NodeService", "helios.v1.ClusterService"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    let mut older = v1alpha::server_reflection_client::ServerReflectionClient::new(cluster.channel(1).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        older.server_reflection_info(futures::stream::iter([request])).await.expect("v1alpha").into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("unexpected v1alpha reflection reply: {reply:?}");
    };
    assert!(list.service.iter().any(|s| s.name == "helios.v1.JobService"), "{list:?}");
    cluster.shutdown().await;
}

/// `GetJobRequest` with its `name` (field 1, a string) holding bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8Name {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_decode_is_invalid_argument() {
    let cluster = TestCluster::start(1).await;
    cluster.leader().await;
    let mut grpc = tonic::client::Grpc::new(cluster.channel(1).await);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/helios.v1.JobService/GetJob");
    let codec = tonic_prost::ProstCodec::<NotUtf8Name, helios_api::pb::GetJobResponse>::default();
    let request = tonic::Request::new(NotUtf8Name { name: vec![0xff, 0xfe, 0xfd] });
    let refused = grpc.unary(request, path, codec).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("does not decode"), "{}", refused.message());
    let info = tonic_types::StatusExt::get_details_error_info(&refused).expect("a typed error");
    assert_eq!((info.reason.as_str(), info.domain.as_str()), ("UNDECODABLE_REQUEST", "helios.v1"));
    cluster.shutdown().await;
}
