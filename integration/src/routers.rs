//! Real BGP routers as peers for interop tests and benchmarks: BIRD 2, FRR's bgpd (without
//! zebra), GoBGP and ExaBGP, each started inside a given [`NetNs`] from a generated config,
//! and queried through its own CLI. tortie's own standalone daemon (`tortie-node bgp`) is
//! one more [`Kind`], queried through `tortiectl` and the namespace's kernel table.
//!
//! A [`Router`] owns its process and its scratch folder: dropping it kills the process
//! (and its process group: ExaBGP runs a helper) and removes the folder.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Serialize;

use crate::Error;
use crate::netns::NetNs;

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bird,
    Frr,
    Gobgp,
    Exabgp,
    /// `tortie-node bgp --config FILE`, with `kernel_install = true`.
    Tortie,
}

/// One BGP neighbor of the router.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub address: IpAddr,
    pub asn: u32,
    /// Wait for the neighbor to connect.
    pub passive: bool,
    /// TCP MD5 (RFC 2385).
    pub password: Option<String>,
    pub rr_client: bool,
    pub graceful_restart: bool,
    /// The neighbor's port (179 unless a test runs several speakers on one address).
    pub port: u16,
    /// Our own address toward this neighbor; ExaBGP needs it.
    pub local_address: Option<IpAddr>,
}

impl PeerSpec {
    pub fn new(address: IpAddr, asn: u32) -> PeerSpec {
        PeerSpec {
            address,
            asn,
            passive: false,
            password: None,
            rr_client: false,
            graceful_restart: true,
            port: 179,
            local_address: None,
        }
    }
}

/// A router's whole configuration.
#[derive(Debug, Clone)]
pub struct RouterSpec {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub peers: Vec<PeerSpec>,
    /// Prefixes the router announces from the start.
    pub originate: Vec<IpNet>,
    /// Next hops to put on originated routes. Needed when a family is carried over a
    /// session of the other family (IPv6 routes over an IPv4 session).
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    pub hold_time: u16,
    /// BIRD only: export every route into the kernel (the benchmark's reference).
    pub kernel_export: bool,
    /// The port to listen on (0: do not listen, where the router allows it).
    pub listen_port: u16,
}

impl RouterSpec {
    pub fn new(router_id: Ipv4Addr, asn: u32) -> RouterSpec {
        RouterSpec {
            router_id,
            asn,
            peers: Vec::new(),
            originate: Vec::new(),
            next_hop_v4: None,
            next_hop_v6: None,
            hold_time: 90,
            kernel_export: false,
            listen_port: 179,
        }
    }
}

/// The prefixes of a `{prefix: [path, ...]}` RIB dump (FRR's and GoBGP's JSON) that have a
/// path `learned` accepts: one a neighbor sent, not one the router originated itself.
fn prefixes_with_a_path(
    rib: &serde_json::Value,
    learned: impl Fn(&serde_json::Value) -> bool,
) -> impl Iterator<Item = IpNet> {
    rib.as_object()
        .into_iter()
        .flatten()
        .filter(move |(_, paths)| paths.as_array().is_some_and(|ps| ps.iter().any(&learned)))
        .filter_map(|(prefix, _)| prefix.parse().ok())
}

