//! The allocator's rules, each against the in-memory store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::executor::block_on;

use crate::*;

fn pool(name: &str, cidr: &str, block_size: u8) -> IpPool {
    IpPool::new(name, cidr.parse().unwrap(), block_size).unwrap()
}

fn store_with(pools: &[IpPool]) -> MemStore {
    let s = MemStore::new();
    s.set_pools(pools.to_vec());
    s
}

fn allocator(store: &MemStore, node: &str) -> Allocator<MemStore> {
    Allocator::new(store.clone(), node, BTreeMap::new(), IpamConfig::default())
}

fn h(i: usize) -> Handle {
    Handle::for_container("k8s-pod-network", &format!("c{i:04}"))
}

fn v4(a: &mut Allocator<MemStore>, handle: &Handle) -> Result<Allocated, IpamError> {
    block_on(a.allocate(handle, IpFamily::V4, None))
}

/// Every address the store holds, with the handle it is allocated to.
fn stored_handles(store: &MemStore) -> impl Iterator<Item = (IpAddr, Handle)> {
    store.blocks().into_iter().flat_map(|b| {
        b.addresses()
            .map(|(ip, a)| (ip, a.handle.clone()))
            .collect::<Vec<_>>()
    })
}

/// The invariants that must hold whatever happened: no address twice, no overlapping
/// blocks, and every owned block has exactly one affinity, its owner's.
fn assert_consistent(store: &MemStore) {
    let blocks = store.blocks();
    let mut seen: HashMap<IpAddr, Handle> = HashMap::new();
    for b in &blocks {
        for (ip, a) in b.addresses() {
            if let Some(prev) = seen.insert(ip, a.handle.clone()) {
                panic!("{ip} held twice: by {prev} and {}", a.handle);
            }
        }
        for other in &blocks {
            if other.cidr() != b.cidr() {
                assert!(
                    !b.cidr().net().contains(&other.cidr().net()),
                    "{} overlaps {}",
                    b.cidr(),
                    other.cidr()
                );
            }
        }
    }
    let affinities = store.affinities();
    for b in &blocks {
        let owners: Vec<_> = affinities
            .iter()
            .filter(|a| a.cidr == b.cidr() && a.state == AffinityState::Confirmed)
            .map(|a| a.node.clone())
            .collect();
        match &b.affinity {
            Some(node) => assert_eq!(owners, vec![node.clone()], "block {} owners", b.cidr()),
            None => assert!(
                owners.is_empty(),
                "orphan block {} still has affinities {owners:?}",
                b.cidr()
            ),
        }
    }
}

#[test]
fn steady_allocation_is_one_write() {
    let store = store_with(&[pool("default", "10.244.0.0/16", 26)]);
    let mut a = allocator(&store, "n1");
    v4(&mut a, &h(0)).unwrap();
    for i in 1..40 {
        let before = store.writes();
        v4(&mut a, &h(i)).unwrap();
        assert_eq!(store.writes() - before, 1, "allocation {i}");
    }
    assert_consistent(&store);
}

#[test]
fn steady_allocation_reads_nothing_through_a_counting_store() {
    let store = store_with(&[pool("default", "10.244.0.0/16", 26)]);
    let counted = CountingStore::new(store.clone());
    let mut a = Allocator::new(
        counted.clone(),
        "n1",
        BTreeMap::new(),
        IpamConfig::default(),
    );
    block_on(a.allocate(&h(0), IpFamily::V4, None)).unwrap();
    let before = counted.stats();
    block_on(a.allocate(&h(1), IpFamily::V4, None)).unwrap();
    let after = counted.stats();
    assert_eq!(
        (after.reads - before.reads, after.writes - before.writes),
        (0, 1)
    );
    store.inject(Kind::Block, &[Fault::Conflict]);
    block_on(a.allocate(&h(2), IpFamily::V4, None)).unwrap();
    assert_eq!(counted.stats().lost_races, after.lost_races + 1);
}

fn req(i: usize, family: IpFamily) -> AllocRequest {
    AllocRequest {
        handle: h(i),
        family,
        pod: None,
    }
}

