//! Root tests: the route reconciler against a real kernel table, each in a fresh network
//! namespace of its own.

use std::net::IpAddr;
use std::time::{Duration, Instant};

mod support;

use ipnet::IpNet;
use support::netns::Netns;
use tortie_node::netlink::{KernelRouteTable, Route, RouteDeletions, RouteOp, RouteTable};
use tortie_node::routes::{ReconcilerConfig, RouteSet, spawn_reconciler};

/// A namespace with `lo` up, an uplink `up0` (192.0.2.10/24, 2001:db8::10/64) and a pod
/// link `tortpod`: veth pairs with both ends here, the lab kernel has no dummy driver.
fn node_ns() -> Netns {
    let ns = Netns::new("trt-routes");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    ns.ip(&["link", "set", "up0p", "up"]);
    ns.ip(&["link", "set", "up0", "up"]);
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "up0"]);
    ns.ip(&["addr", "add", "2001:db8::10/64", "dev", "up0", "nodad"]);
    ns.ip(&[
        "link", "add", "tortpod", "type", "veth", "peer", "name", "tortpodp",
    ]);
    ns.ip(&["link", "set", "tortpodp", "up"]);
    ns.ip(&["link", "set", "tortpod", "up"]);
    ns
}

/// What these tests read from a namespace.
impl Netns {
    fn table(&self) -> KernelRouteTable {
        KernelRouteTable::open_in_netns(&self.path()).unwrap_or_else(|e| panic!("open table: {e}"))
    }

