//! The node-to-node BGP mesh of `tortie-node run`.
//!
//! One [`Speaker`] per agent: router id = the node's IPv4 address, AS = the node's `AS`,
//! else BGPConfiguration `default`'s `asNumber`, else 64512 (a change restarts every
//! session with the new AS, and the Node's `tortie.dev/as-number` follows), listening on
//! the node address port 179. One iBGP peer per other Node that carries the
//! `tortie.dev/ipv4-address` annotation; of each pair the side with the higher address is
//! passive (docs/decisions.md), so the two never race two connections against each other.
//!
//! Routes flow: IPAM's affine blocks and the /32s (/128s) this node borrowed from other
//! nodes' blocks → originate; peers → Loc-RIB → `<block> via <node IP>
//! dev <uplink> onlink` (protocol 116) through the route reconciler, as Calico writes them.
//! Peers follow the Nodes, BGPPeers and BGPConfigurations (agent/src/bgp_peers decides
//! which sessions they ask for) and the import filter follows the IP pools, all as the
//! cluster cache (agent/src/cache) sees them: a new node is peered as soon as its Node is
//! watched. A change replaces only the sessions whose settings it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use tokio::sync::watch;
use tortie_bgp::{
    Password, PeerConfig, RibEvent, RouteChange, Speaker, SpeakerConfig, Subscription,
};

use crate::bgp_peers::{self, DesiredPeer, PeerType, ThisNode, Warning, node_asn, node_ipv4};
use crate::cache::{Kind, Snapshot};
use crate::datastore::crd::SecretKeyRef;
use crate::netlink::Route;
use crate::routes::RoutesHandle;

/// Calico's name for these peers in `node status`.
pub const PEER_TYPE: &str = PeerType::Mesh.as_str();

/// How long a peer keeps our routes while our agent restarts (RFC 4724 restart time);
/// Calico's BIRD uses the same 120 s.
const RESTART_TIME_SECS: u16 = 120;

/// How long after a BGPPeer password could not be read it is read again (a Secret created
/// after its BGPPeer is not watched, so nothing else would bring the peer up).
const PASSWORD_RETRY: Duration = Duration::from_secs(10);

/// How often the passwords in use are read again, so that a changed Secret takes effect
/// without a change to its BGPPeer. Secrets are not watched: the agent may read only the
/// ones BGPPeers name (a Role per Secret), and a watch would need `list` on all of them.
const PASSWORD_REREAD: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    /// The node's own AS (`AS`); `None` leaves it to BGPConfiguration `default`.
    pub asn: Option<u32>,
    /// The interface the node address is on: learned routes go out of it `onlink`.
    /// `None` lets the kernel resolve the next hop.
    pub uplink: Option<String>,
    /// Where BGPPeer passwords (`password.secretKeyRef`) are read: the agent's own
    /// namespace, as calico-node reads them from its own.
    pub secrets: Api<Secret>,
}

/// What a mesh peer is, for telling whether an existing session must be replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeshPeer {
    pub address: Ipv4Addr,
    pub asn: u32,
    pub passive: bool,
}

impl MeshPeer {
    pub fn peer_config(&self, local: Ipv4Addr) -> PeerConfig {
        let mut p = PeerConfig::new(IpAddr::V4(self.address), self.asn);
        p.passive = self.passive;
        p.local_address = Some(IpAddr::V4(local));
        p.peer_type = PEER_TYPE.to_owned();
        p.connect_retry = Duration::from_secs(2);
        // Both roles of RFC 4724: the peer keeps our routes while our agent restarts, and
        // we keep its routes while its agent does.
        p.graceful_restart = true;
        p.restart_time = RESTART_TIME_SECS;
        p
    }
}

