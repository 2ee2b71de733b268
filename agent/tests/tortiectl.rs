//! The built tortiectl binary against a real kube-apiserver (root: it runs in its own
//! netns): `ipam show`, `ipam check`, `get` and `node status` compared with golden files in
//! tests/golden/ (`TORTIE_BLESS=1` rewrites them after a deliberate change), and exit codes:
//! `ipam check` is 0 on a consistent state and 1 on each kind of problem, made one at a time
//! through the API and undone again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::apiserver::Apiserver;
use tortie_ipam::{
    Allocation, Allocator, Handle, IpFamily, IpPool, IpamConfig, PodRef, Store, record,
};
use tortie_node::datastore::{self, KubeStore, crd};

/// What one run of tortiectl did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the built tortiectl inside the apiserver's netns with the admin KUBECONFIG.
fn tortiectl(server: &Apiserver, args: &[&str]) -> Run {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            server.netns(),
            env!("CARGO_BIN_EXE_tortiectl"),
        ])
        .args(args)
        .env("KUBECONFIG", server.kubeconfig())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Replaces what the apiserver makes up on each run (times, versions, UIDs) with a mark.
fn mask(text: &str) -> String {
    let re = regex::Regex::new(
        r#"(?m)("?(?:creationTimestamp|resourceVersion|uid|generation)"?: )"?[^",\n]*"?"#,
    )
    .unwrap();
    re.replace_all(text, "${1}<masked>").into_owned()
}

/// Compares `actual` with tests/golden/`name`; `TORTIE_BLESS=1` writes it first.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("TORTIE_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with TORTIE_BLESS=1 to write it",
            path.display()
        )
    });
    assert!(
        actual == want,
        "tortiectl's output differs from {} (TORTIE_BLESS=1 rewrites it after a deliberate change)\n--- want\n{want}--- got\n{actual}",
        path.display()
    );
}

/// Runs tortiectl, requires exit `code`, and compares stdout with a golden file.
fn expect(server: &Apiserver, args: &[&str], code: i32, golden_name: &str) -> Run {
    let run = tortiectl(server, args);
    assert_eq!(run.code, code, "tortiectl {args:?}: {run:?}");
    golden(golden_name, &mask(&run.stdout));
    run
}

fn pod_ref(name: &str, uid: Option<String>) -> Option<PodRef> {
    Some(PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid,
    })
}

fn handle(container: &str) -> Handle {
    Handle::for_container("k8s-pod-network", container)
}

async fn create_node(client: &kube::Client, name: &str, ip: &str) {
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "annotations": {
            datastore::ANNOTATION_IPV4: ip, datastore::ANNOTATION_AS: "64512"
        } }
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

/// Creates a pod bound to `node`; returns its UID.
async fn create_pod(client: &kube::Client, name: &str, node: &str) -> String {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "pause" }] }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// Sets a pod's address, as the kubelet reports it after the CNI ADD.
async fn set_pod_ip(client: &kube::Client, name: &str, ip: IpAddr) {
    Api::<Pod>::namespaced(client.clone(), "default")
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "status": { "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }] }
            })),
        )
        .await
        .unwrap();
}

/// The addresses the clean state hands out, for the scenarios that follow.
struct Clean {
    web1: tortie_ipam::Allocated,
    web2: IpAddr,
}

/// Two pools, two nodes, a pod on each with the address IPAM gave it, a BGP peer and the
/// BGP configuration: everything consistent.
async fn build_clean_state(client: kube::Client) -> Clean {
    datastore::install_crds(&client, Duration::from_secs(30))
        .await
        .unwrap();
    let store = KubeStore::new(client.clone());
    let main = IpPool::new("default-ipv4-ippool", "10.244.0.0/16".parse().unwrap(), 26).unwrap();
    store.create_pool(&main).await.unwrap();
    let mut edge = IpPool::new("edge", "10.250.0.0/24".parse().unwrap(), 28).unwrap();
    edge.nat_outgoing = false;
    edge.disabled = true;
    edge.node_selector = "rack == 'r1'".parse().unwrap();
    store.create_pool(&edge).await.unwrap();
    create_node(&client, "n1", "172.31.0.11/24").await;
    create_node(&client, "n2", "172.31.0.12/24").await;

    let peer: crd::BGPPeer = serde_json::from_value(serde_json::json!({
        "apiVersion": "crd.tortie.dev/v1", "kind": "BGPPeer",
        "metadata": { "name": "tor" },
        "spec": { "peerIP": "172.31.0.1", "asNumber": 65000, "nodeSelector": "rack == 'r1'" }
    }))
    .unwrap();
    Api::<crd::BGPPeer>::all(client.clone())
        .create(&PostParams::default(), &peer)
        .await
        .unwrap();
    let config: crd::BGPConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "crd.tortie.dev/v1", "kind": "BGPConfiguration",
        "metadata": { "name": "default" },
        "spec": { "nodeToNodeMeshEnabled": false, "asNumber": 64512 }
    }))
    .unwrap();
    Api::<crd::BGPConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    let config = IpamConfig::default();
    let mut n1 = Allocator::new(store.clone(), "n1", BTreeMap::new(), config.clone());
    let mut n2 = Allocator::new(store.clone(), "n2", BTreeMap::new(), config);
    let uid1 = create_pod(&client, "web-1", "n1").await;
    let uid2 = create_pod(&client, "web-2", "n2").await;
    let web1 = n1
        .allocate(
            &handle("c0ffee01"),
            IpFamily::V4,
            pod_ref("web-1", Some(uid1)),
        )
        .await
        .unwrap();
    let web2 = n2
        .allocate(
            &handle("c0ffee02"),
            IpFamily::V4,
            pod_ref("web-2", Some(uid2)),
        )
        .await
        .unwrap();
    set_pod_ip(&client, "web-1", web1.ip).await;
    set_pod_ip(&client, "web-2", web2.ip).await;
    Clean {
        web1,
        web2: web2.ip,
    }
}

