//! `bench cni`: how long a pod's network takes on a lab node, tortie against Debian's
//! reference `ptp` + `host-local` (issue 3's goals: tortie ADD p50 ≤ 0.6 × ptp's, p99 ≤ 25 ms;
//! 30 concurrent ADDs p99 ≤ 250 ms; DEL p50 ≤ 30 ms, a repeated DEL ≤ 5 ms; and no failed
//! exec anywhere).
//!
//! What is timed is one plugin exec, fork to exit, as a runtime runs it: the `tortie` entry of
//! the node's installed conflist (talking to the node's real agent, which writes the
//! allocation to the apiserver and installs the host route before answering) against `ptp`
//! with `host-local` IPAM. Both are exec'd the same way, from a thread inside the node's
//! namespace ([`crate::pod::cni::exec_here`]). ADDs, DELs and repeated DELs of the two
//! alternate pod by pod, each pair in the other order from the last, so a change of machine
//! load during the run weighs on both alike. A failed exec stays in its series'
//! percentiles (see [`Series`]) and misses the goals. Sandbox namespaces are made before the
//! clock starts. The lab's etcd storage (`up --etcd-storage`) is printed with the table.
//!
//! Where one ADD's time goes: a few more ADDs, outside the timed series, run with the
//! plugin's `log_level` at debug; the timestamps of its log lines split each into phases,
//! and the bench prints each phase's median.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use serde_json::{Map, Value, json};

use crate::bench_header::{Machine, build_of, met, verdict};
use crate::lab::{EtcdStorage, Lab, LabConfig};
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
    /// ADDs run with the plugin's debug log to trace where the time goes (not timed).
    pub traced: usize,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            node: "node-1".into(),
            sequential: 200,
            concurrent: 30,
            traced: 10,
        }
    }
}

/// The timings of one series of attempts. A failure is counted and stays in the
/// percentiles: a failed exec with its time, one that could not even be run (no time) as
/// slower than every timed attempt.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Every timed attempt, failed ones included.
    pub times: Vec<Duration>,
    /// Attempts that failed, timed or not.
    pub failures: usize,
    /// Failed attempts without a time.
    pub untimed: usize,
    /// The first failure's output, to say why.
    pub first_error: Option<String>,
}

impl Series {
    pub fn ok(&mut self, took: Duration) {
        self.times.push(took);
    }

    pub fn failed(&mut self, took: Option<Duration>, why: String) {
        self.failures += 1;
        match took {
            Some(d) => self.times.push(d),
            None => self.untimed += 1,
        }
        self.first_error.get_or_insert(why);
    }

    fn record(&mut self, out: &Result<ExecOutput, PodError>) {
        match out {
            Ok(o) if o.code == 0 => self.ok(o.took),
            Ok(o) => self.failed(
                Some(o.took),
                format!("exit {}: {}{}", o.code, o.stdout.trim(), o.stderr.trim()),
            ),
            Err(e) => self.failed(None, e.to_string()),
        }
    }

