//! The speaker: one owner task holding the RIB and the peer table, and [`Speaker`], the
//! cheap handle the agent calls.
//!
//! The owner task is the only place the RIB changes. Session tasks send it what they
//! hear; it answers with Adj-RIB-Out batches, one outstanding per peer. Subscribers get
//! Loc-RIB changes in batches, each through a bounded queue the owner never waits on: a
//! subscriber that lets its queue fill up loses the changes from then on and, when it
//! reads again, gets the whole table instead ([`RibEvent::Resync`]). One stalled consumer
//! must not stall every BGP session (issue 13).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::config::{PeerConfig, SpeakerConfig};
use crate::fsm::{Fsm, FsmConfig, Jitter, Negotiated, State};
use crate::rib::{PeerId, PeerPolicy, Rib, RibConfig, RouteChange};
use crate::session::{self, PeerKey, SessionHandle, SessionSettings, ToOwner, ToSession};
use crate::wire::{Family, GracefulRestart, GracefulRestartFamily};
use crate::{Error, md5};

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RibEvent {
    /// The whole Loc-RIB (its learned best paths, as additions). It replaces everything
    /// the subscription reported before: a route it reported that is not in here is gone.
    /// The first event of every subscription, and what a subscriber that fell behind gets
    /// instead of the changes it missed.
    Resync(Vec<RouteChange>),
    /// Loc-RIB changes since the previous event, in order.
    Changes(Vec<RouteChange>),
    /// Initial sync is over: every peer sent End-of-RIB (or the deferral timer ran out).
    /// Kernel routes left over from before a restart that no `Add` has claimed since can
    /// now be swept (RFC 4724). Sent once per subscription.
    InitialSyncDone,
}

/// A peer as `tortiectl node status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    /// The label from [`PeerConfig::peer_type`].
    pub peer_type: String,
    pub state: State,
    /// When the peer entered `state`.
    pub since: SystemTime,
    pub last_error: Option<String>,
    /// The peer's BGP identifier, while Established.
    pub router_id: Option<Ipv4Addr>,
    pub prefixes_received: usize,
    pub prefixes_accepted: usize,
    /// Negotiated capabilities, e.g. `ipv4-unicast`, `4-octet-as`, `graceful-restart`.
    pub capabilities: Vec<String>,
    pub hold_time: Option<u16>,
    /// The peer restarted and its routes are kept as stale (RFC 4724) until it resends them.
    pub graceful_restart: bool,
}

/// The agent's handle on the speaker. Cloning is cheap; the speaker stops when the last
/// handle is dropped (or on [`Speaker::shutdown`]).
#[derive(Debug, Clone)]
pub struct Speaker {
    tx: mpsc::Sender<Command>,
}

#[derive(Debug)]
enum Command {
    AddPeer(Box<PeerConfig>, oneshot::Sender<Result<(), Error>>),
    RemovePeer(IpAddr, oneshot::Sender<Result<(), Error>>),
    Originate(IpNet, oneshot::Sender<()>),
    Withdraw(IpNet, oneshot::Sender<()>),
    SetImportAllow(Option<Vec<IpNet>>, oneshot::Sender<()>),
    SetAsn(u32, oneshot::Sender<()>),
    SetClusterId(Option<Ipv4Addr>, oneshot::Sender<()>),
    Subscribe(oneshot::Sender<(u64, mpsc::Receiver<Queued>)>),
    /// Subscriber `id` reads again after falling behind (or for the first time): it wants
    /// the table, and the changes after it.
    Resync {
        id: u64,
        reply: oneshot::Sender<Resynced>,
    },
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Shutdown {
        graceful: bool,
        reply: oneshot::Sender<()>,
    },
}

const COMMAND_QUEUE: usize = 64;
const EVENT_QUEUE: usize = 256;
/// Batches queued per subscriber. The last slot is kept for the lag marker.
const SUBSCRIBER_QUEUE: usize = 64;
/// Prefixes per Adj-RIB-Out batch: a few hundred UPDATEs, written in one go.
const OUT_BATCH: usize = 16 * 1024;
/// At most this many queued session events are folded into one subscriber batch ...
const COALESCE_EVENTS: usize = 256;
/// ... and at most about this many changes.
const COALESCE_CHANGES: usize = 16 * 1024;

