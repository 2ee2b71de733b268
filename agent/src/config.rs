//! The agent's configuration from the environment, with calico-node's variable names
//! (the README's configuration table) plus tortie's own `TORTIE_*` settings.
//!
//! [`Config::from_vars`] is pure: it takes the variables as a map and the hostname as a
//! closure, so every rule is unit-tested. Each bad value is an error naming the variable,
//! its value and why; the agent refuses to start on any of them.
//!
//! As in calico-node, a variable set to the empty string counts as unset (manifests often
//! carry `value: ""`).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::autodetect::Method;
use crate::policy::apply::BackendSetting;

/// `CALICO_IPV4POOL_VXLAN` / an IPPool's `vxlanMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VxlanMode {
    Never,
    Always,
    CrossSubnet,
}

impl VxlanMode {
    /// The spelling IPPool resources use.
    pub fn as_str(self) -> &'static str {
        match self {
            VxlanMode::Never => "Never",
            VxlanMode::Always => "Always",
            VxlanMode::CrossSubnet => "CrossSubnet",
        }
    }
}

/// `CALICO_NETWORKING_BACKEND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// BGP (`bird`, or its alias `bgp`): Calico's default.
    Bgp,
    /// VXLAN only, no BGP speaker.
    Vxlan,
    /// No networking of our own: IPAM and policy only.
    None,
}

/// `IP`: how the node's IPv4 address is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIp {
    /// `autodetect` (the default): by `IP_AUTODETECTION_METHOD`.
    Autodetect,
    /// `none`: the node has no IPv4 BGP address.
    None,
    /// An explicit address. Without a prefix length, the prefix comes from the local
    /// interface holding it (as Calico does), else /32.
    Fixed { addr: Ipv4Addr, prefix: Option<u8> },
}

/// The default IPv4 pool the agent creates when no pool exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Pool {
    pub cidr: Ipv4Net,
    pub block_size: u8,
    pub vxlan: VxlanMode,
    pub nat_outgoing: bool,
}

/// The default IPv6 pool, when dual stack is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Pool {
    pub cidr: Ipv6Net,
    pub block_size: u8,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub ipv4_pool: Ipv4Pool,
    pub ipv6_pool: Option<Ipv6Pool>,
    pub backend: Backend,
    pub ip: NodeIp,
    pub autodetection: Method,
    /// `AS`: this node's own AS number. `None` (unset) is not 64512: the node then takes
    /// BGPConfiguration `default`'s `asNumber`, else [`DEFAULT_AS_NUMBER`], as in Calico.
    pub as_number: Option<u32>,
    pub node_name: String,
    pub agent_socket: PathBuf,
    /// The MTU pods get; `None`: the uplink's MTU, minus 50 when VXLAN is on.
    pub mtu: Option<u32>,
    pub ipam_gc_grace: Duration,
    /// Most blocks one node may hold affine; `None` means no limit (Calico's 0).
    pub max_blocks_per_node: Option<u32>,
    /// `FELIX_IPTABLESBACKEND`: the iptables the policy and NAT rules go into.
    pub iptables_backend: BackendSetting,
    /// Where Prometheus scrapes the agent (`FELIX_PROMETHEUSMETRICSENABLED`, `..._HOST`,
    /// `..._PORT`, with Felix's defaults: off, every address, port 9091).
    pub metrics: Option<SocketAddr>,
    /// `CALICO_*` and `FELIX_*` variables that were set but that tortie does not read, sorted:
    /// the agent warns about each, so a user migrating from Calico sees what is ignored.
    pub ignored_variables: Vec<String>,
}

/// The `CALICO_*` and `FELIX_*` variables tortie reads; any other one set is reported.
pub const READ_VARIABLES: &[&str] = &[
    "CALICO_IPV4POOL_CIDR",
    "CALICO_IPV4POOL_BLOCK_SIZE",
    "CALICO_IPV4POOL_VXLAN",
    "CALICO_IPV4POOL_IPIP",
    "CALICO_IPV4POOL_NAT_OUTGOING",
    "CALICO_IPV6POOL_CIDR",
    "CALICO_IPV6POOL_BLOCK_SIZE",
    "CALICO_NETWORKING_BACKEND",
    "FELIX_IPTABLESBACKEND",
    "FELIX_PROMETHEUSMETRICSENABLED",
    "FELIX_PROMETHEUSMETRICSHOST",
    "FELIX_PROMETHEUSMETRICSPORT",
];

/// One bad variable: its name, its value and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {why}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub why: String,
}

/// The largest path a unix socket address can hold (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

struct Vars<'a> {
    map: &'a HashMap<String, String>,
}

impl Vars<'_> {
    /// The value, trimmed; empty counts as unset.
    fn get(&self, var: &str) -> Option<&str> {
        self.map
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn err(&self, var: &'static str, why: impl fmt::Display) -> ConfigError {
        ConfigError {
            var,
            value: self.map.get(var).cloned().unwrap_or_default(),
            why: why.to_string(),
        }
    }

    /// Parses `var` with `parse` when set, else returns `default`.
    fn parse<T>(
        &self,
        var: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => parse(v).map_err(|why| self.err(var, why)),
        }
    }
}

