//! Sysctls as plain writes under /proc/sys. `/proc/sys/net` shows the network namespace of
//! the process that opens the file, which is the node's namespace for the agent.

use std::io;
use std::path::PathBuf;

/// Writes `value` to `/proc/sys/<segments joined by '/'>`. Segments are separate so an
/// interface name with a dot (`vxlan.tortie`) needs no escaping.
pub fn set(segments: &[&str], value: &str) -> io::Result<()> {
    let mut path = PathBuf::from("/proc/sys");
    for s in segments {
        if s.is_empty() || s.contains('/') || *s == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad sysctl path segment {s:?}"),
            ));
        }
        path.push(s);
    }
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

pub fn get(segments: &[&str]) -> io::Result<String> {
    let mut path = PathBuf::from("/proc/sys");
    path.extend(segments);
    Ok(std::fs::read_to_string(&path)?.trim().to_owned())
}

/// `net.ipv4.ip_forward=1`, and IPv6 forwarding on all interfaces when `ipv6`.
pub fn enable_forwarding(ipv6: bool) -> io::Result<()> {
    set(&["net", "ipv4", "ip_forward"], "1")?;
    if ipv6 {
        set(&["net", "ipv6", "conf", "all", "forwarding"], "1")?;
    }
    Ok(())
}

/// The host side of a pod veth, as Calico sets it: answer ARP for the pod's gateway
/// (proxy_arp without delay) and forward.
pub fn configure_host_veth(ifname: &str, ipv6: bool) -> io::Result<()> {
    set(&["net", "ipv4", "conf", ifname, "proxy_arp"], "1")?;
    set(&["net", "ipv4", "neigh", ifname, "proxy_delay"], "0")?;
    set(&["net", "ipv4", "conf", ifname, "forwarding"], "1")?;
    if ipv6 {
        set(&["net", "ipv6", "conf", ifname, "proxy_ndp"], "1")?;
        set(&["net", "ipv6", "conf", ifname, "accept_dad"], "0")?;
        set(&["net", "ipv6", "conf", ifname, "forwarding"], "1")?;
    }
    Ok(())
}
