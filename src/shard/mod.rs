//! Everything one core owns: its subscription trie (and, later, its run loop and stores).

pub mod trie;
