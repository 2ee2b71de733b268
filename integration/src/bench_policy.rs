//! `bench policy`: how long the agent's policy path takes, from a change in what the
//! compiler reads to the kernel holding it, against a synthetic cluster. The goals:
//! - a full sync of 100 policies × 110 local pods ≤ 300 ms (median), beside the floor: the
//!   same rules and sets written by one `ipset restore` and one `iptables-restore` (no
//!   `--noflush`) into an empty namespace, with nothing to compile, read or diff;
//! - one policy change or one pod-label change in the kernel with p99 ≤ 50 ms, at every
//!   scale (about 1k, 10k and 50k iptables rules, grown by adding policies);
//! - a new local pod's address in its sets (and its chains in place) ≤ 20 ms (p99) after
//!   the agent learns of it.
//!
//! Measured in-process, the way the agent's policy task runs them
//! (`agent/src/policy/task.rs`): the input is copied (standing in for the task's
//! `policy_input`, which builds it from the cache's snapshot), compiled by one long-lived
//! [`Incremental`] compiler (the same output as [`compile`], recomputing only the
//! policies and sets a change touched; a full sync starts from a fresh one), and handed to
//! one long-lived [`Applier`], which writes only what differs from what it last wrote. The applier runs on a thread inside a throw-away network namespace
//! (`tortie-bench-<pid>-<n>`, removed on drop even when the run fails), so the tools it
//! spawns see that namespace's tables and sets and never the host's. Full syncs alternate
//! ours and the floor's order from one repetition to the next, each in a fresh namespace;
//! failures are counted, not dropped.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tortie_node::policy::apply::{Applier, Backend, BackendSetting, rule_tag};
use tortie_node::policy::compile::{Incremental, compile};
use tortie_node::policy::model::{
    Dataplane, Family, Labels, NamedPort, Namespace, Pod, PolicyInput, Pool, Protocol, Table,
};

use crate::Error;
use crate::bench_cni::Series;
use crate::bench_header::{Machine, met, own_build, verdict};
use crate::kube_netns::in_netns;
use crate::netns::NetNs;

/// Full sync of the default cluster, median.
pub const FULL_SYNC_GOAL: Duration = Duration::from_millis(300);
/// One change into the kernel, p99, at every scale.
pub const CHANGE_GOAL: Duration = Duration::from_millis(50);
/// A new local pod in its sets, p99.
pub const NEW_POD_GOAL: Duration = Duration::from_millis(20);

/// The published Felix figures the output and the README put beside ours.
pub const FELIX_REFERENCE: &str = "\
Felix (Calico's agent), for reference, not run here: 100–200 ms per dataplane apply under 100+
endpoint updates/s (Felix 2.1.0-rc3, its Prometheus stats: https://github.com/projectcalico/felix/issues/1343);
seconds at scale: one apply of 10.6 s among ones of 0.3–0.4 s in a user's Felix log
(https://github.com/projectcalico/felix/issues/2032).";

const NAMESPACES: usize = 10;
const APPS_PER_NAMESPACE: usize = 4;
const APPS: usize = NAMESPACES * APPS_PER_NAMESPACE;
const ROLES: [&str; 3] = ["frontend", "backend", "db"];
/// The node's pods start here, the rest of the cluster's at 10.244.64.0 (pool 10.244.0.0/16).
const LOCAL_BASE: u32 = u32::from_be_bytes([10, 244, 0, 2]);
const REMOTE_BASE: u32 = u32::from_be_bytes([10, 244, 64, 2]);
const DNS_BASE: u32 = u32::from_be_bytes([10, 244, 255, 2]);
/// Seconds `iptables-restore` waits for the xtables lock, as the applier does.
const LOCK_WAIT_SECS: &str = "10";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Policies of the full-sync cluster.
    pub policies: usize,
    /// Pods on this node.
    pub pods: usize,
    /// Pods elsewhere in the cluster (peers only).
    pub remote_pods: usize,
    /// Full syncs of ours and of the floor each.
    pub repetitions: usize,
    /// Changes per scale, policy changes and pod-label changes alternating.
    pub changes: usize,
    /// Once a scale's changes (or the new pods) have run this long, the next is the last:
    /// keeps a run short however slow a change is. At least two are always timed.
    pub budget: Duration,
    /// Target iptables rule counts of the change scales.
    pub scales: Vec<usize>,
    /// New local pods, one at a time.
    pub new_pods: usize,
    pub backend: BackendSetting,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            policies: 100,
            pods: 110,
            remote_pods: 1000,
            repetitions: 5,
            changes: 100,
            budget: Duration::from_secs(15),
            scales: vec![1_000, 10_000, 50_000],
            new_pods: 50,
            backend: BackendSetting::Auto,
        }
    }
}

/// The size of one compiled dataplane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub policies: usize,
    /// `-A` lines: rules in our chains plus the hooks in built-in chains.
    pub rules: usize,
    pub sets: usize,
    pub members: usize,
}

impl Size {
    fn of(policies: usize, d: &Dataplane) -> Size {
        Size {
            policies,
            rules: rule_count(d),
            sets: d.ipsets.len(),
            members: d.ipsets.values().map(|s| s.members.len()).sum(),
        }
    }
}

