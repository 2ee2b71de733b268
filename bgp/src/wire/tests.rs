//! Codec tests: hand-built byte vectors from the RFCs (some in `bgp/testdata/wire/`),
//! RFC 7606 outcomes for malformed input, the packer, and a property-based round trip.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;

use super::*;

const AS4: Codec = Codec {
    four_octet_as: true,
    external: false,
};
const AS2: Codec = Codec {
    four_octet_as: false,
    external: false,
};

fn v4(s: &str) -> Ipv4Net {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Parses a `.hex` test vector: `#` comments, hex octets separated by white space.
fn hex_file(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/wire")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|e| panic!("{name}: {b:?}: {e}")))
        .collect()
}

/// Decodes exactly one whole message from `bytes`.
fn decode_one(bytes: &[u8], codec: &Codec) -> Result<Message, DecodeError> {
    match decode_frame(bytes, codec)? {
        Some((m, used)) => {
            assert_eq!(
                used,
                bytes.len(),
                "the message length field disagrees with the bytes"
            );
            Ok(m)
        }
        None => panic!("a whole message decoded as incomplete"),
    }
}

/// Checks that `name` decodes to `want` and that `want` encodes to the same octets.
fn golden(name: &str, codec: &Codec, want: Message) {
    let bytes = hex_file(name);
    let got = decode_one(&bytes, codec).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(got, want, "{name}: decoded value");
    let encoded = encode(&want, codec).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(encoded, bytes, "{name}: re-encoded octets");
}

fn header(len: u16, kind: u8) -> Vec<u8> {
    let mut m = MARKER.to_vec();
    m.extend_from_slice(&len.to_be_bytes());
    m.push(kind);
    m
}

/// Builds an UPDATE from raw withdrawn, attribute and NLRI fields.
fn raw_update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let len = 19 + 2 + withdrawn.len() + 2 + attrs.len() + nlri.len();
    let mut m = header(len as u16, 2);
    m.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    m.extend_from_slice(withdrawn);
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(attrs);
    m.extend_from_slice(nlri);
    m
}

const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH_EMPTY: [u8; 3] = [0x40, 2, 0];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
const NLRI_203: [u8; 4] = [24, 203, 0, 113];

fn update_of(bytes: &[u8], codec: &Codec) -> Result<Update, DecodeError> {
    match decode_one(bytes, codec)? {
        Message::Update(u) => Ok(u),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

fn notification_of(result: Result<Update, DecodeError>) -> (u8, u8) {
    match result {
        Ok(u) => panic!("expected a session reset, got {u:?}"),
        Err(e) => (e.notification.code, e.notification.subcode),
    }
}

// ---------------------------------------------------------------- golden vectors

#[test]
fn keepalive() {
    golden("keepalive.hex", &AS4, Message::Keepalive);
}

#[test]
fn open_with_four_octet_as_and_graceful_restart() {
    let want = Open::new(
        4_200_000_001,
        90,
        ip("10.0.0.1"),
        vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::Multiprotocol(Family::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(4_200_000_001),
            Capability::GracefulRestart(GracefulRestart {
                restart_state: true,
                notification: false,
                restart_time: 120,
                families: vec![
                    GracefulRestartFamily {
                        family: Family::IPV4_UNICAST,
                        forwarding_preserved: true,
                    },
                    GracefulRestartFamily {
                        family: Family::IPV6_UNICAST,
                        forwarding_preserved: false,
                    },
                ],
            }),
        ],
    );
    golden("open-as4-gr.hex", &AS2, Message::Open(want.clone()));
    assert_eq!(
        want.families(),
        vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
    );
    assert!(want.route_refresh());
    assert_eq!(want.graceful_restart().map(|g| g.restart_time), Some(120));
}

fn all_attributes() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence([65001, 4_200_000_000, 65002])),
        next_hop: Some(ip("192.0.2.1")),
        med: Some(100),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 65001,
            address: ip("192.0.2.9"),
        }),
        communities: vec![0xfde9_0064, 0xffff_ff01],
        originator_id: Some(ip("10.0.0.2")),
        cluster_list: vec![ip("10.0.0.3"), ip("10.0.0.4")],
        mp_reach: None,
        mp_unreach: None,
        unknown: vec![RawAttribute {
            flags: flags::OPTIONAL | flags::TRANSITIVE | flags::PARTIAL,
            code: 32,
            value: vec![0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2],
        }],
    }
}

#[test]
fn update_with_every_ipv4_attribute() {
    let want = Update {
        withdrawn: vec![v4("172.16.0.0/12"), v4("0.0.0.0/0")],
        attributes: all_attributes(),
        nlri: vec![v4("10.0.0.0/8"), v4("192.168.1.0/26"), v4("192.168.2.1/32")],
        status: UpdateStatus::Ok,
    };
    golden(
        "update-ipv4-all-attributes.hex",
        &AS4,
        Message::Update(want),
    );
}

#[test]
fn two_octet_peer_gets_as_trans_and_as4_path() {
    let want = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence([65001, 4_200_000_000])),
            next_hop: Some(ip("192.0.2.1")),
            aggregator: Some(Aggregator {
                asn: 4_200_000_000,
                address: ip("192.0.2.9"),
            }),
            ..PathAttributes::default()
        },
        nlri: vec![v4("198.51.100.0/24")],
        ..Update::default()
    };
    golden("update-as2-with-as4-path.hex", &AS2, Message::Update(want));
}

#[test]
fn ipv6_mp_reach_with_link_local_next_hop() {
    let want = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            local_pref: Some(100),
            mp_reach: Some(MpReach {
                family: Family::IPV6_UNICAST,
                next_hop: NextHop::V6 {
                    global: ip6("2001:db8::1"),
                    link_local: Some(ip6("fe80::1")),
                },
                nlri: vec![net("2001:db8:1::/48"), net("2001:db8:2:3::/64")],
            }),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    golden(
        "update-ipv6-mp-reach.hex",
        &AS4,
        Message::Update(want.clone()),
    );
    assert_eq!(
        want.announced().collect::<Vec<_>>(),
        vec![net("2001:db8:1::/48"), net("2001:db8:2:3::/64")]
    );
}

