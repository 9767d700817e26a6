//! Times in the API (`google.protobuf.Timestamp`) from the core's milliseconds since the epoch,
//! and back for readers such as the CLI.

use helios_core::Timestamp;

use super::{duration_from_pb, Problems};

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

/// A length the core keeps in whole seconds, as a `Duration`.
pub fn secs_to_pb(secs: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(secs).unwrap_or(i64::MAX), nanos: 0 }
}

/// A length the core keeps in whole milliseconds, as a `Duration`.
pub fn millis_to_pb(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ms % 1000 * 1_000_000).expect("under a second"),
    }
}

/// A length the core keeps in whole seconds, as a request gave it (`None`: unset). A negative
/// or fractional one is a problem at `path`, never rounded.
pub(super) fn secs_from_pb(p: &mut Problems, path: &str, d: Option<prost_types::Duration>) -> Option<u64> {
    let (seconds, nanos) = checked(p, path, d?)?;
    if nanos != 0 {
        p.add(path, "must be whole seconds");
    }
    Some(seconds)
}

/// As `secs_from_pb`, for a length in whole milliseconds.
pub(super) fn millis_from_pb(p: &mut Problems, path: &str, d: Option<prost_types::Duration>) -> Option<u64> {
    let (seconds, nanos) = checked(p, path, d?)?;
    if nanos % 1_000_000 != 0 {
        p.add(path, "must be whole milliseconds");
    }
    Some(seconds.saturating_mul(1000).saturating_add(u64::from(nanos / 1_000_000)))
}

/// As `secs_from_pb`, for a length the core keeps in a `u32` of seconds.
pub(super) fn secs32_from_pb(p: &mut Problems, path: &str, d: Option<prost_types::Duration>) -> Option<u32> {
    let secs = secs_from_pb(p, path, d)?;
    Some(u32::try_from(secs).unwrap_or_else(|_| {
        p.add(path, format!("must be at most {} s", u32::MAX));
        u32::MAX
    }))
}

fn checked(p: &mut Problems, path: &str, d: prost_types::Duration) -> Option<(u64, u32)> {
    match duration_from_pb(&d) {
        Ok(d) => Some((d.as_secs(), d.subsec_nanos())),
        Err(why) => {
            p.add(path, why);
            None
        }
    }
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

    #[test]
    fn lengths_are_taken_whole_or_refused_by_field() {
        let mut p = Problems::default();
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(secs_from_pb(&mut p, "a", d(90, 0)), Some(90));
        assert_eq!(millis_from_pb(&mut p, "b", d(1, 500_000_000)), Some(1_500));
        assert_eq!(secs_from_pb(&mut p, "c", None), None);
        assert!(p.0.is_empty());
        secs_from_pb(&mut p, "half", d(1, 500_000_000));
        millis_from_pb(&mut p, "micro", d(0, 1_000));
        secs_from_pb(&mut p, "negative", d(-1, 0));
        secs32_from_pb(&mut p, "huge", d(1 << 40, 0));
        let fields: Vec<&str> = p.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["half", "micro", "negative", "huge"]);
        assert_eq!(secs_to_pb(90), prost_types::Duration { seconds: 90, nanos: 0 });
        assert_eq!(millis_to_pb(1_500), prost_types::Duration { seconds: 1, nanos: 500_000_000 });
    }
}
