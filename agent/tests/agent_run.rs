//! Root tests: the real `tortie-node run` binary inside a fresh network namespace, against a
//! real etcd and kube-apiserver v1.20 running in that same namespace (on its loopback, so
//! nothing listens in the host's namespace).
//!
//! tortie-node must not depend on the lab crate, so the control plane here is a small one
//! of its own: token auth, AlwaysAllow, self-signed serving certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tortie_api::v1 as api;
use tortie_api::v1::cni_client::CniClient;
use tortie_api::v1::status_client::StatusClient;

const AGENT: &str = env!("CARGO_BIN_EXE_tortie-node");
const TOKEN: &str = "tortie-agent-test-token";

fn apiserver_binary() -> PathBuf {
    std::env::var_os("TORTIE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tortie/kube-apiserver"))
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with `lo` and an `eth0` (one end of a veth pair, both ends inside:
/// the test kernel has no dummy driver) holding 10.77.0.2/24. Removed on drop, with every
/// process left inside.
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "trt-agent-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]);
        ns.ip(&["link", "set", "eth0p", "up"]);
        ns.ip(&["link", "set", "eth0", "mtu", "1460"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["addr", "add", "10.77.0.2/24", "dev", "eth0"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        String::from_utf8_lossy(&run("ip", &full).stdout).into_owned()
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
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

/// etcd + kube-apiserver inside `ns`, and an admin kubeconfig for them.
struct ControlPlane {
    _etcd: Proc,
    _apiserver: Proc,
    kubeconfig: PathBuf,
}

impl ControlPlane {
    fn start(ns: &Ns, dir: &Path) -> ControlPlane {
        let etcd_log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let etcd = ns
            .command("etcd")
            .args([
                "--name=agent-test",
                &format!("--data-dir={}", dir.join("etcd").display()),
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=agent-test=http://127.0.0.1:2380",
                "--log-level=warn",
                "--logger=zap",
            ])
            .stdout(etcd_log.try_clone().unwrap())
            .stderr(etcd_log)
            .spawn()
            .unwrap();
        let etcd = Proc(etcd);

        // ECDSA P-256. kube-apiserver v1.20 does not derive the verifying key from a PKCS#8
        // private key, so the public key gets a file of its own.
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        let sa = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&sa_key, sa.serialize_pem()).unwrap();
        std::fs::write(&sa_pub, sa.public_key_pem()).unwrap();
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin,system:masters\n")).unwrap();
        let log = std::fs::File::create(dir.join("apiserver.log")).unwrap();
        let apiserver = ns
            .command(apiserver_binary().to_str().unwrap())
            .args([
                "--etcd-servers=http://127.0.0.1:2379".to_string(),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=10.77.0.2".into(),
                "--secure-port=6443".into(),
                "--insecure-port=0".into(),
                format!("--cert-dir={}", dir.join("certs").display()),
                format!("--token-auth-file={}", tokens.display()),
                "--authorization-mode=AlwaysAllow".into(),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/12".into(),
                "--disable-admission-plugins=ServiceAccount".into(),
                "--profiling=false".into(),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let apiserver = Proc(apiserver);

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
                 users:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: admin\ncurrent-context: t\n"
            ),
        )
        .unwrap();
        let cp = ControlPlane {
            _etcd: etcd,
            _apiserver: apiserver,
            kubeconfig,
        };
        let start = Instant::now();
        loop {
            let out = cp.kubectl_raw(ns, &["get", "--raw", "/readyz"]);
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        cp
    }

    fn kill_apiserver(&mut self) {
        let _ = self._apiserver.0.kill();
        let _ = self._apiserver.0.wait();
    }

    fn kubectl_raw(&self, ns: &Ns, args: &[&str]) -> Output {
        ns.command("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .unwrap()
    }

    /// kubectl inside the namespace; panics on failure. Returns stdout.
    fn kubectl(&self, ns: &Ns, args: &[&str]) -> String {
        let out = self.kubectl_raw(ns, args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, ns: &Ns, yaml: &str) {
        let mut child = ns
            .command("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The agent's private tree, as the lab gives each node, with its own copy of the agent.
struct NodeTree {
    dir: PathBuf,
    agent: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl NodeTree {
    fn new(dir: &Path) -> NodeTree {
        let bin = dir.join("shipped");
        std::fs::create_dir_all(&bin).unwrap();
        let agent = bin.join("tortie-node");
        std::fs::copy(AGENT, &agent).unwrap();
        NodeTree {
            dir: dir.to_owned(),
            agent,
            extra_env: Vec::new(),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("run/agent.sock")
    }
    fn conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    fn bin_dir(&self) -> PathBuf {
        self.dir.join("cni/bin")
    }

    /// `tortie-node run` in `ns` with the lab's env contract.
    fn command(&self, ns: &Ns, kubeconfig: &Path, pool: &str) -> Command {
        let mut c = ns.command(self.agent.to_str().unwrap());
        c.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("NODENAME", "node-a")
            .env("TORTIE_AGENT_SOCKET", self.socket())
            .env("TORTIE_CNI_CONF_DIR", self.conf_dir())
            .env("TORTIE_CNI_BIN_DIR", self.bin_dir())
            .env("CALICO_IPV4POOL_CIDR", pool)
            .env("IP_AUTODETECTION_METHOD", "interface=eth0")
            .env("RUST_LOG", "info")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn start(&self, ns: &Ns, kubeconfig: &Path, pool: &str) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let child = self
            .command(ns, kubeconfig, pool)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits until the agent answers GetStatus with ready.
    fn wait_ready(&self, agent: &mut Proc) -> tortie_api::v1::StatusReply {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = agent.0.try_wait().unwrap() {
                panic!("tortie-node exited early ({status}):\n{}", self.log());
            }
            let reply = rt.block_on(async {
                let ch = tortie_api::connect_unix(self.socket()).await.ok()?;
                StatusClient::new(ch)
                    .get_status(tortie_api::v1::StatusRequest {})
                    .await
                    .ok()
            });
            if let Some(r) = reply {
                let r = r.into_inner();
                if r.ready {
                    return r;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "tortie-node not ready in 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

const NODE_YAML: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels:\n    kubernetes.io/hostname: node-a\n";

fn crds_yaml() -> String {
    let out = run(AGENT, &["crds"]);
    String::from_utf8(out.stdout).unwrap()
}

fn pools(cp: &ControlPlane, ns: &Ns) -> Vec<(String, String)> {
    let out = cp.kubectl(
        ns,
        &[
            "get",
            "ippools.crd.tortie.dev",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.spec.cidr}{\"\\n\"}{end}",
        ],
    );
    let mut v: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| l.split_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    v.sort();
    v
}

#[test]
fn a_bad_pool_cidr_stops_the_agent_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENT)
        .arg("run")
        .env("CALICO_IPV4POOL_CIDR", "10.244.0.0/33")
        .env("NODENAME", "node-a")
        .env("KUBECONFIG", dir.path().join("none"))
        .env("TORTIE_AGENT_SOCKET", dir.path().join("agent.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            r#"CALICO_IPV4POOL_CIDR="10.244.0.0/33": prefix length 33 is larger than 32"#
        ),
        "{stderr}"
    );
    // Refused before touching anything.
    assert!(!dir.path().join("agent.sock").exists());
}

#[test]
fn registers_the_node_creates_the_default_pool_once_and_serves_a_root_only_socket() {
    if !apiserver_binary().exists() {
        panic!(
            "{} is missing: run scripts/deps",
            apiserver_binary().display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = Ns::new();
    let cp = ControlPlane::start(&ns, dir.path());
    cp.apply(&ns, &crds_yaml());
    cp.apply(&ns, NODE_YAML);
    let tree = NodeTree::new(&dir.path().join("node-a"));

    // First start: no pool exists, so the default one is created from CALICO_IPV4POOL_CIDR.
    let mut agent = tree.start(&ns, &cp.kubeconfig, "10.244.0.0/16");
    let status = tree.wait_ready(&mut agent);
    assert_eq!(status.node_name, "node-a");
    // eth0's MTU, routed (no VXLAN).
    assert_eq!(status.mtu, 1460);

    let mode = std::fs::metadata(tree.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let annotations = cp.kubectl(
        &ns,
        &[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
    );
    let annotations: serde_json::Value = serde_json::from_str(&annotations).unwrap();
    assert_eq!(annotations["tortie.dev/ipv4-address"], "10.77.0.2/24");
    assert_eq!(annotations["tortie.dev/as-number"], "64512");

    assert_eq!(
        pools(&cp, &ns),
        vec![("default-ipv4-ippool".to_owned(), "10.244.0.0/16".to_owned())]
    );

    // The readiness probe agrees; `run` installed nothing for CNI (install-cni does that).
    let probe = Command::new(AGENT)
        .args(["health", "--ready"])
        .env("TORTIE_AGENT_SOCKET", tree.socket())
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout),
        "tortie-node is ready\n"
    );
    assert!(!tree.conf_dir().exists() && !tree.bin_dir().exists());

    // Forwarding is on in the node's namespace.
    let fwd = ns
        .command("cat")
        .arg("/proc/sys/net/ipv4/ip_forward")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    // The CNI path through the real IPAM store and the kernel: Allocate, EndpointReady.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = tree.socket();
    let (att, pod) = (attachment("c1"), pod("p1", "u1"));
    let allocate_c1 = async |c: &mut Cni| {
        c.allocate(api::AllocateRequest {
            attachment: att.clone(),
            pod: pod.clone(),
        })
        .await
    };
    let reply = cni(&rt, &sock, allocate_c1).unwrap();
    assert_eq!(reply.mtu, 1460);
    assert_eq!(reply.ips.len(), 1);
    let addr: ipnet::Ipv4Net = reply.ips[0].address.parse().unwrap();
    assert_eq!(addr.prefix_len(), 32);
    assert!(
        "10.244.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&addr.addr()),
        "{addr}"
    );
    assert_eq!(reply.ips[0].gateway, "169.254.1.1");
    // Durable: the block holding it is in the apiserver.
    let blocks = cp.kubectl(&ns, &["get", "ipamblocks.crd.tortie.dev", "-o", "name"]);
    assert_eq!(blocks.lines().count(), 1, "{blocks}");
    let again = cni(&rt, &sock, allocate_c1).unwrap();
    assert_eq!(again.ips, reply.ips);

    // The kubelet's part: the Pod exists before its sandbox is wired (EndpointReady waits
    // for it, to know the pod's labels and so its policy).
    cp.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p1, namespace: default}\nspec:\n  nodeName: node-a\n  containers: [{name: c, image: pause}]\n",
    );
    // The CNI plugin's part, done by hand: the host veth (peer stays here: no pod netns needed
    // to see the host route).
    let veth = tortie_api::veth::host_veth_name(Some(("default", "p1")), "c1");
    ns.ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "p1peer",
    ]);
    ns.ip(&["link", "set", &veth, "up"]);
    cni(&rt, &sock, async |c| {
        c.endpoint_ready(api::EndpointReadyRequest {
            attachment: att.clone(),
            pod: pod.clone(),
            host_ifname: veth.clone(),
            addresses: vec![addr.to_string()],
        })
        .await
    })
    .unwrap();
    let host_route = format!("{} dev {veth} scope link", addr.addr());
    let ours = ns.ip(&["route", "show", "proto", "116"]);
    assert!(ours.contains(&host_route), "{ours}");
    assert!(ours.contains("blackhole 10.244."), "{ours}");

    // SIGKILL and restart: the pod's route survives (restored from the allocation).
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    drop(agent);
    let mut agent = tree.start(&ns, &cp.kubeconfig, "10.244.0.0/16");
    tree.wait_ready(&mut agent);
    let ours = ns.ip(&["route", "show", "proto", "116"]);
    assert!(ours.contains(&host_route), "{ours}\n{}", tree.log());
    assert!(
        tree.log().contains("restoring local endpoints endpoints=1"),
        "{}",
        tree.log()
    );

    // Release: the route goes, then the address; CHECK sees nothing.
    let released = cni(&rt, &sock, async |c| {
        c.release(api::ReleaseRequest {
            attachment: att.clone(),
        })
        .await
    })
    .unwrap();
    assert_eq!(released.released, 1);
    let ours = ns.ip(&["route", "show", "proto", "116"]);
    assert!(!ours.contains(&host_route), "{ours}");
    assert!(held(&rt, &sock, "c1").is_empty());

    // The same pod recreated (new sandbox, same namespace/name): its veth comes back under the
    // same name with a new ifindex, and its route must still go in.
    ns.ip(&["link", "del", &veth]);
    ns.ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "p1peer",
    ]);
    ns.ip(&["link", "set", &veth, "up"]);
    let addr2 = allocate(&rt, &sock, "c2", "p1", "u1").remove(0);
    cni(&rt, &sock, async |c| {
        c.endpoint_ready(api::EndpointReadyRequest {
            attachment: attachment("c2"),
            pod: pod.clone(),
            host_ifname: veth.clone(),
            addresses: vec![addr2.clone()],
        })
        .await
    })
    .unwrap_or_else(|e| panic!("EndpointReady for a recreated veth: {e}\n{}", tree.log()));
    let ours = ns.ip(&["route", "show", "proto", "116"]);
    let host_route2 = format!("{} dev {veth} scope link", addr2.trim_end_matches("/32"));
    assert!(ours.contains(&host_route2), "{ours}");

    // SIGTERM: a clean stop that removes the socket.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = agent.0.wait().unwrap();
    assert!(status.success(), "exit {status}:\n{}", tree.log());
    assert!(!tree.socket().exists());

    // Second start with another CIDR while a pool exists: nothing new is created.
    let mut agent = tree.start(&ns, &cp.kubeconfig, "10.99.0.0/16");
    tree.wait_ready(&mut agent);
    assert_eq!(
        pools(&cp, &ns),
        vec![("default-ipv4-ippool".to_owned(), "10.244.0.0/16".to_owned())]
    );
    drop(agent);

    // A user's own pool, and no default one: still nothing created.
    cp.kubectl(
        &ns,
        &["delete", "ippools.crd.tortie.dev", "default-ipv4-ippool"],
    );
    cp.apply(&ns, "apiVersion: crd.tortie.dev/v1\nkind: IPPool\nmetadata:\n  name: mine\nspec:\n  cidr: 10.50.0.0/16\n  blockSize: 26\n");
    let mut agent = tree.start(&ns, &cp.kubeconfig, "10.99.0.0/16");
    tree.wait_ready(&mut agent);
    assert_eq!(
        pools(&cp, &ns),
        vec![("mine".to_owned(), "10.50.0.0/16".to_owned())]
    );
}

type Cni = CniClient<tonic::transport::Channel>;

/// One call on the agent's Cni service, over a fresh connection: the plugin makes one per
/// invocation.
fn cni<T>(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    call: impl AsyncFnOnce(&mut Cni) -> Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, tonic::Status> {
    rt.block_on(async {
        let mut c = CniClient::new(tortie_api::connect_unix(sock).await.unwrap());
        call(&mut c).await.map(tonic::Response::into_inner)
    })
}

/// Container `cid`'s attachment to the default pod network.
fn attachment(cid: &str) -> Option<api::Attachment> {
    Some(api::Attachment {
        network: "k8s-pod-network".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
    })
}

/// Pod `name` in namespace `default`.
fn pod(name: &str, uid: &str) -> Option<api::Pod> {
    Some(api::Pod {
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
    })
}

fn allocate(
    rt: &tokio::runtime::Runtime,
    sock: &Path,
    cid: &str,
    name: &str,
    uid: &str,
) -> Vec<String> {
    let reply = cni(rt, sock, async |c| {
        c.allocate(api::AllocateRequest {
            attachment: attachment(cid),
            pod: pod(name, uid),
        })
        .await
    })
    .unwrap();
    reply.ips.into_iter().map(|i| i.address).collect()
}

fn held(rt: &tokio::runtime::Runtime, sock: &Path, cid: &str) -> Vec<String> {
    cni(rt, sock, async |c| {
        c.check(api::CheckRequest {
            attachment: attachment(cid),
        })
        .await
    })
    .unwrap()
    .addresses
}

#[test]
fn leaks_go_after_the_grace_period_live_ones_never_and_a_lost_apiserver_means_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Ns::new();
    let mut cp = ControlPlane::start(&ns, dir.path());
    cp.apply(&ns, &crds_yaml());
    cp.apply(&ns, NODE_YAML);
    cp.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: alive\n  namespace: default\nspec:\n  nodeName: node-a\n  containers:\n  - name: c\n    image: busybox\n",
    );
    let uid = cp.kubectl(
        &ns,
        &["get", "pod", "alive", "-o", "jsonpath={.metadata.uid}"],
    );
    let mut tree = NodeTree::new(&dir.path().join("node-a"));
    tree.extra_env
        .push(("TORTIE_IPAM_GC_GRACE".into(), "2s".into()));
    let mut agent = tree.start(&ns, &cp.kubeconfig, "10.244.0.0/16");
    tree.wait_ready(&mut agent);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sock = tree.socket();
    let alive = allocate(&rt, &sock, "c-alive", "alive", &uid);
    let ghost = allocate(&rt, &sock, "c-ghost", "ghost", "");
    // Same name as the live pod, but the UID of an earlier incarnation.
    let stale = allocate(&rt, &sock, "c-stale", "alive", "uid-of-an-older-pod");
    // Inside the grace period nothing goes.
    assert_eq!(held(&rt, &sock, "c-ghost"), ghost);
    assert_eq!(held(&rt, &sock, "c-stale"), stale);

    let start = Instant::now();
    while !held(&rt, &sock, "c-ghost").is_empty() || !held(&rt, &sock, "c-stale").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "leaks not released:\n{}",
            tree.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "released too early: {:?}",
        start.elapsed()
    );
    assert_eq!(held(&rt, &sock, "c-alive"), alive);
    // And it stays.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(held(&rt, &sock, "c-alive"), alive);

    // Without the apiserver the agent says it is not ready, and ADDs are "try again later".
    cp.kill_apiserver();
    let start = Instant::now();
    let status = loop {
        let s = rt.block_on(async {
            let ch = tortie_api::connect_unix(&sock).await.unwrap();
            StatusClient::new(ch)
                .get_status(api::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
        });
        if !s.ready {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still ready without an apiserver:\n{}",
            tree.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        status.reason.starts_with("the apiserver is unreachable"),
        "{}",
        status.reason
    );
    let err = cni(&rt, &sock, async |c| {
        c.allocate(api::AllocateRequest {
            attachment: attachment("c-late"),
            pod: None,
        })
        .await
    })
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    drop(agent);
}
