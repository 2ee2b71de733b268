//! The ClusterRole in manifests/tortie.yaml grants nothing the agent does not use: each
//! (resource, verb) it grants must be backed by a call in the agent's code (agent/src,
//! without tortiectl's commands, which run with the user's own credentials).
//!
//! The other direction, that the agent has every right it needs, is what the lab proves:
//! every lab agent authenticates as the manifest's ServiceAccount, so a missing grant fails
//! the end-to-end tests with a 403.
//!
//! The reading of the code is deliberately simple and errs towards "used": a file that
//! names `Api<Kind>` and calls a verb's method uses that verb on that kind. A grant no file
//! backs even so is certainly unused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::rbac::v1::ClusterRole;

/// The Rust types the agent builds `Api`s of, and the resources they are.
const KINDS: &[(&str, &str)] = &[
    ("Node", "nodes"),
    ("Pod", "pods"),
    ("Namespace", "namespaces"),
    ("NetworkPolicy", "networkpolicies"),
    ("Secret", "secrets"),
    ("IPPool", "ippools"),
    ("IPAMBlock", "ipamblocks"),
    ("BlockAffinity", "blockaffinities"),
    ("BGPPeer", "bgppeers"),
    ("BGPConfiguration", "bgpconfigurations"),
    ("CustomResourceDefinition", "customresourcedefinitions"),
];

/// kube-rs calls and the RBAC verbs they need.
const CALLS: &[(&str, &[&str])] = &[
    (".get(", &["get"]),
    (".get_opt(", &["get"]),
    (".list(", &["list"]),
    ("watcher(", &["list", "watch"]),
    (".create(", &["create"]),
    (".replace(", &["update"]),
    (".patch(", &["patch"]),
    (".delete(", &["delete"]),
    (".delete_collection(", &["deletecollection"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("integration/ has a parent"))
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (resource, verb) pairs some agent file could be using.
fn used_by_the_agent() -> BTreeSet<(String, String)> {
    let src = root().join("agent/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut used = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap_or(&file);
        // tortiectl's subcommands act with the user's credentials, not the agent's.
        if rel.starts_with("ctl") || rel.starts_with("bin") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = KINDS
            .iter()
            .filter(|(kind, _)| {
                // `Api<Node>`, `Api<crd::IPPool>`, `Api::<Pod>::all`.
                let qualified = |open: &str| {
                    text.match_indices(open).any(|(i, _)| {
                        let rest = &text[i + open.len()..];
                        let name = rest.split('>').next().unwrap_or_default();
                        name.rsplit("::").next() == Some(*kind)
                    })
                };
                qualified("Api<") || qualified("Api::<")
            })
            .map(|(_, resource)| *resource)
            .collect();
        for (call, verbs) in CALLS {
            if text.contains(call) {
                for resource in &kinds {
                    for verb in *verbs {
                        used.insert(((*resource).to_owned(), (*verb).to_owned()));
                    }
                }
            }
        }
    }
    used
}

fn granted() -> BTreeMap<(String, String), String> {
    let path = root().join("manifests/tortie.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{e}"));
        if value.get("kind").and_then(|k| k.as_str()) != Some("ClusterRole") {
            continue;
        }
        let role: ClusterRole = serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{e}"));
        for rule in role.rules.unwrap_or_default() {
            let group = rule.api_groups.unwrap_or_default().join(",");
            for resource in rule.resources.unwrap_or_default() {
                for verb in &rule.verbs {
                    out.insert((resource.clone(), verb.clone()), group.clone());
                }
            }
        }
    }
    assert!(!out.is_empty(), "no ClusterRole in {}", path.display());
    out
}

use serde::Deserialize as _;

#[test]
fn the_cluster_role_grants_only_what_the_agent_calls() {
    let used = used_by_the_agent();
    let unused: Vec<String> = granted()
        .keys()
        .filter(|grant| !used.contains(*grant))
        .map(|(resource, verb)| format!("{verb} {resource}"))
        .collect();
    assert!(
        unused.is_empty(),
        "manifests/tortie.yaml grants what no agent code calls: {unused:?}\n(used: {used:?})"
    );
}

/// The reading above must see the calls it exists to see, or the test above would pass
/// on a manifest that grants nothing at all.
#[test]
fn the_code_reading_finds_the_agents_known_calls() {
    let used = used_by_the_agent();
    for (resource, verb) in [
        ("nodes", "patch"),
        ("pods", "watch"),
        ("ipamblocks", "create"),
        ("ipamblocks", "update"),
        ("blockaffinities", "delete"),
        ("bgppeers", "watch"),
        ("secrets", "get"),
    ] {
        assert!(
            used.contains(&(resource.to_owned(), verb.to_owned())),
            "{verb} {resource} not found in {used:?}"
        );
    }
    for resource in ["nodes", "pods", "ipamblocks"] {
        assert!(
            !used.contains(&(resource.to_owned(), "deletecollection".to_owned())),
            "deletecollection {resource}: the agent never deletes collections"
        );
    }
}
