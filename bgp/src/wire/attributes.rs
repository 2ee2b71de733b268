//! Path attributes: decoding with RFC 7606 error handling, and encoding.
//!
//! Each malformed attribute gets the approach RFC 7606 §7 (or RFC 6793 §6 for the AS4_*
//! attributes) prescribes. When several apply, the strongest wins (RFC 7606 §3):
//! session reset > treat-as-withdraw > attribute discard.

use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;

use super::error::{AttributeIssue, DecodeError, EncodeError};
use super::reader::Reader;
use super::{
    AS_TRANS, Afi, Aggregator, AsPath, AsSegment, Codec, ErrorCode, Family, MpReach, MpUnreach,
    NextHop, Origin, PathAttributes, RawAttribute, Safi, SegmentType, attr_code as code, flags,
    nlri, update_error,
};

/// What decoding the attribute field produced.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) attrs: PathAttributes,
    pub(crate) discarded: Vec<AttributeIssue>,
    /// The first reason to treat the UPDATE as a withdraw, if any.
    pub(crate) withdraw: Option<AttributeIssue>,
    /// The attribute list itself was cut short (RFC 7606 §4): attributes after the break
    /// are unknown, and an MP_REACH_NLRI may have been among them.
    pub(crate) list_broken: bool,
}

/// How one malformed attribute is handled.
enum Fault {
    Discard(&'static str),
    Withdraw(&'static str),
    Reset(DecodeError),
}

/// The Optional and Transitive bits each known attribute must carry (RFC 4271 §5, RFC
/// 4456 §7-8, RFC 4760 §3-4, RFC 6793 §3, RFC 1997).
fn expected_flags(c: u8) -> Option<u8> {
    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_NON_TRANS: u8 = flags::OPTIONAL;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    Some(match c {
        code::ORIGIN
        | code::AS_PATH
        | code::NEXT_HOP
        | code::LOCAL_PREF
        | code::ATOMIC_AGGREGATE => WELL_KNOWN,
        code::MULTI_EXIT_DISC
        | code::ORIGINATOR_ID
        | code::CLUSTER_LIST
        | code::MP_REACH_NLRI
        | code::MP_UNREACH_NLRI => OPT_NON_TRANS,
        code::AGGREGATOR | code::COMMUNITIES | code::AS4_PATH | code::AS4_AGGREGATOR => OPT_TRANS,
        _ => return None,
    })
}

/// The whole attribute as it came (type, length, value): the Data of several
/// UPDATE Message Error NOTIFICATIONs (RFC 4271 §6.3).
fn attribute_bytes(flag: u8, c: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.push(flag);
    out.push(c);
    if flag & flags::EXTENDED_LENGTH != 0 {
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
    out
}

fn update_reset(subcode: u8, data: Vec<u8>, reason: &'static str) -> DecodeError {
    DecodeError::new(ErrorCode::UpdateMessage, subcode, data, reason)
}

/// What the rest of the UPDATE says that changes how an attribute is judged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub(crate) codec: Codec,
    /// The classic NLRI field is not empty. Without it NEXT_HOP means nothing and is
    /// ignored (RFC 4760 §3), so a bad one is discarded rather than withdrawing the
    /// MP_REACH_NLRI routes.
    pub(crate) classic_nlri: bool,
}

/// Decodes the Path Attributes field of an UPDATE.
pub(crate) fn decode(buf: &[u8], cx: Context) -> Result<Decoded, DecodeError> {
    let codec = &cx.codec;
    let mut d = Decoded::default();
    let mut seen = [false; 256];
    let mut as4_path: Option<AsPath> = None;
    let mut as4_aggregator: Option<Aggregator> = None;
    let mut r = Reader::new(buf);

    while !r.is_empty() {
        // RFC 7606 §4: a header or value that overruns the field means treat-as-withdraw,
        // relying on the Total Path Attribute Length to find the NLRI.
        let Some((flag, c, value)) = read_header(&mut r) else {
            d.list_broken = true;
            d.withdraw.get_or_insert(AttributeIssue {
                code: 0,
                reason: "attribute overruns the path attribute field",
            });
            break;
        };

        if std::mem::replace(&mut seen[usize::from(c)], true) {
            // RFC 7606 §3: a repeated MP attribute is a session reset, any other repeat is dropped.
            if c == code::MP_REACH_NLRI || c == code::MP_UNREACH_NLRI {
                return Err(update_reset(
                    update_error::MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                    "MP_REACH_NLRI or MP_UNREACH_NLRI appears twice",
                ));
            }
            d.discarded.push(AttributeIssue {
                code: c,
                reason: "repeated attribute",
            });
            continue;
        }

        let result = match expected_flags(c) {
            // RFC 7606 §3: wrong Optional/Transitive bits make the attribute malformed.
            Some(want) if flag & (flags::OPTIONAL | flags::TRANSITIVE) != want => {
                Err(malformed_flags(flag, c, value))
            }
            Some(_) => decode_known(
                flag,
                c,
                value,
                cx,
                &mut d.attrs,
                &mut as4_path,
                &mut as4_aggregator,
            ),
            None => decode_unknown(flag, c, value, &mut d.attrs),
        };
        match result {
            Ok(()) => {}
            Err(Fault::Discard(reason)) => d.discarded.push(AttributeIssue { code: c, reason }),
            Err(Fault::Withdraw(reason)) => {
                d.withdraw.get_or_insert(AttributeIssue { code: c, reason });
            }
            Err(Fault::Reset(e)) => return Err(e),
        }
    }

    if !codec.four_octet_as {
        merge_as4(&mut d, as4_path, as4_aggregator);
    }
    Ok(d)
}

fn read_header<'a>(r: &mut Reader<'a>) -> Option<(u8, u8, &'a [u8])> {
    let flag = r.u8()?;
    let c = r.u8()?;
    let len = if flag & flags::EXTENDED_LENGTH != 0 {
        usize::from(r.u16()?)
    } else {
        usize::from(r.u8()?)
    };
    Some((flag, c, r.take(len)?))
}

/// Flags that contradict the attribute type: the attribute is malformed and gets its own
/// approach (RFC 7606 §3).
fn malformed_flags(flag: u8, c: u8, value: &[u8]) -> Fault {
    match c {
        code::ATOMIC_AGGREGATE | code::AGGREGATOR | code::AS4_PATH | code::AS4_AGGREGATOR => {
            Fault::Discard("attribute flags contradict the attribute type")
        }
        code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => Fault::Reset(update_reset(
            update_error::ATTRIBUTE_FLAGS_ERROR,
            attribute_bytes(flag, c, value),
            "MP_REACH_NLRI/MP_UNREACH_NLRI flags contradict the attribute type",
        )),
        _ => Fault::Withdraw("attribute flags contradict the attribute type"),
    }
}

fn decode_unknown(flag: u8, c: u8, value: &[u8], attrs: &mut PathAttributes) -> Result<(), Fault> {
    if flag & flags::OPTIONAL == 0 {
        // RFC 4271 §6.3; RFC 7606 does not soften this one.
        return Err(Fault::Reset(update_reset(
            update_error::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            attribute_bytes(flag, c, value),
            "unrecognized well-known attribute",
        )));
    }
    if flag & flags::TRANSITIVE != 0 {
        // RFC 4271 §5: pass it on, marked as not understood by every speaker on the way.
        attrs.unknown.push(RawAttribute {
            flags: (flag | flags::PARTIAL) & !flags::EXTENDED_LENGTH,
            code: c,
            value: value.to_vec(),
        });
    }
    Ok(())
}

fn four(value: &[u8]) -> Option<[u8; 4]> {
    value.try_into().ok()
}

fn decode_known(
    flag: u8,
    c: u8,
    value: &[u8],
    cx: Context,
    attrs: &mut PathAttributes,
    as4_path: &mut Option<AsPath>,
    as4_aggregator: &mut Option<Aggregator>,
) -> Result<(), Fault> {
    let codec = &cx.codec;
    match c {
        // RFC 7606 §7.1.
        code::ORIGIN => {
            attrs.origin = Some(match value {
                [0] => Origin::Igp,
                [1] => Origin::Egp,
                [2] => Origin::Incomplete,
                _ => return Err(Fault::Withdraw("ORIGIN is not one octet of 0, 1 or 2")),
            });
        }
        // RFC 7606 §7.2.
        code::AS_PATH => {
            let width = if codec.four_octet_as { 4 } else { 2 };
            let path = read_as_path(value, width)
                .ok_or(Fault::Withdraw("AS_PATH is malformed or holds AS 0"))?;
            // tortie is in no confederation, so an external peer cannot share one with
            // us: confederation segments from it are malformed (RFC 7606 §7.2).
            if codec.external
                && path
                    .segments
                    .iter()
                    .any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet))
            {
                return Err(Fault::Withdraw(
                    "AS_PATH from an external peer has confederation segments",
                ));
            }
            attrs.as_path = Some(path);
        }
        // RFC 7606 §7.3. An address that can never be a next hop is a semantic error
        // (RFC 4271 §6.3) and also gets treat-as-withdraw.
        code::NEXT_HOP => {
            let fault = if cx.classic_nlri {
                Fault::Withdraw
            } else {
                Fault::Discard
            };
            let addr = Ipv4Addr::from(four(value).ok_or(fault("NEXT_HOP is not 4 octets"))?);
            if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
                return Err(fault("NEXT_HOP is not a unicast address"));
            }
            attrs.next_hop = Some(addr);
        }
        // RFC 7606 §7.4.
        code::MULTI_EXIT_DISC => {
            let v = four(value).ok_or(Fault::Withdraw("MULTI_EXIT_DISC is not 4 octets"))?;
            attrs.med = Some(u32::from_be_bytes(v));
        }
        // RFC 7606 §7.5.
        code::LOCAL_PREF => {
            if codec.external {
                return Err(Fault::Discard("LOCAL_PREF from an external peer"));
            }
            let v = four(value).ok_or(Fault::Withdraw("LOCAL_PREF is not 4 octets"))?;
            attrs.local_pref = Some(u32::from_be_bytes(v));
        }
        // RFC 7606 §7.6.
        code::ATOMIC_AGGREGATE => {
            if !value.is_empty() {
                return Err(Fault::Discard("ATOMIC_AGGREGATE is not empty"));
            }
            attrs.atomic_aggregate = true;
        }
        // RFC 7606 §7.7.
        code::AGGREGATOR => {
            let width = if codec.four_octet_as { 4 } else { 2 };
            attrs.aggregator = Some(
                read_aggregator(value, width)
                    .ok_or(Fault::Discard("AGGREGATOR has the wrong length or AS 0"))?,
            );
        }
        // RFC 7606 §7.8.
        code::COMMUNITIES => {
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return Err(Fault::Withdraw(
                    "COMMUNITIES is not a non-zero multiple of 4 octets",
                ));
            }
            attrs.communities = value
                .chunks_exact(4)
                .filter_map(four)
                .map(u32::from_be_bytes)
                .collect();
        }
        // RFC 7606 §7.9.
        code::ORIGINATOR_ID => {
            let v = four(value).ok_or(Fault::Withdraw("ORIGINATOR_ID is not 4 octets"))?;
            attrs.originator_id = Some(Ipv4Addr::from(v));
        }
        // RFC 7606 §7.10.
        code::CLUSTER_LIST => {
            if value.is_empty() || !value.len().is_multiple_of(4) {
                return Err(Fault::Withdraw(
                    "CLUSTER_LIST is not a non-zero multiple of 4 octets",
                ));
            }
            attrs.cluster_list = value
                .chunks_exact(4)
                .filter_map(four)
                .map(Ipv4Addr::from)
                .collect();
        }
        // RFC 7606 §7.11 and RFC 4760 §7: we do not implement "AFI/SAFI disable", so a
        // malformed MP attribute resets the session, with Optional Attribute Error.
        code::MP_REACH_NLRI => {
            attrs.mp_reach = read_mp_reach(value).map_err(|reason| {
                Fault::Reset(update_reset(
                    update_error::OPTIONAL_ATTRIBUTE_ERROR,
                    attribute_bytes(flag, c, value),
                    reason,
                ))
            })?;
            if attrs.mp_reach.is_none() {
                // Not an error, but reported: an UPDATE that only carried it must not
                // look like an IPv4 End-of-RIB.
                return Err(Fault::Discard(
                    "MP_REACH_NLRI of a family tortie does not carry",
                ));
            }
        }
        code::MP_UNREACH_NLRI => {
            attrs.mp_unreach = read_mp_unreach(value).map_err(|reason| {
                Fault::Reset(update_reset(
                    update_error::OPTIONAL_ATTRIBUTE_ERROR,
                    attribute_bytes(flag, c, value),
                    reason,
                ))
            })?;
            if attrs.mp_unreach.is_none() {
                return Err(Fault::Discard(
                    "MP_UNREACH_NLRI of a family tortie does not carry",
                ));
            }
        }
        // RFC 6793 §6: a NEW speaker never sends these to a NEW speaker, so from a
        // 4-octet peer they are discarded; malformed ones are discarded too.
        code::AS4_PATH => {
            if codec.four_octet_as {
                return Err(Fault::Discard("AS4_PATH from a 4-octet AS peer"));
            }
            let path = read_as_path(value, 4)
                .ok_or(Fault::Discard("AS4_PATH is malformed or holds AS 0"))?;
            if path
                .segments
                .iter()
                .any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet))
            {
                return Err(Fault::Discard("AS4_PATH carries confederation segments"));
            }
            *as4_path = Some(path);
        }
        code::AS4_AGGREGATOR => {
            if codec.four_octet_as {
                return Err(Fault::Discard("AS4_AGGREGATOR from a 4-octet AS peer"));
            }
            *as4_aggregator = Some(read_aggregator(value, 4).ok_or(Fault::Discard(
                "AS4_AGGREGATOR is not 8 octets or holds AS 0",
            ))?);
        }
        _ => {}
    }
    Ok(())
}