#[test]
fn ipv6_mp_unreach() {
    let want = Update {
        attributes: PathAttributes {
            mp_unreach: Some(MpUnreach {
                family: Family::IPV6_UNICAST,
                withdrawn: vec![net("2001:db8:1::/48"), net("2001:db8::5/128")],
            }),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    golden(
        "update-ipv6-mp-unreach.hex",
        &AS4,
        Message::Update(want.clone()),
    );
    assert_eq!(want.end_of_rib_family(), None);
    assert_eq!(want.withdrawals().count(), 2);
}

#[test]
fn end_of_rib_markers() {
    golden(
        "eor-ipv4.hex",
        &AS4,
        Message::Update(Update::end_of_rib(Family::IPV4_UNICAST)),
    );
    golden(
        "eor-ipv6.hex",
        &AS4,
        Message::Update(Update::end_of_rib(Family::IPV6_UNICAST)),
    );
    for family in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
        assert_eq!(Update::end_of_rib(family).end_of_rib_family(), Some(family));
    }
    let announce = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            ..PathAttributes::default()
        },
        ..Update::default()
    };
    assert_eq!(announce.end_of_rib_family(), None);
}

#[test]
fn route_refresh() {
    golden(
        "route-refresh-ipv6.hex",
        &AS4,
        Message::RouteRefresh(RouteRefresh {
            family: Family::IPV6_UNICAST,
        }),
    );
}

#[test]
fn notification_with_shutdown_communication() {
    let want = Notification::cease_with_message(cease::ADMINISTRATIVE_SHUTDOWN, "maintenance");
    golden(
        "notification-shutdown.hex",
        &AS4,
        Message::Notification(want.clone()),
    );
    assert_eq!(want.shutdown_message(), Some("maintenance"));
    assert_eq!(
        want.to_string(),
        "Cease/Administrative Shutdown (\"maintenance\")"
    );
    let collision = Notification::cease(cease::CONNECTION_COLLISION_RESOLUTION);
    assert_eq!(
        collision.to_string(),
        "Cease/Connection Collision Resolution"
    );
    assert_eq!(
        Notification {
            code: 9,
            subcode: 9,
            data: vec![]
        }
        .to_string(),
        "error code 9/subcode 9"
    );
}

#[test]
fn shutdown_communication_is_cut_on_a_character_boundary() {
    let long = "é".repeat(100); // 200 octets
    let n = Notification::cease_with_message(cease::ADMINISTRATIVE_RESET, &long);
    assert_eq!(n.data.first().copied(), Some(128));
    assert_eq!(n.shutdown_message().map(|s| s.chars().count()), Some(64));
}

// ---------------------------------------------------------------- RFC 6793 merge

#[test]
fn as4_path_merge_keeps_ases_prepended_by_old_speakers() {
    // An OLD speaker (AS 64999) prepended itself after the NEW one built AS4_PATH, so
    // AS_PATH is one AS longer: that leading AS is kept, the rest comes from AS4_PATH.
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&ORIGIN_IGP);
    attrs.extend_from_slice(&[0x40, 2, 8, 2, 3, 0xfd, 0xe7, 0xfd, 0xe9, 0x5b, 0xa0]);
    attrs.extend_from_slice(&NEXT_HOP);
    attrs.extend_from_slice(&[0xc0, 17, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0xfa, 0x56, 0xea, 0x00]);
    let u = update_of(&raw_update(&[], &attrs, &NLRI_203), &AS2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.status, UpdateStatus::Ok);
    assert_eq!(
        u.attributes.as_path,
        Some(AsPath::sequence([64999, 65001, 4_200_000_000]))
    );
}

#[test]
fn as4_path_is_ignored_when_an_old_speaker_aggregated() {
    // AGGREGATOR with a real 2-octet AS: AS4_PATH and AS4_AGGREGATOR are stale (RFC 6793
    // §4.2.3).
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&ORIGIN_IGP);
    attrs.extend_from_slice(&[0x40, 2, 4, 2, 1, 0x5b, 0xa0]);
    attrs.extend_from_slice(&NEXT_HOP);
    attrs.extend_from_slice(&[0xc0, 7, 6, 0xfd, 0xe8, 192, 0, 2, 9]);
    attrs.extend_from_slice(&[0xc0, 17, 6, 2, 1, 0xfa, 0x56, 0xea, 0x00]);
    attrs.extend_from_slice(&[0xc0, 18, 8, 0xfa, 0x56, 0xea, 0x00, 192, 0, 2, 9]);
    let u = update_of(&raw_update(&[], &attrs, &NLRI_203), &AS2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.attributes.as_path, Some(AsPath::sequence([23456])));
    assert_eq!(
        u.attributes.aggregator,
        Some(Aggregator {
            asn: 65000,
            address: ip("192.0.2.9")
        })
    );
}

#[test]
fn as4_path_from_a_four_octet_peer_is_discarded() {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&ORIGIN_IGP);
    attrs.extend_from_slice(&[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9]);
    attrs.extend_from_slice(&NEXT_HOP);
    attrs.extend_from_slice(&[0xc0, 17, 6, 2, 1, 0xfa, 0x56, 0xea, 0x00]);
    let u = update_of(&raw_update(&[], &attrs, &NLRI_203), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.attributes.as_path, Some(AsPath::sequence([65001])));
    assert!(
        matches!(&u.status, UpdateStatus::AttributeDiscard(v) if v[0].code == attr_code::AS4_PATH)
    );
    assert_eq!(u.nlri, vec![v4("203.0.113.0/24")]);
}

