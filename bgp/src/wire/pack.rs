//! Packing many prefixes that share one set of attributes into as few UPDATEs as fit in
//! 4096 octets each: what the speaker needs to send a full table quickly.

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;

use super::error::EncodeError;
use super::frame::finish_header;
use super::update::patch_len;
use super::{
    Codec, Family, HEADER_LEN, MARKER, MAX_MESSAGE_LEN, NextHop, PathAttributes, attr_code,
    attributes, flags, nlri,
};

const UPDATE_TYPE: u8 = 2;
/// Flags, code and a 2-octet length: the MP attributes always use Extended Length here,
/// because they usually exceed 255 octets.
const MP_ATTR_HEADER: usize = 4;

fn start_message(out: &mut BytesMut) -> usize {
    let start = out.len();
    out.put_slice(&MARKER);
    out.put_u16(0);
    out.put_u8(UPDATE_TYPE);
    start
}

/// Appends UPDATEs to `out` that announce every prefix in `prefixes` with `attrs`, and
/// returns how many messages it wrote.
///
/// IPv4 prefixes go in the classic NLRI field and need `attrs.next_hop`. IPv6 prefixes
/// go in MP_REACH_NLRI and take their next hop from `attrs.mp_reach` (its `nlri` is
/// ignored). `attrs.mp_unreach` is ignored. On error, `out` is left as it was.
pub fn pack_announce(
    attrs: &PathAttributes,
    prefixes: &[IpNet],
    codec: &Codec,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let start = out.len();
    let result = announce(attrs, prefixes, codec, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn announce(
    attrs: &PathAttributes,
    prefixes: &[IpNet],
    codec: &Codec,
    out: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let mut messages = 0;
    let v4 = prefixes.iter().filter(|p| matches!(p, IpNet::V4(_)));
    let v6 = prefixes.iter().filter(|p| matches!(p, IpNet::V6(_)));

    if v4.clone().next().is_some() {
        if attrs.next_hop.is_none() {
            return Err(EncodeError::MissingIpv4NextHop);
        }
        let mut block = BytesMut::new();
        let plain = PathAttributes {
            mp_reach: None,
            mp_unreach: None,
            ..attrs.clone()
        };
        attributes::encode(&plain, codec, true, &mut block)?;
        let fixed = HEADER_LEN + 4 + block.len();
        check_room(fixed)?;
        let mut v4 = v4.peekable();
        while v4.peek().is_some() {
            let msg = start_message(out);
            out.put_u16(0); // No withdrawn routes.
            out.put_u16(block.len() as u16);
            out.put_slice(&block);
            while let Some(p) =
                v4.next_if(|p| out.len() - msg + nlri::wire_len(p) <= MAX_MESSAGE_LEN)
            {
                nlri::write(p, out);
            }
            finish_header(out, msg)?;
            messages += 1;
        }
    }

    if v6.clone().next().is_some() {
        let next_hop = match attrs.mp_reach.as_ref().map(|m| m.next_hop) {
            Some(nh @ NextHop::V6 { .. }) => nh,
            _ => return Err(EncodeError::MissingNextHop("IPv6")),
        };
        let mut block = BytesMut::new();
        // RFC 4760 §3: NEXT_HOP has no place in an UPDATE without classic NLRI.
        let plain = PathAttributes {
            mp_reach: None,
            mp_unreach: None,
            next_hop: None,
            ..attrs.clone()
        };
        attributes::encode(&plain, codec, true, &mut block)?;
        let mut reach_head = Vec::with_capacity(40);
        attributes::write_mp_reach(Family::IPV6_UNICAST, &next_hop, &mut reach_head)?;
        let fixed = HEADER_LEN + 4 + MP_ATTR_HEADER + reach_head.len() + block.len();
        check_room(fixed)?;
        let mut v6 = v6.peekable();
        while v6.peek().is_some() {
            let msg = start_message(out);
            out.put_u16(0);
            let attr_len_at = out.len();
            out.put_u16(0);
            // MP_REACH_NLRI first (RFC 7606 §5.1), then the shared attributes.
            out.put_u8(flags::OPTIONAL | flags::EXTENDED_LENGTH);
            out.put_u8(attr_code::MP_REACH_NLRI);
            let reach_len_at = out.len();
            out.put_u16(0);
            out.put_slice(&reach_head);
            let budget = MAX_MESSAGE_LEN - block.len();
            while let Some(p) = v6.next_if(|p| out.len() - msg + nlri::wire_len(p) <= budget) {
                nlri::write(p, out);
            }
            patch_len(out, reach_len_at)?;
            out.put_slice(&block);
            patch_len(out, attr_len_at)?;
            finish_header(out, msg)?;
            messages += 1;
        }
    }
    Ok(messages)
}

/// Appends UPDATEs to `out` that withdraw every prefix in `prefixes`, and returns how many
/// messages it wrote.
pub fn pack_withdraw(prefixes: &[IpNet], out: &mut BytesMut) -> Result<usize, EncodeError> {
    let mut messages = 0;
    let mut v4 = prefixes
        .iter()
        .filter(|p| matches!(p, IpNet::V4(_)))
        .peekable();
    while v4.peek().is_some() {
        let msg = start_message(out);
        let withdrawn_len_at = out.len();
        out.put_u16(0);
        // Leave room for the Total Path Attribute Length that follows.
        while let Some(p) =
            v4.next_if(|p| out.len() - msg + nlri::wire_len(p) + 2 <= MAX_MESSAGE_LEN)
        {
            nlri::write(p, out);
        }
        patch_len(out, withdrawn_len_at)?;
        out.put_u16(0);
        finish_header(out, msg)?;
        messages += 1;
    }
    let mut v6 = prefixes
        .iter()
        .filter(|p| matches!(p, IpNet::V6(_)))
        .peekable();
    while v6.peek().is_some() {
        let msg = start_message(out);
        out.put_u16(0);
        let attr_len_at = out.len();
        out.put_u16(0);
        out.put_u8(flags::OPTIONAL | flags::EXTENDED_LENGTH);
        out.put_u8(attr_code::MP_UNREACH_NLRI);
        let unreach_len_at = out.len();
        out.put_u16(0);
        out.put_u16(Family::IPV6_UNICAST.afi.to_u16());
        out.put_u8(Family::IPV6_UNICAST.safi.to_u8());
        while let Some(p) = v6.next_if(|p| out.len() - msg + nlri::wire_len(p) <= MAX_MESSAGE_LEN) {
            nlri::write(p, out);
        }
        patch_len(out, unreach_len_at)?;
        patch_len(out, attr_len_at)?;
        finish_header(out, msg)?;
        messages += 1;
    }
    Ok(messages)
}

/// The largest prefix (a /128) takes 17 octets; the shared part must leave room for one.
fn check_room(fixed: usize) -> Result<(), EncodeError> {
    if fixed + 17 > MAX_MESSAGE_LEN {
        return Err(EncodeError::TooLong(fixed + 17));
    }
    Ok(())
}
