//! The channels a customer is notified on. How each sends is in `delivery`.

use ordermesh::proto::notification::v1 as pb;

use crate::notice::Notice;

/// A notification channel. Each has its own consumer group, so each reads every event on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Email, Channel::Sms];

    /// The name stored in the database and shown in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "EMAIL" => Some(Channel::Email),
            "SMS" => Some(Channel::Sms),
            _ => None,
        }
    }

    pub(crate) fn to_proto(self) -> pb::Channel {
        match self {
            Channel::Email => pb::Channel::Email,
            Channel::Sms => pb::Channel::Sms,
        }
    }

    pub(crate) fn from_proto(channel: pb::Channel) -> Option<Self> {
        match channel {
            pb::Channel::Email => Some(Channel::Email),
            pb::Channel::Sms => Some(Channel::Sms),
            pb::Channel::Unspecified => None,
        }
    }

    /// Where this channel sends to for `event`, if the event has it.
    pub(crate) fn recipient(self, event: &Notice) -> Option<String> {
        let customer = event.customer()?;
        let to = match self {
            Channel::Email => &customer.email,
            Channel::Sms => &customer.phone,
        };
        (!to.is_empty()).then(|| to.clone())
    }
}
