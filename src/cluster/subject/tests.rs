use super::*;
use crate::protocol::topic::{check_filter, check_name, filter_matches};

/// A small deterministic generator (xorshift64*), so every run checks the same cases and a
/// failure names its seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Levels chosen to hit every escape: NATS' separators and wildcards, whitespace, the escape
/// character itself, `$`, multi-byte UTF-8, an empty level, plain words.
const LEVELS: &[&str] = &[
    "a", "b", "", ".", "*", ">", " ", "a b", "=", "=2E", "$SYS", "$x", "é", "a.b", "\t", "x-y_z",
];

fn topic(g: &mut Gen) -> String {
    let n = 1 + g.next() % 4;
    (0..n).map(|_| g.pick(LEVELS)).collect::<Vec<_>>().join("/")
}

fn filter(g: &mut Gen) -> String {
    let n = 1 + g.next() % 4;
    let mut levels: Vec<&str> = (0..n)
        .map(|_| match g.next() % 4 {
            0 => "+",
            _ => g.pick(LEVELS),
        })
        .collect();
    if g.next() % 3 == 0 {
        levels.push("#");
    }
    levels.join("/")
}

fn is_token_clean(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
}

#[test]
fn topics_round_trip_through_subjects_and_keys() {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    for case in 0..20_000 {
        let topic = topic(&mut g);
        if check_name(&topic).is_err() {
            continue;
        }
        let subject = topic_subject(&topic);
        assert!(
            subject.split('.').all(is_token_clean),
            "case {case}: {topic:?} → {subject:?} has a token NATS or KV refuses"
        );
        assert_eq!(subject_topic(&subject).as_deref(), Some(topic.as_str()));
        assert_eq!(
            key_topic(&topic_key(&topic)).as_deref(),
            Some(topic.as_str())
        );
    }
}

#[test]
fn a_filter_matches_a_topic_in_mqtt_iff_a_mapped_subject_matches_in_nats() {
    let mut g = Gen(0xD1B5_4A32_D192_ED03);
    let mut matched = 0;
    for case in 0..50_000 {
        let (filter, topic) = (filter(&mut g), topic(&mut g));
        if check_filter(&filter).is_err() || check_name(&topic).is_err() {
            continue;
        }
        let subject = topic_subject(&topic);
        let nats = filter_subjects(&filter)
            .iter()
            .any(|f| nats_matches(f, &subject));
        let mqtt = filter_matches(&filter, &topic);
        assert_eq!(mqtt, nats, "case {case}: {filter:?} vs {topic:?}");
        matched += mqtt as u32;
    }
    assert!(matched > 1_000, "the generator must produce matches too");
}

#[test]
fn mapping_examples() {
    assert_eq!(topic_subject("a/b"), "rc.t.a.b");
    assert_eq!(topic_subject("a//b"), "rc.t.a.=.b");
    assert_eq!(topic_subject("v1.2/x y"), "rc.t.v1=2E2.x=20y");
    assert_eq!(topic_subject("$SYS/up"), "rc.s.=24SYS.up");
    assert_eq!(filter_subjects("#"), ["rc.t.>"]);
    assert_eq!(filter_subjects("a/#"), ["rc.t.a.>", "rc.t.a"]);
    assert_eq!(filter_subjects("+/b"), ["rc.t.*.b"]);
    assert_eq!(filter_subjects("$SYS/#"), ["rc.s.=24SYS.>", "rc.s.=24SYS"]);
    assert_eq!(queue_group("g.1"), "g=2E1");
}

#[test]
fn malformed_subjects_are_refused() {
    for subject in [
        "rc.t",
        "rc.x.a",
        "rc.t.a=",
        "rc.t.=2",
        "rc.t.=61",
        "rc.s.a",
        "rc.t.=24a",
        "x.t.a",
    ] {
        assert_eq!(subject_topic(subject), None, "{subject}");
    }
}

#[test]
fn nats_matcher_follows_nats_semantics() {
    assert!(nats_matches("a.*", "a.b"));
    assert!(!nats_matches("a.*", "a.b.c"));
    assert!(nats_matches("a.>", "a.b.c"));
    assert!(!nats_matches("a.>", "a"));
    assert!(!nats_matches("a.b", "a"));
    assert!(nats_matches("*.b", "x.b"));
}