/// The full syncs of the default cluster.
#[derive(Debug, Clone, Default)]
pub struct FullSync {
    pub size: Size,
    /// Copy + compile + first apply into an empty namespace.
    pub ours: Series,
    /// The compile part of `ours`.
    pub compile: Series,
    /// `ipset restore` + `iptables-restore` of the same sets and rules.
    pub floor: Series,
    /// `-A` lines and set members the kernel held afterwards (first repetition): ours, floor.
    pub kernel_rules: (usize, usize),
    pub kernel_members: (usize, usize),
}

/// One scale of the change measurement.
#[derive(Debug, Clone, Default)]
pub struct Scale {
    /// The rule count asked for.
    pub target: usize,
    pub size: Size,
    /// One full sync of ours and of the floor at this size.
    pub full_sync: Series,
    pub floor: Series,
    pub policy_changes: Series,
    pub label_changes: Series,
    /// The compile part and the apply part of every change.
    pub compile: Series,
    pub apply: Series,
}

impl Scale {
    /// Policy and label changes together.
    pub fn changes(&self) -> Series {
        let mut all = self.policy_changes.clone();
        all.extend(&self.label_changes);
        all
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub machine: Machine,
    pub build: &'static str,
    pub backend: String,
    pub iptables_version: String,
    pub ipset_version: String,
}

#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub conditions: Conditions,
    pub remote_pods: usize,
    pub local_pods: usize,
    pub full_sync: FullSync,
    pub scales: Vec<Scale>,
    pub new_pod: NewPods,
}

/// New local pods, one at a time: copy + compile + apply, and its two parts.
#[derive(Debug, Clone, Default)]
pub struct NewPods {
    pub pods: Series,
    pub compile: Series,
    pub apply: Series,
}

/// Whether one goal was met; `None` when there is nothing to judge.
fn within(d: Option<Duration>, s: &Series, goal: Duration) -> Option<bool> {
    d.map(|d| d <= goal && s.failures == 0)
}

impl BenchReport {
    pub fn full_sync_met(&self) -> Option<bool> {
        let s = &self.full_sync.ours;
        within(s.p50(), s, FULL_SYNC_GOAL)
    }
    pub fn scale_met(scale: &Scale) -> Option<bool> {
        let all = scale.changes();
        within(all.p99(), &all, CHANGE_GOAL)
    }
    pub fn new_pod_met(&self) -> Option<bool> {
        let s = &self.new_pod.pods;
        within(s.p99(), s, NEW_POD_GOAL)
    }
    /// Every goal measured and met.
    pub fn all_met(&self) -> bool {
        std::iter::once(self.full_sync_met())
            .chain(self.scales.iter().map(Self::scale_met))
            .chain(std::iter::once(self.new_pod_met()))
            .all(|ok| ok == Some(true))
    }
}

/// Runs the whole bench: full syncs, the change scales, new pods.
pub fn run(opts: &BenchOptions, progress: &dyn Fn(&str)) -> Result<BenchReport, Error> {
    let machine = Machine::at_start();
    let (backend, ipset_version) = detect_backend(opts.backend)?;
    let mut report = BenchReport {
        conditions: Conditions {
            machine,
            build: own_build(),
            backend: match opts.backend {
                BackendSetting::Auto => format!("{backend} (Auto, in an empty namespace)"),
                _ => backend.to_string(),
            },
            iptables_version: tool_version(&format!("iptables-{backend}"), "--version"),
            ipset_version,
        },
        local_pods: opts.pods,
        remote_pods: opts.remote_pods,
        ..BenchReport::default()
    };

    let cluster = Cluster::new(opts.policies, opts.pods, opts.remote_pods);
    progress(&format!(
        "full sync of {} policies, {} local pods: {} repetitions each of ours and the floor",
        opts.policies, opts.pods, opts.repetitions
    ));
    report.full_sync = full_syncs(&cluster, backend, opts.repetitions)?;

    for &target in &opts.scales {
        let policies = policies_for(target, opts);
        let cluster = Cluster::new(policies, opts.pods, opts.remote_pods);
        progress(&format!(
            "scale ~{target} rules: {policies} policies, up to {} changes or {} s",
            opts.changes,
            opts.budget.as_secs()
        ));
        report
            .scales
            .push(scale(target, cluster, backend, opts.changes, opts.budget)?);
    }

    progress(&format!("{} new local pods, one at a time", opts.new_pods));
    report.new_pod = new_pods(cluster, backend, opts.new_pods, opts.budget)?;

    report.conditions.machine.finish();
    Ok(report)
}

/// The synthetic cluster: ten namespaces of four apps each; pods spread over the apps (the
/// node's first, then the rest of the cluster, then two kube-dns pods); policy `i` selects
/// the non-canary pods of app `i % 40` and has realistic rules in both directions.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub input: PolicyInput,
    local: usize,
    remote: usize,
    /// Per policy: its port and peer toggles.
    variants: Vec<(bool, bool)>,
    /// Pods added by [`Cluster::add_local_pod`].
    added: usize,
}

