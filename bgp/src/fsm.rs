//! The BGP finite state machine of RFC 4271 §8, for one peer, as a pure state machine.
//!
//! [`Fsm::handle`] takes an [`Event`] (a timer fired, a TCP connection came up or went
//! down, a message arrived) and returns the [`Action`]s the driver must carry out: open a
//! connection, send a message, close a connection, arm a timer. It never reads a clock or
//! touches a socket, so every behaviour below is tested with plain values.
//!
//! One peer may briefly have two TCP connections: the one we opened and the one the peer
//! opened. Connection collision (RFC 4271 §6.8) is resolved here: when both sides' BGP
//! identifiers are known, the connection opened by the side with the higher identifier
//! survives and the other is closed with Cease / Connection Collision Resolution.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::wire::{
    BGP_VERSION, Capability, Codec, ErrorCode, Family, GracefulRestart, Message, Notification,
    Open, cease, fsm_error, open_error,
};

/// The six states of RFC 4271 §8.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        })
    }
}

/// The driver's name for one TCP connection. It is never reused within a peer.
pub type ConnId = u64;

/// Who opened a TCP connection: this matters for collision resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We connected to the peer.
    Outbound,
    /// The peer connected to our listener.
    Inbound,
}

/// The timers of RFC 4271 §8 that this FSM uses. `IdleHold` is the delay before an
/// automatic restart after an error (§8.1.1, DampPeerOscillations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
    IdleHold,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start the peer (ManualStart, or ManualStart_with_PassiveTcpEstablishment).
    Start,
    /// Stop the peer: close everything with Cease / Administrative Shutdown, stay Idle.
    Stop,
    /// The peer sent more prefixes than configured: close everything with Cease / Maximum
    /// Number of Prefixes Reached (RFC 4486), stay Idle.
    MaxPrefixesReached,
    TimerExpired(Timer),
    /// A TCP connection is up: ours completed, or the listener accepted one from the peer.
    TcpUp(ConnId, Direction),
    /// Our outbound connection attempt failed.
    ConnectFailed,
    /// The connection was closed or reset by the peer, or an I/O error happened on it.
    TcpClosed(ConnId),
    Open(ConnId, Open),
    Keepalive(ConnId),
    /// An UPDATE arrived. Its contents are the driver's business; the FSM checks that an
    /// UPDATE is allowed now and restarts the hold timer.
    Update(ConnId),
    RouteRefresh(ConnId),
    Notification(ConnId, Notification),
    /// A message could not be accepted (decode error, or an RFC 7606 session reset):
    /// send this NOTIFICATION and close.
    MessageError(ConnId, Notification),
}

/// What the driver must do, in order.
// Actions live only until the driver has carried them out; boxing the OPEN buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an outbound TCP connection to the peer.
    Connect,
    /// Abandon the outbound connection attempt in progress, if any.
    CancelConnect,
    Send(ConnId, Message),
    /// Close the connection (after writing what was queued on it).
    Close(ConnId),
    /// (Re)arm a timer to fire after the duration.
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    /// The session reached Established on this connection.
    Established(ConnId, Box<Negotiated>),
    /// The session left Established. `graceful` says whether RFC 4724 lets us keep the
    /// peer's routes as stale (the peer negotiated graceful restart and the session ended
    /// without a NOTIFICATION).
    Down {
        graceful: bool,
        reason: String,
    },
}

/// What both OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_id: Ipv4Addr,
    pub peer_asn: u32,
    /// Seconds; 0 means no hold timer and no keepalives.
    pub hold_time: u16,
    pub keepalive: u16,
    pub codec: Codec,
    /// The address families both sides advertised (IPv4 unicast when the peer sent no
    /// Multiprotocol capability at all, RFC 4760 §8).
    pub families: Vec<Family>,
    pub route_refresh: bool,
    /// The peer's graceful restart capability, if we advertised ours too.
    pub peer_graceful_restart: Option<GracefulRestart>,
}

impl Negotiated {
    /// Capability names for status output.
    pub fn capability_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.families.iter().map(|f| f.to_string()).collect();
        if self.codec.four_octet_as {
            names.push("4-octet-as".to_owned());
        }
        if self.route_refresh {
            names.push("route-refresh".to_owned());
        }
        if self.peer_graceful_restart.is_some() {
            names.push("graceful-restart".to_owned());
        }
        names
    }
}

/// How one peer's FSM is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub peer_asn: u32,
    /// Proposed hold time in seconds: 0, or at least 3.
    pub hold_time: u16,
    /// Never connect; wait for the peer (RFC 4271 PassiveTcpEstablishment).
    pub passive: bool,
    /// The first connect-retry delay; doubled after each consecutive failure.
    pub connect_retry: Duration,
    /// The longest connect-retry delay.
    pub connect_retry_max: Duration,
    /// Families we offer with the Multiprotocol capability.
    pub families: Vec<Family>,
    /// Our graceful restart capability, if we offer it.
    pub graceful_restart: Option<GracefulRestart>,
}

/// The hold timer while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// How many doublings the retry backoff may make.
const MAX_BACKOFF_DOUBLINGS: u32 = 8;

/// A deterministic source of jitter (xorshift64*). The driver seeds it randomly; tests
/// seed it with a constant. RFC 4271 §10 asks for jitter on ConnectRetry so that peers do
/// not reconnect in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        // Mix the seed so that nearby seeds give unrelated sequences; zero is
        // xorshift's fixed point, so it is avoided.
        let mixed = (seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Jitter(if mixed == 0 { 1 } else { mixed })
    }

    /// A factor in [0.75, 1.0), as RFC 4271 §10 suggests.
    pub fn factor(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        0.75 + 0.25 * (r as f64 / (1u64 << 53) as f64)
    }
}

/// A connection and what we know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conn {
    id: ConnId,
    dir: Direction,
    /// The peer's OPEN on this connection, once received.
    open: Option<Open>,
}

