//! The shard's local subscription trie: topic filters stored level by level, matched against
//! topic names without allocating.
//!
//! A node has literal children by level, one `+` child and the subscribers of the filters
//! that end at it. Filters ending in `#` keep their subscribers on the parent of the `#`
//! level, since `#` has no children and also matches its parent [MQTT-4.7.1-2].
//!
//! Filter depth is chosen by peers, so nothing here recurses over the depth of the trie:
//! matching, pruning and dropping walk with explicit stacks.

use super::lazy::{pushed, swap_removed};
use super::HashMap;
use std::hash::Hash;
use std::ops::ControlFlow;

/// Literal children are kept in a slice up to this many: a linear scan over a few short
/// levels beats hashing them.
const FEW_CHILDREN_MAX: usize = 8;

/// Subscribers of one filter are kept in a slice without a key index up to this many (the
/// slice is copied to grow by one, so a subscribe copies at most this many entries).
const FEW_SUBSCRIBERS_MAX: usize = 16;

/// Pending branches a match holds on the call stack before spilling to the heap; only
/// topics that branch at more than this many levels ever allocate.
const MATCH_STACK_INLINE: usize = 16;

/// Subscriptions of one shard, by topic filter and subscriber key.
///
/// `K` identifies a subscriber (a session), `V` is what each subscription carries (its
/// options). Filters are the filter part of a subscription, without any `$share/` prefix,
/// and are expected to be valid (see `TopicFilter`); a malformed one is stored literally
/// and never panics.
pub struct Trie<K, V> {
    root: Node<K, V>,
    /// Number of (filter, key) subscriptions.
    len: usize,
    /// Counts the changes (inserts and removals): a result kept from a match is good while
    /// this is unchanged (see `Matched`).
    generation: u64,
}

impl<K: Eq + Hash + Clone, V> Default for Trie<K, V> {
    fn default() -> Self {
        Trie::new()
    }
}

