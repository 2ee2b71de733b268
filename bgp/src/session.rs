//! The tokio driver of one peer: sockets and timers around the pure [`Fsm`].
//!
//! One task per peer runs the FSM. Each TCP connection gets a reader task, which cuts
//! the byte stream into frames, and a writer task, which writes what it is given and
//! tells the speaker when a batch of UPDATEs has left. Decoding happens in the peer task,
//! where the negotiated [`Codec`] lives. A malformed message ends only this peer's
//! session; the speaker and the other peers carry on.
//!
//! Channels are bounded. The peer task never waits on its writer (it hands over at most
//! one batch of UPDATEs at a time, on credit from the speaker), so two speakers flooding
//! each other cannot deadlock.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use crate::config::PeerConfig;
use crate::fsm::{Action, ConnId, Direction, Event, Fsm, Negotiated, State, Timer};
use crate::md5;
use crate::rib::{Attrs, OutBatch, PeerId, Routes, SessionInfo};
use crate::wire::{
    Codec, Family, HEADER_LEN, MAX_MESSAGE_LEN, Message, MpReach, NextHop, RouteRefresh, Update,
    UpdateStatus, decode_frame, encode_into, pack_announce, pack_withdraw,
};

/// Identifies a session task to the speaker. The generation tells a removed peer's late
/// events apart from those of a new peer in the same RIB slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey {
    pub id: PeerId,
    pub generation: u64,
}

/// What a session tells the speaker.
#[derive(Debug)]
pub(crate) enum ToOwner {
    State {
        key: PeerKey,
        state: State,
        last_error: Option<String>,
    },
    Up {
        key: PeerKey,
        info: SessionInfo,
        negotiated: Box<Negotiated>,
    },
    Down {
        key: PeerKey,
        graceful: bool,
        reason: String,
    },
    Routes {
        key: PeerKey,
        routes: Routes,
    },
    EndOfRib {
        key: PeerKey,
        family: Family,
    },
    RouteRefresh {
        key: PeerKey,
        family: Family,
    },
    /// The batch of UPDATEs handed to the session has been written: send the next one.
    Drained {
        key: PeerKey,
    },
}

/// What the speaker tells a session.
#[derive(Debug)]
pub(crate) enum ToSession {
    /// The listener accepted a connection from this peer.
    Inbound(TcpStream),
    /// UPDATEs to send. At most one is outstanding until `Drained` comes back.
    Out(OutBatch),
    /// Ask the peer to send its table again (RFC 2918), for every negotiated family.
    Refresh,
    /// Close with Cease and end the task.
    Stop,
    /// The peer sent too many prefixes: close with Cease (RFC 4486 subcode 1) and stay
    /// down, keeping the task so that the peer's status shows why.
    MaxPrefixesReached,
}

/// Speaker-wide settings a session needs.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub local_ipv6: Option<Ipv6Addr>,
    pub local_ipv4: Option<Ipv4Addr>,
}

/// The speaker's handle on a session task.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub tx: mpsc::Sender<ToSession>,
    pub task: JoinHandle<()>,
}

const COMMAND_QUEUE: usize = 8;
const IO_QUEUE: usize = 64;
const WRITE_QUEUE: usize = 32;
/// Reads are large so that a full table arrives in few system calls.
const READ_CHUNK: usize = 256 * 1024;
/// How long an outbound TCP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing connection may take to flush its last messages.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn spawn(
    key: PeerKey,
    cfg: Arc<PeerConfig>,
    fsm: Fsm,
    settings: SessionSettings,
    owner: mpsc::Sender<ToOwner>,
) -> SessionHandle {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let span = tracing::info_span!("bgp_peer", peer = %cfg.address);
    let (io_tx, io_rx) = mpsc::channel(IO_QUEUE);
    let session = Session {
        key,
        cfg,
        fsm,
        settings,
        owner,
        io_tx,
        conns: HashMap::new(),
        next_conn: 1,
        connect: None,
        attempt: 0,
        timers: HashMap::new(),
        codec: Codec::default(),
        families: Vec::new(),
        reported: (State::Idle, None),
    };
    let task = tokio::spawn(session.run(rx, io_rx).instrument(span));
    SessionHandle { tx, task }
}

