//! Root, real parts: the agents of a 2-node lab serve Prometheus metrics on Felix's port 9091
//! (the lab turns on `FELIX_PROMETHEUSMETRICSENABLED`, as a user would in the manifest), and
//! each series an operator would alert on is there with a value that follows what happened:
//! CNI calls, IPAM usage, BGP sessions and their prefixes, programmed routes, policy writes.
//!
//! Needs `cargo build -p tortie-node -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use lab_support::TestLab;
use tortie_lab::kube_netns::in_netns;
use tortie_lab::lab::node_ip;

const PORT: u16 = 9091;

/// `GET /metrics` from inside the node's namespace, where the agent listens.
fn scrape(t: &TestLab, node: &str, address: Ipv4Addr) -> String {
    let netns = t.lab.node_netns(node);
    let fetched = in_netns(&netns, move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect((address, PORT))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: tortie\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    });
    let response = match fetched {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("scraping {node} ({address}:{PORT}): {e}"),
        Err(e) => panic!("entering {netns}: {e}"),
    };
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of the sample whose name and labels are exactly `series`, if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn at_least(text: &str, series: &str, min: f64) {
    match sample(text, series) {
        Some(v) if v >= min => {}
        Some(v) => panic!("{series} is {v}, expected at least {min}\n{text}"),
        None => panic!("no sample {series}\n{text}"),
    }
}

#[test]
fn agents_serve_the_series_operators_watch_and_they_follow_events() {
    // One pod per node: each agent has answered one CNI ADD (Allocate + EndpointReady).
    let t = TestLab::up_with_real_agents("m", 2, 1);
    let ip1 = node_ip(1).unwrap_or_else(|| panic!("node 1 has an address"));
    let ip2 = node_ip(2).unwrap_or_else(|| panic!("node 2 has an address"));

    // The mesh session may still be coming up just after `up`.
    let established = format!(
        r#"tortie_bgp_session_state{{peer="{ip2}",peer_type="node-to-node mesh",state="Established"}}"#
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = scrape(&t, "node-1", ip1);
        if sample(&text, &established) == Some(1.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    at_least(&text, &established, 1.0);
    // node-2's block, learned over the mesh and inside the pool.
    at_least(
        &text,
        &format!(r#"tortie_bgp_prefixes_accepted{{peer="{ip2}",peer_type="node-to-node mesh"}}"#),
        1.0,
    );
    at_least(
        &text,
        r#"tortie_cni_request_duration_seconds_count{rpc="Allocate"}"#,
        1.0,
    );
    at_least(
        &text,
        r#"tortie_cni_request_duration_seconds_count{rpc="EndpointReady"}"#,
        1.0,
    );
    at_least(&text, "tortie_ipam_blocks", 1.0);
    at_least(&text, "tortie_ipam_addresses_in_use", 1.0);
    // The pod's /32, this node's block's blackhole, node-2's block.
    at_least(&text, "tortie_routes_programmed", 3.0);
    at_least(&text, "tortie_policy_apply_duration_seconds_count", 1.0);
    assert_eq!(
        sample(&text, "tortie_policy_apply_failures_total"),
        Some(0.0),
        "{text}"
    );
    // Counted from the start, so a dashboard sees a value rather than no series.
    for series in [
        "tortie_policy_drift_repairs_total",
        r#"tortie_watch_restarts_total{kind="Pod"}"#,
    ] {
        assert!(sample(&text, series).is_some(), "no {series}\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            r#"tortie_cni_request_duration_seconds_count{rpc="Release"}"#
        ),
        None,
        "no pod was deleted yet\n{text}"
    );

    // A DEL is counted, and the address it gave back leaves the IPAM gauge.
    let in_use = sample(&text, "tortie_ipam_addresses_in_use").unwrap_or_default();
    t.ok(&["pod", "del", "default/pod-node-1-1"]);
    let after = scrape(&t, "node-1", ip1);
    at_least(
        &after,
        r#"tortie_cni_request_duration_seconds_count{rpc="Release"}"#,
        1.0,
    );
    assert_eq!(
        sample(&after, "tortie_ipam_addresses_in_use"),
        Some(in_use - 1.0),
        "{after}"
    );
}
