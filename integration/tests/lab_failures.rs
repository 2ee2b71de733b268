//! Root, real parts: the lab never reports success it did not have. `up` exits non-zero,
//! naming each agent that is not ready and why, while the control plane stays up to debug
//! them; `scripts/lab up` stops when the build fails rather than run an earlier build.

mod lab_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use lab_support::{TestLab, text};

/// A stand-in for tortie-node that behaves by node: node-1's exits with an error, node-2's
/// runs but never answers on its socket, node-3's is the real agent.
fn mixed_agent(dir: &Path, real: &Path) -> PathBuf {
    let path = dir.join("mixed-agent");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             case \"$NODENAME\" in\n\
             node-1) echo 'stand-in: datastore unreachable, giving up' >&2; exit 3 ;;\n\
             node-2) exec sleep 600 ;;\n\
             *) exec '{}' \"$@\" ;;\n\
             esac\n",
            real.display()
        ),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    path
}

/// The line of `up`'s error that names `node` (`node-N: why; last lines of LOG:`), if any.
fn entry<'a>(stderr: &'a str, node: &str) -> Option<&'a str> {
    stderr
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{node}: ")))
}

fn assert_failed(what: &str, out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(
        !text(&out.stdout).contains("lab up:"),
        "{what} printed a success line:\n{}",
        text(&out.stdout)
    );
    stderr
}

#[test]
fn up_fails_naming_each_agent_that_is_not_ready_and_keeps_the_control_plane() {
    let real = tortie_lab::agents::agent_binary()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("tortie-node is not built: cargo build -p tortie-node"));
    let t = TestLab::new("f");
    let agent = mixed_agent(t.scratch(), &real);
    let up = |bin: &Path, extra: &[&str]| {
        let mut args = vec!["up", "--nodes", "3", "--pods-per-node", "0"];
        args.extend_from_slice(extra);
        t.output(t.cmd(&args).env("TORTIE_NODE_BIN", bin))
    };

    // The real agent needs a few seconds; node-2's never answers, so this takes the timeout.
    let out = up(&agent, &["--agent-timeout", "30"]);
    let stderr = assert_failed("up with an exiting and a silent agent", &out);
    let node1 = entry(&stderr, "node-1").unwrap_or_else(|| panic!("node-1 not named:\n{stderr}"));
    assert!(node1.contains("EXITED (exit status: 3)"), "{stderr}");
    assert!(
        stderr.contains("stand-in: datastore unreachable, giving up"),
        "node-1's log is not shown:\n{stderr}"
    );
    let node2 = entry(&stderr, "node-2").unwrap_or_else(|| panic!("node-2 not named:\n{stderr}"));
    assert!(node2.contains("but unreachable"), "{stderr}");
    assert!(
        entry(&stderr, "node-3").is_none(),
        "the ready agent is named:\n{stderr}"
    );
    assert!(stderr.contains("2 of 3 agents not ready"), "{stderr}");
    assert!(
        text(&out.stdout).contains("agent node-3: ready"),
        "{}",
        text(&out.stdout)
    );

    // What is there to debug stays: the control plane and the agents that run.
    t.ok(&["kubectl", "get", "nodes"]);
    for node in ["node-2", "node-3"] {
        assert!(
            tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file(node)).is_some(),
            "{node}'s agent was stopped"
        );
    }

    // A binary that is not there: node-1's agent cannot be started again.
    let missing = t.scratch().join("not-built/tortie-node");
    let out = up(&missing, &["--agent-timeout", "1"]);
    let stderr = assert_failed("up without an agent binary", &out);
    let node1 = entry(&stderr, "node-1").unwrap_or_else(|| panic!("node-1 not named:\n{stderr}"));
    assert!(node1.contains("NOT STARTED"), "{stderr}");
    assert!(
        node1.contains(&format!(
            "TORTIE_NODE_BIN={} is not a file",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(entry(&stderr, "node-2").is_some(), "{stderr}");
    assert!(entry(&stderr, "node-3").is_none(), "{stderr}");

    // --agents-may-be-unready lets node-2's silent agent pass, never node-1's exiting one.
    let out = up(&agent, &["--agent-timeout", "1", "--agents-may-be-unready"]);
    let stderr = assert_failed("up --agents-may-be-unready with an exiting agent", &out);
    assert!(entry(&stderr, "node-1").is_some(), "{stderr}");
    assert!(entry(&stderr, "node-2").is_none(), "{stderr}");
    assert!(stderr.contains("1 of 3 agents not ready"), "{stderr}");
}

/// A `cargo` that fails to build `package` (and builds everything else, doing nothing).
fn failing_cargo(dir: &Path, package: &str) -> PathBuf {
    let bin = dir.join(format!("cargo-failing-{package}"));
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\n\
             case \" $* \" in\n\
             *' -p {package} '*) echo 'error: could not compile `{package}` (stand-in cargo)' >&2; exit 101 ;;\n\
             esac\n\
             exit 0\n"
        ),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", cargo.display()));
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    bin
}

#[test]
fn scripts_lab_up_stops_when_the_build_fails() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab");
    let t = TestLab::new("b");
    let path = std::env::var("PATH").unwrap_or_default();
    for package in ["tortie-node", "tortie-cni", "tortie-lab"] {
        let cargo = failing_cargo(t.scratch(), package);
        let out = t.output(
            std::process::Command::new(&script)
                .args(["up", "--nodes", "1", "--pods-per-node", "0"])
                .env(tortie_lab::lab::STATE_ENV, t.state())
                .env(tortie_lab::lab::PREFIX_ENV, t.lab.prefix())
                .env("PATH", format!("{}:{path}", cargo.display()))
                .env_remove("TORTIE_LAB_SKIP_BUILD")
                .env_remove("CARGO_TARGET_DIR"),
        );
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "scripts/lab up went on after `{package}` failed to build:\n{}\n{stderr}",
            text(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("could not compile `{package}`")),
            "cargo's error is not shown:\n{stderr}"
        );
        assert!(
            stderr.contains("not starting the lab with binaries from an earlier build"),
            "{stderr}"
        );
        assert!(
            !t.state().exists(),
            "tortie-lab ran (it made {}) although `{package}` did not build",
            t.state().display()
        );
    }
}
