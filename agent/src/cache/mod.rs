//! The cluster cache: the agent's one model of the cluster, fed by watches.
//!
//! One task owns the model. A watcher per kind (Pods, Namespaces, NetworkPolicies, IPPools,
//! Nodes, BGPPeers, BGPConfigurations) lists once and then watches from the list's resourceVersion; kube-runtime resumes
//! a broken watch from the last version it saw and lists again on 410 Gone, with back-off,
//! so an apiserver that goes away and comes back is caught up without a restart. Every
//! watcher feeds the owner through one bounded queue; the owner applies the events and
//! publishes a [`Snapshot`] on a `watch` channel. Consumers (policy, NAT, the mesh) wait on
//! that channel: they see the newest snapshot, never a half-applied one, and a slow consumer
//! only skips intermediate states.
//!
//! A snapshot is cheap to clone: each kind is an `Arc`'d map, and the owner copies a map
//! only when it changes a kind that a consumer still holds.

pub mod pod;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::datastore::{BGPConfiguration, BGPPeer, IPPool};
use crate::metrics::{KindLabels, Metrics};

pub use pod::{NamedPort, PodInfo, Protocol};

pub type Labels = BTreeMap<String, String>;

/// A namespaced object's `(namespace, name)`.
pub type ObjectKey = (String, String);

/// The kinds the cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Namespace,
    NetworkPolicy,
    IPPool,
    Node,
    BGPPeer,
    BGPConfiguration,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Pod,
        Kind::Namespace,
        Kind::NetworkPolicy,
        Kind::IPPool,
        Kind::Node,
        Kind::BGPPeer,
        Kind::BGPConfiguration,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The cluster as the agent last saw it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every pod of the cluster (selectors pick pods on any node), by namespace and name.
    pub pods: Arc<BTreeMap<ObjectKey, Arc<PodInfo>>>,
    /// Namespace labels, by name.
    pub namespaces: Arc<BTreeMap<String, Labels>>,
    pub policies: Arc<BTreeMap<ObjectKey, Arc<NetworkPolicy>>>,
    pub pools: Arc<BTreeMap<String, Arc<IPPool>>>,
    pub nodes: Arc<BTreeMap<String, Arc<Node>>>,
    pub bgp_peers: Arc<BTreeMap<String, Arc<BGPPeer>>>,
    /// BGPConfigurations by name; only `default` has an effect.
    pub bgp_configurations: Arc<BTreeMap<String, Arc<BGPConfiguration>>>,
    /// Kinds whose first complete list has arrived. Until a kind is here, its map is empty
    /// because nothing is known, not because nothing exists.
    pub synced: BTreeSet<Kind>,
}

impl Snapshot {
    pub fn is_synced(&self, kind: Kind) -> bool {
        self.synced.contains(&kind)
    }

    pub fn all_synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.synced.contains(k))
    }
}

/// A watcher's event, with pods already reduced to what the agent uses. Boxed: the objects
/// differ in size by kilobytes, and the queue holds a thousand of them.
#[derive(Debug)]
enum Update {
    Pod(Box<Event<PodInfo>>),
    Namespace(Box<Event<Namespace>>),
    NetworkPolicy(Box<Event<NetworkPolicy>>),
    IPPool(Box<Event<IPPool>>),
    Node(Box<Event<Node>>),
    BGPPeer(Box<Event<BGPPeer>>),
    BGPConfiguration(Box<Event<BGPConfiguration>>),
}

/// How many watch events may wait for the owner before the watchers pause.
const QUEUE: usize = 1024;

/// Starts the watchers and the owner task; returns the receiver of snapshots. The tasks run
/// until every receiver is dropped.
pub fn spawn(client: kube::Client, metrics: &Metrics) -> watch::Receiver<Snapshot> {
    let (tx, rx) = mpsc::channel(QUEUE);
    forward(
        Kind::Pod,
        watcher(Api::<Pod>::all(client.clone())).map(|r| r.map(|e| map_event(e, PodInfo::from))),
        tx.clone(),
        |e| Update::Pod(Box::new(e)),
        metrics,
    );
    forward(
        Kind::Namespace,
        watcher(Api::<Namespace>::all(client.clone())),
        tx.clone(),
        |e| Update::Namespace(Box::new(e)),
        metrics,
    );
    forward(
        Kind::NetworkPolicy,
        watcher(Api::<NetworkPolicy>::all(client.clone())),
        tx.clone(),
        |e| Update::NetworkPolicy(Box::new(e)),
        metrics,
    );
    forward(
        Kind::IPPool,
        watcher(Api::<IPPool>::all(client.clone())),
        tx.clone(),
        |e| Update::IPPool(Box::new(e)),
        metrics,
    );
    forward(
        Kind::Node,
        watcher(Api::<Node>::all(client.clone())),
        tx.clone(),
        |e| Update::Node(Box::new(e)),
        metrics,
    );
    forward(
        Kind::BGPPeer,
        watcher(Api::<BGPPeer>::all(client.clone())),
        tx.clone(),
        |e| Update::BGPPeer(Box::new(e)),
        metrics,
    );
    forward(
        Kind::BGPConfiguration,
        watcher(Api::<BGPConfiguration>::all(client)),
        tx,
        |e| Update::BGPConfiguration(Box::new(e)),
        metrics,
    );
    let (out, snapshots) = watch::channel(Snapshot::default());
    tokio::spawn(own(rx, out));
    snapshots
}

