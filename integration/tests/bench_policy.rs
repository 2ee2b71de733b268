//! Root tests: the `bench policy` scenario end to end at a small size, so the harness that
//! produces the README's figures is itself tested. No timing goal is asserted here: the
//! figures only have to be there, be positive and come from the rules they claim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use tortie_lab::bench_cni::Series;
use tortie_lab::bench_policy::{BenchOptions, render, run};
use tortie_node::policy::apply::BackendSetting;

fn small() -> BenchOptions {
    BenchOptions {
        policies: 20,
        pods: 40,
        remote_pods: 100,
        repetitions: 2,
        changes: 6,
        budget: Duration::from_secs(60),
        scales: vec![600, 1_500],
        new_pods: 3,
        backend: BackendSetting::Auto,
    }
}

/// `n` samples, none failed, all above zero.
fn sane(what: &str, s: &Series, n: usize) {
    assert_eq!(s.failures, 0, "{what}: {:?}", s.first_error);
    assert_eq!(s.times.len(), n, "{what}");
    assert!(
        s.times.iter().all(|t| !t.is_zero()),
        "{what}: {:?}",
        s.times
    );
}

#[test]
fn every_figure_is_measured() {
    let opts = small();
    let report = run(&opts, &|m| eprintln!("{m}")).unwrap_or_else(|e| panic!("{e}"));
    let text = render(&report);
    eprintln!("{text}");

    let f = &report.full_sync;
    sane("full sync", &f.ours, 2);
    sane("compile", &f.compile, 2);
    sane("floor", &f.floor, 2);
    assert!(
        f.compile.max() < f.ours.p50(),
        "compile is a part of the sync"
    );
    assert_eq!(f.size.policies, 20);
    assert!(f.size.rules > 0 && f.size.sets > 0 && f.size.members > 0);
    // Both wrote every rule and every member into their namespace.
    assert_eq!(f.kernel_rules, (f.size.rules, f.size.rules));
    assert_eq!(f.kernel_members, (f.size.members, f.size.members));

    assert_eq!(report.scales.len(), 2);
    for (scale, target) in report.scales.iter().zip([600, 1_500]) {
        let what = format!("scale {target}");
        let off = scale.size.rules.abs_diff(target) as f64 / target as f64;
        assert!(off < 0.15, "{what}: {:?}", scale.size);
        sane(&what, &scale.full_sync, 1);
        sane(&what, &scale.floor, 1);
        sane(&what, &scale.policy_changes, 3);
        sane(&what, &scale.label_changes, 3);
        sane(&what, &scale.compile, 6);
        sane(&what, &scale.apply, 6);
        sane(&what, &scale.changes(), 6);
    }
    assert!(report.scales[0].size.policies < report.scales[1].size.policies);
    sane("new pod", &report.new_pod.pods, 3);
    sane("new pod compile", &report.new_pod.compile, 3);
    sane("new pod apply", &report.new_pod.apply, 3);

    let c = &report.conditions;
    let m = &c.machine;
    assert!(m.cores > 0 && !m.kernel.is_empty() && !m.date.is_empty());
    assert!(!m.load_before.is_empty() && !m.load_after.is_empty());
    assert!(c.build == "debug" || c.build == "release");
    assert!(c.backend.starts_with("nft") || c.backend.starts_with("legacy"));
    assert!(
        text.contains("| tortie: compile + apply | 2 | 0 |"),
        "{text}"
    );
    assert!(text.contains("github.com/projectcalico/felix"), "{text}");
}

#[test]
fn the_command_prints_its_table_and_exits_by_its_goals() {
    let out = Command::new(env!("CARGO_BIN_EXE_tortie-lab"))
        .args([
            "bench",
            "policy",
            "--policies",
            "10",
            "--pods",
            "20",
            "--remote-pods",
            "50",
            "--repetitions",
            "1",
            "--changes",
            "4",
            "--scales",
            "500",
            "--new-pods",
            "2",
            "--backend",
            "nft",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0: every goal met; 1: some goal missed. An error is 1 too, but prints no verdict.
    let code = out.status.code();
    assert!(matches!(code, Some(0 | 1)), "{code:?}\n{stdout}\n{stderr}");
    let verdict = if code == Some(0) {
        "every goal met"
    } else {
        "some goal NOT MET"
    };
    assert!(stdout.contains(verdict), "{stdout}\n{stderr}");
    assert!(stdout.contains("iptables backend: nft"), "{stdout}");
    assert!(!stderr.contains("tortie-lab:"), "{stderr}");
}
