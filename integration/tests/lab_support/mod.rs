//! Shared by the `lab_*` tests: a lab with its own state folder and namespace prefix, so it
//! never collides with a developer's `scripts/lab up` or another test, torn down on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tortie_lab::Lab;
use tortie_lab::lab::{PREFIX_ENV, STATE_ENV};

pub struct TestLab {
    pub lab: Lab,
    _dir: tempfile::TempDir,
}

impl TestLab {
    /// `tag` keeps the prefixes of different tests apart; the pid keeps runs apart.
    pub fn new(tag: &str) -> TestLab {
        let dir = tempfile::Builder::new()
            .prefix("tortie-lab-test")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let prefix = format!("tl{}{tag}-", std::process::id());
        let lab = Lab::new(dir.path().join("state"), prefix);
        TestLab { lab, _dir: dir }
    }

    /// A lab `up` with `nodes` nodes, each running the real tortie-node (given 90 s to be
    /// ready: `up` fails unless every agent is), and `pods_per_node` demo pods; fails the
    /// test unless `up` succeeds. Needs `cargo build -p tortie-node -p tortie-cni` first.
    pub fn up_with_real_agents(tag: &str, nodes: u32, pods_per_node: u32) -> TestLab {
        let agent = tortie_lab::agents::agent_binary().filter(|p| p.is_file());
        assert!(
            agent.is_some(),
            "tortie-node is not built: cargo build -p tortie-node -p tortie-cni"
        );
        let t = TestLab::new(tag);
        let out = t.ok(&[
            "up",
            "--nodes",
            &nodes.to_string(),
            "--agent-timeout",
            "90",
            "--pods-per-node",
            &pods_per_node.to_string(),
        ]);
        assert!(out.contains("lab up"), "{out}");
        t
    }

    pub fn state(&self) -> &Path {
        self.lab.state_dir()
    }

