use super::*;
use crate::protocol::codec::samples::publish_properties;
use crate::protocol::MqttString;
use std::time::Duration;

fn s(text: &str) -> MqttString {
    MqttString::from_str_checked(text).unwrap()
}

#[test]
fn carried_properties_round_trip_with_user_properties_in_order() {
    let now = Instant::now();
    let mut props = Props::from(publish_properties());
    props.user_properties = vec![(s("b"), s("1")), (s("a"), s("2")), (s("b"), s("3"))];
    let value = encode(&props, None, now).unwrap().unwrap();
    assert!(value.starts_with("1:"));
    let back = decode(&value).unwrap();
    assert_eq!(back.payload_format_indicator, Some(1));
    assert_eq!(back.content_type, props.content_type);
    assert_eq!(back.response_topic, props.response_topic);
    assert_eq!(back.correlation_data, props.correlation_data);
    assert_eq!(back.user_properties, props.user_properties);
}

#[test]
fn topic_alias_and_subscription_identifiers_stay_on_their_hop() {
    let props = Props::from(publish_properties());
    let back = decode(&encode(&props, None, Instant::now()).unwrap().unwrap()).unwrap();
    assert_eq!(back.topic_alias, None);
    assert!(back.subscription_identifiers.is_empty());
}

#[test]
fn mqtt_3_3_2_6_expiry_carries_the_time_left_rounded_up() {
    let now = Instant::now();
    let props = Props::default();
    let at = now + Duration::from_millis(7_300);
    let back = decode(&encode(&props, Some(at), now).unwrap().unwrap()).unwrap();
    assert_eq!(back.message_expiry_interval, Some(8));
    // The interval as received is not what counts: only the deadline is.
    let mut stale = Props::default();
    stale.message_expiry_interval = Some(3600);
    let back = decode(&encode(&stale, Some(at), now).unwrap().unwrap()).unwrap();
    assert_eq!(back.message_expiry_interval, Some(8));
}

#[test]
fn mqtt_3_3_2_5_an_expired_message_is_not_forwarded() {
    let now = Instant::now();
    assert_eq!(encode(&Props::default(), Some(now), now), Err(Expired));
}

#[test]
fn a_message_without_carried_properties_has_no_header() {
    let now = Instant::now();
    assert_eq!(encode(&Props::default(), None, now), Ok(None));
    let mut per_hop = Props::default();
    per_hop.topic_alias = Some(2);
    per_hop.subscription_identifiers = vec![5];
    assert_eq!(encode(&per_hop, None, now), Ok(None));
}

#[test]
fn values_this_node_cannot_read_are_refused_not_panicked_on() {
    let good = encode(&Props::from(publish_properties()), None, Instant::now())
        .unwrap()
        .unwrap();
    let encoded = good.strip_prefix("1:").unwrap();
    let list = URL_SAFE_NO_PAD.decode(encoded).unwrap();
    let mut bad = vec![
        String::new(),
        "2:AA".to_string(),
        "1:!!".to_string(),
        format!("1:{}", URL_SAFE_NO_PAD.encode([5u8, 0x23, 0, 1])), // topic alias
        format!("1:{}", URL_SAFE_NO_PAD.encode([2u8, 0x0B, 1])),    // subscription id
        format!("1:{}", URL_SAFE_NO_PAD.encode([2u8, 0x11, 0])),    // not a PUBLISH property
        format!("1:{}", URL_SAFE_NO_PAD.encode([0u8, 7])),          // trailing bytes
    ];
    // Every cut of a good list.
    for cut in 0..list.len() {
        bad.push(format!("1:{}", URL_SAFE_NO_PAD.encode(&list[..cut])));
    }
    for value in bad {
        assert!(decode(&value).is_err(), "{value:?} was accepted");
    }
}
