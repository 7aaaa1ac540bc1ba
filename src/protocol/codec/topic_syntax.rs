//! What the decoder checks of topic names and filters, as decode errors. The rules are
//! `protocol::topic`'s (the one parser of names and filters); this maps its verdicts onto the
//! reason codes a malformed packet gets.

use super::error::DecodeError;
use crate::protocol::topic::{self, TopicError};

/// Whether `name` is a valid topic name (see `topic::check_name`).
pub fn validate_topic_name(name: &str) -> bool {
    topic::check_name(name).is_ok()
}

/// Whether `filter` is a valid topic filter, shared or not (see `topic::check_filter`).
pub fn validate_topic_filter(filter: &str) -> bool {
    topic::check_filter(filter).is_ok()
}

/// Checks a SUBSCRIBE/UNSUBSCRIBE topic filter, shared or not: a bad `$share/{group}/{filter}`
/// is an invalid shared subscription [MQTT-4.8.2-1], [MQTT-4.8.2-2], anything else bad an
/// invalid topic filter.
pub fn check_subscription_filter(filter: &str) -> Result<(), DecodeError> {
    match topic::check_filter(filter) {
        Ok(()) => Ok(()),
        Err(
            TopicError::EmptyShareGroup
            | TopicError::InvalidShareGroup
            | TopicError::MissingSharedFilter,
        ) => Err(DecodeError::InvalidSharedSubscription),
        Err(_) if filter.starts_with(topic::SHARE_PREFIX) => {
            Err(DecodeError::InvalidSharedSubscription)
        }
        Err(_) => Err(DecodeError::InvalidTopicFilter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for good in ["a", "a/b", "/", "a//b", "$SYS/x", " "] {
            assert!(validate_topic_name(good), "{good}");
        }
        for bad in ["", "a/+", "#", "a/b#", "+"] {
            assert!(!validate_topic_name(bad), "{bad}");
        }
    }

    #[test]
    fn topic_filters() {
        for good in [
            "#", "+", "a/#", "a/+/b", "+/+", "/", "a//#", "+/#", "$SYS/#",
        ] {
            assert!(validate_topic_filter(good), "{good}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/+b", "a/b+/c", "##"] {
            assert!(!validate_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(check_subscription_filter("$share/g/a/+"), Ok(()));
        assert_eq!(check_subscription_filter("$share/g/#"), Ok(()));
        let shared_error = Err(DecodeError::InvalidSharedSubscription);
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/g+/a",
            "$share/#/a",
            "$share/g/a#",
        ] {
            assert_eq!(check_subscription_filter(bad), shared_error, "{bad}");
        }
        assert_eq!(check_subscription_filter("$shared/x"), Ok(()));
        assert_eq!(
            check_subscription_filter("a/#/b"),
            Err(DecodeError::InvalidTopicFilter)
        );
    }
}