/// A running router. Killed, and its folder removed, on drop.
pub struct Router {
    kind: Kind,
    netns: String,
    dir: PathBuf,
    child: Option<Child>,
    spec: RouterSpec,
    /// The next start is a graceful restart's (see [`Router::restart_recovering`]).
    recovering: bool,
    /// The router outlives this handle: dropping it neither kills the router nor removes
    /// its folder (`tortie-lab peer add`, where `down` does both).
    detached: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a router gets to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

impl Router {
    /// Starts `kind` inside `ns` with `spec`, and waits until its control interface answers.
    pub fn start(kind: Kind, ns: &NetNs, spec: RouterSpec) -> Result<Router, Error> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tortie-router-{}-{}-{n}",
            std::process::id(),
            format!("{kind:?}").to_lowercase()
        ));
        Router::start_in(kind, ns.name(), spec, dir)
    }

    /// [`Router::start`] inside the named namespace, with its config, logs and sockets in
    /// `dir`.
    pub fn start_in(
        kind: Kind,
        netns: &str,
        spec: RouterSpec,
        dir: PathBuf,
    ) -> Result<Router, Error> {
        crate::mkdir(&dir)?;
        let mut router = Router::attach(kind, netns, spec, dir);
        router.detached = false;
        router.spawn()?;
        router.wait_ready()?;
        if kind == Kind::Gobgp {
            for p in router.spec.originate.clone() {
                router.announce(p)?;
            }
        }
        Ok(router)
    }

    /// A handle on a router that runs already (started by [`Router::start_in`] and then
    /// [`detached`](Router::detach)), for queries. Dropping it leaves the router running.
    pub fn attach(kind: Kind, netns: &str, spec: RouterSpec, dir: PathBuf) -> Router {
        Router {
            kind,
            netns: netns.to_owned(),
            dir,
            child: None,
            spec,
            recovering: false,
            detached: true,
        }
    }

    /// Leaves the router running after this handle is gone; returns its pid.
    pub fn detach(mut self) -> Option<u32> {
        self.detached = true;
        self.child.take().map(|c| c.id())
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn spec(&self) -> &RouterSpec {
        &self.spec
    }

    /// The router's scratch folder (config, logs, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The router's pid (the program itself: `ip netns exec` execs in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The tail of the router's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("router.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let dir = self.dir.clone();
        let log = std::fs::File::create(dir.join("router.log"))
            .map_err(Error::io(format!("creating {}/router.log", dir.display())))?;
        let err = log
            .try_clone()
            .map_err(Error::io("duplicating the log handle"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]);
        let conf = match self.kind {
            Kind::Bird => {
                let conf = dir.join("bird.conf");
                cmd.arg("bird");
                if self.recovering {
                    cmd.arg("-R");
                }
                cmd.arg("-f")
                    .arg("-c")
                    .arg(&conf)
                    .arg("-s")
                    .arg(dir.join("bird.ctl"));
                (conf, bird_config(&self.spec, &dir))
            }
            Kind::Frr => {
                let conf = dir.join("bgpd.conf");
                cmd.arg("/usr/lib/frr/bgpd")
                    .args(["-Z", "-S", "-P", "0", "-p"])
                    .arg(self.spec.listen_port.to_string())
                    .arg("-f")
                    .arg(&conf)
                    .arg("-i")
                    .arg(dir.join("bgpd.pid"))
                    .arg("--vty_socket")
                    .arg(&dir)
                    .arg("-z")
                    .arg(dir.join("zserv.api"));
                (conf, frr_config(&self.spec))
            }
            Kind::Gobgp => {
                let conf = dir.join("gobgpd.toml");
                cmd.arg("gobgpd").arg("-f").arg(&conf).args([
                    "-t",
                    "toml",
                    "-p",
                    "--pprof-disable",
                    "--api-hosts",
                    "127.0.0.1:50051",
                ]);
                (conf, gobgp_config(&self.spec)?)
            }
            Kind::Exabgp => {
                let conf = dir.join("exabgp.conf");
                let fifo = dir.join("ctl.fifo");
                nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| Error::Io {
                        what: format!("mkfifo {}", fifo.display()),
                        source: e.into(),
                    })?;
                crate::write_file(&dir.join("ctl.py"), exabgp_helper(&dir).as_bytes())?;
                cmd.arg("env")
                    .arg("exabgp.daemon.user=root")
                    .arg("exabgp.daemon.daemonize=false")
                    .arg("exabgp.log.destination=stdout")
                    .arg("exabgp.api.ack=false")
                    .arg(format!("exabgp.tcp.port={}", self.spec.listen_port))
                    .arg(format!(
                        "exabgp.tcp.bind={}",
                        self.spec
                            .peers
                            .iter()
                            .filter_map(|p| p.local_address)
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                    .arg("exabgp")
                    .arg(&conf);
                (conf, exabgp_config(&self.spec, &dir))
            }
            Kind::Tortie => {
                let conf = dir.join("tortie-bgp.toml");
                let bin = crate::agents::agent_binary().ok_or_else(|| {
                    Error::Invalid("tortie-node is not built (cargo build -p tortie-node, or set TORTIE_NODE_BIN)".into())
                })?;
                cmd.arg(bin)
                    .arg("bgp")
                    .arg("--config")
                    .arg(&conf)
                    .env("RUST_LOG", "info");
                (conf, tortie_config(&self.spec, &dir)?)
            }
        };
        crate::write_file(&conf.0, conf.1.as_bytes())?;
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(Error::io(format!(
            "starting {:?} in {}",
            self.kind, self.netns
        )))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::Command(format!(
                    "{:?} exited at start ({status}):\n{}",
                    self.kind,
                    self.log_tail()
                )));
            }
            let ready = match self.kind {
                Kind::Bird => self.birdc(&["show", "status"]).is_ok(),
                Kind::Frr => self.vtysh(&["show bgp summary"]).is_ok(),
                Kind::Gobgp => self.gobgp(&["global"]).is_ok(),
                // ExaBGP has no control socket; its helper writes a mark once it runs.
                Kind::Exabgp => self.dir.join("helper.started").exists(),
                Kind::Tortie => self.tortie_status().is_ok(),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("{:?} to start:\n{}", self.kind, self.log_tail()),
                    secs: START_TIMEOUT.as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the router (and its helpers) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the router again with the same configuration (after [`kill`](Self::kill)).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        if self.kind == Kind::Exabgp {
            let _ = std::fs::remove_file(self.dir.join("ctl.fifo"));
            let _ = std::fs::remove_file(self.dir.join("helper.started"));
        }
        self.spawn()?;
        self.wait_ready()?;
        if self.kind == Kind::Gobgp {
            for p in self.spec.originate.clone() {
                self.announce(p)?;
            }
        }
        Ok(())
    }

    /// Starts the router again the way a graceful restart does (after [`kill`](Self::kill)):
    /// BIRD with `-R`, so that its OPEN says it restarted and kept its forwarding state
    /// (RFC 4724 §3) and it waits for its peers' End-of-RIB. Only BIRD offers that mode from
    /// its command line.
    pub fn restart_recovering(&mut self) -> Result<(), Error> {
        if self.kind != Kind::Bird {
            return Err(Error::Invalid(format!(
                "{:?} cannot be started in graceful-restart recovery mode",
                self.kind
            )));
        }
        self.recovering = true;
        let restarted = self.restart();
        self.recovering = false;
        restarted
    }

    /// Whether the session with `peer` is Established.
    pub fn established(&self, peer: IpAddr) -> Result<bool, Error> {
        match self.kind {
            Kind::Bird => {
                let name = self.bird_protocol(peer)?;
                let out = self.birdc(&["show", "protocols", &name])?;
                Ok(out
                    .lines()
                    .any(|l| l.starts_with(&name) && l.contains("Established")))
            }
            Kind::Frr => {
                let out = self.vtysh(&[&format!("show bgp neighbors {peer} json")])?;
                let v: serde_json::Value = parse_json(&out)?;
                Ok(v[peer.to_string()]["bgpState"] == "Established")
            }
            Kind::Gobgp => {
                let out = self.gobgp(&["neighbor", &peer.to_string(), "-j"])?;
                let v: serde_json::Value = parse_json(&out)?;
                Ok(
                    v["state"]["session_state"] == 6
                        || v["state"]["session_state"] == "established",
                )
            }
            Kind::Tortie => {
                let v = self.tortie_status()?;
                let peers = v["ipv4_peers"]
                    .as_array()
                    .into_iter()
                    .chain(v["ipv6_peers"].as_array())
                    .flatten();
                Ok(peers
                    .filter(|p| p["peer_address"] == peer.to_string())
                    .any(|p| p["fsm_state"] == "Established"))
            }
            Kind::Exabgp => {
                // The helper logs every neighbor state change as JSON; the last one counts.
                let mut up = false;
                for ev in self.exabgp_events() {
                    if ev["type"] == "state"
                        && ev["neighbor"]["address"]["peer"] == peer.to_string()
                    {
                        up = ev["neighbor"]["state"] == "up";
                    }
                }
                Ok(up)
            }
        }
    }

    /// Waits until the session with `peer` is Established.
    pub fn wait_established(&self, peer: IpAddr, timeout: Duration) -> Result<(), Error> {
        wait_for(
            timeout,
            &format!("{:?} session with {peer} to be Established", self.kind),
            || self.established(peer),
        )
        .map_err(|e| match e {
            Error::Timeout { what, secs } => Error::Timeout {
                what: format!("{what}\n{}", self.log_tail()),
                secs,
            },
            e => e,
        })
    }

    /// Prefixes this router has learned over BGP (in its RIB, from any neighbor), IPv4
    /// and IPv6. For tortie: the routes in the namespace's kernel table with protocol 116.
    pub fn learned(&self) -> Result<BTreeSet<IpNet>, Error> {
        match self.kind {
            Kind::Tortie => Ok(self
                .kernel_routes()?
                .into_iter()
                .map(|(net, _)| net)
                .collect()),
            Kind::Bird => {
                let mut out = BTreeSet::new();
                for table in ["master4", "master6"] {
                    let text = self.birdc(&[
                        "show", "route", "table", table, "where", "source", "=", "RTS_BGP",
                    ])?;
                    out.extend(
                        text.lines()
                            .filter_map(|l| l.split_whitespace().next()?.parse::<IpNet>().ok()),
                    );
                }
                Ok(out)
            }
            Kind::Frr => {
                let mut out = BTreeSet::new();
                for af in ["ipv4", "ipv6"] {
                    let text = self.vtysh(&[&format!("show bgp {af} unicast json")])?;
                    let v: serde_json::Value = parse_json(&text)?;
                    out.extend(prefixes_with_a_path(&v["routes"], |p| {
                        p["peerId"].as_str().is_some_and(|id| id != "(unspec)")
                    }));
                }
                Ok(out)
            }
            Kind::Gobgp => {
                let mut out = BTreeSet::new();
                for af in ["ipv4", "ipv6"] {
                    let text = self.gobgp(&["global", "rib", "-a", af, "-j"])?;
                    let v: serde_json::Value = parse_json(&text)?;
                    out.extend(prefixes_with_a_path(&v, |p| {
                        p["source-id"]
                            .as_str()
                            .is_some_and(|s| s != "<nil>" && !s.is_empty())
                    }));
                }
                Ok(out)
            }
            Kind::Exabgp => {
                let mut out = BTreeSet::new();
                for ev in self.exabgp_events() {
                    let Some(update) = ev["neighbor"]["message"]["update"].as_object() else {
                        continue;
                    };
                    for (verb, families) in update {
                        let Some(families) = families.as_object() else {
                            continue;
                        };
                        for (_family, by_nh) in families {
                            let prefixes: Vec<String> = match verb.as_str() {
                                "announce" => by_nh
                                    .as_object()
                                    .into_iter()
                                    .flat_map(|m| m.values())
                                    .flat_map(|list| list.as_array().cloned().unwrap_or_default())
                                    .filter_map(|n| n["nlri"].as_str().map(str::to_owned))
                                    .collect(),
                                "withdraw" => by_nh
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|n| n["nlri"].as_str().map(str::to_owned))
                                    .collect(),
                                _ => Vec::new(),
                            };
                            for p in prefixes {
                                let Ok(net) = p.parse::<IpNet>() else {
                                    continue;
                                };
                                if verb == "announce" {
                                    out.insert(net);
                                } else {
                                    out.remove(&net);
                                }
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Waits until [`learned`](Self::learned) satisfies `pred`.
    pub fn wait_learned(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&BTreeSet<IpNet>) -> bool,
    ) -> Result<BTreeSet<IpNet>, Error> {
        let mut last = BTreeSet::new();
        let r = wait_for(timeout, what, || {
            last = self.learned()?;
            Ok(pred(&last))
        });
        match r {
            Ok(()) => Ok(last),
            Err(Error::Timeout { what, secs }) => Err(Error::Timeout {
                what: format!("{what} (has {last:?})\n{}", self.log_tail()),
                secs,
            }),
            Err(e) => Err(e),
        }
    }

    /// Starts announcing `prefix`.
    pub fn announce(&mut self, prefix: IpNet) -> Result<(), Error> {
        if !self.spec.originate.contains(&prefix) {
            self.spec.originate.push(prefix);
        }
        match self.kind {
            Kind::Bird => self.bird_reconfigure(),
            Kind::Frr => {
                let af = if prefix.addr().is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                };
                self.vtysh(&[
                    "configure terminal",
                    &format!("router bgp {}", self.spec.asn),
                    &format!("address-family {af} unicast"),
                    &format!("network {prefix}"),
                ])
                .map(drop)
            }
            Kind::Gobgp => {
                let (af, nh) = self.gobgp_next_hop(prefix);
                self.gobgp(&[
                    "global",
                    "rib",
                    "add",
                    "-a",
                    af,
                    &prefix.to_string(),
                    "nexthop",
                    &nh,
                ])
                .map(drop)
            }
            Kind::Exabgp => {
                let nh = self.exabgp_next_hop(prefix);
                self.exabgp_command(&format!("announce route {prefix} next-hop {nh}"))
            }
            Kind::Tortie => Err(Error::Invalid(
                "the tortie daemon takes its prefixes from its config only".into(),
            )),
        }
    }

    /// Stops originating `prefix`. While the router is down (after [`kill`](Self::kill)) only
    /// its next start changes.
    pub fn withdraw(&mut self, prefix: IpNet) -> Result<(), Error> {
        self.spec.originate.retain(|p| *p != prefix);
        if self.child.is_none() && !self.detached {
            return Ok(());
        }
        match self.kind {
            Kind::Bird => self.bird_reconfigure(),
            Kind::Frr => {
                let af = if prefix.addr().is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                };
                self.vtysh(&[
                    "configure terminal",
                    &format!("router bgp {}", self.spec.asn),
                    &format!("address-family {af} unicast"),
                    &format!("no network {prefix}"),
                ])
                .map(drop)
            }
            Kind::Gobgp => {
                let (af, _) = self.gobgp_next_hop(prefix);
                self.gobgp(&["global", "rib", "del", "-a", af, &prefix.to_string()])
                    .map(drop)
            }
            Kind::Exabgp => {
                let nh = self.exabgp_next_hop(prefix);
                self.exabgp_command(&format!("withdraw route {prefix} next-hop {nh}"))
            }
            Kind::Tortie => Err(Error::Invalid(
                "the tortie daemon takes its prefixes from its config only".into(),
            )),
        }
    }

    /// tortie only: `tortiectl node status -o json` against the daemon's socket.
    pub fn tortie_status(&self) -> Result<serde_json::Value, Error> {
        parse_json(&self.tortiectl(&["node", "status", "-o", "json"])?)
    }

    /// tortie only: runs tortiectl against the daemon's socket; returns its stdout.
    pub fn tortiectl(&self, args: &[&str]) -> Result<String, Error> {
        let bin = crate::agents::sibling_binary("tortiectl", "TORTIECTL_BIN").ok_or_else(|| {
            Error::Invalid("tortiectl is not built (cargo build -p tortie-node)".into())
        })?;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(self.dir.join("bgp.sock"))
            .args(args);
        crate::run(&mut cmd)
    }

    /// The namespace's kernel routes with tortie's protocol (116), with their gateways.
    pub fn kernel_routes(&self) -> Result<Vec<(IpNet, Option<IpAddr>)>, Error> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let mut cmd = Command::new("ip");
            cmd.args([
                "-j",
                fam,
                "-n",
                &self.netns,
                "route",
                "show",
                "proto",
                "116",
            ]);
            let v = parse_json(&crate::run(&mut cmd)?)?;
            for r in v.as_array().into_iter().flatten() {
                let Some(dst) = r["dst"].as_str() else {
                    continue;
                };
                let net = if dst.contains('/') {
                    dst.parse::<IpNet>().ok()
                } else {
                    dst.parse::<IpAddr>().ok().map(IpNet::from)
                };
                if let Some(net) = net {
                    out.push((net, r["gateway"].as_str().and_then(|g| g.parse().ok())));
                }
            }
        }
        Ok(out)
    }

    /// ExaBGP only: sends one API command line as is (the adversary's raw tool, e.g. an
    /// `attribute [...]` announcement).
    pub fn exabgp_command(&self, line: &str) -> Result<(), Error> {
        self.exabgp_commands(&[line])
    }

    /// ExaBGP only: sends several API command lines in one write.
    pub fn exabgp_commands(&self, lines: &[&str]) -> Result<(), Error> {
        if self.kind != Kind::Exabgp {
            return Err(Error::Invalid(format!(
                "{:?} takes no ExaBGP commands",
                self.kind
            )));
        }
        use std::io::Write;
        let fifo = self.dir.join("ctl.fifo");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .map_err(Error::io(format!("opening {}", fifo.display())))?;
        let mut text = lines.join("\n");
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(Error::io("writing ExaBGP commands"))
    }

    fn exabgp_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn exabgp_next_hop(&self, prefix: IpNet) -> String {
        match prefix {
            IpNet::V4(_) => self
                .spec
                .next_hop_v4
                .map_or("self".into(), |a| a.to_string()),
            IpNet::V6(_) => self
                .spec
                .next_hop_v6
                .map_or("self".into(), |a| a.to_string()),
        }
    }

    fn gobgp_next_hop(&self, prefix: IpNet) -> (&'static str, String) {
        match prefix {
            IpNet::V4(_) => (
                "ipv4",
                self.spec
                    .next_hop_v4
                    .map_or("0.0.0.0".into(), |a| a.to_string()),
            ),
            IpNet::V6(_) => (
                "ipv6",
                self.spec.next_hop_v6.map_or("::".into(), |a| a.to_string()),
            ),
        }
    }

    /// BIRD's name for its session with `peer` (`birdc show protocols NAME`).
    pub fn bird_protocol(&self, peer: IpAddr) -> Result<String, Error> {
        self.spec
            .peers
            .iter()
            .position(|p| p.address == peer)
            .map(|i| format!("peer{i}"))
            .ok_or_else(|| Error::Invalid(format!("{peer} is not a neighbor of this BIRD")))
    }

    fn bird_reconfigure(&self) -> Result<(), Error> {
        crate::write_file(
            &self.dir.join("bird.conf"),
            bird_config(&self.spec, &self.dir).as_bytes(),
        )?;
        let out = self.birdc(&["configure"])?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(Error::Command(format!("birdc configure: {out}")))
        }
    }

    /// Runs `birdc` against this BIRD's socket.
    pub fn birdc(&self, args: &[&str]) -> Result<String, Error> {
        let sock = self.dir.join("bird.ctl");
        let mut cmd = Command::new("birdc");
        cmd.arg("-s").arg(&sock).args(args);
        crate::run(&mut cmd)
    }

    /// Runs vtysh commands (in order, one session) against this bgpd.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("vtysh");
        cmd.arg("--vty_socket").arg(&self.dir).args(["-d", "bgpd"]);
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        let out = crate::run(&mut cmd)?;
        if out.contains("% ") && (out.contains("Unknown command") || out.contains("Invalid")) {
            return Err(Error::Command(format!("vtysh {commands:?}: {out}")));
        }
        Ok(out)
    }

    /// Runs the `gobgp` CLI inside the router's namespace (the API listens on its loopback).
    pub fn gobgp(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "gobgp", "-p", "50051"])
            .args(args);
        crate::run(&mut cmd)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes. Errors from `cond` are
