//! The BGP-4 wire codec: message types, framing, encoding and decoding.
//!
//! Everything here is pure: bytes in, values out (and back). No sockets, no clocks.
//!
//! - [`decode_frame`] takes a streaming receive buffer and returns the first whole message
//!   and how many bytes it used, or `None` when more bytes are needed.
//! - [`encode`] / [`encode_into`] turn a [`Message`] into bytes.
//! - [`pack_announce`] / [`pack_withdraw`] pack many prefixes that share one set of
//!   attributes into as few UPDATEs as fit in 4096 bytes each.
//!
//! Error handling follows RFC 7606. A decode error ([`DecodeError`]) always carries the
//! NOTIFICATION to send before closing the session. An UPDATE whose damage RFC 7606 lets us
//! contain decodes successfully, and [`Update::status`] says what was done to it
//! (attribute discard, or treat-as-withdraw, in which case the announced prefixes have
//! already been moved into the withdrawals).
//!
//! AS numbers are 4 octets everywhere in these types. The [`Codec`] holds what was
//! negotiated for one session: when the peer is 2-octet only (RFC 6793), AS_PATH is written
//! with AS_TRANS and an AS4_PATH, and read back by merging AS4_PATH into AS_PATH.
//!
//! Choices the RFCs leave open:
//! - A malformed MP_REACH_NLRI/MP_UNREACH_NLRI resets the session; we do not implement
//!   RFC 7606's "AFI/SAFI disable".
//! - MP attributes of families other than IPv4/IPv6 unicast are ignored (and reported as
//!   discarded); ADD-PATH, extended messages (RFC 8654) and extended next hop (RFC 8950)
//!   are neither advertised nor understood.
//! - The encoder writes MP_UNREACH_NLRI and MP_REACH_NLRI first (RFC 7606 §5.1), then the
//!   other attributes in ascending type order; it never sends RFC 9072 extended OPEN
//!   parameters, but reads them.
//! - Prefix host bits are cleared on decode, so one prefix has one spelling.

mod attributes;
mod error;
mod frame;
mod nlri;
mod notification;
mod open;
mod pack;
mod reader;
mod update;

#[cfg(test)]
mod exabgp_check;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

pub use error::{AttributeIssue, DecodeError, EncodeError};
pub use frame::{decode_frame, encode, encode_into};
pub use notification::{
    ErrorCode, cease, fsm_error, header_error, open_error, route_refresh_error, update_error,
};
pub use pack::{pack_announce, pack_withdraw};

/// Every BGP message starts with 16 octets of all ones (RFC 4271 §4.1).
pub const MARKER: [u8; 16] = [0xff; 16];
/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// The largest message RFC 4271 allows (we do not negotiate RFC 8654 extended messages).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The only BGP version there is.
pub const BGP_VERSION: u8 = 4;
/// The 2-octet stand-in for a 4-octet AS number (RFC 6793 §9).
pub const AS_TRANS: u16 = 23456;

/// Address Family Identifier (IANA). Only the ones tortie routes get names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
    Other(u16),
}

impl Afi {
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Afi::Ipv4,
            2 => Afi::Ipv6,
            other => Afi::Other(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
            Afi::Other(v) => v,
        }
    }
}

/// Subsequent Address Family Identifier (IANA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Safi {
    Unicast,
    Other(u8),
}

impl Safi {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Safi::Unicast,
            other => Safi::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Safi::Unicast => 1,
            Safi::Other(v) => v,
        }
    }
}

/// An AFI/SAFI pair: what a capability, an MP attribute or a route refresh is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family {
    pub afi: Afi,
    pub safi: Safi,
}

impl Family {
    pub const IPV4_UNICAST: Family = Family {
        afi: Afi::Ipv4,
        safi: Safi::Unicast,
    };
    pub const IPV6_UNICAST: Family = Family {
        afi: Afi::Ipv6,
        safi: Safi::Unicast,
    };

    pub fn new(afi: Afi, safi: Safi) -> Self {
        Family { afi, safi }
    }

    /// The unicast family a prefix belongs to.
    pub fn of(prefix: &IpNet) -> Self {
        match prefix {
            IpNet::V4(_) => Family::IPV4_UNICAST,
            IpNet::V6(_) => Family::IPV6_UNICAST,
        }
    }

