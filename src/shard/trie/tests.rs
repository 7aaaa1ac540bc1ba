//! Tests of the subscription trie, including a randomized cross-check against
//! `TopicFilter::matches`.

use std::collections::HashMap;

use super::*;
use crate::protocol::topic::{TopicFilter, TopicName};

impl<K: Eq + Hash + Clone, V> Trie<K, V> {
    /// Checks that `len` counts the stored subscriptions, that no node but the root is
    /// empty (pruning worked) and that every subscriber index points at its entry.
    fn assert_invariants(&self) {
        let mut count = 0;
        let mut pending = vec![(&self.root, true)];
        while let Some((node, is_root)) = pending.pop() {
            assert!(is_root || !node.is_empty(), "empty node left behind");
            assert!(
                node.wild
                    .as_ref()
                    .is_none_or(|w| w.plus.is_some() || !w.hash.is_empty()),
                "empty wildcard box left behind"
            );
            for subscribers in [Some(&node.exact), node.hash()].into_iter().flatten() {
                count += subscribers.len();
                subscribers.assert_index();
            }
            node.for_each_child(|_, child| pending.push((child, false)));
        }
        assert_eq!(
            count, self.len,
            "len disagrees with the stored subscriptions"
        );
    }
}

impl<K: Eq + Hash + Clone, V> Subscribers<K, V> {
    fn assert_index(&self) {
        let Subscribers::Many(many) = self else {
            return;
        };
        assert_eq!(many.index.len(), many.entries.len());
        for (at, (key, _)) in many.entries.iter().enumerate() {
            assert_eq!(many.index.get(key), Some(&at));
        }
    }
}

fn matched(trie: &Trie<u32, u8>, topic: &str) -> Vec<(u32, u8)> {
    let mut found = Vec::new();
    trie.for_each_match(topic, |key, value| found.push((*key, *value)));
    found.sort_unstable();
    found
}

fn trie_of(filters: &[&str]) -> Trie<u32, u8> {
    let mut trie = Trie::new();
    for (key, filter) in filters.iter().enumerate() {
        let key = u32::try_from(key).expect("few filters");
        assert_eq!(trie.insert(filter, key, 0), None);
    }
    trie
}

