//! Root, real parts: Kubernetes NetworkPolicy conformance, shaped like the upstream e2e
//! suite (`test/e2e/network/netpol`, "Netpol NetworkPolicy between server and client").
//!
//! One three-node lab with the real agents; namespaces x, y, z (labelled `ns=x|y|z`), each
//! with pods a, b, c (labelled `pod=a|b|c`; a on node-1, b on node-2, c on node-3), every
//! pod serving TCP and UDP on 80 and 81 behind the container ports upstream names
//! (serve-80-tcp, serve-80-udp, serve-81-tcp, serve-81-udp). Each case applies its policies
//! with kubectl, then probes all 9×9 pairs (self included) on the case's port and protocol
//! and compares with the truth table the policies mean. Enforcement takes a moment, so a
//! table is probed again until it matches or [`WAIT`] has passed; a match counts only once
//! [`SETTLE`] has passed since the last change, so an allow-everything table cannot pass
//! before the agents have seen the change. Between cases every policy is deleted and every
//! label restored.
//!
//! One #[test] runs every case on the one lab (building it takes ~20 s) and fails at the end
//! naming each failed case after its upstream test. TORTIE_NETPOL_CASES=a,b runs only the
//! cases whose name contains one of those words; TORTIE_NETPOL_WAIT_SECS changes [`WAIT`].
//!
//! Self cells are always expected to connect: a pod's own address is on its own loopback,
//! never seen by the node (upstream ignores these cells, kubernetes#95879). apiserver v1.20
//! knows no `endPort`, and sets no `kubernetes.io/metadata.name` label on namespaces: the
//! cases that select it check that the agent matches it anyway (docs/policy.md).
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab_support::{TestLab, text};
use serde_json::{Value, json};
use tortie_lab::pod::{self, AddOptions, ContainerPort, PodRef, Protocol};
use tortie_lab::traffic::matrix::{self, Peer, TruthTable};
use tortie_lab::traffic::probe;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pod name and the node it runs on.
const PODS: [(&str, &str); 3] = [("a", "node-1"), ("b", "node-2"), ("c", "node-3")];
const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
/// How long one probe waits for an answer; a dropped probe costs this much.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a table may take to match after a change.
const WAIT: Duration = Duration::from_secs(15);
/// A matching table counts only when probed at least this long after the last change.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the first, unpoliced table may take: routes spread over BGP after `up`.
const CONVERGENCE: Duration = Duration::from_secs(60);

type Case = fn(&mut Netpol) -> Result<(), String>;

/// The cases, in order, each named after its upstream test (`udp_` for the UDP context).
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), $case as Case)),*]
    };
}

const CASES: &[(&str, Case)] = cases![
    should_support_a_default_deny_ingress_policy,
    should_support_a_default_deny_all_policy,
    should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector,
    should_enforce_policy_to_allow_ingress_traffic_for_a_target,
    should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces,
    should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector,
    should_enforce_policy_based_on_pod_selector_with_match_expressions,
    should_enforce_policy_based_on_namespace_selector_with_match_expressions,
    should_enforce_policy_based_on_pod_selector_or_namespace_selector,
    should_enforce_policy_based_on_pod_selector_and_namespace_selector,
    should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors,
    should_enforce_policy_based_on_any_pod_selectors,
    should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    should_enforce_policy_based_on_ports,
    should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors,
    should_support_allow_all_policy,
    should_allow_ingress_access_on_one_named_port,
    should_allow_ingress_access_from_namespace_on_one_named_port,
    should_allow_egress_access_on_one_named_port,
    should_enforce_updated_policy,
    should_allow_ingress_access_from_updated_namespace,
    should_allow_ingress_access_from_updated_pod,
    should_deny_ingress_from_pods_on_other_namespaces,
    should_deny_ingress_access_to_updated_pod,
    should_deny_egress_from_pods_based_on_pod_selector,
    should_deny_egress_from_all_pods_in_a_namespace,
    should_work_with_ingress_egress_specified_together,
    should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic,
    should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
    should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol,
    should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence,
    should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence,
    should_stop_enforcing_policies_after_they_are_deleted,
    should_allow_egress_access_to_server_in_cidr_block,
    should_enforce_except_clause_while_egress_access_to_server_in_cidr_block,
    should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed,
    should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector,
    should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp,
    should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp,
    should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp,
    should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label,
    should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label,
    udp_should_support_a_default_deny_ingress_policy,
    udp_should_enforce_policy_based_on_ports,
    udp_should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector,
];

