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
