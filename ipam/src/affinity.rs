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
    /// The object name: `<node>-<block object name>`, as Calico names them. A node name so
    /// long that this would pass Kubernetes' 253 characters is cut and made unique again with
    /// a hash of the whole name (readers go by `spec.node`, never by the object name).
    pub fn object_name(&self) -> String {
        let block = self.cidr.object_name();
        let name = format!("{}-{block}", self.node);
        if name.len() <= MAX_NAME {
            return name;
        }
        let hash = format!("{:016x}", fnv1a(&self.node));
        let room = MAX_NAME - block.len() - hash.len() - 2;
        let mut cut = room.min(self.node.len());
        while !self.node.is_char_boundary(cut) {
            cut -= 1;
        }
        // A name must end in an alphanumeric before each dash we add.
        let prefix = self.node[..cut].trim_end_matches(['-', '.']);
        format!("{prefix}-{hash}-{block}")
    }
}

/// Kubernetes' limit for object names (DNS subdomain).
const MAX_NAME: usize = 253;

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_within_kubernetes_limits_and_unique() {
        let cidr: BlockCidr = "10.0.0.0/26".parse().unwrap();
        let short = BlockAffinity {
            node: "node-1".into(),
            cidr,
            state: AffinityState::Confirmed,
        };
        assert_eq!(short.object_name(), "node-1-10-0-0-0-26");
        let long_a = BlockAffinity {
            node: format!("{}.a", "x".repeat(250)),
            ..short.clone()
        };
        let long_b = BlockAffinity {
            node: format!("{}.b", "x".repeat(250)),
            ..short
        };
        assert!(long_a.object_name().len() <= MAX_NAME);
        assert!(long_a.object_name().ends_with("-10-0-0-0-26"));
        assert_ne!(long_a.object_name(), long_b.object_name());
    }
}
