//! This node in Kubernetes: waiting for its Node object, finding its address, and the
//! annotations that tell other nodes how to peer with it.

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::autodetect::{self, DetectError, Detected, Facts, Method};
use crate::config::{Config, NodeIp, VxlanMode};
use crate::datastore::{ANNOTATION_AS, ANNOTATION_IPV4};
use crate::run::retry::{self, Transient};

/// VXLAN's encapsulation overhead: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The MTU assumed when the uplink's cannot be read.
const FALLBACK_MTU: u32 = 1500;

/// The merge patch that registers the node. With no address (`IP=none`) the address
/// annotation is removed, so nobody peers with a stale one. Without `AS` the AS annotation
/// is left as it is: the node's AS then follows BGPConfiguration, and the mesh task
/// (agent/src/mesh.rs) writes it once it knows it.
pub fn registration_patch(addr: Option<Ipv4Net>, as_number: Option<u32>) -> serde_json::Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        ANNOTATION_IPV4.to_owned(),
        json!(addr.map(|a| a.to_string())),
    );
    if let Some(asn) = as_number {
        annotations.insert(ANNOTATION_AS.to_owned(), json!(asn.to_string()));
    }
    json!({ "metadata": { "annotations": annotations } })
}

/// The Node's `InternalIP` addresses, for `kubernetes-internal-ip`.
pub fn internal_ips(node: &Node) -> Vec<String> {
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .collect()
}

/// The node's address per `IP` and `IP_AUTODETECTION_METHOD`; `None` for `IP=none`.
/// Reads this namespace's interfaces.
pub fn node_address(config: &Config, node: &Node) -> Result<Option<Detected>, DetectError> {
    let ifaces = autodetect::local_interfaces()?;
    match &config.ip {
        NodeIp::None => Ok(None),
        NodeIp::Fixed {
            addr,
            prefix: Some(p),
        } => {
            let net = Ipv4Net::new(*addr, *p).unwrap_or_else(|_| Ipv4Net::from(*addr));
            let ifname = autodetect::locate(&ifaces, *addr).and_then(|d| d.ifname);
            Ok(Some(Detected { addr: net, ifname }))
        }
        // Calico takes the prefix from the interface holding the address, else /32.
        NodeIp::Fixed { addr, prefix: None } => Ok(Some(
            autodetect::locate(&ifaces, *addr).unwrap_or(Detected {
                addr: Ipv4Net::from(*addr),
                ifname: None,
            }),
        )),
        NodeIp::Autodetect => {
            let mut facts = Facts {
                internal_ips: internal_ips(node),
                ..Facts::default()
            };
            if let Method::CanReach(dest) = &config.autodetection {
                facts.route_source = Some(autodetect::route_source(*dest));
            }
            autodetect::select(&config.autodetection, &ifaces, &facts).map(Some)
        }
    }
}

/// The MTU pods get: `TORTIE_MTU`, else the uplink's less VXLAN's overhead when the default
/// pool encapsulates.
pub fn pod_mtu(config: &Config, uplink: Option<&str>) -> u32 {
    if let Some(m) = config.mtu {
        return m;
    }
    let link = match uplink {
        // /sys/class/net shows the namespace /sys was mounted in: the node's, both in a
        // hostNetwork pod and under `ip netns exec`, which remounts it.
        Some(ifname) => match std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu")) {
            Ok(s) => s.trim().parse().unwrap_or(FALLBACK_MTU),
            Err(e) => {
                tracing::warn!(%ifname, error = %e, "cannot read the uplink's MTU; assuming {FALLBACK_MTU} (set TORTIE_MTU)");
                FALLBACK_MTU
            }
        },
        None => {
            tracing::warn!(
                "no uplink interface known; assuming MTU {FALLBACK_MTU} (set TORTIE_MTU)"
            );
            FALLBACK_MTU
        }
    };
    match config.ipv4_pool.vxlan {
        VxlanMode::Never => link,
        VxlanMode::Always | VxlanMode::CrossSubnet => link.saturating_sub(VXLAN_OVERHEAD),
    }
}

/// Why this node's Node object could not be read (yet).
#[derive(Debug, thiserror::Error)]
pub enum NodeLookup {
    #[error("the Node object does not exist yet (the kubelet registers it)")]
    Missing,
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl Transient for NodeLookup {
    fn is_transient(&self) -> bool {
        match self {
            NodeLookup::Missing => true,
            NodeLookup::Api(e) => e.is_transient(),
        }
    }
}

/// Waits until the Node object exists (the kubelet registers it, perhaps after we start)
/// and the apiserver answers. Only an answer no retry can change (403) is returned.
pub async fn wait_for_node(api: &Api<Node>, name: &str) -> Result<Node, NodeLookup> {
    retry::until_done("reading this node's Node object", async || {
        api.get_opt(name).await?.ok_or(NodeLookup::Missing)
    })
    .await
}

/// Writes the registration annotations (merge patch: other annotations are left alone),
/// waiting for the apiserver if it is away.
pub async fn register(
    api: &Api<Node>,
    name: &str,
    addr: Option<Ipv4Net>,
    as_number: Option<u32>,
) -> Result<Node, kube::Error> {
    let patch = Patch::Merge(registration_patch(addr, as_number));
    retry::until_done(
        "registering this node's address and AS number",
        async || api.patch(name, &PatchParams::default(), &patch).await,
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn patch_sets_or_clears_the_address() {
        let p = registration_patch(Some("10.0.0.5/24".parse().unwrap()), Some(64512));
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {"tortie.dev/ipv4-address": "10.0.0.5/24", "tortie.dev/as-number": "64512"}}})
        );
        let p = registration_patch(None, None);
        assert_eq!(
            p,
            json!({"metadata": {"annotations": {"tortie.dev/ipv4-address": null}}})
        );
    }

    #[test]
    fn internal_ips_come_from_status() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "ExternalIP", "address": "203.0.113.9"},
            ]}
        }))
        .unwrap();
        assert_eq!(internal_ips(&node), vec!["10.0.0.5".to_owned()]);
        assert!(internal_ips(&Node::default()).is_empty());
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(&vars, || Ok("n1".into())).unwrap()
    }

    #[test]
    fn mtu_from_config_or_uplink_less_vxlan() {
        assert_eq!(
            pod_mtu(&config(&[("TORTIE_MTU", "1400")]), Some("lo")),
            1400
        );
        // Loopback exists in every namespace; read its real MTU to compare.
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pod_mtu(&config(&[]), Some("lo")), lo);
        assert_eq!(
            pod_mtu(&config(&[("CALICO_IPV4POOL_VXLAN", "Always")]), Some("lo")),
            lo - 50
        );
        assert_eq!(pod_mtu(&config(&[]), None), 1500);
        assert_eq!(pod_mtu(&config(&[]), Some("no-such-if0")), 1500);
    }

    #[test]
    fn ip_none_and_fixed_addresses() {
        let node = Node::default();
        assert_eq!(
            node_address(&config(&[("IP", "none")]), &node).unwrap(),
            None
        );
        // An address on no local interface: the given prefix, or /32.
        let d = node_address(&config(&[("IP", "192.0.2.10")]), &node)
            .unwrap()
            .unwrap();
        assert_eq!(
            d,
            Detected {
                addr: "192.0.2.10/32".parse().unwrap(),
                ifname: None
            }
        );
        let d = node_address(&config(&[("IP", "192.0.2.10/24")]), &node)
            .unwrap()
            .unwrap();
        assert_eq!(d.addr, "192.0.2.10/24".parse::<Ipv4Net>().unwrap());
    }
}
