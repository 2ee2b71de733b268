//! Root, real parts: an agent SIGKILLed and restarted during a cross-node flow (issue 10,
//! "Hitless agent restart"). A two-node lab with its real agents and one pod per node; the
//! pods ping each other at 100 Hz, and `ip monitor route` watches every node's route table,
//! from before the kill until the restarted agent is ready, its mesh sessions are
//! Established again, it has swept the stale routes of its initial sync, and a few seconds
//! more have passed. Then: not one echo request went unanswered, no pod route and no block
//! route was deleted on any node (not even for a moment), and every node holds the tortie
//! routes it held before.
//!
//! One test kills the agent of the pinged pod's node, the other that of the pinging pod's
//! node (so the first node is the peer that keeps the restarting agent's routes).
//!
//! Each test has its own lab, removed even when it fails. Needs `cargo build -p tortie-node
//! -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use lab_support::{TestLab, text};
use tortie_lab::pod::{self, AddOptions, PodRef};

const NODES: u32 = 2;
/// Bound on each wait for something that normally takes a second or two.
const WAIT: Duration = Duration::from_secs(60);
/// Echo requests per `ping` run: the pinger runs it again and again until told to stop,
/// so that it is never interrupted with a request in flight (which it would count lost).
const PINGS_PER_RUN: u32 = 200;
/// A route no tortie agent writes, added and removed in each node until its monitor
/// reports it (then the monitor is listening). TEST-NET-1 (RFC 5737), blackholed: nothing is ever sent to it.
const MARKER: &str = "192.0.2.1/32";

#[test]
fn the_pinged_pods_agent_restarts_without_losing_a_packet_or_a_route() {
    restart_during_a_cross_node_flow("hr1", "node-1");
}

#[test]
fn the_pinging_pods_agent_restarts_without_losing_a_packet_or_a_route() {
    restart_during_a_cross_node_flow("hr2", "node-2");
}