/// The FSM of one peer.
#[derive(Debug, Clone)]
pub struct Fsm {
    cfg: FsmConfig,
    state: State,
    /// The connection the state refers to.
    conn: Option<Conn>,
    /// A second connection during a collision, in OpenSent (our OPEN sent on it).
    other: Option<Conn>,
    /// Whether an outbound connection attempt is in flight.
    connecting: bool,
    negotiated: Option<Negotiated>,
    /// Consecutive failures since the last Established, for the backoff.
    failures: u32,
    jitter: Jitter,
    last_error: Option<String>,
    /// False after Stop: do not restart automatically.
    enabled: bool,
}

impl Fsm {
    pub fn new(cfg: FsmConfig, jitter: Jitter) -> Self {
        Fsm {
            cfg,
            state: State::Idle,
            conn: None,
            other: None,
            connecting: false,
            negotiated: None,
            failures: 0,
            jitter,
            last_error: None,
            enabled: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The connection of the current session, from OpenSent on.
    pub fn conn(&self) -> Option<ConnId> {
        self.conn.as_ref().map(|c| c.id)
    }

    /// What was negotiated, while Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Why the session last failed, for status output.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The OPEN we send.
    pub fn local_open(&self) -> Open {
        let mut capabilities: Vec<Capability> = self
            .cfg
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        capabilities.push(Capability::RouteRefresh);
        capabilities.push(Capability::FourOctetAs(self.cfg.local_asn));
        if let Some(gr) = &self.cfg.graceful_restart {
            capabilities.push(Capability::GracefulRestart(gr.clone()));
        }
        Open {
            version: BGP_VERSION,
            my_as: self.cfg.local_asn,
            hold_time: self.cfg.hold_time,
            bgp_id: self.cfg.router_id,
            capabilities,
        }
    }

    /// Clears the R bit of our graceful restart capability: it is only set in the OPENs
    /// sent right after we restarted (RFC 4724 §4.1).
    pub fn clear_restart_state(&mut self) {
        if let Some(gr) = &mut self.cfg.graceful_restart {
            gr.restart_state = false;
        }
    }

    /// The delay before the next connection attempt or automatic restart: exponential
    /// backoff over consecutive failures, with jitter.
    fn retry_delay(&mut self) -> Duration {
        let doublings = self.failures.min(MAX_BACKOFF_DOUBLINGS);
        let base = self.cfg.connect_retry.saturating_mul(1 << doublings);
        let capped = base.min(self.cfg.connect_retry_max);
        capped.mul_f64(self.jitter.factor())
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Start => {
                self.enabled = true;
                if self.state == State::Idle {
                    self.start(&mut out);
                }
            }
            Event::Stop => self.stop(
                &mut out,
                cease::ADMINISTRATIVE_SHUTDOWN,
                "stopped by configuration",
            ),
            Event::MaxPrefixesReached => self.stop(
                &mut out,
                cease::MAXIMUM_PREFIXES_REACHED,
                "maximum number of prefixes reached",
            ),
            Event::TimerExpired(timer) => self.timer(timer, &mut out),
            Event::TcpUp(id, dir) => self.tcp_up(id, dir, &mut out),
            Event::ConnectFailed => {
                self.connecting = false;
                if self.state == State::Connect {
                    // RFC 4271 §8.2.2 Connect, event 18: go to Active and retry when
                    // ConnectRetry fires; each failure doubles the wait.
                    self.failures = self.failures.saturating_add(1);
                    let delay = self.retry_delay();
                    out.push(Action::StartTimer(Timer::ConnectRetry, delay));
                    self.state = State::Active;
                }
            }
            Event::TcpClosed(id) => self.tcp_closed(id, &mut out),
            Event::Open(id, open) => self.open(id, open, &mut out),
            Event::Keepalive(id) => self.keepalive(id, &mut out),
            Event::Update(id) | Event::RouteRefresh(id) => {
                if !self.is_current(id) {
                    self.message_on_other(id, &mut out);
                } else if self.state == State::Established {
                    self.restart_hold(&mut out);
                } else {
                    self.fsm_error(&mut out);
                }
            }
            Event::Notification(id, note) => {
                let reason = describe_notification("received", &note);
                if self.is_current(id) {
                    self.close_current(&mut out, None, &reason, false);
                } else if self.other.as_ref().is_some_and(|c| c.id == id) {
                    self.other = None;
                    out.push(Action::Close(id));
                }
            }
            Event::MessageError(id, note) => {
                let reason = describe_notification("sent", &note);
                if self.is_current(id) {
                    self.close_current(&mut out, Some(note), &reason, false);
                } else if self.other.as_ref().is_some_and(|c| c.id == id) {
                    self.other = None;
                    out.push(Action::Send(id, Message::Notification(note)));
                    out.push(Action::Close(id));
                }
            }
        }
        out
    }

    fn is_current(&self, id: ConnId) -> bool {
        self.conn.as_ref().is_some_and(|c| c.id == id)
    }

    /// Leave Idle: connect, or wait for the peer when passive.
    fn start(&mut self, out: &mut Vec<Action>) {
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            self.connecting = true;
            out.push(Action::Connect);
            let delay = self.retry_delay();
            out.push(Action::StartTimer(Timer::ConnectRetry, delay));
        }
    }

