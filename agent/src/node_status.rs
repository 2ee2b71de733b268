//! `tortiectl node status`: Calico's table (as `calicoctl node status` prints it) and the
//! same data as JSON. Pure rendering; tortiectl does the gRPC call.

use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tortie_api::v1::{BgpPeer, StatusReply};
use tortie_bgp::PeerStatus;

/// One row of the table, also the JSON shape of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRow {
    pub peer_address: String,
    pub peer_type: String,
    /// Calico's STATE column: `up` when Established, else `start` (BIRD's words).
    pub state: String,
    /// Calico's SINCE column: the time of day of the last change, or its date when that
    /// was not today.
    pub since: String,
    pub since_unix: i64,
    pub info: String,
    pub fsm_state: String,
    pub asn: u32,
    pub prefixes_received: u64,
    pub prefixes_accepted: u64,
    pub last_error: String,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub running: bool,
    pub ready: bool,
    pub node_name: String,
    pub version: String,
    pub reason: String,
    pub ipv4_peers: Vec<PeerRow>,
    pub ipv6_peers: Vec<PeerRow>,
}

/// Converts a status reply. `local` turns a timestamp into the viewer's wall clock (local
/// time in tortiectl, UTC in tests) and `today` is the viewer's date.
pub fn node_status(
    reply: &StatusReply,
    local: impl Fn(DateTime<Utc>) -> chrono::NaiveDateTime,
    today: NaiveDate,
) -> NodeStatus {
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    for p in &reply.bgp_peers {
        let row = peer_row(p, &local, today);
        match p.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => ipv6.push(row),
            _ => ipv4.push(row),
        }
    }
    NodeStatus {
        running: true,
        ready: reply.ready,
        node_name: reply.node_name.clone(),
        version: reply.version.clone(),
        reason: reply.reason.clone(),
        ipv4_peers: ipv4,
        ipv6_peers: ipv6,
    }
}

fn peer_row(
    p: &BgpPeer,
    local: &impl Fn(DateTime<Utc>) -> chrono::NaiveDateTime,
    today: NaiveDate,
) -> PeerRow {
    let since = DateTime::<Utc>::from_timestamp(p.since_unix, 0)
        .map(|t| {
            let t = local(t);
            if t.date() == today {
                t.format("%H:%M:%S").to_string()
            } else {
                t.format("%Y-%m-%d").to_string()
            }
        })
        .unwrap_or_default();
    let established = p.state == "Established";
    let info = if !p.info.is_empty() {
        p.info.clone()
    } else if !established && !p.last_error.is_empty() {
        format!("{} {}", p.state, p.last_error)
    } else {
        p.state.clone()
    };
    PeerRow {
        peer_address: p.address.clone(),
        peer_type: p.peer_type.clone(),
        state: if established { "up" } else { "start" }.to_owned(),
        since,
        since_unix: p.since_unix,
        info,
        fsm_state: p.state.clone(),
        asn: p.asn,
        prefixes_received: p.prefixes_received,
        prefixes_accepted: p.prefixes_accepted,
        last_error: p.last_error.clone(),
        capabilities: p.capabilities.clone(),
    }
}

/// What `tortiectl node status` prints when the daemon does not answer.
pub const NOT_RUNNING: &str = "tortie process is not running.\n";

/// Calico's text output.
pub fn render_table(status: &NodeStatus) -> String {
    let mut out = String::from("tortie process is running.\n");
    // Calico's output has no such line; a healthy node prints exactly what calicoctl does.
    if !status.ready {
        out.push_str(&format!("tortie is not ready: {}\n", status.reason));
    }
    for (family, rows) in [("IPv4", &status.ipv4_peers), ("IPv6", &status.ipv6_peers)] {
        out.push_str(&format!("\n{family} BGP status\n"));
        if rows.is_empty() {
            out.push_str(&format!("No {family} peers found.\n"));
            continue;
        }
        let cells: Vec<[&str; 5]> = rows
            .iter()
            .map(|r| {
                [
                    r.peer_address.as_str(),
                    r.peer_type.as_str(),
                    r.state.as_str(),
                    r.since.as_str(),
                    r.info.as_str(),
                ]
            })
            .collect();
        out.push_str(&table(
            ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"],
            &cells,
        ));
    }
    out
}

pub fn render_json(status: &NodeStatus) -> Result<String, serde_json::Error> {
    Ok(serde_json::to_string_pretty(status)? + "\n")
}

