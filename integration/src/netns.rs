//! Network namespaces for tests and the lab, driven through iproute2 with argument vectors
//! (never a shell string).
//!
//! A [`NetNs`] owns its namespace: dropping it kills every process left inside and deletes
//! the namespace, so a failing test still cleans up.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace made by this process, removed on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `<prefix>-<pid>-<n>`, unique across concurrent tests and
    /// processes. Its loopback is brought up.
    pub fn create(prefix: &str) -> io::Result<NetNs> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.run("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, as CNI_NETNS wants it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args…` inside the namespace; a non-zero exit is an error carrying stderr.
    /// Returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = run_checked(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// PIDs of the processes living in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        NetNs::pids_of(&self.name)
    }

    /// PIDs of the processes living in the named namespace (any, not only one we own).
    pub fn pids_of(name: &str) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth_pair(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> io::Result<()> {
    a.run(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    )?;
    a.run("ip", &["link", "set", a_if, "up"])?;
    b.run("ip", &["link", "set", b_if, "up"])?;
    Ok(())
}

/// Runs a command; a non-zero exit becomes an error with the command line and its stderr.
pub fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A bridged LAN for tests: `n` member namespaces, each with `eth0` on one bridge, member
/// `i` (from 1) holding `<v4_net>.i/24` and `<v6_net>i/64`. Everything is removed on drop.
#[derive(Debug)]
pub struct Lan {
    pub members: Vec<NetNs>,
    _bridge: NetNs,
}

impl Lan {
    /// `prefix` names the namespaces; `v4_net` is the first three octets ("10.98.0") and
    /// `v6_net` the /64 with its trailing colons ("fd98::").
    pub fn create(prefix: &str, n: u8, v4_net: &str, v6_net: &str) -> io::Result<Lan> {
        let bridge = NetNs::create(&format!("{prefix}-lan"))?;
        bridge.run("ip", &["link", "add", "br0", "type", "bridge"])?;
        bridge.run("ip", &["link", "set", "br0", "up"])?;
        let mut members = Vec::new();
        for i in 1..=n {
            let member = NetNs::create(&format!("{prefix}-m{i}"))?;
            // No IPv6 link-local addresses on the LAN. BIRD adds its link-local to an IPv6
            // next hop once the address exists, which races the session's start, and FRR's
            // bgpd without zebra cannot resolve one: it answered with a NOTIFICATION (Invalid
            // Network Field), so the BIRD-FRR session of a test came up or not by chance.
            member.run("sysctl", &["-qw", "net.ipv6.conf.default.addr_gen_mode=1"])?;
            let port = format!("p{i}");
            veth_pair(&member, "eth0", &bridge, &port)?;
            bridge.run("ip", &["link", "set", &port, "master", "br0"])?;
            address_eth0(&member, i, v4_net, v6_net)?;
            members.push(member);
        }
        Ok(Lan {
            members,
            _bridge: bridge,
        })
    }
}

/// Two namespaces on one veth link (`eth0` in each): the first at `{v4_net}.1/24` and
/// `{v6_net}1/64`, the second at `.2` and `2`. Field order of the tuple is drop order.
pub fn linked_pair(prefix: &str, v4_net: &str, v6_net: &str) -> io::Result<(NetNs, NetNs)> {
    let a = NetNs::create(&format!("{prefix}-a"))?;
    let b = NetNs::create(&format!("{prefix}-b"))?;
    veth_pair(&a, "eth0", &b, "eth0")?;
    address_eth0(&a, 1, v4_net, v6_net)?;
    address_eth0(&b, 2, v4_net, v6_net)?;
    Ok((a, b))
}

/// Host `i` of `{v4_net}.0/24` and `{v6_net}/64` on `eth0` (IPv6 without duplicate address
/// detection, so it is usable at once).
fn address_eth0(ns: &NetNs, i: u8, v4_net: &str, v6_net: &str) -> io::Result<()> {
    ns.run(
        "ip",
        &["addr", "add", &format!("{v4_net}.{i}/24"), "dev", "eth0"],
    )?;
    ns.run(
        "ip",
        &[
            "addr",
            "add",
            &format!("{v6_net}{i}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    Ok(())
}
