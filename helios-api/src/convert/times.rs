//! Times in the API (`google.protobuf.Timestamp`) from the core's milliseconds since the epoch,
//! and back for readers such as the CLI.

use helios_core::Timestamp;

pub fn timestamp_to_pb(t: Timestamp) -> prost_types::Timestamp {
    let ms = t.as_millis();
    prost_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ms % 1000 * 1_000_000).expect("under a second"),
    }
}

/// A time the API gave, to the millisecond (earlier than the epoch: the epoch; unset: `None`).
pub fn timestamp_from_pb(t: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    let t = t?;
    let seconds = u64::try_from(t.seconds).unwrap_or(0);
    let millis = u64::try_from(t.nanos).unwrap_or(0) / 1_000_000;
    Some(Timestamp(seconds.saturating_mul(1000).saturating_add(millis)))
}

/// As `timestamp_from_pb`, with the epoch for unset: for times the API always sets.
pub fn time_of(t: Option<&prost_types::Timestamp>) -> Timestamp {
    timestamp_from_pb(t).unwrap_or(Timestamp(0))
}

/// A length the API gave, in whole seconds (unset or negative: 0), for readers such as the CLI.
pub fn seconds_of(d: Option<&prost_types::Duration>) -> u64 {
    d.map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_goes_to_protobuf_and_back_to_the_millisecond() {
        let t = Timestamp(1_765_123_456_789);
        let pb = timestamp_to_pb(t);
        assert_eq!((pb.seconds, pb.nanos), (1_765_123_456, 789_000_000));
        assert_eq!(timestamp_from_pb(Some(&pb)), Some(t));
        assert_eq!(timestamp_from_pb(None), None);
        let before_the_epoch = prost_types::Timestamp { seconds: -5, nanos: 0 };
        assert_eq!(time_of(Some(&before_the_epoch)), Timestamp(0));
    }
}