impl<K: Eq + Hash + Clone, V> Trie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Trie {
            root: Node::new(),
            len: 0,
            generation: 0,
        }
    }

    /// Adds or replaces K's subscription on `filter` (the filter part, without any `$share`
    /// prefix). Returns the old value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        self.generation += 1;
        let (path, is_hash) = split_hash(filter);
        let mut node = &mut self.root;
        for level in path_levels(path) {
            node = node.child_or_insert(level);
        }
        let old = node.subscribers_mut(is_hash).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes K's subscription on `filter`, pruning nodes left empty. Returns its value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        self.generation += 1;
        let (path, is_hash) = split_hash(filter);
        let prune_at = self.prune_depth(path, is_hash, key)?;
        let mut node = &mut self.root;
        for level in path_levels(path) {
            node = node.child_mut(level)?;
        }
        let value = node.subscribers_mut(is_hash).remove(key);
        node.tidy_wild();
        let value = value?;
        self.len -= 1;
        if let (Some(depth), Some(path)) = (prune_at, path) {
            self.prune(path, depth);
        }
        Some(value)
    }

    /// Calls `visit(key, value)` for every subscription whose filter matches `topic` (one
    /// call per (filter, key)); no allocation per call.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let _ = self.walk(topic, |subscribers| {
            for (key, value) in subscribers.entries() {
                visit(key, value);
            }
            ControlFlow::Continue(())
        });
    }

    /// Whether any filter in the trie matches the topic (stops at the first one).
    pub fn has_match(&self, topic: &str) -> bool {
        let found = self.walk(topic, |subscribers| {
            if subscribers.is_empty() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        found.is_break()
    }

    /// The value of K's subscription on exactly `filter`.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (path, is_hash) = split_hash(filter);
        self.root.find(path)?.subscribers(is_hash)?.get(key)
    }

    /// Number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of subscriptions on exactly `filter` (the filter part, without any `$share`
    /// prefix).
    pub fn count(&self, filter: &str) -> usize {
        let (path, is_hash) = split_hash(filter);
        let subscribers = self.root.find(path).and_then(|n| n.subscribers(is_hash));
        subscribers.map_or(0, Subscribers::len)
    }

    /// Calls `visit(filter, key, value)` for every subscription, e.g. to move a session's
    /// subscriptions to another shard or to sync interest. Allocates the filter texts.
    pub fn for_each(&self, mut visit: impl FnMut(&str, &K, &V)) {
        self.for_each_set(|filter, subscribers| {
            for (key, value) in subscribers.entries() {
                visit(filter, key, value);
            }
        });
    }

    /// Calls `visit(filter, count)` for every filter with subscriptions, with their number.
    /// Allocates the filter texts.
    pub fn for_each_filter(&self, mut visit: impl FnMut(&str, usize)) {
        self.for_each_set(|filter, subscribers| visit(filter, subscribers.len()));
    }

    /// Calls `visit(filter, subscribers)` for every filter with subscribers.
    fn for_each_set(&self, mut visit: impl FnMut(&str, &Subscribers<K, V>)) {
        // The root has no level of its own, hence `None` rather than an empty path.
        let mut pending: Vec<(&Node<K, V>, Option<String>)> = vec![(&self.root, None)];
        while let Some((node, path)) = pending.pop() {
            node.visit_own(path.as_deref(), &mut visit);
            node.for_each_child(|level, child| {
                let child_path = match &path {
                    Some(path) => format!("{path}/{level}"),
                    None => level.to_owned(),
                };
                pending.push((child, Some(child_path)));
            });
        }
    }

    /// Walks the nodes whose filters match `topic`, handing each one's subscriber sets to
    /// `on` (exact filters and `#` filters separately) until `on` breaks.
    fn walk<'t>(
        &'t self,
        topic: &str,
        mut on: impl FnMut(&'t Subscribers<K, V>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        // Each entry is a node and where the topic's next level starts (`None`: no more).
        let mut pending = SmallStack::new();
        pending.push((&self.root, Some(0)));
        while let Some((node, start)) = pending.pop() {
            let Some(start) = start else {
                // Topic used up: filters ending here match, and so does `{here}/#`.
                on(&node.exact)?;
                if let Some(hash) = node.hash() {
                    on(hash)?;
                }
                continue;
            };
            let (level, next) = level_at(topic, start);
            // Wildcards at the first level leave `$` topics alone [MQTT-4.7.2-1].
            if start != 0 || !level.starts_with('$') {
                if let Some(wild) = &node.wild {
                    on(&wild.hash)?;
                    if let Some(plus) = &wild.plus {
                        pending.push((plus, next));
                    }
                }
            }
            if let Some(child) = node.children.get(level) {
                pending.push((child, next));
            }
        }
        ControlFlow::Continue(())
    }

    /// `None` if K has no subscription on the filter; otherwise, if removing it leaves its
    /// node empty, the depth of the deepest ancestor that stays (whose child on the path goes).
    fn prune_depth(&self, path: Option<&str>, is_hash: bool, key: &K) -> Option<Option<usize>> {
        let mut node = &self.root;
        let (mut depth, mut keep) = (0, 0);
        for level in path_levels(path) {
            if node.is_needed_off_path() {
                keep = depth;
            }
            node = node.child(level)?;
            depth += 1;
        }
        let subscribers = node.subscribers(is_hash)?;
        subscribers.get(key)?;
        let emptied =
            subscribers.len() == 1 && !node.has_subscribers(!is_hash) && node.child_count() == 0;
        Some((emptied && depth > 0).then_some(keep))
    }

    /// Cuts the path's edge below the node at `depth`, dropping the empty chain under it.
    fn prune(&mut self, path: &str, depth: usize) {
        let mut levels = path.split('/');
        let mut node = &mut self.root;
        for level in levels.by_ref().take(depth) {
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if let Some(level) = levels.next() {
            node.remove_child(level);
        }
    }
}

/// The subscriptions that a topic matched, sorted by key, kept while the trie is unchanged: a
/// publisher repeats its topic, and the PUBLISHes of one read turn are routed one after
/// another, so the walk and the sort are paid once per run of a topic, not per message (the
/// walk was a fifth of a pairs-100 delivery).
pub struct Matched<K, V> {
    topic: String,
    /// The trie's generation when `list` was made; `None`: no list yet.
    generation: Option<u64>,
    list: Vec<(K, V)>,
}

impl<K, V> Default for Matched<K, V> {
    fn default() -> Self {
        Matched {
            topic: String::new(),
            generation: None,
            list: Vec::new(),
        }
    }
}

impl<K: Eq + Hash + Clone + Ord + Copy, V: Copy> Matched<K, V> {
    /// What `trie.for_each_match(topic, ..)` visits, sorted by key; walked again only when
    /// the topic or the trie changed since the last call.
    pub fn of(&mut self, trie: &Trie<K, V>, topic: &str) -> &[(K, V)] {
        let generation = Some(trie.generation);
        if self.generation != generation || self.topic != topic {
            let list = &mut self.list;
            list.clear();
            trie.for_each_match(topic, |key, value| list.push((*key, *value)));
            list.sort_unstable_by_key(|(key, _)| *key);
            self.topic.clear();
            self.topic.push_str(topic);
            self.generation = generation;
        }
        &self.list
    }
}

/// Splits a trailing `#` level off a filter: `a/b/#` is `(Some("a/b"), true)`, `#` is
/// `(None, true)`, `a/b` is `(Some("a/b"), false)`.
fn split_hash(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        return (None, true);
    }
    match filter.strip_suffix("/#") {
        Some(path) => (Some(path), true),
        None => (Some(filter), false),
    }
}

