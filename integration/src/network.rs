//! The lab's wiring: a bridge `br0` in the LAN namespace, and for the control namespace and
//! each node namespace a veth whose `eth0` end sits in that namespace and whose other end is
//! a bridge port. Every step checks before it acts, so `up` can run again on a half-made lab.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::lab::{CONTROL_IP, LAN_PREFIX_LEN, Lab};
use crate::{Error, run};

const BRIDGE: &str = "br0";
/// The control namespace's bridge port in the LAN namespace.
const CONTROL_PORT: &str = "ctl";

/// The namespaces that exist on this machine (`/run/netns`).
pub fn existing_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn ip(netns: &str, args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(["-n", netns]).args(args))
}

fn link_exists(netns: &str, link: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", link])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Creates the namespace (with its loopback up) unless it exists.
pub fn ensure_netns(name: &str) -> Result<(), Error> {
    if !netns_exists(name) {
        run(Command::new("ip").args(["netns", "add", name]))?;
    }
    ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// The LAN namespace and its bridge.
pub fn ensure_lan(lab: &Lab) -> Result<(), Error> {
    let lan = lab.lan_netns();
    ensure_netns(&lan)?;
    if !link_exists(&lan, BRIDGE) {
        // STP off and no forwarding delay: a new port forwards at once.
        ip(
            &lan,
            &[
                "link",
                "add",
                BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        )?;
    }
    ip(&lan, &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// The control namespace, attached to the LAN at [`CONTROL_IP`].
pub fn ensure_control(lab: &Lab) -> Result<(), Error> {
    let ctl = lab.control_netns();
    ensure_netns(&ctl)?;
    attach(lab, &ctl, CONTROL_PORT, CONTROL_IP)
}

/// Node `index`'s namespace, attached to the LAN at `ip`.
pub fn ensure_node(lab: &Lab, index: u32, netns: &str, ip: Ipv4Addr) -> Result<(), Error> {
    ensure_netns(netns)?;
    attach(lab, netns, &format!("n{index}"), ip)?;
    // Pods reach their node through proxy ARP for 169.254.1.1 on the host veth, and the
    // kernel answers a proxy ARP only for an address it routes out of another interface: a
    // real node's default route does that. Here it points at the LAN, where nothing forwards,
    // so no packet leaves the lab.
    self::ip(netns, &["route", "replace", "default", "dev", "eth0"])?;
    Ok(())
}

/// Gives `netns` an `eth0` with address `addr`, plugged into the LAN bridge as `port`.
/// Tests use it for hosts on the LAN outside every pool; `port` names the bridge port in
/// the LAN namespace and must not collide with the lab's own (`ctl`, `n<i>`).
pub fn attach(lab: &Lab, netns: &str, port: &str, addr: Ipv4Addr) -> Result<(), Error> {
    let lan = lab.lan_netns();
    if !link_exists(netns, "eth0") {
        if link_exists(&lan, port) {
            // A port whose peer is gone (or belongs to something else): start over.
            ip(&lan, &["link", "del", port])?;
        }
        // One request creates both ends, the peer already inside `netns`.
        ip(
            &lan,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
        )?;
    }
    ip(&lan, &["link", "set", port, "master", BRIDGE, "up"])?;
    ip(
        netns,
        &[
            "addr",
            "replace",
            &format!("{addr}/{LAN_PREFIX_LEN}"),
            "dev",
            "eth0",
        ],
    )?;
    ip(netns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// Deletes a namespace; a missing one is fine.
pub fn delete_netns(name: &str) -> Result<(), Error> {
    if !netns_exists(name) {
        return Ok(());
    }
    run(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}
