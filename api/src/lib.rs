//! The agent's gRPC API: generated types and services, plus the unix-socket plumbing that
//! every client (`tortie` CNI plugin, `tortiectl`) and server (`tortie-node`) shares, and
//! the host veth's name, which the plugin and the agent must compute alike ([`veth`]).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint};

pub mod v1 {
    tonic::include_proto!("tortie.v1");
}

pub mod veth;

/// The agent's socket on a real node. The lab and tests pass their own path.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/tortie/agent.sock";

/// Opens a gRPC channel to a server listening on the unix socket at `path`.
///
/// The connection is made eagerly, so an absent or refusing agent is reported here, as an
/// `io::Error` the caller can map to "try again later".
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.as_ref().to_owned();
    // The URI is never dialled: the connector below ignores it and opens the socket.
    Endpoint::from_static("http://agent.sock")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Binds a unix socket that only root can use (mode 0600), replacing a stale socket file
/// left by an earlier run. Creates the parent folder when missing.
pub fn bind_root_only(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // There is a window between bind and chmod where the socket has the umask's mode; the
    // socket's folder is root-owned, so nobody else can reach it in that window.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