impl Cluster {
    pub fn new(policies: usize, local: usize, remote: usize) -> Cluster {
        let namespaces = (0..NAMESPACES)
            .map(|n| Namespace {
                name: namespace_name(n),
                labels: labels(&[
                    ("team", &format!("team-{}", n % 4)),
                    (
                        "env",
                        if n.is_multiple_of(2) {
                            "prod"
                        } else {
                            "staging"
                        },
                    ),
                ]),
            })
            .chain(std::iter::once(Namespace {
                name: "kube-system".into(),
                labels: Labels::new(),
            }))
            .collect();
        let mut pods: Vec<Pod> = (0..local).map(|i| pod(i, true)).collect();
        pods.extend((0..remote).map(|i| pod(i, false)));
        pods.extend((0..2u32).map(|i| Pod {
            namespace: "kube-system".into(),
            name: format!("coredns-{i}"),
            labels: labels(&[("k8s-app", "kube-dns")]),
            ips: vec![IpAddr::V4(Ipv4Addr::from(DNS_BASE + i))],
            named_ports: vec![NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
            }],
            host_ifname: None,
        }));
        Cluster {
            input: PolicyInput {
                policies: (0..policies)
                    .map(|i| Arc::new(policy(i, (false, false))))
                    .collect(),
                namespaces,
                pods,
                pools: vec![Pool {
                    cidr: IpNet::V4(
                        ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).unwrap_or_default(),
                    ),
                    nat_outgoing: true,
                    disabled: false,
                }],
            },
            local,
            remote,
            variants: vec![(false, false); policies],
            added: 0,
        }
    }

    /// The apps that have a policy and a local pod: where a change always changes something.
    fn live_apps(&self) -> usize {
        self.variants.len().min(self.local).min(APPS)
    }

    /// Change number `n` of one policy: its first port or its cross-namespace peer, toggled.
    /// The policy is one that selects a local pod, so its chain is in the dataplane.
    pub fn change_policy(&mut self, n: usize) {
        let live = self.live_apps();
        let candidates: Vec<usize> = (0..self.variants.len())
            .filter(|i| i % APPS < live)
            .collect();
        let Some(&i) = candidates.get(spread(n, candidates.len())) else {
            return;
        };
        if let (Some(v), Some(slot)) = (self.variants.get_mut(i), self.input.policies.get_mut(i)) {
            if n.is_multiple_of(2) {
                v.0 = !v.0;
            } else {
                v.1 = !v.1;
            }
            *slot = Arc::new(policy(i, *v));
        }
    }

    /// Label change number `n`: a remote pod's `role` (which peer sets hold it) or a local
    /// pod's `track` (canary pods leave their app's policies), alternately. Both pods are
    /// of an app with a policy.
    pub fn change_label(&mut self, n: usize) {
        let live = self.live_apps();
        let (first, count, key, a, b) = if n.is_multiple_of(2) {
            (self.local, self.remote, "role", "frontend", "backend")
        } else {
            (0, self.local, "track", "stable", "canary")
        };
        let candidates: Vec<usize> = (0..count).filter(|i| i % APPS < live).collect();
        let Some(&i) = candidates.get(spread(n / 2, candidates.len())) else {
            return;
        };
        let Some(pod) = self.input.pods.get_mut(first + i) else {
            return;
        };
        let next = if pod.labels.get(key).map(String::as_str) == Some(a) {
            b
        } else {
            a
        };
        pod.labels.insert(key.into(), next.into());
    }

    /// Adds a new local pod (wired: it has its host veth); returns its address.
    pub fn add_local_pod(&mut self) -> IpAddr {
        let index = self.local + self.added;
        self.added += 1;
        let pod = pod(index, true);
        let ip = pod
            .ips
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        self.input.pods.push(pod);
        ip
    }

    /// Removes the pods [`Cluster::add_local_pod`] added.
    pub fn remove_added_pods(&mut self) {
        let keep = self.local + self.remote + 2;
        self.input.pods.truncate(keep);
    }
}

/// `n`-th of `count` picks, spread so that consecutive picks are far apart.
fn spread(n: usize, count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    // 7919 is prime: for any count it is not a multiple of, the picks visit every index.
    (n * 7919) % count
}

fn namespace_name(n: usize) -> String {
    format!("ns-{n:02}")
}

fn app_name(app: usize) -> String {
    format!("app-{app:02}")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pod `i` of this node (`local`) or of the rest of the cluster.
fn pod(i: usize, local: bool) -> Pod {
    let app = i % APPS;
    let (base, prefix) = if local {
        (LOCAL_BASE, "l")
    } else {
        (REMOTE_BASE, "r")
    };
    Pod {
        namespace: namespace_name(app / APPS_PER_NAMESPACE),
        name: format!("{}-{prefix}{i}", app_name(app)),
        labels: labels(&[
            ("app", &app_name(app)),
            ("role", ROLES[app % ROLES.len()]),
            ("track", "stable"),
            ("version", &format!("v{}", i % 3)),
        ]),
        ips: vec![IpAddr::V4(Ipv4Addr::from(base.wrapping_add(i as u32)))],
        named_ports: vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            },
            NamedPort {
                name: "metrics".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            },
        ],
        host_ifname: local.then(|| host_ifname(i)),
    }
}

/// `tort` + 11 hex digits, as the CNI plugin names host veths; distinct for every `i`
/// (multiplying by an odd number is a bijection modulo 2^44).
fn host_ifname(i: usize) -> String {
    let mixed = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) & ((1 << 44) - 1);
    format!("tort{mixed:011x}")
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        match_expressions: None,
    }
}

