//! The Containerfile cannot be built here (no container runtime), so this checks what can go
//! wrong with it as the repository changes: every path it copies from the repository exists,
//! every workspace member is copied (cargo will not load a workspace with one missing), and
//! every binary it copies out of the builder, or asks cargo for, is a `[[bin]]` the
//! workspace builds, at the path cargo puts it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| panic!("the agent crate has no parent folder"))
        .to_owned()
}

/// The Containerfile's instructions, with `\` continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let mut words = pending.split_whitespace().map(str::to_owned);
                if let Some(op) = words.next() {
                    out.push((op.to_ascii_uppercase(), words.collect()));
                }
                pending.clear();
            }
        }
    }
    out
}

fn toml_file(path: &Path) -> toml::Table {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The workspace's members and, for each, the names of the binaries it builds.
fn workspace_bins(root: &Path) -> (Vec<String>, BTreeSet<String>) {
    let members: Vec<String> = toml_file(&root.join("Cargo.toml"))["workspace"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no workspace.members"))
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let mut bins = BTreeSet::new();
    for member in &members {
        let manifest = toml_file(&root.join(member).join("Cargo.toml"));
        let declared: Vec<&toml::Value> = manifest
            .get("bin")
            .and_then(|b| b.as_array())
            .map(|b| b.iter().collect())
            .unwrap_or_default();
        for bin in declared {
            if let Some(name) = bin.get("name").and_then(|n| n.as_str()) {
                bins.insert(name.to_owned());
            }
        }
        // Cargo's implicit binary: src/main.rs, named after the package.
        let implicit_taken = manifest
            .get("bin")
            .and_then(|b| b.as_array())
            .is_some_and(|b| {
                b.iter()
                    .any(|x| x.get("path").and_then(|p| p.as_str()) == Some("src/main.rs"))
            });
        if root.join(member).join("src/main.rs").is_file() && !implicit_taken {
            let name = manifest["package"]["name"].as_str().unwrap_or_default();
            bins.insert(name.to_owned());
        }
    }
    (members, bins)
}

#[test]
fn every_copied_path_exists_and_every_binary_is_built_by_the_workspace() {
    let root = repo();
    let path = root.join("Containerfile");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let (members, bins) = workspace_bins(&root);
    let steps = instructions(&text);

    let workdir = steps
        .iter()
        .find(|(op, _)| op == "WORKDIR")
        .and_then(|(_, args)| args.first().cloned())
        .unwrap_or_else(|| panic!("the builder has no WORKDIR"));
    let mut copied_from_repo = BTreeSet::new();
    let mut copied_bins = BTreeSet::new();
    for (op, args) in steps.iter().filter(|(op, _)| op == "COPY") {
        let (from_builder, args): (bool, Vec<&String>) = (
            args.iter().any(|a| a.starts_with("--from=")),
            args.iter().filter(|a| !a.starts_with("--")).collect(),
        );
        let (dest, sources) = args
            .split_last()
            .unwrap_or_else(|| panic!("{op} without arguments"));
        assert!(!sources.is_empty(), "COPY with no source: {args:?}");
        for source in sources {
            if from_builder {
                // <workdir>/target/[<triple>/]release/<bin>: a release build of a workspace bin.
                let rel = source
                    .strip_prefix(&format!("{workdir}/target/"))
                    .unwrap_or_else(|| {
                        panic!("{source} is not under the builder's {workdir}/target")
                    });
                let parts: Vec<&str> = rel.split('/').collect();
                let (profile, name) = match parts.as_slice() {
                    [profile, name] | [_, profile, name] => (*profile, *name),
                    _ => panic!("{source}: not target/[TRIPLE/]PROFILE/BIN"),
                };
                assert_eq!(profile, "release", "{source}");
                assert!(
                    bins.contains(name),
                    "{source}: {name} is not a binary of the workspace {bins:?}"
                );
                assert!(
                    dest.ends_with(&format!("/{name}")) || dest.ends_with('/'),
                    "{source} is copied to {dest} under another name"
                );
                copied_bins.insert(name.to_owned());
            } else {
                assert!(
                    root.join(source).exists(),
                    "COPY {source}: no such path in the repository"
                );
                copied_from_repo.insert(source.trim_end_matches('/').to_owned());
            }
        }
    }
    for member in &members {
        assert!(
            copied_from_repo.contains(member),
            "the workspace member {member} is not copied into the builder"
        );
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        assert!(copied_from_repo.contains(file), "{file} is not copied");
    }

    // What cargo is asked to build, and what is copied out, are the same set.
    let mut built = BTreeSet::new();
    for (_, args) in steps.iter().filter(|(op, _)| op == "RUN") {
        for pair in args.windows(2) {
            if pair[0] == "--bin" {
                assert!(
                    bins.contains(&pair[1]),
                    "--bin {} is not a workspace binary",
                    pair[1]
                );
                built.insert(pair[1].clone());
            }
        }
    }
    assert_eq!(built, copied_bins, "built versus copied out of the builder");
    // The image is what the DaemonSet runs: the agent, its CLI and the plugin.
    for needed in ["tortie-node", "tortiectl", "tortie"] {
        assert!(copied_bins.contains(needed), "{needed} is not in the image");
    }
}

#[test]
fn continuation_lines_and_comments_are_parsed() {
    let steps = instructions("# c\nFROM a AS b\nRUN x \\\n    && y\n\ncopy --from=b /s/t /d\n");
    assert_eq!(
        steps,
        vec![
            ("FROM".to_owned(), vec!["a".into(), "AS".into(), "b".into()]),
            ("RUN".to_owned(), vec!["x".into(), "&&".into(), "y".into()]),
            (
                "COPY".to_owned(),
                vec!["--from=b".into(), "/s/t".into(), "/d".into()]
            ),
        ]
    );
}
