//! The NotificationService gRPC implementation: what was sent, to whom, from which event.

use ordermesh::{
    paging::PageRequest, proto::notification::v1 as pb,
    proto::notification::v1::ListNotificationsRequest,
    proto::notification::v1::ListNotificationsResponse, proto::notification::v1::Notification,
    proto::notification::v1::notification_service_server::NotificationService, timestamp,
};
use tonic::{Request, Response, Status};
use tonic_types::FieldViolation;

use crate::{
    channel::Channel,
    status,
    store::{Filter, NotificationRow, Store},
};

#[derive(Debug, Clone)]
pub(crate) struct NotificationApi {
    store: Store,
}

impl NotificationApi {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let req = request.into_inner();
        let mut violations = Vec::new();
        if req.order_id.len() > 128 {
            violations.push(FieldViolation::new("order_id", "at most 128 characters"));
        }
        let channel = match pb::Channel::try_from(req.channel) {
            Ok(pb::Channel::Unspecified) => None,
            Ok(channel) => Channel::from_proto(channel),
            Err(_) => {
                violations.push(FieldViolation::new(
                    "channel",
                    "must be CHANNEL_EMAIL, CHANNEL_SMS or unset",
                ));
                None
            }
        };
        let page = PageRequest::parse(req.page_size, &req.page_token, &mut violations);
        if !violations.is_empty() {
            return Err(ordermesh::bad_request::invalid_argument(violations));
        }
        let filter = Filter {
            order_id: (!req.order_id.is_empty()).then_some(req.order_id),
            channel,
        };
        let mut rows = self
            .store
            .list(&filter, page.after, page.fetch_limit())
            .await
            .map_err(|error| {
                tracing::error!(%error, "notification store failed");
                Status::unavailable("notification store unavailable, retry later")
            })?;
        let next_page_token = page.finish(&mut rows, |r| r.seq);
        Ok(Response::new(ListNotificationsResponse {
            notifications: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

fn to_proto(row: NotificationRow) -> Notification {
    Notification {
        notification_id: row.notification_id,
        event_id: row.event_id,
        order_id: row.order_id,
        channel: row.channel.to_proto().into(),
        recipient: row.recipient,
        status: row.status.to_proto().into(),
        attempts: row.attempts,
        created_at: Some(timestamp::from_millis(row.created_at_ms)),
        sent_at: row.sent_at_ms.map(timestamp::from_millis),
        source_topic: row.source_topic,
        source_partition: row.source_partition,
        source_offset: row.source_offset,
        last_error: row.last_error.unwrap_or_default(),
        // A PENDING claim keeps its lease there; only a retry has a next attempt.
        next_attempt_at: row
            .next_attempt_at_ms
            .filter(|_| row.status == status::Status::Retrying)
            .map(timestamp::from_millis),
    }
}