/// The peers this node should have: every other Node with a usable IPv4 annotation. A Node
/// without an AS annotation (or an unreadable one) is taken to be in our AS (iBGP mesh).
/// A Node whose annotation is our own address is skipped: a duplicate is a misconfiguration
/// the peer table cannot express.
pub fn mesh_peers<'a>(
    own_name: &str,
    own_ip: Ipv4Addr,
    own_asn: u32,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> BTreeMap<Ipv4Addr, MeshPeer> {
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(own_name) {
            continue;
        }
        let Some(address) = node_ipv4(n) else {
            continue;
        };
        if address == own_ip {
            continue;
        }
        let asn = node_asn(n).unwrap_or(own_asn);
        out.insert(
            address,
            MeshPeer {
                address,
                asn,
                passive: own_ip > address,
            },
        );
    }
    out
}

/// A learned Loc-RIB change as a kernel route update; `None` for prefixes this node owns
/// (a peer advertising our own block must not replace its blackhole).
fn route_for(
    change: &RouteChange,
    uplink: Option<&str>,
    own: &BTreeSet<IpNet>,
) -> Option<Result<Route, IpNet>> {
    match change {
        RouteChange::Add {
            prefix, next_hop, ..
        } => {
            if own.contains(prefix) {
                return None;
            }
            Some(Ok(match uplink {
                Some(dev) => Route::via_onlink(*prefix, *next_hop, dev),
                None => Route::via(*prefix, *next_hop),
            }))
        }
        RouteChange::Remove { prefix } => (!own.contains(prefix)).then_some(Err(*prefix)),
    }
}

/// The net effect of a batch: the last change of each prefix wins.
pub fn fold_changes(
    changes: &[RouteChange],
    uplink: Option<&str>,
    own: &BTreeSet<IpNet>,
) -> (Vec<Route>, Vec<IpNet>) {
    let mut last: HashMap<IpNet, Result<Route, IpNet>> = HashMap::new();
    for c in changes {
        if let Some(r) = route_for(c, uplink, own) {
            let key = match &r {
                Ok(route) => route.dst,
                Err(p) => *p,
            };
            last.insert(key, r);
        }
    }
    let mut upsert = Vec::new();
    let mut remove = Vec::new();
    for r in last.into_values() {
        match r {
            Ok(route) => upsert.push(route),
            Err(p) => remove.push(p),
        }
    }
    (upsert, remove)
}

/// What a `Resync` (the whole Loc-RIB) asks of the route reconciler, which the mesh
/// shares with the endpoint routes: write every route of the table, and remove the ones
/// the mesh installed before that the table no longer has (never one of our own blocks,
/// whose blackhole is not the mesh's).
fn resync_routes(
    table: &[RouteChange],
    uplink: Option<&str>,
    own: &BTreeSet<IpNet>,
    installed: &BTreeSet<IpNet>,
) -> (Vec<Route>, Vec<IpNet>) {
    let (upsert, _) = fold_changes(table, uplink, own);
    let keep: BTreeSet<IpNet> = upsert.iter().map(|r| r.dst).collect();
    let remove = installed
        .iter()
        .filter(|p| !keep.contains(p) && !own.contains(p))
        .copied()
        .collect();
    (upsert, remove)
}

/// Starts the speaker and the mesh's tasks. The speaker is returned for the Status API.
/// Call it once the endpoint task has restored this node's own routes: the initial sync
/// lets the reconciler sweep every stale route it has not been told of by then.
pub async fn start(
    cfg: MeshConfig,
    cluster: watch::Receiver<Snapshot>,
    affine: watch::Receiver<Vec<IpNet>>,
    borrowed: watch::Receiver<Vec<IpNet>>,
    routes: RoutesHandle,
) -> Result<(Speaker, tokio::task::JoinHandle<()>), tortie_bgp::Error> {
    // Until the BGPConfigurations are listed; no peer is added before then, so the AS can
    // still change for free.
    let asn = cfg.asn.unwrap_or(crate::config::DEFAULT_AS_NUMBER);
    let mut sc = SpeakerConfig::new(cfg.node_ip, asn);
    sc.listen = Some(SocketAddr::new(
        IpAddr::V4(cfg.node_ip),
        tortie_bgp::BGP_PORT,
    ));
    sc.local_ipv4 = Some(cfg.node_ip);
    // Nothing is accepted until the pools are known: a peer must not steer arbitrary
    // prefixes (a default route) into this node's table.
    sc.import_allow = Some(Vec::new());
    // Our routes in the kernel mean an earlier run's forwarding state survived: a graceful
    // restart (RFC 4724 §4.1, the R bit), with our advertisements held back until every
    // peer's End-of-RIB or the deferral time, as in the standalone daemon.
    sc.restarting = routes.found_at_start() > 0;
    let restarting = sc.restarting;
    let speaker = Speaker::start(sc).await?;
    // Subscribe before any peer exists, so that no change is missed.
    let events = speaker.subscribe().await?;
    tracing::info!(router_id = %cfg.node_ip, asn, uplink = ?cfg.uplink, restarting, "BGP mesh speaker started");
    let sessions = Sessions::new(asn);
    let task = tokio::spawn(run(
        cfg,
        speaker.clone(),
        sessions,
        events,
        cluster,
        Advertised {
            affine,
            borrowed,
            open: true,
        },
        routes,
    ));
    Ok((speaker, task))
}

