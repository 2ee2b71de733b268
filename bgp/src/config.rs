//! What the agent tells the speaker: the speaker itself and each peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

/// The well-known BGP port.
pub const BGP_PORT: u16 = 179;

/// A TCP MD5 password (RFC 2385). It never appears in logs or status output: `Debug`
/// prints `***` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Password(secret.into())
    }

    /// The key bytes, for the one place that hands them to the kernel.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// BGP identifier; also the RFC 4456 cluster id unless `cluster_id` is set.
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// Where to accept connections from peers; `None` for no listener (active only).
    pub listen: Option<SocketAddr>,
    pub cluster_id: Option<Ipv4Addr>,
    /// Prefixes accepted from any peer (the IP pools). `None` accepts everything.
    pub import_allow: Option<Vec<IpNet>>,
    /// We restarted with our forwarding state intact (the agent found its kernel routes):
    /// set the R bit and defer our advertisements until initial sync (RFC 4724 §4.1).
    pub restarting: bool,
    /// How long initial sync may wait for End-of-RIB from every peer.
    pub deferral_time: Duration,
    /// How long a restarted peer's stale routes wait for its End-of-RIB once the session
    /// is back (RFC 4724's "stale routes" timer).
    pub stale_time: Duration,
    /// Next hop for IPv6 prefixes we originate over IPv4 sessions. Without it an
    /// IPv4-mapped IPv6 address is used, as BIRD and FRR do.
    pub local_ipv6: Option<Ipv6Addr>,
    /// Next hop for IPv4 prefixes over IPv6 sessions. Without it IPv4 prefixes are not
    /// sent over IPv6 sessions.
    pub local_ipv4: Option<Ipv4Addr>,
}

impl SpeakerConfig {
    pub fn new(router_id: Ipv4Addr, asn: u32) -> Self {
        SpeakerConfig {
            router_id,
            asn,
            listen: None,
            cluster_id: None,
            import_allow: None,
            restarting: false,
            deferral_time: Duration::from_secs(120),
            stale_time: Duration::from_secs(360),
            local_ipv6: None,
            local_ipv4: None,
        }
    }
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's address; also how an incoming connection is matched to it.
    pub address: IpAddr,
    pub asn: u32,
    /// The peer's port (179).
    pub port: u16,
    /// Never connect; wait for the peer to connect to us.
    pub passive: bool,
    pub password: Option<Password>,
    pub route_reflector_client: bool,
    /// Offer graceful restart (RFC 4724), as helper and restarting speaker.
    pub graceful_restart: bool,
    /// The restart time we advertise, seconds (at most 4095).
    pub restart_time: u16,
    /// Proposed hold time, seconds: 0 or 3..=65535.
    pub hold_time: u16,
    /// Source address for outbound connections.
    pub local_address: Option<IpAddr>,
    /// Source port for outbound connections.
    pub local_port: Option<u16>,
    /// Free-form label reported in status (`node-to-node mesh`, `global`, `node specific`).
    pub peer_type: String,
    /// Prefixes accepted from this peer in addition to the speaker-wide `import_allow`.
    pub import_allow: Vec<IpNet>,
    /// If set, only prefixes inside these are advertised to this peer.
    pub export_allow: Option<Vec<IpNet>>,
    /// Toward an eBGP peer, send learned routes with the next hop they were learned with
    /// instead of our own address (Calico's `keepOriginalNextHop`). Routes we originate
    /// have no other next hop and still carry ours.
    pub keep_original_next_hop: bool,
    /// First delay between connection attempts; doubles per failure up to two minutes.
    pub connect_retry: Duration,
    /// The most prefixes the peer may send (accepted or not). One more closes the session
    /// with Cease / Maximum Number of Prefixes Reached (RFC 4486), and it stays down until
    /// the peer is configured again.
    pub max_prefixes: Option<u32>,
}

impl PeerConfig {
    pub fn new(address: IpAddr, asn: u32) -> Self {
        PeerConfig {
            address,
            asn,
            port: BGP_PORT,
            passive: false,
            password: None,
            route_reflector_client: false,
            graceful_restart: true,
            restart_time: 120,
            hold_time: 90,
            local_address: None,
            local_port: None,
            peer_type: "global".to_owned(),
            import_allow: Vec::new(),
            export_allow: None,
            keep_original_next_hop: false,
            connect_retry: Duration::from_secs(5),
            max_prefixes: None,
        }
    }

    /// Checks what the FSM and the kernel would otherwise reject later.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |reason: String| {
            Err(crate::Error::Config {
                peer: self.address,
                reason,
            })
        };
        if self.hold_time == 1 || self.hold_time == 2 {
            return bad(format!(
                "hold_time {} must be 0 or at least 3 seconds",
                self.hold_time
            ));
        }
        if self.restart_time > 4095 {
            return bad(format!(
                "restart_time {} is more than the 4095 s RFC 4724 allows",
                self.restart_time
            ));
        }
        if let Some(p) = &self.password
            && p.as_bytes().len() > crate::md5::MAX_KEY_LEN
        {
            return bad(format!(
                "password is longer than {} bytes",
                crate::md5::MAX_KEY_LEN
            ));
        }
        if let Some(local) = self.local_address
            && local.is_ipv4() != self.address.is_ipv4()
        {
            return bad(format!(
                "local_address {local} is not of the peer's address family"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_prints() {
        let mut cfg = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 64512);
        cfg.password = Some(Password::new("hunter2"));
        let shown = format!("{cfg:?} {cfg:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn validation_names_the_problem() {
        let mut cfg = PeerConfig::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 64512);
        cfg.hold_time = 2;
        let err = cfg.validate().map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("peer 10.0.0.2: hold_time 2 must be 0 or at least 3 seconds".into())
        );
        cfg.hold_time = 3;
        cfg.password = Some(Password::new("x".repeat(81)));
        assert!(cfg.validate().is_err());
        cfg.password = None;
        cfg.local_address = Some("::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert!(cfg.validate().is_err());
    }
}
