//! Root tests: tortie's standalone BGP daemon (`tortie-node bgp`) against BIRD 2, FRR's
//! bgpd and GoBGP, each pair in its own two namespaces joined by a veth.
//!
//! Build the binaries first: `cargo build -p tortie-node` (the tests find `tortie-node`
//! and `tortiectl` in the target folder, or through TORTIE_NODE_BIN / TORTIECTL_BIN).

mod bgp_support;

use std::collections::BTreeSet;
use std::time::Duration;

use bgp_support::{ip, member_spec, net};
use ipnet::IpNet;
use tortie_lab::netns::{self, Lan, NetNs};
use tortie_lab::routers::{Kind, Router, RouterSpec};

const T: Duration = Duration::from_secs(40);
const TORTIE: &str = "10.99.0.1";
const PEER: &str = "10.99.0.2";

/// The two namespaces and the routers in them. Field order is drop order: routers first.
struct Pair {
    tortie: Router,
    peer: Router,
    _ns: (NetNs, NetNs),
}

struct Options {
    tortie_passive: bool,
    tortie_password: Option<&'static str>,
    peer_password: Option<&'static str>,
}

const PLAIN_ACTIVE: Options = Options {
    tortie_passive: false,
    tortie_password: None,
    peer_password: None,
};
const PLAIN_PASSIVE: Options = Options {
    tortie_passive: true,
    tortie_password: None,
    peer_password: None,
};

/// Router `n` (1 = tortie, 2 = peer) on 10.99.0.n / fd99::n, originating 10.n.0.0/24 and
/// fdn::/64 (with next hops on the link, for IPv6 over the IPv4 session).
fn spec(n: u8, passive: bool, password: Option<&str>) -> RouterSpec {
    let mut s = member_spec("10.99.0", "fd99::", n, &[(3 - n, false)], passive);
    s.peers[0].password = password.map(str::to_owned);
    s.originate = vec![net(&format!("10.{n}.0.0/24")), net(&format!("fd0{n}::/64"))];
    s
}

fn pair(kind: Kind, o: &Options) -> Pair {
    let (t, p) =
        netns::linked_pair("trt-bgp", "10.99.0", "fd99::").unwrap_or_else(|e| panic!("{e}"));
    let peer = Router::start(kind, &p, spec(2, !o.tortie_passive, o.peer_password))
        .unwrap_or_else(|e| panic!("{e}"));
    let tortie = Router::start(
        Kind::Tortie,
        &t,
        spec(1, o.tortie_passive, o.tortie_password),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Pair {
        tortie,
        peer,
        _ns: (t, p),
    }
}

fn has_all(want: &'static [&'static str]) -> impl Fn(&BTreeSet<IpNet>) -> bool {
    move |s| want.iter().all(|w| s.contains(&net(w)))
}