/// What reader tasks and connection attempts report.
#[derive(Debug)]
enum IoEvent {
    Connected {
        attempt: u64,
        result: io::Result<TcpStream>,
    },
    Frames(ConnId, Vec<Bytes>),
    Closed(ConnId, String),
}

enum WriteMsg {
    Control(Bytes),
    /// UPDATEs handed over on credit: report `Drained` once written.
    Data(Bytes),
}

struct Conn {
    writer: mpsc::Sender<WriteMsg>,
    writer_task: JoinHandle<()>,
    reader_task: AbortOnDrop,
    local: SocketAddr,
}

/// Ends the reader with the connection, also when the session task itself is aborted.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Session {
    key: PeerKey,
    cfg: Arc<PeerConfig>,
    fsm: Fsm,
    settings: SessionSettings,
    owner: mpsc::Sender<ToOwner>,
    io_tx: mpsc::Sender<IoEvent>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    connect: Option<JoinHandle<()>>,
    attempt: u64,
    timers: HashMap<Timer, Instant>,
    codec: Codec,
    /// Families negotiated for the current session.
    families: Vec<Family>,
    /// What the speaker last heard about our state.
    reported: (State, Option<String>),
}

impl Session {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<ToSession>,
        mut io_rx: mpsc::Receiver<IoEvent>,
    ) {
        self.apply(Event::Start).await;
        loop {
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    None | Some(ToSession::Stop) => {
                        self.apply(Event::Stop).await;
                        break;
                    }
                    Some(ToSession::Inbound(stream)) => {
                        if let Some(id) = self.add_conn(stream) {
                            self.apply(Event::TcpUp(id, Direction::Inbound)).await;
                        }
                    }
                    Some(ToSession::Out(batch)) => self.send_batch(batch).await,
                    Some(ToSession::Refresh) => self.request_refresh(),
                    Some(ToSession::MaxPrefixesReached) => {
                        self.apply(Event::MaxPrefixesReached).await;
                    }
                },
                Some(ev) = io_rx.recv() => self.io(ev).await,
                () = sleep_until(deadline) => self.fire_timers().await,
            }
        }
        if let Some(task) = self.connect.take() {
            task.abort();
        }
        for id in self.conns.keys().copied().collect::<Vec<_>>() {
            self.close(id);
        }
    }

    /// Feeds the FSM and carries out what it asks.
    async fn apply(&mut self, event: Event) {
        let actions = self.fsm.handle(event);
        for action in actions {
            self.act(action).await;
        }
        let now = (self.fsm.state(), self.fsm.last_error().map(str::to_owned));
        if now != self.reported {
            if now.0 != self.reported.0 {
                debug!(from = %self.reported.0, to = %now.0, "state change");
            }
            self.reported = now.clone();
            let _ = self
                .owner
                .send(ToOwner::State {
                    key: self.key,
                    state: now.0,
                    last_error: now.1,
                })
                .await;
        }
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Connect => self.start_connect(),
            Action::CancelConnect => {
                if let Some(task) = self.connect.take() {
                    task.abort();
                }
            }
            Action::Send(id, message) => {
                if let Message::Notification(note) = &message {
                    info!(
                        code = note.code,
                        subcode = note.subcode,
                        "sending NOTIFICATION"
                    );
                }
                let mut buf = BytesMut::new();
                match encode_into(&message, &self.codec, &mut buf) {
                    Ok(()) => self.write(id, WriteMsg::Control(buf.freeze())),
                    Err(e) => warn!(error = %e, "cannot encode {} message", message_name(&message)),
                }
            }
            Action::Close(id) => self.close(id),
            Action::StartTimer(timer, after) => {
                self.timers.insert(timer, Instant::now() + after);
            }
            Action::StopTimer(timer) => {
                self.timers.remove(&timer);
            }
            Action::Established(id, negotiated) => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                info!(peer_id = %negotiated.peer_id, hold = negotiated.hold_time, "session established");
                self.codec = negotiated.codec;
                self.families = negotiated.families.clone();
                // RFC 4724 §4.1: the R bit belongs only to the OPENs right after our restart.
                self.fsm.clear_restart_state();
                let graceful_restart = negotiated.peer_graceful_restart.as_ref().map(|gr| {
                    gr.families
                        .iter()
                        .map(|f| (f.family, f.forwarding_preserved))
                        .collect()
                });
                let info = SessionInfo {
                    router_id: negotiated.peer_id,
                    families: negotiated.families.clone(),
                    local_address: conn.local.ip().to_canonical(),
                    local_ipv6: self.settings.local_ipv6,
                    local_ipv4: self.settings.local_ipv4,
                    graceful_restart,
                    peer_restarting: negotiated
                        .peer_graceful_restart
                        .as_ref()
                        .is_some_and(|gr| gr.restart_state),
                };
                let _ = self
                    .owner
                    .send(ToOwner::Up {
                        key: self.key,
                        info,
                        negotiated,
                    })
                    .await;
            }
            Action::Down { graceful, reason } => {
                info!(graceful, %reason, "session down");
                self.codec = Codec::default();
                self.families.clear();
                let _ = self
                    .owner
                    .send(ToOwner::Down {
                        key: self.key,
                        graceful,
                        reason,
                    })
                    .await;
            }
        }
    }

    fn start_connect(&mut self) {
        if let Some(task) = self.connect.take() {
            task.abort();
        }
        self.attempt += 1;
        let attempt = self.attempt;
        let cfg = Arc::clone(&self.cfg);
        let io_tx = self.io_tx.clone();
        self.connect = Some(tokio::spawn(
            async move {
                let result = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&cfg)).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
                };
                let _ = io_tx.send(IoEvent::Connected { attempt, result }).await;
            }
            .in_current_span(),
        ));
    }

    /// Takes a new TCP connection into the session: a reader and a writer task.
    fn add_conn(&mut self, stream: TcpStream) -> Option<ConnId> {
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "new connection has no local address");
                return None;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let (rd, wr) = stream.into_split();
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        let reader_task = AbortOnDrop(tokio::spawn(
            read_frames(id, rd, self.io_tx.clone()).in_current_span(),
        ));
        let writer_task = tokio::spawn(
            write_loop(
                id,
                wr,
                wrx,
                self.io_tx.clone(),
                self.owner.clone(),
                self.key,
            )
            .in_current_span(),
        );
        self.conns.insert(
            id,
            Conn {
                writer: wtx,
                writer_task,
                reader_task,
                local,
            },
        );
        Some(id)
    }

    fn write(&mut self, id: ConnId, msg: WriteMsg) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.writer.try_send(msg).is_err() {
            // The writer is hundreds of messages behind: the peer is not reading.
            warn!("peer is not reading; closing the connection");
            let io_tx = self.io_tx.clone();
            // Report through the I/O channel so the FSM hears of it in order.
            tokio::spawn(async move {
                let _ = io_tx
                    .send(IoEvent::Closed(id, "peer is not reading".to_owned()))
                    .await;
            });
        }
    }

    /// Stops reading and lets the writer flush what it has (a NOTIFICATION, usually).
    fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        drop(conn.reader_task);
        drop(conn.writer);
        let writer = conn.writer_task;
        tokio::spawn(async move {
            let abort = writer.abort_handle();
            if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
                abort.abort();
            }
        });
    }

    async fn io(&mut self, ev: IoEvent) {
        match ev {
            IoEvent::Connected { attempt, result } => {
                if attempt != self.attempt || self.connect.is_none() {
                    // An attempt that was cancelled but finished anyway.
                    return;
                }
                self.connect = None;
                match result {
                    Ok(stream) => {
                        if let Some(id) = self.add_conn(stream) {
                            self.apply(Event::TcpUp(id, Direction::Outbound)).await;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "connect failed");
                        self.apply(Event::ConnectFailed).await;
                    }
                }
            }
            IoEvent::Frames(id, frames) => {
                for frame in frames {
                    if !self.conns.contains_key(&id) {
                        break;
                    }
                    self.frame(id, &frame).await;
                }
            }
            IoEvent::Closed(id, reason) => {
                if self.conns.contains_key(&id) {
                    debug!(%reason, "connection closed");
                    self.apply(Event::TcpClosed(id)).await;
                    self.close(id);
                }
            }
        }
    }

    async fn frame(&mut self, id: ConnId, frame: &[u8]) {
        let message = match decode_frame(frame, &self.codec) {
            Ok(Some((message, _))) => message,
            Ok(None) => {
                // The reader only hands over whole frames; a short one is a framing bug
                // on the peer's side that the header check did not catch.
                warn!("incomplete message");
                return;
            }
            Err(e) => {
                warn!(error = %e, "malformed message from peer");
                self.apply(Event::MessageError(id, e.notification)).await;
                return;
            }
        };
        match message {
            Message::Open(open) => self.apply(Event::Open(id, open)).await,
            Message::Keepalive => self.apply(Event::Keepalive(id)).await,
            Message::Notification(note) => self.apply(Event::Notification(id, note)).await,
            Message::RouteRefresh(rr) => {
                self.apply(Event::RouteRefresh(id)).await;
                if self.established_on(id) && self.families.contains(&rr.family) {
                    let ev = ToOwner::RouteRefresh {
                        key: self.key,
                        family: rr.family,
                    };
                    let _ = self.owner.send(ev).await;
                }
            }
            Message::Update(update) => {
                self.apply(Event::Update(id)).await;
                if self.established_on(id) {
                    self.update(update).await;
                }
            }
        }
    }

    /// The connection the session is Established on, if it is.
    fn established_conn(&self) -> Option<ConnId> {
        self.fsm
            .conn()
            .filter(|_| self.fsm.state() == State::Established)
    }

    fn established_on(&self, id: ConnId) -> bool {
        self.established_conn() == Some(id)
    }

    async fn update(&mut self, mut update: Update) {
        match &update.status {
            UpdateStatus::Ok => {}
            UpdateStatus::AttributeDiscard(issues) => {
                for issue in issues {
                    warn!(%issue, "malformed attribute discarded (RFC 7606)");
                }
            }
            UpdateStatus::TreatAsWithdraw(issue) => {
                warn!(%issue, "malformed UPDATE treated as withdraw (RFC 7606)");
            }
        }
        if let Some(family) = update.end_of_rib_family() {
            debug!(%family, "End-of-RIB received");
            let _ = self
                .owner
                .send(ToOwner::EndOfRib {
                    key: self.key,
                    family,
                })
                .await;
            return;
        }
        let negotiated = |p: &IpNet| self.families.contains(&Family::of(p));
        let withdrawn: Vec<IpNet> = update.withdrawals().filter(negotiated).collect();
        let mut announced = Vec::new();
        // Taken, not cloned: its NLRI moves on into `Routes` as it is.
        let mp_reach = update.attributes.mp_reach.take();
        let attrs = &update.attributes;
        if !update.nlri.is_empty()
            && self.families.contains(&Family::IPV4_UNICAST)
            && let Some(nh) = attrs.next_hop
        {
            let prefixes = update.nlri.iter().map(|p| IpNet::V4(*p)).collect();
            announced.push((Attrs::from_wire(attrs, NextHop::V4(nh)), prefixes));
        }
        if let Some(reach) = mp_reach
            && !reach.nlri.is_empty()
            && self.families.contains(&reach.family)
        {
            announced.push((Attrs::from_wire(attrs, reach.next_hop), reach.nlri));
        }
        if withdrawn.is_empty() && announced.is_empty() {
            return;
        }
        let routes = Routes {
            withdrawn,
            announced,
        };
        let _ = self
            .owner
            .send(ToOwner::Routes {
                key: self.key,
                routes,
            })
            .await;
    }

    /// Packs a batch from the Adj-RIB-Out into UPDATEs and hands it to the writer.
    async fn send_batch(&mut self, batch: OutBatch) {
        let Some(id) = self.established_conn() else {
            // The session went down meanwhile; the speaker learns that from `Down` and
            // resets its credit then.
            return;
        };
        let mut out = BytesMut::with_capacity(batch.len() * 8 + 64);
        if let Err(e) = pack_withdraw(&batch.withdrawn, &mut out) {
            warn!(error = %e, "cannot encode withdrawals");
        }
        for (attrs, prefixes) in &batch.announced {
            let mut wire = attrs.to_wire();
            match attrs.next_hop {
                Some(NextHop::V4(a)) => wire.next_hop = Some(a),
                Some(nh @ NextHop::V6 { .. }) => {
                    wire.mp_reach = Some(MpReach {
                        family: Family::IPV6_UNICAST,
                        next_hop: nh,
                        nlri: Vec::new(),
                    });
                }
                None => {}
            }
            if let Err(e) = pack_announce(&wire, prefixes, &self.codec, &mut out) {
                warn!(error = %e, prefixes = prefixes.len(), "cannot encode announcements");
            }
        }
        for family in &batch.end_of_rib {
            let eor = Message::Update(Update::end_of_rib(*family));
            if let Err(e) = encode_into(&eor, &self.codec, &mut out) {
                warn!(error = %e, %family, "cannot encode End-of-RIB");
            }
        }
        self.write(id, WriteMsg::Data(out.freeze()));
    }

    fn request_refresh(&mut self) {
        let Some(id) = self.established_conn() else {
            return;
        };
        if !self.fsm.negotiated().is_some_and(|n| n.route_refresh) {
            warn!(
                "peer does not support route refresh; routes it sent before a policy change stay refused until the session restarts"
            );
            return;
        }
        for family in self.families.clone() {
            let msg = Message::RouteRefresh(RouteRefresh { family });
            let mut buf = BytesMut::new();
            match encode_into(&msg, &self.codec, &mut buf) {
                Ok(()) => self.write(id, WriteMsg::Control(buf.freeze())),
                Err(e) => warn!(error = %e, %family, "cannot encode ROUTE-REFRESH"),
            }
        }
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for timer in due {
            self.timers.remove(&timer);
            self.apply(Event::TimerExpired(timer)).await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh(_) => "ROUTE-REFRESH",
    }
}

