//! Property tests of CreateOrder validation: whatever arrives, including hostile input (huge and
//! non-ASCII strings, zero and negative quantities, many items, missing fields), a request is
//! either accepted whole or refused with INVALID_ARGUMENT naming every bad field; never a panic,
//! never part of an order.
//!
//! Two levels: the validation function alone, on many generated requests, checked against the rules
//! restated independently below (`Spec`); and the real order service over gRPC, with payment and an
//! embedded Kafka-protocol broker, on a few dozen requests, after which exactly the accepted ones
//! exist as orders, charges and events. The service-level test runs on SQLite and on
//! PostgreSQL (`#[on_both_backends]`).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result, ensure};
use ordermesh::validate::{self, MAX_ID_LEN, MAX_ITEMS, MAX_QUANTITY, MAX_SKU_LEN, MAX_TOTAL};
use ordermesh::{
    proto::order::v1::CreateOrderRequest, proto::order::v1::Customer, proto::order::v1::LineItem,
    proto::order::v1::ListOrdersRequest, proto::order::v1::Order, proto::order::v1::OrderStatus,
    proto::order::v1::order_service_client::OrderServiceClient, proto::types::v1::Money,
};
use ordermesh_order::OrderError;
use ordermesh_testkit::{Backend, Broker, Databases, eventually, is_serving, on_both_backends};
use proptest::{
    collection::vec,
    prelude::*,
    sample::select,
    strategy::ValueTree,
    test_runner::{Config as ProptestConfig, TestCaseError, TestRunner},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status};
use tonic_types::StatusExt;

// ---------------------------------------------------------------------------------------------
// The rules, restated from the API's documentation rather than copied from `validate`, so a
// validation that drifts from them fails here.
// ---------------------------------------------------------------------------------------------

/// The fields a request must be refused for; empty if it must be accepted.
fn expected_violations(req: &CreateOrderRequest) -> BTreeSet<String> {
    let mut bad = BTreeSet::new();
    let id = &req.request_id;
    if id.is_empty() || id.len() > MAX_ID_LEN || id.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        bad.insert("request_id".to_owned());
    }
    match &req.customer {
        None => {
            bad.insert("customer".to_owned());
        }
        Some(customer) => {
            if !email_ok(&customer.email) {
                bad.insert("customer.email".to_owned());
            }
            if !phone_ok(&customer.phone) {
                bad.insert("customer.phone".to_owned());
            }
        }
    }
    let token = &req.payment_method_token;
    if token.is_empty() || token.len() > MAX_ID_LEN {
        bad.insert("payment_method_token".to_owned());
    }
    if req.items.is_empty() || req.items.len() > MAX_ITEMS {
        bad.insert("items".to_owned());
        return bad;
    }
    // The order's currency is the first item's; an item without a price has none.
    let currency = req.items[0]
        .unit_price
        .as_ref()
        .map_or("", |p| p.currency_code.as_str());
    for (i, item) in req.items.iter().enumerate() {
        let sku_ok = (1..=MAX_SKU_LEN).contains(&item.sku.len())
            && item
                .sku
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !sku_ok {
            bad.insert(format!("items[{i}].sku"));
        }
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            bad.insert(format!("items[{i}].quantity"));
        }
        match &item.unit_price {
            None => {
                bad.insert(format!("items[{i}].unit_price"));
            }
            Some(price) => {
                let known = ordermesh::money::CURRENCIES.contains(&price.currency_code.as_str());
                if !known || price.currency_code != currency {
                    bad.insert(format!("items[{i}].unit_price.currency_code"));
                }
                if price.minor_units < 1 {
                    bad.insert(format!("items[{i}].unit_price.minor_units"));
                }
            }
        }
    }
    // Only a request that is otherwise fine is judged on its total.
    if bad.is_empty() && exact_total(&req.items) > i128::from(MAX_TOTAL) {
        bad.insert("items".to_owned());
    }
    bad
}

