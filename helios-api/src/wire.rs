//! Messages encoded or decoded by hand for speed, byte for byte the same on the wire as the
//! generated ones: what the server sends to a hundred subscribers, and a subscriber's skim of it.

pub use prost::bytes::Bytes;
use prost::Message;

use crate::pb;

/// `pb::EventBatch` with its events already encoded: a length-delimited field holds a message's
/// bytes exactly as it holds a `bytes` value, so `events` decodes as `repeated Event`. An event
/// reaching a hundred subscribers is encoded once, not a hundred times.
#[derive(Clone, PartialEq, Message)]
pub struct EncodedEventBatch {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub events: Vec<Bytes>,
}

/// An event's bytes for `EncodedEventBatch::events`.
pub fn encode_event(event: &pb::Event) -> Bytes {
    Bytes::from(event.encode_to_vec())
}

/// `pb::EventBatch` as a subscriber reads it when it needs only which objects changed: each
/// event's index, topic, type and key, its payload skipped by its length, never decoded.
/// `bench events` reads with it, so that what its subscribers cost the machine the servers share
/// is mostly the servers' own.
#[derive(Clone, PartialEq, Message)]
pub struct EventHeadersBatch {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(message, repeated, tag = "2")]
    pub events: Vec<EventHeader>,
}

/// `pb::Event` without its payload (fields 1 to 4 of it).
#[derive(Clone, PartialEq, Message)]
pub struct EventHeader {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(enumeration = "pb::EventTopic", tag = "2")]
    pub topic: i32,
    #[prost(enumeration = "pb::EventType", tag = "3")]
    pub r#type: i32,
    #[prost(string, tag = "4")]
    pub key: String,
}

/// `EventService.Subscribe`, as the generated client calls it, with each batch read as an
/// `EventHeadersBatch`.
pub async fn subscribe_headers<T>(
    channel: T,
    request: pb::SubscribeRequest,
) -> Result<tonic::Streaming<EventHeadersBatch>, tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("not ready: {}", e.into())))?;
    let codec = tonic_prost::ProstCodec::<pb::SubscribeRequest, EventHeadersBatch>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/helios.v1.EventService/Subscribe");
    Ok(grpc.server_streaming(tonic::Request::new(request), path, codec).await?.into_inner())
}

/// The `EventService` server that sends `EncodedEventBatch`es (see build.rs).
#[allow(clippy::all, clippy::pedantic)]
pub mod encoded_event_service {
    include!(concat!(env!("OUT_DIR"), "/helios.v1.EventService.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_batch_decodes_as_the_generated_one() {
        let events: Vec<pb::Event> = (1..=3)
            .map(|i| pb::Event {
                index: i,
                topic: pb::EventTopic::Job as i32,
                r#type: pb::EventType::Upserted as i32,
                key: format!("web-{i}"),
                payload: Some(pb::event::Payload::Job(pb::Job { name: format!("web-{i}"), ..Default::default() })),
            })
            .collect();
        let encoded = EncodedEventBatch { index: 9, events: events.iter().map(encode_event).collect() };
        let decoded = pb::EventBatch::decode(encoded.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, pb::EventBatch { index: 9, events });
        // And an empty one (a heartbeat) is an empty generated batch.
        let empty = EncodedEventBatch { index: 4, events: Vec::new() };
        assert_eq!(pb::EventBatch::decode(empty.encode_to_vec().as_slice()).expect("decodes").events, []);
        // Skimmed, each event keeps its index, topic, type and key.
        let skimmed = EventHeadersBatch::decode(encoded.encode_to_vec().as_slice()).expect("skims");
        let headers: Vec<_> = skimmed.events.iter().map(|e| (e.index, e.topic, e.r#type, e.key.as_str())).collect();
        let (job, upserted) = (pb::EventTopic::Job as i32, pb::EventType::Upserted as i32);
        assert_eq!(skimmed.index, 9);
        assert_eq!(headers, [(1, job, upserted, "web-1"), (2, job, upserted, "web-2"), (3, job, upserted, "web-3")]);
    }
}
