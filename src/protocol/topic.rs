//! Topic names and topic filters: parse, don't validate.
//!
//! A [`TopicName`] (what a PUBLISH is sent to) and a [`TopicFilter`] (what a SUBSCRIBE asks for)
//! can only be built by parsing, so holding one proves it follows MQTT's rules (section 4.7).
//! Both keep their text as a shared [`MqttString`], so cloning one on the publish path is a
//! reference count, never a copy.

use std::fmt;

use bytes::Bytes;

use super::packet::MqttString;

/// Longest topic name or filter, in bytes: an MQTT string's length is a u16 [MQTT-4.7.3-3].
pub const TOPIC_BYTES_MAX: usize = u16::MAX as usize;

/// The prefix that makes a filter a shared subscription [MQTT-4.8.2-1].
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or topic filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicError {
    /// Empty text [MQTT-4.7.3-1].
    Empty,
    /// Longer than [`TOPIC_BYTES_MAX`] bytes [MQTT-4.7.3-3].
    TooLong {
        /// The length that was offered, in bytes.
        len: usize,
    },
    /// Contains U+0000 [MQTT-4.7.3-2].
    NullCharacter,
    /// A topic name contains `+` or `#` [MQTT-3.3.2-2].
    WildcardInName,
    /// `#` is not the whole last level of a filter [MQTT-4.7.1-2].
    MisplacedHash,
    /// `+` is not a whole level of a filter [MQTT-4.7.1-3].
    MisplacedPlus,
    /// `$share/` is followed by an empty share name [MQTT-4.8.2-1].
    EmptyShareGroup,
    /// The share name contains `+` or `#` [MQTT-4.8.2-2].
    InvalidShareGroup,
    /// The share name is not followed by `/` and a filter [MQTT-4.8.2-2].
    MissingSharedFilter,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => f.write_str("topic is empty"),
            TopicError::TooLong { len } => {
                write!(f, "topic is {len} bytes, over {TOPIC_BYTES_MAX}")
            }
            TopicError::NullCharacter => f.write_str("topic contains U+0000"),
            TopicError::WildcardInName => f.write_str("topic name contains a wildcard"),
            TopicError::MisplacedHash => f.write_str("'#' is not the whole last level"),
            TopicError::MisplacedPlus => f.write_str("'+' is not a whole level"),
            TopicError::EmptyShareGroup => f.write_str("shared subscription has no share name"),
            TopicError::InvalidShareGroup => {
                f.write_str("share name contains a wildcard character")
            }
            TopicError::MissingSharedFilter => {
                f.write_str("shared subscription has no topic filter")
            }
        }
    }
}

impl std::error::Error for TopicError {}

/// Checks the rules that names and filters share: non-empty, bounded, no U+0000.
fn check_common(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong { len: text.len() });
    }
    if text.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Wraps bytes already known to be valid UTF-8 without U+0000 (they came from a `&str` or an
/// `MqttString` that `check_common` accepted).
fn to_mqtt_string(bytes: Bytes) -> Result<MqttString, TopicError> {
    // `from_bytes` only fails on bad UTF-8 or U+0000, both ruled out by the caller.
    MqttString::from_bytes(bytes).ok_or(TopicError::NullCharacter)
}

/// Checks a topic name: the common rules, and no wildcards [MQTT-3.3.2-2].
pub fn check_name(text: &str) -> Result<(), TopicError> {
    check_common(text)?;
    if text.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a SUBSCRIBE/UNSUBSCRIBE topic filter, shared or not.
pub fn check_filter(text: &str) -> Result<(), TopicError> {
    check_common(text)?;
    match text.strip_prefix(SHARE_PREFIX) {
        Some(rest) => check_wildcards(split_share(rest)?.1),
        None => check_wildcards(text),
    }
}

/// The share name and the filter part of a valid shared subscription
/// `$share/{group}/{filter}`; None for a plain filter.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    split_share(filter.strip_prefix(SHARE_PREFIX)?).ok()
}

/// The part of a valid filter matched against topic names: what follows the share name of a
/// shared subscription, else the whole filter.
pub fn filter_part(filter: &str) -> &str {
    split_shared(filter).map_or(filter, |(_, part)| part)
}

/// A topic name, as carried by PUBLISH: no wildcards [MQTT-3.3.2-2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Parses a topic name, copying the text once into a shared buffer.
    pub fn parse(text: &str) -> Result<TopicName, TopicError> {
        Self::check(text)?;
        let bytes = Bytes::copy_from_slice(text.as_bytes());
        Ok(TopicName(to_mqtt_string(bytes)?))
    }

    /// Parses a topic name decoded from a packet, keeping its buffer (no copy).
    pub fn from_mqtt_string(text: MqttString) -> Result<TopicName, TopicError> {
        Self::check(text.as_str())?;
        Ok(TopicName(text))
    }

    fn check(text: &str) -> Result<(), TopicError> {
        check_name(text)
    }

    /// The text of the name.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The name as a shared string (cloning it is a reference count).
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    /// The name as a shared string.
    pub fn into_mqtt_string(self) -> MqttString {
        self.0
    }

    /// Whether the name starts with `$`, which wildcard-led filters never match [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.as_str().starts_with('$')
    }

    /// The levels, split on `/`; `/finance` has the levels `""` and `"finance"`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.as_str().split('/')
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of a shared subscription `$share/{group}/{filter}` [MQTT-4.8.2-1].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SharedFilter {
    group: MqttString,
    filter: MqttString,
}

