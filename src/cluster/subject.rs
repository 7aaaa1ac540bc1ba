//! MQTT topics and filters as NATS subjects (written down in docs/SCALING.md).
//!
//! A NATS subject is tokens separated by `.`; a token is non-empty and may not hold `.`, `*`,
//! `>` or whitespace, and JetStream KV keys allow only `[A-Za-z0-9_=.-]`. An MQTT level may be
//! empty and hold any UTF-8. So each level is escaped into `[A-Za-z0-9_-]` plus `=`:
//!
//! - `A`–`Z`, `a`–`z`, `0`–`9`, `_`, `-` stand for themselves;
//! - every other byte (of the level's UTF-8) is `=` and two upper-case hex digits (`.` is `=2E`,
//!   `=` itself `=3D`, a space `=20`, `$` `=24`);
//! - an empty level is `=` alone (which no escape produces, so decoding is unambiguous).
//!
//! Topics live under `rc.t.` — or `rc.s.` when the first level starts with `$`, so that
//! filters that start with a wildcard (`#`, `+/…`) do not reach `$SYS` and the like, as MQTT
//! says [MQTT-4.7.2-1]. A filter maps `+` to `*`; `#` to `>` plus the parent level itself
//! (MQTT's `a/#` matches `a`; NATS' `a.>` does not), so a filter is one or two subjects.

/// First token of every subject ringcast uses.
pub const ROOT: &str = "rc";
/// Namespace token of topics whose first level does not start with `$`.
const PLAIN: &str = "t";
/// Namespace token of topics whose first level starts with `$`.
const SYSTEM: &str = "s";

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether a byte stands for itself in a token.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// One MQTT level as one NATS token (see the module doc).
pub fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for &b in level.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('=');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// The MQTT level a token stands for; None for a token `escape_level` never makes.
pub fn unescape_level(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).filter(|_| b == b'=')?;
        let digit = |h: u8| HEX.iter().position(|&d| d == h);
        let byte = (digit(hex[0])? << 4 | digit(hex[1])?) as u8;
        if is_plain(byte) {
            return None; // never escaped, so not canonical
        }
        out.push(byte);
        i += 3;
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The namespace token of a topic or filter whose first level is `first`.
fn namespace(first: &str) -> &'static str {
    if first.starts_with('$') {
        SYSTEM
    } else {
        PLAIN
    }
}

/// The levels of a topic as a KV key: namespace and escaped levels (`t.a.b`).
pub fn topic_key(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    out.push_str(namespace(topic));
    for level in topic.split('/') {
        out.push('.');
        escape_level(level, &mut out);
    }
    out
}

/// The topic a KV key (`topic_key`) stands for.
pub fn key_topic(key: &str) -> Option<String> {
    let mut tokens = key.split('.');
    let space = tokens.next()?;
    let levels = tokens
        .map(unescape_level)
        .collect::<Option<Vec<String>>>()?;
    let topic = levels.join("/");
    (!levels.is_empty() && namespace(&topic) == space).then_some(topic)
}

/// The NATS subject a message on `topic` is published to (`rc.t.a.b`).
pub fn topic_subject(topic: &str) -> String {
    format!("{ROOT}.{}", topic_key(topic))
}

/// The topic a subject (`topic_subject`) stands for.
pub fn subject_topic(subject: &str) -> Option<String> {
    key_topic(subject.strip_prefix(ROOT)?.strip_prefix('.')?)
}

/// The NATS subjects that together match what an MQTT filter (not `$share/…`) matches: one,
/// or two when it ends in `#` below the first level (`a/#` is `rc.t.a.>` and `rc.t.a`).
pub fn filter_subjects(filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut out = format!("{ROOT}.{}", namespace(filter));
    let mut parent = None;
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" => {
                if i > 0 {
                    parent = Some(out.clone());
                }
                out.push_str(".>");
            }
            "+" => out.push_str(".*"),
            level => {
                out.push('.');
                escape_level(level, &mut out);
            }
        }
    }
    let mut subjects = vec![out];
    subjects.extend(parent);
    subjects
}

/// A NATS queue group name for a `$share` group name.
pub fn queue_group(group: &str) -> String {
    let mut out = String::with_capacity(group.len() + 4);
    escape_level(group, &mut out);
    out
}

/// NATS' own matching of a subscription subject (with `*` and `>`) against a published
/// subject: `*` takes one token, `>` one or more at the end.
pub fn nats_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for want in filter.split('.') {
        match (want, tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (want, Some(token)) if want == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests;
