//! The cluster: the nodes of one data store acting as one — sealed gossip, the election and
//! the HA shell that carries it out, the Sentinel port clients find the primary through, and
//! the hooks that tell the operator about promotions and lost nodes.

pub mod discovery;
pub mod election;
pub mod gossip;
pub mod ha;
pub mod history;
pub mod hook;
pub mod replacement;
pub mod resp;
pub mod sentinel;
