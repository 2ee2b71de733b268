//! Speakers talking to each other over real TCP, inside a network namespace of the test's
//! own (root). Each test runs its own namespace, so the fixed port never collides, and no
//! packet leaves the namespace's loopback.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tortie_bgp::wire::{self, Capability, Codec, Family, Message, Open};
use tortie_bgp::{PeerConfig, RibEvent, RouteChange, Speaker, SpeakerConfig, State, Subscription};

const PORT: u16 = 1790;
const ASN: u32 = 64512;
const WAIT: Duration = Duration::from_secs(30);

/// A network namespace that is deleted when dropped, also when the test fails.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tbgp-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread inside the namespace, with a single-threaded runtime so that
    /// every socket is created in the namespace.
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            rt.block_on(f());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("ip: {e}"));
    assert!(status.success(), "ip {args:?} failed");
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

async fn add_peer(s: &Speaker, cfg: PeerConfig) {
    s.add_peer(cfg).await.unwrap_or_else(|e| panic!("{e}"));
}

async fn originate(s: &Speaker, prefix: &str) {
    s.originate(net(prefix))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn speaker(router_id: [u8; 4], listen: &str, restarting: bool) -> Speaker {
    let mut cfg = SpeakerConfig::new(Ipv4Addr::from(router_id), ASN);
    cfg.listen = Some(SocketAddr::new(addr(listen), PORT));
    cfg.restarting = restarting;
    cfg.deferral_time = Duration::from_secs(60);
    Speaker::start(cfg)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

fn peer(address: &str, local: &str, passive: bool) -> PeerConfig {
    let mut p = PeerConfig::new(addr(address), ASN);
    p.port = PORT;
    p.local_address = Some(addr(local));
    p.passive = passive;
    p.hold_time = 9;
    p.connect_retry = Duration::from_millis(300);
    p.peer_type = "node-to-node mesh".to_owned();
    p
}

/// Speakers A (10.0.0.1 at 127.0.0.1) and B (10.0.0.2 at 127.0.0.2) peered by the mesh
/// rule (the higher address is passive), each originating its prefixes, and a subscriber
/// on each that started before the session.
async fn mesh_pair(
    restarting: bool,
    a_prefixes: &[&str],
    b_prefixes: &[&str],
) -> (Speaker, Speaker, Watch, Watch) {
    let a = speaker([10, 0, 0, 1], "127.0.0.1", restarting).await;
    let b = speaker([10, 0, 0, 2], "127.0.0.2", restarting).await;
    let wa = Watch::new(&a).await;
    let wb = Watch::new(&b).await;
    add_peer(&a, peer("127.0.0.2", "127.0.0.1", false)).await;
    add_peer(&b, peer("127.0.0.1", "127.0.0.2", true)).await;
    for p in a_prefixes {
        originate(&a, p).await;
    }
    for p in b_prefixes {
        originate(&b, p).await;
    }
    (a, b, wa, wb)
}

/// The Loc-RIB as a subscriber sees it.
struct Watch {
    rx: Subscription,
    routes: HashMap<IpNet, IpAddr>,
    removed: Vec<IpNet>,
    sync_done: bool,
    /// How many events, and how many `Resync` events, arrived.
    events: usize,
    resyncs: usize,
}

impl Watch {
    async fn new(s: &Speaker) -> Watch {
        let rx = s
            .subscribe()
            .await
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        Watch {
            rx,
            routes: HashMap::new(),
            removed: Vec::new(),
            sync_done: false,
            events: 0,
            resyncs: 0,
        }
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Watch) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.apply(ev),
                Ok(None) => panic!("subscription closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; routes: {:?}", self.routes),
            }
        }
    }

    /// Takes whatever arrives within `d`.
    async fn drain_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.apply(ev);
        }
    }

    fn apply(&mut self, ev: RibEvent) {
        self.events += 1;
        match ev {
            RibEvent::Resync(table) => {
                self.resyncs += 1;
                let before = std::mem::take(&mut self.routes);
                self.apply_changes(table);
                self.removed
                    .extend(before.into_keys().filter(|p| !self.routes.contains_key(p)));
            }
            RibEvent::Changes(changes) => self.apply_changes(changes),
            RibEvent::InitialSyncDone => self.sync_done = true,
        }
    }

    fn apply_changes(&mut self, changes: Vec<RouteChange>) {
        for c in changes {
            match c {
                RouteChange::Add {
                    prefix, next_hop, ..
                } => {
                    self.routes.insert(prefix, next_hop);
                }
                RouteChange::Remove { prefix } => {
                    self.routes.remove(&prefix);
                    self.removed.push(prefix);
                }
            }
        }
    }

    fn has(&self, prefix: &str, next_hop: &str) -> bool {
        self.routes.get(&net(prefix)) == Some(&addr(next_hop))
    }
}