#[test]
fn network_policy_conformance() {
    let started = Instant::now();
    let wanted = selected_cases();
    let t = lab();
    let mut n = Netpol::new(&t);
    n.add_pods();
    eprintln!(
        "[{:5.1}s] lab up, 9 pods serving",
        started.elapsed().as_secs_f64()
    );
    // Without policies every pod reaches every pod on every port: the servers, the routes
    // and the probes work, so what the cases see comes from their policies.
    for (port, protocol) in [(80, TCP), (81, TCP), (80, UDP), (81, UDP)] {
        let all = n.reach();
        if let Err(e) = n.check_within(port, protocol, all, CONVERGENCE) {
            panic!("before any policy: {e}");
        }
    }
    eprintln!(
        "[{:5.1}s] every pod reaches every pod on 80 and 81, TCP and UDP",
        started.elapsed().as_secs_f64()
    );

    let mut failed = Vec::new();
    let mut ran = 0;
    let mut broken_cleanup = false;
    for (name, case) in CASES {
        if !wanted
            .as_ref()
            .is_none_or(|w| w.iter().any(|w| name.contains(w.as_str())))
        {
            continue;
        }
        ran += 1;
        if broken_cleanup {
            // Its policies or labels would be mixed with an earlier case's leftovers.
            failed.push(format!("{name} (not run: an earlier cleanup failed)"));
            continue;
        }
        let case_start = Instant::now();
        let outcome = case(&mut n);
        let cleanup = n.reset();
        let secs = case_start.elapsed().as_secs_f64();
        match (&outcome, &cleanup) {
            (Ok(()), Ok(())) => eprintln!(
                "[{:5.1}s] ok   {name} ({secs:.1}s)",
                started.elapsed().as_secs_f64()
            ),
            _ => {
                eprintln!(
                    "[{:5.1}s] FAIL {name} ({secs:.1}s)",
                    started.elapsed().as_secs_f64()
                );
                if let Err(e) = &outcome {
                    eprintln!("{}", indent(e));
                }
                if let Err(e) = &cleanup {
                    eprintln!("{}", indent(&format!("cleaning up after the case: {e}")));
                }
                failed.push((*name).to_owned());
            }
        }
        broken_cleanup |= cleanup.is_err();
    }
    eprintln!(
        "[{:5.1}s] {ran} cases, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(ran > 0, "TORTIE_NETPOL_CASES matched no case");
    assert!(
        failed.is_empty(),
        "{} of {ran} NetworkPolicy cases failed (tables above):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

fn selected_cases() -> Option<Vec<String>> {
    std::env::var("TORTIE_NETPOL_CASES")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|w| w.trim().to_owned()).collect())
}

fn wait() -> Duration {
    std::env::var("TORTIE_NETPOL_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(WAIT)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A three-node lab with its real agents ready and no pods.
fn lab() -> TestLab {
    let t = TestLab::up_with_real_agents("np", 3, 0);
    t.wait_agents_ready(Duration::from_secs(90));
    t
}

/// A NetworkPolicy object.
fn np(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// `{"matchLabels": {k: v, ...}}`.
fn labels(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    json!({ "matchLabels": map })
}

/// `{"matchExpressions": [{key, operator, values}]}`.
fn expression(key: &str, operator: &str, values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": key, "operator": operator, "values": values}]})
}

/// The cluster and what the cases do to it.
struct Netpol<'a> {
    t: &'a TestLab,
    pods: Vec<PodRef>,
    names: Vec<String>,
    ips: BTreeMap<String, IpAddr>,
    /// When the cluster last changed (a policy or a label), for [`SETTLE`].
    changed: Instant,
    /// Labels were changed: [`Netpol::reset`] puts them back.
    relabelled: bool,
    applied: u32,
    wait: Duration,
}

impl<'a> Netpol<'a> {
    fn new(t: &'a TestLab) -> Netpol<'a> {
        let pods: Vec<PodRef> = NAMESPACES
            .iter()
            .flat_map(|ns| {
                PODS.iter()
                    .map(move |(name, _)| PodRef::new(ns, name).unwrap_or_else(|e| panic!("{e}")))
            })
            .collect();
        Netpol {
            t,
            names: pods.iter().map(ToString::to_string).collect(),
            pods,
            ips: BTreeMap::new(),
            changed: Instant::now(),
            relabelled: false,
            applied: 0,
            wait: wait(),
        }
    }

    /// The namespaces with their labels, then the nine pods, added at once.
    fn add_pods(&mut self) {
        let namespaces: Vec<Value> = NAMESPACES
            .iter()
            .map(|ns| {
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ns, "labels": {"ns": ns}}})
            })
            .collect();
        self.apply(&namespaces)
            .unwrap_or_else(|e| panic!("creating the namespaces: {e}"));
        let container_ports: Vec<ContainerPort> = [80, 81]
            .iter()
            .flat_map(|port| {
                [TCP, UDP].into_iter().map(move |protocol| ContainerPort {
                    name: format!("serve-{port}-{protocol}"),
                    port: *port,
                    protocol,
                })
            })
            .collect();
        let lab = &self.t.lab;
        let records: Vec<pod::PodRecord> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .pods
                .iter()
                .map(|p| {
                    let node = PODS
                        .iter()
                        .find(|(name, _)| *name == p.name)
                        .map(|(_, node)| *node)
                        .unwrap_or("node-1");
                    let opts = AddOptions {
                        node: node.into(),
                        labels: [("pod".to_owned(), p.name.clone())].into(),
                        container_ports: container_ports.clone(),
                        serve: true,
                        ..Default::default()
                    };
                    scope.spawn(move || {
                        pod::add(lab, p, &opts).map_err(|e| format!("pod add {p}: {e}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("pod add panicked".into()))
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect()
        });
        for r in records {
            let ip = *r
                .ips
                .first()
                .unwrap_or_else(|| panic!("{} has no address", r.pod));
            self.ips.insert(r.pod.to_string(), ip);
        }
    }

    fn ip(&self, pod: &str) -> IpAddr {
        *self.ips.get(pod).unwrap_or_else(|| panic!("no pod {pod}"))
    }

    /// Every pod reaches every pod: the table cases start from.
    fn reach(&self) -> TruthTable {
        TruthTable::new(&self.names, true)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["kubectl"];
        all.extend_from_slice(args);
        let out = self.t.output(&mut self.t.cmd(&all));
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                text(&out.stderr).trim()
            ))
        }
    }

    /// A change to the cluster through kubectl; the time it returned starts [`SETTLE`].
    fn change(&mut self, args: &[&str]) -> Result<(), String> {
        let r = self.kubectl(args).map(|_| ());
        self.changed = Instant::now();
        r
    }

    /// `kubectl apply` of these objects (new ones created, existing ones updated).
    fn apply(&mut self, objects: &[Value]) -> Result<(), String> {
        self.applied += 1;
        let file: PathBuf = self
            .t
            .scratch()
            .join(format!("objects-{}.json", self.applied));
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(&file, list.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
        let path = file.display().to_string();
        self.change(&["apply", "-f", &path])
    }

    fn label_pod(&mut self, pod: &str, label: &str) -> Result<(), String> {
        let (ns, name) = pod.split_once('/').unwrap_or(("", pod));
        self.relabelled = true;
        self.change(&["label", "pod", "-n", ns, name, label, "--overwrite"])
    }

    fn label_namespace(&mut self, ns: &str, label: &str) -> Result<(), String> {
        self.relabelled = true;
        self.change(&["label", "namespace", ns, label, "--overwrite"])
    }

    /// Deletes every policy and puts back the labels the cases start from.
    fn reset(&mut self) -> Result<(), String> {
        self.change(&["delete", "networkpolicies", "--all", "--all-namespaces"])?;
        if !std::mem::take(&mut self.relabelled) {
            return Ok(());
        }
        let ns_list: Value = serde_json::from_str(&self.kubectl(&[
            "get",
            "namespaces",
            "x",
            "y",
            "z",
            "-o",
            "json",
        ])?)
        .map_err(|e| e.to_string())?;
        for item in ns_list["items"].as_array().into_iter().flatten() {
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let fix = relabel(&item["metadata"]["labels"], &[("ns", name)]);
            if !fix.is_empty() {
                let mut args = vec!["label", "namespace", name, "--overwrite"];
                args.extend(fix.iter().map(String::as_str));
                self.change(&args)?;
            }
        }
        for ns in NAMESPACES {
            let pods: Value =
                serde_json::from_str(&self.kubectl(&["get", "pods", "-n", ns, "-o", "json"])?)
                    .map_err(|e| e.to_string())?;
            for item in pods["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let fix = relabel(&item["metadata"]["labels"], &[("pod", name)]);
                if !fix.is_empty() {
                    let mut args = vec!["label", "pod", "-n", ns, name, "--overwrite"];
                    args.extend(fix.iter().map(String::as_str));
                    self.change(&args)?;
                }
            }
        }
        Ok(())
    }

    /// Probes every pair on `port`/`protocol` until the table matches `expected` (self cells
    /// always connect), for up to [`WAIT`].
    fn check(&self, port: u16, protocol: Protocol, expected: TruthTable) -> Result<(), String> {
        self.check_within(port, protocol, expected, self.wait)
    }

    fn check_within(
        &self,
        port: u16,
        protocol: Protocol,
        mut expected: TruthTable,
        wait: Duration,
    ) -> Result<(), String> {
        expected.allow_loopback();
        let start = Instant::now();
        let mut rounds = 0;
        loop {
            let settled = self.changed + SETTLE;
            let now = Instant::now();
            if now < settled {
                std::thread::sleep(settled - now);
            }
            let round = Instant::now();
            rounds += 1;
            let probed =
                probe::probe_matrix(&self.t.lab, &self.pods, port, protocol, PROBE_TIMEOUT)
                    .map_err(|e| format!("probing: {e}"))?;
            let Some(report) = matrix::compare(&expected, &probed) else {
                return Ok(());
            };
            if start.elapsed() >= wait {
                return Err(format!(
                    "port {port}/{protocol}: no match after {:.1}s ({rounds} rounds); last round:\n{report}",
                    start.elapsed().as_secs_f64()
                ));
            }
            // A round in which everything answered took no time: give the agents the CPU.
            let pause = Duration::from_millis(300).saturating_sub(round.elapsed());
            std::thread::sleep(pause);
        }
    }
}

/// The `kubectl label` arguments that turn `current` labels into exactly `want`.
fn relabel(current: &Value, want: &[(&str, &str)]) -> Vec<String> {
    let mut out: Vec<String> = current
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !want.iter().any(|(w, _)| w == k))
        .map(|(k, _)| format!("{k}-"))
        .collect();
    for (k, v) in want {
        if current.get(*k).and_then(Value::as_str) != Some(*v) {
            out.push(format!("{k}={v}"));
        }
    }
    out
}

// ---- the cases, in upstream's order ----

fn should_support_a_default_deny_ingress_policy(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(80, TCP, r)
}

fn should_support_a_default_deny_all_policy(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    n.check(80, TCP, r)
}

fn should_enforce_policy_to_allow_traffic_from_pods_within_server_namespace_based_on_pod_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "x-a-allows-x-b",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"podSelector": labels(&[("pod", "b")])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    n.check(80, TCP, r)
}

fn should_enforce_policy_to_allow_ingress_traffic_for_a_target(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[
        np(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        np(
            "x",
            "allow-all-to-a",
            json!({
                "podSelector": labels(&[("pod", "a")]),
                "ingress": [{"from": [{"podSelector": {}, "namespaceSelector": {}}]}],
                "policyTypes": ["Ingress"],
            }),
        ),
    ])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    r.expect_all_ingress("x/a", true);
    n.check(80, TCP, r)
}

fn should_enforce_policy_to_allow_ingress_traffic_from_pods_in_all_namespaces(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-from-another-ns",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {}}}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(80, TCP, n.reach())
}

fn should_enforce_policy_to_allow_traffic_only_from_a_different_namespace_based_on_namespace_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-client-a-via-ns-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"namespaceSelector": labels(&[("ns", "y")])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false);
    r.expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    n.check(80, TCP, r)
}

