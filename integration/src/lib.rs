//! tortie-lab: a whole cluster on one machine, and the harness for end-to-end, interop and
//! bench scenarios.
//!
//! The pieces, in the order `up` uses them: [`lab`] (names and paths), [`pki`] (certificates
//! and tokens), [`network`] (LAN and node namespaces), [`control`] (etcd and kube-apiserver),
//! [`objects`] (what gets applied to the apiserver), [`agents`] (one `tortie-node` per node).
//! [`teardown`] undoes all of it; [`status`] reports on it; [`cli`] is the command line.
//! [`pod`] plays kubelet for pods, and [`traffic`] serves and probes inside them.

use std::io;
use std::path::{Path, PathBuf};

/// The per-node agents: start, find, ask for health.
pub mod agents;
/// `bench bgp`: full-feed convergence into the kernel, tortie against BIRD.
pub mod bench_bgp;
/// `bench cni`: CNI ADD/DEL latency of tortie against Debian's ptp + host-local on a lab node.
pub mod bench_cni;
/// What every bench prints with its tables (date, machine, load, build) and its exit code.
pub mod bench_header;
/// `bench policy`: the agent's policy compile + apply against a synthetic cluster, in
/// throw-away namespaces, beside a plain `iptables-restore` of the same rules.
pub mod bench_policy;
/// The command line: one module per subcommand.
pub mod cli;
/// etcd and kube-apiserver in the control namespace.
pub mod control;
/// Running code inside a lab namespace, and kube-rs clients that reach the apiserver from there.
pub mod kube_netns;
/// Names, paths and addresses of one lab.
pub mod lab;
/// Network namespaces owned by a test or the lab.
pub mod netns;
/// The LAN bridge and the node namespaces.
pub mod network;
/// Objects the lab applies: Nodes, kubeconfigs, the token file.
pub mod objects;
/// `peer add`: BIRD or FRR on the LAN as a top-of-rack router, and its BGPPeer.
pub mod peers;
/// The lab's own CA, apiserver certificate, service-account key and tokens.
pub mod pki;
/// Pods: the lab as kubelet + containerd (Pod objects, sandbox namespaces, CNI through the
/// node's conflist), and `ping` between pods and nodes.
pub mod pod;
/// Processes started detached inside a namespace, found again by pid file or marker.
pub mod process;
/// Real BGP routers (BIRD, FRR, GoBGP, ExaBGP) as peers in namespaces, for interop tests.
pub mod routers;
/// `status`: what runs where, as text or JSON.
pub mod status;
/// `down`: removes everything a lab made.
pub mod teardown;
/// Servers and probes inside pods, and truth tables of who reaches whom.
pub mod traffic;
/// `up`: builds the lab, phase by phase.
pub mod up;

pub use lab::{Lab, LabConfig, NodeConfig};

/// Errors of the lab library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{}: {detail}", path.display())]
    Config { path: PathBuf, detail: String },
    #[error("{0}")]
    Command(String),
    #[error("timed out after {secs:.1}s waiting for {what}")]
    Timeout { what: String, secs: f64 },
    #[error("kubernetes API: {0}")]
    Kube(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Pki { what: String, source: rcgen::Error },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename), creating the parent folder.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(Error::io(format!("creating {}", parent.display())))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming {}", tmp.display())))
}

/// Creates `path` and its parents.
pub(crate) fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(Error::io(format!("creating {}", path.display())))
}

/// Runs a command to completion; a failure carries the command line and its stderr.
pub(crate) fn run(cmd: &mut std::process::Command) -> Result<String, Error> {
    netns::run_checked(cmd)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| Error::Command(e.to_string()))
}