#[test]
fn as_path_longer_than_255_is_split_into_segments() {
    let long: Vec<u32> = (1..=300).collect();
    let u = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::sequence(long.clone())),
            next_hop: Some(ip("192.0.2.1")),
            ..PathAttributes::default()
        },
        nlri: vec![v4("10.1.0.0/16")],
        ..Update::default()
    };
    let bytes = encode(&Message::Update(u), &AS4).unwrap_or_else(|e| panic!("{e}"));
    let back = update_of(&bytes, &AS4).unwrap_or_else(|e| panic!("{e}"));
    let path = back.attributes.as_path.unwrap_or_default();
    assert_eq!(path.segments.len(), 2);
    assert_eq!(path.route_selection_len(), 300);
    assert_eq!(
        path.segments
            .iter()
            .flat_map(|s| s.asns.iter().copied())
            .collect::<Vec<_>>(),
        long
    );
}

#[test]
fn as_path_helpers() {
    let mut p = AsPath::sequence([65002]);
    p.prepend(65001);
    assert_eq!(p, AsPath::sequence([65001, 65002]));
    assert_eq!(p.first_as(), Some(65001));
    assert!(p.contains(65002) && !p.contains(65003));
    p.segments.push(AsSegment {
        kind: SegmentType::Set,
        asns: vec![1, 2, 3],
    });
    p.segments.push(AsSegment {
        kind: SegmentType::ConfedSequence,
        asns: vec![4, 5],
    });
    assert_eq!(p.route_selection_len(), 3);
}

// ---------------------------------------------------------------- RFC 7606 outcomes

#[test]
fn undefined_origin_is_treat_as_withdraw() {
    let u =
        update_of(&hex_file("update-malformed-origin.hex"), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(&u.status, UpdateStatus::TreatAsWithdraw(i) if i.code == attr_code::ORIGIN));
    assert_eq!(u.withdrawn, vec![v4("203.0.113.0/24")]);
    assert!(u.nlri.is_empty());
    assert_eq!(u.attributes, PathAttributes::default());
    assert_eq!(
        u.end_of_rib_family(),
        None,
        "an emptied UPDATE is not an End-of-RIB"
    );
}

#[test]
fn bad_mp_next_hop_length_resets_with_optional_attribute_error() {
    let bytes = hex_file("update-malformed-mp-next-hop.hex");
    let e = update_of(&bytes, &AS4).err();
    let n = e
        .map(|e| e.notification)
        .unwrap_or_else(|| panic!("expected a session reset"));
    assert_eq!(
        (n.code, n.subcode),
        (3, update_error::OPTIONAL_ATTRIBUTE_ERROR)
    );
    // The data is the attribute as received (RFC 4271 §6.3).
    assert_eq!(n.data, bytes[23..23 + 3 + 32]);
}

#[test]
fn missing_mandatory_attributes_are_treat_as_withdraw() {
    let cases: [(&[&[u8]], u8); 3] = [
        (&[&AS_PATH_EMPTY, &NEXT_HOP], attr_code::ORIGIN),
        (&[&ORIGIN_IGP, &NEXT_HOP], attr_code::AS_PATH),
        (&[&ORIGIN_IGP, &AS_PATH_EMPTY], attr_code::NEXT_HOP),
    ];
    for (parts, missing) in cases {
        let attrs: Vec<u8> = parts.concat();
        let u =
            update_of(&raw_update(&[], &attrs, &NLRI_203), &AS4).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&u.status, UpdateStatus::TreatAsWithdraw(i) if i.code == missing),
            "missing {missing}: {:?}",
            u.status
        );
        assert_eq!(u.withdrawn, vec![v4("203.0.113.0/24")]);
    }
}

#[test]
fn ipv6_only_update_needs_no_next_hop_attribute() {
    let mut attrs = vec![0x80, 14, 26, 0, 2, 1, 16];
    attrs.extend_from_slice(&ip6("2001:db8::1").octets());
    attrs.extend_from_slice(&[0, 32, 0x20, 0x01, 0x0d, 0xb8]);
    attrs.extend_from_slice(&ORIGIN_IGP);
    attrs.extend_from_slice(&AS_PATH_EMPTY);
    let u = update_of(&raw_update(&[], &attrs, &[]), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.status, UpdateStatus::Ok);
    assert_eq!(
        u.announced().collect::<Vec<_>>(),
        vec![net("2001:db8::/32")]
    );
}

#[test]
fn malformed_ipv6_announcement_becomes_mp_unreach() {
    // MP_REACH fine, ORIGIN missing: the IPv6 prefix must be withdrawn.
    let mut attrs = vec![0x80, 14, 26, 0, 2, 1, 16];
    attrs.extend_from_slice(&ip6("2001:db8::1").octets());
    attrs.extend_from_slice(&[0, 32, 0x20, 0x01, 0x0d, 0xb8]);
    attrs.extend_from_slice(&AS_PATH_EMPTY);
    let u = update_of(&raw_update(&[], &attrs, &[]), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(u.status, UpdateStatus::TreatAsWithdraw(_)));
    assert_eq!(u.attributes.mp_reach, None);
    assert_eq!(
        u.attributes.mp_unreach,
        Some(MpUnreach {
            family: Family::IPV6_UNICAST,
            withdrawn: vec![net("2001:db8::/32")]
        })
    );
}

