//! The real [`Dataplane`]: rtnetlink in the host namespace (the plugin's own thread) and in
//! the pod's (a worker thread that has `setns`'d there), plus the host-side sysctls.
//!
//! This module is the only one that sees netlink-packet-route.

mod netlink;
mod worker;

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use self::netlink::Netlink;
use self::worker::PodNetns;
use crate::dataplane::{
    Created, Dataplane, DataplaneError, HostState, LinkState, PairSpec, PodRouteState, PodState,
};
use crate::plan::{HOST_MAC, PodPlan, PodRoute, format_mac};

/// The kernel, reached through netlink. Sockets and namespace threads are opened on first
/// use and kept for the rest of the (short) process.
#[derive(Default)]
pub struct KernelDataplane {
    host: Option<Netlink>,
    pod: Option<PodNetns>,
    /// The pod end as read right after `create_pair` made it, so `configure_pod` need not
    /// read it again after the allocation arrives.
    made: Option<MadePodEnd>,
}

struct MadePodEnd {
    netns: PathBuf,
    ifname: String,
    link: LinkState,
}

impl KernelDataplane {
    pub fn new() -> KernelDataplane {
        KernelDataplane::default()
    }

    fn host(&mut self) -> Result<&mut Netlink, DataplaneError> {
        if self.host.is_none() {
            self.host = Some(
                Netlink::open().map_err(|e| DataplaneError::failed("open netlink socket", e))?,
            );
        }
        self.host
            .as_mut()
            .ok_or_else(|| DataplaneError::failed("open netlink socket", "unavailable"))
    }

    /// The worker for `netns`; one process serves one attachment, so one is kept.
    fn pod(&mut self, netns: &Path) -> Result<&PodNetns, DataplaneError> {
        if self.pod.as_ref().is_none_or(|p| p.path() != netns) {
            self.pod = None;
            self.pod = Some(PodNetns::enter(netns)?);
        }
        self.pod
            .as_ref()
            .ok_or_else(|| DataplaneError::NetnsMissing(netns.to_owned()))
    }
}

fn link_by_name(name: &str) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    RouteNetlinkMessage::GetLink(msg)
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        kind: None,
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        peer_index: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(mac) => state.mac = Some(format_mac(mac)),
            LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
            LinkAttribute::Link(peer) => state.peer_index = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        state.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    state
}

fn get_link(nl: &mut Netlink, name: &str) -> io::Result<Option<LinkState>> {
    Ok(match nl.get(link_by_name(name))? {
        Some(RouteNetlinkMessage::NewLink(msg)) => Some(link_state(&msg)),
        _ => None,
    })
}

fn delete_link(nl: &mut Netlink, name: &str) -> io::Result<bool> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    match nl.request(RouteNetlinkMessage::DelLink(msg), 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

fn addresses_of(nl: &mut Netlink, index: u32) -> io::Result<Vec<IpNet>> {
    let mut out = Vec::new();
    for msg in nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
        let RouteNetlinkMessage::NewAddress(a) = msg else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
        // point-to-point links); IPv6 has only IFA_ADDRESS.
        let mut addr = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => addr = Some(*ip),
                AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = addr
            && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
        {
            out.push(net);
        }
    }
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn main_routes(nl: &mut Netlink) -> io::Result<Vec<PodRouteState>> {
    let mut out = Vec::new();
    for msg in nl.dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))? {
        let RouteNetlinkMessage::NewRoute(r) = msg else {
            continue;
        };
        let mut table = u32::from(r.header.table);
        let (mut dst, mut gateway, mut oif) = (None, None, None);
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
            continue;
        }
        let dst = match (dst, r.header.address_family) {
            (Some(ip), _) => ip,
            (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
            (None, AddressFamily::Inet6) => IpAddr::from([0u16; 8]),
            _ => continue,
        };
        if let Ok(dst) = IpNet::new(dst, r.header.destination_prefix_length) {
            out.push(PodRouteState {
                dst,
                gateway,
                oif,
                scope_link: r.header.scope == RouteScope::Link,
            });
        }
    }
    Ok(out)
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn new_address(index: u32, addr: IpNet) -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(addr.addr());
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    if addr.addr().is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(addr.addr()));
    } else {
        // The pod is alone on its link: duplicate address detection can only delay it.
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    RouteNetlinkMessage::NewAddress(msg)
}

