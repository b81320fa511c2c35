//! Refund against a real payment server on port 0, on SQLite and on PostgreSQL
//! (`#[on_both_backends]`): a SUCCEEDED payment is refunded in full once, the refund's own key makes
//! a retry return the first refund, and every refusal comes with its code and a message that says
//! why. What the database must decide (two refunds racing, a refund stored but its answer lost) is
//! driven through the API and checked in the tables too.

use std::{collections::HashMap, net::SocketAddr};

use anyhow::{Context, Result, ensure};
use ordermesh::{
    proto::payment::v1::ChargeRequest, proto::payment::v1::GetPaymentRequest,
    proto::payment::v1::ListPaymentsRequest, proto::payment::v1::Payment,
    proto::payment::v1::PaymentStatus, proto::payment::v1::Refund,
    proto::payment::v1::RefundRequest,
    proto::payment::v1::payment_service_client::PaymentServiceClient, proto::types::v1::Money,
};
use ordermesh_testkit::{Backend, Databases, eventually, is_serving, on_both_backends};
use tokio::sync::oneshot;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

type Client = PaymentServiceClient<Channel>;

/// A payment server on port 0 with fault injection on, and what keeps it and its database alive.
struct Server {
    client: Client,
    database_url: String,
    _stop: oneshot::Sender<()>,
    _databases: Databases,
    _dir: tempfile::TempDir,
}

/// Starts payment on `backend`; None when the test is to skip (no PostgreSQL here, CI not set).
async fn spawn_payment(backend: Backend) -> Result<Option<Server>> {
    let dir = tempfile::tempdir()?;
    let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let database_url = databases.url("payment");
    let config = ordermesh_payment::Config {
        database_url: database_url.clone(),
        faults_enabled: true,
        drain_grace: std::time::Duration::ZERO,
        ..ordermesh_payment::Config::from_env()?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ordermesh_payment::run(listener, config, async {
        let _ = stopped.await;
    }));
    // Serving once its database is migrated, as its health check says.
    eventually("payment serving", || async { Ok(is_serving(addr).await) }).await?;
    let client = PaymentServiceClient::connect(format!("http://{addr}")).await?;
    Ok(Some(Server {
        client,
        database_url,
        _stop: stop,
        _databases: databases,
        _dir: dir,
    }))
}