fn pod_peer(namespaces: Option<LabelSelector>, pods: Option<LabelSelector>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: namespaces,
        pod_selector: pods,
        ip_block: None,
    }
}

fn block_peer(cidr: String, except: Vec<String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr,
            except: Some(except),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn port(protocol: &str, port: IntOrString, end: Option<i32>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(port),
        end_port: end,
    }
}

/// Policy `i`: in the namespace of app `i % 40`, selecting its non-canary pods. Ingress from
/// the namespace's frontends and another app in a team's namespaces (8080 and the named
/// port `http`), from an IP block with holes (443, 9000-9100), from prod namespaces
/// (`metrics`); egress to another app anywhere (5432), to kube-dns (53 UDP and TCP) and to
/// the internet outside private ranges (443). `variant` toggles the first port and the
/// cross-namespace peer's app.
fn policy(i: usize, variant: (bool, bool)) -> NetworkPolicy {
    let app = i % APPS;
    let peer_app = (app + 1 + usize::from(variant.1) * 7) % APPS;
    // A /20 per policy (up to 256 distinct ones) in 172.16.0.0/12, with two /24 holes.
    let (b, c) = (16 + (i / 16) % 16, (i % 16) * 16);
    let tcp = |p: i32| port("TCP", IntOrString::Int(p), None);
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(namespace_name(app / APPS_PER_NAMESPACE)),
            name: Some(format!("{}-policy-{i}", app_name(app))),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some([("app".to_owned(), app_name(app))].into()),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "track".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["canary".into()]),
                }]),
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        pod_peer(None, Some(selector(&[("role", "frontend")]))),
                        pod_peer(
                            Some(selector(&[("team", &format!("team-{}", i % 4))])),
                            Some(selector(&[("app", &app_name(peer_app))])),
                        ),
                    ]),
                    ports: Some(vec![
                        tcp(if variant.0 { 8081 } else { 8080 }),
                        port("TCP", IntOrString::String("http".into()), None),
                    ]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![block_peer(
                        format!("172.{b}.{c}.0/20"),
                        vec![
                            format!("172.{b}.{c}.0/24"),
                            format!("172.{b}.{}.0/24", c + 1),
                        ],
                    )]),
                    ports: Some(vec![
                        tcp(443),
                        port("TCP", IntOrString::Int(9000), Some(9100)),
                    ]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![pod_peer(Some(selector(&[("env", "prod")])), None)]),
                    ports: Some(vec![port(
                        "TCP",
                        IntOrString::String("metrics".into()),
                        None,
                    )]),
                },
            ]),
            egress: Some(vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![pod_peer(
                        Some(LabelSelector::default()),
                        Some(selector(&[("app", &app_name((app + 2) % APPS))])),
                    )]),
                    ports: Some(vec![tcp(5432)]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![pod_peer(
                        Some(selector(&[("kubernetes.io/metadata.name", "kube-system")])),
                        Some(selector(&[("k8s-app", "kube-dns")])),
                    )]),
                    ports: Some(vec![port("UDP", IntOrString::Int(53), None), tcp(53)]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![block_peer(
                        "0.0.0.0/0".into(),
                        vec![
                            "10.0.0.0/8".into(),
                            "172.16.0.0/12".into(),
                            "192.168.0.0/16".into(),
                        ],
                    )]),
                    ports: Some(vec![tcp(443)]),
                },
            ]),
        }),
    }
}

/// `-A` lines the dataplane puts in the kernel: our chains' rules and the hooks.
pub fn rule_count(d: &Dataplane) -> usize {
    d.chains.values().map(Vec::len).sum::<usize>() + d.hooks.len()
}

/// How many policies make about `target` rules: the count grows linearly with them (each
/// adds its own chains and two rules per selected pod in each endpoint chain), so two
/// compiles give the line and a third corrects the estimate.
pub fn policies_for(target: usize, opts: &BenchOptions) -> usize {
    let rules = |policies: usize| {
        let c = Cluster::new(policies, opts.pods, opts.remote_pods);
        rule_count(&compile(&c.input, Family::V4).dataplane) as f64
    };
    let probe = opts.policies.clamp(APPS, 400);
    let base = rules(0);
    let slope = ((rules(probe) - base) / probe as f64).max(1.0);
    let estimate = |from: f64, at: f64| (from + (target as f64 - at) / slope).round().max(1.0);
    let first = estimate(0.0, base);
    estimate(first, rules(first as usize)) as usize
}

/// The backend named, or the one `Auto` picks in an empty namespace (nft, on the tie), and
/// ipset's version as seen from there.
fn detect_backend(setting: BackendSetting) -> Result<(Backend, String), Error> {
    let ns = NetNs::create("tortie-bench").map_err(Error::io("creating a bench namespace"))?;
    in_netns(ns.name(), || {
        let backend = Backend::detect(setting, Family::V4)
            .map_err(|e| Error::Command(format!("detecting the iptables backend: {e}")))?;
        Ok((backend, tool_version("ipset", "version")))
    })?
}