fn should_enforce_policy_based_on_pod_selector_with_match_expressions(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "x-a-allows-x-b",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"podSelector": expression("pod", "In", &["b"])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    n.check(80, TCP, r)
}

fn should_enforce_policy_based_on_namespace_selector_with_match_expressions(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-y-match-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"namespaceSelector": expression("ns", "In", &["y"])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false);
    r.expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    n.check(80, TCP, r)
}

/// Two peers in one rule: either one admits.
fn should_enforce_policy_based_on_pod_selector_or_namespace_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-y-match-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [
                {"namespaceSelector": expression("ns", "NotIn", &["x"])},
                {"podSelector": labels(&[("pod", "b")])},
            ]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect("x/c", "x/a", false);
    n.check(80, TCP, r)
}

/// Both selectors in one peer: a pod must match both.
fn should_enforce_policy_based_on_pod_selector_and_namespace_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-y-podselector-and-nsselector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{
                "namespaceSelector": expression("ns", "NotIn", &["x"]),
                "podSelector": labels(&[("pod", "b")]),
            }]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    r.expect("y/b", "x/a", true);
    r.expect("z/b", "x/a", true);
    n.check(80, TCP, r)
}

fn should_enforce_policy_based_on_multiple_pod_selectors_and_namespace_selectors(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-y-z-pod-b-c",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{
                "namespaceSelector": expression("ns", "NotIn", &["x"]),
                "podSelector": expression("pod", "In", &["b", "c"]),
            }]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false);
    r.expect("y/a", "x/a", false);
    r.expect("z/a", "x/a", false);
    n.check(80, TCP, r)
}

