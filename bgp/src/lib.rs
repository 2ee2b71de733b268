//! tortie-bgp: a BGP-4 speaker for tortie.
//!
//! - [`wire`]: the codec (messages, attributes, RFC 7606 error handling).
//! - [`fsm`]: the RFC 4271 state machine of one peer, pure.
//! - [`rib`]: Adj-RIB-In, Loc-RIB, best path, route reflection, graceful restart state,
//!   Adj-RIB-Out queues, pure.
//! - [`speaker`] and `session`: the tokio driver, and [`Speaker`], the API the agent calls.
//!
//! The crate never touches netlink or Kubernetes: it reports Loc-RIB changes and the agent
//! decides which kernel routes follow from them.

use std::net::{IpAddr, SocketAddr};

pub mod config;
pub mod fsm;
mod md5;
pub mod rib;
mod session;
pub mod speaker;
pub mod wire;

pub use config::{BGP_PORT, Password, PeerConfig, SpeakerConfig};
pub use fsm::State;
pub use rib::RouteChange;
pub use speaker::{PeerStatus, RibEvent, Speaker, Subscription};

/// What the speaker API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("peer {peer}: {reason}")]
    Config { peer: IpAddr, reason: String },
    #[error("peer {0} is already configured")]
    DuplicatePeer(IpAddr),
    #[error("peer {0} is not configured")]
    UnknownPeer(IpAddr),
    #[error("too many peers (at most 65534)")]
    TooManyPeers,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set the TCP MD5 key for peer {peer} on the listening socket: {source}")]
    Md5 {
        peer: IpAddr,
        source: std::io::Error,
    },
    #[error("the BGP speaker has stopped")]
    Stopped,
}
