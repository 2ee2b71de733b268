//! Shared by the `bgp_*` tests: parsing of literal addresses and the configuration of a
//! router that sits on a test segment (a link or a LAN) made by `tortie_lab::netns`.

use std::net::IpAddr;

use ipnet::IpNet;
use tortie_lab::routers::{PeerSpec, RouterSpec};

/// The AS every test router is in: the tests exercise iBGP.
pub const ASN: u32 = 64512;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Member `i` of the segment `v4`.x / `v6`x (as `netns::linked_pair` and `Lan::create` number
/// them): router id and IPv4 next hop `v4.i`, IPv6 next hop `v6 i` (needed to carry IPv6 routes
/// over the IPv4 session), peering from its own address with each `(j, rr_client)` of `peers`.
/// Originates nothing; the caller says what.
pub fn member_spec(v4: &str, v6: &str, i: u8, peers: &[(u8, bool)], passive: bool) -> RouterSpec {
    let own = ip(&format!("{v4}.{i}"));
    let IpAddr::V4(own_v4) = own else {
        panic!("{v4}.{i} is not an IPv4 address")
    };
    let IpAddr::V6(own_v6) = ip(&format!("{v6}{i}")) else {
        panic!("{v6}{i} is not an IPv6 address")
    };
    let mut s = RouterSpec::new(own_v4, ASN);
    for &(j, rr_client) in peers {
        let mut p = PeerSpec::new(ip(&format!("{v4}.{j}")), ASN);
        p.rr_client = rr_client;
        p.passive = passive;
        p.local_address = Some(own);
        s.peers.push(p);
    }
    s.next_hop_v4 = Some(own_v4);
    s.next_hop_v6 = Some(own_v6);
    s
}
