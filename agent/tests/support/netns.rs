//! A throw-away network namespace for one root test, so that what the test writes (routes,
//! sets, rules, sysctls) never reaches the host.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace removed on drop, even when the test fails.
pub struct Netns(String);

impl Netns {
    /// Adds `{prefix}-{pid}-{n}`: unique among the tests of this binary and of any other
    /// running at the same time; the prefix says which tests left it behind after a crash.
    pub fn new(prefix: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The namespace's file, for `setns` and the `open_in_netns` constructors.
    pub fn path(&self) -> PathBuf {
        std::path::Path::new("/run/netns").join(&self.0)
    }

    /// Runs `ip -n <namespace> args`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `prog args` inside the namespace; panics on failure.
    pub fn exec(&self, prog: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.0.as_str(), prog];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that entered the namespace. If entering fails the thread panics
    /// before `f` runs: nothing is ever written to the host's namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `prog args` and returns its stdout; panics with its stderr on failure.
fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
