//! Root tests of the router harness itself: the real routers peer with each other, so a
//! failing tortie interop test can be told apart from a broken harness.

mod bgp_support;

use std::time::Duration;

use bgp_support::{ip, member_spec, net};
use ipnet::IpNet;
use tortie_lab::netns::{self, NetNs};
use tortie_lab::routers::{Kind, Router, RouterSpec};

const T: Duration = Duration::from_secs(30);

/// Two namespaces on one link: 10.99.0.1 / fd99::1 and 10.99.0.2 / fd99::2.
fn link() -> (NetNs, NetNs) {
    netns::linked_pair("trt-rt", "10.99.0", "fd99::").unwrap_or_else(|e| panic!("{e}"))
}

fn spec(n: u8, originate: &[&str], passive: bool) -> RouterSpec {
    let mut s = member_spec("10.99.0", "fd99::", n, &[(3 - n, false)], passive);
    s.originate = originate.iter().map(|p| net(p)).collect();
    s
}

fn pair(ka: Kind, kb: Kind) {
    let (a, b) = link();
    let mut ra = Router::start(ka, &a, spec(1, &["10.1.0.0/24", "fd01::/64"], false))
        .unwrap_or_else(|e| panic!("{e}"));
    let rb = Router::start(kb, &b, spec(2, &["10.2.0.0/24", "fd02::/64"], true))
        .unwrap_or_else(|e| panic!("{e}"));
    ra.wait_established(ip("10.99.0.2"), T)
        .unwrap_or_else(|e| panic!("{e}"));
    rb.wait_established(ip("10.99.0.1"), T)
        .unwrap_or_else(|e| panic!("{e}"));
    rb.wait_learned(
        T,
        "b learns a's prefixes",
        has_all(&["10.1.0.0/24", "fd01::/64"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ra.wait_learned(
        T,
        "a learns b's prefixes",
        has_all(&["10.2.0.0/24", "fd02::/64"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    ra.withdraw(net("10.1.0.0/24"))
        .unwrap_or_else(|e| panic!("{e}"));
    rb.wait_learned(T, "b sees the withdrawal", |s| {
        !s.contains(&net("10.1.0.0/24")) && s.contains(&net("fd01::/64"))
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bird_and_frr() {
    pair(Kind::Bird, Kind::Frr);
}

#[test]
fn frr_and_gobgp() {
    pair(Kind::Frr, Kind::Gobgp);
}

#[test]
fn gobgp_and_bird() {
    pair(Kind::Gobgp, Kind::Bird);
}

#[test]
fn exabgp_and_bird() {
    pair(Kind::Exabgp, Kind::Bird);
}

fn has_all(want: &'static [&'static str]) -> impl Fn(&std::collections::BTreeSet<IpNet>) -> bool {
    move |s| want.iter().all(|w| s.contains(&net(w)))
}
