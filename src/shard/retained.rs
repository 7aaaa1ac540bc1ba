//! Retained messages. Every shard keeps a replica of all of them (the message is one shared
//! `Arc<Publish>` across shards, so a replica costs only its index), so a subscribe is answered
//! from local memory without asking other shards.
//!
//! The index is a tree of topic levels, children in sorted order, walked by the filter: a
//! filter costs in proportion to the part of the tree it can match, not to the number of
//! retained topics. The walk is resumable: `collect` returns matches in topic order after a
//! given topic, so a subscriber is fed its retained set a batch at a time as its connection
//! takes it (see `cursor`), holding nothing but the topic it reached.
//!
//! Topic depth is chosen by peers, so nothing here recurses over the depth of the tree: the
//! walk uses an explicit stack and removal finds its cut point in a loop.

use super::Message;
use std::cmp::Ordering;
use std::collections::btree_map::{self, BTreeMap};
use std::ops::Bound;

/// One level of the tree: the retained message of the topic ending here, and the next levels.
#[derive(Default)]
struct Node {
    children: BTreeMap<Box<str>, Node>,
    message: Option<Message>,
}

/// The retained message of each topic that has one.
#[derive(Default)]
pub struct Retained {
    root: Node,
    len: usize,
}

impl Retained {
    /// Stores `message` for `topic`, or clears the topic when its payload is empty (or there
    /// is none) [MQTT-3.3.1-10], [MQTT-3.3.1-11].
    pub fn set(&mut self, topic: &str, message: Option<Message>) {
        match message {
            Some(m) if !m.publish.payload.is_empty() => self.insert(topic, m),
            _ => self.remove(topic),
        }
    }

    fn insert(&mut self, topic: &str, message: Message) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.len += 1;
        }
    }

    /// Removes the message of `topic` and the levels that existed only for it.
    fn remove(&mut self, topic: &str) {
        // First pass: find the topic's node and the deepest node on its path that must stay
        // (the root, or one with a message or another child): the branch below it goes.
        let mut node = &self.root;
        let mut keep = 0;
        for (depth, level) in topic.split('/').enumerate() {
            if depth == 0 || node.message.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            let Some(child) = node.children.get(level) else {
                return;
            };
            node = child;
        }
        if node.message.is_none() {
            return;
        }
        self.len -= 1;
        let is_leaf = node.children.is_empty();
        let mut levels = topic.split('/');
        let mut node = &mut self.root;
        if !is_leaf {
            // The topic's node still leads to other topics: only its message goes.
            for level in levels {
                node = node
                    .children
                    .get_mut(level)
                    .expect("found in the first pass");
            }
            node.message = None;
            return;
        }
        for level in levels.by_ref().take(keep) {
            node = node
                .children
                .get_mut(level)
                .expect("found in the first pass");
        }
        if let Some(level) = levels.next() {
            node.children.remove(level);
        }
    }

    /// Calls `f` with every retained topic and its message.
    pub fn for_each(&self, mut f: impl FnMut(&str, &Message)) {
        // An explicit stack: topic depth is the peers' choice.
        let mut stack: Vec<(String, &Node)> = vec![(String::new(), &self.root)];
        while let Some((path, node)) = stack.pop() {
            if let Some(message) = &node.message {
                f(&path, message);
            }
            for (level, child) in &node.children {
                let topic = if std::ptr::eq(node, &self.root) {
                    level.to_string()
                } else {
                    format!("{path}/{level}")
                };
                stack.push((topic, child));
            }
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends to `out`, in topic order (see `topic_order`), the retained messages whose
    /// topics match `filter` and come after topic `after` (all of them for None), until `out`
    /// holds `max`. Returns whether the walk went through every match (nothing is left
    /// after the last one added).
    pub fn collect(
        &self,
        filter: &str,
        after: Option<&str>,
        max: usize,
        out: &mut Vec<Message>,
    ) -> bool {
        let filter: Vec<&str> = filter.split('/').collect();
        let after: Option<Vec<&str>> = after.map(|t| t.split('/').collect());
        let mut walk = Walk {
            filter: &filter,
            after: after.as_deref(),
            stack: Vec::new(),
        };
        walk.enter(&self.root, 0, after.is_some(), false);
        while let Some(node) = walk.next() {
            if out.len() == max {
                return false;
            }
            out.extend(node.message.clone());
        }
        true
    }
}

/// The order retained topics are walked in: level by level, each level compared as bytes,
/// a topic before the topics below it (`a` < `a/b` < `a-b`).
pub fn topic_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// The children of one node still to visit.
enum Children<'a> {
    /// A range of the sorted children (`+`, `#`, or under `#`).
    Range(btree_map::Range<'a, Box<str>, Node>),
    /// The one child a literal filter level names, if not yet visited.
    One(Option<(&'a str, &'a Node)>),
}

impl<'a> Iterator for Children<'a> {
    type Item = (&'a str, &'a Node);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Children::Range(range) => range.next().map(|(key, node)| (&**key, node)),
            Children::One(one) => one.take(),
        }
    }
}

