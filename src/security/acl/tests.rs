//! Tests of ACL parsing and evaluation as mosquitto 2.0 does them, and of the filter algebra
//! (`filter_covers`, `filters_overlap`, `read_scope`) against brute force over every topic of a
//! small alphabet, with `filter_matches` as the reference.

use super::*;

fn acl(text: &str) -> Acl {
    Acl::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn parse_error(text: &str) -> String {
    match Acl::parse(text) {
        Ok(_) => panic!("{text:?} parsed"),
        Err(e) => e,
    }
}

const ANON: Option<&str> = None;

// ---------------------------------------------------------------------------------------------
// The file.

#[test]
fn comments_blank_lines_and_leading_spaces() {
    let acl = acl("# a comment\n\n   \n  topic read a/b\r\n\t\n#user x\ntopic write c  \n");
    assert!(acl.can_read(ANON, "c", "a/b"));
    assert!(!acl.can_write(ANON, "c", "a/b"));
    assert!(acl.can_write(ANON, "c", "c"));
}

#[test]
fn errors_name_the_line() {
    let cases = [
        ("topic a\nbogus x\n", "line 2: invalid line"),
        ("topic a\n  # indented comment", "line 2: invalid line"),
        ("\ttopic read a", "line 1: invalid line"),
        ("topic\tread\ta", "line 1: invalid line"),
        ("user a\n\ntopic", "line 3: empty topic"),
        ("topic   ", "line 1: empty topic"),
        ("user", "line 1: missing username"),
        ("user   ", "line 1: missing username"),
        ("topic foo bar", "line 1: invalid topic access type `foo`"),
        ("topic Read a", "line 1: invalid topic access type `Read`"),
        ("topic read a/#/b", "line 1: invalid ACL topic `a/#/b`"),
        ("topic read a+", "line 1: invalid ACL topic `a+`"),
        ("pattern read %c#", "line 1: invalid ACL topic `%c#`"),
        ("topic read foo # c", "line 1: invalid ACL topic `foo # c`"),
    ];
    for (text, expected) in cases {
        let error = parse_error(text);
        assert!(error.starts_with(expected), "{text:?}: {error}");
    }
}

#[test]
fn filter_size_limits() {
    let levels = |n: usize| vec!["a"; n].join("/");
    acl(&format!("topic read {}", levels(201)));
    assert!(parse_error(&format!("topic read {}", levels(202))).contains("invalid ACL topic"));
    acl(&format!("topic read {}", "a".repeat(65_535)));
    parse_error(&format!("topic read {}", "a".repeat(65_536)));
}

#[test]
fn one_word_is_the_filter_with_readwrite() {
    let acl = acl("topic read\ntopic a/+\n");
    for topic in ["read", "a/x"] {
        assert!(acl.can_read(ANON, "c", topic), "{topic}");
        assert!(acl.can_write(ANON, "c", topic), "{topic}");
    }
}

#[test]
fn filter_is_the_rest_of_the_line_trimmed() {
    let acl = acl("topic read   a b/c  \nuser  bob smith \ntopic write x\n");
    assert!(acl.can_read(ANON, "c", "a b/c"));
    assert!(acl.can_write(Some("bob smith"), "c", "x"));
    assert!(!acl.can_write(Some("bob"), "c", "x"));
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("ringcast-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acl");
    std::fs::write(&path, "topic read a\nnope\n").unwrap();
    let error = Acl::load(&path).unwrap_err();
    assert!(error.contains("acl") && error.contains("line 2"), "{error}");
    std::fs::write(&path, "topic read a\n").unwrap();
    assert!(Acl::load(&path).unwrap().can_read(ANON, "c", "a"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(Acl::load(dir.join("missing")).is_err());
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

#[test]
fn deny_rules_come_first_whatever_their_place() {
    let acl = acl("user a\ntopic read x/#\ntopic deny x/secret\ntopic write x/secret\n");
    assert!(acl.can_read(Some("a"), "c", "x/open"));
    assert!(!acl.can_read(Some("a"), "c", "x/secret"));
    assert!(!acl.can_write(Some("a"), "c", "x/secret"));
}

#[test]
fn read_and_write_are_separate() {
    let acl = acl("topic read r\ntopic write w\ntopic readwrite rw\n");
    assert!(acl.can_read(ANON, "c", "r") && !acl.can_write(ANON, "c", "r"));
    assert!(!acl.can_read(ANON, "c", "w") && acl.can_write(ANON, "c", "w"));
    assert!(acl.can_read(ANON, "c", "rw") && acl.can_write(ANON, "c", "rw"));
}

#[test]
fn anonymous_rules_are_only_for_anonymous_clients() {
    let acl = acl("topic read pub\nuser alice\ntopic read alice\n");
    assert!(acl.can_read(ANON, "c", "pub"));
    assert!(!acl.can_read(ANON, "c", "alice"));
    assert!(!acl.can_read(Some("alice"), "c", "pub"));
    assert!(acl.can_read(Some("alice"), "c", "alice"));
    // A user without a block has no rules of its own.
    assert!(!acl.can_read(Some("carol"), "c", "pub"));
}

#[test]
fn repeated_user_blocks_add_up() {
    let acl = acl("user a\ntopic read x\nuser b\ntopic read y\nuser a\ntopic read z\n");
    assert!(acl.can_read(Some("a"), "c", "x") && acl.can_read(Some("a"), "c", "z"));
    assert!(!acl.can_read(Some("a"), "c", "y"));
}

#[test]
fn an_empty_file_refuses_everything() {
    let acl = acl("# nothing\n");
    assert!(!acl.can_read(ANON, "c", "a") && !acl.can_write(Some("u"), "c", "a"));
}

#[test]
fn patterns_apply_to_everyone_after_their_own_rules() {
    let acl = acl("user a\npattern readwrite c/%c/#\ntopic read mine\npattern read u/%u\n");
    for user in [ANON, Some("a"), Some("z")] {
        assert!(acl.can_write(user, "id1", "c/id1/x"), "{user:?}");
        assert!(!acl.can_write(user, "id1", "c/id2/x"), "{user:?}");
    }
    assert!(acl.can_read(Some("a"), "id", "mine"));
    assert!(acl.can_read(Some("z"), "id", "u/z"));
    assert!(!acl.can_read(Some("z"), "id", "u/a"));
    // `%u` never applies to an anonymous client, not even as an empty level.
    assert!(!acl.can_read(ANON, "id", "u/"));
}

#[test]
fn own_allow_beats_pattern_deny_and_pattern_deny_beats_pattern_allow() {
    let text = "user a\ntopic read x/#\npattern deny x/%c\npattern read x/#\npattern deny y/%c\n";
    let acl = acl(text);
    assert!(acl.can_read(Some("a"), "id", "x/id"));
    assert!(!acl.can_read(Some("b"), "id", "x/id"));
    assert!(acl.can_read(Some("b"), "id", "x/other"));
}

#[test]
fn own_deny_beats_pattern_allow() {
    let acl = acl("user a\ntopic deny c/+/secret\npattern readwrite c/%c/#\n");
    assert!(acl.can_read(Some("a"), "id", "c/id/open"));
    assert!(!acl.can_read(Some("a"), "id", "c/id/secret"));
    assert!(acl.can_read(Some("b"), "id", "c/id/secret"));
}

#[test]
fn substitution_is_textual() {
    let acl = acl("pattern read a%cb/%u%u\npattern read p/%x/%%c\n");
    assert!(acl.can_read(Some("u"), "id", "aidb/uu"));
    assert!(!acl.can_read(Some("u"), "id", "aidb/u"));
    assert!(acl.can_read(Some("u"), "id", "p/%x/%id"));
    // A client id holding `/` spans levels (2.0 only refuses `+` and `#`).
    assert!(acl.can_read(Some("u"), "x/y", "ax/yb/uu"));
}

#[test]
fn plus_or_hash_in_names_turns_patterns_off() {
    let acl = acl("user a+\ntopic read own\npattern read open/#\npattern read c/%c\n");
    assert!(acl.can_read(Some("b"), "id", "open/x"));
    assert!(!acl.can_read(Some("b"), "i+d", "open/x"));
    assert!(!acl.can_read(Some("b"), "i#d", "open/x"));
    assert!(!acl.can_read(Some("a+"), "id", "open/x"));
    // The user's own rules still apply: the refusal comes after them.
    assert!(acl.can_read(Some("a+"), "id", "own"));
}

#[test]
fn dollar_topics_need_dollar_rules() {
    let acl = acl("topic readwrite #\ntopic read +/x\ntopic read $SYS/#\ntopic readwrite $app/+\n");
    assert!(acl.can_read(ANON, "c", "a/x"));
    assert!(!acl.can_read(ANON, "c", "$other/x"));
    assert!(acl.can_read(ANON, "c", "$SYS/broker/uptime"));
    assert!(acl.can_write(ANON, "c", "$app/x"));
    let patterns = self::acl("pattern readwrite #\npattern readwrite %c/#\n");
    assert!(!patterns.can_read(ANON, "id", "$app/x"));
    assert!(patterns.can_read(ANON, "$app", "$app/x"));
}

#[test]
fn sys_writes_and_share_topics_are_refused_before_the_file() {
    let acl = acl("topic readwrite $SYS/#\ntopic readwrite $share/#\ntopic readwrite $shared/#\n");
    assert!(acl.can_read(ANON, "c", "$SYS/x"));
    assert!(!acl.can_write(ANON, "c", "$SYS/x"));
    assert!(acl.can_write(ANON, "c", "$SYS/broker/connection/b1/state"));
    assert!(!acl.can_write(ANON, "c", "$SYS/broker/connection/b1/other"));
    for topic in ["$share/g/x", "$shared/x"] {
        assert!(!acl.can_read(ANON, "c", topic) && !acl.can_write(ANON, "c", topic));
    }
}

#[test]
fn wildcard_and_empty_topics_match_nothing() {
    let acl = acl("topic readwrite #\n");
    for topic in ["", "a/+", "#", "a/#"] {
        assert!(!acl.can_read(ANON, "c", topic) && !acl.can_write(ANON, "c", topic));
    }
}

// ---------------------------------------------------------------------------------------------
// Brute force over a small alphabet.

/// Filter levels: a literal, a `$` literal, an empty level and the wildcards.
const FILTER_LEVELS: [&str; 5] = ["a", "$a", "", "+", "#"];
/// Topic levels: the filters' literals and one no literal names, so `+` is told from a literal.
const TOPIC_LEVELS: [&str; 4] = ["a", "$a", "", "b"];

/// Every valid filter of up to three levels from `FILTER_LEVELS`.
fn all_filters() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut frontier = vec![String::new()];
    for depth in 0..3 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for level in FILTER_LEVELS {
                let filter = if depth == 0 {
                    level.to_owned()
                } else {
                    format!("{prefix}/{level}")
                };
                if level == "#" {
                    out.push(filter);
                } else {
                    next.push(filter);
                }
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out.retain(|f| is_filter(f));
    out
}

/// Every topic name of up to four levels from `TOPIC_LEVELS` (the empty name is not one).
fn all_topics() -> Vec<String> {
    let mut out = Vec::new();
    let mut frontier = vec![String::new()];
    for depth in 0..4 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for level in TOPIC_LEVELS {
                next.push(if depth == 0 {
                    level.to_owned()
                } else {
                    format!("{prefix}/{level}")
                });
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out.retain(|t| !t.is_empty());
    out
}

#[test]
fn streamed_matching_agrees_with_filter_matches() {
    let topics = all_topics();
    for filter in all_filters() {
        for topic in &topics {
            let expected = filter_matches(&filter, topic);
            assert_eq!(
                matches_bytes(filter.bytes(), topic),
                expected,
                "{filter} {topic}"
            );
        }
    }
}

#[test]
fn filter_sets_agree_with_filter_matches() {
    let (filters, topics) = (all_filters(), all_topics());
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..400 {
        let chosen: Vec<&String> = (0..1 + round % 5).map(|_| rng.pick(&filters)).collect();
        let mut set = FilterSet::default();
        chosen.iter().for_each(|f| set.insert(f));
        for topic in &topics {
            let expected = chosen.iter().any(|f| filter_matches(f, topic));
            assert_eq!(set.matches(topic), expected, "{chosen:?} {topic}");
        }
    }
}

#[test]
fn patterns_match_as_their_substitution() {
    const PATTERNS: [&str; 10] = [
        "%c/#", "a/%c", "%u/+", "+/%c/#", "$a/%u", "%c", "a%c/#", "a/#", "%c/%u", "a//#",
    ];
    let clients = [
        (None, "a"),
        (Some("a"), ""),
        (Some(""), "$a"),
        (Some("b"), "b/a"),
    ];
    for text in PATTERNS {
        let pattern = Pattern::parse(text);
        for (username, client_id) in clients {
            let expanded = pattern.expand(client_id, username);
            for topic in all_topics() {
                let expected = expanded
                    .as_deref()
                    .is_some_and(|f| filter_matches(f, &topic));
                let got = pattern.matches(client_id, username, &topic);
                assert_eq!(got, expected, "{text} {username:?} {client_id:?} {topic}");
            }
        }
    }
}

/// Which topics each filter matches, by index into `all_topics`.
fn match_table(filters: &[String], topics: &[String]) -> Vec<Vec<bool>> {
    let row = |f: &String| topics.iter().map(|t| filter_matches(f, t)).collect();
    filters.iter().map(row).collect()
}

#[test]
fn covers_and_overlap_agree_with_brute_force() {
    let (filters, topics) = (all_filters(), all_topics());
    assert!(filters.len() > 100 && topics.len() > 300);
    let table = match_table(&filters, &topics);
    for (a, rows_a) in filters.iter().zip(&table) {
        for (b, rows_b) in filters.iter().zip(&table) {
            let both = rows_a.iter().zip(rows_b);
            let covers = both.clone().all(|(&in_a, &in_b)| !in_a || in_b);
            let overlap = both.clone().any(|(&in_a, &in_b)| in_a && in_b);
            assert_eq!(filter_covers(a, b), covers, "does {b} cover {a}?");
            assert_eq!(filters_overlap(a, b), overlap, "do {a} and {b} overlap?");
        }
    }
}

#[test]
fn covers_and_overlap_examples() {
    assert!(filter_covers("#", "+/#"));
    assert!(!filter_covers("a/#", "a/+/#"));
    assert!(filter_covers("a", "a/#"));
    assert!(!filter_covers("$SYS/x", "#"));
    assert!(!filter_covers("$SYS/x", "+/x"));
    assert!(filter_covers("$SYS/x", "$SYS/+"));
    assert!(filters_overlap("a/+/c", "+/b/#"));
    assert!(!filters_overlap("#", "$SYS/#"));
    assert!(!filters_overlap("a/b", "a/b/c"));
    assert!(filters_overlap("a/b", "a/b/#"));
}

/// A tiny xorshift generator: the randomized tests replay from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[(self.next() % from.len() as u64) as usize]
    }
}

/// A random ACL from the universe's filters and a few patterns.
fn random_acl(rng: &mut Rng, filters: &[String]) -> String {
    const PATTERNS: [&str; 6] = ["%c/#", "a/%c", "%u/+", "+/%c/#", "$a/%u", "%c"];
    const USERS: [&str; 3] = ["", "user a\n", "user b\n"];
    const GRANTS: [&str; 5] = ["read ", "write ", "readwrite ", "deny ", ""];
    let mut text = String::new();
    for _ in 0..(1 + rng.next() % 6) {
        text.push_str(rng.pick::<&str>(&USERS));
        let grant = rng.pick(&GRANTS);
        if rng.next() % 3 == 0 {
            text.push_str(&format!("pattern {grant}{}\n", rng.pick(&PATTERNS)));
        } else {
            text.push_str(&format!("topic {grant}{}\n", rng.pick(filters)));
        }
    }
    text
}

#[test]
fn read_scope_is_sound_against_brute_force() {
    let (filters, topics) = (all_filters(), all_topics());
    let clients: [(Option<&str>, &str); 6] = [
        (None, "a"),
        (Some("a"), "a"),
        (Some("b"), "$a"),
        (Some("a"), "b/a"),
        (Some("a"), "a+"),
        (Some("b#"), "b"),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = [0usize; 3];
    for _ in 0..300 {
        let text = random_acl(&mut rng, &filters);
        let acl = acl(&text);
        let (username, client_id) = *rng.pick(&clients);
        let readable: Vec<bool> = topics
            .iter()
            .map(|t| acl.can_read(username, client_id, t))
            .collect();
        for filter in &filters {
            let scope = acl.read_scope(username, client_id, filter);
            let mut matched = topics
                .iter()
                .zip(&readable)
                .filter(|(t, _)| filter_matches(filter, t));
            let context = || format!("{text}{username:?} {client_id} {filter}: {scope:?}");
            match scope {
                ReadScope::All => assert!(matched.all(|(_, &r)| r), "{}", context()),
                ReadScope::None => assert!(matched.all(|(_, &r)| !r), "{}", context()),
                ReadScope::Partial => {}
            }
            seen[scope as usize] += 1;
        }
    }
    // The check is only as good as the answers it saw: all three must be common.
    assert!(seen.iter().all(|&n| n > 1_000), "{seen:?}");
}

#[test]
fn read_scope_examples() {
    let acl = acl(
        "user a\ntopic read s/#\ntopic deny s/secret/#\ntopic write w/#\ntopic read $SYS/#\n\
         pattern read c/%c/#\npattern deny c/%c/hidden\n",
    );
    let scope = |user, filter| acl.read_scope(user, "id", filter);
    let a = Some("a");
    assert_eq!(scope(a, "s/open/+"), ReadScope::All);
    assert_eq!(scope(a, "s/#"), ReadScope::Partial);
    assert_eq!(scope(a, "s/secret/x"), ReadScope::None);
    assert_eq!(scope(a, "w/#"), ReadScope::None);
    assert_eq!(scope(a, "#"), ReadScope::Partial);
    assert_eq!(scope(a, "$SYS/broker/+"), ReadScope::All);
    assert_eq!(scope(a, "+/broker"), ReadScope::Partial);
    assert_eq!(scope(a, "c/id/x"), ReadScope::All);
    assert_eq!(scope(a, "c/id/#"), ReadScope::Partial);
    assert_eq!(scope(a, "c/other/#"), ReadScope::None);
    assert_eq!(scope(None, "c/id/x/y"), ReadScope::All);
    assert_eq!(scope(None, "s/open"), ReadScope::None);
    assert_eq!(acl.read_scope(None, "i+d", "c/i+d/x"), ReadScope::None);
    // `$share...` topics are never readable; an invalid filter matches nothing.
    let open = self::acl("topic readwrite #\ntopic readwrite $share/#\n");
    assert_eq!(open.read_scope(None, "id", "a/b"), ReadScope::All);
    assert_eq!(open.read_scope(None, "id", "$share/g/a"), ReadScope::None);
    assert_eq!(open.read_scope(None, "id", "a/#/b"), ReadScope::None);
}

// ---------------------------------------------------------------------------------------------
// Cost.

/// Nanoseconds per `can_read` for a client to which all of `text`'s rules apply, over topics
/// that none of them match (so every rule is tried).
fn nanos_per_check(text: &str) -> u128 {
    let acl = acl(text);
    let topics: Vec<String> = (0..1_000)
        .map(|i| format!("site/{}/device-{}/pressure", i % 600, i % 7))
        .collect();
    let rounds = 20;
    let started = std::time::Instant::now();
    let mut allowed = 0;
    for _ in 0..rounds {
        for topic in &topics {
            allowed += usize::from(acl.can_read(Some("u"), "client-17", topic));
        }
    }
    assert_eq!(allowed, 0);
    started.elapsed().as_nanos() / (rounds * topics.len() as u128)
}

/// What one check costs with 1,000 rules that all apply to the client checked: the worst case.
/// Run with `cargo test --release --lib security::acl -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run by hand in release"]
fn cost_of_a_large_acl() {
    let lines = |line: &dyn Fn(usize) -> String| (0..1_000).map(line).collect::<String>();
    let topics = lines(&|i| format!("topic read site/{i}/+/temperature\n"));
    let by_text = lines(&|i| format!("pattern read site/{i}/%c/%u/#\n"));
    let by_client = lines(&|i| format!("pattern read %c/site/{i}/%u/#\n"));
    let by_wildcard = lines(&|i| format!("pattern read +/{i}/%c/%u/#\n"));
    for (name, text) in [
        ("`topic` rules", format!("user u\n{topics}")),
        ("patterns led by text", by_text),
        ("patterns led by %c", by_client),
        ("patterns led by +", by_wildcard),
    ] {
        eprintln!("1,000 {name}: {} ns per can_read", nanos_per_check(&text));
    }
}