impl SharedFilter {
    /// The share name: non-empty, without `/`, `+` or `#`.
    pub fn group(&self) -> &str {
        self.group.as_str()
    }

    /// The filter part, matched against topic names.
    pub fn filter(&self) -> &str {
        self.filter.as_str()
    }
}

/// A topic filter, as carried by SUBSCRIBE and UNSUBSCRIBE, possibly a shared subscription.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    /// The whole text, `$share/` prefix included.
    text: MqttString,
    /// Present for `$share/{group}/{filter}`; its strings are slices of `text`.
    shared: Option<SharedFilter>,
}

impl TopicFilter {
    /// Parses a topic filter, copying the text once into a shared buffer.
    pub fn parse(text: &str) -> Result<TopicFilter, TopicError> {
        check_common(text)?;
        Self::from_checked(to_mqtt_string(Bytes::copy_from_slice(text.as_bytes()))?)
    }

    /// Parses a topic filter decoded from a packet, keeping its buffer (no copy).
    pub fn from_mqtt_string(text: MqttString) -> Result<TopicFilter, TopicError> {
        check_common(text.as_str())?;
        Self::from_checked(text)
    }

    /// Splits off a `$share/{group}/` prefix, then checks the filter part's wildcards.
    fn from_checked(text: MqttString) -> Result<TopicFilter, TopicError> {
        let Some(rest) = text.as_str().strip_prefix(SHARE_PREFIX) else {
            check_wildcards(text.as_str())?;
            return Ok(TopicFilter { text, shared: None });
        };
        let (group, filter) = split_share(rest)?;
        check_wildcards(filter)?;
        let group_start = SHARE_PREFIX.len();
        let filter_start = group_start + group.len() + 1;
        let bytes = text.as_bytes();
        let shared = SharedFilter {
            group: to_mqtt_string(bytes.slice(group_start..filter_start - 1))?,
            filter: to_mqtt_string(bytes.slice(filter_start..))?,
        };
        Ok(TopicFilter {
            text,
            shared: Some(shared),
        })
    }

    /// The whole text as received, `$share/` prefix included.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The whole text as a shared string.
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.text
    }

    /// The shared-subscription parts, if this is `$share/{group}/{filter}`.
    pub fn shared(&self) -> Option<&SharedFilter> {
        self.shared.as_ref()
    }

    /// The share name of a shared subscription.
    pub fn share_group(&self) -> Option<&str> {
        self.shared.as_ref().map(SharedFilter::group)
    }

    /// The part matched against topic names: the whole text, or what follows the share name.
    pub fn filter(&self) -> &str {
        match &self.shared {
            Some(shared) => shared.filter(),
            None => self.text.as_str(),
        }
    }

    /// Whether the filter part has a `+` or `#` level.
    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// The levels of the filter part, split on `/`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.filter().split('/')
    }

    /// Whether `topic` matches the filter part. This is the plain reference the trie is
    /// checked against; the broker matches through the trie.
    pub fn matches(&self, topic: &TopicName) -> bool {
        filter_matches(self.filter(), topic.as_str())
    }
}