/// The levels of a path from `split_hash`; no levels when there is no path.
fn path_levels(path: Option<&str>) -> impl Iterator<Item = &str> {
    path.into_iter().flat_map(|path| path.split('/'))
}

/// The level of `topic` starting at byte `start`, and where the next one starts.
fn level_at(topic: &str, start: usize) -> (&str, Option<usize>) {
    let rest = topic.get(start..).unwrap_or_default();
    // A byte scan: topic levels are short, and `str::find` pays a searcher set-up per call
    // (8% of a pairs-100 profile). '/' is ASCII, so the index is a char boundary.
    match rest.bytes().position(|b| b == b'/') {
        Some(end) => (&rest[..end], Some(start + end + 1)),
        None => (rest, None),
    }
}

/// One level of the trie.
struct Node<K, V> {
    /// Children by literal level.
    children: Children<K, V>,
    /// Subscribers of the filters that end at this node.
    exact: Subscribers<K, V>,
    /// The `+` child and the `#` subscribers, boxed while any: most nodes have neither (a
    /// device's own topic), and every node is as large as its fields, in its parent's slice
    /// or map (a node of 96 bytes took ~190 bytes of its parent's map at 19,000 devices).
    wild: Option<Box<Wild<K, V>>>,
}

/// What a node holds for wildcard filters.
struct Wild<K, V> {
    /// The `+` child.
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers of `{this node}/#`.
    hash: Subscribers<K, V>,
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: Children::Few(Box::default()),
            exact: Subscribers::new(),
            wild: None,
        }
    }

    fn plus(&self) -> Option<&Node<K, V>> {
        self.wild.as_ref().and_then(|w| w.plus.as_deref())
    }

    /// Subscribers of `{this node}/#`, if any were ever added and not tidied away.
    fn hash(&self) -> Option<&Subscribers<K, V>> {
        self.wild.as_ref().map(|w| &w.hash)
    }

    fn wild_mut(&mut self) -> &mut Wild<K, V> {
        self.wild.get_or_insert_with(|| {
            Box::new(Wild {
                plus: None,
                hash: Subscribers::new(),
            })
        })
    }

    /// Gives back the wildcard box once it holds nothing.
    fn tidy_wild(&mut self) {
        if self
            .wild
            .as_ref()
            .is_some_and(|w| w.plus.is_none() && w.hash.is_empty())
        {
            self.wild = None;
        }
    }

    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.wild.as_mut().and_then(|w| w.plus.as_deref_mut()),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        match level {
            "+" => self
                .wild_mut()
                .plus
                .get_or_insert_with(|| Box::new(Node::new())),
            _ => self.children.get_or_insert(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => {
                if let Some(wild) = &mut self.wild {
                    wild.plus = None;
                }
                self.tidy_wild();
            }
            _ => self.children.remove(level),
        }
    }

    /// The node a filter path leads to, if it exists.
    fn find(&self, path: Option<&str>) -> Option<&Node<K, V>> {
        let mut node = self;
        for level in path_levels(path) {
            node = node.child(level)?;
        }
        Some(node)
    }

    fn subscribers(&self, is_hash: bool) -> Option<&Subscribers<K, V>> {
        if is_hash {
            self.hash()
        } else {
            Some(&self.exact)
        }
    }

    fn subscribers_mut(&mut self, is_hash: bool) -> &mut Subscribers<K, V> {
        if is_hash {
            &mut self.wild_mut().hash
        } else {
            &mut self.exact
        }
    }

    /// Whether any filter ends at this node (`is_hash`: `{this node}/#`).
    fn has_subscribers(&self, is_hash: bool) -> bool {
        self.subscribers(is_hash).is_some_and(|s| !s.is_empty())
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus().is_some())
    }

    /// Whether the node must stay even if its one child on some path were removed.
    fn is_needed_off_path(&self) -> bool {
        self.has_subscribers(false) || self.has_subscribers(true) || self.child_count() > 1
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        !self.has_subscribers(false) && !self.has_subscribers(true) && self.child_count() == 0
    }

    fn for_each_child<'a>(&'a self, mut visit: impl FnMut(&'a str, &'a Node<K, V>)) {
        self.children.for_each(&mut visit);
        if let Some(plus) = self.plus() {
            visit("+", plus);
        }
    }

    /// Reports the subscriber sets held at this node, empty ones left out; `path` is `None`
    /// for the root.
    fn visit_own(&self, path: Option<&str>, visit: &mut impl FnMut(&str, &Subscribers<K, V>)) {
        if let Some(path) = path.filter(|_| !self.exact.is_empty()) {
            visit(path, &self.exact);
        }
        let Some(hash) = self.hash().filter(|h| !h.is_empty()) else {
            return;
        };
        let filter = match path {
            Some(path) => format!("{path}/#"),
            None => "#".to_owned(),
        };
        visit(&filter, hash);
    }

    /// Moves this node's children into `out`.
    fn take_children(&mut self, out: &mut Vec<Node<K, V>>) {
        if let Some(plus) = self.wild.as_mut().and_then(|w| w.plus.take()) {
            out.push(*plus);
        }
        self.children.drain_into(out);
    }
}

