//! mosquitto 2.0 ACL files (`acl_file`): who may publish to, and receive from, which topics.
//! Pure logic: nothing here touches a socket or glommio; `Acl::load` is the only file read.
//!
//! Read from mosquitto 2.0's `src/security_default.c`, `src/security.c` and
//! `lib/util_topic.c`, and checked against the real broker by `tests/acl_mosquitto.rs`.
//!
//! # The file (`aclfile__parse`)
//!
//! - Lines are read whole; trailing white space (C `isspace`, so `\r` too) is cut off.
//! - A line whose first character is `#` is a comment; an empty or all-blank line is skipped.
//! - Words are split on spaces only. Leading spaces are fine, but a line that starts with a
//!   tab, or an indented `# comment`, is an unknown keyword.
//! - `user <name>`: the rest of the line, trimmed, names the user the following `topic` lines
//!   belong to. `topic` lines before any `user` line belong to anonymous clients (no username).
//!   A second `user alice` block adds to the first.
//! - `topic [read|write|readwrite|deny] <filter>`: the filter is the rest of the line, trimmed,
//!   inner spaces kept. With one word only (`topic a/b`) that word is the filter and the access
//!   is readwrite, so `topic read` allows reading *and* writing the topic named `read`.
//! - `pattern [read|write|readwrite|deny] <filter>`: as `topic`, but for every client, named or
//!   anonymous, wherever it stands in the file; `%c` becomes the client id and `%u` the username
//!   anywhere in the filter, not only as a whole level.
//! - The filter must be a valid subscription filter (`mosquitto_sub_topic_check`: `+` and `#`
//!   whole levels, `#` last, at most 65,535 bytes and 200 `/`).
//! - Anything else (unknown keyword, `topic` without a filter, `user` without a name, an access
//!   word other than the four, an invalid filter) rejects the whole file, naming the line.
//!
//! # A check (`mosquitto_acl_check`, then `mosquitto_acl_check_default`)
//!
//! 1. `acl__check_dollar`: a write to a topic starting `$SYS` is refused unless it matches
//!    `$SYS/broker/connection/+/state` (bridge status); a read or write of a topic starting
//!    `$share` is refused. mosquitto applies this with or without an ACL file.
//! 2. The client's own rules: its `user` block, or the anonymous block if it has no username.
//!    Deny rules are tried first (`add__acl` puts them at the head of the list), so any matching
//!    `deny` refuses; then any matching rule that grants the access allows. A matching rule of
//!    the other access (a `read` rule for a write) does not decide: the search goes on.
//! 3. If the username or the client id contains `+` or `#`, refused: no pattern may apply to
//!    it (2.0 no longer counts `/` as dangerous, so a client id `a/b` makes `%c` two levels).
//!    This comes after step 2, so such a client keeps its own `user` rules.
//! 4. The patterns, with `%c` and `%u` substituted, deny first and then allow, as in step 2.
//!    A pattern using `%u` is skipped for an anonymous client.
//! 5. Nothing matched: refused. So an ACL file with no rules at all refuses everything, and a
//!    named user with no `user` block gets only the patterns.
//!
//! Matching is `mosquitto_topic_matches_sub`: MQTT's, and a topic starting with `$` is only
//! matched by a rule starting with `$` (`#` does not match `$SYS/x`; `$SYS/#` does).
//!
//! SUBSCRIBE is not checked against the file: `mosquitto_acl_check_default` answers
//! `MOSQ_ACL_SUBSCRIBE` with success ("FIXME - implement ACL subscription strings"), so
//! mosquitto grants every subscription and filters each delivered message with a read check.
//! `Acl::read_scope` lets the broker do that check once per SUBSCRIBE where the answer is the
//! same for every message; refusing a SUBSCRIBE whose scope is `ReadScope::None` differs from
//! mosquitto only in the SUBACK's reason code, not in what is delivered.
//!
//! No ACL file: no `Acl`, and every topic may be read and written (mosquitto's
//! `MOSQ_ERR_PLUGIN_DEFER` with no plugin), apart from step 1.
//!
//! # Cost
//!
//! A check never looks at other users' rules: they are kept per user in a hash map. The
//! client's own rules are split into deny, read and write sets, each a trie of levels, so they
//! cost one walk down the topic's levels, O(len(topic)), however many there are (wildcards may
//! branch the walk). Patterns depend on the client, so they are tried one by one:
//! O(patterns × len(topic)); each is first tested on how a matching topic must start (its text
//! and substitutions before the first wildcard), and only then matched in full, substituting on
//! the fly without building the filter. No check allocates.
//!
//! Measured (`cost_of_a_large_acl`, release build, every rule applying to the client and none
//! matching, so all are tried): 1,000 `topic` rules 0.2 µs per check; 1,000 patterns led by
//! text or `%c` 8 µs; patterns led by a wildcard, which the first test cannot reject, about
//! 80 ns each (80 µs for 1,000).
//! The broker pays that per delivered message only for subscriptions whose `read_scope` is
//! `Partial`; `read_scope` itself compares the filter with each rule (allocating the
//! substituted patterns), once per SUBSCRIBE.

