//! The gRPC API on the agent's unix socket: service `Cni` for the `tortie` plugin and
//! service `Status` for `tortiectl`.
//!
//! This layer only checks requests and translates them. The work is done behind two
//! traits ([`crate::attachment`]), each backed by the one task that owns its state:
//! - [`Ipam`]: addresses by handle (`<network>.<containerID>`), durable before it answers;
//! - [`Endpoints`]: the host route of a local pod, in the kernel before it answers.
//!
//! Failures map to gRPC codes the plugin turns into CNI errors: `InvalidArgument` (bad
//! request), `ResourceExhausted` (pool full), `Unavailable` (agent not ready or datastore
//! unreachable: CNI code 11, try again later), `FailedPrecondition` (an endpoint for
//! addresses the handle does not hold), `Internal` (anything else).

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};
use tortie_api::v1 as api;
use tortie_api::v1::cni_server::{Cni, CniServer};
use tortie_api::v1::status_server::{Status as StatusApi, StatusServer};
use tracing::Instrument;

use crate::attachment::{AllocateParams, Endpoint, Endpoints, Failure, Handle, Ipam, PodRef};
use crate::metrics::Metrics;
use crate::run::health::{PeerReadiness, bgp_ready};

/// The pods' IPv4 gateway: a link-local address nobody holds, answered by proxy ARP on the
/// host veth (as Calico does).
pub const IPV4_GATEWAY: &str = "169.254.1.1";
/// The pods' IPv6 gateway: the link-local address the host veth gets from its fixed MAC
/// ee:ee:ee:ee:ee:ee (EUI-64).
pub const IPV6_GATEWAY: &str = "fe80::ecee:eeff:feee:eeee";

impl From<Failure> for Status {
    fn from(f: Failure) -> Status {
        match f {
            Failure::Invalid(m) => Status::invalid_argument(m),
            Failure::Exhausted(m) => Status::resource_exhausted(m),
            Failure::Unavailable(m) => Status::unavailable(m),
            Failure::Precondition(m) => Status::failed_precondition(m),
            Failure::Internal(m) => Status::internal(m),
        }
    }
}

/// Whether the agent can serve CNI requests; published by the startup sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Starting(String),
    Ready,
    /// Was ready, and lost something it needs (e.g. the datastore).
    Degraded(String),
}

/// What the Status service reports besides health. Fixed once the agent has started.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_name: String,
    pub mtu: u32,
}

