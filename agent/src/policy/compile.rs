//! The policy compiler (docs/policy.md): a pure function from [`PolicyInput`] to the
//! [`Dataplane`] of one address family ([`compile`]; [`Incremental`] gives the same output
//! while keeping what it computed last, for the owner task's stream of changes), and the
//! fail-closed dataplane the owner task falls back to when applying keeps failing.
//!
//! Whatever the input gets wrong (an unknown operator, a bad CIDR, an unknown protocol), the
//! part it touches matches nothing, so a mistake never opens traffic, and a warning naming
//! the policy or the pod says what was left out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha1::{Digest, Sha1};

use super::model::{
    Dataplane, Family, Hook, IpSet, Labels, NAMESPACE_NAME_LABEL, Pod, PolicyInput, Pool, Protocol,
    SetKind, Table,
};
use super::selector::Selector;

const FORWARD: &str = "tort-FORWARD";
const FROM_WL: &str = "tort-from-wl";
const TO_WL: &str = "tort-to-wl";
const POSTROUTING: &str = "tort-POSTROUTING";

/// Bit 0x10000 of the packet mark says "a rule of the policy just run allows this packet".
const SET_ALLOWED: &str = "-j MARK --set-xmark 0x10000/0x10000";
const CLEAR_ALLOWED: &str = "-j MARK --set-xmark 0x0/0x10000";
const RETURN_IF_ALLOWED: &str = "-m mark --mark 0x10000/0x10000 -j RETURN";

/// What [`compile`] produces for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub dataplane: Dataplane,
    /// What each policy chain and ipset stands for (`ingress of NetworkPolicy prod/web`,
    /// the text its name is hashed from), for logs and golden files.
    pub meanings: BTreeMap<String, String>,
    /// What was wrong in the input and has been left out, each naming its policy or pod.
    pub warnings: Vec<String>,
}

/// The dataplane of `family` for `input`: every local pod's endpoint chains, the chains of
/// the policies selecting them, the sets those use, and NAT outgoing.
pub fn compile(input: &PolicyInput, family: Family) -> Compiled {
    Incremental::new(family).compile(input)
}

/// First in `tort-FORWARD`, in the real dataplane and the fail-closed one alike: invalid
/// packets go, replies of connections already allowed pass.
const CONNTRACK: [&str; 2] = [
    "-m conntrack --ctstate INVALID -j DROP",
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
];

/// Forwarding to and from pods stops except in established connections; nothing depends on
/// ipset. For when the real dataplane cannot be applied: pods are never left open.
pub fn fail_closed(family: Family) -> Dataplane {
    let rules = CONNTRACK
        .iter()
        .chain(&["-i tort+ -j DROP", "-o tort+ -j DROP"])
        .map(|r| r.to_string())
        .collect();
    Dataplane {
        family: Some(family),
        ipsets: BTreeMap::new(),
        chains: BTreeMap::from([((Table::Filter, FORWARD.to_string()), rules)]),
        hooks: vec![forward_hook()],
    }
}

fn forward_hook() -> Hook {
    Hook {
        table: Table::Filter,
        builtin: "FORWARD".into(),
        chain: FORWARD.into(),
    }
}

/// A pod's chain for one direction. Not isolated (`None`): empty, so the packet returns to
/// `tort-FORWARD` and is allowed. Isolated: each policy gets the packet with the mark
/// cleared and returns it marked if one of its rules allows it; nothing allowing it drops.
fn endpoint_rules(policies: Option<&[String]>) -> Vec<String> {
    let Some(policies) = policies else {
        return Vec::new();
    };
    let mut rules = vec![CLEAR_ALLOWED.to_string()];
    for policy in policies {
        rules.push(format!("-j {policy}"));
        rules.push(RETURN_IF_ALLOWED.to_string());
    }
    rules.push("-j DROP".to_string());
    rules
}

/// `tort-FORWARD` and the chains sending each local interface's packets to its own.
fn dispatch_chains<'i>(
    ifnames: impl Iterator<Item = &'i str> + Clone,
) -> [((Table, String), Vec<String>); 3] {
    let dispatch = |flag: &str, direction: Direction| {
        let mut rules: Vec<String> = ifnames
            .clone()
            .map(|ifname| format!("{flag} {ifname} -g {}", direction.endpoint_chain(ifname)))
            .collect();
        // An interface without chains (not wired yet, or a bad name) is never forwarded.
        rules.push("-j DROP".to_string());
        rules
    };
    let forward = CONNTRACK.iter().chain(&[
        "-i tort+ -j tort-from-wl",
        "-o tort+ -j tort-to-wl",
        "-i tort+ -j ACCEPT",
        "-o tort+ -j ACCEPT",
    ]);
    [
        (
            (Table::Filter, FORWARD.to_string()),
            forward.map(|r| r.to_string()).collect(),
        ),
        (
            (Table::Filter, FROM_WL.to_string()),
            dispatch("-i", Direction::Egress),
        ),
        (
            (Table::Filter, TO_WL.to_string()),
            dispatch("-o", Direction::Ingress),
        ),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn policy_chain(self, id: &str) -> String {
        match self {
            Direction::Ingress => format!("tort-pi-{id}"),
            Direction::Egress => format!("tort-pe-{id}"),
        }
    }

    /// The pod's own chain: `tw` (to the workload) is its ingress, `fw` its egress.
    fn endpoint_chain(self, ifname: &str) -> String {
        match self {
            Direction::Ingress => format!("tort-tw-{ifname}"),
            Direction::Egress => format!("tort-fw-{ifname}"),
        }
    }

    /// Where the peer is in the packet: the source of what comes in, the destination of
    /// what goes out.
    fn peer_side(self) -> &'static str {
        match self {
            Direction::Ingress => "src",
            Direction::Egress => "dst",
        }
    }

    fn rules_field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    fn peers_field(self) -> &'static str {
        match self {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        }
    }
}

/// One rule of a policy, either direction: `None` or empty peers (ports) mean all.
struct Rule<'a> {
    peers: Option<&'a [NetworkPolicyPeer]>,
    ports: Option<&'a [NetworkPolicyPort]>,
}

struct PolicyRef<'a> {
    namespace: &'a str,
    name: &'a str,
    policy: &'a Arc<NetworkPolicy>,
}

impl PolicyRef<'_> {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone)]
enum Namespaces {
    /// The policy's own (a peer with only `podSelector`).
    Own(String),
    Selected(Selector),
}

/// Where a set's members come from.
#[derive(Debug, Clone)]
enum SetSource {
    /// The addresses of the pods a peer selects.
    Pods {
        namespaces: Namespaces,
        pods: Selector,
    },
    /// `address,proto:number` of every pod with a container port of this name.
    NamedPort { name: String, protocol: Protocol },
    /// Members that follow from the policy alone (an ipBlock).
    Fixed(BTreeSet<String>),
}

impl SetSource {
    /// Whether `pod` adds members to the set (in any family): a set no changed pod
    /// touches keeps its members.
    fn touches(&self, pod: &Pod, namespace_labels: &BTreeMap<String, Labels>) -> bool {
        match self {
            SetSource::Pods { namespaces, pods } => {
                let in_scope = match namespaces {
                    Namespaces::Own(name) => pod.namespace == *name,
                    Namespaces::Selected(selector) => namespace_labels
                        .get(&pod.namespace)
                        .is_some_and(|labels| selector.matches(labels)),
                };
                in_scope && pods.matches(&pod.labels)
            }
            SetSource::NamedPort { name, protocol } => pod
                .named_ports
                .iter()
                .any(|port| port.name == *name && port.protocol == *protocol),
            SetSource::Fixed(_) => false,
        }
    }

    fn members(
        &self,
        pods: &[&Pod],
        namespace_labels: &BTreeMap<String, Labels>,
        family: Family,
    ) -> BTreeSet<String> {
        let mut members = BTreeSet::new();
        match self {
            SetSource::Fixed(fixed) => members.clone_from(fixed),
            SetSource::Pods { .. } => {
                for pod in pods.iter().filter(|p| self.touches(p, namespace_labels)) {
                    members.extend(family_ips(pod, family).map(|ip| ip.to_string()));
                }
            }
            SetSource::NamedPort { name, protocol } => {
                for pod in pods {
                    for port in &pod.named_ports {
                        if port.name == *name && port.protocol == *protocol {
                            members.extend(
                                family_ips(pod, family)
                                    .map(|ip| format!("{ip},{protocol}:{}", port.port)),
                            );
                        }
                    }
                }
            }
        }
        members
    }
}

/// A set a policy's rules match on: its name (a hash of its meaning) and where its
/// members come from.
#[derive(Debug, Clone)]
struct SetRequest {
    name: String,
    meaning: String,
    kind: SetKind,
    source: SetSource,
}

/// What a policy compiles to on its own, whatever the pods: its chains and the sets they
/// name. Members are filled in later, from the pods.
#[derive(Debug)]
struct PolicyBody {
    /// Per direction it isolates: the chain, what it stands for, and its rules.
    chains: Vec<(Direction, String, String, Vec<String>)>,
    sets: Vec<SetRequest>,
    warnings: Vec<String>,
}