use std::collections::HashMap;
use std::path::Path;

use crate::protocol::topic::filter_matches;

/// Longest filter mosquitto accepts in an ACL line (`mosquitto_sub_topic_check`).
const FILTER_BYTES_MAX: usize = 65_535;
/// Most `/` a filter may hold (mosquitto's `TOPIC_HIERARCHY_LIMIT`; 201 levels is refused).
const FILTER_SEPARATORS_MAX: usize = 200;
/// The one `$SYS` topic family clients may write: bridges report their state there.
const BRIDGE_STATE: &str = "$SYS/broker/connection/+/state";

/// A parsed mosquitto ACL file, indexed by user.
#[derive(Debug, Default)]
pub struct Acl {
    /// Rules before the first `user` line: for clients without a username.
    anonymous: Lists<FilterSet>,
    /// Each `user` block's rules, by username.
    users: HashMap<Box<str>, Lists<FilterSet>>,
    /// `pattern` lines: for every client, after its own rules.
    patterns: Lists<Vec<Pattern>>,
}

/// How much of a subscription's filter a client may read, decided once per SUBSCRIBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadScope {
    /// Every topic the filter can match is readable: deliver without a per-message check.
    All,
    /// Some topics may be readable and some not: check each message with `Acl::can_read`.
    Partial,
    /// No topic the filter can match is readable: the SUBSCRIBE may be refused.
    None,
}

/// What an ACL line grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// The two accesses the file decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// One block's rules, split by what they grant; a `readwrite` rule sits in both allow lists.
/// Order inside a list never matters: any matching deny refuses, then any matching allow allows.
#[derive(Debug, Default)]
struct Lists<T> {
    deny: T,
    read: T,
    write: T,
}

impl<T> Lists<T> {
    fn add(&mut self, grant: Grant, mut push: impl FnMut(&mut T)) {
        match grant {
            Grant::Deny => push(&mut self.deny),
            Grant::Read => push(&mut self.read),
            Grant::Write => push(&mut self.write),
            Grant::ReadWrite => {
                push(&mut self.read);
                push(&mut self.write);
            }
        }
    }

    fn allowing(&self, access: Access) -> &T {
        match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        }
    }

    /// Some(false) if a deny rule matches, else Some(true) if a rule granting `access` matches,
    /// else None: this block does not decide.
    fn verdict(&self, access: Access, matches: impl Fn(&T) -> bool) -> Option<bool> {
        if matches(&self.deny) {
            return Some(false);
        }
        matches(self.allowing(access)).then_some(true)
    }
}

/// Plain filters, kept as a list (for `read_scope`) and as a trie of levels (for checks), so
/// that a check walks the topic's levels once, whatever the number of filters.
#[derive(Debug, Default)]
struct FilterSet {
    filters: Vec<Box<str>>,
    root: Node,
}

/// A trie node: the filters that go on past this level, and those that end here.
#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// A filter ends here with `/#` (or is `#`, at the root).
    has_hash: bool,
    /// A filter ends here.
    is_end: bool,
}

impl FilterSet {
    fn insert(&mut self, filter: &str) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = match level {
                "#" => {
                    node.has_hash = true;
                    break;
                }
                "+" => node.plus.get_or_insert_with(Box::default),
                _ => node.literals.entry(level.into()).or_default(),
            };
        }
        if !filter.ends_with('#') {
            node.is_end = true;
        }
        self.filters.push(filter.into());
    }

    /// Whether any filter matches topic name `topic` (`filter_matches` for each, at once).
    fn matches(&self, topic: &str) -> bool {
        let mut levels = topic.split('/');
        if topic.starts_with('$') {
            // Wildcard-led filters leave `$` topics alone [MQTT-4.7.2-1]: only a literal first
            // level leads on.
            let first = levels.next().unwrap_or_default();
            let node = self.root.literals.get(first);
            return node.is_some_and(|node| node.matches(levels));
        }
        self.root.matches(levels)
    }
}

