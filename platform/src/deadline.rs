//! The caller's deadline as a handler sees it, read from the `grpc-timeout` header, so work done
//! for the call (a payment charge, an event publish) can stop when the caller has stopped waiting.

use std::time::Duration;

/// When the caller's deadline runs out, from the `grpc-timeout` it sent (measured from now, which in
/// a handler is when the call arrived, give or take the time to route it). None without one or with
/// one that does not parse.
pub fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<tokio::time::Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    // At most 8 digits and a unit, per the gRPC HTTP/2 protocol.
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(tokio::time::Instant::now() + timeout)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::metadata::MetadataMap;

    use super::caller_deadline;

    #[tokio::test(start_paused = true)]
    async fn grpc_timeout_becomes_a_deadline() {
        let now = tokio::time::Instant::now();
        for (value, expected) in [
            ("250m", Some(Duration::from_millis(250))),
            ("3S", Some(Duration::from_secs(3))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("1500u", Some(Duration::from_micros(1500))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-5m", None),
            ("", None),
        ] {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(
                caller_deadline(&metadata),
                expected.map(|d| now + d),
                "{value:?}"
            );
        }
        assert_eq!(caller_deadline(&MetadataMap::new()), None);
    }
}
