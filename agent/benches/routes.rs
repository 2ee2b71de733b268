//! Route benchmarks: the pure halves (desired set, diff) and, when run as root, the
//! pipelined netlink writer against a real kernel table in a scratch namespace.
//!
//! `cargo bench -p tortie-node --bench routes`

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net};
use tortie_node::netlink::{KernelRouteTable, Route, RouteOp, RouteTable};
use tortie_node::routes::{LocalEndpoint, RemoteBlock, RouteModel, RouteState, desired_routes};

fn net(i: u32, len: u8) -> IpNet {
    IpNet::V4(
        Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << (32 - len))), len).unwrap_or_default(),
    )
}

fn model(blocks: u32) -> RouteModel {
    RouteModel {
        local_endpoints: (0..64)
            .map(|i| LocalEndpoint {
                address: net(i, 32),
                host_ifname: format!("tort{i:011x}"),
            })
            .collect(),
        affine_blocks: vec![net(0, 26)],
        remote_blocks: (1..blocks)
            .map(|i| RemoteBlock {
                cidr: net(i, 26),
                gateway: IpAddr::V4(Ipv4Addr::new(172, 18, (i >> 8) as u8, i as u8)),
                dev: Some("eth0".into()),
            })
            .collect(),
    }
}

fn pure(c: &mut Criterion) {
    let m = model(10_000);
    c.bench_function("desired_routes 10k blocks", |b| {
        b.iter(|| desired_routes(&m))
    });

    // A full table where 1% of the routes went missing from the kernel: the resync pass.
    let routes: Vec<Route> = (0..500_000u32)
        .map(|i| Route::via(net(i, 30), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))))
        .collect();
    let mut state = RouteState::new(routes.clone(), false);
    for r in &routes {
        let _ = state.want(r.clone());
    }
    let kernel: Vec<Route> = routes
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 100 != 0)
        .map(|(_, r)| r.clone())
        .collect();
    c.bench_function("resync 500k routes, 1% missing", |b| {
        b.iter(|| {
            state.observe_kernel(kernel.clone());
            state.ops()
        })
    });
}

/// A scratch namespace for the kernel benchmark, removed on drop.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn kernel(c: &mut Criterion) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping the kernel benchmark: needs root");
        return;
    }
    let ns = Ns(format!("trt-bench-routes-{}", std::process::id()));
    if !Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipping the kernel benchmark: cannot create a namespace");
        return;
    }
    let mut table =
        match KernelRouteTable::open_in_netns(&std::path::Path::new("/run/netns").join(&ns.0)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipping the kernel benchmark: {e}");
                return;
            }
        };
    let adds: Vec<RouteOp> = (0..100_000u32)
        .map(|i| RouteOp::Add(Route::blackhole(net(i, 30))))
        .collect();
    let dels: Vec<RouteOp> = adds
        .iter()
        .map(|op| RouteOp::Delete(op.route().clone()))
        .collect();
    let mut group = c.benchmark_group("kernel");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("add 100k blackhole /30s, pipelined", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let failures = table.apply(&adds).unwrap_or_default();
                total += start.elapsed();
                assert!(failures.is_empty());
                let _ = table.apply(&dels);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, pure, kernel);
criterion_main!(benches);