    /// Adds `other`'s attempts to this series.
    pub fn extend(&mut self, other: &Series) {
        self.times.extend(&other.times);
        self.failures += other.failures;
        self.untimed += other.untimed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Attempts, failed ones included.
    pub fn n(&self) -> usize {
        self.times.len() + self.untimed
    }

    /// Nearest-rank percentile (`p` in 0..=1) of every attempt; `None` when there is none,
    /// or when the rank falls on an attempt that failed without a time.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.times.clone();
        sorted.sort();
        let n = self.n();
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
    /// The slowest attempt; `None` when one failed without a time.
    pub fn max(&self) -> Option<Duration> {
        if self.untimed > 0 {
            return None;
        }
        self.times.iter().max().copied()
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub node: String,
    pub machine: Machine,
    /// The running agent's binary (says whether a debug or a release build was measured;
    /// the agent installs the plugin from beside it).
    pub agent_binary: Option<PathBuf>,
    /// Where the lab's etcd keeps its data; `None` when neither `lab.json` nor the mount
    /// table says.
    pub etcd_storage: Option<EtcdStorage>,
    pub tortie_add: Series,
    pub ptp_add: Series,
    pub concurrent_add: Series,
    pub tortie_del: Series,
    pub ptp_del: Series,
    pub tortie_del_again: Series,
    pub ptp_del_again: Series,
    /// The traced ADDs' phases, in order.
    pub phases: Vec<(Phase, Series)>,
    /// The traced ADDs themselves (their failures count like any other).
    pub traced_add: Series,
}

/// Whether `s` has no failure and its figure `d` is within `limit_ms`.
fn within(d: Option<Duration>, s: &Series, limit_ms: f64) -> Option<bool> {
    d.map(|d| d.as_secs_f64() * 1e3 <= limit_ms && s.failures == 0)
}

impl BenchReport {
    /// tortie's ADD p50 over ptp's.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.tortie_add.p50()?.as_secs_f64() / self.ptp_add.p50()?.as_secs_f64())
    }

    /// Every series, with its name.
    pub fn series(&self) -> Vec<(&'static str, &Series)> {
        vec![
            ("tortie ADD", &self.tortie_add),
            ("ptp ADD", &self.ptp_add),
            ("concurrent ADD", &self.concurrent_add),
            ("tortie DEL", &self.tortie_del),
            ("ptp DEL", &self.ptp_del),
            ("repeated tortie DEL", &self.tortie_del_again),
            ("repeated ptp DEL", &self.ptp_del_again),
            ("traced ADD", &self.traced_add),
        ]
    }

    /// Execs in every series, and how many of them failed.
    pub fn execs(&self) -> (usize, usize) {
        self.series()
            .iter()
            .fold((0, 0), |(n, f), (_, s)| (n + s.n(), f + s.failures))
    }

    pub fn add_met(&self) -> Option<bool> {
        within(self.tortie_add.p99(), &self.tortie_add, 25.0)
    }
    pub fn ratio_met(&self) -> Option<bool> {
        self.ratio()
            .map(|r| r <= 0.6 && self.tortie_add.failures == 0 && self.ptp_add.failures == 0)
    }
    pub fn concurrent_met(&self) -> Option<bool> {
        within(self.concurrent_add.p99(), &self.concurrent_add, 250.0)
    }
    pub fn del_met(&self) -> Option<bool> {
        within(self.tortie_del.p50(), &self.tortie_del, 30.0)
    }
    pub fn del_again_met(&self) -> Option<bool> {
        within(self.tortie_del_again.p50(), &self.tortie_del_again, 5.0)
    }
    /// No exec failed, in any series.
    pub fn no_failure_met(&self) -> bool {
        self.execs().1 == 0
    }

    /// Every goal measured and met.
    pub fn all_met(&self) -> bool {
        self.no_failure_met()
            && [
                self.add_met(),
                self.ratio_met(),
                self.concurrent_met(),
                self.del_met(),
                self.del_again_met(),
            ]
            .iter()
            .all(|ok| *ok == Some(true))
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
    let mut machine = Machine::at_start();
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
    let etcd_storage = config
        .etcd_storage
        .or_else(|| crate::control::etcd_storage_in_place(lab));

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
        2 * n + opts.concurrent + opts.traced
    ));
    let node = Some(opts.node.as_str());
    let t_boxes = Sandboxes::create(lab, (0..n).map(|i| format!("t{i}")), node)?;
    let p_boxes = Sandboxes::create(lab, (0..n).map(|i| format!("p{i}")), None)?;
    let c_boxes = Sandboxes::create(lab, (0..opts.concurrent).map(|i| format!("c{i}")), node)?;
    let x_boxes = Sandboxes::create(lab, (0..opts.traced).map(|i| format!("x{i}")), node)?;

    progress(&format!(
        "{n} sequential ADDs each, tortie and ptp + host-local alternating"
    ));
    let (tortie_add, ptp_add, results) = crate::kube_netns::in_netns(&rt.netns, || {
        let (mut ts, mut ps, mut results) = (Series::default(), Series::default(), Vec::new());
        for i in 0..n {
            let ptp_first = i % 2 == 1;
            if ptp_first {
                ps.record(&ptp.run("ADD", &p_boxes, i, None));
            }
            let out = tortie.run("ADD", &t_boxes, i, None);
            ts.record(&out);
            results.push(
                out.ok()
                    .filter(|o| o.code == 0)
                    .and_then(|o| serde_json::from_str::<Value>(&o.stdout).ok()),
            );
            if !ptp_first {
                ps.record(&ptp.run("ADD", &p_boxes, i, None));
            }
        }
        (ts, ps, results)
    })?;