fn new_route(index: u32, route: PodRoute) -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    match route {
        PodRoute::Link { dst } => {
            msg.header.address_family = family_of(dst);
            msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
            msg.header.scope = RouteScope::Link;
            msg.attributes.push(RouteAttribute::Destination(dst.into()));
        }
        PodRoute::Via { dst, gw } => {
            msg.header.address_family = family_of(dst.addr());
            msg.header.destination_prefix_length = dst.prefix_len();
            msg.header.scope = RouteScope::Universe;
            if dst.prefix_len() > 0 {
                msg.attributes
                    .push(RouteAttribute::Destination(dst.addr().into()));
            }
            msg.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
    }
    msg.attributes.push(RouteAttribute::Oif(index));
    RouteNetlinkMessage::NewRoute(msg)
}

fn write_sysctl(path: &str, value: &str) -> Result<(), DataplaneError> {
    std::fs::write(path, value)
        .map_err(|e| DataplaneError::failed(format!("write {value} to {path}"), e))
}

/// The host side's IPv4 sysctls (docs/architecture.md, "The dataplane on a node"): answer ARP for the gateway by
/// proxy, at once, and forward.
fn host_sysctls_v4(ifname: &str) -> Result<(), DataplaneError> {
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/proxy_arp"), "1")?;
    write_sysctl(
        &format!("/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay"),
        "0",
    )?;
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"), "1")
}