#[test]
fn ipam_show_check_and_get_against_golden_files() {
    let server = Apiserver::start().unwrap_or_else(|e| panic!("{e}"));
    let clean = server
        .block_on(build_clean_state)
        .unwrap_or_else(|e| panic!("{e}"));

    // ipam show, in its three shapes.
    expect(&server, &["ipam", "show"], 0, "ipam_show.txt");
    expect(
        &server,
        &["ipam", "show", "--show-blocks"],
        0,
        "ipam_show_blocks.txt",
    );
    let web1 = clean.web1.ip.to_string();
    expect(
        &server,
        &["ipam", "show", "--ip", &web1],
        0,
        "ipam_show_ip_in_use.txt",
    );
    let free_in_block = clean.web1.block.addr(40).unwrap().to_string();
    expect(
        &server,
        &["ipam", "show", "--ip", &free_in_block],
        0,
        "ipam_show_ip_free.txt",
    );
    expect(
        &server,
        &["ipam", "show", "--ip", "10.250.0.3"],
        0,
        "ipam_show_ip_unclaimed.txt",
    );
    let outside = expect(
        &server,
        &["ipam", "show", "--ip", "192.0.2.1"],
        1,
        "empty.txt",
    );
    assert_eq!(
        outside.stderr,
        "tortiectl: 192.0.2.1 is not in any IP pool (pools: default-ipv4-ippool 10.244.0.0/16, edge 10.250.0.0/24): no tortie node hands it out\n"
    );

    // get, as tables, and one kind each as YAML and JSON.
    for kind in ["ippools", "bgppeers", "bgpconfig", "nodes"] {
        expect(&server, &["get", kind], 0, &format!("get_{kind}.txt"));
    }
    expect(
        &server,
        &["get", "ippools", "-o", "yaml"],
        0,
        "get_ippools.yaml",
    );
    expect(
        &server,
        &["get", "nodes", "-o", "json"],
        0,
        "get_nodes.json",
    );

    // A consistent state.
    expect(&server, &["ipam", "check"], 0, "ipam_check_clean.txt");

    // Leaks: an allocation for a pod that never existed, and a pod whose address changed.
    let web2 = clean.web2;
    server
        .block_on(move |client| async move {
            let store = KubeStore::new(client.clone());
            let mut n1 = Allocator::new(store, "n1", BTreeMap::new(), IpamConfig::default());
            n1.allocate(
                &handle("dead0001"),
                IpFamily::V4,
                pod_ref("gone", Some("7e57-0000-gone".into())),
            )
            .await
            .unwrap();
            set_pod_ip(&client, "web-2", "10.244.255.254".parse().unwrap()).await;
        })
        .unwrap();
    expect(&server, &["ipam", "check"], 1, "ipam_check_leaks.txt");
    server
        .block_on(move |client| async move {
            let store = KubeStore::new(client.clone());
            let mut n1 = Allocator::new(store, "n1", BTreeMap::new(), IpamConfig::default());
            assert_eq!(n1.release(&handle("dead0001")).await.unwrap().len(), 1);
            set_pod_ip(&client, "web-2", web2).await;
        })
        .unwrap();
    expect(&server, &["ipam", "check"], 0, "ipam_check_clean.txt");

    // A conflict: a /27 written over the first half of web-1's block, giving web-1's
    // address to another handle.
    let web1_block = clean.web1.block;
    let web1_ip = clean.web1.ip;
    let overlapping: tortie_ipam::BlockCidr = ipnet::IpNet::new(web1_ip, 27)
        .unwrap()
        .trunc()
        .to_string()
        .parse()
        .unwrap();
    assert!(web1_block.net().contains(&overlapping.net()));
    server
        .block_on(move |client| async move {
            let record = record::encode(
                overlapping.ordinal(web1_ip).unwrap(),
                &Allocation {
                    handle: handle("beef0001"),
                    node: "n2".into(),
                    pod: pod_ref("web-1", None),
                    sequence: 1,
                },
            );
            let block = crd::IPAMBlock::new(
                &overlapping.object_name(),
                crd::IPAMBlockSpec {
                    cidr: overlapping.to_string(),
                    affinity: Some("n2".into()),
                    allocations: vec![record],
                    sequence_number: 1,
                    cursor: 0,
                },
            );
            Api::<crd::IPAMBlock>::all(client)
                .create(&PostParams::default(), &block)
                .await
                .unwrap();
        })
        .unwrap();
    expect(&server, &["ipam", "check"], 1, "ipam_check_conflict.txt");
    let name = overlapping.object_name();
    server
        .block_on(move |client| async move {
            Api::<crd::IPAMBlock>::all(client)
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap();
        })
        .unwrap();
    expect(&server, &["ipam", "check"], 0, "ipam_check_clean.txt");

    // An orphaned affinity: a node that is gone still claims a block.
    server
        .block_on(|client| async move {
            let affinity = tortie_ipam::BlockAffinity {
                node: "ghost".into(),
                cidr: "10.244.255.0/26".parse().unwrap(),
                state: tortie_ipam::AffinityState::Confirmed,
            };
            let store = KubeStore::new(client);
            store.create_affinity(&affinity).await.unwrap();
        })
        .unwrap();
    expect(&server, &["ipam", "check"], 1, "ipam_check_orphan.txt");
    server
        .block_on(|client| async move {
            let store = KubeStore::new(client);
            for a in store.list_affinities("ghost").await.unwrap() {
                store.delete_affinity(&a.value, &a.revision).await.unwrap();
            }
        })
        .unwrap();
    expect(&server, &["ipam", "check"], 0, "ipam_check_clean.txt");
}

