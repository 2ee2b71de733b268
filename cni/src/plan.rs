//! Pure decisions: what to configure in the pod for an allocation, the result to print, and
//! whether what CHECK observed matches `prevResult`. The host veth's name is
//! [`tortie_api::veth::host_veth_name`], which the agent shares.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tortie_api::v1::AllocateReply;

use crate::dataplane::{HostState, PodState};
use crate::error::{CniError, Code};
use crate::result::{CniResult, Interface, IpConfig, Route};

/// Every host-side veth has this MAC (as Calico's `cali*`): the pod ARPs for its gateway and
/// the host answers by proxy ARP, so the pod's neighbour entry never changes.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The IPv4 gateway every pod routes through; nothing owns it, the host proxy-ARPs for it.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The host veth's IPv6 link-local address: the EUI-64 of [`HOST_MAC`] (RFC 4291 appendix A,
/// with the universal/local bit flipped: 0xee ^ 0x02 = 0xec). With `accept_dad=0` it is
/// usable as the pod's IPv6 gateway as soon as the link is up.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// When neither the config nor the agent says.
pub const DEFAULT_MTU: u32 = 1500;

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A route to configure in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodRoute {
    /// `<dst> dev <ifname> scope link`: makes the gateway on-link.
    Link { dst: IpAddr },
    /// `<dst> via <gw> dev <ifname>`.
    Via { dst: IpNet, gw: IpAddr },
}

/// Everything ADD configures for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub mtu: u32,
    /// Host prefixes only (/32, /128).
    pub addresses: Vec<IpNet>,
    /// Per address: the gateway the result reports.
    pub gateways: Vec<IpAddr>,
    pub routes: Vec<PodRoute>,
}

impl PodPlan {
    pub fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| a.addr().is_ipv6())
    }
}

/// Turns the agent's allocation into the pod's wiring. The agent's addresses become host
/// prefixes whatever length it sent: the pod reaches everything through its gateway.
pub fn plan_add(
    netns: PathBuf,
    ifname: &str,
    host_ifname: String,
    config_mtu: Option<u32>,
    reply: &AllocateReply,
) -> Result<PodPlan, CniError> {
    if reply.ips.is_empty() {
        return Err(CniError::new(
            Code::AgentRejected,
            "the agent allocated no address",
        ));
    }
    let mut addresses = Vec::new();
    let mut gateways = Vec::new();
    let mut routes = Vec::new();
    let (mut have_v4, mut have_v6) = (false, false);
    for ip in &reply.ips {
        let bad = |what: &str| {
            CniError::new(Code::AgentRejected, format!("the agent returned {what}"))
                .with_details("tortie-node and the tortie plugin may be different versions")
        };
        let net: IpNet = ip
            .address
            .parse()
            .map_err(|_| bad(&format!("an invalid address \"{}\"", ip.address)))?;
        let host = IpNet::new(net.addr(), if net.addr().is_ipv4() { 32 } else { 128 })
            .map_err(|_| bad("an invalid prefix"))?;
        let gw: IpAddr = match (ip.gateway.as_str(), host.addr()) {
            ("", IpAddr::V4(_)) => GATEWAY_V4.into(),
            ("", IpAddr::V6(_)) => GATEWAY_V6.into(),
            (g, _) => g
                .parse()
                .map_err(|_| bad(&format!("an invalid gateway \"{g}\"")))?,
        };
        if gw.is_ipv4() != host.addr().is_ipv4() {
            return Err(bad(&format!("gateway {gw} of another family than {host}")));
        }
        match host.addr() {
            IpAddr::V4(_) if !have_v4 => {
                have_v4 = true;
                routes.push(PodRoute::Link { dst: gw });
                // Ipv4Net's default is 0.0.0.0/0.
                routes.push(PodRoute::Via {
                    dst: IpNet::V4(Ipv4Net::default()),
                    gw,
                });
            }
            IpAddr::V6(_) if !have_v6 => {
                have_v6 = true;
                // A link-local gateway is on-link by definition; a global one needs the
                // link route, as for IPv4.
                if !matches!(gw, IpAddr::V6(g) if g.is_unicast_link_local()) {
                    routes.push(PodRoute::Link { dst: gw });
                }
                routes.push(PodRoute::Via {
                    dst: IpNet::V6(Ipv6Net::default()),
                    gw,
                });
            }
            _ => {}
        }
        addresses.push(host);
        gateways.push(gw);
    }
    let mtu = config_mtu.unwrap_or(if reply.mtu == 0 {
        DEFAULT_MTU
    } else {
        reply.mtu
    });
    Ok(PodPlan {
        netns,
        ifname: ifname.to_owned(),
        host_ifname,
        mtu,
        addresses,
        gateways,
        routes,
    })
}