/// Session up, prefixes both ways in both families, routes in tortie's kernel with the
/// peer's next hops, status visible through tortiectl, and withdrawals propagating.
fn exchange(kind: Kind, o: &Options) {
    let mut pr = pair(kind, o);
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .wait_established(ip(TORTIE), T)
        .unwrap_or_else(|e| panic!("{e}"));

    pr.peer
        .wait_learned(
            T,
            "the peer learns tortie's prefixes",
            has_all(&["10.1.0.0/24", "fd01::/64"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_learned(
            T,
            "tortie installs the peer's prefixes",
            has_all(&["10.2.0.0/24", "fd02::/64"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let kernel = pr.tortie.kernel_routes().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        kernel.contains(&(net("10.2.0.0/24"), Some(ip(PEER)))),
        "{kernel:?}"
    );
    assert!(
        kernel.contains(&(net("fd02::/64"), Some(ip("fd99::2")))),
        "{kernel:?}"
    );

    let table = pr
        .tortie
        .tortiectl(&["node", "status"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(table.starts_with("tortie process is running.\n"), "{table}");
    assert!(
        table.contains("| 10.99.0.2    | global    | up    |"),
        "{table}"
    );
    assert!(table.contains("No IPv6 peers found."), "{table}");

    pr.peer
        .withdraw(net("10.2.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_learned(T, "the withdrawn IPv4 route leaves tortie's kernel", |s| {
            !s.contains(&net("10.2.0.0/24")) && s.contains(&net("fd02::/64"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .withdraw(net("fd02::/64"))
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .announce(net("10.22.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_learned(
            T,
            "the IPv6 withdrawal and a new announcement reach tortie's kernel",
            |s| !s.contains(&net("fd02::/64")) && s.contains(&net("10.22.0.0/24")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bird_with_tortie_active() {
    exchange(Kind::Bird, &PLAIN_ACTIVE);
}

#[test]
fn bird_with_tortie_passive() {
    exchange(Kind::Bird, &PLAIN_PASSIVE);
}

#[test]
fn frr_with_tortie_active() {
    exchange(Kind::Frr, &PLAIN_ACTIVE);
}

#[test]
fn frr_with_tortie_passive() {
    exchange(Kind::Frr, &PLAIN_PASSIVE);
}

#[test]
fn gobgp_with_tortie_active() {
    exchange(Kind::Gobgp, &PLAIN_ACTIVE);
}

#[test]
fn gobgp_with_tortie_passive() {
    exchange(Kind::Gobgp, &PLAIN_PASSIVE);
}

/// MD5 with the same password on both sides: the session comes up and routes flow.
fn md5_matching(kind: Kind, tortie_passive: bool) {
    let o = Options {
        tortie_passive,
        tortie_password: Some("s3cret-md5"),
        peer_password: Some("s3cret-md5"),
    };
    let pr = pair(kind, &o);
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_learned(
            T,
            "tortie installs the peer's prefixes over an MD5 session",
            has_all(&["10.2.0.0/24"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let status = pr
        .tortie
        .tortiectl(&["node", "status", "-o", "json"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !status.contains("s3cret"),
        "the password leaked into status: {status}"
    );
    let log = std::fs::read_to_string(pr.tortie.dir().join("router.log")).unwrap_or_default();
    assert!(!log.contains("s3cret"), "the password leaked into the log");
}

/// A wrong password: the kernel drops the segments, and the session never comes up.
fn md5_wrong(kind: Kind) {
    let o = Options {
        tortie_passive: false,
        tortie_password: Some("right-one"),
        peer_password: Some("wrong-one"),
    };
    let pr = pair(kind, &o);
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        !pr.tortie.established(ip(PEER)).unwrap_or(true),
        "session up despite the wrong password"
    );
    assert!(!pr.peer.established(ip(TORTIE)).unwrap_or(true));
    // Both daemons are alive and trying, so "down" is the password's doing.
    let status = pr.tortie.tortie_status().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status["ipv4_peers"][0]["state"], "start", "{status}");
}

#[test]
fn bird_md5_tortie_active() {
    md5_matching(Kind::Bird, false);
}

#[test]
fn bird_md5_tortie_passive() {
    md5_matching(Kind::Bird, true);
}

#[test]
fn bird_md5_wrong_password() {
    md5_wrong(Kind::Bird);
}

#[test]
fn frr_md5_tortie_active() {
    md5_matching(Kind::Frr, false);
}

#[test]
fn frr_md5_tortie_passive() {
    md5_matching(Kind::Frr, true);
}

#[test]
fn frr_md5_wrong_password() {
    md5_wrong(Kind::Frr);
}

/// Runs `ip monitor route` in a namespace until dropped; `deleted()` lists every route
/// deletion it saw (the evidence for "no route is withdrawn at any point").
struct RouteMonitor {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl RouteMonitor {
    fn start(ns: &NetNs) -> RouteMonitor {
        let out =
            std::env::temp_dir().join(format!("trt-monitor-{}-{}", std::process::id(), ns.name()));
        let file = std::fs::File::create(&out).unwrap_or_else(|e| panic!("{e}"));
        let child = std::process::Command::new("ip")
            .args(["-n", ns.name(), "monitor", "route"])
            .stdout(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        // `ip monitor` subscribes right after start; give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        RouteMonitor { child, out }
    }

    fn deleted(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Deleted"))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// RFC 4724 with tortie as the restarting speaker: SIGKILL it, the peer keeps our routes
/// and our kernel keeps the peer's; on restart everything re-syncs without a single
/// withdrawal, and a route the peer dropped meanwhile is swept after End-of-RIB.
fn graceful_restart(kind: Kind) {
    let mut pr = pair(kind, &PLAIN_ACTIVE);
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .announce(net("10.23.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .wait_learned(
            T,
            "the peer learns tortie's prefixes",
            has_all(&["10.1.0.0/24", "fd01::/64"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_learned(
            T,
            "tortie installs the peer's prefixes",
            has_all(&["10.2.0.0/24", "fd02::/64", "10.23.0.0/24"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let monitor = RouteMonitor::start(&pr._ns.0);

    pr.tortie.kill();
    // The peer notices the dead session (the kernel closes tortie's socket) and keeps our
    // routes as stale; our kernel keeps the peer's routes with no daemon at all.
    tortie_lab::routers::wait_for(T, "the peer to see the session drop", || {
        Ok(!pr.peer.established(ip(TORTIE))?)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .withdraw(net("10.23.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..20 {
        let learned = pr.peer.learned().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            has_all(&["10.1.0.0/24", "fd01::/64"])(&learned),
            "the peer dropped our routes: {learned:?}"
        );
        let kernel = pr.tortie.learned().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            has_all(&["10.2.0.0/24", "fd02::/64", "10.23.0.0/24"])(&kernel),
            "kernel lost routes: {kernel:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    pr.tortie.restart().unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    // After End-of-RIB the route the peer no longer has is swept, and only that one.
    pr.tortie
        .wait_learned(T, "the stale route to be swept after End-of-RIB", |s| {
            !s.contains(&net("10.23.0.0/24")) && has_all(&["10.2.0.0/24", "fd02::/64"])(s)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let learned = pr.peer.learned().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        has_all(&["10.1.0.0/24", "fd01::/64"])(&learned),
        "{learned:?}"
    );
    let deleted = monitor.deleted();
    assert!(
        deleted.iter().all(|l| l.contains("10.23.0.0/24")),
        "routes were withdrawn from the kernel during the restart: {deleted:?}"
    );
    assert_eq!(deleted.len(), 1, "{deleted:?}");
}

#[test]
fn bird_graceful_restart_of_tortie() {
    graceful_restart(Kind::Bird);
}

#[test]
fn frr_graceful_restart_of_tortie() {
    graceful_restart(Kind::Frr);
}

/// RFC 4724 with tortie as the helper of a real router: BIRD dies (SIGKILL: no
/// NOTIFICATION) and comes back in recovery mode (`bird -R`). tortie's kernel keeps BIRD's
/// routes while it is gone, the re-sent ones replace the stale ones without a withdrawal,
/// and the one route BIRD no longer has after its restart is swept after its End-of-RIB.
#[test]
fn tortie_helps_bird_through_a_graceful_restart() {
    let mut pr = pair(Kind::Bird, &PLAIN_ACTIVE);
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .announce(net("10.23.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    let all = has_all(&["10.2.0.0/24", "fd02::/64", "10.23.0.0/24"]);
    pr.tortie
        .wait_learned(T, "tortie installs BIRD's prefixes", &all)
        .unwrap_or_else(|e| panic!("{e}"));
    let monitor = RouteMonitor::start(&pr._ns.0);

    pr.peer.kill();
    tortie_lab::routers::wait_for(T, "tortie to see the session drop", || {
        Ok(!pr.tortie.established(ip(PEER))?)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // BIRD is down: this only changes what it announces once it is back.
    pr.peer
        .withdraw(net("10.23.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..10 {
        let kernel = pr.tortie.learned().unwrap_or_else(|e| panic!("{e}"));
        assert!(all(&kernel), "kernel lost BIRD's routes: {kernel:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    pr.peer
        .restart_recovering()
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    pr.tortie
        .wait_learned(
            T,
            "the route BIRD dropped to be swept after End-of-RIB",
            |s| !s.contains(&net("10.23.0.0/24")) && has_all(&["10.2.0.0/24", "fd02::/64"])(s),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let deleted = monitor.deleted();
    assert!(
        deleted.len() == 1 && deleted.iter().all(|l| l.contains("10.23.0.0/24")),
        "only the dropped route may leave the kernel during BIRD's restart: {deleted:?}"
    );
}

/// The BGP protocol of the peer's BIRD (its only neighbor, tortie).
const BIRD_SESSION: &str = "peer0";

/// The updates BIRD's session with tortie has received, over its IPv4 and IPv6 channels
/// ("Import updates", first column).
fn bird_updates_received(bird: &Router) -> u64 {
    let out = bird
        .birdc(&["show", "protocols", "all", BIRD_SESSION])
        .unwrap_or_else(|e| panic!("{e}"));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Import updates:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// RFC 2918 with a real router: `birdc reload in` makes BIRD send ROUTE-REFRESH, and tortie
/// answers with its whole table again, which BIRD counts as received updates.
#[test]
fn tortie_answers_birds_route_refresh() {
    let pr = pair(Kind::Bird, &PLAIN_ACTIVE);
    pr.tortie
        .wait_established(ip(PEER), T)
        .unwrap_or_else(|e| panic!("{e}"));
    pr.peer
        .wait_learned(
            T,
            "BIRD learns tortie's prefixes",
            has_all(&["10.1.0.0/24", "fd01::/64"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // Nothing else changes from here on: every new update is the answer to the refresh.
    std::thread::sleep(Duration::from_millis(500));
    let before = bird_updates_received(&pr.peer);
    assert!(before >= 2, "BIRD counted {before} updates from tortie");
    pr.peer
        .birdc(&["reload", "in", BIRD_SESSION])
        .unwrap_or_else(|e| panic!("{e}"));
    tortie_lab::routers::wait_for(T, "BIRD to receive tortie's table again", || {
        Ok(bird_updates_received(&pr.peer) >= before + 2)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", pr.peer.log_tail()));
    assert!(pr.tortie.established(ip(PEER)).unwrap_or(false));
}

/// A LAN: a bridge in its own namespace and `n` member namespaces on it, member `i`
/// (1-based) at 10.98.0.i/24 and fd98::i/64. Members come first so they drop first.
fn lan(n: u8) -> Lan {
    Lan::create("trt-bgp", n, "10.98.0", "fd98::").unwrap_or_else(|e| panic!("{e}"))
}

/// LAN member `i` peering with `peers` (address index, is an RR client of ours),
/// originating 10.i.0.0/24 and fd0i::/64.
fn lan_spec(i: u8, peers: &[(u8, bool)], passive: bool) -> RouterSpec {
    let mut s = member_spec("10.98.0", "fd98::", i, peers, passive);
    s.originate = vec![net(&format!("10.{i}.0.0/24")), net(&format!("fd0{i}::/64"))];
    s
}

/// On a 3-member LAN: a route reflector (member 1, passive) and its two clients (members 2
/// and 3, which open the sessions), started in that order and returned in that order.
fn reflector_and_clients(lan: &Lan, kinds: [Kind; 3]) -> [Router; 3] {
    let mut routers = Vec::with_capacity(3);
    for (i, kind) in (1..=3).zip(kinds) {
        let spec = if i == 1 {
            lan_spec(1, &[(2, true), (3, true)], true)
        } else {
            lan_spec(i, &[(1, false)], false)
        };
        let ns = &lan.members[usize::from(i - 1)];
        routers.push(Router::start(kind, ns, spec).unwrap_or_else(|e| panic!("{e}")));
    }
    routers
        .try_into()
        .unwrap_or_else(|_| unreachable!("three routers were started"))
}

/// RFC 4456 with tortie as the reflector: an FRR client and a tortie client learn each
/// other's routes through it, with the originator's next hop and the RR's loop-check
/// attributes.
#[test]
fn tortie_reflects_between_frr_and_tortie_clients() {
    let lan = lan(3);
    let [rr, frr, client] = reflector_and_clients(&lan, [Kind::Tortie, Kind::Frr, Kind::Tortie]);

    client
        .wait_learned(
            T,
            "the tortie client learns FRR's routes via the reflector",
            has_all(&["10.2.0.0/24", "fd02::/64", "10.1.0.0/24"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let kernel = client.kernel_routes().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        kernel.contains(&(net("10.2.0.0/24"), Some(ip("10.98.0.2")))),
        "next hop not the originator's: {kernel:?}"
    );
    assert!(
        kernel.contains(&(net("fd02::/64"), Some(ip("fd98::2")))),
        "{kernel:?}"
    );

    frr.wait_learned(
        T,
        "FRR learns the tortie client's routes via the reflector",
        has_all(&["10.3.0.0/24", "fd03::/64"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let route = frr
        .vtysh(&["show bgp ipv4 unicast 10.3.0.0/24 json"])
        .unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value =
        serde_json::from_str(&route).unwrap_or_else(|e| panic!("{e}: {route}"));
    let path = &v["paths"][0];
    assert_eq!(path["originatorId"], "10.98.0.3", "{route}");
    assert_eq!(path["clusterList"]["list"][0], "10.98.0.1", "{route}");
    assert_eq!(path["nexthops"][0]["ip"], "10.98.0.3", "{route}");

    let rr_kernel = rr.learned().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        has_all(&["10.2.0.0/24", "10.3.0.0/24"])(&rr_kernel),
        "{rr_kernel:?}"
    );
}

/// RFC 4456 with tortie as a client of an FRR reflector, next to a BIRD client.
#[test]
fn tortie_as_client_of_an_frr_reflector() {
    let lan = lan(3);
    let [_rr, tortie, bird] = reflector_and_clients(&lan, [Kind::Frr, Kind::Tortie, Kind::Bird]);

    tortie
        .wait_learned(
            T,
            "tortie learns BIRD's routes via FRR",
            has_all(&["10.3.0.0/24", "fd03::/64", "10.1.0.0/24"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let kernel = tortie.kernel_routes().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        kernel.contains(&(net("10.3.0.0/24"), Some(ip("10.98.0.3")))),
        "{kernel:?}"
    );
    bird.wait_learned(
        T,
        "BIRD learns tortie's routes via FRR",
        has_all(&["10.2.0.0/24", "fd02::/64"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