    /// Whether this codec can carry prefixes of this family.
    pub fn is_known(self) -> bool {
        self == Family::IPV4_UNICAST || self == Family::IPV6_UNICAST
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.afi, self.safi) {
            (Afi::Ipv4, Safi::Unicast) => f.write_str("ipv4-unicast"),
            (Afi::Ipv6, Safi::Unicast) => f.write_str("ipv6-unicast"),
            (afi, safi) => write!(f, "afi {}/safi {}", afi.to_u16(), safi.to_u8()),
        }
    }
}

/// One BGP message.
// UPDATE is both the largest variant and by far the most common message, so boxing it
// would add an allocation per message and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    /// The type octet of the header (RFC 4271 §4.1, RFC 2918 §3).
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Open(_) => 1,
            Message::Update(_) => 2,
            Message::Notification(_) => 3,
            Message::Keepalive => 4,
            Message::RouteRefresh(_) => 5,
        }
    }
}

/// An OPEN message (RFC 4271 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The sender's real AS: from the 4-octet AS capability when present (RFC 6793),
    /// otherwise the 2-octet field. The encoder writes AS_TRANS into the 2-octet field
    /// when this does not fit; the caller must then include [`Capability::FourOctetAs`].
    pub my_as: u32,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    /// All capabilities, in order, from every Capabilities optional parameter (RFC 5492).
    pub capabilities: Vec<Capability>,
}

/// A capability advertised in OPEN (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Code 1, RFC 4760.
    Multiprotocol(Family),
    /// Code 2, RFC 2918.
    RouteRefresh,
    /// Code 64, RFC 4724.
    GracefulRestart(GracefulRestart),
    /// Code 65, RFC 6793.
    FourOctetAs(u32),
    /// Anything else, kept verbatim (and ignored: RFC 5492 §3).
    Unknown { code: u8, value: Vec<u8> },
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GracefulRestart {
    /// The R bit: the sender has restarted and its peer must not wait for its End-of-RIB
    /// before sending its own.
    pub restart_state: bool,
    /// The N bit of RFC 8538 (graceful restart for NOTIFICATION). Kept so that it is
    /// reported; tortie does not advertise it.
    pub notification: bool,
    /// Seconds, 12 bits.
    pub restart_time: u16,
    pub families: Vec<GracefulRestartFamily>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestartFamily {
    pub family: Family,
    /// The F bit: forwarding state for this family survived the restart.
    pub forwarding_preserved: bool,
}

/// An UPDATE message (RFC 4271 §4.3), with RFC 4760's MP attributes inside `attributes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attributes: PathAttributes,
    pub nlri: Vec<Ipv4Net>,
    /// What RFC 7606 made the decoder do to this message. Always [`UpdateStatus::Ok`] for
    /// updates built locally; the encoder ignores it.
    pub status: UpdateStatus,
}

/// The outcome of RFC 7606 error handling for an UPDATE that did not need a session reset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpdateStatus {
    #[default]
    Ok,
    /// Some malformed attributes were dropped (RFC 7606 §2 "attribute discard"); the
    /// rest of the UPDATE is good and must be processed normally.
    AttributeDiscard(Vec<AttributeIssue>),
    /// The UPDATE was malformed in a way that RFC 7606 §2 answers with "treat-as-withdraw".
    /// The decoder has already moved every announced prefix (NLRI and MP_REACH) into
    /// the withdrawals (`withdrawn` and `attributes.mp_unreach`) and cleared the other
    /// attributes, so processing the UPDATE as usual does the right thing.
    TreatAsWithdraw(AttributeIssue),
}

/// The ORIGIN attribute (RFC 4271 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// The kind of an AS_PATH segment (RFC 4271 §4.3, RFC 5065 for confederations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentType {
    Set = 1,
    Sequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: SegmentType,
    /// 1..=255 AS numbers (the wire limit per segment; the encoder splits longer runs).
    pub asns: Vec<u32>,
}

