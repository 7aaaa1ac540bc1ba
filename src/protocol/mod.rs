//! The sans-IO protocol core: packets, codec, topics and the per-connection machine.
//! Nothing here does I/O or reads a clock; time is a parameter.

pub mod auth;
pub mod codec;
pub mod connection;
pub mod packet;
pub mod topic;

pub use packet::*;
