//! The Kubernetes datastore against a real kube-apiserver (root: it runs in its own netns).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, PostParams};
use support::apiserver::Apiserver;
use tortie_ipam::{
    AffinityState, AllocRequest, Allocator, Block, BlockAffinity, BlockCidr, CountingStore, Handle,
    IpFamily, IpPool, IpamConfig, Store, StoreError,
};
use tortie_node::datastore::{self, KubeStore, crd};

#[test]
fn crds_install_and_the_store_does_compare_and_swap() {
    let server = Apiserver::start().unwrap_or_else(|e| panic!("{e}"));
    // What users install is the manifest file: the apiserver must take it as it is.
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/crds.yaml");
    let applied = server
        .kubectl(&["apply", "-f", manifest])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        applied
            .lines()
            .filter(|l| l.contains("crd.tortie.dev created"))
            .count(),
        5,
        "{applied}"
    );
    server
        .block_on(|client| async move {
            datastore::install_crds(&client, Duration::from_secs(30))
                .await
                .unwrap();
            // A second install updates in place (an agent upgrade).
            datastore::install_crds(&client, Duration::from_secs(30))
                .await
                .unwrap();
            let store = KubeStore::new(client.clone());

            // A pool is created once; a second create of the name finds it there.
            let pool =
                IpPool::new("default-ipv4-ippool", "10.66.0.0/24".parse().unwrap(), 26).unwrap();
            assert!(store.create_pool(&pool).await.unwrap());
            assert!(!store.create_pool(&pool).await.unwrap());
            assert_eq!(store.list_pools().await.unwrap(), vec![pool.clone()]);
            assert_eq!(
                store.stored_pools().await.unwrap(),
                vec![datastore::StoredPool {
                    name: pool.name.clone(),
                    cidr: Some(pool.cidr()),
                }]
            );
            // Pools are listed oldest first, whatever their names, so that every agent keeps
            // the older of two overlapping pools.
            let older = IpPool::new("zz-older", "10.68.0.0/24".parse().unwrap(), 26).unwrap();
            let newer = IpPool::new("aa-newer", "10.68.0.0/25".parse().unwrap(), 26).unwrap();
            assert!(store.create_pool(&older).await.unwrap());
            // creationTimestamp counts whole seconds.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert!(store.create_pool(&newer).await.unwrap());
            let listed: Vec<String> = store
                .list_pools()
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.name)
                .collect();
            assert_eq!(listed, ["default-ipv4-ippool", "zz-older", "aa-newer"]);
            let pools: Api<crd::IPPool> = Api::all(client.clone());
            for name in ["zz-older", "aa-newer"] {
                pools.delete(name, &Default::default()).await.unwrap();
            }

            // Blocks: create once, replace only at the current revision, delete likewise.
            let cidr: BlockCidr = "10.66.0.64/26".parse().unwrap();
            let b = Block::new(cidr, Some("n1".into()));
            let r1 = store.create_block(&b).await.unwrap();
            assert!(matches!(
                store.create_block(&b).await,
                Err(StoreError::AlreadyExists { .. })
            ));
            let mut b2 = b.clone();
            b2.assign(Handle::for_container("net", "c1"), "n1".into(), None)
                .unwrap();
            let r2 = store.update_block(&b2, &r1).await.unwrap();
            assert_ne!(r1, r2);
            assert!(matches!(
                store.update_block(&b, &r1).await,
                Err(StoreError::Conflict { .. })
            ));
            let got = store.get_block(cidr).await.unwrap().unwrap();
            assert_eq!((got.value, got.revision.clone()), (b2.clone(), r2.clone()));
            assert!(matches!(
                store.delete_block(cidr, &r1).await,
                Err(StoreError::Conflict { .. })
            ));
            store.delete_block(cidr, &r2).await.unwrap();
            assert!(store.get_block(cidr).await.unwrap().is_none());
            assert!(matches!(
                store.update_block(&b2, &r2).await,
                Err(StoreError::NotFound { .. })
            ));

            // Affinities: the same rules.
            let a = BlockAffinity {
                node: "n1".into(),
                cidr,
                state: AffinityState::Pending,
            };
            let ar1 = store.create_affinity(&a).await.unwrap();
            assert!(matches!(
                store.create_affinity(&a).await,
                Err(StoreError::AlreadyExists { .. })
            ));
            let confirmed = BlockAffinity {
                state: AffinityState::Confirmed,
                ..a.clone()
            };
            let ar2 = store.update_affinity(&confirmed, &ar1).await.unwrap();
            assert!(matches!(
                store.update_affinity(&a, &ar1).await,
                Err(StoreError::Conflict { .. })
            ));
            let listed = store.list_affinities("n1").await.unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].value, confirmed);
            assert!(store.list_affinities("n2").await.unwrap().is_empty());
            assert!(matches!(
                store.delete_affinity(&confirmed, &ar1).await,
                Err(StoreError::Conflict { .. })
            ));
            store.delete_affinity(&confirmed, &ar2).await.unwrap();

            // The allocator end to end: claim, allocate, repeat, release.
            let mut alloc =
                Allocator::new(store.clone(), "n1", BTreeMap::new(), IpamConfig::default());
            let h = Handle::for_container("k8s-pod-network", "abc");
            let first = alloc.allocate(&h, IpFamily::V4, None).await.unwrap();
            assert_eq!(first.pool, "default-ipv4-ippool");
            let mut restarted =
                Allocator::new(store.clone(), "n1", BTreeMap::new(), IpamConfig::default());
            assert_eq!(
                restarted.allocate(&h, IpFamily::V4, None).await.unwrap(),
                first
            );
            assert_eq!(restarted.release(&h).await.unwrap(), vec![first.ip]);
            let affs = store.list_affinities("n1").await.unwrap();
            assert_eq!(affs.len(), 1);
            assert_eq!(
                (affs[0].value.cidr, affs[0].value.state),
                (first.block, AffinityState::Confirmed)
            );

            // A steady ADD costs the apiserver exactly one write and no read.
            let counted = CountingStore::new(store.clone());
            let mut steady = Allocator::new(
                counted.clone(),
                "n2",
                BTreeMap::new(),
                IpamConfig::default(),
            );
            steady
                .allocate(&Handle::for_container("net", "warm"), IpFamily::V4, None)
                .await
                .unwrap();
            let mut took = Vec::new();
            for i in 0..20 {
                let before = counted.stats();
                let t = std::time::Instant::now();
                steady
                    .allocate(
                        &Handle::for_container("net", &format!("c{i}")),
                        IpFamily::V4,
                        None,
                    )
                    .await
                    .unwrap();
                took.push(t.elapsed());
                let after = counted.stats();
                assert_eq!(
                    (after.reads - before.reads, after.writes - before.writes),
                    (0, 1),
                    "ADD {i}"
                );
            }
            took.sort();
            eprintln!(
                "steady allocation against the apiserver: p50 {:?}, max {:?}",
                took[took.len() / 2],
                took[took.len() - 1]
            );

            // A burst that fits the block: one write for all of it.
            let burst: Vec<AllocRequest> = (0..10)
                .map(|i| AllocRequest {
                    handle: Handle::for_container("net", &format!("burst{i}")),
                    family: IpFamily::V4,
                    pod: None,
                })
                .collect();
            let before = counted.stats();
            let results = steady.allocate_batch(&burst).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            assert_eq!(counted.stats().writes - before.writes, 1);

            // IPv6: object names for v6 blocks and affinities are valid Kubernetes names.
            let v6 = IpPool::new(
                "default-ipv6-ippool",
                "fd00:10:66::/120".parse().unwrap(),
                122,
            )
            .unwrap();
            assert!(store.create_pool(&v6).await.unwrap());
            let mut dual =
                Allocator::new(store.clone(), "n1", BTreeMap::new(), IpamConfig::default());
            let h6 = Handle::for_container("k8s-pod-network", "dual");
            let a4 = dual.allocate(&h6, IpFamily::V4, None).await.unwrap();
            let a6 = dual.allocate(&h6, IpFamily::V6, None).await.unwrap();
            assert_eq!(a6.pool, "default-ipv6-ippool");
            let mut released = dual.release(&h6).await.unwrap();
            released.sort();
            assert_eq!(released, vec![a4.ip, a6.ip]);

            // A block that does not parse stops allocation and says which object is wrong.
            let blocks: Api<crd::IPAMBlock> = Api::all(client.clone());
            let bad = crd::IPAMBlock::new(
                "10-66-0-128-26",
                crd::IPAMBlockSpec {
                    cidr: "10.66.0.129/26".into(),
                    affinity: None,
                    allocations: Vec::new(),
                    sequence_number: 0,
                    cursor: 0,
                },
            );
            blocks.create(&PostParams::default(), &bad).await.unwrap();
            let err = store.list_blocks().await.unwrap_err().to_string();
            assert!(
                err.contains("10-66-0-128-26") && err.contains("host address"),
                "{err}"
            );
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
