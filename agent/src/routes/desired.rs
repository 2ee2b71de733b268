//! The pure half: from the node's view of the cluster to the set of routes it should have.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::netlink::Route;

/// A pod on this node: its address and the host side of its veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The pod's address as a host prefix (/32 or /128).
    pub address: IpNet,
    pub host_ifname: String,
}

/// A block owned by another node, reachable through that node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBlock {
    pub cidr: IpNet,
    /// The BGP next hop (the node's address), or its VXLAN tunnel address.
    pub gateway: IpAddr,
    /// `Some(uplink)` or `Some("vxlan.tortie")` gives `via GW dev X onlink`, as Calico
    /// writes it; `None` lets the kernel resolve the gateway (standalone BGP).
    pub dev: Option<String>,
}

/// Everything the route set depends on. The agent's cluster cache fills it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteModel {
    pub local_endpoints: Vec<LocalEndpoint>,
    /// Blocks affine to this node: blackholed, so an unassigned address inside is dropped
    /// here instead of bouncing back out of the default route.
    pub affine_blocks: Vec<IpNet>,
    pub remote_blocks: Vec<RemoteBlock>,
}

/// Routes keyed by destination: tortie keeps at most one route per prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSet(BTreeMap<IpNet, Route>);

impl RouteSet {
    pub fn new() -> RouteSet {
        RouteSet::default()
    }
    pub fn insert(&mut self, route: Route) {
        self.0.insert(route.dst, route);
    }
    pub fn get(&self, dst: &IpNet) -> Option<&Route> {
        self.0.get(dst)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.0.values()
    }
    pub(crate) fn into_map(self) -> BTreeMap<IpNet, Route> {
        self.0
    }
}

impl FromIterator<Route> for RouteSet {
    fn from_iter<I: IntoIterator<Item = Route>>(iter: I) -> Self {
        let mut set = RouteSet::new();
        for r in iter {
            set.insert(r);
        }
        set
    }
}

/// The routes this node should have. When two sources name the same prefix, what the node
/// knows first-hand wins: a local endpoint over an own block over a remote advertisement
/// (a peer advertising our own block must not steal it).
pub fn desired_routes(model: &RouteModel) -> RouteSet {
    let mut set = RouteSet::new();
    for b in &model.remote_blocks {
        let net = b.cidr.trunc();
        set.insert(match &b.dev {
            Some(dev) => Route::via_onlink(net, b.gateway, dev.clone()),
            None => Route::via(net, b.gateway),
        });
    }
    for block in &model.affine_blocks {
        set.insert(Route::blackhole(block.trunc()));
    }
    for ep in &model.local_endpoints {
        let host = IpNet::from(ep.address.addr());
        set.insert(Route::link(host, ep.host_ifname.clone()));
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn builds_calico_shaped_routes() {
        let model = RouteModel {
            local_endpoints: vec![
                LocalEndpoint {
                    address: net("10.244.1.5/32"),
                    host_ifname: "tort0123456789a".into(),
                },
                LocalEndpoint {
                    address: net("fd00:1::5/128"),
                    host_ifname: "tort0123456789a".into(),
                },
            ],
            affine_blocks: vec![net("10.244.1.0/26"), net("fd00:1::/122")],
            remote_blocks: vec![
                RemoteBlock {
                    cidr: net("10.244.2.0/26"),
                    gateway: "172.18.0.3".parse().unwrap_or_else(|_| unreachable!()),
                    dev: Some("eth0".into()),
                },
                RemoteBlock {
                    cidr: net("10.244.3.0/26"),
                    gateway: "172.18.0.4".parse().unwrap_or_else(|_| unreachable!()),
                    dev: None,
                },
            ],
        };
        let got: Vec<String> = desired_routes(&model)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "blackhole 10.244.1.0/26".to_string(),
                "10.244.1.5/32 dev tort0123456789a scope link".into(),
                "10.244.2.0/26 via 172.18.0.3 dev eth0 onlink".into(),
                "10.244.3.0/26 via 172.18.0.4".into(),
                "blackhole fd00:1::/122".into(),
                "fd00:1::5/128 dev tort0123456789a scope link".into(),
            ]
        );
    }

    #[test]
    fn own_knowledge_beats_a_peer_advertisement() {
        let model = RouteModel {
            local_endpoints: vec![LocalEndpoint {
                address: net("10.0.0.1/32"),
                host_ifname: "tortA".into(),
            }],
            affine_blocks: vec![net("10.0.0.0/26")],
            remote_blocks: vec![
                RemoteBlock {
                    cidr: net("10.0.0.0/26"),
                    gateway: "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
                    dev: None,
                },
                RemoteBlock {
                    cidr: net("10.0.0.1/32"),
                    gateway: "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
                    dev: None,
                },
            ],
        };
        let set = desired_routes(&model);
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.get(&net("10.0.0.0/26")),
            Some(&Route::blackhole(net("10.0.0.0/26")))
        );
        assert_eq!(
            set.get(&net("10.0.0.1/32")),
            Some(&Route::link(net("10.0.0.1/32"), "tortA"))
        );
    }

    #[test]
    fn host_bits_in_a_cidr_are_dropped() {
        let model = RouteModel {
            affine_blocks: vec![net("10.0.0.7/26")],
            ..Default::default()
        };
        let set = desired_routes(&model);
        assert!(set.get(&net("10.0.0.0/26")).is_some());
    }
}
