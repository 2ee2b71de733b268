//! A thread that lives in a pod's network namespace. It calls `setns` once, opens its own
//! netlink socket there, then runs jobs sent to it. `setns` changes only the calling thread,
//! which is why it never happens on the runtime's thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sched::{CloneFlags, setns};

use super::netlink::Netlink;
use crate::dataplane::DataplaneError;

type Job = Box<dyn FnOnce(&mut Netlink) + Send>;

pub struct PodNetns {
    path: PathBuf,
    /// Kept open: the veth request names the namespace by this descriptor (IFLA_NET_NS_FD).
    fd: OwnedFd,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl PodNetns {
    /// Opens the namespace at `path` and starts its thread. A path that does not exist, or
    /// that is no longer a namespace (its bind mount is gone and only the file is left), is
    /// [`DataplaneError::NetnsMissing`].
    pub fn enter(path: &Path) -> Result<PodNetns, DataplaneError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DataplaneError::NetnsMissing(path.to_owned()),
            _ => DataplaneError::failed(format!("open {}", path.display()), e),
        })?;
        let fd = OwnedFd::from(file);
        let thread_fd = fd
            .try_clone()
            .map_err(|e| DataplaneError::failed("dup netns fd", e))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), (bool, String)>>(1);
        let thread = std::thread::Builder::new()
            .name("tortie-netns".into())
            .spawn(move || {
                if let Err(e) = setns(thread_fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    // EINVAL: the descriptor is not a network namespace.
                    let _ =
                        ready_tx.send(Err((e == nix::errno::Errno::EINVAL, format!("setns: {e}"))));
                    return;
                }
                drop(thread_fd);
                let mut nl = match Netlink::open() {
                    Ok(nl) => nl,
                    Err(e) => {
                        let _ = ready_tx.send(Err((false, format!("netlink socket: {e}"))));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                for job in rx {
                    job(&mut nl);
                }
            })
            .map_err(|e| DataplaneError::failed("spawn netns thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(PodNetns {
                path: path.to_owned(),
                fd,
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err((true, _))) => Err(DataplaneError::NetnsMissing(path.to_owned())),
            Ok(Err((false, msg))) => Err(DataplaneError::failed(
                format!("enter {}", path.display()),
                msg,
            )),
            Err(_) => Err(DataplaneError::failed(
                format!("enter {}", path.display()),
                "netns thread died",
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `job` on the namespace's thread; the answer comes back without blocking the
    /// caller's thread, so other work (an agent call) can proceed meanwhile.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Netlink) -> R + Send + 'static,
    ) -> Result<R, DataplaneError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| DataplaneError::failed("netns thread", "already stopped"))?;
        jobs.send(Box::new(move |nl| {
            let _ = tx.send(job(nl));
        }))
        .map_err(|_| DataplaneError::failed("netns thread", "stopped"))?;
        rx.await
            .map_err(|_| DataplaneError::failed("netns thread", "died during a job"))
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
