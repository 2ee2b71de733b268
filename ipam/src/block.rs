//! IPAM blocks: a node-affine range of addresses and who holds each one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::cidr::BlockCidr;

/// The key of an allocation: `<network>.<containerID>` for pods (CNI's attachment key), or
/// any other non-empty name for addresses the agent takes for itself (e.g. a VXLAN tunnel).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(String);

impl Handle {
    /// The handle of a CNI attachment.
    pub fn for_container(network: &str, container_id: &str) -> Handle {
        Handle(format!("{network}.{container_id}"))
    }

    /// A handle read back from the datastore.
    pub fn from_raw(s: impl Into<String>) -> Handle {
        Handle(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is an attachment handle of `network` (network names may contain dots,
    /// container IDs do not, so the prefix up to the last dot is the network).
    pub fn is_of_network(&self, network: &str) -> bool {
        self.0.rsplit_once('.').is_some_and(|(n, _)| n == network)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pod an address was given to, for leak detection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// The pod's UID when the runtime passed it: a pod recreated under the same name is a
    /// different pod.
    pub uid: Option<String>,
}

/// Who holds one address of a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub handle: Handle,
    /// The node whose agent made the allocation (differs from the block's affinity when the
    /// address was borrowed).
    pub node: String,
    pub pod: Option<PodRef>,
    /// The block's sequence number when this allocation was made.
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {cidr}: allocation ordinal {ordinal} is outside the block ({size} addresses)")]
pub struct BlockError {
    pub cidr: BlockCidr,
    pub ordinal: u32,
    pub size: u32,
}

/// An IPAM block. The block object is the single source of truth for its addresses: handle
/// and pod live inside it, so one compare-and-swap write both takes an address and records
/// who took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    cidr: BlockCidr,
    /// The node this block is affine to; None once that node was deleted while the block
    /// still held addresses.
    pub affinity: Option<String>,
    allocations: BTreeMap<u32, Allocation>,
    /// Bumped on every change.
    sequence: u64,
    /// Next ordinal to try: allocation is next-fit, so a released address is not handed out
    /// again right away (stale conntrack or ARP entries may still point at it).
    cursor: u32,
}

impl Block {
    pub fn new(cidr: BlockCidr, affinity: Option<String>) -> Block {
        Block {
            cidr,
            affinity,
            allocations: BTreeMap::new(),
            sequence: 0,
            cursor: 0,
        }
    }

    /// Rebuilds a block from its stored parts, checking every ordinal.
    pub fn from_parts(
        cidr: BlockCidr,
        affinity: Option<String>,
        allocations: impl IntoIterator<Item = (u32, Allocation)>,
        sequence: u64,
        cursor: u32,
    ) -> Result<Block, BlockError> {
        let size = cidr.size();
        let mut map = BTreeMap::new();
        for (ordinal, a) in allocations {
            if ordinal >= size {
                return Err(BlockError {
                    cidr,
                    ordinal,
                    size,
                });
            }
            map.insert(ordinal, a);
        }
        Ok(Block {
            cidr,
            affinity,
            allocations: map,
            sequence,
            cursor: cursor % size,
        })
    }

    pub fn cidr(&self) -> BlockCidr {
        self.cidr
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn cursor(&self) -> u32 {
        self.cursor
    }

    pub fn is_affine_to(&self, node: &str) -> bool {
        self.affinity.as_deref() == Some(node)
    }

    /// Allocations by ordinal.
    pub fn allocations(&self) -> impl Iterator<Item = (u32, &Allocation)> {
        self.allocations.iter().map(|(o, a)| (*o, a))
    }

    /// Allocations with their address.
    pub fn addresses(&self) -> impl Iterator<Item = (IpAddr, &Allocation)> {
        self.allocations
            .iter()
            .filter_map(|(o, a)| Some((self.cidr.addr(*o)?, a)))
    }

    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    pub fn free(&self) -> u32 {
        self.cidr.size() - self.allocations.len() as u32
    }

    /// The address held by `handle` in this block, if any.
    pub fn find(&self, handle: &Handle) -> Option<IpAddr> {
        self.addresses()
            .find(|(_, a)| &a.handle == handle)
            .map(|(ip, _)| ip)
    }

    /// Takes the next free address for `handle` (next-fit from the cursor), or None when the
    /// block is full.
    pub fn assign(&mut self, handle: Handle, node: String, pod: Option<PodRef>) -> Option<IpAddr> {
        let size = self.cidr.size();
        let ordinal = (0..size)
            .map(|i| (self.cursor + i) % size)
            .find(|o| !self.allocations.contains_key(o))?;
        self.sequence += 1;
        self.allocations.insert(
            ordinal,
            Allocation {
                handle,
                node,
                pod,
                sequence: self.sequence,
            },
        );
        self.cursor = (ordinal + 1) % size;
        self.cidr.addr(ordinal)
    }

    /// Frees every address held by `handle`; returns them.
    pub fn release(&mut self, handle: &Handle) -> Vec<IpAddr> {
        let ordinals: Vec<u32> = self
            .allocations
            .iter()
            .filter(|(_, a)| &a.handle == handle)
            .map(|(o, _)| *o)
            .collect();
        if !ordinals.is_empty() {
            self.sequence += 1;
        }
        ordinals
            .into_iter()
            .filter_map(|o| {
                self.allocations.remove(&o);
                self.cidr.addr(o)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Block {
        Block::new("10.0.0.0/30".parse().unwrap(), Some("n1".into()))
    }

    #[test]
    fn assigns_next_fit_and_fills_up() {
        let mut b = block();
        let h = |i: u32| Handle::for_container("net", &format!("c{i}"));
        let ips: Vec<_> = (0..4)
            .map(|i| b.assign(h(i), "n1".into(), None).unwrap())
            .collect();
        assert_eq!(ips[0].to_string(), "10.0.0.0");
        assert_eq!(ips[3].to_string(), "10.0.0.3");
        assert_eq!(
            b.assign(h(9), "n1".into(), None),
            None,
            "a full block yields nothing"
        );
        assert_eq!(b.release(&h(1)), vec![ips[1]]);
        assert_eq!(b.free(), 1);
        assert_eq!(b.assign(h(5), "n1".into(), None), Some(ips[1]));
        assert_eq!(b.find(&h(5)), Some(ips[1]));
    }

    #[test]
    fn released_address_is_not_reused_first() {
        let mut b = block();
        let a = b.assign(Handle::from_raw("a"), "n1".into(), None).unwrap();
        b.release(&Handle::from_raw("a"));
        let next = b.assign(Handle::from_raw("b"), "n1".into(), None).unwrap();
        assert_ne!(a, next);
    }

    #[test]
    fn sequence_moves_on_every_change() {
        let mut b = block();
        b.assign(Handle::from_raw("a"), "n1".into(), None);
        assert_eq!(b.sequence(), 1);
        assert!(b.release(&Handle::from_raw("missing")).is_empty());
        assert_eq!(b.sequence(), 1);
        b.release(&Handle::from_raw("a"));
        assert_eq!(b.sequence(), 2);
    }

    #[test]
    fn from_parts_rejects_ordinals_outside() {
        let cidr: BlockCidr = "10.0.0.0/30".parse().unwrap();
        let a = Allocation {
            handle: Handle::from_raw("a"),
            node: "n".into(),
            pod: None,
            sequence: 1,
        };
        assert!(Block::from_parts(cidr, None, [(4, a.clone())], 1, 0).is_err());
        assert!(Block::from_parts(cidr, None, [(3, a)], 1, 0).is_ok());
    }

    #[test]
    fn handle_network() {
        let h = Handle::for_container("k8s-pod.net", "abc123");
        assert!(h.is_of_network("k8s-pod.net"));
        assert!(!h.is_of_network("k8s-pod"));
    }
}
