//! tortie's custom resources, API group `crd.tortie.dev`, version `v1`, all cluster-scoped.
//! Field names follow Calico's so that its users recognise them.

// kube's derive takes one `printcolumn` per column, which clippy reads as repeated attributes.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every tortie CRD.
pub const GROUP: &str = "crd.tortie.dev";

/// `vxlanMode` of an IPPool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VxlanMode {
    #[default]
    Never,
    Always,
    CrossSubnet,
}

/// A range of pod addresses, cut into blocks that nodes claim.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.tortie.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools"
)]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"))]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    /// The pool's network, e.g. 192.168.0.0/16.
    pub cidr: String,
    /// Prefix length of the blocks (26 for IPv4, 122 for IPv6 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub vxlan_mode: VxlanMode,
    /// Masquerade traffic from the pool to destinations outside every pool.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// A disabled pool hands out no addresses.
    #[serde(default)]
    pub disabled: bool,
    /// Which nodes may take blocks from the pool (Calico selector syntax; all() when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Never borrow addresses from another node's block of this pool.
    #[serde(default)]
    pub strict_affinity: bool,
}

/// A block of addresses and, inside it, every allocation: the handle lives in the block so
/// that one write takes an address and records its owner.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.tortie.dev",
    version = "v1",
    kind = "IPAMBlock",
    plural = "ipamblocks"
)]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"))]
#[kube(printcolumn(name = "Node", type_ = "string", json_path = ".spec.affinity"))]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    pub cidr: String,
    /// The node the block belongs to; unset once that node was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// One record per allocated address, by ordinal:
    /// `ORDINAL SEQUENCE HANDLE NODE [NAMESPACE NAME [UID]]` (the address's position in the
    /// block, the block's sequence number when it was taken, `<network>.<containerID>`, the
    /// node whose agent took it, and its pod).
    #[serde(default)]
    pub allocations: Vec<String>,
    #[serde(default)]
    pub sequence_number: u64,
    /// Next ordinal to try (allocation is next-fit).
    #[serde(default)]
    pub cursor: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AffinityState {
    Pending,
    Confirmed,
    PendingDeletion,
}

/// A node's claim on a block.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.tortie.dev",
    version = "v1",
    kind = "BlockAffinity",
    plural = "blockaffinities"
)]
#[kube(printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"))]
#[kube(printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"))]
#[kube(printcolumn(name = "State", type_ = "string", json_path = ".spec.state"))]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    pub node: String,
    pub cidr: String,
    pub state: AffinityState,
}

/// A reference to one key of a Secret in the agent's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpPassword {
    /// The TCP MD5 password (RFC 2385), read from a Secret.
    pub secret_key_ref: SecretKeyRef,
}

/// A BGP peering beyond the node-to-node mesh: a top-of-rack router, a route reflector, or
/// other nodes picked by selector.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.tortie.dev",
    version = "v1",
    kind = "BGPPeer",
    plural = "bgppeers"
)]
#[kube(printcolumn(name = "PeerIP", type_ = "string", json_path = ".spec.peerIP"))]
#[kube(printcolumn(name = "AS", type_ = "integer", json_path = ".spec.asNumber"))]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The node that peers; every node when unset (a global peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Which nodes peer, instead of `node` (Calico selector syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The peer's address, optionally with a port (`10.0.0.1`, `10.0.0.1:1179`, `[fd00::1]:179`).
    #[serde(rename = "peerIP", default, skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// Peer with the nodes this selects, instead of `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The peer's AS number (4-octet allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
    /// Treat the peer as a route-reflector client (RFC 4456): this node reflects routes to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_client: Option<bool>,
    /// How long routes from the peer are kept after it restarts (graceful restart), e.g. `120s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<String>,
    /// Towards this (eBGP) peer, keep the next hop of routes learned from other peers
    /// instead of setting it to this node's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_original_next_hop: Option<bool>,
}

/// Cluster-wide BGP settings; the object named `default` applies.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.tortie.dev",
    version = "v1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations"
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// Full iBGP mesh between all nodes (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The default AS number of nodes (default 64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// The TCP port the speakers listen on (default 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
}
