//! `status`: the lab's nodes (from `lab.json`, pid files and the agents' sockets) and pods
//! (from the apiserver's Pod objects). The JSON form is documented in README.md; tooling
//! relies on it, so fields are only ever added.

use std::cmp::Ordering;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::agents::{self, Health};
use crate::control;
use crate::kube_netns::with_admin_client;
use crate::lab::{Lab, LabConfig};
use crate::process;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub state_dir: String,
    pub prefix: String,
    pub pool: Option<String>,
    pub apiserver: Component,
    pub etcd: Component,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
    /// Why `pods` could not be read, when it could not.
    pub pods_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub pid: Option<i32>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub agent_pid: Option<i32>,
    /// `ready`, `not-ready` or `unreachable`.
    pub health: String,
    /// Why it is not ready, when the agent (or the attempt to reach it) said.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    /// The pod's namespace name when it exists on this machine.
    pub netns: Option<String>,
    pub ip: Option<String>,
}

/// Orders `node-2` before `node-10`.
pub fn node_order(a: &str, b: &str) -> Ordering {
    let key = |s: &str| {
        let digits = s.trim_start_matches(|c: char| !c.is_ascii_digit());
        (
            s.len() - digits.len(),
            s[..s.len() - digits.len()].to_string(),
            digits.parse::<u64>().unwrap_or(0),
        )
    };
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// Gathers the report. A lab that is not up gives an empty report, not an error.
pub fn gather(lab: &Lab) -> Result<Report, Error> {
    let config = LabConfig::load(lab)?;
    let apiserver_pid = process::running(lab, &control::apiserver_pid_file(lab));
    let etcd_pid = process::running(lab, &control::etcd_pid_file(lab));
    let mut nodes = Vec::new();
    for node in config.iter().flat_map(|c| &c.nodes) {
        let agent_pid = process::running(lab, &lab.agent_pid_file(&node.name));
        let health = match agent_pid {
            Some(_) => agents::health_blocking(&lab.agent_socket(&node.name)),
            None => Health::Unreachable("agent not running".into()),
        };
        nodes.push(NodeStatus {
            name: node.name.clone(),
            netns: node.netns.clone(),
            ip: node.ip,
            agent_pid,
            health: health.word().to_string(),
            reason: health.reason().map(str::to_string),
        });
    }
    let (pods, pods_error) = match apiserver_pid {
        Some(_) => match pods(lab) {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        None => (Vec::new(), Some("kube-apiserver is not running".into())),
    };
    Ok(Report {
        state_dir: lab.state_dir().display().to_string(),
        prefix: lab.prefix().to_string(),
        pool: config.as_ref().map(|c| c.pool.to_string()),
        apiserver: Component {
            pid: apiserver_pid,
            url: apiserver_pid.map(|_| lab.apiserver_url()),
        },
        etcd: Component {
            pid: etcd_pid,
            url: None,
        },
        nodes,
        pods,
        pods_error,
    })
}

/// Every Pod object, with the node it is bound to and the IP the lab wrote to its status.
pub fn pods(lab: &Lab) -> Result<Vec<PodStatus>, Error> {
    let list = with_admin_client(lab, |client| async move {
        kube::Api::<Pod>::all(client)
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| Error::Kube(format!("listing pods: {e}")))
    })??;
    let existing = crate::network::existing_netns();
    let mut out: Vec<PodStatus> = list
        .items
        .into_iter()
        .map(|pod| {
            let namespace = pod.metadata.namespace.unwrap_or_default();
            let name = pod.metadata.name.unwrap_or_default();
            let netns = lab.pod_netns(&namespace, &name);
            PodStatus {
                netns: existing.contains(&netns).then_some(netns),
                node: pod.spec.and_then(|s| s.node_name),
                ip: pod.status.and_then(|s| s.pod_ip),
                namespace,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

/// The human form of the report.
pub fn render_text(r: &Report) -> String {
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let mut out = format!(
        "lab {} (prefix {:?}, pool {})\napiserver: {} (pid {})\netcd: pid {}\n\n",
        r.state_dir,
        r.prefix,
        dash(r.pool.clone()),
        dash(r.apiserver.url.clone()),
        dash(r.apiserver.pid.map(|p| p.to_string())),
        dash(r.etcd.pid.map(|p| p.to_string())),
    );
    let mut rows = vec![vec![
        "NODE".to_string(),
        "NETNS".into(),
        "IP".into(),
        "AGENT PID".into(),
        "HEALTH".into(),
    ]];
    for n in &r.nodes {
        let health = match &n.reason {
            Some(reason) if !reason.is_empty() => format!("{} ({reason})", n.health),
            _ => n.health.clone(),
        };
        rows.push(vec![
            n.name.clone(),
            n.netns.clone(),
            n.ip.to_string(),
            dash(n.agent_pid.map(|p| p.to_string())),
            health,
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    if let Some(e) = &r.pods_error {
        out.push_str(&format!("pods: unknown ({e})\n"));
    } else if r.pods.is_empty() {
        out.push_str("no pods\n");
    } else {
        let mut rows = vec![vec![
            "NAMESPACE".to_string(),
            "NAME".into(),
            "NODE".into(),
            "NETNS".into(),
            "IP".into(),
        ]];
        for p in &r.pods {
            rows.push(vec![
                p.namespace.clone(),
                p.name.clone(),
                dash(p.node.clone()),
                dash(p.netns.clone()),
                dash(p.ip.clone()),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sort_numerically() {
        let mut v = vec!["node-10", "node-2", "node-1"];
        v.sort_by(|a, b| node_order(a, b));
        assert_eq!(v, ["node-1", "node-2", "node-10"]);
    }

    #[test]
    fn json_shape_is_the_documented_one() {
        let r = Report {
            state_dir: "/var/lib/tortie-lab".into(),
            prefix: String::new(),
            pool: Some("10.244.0.0/16".into()),
            apiserver: Component {
                pid: Some(10),
                url: Some("https://172.31.0.2:6443".into()),
            },
            etcd: Component {
                pid: Some(9),
                url: None,
            },
            nodes: vec![NodeStatus {
                name: "node-1".into(),
                netns: "node-1".into(),
                ip: Ipv4Addr::new(172, 31, 0, 11),
                agent_pid: None,
                health: "unreachable".into(),
                reason: Some("agent not running".into()),
            }],
            pods: vec![PodStatus {
                namespace: "default".into(),
                name: "a".into(),
                node: Some("node-1".into()),
                netns: Some("pod-default.a".into()),
                ip: Some("10.244.0.1".into()),
            }],
            pods_error: None,
        };
        let v = serde_json::to_value(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["nodes"][0]["ip"], "172.31.0.11");
        assert_eq!(v["nodes"][0]["agent_pid"], serde_json::Value::Null);
        assert_eq!(v["nodes"][0]["health"], "unreachable");
        assert_eq!(v["pods"][0]["netns"], "pod-default.a");
        assert_eq!(v["apiserver"]["url"], "https://172.31.0.2:6443");
        let text = render_text(&r);
        assert!(
            text.contains(
                "node-1  node-1  172.31.0.11  -          unreachable (agent not running)"
            ),
            "{text}"
        );
    }
}