impl Speaker {
    /// Binds the listener (if configured) and starts the speaker task.
    pub async fn start(cfg: SpeakerConfig) -> Result<Speaker, Error> {
        let listener = match cfg.listen {
            Some(addr) => Some(listen(addr).map_err(|source| Error::Listen { addr, source })?),
            None => None,
        };
        if let Some(l) = &listener
            && let Ok(addr) = l.local_addr()
        {
            info!(%addr, "BGP listening");
        }
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let rib = Rib::new(RibConfig {
            router_id: cfg.router_id,
            asn: cfg.asn,
            cluster_id: cfg.cluster_id.unwrap_or(cfg.router_id),
            import_allow: cfg.import_allow.clone(),
            restarting: cfg.restarting,
        });
        let owner = Owner {
            sync_deadline: Instant::now() + cfg.deferral_time,
            cfg,
            rib,
            by_address: HashMap::new(),
            peers: HashMap::new(),
            listener,
            events_tx,
            subscribers: Vec::new(),
            next_subscriber: 0,
            pending: Vec::new(),
            generation: 0,
            sync_done: false,
            seed: random_seed(),
        };
        let span = tracing::info_span!("bgp_speaker");
        tokio::spawn(owner.run(rx, events_rx).instrument(span));
        Ok(Speaker { tx })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Adds a peer and starts its session.
    pub async fn add_peer(&self, cfg: PeerConfig) -> Result<(), Error> {
        self.ask(|r| Command::AddPeer(Box::new(cfg), r)).await?
    }

    /// Closes the session with Cease / Administrative Shutdown and forgets the peer's routes.
    pub async fn remove_peer(&self, address: IpAddr) -> Result<(), Error> {
        self.ask(|r| Command::RemovePeer(address, r)).await?
    }

    /// Advertises a prefix to every peer.
    pub async fn originate(&self, prefix: IpNet) -> Result<(), Error> {
        self.ask(|r| Command::Originate(prefix, r)).await
    }

    /// Stops advertising a prefix.
    pub async fn withdraw(&self, prefix: IpNet) -> Result<(), Error> {
        self.ask(|r| Command::Withdraw(prefix, r)).await
    }

    /// Replaces the speaker-wide import pools (`SpeakerConfig::import_allow`; `None`
    /// accepts everything). Routes now outside are removed at once; every peer that
    /// supports route refresh (RFC 2918) is asked for its table again, so routes it sent
    /// while they were refused come back.
    pub async fn set_import_allow(&self, allow: Option<Vec<IpNet>>) -> Result<(), Error> {
        self.ask(|r| Command::SetImportAllow(allow, r)).await
    }

    /// Changes our AS number. The AS is in every OPEN, so each session is closed and
    /// started again with the same settings, and the routes learned over it are dropped
    /// until it is back. Without peers (or with the same AS) nothing is disturbed.
    pub async fn set_asn(&self, asn: u32) -> Result<(), Error> {
        self.ask(|r| Command::SetAsn(asn, r)).await
    }

    /// Changes our RFC 4456 CLUSTER_ID (`None`: the router id). Paths already reflected
    /// carry the old one, so, as for the AS, every session starts again.
    pub async fn set_cluster_id(&self, cluster_id: Option<Ipv4Addr>) -> Result<(), Error> {
        self.ask(|r| Command::SetClusterId(cluster_id, r)).await
    }

    /// A stream of Loc-RIB events: the current table ([`RibEvent::Resync`]), then changes.
    /// The speaker never waits for a subscriber: one that leaves 63 batches unread loses
    /// the changes from then on and gets the whole table again when it next reads.
    pub async fn subscribe(&self) -> Result<Subscription, Error> {
        let (id, rx) = self.ask(Command::Subscribe).await?;
        Ok(Subscription {
            id,
            rx,
            speaker: self.tx.downgrade(),
            // The table comes first, fetched by the first `recv`.
            lagged: true,
            resync: None,
            sync_done: false,
            sync_done_owed: false,
        })
    }

    /// A snapshot of every peer, sorted by address.
    pub async fn peer_status(&self) -> Result<Vec<PeerStatus>, Error> {
        self.ask(Command::Status).await
    }

    /// Closes every session with Cease / Administrative Shutdown and stops the speaker.
    /// Peers drop our routes.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.ask(|r| Command::Shutdown {
            graceful: false,
            reply: r,
        })
        .await
    }

    /// Stops the speaker for a planned restart: every connection is closed without a
    /// NOTIFICATION, so peers that negotiated graceful restart keep our routes as stale
    /// until we are back (RFC 4724 §4.2). Start the next speaker with `restarting`.
    pub async fn shutdown_for_restart(&self) -> Result<(), Error> {
        self.ask(|r| Command::Shutdown {
            graceful: true,
            reply: r,
        })
        .await
    }
}