/// retried (a router may not answer while it starts) and reported on timeout.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<bool, Error>,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match cond() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            let what = match last_err {
                Some(e) => format!("{what} (last error: {e})"),
                None => what.to_owned(),
            };
            return Err(Error::Timeout {
                what,
                secs: timeout.as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parse_json(text: &str) -> Result<serde_json::Value, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::Command(format!("unparsable router JSON ({e}): {text}")))
}

/// Quotes a string for BIRD's and FRR's config languages (passwords come from tests).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn bird_config(spec: &RouterSpec, dir: &Path) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "router id {};", spec.router_id);
    let _ = writeln!(
        c,
        "log {} all;",
        quoted(&dir.join("bird.log").display().to_string())
    );
    // Interfaces must be known for `gateway direct` next hops.
    let _ = writeln!(c, "protocol device {{ scan time 2; }}");
    if spec.kernel_export {
        for fam in ["ipv4", "ipv6"] {
            let _ = writeln!(
                c,
                "protocol kernel {{ {fam} {{ import none; export all; }}; }}"
            );
        }
    }
    let (v4, v6): (Vec<&IpNet>, Vec<&IpNet>) =
        spec.originate.iter().partition(|p| p.addr().is_ipv4());
    for (fam, list) in [("ipv4", v4), ("ipv6", v6)] {
        let _ = writeln!(c, "protocol static static_{fam} {{ {fam};");
        for p in list {
            let _ = writeln!(c, "  route {p} blackhole;");
        }
        let _ = writeln!(c, "}}");
    }
    for (i, p) in spec.peers.iter().enumerate() {
        let _ = writeln!(c, "protocol bgp peer{i} {{");
        match p.local_address {
            Some(local) => {
                let _ = writeln!(
                    c,
                    "  local {local} port {} as {};",
                    spec.listen_port, spec.asn
                );
            }
            None => {
                let _ = writeln!(c, "  local port {} as {};", spec.listen_port, spec.asn);
            }
        }
        let _ = writeln!(c, "  neighbor {} port {} as {};", p.address, p.port, p.asn);
        // iBGP is multihop to BIRD unless told; our peers always share a link.
        let _ = writeln!(c, "  direct;\n  hold time {};", spec.hold_time);
        // Test-friendly timers: BIRD waits 120 s between attempts by default.
        let _ = writeln!(
            c,
            "  connect delay time 1; connect retry time 2; error wait time 1, 4;"
        );
        if p.passive {
            let _ = writeln!(c, "  passive on;");
        }
        if let Some(pw) = &p.password {
            let _ = writeln!(c, "  password {};", quoted(pw));
        }
        if p.rr_client {
            let _ = writeln!(c, "  rr client;");
        }
        if p.graceful_restart {
            let _ = writeln!(c, "  graceful restart on;");
        }
        for (fam, nh) in [
            ("ipv4", spec.next_hop_v4.map(IpAddr::V4)),
            ("ipv6", spec.next_hop_v6.map(IpAddr::V6)),
        ] {
            let next_hop = match nh {
                Some(a) => format!("next hop address {a};"),
                None => "next hop self;".to_owned(),
            };
            let _ = writeln!(
                c,
                "  {fam} {{ import all; export all; {next_hop} gateway direct; }};"
            );
        }
        let _ = writeln!(c, "}}");
    }
    c
}

