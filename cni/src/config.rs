//! The network config on stdin (one plugin entry of a conflist, as the runtime hands it over:
//! `cniVersion` and `name` copied from the list, plus `prevResult` and `runtimeConfig`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{CniError, Code};
use crate::result::CniResult;
use crate::version::Version;

/// How long one agent call may take before we answer "try again later". An allocation is a
/// datastore write, so this is generous; a kubelet retries a failed ADD anyway.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// One attachment the runtime still wants (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub plugin_type: String,
    /// The agent's gRPC socket (conflist field `agent_socket`).
    pub agent_socket: PathBuf,
    /// Overrides the MTU the agent reports (conflist field `mtu`).
    pub mtu: Option<u32>,
    pub log_level: LogLevel,
    pub timeout: Duration,
    pub prev_result: Option<CniResult>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The wire shape. Unknown keys (`args`, `dns`, `capabilities`, …) are ignored, as the spec
/// allows.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    agent_socket: Option<PathBuf>,
    mtu: Option<u32>,
    log_level: Option<String>,
    timeout_seconds: Option<u64>,
    ipam: Option<Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The `cniVersion` of whatever is on stdin, if it can be read at all: used to label error
/// JSON in the version the runtime speaks even when the rest of the config is bad.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_owned)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        // Two steps, so that "not JSON" (6, decoding failure) and "JSON with wrong values"
        // (7, invalid config) get the spec's distinct codes.
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::DecodingFailure,
                "the network config on stdin is not valid JSON",
            )
            .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                Code::DecodingFailure,
                "the network config on stdin is not a JSON object",
            ));
        }
        let wire: Wire = serde_json::from_value(value).map_err(|e| {
            CniError::new(
                Code::InvalidNetworkConfig,
                "the network config has a field of the wrong type",
            )
            .with_details(e.to_string())
        })?;

        // A config without cniVersion is a 0.1.0 one (SPEC.md), which we do not speak.
        let version = Version::parse(wire.cni_version.as_deref().unwrap_or("0.1.0"))?;
        let name = wire.name.unwrap_or_default();
        if !valid_network_name(&name) {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("network name \"{name}\" is invalid"),
            )
            .with_details(
                "a name starts with a letter or digit, then letters, digits, '_', '.' or '-'",
            ));
        }
        let plugin_type = wire.plugin_type.filter(|t| !t.is_empty()).ok_or_else(|| {
            CniError::new(
                Code::InvalidNetworkConfig,
                "the network config has no \"type\"",
            )
        })?;
        if let Some(ipam) = wire.ipam {
            return Err(CniError::new(
                Code::UnsupportedField,
                format!("unsupported field \"ipam\": {ipam}"),
            )
            .with_details(
                "tortie allocates addresses through its node agent; remove the ipam section",
            ));
        }
        if let Some(mtu) = wire.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                format!("mtu {mtu} is out of range"),
            )
            .with_details("mtu must be between 68 and 65535, or absent to use the agent's"));
        }
        let log_level = match wire
            .log_level
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("warn") | Some("warning") => LogLevel::Warn,
            Some("error") => LogLevel::Error,
            Some("info") => LogLevel::Info,
            Some("debug") => LogLevel::Debug,
            Some("trace") => LogLevel::Trace,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidNetworkConfig,
                    format!("log_level \"{other}\" is not a level"),
                )
                .with_details("use error, warn, info, debug or trace"));
            }
        };
        let timeout = match wire.timeout_seconds {
            None => DEFAULT_TIMEOUT,
            Some(0) => {
                return Err(CniError::new(
                    Code::InvalidNetworkConfig,
                    "timeout_seconds must be at least 1",
                ));
            }
            Some(s) => Duration::from_secs(s),
        };
        let prev_result = wire.prev_result.map(|p| CniResult::parse(&p)).transpose()?;
        Ok(NetConf {
            version,
            name,
            plugin_type,
            agent_socket: wire
                .agent_socket
                .unwrap_or_else(|| PathBuf::from(tortie_api::DEFAULT_AGENT_SOCKET)),
            mtu: wire.mtu,
            log_level,
            timeout,
            prev_result,
            valid_attachments: wire.valid_attachments,
        })
    }
}

/// SPEC.md: "Must start with an alphanumeric character, optionally followed by any
/// combination of one or more alphanumeric characters, underscore, dot or hyphen."
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c =
            parse(r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tortie"}"#).unwrap();
        assert_eq!(c.version, Version::V1_0_0);
        assert_eq!(
            c.agent_socket,
            PathBuf::from(tortie_api::DEFAULT_AGENT_SOCKET)
        );
        assert_eq!(c.mtu, None);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn our_fields_and_runtime_fields_are_read() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"net","type":"tortie","agent_socket":"/tmp/a.sock","mtu":1400,
                "log_level":"DEBUG","timeout_seconds":3,"runtimeConfig":{"portMappings":[]},"args":{"x":1},
                "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(
            c.valid_attachments,
            Some(vec![ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }

    #[test]
    fn each_kind_of_bad_config_gets_its_code() {
        let cases = [
            ("not json", Code::DecodingFailure),
            ("[1,2]", Code::DecodingFailure),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie""#,
                Code::DecodingFailure,
            ),
            (r#"{"name":"n","type":"tortie"}"#, Code::IncompatibleVersion),
            (
                r#"{"cniVersion":"9.9.9","name":"n","type":"tortie"}"#,
                Code::IncompatibleVersion,
            ),
            (
                r#"{"cniVersion":"1.0.0","type":"tortie"}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-bad","type":"tortie"}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie","mtu":"big"}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie","mtu":20}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie","log_level":"loud"}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie","timeout_seconds":0}"#,
                Code::InvalidNetworkConfig,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie","ipam":{"type":"host-local"}}"#,
                Code::UnsupportedField,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"tortie","prevResult":{"ips":"x"}}"#,
                Code::DecodingFailure,
            ),
        ];
        for (input, code) in cases {
            let err = parse(input).unwrap_err();
            assert_eq!(err.code, code, "{input}: {err}");
        }
    }

    #[test]
    fn sniffs_the_version_of_a_bad_config() {
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.4.0","mtu":"x"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(sniff_version(b"{"), None);
    }
}
