//! NetworkPolicy and NAT outgoing in iptables and ipset (docs/policy.md): the input model,
//! selector matching, the pure compiler, the applier, and the task that owns them.

pub mod apply;
pub mod compile;
pub mod model;
pub mod selector;
pub mod task;
