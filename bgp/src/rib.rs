//! The routing information bases: what each peer sent us, which path wins for each prefix,
//! and what each peer still has to be told. Pure data structures, no I/O.
//!
//! - **Adj-RIB-In** lives inside the Loc-RIB table: each prefix keeps the accepted path of
//!   every peer that announced it, so the table holds one entry per prefix, not one per
//!   peer and prefix. Prefixes refused by import policy are only counted.
//! - **Loc-RIB**: the best of those paths (RFC 4271 §9.1.2, as it applies to iBGP, with
//!   RFC 4456 §9's ORIGINATOR_ID and CLUSTER_LIST tie-breaks). A locally originated path
//!   always wins.
//! - **Adj-RIB-Out**: per peer, a queue of prefixes not yet written to the socket. A newer
//!   announce or withdraw of a prefix replaces an older unsent one, so a flapping prefix
//!   costs one entry, not one per flap.
//!
//! Memory: path attributes are interned ([`Arc<Attrs>`]), and so are the path sets of
//! prefixes, so the 500k prefixes of one UPDATE stream share a handful of each. IPv4 and
//! IPv6 live in separate tables keyed by `Ipv4Net` / `Ipv6Net`; an IPv4 entry is the key
//! and one pointer, 16 bytes.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::wire::{Aggregator, AsPath, Family, NextHop, Origin, PathAttributes, RawAttribute};

/// A peer's slot in the RIB. [`LOCAL`] is the speaker itself.
pub type PeerId = u16;
/// The peer id of locally originated routes.
pub const LOCAL: PeerId = 0;

/// RFC 4271 §5.1.5: the LOCAL_PREF we assume when a path carries none.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The attributes of a path, shared by every prefix announced with them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attrs {
    pub origin: Origin,
    pub as_path: AsPath,
    /// `None` on locally originated paths: "this speaker", filled in per session.
    pub next_hop: Option<NextHop>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Unrecognised optional transitive attributes, passed on with the Partial bit set.
    pub unknown: Vec<RawAttribute>,
}

impl Attrs {
    /// The attributes of a route this speaker originates (RFC 4271 §5.1: ORIGIN IGP,
    /// empty AS_PATH for iBGP).
    pub fn local() -> Self {
        Attrs {
            origin: Origin::Igp,
            as_path: AsPath::default(),
            next_hop: None,
            med: None,
            local_pref: Some(DEFAULT_LOCAL_PREF),
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            unknown: Vec::new(),
        }
    }

    /// Takes what a path keeps from a decoded UPDATE; `next_hop` is the one that goes with
    /// the prefixes (NEXT_HOP for classic NLRI, MP_REACH's for MP NLRI).
    pub fn from_wire(attrs: &PathAttributes, next_hop: NextHop) -> Self {
        Attrs {
            origin: attrs.origin.unwrap_or(Origin::Incomplete),
            as_path: attrs.as_path.clone().unwrap_or_default(),
            next_hop: Some(next_hop),
            med: attrs.med,
            local_pref: attrs.local_pref,
            atomic_aggregate: attrs.atomic_aggregate,
            aggregator: attrs.aggregator,
            communities: attrs.communities.clone(),
            originator_id: attrs.originator_id,
            cluster_list: attrs.cluster_list.clone(),
            unknown: attrs.unknown.clone(),
        }
    }

    /// The attributes to write, without the next hop (the session places it in NEXT_HOP or
    /// MP_REACH_NLRI depending on the family).
    pub fn to_wire(&self) -> PathAttributes {
        PathAttributes {
            origin: Some(self.origin),
            as_path: Some(self.as_path.clone()),
            next_hop: None,
            med: self.med,
            local_pref: self.local_pref,
            atomic_aggregate: self.atomic_aggregate,
            aggregator: self.aggregator,
            communities: self.communities.clone(),
            originator_id: self.originator_id,
            cluster_list: self.cluster_list.clone(),
            mp_reach: None,
            mp_unreach: None,
            unknown: self.unknown.clone(),
        }
    }

    fn local_pref_or_default(&self) -> u32 {
        self.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }
}

/// The gateway a route points to, as the kernel wants it. An IPv4-mapped IPv6 next hop
/// (what BIRD and FRR send for IPv6 prefixes over an IPv4 session) is reported as IPv4.
pub fn kernel_next_hop(nh: &NextHop) -> IpAddr {
    match *nh {
        NextHop::V4(a) => IpAddr::V4(a),
        NextHop::V6 { global, link_local } => {
            if let Some(v4) = global.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if global.is_unspecified() {
                link_local.map_or(IpAddr::V6(global), IpAddr::V6)
            } else {
                IpAddr::V6(global)
            }
        }
    }
}

/// One change of the Loc-RIB, as the agent's route reconciler sees it. Only paths learned
/// from peers appear; the agent knows what it originates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Install (or replace) the route for `prefix`.
    Add {
        prefix: IpNet,
        next_hop: IpAddr,
        peer: IpAddr,
    },
    /// No peer offers `prefix` any more.
    Remove { prefix: IpNet },
}

/// One path in the table.
#[derive(Debug, Clone)]
struct Path {
    attrs: Arc<Attrs>,
    peer: PeerId,
    /// Kept through a peer's graceful restart (RFC 4724 §4.2), waiting for End-of-RIB.
    stale: bool,
}

// Attributes are interned, so the same attributes are the same allocation: comparing and
// hashing the pointer is comparing and hashing the value, at the cost of one word.
impl PartialEq for Path {
    fn eq(&self, other: &Path) -> bool {
        Arc::ptr_eq(&self.attrs, &other.attrs)
            && self.peer == other.peer
            && self.stale == other.stale
    }
}

impl Eq for Path {}

impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.attrs).hash(state);
        self.peer.hash(state);
        self.stale.hash(state);
    }
}

/// The paths of one prefix (nearly always exactly one), interned like attributes: every
/// prefix a peer announced with the same attributes points at the same set. One thin
/// pointer per table entry; an inline path made an IPv4 entry 24 bytes instead of 16.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Paths(Arc<Box<[Path]>>);

impl Paths {
    fn as_slice(&self) -> &[Path] {
        &self.0
    }
}

impl Borrow<[Path]> for Paths {
    fn borrow(&self) -> &[Path] {
        &self.0
    }
}

impl Interned for Paths {
    fn users(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

/// A prefix type the RIB can key a table by.
pub trait Prefix: Copy + Eq + Hash + Into<IpNet> + std::fmt::Debug {
    const FAMILY: Family;
}

impl Prefix for Ipv4Net {
    const FAMILY: Family = Family::IPV4_UNICAST;
}

impl Prefix for Ipv6Net {
    const FAMILY: Family = Family::IPV6_UNICAST;
}

/// What the RIB needs to know about a peer from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    pub address: IpAddr,
    pub asn: u32,
    /// RFC 4456: we reflect routes to and from this peer.
    pub route_reflector_client: bool,
    /// Prefixes accepted from this peer in addition to the speaker-wide pools.
    pub import_allow: Vec<IpNet>,
    /// If set, only prefixes inside these are advertised to this peer.
    pub export_allow: Option<Vec<IpNet>>,
    /// Toward an eBGP peer, learned routes keep their next hop (no next-hop-self).
    pub keep_original_next_hop: bool,
}

/// What the RIB learns when a session comes up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub router_id: Ipv4Addr,
    pub families: Vec<Family>,
    /// Our address on the session: NEXT_HOP for what we originate.
    pub local_address: IpAddr,
    /// Our IPv6 next hop when the session runs over IPv4 (otherwise an IPv4-mapped
    /// address is sent, as BIRD and FRR do).
    pub local_ipv6: Option<Ipv6Addr>,
    /// Our IPv4 next hop when the session runs over IPv6.
    pub local_ipv4: Option<Ipv4Addr>,
    /// The peer's graceful restart capability: for each family, whether it kept its
    /// forwarding state. `None` when graceful restart was not negotiated.
    pub graceful_restart: Option<Vec<(Family, bool)>>,
    /// The peer set the R bit: it restarted too, and RFC 4724 §4.2 forbids waiting for
    /// its End-of-RIB before we advertise (two restarting speakers would wait forever).
    pub peer_restarting: bool,
}

#[derive(Debug)]
struct PeerSlot {
    policy: PeerPolicy,
    session: Option<SessionInfo>,
    /// The BGP identifier from the last session, kept for tie-breaking stale paths.
    router_id: Option<Ipv4Addr>,
    accepted: usize,
    rejected: HashSet<IpNet>,
    out: AdjRibOut,
    /// The peer has been given its table and now hears every change.
    advertising: bool,
}