/// One subscriber's end of the Loc-RIB stream (see [`Speaker::subscribe`]). It does not
/// keep the speaker running; it ends when the speaker stops.
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Queued>,
    speaker: mpsc::WeakSender<Command>,
    /// The owner is dropping our changes (we fell behind, or are new): the next event is
    /// the whole table.
    lagged: bool,
    /// The table has been asked for; the answer comes here. Kept across calls so that a
    /// `recv` cancelled by `select!` loses nothing.
    resync: Option<oneshot::Receiver<Resynced>>,
    /// `InitialSyncDone` was handed out: it comes once.
    sync_done: bool,
    /// `InitialSyncDone` is due right after the `Resync` that found sync over.
    sync_done_owed: bool,
}

/// What a subscriber's queue carries.
#[derive(Debug)]
enum Queued {
    Event(RibEvent),
    /// The queue was full: the changes after this were dropped.
    Lagged,
}

/// The owner's answer to [`Command::Resync`].
#[derive(Debug)]
struct Resynced {
    table: Vec<RouteChange>,
    sync_done: bool,
}

impl Subscription {
    /// The next event; `None` once the speaker has stopped. Cancel-safe: it can be a
    /// `select!` branch.
    pub async fn recv(&mut self) -> Option<RibEvent> {
        loop {
            if self.sync_done_owed {
                self.sync_done_owed = false;
                return Some(RibEvent::InitialSyncDone);
            }
            if self.lagged {
                return self.resync().await;
            }
            match self.rx.recv().await? {
                Queued::Lagged => self.lagged = true,
                Queued::Event(RibEvent::InitialSyncDone) if self.sync_done => {}
                Queued::Event(event) => {
                    self.sync_done |= event == RibEvent::InitialSyncDone;
                    return Some(event);
                }
            }
        }
    }

    /// Asks the owner for the table. The owner stops dropping our changes when it answers,
    /// so the changes queued after the answer follow on from it.
    async fn resync(&mut self) -> Option<RibEvent> {
        if self.resync.is_none() {
            let speaker = self.speaker.upgrade()?;
            let (reply, answer) = oneshot::channel();
            // Cancel-safe: if this is dropped before it completes, nothing was sent.
            speaker
                .send(Command::Resync { id: self.id, reply })
                .await
                .ok()?;
            self.resync = Some(answer);
        }
        let answer = self.resync.as_mut()?.await;
        self.resync = None;
        let Resynced { table, sync_done } = answer.ok()?;
        self.lagged = false;
        if sync_done && !self.sync_done {
            self.sync_done = true;
            self.sync_done_owed = true;
        }
        Some(RibEvent::Resync(table))
    }
}

/// The listening socket, with SO_REUSEADDR so that a restarted speaker can bind at once.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

struct PeerEntry {
    cfg: Arc<PeerConfig>,
    key: PeerKey,
    session: SessionHandle,
    state: State,
    since: SystemTime,
    last_error: Option<String>,
    negotiated: Option<Box<Negotiated>>,
    /// An Adj-RIB-Out batch is with the session and not yet written.
    in_flight: bool,
    /// End-of-RIB markers received in the current session.
    eor_received: Vec<Family>,
    /// When the peer's stale routes are swept if its End-of-RIB has not come.
    stale_deadline: Option<Instant>,
}

/// The owner's end of a subscription.
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Queued>,
    /// Its queue filled up (or it is new): its changes are dropped until it asks for the
    /// table ([`Command::Resync`]).
    lagged: bool,
}

impl Subscriber {
    /// Queues `event` without waiting. When only the last slot is left, the subscriber is
    /// marked lagged instead and that slot gets the marker, so it learns to resync.
    /// Returns false once the subscription is gone.
    fn offer(&mut self, event: RibEvent) -> bool {
        if self.lagged {
            return !self.tx.is_closed();
        }
        // The owner is the only sender, so the room seen here can only grow before the
        // `try_send`: it fails only when the subscription is gone.
        let queued = if self.tx.capacity() > 1 {
            Queued::Event(event)
        } else {
            self.lagged = true;
            debug!(
                subscriber = self.id,
                "Loc-RIB subscriber fell behind; it gets the table when it reads again"
            );
            Queued::Lagged
        };
        self.tx.try_send(queued).is_ok()
    }
}

