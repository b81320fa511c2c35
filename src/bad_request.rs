//! INVALID_ARGUMENT as every ordermesh API answers it: a message naming each bad field and the
//! standard `google.rpc.BadRequest` details, both kept within what HTTP/2 headers can carry.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// An INVALID_ARGUMENT status whose message names every bad field and whose details carry the standard
/// `google.rpc.BadRequest` field violations, so clients can point at the field programmatically.
pub fn invalid_argument(mut violations: Vec<FieldViolation>) -> Status {
    // The message and the details travel in HTTP/2 headers, and clients refuse headers over 16 KiB
    // (tonic's default) with INTERNAL, which would hide the real answer. So each text is cut short
    // and violations are reported while their text fits a budget: the headers then stay under
    // about 11 KiB even if every byte is non-ASCII (percent-encoded, three bytes each, in the
    // message; base64 in the details). A request wrong in a handful of places still gets all of
    // them; one wrong everywhere gets the first ones and a count of the rest.
    const MAX_TEXT_CHARS: usize = 200;
    const TEXT_BUDGET_BYTES: usize = 2 * 1024;
    let mut spent = 0;
    let mut reported = 0;
    for v in &mut violations {
        for text in [&mut v.field, &mut v.description] {
            if let Some((cut, _)) = text.char_indices().nth(MAX_TEXT_CHARS) {
                text.truncate(cut);
                text.push('…');
            }
        }
        spent += v.field.len() + v.description.len();
        if reported > 0 && spent > TEXT_BUDGET_BYTES {
            break;
        }
        reported += 1;
    }
    let more = violations.len() - reported;
    violations.truncate(reported);
    let mut message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {message}"),
        ErrorDetails::with_bad_request(violations),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_request_wrong_everywhere_gets_an_answer_that_fits_in_headers() {
        use tonic_types::{FieldViolation, StatusExt};
        let violations: Vec<FieldViolation> = (0..400)
            .map(|i| FieldViolation::new(format!("items[{i}].sku"), "é".repeat(5_000)))
            .collect();
        let status = super::invalid_argument(violations);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let reported = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let shown = reported.field_violations.len();
        assert!(shown >= 1, "at least the first is reported");
        assert!(
            status
                .message()
                .ends_with(&format!("; and {} more", 400 - shown)),
            "{}",
            status.message()
        );
        let response = status.into_http::<()>();
        let size: usize = response
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        assert!(size < 16 * 1024, "{size} bytes of headers");
    }
}