#[test]
fn a_batch_fills_a_block_with_one_write() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 28)]);
    let mut a = allocator(&store, "n1");
    v4(&mut a, &h(0)).unwrap();
    let before = store.writes();
    // 15 free addresses in the block: one write for them all.
    let reqs: Vec<AllocRequest> = (1..16).map(|i| req(i, IpFamily::V4)).collect();
    let got = block_on(a.allocate_batch(&reqs));
    assert_eq!(store.writes() - before, 1);
    let ips: HashSet<IpAddr> = got.iter().map(|r| r.as_ref().unwrap().ip).collect();
    assert_eq!(ips.len(), 15);
    assert_consistent(&store);
}

#[test]
fn a_batch_spills_into_new_blocks_and_keeps_order_and_handles() {
    let store = store_with(&[pool("v4", "10.0.0.0/24", 28), pool("v6", "fd00::/120", 124)]);
    let mut a = allocator(&store, "n1");
    let mut reqs: Vec<AllocRequest> = (0..40).map(|i| req(i, IpFamily::V4)).collect();
    reqs.push(req(3, IpFamily::V4));
    reqs.push(req(3, IpFamily::V6));
    let got: Vec<Allocated> = block_on(a.allocate_batch(&reqs))
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got[3], got[40],
        "the same handle asked twice gets one address"
    );
    assert_eq!(IpFamily::of_addr(&got[41].ip), IpFamily::V6);
    for (r, g) in reqs.iter().zip(&got) {
        assert!(block_on(a.lookup(&r.handle)).unwrap().contains(&g.ip));
    }
    let distinct: HashSet<IpAddr> = got[..40].iter().map(|g| g.ip).collect();
    assert_eq!(distinct.len(), 40);
    assert_eq!(
        store
            .blocks()
            .iter()
            .filter(|b| b.cidr().family() == IpFamily::V4)
            .count(),
        3
    );
    assert_consistent(&store);
}

#[test]
fn a_batch_survives_conflicts_and_reports_exhaustion_per_request() {
    let store = store_with(&[pool("default", "10.0.0.0/28", 28)]);
    let mut a = allocator(&store, "n1");
    v4(&mut a, &h(0)).unwrap();
    store.inject(Kind::Block, &[Fault::Conflict, Fault::Conflict]);
    let reqs: Vec<AllocRequest> = (1..20).map(|i| req(i, IpFamily::V4)).collect();
    let got = block_on(a.allocate_batch(&reqs));
    assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 15);
    assert!(
        got[15..]
            .iter()
            .all(|r| matches!(r, Err(IpamError::Exhausted { .. })))
    );
    assert_consistent(&store);
}

#[test]
fn first_allocation_claims_a_confirmed_block() {
    let store = store_with(&[pool("default", "10.244.0.0/16", 26)]);
    let mut a = allocator(&store, "n1");
    let got = v4(&mut a, &h(0)).unwrap();
    assert_eq!(got.pool, "default");
    assert!(got.block.contains(got.ip));
    assert_eq!(got.block.net().prefix_len(), 26);
    let affs = store.affinities();
    assert_eq!(affs.len(), 1);
    assert_eq!(affs[0].state, AffinityState::Confirmed);
    assert_eq!(affs[0].cidr, got.block);
    assert_eq!(block_on(a.affine_blocks()).unwrap(), vec![got.block]);
}

#[test]
fn repeated_allocate_returns_the_same_address_even_after_restart() {
    let store = store_with(&[pool("default", "10.244.0.0/16", 26)]);
    let mut a = allocator(&store, "n1");
    let first = v4(&mut a, &h(1)).unwrap();
    v4(&mut a, &h(2)).unwrap();
    assert_eq!(v4(&mut a, &h(1)).unwrap(), first);
    let writes = store.writes();
    let mut restarted = allocator(&store, "n1");
    assert_eq!(v4(&mut restarted, &h(1)).unwrap(), first);
    assert_eq!(store.writes(), writes, "a repeated ADD writes nothing");
}

