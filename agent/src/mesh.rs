//! The node-to-node BGP mesh of `tortie-node run`.
//!
//! One [`Speaker`] per agent: router id = the node's IPv4 address, AS = the config's `AS`,
//! listening on the node address port 179. One iBGP peer per other Node that carries the
//! `tortie.dev/ipv4-address` annotation; of each pair the side with the higher address is
//! passive (DESIGN.md), so the two never race two connections against each other.
//!
//! Routes flow: IPAM's affine blocks → originate; peers → Loc-RIB → `<block> via <node IP>
//! dev <uplink> onlink` (protocol 116) through the route reconciler, as Calico writes them.
//! Peers follow the Nodes and the import filter follows the IP pools, both as the cluster
//! cache (agent/src/cache) sees them: a new node is peered as soon as its Node is watched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;
use tortie_bgp::{PeerConfig, RibEvent, RouteChange, Speaker, SpeakerConfig, Subscription};

use crate::cache::{Kind, Snapshot};
use crate::datastore::{ANNOTATION_AS, ANNOTATION_IPV4};
use crate::netlink::Route;
use crate::routes::RoutesHandle;

/// Calico's name for these peers in `node status`.
pub const PEER_TYPE: &str = "node-to-node mesh";

#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub asn: u32,
    /// The interface the node address is on: learned routes go out of it `onlink`.
    /// `None` lets the kernel resolve the next hop.
    pub uplink: Option<String>,
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
        let Some(ann) = n.metadata.annotations.as_ref() else {
            continue;
        };
        // Calico writes the address with its prefix length (10.0.0.2/24); accept both.
        let Some(address) = ann
            .get(ANNOTATION_IPV4)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.trim().parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if address == own_ip || address.is_unspecified() {
            continue;
        }
        let asn = ann
            .get(ANNOTATION_AS)
            .and_then(|a| a.trim().parse::<u32>().ok())
            .filter(|a| *a != 0)
            .unwrap_or(own_asn);
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
pub async fn start(
    cfg: MeshConfig,
    cluster: watch::Receiver<Snapshot>,
    affine: watch::Receiver<Vec<IpNet>>,
    routes: RoutesHandle,
) -> Result<(Speaker, tokio::task::JoinHandle<()>), tortie_bgp::Error> {
    let mut sc = SpeakerConfig::new(cfg.node_ip, cfg.asn);
    sc.listen = Some(SocketAddr::new(
        IpAddr::V4(cfg.node_ip),
        tortie_bgp::BGP_PORT,
    ));
    sc.local_ipv4 = Some(cfg.node_ip);
    // Nothing is accepted until the pools are known: a peer must not steer arbitrary
    // prefixes (a default route) into this node's table.
    sc.import_allow = Some(Vec::new());
    let speaker = Speaker::start(sc).await?;
    // Subscribe before any peer exists, so that no change is missed.
    let events = speaker.subscribe().await?;
    tracing::info!(router_id = %cfg.node_ip, asn = cfg.asn, uplink = ?cfg.uplink, "BGP mesh speaker started");
    let task = tokio::spawn(run(cfg, speaker.clone(), events, cluster, affine, routes));
    Ok((speaker, task))
}

async fn run(
    cfg: MeshConfig,
    speaker: Speaker,
    mut events: Subscription,
    mut cluster: watch::Receiver<Snapshot>,
    mut affine: watch::Receiver<Vec<IpNet>>,
    routes: RoutesHandle,
) {
    let mut originated: BTreeSet<IpNet> = BTreeSet::new();
    let mut peers: BTreeMap<Ipv4Addr, MeshPeer> = BTreeMap::new();
    let mut allow: Option<Vec<IpNet>> = None;
    // The learned routes handed to the reconciler, so that a resync can take back the ones
    // the table no longer has.
    let mut installed: BTreeSet<IpNet> = BTreeSet::new();
    let mut affine_open = true;
    let mut cluster_open = true;
    // The first snapshot counts as a change, so peers and filter are set from it.
    cluster.mark_changed();
    // Originate what IPAM already holds before the first peer is added.
    let blocks = affine.borrow_and_update().clone();
    set_originated(&speaker, &mut originated, blocks).await;
    loop {
        tokio::select! {
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
                        tracing::info!("BGP mesh initial sync done");
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
            changed = affine.changed(), if affine_open => {
                if changed.is_err() {
                    // The IPAM task is gone; keep advertising what we have.
                    affine_open = false;
                    continue;
                }
                let blocks = affine.borrow_and_update().clone();
                set_originated(&speaker, &mut originated, blocks).await;
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
                if snapshot.is_synced(Kind::Node) {
                    refresh_peers(&cfg, &speaker, &snapshot, &mut peers).await;
                }
            }
        }
    }
}

async fn set_originated(speaker: &Speaker, originated: &mut BTreeSet<IpNet>, blocks: Vec<IpNet>) {
    let want: BTreeSet<IpNet> = blocks.into_iter().map(|b| b.trunc()).collect();
    for b in want.difference(originated).copied().collect::<Vec<_>>() {
        match speaker.originate(b).await {
            Ok(()) => {
                tracing::info!(block = %b, "advertising affine block");
                originated.insert(b);
            }
            Err(e) => tracing::warn!(block = %b, error = %e, "could not advertise a block"),
        }
    }
    for b in originated.difference(&want).copied().collect::<Vec<_>>() {
        match speaker.withdraw(b).await {
            Ok(()) => {
                tracing::info!(block = %b, "withdrawing block");
                originated.remove(&b);
            }
            Err(e) => tracing::warn!(block = %b, error = %e, "could not withdraw a block"),
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

async fn refresh_peers(
    cfg: &MeshConfig,
    speaker: &Speaker,
    snapshot: &Snapshot,
    peers: &mut BTreeMap<Ipv4Addr, MeshPeer>,
) {
    let want = mesh_peers(
        &cfg.node_name,
        cfg.node_ip,
        cfg.asn,
        snapshot.nodes.values().map(|n| n.as_ref()),
    );
    for (addr, have) in peers.clone() {
        if want.get(&addr) == Some(&have) {
            continue;
        }
        match speaker.remove_peer(IpAddr::V4(addr)).await {
            Ok(()) => {
                tracing::info!(peer = %addr, "mesh peer removed");
                peers.remove(&addr);
            }
            Err(e) => tracing::warn!(peer = %addr, error = %e, "could not remove a mesh peer"),
        }
    }
    for (addr, p) in want {
        if peers.contains_key(&addr) {
            continue;
        }
        match speaker.add_peer(p.peer_config(cfg.node_ip)).await {
            Ok(()) => {
                tracing::info!(peer = %addr, asn = p.asn, passive = p.passive, "mesh peer added");
                peers.insert(addr, p);
            }
            Err(e) => tracing::warn!(peer = %addr, error = %e, "could not add a mesh peer"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
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