    fn timer(&mut self, timer: Timer, out: &mut Vec<Action>) {
        match (timer, self.state) {
            (Timer::IdleHold, State::Idle) if self.enabled => self.start(out),
            (Timer::ConnectRetry, State::Connect | State::Active) if !self.cfg.passive => {
                // The attempt in flight (if any) took too long: start a fresh one. A
                // handshake that never completes (a peer whose MD5 key differs drops our
                // SYNs) is a failure too and backs off like a refused connection.
                if self.connecting {
                    out.push(Action::CancelConnect);
                    self.failures = self.failures.saturating_add(1);
                }
                self.state = State::Connect;
                self.connecting = true;
                out.push(Action::Connect);
                let delay = self.retry_delay();
                out.push(Action::StartTimer(Timer::ConnectRetry, delay));
            }
            (Timer::Hold, State::OpenSent | State::OpenConfirm | State::Established) => {
                let note = Notification::hold_timer_expired();
                // A silent peer is a broken link, not a deliberate reset: RFC 4724 lets a
                // helper keep its routes.
                self.close_current(out, Some(note), "hold timer expired", true);
            }
            (Timer::Keepalive, State::OpenConfirm | State::Established) => {
                if let (Some(conn), Some(neg)) = (&self.conn, &self.negotiated) {
                    out.push(Action::Send(conn.id, Message::Keepalive));
                    out.push(Action::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(neg.keepalive.into()),
                    ));
                }
            }
            // A timer that fired just as the state changed: nothing to do.
            _ => {}
        }
    }

    fn tcp_up(&mut self, id: ConnId, dir: Direction, out: &mut Vec<Action>) {
        if dir == Direction::Outbound {
            self.connecting = false;
        }
        match self.state {
            State::Idle if !self.enabled => {
                // RFC 4271 §8.2.2 Idle: refuse connections while stopped.
                out.push(Action::Close(id));
            }
            State::Idle | State::Connect | State::Active => {
                // While backing off after an error we still take the peer's connection:
                // the backoff is there to stop us hammering the peer, and refusing a
                // peer that just restarted would only delay it by its own (often
                // two-minute) connect-retry time.
                out.push(Action::StopTimer(Timer::IdleHold));
                if self.connecting {
                    self.connecting = false;
                    out.push(Action::CancelConnect);
                }
                out.push(Action::StopTimer(Timer::ConnectRetry));
                self.conn = Some(Conn {
                    id,
                    dir,
                    open: None,
                });
                self.state = State::OpenSent;
                out.push(Action::Send(id, Message::Open(self.local_open())));
                out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD));
            }
            State::OpenSent => {
                if self.other.is_some() || self.conn.as_ref().is_some_and(|c| c.dir == dir) {
                    // A third connection, or the peer dialling again on the same side:
                    // the newest one wins, the peer has given up on the older one.
                    self.replace_with(id, dir, out);
                } else {
                    // Collision; the peer's identifier is not known yet. Keep both until
                    // an OPEN tells us which to close (RFC 4271 §6.8).
                    self.other = Some(Conn {
                        id,
                        dir,
                        open: None,
                    });
                    out.push(Action::Send(id, Message::Open(self.local_open())));
                }
            }
            State::OpenConfirm => {
                let Some(current) = &self.conn else {
                    out.push(Action::Close(id));
                    return;
                };
                if current.dir == dir {
                    self.replace_with(id, dir, out);
                    return;
                }
                let peer_id = current.open.as_ref().map(|o| o.bgp_id);
                match peer_id {
                    Some(peer_id) if keep_local_initiated(self.cfg.router_id, peer_id) => {
                        if current.dir == Direction::Outbound {
                            reject_collision(id, out);
                        } else {
                            self.collision_switch(id, dir, out);
                        }
                    }
                    Some(_) => {
                        if current.dir == Direction::Inbound {
                            reject_collision(id, out);
                        } else {
                            self.collision_switch(id, dir, out);
                        }
                    }
                    None => reject_collision(id, out),
                }
            }
            State::Established => {
                let graceful = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.peer_graceful_restart.is_some());
                if dir == Direction::Inbound && graceful {
                    // RFC 4724 §4.2: a new connection from a peer we believe Established
                    // means it restarted. Drop the old session, keeping its routes.
                    self.close_current(out, None, "peer reconnected (graceful restart)", true);
                    self.state = State::Active;
                    self.tcp_up(id, dir, out);
                } else {
                    // RFC 4271 §6.8: a collision with an Established session closes the
                    // new connection.
                    reject_collision(id, out);
                }
            }
        }
    }

    /// Drops the current connection in favour of a new one in OpenSent.
    fn replace_with(&mut self, id: ConnId, dir: Direction, out: &mut Vec<Action>) {
        if let Some(old) = self.conn.take() {
            out.push(Action::Close(old.id));
        }
        if let Some(other) = self.other.take() {
            out.push(Action::Close(other.id));
        }
        self.negotiated = None;
        self.conn = Some(Conn {
            id,
            dir,
            open: None,
        });
        self.state = State::OpenSent;
        out.push(Action::StopTimer(Timer::Keepalive));
        out.push(Action::Send(id, Message::Open(self.local_open())));
        out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD));
    }

    /// Collision resolved in favour of a new connection: close the current one with Cease 7.
    fn collision_switch(&mut self, id: ConnId, dir: Direction, out: &mut Vec<Action>) {
        if let Some(old) = self.conn.take() {
            reject_collision(old.id, out);
        }
        self.negotiated = None;
        self.conn = Some(Conn {
            id,
            dir,
            open: None,
        });
        self.state = State::OpenSent;
        out.push(Action::StopTimer(Timer::Keepalive));
        out.push(Action::Send(id, Message::Open(self.local_open())));
        out.push(Action::StartTimer(Timer::Hold, OPEN_HOLD));
    }

    fn tcp_closed(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if self.other.as_ref().is_some_and(|c| c.id == id) {
            self.other = None;
            out.push(Action::Close(id));
            return;
        }
        if !self.is_current(id) {
            // Already closed on our side.
            return;
        }
        if self.state == State::OpenSent && self.other.is_none() && !self.cfg.passive {
            // RFC 4271 §8.2.2 OpenSent, event 17: back to Active, retry later.
            out.push(Action::Close(id));
            self.conn = None;
            self.failures = self.failures.saturating_add(1);
            self.last_error = Some("connection closed before OPEN".to_owned());
            out.push(Action::StopTimer(Timer::Hold));
            let delay = self.retry_delay();
            out.push(Action::StartTimer(Timer::ConnectRetry, delay));
            self.state = State::Active;
            return;
        }
        self.close_current(out, None, "connection closed by peer", true);
    }

    fn open(&mut self, id: ConnId, open: Open, out: &mut Vec<Action>) {
        let on_other = self.other.as_ref().is_some_and(|c| c.id == id);
        if !on_other && !self.is_current(id) {
            return;
        }
        if on_other || (self.state == State::OpenSent && self.other.is_some()) {
            // Collision in OpenSent: now the peer's identifier is known (RFC 4271 §6.8).
            if let Err(note) = self.check_open(&open) {
                let reason = describe_notification("sent", &note);
                if on_other {
                    self.other = None;
                    out.push(Action::Send(id, Message::Notification(note)));
                    out.push(Action::Close(id));
                    self.last_error = Some(reason);
                } else {
                    self.close_current(out, Some(note), &reason, false);
                }
                return;
            }
            let (Some(current), Some(other)) = (self.conn.clone(), self.other.clone()) else {
                return;
            };
            let keep_outbound = keep_local_initiated(self.cfg.router_id, open.bgp_id);
            let (winner, loser) = if (current.dir == Direction::Outbound) == keep_outbound {
                (current, other)
            } else {
                (other, current)
            };
            reject_collision(loser.id, out);
            self.other = None;
            self.conn = Some(winner.clone());
            if winner.id != id {
                // The survivor has not sent its OPEN yet; stay in OpenSent on it.
                return;
            }
        }
        match self.state {
            State::OpenSent => match self.check_open(&open) {
                Ok(neg) => {
                    out.push(Action::Send(id, Message::Keepalive));
                    if neg.hold_time > 0 {
                        let hold = Duration::from_secs(neg.hold_time.into());
                        out.push(Action::StartTimer(Timer::Hold, hold));
                        let ka = Duration::from_secs(neg.keepalive.into());
                        out.push(Action::StartTimer(Timer::Keepalive, ka));
                    } else {
                        out.push(Action::StopTimer(Timer::Hold));
                    }
                    if let Some(conn) = &mut self.conn {
                        conn.open = Some(open);
                    }
                    self.negotiated = Some(neg);
                    self.state = State::OpenConfirm;
                }
                Err(note) => {
                    let reason = describe_notification("sent", &note);
                    self.close_current(out, Some(note), &reason, false);
                }
            },
            State::OpenConfirm => {
                let note = Notification::new(
                    ErrorCode::FiniteStateMachine,
                    fsm_error::UNEXPECTED_MESSAGE_IN_OPENCONFIRM,
                    Vec::new(),
                );
                self.close_current(out, Some(note), "second OPEN in OpenConfirm", false);
            }
            State::Established => {
                let note = Notification::new(
                    ErrorCode::FiniteStateMachine,
                    fsm_error::UNEXPECTED_MESSAGE_IN_ESTABLISHED,
                    Vec::new(),
                );
                self.close_current(out, Some(note), "OPEN in Established", false);
            }
            State::Idle | State::Connect | State::Active => {}
        }
    }

    fn keepalive(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if !self.is_current(id) {
            self.message_on_other(id, out);
            return;
        }
        match self.state {
            State::OpenConfirm => {
                let Some(neg) = self.negotiated.clone() else {
                    return;
                };
                self.restart_hold(out);
                self.failures = 0;
                self.last_error = None;
                self.state = State::Established;
                out.push(Action::Established(id, Box::new(neg)));
            }
            State::Established => self.restart_hold(out),
            State::OpenSent => self.fsm_error(out),
            State::Idle | State::Connect | State::Active => {}
        }
    }

    /// A KEEPALIVE, UPDATE or ROUTE-REFRESH on the second connection of a collision, which
    /// is still in OpenSent: a protocol error there.
    fn message_on_other(&mut self, id: ConnId, out: &mut Vec<Action>) {
        if self.other.as_ref().is_some_and(|c| c.id == id) {
            self.other = None;
            let note = Notification::new(
                ErrorCode::FiniteStateMachine,
                fsm_error::UNEXPECTED_MESSAGE_IN_OPENSENT,
                Vec::new(),
            );
            out.push(Action::Send(id, Message::Notification(note)));
            out.push(Action::Close(id));
        }
    }

    fn restart_hold(&mut self, out: &mut Vec<Action>) {
        if let Some(neg) = &self.negotiated
            && neg.hold_time > 0
        {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(neg.hold_time.into()),
            ));
        }
    }

    /// A message that is not allowed in the current state (RFC 4271 §6.6).
    fn fsm_error(&mut self, out: &mut Vec<Action>) {
        let subcode = match self.state {
            State::OpenSent => fsm_error::UNEXPECTED_MESSAGE_IN_OPENSENT,
            State::OpenConfirm => fsm_error::UNEXPECTED_MESSAGE_IN_OPENCONFIRM,
            State::Established => fsm_error::UNEXPECTED_MESSAGE_IN_ESTABLISHED,
            _ => fsm_error::UNSPECIFIED,
        };
        let note = Notification::new(ErrorCode::FiniteStateMachine, subcode, Vec::new());
        self.close_current(out, Some(note), "unexpected message", false);
    }

    /// Checks the peer's OPEN (RFC 4271 §6.2) and negotiates (RFC 5492, 4760, 6793, 4724).
    fn check_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        if open.version != BGP_VERSION {
            // The data is the largest version we support, as two octets.
            return Err(Notification::new(
                ErrorCode::OpenMessage,
                open_error::UNSUPPORTED_VERSION_NUMBER,
                vec![0, BGP_VERSION],
            ));
        }
        if open.my_as != self.cfg.peer_asn {
            return Err(Notification::new(
                ErrorCode::OpenMessage,
                open_error::BAD_PEER_AS,
                Vec::new(),
            ));
        }
        let id = open.bgp_id;
        // RFC 6286 §2.1: any non-zero identifier is valid, but two speakers of one AS
        // must not share it.
        if id.is_unspecified() || (open.my_as == self.cfg.local_asn && id == self.cfg.router_id) {
            return Err(Notification::new(
                ErrorCode::OpenMessage,
                open_error::BAD_BGP_IDENTIFIER,
                Vec::new(),
            ));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            // RFC 4271 §6.2: the hold time must be zero or at least three seconds.
            return Err(Notification::new(
                ErrorCode::OpenMessage,
                open_error::UNACCEPTABLE_HOLD_TIME,
                Vec::new(),
            ));
        }
        let hold_time = self.cfg.hold_time.min(open.hold_time);
        let peer_families: Vec<Family> = open
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        let families = if peer_families.is_empty() {
            // RFC 4760 §8: no Multiprotocol capability means IPv4 unicast only.
            self.cfg
                .families
                .iter()
                .copied()
                .filter(|f| *f == Family::IPV4_UNICAST)
                .collect()
        } else {
            self.cfg
                .families
                .iter()
                .copied()
                .filter(|f| peer_families.contains(f))
                .collect()
        };
        let route_refresh = open
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh));
        let peer_gr = open.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr.clone()),
            _ => None,
        });
        let local = self.local_open();
        Ok(Negotiated {
            peer_id: id,
            peer_asn: open.my_as,
            hold_time,
            keepalive: hold_time / 3,
            codec: Codec::negotiated(&local, open),
            families,
            route_refresh,
            peer_graceful_restart: if self.cfg.graceful_restart.is_some() {
                peer_gr
            } else {
                None
            },
        })
    }

    /// Ends the current session: optionally send a NOTIFICATION, close everything, go Idle
    /// and schedule an automatic restart with backoff.
    fn close_current(
        &mut self,
        out: &mut Vec<Action>,
        note: Option<Notification>,
        reason: &str,
        transport_failure: bool,
    ) {
        self.fail(out, note, reason, transport_failure);
        if self.enabled {
            let delay = self.retry_delay();
            out.push(Action::StartTimer(Timer::IdleHold, delay));
        }
    }

    /// Closes everything with a Cease and stays Idle until started again.
    fn stop(&mut self, out: &mut Vec<Action>, subcode: u8, reason: &str) {
        self.enabled = false;
        self.fail(out, Some(Notification::cease(subcode)), reason, false);
        out.push(Action::StopTimer(Timer::IdleHold));
    }

    fn fail(
        &mut self,
        out: &mut Vec<Action>,
        note: Option<Notification>,
        reason: &str,
        transport_failure: bool,
    ) {
        if self.state == State::Established {
            // RFC 4724 §4.2: routes are retained when the session ends without a
            // NOTIFICATION and the peer negotiated graceful restart.
            let graceful = transport_failure
                && self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.peer_graceful_restart.is_some());
            out.push(Action::Down {
                graceful,
                reason: reason.to_owned(),
            });
        }
        if self.state != State::Idle {
            self.last_error = Some(reason.to_owned());
            self.failures = self.failures.saturating_add(1);
        }
        if let Some(conn) = self.conn.take() {
            if let Some(note) = &note {
                out.push(Action::Send(conn.id, Message::Notification(note.clone())));
            }
            out.push(Action::Close(conn.id));
        }
        if let Some(other) = self.other.take() {
            if let Some(note) = note {
                out.push(Action::Send(other.id, Message::Notification(note)));
            }
            out.push(Action::Close(other.id));
        }
        if self.connecting {
            self.connecting = false;
            out.push(Action::CancelConnect);
        }
        for timer in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(timer));
        }
        self.negotiated = None;
        self.state = State::Idle;
    }
}

