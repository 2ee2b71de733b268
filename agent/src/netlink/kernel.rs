//! [`KernelRouteTable`]: the real route table over a NETLINK_ROUTE socket.
//!
//! Writes are pipelined the way BIRD does it, only more so: the requests of a batch are
//! serialized back to back into one buffer and handed to the kernel with one `send` per
//! ~64 KiB (about a thousand routes). The kernel processes every message of the datagram
//! inside that `send`. The last request of each datagram carries NLM_F_ACK; the kernel
//! reports an error for any request regardless of that flag (netlink_rcv_skb acks when
//! `NLM_F_ACK || err`), so one ACK per datagram plus one NACK per refused route tells us the
//! fate of every request. They are matched to the operations by sequence number. There is
//! never a round trip per route, and measured against an ACK on every request this saves
//! a quarter of the time of a 100k batch (one `recv` per route).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use super::{NetlinkError, NextHop, OpFailure, Route, RouteOp, RouteTable, TORTIE_PROTO};

/// Bytes of requests per `send`. The kernel refuses a datagram larger than the socket's
/// send buffer (default 208 KiB), and 64 KiB holds roughly a thousand route requests.
const CHUNK_BYTES: usize = 64 * 1024;
/// Requests in flight before we stop sending and collect ACKs. A refused route queues a
/// NACK of about 1 KiB of receive buffer (skb overhead), so even a window where every
/// request fails fits inside RCVBUF.
const WINDOW: usize = 4096;
const RCVBUF: usize = 16 * 1024 * 1024;
/// The longest the kernel may stay silent while we wait for ACKs or a dump.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Large enough for any dump datagram the kernel builds (it uses at most 32 KiB).
const RECV_BUF: usize = 256 * 1024;

/// The main routing table of the network namespace the socket was opened in.
pub struct KernelRouteTable {
    socket: Socket,
    seq: u32,
    /// ifindex ↔ name, refreshed by a link dump whenever a name or index is unknown.
    links_by_name: HashMap<String, u32>,
    links_by_index: HashMap<u32, String>,
    send_buf: Vec<u8>,
    /// Offset of the last request in `send_buf`.
    last_msg: usize,
    recv_buf: Vec<u8>,
}

impl KernelRouteTable {
    /// Opens the table of the calling thread's network namespace (the agent runs inside the
    /// node's namespace, so this is the node's table).
    pub fn open() -> Result<KernelRouteTable, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Short error messages: the kernel need not echo our request back in each NACK.
        socket.set_cap_ack(true)?;
        set_buffer_and_timeout(&mut socket, RCVBUF, RECV_TIMEOUT)?;
        Ok(KernelRouteTable {
            socket,
            seq: 1,
            links_by_name: HashMap::new(),
            links_by_index: HashMap::new(),
            send_buf: Vec::with_capacity(CHUNK_BYTES + 1024),
            last_msg: 0,
            recv_buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Opens the table of the network namespace bound at `netns` (e.g. `/run/netns/x`).
    /// The socket is created on a short-lived thread that entered the namespace; a socket
    /// stays in the namespace it was created in, so the caller's thread never moves.
    pub fn open_in_netns(netns: &Path) -> Result<KernelRouteTable, NetlinkError> {
        in_netns(netns, KernelRouteTable::open)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn refresh_links(&mut self) -> Result<(), NetlinkError> {
        let messages = self.dump_request(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        self.links_by_name.clear();
        self.links_by_index.clear();
        for msg in messages {
            if let RouteNetlinkMessage::NewLink(link) = msg {
                let name = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                });
                if let Some(name) = name {
                    self.links_by_name.insert(name.clone(), link.header.index);
                    self.links_by_index.insert(link.header.index, name);
                }
            }
        }
        Ok(())
    }

    /// The ifindex of `dev`; an unknown name is asked for alone, not with a dump of every
    /// link: on a node with a hundred pods that dump was most of a pod's route install.
    fn ifindex(&mut self, dev: &str) -> Result<Option<u32>, NetlinkError> {
        if let Some(i) = self.links_by_name.get(dev) {
            return Ok(Some(*i));
        }
        let mut by_name = LinkMessage::default();
        by_name
            .attributes
            .push(LinkAttribute::IfName(dev.to_owned()));
        let index = match self.query(RouteNetlinkMessage::GetLink(by_name), false) {
            Ok(answer) => answer.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            }),
            Err(NetlinkError::Refused(e)) if e.raw_os_error() == Some(libc::ENODEV) => None,
            Err(e) => return Err(e),
        };
        if let Some(index) = index {
            self.links_by_name.insert(dev.to_owned(), index);
            self.links_by_index.insert(index, dev.to_owned());
        }
        Ok(index)
    }