async fn run(
    cfg: MeshConfig,
    speaker: Speaker,
    mut sessions: Sessions,
    mut events: Subscription,
    mut cluster: watch::Receiver<Snapshot>,
    mut advertised: Advertised,
    routes: RoutesHandle,
) {
    let mut originated: BTreeSet<IpNet> = BTreeSet::new();
    let mut allow: Option<Vec<IpNet>> = None;
    // The learned routes handed to the reconciler, so that a resync can take back the ones
    // the table no longer has.
    let mut installed: BTreeSet<IpNet> = BTreeSet::new();
    let mut cluster_open = true;
    // The first snapshot counts as a change, so peers and filter are set from it.
    cluster.mark_changed();
    // Originate what IPAM already holds before the first peer is added.
    set_originated(&speaker, &mut originated, advertised.take()).await;
    let (heartbeat, mut tick) = crate::run::health::Heartbeat::with_idle_tick("BGP mesh");
    loop {
        tokio::select! {
            _ = tick.tick() => heartbeat.beat(),
            event = events.recv() => {
                let (upsert, remove) = match event {
                    Some(RibEvent::Changes(changes)) => {
                        fold_changes(&changes, cfg.uplink.as_deref(), &originated)
                    }
                    // The first event, or we fell behind: the whole table replaces ours.
                    Some(RibEvent::Resync(table)) => {
                        let (upsert, remove) =
                            resync_routes(&table, cfg.uplink.as_deref(), &originated, &installed);
                        tracing::info!(
                            routes = upsert.len(),
                            gone = remove.len(),
                            "BGP mesh routes set from the whole Loc-RIB"
                        );
                        (upsert, remove)
                    }
                    Some(RibEvent::InitialSyncDone) => {
                        // Every route learned in the sync is queued before this: what is
                        // still stale now nobody announced again.
                        tracing::info!("BGP mesh initial sync done: sweeping stale kernel routes");
                        if let Err(e) = routes.sync_complete().await {
                            tracing::error!(error = %e, "route reconciler stopped: mesh routes are no longer installed");
                            return;
                        }
                        continue;
                    }
                    None => {
                        tracing::warn!("BGP speaker stopped: mesh stopped");
                        return;
                    }
                };
                for p in &remove {
                    installed.remove(p);
                }
                installed.extend(upsert.iter().map(|r| r.dst));
                if let Err(e) = routes.update(upsert, remove).await {
                    tracing::error!(error = %e, "route reconciler stopped: mesh routes are no longer installed");
                    return;
                }
            }
            changed = advertised.changed(), if advertised.open => {
                if changed.is_err() {
                    // The IPAM task is gone; keep advertising what we have.
                    advertised.open = false;
                    continue;
                }
                set_originated(&speaker, &mut originated, advertised.take()).await;
            }
            changed = cluster.changed(), if cluster_open => {
                if changed.is_err() {
                    // The cache is gone (the agent is stopping): keep what we have.
                    cluster_open = false;
                    continue;
                }
                let snapshot = cluster.borrow_and_update().clone();
                if snapshot.is_synced(Kind::IPPool) {
                    refresh_allow(&speaker, &snapshot, &mut allow).await;
                }
                // Peers only once the filter is known: an initial sync over a table the
                // empty filter rejected would sweep every learned route.
                if allow.is_some() {
                    sessions.follow(&cfg, &speaker, &snapshot).await;
                }
            }
            () = sleep_until_some(sessions.read_passwords_at), if sessions.read_passwords_at.is_some() => {
                sessions.read_passwords_at = None;
                let snapshot = cluster.borrow().clone();
                sessions.refresh(&cfg, &speaker, &snapshot, Passwords::ReadAgain).await;
            }
        }
    }
}

