//! [`RouteDeletions`]: the kernel's announcements that one of tortie's routes was deleted.
//!
//! Someone running `ip route del` on a pod's route cuts that pod off until the reconciler
//! notices. The periodic resync would, but only after minutes; the kernel announces each
//! explicit deletion on the route multicast groups, so the reconciler can put the route
//! back at once (Calico's Felix reacts to the same messages).
//!
//! The kernel flushes the routes of a device that goes away without announcing each one;
//! those need no repair (the pod is gone), and the periodic resync still covers anything
//! this misses, including announcements lost to a full socket buffer (ENOBUFS).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::NetlinkError;
use super::kernel::{for_each_message, in_netns, set_buffer_and_timeout, tortie_destination};

/// `RTNLGRP_IPV4_ROUTE` and `RTNLGRP_IPV6_ROUTE` (linux/rtnetlink.h).
const GROUPS: [u32; 2] = [7, 11];
/// `RTM_DELROUTE`, the only announcement we want: a socket filter drops the others.
const RTM_DELROUTE: u16 = 25;
/// Room for the deletions of a burst.
const RCVBUF: usize = 1024 * 1024;
/// How long [`RouteDeletions::wait`] waits, so that its reader can notice it should stop.
const WAIT: Duration = Duration::from_secs(1);

/// A socket subscribed to the kernel's route announcements.
pub struct RouteDeletions {
    socket: Socket,
    buf: Vec<u8>,
}

impl RouteDeletions {
    /// Subscribes in the calling thread's network namespace.
    pub fn open() -> Result<RouteDeletions, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, 0))?;
        for group in GROUPS {
            socket.add_membership(group)?;
        }
        keep_only_deletions(&socket)?;
        set_buffer_and_timeout(&mut socket, RCVBUF, WAIT)?;
        Ok(RouteDeletions {
            socket,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Subscribes in the network namespace bound at `netns`.
    pub fn open_in_netns(netns: &Path) -> Result<RouteDeletions, NetlinkError> {
        in_netns(netns, RouteDeletions::open)
    }

    /// Waits up to a second for the next announcements and returns the tortie routes they
    /// say were deleted (often none).
    pub fn wait(&mut self) -> Result<Vec<IpNet>, NetlinkError> {
        self.buf.clear();
        match self.socket.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Vec::new()),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::debug!("route announcements overflowed; the periodic resync covers them");
                return Ok(Vec::new());
            }
            Err(e) => return Err(NetlinkError::Io(e)),
        }
        let mut deleted = Vec::new();
        for_each_message(&self.buf, |bytes| {
            if netlink_packet_core::NetlinkBuffer::new(bytes).message_type() != RTM_DELROUTE {
                return Ok(());
            }
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .map_err(|e| NetlinkError::Decode(e.to_string()))?;
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(route)) = msg.payload
                && let Some(dst) = tortie_destination(&route)
            {
                deleted.push(dst);
            }
            Ok(())
        })?;
        Ok(deleted)
    }
}

/// Has the kernel drop every announcement but `RTM_DELROUTE` before it reaches our socket.
/// Every route added is announced too: while a full BGP table loads, reading and discarding
/// those half a million messages took this thread a core's worth of time, and cost the
/// load about a fifth of its rate (`scripts/lab bench bgp`).
#[allow(unsafe_code)]
fn keep_only_deletions(socket: &Socket) -> Result<(), NetlinkError> {
    // Classic BPF loads halfwords big-endian; the netlink header is in host order.
    let delroute = u16::from_be_bytes(RTM_DELROUTE.to_ne_bytes());
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut program = [
        // A = nlmsg_type (offset 4 in struct nlmsghdr)
        op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 4),
        // keep the whole message if it is RTM_DELROUTE, else drop it
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            u32::from(delroute),
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` and the `program` it points at outlive the call, `optlen` is the
    // size of `fprog`, and the kernel copies the program before returning.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(NetlinkError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}