/// What ADD reports: the host veth, then the pod interface (with `sandbox`), the addresses
/// on the pod interface (index 1), and the default routes.
pub fn add_result(plan: &PodPlan, pod_mac: &str) -> CniResult {
    CniResult {
        interfaces: vec![
            Interface {
                name: plan.host_ifname.clone(),
                mac: Some(format_mac(&HOST_MAC)),
                ..Default::default()
            },
            Interface {
                name: plan.ifname.clone(),
                mac: Some(pod_mac.to_owned()),
                sandbox: Some(plan.netns.display().to_string()),
                mtu: Some(plan.mtu),
                ..Default::default()
            },
        ],
        ips: plan
            .addresses
            .iter()
            .zip(&plan.gateways)
            .map(|(a, g)| IpConfig {
                address: *a,
                gateway: Some(*g),
                interface: Some(1),
            })
            .collect(),
        routes: plan
            .routes
            .iter()
            .filter_map(|r| match *r {
                PodRoute::Via { dst, gw } => Some(Route {
                    dst,
                    gw: Some(gw),
                    extra: Default::default(),
                }),
                PodRoute::Link { .. } => None,
            })
            .collect(),
        dns: Default::default(),
    }
}

/// Does the existing pod link belong to an earlier ADD of this same pod (its veth peer is
/// our host link), rather than to someone else?
pub fn is_our_pair(pod: &PodState, host: Option<&HostState>) -> bool {
    match host {
        Some(h) => {
            pod.link.kind.as_deref() == Some("veth")
                && pod.link.peer_index == Some(h.link.index)
                && h.link.peer_index == Some(pod.link.index)
        }
        None => false,
    }
}

fn check_failed(msg: impl Into<String>) -> CniError {
    CniError::new(Code::CheckFailed, msg)
}

