//! `bench cni`: how long a pod's network takes on a lab node, tortie against Debian's
//! reference `ptp` + `host-local` (issue 3's goals: tortie ADD p50 ≤ 0.6 × ptp's, p99 ≤ 25 ms;
//! 30 concurrent ADDs p99 ≤ 250 ms with no failure; DEL p50 ≤ 30 ms, a repeated DEL ≤ 5 ms).
//!
//! What is timed is one plugin exec, fork to exit, as a runtime runs it: the `tortie` entry of
//! the node's installed conflist (talking to the node's real agent, which writes the
//! allocation to the apiserver and installs the host route before answering) against `ptp`
//! with `host-local` IPAM. Both are exec'd the same way, from a thread inside the node's
//! namespace ([`crate::pod::cni::exec_here`]), and the two series alternate pod by pod, so a
//! change of machine load during the run weighs on both alike. Sandbox namespaces are made
//! before the clock starts; no Pod objects are written (they are no part of CNI's cost).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

use crate::lab::{Lab, LabConfig};
use crate::pod::cni::{ExecOutput, exec_here};
use crate::pod::{PodError, PodRef};

/// The Kubernetes namespace the bench's sandboxes are named under (`pod-bench-cni.<name>`),
/// so that `down` removes any a crashed run leaves.
const BENCH_NAMESPACE: &str = "bench-cni";

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub node: String,
    /// Sequential ADDs per plugin.
    pub sequential: usize,
    /// ADDs started at once.
    pub concurrent: usize,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            node: "node-1".into(),
            sequential: 200,
            concurrent: 30,
        }
    }
}

/// The timings of one series of execs.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub times: Vec<Duration>,
    pub failures: usize,
    /// The first failure's output, to say why.
    pub first_error: Option<String>,
}

impl Series {
    fn record(&mut self, out: &Result<ExecOutput, PodError>) {
        match out {
            Ok(o) if o.code == 0 => self.times.push(o.took),
            Ok(o) => self.fail(format!(
                "exit {}: {}{}",
                o.code,
                o.stdout.trim(),
                o.stderr.trim()
            )),
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn fail(&mut self, why: String) {
        self.failures += 1;
        self.first_error.get_or_insert(why);
    }

    /// Nearest-rank percentile (`p` in 0..=1) of the successful execs.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.times.clone();
        sorted.sort();
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        let rank = (p * n as f64).ceil() as usize;
        sorted.get(rank.clamp(1, n) - 1).copied()
    }

    pub fn p50(&self) -> Option<Duration> {
        self.percentile(0.50)
    }
    pub fn p99(&self) -> Option<Duration> {
        self.percentile(0.99)
    }
    pub fn max(&self) -> Option<Duration> {
        self.times.iter().max().copied()
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub node: String,
    /// The running agent's binary (says whether a debug or a release build was measured).
    pub agent_binary: Option<PathBuf>,
    pub tortie_add: Series,
    pub ptp_add: Series,
    pub concurrent_add: Series,
    pub tortie_del: Series,
    pub tortie_del_again: Series,
    pub ptp_del: Series,
}

impl BenchReport {
    /// tortie's ADD p50 over ptp's.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.tortie_add.p50()?.as_secs_f64() / self.ptp_add.p50()?.as_secs_f64())
    }
}

/// Sandbox namespaces of one run, and for tortie's the Pod objects a kubelet would find
/// (the agent reads each pod's labels for its policy), deleted when dropped, so a failed run
/// leaves none. Made before the timed execs, for both plugins alike.
struct Sandboxes {
    lab: Lab,
    pods: Vec<PodRef>,
    with_objects: bool,
}

impl Sandboxes {
    fn create(
        lab: &Lab,
        names: impl Iterator<Item = String>,
        pod_objects_on: Option<&str>,
    ) -> Result<Sandboxes, PodError> {
        let mut s = Sandboxes {
            lab: lab.clone(),
            pods: Vec::new(),
            with_objects: false,
        };
        for name in names {
            let pod = PodRef::new(BENCH_NAMESPACE, &name)?;
            crate::pod::create_netns(lab, &pod)?;
            s.pods.push(pod);
        }
        if let Some(node) = pod_objects_on {
            s.with_objects = true;
            crate::pod::kube::create_pods(lab, &s.pods, node, &Default::default(), &[])?;
        }
        Ok(s)
    }