async fn charge(client: &mut Client, key: &str, token: &str) -> Result<Payment, Status> {
    client
        .charge(ChargeRequest {
            idempotency_key: key.to_owned(),
            order_id: format!("ord_{key}"),
            amount: Some(Money {
                currency_code: "USD".into(),
                minor_units: 2_500,
            }),
            payment_method_token: token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The id of the payment a declined charge made (in the decline's ErrorInfo).
fn declined_payment_id(status: &Status) -> Option<String> {
    status
        .get_details_error_info()?
        .metadata
        .get("payment_id")
        .cloned()
}

fn refund_request(key: &str, payment_id: &str, reason: &str) -> RefundRequest {
    RefundRequest {
        idempotency_key: key.to_owned(),
        payment_id: payment_id.to_owned(),
        reason: reason.to_owned(),
    }
}

async fn refund(client: &mut Client, request: RefundRequest) -> Result<Refund, Status> {
    client
        .refund(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn get_payment(client: &mut Client, payment_id: &str) -> Result<Payment> {
    Ok(client
        .get_payment(GetPaymentRequest {
            payment_id: payment_id.to_owned(),
        })
        .await?
        .into_inner())
}

/// The refunds stored, as (refund id, payment id), read from the table itself.
async fn stored_refunds(database_url: &str) -> Result<Vec<(String, String)>> {
    let db = ordermesh_platform::db::connect(database_url).await?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT refund_id, payment_id FROM refunds ORDER BY refund_id")
            .fetch_all(&db)
            .await?;
    db.close().await;
    Ok(rows)
}

#[on_both_backends]
#[tokio::test]
async fn a_charged_payment_is_refunded_in_full_and_shows_it(backend: Backend) -> Result<()> {
    // Arrange: one charge.
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let paid = charge(client, "charge-1", "tok_visa").await?;

    // Act
    let refunded = refund(
        client,
        refund_request("refund-1", &paid.payment_id, "customer cancelled"),
    )
    .await?;

    // Assert: the whole amount, for the payment's order; the payment shows REFUNDED and when, by
    // GetPayment and by ListPayments.
    ensure!(refunded.refund_id.starts_with("ref_"), "{refunded:?}");
    ensure!(refunded.payment_id == paid.payment_id, "{refunded:?}");
    ensure!(refunded.order_id == paid.order_id, "{refunded:?}");
    ensure!(refunded.amount == paid.amount, "{refunded:?}");
    ensure!(refunded.reason == "customer cancelled", "{refunded:?}");
    ensure!(refunded.idempotency_key == "refund-1", "{refunded:?}");
    ensure!(refunded.created_at.is_some(), "{refunded:?}");
    let payment = get_payment(client, &paid.payment_id).await?;
    ensure!(
        payment.status() == PaymentStatus::Refunded,
        "GetPayment: {payment:?}"
    );
    ensure!(
        payment.refunded_at == refunded.created_at,
        "refunded when the refund was made: {payment:?}"
    );
    ensure!(payment.refund_id == refunded.refund_id, "{payment:?}");
    ensure!(
        payment.amount == paid.amount && payment.created_at == paid.created_at,
        "the charge itself is unchanged: {payment:?}"
    );
    let listed = client
        .list_payments(ListPaymentsRequest::default())
        .await?
        .into_inner()
        .payments;
    ensure!(listed == [payment], "ListPayments: {listed:?}");
    Ok(())
}

#[on_both_backends]
#[tokio::test]
async fn the_same_refund_key_returns_the_first_refund_and_refunds_nothing_more(
    backend: Backend,
) -> Result<()> {
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let paid = charge(client, "charge-1", "tok_visa").await?;
    let request = refund_request("refund-1", &paid.payment_id, "duplicate order");
    let first = refund(client, request.clone()).await?;

    let again = refund(client, request).await?;

    ensure!(
        again == first,
        "a retry gets the first refund: {again:?} vs {first:?}"
    );
    let stored = stored_refunds(&server.database_url).await?;
    ensure!(
        stored == [(first.refund_id.clone(), paid.payment_id.clone())],
        "one refund stored: {stored:?}"
    );
    Ok(())
}

#[on_both_backends]
#[tokio::test]
async fn the_same_refund_key_with_a_different_request_is_already_exists(
    backend: Backend,
) -> Result<()> {
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let paid = charge(client, "charge-1", "tok_visa").await?;
    let other = charge(client, "charge-2", "tok_visa").await?;
    refund(client, refund_request("refund-1", &paid.payment_id, "r")).await?;

    let other_payment = refund(client, refund_request("refund-1", &other.payment_id, "r"))
        .await
        .expect_err("the key is taken by another payment's refund");
    let other_reason = refund(
        client,
        refund_request("refund-1", &paid.payment_id, "another reason"),
    )
    .await
    .expect_err("the key is taken by a refund with another reason");

    for refused in [&other_payment, &other_reason] {
        ensure!(refused.code() == Code::AlreadyExists, "{refused:?}");
        ensure!(
            refused.message().contains("refund-1") && refused.message().contains("new key"),
            "the message names the key and what to do: {}",
            refused.message()
        );
    }
    let untouched = get_payment(client, &other.payment_id).await?;
    ensure!(
        untouched.status() == PaymentStatus::Succeeded,
        "{untouched:?}"
    );
    Ok(())
}

#[on_both_backends]
#[tokio::test]
async fn a_second_refund_under_another_key_is_refused_naming_the_first(
    backend: Backend,
) -> Result<()> {
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let paid = charge(client, "charge-1", "tok_visa").await?;
    let first = refund(client, refund_request("refund-1", &paid.payment_id, "")).await?;

    let refused = refund(client, refund_request("refund-2", &paid.payment_id, ""))
        .await
        .expect_err("a payment is refunded once");

    ensure!(refused.code() == Code::FailedPrecondition, "{refused:?}");
    ensure!(
        refused.message().contains(&first.refund_id) && refused.message().contains("already"),
        "the message names the first refund: {}",
        refused.message()
    );
    let info = refused
        .get_details_error_info()
        .context("an ErrorInfo detail")?;
    ensure!(info.reason == "ALREADY_REFUNDED", "{info:?}");
    ensure!(
        info.metadata.get("refund_id") == Some(&first.refund_id),
        "{info:?}"
    );
    let stored = stored_refunds(&server.database_url).await?;
    ensure!(stored.len() == 1, "one refund stored: {stored:?}");
    Ok(())
}

#[on_both_backends]
#[tokio::test]
async fn a_declined_or_unknown_payment_is_refused(backend: Backend) -> Result<()> {
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let declined = charge(client, "charge-1", "tok_declined")
        .await
        .expect_err("tok_declined is declined");
    let declined_id = declined_payment_id(&declined).context("the declined payment's id")?;

    let of_declined = refund(client, refund_request("refund-1", &declined_id, ""))
        .await
        .expect_err("nothing to refund");
    let of_unknown = refund(client, refund_request("refund-2", "pay_nonesuch", ""))
        .await
        .expect_err("no such payment");

    ensure!(
        of_declined.code() == Code::FailedPrecondition,
        "{of_declined:?}"
    );
    ensure!(
        of_declined.message().contains("declined")
            && of_declined.message().contains("nothing to refund"),
        "{}",
        of_declined.message()
    );
    ensure!(of_unknown.code() == Code::NotFound, "{of_unknown:?}");
    ensure!(
        of_unknown.message().contains("pay_nonesuch"),
        "{}",
        of_unknown.message()
    );
    let payment = get_payment(client, &declined_id).await?;
    ensure!(payment.status() == PaymentStatus::Declined, "{payment:?}");
    ensure!(stored_refunds(&server.database_url).await?.is_empty());
    Ok(())
}

/// Validation needs no database: SQLite only.
#[tokio::test]
async fn invalid_refunds_name_the_field() -> Result<()> {
    let Some(mut server) = spawn_payment(Backend::Sqlite).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let cases = [
        (refund_request("", "pay_1", ""), "idempotency_key"),
        (
            refund_request(&"k".repeat(129), "pay_1", ""),
            "idempotency_key",
        ),
        (refund_request("k", "", ""), "payment_id"),
        (refund_request("k", &"p".repeat(129), ""), "payment_id"),
        (refund_request("k", "pay_1", &"r".repeat(513)), "reason"),
    ];
    for (request, field) in cases {
        let refused = refund(client, request)
            .await
            .expect_err("an invalid request");
        ensure!(
            refused.code() == Code::InvalidArgument,
            "{field}: {refused:?}"
        );
        ensure!(
            refused.message().contains(field),
            "the message names {field}: {}",
            refused.message()
        );
        let violations = refused
            .get_details_bad_request()
            .context("a BadRequest detail")?
            .field_violations;
        ensure!(
            violations
                .iter()
                .map(|v| v.field.as_str())
                .collect::<Vec<_>>()
                == [field],
            "{violations:?}"
        );
    }
    Ok(())
}

/// `copies` refunds of each of `payments`, all sent at once, the n-th copy under `key(payment_id,
/// n)`; the answers by payment id.
async fn refunds_at_once(
    client: &Client,
    payments: &[Payment],
    copies: usize,
    key: impl Fn(&str, usize) -> String,
    reason: &str,
) -> Result<HashMap<String, Vec<Result<Refund, Status>>>> {
    let mut calls = tokio::task::JoinSet::new();
    for payment in payments {
        for copy in 0..copies {
            let mut client = client.clone();
            let request =
                refund_request(&key(&payment.payment_id, copy), &payment.payment_id, reason);
            calls.spawn(async move {
                let payment_id = request.payment_id.clone();
                (payment_id, refund(&mut client, request).await)
            });
        }
    }
    let mut answers: HashMap<String, Vec<Result<Refund, Status>>> = HashMap::new();
    while let Some(joined) = calls.join_next().await {
        let (payment_id, answer) = joined?;
        answers.entry(payment_id).or_default().push(answer);
    }
    Ok(answers)
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_refunds_racing_under_different_keys_exactly_one_lands(backend: Backend) -> Result<()> {
    // Arrange: payments enough that, without the database deciding, some race would refund twice.
    const PAYMENTS: usize = 10;
    const RACERS: usize = 4;
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let mut payments = Vec::new();
    for n in 0..PAYMENTS {
        payments.push(charge(&mut server.client, &format!("charge-{n}"), "tok_visa").await?);
    }

    // Act: every refund of every payment at once, each under its own key.
    let answers = refunds_at_once(
        &server.client,
        &payments,
        RACERS,
        |payment_id, racer| format!("refund-{payment_id}-{racer}"),
        "race",
    )
    .await?;

    // Assert: per payment one refund, the others refused naming it; the tables agree.
    let stored = stored_refunds(&server.database_url).await?;
    ensure!(
        stored.len() == PAYMENTS,
        "one refund stored per payment: {stored:?}"
    );
    for payment in &payments {
        let answers = &answers[&payment.payment_id];
        let landed: Vec<&Refund> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
        ensure!(
            landed.len() == 1,
            "{}: {} refunds landed: {answers:?}",
            payment.payment_id,
            landed.len()
        );
        let winner = &landed[0].refund_id;
        for refused in answers.iter().filter_map(|a| a.as_ref().err()) {
            ensure!(
                refused.code() == Code::FailedPrecondition && refused.message().contains(winner),
                "a loser is told which refund won: {refused:?}"
            );
        }
        let now = get_payment(&mut server.client, &payment.payment_id).await?;
        ensure!(
            now.status() == PaymentStatus::Refunded && &now.refund_id == winner,
            "{now:?}"
        );
    }
    Ok(())
}

#[on_both_backends]
#[tokio::test]
async fn a_refund_whose_answer_was_lost_is_returned_to_the_retry(backend: Backend) -> Result<()> {
    // Arrange
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let paid = charge(client, "charge-1", "tok_visa").await?;
    let request = refund_request("refund-1", &paid.payment_id, "lost answer");

    // Act: the refund is stored, then the call aborts; the retry carries no fault.
    let mut faulty = tonic::Request::new(request.clone());
    faulty
        .metadata_mut()
        .insert("x-fault-abort", "aborted".parse()?);
    faulty
        .metadata_mut()
        .insert("x-fault-stage", "after".parse()?);
    let lost = client.refund(faulty).await.expect_err("the injected abort");
    let retried = refund(client, request).await?;

    // Assert: the abort was the injected one, the retry gets the refund made before it, and that
    // refund is the only one.
    ensure!(
        lost.code() == Code::Aborted && lost.message().contains("fault injected"),
        "{lost:?}"
    );
    let payment = get_payment(client, &paid.payment_id).await?;
    ensure!(
        payment.status() == PaymentStatus::Refunded && payment.refund_id == retried.refund_id,
        "{payment:?} vs {retried:?}"
    );
    let stored = stored_refunds(&server.database_url).await?;
    ensure!(
        stored == [(retried.refund_id.clone(), paid.payment_id.clone())],
        "{stored:?}"
    );
    Ok(())
}

#[on_both_backends]
#[tokio::test]
async fn an_abort_before_the_write_refunds_nothing(backend: Backend) -> Result<()> {
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let client = &mut server.client;
    let paid = charge(client, "charge-1", "tok_visa").await?;
    let mut faulty = tonic::Request::new(refund_request("refund-1", &paid.payment_id, ""));
    faulty
        .metadata_mut()
        .insert("x-fault-abort", "unavailable".parse()?);

    let refused = client.refund(faulty).await.expect_err("the injected abort");

    ensure!(refused.code() == Code::Unavailable, "{refused:?}");
    let payment = get_payment(client, &paid.payment_id).await?;
    ensure!(payment.status() == PaymentStatus::Succeeded, "{payment:?}");
    ensure!(stored_refunds(&server.database_url).await?.is_empty());
    Ok(())
}

#[on_both_backends]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_one_refund_racing_each_get_the_one_refund(backend: Backend) -> Result<()> {
    // Arrange: the order service's replicas asking for one order's refund at once, under the one
    // key they derive from the order (found by CancelOrder racing on two replicas: a copy that
    // read the key before the first committed was told the payment was refunded already).
    const PAYMENTS: usize = 10;
    const COPIES: usize = 4;
    let Some(mut server) = spawn_payment(backend).await? else {
        return Ok(());
    };
    let mut payments = Vec::new();
    for n in 0..PAYMENTS {
        payments.push(charge(&mut server.client, &format!("charge-{n}"), "tok_visa").await?);
    }

    // Act: every copy at once.
    let answers = refunds_at_once(
        &server.client,
        &payments,
        COPIES,
        |payment_id, _| format!("refund:{payment_id}"),
        "cancelled",
    )
    .await?;

    // Assert: every copy answered with the same one refund.
    ensure!(stored_refunds(&server.database_url).await?.len() == PAYMENTS);
    for (payment_id, answers) in &answers {
        let ids: std::collections::HashSet<String> = answers
            .iter()
            .map(|a| {
                a.as_ref()
                    .map(|r| r.refund_id.clone())
                    .map_err(Clone::clone)
            })
            .collect::<Result<_, Status>>()
            .map_err(|status| anyhow::anyhow!("{payment_id}: a copy was refused: {status:?}"))?;
        ensure!(ids.len() == 1, "{payment_id}: {ids:?}");
    }
    Ok(())
}