    progress(&format!(
        "{n} DELs each, then {n} repeated DELs each, alternating"
    ));
    let [tortie_del, ptp_del, tortie_del_again, ptp_del_again] =
        crate::kube_netns::in_netns(&rt.netns, || {
            let mut s: [Series; 4] = Default::default();
            for round in [0, 2] {
                for (i, prev) in results.iter().enumerate() {
                    let ptp_first = i % 2 == 1;
                    if ptp_first {
                        s[round + 1].record(&ptp.run("DEL", &p_boxes, i, None));
                    }
                    s[round].record(&tortie.run("DEL", &t_boxes, i, prev.as_ref()));
                    if !ptp_first {
                        s[round + 1].record(&ptp.run("DEL", &p_boxes, i, None));
                    }
                }
            }
            s
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
                Ok(Err(e)) => concurrent_add.failed(None, e.to_string()),
                Err(_) => concurrent_add.failed(None, "a bench thread panicked".into()),
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

    progress(&format!(
        "{} ADDs with the plugin's debug log, to see where the time goes",
        opts.traced
    ));
    let mut traced_conf = tortie_conf;
    traced_conf.insert("log_level".into(), json!("debug"));
    let traced = Plugin {
        conf: serde_json::to_vec(&traced_conf).unwrap_or_default(),
        ..tortie
    };
    let (traced_add, phases) = crate::kube_netns::in_netns(&rt.netns, || {
        let mut adds = Series::default();
        let mut phases: Vec<(Phase, Series)> =
            Phase::ALL.iter().map(|&p| (p, Series::default())).collect();
        for i in 0..opts.traced {
            let started = SystemTime::now();
            let out = traced.run("ADD", &x_boxes, i, None);
            adds.record(&out);
            let prev = match &out {
                Ok(o) if o.code == 0 => {
                    for (phase, took) in trace(started, o.took, &o.stderr) {
                        if let (Some((_, s)), Some(took)) =
                            (phases.iter_mut().find(|(p, _)| *p == phase), took)
                        {
                            s.ok(took);
                        }
                    }
                    serde_json::from_str::<Value>(&o.stdout).ok()
                }
                _ => None,
            };
            if let Err(e) = traced.run("DEL", &x_boxes, i, prev.as_ref()) {
                tracing::warn!(error = %e, "bench cleanup DEL");
            }
        }
        (adds, phases)
    })?;
    machine.finish();

    Ok(BenchReport {
        node: opts.node.clone(),
        machine,
        agent_binary,
        etcd_storage,
        tortie_add,
        ptp_add,
        concurrent_add,
        tortie_del,
        ptp_del,
        tortie_del_again,
        ptp_del_again,
        phases,
        traced_add,
    })
}

/// One part of an ADD, told apart by the plugin's debug log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Exec,
    Connect,
    Allocate,
    Pair,
    HostUp,
    PodSide,
    EndpointReady,
    Exit,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Exec,
        Phase::Connect,
        Phase::Allocate,
        Phase::Pair,
        Phase::HostUp,
        Phase::PodSide,
        Phase::EndpointReady,
        Phase::Exit,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Phase::Exec => "exec: fork to the plugin's first log line (load, read the config)",
            Phase::Connect => {
                "per-pod lock, async runtime, agent connection (gRPC), look at the links"
            }
            Phase::Allocate => {
                "Allocate: gRPC round trip, the agent's IPAM and its apiserver write"
            }
            Phase::Pair => "  beside Allocate: the veth pair (netlink)",
            Phase::HostUp => "host end up (netlink), once both are done",
            Phase::PodSide => "pod side in its namespace: addresses, routes (netlink)",
            Phase::EndpointReady => "  beside it: EndpointReady (gRPC; agent's host route, policy)",
            Phase::Exit => "result out, process exit",
        }
    }
}

/// Where a phase starts or ends: the fork, a line of the plugin's debug log
/// (`commands::add`, `cli::run`), the later of two lines, or the exit.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Forked,
    Line(&'static str),
    LaterOf(&'static str, &'static str),
    Exited,
}

impl Phase {
    fn between(self) -> (Mark, Mark) {
        use Mark::{Exited, Forked, LaterOf, Line};
        match self {
            Phase::Exec => (Forked, Line("plugin started")),
            Phase::Connect => (Line("plugin started"), Line("looked before wiring")),
            Phase::Allocate => (Line("looked before wiring"), Line("Allocate answered")),
            Phase::Pair => (Line("looked before wiring"), Line("veth pair made")),
            Phase::HostUp => (
                LaterOf("veth pair made", "Allocate answered"),
                Line("host end up"),
            ),
            Phase::PodSide => (Line("host end up"), Line("pod side configured")),
            Phase::EndpointReady => (Line("host end up"), Line("EndpointReady answered")),
            Phase::Exit => (Line("pod wired"), Exited),
        }
    }
}