/// What IPAM says this node advertises: its affine blocks, and the host prefixes of the
/// addresses it borrowed from other nodes' blocks (the owner advertises the block; the
/// longer prefix brings the borrowed address's traffic here).
struct Advertised {
    affine: watch::Receiver<Vec<IpNet>>,
    borrowed: watch::Receiver<Vec<IpNet>>,
    /// The IPAM task still publishes.
    open: bool,
}

impl Advertised {
    /// Waits until either list changes; an error once the IPAM task is gone.
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        tokio::select! {
            changed = self.affine.changed() => changed,
            changed = self.borrowed.changed() => changed,
        }
    }

    /// Both lists, marked seen.
    fn take(&mut self) -> Vec<IpNet> {
        let mut out = self.affine.borrow_and_update().clone();
        out.extend(self.borrowed.borrow_and_update().iter().copied());
        out
    }
}

async fn set_originated(speaker: &Speaker, originated: &mut BTreeSet<IpNet>, prefixes: Vec<IpNet>) {
    let want: BTreeSet<IpNet> = prefixes.into_iter().map(|b| b.trunc()).collect();
    for p in want.difference(originated).copied().collect::<Vec<_>>() {
        match speaker.originate(p).await {
            Ok(()) => {
                tracing::info!(prefix = %p, "advertising");
                originated.insert(p);
            }
            Err(e) => tracing::warn!(prefix = %p, error = %e, "could not advertise a prefix"),
        }
    }
    for p in originated.difference(&want).copied().collect::<Vec<_>>() {
        match speaker.withdraw(p).await {
            Ok(()) => {
                tracing::info!(prefix = %p, "withdrawing");
                originated.remove(&p);
            }
            Err(e) => tracing::warn!(prefix = %p, error = %e, "could not withdraw a prefix"),
        }
    }
}

async fn refresh_allow(speaker: &Speaker, snapshot: &Snapshot, allow: &mut Option<Vec<IpNet>>) {
    let mut want: Vec<IpNet> = snapshot
        .pools
        .values()
        .filter_map(|p| match crate::datastore::pool_from_crd(p) {
            Ok(pool) => Some(pool.cidr()),
            Err(e) => {
                tracing::warn!(pool = ?p.metadata.name, error = %e, "IP pool left out of the BGP import filter");
                None
            }
        })
        .collect();
    want.sort();
    want.dedup();
    if allow.as_ref() == Some(&want) {
        return;
    }
    match speaker.set_import_allow(Some(want.clone())).await {
        Ok(()) => {
            tracing::info!(pools = ?want, "BGP import filter set to the IP pools");
            *allow = Some(want);
        }
        Err(e) => tracing::warn!(error = %e, "could not set the BGP import filter"),
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// The objects the sessions are computed from, as of the last computation: a snapshot in
/// which none of them changed (a pod came or went) leaves the sessions alone.
type PeerInputs = (
    Arc<BTreeMap<String, Arc<Node>>>,
    Arc<BTreeMap<String, Arc<crate::datastore::BGPPeer>>>,
    Arc<BTreeMap<String, Arc<crate::datastore::BGPConfiguration>>>,
);

/// The speaker's sessions as the mesh task configured them.
struct Sessions {
    /// The speaker's AS.
    asn: u32,
    /// The speaker's route reflector cluster id, if it reflects.
    cluster_id: Option<Ipv4Addr>,
    /// Writing the AS into our Node, and which AS.
    annotating: Option<(u32, tokio::task::JoinHandle<()>)>,
    /// The BGPConfiguration warnings logged already, as `warned`.
    settings_warned: Vec<String>,
    /// What each session was added with; a session is replaced only when this changes.
    applied: BTreeMap<Ipv4Addr, PeerConfig>,
    inputs: Option<PeerInputs>,
    /// The warnings logged already: each is logged once for as long as it holds.
    warned: BTreeSet<Warning>,
    /// When to read the passwords again: soon after a failure, else every
    /// [`PASSWORD_REREAD`] while a session has one.
    read_passwords_at: Option<tokio::time::Instant>,
    /// The passwords last read, by Secret name and key: a Node or BGPPeer change reuses
    /// them, so only the timer above (or a Secret not read yet) costs an apiserver call.
    passwords: BTreeMap<(String, String), Password>,
}

/// Whether a recomputation of the sessions reads the password Secrets again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Passwords {
    /// Only those not read yet.
    Cached,
    /// All of them (the re-read timer).
    ReadAgain,
}

impl Drop for Sessions {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.annotating {
            task.abort();
        }
    }
}

