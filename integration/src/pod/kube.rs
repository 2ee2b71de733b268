//! The apiserver side of a lab pod: the Namespace and Pod objects the lab writes as a user
//! and a kubelet would, and a read-back of IPAM allocations from the IPAMBlock objects.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Container, ContainerPort as KubePort, Namespace, Pod, PodSpec};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{PodError, PodRef, Protocol};
use crate::kube_netns::with_admin_client;
use crate::lab::Lab;

/// The image a pod's only container names; nothing pulls it, the lab has no container runtime.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// A named port of the pod's container (`spec.containers[0].ports[]`), what NetworkPolicy's
/// named ports resolve against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl ContainerPort {
    fn to_kube(&self) -> KubePort {
        KubePort {
            name: Some(self.name.clone()),
            container_port: i32::from(self.port),
            protocol: Some(self.protocol.kube_name().to_owned()),
            ..Default::default()
        }
    }
}

impl std::str::FromStr for ContainerPort {
    type Err = String;
    /// `NAME:PORT[/tcp|/udp|/sctp]`, TCP when no protocol is given (the API's default).
    fn from_str(s: &str) -> Result<ContainerPort, String> {
        let (rest, protocol) = match s.split_once('/') {
            Some((rest, proto)) => (rest, proto.parse().map_err(|e| format!("{s:?}: {e}"))?),
            None => (s, Protocol::Tcp),
        };
        let (name, port) = rest
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: a container port is NAME:PORT[/tcp|/udp|/sctp]"))?;
        if !is_port_name(name) {
            return Err(format!(
                "{s:?}: port name {name:?} must be 1-15 lowercase letters, digits and '-', \
                 with at least one letter, no '-' at either end and no '--' (IANA_SVC_NAME)"
            ));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?}: {port:?} is not a port (1-65535)"))?;
        Ok(ContainerPort {
            name: name.to_owned(),
            port,
            protocol,
        })
    }
}

/// A port name as the apiserver validates it (IANA_SVC_NAME, RFC 6335 section 5.1).
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> PodError {
    move |e| PodError::Lab(crate::Error::Kube(format!("{what}: {e}")))
}

/// Creates the pod's Namespace when missing, then the Pod, bound to `node` (as the scheduler
/// would have done), its one container declaring `ports`. Returns the Pod's UID. A Pod that
/// already exists is an error: it belongs to someone else's `pod add`.
pub fn create_pod(
    lab: &Lab,
    pod: &PodRef,
    node: &str,
    labels: &BTreeMap<String, String>,
    ports: &[ContainerPort],
) -> Result<String, PodError> {
    let mut uids = create_pods(lab, std::slice::from_ref(pod), node, labels, ports)?;
    uids.pop()
        .ok_or_else(|| PodError::Invalid(format!("pod {pod} was not created")))
}

/// [`create_pod`] for many pods alike, over one client (the CNI bench creates hundreds, as
/// a kubelet finds them created). Returns their UIDs in order.
pub fn create_pods(
    lab: &Lab,
    pods: &[PodRef],
    node: &str,
    labels: &BTreeMap<String, String>,
    ports: &[ContainerPort],
) -> Result<Vec<String>, PodError> {
    let (pods, node, labels) = (pods.to_vec(), node.to_owned(), labels.clone());
    let ports: Vec<KubePort> = ports.iter().map(ContainerPort::to_kube).collect();
    with_admin_client(lab, move |client| async move {
        let mut made_namespaces: Vec<String> = Vec::new();
        let mut uids = Vec::with_capacity(pods.len());
        for pod in &pods {
            let (ns, name) = (pod.namespace.clone(), pod.name.clone());
            if !made_namespaces.contains(&ns) {
                let wanted = Namespace {
                    metadata: ObjectMeta {
                        name: Some(ns.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                match Api::<Namespace>::all(client.clone())
                    .create(&PostParams::default(), &wanted)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                    Err(e) => return Err(kube_err(format!("creating namespace {ns}"))(e)),
                }
                made_namespaces.push(ns.clone());
            }
            let object = Pod {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: (!labels.is_empty()).then(|| labels.clone()),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(node.clone()),
                    containers: vec![Container {
                        name: "pause".into(),
                        image: Some(PAUSE_IMAGE.into()),
                        ports: (!ports.is_empty()).then(|| ports.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                status: None,
            };
            let created = Api::<Pod>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.is_already_exists() => PodError::Invalid(format!(
                        "pod {ns}/{name} already exists in the apiserver (`pod del {ns}/{name}` first)"
                    )),
                    e => kube_err(format!("creating pod {ns}/{name}"))(e),
                })?;
            uids.push(created.metadata.uid.ok_or_else(|| {
                PodError::Invalid(format!("the apiserver gave pod {ns}/{name} no UID"))
            })?);
        }
        Ok(uids)
    })?
}

/// Writes what a kubelet reports once the sandbox is up: phase Running, hostIP, podIP(s).
pub fn set_running(
    lab: &Lab,
    pod: &PodRef,
    host_ip: IpAddr,
    ips: &[IpAddr],
) -> Result<(), PodError> {
    let (ns, name) = (pod.namespace.clone(), pod.name.clone());
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "podIP": ips.first().map(ToString::to_string),
        "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
    }});
    with_admin_client(lab, move |client| async move {
        Api::<Pod>::namespaced(client, &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .map(|_| ())
            .map_err(kube_err(format!("writing the status of pod {ns}/{name}")))
    })?
}

/// Deletes the Pod at once. Grace period 0: there is no kubelet to confirm a graceful one,
/// and the object would stay Terminating forever. A Pod already gone is fine.
pub fn delete_pod(lab: &Lab, pod: &PodRef) -> Result<(), PodError> {
    delete_pods(lab, std::slice::from_ref(pod))
}

/// [`delete_pod`] for many pods, over one client.
pub fn delete_pods(lab: &Lab, pods: &[PodRef]) -> Result<(), PodError> {
    let pods = pods.to_vec();
    with_admin_client(lab, move |client| async move {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        for pod in &pods {
            let (ns, name) = (&pod.namespace, &pod.name);
            match Api::<Pod>::namespaced(client.clone(), ns)
                .delete(name, &params)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(kube_err(format!("deleting pod {ns}/{name}"))(e)),
            }
        }
        Ok(())
    })?
}

