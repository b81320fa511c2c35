//! How a notification leaves the notifier: an email over SMTP, an SMS as an HTTP POST to a gateway
//! (the webhook shape SMS providers use), or, when neither is configured, a log line and the record
//! in the database, so the quick start needs no mail server.
//!
//! Every send has a time limit, and every failure says whether trying again can help: a refused
//! recipient or a rejected request is permanent (straight to the dead-letter topic), a server that is
//! down, slow or overloaded is transient (retried later, see `retry`).
//!
//! Sends are at least once: a notifier stopped after the server accepted a message and before the
//! database recorded it sends it again. Both channels therefore carry a stable per-event identity the
//! receiving side can deduplicate on: the email's `Message-ID` and the SMS request's
//! `Idempotency-Key`.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use ordermesh_platform::pii;
use tracing::Instrument;

use crate::{channel::Channel, config::Config, notice::Notice};

/// Why a send failed, and whether another attempt can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// The server is unreachable, timed out or asked to try later.
    #[error("{0}")]
    Transient(String),
    /// The server refused this message for good (bad recipient, rejected request).
    #[error("{0}")]
    Permanent(String),
}

/// A delivery setting that cannot work; reported at startup, not at the first send.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryConfigError {
    #[error(
        "NOTIFIER_SMTP_URL {url:?} is not a usable SMTP URL (smtp://host:port, smtps://…): {reason}"
    )]
    SmtpUrl { url: String, reason: String },
    #[error(
        "NOTIFIER_EMAIL_FROM {from:?} is not a mailbox (\"Name <address>\" or an address): {reason}"
    )]
    From { from: String, reason: String },
    #[error("NOTIFIER_SMS_WEBHOOK_URL {url:?} is not an http(s) URL: {reason}")]
    WebhookUrl { url: String, reason: String },
    #[error("cannot build the HTTP client for the SMS webhook: {0}")]
    HttpClient(String),
}

/// Sends one channel's notifications.
#[derive(Clone)]
pub(crate) struct Sender {
    how: How,
    timeout: Duration,
}

#[derive(Clone)]
enum How {
    /// Record and log only.
    Log,
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    Webhook {
        client: reqwest::Client,
        url: reqwest::Url,
        token: Option<String>,
    },
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("how", &self.describe())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The JSON body POSTed to the SMS gateway.
#[derive(Debug, serde::Serialize)]
struct SmsRequest<'a> {
    to: &'a str,
    body: &'a str,
    /// The event the message is about, for the gateway's records and our support.
    reference: &'a str,
}

impl Sender {
    /// The sender `config` asks for on `channel`.
    pub(crate) fn new(channel: Channel, config: &Config) -> Result<Self, DeliveryConfigError> {
        let timeout = config.send_timeout;
        let how =
            match channel {
                Channel::Email => match config.smtp_url.as_deref().filter(|u| !u.is_empty()) {
                    None => How::Log,
                    Some(url) => {
                        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                            .map_err(|e| DeliveryConfigError::SmtpUrl {
                                url: pii::redact_url_password(url),
                                reason: e.to_string(),
                            })?
                            // Bounds connecting and every SMTP command, not just the whole send.
                            .timeout(Some(timeout))
                            .build();
                        let from = config.email_from.parse().map_err(
                            |e: lettre::address::AddressError| DeliveryConfigError::From {
                                from: config.email_from.clone(),
                                reason: e.to_string(),
                            },
                        )?;
                        How::Smtp { transport, from }
                    }
                },
                Channel::Sms => match config.sms_webhook_url.as_deref().filter(|u| !u.is_empty()) {
                    None => How::Log,
                    Some(url) => {
                        let parsed = reqwest::Url::parse(url)
                            .map_err(|e| e.to_string())
                            .and_then(|u| match u.scheme() {
                                "http" | "https" => Ok(u),
                                other => Err(format!("scheme {other:?}")),
                            })
                            .map_err(|reason| DeliveryConfigError::WebhookUrl {
                                url: url.to_owned(),
                                reason,
                            })?;
                        let client = reqwest::Client::builder()
                            .connect_timeout(timeout)
                            .timeout(timeout)
                            .build()
                            .map_err(|e| DeliveryConfigError::HttpClient(e.to_string()))?;
                        How::Webhook {
                            client,
                            url: parsed,
                            token: config
                                .sms_webhook_token
                                .as_ref()
                                .map(|t| t.expose().to_owned())
                                .filter(|t| !t.is_empty()),
                        }
                    }
                },
            };
        Ok(Self { how, timeout })
    }