/// Reads AS_PATH segments with `width`-octet AS numbers. `None` for a segment of an
/// unknown type, an empty segment, or one that overruns the attribute (RFC 7606 §7.2),
/// and for AS 0 (RFC 7607 §2).
fn read_as_path(value: &[u8], width: usize) -> Option<AsPath> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8()? {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        };
        let count = usize::from(r.u8()?);
        if count == 0 {
            return None;
        }
        let body = r.take(count * width)?;
        let asns: Vec<u32> = if width == 4 {
            body.chunks_exact(4)
                .filter_map(four)
                .map(u32::from_be_bytes)
                .collect()
        } else {
            body.chunks_exact(2)
                .map(|b| b.iter().fold(0u32, |acc, x| acc << 8 | u32::from(*x)))
                .collect()
        };
        if asns.contains(&0) {
            return None;
        }
        segments.push(AsSegment { kind, asns });
    }
    Some(AsPath { segments })
}

fn read_aggregator(value: &[u8], width: usize) -> Option<Aggregator> {
    if value.len() != width + 4 {
        return None;
    }
    let mut r = Reader::new(value);
    let asn = if width == 4 {
        r.u32()?
    } else {
        u32::from(r.u16()?)
    };
    if asn == 0 {
        // RFC 7607 §2.
        return None;
    }
    Some(Aggregator {
        asn,
        address: Ipv4Addr::from(r.array::<4>()?),
    })
}