/// RFC 4271 §6.8: if our identifier is the higher one, the connection we opened survives.
fn keep_local_initiated(local_id: Ipv4Addr, peer_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(peer_id)
}

fn reject_collision(id: ConnId, out: &mut Vec<Action>) {
    let note = Notification::cease(cease::CONNECTION_COLLISION_RESOLUTION);
    out.push(Action::Send(id, Message::Notification(note)));
    out.push(Action::Close(id));
}

fn describe_notification(verb: &str, note: &Notification) -> String {
    let code = note.error_code().map_or("unknown error", |c| c.name());
    let mut text = format!("NOTIFICATION {verb}: {code}");
    if let Some(sub) = note.subcode_name() {
        text.push_str(" / ");
        text.push_str(sub);
    } else if note.subcode != 0 {
        text.push_str(&format!(" / subcode {}", note.subcode));
    }
    if let Some(msg) = note.shutdown_message() {
        text.push_str(&format!(" ({msg:?})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{GracefulRestartFamily, update_error};

    const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const LOWER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
    const HIGHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn config(passive: bool) -> FsmConfig {
        FsmConfig {
            local_asn: 64512,
            router_id: LOCAL,
            peer_asn: 64512,
            hold_time: 90,
            passive,
            connect_retry: Duration::from_secs(2),
            connect_retry_max: Duration::from_secs(60),
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            graceful_restart: Some(GracefulRestart {
                restart_state: false,
                notification: false,
                restart_time: 120,
                families: vec![GracefulRestartFamily {
                    family: Family::IPV4_UNICAST,
                    forwarding_preserved: true,
                }],
            }),
        }
    }

    fn peer_open(id: Ipv4Addr, hold: u16, gr: bool) -> Open {
        let mut capabilities = vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(64512),
        ];
        if gr {
            capabilities.push(Capability::GracefulRestart(GracefulRestart {
                restart_state: false,
                notification: false,
                restart_time: 90,
                families: Vec::new(),
            }));
        }
        Open {
            version: 4,
            my_as: 64512,
            hold_time: hold,
            bgp_id: id,
            capabilities,
        }
    }

    fn established(passive: bool, gr: bool) -> Fsm {
        let mut fsm = Fsm::new(config(passive), Jitter::new(7));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(
            1,
            if passive {
                Direction::Inbound
            } else {
                Direction::Outbound
            },
        ));
        fsm.handle(Event::Open(1, peer_open(HIGHER, 30, gr)));
        let acts = fsm.handle(Event::Keepalive(1));
        assert!(
            matches!(acts.last(), Some(Action::Established(1, _))),
            "{acts:?}"
        );
        fsm
    }

    fn sent_notification(acts: &[Action], id: ConnId) -> Option<(u8, u8)> {
        acts.iter().find_map(|a| match a {
            Action::Send(i, Message::Notification(n)) if *i == id => Some((n.code, n.subcode)),
            _ => None,
        })
    }

    #[test]
    fn active_peer_connects_and_reaches_established() {
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        let acts = fsm.handle(Event::Start);
        assert_eq!(fsm.state(), State::Connect);
        assert_eq!(acts[0], Action::Connect);
        let acts = fsm.handle(Event::TcpUp(1, Direction::Outbound));
        assert_eq!(fsm.state(), State::OpenSent);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Send(1, Message::Open(o)) if o.hold_time == 90))
        );
        let acts = fsm.handle(Event::Open(1, peer_open(HIGHER, 30, true)));
        assert_eq!(fsm.state(), State::OpenConfirm);
        assert!(acts.contains(&Action::Send(1, Message::Keepalive)));
        // Hold time is the smaller of the two; keepalive a third of it.
        assert!(acts.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(30))));
        assert!(acts.contains(&Action::StartTimer(
            Timer::Keepalive,
            Duration::from_secs(10)
        )));
        let acts = fsm.handle(Event::Keepalive(1));
        assert_eq!(fsm.state(), State::Established);
        let Some(Action::Established(1, neg)) = acts.last() else {
            panic!("{acts:?}")
        };
        // The peer offered only IPv4 unicast.
        assert_eq!(neg.families, vec![Family::IPV4_UNICAST]);
        assert!(neg.codec.four_octet_as && neg.route_refresh);
        assert_eq!(
            neg.peer_graceful_restart.as_ref().map(|g| g.restart_time),
            Some(90)
        );
    }

    #[test]
    fn passive_peer_never_connects() {
        let mut fsm = Fsm::new(config(true), Jitter::new(1));
        let acts = fsm.handle(Event::Start);
        assert_eq!(fsm.state(), State::Active);
        assert!(!acts.contains(&Action::Connect));
        let acts = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
        assert!(acts.is_empty());
        fsm.handle(Event::TcpUp(4, Direction::Inbound));
        assert_eq!(fsm.state(), State::OpenSent);
    }

    #[test]
    fn hold_time_of_one_or_two_seconds_is_rejected() {
        for hold in [1, 2] {
            let mut fsm = Fsm::new(config(false), Jitter::new(1));
            fsm.handle(Event::Start);
            fsm.handle(Event::TcpUp(1, Direction::Outbound));
            let acts = fsm.handle(Event::Open(1, peer_open(HIGHER, hold, false)));
            assert_eq!(
                sent_notification(&acts, 1),
                Some((2, open_error::UNACCEPTABLE_HOLD_TIME))
            );
            assert!(acts.contains(&Action::Close(1)));
            assert_eq!(fsm.state(), State::Idle);
        }
        // Zero is allowed and disables keepalives.
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        let acts = fsm.handle(Event::Open(1, peer_open(HIGHER, 0, false)));
        assert_eq!(fsm.state(), State::OpenConfirm);
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::Keepalive, _)))
        );
    }

    #[test]
    fn bad_peer_as_and_identifier_are_rejected() {
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        let mut open = peer_open(HIGHER, 90, false);
        open.my_as = 65000;
        let acts = fsm.handle(Event::Open(1, open));
        assert_eq!(
            sent_notification(&acts, 1),
            Some((2, open_error::BAD_PEER_AS))
        );

        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        let acts = fsm.handle(Event::Open(1, peer_open(LOCAL, 90, false)));
        assert_eq!(
            sent_notification(&acts, 1),
            Some((2, open_error::BAD_BGP_IDENTIFIER))
        );
        assert!(
            fsm.last_error()
                .is_some_and(|e| e.contains("Bad BGP Identifier"))
        );
    }

    #[test]
    fn connect_retry_backs_off_with_jitter() {
        let mut fsm = Fsm::new(config(false), Jitter::new(42));
        let mut delays = Vec::new();
        fsm.handle(Event::Start);
        for _ in 0..10 {
            let acts = fsm.handle(Event::ConnectFailed);
            assert_eq!(fsm.state(), State::Active);
            let Some(Action::StartTimer(Timer::ConnectRetry, d)) = acts.last() else {
                panic!("{acts:?}")
            };
            delays.push(*d);
            let acts = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert!(acts.contains(&Action::Connect));
            assert_eq!(fsm.state(), State::Connect);
        }
        // 2 s doubled per failure, jittered down by at most a quarter, capped at 60 s.
        let base = [4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
        for (d, b) in delays.iter().zip(base) {
            let s = d.as_secs_f64();
            assert!(s <= b && s >= 0.75 * b, "{s} vs {b}");
        }
        // The same seed gives the same delays: tests and bugs are reproducible.
        let mut again = Fsm::new(config(false), Jitter::new(42));
        again.handle(Event::Start);
        let acts = again.handle(Event::ConnectFailed);
        assert_eq!(
            acts.last(),
            Some(&Action::StartTimer(Timer::ConnectRetry, delays[0]))
        );
        // Two different seeds disagree.
        let mut other = Fsm::new(config(false), Jitter::new(43));
        other.handle(Event::Start);
        let acts = other.handle(Event::ConnectFailed);
        assert_ne!(
            acts.last(),
            Some(&Action::StartTimer(Timer::ConnectRetry, delays[0]))
        );
    }

    #[test]
    fn connect_attempts_that_hang_back_off_too() {
        let mut fsm = Fsm::new(config(false), Jitter::new(3));
        fsm.handle(Event::Start);
        let mut last = Duration::ZERO;
        for _ in 0..4 {
            let acts = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
            assert_eq!(acts[0], Action::CancelConnect);
            let Some(Action::StartTimer(Timer::ConnectRetry, d)) = acts.last() else {
                panic!("{acts:?}")
            };
            // Each doubling outgrows the jitter (at most a quarter).
            assert!(*d > last, "{d:?} after {last:?}");
            last = *d;
        }
    }

    #[test]
    fn hold_timer_expiry_sends_notification_and_is_graceful() {
        let mut fsm = established(false, true);
        let acts = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert_eq!(sent_notification(&acts, 1), Some((4, 0)));
        assert!(acts.contains(&Action::Down {
            graceful: true,
            reason: "hold timer expired".into()
        }));
        assert_eq!(fsm.state(), State::Idle);
        // It restarts by itself after a backoff.
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
        );
        let acts = fsm.handle(Event::TimerExpired(Timer::IdleHold));
        assert!(acts.contains(&Action::Connect));
    }

    #[test]
    fn keepalive_and_updates_restart_the_hold_timer() {
        let mut fsm = established(false, false);
        let acts = fsm.handle(Event::TimerExpired(Timer::Keepalive));
        assert_eq!(acts[0], Action::Send(1, Message::Keepalive));
        let acts = fsm.handle(Event::Update(1));
        assert_eq!(
            acts,
            vec![Action::StartTimer(Timer::Hold, Duration::from_secs(30))]
        );
    }

    #[test]
    fn notification_received_is_not_graceful() {
        let mut fsm = established(false, true);
        let note = Notification::cease(cease::ADMINISTRATIVE_RESET);
        let acts = fsm.handle(Event::Notification(1, note));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Down {
                graceful: false,
                ..
            }
        )));
        assert!(
            fsm.last_error()
                .is_some_and(|e| e.contains("Administrative Reset"))
        );
    }

    #[test]
    fn message_error_sends_the_notification() {
        let mut fsm = established(false, true);
        let note = Notification::new(
            ErrorCode::UpdateMessage,
            update_error::MALFORMED_ATTRIBUTE_LIST,
            Vec::new(),
        );
        let acts = fsm.handle(Event::MessageError(1, note));
        assert_eq!(sent_notification(&acts, 1), Some((3, 1)));
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Down {
                graceful: false,
                ..
            }
        )));
    }

    #[test]
    fn update_before_established_is_an_fsm_error() {
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        let acts = fsm.handle(Event::Update(1));
        assert_eq!(sent_notification(&acts, 1), Some((5, 1)));
    }

    #[test]
    fn collision_in_open_confirm_keeps_the_higher_identifiers_connection() {
        // The peer's identifier is higher: its connection (inbound to us) survives.
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        fsm.handle(Event::Open(1, peer_open(HIGHER, 90, false)));
        let acts = fsm.handle(Event::TcpUp(2, Direction::Inbound));
        assert_eq!(
            sent_notification(&acts, 1),
            Some((6, cease::CONNECTION_COLLISION_RESOLUTION))
        );
        assert_eq!(fsm.conn(), Some(2));
        assert_eq!(fsm.state(), State::OpenSent);

        // Our identifier is higher: our outbound connection survives, the new one is closed.
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        fsm.handle(Event::Open(1, peer_open(LOWER, 90, false)));
        let acts = fsm.handle(Event::TcpUp(2, Direction::Inbound));
        assert_eq!(
            sent_notification(&acts, 2),
            Some((6, cease::CONNECTION_COLLISION_RESOLUTION))
        );
        assert_eq!(fsm.conn(), Some(1));
        assert_eq!(fsm.state(), State::OpenConfirm);
    }

    #[test]
    fn collision_in_open_sent_is_resolved_when_the_open_arrives() {
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        let acts = fsm.handle(Event::TcpUp(2, Direction::Inbound));
        // Both connections get our OPEN.
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Send(2, Message::Open(_))))
        );
        // The OPEN arrives on our outbound connection, from a higher identifier: the
        // inbound connection wins, and it has no OPEN yet, so we stay in OpenSent on it.
        let acts = fsm.handle(Event::Open(1, peer_open(HIGHER, 90, false)));
        assert_eq!(
            sent_notification(&acts, 1),
            Some((6, cease::CONNECTION_COLLISION_RESOLUTION))
        );
        assert_eq!(fsm.conn(), Some(2));
        assert_eq!(fsm.state(), State::OpenSent);
        fsm.handle(Event::Open(2, peer_open(HIGHER, 90, false)));
        fsm.handle(Event::Keepalive(2));
        assert_eq!(fsm.state(), State::Established);

        // Lower peer identifier: the outbound connection wins and proceeds at once.
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        fsm.handle(Event::Start);
        fsm.handle(Event::TcpUp(1, Direction::Outbound));
        fsm.handle(Event::TcpUp(2, Direction::Inbound));
        let acts = fsm.handle(Event::Open(2, peer_open(LOWER, 90, false)));
        assert_eq!(
            sent_notification(&acts, 2),
            Some((6, cease::CONNECTION_COLLISION_RESOLUTION))
        );
        assert_eq!(fsm.conn(), Some(1));
        assert_eq!(fsm.state(), State::OpenSent);
        fsm.handle(Event::Open(1, peer_open(LOWER, 90, false)));
        assert_eq!(fsm.state(), State::OpenConfirm);
    }

    #[test]
    fn collision_with_established_closes_the_new_connection_unless_peer_restarted() {
        let mut fsm = established(false, false);
        let acts = fsm.handle(Event::TcpUp(2, Direction::Inbound));
        assert_eq!(
            sent_notification(&acts, 2),
            Some((6, cease::CONNECTION_COLLISION_RESOLUTION))
        );
        assert_eq!(fsm.state(), State::Established);

        // With graceful restart negotiated, the new connection means the peer restarted.
        let mut fsm = established(false, true);
        let acts = fsm.handle(Event::TcpUp(2, Direction::Inbound));
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::Down { graceful: true, .. }))
        );
        assert!(acts.contains(&Action::Close(1)));
        assert_eq!(sent_notification(&acts, 1), None);
        assert_eq!(fsm.conn(), Some(2));
        assert_eq!(fsm.state(), State::OpenSent);
    }

    #[test]
    fn stop_sends_cease_and_stays_idle() {
        let mut fsm = established(false, true);
        let acts = fsm.handle(Event::Stop);
        assert_eq!(
            sent_notification(&acts, 1),
            Some((6, cease::ADMINISTRATIVE_SHUTDOWN))
        );
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Down {
                graceful: false,
                ..
            }
        )));
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::StartTimer(Timer::IdleHold, _)))
        );
        assert!(fsm.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
        assert_eq!(fsm.state(), State::Idle);
    }

    #[test]
    fn too_many_prefixes_sends_cease_1_and_stays_idle() {
        let mut fsm = established(false, true);
        let acts = fsm.handle(Event::MaxPrefixesReached);
        assert_eq!(
            sent_notification(&acts, 1),
            Some((6, cease::MAXIMUM_PREFIXES_REACHED))
        );
        assert!(acts.iter().any(|a| matches!(
            a,
            Action::Down { graceful: false, reason } if reason == "maximum number of prefixes reached"
        )));
        assert!(fsm.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
        assert_eq!(fsm.state(), State::Idle);
        assert_eq!(fsm.last_error(), Some("maximum number of prefixes reached"));
    }

    #[test]
    fn idle_refuses_connections_until_started() {
        let mut fsm = Fsm::new(config(false), Jitter::new(1));
        let acts = fsm.handle(Event::TcpUp(9, Direction::Inbound));
        assert_eq!(acts, vec![Action::Close(9)]);
        // Backing off after an error, a connection from the peer is taken at once.
        let mut fsm = established(true, false);
        fsm.handle(Event::TcpClosed(1));
        assert_eq!(fsm.state(), State::Idle);
        let acts = fsm.handle(Event::TcpUp(2, Direction::Inbound));
        assert!(acts.contains(&Action::StopTimer(Timer::IdleHold)));
        assert_eq!(fsm.state(), State::OpenSent);
        assert_eq!(fsm.conn(), Some(2));
    }

    #[test]
    fn open_carries_our_capabilities() {
        let mut cfg = config(false);
        if let Some(gr) = &mut cfg.graceful_restart {
            gr.restart_state = true;
        }
        let mut fsm = Fsm::new(cfg, Jitter::new(1));
        let open = fsm.local_open();
        assert!(
            open.capabilities
                .contains(&Capability::Multiprotocol(Family::IPV6_UNICAST))
        );
        assert!(open.capabilities.contains(&Capability::FourOctetAs(64512)));
        assert!(open.capabilities.iter().any(
            |c| matches!(c, Capability::GracefulRestart(g) if g.restart_state && g.restart_time == 120)
        ));
        fsm.clear_restart_state();
        assert!(
            fsm.local_open()
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::GracefulRestart(g) if !g.restart_state))
        );
    }

    /// Golden transcripts (holo style): each scenario's events and the actions they
    /// produced, in `testdata/fsm/`. A deliberate behaviour change is blessed with
    /// `TORTIE_BLESS=1 cargo test -p tortie-bgp --lib fsm::tests::golden`.
    #[test]
    fn golden_transcripts() {
        let scenarios: Vec<(&str, bool, Vec<Event>)> = vec![
            (
                "active-session",
                false,
                vec![
                    Event::Start,
                    Event::ConnectFailed,
                    Event::TimerExpired(Timer::ConnectRetry),
                    Event::TcpUp(1, Direction::Outbound),
                    Event::Open(1, peer_open(HIGHER, 30, true)),
                    Event::Keepalive(1),
                    Event::Update(1),
                    Event::TimerExpired(Timer::Keepalive),
                    Event::TimerExpired(Timer::Hold),
                    Event::TimerExpired(Timer::IdleHold),
                ],
            ),
            (
                "collision-in-opensent",
                false,
                vec![
                    Event::Start,
                    Event::TcpUp(1, Direction::Outbound),
                    Event::TcpUp(2, Direction::Inbound),
                    Event::Open(1, peer_open(HIGHER, 90, false)),
                    Event::Open(2, peer_open(HIGHER, 90, false)),
                    Event::Keepalive(2),
                ],
            ),
            (
                "passive-peer-restarts",
                true,
                vec![
                    Event::Start,
                    Event::TcpUp(1, Direction::Inbound),
                    Event::Open(1, peer_open(HIGHER, 90, true)),
                    Event::Keepalive(1),
                    Event::TcpUp(2, Direction::Inbound),
                    Event::Open(2, peer_open(HIGHER, 90, true)),
                    Event::Keepalive(2),
                    Event::Stop,
                ],
            ),
        ];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fsm");
        let bless = std::env::var_os("TORTIE_BLESS").is_some();
        for (name, passive, events) in scenarios {
            let mut fsm = Fsm::new(config(passive), Jitter::new(7));
            let mut transcript = String::new();
            for event in events {
                transcript.push_str(&format!("> {event:?}\n"));
                for action in fsm.handle(event) {
                    transcript.push_str(&format!("    {action:?}\n"));
                }
                transcript.push_str(&format!("  = {}\n", fsm.state()));
            }
            let path = dir.join(format!("{name}.txt"));
            if bless {
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                std::fs::write(&path, &transcript)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            let golden = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (bless with TORTIE_BLESS=1)", path.display()));
            assert_eq!(transcript, golden, "{name} differs from {}", path.display());
        }
    }
}