/// One attribute appended to a valid ORIGIN/AS_PATH/NEXT_HOP set, and what RFC 7606 does.
#[test]
fn attribute_faults() {
    #[derive(Debug)]
    enum Want {
        Discard(u8),
        Withdraw(u8),
        Reset(u8),
        Ok,
    }
    let cases: Vec<(&str, Vec<u8>, Codec, Want)> = vec![
        (
            "ATOMIC_AGGREGATE with a value",
            vec![0x40, 6, 1, 0],
            AS4,
            Want::Discard(6),
        ),
        (
            "AGGREGATOR of 7 octets",
            vec![0xc0, 7, 7, 0, 0, 0, 1, 1, 2, 3],
            AS4,
            Want::Discard(7),
        ),
        (
            "AGGREGATOR with AS 0",
            vec![0xc0, 7, 8, 0, 0, 0, 0, 1, 2, 3, 4],
            AS4,
            Want::Discard(7),
        ),
        (
            "AS4_PATH with AS 0",
            vec![0xc0, 17, 6, 2, 1, 0, 0, 0, 0],
            AS2,
            Want::Discard(17),
        ),
        (
            "AGGREGATOR 4-octet to a 2-octet codec",
            vec![0xc0, 7, 8, 0, 0, 0, 1, 1, 2, 3, 4],
            AS2,
            Want::Discard(7),
        ),
        (
            "COMMUNITIES of 3 octets",
            vec![0xc0, 8, 3, 1, 2, 3],
            AS4,
            Want::Withdraw(8),
        ),
        (
            "empty COMMUNITIES",
            vec![0xc0, 8, 0],
            AS4,
            Want::Withdraw(8),
        ),
        (
            "MED of 2 octets",
            vec![0x80, 4, 2, 0, 1],
            AS4,
            Want::Withdraw(4),
        ),
        (
            "LOCAL_PREF of 5 octets",
            vec![0x40, 5, 5, 0, 0, 0, 0, 1],
            AS4,
            Want::Withdraw(5),
        ),
        (
            "LOCAL_PREF from an external peer",
            vec![0x40, 5, 4, 0, 0, 0, 100],
            Codec {
                four_octet_as: true,
                external: true,
            },
            Want::Discard(5),
        ),
        (
            "ORIGINATOR_ID of 3 octets",
            vec![0x80, 9, 3, 1, 2, 3],
            AS4,
            Want::Withdraw(9),
        ),
        (
            "CLUSTER_LIST of 6 octets",
            vec![0x80, 10, 6, 1, 2, 3, 4, 5, 6],
            AS4,
            Want::Withdraw(10),
        ),
        (
            "MED flagged well-known",
            vec![0x40, 4, 4, 0, 0, 0, 1],
            AS4,
            Want::Withdraw(4),
        ),
        (
            "AGGREGATOR flagged non-transitive",
            vec![0x80, 7, 8, 0, 0, 0, 1, 1, 2, 3, 4],
            AS4,
            Want::Discard(7),
        ),
        (
            "repeated ORIGIN",
            vec![0x40, 1, 1, 2],
            AS4,
            Want::Discard(1),
        ),
        (
            "unrecognized well-known attribute",
            vec![0x40, 99, 1, 0],
            AS4,
            Want::Reset(update_error::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE),
        ),
        (
            "MP_REACH flagged transitive",
            vec![0xc0, 14, 3, 0, 2, 1],
            AS4,
            Want::Reset(update_error::ATTRIBUTE_FLAGS_ERROR),
        ),
        (
            "truncated MP_UNREACH",
            vec![0x80, 15, 2, 0, 2],
            AS4,
            Want::Reset(update_error::OPTIONAL_ATTRIBUTE_ERROR),
        ),
        (
            "MP_UNREACH prefix too long",
            vec![0x80, 15, 5, 0, 2, 1, 129, 0],
            AS4,
            Want::Reset(update_error::OPTIONAL_ATTRIBUTE_ERROR),
        ),
        (
            "unknown optional non-transitive",
            vec![0x80, 99, 2, 1, 2],
            AS4,
            Want::Ok,
        ),
        (
            "MP_REACH of an unknown family",
            vec![0x80, 14, 9, 0, 25, 70, 4, 1, 2, 3, 4, 0],
            AS4,
            Want::Discard(14),
        ),
    ];
    for (what, extra, codec, want) in cases {
        let attrs = [&ORIGIN_IGP[..], &AS_PATH_EMPTY, &NEXT_HOP, &extra].concat();
        let got = update_of(&raw_update(&[], &attrs, &NLRI_203), &codec);
        match (&want, &got) {
            (Want::Discard(code), Ok(u)) => {
                assert!(
                    matches!(&u.status, UpdateStatus::AttributeDiscard(v) if v.iter().any(|i| i.code == *code)),
                    "{what}: {:?}",
                    u.status
                );
                assert_eq!(
                    u.nlri,
                    vec![v4("203.0.113.0/24")],
                    "{what}: the route survives"
                );
            }
            (Want::Withdraw(code), Ok(u)) => {
                assert!(
                    matches!(&u.status, UpdateStatus::TreatAsWithdraw(i) if i.code == *code),
                    "{what}: {:?}",
                    u.status
                );
                assert_eq!(u.withdrawn, vec![v4("203.0.113.0/24")], "{what}");
                assert!(u.nlri.is_empty(), "{what}");
            }
            (Want::Reset(subcode), Err(e)) => {
                assert_eq!(
                    (e.notification.code, e.notification.subcode),
                    (3, *subcode),
                    "{what}: {e}"
                )
            }
            (Want::Ok, Ok(u)) => {
                assert_eq!(u.status, UpdateStatus::Ok, "{what}");
                assert!(u.attributes.unknown.is_empty(), "{what}");
                assert_eq!(u.attributes.mp_reach, None, "{what}");
                assert_eq!(u.nlri, vec![v4("203.0.113.0/24")], "{what}");
            }
            _ => panic!("{what}: wanted {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn unknown_optional_transitive_is_kept_with_partial_bit() {
    let attrs = [
        &ORIGIN_IGP[..],
        &AS_PATH_EMPTY,
        &NEXT_HOP,
        &[0xc0, 99, 2, 0xab, 0xcd],
    ]
    .concat();
    let u = update_of(&raw_update(&[], &attrs, &NLRI_203), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        u.attributes.unknown,
        vec![RawAttribute {
            flags: 0xe0,
            code: 99,
            value: vec![0xab, 0xcd]
        }]
    );
    // Passed on: re-encoded with the Partial bit (RFC 4271 §5).
    let bytes = encode(&Message::Update(u), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert!(bytes.windows(5).any(|w| w == [0xe0, 99, 2, 0xab, 0xcd]));
}

#[test]
fn malformed_as_paths_are_treat_as_withdraw() {
    let paths: [&[u8]; 5] = [
        &[0x40, 2, 4, 2, 1, 0, 0],    // AS 0 (RFC 7607)
        &[0x40, 2, 2, 2, 0],          // empty segment
        &[0x40, 2, 4, 7, 1, 0, 1],    // segment type 7
        &[0x40, 2, 4, 2, 2, 0, 1],    // segment overruns the attribute
        &[0x40, 2, 5, 2, 1, 0, 1, 2], // trailing octet
    ];
    for path in paths {
        let attrs = [&ORIGIN_IGP[..], path, &NEXT_HOP].concat();
        let u =
            update_of(&raw_update(&[], &attrs, &NLRI_203), &AS2).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&u.status, UpdateStatus::TreatAsWithdraw(i) if i.code == 2),
            "{path:?}: {:?}",
            u.status
        );
    }
}

#[test]
fn next_hop_that_is_not_unicast_is_treat_as_withdraw() {
    for nh in [[0, 0, 0, 0], [224, 0, 0, 1], [255, 255, 255, 255]] {
        let attrs = [&ORIGIN_IGP[..], &AS_PATH_EMPTY, &[0x40, 3, 4], &nh].concat();
        let u =
            update_of(&raw_update(&[], &attrs, &NLRI_203), &AS4).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(&u.status, UpdateStatus::TreatAsWithdraw(i) if i.code == 3),
            "{nh:?}"
        );
    }
}

#[test]
fn attribute_list_overrun() {
    // The last attribute claims more octets than are left: with IPv4 NLRI to withdraw this
    // is treat-as-withdraw (RFC 7606 §4) ...
    let attrs = [
        &ORIGIN_IGP[..],
        &AS_PATH_EMPTY,
        &NEXT_HOP,
        &[0xc0, 8, 8, 0, 0],
    ]
    .concat();
    let u = update_of(&raw_update(&[], &attrs, &NLRI_203), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(u.status, UpdateStatus::TreatAsWithdraw(_)));
    assert_eq!(u.withdrawn, vec![v4("203.0.113.0/24")]);
    // ... as is a tail too short for an attribute header ...
    let attrs = [&ORIGIN_IGP[..], &AS_PATH_EMPTY, &NEXT_HOP, &[0xc0, 8]].concat();
    let u = update_of(&raw_update(&[], &attrs, &NLRI_203), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(u.status, UpdateStatus::TreatAsWithdraw(_)));
    // ... but with no NLRI found, a lost MP_REACH_NLRI cannot be ruled out: session reset.
    let r = update_of(&raw_update(&[], &attrs, &[]), &AS4);
    assert_eq!(
        notification_of(r),
        (3, update_error::MALFORMED_ATTRIBUTE_LIST)
    );
}

#[test]
fn update_framing_errors_reset_the_session() {
    // Withdrawn Routes Length larger than the message.
    let mut m = raw_update(&[], &[], &[]);
    m[19] = 0;
    m[20] = 9;
    assert_eq!(
        notification_of(update_of(&m, &AS4)),
        (3, update_error::MALFORMED_ATTRIBUTE_LIST)
    );
    // Total Path Attribute Length larger than the message.
    let mut m = raw_update(&[], &[], &[]);
    m[22] = 1;
    assert_eq!(
        notification_of(update_of(&m, &AS4)),
        (3, update_error::MALFORMED_ATTRIBUTE_LIST)
    );
    // A /33 in the NLRI field, and a prefix cut short.
    let attrs = [&ORIGIN_IGP[..], &AS_PATH_EMPTY, &NEXT_HOP].concat();
    let r = update_of(&raw_update(&[], &attrs, &[33, 1, 2, 3, 4, 5]), &AS4);
    assert_eq!(notification_of(r), (3, update_error::INVALID_NETWORK_FIELD));
    let r = update_of(&raw_update(&[24, 10, 0], &[], &[]), &AS4);
    assert_eq!(notification_of(r), (3, update_error::INVALID_NETWORK_FIELD));
}

#[test]
fn repeated_mp_reach_resets_the_session() {
    let reach: &[u8] = &[0x80, 15, 3, 0, 2, 1];
    let attrs = [reach, reach].concat();
    let r = update_of(&raw_update(&[], &attrs, &[]), &AS4);
    assert_eq!(
        notification_of(r),
        (3, update_error::MALFORMED_ATTRIBUTE_LIST)
    );
}

#[test]
fn host_bits_are_cleared() {
    let attrs = [&ORIGIN_IGP[..], &AS_PATH_EMPTY, &NEXT_HOP].concat();
    let u = update_of(&raw_update(&[], &attrs, &[20, 10, 1, 0xff]), &AS4)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.nlri, vec![v4("10.1.240.0/20")]);
}

