//! CNI errors: the `{cniVersion, code, msg, details}` JSON a plugin prints on stdout with a
//! non-zero exit (SPEC.md "Error"), and the codes tortie uses.

use serde::Serialize;

/// An error code. 0–99 are the spec's well-known codes; 100+ are tortie's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the config's `cniVersion` is not one we support, or the command needs a newer one.
    IncompatibleVersion,
    /// 2: a field we do not support (the message names the key and value).
    UnsupportedField,
    /// 3: the container (its netns) does not exist; the runtime need not clean up.
    UnknownContainer,
    /// 4: a missing or malformed `CNI_*` variable.
    InvalidEnvironment,
    /// 5: reading stdin or another local I/O failure.
    IoFailure,
    /// 6: stdin is not JSON, or not the JSON shape of a network config.
    DecodingFailure,
    /// 7: the config decodes but its values are invalid.
    InvalidNetworkConfig,
    /// 11: transient; the runtime should retry (agent unreachable, timed out, busy).
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now (agent unreachable or not ready).
    NotAvailable,
    /// 100: ADD found `CNI_IFNAME` already present in the pod and left it alone.
    InterfaceExists,
    /// 101: a netlink or sysctl operation failed.
    Dataplane,
    /// 102: CHECK found the pod's wiring differs from `prevResult`.
    CheckFailed,
    /// 103: the agent answered with a permanent error (pool exhausted, invalid request…).
    AgentRejected,
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnvironment => 4,
            Code::IoFailure => 5,
            Code::DecodingFailure => 6,
            Code::InvalidNetworkConfig => 7,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::InterfaceExists => 100,
            Code::Dataplane => 101,
            Code::CheckFailed => 102,
            Code::AgentRejected => 103,
        }
    }
}

/// A CNI error as the runtime sees it: a code, a short message, and details that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}{}", code.number(), if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The JSON the spec wants on stdout. `cni_version` is the config's version when it was
    /// readable, else the newest we support (what a runtime that sent garbage can still parse).
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        };
        // Serialising plain strings and a number cannot fail; fall back to a hand-made object
        // rather than panic all the same.
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"internal error\"}}",
                self.code.number()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = CniError::new(Code::TryAgainLater, "agent unreachable")
            .with_details("socket /x: connection refused");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.0.0", "code": 11, "msg": "agent unreachable",
                               "details": "socket /x: connection refused"})
        );
        let bare = CniError::new(Code::IncompatibleVersion, "x").to_json("0.3.1");
        assert!(!bare.contains("details"), "{bare}");
    }
}