/// A policy as last compiled.
#[derive(Debug)]
struct CachedPolicy {
    policy: Arc<NetworkPolicy>,
    /// The pods it selects (an invalid `spec.podSelector` selects the whole namespace).
    targets: Selector,
    targets_warning: Option<String>,
    /// Compiled the first time the policy selects a local pod: until then its rules'
    /// warnings are not reported either.
    body: Option<PolicyBody>,
}

impl CachedPolicy {
    fn new(policy: &PolicyRef<'_>) -> CachedPolicy {
        let default_spec = NetworkPolicySpec::default();
        let spec = policy.policy.spec.as_ref().unwrap_or(&default_spec);
        let (targets, targets_warning) = match spec
            .pod_selector
            .as_ref()
            .map(Selector::parse)
            .transpose()
        {
            Ok(selector) => (selector.unwrap_or_default(), None),
            // Selecting nothing would leave the pods the author meant to isolate
            // open; isolating the whole namespace keeps to failing closed.
            Err(e) => (
                Selector::default(),
                Some(format!(
                    "NetworkPolicy {}: spec.podSelector: {e}; the policy selects every pod of namespace {}",
                    policy.key(),
                    policy.namespace
                )),
            ),
        };
        CachedPolicy {
            policy: Arc::clone(policy.policy),
            targets,
            targets_warning,
            body: None,
        }
    }

    /// Still what `policy` compiles to.
    fn is_for(&self, policy: &Arc<NetworkPolicy>) -> bool {
        Arc::ptr_eq(&self.policy, policy) || *self.policy == **policy
    }
}

/// A set as last computed, with what it was computed from.
#[derive(Debug)]
struct CachedSet {
    source: SetSource,
    set: IpSet,
}

/// The compiler of one family, keeping what it compiled last so that the next input
/// costs only what changed: a policy that is the same object (or equal) keeps its chains
/// and set requests; a set keeps its members unless a pod that was or is in it changed,
/// or a namespace's labels did. [`compile`] is this with nothing kept, and the output is
/// the same either way (tested against it over random change sequences).
#[derive(Debug)]
pub struct Incremental {
    family: Family,
    policies: BTreeMap<(String, String), CachedPolicy>,
    sets: BTreeMap<String, CachedSet>,
    /// The pods (sorted by namespace/name) and namespace labels `sets` were computed from.
    pods: Vec<Pod>,
    namespace_labels: BTreeMap<String, Labels>,
}

impl Incremental {
    pub fn new(family: Family) -> Incremental {
        Incremental {
            family,
            policies: BTreeMap::new(),
            sets: BTreeMap::new(),
            pods: Vec::new(),
            namespace_labels: BTreeMap::new(),
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The dataplane for `input`: exactly what [`compile`] gives.
    pub fn compile(&mut self, input: &PolicyInput) -> Compiled {
        let family = self.family;
        let mut warnings = Vec::new();
        let namespace_labels = namespace_labels(input);
        // Sorted by namespace/name, so warnings come out in the same order whatever the
        // input's.
        let mut pods: Vec<&Pod> = input.pods.iter().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.forget_touched_sets(&pods, namespace_labels);

        let local = local_pods(&pods, &mut warnings);
        let mut local_by_namespace: BTreeMap<&str, Vec<(&str, &Pod)>> = BTreeMap::new();
        for (ifname, pod) in &local {
            local_by_namespace
                .entry(pod.namespace.as_str())
                .or_default()
                .push((ifname, pod));
        }
        let policies = sorted_policies(input, &mut warnings);

        let mut chains = BTreeMap::new();
        let mut ipsets = BTreeMap::new();
        let mut meanings = BTreeMap::new();
        // Per direction and local interface, the policy chains to run in namespace/name order.
        let mut isolated: BTreeMap<(Direction, &str), Vec<String>> = BTreeMap::new();
        let mut sets_used: BTreeMap<String, CachedSet> = BTreeMap::new();
        let mut policies_seen = BTreeMap::new();
        for policy in &policies {
            let key = (policy.namespace.to_owned(), policy.name.to_owned());
            let mut cached = match self.policies.remove(&key) {
                Some(cached) if cached.is_for(policy.policy) => cached,
                _ => CachedPolicy::new(policy),
            };
            warnings.extend(cached.targets_warning.iter().cloned());
            let selected: Vec<&str> = local_by_namespace
                .get(policy.namespace)
                .into_iter()
                .flatten()
                .filter(|(_, pod)| cached.targets.matches(&pod.labels))
                .map(|(ifname, _)| *ifname)
                .collect();
            if !selected.is_empty() {
                let body = cached
                    .body
                    .get_or_insert_with(|| PolicyCompiler::body(policy, family));
                warnings.extend(body.warnings.iter().cloned());
                for (direction, chain, meaning, rules) in &body.chains {
                    meanings.insert(chain.clone(), meaning.clone());
                    chains.insert((Table::Filter, chain.clone()), rules.clone());
                    for ifname in &selected {
                        isolated
                            .entry((*direction, *ifname))
                            .or_default()
                            .push(chain.clone());
                    }
                }
                for request in &body.sets {
                    if ipsets.contains_key(&request.name) {
                        continue;
                    }
                    let cached_set = match self.sets.remove(&request.name) {
                        Some(set) => set,
                        None => CachedSet {
                            set: IpSet {
                                kind: request.kind,
                                members: request.source.members(
                                    &pods,
                                    &self.namespace_labels,
                                    family,
                                ),
                            },
                            source: request.source.clone(),
                        },
                    };
                    ipsets.insert(request.name.clone(), cached_set.set.clone());
                    meanings.insert(request.name.clone(), request.meaning.clone());
                    sets_used.insert(request.name.clone(), cached_set);
                }
            }
            policies_seen.insert(key, cached);
        }
        // What no policy uses any more is forgotten with the rest of the old state.
        self.policies = policies_seen;
        self.sets = sets_used;

        for ifname in local.keys() {
            for direction in [Direction::Ingress, Direction::Egress] {
                let policies = isolated.get(&(direction, *ifname)).map(Vec::as_slice);
                chains.insert(
                    (Table::Filter, direction.endpoint_chain(ifname)),
                    endpoint_rules(policies),
                );
            }
        }
        chains.extend(dispatch_chains(local.keys().copied()));
        chains.insert(
            (Table::Nat, POSTROUTING.to_string()),
            nat_outgoing(&input.pools, family, &mut ipsets, &mut meanings),
        );
        Compiled {
            dataplane: Dataplane {
                family: Some(family),
                ipsets,
                chains,
                hooks: vec![
                    forward_hook(),
                    Hook {
                        table: Table::Nat,
                        builtin: "POSTROUTING".into(),
                        chain: POSTROUTING.into(),
                    },
                ],
            },
            meanings,
            warnings,
        }
    }

    /// Forgets the members of every set a changed pod was or is in (all of them when a
    /// namespace's labels changed), and remembers `pods` and `namespace_labels` as what
    /// the remaining ones were computed from.
    fn forget_touched_sets(&mut self, pods: &[&Pod], namespace_labels: BTreeMap<String, Labels>) {
        let unchanged =
            self.pods.len() == pods.len() && self.pods.iter().zip(pods).all(|(a, b)| a == *b);
        if namespace_labels != self.namespace_labels {
            self.sets.clear();
        } else if !unchanged {
            let touched = changed_pods(&self.pods, pods);
            self.sets.retain(|_, set| {
                !touched
                    .iter()
                    .any(|pod| set.source.touches(pod, &namespace_labels))
            });
        }
        self.namespace_labels = namespace_labels;
        if !unchanged {
            self.pods = pods.iter().map(|pod| (*pod).clone()).collect();
        }
    }
}

/// The pods of every namespace/name whose pods differ between `old` and `new` (both
/// sorted by namespace/name), from both sides.
fn changed_pods<'p>(old: &'p [Pod], new: &[&'p Pod]) -> Vec<&'p Pod> {
    type Sides<'p> = (Vec<&'p Pod>, Vec<&'p Pod>);
    let mut by_name: BTreeMap<(&str, &str), Sides<'p>> = BTreeMap::new();
    for pod in old {
        by_name
            .entry((&pod.namespace, &pod.name))
            .or_default()
            .0
            .push(pod);
    }
    for pod in new {
        by_name
            .entry((&pod.namespace, &pod.name))
            .or_default()
            .1
            .push(pod);
    }
    by_name
        .into_values()
        .filter(|(before, after)| before != after)
        .flat_map(|(before, after)| before.into_iter().chain(after))
        .collect()
}

/// The labels namespace selectors see: each namespace's own plus its name label, which is
/// all a namespace of a pod but not in the input has.
fn namespace_labels(input: &PolicyInput) -> BTreeMap<String, Labels> {
    let mut namespace_labels = BTreeMap::new();
    for ns in &input.namespaces {
        let mut labels = ns.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.name.clone());
        namespace_labels.insert(ns.name.clone(), labels);
    }
    for pod in &input.pods {
        if !namespace_labels.contains_key(&pod.namespace) {
            namespace_labels.insert(
                pod.namespace.clone(),
                Labels::from([(NAMESPACE_NAME_LABEL.to_string(), pod.namespace.clone())]),
            );
        }
    }
    namespace_labels
}

/// The pods on this node, by host interface. A pod whose interface tortie cannot police
/// gets no chains, so `tort-from-wl`/`tort-to-wl` drop its traffic.
fn local_pods<'a>(pods: &[&'a Pod], warnings: &mut Vec<String>) -> BTreeMap<&'a str, &'a Pod> {
    let mut by_ifname: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in pods {
        let Some(ifname) = pod.host_ifname.as_deref() else {
            continue;
        };
        if is_tort_ifname(ifname) {
            by_ifname.entry(ifname).or_default().push(pod);
        } else {
            warnings.push(format!(
                "pod {}/{}: host interface {ifname:?} is not tort followed by at most 11 \
                 letters, digits, '-', '_' or '.'; the pod gets no chains",
                pod.namespace, pod.name
            ));
        }
    }
    let mut local = BTreeMap::new();
    for (ifname, pods) in by_ifname {
        match pods.as_slice() {
            [pod] => {
                local.insert(ifname, *pod);
            }
            _ => {
                // Which pod the interface belongs to is unknown: neither gets its
                // policies, and tort-from-wl/tort-to-wl drop the interface's traffic.
                let names: Vec<String> = pods
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect();
                warnings.push(format!(
                    "pods {} share host interface {ifname}; it gets no chains until one is gone",
                    names.join(", ")
                ));
            }
        }
    }
    local
}