fn restart_during_a_cross_node_flow(tag: &str, restarted: &str) {
    let t = TestLab::up_with_real_agents(tag, NODES, 0);
    t.wait_agents_ready(Duration::from_secs(90));
    let config = tortie_lab::LabConfig::load(&t.lab)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no lab.json"));
    let nodes: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    let pinged = add_pod(&t, "hitless/pinged", "node-1");
    let pinging = add_pod(&t, "hitless/pinging", "node-2");
    for node in &nodes {
        wait_mesh_established(&t, node);
    }
    wait_reachable(&pinging, &pinged);
    let before: Vec<Vec<String>> = nodes.iter().map(|n| tortie_routes(&t, n)).collect();

    let monitors: Vec<RouteMonitor> = nodes
        .iter()
        .map(|n| RouteMonitor::start(&t.lab.node_netns(n), &t.scratch().join(n)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flows = [
        Pinger::start(&pinging, &pinged, &stop),
        Pinger::start(&pinged, &pinging, &stop),
    ];
    // The flow runs before the kill.
    std::thread::sleep(Duration::from_secs(1));

    let log = t.lab.agent_log(restarted);
    let sweeps_before = sweeps_logged(&log);
    let pid = tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file(restarted))
        .unwrap_or_else(|| panic!("{restarted}'s agent is not running"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
        .unwrap_or_else(|e| panic!("{e}"));
    while tortie_lab::process::is_alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    t.restart_agents();
    let sessions: Vec<tortie_api::v1::BgpPeer> = nodes
        .iter()
        .flat_map(|n| wait_mesh_established(&t, n))
        .collect();
    wait_until(
        &format!("{restarted}'s agent sweeping stale routes"),
        || {
            check(sweeps_logged(&log) > sweeps_before, || {
                format!("see {}", log.display())
            })
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let flows: Vec<Flow> = flows.into_iter().map(Pinger::finish).collect();
    let events: Vec<(String, String)> = nodes
        .iter()
        .zip(monitors)
        .flat_map(|(n, m)| m.finish().into_iter().map(move |l| (n.clone(), l)))
        .collect();

    for f in &flows {
        assert!(
            f.transmitted >= u64::from(PINGS_PER_RUN),
            "too few echo requests from {} to {} to tell anything: {f:?}",
            f.from,
            f.to
        );
        assert_eq!(
            f.received, f.transmitted,
            "echo requests from {} to {} lost across the restart of {restarted}'s agent: {f:?}",
            f.from, f.to
        );
    }
    let ours = |line: &str| deleted_destination(line).is_some_and(|d| in_pool(config.pool, d));
    let deleted: Vec<&(String, String)> = events.iter().filter(|(_, l)| ours(l)).collect();
    assert!(
        deleted.is_empty(),
        "pod or block routes deleted across the restart of {restarted}'s agent: {deleted:#?}\nall route events: {events:#?}"
    );
    let after: Vec<Vec<String>> = nodes.iter().map(|n| tortie_routes(&t, n)).collect();
    assert_eq!(
        after, before,
        "the tortie routes of {nodes:?} changed across the restart of {restarted}'s agent"
    );
    // What made it so: the mesh sessions negotiated RFC 4724.
    assert!(
        sessions
            .iter()
            .all(|p| p.capabilities.iter().any(|c| c == "graceful-restart")),
        "mesh sessions without graceful restart: {sessions:?}"
    );
    eprintln!(
        "{restarted}'s agent restarted: {flows:?}; {} route events in the pool, none a deletion",
        events
            .iter()
            .filter(|(_, l)| destination(l).is_some_and(|d| in_pool(config.pool, d)))
            .count()
    );
}

/// One pod on `node`, its namespace and address.
#[derive(Clone)]
struct Pod {
    netns: String,
    ip: IpAddr,
}

fn add_pod(t: &TestLab, pod: &str, node: &str) -> Pod {
    let r: PodRef = pod.parse().unwrap_or_else(|e| panic!("{e}"));
    let opts = AddOptions {
        node: node.into(),
        ..Default::default()
    };
    let rec = pod::add(&t.lab, &r, &opts).unwrap_or_else(|e| panic!("pod add {pod}: {e}"));
    Pod {
        netns: t.lab.pod_netns(&r.namespace, &r.name),
        ip: *rec
            .ips
            .first()
            .unwrap_or_else(|| panic!("{pod} has no address")),
    }
}

/// Polls `done` every 200 ms until it is `Ok`; fails the test after [`WAIT`] with what it
/// said last.
fn wait_until(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let last = match done() {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not after {WAIT:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check(ok: bool, otherwise: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(otherwise()) }
}

fn wait_reachable(from: &Pod, to: &Pod) {
    wait_until(&format!("{} reaching {}", from.netns, to.ip), || {
        let out = ping(from, to, &["-c", "1", "-W", "1"])
            .output()
            .map_err(|e| e.to_string())?;
        check(out.status.success(), || text(&out.stdout))
    });
}

/// `ping ARGS TO` inside `from`'s namespace; no shell.
fn ping(from: &Pod, to: &Pod, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &from.netns, "ping", "-n"])
        .args(args)
        .arg(to.ip.to_string());
    cmd
}

/// Waits until `node`'s agent reports every other node as an Established mesh peer;
/// returns those sessions.
fn wait_mesh_established(t: &TestLab, node: &str) -> Vec<tortie_api::v1::BgpPeer> {
    let socket = t.lab.agent_socket(node);
    let mut established = Vec::new();
    wait_until(&format!("{node}'s mesh sessions Established"), || {
        let peers = mesh_peers(&socket)?;
        let done =
            peers.len() == NODES as usize - 1 && peers.iter().all(|p| p.state == "Established");
        check(done, || format!("{peers:?}"))?;
        established = peers;
        Ok(())
    });
    established
}

fn mesh_peers(socket: &Path) -> Result<Vec<tortie_api::v1::BgpPeer>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        let channel = tortie_api::connect_unix(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = tortie_api::v1::status_client::StatusClient::new(channel);
        let reply = client
            .get_status(tortie_api::v1::StatusRequest {})
            .await
            .map_err(|e| format!("GetStatus: {}", e.message()))?;
        Ok(reply
            .into_inner()
            .bgp_peers
            .into_iter()
            .filter(|p| p.peer_type == tortie_node::mesh::PEER_TYPE)
            .collect())
    })
}

/// `node`'s tortie routes (IPv4 and IPv6), one line each, sorted.
fn tortie_routes(t: &TestLab, node: &str) -> Vec<String> {
    let proto = tortie_node::netlink::TORTIE_PROTO.to_string();
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out = Command::new("ip")
            .args([
                family,
                "-n",
                &t.lab.node_netns(node),
                "route",
                "show",
                "proto",
            ])
            .arg(&proto)
            .output()
            .unwrap_or_else(|e| panic!("ip route show: {e}"));
        assert!(out.status.success(), "ip route show: {}", text(&out.stderr));
        routes.extend(text(&out.stdout).lines().map(str::to_owned));
    }
    routes.sort();
    routes
}

/// How many times the agent's log says its reconciler swept stale routes.
fn sweeps_logged(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("routes in sync: sweeping stale routes")
        .count()
}

/// The destination of a route as `ip monitor route` prints it (`[Deleted] [TYPE] DST ...`).
fn destination(line: &str) -> Option<IpNet> {
    let words = line
        .split_whitespace()
        .skip_while(|w| *w == "Deleted")
        .skip_while(|w| {
            [
                "blackhole",
                "unreachable",
                "prohibit",
                "local",
                "broadcast",
                "unicast",
            ]
            .contains(w)
        });
    let dst = words.into_iter().next()?;
    dst.parse::<IpNet>()
        .ok()
        .or_else(|| dst.parse::<IpAddr>().ok().map(IpNet::from))
}

fn deleted_destination(line: &str) -> Option<IpNet> {
    line.starts_with("Deleted ")
        .then(|| destination(line))
        .flatten()
}

/// Pod routes and block routes: every destination inside the lab's pool.
fn in_pool(pool: Ipv4Net, dst: IpNet) -> bool {
    match dst {
        IpNet::V4(d) => pool.contains(&d),
        IpNet::V6(_) => false,
    }
}

/// `ip monitor route` in one node's namespace, its output in a file.
struct RouteMonitor {
    child: Child,
    out: PathBuf,
    netns: String,
}

impl RouteMonitor {
    /// Returns once the monitor has seen a route event, so nothing after is missed.
    fn start(netns: &str, out: &Path) -> RouteMonitor {
        let file = std::fs::File::create(out).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("ip")
            .args(["-n", netns, "monitor", "route"])
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ip monitor route: {e}"));
        let monitor = RouteMonitor {
            child,
            out: out.to_owned(),
            netns: netns.to_owned(),
        };
        let marker = MARKER.trim_end_matches("/32");
        wait_until(&format!("ip monitor route in {netns} listening"), || {
            // Added and removed again each time (rewriting an identical route is no
            // event): the monitor may not have been listening the time before.
            monitor.marker("add");
            monitor.marker("del");
            std::thread::sleep(Duration::from_millis(50));
            let lines = monitor.lines();
            check(lines.iter().any(|l| l.contains(marker)), || {
                format!("{lines:?}")
            })
        });
        monitor
    }

    fn marker(&self, verb: &str) {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "route", verb, "blackhole", MARKER])
            .output()
            .unwrap_or_else(|e| panic!("ip route {verb}: {e}"));
        assert!(
            out.status.success(),
            "ip route {verb} {MARKER} in {}: {}",
            self.netns,
            text(&out.stderr)
        );
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Stops the monitor; returns every event it printed.
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines()
    }
}