/// For IPv6: answer NDP by proxy, and skip DAD so the link-local gateway works as soon as
/// the link is up (so this must precede the host side coming up).
fn host_sysctls_v6(ifname: &str) -> Result<(), DataplaneError> {
    write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/proxy_ndp"), "1")?;
    write_sysctl(&format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad"), "0")
}

fn set_up(msg: &mut LinkMessage) {
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
}

impl Dataplane for KernelDataplane {
    async fn pod_state(
        &mut self,
        netns: &Path,
        ifname: &str,
        detail: bool,
    ) -> Result<Option<PodState>, DataplaneError> {
        let name = ifname.to_owned();
        self.pod(netns)?
            .run(move |nl| -> io::Result<Option<PodState>> {
                let Some(link) = get_link(nl, &name)? else {
                    return Ok(None);
                };
                let (addresses, routes) = if detail {
                    (addresses_of(nl, link.index)?, main_routes(nl)?)
                } else {
                    (vec![], vec![])
                };
                Ok(Some(PodState {
                    link,
                    addresses,
                    routes,
                }))
            })
            .await?
            .map_err(|e| DataplaneError::failed(format!("read {ifname} in {}", netns.display()), e))
    }

    async fn host_state(&mut self, name: &str) -> Result<Option<HostState>, DataplaneError> {
        let Some(link) = get_link(self.host()?, name)
            .map_err(|e| DataplaneError::failed(format!("read link {name}"), e))?
        else {
            return Ok(None);
        };
        let proxy_arp =
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"))
                .map(|v| v.trim() == "1")
                .unwrap_or(false);
        Ok(Some(HostState { link, proxy_arp }))
    }

    async fn create_pair(&mut self, pair: &PairSpec) -> Result<(), DataplaneError> {
        // One request makes both ends: the peer message carries the pod namespace's fd
        // (IFLA_NET_NS_FD), so the pod end is born inside the pod and never moves. Both ends
        // stay down until `configure_pod`: the host end because, with IPv6, accept_dad=0
        // must precede it coming up, and whether there is IPv6 is not known yet; the pod end
        // because it cannot come up here anyway: the kernel configures the peer before it
        // pairs the two, so IFF_UP there fails with ENOTCONN (veth_open finds no peer).
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(pair.ifname.clone()));
        peer.attributes.push(LinkAttribute::Mtu(pair.mtu));
        {
            let pod = self.pod(&pair.netns)?;
            peer.attributes
                .push(LinkAttribute::NetNsFd(std::os::fd::AsRawFd::as_raw_fd(
                    &pod.fd(),
                )));
        }
        let mut host = LinkMessage::default();
        host.attributes
            .push(LinkAttribute::IfName(pair.host_ifname.clone()));
        host.attributes.push(LinkAttribute::Mtu(pair.mtu));
        host.attributes
            .push(LinkAttribute::Address(HOST_MAC.to_vec()));
        host.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.host()?
            .request(
                RouteNetlinkMessage::NewLink(host),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| {
                DataplaneError::failed(
                    format!("create veth {} / {}", pair.host_ifname, pair.ifname),
                    e,
                )
            })?;
        // The pod thread reads the new end (its index and MAC) while this thread writes the
        // sysctls; polled first, the read is already on its way when the writes block.
        self.made = None;
        let name = pair.ifname.clone();
        let read = self.pod(&pair.netns)?.run(move |nl| get_link(nl, &name));
        let (read, sysctls) = tokio::join!(read, async { host_sysctls_v4(&pair.host_ifname) });
        sysctls?;
        // A failed read is not fatal here: `configure_pod` reads again and reports it.
        if let Ok(Ok(Some(link))) = read {
            self.made = Some(MadePodEnd {
                netns: pair.netns.clone(),
                ifname: pair.ifname.clone(),
                link,
            });
        }
        Ok(())
    }

    async fn host_up(&mut self, plan: &PodPlan, pair_mtu: u32) -> Result<(), DataplaneError> {
        if plan.has_ipv6() {
            host_sysctls_v6(&plan.host_ifname)?;
        }
        let mut up = LinkMessage::default();
        set_up(&mut up);
        up.attributes
            .push(LinkAttribute::IfName(plan.host_ifname.clone()));
        // Only when the allocation differs from what `create_pair` guessed.
        if plan.mtu != pair_mtu {
            up.attributes.push(LinkAttribute::Mtu(plan.mtu));
        }
        self.host()?
            .request(RouteNetlinkMessage::SetLink(up), 0)
            .map_err(|e| DataplaneError::failed(format!("set {} up", plan.host_ifname), e))
    }

    async fn configure_pod(
        &mut self,
        plan: &PodPlan,
        pair_mtu: u32,
    ) -> Result<Created, DataplaneError> {
        let mtu = (plan.mtu != pair_mtu).then_some(plan.mtu);
        let known = self
            .made
            .take()
            .filter(|m| m.netns == plan.netns && m.ifname == plan.ifname)
            .map(|m| m.link);
        let (ifname, addresses, routes) = (
            plan.ifname.clone(),
            plan.addresses.clone(),
            plan.routes.clone(),
        );
        let netns = plan.netns.display().to_string();
        // On the pod's thread, so this one is free meanwhile (ADD sends EndpointReady).
        let pod_mac = self
            .pod(&plan.netns)?
            .run(move |nl| -> Result<String, DataplaneError> {
                let link = match known {
                    Some(link) => link,
                    None => get_link(nl, &ifname)
                        .map_err(|e| DataplaneError::failed(format!("read {ifname}"), e))?
                        .ok_or_else(|| {
                            DataplaneError::failed(
                                format!("find {ifname} in {netns}"),
                                "the new veth end is missing",
                            )
                        })?,
                };
                // Each request with what it is, for the error message.
                let mut batch: Vec<(RouteNetlinkMessage, u16, String)> = Vec::new();
                if !link.up || mtu.is_some() {
                    let mut set = LinkMessage::default();
                    set.header.index = link.index;
                    set_up(&mut set);
                    if let Some(mtu) = mtu {
                        set.attributes.push(LinkAttribute::Mtu(mtu));
                    }
                    batch.push((
                        RouteNetlinkMessage::SetLink(set),
                        0,
                        format!("set {ifname} up"),
                    ));
                }
                for a in &addresses {
                    batch.push((
                        new_address(link.index, *a),
                        NLM_F_CREATE | NLM_F_EXCL,
                        format!("add address {a}"),
                    ));
                }
                // In order: the link route to the gateway precedes the default route via it.
                // EXCL, as Calico does: the link is brand new, so an existing route of the same
                // key belongs to someone else (another interface's default) and must not be
                // silently taken over.
                for r in &routes {
                    let what = match r {
                        PodRoute::Link { dst } => format!("add route {dst} scope link"),
                        PodRoute::Via { dst, gw } => format!("add route {dst} via {gw}"),
                    };
                    batch.push((new_route(link.index, *r), NLM_F_CREATE | NLM_F_EXCL, what));
                }
                let what: Vec<String> = batch.iter().map(|b| b.2.clone()).collect();
                nl.batch(batch.into_iter().map(|(m, f, _)| (m, f)).collect())
                    .map_err(|(i, e)| {
                        let step = what.get(i).map_or("configure", String::as_str);
                        DataplaneError::failed(format!("{step} on {ifname} in {netns}"), e)
                    })?;
                link.mac.ok_or_else(|| {
                    DataplaneError::failed(format!("read {ifname}"), "no MAC address")
                })
            })
            .await??;
        Ok(Created { pod_mac })
    }

    async fn delete_host_link(&mut self, name: &str) -> Result<bool, DataplaneError> {
        delete_link(self.host()?, name)
            .map_err(|e| DataplaneError::failed(format!("delete {name}"), e))
    }

    async fn delete_pod_link(
        &mut self,
        netns: &Path,
        ifname: &str,
    ) -> Result<bool, DataplaneError> {
        let name = ifname.to_owned();
        self.pod(netns)?
            .run(move |nl| delete_link(nl, &name))
            .await?
            .map_err(|e| {
                DataplaneError::failed(format!("delete {ifname} in {}", netns.display()), e)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{GATEWAY_V4, GATEWAY_V6};

    fn route(msg: RouteNetlinkMessage) -> RouteMessage {
        match msg {
            RouteNetlinkMessage::NewRoute(r) => r,
            other => panic!("not a route: {other:?}"),
        }
    }

    #[test]
    fn gateway_link_route_is_a_host_route_of_link_scope() {
        let r = route(new_route(
            7,
            PodRoute::Link {
                dst: GATEWAY_V4.into(),
            },
        ));
        assert_eq!(r.header.scope, RouteScope::Link);
        assert_eq!(r.header.destination_prefix_length, 32);
        assert_eq!(r.header.table, RouteHeader::RT_TABLE_MAIN);
        assert!(
            r.attributes
                .contains(&RouteAttribute::Destination(RouteAddress::Inet(GATEWAY_V4)))
        );
        assert!(r.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(
            !r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
    }

    #[test]
    fn default_route_has_no_destination_and_a_gateway() {
        let r = route(new_route(
            7,
            PodRoute::Via {
                dst: "::/0".parse().unwrap(),
                gw: GATEWAY_V6.into(),
            },
        ));
        assert_eq!(r.header.address_family, AddressFamily::Inet6);
        assert_eq!(r.header.scope, RouteScope::Universe);
        assert_eq!(r.header.destination_prefix_length, 0);
        assert!(
            !r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
        assert!(
            r.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(GATEWAY_V6)))
        );
    }

    #[test]
    fn ipv4_addresses_carry_local_and_ipv6_skip_dad() {
        let RouteNetlinkMessage::NewAddress(v4) = new_address(3, "10.0.0.5/32".parse().unwrap())
        else {
            panic!()
        };
        assert_eq!((v4.header.prefix_len, v4.header.index), (32, 3));
        assert!(
            v4.attributes
                .contains(&AddressAttribute::Local("10.0.0.5".parse().unwrap()))
        );
        let RouteNetlinkMessage::NewAddress(v6) = new_address(3, "fd00::5/128".parse().unwrap())
        else {
            panic!()
        };
        assert!(
            v6.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
    }

    #[test]
    fn link_state_reads_kind_mac_mtu_peer_and_up() {
        let mut msg = LinkMessage::default();
        msg.header.index = 12;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::Address(HOST_MAC.to_vec()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Link(4),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let s = link_state(&msg);
        assert_eq!(
            s,
            LinkState {
                index: 12,
                kind: Some("veth".into()),
                mac: Some("ee:ee:ee:ee:ee:ee".into()),
                mtu: 1450,
                up: true,
                peer_index: Some(4)
            }
        );
    }
}