/// Without an agent, `node status` says so on stdout, why on stderr, and fails.
#[test]
fn node_status_without_an_agent_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_tortiectl"))
        .args(["--socket", socket.to_str().unwrap(), "node", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        tortie_node::node_status::NOT_RUNNING
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "tortiectl: cannot connect to {}: ",
            socket.display()
        )),
        "{stderr}"
    );
}

/// `node status` (table and `-o json`) from a fixed status: the built tortiectl asks a
/// Status server on a unix socket that answers one fixed reply. Its times are fixed and in
/// the past, and TZ=UTC, so SINCE is a fixed date. No apiserver is needed.
mod node_status_golden {
    use std::process::Command;

    use super::golden;

    use tokio::net::UnixListener;
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Request, Response, Status};
    use tortie_api::v1::status_server::{Status as StatusApi, StatusServer};
    use tortie_api::v1::{BgpPeer, StatusReply, StatusRequest};

    /// 2016-11-21 23:30:04 UTC, the time in calicoctl's documented example.
    const SINCE: i64 = 1_479_771_004;

    struct FixedStatus(StatusReply);

    #[tonic::async_trait]
    impl StatusApi for FixedStatus {
        async fn get_status(
            &self,
            _req: Request<StatusRequest>,
        ) -> Result<Response<StatusReply>, Status> {
            Ok(Response::new(self.0.clone()))
        }
    }

    fn peer(address: &str, peer_type: &str, state: &str) -> BgpPeer {
        BgpPeer {
            address: address.into(),
            peer_type: peer_type.into(),
            state: state.into(),
            since_unix: SINCE,
            asn: 64512,
            prefixes_received: 2,
            prefixes_accepted: 2,
            capabilities: vec!["ipv4-unicast".into(), "4-octet-as".into()],
            ..Default::default()
        }
    }

    /// One of each peer type, Established and not, both families.
    fn every_peer_type(ready: bool, reason: &str) -> StatusReply {
        let mut refused = peer("192.0.2.1", "global", "Active");
        refused.last_error = "Socket: Connection refused".into();
        refused.asn = 64513;
        refused.prefixes_received = 0;
        refused.prefixes_accepted = 0;
        refused.capabilities = Vec::new();
        StatusReply {
            ready,
            node_name: "node-1".into(),
            mtu: 1440,
            version: "0.0.0-golden".into(),
            bgp_peers: vec![
                peer("172.31.0.12", "node-to-node mesh", "Established"),
                peer("172.31.0.13", "node-to-node mesh", "Established"),
                refused,
                peer("172.31.0.100", "node specific", "Established"),
                peer("fd00::100", "node specific", "OpenSent"),
            ],
            reason: reason.into(),
            stalled_tasks: Vec::new(),
        }
    }

    /// `tortiectl --socket S node status ARGS` against a server answering `reply`.
    fn node_status(reply: StatusReply, args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(async { UnixListener::bind(&socket) })
            .unwrap();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(StatusServer::new(FixedStatus(reply)))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_tortiectl"))
            .args(["--socket", socket.to_str().unwrap(), "node", "status"])
            .args(args)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn node_status_table_and_json_show_every_peer_type() {
        let reply = every_peer_type(true, "");
        golden("node_status.txt", &node_status(reply.clone(), &[]));
        golden("node_status.json", &node_status(reply, &["-o", "json"]));
    }

    #[test]
    fn a_node_that_is_not_ready_says_why_above_its_peers() {
        let reply = every_peer_type(
            false,
            "BGP peers not Established within the start-up window (60s): 192.0.2.1, fd00::100",
        );
        golden("node_status_not_ready.txt", &node_status(reply, &[]));
    }
}