fn should_enforce_policy_based_on_any_pod_selectors(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-x-pod-b-c",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [
                {"podSelector": labels(&[("pod", "b")])},
                {"podSelector": labels(&[("pod", "c")])},
            ]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    r.expect("x/c", "x/a", true);
    n.check(80, TCP, r)
}

fn from_y_a_only(n: &mut Netpol, protocol: Protocol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-y-pod-a-via-namespace-pod-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{
                "namespaceSelector": labels(&[("ns", "y")]),
                "podSelector": labels(&[("pod", "a")]),
            }]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    r.expect("y/a", "x/a", true);
    n.check(80, protocol, r)
}

fn should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    from_y_a_only(n, TCP)
}

/// Ingress to x/a on port 81 (`protocol`) from namespace y only.
fn port_81_from_y(protocol: Protocol, name: &str) -> Value {
    np(
        "x",
        name,
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{
                "from": [{"namespaceSelector": labels(&[("ns", "y")])}],
                "ports": [{"port": 81, "protocol": protocol.kube_name()}],
            }],
            "policyTypes": ["Ingress"],
        }),
    )
}

fn only_y_reaches_x_a(n: &Netpol) -> TruthTable {
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::pod("x", "a"), false);
    r.expect_peer(Peer::ns("z"), Peer::pod("x", "a"), false);
    r
}