impl Config {
    /// Reads the process environment. `hostname` is consulted only when NODENAME is unset.
    pub fn from_env() -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::from_vars(&vars, || {
            nix::unistd::gethostname()
                .map_err(|e| e.to_string())
                .and_then(|h| {
                    h.into_string()
                        .map_err(|_| "hostname is not UTF-8".to_owned())
                })
        })
    }

    /// The pure parser: `vars` is the environment, `hostname` the fallback for NODENAME.
    pub fn from_vars(
        vars: &HashMap<String, String>,
        hostname: impl FnOnce() -> Result<String, String>,
    ) -> Result<Config, ConfigError> {
        let v = Vars { map: vars };

        // DATASTORE_TYPE first: with another datastore nothing else means what the user thinks.
        v.parse("DATASTORE_TYPE", (), |s| match s {
            "kubernetes" => Ok(()),
            "etcdv3" => Err("etcdv3 is not supported; tortie keeps its state in the Kubernetes API (use kubernetes)".to_owned()),
            _ => Err("unknown datastore; the only one is kubernetes".to_owned()),
        })?;

        let cidr = v.parse(
            "CALICO_IPV4POOL_CIDR",
            Ipv4Net::new(Ipv4Addr::new(192, 168, 0, 0), 16).unwrap_or_default(),
            parse_v4_pool,
        )?;
        let block_size = v.parse("CALICO_IPV4POOL_BLOCK_SIZE", 26u8, |s| {
            parse_block_size(s, 20, 32)
        })?;
        if block_size < cidr.prefix_len() {
            return Err(v.err(
                "CALICO_IPV4POOL_BLOCK_SIZE",
                format!("a /{block_size} block is larger than the pool {cidr}; use a block size between {} and 32", cidr.prefix_len().max(20)),
            ));
        }
        let vxlan = v.parse("CALICO_IPV4POOL_VXLAN", VxlanMode::Never, |s| {
            match s.to_ascii_lowercase().as_str() {
                "never" => Ok(VxlanMode::Never),
                "always" => Ok(VxlanMode::Always),
                "crosssubnet" => Ok(VxlanMode::CrossSubnet),
                _ => Err("must be Never, Always or CrossSubnet".to_owned()),
            }
        })?;
        let nat_outgoing = v.parse("CALICO_IPV4POOL_NAT_OUTGOING", true, parse_bool)?;

        let ipv6_pool = match v.get("CALICO_IPV6POOL_CIDR") {
            None => None,
            Some(s) => {
                let cidr = parse_v6_pool(s).map_err(|why| v.err("CALICO_IPV6POOL_CIDR", why))?;
                let block_size = v.parse("CALICO_IPV6POOL_BLOCK_SIZE", 122u8, |s| {
                    parse_block_size(s, 116, 128)
                })?;
                if block_size < cidr.prefix_len() {
                    return Err(v.err(
                        "CALICO_IPV6POOL_BLOCK_SIZE",
                        format!("a /{block_size} block is larger than the pool {cidr}"),
                    ));
                }
                Some(Ipv6Pool { cidr, block_size })
            }
        };

        let backend = v.parse("CALICO_NETWORKING_BACKEND", Backend::Bgp, |s| match s {
            "bird" | "bgp" => Ok(Backend::Bgp),
            "vxlan" => Ok(Backend::Vxlan),
            "none" => Ok(Backend::None),
            _ => Err("must be bird (or bgp), vxlan or none".to_owned()),
        })?;
        if backend == Backend::Vxlan
            && vxlan == VxlanMode::Never
            && v.get("CALICO_IPV4POOL_VXLAN").is_some()
        {
            return Err(v.err("CALICO_IPV4POOL_VXLAN", "the vxlan backend has no BGP to route a pool with vxlanMode Never; use Always or CrossSubnet"));
        }
        // Calico's vxlan backend makes the default pool VXLAN when the user did not say.
        let vxlan = if backend == Backend::Vxlan && v.get("CALICO_IPV4POOL_VXLAN").is_none() {
            VxlanMode::Always
        } else {
            vxlan
        };

        let ip = v.parse("IP", NodeIp::Autodetect, parse_node_ip)?;
        let autodetection =
            v.parse("IP_AUTODETECTION_METHOD", Method::FirstFound, Method::parse)?;
        let as_number = v.parse("AS", None, |s| parse_as(s).map(Some))?;

        let node_name = match v.get("NODENAME") {
            Some(s) => {
                check_node_name(s).map_err(|why| v.err("NODENAME", why))?;
                s.to_owned()
            }
            None => {
                // Calico lowercases the hostname: Node names are lowercase DNS names.
                let h = hostname().map_err(|why| ConfigError {
                    var: "NODENAME",
                    value: String::new(),
                    why: format!("unset, and the hostname cannot be read: {why}"),
                })?;
                let h = h.trim().to_ascii_lowercase();
                check_node_name(&h).map_err(|why| ConfigError {
                    var: "NODENAME",
                    value: String::new(),
                    why: format!("unset, and the hostname {h:?} is not a valid node name: {why}"),
                })?;
                h
            }
        };

        let agent_socket = v.parse("TORTIE_AGENT_SOCKET", PathBuf::from(tortie_api::DEFAULT_AGENT_SOCKET), |s| {
            let p = parse_abs_path(s)?;
            if s.len() > MAX_SOCKET_PATH {
                return Err(format!("the path is {} bytes; a unix socket path must be at most {MAX_SOCKET_PATH}", s.len()));
            }
            Ok(p)
        })?;

        let min_mtu = if ipv6_pool.is_some() { 1280 } else { 576 };
        let mtu = v.parse("TORTIE_MTU", None, |s| {
            let n: u32 = s.parse().map_err(|_| "not a whole number".to_owned())?;
            if !(min_mtu..=65535).contains(&n) {
                let why = if ipv6_pool.is_some() {
                    " (IPv6 needs at least 1280)"
                } else {
                    ""
                };
                return Err(format!("must be between {min_mtu} and 65535{why}"));
            }
            Ok(Some(n))
        })?;
        let ipam_gc_grace = v.parse(
            "TORTIE_IPAM_GC_GRACE",
            Duration::from_secs(15 * 60),
            parse_duration,
        )?;
        let max_blocks_per_node = v.parse("TORTIE_MAX_BLOCKS_PER_NODE", Some(20), |s| {
            let n: u32 = s
                .parse()
                .map_err(|_| "not a whole number (0 means no limit)".to_owned())?;
            Ok((n != 0).then_some(n))
        })?;

        // Calico's default manifests set IP-in-IP; tortie routes without a tunnel and has no
        // IP-in-IP, so anything but Never would be a setting silently not carried out.
        v.parse("CALICO_IPV4POOL_IPIP", (), |s| match s.to_ascii_lowercase().as_str() {
            "never" => Ok(()),
            "always" | "crosssubnet" => Err(
                "tortie has no IP-in-IP encapsulation: pods are routed over BGP without a tunnel (use Never, or leave it unset)"
                    .to_owned(),
            ),
            _ => Err("must be Never, Always or CrossSubnet".to_owned()),
        })?;
        let mut ignored_variables: Vec<String> = vars
            .keys()
            .filter(|k| k.starts_with("CALICO_") || k.starts_with("FELIX_"))
            .filter(|k| !READ_VARIABLES.contains(&k.as_str()))
            .cloned()
            .collect();
        ignored_variables.sort();

        let iptables_backend = v.parse("FELIX_IPTABLESBACKEND", BackendSetting::Auto, |s| {
            s.parse().map_err(|_| {
                "must be Legacy, NFT or Auto (which picks the one the host uses)".to_owned()
            })
        })?;
        let metrics_enabled = v.parse("FELIX_PROMETHEUSMETRICSENABLED", false, parse_bool)?;
        let metrics_host = v.parse(
            "FELIX_PROMETHEUSMETRICSHOST",
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            |s| {
                s.parse()
                    .map_err(|_| "not an IP address (leave it unset for every address)".to_owned())
            },
        )?;
        let metrics_port = v.parse("FELIX_PROMETHEUSMETRICSPORT", 9091u16, |s| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| "must be a port number from 1 to 65535".to_owned())
        })?;
        let metrics = metrics_enabled.then(|| SocketAddr::new(metrics_host, metrics_port));

        Ok(Config {
            ipv4_pool: Ipv4Pool {
                cidr,
                block_size,
                vxlan,
                nat_outgoing,
            },
            ipv6_pool,
            backend,
            ip,
            autodetection,
            as_number,
            node_name,
            agent_socket,
            mtu,
            ipam_gc_grace,
            max_blocks_per_node,
            iptables_backend,
            metrics,
            ignored_variables,
        })
    }
}

