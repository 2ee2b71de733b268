//! Prefixes on the wire (RFC 4271 §4.3, RFC 4760 §5): a length in bits, then just enough
//! octets to hold that many bits.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::BufMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::reader::Reader;

/// Why a run of prefixes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NlriError {
    /// The length octet says more bits than the address family has.
    LengthTooLong(u8),
    /// The prefix runs past the end of its field.
    Truncated,
}

impl NlriError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            NlriError::LengthTooLong(_) => "prefix length longer than the address",
            NlriError::Truncated => "prefix runs past the end of its field",
        }
    }
}

fn octets_for(bits: u8) -> usize {
    usize::from(bits).div_ceil(8)
}

/// Bytes a prefix takes on the wire.
pub(crate) fn wire_len(prefix: &IpNet) -> usize {
    1 + octets_for(prefix.prefix_len())
}

/// Reads IPv4 prefixes until `buf` is used up, appending to `out`. Host bits beyond the
/// prefix length are cleared: RFC 4271 calls them irrelevant, and keeping them would make
/// two spellings of one prefix look different.
pub(crate) fn read_v4(buf: &[u8], out: &mut Vec<Ipv4Net>) -> Result<(), NlriError> {
    // A /24 takes 4 octets; reserving for that typical size avoids regrowth on big bursts.
    out.reserve(buf.len() / 4);
    let mut r = Reader::new(buf);
    while let Some(len) = r.u8() {
        if len > 32 {
            return Err(NlriError::LengthTooLong(len));
        }
        let bytes = r.take(octets_for(len)).ok_or(NlriError::Truncated)?;
        let mut octets = [0u8; 4];
        for (dst, src) in octets.iter_mut().zip(bytes) {
            *dst = *src;
        }
        let net =
            Ipv4Net::new(Ipv4Addr::from(octets), len).map_err(|_| NlriError::LengthTooLong(len))?;
        out.push(net.trunc());
    }
    Ok(())
}

/// Reads IPv6 prefixes until `buf` is used up, appending to `out`.
pub(crate) fn read_v6(buf: &[u8], out: &mut Vec<IpNet>) -> Result<(), NlriError> {
    out.reserve(buf.len() / 9);
    let mut r = Reader::new(buf);
    while let Some(len) = r.u8() {
        if len > 128 {
            return Err(NlriError::LengthTooLong(len));
        }
        let bytes = r.take(octets_for(len)).ok_or(NlriError::Truncated)?;
        let mut octets = [0u8; 16];
        for (dst, src) in octets.iter_mut().zip(bytes) {
            *dst = *src;
        }
        let net =
            Ipv6Net::new(Ipv6Addr::from(octets), len).map_err(|_| NlriError::LengthTooLong(len))?;
        out.push(IpNet::V6(net.trunc()));
    }
    Ok(())
}

/// Reads IPv4 prefixes as `IpNet` (IPv4 carried in MP_REACH/MP_UNREACH).
pub(crate) fn read_v4_as_ipnet(buf: &[u8], out: &mut Vec<IpNet>) -> Result<(), NlriError> {
    let mut v4 = Vec::new();
    read_v4(buf, &mut v4)?;
    out.extend(v4.into_iter().map(IpNet::V4));
    Ok(())
}

pub(crate) fn write_v4(prefix: &Ipv4Net, out: &mut impl BufMut) {
    let len = prefix.prefix_len();
    out.put_u8(len);
    let octets = prefix.network().octets();
    out.put_slice(octets.get(..octets_for(len)).unwrap_or(&octets));
}

pub(crate) fn write(prefix: &IpNet, out: &mut impl BufMut) {
    match prefix {
        IpNet::V4(p) => write_v4(p, out),
        IpNet::V6(p) => {
            let len = p.prefix_len();
            out.put_u8(len);
            let octets = p.network().octets();
            out.put_slice(octets.get(..octets_for(len)).unwrap_or(&octets));
        }
    }
}
