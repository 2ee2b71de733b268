//! Prometheus metrics, served over HTTP when `FELIX_PROMETHEUSMETRICSENABLED=true` (on
//! `FELIX_PROMETHEUSMETRICSHOST`:`FELIX_PROMETHEUSMETRICSPORT`, Felix's names and its default
//! port 9091).
//!
//! Two kinds of series:
//! - events the tasks count as they happen (CNI requests, policy applies, drift repairs,
//!   watch restarts): the tasks hold clones of the handles in [`Metrics`], which are atomics;
//! - state that a task owns (BGP sessions, IPAM usage, programmed routes): read from its
//!   owner when Prometheus scrapes, through [`StateSources`], so nothing is computed on the
//!   hot path for a figure nobody may read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::ipam_task::IpamHandle;
use crate::netlink::{KernelRouteTable, RouteTable};

/// The content type of prometheus-client's text encoding (OpenMetrics 1.0).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The agent API call: `Allocate` and `EndpointReady` make a CNI ADD, `Release` a DEL.
    pub rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcErrorLabels {
    pub rpc: &'static str,
    /// The gRPC code the plugin received (it maps it to a CNI error code).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    peer_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerStateLabels {
    peer: String,
    peer_type: String,
    state: String,
}

/// The event counters and histograms the tasks update, and the gauges refreshed at each
/// scrape. Cloning is cheap: every field is a shared handle.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Time the agent took to answer each CNI call, in seconds.
    pub cni_duration: Family<RpcLabels, Histogram>,
    /// CNI calls answered with an error, by call and gRPC code.
    pub cni_errors: Family<RpcErrorLabels, Counter>,
    /// Time one policy write took (iptables-restore and ipset restore), in seconds.
    pub policy_apply_duration: Histogram,
    /// Policy writes that failed.
    pub policy_apply_failures: Counter,
    /// Drift checks that found the kernel's chains or sets changed by someone else and
    /// wrote them back.
    pub policy_drift_repairs: Counter,
    /// Watches of the cluster cache that had to start over (an error, an expired
    /// resourceVersion), by kind.
    pub watch_restarts: Family<KindLabels, Counter>,
    bgp_session_state: Family<PeerStateLabels, Gauge>,
    bgp_prefixes_received: Family<PeerLabels, Gauge>,
    bgp_prefixes_accepted: Family<PeerLabels, Gauge>,
    ipam_blocks: Gauge,
    ipam_addresses: Gauge,
    routes_programmed: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Arc::new(Registry::with_prefix("tortie")),
            cni_duration: Family::new_with_constructor(latency_histogram),
            cni_errors: Family::default(),
            policy_apply_duration: latency_histogram(),
            policy_apply_failures: Counter::default(),
            policy_drift_repairs: Counter::default(),
            watch_restarts: Family::default(),
            bgp_session_state: Family::default(),
            bgp_prefixes_received: Family::default(),
            bgp_prefixes_accepted: Family::default(),
            ipam_blocks: Gauge::default(),
            ipam_addresses: Gauge::default(),
            routes_programmed: Gauge::default(),
        };
        let r = Arc::get_mut(&mut m.registry).unwrap_or_else(|| unreachable!("not shared yet"));
        r.register_with_unit(
            "cni_request_duration",
            "Time the agent took to answer a CNI call (Allocate + EndpointReady make an ADD, Release a DEL)",
            Unit::Seconds,
            m.cni_duration.clone(),
        );
        r.register(
            "cni_request_errors",
            "CNI calls answered with an error, by call and gRPC code",
            m.cni_errors.clone(),
        );
        r.register_with_unit(
            "policy_apply_duration",
            "Time one write of the policy dataplane took (iptables-restore and ipset restore)",
            Unit::Seconds,
            m.policy_apply_duration.clone(),
        );
        r.register(
            "policy_apply_failures",
            "Writes of the policy dataplane that failed",
            m.policy_apply_failures.clone(),
        );
        r.register(
            "policy_drift_repairs",
            "Times the policy chains or sets were found changed by someone else and written back",
            m.policy_drift_repairs.clone(),
        );
        r.register(
            "watch_restarts",
            "Watches of the cluster cache that started over, by kind",
            m.watch_restarts.clone(),
        );
        r.register(
            "bgp_session_state",
            "1 for the state each BGP peer is in",
            m.bgp_session_state.clone(),
        );
        r.register(
            "bgp_prefixes_received",
            "Prefixes each BGP peer advertised to this node",
            m.bgp_prefixes_received.clone(),
        );
        r.register(
            "bgp_prefixes_accepted",
            "Prefixes of each BGP peer that passed the import filter (inside the IP pools)",
            m.bgp_prefixes_accepted.clone(),
        );
        r.register(
            "ipam_blocks",
            "IPAM blocks affine to this node",
            m.ipam_blocks.clone(),
        );
        r.register(
            "ipam_addresses_in_use",
            "Addresses allocated to this node's pods",
            m.ipam_addresses.clone(),
        );
        r.register(
            "routes_programmed",
            "Kernel routes tortie keeps on this node (pod routes, block blackholes, learned blocks)",
            m.routes_programmed.clone(),
        );
        m
    }

    /// Records one CNI call: its duration and, when it failed, its gRPC code.
    pub fn observe_cni(&self, rpc: &'static str, took: Duration, error: Option<tonic::Code>) {
        self.cni_duration
            .get_or_create(&RpcLabels { rpc })
            .observe(took.as_secs_f64());
        if let Some(code) = error {
            self.cni_errors
                .get_or_create(&RpcErrorLabels {
                    rpc,
                    code: format!("{code:?}"),
                })
                .inc();
        }
    }

    /// Refreshes the state gauges from their owners, then encodes every series.
    pub async fn scrape(&self, sources: &StateSources) -> String {
        self.bgp_session_state.clear();
        self.bgp_prefixes_received.clear();
        self.bgp_prefixes_accepted.clear();
        if let Some(speaker) = &sources.speaker {
            match speaker.peer_status().await {
                Ok(peers) => {
                    for p in peers {
                        let peer = p.address.to_string();
                        let peer_type = p.peer_type.clone();
                        self.bgp_session_state
                            .get_or_create(&PeerStateLabels {
                                peer: peer.clone(),
                                peer_type: peer_type.clone(),
                                state: p.state.to_string(),
                            })
                            .set(1);
                        let labels = PeerLabels { peer, peer_type };
                        self.bgp_prefixes_received
                            .get_or_create(&labels)
                            .set(gauge_value(p.prefixes_received));
                        self.bgp_prefixes_accepted
                            .get_or_create(&labels)
                            .set(gauge_value(p.prefixes_accepted));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "metrics: the BGP speaker did not answer"),
            }
        }
        if let Some(ipam) = &sources.ipam {
            match ipam.usage().await {
                Ok(u) => {
                    self.ipam_blocks.set(gauge_value(u.affine_blocks));
                    self.ipam_addresses.set(gauge_value(u.addresses));
                }
                Err(e) => tracing::debug!(error = %e, "metrics: the IPAM task did not answer"),
            }
        }
        if sources.kernel_routes {
            // The kernel's own count, not the reconciler's intent: what is programmed.
            let dumped = tokio::task::spawn_blocking(|| KernelRouteTable::open()?.dump()).await;
            match dumped {
                Ok(Ok(routes)) => {
                    self.routes_programmed.set(gauge_value(routes.len()));
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "metrics: reading the kernel's routes failed")
                }
                Err(e) => tracing::debug!(error = %e, "metrics: the route dump did not finish"),
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The owners of the state the gauges report; a `None` is a piece this agent does not run.
#[derive(Clone, Default)]
pub struct StateSources {
    pub speaker: Option<tortie_bgp::Speaker>,
    pub ipam: Option<IpamHandle>,
    /// Count tortie's routes (protocol 116) in this namespace's kernel table.
    pub kernel_routes: bool,
}

/// Binds `addr` now (so a port in use stops the agent at start, naming it), then serves
/// `GET /metrics` until the returned task is dropped or aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    sources: StateSources,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    let shared = Arc::new((metrics, sources));
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                respond(&req, &shared.0, &shared.1).await,
                            )
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics: connection ended with an error");
                }
            });
        }
    }))
}