    /// How long a claimed send may still be under way: a send that times out, and then some. Past
    /// it, a notification nobody confirmed is sent again.
    pub(crate) fn claim_lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(1)
    }

    /// Where messages go, for the startup log (no credentials).
    pub(crate) fn describe(&self) -> String {
        match &self.how {
            How::Log => "log only (no server configured)".to_owned(),
            How::Smtp { .. } => "SMTP".to_owned(),
            How::Webhook { url, .. } => format!("webhook {}", url.as_str()),
        }
    }

    /// Sends the notification for `event` to `recipient`, within the send timeout.
    pub(crate) async fn send(
        &self,
        channel: Channel,
        recipient: &str,
        event: &Notice,
    ) -> Result<(), SendError> {
        let text = event.text();
        let sending = async {
            match &self.how {
                How::Log => {
                    tracing::info!(
                        channel = channel.as_str(),
                        recipient = %masked(channel, recipient),
                        order_id = %event.order_id(),
                        event_id = %event.event_id(),
                        "notification recorded (no server configured): {text}"
                    );
                    Ok(())
                }
                How::Smtp { transport, from } => {
                    send_email(transport, from, recipient, event, text).await
                }
                How::Webhook { client, url, token } => {
                    send_sms(client, url, token.as_deref(), recipient, event, &text).await
                }
            }
        };
        // A client span per send, named and attributed like an RPC to the mail server or gateway.
        let span = tracing::info_span!(
            "notification_send",
            otel.name = %format!("send {}", channel.as_str().to_lowercase()),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            ordermesh.channel = channel.as_str(),
            ordermesh.event_id = %event.event_id(),
            error.type = tracing::field::Empty,
        );
        // The transports have their own timeouts; this one also bounds what they do not cover
        // (DNS, a pooled connection's wait).
        let sent = match tokio::time::timeout(self.timeout, sending.instrument(span.clone())).await
        {
            Ok(sent) => sent,
            Err(_) => Err(SendError::Transient(format!(
                "no answer within the send timeout ({:?})",
                self.timeout
            ))),
        };
        if let Err(error) = &sent {
            span.record("otel.status_code", "ERROR");
            span.record(
                "error.type",
                match error {
                    SendError::Transient(_) => "transient",
                    SendError::Permanent(_) => "permanent",
                },
            );
        }
        sent
    }
}

/// The current span's trace context as HTTP headers.
fn trace_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    ordermesh_platform::trace_context::inject_http(&tracing::Span::current(), &mut headers);
    headers
}

/// The recipient as logs may show it.
fn masked(channel: Channel, recipient: &str) -> String {
    match channel {
        Channel::Email => pii::mask_email(recipient),
        Channel::Sms => pii::mask_phone(recipient),
    }
}

async fn send_email(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    from: &Mailbox,
    recipient: &str,
    event: &Notice,
    text: String,
) -> Result<(), SendError> {
    let to: Mailbox = recipient.parse().map_err(|e| {
        SendError::Permanent(format!(
            "recipient {} is not an email address: {e}",
            pii::mask_email(recipient)
        ))
    })?;
    let email = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(event.subject())
        // Stable per event: a resend after a crash is the same message to the receiving side.
        .message_id(Some(format!("<{}.email@ordermesh>", event.event_id())))
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| SendError::Permanent(format!("cannot build the email: {e}")))?;
    match transport.send(email).await {
        Ok(_) => Ok(()),
        // 5xx: the server will never take this message (unknown mailbox, policy).
        Err(e) if e.is_permanent() => Err(SendError::Permanent(pii::redact(&format!(
            "SMTP server refused: {e}"
        )))),
        // 4xx, connection refused or reset, timeouts: worth another try.
        Err(e) => Err(SendError::Transient(pii::redact(&format!("SMTP: {e}")))),
    }
}