/// A node on the walk's stack, with its children still to visit.
struct Frame<'a> {
    children: Children<'a>,
    /// Depth of the children (levels from the root).
    depth: usize,
    /// Whether the path to the children so far equals the start bound's first levels, so a
    /// child equal to the bound's level stays bounded.
    is_bounded: bool,
    /// Whether a `#` level of the filter was passed: everything below matches.
    is_under_hash: bool,
}

/// A depth-first walk, children in order, of the nodes whose topics match a filter and come
/// after a start topic. A node is yielded before its children, which is topic order.
struct Walk<'f, 'a> {
    filter: &'f [&'f str],
    after: Option<&'f [&'f str]>,
    stack: Vec<Frame<'a>>,
}

impl<'f, 'a> Walk<'f, 'a> {
    /// Pushes the children of `node` (at `depth`) that the filter and the bound allow.
    fn enter(&mut self, node: &'a Node, depth: usize, is_bounded: bool, is_under_hash: bool) {
        let level = self.filter.get(depth).copied();
        let is_under_hash = is_under_hash || level == Some("#");
        // The bound's level at this depth, while the path equals the bound so far; past the
        // bound's end every child comes after it.
        let from = self
            .after
            .filter(|_| is_bounded)
            .and_then(|after| after.get(depth).copied());
        let children = match level {
            _ if is_under_hash || level == Some("+") => {
                let start = from.map_or(Bound::Unbounded, Bound::Included);
                Children::Range(node.children.range::<str, _>((start, Bound::Unbounded)))
            }
            Some(literal) => {
                let child = node.children.get_key_value(literal);
                let child = child.map(|(key, node)| (&**key, node));
                Children::One(child.filter(|(key, _)| from.is_none_or(|f| *key >= f)))
            }
            None => return,
        };
        self.stack.push(Frame {
            children,
            depth: depth + 1,
            is_bounded: from.is_some(),
            is_under_hash,
        });
    }

    /// The next node (in topic order) whose topic matches and comes after the bound.
    fn next(&mut self) -> Option<&'a Node> {
        loop {
            let frame = self.stack.last_mut()?;
            let Some((key, child)) = frame.children.next() else {
                self.stack.pop();
                continue;
            };
            let depth = frame.depth;
            let is_under_hash = frame.is_under_hash;
            let from = self.after.and_then(|after| after.get(depth - 1).copied());
            let is_bounded = frame.is_bounded && from == Some(key);
            // Wildcard-led filters leave `$` topics alone [MQTT-4.7.2-1].
            if depth == 1 && key.starts_with('$') && matches!(self.filter[0], "+" | "#") {
                continue;
            }
            self.enter(child, depth, is_bounded, is_under_hash);
            // A bounded node's topic is a prefix of the bound (or the bound itself): not after.
            let ends_here = depth == self.filter.len() || self.filter.get(depth) == Some(&"#");
            if !is_bounded && (ends_here || is_under_hash) && child.message.is_some() {
                return Some(child);
            }
        }
    }
}

#[cfg(test)]
mod tests;
