//! Syntax checks of topic names and topic filters (4.7, 4.8.2). Self-contained, so that
//! `protocol::topic` can build its newtypes on them.

use super::error::DecodeError;

/// Prefix of a shared subscription's topic filter (4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Whether `name` is a valid non-empty topic name: no `+` or `#` [MQTT-3.3.2-2],
/// at least one character [MQTT-4.7.3-1]. (U+0000 is excluded by `MqttString` already.)
pub fn validate_topic_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#'])
}

/// Whether `filter` is a valid (non-shared) topic filter: non-empty [MQTT-4.7.3-1], `#` only
/// as the whole last level [MQTT-4.7.1-1], `+` only as a whole level [MQTT-4.7.1-2].
pub fn validate_topic_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Splits `$share/{group}/{filter}` into group and filter; `None` if `filter` is not shared.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// Checks a SUBSCRIBE/UNSUBSCRIBE topic filter, shared or not. For `$share/{group}/{filter}`
/// the group is non-empty with no `/`, `+` or `#` and the filter is valid [MQTT-4.8.2-1],
/// [MQTT-4.8.2-2].
pub fn check_subscription_filter(filter: &str) -> Result<(), DecodeError> {
    match split_shared(filter) {
        Some((group, inner)) => {
            let group_ok = !group.is_empty() && !group.contains(['+', '#']);
            if group_ok && validate_topic_filter(inner) {
                Ok(())
            } else {
                Err(DecodeError::InvalidSharedSubscription)
            }
        }
        None if validate_topic_filter(filter) => Ok(()),
        None => Err(DecodeError::InvalidTopicFilter),
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
