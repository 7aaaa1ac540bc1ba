//! The sans-IO protocol core: packets, codec, topics and the per-client session machine.
//! Nothing here does I/O or reads a clock; time is a parameter.

pub mod codec;
pub mod packet;
pub mod topic;

pub use packet::*;
