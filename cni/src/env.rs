//! The `CNI_*` environment (SPEC.md "Parameters"), parsed and validated up front so that a
//! bad variable is error 4 before anything is touched.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tortie_api::veth::host_veth_name;

use crate::error::{CniError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The Kubernetes identity of the pod, from `CNI_ARGS` (kubelet/containerd set these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Everything the runtime told us through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC, which are not about one container.
    pub container_id: String,
    /// `None` when the runtime gave none (allowed for DEL: the sandbox may be gone).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `None` outside Kubernetes (no `K8S_POD_NAME` in `CNI_ARGS`).
    pub pod: Option<PodArgs>,
    pub cni_path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the variables through `get` (the process environment in the binary, a map in
    /// tests) and checks the ones `command` requires.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let raw = get("CNI_COMMAND").ok_or_else(|| env_error("CNI_COMMAND is not set", ""))?;
        let command = Command::parse(&raw).ok_or_else(|| {
            env_error(
                format!("CNI_COMMAND=\"{raw}\" is not a CNI command"),
                "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
            )
        })?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);

        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if per_container {
            if container_id.is_empty() {
                return Err(env_error(
                    format!("CNI_CONTAINERID is required for {}", command.as_str()),
                    "",
                ));
            }
            validate_container_id(&container_id)?;
            if ifname.is_empty() {
                return Err(env_error(
                    format!("CNI_IFNAME is required for {}", command.as_str()),
                    "",
                ));
            }
            validate_ifname(&ifname)?;
            // DEL may come after the sandbox is gone, so only ADD and CHECK need the netns.
            if netns.is_none() && command != Command::Del {
                return Err(env_error(
                    format!("CNI_NETNS is required for {}", command.as_str()),
                    "",
                ));
            }
            if let Some(ns) = &netns
                && !ns.is_absolute()
            {
                return Err(env_error(
                    format!("CNI_NETNS=\"{}\" is not an absolute path", ns.display()),
                    "",
                ));
            }
        }
        let pod = match get("CNI_ARGS") {
            Some(args) => parse_cni_args(&args)?,
            None => None,
        };
        let cni_path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            pod,
            cni_path,
        })
    }

    /// The pod's host veth (the same name the agent computes, [`host_veth_name`]).
    pub fn host_ifname(&self) -> String {
        host_veth_name(
            self.pod
                .as_ref()
                .map(|p| (p.namespace.as_str(), p.name.as_str())),
            &self.container_id,
        )
    }
}

fn env_error(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidEnvironment, msg).with_details(details)
}

/// Spec 1.0: "must not be empty, and must only contain alphanumeric characters, hyphen,
/// underscore and period".
fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(env_error(
            format!("CNI_CONTAINERID=\"{id}\" has characters outside [A-Za-z0-9._-]"),
            "",
        ))
    }
}

/// The kernel's rule for interface names (dev_valid_name): 1–15 bytes, not "." or "..",
/// no '/', ':' or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(env_error(
            format!("CNI_IFNAME=\"{name}\" is not a valid interface name"),
            "1 to 15 characters, no '/', ':' or whitespace",
        ))
    }
}

/// `CNI_ARGS` is `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown` is `1`/`true`,
/// as with the reference plugins' argument loader.
fn parse_cni_args(raw: &str) -> Result<Option<PodArgs>, CniError> {
    let mut pairs = BTreeMap::new();
    for part in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(env_error(
                format!("CNI_ARGS: \"{part}\" is not KEY=VALUE"),
                "CNI_ARGS is KEY=VALUE pairs separated by ';'",
            ));
        };
        pairs.insert(k.to_owned(), v.to_owned());
    }
    let ignore_unknown = pairs
        .get("IgnoreUnknown")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    const KNOWN: [&str; 5] = [
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_UID",
        "K8S_POD_INFRA_CONTAINER_ID",
    ];
    if !ignore_unknown && let Some(unknown) = pairs.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(env_error(
            format!("CNI_ARGS: unknown key \"{unknown}\""),
            "tortie knows K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID; add IgnoreUnknown=1 to pass others",
        ));
    }
    let get = |k: &str| pairs.get(k).cloned().unwrap_or_default();
    match (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) {
        (ns, name) if ns.is_empty() && name.is_empty() => Ok(None),
        (ns, name) if ns.is_empty() || name.is_empty() => Err(env_error(
            "CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME must come together",
            format!("got namespace \"{ns}\", name \"{name}\""),
        )),
        (namespace, name) => Ok(Some(PodArgs {
            namespace,
            name,
            uid: get("K8S_POD_UID"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const KUBELET_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1";

    #[test]
    fn parses_what_a_kubelet_sends() {
        let e = CniEnv::parse(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", KUBELET_ARGS),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(
            e.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/cni-1"))
        );
        assert_eq!(
            e.pod,
            Some(PodArgs {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: "u-1".into()
            })
        );
        assert_eq!(e.cni_path.len(), 2);
    }

    #[test]
    fn missing_or_bad_variables_are_code_4() {
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("CNI_COMMAND", "ATTACH")],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/run/netns/x"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a b"),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "rel/x"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "a-very-long-ifname"),
            ],
            vec![
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth/0"),
            ],
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "FOO=1"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "junk"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAME=x"),
            ],
        ];
        for case in cases {
            let err = CniEnv::parse(env(&case)).unwrap_err();
            assert_eq!(err.code, Code::InvalidEnvironment, "{case:?}: {err}");
        }
    }

    #[test]
    fn del_needs_no_netns_and_global_commands_need_no_container() {
        let d = CniEnv::parse(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(d.netns, None);
        assert_eq!(d.pod, None);
        for cmd in ["VERSION", "STATUS", "GC"] {
            assert!(CniEnv::parse(env(&[("CNI_COMMAND", cmd)])).is_ok(), "{cmd}");
        }
    }

    #[test]
    fn unknown_args_pass_with_ignore_unknown() {
        let e = CniEnv::parse(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=true;FOO=bar"),
        ]))
        .unwrap();
        assert_eq!(e.pod, None);
    }
}
