//! `tortie-node health --live | --ready`: the DaemonSet's exec probes (manifests/tortie.yaml).
//! Both ask the running agent over its socket (`Status.GetStatus`), as `tortiectl` does.
//!
//! - Live: the agent answers and lists no stalled task. The answer needs the API server's
//!   task and, when the node runs BGP, the speaker's task (it lists the peers), so a wedged
//!   speaker fails the probe too; the tasks with a heartbeat (agent/src/run/health.rs
//!   `Heartbeat`) are listed when they stop making progress.
//! - Ready: the agent answers `ready`: the datastore is reachable, the policy dataplane is
//!   written, and BGP is up as calico-node's `-bird-ready` wants it (agent/src/run/health.rs
//!   `bgp_ready`).

use std::path::Path;
use std::time::Duration;

use tortie_api::v1::StatusRequest;
use tortie_api::v1::status_client::StatusClient;

/// How long a probe waits for the answer. The manifest gives the probe longer than this
/// (`timeoutSeconds`), so that the probe's own line, not the kubelet's timeout, says why.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the agent behind a socket says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ready,
    /// It answers, and says why it is not ready.
    NotReady(String),
    /// It answers, and names the tasks that have stopped making progress.
    Stalled(String),
    /// It does not answer: not running, or stuck.
    Unreachable(String),
}

/// Asks the agent behind `socket` for its status, waiting at most `timeout`. A unix socket
/// is reached by path, from any network namespace.
pub async fn ask(socket: &Path, timeout: Duration) -> Answer {
    let status = async {
        let channel = tortie_api::connect_unix(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {}", socket.display(), root_cause(&e)))?;
        StatusClient::new(channel)
            .get_status(StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("GetStatus: {}", e.message()))
    };
    match tokio::time::timeout(timeout, status).await {
        Ok(Ok(reply)) if !reply.stalled_tasks.is_empty() => {
            Answer::Stalled(reply.stalled_tasks.join("; "))
        }
        Ok(Ok(reply)) if reply.ready => Answer::Ready,
        Ok(Ok(reply)) => Answer::NotReady(reply.reason),
        Ok(Err(why)) => Answer::Unreachable(why),
        Err(_) => Answer::Unreachable(format!("no answer within {timeout:?}")),
    }
}

/// The innermost error: tonic's outer ones only say "transport error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
}

/// The probe's verdict on `answer`: `Ok` with what passed, or `Err` with the one line that
/// says why not.
pub fn verdict(probe: Probe, answer: &Answer) -> Result<&'static str, String> {
    match (probe, answer) {
        (_, Answer::Unreachable(why)) => Err(format!("tortie-node is not running: {why}")),
        (Probe::Live, Answer::Stalled(why)) => Err(format!("tortie-node is not live: {why}")),
        (Probe::Ready, Answer::Stalled(why)) => Err(format!("tortie-node is not ready: {why}")),
        (Probe::Live, _) => Ok("tortie-node is live"),
        (Probe::Ready, Answer::Ready) => Ok("tortie-node is ready"),
        (Probe::Ready, Answer::NotReady(why)) => Err(format!("tortie-node is not ready: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_needs_an_answer_ready_needs_ready() {
        let not_ready = Answer::NotReady("starting: restoring local endpoints".into());
        let gone = Answer::Unreachable("cannot connect to /x.sock: No such file".into());
        assert_eq!(
            verdict(Probe::Live, &Answer::Ready),
            Ok("tortie-node is live")
        );
        assert_eq!(verdict(Probe::Live, &not_ready), Ok("tortie-node is live"));
        assert_eq!(
            verdict(Probe::Ready, &not_ready),
            Err("tortie-node is not ready: starting: restoring local endpoints".into())
        );
        assert_eq!(
            verdict(Probe::Ready, &Answer::Ready),
            Ok("tortie-node is ready")
        );
        let stalled = Answer::Stalled("IPAM task has made no progress for 130s".into());
        assert_eq!(
            verdict(Probe::Live, &stalled),
            Err("tortie-node is not live: IPAM task has made no progress for 130s".into())
        );
        assert_eq!(
            verdict(Probe::Ready, &stalled),
            Err("tortie-node is not ready: IPAM task has made no progress for 130s".into())
        );
        for probe in [Probe::Live, Probe::Ready] {
            assert_eq!(
                verdict(probe, &gone),
                Err("tortie-node is not running: cannot connect to /x.sock: No such file".into())
            );
        }
    }

    #[tokio::test]
    async fn an_absent_agent_is_unreachable_and_says_where_it_looked() {
        let dir = std::env::temp_dir().join(format!("tortie-probe-{}", std::process::id()));
        let socket = dir.join("agent.sock");
        match ask(&socket, ANSWER_TIMEOUT).await {
            Answer::Unreachable(why) => assert!(
                why.starts_with(&format!("cannot connect to {}: ", socket.display())),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