/// Speaker-wide RIB settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// RFC 4456 CLUSTER_ID; the router id unless set.
    pub cluster_id: Ipv4Addr,
    /// Prefixes accepted from every peer (the IP pools). `None` accepts everything.
    pub import_allow: Option<Vec<IpNet>>,
    /// We restarted (RFC 4724 §4.1): hold back our advertisements until
    /// [`Rib::initial_sync_done`], so that no peer sees a partial table followed by EoR.
    pub restarting: bool,
}

/// Received and accepted prefix counts of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixCounts {
    pub received: usize,
    pub accepted: usize,
}

/// The announcements and withdrawals of one UPDATE, already split by family.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub withdrawn: Vec<IpNet>,
    /// Each group shares one set of attributes (classic NLRI and MP_REACH differ in their
    /// next hop).
    pub announced: Vec<(Attrs, Vec<IpNet>)>,
}

/// Everything the RIB holds.
#[derive(Debug)]
pub struct Rib {
    cfg: RibConfig,
    v4: HashMap<Ipv4Net, Paths>,
    v6: HashMap<Ipv6Net, Paths>,
    peers: Vec<Option<PeerSlot>>,
    interner: Interner<Arc<Attrs>>,
    path_sets: Interner<Paths>,
    /// The paths of the prefix being changed; kept to reuse its allocation.
    scratch: Vec<Path>,
    sync_done: bool,
}

/// The results of a RIB operation for the agent. The Adj-RIB-Out queues are updated in
/// place; call [`Rib::take_out`] for each peer that [`Rib::peers_with_output`] lists.
pub type Changes = Vec<RouteChange>;

