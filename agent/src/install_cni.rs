//! `tortie-node install-cni`: what calico-node's install-cni init container does, for tortie.
//! It copies the `tortie` plugin into the CNI bin folder and writes the conflist, made from a
//! template with placeholders, into the CNI config folder. `tortie-node run` installs
//! nothing: the DaemonSet runs this first, as an init container (manifests/tortie.yaml), and
//! the lab does the same (integration/src/agents.rs).
//!
//! The environment, with Calico's names where Calico has one:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CNI_NETWORK_CONFIG` | the conflist template (ConfigMap key `cni_network_config`) | required |
//! | `CNI_MTU` | fills `__CNI_MTU__` (ConfigMap key `veth_mtu`); `0`: the agent's MTU | `0` |
//! | `CNI_CONF_NAME` | the conflist's file name | `10-tortie.conflist` |
//! | `TORTIE_AGENT_SOCKET` | fills `__AGENT_SOCKET__`: where the plugin finds the agent | `/var/run/tortie/agent.sock` |
//! | `TORTIE_CNI_CONF_DIR`, `TORTIE_CNI_BIN_DIR` | where the conflist and the plugin go | `/etc/cni/net.d`, `/opt/cni/bin` |
//!
//! Both files are written to a temporary name and renamed into place, so a kubelet reading
//! the folder, or executing the plugin, never sees half a file (and a running plugin's binary
//! is never overwritten in place, which would fail with ETXTBSY). The plugin goes first: a
//! runtime that finds the conflist also finds the plugin it names.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::ConfigError;

/// The conflist's default file name: `10-` sorts it before most other networks, as Calico's
/// `10-calico.conflist` does.
pub const DEFAULT_CONF_NAME: &str = "10-tortie.conflist";
/// The plugin binary's name in the CNI bin folder, and the `type` that names it.
pub const PLUGIN_NAME: &str = "tortie";
/// The template's placeholders: the pods' MTU and the agent's socket.
pub const PLACEHOLDER_MTU: &str = "__CNI_MTU__";
pub const PLACEHOLDER_AGENT_SOCKET: &str = "__AGENT_SOCKET__";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Variable(#[from] ConfigError),
    /// The template itself is not shown: it is long, and the reason names the part at fault.
    #[error("CNI_NETWORK_CONFIG: {0}")]
    Template(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading the CNI plugin {path} (it ships next to tortie-node): {source}")]
    Plugin { path: PathBuf, source: io::Error },
}

/// What to install, and where, from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub template: String,
    /// `None` (CNI_MTU 0 or unset): the conflist carries no `mtu` and the plugin uses the
    /// MTU the agent reports (TORTIE_MTU, else the uplink's).
    pub mtu: Option<u32>,
    pub conf_name: String,
    pub agent_socket: PathBuf,
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

impl Settings {
    /// Reads `vars` (the environment). As in calico-node, an empty value counts as unset.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Settings, InstallError> {
        let get = |var: &str| vars.get(var).map(|v| v.trim()).filter(|v| !v.is_empty());
        let bad = |var: &'static str, why: &str| ConfigError {
            var,
            value: vars.get(var).cloned().unwrap_or_default(),
            why: why.to_owned(),
        };
        let template = get("CNI_NETWORK_CONFIG")
            .ok_or_else(|| {
                bad(
                    "CNI_NETWORK_CONFIG",
                    "unset: it must hold the conflist template (the ConfigMap key cni_network_config in manifests/tortie.yaml)",
                )
            })?
            .to_owned();
        let mtu = match get("CNI_MTU") {
            None | Some("0") => None,
            Some(s) => {
                let n: u32 = s
                    .parse()
                    .map_err(|_| bad("CNI_MTU", "not a whole number (0 means the agent's MTU)"))?;
                if !(576..=65535).contains(&n) {
                    return Err(bad(
                        "CNI_MTU",
                        "must be between 576 and 65535, or 0 for the agent's MTU",
                    )
                    .into());
                }
                Some(n)
            }
        };
        let conf_name = match get("CNI_CONF_NAME") {
            None => DEFAULT_CONF_NAME.to_owned(),
            Some(s) if s.contains('/') || s.starts_with('.') => {
                return Err(bad(
                    "CNI_CONF_NAME",
                    "must be a file name, not a path, and not hidden (runtimes skip hidden files)",
                )
                .into());
            }
            Some(s) if !s.ends_with(".conflist") => {
                return Err(bad(
                    "CNI_CONF_NAME",
                    "must end in .conflist: runtimes read a network list only under that name",
                )
                .into());
            }
            Some(s) => s.to_owned(),
        };
        let path = |var: &'static str, default: &str| -> Result<PathBuf, ConfigError> {
            match get(var) {
                None => Ok(PathBuf::from(default)),
                Some(s) if s.starts_with('/') => Ok(PathBuf::from(s)),
                Some(_) => Err(bad(var, "must be an absolute path")),
            }
        };
        Ok(Settings {
            template,
            mtu,
            conf_name,
            agent_socket: path("TORTIE_AGENT_SOCKET", tortie_api::DEFAULT_AGENT_SOCKET)?,
            conf_dir: path("TORTIE_CNI_CONF_DIR", "/etc/cni/net.d")?,
            bin_dir: path("TORTIE_CNI_BIN_DIR", "/opt/cni/bin")?,
        })
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, InstallError> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Settings::from_vars(&vars)
    }
}

