//! `tortie-node bgp --config FILE`: the BGP speaker, the kernel sync of what it learns, and
//! the `tortie.v1.Status` API, with no Kubernetes at all. A small BGP daemon.
//!
//! Wiring, in the order routes flow: peers → [`tortie_bgp::Speaker`] (Loc-RIB) →
//! `kernel_sync` (this module: Loc-RIB changes become [`Route`]s) → the route reconciler
//! (the only writer of kernel routes, protocol 116).
//!
//! Graceful restart: if the kernel still holds tortie routes at start, we restarted with
//! our forwarding state intact. The speaker then sets the R bit, the reconciler keeps those
//! routes as stale, and only the speaker's `InitialSyncDone` (End-of-RIB from every peer)
//! lets the reconciler sweep what nobody re-announced.
//!
//! A daemon whose kernel sync has stopped (the reconciler died, or the speaker did) would
//! go on peering while the kernel no longer follows: it reports not ready on the Status
//! API and exits with an error instead, so that its supervisor restarts it (issue 13).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tortie_api::v1::status_server::StatusServer;
use tortie_bgp::{
    Password, PeerConfig, RibEvent, RouteChange, Speaker, SpeakerConfig, Subscription,
};

use crate::netlink::{KernelRouteTable, Route};
use crate::routes::{
    ReconcilerConfig, ReconcilerError, RouteSet, RouteUpdate, RoutesHandle, spawn_reconciler,
};
use crate::server::{Health, NodeInfo, StatusService};

/// Where the daemon serves its status API unless the config says otherwise.
pub const DEFAULT_API_SOCKET: &str = "/var/run/tortie/bgp.sock";