/// Every allocation the IPAMBlock objects hold: handle (`<network>.<containerID>`) → its
/// addresses. This is what survives an agent's crash, so tests compare against it.
pub fn allocations(lab: &Lab) -> Result<BTreeMap<String, Vec<IpAddr>>, PodError> {
    let text = crate::run(crate::up::kubectl(lab).args([
        "get",
        "ipamblocks.crd.tortie.dev",
        "-o",
        "json",
    ]))?;
    allocations_from_json(&text)
}

fn allocations_from_json(text: &str) -> Result<BTreeMap<String, Vec<IpAddr>>, PodError> {
    let list: Value = serde_json::from_str(text)
        .map_err(|e| PodError::Invalid(format!("IPAMBlock list is not JSON: {e}")))?;
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for block in list["items"].as_array().into_iter().flatten() {
        let cidr_text = block["spec"]["cidr"].as_str().unwrap_or_default();
        let cidr: IpNet = cidr_text
            .parse()
            .map_err(|_| PodError::Invalid(format!("IPAMBlock with cidr {cidr_text:?}")))?;
        for record in block["spec"]["allocations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (ordinal, allocation) = record
                .as_str()
                .ok_or_else(|| format!("{record} is not a string"))
                .and_then(|r| tortie_ipam::record::decode(r).map_err(|e| e.to_string()))
                .map_err(|e| PodError::Invalid(format!("block {cidr}: {e}")))?;
            let handle = allocation.handle.as_str();
            let addr = nth(cidr, u64::from(ordinal)).ok_or_else(|| {
                PodError::Invalid(format!("ordinal {ordinal} outside block {cidr}"))
            })?;
            out.entry(handle.to_owned()).or_default().push(addr);
        }
    }
    Ok(out)
}

/// The `n`th address of `net` (0 = the network address), if inside it.
fn nth(net: IpNet, n: u64) -> Option<IpAddr> {
    let addr = match net {
        IpNet::V4(v4) => IpAddr::V4(
            u32::from(v4.network())
                .checked_add(u32::try_from(n).ok()?)?
                .into(),
        ),
        IpNet::V6(v6) => IpAddr::V6(u128::from(v6.network()).checked_add(u128::from(n))?.into()),
    };
    net.contains(&addr).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ports_parse() {
        let p = |s: &str| s.parse::<ContainerPort>();
        assert_eq!(
            p("serve-80-tcp:80"),
            Ok(ContainerPort {
                name: "serve-80-tcp".into(),
                port: 80,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(
            p("serve-81-udp:81/udp").map(|c| (c.port, c.protocol)),
            Ok((81, Protocol::Udp))
        );
        assert_eq!(p("dns:53/UDP").map(|c| c.protocol), Ok(Protocol::Udp));
        assert_eq!(p("s:9/sctp").map(|c| c.protocol), Ok(Protocol::Sctp));
        for bad in [
            "serve",
            "serve:",
            ":80",
            "serve:0",
            "serve:65536",
            "serve:80/icmp",
            "Serve:80",
            "-serve:80",
            "serve-:80",
            "se--rve:80",
            "8080:80",
            "a-name-too-long-x:80",
            "web_1:80",
        ] {
            assert!(p(bad).is_err(), "{bad} parsed");
        }
        assert!(p("a-name-15-chars:80").is_ok());
    }

    #[test]
    fn container_ports_become_the_containers_ports() {
        let port = ContainerPort {
            name: "serve-80-udp".into(),
            port: 80,
            protocol: Protocol::Udp,
        };
        assert_eq!(
            serde_json::to_value(port.to_kube()).unwrap_or_default(),
            json!({"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"})
        );
    }

    #[test]
    fn allocations_are_read_by_handle_and_ordinal() {
        let text = json!({"items": [
            {"spec": {"cidr": "10.244.0.64/26", "allocations": [
                "0 1 k8s-pod-network.a node-1", "5 2 k8s-pod-network.b node-1 ns p"]}},
            {"spec": {"cidr": "fd00::/122", "allocations": ["3 1 k8s-pod-network.a node-1"]}},
        ]})
        .to_string();
        let got = allocations_from_json(&text).unwrap_or_else(|e| panic!("{e}"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got["k8s-pod-network.a"],
            vec![ip("10.244.0.64"), ip("fd00::3")]
        );
        assert_eq!(got["k8s-pod-network.b"], vec![ip("10.244.0.69")]);
        let outside =
            json!({"items": [{"spec": {"cidr": "10.0.0.0/30", "allocations": ["4 1 h node-1"]}}]});
        assert!(allocations_from_json(&outside.to_string()).is_err());
    }
}
