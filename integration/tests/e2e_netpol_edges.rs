//! Root, real parts: the two edges of the policy dataplane that no truth table shows.
//!
//! - **No unprotected start**: a pod created in a namespace under default-deny-ingress is
//!   never reachable, not even for the moment between getting its address and getting its
//!   policy. Its server listens before CNI ADD, and a prober on another node sprays every
//!   address of the node's block from before the ADD until after it.
//! - **Agent restart**: the agent of a node is SIGKILLed and started again while a pod there
//!   is probed by an allowed and a denied client: the rules stay in the kernel the whole
//!   time (no allowed probe fails, no denied one gets through) and the restarted agent
//!   adopts them without rewriting a rule.
//! - **NAT outgoing**: traffic from a pod to a host on the LAN, outside every pool, leaves
//!   with the node's address while the pool says `natOutgoing: true`, and with the pod's own
//!   once the IPPool is patched to false, with no agent restart.
//!
//! Each test has its own lab, removed even when it fails. Needs `cargo build -p tortie-node
//! -p tortie-cni` first: the lab runs those binaries.

mod lab_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use lab_support::TestLab;
use serde_json::{Value, json};
use tortie_lab::netns::NetNs;
use tortie_lab::pod::{self, AddOptions, ContainerPort, PodRecord, PodRef, Protocol};
use tortie_lab::traffic::Answer;
use tortie_lab::traffic::probe::{self, Target};
use tortie_lab::traffic::serve::{self, Listener};

/// How long a policy or pool change may take to show.
const WAIT: Duration = Duration::from_secs(15);

fn lab(tag: &str, nodes: u32) -> TestLab {
    let t = TestLab::up_with_real_agents(tag, nodes, 0);
    t.wait_agents_ready(Duration::from_secs(90));
    t
}

fn kubectl(t: &TestLab, args: &[&str]) -> String {
    let mut all = vec!["kubectl"];
    all.extend_from_slice(args);
    t.ok(&all)
}

fn apply(t: &TestLab, name: &str, objects: &[Value]) {
    let file = t.scratch().join(format!("{name}.json"));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&file, list.to_string()).unwrap_or_else(|e| panic!("{e}"));
    kubectl(t, &["apply", "-f", &file.display().to_string()]);
}

fn pod_ref(s: &str) -> PodRef {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

fn port_80() -> Vec<ContainerPort> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ContainerPort {
            name: format!("serve-80-{protocol}"),
            port: 80,
            protocol,
        })
        .collect()
}

fn add(t: &TestLab, pod: &str, node: &str, serving: bool) -> PodRecord {
    let opts = AddOptions {
        node: node.into(),
        container_ports: if serving { port_80() } else { Vec::new() },
        serve: serving,
        ..Default::default()
    };
    pod::add(&t.lab, &pod_ref(pod), &opts).unwrap_or_else(|e| panic!("pod add {pod}: {e}"))
}

fn ip_of(r: &PodRecord) -> IpAddr {
    *r.ips
        .first()
        .unwrap_or_else(|| panic!("{} has no address", r.pod))
}

