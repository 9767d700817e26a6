//! Standard gRPC tooling works against a server: health checks and reflection on the API port.

mod common;

use common::TestCluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

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
    cluster.shutdown().await;
}
