//! Test doubles for the plugin's root tests: a network namespace guard, an in-test agent
//! serving the real gRPC API on a temp unix socket, and a runner that execs the real
//! `tortie` binary the way a kubelet/containerd does (env + stdin), inside a "node" netns.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tonic::{Request, Response, Status};
use tortie_api::v1::cni_server::{Cni, CniServer};
use tortie_api::v1::status_server::{Status as StatusSvc, StatusServer};
use tortie_api::v1::*;

/// iproute2's binary.
pub const IP: &str = "/usr/sbin/ip";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its stderr when it fails. Returns stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made by the test, deleted on drop even when the test fails.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> NetNs {
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> args…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs `program args…` inside the namespace; true when it exits 0.
    pub fn succeeds(&self, program: &str, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Runs `program args…` inside the namespace and returns its stdout.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn ping(&self, addr: &str) -> bool {
        self.succeeds("ping", &["-c", "1", "-W", "2", addr])
    }

    pub fn ping6(&self, addr: &str) -> bool {
        self.succeeds("ping", &["-6", "-c", "1", "-W", "2", addr])
    }

    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A node's namespace as the plugin expects it: an uplink with an address and a default
/// route, so proxy ARP has somewhere to answer for 169.254.1.1 (it only answers for
/// addresses routed out of another interface).
pub fn node_ns() -> NetNs {
    let node = NetNs::new("cni-node");
    // This kernel has no dummy driver: a veth whose peer stays in the node serves as uplink.
    node.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
    ]);
    node.ip(&["addr", "add", "10.200.0.1/24", "dev", "uplink0"]);
    node.ip(&["link", "set", "uplink0", "up"]);
    node.ip(&["link", "set", "uplink0p", "up"]);
    node.ip(&["route", "add", "default", "dev", "uplink0"]);
    node.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:200::1/64",
        "dev",
        "uplink0",
        "nodad",
    ]);
    node.ip(&["-6", "route", "add", "default", "dev", "uplink0"]);
    // The agent's job on a real node (pod ↔ pod over IPv6 is forwarded by the host).
    node.output("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"]);
    node
}

/// What the test agent has been asked and holds.
#[derive(Default)]
pub struct AgentState {
    pub held: BTreeMap<(String, String, String), String>,
    pub next: u8,
    pub ready: bool,
    pub fail_endpoint_ready: bool,
    /// Refuse every Allocate, as an agent with an exhausted pool does.
    pub fail_allocate: bool,
    /// The MTU Allocate reports, when not the default 1450.
    pub mtu: Option<u32>,
    /// Hand out an IPv6 address (fd00:99::x/128) next to each IPv4 one.
    pub dual_stack: bool,
    /// Skip installing the host route (the timing harness: `ip` exec costs would swamp it).
    pub skip_routes: bool,
    /// How long Allocate takes, as a datastore write does: widens the window in which two
    /// plugin processes can overlap.
    pub allocate_delay: Duration,
    pub calls: Vec<String>,
}

/// A stand-in for tortie-node's `Cni` and `Status` services: allocates 10.99.0.x/32, and on
/// EndpointReady installs the host route the way the real agent does (proto 116), in the
/// node namespace given, never in the test's own.
#[derive(Clone)]
pub struct TestAgentSvc {
    pub state: Arc<Mutex<AgentState>>,
    node_ns: String,
}

fn key(a: &Option<Attachment>) -> Result<(String, String, String), Status> {
    let a = a
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("attachment missing"))?;
    Ok((a.network.clone(), a.container_id.clone(), a.ifname.clone()))
}

