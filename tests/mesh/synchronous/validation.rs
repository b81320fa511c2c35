//! Bad input is refused with INVALID_ARGUMENT naming the field, and changes nothing; so are bad
//! ListOrders parameters.

use anyhow::Result;
use ordermesh::{
    proto::order::v1::CreateOrderRequest, proto::order::v1::Customer, proto::order::v1::LineItem,
    proto::order::v1::ListOrdersRequest, proto::types::v1::Money,
};
use ordermesh_testkit::{Backend, on_both_backends};
use tonic::Code;
use tonic_types::StatusExt;

use super::support::helpers::{MeshOptions, order_request, spawn_mesh_with};

/// A bad request, the field it must be refused for.
fn invalid_requests() -> Vec<(&'static str, CreateOrderRequest, &'static str)> {
    let valid = || order_request("valid-1", "tok_visa");
    let with = |change: fn(&mut CreateOrderRequest)| {
        let mut request = valid();
        change(&mut request);
        request
    };
    let item = |sku: &str, quantity: i32, currency: &str, minor_units: i64| LineItem {
        sku: sku.into(),
        quantity,
        unit_price: Some(Money {
            currency_code: currency.into(),
            minor_units,
        }),
    };
    vec![
        (
            "no request id",
            with(|r| r.request_id.clear()),
            "request_id",
        ),
        (
            "request id with spaces",
            with(|r| r.request_id = "a b".into()),
            "request_id",
        ),
        (
            "oversized request id",
            with(|r| r.request_id = "x".repeat(129)),
            "request_id",
        ),
        ("no customer", with(|r| r.customer = None), "customer"),
        (
            "bad email",
            with(|r| r.customer.as_mut().unwrap().email = "ada.example.com".into()),
            "customer.email",
        ),
        (
            "oversized email",
            with(|r| {
                r.customer.as_mut().unwrap().email = format!("{}@example.com", "a".repeat(300))
            }),
            "customer.email",
        ),
        (
            "bad phone",
            with(|r| r.customer.as_mut().unwrap().phone = "555-0100".into()),
            "customer.phone",
        ),
        ("no items", with(|r| r.items.clear()), "items"),
        (
            "zero quantity",
            with(|r| r.items[0].quantity = 0),
            "items[0].quantity",
        ),
        (
            "negative quantity",
            with(|r| r.items[0].quantity = -3),
            "items[0].quantity",
        ),
        (
            "unknown currency",
            with(|r| r.items[0].unit_price.as_mut().unwrap().currency_code = "XYZ".into()),
            "items[0].unit_price.currency_code",
        ),
        (
            "mixed currencies",
            CreateOrderRequest {
                items: vec![item("A", 1, "USD", 100), item("B", 1, "EUR", 100)],
                ..valid()
            },
            "items[1].unit_price.currency_code",
        ),
        (
            "no unit price",
            with(|r| r.items[0].unit_price = None),
            "items[0].unit_price",
        ),
        (
            "zero price",
            with(|r| r.items[0].unit_price.as_mut().unwrap().minor_units = 0),
            "items[0].unit_price.minor_units",
        ),
        (
            "empty sku",
            with(|r| r.items[0].sku.clear()),
            "items[0].sku",
        ),
        (
            "oversized sku",
            with(|r| r.items[0].sku = "S".repeat(65)),
            "items[0].sku",
        ),
        (
            "total overflows",
            CreateOrderRequest {
                items: vec![item("A", 10_000, "USD", i64::MAX / 2)],
                ..valid()
            },
            "items",
        ),
        (
            "too many items",
            CreateOrderRequest {
                items: (0..101)
                    .map(|i| item(&format!("S{i}"), 1, "USD", 1))
                    .collect(),
                ..valid()
            },
            "items",
        ),
        (
            "no payment method",
            with(|r| r.payment_method_token.clear()),
            "payment_method_token",
        ),
        (
            "oversized payment method",
            with(|r| r.payment_method_token = "t".repeat(129)),
            "payment_method_token",
        ),
        (
            "empty customer",
            CreateOrderRequest {
                customer: Some(Customer::default()),
                ..valid()
            },
            "customer.email",
        ),
    ]
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_naming_the_field_and_change_nothing(
    backend: Backend,
) -> Result<()> {
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: false,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    let mut orders = mesh.order_client().await?;

    for (case, request, field) in invalid_requests() {
        let status = orders.create_order(request).await.expect_err(case);

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains(field),
            "{case}: message {:?} names {field}",
            status.message()
        );
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert!(
            violations
                .iter()
                .any(|v| v.field == field && !v.description.is_empty()),
            "{case}: {violations:?} has {field}"
        );
    }

    let stored = orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner()
        .orders;
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
    assert_eq!(mesh.event_count().await?, 0, "nothing published");
    mesh.shutdown().await
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_parameters_are_refused(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            payment: true,
            notifier: true,
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    for (request, field) in [
        (
            ListOrdersRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListOrdersRequest {
                page_size: 501,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListOrdersRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let status = mesh
            .order_client()
            .await?
            .list_orders(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field));
    }
    let status = mesh
        .notifier_client()
        .await?
        .list_notifications(
            ordermesh::proto::notification::v1::ListNotificationsRequest {
                channel: 42,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("channel"));
    mesh.shutdown().await
}