#[test]
fn full_blocks_lead_to_new_blocks_up_to_the_cap() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 28)]);
    let config = IpamConfig {
        max_blocks_per_node: 2,
        ..IpamConfig::default()
    };
    let mut a = Allocator::new(store.clone(), "n1", BTreeMap::new(), config);
    for i in 0..32 {
        v4(&mut a, &h(i)).unwrap();
    }
    assert_eq!(store.blocks().len(), 2);
    // The pool has 14 more blocks, but the cap stops claims and nobody else has a block.
    assert!(matches!(
        v4(&mut a, &h(99)),
        Err(IpamError::Exhausted { .. })
    ));
    assert_consistent(&store);
}

#[test]
fn borrows_from_another_nodes_block_when_the_pool_is_full() {
    let store = store_with(&[pool("default", "10.0.0.0/27", 28)]);
    let mut a = allocator(&store, "a");
    let mut b = allocator(&store, "b");
    for i in 0..16 {
        v4(&mut a, &h(i)).unwrap();
    }
    let b_first = v4(&mut b, &h(100)).unwrap();
    let borrowed = v4(&mut a, &h(16)).unwrap();
    assert_eq!(borrowed.block, b_first.block, "a borrows from b's block");
    let block = store
        .blocks()
        .into_iter()
        .find(|bl| bl.cidr() == b_first.block)
        .unwrap();
    assert_eq!(
        block.affinity.as_deref(),
        Some("b"),
        "borrowing does not move the block"
    );
    let alloc = block
        .allocations()
        .find(|(_, al)| al.handle == h(16))
        .unwrap()
        .1
        .clone();
    assert_eq!(alloc.node, "a");
    assert_eq!(block_on(a.borrowed()).unwrap(), vec![borrowed.ip]);
    assert!(block_on(b.borrowed()).unwrap().is_empty());
    assert_consistent(&store);
}

#[test]
fn strict_affinity_forbids_borrowing() {
    let mut p = pool("default", "10.0.0.0/27", 28);
    p.strict_affinity = true;
    let store = store_with(&[p]);
    let mut a = allocator(&store, "a");
    let mut b = allocator(&store, "b");
    for i in 0..16 {
        v4(&mut a, &h(i)).unwrap();
    }
    v4(&mut b, &h(100)).unwrap();
    assert!(matches!(
        v4(&mut a, &h(16)),
        Err(IpamError::Exhausted { .. })
    ));
}

#[test]
fn release_by_handle_is_idempotent_and_frees_the_address() {
    let store = store_with(&[pool("default", "10.0.0.0/30", 30)]);
    let mut a = allocator(&store, "n1");
    let ips: Vec<IpAddr> = (0..4).map(|i| v4(&mut a, &h(i)).unwrap().ip).collect();
    assert!(matches!(
        v4(&mut a, &h(4)),
        Err(IpamError::Exhausted { .. })
    ));
    assert_eq!(block_on(a.release(&h(2))).unwrap(), vec![ips[2]]);
    assert_eq!(block_on(a.release(&h(2))).unwrap(), Vec::<IpAddr>::new());
    assert_eq!(block_on(a.lookup(&h(2))).unwrap(), Vec::<IpAddr>::new());
    assert_eq!(v4(&mut a, &h(4)).unwrap().ip, ips[2]);
    assert_consistent(&store);
}

#[test]
fn a_conflict_retries_on_fresh_data() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    let first = v4(&mut a, &h(0)).unwrap();
    // Another agent borrows the next address behind our cache's back.
    let mut block = store
        .blocks()
        .into_iter()
        .find(|b| b.cidr() == first.block)
        .unwrap();
    let theirs = block.assign(h(500), "other".into(), None).unwrap();
    store.put_block(block);
    store.inject(Kind::Block, &[Fault::Conflict]);
    let ours = v4(&mut a, &h(1)).unwrap();
    assert_ne!(ours.ip, theirs);
    assert_ne!(ours.ip, first.ip);
    assert_consistent(&store);
}

