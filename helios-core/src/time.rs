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

    /// Reads `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC, as `to_rfc3339` and the Docker engine write
    /// it) to whole milliseconds; None for anything else.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let (secs, nanos) = parse_rfc3339_nanos(text)?;
        Some(Timestamp(secs.checked_mul(1000)? + u64::from(nanos / 1_000_000)))
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

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` to (seconds, nanoseconds) since the epoch.
pub fn parse_rfc3339_nanos(text: &str) -> Option<(u64, u32)> {
    let text = text.strip_suffix('Z')?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let b = whole.as_bytes();
    let layout_ok = b.len() == 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = whole.get(range)?;
        digits.bytes().all(|c| c.is_ascii_digit()).then(|| digits.parse().ok())?
    };
    if !layout_ok || fraction.len() > 9 || !fraction.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hh, mm, ss) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nanos = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().ok()? };
    Some((days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss, nanos))
}

/// (year, month, day) to days since 1970-01-01, after Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

/// Parses a duration such as `30s`, `15m`, `8h`, `7d` (more than zero) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let wrong = || format!("a duration is a number and a unit (s, m, h, d), got {text:?}");
    let n: u64 = digits.parse().map_err(|_| wrong())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(wrong()),
    };
    if n == 0 {
        return Err("a duration must be more than zero".to_string());
    }
    n.checked_mul(unit_ms).ok_or_else(|| format!("duration {text:?} is too long"))
}

/// `45s`, `5m`, `1h30m`, `24h`: whole seconds as Nomad writes durations.
pub fn duration_text(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn writes_durations_as_nomad_does() {
        assert_eq!(super::duration_text(0), "0s");
        assert_eq!(super::duration_text(45), "45s");
        assert_eq!(super::duration_text(5400), "1h30m");
        assert_eq!(super::duration_text(86_400), "24h");
    }

    #[test]
    fn formats_utc_dates() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(951_782_400_000).to_rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(Timestamp(1_795_240_503_000).to_rfc3339(), "2026-11-21T05:55:03Z");
    }

    #[test]
    fn reads_what_it_writes_and_the_engines_nanosecond_stamps() {
        for ms in [0, 951_782_400_000, 1_795_240_503_000, 4_102_444_799_000] {
            assert_eq!(Timestamp::parse_rfc3339(&Timestamp(ms).to_rfc3339()), Some(Timestamp(ms)));
        }
        let docker = "2026-11-21T05:55:03.123456789Z";
        assert_eq!(super::parse_rfc3339_nanos(docker), Some((1_795_240_503, 123_456_789)));
        assert_eq!(Timestamp::parse_rfc3339(docker), Some(Timestamp(1_795_240_503_123)));
        assert_eq!(super::parse_rfc3339_nanos("2026-11-21T05:55:03.5Z"), Some((1_795_240_503, 500_000_000)));
        for bad in [
            "",
            "2026-11-21",
            "2026-11-21T05:55:03",
            "2026-13-01T00:00:00Z",
            "2026-11-21T05:55:03.Z1",
            "x026-11-21T05:55:03Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn humanizes_durations() {
        let now = Timestamp(10_000_000);
        assert_eq!(Timestamp(9_995_000).ago(now), "5s ago");
        assert_eq!(Timestamp(10_000_000 - 180_000).ago(now), "3m ago");
        assert_eq!(Timestamp(20_000_000).ago(now), "0s ago");
    }
}