// ---------------------------------------------------------------- header and OPEN errors

fn frame_error(bytes: &[u8]) -> (u8, u8, Vec<u8>) {
    match decode_frame(bytes, &AS4) {
        Err(e) => (
            e.notification.code,
            e.notification.subcode,
            e.notification.data,
        ),
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn header_errors() {
    let mut bad_marker = header(19, 4);
    bad_marker[3] = 0;
    assert_eq!(
        frame_error(&bad_marker),
        (1, header_error::CONNECTION_NOT_SYNCHRONIZED, vec![])
    );
    assert_eq!(
        frame_error(&header(18, 4)),
        (1, header_error::BAD_MESSAGE_LENGTH, vec![0, 18])
    );
    assert_eq!(
        frame_error(&header(4097, 2)),
        (1, header_error::BAD_MESSAGE_LENGTH, vec![0x10, 1])
    );
    assert_eq!(
        frame_error(&header(20, 4)),
        (1, header_error::BAD_MESSAGE_LENGTH, vec![0, 20])
    );
    assert_eq!(
        frame_error(&header(22, 2)),
        (1, header_error::BAD_MESSAGE_LENGTH, vec![0, 22])
    );
    assert_eq!(
        frame_error(&header(28, 1)),
        (1, header_error::BAD_MESSAGE_LENGTH, vec![0, 28])
    );
    assert_eq!(
        frame_error(&header(19, 9)),
        (1, header_error::BAD_MESSAGE_TYPE, vec![9])
    );
    // A ROUTE-REFRESH of the wrong length: RFC 7313 §5, with the message as data.
    let mut rr = header(24, 5);
    rr.extend_from_slice(&[0, 1, 0, 1, 0]);
    assert_eq!(
        frame_error(&rr),
        (7, route_refresh_error::INVALID_MESSAGE_LENGTH, rr.clone())
    );
}

#[test]
fn streaming_buffer() {
    let mut stream = encode(&Message::Keepalive, &AS4).unwrap_or_default();
    stream.extend(hex_file("update-ipv4-all-attributes.hex"));
    stream.extend(encode(&Message::Keepalive, &AS4).unwrap_or_default());
    // Every strict prefix of the first UPDATE is "need more bytes", never an error.
    for cut in 19..(19 + 139) {
        let rest = &stream[19..cut];
        assert_eq!(decode_frame(rest, &AS4), Ok(None), "cut at {cut}");
    }
    let mut at = 0;
    let mut kinds = Vec::new();
    while let Some((m, used)) = decode_frame(&stream[at..], &AS4).unwrap_or_else(|e| panic!("{e}"))
    {
        kinds.push(m.type_code());
        at += used;
    }
    assert_eq!((kinds, at), (vec![4, 2, 4], stream.len()));
}

fn open_bytes(version: u8, my_as: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut m = header((29 + params.len()) as u16, 1);
    m.push(version);
    m.extend_from_slice(&my_as.to_be_bytes());
    m.extend_from_slice(&hold.to_be_bytes());
    m.extend_from_slice(&id);
    m.push(params.len() as u8);
    m.extend_from_slice(params);
    m
}

#[test]
fn open_errors() {
    let id = [10, 0, 0, 2];
    assert_eq!(
        frame_error(&open_bytes(3, 65000, 90, id, &[])),
        (2, open_error::UNSUPPORTED_VERSION_NUMBER, vec![0, 4])
    );
    for hold in [1, 2] {
        assert_eq!(
            frame_error(&open_bytes(4, 65000, hold, id, &[])),
            (2, open_error::UNACCEPTABLE_HOLD_TIME, vec![])
        );
    }
    assert_eq!(
        frame_error(&open_bytes(4, 65000, 90, [0; 4], &[])),
        (2, open_error::BAD_BGP_IDENTIFIER, vec![])
    );
    assert_eq!(
        frame_error(&open_bytes(4, 0, 90, id, &[])),
        (2, open_error::BAD_PEER_AS, vec![])
    );
    assert_eq!(
        frame_error(&open_bytes(4, 65000, 90, id, &[1, 2, 0, 0])),
        (2, open_error::UNSUPPORTED_OPTIONAL_PARAMETER, vec![])
    );
    // A recognised capability that is malformed: subcode 0 (RFC 4271 §6.2).
    assert_eq!(
        frame_error(&open_bytes(4, 65000, 90, id, &[2, 4, 65, 2, 0, 1])),
        (2, 0, vec![])
    );
    // A capability that overruns its parameter.
    assert_eq!(
        frame_error(&open_bytes(4, 65000, 90, id, &[2, 2, 65, 4])),
        (2, 0, vec![])
    );
    // Hold time 0 and 3 are fine.
    for hold in [0, 3] {
        assert!(decode_frame(&open_bytes(4, 65000, hold, id, &[]), &AS4).is_ok());
    }
}

#[test]
fn open_unknown_capabilities_and_extended_parameters() {
    // RFC 9072 extended optional parameters, holding an unknown capability 73 (FQDN).
    let mut bytes = open_bytes(4, 65000, 90, [10, 0, 0, 2], &[]);
    bytes.pop();
    bytes.extend_from_slice(&[255, 255, 0, 6, 2, 0, 3, 73, 1, 0xaa]);
    bytes[17] = bytes.len() as u8;
    let m = decode_one(&bytes, &AS4).unwrap_or_else(|e| panic!("{e}"));
    let Message::Open(o) = m else {
        panic!("not an OPEN")
    };
    assert_eq!(
        o.capabilities,
        vec![Capability::Unknown {
            code: 73,
            value: vec![0xaa]
        }]
    );
    assert_eq!(
        o.families(),
        vec![Family::IPV4_UNICAST],
        "RFC 4760 §8 default"
    );
    assert_eq!(o.my_as, 65000);
    assert_eq!(o.four_octet_as(), None);
}

#[test]
fn open_peer_validation() {
    let o = Open::new(
        65000,
        90,
        ip("10.0.0.2"),
        vec![Capability::FourOctetAs(65000)],
    );
    assert!(o.validate_peer(65000, 65000, ip("10.0.0.1")).is_ok());
    let e = o.validate_peer(65001, 65000, ip("10.0.0.1")).err();
    assert_eq!(
        e.map(|e| e.notification.subcode),
        Some(open_error::BAD_PEER_AS)
    );
    let e = o.validate_peer(65000, 65000, ip("10.0.0.2")).err();
    assert_eq!(
        e.map(|e| e.notification.subcode),
        Some(open_error::BAD_BGP_IDENTIFIER)
    );
    // Same identifier across ASes is allowed (RFC 6286 §2.1).
    assert!(o.validate_peer(65000, 65001, ip("10.0.0.2")).is_ok());
}

#[test]
fn codec_negotiation() {
    let four = Open::new(
        65000,
        90,
        ip("10.0.0.1"),
        vec![Capability::FourOctetAs(65000)],
    );
    let two = Open::new(65001, 90, ip("10.0.0.2"), vec![]);
    assert_eq!(
        Codec::negotiated(&four, &four),
        Codec {
            four_octet_as: true,
            external: false
        }
    );
    assert_eq!(
        Codec::negotiated(&four, &two),
        Codec {
            four_octet_as: false,
            external: true
        }
    );
}

// ---------------------------------------------------------------- encoder limits and packer

#[test]
fn oversized_update_is_refused_and_buffer_untouched() {
    let nlri: Vec<Ipv4Net> = (0..2000u32)
        .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | i << 8), 24).unwrap_or_default())
        .collect();
    let u = Update {
        attributes: PathAttributes {
            origin: Some(Origin::Igp),
            as_path: Some(AsPath::default()),
            next_hop: Some(ip("192.0.2.1")),
            ..PathAttributes::default()
        },
        nlri,
        ..Update::default()
    };
    let mut out = BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        encode_into(&Message::Update(u), &AS4, &mut out),
        Err(EncodeError::TooLong(_))
    ));
    assert_eq!(&out[..], b"keep");
    let no_nh = Update {
        nlri: vec![v4("10.0.0.0/8")],
        ..Update::default()
    };
    assert_eq!(
        encode(&Message::Update(no_nh), &AS4),
        Err(EncodeError::MissingIpv4NextHop)
    );
}