fn watcher<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

fn map_event<A, B>(event: Event<A>, f: impl Fn(A) -> B) -> Event<B> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// Runs one watcher into the owner's queue until the owner is gone. Errors are logged; the
/// watcher itself retries with back-off. Each break (the first error after the watch was
/// healthy: an outage, an expired resourceVersion) is counted once in
/// `tortie_watch_restarts_total`, however many retries it takes.
fn forward<K, S>(
    kind: Kind,
    stream: S,
    tx: mpsc::Sender<Update>,
    wrap: fn(Event<K>) -> Update,
    metrics: &Metrics,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    let restarts = metrics
        .watch_restarts
        .get_or_create(&KindLabels {
            kind: kind.to_string(),
        })
        .clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if failing {
                        tracing::info!(%kind, "watch is back");
                        failing = false;
                    }
                    if tx.send(wrap(event)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Logged once per outage, not once per retry.
                    if !failing {
                        tracing::warn!(%kind, error = %e, "watch failed; retrying with back-off");
                        restarts.inc();
                        failing = true;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
}

/// The owner: applies every update to its model, then publishes the model once the queue
/// is drained, so a burst of events makes one snapshot.
async fn own(mut rx: mpsc::Receiver<Update>, out: watch::Sender<Snapshot>) {
    let mut model = Model::default();
    let (heartbeat, mut tick) = crate::run::health::Heartbeat::with_idle_tick("cluster cache");
    loop {
        let update = tokio::select! {
            _ = tick.tick() => {
                heartbeat.beat();
                continue;
            }
            update = rx.recv() => match update {
                Some(update) => update,
                None => return,
            },
        };
        model.apply(update);
        while let Ok(update) = rx.try_recv() {
            model.apply(update);
        }
        if model.changed {
            model.changed = false;
            if out.send(model.snapshot.clone()).is_err() {
                return;
            }
        }
    }
}

/// The owner's state: the published snapshot and, per kind, the objects of a list in
/// progress (a re-list replaces the kind's map only once it is complete).
#[derive(Default)]
struct Model {
    snapshot: Snapshot,
    listing: Listing,
    changed: bool,
}

#[derive(Default)]
struct Listing {
    pods: Option<BTreeMap<ObjectKey, Arc<PodInfo>>>,
    namespaces: Option<BTreeMap<String, Labels>>,
    policies: Option<BTreeMap<ObjectKey, Arc<NetworkPolicy>>>,
    pools: Option<BTreeMap<String, Arc<IPPool>>>,
    nodes: Option<BTreeMap<String, Arc<Node>>>,
    bgp_peers: Option<BTreeMap<String, Arc<BGPPeer>>>,
    bgp_configurations: Option<BTreeMap<String, Arc<BGPConfiguration>>>,
}

impl Model {
    fn apply(&mut self, update: Update) {
        let s = &mut self.snapshot;
        let l = &mut self.listing;
        let done = match update {
            Update::Pod(e) => step(*e, &mut s.pods, &mut l.pods, |p| (p.key(), Arc::new(p))),
            Update::Namespace(e) => step(*e, &mut s.namespaces, &mut l.namespaces, |n| {
                (n.name_any(), n.labels().clone())
            }),
            Update::NetworkPolicy(e) => step(*e, &mut s.policies, &mut l.policies, |p| {
                (
                    (p.namespace().unwrap_or_default(), p.name_any()),
                    Arc::new(p),
                )
            }),
            Update::IPPool(e) => step(*e, &mut s.pools, &mut l.pools, by_name),
            Update::Node(e) => step(*e, &mut s.nodes, &mut l.nodes, by_name),
            Update::BGPPeer(e) => step(*e, &mut s.bgp_peers, &mut l.bgp_peers, by_name),
            Update::BGPConfiguration(e) => step(
                *e,
                &mut s.bgp_configurations,
                &mut l.bgp_configurations,
                by_name,
            ),
        };
        match done {
            Step::Changed => self.changed = true,
            Step::Listed(kind) => {
                self.changed = true;
                if self.snapshot.synced.insert(kind) {
                    tracing::info!(%kind, "cache synced");
                }
            }
            Step::Unchanged => {}
        }
    }
}

/// The entry of a cluster-scoped object: its name and the object.
fn by_name<O: ResourceExt>(o: O) -> (String, Arc<O>) {
    (o.name_any(), Arc::new(o))
}

enum Step {
    Unchanged,
    Changed,
    Listed(Kind),
}

/// Applies one event of a kind to its published map (`map`) or its list in progress
/// (`listing`). `entry` turns an object into its key and stored value.
fn step<O: KindOf, K: Ord + Clone, V: Clone>(
    event: Event<O>,
    map: &mut Arc<BTreeMap<K, V>>,
    listing: &mut Option<BTreeMap<K, V>>,
    entry: impl Fn(O) -> (K, V),
) -> Step {
    match event {
        Event::Init => {
            *listing = Some(BTreeMap::new());
            Step::Unchanged
        }
        Event::InitApply(o) => {
            let (k, v) = entry(o);
            listing.get_or_insert_with(BTreeMap::new).insert(k, v);
            Step::Unchanged
        }
        Event::InitDone => {
            *map = Arc::new(listing.take().unwrap_or_default());
            Step::Listed(O::KIND)
        }
        Event::Apply(o) => {
            let (k, v) = entry(o);
            Arc::make_mut(map).insert(k, v);
            Step::Changed
        }
        Event::Delete(o) => {
            let (k, _) = entry(o);
            Arc::make_mut(map).remove(&k);
            Step::Changed
        }
    }
}

/// Which [`Kind`] a watched object type is.
trait KindOf {
    const KIND: Kind;
}
impl KindOf for PodInfo {
    const KIND: Kind = Kind::Pod;
}
impl KindOf for Namespace {
    const KIND: Kind = Kind::Namespace;
}
impl KindOf for NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
}
impl KindOf for IPPool {
    const KIND: Kind = Kind::IPPool;
}
impl KindOf for Node {
    const KIND: Kind = Kind::Node;
}
impl KindOf for BGPPeer {
    const KIND: Kind = Kind::BGPPeer;
}
impl KindOf for BGPConfiguration {
    const KIND: Kind = Kind::BGPConfiguration;
}

/// Waits until `kinds` have all been listed once; returns that snapshot.
pub async fn wait_synced(
    rx: &mut watch::Receiver<Snapshot>,
    kinds: &[Kind],
) -> Result<Snapshot, watch::error::RecvError> {
    let s = rx
        .wait_for(|s| kinds.iter().all(|k| s.is_synced(*k)))
        .await?;
    Ok(s.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_relist_replaces_the_kind_only_once_complete() {
        let mut m = Model::default();
        m.apply(Update::Namespace(Box::new(Event::Init)));
        m.apply(Update::Namespace(Box::new(Event::InitApply(ns("a", &[])))));
        assert!(
            m.snapshot.namespaces.is_empty(),
            "published before InitDone"
        );
        assert!(!m.snapshot.is_synced(Kind::Namespace));
        m.apply(Update::Namespace(Box::new(Event::InitDone)));
        assert_eq!(m.snapshot.namespaces.keys().collect::<Vec<_>>(), ["a"]);
        assert!(m.snapshot.is_synced(Kind::Namespace));

        // A watch event changes one entry; a consumer's older snapshot keeps its own copy.
        let held = m.snapshot.clone();
        m.apply(Update::Namespace(Box::new(Event::Apply(ns(
            "b",
            &[("team", "x")],
        )))));
        assert_eq!(m.snapshot.namespaces["b"]["team"], "x");
        assert!(!held.namespaces.contains_key("b"));

        // A re-list (after 410 Gone) that no longer has `a` drops it, and only at InitDone.
        m.apply(Update::Namespace(Box::new(Event::Init)));
        m.apply(Update::Namespace(Box::new(Event::InitApply(ns("b", &[])))));
        assert!(m.snapshot.namespaces.contains_key("a"));
        m.apply(Update::Namespace(Box::new(Event::InitDone)));
        assert_eq!(m.snapshot.namespaces.keys().collect::<Vec<_>>(), ["b"]);
        assert!(m.snapshot.namespaces["b"].is_empty(), "labels replaced");

        m.apply(Update::Namespace(Box::new(Event::Delete(ns("b", &[])))));
        assert!(m.snapshot.namespaces.is_empty());
        assert!(
            !m.snapshot.all_synced(),
            "the other kinds were never listed"
        );
    }
}