fn frr_config(spec: &RouterSpec) -> String {
    let mut c = String::new();
    c.push_str("frr defaults traditional\nhostname tortie-interop\n");
    let _ = writeln!(c, "router bgp {}", spec.asn);
    let _ = writeln!(c, " bgp router-id {}", spec.router_id);
    c.push_str(" no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n no bgp network import-check\n");
    if spec.peers.iter().any(|p| p.graceful_restart) {
        c.push_str(" bgp graceful-restart\n");
    }
    for p in &spec.peers {
        let a = p.address;
        let _ = writeln!(c, " neighbor {a} remote-as {}", p.asn);
        if p.port != 179 {
            let _ = writeln!(c, " neighbor {a} port {}", p.port);
        }
        let _ = writeln!(
            c,
            " neighbor {a} timers {} {}",
            spec.hold_time / 3,
            spec.hold_time
        );
        let _ = writeln!(c, " neighbor {a} timers connect 2");
        if p.passive {
            let _ = writeln!(c, " neighbor {a} passive");
        }
        if let Some(pw) = &p.password {
            // FRR's config language has no quoting; test passwords are plain words.
            let _ = writeln!(c, " neighbor {a} password {pw}");
        }
        if let Some(local) = p.local_address {
            let _ = writeln!(c, " neighbor {a} update-source {local}");
        }
    }
    for (fam, is_v4) in [("ipv4", true), ("ipv6", false)] {
        let _ = writeln!(c, " address-family {fam} unicast");
        for n in spec
            .originate
            .iter()
            .filter(|n| n.addr().is_ipv4() == is_v4)
        {
            let _ = writeln!(c, "  network {n}");
        }
        for p in &spec.peers {
            let a = p.address;
            let _ = writeln!(c, "  neighbor {a} activate");
            if p.rr_client {
                let _ = writeln!(c, "  neighbor {a} route-reflector-client");
            }
            let has_nh = if is_v4 {
                spec.next_hop_v4.is_some()
            } else {
                spec.next_hop_v6.is_some()
            };
            if has_nh {
                let _ = writeln!(c, "  neighbor {a} route-map nh_{fam} out");
            }
        }
        c.push_str(" exit-address-family\n");
    }
    if let Some(nh) = spec.next_hop_v4 {
        let _ = writeln!(c, "route-map nh_ipv4 permit 10\n set ip next-hop {nh}");
    }
    if let Some(nh) = spec.next_hop_v6 {
        let _ = writeln!(
            c,
            "route-map nh_ipv6 permit 10\n set ipv6 next-hop global {nh}"
        );
    }
    c
}