/// An AS_PATH, always with 4-octet AS numbers in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let asns: Vec<u32> = asns.into_iter().collect();
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    /// The path length used by best-path selection (RFC 4271 §9.1.2.2 a): a SET counts
    /// as one, confederation segments do not count (RFC 5065 §5.3).
    pub fn route_selection_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                SegmentType::ConfedSequence | SegmentType::ConfedSet => 0,
            })
            .sum()
    }

    /// Whether `asn` appears anywhere in the path (eBGP loop detection).
    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// The first AS of the path: the neighbouring AS for routes learned over eBGP.
    pub fn first_as(&self) -> Option<u32> {
        match self.segments.first() {
            Some(s) if s.kind == SegmentType::Sequence => s.asns.first().copied(),
            _ => None,
        }
    }

    /// Prepends `asn` the way a speaker does when advertising to an external peer
    /// (RFC 4271 §5.1.2).
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(s) if s.kind == SegmentType::Sequence && s.asns.len() < 255 => {
                s.asns.insert(0, asn)
            }
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: SegmentType::Sequence,
                    asns: vec![asn],
                },
            ),
        }
    }
}

/// The AGGREGATOR attribute (RFC 4271 §5.1.7), with a 4-octet AS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Aggregator {
    pub asn: u32,
    pub address: Ipv4Addr,
}

/// The path attributes of an UPDATE.
///
/// Attributes that RFC 4271 makes mandatory are `Option`s: an UPDATE that only withdraws
/// carries none of them. The decoder guarantees `origin`, `as_path` (and `next_hop` when
/// there is IPv4 NLRI) are present whenever the UPDATE announces something; otherwise it
/// treats the UPDATE as a withdraw.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    /// NEXT_HOP, for IPv4 NLRI in the classic NLRI field.
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<Aggregator>,
    /// RFC 1997 communities; empty when the attribute is absent (an empty attribute is
    /// malformed, RFC 7606 §7.8).
    pub communities: Vec<u32>,
    /// RFC 4456.
    pub originator_id: Option<Ipv4Addr>,
    /// RFC 4456; empty when absent (an empty attribute is malformed, RFC 7606 §7.10).
    pub cluster_list: Vec<Ipv4Addr>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Unrecognised optional transitive attributes, to be passed on. The decoder has
    /// already set their Partial bit (RFC 4271 §5); unrecognised non-transitive ones are
    /// dropped and never appear here.
    pub unknown: Vec<RawAttribute>,
}

/// MP_REACH_NLRI (RFC 4760 §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    pub family: Family,
    pub next_hop: NextHop,
    pub nlri: Vec<IpNet>,
}

/// The next hop carried in MP_REACH_NLRI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    V4(Ipv4Addr),
    /// RFC 2545 §3: a global address, optionally followed by the link-local address of
    /// the same interface (a 32-octet next hop).
    V6 {
        global: Ipv6Addr,
        link_local: Option<Ipv6Addr>,
    },
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<IpNet>,
}

/// An attribute this codec does not interpret, kept as it came.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// The flag octet, without the Extended Length bit (the encoder sets that from the
    /// length).
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// Attribute flag bits (RFC 4271 §4.3).
pub mod flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Path attribute type codes (IANA).
pub mod attr_code {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// A NOTIFICATION message (RFC 4271 §4.5). `code` and `subcode` stay raw octets because a
/// peer may send codes we do not know; see [`ErrorCode`] and the subcode modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// A ROUTE-REFRESH message (RFC 2918 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub family: Family,
}

/// What was negotiated for one session that changes how UPDATEs are written and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Both sides advertised the 4-octet AS capability (RFC 6793 §3): AS_PATH and
    /// AGGREGATOR carry 4-octet AS numbers and AS4_PATH/AS4_AGGREGATOR are not used.
    pub four_octet_as: bool,
    /// The peer is in another AS: LOCAL_PREF from it is discarded (RFC 7606 §7.5).
    pub external: bool,
}

impl Default for Codec {
    /// What holds before negotiation: 2-octet AS, internal peer.
    fn default() -> Self {
        Codec {
            four_octet_as: false,
            external: false,
        }
    }
}

impl Codec {
    /// The codec for a session, from both OPENs.
    pub fn negotiated(local: &Open, remote: &Open) -> Self {
        Codec {
            four_octet_as: local.four_octet_as().is_some() && remote.four_octet_as().is_some(),
            external: local.my_as != remote.my_as,
        }
    }
}