async fn wait_state(s: &Speaker, peer: &str, state: State) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = s
            .peer_status()
            .await
            .unwrap_or_else(|e| panic!("status: {e}"));
        let p = status.iter().find(|p| p.address == addr(peer));
        if p.is_some_and(|p| p.state == state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} never reached {state}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn two_speakers_exchange_ipv4_and_ipv6_routes_and_withdrawals() {
    init_tracing();
    let ns = Netns::new("pair");
    ns.run(|| async {
        let (a, b, mut wa, mut wb) = mesh_pair(
            false,
            &["192.168.1.0/26", "fd00:1::/122"],
            &["192.168.2.0/26", "192.168.3.0/26", "fd00:2::/122"],
        )
        .await;

        wa.until("B's routes on A", |w| {
            w.has("192.168.2.0/26", "127.0.0.2")
                && w.has("192.168.3.0/26", "127.0.0.2")
                // IPv6 over an IPv4 session: an IPv4-mapped next hop, reported as IPv4.
                && w.has("fd00:2::/122", "127.0.0.2")
        })
        .await;
        wb.until("A's routes on B", |w| {
            w.has("192.168.1.0/26", "127.0.0.1") && w.has("fd00:1::/122", "127.0.0.1")
        })
        .await;
        // Each side sent End-of-RIB after its table.
        wa.until("initial sync on A", |w| w.sync_done).await;
        wb.until("initial sync on B", |w| w.sync_done).await;

        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.len(), 1);
        let s = &status[0];
        assert_eq!(s.state, State::Established);
        assert_eq!((s.prefixes_received, s.prefixes_accepted), (3, 3));
        assert_eq!(s.router_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(s.hold_time, Some(9));
        assert_eq!(s.peer_type, "node-to-node mesh");
        for cap in [
            "ipv4-unicast",
            "ipv6-unicast",
            "4-octet-as",
            "route-refresh",
            "graceful-restart",
        ] {
            assert!(
                s.capabilities.iter().any(|c| c == cap),
                "{cap} missing: {:?}",
                s.capabilities
            );
        }

        // Withdrawals propagate, in both families.
        b.withdraw(net("192.168.2.0/26"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        b.withdraw(net("fd00:2::/122"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wa.until("withdrawals on A", |w| {
            !w.routes.contains_key(&net("192.168.2.0/26"))
                && !w.routes.contains_key(&net("fd00:2::/122"))
        })
        .await;
        assert!(wa.has("192.168.3.0/26", "127.0.0.2"));

        // A new subscriber starts from the current table.
        let mut late = Watch::new(&a).await;
        late.until("snapshot", |w| {
            w.has("192.168.3.0/26", "127.0.0.2") && w.sync_done
        })
        .await;
        assert_eq!(late.routes.len(), 1);

        // Removing the peer takes its routes away and closes the session.
        a.remove_peer(addr("127.0.0.2"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wa.until("routes gone with the peer", |w| w.routes.is_empty())
            .await;
        wait_state(&b, "127.0.0.1", State::Active).await;
        let status = b.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("Administrative Shutdown")),
            "{status:?}"
        );
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

/// Reads one whole message from a raw connection.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Message> {
    loop {
        match wire::decode_frame(buf, &Codec::default()) {
            Ok(Some((msg, used))) => {
                buf.drain(..used);
                return Some(msg);
            }
            Ok(None) => {}
            Err(e) => panic!("speaker sent something undecodable: {e}"),
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A hand-driven peer at 127.0.0.3: OPEN, KEEPALIVE, then whatever the test sends.
async fn raw_peer(router_id: [u8; 4]) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    socket
        .bind(SocketAddr::new(addr("127.0.0.3"), 0))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut stream = socket
        .connect(SocketAddr::new(addr("127.0.0.1"), PORT))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let open = Message::Open(Open {
        version: 4,
        my_as: ASN,
        hold_time: 30,
        bgp_id: Ipv4Addr::from(router_id),
        capabilities: vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::FourOctetAs(ASN),
        ],
    });
    let bytes = wire::encode(&open, &Codec::default()).unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(&bytes)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let first = read_message(&mut stream, &mut buf).await;
    assert!(matches!(first, Some(Message::Open(_))), "{first:?}");
    let keepalive = wire::encode(&Message::Keepalive, &Codec::default()).unwrap_or_default();
    stream
        .write_all(&keepalive)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (stream, buf)
}

#[test]
fn a_peer_sending_garbage_loses_only_its_own_session() {
    init_tracing();
    let ns = Netns::new("garbage");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        let mut wa = Watch::new(&a).await;
        add_peer(&a, peer("127.0.0.2", "127.0.0.1", false)).await;
        add_peer(&a, peer("127.0.0.3", "127.0.0.1", true)).await;
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", true)).await;
        originate(&b, "192.168.2.0/26").await;
        wa.until("B's route", |w| w.has("192.168.2.0/26", "127.0.0.2"))
            .await;

        // A connection from an address that is no peer is closed at once.
        let stranger = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        stranger
            .bind(SocketAddr::new(addr("127.0.0.9"), 0))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut stranger = stranger
            .connect(SocketAddr::new(addr("127.0.0.1"), PORT))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stranger.read(&mut byte)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "stranger was not closed: {n:?}"
        );

        // The hand-driven peer establishes, announces a route, then sends garbage.
        let (mut c, mut buf) = raw_peer([10, 0, 0, 3]).await;
        wait_state(&a, "127.0.0.3", State::Established).await;
        let update = Message::Update(wire::Update {
            attributes: wire::PathAttributes {
                origin: Some(wire::Origin::Igp),
                as_path: Some(wire::AsPath::default()),
                next_hop: Some(Ipv4Addr::new(127, 0, 0, 3)),
                local_pref: Some(100),
                ..Default::default()
            },
            nlri: vec!["192.168.3.0/26".parse().unwrap_or_default()],
            ..Default::default()
        });
        let codec = Codec {
            four_octet_as: true,
            external: false,
        };
        c.write_all(&wire::encode(&update, &codec).unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wa.until("C's route", |w| w.has("192.168.3.0/26", "127.0.0.3"))
            .await;

        // An UPDATE for the same prefix with an invalid ORIGIN (5): RFC 7606 §7.1 makes
        // it a withdrawal, and the session stays up.
        let mut body = vec![0, 0]; // no withdrawn routes
        let attrs: &[u8] = &[
            0x40, 1, 1, 5, // ORIGIN 5
            0x40, 2, 0, // AS_PATH, empty
            0x40, 3, 4, 127, 0, 0, 3, // NEXT_HOP
            0x40, 5, 4, 0, 0, 0, 100, // LOCAL_PREF
        ];
        body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        body.extend_from_slice(attrs);
        body.extend_from_slice(&[26, 192, 168, 3, 0]);
        let mut msg = vec![0xff; 16];
        msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        msg.push(2);
        msg.extend_from_slice(&body);
        c.write_all(&msg).await.unwrap_or_else(|e| panic!("{e}"));
        wa.until("C's route treated as withdrawn", |w| {
            !w.routes.contains_key(&net("192.168.3.0/26"))
        })
        .await;
        wait_state(&a, "127.0.0.3", State::Established).await;
        c.write_all(&wire::encode(&update, &codec).unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wa.until("C's route again", |w| w.has("192.168.3.0/26", "127.0.0.3"))
            .await;

        // A header with a broken marker: Connection Not Synchronized (RFC 4271 §6.1).
        let mut garbage = vec![0u8; 19];
        garbage[16..18].copy_from_slice(&19u16.to_be_bytes());
        garbage[18] = 4;
        c.write_all(&garbage)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut notification = None;
        while let Some(msg) = read_message(&mut c, &mut buf).await {
            if let Message::Notification(n) = msg {
                notification = Some(n);
            }
        }
        let n = notification.unwrap_or_else(|| panic!("no NOTIFICATION before the close"));
        assert_eq!((n.code, n.subcode), (1, 1));

        // C's route is gone (it did not negotiate graceful restart); B's session and
        // route are untouched, and B's updates still flow.
        wa.until("C's route removed", |w| {
            !w.routes.contains_key(&net("192.168.3.0/26"))
        })
        .await;
        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        let b_status = status.iter().find(|p| p.address == addr("127.0.0.2"));
        assert_eq!(b_status.map(|p| p.state), Some(State::Established));
        let c_status = status.iter().find(|p| p.address == addr("127.0.0.3"));
        assert!(
            c_status
                .and_then(|p| p.last_error.as_deref())
                .is_some_and(|e| e.contains("Connection Not Synchronized")),
            "{c_status:?}"
        );
        assert!(wa.has("192.168.2.0/26", "127.0.0.2"));
        originate(&b, "192.168.4.0/26").await;
        wa.until("B's later route", |w| w.has("192.168.4.0/26", "127.0.0.2"))
            .await;
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

#[test]
fn graceful_restart_keeps_routes_through_a_peer_restart() {
    init_tracing();
    let ns = Netns::new("gr");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let mut wa = Watch::new(&a).await;
        add_peer(&a, peer("127.0.0.2", "127.0.0.1", false)).await;
        originate(&a, "192.168.1.0/26").await;

        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", true)).await;
        for p in ["192.168.2.0/26", "192.168.3.0/26", "fd00:2::/122"] {
            originate(&b, p).await;
        }
        wa.until("B's routes", |w| w.routes.len() == 3).await;

        // B goes down for a planned restart: its sockets close without a NOTIFICATION.
        b.shutdown_for_restart()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        drop(b);
        wait_state(&a, "127.0.0.2", State::Active).await;
        wa.drain_for(Duration::from_millis(500)).await;
        assert!(
            wa.removed.is_empty(),
            "A removed {:?} although B negotiated graceful restart",
            wa.removed
        );
        assert_eq!(wa.routes.len(), 3);

        // B comes back, knowing it restarted. It no longer has 192.168.3.0/26.
        let b = speaker([10, 0, 0, 2], "127.0.0.2", true).await;
        let mut wb = Watch::new(&b).await;
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", true)).await;
        for p in ["192.168.2.0/26", "fd00:2::/122"] {
            originate(&b, p).await;
        }
        // B waits for A's End-of-RIB before it advertises (RFC 4724 §4.1) ...
        wb.until("B's initial sync", |w| {
            w.sync_done && w.has("192.168.1.0/26", "127.0.0.1")
        })
        .await;
        // ... and A sweeps only what B did not re-announce, once B's End-of-RIB arrives.
        wa.until("stale route swept", |w| {
            !w.routes.contains_key(&net("192.168.3.0/26"))
        })
        .await;
        assert_eq!(wa.removed, vec![net("192.168.3.0/26")]);
        assert!(wa.has("192.168.2.0/26", "127.0.0.2") && wa.has("fd00:2::/122", "127.0.0.2"));
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

#[test]
fn route_reflector_passes_routes_between_clients() {
    init_tracing();
    let ns = Netns::new("rr");
    ns.run(|| async {
        let rr = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        let c = speaker([10, 0, 0, 3], "127.0.0.3", false).await;
        for client in ["127.0.0.2", "127.0.0.3"] {
            let mut p = peer(client, "127.0.0.1", true);
            p.route_reflector_client = true;
            add_peer(&rr, p).await;
        }
        let mut wb = Watch::new(&b).await;
        let mut wc = Watch::new(&c).await;
        // The clients peer only with the reflector, not with each other.
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", false)).await;
        add_peer(&c, peer("127.0.0.1", "127.0.0.3", false)).await;
        originate(&b, "192.168.2.0/26").await;
        originate(&c, "192.168.3.0/26").await;
        originate(&c, "fd00:3::/122").await;
        // Reflected routes keep the originating client's next hop.
        wc.until("B's route on C", |w| w.has("192.168.2.0/26", "127.0.0.2"))
            .await;
        wb.until("C's routes on B", |w| {
            w.has("192.168.3.0/26", "127.0.0.3") && w.has("fd00:3::/122", "127.0.0.3")
        })
        .await;
        // Each client refuses its own route coming back (ORIGINATOR_ID), so it does not
        // show up as learned.
        assert!(!wb.routes.contains_key(&net("192.168.2.0/26")));
        let _ = rr.shutdown().await;
        let _ = b.shutdown().await;
        let _ = c.shutdown().await;
    });
}

#[test]
fn md5_passwords_must_match() {
    init_tracing();
    let ns = Netns::new("md5");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        let c = speaker([10, 0, 0, 3], "127.0.0.3", false).await;
        let with_password = |mut p: PeerConfig, pw: &str| {
            p.password = Some(tortie_bgp::Password::new(pw));
            p
        };
        // A waits for both; B knows the password, C does not.
        for (p, pw) in [("127.0.0.2", "s3cret"), ("127.0.0.3", "s3cret")] {
            add_peer(&a, with_password(peer(p, "127.0.0.1", true), pw)).await;
        }
        add_peer(
            &b,
            with_password(peer("127.0.0.1", "127.0.0.2", false), "s3cret"),
        )
        .await;
        add_peer(
            &c,
            with_password(peer("127.0.0.1", "127.0.0.3", false), "wrong"),
        )
        .await;
        wait_state(&a, "127.0.0.2", State::Established).await;
        // The kernel drops C's unsigned-with-the-wrong-key SYNs: no session, ever.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        let c_state = status
            .iter()
            .find(|p| p.address == addr("127.0.0.3"))
            .map(|p| p.state);
        assert_eq!(c_state, Some(State::Active));
        let c_status = c.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(c_status[0].state, State::Established);
        // The password appears in no status output.
        let shown = format!("{status:?} {c_status:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("wrong"),
            "{shown}"
        );
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
        let _ = c.shutdown().await;
    });
}

#[test]
fn two_active_speakers_settle_on_one_session() {
    init_tracing();
    let ns = Netns::new("collide");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        let mut wa = Watch::new(&a).await;
        // Neither side is passive: both connect, and collision resolution (RFC 4271 §6.8)
        // must leave exactly one session.
        let (ra, rb) = tokio::join!(
            a.add_peer(peer("127.0.0.2", "127.0.0.1", false)),
            b.add_peer(peer("127.0.0.1", "127.0.0.2", false)),
        );
        ra.unwrap_or_else(|e| panic!("{e}"));
        rb.unwrap_or_else(|e| panic!("{e}"));
        originate(&b, "192.168.2.0/26").await;
        wa.until("B's route", |w| w.has("192.168.2.0/26", "127.0.0.2"))
            .await;
        wait_state(&a, "127.0.0.2", State::Established).await;
        wait_state(&b, "127.0.0.1", State::Established).await;
        // It stays up: no flapping between the two connections.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for s in [&a, &b] {
            let status = s.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status[0].state, State::Established, "{status:?}");
        }
        wa.drain_for(Duration::from_millis(100)).await;
        assert!(wa.removed.is_empty(), "{:?}", wa.removed);
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

fn open_message(router_id: [u8; 4]) -> Vec<u8> {
    let open = Message::Open(Open {
        version: 4,
        my_as: ASN,
        hold_time: 30,
        bgp_id: Ipv4Addr::from(router_id),
        capabilities: vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::FourOctetAs(ASN),
        ],
    });
    wire::encode(&open, &Codec::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn connection_collision_keeps_the_connection_of_the_higher_identifier() {
    init_tracing();
    let ns = Netns::new("collision");
    ns.run(|| async {
        // The hand-driven peer C (10.0.0.9) listens, and also connects to A (10.0.0.1).
        let c_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr("127.0.0.3"), PORT))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        add_peer(&a, peer("127.0.0.3", "127.0.0.1", false)).await;
        let (mut from_a, _) = tokio::time::timeout(WAIT, c_listener.accept())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf1 = Vec::new();
        let m = read_message(&mut from_a, &mut buf1).await;
        assert!(matches!(m, Some(Message::Open(_))), "{m:?}");

        // While A is in OpenSent on its connection, C opens its own.
        let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket
            .bind(SocketAddr::new(addr("127.0.0.3"), 0))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut to_a = socket
            .connect(SocketAddr::new(addr("127.0.0.1"), PORT))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf2 = Vec::new();
        let m = read_message(&mut to_a, &mut buf2).await;
        assert!(
            matches!(m, Some(Message::Open(_))),
            "A must send OPEN on the second connection: {m:?}"
        );

        // C's OPEN on A's connection reveals C's higher identifier: A must close the
        // connection it opened with Cease / Connection Collision Resolution.
        from_a
            .write_all(&open_message([10, 0, 0, 9]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut cease = None;
        while let Some(m) = read_message(&mut from_a, &mut buf1).await {
            if let Message::Notification(n) = m {
                cease = Some((n.code, n.subcode));
            }
        }
        assert_eq!(cease, Some((6, 7)));

        // The connection C opened carries on to Established.
        to_a.write_all(&open_message([10, 0, 0, 9]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let keepalive = wire::encode(&Message::Keepalive, &Codec::default()).unwrap_or_default();
        to_a.write_all(&keepalive)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let m = read_message(&mut to_a, &mut buf2).await;
        assert_eq!(m, Some(Message::Keepalive));
        wait_state(&a, "127.0.0.3", State::Established).await;
        let _ = a.shutdown().await;
    });
}

#[test]
fn a_silent_peer_times_out_and_its_routes_go_after_its_restart_time() {
    init_tracing();
    let ns = Netns::new("hold");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let mut wa = Watch::new(&a).await;
        let mut p = peer("127.0.0.3", "127.0.0.1", true);
        p.hold_time = 3;
        add_peer(&a, p).await;

        // C offers graceful restart with a 2-second restart time.
        let socket = TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
        socket
            .bind(SocketAddr::new(addr("127.0.0.3"), 0))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = socket
            .connect(SocketAddr::new(addr("127.0.0.1"), PORT))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let open = Message::Open(Open {
            version: 4,
            my_as: ASN,
            hold_time: 30,
            bgp_id: Ipv4Addr::new(10, 0, 0, 3),
            capabilities: vec![
                Capability::Multiprotocol(Family::IPV4_UNICAST),
                Capability::FourOctetAs(ASN),
                Capability::GracefulRestart(wire::GracefulRestart {
                    restart_state: false,
                    notification: false,
                    restart_time: 2,
                    families: vec![wire::GracefulRestartFamily {
                        family: Family::IPV4_UNICAST,
                        forwarding_preserved: true,
                    }],
                }),
            ],
        });
        let codec = Codec {
            four_octet_as: true,
            external: false,
        };
        let update = Message::Update(wire::Update {
            attributes: wire::PathAttributes {
                origin: Some(wire::Origin::Igp),
                as_path: Some(wire::AsPath::default()),
                next_hop: Some(Ipv4Addr::new(127, 0, 0, 3)),
                local_pref: Some(100),
                ..Default::default()
            },
            nlri: vec!["192.168.3.0/26".parse().unwrap_or_default()],
            ..Default::default()
        });
        let mut hello = wire::encode(&open, &Codec::default()).unwrap_or_else(|e| panic!("{e}"));
        hello.extend(wire::encode(&Message::Keepalive, &codec).unwrap_or_default());
        hello.extend(wire::encode(&update, &codec).unwrap_or_else(|e| panic!("{e}")));
        c.write_all(&hello).await.unwrap_or_else(|e| panic!("{e}"));
        wa.until("C's route", |w| w.has("192.168.3.0/26", "127.0.0.3"))
            .await;

        // C goes silent. After the 3-second hold time A gives up with Hold Timer Expired
        // but keeps C's route as stale ...
        let mut buf = Vec::new();
        let mut expired = false;
        while let Some(m) = read_message(&mut c, &mut buf).await {
            if let Message::Notification(n) = m {
                expired = (n.code, n.subcode) == (4, 0);
            }
        }
        assert!(expired, "no Hold Timer Expired NOTIFICATION");
        let down_at = tokio::time::Instant::now();
        wa.drain_for(Duration::from_millis(1000)).await;
        assert!(wa.removed.is_empty(), "removed at once: {:?}", wa.removed);
        // ... until C's restart time has passed without C coming back.
        wa.until("stale route swept", |w| w.routes.is_empty()).await;
        let waited = down_at.elapsed();
        assert!(
            waited >= Duration::from_millis(1500),
            "swept after only {waited:?}"
        );
        let _ = a.shutdown().await;
    });
}

#[test]
fn two_restarting_speakers_do_not_wait_for_each_other() {
    init_tracing();
    let ns = Netns::new("bothrestart");
    ns.run(|| async {
        // Both come back from a restart at once (a whole-cluster reboot). Each sees the
        // other's R bit and advertises without waiting (RFC 4724 §4.2); otherwise both
        // would sit out the 60-second deferral timer.
        let (a, b, mut wa, mut wb) =
            mesh_pair(true, &["192.168.1.0/26"], &["192.168.2.0/26"]).await;
        let started = tokio::time::Instant::now();
        wa.until("sync on A", |w| {
            w.sync_done && w.has("192.168.2.0/26", "127.0.0.2")
        })
        .await;
        wb.until("sync on B", |w| {
            w.sync_done && w.has("192.168.1.0/26", "127.0.0.1")
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

#[test]
fn changing_the_import_pools_refreshes_routes_from_peers() {
    init_tracing();
    let ns = Netns::new("pools");
    ns.run(|| async {
        let mut cfg = SpeakerConfig::new(Ipv4Addr::new(10, 0, 0, 1), ASN);
        cfg.listen = Some(SocketAddr::new(addr("127.0.0.1"), PORT));
        cfg.import_allow = Some(vec![net("192.168.0.0/16")]);
        let a = Speaker::start(cfg).await.unwrap_or_else(|e| panic!("{e}"));
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        let mut wa = Watch::new(&a).await;
        add_peer(&a, peer("127.0.0.2", "127.0.0.1", false)).await;
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", true)).await;
        for p in ["192.168.2.0/26", "10.244.2.0/26"] {
            originate(&b, p).await;
        }
        wa.until("B's pool route", |w| w.has("192.168.2.0/26", "127.0.0.2"))
            .await;
        wa.until("sync", |w| w.sync_done).await;
        assert!(!wa.routes.contains_key(&net("10.244.2.0/26")));

        // A pool is added: the refused route comes back through ROUTE-REFRESH.
        a.set_import_allow(Some(vec![net("192.168.0.0/16"), net("10.244.0.0/16")]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wa.until("the new pool's route", |w| {
            w.has("10.244.2.0/26", "127.0.0.2")
        })
        .await;
        // A pool is removed: its routes go at once.
        a.set_import_allow(Some(vec![net("10.244.0.0/16")]))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wa.until("the old pool's route gone", |w| {
            !w.routes.contains_key(&net("192.168.2.0/26"))
        })
        .await;
        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (status[0].prefixes_received, status[0].prefixes_accepted),
            (2, 1)
        );
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

#[test]
fn many_small_updates_reach_the_subscriber_in_few_batches() {
    init_tracing();
    let ns = Netns::new("flap");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        add_peer(&a, peer("127.0.0.3", "127.0.0.1", true)).await;
        let mut rx = a.subscribe().await.unwrap_or_else(|e| panic!("{e}"));
        let (mut c, _buf) = raw_peer([10, 0, 0, 3]).await;
        wait_state(&a, "127.0.0.3", State::Established).await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {}

        // A flapping peer: 2000 UPDATEs of one prefix each, announce and withdraw in turn
        // over 1000 prefixes, written at once.
        let codec = Codec {
            four_octet_as: true,
            external: false,
        };
        let mut flood = Vec::new();
        for round in 0..2u32 {
            for i in 0..1000u32 {
                let prefix = ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24)
                    .unwrap_or_default();
                let update = if round == 0 {
                    wire::Update {
                        attributes: wire::PathAttributes {
                            origin: Some(wire::Origin::Igp),
                            as_path: Some(wire::AsPath::default()),
                            next_hop: Some(Ipv4Addr::new(127, 0, 0, 3)),
                            ..Default::default()
                        },
                        nlri: vec![prefix],
                        ..Default::default()
                    }
                } else {
                    wire::Update {
                        withdrawn: vec![prefix],
                        ..Default::default()
                    }
                };
                flood.extend(
                    wire::encode(&Message::Update(update), &codec)
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
        }
        c.write_all(&flood).await.unwrap_or_else(|e| panic!("{e}"));

        let (mut adds, mut removes, mut batches) = (0, 0, 0);
        while removes < 1000 {
            match tokio::time::timeout(WAIT, rx.recv()).await {
                Ok(Some(RibEvent::Changes(changes))) => {
                    batches += 1;
                    for c in changes {
                        match c {
                            RouteChange::Add { .. } => adds += 1,
                            RouteChange::Remove { .. } => removes += 1,
                        }
                    }
                }
                Ok(Some(RibEvent::InitialSyncDone)) => {}
                other => panic!("after {adds} adds and {removes} removes: {other:?}"),
            }
        }
        assert_eq!(adds, 1000);
        // One batch per UPDATE would be 2000.
        assert!(batches < 500, "{batches} batches for 2000 UPDATEs");
        println!("2000 UPDATEs in {batches} batches");
        let _ = a.shutdown().await;
    });
}

/// One UPDATE announcing `prefix` via 127.0.0.3, as the raw peer sends it.
fn announce(prefix: ipnet::Ipv4Net) -> Vec<u8> {
    let codec = Codec {
        four_octet_as: true,
        external: false,
    };
    let update = wire::Update {
        attributes: wire::PathAttributes {
            origin: Some(wire::Origin::Igp),
            as_path: Some(wire::AsPath::default()),
            next_hop: Some(Ipv4Addr::new(127, 0, 0, 3)),
            ..Default::default()
        },
        nlri: vec![prefix],
        ..Default::default()
    };
    wire::encode(&Message::Update(update), &codec).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_subscriber_that_stops_reading_stalls_nothing_and_resyncs_when_it_reads_again() {
    init_tracing();
    let ns = Netns::new("stall");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        add_peer(&a, peer("127.0.0.2", "127.0.0.1", false)).await;
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", true)).await;
        add_peer(&a, peer("127.0.0.3", "127.0.0.1", true)).await;
        let mut live = Watch::new(&a).await;
        let mut stalled = Watch::new(&a).await;
        let mut on_b = Watch::new(&b).await;
        // The stalled subscriber takes its first table, then stops reading.
        stalled.until("the first table", |w| w.events > 0).await;
        let (mut c, _buf) = raw_peer([10, 0, 0, 3]).await;
        wait_state(&a, "127.0.0.3", State::Established).await;
        wait_state(&a, "127.0.0.2", State::Established).await;

        // One UPDATE at a time, each its own batch: far more than a subscriber queue holds.
        let count = 400u32;
        let prefix = |i: u32| {
            ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap_or_default()
        };
        for i in 0..count {
            c.write_all(&announce(prefix(i)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        live.until("every route on the live subscriber", |w| {
            w.routes.len() == count as usize
        })
        .await;
        // The other sessions carry on: B's new route reaches A, A's reaches B.
        originate(&b, "192.168.2.0/26").await;
        originate(&a, "192.168.1.0/26").await;
        live.until("B's route on A", |w| w.has("192.168.2.0/26", "127.0.0.2"))
            .await;
        on_b.until("A's route on B", |w| w.has("192.168.1.0/26", "127.0.0.1"))
            .await;
        // A withdrawal the stalled subscriber misses too: the table must drop it.
        let codec = Codec {
            four_octet_as: true,
            external: false,
        };
        let withdraw = wire::Update {
            withdrawn: vec![prefix(0)],
            ..Default::default()
        };
        c.write_all(
            &wire::encode(&Message::Update(withdraw), &codec).unwrap_or_else(|e| panic!("{e}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        live.until("the withdrawal", |w| {
            !w.routes.contains_key(&IpNet::V4(prefix(0)))
        })
        .await;

        // Reading again: what was queued, then the whole table in one `Resync`.
        stalled.resyncs = 0;
        stalled.until("a resync", |w| w.resyncs > 0).await;
        stalled.drain_for(Duration::from_millis(300)).await;
        assert_eq!(stalled.resyncs, 1);
        assert_eq!(stalled.routes, live.routes);
        // All but the withdrawn one, and B's.
        assert_eq!(stalled.routes.len(), count as usize);
        assert!(!stalled.routes.contains_key(&IpNet::V4(prefix(0))));
        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            status.iter().all(|p| p.state == State::Established),
            "{status:?}"
        );
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}

#[test]
fn a_peer_over_its_prefix_limit_loses_only_its_own_session() {
    init_tracing();
    let ns = Netns::new("maxpfx");
    ns.run(|| async {
        let a = speaker([10, 0, 0, 1], "127.0.0.1", false).await;
        let b = speaker([10, 0, 0, 2], "127.0.0.2", false).await;
        let c = speaker([10, 0, 0, 3], "127.0.0.3", false).await;
        let mut limited = peer("127.0.0.2", "127.0.0.1", true);
        limited.max_prefixes = Some(2);
        add_peer(&a, limited).await;
        add_peer(&a, peer("127.0.0.3", "127.0.0.1", true)).await;
        add_peer(&b, peer("127.0.0.1", "127.0.0.2", false)).await;
        add_peer(&c, peer("127.0.0.1", "127.0.0.3", false)).await;
        let mut wa = Watch::new(&a).await;
        originate(&c, "192.168.3.0/26").await;
        originate(&b, "192.168.2.0/26").await;
        originate(&b, "192.168.2.64/26").await;
        wa.until("B's two routes and C's on A", |w| {
            w.has("192.168.2.0/26", "127.0.0.2")
                && w.has("192.168.2.64/26", "127.0.0.2")
                && w.has("192.168.3.0/26", "127.0.0.3")
        })
        .await;
        wait_state(&a, "127.0.0.2", State::Established).await;
        // The third prefix is one more than A takes from B.
        originate(&b, "192.168.2.128/26").await;
        wa.until("B's routes gone from A", |w| {
            !w.routes.values().any(|nh| *nh == addr("127.0.0.2"))
        })
        .await;
        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        let of = |peer: &str| {
            status
                .iter()
                .find(|p| p.address == addr(peer))
                .unwrap_or_else(|| panic!("{peer} not in {status:?}"))
                .clone()
        };
        assert_eq!(of("127.0.0.2").state, State::Idle, "{status:?}");
        assert_eq!(
            of("127.0.0.2").last_error.as_deref(),
            Some("maximum number of prefixes reached")
        );
        // B was told why (RFC 4486 Cease subcode 1).
        let b_status = b.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        let told = b_status[0].last_error.clone().unwrap_or_default();
        assert!(
            told.contains("Cease / Maximum Number of Prefixes Reached"),
            "{b_status:?}"
        );
        // C's session was not touched and A still has its route.
        assert_eq!(of("127.0.0.3").state, State::Established);
        assert!(wa.has("192.168.3.0/26", "127.0.0.3"));
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
        let _ = c.shutdown().await;
    });
}

#[test]
fn changing_our_as_starts_every_session_again_with_the_new_as() {
    init_tracing();
    let ns = Netns::new("asn");
    ns.run(|| async {
        let (a, b, mut wa, mut wb) =
            mesh_pair(false, &["192.168.1.0/26"], &["192.168.2.0/26"]).await;
        wa.until("B's route on A", |w| w.has("192.168.2.0/26", "127.0.0.2"))
            .await;

        a.set_asn(65010).await.unwrap_or_else(|e| panic!("{e}"));
        // B still expects A in 64512: it refuses A's new OPEN, and A's session with B
        // (whose settings are kept) never comes back in the old AS.
        wa.until("B's route gone from A", |w| {
            !w.routes.contains_key(&net("192.168.2.0/26"))
        })
        .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
            status.extend(b.peer_status().await.unwrap_or_else(|e| panic!("{e}")));
            let refused = status.iter().any(|s| {
                s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("Bad Peer AS"))
            });
            if refused {
                assert!(
                    status.iter().all(|s| s.state != State::Established),
                    "{status:?}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "B never refused A's new AS: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // B configured for A's new AS: an eBGP session, A's route on B, B's back on A.
        b.remove_peer(addr("127.0.0.1"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut to_a = peer("127.0.0.1", "127.0.0.2", true);
        to_a.asn = 65010;
        add_peer(&b, to_a).await;
        wait_state(&a, "127.0.0.2", State::Established).await;
        wb.until("A's route on B over eBGP", |w| {
            w.has("192.168.1.0/26", "127.0.0.1")
        })
        .await;
        wa.until("B's route back on A", |w| {
            w.has("192.168.2.0/26", "127.0.0.2")
        })
        .await;
        let status = a.peer_status().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status[0].asn, ASN, "A's setting for B is kept: {status:?}");
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;
    });
}
