//! Bounded input: a request over the size limit is refused with RESOURCE_EXHAUSTED before it is
//! read, creates nothing (no order, charge, event or notification), and the connection it came on
//! keeps serving normal requests.

use anyhow::Result;
use ordermesh::proto::order::v1::ListOrdersRequest;
use ordermesh_testkit::{Backend, on_both_backends};
use tonic::Code;

use super::support::helpers::{order_request, spawn_mesh};

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_resource_exhausted_and_the_connection_goes_on(
    backend: Backend,
) -> Result<()> {
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    // One client, so one HTTP/2 connection for every call below.
    let mut orders = mesh.order_client().await?;

    let mut huge = order_request("limits-huge", "tok_visa");
    huge.items[0].sku = "X".repeat(ordermesh_platform::limits::MAX_REQUEST_BYTES + 1);
    let refused = orders.create_order(huge).await.expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("too large") && refused.message().contains("65536"),
        "{}",
        refused.message()
    );

    // The same connection: a normal order goes through, and it is the only one.
    let placed = orders
        .create_order(order_request("limits-ok", "tok_visa"))
        .await?
        .into_inner();
    let listed = orders
        .list_orders(ListOrdersRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        listed
            .orders
            .iter()
            .map(|o| o.order_id.as_str())
            .collect::<Vec<_>>(),
        [placed.order_id.as_str()]
    );
    assert_eq!(mesh.payment_count().await?, 1);
    assert_eq!(
        mesh.event_count().await?,
        1,
        "the refused request published"
    );
    let sent = mesh.wait_for_notifications(2).await?;
    let for_orders: Vec<_> = sent.iter().map(|n| n.order_id.as_str()).collect();
    assert_eq!(for_orders, [placed.order_id.as_str(); 2], "{sent:?}");
    mesh.shutdown().await
}

/// The order service announces at most 128 concurrent streams per connection in its HTTP/2
/// SETTINGS, so one connection cannot hold more calls open than that: a well-behaved client queues
/// the rest, and a stream beyond it is refused by the HTTP/2 layer. Read with a raw HTTP/2 client,
/// as any peer would see it.
#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_announced_a_limit_of_concurrent_streams(backend: Backend) -> Result<()> {
    let Some(mesh) = spawn_mesh(backend).await? else {
        return Ok(());
    };
    let tcp = tokio::net::TcpStream::connect(mesh.order_addr()?).await?;
    let (mut client, mut connection) = h2::client::handshake(tcp).await?;
    // The server's SETTINGS arrive with its first frames; the connection must be driven to read
    // them, which a request's readiness does.
    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut body) = client.send_request(request, false)?;
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
    let (response, limit) = tokio::select! {
        response = response => (response?, connection.max_concurrent_send_streams()),
        error = &mut connection => anyhow::bail!("connection ended: {error:?}"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(
        limit,
        ordermesh_platform::limits::MAX_STREAMS_PER_CONNECTION as usize,
        "the SETTINGS_MAX_CONCURRENT_STREAMS the order service announces"
    );
    mesh.shutdown().await
}