/// The policies sorted by namespace/name; one without either is left out, as is a
/// second with the same namespace/name.
fn sorted_policies<'a>(input: &'a PolicyInput, warnings: &mut Vec<String>) -> Vec<PolicyRef<'a>> {
    let mut policies = Vec::new();
    for policy in &input.policies {
        let meta = &policy.metadata;
        match (meta.namespace.as_deref(), meta.name.as_deref()) {
            (Some(namespace), Some(name)) => policies.push(PolicyRef {
                namespace,
                name,
                policy,
            }),
            (namespace, name) => warnings.push(format!(
                "a NetworkPolicy without a namespace or name (namespace {namespace:?}, name {name:?}) is left out"
            )),
        }
    }
    policies.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
    policies.dedup_by(|later, first| {
        let same = (later.namespace, later.name) == (first.namespace, first.name);
        if same {
            warnings.push(format!(
                "NetworkPolicy {}: listed twice; the second is left out",
                later.key()
            ));
        }
        same
    });
    policies
}

/// Compiles one policy's chains, naming the sets they use.
struct PolicyCompiler {
    key: String,
    family: Family,
    sets: Vec<SetRequest>,
    warnings: Vec<String>,
}

impl PolicyCompiler {
    fn body(policy: &PolicyRef<'_>, family: Family) -> PolicyBody {
        let mut compiler = PolicyCompiler {
            key: policy.key(),
            family,
            sets: Vec::new(),
            warnings: Vec::new(),
        };
        let default_spec = NetworkPolicySpec::default();
        let spec = policy.policy.spec.as_ref().unwrap_or(&default_spec);
        let id = hash16(&compiler.key);
        let mut chains = Vec::new();
        for (direction, rules) in compiler.directions(spec) {
            let chain = direction.policy_chain(&id);
            let rules = compiler.policy_rules(policy.namespace, direction, &rules);
            let meaning = format!(
                "{} of NetworkPolicy {}",
                direction.rules_field(),
                compiler.key
            );
            chains.push((direction, chain, meaning, rules));
        }
        PolicyBody {
            chains,
            sets: compiler.sets,
            warnings: compiler.warnings,
        }
    }

    fn warn(&mut self, message: String) {
        self.warnings
            .push(format!("NetworkPolicy {}: {message}", self.key));
    }

    /// The directions the policy isolates, with their rules. `policyTypes` defaults as in
    /// the apiserver: `Ingress`, plus `Egress` when `spec.egress` has a rule.
    fn directions<'s>(&mut self, spec: &'s NetworkPolicySpec) -> Vec<(Direction, Vec<Rule<'s>>)> {
        let (ingress, egress) = match spec.policy_types.as_deref() {
            None | Some([]) => (
                true,
                spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
            ),
            Some(types) => {
                let (mut ingress, mut egress) = (false, false);
                for t in types {
                    match t.as_str() {
                        "Ingress" => ingress = true,
                        "Egress" => egress = true,
                        other => self.warn(format!(
                            "spec.policyTypes: {other:?} is neither Ingress nor Egress; left out"
                        )),
                    }
                }
                (ingress, egress)
            }
        };
        let mut directions = Vec::new();
        if ingress {
            let rules = spec.ingress.iter().flatten().map(|r| Rule {
                peers: r.from.as_deref(),
                ports: r.ports.as_deref(),
            });
            directions.push((Direction::Ingress, rules.collect()));
        }
        if egress {
            let rules = spec.egress.iter().flatten().map(|r| Rule {
                peers: r.to.as_deref(),
                ports: r.ports.as_deref(),
            });
            directions.push((Direction::Egress, rules.collect()));
        }
        directions
    }

    /// A policy chain: one rule per (peer, port) of each policy rule, each setting the mark.
    /// No rules (`ingress: []`): the chain sets nothing and the pod's chain drops.
    fn policy_rules(
        &mut self,
        namespace: &str,
        direction: Direction,
        rules: &[Rule<'_>],
    ) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{}[{i}]", direction.rules_field());
            // An empty string matches everything; an empty list matches nothing.
            let peers = match rule.peers {
                None | Some([]) => vec![String::new()],
                Some(peers) => {
                    let mut matches = Vec::new();
                    for (j, peer) in peers.iter().enumerate() {
                        let at = format!("{at}.{}[{j}]", direction.peers_field());
                        matches.extend(self.peer_match(namespace, direction, peer, &at));
                    }
                    matches
                }
            };
            let ports = match rule.ports {
                None | Some([]) => vec![String::new()],
                Some(ports) => {
                    let mut matches = Vec::new();
                    for (j, port) in ports.iter().enumerate() {
                        matches.extend(self.port_match(port, &format!("{at}.ports[{j}]")));
                    }
                    matches
                }
            };
            for peer in &peers {
                for port in &ports {
                    let rule = [peer.as_str(), port.as_str(), SET_ALLOWED]
                        .into_iter()
                        .filter(|part| !part.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ");
                    if !out.contains(&rule) {
                        out.push(rule);
                    }
                }
            }
        }
        out
    }

    /// The match for one peer, or `None` when it matches nothing in this family.
    fn peer_match(
        &mut self,
        namespace: &str,
        direction: Direction,
        peer: &NetworkPolicyPeer,
        at: &str,
    ) -> Option<String> {
        let set = match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
            (Some(block), None, None) => self.ip_block_set(block, at)?,
            (None, None, None) => {
                self.warn(format!(
                    "{at}: no podSelector, namespaceSelector or ipBlock; the peer matches nothing"
                ));
                return None;
            }
            (Some(_), _, _) => {
                self.warn(format!(
                    "{at}: ipBlock goes with neither podSelector nor namespaceSelector; the peer matches nothing"
                ));
                return None;
            }
            (None, namespaces, pods) => {
                let pods = self.selector(pods.as_ref(), &format!("{at}.podSelector"))?;
                let namespaces = match namespaces {
                    None => Namespaces::Own(namespace.to_owned()),
                    Some(selector) => Namespaces::Selected(
                        self.selector(Some(selector), &format!("{at}.namespaceSelector"))?,
                    ),
                };
                self.pod_set(namespaces, pods)
            }
        };
        Some(format!(
            "-m set --match-set {set} {}",
            direction.peer_side()
        ))
    }

    /// `None` (absent) selects everything; an invalid selector is reported and matches nothing.
    fn selector(&mut self, selector: Option<&LabelSelector>, at: &str) -> Option<Selector> {
        match selector.map(Selector::parse).transpose() {
            Ok(selector) => Some(selector.unwrap_or_default()),
            Err(e) => {
                self.warn(format!("{at}: {e}; the peer matches nothing"));
                None
            }
        }
    }

    fn pod_set(&mut self, namespaces: Namespaces, pods: Selector) -> String {
        let scope = match &namespaces {
            Namespaces::Own(name) => format!("namespace={}", quote(name)),
            Namespaces::Selected(selector) => format!("namespaces=[{selector}]"),
        };
        let meaning = format!("pods {} {scope} pods=[{pods}]", family_name(self.family));
        self.request(
            meaning,
            SetKind::HashIp,
            SetSource::Pods { namespaces, pods },
        )
    }

    /// The `hash:net` set of an ipBlock, or `None` when the block is of the other family,
    /// fully excepted, or does not parse (then with a warning).
    fn ip_block_set(&mut self, block: &IPBlock, at: &str) -> Option<String> {
        let cidr = match block.cidr.parse::<IpNet>() {
            Ok(cidr) => cidr.trunc(),
            Err(e) => {
                let cidr = &block.cidr;
                self.warn(format!(
                    "{at}.ipBlock.cidr {cidr:?}: {e}; the peer matches nothing"
                ));
                return None;
            }
        };
        if family_of_net(&cidr) != self.family {
            return None;
        }
        // net -> is it a `nomatch` hole. ipset finds the longest prefix first, so a hole
        // inside the block wins over it.
        let mut nets: BTreeMap<IpNet, bool> =
            storable(cidr).into_iter().map(|net| (net, false)).collect();
        for (k, except) in block.except.iter().flatten().enumerate() {
            let except = match except.parse::<IpNet>() {
                Ok(except) => except.trunc(),
                Err(e) => {
                    // Leaving the hole out would allow what the author excepted.
                    self.warn(format!(
                        "{at}.ipBlock.except[{k}] {except:?}: {e}; the peer matches nothing"
                    ));
                    return None;
                }
            };
            for hole in storable(except) {
                // Parts of the block the hole covers go, with the holes inside them; a hole
                // outside the block (or of the other family) changes nothing.
                nets.retain(|net, _| !hole.contains(net));
                let in_block = nets
                    .iter()
                    .any(|(net, nomatch)| !nomatch && net.contains(&hole));
                let in_hole = nets
                    .iter()
                    .any(|(net, nomatch)| *nomatch && net.contains(&hole));
                if in_block && !in_hole {
                    nets.insert(hole, true);
                }
            }
        }
        if nets.values().all(|nomatch| *nomatch) {
            return None;
        }
        let members: BTreeSet<String> = nets
            .iter()
            .map(|(net, nomatch)| {
                if *nomatch {
                    format!("{} nomatch", net_member(net))
                } else {
                    net_member(net)
                }
            })
            .collect();
        let meaning = format!(
            "nets {} [{}]",
            family_name(self.family),
            members
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(",")
        );
        Some(self.request(meaning, SetKind::HashNet, SetSource::Fixed(members)))
    }

    /// The match for one port entry, or `None` when it matches nothing (with a warning).
    fn port_match(&mut self, port: &NetworkPolicyPort, at: &str) -> Option<String> {
        let Some(protocol) = Protocol::from_k8s(port.protocol.as_deref()) else {
            let protocol = port.protocol.as_deref().unwrap_or_default();
            self.warn(format!(
                "{at}.protocol {protocol:?} is not TCP, UDP or SCTP; the port matches nothing"
            ));
            return None;
        };
        match (&port.port, port.end_port) {
            (None, None) => Some(format!("-p {protocol}")),
            (None, Some(_)) => {
                self.warn(format!(
                    "{at}: endPort without port; the port matches nothing"
                ));
                None
            }
            (Some(IntOrString::Int(first)), end) => {
                let Some(first) = port_number(*first) else {
                    self.warn(format!(
                        "{at}.port {first} is not in 1-65535; the port matches nothing"
                    ));
                    return None;
                };
                match end {
                    None => Some(format!("-p {protocol} --dport {first}")),
                    Some(last) => match port_number(last).filter(|last| *last >= first) {
                        Some(last) => Some(format!("-p {protocol} --dport {first}:{last}")),
                        None => {
                            self.warn(format!(
                                "{at}.endPort {last} is not in {first}-65535; the port matches nothing"
                            ));
                            None
                        }
                    },
                }
            }
            (Some(IntOrString::String(name)), None) => {
                let set = self.named_port_set(name, protocol);
                Some(format!("-p {protocol} -m set --match-set {set} dst,dst"))
            }
            (Some(IntOrString::String(name)), Some(_)) => {
                self.warn(format!(
                    "{at}: endPort cannot go with the named port {name:?}; the port matches nothing"
                ));
                None
            }
        }
    }

    /// Every pod's `address,proto:number` for the container port called `name`. Matched
    /// `dst,dst`, it serves both directions: on ingress the destination is the selected pod.
    fn named_port_set(&mut self, name: &str, protocol: Protocol) -> String {
        let meaning = format!(
            "named-port {} {protocol} {}",
            family_name(self.family),
            quote(name)
        );
        let source = SetSource::NamedPort {
            name: name.to_owned(),
            protocol,
        };
        self.request(meaning, SetKind::HashIpPort, source)
    }

    /// Names the set after its meaning, so the same peer in two policies is one set; its
    /// members are computed once per compile, whichever policies name it.
    fn request(&mut self, meaning: String, kind: SetKind, source: SetSource) -> String {
        let name = format!("tort-s{}-{}", family_digit(self.family), hash16(&meaning));
        if !self.sets.iter().any(|set| set.name == name) {
            self.sets.push(SetRequest {
                name: name.clone(),
                meaning,
                kind,
                source,
            });
        }
        name
    }
}