/// A table the way Go's tablewriter draws it for calicoctl: centred headers, left-aligned
/// cells, one space of padding, `+`/`-`/`|` borders.
pub(crate) fn table<const N: usize>(headers: [&str; N], rows: &[[&str; N]]) -> String {
    let mut widths = headers.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = rule.clone();
    for (h, w) in headers.iter().zip(widths) {
        let gap = w - h.chars().count();
        let left = gap / 2;
        out.push_str(&format!(
            "| {}{}{} ",
            " ".repeat(left),
            h,
            " ".repeat(gap - left)
        ));
    }
    out.push_str("|\n");
    out.push_str(&rule);
    for row in rows {
        for (cell, w) in row.iter().zip(widths) {
            out.push_str(&format!("| {cell:<w$} "));
        }
        out.push_str("|\n");
    }
    out.push_str(&rule);
    out
}

/// The API's row for one peer of the speaker, as `node status` shows it. `info` is left to
/// tortiectl, which composes Calico's INFO column from the state and the last error.
pub fn api_peer(p: &PeerStatus) -> BgpPeer {
    BgpPeer {
        address: p.address.to_string(),
        peer_type: p.peer_type.clone(),
        state: p.state.to_string(),
        since_unix: p
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        info: String::new(),
        asn: p.asn,
        prefixes_received: p.prefixes_received as u64,
        prefixes_accepted: p.prefixes_accepted as u64,
        last_error: p.last_error.clone().unwrap_or_default(),
        capabilities: p.capabilities.clone(),
        graceful_restart: p.graceful_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn peer(address: &str, peer_type: &str, state: &str, since_unix: i64) -> BgpPeer {
        BgpPeer {
            address: address.into(),
            peer_type: peer_type.into(),
            state: state.into(),
            since_unix,
            info: String::new(),
            asn: 64512,
            prefixes_received: 3,
            prefixes_accepted: 2,
            last_error: String::new(),
            capabilities: vec!["mp-ipv4-unicast".into(), "4-octet-as".into()],
            graceful_restart: false,
        }
    }

    /// 2016-11-21 23:30:04 UTC, the time in calicoctl's documented example.
    const T: i64 = 1_479_771_004;

    fn render(reply: &StatusReply) -> NodeStatus {
        let today = NaiveDate::from_ymd_opt(2016, 11, 21).unwrap_or_default();
        node_status(reply, |t| t.naive_utc(), today)
    }

    /// Compares with `testdata/<name>`; `TORTIE_BLESS=1` rewrites the file instead.
    fn golden(name: &str, got: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        if std::env::var_os("TORTIE_BLESS").is_some() {
            std::fs::write(&path, got).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            return;
        }
        let want =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            got,
            want,
            "{} differs (TORTIE_BLESS=1 to accept)",
            path.display()
        );
    }

    #[test]
    fn design_md_example() {
        let reply = StatusReply {
            ready: true,
            node_name: "node-1".into(),
            bgp_peers: vec![peer("172.17.8.102", "node-to-node mesh", "Established", T)],
            ..Default::default()
        };
        golden("node_status_design.txt", &render_table(&render(&reply)));
    }

    #[test]
    fn mixed_families_and_states() {
        let mut refused = peer("10.0.0.3", "global", "Active", T - 86_400);
        refused.last_error = "Socket: Connection refused".into();
        let reply = StatusReply {
            ready: true,
            node_name: "router".into(),
            bgp_peers: vec![
                peer("10.0.0.2", "global", "Established", T),
                refused,
                peer("fd00::2", "node specific", "OpenSent", T),
            ],
            ..Default::default()
        };
        let status = render(&reply);
        golden("node_status_mixed.txt", &render_table(&status));
        golden(
            "node_status_mixed.json",
            &render_json(&status).unwrap_or_else(|e| panic!("{e}")),
        );
    }

    #[test]
    fn no_peers_at_all() {
        let status = render(&StatusReply {
            ready: true,
            ..Default::default()
        });
        assert_eq!(
            render_table(&status),
            "tortie process is running.\n\nIPv4 BGP status\nNo IPv4 peers found.\n\nIPv6 BGP status\nNo IPv6 peers found.\n"
        );
    }

    #[test]
    fn a_node_that_is_not_ready_says_why_before_its_peers() {
        let status = render(&StatusReply {
            ready: false,
            reason:
                "policy dataplane failing, pods isolated (fail closed): iptables-restore: exit 1"
                    .into(),
            ..Default::default()
        });
        assert!(
            render_table(&status).starts_with(
                "tortie process is running.\ntortie is not ready: policy dataplane failing, pods isolated (fail closed): iptables-restore: exit 1\n\nIPv4 BGP status\n"
            ),
            "{}",
            render_table(&status)
        );
    }
}
