//! IPAM garbage collection against a real kube-apiserver: leaked handles (their pod is gone,
//! or was recreated under the same name) are released after the grace period and live ones
//! never are; a deleted Node's blocks and affinities are released.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use support::apiserver::Apiserver;
use tortie_ipam::{Allocator, GcScope, Handle, IpFamily, IpPool, IpamConfig, PodRef, Store};
use tortie_node::datastore::{self, KubeStore, NodeGc, PodIndex};

async fn create_pod(pods: &Api<Pod>, name: &str, node: &str) -> String {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "pause" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

async fn create_node(nodes: &Api<Node>, name: &str) {
    let node: Node = serde_json::from_value(
        serde_json::json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": name } }),
    )
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
}

fn pod_ref(name: &str, uid: Option<String>) -> Option<PodRef> {
    Some(PodRef {
        namespace: "default".into(),
        name: name.into(),
        uid,
    })
}

#[test]
fn leaks_and_deleted_nodes_are_collected() {
    let server = Apiserver::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .block_on(|client| async move {
            datastore::install_crds(&client, Duration::from_secs(30))
                .await
                .unwrap();
            let store = KubeStore::new(client.clone());
            let pool = IpPool::new("gc", "10.88.0.0/24".parse().unwrap(), 28).unwrap();
            store.create_pool(&pool).await.unwrap();
            let nodes: Api<Node> = Api::all(client.clone());
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            create_node(&nodes, "n1").await;
            create_node(&nodes, "n2").await;

            let config = IpamConfig::default();
            let grace = config.leak_grace;
            let mut n1 = Allocator::new(store.clone(), "n1", BTreeMap::new(), config.clone());
            let live_uid = create_pod(&pods, "live", "n1").await;
            let old_uid = create_pod(&pods, "recreated", "n1").await;
            let h = |c: &str| Handle::for_container("k8s-pod-network", c);
            n1.allocate(&h("live"), IpFamily::V4, pod_ref("live", Some(live_uid)))
                .await
                .unwrap();
            n1.allocate(&h("gone"), IpFamily::V4, pod_ref("gone", None))
                .await
                .unwrap();
            n1.allocate(
                &h("recreated"),
                IpFamily::V4,
                pod_ref("recreated", Some(old_uid)),
            )
            .await
            .unwrap();
            n1.allocate(
                &Handle::from_raw("vxlan-tunnel-addr-n1"),
                IpFamily::V4,
                None,
            )
            .await
            .unwrap();
            // Same name, new pod: the old allocation is a leak.
            pods.delete(
                "recreated",
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await
            .unwrap();
            create_pod(&pods, "recreated", "n1").await;

            let t0 = Instant::now();
            let index = PodIndex::load(&client, Some("n1")).await.unwrap();
            assert!(
                n1.gc_leaks(GcScope::Node("n1"), t0, |p| index.exists(p))
                    .await
                    .unwrap()
                    .is_empty(),
                "grace first"
            );
            let index = PodIndex::load(&client, Some("n1")).await.unwrap();
            let mut leaked = n1
                .gc_leaks(GcScope::Node("n1"), t0 + grace, |p| index.exists(p))
                .await
                .unwrap();
            leaked.sort();
            assert_eq!(leaked, vec![h("gone"), h("recreated")]);
            assert_eq!(
                n1.lookup(&h("live")).await.unwrap().len(),
                1,
                "a live pod's address is kept"
            );
            assert_eq!(
                n1.lookup(&Handle::from_raw("vxlan-tunnel-addr-n1"))
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert!(n1.lookup(&h("gone")).await.unwrap().is_empty());

            // n2 allocates, then its Node object is deleted.
            let mut n2 = Allocator::new(store.clone(), "n2", BTreeMap::new(), config);
            let on_n2 = n2.allocate(&h("on-n2"), IpFamily::V4, None).await.unwrap();
            nodes.delete("n2", &DeleteParams::default()).await.unwrap();
            let mut node_gc = NodeGc::new(Duration::from_secs(60));
            assert!(
                node_gc.run(&client, &mut n1, t0).await.unwrap().is_empty(),
                "grace first"
            );
            assert_eq!(
                node_gc
                    .run(&client, &mut n1, t0 + Duration::from_secs(60))
                    .await
                    .unwrap(),
                vec!["n2".to_string()]
            );
            assert!(store.list_affinities("n2").await.unwrap().is_empty());
            assert_eq!(
                store.list_affinities("n1").await.unwrap().len(),
                1,
                "n1 keeps its block"
            );
            let block = store.get_block(on_n2.block).await.unwrap().unwrap().value;
            assert_eq!(
                block.affinity, None,
                "the block still in use is orphaned, not deleted"
            );
            assert_eq!(block.find(&h("on-n2")), Some(on_n2.ip));
            assert!(
                node_gc
                    .run(&client, &mut n1, t0 + Duration::from_secs(120))
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
