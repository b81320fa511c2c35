//! Time as the services store it (Unix milliseconds, an integer every database sorts) and as the APIs
//! show it (`google.protobuf.Timestamp`, RFC 3339 in headers).

use prost_types::Timestamp;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A protobuf timestamp from Unix milliseconds.
pub fn from_millis(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Unix milliseconds from a protobuf timestamp (saturating, never panicking on hostile input).
pub fn to_millis(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// RFC 3339 text, as CloudEvents `ce_time` wants it.
pub fn rfc3339(millis: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_through_timestamp() {
        for millis in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(to_millis(&from_millis(millis)), millis);
        }
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