/// The conflist from `settings`' template: placeholders filled, checked, pretty-printed.
pub fn render_conflist(settings: &Settings) -> Result<String, InstallError> {
    let bad = |why: String| InstallError::Template(why);
    let unknown: BTreeSet<&str> = placeholders(&settings.template)
        .into_iter()
        .filter(|p| *p != PLACEHOLDER_MTU && *p != PLACEHOLDER_AGENT_SOCKET)
        .collect();
    if !unknown.is_empty() {
        return Err(bad(format!(
            "unknown placeholder {}; tortie fills {PLACEHOLDER_MTU} and {PLACEHOLDER_AGENT_SOCKET}",
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    // The socket goes inside a JSON string: escaped, without the quotes.
    let socket = Value::String(settings.agent_socket.display().to_string()).to_string();
    let socket = &socket[1..socket.len() - 1];
    // 0 keeps the JSON valid until the `mtu` it stands for is dropped below.
    let mtu = settings.mtu.unwrap_or(0).to_string();
    let text = settings
        .template
        .replace(PLACEHOLDER_MTU, &mtu)
        .replace(PLACEHOLDER_AGENT_SOCKET, socket);
    let mut conflist: Value = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "not valid JSON once the placeholders are filled: {e}"
        ))
    })?;
    let plugins = check_conflist(&mut conflist).map_err(bad)?;
    if settings.mtu.is_none() {
        // The plugin takes the agent's MTU when its configuration has none.
        for plugin in plugins {
            if plugin.get("mtu") == Some(&Value::from(0)) {
                plugin.remove("mtu");
            }
        }
    }
    let mut out = serde_json::to_string_pretty(&conflist).unwrap_or_default();
    out.push('\n');
    Ok(out)
}

/// The `__NAME__` placeholders in `template`, Calico's spelling: upper case words joined by
/// single underscores.
fn placeholders(template: &str) -> Vec<&str> {
    // A constant pattern: the unit tests prove it compiles.
    let placeholder = regex::Regex::new(r"__[A-Z0-9]+(?:_[A-Z0-9]+)*__")
        .unwrap_or_else(|e| panic!("the placeholder pattern: {e}"));
    placeholder
        .find_iter(template)
        .map(|m| m.as_str())
        .collect()
}

/// Checks what a runtime and the plugin need of a conflist, and returns its plugins.
fn check_conflist(
    conflist: &mut Value,
) -> Result<Vec<&mut serde_json::Map<String, Value>>, String> {
    let obj = conflist
        .as_object_mut()
        .ok_or("the conflist must be a JSON object")?;
    for key in ["name", "cniVersion"] {
        if obj
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("{key:?} must be a non-empty string"));
        }
    }
    let plugins = obj
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .filter(|p| !p.is_empty())
        .ok_or("\"plugins\" must be a non-empty list (a single-plugin .conf is not a conflist)")?;
    let mut out = Vec::new();
    for (i, plugin) in plugins.iter_mut().enumerate() {
        let plugin = plugin
            .as_object_mut()
            .filter(|p| p.get("type").and_then(Value::as_str).is_some())
            .ok_or_else(|| format!("plugins[{i}] must be an object with a \"type\""))?;
        out.push(plugin);
    }
    let tortie = out
        .iter()
        .filter(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_NAME))
        .count();
    if tortie != 1 {
        return Err(format!(
            "the plugins must include exactly one of type {PLUGIN_NAME:?}, not {tortie}"
        ));
    }
    Ok(out)
}