/// Decodes a run of packed UPDATEs, checking each fits 4096 octets.
fn unpack(mut bytes: &[u8], codec: &Codec) -> Vec<Update> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (m, used) = match decode_frame(bytes, codec) {
            Ok(Some(x)) => x,
            other => panic!("packed stream: {other:?}"),
        };
        assert!(used <= MAX_MESSAGE_LEN);
        let Message::Update(u) = m else {
            panic!("not an UPDATE")
        };
        assert_eq!(u.status, UpdateStatus::Ok);
        out.push(u);
        bytes = &bytes[used..];
    }
    out
}

fn many_prefixes(n: u32) -> Vec<IpNet> {
    let mut p: Vec<IpNet> = (0..n)
        .map(|i| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | i << 8), 24).unwrap_or_default())
        })
        .collect();
    p.extend((0..n / 2).map(|i| {
        IpNet::V6(
            ipnet::Ipv6Net::new(
                Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 64),
                64,
            )
            .unwrap_or_default(),
        )
    }));
    p
}

#[test]
fn packer_fills_messages_and_round_trips() {
    let prefixes = many_prefixes(10_000);
    let mut attrs = all_attributes();
    attrs.mp_reach = Some(MpReach {
        family: Family::IPV6_UNICAST,
        next_hop: NextHop::V6 {
            global: ip6("2001:db8::1"),
            link_local: Some(ip6("fe80::1")),
        },
        nlri: Vec::new(),
    });
    let mut out = BytesMut::new();
    let n = pack_announce(&attrs, &prefixes, &AS2, &mut out).unwrap_or_else(|e| panic!("{e}"));
    let updates = unpack(&out, &AS2);
    assert_eq!(updates.len(), n);
    // 10k /24s at 4 octets and 5k /64s at 9 octets, in messages of ~4 KiB: close to the
    // minimum number of messages, not one per prefix.
    assert!(
        n <= 10_000 * 4 / 3900 + 5_000 * 9 / 3800 + 2,
        "{n} messages"
    );
    let announced: Vec<IpNet> = updates
        .iter()
        .flat_map(|u| u.announced().collect::<Vec<_>>())
        .collect();
    assert_eq!(announced, prefixes);
    for u in &updates {
        let a = &u.attributes;
        assert_eq!(
            a.as_path, attrs.as_path,
            "AS4_PATH merged back for the 2-octet codec"
        );
        assert_eq!(a.communities, attrs.communities);
        assert_eq!(a.unknown, attrs.unknown);
        if a.mp_reach.is_some() {
            assert_eq!(a.next_hop, None, "no NEXT_HOP without classic NLRI");
        }
    }

    let mut out = BytesMut::new();
    let n = pack_withdraw(&prefixes, &mut out).unwrap_or_else(|e| panic!("{e}"));
    let updates = unpack(&out, &AS4);
    assert_eq!(updates.len(), n);
    let withdrawn: Vec<IpNet> = updates
        .iter()
        .flat_map(|u| u.withdrawals().collect::<Vec<_>>())
        .collect();
    assert_eq!(withdrawn, prefixes);
}

