//! Where a notification stands, typed: an enum rather than the text the database stores, so a
//! misspelt status is a compile error and every `match` on one is checked for the missing case.
//!
//! The text form lives here, in [`Status::as_str`] and [`Status::parse`], and must not change: it is
//! what existing databases hold and what the migrations' CHECK constraint allows. The statements in
//! `store` bind their statuses from here; the two that spell RETRYING out (for a partial index) say
//! why, and the store's tests read every transition back through [`Status::parse`].

use ordermesh::proto::notification::v1 as pb;

/// The status of a notification, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Status {
    /// Claimed by a consumer, whose first send is under way (or was interrupted). While PENDING,
    /// `next_attempt_at_ms` holds the claim's lease, not a retry time.
    Pending,
    /// A send failed and may work later: waiting for `next_attempt_at_ms` and the retry loop.
    Retrying,
    /// Delivered.
    Sent,
    /// Parked on the channel's dead-letter topic (never actionable, or out of attempts).
    Failed,
}

impl Status {
    /// The text stored in the `status` column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Retrying => "RETRYING",
            Status::Sent => "SENT",
            Status::Failed => "FAILED",
        }
    }

    /// The status stored as `text`, if it is one.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(Status::Pending),
            "RETRYING" => Some(Status::Retrying),
            "SENT" => Some(Status::Sent),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }

    /// The status as ListNotifications shows it.
    pub(crate) fn to_proto(self) -> pb::NotificationStatus {
        match self {
            Status::Pending => pb::NotificationStatus::Pending,
            Status::Retrying => pb::NotificationStatus::Retrying,
            Status::Sent => pb::NotificationStatus::Sent,
            Status::Failed => pb::NotificationStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_its_stored_text_and_proto_value() {
        // The texts existing databases hold (and the migrations' CHECK allows): never to change.
        let table = [
            (Status::Pending, "PENDING", pb::NotificationStatus::Pending),
            (
                Status::Retrying,
                "RETRYING",
                pb::NotificationStatus::Retrying,
            ),
            (Status::Sent, "SENT", pb::NotificationStatus::Sent),
            (Status::Failed, "FAILED", pb::NotificationStatus::Failed),
        ];
        for (status, text, proto) in table {
            assert_eq!(status.as_str(), text);
            assert_eq!(Status::parse(text), Some(status), "{text} reads back");
            assert_eq!(status.to_proto(), proto);
        }
    }

    #[test]
    fn text_that_is_no_status_is_refused() {
        for text in ["", "pending", "Sent", "DELIVERED", "FAILED "] {
            assert_eq!(Status::parse(text), None, "{text:?}");
        }
    }
}
