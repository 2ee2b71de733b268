//! The cluster cache against a real kube-apiserver (root: it runs in its own netns): every
//! kind arrives by watch, changes show up without any listing on a timer, and an apiserver
//! that goes away and comes back is caught up without restarting the cache.
//!
//! One test in this binary: the test thread enters the apiserver's network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::apiserver::Apiserver;
use tokio::sync::watch;
use tortie_node::cache::{self, Kind, Protocol, Snapshot};
use tortie_node::metrics::Metrics;

/// Waits until `done` holds for the newest snapshot; fails the test with `what` after 30 s.
async fn until(rx: &mut watch::Receiver<Snapshot>, what: &str, done: impl Fn(&Snapshot) -> bool) {
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| done(s)))
        .await
        .unwrap_or_else(|_| panic!("the cache never showed: {what}"))
        .unwrap();
}

fn kubectl_apply(server: &Apiserver, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object.yaml");
    std::fs::write(&path, yaml).unwrap();
    server
        .kubectl(&["apply", "-f", path.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_kind_arrives_by_watch_and_survives_an_apiserver_restart() {
    let mut server = Apiserver::start().unwrap_or_else(|e| panic!("{e}"));
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds.yaml");
    server
        .kubectl(&["apply", "-f", crds])
        .unwrap_or_else(|e| panic!("{e}"));

    // This thread joins the apiserver's namespace; the runtime's workers inherit it.
    let ns = std::fs::File::open(format!("/run/netns/{}", server.netns())).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kubeconfig = server.kubeconfig();
    let metrics = Metrics::new();
    let cache_metrics = metrics.clone();
    let mut rx = rt.block_on(async move {
        let raw = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(raw, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        cache::spawn(kube::Client::try_from(config).unwrap(), &cache_metrics)
    });
    rt.block_on(until(&mut rx, "every kind listed", Snapshot::all_synced));

    kubectl_apply(
        &server,
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: busybox
    ports:
    - {name: serve-80-tcp, containerPort: 80}
    - {name: serve-80-udp, containerPort: 80, protocol: UDP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
---
apiVersion: crd.tortie.dev/v1
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
"#,
    );
    rt.block_on(until(&mut rx, "namespace, pod, policy and pool", |s| {
        s.namespaces
            .get("x")
            .is_some_and(|l| l.get("ns").map(String::as_str) == Some("x"))
            && s.pods.contains_key(&("x".into(), "a".into()))
            && s.policies.contains_key(&("x".into(), "deny".into()))
            && s.pools.contains_key("pool-a")
    }));
    let snap = rx.borrow().clone();
    let pod = &snap.pods[&("x".to_owned(), "a".to_owned())];
    assert_eq!(pod.labels["pod"], "a");
    assert_eq!(pod.node.as_deref(), Some("node-1"));
    assert_eq!(
        pod.named_ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol, p.port))
            .collect::<Vec<_>>(),
        [
            ("serve-80-tcp", Protocol::Tcp, 80),
            ("serve-80-udp", Protocol::Udp, 80)
        ]
    );

    // Label changes and deletions are watch events too.
    server
        .kubectl(&["label", "namespace", "x", "ns=renamed", "--overwrite"])
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .kubectl(&["label", "pod", "-n", "x", "a", "pod=b", "--overwrite"])
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .kubectl(&["delete", "networkpolicy", "-n", "x", "deny"])
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(until(
        &mut rx,
        "relabelled namespace and pod, deleted policy",
        |s| {
            s.namespaces["x"].get("ns").map(String::as_str) == Some("renamed")
                && s.pods
                    .get(&("x".into(), "a".into()))
                    .is_some_and(|p| p.labels["pod"] == "b")
                && s.policies.is_empty()
        },
    ));

    // The apiserver goes away for a few seconds; the cache keeps what it had, then catches
    // up with changes made after the restart without being restarted itself.
    server.stop_apiserver();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rx.borrow().namespaces.contains_key("x"),
        "an outage must not empty the cache"
    );
    server.start_apiserver().unwrap_or_else(|e| panic!("{e}"));
    server
        .kubectl(&["create", "namespace", "after-restart"])
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .kubectl(&[
            "delete",
            "pod",
            "-n",
            "x",
            "a",
            "--grace-period=0",
            "--force",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(until(
        &mut rx,
        "changes made after the apiserver restart",
        |s| {
            s.namespaces.contains_key("after-restart")
                && !s.pods.contains_key(&("x".into(), "a".into()))
        },
    ));
    assert!(rx.borrow().is_synced(Kind::Node));
    // The outage broke every watch once, and each break was counted for its kind.
    let scraped = rt.block_on(metrics.scrape(&Default::default()));
    for kind in ["Pod", "Namespace", "NetworkPolicy", "IPPool", "Node"] {
        let series = format!(r#"tortie_watch_restarts_total{{kind="{kind}"}} "#);
        let count: u64 = scraped
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in\n{scraped}"));
        assert!(count >= 1, "{series}{count}");
    }
    drop(rt);
}
