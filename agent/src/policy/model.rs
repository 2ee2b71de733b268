//! What the policy compiler reads and what it produces. Plain values: the cluster cache and
//! the local endpoints fill [`PolicyInput`]; [`crate::policy::compile`] turns it into one
//! [`Dataplane`] per address family; the applier writes that into the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use crate::cache::{Labels, NamedPort, Protocol};

/// The label every namespace matches by its own name, even where the apiserver (v1.20)
/// does not set it yet.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A Kubernetes namespace, as selectors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A pod that has addresses: anywhere in the cluster (for selectors), and, when it runs on
/// this node, its host-side veth (for its own chains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// `Some(host veth name)` when the pod runs on this node and is wired.
    pub host_ifname: Option<String>,
}

/// An IP pool, for NAT outgoing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub cidr: IpNet,
    pub nat_outgoing: bool,
    pub disabled: bool,
}

/// Everything the compiler decides from. Policies are the apiserver's objects as they are.
#[derive(Debug, Clone, Default)]
pub struct PolicyInput {
    pub policies: Vec<Arc<NetworkPolicy>>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub pools: Vec<Pool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    /// ipset's `family` argument.
    pub fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

/// The ipset types tortie uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetKind {
    /// Pod addresses picked by a selector.
    HashIp,
    /// ipBlocks (with `nomatch` entries for `except`) and pools.
    HashNet,
    /// Named ports: `address,proto:port`.
    HashIpPort,
}

impl SetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SetKind::HashIp => "hash:ip",
            SetKind::HashNet => "hash:net",
            SetKind::HashIpPort => "hash:ip,port",
        }
    }
}

/// One ipset: its type and members, each written as `ipset save` prints it
/// (`10.0.0.1`, `10.0.0.0/8`, `10.1.0.0/16 nomatch`, `10.0.0.1,tcp:80`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    pub kind: SetKind,
    pub members: BTreeSet<String>,
}

/// An iptables table tortie writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// A rule in a built-in chain that sends packets into one of ours
/// (`-A FORWARD -j tort-FORWARD`), kept first in that chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hook {
    pub table: Table,
    /// The built-in chain: `FORWARD`, `POSTROUTING`.
    pub builtin: String,
    /// Our chain it jumps to.
    pub chain: String,
}

/// The desired dataplane of one address family: what the applier makes the kernel hold.
/// Every set and chain name starts with `tort`; rules are the text after `-A <chain> `.
/// Deterministic: the same input always gives the same value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dataplane {
    pub family: Option<Family>,
    pub ipsets: BTreeMap<String, IpSet>,
    pub chains: BTreeMap<(Table, String), Vec<String>>,
    pub hooks: Vec<Hook>,
}
