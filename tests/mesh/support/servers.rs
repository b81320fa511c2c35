//! Real servers the notifier delivers to, on loopback: an SMTP server (aiosmtpd, storing into a
//! Maildir) and an SMS gateway (wiremock). They live in the testkit, shared with the notifier's
//! churn campaign (`ordermesh_bench::churn`); the suite names them here.

pub use ordermesh_testkit::{SMS_TOKEN, SmsGateway, SmtpServer, read_maildir, smtp_available};
