//! Which `in` rules the remote is asked for: a rule's filter is subscribed at the remote only
//! while some subscription on this broker could receive what it brings, that is while some
//! local filter overlaps the rule's local filter (some topic matches both).

/// Whether some topic name matches both filters (valid filters, without `$share/`).
pub fn overlaps(a: &str, b: &str) -> bool {
    // Wildcard-led filters leave `$` topics alone [MQTT-4.7.2-1].
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let mut a = a.split('/');
    let mut b = b.split('/');
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(x), Some(y)) if x == y || x == "+" || y == "+" => continue,
            (Some(_), Some(_)) => return false,
            (None, None) => return true,
            // `a/#` matches `a`: one filter ended where the other goes on with `#` only.
            (None, Some(rest)) | (Some(rest), None) => return rest == "#",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::filter_matches;

    #[test]
    fn overlapping_filters() {
        for (a, b, expected) in [
            ("a/#", "a/b", true),
            ("a/#", "a", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/+", true),
            ("a/b", "a/c", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("sensors/#", "sensors/+/temp", true),
            ("x/y", "x/y", true),
            ("x/y", "x/y/z", false),
        ] {
            assert_eq!(overlaps(a, b), expected, "{a} {b}");
            assert_eq!(overlaps(b, a), expected, "{b} {a}");
        }
    }

    /// Checked against the matcher the tries are held to: filters over a small alphabet
    /// overlap exactly when some topic of that alphabet matches both.
    #[test]
    fn overlaps_agrees_with_matching_some_topic() {
        let levels = ["a", "b", "+", "#"];
        let mut filters = Vec::new();
        for n in 1..=3u32 {
            for i in 0..levels.len().pow(n) {
                let f: Vec<&str> = (0..n)
                    .map(|k| levels[i / levels.len().pow(k) % levels.len()])
                    .collect();
                if f[..f.len() - 1].contains(&"#") {
                    continue;
                }
                filters.push(f.join("/"));
            }
        }
        let mut topics = Vec::new();
        for n in 1..=4u32 {
            for i in 0..3usize.pow(n) {
                let t: Vec<&str> = (0..n)
                    .map(|k| ["a", "b", "c"][i / 3usize.pow(k) % 3])
                    .collect();
                topics.push(t.join("/"));
            }
        }
        for a in &filters {
            for b in &filters {
                let some = topics
                    .iter()
                    .any(|t| filter_matches(a, t) && filter_matches(b, t));
                assert_eq!(overlaps(a, b), some, "{a} {b}");
            }
        }
    }
}
