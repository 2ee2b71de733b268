//! Root test: the `bench bgp` scenario end to end at a small size, so the harness that
//! produces the README's figures is itself tested.

use std::time::Duration;

use tortie_lab::bench_bgp::{BenchOptions, Target, render, run};

#[test]
fn bench_scenario_measures_both_speakers() {
    let opts = BenchOptions {
        sizes: vec![5_000],
        targets: vec![Target::Tortie, Target::Bird],
        timeout: Duration::from_secs(60),
        feeder: tortie_lab::routers::Kind::Bird,
    };
    let results = run(&opts).unwrap_or_else(|e| panic!("{e}"));
    let table = render(&results);
    eprintln!("{table}");
    // Sane numbers, never a timing goal: one result per speaker, each for the whole feed,
    // with a clock that ran forwards and memory read from a live process.
    let targets: Vec<Target> = results.iter().map(|r| r.target).collect();
    assert_eq!(targets, vec![Target::Tortie, Target::Bird]);
    for r in &results {
        assert_eq!(r.prefixes, 5_000);
        assert!(r.seconds.is_finite() && r.seconds > 0.0, "{r:?}");
        assert!(r.rss_before_bytes > 0 && r.rss_bytes > 0, "{r:?}");
        assert!(
            table.contains(&format!("| {} | 5000 |", r.target.name())),
            "{table}"
        );
    }
}

/// The README's figures: 100k and 500k prefixes. Slow, so run on demand, with release
/// binaries: `cargo build --release -p tortie-node && TORTIE_NODE_BIN=target/release/tortie-node
/// cargo test -p tortie-lab --test bgp_bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_full_feed() {
    for feeder in [
        tortie_lab::routers::Kind::Bird,
        tortie_lab::routers::Kind::Tortie,
    ] {
        let results = run(&BenchOptions {
            feeder,
            ..BenchOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        println!("feeder: {feeder:?}\n{}", render(&results));
    }
}