    fn dump_request(
        &mut self,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.query(request, true)
    }

    /// Sends one request and collects its answer: every message of a dump's multipart
    /// answer, or the one message a plain GET gets.
    fn query(
        &mut self,
        request: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST
        };
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut out = Vec::new();
        loop {
            self.recv()?;
            let mut done = false;
            for_each_message(&self.recv_buf, |bytes| {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                if msg.header.sequence_number != seq {
                    return Ok(()); // a late ACK from an abandoned batch
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        done |= !dump;
                    }
                    NetlinkPayload::Done(_) => done = true,
                    NetlinkPayload::Error(e) => {
                        return Err(NetlinkError::Refused(e.to_io()));
                    }
                    _ => {}
                }
                Ok(())
            })?;
            if done {
                return Ok(out);
            }
        }
    }

    fn recv(&mut self) -> Result<(), NetlinkError> {
        self.recv_buf.clear();
        match self.socket.recv(&mut self.recv_buf, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                Err(NetlinkError::Timeout(RECV_TIMEOUT))
            }
            Err(e) => Err(NetlinkError::Io(e)),
        }
    }

    /// Builds the netlink request for `op`, or the errno that stops it before sending.
    fn encode(&mut self, op: &RouteOp) -> Result<Result<RouteMessage, i32>, NetlinkError> {
        let route = op.route();
        let mut msg = RouteMessage::default();
        let h = &mut msg.header;
        h.address_family = match route.dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        h.destination_prefix_length = route.dst.prefix_len();
        h.table = RouteHeader::RT_TABLE_MAIN;
        h.protocol = RouteProtocol::Other(TORTIE_PROTO);
        msg.attributes
            .push(RouteAttribute::Destination(route_address(
                route.dst.network(),
            )));
        if let RouteOp::Delete(_) = op {
            // Destination + protocol select the route; any scope and type match.
            msg.header.scope = RouteScope::NoWhere;
            msg.header.kind = RouteType::Unspec;
            return Ok(Ok(msg));
        }
        match &route.next_hop {
            NextHop::Blackhole => {
                msg.header.scope = RouteScope::Universe;
                msg.header.kind = RouteType::BlackHole;
            }
            NextHop::Link { dev } => {
                let Some(index) = self.ifindex(dev)? else {
                    return Ok(Err(libc::ENODEV));
                };
                msg.header.scope = RouteScope::Link;
                msg.header.kind = RouteType::Unicast;
                msg.attributes.push(RouteAttribute::Oif(index));
            }
            NextHop::Gateway {
                gateway,
                dev,
                onlink,
            } => {
                msg.header.scope = RouteScope::Universe;
                msg.header.kind = RouteType::Unicast;
                if *onlink {
                    msg.header.flags |= RouteFlags::Onlink;
                }
                msg.attributes
                    .push(RouteAttribute::Gateway(route_address(*gateway)));
                if let Some(dev) = dev {
                    let Some(index) = self.ifindex(dev)? else {
                        return Ok(Err(libc::ENODEV));
                    };
                    msg.attributes.push(RouteAttribute::Oif(index));
                }
            }
        }
        Ok(Ok(msg))
    }

    fn parse_route(&mut self, msg: RouteMessage) -> Option<Route> {
        let dst = tortie_destination(&msg)?;
        let h = &msg.header;
        let mut gateway = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Gateway(a) => gateway = ip_of(a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let dev = oif.and_then(|i| self.links_by_index.get(&i).cloned());
        let next_hop = if h.kind == RouteType::BlackHole {
            NextHop::Blackhole
        } else if let Some(gateway) = gateway {
            NextHop::Gateway {
                gateway,
                dev,
                onlink: h.flags.contains(RouteFlags::Onlink),
            }
        } else {
            NextHop::Link { dev: dev? }
        };
        Some(Route { dst, next_hop })
    }

    /// Sends what is in `send_buf` as one datagram, asking for an ACK of its last request.
    fn flush(&mut self) -> Result<(), NetlinkError> {
        if !self.send_buf.is_empty() {
            let mut last = NetlinkBuffer::new(&mut self.send_buf[self.last_msg..]);
            let flags = last.flags();
            last.set_flags(flags | NLM_F_ACK);
            self.socket.send(&self.send_buf, 0)?;
            self.send_buf.clear();
        }
        Ok(())
    }

    /// Reads ACKs until at most `keep` requests are in flight.
    fn collect_acks(
        &mut self,
        in_flight: &mut VecDeque<(u32, usize)>,
        keep: usize,
        ops: &[RouteOp],
        failures: &mut Vec<OpFailure>,
    ) -> Result<(), NetlinkError> {
        while in_flight.len() > keep {
            self.recv()?;
            for_each_message(&self.recv_buf, |bytes| {
                let buf = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let seq = buf.sequence_number();
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let NetlinkPayload::Error(err) = msg.payload else {
                    return Ok(());
                };
                // The kernel answers in the order we sent; a request older than the one
                // answered here got no NACK, so it succeeded.
                while let Some(&(front_seq, idx)) = in_flight.front() {
                    if front_seq == seq {
                        in_flight.pop_front();
                        if let Some(code) = err.code {
                            failures.push(OpFailure {
                                op: ops[idx].clone(),
                                errno: -code.get(),
                            });
                        }
                        break;
                    }
                    if seq.wrapping_sub(front_seq) < u32::MAX / 2 {
                        in_flight.pop_front();
                    } else {
                        break; // an ACK from before this batch
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

impl RouteTable for KernelRouteTable {
    fn dump(&mut self) -> Result<Vec<Route>, NetlinkError> {
        self.refresh_links()?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            for msg in self.dump_request(RouteNetlinkMessage::GetRoute(req))? {
                if let RouteNetlinkMessage::NewRoute(r) = msg
                    && let Some(route) = self.parse_route(r)
                {
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }

    fn apply(&mut self, ops: &[RouteOp]) -> Result<Vec<OpFailure>, NetlinkError> {
        let failures = self.apply_once(ops)?;
        // ENODEV for a named device can be our cache's fault: a veth deleted and made again
        // under the same name (a pod recreated) has a new ifindex. Re-read the links and
        // try those routes once more.
        let (retry, mut keep): (Vec<OpFailure>, Vec<OpFailure>) = failures
            .into_iter()
            .partition(|f| f.errno == libc::ENODEV && names_a_device(&f.op));
        if retry.is_empty() {
            return Ok(keep);
        }
        self.refresh_links()?;
        let ops: Vec<RouteOp> = retry.into_iter().map(|f| f.op).collect();
        keep.extend(self.apply_once(&ops)?);
        Ok(keep)
    }
}

fn names_a_device(op: &RouteOp) -> bool {
    match &op.route().next_hop {
        NextHop::Link { .. } | NextHop::Gateway { dev: Some(_), .. } => {
            !matches!(op, RouteOp::Delete(_))
        }
        _ => false,
    }
}

impl KernelRouteTable {
    /// One pipelined pass over `ops` (see the module comment).
    fn apply_once(&mut self, ops: &[RouteOp]) -> Result<Vec<OpFailure>, NetlinkError> {
        let mut failures = Vec::new();
        let mut in_flight: VecDeque<(u32, usize)> = VecDeque::with_capacity(WINDOW * 2);
        self.send_buf.clear();
        for (idx, op) in ops.iter().enumerate() {
            let msg = match self.encode(op)? {
                Ok(msg) => msg,
                Err(errno) => {
                    failures.push(OpFailure {
                        op: op.clone(),
                        errno,
                    });
                    continue;
                }
            };
            let (payload, flags) = match op {
                RouteOp::Add(_) => (
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                ),
                RouteOp::Replace(_) => (
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                ),
                RouteOp::Delete(_) => (RouteNetlinkMessage::DelRoute(msg), 0),
            };
            let seq = self.next_seq();
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | flags;
            header.sequence_number = seq;
            let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            nl.finalize();
            let len = nl.buffer_len();
            let start = self.send_buf.len();
            self.last_msg = start;
            // Netlink messages in one datagram start on 4-byte boundaries.
            self.send_buf.resize(start + len.next_multiple_of(4), 0);
            nl.serialize(&mut self.send_buf[start..start + len]);
            in_flight.push_back((seq, idx));

            if self.send_buf.len() >= CHUNK_BYTES {
                self.flush()?;
                self.collect_acks(&mut in_flight, WINDOW, ops, &mut failures)?;
            }
        }
        self.flush()?;
        self.collect_acks(&mut in_flight, 0, ops, &mut failures)?;
        Ok(failures)
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// A receive buffer of `rcvbuf` bytes (beyond the sysctl limit where we may), and receives
/// that give up after `timeout` (as `WouldBlock`).
pub(super) fn set_buffer_and_timeout(
    socket: &mut Socket,
    rcvbuf: usize,
    timeout: Duration,
) -> Result<(), NetlinkError> {
    setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &rcvbuf)
        .map_err(std::io::Error::from)
        .or_else(|_| socket.set_rx_buf_sz(rcvbuf))?;
    setsockopt(
        &socket.as_fd(),
        sockopt::ReceiveTimeout,
        &TimeVal::from(libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: 0,
        }),
    )
    .map_err(std::io::Error::from)?;
    Ok(())
}

/// Runs `open` on a short-lived thread inside the network namespace bound at `netns`: a
/// socket stays in the namespace it was created in, so the caller's thread never moves.
pub(super) fn in_netns<T: Send + 'static>(
    netns: &Path,
    open: fn() -> Result<T, NetlinkError>,
) -> Result<T, NetlinkError> {
    let path = netns.to_owned();
    let netns_err = |source: std::io::Error| NetlinkError::Netns {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(netns_err)?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        open().map_err(|e| std::io::Error::other(e.to_string()))
    })
    .join()
    .map_err(|_| netns_err(std::io::Error::other("netns thread panicked")))?
    .map_err(netns_err)
}

/// The destination of `msg` if it is one of tortie's routes (our protocol, main table).
pub(super) fn tortie_destination(msg: &RouteMessage) -> Option<IpNet> {
    let h = &msg.header;
    if h.protocol != RouteProtocol::Other(TORTIE_PROTO) {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip_of(a),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    match (h.address_family, dst) {
        (_, Some(a)) => IpNet::new(a, h.destination_prefix_length).ok(),
        (AddressFamily::Inet, None) => IpNet::new(IpAddr::from([0u8; 4]), 0).ok(),
        (AddressFamily::Inet6, None) => IpNet::new(IpAddr::from([0u16; 8]), 0).ok(),
        _ => None,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// Calls `f` on each netlink message in a received datagram.
pub(super) fn for_each_message(
    datagram: &[u8],
    mut f: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let mut off = 0;
    while off < datagram.len() {
        let rest = &datagram[off..];
        let buf =
            NetlinkBuffer::new_checked(rest).map_err(|e| NetlinkError::Decode(e.to_string()))?;
        let len = buf.length() as usize;
        if len == 0 || len > rest.len() {
            return Err(NetlinkError::Decode(format!("bad message length {len}")));
        }
        f(&rest[..len])?;
        off += len.next_multiple_of(4);
    }
    Ok(())
}
