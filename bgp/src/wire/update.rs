//! UPDATE messages (RFC 4271 §4.3) and End-of-RIB markers (RFC 4724 §2).

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;

use super::error::{AttributeIssue, DecodeError, EncodeError};
use super::reader::Reader;
use super::{
    Codec, ErrorCode, Family, MpUnreach, PathAttributes, Update, UpdateStatus, attr_code,
    attributes, nlri, update_error,
};

fn malformed_list(reason: &'static str) -> DecodeError {
    DecodeError::new(
        ErrorCode::UpdateMessage,
        update_error::MALFORMED_ATTRIBUTE_LIST,
        Vec::new(),
        reason,
    )
}

/// Decodes the body of an UPDATE (what follows the 19-octet header).
pub(crate) fn decode(body: &[u8], codec: &Codec) -> Result<Update, DecodeError> {
    // RFC 4271 §6.3: lengths that do not fit the message are a Malformed Attribute List;
    // RFC 7606 keeps that a session reset, since the NLRI cannot be found.
    let mut r = Reader::new(body);
    let withdrawn_len = r
        .u16()
        .ok_or_else(|| malformed_list("UPDATE too short for Withdrawn Routes Length"))?;
    let withdrawn_bytes = r
        .take(usize::from(withdrawn_len))
        .ok_or_else(|| malformed_list("Withdrawn Routes Length overruns the message"))?;
    let attr_len = r
        .u16()
        .ok_or_else(|| malformed_list("UPDATE too short for Total Path Attribute Length"))?;
    let attr_bytes = r
        .take(usize::from(attr_len))
        .ok_or_else(|| malformed_list("Total Path Attribute Length overruns the message"))?;
    let nlri_bytes = r.rest();

    let invalid_network = |e: nlri::NlriError| {
        DecodeError::new(
            ErrorCode::UpdateMessage,
            update_error::INVALID_NETWORK_FIELD,
            Vec::new(),
            e.reason(),
        )
    };
    let mut withdrawn = Vec::new();
    nlri::read_v4(withdrawn_bytes, &mut withdrawn).map_err(invalid_network)?;
    let mut announced = Vec::new();
    nlri::read_v4(nlri_bytes, &mut announced).map_err(invalid_network)?;

    let cx = attributes::Context {
        codec: *codec,
        classic_nlri: !announced.is_empty(),
    };
    let decoded = attributes::decode(attr_bytes, cx)?;
    let mut attrs = decoded.attrs;
    let mut withdraw = decoded.withdraw;

    if decoded.list_broken
        && announced.is_empty()
        && attrs.mp_reach.is_none()
        && attrs.mp_unreach.is_none()
    {
        // Treat-as-withdraw needs the NLRI (RFC 7606 §4), and an MP_REACH_NLRI may have
        // been lost in the part of the list we could not read.
        return Err(malformed_list(
            "attribute list overruns its length and the NLRI cannot be located",
        ));
    }

    // RFC 7606 §3: a missing well-known mandatory attribute means treat-as-withdraw.
    // NEXT_HOP is only mandatory for NLRI in the classic field (RFC 4760 §3).
    let mp_announces = attrs.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
    if !announced.is_empty() || mp_announces {
        let missing = if attrs.origin.is_none() {
            Some(attr_code::ORIGIN)
        } else if attrs.as_path.is_none() {
            Some(attr_code::AS_PATH)
        } else if !announced.is_empty() && attrs.next_hop.is_none() {
            Some(attr_code::NEXT_HOP)
        } else {
            None
        };
        if let Some(code) = missing {
            withdraw.get_or_insert(AttributeIssue {
                code,
                reason: "missing well-known mandatory attribute",
            });
        }
    }

    let status = if let Some(issue) = withdraw {
        withdrawn.append(&mut announced);
        let mut unreach = attrs.mp_unreach.take();
        if let Some(reach) = attrs.mp_reach.take() {
            match &mut unreach {
                None => {
                    unreach = Some(MpUnreach {
                        family: reach.family,
                        withdrawn: reach.nlri,
                    })
                }
                Some(u) if u.family == reach.family => u.withdrawn.extend(reach.nlri),
                Some(_) => {
                    // One UPDATE cannot withdraw two families through MP_UNREACH_NLRI, so
                    // this treat-as-withdraw cannot be expressed; escalate (RFC 7606 §3
                    // allows the stronger action).
                    return Err(DecodeError::new(
                        ErrorCode::UpdateMessage,
                        update_error::OPTIONAL_ATTRIBUTE_ERROR,
                        Vec::new(),
                        "treat-as-withdraw of an UPDATE that reaches and unreaches different families",
                    ));
                }
            }
        }
        attrs = PathAttributes {
            mp_unreach: unreach,
            ..PathAttributes::default()
        };
        UpdateStatus::TreatAsWithdraw(issue)
    } else if !decoded.discarded.is_empty() {
        UpdateStatus::AttributeDiscard(decoded.discarded)
    } else {
        UpdateStatus::Ok
    };

    Ok(Update {
        withdrawn,
        attributes: attrs,
        nlri: announced,
        status,
    })
}

