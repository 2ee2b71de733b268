//! TCP MD5 signatures (RFC 2385) through Linux's `TCP_MD5SIG` socket option.
//!
//! The key is set on the listening socket once per peer address (the kernel then signs
//! and checks the connections accepted from that address) and on each outgoing socket
//! before `connect`. A peer with a wrong or missing password never completes the TCP
//! handshake: the kernel drops its segments.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// `TCP_MD5SIG_MAXKEYLEN`.
pub const MAX_KEY_LEN: usize = 80;

/// Byte layout of Linux's `struct tcp_md5sig`: a `sockaddr_storage` (128 octets), flags,
/// prefix length, key length (u16), ifindex (i32), then the key.
const ADDR_LEN: usize = 128;
const KEYLEN_AT: usize = ADDR_LEN + 2;
const KEY_AT: usize = ADDR_LEN + 8;
const STRUCT_LEN: usize = KEY_AT + MAX_KEY_LEN;

/// Builds the `tcp_md5sig` bytes for `peer` on a socket of family `v6_socket`. An IPv4
/// peer on an IPv6 socket is given as an IPv4-mapped address, as the kernel expects.
fn md5sig(peer: IpAddr, v6_socket: bool, key: &[u8]) -> io::Result<[u8; STRUCT_LEN]> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 key is {} bytes, the kernel takes at most {MAX_KEY_LEN}",
                key.len()
            ),
        ));
    }
    let mut buf = [0u8; STRUCT_LEN];
    let v6_addr = match (peer, v6_socket) {
        (IpAddr::V4(a), false) => {
            buf[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            // sin_port stays 0; sin_addr is at offset 4.
            buf[4..8].copy_from_slice(&a.octets());
            None
        }
        (IpAddr::V4(a), true) => Some(a.to_ipv6_mapped()),
        (IpAddr::V6(a), _) => Some(a),
    };
    if let Some(a) = v6_addr {
        buf[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        // sin6_port and sin6_flowinfo stay 0; sin6_addr is at offset 8.
        buf[8..24].copy_from_slice(&a.octets());
    }
    // Fits: checked against MAX_KEY_LEN above.
    let keylen = key.len() as u16;
    buf[KEYLEN_AT..KEYLEN_AT + 2].copy_from_slice(&keylen.to_ne_bytes());
    buf[KEY_AT..KEY_AT + key.len()].copy_from_slice(key);
    Ok(buf)
}

/// Sets (or, with an empty key, removes) the MD5 key for `peer` on `socket`.
pub fn set_md5_key(
    socket: &impl AsRawFd,
    v6_socket: bool,
    peer: IpAddr,
    key: &[u8],
) -> io::Result<()> {
    let sig = md5sig(peer, v6_socket, key)?;
    setsockopt_md5(socket.as_raw_fd(), &sig)
}

#[allow(unsafe_code)]
fn setsockopt_md5(fd: std::os::fd::RawFd, sig: &[u8; STRUCT_LEN]) -> io::Result<()> {
    // SAFETY: `fd` is a live socket borrowed from its owner for the duration of the call;
    // the kernel reads exactly `STRUCT_LEN` bytes from `sig`, which is that long and laid
    // out as `struct tcp_md5sig`; the kernel does not keep the pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            sig.as_ptr().cast::<libc::c_void>(),
            STRUCT_LEN as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn layout_matches_struct_tcp_md5sig() {
        let sig = md5sig(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), false, b"secret")
            .unwrap_or([0; STRUCT_LEN]);
        assert_eq!(STRUCT_LEN, 216);
        assert_eq!(u16::from_ne_bytes([sig[0], sig[1]]), libc::AF_INET as u16);
        assert_eq!(&sig[4..8], &[10, 0, 0, 2]);
        assert_eq!(u16::from_ne_bytes([sig[130], sig[131]]), 6);
        assert_eq!(&sig[136..142], b"secret");

        let sig =
            md5sig(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), true, b"k").unwrap_or([0; STRUCT_LEN]);
        assert_eq!(u16::from_ne_bytes([sig[0], sig[1]]), libc::AF_INET6 as u16);
        assert_eq!(
            &sig[8..24],
            &Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets()
        );
        assert!(md5sig(IpAddr::V6(Ipv6Addr::LOCALHOST), true, &[0; 81]).is_err());
    }

    #[test]
    fn the_kernel_accepts_the_key() {
        // An unbound socket is enough: the key is stored on the socket, and nothing is
        // sent anywhere.
        let socket = tokio::net::TcpSocket::new_v4();
        let socket = match socket {
            Ok(s) => s,
            Err(e) => panic!("cannot create a TCP socket: {e}"),
        };
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
        assert!(set_md5_key(&socket, false, peer, b"secret").is_ok());
        assert!(set_md5_key(&socket, false, peer, b"").is_ok());
        // The wrong family is refused: the return code is checked.
        assert!(set_md5_key(&socket, true, peer, b"secret").is_err());
    }
}