impl Node {
    /// Whether a filter through this node matches the topic levels left in `levels`.
    fn matches(&self, mut levels: std::str::Split<'_, char>) -> bool {
        // `#` also matches the parent level [MQTT-4.7.1-2].
        if self.has_hash {
            return true;
        }
        let Some(level) = levels.next() else {
            return self.is_end;
        };
        let literal = self.literals.get(level);
        literal.is_some_and(|node| node.matches(levels.clone()))
            || self
                .plus
                .as_deref()
                .is_some_and(|node| node.matches(levels))
    }
}

/// A piece of a `pattern` filter.
#[derive(Clone, Debug)]
enum Piece {
    Text(Box<str>),
    /// `%c`
    ClientId,
    /// `%u`
    Username,
}

/// A `pattern` filter, split where `%c` and `%u` are substituted.
#[derive(Clone, Debug)]
struct Pattern {
    pieces: Vec<Piece>,
    /// Holds `%u`, so it never applies to an anonymous client.
    needs_username: bool,
    /// How every matching topic starts: the pieces before the first wildcard, the last one cut
    /// there (less the `/` before a `#`, which also matches the parent). A cheap first test.
    head: Vec<Piece>,
}

impl Pattern {
    /// Splits at each `%c` and `%u`, scanning left to right as mosquitto substitutes.
    fn parse(text: &str) -> Pattern {
        let bytes = text.as_bytes();
        let (mut pieces, mut start, mut at) = (Vec::new(), 0, 0);
        while at < bytes.len() {
            let piece = match (bytes[at], bytes.get(at + 1)) {
                (b'%', Some(b'c')) => Piece::ClientId,
                (b'%', Some(b'u')) => Piece::Username,
                _ => {
                    at += 1;
                    continue;
                }
            };
            if start < at {
                pieces.push(Piece::Text(text[start..at].into()));
            }
            pieces.push(piece);
            at += 2;
            start = at;
        }
        if start < bytes.len() {
            pieces.push(Piece::Text(text[start..].into()));
        }
        let needs_username = pieces.iter().any(|p| matches!(p, Piece::Username));
        let head = head_of(&pieces);
        Pattern {
            head,
            pieces,
            needs_username,
        }
    }

    /// `pieces` substituted, as strings.
    fn texts<'a>(
        pieces: &'a [Piece],
        client_id: &'a str,
        username: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        pieces.iter().map(move |piece| match piece {
            Piece::Text(text) => &**text,
            Piece::ClientId => client_id,
            Piece::Username => username,
        })
    }

    /// The substituted filter as bytes, built on the fly.
    fn bytes<'a>(&'a self, client_id: &'a str, username: &'a str) -> impl Iterator<Item = u8> + 'a {
        Self::texts(&self.pieces, client_id, username).flat_map(str::bytes)
    }

    /// Whether the pattern, substituted for this client, matches `topic`.
    fn matches(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        if self.needs_username && username.is_none() {
            return false;
        }
        let username = username.unwrap_or("");
        let mut head = Self::texts(&self.head, client_id, username);
        let head_fits = head
            .try_fold(topic, |rest, text| rest.strip_prefix(text))
            .is_some();
        head_fits && matches_bytes(self.bytes(client_id, username), topic)
    }

    /// The substituted filter; None for a `%u` pattern and an anonymous client.
    fn expand(&self, client_id: &str, username: Option<&str>) -> Option<Box<str>> {
        if self.needs_username && username.is_none() {
            return None;
        }
        let bytes: Vec<u8> = self.bytes(client_id, username.unwrap_or("")).collect();
        // Whole UTF-8 strings joined at char boundaries: still UTF-8.
        String::from_utf8(bytes).ok().map(String::into_boxed_str)
    }
}

/// The leading pieces of a pattern up to its first wildcard (see `Pattern::head`).
fn head_of(pieces: &[Piece]) -> Vec<Piece> {
    let mut head = Vec::new();
    for piece in pieces {
        let Piece::Text(text) = piece else {
            head.push(piece.clone());
            continue;
        };
        let Some(at) = text.find(['+', '#']) else {
            head.push(piece.clone());
            continue;
        };
        let before = &text[..at];
        let before = match text[at..].starts_with('#') {
            true => before.strip_suffix('/').unwrap_or(before),
            false => before,
        };
        head.push(Piece::Text(before.into()));
        break;
    }
    head
}