    fn path(&self, i: usize) -> PathBuf {
        self.pods
            .get(i)
            .map(|p| p.netns_path(&self.lab))
            .unwrap_or_default()
    }
}

impl Drop for Sandboxes {
    fn drop(&mut self) {
        if self.with_objects {
            let _ = crate::pod::kube::delete_pods(&self.lab, &self.pods);
        }
        for pod in &self.pods {
            let _ = std::process::Command::new("ip")
                .args([
                    "netns",
                    "del",
                    &self.lab.pod_netns(&pod.namespace, &pod.name),
                ])
                .output();
        }
    }
}

/// One plugin as the bench runs it: program, config on stdin, CNI_PATH.
struct Plugin {
    program: PathBuf,
    conf: Vec<u8>,
    bin_dir: PathBuf,
}

impl Plugin {
    fn env(
        &self,
        command: &str,
        container_id: &str,
        netns: &Path,
        pod: &str,
    ) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), command.into()),
            ("CNI_CONTAINERID".into(), container_id.into()),
            ("CNI_NETNS".into(), netns.display().to_string()),
            ("CNI_IFNAME".into(), "eth0".into()),
            (
                "CNI_ARGS".into(),
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={BENCH_NAMESPACE};K8S_POD_NAME={pod}"),
            ),
            ("CNI_PATH".into(), self.bin_dir.display().to_string()),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ]
    }

    /// Runs `command` for sandbox `i`; DEL and CHECK get `prev` as prevResult.
    fn run(
        &self,
        command: &str,
        sandboxes: &Sandboxes,
        i: usize,
        prev: Option<&Value>,
    ) -> Result<ExecOutput, PodError> {
        let name = sandboxes
            .pods
            .get(i)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let env = self.env(command, &container_id(&name), &sandboxes.path(i), &name);
        match prev {
            None => exec_here(&self.program, &env, &self.conf),
            Some(prev) => {
                let mut conf: Value = serde_json::from_slice(&self.conf).unwrap_or(Value::Null);
                conf["prevResult"] = prev.clone();
                exec_here(
                    &self.program,
                    &env,
                    &serde_json::to_vec(&conf).unwrap_or_default(),
                )
            }
        }
    }
}

/// A container ID derived from the sandbox's name, unique per run's sandbox.
fn container_id(name: &str) -> String {
    format!("bench{}{name}", std::process::id())
}

/// A ptp subnet that overlaps neither the lab's pool nor its LAN.
fn ptp_subnet(pool: Ipv4Net) -> Option<Ipv4Net> {
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    [
        Ipv4Addr::new(10, 250, 0, 0),
        Ipv4Addr::new(10, 251, 0, 0),
        Ipv4Addr::new(172, 30, 0, 0),
    ]
    .into_iter()
    .filter_map(|a| Ipv4Net::new(a, 16).ok())
    .find(|s| !overlaps(s, &pool))
}

