//! tortie-bgp: a BGP-4 speaker for tortie.
//!
//! - [`wire`]: the codec (messages, attributes, RFC 7606 error handling).
//! - [`fsm`]: the RFC 4271 state machine of one peer, pure.
//! - [`rib`]: Adj-RIB-In, Loc-RIB, best path, route reflection, graceful restart state,
//!   Adj-RIB-Out queues, pure.
//! - [`speaker`]: the tokio driver and the API the agent calls ([`Speaker`]).
//!
//! The crate never touches netlink or Kubernetes: it reports Loc-RIB changes and the agent
//! decides which kernel routes follow from them.

pub mod fsm;
pub mod rib;
pub mod wire;
