//! The card processor, deterministic so both paths can be demonstrated: what a payment method token
//! does is fixed by the token itself, as with a real provider's test tokens.

/// What the processor says about a token it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve,
    /// Declined, with the machine-readable reason.
    Decline(&'static str),
}

/// Tokens that succeed.
pub(crate) const APPROVED: &[&str] = &["tok_visa", "tok_mastercard", "tok_amex"];
/// Tokens that are declined, with their reason.
pub(crate) const DECLINED: &[(&str, &str)] = &[
    ("tok_declined", "card_declined"),
    ("tok_insufficient_funds", "insufficient_funds"),
    ("tok_expired", "expired_card"),
];

/// The decision for `token`, or `None` for a token this processor does not know.
pub(crate) fn decide(token: &str) -> Option<Decision> {
    if APPROVED.contains(&token) {
        Some(Decision::Approve)
    } else {
        DECLINED
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, reason)| Decision::Decline(reason))
    }
}