/// Opens the outbound connection: bind the configured source, set the MD5 key before
/// the SYN leaves (RFC 2385 signs every segment), connect.
async fn connect(cfg: &PeerConfig) -> io::Result<TcpStream> {
    let remote = SocketAddr::new(cfg.address, cfg.port);
    let socket = if remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if cfg.local_address.is_some() || cfg.local_port.is_some() {
        socket.set_reuseaddr(true)?;
        let ip = cfg.local_address.unwrap_or(if remote.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        });
        socket.bind(SocketAddr::new(ip, cfg.local_port.unwrap_or(0)))?;
    }
    if let Some(password) = &cfg.password {
        md5::set_md5_key(&socket, remote.is_ipv6(), cfg.address, password.as_bytes())?;
    }
    socket.connect(remote).await
}

/// Cuts the byte stream into whole messages and hands them over, all the messages of one
/// read at a time.
async fn read_frames(id: ConnId, mut rd: OwnedReadHalf, tx: mpsc::Sender<IoEvent>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let mut frames = Vec::new();
        let mut broken = false;
        while buf.len() >= HEADER_LEN {
            let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
            if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
                // Hand the damaged header to the decoder, which answers it with the
                // right NOTIFICATION; nothing after it can be trusted.
                frames.push(buf.split().freeze());
                broken = true;
                break;
            }
            if buf.len() < len {
                break;
            }
            frames.push(buf.split_to(len).freeze());
        }
        if !frames.is_empty() && tx.send(IoEvent::Frames(id, frames)).await.is_err() {
            return;
        }
        if broken {
            return;
        }
        if buf.capacity() - buf.len() < MAX_MESSAGE_LEN {
            buf.reserve(READ_CHUNK);
        }
        let closed = match rd.read_buf(&mut buf).await {
            Ok(0) => Some("connection closed by peer".to_owned()),
            Ok(_) => None,
            Err(e) => Some(format!("read: {e}")),
        };
        if let Some(reason) = closed {
            let _ = tx.send(IoEvent::Closed(id, reason)).await;
            return;
        }
    }
}

async fn write_loop(
    id: ConnId,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<WriteMsg>,
    io_tx: mpsc::Sender<IoEvent>,
    owner: mpsc::Sender<ToOwner>,
    key: PeerKey,
) {
    while let Some(msg) = rx.recv().await {
        let (bytes, data) = match msg {
            WriteMsg::Control(b) => (b, false),
            WriteMsg::Data(b) => (b, true),
        };
        if let Err(e) = wr.write_all(&bytes).await {
            let _ = io_tx.send(IoEvent::Closed(id, format!("write: {e}"))).await;
            return;
        }
        if data {
            let _ = owner.send(ToOwner::Drained { key }).await;
        }
    }
    let _ = wr.shutdown().await;
}