#[test]
fn a_lost_write_that_landed_is_found_again() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    v4(&mut a, &h(0)).unwrap();
    store.inject(Kind::Block, &[Fault::Lost { applied: true }]);
    assert!(matches!(
        v4(&mut a, &h(1)),
        Err(IpamError::Store(StoreError::Backend(_)))
    ));
    let retried = v4(&mut a, &h(1)).unwrap();
    let holders: Vec<_> = stored_handles(&store)
        .filter(|(_, hd)| *hd == h(1))
        .collect();
    assert_eq!(
        holders,
        vec![(retried.ip, h(1))],
        "one address for the handle, the one returned"
    );
}

#[test]
fn a_lost_write_that_did_not_land_is_retried() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    v4(&mut a, &h(0)).unwrap();
    store.inject(Kind::Block, &[Fault::Lost { applied: false }]);
    assert!(v4(&mut a, &h(1)).is_err());
    assert!(v4(&mut a, &h(1)).is_ok());
    assert_consistent(&store);
}

#[test]
fn a_claim_whose_answer_was_lost_is_finished_later() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    // The block create lands, but its answer is lost: the affinity stays pending.
    store.inject(Kind::Block, &[Fault::Lost { applied: true }]);
    assert!(v4(&mut a, &h(0)).is_err());
    let got = v4(&mut a, &h(0)).unwrap();
    assert_eq!(
        store.blocks().len(),
        1,
        "the retry uses the block that landed"
    );
    assert_eq!(store.affinities()[0].state, AffinityState::Pending);
    block_on(a.release_empty_blocks(Instant::now())).unwrap();
    assert_eq!(
        store.affinities(),
        vec![BlockAffinity {
            node: "n1".into(),
            cidr: got.block,
            state: AffinityState::Confirmed
        }]
    );
    assert_consistent(&store);
}

#[test]
fn a_lost_block_claim_moves_on_and_leaves_no_pending_affinity() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    // The first block create finds the name taken by "someone-else".
    store.inject(Kind::Block, &[Fault::Conflict]);
    let got = v4(&mut a, &h(0)).unwrap();
    let blocks = store.blocks();
    assert_eq!(blocks.len(), 2);
    assert!(
        blocks
            .iter()
            .any(|b| b.affinity.as_deref() == Some("someone-else"))
    );
    let mine: Vec<_> = store
        .affinities()
        .into_iter()
        .filter(|x| x.node == "n1")
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].cidr, mine[0].state),
        (got.block, AffinityState::Confirmed)
    );
}

#[test]
fn empty_blocks_are_released_only_after_the_grace_period() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    let grace = IpamConfig::default().block_release_grace;
    let got = v4(&mut a, &h(0)).unwrap();
    let t0 = Instant::now();
    assert!(
        block_on(a.release_empty_blocks(t0)).unwrap().is_empty(),
        "not empty"
    );
    block_on(a.release(&h(0))).unwrap();
    assert!(
        block_on(a.release_empty_blocks(t0)).unwrap().is_empty(),
        "grace starts now"
    );
    // Used again in between: the clock starts over.
    v4(&mut a, &h(1)).unwrap();
    assert!(
        block_on(a.release_empty_blocks(t0 + grace / 2))
            .unwrap()
            .is_empty()
    );
    block_on(a.release(&h(1))).unwrap();
    assert!(
        block_on(a.release_empty_blocks(t0 + grace))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        block_on(a.release_empty_blocks(t0 + grace * 2)).unwrap(),
        vec![got.block]
    );
    assert!(store.blocks().is_empty());
    assert!(store.affinities().is_empty());
}

#[test]
fn a_borrowed_address_keeps_an_empty_looking_block() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "a");
    let got = v4(&mut a, &h(0)).unwrap();
    block_on(a.release(&h(0))).unwrap();
    let t0 = Instant::now();
    block_on(a.release_empty_blocks(t0)).unwrap();
    // b borrows from the block between two sweeps of a.
    let mut block = store.blocks().pop().unwrap();
    block.assign(h(7), "b".into(), None);
    store.put_block(block);
    assert!(
        block_on(a.release_empty_blocks(t0 + Duration::from_secs(3600)))
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.blocks().len(), 1);
    assert_eq!(
        store.affinities()[0],
        BlockAffinity {
            node: "a".into(),
            cidr: got.block,
            state: AffinityState::Confirmed
        }
    );
}