struct Owner {
    cfg: SpeakerConfig,
    rib: Rib,
    by_address: HashMap<IpAddr, PeerId>,
    peers: HashMap<PeerId, PeerEntry>,
    listener: Option<TcpListener>,
    events_tx: mpsc::Sender<ToOwner>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    /// Loc-RIB changes not yet sent to the subscribers.
    pending: Vec<RouteChange>,
    generation: u64,
    sync_deadline: Instant,
    sync_done: bool,
    seed: u64,
}

impl Owner {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, mut events: mpsc::Receiver<ToOwner>) {
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown { graceful, reply }) => {
                        self.shutdown(graceful).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                },
                Some(ev) = events.recv() => {
                    self.event(ev);
                    // Take what else is already queued, so that the subscribers get
                    // the changes of many small UPDATEs as one batch to pipeline.
                    for _ in 0..COALESCE_EVENTS {
                        if self.pending.len() >= COALESCE_CHANGES {
                            break;
                        }
                        match events.try_recv() {
                            Ok(ev) => self.event(ev),
                            Err(_) => break,
                        }
                    }
                }
                accepted = accept(self.listener.as_ref()) => self.inbound(accepted),
                () = sleep_until(deadline) => self.timers(),
            }
            self.flush();
            self.pump();
        }
        // Every handle is gone: end the sessions with the task.
        for entry in self.peers.values() {
            entry.session.task.abort();
        }
    }

    async fn shutdown(&mut self, graceful: bool) {
        let sessions: Vec<SessionHandle> = self.peers.drain().map(|(_, e)| e.session).collect();
        if graceful {
            // Ending the tasks drops their connections: the writers flush and send FIN,
            // and no NOTIFICATION goes out.
            for s in sessions {
                s.task.abort();
                let _ = s.task.await;
            }
            return;
        }
        for s in &sessions {
            let _ = s.tx.try_send(ToSession::Stop);
        }
        for s in sessions {
            let abort = s.task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(2), s.task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let stale = self.peers.values().filter_map(|p| p.stale_deadline);
        let sync = (!self.sync_done).then_some(self.sync_deadline);
        stale.chain(sync).min()
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AddPeer(cfg, reply) => {
                let _ = reply.send(self.add_peer(*cfg));
            }
            Command::RemovePeer(address, reply) => {
                let result = self.remove_peer(address);
                let _ = reply.send(result);
            }
            Command::Originate(prefix, reply) => {
                let changes = self.rib.originate(prefix);
                self.publish(changes);
                let _ = reply.send(());
            }
            Command::Withdraw(prefix, reply) => {
                let changes = self.rib.withdraw_local(prefix);
                self.publish(changes);
                let _ = reply.send(());
            }
            Command::SetImportAllow(allow, reply) => {
                let changes = self.rib.set_import_allow(allow);
                self.publish(changes);
                for entry in self.peers.values() {
                    if entry.negotiated.is_some()
                        && entry.session.tx.try_send(ToSession::Refresh).is_err()
                    {
                        warn!(peer = %entry.cfg.address, "session busy; no ROUTE-REFRESH sent");
                    }
                }
                let _ = reply.send(());
            }
            Command::SetAsn(asn, reply) => {
                if asn != self.cfg.asn {
                    info!(from = self.cfg.asn, to = asn, "AS number changed");
                    self.restart_sessions(|owner| {
                        owner.cfg.asn = asn;
                        owner.rib.set_asn(asn);
                    });
                }
                let _ = reply.send(());
            }
            Command::SetClusterId(cluster_id, reply) => {
                if cluster_id != self.cfg.cluster_id {
                    info!(from = ?self.cfg.cluster_id, to = ?cluster_id, "cluster id changed");
                    self.restart_sessions(|owner| {
                        owner.cfg.cluster_id = cluster_id;
                        owner
                            .rib
                            .set_cluster_id(cluster_id.unwrap_or(owner.cfg.router_id));
                    });
                }
                let _ = reply.send(());
            }
            Command::Subscribe(reply) => {
                // New subscribers start lagged: their first read fetches the table.
                self.next_subscriber += 1;
                let id = self.next_subscriber;
                let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
                if reply.send((id, rx)).is_ok() {
                    self.subscribers.push(Subscriber {
                        id,
                        tx,
                        lagged: true,
                    });
                }
            }
            Command::Resync { id, reply } => {
                // The others get what is pending first; this subscriber, still lagged,
                // finds it in the table.
                self.flush();
                let table = self.rib.snapshot();
                if let Some(sub) = self.subscribers.iter_mut().find(|s| s.id == id) {
                    sub.lagged = false;
                }
                let _ = reply.send(Resynced {
                    table,
                    sync_done: self.sync_done,
                });
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown { reply, .. } => {
                let _ = reply.send(());
            }
        }
    }

    fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), Error> {
        cfg.validate()?;
        let address = cfg.address.to_canonical();
        if self.by_address.contains_key(&address) {
            return Err(Error::DuplicatePeer(address));
        }
        if !self.rib.has_room() {
            return Err(Error::TooManyPeers);
        }
        if let (Some(listener), Some(password)) = (&self.listener, &cfg.password) {
            let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
            md5::set_md5_key(listener, v6, address, password.as_bytes()).map_err(|source| {
                Error::Md5 {
                    peer: address,
                    source,
                }
            })?;
        }
        let id = self.rib.add_peer(PeerPolicy {
            address,
            asn: cfg.asn,
            route_reflector_client: cfg.route_reflector_client,
            import_allow: cfg.import_allow.clone(),
            export_allow: cfg.export_allow.clone(),
            keep_original_next_hop: cfg.keep_original_next_hop,
        });
        self.generation += 1;
        let key = PeerKey {
            id,
            generation: self.generation,
        };
        let graceful_restart = cfg.graceful_restart.then(|| GracefulRestart {
            restart_state: self.cfg.restarting,
            notification: false,
            restart_time: cfg.restart_time,
            // Forwarding survives our restart: the agent keeps the kernel routes.
            families: [Family::IPV4_UNICAST, Family::IPV6_UNICAST]
                .into_iter()
                .map(|family| GracefulRestartFamily {
                    family,
                    forwarding_preserved: true,
                })
                .collect(),
        });
        let fsm = Fsm::new(
            FsmConfig {
                local_asn: self.cfg.asn,
                router_id: self.cfg.router_id,
                peer_asn: cfg.asn,
                hold_time: cfg.hold_time,
                passive: cfg.passive,
                connect_retry: cfg.connect_retry,
                connect_retry_max: std::time::Duration::from_secs(120),
                families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
                graceful_restart,
            },
            Jitter::new(self.seed ^ u64::from(id) ^ self.generation.rotate_left(32)),
        );
        let cfg = Arc::new(PeerConfig { address, ..cfg });
        let settings = SessionSettings {
            local_ipv6: self.cfg.local_ipv6,
            local_ipv4: self.cfg.local_ipv4,
        };
        let session = session::spawn(key, Arc::clone(&cfg), fsm, settings, self.events_tx.clone());
        info!(peer = %address, asn = cfg.asn, passive = cfg.passive, "peer added");
        self.by_address.insert(address, id);
        self.peers.insert(
            id,
            PeerEntry {
                cfg,
                key,
                session,
                state: State::Idle,
                since: SystemTime::now(),
                last_error: None,
                negotiated: None,
                in_flight: false,
                eor_received: Vec::new(),
                stale_deadline: None,
            },
        );
        Ok(())
    }

    fn remove_peer(&mut self, address: IpAddr) -> Result<(), Error> {
        let address = address.to_canonical();
        let id = self
            .by_address
            .remove(&address)
            .ok_or(Error::UnknownPeer(address))?;
        if let Some(entry) = self.peers.remove(&id) {
            // The session sends its Cease and ends by itself.
            if entry.session.tx.try_send(ToSession::Stop).is_err() {
                entry.session.task.abort();
            }
            if entry.cfg.password.is_some()
                && let Some(listener) = &self.listener
            {
                let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
                if let Err(e) = md5::set_md5_key(listener, v6, address, b"") {
                    warn!(peer = %address, error = %e, "cannot remove the TCP MD5 key");
                }
            }
        }
        let changes = self.rib.remove_peer(id);
        self.publish(changes);
        info!(peer = %address, "peer removed");
        self.check_sync();
        Ok(())
    }

    /// Removes every peer, applies `change` to a speaker without peers, and adds the peers
    /// back with their settings: for what every session depends on (the AS in the OPEN,
    /// the CLUSTER_ID in reflected paths).
    fn restart_sessions(&mut self, change: impl FnOnce(&mut Self)) {
        let mut peers: Vec<PeerConfig> = self.peers.values().map(|e| (*e.cfg).clone()).collect();
        peers.sort_by_key(|p| p.address);
        for p in &peers {
            if let Err(e) = self.remove_peer(p.address) {
                warn!(peer = %p.address, error = %e, "cannot remove a peer to restart its session");
            }
        }
        change(self);
        info!(sessions = peers.len(), "every session starts again");
        for p in peers {
            let address = p.address;
            if let Err(e) = self.add_peer(p) {
                warn!(peer = %address, error = %e, "cannot add a peer back to restart its session");
            }
        }
    }

    /// Tells the session to close if its peer has sent more prefixes than it may.
    fn check_max_prefixes(&mut self, key: PeerKey) {
        let received = self.rib.counts(key.id).received;
        let Some(entry) = self.current(key) else {
            return;
        };
        let Some(max) = entry.cfg.max_prefixes else {
            return;
        };
        if received > max as usize && entry.state == State::Established {
            warn!(peer = %entry.cfg.address, received, max, "peer exceeded its maximum number of prefixes: closing the session");
            if entry
                .session
                .tx
                .try_send(ToSession::MaxPrefixesReached)
                .is_err()
            {
                warn!(peer = %entry.cfg.address, "session busy: the prefix limit is enforced at its next UPDATE");
            }
        }
    }

    fn current(&mut self, key: PeerKey) -> Option<&mut PeerEntry> {
        self.peers.get_mut(&key.id).filter(|e| e.key == key)
    }

    fn event(&mut self, ev: ToOwner) {
        match ev {
            ToOwner::State {
                key,
                state,
                last_error,
            } => {
                if let Some(entry) = self.current(key) {
                    if entry.state != state {
                        entry.since = SystemTime::now();
                    }
                    entry.state = state;
                    if last_error.is_some() {
                        entry.last_error = last_error;
                    }
                }
            }
            ToOwner::Up {
                key,
                info,
                negotiated,
            } => {
                let stale_time = self.cfg.stale_time;
                let Some(entry) = self.current(key) else {
                    return;
                };
                entry.negotiated = Some(negotiated);
                entry.in_flight = false;
                entry.eor_received.clear();
                let changes = self.rib.peer_up(key.id, info);
                if self.rib.has_stale(key.id)
                    && let Some(entry) = self.current(key)
                {
                    // Its End-of-RIB has this long to come (RFC 4724 §4.2).
                    entry.stale_deadline = Some(Instant::now() + stale_time);
                }
                self.publish(changes);
            }
            ToOwner::Down {
                key,
                graceful,
                reason,
            } => {
                let Some(entry) = self.current(key) else {
                    return;
                };
                let restart_time = entry
                    .negotiated
                    .as_ref()
                    .and_then(|n| n.peer_graceful_restart.as_ref())
                    .map(|gr| gr.restart_time);
                entry.negotiated = None;
                entry.in_flight = false;
                entry.eor_received.clear();
                entry.last_error = Some(reason);
                let keep =
                    graceful && entry.cfg.graceful_restart && restart_time.is_some_and(|t| t > 0);
                if keep {
                    let secs = u64::from(restart_time.unwrap_or(0));
                    entry.stale_deadline =
                        Some(Instant::now() + std::time::Duration::from_secs(secs));
                    info!(peer = %entry.cfg.address, restart_time = secs, "keeping routes as stale");
                }
                let changes = self.rib.peer_down(key.id, keep);
                self.publish(changes);
            }
            ToOwner::Routes { key, routes } => {
                if self.current(key).is_none() {
                    return;
                }
                let changes = self.rib.update(key.id, routes);
                self.publish(changes);
                self.check_max_prefixes(key);
            }
            ToOwner::EndOfRib { key, family } => {
                let Some(entry) = self.current(key) else {
                    return;
                };
                if !entry.eor_received.contains(&family) {
                    entry.eor_received.push(family);
                }
                let changes = self.rib.end_of_rib(key.id, family);
                let stale = self.rib.has_stale(key.id);
                if let Some(entry) = self.current(key)
                    && !stale
                {
                    entry.stale_deadline = None;
                }
                self.publish(changes);
                self.check_sync();
            }
            ToOwner::RouteRefresh { key, family } => {
                if self.current(key).is_some() {
                    self.rib.route_refresh(key.id, family);
                }
            }
            ToOwner::Drained { key } => {
                if let Some(entry) = self.current(key) {
                    entry.in_flight = false;
                }
            }
        }
    }

    fn inbound(&mut self, accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>) {
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                return;
            }
        };
        let address = from.ip().to_canonical();
        let Some(entry) = self
            .by_address
            .get(&address)
            .and_then(|id| self.peers.get(id))
        else {
            debug!(%from, "connection from an unknown address closed");
            return;
        };
        if entry
            .session
            .tx
            .try_send(ToSession::Inbound(stream))
            .is_err()
        {
            debug!(%from, "session busy; connection closed");
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.stale_deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(entry) = self.peers.get_mut(&id) {
                entry.stale_deadline = None;
                info!(peer = %entry.cfg.address, "restart timer expired; sweeping stale routes");
            }
            let changes = self.rib.sweep_stale(id);
            self.publish(changes);
        }
        if !self.sync_done && self.sync_deadline <= now {
            info!("deferral timer expired; initial sync done without every End-of-RIB");
            self.finish_sync();
        }
    }

    /// Initial sync ends when every peer is Established and sent End-of-RIB for each
    /// negotiated family.
    fn check_sync(&mut self) {
        if self.sync_done || self.peers.is_empty() {
            return;
        }
        let all = self.peers.values().all(|e| {
            e.negotiated
                .as_ref()
                .is_some_and(|n| n.families.iter().all(|f| e.eor_received.contains(f)))
        });
        if all {
            self.finish_sync();
        }
    }

    fn finish_sync(&mut self) {
        self.sync_done = true;
        self.rib.initial_sync_done();
        info!("initial sync done");
        // The changes that completed the sync go first.
        self.flush();
        self.broadcast(RibEvent::InitialSyncDone);
    }

    /// Queues Loc-RIB changes for the subscribers; [`Owner::flush`] sends them.
    fn publish(&mut self, changes: Vec<RouteChange>) {
        if self.pending.is_empty() {
            self.pending = changes;
        } else {
            self.pending.extend(changes);
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let changes = std::mem::take(&mut self.pending);
            self.broadcast(RibEvent::Changes(changes));
        }
    }

    /// Offers `event` to every subscriber without waiting for any (see
    /// [`Subscriber::offer`]) and forgets the subscriptions that are gone.
    fn broadcast(&mut self, event: RibEvent) {
        let last = self.subscribers.len();
        let mut event = Some(event);
        let mut n = 0;
        self.subscribers.retain_mut(|sub| {
            n += 1;
            // The last one gets the event itself, the others a copy.
            let ev = if n == last {
                event.take()
            } else {
                event.clone()
            };
            ev.is_some_and(|ev| sub.offer(ev))
        });
    }

    /// Hands each established peer its next Adj-RIB-Out batch, one at a time.
    fn pump(&mut self) {
        for id in self.rib.peers_with_output() {
            let Some(entry) = self.peers.get_mut(&id) else {
                continue;
            };
            if entry.in_flight || entry.state != State::Established || entry.negotiated.is_none() {
                continue;
            }
            let Ok(permit) = entry.session.tx.try_reserve() else {
                continue;
            };
            let batch = self.rib.take_out(id, OUT_BATCH);
            if batch.is_empty() {
                continue;
            }
            entry.in_flight = true;
            permit.send(ToSession::Out(batch));
        }
    }

    fn status(&self) -> Vec<PeerStatus> {
        let mut out: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(id, e)| {
                let counts = self.rib.counts(*id);
                PeerStatus {
                    address: e.cfg.address,
                    asn: e.cfg.asn,
                    peer_type: e.cfg.peer_type.clone(),
                    state: e.state,
                    since: e.since,
                    last_error: e.last_error.clone(),
                    router_id: e.negotiated.as_ref().map(|n| n.peer_id),
                    prefixes_received: counts.received,
                    prefixes_accepted: counts.accepted,
                    capabilities: e
                        .negotiated
                        .as_ref()
                        .map(|n| n.capability_names())
                        .unwrap_or_default(),
                    hold_time: e.negotiated.as_ref().map(|n| n.hold_time),
                    graceful_restart: self.rib.has_stale(*id),
                }
            })
            .collect();
        out.sort_by_key(|s| s.address);
        out
    }
}