/// One traced ADD's phases, from its log's timestamps, the fork's wall-clock time and the
/// exec's duration; a phase whose log lines are missing has no time.
fn trace(forked: SystemTime, took: Duration, log: &str) -> Vec<(Phase, Option<Duration>)> {
    let line = |message: &str| {
        let needle = format!(": {message}");
        log.lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next())
            .and_then(parse_utc)
    };
    let when = |mark: Mark| match mark {
        Mark::Forked => Some(forked),
        Mark::Line(m) => line(m),
        Mark::LaterOf(a, b) => Some(line(a)?.max(line(b)?)),
        Mark::Exited => Some(forked + took),
    };
    Phase::ALL
        .iter()
        .map(|&phase| {
            let (from, to) = phase.between();
            let took = when(to)
                .zip(when(from))
                .and_then(|(b, a)| b.duration_since(a).ok());
            (phase, took)
        })
        .collect()
}

/// `2026-12-06T10:00:00.123456Z`, as tracing's formatter stamps each line (UTC).
fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3_600 + min * 60 + sec;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A percentile in ms; `failed` when it falls on an attempt that failed without a time.
fn ms(s: &Series, d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        None if s.n() > 0 => "failed".into(),
        None => "-".into(),
    }
}

/// One markdown table row.
fn row(out: &mut String, cells: &[&str]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

/// What the etcd storage means for the figures.
fn storage_line(storage: Option<EtcdStorage>) -> &'static str {
    match storage {
        Some(EtcdStorage::Disk) => {
            "etcd data on disk (as a real control plane; `up --etcd-storage`)"
        }
        Some(EtcdStorage::Tmpfs) => {
            "etcd data on TMPFS (`up --etcd-storage tmpfs`): apiserver writes wait for no disk"
        }
        None => "etcd storage unknown (lab.json from before --etcd-storage)",
    }
}