    /// `ip route show proto 116` lines, IPv4 then IPv6, sorted.
    fn ours(&self) -> Vec<String> {
        let mut lines: Vec<String> = [
            &["route", "show", "proto", "116"][..],
            &["-6", "route", "show", "proto", "116"],
        ]
        .iter()
        .flat_map(|args| {
            self.ip(args)
                .lines()
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
        lines.sort();
        lines
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn gr(graceful_restart: bool) -> ReconcilerConfig {
    ReconcilerConfig {
        resync_interval: Duration::from_secs(3600),
        graceful_restart,
    }
}

fn every_kind() -> RouteSet {
    [
        Route::blackhole(net("10.244.1.0/26")),
        Route::blackhole(net("fd00:244:1::/122")),
        Route::link(net("10.244.1.5/32"), "tortpod"),
        Route::link(net("fd00:244:1::5/128"), "tortpod"),
        Route::via_onlink(net("10.244.2.0/26"), ip("172.31.0.3"), "up0"),
        Route::via(net("10.244.3.0/26"), ip("192.0.2.4")),
        Route::via(net("fd00:244:3::/122"), ip("2001:db8::4")),
    ]
    .into_iter()
    .collect()
}

#[tokio::test]
async fn writes_every_route_kind_and_reads_it_back() {
    let ns = node_ns();
    let (h, _t) = spawn_reconciler(ns.table(), gr(false)).unwrap_or_else(|e| panic!("{e}"));
    h.set_desired(every_kind())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        second.is_empty(),
        "the kernel does not hold what we wrote: {second:?}"
    );
    assert_eq!(
        ns.ours(),
        [
            "10.244.1.5 dev tortpod scope link",
            "10.244.2.0/26 via 172.31.0.3 dev up0 onlink",
            "10.244.3.0/26 via 192.0.2.4 dev up0",
            "blackhole 10.244.1.0/26",
            "blackhole fd00:244:1::/122 dev lo metric 1024 pref medium",
            "fd00:244:1::5 dev tortpod metric 1024 pref medium",
            "fd00:244:3::/122 via 2001:db8::4 dev up0 metric 1024 pref medium",
        ]
    );
    let mut dumped = ns.table().dump().unwrap_or_else(|e| panic!("{e}"));
    dumped.sort();
    let mut want: Vec<Route> = every_kind().iter().cloned().collect();
    want.sort();
    assert_eq!(dumped.len(), want.len());
    for (w, d) in want.iter().zip(&dumped) {
        assert!(w.satisfied_by(d), "wrote {w}, read back {d}");
    }
}

/// `ip route del` of a pod's route: the kernel announces it and the route is back at once,
/// with no resync (the periodic one is an hour away here). Deleting a foreign route, or one
/// of ours that we no longer want, writes nothing.
#[tokio::test]
async fn a_route_deleted_by_hand_is_put_back_at_once() {
    let ns = node_ns();
    ns.ip(&[
        "route",
        "add",
        "10.77.0.0/16",
        "dev",
        "up0",
        "proto",
        "dhcp",
    ]);
    let (h, _t) = spawn_reconciler(ns.table(), gr(false)).unwrap_or_else(|e| panic!("{e}"));
    let deletions = RouteDeletions::open_in_netns(&ns.path()).unwrap_or_else(|e| panic!("{e}"));
    let _watch = h
        .repair_deletions(deletions)
        .unwrap_or_else(|e| panic!("{e}"));
    let pod = "10.244.1.5 dev tortpod scope link".to_string();
    let block = "blackhole 10.244.1.0/26".to_string();
    let failures = h
        .update_and_wait(
            vec![
                Route::link(net("10.244.1.5/32"), "tortpod"),
                Route::blackhole(net("10.244.1.0/26")),
                Route::link(net("fd00:244:1::5/128"), "tortpod"),
            ],
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(failures.is_empty(), "{failures:?}");

    let back_within = |want: &[&String], secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            let ours = ns.ours();
            if want.iter().all(|w| ours.contains(w)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    ns.ip(&["route", "del", "10.244.1.5/32"]);
    ns.ip(&["route", "del", "blackhole", "10.244.1.0/26"]);
    ns.ip(&["-6", "route", "del", "fd00:244:1::5/128"]);
    assert!(back_within(&[&pod, &block], 5), "{:?}", ns.ours());
    assert!(
        ns.ours()
            .iter()
            .any(|l| l.starts_with("fd00:244:1::5 dev tortpod")),
        "{:?}",
        ns.ours()
    );

    // A route we gave up stays deleted; a foreign one is none of our business.
    h.update_and_wait(vec![], vec![net("10.244.1.0/26")])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ns.ip(&["route", "del", "10.77.0.0/16"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!back_within(&[&block], 1), "{:?}", ns.ours());
    assert!(!ns.ip(&["route", "show"]).contains("10.77.0.0/16"));
    assert!(ns.ours().contains(&pod), "{:?}", ns.ours());
}

#[tokio::test]
async fn a_deleted_route_comes_back_and_foreign_routes_stay() {
    let ns = node_ns();
    // Foreign routes: one on a prefix we want too, one we never mention.
    ns.ip(&[
        "route",
        "add",
        "10.244.3.0/26",
        "via",
        "192.0.2.99",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.77.0.0/16",
        "dev",
        "up0",
        "proto",
        "dhcp",
    ]);
    let (h, _t) = spawn_reconciler(ns.table(), gr(false)).unwrap_or_else(|e| panic!("{e}"));
    let set = every_kind();
    let want: Vec<Route> = set.iter().cloned().collect();
    let failures = h
        .update_and_wait(want, vec![])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].errno, libc::EEXIST);
    assert_eq!(failures[0].op.route().dst, net("10.244.3.0/26"));

    ns.ip(&["route", "del", "10.244.1.5/32"]);
    ns.ip(&["route", "del", "blackhole", "10.244.1.0/26"]);
    let ops = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
    let repaired: Vec<String> = ops.iter().map(|o| o.route().dst.to_string()).collect();
    assert!(repaired.contains(&"10.244.1.5/32".to_string()), "{ops:?}");
    assert!(repaired.contains(&"10.244.1.0/26".to_string()), "{ops:?}");
    assert!(
        ns.ours()
            .contains(&"10.244.1.5 dev tortpod scope link".to_string())
    );

    let all = ns.ip(&["route", "show"]);
    assert!(
        all.contains("10.244.3.0/26 via 192.0.2.99 dev up0 proto static"),
        "{all}"
    );
    assert!(all.contains("10.77.0.0/16 dev up0 proto dhcp"), "{all}");

    // Dropping every desired route deletes only ours.
    h.set_desired(RouteSet::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    h.resync().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(ns.ours().is_empty(), "{:?}", ns.ours());
    let all = ns.ip(&["route", "show"]);
    assert!(
        all.contains("proto static") && all.contains("proto dhcp"),
        "{all}"
    );
}

#[tokio::test]
async fn graceful_restart_sweeps_stale_routes_only_after_sync() {
    let ns = node_ns();
    // What a previous run left in the kernel.
    ns.ip(&[
        "route",
        "add",
        "10.10.0.0/24",
        "via",
        "192.0.2.4",
        "proto",
        "116",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.11.0.0/24",
        "via",
        "192.0.2.4",
        "proto",
        "116",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:11::/64",
        "via",
        "2001:db8::4",
        "proto",
        "116",
    ]);
    let (h, _t) = spawn_reconciler(ns.table(), gr(true)).unwrap_or_else(|e| panic!("{e}"));
    let failures = h
        .update_and_wait(
            vec![Route::via(net("10.10.0.0/24"), ip("192.0.2.4"))],
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(failures.is_empty(), "{failures:?}");
    let ops = h.resync().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(ops.is_empty(), "touched the kernel before sync: {ops:?}");
    assert_eq!(ns.ours().len(), 3);

    h.sync_complete().await.unwrap_or_else(|e| panic!("{e}"));
    h.resync().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ns.ours(), ["10.10.0.0/24 via 192.0.2.4 dev up0"]);
}

#[test]
fn pipelined_batch_of_100k_routes() {
    let ns = node_ns();
    let mut table = ns.table();
    let ops: Vec<RouteOp> = (0..100_000u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 2));
            RouteOp::Add(Route::via(
                IpNet::new(IpAddr::V4(a), 30).unwrap_or_else(|e| panic!("{e}")),
                ip("192.0.2.4"),
            ))
        })
        .collect();
    let start = Instant::now();
    let failures = table.apply(&ops).unwrap_or_else(|e| panic!("{e}"));
    let took = start.elapsed();
    assert!(
        failures.is_empty(),
        "{} failures, first {}",
        failures.len(),
        failures[0]
    );
    eprintln!(
        "100k routes in {took:?}: {:.0} routes/s",
        100_000.0 / took.as_secs_f64()
    );
    let dumped = table.dump().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dumped.len(), 100_000);
    // Deleting them is one batch too; a second delete of each fails per route, not the batch.
    let dels: Vec<RouteOp> = ops
        .iter()
        .map(|o| RouteOp::Delete(o.route().clone()))
        .collect();
    assert!(
        table
            .apply(&dels)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    let again = table.apply(&dels[..10]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.len(), 10);
    assert!(table.dump().unwrap_or_else(|e| panic!("{e}")).is_empty());
}

/// Sysctls are per namespace: a thread that entered the test namespace writes them there.
#[test]
fn sysctls_are_written_in_the_namespace() {
    let ns = node_ns();
    ns.enter(|| {
        tortie_node::netlink::sysctl::enable_forwarding(true)
            .unwrap_or_else(|e| panic!("enable_forwarding: {e}"));
        tortie_node::netlink::sysctl::configure_host_veth("tortpod", true)
            .unwrap_or_else(|e| panic!("configure_host_veth: {e}"));
    });
    let read = |key: &str| ns.exec("sysctl", &["-n", key]).trim().to_owned();
    assert_eq!(read("net.ipv4.ip_forward"), "1");
    assert_eq!(read("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(read("net.ipv4.conf.tortpod.proxy_arp"), "1");
    assert_eq!(read("net.ipv4.neigh.tortpod.proxy_delay"), "0");
    assert_eq!(read("net.ipv6.conf.tortpod.proxy_ndp"), "1");
    assert_eq!(read("net.ipv6.conf.tortpod.accept_dad"), "0");
    let refused = tortie_node::netlink::sysctl::set(&["net", "..", "x"], "1").map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::InvalidInput));
}

/// A veth deleted and made again under the same name has a new ifindex; a route to it must
/// still go in (the table caches names → indexes).
#[test]
fn a_recreated_device_gets_its_route() {
    let ns = node_ns();
    let mut table = ns.table();
    let r = Route::link(net("10.244.9.9/32"), "tortre");
    let make = || {
        ns.ip(&[
            "link", "add", "tortre", "type", "veth", "peer", "name", "tortrep",
        ]);
        ns.ip(&["link", "set", "tortrep", "up"]);
        ns.ip(&["link", "set", "tortre", "up"]);
    };
    make();
    let failures = table
        .apply(&[RouteOp::Add(r.clone())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(failures.is_empty(), "{failures:?}");
    ns.ip(&["link", "del", "tortre"]);
    make();
    let failures = table
        .apply(&[RouteOp::Add(r.clone())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(ns.ours(), ["10.244.9.9 dev tortre scope link"]);
}