impl Config {
    /// Refuses the settings this version parses but cannot carry out yet, so nobody believes
    /// a tunnel or a backend is there when it is not. The parser above already knows their
    /// meaning; each check goes once its feature works.
    pub fn refuse_unimplemented(&self) -> Result<(), ConfigError> {
        let not_yet = |var: &'static str, value: &str, why: &str| ConfigError {
            var,
            value: value.to_owned(),
            why: why.to_owned(),
        };
        match self.backend {
            Backend::Bgp => {}
            Backend::Vxlan => {
                return Err(not_yet(
                    "CALICO_NETWORKING_BACKEND",
                    "vxlan",
                    "the vxlan backend is not implemented yet: tortie routes pods over BGP only (use bird)",
                ));
            }
            Backend::None => {
                return Err(not_yet(
                    "CALICO_NETWORKING_BACKEND",
                    "none",
                    "the policy-only mode is not implemented yet: tortie always runs its BGP mesh (use bird)",
                ));
            }
        }
        if self.ipv4_pool.vxlan != VxlanMode::Never {
            return Err(not_yet(
                "CALICO_IPV4POOL_VXLAN",
                self.ipv4_pool.vxlan.as_str(),
                "VXLAN is not implemented yet: pods are routed over BGP without a tunnel (use Never)",
            ));
        }
        Ok(())
    }

    /// Settings that work only in part, each with what is missing; the agent logs them.
    pub fn partial_support(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.ipv6_pool {
            out.push(format!(
                "CALICO_IPV6POOL_CIDR={}: pods get IPv6 addresses and host routes on their own node, but the BGP mesh does not carry IPv6 yet, so IPv6 pod traffic between nodes is not routed",
                p.cidr
            ));
        }
        out
    }
}