#[test]
fn the_sweep_finishes_what_a_crash_left() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let cidr = |s: &str| s.parse::<BlockCidr>().unwrap();
    // Claimed but never confirmed.
    store.put_block(Block::new(cidr("10.0.0.0/26"), Some("n1".into())));
    block_on(store.create_affinity(&BlockAffinity {
        node: "n1".into(),
        cidr: cidr("10.0.0.0/26"),
        state: AffinityState::Pending,
    }))
    .unwrap();
    // A claim that died before its block was created.
    block_on(store.create_affinity(&BlockAffinity {
        node: "n1".into(),
        cidr: cidr("10.0.0.64/26"),
        state: AffinityState::Pending,
    }))
    .unwrap();
    // A release that died between marking and deleting.
    store.put_block(Block::new(cidr("10.0.0.128/26"), Some("n1".into())));
    block_on(store.create_affinity(&BlockAffinity {
        node: "n1".into(),
        cidr: cidr("10.0.0.128/26"),
        state: AffinityState::PendingDeletion,
    }))
    .unwrap();
    let mut a = allocator(&store, "n1");
    block_on(a.release_empty_blocks(Instant::now())).unwrap();
    assert_eq!(
        store.affinities(),
        vec![BlockAffinity {
            node: "n1".into(),
            cidr: cidr("10.0.0.0/26"),
            state: AffinityState::Confirmed
        }]
    );
    assert_eq!(
        store.blocks().iter().map(Block::cidr).collect::<Vec<_>>(),
        vec![cidr("10.0.0.0/26")]
    );
    assert_consistent(&store);
}

#[test]
fn cni_gc_releases_handles_not_in_the_valid_set() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    let keep = Handle::for_container("net", "keep");
    let drop_me = Handle::for_container("net", "gone");
    let other_net = Handle::for_container("other", "x");
    for hd in [&keep, &drop_me, &other_net] {
        v4(&mut a, hd).unwrap();
    }
    let mut b = allocator(&store, "n2");
    let foreign = Handle::for_container("net", "on-n2");
    v4(&mut b, &foreign).unwrap();
    let valid: HashSet<Handle> = [keep.clone()].into();
    assert_eq!(
        block_on(a.gc_handles("net", &valid)).unwrap(),
        vec![drop_me.clone()]
    );
    for (hd, held) in [
        (&keep, true),
        (&drop_me, false),
        (&other_net, true),
        (&foreign, true),
    ] {
        assert_eq!(!block_on(a.lookup(hd)).unwrap().is_empty(), held, "{hd}");
    }
}

#[test]
fn leaked_handles_are_released_after_the_grace_period_and_live_ones_never() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    let pod = |name: &str| {
        Some(PodRef {
            namespace: "default".into(),
            name: name.into(),
            uid: None,
        })
    };
    let live = Handle::for_container("net", "live");
    let leaked = Handle::for_container("net", "leaked");
    let own = Handle::from_raw("vxlan-tunnel-addr-n1");
    block_on(a.allocate(&live, IpFamily::V4, pod("live"))).unwrap();
    block_on(a.allocate(&leaked, IpFamily::V4, pod("leaked"))).unwrap();
    block_on(a.allocate(&own, IpFamily::V4, None)).unwrap();
    let exists = |p: &PodRef| p.name == "live";
    let grace = IpamConfig::default().leak_grace;
    let t0 = Instant::now();
    assert!(
        block_on(a.gc_leaks(GcScope::Node("n1"), t0, exists))
            .unwrap()
            .is_empty()
    );
    assert!(
        block_on(a.gc_leaks(
            GcScope::Node("n1"),
            t0 + grace - Duration::from_secs(1),
            exists
        ))
        .unwrap()
        .is_empty()
    );
    assert_eq!(
        block_on(a.gc_leaks(GcScope::Node("n1"), t0 + grace, exists)).unwrap(),
        vec![leaked.clone()]
    );
    assert!(block_on(a.lookup(&leaked)).unwrap().is_empty());
    assert_eq!(block_on(a.lookup(&live)).unwrap().len(), 1);
    assert_eq!(block_on(a.lookup(&own)).unwrap().len(), 1);
}

