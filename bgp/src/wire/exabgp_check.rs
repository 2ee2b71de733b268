//! Cross-check against an independent parser: ExaBGP (`exabgp --decode`, a Debian package
//! that scripts/deps installs) must read what our encoder writes the way we meant it.
//! Hand-built vectors can share a misreading of an RFC with the code; ExaBGP's parser
//! cannot. A missing `exabgp` fails the test rather than skipping it.

use std::net::Ipv4Addr;
use std::process::Command;

use bytes::BytesMut;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::*;

const AS4: Codec = Codec {
    four_octet_as: true,
    external: false,
};

/// ExaBGP needs a neighbor to decode for; 4-octet AS is on by default there.
const CONFIG: &str = "neighbor 127.0.0.1 {
    router-id 10.0.0.1;
    local-address 127.0.0.1;
    local-as 65000;
    peer-as 65000;
    capability {
        asn4 ASN4;
    }
    family {
        ipv4 unicast;
        ipv6 unicast;
    }
}
";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a buffer of back-to-back messages.
fn split(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let len = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    assert!(bytes.is_empty(), "trailing bytes");
    out
}

/// The `message` object of each decoded UPDATE, in order. One ExaBGP run per message:
/// given several `--decode` arguments whose total passes 4096 octets, ExaBGP 4.2 misreads
/// them, though it reads each one alone.
fn exabgp_decode(messages: &[Vec<u8>], codec: &Codec) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let conf = dir.path().join("decode.conf");
    let asn4 = if codec.four_octet_as {
        "enable"
    } else {
        "disable"
    };
    std::fs::write(&conf, CONFIG.replace("ASN4", asn4))
        .unwrap_or_else(|e| panic!("{}: {e}", conf.display()));
    messages
        .iter()
        .map(|m| {
            let out = Command::new("exabgp")
                .arg("--decode")
                .arg(hex(m))
                .arg(&conf)
                .current_dir(dir.path())
                .output()
                .unwrap_or_else(|e| panic!("running exabgp (scripts/deps installs it): {e}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(json) = stdout
                .lines()
                .find_map(|l| l.split_once("update json ").map(|(_, j)| j))
            else {
                panic!(
                    "exabgp did not decode {}:\n{stdout}\n{}",
                    hex(m),
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let v: Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("exabgp JSON {json}: {e}"));
            v["neighbor"]["message"].clone()
        })
        .collect()
}

fn nets(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["nlri"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn attrs() -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence([65001, 4_200_000_000, 65002])),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        med: Some(100),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some(Aggregator {
            asn: 65001,
            address: Ipv4Addr::new(192, 0, 2, 9),
        }),
        communities: vec![0xfde9_0064, 0xffff_ff01],
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 2)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 4)],
        mp_reach: Some(MpReach {
            family: Family::IPV6_UNICAST,
            next_hop: NextHop::V6 {
                global: "2001:db8::1".parse().unwrap_or_else(|e| panic!("{e}")),
                link_local: Some("fe80::1".parse().unwrap_or_else(|e| panic!("{e}"))),
            },
            nlri: Vec::new(),
        }),
        mp_unreach: None,
        // A large community (RFC 8092), which we do not interpret but ExaBGP does.
        unknown: vec![RawAttribute {
            flags: flags::OPTIONAL | flags::TRANSITIVE | flags::PARTIAL,
            code: 32,
            value: vec![0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2],
        }],
    }
}

fn p(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn exabgp_reads_our_updates() {
    let prefixes = [
        p("10.0.0.0/8"),
        p("192.168.1.0/26"),
        p("0.0.0.0/0"),
        p("2001:db8:1::/48"),
        p("2001:db8::5/128"),
    ];
    let mut out = BytesMut::new();
    let n = pack_announce(&attrs(), &prefixes, &AS4, &mut out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(n, 2);
    pack_withdraw(&prefixes, &mut out).unwrap_or_else(|e| panic!("{e}"));
    for family in [Family::IPV4_UNICAST, Family::IPV6_UNICAST] {
        encode_into(&Message::Update(Update::end_of_rib(family)), &AS4, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let messages = split(&out);
    assert_eq!(messages.len(), 6);
    let got = exabgp_decode(&messages, &AS4);

    let v4 = &got[0]["update"];
    assert_eq!(
        v4["attribute"],
        json!({
            "origin": "igp",
            "as-path": [65001, 4_200_000_000u32, 65002],
            "confederation-path": [],
            "med": 100,
            "local-preference": 200,
            "atomic-aggregate": true,
            "aggregator": "65001:192.0.2.9",
            "community": [[65001, 100], [65535, 65281]],
            "originator-id": "10.0.0.2",
            "cluster-list": ["10.0.0.3", "10.0.0.4"],
            "large-community": [[65001, 1, 2]],
        })
    );
    assert_eq!(
        nets(&v4["announce"]["ipv4 unicast"]["192.0.2.1"]),
        ["10.0.0.0/8", "192.168.1.0/26", "0.0.0.0/0"]
    );

    // IPv6: both next hops of the 32-octet form, and no NEXT_HOP attribute.
    let v6 = &got[1]["update"];
    for nh in ["2001:db8::1", "fe80::1"] {
        assert_eq!(
            nets(&v6["announce"]["ipv6 unicast"][nh]),
            ["2001:db8:1::/48", "2001:db8::5/128"]
        );
    }
    assert_eq!(v6["attribute"]["local-preference"], json!(200));

    assert_eq!(
        nets(&got[2]["update"]["withdraw"]["ipv4 unicast"]),
        ["10.0.0.0/8", "192.168.1.0/26", "0.0.0.0/0"]
    );
    assert_eq!(
        nets(&got[3]["update"]["withdraw"]["ipv6 unicast"]),
        ["2001:db8:1::/48", "2001:db8::5/128"]
    );
    assert_eq!(got[4]["eor"], json!({"afi": "ipv4", "safi": "unicast"}));
    assert_eq!(got[5]["eor"], json!({"afi": "ipv6", "safi": "unicast"}));
}

#[test]
fn exabgp_reads_every_prefix_of_a_packed_burst() {
    let prefixes: Vec<IpNet> = (0..2000u32)
        .filter_map(|i| ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 2)), 30).ok())
        .map(IpNet::V4)
        .collect();
    let mut plain = attrs();
    plain.mp_reach = None;
    let mut out = BytesMut::new();
    pack_announce(&plain, &prefixes, &AS4, &mut out).unwrap_or_else(|e| panic!("{e}"));
    let messages = split(&out);
    assert!(messages.iter().all(|m| m.len() <= MAX_MESSAGE_LEN));
    let got: Vec<String> = exabgp_decode(&messages, &AS4)
        .iter()
        .flat_map(|m| nets(&m["update"]["announce"]["ipv4 unicast"]["192.0.2.1"]))
        .collect();
    let want: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn exabgp_merges_our_as4_path_for_a_two_octet_session() {
    let codec = Codec {
        four_octet_as: false,
        external: false,
    };
    let mut plain = attrs();
    plain.mp_reach = None;
    let mut out = BytesMut::new();
    pack_announce(&plain, &[p("198.51.100.0/24")], &codec, &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    let got = exabgp_decode(&split(&out), &codec);
    // The AS_PATH on the wire says 65001 23456 65002; AS4_PATH restores the real path.
    assert_eq!(
        got[0]["update"]["attribute"]["as-path"],
        json!([65001, 4_200_000_000u32, 65002])
    );
    assert_eq!(
        nets(&got[0]["update"]["announce"]["ipv4 unicast"]["192.0.2.1"]),
        ["198.51.100.0/24"]
    );
}