impl Acl {
    /// Reads and parses an ACL file; the error names the file and, for a bad line, the line.
    pub fn load(path: impl AsRef<Path>) -> Result<Acl, String> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("acl file {}: {e}", path.display()))?;
        Acl::parse(&text).map_err(|e| format!("acl file {}: {e}", path.display()))
    }

    /// Parses the text of an ACL file as mosquitto 2.0 does (see the module docs); any bad line
    /// rejects the whole file with an error that starts `line N:`.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<Box<str>> = None;
        for (index, line) in text.split('\n').enumerate() {
            acl.parse_line(line, &mut user)
                .map_err(|e| format!("line {}: {e}", index + 1))?;
        }
        Ok(acl)
    }

    fn parse_line(&mut self, line: &str, user: &mut Option<Box<str>>) -> Result<(), String> {
        // mosquitto holds the line as a C string: a NUL ends it.
        let line = line.split('\0').next().unwrap_or("");
        let line = line.trim_end_matches(is_c_space);
        if line.starts_with('#') {
            return Ok(());
        }
        let Some((keyword, rest)) = next_word(line) else {
            return Ok(());
        };
        match keyword {
            "topic" | "pattern" => {
                let (grant, filter) = parse_rule(rest)?;
                if keyword == "pattern" {
                    let pattern = Pattern::parse(filter);
                    self.patterns.add(grant, |list| list.push(pattern.clone()));
                } else {
                    let rules = match user {
                        Some(name) => self.users.entry(name.clone()).or_default(),
                        None => &mut self.anonymous,
                    };
                    rules.add(grant, |set| set.insert(filter));
                }
                Ok(())
            }
            "user" => match rest.trim_matches(is_c_space) {
                "" => Err("missing username after `user`".to_owned()),
                name => {
                    *user = Some(name.into());
                    Ok(())
                }
            },
            _ => Err(format!(
                "invalid line: `{keyword}` is not `user`, `topic` or `pattern`"
            )),
        }
    }

    /// May this client publish to `topic` (a topic name, no wildcards)?
    pub fn can_write(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.allows(username, client_id, topic, Access::Write)
    }

    /// May this client receive a message published to `topic` (a topic name, no wildcards)?
    pub fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.allows(username, client_id, topic, Access::Read)
    }

    /// mosquitto's verdict, steps 1 to 5 of the module docs.
    fn allows(&self, username: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        // mosquitto's matcher refuses such topics (MOSQ_ERR_INVAL), so nothing matches them.
        if topic.is_empty() || topic.contains(['+', '#']) || dollar_refuses(topic, access) {
            return false;
        }
        let own = self.own_rules(username);
        if let Some(verdict) = own.and_then(|r| r.verdict(access, |set| set.matches(topic))) {
            return verdict;
        }
        if is_dangerous(client_id) || username.is_some_and(is_dangerous) {
            return false;
        }
        let pattern_verdict = self.patterns.verdict(access, |list| {
            list.iter().any(|p| p.matches(client_id, username, topic))
        });
        pattern_verdict.unwrap_or(false)
    }

    /// The client's own block: its `user` block, or the anonymous one.
    fn own_rules(&self, username: Option<&str>) -> Option<&Lists<FilterSet>> {
        match username {
            Some(name) => self.users.get(name),
            None => Some(&self.anonymous),
        }
    }

    /// How much of `filter` this client may read. `filter` is what is matched against topic
    /// names: for `$share/{group}/{filter}` pass the part after the group
    /// (`protocol::topic::filter_part`). An invalid filter matches nothing: `None`.
    ///
    /// `All` and `None` are only returned when they are certain: `All` when one allow rule
    /// covers the whole filter and no deny rule that could apply overlaps it; `None` when a deny
    /// rule covers it, or no allow rule that could apply overlaps it. Anything else, including
    /// a filter covered only by several allow rules together, is `Partial`.
    pub fn read_scope(&self, username: Option<&str>, client_id: &str, filter: &str) -> ReadScope {
        let first_level = filter.split('/').next().unwrap_or("");
        if !is_filter(filter) || first_level.starts_with("$share") {
            return ReadScope::None;
        }
        let own = self.own_rules(username).map(|own| Lists {
            deny: &own.deny.filters[..],
            read: &own.read.filters[..],
            write: &own.write.filters[..],
        });
        let patterns = if is_dangerous(client_id) || username.is_some_and(is_dangerous) {
            Lists::default()
        } else {
            self.expand_patterns(client_id, username)
        };
        let patterns = Lists {
            deny: &patterns.deny[..],
            read: &patterns.read[..],
            write: &patterns.write[..],
        };
        scope(filter, own.unwrap_or_default(), patterns)
    }

    /// The patterns as plain filters for this client.
    fn expand_patterns(&self, client_id: &str, username: Option<&str>) -> Lists<Vec<Box<str>>> {
        let expand = |list: &[Pattern]| -> Vec<Box<str>> {
            list.iter()
                .filter_map(|p| p.expand(client_id, username))
                .collect()
        };
        Lists {
            deny: expand(&self.patterns.deny),
            read: expand(&self.patterns.read),
            write: expand(&self.patterns.write),
        }
    }
}

