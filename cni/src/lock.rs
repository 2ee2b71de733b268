//! One ADD or DEL of a pod at a time on a node, across plugin processes.
//!
//! The runtime execs the plugin once per command, and an ADD is several agent calls with
//! veth changes between them ([`crate::commands`]). Two ADDs of the same pod at once (a
//! runtime retrying an ADD that has not returned yet, or two sandboxes of one pod) each take
//! the other's veth for a leftover of an earlier ADD: one deletes the veth the other has just
//! made, and its cleanup releases the address the other is about to report. The agent cannot
//! prevent it, since it sees only the calls and not the veth changes between them. So each
//! ADD and DEL holds an exclusive `flock(2)` on a file named after the pod's host veth, from
//! before it looks at anything until it has answered (docs/decisions.md, "One ADD or DEL of
//! a pod at a time"). The kernel drops the lock when the process exits, however it exits: a
//! plugin its runtime killed never leaves a pod locked.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{CniError, Code};

/// The lock files' folder, next to the agent's socket: the agent's run directory, root's
/// only, on a tmpfs that a reboot empties.
pub fn dir_for(agent_socket: &Path) -> PathBuf {
    agent_socket
        .parent()
        .unwrap_or(Path::new(""))
        .join("cni-locks")
}

/// The longest pause between two tries while another process holds the lock.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// An exclusive lock on one pod's ADD and DEL; released when dropped.
#[derive(Debug)]
pub struct PodLock {
    path: PathBuf,
    // Held only for the lock, which closing it releases.
    _file: File,
}

impl PodLock {
    /// Takes the lock for the pod whose host veth is `host_ifname`, waiting for the process
    /// that holds it for up to `wait`, and then failing with "try again later".
    pub fn acquire(dir: &Path, host_ifname: &str, wait: Duration) -> Result<PodLock, CniError> {
        let path = dir.join(host_ifname);
        let io_error = |what: &str, e: io::Error| {
            CniError::new(
                Code::IoFailure,
                format!("{what} the lock file {}", path.display()),
            )
            .with_details(e.to_string())
        };
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            let file = match open(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| io_error("creating the folder of", e))?;
                    open(&path)
                }
                other => other,
            }
            .map_err(|e| io_error("opening", e))?;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                    Err(TryLockError::WouldBlock) => {
                        return Err(CniError::new(
                            Code::TryAgainLater,
                            format!(
                                "another ADD or DEL of this pod has held {} for {wait:?}",
                                path.display()
                            ),
                        )
                        .with_details(
                            "it may be stuck on the agent; it ends when its runtime kills it",
                        ));
                    }
                    Err(TryLockError::Error(e)) => return Err(io_error("locking", e)),
                }
            }
            // A DEL that held the lock may have removed the file meanwhile (see `remove`):
            // a lock on a file nobody else opens any more excludes nobody, so start again.
            if is_at(&file, &path).map_err(|e| io_error("checking", e))? {
                return Ok(PodLock { path, _file: file });
            }
        }
    }

    /// For a DEL that succeeded: removes the file while still holding the lock, so that the
    /// folder holds a file per pod on the node rather than one per pod it ever had. A process
    /// waiting for this lock sees the file gone and locks a new one.
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the pod's lock file");
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Whether `path` still names the open `file`.
fn is_at(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn a_second_holder_waits_for_the_first_and_gives_up_after_its_wait() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("cni-locks");
        let first = PodLock::acquire(&locks, "tortA", LONG).unwrap();
        let err = PodLock::acquire(&locks, "tortA", Duration::from_millis(30)).unwrap_err();
        assert_eq!(err.code, Code::TryAgainLater, "{err:?}");
        // Another pod is not held up.
        let _other = PodLock::acquire(&locks, "tortB", Duration::ZERO).unwrap();

        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn({
            let locks = locks.clone();
            move || {
                let lock = PodLock::acquire(&locks, "tortA", LONG);
                tx.send(()).unwrap();
                lock
            }
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "got a held lock"
        );
        drop(first);
        rx.recv_timeout(LONG).unwrap();
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn a_waiter_on_a_removed_file_locks_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let del = PodLock::acquire(dir.path(), "tortA", LONG).unwrap();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn({
            let dir = dir.path().to_owned();
            move || {
                let lock = PodLock::acquire(&dir, "tortA", LONG).unwrap();
                tx.send(()).unwrap();
                lock
            }
        });
        // The waiter has opened the file and is waiting for its lock.
        std::thread::sleep(Duration::from_millis(50));
        del.remove();
        rx.recv_timeout(LONG).unwrap();
        let held = waiter.join().unwrap();
        // The waiter holds the file that is there now: a third process is kept out.
        assert!(held.path.exists());
        let err = PodLock::acquire(dir.path(), "tortA", Duration::ZERO).unwrap_err();
        assert_eq!(err.code, Code::TryAgainLater, "{err:?}");
    }
}