impl<K, V> Drop for Node<K, V> {
    fn drop(&mut self) {
        // Dropping a deep chain field by field would recurse once per level, and peers choose
        // the depth; flatten it instead so each node drops with no children.
        if self.child_count() == 0 {
            return;
        }
        let mut pending = Vec::new();
        self.take_children(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.take_children(&mut pending);
        }
    }
}

/// A literal child: its level and its node.
type Child<K, V> = (Box<str>, Node<K, V>);

/// Literal children of a node: a boxed slice while few, a map beyond. Both variants are one
/// slice wide (16 bytes), and every node holds one.
enum Children<K, V> {
    Few(Box<[Child<K, V>]>),
    // Boxed so that the common small node stays small (nodes are most of a trie's memory).
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Box<str>, Node<K, V>>>),
}

impl<K, V> Children<K, V> {
    fn get(&self, level: &str) -> Option<&Node<K, V>> {
        match self {
            Children::Few(few) => few.iter().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Children::Many(map) => map.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match self {
            Children::Few(few) => few.iter_mut().find(|(l, _)| **l == *level).map(|(_, n)| n),
            Children::Many(map) => map.get_mut(level),
        }
    }

    fn get_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        if let Children::Few(few) = self {
            if few.len() >= FEW_CHILDREN_MAX && !few.iter().any(|(l, _)| **l == *level) {
                let few = std::mem::take(few).into_vec();
                *self = Children::Many(Box::new(few.into_iter().collect()));
            }
        }
        match self {
            Children::Few(few) => {
                let at = match few.iter().position(|(l, _)| **l == *level) {
                    Some(at) => at,
                    None => {
                        pushed(few, (level.into(), Node::new()));
                        few.len() - 1
                    }
                };
                &mut few[at].1
            }
            Children::Many(map) => map.entry(level.into()).or_insert_with(Node::new),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Children::Few(few) => {
                let mut kept = std::mem::take(few).into_vec();
                kept.retain(|(l, _)| **l != *level);
                *few = kept.into_boxed_slice();
            }
            Children::Many(map) => {
                map.remove(level);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Children::Few(few) => few.len(),
            Children::Many(map) => map.len(),
        }
    }

    fn for_each<'a>(&'a self, visit: &mut impl FnMut(&'a str, &'a Node<K, V>)) {
        match self {
            Children::Few(few) => few.iter().for_each(|(l, n)| visit(l, n)),
            Children::Many(map) => map.iter().for_each(|(l, n)| visit(l, n)),
        }
    }

