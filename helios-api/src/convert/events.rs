//! Event topics, and the `wait` of blocking reads.

use std::time::Duration;

use helios_core::events::Topic;

use crate::pb;

pub fn topic_to_pb(topic: Topic) -> pb::EventTopic {
    match topic {
        Topic::Job => pb::EventTopic::Job,
        Topic::Allocation => pb::EventTopic::Allocation,
        Topic::Node => pb::EventTopic::Node,
        Topic::Evaluation => pb::EventTopic::Evaluation,
        Topic::Deployment => pb::EventTopic::Deployment,
    }
}

/// None for `EVENT_TOPIC_UNSPECIFIED`.
pub fn topic_from_pb(topic: pb::EventTopic) -> Option<Topic> {
    match topic {
        pb::EventTopic::Unspecified => None,
        pb::EventTopic::Job => Some(Topic::Job),
        pb::EventTopic::Allocation => Some(Topic::Allocation),
        pb::EventTopic::Node => Some(Topic::Node),
        pb::EventTopic::Evaluation => Some(Topic::Evaluation),
        pb::EventTopic::Deployment => Some(Topic::Deployment),
    }
}

/// A protobuf duration as a std one: an error for a negative or malformed one.
pub fn duration_from_pb(d: &prost_types::Duration) -> Result<Duration, String> {
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Err("must not be negative".to_string());
    };
    if nanos >= 1_000_000_000 {
        return Err("nanos must be below 1000000000".to_string());
    }
    Ok(Duration::new(seconds, nanos))
}

pub fn duration_to_pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_goes_to_protobuf_and_back() {
        for topic in Topic::ALL {
            assert_eq!(topic_from_pb(topic_to_pb(topic)), Some(topic));
        }
        assert_eq!(topic_from_pb(pb::EventTopic::Unspecified), None);
    }

    #[test]
    fn durations_convert_and_negative_ones_are_refused() {
        let d = Duration::from_millis(1_500);
        assert_eq!(duration_from_pb(&duration_to_pb(d)), Ok(d));
        let negative = prost_types::Duration { seconds: -1, nanos: 0 };
        assert_eq!(duration_from_pb(&negative), Err("must not be negative".to_string()));
    }
}
