//! Root tests: the policy applier against real ipset and iptables (legacy and nft), each in a
//! fresh network namespace of its own. The applier runs on a thread that entered that
//! namespace, so the tools it spawns never see the host's tables and sets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

mod support;

use support::netns::Netns;
use tortie_node::policy::apply::{Applier, ApplyReport, Backend, BackendSetting};
use tortie_node::policy::model::{Dataplane, Family, Hook, IpSet, SetKind, Table};

/// A fresh namespace for one test.
fn scratch_ns() -> Netns {
    Netns::new("tortie-apply")
}

/// What these tests do in and read from a namespace.
impl Netns {
    fn apply(&self, applier: &mut Applier, desired: &Dataplane) -> ApplyReport {
        self.enter(|| applier.apply(desired.clone()))
            .unwrap_or_else(|e| panic!("apply: {e}"))
    }

    fn check_drift(&self, applier: &mut Applier, desired: &Dataplane) -> Vec<String> {
        self.enter(|| applier.check_drift(desired.clone()))
            .unwrap_or_else(|e| panic!("check_drift: {e}"))
    }

    /// `iptables-save -t table` of the backend.
    fn save(&self, backend: Backend, family: Family, table: Table) -> String {
        let prog = format!("{}-{}-save", iptables(family), backend.as_str());
        self.exec(&prog, &["-t", table.as_str()])
    }

    /// `iptables` (legacy or nft) with the xtables lock.
    fn iptables(&self, backend: Backend, args: &[&str]) {
        let prog = format!("iptables-{}", backend.as_str());
        let mut full = vec!["-w"];
        full.extend_from_slice(args);
        self.exec(&prog, &full);
    }

