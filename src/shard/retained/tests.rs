//! Tests of the retained index: matches, order and resumed walks checked against
//! `filter_matches` over a plain list, and pruning after removal.

use super::*;
use crate::protocol::topic::filter_matches;
use crate::protocol::{MqttString, Publish, QoS};
use bytes::Bytes;
use std::collections::BTreeSet;

impl Retained {
    /// Checks that `len` counts the stored messages and that no node but the root is empty
    /// (removal pruned its branch).
    fn assert_invariants(&self) {
        let mut count = 0;
        let mut pending = vec![(&self.root, true)];
        while let Some((node, is_root)) = pending.pop() {
            assert!(
                is_root || node.message.is_some() || !node.children.is_empty(),
                "empty node left behind"
            );
            count += usize::from(node.message.is_some());
            pending.extend(node.children.values().map(|child| (child, false)));
        }
        assert_eq!(count, self.len, "len disagrees with the stored messages");
    }
}

fn message(topic: &str, payload: &str) -> Message {
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: MqttString::from_str_checked(topic).unwrap(),
        pkid: 0,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    };
    Message::received(publish, 0)
}

fn topics(out: &[Message]) -> Vec<String> {
    out.iter()
        .map(|m| m.publish.topic.as_str().to_string())
        .collect()
}

/// The reference: every stored topic matching `filter`, after `after`, in topic order.
fn reference(stored: &BTreeSet<String>, filter: &str, after: Option<&str>) -> Vec<String> {
    let mut expected: Vec<String> = stored
        .iter()
        .filter(|t| filter_matches(filter, t))
        .filter(|t| after.is_none_or(|a| topic_order(t, a) == Ordering::Greater))
        .cloned()
        .collect();
    expected.sort_by(|a, b| topic_order(a, b));
    expected
}

fn all(retained: &Retained, filter: &str, after: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    assert!(retained.collect(filter, after, usize::MAX, &mut out));
    topics(&out)
}

#[test]
fn filters_match_as_the_reference_does() {
    let stored = [
        "a", "a/b", "a/b/c", "a/c", "a//c", "/a", "/", "b/b", "a-b", "a/b-c", "$SYS/x", "$SYS",
        "a/b/c/d", "x/y/z",
    ];
    let mut retained = Retained::default();
    let set: BTreeSet<String> = stored.iter().map(|t| t.to_string()).collect();
    for topic in stored {
        retained.set(topic, Some(message(topic, "v")));
    }
    retained.assert_invariants();
    let filters = [
        "#",
        "+",
        "a",
        "a/#",
        "a/+",
        "a/+/c",
        "+/+",
        "/#",
        "+/b/#",
        "$SYS/#",
        "$SYS",
        "+/#",
        "a/b/c/d/#",
        "nothing/#",
        "a//+",
        "#/x",
    ];
    for filter in filters {
        assert_eq!(
            all(&retained, filter, None),
            reference(&set, filter, None),
            "filter {filter}"
        );
    }
}

#[test]
fn mqtt_4_7_2_1_wildcard_led_filters_skip_dollar_topics() {
    let mut retained = Retained::default();
    retained.set("$SYS/load", Some(message("$SYS/load", "1")));
    retained.set("site/load", Some(message("site/load", "1")));
    assert_eq!(all(&retained, "#", None), ["site/load"]);
    assert_eq!(all(&retained, "+/load", None), ["site/load"]);
    assert_eq!(all(&retained, "$SYS/#", None), ["$SYS/load"]);
}

#[test]
fn a_walk_resumed_after_each_batch_yields_every_match_once_in_order() {
    let mut retained = Retained::default();
    let mut set = BTreeSet::new();
    for i in 0..40 {
        for j in 0..7 {
            let topic = format!("s/{i}/{j}");
            retained.set(&topic, Some(message(&topic, "v")));
            set.insert(topic);
        }
        let parent = format!("s/{i}");
        retained.set(&parent, Some(message(&parent, "v")));
        set.insert(parent);
    }
    for filter in ["s/#", "s/+/3", "s/+", "#", "s/17/#"] {
        for batch in [1, 2, 5, 64] {
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut out = Vec::new();
                let done = retained.collect(filter, after.as_deref(), batch, &mut out);
                assert!(out.len() <= batch);
                got.extend(topics(&out));
                after = got.last().cloned();
                if done {
                    break;
                }
            }
            assert_eq!(got, reference(&set, filter, None), "{filter} by {batch}");
        }
    }
}

#[test]
fn a_walk_resumed_after_a_removed_topic_goes_on_from_its_place() {
    let mut retained = Retained::default();
    for topic in ["r/1", "r/2", "r/2/x", "r/3"] {
        retained.set(topic, Some(message(topic, "v")));
    }
    retained.set("r/2", None);
    retained.set("r/2/x", Some(message("r/2/x", "")));
    retained.assert_invariants();
    assert_eq!(all(&retained, "r/#", Some("r/2")), ["r/3"]);
    assert_eq!(all(&retained, "r/#", Some("r/1")), ["r/3"]);
    assert_eq!(all(&retained, "r/+", Some("r/0")), ["r/1", "r/3"]);
}

#[test]
fn mqtt_3_3_1_10_an_empty_payload_removes_the_topic_and_prunes_its_branch() {
    let mut retained = Retained::default();
    for topic in ["a/b/c/d", "a/b", "a/x/y"] {
        retained.set(topic, Some(message(topic, "v")));
    }
    retained.set("a/b/c/d", Some(message("a/b/c/d", "")));
    retained.assert_invariants();
    assert_eq!(retained.len(), 2);
    retained.set("a/b", None);
    retained.set("a/x/y", None);
    retained.set("never/stored", None);
    retained.assert_invariants();
    assert!(retained.is_empty());
    assert!(retained.root.children.is_empty());
}

#[test]
fn randomized_against_the_reference() {
    // A small xorshift: deterministic, no extra crate.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let levels = ["a", "b", "", "$x", "c-d"];
    let mut retained = Retained::default();
    let mut set = BTreeSet::new();
    for _ in 0..3000 {
        let depth = 1 + next(4);
        let topic: Vec<&str> = (0..depth)
            .map(|_| levels[next(levels.len() as u64) as usize])
            .collect();
        let topic = topic.join("/");
        if next(3) == 0 {
            retained.set(&topic, None);
            set.remove(&topic);
        } else {
            retained.set(&topic, Some(message(&topic, "v")));
            set.insert(topic);
        }
    }
    retained.assert_invariants();
    assert_eq!(retained.len(), set.len());
    let filters = [
        "#", "a/#", "+/+", "+/b/#", "a/+/c-d", "/#", "+", "$x/#", "b//+/#",
    ];
    let afters: Vec<Option<&str>> = vec![None, Some("a"), Some("a/b"), Some("b//a"), Some("c-d")];
    for filter in filters {
        for after in &afters {
            assert_eq!(
                all(&retained, filter, *after),
                reference(&set, filter, *after),
                "{filter} after {after:?}"
            );
        }
    }
}