/// Probes until `done` says the answer (or failure) is the one wanted, for up to `wait`;
/// returns the last result.
fn probe_until(
    netns: &str,
    target: Target,
    wait: Duration,
    done: impl Fn(&Result<Answer, probe::Failure>) -> bool,
) -> Result<Answer, probe::Failure> {
    let deadline = Instant::now() + wait;
    loop {
        let r = probe::probe_from(netns, target, Duration::from_millis(500));
        if done(&r) || Instant::now() >= deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the sprayer heard back: when, from which address, and what.
type Heard = Arc<Mutex<Vec<(Instant, SocketAddr, String)>>>;

/// Sprays `targets` from inside `netns` until `stop`: a UDP datagram to every target every
/// few milliseconds from one socket (one reader thread records every answer), and TCP
/// connections from a few threads in turn. Every answer is recorded.
fn spray(
    netns: String,
    targets: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
    heard: Heard,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let socket = tortie_lab::kube_netns::in_netns(&netns, || UdpSocket::bind("0.0.0.0:0"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let reader = socket.try_clone().unwrap_or_else(|e| panic!("{e}"));
    reader
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap_or_else(|e| panic!("{e}"));
    {
        let (stop, heard) = (stop.clone(), heard.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = reader.recv_from(&mut buf) {
                    let answer = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                    if let Ok(mut h) = heard.lock() {
                        h.push((Instant::now(), from, answer));
                    }
                }
            }
        }));
    }
    {
        let (stop, targets) = (stop.clone(), targets.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for ip in &targets {
                    // Errors (no route yet, a full buffer) only mean this datagram is lost.
                    let _ = socket.send_to(b"probe\n", (*ip, 80));
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        }));
    }
    for k in 0..6 {
        let (stop, heard, targets, netns) =
            (stop.clone(), heard.clone(), targets.clone(), netns.clone());
        threads.push(std::thread::spawn(move || {
            let _ = tortie_lab::kube_netns::in_netns(&netns, || {
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let addr = SocketAddr::new(targets[i % targets.len()], 80);
                    i += 1;
                    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(150))
                    {
                        use std::io::Read;
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut answer = String::new();
                        let _ = s.read_to_string(&mut answer);
                        if let Ok(mut h) = heard.lock() {
                            h.push((Instant::now(), addr, format!("tcp: {}", answer.trim())));
                        }
                    }
                }
            });
        }));
    }
    threads
}

