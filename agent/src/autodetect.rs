//! Node IP autodetection (`IP`, `IP_AUTODETECTION_METHOD`), as calico-node does it.
//!
//! The choice is a pure function over a list of interfaces ([`select`]); the only I/O is
//! reading that list ([`local_interfaces`]) and, for `can-reach=`, asking the kernel which
//! source address it would use ([`route_source`]).
//!
//! Differences from Calico, on purpose:
//! - `interface=` and `skip-interface=` regexes match the *whole* interface name, so
//!   `interface=eth0` never picks `veth0` (Go's unanchored `MatchString` would).
//! - Interfaces that are down are never picked: an address there reaches nobody.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;

/// Interfaces no method except `interface=` and `can-reach=` ever picks: loopback,
/// container bridges, and the veths and tunnels of pod networks (ours and others').
const EXCLUDED_PREFIXES: &[&str] = &[
    "lo",
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "tort",
    "vxlan.tortie",
    "cali",
    "tunl",
    "flannel",
    "cni",
    "kube-ipvs",
    "nodelocaldns",
];

/// How to find the node's IPv4 address (`IP_AUTODETECTION_METHOD`).
#[derive(Debug, Clone)]
pub enum Method {
    /// The first global address on the first usable interface.
    FirstFound,
    /// The first address on an interface whose name matches one of the regexes.
    Interface(Vec<Regex>),
    /// As `FirstFound`, skipping interfaces whose name matches one of the regexes.
    SkipInterface(Vec<Regex>),
    /// The address the kernel would use as source toward this destination.
    CanReach(IpAddr),
    /// The first address inside one of these networks.
    Cidr(Vec<IpNet>),
    /// The node's `InternalIP` from its Kubernetes Node object.
    KubernetesInternalIp,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |res: &[Regex]| {
            res.iter()
                .map(|r| r.as_str().to_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Method::FirstFound => write!(f, "first-found"),
            Method::Interface(res) => write!(f, "interface={}", join(res)),
            Method::SkipInterface(res) => write!(f, "skip-interface={}", join(res)),
            Method::CanReach(addr) => write!(f, "can-reach={addr}"),
            Method::Cidr(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "cidr={}", nets.join(","))
            }
            Method::KubernetesInternalIp => write!(f, "kubernetes-internal-ip"),
        }
    }
}

impl Method {
    /// Parses an `IP_AUTODETECTION_METHOD` value. The error says what is wrong with it,
    /// without the variable name (the caller adds it).
    pub fn parse(value: &str) -> Result<Method, String> {
        let value = value.trim();
        match value {
            "" | "first-found" => return Ok(Method::FirstFound),
            "kubernetes-internal-ip" => return Ok(Method::KubernetesInternalIp),
            _ => {}
        }
        let Some((kind, arg)) = value.split_once('=') else {
            return Err(
                "unknown method; use first-found, interface=REGEX, skip-interface=REGEX, \
                 can-reach=ADDR, cidr=CIDR[,CIDR] or kubernetes-internal-ip"
                    .to_owned(),
            );
        };
        match kind {
            "interface" => Ok(Method::Interface(parse_regexes(arg)?)),
            "skip-interface" => Ok(Method::SkipInterface(parse_regexes(arg)?)),
            "can-reach" => {
                let arg = arg.trim();
                arg.parse::<IpAddr>()
                    .map(Method::CanReach)
                    .map_err(|_| format!("can-reach needs an IP address, and {arg:?} is not one"))
            }
            "cidr" => {
                let nets = arg
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<IpNet>()
                            .map_err(|_| format!("{s:?} is not a CIDR"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if nets.is_empty() {
                    return Err("cidr= needs at least one CIDR".to_owned());
                }
                Ok(Method::Cidr(nets))
            }
            other => Err(format!(
                "unknown method {other:?}; use first-found, interface=REGEX, skip-interface=REGEX, \
                 can-reach=ADDR, cidr=CIDR[,CIDR] or kubernetes-internal-ip"
            )),
        }
    }
}

/// A comma-separated list of regexes, each anchored to match a whole interface name.
fn parse_regexes(arg: &str) -> Result<Vec<Regex>, String> {
    let res = arg
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Regex::new(&format!("^(?:{s})$")).map_err(|e| format!("bad regex {s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if res.is_empty() {
        return Err("needs at least one interface regex".to_owned());
    }
    Ok(res)
}

/// One local interface and its addresses, in kernel order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    pub addrs: Vec<IpNet>,
}

/// The node address that was picked, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// Address with the prefix length of its subnet, as `tortie.dev/ipv4-address` carries it.
    pub addr: Ipv4Net,
    /// The interface holding it; `None` when the address is on no local interface (only
    /// possible with `kubernetes-internal-ip`).
    pub ifname: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error(
        "IP_AUTODETECTION_METHOD={method}: no usable IPv4 address found (interfaces seen: {seen})"
    )]
    NotFound { method: String, seen: String },
    #[error(
        "IP_AUTODETECTION_METHOD=kubernetes-internal-ip: the Node object has no IPv4 InternalIP address"
    )]
    NoInternalIp,
    #[error("IP_AUTODETECTION_METHOD=can-reach={dest}: {reason}")]
    Unreachable { dest: IpAddr, reason: String },
    #[error(
        "IP_AUTODETECTION_METHOD=can-reach: only IPv4 destinations are supported for the IPv4 address, got {0}"
    )]
    NotIpv4(IpAddr),
    #[error("reading local interfaces: {0}")]
    Interfaces(String),
}