async fn send_sms(
    client: &reqwest::Client,
    url: &reqwest::Url,
    token: Option<&str>,
    recipient: &str,
    event: &Notice,
    text: &str,
) -> Result<(), SendError> {
    let mut request = client
        .post(url.clone())
        // Stable per event: a gateway that deduplicates sends a resend after a crash only once.
        .header("Idempotency-Key", format!("{}.sms", event.event_id()))
        // The gateway can join the trace: the send span's context in W3C headers.
        .headers(trace_headers())
        .json(&SmsRequest {
            to: recipient,
            body: text,
            reference: event.event_id(),
        });
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| SendError::Transient(format!("SMS gateway unreachable: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    // Gateways often quote the number back: the message is logged and kept with the notification.
    let message = pii::redact(&format!("SMS gateway answered {status}: {body}"));
    // Timeouts, "too early", rate limits and server errors pass; other 4xx mean this request is
    // wrong and will stay wrong.
    if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
        Err(SendError::Transient(message))
    } else {
        Err(SendError::Permanent(message))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use ordermesh::proto::{events::v1::OrderPlaced, types::v1::Money};
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers};

    fn event() -> Notice {
        Notice::Placed(OrderPlaced {
            event_id: "evt_1".into(),
            order_id: "ord_1".into(),
            total: Some(Money {
                currency_code: "EUR".into(),
                minor_units: 12_305,
            }),
            ..Default::default()
        })
    }

    fn config() -> Config {
        let mut config = Config::from_env().expect("defaults parse");
        config.send_timeout = Duration::from_millis(500);
        config
    }

    #[test]
    fn text_shows_the_total_in_major_units() {
        assert_eq!(
            event().text(),
            "Your order ord_1 is confirmed. Total: 123.05 EUR."
        );
    }

    /// What the SMS sender makes of a gateway answering `status` (after `delay`).
    async fn sms_outcome(status: u16, delay: Duration) -> Result<(), SendError> {
        let gateway = MockServer::start().await;
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/sms"))
            .and(matchers::header("authorization", "Bearer s3cret"))
            .and(matchers::header("idempotency-key", "evt_1.sms"))
            .and(matchers::body_json(serde_json::json!({
                "to": "+14155550100",
                "body": "Your order ord_1 is confirmed. Total: 123.05 EUR.",
                "reference": "evt_1",
            })))
            .respond_with(ResponseTemplate::new(status).set_delay(delay))
            .mount(&gateway)
            .await;
        let mut config = config();
        config.sms_webhook_url = Some(format!("{}/sms", gateway.uri()));
        config.sms_webhook_token = Some("s3cret".into());
        let sender = Sender::new(Channel::Sms, &config).expect("sender");
        sender.send(Channel::Sms, "+14155550100", &event()).await
    }

    #[tokio::test]
    async fn recipients_are_masked_in_log_lines_and_in_errors_quoting_them() {
        // Log-only delivery writes a line per notification: the recipient is masked there.
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .finish();
        let logged = {
            let _guard = tracing::subscriber::set_default(subscriber);
            let config = config();
            for (channel, to) in [
                (Channel::Email, "ada@example.com"),
                (Channel::Sms, "+14155550100"),
            ] {
                let sender = Sender::new(channel, &config).expect("log-only sender");
                sender.send(channel, to, &event()).await.expect("logged");
            }
            String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8")
        };
        assert!(
            logged.contains("a**@example.com") && logged.contains("+*******0100"),
            "{logged}"
        );
        assert!(
            !logged.contains("ada@") && !logged.contains("4155550100"),
            "{logged}"
        );

        // A gateway quoting the number back: the error (logged, and kept with the
        // notification) has it masked.
        let gateway = MockServer::start().await;
        Mock::given(matchers::method("POST"))
            .respond_with(
                ResponseTemplate::new(422).set_body_string("+14155550100 is not a mobile number"),
            )
            .mount(&gateway)
            .await;
        let mut config = config();
        config.sms_webhook_url = Some(format!("{}/sms", gateway.uri()));
        let sender = Sender::new(Channel::Sms, &config).expect("sender");
        let error = sender.send(Channel::Sms, "+14155550100", &event()).await;
        assert_eq!(
            error,
            Err(SendError::Permanent(
                "SMS gateway answered 422 Unprocessable Entity: +*******0100 is not a mobile number"
                    .into()
            ))
        );

        // A password in the SMTP URL setting is not repeated in the start-up error.
        let mut config = self::config();
        config.smtp_url = Some("smtps://user:hunter2@[not a host".into());
        let Err(error) = Sender::new(Channel::Email, &config) else {
            panic!("a bad URL was accepted");
        };
        let error = error.to_string();
        assert!(
            error.contains("user:***@") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn gateway_answers_are_classified_by_whether_a_retry_can_help() {
        let fast = Duration::ZERO;
        assert_eq!(sms_outcome(202, fast).await, Ok(()));
        for status in [500, 503, 408, 429] {
            assert!(
                matches!(
                    sms_outcome(status, fast).await,
                    Err(SendError::Transient(_))
                ),
                "{status} is worth a retry"
            );
        }
        for status in [400, 401, 422] {
            assert!(
                matches!(
                    sms_outcome(status, fast).await,
                    Err(SendError::Permanent(_))
                ),
                "{status} will not change"
            );
        }
        // Slower than the send timeout (500 ms): transient.
        assert!(matches!(
            sms_outcome(202, Duration::from_secs(2)).await,
            Err(SendError::Transient(_))
        ));
    }

    #[tokio::test]
    async fn an_smtp_server_that_is_not_there_is_transient_and_a_bad_address_permanent() {
        let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let mut config = config();
        config.smtp_url = Some(format!("smtp://{unused}"));
        let sender = Sender::new(Channel::Email, &config).expect("sender");
        assert!(matches!(
            sender
                .send(Channel::Email, "ada@example.com", &event())
                .await,
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            sender
                .send(Channel::Email, "not an address", &event())
                .await,
            Err(SendError::Permanent(_))
        ));
    }

    #[test]
    fn unusable_settings_are_refused_at_startup_naming_the_setting() {
        let mut config = config();
        config.smtp_url = Some("http://mail.example.com".into());
        let error = Sender::new(Channel::Email, &config).expect_err("not smtp");
        assert!(error.to_string().contains("NOTIFIER_SMTP_URL"), "{error}");

        let mut config = self::config();
        config.sms_webhook_url = Some("ftp://gateway".into());
        let error = Sender::new(Channel::Sms, &config).expect_err("not http");
        assert!(
            error.to_string().contains("NOTIFIER_SMS_WEBHOOK_URL"),
            "{error}"
        );

        // Unset or empty: record and log.
        let mut config = self::config();
        config.smtp_url = Some(String::new());
        let sender = Sender::new(Channel::Email, &config).expect("log only");
        assert!(sender.describe().starts_with("log only"));
    }
}
