//! Topic names and topic filters.