    /// Every line of both tables that mentions tort, rules and chain declarations.
    fn tort_rules(&self, backend: Backend, family: Family) -> Vec<String> {
        [Table::Filter, Table::Nat]
            .into_iter()
            .flat_map(|t| {
                self.save(backend, family, t)
                    .lines()
                    .filter(|l| l.contains("tort") && !l.starts_with('#'))
                    .map(|l| format!("{}: {l}", t.as_str()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The first rule of a built-in chain.
    fn first_rule(&self, backend: Backend, family: Family, table: Table, chain: &str) -> String {
        let prefix = format!("-A {chain} ");
        self.save(backend, family, table)
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_default()
            .to_owned()
    }

    /// Every set: `type family` and its members as `ipset save` prints them.
    fn sets(&self) -> BTreeMap<String, (String, BTreeSet<String>)> {
        let mut sets: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for line in self.exec("ipset", &["save"]).lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["create", name, kind, "family", family, ..] => {
                    sets.insert(
                        name.to_string(),
                        (format!("{kind} {family}"), BTreeSet::new()),
                    );
                }
                ["add", name, member @ ..] => {
                    sets.get_mut(*name).unwrap().1.insert(member.join(" "));
                }
                _ => {}
            }
        }
        sets
    }

    fn members(&self, set: &str) -> BTreeSet<String> {
        self.sets()
            .remove(set)
            .unwrap_or_else(|| panic!("no set {set}"))
            .1
    }
}

fn iptables(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// The backends whose tools are installed here (Debian's iptables package has both).
fn backends() -> Vec<Backend> {
    let have = |prog: &str| {
        Command::new(prog)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(have("ipset"), "ipset is missing: apt-get install -y ipset");
    let found: Vec<Backend> = [Backend::Legacy, Backend::Nft]
        .into_iter()
        .filter(|b| {
            ["save", "restore"].iter().all(|tool| {
                have(&format!("iptables-{}-{tool}", b.as_str()))
                    && have(&format!("ip6tables-{}-{tool}", b.as_str()))
            })
        })
        .collect();
    for b in [Backend::Legacy, Backend::Nft] {
        if !found.contains(&b) {
            eprintln!("iptables {b} tools missing: not tested");
        }
    }
    assert!(
        !found.is_empty(),
        "no iptables: apt-get install -y iptables"
    );
    found
}

fn set(kind: SetKind, members: &[&str]) -> IpSet {
    IpSet {
        kind,
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

fn rules(rules: &[&str]) -> Vec<String> {
    rules.iter().map(|r| r.to_string()).collect()
}

const MARK: &str = "-j MARK --set-xmark 0x10000/0x10000";

/// A whole node's worth: every kind of set, filter and nat chains, both hooks.
fn v4_dataplane() -> Dataplane {
    let mut d = Dataplane {
        family: Some(Family::V4),
        ..Dataplane::default()
    };
    let sets = [
        (
            "tort-s4-pods",
            set(SetKind::HashIp, &["10.244.1.5", "10.244.1.6"]),
        ),
        (
            "tort-s4-block",
            set(
                SetKind::HashNet,
                &["192.0.2.0/24", "192.0.2.128/25 nomatch", "198.51.100.7/32"],
            ),
        ),
        (
            "tort-s4-ports",
            set(
                SetKind::HashIpPort,
                &["10.244.1.5,tcp:8080", "10.244.1.6,udp:53"],
            ),
        ),
        ("tort-s4-spare", set(SetKind::HashIp, &["10.244.3.3"])),
        ("tort-masq4", set(SetKind::HashNet, &["10.244.0.0/16"])),
        ("tort-pools4", set(SetKind::HashNet, &["10.244.0.0/16"])),
    ];
    for (name, s) in sets {
        d.ipsets.insert(name.into(), s);
    }
    let filter = [
        (
            "tort-FORWARD",
            rules(&[
                "-m conntrack --ctstate INVALID -j DROP",
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-i tort+ -j tort-from-wl",
                "-o tort+ -j tort-to-wl",
                "-i tort+ -j ACCEPT",
                "-o tort+ -j ACCEPT",
            ]),
        ),
        (
            "tort-from-wl",
            rules(&["-i tortpod1 -g tort-fw-tortpod1", "-j DROP"]),
        ),
        (
            "tort-to-wl",
            rules(&["-o tortpod1 -g tort-tw-tortpod1", "-j DROP"]),
        ),
        ("tort-fw-tortpod1", vec![]),
        (
            "tort-tw-tortpod1",
            rules(&[
                "-j MARK --set-xmark 0x0/0x10000",
                "-j tort-pi-aaaa",
                "-m mark --mark 0x10000/0x10000 -j RETURN",
                "-j DROP",
            ]),
        ),
        (
            "tort-pi-aaaa",
            vec![
                format!("-m set --match-set tort-s4-pods src -p tcp --dport 80 {MARK}"),
                format!("-m set --match-set tort-s4-block src {MARK}"),
                format!("-m set --match-set tort-s4-ports dst,dst {MARK}"),
            ],
        ),
    ];
    for (name, r) in filter {
        d.chains.insert((Table::Filter, name.into()), r);
    }
    d.chains.insert(
        (Table::Nat, "tort-POSTROUTING".into()),
        rules(&[
            "-m set --match-set tort-masq4 src -m set ! --match-set tort-pools4 dst -j MASQUERADE",
        ]),
    );
    d.hooks = vec![
        Hook {
            table: Table::Filter,
            builtin: "FORWARD".into(),
            chain: "tort-FORWARD".into(),
        },
        Hook {
            table: Table::Nat,
            builtin: "POSTROUTING".into(),
            chain: "tort-POSTROUTING".into(),
        },
    ];
    d
}

/// `v4_dataplane` a moment later: a pod gone and one come, a policy replaced by another
/// with a new peer set, the named-port set no longer used.
fn v4_dataplane_changed() -> Dataplane {
    let mut d = v4_dataplane();
    d.ipsets.insert(
        "tort-s4-pods".into(),
        set(SetKind::HashIp, &["10.244.1.5", "10.244.1.7"]),
    );
    d.ipsets.remove("tort-s4-ports");
    d.ipsets
        .insert("tort-s4-new".into(), set(SetKind::HashIp, &["10.244.2.1"]));
    d.chains.remove(&(Table::Filter, "tort-pi-aaaa".into()));
    d.chains.insert(
        (Table::Filter, "tort-pi-bbbb".into()),
        vec![
            format!("-m set --match-set tort-s4-new src {MARK}"),
            format!("-m set --match-set tort-s4-pods src {MARK}"),
        ],
    );
    d.chains
        .get_mut(&(Table::Filter, "tort-tw-tortpod1".into()))
        .unwrap()[1] = "-j tort-pi-bbbb".into();
    d
}

fn empty(family: Family) -> Dataplane {
    Dataplane {
        family: Some(family),
        ..Dataplane::default()
    }
}

fn names(chains: &[(Table, String)]) -> Vec<String> {
    chains
        .iter()
        .map(|(t, c)| format!("{}/{c}", t.as_str()))
        .collect()
}

#[test]
fn a_dataplane_is_written_and_a_restarted_agent_writes_nothing() {
    for backend in backends() {
        let ns = scratch_ns();
        let d = v4_dataplane();
        let mut applier = Applier::new(Family::V4, backend);
        let report = ns.apply(&mut applier, &d);
        assert_eq!(report.sets_created.len(), 6, "{backend}: {report:?}");
        assert_eq!(report.members_added, 10, "{backend}: {report:?}");
        assert_eq!(report.chains_written.len(), 7, "{backend}: {report:?}");
        assert_eq!(report.hooks_inserted, 2, "{backend}: {report:?}");

        // The kernel holds it: sets with their members as ipset prints them...
        let sets = ns.sets();
        assert_eq!(sets["tort-s4-pods"].0, "hash:ip inet");
        assert_eq!(
            sets["tort-s4-block"].1,
            ["192.0.2.0/24", "192.0.2.128/25 nomatch", "198.51.100.7"]
                .map(String::from)
                .into()
        );
        assert_eq!(sets["tort-s4-ports"].0, "hash:ip,port inet");
        assert_eq!(
            sets["tort-s4-ports"].1,
            ["10.244.1.5,tcp:8080", "10.244.1.6,udp:53"]
                .map(String::from)
                .into()
        );
        // ...every rule under its tag, and the hooks first in their built-in chains.
        let filter = ns.save(backend, Family::V4, Table::Filter);
        for rule in &d.chains[&(Table::Filter, "tort-FORWARD".to_string())] {
            let tag = tortie_node::policy::apply::rule_tag(rule);
            assert!(
                filter.contains(&format!("\"{tag}\"")),
                "{backend}: {tag} missing:\n{filter}"
            );
        }
        assert!(filter.contains(":tort-fw-tortpod1 - [0:0]"), "{filter}");
        assert_eq!(
            ns.first_rule(backend, Family::V4, Table::Filter, "FORWARD"),
            "-A FORWARD -m comment --comment \"tort:hook\" -j tort-FORWARD"
        );
        assert_eq!(
            ns.first_rule(backend, Family::V4, Table::Nat, "POSTROUTING"),
            "-A POSTROUTING -m comment --comment \"tort:hook\" -j tort-POSTROUTING"
        );
        let nat = ns.save(backend, Family::V4, Table::Nat);
        assert!(
            nat.contains("--match-set tort-pools4 dst -j MASQUERADE"),
            "{nat}"
        );

        // The same again: nothing to do, not even a read.
        assert!(ns.apply(&mut applier, &d).is_empty());
        // A new agent reads the kernel and finds it right.
        let before = (ns.tort_rules(backend, Family::V4), ns.sets());
        let mut restarted = Applier::new(Family::V4, backend);
        let report = ns.apply(&mut restarted, &d);
        assert!(report.is_empty(), "{backend}: restart wrote {report:?}");
        assert_eq!((ns.tort_rules(backend, Family::V4), ns.sets()), before);
        assert!(ns.check_drift(&mut restarted, &d).is_empty());

        // Auto finds the backend that holds the rules (nft on a tie, so legacy is the test).
        let detected = ns
            .enter(|| Backend::detect(BackendSetting::Auto, Family::V4))
            .unwrap();
        assert_eq!(detected, backend);
    }
}

#[test]
fn a_change_rewrites_only_the_changed_chains_and_sets() {
    for backend in backends() {
        let ns = scratch_ns();
        let mut applier = Applier::new(Family::V4, backend);
        ns.apply(&mut applier, &v4_dataplane());
        let report = ns.apply(&mut applier, &v4_dataplane_changed());
        assert_eq!(report.sets_created, ["tort-s4-new"], "{backend}");
        assert_eq!(report.sets_updated, ["tort-s4-pods"], "{backend}");
        assert_eq!(report.sets_destroyed, ["tort-s4-ports"], "{backend}");
        assert_eq!((report.members_added, report.members_removed), (2, 1));
        assert_eq!(
            names(&report.chains_written),
            ["filter/tort-pi-bbbb", "filter/tort-tw-tortpod1"]
        );
        assert_eq!(names(&report.chains_removed), ["filter/tort-pi-aaaa"]);
        assert_eq!((report.hooks_inserted, report.hooks_removed), (0, 0));

        let sets = ns.sets();
        assert!(!sets.contains_key("tort-s4-ports"), "{backend}: {sets:?}");
        assert_eq!(
            sets["tort-s4-pods"].1,
            ["10.244.1.5", "10.244.1.7"].map(String::from).into()
        );
        let filter = ns.save(backend, Family::V4, Table::Filter);
        assert!(!filter.contains("tort-pi-aaaa"), "{filter}");
        assert!(filter.contains("-j tort-pi-bbbb"), "{filter}");

        // What the applier remembers is what the kernel holds.
        let mut fresh = Applier::new(Family::V4, backend);
        assert!(
            ns.check_drift(&mut fresh, &v4_dataplane_changed())
                .is_empty()
        );
    }
}

#[test]
fn a_set_whose_type_changes_is_recreated_while_rules_use_it() {
    for backend in backends() {
        let ns = scratch_ns();
        let mut applier = Applier::new(Family::V4, backend);
        ns.apply(&mut applier, &v4_dataplane());
        let mut d = v4_dataplane();
        d.ipsets
            .insert("tort-s4-block".into(), set(SetKind::HashIp, &["192.0.2.1"]));
        let report = ns.apply(&mut applier, &d);
        assert_eq!(report.sets_created, ["tort-s4-block"], "{backend}");
        // The chain using it let go of it and was written again.
        assert_eq!(names(&report.chains_written), ["filter/tort-pi-aaaa"]);
        let sets = ns.sets();
        assert_eq!(sets["tort-s4-block"].0, "hash:ip inet");
        assert_eq!(sets["tort-s4-block"].1, ["192.0.2.1".to_string()].into());
        let mut fresh = Applier::new(Family::V4, backend);
        assert!(ns.check_drift(&mut fresh, &d).is_empty());
    }
}

#[test]
fn drift_is_reported_and_repaired() {
    for backend in backends() {
        let ns = scratch_ns();
        let d = v4_dataplane();
        let mut applier = Applier::new(Family::V4, backend);
        ns.apply(&mut applier, &d);
        let programmed = (ns.tort_rules(backend, Family::V4), ns.sets());

        ns.iptables(backend, &["-D", "tort-FORWARD", "2"]);
        ns.iptables(backend, &["-A", "tort-to-wl", "-j", "ACCEPT"]);
        ns.iptables(backend, &["-D", "FORWARD", "1"]);
        ns.iptables(backend, &["-t", "nat", "-F", "tort-POSTROUTING"]);
        ns.exec("ipset", &["del", "tort-s4-pods", "10.244.1.5"]);
        ns.exec("ipset", &["add", "tort-s4-pods", "10.9.9.9"]);
        ns.exec(
            "ipset",
            &["-exist", "add", "tort-s4-block", "192.0.2.128/25"],
        );
        ns.exec("ipset", &["destroy", "tort-s4-spare"]);
        assert_ne!((ns.tort_rules(backend, Family::V4), ns.sets()), programmed);

        let drift = ns.check_drift(&mut applier, &d);
        let expect = [
            "filter chain tort-FORWARD differs: 5 rules, want 6; rule 2 is",
            "filter chain tort-to-wl differs: 3 rules, want 2; rule 3 is a rule without a tort: comment",
            "filter hook FORWARD -> tort-FORWARD is missing",
            "nat chain tort-POSTROUTING differs: 0 rules, want 1",
            "ipset tort-s4-pods lacks member 10.244.1.5",
            "ipset tort-s4-pods has extra member 10.9.9.9",
            "ipset tort-s4-block member 192.0.2.128/25 has flags \"\", want \"nomatch\"",
            "ipset tort-s4-spare is missing",
        ];
        for e in expect {
            assert!(
                drift.iter().any(|d| d.starts_with(e)),
                "{backend}: no {e:?} in {drift:#?}"
            );
        }
        assert_eq!(drift.len(), expect.len(), "{backend}: {drift:#?}");
        assert_eq!((ns.tort_rules(backend, Family::V4), ns.sets()), programmed);
        assert!(ns.check_drift(&mut applier, &d).is_empty());
        // And the repaired state is what the applier remembers.
        assert!(ns.apply(&mut applier, &d).is_empty());
    }
}

#[test]
fn what_is_not_ours_survives_every_apply() {
    for backend in backends() {
        let ns = scratch_ns();
        ns.iptables(backend, &["-N", "KEEP-ME"]);
        ns.iptables(backend, &["-A", "KEEP-ME", "-j", "ACCEPT"]);
        ns.iptables(backend, &["-A", "FORWARD", "-j", "KEEP-ME"]);
        ns.iptables(backend, &["-t", "nat", "-N", "KEEP-NAT"]);
        ns.iptables(backend, &["-t", "nat", "-A", "KEEP-NAT", "-j", "RETURN"]);
        ns.exec("ipset", &["create", "keep-me", "hash:ip"]);
        ns.exec("ipset", &["add", "keep-me", "10.1.1.1"]);
        // The IPv6 applier's set: the IPv4 one must leave it alone.
        ns.exec(
            "ipset",
            &["create", "tort-s6-other", "hash:ip", "family", "inet6"],
        );
        ns.exec("ipset", &["add", "tort-s6-other", "fd00::9"]);
        let foreign = |ns: &Netns| {
            let filter = ns.save(backend, Family::V4, Table::Filter);
            let nat = ns.save(backend, Family::V4, Table::Nat);
            let lines = |s: &str| -> Vec<String> {
                s.lines()
                    .filter(|l| l.contains("KEEP"))
                    .map(String::from)
                    .collect()
            };
            let sets = ns.sets();
            (
                lines(&filter),
                lines(&nat),
                sets.get("keep-me").cloned(),
                sets.get("tort-s6-other").cloned(),
            )
        };
        let before = foreign(&ns);
        assert_eq!(before.0.len(), 3, "{before:?}");
        assert_eq!(before.1.len(), 2, "{before:?}");
        assert!(before.2.is_some() && before.3.is_some());

        let mut applier = Applier::new(Family::V4, backend);
        for d in [v4_dataplane(), v4_dataplane_changed(), empty(Family::V4)] {
            ns.apply(&mut applier, &d);
            assert_eq!(foreign(&ns), before, "{backend}");
            let mut fresh = Applier::new(Family::V4, backend);
            assert!(ns.check_drift(&mut fresh, &d).is_empty(), "{backend}");
            assert_eq!(foreign(&ns), before, "{backend}");
        }
        // Empty: nothing of ours is left but the other family's set.
        assert_eq!(ns.tort_rules(backend, Family::V4), Vec::<String>::new());
        let left: Vec<String> = ns.sets().into_keys().collect();
        assert_eq!(left, ["keep-me", "tort-s6-other"]);
    }
}

#[test]
fn ipv6_members_compare_as_ipset_prints_them() {
    for backend in backends() {
        let ns = scratch_ns();
        let mut d = empty(Family::V6);
        d.ipsets.insert(
            "tort-s6-net".into(),
            set(
                SetKind::HashNet,
                &[
                    "fd00:1::/64",
                    "fd00:2:0:0::5/128",
                    "fd00:1:0:0:8000::/65 nomatch",
                ],
            ),
        );
        d.ipsets.insert(
            "tort-s6-port".into(),
            set(SetKind::HashIpPort, &["fd00:0::1,tcp:80", "fd00::2,sctp:9"]),
        );
        d.chains.insert(
            (Table::Filter, "tort-FORWARD".into()),
            vec![
                format!("-m set --match-set tort-s6-net src {MARK}"),
                format!("-m set --match-set tort-s6-port dst,dst {MARK}"),
            ],
        );
        d.hooks.push(Hook {
            table: Table::Filter,
            builtin: "FORWARD".into(),
            chain: "tort-FORWARD".into(),
        });
        let mut applier = Applier::new(Family::V6, backend);
        let report = ns.apply(&mut applier, &d);
        assert_eq!(report.members_added, 5, "{backend}: {report:?}");
        assert_eq!(
            ns.members("tort-s6-net"),
            ["fd00:1::/64", "fd00:1:0:0:8000::/65 nomatch", "fd00:2::5"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            ns.first_rule(backend, Family::V6, Table::Filter, "FORWARD"),
            "-A FORWARD -m comment --comment \"tort:hook\" -j tort-FORWARD"
        );
        // The IPv4 tables are untouched.
        assert!(ns.tort_rules(backend, Family::V4).is_empty());
        let mut restarted = Applier::new(Family::V6, backend);
        assert!(ns.apply(&mut restarted, &d).is_empty(), "{backend}");
        // And the V6 applier leaves the V4 applier's sets alone when it empties its own.
        let mut v4 = Applier::new(Family::V4, backend);
        ns.apply(&mut v4, &v4_dataplane());
        ns.apply(&mut restarted, &empty(Family::V6));
        let left: Vec<String> = ns.sets().into_keys().collect();
        assert_eq!(left.len(), v4_dataplane().ipsets.len(), "{left:?}");
        assert!(
            left.iter()
                .all(|s| s.starts_with("tort-s4-") || s.ends_with('4'))
        );
    }
}

/// Whether `ping` from `source` in `ns` gets an answer from `to`.
fn pings(ns: &Netns, source: &str, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "ping",
            "-c1",
            "-W1",
            "-I",
            source,
            to,
        ])
        .output()
        .unwrap_or_else(|e| panic!("ping: {e}"))
        .status
        .success()
}

/// A node namespace forwarding between a pod (10.244.1.5 behind `tortpod1`) and a peer with
/// two addresses (192.0.2.2 and .3 behind `up0`): the pod's ingress admits one peer address,
/// then, after an apply that changes only the set, the other.
#[test]
fn packets_are_dropped_and_allowed_as_the_set_says() {
    for backend in backends() {
        let (node, pod, peer) = (scratch_ns(), scratch_ns(), scratch_ns());
        node.ip(&[
            "link",
            "add",
            "tortpod1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ]);
        node.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ]);
        node.ip(&["addr", "add", "10.244.1.1/24", "dev", "tortpod1"]);
        node.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"]);
        for dev in ["lo", "tortpod1", "up0"] {
            node.ip(&["link", "set", dev, "up"]);
        }
        node.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        pod.ip(&["addr", "add", "10.244.1.5/24", "dev", "eth0"]);
        peer.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"]);
        peer.ip(&["addr", "add", "192.0.2.3/24", "dev", "eth0"]);
        for (ns, gw) in [(&pod, "10.244.1.1"), (&peer, "192.0.2.1")] {
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&["route", "add", "default", "via", gw]);
        }
        assert!(pings(&peer, "192.0.2.2", "10.244.1.5"), "no policy yet");
        assert!(pings(&peer, "192.0.2.3", "10.244.1.5"), "no policy yet");

        let mut d = v4_dataplane();
        d.ipsets = [
            (
                "tort-s4-peers".to_string(),
                set(SetKind::HashIp, &["192.0.2.2"]),
            ),
            (
                "tort-masq4".to_string(),
                set(SetKind::HashNet, &["10.244.0.0/16"]),
            ),
            (
                "tort-pools4".to_string(),
                set(SetKind::HashNet, &["10.244.0.0/16"]),
            ),
        ]
        .into();
        d.chains.insert(
            (Table::Filter, "tort-pi-aaaa".into()),
            vec![format!("-m set --match-set tort-s4-peers src {MARK}")],
        );
        let mut applier = Applier::new(Family::V4, backend);
        node.apply(&mut applier, &d);
        assert!(
            pings(&peer, "192.0.2.2", "10.244.1.5"),
            "{backend}: allowed peer"
        );
        assert!(
            !pings(&peer, "192.0.2.3", "10.244.1.5"),
            "{backend}: other peer"
        );

        d.ipsets
            .insert("tort-s4-peers".into(), set(SetKind::HashIp, &["192.0.2.3"]));
        let report = node.apply(&mut applier, &d);
        assert_eq!(report.sets_updated, ["tort-s4-peers"], "{backend}");
        assert!(report.chains_written.is_empty(), "{backend}: {report:?}");
        assert!(
            !pings(&peer, "192.0.2.2", "10.244.1.5"),
            "{backend}: removed peer"
        );
        assert!(
            pings(&peer, "192.0.2.3", "10.244.1.5"),
            "{backend}: added peer"
        );
    }
}

/// iptables-restore takes a table all or nothing: a bad rule leaves the kernel as it was,
/// and the error points at the rule.
#[test]
fn a_rejected_rule_is_named_and_changes_nothing() {
    for backend in backends() {
        let ns = scratch_ns();
        let mut applier = Applier::new(Family::V4, backend);
        ns.apply(&mut applier, &v4_dataplane());
        let before = ns.tort_rules(backend, Family::V4);
        let mut bad = v4_dataplane();
        bad.chains.insert(
            (Table::Filter, "tort-from-wl".into()),
            rules(&["-j DROP", "-m nosuchmatch -j DROP"]),
        );
        let err = ns
            .enter(|| applier.apply(bad))
            .expect_err("a rule iptables cannot load");
        let msg = err.to_string();
        assert!(
            msg.contains("-A tort-from-wl") && msg.contains("nosuchmatch"),
            "{backend}: {msg}"
        );
        assert_eq!(ns.tort_rules(backend, Family::V4), before, "{backend}");
        // The failure made the applier forget; a good dataplane applies cleanly again.
        assert!(ns.apply(&mut applier, &v4_dataplane()).is_empty());
    }
}