#[test]
fn a_pod_seen_again_restarts_the_leak_clock() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 26)]);
    let mut a = allocator(&store, "n1");
    let hd = Handle::for_container("net", "flaky");
    block_on(a.allocate(
        &hd,
        IpFamily::V4,
        Some(PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: None,
        }),
    ))
    .unwrap();
    let grace = IpamConfig::default().leak_grace;
    let t0 = Instant::now();
    block_on(a.gc_leaks(GcScope::AllNodes, t0, |_| false)).unwrap();
    block_on(a.gc_leaks(GcScope::AllNodes, t0 + grace / 2, |_| true)).unwrap();
    assert!(
        block_on(a.gc_leaks(GcScope::AllNodes, t0 + grace, |_| false))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        block_on(a.gc_leaks(GcScope::AllNodes, t0 + grace * 2, |_| false)).unwrap(),
        vec![hd]
    );
}

#[test]
fn node_deletion_releases_its_affinities_and_empty_blocks() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 28)]);
    let mut gone = allocator(&store, "gone");
    for i in 0..17 {
        v4(&mut gone, &h(i)).unwrap();
    }
    for i in 0..16 {
        block_on(gone.release(&h(i))).unwrap();
    }
    assert_eq!(store.blocks().len(), 2);
    let mut other = allocator(&store, "other");
    block_on(other.release_node("gone")).unwrap();
    assert!(store.affinities().is_empty());
    let blocks = store.blocks();
    assert_eq!(blocks.len(), 1, "the empty block is gone");
    assert_eq!(
        blocks[0].affinity, None,
        "the block still in use is orphaned"
    );
    assert_consistent(&store);
    // Its last address released, the orphan block goes too.
    block_on(other.release(&h(16))).unwrap();
    assert!(store.blocks().is_empty());
}

#[test]
fn a_deleted_nodes_allocations_are_released_after_the_grace_even_if_the_pod_looks_alive() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 28)]);
    let pod = |name: &str| {
        Some(PodRef {
            namespace: "ns".into(),
            name: name.into(),
            uid: None,
        })
    };
    let mut gone = allocator(&store, "gone");
    let mut kept = allocator(&store, "kept");
    block_on(gone.allocate(&h(1), IpFamily::V4, pod("on-gone"))).unwrap();
    block_on(kept.allocate(&h(2), IpFamily::V4, pod("on-kept"))).unwrap();
    let mut me = allocator(&store, "me");
    // The block is orphaned first, as leak GC's round does before it looks for leaks.
    block_on(me.release_node("gone")).unwrap();

    let existing: HashSet<String> = ["me", "kept"].map(String::from).into();
    let scope = GcScope::NodeAndDeleted {
        node: "me",
        existing: &existing,
    };
    let grace = IpamConfig::default().leak_grace;
    let t0 = Instant::now();
    // Every pod "exists" (say the Pod objects are not deleted yet): the deleted node's
    // allocation leaks anyway, once the grace is over; the existing node's never.
    assert!(
        block_on(me.gc_leaks(scope, t0, |_| true))
            .unwrap()
            .is_empty()
    );
    assert!(
        block_on(me.gc_leaks(scope, t0 + grace / 2, |_| true))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        block_on(me.gc_leaks(scope, t0 + grace, |_| true)).unwrap(),
        vec![h(1)]
    );
    assert!(block_on(me.lookup(&h(1))).unwrap().is_empty());
    assert_eq!(block_on(me.lookup(&h(2))).unwrap().len(), 1);
    // Without the list of existing nodes, another node's allocations are never touched.
    block_on(gone.allocate(&h(3), IpFamily::V4, pod("again"))).unwrap();
    assert!(
        block_on(me.gc_leaks(GcScope::Node("me"), t0 + grace * 3, |_| false))
            .unwrap()
            .is_empty()
    );
    assert_consistent(&store);
}

