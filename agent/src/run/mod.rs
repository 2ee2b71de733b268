//! `tortie-node run`: the agent's start-up sequence and its tasks.
//!
//! In order: connect to the apiserver; wait for this node's Node object; find the node's
//! address and register it; start the cluster cache's watches; create the default pools if
//! none exist; turn on forwarding; start the route reconciler, the IPAM task, the endpoint
//! task and the policy task; then serve the API until SIGTERM or SIGINT. The agent answers
//! ready once the policy dataplane is written.
//! The CNI plugin and conflist are not its business: `tortie-node install-cni` (an init
//! container) puts them in place before it starts (agent/src/install_cni.rs).
//!
//! The socket is bound last, so the CNI plugin sees "agent unreachable" (try again later)
//! rather than an agent that might hand out addresses before it knows its blocks.

pub mod health;
pub mod leak_gc;
pub mod node;
pub mod pool;
pub mod retry;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use tokio::sync::watch;
use tortie_api::veth::host_veth_name;
use tortie_ipam::{Allocator, IpFamily, IpamConfig, Store};

use crate::attachment::{Endpoint, Handle, PodRef};
use crate::cache;
use crate::config::Config;
use crate::datastore::KubeStore;
use crate::endpoints;
use crate::ipam_task;
use crate::mesh;
use crate::metrics::{self, Metrics, StateSources};
use crate::netlink::{self, KernelRouteTable};
use crate::policy::model::Family;
use crate::policy::task::{self as policy, Enforced};
use crate::routes::{ReconcilerConfig, spawn_reconciler, watch_route_deletions};
use crate::server::{self, CniService, Health, NodeInfo, StatusService};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("connecting to the apiserver (KUBECONFIG, or in-cluster): {0}")]
    Connect(#[source] kube::Error),
    #[error("reading Node {node}: {source}")]
    Node {
        node: String,
        source: node::NodeLookup,
    },
    #[error(transparent)]
    Address(#[from] crate::autodetect::DetectError),
    #[error(
        "registering Node {node} (annotations {}, {}): {source}",
        crate::datastore::ANNOTATION_IPV4,
        crate::datastore::ANNOTATION_AS
    )]
    Register { node: String, source: kube::Error },
    #[error("creating the default IP pool: {0}")]
    Pool(#[from] pool::PoolSetupError),
    #[error("enabling IP forwarding: {0}")]
    Forwarding(#[source] std::io::Error),
    #[error("starting the route reconciler: {0}")]
    Routes(#[from] crate::routes::ReconcilerError),
    #[error("reading this node's allocations: {0}")]
    Ipam(#[from] tortie_ipam::StoreError),
    #[error("loading the IP pools and blocks into IPAM: {0}")]
    IpamLoad(#[source] tortie_ipam::IpamError),
    #[error("binding the agent socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("serving the agent API: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("starting the BGP mesh speaker: {0}")]
    Bgp(#[from] tortie_bgp::Error),
    #[error("setting up the policy dataplane: {0}")]
    Policy(#[from] crate::policy::apply::ApplyError),
    #[error("serving metrics on {addr} (FELIX_PROMETHEUSMETRICSPORT): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the agent until SIGTERM or SIGINT. `bgp_ready_window`: see [`health::bgp_ready`].
pub async fn run(config: Config, bgp_ready_window: Duration) -> Result<(), RunError> {
    let started = Instant::now();
    tracing::info!("connecting to the apiserver");
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Connect)?;
    let nodes: Api<Node> = Api::all(client.clone());
    let name = config.node_name.clone();

    tracing::info!(node = %name, "waiting for the Node object");
    let node_obj = node::wait_for_node(&nodes, &name)
        .await
        .map_err(|source| RunError::Node {
            node: name.clone(),
            source,
        })?;
    let detected = node::node_address(&config, &node_obj)?;
    match &detected {
        Some(d) => {
            tracing::info!(address = %d.addr, interface = ?d.ifname, method = %config.autodetection, "node address")
        }
        None => tracing::info!("IP=none: this node has no IPv4 BGP address"),
    }
    let node_obj = node::register(
        &nodes,
        &name,
        detected.as_ref().map(|d| d.addr),
        config.as_number,
    )
    .await
    .map_err(|source| RunError::Register {
        node: name.clone(),
        source,
    })?;
    tracing::info!(node = %name, as_number = ?config.as_number, "node registered");

    let store = KubeStore::new(client.clone());
    let metrics = Metrics::new();
    tracing::info!("starting the cluster cache");
    let cluster = cache::spawn(client.clone(), &metrics);
    tracing::info!("ensuring the default IP pools");
    pool::ensure_default_pools(&store, &config).await?;
    netlink::sysctl::enable_forwarding(config.ipv6_pool.is_some()).map_err(RunError::Forwarding)?;

    let mtu = node::pod_mtu(&config, detected.as_ref().and_then(|d| d.ifname.as_deref()));
    tracing::info!(mtu, "pod MTU");

    let (health_tx, health_rx) =
        watch::channel(Health::Starting("restoring local endpoints".to_owned()));

    // Graceful restart (RFC 4724): the tortie routes an earlier run left in the kernel are
    // adopted as stale, kept and never rewritten when named again as they are, and only
    // the ones nobody named are swept, once both the local pods and blocks (below) and
    // BGP's initial sync (mesh.rs) have been given to the reconciler (docs/agent.md).
    tracing::info!("starting the route reconciler");
    let table = KernelRouteTable::open().map_err(crate::routes::ReconcilerError::from)?;
    let (routes, _routes_thread) = spawn_reconciler(
        table,
        ReconcilerConfig {
            graceful_restart: true,
            ..ReconcilerConfig::default()
        },
    )?;
    watch_route_deletions(&routes);

    // Pods that outlived a restart of the agent keep their host routes: without them, the
    // reconciler would sweep those routes as leftovers.
    let seed = retry::until_done("reading this node's allocations", async || {
        local_endpoints(&store, &name).await
    })
    .await?;
    tracing::info!(endpoints = seed.len(), "restoring local endpoints");

    let labels: BTreeMap<String, String> = node_obj.metadata.labels.clone().unwrap_or_default();
    let ipam_config = IpamConfig {
        // `None` (no limit) becomes "as many as the address space has".
        max_blocks_per_node: config
            .max_blocks_per_node
            .map_or(usize::MAX, |n| n as usize),
        leak_grace: config.ipam_gc_grace,
        ..IpamConfig::default()
    };
    let mut families = vec![IpFamily::V4];
    if config.ipv6_pool.is_some() {
        families.push(IpFamily::V6);
    }
    let mut allocator = Allocator::new(store, name.clone(), labels, ipam_config);
    // The IPAM task publishes this node's blocks (their blackhole routes, their BGP
    // announcements) from the allocator's cache as it starts: load it here, where an
    // outage is waited out, rather than let the task start with nothing to publish.
    tracing::info!("loading this node's IPAM blocks");
    let held = retry::until_done("loading the IP pools and blocks into IPAM", async || {
        allocator.affine_blocks().await
    })
    .await
    .map_err(RunError::IpamLoad)?;
    let (ipam, mut affine, _ipam_task) = ipam_task::spawn(allocator, families.clone());
    // The blackholes and BGP advertisements of this node's blocks come from what the task
    // publishes. After a restart whatever they lack is swept, here and at the peers, so
    // they wait until it has published the blocks it holds (the first thing it does).
    if !held.is_empty() && affine.wait_for(|blocks| !blocks.is_empty()).await.is_err() {
        tracing::warn!("the IPAM task stopped before publishing this node's blocks");
    }
    let (routes_of_endpoints, _endpoints_task) =
        endpoints::start(routes.clone(), seed.clone(), affine.clone()).await;
    // Readiness asks it whether this node's own graceful restart is over.
    let routes_for_status = routes.clone();
    // The mesh needs the node's IPv4 address: with IP=none this node runs no BGP.
    let mesh = match &detected {
        Some(d) => {
            let cfg = mesh::MeshConfig {
                node_name: name.clone(),
                node_ip: d.addr.addr(),
                asn: config.as_number,
                uplink: d.ifname.clone(),
                secrets: kube::Api::default_namespaced(client.clone()),
            };
            tracing::info!("starting the BGP mesh");
            Some(mesh::start(cfg, cluster.clone(), affine, ipam.borrowed(), routes).await?)
        }
        None => {
            // No BGP: the local pods and blocks are every route this node has.
            routes.sync_complete().await?;
            None
        }
    };
    let policy_families: Vec<Family> = families
        .iter()
        .map(|f| match f {
            IpFamily::V4 => Family::V4,
            IpFamily::V6 => Family::V6,
        })
        .collect();
    tracing::info!("starting the policy task");
    let (policy, dataplane_health, _policy_task) = policy::spawn(
        policy::Timing::default(),
        policy::appliers(&policy_families, config.iptables_backend)?,
        cluster.clone(),
        seed,
        metrics.clone(),
    );
    let endpoints = Enforced {
        inner: routes_of_endpoints,
        policy,
    };
    let leak_gc = tokio::spawn(leak_gc::run(
        client.clone(),
        name.clone(),
        config.ipam_gc_grace,
        ipam.clone(),
        endpoints.clone(),
    ));

    tracing::info!(socket = %config.agent_socket.display(), "binding the socket");
    let listener = server::bind(&config.agent_socket).map_err(|source| RunError::Bind {
        path: config.agent_socket.display().to_string(),
        source,
    })?;
    let health_rx = health::with_dataplane(health_rx, dataplane_health);
    let metrics_server = match config.metrics {
        None => None,
        Some(addr) => {
            let sources = StateSources {
                speaker: mesh.as_ref().map(|(speaker, _)| speaker.clone()),
                ipam: Some(ipam.clone()),
                kernel_routes: true,
            };
            let served = metrics::serve(addr, metrics.clone(), sources)
                .await
                .map_err(|source| RunError::Metrics { addr, source })?;
            Some(served)
        }
    };
    let cni = CniService::new(ipam, endpoints, mtu, health_rx.clone()).with_metrics(metrics);
    let mut status = StatusService::new(
        NodeInfo {
            node_name: name.clone(),
            mtu,
        },
        health_rx,
    )
    .with_bgp_ready_window(started, bgp_ready_window)
    .with_routes(routes_for_status);
    if let Some((speaker, _)) = &mesh {
        status = status.with_speaker(speaker.clone());
    }
    let _ = health_tx.send(Health::Ready);
    tracing::info!(socket = %config.agent_socket.display(), "tortie-node ready");
    let probe = tokio::spawn(health::run(client.clone(), health_tx));

    let shutdown = shutdown_signal().map_err(RunError::Signals)?;
    server::serve(listener, cni, status, shutdown).await?;
    leak_gc.abort();
    probe.abort();
    if let Some(served) = metrics_server {
        served.abort();
    }
    if let Some((speaker, task)) = mesh {
        task.abort();
        if let Err(e) = speaker.shutdown().await {
            tracing::warn!(error = %e, "BGP speaker did not shut down cleanly");
        }
    }
    // A stale socket would make the plugin wait on a dead agent instead of failing fast.
    let _ = std::fs::remove_file(&config.agent_socket);
    tracing::info!("tortie-node stopped");
    Ok(())
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// This node's pods, from its allocations in the datastore, whose host veth still exists.
async fn local_endpoints<S: Store>(
    store: &S,
    node: &str,
) -> Result<Vec<Endpoint>, tortie_ipam::StoreError> {
    let blocks = store.list_blocks().await?;
    let mut by_handle: BTreeMap<String, (PodRef, Vec<IpNet>)> = BTreeMap::new();
    for b in &blocks {
        for (ip, a) in b.value.addresses() {
            if a.node != node {
                continue;
            }
            let Some(pod) = &a.pod else { continue };
            let entry = by_handle
                .entry(a.handle.as_str().to_owned())
                .or_insert_with(|| {
                    (
                        PodRef {
                            namespace: pod.namespace.clone(),
                            name: pod.name.clone(),
                            uid: pod.uid.clone().unwrap_or_default(),
                        },
                        Vec::new(),
                    )
                });
            entry.1.push(IpNet::from(ip as IpAddr));
        }
    }
    Ok(by_handle
        .into_iter()
        .filter_map(|(handle, (pod, addresses))| {
            let (network, container_id) = handle.rsplit_once('.')?;
            let host_ifname = host_veth_name(Some((&pod.namespace, &pod.name)), container_id);
            // A pod whose veth is gone has no route to restore; CNI DEL or leak GC frees it.
            nix::net::if_::if_nametoindex(host_ifname.as_str()).ok()?;
            Some(Endpoint {
                handle: Handle {
                    network: network.to_owned(),
                    container_id: container_id.to_owned(),
                },
                pod,
                host_ifname,
                addresses,
            })
        })
        .collect())
}
