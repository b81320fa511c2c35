//! CreateOrder validation on arbitrary bytes, as the order service gets them: a protobuf body
//! decoded into `CreateOrderRequest`, then validated. Whatever decodes is accepted whole or refused
//! with INVALID_ARGUMENT naming the bad fields; nothing panics, overflows or is accepted in part.
//!
//! Inputs are protobuf bytes; the seeds in `corpus/create_order_validation/` are valid and invalid
//! requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordermesh::{
    bad_request,
    proto::{order::v1::CreateOrderRequest, types::v1::Money},
    validate::{self, MAX_ITEMS, MAX_QUANTITY, MAX_TOTAL},
};
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

fuzz_target!(|data: &[u8]| {
    // What tonic does with the body; a body that does not decode never reaches validation.
    let Ok(req) = CreateOrderRequest::decode(data) else {
        return;
    };
    match validate::create_order(&req) {
        Ok(order) => {
            // Accepted whole: the order is the request, and it keeps every rule.
            assert_eq!(order.request_id, req.request_id);
            assert_eq!(Some(&order.customer), req.customer.as_ref());
            assert_eq!(order.items, req.items);
            assert_eq!(order.payment_method_token, req.payment_method_token);
            assert!((1..=MAX_ITEMS).contains(&order.items.len()));
            let mut total: i128 = 0;
            for item in &order.items {
                assert!((1..=MAX_QUANTITY).contains(&item.quantity), "{item:?}");
                let price = item
                    .unit_price
                    .as_ref()
                    .expect("an accepted item has a price");
                assert!(price.minor_units > 0, "{item:?}");
                assert_eq!(price.currency_code, order.total.currency_code);
                total += i128::from(item.quantity) * i128::from(price.minor_units);
            }
            assert!(ordermesh::money::is_known_currency(
                &order.total.currency_code
            ));
            assert!(total <= i128::from(MAX_TOTAL));
            assert_eq!(
                order.total,
                Money {
                    currency_code: order.total.currency_code.clone(),
                    minor_units: total as i64,
                }
            );
        }
        Err(violations) => {
            // Refused: INVALID_ARGUMENT. Violations are reported in order while their text fits
            // the answer's budget (it travels in HTTP/2 headers); the rest are counted. The
            // details and the message name the same reported fields.
            assert!(!violations.is_empty());
            // How the order service answers them (`OrderError::Invalid` maps to exactly this).
            let status = bad_request::invalid_argument(violations.clone());
            assert_eq!(status.code(), Code::InvalidArgument);
            let details = status
                .get_details_bad_request()
                .expect("BadRequest details");
            let reported = &details.field_violations;
            assert!(!reported.is_empty() && reported.len() <= violations.len());
            for (sent, found) in reported.iter().zip(&violations) {
                // Texts may be cut short (with an ellipsis), never changed.
                assert!(found.field.starts_with(sent.field.trim_end_matches('…')));
                assert!(found.description.starts_with(sent.description.trim_end_matches('…')));
                assert!(!sent.field.is_empty() && !sent.description.is_empty());
                assert!(
                    status
                        .message()
                        .contains(&format!("{}: {}", sent.field, sent.description)),
                    "{status:?}"
                );
            }
            let more = violations.len() - reported.len();
            assert_eq!(
                status.message().ends_with(&format!("; and {more} more")),
                more > 0,
                "{status:?}"
            );
            // The whole answer fits in tonic's 16 KiB header limit with room to spare.
            assert!(status.message().len() + status.details().len() < 12 * 1024);
            // Each description is short whatever was sent (no long value quoted back whole).
            for violation in &violations {
                assert!(
                    violation.description.len() <= 200,
                    "{:?} is too long to send back",
                    violation.description
                );
            }
        }
    }
});