#[test]
fn pools_that_do_not_apply_are_skipped() {
    let mut disabled = pool("a-disabled", "10.1.0.0/24", 26);
    disabled.disabled = true;
    let mut elsewhere = pool("b-elsewhere", "10.2.0.0/24", 26);
    elsewhere.node_selector = "zone == 'b'".parse().unwrap();
    let store = store_with(&[disabled, elsewhere.clone(), pool("c-v6", "fd00::/120", 122)]);
    let mut a = allocator(&store, "n1");
    assert!(matches!(
        v4(&mut a, &h(0)),
        Err(IpamError::NoPool {
            family: IpFamily::V4,
            ..
        })
    ));
    let v6 = block_on(a.allocate(&h(0), IpFamily::V6, None)).unwrap();
    assert_eq!(v6.pool, "c-v6");
    let mut zoned = Allocator::new(
        store.clone(),
        "n2",
        [("zone".to_string(), "b".to_string())].into(),
        IpamConfig::default(),
    );
    assert_eq!(v4(&mut zoned, &h(1)).unwrap().pool, "b-elsewhere");
}

#[test]
fn pool_changes_are_seen_by_housekeeping_and_claims() {
    let store = store_with(&[pool("default", "10.0.0.0/24", 28)]);
    let mut a = allocator(&store, "n1");
    v4(&mut a, &h(0)).unwrap();
    let mut disabled = pool("default", "10.0.0.0/24", 28);
    disabled.disabled = true;
    store.set_pools(vec![disabled, pool("second", "10.1.0.0/24", 28)]);
    // Until it looks, the allocator keeps using its block...
    let same = v4(&mut a, &h(1)).unwrap();
    assert_eq!(same.pool, "default");
    // ...and once housekeeping re-read the pools, the disabled one gives nothing.
    block_on(a.release_empty_blocks(Instant::now())).unwrap();
    assert_eq!(v4(&mut a, &h(2)).unwrap().pool, "second");
}

#[test]
fn a_new_block_never_overlaps_an_old_block_of_another_size() {
    let store = store_with(&[pool("default", "10.0.0.0/27", 28)]);
    let mut old = allocator(&store, "old");
    let first = v4(&mut old, &h(0)).unwrap();
    // The pool is recreated with one /27 block, which the old /28 block overlaps.
    store.set_pools(vec![pool("default", "10.0.0.0/27", 27)]);
    let mut a = allocator(&store, "n1");
    let got = v4(&mut a, &h(1)).unwrap();
    assert_eq!(
        got.block, first.block,
        "n1 borrows instead of claiming an overlapping block"
    );
    assert_eq!(store.blocks().len(), 1);
    assert_consistent(&store);
}

#[test]
fn dual_stack_handle_gets_one_address_per_family() {
    let store = store_with(&[pool("v4", "10.0.0.0/24", 26), pool("v6", "fd00::/120", 122)]);
    let mut a = allocator(&store, "n1");
    let x = v4(&mut a, &h(0)).unwrap();
    let y = block_on(a.allocate(&h(0), IpFamily::V6, None)).unwrap();
    assert_ne!(IpFamily::of_addr(&x.ip), IpFamily::of_addr(&y.ip));
    let mut both = block_on(a.release(&h(0))).unwrap();
    both.sort();
    assert_eq!(both, vec![x.ip, y.ip]);
}

