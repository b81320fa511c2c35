//! An SMS gateway on loopback for the notifier to deliver to: wiremock, an HTTP server that answers
//! only requests matching what a gateway would accept, and records each SMS it accepts with its
//! `Idempotency-Key` and the time it took it, so a test can count deliveries per key.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::{Duration, SystemTime},
};

use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

/// `POST /sms` with the bearer token [`SMS_TOKEN`], an `Idempotency-Key` and a JSON body with `to`,
/// `body` and `reference` is answered with the gateway's current status (202 unless told
/// otherwise); anything else gets wiremock's 404.
#[derive(Debug)]
pub struct SmsGateway {
    pub server: MockServer,
    responder: Responder,
}

/// The bearer token the gateway wants (NOTIFIER_SMS_WEBHOOK_TOKEN).
pub const SMS_TOKEN: &str = "test-gateway-token";

/// An SMS the gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub idempotency_key: String,
    pub to: String,
    pub body: String,
    pub reference: String,
    /// The query of the request's URL (empty without one): a test that gives each sender its own
    /// webhook URL tells senders apart by it.
    pub query: String,
    /// When the gateway took it (before its answer, which may be delayed, left).
    pub received: SystemTime,
}

/// Answers valid SMS requests with the current status, recording the ones it accepts.
#[derive(Clone, Debug, Default)]
struct Responder {
    status: Arc<AtomicU16>,
    accepted: Arc<Mutex<Vec<Sms>>>,
    /// How long each answer takes.
    delay: Duration,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let status = self.status.load(Ordering::SeqCst);
        if (200..300).contains(&status)
            && let Some(sms) = parse_sms(request)
        {
            self.accepted.lock().unwrap().push(sms);
        }
        let body = if status < 300 {
            "queued"
        } else {
            "gateway says no"
        };
        ResponseTemplate::new(status)
            .set_body_string(body)
            .set_delay(self.delay)
    }
}

/// The SMS in `request` if it is one a gateway would take: JSON with an international number, a
/// text and a reference, and an idempotency key.
fn parse_sms(request: &Request) -> Option<Sms> {
    let body = request.body_json::<serde_json::Value>().ok()?;
    let text = |key: &str| body.get(key)?.as_str().map(str::to_owned);
    let sms = Sms {
        idempotency_key: request
            .headers
            .get("idempotency-key")?
            .to_str()
            .ok()?
            .to_owned(),
        to: text("to")?,
        body: text("body")?,
        reference: text("reference")?,
        query: request.url.query().unwrap_or_default().to_owned(),
        received: SystemTime::now(),
    };
    (sms.to.starts_with('+')
        && sms.to.len() > 6
        && !sms.body.is_empty()
        && !sms.reference.is_empty())
    .then_some(sms)
}

impl SmsGateway {
    /// A gateway that accepts every valid SMS.
    pub async fn start() -> Self {
        Self::start_slow(Duration::ZERO).await
    }

    /// A gateway that accepts every valid SMS, taking `delay` over each.
    pub async fn start_slow(delay: Duration) -> Self {
        let server = MockServer::start().await;
        let responder = Responder {
            delay,
            ..Default::default()
        };
        responder.status.store(202, Ordering::SeqCst);
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/sms"))
            .and(matchers::header(
                "authorization",
                format!("Bearer {SMS_TOKEN}").as_str(),
            ))
            .and(|request: &Request| parse_sms(request).is_some())
            .respond_with(responder.clone())
            .mount(&server)
            .await;
        Self { server, responder }
    }

    /// From now on, answer valid SMS with `status` (2xx accepts them).
    pub fn answer(&self, status: u16) {
        self.responder.status.store(status, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("{}/sms", self.server.uri())
    }

    /// Every SMS accepted so far, in order.
    pub fn accepted(&self) -> Vec<Sms> {
        self.responder.accepted.lock().unwrap().clone()
    }

    /// How many requests reached the gateway, answered or not.
    pub async fn requests(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .len()
    }
}