fn excluded(name: &str) -> bool {
    EXCLUDED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Addresses a node could be reached at: not loopback, not link-local, not unspecified.
fn usable_v4(net: &IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => {
            let a = n.addr();
            (!a.is_loopback() && !a.is_link_local() && !a.is_unspecified() && !a.is_multicast())
                .then_some(*n)
        }
        IpNet::V6(_) => None,
    }
}

/// The first usable address on the first interface that `pick` accepts.
fn first_on(ifaces: &[Interface], pick: impl Fn(&Interface) -> bool) -> Option<Detected> {
    ifaces.iter().filter(|i| i.up && pick(i)).find_map(|i| {
        i.addrs.iter().find_map(usable_v4).map(|addr| Detected {
            addr,
            ifname: Some(i.name.clone()),
        })
    })
}

/// Finds `addr` among the interfaces, to learn its prefix length and interface.
pub fn locate(ifaces: &[Interface], addr: Ipv4Addr) -> Option<Detected> {
    ifaces.iter().find_map(|i| {
        i.addrs.iter().find_map(|n| match n {
            IpNet::V4(n) if n.addr() == addr => Some(Detected {
                addr: *n,
                ifname: Some(i.name.clone()),
            }),
            _ => None,
        })
    })
}

/// The inputs a method may need beyond the interface list, gathered by the caller.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// For `can-reach=`: the source address the kernel chose toward the destination.
    pub route_source: Option<Result<IpAddr, String>>,
    /// For `kubernetes-internal-ip`: the Node's `status.addresses` of type InternalIP.
    pub internal_ips: Vec<String>,
}

