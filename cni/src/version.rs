//! The CNI spec versions tortie speaks, and what each allows.

use std::fmt;

use crate::error::{CniError, Code};

/// A supported spec version. Ordered, so `v >= Version::V0_4_0` reads as "has CHECK".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Parses a config's `cniVersion`; anything else is error 1, naming what we do support.
    pub fn parse(s: &str) -> Result<Version, CniError> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    Code::IncompatibleVersion,
                    format!("cniVersion \"{s}\" is not supported"),
                )
                .with_details(format!("tortie supports {}", supported_list()))
            })
    }

    /// 0.3.x and 0.4.0 results carry `"version": "4"|"6"` in each ips entry; 1.0.0 dropped it.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK arrived in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC arrived in 1.1.0, as did `mtu` on interfaces.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    Version::ALL
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VERSION command's answer: `{"cniVersion": …, "supportedVersions": […]}`.
pub fn version_json(requested: Option<&str>) -> String {
    // The reply echoes the version the runtime asked in (when we know it), so the runtime can
    // parse it with the same types it sent; otherwise our newest.
    let echo = requested
        .and_then(|r| Version::parse(r).ok())
        .unwrap_or(Version::LATEST);
    serde_json::json!({
        "cniVersion": echo.as_str(),
        "supportedVersions": Version::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others_with_code_1() {
        for v in Version::ALL {
            assert_eq!(Version::parse(v.as_str()), Ok(v));
        }
        for bad in ["0.2.0", "0.1.0", "1.2.0", "", "1.0", "v1.0.0"] {
            let e = Version::parse(bad).unwrap_err();
            assert_eq!(e.code, Code::IncompatibleVersion, "{bad}");
            assert!(e.details.contains("1.1.0"), "{e}");
        }
    }

    #[test]
    fn feature_gates_follow_the_spec_history() {
        assert!(Version::V0_3_1.ips_carry_version());
        assert!(Version::V0_4_0.ips_carry_version());
        assert!(!Version::V1_0_0.ips_carry_version());
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
    }

    #[test]
    fn version_output_lists_all_and_echoes_the_request() {
        let v: serde_json::Value = serde_json::from_str(&version_json(Some("0.4.0"))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let v: serde_json::Value = serde_json::from_str(&version_json(None)).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}
