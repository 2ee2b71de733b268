//! Block CIDRs and the address arithmetic inside them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// The largest block we accept, in host bits: a /20 for IPv4, a /116 for IPv6 (Calico's
/// limits). It keeps every ordinal inside a `u32` and every block object small enough to
/// rewrite on each allocation.
pub const MAX_BLOCK_HOST_BITS: u8 = 12;

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of_net(net: &IpNet) -> IpFamily {
        match net {
            IpNet::V4(_) => IpFamily::V4,
            IpNet::V6(_) => IpFamily::V6,
        }
    }

    pub fn of_addr(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// Why a CIDR is not a valid block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a CIDR (expected e.g. 10.244.3.0/26): {1}")]
    Parse(String, String),
    #[error("{net} is a host address, not a network: the network is {network}")]
    HostBits { net: IpNet, network: IpNet },
    #[error(
        "{net} is too large for a block: at most {MAX_BLOCK_HOST_BITS} host bits (/{min} here)"
    )]
    TooLarge { net: IpNet, min: u8 },
}

/// The CIDR of an IPAM block. It always holds a network address (no host bits set), and it
/// is never wider than [`MAX_BLOCK_HOST_BITS`]; both are checked on construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockCidr(IpNet);

impl BlockCidr {
    pub fn new(net: IpNet) -> Result<BlockCidr, CidrError> {
        if net.addr() != net.network() {
            return Err(CidrError::HostBits {
                net,
                network: net.trunc(),
            });
        }
        let host_bits = net.max_prefix_len() - net.prefix_len();
        if host_bits > MAX_BLOCK_HOST_BITS {
            return Err(CidrError::TooLarge {
                net,
                min: net.max_prefix_len() - MAX_BLOCK_HOST_BITS,
            });
        }
        Ok(BlockCidr(net))
    }

    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of_net(&self.0)
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u32 {
        1u32 << (self.0.max_prefix_len() - self.0.prefix_len())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }

    /// The position of `ip` inside the block.
    pub fn ordinal(&self, ip: IpAddr) -> Option<u32> {
        if !self.contains(ip) {
            return None;
        }
        let offset = addr_to_u128(ip) - addr_to_u128(self.0.network());
        u32::try_from(offset).ok()
    }

    /// The address at position `ordinal`.
    pub fn addr(&self, ordinal: u32) -> Option<IpAddr> {
        if ordinal >= self.size() {
            return None;
        }
        Some(u128_to_addr(
            self.family(),
            addr_to_u128(self.0.network()) + u128::from(ordinal),
        ))
    }

    /// The Kubernetes object name for this block, as Calico spells it: `10-244-3-0-26`,
    /// `fd00-1--40-122`.
    pub fn object_name(&self) -> String {
        self.0.to_string().replace(['.', ':', '/'], "-")
    }
}

impl fmt::Display for BlockCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BlockCidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: IpNet = s
            .parse()
            .map_err(|e: ipnet::AddrParseError| CidrError::Parse(s.to_owned(), e.to_string()))?;
        BlockCidr::new(net)
    }
}

pub(crate) fn addr_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Builds an address of `family` from its integer value; IPv4 keeps the low 32 bits (callers
/// only pass values that came from IPv4 arithmetic inside a valid network).
pub(crate) fn u128_to_addr(family: IpFamily, v: u128) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::from((v & u128::from(u32::MAX)) as u32)),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_host_addresses_and_oversized_blocks() {
        assert!(matches!(
            "10.0.0.1/26".parse::<BlockCidr>(),
            Err(CidrError::HostBits { .. })
        ));
        assert!(matches!(
            "10.0.0.0/19".parse::<BlockCidr>(),
            Err(CidrError::TooLarge { min: 20, .. })
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<BlockCidr>(),
            Err(CidrError::Parse(..))
        ));
        assert!("10.0.0.0/20".parse::<BlockCidr>().is_ok());
        assert!("fd00::/116".parse::<BlockCidr>().is_ok());
    }

    #[test]
    fn ordinals_map_both_ways() {
        let b: BlockCidr = "10.1.2.64/26".parse().unwrap();
        assert_eq!(b.size(), 64);
        assert_eq!(b.addr(0), Some("10.1.2.64".parse().unwrap()));
        assert_eq!(b.addr(63), Some("10.1.2.127".parse().unwrap()));
        assert_eq!(b.addr(64), None);
        assert_eq!(b.ordinal("10.1.2.100".parse().unwrap()), Some(36));
        assert_eq!(b.ordinal("10.1.2.128".parse().unwrap()), None);
        let v6: BlockCidr = "fd00:1::40/122".parse().unwrap();
        assert_eq!(v6.addr(1), Some("fd00:1::41".parse().unwrap()));
        assert_eq!(v6.object_name(), "fd00-1--40-122");
        assert_eq!(b.object_name(), "10-1-2-64-26");
    }
}