impl Rib {
    pub fn new(cfg: RibConfig) -> Self {
        let sync_done = !cfg.restarting;
        Rib {
            cfg,
            v4: HashMap::new(),
            v6: HashMap::new(),
            peers: vec![None],
            interner: Interner::default(),
            path_sets: Interner::default(),
            scratch: Vec::new(),
            sync_done,
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }

    /// Changes our AS number. Call it with no peers: whether a peer is internal or
    /// external, and so every path learned from it, depends on our AS.
    pub fn set_asn(&mut self, asn: u32) {
        debug_assert!(self.peers.iter().all(Option::is_none), "peers left");
        self.cfg.asn = asn;
    }

    /// Changes our CLUSTER_ID. Call it with no peers: the paths we reflected carry the old
    /// one.
    pub fn set_cluster_id(&mut self, cluster_id: Ipv4Addr) {
        debug_assert!(self.peers.iter().all(Option::is_none), "peers left");
        self.cfg.cluster_id = cluster_id;
    }

    /// Registers a peer. Slots of removed peers are reused.
    pub fn add_peer(&mut self, policy: PeerPolicy) -> PeerId {
        let slot = PeerSlot {
            policy,
            session: None,
            router_id: None,
            accepted: 0,
            rejected: HashSet::new(),
            out: AdjRibOut::default(),
            advertising: false,
        };
        if let Some(free) = self.peers.iter().skip(1).position(Option::is_none) {
            let id = free + 1;
            self.peers[id] = Some(slot);
            // Fits: positions come from the vector, which never outgrows PeerId.
            PeerId::try_from(id).unwrap_or(PeerId::MAX)
        } else {
            self.peers.push(Some(slot));
            PeerId::try_from(self.peers.len() - 1).unwrap_or(PeerId::MAX)
        }
    }

    /// Whether another peer can be added (peer ids are 16 bits).
    pub fn has_room(&self) -> bool {
        self.peers.len() < usize::from(PeerId::MAX)
            || self.peers.iter().skip(1).any(Option::is_none)
    }

    /// Removes a peer and every path it gave us.
    pub fn remove_peer(&mut self, id: PeerId) -> Changes {
        let changes = self.remove_paths(id, |_| true);
        if let Some(slot) = self.peers.get_mut(usize::from(id)) {
            *slot = None;
        }
        changes
    }

    fn slot(&self, id: PeerId) -> Option<&PeerSlot> {
        self.peers.get(usize::from(id)).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, id: PeerId) -> Option<&mut PeerSlot> {
        self.peers.get_mut(usize::from(id)).and_then(Option::as_mut)
    }

    pub fn counts(&self, id: PeerId) -> PrefixCounts {
        self.slot(id)
            .map_or_else(PrefixCounts::default, |s| PrefixCounts {
                received: s.accepted + s.rejected.len(),
                accepted: s.accepted,
            })
    }

    /// Number of prefixes in the Loc-RIB (IPv4, IPv6).
    pub fn len(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// A session with the peer reached Established. Stale paths of families the peer no
    /// longer preserves are swept (RFC 4724 §4.2), and the peer's Adj-RIB-Out is filled
    /// with everything we advertise to it, followed by End-of-RIB.
    pub fn peer_up(&mut self, id: PeerId, info: SessionInfo) -> Changes {
        let kept: Vec<Family> = match &info.graceful_restart {
            Some(fams) => fams
                .iter()
                .filter(|(_, f)| *f)
                .map(|(fam, _)| *fam)
                .collect(),
            None => Vec::new(),
        };
        let Some(slot) = self.slot_mut(id) else {
            return Vec::new();
        };
        slot.router_id = Some(info.router_id);
        slot.out = AdjRibOut::default();
        slot.advertising = false;
        let early = info.peer_restarting;
        slot.session = Some(info);
        let mut changes = Vec::new();
        if !kept.contains(&Family::IPV4_UNICAST) {
            changes.extend(self.sweep_family::<Ipv4Net>(id));
        }
        if !kept.contains(&Family::IPV6_UNICAST) {
            changes.extend(self.sweep_family::<Ipv6Net>(id));
        }
        if self.sync_done || early {
            self.fill_out(id);
        }
        changes
    }

    /// The session left Established. With `graceful`, the peer's paths stay as stale
    /// (RFC 4724 §4.2) until [`Rib::end_of_rib`] or [`Rib::sweep_stale`]; otherwise they go.
    pub fn peer_down(&mut self, id: PeerId, graceful: bool) -> Changes {
        if let Some(slot) = self.slot_mut(id) {
            slot.session = None;
            slot.out = AdjRibOut::default();
            slot.advertising = false;
            slot.rejected.clear();
        }
        if graceful {
            self.mark_stale::<Ipv4Net>(id);
            self.mark_stale::<Ipv6Net>(id);
            Vec::new()
        } else {
            self.remove_paths(id, |_| true)
        }
    }

    /// The peer sent End-of-RIB for `family`: the stale paths it did not refresh go.
    pub fn end_of_rib(&mut self, id: PeerId, family: Family) -> Changes {
        if family == Family::IPV4_UNICAST {
            self.sweep_family::<Ipv4Net>(id)
        } else if family == Family::IPV6_UNICAST {
            self.sweep_family::<Ipv6Net>(id)
        } else {
            Vec::new()
        }
    }

    /// The peer's restart time (or our stale-path time) ran out: all its stale paths go.
    pub fn sweep_stale(&mut self, id: PeerId) -> Changes {
        let mut changes = self.sweep_family::<Ipv4Net>(id);
        changes.extend(self.sweep_family::<Ipv6Net>(id));
        changes
    }

    /// Whether the peer still has stale paths.
    pub fn has_stale(&self, id: PeerId) -> bool {
        let stale = |p: &Paths| p.as_slice().iter().any(|x| x.peer == id && x.stale);
        self.v4.values().any(stale) || self.v6.values().any(stale)
    }

    fn sweep_family<P: Prefix>(&mut self, id: PeerId) -> Changes
    where
        Self: TableOf<P>,
    {
        self.remove_paths_in::<P>(id, &|p: &Path| p.stale)
    }

    fn remove_paths(&mut self, id: PeerId, drop: impl Fn(&Path) -> bool + Copy) -> Changes {
        let mut changes = self.remove_paths_in::<Ipv4Net>(id, &drop);
        changes.extend(self.remove_paths_in::<Ipv6Net>(id, &drop));
        changes
    }

    fn remove_paths_in<P: Prefix>(&mut self, id: PeerId, drop: &dyn Fn(&Path) -> bool) -> Changes
    where
        Self: TableOf<P>,
    {
        let affected: Vec<P> = self
            .table()
            .iter()
            .filter(|(_, paths)| paths.as_slice().iter().any(|p| p.peer == id && drop(p)))
            .map(|(k, _)| *k)
            .collect();
        let mut changes = Vec::new();
        for prefix in affected {
            self.change(
                prefix,
                &mut changes,
                |paths, accepted| remove_matching(paths, accepted, |p| p.peer == id && drop(p)),
                id,
            );
        }
        changes
    }

    /// Applies one UPDATE from a peer: import policy, RFC 4456 loop checks, best path,
    /// Adj-RIB-Out of the other peers.
    pub fn update(&mut self, id: PeerId, routes: Routes) -> Changes {
        let mut changes = Vec::new();
        if self.slot(id).is_none() || id == LOCAL {
            return changes;
        }
        for prefix in routes.withdrawn {
            if let Some(slot) = self.slot_mut(id) {
                slot.rejected.remove(&prefix);
            }
            self.withdraw_path(id, prefix, &mut changes);
        }
        for (attrs, prefixes) in routes.announced {
            let refused = self.refuse_attrs(id, &attrs);
            let attrs = self.import_attrs(id, attrs);
            let attrs = self.intern_attrs(attrs);
            for prefix in prefixes {
                if refused.is_some() || !self.import_allowed(id, &prefix) {
                    if let Some(slot) = self.slot_mut(id) {
                        slot.rejected.insert(prefix);
                    }
                    // An announcement we refuse still replaces the peer's previous one.
                    self.withdraw_path(id, prefix, &mut changes);
                    continue;
                }
                if let Some(slot) = self.slot_mut(id)
                    && !slot.rejected.is_empty()
                {
                    slot.rejected.remove(&prefix);
                }
                let path = Path {
                    attrs: Arc::clone(&attrs),
                    peer: id,
                    stale: false,
                };
                match prefix {
                    IpNet::V4(p) => self.insert_path(p, path, &mut changes),
                    IpNet::V6(p) => self.insert_path(p, path, &mut changes),
                }
            }
        }
        self.collect_unused();
        changes
    }

    /// Why a path must be dropped whatever its prefix (RFC 4456 §8 loop checks, RFC 4271
    /// §9.1.2 AS loop for external peers).
    fn refuse_attrs(&self, id: PeerId, attrs: &Attrs) -> Option<&'static str> {
        if attrs.originator_id == Some(self.cfg.router_id) {
            return Some("ORIGINATOR_ID is our router id");
        }
        if attrs.cluster_list.contains(&self.cfg.cluster_id) {
            return Some("CLUSTER_LIST contains our cluster id");
        }
        let external = self.slot(id).is_some_and(|s| s.policy.asn != self.cfg.asn);
        if external && attrs.as_path.contains(self.cfg.asn) {
            return Some("AS_PATH contains our AS");
        }
        if let Some(nh) = attrs.next_hop.as_ref() {
            let gw = kernel_next_hop(nh);
            if gw.is_unspecified() || gw.is_multicast() {
                return Some("NEXT_HOP is not a usable gateway");
            }
        }
        // RFC 4271 §6.3: a NEXT_HOP that is our own address is semantically wrong; a
        // route through ourselves would loop.
        let ours = self
            .slot(id)
            .and_then(|s| s.session.as_ref())
            .map(|s| s.local_address);
        if let (Some(ours), Some(nh)) = (ours, attrs.next_hop.as_ref())
            && kernel_next_hop(nh) == ours
        {
            return Some("NEXT_HOP is our own address");
        }
        None
    }

    /// RFC 4271 §5.1.5: LOCAL_PREF from an external peer is not ours to trust.
    fn import_attrs(&self, id: PeerId, mut attrs: Attrs) -> Attrs {
        let external = self.slot(id).is_some_and(|s| s.policy.asn != self.cfg.asn);
        if external {
            attrs.local_pref = Some(DEFAULT_LOCAL_PREF);
            attrs.originator_id = None;
            attrs.cluster_list.clear();
        }
        attrs
    }

    fn import_allowed(&self, id: PeerId, prefix: &IpNet) -> bool {
        let in_pools = match &self.cfg.import_allow {
            None => return true,
            Some(pools) => pools.iter().any(|pool| pool.contains(prefix)),
        };
        in_pools
            || self
                .slot(id)
                .is_some_and(|s| s.policy.import_allow.iter().any(|net| net.contains(prefix)))
    }

    /// Replaces the speaker-wide import pools. Paths that fall outside are removed (and
    /// counted as refused). Prefixes refused before are not kept, so the caller asks the
    /// peers for their tables again (ROUTE-REFRESH) to pick up what is now allowed.
    pub fn set_import_allow(&mut self, allow: Option<Vec<IpNet>>) -> Changes {
        self.cfg.import_allow = allow;
        let mut refused: Vec<(PeerId, IpNet)> = Vec::new();
        let learned = |p: &Paths| {
            p.as_slice()
                .iter()
                .filter(|x| x.peer != LOCAL)
                .map(|x| x.peer)
                .collect::<Vec<_>>()
        };
        for (k, paths) in &self.v4 {
            let prefix = IpNet::V4(*k);
            for peer in learned(paths) {
                if !self.import_allowed(peer, &prefix) {
                    refused.push((peer, prefix));
                }
            }
        }
        for (k, paths) in &self.v6 {
            let prefix = IpNet::V6(*k);
            for peer in learned(paths) {
                if !self.import_allowed(peer, &prefix) {
                    refused.push((peer, prefix));
                }
            }
        }
        let mut changes = Vec::new();
        for (peer, prefix) in refused {
            if let Some(slot) = self.slot_mut(peer) {
                slot.rejected.insert(prefix);
            }
            self.withdraw_path(peer, prefix, &mut changes);
        }
        changes
    }

    /// Originates a prefix from this speaker.
    pub fn originate(&mut self, prefix: IpNet) -> Changes {
        let attrs = self.intern_attrs(Attrs::local());
        let path = Path {
            attrs,
            peer: LOCAL,
            stale: false,
        };
        let mut changes = Vec::new();
        match prefix {
            IpNet::V4(p) => self.insert_path(p, path, &mut changes),
            IpNet::V6(p) => self.insert_path(p, path, &mut changes),
        }
        changes
    }

    /// Stops originating a prefix.
    pub fn withdraw_local(&mut self, prefix: IpNet) -> Changes {
        let mut changes = Vec::new();
        self.withdraw_path(LOCAL, prefix, &mut changes);
        changes
    }

    /// The prefixes we originate.
    pub fn originated(&self) -> Vec<IpNet> {
        let local = |p: &Paths| p.as_slice().iter().any(|x| x.peer == LOCAL);
        let mut out: Vec<IpNet> = self
            .v4
            .iter()
            .filter(|(_, p)| local(p))
            .map(|(k, _)| IpNet::V4(*k))
            .collect();
        out.extend(
            self.v6
                .iter()
                .filter(|(_, p)| local(p))
                .map(|(k, _)| IpNet::V6(*k)),
        );
        out
    }

    fn withdraw_path(&mut self, id: PeerId, prefix: IpNet, changes: &mut Changes) {
        match prefix {
            IpNet::V4(p) => self.change(
                p,
                changes,
                |paths, accepted| remove_matching(paths, accepted, |p| p.peer == id),
                id,
            ),
            IpNet::V6(p) => self.change(
                p,
                changes,
                |paths, accepted| remove_matching(paths, accepted, |p| p.peer == id),
                id,
            ),
        }
    }

    fn insert_path<P: Prefix>(&mut self, prefix: P, path: Path, changes: &mut Changes)
    where
        Self: TableOf<P>,
    {
        let id = path.peer;
        self.change(
            prefix,
            changes,
            move |paths, accepted| match paths.iter_mut().find(|p| p.peer == path.peer) {
                Some(existing) => *existing = path,
                None => {
                    paths.push(path);
                    *accepted += 1;
                }
            },
            id,
        );
    }

    fn intern_attrs(&mut self, attrs: Attrs) -> Arc<Attrs> {
        self.interner.intern(&attrs, || Arc::new(attrs.clone()))
    }

    fn path_set(&mut self, paths: &[Path]) -> Paths {
        self.path_sets
            .intern(paths, || Paths(Arc::new(paths.to_vec().into_boxed_slice())))
    }

    /// Path sets first: they hold the attributes.
    fn collect_unused(&mut self) {
        self.path_sets.maybe_collect();
        self.interner.maybe_collect();
    }

    /// Marks every path of peer `id` stale. Prefixes sharing a path set share its
    /// replacement, so a full table is re-pointed, not copied.
    fn mark_stale<P: Prefix>(&mut self, id: PeerId)
    where
        Self: TableOf<P>,
    {
        let mut replaced: HashMap<Paths, Paths> = HashMap::new();
        let mut table = std::mem::take(self.table_mut());
        for paths in table.values_mut() {
            if !paths.as_slice().iter().any(|p| p.peer == id && !p.stale) {
                continue;
            }
            if let Some(new) = replaced.get(paths) {
                *paths = new.clone();
                continue;
            }
            let marked: Vec<Path> = paths
                .as_slice()
                .iter()
                .map(|p| Path {
                    stale: p.stale || p.peer == id,
                    ..p.clone()
                })
                .collect();
            let new = self.path_set(&marked);
            replaced.insert(paths.clone(), new.clone());
            *paths = new;
        }
        *self.table_mut() = table;
    }

    /// Runs `edit` on the paths of `prefix` (empty when it has none; left empty, the prefix
    /// goes), then reports the Loc-RIB change and queues what each peer must be told.
    /// `edit` adjusts the accepted count of peer `id`.
    fn change<P: Prefix>(
        &mut self,
        prefix: P,
        changes: &mut Changes,
        edit: impl FnOnce(&mut Vec<Path>, &mut usize),
        id: PeerId,
    ) where
        Self: TableOf<P>,
    {
        let entry = self.table_mut().remove(&prefix);
        let old_best = entry
            .as_ref()
            .and_then(|p| self.best(p.as_slice()))
            .cloned();
        let mut paths = std::mem::take(&mut self.scratch);
        paths.clear();
        paths.extend(entry.iter().flat_map(|p| p.as_slice().iter().cloned()));
        let mut accepted = self.slot(id).map_or(0, |s| s.accepted);
        edit(&mut paths, &mut accepted);
        if let Some(slot) = self.slot_mut(id) {
            slot.accepted = accepted;
        }
        let entry = match entry {
            Some(old) if old.as_slice() == paths.as_slice() => Some(old),
            _ if paths.is_empty() => None,
            _ => Some(self.path_set(&paths)),
        };
        paths.clear();
        self.scratch = paths;
        let new_best = entry
            .as_ref()
            .and_then(|p| self.best(p.as_slice()))
            .cloned();
        if let Some(paths) = entry {
            self.table_mut().insert(prefix, paths);
        }
        let same = match (&old_best, &new_best) {
            (None, None) => true,
            (Some(a), Some(b)) => a.peer == b.peer && Arc::ptr_eq(&a.attrs, &b.attrs),
            _ => false,
        };
        if same {
            return;
        }
        self.report(prefix.into(), old_best.as_ref(), new_best.as_ref(), changes);
        self.export(prefix.into(), old_best.as_ref(), new_best.as_ref());
    }

    /// The Loc-RIB change the agent sees: only next-hop changes of learned routes matter.
    fn report(&self, prefix: IpNet, old: Option<&Path>, new: Option<&Path>, changes: &mut Changes) {
        let learned_nh = |p: Option<&Path>| {
            p.filter(|p| p.peer != LOCAL)
                .and_then(|p| p.attrs.next_hop.as_ref().map(kernel_next_hop))
        };
        let (old_nh, new_nh) = (learned_nh(old), learned_nh(new));
        match (old_nh, new_nh, new) {
            (_, Some(nh), Some(path)) => {
                let peer_moved = old.map(|o| o.peer) != Some(path.peer);
                if old_nh != Some(nh) || peer_moved {
                    let peer = self.slot(path.peer).map(|s| s.policy.address);
                    let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                    changes.push(RouteChange::Add {
                        prefix,
                        next_hop: nh,
                        peer,
                    });
                }
            }
            (Some(_), None, _) => changes.push(RouteChange::Remove { prefix }),
            _ => {}
        }
    }

    /// The best path (RFC 4271 §9.1.2.2, RFC 4456 §9). A locally originated path wins:
    /// a node is the authority for the blocks it owns.
    fn best<'a>(&self, paths: &'a [Path]) -> Option<&'a Path> {
        paths
            .iter()
            .reduce(|a, b| if self.prefer(b, a) { b } else { a })
    }

    /// Whether `a` is better than `b`.
    fn prefer(&self, a: &Path, b: &Path) -> bool {
        use std::cmp::Ordering::{Equal, Less};
        let local = |p: &Path| p.peer == LOCAL;
        let external = |p: &Path| {
            self.slot(p.peer)
                .is_some_and(|s| s.policy.asn != self.cfg.asn)
        };
        let router_id = |p: &Path| {
            p.attrs
                .originator_id
                .or_else(|| self.slot(p.peer).and_then(|s| s.router_id))
                .map_or(u32::MAX, u32::from)
        };
        let address = |p: &Path| self.slot(p.peer).map(|s| s.policy.address);
        let steps = [
            local(b).cmp(&local(a)),
            b.attrs
                .local_pref_or_default()
                .cmp(&a.attrs.local_pref_or_default()),
            a.attrs
                .as_path
                .route_selection_len()
                .cmp(&b.attrs.as_path.route_selection_len()),
            a.attrs.origin.cmp(&b.attrs.origin),
            // §9.1.2.2 c: MED only compares paths from the same neighbouring AS.
            if a.attrs.as_path.first_as() == b.attrs.as_path.first_as() {
                a.attrs.med.unwrap_or(0).cmp(&b.attrs.med.unwrap_or(0))
            } else {
                Equal
            },
            external(b).cmp(&external(a)),
            router_id(a).cmp(&router_id(b)),
            a.attrs.cluster_list.len().cmp(&b.attrs.cluster_list.len()),
            address(a).cmp(&address(b)),
            a.peer.cmp(&b.peer),
        ];
        steps.into_iter().find(|o| *o != Equal) == Some(Less)
    }

    /// Queues the consequence of a best-path change for every established peer.
    fn export(&mut self, prefix: IpNet, old: Option<&Path>, new: Option<&Path>) {
        for to in 1..self.peers.len() {
            let Ok(to) = PeerId::try_from(to) else { break };
            // Restarting: a peer gets the full table once, after initial sync. Checked
            // first, so that a table loading before then builds no export attributes.
            if !self
                .slot(to)
                .is_some_and(|s| s.session.is_some() && s.advertising)
            {
                continue;
            }
            let announce = new.and_then(|p| self.export_attrs(to, prefix, p));
            let was = old.is_some_and(|p| self.exportable(to, prefix, p));
            let Some(slot) = self.slot_mut(to) else {
                continue;
            };
            match announce {
                Some(attrs) => slot.out.push(prefix, Some(attrs)),
                None if was => slot.out.push(prefix, None),
                None => {}
            }
        }
    }

    /// Whether `path` may be advertised to peer `to` (RFC 4456 §6 for iBGP).
    fn exportable(&self, to: PeerId, prefix: IpNet, path: &Path) -> bool {
        let Some(dest) = self.slot(to) else {
            return false;
        };
        let Some(session) = &dest.session else {
            return false;
        };
        if path.peer == to || !session.families.contains(&Family::of(&prefix)) {
            return false;
        }
        if let Some(allow) = &dest.policy.export_allow
            && !allow.iter().any(|net| net.contains(&prefix))
        {
            return false;
        }
        if path.peer == LOCAL {
            return true;
        }
        let Some(src) = self.slot(path.peer) else {
            return false;
        };
        let ibgp = |s: &PeerSlot| s.policy.asn == self.cfg.asn;
        if ibgp(src) && ibgp(dest) {
            // iBGP split horizon, relaxed by route reflection: a client's routes go to
            // everyone, a non-client's only to clients.
            src.policy.route_reflector_client || dest.policy.route_reflector_client
        } else {
            true
        }
    }

    /// The attributes `path` is advertised to `to` with, if it is advertised at all.
    fn export_attrs(&mut self, to: PeerId, prefix: IpNet, path: &Path) -> Option<Arc<Attrs>> {
        if !self.exportable(to, prefix, path) {
            return None;
        }
        let dest = self.slot(to)?;
        let session = dest.session.as_ref()?;
        let external = dest.policy.asn != self.cfg.asn;
        let mut attrs = (*path.attrs).clone();
        let next_hop_self = self.own_next_hop(session, &prefix);
        let keep_next_hop = dest.policy.keep_original_next_hop && attrs.next_hop.is_some();
        if path.peer == LOCAL || (external && !keep_next_hop) {
            attrs.next_hop = Some(next_hop_self?);
        } else if let Some(src) = self.slot(path.peer)
            && src.policy.asn == self.cfg.asn
        {
            // RFC 4456 §8: reflecting. Record where the route entered the cluster.
            if attrs.originator_id.is_none() {
                attrs.originator_id = src.router_id;
            }
            attrs.cluster_list.insert(0, self.cfg.cluster_id);
        }
        if external {
            attrs.as_path.prepend(self.cfg.asn);
            attrs.local_pref = None;
            attrs.originator_id = None;
            attrs.cluster_list.clear();
            if path.peer != LOCAL {
                // MED is for the neighbouring AS only (RFC 4271 §5.1.4).
                attrs.med = None;
            }
        }
        Some(self.intern_attrs(attrs))
    }

    /// Our own next hop toward a peer for a prefix of the given family.
    fn own_next_hop(&self, session: &SessionInfo, prefix: &IpNet) -> Option<NextHop> {
        match (prefix, session.local_address) {
            (IpNet::V4(_), IpAddr::V4(a)) => Some(NextHop::V4(a)),
            (IpNet::V4(_), IpAddr::V6(_)) => session.local_ipv4.map(NextHop::V4),
            (IpNet::V6(_), IpAddr::V6(a)) => Some(NextHop::V6 {
                global: a,
                link_local: None,
            }),
            (IpNet::V6(_), IpAddr::V4(a)) => Some(NextHop::V6 {
                global: session.local_ipv6.unwrap_or_else(|| a.to_ipv6_mapped()),
                link_local: None,
            }),
        }
    }

    /// The best path of every prefix in one family's table, to advertise from.
    fn best_paths<P: Prefix>(&self) -> Vec<(IpNet, Path)>
    where
        Self: TableOf<P>,
    {
        self.table()
            .iter()
            .filter_map(|(k, p)| self.best(p.as_slice()).map(|b| ((*k).into(), b.clone())))
            .collect()
    }

    /// Fills a peer's Adj-RIB-Out with the whole table and End-of-RIB markers.
    fn fill_out(&mut self, to: PeerId) {
        let mut queued: Vec<(IpNet, Arc<Attrs>)> = Vec::new();
        let mut bests = self.best_paths::<Ipv4Net>();
        bests.extend(self.best_paths::<Ipv6Net>());
        for (prefix, best) in bests {
            if let Some(attrs) = self.export_attrs(to, prefix, &best) {
                queued.push((prefix, attrs));
            }
        }
        let Some(slot) = self.slot_mut(to) else {
            return;
        };
        let families = slot
            .session
            .as_ref()
            .map(|s| s.families.clone())
            .unwrap_or_default();
        for (prefix, attrs) in queued {
            slot.out.push(prefix, Some(attrs));
        }
        slot.out.eor = families;
        slot.advertising = true;
    }

    /// The peer asked for a ROUTE-REFRESH (RFC 2918): queue the table again.
    pub fn route_refresh(&mut self, id: PeerId, family: Family) {
        if !self.slot(id).is_some_and(|s| s.advertising) {
            return;
        }
        let prefixes = if family == Family::IPV4_UNICAST {
            self.best_paths::<Ipv4Net>()
        } else if family == Family::IPV6_UNICAST {
            self.best_paths::<Ipv6Net>()
        } else {
            Vec::new()
        };
        for (prefix, best) in prefixes {
            if let Some(attrs) = self.export_attrs(id, prefix, &best)
                && let Some(slot) = self.slot_mut(id)
            {
                slot.out.push(prefix, Some(attrs));
            }
        }
    }

    /// Initial sync after our restart is over (every peer sent End-of-RIB, or the
    /// deferral timer ran out): send every established peer its table and End-of-RIB.
    pub fn initial_sync_done(&mut self) {
        if self.sync_done {
            return;
        }
        self.sync_done = true;
        for to in 1..self.peers.len() {
            let Ok(to) = PeerId::try_from(to) else { break };
            if self
                .slot(to)
                .is_some_and(|s| s.session.is_some() && !s.advertising)
            {
                self.fill_out(to);
            }
        }
    }

    /// Whether the peer has something queued to send.
    pub fn has_output(&self, id: PeerId) -> bool {
        self.slot(id).is_some_and(|s| !s.out.is_empty())
    }

    /// Peers with something queued.
    pub fn peers_with_output(&self) -> Vec<PeerId> {
        (1..self.peers.len())
            .filter_map(|i| PeerId::try_from(i).ok())
            .filter(|i| self.has_output(*i))
            .collect()
    }

    /// Takes up to `max` queued prefixes for the peer, grouped by attributes.
    pub fn take_out(&mut self, id: PeerId, max: usize) -> OutBatch {
        self.slot_mut(id)
            .map_or_else(OutBatch::default, |s| s.out.take(max))
    }

    /// The current Loc-RIB as additions, for a new subscriber.
    pub fn snapshot(&self) -> Changes {
        let mut out = Vec::new();
        let mut add = |prefix: IpNet, paths: &Paths| {
            if let Some(best) = self.best(paths.as_slice())
                && best.peer != LOCAL
                && let Some(nh) = best.attrs.next_hop.as_ref()
            {
                let peer = self.slot(best.peer).map(|s| s.policy.address);
                let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                out.push(RouteChange::Add {
                    prefix,
                    next_hop: kernel_next_hop(nh),
                    peer,
                });
            }
        };
        for (k, p) in &self.v4 {
            add(IpNet::V4(*k), p);
        }
        for (k, p) in &self.v6 {
            add(IpNet::V6(*k), p);
        }
        out
    }

    /// The best path's attributes for a prefix (for tests and diagnostics).
    pub fn best_attrs(&self, prefix: IpNet) -> Option<(PeerId, Arc<Attrs>)> {
        let paths = match prefix {
            IpNet::V4(p) => self.v4.get(&p),
            IpNet::V6(p) => self.v6.get(&p),
        }?;
        self.best(paths.as_slice())
            .map(|b| (b.peer, Arc::clone(&b.attrs)))
    }

    /// How many distinct attribute sets are stored.
    pub fn interned(&self) -> usize {
        self.interner.set.len()
    }
}