/// `tort-POSTROUTING`, and the sets `tort-masqN` (natOutgoing pools, disabled or not:
/// their pods keep their addresses) and `tort-poolsN` (every pool) it reads.
fn nat_outgoing(
    input_pools: &[Pool],
    family: Family,
    ipsets: &mut BTreeMap<String, IpSet>,
    meanings: &mut BTreeMap<String, String>,
) -> Vec<String> {
    let digit = family_digit(family);
    let (masq_name, pools_name) = (format!("tort-masq{digit}"), format!("tort-pools{digit}"));
    let (mut masq, mut pools) = (BTreeSet::new(), BTreeSet::new());
    for pool in input_pools {
        if family_of_net(&pool.cidr) != family {
            continue;
        }
        for net in storable(pool.cidr.trunc()) {
            if pool.nat_outgoing {
                masq.insert(net_member(&net));
            }
            pools.insert(net_member(&net));
        }
    }
    let mut rules = Vec::new();
    if !masq.is_empty() {
        rules.push(format!(
            "-m set --match-set {masq_name} src -m set ! --match-set {pools_name} dst -j MASQUERADE"
        ));
    }
    meanings.insert(masq_name.clone(), "pools with natOutgoing".into());
    meanings.insert(pools_name.clone(), "every pool".into());
    ipsets.insert(
        masq_name,
        IpSet {
            kind: SetKind::HashNet,
            members: masq,
        },
    );
    ipsets.insert(
        pools_name,
        IpSet {
            kind: SetKind::HashNet,
            members: pools,
        },
    );
    rules
}

fn family_ips(pod: &Pod, family: Family) -> impl Iterator<Item = &IpAddr> {
    pod.ips.iter().filter(move |ip| Family::of(ip) == family)
}

/// The first 16 hex digits of the SHA-1 of `text`.
fn hash16(text: &str) -> String {
    hex::encode(&Sha1::digest(text.as_bytes())[..8])
}

