//! `TORTIE_LOG_FORMAT`: the agent's logs as JSON lines, and a bad value refused before
//! anything starts. Runs the real `tortie-node run` binary, pointed at a kubeconfig that
//! does not exist, so it logs its first start-up phases and stops where it cannot connect.

use std::process::{Command, Output};

use serde_json::Value;

fn tortie_node_run(log_format: &str) -> Output {
    let dir = std::env::temp_dir().join(format!("tortie-log-format-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_tortie-node"))
        .arg("run")
        .env_clear()
        .env("TORTIE_LOG_FORMAT", log_format)
        .env("NODENAME", "log-test")
        .env("KUBECONFIG", dir.join("absent-kubeconfig"))
        // A variable tortie does not read: one warning naming it.
        .env("FELIX_LOGSEVERITYSCREEN", "info")
        .output()
        .unwrap_or_else(|e| panic!("running tortie-node: {e}"))
}

#[test]
fn json_logs_are_one_object_per_line_and_name_the_start_up_phase() {
    let out = tortie_node_run("json");
    assert!(!out.status.success(), "it cannot connect, so it must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines: Vec<&str> = stderr.lines().collect();
    // The last line is the exit message, not a log line.
    let exit = lines.pop().unwrap_or_default();
    assert!(
        exit.starts_with("tortie-node: connecting to the apiserver"),
        "{stderr}"
    );
    let logs: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<(&str, &str)> = logs
        .iter()
        .map(|v| {
            (
                v["level"].as_str().unwrap_or_default(),
                v["fields"]["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        messages.contains(&(
            "WARN",
            "FELIX_LOGSEVERITYSCREEN is set but tortie does not read it: ignored"
        )),
        "{stderr}"
    );
    assert!(
        messages.contains(&("INFO", "starting tortie-node")),
        "{stderr}"
    );
    assert_eq!(
        messages.last(),
        Some(&("INFO", "connecting to the apiserver")),
        "the last phase logged is where it stopped: {stderr}"
    );
}

#[test]
fn text_logs_are_not_json() {
    let out = tortie_node_run("text");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let connecting = stderr
        .lines()
        .find(|l| l.contains("connecting to the apiserver") && l.contains("INFO"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        serde_json::from_str::<Value>(connecting).is_err(),
        "{connecting}"
    );
}

#[test]
fn a_bad_log_format_stops_the_agent_and_names_the_variable() {
    let out = tortie_node_run("yaml");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tortie-node: TORTIE_LOG_FORMAT=\"yaml\": expected \"text\" or \"json\"\n"
    );
}
