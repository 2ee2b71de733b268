//! `bench bgp`: how fast a speaker turns a full feed into kernel routes, tortie's
//! standalone daemon against BIRD, in the same run on the same machine (issue 4).
//!
//! For each size and target: a feeder BIRD holding N static /30s peers with the target
//! over a veth. The clock starts at the first UPDATE on the wire (tcpdump on the feeder's
//! side of the link) and stops when the target namespace's IPv4 main table holds N more
//! prefixes, read from `/proc/<pid>/net/fib_triestat` (cheap: a dump of 500k routes would
//! take seconds and distort the figure). RSS is the target's VmRSS once it has converged.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStderr, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};

use crate::Error;
use crate::bench_header::{Machine, build_of, met, verdict};
use crate::netns::{NetNs, veth_pair};
use crate::routers::{Kind, PeerSpec, Router, RouterSpec, wait_for};

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `tortie-node bgp` with `kernel_install = true`.
    Tortie,
    /// BIRD 2 with a kernel protocol exporting everything.
    Bird,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Tortie => "tortie",
            Target::Bird => "BIRD",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prefix counts, e.g. 100 000 and 500 000.
    pub sizes: Vec<u32>,
    pub targets: Vec<Target>,
    /// The longest one run may take to converge.
    pub timeout: Duration,
    /// Who sends the feed: BIRD (static routes) or tortie (originated prefixes).
    pub feeder: Kind,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sizes: vec![100_000, 500_000],
            targets: vec![Target::Tortie, Target::Bird],
            timeout: Duration::from_secs(300),
            feeder: Kind::Bird,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub target: Target,
    pub prefixes: u32,
    /// First UPDATE on the wire → last route in the kernel.
    pub seconds: f64,
    /// The target's VmRSS after convergence, and before the feed started.
    pub rss_bytes: u64,
    pub rss_before_bytes: u64,
}

impl BenchResult {
    pub fn routes_per_second(&self) -> f64 {
        f64::from(self.prefixes) / self.seconds
    }
    /// RSS growth per route.
    pub fn rss_per_route(&self) -> f64 {
        self.rss_bytes.saturating_sub(self.rss_before_bytes) as f64 / f64::from(self.prefixes)
    }
}

const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const FEEDER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
const ASN: u32 = 64512;

/// Runs every size against every target, in that order, and returns the results.
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchResult>, Error> {
    let mut results = Vec::new();
    for &n in &opts.sizes {
        let feed = prefixes(n)?;
        for &target in &opts.targets {
            let r = run_one(target, &feed, opts)?;
            tracing::info!(
                target = target.name(),
                prefixes = n,
                seconds = r.seconds,
                rate = r.routes_per_second(),
                "bench bgp run done"
            );
            results.push(r);
        }
    }
    Ok(results)
}

/// A markdown table of the results, for the README.
pub fn render(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "| speaker | prefixes | first UPDATE → last route in kernel | routes/s | RSS | RSS growth per route |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} s | {:.0} | {:.1} MiB | {:.0} B |",
            r.target.name(),
            r.prefixes,
            r.seconds,
            r.routes_per_second(),
            r.rss_bytes as f64 / (1024.0 * 1024.0),
            r.rss_per_route()
        );
    }
    out
}

/// `n` distinct /30s from 10.0.0.0 up (500k of them end below 10.31.0.0, clear of the
/// 10.96.0.0/24 link).
fn prefixes(n: u32) -> Result<Vec<IpNet>, Error> {
    if n > 4_000_000 {
        return Err(Error::Invalid(format!(
            "{n} prefixes would run into the bench link's subnet"
        )));
    }
    Ok((0..n)
        .filter_map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 2)), 30).ok())
        .map(IpNet::V4)
        .collect())
}