/// Runs the bench on a lab that is up, with its agent ready on `opts.node`.
pub fn run(
    lab: &Lab,
    opts: &BenchOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport, PodError> {
    let config = LabConfig::load(lab)?
        .ok_or_else(|| PodError::Invalid("the lab is not up (scripts/lab up)".into()))?;
    if !config.nodes.iter().any(|n| n.name == opts.node) {
        return Err(PodError::Invalid(format!(
            "{:?} is not a node of this lab",
            opts.node
        )));
    }
    let health = crate::agents::health_blocking(&lab.agent_socket(&opts.node));
    if health != crate::agents::Health::Ready {
        return Err(PodError::Invalid(format!(
            "the agent of {} is {}: {}",
            opts.node,
            health.word(),
            health.reason().unwrap_or("")
        )));
    }
    let agent_binary = crate::process::running(lab, &lab.agent_pid_file(&opts.node))
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok());

    let rt = crate::pod::runtime(lab, &opts.node, None)?;
    let entry = rt
        .conflist
        .plugins
        .iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("tortie"))
        .ok_or_else(|| {
            PodError::Invalid(format!(
                "{} has no tortie plugin",
                rt.conflist.path.display()
            ))
        })?;
    let mut tortie_conf: Map<String, Value> = entry.clone();
    tortie_conf.insert("name".into(), json!(rt.conflist.name));
    tortie_conf.insert("cniVersion".into(), json!(rt.conflist.cni_version));
    let tortie = Plugin {
        program: rt.bin_dir.join("tortie"),
        conf: serde_json::to_vec(&tortie_conf).unwrap_or_default(),
        bin_dir: rt.bin_dir.clone(),
    };
    let ipam_dir = lab.state_dir().join("bench-cni").join("host-local");
    let _ = std::fs::remove_dir_all(&ipam_dir);
    let subnet = ptp_subnet(config.pool).ok_or_else(|| {
        PodError::Invalid(format!(
            "no subnet for ptp outside the pool {}",
            config.pool
        ))
    })?;
    let ptp_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": subnet.to_string(), "dataDir": ipam_dir},
    });
    let ptp = Plugin {
        program: rt.bin_dir.join("ptp"),
        conf: serde_json::to_vec(&ptp_conf).unwrap_or_default(),
        bin_dir: rt.bin_dir.clone(),
    };

    let n = opts.sequential;
    progress(&format!(
        "making {} sandbox namespaces",
        2 * n + opts.concurrent
    ));
    let node = Some(opts.node.as_str());
    let t_boxes = Sandboxes::create(lab, (0..n).map(|i| format!("t{i}")), node)?;
    let p_boxes = Sandboxes::create(lab, (0..n).map(|i| format!("p{i}")), None)?;
    let c_boxes = Sandboxes::create(lab, (0..opts.concurrent).map(|i| format!("c{i}")), node)?;

    progress(&format!(
        "{n} sequential ADDs each, tortie and ptp + host-local alternating"
    ));
    let (tortie_add, ptp_add, results) = crate::kube_netns::in_netns(&rt.netns, || {
        let (mut ts, mut ps, mut results) = (Series::default(), Series::default(), Vec::new());
        for i in 0..n {
            let out = tortie.run("ADD", &t_boxes, i, None);
            ts.record(&out);
            results.push(
                out.ok()
                    .filter(|o| o.code == 0)
                    .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok()),
            );
            ps.record(&ptp.run("ADD", &p_boxes, i, None));
        }
        (ts, ps, results)
    })?;

    progress(&format!("{n} DELs, then {n} repeated DELs"));
    let (tortie_del, tortie_del_again, ptp_del) = crate::kube_netns::in_netns(&rt.netns, || {
        let (mut del, mut again, mut pdel) =
            (Series::default(), Series::default(), Series::default());
        for (i, prev) in results.iter().enumerate() {
            del.record(&tortie.run("DEL", &t_boxes, i, prev.as_ref()));
        }
        for (i, prev) in results.iter().enumerate() {
            again.record(&tortie.run("DEL", &t_boxes, i, prev.as_ref()));
        }
        for i in 0..n {
            pdel.record(&ptp.run("DEL", &p_boxes, i, None));
        }
        (del, again, pdel)
    })?;

    progress(&format!("{} concurrent ADDs", opts.concurrent));
    let barrier = Barrier::new(opts.concurrent);
    let mut concurrent_add = Series::default();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..opts.concurrent)
            .map(|i| {
                let (tortie, boxes, barrier, netns) = (&tortie, &c_boxes, &barrier, &rt.netns);
                scope.spawn(move || {
                    crate::kube_netns::in_netns(netns, || {
                        barrier.wait();
                        tortie.run("ADD", boxes, i, None)
                    })
                })
            })
            .collect();
        for t in threads {
            match t.join() {
                Ok(Ok(out)) => concurrent_add.record(&out),
                Ok(Err(e)) => concurrent_add.fail(e.to_string()),
                Err(_) => concurrent_add.fail("a bench thread panicked".into()),
            }
        }
    });
    // Release what the concurrent ADDs took; not timed.
    crate::kube_netns::in_netns(&rt.netns, || {
        for i in 0..opts.concurrent {
            if let Err(e) = tortie.run("DEL", &c_boxes, i, None) {
                tracing::warn!(error = %e, "bench cleanup DEL");
            }
        }
    })?;
    let _ = std::fs::remove_dir_all(&ipam_dir);

    Ok(BenchReport {
        node: opts.node.clone(),
        agent_binary,
        tortie_add,
        ptp_add,
        concurrent_add,
        tortie_del,
        tortie_del_again,
        ptp_del,
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

/// The report as a table, with each goal and whether it was met.
pub fn render(r: &BenchReport) -> String {
    let met = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    };
    let under = |d: Option<Duration>, limit_ms: f64| d.map(|d| d.as_secs_f64() * 1e3 <= limit_ms);
    let rows: Vec<(&str, &Series, String, Option<bool>)> = vec![
        (
            "tortie ADD, sequential",
            &r.tortie_add,
            "p99 ≤ 25 ms".into(),
            under(r.tortie_add.p99(), 25.0),
        ),
        (
            "ptp + host-local ADD, sequential",
            &r.ptp_add,
            "(reference)".into(),
            None,
        ),
        (
            "tortie ADD, concurrent",
            &r.concurrent_add,
            "p99 ≤ 250 ms, 0 failures".into(),
            under(r.concurrent_add.p99(), 250.0).map(|ok| ok && r.concurrent_add.failures == 0),
        ),
        (
            "tortie DEL",
            &r.tortie_del,
            "p50 ≤ 30 ms".into(),
            under(r.tortie_del.p50(), 30.0),
        ),
        (
            "tortie DEL, repeated",
            &r.tortie_del_again,
            "p50 ≤ 5 ms".into(),
            under(r.tortie_del_again.p50(), 5.0),
        ),
        (
            "ptp + host-local DEL",
            &r.ptp_del,
            "(reference)".into(),
            None,
        ),
    ];
    let mut out = format!(
        "bench cni on {} (agent {}; one plugin exec timed fork to exit)\n\n",
        r.node,
        r.agent_binary
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "?".into())
    );
    out.push_str(&format!(
        "{:<34} {:>4} {:>5} {:>9} {:>9} {:>9}  {:<26} {}\n",
        "series", "n", "fail", "p50", "p99", "max", "goal", ""
    ));
    for (name, s, goal, ok) in rows {
        out.push_str(&format!(
            "{:<34} {:>4} {:>5} {:>9} {:>9} {:>9}  {:<26} {}\n",
            name,
            s.times.len() + s.failures,
            s.failures,
            ms(s.p50()),
            ms(s.p99()),
            ms(s.max()),
            goal,
            met(ok)
        ));
    }
    let ratio = r.ratio();
    out.push_str(&format!(
        "\ntortie ADD p50 / ptp ADD p50 = {}  (goal ≤ 0.60: {})\n",
        ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into()),
        met(ratio.map(|x| x <= 0.6))
    ));
    for (name, s) in [
        ("tortie ADD", &r.tortie_add),
        ("ptp ADD", &r.ptp_add),
        ("concurrent ADD", &r.concurrent_add),
        ("tortie DEL", &r.tortie_del),
        ("repeated DEL", &r.tortie_del_again),
        ("ptp DEL", &r.ptp_del),
    ] {
        if let Some(e) = &s.first_error {
            out.push_str(&format!("first {name} failure: {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Series {
            times: (1..=100).rev().map(Duration::from_millis).collect(),
            ..Default::default()
        };
        assert_eq!(s.p50(), Some(Duration::from_millis(50)));
        assert_eq!(s.p99(), Some(Duration::from_millis(99)));
        assert_eq!(s.max(), Some(Duration::from_millis(100)));
        let one = Series {
            times: vec![Duration::from_millis(7)],
            ..Default::default()
        };
        assert_eq!(one.p99(), Some(Duration::from_millis(7)));
        assert_eq!(Series::default().p50(), None);
    }

    #[test]
    fn the_ptp_subnet_avoids_the_pool() {
        let p = |s: &str| s.parse::<Ipv4Net>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ptp_subnet(p("10.244.0.0/16")), Some(p("10.250.0.0/16")));
        assert_eq!(ptp_subnet(p("10.250.0.0/16")), Some(p("10.251.0.0/16")));
        assert_eq!(ptp_subnet(p("10.0.0.0/8")), Some(p("172.30.0.0/16")));
        assert_eq!(ptp_subnet(p("0.0.0.0/0")), None);
    }
}