async fn respond<B>(
    req: &Request<B>,
    metrics: &Metrics,
    sources: &StateSources,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, CONTENT_TYPE, metrics.scrape(sources).await)
        }
        (&Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_counted_by_label_and_encoded() {
        let m = Metrics::new();
        m.observe_cni("Allocate", Duration::from_millis(3), None);
        m.observe_cni(
            "Allocate",
            Duration::from_millis(5),
            Some(tonic::Code::ResourceExhausted),
        );
        m.policy_drift_repairs.inc();
        m.watch_restarts
            .get_or_create(&KindLabels { kind: "Pod".into() })
            .inc();
        let text = m.scrape(&StateSources::default()).await;
        assert!(
            text.contains(r#"tortie_cni_request_duration_seconds_count{rpc="Allocate"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tortie_cni_request_errors_total{rpc="Allocate",code="ResourceExhausted"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("tortie_policy_drift_repairs_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"tortie_watch_restarts_total{kind="Pod"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn answers_get_metrics_and_nothing_else() {
        let m = Metrics::new();
        m.policy_apply_failures.inc();
        let sources = StateSources::default();
        let get = |path: &str| Request::get(path).body(()).unwrap();

        let ok = respond(&get("/metrics"), &m, &sources).await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[hyper::header::CONTENT_TYPE], CONTENT_TYPE);
        let body = http_body_util::BodyExt::collect(ok.into_body())
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("tortie_policy_apply_failures_total 1"),
            "{text}"
        );

        let other = respond(&get("/"), &m, &sources).await;
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(
            respond(&post, &m, &sources).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