impl Sessions {
    fn new(asn: u32) -> Self {
        Sessions {
            asn,
            cluster_id: None,
            annotating: None,
            settings_warned: Vec::new(),
            applied: BTreeMap::new(),
            inputs: None,
            warned: BTreeSet::new(),
            read_passwords_at: None,
            passwords: BTreeMap::new(),
        }
    }

    /// Recomputes the sessions from a new snapshot, once Nodes, BGPPeers and
    /// BGPConfigurations have all been listed (before that, the mesh could come up only to
    /// be torn down by a BGPConfiguration that turns it off), and only if one of them changed.
    async fn follow(&mut self, cfg: &MeshConfig, speaker: &Speaker, snapshot: &Snapshot) {
        let needs = [Kind::Node, Kind::BGPPeer, Kind::BGPConfiguration];
        if !needs.iter().all(|k| snapshot.is_synced(*k)) {
            return;
        }
        if let Some((nodes, peers, configurations)) = &self.inputs
            && Arc::ptr_eq(nodes, &snapshot.nodes)
            && Arc::ptr_eq(peers, &snapshot.bgp_peers)
            && Arc::ptr_eq(configurations, &snapshot.bgp_configurations)
        {
            return;
        }
        self.refresh(cfg, speaker, snapshot, Passwords::Cached)
            .await;
    }