/// Drops the paths `drop` picks (at most one: a prefix holds one path per peer), and
/// with it one from the peer's accepted count.
fn remove_matching(paths: &mut Vec<Path>, accepted: &mut usize, drop: impl Fn(&Path) -> bool) {
    let before = paths.len();
    paths.retain(|x| !drop(x));
    if paths.len() < before {
        *accepted = accepted.saturating_sub(1);
    }
}

/// Gives generic code the table of a prefix type.
trait TableOf<P: Prefix> {
    fn table(&self) -> &HashMap<P, Paths>;
    fn table_mut(&mut self) -> &mut HashMap<P, Paths>;
}

impl TableOf<Ipv4Net> for Rib {
    fn table(&self) -> &HashMap<Ipv4Net, Paths> {
        &self.v4
    }
    fn table_mut(&mut self) -> &mut HashMap<Ipv4Net, Paths> {
        &mut self.v4
    }
}

impl TableOf<Ipv6Net> for Rib {
    fn table(&self) -> &HashMap<Ipv6Net, Paths> {
        &self.v6
    }
    fn table_mut(&mut self) -> &mut HashMap<Ipv6Net, Paths> {
        &mut self.v6
    }
}

/// What a peer still has to be told, newest intent per prefix.
#[derive(Debug, Default)]
struct AdjRibOut {
    /// `Some` announces, `None` withdraws. Replacing an entry is the whole point: a
    /// flapping prefix is sent once, in its latest state.
    pending: HashMap<IpNet, Option<Arc<Attrs>>>,
    /// End-of-RIB markers (RFC 4724 §2), sent once the initial table has drained.
    eor: Vec<Family>,
}