/// Writes the body of an UPDATE.
pub(crate) fn encode(
    update: &Update,
    codec: &Codec,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !update.nlri.is_empty() && update.attributes.next_hop.is_none() {
        return Err(EncodeError::MissingIpv4NextHop);
    }
    let len_at = out.len();
    out.put_u16(0);
    for p in &update.withdrawn {
        nlri::write_v4(p, out);
    }
    patch_len(out, len_at)?;
    let len_at = out.len();
    out.put_u16(0);
    attributes::encode(&update.attributes, codec, false, out)?;
    patch_len(out, len_at)?;
    for p in &update.nlri {
        nlri::write_v4(p, out);
    }
    Ok(())
}

/// Fills in a 2-octet length at `at` with the number of bytes written after it.
pub(crate) fn patch_len(out: &mut BytesMut, at: usize) -> Result<(), EncodeError> {
    let len = out.len().saturating_sub(at + 2);
    let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong(len))?;
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&len16.to_be_bytes());
    }
    Ok(())
}

impl Update {
    /// The End-of-RIB marker for `family` (RFC 4724 §2): an empty UPDATE for IPv4
    /// unicast, otherwise an UPDATE with only an empty MP_UNREACH_NLRI.
    pub fn end_of_rib(family: Family) -> Update {
        if family == Family::IPV4_UNICAST {
            return Update::default();
        }
        Update {
            attributes: PathAttributes {
                mp_unreach: Some(MpUnreach {
                    family,
                    withdrawn: Vec::new(),
                }),
                ..PathAttributes::default()
            },
            ..Update::default()
        }
    }

    /// The family this UPDATE is the End-of-RIB marker of, if it is one. An UPDATE that
    /// RFC 7606 handling emptied out is not a marker.
    pub fn end_of_rib_family(&self) -> Option<Family> {
        if self.status != UpdateStatus::Ok || !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        let a = &self.attributes;
        match &a.mp_unreach {
            None if *a == PathAttributes::default() => Some(Family::IPV4_UNICAST),
            Some(un)
                if un.withdrawn.is_empty()
                    && *a
                        == PathAttributes {
                            mp_unreach: a.mp_unreach.clone(),
                            ..PathAttributes::default()
                        } =>
            {
                Some(un.family)
            }
            _ => None,
        }
    }

    /// Every prefix this UPDATE announces, IPv4 NLRI first, then MP_REACH_NLRI.
    pub fn announced(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.nlri.iter().map(|p| IpNet::V4(*p)).chain(
            self.attributes
                .mp_reach
                .iter()
                .flat_map(|m| m.nlri.iter().copied()),
        )
    }

    /// Every prefix this UPDATE withdraws, IPv4 withdrawn routes first, then
    /// MP_UNREACH_NLRI.
    pub fn withdrawals(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.withdrawn.iter().map(|p| IpNet::V4(*p)).chain(
            self.attributes
                .mp_unreach
                .iter()
                .flat_map(|m| m.withdrawn.iter().copied()),
        )
    }
}
