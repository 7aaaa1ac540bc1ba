//! One subscription as a session, the trie and the store keep it.

use super::lazy::{pushed, swap_removed};
use crate::protocol::SubscriptionOptions;

/// One subscription as a session and the trie keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Subscription {
    /// Options from the SUBSCRIBE entry.
    pub options: SubscriptionOptions,
    /// 5.0 Subscription Identifier from the SUBSCRIBE, returned with each matching PUBLISH.
    pub id: Option<u32>,
    /// Whether the ACL lets the client read only some of what the filter matches, so each
    /// message is checked (`Session::may_read`); false when it may read all of it.
    pub is_filtered: bool,
}

/// Filters a session holds beyond this many are indexed by a hash map; up to it, a slice
/// scanned in order is smaller and as quick.
const FEW_FILTERS_MAX: usize = 8;

/// A session's subscriptions by filter (as the client wrote it).
///
/// Most devices subscribe to one or two filters: a hash map kept room for four (~180 bytes
/// for one filter), a slice holds exactly what is there (40 bytes for one) and is 8 bytes
/// narrower than a vector in every session.
#[derive(Debug)]
pub enum SubscriptionMap {
    /// Up to `FEW_FILTERS_MAX` filters, unordered.
    Few(Box<[(String, Subscription)]>),
    /// More (boxed: a hash map with its hasher's keys is 64 bytes, and every session holds
    /// this enum).
    #[allow(clippy::box_collection)]
    Many(Box<super::HashMap<String, Subscription>>),
}

impl Default for SubscriptionMap {
    fn default() -> Self {
        SubscriptionMap::Few(Box::default())
    }
}

impl SubscriptionMap {
    /// An empty map.
    pub fn new() -> Self {
        SubscriptionMap::default()
    }

    /// The subscription on `filter`.
    pub fn get(&self, filter: &str) -> Option<&Subscription> {
        match self {
            SubscriptionMap::Few(few) => few.iter().find(|(f, _)| f == filter).map(|(_, s)| s),
            SubscriptionMap::Many(map) => map.get(filter),
        }
    }

    /// The subscription on `filter`, to change.
    pub fn get_mut(&mut self, filter: &str) -> Option<&mut Subscription> {
        match self {
            SubscriptionMap::Few(few) => few.iter_mut().find(|(f, _)| f == filter).map(|(_, s)| s),
            SubscriptionMap::Many(map) => map.get_mut(filter),
        }
    }

    /// Whether there is a subscription on `filter`.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Adds or replaces the subscription on `filter`; returns the one replaced.
    pub fn insert(&mut self, filter: String, sub: Subscription) -> Option<Subscription> {
        if let Some(old) = self.get_mut(&filter) {
            return Some(std::mem::replace(old, sub));
        }
        match self {
            SubscriptionMap::Few(few) if few.len() < FEW_FILTERS_MAX => pushed(few, (filter, sub)),
            SubscriptionMap::Few(few) => {
                let few = std::mem::take(few).into_vec();
                let mut map: super::HashMap<_, _> = few.into_iter().collect();
                map.insert(filter, sub);
                *self = SubscriptionMap::Many(Box::new(map));
            }
            SubscriptionMap::Many(map) => {
                map.insert(filter, sub);
            }
        }
        None
    }

    /// Removes the subscription on `filter`; returns it.
    pub fn remove(&mut self, filter: &str) -> Option<Subscription> {
        match self {
            SubscriptionMap::Few(few) => {
                let at = few.iter().position(|(f, _)| f == filter)?;
                Some(swap_removed(few, at).1)
            }
            SubscriptionMap::Many(map) => map.remove(filter),
        }
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        match self {
            SubscriptionMap::Few(few) => few.len(),
            SubscriptionMap::Many(map) => map.len(),
        }
    }

    /// Whether there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Filters and subscriptions, in no particular order.
    pub fn iter(&self) -> Iter<'_> {
        match self {
            SubscriptionMap::Few(few) => Iter::Few(few.iter()),
            SubscriptionMap::Many(map) => Iter::Many(map.iter()),
        }
    }

    /// The filters, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.iter().map(|(f, _)| f)
    }

    /// Takes every subscription out, leaving the map empty.
    pub fn drain(&mut self) -> impl Iterator<Item = (String, Subscription)> {
        match std::mem::take(self) {
            SubscriptionMap::Few(few) => few.into_vec().into_iter(),
            SubscriptionMap::Many(map) => (*map).into_iter().collect::<Vec<_>>().into_iter(),
        }
    }
}

/// The entries of a `SubscriptionMap`.
pub enum Iter<'a> {
    /// Of a slice.
    Few(std::slice::Iter<'a, (String, Subscription)>),
    /// Of a hash map.
    Many(std::collections::hash_map::Iter<'a, String, Subscription>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a String, &'a Subscription);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(few) => few.next().map(|(f, s)| (f, s)),
            Iter::Many(map) => map.next(),
        }
    }
}

impl<'a> IntoIterator for &'a SubscriptionMap {
    type Item = (&'a String, &'a Subscription);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl FromIterator<(String, Subscription)> for SubscriptionMap {
    fn from_iter<I: IntoIterator<Item = (String, Subscription)>>(iter: I) -> Self {
        let mut map = SubscriptionMap::new();
        for (filter, sub) in iter {
            map.insert(filter, sub);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: u32) -> Subscription {
        Subscription {
            id: Some(id),
            ..Subscription::default()
        }
    }

    #[test]
    fn the_map_is_a_slice_wide() {
        // Every session holds one.
        assert_eq!(
            std::mem::size_of::<SubscriptionMap>(),
            std::mem::size_of::<Box<[(String, Subscription)]>>()
        );
    }

    #[test]
    fn one_filter_holds_room_for_one() {
        let mut map = SubscriptionMap::new();
        map.insert("dev-1/state".into(), sub(1));
        let SubscriptionMap::Few(few) = &map else {
            panic!("one filter is few");
        };
        assert_eq!(few.len(), 1);
    }

    #[test]
    fn many_filters_switch_to_a_hash_map_and_keep_every_entry() {
        let mut map = SubscriptionMap::new();
        for i in 0..40u32 {
            assert_eq!(map.insert(format!("f/{i}"), sub(i)), None);
            assert_eq!(map.insert(format!("f/{i}"), sub(i + 100)), Some(sub(i)));
        }
        assert!(matches!(map, SubscriptionMap::Many(_)));
        assert_eq!(map.len(), 40);
        for i in 0..40u32 {
            assert_eq!(map.get(&format!("f/{i}")), Some(&sub(i + 100)));
        }
        assert_eq!(map.remove("f/3"), Some(sub(103)));
        assert!(!map.contains_key("f/3"));
        let mut drained: Vec<_> = map.drain().map(|(f, _)| f).collect();
        drained.sort();
        assert_eq!(drained.len(), 39);
        assert!(map.is_empty());
    }

    #[test]
    fn few_filters_behave_like_a_map() {
        let mut map: SubscriptionMap = [("a".to_string(), sub(1)), ("b".to_string(), sub(2))]
            .into_iter()
            .collect();
        assert_eq!(map.get("b"), Some(&sub(2)));
        if let Some(s) = map.get_mut("a") {
            *s = sub(5);
        }
        assert_eq!(map.remove("a"), Some(sub(5)));
        assert_eq!(map.remove("a"), None);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(map.remove("b"), Some(sub(2)));
        assert!(map.is_empty());
    }
}