/// A series' figure for one sample: its time, or a failure with its reason.
fn record<E: std::fmt::Display>(series: &mut Series, took: Result<Duration, E>) {
    match took {
        Ok(d) => series.ok(d),
        Err(e) => series.failed(None, e.to_string()),
    }
}

fn full_syncs(cluster: &Cluster, backend: Backend, repetitions: usize) -> Result<FullSync, Error> {
    let desired = compile(&cluster.input, Family::V4).dataplane;
    let mut out = FullSync {
        size: Size::of(cluster.input.policies.len(), &desired),
        ..FullSync::default()
    };
    let floor_input = FloorInput::render(&desired);
    for rep in 0..repetitions {
        // Even repetitions run ours first, odd ones the floor first.
        for ours_turn in [rep.is_multiple_of(2), !rep.is_multiple_of(2)] {
            if ours_turn {
                let (took, compiled, counts) = full_sync_ours(&cluster.input, backend, rep == 0)?;
                record(&mut out.ours, took);
                out.compile.times.push(compiled);
                if let Some((rules, members)) = counts {
                    out.kernel_rules.0 = rules;
                    out.kernel_members.0 = members;
                }
            } else {
                let (took, counts) = full_sync_floor(&floor_input, backend, rep == 0)?;
                record(&mut out.floor, took);
                if let Some((rules, members)) = counts {
                    out.kernel_rules.1 = rules;
                    out.kernel_members.1 = members;
                }
            }
        }
    }
    Ok(out)
}

type Counts = Option<(usize, usize)>;

/// Copy + compile + apply into a fresh namespace; with `count`, what the kernel then holds.
fn full_sync_ours(
    input: &PolicyInput,
    backend: Backend,
    count: bool,
) -> Result<(Result<Duration, String>, Duration, Counts), Error> {
    let ns = NetNs::create("tortie-bench").map_err(Error::io("creating a bench namespace"))?;
    in_netns(ns.name(), || {
        let start = Instant::now();
        let input = input.clone();
        let compiled = compile(&input, Family::V4);
        let compile_took = start.elapsed();
        let mut applier = Applier::new(Family::V4, backend);
        let took = applier
            .apply(compiled.dataplane)
            .map(|_| start.elapsed())
            .map_err(|e| e.to_string());
        let counts = count.then(|| kernel_counts(backend));
        (took, compile_took, counts)
    })
}

/// The floor's restore inputs, rendered before the clock starts.
struct FloorInput {
    ipset: String,
    iptables: String,
}

impl FloorInput {
    /// The same sets (created, then filled) and the same rules, each with the applier's
    /// `tort:` comment, as whole tables: built-in chains declared, hooks appended.
    fn render(d: &Dataplane) -> FloorInput {
        let family = d.family.unwrap_or(Family::V4).ipset_family();
        let mut ipset = String::new();
        for (name, set) in &d.ipsets {
            let _ = writeln!(ipset, "create {name} {} family {family}", set.kind.as_str());
            for member in &set.members {
                let _ = writeln!(ipset, "add {name} {member}");
            }
        }
        let mut iptables = String::new();
        for (table, builtins) in [
            (Table::Filter, &["INPUT", "FORWARD", "OUTPUT"][..]),
            (
                Table::Nat,
                &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"][..],
            ),
        ] {
            let _ = writeln!(iptables, "*{}", table.as_str());
            for builtin in builtins {
                let _ = writeln!(iptables, ":{builtin} ACCEPT [0:0]");
            }
            let chains: Vec<_> = d.chains.iter().filter(|((t, _), _)| *t == table).collect();
            for ((_, chain), _) in &chains {
                let _ = writeln!(iptables, ":{chain} - [0:0]");
            }
            for hook in d.hooks.iter().filter(|h| h.table == table) {
                let _ = writeln!(
                    iptables,
                    "-A {} -m comment --comment \"tort:hook\" -j {}",
                    hook.builtin, hook.chain
                );
            }
            for ((_, chain), rules) in &chains {
                for rule in rules.iter() {
                    let _ = writeln!(
                        iptables,
                        "-A {chain} -m comment --comment \"{}\" {rule}",
                        rule_tag(rule)
                    );
                }
            }
            iptables.push_str("COMMIT\n");
        }
        FloorInput { ipset, iptables }
    }
}

fn restore_program(backend: Backend) -> &'static str {
    match backend {
        Backend::Legacy => "iptables-legacy-restore",
        Backend::Nft => "iptables-nft-restore",
    }
}

fn save_program(backend: Backend) -> &'static str {
    match backend {
        Backend::Legacy => "iptables-legacy-save",
        Backend::Nft => "iptables-nft-save",
    }
}

/// `ipset restore` then `iptables-restore` into a fresh namespace, timed spawn to exit.
fn full_sync_floor(
    input: &FloorInput,
    backend: Backend,
    count: bool,
) -> Result<(Result<Duration, String>, Counts), Error> {
    let ns = NetNs::create("tortie-bench").map_err(Error::io("creating a bench namespace"))?;
    in_netns(ns.name(), || {
        let start = Instant::now();
        let took = feed("ipset", &["restore"], &input.ipset)
            .and_then(|()| {
                feed(
                    restore_program(backend),
                    &["-w", LOCK_WAIT_SECS],
                    &input.iptables,
                )
            })
            .map(|()| start.elapsed());
        (took, count.then(|| kernel_counts(backend)))
    })
}

