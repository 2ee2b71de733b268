//! Reaching the lab's apiserver from this process.
//!
//! The apiserver listens only inside the control namespace, so nothing on the host's network
//! can reach it. A socket belongs to the namespace of the thread that creates it: we run the
//! client on a dedicated OS thread that first joins a lab namespace (never a tokio worker,
//! docs/architecture.md), with its own single-threaded runtime.

use std::future::Future;
use std::path::Path;

use nix::sched::CloneFlags;

use crate::Error;

/// Runs `f` on a fresh OS thread that has joined network namespace `netns`. The thread is
/// scoped, so `f` may borrow from the caller.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = Path::new("/run/netns").join(netns);
    let file =
        std::fs::File::open(&path).map_err(Error::io(format!("opening {}", path.display())))?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(format!("netns-{netns}"))
            .spawn_scoped(scope, move || -> Result<T, Error> {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                    what: "setns".into(),
                    source: e.into(),
                })?;
                Ok(f())
            })
            .map_err(Error::io("spawning a thread"))?;
        thread
            .join()
            .map_err(|_| Error::Invalid(format!("the thread working in netns {netns} panicked")))?
    })
}

/// Runs the future `f()` makes to completion on a single-threaded runtime inside `netns`.
pub fn block_on_in_netns<T, F, Fut>(netns: &str, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    in_netns(netns, move || -> Result<T, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("building a tokio runtime"))?;
        Ok(rt.block_on(f()))
    })?
}

/// A kube-rs client from a kubeconfig file. Use it only inside [`block_on_in_netns`] on a lab
/// namespace: its connections are opened lazily, by whichever thread runs the request.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client, Error> {
    let raw = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Kube(format!("reading {}: {e}", kubeconfig.display())))?;
    let config =
        kube::Config::from_custom_kubeconfig(raw, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kube(format!("loading {}: {e}", kubeconfig.display())))?;
    kube::Client::try_from(config)
        .map_err(|e| Error::Kube(format!("client from {}: {e}", kubeconfig.display())))
}

/// Runs `f` with an admin kube-rs client of `lab`, inside its control namespace:
///
/// ```no_run
/// # use tortie_lab::{Lab, kube_netns::with_admin_client};
/// # use k8s_openapi::api::core::v1::Node;
/// let lab = Lab::from_env();
/// let nodes = with_admin_client(&lab, |client| async move {
///     kube::Api::<Node>::all(client).list(&Default::default()).await
/// })?;
/// # Ok::<(), tortie_lab::Error>(())
/// ```
pub fn with_admin_client<T, F, Fut>(lab: &crate::Lab, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(kube::Client) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let kubeconfig = lab.admin_kubeconfig();
    block_on_in_netns(&lab.control_netns(), move || async move {
        let c = client(&kubeconfig).await?;
        Ok(f(c).await)
    })?
}

/// GETs `path` (e.g. `/readyz`) and returns the body; a non-2xx status is an error.
pub async fn get_raw(client: &kube::Client, path: &str) -> Result<String, Error> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Kube(format!("building GET {path}: {e}")))?;
    client
        .request_text(req)
        .await
        .map_err(|e| Error::Kube(format!("GET {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetNs;

    /// Root: the closure really runs in the namespace (it sees only that namespace's links).
    #[test]
    fn closure_runs_inside_the_namespace() {
        let ns = NetNs::create("tlkn").unwrap_or_else(|e| panic!("netns: {e}"));
        ns.run(
            "ip",
            &[
                "link", "add", "marker0", "type", "veth", "peer", "name", "marker1",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // A child forked by the thread inherits the thread's namespace, so `ip` sees its links.
        let links = in_netns(ns.name(), || {
            std::process::Command::new("ip")
                .args(["-o", "link", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(links.contains("marker0"), "{links}");
        let host = crate::run(std::process::Command::new("ip").args(["-o", "link", "show"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !host.contains("marker0"),
            "the calling thread stayed outside"
        );
    }
}