/// Whether topic name `topic` matches filter `filter` (the filter part, without `$share/`),
/// both already valid. The plain reference the tries are checked against.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Wildcard-led filters leave `$` topics alone [MQTT-4.7.2-1].
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            // `#` also matches the parent level: `sport/#` matches `sport` [MQTT-4.7.1-2].
            return true;
        }
        match topic_levels.next() {
            Some(name) if level == "+" || level == name => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Splits `{group}/{filter}`, the text after `$share/`, checking the group [MQTT-4.8.2-2].
fn split_share(rest: &str) -> Result<(&str, &str), TopicError> {
    let Some((group, filter)) = rest.split_once('/') else {
        if rest.is_empty() {
            return Err(TopicError::EmptyShareGroup);
        }
        return Err(TopicError::MissingSharedFilter);
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareGroup);
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareGroup);
    }
    if filter.is_empty() {
        return Err(TopicError::MissingSharedFilter);
    }
    Ok((group, filter))
}

/// Checks that `#` is only the whole last level and `+` only a whole level.
fn check_wildcards(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> TopicName {
        TopicName::parse(text).expect("valid topic name in test")
    }

    fn filter(text: &str) -> TopicFilter {
        TopicFilter::parse(text).expect("valid topic filter in test")
    }

    fn matches(filter_text: &str, topic: &str) -> bool {
        filter(filter_text).matches(&name(topic))
    }

    #[test]
    fn mqtt_4_7_3_1_names_and_filters_are_not_empty() {
        assert_eq!(TopicName::parse(""), Err(TopicError::Empty));
        assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn mqtt_4_7_3_2_no_null_character() {
        assert_eq!(TopicName::parse("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(TopicFilter::parse("a/\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn mqtt_4_7_3_3_at_most_65535_bytes() {
        let longest = "a".repeat(TOPIC_BYTES_MAX);
        assert!(TopicName::parse(&longest).is_ok());
        assert!(TopicFilter::parse(&longest).is_ok());
        let over = "a".repeat(TOPIC_BYTES_MAX + 1);
        let too_long = TopicError::TooLong { len: over.len() };
        assert_eq!(TopicName::parse(&over), Err(too_long));
        assert_eq!(TopicFilter::parse(&over), Err(too_long));
    }

    #[test]
    fn mqtt_3_3_2_2_name_has_no_wildcards() {
        for text in ["a/+", "#", "a/#", "+", "sport+", "a#b"] {
            assert_eq!(
                TopicName::parse(text),
                Err(TopicError::WildcardInName),
                "{text}"
            );
        }
    }

    #[test]
    fn mqtt_4_7_3_names_may_hold_spaces_slashes_and_are_case_sensitive() {
        for text in ["/", "//", "a b", "/finance", "finance/", "ACCOUNTS"] {
            assert!(TopicName::parse(text).is_ok(), "{text}");
        }
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("/finance", "finance"));
        assert!(!matches("finance/", "finance"));
    }

    #[test]
    fn name_from_mqtt_string_keeps_the_buffer() {
        let text = MqttString::from("sensors/1/temp");
        let topic = TopicName::from_mqtt_string(text.clone()).expect("valid");
        assert_eq!(
            topic.as_mqtt_string().as_bytes().as_ptr(),
            text.as_bytes().as_ptr()
        );
        let wild = MqttString::from("sensors/+");
        assert_eq!(
            TopicName::from_mqtt_string(wild),
            Err(TopicError::WildcardInName)
        );
    }

    #[test]
    fn name_levels_and_is_system() {
        let topic = name("/finance");
        assert_eq!(topic.levels().collect::<Vec<_>>(), ["", "finance"]);
        assert!(!topic.is_system());
        assert!(name("$SYS/broker").is_system());
    }

    #[test]
    fn mqtt_4_7_1_2_hash_valid_forms() {
        for text in ["#", "sport/tennis/#", "/#", "+/#"] {
            assert!(TopicFilter::parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn mqtt_4_7_1_2_hash_must_be_last() {
        let err = Err(TopicError::MisplacedHash);
        assert_eq!(TopicFilter::parse("sport/tennis/#/ranking"), err);
        assert_eq!(TopicFilter::parse("#/"), err);
    }

    #[test]
    fn mqtt_4_7_1_2_hash_must_be_whole_level() {
        let err = Err(TopicError::MisplacedHash);
        assert_eq!(TopicFilter::parse("sport/tennis#"), err);
        assert_eq!(TopicFilter::parse("sport/#a"), err);
    }

    #[test]
    fn mqtt_4_7_1_2_hash_matches_parent_and_children() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn mqtt_4_7_1_3_plus_valid_forms() {
        for text in ["+", "+/tennis/#", "sport/+/player1", "+/+", "/+"] {
            assert!(TopicFilter::parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn mqtt_4_7_1_3_plus_must_be_whole_level() {
        let err = Err(TopicError::MisplacedPlus);
        assert_eq!(TopicFilter::parse("sport+"), err);
        assert_eq!(TopicFilter::parse("sport/+tennis"), err);
        assert_eq!(TopicFilter::parse("++"), err);
    }

    #[test]
    fn mqtt_4_7_1_3_plus_matches_exactly_one_level() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
    }

    #[test]
    fn mqtt_4_7_1_3_empty_levels_are_levels() {
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/+", "/"));
    }

    #[test]
    fn mqtt_4_7_2_1_wildcard_led_filters_skip_dollar_topics() {
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_rule_applies_to_first_level_only() {
        assert!(matches("a/+", "a/$b"));
        assert!(matches("a/#", "a/$b/c"));
    }

    #[test]
    fn mqtt_4_8_2_1_shared_subscription_parts() {
        let shared = filter("$share/group1/sport/+/score");
        assert_eq!(shared.share_group(), Some("group1"));
        assert_eq!(shared.filter(), "sport/+/score");
        assert_eq!(shared.as_str(), "$share/group1/sport/+/score");
        assert!(shared.has_wildcards());
        assert!(shared.matches(&name("sport/tennis/score")));
        let parts = shared.shared().expect("shared");
        assert_eq!((parts.group(), parts.filter()), ("group1", "sport/+/score"));
    }

    #[test]
    fn mqtt_4_8_2_1_share_name_not_empty() {
        let err = Err(TopicError::EmptyShareGroup);
        assert_eq!(TopicFilter::parse("$share//a"), err);
        assert_eq!(TopicFilter::parse("$share/"), err);
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_has_no_wildcards() {
        let err = Err(TopicError::InvalidShareGroup);
        assert_eq!(TopicFilter::parse("$share/g+/a"), err);
        assert_eq!(TopicFilter::parse("$share/#/a"), err);
    }

    #[test]
    fn mqtt_4_8_2_2_share_name_followed_by_slash_and_filter() {
        let err = Err(TopicError::MissingSharedFilter);
        assert_eq!(TopicFilter::parse("$share/group"), err);
        assert_eq!(TopicFilter::parse("$share/group/"), err);
    }

    #[test]
    fn shared_filter_part_follows_wildcard_rules() {
        let err = Err(TopicError::MisplacedHash);
        assert_eq!(TopicFilter::parse("$share/g/a/#/b"), err);
        assert!(filter("$share/g/#").matches(&name("a/b")));
        assert!(!filter("$share/g/#").matches(&name("$SYS/x")));
    }

    #[test]
    fn dollar_share_without_slash_is_an_ordinary_filter() {
        let plain = filter("$share");
        assert_eq!(plain.share_group(), None);
        assert!(plain.matches(&name("$share")));
    }

    #[test]
    fn filter_from_mqtt_string_slices_the_buffer() {
        let text = MqttString::from("$share/g/a/b");
        let parsed = TopicFilter::from_mqtt_string(text.clone()).expect("valid");
        let base = text.as_bytes().as_ptr() as usize;
        let part = parsed.shared().expect("shared").filter.as_bytes().as_ptr() as usize;
        assert_eq!(part - base, "$share/g/".len());
    }

    #[test]
    fn filter_levels_and_has_wildcards() {
        assert_eq!(filter("a//+").levels().collect::<Vec<_>>(), ["a", "", "+"]);
        assert!(!filter("a/b").has_wildcards());
        assert!(filter("a/#").has_wildcards());
    }

    #[test]
    fn errors_display_in_plain_words() {
        assert_eq!(
            TopicError::MisplacedHash.to_string(),
            "'#' is not the whole last level"
        );
        assert_eq!(
            TopicError::TooLong { len: 70000 }.to_string(),
            "topic is 70000 bytes, over 65535"
        );
    }
}
