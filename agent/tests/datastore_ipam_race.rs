//! The IPAM race against a real kube-apiserver: ten agents for ten nodes allocate from one
//! small pool at the same moment. The apiserver's resourceVersion check is the only thing
//! between them. No address may be handed out twice, every block must have exactly one
//! owner, and what each agent returned must be exactly what is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::apiserver::Apiserver;
use tortie_ipam::{
    AffinityState, Allocator, CountingStore, Handle, IpFamily, IpPool, IpamConfig, Store,
};
use tortie_node::datastore::{self, KubeStore};

const NODES: usize = 10;
const PER_NODE: usize = 20;

#[test]
fn ten_agents_racing_on_one_pool_never_duplicate() {
    let server = Apiserver::start().unwrap_or_else(|e| panic!("{e}"));
    server
        .block_on(|client| async move {
            datastore::install_crds(&client, Duration::from_secs(30))
                .await
                .unwrap();
            // 16 blocks of 16 for 10 nodes and 200 addresses: some nodes claim two blocks, claims
            // collide, and the last allocations must borrow.
            let pool = IpPool::new("race", "10.77.0.0/24".parse().unwrap(), 28).unwrap();
            assert!(KubeStore::new(client).create_pool(&pool).await.unwrap());
        })
        .unwrap_or_else(|e| panic!("{e}"));

    let start = Arc::new(Barrier::new(NODES));
    let agents: Vec<_> = (0..NODES)
        .map(|n| {
            let start = start.clone();
            server.spawn_in(move |client| async move {
                let node = format!("node-{n}");
                let store = CountingStore::new(KubeStore::new(client));
                let mut alloc = Allocator::new(
                    store.clone(),
                    node.clone(),
                    BTreeMap::new(),
                    IpamConfig::default(),
                );
                start.wait();
                let mut got = Vec::new();
                for i in 0..PER_NODE {
                    let h = Handle::for_container("k8s-pod-network", &format!("{node}-c{i}"));
                    let a = alloc
                        .allocate(&h, IpFamily::V4, None)
                        .await
                        .map_err(|e| format!("{node} #{i}: {e}"))?;
                    got.push((a.ip, h));
                }
                Ok::<_, String>((got, store.stats()))
            })
        })
        .collect();
    let mut returned: HashMap<IpAddr, Handle> = HashMap::new();
    let (mut writes, mut lost) = (0, 0);
    for agent in agents {
        let (got, stats) = agent.join().unwrap().unwrap().unwrap();
        writes += stats.writes;
        lost += stats.lost_races;
        for (ip, h) in got {
            if let Some(other) = returned.insert(ip, h.clone()) {
                panic!("{ip} handed out twice: to {other} and {h}");
            }
        }
    }
    assert_eq!(returned.len(), NODES * PER_NODE);
    eprintln!(
        "{} allocations: {writes} apiserver writes, {lost} of them lost a compare-and-swap race",
        returned.len()
    );

    let (blocks, affinities) = server
        .block_on(|client| async move {
            let store = KubeStore::new(client);
            let blocks = store.list_blocks().await.unwrap();
            let mut affinities = Vec::new();
            for n in 0..NODES {
                affinities.extend(store.list_affinities(&format!("node-{n}")).await.unwrap());
            }
            (blocks, affinities)
        })
        .unwrap_or_else(|e| panic!("{e}"));

    let mut stored: HashMap<IpAddr, Handle> = HashMap::new();
    for b in &blocks {
        for (ip, a) in b.value.addresses() {
            assert!(
                stored.insert(ip, a.handle.clone()).is_none(),
                "{ip} stored twice"
            );
        }
        let owner = b
            .value
            .affinity
            .clone()
            .unwrap_or_else(|| panic!("block {} has no owner", b.value.cidr()));
        let claims: Vec<_> = affinities
            .iter()
            .filter(|a| a.value.cidr == b.value.cidr())
            .collect();
        assert_eq!(
            claims.len(),
            1,
            "block {} has affinities {claims:?}",
            b.value.cidr()
        );
        assert_eq!(
            (claims[0].value.node.as_str(), claims[0].value.state),
            (owner.as_str(), AffinityState::Confirmed)
        );
    }
    assert_eq!(
        stored, returned,
        "what the agents returned is exactly what is stored"
    );
    assert!(
        affinities
            .iter()
            .all(|a| blocks.iter().any(|b| b.value.cidr() == a.value.cidr)),
        "no affinity without a block"
    );
    // 16 blocks of 16 for 200 addresses on 10 nodes: every block was claimed, and some
    // nodes had to borrow, so the race went through claims and borrowing, not only the
    // first allocation of each node.
    assert_eq!(blocks.len(), 16);
    let borrowed = blocks
        .iter()
        .map(|b| {
            b.value
                .addresses()
                .filter(|(_, a)| b.value.affinity.as_deref() != Some(a.node.as_str()))
                .count()
        })
        .sum::<usize>();
    assert!(borrowed > 0, "no allocation was borrowed");
}