fn should_enforce_policy_based_on_ports(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[port_81_from_y(TCP, "allow-client-a-via-ns-selector")])?;
    n.check(81, TCP, only_y_reaches_x_a(n))
}

fn should_enforce_multiple_stacked_policies_with_overlapping_pod_selectors(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[port_81_from_y(TCP, "allow-client-a-via-ns-selector")])?;
    n.check(81, TCP, only_y_reaches_x_a(n))?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(80, TCP, r)?;
    n.apply(&[np(
        "x",
        "allow-client-a-via-ns-selector-80",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{
                "from": [{"namespaceSelector": labels(&[("ns", "y")])}],
                "ports": [{"port": 80, "protocol": "TCP"}],
            }],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(80, TCP, only_y_reaches_x_a(n))?;
    // The first policy still holds on its own port.
    n.check(81, TCP, only_y_reaches_x_a(n))
}

fn should_support_allow_all_policy(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}),
    )])?;
    n.check(80, TCP, n.reach())?;
    n.check(81, TCP, n.reach())
}

fn should_allow_ingress_access_on_one_named_port(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-all",
        json!({
            "podSelector": {},
            "ingress": [{"ports": [{"port": "serve-81-tcp"}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(81, TCP, n.reach())?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(80, TCP, r)
}

fn should_allow_ingress_access_from_namespace_on_one_named_port(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-client-a-via-ns-selector-80",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{
                "from": [{"namespaceSelector": labels(&[("ns", "y")])}],
                "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}],
            }],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(80, TCP, only_y_reaches_x_a(n))?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(81, TCP, r)
}

/// The named port is looked up on each destination pod, for egress too.
fn should_allow_egress_access_on_one_named_port(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-egress",
        json!({
            "podSelector": {},
            "egress": [{"ports": [{"port": "serve-80-tcp"}]}],
            "policyTypes": ["Egress"],
        }),
    )])?;
    n.check(80, TCP, n.reach())?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    n.check(81, TCP, r)
}