/// RFC 4760 §3. `Ok(None)` for a family this codec does not carry: it was not
/// negotiated, so its routes are ignored rather than misread.
fn read_mp_reach(value: &[u8]) -> Result<Option<MpReach>, &'static str> {
    const SHORT: &str = "MP_REACH_NLRI is truncated";
    let mut r = Reader::new(value);
    let afi = Afi::from_u16(r.u16().ok_or(SHORT)?);
    let safi = Safi::from_u8(r.u8().ok_or(SHORT)?);
    let nh_len = usize::from(r.u8().ok_or(SHORT)?);
    let nh = r.take(nh_len).ok_or(SHORT)?;
    // The old SNPA count (RFC 2858), now Reserved; ignored on receipt (RFC 4760 §3).
    r.u8().ok_or(SHORT)?;
    let family = Family::new(afi, safi);
    let mut nlri = Vec::new();
    let next_hop = match (afi, safi) {
        (Afi::Ipv4, Safi::Unicast) => {
            let nh = four(nh).ok_or("IPv4 MP_REACH_NLRI next hop is not 4 octets")?;
            nlri::read_v4_as_ipnet(r.rest(), &mut nlri).map_err(|e| e.reason())?;
            NextHop::V4(Ipv4Addr::from(nh))
        }
        (Afi::Ipv6, Safi::Unicast) => {
            // RFC 2545 §3: 16 octets global, or 32 with the link-local address after it.
            let global: [u8; 16] = nh
                .get(..16)
                .and_then(|b| b.try_into().ok())
                .ok_or("IPv6 MP_REACH_NLRI next hop is not 16 or 32 octets")?;
            let link_local = match nh.len() {
                16 => None,
                32 => {
                    let ll: [u8; 16] = nh
                        .get(16..)
                        .and_then(|b| b.try_into().ok())
                        .ok_or("IPv6 MP_REACH_NLRI next hop is not 16 or 32 octets")?;
                    Some(Ipv6Addr::from(ll))
                }
                _ => return Err("IPv6 MP_REACH_NLRI next hop is not 16 or 32 octets"),
            };
            nlri::read_v6(r.rest(), &mut nlri).map_err(|e| e.reason())?;
            NextHop::V6 {
                global: Ipv6Addr::from(global),
                link_local,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(MpReach {
        family,
        next_hop,
        nlri,
    }))
}

/// RFC 4760 §4.
fn read_mp_unreach(value: &[u8]) -> Result<Option<MpUnreach>, &'static str> {
    const SHORT: &str = "MP_UNREACH_NLRI is truncated";
    let mut r = Reader::new(value);
    let afi = Afi::from_u16(r.u16().ok_or(SHORT)?);
    let safi = Safi::from_u8(r.u8().ok_or(SHORT)?);
    let family = Family::new(afi, safi);
    let mut withdrawn = Vec::new();
    match (afi, safi) {
        (Afi::Ipv4, Safi::Unicast) => {
            nlri::read_v4_as_ipnet(r.rest(), &mut withdrawn).map_err(|e| e.reason())?
        }
        (Afi::Ipv6, Safi::Unicast) => {
            nlri::read_v6(r.rest(), &mut withdrawn).map_err(|e| e.reason())?
        }
        _ => return Ok(None),
    }
    Ok(Some(MpUnreach { family, withdrawn }))
}

