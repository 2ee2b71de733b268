//! OPEN messages and capabilities (RFC 4271 §4.2, RFC 5492).

use super::{Capability, Family, GracefulRestart, Open};

impl Open {
    /// The AS from the 4-octet AS capability, if the sender advertised it (RFC 6793).
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// The families the sender advertised with the Multiprotocol capability. RFC 4760 §8:
    /// a speaker that advertises none supports IPv4 unicast only.
    pub fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if families.is_empty() {
            families.push(Family::IPV4_UNICAST);
        }
        families
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities.iter().any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }
}