/// name@domain.tld: one `@`, 1 to 64 printable characters before it, dot-separated labels of
/// letters, digits and `-` after it; at most 254 characters in all.
fn email_ok(email: &str) -> bool {
    let parts: Vec<&str> = email.split('@').collect();
    let [local, domain] = parts[..] else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    email.len() <= 254
        && (1..=64).contains(&local.len())
        && local.bytes().all(|b| b.is_ascii_graphic())
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// E.164: `+`, then 8 to 15 digits, the first not 0.
fn phone_ok(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

/// The order total without any overflow.
fn exact_total(items: &[LineItem]) -> i128 {
    items
        .iter()
        .map(|item| {
            let price = item.unit_price.as_ref().map_or(0, |p| p.minor_units);
            i128::from(item.quantity) * i128::from(price)
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Generators: mostly well-formed fields, each with a steady share of hostile values, so both
// accepted and refused requests come up often (`the_generator_gives_both_outcomes` checks that).
// ---------------------------------------------------------------------------------------------

/// Mostly `good`, one time in 10 `bad`.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![9 => good, 1 => bad].boxed()
}

/// Nearly always `good`, one time in 25 `bad`: for the fields of an item, as an order has several.
fn nearly<T: std::fmt::Debug + Clone + 'static>(
    good: impl Strategy<Value = T> + 'static,
    bad: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![24 => good, 1 => bad].boxed()
}

/// Text nobody should send: empty, any Unicode, control characters, spaces, up to `huge` bytes.
fn hostile_text(huge: usize) -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        any::<String>(),
        "\\PC{1,80}",
        "[ -~]{1,80}",
        "[\\x00-\\x1f\\x7f]{1,8}",
        (0..=huge).prop_map(|n| "x".repeat(n)),
        (0..=huge / 4).prop_map(|n| "é😀".repeat(n)),
    ]
    .boxed()
}

/// How a generated request is allowed to look.
#[derive(Clone, Copy)]
struct Shape {
    /// Longest hostile string, in bytes. The service refuses requests over 64 KiB before
    /// validation (RESOURCE_EXHAUSTED, see README "Limits on input"), so it gets smaller ones.
    huge: usize,
    /// Whether payment method tokens are mostly ones the payment service knows (and otherwise
    /// `tok_unknown`, which only payment can refuse: the order service then discards the pending
    /// order), rather than arbitrary text.
    known_tokens: bool,
}

fn request(shape: Shape) -> impl Strategy<Value = CreateOrderRequest> {
    let request_id = mostly(
        prop_oneof![9 => "[!-~]{1,40}", 1 => "[A-Za-z0-9_-]{128}"],
        prop_oneof![
            hostile_text(shape.huge),
            "[!-~]{129}",
            "[a-z]{1,10} [a-z]{1,10}"
        ],
    );
    let customer = mostly(
        (
            mostly(
                "[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,15}(\\.[a-z]{2,6}){1,2}",
                prop_oneof![
                    hostile_text(shape.huge),
                    "[a-z]{1,10}\\.[a-z]{2,4}",
                    "[a-z]{1,5}@[a-z]{1,5}",
                    "[a-z]{1,5}@@[a-z]{1,5}\\.com",
                    "[a-z]{65}@example\\.com",
                ],
            ),
            mostly(
                "\\+[1-9][0-9]{7,14}",
                prop_oneof![
                    hostile_text(shape.huge),
                    "[0-9]{8,15}",
                    "\\+0[0-9]{7,14}",
                    "\\+[1-9][0-9]{15,20}",
                    "\\+[1-9][0-9]{1,6}",
                ],
            ),
        )
            .prop_map(|(email, phone)| Some(Customer { email, phone })),
        Just(None),
    );
    let token = if shape.known_tokens {
        mostly(
            select(&["tok_visa", "tok_mastercard", "tok_amex", "tok_unknown"][..])
                .prop_map(str::to_owned),
            prop_oneof![Just(String::new()), "t{129,200}"],
        )
    } else {
        mostly(
            "[a-z_]{1,128}",
            prop_oneof![hostile_text(shape.huge), "t{129,200}"],
        )
    };
    (request_id, customer, items(shape), token).prop_map(
        |(request_id, customer, items, payment_method_token)| CreateOrderRequest {
            request_id,
            customer,
            items,
            payment_method_token,
        },
    )
}

/// Line items, mostly in one currency; sometimes none, sometimes around [`MAX_ITEMS`] well-formed
/// ones. Hostile items come at most 4 at a time: every violation is named in the refusal's
/// headers, and a tonic client reads at most 16 KiB of them, which about 20 items with 4 bad fields
/// each already exceed (the client then sees INTERNAL, not INVALID_ARGUMENT).
fn items(shape: Shape) -> impl Strategy<Value = Vec<LineItem>> {
    select(ordermesh::money::CURRENCIES).prop_flat_map(move |currency| {
        prop_oneof![
            12 => vec(item(currency, shape, true), 1..=4),
            1 => Just(Vec::new()),
            // Many items, all well formed, either side of the limit.
            1 => vec(item(currency, shape, false), MAX_ITEMS - 2..=MAX_ITEMS + 2),
        ]
    })
}

fn item(currency: &'static str, shape: Shape, hostile: bool) -> BoxedStrategy<LineItem> {
    let sku = "[A-Za-z0-9._-]{1,64}";
    // Now and then large enough for the total to pass MAX_TOTAL.
    let quantity = prop_oneof![9 => 1..=5_i32, 1 => 1..=MAX_QUANTITY];
    let minor_units = prop_oneof![9 => 1..=100_000_i64, 1 => 1..=MAX_TOTAL / 1_000];
    if !hostile {
        return (sku, quantity, minor_units)
            .prop_map(move |(sku, quantity, minor_units)| LineItem {
                sku,
                quantity,
                unit_price: Some(Money {
                    currency_code: currency.to_owned(),
                    minor_units,
                }),
            })
            .boxed();
    }
    let sku = nearly(
        sku,
        prop_oneof![
            hostile_text(shape.huge),
            "[A-Z]{65}",
            "[A-Z]{1,5}[ /#][0-9]"
        ],
    );
    let quantity = nearly(
        quantity,
        prop_oneof![
            Just(0),
            Just(-1),
            Just(MAX_QUANTITY + 1),
            Just(i32::MIN),
            Just(i32::MAX),
            any::<i32>(),
        ],
    );
    let currency = nearly(
        Just(currency.to_owned()),
        prop_oneof![
            select(ordermesh::money::CURRENCIES).prop_map(str::to_owned),
            "[A-Z]{3}",
            "[a-z]{3}",
            hostile_text(shape.huge),
        ],
    );
    let minor_units = nearly(
        minor_units,
        prop_oneof![
            Just(0),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
            Just(MAX_TOTAL),
            Just(MAX_TOTAL + 1),
            any::<i64>(),
        ],
    );
    let price = nearly(
        (currency, minor_units).prop_map(|(currency_code, minor_units)| {
            Some(Money {
                currency_code,
                minor_units,
            })
        }),
        Just(None),
    );
    (sku, quantity, price)
        .prop_map(|(sku, quantity, unit_price)| LineItem {
            sku,
            quantity,
            unit_price,
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// The validation function alone.
// ---------------------------------------------------------------------------------------------

/// What a caller sees for a refused request, through the service's one error mapping.
fn check_refusal(status: &Status, expected: &BTreeSet<String>) -> Result<(), TestCaseError> {
    prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
    prop_assert!(!status.message().is_empty());
    for field in expected {
        prop_assert!(
            status.message().contains(field.as_str()),
            "message {:?} names {}",
            status.message(),
            field
        );
    }
    let details = status.get_details_bad_request();
    prop_assert!(details.is_some(), "BadRequest details on {:?}", status);
    let mut named = BTreeSet::new();
    for violation in details.into_iter().flat_map(|d| d.field_violations) {
        // Says why, briefly, whatever was sent: the refusal travels in response headers, which a
        // client reads only so much of (16 KiB for tonic).
        prop_assert!(
            (1..=200).contains(&violation.description.len()),
            "{:?}",
            violation
        );
        named.insert(violation.field);
    }
    prop_assert_eq!(&named, expected);
    Ok(())
}

/// A request the service answered OK for holds exactly what was asked, at the total it comes to.
fn check_accepted(order: &Order, req: &CreateOrderRequest) -> Result<(), TestCaseError> {
    prop_assert_eq!(&order.request_id, &req.request_id);
    prop_assert_eq!(&order.customer, &req.customer);
    prop_assert_eq!(&order.items, &req.items);
    prop_assert_eq!(order.total.as_ref(), Some(&total_of(req)));
    prop_assert_eq!(order.status(), OrderStatus::Paid);
    prop_assert!(!order.payment_id.is_empty() && !order.event_id.is_empty());
    Ok(())
}

/// The total an accepted request comes to: its first item's currency, the exact sum.
fn total_of(req: &CreateOrderRequest) -> Money {
    let currency = req.items[0]
        .unit_price
        .as_ref()
        .map(|p| p.currency_code.clone())
        .unwrap_or_default();
    Money {
        currency_code: currency,
        minor_units: i64::try_from(exact_total(&req.items)).unwrap_or(i64::MAX),
    }
}

/// `default` cases, or `PROPTEST_CASES` if set (to run more, or fewer).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(1_000)))]

    #[test]
    fn a_request_is_accepted_whole_or_refused_naming_every_bad_field(
        req in request(Shape { huge: 20_000, known_tokens: false })
    ) {
        let expected = expected_violations(&req);
        match validate::create_order(&req) {
            Ok(order) => {
                prop_assert!(expected.is_empty(), "accepted, but bad: {:?}", expected);
                prop_assert_eq!(&order.request_id, &req.request_id);
                prop_assert_eq!(Some(&order.customer), req.customer.as_ref());
                prop_assert_eq!(&order.items, &req.items);
                prop_assert_eq!(&order.payment_method_token, &req.payment_method_token);
                prop_assert_eq!(&order.total, &total_of(&req));
                prop_assert!(
                    order.fingerprint.len() == 64
                        && order.fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
                );
            }
            Err(violations) => {
                prop_assert!(!expected.is_empty(), "refused a good request: {:?}", violations);
                let status = Status::from(OrderError::Invalid(violations));
                check_refusal(&status, &expected)?;
            }
        }
    }
}

/// Guards the generator: a property that only ever sees refusals (or acceptances) proves little.
#[test]
fn the_generator_gives_both_outcomes() {
    let mut runner = TestRunner::deterministic();
    let strategy = request(Shape {
        huge: 20_000,
        known_tokens: false,
    });
    let samples = 1_000;
    let accepted = (0..samples)
        .filter(|_| {
            let req = strategy
                .new_tree(&mut runner)
                .expect("the generator always yields")
                .current();
            expected_violations(&req).is_empty()
        })
        .count();
    assert!(
        (samples / 10..=samples * 9 / 10).contains(&accepted),
        "{accepted} of {samples} generated requests are valid; want between 10% and 90%"
    );
}

// ---------------------------------------------------------------------------------------------
// The real service, over gRPC.
// ---------------------------------------------------------------------------------------------

/// Payment and order on port-0 listeners with their own databases, order publishing to an
/// embedded Kafka-protocol broker, as in `tests/mesh/helpers.rs`.
struct Services {
    databases: Databases,
    _dir: TempDir,
    broker: Broker,
    topic: String,
    order_addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Result<()>>>,
}

impl Services {
    /// None when the test is to skip (PostgreSQL wanted but not installed, CI not set).
    async fn start(backend: Backend) -> Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let Some(databases) = Databases::for_test(dir.path(), backend).await? else {
            return Ok(None);
        };
        let topic = format!("order-events-{}", uuid::Uuid::new_v4().simple());
        let broker = Broker::embedded(&[&topic], 1)?;
        let stop = CancellationToken::new();

        let payment_listener = TcpListener::bind("127.0.0.1:0").await?;
        let payment_addr = payment_listener.local_addr()?;
        let payment_config = ordermesh_payment::Config {
            database_url: databases.url("payment"),
            drain_grace: std::time::Duration::from_millis(2_000),
            ..ordermesh_payment::Config::from_env()?
        };
        let payment = tokio::spawn(run_until(stop.clone(), |shutdown| {
            ordermesh_payment::run(payment_listener, payment_config, shutdown)
        }));

        let order_listener = TcpListener::bind("127.0.0.1:0").await?;
        let order_addr = order_listener.local_addr()?;
        let order_config = ordermesh_order::Config {
            database_url: databases.url("order"),
            payment_url: format!("http://{payment_addr}"),
            kafka: ordermesh_kafka::KafkaSettings::plaintext(broker.bootstrap_servers()),
            events_topic: topic.clone(),
            drain_grace: std::time::Duration::from_millis(2_000),
            ..ordermesh_order::Config::from_env()?
        };
        let order = tokio::spawn(run_until(stop.clone(), |shutdown| {
            ordermesh_order::run(order_listener, order_config, shutdown)
        }));

        let services = Self {
            databases,
            _dir: dir,
            broker,
            topic,
            order_addr,
            stop,
            tasks: vec![payment, order],
        };
        for addr in [payment_addr, order_addr] {
            eventually(&format!("SERVING at {addr}"), || async {
                Ok(is_serving(addr).await)
            })
            .await?;
        }
        Ok(Some(services))
    }

    async fn client(&self) -> Result<OrderServiceClient<tonic::transport::Channel>> {
        Ok(OrderServiceClient::connect(format!("http://{}", self.order_addr)).await?)
    }

    async fn all_orders(&self) -> Result<Vec<Order>> {
        let mut client = self.client().await?;
        let mut orders = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_orders(ListOrdersRequest {
                    page_size: 500,
                    page_token,
                })
                .await?
                .into_inner();
            orders.extend(page.orders);
            if page.next_page_token.is_empty() {
                return Ok(orders);
            }
            page_token = page.next_page_token;
        }
    }

    /// Charges recorded by the payment service (not keys closed without one), read from its
    /// database.
    async fn charge_count(&self) -> Result<i64> {
        let pool = ordermesh_platform::db::connect(&self.databases.url("payment")).await?;
        let (count,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM payments WHERE status <> 'CLOSED'")
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        Ok(count)
    }

    async fn shutdown(self) -> Result<()> {
        self.stop.cancel();
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

/// Runs a service until `stop` is cancelled.
async fn run_until<F, E>(
    stop: CancellationToken,
    run: impl FnOnce(WaitForCancellationFutureOwned) -> F,
) -> Result<()>
where
    F: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    run(stop.cancelled_owned())
        .await
        .map_err(anyhow::Error::from)
}

#[on_both_backends]
#[test]
fn over_grpc_a_request_is_accepted_whole_or_refused_and_leaves_nothing(
    backend: Backend,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let Some(services) = runtime.block_on(Services::start(backend))? else {
        return Ok(());
    };
    let client = runtime.block_on(services.client())?;
    let calls = AtomicUsize::new(0);
    let accepted = std::sync::Mutex::new(BTreeSet::new());

    let mut runner = TestRunner::new(ProptestConfig {
        cases: cases(48),
        max_shrink_iters: 64,
        // Every failure is in the output; a regression file for a live service is no use.
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = request(Shape {
        huge: 1_000,
        known_tokens: true,
    });
    let result = runner.run(&strategy, |mut req| {
        // Unique per call (shrinking calls again), so no two calls share an idempotency key.
        let call = calls.fetch_add(1, Ordering::Relaxed);
        if !req.request_id.is_empty() {
            req.request_id = format!("c{call}-{}", req.request_id);
        }
        let expected = expected_violations(&req);
        // Valid for the order service, refused by payment, which alone knows its tokens.
        let payment_refuses = expected.is_empty() && req.payment_method_token == "tok_unknown";
        let mut client = client.clone();
        let answer = runtime.block_on(client.create_order(req.clone()));
        match answer {
            Ok(_) if payment_refuses => {
                prop_assert!(false, "an unknown payment method was accepted");
            }
            Err(status) if payment_refuses => {
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument, "{:?}", status);
            }
            Ok(order) => {
                let order = order.into_inner();
                prop_assert!(expected.is_empty(), "accepted, but bad: {:?}", expected);
                check_accepted(&order, &req)?;
                accepted
                    .lock()
                    .map_err(|_| TestCaseError::fail("poisoned"))?
                    .insert(order.order_id);
            }
            Err(status) => {
                prop_assert!(!expected.is_empty(), "refused a good request: {:?}", status);
                check_refusal(&status, &expected)?;
            }
        }
        Ok(())
    });
    let accepted = accepted
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    eprintln!(
        "{} calls, {} accepted",
        calls.load(Ordering::Relaxed),
        accepted.len()
    );
    if let Err(error) = result {
        anyhow::bail!("{error}");
    }

    // Nothing partial, nothing for a refused request: the orders, the charges and the events are
    // exactly the accepted requests'.
    runtime.block_on(async {
        let stored: BTreeSet<String> = services
            .all_orders()
            .await?
            .into_iter()
            .map(|o| o.order_id)
            .collect();
        ensure!(
            stored == accepted,
            "stored orders {stored:?}, accepted {accepted:?}"
        );
        let charges = services.charge_count().await?;
        ensure!(
            charges == accepted.len() as i64,
            "{charges} charges for {} accepted orders",
            accepted.len()
        );
        eventually("one event per accepted order", || async {
            Ok(services.broker.message_count(&services.topic).await? == accepted.len() as i64)
        })
        .await
        .context("events on the topic")?;
        services.shutdown().await
    })
}