/// The IPAMBlock holding `ip`.
fn block_of(t: &TestLab, ip: IpAddr) -> IpNet {
    let list: Value = serde_json::from_str(&kubectl(
        t,
        &["get", "ipamblocks.crd.tortie.dev", "-o", "json"],
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["spec"]["cidr"].as_str()?.parse::<IpNet>().ok())
        .find(|net| net.contains(&ip))
        .unwrap_or_else(|| panic!("no IPAMBlock holds {ip}: {list:#}"))
}

#[test]
fn no_unprotected_start_a_new_pod_is_never_reachable_before_its_policy() {
    let t = lab("ps", 2);
    apply(
        &t,
        "guarded",
        &[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "guarded"}}),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "prober", "labels": {"role": "prober"}}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": "default-deny-ingress", "namespace": "guarded"},
                   "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ],
    );
    let prober = add(&t, "prober/p", "node-2", false);
    let prober_ns = t.lab.pod_netns("prober", "p");
    // An unguarded pod on node-1: the prober reaches node-1's pods at all.
    let open = add(&t, "open/o", "node-1", true);
    // A first guarded pod claims node-1's block, which tells where the next one will be.
    let first = add(&t, "guarded/first", "node-1", true);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let to_open = Target {
            ip: ip_of(&open),
            port: 80,
            protocol,
        };
        let r = probe_until(&prober_ns, to_open, Duration::from_secs(60), |r| r.is_ok());
        assert!(
            r.is_ok(),
            "{} cannot reach the unguarded {} ({to_open}): {r:?}",
            prober.pod,
            open.pod
        );
    }
    let to_first = Target {
        ip: ip_of(&first),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let r = probe_until(&prober_ns, to_first, WAIT, |r| r.is_err());
    assert!(
        r.is_err(),
        "default-deny-ingress is not enforced even on a pod that has been there for seconds: \
         {} reaches {} ({to_first}): {r:?}",
        prober.pod,
        first.pod
    );

    let block = block_of(&t, ip_of(&first));
    let targets: Vec<IpAddr> = block
        .hosts()
        .chain([block.network(), block.broadcast()])
        .filter(|ip| *ip != ip_of(&open))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let heard: Heard = Arc::default();
    let threads = spray(
        prober_ns.clone(),
        targets.clone(),
        stop.clone(),
        heard.clone(),
    );
    std::thread::sleep(Duration::from_secs(1));

    let add_start = Instant::now();
    let new = add(&t, "guarded/new", "node-1", true);
    let add_took = add_start.elapsed();
    std::thread::sleep(Duration::from_secs(3));

    // Then allow the prober in: the spray must now hear the new pod, which shows that it
    // would have heard it in a window too.
    let allowed_at = Instant::now();
    apply(
        &t,
        "allow-prober",
        &[
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "allow-prober", "namespace": "guarded"},
                 "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"role": "prober"}}}]}]}}),
        ],
    );
    let new_ip = ip_of(&new);
    let deadline = Instant::now() + WAIT;
    let heard_new = |h: &Heard| {
        h.lock()
            .map(|h| {
                h.iter()
                    .any(|(at, from, _)| *at > allowed_at && from.ip() == new_ip)
            })
            .unwrap_or(false)
    };
    while !heard_new(&heard) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        let _ = th.join();
    }

    assert!(
        block.contains(&new_ip),
        "{} got {new_ip}, outside the block {block} the prober watched: the test cannot judge",
        new.pod
    );
    let heard = heard.lock().map(|h| h.clone()).unwrap_or_default();
    // Per address that answered before the allow: how often, first when, and what.
    let mut breaches: BTreeMap<IpAddr, (usize, Instant, String)> = BTreeMap::new();
    for (at, from, answer) in heard.iter().filter(|(at, _, _)| *at < allowed_at) {
        let entry = breaches
            .entry(from.ip())
            .or_insert((0, *at, answer.clone()));
        entry.0 += 1;
    }
    assert!(
        breaches.is_empty(),
        "answers under default-deny-ingress (ADD of {} ({new_ip}) took {:.3}s):\n{}",
        new.pod,
        add_took.as_secs_f64(),
        breaches
            .iter()
            .map(|(ip, (count, first, answer))| format!(
                "  {ip}: {count} answers, the first {:+.3}s from the start of ADD: {answer:?}",
                seconds_between(add_start, *first)
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        heard
            .iter()
            .any(|(at, from, _)| *at > allowed_at && from.ip() == new_ip),
        "after allow-prober, the spray never heard {} ({new_ip}): it would not have seen a \
         window either. Heard after the allow: {:?}",
        new.pod,
        heard
            .iter()
            .filter(|(at, _, _)| *at > allowed_at)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// `to - from` in seconds, negative when `to` came first.
fn seconds_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64()
    } else {
        -from.duration_since(to).as_secs_f64()
    }
}

/// The pool's natOutgoing, as the IPPool object says.
fn nat_outgoing(t: &TestLab) -> String {
    kubectl(
        t,
        &[
            "get",
            "ippools.crd.tortie.dev",
            "default-ipv4-ippool",
            "-o",
            "jsonpath={.spec.natOutgoing}",
        ],
    )
}

fn set_nat_outgoing(t: &TestLab, on: bool) {
    kubectl(
        t,
        &[
            "patch",
            "ippools.crd.tortie.dev",
            "default-ipv4-ippool",
            "--type",
            "merge",
            "-p",
            &json!({"spec": {"natOutgoing": on}}).to_string(),
        ],
    );
}

#[test]
fn nat_outgoing_masquerades_to_the_lan_until_the_pool_says_otherwise() {
    const NODE: &str = "node-1";
    let t = lab("nat", 1);
    let node_ip = IpAddr::V4(tortie_lab::lab::node_ip(1).unwrap_or_else(|| panic!("no node ip")));
    let agent_pid = tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file(NODE));
    assert!(agent_pid.is_some(), "{NODE}'s agent is not running");

    // A host on the LAN outside every pool, with a route back to the pool through node-1,
    // so that it can answer a pod's own address as well as the node's.
    let outside = NetNs::create("tlnat-out").unwrap_or_else(|e| panic!("{e}"));
    let outside_ip = Ipv4Addr::new(172, 31, 0, 250);
    tortie_lab::network::attach(&t.lab, outside.name(), "outside", outside_ip)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = tortie_lab::LabConfig::load(&t.lab)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no lab.json"));
    outside
        .run(
            "ip",
            &[
                "route",
                "add",
                &config.pool.to_string(),
                "via",
                &node_ip.to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let listeners = [
        Listener {
            protocol: Protocol::Tcp,
            port: 8080,
        },
        Listener {
            protocol: Protocol::Udp,
            port: 8080,
        },
    ];
    serve::spawn(
        &t.lab,
        outside.name(),
        "outside",
        &listeners,
        &t.scratch().join("outside-serve.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let client = add(&t, "default/client", NODE, false);
    let client_ns = t.lab.pod_netns("default", "client");
    let pod_ip = ip_of(&client);

    // `up` made the pool from CALICO_IPV4POOL_NAT_OUTGOING's default: true.
    assert_eq!(nat_outgoing(&t), "true");
    let seen = |want: IpAddr, step: &str| {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let target = Target {
                ip: IpAddr::V4(outside_ip),
                port: 8080,
                protocol,
            };
            let r = probe_until(
                &client_ns,
                target,
                WAIT,
                |r| matches!(r, Ok(a) if a.seen_source == want),
            );
            match r {
                Ok(a) if a.seen_source == want => {}
                other => panic!(
                    "{step}: {} → {target}: the listener should see {want}; last probe: {other:?}",
                    client.pod
                ),
            }
        }
    };
    seen(node_ip, "natOutgoing true");

    set_nat_outgoing(&t, false);
    assert_eq!(nat_outgoing(&t), "false");
    seen(pod_ip, "natOutgoing patched to false");

    set_nat_outgoing(&t, true);
    seen(node_ip, "natOutgoing patched back to true");

    assert_eq!(
        tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file(NODE)),
        agent_pid,
        "{NODE}'s agent restarted; the pool change must apply while it runs"
    );
}

/// The rules of tortie's chains in `netns`, without counters: what a restart must not change.
fn tort_rules(t: &TestLab, node: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.lab.node_netns(node),
            "iptables-save",
            "-t",
            "filter",
        ])
        .output()
        .unwrap_or_else(|e| panic!("iptables-save: {e}"));
    assert!(out.status.success(), "iptables-save failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A tort") || l.contains("tort:hook"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_agent_killed_and_restarted_keeps_its_pods_policy_in_force_throughout() {
    let t = lab("restart", 2);
    let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
    let add_with = |pod: &str, node: &str, app: &str, serving: bool| {
        let opts = AddOptions {
            node: node.into(),
            labels: labels(app),
            container_ports: if serving { port_80() } else { Vec::new() },
            serve: serving,
            ..Default::default()
        };
        pod::add(&t.lab, &pod_ref(pod), &opts).unwrap_or_else(|e| panic!("pod add {pod}: {e}"))
    };
    let server = add_with("x/server", "node-1", "server", true);
    add_with("x/friend", "node-2", "friend", false);
    add_with("x/stranger", "node-2", "stranger", false);
    apply(
        &t,
        "only-friends",
        &[json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "only-friends", "namespace": "x"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "friend"}}}]}],
            },
        })],
    );
    let target = Target {
        ip: ip_of(&server),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let friend = t.lab.pod_netns("x", "friend");
    let stranger = t.lab.pod_netns("x", "stranger");
    assert!(
        probe_until(&friend, target, WAIT, Result::is_ok).is_ok(),
        "the friend never got through"
    );
    assert!(
        probe_until(&stranger, target, WAIT, Result::is_err).is_err(),
        "the stranger was never refused"
    );
    let before = tort_rules(&t, "node-1");

    // Both clients probe without pause from before the kill until after the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = |netns: String| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match probe::probe_from(&netns, target, Duration::from_millis(1000)) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    let friend_probes = prober(friend);
    let stranger_probes = prober(stranger);
    std::thread::sleep(Duration::from_millis(500));
    let pid = tortie_lab::process::running(&t.lab, &t.lab.agent_pid_file("node-1"))
        .unwrap_or_else(|| panic!("node-1's agent is not running"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
        .unwrap_or_else(|e| panic!("{e}"));
    while tortie_lab::process::is_alive(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    t.restart_agents();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let (friend_ok, friend_failed) = friend_probes.join().unwrap_or_else(|_| panic!("prober"));
    let (stranger_ok, _) = stranger_probes.join().unwrap_or_else(|_| panic!("prober"));

    assert!(
        friend_ok > 20,
        "too few probes to tell anything: {friend_ok}"
    );
    assert!(
        friend_failed.is_empty(),
        "{} of {} allowed probes failed across the restart: {friend_failed:?}",
        friend_failed.len(),
        friend_ok as usize + friend_failed.len()
    );
    assert_eq!(
        stranger_ok, 0,
        "denied probes got through across the restart"
    );
    assert_eq!(
        tort_rules(&t, "node-1"),
        before,
        "the restarted agent changed the rules it found"
    );
}