/// Ten agents for ten nodes race for one small pool: some claim two blocks, some lose
/// claims, some must borrow. No address may be handed out twice and every block must have
/// exactly one owner.
#[test]
fn ten_nodes_racing_never_duplicate() {
    let store = store_with(&[pool("default", "10.9.0.0/24", 28)]);
    let per_node = 24;
    let threads: Vec<_> = (0..10)
        .map(|n| {
            let s = store.yielding();
            std::thread::spawn(move || {
                let mut a = Allocator::new(
                    s,
                    format!("node-{n}"),
                    BTreeMap::new(),
                    IpamConfig::default(),
                );
                (0..per_node)
                    .map(|i| {
                        let hd = Handle::for_container("net", &format!("n{n}-c{i}"));
                        block_on(a.allocate(&hd, IpFamily::V4, None)).map(|got| (hd, got.ip))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: HashMap<IpAddr, Handle> = HashMap::new();
    for t in threads {
        for r in t.join().unwrap() {
            let (hd, ip) = r.unwrap();
            assert!(
                got.insert(ip, hd.clone()).is_none(),
                "{ip} handed out twice"
            );
        }
    }
    assert_eq!(got.len(), 10 * per_node);
    assert_consistent(&store);
    let stored: HashMap<IpAddr, Handle> = stored_handles(&store).collect();
    assert_eq!(stored, got, "what was returned is exactly what is stored");
    // 16 blocks for 10 nodes of 24 addresses: every block was claimed, and some nodes had to
    // borrow, so the race went through claims, lost claims and borrowing.
    let blocks = store.blocks();
    assert_eq!(blocks.len(), 16);
    assert!(blocks.iter().any(|b| {
        b.allocations()
            .any(|(_, a)| b.affinity.as_deref() != Some(a.node.as_str()))
    }));
}

#[test]
fn a_pool_overlapping_an_older_one_is_ignored_and_reported() {
    // Listed oldest first: "z-old" was there first. By name the newer one would come first,
    // and its /26 blocks would overlap the /28 blocks the older pool hands out.
    let store = store_with(&[
        pool("z-old", "10.0.0.0/24", 28),
        pool("a-new", "10.0.0.0/25", 26),
    ]);
    let mut a = allocator(&store, "n1");
    for i in 0..20 {
        assert_eq!(v4(&mut a, &h(i)).unwrap().pool, "z-old");
    }
    assert!(
        store
            .blocks()
            .iter()
            .all(|b| b.cidr().net().prefix_len() == 28)
    );
    assert_eq!(
        a.ignored_pools(),
        [Overlap {
            ignored: "a-new".into(),
            ignored_cidr: "10.0.0.0/25".parse().unwrap(),
            kept: "z-old".into(),
            kept_cidr: "10.0.0.0/24".parse().unwrap(),
        }]
    );
    // Another node decides the same way.
    let mut b = allocator(&store, "n2");
    assert_eq!(v4(&mut b, &h(100)).unwrap().pool, "z-old");
    assert_consistent(&store);

    // Once the older pool is gone, the other one is used (and nothing is reported).
    store.set_pools(vec![pool("a-new", "10.0.0.0/25", 26)]);
    let mut c = allocator(&store, "n3");
    block_on(c.release_empty_blocks(Instant::now())).unwrap();
    assert!(c.ignored_pools().is_empty());
}

#[test]
fn no_pool_says_which_pool_was_ignored_for_overlapping() {
    let mut old = pool("old", "10.0.0.0/16", 26);
    old.disabled = true;
    let store = store_with(&[
        old,
        pool("new", "10.0.1.0/24", 26),
        pool("v6", "fd00::/120", 122),
        pool("v6-new", "fd00::/121", 122),
    ]);
    let mut a = allocator(&store, "n1");
    let err = v4(&mut a, &h(0)).unwrap_err();
    let IpamError::NoPool { ignored, .. } = &err else {
        panic!("{err}");
    };
    // Only the pools of the family asked for.
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0].ignored, "new");
    assert_eq!(
        err.to_string(),
        "no enabled IPv4 IP pool selects node n1: create one, or fix the pools' nodeSelector; \
         IPPool new (10.0.1.0/24) overlaps the older IPPool old (10.0.0.0/16) and is ignored: \
         delete it, or give it a network of its own"
    );
    assert_eq!(a.ignored_pools().len(), 2);
}