impl Drop for RouteMonitor {
    /// Stops the monitor (the child we started), even when the test failed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one direction of the flow counted, over every `ping` run.
#[derive(Debug)]
struct Flow {
    from: String,
    to: IpAddr,
    transmitted: u64,
    received: u64,
    /// The summaries of runs that lost something.
    lossy: Vec<String>,
}

/// `ping -i 0.01` (100 Hz) from one pod to another, run after run until stopped.
struct Pinger(std::thread::JoinHandle<Flow>);

impl Pinger {
    fn start(from: &Pod, to: &Pod, stop: &Arc<AtomicBool>) -> Pinger {
        let (from, to, stop) = (from.clone(), to.clone(), Arc::clone(stop));
        Pinger(std::thread::spawn(move || {
            let mut flow = Flow {
                from: from.netns.clone(),
                to: to.ip,
                transmitted: 0,
                received: 0,
                lossy: Vec::new(),
            };
            let count = PINGS_PER_RUN.to_string();
            while !stop.load(Ordering::Relaxed) {
                let out = ping(&from, &to, &["-q", "-i", "0.01", "-W", "1", "-c", &count])
                    .output()
                    .unwrap_or_else(|e| panic!("ping: {e}"));
                let summary = text(&out.stdout);
                let (sent, got) = ping_counts(&summary)
                    .unwrap_or_else(|| panic!("no ping summary: {summary}{}", text(&out.stderr)));
                flow.transmitted += sent;
                flow.received += got;
                if got < sent {
                    flow.lossy.push(summary);
                }
            }
            flow
        }))
    }

    fn finish(self) -> Flow {
        self.0.join().unwrap_or_else(|_| panic!("pinger panicked"))
    }
}

/// `N packets transmitted, M received, ...` from ping's summary.
fn ping_counts(summary: &str) -> Option<(u64, u64)> {
    let line = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}

#[test]
fn reads_the_destination_of_monitored_routes() {
    let dst = |s: &str| s.parse::<IpNet>().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        deleted_destination("Deleted blackhole 10.244.0.0/26 proto 116"),
        Some(dst("10.244.0.0/26"))
    );
    assert_eq!(
        deleted_destination("Deleted 10.244.0.5 dev tort1234 proto 116 scope link"),
        Some(dst("10.244.0.5/32"))
    );
    assert_eq!(
        destination("10.244.1.0/26 via 10.99.0.2 dev eth0 proto 116 onlink"),
        Some(dst("10.244.1.0/26"))
    );
    assert_eq!(
        deleted_destination("10.244.1.0/26 via 10.99.0.2 dev eth0 proto 116 onlink"),
        None
    );
    assert_eq!(
        ping_counts(
            "--- 10.244.0.5 ping statistics ---\n200 packets transmitted, 198 received, 1% packet loss, time 2010ms\n"
        ),
        Some((200, 198))
    );
}
