//! CreateOrder (and CancelOrder) validation: every field checked, every violation reported at once, and the total
//! computed without overflow. A request that passes is complete; one that fails changes nothing.
//!
//! Public so the `create_order_validation` fuzz target (`fuzz/`) and the property tests
//! (`tests/validation_props.rs`) can run it alone, as the handler runs it before anything is stored.

use crate::proto::{
    order::v1::{CancelOrderRequest, CreateOrderRequest, Customer, LineItem},
    types::v1::Money,
};
use sha2::{Digest, Sha256};
use tonic_types::FieldViolation;

/// Longest request_id or payment method token.
pub const MAX_ID_LEN: usize = 128;
/// Most line items in one order.
pub const MAX_ITEMS: usize = 100;
/// Longest SKU.
pub const MAX_SKU_LEN: usize = 64;
/// Most units of one line item.
pub const MAX_QUANTITY: i32 = 10_000;
/// Largest order total in minor units; the payment service refuses larger charges.
pub const MAX_TOTAL: i64 = 1_000_000_000_000;

/// A request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidOrder {
    pub request_id: String,
    pub customer: Customer,
    pub items: Vec<LineItem>,
    pub total: Money,
    pub payment_method_token: String,
    /// What makes two requests with one request_id "the same request".
    pub fingerprint: String,
}

/// Checks `req`: the order to store, or every violation (refused as INVALID_ARGUMENT through
/// `ordermesh_order::OrderError::Invalid`, through [`crate::bad_request::invalid_argument`]).
pub fn create_order(req: &CreateOrderRequest) -> Result<ValidOrder, Vec<FieldViolation>> {
    let mut v = Violations::default();

    if req.request_id.is_empty() {
        v.add(
            "request_id",
            "required: a unique id per order, reused only to retry the same order",
        );
    } else if req.request_id.len() > MAX_ID_LEN
        || !req.request_id.bytes().all(|b| b.is_ascii_graphic())
    {
        v.add(
            "request_id",
            format!("at most {MAX_ID_LEN} printable ASCII characters, no spaces"),
        );
    }

    match &req.customer {
        None => v.add("customer", "required: the customer's email and phone"),
        Some(customer) => {
            if let Err(why) = check_email(&customer.email) {
                v.add("customer.email", why);
            }
            if let Err(why) = check_phone(&customer.phone) {
                v.add("customer.phone", why);
            }
        }
    }

    if req.payment_method_token.is_empty() {
        v.add("payment_method_token", "required, e.g. tok_visa");
    } else if req.payment_method_token.len() > MAX_ID_LEN {
        v.add(
            "payment_method_token",
            format!("at most {MAX_ID_LEN} characters"),
        );
    }

    let total = check_items(&req.items, &mut v);

    if !v.0.is_empty() {
        return Err(v.0);
    }
    let total =
        total.ok_or_else(|| vec![FieldViolation::new("items", "cannot compute the total")])?;
    Ok(ValidOrder {
        request_id: req.request_id.clone(),
        customer: req.customer.clone().unwrap_or_default(),
        items: req.items.clone(),
        total,
        payment_method_token: req.payment_method_token.clone(),
        fingerprint: fingerprint(req),
    })
}

/// Longest reason a CancelOrder may give.
pub const MAX_REASON_LEN: usize = 512;

/// A CancelOrder that passed [`cancel_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCancel {
    pub order_id: String,
    pub reason: String,
}

/// Checks a CancelOrder: the order's id, and a reason of at most [`MAX_REASON_LEN`] characters
/// (it travels in the OrderCancelled event and to the customer).
pub fn cancel_order(req: &CancelOrderRequest) -> Result<ValidCancel, Vec<FieldViolation>> {
    let mut v = Violations::default();
    if req.order_id.is_empty() || req.order_id.len() > MAX_ID_LEN {
        v.add(
            "order_id",
            format!("required, at most {MAX_ID_LEN} characters"),
        );
    }
    if req.reason.chars().count() > MAX_REASON_LEN {
        v.add("reason", format!("at most {MAX_REASON_LEN} characters"));
    }
    if !v.0.is_empty() {
        return Err(v.0);
    }
    Ok(ValidCancel {
        order_id: req.order_id.clone(),
        reason: req.reason.clone(),
    })
}

#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }
}