/// Writes `contents` to `dir/name` through a temporary file and a rename.
fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| InstallError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    // A dot-prefixed temporary: runtimes skip hidden files when scanning the folder.
    let tmp = dir.join(format!(".{name}.tortie-tmp"));
    std::fs::write(&tmp, contents).map_err(err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err(&tmp))?;
    let dest = dir.join(name);
    std::fs::rename(&tmp, &dest).map_err(err(&dest))?;
    Ok(())
}

/// What [`install`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub plugin: PathBuf,
    pub conflist: PathBuf,
}

/// Renders the conflist (so a bad template changes nothing), then copies `plugin` into the
/// bin folder and writes the conflist.
pub fn install(settings: &Settings, plugin: &Path) -> Result<Installed, InstallError> {
    let conflist = render_conflist(settings)?;
    let bytes = std::fs::read(plugin).map_err(|source| InstallError::Plugin {
        path: plugin.to_owned(),
        source,
    })?;
    replace_file(&settings.bin_dir, PLUGIN_NAME, &bytes, 0o755)?;
    replace_file(
        &settings.conf_dir,
        &settings.conf_name,
        conflist.as_bytes(),
        0o644,
    )?;
    Ok(Installed {
        plugin: settings.bin_dir.join(PLUGIN_NAME),
        conflist: settings.conf_dir.join(&settings.conf_name),
    })
}

