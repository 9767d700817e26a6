use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
///
/// Pure logic never reads the clock: callers pass `now` in, and the server stamps it into a Raft
/// command before proposing it, so every replica applies the same value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl Timestamp {
    /// `2026-11-21T07:55:03Z`: UTC, second precision.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1000;
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
    }

    /// `5s ago`, `3m ago`, `2h ago`, `4d ago` relative to `now`.
    pub fn ago(self, now: Timestamp) -> String {
        let secs = now.0.saturating_sub(self.0) / 1000;
        match secs {
            0..=59 => format!("{secs}s ago"),
            60..=3599 => format!("{}m ago", secs / 60),
            3600..=86_399 => format!("{}h ago", secs / 3600),
            _ => format!("{}d ago", secs / 86_400),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(951_782_400_000).to_rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(Timestamp(1_795_240_503_000).to_rfc3339(), "2026-11-21T05:55:03Z");
    }

    #[test]
    fn humanizes_durations() {
        let now = Timestamp(10_000_000);
        assert_eq!(Timestamp(9_995_000).ago(now), "5s ago");
        assert_eq!(Timestamp(10_000_000 - 180_000).ago(now), "3m ago");
        assert_eq!(Timestamp(20_000_000).ago(now), "0s ago");
    }
}