/// `a.b.c.d/len` with no host bits set.
fn parse_v4_pool(s: &str) -> Result<Ipv4Net, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or("not a CIDR: the prefix length is missing (e.g. 10.244.0.0/16)")?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix length {len:?} is not a number"))?;
    if len > 32 {
        return Err(format!("prefix length {len} is larger than 32"));
    }
    let net = Ipv4Net::new(addr, len).map_err(|e| e.to_string())?;
    if net.network() != addr {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    if len > 30 {
        return Err(format!(
            "a /{len} pool is too small to hold pods; use a prefix length of at most 30"
        ));
    }
    Ok(net)
}

fn parse_v6_pool(s: &str) -> Result<Ipv6Net, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or("not a CIDR: the prefix length is missing (e.g. fd00:10:244::/64)")?;
    let addr: std::net::Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("prefix length {len:?} is not a number"))?;
    if len > 128 {
        return Err(format!("prefix length {len} is larger than 128"));
    }
    let net = Ipv6Net::new(addr, len).map_err(|e| e.to_string())?;
    if net.network() != addr {
        return Err(format!("host bits are set; did you mean {}?", net.trunc()));
    }
    if len > 126 {
        return Err(format!(
            "a /{len} pool is too small to hold pods; use a prefix length of at most 126"
        ));
    }
    Ok(net)
}

/// Calico's limits: IPv4 blocks /20 to /32, IPv6 /116 to /128.
fn parse_block_size(s: &str, min: u8, max: u8) -> Result<u8, String> {
    let n: u8 = s.parse().map_err(|_| "not a whole number".to_owned())?;
    if n > max {
        return Err(format!("block size {n} is larger than {max}"));
    }
    if n < min {
        return Err(format!(
            "block size {n} is smaller than {min}; use {min} to {max}"
        ));
    }
    Ok(n)
}

/// Go's strconv.ParseBool, which calico-node uses.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("must be true or false".to_owned()),
    }
}

fn parse_node_ip(s: &str) -> Result<NodeIp, String> {
    match s {
        "autodetect" => return Ok(NodeIp::Autodetect),
        "none" => return Ok(NodeIp::None),
        _ => {}
    }
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => {
            let p: u8 = p
                .parse()
                .map_err(|_| format!("prefix length {p:?} is not a number"))?;
            if p > 32 {
                return Err(format!("prefix length {p} is larger than 32"));
            }
            (a, Some(p))
        }
        None => (s, None),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("must be autodetect, none, or an IPv4 address (optionally with /prefix); {addr:?} is not an IPv4 address"))?;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!("{addr} cannot be a node address"));
    }
    Ok(NodeIp::Fixed { addr, prefix })
}

/// The AS of a node when neither its `AS` nor BGPConfiguration `default` sets one
/// (Calico's default).
pub const DEFAULT_AS_NUMBER: u32 = 64512;

/// A plain AS number, or asdot (`1.10` = 1·65536 + 10), as Calico accepts. AS 0 is reserved
/// (RFC 7607).
fn parse_as(s: &str) -> Result<u32, String> {
    let n = match s.split_once('.') {
        Some((hi, lo)) => {
            let hi: u16 = hi
                .parse()
                .map_err(|_| "asdot notation needs two numbers of 0 to 65535".to_owned())?;
            let lo: u16 = lo
                .parse()
                .map_err(|_| "asdot notation needs two numbers of 0 to 65535".to_owned())?;
            (u32::from(hi) << 16) | u32::from(lo)
        }
        None => s
            .parse::<u32>()
            .map_err(|_| "not an AS number (1 to 4294967295, or asdot like 1.10)".to_owned())?,
    };
    if n == 0 {
        return Err("AS 0 is reserved (RFC 7607)".to_owned());
    }
    Ok(n)
}

/// A Kubernetes object name (DNS-1123 subdomain), which a Node's name must be.
fn check_node_name(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!(
            "is {} characters; a node name has at most 253",
            s.len()
        ));
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("a node name is lowercase letters, digits, '-' and '.', and starts and ends with a letter or digit".to_owned());
        }
    }
    Ok(())
}

fn parse_abs_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err("must be an absolute path".to_owned());
    }
    Ok(p)
}