/// How many AS numbers a path counts for the RFC 6793 §4.2.3 merge: as for path length,
/// a SET counts once and confederation segments not at all.
fn count_asns(path: &AsPath) -> usize {
    path.route_selection_len()
}

/// RFC 6793 §4.2.3: rebuild the real AS path and aggregator from a 2-octet peer's
/// AS_PATH/AGGREGATOR and the AS4_PATH/AS4_AGGREGATOR that OLD speakers passed through.
fn merge_as4(d: &mut Decoded, as4_path: Option<AsPath>, as4_aggregator: Option<Aggregator>) {
    // Without an AGGREGATOR, an AS4_AGGREGATOR means nothing and is ignored.
    if let (Some(agg), Some(agg4)) = (&mut d.attrs.aggregator, as4_aggregator) {
        if agg.asn != u32::from(AS_TRANS) {
            // An OLD speaker aggregated after the AS4_* attributes were added: both are
            // stale and ignored.
            return;
        }
        *agg = agg4;
    }
    let (Some(as4), Some(path)) = (as4_path, d.attrs.as_path.as_mut()) else {
        return;
    };
    let have = count_asns(path);
    let want = count_asns(&as4);
    if have < want {
        d.discarded.push(AttributeIssue {
            code: code::AS4_PATH,
            reason: "AS4_PATH is longer than AS_PATH",
        });
        return;
    }
    let mut needed = have - want;
    let mut merged: Vec<AsSegment> = Vec::with_capacity(path.segments.len() + as4.segments.len());
    for seg in &path.segments {
        let confed = matches!(
            seg.kind,
            SegmentType::ConfedSequence | SegmentType::ConfedSet
        );
        if needed == 0 && !confed {
            break;
        }
        match seg.kind {
            SegmentType::Sequence => {
                let take = needed.min(seg.asns.len());
                merged.push(AsSegment {
                    kind: SegmentType::Sequence,
                    asns: seg.asns.iter().take(take).copied().collect(),
                });
                needed -= take;
            }
            SegmentType::Set => {
                merged.push(seg.clone());
                needed -= 1;
            }
            SegmentType::ConfedSequence | SegmentType::ConfedSet => merged.push(seg.clone()),
        }
    }
    // Where the kept head and AS4_PATH meet, two sequences become one again.
    let mut tail = as4.segments.into_iter();
    if let Some(first) = tail.next() {
        match merged.last_mut() {
            Some(last)
                if last.kind == SegmentType::Sequence
                    && first.kind == SegmentType::Sequence
                    && last.asns.len() + first.asns.len() <= 255 =>
            {
                last.asns.extend(first.asns)
            }
            _ => merged.push(first),
        }
    }
    merged.extend(tail);
    path.segments = merged;
}