impl AdjRibOut {
    fn push(&mut self, prefix: IpNet, attrs: Option<Arc<Attrs>>) {
        self.pending.insert(prefix, attrs);
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.eor.is_empty()
    }

    fn take(&mut self, max: usize) -> OutBatch {
        let entries: Vec<(IpNet, Option<Arc<Attrs>>)> = if self.pending.len() <= max {
            self.pending.drain().collect()
        } else {
            let keys: Vec<IpNet> = self.pending.keys().take(max).copied().collect();
            keys.into_iter()
                .filter_map(|k| self.pending.remove_entry(&k))
                .collect()
        };
        let mut batch = OutBatch::default();
        let mut groups: HashMap<*const Attrs, usize> = HashMap::new();
        for (prefix, attrs) in entries {
            match attrs {
                None => batch.withdrawn.push(prefix),
                Some(attrs) => {
                    let key = Arc::as_ptr(&attrs);
                    let idx = *groups.entry(key).or_insert_with(|| {
                        batch.announced.push((Arc::clone(&attrs), Vec::new()));
                        batch.announced.len() - 1
                    });
                    if let Some((_, prefixes)) = batch.announced.get_mut(idx) {
                        prefixes.push(prefix);
                    }
                }
            }
        }
        if self.pending.is_empty() {
            batch.end_of_rib = std::mem::take(&mut self.eor);
        }
        batch
    }
}

/// A chunk of a peer's Adj-RIB-Out, ready to be packed into UPDATEs: announcements are
/// grouped by shared attributes so that each group fills as few UPDATEs as possible.
#[derive(Debug, Default, Clone)]
pub struct OutBatch {
    pub withdrawn: Vec<IpNet>,
    pub announced: Vec<(Arc<Attrs>, Vec<IpNet>)>,
    /// Families whose End-of-RIB marker goes after the rest.
    pub end_of_rib: Vec<Family>,
}