/// `-A` lines in `iptables-save` and `add` lines in `ipset save`, in this thread's namespace.
fn kernel_counts(backend: Backend) -> (usize, usize) {
    let count = |text: Result<String, String>, prefix: &str| {
        text.map(|t| t.lines().filter(|l| l.starts_with(prefix)).count())
            .unwrap_or(0)
    };
    (
        count(run_tool(save_program(backend), &[]), "-A "),
        count(run_tool("ipset", &["save"]), "add "),
    )
}

/// One scale: a full sync (ours and the floor, untimed against any goal), then `changes`
/// changes through the same applier, policy and label changes alternating.
fn scale(
    target: usize,
    mut cluster: Cluster,
    backend: Backend,
    changes: usize,
    budget: Duration,
) -> Result<Scale, Error> {
    // The full sync's compile is timed here, outside the namespace (it is pure), so that
    // the floor's input comes from the same compile.
    let start = Instant::now();
    let input = cluster.input.clone();
    // A fresh compiler: this compile is a whole one, as after an agent start.
    let mut compiler = Incremental::new(Family::V4);
    let desired = compiler.compile(&input).dataplane;
    let compile_took = start.elapsed();
    drop(input);
    let mut out = Scale {
        target,
        size: Size::of(cluster.input.policies.len(), &desired),
        ..Scale::default()
    };
    let (took, _) = full_sync_floor(&FloorInput::render(&desired), backend, false)?;
    record(&mut out.floor, took);

    let ns = NetNs::create("tortie-bench").map_err(Error::io("creating a bench namespace"))?;
    in_netns(ns.name(), || {
        let mut applier = Applier::new(Family::V4, backend);
        let start = Instant::now();
        let first = applier
            .apply(desired)
            .map(|_| compile_took + start.elapsed())
            .map_err(|e| e.to_string());
        let failed = first.is_err();
        record(&mut out.full_sync, first);
        if failed {
            return;
        }
        let loop_start = Instant::now();
        for n in 0..changes {
            if n >= 2 && loop_start.elapsed() > budget {
                break;
            }
            let policy_change = n.is_multiple_of(2);
            if policy_change {
                cluster.change_policy(n / 2);
            } else {
                cluster.change_label(n / 2);
            }
            let pass = change(&mut compiler, &mut applier, &cluster.input);
            out.compile.times.push(pass.compile);
            if let Ok(apply) = pass.apply {
                out.apply.times.push(apply);
            }
            let series = if policy_change {
                &mut out.policy_changes
            } else {
                &mut out.label_changes
            };
            let failed = pass.took.is_err();
            record(series, pass.took);
            if failed {
                // The applier reads the kernel again on its next apply; keep going.
                applier.resync();
            }
        }
    })?;
    Ok(out)
}

/// One timed pass.
struct Pass {
    /// Copy + compile + apply, or why it failed.
    took: Result<Duration, String>,
    compile: Duration,
    apply: Result<Duration, String>,
}

/// One pass of the agent's loop: copy the input, compile it (with the long-lived
/// compiler, which recomputes what the change touched), apply it. An apply that writes
/// nothing is a failure: the change the bench made did not reach the dataplane, so
/// nothing was measured.
fn change(compiler: &mut Incremental, applier: &mut Applier, input: &PolicyInput) -> Pass {
    let start = Instant::now();
    let input = input.clone();
    let compiled = compiler.compile(&input);
    let compile = start.elapsed();
    let apply_start = Instant::now();
    let apply = match applier.apply(compiled.dataplane) {
        Ok(report) if report.is_empty() => Err("the change wrote nothing".to_owned()),
        Ok(_) => Ok(apply_start.elapsed()),
        Err(e) => Err(e.to_string()),
    };
    Pass {
        took: apply.clone().map(|_| start.elapsed()),
        compile,
        apply,
    }
}

/// With the default cluster in place, adds one local pod at a time and times the pass that
/// puts it in; checks (untimed) that the kernel's sets hold its address wherever the
/// compiled dataplane says, then removes it again (untimed).
fn new_pods(
    mut cluster: Cluster,
    backend: Backend,
    count: usize,
    budget: Duration,
) -> Result<NewPods, Error> {
    let ns = NetNs::create("tortie-bench").map_err(Error::io("creating a bench namespace"))?;
    in_netns(ns.name(), || -> Result<NewPods, Error> {
        let mut out = NewPods::default();
        let mut applier = Applier::new(Family::V4, backend);
        let mut compiler = Incremental::new(Family::V4);
        applier
            .apply(compiler.compile(&cluster.input).dataplane)
            .map_err(|e| Error::Command(format!("the full sync before the new pods: {e}")))?;
        let loop_start = Instant::now();
        for n in 0..count {
            if n >= 2 && loop_start.elapsed() > budget {
                break;
            }
            let ip = cluster.add_local_pod();
            let pass = change(&mut compiler, &mut applier, &cluster.input);
            out.compile.times.push(pass.compile);
            if let Ok(apply) = pass.apply {
                out.apply.times.push(apply);
            }
            let checked = pass.took.and_then(|d| {
                let want = sets_holding(&compile(&cluster.input, Family::V4).dataplane, &ip);
                let have = kernel_sets_holding(&ip)?;
                if want.is_empty() || want != have {
                    return Err(format!(
                        "pod {ip}: the kernel has it in {} sets, the dataplane in {}",
                        have.len(),
                        want.len()
                    ));
                }
                Ok(d)
            });
            let failed = checked.is_err();
            record(&mut out.pods, checked);
            cluster.remove_added_pods();
            if failed {
                applier.resync();
            }
            applier
                .apply(compiler.compile(&cluster.input).dataplane)
                .map_err(|e| Error::Command(format!("removing the new pod again: {e}")))?;
        }
        Ok(out)
    })?
}

