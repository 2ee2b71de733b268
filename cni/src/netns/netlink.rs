//! A blocking rtnetlink socket: requests, acknowledgements and dumps. Blocking on purpose:
//! each socket lives on one thread (the plugin's main thread for the host namespace, a
//! worker that has `setns`'d for the pod's), so there is nothing to multiplex.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Large enough for one datagram of any dump the kernel sends (it caps them at 32 KiB).
const RECV_BUF: usize = 64 * 1024;

pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace (sockets keep the namespace
    /// they were created in, whatever the thread does later).
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn send(&mut self, msgs: Vec<(RouteNetlinkMessage, u16)>) -> io::Result<Vec<u32>> {
        let mut wire = Vec::new();
        let mut seqs = Vec::new();
        for (inner, flags) in msgs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | flags;
            header.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
            msg.finalize();
            let start = wire.len();
            wire.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut wire[start..]);
            seqs.push(self.seq);
        }
        self.socket.send(&wire, 0)?;
        Ok(seqs)
    }

    /// Reads replies until `done(seq, payload)` has seen what it waits for.
    fn receive(
        &mut self,
        mut on: impl FnMut(u32, NetlinkPayload<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<()> {
        loop {
            self.buf.clear();
            let n = self.socket.recv(&mut self.buf, 0)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad netlink reply: {e}"),
                        )
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if on(msg.header.sequence_number, msg.payload)? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends several requests in one datagram and waits for every acknowledgement: one
    /// round trip for, say, an address and two routes. The first failure is returned with
    /// the index of the request that caused it.
    pub fn batch(
        &mut self,
        msgs: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Result<(), (usize, io::Error)> {
        let seqs = self
            .send(msgs.into_iter().map(|(m, f)| (m, f | NLM_F_ACK)).collect())
            .map_err(|e| (0, e))?;
        let mut pending = seqs.len();
        let mut first_err: Option<(usize, io::Error)> = None;
        let result = self.receive(|seq, payload| {
            if let (Some(i), NetlinkPayload::Error(e)) =
                (seqs.iter().position(|&s| s == seq), payload)
            {
                if e.code.is_some() && first_err.is_none() {
                    first_err = Some((i, e.to_io()));
                }
                pending -= 1;
            }
            Ok(pending == 0)
        });
        result.map_err(|e| (0, e))?;
        first_err.map_or(Ok(()), Err)
    }

    /// One request, acknowledged.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.batch(vec![(msg, flags)]).map_err(|(_, e)| e)
    }

    /// A GET for one object: `Ok(None)` when the kernel says it does not exist (ENODEV).
    pub fn get(&mut self, msg: RouteNetlinkMessage) -> io::Result<Option<RouteNetlinkMessage>> {
        let seqs = self.send(vec![(msg, 0)])?;
        let mut found = None;
        let mut err = None;
        self.receive(|seq, payload| {
            if seq != seqs[0] {
                return Ok(false);
            }
            match payload {
                NetlinkPayload::InnerMessage(m) => {
                    found = Some(m);
                    Ok(true)
                }
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    err = Some(e.to_io());
                    Ok(true)
                }
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => Ok(true),
                _ => Ok(false),
            }
        })?;
        match err {
            Some(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// A dump: every message until NLMSG_DONE.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seqs = self.send(vec![(msg, NLM_F_DUMP)])?;
        let mut out = Vec::new();
        let mut err = None;
        self.receive(|seq, payload| {
            if seq != seqs[0] {
                return Ok(false);
            }
            match payload {
                NetlinkPayload::InnerMessage(m) => {
                    out.push(m);
                    Ok(false)
                }
                NetlinkPayload::Done(_) => Ok(true),
                NetlinkPayload::Error(e) => {
                    if e.code.is_some() {
                        err = Some(e.to_io());
                    }
                    Ok(true)
                }
                _ => Ok(false),
            }
        })?;
        err.map_or(Ok(out), Err)
    }
}