/// CNI names: the spec allows letters, digits, `_`, `.` and `-`, and no leading
/// punctuation (container IDs the same, per the CNI spec's `CNI_CONTAINERID`).
fn check_cni_name(what: &str, s: &str) -> Result<(), Failure> {
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && s.len() <= 1024;
    if ok {
        Ok(())
    } else {
        Err(Failure::Invalid(format!(
            "{what} {s:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        )))
    }
}

fn handle_of(att: Option<&api::Attachment>) -> Result<Handle, Failure> {
    let att = att.ok_or_else(|| Failure::Invalid("the request has no attachment".to_owned()))?;
    check_cni_name("network name", &att.network)?;
    check_cni_name("container id", &att.container_id)?;
    Ok(Handle {
        network: att.network.clone(),
        container_id: att.container_id.clone(),
    })
}

fn pod_of(pod: Option<&api::Pod>) -> PodRef {
    pod.map(|p| PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
    .unwrap_or_default()
}

fn ip_config(addr: &IpNet) -> api::IpConfig {
    let gateway = match addr.addr() {
        IpAddr::V4(_) => IPV4_GATEWAY,
        IpAddr::V6(_) => IPV6_GATEWAY,
    };
    api::IpConfig {
        address: addr.to_string(),
        gateway: gateway.to_owned(),
    }
}

/// A Linux interface name: 1 to 15 bytes, no '/', no whitespace, not `.` or `..`.
fn check_ifname(s: &str) -> Result<(), Failure> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Failure::Invalid(format!(
            "host interface name {s:?} is not a valid interface name"
        )))
    }
}

/// The `Cni` service.
pub struct CniService<I, E> {
    ipam: I,
    endpoints: E,
    mtu: u32,
    health: watch::Receiver<Health>,
    metrics: Metrics,
}

impl<I: Ipam, E: Endpoints> CniService<I, E> {
    pub fn new(ipam: I, endpoints: E, mtu: u32, health: watch::Receiver<Health>) -> Self {
        CniService {
            ipam,
            endpoints,
            mtu,
            health,
            metrics: Metrics::default(),
        }
    }

    /// Counts each call in `metrics` (the agent's, which it serves to Prometheus).
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        CniService { metrics, ..self }
    }

    /// Runs one call and records its duration and outcome.
    async fn timed<T>(
        &self,
        rpc: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let start = Instant::now();
        let result = call.await;
        let error = result.as_ref().err().map(Status::code);
        self.metrics.observe_cni(rpc, start.elapsed(), error);
        result
    }

    /// Refuses work until the agent is ready: an allocation before the datastore is synced
    /// could hand out an address twice.
    fn check_ready(&self) -> Result<(), Failure> {
        match &*self.health.borrow() {
            Health::Ready => Ok(()),
            Health::Starting(why) => Err(Failure::Unavailable(format!(
                "tortie-node is starting: {why}"
            ))),
            Health::Degraded(why) => Err(Failure::Unavailable(format!(
                "tortie-node is not ready: {why}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl<I: Ipam, E: Endpoints> Cni for CniService<I, E> {
    async fn allocate(
        &self,
        req: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateReply>, Status> {
        self.timed("Allocate", async {
            let req = req.into_inner();
            let handle = handle_of(req.attachment.as_ref())?;
            self.check_ready()?;
            let pod = pod_of(req.pod.as_ref());
            let span = tracing::info_span!("pod", container_id = %handle.container_id, pod = %format_args!("{}/{}", pod.namespace, pod.name));
            let addrs = self
                .ipam
                .allocate(AllocateParams { handle, pod })
                .instrument(span.clone())
                .await?;
            span.in_scope(|| tracing::info!(addresses = ?addrs, "allocated"));
            Ok(Response::new(api::AllocateReply {
                ips: addrs.iter().map(ip_config).collect(),
                mtu: self.mtu,
            }))
        })
        .await
    }

    async fn endpoint_ready(
        &self,
        req: Request<api::EndpointReadyRequest>,
    ) -> Result<Response<api::EndpointReadyReply>, Status> {
        self.timed("EndpointReady", async {
            let req = req.into_inner();
            let handle = handle_of(req.attachment.as_ref())?;
            self.check_ready()?;
            check_ifname(&req.host_ifname)?;
            let mut addresses = Vec::with_capacity(req.addresses.len());
            for a in &req.addresses {
                let net: IpNet = a.parse().map_err(|_| {
                    Failure::Invalid(format!(
                        "address {a:?} is not an address with a prefix length"
                    ))
                })?;
                addresses.push(net);
            }
            if addresses.is_empty() {
                return Err(Failure::Invalid("the endpoint has no addresses".to_owned()).into());
            }
            // Only routes to addresses this handle holds: a confused caller must not be able to
            // pull another pod's traffic to its veth.
            let held = self.ipam.addresses(&handle).await?;
            if let Some(stray) = addresses.iter().find(|a| !held.contains(a)) {
                return Err(Failure::Precondition(format!(
                    "{stray} is not allocated to {handle} (it holds {held:?}); call Allocate first"
                ))
                .into());
            }
            let endpoint = Endpoint {
                handle,
                pod: pod_of(req.pod.as_ref()),
                host_ifname: req.host_ifname,
                addresses,
            };
            self.endpoints.ready(endpoint).await?;
            Ok(Response::new(api::EndpointReadyReply {}))
        })
        .await
    }

    async fn release(
        &self,
        req: Request<api::ReleaseRequest>,
    ) -> Result<Response<api::ReleaseReply>, Status> {
        self.timed("Release", async {
            let handle = handle_of(req.into_inner().attachment.as_ref())?;
            self.check_ready()?;
            // The route goes first: a released address may be handed to a new pod at once, and
            // the old /32 must not still point at the old veth then.
            self.endpoints.removed(&handle).await?;
            let released = self.ipam.release(&handle).await?;
            tracing::info!(%handle, released, "released");
            Ok(Response::new(api::ReleaseReply { released }))
        })
        .await
    }

    async fn check(
        &self,
        req: Request<api::CheckRequest>,
    ) -> Result<Response<api::CheckReply>, Status> {
        self.timed("Check", async {
            let handle = handle_of(req.into_inner().attachment.as_ref())?;
            self.check_ready()?;
            let addrs = self.ipam.addresses(&handle).await?;
            Ok(Response::new(api::CheckReply {
                addresses: addrs.iter().map(ToString::to_string).collect(),
            }))
        })
        .await
    }

    async fn gc(&self, req: Request<api::GcRequest>) -> Result<Response<api::GcReply>, Status> {
        self.timed("Gc", async {
            let req = req.into_inner();
            check_cni_name("network name", &req.network)?;
            self.check_ready()?;
            let mut keep = Vec::with_capacity(req.valid_attachments.len());
            for att in &req.valid_attachments {
                let h = handle_of(Some(att))?;
                if h.network != req.network {
                    return Err(Failure::Invalid(format!(
                        "valid attachment {h} belongs to network {:?}, not {:?}",
                        h.network, req.network
                    ))
                    .into());
                }
                keep.push(h);
            }
            let outcome = self.ipam.gc(&req.network, &keep).await?;
            // Endpoints of released handles are forgotten too, so their routes are not repaired.
            for h in &outcome.handles {
                self.endpoints.removed(h).await?;
            }
            tracing::info!(network = %req.network, kept = keep.len(), released = ?outcome.handles, "gc");
            // `released` counts attachments: an attachment's addresses go together.
            Ok(Response::new(api::GcReply {
                released: outcome.handles.len() as u32,
            }))
        })
        .await
    }
}

/// The `Status` service. Its `ready` is the readiness probe's answer: the agent's
/// [`Health`] and BGP as [`crate::run::health::bgp_ready`] judges it. The CNI service
/// follows [`Health`] alone, so a BGP peer being down never stops pods from starting.
pub struct StatusService {
    info: NodeInfo,
    health: watch::Receiver<Health>,
    bgp: Option<tortie_bgp::Speaker>,
    /// When the agent started, and for how long after that BGP readiness is strict.
    started: Instant,
    bgp_ready_window: Duration,
    /// The route reconciler, which knows whether this node is in its own graceful restart.
    routes: Option<crate::routes::RoutesHandle>,
}

impl StatusService {
    pub fn new(info: NodeInfo, health: watch::Receiver<Health>) -> Self {
        StatusService {
            info,
            health,
            bgp: None,
            started: Instant::now(),
            bgp_ready_window: crate::run::health::BGP_READY_WINDOW,
            routes: None,
        }
    }

    /// Makes readiness wait, within the start-up window, for this node's own graceful
    /// restart to finish (its kept routes confirmed, the stale ones swept).
    pub fn with_routes(mut self, routes: crate::routes::RoutesHandle) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Counts BGP's start-up window from `started` (the agent's start, rather than this
    /// service's creation) and makes it last `window`.
    pub fn with_bgp_ready_window(mut self, started: Instant, window: Duration) -> Self {
        self.started = started;
        self.bgp_ready_window = window;
        self
    }

    /// Reports `speaker`'s peers (the node-to-node mesh) in `bgp_peers`.
    pub fn with_speaker(mut self, speaker: tortie_bgp::Speaker) -> Self {
        self.bgp = Some(speaker);
        self
    }
}

#[tonic::async_trait]
impl StatusApi for StatusService {
    async fn get_status(
        &self,
        _req: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusReply>, Status> {
        let health = self.health.borrow().clone();
        let bgp_peers: Vec<api::BgpPeer> = match &self.bgp {
            Some(speaker) => speaker
                .peer_status()
                .await
                .map_err(|e| Status::unavailable(format!("BGP speaker: {e}")))?
                .iter()
                .map(crate::node_status::api_peer)
                .collect(),
            None => Vec::new(),
        };
        let (ready, reason) = match health {
            Health::Ready => {
                let peers: Vec<PeerReadiness> = bgp_peers
                    .iter()
                    .map(|p| PeerReadiness {
                        address: p.address.clone(),
                        established: p.state == tortie_bgp::State::Established.to_string(),
                        graceful_restart: p.graceful_restart,
                    })
                    .collect();
                let own_restart = self
                    .routes
                    .as_ref()
                    .is_some_and(|r| r.restart_in_progress());
                match bgp_ready(
                    &peers,
                    own_restart,
                    self.started.elapsed(),
                    self.bgp_ready_window,
                ) {
                    Ok(()) => (true, String::new()),
                    Err(why) => (false, why),
                }
            }
            Health::Starting(why) => (false, format!("starting: {why}")),
            Health::Degraded(why) => (false, why),
        };
        Ok(Response::new(api::StatusReply {
            ready,
            node_name: self.info.node_name.clone(),
            mtu: self.info.mtu,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            bgp_peers,
            reason,
            stalled_tasks: crate::run::health::stalled_tasks(Instant::now()),
        }))
    }
}

/// Binds `path` (mode 0600, root only) for [`serve`].
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    tortie_api::bind_root_only(path)
}

/// How long open connections may drain after shutdown is asked for.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves both services on `listener` until `shutdown` completes, then lets open
/// connections finish for up to [`SHUTDOWN_GRACE`]: a client that keeps its connection
/// open (an idle `tortiectl`, a test) must not keep the agent from stopping.
pub async fn serve<I: Ipam, E: Endpoints>(
    listener: UnixListener,
    cni: CniService<I, E>,
    status: StatusService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with_grace(listener, cni, status, shutdown, SHUTDOWN_GRACE).await
}

async fn serve_with_grace<I: Ipam, E: Endpoints>(
    listener: UnixListener,
    cni: CniService<I, E>,
    status: StatusService,
    shutdown: impl Future<Output = ()> + Send,
    grace: std::time::Duration,
) -> Result<(), tonic::transport::Error> {
    let (asked_tx, asked_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = asked_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .add_service(CniServer::new(cni))
        .add_service(StatusServer::new(status))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r,
        // Only a sent value counts: the sender is dropped unsent only with the server.
        Ok(()) = asked_rx => {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(?grace, "clients still connected; stopping anyway");
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
