//! Instants as the API prints them: RFC 3339 in UTC with milliseconds. One formatter, so
//! the server's logs and errors and the CLI's tables spell a time the same way.

use std::fmt;

/// The civil (proleptic Gregorian, UTC) date of a day counted from 1970-01-01:
/// (year, month 1..=12, day 1..=31). Howard Hinnant's algorithm.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// Days from 1970-01-01 to the given civil date; the inverse of [`civil_from_days`].
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Writes milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2026-11-25T17:53:50.123Z`.
pub fn write_rfc3339(f: &mut impl fmt::Write, unix_millis: i64) -> fmt::Result {
    let seconds = unix_millis.div_euclid(1000);
    let millis = unix_millis.rem_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    write!(
        f,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// A protobuf timestamp as RFC 3339, or `None` when it is absent or outside 1970..=9999.
pub fn rfc3339(ts: &Option<prost_types::Timestamp>) -> Option<String> {
    // Up to the year 9999, as the server accepts.
    const MAX_SECONDS: i64 = 253_402_300_799;
    let ts = ts.as_ref()?;
    if !(0..1_000_000_000).contains(&ts.nanos) || !(0..=MAX_SECONDS).contains(&ts.seconds) {
        return None;
    }
    let mut text = String::with_capacity(24);
    write_rfc3339(&mut text, ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000)).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: i64) -> String {
        let mut text = String::new();
        write_rfc3339(&mut text, millis).unwrap();
        text
    }

    #[test]
    fn instants_print_as_rfc3339_utc() {
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_795_629_230_123), "2026-11-25T17:53:50.123Z");
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 59, 60, 10_956, 20_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn protobuf_timestamps_outside_the_range_print_as_nothing() {
        let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        assert_eq!(rfc3339(&ts(1_795_629_230, 123_000_000)).as_deref(), Some("2026-11-25T17:53:50.123Z"));
        assert_eq!(rfc3339(&ts(-1, 0)), None);
        assert_eq!(rfc3339(&ts(0, 1_000_000_000)), None);
        assert_eq!(rfc3339(&None), None);
    }
}