/// Checks the items and returns their total, if they have one.
fn check_items(items: &[LineItem], v: &mut Violations) -> Option<Money> {
    if items.is_empty() {
        v.add("items", "at least one line item is required");
        return None;
    }
    if items.len() > MAX_ITEMS {
        v.add(
            "items",
            format!("at most {MAX_ITEMS} line items, got {}", items.len()),
        );
        return None;
    }
    let currency = items[0]
        .unit_price
        .as_ref()
        .map(|p| p.currency_code.as_str())
        .unwrap_or("");
    let mut total: Option<i64> = Some(0);
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("items[{i}].{field}");
        if item.sku.is_empty()
            || item.sku.len() > MAX_SKU_LEN
            || !item
                .sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            v.add(
                at("sku"),
                format!("required, at most {MAX_SKU_LEN} of A-Z a-z 0-9 - _ ."),
            );
        }
        if item.quantity <= 0 || item.quantity > MAX_QUANTITY {
            v.add(
                at("quantity"),
                format!(
                    "must be between 1 and {MAX_QUANTITY}, got {}",
                    item.quantity
                ),
            );
        }
        let Some(price) = &item.unit_price else {
            v.add(at("unit_price"), "required: currency_code and minor_units");
            total = None;
            continue;
        };
        if !crate::money::is_known_currency(&price.currency_code) {
            v.add(
                at("unit_price.currency_code"),
                format!(
                    "unknown currency {:?}; use an ISO 4217 code such as USD",
                    echo(&price.currency_code)
                ),
            );
        } else if price.currency_code != currency {
            v.add(
                at("unit_price.currency_code"),
                format!(
                    "all items must be in one currency: items[0] is {}, this is {}",
                    echo(currency),
                    price.currency_code
                ),
            );
        }
        if price.minor_units <= 0 {
            v.add(
                at("unit_price.minor_units"),
                "must be more than zero (minor units, e.g. 1999 for 19.99)",
            );
        }
        total = total
            .zip(
                price
                    .minor_units
                    .checked_mul(i64::from(item.quantity.max(0))),
            )
            .and_then(|(sum, line)| sum.checked_add(line));
    }
    match total {
        Some(total) if total <= MAX_TOTAL => Some(Money {
            currency_code: currency.to_owned(),
            minor_units: total,
        }),
        _ => {
            if v.0.is_empty() {
                v.add(
                    "items",
                    format!("the order total overflows; at most {MAX_TOTAL} minor units"),
                );
            }
            None
        }
    }
}

/// At most the first 8 characters of `value`, for a message that quotes what was sent: the refusal
/// goes back in response headers, which gRPC clients cap (tonic at 16 KiB), so quoting a long value
/// whole would turn INVALID_ARGUMENT into a protocol error the client cannot read.
fn echo(value: &str) -> String {
    const MAX_CHARS: usize = 8;
    match value.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

fn check_email(email: &str) -> Result<(), String> {
    const HINT: &str = "must be an email address like name@example.com";
    if email.is_empty() {
        return Err("required".into());
    }
    if email.len() > 254 {
        return Err("at most 254 characters".into());
    }
    let (local, domain) = email.rsplit_once('@').ok_or(HINT)?;
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
    if domain_ok && local_ok {
        Ok(())
    } else {
        Err(HINT.into())
    }
}

fn check_phone(phone: &str) -> Result<(), String> {
    let digits = phone.strip_prefix('+').unwrap_or("");
    let ok = (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if phone.is_empty() {
        Err("required".into())
    } else if ok {
        Ok(())
    } else {
        Err("must be E.164: + then 8 to 15 digits, e.g. +14155550100".into())
    }
}

fn fingerprint(req: &CreateOrderRequest) -> String {
    let customer = req.customer.clone().unwrap_or_default();
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(customer.email.as_bytes());
    field(customer.phone.as_bytes());
    field(req.payment_method_token.as_bytes());
    for item in &req.items {
        let price = item.unit_price.clone().unwrap_or_default();
        field(item.sku.as_bytes());
        field(&item.quantity.to_be_bytes());
        field(price.currency_code.as_bytes());
        field(&price.minor_units.to_be_bytes());
    }
    format!("{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> CreateOrderRequest {
        CreateOrderRequest {
            request_id: "req-1".into(),
            customer: Some(Customer {
                email: "ada@example.com".into(),
                phone: "+14155550100".into(),
            }),
            items: vec![LineItem {
                sku: "BOOK-1".into(),
                quantity: 3,
                unit_price: Some(Money {
                    currency_code: "EUR".into(),
                    minor_units: 1250,
                }),
            }],
            payment_method_token: "tok_visa".into(),
        }
    }

    #[test]
    fn computes_the_total() {
        let order = create_order(&valid()).unwrap();
        assert_eq!(
            order.total,
            Money {
                currency_code: "EUR".into(),
                minor_units: 3750
            }
        );
    }

    #[test]
    fn overflowing_totals_are_refused_not_wrapped() {
        let mut req = valid();
        req.items[0].unit_price.as_mut().unwrap().minor_units = i64::MAX;
        req.items[0].quantity = 2;
        let violations = create_order(&req).unwrap_err();
        assert_eq!(violations[0].field, "items");
        assert!(violations[0].description.contains("overflows"));
    }

    #[test]
    fn reports_every_violation() {
        let mut req = valid();
        req.request_id.clear();
        req.customer.as_mut().unwrap().phone = "555".into();
        req.items[0].quantity = 0;
        let fields: Vec<_> = create_order(&req)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            ["request_id", "customer.phone", "items[0].quantity"]
        );
    }

    #[test]
    fn quoted_values_are_cut_short() {
        let mut req = valid();
        req.items[0].unit_price.as_mut().unwrap().currency_code = "X".repeat(10_000);
        let violations = create_order(&req).unwrap_err();
        assert_eq!(violations[0].field, "items[0].unit_price.currency_code");
        assert!(
            violations[0].description.len() < 100,
            "{}",
            violations[0].description
        );
        assert_eq!(echo("USD"), "USD");
        assert_eq!(echo("é😀é😀é😀é😀é"), "é😀é😀é😀é😀…");
    }

    #[test]
    fn fingerprint_changes_with_any_field() {
        let base = fingerprint(&valid());
        let mut other = valid();
        other.items[0].quantity = 4;
        assert_ne!(base, fingerprint(&other));
        let mut other = valid();
        other.request_id = "req-2".into();
        assert_eq!(
            base,
            fingerprint(&other),
            "the request id is the key, not part of the request"
        );
    }
}