/// The config file (TOML). The names are issue 4's; everything after `kernel_install` and
/// the `[[allow]]` table are additions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// Where to accept BGP connections; absent for none.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// Install learned routes in the kernel (protocol 116).
    #[serde(default = "default_true")]
    pub kernel_install: bool,
    /// Next hop for our IPv6 prefixes sent over IPv4 sessions.
    #[serde(default)]
    pub local_ipv6: Option<Ipv6Addr>,
    /// Next hop for our IPv4 prefixes sent over IPv6 sessions.
    #[serde(default)]
    pub local_ipv4: Option<Ipv4Addr>,
    /// RFC 4456 cluster id when reflecting; the router id by default.
    #[serde(default)]
    pub cluster_id: Option<Ipv4Addr>,
    /// Seconds between full kernel resyncs (drift repair).
    #[serde(default = "default_resync")]
    pub resync_interval: u64,
    #[serde(default, rename = "neighbor")]
    pub neighbors: Vec<NeighborConfig>,
    #[serde(default, rename = "originate")]
    pub originate: Vec<PrefixEntry>,
    /// Import filter: only prefixes inside one of these are accepted from peers. Without
    /// any `[[allow]]`, everything is accepted.
    #[serde(default, rename = "allow")]
    pub allow: Vec<PrefixEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborConfig {
    pub address: IpAddr,
    pub asn: u32,
    #[serde(default)]
    pub passive: bool,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub route_reflector_client: bool,
    #[serde(default = "default_true")]
    pub graceful_restart: bool,
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// First delay between connection attempts, seconds (doubles per failure).
    #[serde(default = "default_connect_retry")]
    pub connect_retry: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixEntry {
    pub prefix: IpNet,
}

/// A TCP MD5 password from the config file; never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

fn default_api_socket() -> PathBuf {
    PathBuf::from(DEFAULT_API_SOCKET)
}
fn default_true() -> bool {
    true
}
fn default_hold_time() -> u16 {
    90
}
fn default_port() -> u16 {
    tortie_bgp::BGP_PORT
}
fn default_connect_retry() -> u64 {
    5
}
fn default_resync() -> u64 {
    90
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("opening the kernel route table: {0}")]
    Kernel(#[from] crate::routes::ReconcilerError),
    #[error("BGP: {0}")]
    Bgp(#[from] tortie_bgp::Error),
    #[error("binding the API socket {path}: {source}")]
    Api {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serving the API: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(
        "kernel route sync stopped: {0}; exiting so that the daemon is restarted (kernel routes stay for the next start)"
    )]
    KernelSync(#[from] SyncStopped),
}

/// Why the kernel sync ended. Without it the daemon would keep peering while learned
/// routes no longer reach the kernel.
#[derive(Debug, thiserror::Error)]
pub enum SyncStopped {
    #[error("{0} (learned routes are no longer installed)")]
    Reconciler(#[from] ReconcilerError),
    #[error("the BGP speaker stopped")]
    Speaker,
    #[error("the kernel sync task failed: {0}")]
    Task(String),
}

impl StandaloneConfig {
    /// Reads and checks a config file. Errors name the file and the field.
    pub fn load(path: &Path) -> Result<StandaloneConfig, StandaloneError> {
        let text = std::fs::read_to_string(path).map_err(|source| StandaloneError::Read {
            path: path.to_owned(),
            source,
        })?;
        StandaloneConfig::parse(&text, path)
    }

    /// Parses `text` (read from `path`, which only labels errors).
    pub fn parse(text: &str, path: &Path) -> Result<StandaloneConfig, StandaloneError> {
        let cfg: StandaloneConfig = toml::from_str(text).map_err(|e| StandaloneError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let invalid = |field: String, reason: String| {
            Err(StandaloneError::Invalid {
                path: path.to_owned(),
                field,
                reason,
            })
        };
        if cfg.asn == 0 {
            return invalid("asn".into(), "AS 0 is reserved (RFC 7607)".into());
        }
        if cfg.router_id.is_unspecified() {
            return invalid(
                "router_id".into(),
                "0.0.0.0 is not a valid BGP identifier".into(),
            );
        }
        if cfg.resync_interval == 0 {
            return invalid("resync_interval".into(), "must be at least 1 second".into());
        }
        let mut seen = HashMap::new();
        for (i, n) in cfg.neighbors.iter().enumerate() {
            let field = |name: &str| format!("neighbor[{i}] ({}).{name}", n.address);
            if let Some(first) = seen.insert(n.address, i) {
                return invalid(
                    field("address"),
                    format!("same address as neighbor[{first}]"),
                );
            }
            if n.asn == 0 {
                return invalid(field("asn"), "AS 0 is reserved (RFC 7607)".into());
            }
            if n.hold_time == 1 || n.hold_time == 2 {
                return invalid(
                    field("hold_time"),
                    format!("{} must be 0 or at least 3 seconds", n.hold_time),
                );
            }
            if n.port == 0 {
                return invalid(field("port"), "must not be 0".into());
            }
            if let Some(local) = n.local_address
                && local.is_ipv4() != n.address.is_ipv4()
            {
                return invalid(
                    field("local_address"),
                    format!("{local} is not of the neighbor's address family"),
                );
            }
            if let Err(e) = n.peer_config().validate() {
                return invalid(format!("neighbor[{i}]"), e.to_string());
            }
        }
        for (list, name) in [(&cfg.originate, "originate"), (&cfg.allow, "allow")] {
            for (i, p) in list.iter().enumerate() {
                if p.prefix != p.prefix.trunc() {
                    return invalid(
                        format!("{name}[{i}].prefix"),
                        format!(
                            "{} has host bits set (did you mean {}?)",
                            p.prefix,
                            p.prefix.trunc()
                        ),
                    );
                }
            }
        }
        Ok(cfg)
    }

    fn speaker_config(&self, restarting: bool) -> SpeakerConfig {
        let mut s = SpeakerConfig::new(self.router_id, self.asn);
        s.listen = self.listen;
        s.cluster_id = self.cluster_id;
        s.import_allow =
            (!self.allow.is_empty()).then(|| self.allow.iter().map(|a| a.prefix).collect());
        s.restarting = restarting;
        s.local_ipv4 = self.local_ipv4;
        s.local_ipv6 = self.local_ipv6;
        s
    }
}

impl NeighborConfig {
    fn peer_config(&self) -> PeerConfig {
        let mut p = PeerConfig::new(self.address, self.asn);
        p.port = self.port;
        p.passive = self.passive;
        p.password = self.password.as_ref().map(|s| Password::new(s.0.clone()));
        p.route_reflector_client = self.route_reflector_client;
        p.graceful_restart = self.graceful_restart;
        p.hold_time = self.hold_time;
        p.local_address = self.local_address;
        p.connect_retry = Duration::from_secs(self.connect_retry.max(1));
        // Calico's name for a peer that is neither mesh nor node-specific.
        p.peer_type = "global".to_owned();
        p
    }
}

/// Runs the daemon from the config at `path` until SIGINT or SIGTERM.
pub async fn run(path: &Path) -> Result<(), StandaloneError> {
    let cfg = StandaloneConfig::load(path)?;
    run_with(cfg, shutdown_signal()).await
}

/// Runs the daemon with `cfg` until `shutdown` completes, or until the kernel sync stops
/// (then with [`StandaloneError::KernelSync`]).
pub async fn run_with(
    cfg: StandaloneConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StandaloneError> {
    let routes = if cfg.kernel_install {
        let table = KernelRouteTable::open().map_err(crate::routes::ReconcilerError::from)?;
        let (handle, _thread) = spawn_reconciler(
            table,
            ReconcilerConfig {
                resync_interval: Duration::from_secs(cfg.resync_interval),
                graceful_restart: true,
            },
        )?;
        crate::routes::watch_route_deletions(&handle);
        Some(handle)
    } else {
        None
    };
    serve(cfg, routes, shutdown, watch::channel(Health::Ready).0).await
}

/// The daemon once its route reconciler (if any) runs. `health` feeds the Status API:
/// ready (nothing here waits on a datastore) until the kernel sync stops.
async fn serve(
    cfg: StandaloneConfig,
    routes: Option<RoutesHandle>,
    shutdown: impl Future<Output = ()> + Send,
    health: watch::Sender<Health>,
) -> Result<(), StandaloneError> {
    let restarting = routes.as_ref().is_some_and(|r| r.found_at_start() > 0);
    tracing::info!(
        router_id = %cfg.router_id,
        asn = cfg.asn,
        neighbors = cfg.neighbors.len(),
        kernel_install = cfg.kernel_install,
        restarting,
        "starting the standalone BGP daemon"
    );
    let speaker = Speaker::start(cfg.speaker_config(restarting)).await?;
    // Subscribe before any peer exists, so that no change is missed.
    let mut sync = match &routes {
        Some(r) => Some(tokio::spawn(kernel_sync(
            speaker.subscribe().await?,
            r.clone(),
        ))),
        None => None,
    };
    // Originations first: a peer that comes up gets the whole table in its first UPDATEs.
    for o in &cfg.originate {
        speaker.originate(o.prefix).await?;
    }
    for n in &cfg.neighbors {
        speaker.add_peer(n.peer_config()).await?;
    }

    let listener =
        tortie_api::bind_root_only(&cfg.api_socket).map_err(|source| StandaloneError::Api {
            path: cfg.api_socket.clone(),
            source,
        })?;
    // The agent's Status service: no pod MTU, the speaker's peers.
    let status = StatusService::new(
        NodeInfo {
            node_name: node_name(&cfg),
            mtu: 0,
        },
        health.subscribe(),
    )
    .with_speaker(speaker.clone());
    let mut stopped: Option<SyncStopped> = None;
    let stop = async {
        let sync_ended = async {
            match sync.as_mut() {
                Some(task) => match task.await {
                    Ok(why) => why,
                    Err(e) => SyncStopped::Task(e.to_string()),
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            why = sync_ended => {
                tracing::error!(error = %why, "kernel route sync stopped: reporting not ready and exiting");
                health.send_replace(Health::Degraded(format!("kernel route sync stopped: {why}")));
                stopped = Some(why);
            }
        }
    };
    let served = tonic::transport::Server::builder()
        .add_service(StatusServer::new(status))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await;
    tracing::info!("shutting down: closing BGP sessions; kernel routes stay for the next start");
    if let Some(task) = sync {
        task.abort();
    }
    if let Err(e) = speaker.shutdown().await {
        tracing::warn!(error = %e, "BGP speaker did not shut down cleanly");
    }
    if let Some(why) = stopped {
        if let Err(e) = served {
            tracing::warn!(error = %e, "serving the API failed too");
        }
        return Err(why.into());
    }
    served?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn node_name(cfg: &StandaloneConfig) -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| cfg.router_id.to_string())
}

/// Turns Loc-RIB events into kernel route updates, in order, until the reconciler or the
/// speaker stops; returns why.
async fn kernel_sync(mut events: Subscription, routes: RoutesHandle) -> SyncStopped {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            // Noticed at once, not at the next UPDATE: the daemon must not look healthy.
            () = routes.stopped() => return ReconcilerError::Stopped.into(),
        };
        let result = match event {
            None => return SyncStopped::Speaker,
            Some(RibEvent::Changes(changes)) => {
                routes
                    .apply_in_order(changes.into_iter().map(to_update).collect())
                    .await
            }
            // The first event, or we fell behind: the table replaces every learned route.
            // The reconciler holds only these (the standalone daemon installs nothing else)
            // and keeps stale routes until `InitialSyncDone` all the same.
            Some(RibEvent::Resync(table)) => {
                tracing::info!(
                    routes = table.len(),
                    "kernel routes set from the whole Loc-RIB"
                );
                routes.set_desired(route_set(table)).await
            }
            Some(RibEvent::InitialSyncDone) => {
                tracing::info!("BGP initial sync done: sweeping stale kernel routes");
                routes.sync_complete().await
            }
        };
        if let Err(e) = result {
            return e.into();
        }
    }
}

/// The kernel routes of a whole Loc-RIB ([`RibEvent::Resync`]).
fn route_set(table: Vec<RouteChange>) -> RouteSet {
    table
        .into_iter()
        .filter_map(|c| match to_update(c) {
            RouteUpdate::Want(route) => Some(route),
            RouteUpdate::Unwant(_) => None,
        })
        .collect()
}

fn to_update(change: RouteChange) -> RouteUpdate {
    match change {
        RouteChange::Add {
            prefix, next_hop, ..
        } => RouteUpdate::Want(Route::via(prefix, next_hop)),
        RouteChange::Remove { prefix } => RouteUpdate::Unwant(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
router_id = "10.0.0.1"
asn = 64512
listen = "0.0.0.0:179"
api_socket = "/var/run/tortie/bgp.sock"
kernel_install = true

[[neighbor]]
address = "10.0.0.2"
asn = 64512
passive = false
password = "secret"
route_reflector_client = false
graceful_restart = true
hold_time = 90

[[originate]]
prefix = "192.168.1.0/26"

[[originate]]
prefix = "fd00:1::/64"
"#;

    fn parse(text: &str) -> Result<StandaloneConfig, String> {
        StandaloneConfig::parse(text, Path::new("bgp.toml")).map_err(|e| e.to_string())
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted a bad config:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let cfg = parse(ISSUE_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.neighbors.len(), 1);
        assert_eq!(cfg.originate.len(), 2);
        let p = cfg.neighbors[0].peer_config();
        assert_eq!(p.peer_type, "global");
        assert!(p.password.is_some());
        assert!(cfg.speaker_config(false).import_allow.is_none());
    }

    #[test]
    fn the_password_is_never_printed() {
        let cfg = parse(ISSUE_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{cfg:?} {:?}", cfg.neighbors[0].peer_config());
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad_hold = ISSUE_EXAMPLE.replace("hold_time = 90", "hold_time = 2");
        assert_eq!(
            error(&bad_hold),
            "bgp.toml: neighbor[0] (10.0.0.2).hold_time: 2 must be 0 or at least 3 seconds"
        );
        let host_bits = ISSUE_EXAMPLE.replace("192.168.1.0/26", "192.168.1.5/26");
        assert_eq!(
            error(&host_bits),
            "bgp.toml: originate[0].prefix: 192.168.1.5/26 has host bits set (did you mean 192.168.1.0/26?)"
        );
        let e = error(&ISSUE_EXAMPLE.replace("\"10.0.0.1\"", "\"10.0.0.300\""));
        assert!(e.contains("router_id"), "{e}");
        let e = error(&ISSUE_EXAMPLE.replace("passive = false", "pasive = false"));
        assert!(e.contains("pasive"), "{e}");
        let dup = format!("{ISSUE_EXAMPLE}\n[[neighbor]]\naddress = \"10.0.0.2\"\nasn = 1\n");
        assert_eq!(
            error(&dup),
            "bgp.toml: neighbor[1] (10.0.0.2).address: same address as neighbor[0]"
        );
    }

    #[test]
    fn allow_entries_become_the_import_filter() {
        let text = format!("{ISSUE_EXAMPLE}\n[[allow]]\nprefix = \"10.244.0.0/16\"\n");
        let cfg = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cfg.speaker_config(true).import_allow,
            Some(vec![
                "10.244.0.0/16".parse().unwrap_or_else(|_| unreachable!())
            ])
        );
    }

    /// A route table whose first periodic dump panics, as a bug in the reconciler would:
    /// its thread dies, and every later call on its handle fails.
    struct DiesOnResync {
        dumps: usize,
    }

    impl crate::netlink::RouteTable for DiesOnResync {
        fn dump(&mut self) -> Result<Vec<Route>, crate::netlink::NetlinkError> {
            self.dumps += 1;
            assert!(
                self.dumps < 2,
                "fake route table: simulated reconciler fault"
            );
            Ok(Vec::new())
        }

        fn apply(
            &mut self,
            _ops: &[crate::netlink::RouteOp],
        ) -> Result<Vec<crate::netlink::OpFailure>, crate::netlink::NetlinkError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn a_dead_kernel_sync_makes_the_daemon_not_ready_and_exit_with_an_error() {
        use tortie_api::v1::status_server::Status as _;

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let socket = dir.path().join("bgp.sock");
        let text = format!(
            "router_id = \"10.0.0.1\"\nasn = 64512\napi_socket = \"{}\"\n",
            socket.display()
        );
        let cfg = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let (routes, _thread) = spawn_reconciler(
            DiesOnResync { dumps: 0 },
            ReconcilerConfig {
                resync_interval: Duration::from_millis(50),
                graceful_restart: false,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (health, seen) = watch::channel(Health::Ready);
        let ran = tokio::time::timeout(
            Duration::from_secs(20),
            serve(cfg, Some(routes), std::future::pending(), health),
        )
        .await
        .unwrap_or_else(|_| panic!("the daemon kept running without its kernel sync"));
        match ran {
            Err(e @ StandaloneError::KernelSync(SyncStopped::Reconciler(_))) => {
                assert!(
                    e.to_string().contains("route reconciler has stopped"),
                    "{e}"
                );
            }
            other => panic!("expected a kernel sync error, got {other:?}"),
        }
        // What the daemon's Status service reported on its way out.
        let status = StatusService::new(
            NodeInfo {
                node_name: "n".into(),
                mtu: 0,
            },
            seen,
        )
        .get_status(tonic::Request::new(tortie_api::v1::StatusRequest {}))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
        assert!(!status.ready);
        assert!(
            status.reason.contains("kernel route sync stopped"),
            "{}",
            status.reason
        );
    }

    #[test]
    fn a_whole_loc_rib_becomes_the_whole_route_set() {
        let p: IpNet = "10.1.0.0/24".parse().unwrap_or_else(|_| unreachable!());
        let nh: IpAddr = "192.0.2.1".parse().unwrap_or_else(|_| unreachable!());
        let set = route_set(vec![RouteChange::Add {
            prefix: p,
            next_hop: nh,
            peer: nh,
        }]);
        assert_eq!(
            set.iter().cloned().collect::<Vec<_>>(),
            vec![Route::via(p, nh)]
        );
    }

    #[test]
    fn loc_rib_changes_become_kernel_routes_via_the_next_hop() {
        let p: IpNet = "10.1.0.0/24".parse().unwrap_or_else(|_| unreachable!());
        let nh: IpAddr = "192.0.2.1".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(
            to_update(RouteChange::Add {
                prefix: p,
                next_hop: nh,
                peer: nh
            }),
            RouteUpdate::Want(Route::via(p, nh))
        );
        assert_eq!(
            to_update(RouteChange::Remove { prefix: p }),
            RouteUpdate::Unwant(p)
        );
    }
}
