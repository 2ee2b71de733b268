//! Root tests: ExaBGP as a scripted adversary against tortie's standalone daemon. tortie
//! reflects between an attacking ExaBGP, an observing ExaBGP and a BIRD that must never
//! notice anything.

mod bgp_support;

use std::collections::BTreeSet;
use std::time::Duration;

use bgp_support::{ip, member_spec, net};
use ipnet::IpNet;
use tortie_lab::netns::Lan;
use tortie_lab::routers::{Kind, Router, RouterSpec, wait_for};

const T: Duration = Duration::from_secs(40);

/// tortie (1) reflects for the attacker (2), the observer (3) and BIRD (4) on one LAN.
/// Field order is drop order.
struct Setup {
    tortie: Router,
    attacker: Router,
    observer: Router,
    bird: Router,
    _lan: Lan,
}

fn spec(i: u8, peers: &[(u8, bool)], passive: bool, originate: &[&str]) -> RouterSpec {
    let mut s = member_spec("10.97.0", "fd97::", i, peers, passive);
    s.originate = originate.iter().map(|p| net(p)).collect();
    s
}

fn setup() -> Setup {
    let lan = Lan::create("trt-adv", 4, "10.97.0", "fd97::").unwrap_or_else(|e| panic!("{e}"));
    let members = &lan.members;
    let bird = Router::start(
        Kind::Bird,
        &members[3],
        spec(4, &[(1, false)], true, &["10.4.0.0/24"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let attacker = Router::start(Kind::Exabgp, &members[1], spec(2, &[(1, false)], true, &[]))
        .unwrap_or_else(|e| panic!("{e}"));
    let observer = Router::start(Kind::Exabgp, &members[2], spec(3, &[(1, false)], true, &[]))
        .unwrap_or_else(|e| panic!("{e}"));
    let tortie = Router::start(
        Kind::Tortie,
        &members[0],
        spec(
            1,
            &[(2, true), (3, true), (4, true)],
            false,
            &["10.1.0.0/24"],
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (r, a) in [
        (&attacker, "10.97.0.2"),
        (&observer, "10.97.0.3"),
        (&bird, "10.97.0.4"),
    ] {
        tortie
            .wait_established(ip(a), T)
            .unwrap_or_else(|e| panic!("{e}"));
        r.wait_established(ip("10.97.0.1"), T)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    tortie
        .wait_learned(T, "tortie installs BIRD's route", |s| {
            s.contains(&net("10.4.0.0/24"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    Setup {
        tortie,
        attacker,
        observer,
        bird,
        _lan: lan,
    }
}

/// BIRD's session never dropped and its route is still in tortie's kernel.
fn bird_undisturbed(s: &Setup) {
    let proto = s
        .bird
        .birdc(&["show", "protocols", "all", "peer0"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(proto.contains("Established"), "{proto}");
    let kernel = s.tortie.learned().unwrap_or_else(|e| panic!("{e}"));
    assert!(kernel.contains(&net("10.4.0.0/24")), "{kernel:?}");
    let status = s.tortie.tortie_status().unwrap_or_else(|e| panic!("{e}"));
    let bird = status["ipv4_peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["peer_address"] == "10.97.0.4")
        .cloned()
        .unwrap_or_default();
    assert_eq!(bird["fsm_state"], "Established", "{status}");
}

/// The raw JSON lines the observer received.
fn observer_saw(s: &Setup) -> String {
    let path = s.observer.dir().join("received.jsonl");
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn unknown_optional_transitive_attribute_is_passed_through() {
    let s = setup();
    s.attacker
        .exabgp_command(
            "announce route 10.50.0.0/24 next-hop 10.97.0.2 attribute [ 0x63 0xc0 0xdeadbeef ]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    s.observer
        .wait_learned(T, "the observer gets the reflected route", |l| {
            l.contains(&net("10.50.0.0/24"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = observer_saw(&s).to_lowercase();
    let line = seen
        .lines()
        .find(|l| l.contains("10.50.0.0/24"))
        .unwrap_or_default();
    assert!(
        line.contains("0x63") && line.contains("deadbeef"),
        "attribute 0x63 not passed on: {line}"
    );
    bird_undisturbed(&s);
}

#[test]
fn malformed_attribute_is_treated_as_withdraw_and_hurts_nobody_else() {
    let s = setup();
    // A valid route first, then the same prefix with a MED two bytes long (RFC 7606 §7.4:
    // treat-as-withdraw), so the earlier route must go.
    s.attacker
        .exabgp_command("announce route 10.51.0.0/24 next-hop 10.97.0.2")
        .unwrap_or_else(|e| panic!("{e}"));
    s.tortie
        .wait_learned(T, "tortie installs the attacker's valid route", |l| {
            l.contains(&net("10.51.0.0/24"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    s.attacker
        .exabgp_command(
            "announce route 10.51.0.0/24 next-hop 10.97.0.2 attribute [ 0x04 0x80 0x0001 ]",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    s.tortie
        .wait_learned(T, "the malformed update withdraws the route", |l| {
            !l.contains(&net("10.51.0.0/24"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The attacker's session survived (treat-as-withdraw, not a reset) and still works.
    assert!(s.tortie.established(ip("10.97.0.2")).unwrap_or(false));
    s.attacker
        .exabgp_command("announce route 10.52.0.0/24 next-hop 10.97.0.2")
        .unwrap_or_else(|e| panic!("{e}"));
    s.tortie
        .wait_learned(T, "a later valid route from the attacker", |l| {
            l.contains(&net("10.52.0.0/24"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    bird_undisturbed(&s);
}

#[test]
fn a_flood_of_flapping_prefixes_converges_to_the_last_word() {
    let s = setup();
    const N: u32 = 500;
    const ROUNDS: u32 = 10;
    let prefix = |i: u32| format!("10.60.{}.{}/32", i / 256, i % 256);
    let mut lines = Vec::new();
    for round in 0..ROUNDS {
        let verb = if round % 2 == 0 {
            "announce"
        } else {
            "withdraw"
        };
        lines.extend((0..N).map(|i| format!("{verb} route {} next-hop 10.97.0.2", prefix(i))));
    }
    // Last word: the even prefixes are announced, the odd ones withdrawn.
    lines.extend(
        (0..N)
            .step_by(2)
            .map(|i| format!("announce route {} next-hop 10.97.0.2", prefix(i))),
    );
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    s.attacker
        .exabgp_commands(&lines)
        .unwrap_or_else(|e| panic!("{e}"));
    let want: BTreeSet<IpNet> = (0..N).step_by(2).map(|i| net(&prefix(i))).collect();
    let flood = |l: &BTreeSet<IpNet>| -> BTreeSet<IpNet> {
        l.iter()
            .filter(|p| net("10.60.0.0/16").contains(*p))
            .copied()
            .collect()
    };
    s.tortie
        .wait_learned(
            Duration::from_secs(90),
            "tortie's kernel converges to the final set",
            |l| flood(l) == want,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        Duration::from_secs(60),
        "BIRD converges to the final set",
        || Ok(flood(&s.bird.learned()?) == want),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    bird_undisturbed(&s);
}
