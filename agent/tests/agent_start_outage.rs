//! Root test: the real `tortie-node run` meets an apiserver outage at many points of its
//! start-up, and must wait it out and become ready by itself, never exit.
//!
//! The agent talks plain HTTP to a proxy in this test, which passes requests on to
//! `kubectl proxy` (plain HTTP in, the apiserver's TLS and admin token out), so the proxy
//! sees every request. A scenario names one request of the start-up sequence (say, the
//! first LIST of IPAMBlocks); when the agent sends it, the proxy kills kube-apiserver
//! (SIGKILL: etcd keeps the data) and cuts every connection, and the test starts
//! kube-apiserver again a moment later. That puts the outage exactly at that step, every
//! run. Meanwhile new connections get `kubectl proxy`'s 5xx answers, as from a load
//! balancer in front of a dead apiserver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::apiserver::Apiserver;
use tortie_api::v1 as api;
use tortie_api::v1::cni_client::CniClient;
use tortie_api::v1::status_client::StatusClient;

const AGENT: &str = env!("CARGO_BIN_EXE_tortie-node");
/// `kubectl proxy`'s port, and the test proxy's, both on the namespace's loopback.
const HTTP_PORT: u16 = 8080;
const PROXY_PORT: u16 = 8081;
const NODE_YAML: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n";
const POOL: &str = "10.244.0.0/16";

/// Where in the start-up the apiserver dies: at the `nth` request (from 1) whose method is
/// `method` and whose path, without its query, is `path` (watches never count). With
/// `after`, the request reaches the apiserver first, so its outcome is unknown to the agent.
#[derive(Clone, Debug)]
struct KillAt {
    method: &'static str,
    path: &'static str,
    nth: usize,
    after: bool,
}

/// What the proxy's threads share.
struct Shared {
    netns: PathBuf,
    /// Taken out (and so stopped) by [`Cleanup`] when the test ends.
    apiserver: Mutex<Option<Apiserver>>,
    kill_at: Mutex<Option<KillAt>>,
    matched: AtomicUsize,
    /// Every connection from the agent, to cut them all at once.
    clients: Mutex<Vec<TcpStream>>,
    fired: Mutex<mpsc::Sender<String>>,
}

/// Runs `f` on a new thread inside the namespace: sockets belong to the namespace of the
/// thread that creates them.
fn in_netns(netns: &Path, f: impl FnOnce() + Send + 'static) {
    let path = netns.to_owned();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f();
    });
}