/// Go-style durations, which Calico users know: `90s`, `15m`, `1h30m`, `500ms`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || "not a duration; write it like 90s, 15m or 1h30m".to_owned();
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{} (a unit is required)", bad()));
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(&vars, || Ok("Node-A".to_owned()))
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        parse(pairs).unwrap_err().to_string()
    }

    #[test]
    fn metrics_follow_felix_names_and_defaults() {
        assert_eq!(parse(&[]).unwrap().metrics, None);
        assert_eq!(
            parse(&[("FELIX_PROMETHEUSMETRICSENABLED", "true")])
                .unwrap()
                .metrics,
            Some("0.0.0.0:9091".parse().unwrap())
        );
        assert_eq!(
            parse(&[
                ("FELIX_PROMETHEUSMETRICSENABLED", "true"),
                ("FELIX_PROMETHEUSMETRICSHOST", "10.0.0.5"),
                ("FELIX_PROMETHEUSMETRICSPORT", "9191"),
            ])
            .unwrap()
            .metrics,
            Some("10.0.0.5:9191".parse().unwrap())
        );
        assert_eq!(
            err(&[("FELIX_PROMETHEUSMETRICSPORT", "0")]),
            r#"FELIX_PROMETHEUSMETRICSPORT="0": must be a port number from 1 to 65535"#
        );
        assert_eq!(
            err(&[("FELIX_PROMETHEUSMETRICSHOST", "node-a")]),
            r#"FELIX_PROMETHEUSMETRICSHOST="node-a": not an IP address (leave it unset for every address)"#
        );
        assert_eq!(
            err(&[("FELIX_PROMETHEUSMETRICSENABLED", "on")]),
            r#"FELIX_PROMETHEUSMETRICSENABLED="on": must be true or false"#
        );
    }

    #[test]
    fn calico_and_felix_variables_tortie_does_not_read_are_listed() {
        let c = parse(&[
            ("FELIX_HEALTHENABLED", "true"),
            ("CALICO_DISABLE_FILE_LOGGING", "true"),
            ("CALICO_IPV4POOL_CIDR", "10.244.0.0/16"),
            ("FELIX_IPTABLESBACKEND", "NFT"),
            ("CLUSTER_TYPE", "k8s,bgp"),
        ])
        .unwrap();
        assert_eq!(
            c.ignored_variables,
            ["CALICO_DISABLE_FILE_LOGGING", "FELIX_HEALTHENABLED"]
        );
        assert!(parse(&[]).unwrap().ignored_variables.is_empty());
    }

    #[test]
    fn ip_in_ip_is_refused_unless_never() {
        assert!(parse(&[("CALICO_IPV4POOL_IPIP", "Never")]).is_ok());
        assert_eq!(
            err(&[("CALICO_IPV4POOL_IPIP", "Always")]),
            r#"CALICO_IPV4POOL_IPIP="Always": tortie has no IP-in-IP encapsulation: pods are routed over BGP without a tunnel (use Never, or leave it unset)"#
        );
        assert!(err(&[("CALICO_IPV4POOL_IPIP", "Sometimes")]).contains("must be Never"));
    }

    #[test]
    fn settings_not_implemented_yet_are_refused_by_name() {
        assert!(parse(&[]).unwrap().refuse_unimplemented().is_ok());
        let refused = |pairs: &[(&str, &str)]| {
            parse(pairs)
                .unwrap()
                .refuse_unimplemented()
                .unwrap_err()
                .to_string()
        };
        assert!(
            refused(&[("CALICO_NETWORKING_BACKEND", "vxlan")]).starts_with(
                r#"CALICO_NETWORKING_BACKEND="vxlan": the vxlan backend is not implemented yet"#
            )
        );
        assert!(
            refused(&[("CALICO_NETWORKING_BACKEND", "none")])
                .starts_with(r#"CALICO_NETWORKING_BACKEND="none": the policy-only mode"#)
        );
        assert!(
            refused(&[("CALICO_IPV4POOL_VXLAN", "CrossSubnet")]).starts_with(
                r#"CALICO_IPV4POOL_VXLAN="CrossSubnet": VXLAN is not implemented yet"#
            )
        );
        let v6 = parse(&[("CALICO_IPV6POOL_CIDR", "fd00:10::/64")]).unwrap();
        assert!(v6.refuse_unimplemented().is_ok());
        assert!(
            v6.partial_support()[0].starts_with("CALICO_IPV6POOL_CIDR=fd00:10::/64: pods get IPv6")
        );
        assert!(parse(&[]).unwrap().partial_support().is_empty());
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.ipv4_pool,
            Ipv4Pool {
                cidr: "192.168.0.0/16".parse().unwrap(),
                block_size: 26,
                vxlan: VxlanMode::Never,
                nat_outgoing: true
            }
        );
        assert_eq!(c.ipv6_pool, None);
        assert_eq!(c.backend, Backend::Bgp);
        assert_eq!(c.ip, NodeIp::Autodetect);
        assert!(matches!(c.autodetection, Method::FirstFound));
        assert_eq!(c.as_number, None, "unset, not 64512");
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.agent_socket, PathBuf::from("/var/run/tortie/agent.sock"));
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam_gc_grace, Duration::from_secs(900));
        assert_eq!(c.max_blocks_per_node, Some(20));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = parse(&[("CALICO_IPV4POOL_CIDR", ""), ("AS", "  "), ("NODENAME", "")]).unwrap();
        assert_eq!(
            c.ipv4_pool.cidr,
            "192.168.0.0/16".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(c.as_number, None, "unset, not 64512");
        assert_eq!(c.node_name, "node-a");
    }

    #[test]
    fn ipv4_pool_cidr() {
        let c = parse(&[("CALICO_IPV4POOL_CIDR", "10.244.0.0/16")]).unwrap();
        assert_eq!(
            c.ipv4_pool.cidr,
            "10.244.0.0/16".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_CIDR", "10.244.0.0/33")]),
            r#"CALICO_IPV4POOL_CIDR="10.244.0.0/33": prefix length 33 is larger than 32"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_CIDR", "10.244.0.0")]),
            r#"CALICO_IPV4POOL_CIDR="10.244.0.0": not a CIDR: the prefix length is missing (e.g. 10.244.0.0/16)"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_CIDR", "10.244.1.0/16")]),
            r#"CALICO_IPV4POOL_CIDR="10.244.1.0/16": host bits are set; did you mean 10.244.0.0/16?"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_CIDR", "10.300.0.0/16")]),
            r#"CALICO_IPV4POOL_CIDR="10.300.0.0/16": "10.300.0.0" is not an IPv4 address"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_CIDR", "fd00::/64")]),
            r#"CALICO_IPV4POOL_CIDR="fd00::/64": "fd00::" is not an IPv4 address"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_CIDR", "10.0.0.0/x")]),
            r#"CALICO_IPV4POOL_CIDR="10.0.0.0/x": prefix length "x" is not a number"#
        );
        assert_eq!(
            err(&[
                ("CALICO_IPV4POOL_CIDR", "10.0.0.0/31"),
                ("CALICO_IPV4POOL_BLOCK_SIZE", "32")
            ]),
            r#"CALICO_IPV4POOL_CIDR="10.0.0.0/31": a /31 pool is too small to hold pods; use a prefix length of at most 30"#
        );
    }

    #[test]
    fn ipv4_block_size() {
        let c = parse(&[
            ("CALICO_IPV4POOL_CIDR", "10.0.0.0/24"),
            ("CALICO_IPV4POOL_BLOCK_SIZE", "28"),
        ])
        .unwrap();
        assert_eq!(c.ipv4_pool.block_size, 28);
        assert_eq!(
            err(&[("CALICO_IPV4POOL_BLOCK_SIZE", "33")]),
            r#"CALICO_IPV4POOL_BLOCK_SIZE="33": block size 33 is larger than 32"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_BLOCK_SIZE", "19")]),
            r#"CALICO_IPV4POOL_BLOCK_SIZE="19": block size 19 is smaller than 20; use 20 to 32"#
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_BLOCK_SIZE", "big")]),
            r#"CALICO_IPV4POOL_BLOCK_SIZE="big": not a whole number"#
        );
        assert_eq!(
            err(&[
                ("CALICO_IPV4POOL_CIDR", "10.0.0.0/24"),
                ("CALICO_IPV4POOL_BLOCK_SIZE", "22")
            ]),
            r#"CALICO_IPV4POOL_BLOCK_SIZE="22": a /22 block is larger than the pool 10.0.0.0/24; use a block size between 24 and 32"#
        );
    }

    #[test]
    fn vxlan_mode() {
        assert_eq!(
            parse(&[("CALICO_IPV4POOL_VXLAN", "Always")])
                .unwrap()
                .ipv4_pool
                .vxlan,
            VxlanMode::Always
        );
        assert_eq!(
            parse(&[("CALICO_IPV4POOL_VXLAN", "crosssubnet")])
                .unwrap()
                .ipv4_pool
                .vxlan,
            VxlanMode::CrossSubnet
        );
        assert_eq!(
            parse(&[("CALICO_IPV4POOL_VXLAN", "Never")])
                .unwrap()
                .ipv4_pool
                .vxlan,
            VxlanMode::Never
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_VXLAN", "Sometimes")]),
            r#"CALICO_IPV4POOL_VXLAN="Sometimes": must be Never, Always or CrossSubnet"#
        );
    }

    #[test]
    fn nat_outgoing() {
        assert!(
            !parse(&[("CALICO_IPV4POOL_NAT_OUTGOING", "false")])
                .unwrap()
                .ipv4_pool
                .nat_outgoing
        );
        assert!(
            parse(&[("CALICO_IPV4POOL_NAT_OUTGOING", "1")])
                .unwrap()
                .ipv4_pool
                .nat_outgoing
        );
        assert_eq!(
            err(&[("CALICO_IPV4POOL_NAT_OUTGOING", "yes")]),
            r#"CALICO_IPV4POOL_NAT_OUTGOING="yes": must be true or false"#
        );
    }

    #[test]
    fn ipv6_pool() {
        let c = parse(&[("CALICO_IPV6POOL_CIDR", "fd00:10:244::/64")]).unwrap();
        assert_eq!(
            c.ipv6_pool,
            Some(Ipv6Pool {
                cidr: "fd00:10:244::/64".parse().unwrap(),
                block_size: 122
            })
        );
        let c = parse(&[
            ("CALICO_IPV6POOL_CIDR", "fd00::/112"),
            ("CALICO_IPV6POOL_BLOCK_SIZE", "120"),
        ])
        .unwrap();
        assert_eq!(c.ipv6_pool.unwrap().block_size, 120);
        assert_eq!(
            err(&[("CALICO_IPV6POOL_CIDR", "fd00::/129")]),
            r#"CALICO_IPV6POOL_CIDR="fd00::/129": prefix length 129 is larger than 128"#
        );
        assert_eq!(
            err(&[("CALICO_IPV6POOL_CIDR", "fd00::1/64")]),
            r#"CALICO_IPV6POOL_CIDR="fd00::1/64": host bits are set; did you mean fd00::/64?"#
        );
        assert_eq!(
            err(&[("CALICO_IPV6POOL_CIDR", "10.0.0.0/8")]),
            r#"CALICO_IPV6POOL_CIDR="10.0.0.0/8": "10.0.0.0" is not an IPv6 address"#
        );
        assert_eq!(
            err(&[
                ("CALICO_IPV6POOL_CIDR", "fd00::/64"),
                ("CALICO_IPV6POOL_BLOCK_SIZE", "100")
            ]),
            r#"CALICO_IPV6POOL_BLOCK_SIZE="100": block size 100 is smaller than 116; use 116 to 128"#
        );
        assert_eq!(
            err(&[
                ("CALICO_IPV6POOL_CIDR", "fd00::/120"),
                ("CALICO_IPV6POOL_BLOCK_SIZE", "116")
            ]),
            r#"CALICO_IPV6POOL_BLOCK_SIZE="116": a /116 block is larger than the pool fd00::/120"#
        );
    }

    #[test]
    fn backend() {
        assert_eq!(
            parse(&[("CALICO_NETWORKING_BACKEND", "bird")])
                .unwrap()
                .backend,
            Backend::Bgp
        );
        assert_eq!(
            parse(&[("CALICO_NETWORKING_BACKEND", "bgp")])
                .unwrap()
                .backend,
            Backend::Bgp
        );
        assert_eq!(
            parse(&[("CALICO_NETWORKING_BACKEND", "none")])
                .unwrap()
                .backend,
            Backend::None
        );
        let c = parse(&[("CALICO_NETWORKING_BACKEND", "vxlan")]).unwrap();
        assert_eq!(
            (c.backend, c.ipv4_pool.vxlan),
            (Backend::Vxlan, VxlanMode::Always)
        );
        let c = parse(&[
            ("CALICO_NETWORKING_BACKEND", "vxlan"),
            ("CALICO_IPV4POOL_VXLAN", "CrossSubnet"),
        ])
        .unwrap();
        assert_eq!(c.ipv4_pool.vxlan, VxlanMode::CrossSubnet);
        assert_eq!(
            err(&[
                ("CALICO_NETWORKING_BACKEND", "vxlan"),
                ("CALICO_IPV4POOL_VXLAN", "Never")
            ]),
            r#"CALICO_IPV4POOL_VXLAN="Never": the vxlan backend has no BGP to route a pool with vxlanMode Never; use Always or CrossSubnet"#
        );
        assert_eq!(
            err(&[("CALICO_NETWORKING_BACKEND", "gobgp")]),
            r#"CALICO_NETWORKING_BACKEND="gobgp": must be bird (or bgp), vxlan or none"#
        );
    }

    #[test]
    fn node_ip() {
        assert_eq!(
            parse(&[("IP", "autodetect")]).unwrap().ip,
            NodeIp::Autodetect
        );
        assert_eq!(parse(&[("IP", "none")]).unwrap().ip, NodeIp::None);
        assert_eq!(
            parse(&[("IP", "10.0.0.5")]).unwrap().ip,
            NodeIp::Fixed {
                addr: Ipv4Addr::new(10, 0, 0, 5),
                prefix: None
            }
        );
        assert_eq!(
            parse(&[("IP", "10.0.0.5/24")]).unwrap().ip,
            NodeIp::Fixed {
                addr: Ipv4Addr::new(10, 0, 0, 5),
                prefix: Some(24)
            }
        );
        assert_eq!(
            err(&[("IP", "10.0.0.5/40")]),
            r#"IP="10.0.0.5/40": prefix length 40 is larger than 32"#
        );
        assert_eq!(
            err(&[("IP", "127.0.0.1")]),
            r#"IP="127.0.0.1": 127.0.0.1 cannot be a node address"#
        );
        assert_eq!(
            err(&[("IP", "auto")]),
            r#"IP="auto": must be autodetect, none, or an IPv4 address (optionally with /prefix); "auto" is not an IPv4 address"#
        );
    }

    #[test]
    fn autodetection_method() {
        let c = parse(&[("IP_AUTODETECTION_METHOD", "interface=eth0")]).unwrap();
        assert_eq!(c.autodetection.to_string(), "interface=^(?:eth0)$");
        assert!(matches!(
            parse(&[("IP_AUTODETECTION_METHOD", "can-reach=10.0.0.1")])
                .unwrap()
                .autodetection,
            Method::CanReach(_)
        ));
        assert!(matches!(
            parse(&[("IP_AUTODETECTION_METHOD", "kubernetes-internal-ip")])
                .unwrap()
                .autodetection,
            Method::KubernetesInternalIp
        ));
        assert_eq!(
            err(&[("IP_AUTODETECTION_METHOD", "can-reach=nowhere")]),
            r#"IP_AUTODETECTION_METHOD="can-reach=nowhere": can-reach needs an IP address, and "nowhere" is not one"#
        );
    }

    #[test]
    fn as_number() {
        assert_eq!(parse(&[("AS", "65001")]).unwrap().as_number, Some(65001));
        assert_eq!(parse(&[("AS", "64512")]).unwrap().as_number, Some(64512));
        assert_eq!(
            parse(&[("AS", "4200000000")]).unwrap().as_number.unwrap(),
            4_200_000_000
        );
        assert_eq!(parse(&[("AS", "1.10")]).unwrap().as_number, Some(65546));
        assert_eq!(
            err(&[("AS", "0")]),
            r#"AS="0": AS 0 is reserved (RFC 7607)"#
        );
        assert_eq!(
            err(&[("AS", "4294967296")]),
            r#"AS="4294967296": not an AS number (1 to 4294967295, or asdot like 1.10)"#
        );
        assert_eq!(
            err(&[("AS", "1.70000")]),
            r#"AS="1.70000": asdot notation needs two numbers of 0 to 65535"#
        );
    }

    #[test]
    fn node_name() {
        assert_eq!(
            parse(&[("NODENAME", "node-2")]).unwrap().node_name,
            "node-2"
        );
        assert_eq!(
            parse(&[("NODENAME", "n1.example.com")]).unwrap().node_name,
            "n1.example.com"
        );
        assert_eq!(
            err(&[("NODENAME", "Node_2")]),
            r#"NODENAME="Node_2": a node name is lowercase letters, digits, '-' and '.', and starts and ends with a letter or digit"#
        );
        let vars = HashMap::new();
        let e = Config::from_vars(&vars, || Err("EPERM".to_owned())).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"NODENAME="": unset, and the hostname cannot be read: EPERM"#
        );
        let e = Config::from_vars(&vars, || Ok("bad_host".to_owned())).unwrap_err();
        assert!(e.to_string().starts_with(
            r#"NODENAME="": unset, and the hostname "bad_host" is not a valid node name"#
        ));
    }

    #[test]
    fn datastore_type() {
        assert!(parse(&[("DATASTORE_TYPE", "kubernetes")]).is_ok());
        assert_eq!(
            err(&[("DATASTORE_TYPE", "etcdv3")]),
            r#"DATASTORE_TYPE="etcdv3": etcdv3 is not supported; tortie keeps its state in the Kubernetes API (use kubernetes)"#
        );
        assert_eq!(
            err(&[("DATASTORE_TYPE", "consul")]),
            r#"DATASTORE_TYPE="consul": unknown datastore; the only one is kubernetes"#
        );
    }

    #[test]
    fn paths() {
        let c = parse(&[("TORTIE_AGENT_SOCKET", "/tmp/n1/agent.sock")]).unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/n1/agent.sock"));
        assert_eq!(
            err(&[("TORTIE_AGENT_SOCKET", "agent.sock")]),
            r#"TORTIE_AGENT_SOCKET="agent.sock": must be an absolute path"#
        );
        let long = format!("/{}", "x".repeat(120));
        assert_eq!(
            err(&[("TORTIE_AGENT_SOCKET", &long)]),
            format!(
                "TORTIE_AGENT_SOCKET={long:?}: the path is 121 bytes; a unix socket path must be at most 107"
            )
        );
    }

    #[test]
    fn mtu() {
        assert_eq!(parse(&[("TORTIE_MTU", "1450")]).unwrap().mtu, Some(1450));
        assert_eq!(
            err(&[("TORTIE_MTU", "15x")]),
            r#"TORTIE_MTU="15x": not a whole number"#
        );
        assert_eq!(
            err(&[("TORTIE_MTU", "100")]),
            r#"TORTIE_MTU="100": must be between 576 and 65535"#
        );
        assert_eq!(
            err(&[("TORTIE_MTU", "70000")]),
            r#"TORTIE_MTU="70000": must be between 576 and 65535"#
        );
        assert_eq!(
            err(&[
                ("TORTIE_MTU", "1000"),
                ("CALICO_IPV6POOL_CIDR", "fd00::/64")
            ]),
            r#"TORTIE_MTU="1000": must be between 1280 and 65535 (IPv6 needs at least 1280)"#
        );
    }

    #[test]
    fn gc_grace() {
        assert_eq!(
            parse(&[("TORTIE_IPAM_GC_GRACE", "30s")])
                .unwrap()
                .ipam_gc_grace,
            Duration::from_secs(30)
        );
        assert_eq!(
            parse(&[("TORTIE_IPAM_GC_GRACE", "1h30m")])
                .unwrap()
                .ipam_gc_grace,
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse(&[("TORTIE_IPAM_GC_GRACE", "250ms")])
                .unwrap()
                .ipam_gc_grace,
            Duration::from_millis(250)
        );
        assert_eq!(
            parse(&[("TORTIE_IPAM_GC_GRACE", "0s")])
                .unwrap()
                .ipam_gc_grace,
            Duration::ZERO
        );
        assert_eq!(
            err(&[("TORTIE_IPAM_GC_GRACE", "15")]),
            r#"TORTIE_IPAM_GC_GRACE="15": not a duration; write it like 90s, 15m or 1h30m (a unit is required)"#
        );
        for bad in ["15 m", "m", "15d", "-5m", "1h30"] {
            assert!(
                err(&[("TORTIE_IPAM_GC_GRACE", bad)])
                    .ends_with("not a duration; write it like 90s, 15m or 1h30m"),
                "{bad}"
            );
        }
    }

    #[test]
    fn max_blocks_per_node() {
        assert_eq!(
            parse(&[("TORTIE_MAX_BLOCKS_PER_NODE", "5")])
                .unwrap()
                .max_blocks_per_node,
            Some(5)
        );
        assert_eq!(
            parse(&[("TORTIE_MAX_BLOCKS_PER_NODE", "0")])
                .unwrap()
                .max_blocks_per_node,
            None
        );
        assert_eq!(
            err(&[("TORTIE_MAX_BLOCKS_PER_NODE", "-1")]),
            r#"TORTIE_MAX_BLOCKS_PER_NODE="-1": not a whole number (0 means no limit)"#
        );
    }
}