/// `read_scope` once the client's rules are plain filters. A topic is readable iff no own deny
/// matches it and (an own read rule does, or no pattern deny does and a pattern read does).
fn scope(filter: &str, own: Lists<&[Box<str>]>, patterns: Lists<&[Box<str>]>) -> ReadScope {
    let covered_by = |rules: &[Box<str>]| rules.iter().any(|r| filter_covers(filter, r));
    let overlapped_by = |rules: &[Box<str>]| rules.iter().any(|r| filters_overlap(filter, r));
    if covered_by(own.deny) {
        return ReadScope::None;
    }
    let own_denies_some = overlapped_by(own.deny);
    if !own_denies_some && covered_by(own.read) {
        return ReadScope::All;
    }
    if !own_denies_some && !overlapped_by(patterns.deny) && covered_by(patterns.read) {
        return ReadScope::All;
    }
    let patterns_allow_none = !overlapped_by(patterns.read) || covered_by(patterns.deny);
    if !overlapped_by(own.read) && patterns_allow_none {
        return ReadScope::None;
    }
    ReadScope::Partial
}

/// Whether every topic name that valid filter `inner` matches is also matched by valid filter
/// `outer`, `$` rule included (a filter led by a wildcard matches no topic starting with `$`).
pub fn filter_covers(inner: &str, outer: &str) -> bool {
    let (mut inner, mut outer) = (inner.split('/'), outer.split('/'));
    let mut depth = 0;
    let mut is_empty_prefix = false;
    loop {
        let (a, b) = (inner.next(), outer.next());
        match (a, b) {
            // `#` also matches the parent level, so it covers an ended `inner` too.
            (level, Some("#")) => return !(depth == 0 && level.is_some_and(is_dollar)),
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            // A topic name is never empty, so where the levels so far can only spell the empty
            // name (none, or one empty level) `#` must match one more level: it is `+/#` there.
            (Some("#"), Some(level)) => {
                let needs_a_level = depth == 0 || is_empty_prefix;
                return needs_a_level && level == "+" && outer.next() == Some("#");
            }
            (Some("+"), Some(level)) if level != "+" => return false,
            (Some(level), Some("+")) if depth == 0 && is_dollar(level) => return false,
            (Some(a), Some(b)) if a != b && b != "+" => return false,
            _ => {}
        }
        is_empty_prefix = depth == 0 && a == Some("");
        depth += 1;
    }
}

/// Whether some topic name is matched by both valid filters, `$` rule included.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    let mut depth = 0;
    let mut is_empty_prefix = false;
    loop {
        let (x, y) = (a.next(), b.next());
        match (x, y) {
            // The other filter ended: the only common topic is the levels so far, which must
            // not spell the empty name.
            (Some("#"), None) | (None, Some("#")) => return !is_empty_prefix,
            (Some("#"), Some(other)) | (Some(other), Some("#")) => {
                return !(depth == 0 && is_dollar(other));
            }
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(level)) | (Some(level), Some("+"))
                if depth == 0 && is_dollar(level) =>
            {
                return false;
            }
            (Some("+"), _) | (_, Some("+")) => {}
            (Some(x), Some(y)) if x != y => return false,
            _ => {}
        }
        is_empty_prefix = depth == 0 && (x == Some("") || y == Some(""));
        depth += 1;
    }
}

/// A literal level starting with `$`: at the top, only a literal matches it.
fn is_dollar(level: &str) -> bool {
    level.starts_with('$')
}

/// `+` or `#` in a username or client id would let `%u`/`%c` widen a pattern.
fn is_dangerous(name: &str) -> bool {
    name.contains(['+', '#'])
}