impl OutBatch {
    pub fn is_empty(&self) -> bool {
        self.withdrawn.is_empty() && self.announced.is_empty() && self.end_of_rib.is_empty()
    }

    /// Number of prefixes in the batch.
    pub fn len(&self) -> usize {
        self.withdrawn.len() + self.announced.iter().map(|(_, p)| p.len()).sum::<usize>()
    }
}

/// A value shared through reference counting, which an [`Interner`] can count users of.
trait Interned: Clone + Eq + Hash {
    /// How many holders there are, the interner included.
    fn users(&self) -> usize;
}

impl Interned for Arc<Attrs> {
    fn users(&self) -> usize {
        Arc::strong_count(self)
    }
}

/// Shares one allocation between equal values.
#[derive(Debug)]
struct Interner<T> {
    set: HashSet<T>,
    /// Size at which unused entries are next collected.
    next_collect: usize,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: HashSet::new(),
            next_collect: 0,
        }
    }
}

impl<T: Interned> Interner<T> {
    /// The shared copy of `value`, made by `make` the first time.
    fn intern<Q>(&mut self, value: &Q, make: impl FnOnce() -> T) -> T
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(shared) = self.set.get(value) {
            return shared.clone();
        }
        let shared = make();
        self.set.insert(shared.clone());
        shared
    }

    /// Drops values nobody else holds any more; amortised by doubling the threshold.
    fn maybe_collect(&mut self) {
        if self.set.len() > self.next_collect {
            self.set.retain(|v| v.users() > 1);
            self.next_collect = (self.set.len() * 2).max(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const ASN: u32 = 64512;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn rib(import_allow: Option<Vec<IpNet>>, restarting: bool) -> Rib {
        Rib::new(RibConfig {
            router_id: ME,
            asn: ASN,
            cluster_id: ME,
            import_allow,
            restarting,
        })
    }

    fn peer(rib: &mut Rib, addr: &str, client: bool) -> PeerId {
        rib.add_peer(PeerPolicy {
            address: ip(addr),
            asn: ASN,
            route_reflector_client: client,
            import_allow: Vec::new(),
            export_allow: None,
            keep_original_next_hop: false,
        })
    }

    fn up(rib: &mut Rib, id: PeerId, router_id: &str, gr: bool) -> Changes {
        let local_address = ip("10.0.0.1");
        rib.peer_up(
            id,
            SessionInfo {
                router_id: router_id.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                local_address,
                local_ipv6: None,
                local_ipv4: None,
                graceful_restart: gr
                    .then(|| vec![(Family::IPV4_UNICAST, true), (Family::IPV6_UNICAST, true)]),
                peer_restarting: false,
            },
        )
    }

    fn attrs(next_hop: &str) -> Attrs {
        let nh = match ip(next_hop) {
            IpAddr::V4(a) => NextHop::V4(a),
            IpAddr::V6(a) => NextHop::V6 {
                global: a,
                link_local: None,
            },
        };
        Attrs {
            next_hop: Some(nh),
            ..Attrs::local()
        }
    }

    fn announce(rib: &mut Rib, id: PeerId, a: Attrs, prefixes: &[&str]) -> Changes {
        let prefixes = prefixes.iter().map(|p| net(p)).collect();
        rib.update(
            id,
            Routes {
                withdrawn: Vec::new(),
                announced: vec![(a, prefixes)],
            },
        )
    }

    fn withdraw(rib: &mut Rib, id: PeerId, prefixes: &[&str]) -> Changes {
        let withdrawn = prefixes.iter().map(|p| net(p)).collect();
        rib.update(
            id,
            Routes {
                withdrawn,
                announced: Vec::new(),
            },
        )
    }

    fn add(prefix: &str, nh: &str, peer: &str) -> RouteChange {
        RouteChange::Add {
            prefix: net(prefix),
            next_hop: ip(nh),
            peer: ip(peer),
        }
    }

    fn remove(prefix: &str) -> RouteChange {
        RouteChange::Remove {
            prefix: net(prefix),
        }
    }

    #[test]
    fn an_ipv4_entry_is_a_key_and_a_pointer() {
        // The per-route budget of a full table.
        let entry = std::mem::size_of::<(Ipv4Net, Paths)>();
        assert!(entry <= 16, "{entry} bytes");
    }

    #[test]
    fn announce_and_withdraw_reach_the_loc_rib() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        let ch = announce(
            &mut rib,
            a,
            attrs("10.0.0.2"),
            &["192.168.1.0/26", "fd00:1::/122"],
        );
        assert_eq!(
            ch,
            vec![
                add("192.168.1.0/26", "10.0.0.2", "10.0.0.2"),
                add("fd00:1::/122", "10.0.0.2", "10.0.0.2"),
            ]
        );
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 2,
                accepted: 2
            }
        );
        // The same announcement again changes nothing.
        assert!(announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]).is_empty());
        assert_eq!(
            withdraw(&mut rib, a, &["192.168.1.0/26"]),
            vec![remove("192.168.1.0/26")]
        );
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 1,
                accepted: 1
            }
        );
        // Withdrawing what was never announced is harmless.
        assert!(withdraw(&mut rib, a, &["192.168.9.0/26"]).is_empty());
        assert_eq!(rib.counts(a).accepted, 1);
    }

    #[test]
    fn ipv4_mapped_next_hops_are_reported_as_ipv4() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        let ch = announce(&mut rib, a, attrs("::ffff:10.0.0.2"), &["fd00:1::/122"]);
        assert_eq!(ch, vec![add("fd00:1::/122", "10.0.0.2", "10.0.0.2")]);
    }

    #[test]
    fn best_path_follows_rfc_4271_order() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        let b = peer(&mut rib, "10.0.0.3", false);
        up(&mut rib, a, "10.0.0.2", false);
        up(&mut rib, b, "10.0.0.3", false);
        let p = "192.168.0.0/26";

        // Equal in everything: the lower router id (a) wins.
        announce(&mut rib, a, attrs("10.0.0.2"), &[p]);
        assert!(announce(&mut rib, b, attrs("10.0.0.3"), &[p]).is_empty());

        // Higher local-pref beats everything after it.
        let ch = announce(
            &mut rib,
            b,
            Attrs {
                local_pref: Some(200),
                ..attrs("10.0.0.3")
            },
            &[p],
        );
        assert_eq!(ch, vec![add(p, "10.0.0.3", "10.0.0.3")]);

        // Shorter AS path.
        let long = Attrs {
            as_path: AsPath::sequence([65001, 65002]),
            ..attrs("10.0.0.3")
        };
        let short = Attrs {
            as_path: AsPath::sequence([65001]),
            ..attrs("10.0.0.2")
        };
        announce(&mut rib, a, short.clone(), &[p]);
        let ch = announce(&mut rib, b, long, &[p]);
        assert_eq!(ch, vec![add(p, "10.0.0.2", "10.0.0.2")]);

        // Lower origin.
        let egp = Attrs {
            origin: Origin::Egp,
            ..attrs("10.0.0.2")
        };
        announce(&mut rib, a, egp, &[p]);
        let ch = announce(&mut rib, b, attrs("10.0.0.3"), &[p]);
        assert_eq!(ch, vec![add(p, "10.0.0.3", "10.0.0.3")]);

        // Lower MED (same neighbouring AS: none, both internal).
        announce(
            &mut rib,
            a,
            Attrs {
                med: Some(5),
                ..attrs("10.0.0.2")
            },
            &[p],
        );
        announce(
            &mut rib,
            b,
            Attrs {
                med: Some(10),
                ..attrs("10.0.0.3")
            },
            &[p],
        );
        assert_eq!(rib.best_attrs(net(p)).map(|(id, _)| id), Some(a));

        // ORIGINATOR_ID stands in for the router id of a reflected route (RFC 4456 §9).
        announce(
            &mut rib,
            a,
            Attrs {
                originator_id: Some(Ipv4Addr::new(10, 9, 9, 9)),
                ..attrs("10.0.0.2")
            },
            &[p],
        );
        let ch = announce(&mut rib, b, attrs("10.0.0.3"), &[p]);
        assert_eq!(ch, vec![add(p, "10.0.0.3", "10.0.0.3")]);

        // A locally originated route wins, and the agent is told to drop the learned one.
        let ch = rib.originate(net(p));
        assert_eq!(ch, vec![remove(p)]);
        let ch = rib.withdraw_local(net(p));
        assert_eq!(ch, vec![add(p, "10.0.0.3", "10.0.0.3")]);
    }

    #[test]
    fn peer_address_breaks_the_last_tie() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.3", false);
        let b = peer(&mut rib, "10.0.0.2", false);
        // Same router id via ORIGINATOR_ID, same cluster list: lower address (b) wins.
        up(&mut rib, a, "10.0.0.7", false);
        up(&mut rib, b, "10.0.0.8", false);
        let o = Some(Ipv4Addr::new(10, 0, 0, 5));
        announce(
            &mut rib,
            a,
            Attrs {
                originator_id: o,
                ..attrs("10.0.0.5")
            },
            &["192.168.0.0/26"],
        );
        announce(
            &mut rib,
            b,
            Attrs {
                originator_id: o,
                ..attrs("10.0.0.5")
            },
            &["192.168.0.0/26"],
        );
        assert_eq!(
            rib.best_attrs(net("192.168.0.0/26")).map(|(id, _)| id),
            Some(b)
        );
    }

    #[test]
    fn route_reflection_loop_checks_refuse_our_own_routes() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", true);
        up(&mut rib, a, "10.0.0.2", false);
        let mine = Attrs {
            originator_id: Some(ME),
            ..attrs("10.0.0.2")
        };
        assert!(announce(&mut rib, a, mine, &["192.168.1.0/26"]).is_empty());
        let looped = Attrs {
            cluster_list: vec![Ipv4Addr::new(1, 1, 1, 1), ME],
            ..attrs("10.0.0.2")
        };
        assert!(announce(&mut rib, a, looped, &["192.168.2.0/26"]).is_empty());
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 2,
                accepted: 0
            }
        );
        // A clean announcement of a refused prefix is accepted.
        let ch = announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        assert_eq!(ch.len(), 1);
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 2,
                accepted: 1
            }
        );
    }

    #[test]
    fn a_next_hop_of_our_own_is_refused() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        // `up` puts us at 10.0.0.1 on this session.
        assert!(announce(&mut rib, a, attrs("10.0.0.1"), &["192.168.1.0/26"]).is_empty());
        assert!(announce(&mut rib, a, attrs("::ffff:10.0.0.1"), &["fd00::/122"]).is_empty());
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 2,
                accepted: 0
            }
        );
        // Nor is a gateway that is nowhere.
        assert!(announce(&mut rib, a, attrs("0.0.0.0"), &["192.168.2.0/26"]).is_empty());
        assert!(announce(&mut rib, a, attrs("::"), &["fd00:2::/122"]).is_empty());
        assert!(announce(&mut rib, a, attrs("224.0.0.1"), &["192.168.3.0/26"]).is_empty());
        assert_eq!(rib.counts(a).accepted, 0);
    }

    #[test]
    fn route_reflector_reflects_client_routes_with_originator_and_cluster_list() {
        let mut rib = rib(None, false);
        let c1 = peer(&mut rib, "10.0.0.2", true);
        let c2 = peer(&mut rib, "10.0.0.3", true);
        let n = peer(&mut rib, "10.0.0.4", false);
        for (id, rid) in [(c1, "10.0.0.2"), (c2, "10.0.0.3"), (n, "10.0.0.4")] {
            up(&mut rib, id, rid, false);
            let initial = rib.take_out(id, 100);
            assert!(initial.announced.is_empty() && initial.end_of_rib.len() == 2);
        }
        announce(&mut rib, c1, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        // Not back to the client it came from.
        assert!(!rib.has_output(c1));
        for to in [c2, n] {
            let out = rib.take_out(to, 100);
            let (a, prefixes) = &out.announced[0];
            assert_eq!(prefixes, &vec![net("192.168.1.0/26")]);
            assert_eq!(a.originator_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
            assert_eq!(a.cluster_list, vec![ME]);
            // The next hop is the client's, not ours.
            assert_eq!(a.next_hop, Some(NextHop::V4(Ipv4Addr::new(10, 0, 0, 2))));
        }
        // A non-client's route goes to clients only.
        announce(&mut rib, n, attrs("10.0.0.4"), &["192.168.4.0/26"]);
        assert!(rib.has_output(c1) && rib.has_output(c2) && !rib.has_output(n));
    }

    #[test]
    fn keep_original_next_hop_spares_learned_routes_from_next_hop_self_toward_ebgp() {
        let mut rib = rib(None, false);
        let external = |rib: &mut Rib, addr: &str, keep: bool| {
            rib.add_peer(PeerPolicy {
                address: ip(addr),
                asn: 65001,
                route_reflector_client: false,
                import_allow: Vec::new(),
                export_allow: None,
                keep_original_next_hop: keep,
            })
        };
        let mesh = peer(&mut rib, "10.0.0.2", false);
        let keeps = external(&mut rib, "10.0.0.8", true);
        let rewrites = external(&mut rib, "10.0.0.9", false);
        for (id, rid) in [
            (mesh, "10.0.0.2"),
            (keeps, "10.0.0.8"),
            (rewrites, "10.0.0.9"),
        ] {
            up(&mut rib, id, rid, false);
            rib.take_out(id, 100);
        }
        announce(&mut rib, mesh, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        rib.originate(net("192.168.7.0/26"));
        let next_hops = |rib: &mut Rib, id: PeerId| -> Vec<(IpNet, Option<NextHop>)> {
            let mut out: Vec<_> = rib
                .take_out(id, 100)
                .announced
                .into_iter()
                .flat_map(|(a, prefixes)| prefixes.into_iter().map(move |p| (p, a.next_hop)))
                .collect();
            out.sort_by_key(|(p, _)| *p);
            out
        };
        let v4 = |s: &str| Some(NextHop::V4(s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)));
        // The learned route keeps the mesh peer's next hop; our own block carries ours.
        assert_eq!(
            next_hops(&mut rib, keeps),
            vec![
                (net("192.168.1.0/26"), v4("10.0.0.2")),
                (net("192.168.7.0/26"), v4("10.0.0.1")),
            ]
        );
        assert_eq!(
            next_hops(&mut rib, rewrites),
            vec![
                (net("192.168.1.0/26"), v4("10.0.0.1")),
                (net("192.168.7.0/26"), v4("10.0.0.1")),
            ]
        );
        // A route learned from one eBGP peer goes to the other with the first's next hop.
        announce(&mut rib, rewrites, attrs("10.0.0.9"), &["192.168.9.0/26"]);
        assert_eq!(
            next_hops(&mut rib, keeps),
            vec![(net("192.168.9.0/26"), v4("10.0.0.9"))]
        );
    }

    #[test]
    fn without_clients_ibgp_routes_are_not_readvertised() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        let b = peer(&mut rib, "10.0.0.3", false);
        up(&mut rib, a, "10.0.0.2", false);
        up(&mut rib, b, "10.0.0.3", false);
        rib.take_out(a, 100);
        rib.take_out(b, 100);
        announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        assert!(!rib.has_output(b));
        // Our own routes go to both, next hop self, and withdrawals follow.
        rib.originate(net("192.168.7.0/26"));
        let out = rib.take_out(b, 100);
        assert_eq!(out.announced[0].0.next_hop, Some(NextHop::V4(ME)));
        rib.withdraw_local(net("192.168.7.0/26"));
        assert_eq!(rib.take_out(b, 100).withdrawn, vec![net("192.168.7.0/26")]);
    }

    #[test]
    fn outbound_queue_keeps_only_the_newest_intent() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        let initial = rib.take_out(a, 100);
        assert_eq!(
            initial.end_of_rib,
            vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
        );
        let p = net("192.168.7.0/26");
        for _ in 0..100 {
            rib.originate(p);
            rib.withdraw_local(p);
        }
        let out = rib.take_out(a, 100);
        assert_eq!((out.withdrawn.len(), out.announced.len()), (1, 0));
        rib.withdraw_local(p);
        rib.originate(p);
        let out = rib.take_out(a, 100);
        assert_eq!((out.withdrawn.len(), out.announced.len()), (0, 1));
        assert!(!rib.has_output(a));
    }

    #[test]
    fn outbound_batches_group_prefixes_and_end_with_eor() {
        let mut rib = rib(None, false);
        for i in 0..10u8 {
            rib.originate(IpNet::V4(
                Ipv4Net::new(Ipv4Addr::new(192, 168, i, 0), 26).unwrap_or_default(),
            ));
        }
        rib.originate(net("fd00::/122"));
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        let first = rib.take_out(a, 6);
        assert_eq!(first.len(), 6);
        assert!(
            first.end_of_rib.is_empty(),
            "EoR comes after the whole table"
        );
        let rest = rib.take_out(a, 100);
        assert_eq!(rest.len(), 5);
        assert_eq!(rest.end_of_rib.len(), 2);
        // All IPv4 prefixes share one attribute set, IPv6 has its own next hop.
        let mut all = first.announced;
        all.extend(rest.announced);
        let v4: Vec<_> = all
            .iter()
            .filter(|(a, _)| matches!(a.next_hop, Some(NextHop::V4(_))))
            .collect();
        assert!(v4.iter().all(|(a, _)| Arc::ptr_eq(a, &v4[0].0)));
        let v6 = all
            .iter()
            .find(|(a, _)| matches!(a.next_hop, Some(NextHop::V6 { .. })));
        assert_eq!(
            v6.and_then(|(a, _)| a.next_hop),
            Some(NextHop::V6 {
                global: Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped(),
                link_local: None
            })
        );
    }

    #[test]
    fn graceful_restart_helper_keeps_stale_routes_until_end_of_rib() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", true);
        announce(
            &mut rib,
            a,
            attrs("10.0.0.2"),
            &["192.168.1.0/26", "192.168.2.0/26", "fd00::/122"],
        );
        // The session drops: nothing is removed.
        assert!(rib.peer_down(a, true).is_empty());
        assert!(rib.has_stale(a));
        assert_eq!(rib.len(), (2, 1));
        // It comes back with forwarding preserved: still nothing removed.
        assert!(up(&mut rib, a, "10.0.0.2", true).is_empty());
        // It re-announces one prefix (now fresh) and sends End-of-RIB for IPv4.
        assert!(announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]).is_empty());
        let ch = rib.end_of_rib(a, Family::IPV4_UNICAST);
        assert_eq!(ch, vec![remove("192.168.2.0/26")]);
        assert_eq!(rib.len(), (1, 1));
        // The IPv6 stale route waits for its own EoR or the timer.
        assert_eq!(rib.sweep_stale(a), vec![remove("fd00::/122")]);
        assert!(!rib.has_stale(a));
    }

    #[test]
    fn graceful_restart_helper_sweeps_when_the_peer_forgot_its_state() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", true);
        announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        rib.peer_down(a, true);
        // Back without graceful restart: its stale routes go at once (RFC 4724 §4.2).
        assert_eq!(
            up(&mut rib, a, "10.0.0.2", false),
            vec![remove("192.168.1.0/26")]
        );
        // A non-graceful drop removes everything immediately.
        announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        assert_eq!(rib.peer_down(a, false), vec![remove("192.168.1.0/26")]);
    }

    #[test]
    fn restarting_speaker_defers_advertisements_until_initial_sync() {
        let mut rib = rib(None, true);
        rib.originate(net("192.168.1.0/26"));
        let a = peer(&mut rib, "10.0.0.2", true);
        let b = peer(&mut rib, "10.0.0.3", true);
        up(&mut rib, a, "10.0.0.2", true);
        up(&mut rib, b, "10.0.0.3", true);
        // Loc-RIB changes still flow to the agent ...
        let ch = announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.2.0/26"]);
        assert_eq!(ch.len(), 1);
        // ... but no peer hears anything yet.
        assert!(!rib.has_output(a) && !rib.has_output(b));
        rib.initial_sync_done();
        let out = rib.take_out(b, 100);
        assert_eq!(out.len(), 2);
        assert_eq!(out.end_of_rib.len(), 2);
        // Changes after the sync reach the peers.
        rib.originate(net("192.168.9.0/26"));
        assert_eq!(rib.take_out(b, 100).len(), 1);
    }

    #[test]
    fn restarting_speaker_does_not_wait_for_a_peer_that_restarted_too() {
        let mut rib = rib(None, true);
        rib.originate(net("192.168.1.0/26"));
        let a = peer(&mut rib, "10.0.0.2", false);
        rib.peer_up(
            a,
            SessionInfo {
                router_id: Ipv4Addr::new(10, 0, 0, 2),
                families: vec![Family::IPV4_UNICAST],
                local_address: ip("10.0.0.1"),
                local_ipv6: None,
                local_ipv4: None,
                graceful_restart: Some(vec![(Family::IPV4_UNICAST, true)]),
                peer_restarting: true,
            },
        );
        let out = rib.take_out(a, 100);
        assert_eq!(
            (out.len(), out.end_of_rib.clone()),
            (1, vec![Family::IPV4_UNICAST])
        );
        rib.originate(net("192.168.2.0/26"));
        assert_eq!(rib.take_out(a, 100).len(), 1);
        // Initial sync does not send it the table a second time.
        rib.initial_sync_done();
        assert!(!rib.has_output(a));
    }

    #[test]
    fn import_policy_takes_pools_and_peer_filters() {
        let mut rib = rib(Some(vec![net("192.168.0.0/16")]), false);
        let a = rib.add_peer(PeerPolicy {
            address: ip("10.0.0.2"),
            asn: ASN,
            route_reflector_client: false,
            import_allow: vec![net("172.16.0.0/12")],
            export_allow: None,
            keep_original_next_hop: false,
        });
        let b = peer(&mut rib, "10.0.0.3", false);
        up(&mut rib, a, "10.0.0.2", false);
        up(&mut rib, b, "10.0.0.3", false);
        let ch = announce(
            &mut rib,
            a,
            attrs("10.0.0.2"),
            &["192.168.1.0/26", "172.16.1.0/24", "8.8.8.0/24"],
        );
        assert_eq!(ch.len(), 2);
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 3,
                accepted: 2
            }
        );
        let ch = announce(
            &mut rib,
            b,
            attrs("10.0.0.3"),
            &["172.16.2.0/24", "192.168.0.0/15"],
        );
        assert!(ch.is_empty());
        assert_eq!(
            rib.counts(b),
            PrefixCounts {
                received: 2,
                accepted: 0
            }
        );
        // Withdrawing a refused prefix forgets it.
        withdraw(&mut rib, b, &["172.16.2.0/24"]);
        assert_eq!(rib.counts(b).received, 1);
    }

    #[test]
    fn narrowing_the_pools_removes_routes_outside_them() {
        let mut rib = rib(Some(vec![net("192.168.0.0/16"), net("10.0.0.0/8")]), false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        announce(
            &mut rib,
            a,
            attrs("10.0.0.2"),
            &["192.168.1.0/26", "10.9.0.0/24"],
        );
        rib.originate(net("10.8.0.0/24"));
        let ch = rib.set_import_allow(Some(vec![net("192.168.0.0/16")]));
        assert_eq!(ch, vec![remove("10.9.0.0/24")]);
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 2,
                accepted: 1
            }
        );
        // What we originate is not subject to import policy.
        assert!(rib.originated().contains(&net("10.8.0.0/24")));
        // Widening changes nothing by itself: the peer has to send the route again.
        assert!(rib.set_import_allow(None).is_empty());
        let ch = announce(&mut rib, a, attrs("10.0.0.2"), &["10.9.0.0/24"]);
        assert_eq!(ch.len(), 1);
        assert_eq!(
            rib.counts(a),
            PrefixCounts {
                received: 2,
                accepted: 2
            }
        );
    }

    #[test]
    fn export_filter_limits_what_a_peer_hears() {
        let mut rib = rib(None, false);
        let a = rib.add_peer(PeerPolicy {
            address: ip("10.0.0.2"),
            asn: ASN,
            route_reflector_client: false,
            import_allow: Vec::new(),
            export_allow: Some(vec![net("192.168.0.0/16")]),
            keep_original_next_hop: false,
        });
        up(&mut rib, a, "10.0.0.2", false);
        rib.take_out(a, 100);
        rib.originate(net("10.1.0.0/24"));
        assert!(!rib.has_output(a));
        rib.originate(net("192.168.3.0/26"));
        assert_eq!(rib.take_out(a, 100).len(), 1);
    }

    #[test]
    fn many_prefixes_share_one_attribute_set() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", false);
        for chunk in 0..20u32 {
            let prefixes: Vec<IpNet> = (0..500u32)
                .map(|i| {
                    let n = chunk * 500 + i;
                    IpNet::V4(
                        Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (n << 8)), 24)
                            .unwrap_or_default(),
                    )
                })
                .collect();
            rib.update(
                a,
                Routes {
                    withdrawn: Vec::new(),
                    announced: vec![(attrs("10.0.0.2"), prefixes)],
                },
            );
        }
        assert_eq!(rib.len().0, 10_000);
        // One set for the peer's routes (plus the local template, if any).
        assert!(rib.interned() <= 2, "{}", rib.interned());
    }

    #[test]
    fn removing_a_peer_removes_its_routes() {
        let mut rib = rib(None, false);
        let a = peer(&mut rib, "10.0.0.2", false);
        up(&mut rib, a, "10.0.0.2", true);
        announce(&mut rib, a, attrs("10.0.0.2"), &["192.168.1.0/26"]);
        assert_eq!(rib.remove_peer(a), vec![remove("192.168.1.0/26")]);
        assert!(rib.is_empty());
        // The slot is reused.
        assert_eq!(peer(&mut rib, "10.0.0.9", false), a);
    }
}
