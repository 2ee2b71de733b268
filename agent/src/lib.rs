//! tortie-node: the per-node agent. One task owns each piece of state; the modules below
//! are its parts, each split into a pure "decide" half and a thin "do" half.

/// One CNI attachment (handle, pod, endpoint) and the services the gRPC layer asks of the
/// tasks that own addresses and routes.
pub mod attachment;
/// Node IP autodetection (`IP`, `IP_AUTODETECTION_METHOD`).
pub mod autodetect;
/// Which BGP sessions this node should have: the mesh and the BGPPeers that apply to it.
pub mod bgp_peers;
/// The cluster cache: one owner of the watched model of the cluster (Pods, Namespaces,
/// NetworkPolicies, IPPools, Nodes, BGPPeers, BGPConfigurations), published as snapshots.
pub mod cache;
/// Agent configuration from the environment (calico-node compatible names).
pub mod config;
/// tortiectl's commands over the apiserver: `ipam show`, `ipam check`, `get`.
pub mod ctl;
/// The Kubernetes datastore: tortie's CRD types and the IPAM store over the apiserver.
pub mod datastore;
/// The task that owns local endpoints and affine blocks, feeding the route reconciler.
pub mod endpoints;
/// `tortie-node health --live | --ready`: the DaemonSet's probes, asked over the socket.
pub mod health_probe;
/// `tortie-node install-cni`: the CNI plugin and the conflist from its template.
pub mod install_cni;
/// The task that owns this node's IPAM allocator.
pub mod ipam_task;
/// The node-to-node BGP mesh of `tortie-node run`.
pub mod mesh;
/// Prometheus metrics (Felix's `FELIX_PROMETHEUSMETRICS*` settings) and their HTTP endpoint.
pub mod metrics;
/// The kernel: routes and links over rtnetlink, sysctls. The only module that sees rtnetlink.
pub mod netlink;
/// `tortiectl node status` rendering (Calico's table and `-o json`).
pub mod node_status;
/// NetworkPolicy and NAT outgoing: compiler, applier and owner task (docs/policy.md).
pub mod policy;
/// Desired kernel routes from the model, and the reconciler that applies them.
pub mod routes;
/// `tortie-node run`: the start-up sequence (node registration, default pools)
/// and the wiring of the tasks above.
pub mod run;
/// The gRPC API server (CNI and Status services) on the agent's unix socket.
pub mod server;
/// `tortie-node bgp --config FILE`: the speaker and its kernel sync without Kubernetes.
pub mod standalone;
