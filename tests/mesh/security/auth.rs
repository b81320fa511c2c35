//! Bearer tokens on the public APIs: with a key configured, order and notifier refuse calls without
//! a valid token (UNAUTHENTICATED) or without the method's scope (PERMISSION_DENIED), create
//! nothing for a refused call (no order, charge, event or notification), and keep health and
//! reflection open.

use ordermesh_runner::tokens::TokenIssuer;
use ordermesh_testkit::{Backend, on_both_backends};
use std::{sync::Arc, time::Duration};

use anyhow::Result;
use ordermesh::{
    proto::notification::v1::ListNotificationsRequest, proto::order::v1::CreateOrderRequest,
    proto::order::v1::ListOrdersRequest, proto::order::v1::OrderStatus,
};
use ordermesh_platform::{
    auth::NOTIFICATIONS_READ, auth::ORDERS_READ, auth::ORDERS_WRITE, auth::Secret,
};
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::support::helpers::{MeshOptions, eventually, order_request, spawn_mesh_with};

const KEY: &str = "test-key-0123456789abcdef0123456789abcdef";

fn key(secret: &str) -> TokenIssuer {
    TokenIssuer::new("test", &secret.parse::<Secret>().unwrap()).unwrap()
}

fn token(scopes: &[&str]) -> String {
    key(KEY)
        .issue("test", scopes, Duration::from_secs(60))
        .unwrap()
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_apis_need_a_valid_token_with_the_methods_scope(backend: Backend) -> Result<()> {
    let Some(mut mesh) = spawn_mesh_with(
        backend,
        MeshOptions {
            notifier: false,
            order: |config| config.auth_key = Some(KEY.parse().unwrap()),
            ..Default::default()
        },
    )
    .await?
    else {
        return Ok(());
    };
    mesh.notifier_settings = Arc::new(|config| config.auth_key = Some(KEY.parse().unwrap()));
    mesh.start_notifier().await?;
    let mut orders = mesh.order_client().await?;
    let create = |id: &str, token: Option<&str>| -> Request<CreateOrderRequest> {
        with_token(order_request(id, "tok_visa"), token)
    };

    // Refused: no token, an expired one, one signed with another key, a read-only one.
    let expired = {
        // Issued already expired, past the few seconds of leeway.
        let claims = ordermesh_platform::auth::Claims {
            sub: "test".into(),
            exp: 1,
            scope: ORDERS_WRITE.into(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
        )?
    };
    let forged = key("another-key-0123456789abcdef0123456789abcdef").issue(
        "test",
        &[ORDERS_WRITE],
        Duration::from_secs(60),
    )?;
    let read_only = token(&[ORDERS_READ]);
    for (case, token, code) in [
        ("no token", None, Code::Unauthenticated),
        ("expired", Some(expired.as_str()), Code::Unauthenticated),
        ("another key", Some(forged.as_str()), Code::Unauthenticated),
        (
            "read-only",
            Some(read_only.as_str()),
            Code::PermissionDenied,
        ),
    ] {
        let refused = orders
            .create_order(create(&format!("auth-{case}"), token))
            .await
            .expect_err(case);
        assert_eq!(refused.code(), code, "{case}: {refused:?}");
    }

    // Nothing was created: a reader sees no order, and no charge was made.
    let listed = orders
        .list_orders(with_token(ListOrdersRequest::default(), Some(&read_only)))
        .await?
        .into_inner();
    assert!(listed.orders.is_empty(), "{listed:?}");
    assert_eq!(mesh.payment_count().await?, 0, "a refused call charged");

    // A writer places an order; health stays open without a token.
    let writer = token(&[ORDERS_WRITE]);
    let placed = orders
        .create_order(create("auth-ok", Some(&writer)))
        .await?
        .into_inner();
    assert_eq!(placed.status(), OrderStatus::Paid);
    let health = HealthClient::new(mesh.order()?.endpoint()?.connect().await?)
        .check(HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");

    // The notifier's API: a token with notifications:read, and only that, lists.
    let mut notifications = mesh.notifier_client().await?;
    let refused = notifications
        .list_notifications(with_token(
            ListNotificationsRequest::default(),
            Some(&writer),
        ))
        .await
        .expect_err("orders:write does not read notifications");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains(NOTIFICATIONS_READ),
        "{}",
        refused.message()
    );
    let reader = token(&[NOTIFICATIONS_READ]);

    // And the refused calls left nothing downstream either: one event on the topic, and the
    // notifier sends for the one order placed (its email and its SMS) and for nothing else.
    assert_eq!(mesh.event_count().await?, 1, "a refused call published");
    let list = || {
        let mut client = notifications.clone();
        let request = with_token(ListNotificationsRequest::default(), Some(&reader));
        async move { Ok::<_, anyhow::Error>(client.list_notifications(request).await?.into_inner()) }
    };
    eventually("the placed order's email and SMS sent", || async {
        Ok(list().await?.notifications.len() >= 2)
    })
    .await?;
    let sent = list().await?.notifications;
    let for_orders: Vec<_> = sent.iter().map(|n| n.order_id.as_str()).collect();
    assert_eq!(for_orders, [placed.order_id.as_str(); 2], "{sent:?}");
    mesh.shutdown().await
}
