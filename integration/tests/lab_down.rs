//! Root, real parts: `down` cleans up after an `up` that died half way (SIGKILL) or lost its
//! records, returns only once every lab process has exited (and reaped those it is the
//! parent of), a second lab cannot adopt the first one's namespaces, and bad input is
//! refused before anything is made.

mod lab_support;

use std::path::Path;
use std::time::{Duration, Instant};

use lab_support::{TestLab, assert_nothing_left, recording_agent, text};

#[test]
fn down_cleans_up_after_an_up_killed_half_way() {
    let t = TestLab::new("d");
    let agent = recording_agent(t.scratch());
    let mut up = t
        .cmd(&["up", "--nodes", "2", "--pods-per-node", "0"])
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
    assert!(
        !tortie_lab::teardown::lab_netns(&t.lab).is_empty(),
        "nothing was made before the kill"
    );
    assert!(
        !tortie_lab::teardown::lab_processes(&t.lab).is_empty(),
        "no process was started before the kill"
    );

    let out = t.ok(&["down"]);
    assert_nothing_left(&t.lab);
    eprintln!("{out}");
    t.ok(&["down"]);
    assert_nothing_left(&t.lab);
}

#[test]
fn down_kills_processes_even_without_pid_files_or_namespaces() {
    let t = TestLab::new("m");
    t.up_with_recording_agent(1);

    // A second lab with the same prefix must not adopt this one's namespaces.
    let other_state = t.scratch().join("other-state");
    let out = t.output(
        t.cmd(&["up", "--nodes", "1"])
            .env(tortie_lab::lab::STATE_ENV, &other_state),
    );
    assert!(
        !out.status.success(),
        "a second lab adopted the first one's namespaces"
    );
    assert!(
        text(&out.stderr).contains("another lab uses the same names"),
        "{}",
        text(&out.stderr)
    );
    let other = tortie_lab::Lab::new(&other_state, t.lab.prefix());
    assert!(
        tortie_lab::process::members(&other).is_empty(),
        "the refused up started processes"
    );
    t.ok(&["kubectl", "get", "nodes"]);

    // Lose every record: pid files gone, namespaces deleted behind the lab's back.
    for ns in tortie_lab::teardown::lab_netns(&t.lab) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .output();
    }
    for f in [
        tortie_lab::control::etcd_pid_file(&t.lab),
        tortie_lab::control::apiserver_pid_file(&t.lab),
    ] {
        let _ = std::fs::remove_file(f);
    }
    assert!(
        !tortie_lab::process::members(&t.lab).is_empty(),
        "etcd and the apiserver should still run"
    );
    t.ok(&["down"]);
    assert_nothing_left(&t.lab);
}

/// `scripts/lab down` is never the parent of a lab process (`up` started them and exited), but
/// a caller of the library's `down` may be: a test that restarts an agent, as
/// `TestLab::restart_agents` does. Either way, once `down` returns no lab process runs, and
/// none is left as a zombie of the caller.
#[test]
fn down_returns_once_every_process_exited_and_reaps_its_own_children() {
    let t = TestLab::new("w");
    t.up_with_recording_agent(2);
    let config = tortie_lab::LabConfig::load(&t.lab)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no lab.json"));

    // node-2's agent again, started by this process.
    t.stop_agent("node-2");
    let agent = recording_agent(t.scratch());
    let pod = tortie_lab::agents::PodTemplate::load().unwrap_or_else(|e| panic!("{e}"));
    let specs = tortie_lab::agents::specs(&t.lab, &config, &config.nodes[1], &agent, &pod)
        .unwrap_or_else(|e| panic!("{e}"));
    let child = tortie_lab::process::spawn(&t.lab, &specs.agent).unwrap_or_else(|e| panic!("{e}"));
    let ours = i32::try_from(child.id()).unwrap_or_else(|e| panic!("{e}"));
    // Not waited for, as `up` leaves the agents it starts.
    drop(child);

    let before = tortie_lab::teardown::lab_processes(&t.lab);
    assert!(before.contains(&ours), "{ours} not among {before:?}");
    // etcd, the apiserver, two agents at least.
    assert!(before.len() >= 4, "{before:?}");

    // node-1's agent, etcd and the apiserver are children of init since `up` exited.
    tortie_lab::teardown::down(&t.lab).unwrap_or_else(|e| panic!("{e}"));
    let alive: Vec<i32> = before
        .iter()
        .copied()
        .filter(|p| tortie_lab::process::is_alive(*p))
        .collect();
    assert!(alive.is_empty(), "down returned while {alive:?} still ran");
    assert!(
        !Path::new(&format!("/proc/{ours}")).exists(),
        "down left {ours}, a child of this process, as a zombie"
    );
    assert_nothing_left(&t.lab);
}

#[test]
fn bad_input_is_refused_before_anything_is_made() {
    let t = TestLab::new("r");
    for (args, why) in [
        (
            vec!["up", "--nodes", "0"],
            "--nodes 0: must be between 1 and 200",
        ),
        (
            vec!["up", "--nodes", "201"],
            "--nodes 201: must be between 1 and 200",
        ),
        (
            vec!["up", "--pool", "10.244.0.0/33"],
            "invalid value '10.244.0.0/33'",
        ),
        (
            vec!["up", "--agents-may-be-unready"],
            "--agents-may-be-unready needs --pods-per-node 0",
        ),
        (
            vec!["exec", "node-1", "--", "true"],
            "does not exist (is the lab up?",
        ),
        (vec!["exec", "eth0", "--", "true"], "is not a lab node"),
        (
            vec!["kubectl", "get", "nodes"],
            "run `scripts/lab up` first",
        ),
    ] {
        let out = t.output(&mut t.cmd(&args));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            text(&out.stderr).contains(why),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            tortie_lab::teardown::lab_netns(&t.lab).is_empty(),
            "{args:?} made namespaces"
        );
    }
    assert!(tortie_lab::process::members(&t.lab).is_empty());
}
