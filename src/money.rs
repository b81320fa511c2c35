//! Currencies the mesh accepts. Prices are integer minor units, so all a currency needs here is its
//! ISO 4217 code; a code not in this list is refused rather than guessed at.

/// ISO 4217 codes accepted by order and payment.
pub const CURRENCIES: &[&str] = &[
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "INR", "JPY", "KRW",
    "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR",
];

/// Whether `code` is a currency the mesh accepts (exact, upper case).
pub fn is_known_currency(code: &str) -> bool {
    CURRENCIES.contains(&code)
}

/// Digits after the decimal point in `code`'s minor unit (ISO 4217): 0 for JPY and KRW, 2 for the
/// rest of [`CURRENCIES`].
pub fn minor_digits(code: &str) -> u32 {
    match code {
        "JPY" | "KRW" => 0,
        _ => 2,
    }
}

/// `minor_units` of `code` for people: `formatted(12305, "EUR")` is `"123.05 EUR"`,
/// `formatted(500, "JPY")` is `"500 JPY"`.
pub fn formatted(minor_units: i64, code: &str) -> String {
    let digits = minor_digits(code);
    if digits == 0 {
        return format!("{minor_units} {code}");
    }
    let scale = 10_i64.pow(digits);
    let sign = if minor_units < 0 { "-" } else { "" };
    let (major, minor) = (
        (minor_units / scale).unsigned_abs(),
        (minor_units % scale).unsigned_abs(),
    );
    format!(
        "{sign}{major}.{minor:0width$} {code}",
        width = digits as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_minor_units_by_currency() {
        assert_eq!(formatted(12_305, "EUR"), "123.05 EUR");
        assert_eq!(formatted(5, "USD"), "0.05 USD");
        assert_eq!(formatted(-150, "USD"), "-1.50 USD");
        assert_eq!(formatted(500, "JPY"), "500 JPY");
    }
}