/// A string as a JSON string literal, so a name in a set's meaning cannot run into the rest.
fn quote(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn family_digit(family: Family) -> char {
    match family {
        Family::V4 => '4',
        Family::V6 => '6',
    }
}

fn family_of_net(net: &IpNet) -> Family {
    Family::of(&net.addr())
}

/// `hash:net` cannot hold a /0: it becomes its two halves.
fn storable(net: IpNet) -> Vec<IpNet> {
    if net.prefix_len() == 0 {
        net.subnets(1).map(Iterator::collect).unwrap_or_default()
    } else {
        vec![net]
    }
}

/// A net as `ipset save` prints it: a host route without its prefix length.
fn net_member(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn port_number(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|port| *port != 0)
}

/// What the CNI plugin names host veths (`tort` + 11 hex digits), loosely: `tort-FORWARD`
/// only looks at `tort+`, and a name must be safe to put in a rule.
fn is_tort_ifname(ifname: &str) -> bool {
    ifname.len() <= 15
        && ifname.starts_with("tort")
        && ifname.len() > 4
        && ifname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fmt::Write as _;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::policy::model::{NamedPort, Namespace, Pool};

    // ---- building inputs ----

    fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> Arc<NetworkPolicy> {
        let object =
            serde_json::json!({"metadata": {"namespace": namespace, "name": name}, "spec": spec});
        Arc::new(serde_json::from_value(object).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.into(),
            labels: labels(pairs),
        }
    }

    /// A pod elsewhere in the cluster.
    fn pod(namespace: &str, name: &str, pairs: &[(&str, &str)], ips: &[&str]) -> Pod {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels(pairs),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            named_ports: Vec::new(),
            host_ifname: None,
        }
    }

    /// The same pod on this node, behind `ifname`.
    fn on_node(pod: Pod, ifname: &str) -> Pod {
        Pod {
            host_ifname: Some(ifname.into()),
            ..pod
        }
    }

    fn with_ports(pod: Pod, ports: &[(&str, Protocol, u16)]) -> Pod {
        let named_ports = ports
            .iter()
            .map(|(name, protocol, port)| NamedPort {
                name: name.to_string(),
                protocol: *protocol,
                port: *port,
            })
            .collect();
        Pod { named_ports, ..pod }
    }

    fn pool(cidr: &str, nat_outgoing: bool, disabled: bool) -> Pool {
        Pool {
            cidr: cidr.parse().unwrap(),
            nat_outgoing,
            disabled,
        }
    }

    // ---- reading outputs ----

    fn chain<'c>(compiled: &'c Compiled, table: Table, name: &str) -> &'c [String] {
        compiled
            .dataplane
            .chains
            .get(&(table, name.to_string()))
            .unwrap_or_else(|| panic!("no chain {name}: {:#?}", compiled.dataplane.chains.keys()))
    }

    fn filter<'c>(compiled: &'c Compiled, name: &str) -> &'c [String] {
        chain(compiled, Table::Filter, name)
    }

    fn ingress_chain(key: &str) -> String {
        Direction::Ingress.policy_chain(&hash16(key))
    }

    fn egress_chain(key: &str) -> String {
        Direction::Egress.policy_chain(&hash16(key))
    }

    fn has_chain(compiled: &Compiled, name: &str) -> bool {
        compiled
            .dataplane
            .chains
            .contains_key(&(Table::Filter, name.to_string()))
    }

    /// The set names a rule matches against, in order.
    fn sets_in(rule: &str) -> Vec<String> {
        let words: Vec<&str> = rule.split(' ').collect();
        words
            .windows(2)
            .filter(|w| w[0] == "--match-set")
            .map(|w| w[1].to_string())
            .collect()
    }

    fn members(compiled: &Compiled, set: &str) -> Vec<String> {
        compiled.dataplane.ipsets[set]
            .members
            .iter()
            .cloned()
            .collect()
    }

    /// `ipset save`-like sets, then each table as `iptables-save`-like text, each set and
    /// policy chain preceded by what it stands for.
    fn render(compiled: &Compiled) -> String {
        let dataplane = &compiled.dataplane;
        let family = dataplane.family.unwrap();
        let mut out = String::new();
        writeln!(out, "# {} dataplane", family_name(family)).unwrap();
        for warning in &compiled.warnings {
            writeln!(out, "# warning: {warning}").unwrap();
        }
        for (name, set) in &dataplane.ipsets {
            writeln!(out).unwrap();
            if let Some(meaning) = compiled.meanings.get(name) {
                writeln!(out, "# {name}: {meaning}").unwrap();
            }
            writeln!(
                out,
                "create {name} {} family {}",
                set.kind.as_str(),
                family.ipset_family()
            )
            .unwrap();
            for member in &set.members {
                writeln!(out, "add {name} {member}").unwrap();
            }
        }
        for table in [Table::Filter, Table::Nat] {
            writeln!(out, "\n*{}", table.as_str()).unwrap();
            for hook in dataplane.hooks.iter().filter(|h| h.table == table) {
                writeln!(out, "-I {} -j {}", hook.builtin, hook.chain).unwrap();
            }
            for ((_, name), rules) in dataplane.chains.iter().filter(|((t, _), _)| *t == table) {
                if let Some(meaning) = compiled.meanings.get(name) {
                    writeln!(out, "# {name}: {meaning}").unwrap();
                }
                writeln!(out, ":{name}").unwrap();
                for rule in rules {
                    writeln!(out, "-A {name} {rule}").unwrap();
                }
            }
            writeln!(out, "COMMIT").unwrap();
        }
        out
    }

    /// Compares with `testdata/policy/<name>.golden`; `TORTIE_BLESS=1` rewrites it instead.
    fn golden(name: &str, got: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join("policy");
        let path = dir.join(format!("{name}.golden"));
        if std::env::var_os("TORTIE_BLESS").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (TORTIE_BLESS=1 to create it)", path.display()));
        assert_eq!(
            got,
            want,
            "{} differs (TORTIE_BLESS=1 to accept)",
            path.display()
        );
    }

    fn render_families(input: &PolicyInput, families: &[Family]) -> String {
        families
            .iter()
            .map(|family| render(&compile(input, *family)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    // ---- golden inputs ----

    /// Namespace prod denies everything both ways; dev has no policy.
    fn default_deny_input() -> PolicyInput {
        PolicyInput {
            policies: vec![policy(
                "prod",
                "default-deny",
                serde_json::json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
            )],
            namespaces: vec![namespace("prod", &[]), namespace("dev", &[])],
            pods: vec![
                on_node(
                    pod("prod", "web", &[("app", "web")], &["10.244.1.10"]),
                    "tortweb",
                ),
                on_node(
                    pod("prod", "db", &[("app", "db")], &["10.244.1.11"]),
                    "tortdb",
                ),
                on_node(
                    pod("dev", "tool", &[("app", "tool")], &["10.244.1.12"]),
                    "torttool",
                ),
                pod("prod", "elsewhere", &[("app", "web")], &["10.244.2.5"]),
            ],
            pools: vec![pool("10.244.0.0/16", false, false)],
        }
    }

    /// Every kind of peer and port, one bad CIDR, and a peer two policies share.
    fn peers_input() -> PolicyInput {
        let web_ingress = serde_json::json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app": "api"}}},
                        {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
                        {
                            "namespaceSelector": {"matchLabels": {"team": "shop"}},
                            "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}
                        }
                    ],
                    "ports": [{"port": "http"}, {"port": 8443, "endPort": 8453}]
                },
                {
                    "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4/32"]}}],
                    "ports": [{"protocol": "SCTP", "port": 3868}, {"protocol": "UDP"}]
                },
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}
            ]
        });
        let web_egress = serde_json::json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "pg"}]},
                {
                    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
                },
                {"to": [{"podSelector": {"matchLabels": {"app": "api"}}}]}
            ]
        });
        let db = serde_json::json!({
            "podSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 5432}]}]
        });
        PolicyInput {
            policies: vec![
                policy("prod", "web-ingress", web_ingress),
                policy("prod", "web-egress", web_egress),
                policy("prod", "db", db),
            ],
            namespaces: vec![
                namespace("prod", &[("team", "shop")]),
                namespace("monitoring", &[("team", "ops")]),
                namespace("dev", &[("team", "shop")]),
            ],
            pods: vec![
                with_ports(
                    on_node(
                        pod("prod", "web", &[("app", "web")], &["10.244.1.10"]),
                        "tortweb",
                    ),
                    &[
                        ("http", Protocol::Tcp, 8080),
                        ("metrics", Protocol::Tcp, 9090),
                    ],
                ),
                with_ports(
                    on_node(
                        pod("prod", "db", &[("app", "db")], &["10.244.1.11"]),
                        "tortdb",
                    ),
                    &[("pg", Protocol::Tcp, 5432)],
                ),
                with_ports(
                    pod("prod", "api", &[("app", "api")], &["10.244.2.20"]),
                    &[("http", Protocol::Tcp, 8000)],
                ),
                pod(
                    "monitoring",
                    "prometheus",
                    &[("app", "prometheus")],
                    &["10.244.3.30"],
                ),
                pod(
                    "monitoring",
                    "grafana",
                    &[("app", "grafana")],
                    &["10.244.3.31"],
                ),
                pod("dev", "api", &[("app", "api")], &["10.244.4.40"]),
            ],
            pools: vec![pool("10.244.0.0/16", true, false)],
        }
    }

    fn nat_input() -> PolicyInput {
        PolicyInput {
            pods: vec![on_node(
                pod("default", "a", &[], &["10.244.1.2", "fd00:10::2"]),
                "tortaaa",
            )],
            pools: vec![
                pool("10.244.0.0/16", true, false),
                pool("10.245.0.0/16", true, true),
                pool("192.168.0.0/16", false, false),
                pool("fd00:10::/64", true, false),
                pool("fd00:20::/64", false, false),
            ],
            ..PolicyInput::default()
        }
    }

    /// Dual-stack pods; ipBlocks and named ports of both families.
    fn dual_input() -> PolicyInput {
        let spec = serde_json::json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "http"}]}],
            "egress": [{"to": [
                {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}},
                {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48", "192.0.2.0/26"]}}
            ]}]
        });
        PolicyInput {
            policies: vec![policy("default", "web", spec)],
            namespaces: vec![namespace("default", &[])],
            pods: vec![
                with_ports(
                    on_node(
                        pod(
                            "default",
                            "web",
                            &[("app", "web")],
                            &["10.244.1.10", "fd00:10::10"],
                        ),
                        "tortweb",
                    ),
                    &[("http", Protocol::Tcp, 8080)],
                ),
                pod(
                    "default",
                    "client",
                    &[("app", "client")],
                    &["10.244.2.20", "fd00:10::2:20"],
                ),
                pod(
                    "default",
                    "old-client",
                    &[("app", "client")],
                    &["10.244.2.21"],
                ),
            ],
            pools: vec![
                pool("10.244.0.0/16", true, false),
                pool("fd00:10::/64", false, false),
            ],
        }
    }

    #[test]
    fn golden_default_deny() {
        golden(
            "default_deny",
            &render(&compile(&default_deny_input(), Family::V4)),
        );
    }

    #[test]
    fn golden_peers() {
        golden("peers", &render(&compile(&peers_input(), Family::V4)));
    }

    #[test]
    fn golden_nat() {
        golden(
            "nat",
            &render_families(&nat_input(), &[Family::V4, Family::V6]),
        );
    }

    #[test]
    fn golden_dual() {
        golden(
            "dual",
            &render_families(&dual_input(), &[Family::V4, Family::V6]),
        );
    }

    // ---- targeted ----

    #[test]
    fn a_pod_is_isolated_only_once_selected_and_only_for_that_direction() {
        let input = PolicyInput {
            policies: vec![
                policy(
                    "prod",
                    "web",
                    serde_json::json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
                ),
                // Selects everything, but in another namespace.
                policy("dev", "deny", serde_json::json!({"podSelector": {}})),
            ],
            pods: vec![
                on_node(
                    pod("prod", "web", &[("app", "web")], &["10.0.0.1"]),
                    "tortweb",
                ),
                on_node(
                    pod("prod", "other", &[("app", "other")], &["10.0.0.2"]),
                    "tortother",
                ),
            ],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        let pi = ingress_chain("prod/web");
        assert_eq!(
            filter(&compiled, "tort-tw-tortweb"),
            [
                "-j MARK --set-xmark 0x0/0x10000".to_string(),
                format!("-j {pi}"),
                "-m mark --mark 0x10000/0x10000 -j RETURN".to_string(),
                "-j DROP".to_string(),
            ]
        );
        assert_eq!(
            filter(&compiled, &pi),
            ["-j MARK --set-xmark 0x10000/0x10000"]
        );
        assert!(
            filter(&compiled, "tort-fw-tortweb").is_empty(),
            "no egress policy"
        );
        assert!(filter(&compiled, "tort-tw-tortother").is_empty());
        assert!(filter(&compiled, "tort-fw-tortother").is_empty());
        // A policy selecting no local pod is not rendered at all.
        assert!(!has_chain(&compiled, &ingress_chain("dev/deny")));
    }

    #[test]
    fn what_is_allowed_is_the_union_of_the_policies() {
        let from = |app: &str| serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app}}}]}]});
        let input = PolicyInput {
            // Out of order on purpose: chains run sorted by namespace/name.
            policies: vec![
                policy("prod", "b", from("y")),
                policy("prod", "a", from("x")),
            ],
            pods: vec![
                on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb"),
                pod("prod", "x", &[("app", "x")], &["10.0.0.2"]),
                pod("prod", "y", &[("app", "y")], &["10.0.0.3"]),
            ],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        let (a, b) = (ingress_chain("prod/a"), ingress_chain("prod/b"));
        let endpoint = filter(&compiled, "tort-tw-tortweb");
        assert_eq!(endpoint[1], format!("-j {a}"));
        assert_eq!(endpoint[3], format!("-j {b}"));
        assert_eq!(endpoint.len(), 6);
        let set_a = sets_in(&filter(&compiled, &a)[0]);
        let set_b = sets_in(&filter(&compiled, &b)[0]);
        assert_eq!(members(&compiled, &set_a[0]), ["10.0.0.2"]);
        assert_eq!(members(&compiled, &set_b[0]), ["10.0.0.3"]);
    }

    /// Calico's classic pitfall: one peer with both selectors is an AND, two peers an OR.
    #[test]
    fn both_selectors_in_one_peer_and_but_two_peers_or() {
        let and = serde_json::json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {"matchLabels": {"app": "prom"}}}
        ]}]});
        let or = serde_json::json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "ops"}}},
            {"podSelector": {"matchLabels": {"app": "prom"}}}
        ]}]});
        let input = PolicyInput {
            policies: vec![policy("prod", "and", and), policy("prod", "or", or)],
            namespaces: vec![
                namespace("monitoring", &[("team", "ops")]),
                namespace("prod", &[]),
            ],
            pods: vec![
                on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb"),
                pod("monitoring", "prom", &[("app", "prom")], &["10.0.1.1"]),
                pod(
                    "monitoring",
                    "grafana",
                    &[("app", "grafana")],
                    &["10.0.1.2"],
                ),
                pod("prod", "prom", &[("app", "prom")], &["10.0.2.1"]),
            ],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);

        let and_rules = filter(&compiled, &ingress_chain("prod/and"));
        assert_eq!(and_rules.len(), 1);
        assert_eq!(members(&compiled, &sets_in(&and_rules[0])[0]), ["10.0.1.1"]);

        let or_rules = filter(&compiled, &ingress_chain("prod/or"));
        assert_eq!(or_rules.len(), 2);
        assert_eq!(
            members(&compiled, &sets_in(&or_rules[0])[0]),
            ["10.0.1.1", "10.0.1.2"]
        );
        // podSelector alone: the policy's own namespace only.
        assert_eq!(members(&compiled, &sets_in(&or_rules[1])[0]), ["10.0.2.1"]);
    }

    #[test]
    fn namespaces_match_their_name_label_even_when_it_is_not_set() {
        let spec = serde_json::json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            {"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["unlisted"]}
            ]}}
        ]}]});
        let input = PolicyInput {
            policies: vec![policy("prod", "p", spec)],
            // monitoring without the label; "unlisted" not in the input at all.
            namespaces: vec![namespace("monitoring", &[("team", "ops")])],
            pods: vec![
                on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb"),
                pod("monitoring", "prom", &[], &["10.0.1.1"]),
                pod("unlisted", "x", &[], &["10.0.3.1"]),
                pod("other", "y", &[], &["10.0.4.1"]),
            ],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        let rules = filter(&compiled, &ingress_chain("prod/p"));
        assert_eq!(members(&compiled, &sets_in(&rules[0])[0]), ["10.0.1.1"]);
        assert_eq!(members(&compiled, &sets_in(&rules[1])[0]), ["10.0.3.1"]);
        assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    }

    #[test]
    fn policy_types_default_to_ingress_plus_egress_when_there_are_egress_rules() {
        let compile_one = |spec: serde_json::Value| {
            let input = PolicyInput {
                policies: vec![policy("prod", "p", spec)],
                pods: vec![on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb")],
                ..PolicyInput::default()
            };
            compile(&input, Family::V4)
        };
        let (pi, pe) = (ingress_chain("prod/p"), egress_chain("prod/p"));

        // Egress rules and no policyTypes: both; no ingress rules means deny all ingress.
        let both = compile_one(serde_json::json!({"podSelector": {}, "egress": [{}]}));
        assert!(filter(&both, &pi).is_empty());
        assert_eq!(filter(&both, &pe), ["-j MARK --set-xmark 0x10000/0x10000"]);
        assert_eq!(filter(&both, "tort-tw-tortweb").last().unwrap(), "-j DROP");
        assert_eq!(filter(&both, "tort-fw-tortweb").last().unwrap(), "-j DROP");

        // `egress: []` is no egress rule: Ingress only.
        let ingress_only = compile_one(serde_json::json!({"podSelector": {}, "egress": []}));
        assert!(has_chain(&ingress_only, &pi));
        assert!(!has_chain(&ingress_only, &pe));
        assert!(filter(&ingress_only, "tort-fw-tortweb").is_empty());

        // `policyTypes: []` is unset.
        let unset = compile_one(serde_json::json!({"podSelector": {}, "policyTypes": []}));
        assert!(has_chain(&unset, &pi));
        assert!(!has_chain(&unset, &pe));

        // Given policyTypes win: the ingress rules are not used.
        let egress_only = compile_one(serde_json::json!({
            "podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}));
        assert!(!has_chain(&egress_only, &pi));
        assert!(filter(&egress_only, &pe).is_empty());
        assert!(filter(&egress_only, "tort-tw-tortweb").is_empty());
    }

    #[test]
    fn empty_peers_and_ports_mean_all_but_peers_and_ports_that_match_nothing_do_not() {
        let spec = serde_json::json!({"podSelector": {}, "ingress": [
            {"from": [], "ports": []},
            {"from": [{"ipBlock": {"cidr": "bogus"}}]},
            {"ports": [{"protocol": "ICMP"}, {"port": 0}, {"port": 90, "endPort": 80}]},
            {"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}}]}
        ]});
        let input = PolicyInput {
            policies: vec![policy("prod", "p", spec)],
            pods: vec![on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb")],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        assert_eq!(
            filter(&compiled, &ingress_chain("prod/p")),
            ["-j MARK --set-xmark 0x10000/0x10000"]
        );
        let warnings = compiled.warnings.join("\n");
        for expected in [
            "NetworkPolicy prod/p: ingress[1].from[0].ipBlock.cidr \"bogus\"",
            "NetworkPolicy prod/p: ingress[2].ports[0].protocol \"ICMP\"",
            "NetworkPolicy prod/p: ingress[2].ports[1].port 0",
            "NetworkPolicy prod/p: ingress[2].ports[2].endPort 80",
            "NetworkPolicy prod/p: ingress[3].from[0].podSelector: matchExpressions[0]: operator \"Equals\"",
        ] {
            assert!(
                warnings.contains(expected),
                "missing {expected:?} in\n{warnings}"
            );
        }
        assert_eq!(compiled.warnings.len(), 5, "{warnings}");
        // Only the NAT sets: no set for peers that match nothing.
        assert_eq!(compiled.dataplane.ipsets.len(), 2);
    }

    #[test]
    fn a_bad_cidr_alone_denies() {
        let spec = serde_json::json!({"podSelector": {}, "egress": [
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/160"]}}]}
        ]});
        let input = PolicyInput {
            policies: vec![policy("prod", "p", spec)],
            pods: vec![on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb")],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        assert!(filter(&compiled, &egress_chain("prod/p")).is_empty());
        assert_eq!(
            filter(&compiled, "tort-fw-tortweb").last().unwrap(),
            "-j DROP"
        );
        assert_eq!(compiled.warnings.len(), 1);
        assert!(compiled.warnings[0].starts_with(
            "NetworkPolicy prod/p: egress[0].to[0].ipBlock.except[0] \"10.1.0.0/160\""
        ));
    }

    #[test]
    fn an_invalid_pod_selector_isolates_the_whole_namespace() {
        let spec = serde_json::json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Foo"}]}});
        let input = PolicyInput {
            policies: vec![policy("prod", "p", spec)],
            pods: vec![
                on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb"),
                on_node(pod("dev", "web", &[], &["10.0.0.2"]), "tortdev"),
            ],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        assert_eq!(
            filter(&compiled, "tort-tw-tortweb").last().unwrap(),
            "-j DROP"
        );
        assert!(filter(&compiled, "tort-tw-tortdev").is_empty());
        assert!(
            compiled.warnings[0].contains("spec.podSelector"),
            "{:?}",
            compiled.warnings
        );
    }

    #[test]
    fn ip_blocks_and_pods_of_the_other_family_are_left_out() {
        let spec = serde_json::json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "2001:db8::/32"}},
            {"podSelector": {}}
        ]}]});
        let input = PolicyInput {
            policies: vec![policy("prod", "p", spec)],
            pods: vec![
                on_node(pod("prod", "web", &[], &["10.0.0.1", "fd00::1"]), "tortweb"),
                pod("prod", "v6only", &[], &["fd00::2"]),
            ],
            ..PolicyInput::default()
        };
        let v4 = compile(&input, Family::V4);
        let rules = filter(&v4, &ingress_chain("prod/p"));
        assert_eq!(rules.len(), 1, "{rules:?}");
        assert_eq!(members(&v4, &sets_in(&rules[0])[0]), ["10.0.0.1"]);

        let v6 = compile(&input, Family::V6);
        let rules = filter(&v6, &ingress_chain("prod/p"));
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(members(&v6, &sets_in(&rules[0])[0]), ["2001:db8::/32"]);
        assert_eq!(members(&v6, &sets_in(&rules[1])[0]), ["fd00::1", "fd00::2"]);
        assert!(sets_in(&rules[0])[0].starts_with("tort-s6-"));
        assert!(v4.warnings.is_empty() && v6.warnings.is_empty());
    }

    #[test]
    fn ip_block_excepts_and_zero_prefixes_fit_hash_net() {
        let set_for = |block: serde_json::Value| {
            let spec =
                serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": block}]}]});
            let input = PolicyInput {
                policies: vec![policy("prod", "p", spec)],
                pods: vec![on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb")],
                ..PolicyInput::default()
            };
            let compiled = compile(&input, Family::V4);
            let rules = filter(&compiled, &ingress_chain("prod/p"));
            rules
                .first()
                .map(|rule| members(&compiled, &sets_in(rule)[0]))
        };
        assert_eq!(
            set_for(
                serde_json::json!({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "10.1.0.0/16"]})
            )
            .unwrap(),
            ["0.0.0.0/1", "10.0.0.0/8 nomatch", "128.0.0.0/1"]
        );
        // Host bits are dropped; an except covering half of the /0 removes that half.
        assert_eq!(
            set_for(
                serde_json::json!({"cidr": "0.0.0.0/0", "except": ["128.0.0.0/1", "1.2.3.4/32"]})
            )
            .unwrap(),
            ["0.0.0.0/1", "1.2.3.4 nomatch"]
        );
        assert_eq!(
            set_for(serde_json::json!({"cidr": "10.1.2.3/16"})).unwrap(),
            ["10.1.0.0/16"]
        );
        // Everything excepted: the peer matches nothing.
        assert_eq!(
            set_for(serde_json::json!({"cidr": "10.1.0.0/16", "except": ["10.0.0.0/8"]})),
            None
        );
    }

    #[test]
    fn identical_peers_share_one_set() {
        let peer = serde_json::json!({"namespaceSelector": {"matchLabels": {"team": "ops"}}});
        let input = PolicyInput {
            policies: vec![
                policy(
                    "prod",
                    "a",
                    serde_json::json!({"podSelector": {}, "ingress": [{"from": [peer]}]}),
                ),
                policy(
                    "dev",
                    "b",
                    serde_json::json!({"podSelector": {}, "egress": [{"to": [peer]}]}),
                ),
                // The same podSelector in two namespaces means two sets of pods.
                policy(
                    "prod",
                    "c",
                    serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
                ),
                policy(
                    "dev",
                    "d",
                    serde_json::json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
                ),
            ],
            pods: vec![
                on_node(pod("prod", "web", &[], &["10.0.0.1"]), "tortweb"),
                on_node(pod("dev", "web", &[], &["10.0.0.2"]), "tortdev"),
            ],
            ..PolicyInput::default()
        };
        let compiled = compile(&input, Family::V4);
        let set = |chain: String| sets_in(&filter(&compiled, &chain)[0])[0].clone();
        assert_eq!(set(ingress_chain("prod/a")), set(egress_chain("dev/b")));
        assert_ne!(set(ingress_chain("prod/c")), set(ingress_chain("dev/d")));
        assert_eq!(
            filter(&compiled, &egress_chain("dev/b"))[0]
                .split(' ')
                .nth(4),
            Some("dst")
        );
        assert_eq!(
            filter(&compiled, &ingress_chain("prod/a"))[0]
                .split(' ')
                .nth(4),
            Some("src")
        );
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        for input in [
            default_deny_input(),
            peers_input(),
            nat_input(),
            dual_input(),
            endpoints_input(),
        ] {
            let mut reversed = input.clone();
            reversed.policies.reverse();
            reversed.pods.reverse();
            reversed.namespaces.reverse();
            reversed.pools.reverse();
            for family in [Family::V4, Family::V6] {
                let first = compile(&input, family);
                assert_eq!(first, compile(&input, family));
                assert_eq!(first, compile(&reversed, family));
            }
        }
    }

    #[test]
    fn names_fit_the_kernel() {
        let (mut sets, mut chains) = (BTreeSet::new(), BTreeSet::new());
        for input in [
            default_deny_input(),
            peers_input(),
            nat_input(),
            dual_input(),
        ] {
            for family in [Family::V4, Family::V6] {
                let dataplane = compile(&input, family).dataplane;
                sets.extend(dataplane.ipsets.into_keys());
                chains.extend(dataplane.chains.into_keys().map(|(_, name)| name));
            }
        }
        for name in &sets {
            assert!(name.starts_with("tort") && name.len() <= 31, "set {name}");
        }
        for name in &chains {
            assert!(name.starts_with("tort") && name.len() <= 28, "chain {name}");
        }
        // Every kind of name was looked at.
        for prefix in ["tort-s4-", "tort-s6-", "tort-masq", "tort-pools"] {
            assert!(
                sets.iter().any(|name| name.starts_with(prefix)),
                "no {prefix}* set"
            );
        }
        for prefix in ["tort-pi-", "tort-pe-", "tort-tw-", "tort-fw-"] {
            assert!(
                chains.iter().any(|name| name.starts_with(prefix)),
                "no {prefix}* chain"
            );
        }
        // The longest an interface can be.
        let input = PolicyInput {
            policies: vec![policy("a", "b", serde_json::json!({"podSelector": {}}))],
            pods: vec![on_node(
                pod("a", "p", &[], &["10.0.0.1"]),
                "tort0123456789a",
            )],
            ..PolicyInput::default()
        };
        let dataplane = compile(&input, Family::V4).dataplane;
        assert!(dataplane.chains.keys().all(|(_, name)| name.len() <= 28));
        assert!(
            dataplane
                .chains
                .contains_key(&(Table::Filter, "tort-tw-tort0123456789a".to_string()))
        );
    }

    /// Two good interfaces, two bad names, and one name two pods claim.
    fn endpoints_input() -> PolicyInput {
        PolicyInput {
            pods: vec![
                on_node(pod("a", "z", &[], &["10.0.0.1"]), "tortzz"),
                on_node(pod("a", "y", &[], &["10.0.0.2"]), "tortaa"),
                on_node(pod("a", "bad", &[], &["10.0.0.3"]), "tort+"),
                on_node(pod("a", "worse", &[], &["10.0.0.6"]), "eth0 -j ACCEPT"),
                on_node(pod("a", "twin1", &[], &["10.0.0.4"]), "torttwin"),
                on_node(pod("a", "twin2", &[], &["10.0.0.5"]), "torttwin"),
            ],
            ..PolicyInput::default()
        }
    }

    #[test]
    fn endpoints_are_dispatched_by_interface_and_unknown_ones_dropped() {
        let compiled = compile(&endpoints_input(), Family::V4);
        assert_eq!(
            filter(&compiled, "tort-from-wl"),
            [
                "-i tortaa -g tort-fw-tortaa",
                "-i tortzz -g tort-fw-tortzz",
                "-j DROP"
            ]
        );
        assert_eq!(
            filter(&compiled, "tort-to-wl"),
            [
                "-o tortaa -g tort-tw-tortaa",
                "-o tortzz -g tort-tw-tortzz",
                "-j DROP"
            ]
        );
        assert_eq!(
            compiled.warnings,
            [
                "pod a/bad: host interface \"tort+\" is not tort followed by at most 11 letters, \
                 digits, '-', '_' or '.'; the pod gets no chains",
                "pod a/worse: host interface \"eth0 -j ACCEPT\" is not tort followed by at most 11 \
                 letters, digits, '-', '_' or '.'; the pod gets no chains",
                "pods a/twin1, a/twin2 share host interface torttwin; it gets no chains until one is gone",
            ]
        );
        assert!(!has_chain(&compiled, "tort-tw-torttwin"));
    }

    #[test]
    fn nat_outgoing_needs_a_nat_pool_but_its_chain_and_sets_always_exist() {
        let input = PolicyInput {
            pools: vec![
                pool("10.244.0.0/16", false, false),
                pool("fd00::/64", true, false),
            ],
            ..PolicyInput::default()
        };
        let v4 = compile(&input, Family::V4);
        assert!(chain(&v4, Table::Nat, "tort-POSTROUTING").is_empty());
        assert!(members(&v4, "tort-masq4").is_empty());
        assert_eq!(members(&v4, "tort-pools4"), ["10.244.0.0/16"]);
        let v6 = compile(&input, Family::V6);
        assert_eq!(
            chain(&v6, Table::Nat, "tort-POSTROUTING"),
            [
                "-m set --match-set tort-masq6 src -m set ! --match-set tort-pools6 dst -j MASQUERADE"
            ]
        );
        assert!(v6.dataplane.hooks.contains(&Hook {
            table: Table::Nat,
            builtin: "POSTROUTING".into(),
            chain: "tort-POSTROUTING".into(),
        }));
    }

    #[test]
    fn fail_closed_drops_pod_traffic_without_sets() {
        let dataplane = fail_closed(Family::V6);
        assert_eq!(dataplane.family, Some(Family::V6));
        assert!(dataplane.ipsets.is_empty());
        assert_eq!(dataplane.chains.len(), 1);
        assert_eq!(
            dataplane.chains[&(Table::Filter, "tort-FORWARD".to_string())],
            [
                "-m conntrack --ctstate INVALID -j DROP",
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-i tort+ -j DROP",
                "-o tort+ -j DROP",
            ]
        );
        assert_eq!(dataplane.hooks, [forward_hook()]);
    }

    // ---- the incremental compiler against the full one ----

    /// A small deterministic generator (xorshift64), so a failing sequence can be replayed
    /// from its seed.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[self.below(of.len())]
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    const NAMESPACES: [&str; 4] = ["a", "b", "c", "d"];

    /// A policy from a handful of shapes that between them use every kind of set, port and
    /// warning, in a random namespace under one of a few names (so names collide).
    fn random_policy(dice: &mut Dice) -> Arc<NetworkPolicy> {
        let app = dice.pick(&["web", "db", "api"]);
        let peer_app = dice.pick(&["web", "db", "api"]);
        let team = dice.pick(&["x", "y"]);
        let port = serde_json::json!(
            dice.pick(&["80", "81", "http", "dns"])
                .parse::<u16>()
                .map_or_else(
                    |_| serde_json::json!({"port": "http"}),
                    |n| serde_json::json!({"port": n}),
                )
        );
        let spec = match dice.below(8) {
            0 => serde_json::json!({"podSelector": {"matchLabels": {"app": app}}}),
            1 => serde_json::json!({"podSelector": {"matchLabels": {"app": app}}, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}], "ports": [port]}
            ]}),
            2 => serde_json::json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": team}}},
                {"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
                 "podSelector": {"matchLabels": {"role": "fe"}}}
            ]}]}),
            3 => serde_json::json!({"podSelector": {"matchLabels": {"app": app}}, "egress": [
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.1.0/24"]}}]},
                {"to": [{"ipBlock": {"cidr": "fd00::/8"}}], "ports": [{"protocol": "UDP", "port": 53}]}
            ]}),
            4 => {
                serde_json::json!({"podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}]},
                "policyTypes": ["Ingress", "Egress"], "ingress": [{"ports": [{"protocol": "UDP", "port": "dns"}]}],
                "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 8000, "endPort": 8100}]}]})
            }
            5 => {
                serde_json::json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Nope"}]},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer_app}}}]}]})
            }
            6 => serde_json::json!({"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "bogus"}}], "ports": [{"protocol": "ICMP"}]},
                {"from": [{"namespaceSelector": {}}]}
            ], "policyTypes": ["Ingress", "Sideways"]}),
            _ => serde_json::json!({"podSelector": {"matchLabels": {"app": app}}, "ingress": [],
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": dice.pick(&NAMESPACES)}}}]}]}),
        };
        policy(dice.pick(&NAMESPACES), dice.pick(&["p", "q", "r"]), spec)
    }

    fn random_pod(dice: &mut Dice, n: usize) -> Pod {
        let mut pairs = vec![("app", dice.pick(&["web", "db", "api"]))];
        if dice.chance(60) {
            pairs.push(("role", dice.pick(&["fe", "be"])));
        }
        let mut ips = vec![format!("10.0.{}.{}", dice.below(3), n + 1)];
        if dice.chance(30) {
            ips.push(format!("fd00::{}", n + 1));
        }
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let mut pod = pod(
            dice.pick(&NAMESPACES),
            &format!("pod{}", dice.below(10)),
            &pairs,
            &ips,
        );
        if dice.chance(50) {
            pod = with_ports(pod, &[("http", Protocol::Tcp, 8080 + dice.below(2) as u16)]);
        }
        if dice.chance(20) {
            pod.named_ports.push(NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
            });
        }
        if dice.chance(50) {
            // Some names collide, one is not a tort interface.
            let ifname = dice.pick(&["tort1", "tort2", "tort3", "tort4", "tort5", "tort6", "eth0"]);
            pod = on_node(pod, ifname);
        }
        pod
    }

    fn random_namespace(dice: &mut Dice) -> Namespace {
        namespace(
            dice.pick(&NAMESPACES),
            &[
                ("team", dice.pick(&["x", "y"])),
                ("env", dice.pick(&["prod", "dev"])),
            ],
        )
    }

    /// One random change of the kind the cache reports: a policy added, replaced (or the
    /// same one as a new object), deleted; a pod added, relabelled, readdressed, wired or
    /// removed; a namespace relabelled, added or removed; the pools changed.
    fn random_change(dice: &mut Dice, input: &mut PolicyInput, n: usize) {
        fn slot<T>(dice: &mut Dice, items: &[T]) -> Option<usize> {
            (!items.is_empty()).then(|| dice.below(items.len()))
        }
        match dice.below(11) {
            0 => input.policies.push(random_policy(dice)),
            1 => {
                if let Some(i) = slot(dice, &input.policies) {
                    input.policies[i] = random_policy(dice);
                }
            }
            2 => {
                if let Some(i) = slot(dice, &input.policies) {
                    input.policies[i] = Arc::new((*input.policies[i]).clone());
                }
            }
            3 => {
                if let Some(i) = slot(dice, &input.policies) {
                    input.policies.remove(i);
                }
            }
            4 => input.pods.push(random_pod(dice, n)),
            5 => {
                if let Some(i) = slot(dice, &input.pods) {
                    let app = dice.pick(&["web", "db", "api"]);
                    input.pods[i].labels.insert("app".into(), app.into());
                }
            }
            6 => {
                if let Some(i) = slot(dice, &input.pods) {
                    input.pods[i].ips = vec![format!("10.1.0.{}", n % 250 + 1).parse().unwrap()];
                }
            }
            7 => {
                if let Some(i) = slot(dice, &input.pods) {
                    let fresh = random_pod(dice, n);
                    input.pods[i].host_ifname = fresh.host_ifname;
                }
            }
            8 => {
                if let Some(i) = slot(dice, &input.pods) {
                    input.pods.remove(i);
                }
            }
            9 => {
                if dice.chance(50) || input.namespaces.is_empty() {
                    input.namespaces.push(random_namespace(dice));
                } else if let Some(i) = slot(dice, &input.namespaces) {
                    if dice.chance(50) {
                        input.namespaces.remove(i);
                    } else {
                        input.namespaces[i] = random_namespace(dice);
                    }
                }
            }
            _ => {
                input.pools = vec![pool("10.0.0.0/16", dice.chance(50), false)];
                if dice.chance(50) {
                    input.pools.push(pool("fd00::/64", dice.chance(50), false));
                }
                if dice.chance(30) {
                    input.pods.reverse();
                    input.policies.reverse();
                }
            }
        }
    }

    #[test]
    fn incremental_compiles_exactly_what_compile_does_over_random_changes() {
        for seed in 1..=60u64 {
            let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut input = PolicyInput::default();
            let mut v4 = Incremental::new(Family::V4);
            let mut v6 = Incremental::new(Family::V6);
            for step in 0..120 {
                random_change(&mut dice, &mut input, step);
                for (incremental, family) in [(&mut v4, Family::V4), (&mut v6, Family::V6)] {
                    assert_eq!(
                        incremental.compile(&input),
                        compile(&input, family),
                        "seed {seed}, step {step}, {family:?}"
                    );
                }
            }
        }
    }
}