fn run_one(target: Target, feed: &[IpNet], opts: &BenchOptions) -> Result<BenchResult, Error> {
    let timeout = opts.timeout;
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| Error::Io { what, source: e }
    };
    let x = NetNs::create("trt-bench-x").map_err(io("creating the target namespace"))?;
    let f = NetNs::create("trt-bench-f").map_err(io("creating the feeder namespace"))?;
    veth_pair(&x, "eth0", &f, "eth0").map_err(io("creating the bench link"))?;
    x.run(
        "ip",
        &["addr", "add", &format!("{TARGET_IP}/24"), "dev", "eth0"],
    )
    .map_err(io("addressing"))?;
    f.run(
        "ip",
        &["addr", "add", &format!("{FEEDER_IP}/24"), "dev", "eth0"],
    )
    .map_err(io("addressing"))?;

    // The target waits for the feeder: nothing moves before the capture is running.
    let mut tspec = RouterSpec::new(TARGET_IP, ASN);
    let mut to_feeder = PeerSpec::new(IpAddr::V4(FEEDER_IP), ASN);
    to_feeder.passive = true;
    to_feeder.graceful_restart = false;
    to_feeder.local_address = Some(IpAddr::V4(TARGET_IP));
    tspec.peers.push(to_feeder);
    tspec.kernel_export = true;
    let kind = match target {
        Target::Tortie => Kind::Tortie,
        Target::Bird => Kind::Bird,
    };
    let speaker = Router::start(kind, &x, tspec)?;
    let pid = speaker
        .pid()
        .ok_or_else(|| Error::Invalid("the target has no pid".into()))?;
    let base = main_table_prefixes(pid)?;
    let rss_before = rss(pid)?;

    let capture = FirstUpdate::start(&f)?;
    let mut fspec = RouterSpec::new(FEEDER_IP, ASN);
    let mut to_target = PeerSpec::new(IpAddr::V4(TARGET_IP), ASN);
    to_target.graceful_restart = false;
    to_target.local_address = Some(IpAddr::V4(FEEDER_IP));
    fspec.peers.push(to_target);
    fspec.originate = feed.to_vec();
    fspec.next_hop_v4 = Some(FEEDER_IP);
    let _feeder = Router::start(opts.feeder, &f, fspec)?;

    let want = base + feed.len() as u64;
    let start = Instant::now();
    let mut done_at = None;
    while start.elapsed() < timeout {
        if main_table_prefixes(pid)? >= want {
            done_at = Some(SystemTime::now());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let done_at = done_at.ok_or_else(|| Error::Timeout {
        what: format!(
            "{} to install {} routes:\n{}",
            target.name(),
            feed.len(),
            speaker.log_tail()
        ),
        secs: timeout.as_secs_f64(),
    })?;
    let first = capture.wait(Duration::from_secs(10))?;
    let seconds = done_at
        .duration_since(first)
        .map_err(|_| {
            Error::Invalid("the last route landed before the first UPDATE was captured".into())
        })?
        .as_secs_f64();
    Ok(BenchResult {
        target,
        prefixes: feed.len() as u32,
        seconds,
        rss_bytes: rss(pid)?,
        rss_before_bytes: rss_before,
    })
}

/// The number of prefixes in the IPv4 main table of `pid`'s network namespace.
fn main_table_prefixes(pid: u32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/net/fib_triestat");
    let text = std::fs::read_to_string(&path).map_err(Error::io(format!("reading {path}")))?;
    let mut in_main = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            in_main = line.trim_end() == "Main:";
            continue;
        }
        if in_main && let Some(n) = line.trim().strip_prefix("Prefixes:") {
            return n
                .trim()
                .parse()
                .map_err(|_| Error::Invalid(format!("{path}: bad line {line:?}")));
        }
    }
    Ok(0)
}

fn rss(pid: u32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(Error::io(format!("reading {path}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| Error::Invalid(format!("{path} has no VmRSS")))
}

/// tcpdump on the feeder's end of the link, stopping at the first UPDATE it sees.
struct FirstUpdate {
    child: Child,
    out: std::path::PathBuf,
    /// Kept open: tcpdump's last words on stderr must not meet a closed pipe.
    _stderr: Option<std::io::BufReader<ChildStderr>>,
}

impl FirstUpdate {
    fn start(feeder: &NetNs) -> Result<FirstUpdate, Error> {
        let out = std::env::temp_dir().join(format!(
            "trt-bench-tcpdump-{}-{}",
            std::process::id(),
            feeder.name()
        ));
        let file = std::fs::File::create(&out)
            .map_err(Error::io(format!("creating {}", out.display())))?;
        // A BGP message type sits 18 bytes into its header; a segment that starts with an
        // UPDATE (type 2) is what we want. A large segment from the feeder counts too, in
        // case the first UPDATE shares a segment with a KEEPALIVE.
        let filter = format!(
            "src host {FEEDER_IP} and tcp port 179 and (tcp[((tcp[12] & 0xf0) >> 2) + 18] = 2 or greater 400)"
        );
        let child = feeder
            .command("tcpdump")
            .args(["-i", "eth0", "-n", "-tt", "-l", "-c", "1", &filter])
            .stdout(file)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::io("starting tcpdump"))?;
        let mut cap = FirstUpdate {
            child,
            out,
            _stderr: None,
        };
        cap.wait_listening()?;
        Ok(cap)
    }

    /// tcpdump says "listening on" once its filter is attached.
    fn wait_listening(&mut self) -> Result<(), Error> {
        use std::io::BufRead;
        let Some(stderr) = self.child.stderr.take() else {
            return Ok(());
        };
        let mut reader = std::io::BufReader::new(stderr);
        let mut said = String::new();
        for _ in 0..5 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.contains("listening on") {
                self._stderr = Some(reader);
                return Ok(());
            }
            said.push_str(&line);
        }
        Err(Error::Command(format!("tcpdump did not start: {said}")))
    }

    /// The capture time of the first UPDATE.
    fn wait(mut self, timeout: Duration) -> Result<SystemTime, Error> {
        let mut stamp = None;
        wait_for(timeout, "tcpdump to report the first UPDATE", || {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            stamp = text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<f64>().ok());
            Ok(stamp.is_some())
        })?;
        let secs = stamp.unwrap_or_default();
        let _ = self.child.kill();
        Ok(UNIX_EPOCH + Duration::from_secs_f64(secs))
    }
}