    async fn refresh(
        &mut self,
        cfg: &MeshConfig,
        speaker: &Speaker,
        snapshot: &Snapshot,
        passwords: Passwords,
    ) {
        self.inputs = Some((
            snapshot.nodes.clone(),
            snapshot.bgp_peers.clone(),
            snapshot.bgp_configurations.clone(),
        ));
        let settings = bgp_peers::node_settings(
            cfg.asn,
            snapshot.nodes.get(&cfg.node_name).map(|n| n.as_ref()),
            &snapshot.bgp_configurations,
        );
        for w in &settings.warnings {
            if !self.settings_warned.contains(w) {
                tracing::warn!("{w}");
            }
        }
        self.settings_warned = settings.warnings;
        self.follow_asn(cfg, speaker, snapshot, settings.asn).await;
        self.follow_cluster_id(speaker, settings.cluster_id).await;
        let this = ThisNode {
            name: &cfg.node_name,
            ip: cfg.node_ip,
            asn: self.asn,
            cluster_id: self.cluster_id,
        };
        let desired = bgp_peers::desired_peers(
            this,
            &snapshot.nodes,
            &snapshot.bgp_peers,
            &snapshot.bgp_configurations,
        );
        let mut warnings = desired.warnings;
        let mut want = BTreeMap::new();
        let mut unreadable = false;
        // Each Secret key is read at most once here, however many peers name it.
        let mut read_now: BTreeMap<(String, String), Result<(), String>> = BTreeMap::new();
        for (addr, peer) in desired.peers {
            let password = match (&peer.password, &peer.bgp_peer) {
                (Some(key), Some(name)) => {
                    let id = (key.name.clone(), key.key.clone());
                    let cached = self.passwords.contains_key(&id);
                    if !read_now.contains_key(&id) && (passwords == Passwords::ReadAgain || !cached)
                    {
                        let read = read_password(&cfg.secrets, key).await;
                        let outcome = read.map(|p| {
                            self.passwords.insert(id.clone(), p);
                        });
                        read_now.insert(id.clone(), outcome);
                    }
                    if let Some(Err(reason)) = read_now.get(&id) {
                        unreadable = true;
                        warnings.push(Warning {
                            bgp_peer: name.clone(),
                            reason: reason.clone(),
                        });
                    }
                    // After a failed read, a session keeps the password last read: an
                    // apiserver outage must not take it down.
                    match self.passwords.get(&id) {
                        Some(p) => Some(p.clone()),
                        None => continue,
                    }
                }
                _ => None,
            };
            want.insert(addr, session_config(&peer, cfg.node_ip, password));
        }
        // Forget the passwords no BGPPeer names any more.
        let named: BTreeSet<(String, String)> = snapshot
            .bgp_peers
            .values()
            .filter_map(|p| p.spec.password.as_ref())
            .map(|p| (p.secret_key_ref.name.clone(), p.secret_key_ref.key.clone()))
            .collect();
        self.passwords.retain(|id, _| named.contains(id));
        let with_password = want.values().any(|c| c.password.is_some());
        self.read_passwords_at = match (unreadable, with_password) {
            (true, _) => Some(PASSWORD_RETRY),
            (false, true) => Some(PASSWORD_REREAD),
            (false, false) => None,
        }
        .map(|wait| tokio::time::Instant::now() + wait);
        let warnings: BTreeSet<Warning> = warnings.into_iter().collect();
        for w in warnings.difference(&self.warned) {
            tracing::warn!(bgp_peer = %w.bgp_peer, "BGPPeer not configured: {}", w.reason);
        }
        self.warned = warnings;
        self.apply(speaker, want).await;
    }

    /// Moves the speaker to the node's AS (every session starts again: the AS is in the
    /// OPEN) and has our Node say it, for the other nodes to peer with us in it.
    async fn follow_asn(
        &mut self,
        cfg: &MeshConfig,
        speaker: &Speaker,
        snapshot: &Snapshot,
        asn: u32,
    ) {
        if asn != self.asn {
            if self.applied.is_empty() {
                tracing::info!(asn, "BGP AS number set from BGPConfiguration");
            } else {
                tracing::warn!(
                    from = self.asn,
                    to = asn,
                    sessions = self.applied.len(),
                    "BGP AS number changed: restarting every BGP session with the new AS"
                );
            }
            if let Err(e) = speaker.set_asn(asn).await {
                tracing::warn!(asn, error = %e, "could not change the BGP AS number");
                return;
            }
            self.asn = asn;
        }
        let written = snapshot.nodes.get(&cfg.node_name).and_then(|n| node_asn(n));
        let underway = self
            .annotating
            .as_ref()
            .is_some_and(|(a, task)| *a == asn && !task.is_finished());
        if written == Some(asn) || underway {
            return;
        }
        if let Some((_, task)) = self.annotating.take() {
            task.abort();
        }
        let nodes: Api<Node> = Api::all(cfg.secrets.clone().into_client());
        let task = tokio::spawn(annotate_asn(nodes, cfg.node_name.clone(), asn));
        self.annotating = Some((asn, task));
    }

