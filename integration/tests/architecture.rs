//! The crate boundaries of docs/architecture.md ("Crates and what each may depend on"), checked
//! against each crate's Cargo.toml, so that a dependency that crosses one fails here rather
//! than in a review.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The netlink crates, pinned exactly in the root Cargo.toml: only the two crates that talk
/// to the kernel's routing and link tables may see them.
const NETLINK: &[&str] = &["netlink-packet-route", "netlink-packet-core", "netlink-sys"];
const KUBE: &[&str] = &["kube", "k8s-openapi"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("integration/ has a parent"))
        .to_owned()
}

fn manifest(folder: &str) -> toml::Table {
    let path = workspace_root().join(folder).join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The names of a crate's normal and build dependencies (what ends up in what it ships).
fn shipped_dependencies(folder: &str) -> BTreeSet<String> {
    let m = manifest(folder);
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| m.get(*section).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .collect()
}

fn assert_none_of(folder: &str, forbidden: &[&str]) {
    let deps = shipped_dependencies(folder);
    let crossing: Vec<&&str> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(
        crossing.is_empty(),
        "{folder}/ must not depend on {crossing:?} (docs/architecture.md); it depends on {deps:?}"
    );
}

#[test]
fn each_crate_stays_inside_its_boundary() {
    let tortie = [
        "tortie-api",
        "tortie-bgp",
        "tortie-ipam",
        "tortie-cni",
        "tortie-node",
        "tortie-lab",
    ];
    assert_none_of("api", &tortie);
    assert_none_of("bgp", &[NETLINK, KUBE, &tortie].concat());
    assert_none_of("ipam", &[NETLINK, KUBE, &["tokio"], &tortie].concat());
    assert_none_of(
        "cni",
        &[
            KUBE,
            &["tortie-bgp", "tortie-ipam", "tortie-node", "tortie-lab"],
        ]
        .concat(),
    );
    assert_none_of("agent", &["tortie-cni", "tortie-lab"]);
}

#[test]
fn only_the_agent_and_the_plugin_see_the_netlink_crates() {
    for folder in ["api", "bgp", "ipam", "integration"] {
        assert_none_of(folder, NETLINK);
    }
}

/// Every version is declared once, in the root's `[workspace.dependencies]`: a crate that
/// pins its own would let two versions of one dependency into the build.
#[test]
fn every_dependency_takes_its_version_from_the_workspace() {
    for folder in ["api", "bgp", "ipam", "cni", "agent", "integration"] {
        let m = manifest(folder);
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(table) = m.get(section).and_then(|v| v.as_table()) else {
                continue;
            };
            for (name, spec) in table {
                let from_workspace = spec
                    .as_table()
                    .and_then(|t| t.get("workspace"))
                    .and_then(|w| w.as_bool())
                    == Some(true);
                assert!(
                    from_workspace,
                    "{folder}/Cargo.toml [{section}] {name} = {spec}: declare the version in the \
                     root Cargo.toml and write `{name}.workspace = true`"
                );
            }
        }
    }
}

/// The repository carries its own design (docs/): no source, manifest or doc of it may send
/// a reader to a file outside it.
#[test]
fn nothing_points_outside_the_repository_for_its_design() {
    let root = workspace_root();
    let mut offenders = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                // Build output, VCS data and the fuzzer's corpus are not the project's text.
                if !matches!(name.as_ref(), "target" | ".git" | "corpus" | "artifacts") {
                    stack.push(path);
                }
                continue;
            }
            let checked = ["rs", "md", "toml", "yaml", "sh"]
                .iter()
                .any(|ext| path.extension().is_some_and(|e| e == *ext))
                || path.parent().is_some_and(|p| p.ends_with("scripts"));
            if !checked {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            // Spelled in two pieces so that this file does not match itself.
            for needle in [concat!("DESIGN", ".md"), concat!("../", "shared")] {
                if text.contains(needle) {
                    offenders.push(format!(
                        "{} mentions {needle}",
                        path.strip_prefix(&root).unwrap_or(&path).display()
                    ));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "point to docs/ instead (docs/architecture.md, docs/decisions.md):\n{}",
        offenders.join("\n")
    );
}