#[test]
fn packer_errors_leave_the_buffer_alone() {
    let mut out = BytesMut::from(&b"keep"[..]);
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::default()),
        ..PathAttributes::default()
    };
    assert_eq!(
        pack_announce(&attrs, &[net("10.0.0.0/8")], &AS4, &mut out),
        Err(EncodeError::MissingIpv4NextHop)
    );
    assert_eq!(
        pack_announce(&attrs, &[net("2001:db8::/32")], &AS4, &mut out),
        Err(EncodeError::MissingNextHop("IPv6"))
    );
    assert_eq!(&out[..], b"keep");
    assert_eq!(pack_announce(&attrs, &[], &AS4, &mut out), Ok(0));
}

// ---------------------------------------------------------------- property: round trip

fn arb_v4() -> impl Strategy<Value = Ipv4Net> {
    (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
        Ipv4Net::new(Ipv4Addr::from(a), l)
            .unwrap_or_default()
            .trunc()
    })
}

fn arb_v6() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        IpNet::V6(
            ipnet::Ipv6Net::new(Ipv6Addr::from(a), l)
                .unwrap_or_default()
                .trunc(),
        )
    })
}

fn arb_path() -> impl Strategy<Value = AsPath> {
    let seg = (
        prop_oneof![
            Just(SegmentType::Sequence),
            Just(SegmentType::Set),
            Just(SegmentType::ConfedSequence),
            Just(SegmentType::ConfedSet)
        ],
        prop::collection::vec(1..=u32::MAX, 1..6),
    )
        .prop_map(|(kind, asns)| AsSegment { kind, asns });
    prop::collection::vec(seg, 0..4).prop_map(|segments| AsPath { segments })
}