/// Whether a client's PUBLISH to `topic` is refused whatever the ACL file says (or with no
/// file at all), as mosquitto's `acl__check_dollar` refuses it: `$SYS` but for bridge state,
/// and `$share`.
pub fn write_refused_anyway(topic: &str) -> bool {
    topic.starts_with('$') && dollar_refuses(topic, Access::Write)
}

/// `acl__check_dollar`: refusals that come before, and regardless of, the file.
fn dollar_refuses(topic: &str, access: Access) -> bool {
    if topic.starts_with("$SYS") {
        access == Access::Write && !filter_matches(BRIDGE_STATE, topic)
    } else {
        topic.starts_with("$share")
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// `strtok_r(.., " ")`: the next space-delimited word, and what follows the space after it.
fn next_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches(' ');
    if text.is_empty() {
        return None;
    }
    Some(text.split_once(' ').unwrap_or((text, "")))
}

/// The words after `topic` or `pattern`: an optional access word, then the filter.
fn parse_rule(rest: &str) -> Result<(Grant, &str), String> {
    let Some((word, after)) = next_word(rest) else {
        return Err("empty topic".to_owned());
    };
    let (grant, filter) = if after.is_empty() {
        (Grant::ReadWrite, word)
    } else {
        let grant = match word {
            "read" => Grant::Read,
            "write" => Grant::Write,
            "readwrite" => Grant::ReadWrite,
            "deny" => Grant::Deny,
            _ => {
                return Err(format!(
                    "invalid topic access type `{word}` (read, write, readwrite or deny)"
                ))
            }
        };
        (grant, after.trim_matches(is_c_space))
    };
    if !is_filter(filter) {
        return Err(format!("invalid ACL topic `{filter}`"));
    }
    Ok((grant, filter))
}

/// `mosquitto_sub_topic_check`: wildcards as whole levels, `#` last, and the size limits.
fn is_filter(filter: &str) -> bool {
    let levels_ok = {
        let mut levels = filter.split('/').peekable();
        let mut ok = true;
        while let Some(level) = levels.next() {
            let is_wild = level == "+" || (level == "#" && levels.peek().is_none());
            ok &= is_wild || !level.contains(['+', '#']);
        }
        ok
    };
    let separators = filter.bytes().filter(|&b| b == b'/').count();
    levels_ok
        && !filter.is_empty()
        && filter.len() <= FILTER_BYTES_MAX
        && separators <= FILTER_SEPARATORS_MAX
}

/// `filter_matches` for a filter given as bytes (a pattern being substituted), without
/// building it: one level at a time, compared with the topic's level as it is read.
fn matches_bytes(filter: impl Iterator<Item = u8>, topic: &str) -> bool {
    let mut filter = filter.peekable();
    // Wildcard-led filters leave `$` topics alone [MQTT-4.7.2-1].
    if topic.starts_with('$') && matches!(filter.peek(), Some(&(b'+' | b'#'))) {
        return false;
    }
    let mut names = topic.split('/');
    loop {
        let name = names.next();
        let level = read_level(&mut filter, name.unwrap_or("").as_bytes());
        if level.is_hash {
            // `#` also matches the parent level [MQTT-4.7.1-2].
            return true;
        }
        if name.is_none() || !(level.is_plus || level.equals_name) {
            return false;
        }
        if level.is_last {
            return names.next().is_none();
        }
    }
}

/// One filter level as `read_level` saw it.
struct Level {
    is_plus: bool,
    is_hash: bool,
    equals_name: bool,
    /// No `/` followed it.
    is_last: bool,
}

/// Reads one filter level, up to a `/` or the end, comparing it with topic level `name`.
fn read_level(filter: &mut impl Iterator<Item = u8>, name: &[u8]) -> Level {
    let (mut len, mut first, mut same, mut is_last) = (0, 0u8, true, true);
    for byte in filter {
        if byte == b'/' {
            is_last = false;
            break;
        }
        if len == 0 {
            first = byte;
        }
        same &= name.get(len) == Some(&byte);
        len += 1;
        if !same && len > 1 {
            // Neither a wildcard nor the name: no need to read the rest of the level.
            break;
        }
    }
    Level {
        is_plus: len == 1 && first == b'+',
        is_hash: len == 1 && first == b'#',
        equals_name: same && len == name.len(),
        is_last,
    }
}

#[cfg(test)]
mod tests;