/// Keys (positions in `filters`) of the filters that match `topic`.
fn keys(filters: &[&str], topic: &str) -> Vec<u32> {
    let trie = trie_of(filters);
    matched(&trie, topic)
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

#[test]
fn exact_filter_matches_only_itself() {
    let filters = ["a/b", "a", "a/b/c"];
    assert_eq!(keys(&filters, "a/b"), [0]);
    assert_eq!(keys(&filters, "a/c"), [] as [u32; 0]);
}

#[test]
fn mqtt_4_7_1_2_hash_matches_parent() {
    let filters = ["a/#", "#", "a/b/#"];
    assert_eq!(keys(&filters, "a"), [0, 1]);
    assert_eq!(keys(&filters, "a/b"), [0, 1, 2]);
    assert_eq!(keys(&filters, "a/b/c/d"), [0, 1, 2]);
    assert_eq!(keys(&filters, "b"), [1]);
}

#[test]
fn mqtt_4_7_1_3_plus_matches_one_level() {
    let filters = ["+/+", "/+", "+", "sport/+"];
    assert_eq!(keys(&filters, "/x"), [0, 1]);
    assert_eq!(keys(&filters, "x"), [2]);
    assert_eq!(keys(&filters, "sport"), [2]);
    assert_eq!(keys(&filters, "sport/"), [0, 3]);
    assert_eq!(keys(&filters, "a/b/c"), [] as [u32; 0]);
}

#[test]
fn mqtt_4_7_2_1_wildcards_at_first_level_skip_dollar_topics() {
    let filters = ["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+"];
    assert_eq!(keys(&filters, "$SYS/monitor/Clients"), [2, 3]);
    assert_eq!(keys(&filters, "$SYS"), [2]);
    assert_eq!(keys(&filters, "a/$SYS"), [0]);
    assert!(!trie_of(&["#", "+"]).has_match("$SYS"));
}

#[test]
fn overlapping_filters_are_each_reported() {
    let mut trie = Trie::new();
    for filter in ["a/b", "a/+", "a/#", "#", "+/b"] {
        trie.insert(filter, 7u32, 1u8);
    }
    trie.insert("a/b", 8, 2);
    assert_eq!(
        matched(&trie, "a/b"),
        [(7, 1), (7, 1), (7, 1), (7, 1), (7, 1), (8, 2)]
    );
}

#[test]
fn insert_replaces_and_returns_old_value() {
    let mut trie = Trie::new();
    assert_eq!(trie.insert("a/+", 1u32, 1u8), None);
    assert_eq!(trie.insert("a/+", 1, 2), Some(1));
    assert_eq!(trie.len(), 1);
    assert_eq!(trie.get("a/+", &1), Some(&2));
    assert_eq!(trie.get("a/b", &1), None);
    assert_eq!(matched(&trie, "a/x"), [(1, 2)]);
}

#[test]
fn remove_returns_value_and_prunes() {
    let mut trie = Trie::new();
    trie.insert("a/b/c/d", 1u32, 1u8);
    trie.insert("a/b", 2, 2);
    trie.insert("a/+/#", 3, 3);
    assert_eq!(trie.remove("a/b/c/d", &2), None);
    assert_eq!(trie.remove("a/b/c", &1), None);
    assert_eq!(trie.remove("a/b/c/d", &1), Some(1));
    trie.assert_invariants();
    assert_eq!(trie.remove("a/+/#", &3), Some(3));
    trie.assert_invariants();
    assert_eq!(trie.remove("a/b", &2), Some(2));
    trie.assert_invariants();
    assert!(trie.is_empty());
    assert_eq!(trie.root.child_count(), 0);
    assert!(!trie.has_match("a/b"));
}

#[test]
fn remove_keeps_shared_prefixes() {
    let mut trie = trie_of(&["a/b/c", "a/b/d", "#", "a/#"]);
    assert_eq!(trie.remove("a/b/c", &0), Some(0));
    assert_eq!(trie.remove("#", &2), Some(0));
    trie.assert_invariants();
    assert_eq!(matched(&trie, "a/b/d"), [(1, 0), (3, 0)]);
    assert_eq!(trie.remove("a/#", &3), Some(0));
    trie.assert_invariants();
    assert_eq!(matched(&trie, "a/b/d"), [(1, 0)]);
}

#[test]
fn many_subscribers_on_one_filter_use_the_index() {
    let mut trie = Trie::new();
    for key in 0..1000u32 {
        trie.insert("fleet/+/temp", key, 0u8);
    }
    assert_eq!(trie.insert("fleet/+/temp", 500, 9), Some(0));
    for key in (0..1000).step_by(3) {
        assert_eq!(trie.remove("fleet/+/temp", &key), Some(0));
    }
    trie.assert_invariants();
    assert_eq!(trie.len(), 1000 - 334);
    assert_eq!(trie.get("fleet/+/temp", &500), Some(&9));
    let mut count = 0;
    trie.for_each_match("fleet/7/temp", |_, _| count += 1);
    assert_eq!(count, 666);
}

#[test]
fn many_children_switch_to_a_map() {
    let mut trie = Trie::new();
    for key in 0..100u32 {
        trie.insert(&format!("site/{key}/temp"), key, 0u8);
    }
    assert_eq!(matched(&trie, "site/42/temp"), [(42, 0)]);
    for key in 0..100u32 {
        assert_eq!(trie.remove(&format!("site/{key}/temp"), &key), Some(0));
    }
    trie.assert_invariants();
    assert!(trie.is_empty());
}

#[test]
fn has_match_agrees_with_for_each_match() {
    let trie = trie_of(&["a/+/c", "x/#"]);
    assert!(trie.has_match("a/b/c"));
    assert!(trie.has_match("x"));
    assert!(!trie.has_match("a/b"));
    assert!(!Trie::<u32, u8>::new().has_match("a"));
}

#[test]
fn for_each_gives_back_every_filter() {
    let filters = ["#", "a/#", "a/+/c", "/", "+", "a"];
    let trie = trie_of(&filters);
    let mut seen = Vec::new();
    trie.for_each(|filter, key, _| seen.push((filter.to_owned(), *key)));
    seen.sort_unstable_by_key(|(_, key)| *key);
    let expected = filters.iter().enumerate();
    let expected: Vec<_> = expected.map(|(k, f)| ((*f).to_owned(), k as u32)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn deep_filters_neither_recurse_nor_overflow() {
    let deep = "/".repeat(200_000);
    let mut trie = Trie::new();
    trie.insert(&deep, 1u32, 0u8);
    trie.insert(&format!("{deep}/#"), 2, 0);
    assert_eq!(matched(&trie, &deep), [(1, 0), (2, 0)]);
    let plus_deep = vec!["+"; 50_000].join("/");
    trie.insert(&plus_deep, 3, 0);
    assert!(trie.has_match(&"/".repeat(49_999)));
    assert_eq!(trie.remove(&deep, &1), Some(0));
    trie.assert_invariants();
    drop(trie);
}

/// A xorshift64 generator, so the randomized test needs no crate and replays from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

fn random_topic(rng: &mut XorShift) -> String {
    const LEVELS: [&str; 5] = ["a", "b", "c", "", "$s"];
    let mut levels = vec![if rng.below(5) == 0 {
        "$SYS"
    } else {
        rng.pick(&LEVELS)
    }];
    levels.extend((0..rng.below(4)).map(|_| rng.pick(&LEVELS)));
    non_empty(levels.join("/"))
}

fn random_filter(rng: &mut XorShift) -> String {
    const LEVELS: [&str; 7] = ["a", "b", "c", "", "+", "+", "$SYS"];
    let mut levels: Vec<&str> = (0..=rng.below(4)).map(|_| rng.pick(&LEVELS)).collect();
    if rng.below(4) == 0 {
        levels.push("#");
    }
    if rng.below(10) == 0 {
        levels = vec!["#"];
    }
    non_empty(levels.join("/"))
}

/// A lone empty level is neither a topic name nor a filter [MQTT-4.7.3-1].
fn non_empty(text: String) -> String {
    if text.is_empty() {
        "/".to_owned()
    } else {
        text
    }
}

/// What the reference matcher says `topic` should reach, sorted like `matched`.
fn expected(subscriptions: &HashMap<(String, u32), u8>, topic: &str) -> Vec<(u32, u8)> {
    let topic = TopicName::parse(topic).expect("generated topics are valid");
    let mut found: Vec<(u32, u8)> = subscriptions
        .iter()
        .filter(|((filter, _), _)| {
            let filter = TopicFilter::parse(filter).expect("generated filters are valid");
            filter.matches(&topic)
        })
        .map(|((_, key), value)| (*key, *value))
        .collect();
    found.sort_unstable();
    found
}

fn check_against_reference(
    trie: &Trie<u32, u8>,
    subscriptions: &HashMap<(String, u32), u8>,
    rng: &mut XorShift,
) {
    trie.assert_invariants();
    assert_eq!(trie.len(), subscriptions.len());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (filter, _) in subscriptions.keys() {
        *counts.entry(filter.clone()).or_default() += 1;
    }
    let mut seen = HashMap::new();
    trie.for_each_filter(|filter, count| assert!(seen.insert(filter.to_owned(), count).is_none()));
    assert_eq!(seen, counts);
    for (filter, count) in &counts {
        assert_eq!(trie.count(filter), *count, "{filter:?}");
    }
    assert_eq!(trie.count("not/subscribed/#"), 0);
    for _ in 0..600 {
        let topic = random_topic(rng);
        let want = expected(subscriptions, &topic);
        assert_eq!(matched(trie, &topic), want, "topic {topic:?}");
        assert_eq!(trie.has_match(&topic), !want.is_empty(), "topic {topic:?}");
    }
}

#[test]
fn randomized_cross_check_with_topic_filter_matches() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut trie = Trie::new();
    let mut subscriptions = HashMap::new();
    for _ in 0..3000 {
        let filter = random_filter(&mut rng);
        let key = rng.below(40) as u32;
        let value = rng.below(256) as u8;
        let old = subscriptions.insert((filter.clone(), key), value);
        assert_eq!(trie.insert(&filter, key, value), old, "{filter:?}");
    }
    check_against_reference(&trie, &subscriptions, &mut rng);
    let mut entries: Vec<_> = subscriptions.keys().cloned().collect();
    entries.sort_unstable();
    for (filter, key) in entries.iter().filter(|_| rng.below(3) != 0) {
        let old = subscriptions.remove(&(filter.clone(), *key));
        assert_eq!(trie.remove(filter, key), old, "{filter:?}");
    }
    check_against_reference(&trie, &subscriptions, &mut rng);
    let mut seen = 0;
    trie.for_each(|filter, key, value| {
        seen += 1;
        assert_eq!(subscriptions.get(&(filter.to_owned(), *key)), Some(value));
    });
    assert_eq!(seen, subscriptions.len());
}

#[test]
fn a_level_with_one_child_and_one_subscriber_holds_just_those() {
    let mut trie: Trie<u64, u8> = Trie::new();
    trie.insert("dev-1/state", 1, 0);
    let Children::Few(top) = &trie.root.children else {
        panic!("one child is few");
    };
    assert_eq!(top.len(), 1);
    let Children::Few(below) = &top[0].1.children else {
        panic!("one child is few");
    };
    assert_eq!(below.len(), 1);
    let Subscribers::Few(subscribers) = &below[0].1.exact else {
        panic!("one subscriber is few");
    };
    assert_eq!(subscribers.len(), 1);
    assert!(
        below[0].1.wild.is_none(),
        "no wildcard box without wildcards"
    );
    for key in 2..100 {
        trie.insert("dev-1/state", key, 0);
    }
    assert_eq!(
        matched_len(&trie, "dev-1/state"),
        99,
        "grows past the exact room"
    );
    trie.assert_invariants();
}

fn matched_len(trie: &Trie<u64, u8>, topic: &str) -> usize {
    let mut n = 0;
    trie.for_each_match(topic, |_, _| n += 1);
    n
}

#[test]
fn matched_list_follows_every_insert_and_removal() {
    let mut trie = trie_of(&["a/b", "a/+"]);
    let mut kept = Matched::default();
    assert_eq!(kept.of(&trie, "a/b"), matched(&trie, "a/b"));
    // A new subscription, a changed one and a removal each show at once.
    trie.insert("#", 7, 1);
    assert_eq!(kept.of(&trie, "a/b"), matched(&trie, "a/b"));
    trie.insert("a/b", 0, 9);
    assert_eq!(kept.of(&trie, "a/b"), matched(&trie, "a/b"));
    trie.remove("a/+", &1);
    assert_eq!(kept.of(&trie, "a/b"), matched(&trie, "a/b"));
    // Another topic, then back: each gets its own list.
    assert_eq!(kept.of(&trie, "a/c"), matched(&trie, "a/c"));
    assert_eq!(kept.of(&trie, "a/b"), matched(&trie, "a/b"));
    assert_eq!(kept.of(&trie, "x"), matched(&trie, "x"));
}

#[test]
fn a_node_without_wildcards_is_two_slices_and_a_pointer() {
    // Every node sits in its parent's slice or map: its size is paid per device topic.
    assert!(std::mem::size_of::<Node<u64, [u8; 12]>>() <= 40);
}
