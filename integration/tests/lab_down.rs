//! Root, real parts: `down` cleans up after an `up` that died half way (SIGKILL), and the
//! reserved subcommands answer "not yet" with exit status 2.

mod lab_support;

use std::time::{Duration, Instant};

use lab_support::{TestLab, assert_nothing_left, recording_agent, text};

#[test]
fn down_cleans_up_after_an_up_killed_half_way() {
    let t = TestLab::new("d");
    let agent = recording_agent(t.scratch());
    let mut up = t
        .cmd(&["up", "--nodes", "2"])
        .env("TORTIE_NODE_BIN", &agent)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning up: {e}"));
    // Kill it once the control plane processes exist, long before it is done.
    let pid_file = tortie_lab::control::apiserver_pid_file(&t.lab);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "up never started the apiserver");
        std::thread::sleep(Duration::from_millis(10));
    }
    up.kill().unwrap_or_else(|e| panic!("killing up: {e}"));
    let _ = up.wait();
    assert!(!tortie_lab::teardown::lab_netns(&t.lab).is_empty(), "nothing was made before the kill");
    assert!(!tortie_lab::teardown::lab_processes(&t.lab).is_empty(), "no process was started before the kill");

    let out = t.ok(&["down"]);
    assert_nothing_left(&t.lab);
    eprintln!("{out}");
    t.ok(&["down"]);
    assert_nothing_left(&t.lab);
}

#[test]
fn down_kills_processes_even_without_pid_files_or_namespaces() {
    let t = TestLab::new("m");
    let agent = recording_agent(t.scratch());
    let out = t.output(t.cmd(&["up", "--nodes", "1", "--agent-timeout", "1"]).env("TORTIE_NODE_BIN", &agent));
    assert!(out.status.success(), "up failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));

    // A second lab with the same prefix must not adopt this one's namespaces.
    let other_state = t.scratch().join("other-state");
    let out = t.output(t.cmd(&["up", "--nodes", "1"]).env(tortie_lab::lab::STATE_ENV, &other_state));
    assert!(!out.status.success(), "a second lab adopted the first one's namespaces");
    assert!(text(&out.stderr).contains("another lab uses the same names"), "{}", text(&out.stderr));
    let other = tortie_lab::Lab::new(&other_state, t.lab.prefix());
    assert!(tortie_lab::process::members(&other).is_empty(), "the refused up started processes");
    t.ok(&["kubectl", "get", "nodes"]);

    // Lose every record: pid files gone, namespaces deleted behind the lab's back.
    for ns in tortie_lab::teardown::lab_netns(&t.lab) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &ns]).output();
    }
    for f in [tortie_lab::control::etcd_pid_file(&t.lab), tortie_lab::control::apiserver_pid_file(&t.lab)] {
        let _ = std::fs::remove_file(f);
    }
    assert!(!tortie_lab::process::members(&t.lab).is_empty(), "etcd and the apiserver should still run");
    t.ok(&["down"]);
    assert_nothing_left(&t.lab);
}

#[test]
fn reserved_subcommands_say_not_yet_with_status_2() {
    let t = TestLab::new("r");
    for args in [
        vec!["pod", "add", "default/a", "--node", "node-1"],
        vec!["pod", "del", "default/a"],
        vec!["ping", "default/a", "default/b"],
        vec!["bench", "pod-startup"],
        vec!["up", "--pods-per-node", "2"],
    ] {
        let out = t.output(&mut t.cmd(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("not yet implemented (issue"), "{args:?}: {}", text(&out.stderr));
    }
    // Refused before anything was made.
    assert!(!t.state().exists());
}