fn arb_update() -> impl Strategy<Value = Update> {
    (
        prop::collection::vec(arb_v4(), 0..20),
        prop::collection::vec(arb_v4(), 0..20),
        arb_path(),
        (
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<bool>(),
            prop::option::of((1..=u32::MAX, any::<u32>())),
        ),
        (
            prop::collection::vec(any::<u32>(), 0..5),
            prop::collection::vec(any::<u32>(), 0..3),
            any::<Option<u32>>(),
        ),
        prop::option::of((
            prop::collection::vec(arb_v6(), 0..10),
            any::<u128>(),
            any::<Option<u128>>(),
        )),
        prop::option::of(prop::collection::vec(arb_v6(), 0..10)),
        prop::collection::vec(
            (100u8..=254, prop::collection::vec(any::<u8>(), 0..300)),
            0..3,
        ),
    )
        .prop_map(
            |(
                withdrawn,
                nlri,
                path,
                (med, lp, atomic, agg),
                (comms, cluster, orig),
                reach,
                unreach,
                unknown,
            )| {
                let mut unknown: Vec<RawAttribute> = unknown
                    .into_iter()
                    .map(|(code, value)| RawAttribute {
                        flags: 0xe0,
                        code,
                        value,
                    })
                    .collect();
                unknown.sort_by_key(|a| a.code);
                unknown.dedup_by_key(|a| a.code);
                Update {
                    withdrawn,
                    attributes: PathAttributes {
                        origin: Some(Origin::Egp),
                        as_path: Some(path),
                        next_hop: Some(ip("198.51.100.7")),
                        med,
                        local_pref: lp,
                        atomic_aggregate: atomic,
                        aggregator: agg.map(|(asn, a)| Aggregator {
                            asn,
                            address: Ipv4Addr::from(a),
                        }),
                        communities: comms,
                        originator_id: orig.map(Ipv4Addr::from),
                        cluster_list: cluster.into_iter().map(Ipv4Addr::from).collect(),
                        mp_reach: reach.map(|(nlri, g, ll)| MpReach {
                            family: Family::IPV6_UNICAST,
                            next_hop: NextHop::V6 {
                                global: Ipv6Addr::from(g),
                                link_local: ll.map(Ipv6Addr::from),
                            },
                            nlri,
                        }),
                        mp_unreach: unreach.map(|withdrawn| MpUnreach {
                            family: Family::IPV6_UNICAST,
                            withdrawn,
                        }),
                        unknown,
                    },
                    nlri,
                    status: UpdateStatus::Ok,
                }
            },
        )
}

proptest! {
    #[test]
    fn update_round_trip_four_octet(u in arb_update()) {
        let bytes = encode(&Message::Update(u.clone()), &AS4).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = decode_one(&bytes, &AS4).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, Message::Update(u));
    }

    /// Through a 2-octet session the path survives via AS4_PATH, except confederation
    /// segments, which RFC 6793 keeps out of AS4_PATH: test paths without them.
    #[test]
    fn update_round_trip_two_octet(mut u in arb_update()) {
        if let Some(p) = &mut u.attributes.as_path {
            p.segments.retain(|s| matches!(s.kind, SegmentType::Sequence | SegmentType::Set));
        }
        let bytes = encode(&Message::Update(u.clone()), &AS2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = decode_one(&bytes, &AS2).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, Message::Update(u));
    }

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200), kind in 1u8..=5) {
        let mut m = header((19 + bytes.len()) as u16, kind);
        m.extend_from_slice(&bytes);
        let _ = decode_frame(&m, &AS2);
        let _ = decode_frame(&m, &AS4);
    }
}

#[test]
fn bad_next_hop_without_classic_nlri_is_only_discarded() {
    // RFC 4760 §3: NEXT_HOP means nothing in an MP-only UPDATE, so a broken one must not
    // withdraw the IPv6 route.
    let mut attrs = vec![0x80, 14, 26, 0, 2, 1, 16];
    attrs.extend_from_slice(&ip6("2001:db8::1").octets());
    attrs.extend_from_slice(&[0, 32, 0x20, 0x01, 0x0d, 0xb8]);
    attrs.extend_from_slice(&ORIGIN_IGP);
    attrs.extend_from_slice(&AS_PATH_EMPTY);
    attrs.extend_from_slice(&[0x40, 3, 4, 0, 0, 0, 0]);
    let u = update_of(&raw_update(&[], &attrs, &[]), &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&u.status, UpdateStatus::AttributeDiscard(v) if v[0].code == attr_code::NEXT_HOP)
    );
    assert_eq!(
        u.announced().collect::<Vec<_>>(),
        vec![net("2001:db8::/32")]
    );
}

#[test]
fn confederation_segments_from_an_external_peer_are_treat_as_withdraw() {
    let confed: &[u8] = &[0x40, 2, 6, 3, 1, 0, 0, 0xfd, 0xe9];
    let attrs = [&ORIGIN_IGP[..], confed, &NEXT_HOP].concat();
    let bytes = raw_update(&[], &attrs, &NLRI_203);
    let external = Codec {
        four_octet_as: true,
        external: true,
    };
    let u = update_of(&bytes, &external).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(&u.status, UpdateStatus::TreatAsWithdraw(i) if i.code == attr_code::AS_PATH));
    let u = update_of(&bytes, &AS4).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.status, UpdateStatus::Ok, "internal peers may carry them");
}

#[test]
fn end_of_rib_of_an_unknown_family_is_not_an_ipv4_one() {
    // An empty MP_UNREACH_NLRI for L2VPN EVPN (AFI 25, SAFI 70).
    let u = update_of(&raw_update(&[], &[0x80, 15, 3, 0, 25, 70], &[]), &AS4)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u.attributes.mp_unreach, None);
    assert_eq!(u.end_of_rib_family(), None);
}