    /// `tortie-lab ARGS` for this lab.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tortie-lab"));
        cmd.env(STATE_ENV, self.state())
            .env(PREFIX_ENV, self.lab.prefix())
            .args(args);
        cmd
    }

    /// Runs `tortie-lab ARGS`, failing the test with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(&mut self.cmd(args));
        assert!(
            out.status.success(),
            "tortie-lab {args:?} failed ({}):\n{}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn output(&self, cmd: &mut Command) -> Output {
        cmd.output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
    }

    /// `up --nodes NODES` with the recording agent standing in for tortie-node, no demo pods;
    /// fails the test unless it succeeds. The stand-in serves no status, so it never answers
    /// ready: `--agents-may-be-unready` (after 1 s), which still fails `up` if it exits.
    /// Returns what `up` printed.
    pub fn up_with_recording_agent(&self, nodes: u32) -> String {
        let agent = recording_agent(self.scratch());
        let out = self.output(
            self.cmd(&[
                "up",
                "--nodes",
                &nodes.to_string(),
                "--agent-timeout",
                "1",
                "--agents-may-be-unready",
                "--pods-per-node",
                "0",
            ])
            .env("TORTIE_NODE_BIN", &agent),
        );
        assert!(
            out.status.success(),
            "up failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Waits until every node's agent answers ready (`status -o json`), failing the test
    /// with the last status after `timeout`.
    pub fn wait_agents_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output(&mut self.cmd(&["status", "-o", "json"]));
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
            if !nodes.is_empty() && nodes.iter().all(|n| n["health"] == "ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents not ready after {timeout:?}: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// kubectl as node `node`'s agent would be: from inside its namespace, with its kubeconfig.
    pub fn kubectl_as_node(&self, node: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.node_netns(node), "kubectl"])
            .arg("--kubeconfig")
            .arg(self.lab.node_kubeconfig(node))
            .arg("--cache-dir")
            .arg(self.cache_dir())
            .args(args);
        self.output(&mut cmd)
    }

    /// `tortiectl --socket <node's socket> node status -o json`, run inside the node's netns.
    pub fn node_status(&self, node: &str) -> serde_json::Value {
        let bin = tortie_lab::agents::sibling_binary("tortiectl", "TORTIECTL_BIN")
            .unwrap_or_else(|| panic!("tortiectl is not built: cargo build -p tortie-node"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.node_netns(node)])
            .arg(bin)
            .arg("--socket")
            .arg(self.lab.agent_socket(node))
            .args(["node", "status", "-o", "json"]);
        let out = self.output(&mut cmd);
        assert!(
            out.status.success(),
            "tortiectl node status on {node}: {}",
            text(&out.stderr)
        );
        serde_json::from_str(&text(&out.stdout))
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
    }

    /// A folder that outlives `down` (the test's temp folder, outside the state folder).
    pub fn scratch(&self) -> &Path {
        self._dir.path()
    }

    fn cache_dir(&self) -> PathBuf {
        self._dir.path().join("kubectl-cache")
    }

    /// Stops `node`'s agent with SIGTERM and waits (up to 15 s) until it is gone; returns its pid.
    pub fn stop_agent(&self, node: &str) -> i32 {
        let pid = tortie_lab::process::running(&self.lab, &self.lab.agent_pid_file(node))
            .unwrap_or_else(|| panic!("no agent pid for {node}"));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while tortie_lab::process::is_alive(pid) {
            assert!(
                Instant::now() < deadline,
                "{node}'s agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pid
    }

    /// The first address of lab pod `namespace/name`, from the lab's record of it.
    pub fn pod_ip(&self, pod: &str) -> std::net::IpAddr {
        let r: tortie_lab::pod::PodRef = pod.parse().unwrap_or_else(|e| panic!("{e}"));
        let rec = tortie_lab::pod::load(&self.lab, &r)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the lab has no pod {pod}"));
        rec.ips
            .first()
            .copied()
            .unwrap_or_else(|| panic!("{pod} has no address"))
    }

    /// Starts every stopped agent again, as `up` does, and fails unless all become ready.
    pub fn restart_agents(&self) {
        let config = tortie_lab::LabConfig::load(&self.lab)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no lab.json"));
        let started =
            tortie_lab::agents::ensure_all(&self.lab, &config).unwrap_or_else(|e| panic!("{e}"));
        let outcomes = tortie_lab::agents::settle(&self.lab, started, Duration::from_secs(30));
        assert!(
            outcomes
                .iter()
                .all(|(_, o)| matches!(o, tortie_lab::agents::Outcome::Ready { .. })),
            "agent restart: {outcomes:?}"
        );
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // Whatever the test left, even after a failed assertion.
        if let Err(e) = tortie_lab::teardown::down(&self.lab) {
            eprintln!("cleanup of {}: {e}", self.state().display());
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails unless no trace of `lab` remains: namespaces, processes, mounts, files.
pub fn assert_nothing_left(lab: &Lab) {
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let ours: Vec<&String> = netns
        .iter()
        .filter(|n| n.starts_with(lab.prefix()))
        .collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");

    let state = lab.state_dir().as_os_str().as_encoded_bytes().to_vec();
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .unwrap_or_else(|e| panic!("/proc: {e}"))
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let mentions = |hay: &[u8]| hay.windows(state.len()).any(|w| w == state.as_slice());
        if (mentions(&cmdline) || mentions(&environ)) && tortie_lab::process::is_alive(pid) {
            procs.push(format!("{pid}: {}", text(&cmdline).replace('\0', " ")));
        }
    }
    assert!(procs.is_empty(), "processes left: {procs:#?}");

    let mounts = tortie_lab::teardown::mounts_under(lab.state_dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        !lab.state_dir().exists(),
        "state folder {} left",
        lab.state_dir().display()
    );
}

/// A stand-in agent for tests that check the lab's process handling, not the agent: it
/// records the environment and the namespace's addresses it was started with, then waits.
/// As `install-cni` it records its environment (`.install-cni.env`) and exits.
pub fn recording_agent(dir: &Path) -> PathBuf {
    let path = dir.join("recording-agent");
    std::fs::write(
        &path,
        "#!/bin/sh\nif [ \"$1\" = install-cni ]; then env > \"$TORTIE_AGENT_SOCKET.install-cni.env\"; exit 0; fi\nenv > \"$TORTIE_AGENT_SOCKET.env\"\nip -o -4 addr show dev eth0 > \"$TORTIE_AGENT_SOCKET.addr\"\nexec sleep 600\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    path
}