/// The sets of `d` with a member for `ip` (`10.0.0.1` or `10.0.0.1,tcp:8080`).
fn sets_holding(d: &Dataplane, ip: &IpAddr) -> BTreeSet<String> {
    let bare = ip.to_string();
    let with_port = format!("{bare},");
    d.ipsets
        .iter()
        .filter(|(_, s)| {
            s.members
                .iter()
                .any(|m| *m == bare || m.starts_with(&with_port))
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// The same, read from `ipset save` in this thread's namespace.
fn kernel_sets_holding(ip: &IpAddr) -> Result<BTreeSet<String>, String> {
    let bare = ip.to_string();
    let with_port = format!("{bare},");
    Ok(run_tool("ipset", &["save"])?
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("add"), Some(set), Some(m)) if m == bare || m.starts_with(&with_port) => {
                    Some(set.to_owned())
                }
                _ => None,
            }
        })
        .collect())
}

/// Runs `program args` with `input` on stdin; an error carries the exit status and stderr.
fn feed(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let pipe = child.stdin.take();
    let out = std::thread::scope(|scope| {
        if let Some(mut pipe) = pipe {
            // A tool that stops reading has failed; its stderr says why.
            scope.spawn(move || pipe.write_all(input.as_bytes()));
        }
        child.wait_with_output()
    })
    .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs `program args`; its stdout, or why not.
fn run_tool(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A tool's version line, or `?`.
fn tool_version(program: &str, arg: &str) -> String {
    run_tool(program, &[arg])
        .ok()
        .and_then(|v| v.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "?".into())
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn spread_of(s: &Series) -> String {
    match (s.times.iter().min(), s.max()) {
        (Some(lo), Some(hi)) => format!(
            "{:.1}–{:.1} ms",
            lo.as_secs_f64() * 1e3,
            hi.as_secs_f64() * 1e3
        ),
        _ => "-".into(),
    }
}

/// One markdown table row.
fn row(out: &mut String, cells: &[&str]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// A markdown table's header and alignment rows: figures right-aligned, the series name and
/// the goal columns left.
fn header(out: &mut String, names: &[&str]) {
    row(out, names);
    let align: Vec<&str> = names
        .iter()
        .map(|n| match *n {
            "series" | "goal" | "" => "---",
            _ => "---:",
        })
        .collect();
    row(out, &align);
}

/// The report as markdown: the run's circumstances, one table per goal with each goal met
/// or not, and Felix's figures for reference.
pub fn render(r: &BenchReport) -> String {
    let c = &r.conditions;
    let f = &r.full_sync;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench policy: the agent's policy path (copy + compile + apply, IPv4), in throw-away network namespaces\n\
         {}\n\
         build: {}; iptables backend: {}, {}; {}\n\
         cluster: {} local + {} remote pods in 10 namespaces\n",
        c.machine.line(),
        c.build,
        c.backend,
        c.iptables_version,
        c.ipset_version,
        r.local_pods,
        r.remote_pods
    );

    let _ = writeln!(
        out,
        "Full sync into an empty namespace: {} policies, {} rules, {} sets ({} members).",
        f.size.policies, f.size.rules, f.size.sets, f.size.members
    );
    header(
        &mut out,
        &["series", "n", "fail", "median", "min–max", "goal", ""],
    );
    let goal = format!("≤ {} ms", FULL_SYNC_GOAL.as_millis());
    for (name, s, goal, ok) in [
        (
            "tortie: compile + apply",
            &f.ours,
            goal.as_str(),
            met(r.full_sync_met()),
        ),
        ("of which compile", &f.compile, "", ""),
        ("floor: ipset + iptables-restore", &f.floor, "floor", ""),
    ] {
        let n = s.n().to_string();
        let fail = s.failures.to_string();
        row(
            &mut out,
            &[name, &n, &fail, &ms(s.p50()), &spread_of(s), goal, ok],
        );
    }
    if let (Some(a), Some(b)) = (f.ours.p50(), f.floor.p50()) {
        let _ = writeln!(
            out,
            "\ntortie / floor: {:.2}× (medians). The kernel then held {} / {} rules and {} / {} set members (tortie / floor).",
            a.as_secs_f64() / b.as_secs_f64(),
            f.kernel_rules.0,
            f.kernel_rules.1,
            f.kernel_members.0,
            f.kernel_members.1
        );
    }

    let _ = writeln!(
        out,
        "\nOne change into the kernel, policy (a port or a peer) and pod-label (a remote pod's role, \
         a local pod's track) changes alternating; sync and floor: one full sync at that size."
    );
    let change_goal = format!("p99 ≤ {} ms", CHANGE_GOAL.as_millis());
    header(
        &mut out,
        &[
            "rules",
            "policies",
            "sets",
            "sync",
            "floor",
            "changes",
            "fail",
            "p50",
            "p99",
            "policy p99",
            "label p99",
            "compile p50",
            "apply p50",
            "goal",
            "",
        ],
    );
    for s in &r.scales {
        let all = s.changes();
        row(
            &mut out,
            &[
                &s.size.rules.to_string(),
                &s.size.policies.to_string(),
                &s.size.sets.to_string(),
                &ms(s.full_sync.p50()),
                &ms(s.floor.p50()),
                &all.n().to_string(),
                &all.failures.to_string(),
                &ms(all.p50()),
                &ms(all.p99()),
                &ms(s.policy_changes.p99()),
                &ms(s.label_changes.p99()),
                &ms(s.compile.p50()),
                &ms(s.apply.p50()),
                &change_goal,
                met(BenchReport::scale_met(s)),
            ],
        );
    }

    let p = &r.new_pod.pods;
    let _ = writeln!(
        out,
        "\nA new local pod with the {} policies in place, until its address is in its sets \
         (checked against `ipset save`) and its chains are written.",
        f.size.policies
    );
    header(
        &mut out,
        &[
            "pods",
            "fail",
            "p50",
            "p99",
            "max",
            "compile p50",
            "apply p50",
            "goal",
            "",
        ],
    );
    row(
        &mut out,
        &[
            &p.n().to_string(),
            &p.failures.to_string(),
            &ms(p.p50()),
            &ms(p.p99()),
            &ms(p.max()),
            &ms(r.new_pod.compile.p50()),
            &ms(r.new_pod.apply.p50()),
            &format!("p99 ≤ {} ms", NEW_POD_GOAL.as_millis()),
            met(r.new_pod_met()),
        ],
    );

    let _ = writeln!(out, "\n{FELIX_REFERENCE}\n");
    for (name, s) in [("full sync", &f.ours), ("floor", &f.floor), ("new pod", p)] {
        if let Some(e) = &s.first_error {
            let _ = writeln!(out, "first {name} failure: {e}");
        }
    }
    for s in &r.scales {
        if let Some(e) = &s.full_sync.first_error {
            let _ = writeln!(out, "full sync at {} rules failed: {e}", s.size.rules);
        }
        if let Some(e) = &s.changes().first_error {
            let _ = writeln!(out, "first change failure at {} rules: {e}", s.size.rules);
        }
    }
    let _ = writeln!(out, "{}", verdict(r.all_met()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifnames_are_distinct_and_fit() {
        let names: BTreeSet<String> = (0..5000).map(host_ifname).collect();
        assert_eq!(names.len(), 5000);
        assert!(names.iter().all(|n| n.len() == 15 && n.starts_with("tort")));
    }

    #[test]
    fn the_cluster_compiles_without_warnings() {
        let c = Cluster::new(100, 110, 1000);
        let compiled = compile(&c.input, Family::V4);
        assert_eq!(compiled.warnings, Vec::<String>::new());
        let d = &compiled.dataplane;
        // Every local pod has its two chains; every policy selects a local pod.
        let chains = |prefix: &str| {
            d.chains
                .keys()
                .filter(|(_, c)| c.starts_with(prefix))
                .count()
        };
        assert_eq!(chains("tort-tw-"), 110);
        assert_eq!(chains("tort-fw-"), 110);
        assert_eq!(chains("tort-pi-"), 100);
        assert_eq!(chains("tort-pe-"), 100);
        assert!(
            d.ipsets
                .values()
                .any(|s| s.members.iter().any(|m| m.ends_with("nomatch")))
        );
    }

    #[test]
    fn every_change_changes_the_dataplane() {
        let mut c = Cluster::new(30, 50, 200);
        let mut before = compile(&c.input, Family::V4).dataplane;
        for n in 0..40usize {
            if n.is_multiple_of(2) {
                c.change_policy(n / 2);
            } else {
                c.change_label(n / 2);
            }
            let after = compile(&c.input, Family::V4).dataplane;
            assert_ne!(before, after, "change {n} changed nothing");
            before = after;
        }
    }

    #[test]
    fn the_scale_estimate_lands_near_the_target() {
        let opts = BenchOptions::default();
        for target in [1_000, 4_000] {
            let p = policies_for(target, &opts);
            let c = Cluster::new(p, opts.pods, opts.remote_pods);
            let rules = rule_count(&compile(&c.input, Family::V4).dataplane);
            let off = rules.abs_diff(target) as f64 / target as f64;
            assert!(off < 0.1, "{target}: {p} policies give {rules} rules");
        }
    }

    #[test]
    fn the_floor_holds_every_rule_and_member() {
        let c = Cluster::new(10, 20, 50);
        let d = compile(&c.input, Family::V4).dataplane;
        let floor = FloorInput::render(&d);
        let rules = floor
            .iptables
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count();
        assert_eq!(rules, rule_count(&d));
        let members = floor
            .ipset
            .lines()
            .filter(|l| l.starts_with("add "))
            .count();
        assert_eq!(members, Size::of(10, &d).members);
    }
}