fn should_enforce_updated_policy(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-all-mutate-to-deny-all",
        json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}),
    )])?;
    n.check(81, TCP, n.reach())?;
    n.apply(&[np(
        "x",
        "allow-all-mutate-to-deny-all",
        json!({"podSelector": {}, "ingress": [], "policyTypes": ["Ingress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(81, TCP, r)
}

fn should_allow_ingress_access_from_updated_namespace(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-client-a-via-ns-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"namespaceSelector": labels(&[("ns2", "updated")])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(80, TCP, r.clone())?;
    n.label_namespace("y", "ns2=updated")?;
    r.expect_peer(Peer::ns("y"), Peer::pod("x", "a"), true);
    n.check(80, TCP, r)
}

fn should_allow_ingress_access_from_updated_pod(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-client-a-via-pod-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"podSelector": labels(&[("pod", "b"), ("pod2", "updated")])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(80, TCP, r.clone())?;
    n.label_pod("x/b", "pod2=updated")?;
    r.expect("x/b", "x/a", true);
    n.check(80, TCP, r)
}

fn should_deny_ingress_from_pods_on_other_namespaces(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-empty-policy",
        json!({
            "podSelector": {},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {}}}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("y"), Peer::ns("x"), false);
    r.expect_peer(Peer::ns("z"), Peer::ns("x"), false);
    n.check(80, TCP, r)
}

fn should_deny_ingress_access_to_updated_pod(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-ingress-via-label-selector",
        json!({
            "podSelector": labels(&[("target", "isolated")]),
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(80, TCP, n.reach())?;
    n.label_pod("x/a", "target=isolated")?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(80, TCP, r)
}

fn should_deny_egress_from_pods_based_on_pod_selector(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-egress-pod-a",
        json!({"podSelector": labels(&[("pod", "a")]), "policyTypes": ["Egress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_all_egress("x/a", false);
    n.check(80, TCP, r)
}

fn should_deny_egress_from_all_pods_in_a_namespace(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-egress-ns-x",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    n.check(80, TCP, r)
}

fn should_work_with_ingress_egress_specified_together(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-client-a-via-pod-selector",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"podSelector": labels(&[("pod", "b")])}]}],
            "egress": [{"ports": [{"port": 80}]}],
            "policyTypes": ["Egress", "Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    r.expect("x/b", "x/a", true);
    n.check(80, TCP, r.clone())?;
    r.expect_all_egress("x/a", false);
    n.check(81, TCP, r)
}

fn should_support_denying_of_egress_traffic_on_the_client_side_even_if_the_server_explicitly_allows_this_traffic(
    n: &mut Netpol,
) -> Result<(), String> {
    let from_x_a = json!({"from": [{
        "namespaceSelector": labels(&[("ns", "x")]),
        "podSelector": labels(&[("pod", "a")]),
    }]});
    n.apply(&[
        np(
            "x",
            "allow-to-ns-y-pod-a",
            json!({
                "podSelector": labels(&[("pod", "a")]),
                "egress": [{"to": [{
                    "namespaceSelector": labels(&[("ns", "y")]),
                    "podSelector": labels(&[("pod", "a")]),
                }]}],
                "policyTypes": ["Egress"],
            }),
        ),
        np(
            "y",
            "allow-from-xa-on-ya-match-selector",
            json!({
                "podSelector": labels(&[("pod", "a")]),
                "ingress": [from_x_a.clone()],
                "policyTypes": ["Ingress"],
            }),
        ),
        np(
            "y",
            "allow-from-xa-on-yb-match-selector",
            json!({
                "podSelector": labels(&[("pod", "b")]),
                "ingress": [from_x_a],
                "policyTypes": ["Ingress"],
            }),
        ),
    ])?;
    let mut r = n.reach();
    r.expect_all_egress("x/a", false);
    r.expect_all_ingress("y/a", false);
    r.expect("x/a", "y/a", true);
    // y/b admits x/a, but x/a may not send to it.
    r.expect_all_ingress("y/b", false);
    n.check(80, TCP, r)
}

fn should_enforce_egress_policy_allowing_traffic_to_a_server_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-to-ns-y-pod-a",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "egress": [{"to": [{
                "namespaceSelector": labels(&[("ns", "y")]),
                "podSelector": labels(&[("pod", "a")]),
            }]}],
            "policyTypes": ["Egress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_egress("x/a", false);
    r.expect("x/a", "y/a", true);
    n.check(80, TCP, r)
}

fn should_enforce_ingress_policy_allowing_any_port_traffic_to_a_server_on_a_specific_protocol(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ingress-by-proto",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"ports": [{"protocol": "TCP"}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(80, TCP, n.reach())?;
    n.check(81, TCP, n.reach())?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(80, UDP, r)
}

fn should_enforce_multiple_ingress_policies_with_ingress_allow_all_policy_taking_precedence(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ingress-port-80",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}], "policyTypes": ["Ingress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(81, TCP, r)?;
    n.apply(&[np(
        "x",
        "allow-ingress",
        json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}),
    )])?;
    n.check(81, TCP, n.reach())
}

fn should_enforce_multiple_egress_policies_with_egress_allow_all_policy_taking_precedence(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-egress-port-80",
        json!({"podSelector": {}, "egress": [{"ports": [{"port": 80}]}], "policyTypes": ["Egress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    n.check(81, TCP, r)?;
    n.apply(&[np(
        "x",
        "allow-egress",
        json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}),
    )])?;
    n.check(81, TCP, n.reach())
}

fn should_stop_enforcing_policies_after_they_are_deleted(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::ns("x"), Peer::any(), false);
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(80, TCP, r)?;
    n.change(&["delete", "networkpolicies", "--all", "-n", "x"])?;
    n.check(80, TCP, n.reach())
}

/// `addr/32`.
fn host_cidr(ip: IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
}

/// A large block around `ip` (upstream's makeLargeCIDRForIP: the /4 holding it).
fn large_cidr(ip: IpAddr) -> String {
    ipnet::IpNet::new(ip, if ip.is_ipv4() { 4 } else { 16 })
        .map(|n| n.trunc().to_string())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn should_allow_egress_access_to_server_in_cidr_block(n: &mut Netpol) -> Result<(), String> {
    let y_b = host_cidr(n.ip("y/b"));
    n.apply(&[np(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "egress": [{"to": [{"ipBlock": {"cidr": y_b}}]}],
            "policyTypes": ["Egress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_egress("x/a", false);
    r.expect("x/a", "y/b", true);
    n.check(80, TCP, r)
}

/// Egress from x/a to a block holding every pod, except x/b.
fn except_x_b(n: &Netpol) -> Value {
    let x_b = n.ip("x/b");
    np(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "egress": [{"to": [{"ipBlock": {"cidr": large_cidr(x_b), "except": [host_cidr(x_b)]}}]}],
            "policyTypes": ["Egress"],
        }),
    )
}

fn should_enforce_except_clause_while_egress_access_to_server_in_cidr_block(
    n: &mut Netpol,
) -> Result<(), String> {
    let policy = except_x_b(n);
    n.apply(&[policy])?;
    let mut r = n.reach();
    r.expect("x/a", "x/b", false);
    n.check(80, TCP, r)
}

/// An address in both a block and its `except` is excluded by that peer, and allowed as soon
/// as another peer (here another policy) admits it: policies add up.
fn should_ensure_an_ip_overlapping_both_ip_block_cidr_and_ip_block_except_is_allowed(
    n: &mut Netpol,
) -> Result<(), String> {
    let policy = except_x_b(n);
    n.apply(&[policy])?;
    let mut r = n.reach();
    r.expect("x/a", "x/b", false);
    n.check(80, TCP, r)?;
    let x_b = host_cidr(n.ip("x/b"));
    n.apply(&[np(
        "x",
        "allow-client-a-to-x-b",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "egress": [{"to": [{"ipBlock": {"cidr": x_b}}]}],
            "policyTypes": ["Egress"],
        }),
    )])?;
    n.check(80, TCP, n.reach())?;
    // Upstream's last step: the first policy now allows only x/b.
    n.change(&[
        "delete",
        "networkpolicy",
        "-n",
        "x",
        "allow-client-a-to-x-b",
    ])?;
    n.apply(&[np(
        "x",
        "allow-client-a-via-cidr-egress-rule",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "egress": [{"to": [{"ipBlock": {"cidr": x_b}}]}],
            "policyTypes": ["Egress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_egress("x/a", false);
    r.expect("x/a", "x/b", true);
    n.check(80, TCP, r)
}

fn should_enforce_policies_to_check_ingress_and_egress_policies_can_be_controlled_independently_based_on_pod_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-egress-for-target",
        json!({"podSelector": labels(&[("pod", "a")]), "egress": [{}], "policyTypes": ["Egress"]}),
    )])?;
    n.check(80, TCP, n.reach())?;
    n.apply(&[np(
        "x",
        "deny-ingress-via-label-selector",
        json!({"podSelector": labels(&[("pod", "a")]), "policyTypes": ["Ingress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(80, TCP, r)
}

fn should_not_mistakenly_treat_protocol_sctp_as_protocol_tcp_even_if_the_plugin_doesnt_support_sctp(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[
        np(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        np(
            "x",
            "allow-only-sctp-ingress-on-port-81",
            json!({
                "podSelector": labels(&[("pod", "a")]),
                "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}],
                "policyTypes": ["Ingress"],
            }),
        ),
    ])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(81, TCP, r)
}

fn should_properly_isolate_pods_that_are_selected_by_a_policy_allowing_sctp_even_if_the_plugin_doesnt_support_sctp(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-only-sctp-ingress-on-port-80",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(81, TCP, r)
}

fn should_not_allow_access_by_tcp_when_a_policy_specifies_only_udp(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-only-udp-ingress-on-port-81",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(81, TCP, r)?;
    // And UDP on that port is what it does allow, from everywhere.
    n.check(81, UDP, n.reach())
}

fn should_enforce_policy_to_allow_traffic_based_on_namespace_selector_with_match_labels_using_default_ns_label(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-client-a-via-ns-selector-for-immutable-ns-label",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "ingress": [{"from": [{"namespaceSelector": labels(&[("kubernetes.io/metadata.name", "y")])}]}],
            "policyTypes": ["Ingress"],
        }),
    )])?;
    n.check(80, TCP, only_y_reaches_x_a(n))
}

fn should_enforce_policy_based_on_namespace_selector_with_match_expressions_using_default_ns_label(
    n: &mut Netpol,
) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "allow-ns-y-match-selector-for-immutable-ns-label",
        json!({
            "podSelector": labels(&[("pod", "a")]),
            "egress": [{"to": [{"namespaceSelector": expression("kubernetes.io/metadata.name", "NotIn", &["y"])}]}],
            "policyTypes": ["Egress"],
        }),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::pod("x", "a"), Peer::ns("y"), false);
    n.check(80, TCP, r)
}

fn udp_should_support_a_default_deny_ingress_policy(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[np(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )])?;
    let mut r = n.reach();
    r.expect_peer(Peer::any(), Peer::ns("x"), false);
    n.check(80, UDP, r)
}

fn udp_should_enforce_policy_based_on_ports(n: &mut Netpol) -> Result<(), String> {
    n.apply(&[port_81_from_y(UDP, "allow-ingress-on-port-81-ns-x")])?;
    n.check(81, UDP, only_y_reaches_x_a(n))?;
    // The rule names UDP: TCP on the same port stays closed to everyone.
    let mut r = n.reach();
    r.expect_all_ingress("x/a", false);
    n.check(81, TCP, r)
}

fn udp_should_enforce_policy_to_allow_traffic_only_from_a_pod_in_a_different_namespace_based_on_pod_selector_and_namespace_selector(
    n: &mut Netpol,
) -> Result<(), String> {
    from_y_a_only(n, UDP)
}

#[test]
fn relabel_computes_the_kubectl_label_arguments() {
    let current = json!({"pod": "a", "pod2": "updated"});
    assert_eq!(relabel(&current, &[("pod", "a")]), vec!["pod2-"]);
    let wrong = json!({"pod": "b"});
    assert_eq!(relabel(&wrong, &[("pod", "a")]), vec!["pod=a"]);
    assert_eq!(relabel(&Value::Null, &[("ns", "x")]), vec!["ns=x"]);
    assert!(relabel(&json!({"ns": "x"}), &[("ns", "x")]).is_empty());
}