async fn accept(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(i: u32) -> RouteChange {
        RouteChange::Add {
            prefix: IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24)
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            next_hop: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        }
    }

    #[test]
    fn a_full_queue_marks_the_subscriber_lagged_instead_of_waiting() {
        let (tx, mut rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut sub = Subscriber {
            id: 1,
            tx,
            lagged: false,
        };
        for i in 0..1000 {
            assert!(sub.offer(RibEvent::Changes(vec![add(i)])));
        }
        assert!(sub.lagged);
        for i in 0..SUBSCRIBER_QUEUE as u32 - 1 {
            match rx.try_recv() {
                Ok(Queued::Event(RibEvent::Changes(c))) => assert_eq!(c, vec![add(i)]),
                other => panic!("event {i}: {other:?}"),
            }
        }
        assert!(matches!(rx.try_recv(), Ok(Queued::Lagged)));
        assert!(rx.try_recv().is_err(), "nothing is queued after the marker");
        drop(rx);
        assert!(
            !sub.offer(RibEvent::InitialSyncDone),
            "a dropped subscription is gone"
        );
    }

    /// A subscription against a stand-in owner that answers `Resync` with `table`.
    fn subscription(
        table: Vec<RouteChange>,
        sync_done: bool,
    ) -> (Subscription, mpsc::Sender<Queued>, mpsc::Sender<Command>) {
        let (cmd_tx, mut cmd_rx) = mpsc::channel(4);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                if let Command::Resync { id: 7, reply } = cmd {
                    let _ = reply.send(Resynced {
                        table: table.clone(),
                        sync_done,
                    });
                }
            }
        });
        let sub = Subscription {
            id: 7,
            rx,
            speaker: cmd_tx.downgrade(),
            lagged: false,
            resync: None,
            sync_done: false,
            sync_done_owed: false,
        };
        (sub, tx, cmd_tx)
    }

    #[tokio::test]
    async fn after_the_lag_marker_comes_the_table_then_initial_sync_once() {
        let table = vec![add(1), add(2)];
        let (mut sub, tx, _owner) = subscription(table.clone(), true);
        let _ = tx.try_send(Queued::Event(RibEvent::Changes(vec![add(0)])));
        let _ = tx.try_send(Queued::Lagged);
        assert_eq!(sub.recv().await, Some(RibEvent::Changes(vec![add(0)])));
        assert_eq!(sub.recv().await, Some(RibEvent::Resync(table)));
        // Sync finished while the changes were being dropped: it is owed once.
        assert_eq!(sub.recv().await, Some(RibEvent::InitialSyncDone));
        let _ = tx.try_send(Queued::Event(RibEvent::InitialSyncDone));
        let _ = tx.try_send(Queued::Event(RibEvent::Changes(vec![add(3)])));
        assert_eq!(sub.recv().await, Some(RibEvent::Changes(vec![add(3)])));
        drop(tx);
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test]
    async fn a_cancelled_recv_does_not_lose_the_resync() {
        let (cmd_tx, mut cmd_rx) = mpsc::channel(4);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut sub = Subscription {
            id: 7,
            rx,
            speaker: cmd_tx.downgrade(),
            lagged: false,
            resync: None,
            sync_done: false,
            sync_done_owed: false,
        };
        let _ = tx.try_send(Queued::Lagged);
        // The read is cancelled while the owner has not answered yet.
        let wait = std::time::Duration::from_millis(20);
        assert!(tokio::time::timeout(wait, sub.recv()).await.is_err());
        let Ok(Command::Resync { reply, .. }) = cmd_rx.try_recv() else {
            panic!("no resync asked for");
        };
        let _ = reply.send(Resynced {
            table: vec![add(1)],
            sync_done: false,
        });
        // The next read takes that answer; it does not ask again.
        assert_eq!(sub.recv().await, Some(RibEvent::Resync(vec![add(1)])));
        assert!(cmd_rx.try_recv().is_err());
    }
}
