//! A Pod, reduced to what the agent uses: the cache holds every pod of the cluster, so it
//! keeps labels, addresses and named ports, and drops the rest of the object.

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::{Labels, ObjectKey};

/// L4 protocols a container port or a NetworkPolicy port can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' spelling (`TCP`), absent meaning TCP; `None` for anything else.
    pub fn from_k8s(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The name iptables and ipset use (`-p tcp`, `10.0.0.1,tcp:80`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container port with a name, for named ports in policies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub labels: Labels,
    /// `status.podIPs` (else `status.podIP`): what the kubelet reported.
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// Host-network pods have the node's address and no endpoint of ours.
    pub host_network: bool,
    /// Phase Succeeded or Failed: the pod holds no address any more.
    pub finished: bool,
}

impl PodInfo {
    pub fn key(&self) -> ObjectKey {
        (self.namespace.clone(), self.name.clone())
    }
}

impl From<Pod> for PodInfo {
    fn from(pod: Pod) -> PodInfo {
        let status = pod.status.unwrap_or_default();
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        let spec = pod.spec.unwrap_or_default();
        let mut named_ports: Vec<NamedPort> = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: Protocol::from_k8s(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        named_ports.sort();
        named_ports.dedup();
        let phase = status.phase.as_deref();
        PodInfo {
            namespace: pod.metadata.namespace.unwrap_or_default(),
            name: pod.metadata.name.unwrap_or_default(),
            uid: pod.metadata.uid.unwrap_or_default(),
            node: spec.node_name,
            labels: pod.metadata.labels.unwrap_or_default(),
            ips,
            named_ports,
            host_network: spec.host_network.unwrap_or(false),
            finished: matches!(phase, Some("Succeeded") | Some("Failed")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_labels_addresses_and_named_ports() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "a", "uid": "u1", "labels": {"pod": "a"}},
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "c", "ports": [
                    {"name": "serve-80-tcp", "containerPort": 80},
                    {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
                    {"containerPort": 8080},
                    {"name": "odd", "containerPort": 81, "protocol": "ICMP"}
                ]},
                {"name": "d", "ports": [{"name": "sctp", "containerPort": 9, "protocol": "SCTP"}]}
            ]},
            "status": {"phase": "Running", "podIP": "10.0.0.5",
                       "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}
        }))
        .unwrap();
        let p = PodInfo::from(pod);
        assert_eq!(p.key(), ("x".to_owned(), "a".to_owned()));
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(p.labels["pod"], "a");
        assert_eq!(
            p.ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let names: Vec<(&str, Protocol, u16)> = p
            .named_ports
            .iter()
            .map(|n| (n.name.as_str(), n.protocol, n.port))
            .collect();
        assert_eq!(
            names,
            [
                ("sctp", Protocol::Sctp, 9),
                ("serve-80-tcp", Protocol::Tcp, 80),
                ("serve-80-udp", Protocol::Udp, 80)
            ]
        );
        assert!(!p.finished && !p.host_network);
    }

    #[test]
    fn pod_ip_alone_and_finished_pods() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "b"},
            "spec": {"containers": [], "hostNetwork": true},
            "status": {"phase": "Succeeded", "podIP": "10.0.0.6"}
        }))
        .unwrap();
        let p = PodInfo::from(pod);
        assert_eq!(p.ips, vec!["10.0.0.6".parse::<IpAddr>().unwrap()]);
        assert!(p.finished && p.host_network);
    }
}