impl Drop for FirstUpdate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Rate goal: tortie's routes/s over BIRD's, at every size.
pub const RATE_GOAL: f64 = 1.2;

/// Each size's goals: tortie's rate at least [`RATE_GOAL`] × BIRD's, and RSS growth per
/// route no higher than BIRD's. `None` where a size lacks one of the two runs.
pub fn goals(results: &[BenchResult]) -> Vec<(u32, Option<bool>, Option<bool>)> {
    let mut sizes: Vec<u32> = results.iter().map(|r| r.prefixes).collect();
    sizes.dedup();
    sizes
        .into_iter()
        .map(|n| {
            let of = |t: Target| results.iter().find(|r| r.prefixes == n && r.target == t);
            let pair = of(Target::Tortie).zip(of(Target::Bird));
            (
                n,
                pair.map(|(t, b)| t.routes_per_second() >= RATE_GOAL * b.routes_per_second()),
                pair.map(|(t, b)| t.rss_per_route() <= b.rss_per_route()),
            )
        })
        .collect()
}

/// Command-line glue for `tortie-lab bench bgp`: runs with `sizes`, prints the machine, the
/// build, the feed, the table and each goal; true when every goal was met.
pub fn main(sizes: Vec<u32>, feeder: Kind) -> Result<bool, Error> {
    let mut machine = Machine::at_start();
    let opts = BenchOptions {
        sizes,
        feeder,
        ..BenchOptions::default()
    };
    let results = run(&opts)?;
    machine.finish();
    let feeder = match feeder {
        Kind::Tortie => "tortie (originated prefixes)",
        _ => "BIRD (static routes)",
    };
    println!(
        "bench bgp: first UPDATE → last route in the kernel, `tortie-node bgp` against BIRD 2, each in namespaces of its own\n{}\n\
         build: {}\nfeed: uniform /30s from 10.0.0.0, one attribute set, from {feeder}\n",
        machine.line(),
        crate::agents::agent_binary()
            .as_deref()
            .map(build_of)
            .unwrap_or_else(|| "tortie-node not found".into())
    );
    print!("{}", render(&results));
    let mut all = true;
    for (n, rate, rss) in goals(&results) {
        all &= rate == Some(true) && rss == Some(true);
        println!(
            "- {n} prefixes: rate ≥ {RATE_GOAL}× BIRD's: {}; RSS per route ≤ BIRD's: {}",
            met(rate),
            met(rss)
        );
    }
    println!("{}", verdict(all));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_prefixes_are_distinct_and_clear_of_the_link() {
        let feed = prefixes(500_000).unwrap_or_default();
        assert_eq!(feed.len(), 500_000);
        let link: IpNet =
            IpNet::V4(Ipv4Net::new(Ipv4Addr::new(10, 96, 0, 0), 24).unwrap_or_default());
        assert!(feed.iter().all(|p| !link.contains(p) && !p.contains(&link)));
        let set: std::collections::BTreeSet<_> = feed.iter().collect();
        assert_eq!(set.len(), feed.len());
    }

    #[test]
    fn renders_a_markdown_row() {
        let r = BenchResult {
            target: Target::Bird,
            prefixes: 500_000,
            seconds: 2.5,
            rss_bytes: 60 * 1024 * 1024,
            rss_before_bytes: 10 * 1024 * 1024,
        };
        let text = render(&[r]);
        assert!(
            text.contains("| BIRD | 500000 | 2.50 s | 200000 | 60.0 MiB | 105 B |"),
            "{text}"
        );
    }

    #[test]
    fn each_size_is_judged_against_birds_run() {
        let r = |target, seconds, rss_bytes| BenchResult {
            target,
            prefixes: 1_000,
            seconds,
            rss_bytes,
            rss_before_bytes: 0,
        };
        let fast = [r(Target::Tortie, 1.0, 50_000), r(Target::Bird, 1.3, 90_000)];
        assert_eq!(goals(&fast), vec![(1_000, Some(true), Some(true))]);
        let close = [
            r(Target::Tortie, 1.0, 100_000),
            r(Target::Bird, 1.1, 90_000),
        ];
        assert_eq!(goals(&close), vec![(1_000, Some(false), Some(false))]);
        assert_eq!(goals(&fast[..1]), vec![(1_000, None, None)]);
    }
}