/// Picks the node's IPv4 address. Pure: every input is an argument.
pub fn select(
    method: &Method,
    ifaces: &[Interface],
    facts: &Facts,
) -> Result<Detected, DetectError> {
    let not_found = || DetectError::NotFound {
        method: method.to_string(),
        seen: if ifaces.is_empty() {
            "none".to_owned()
        } else {
            ifaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    match method {
        Method::FirstFound => first_on(ifaces, |i| !excluded(&i.name)).ok_or_else(not_found),
        Method::Interface(res) => {
            first_on(ifaces, |i| res.iter().any(|r| r.is_match(&i.name))).ok_or_else(not_found)
        }
        Method::SkipInterface(res) => first_on(ifaces, |i| {
            !excluded(&i.name) && !res.iter().any(|r| r.is_match(&i.name))
        })
        .ok_or_else(not_found),
        Method::Cidr(nets) => ifaces
            .iter()
            .filter(|i| i.up && !excluded(&i.name))
            .find_map(|i| {
                i.addrs.iter().filter_map(usable_v4).find_map(|a| {
                    nets.iter()
                        .any(|n| n.contains(&IpAddr::V4(a.addr())))
                        .then(|| Detected {
                            addr: a,
                            ifname: Some(i.name.clone()),
                        })
                })
            })
            .ok_or_else(not_found),
        Method::CanReach(dest) => {
            if !dest.is_ipv4() {
                return Err(DetectError::NotIpv4(*dest));
            }
            match &facts.route_source {
                Some(Ok(IpAddr::V4(src))) => {
                    locate(ifaces, *src).ok_or_else(|| DetectError::Unreachable {
                        dest: *dest,
                        reason: format!(
                            "the kernel picked source {src}, which is on no local interface"
                        ),
                    })
                }
                Some(Ok(other)) => Err(DetectError::Unreachable {
                    dest: *dest,
                    reason: format!("the kernel picked a non-IPv4 source {other}"),
                }),
                Some(Err(reason)) => Err(DetectError::Unreachable {
                    dest: *dest,
                    reason: reason.clone(),
                }),
                None => Err(DetectError::Unreachable {
                    dest: *dest,
                    reason: "no route lookup was made".to_owned(),
                }),
            }
        }
        Method::KubernetesInternalIp => {
            let ip = facts
                .internal_ips
                .iter()
                .find_map(|s| s.trim().parse::<Ipv4Addr>().ok())
                .ok_or(DetectError::NoInternalIp)?;
            // Calico takes the subnet from the local interface holding the address; when the
            // address is not local (NAT, odd setups) a /32 is all we know.
            Ok(locate(ifaces, ip).unwrap_or(Detected {
                addr: Ipv4Net::from(ip),
                ifname: None,
            }))
        }
    }
}

/// Asks the kernel which source address it would use toward `dest`, by connecting a UDP
/// socket: `connect` on UDP only does the route lookup and sends no packet.
pub fn route_source(dest: IpAddr) -> Result<IpAddr, String> {
    let bind: SocketAddr = match dest {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("binding a UDP socket: {e}"))?;
    // Port 9 (discard): any port works, nothing is sent.
    sock.connect(SocketAddr::new(dest, 9))
        .map_err(|e| format!("no route: {e}"))?;
    sock.local_addr()
        .map(|a| a.ip())
        .map_err(|e| format!("reading the source address: {e}"))
}

/// Reads this network namespace's interfaces and their addresses (getifaddrs), in kernel
/// order.
pub fn local_interfaces() -> Result<Vec<Interface>, DetectError> {
    use nix::net::if_::InterfaceFlags;
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| DetectError::Interfaces(e.to_string()))?;
    let mut out: Vec<Interface> = Vec::new();
    for ifa in addrs {
        let up = ifa.flags.contains(InterfaceFlags::IFF_UP);
        let net = match (ifa.address, ifa.netmask) {
            (Some(a), Some(m)) => match (a.as_sockaddr_in(), m.as_sockaddr_in()) {
                (Some(a), Some(m)) => {
                    let prefix = u32::from(m.ip()).count_ones() as u8;
                    Ipv4Net::new(a.ip(), prefix).ok().map(IpNet::V4)
                }
                _ => match (a.as_sockaddr_in6(), m.as_sockaddr_in6()) {
                    (Some(a), Some(m)) => {
                        let prefix = u128::from(m.ip()).count_ones() as u8;
                        ipnet::Ipv6Net::new(a.ip(), prefix).ok().map(IpNet::V6)
                    }
                    _ => None,
                },
            },
            _ => None,
        };
        let entry = match out.iter_mut().position(|i| i.name == ifa.interface_name) {
            Some(pos) => &mut out[pos],
            None => {
                out.push(Interface {
                    name: ifa.interface_name.clone(),
                    up,
                    addrs: Vec::new(),
                });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        entry.up |= up;
        if let Some(net) = net {
            entry.addrs.push(net);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn iface(name: &str, addrs: &[&str]) -> Interface {
        Interface {
            name: name.to_owned(),
            up: true,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn host() -> Vec<Interface> {
        vec![
            iface("lo", &["127.0.0.1/8", "::1/128"]),
            iface("docker0", &["172.17.0.1/16"]),
            iface("tort1a2b3c4d5e6", &[]),
            iface("veth0", &["10.9.9.9/24"]),
            iface("eth0", &["fe80::1/64", "169.254.3.3/16", "10.0.0.5/24"]),
            iface("eth1", &["192.168.50.7/24"]),
            iface("cali123", &["10.1.1.1/32"]),
        ]
    }

    fn pick(method: &str, ifaces: &[Interface]) -> Result<Detected, DetectError> {
        select(&Method::parse(method).unwrap(), ifaces, &Facts::default())
    }

    fn found(addr: &str, ifname: &str) -> Detected {
        Detected {
            addr: addr.parse().unwrap(),
            ifname: Some(ifname.to_owned()),
        }
    }

    #[test]
    fn first_found_skips_excluded_and_link_local() {
        assert_eq!(
            pick("first-found", &host()),
            Ok(found("10.0.0.5/24", "eth0"))
        );
        assert_eq!(pick("", &host()), Ok(found("10.0.0.5/24", "eth0")));
    }

    #[test]
    fn first_found_skips_down_interfaces() {
        let mut ifs = host();
        ifs[4].up = false;
        assert_eq!(
            pick("first-found", &ifs),
            Ok(found("192.168.50.7/24", "eth1"))
        );
    }

    #[test]
    fn first_found_with_nothing_usable_names_what_it_saw() {
        let err = pick("first-found", &[iface("lo", &["127.0.0.1/8"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "IP_AUTODETECTION_METHOD=first-found: no usable IPv4 address found (interfaces seen: lo)"
        );
    }

    #[test]
    fn interface_regex_matches_whole_names() {
        assert_eq!(
            pick("interface=eth1", &host()),
            Ok(found("192.168.50.7/24", "eth1"))
        );
        assert_eq!(
            pick("interface=eth.*", &host()),
            Ok(found("10.0.0.5/24", "eth0"))
        );
        // `eth0` must not pick `veth0`, which comes first.
        let ifs = vec![
            iface("veth0", &["10.9.9.9/24"]),
            iface("eth0", &["10.0.0.5/24"]),
        ];
        assert_eq!(
            pick("interface=eth0", &ifs),
            Ok(found("10.0.0.5/24", "eth0"))
        );
        // A list: the first interface in kernel order matching any of them.
        assert_eq!(
            pick("interface=nope,eth1", &host()),
            Ok(found("192.168.50.7/24", "eth1"))
        );
        // interface= may pick what first-found excludes: the user asked for it.
        assert_eq!(
            pick("interface=docker0", &host()),
            Ok(found("172.17.0.1/16", "docker0"))
        );
        assert!(matches!(
            pick("interface=wlan0", &host()),
            Err(DetectError::NotFound { .. })
        ));
    }

    #[test]
    fn skip_interface() {
        assert_eq!(
            pick("skip-interface=eth0", &host()),
            Ok(found("192.168.50.7/24", "eth1"))
        );
        assert_eq!(
            pick("skip-interface=eth.*", &host()).map(|_| ()),
            Err(DetectError::NotFound {
                method: "skip-interface=^(?:eth.*)$".to_owned(),
                seen: "lo, docker0, tort1a2b3c4d5e6, veth0, eth0, eth1, cali123".to_owned(),
            })
        );
    }

    #[test]
    fn cidr() {
        assert_eq!(
            pick("cidr=192.168.0.0/16", &host()),
            Ok(found("192.168.50.7/24", "eth1"))
        );
        assert_eq!(
            pick("cidr=172.16.0.0/12, 10.0.0.0/8", &host()),
            Ok(found("10.0.0.5/24", "eth0"))
        );
        // docker0's 172.17/16 is excluded even though the CIDR covers it.
        assert!(matches!(
            pick("cidr=172.16.0.0/12", &host()),
            Err(DetectError::NotFound { .. })
        ));
    }

    #[test]
    fn can_reach_uses_the_route_source() {
        let method = Method::parse("can-reach=8.8.8.8").unwrap();
        let facts = Facts {
            route_source: Some(Ok("192.168.50.7".parse().unwrap())),
            ..Facts::default()
        };
        assert_eq!(
            select(&method, &host(), &facts),
            Ok(found("192.168.50.7/24", "eth1"))
        );

        let facts = Facts {
            route_source: Some(Err("no route: Network is unreachable".into())),
            ..Facts::default()
        };
        assert_eq!(
            select(&method, &host(), &facts).unwrap_err().to_string(),
            "IP_AUTODETECTION_METHOD=can-reach=8.8.8.8: no route: Network is unreachable"
        );

        let facts = Facts {
            route_source: Some(Ok("10.77.0.1".parse().unwrap())),
            ..Facts::default()
        };
        assert!(matches!(
            select(&method, &host(), &facts),
            Err(DetectError::Unreachable { .. })
        ));

        let v6 = Method::parse("can-reach=2001:db8::1").unwrap();
        assert_eq!(
            select(&v6, &host(), &Facts::default()),
            Err(DetectError::NotIpv4("2001:db8::1".parse().unwrap()))
        );
    }

    #[test]
    fn kubernetes_internal_ip() {
        let m = Method::KubernetesInternalIp;
        let facts = Facts {
            internal_ips: vec!["fd00::5".into(), "10.0.0.5".into()],
            ..Facts::default()
        };
        assert_eq!(
            select(&m, &host(), &facts),
            Ok(found("10.0.0.5/24", "eth0"))
        );
        let facts = Facts {
            internal_ips: vec!["10.200.0.9".into()],
            ..Facts::default()
        };
        assert_eq!(
            select(&m, &host(), &facts),
            Ok(Detected {
                addr: "10.200.0.9/32".parse().unwrap(),
                ifname: None
            })
        );
        assert_eq!(
            select(&m, &host(), &Facts::default()),
            Err(DetectError::NoInternalIp)
        );
    }

    #[test]
    fn parse_errors_say_why() {
        assert_eq!(
            Method::parse("interface=[")
                .unwrap_err()
                .lines()
                .next()
                .unwrap(),
            "bad regex \"[\": regex parse error:"
        );
        assert_eq!(
            Method::parse("interface=").unwrap_err(),
            "needs at least one interface regex"
        );
        assert_eq!(
            Method::parse("can-reach=example").unwrap_err(),
            "can-reach needs an IP address, and \"example\" is not one"
        );
        assert_eq!(
            Method::parse("cidr=10.0.0.0/33").unwrap_err(),
            "\"10.0.0.0/33\" is not a CIDR"
        );
        assert_eq!(
            Method::parse("cidr=").unwrap_err(),
            "cidr= needs at least one CIDR"
        );
        assert!(
            Method::parse("nearest")
                .unwrap_err()
                .starts_with("unknown method;")
        );
        assert!(
            Method::parse("iface=eth0")
                .unwrap_err()
                .starts_with("unknown method \"iface\"")
        );
    }

    #[test]
    fn route_source_of_loopback_is_loopback() {
        // Loopback exists in every namespace; nothing is sent by a UDP connect.
        assert_eq!(
            route_source("127.0.0.1".parse().unwrap()),
            Ok("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn local_interfaces_includes_loopback() {
        let ifs = local_interfaces().unwrap();
        let lo = ifs.iter().find(|i| i.name == "lo").unwrap();
        assert!(lo.addrs.contains(&"127.0.0.1/8".parse().unwrap()));
    }
}