/// The plugin shipped next to the running `tortie-node` (in the image, and in `target/`).
pub fn shipped_plugin() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| io::Error::other("the tortie-node binary has no folder"))?;
    Ok(dir.join(PLUGIN_NAME))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde::Deserialize;

    use super::*;

    /// The manifest's template, so the tests check what a cluster gets.
    fn manifest_template() -> String {
        let text = include_str!("../../manifests/tortie.yaml");
        let doc = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "ConfigMap")
            .unwrap();
        doc["data"]["cni_network_config"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut v: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.entry("CNI_NETWORK_CONFIG".into())
            .or_insert_with(manifest_template);
        v
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        Settings::from_vars(&vars(pairs))
            .and_then(|s| render_conflist(&s))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_manifest_template_gets_the_socket_and_the_mtu() {
        let s = Settings::from_vars(&vars(&[
            ("CNI_MTU", "1440"),
            ("TORTIE_AGENT_SOCKET", "/run/n1/agent \"x\".sock"),
        ]))
        .unwrap();
        let v: Value = serde_json::from_str(&render_conflist(&s).unwrap()).unwrap();
        assert_eq!(v["name"], "k8s-pod-network");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "tortie");
        assert_eq!(v["plugins"][0]["agent_socket"], "/run/n1/agent \"x\".sock");
        assert_eq!(v["plugins"][0]["mtu"], 1440);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn mtu_zero_or_unset_leaves_the_mtu_to_the_agent() {
        for pairs in [&[][..], &[("CNI_MTU", "0")][..], &[("CNI_MTU", " ")][..]] {
            let s = Settings::from_vars(&vars(pairs)).unwrap();
            assert_eq!(s.mtu, None);
            let v: Value = serde_json::from_str(&render_conflist(&s).unwrap()).unwrap();
            assert!(v["plugins"][0].get("mtu").is_none(), "{v}");
            assert_eq!(
                v["plugins"][0]["agent_socket"],
                tortie_api::DEFAULT_AGENT_SOCKET
            );
        }
    }

    #[test]
    fn defaults_are_calicos_folders() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s.conf_name, "10-tortie.conflist");
        assert_eq!(s.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(s.bin_dir, PathBuf::from("/opt/cni/bin"));
    }

    #[test]
    fn bad_variables_are_named_with_their_value_and_why() {
        assert_eq!(
            Settings::from_vars(&HashMap::new())
                .unwrap_err()
                .to_string(),
            "CNI_NETWORK_CONFIG=\"\": unset: it must hold the conflist template (the ConfigMap key cni_network_config in manifests/tortie.yaml)"
        );
        assert_eq!(
            err(&[("CNI_MTU", "big")]),
            r#"CNI_MTU="big": not a whole number (0 means the agent's MTU)"#
        );
        assert_eq!(
            err(&[("CNI_MTU", "70000")]),
            r#"CNI_MTU="70000": must be between 576 and 65535, or 0 for the agent's MTU"#
        );
        assert_eq!(
            err(&[("CNI_CONF_NAME", "../x.conflist")]),
            r#"CNI_CONF_NAME="../x.conflist": must be a file name, not a path, and not hidden (runtimes skip hidden files)"#
        );
        assert_eq!(
            err(&[("CNI_CONF_NAME", "10-tortie.conf")]),
            r#"CNI_CONF_NAME="10-tortie.conf": must end in .conflist: runtimes read a network list only under that name"#
        );
        assert_eq!(
            err(&[("TORTIE_CNI_BIN_DIR", "opt/cni/bin")]),
            r#"TORTIE_CNI_BIN_DIR="opt/cni/bin": must be an absolute path"#
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        let t = |template: &str| err(&[("CNI_NETWORK_CONFIG", template)]);
        assert_eq!(
            t(r#"{"name":"n","nodename":"__KUBERNETES_NODE_NAME__","x":"__LOG_LEVEL__"}"#),
            "CNI_NETWORK_CONFIG: unknown placeholder __KUBERNETES_NODE_NAME__, __LOG_LEVEL__; tortie fills __CNI_MTU__ and __AGENT_SOCKET__"
        );
        assert!(
            t(r#"{"name":"n","plugins":[{"type":"tortie","mtu":__CNI_MTU__}"#).starts_with(
                "CNI_NETWORK_CONFIG: not valid JSON once the placeholders are filled: "
            )
        );
        assert_eq!(
            t(r#"{"name":"n","cniVersion":"1.0.0","type":"tortie"}"#),
            "CNI_NETWORK_CONFIG: \"plugins\" must be a non-empty list (a single-plugin .conf is not a conflist)"
        );
        assert_eq!(
            t(r#"{"cniVersion":"1.0.0","plugins":[{"type":"tortie"}]}"#),
            "CNI_NETWORK_CONFIG: \"name\" must be a non-empty string"
        );
        assert_eq!(
            t(r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"portmap"}]}"#),
            "CNI_NETWORK_CONFIG: the plugins must include exactly one of type \"tortie\", not 0"
        );
        assert_eq!(
            t(r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"tortie"},"portmap"]}"#),
            "CNI_NETWORK_CONFIG: plugins[1] must be an object with a \"type\""
        );
    }

    #[test]
    fn placeholders_are_found_whole() {
        assert_eq!(
            placeholders(r#"{"a":__CNI_MTU__,"b":"x__AGENT_SOCKET__y","c":"__ok","d":"a__b"}"#),
            vec!["__CNI_MTU__", "__AGENT_SOCKET__"]
        );
    }

    #[test]
    fn installs_plugin_and_conflist_by_rename_and_replaces_them() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tortie");
        std::fs::write(&src, b"v1").unwrap();
        let s = Settings {
            conf_dir: dir.path().join("net.d"),
            bin_dir: dir.path().join("bin"),
            ..Settings::from_vars(&vars(&[])).unwrap()
        };
        let done = install(&s, &src).unwrap();
        assert_eq!(done.plugin, dir.path().join("bin/tortie"));
        assert_eq!(done.conflist, dir.path().join("net.d/10-tortie.conflist"));
        assert_eq!(std::fs::read(&done.plugin).unwrap(), b"v1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&done.plugin), 0o755);
        assert_eq!(mode(&done.conflist), 0o644);
        assert_eq!(
            std::fs::read_to_string(&done.conflist).unwrap(),
            render_conflist(&s).unwrap()
        );
        std::fs::write(&src, b"v2").unwrap();
        install(&s, &src).unwrap();
        assert_eq!(std::fs::read(&done.plugin).unwrap(), b"v2");
        // No temporary left behind in either folder.
        for d in ["net.d", "bin"] {
            assert_eq!(std::fs::read_dir(dir.path().join(d)).unwrap().count(), 1);
        }
    }

    #[test]
    fn a_bad_template_or_a_missing_plugin_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tortie");
        std::fs::write(&src, b"v1").unwrap();
        let s = Settings {
            template: "{}".into(),
            conf_dir: dir.path().join("net.d"),
            bin_dir: dir.path().join("bin"),
            ..Settings::from_vars(&vars(&[])).unwrap()
        };
        assert!(matches!(
            install(&s, &src).unwrap_err(),
            InstallError::Template(_)
        ));
        let s = Settings {
            template: manifest_template(),
            ..s
        };
        let e = install(&s, &dir.path().join("none")).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "reading the CNI plugin {}",
                dir.path().join("none").display()
            )),
            "{e}"
        );
        assert!(!dir.path().join("net.d").exists());
        assert!(!dir.path().join("bin").exists());
    }
}