    /// Makes the speaker a route reflector of `cluster_id`, or none; as for the AS, every
    /// session starts again when it changes.
    async fn follow_cluster_id(&mut self, speaker: &Speaker, cluster_id: Option<Ipv4Addr>) {
        if cluster_id == self.cluster_id {
            return;
        }
        match speaker.set_cluster_id(cluster_id).await {
            Ok(()) => {
                match cluster_id {
                    Some(id) => {
                        tracing::info!(cluster_id = %id, sessions = self.applied.len(), "this node is a route reflector")
                    }
                    None => tracing::info!(
                        sessions = self.applied.len(),
                        "this node is no longer a route reflector"
                    ),
                }
                self.cluster_id = cluster_id;
            }
            Err(e) => tracing::warn!(error = %e, "could not change the route reflector cluster id"),
        }
    }

    /// Removes the sessions that are gone or changed, then adds the new and changed ones;
    /// the others are not touched.
    async fn apply(&mut self, speaker: &Speaker, want: BTreeMap<Ipv4Addr, PeerConfig>) {
        for (addr, have) in self.applied.clone() {
            if want.get(&addr) == Some(&have) {
                continue;
            }
            match speaker.remove_peer(IpAddr::V4(addr)).await {
                Ok(()) => {
                    tracing::info!(peer = %addr, peer_type = %have.peer_type, "BGP peer removed");
                    self.applied.remove(&addr);
                }
                Err(e) => tracing::warn!(peer = %addr, error = %e, "could not remove a BGP peer"),
            }
        }
        for (addr, p) in want {
            if self.applied.contains_key(&addr) {
                continue;
            }
            match speaker.add_peer(p.clone()).await {
                Ok(()) => {
                    tracing::info!(peer = %addr, asn = p.asn, port = p.port, passive = p.passive, peer_type = %p.peer_type, "BGP peer added");
                    self.applied.insert(addr, p);
                }
                Err(e) => tracing::warn!(peer = %addr, error = %e, "could not add a BGP peer"),
            }
        }
    }
}

/// The session settings of a desired peer. Every session starts from the mesh's settings
/// ([`MeshPeer::peer_config`]); a BGPPeer changes only what it sets.
fn session_config(peer: &DesiredPeer, local: Ipv4Addr, password: Option<Password>) -> PeerConfig {
    let mut c = MeshPeer {
        address: peer.address,
        asn: peer.asn,
        passive: peer.passive,
    }
    .peer_config(local);
    c.port = peer.port;
    c.peer_type = peer.peer_type.as_str().to_owned();
    c.password = password;
    c.route_reflector_client = peer.route_reflector_client;
    if let Some(t) = peer.restart_time {
        c.restart_time = t;
    }
    c.max_prefixes = peer.max_prefixes;
    c.keep_original_next_hop = peer.keep_original_next_hop;
    c
}

/// Writes this node's AS into its Node annotation `tortie.dev/as-number`, waiting out an
/// apiserver outage.
async fn annotate_asn(nodes: Api<Node>, name: String, asn: u32) {
    // Each attempt owns what it sends: a future that borrowed from the closure would not
    // be `Send` for the spawned task.
    let attempt = move || {
        let (nodes, name) = (nodes.clone(), name.clone());
        async move {
            let patch = kube::api::Patch::Merge(serde_json::json!({
                "metadata": { "annotations": { crate::datastore::ANNOTATION_AS: asn.to_string() } }
            }));
            nodes
                .patch(&name, &kube::api::PatchParams::default(), &patch)
                .await
        }
    };
    match crate::run::retry::until_done("writing this node's AS number", attempt).await {
        Ok(_) => tracing::info!(
            asn,
            "node annotation {} set",
            crate::datastore::ANNOTATION_AS
        ),
        Err(e) => {
            tracing::warn!(asn, error = %e, "could not write this node's AS number: the other nodes peer with the one they see")
        }
    }
}

