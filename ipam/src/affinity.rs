//! Block affinities: which node a block belongs to, and where its claim or release stands.

use std::fmt;
use std::str::FromStr;

use crate::cidr::BlockCidr;

/// Where a claim or a release stands. A claim writes `Pending`, creates the block, then
/// confirms; a release writes `PendingDeletion`, deletes the block, then the affinity. The
/// block object decides ownership; the states let a restarted agent finish what it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

impl fmt::Display for AffinityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AffinityState::Pending => "pending",
            AffinityState::Confirmed => "confirmed",
            AffinityState::PendingDeletion => "pendingDeletion",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("affinity state {0:?} is not one of pending, confirmed, pendingDeletion")]
pub struct AffinityStateError(pub String);

impl FromStr for AffinityState {
    type Err = AffinityStateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(AffinityState::Pending),
            "confirmed" => Ok(AffinityState::Confirmed),
            "pendingDeletion" => Ok(AffinityState::PendingDeletion),
            _ => Err(AffinityStateError(s.to_owned())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockAffinity {
    pub node: String,
    pub cidr: BlockCidr,
    pub state: AffinityState,
}

impl BlockAffinity {
    /// The object name: `<node>-<block object name>`, as Calico names them.
    pub fn object_name(&self) -> String {
        format!("{}-{}", self.node, self.cidr.object_name())
    }
}
