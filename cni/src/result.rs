//! The ADD result (SPEC.md "Success"), held version-neutral and written in the exact shape
//! of the version the runtime asked for: 0.3.x/0.4.0 carry `"version": "4"|"6"` in each ips
//! entry, 1.x does not; 1.1.0 adds `mtu` on interfaces.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, Code};
use crate::version::Version;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// Passed through untouched: tortie sets no DNS, but an earlier plugin may have.
    pub dns: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Fields of newer versions or other plugins (socketPath, pciID…), kept when passing a
    /// `prevResult` through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The ips entry on the wire; `version` exists only before 1.0.0 and is ignored on input
/// (the address says which family it is).
#[derive(Serialize, Deserialize)]
struct WireIp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Map<String, Value>,
}

impl CniResult {
    /// Reads a result of any supported version (a `prevResult`).
    pub fn parse(value: &Value) -> Result<CniResult, CniError> {
        let wire: WireResult = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(Code::DecodingFailure, "prevResult is not a CNI result")
                .with_details(e.to_string())
        })?;
        if let Some(bad) = wire
            .ips
            .iter()
            .filter_map(|ip| ip.interface)
            .find(|&i| i >= wire.interfaces.len())
        {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("prevResult: ips refer to interface {bad}"),
            )
            .with_details(format!(
                "prevResult lists only {} interfaces",
                wire.interfaces.len()
            )));
        }
        Ok(CniResult {
            interfaces: wire.interfaces,
            ips: wire
                .ips
                .into_iter()
                .map(|ip| IpConfig {
                    address: ip.address,
                    gateway: ip.gateway,
                    interface: ip.interface,
                })
                .collect(),
            routes: wire.routes,
            dns: wire.dns,
        })
    }

    /// Appends `other` (what this plugin made) after what an earlier plugin reported,
    /// shifting its interface indexes.
    pub fn append(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        self.dns.extend(other.dns);
    }

    /// The result as `version` wants it on stdout.
    pub fn to_value(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if !version.has_status_and_gc() {
                    i.mtu = None;
                }
                serde_json::to_value(i).unwrap_or(Value::Null)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let family = if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                };
                let wire = WireIp {
                    version: version.ips_carry_version().then(|| family.to_owned()),
                    interface: ip.interface,
                    address: ip.address,
                    gateway: ip.gateway,
                };
                serde_json::to_value(wire).unwrap_or(Value::Null)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect();
        serde_json::json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }

    pub fn to_json(&self, version: Version) -> String {
        self.to_value(version).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "tort0123456789a".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1500),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.0.5/32".parse().unwrap(),
                gateway: Some("169.254.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: Map::new(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_mtu() {
        for v in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            assert_eq!(
                sample().to_value(v),
                json!({
                    "cniVersion": v.as_str(),
                    "interfaces": [
                        {"name": "tort0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                        {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/p"}
                    ],
                    "ips": [{"version": "4", "interface": 1, "address": "10.244.0.5/32", "gateway": "169.254.1.1"}],
                    "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                    "dns": {}
                })
            );
        }
    }

    #[test]
    fn v1_drops_ip_version_and_v1_1_adds_interface_mtu() {
        let v100 = sample().to_value(Version::V1_0_0);
        assert_eq!(
            v100["ips"],
            json!([{"interface": 1, "address": "10.244.0.5/32", "gateway": "169.254.1.1"}])
        );
        assert!(v100["interfaces"][1].get("mtu").is_none());
        let v110 = sample().to_value(Version::V1_1_0);
        assert_eq!(v110["cniVersion"], "1.1.0");
        assert_eq!(v110["interfaces"][1]["mtu"], 1500);
        assert!(v110["ips"][0].get("version").is_none());
    }

    #[test]
    fn parses_every_version_it_writes() {
        for v in Version::ALL {
            let mut expected = sample();
            if !v.has_status_and_gc() {
                expected.interfaces[1].mtu = None;
            }
            assert_eq!(
                CniResult::parse(&sample().to_value(v)).unwrap(),
                expected,
                "{v}"
            );
        }
    }

    #[test]
    fn append_shifts_interface_indexes_and_keeps_foreign_fields() {
        let mut prev = CniResult::parse(&json!({
            "interfaces": [{"name": "x0", "socketPath": "/s"}],
            "ips": [{"address": "192.0.2.1/24", "interface": 0}],
            "routes": [{"dst": "198.51.100.0/24", "mtu": 1400}],
            "dns": {"nameservers": ["192.0.2.53"]}
        }))
        .unwrap();
        prev.append(sample());
        assert_eq!(prev.ips[1].interface, Some(2));
        let out = prev.to_value(Version::V1_1_0);
        assert_eq!(out["interfaces"][0]["socketPath"], "/s");
        assert_eq!(out["routes"][0]["mtu"], 1400);
        assert_eq!(out["dns"]["nameservers"][0], "192.0.2.53");
    }

    #[test]
    fn rejects_results_that_are_not_results() {
        assert_eq!(
            CniResult::parse(&json!({"ips": [{"address": "nope"}]}))
                .unwrap_err()
                .code,
            Code::DecodingFailure
        );
        assert_eq!(
            CniResult::parse(
                &json!({"interfaces": [], "ips": [{"address": "10.0.0.1/32", "interface": 3}]})
            )
            .unwrap_err()
            .code,
            Code::InvalidNetworkConfig
        );
    }
}
