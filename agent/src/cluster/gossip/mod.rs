//! Gossip between the agents of one data store: chitchat over an authenticated, encrypted,
//! replay-protected UDP transport.
//!
//! - [`seal`]: the datagram format and its checks (pure: no I/O, time is an input).
//! - [`cluster`]: the gossip actor the agent runs (chitchat over the sealed transport).
//! - [`transport`]: chitchat's `Transport` over real UDP or an in-memory network, counting
//!   every dropped datagram by reason.

pub mod cluster;
pub mod seal;
pub mod transport;