/// CHECK's verdict: the pod and host sides still match `prev` (SPEC.md: "the plugin must
/// check that the interfaces, addresses and routes it created are as it left them").
pub fn check(
    prev: &CniResult,
    netns: &str,
    ifname: &str,
    pod: Option<&PodState>,
    host_ifname: &str,
    host: Option<&HostState>,
    agent_addresses: &[String],
) -> Result<(), CniError> {
    let (pos, want) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.as_deref() == Some(netns))
        .ok_or_else(|| {
            check_failed(format!(
                "prevResult has no interface {ifname} in sandbox {netns}"
            ))
        })?;
    let pod = pod.ok_or_else(|| check_failed(format!("{ifname} is missing from {netns}")))?;
    if let Some(mac) = &want.mac
        && pod.link.mac.as_deref().map(str::to_ascii_lowercase) != Some(mac.to_ascii_lowercase())
    {
        return Err(check_failed(format!(
            "{ifname} has MAC {:?}, prevResult says {mac}",
            pod.link.mac
        )));
    }
    if let Some(mtu) = want.mtu
        && pod.link.mtu != mtu
    {
        return Err(check_failed(format!(
            "{ifname} has MTU {}, prevResult says {mtu}",
            pod.link.mtu
        )));
    }
    if !pod.link.up {
        return Err(check_failed(format!("{ifname} is down")));
    }

    let ours: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == pos))
        .collect();
    for ip in &ours {
        if !pod.addresses.contains(&ip.address) {
            return Err(check_failed(format!(
                "{ifname} lacks address {}",
                ip.address
            )));
        }
        // The gateway must be on-link: either a link-scope route to it or an IPv6
        // link-local gateway (always on-link).
        if let Some(gw) = ip.gateway {
            let on_link = matches!(gw, IpAddr::V6(g) if g.is_unicast_link_local())
                || pod.routes.iter().any(|r| {
                    r.scope_link && r.dst == IpNet::from(gw) && r.oif == Some(pod.link.index)
                });
            if !on_link {
                return Err(check_failed(format!(
                    "{ifname} has no link route to gateway {gw}"
                )));
            }
        }
    }
    for route in &prev.routes {
        let present = pod
            .routes
            .iter()
            .any(|r| r.dst == route.dst && (route.gw.is_none() || r.gateway == route.gw));
        if !present {
            let via = route.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(check_failed(format!(
                "route {}{via} is missing in {netns}",
                route.dst
            )));
        }
    }

    let host = host.ok_or_else(|| check_failed(format!("host veth {host_ifname} is missing")))?;
    if host.link.peer_index != Some(pod.link.index) || pod.link.peer_index != Some(host.link.index)
    {
        return Err(check_failed(format!(
            "{host_ifname} is not the veth peer of {ifname}"
        )));
    }
    if host.link.mac.as_deref() != Some(format_mac(&HOST_MAC).as_str()) {
        return Err(check_failed(format!(
            "{host_ifname} has MAC {:?}, not ee:ee:ee:ee:ee:ee",
            host.link.mac
        )));
    }
    if !host.link.up {
        return Err(check_failed(format!("{host_ifname} is down")));
    }
    if ours.iter().any(|ip| ip.address.addr().is_ipv4()) && !host.proxy_arp {
        return Err(check_failed(format!("proxy_arp is off on {host_ifname}")));
    }

    let mut held: Vec<IpAddr> = Vec::new();
    for a in agent_addresses {
        let net: IpNet = a
            .parse()
            .map_err(|_| check_failed(format!("the agent holds an unreadable address \"{a}\"")))?;
        held.push(net.addr());
    }
    if held.is_empty() {
        return Err(check_failed(
            "the agent holds no allocation for this attachment",
        ));
    }
    for ip in &ours {
        if !held.contains(&ip.address.addr()) {
            return Err(check_failed(format!(
                "the agent does not hold {} for this attachment (it holds {held:?})",
                ip.address
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tortie_api::v1::IpConfig as WireIp;

    #[test]
    fn ipv6_gateway_is_the_eui64_of_the_host_mac() {
        assert_eq!(GATEWAY_V6.to_string(), "fe80::ecee:eeff:feee:eeee");
    }

    fn reply(ips: &[(&str, &str)], mtu: u32) -> AllocateReply {
        AllocateReply {
            ips: ips
                .iter()
                .map(|(a, g)| WireIp {
                    address: a.to_string(),
                    gateway: g.to_string(),
                })
                .collect(),
            mtu,
        }
    }

    #[test]
    fn ipv4_plan_has_host_prefix_link_route_and_default() {
        let p = plan_add(
            "/run/netns/p".into(),
            "eth0",
            "tortx".into(),
            None,
            &reply(&[("10.244.1.5/26", "")], 1450),
        )
        .unwrap();
        assert_eq!(p.addresses, vec!["10.244.1.5/32".parse::<IpNet>().unwrap()]);
        assert_eq!(p.mtu, 1450);
        assert_eq!(
            p.routes,
            vec![
                PodRoute::Link {
                    dst: GATEWAY_V4.into()
                },
                PodRoute::Via {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: GATEWAY_V4.into()
                }
            ]
        );
    }

    #[test]
    fn config_mtu_wins_and_dual_stack_gets_both_defaults() {
        let p = plan_add(
            "/run/netns/p".into(),
            "eth0",
            "tortx".into(),
            Some(1400),
            &reply(
                &[("10.244.1.5/32", "169.254.1.1"), ("fd00::5/128", "")],
                1500,
            ),
        )
        .unwrap();
        assert_eq!(p.mtu, 1400);
        assert!(p.has_ipv6());
        assert_eq!(p.routes.len(), 3, "{:?}", p.routes);
        assert!(p.routes.contains(&PodRoute::Via {
            dst: "::/0".parse().unwrap(),
            gw: GATEWAY_V6.into()
        }));
    }

    #[test]
    fn bad_allocations_are_rejected() {
        for r in [
            reply(&[], 1500),
            reply(&[("nope", "")], 1500),
            reply(&[("10.0.0.1/32", "fe80::1")], 1500),
        ] {
            let e = plan_add("/x".into(), "eth0", "t".into(), None, &r).unwrap_err();
            assert_eq!(e.code, Code::AgentRejected, "{r:?}");
        }
    }

    #[test]
    fn result_reports_host_and_pod_interfaces() {
        let p = plan_add(
            "/run/netns/p".into(),
            "eth0",
            "tortx".into(),
            None,
            &reply(&[("10.244.1.5/32", "")], 1500),
        )
        .unwrap();
        let r = add_result(&p, "02:00:00:00:00:01");
        assert_eq!(r.interfaces[0].mac.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/p"));
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.ips[0].gateway, Some(GATEWAY_V4.into()));
        assert_eq!(
            r.routes,
            vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some(GATEWAY_V4.into()),
                extra: Default::default()
            }]
        );
    }
}