fn start_proxy(shared: Arc<Shared>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let netns = shared.netns.clone();
    in_netns(&netns, move || {
        let listener = TcpListener::bind(("127.0.0.1", PROXY_PORT)).unwrap();
        ready_tx.send(()).unwrap();
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let shared = shared.clone();
            let netns = shared.netns.clone();
            in_netns(&netns, move || serve(shared, client));
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// One connection from the agent: requests are read one by one (HTTP/1.1, bodies by
/// Content-Length, as kube-rs sends them) and passed on; answers are copied back as bytes.
fn serve(shared: Arc<Shared>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", HTTP_PORT)) else {
        return;
    };
    shared
        .clients
        .lock()
        .unwrap()
        .push(client.try_clone().unwrap());
    {
        let mut from = upstream.try_clone().unwrap();
        let mut to = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut upstream_w = upstream;
    loop {
        let mut head = Vec::new();
        let mut content_length = 0u64;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    let _ = upstream_w.shutdown(Shutdown::Both);
                    return;
                }
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
            if let Some(v) = text.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap();
            }
            assert!(
                !text.starts_with("transfer-encoding:"),
                "the proxy reads bodies by Content-Length only: {text}"
            );
            head.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let request_line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let kill = shared.take_kill(&request_line);
        if let Some(k) = &kill
            && !k.after
        {
            shared.kill(&request_line);
            return;
        }
        if upstream_w.write_all(&head).is_err()
            || std::io::copy(&mut (&mut reader).take(content_length), &mut upstream_w).is_err()
        {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if kill.is_some() {
            shared.kill(&request_line);
            return;
        }
    }
}

impl Shared {
    /// The kill point, if `request_line` is it.
    fn take_kill(&self, request_line: &str) -> Option<KillAt> {
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next()?, parts.next()?);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut kill_at = self.kill_at.lock().unwrap();
        let k = kill_at.as_ref()?;
        if k.method != method || k.path != path || query.contains("watch=") {
            return None;
        }
        if self.matched.fetch_add(1, Ordering::SeqCst) + 1 == k.nth {
            kill_at.take()
        } else {
            None
        }
    }

    fn apiserver(&self) -> std::sync::MutexGuard<'_, Option<Apiserver>> {
        // A test thread that panicked holding it must not hide it from the cleanup.
        self.apiserver.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_apiserver<T>(&self, f: impl FnOnce(&mut Apiserver) -> T) -> T {
        f(self
            .apiserver()
            .as_mut()
            .expect("the apiserver was cleaned up"))
    }

    /// Kills kube-apiserver and cuts every connection the agent has.
    fn kill(&self, request_line: &str) {
        self.with_apiserver(Apiserver::stop_apiserver);
        for c in self.clients.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = self.fired.lock().unwrap().send(request_line.to_owned());
    }
}

/// Stops etcd and kube-apiserver and removes their namespace when the test ends, even on
/// failure: the proxy's threads hold [`Shared`] for the life of the process.
struct Cleanup(Arc<Shared>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        drop(self.0.apiserver().take());
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent's private tree: its binary next to a `tortie` plugin stand-in, its socket,
/// CNI directories and log.
struct Node {
    dir: PathBuf,
    agent: PathBuf,
    netns: String,
    kubeconfig: PathBuf,
}

impl Node {
    fn new(dir: &Path, netns: &str) -> Node {
        let bin = dir.join("shipped");
        std::fs::create_dir_all(&bin).unwrap();
        let agent = bin.join("tortie-node");
        std::fs::copy(AGENT, &agent).unwrap();
        std::fs::write(bin.join("tortie"), "#!/bin/sh\nexit 0\n").unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{PROXY_PORT}\n\
                 users:\n- name: u\n  user: {{}}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: u\ncurrent-context: t\n"
            ),
        )
        .unwrap();
        Node {
            dir: dir.to_owned(),
            agent,
            netns: netns.to_owned(),
            kubeconfig,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/agent.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn start(&self, scenario: &str) -> Proc {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        writeln!(log, "===== scenario: {scenario}").unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&self.agent)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NODENAME", "node-a")
            .env("TORTIE_AGENT_SOCKET", self.socket())
            .env("TORTIE_CNI_CONF_DIR", self.dir.join("cni/net.d"))
            .env("TORTIE_CNI_BIN_DIR", self.dir.join("cni/bin"))
            .env("CALICO_IPV4POOL_CIDR", POOL)
            .env("IP_AUTODETECTION_METHOD", "interface=eth0")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    /// Waits until the agent says it is ready; fails if it exits meanwhile.
    fn wait_ready(&self, agent: &mut Proc, scenario: &str, timeout: Duration) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = agent.0.try_wait().unwrap() {
                panic!(
                    "{scenario}: tortie-node exited ({status}) instead of waiting for the apiserver:\n{}",
                    self.log()
                );
            }
            let ready = rt.block_on(async {
                let ch = tortie_api::connect_unix(self.socket()).await.ok()?;
                let reply = StatusClient::new(ch)
                    .get_status(api::StatusRequest {})
                    .await
                    .ok()?;
                Some(reply.into_inner().ready)
            });
            if ready == Some(true) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{scenario}: tortie-node not ready in {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One address for container `cid`, through the agent's CNI API.
    fn allocate(&self, cid: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = CniClient::new(tortie_api::connect_unix(self.socket()).await.unwrap());
            let reply = c
                .allocate(api::AllocateRequest {
                    attachment: Some(api::Attachment {
                        network: "k8s-pod-network".into(),
                        container_id: cid.into(),
                        ifname: "eth0".into(),
                    }),
                    pod: None,
                })
                .await
                .unwrap_or_else(|e| panic!("allocate: {e}\n{}", self.log()));
            reply.into_inner().ips.remove(0).address
        })
    }
}

fn ip(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node's blackhole routes for its blocks (proto 116 is the agent's).
fn blackholes(netns: &str) -> Vec<String> {
    ip(netns, &["route", "show", "proto", "116"])
        .lines()
        .filter(|l| l.starts_with("blackhole"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_apiserver_outage_anywhere_in_start_up_is_waited_out() {
    let server = Apiserver::start().unwrap_or_else(|e| panic!("{e}"));
    let netns = server.netns().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let proxy_log = std::fs::File::create(dir.path().join("kubectl-proxy.log")).unwrap();
    let _kubectl_proxy = Proc(
        Command::new("ip")
            .args(["netns", "exec", &netns, "kubectl"])
            .arg(format!("--kubeconfig={}", server.kubeconfig().display()))
            .args([
                "proxy",
                "--address=127.0.0.1",
                &format!("--port={HTTP_PORT}"),
                "--accept-hosts=.*",
            ])
            .stdout(proxy_log.try_clone().unwrap())
            .stderr(proxy_log)
            .spawn()
            .unwrap(),
    );
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds.yaml");
    server.kubectl(&["apply", "-f", manifest]).unwrap();
    server
        .kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .unwrap();
    let node_yaml = dir.path().join("node.yaml");
    std::fs::write(&node_yaml, NODE_YAML).unwrap();
    server
        .kubectl(&["apply", "-f", node_yaml.to_str().unwrap()])
        .unwrap();
    // The node's uplink, for address autodetection (and the BGP speaker's address).
    ip(
        &netns,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    ip(&netns, &["link", "set", "eth0p", "up"]);
    ip(&netns, &["link", "set", "eth0", "up"]);
    ip(&netns, &["addr", "add", "10.77.0.2/24", "dev", "eth0"]);

    let (fired_tx, fired_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        netns: Path::new("/run/netns").join(&netns),
        apiserver: Mutex::new(Some(server)),
        kill_at: Mutex::new(None),
        matched: AtomicUsize::new(0),
        clients: Mutex::new(Vec::new()),
        fired: Mutex::new(fired_tx),
    });
    let _cleanup = Cleanup(shared.clone());
    start_proxy(shared.clone());
    let node = Node::new(&dir.path().join("node-a"), &netns);
    // Time enough for the restarted apiserver and then the agent's watches to come back.
    let ready_within = Duration::from_secs(120);
    let restart = |scenario: &str| {
        // Back within about a second, as in the outage the issue describes (v1.20 then
        // takes a few seconds more to serve).
        std::thread::sleep(Duration::from_secs(1));
        shared
            .with_apiserver(Apiserver::start_apiserver)
            .unwrap_or_else(|e| panic!("{scenario}: restarting kube-apiserver: {e}"));
    };

    // The apiserver is down before the agent starts.
    {
        let scenario = "the apiserver is down when the agent starts";
        shared.with_apiserver(Apiserver::stop_apiserver);
        let mut agent = node.start(scenario);
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "{scenario}: tortie-node exited:\n{}",
            node.log()
        );
        restart(scenario);
        node.wait_ready(&mut agent, scenario, ready_within);
    }

    let points = [
        (
            "reading the Node object",
            KillAt {
                method: "GET",
                path: "/api/v1/nodes/node-a",
                nth: 1,
                after: false,
            },
        ),
        (
            "registering the node",
            KillAt {
                method: "PATCH",
                path: "/api/v1/nodes/node-a",
                nth: 1,
                after: false,
            },
        ),
        (
            "listing the IP pools",
            KillAt {
                method: "GET",
                path: "/apis/crd.tortie.dev/v1/ippools",
                nth: 1,
                after: false,
            },
        ),
        (
            "creating the default pool (outcome unknown)",
            KillAt {
                method: "POST",
                path: "/apis/crd.tortie.dev/v1/ippools",
                nth: 1,
                after: true,
            },
        ),
        (
            "reading this node's allocations",
            KillAt {
                method: "GET",
                path: "/apis/crd.tortie.dev/v1/ipamblocks",
                nth: 1,
                after: false,
            },
        ),
        (
            "loading IPAM's blocks",
            KillAt {
                method: "GET",
                path: "/apis/crd.tortie.dev/v1/ipamblocks",
                nth: 2,
                after: false,
            },
        ),
    ];
    let mut block_routes = Vec::new();
    for (scenario, kill_at) in points {
        if kill_at.method == "POST" {
            // No pool yet, so that the agent creates one.
            shared
                .with_apiserver(|s| s.kubectl(&["delete", "ippools.crd.tortie.dev", "--all"]))
                .unwrap();
        }
        // A node that rebooted: none of the agent's routes are left for it to find.
        ip(&netns, &["route", "flush", "proto", "116"]);
        shared.matched.store(0, Ordering::SeqCst);
        *shared.kill_at.lock().unwrap() = Some(kill_at.clone());
        let mut agent = node.start(scenario);
        let request = fired_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "{scenario}: the agent never sent {kill_at:?}:\n{}",
                    node.log()
                )
            });
        eprintln!("{scenario}: killed kube-apiserver at `{request}`");
        restart(scenario);
        node.wait_ready(&mut agent, scenario, ready_within);
        // The start-up it went through is the whole start-up: the default pool exists, and
        // once this node holds a block, its blackhole route is in as soon as it is ready.
        let pools = shared
            .with_apiserver(|s| s.kubectl(&["get", "ippools.crd.tortie.dev", "-o", "name"]))
            .unwrap();
        assert_eq!(
            pools.trim(),
            "ippool.crd.tortie.dev/default-ipv4-ippool",
            "{scenario}"
        );
        if block_routes.is_empty() {
            let addr = node.allocate("c1");
            assert!(addr.starts_with("10.244."), "{addr}");
            block_routes = blackholes(&netns);
            assert_eq!(block_routes.len(), 1, "{block_routes:?}");
        } else {
            assert_eq!(
                blackholes(&netns),
                block_routes,
                "{scenario}: the node's block has no blackhole route once ready:\n{}",
                node.log()
            );
        }
        drop(agent);
    }
}