    fn drain_into(&mut self, out: &mut Vec<Node<K, V>>) {
        match self {
            Children::Few(few) => {
                out.extend(std::mem::take(few).into_vec().into_iter().map(|(_, n)| n))
            }
            Children::Many(map) => out.extend(map.drain().map(|(_, n)| n)),
        }
    }
}

/// The subscribers of one filter: a boxed slice while few (most filters have one subscriber,
/// a device on a topic of its own), a vector indexed by key beyond, so that subscribing
/// thousands of sessions to one filter stays linear. Both variants are one slice wide, and
/// every node holds one.
enum Subscribers<K, V> {
    Few(Box<[(K, V)]>),
    Many(Box<Indexed<K, V>>),
}

/// Many subscribers of one filter, with the position of each key.
struct Indexed<K, V> {
    entries: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K, V> Subscribers<K, V> {
    fn new() -> Self {
        Subscribers::Few(Box::default())
    }

    fn entries(&self) -> &[(K, V)] {
        match self {
            Subscribers::Few(few) => few,
            Subscribers::Many(many) => &many.entries,
        }
    }

    fn len(&self) -> usize {
        self.entries().len()
    }

    fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }
}

impl<K: Eq + Hash + Clone, V> Subscribers<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match self {
            Subscribers::Few(few) => few.iter().position(|(k, _)| k == key),
            Subscribers::Many(many) => many.index.get(key).copied(),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|at| &self.entries()[at].1)
    }

    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(at) = self.position(&key) {
            let entry = match self {
                Subscribers::Few(few) => &mut few[at],
                Subscribers::Many(many) => &mut many.entries[at],
            };
            return Some(std::mem::replace(&mut entry.1, value));
        }
        match self {
            Subscribers::Few(few) if few.len() < FEW_SUBSCRIBERS_MAX => pushed(few, (key, value)),
            Subscribers::Few(few) => {
                let mut entries = std::mem::take(few).into_vec();
                entries.push((key, value));
                let index = entries.iter().enumerate();
                let index = index.map(|(at, (k, _))| (k.clone(), at)).collect();
                *self = Subscribers::Many(Box::new(Indexed { entries, index }));
            }
            Subscribers::Many(many) => {
                many.index.insert(key.clone(), many.entries.len());
                many.entries.push((key, value));
            }
        }
        None
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.position(key)?;
        match self {
            Subscribers::Few(few) => Some(swap_removed(few, at).1),
            Subscribers::Many(many) => {
                let (_, value) = many.entries.swap_remove(at);
                many.index.remove(key);
                // The last entry moved into the hole.
                if let Some((moved, _)) = many.entries.get(at) {
                    many.index.insert(moved.clone(), at);
                }
                Some(value)
            }
        }
    }
}

/// A stack that keeps its first few entries inline and spills to the heap beyond.
struct SmallStack<T> {
    inline: [Option<T>; MATCH_STACK_INLINE],
    inline_len: usize,
    spill: Vec<T>,
}

impl<T> SmallStack<T> {
    fn new() -> Self {
        SmallStack {
            inline: [const { None }; MATCH_STACK_INLINE],
            inline_len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, item: T) {
        if self.inline_len < MATCH_STACK_INLINE && self.spill.is_empty() {
            self.inline[self.inline_len] = Some(item);
            self.inline_len += 1;
        } else {
            self.spill.push(item);
        }
    }

    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        self.inline[self.inline_len].take()
    }
}

#[cfg(test)]
mod tests;
