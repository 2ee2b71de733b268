//! tortie-node: the per-node agent. One task owns each piece of state; the modules below
//! are its parts, each split into a pure "decide" half and a thin "do" half.

/// One CNI attachment (handle, pod, endpoint) and the services the gRPC layer asks of the
/// tasks that own addresses and routes.
pub mod attachment;
/// Node IP autodetection (`IP`, `IP_AUTODETECTION_METHOD`).
pub mod autodetect;
/// The cluster cache: one owner of the watched model of the cluster (Pods, Namespaces,
/// NetworkPolicies, IPPools, Nodes), published as snapshots.
pub mod cache;
/// Agent configuration from the environment (calico-node compatible names).
pub mod config;
/// The Kubernetes datastore: tortie's CRD types and the IPAM store over the apiserver.
pub mod datastore;
/// The task that owns local endpoints and affine blocks, feeding the route reconciler.
pub mod endpoints;
/// The task that owns this node's IPAM allocator.
pub mod ipam_task;
/// The node-to-node BGP mesh of `tortie-node run`.
pub mod mesh;
/// The kernel: routes and links over rtnetlink, sysctls. The only module that sees rtnetlink.
pub mod netlink;
/// `tortiectl node status` rendering (Calico's table and `-o json`).
pub mod node_status;
/// NetworkPolicy and NAT outgoing: compiler, applier and owner task (docs/policy.md).
pub mod policy;
/// Desired kernel routes from the model, and the reconciler that applies them.
pub mod routes;
/// `tortie-node run`: the start-up sequence (node registration, default pools, CNI install)
/// and the wiring of the tasks above.
pub mod run;
/// The gRPC API server (CNI and Status services) on the agent's unix socket.
pub mod server;
/// `tortie-node bgp --config FILE`: the speaker and its kernel sync without Kubernetes.
pub mod standalone;
