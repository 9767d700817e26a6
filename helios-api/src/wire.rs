//! Messages the server encodes by hand for speed, byte for byte the same on the wire as the
//! generated ones their clients decode.

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
    }
}