/// The report as markdown: the run's circumstances, a table with each goal met or not, the
/// traced ADDs' phases, and the verdict.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::new();
    let sequential = r.tortie_add.n();
    let _ = writeln!(
        out,
        "bench cni on {}: one plugin exec timed fork to exit; tortie and ptp + host-local alternating, \
         {sequential} sequential ADDs, DELs and repeated DELs each, {} concurrent ADDs\n{}\n\
         build: {}\n{}\n",
        r.node,
        r.concurrent_add.n(),
        r.machine.line(),
        r.agent_binary
            .as_deref()
            .map(build_of)
            .unwrap_or_else(|| "agent binary unknown".into()),
        storage_line(r.etcd_storage),
    );
    row(
        &mut out,
        &["series", "n", "fail", "p50", "p99", "max", "goal", ""],
    );
    row(
        &mut out,
        &["---", "---:", "---:", "---:", "---:", "---:", "---", "---"],
    );
    let rows: [(&str, &Series, &str, Option<bool>); 7] = [
        (
            "tortie ADD, sequential",
            &r.tortie_add,
            "p99 ≤ 25 ms",
            r.add_met(),
        ),
        (
            "ptp + host-local ADD, sequential",
            &r.ptp_add,
            "reference",
            None,
        ),
        (
            "tortie ADD, concurrent",
            &r.concurrent_add,
            "p99 ≤ 250 ms",
            r.concurrent_met(),
        ),
        ("tortie DEL", &r.tortie_del, "p50 ≤ 30 ms", r.del_met()),
        ("ptp + host-local DEL", &r.ptp_del, "reference", None),
        (
            "tortie DEL, repeated",
            &r.tortie_del_again,
            "p50 ≤ 5 ms",
            r.del_again_met(),
        ),
        (
            "ptp + host-local DEL, repeated",
            &r.ptp_del_again,
            "reference",
            None,
        ),
    ];
    for (name, s, goal, ok) in rows {
        row(
            &mut out,
            &[
                name,
                &s.n().to_string(),
                &s.failures.to_string(),
                &ms(s, s.p50()),
                &ms(s, s.p99()),
                &ms(s, s.max()),
                goal,
                met(ok),
            ],
        );
    }
    let ratio = r.ratio();
    row(
        &mut out,
        &[
            "tortie / ptp, ADD p50",
            "",
            "",
            &ratio
                .map(|x| format!("{x:.2}×"))
                .unwrap_or_else(|| "-".into()),
            "",
            "",
            "≤ 0.60×",
            met(r.ratio_met()),
        ],
    );
    let (execs, failed) = r.execs();
    let _ = writeln!(
        out,
        "\nfailed execs: {failed} of {execs} (goal: none): {}",
        met(Some(r.no_failure_met()))
    );

    let _ = writeln!(
        out,
        "\nWhere an ADD goes: {} more tortie ADDs with the plugin's debug log, not in the series above \
         (medians of its log's timestamps; the traced exec took {} at p50):\n",
        r.traced_add.n(),
        ms(&r.traced_add, r.traced_add.p50())
    );
    row(&mut out, &["phase", "n", "median"]);
    row(&mut out, &["---", "---:", "---:"]);
    for (phase, s) in &r.phases {
        row(
            &mut out,
            &[phase.describe(), &s.n().to_string(), &ms(s, s.p50())],
        );
    }
    out.push('\n');
    for (name, s) in r.series() {
        if let Some(e) = &s.first_error {
            let _ = writeln!(out, "first {name} failure: {e}");
        }
    }
    let _ = writeln!(out, "{}", verdict(r.all_met()));
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

    #[test]
    fn failures_stay_in_the_percentiles() {
        let mut s = Series::default();
        for ms in 1..=98 {
            s.ok(Duration::from_millis(ms));
        }
        s.failed(Some(Duration::from_millis(500)), "exit 1".into());
        s.failed(None, "could not run".into());
        assert_eq!((s.n(), s.failures, s.untimed), (100, 2, 1));
        assert_eq!(s.p50(), Some(Duration::from_millis(50)));
        // The 99th attempt is the failed exec's 500 ms; the 100th never finished.
        assert_eq!(s.p99(), Some(Duration::from_millis(500)));
        assert_eq!(s.percentile(1.0), None);
        assert_eq!(s.max(), None);
        assert_eq!(s.first_error.as_deref(), Some("exit 1"));
        // A failure misses the goal even when the figure is within it.
        assert_eq!(within(s.p50(), &s, 100.0), Some(false));
    }

    #[test]
    fn log_stamps_parse_as_utc() {
        let t = parse_utc("2026-12-06T10:00:01.250000Z").unwrap_or_else(|| panic!("no stamp"));
        let secs = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        // date -u -d 2026-12-06T10:00:01Z +%s
        assert!((secs - 1_796_551_201.25).abs() < 1e-6, "{secs}");
        let leap = parse_utc("2024-02-29T00:00:00.000001Z").unwrap_or_else(|| panic!("no stamp"));
        assert_eq!(
            leap.duration_since(UNIX_EPOCH).unwrap_or_default(),
            Duration::new(1_709_164_800, 1_000)
        );
        assert_eq!(parse_utc("DEBUG"), None);
    }

    #[test]
    fn a_traced_add_splits_into_phases() {
        let forked = parse_utc("2026-12-06T10:00:00.000000Z").unwrap_or_else(|| panic!("no stamp"));
        let log = "\
2026-12-06T10:00:00.001000Z DEBUG tortie_cni::cli: plugin started
2026-12-06T10:00:00.002000Z DEBUG cni{cmd=ADD}: tortie_cni::commands: looked before wiring exists=false host_exists=false
2026-12-06T10:00:00.003000Z DEBUG cni{cmd=ADD}: tortie_cni::commands: veth pair made ok=true
2026-12-06T10:00:00.007000Z DEBUG cni{cmd=ADD}: tortie_cni::commands: Allocate answered ok=true
2026-12-06T10:00:00.007500Z DEBUG cni{cmd=ADD}: tortie_cni::commands: host end up
2026-12-06T10:00:00.008000Z DEBUG cni{cmd=ADD}: tortie_cni::commands: EndpointReady answered ok=true
2026-12-06T10:00:00.008500Z DEBUG cni{cmd=ADD}: tortie_cni::commands: pod side configured ok=true
2026-12-06T10:00:00.008600Z  INFO cni{cmd=ADD}: tortie_cni::commands: pod wired host_if=\"tort0\"
";
        let got = trace(forked, Duration::from_millis(9), log);
        let ms = |p: Phase| {
            got.iter()
                .find(|(q, _)| *q == p)
                .and_then(|(_, d)| *d)
                .map(|d| (d.as_secs_f64() * 1e4).round() / 10.0)
        };
        assert_eq!(ms(Phase::Exec), Some(1.0));
        assert_eq!(ms(Phase::Connect), Some(1.0));
        assert_eq!(ms(Phase::Allocate), Some(5.0));
        assert_eq!(ms(Phase::Pair), Some(1.0));
        assert_eq!(ms(Phase::HostUp), Some(0.5));
        assert_eq!(ms(Phase::PodSide), Some(1.0));
        assert_eq!(ms(Phase::EndpointReady), Some(0.5));
        assert_eq!(ms(Phase::Exit), Some(0.4));
        // An older plugin without a line leaves its phases untimed, not wrong.
        let got = trace(
            forked,
            Duration::from_millis(9),
            &log.replace("host end up", "x"),
        );
        assert!(got.iter().any(|(p, d)| *p == Phase::HostUp && d.is_none()));
    }
}