/// GoBGP's OpenConfig-shaped TOML: most settings sit in a `config` table under their group.
#[derive(Serialize)]
struct Config<T> {
    config: T,
}

#[derive(Serialize)]
struct GobgpFile {
    global: Config<GobgpGlobal>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    neighbors: Vec<GobgpNeighbor>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpGlobal {
    #[serde(rename = "as")]
    asn: u32,
    router_id: Ipv4Addr,
    /// -1: do not listen.
    port: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpNeighbor {
    config: GobgpNeighborConfig,
    transport: Config<GobgpTransport>,
    timers: Config<GobgpTimers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route_reflector: Option<Config<GobgpRouteReflector>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    graceful_restart: Option<Config<GobgpGracefulRestart>>,
    afi_safis: Vec<GobgpAfiSafi>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpNeighborConfig {
    neighbor_address: IpAddr,
    peer_as: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_password: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpTransport {
    passive_mode: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_address: Option<IpAddr>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpTimers {
    hold_time: u16,
    keepalive_interval: u16,
    connect_retry: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpRouteReflector {
    route_reflector_client: bool,
    route_reflector_cluster_id: Ipv4Addr,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpGracefulRestart {
    enabled: bool,
    restart_time: u16,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpAfiSafi {
    config: GobgpAfiSafiConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    mp_graceful_restart: Option<Config<GobgpEnabled>>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct GobgpAfiSafiConfig {
    afi_safi_name: &'static str,
}

#[derive(Serialize)]
struct GobgpEnabled {
    enabled: bool,
}

fn gobgp_config(spec: &RouterSpec) -> Result<String, Error> {
    let file = GobgpFile {
        global: Config {
            config: GobgpGlobal {
                asn: spec.asn,
                router_id: spec.router_id,
                port: if spec.listen_port == 0 {
                    -1
                } else {
                    i32::from(spec.listen_port)
                },
            },
        },
        neighbors: spec
            .peers
            .iter()
            .map(|p| GobgpNeighbor {
                config: GobgpNeighborConfig {
                    neighbor_address: p.address,
                    peer_as: p.asn,
                    auth_password: p.password.clone(),
                },
                transport: Config {
                    config: GobgpTransport {
                        passive_mode: p.passive,
                        remote_port: (p.port != 179).then_some(p.port),
                        local_address: p.local_address,
                    },
                },
                timers: Config {
                    config: GobgpTimers {
                        hold_time: spec.hold_time,
                        keepalive_interval: spec.hold_time / 3,
                        connect_retry: 2,
                    },
                },
                route_reflector: p.rr_client.then_some(Config {
                    config: GobgpRouteReflector {
                        route_reflector_client: true,
                        route_reflector_cluster_id: spec.router_id,
                    },
                }),
                graceful_restart: p.graceful_restart.then_some(Config {
                    config: GobgpGracefulRestart {
                        enabled: true,
                        restart_time: 120,
                    },
                }),
                afi_safis: ["ipv4-unicast", "ipv6-unicast"]
                    .into_iter()
                    .map(|fam| GobgpAfiSafi {
                        config: GobgpAfiSafiConfig { afi_safi_name: fam },
                        mp_graceful_restart: p.graceful_restart.then_some(Config {
                            config: GobgpEnabled { enabled: true },
                        }),
                    })
                    .collect(),
            })
            .collect(),
    };
    to_toml("GoBGP", &file)
}

fn exabgp_config(spec: &RouterSpec, dir: &Path) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "process ctl {{\n  run /usr/bin/python3 {};\n  encoder json;\n}}",
        dir.join("ctl.py").display()
    );
    for p in &spec.peers {
        let _ = writeln!(c, "neighbor {} {{", p.address);
        let _ = writeln!(c, "  router-id {};", spec.router_id);
        if let Some(local) = p.local_address {
            let _ = writeln!(c, "  local-address {local};");
        }
        let _ = writeln!(
            c,
            "  local-as {};\n  peer-as {};\n  hold-time {};",
            spec.asn, p.asn, spec.hold_time
        );
        if p.port != 179 {
            let _ = writeln!(c, "  connect {};", p.port);
        }
        if p.passive {
            let _ = writeln!(c, "  passive true;");
        }
        if let Some(pw) = &p.password {
            let _ = writeln!(c, "  md5-password {};", quoted(pw));
        }
        c.push_str("  family {\n    ipv4 unicast;\n    ipv6 unicast;\n  }\n");
        c.push_str("  capability {\n    route-refresh;\n");
        if p.graceful_restart {
            c.push_str("    graceful-restart 120;\n");
        }
        c.push_str("  }\n");
        c.push_str("  api {\n    processes [ ctl ];\n    receive { parsed; update; }\n    neighbor-changes;\n  }\n");
        for n in &spec.originate {
            let nh = match n {
                IpNet::V4(_) => spec.next_hop_v4.map_or("self".into(), |a| a.to_string()),
                IpNet::V6(_) => spec.next_hop_v6.map_or("self".into(), |a| a.to_string()),
            };
            let _ = writeln!(c, "  static {{ route {n} next-hop {nh}; }}");
        }
        c.push_str("}\n");
    }
    c
}

/// `tortie-node bgp`'s config file: the fields of `tortie_node::standalone::StandaloneConfig`
/// this harness sets.
#[derive(Serialize)]
struct TortieFile<'a> {
    router_id: Ipv4Addr,
    asn: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    api_socket: PathBuf,
    kernel_install: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_ipv4: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "neighbor")]
    neighbors: Vec<TortieNeighbor<'a>>,
    originate: Vec<TortiePrefix>,
}

#[derive(Serialize)]
struct TortieNeighbor<'a> {
    address: IpAddr,
    asn: u32,
    passive: bool,
    route_reflector_client: bool,
    graceful_restart: bool,
    hold_time: u16,
    port: u16,
    connect_retry: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_address: Option<IpAddr>,
}

#[derive(Serialize)]
struct TortiePrefix {
    prefix: IpNet,
}

fn tortie_config(spec: &RouterSpec, dir: &Path) -> Result<String, Error> {
    let file = TortieFile {
        router_id: spec.router_id,
        asn: spec.asn,
        listen: (spec.listen_port != 0)
            .then(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, spec.listen_port))),
        api_socket: dir.join("bgp.sock"),
        kernel_install: true,
        local_ipv4: spec.next_hop_v4,
        local_ipv6: spec.next_hop_v6,
        neighbors: spec
            .peers
            .iter()
            .map(|p| TortieNeighbor {
                address: p.address,
                asn: p.asn,
                passive: p.passive,
                route_reflector_client: p.rr_client,
                graceful_restart: p.graceful_restart,
                hold_time: spec.hold_time,
                port: p.port,
                connect_retry: 1,
                password: p.password.as_deref(),
                local_address: p.local_address,
            })
            .collect(),
        originate: spec
            .originate
            .iter()
            .map(|&prefix| TortiePrefix { prefix })
            .collect(),
    };
    to_toml("tortie-node bgp", &file)
}

fn to_toml(what: &str, config: &impl Serialize) -> Result<String, Error> {
    toml::to_string(config).map_err(|e| Error::Invalid(format!("{what} config as TOML: {e}")))
}

/// ExaBGP's API helper: forwards lines written to `ctl.fifo` to ExaBGP, and appends what
/// ExaBGP reports (JSON, one object a line) to `received.jsonl`.
fn exabgp_helper(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"import os, sys, threading
def reader():
    with open("{d}/received.jsonl", "a") as out:
        for line in sys.stdin:
            out.write(line)
            out.flush()
threading.Thread(target=reader, daemon=True).start()
open("{d}/helper.started", "w").close()
# Read-write, so the FIFO always has a writer and never reads EOF between our commands.
with os.fdopen(os.open("{d}/ctl.fifo", os.O_RDWR), "r") as f:
    for line in f:
        sys.stdout.write(line)
        sys.stdout.flush()
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RouterSpec {
        let mut spec = RouterSpec::new(Ipv4Addr::new(10, 0, 0, 1), 64512);
        let mut peer = PeerSpec::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 64513);
        peer.password = Some("s\"e\\cret".into());
        peer.port = 1179;
        peer.rr_client = true;
        peer.local_address = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        spec.peers = vec![
            peer,
            PeerSpec::new("fd00::2".parse().unwrap_or_else(|e| panic!("{e}")), 64514),
        ];
        spec.originate = vec!["10.10.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        spec.next_hop_v6 = Some(Ipv6Addr::LOCALHOST);
        spec
    }

    fn value(text: &str) -> toml::Table {
        text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn tortie_config_is_what_tortie_node_bgp_reads() {
        let text = tortie_config(&spec(), Path::new("/tmp/r\"1")).unwrap_or_else(|e| panic!("{e}"));
        let cfg: tortie_node::standalone::StandaloneConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            cfg.listen,
            Some("0.0.0.0:179".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        assert_eq!(cfg.api_socket, Path::new("/tmp/r\"1/bgp.sock"));
        assert_eq!(cfg.neighbors.len(), 2);
        assert_eq!(cfg.neighbors[0].port, 1179);
        assert!(cfg.neighbors[0].route_reflector_client);
        assert_eq!(cfg.local_ipv6, Some(Ipv6Addr::LOCALHOST));
        assert_eq!(cfg.originate.len(), 1);
        assert!(value(&text)["neighbor"][0]["password"].as_str() == Some("s\"e\\cret"));
    }

    #[test]
    fn gobgp_config_has_gobgps_names() {
        let text = gobgp_config(&spec()).unwrap_or_else(|e| panic!("{e}"));
        let v = value(&text);
        assert_eq!(v["global"]["config"]["as"].as_integer(), Some(64512));
        assert_eq!(
            v["global"]["config"]["router-id"].as_str(),
            Some("10.0.0.1")
        );
        assert_eq!(v["global"]["config"]["port"].as_integer(), Some(179));
        let n = &v["neighbors"][0];
        assert_eq!(n["config"]["neighbor-address"].as_str(), Some("10.0.0.2"));
        assert_eq!(n["config"]["auth-password"].as_str(), Some("s\"e\\cret"));
        assert_eq!(
            n["transport"]["config"]["remote-port"].as_integer(),
            Some(1179)
        );
        assert_eq!(
            n["route-reflector"]["config"]["route-reflector-cluster-id"].as_str(),
            Some("10.0.0.1")
        );
        assert_eq!(
            n["timers"]["config"]["keepalive-interval"].as_integer(),
            Some(30)
        );
        assert_eq!(
            n["afi-safis"][1]["config"]["afi-safi-name"].as_str(),
            Some("ipv6-unicast")
        );
        assert_eq!(
            n["afi-safis"][1]["mp-graceful-restart"]["config"]["enabled"].as_bool(),
            Some(true)
        );
        let n = &v["neighbors"][1];
        assert!(n.get("route-reflector").is_none());
        assert!(n["transport"]["config"].get("remote-port").is_none());

        let mut silent = spec();
        silent.listen_port = 0;
        let v = value(&gobgp_config(&silent).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(v["global"]["config"]["port"].as_integer(), Some(-1));
    }
}