/// Appends one attribute, choosing the Extended Length bit from the value's size.
pub(crate) fn put_attr(out: &mut BytesMut, flag: u8, c: u8, value: &[u8]) {
    if value.len() > 255 {
        out.put_u8(flag | flags::EXTENDED_LENGTH);
        out.put_u8(c);
        out.put_u16(value.len() as u16);
    } else {
        out.put_u8(flag & !flags::EXTENDED_LENGTH);
        out.put_u8(c);
        out.put_u8(value.len() as u8);
    }
    out.put_slice(value);
}

fn write_as_path(path: &AsPath, width: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    for seg in &path.segments {
        if seg.asns.is_empty() {
            return Err(EncodeError::BadSegment(0));
        }
        // Longer runs are split: a segment holds at most 255 AS numbers.
        for chunk in seg.asns.chunks(255) {
            out.push(seg.kind as u8);
            out.push(chunk.len() as u8);
            for &asn in chunk {
                if width == 4 {
                    out.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let two = u16::try_from(asn).unwrap_or(AS_TRANS);
                    out.extend_from_slice(&two.to_be_bytes());
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn write_mp_reach(
    reach_family: Family,
    next_hop: &NextHop,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.extend_from_slice(&reach_family.afi.to_u16().to_be_bytes());
    out.push(reach_family.safi.to_u8());
    match (reach_family, next_hop) {
        (f, NextHop::V4(a)) if f == Family::IPV4_UNICAST => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        (f, NextHop::V6 { global, link_local }) if f == Family::IPV6_UNICAST => match link_local {
            Some(ll) => {
                out.push(32);
                out.extend_from_slice(&global.octets());
                out.extend_from_slice(&ll.octets());
            }
            None => {
                out.push(16);
                out.extend_from_slice(&global.octets());
            }
        },
        (f, _) if f == Family::IPV4_UNICAST => return Err(EncodeError::MissingNextHop("IPv4")),
        (f, _) if f == Family::IPV6_UNICAST => return Err(EncodeError::MissingNextHop("IPv6")),
        _ => return Err(EncodeError::FamilyMismatch("MP_REACH_NLRI")),
    }
    out.push(0); // Reserved.
    Ok(())
}

fn check_prefix_family(family: Family, prefix: &IpNet) -> Result<(), EncodeError> {
    if Family::of(prefix) == family {
        Ok(())
    } else {
        Err(EncodeError::FamilyMismatch("an MP attribute"))
    }
}

/// Writes all attributes. MP_UNREACH_NLRI and MP_REACH_NLRI come first (RFC 7606 §5.1 asks for that,
/// so that a receiver can always find the NLRI), then the rest in ascending type order
/// (RFC 4271 §5), unknown ones merged in by code. With `skip_mp_reach`, MP_REACH_NLRI is
/// left out so that the packer can append its own.
pub(crate) fn encode(
    attrs: &PathAttributes,
    codec: &Codec,
    skip_mp_reach: bool,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut scratch = Vec::new();
    if let Some(un) = &attrs.mp_unreach {
        scratch.extend_from_slice(&un.family.afi.to_u16().to_be_bytes());
        scratch.push(un.family.safi.to_u8());
        for p in &un.withdrawn {
            check_prefix_family(un.family, p)?;
            nlri::write(p, &mut scratch);
        }
        put_attr(out, flags::OPTIONAL, code::MP_UNREACH_NLRI, &scratch);
    }
    if let (Some(reach), false) = (&attrs.mp_reach, skip_mp_reach) {
        scratch.clear();
        write_mp_reach(reach.family, &reach.next_hop, &mut scratch)?;
        for p in &reach.nlri {
            check_prefix_family(reach.family, p)?;
            nlri::write(p, &mut scratch);
        }
        put_attr(out, flags::OPTIONAL, code::MP_REACH_NLRI, &scratch);
    }

    let mut unknown: Vec<&RawAttribute> = attrs
        .unknown
        .iter()
        .filter(|a| expected_flags(a.code).is_none())
        .collect();
    unknown.sort_by_key(|a| a.code);
    let mut unknown = unknown.into_iter().peekable();
    let mut flush_below = |limit: u16, out: &mut BytesMut| {
        while let Some(a) = unknown.next_if(|a| u16::from(a.code) < limit) {
            put_attr(out, a.flags, a.code, &a.value);
        }
    };

    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    let width = if codec.four_octet_as { 4 } else { 2 };

    if let Some(origin) = attrs.origin {
        flush_below(code::ORIGIN.into(), out);
        put_attr(out, WELL_KNOWN, code::ORIGIN, &[origin as u8]);
    }
    let mut as4_path = None;
    if let Some(path) = &attrs.as_path {
        flush_below(code::AS_PATH.into(), out);
        scratch.clear();
        write_as_path(path, width, &mut scratch)?;
        put_attr(out, WELL_KNOWN, code::AS_PATH, &scratch);
        // RFC 6793 §4.2.2: only when some AS number did not fit in 2 octets; AS4_PATH
        // never carries confederation segments.
        if width == 2
            && path
                .segments
                .iter()
                .any(|s| s.asns.iter().any(|&a| a > 0xffff))
        {
            as4_path = Some(AsPath {
                segments: path
                    .segments
                    .iter()
                    .filter(|s| matches!(s.kind, SegmentType::Sequence | SegmentType::Set))
                    .cloned()
                    .collect(),
            });
        }
    }
    if let Some(nh) = attrs.next_hop {
        flush_below(code::NEXT_HOP.into(), out);
        put_attr(out, WELL_KNOWN, code::NEXT_HOP, &nh.octets());
    }
    if let Some(med) = attrs.med {
        flush_below(code::MULTI_EXIT_DISC.into(), out);
        put_attr(
            out,
            flags::OPTIONAL,
            code::MULTI_EXIT_DISC,
            &med.to_be_bytes(),
        );
    }
    if let Some(lp) = attrs.local_pref {
        flush_below(code::LOCAL_PREF.into(), out);
        put_attr(out, WELL_KNOWN, code::LOCAL_PREF, &lp.to_be_bytes());
    }
    if attrs.atomic_aggregate {
        flush_below(code::ATOMIC_AGGREGATE.into(), out);
        put_attr(out, WELL_KNOWN, code::ATOMIC_AGGREGATE, &[]);
    }
    let mut as4_aggregator = None;
    if let Some(agg) = attrs.aggregator {
        flush_below(code::AGGREGATOR.into(), out);
        scratch.clear();
        if width == 4 {
            scratch.extend_from_slice(&agg.asn.to_be_bytes());
        } else {
            let two = u16::try_from(agg.asn).unwrap_or(AS_TRANS);
            scratch.extend_from_slice(&two.to_be_bytes());
            if agg.asn > 0xffff {
                as4_aggregator = Some(agg);
            }
        }
        scratch.extend_from_slice(&agg.address.octets());
        put_attr(out, OPT_TRANS, code::AGGREGATOR, &scratch);
    }
    if !attrs.communities.is_empty() {
        flush_below(code::COMMUNITIES.into(), out);
        scratch.clear();
        for c in &attrs.communities {
            scratch.extend_from_slice(&c.to_be_bytes());
        }
        put_attr(out, OPT_TRANS, code::COMMUNITIES, &scratch);
    }
    if let Some(id) = attrs.originator_id {
        flush_below(code::ORIGINATOR_ID.into(), out);
        put_attr(out, flags::OPTIONAL, code::ORIGINATOR_ID, &id.octets());
    }
    if !attrs.cluster_list.is_empty() {
        flush_below(code::CLUSTER_LIST.into(), out);
        scratch.clear();
        for id in &attrs.cluster_list {
            scratch.extend_from_slice(&id.octets());
        }
        put_attr(out, flags::OPTIONAL, code::CLUSTER_LIST, &scratch);
    }
    if let Some(path) = as4_path {
        flush_below(code::AS4_PATH.into(), out);
        scratch.clear();
        write_as_path(&path, 4, &mut scratch)?;
        put_attr(out, OPT_TRANS, code::AS4_PATH, &scratch);
    }
    if let Some(agg) = as4_aggregator {
        flush_below(code::AS4_AGGREGATOR.into(), out);
        scratch.clear();
        scratch.extend_from_slice(&agg.asn.to_be_bytes());
        scratch.extend_from_slice(&agg.address.octets());
        put_attr(out, OPT_TRANS, code::AS4_AGGREGATOR, &scratch);
    }
    flush_below(u16::MAX, out);
    Ok(())
}