/// Reads a BGPPeer's TCP MD5 password from its Secret. The error names the Secret and the
/// key, never the value.
async fn read_password(secrets: &Api<Secret>, key: &SecretKeyRef) -> Result<Password, String> {
    let namespace = secrets.namespace().unwrap_or_default();
    let bad = |why: String| {
        format!(
            "password: Secret {namespace}/{} key {:?}: {why}",
            key.name, key.key
        )
    };
    let secret = secrets
        .get(&key.name)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key.key))
        .ok_or_else(|| bad("no such key".into()))?;
    let text = String::from_utf8(value.0.clone()).map_err(|_| bad("not UTF-8 text".into()))?;
    if text.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(Password::new(text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::datastore::{ANNOTATION_AS, ANNOTATION_IPV4};
    use kube::api::ObjectMeta;

    fn node(name: &str, ann: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                annotations: Some(
                    ann.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn one_peer_per_other_annotated_node_higher_address_passive() {
        let nodes = vec![
            node(
                "n1",
                &[(ANNOTATION_IPV4, "10.0.0.2"), (ANNOTATION_AS, "64512")],
            ),
            node("n0", &[(ANNOTATION_IPV4, "10.0.0.1/24")]),
            node(
                "n3",
                &[(ANNOTATION_IPV4, "10.0.0.3"), (ANNOTATION_AS, "65001")],
            ),
            node("n4", &[]),
            node("n5", &[(ANNOTATION_IPV4, "not-an-address")]),
            node("dup", &[(ANNOTATION_IPV4, "10.0.0.2")]),
        ];
        let peers = mesh_peers("n1", ip("10.0.0.2"), 64512, &nodes);
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert_eq!(
            peers[&ip("10.0.0.1")],
            MeshPeer {
                address: ip("10.0.0.1"),
                asn: 64512,
                passive: true
            }
        );
        assert_eq!(
            peers[&ip("10.0.0.3")],
            MeshPeer {
                address: ip("10.0.0.3"),
                asn: 65001,
                passive: false
            }
        );
        let c = peers[&ip("10.0.0.1")].peer_config(ip("10.0.0.2"));
        assert_eq!(c.peer_type, PEER_TYPE);
        assert_eq!(c.local_address, Some(IpAddr::V4(ip("10.0.0.2"))));
    }

    #[test]
    fn a_resync_writes_the_table_and_takes_back_only_learned_routes_it_lacks() {
        let kept: IpNet = "10.244.1.0/26".parse().unwrap();
        let gone: IpNet = "10.244.2.0/26".parse().unwrap();
        let own: IpNet = "10.244.0.0/26".parse().unwrap();
        let nh: IpAddr = "10.0.0.3".parse().unwrap();
        let owned: BTreeSet<IpNet> = [own].into();
        // `own` was learned before it became ours: its blackhole is not ours to remove.
        let installed: BTreeSet<IpNet> = [kept, gone, own].into();
        let table = vec![RouteChange::Add {
            prefix: kept,
            next_hop: nh,
            peer: nh,
        }];
        let (upsert, remove) = resync_routes(&table, Some("eth0"), &owned, &installed);
        assert_eq!(upsert, vec![Route::via_onlink(kept, nh, "eth0")]);
        assert_eq!(remove, vec![gone]);
    }

    #[test]
    fn learned_routes_go_onlink_via_the_uplink_and_never_over_our_blocks() {
        let p: IpNet = "10.244.1.0/26".parse().unwrap();
        let own: IpNet = "10.244.0.0/26".parse().unwrap();
        let nh: IpAddr = "10.0.0.3".parse().unwrap();
        let owned: BTreeSet<IpNet> = [own].into();
        let changes = vec![
            RouteChange::Add {
                prefix: p,
                next_hop: nh,
                peer: nh,
            },
            RouteChange::Add {
                prefix: own,
                next_hop: nh,
                peer: nh,
            },
            RouteChange::Remove { prefix: own },
        ];
        let (upsert, remove) = fold_changes(&changes, Some("eth0"), &owned);
        assert_eq!(upsert, vec![Route::via_onlink(p, nh, "eth0")]);
        assert!(remove.is_empty());
        let (upsert, remove) = fold_changes(
            &[changes[0].clone(), RouteChange::Remove { prefix: p }],
            None,
            &owned,
        );
        assert!(upsert.is_empty());
        assert_eq!(remove, vec![p]);
    }
}
