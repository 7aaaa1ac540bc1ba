//! A collection allocated only while it holds something, and a boxed slice grown one entry at
//! a time.
//!
//! Most sessions never use their QoS 2 or topic-alias tables; a hash map with the shard's
//! hasher is 64 bytes even when empty, and a session lives as long as its client. Kept
//! here, an empty one costs one null pointer.

/// `T` on the heap while it holds something, nothing otherwise.
#[derive(Debug)]
pub struct Lazy<T>(Option<Box<T>>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(None)
    }
}

impl<T: Default> Lazy<T> {
    /// The collection, if it was ever given something since it was last emptied.
    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// The collection, allocated first if needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }

    /// The collection if allocated, to change or empty it (see `release_if`).
    pub fn existing_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Gives the allocation back when `is_empty` says the collection holds nothing.
    pub fn release_if(&mut self, is_empty: impl FnOnce(&T) -> bool) {
        if self.0.as_deref().is_some_and(is_empty) {
            self.0 = None;
        }
    }

    /// Takes the collection out (empty if none), leaving nothing allocated.
    pub fn take(&mut self) -> T {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Drops the collection.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// `slice` with `item` added at its end. For the many short lists a connection keeps for as
/// long as it lives (its filters, a trie level's children and subscribers): a boxed slice is
/// exactly as long as what it holds, and a pointer and a length where a vector adds its
/// capacity. Each push reallocates the slice, so keep them short.
pub fn pushed<T>(slice: &mut Box<[T]>, item: T) {
    let mut vec = std::mem::take(slice).into_vec();
    vec.reserve_exact(1);
    vec.push(item);
    *slice = vec.into_boxed_slice();
}

/// Takes entry `at` out of `slice`, the last entry moving into its place (`pushed`'s
/// counterpart: the slice stays exactly as long as what it holds).
pub fn swap_removed<T>(slice: &mut Box<[T]>, at: usize) -> T {
    let mut vec = std::mem::take(slice).into_vec();
    let item = vec.swap_remove(at);
    *slice = vec.into_boxed_slice();
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn allocates_on_first_use_and_gives_it_back_when_emptied() {
        let mut set: Lazy<HashSet<u16>> = Lazy::default();
        assert!(set.get().is_none());
        assert!(set.get_mut().insert(7));
        assert_eq!(set.get().map(HashSet::len), Some(1));
        set.existing_mut().map(|s| s.remove(&7));
        set.release_if(HashSet::is_empty);
        assert!(set.get().is_none(), "emptied: nothing held");
        set.get_mut().insert(9);
        assert_eq!(set.take(), HashSet::from([9]));
        assert!(set.get().is_none());
    }

    #[test]
    fn a_grown_or_shrunk_slice_is_exactly_as_long_as_what_it_holds() {
        let mut slice: Box<[u8]> = Box::default();
        pushed(&mut slice, 1);
        pushed(&mut slice, 2);
        pushed(&mut slice, 3);
        assert_eq!(swap_removed(&mut slice, 0), 1);
        assert_eq!(&*slice, &[3, 2]);
    }
}