#[tonic::async_trait]
impl Cni for TestAgentSvc {
    async fn allocate(
        &self,
        req: Request<AllocateRequest>,
    ) -> Result<Response<AllocateReply>, Status> {
        let req = req.into_inner();
        let k = key(&req.attachment)?;
        let delay = self.state.lock().unwrap().allocate_delay;
        tokio::time::sleep(delay).await;
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("Allocate {}", k.1));
        if st.fail_allocate {
            return Err(Status::resource_exhausted("the pool has no free address"));
        }
        let addrs = match st.held.get(&k) {
            Some(a) => a.clone(),
            None => {
                let n = u32::from(st.next) + 10;
                st.next += 1;
                let mut a = format!("10.99.0.{n}/32");
                if st.dual_stack {
                    a.push_str(&format!(",fd00:99::{n:x}/128"));
                }
                st.held.insert(k, a.clone());
                a
            }
        };
        let ips = addrs
            .split(',')
            .map(|a| IpConfig {
                address: a.to_owned(),
                gateway: String::new(),
            })
            .collect();
        let mtu = st.mtu.unwrap_or(1450);
        Ok(Response::new(AllocateReply { ips, mtu }))
    }

    async fn endpoint_ready(
        &self,
        req: Request<EndpointReadyRequest>,
    ) -> Result<Response<EndpointReadyReply>, Status> {
        let req = req.into_inner();
        let (fail, skip) = {
            let mut st = self.state.lock().unwrap();
            st.calls.push(format!("EndpointReady {}", req.host_ifname));
            (st.fail_endpoint_ready, st.skip_routes)
        };
        if fail {
            return Err(Status::internal("test agent: told to fail EndpointReady"));
        }
        if skip {
            return Ok(Response::new(EndpointReadyReply {}));
        }
        for a in &req.addresses {
            let out = Command::new("ip")
                .args([
                    "-n",
                    &self.node_ns,
                    "route",
                    "replace",
                    a,
                    "dev",
                    &req.host_ifname,
                    "scope",
                    "link",
                    "proto",
                    "116",
                ])
                .output()
                .map_err(|e| Status::internal(e.to_string()))?;
            if !out.status.success() {
                return Err(Status::internal(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ));
            }
        }
        Ok(Response::new(EndpointReadyReply {}))
    }

    async fn release(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseReply>, Status> {
        let k = key(&req.into_inner().attachment)?;
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("Release {}", k.1));
        let released = st.held.remove(&k);
        let skip = st.skip_routes;
        for addr in released.iter().flat_map(|a| a.split(',')).filter(|_| !skip) {
            // Gone with the veth already, normally; a leftover would be our bug.
            let _ = Command::new("ip")
                .args(["-n", &self.node_ns, "route", "del", addr, "proto", "116"])
                .output();
        }
        Ok(Response::new(ReleaseReply {
            released: u32::from(released.is_some()),
        }))
    }

    async fn check(&self, req: Request<CheckRequest>) -> Result<Response<CheckReply>, Status> {
        let k = key(&req.into_inner().attachment)?;
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("Check {}", k.1));
        let addresses = st
            .held
            .get(&k)
            .map(|a| a.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Response::new(CheckReply { addresses }))
    }

    async fn gc(&self, req: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let req = req.into_inner();
        let valid: Vec<(String, String, String)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.network.clone(), a.container_id.clone(), a.ifname.clone()))
            .collect();
        let mut st = self.state.lock().unwrap();
        st.calls.push("Gc".into());
        let before = st.held.len();
        st.held
            .retain(|k, _| k.0 != req.network || valid.contains(k));
        Ok(Response::new(GcReply {
            released: (before - st.held.len()) as u32,
        }))
    }
}

#[tonic::async_trait]
impl StatusSvc for TestAgentSvc {
    async fn get_status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let st = self.state.lock().unwrap();
        Ok(Response::new(StatusReply {
            ready: st.ready,
            reason: if st.ready {
                String::new()
            } else {
                "test agent: not ready".into()
            },
            node_name: "test-node".into(),
            ..Default::default()
        }))
    }
}

/// The test agent, serving on its own runtime until dropped.
pub struct TestAgent {
    pub socket: PathBuf,
    pub state: Arc<Mutex<AgentState>>,
    _dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestAgent {
    pub fn start(node: &NetNs) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let state = Arc::new(Mutex::new(AgentState {
            ready: true,
            ..Default::default()
        }));
        let svc = TestAgentSvc {
            state: state.clone(),
            node_ns: node.name.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = runtime.enter();
            tortie_api::bind_root_only(&socket).unwrap()
        };
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(CniServer::new(svc.clone()))
                .add_service(StatusServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        TestAgent {
            socket,
            state,
            _dir: dir,
            runtime: Some(runtime),
        }
    }

    pub fn held(&self) -> Vec<String> {
        self.state.lock().unwrap().held.values().cloned().collect()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The plugin's answer to one invocation.
#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts a CNI error with `code` and returns its JSON.
    pub fn error(&self, code: u64) -> Value {
        assert_ne!(
            self.code, 0,
            "expected CNI error {code}, got success: {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{self:?}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{self:?}");
        v
    }

    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        self
    }
}

/// The CNI_* environment of one attachment.
pub struct Invocation {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
}

impl Invocation {
    pub fn kubelet(pod: &str, container_id: &str, netns: &Path) -> Invocation {
        Invocation {
            container_id: container_id.to_owned(),
            netns: Some(netns.to_owned()),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{pod}"
            ),
        }
    }
}

/// Execs `plugin` inside `node` as a runtime would: `CNI_*` variables, config on stdin.
pub fn exec(node: &NetNs, plugin: &Path, command: &str, inv: &Invocation, stdin: &str) -> Reply {
    exec_env(node, plugin, command, inv, stdin, &[])
}

/// [`exec`] with extra environment variables for the plugin.
pub fn exec_env(
    node: &NetNs,
    plugin: &Path,
    command: &str,
    inv: &Invocation,
    stdin: &str,
    extra: &[(&str, &str)],
) -> Reply {
    // By absolute path: `extra` may replace PATH, which is also where `ip` would be looked up.
    let mut cmd = Command::new(IP);
    cmd.envs(extra.iter().copied());
    cmd.args(["netns", "exec", &node.name]).arg(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", "/usr/lib/cni");
    match &inv.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    exec_with(cmd, stdin)
}

pub fn exec_with(mut cmd: Command, stdin: &str) -> Reply {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Reply {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn tortie() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tortie"))
}

/// The host veth name the plugin must use (docs/architecture.md), computed independently with sha1sum.
pub fn expected_host_ifname(pod: &str) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("default.{pod}").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!("tort{}", &String::from_utf8_lossy(&out.stdout)[..11])
}
