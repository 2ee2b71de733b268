//! What calico-node's install-cni does, for tortie: writes the conflist into the CNI config
//! folder and copies the `tortie` plugin binary into the CNI bin folder.
//!
//! Both are written to a temporary name and renamed into place, so a kubelet reading the
//! folder, or executing the plugin, never sees half a file (and a running plugin's binary
//! is never overwritten in place, which would fail with ETXTBSY).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::json;

/// The conflist's file name: `10-` sorts it before most other networks, as Calico's
/// `10-calico.conflist` does.
pub const CONFLIST_NAME: &str = "10-tortie.conflist";
/// The network name, the same as Calico's so tooling that looks for it keeps working.
pub const NETWORK_NAME: &str = "k8s-pod-network";
/// The plugin binary's name in the CNI bin folder.
pub const PLUGIN_NAME: &str = "tortie";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the CNI plugin {path} is missing (it ships next to tortie-node; build the tortie-cni crate), \
         and {dest} has none either"
    )]
    NoPlugin { path: PathBuf, dest: PathBuf },
}

/// The conflist: tortie, then the reference `portmap` plugin for hostPort. cniVersion 1.0.0
/// because Debian's reference plugins stop there. No `mtu`: the plugin asks the agent.
pub fn conflist(agent_socket: &Path) -> serde_json::Value {
    json!({
        "name": NETWORK_NAME,
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": PLUGIN_NAME,
                "agent_socket": agent_socket,
                "log_level": "info",
            },
            {
                "type": "portmap",
                "snat": true,
                "capabilities": { "portMappings": true },
            },
        ],
    })
}

/// Writes `contents` to `dir/name` through a temporary file and a rename.
fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let dest = dir.join(name);
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| InstallError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    // A dot-prefixed temporary: runtimes skip hidden files when scanning the folder.
    let tmp = dir.join(format!(".{name}.tortie-tmp"));
    std::fs::write(&tmp, contents).map_err(err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err(&tmp))?;
    std::fs::rename(&tmp, &dest).map_err(err(&dest))?;
    Ok(())
}

/// Writes the conflist into `conf_dir`. Returns its path.
pub fn install_conflist(conf_dir: &Path, agent_socket: &Path) -> Result<PathBuf, InstallError> {
    let mut text = serde_json::to_vec_pretty(&conflist(agent_socket)).unwrap_or_default();
    text.push(b'\n');
    replace_file(conf_dir, CONFLIST_NAME, &text, 0o644)?;
    Ok(conf_dir.join(CONFLIST_NAME))
}

/// Copies `plugin` (the `tortie` binary shipped with the agent) into `bin_dir`. When the
/// source is missing but `bin_dir` already has a plugin (put there by an image or the lab),
/// that one is kept. Returns the installed path.
pub fn install_plugin(plugin: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let dest = bin_dir.join(PLUGIN_NAME);
    match std::fs::read(plugin) {
        Ok(bytes) => {
            replace_file(bin_dir, PLUGIN_NAME, &bytes, 0o755)?;
            Ok(dest)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && dest.exists() => {
            tracing::warn!(source = %plugin.display(), kept = %dest.display(), "no CNI plugin next to tortie-node; keeping the installed one");
            Ok(dest)
        }
        Err(_) => Err(InstallError::NoPlugin {
            path: plugin.to_owned(),
            dest,
        }),
    }
}

/// The plugin shipped next to the running agent binary.
pub fn shipped_plugin() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| io::Error::other("the agent binary has no folder"))?;
    Ok(dir.join(PLUGIN_NAME))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn conflist_names_the_socket_and_chains_portmap() {
        let dir = tempfile::tempdir().unwrap();
        let path =
            install_conflist(&dir.path().join("net.d"), Path::new("/run/n1/agent.sock")).unwrap();
        assert_eq!(path.file_name().unwrap(), "10-tortie.conflist");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["name"], "k8s-pod-network");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "tortie");
        assert_eq!(v["plugins"][0]["agent_socket"], "/run/n1/agent.sock");
        assert!(v["plugins"][0].get("mtu").is_none());
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
        // Nothing else left behind in the folder.
        assert_eq!(
            std::fs::read_dir(dir.path().join("net.d")).unwrap().count(),
            1
        );
    }

    #[test]
    fn plugin_is_copied_executable_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tortie");
        std::fs::write(&src, b"v1").unwrap();
        let bin = dir.path().join("bin");
        let dest = install_plugin(&src, &bin).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"v1");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        std::fs::write(&src, b"v2").unwrap();
        install_plugin(&src, &bin).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2");
    }

    #[test]
    fn a_missing_plugin_is_an_error_unless_one_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let err = install_plugin(&dir.path().join("nope"), &bin).unwrap_err();
        assert!(matches!(err, InstallError::NoPlugin { .. }), "{err}");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("tortie"), b"kept").unwrap();
        install_plugin(&dir.path().join("nope"), &bin).unwrap();
        assert_eq!(std::fs::read(bin.join("tortie")).unwrap(), b"kept");
    }
}
