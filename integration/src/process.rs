//! Long-lived lab processes (etcd, kube-apiserver, agents): started detached inside a
//! namespace, recorded in a pid file, and marked with [`MEMBER_ENV`] so that `down` finds
//! them again after a crash, pid files or not.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::lab::{Lab, MEMBER_ENV};
use crate::{Error, write_file};

/// What to start, where, and where its output and pid go.
#[derive(Debug, Clone)]
pub struct Spec {
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    /// Start from an empty environment (plus [`MEMBER_ENV`] and `env`), as a kubelet starts
    /// a container, instead of inheriting ours.
    pub clear_env: bool,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

/// Starts `spec` inside its namespace, detached from our terminal (own process group, stdin
/// from /dev/null, output appended to its log), and writes its pid file.
///
/// `ip netns exec` execs the program in place, so the pid we get is the program's own.
pub fn spawn(lab: &Lab, spec: &Spec) -> Result<Child, Error> {
    if let Some(parent) = spec.log.parent() {
        crate::mkdir(parent)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(Error::io(format!("opening {}", spec.log.display())))?;
    {
        use std::io::Write;
        let mut header = &log;
        // Several runs append to one log; a header tells them apart.
        let _ = writeln!(
            header,
            "==> tortie-lab: starting {} in netns {}",
            spec.program.display(),
            spec.netns
        );
    }
    let err = log
        .try_clone()
        .map_err(Error::io("duplicating the log file handle"))?;
    let mut cmd = Command::new("ip");
    if spec.clear_env {
        cmd.env_clear();
    }
    cmd.args(["netns", "exec", &spec.netns])
        .arg(&spec.program)
        .args(&spec.args)
        .env(MEMBER_ENV, lab.state_dir())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for `tortie-lab up` must not reach etcd.
        .process_group(0);
    let child = cmd.spawn().map_err(Error::io(format!(
        "starting {} in netns {}",
        spec.program.display(),
        spec.netns
    )))?;
    write_file(&spec.pid_file, format!("{}\n", child.id()).as_bytes())?;
    Ok(child)
}

/// The pid recorded in `pid_file`, if that process is still alive and belongs to `lab`.
pub fn running(lab: &Lab, pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (is_alive(pid) && is_member(lab, pid)).then_some(pid)
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` carries `lab`'s marker in its environment.
pub fn is_member(lab: &Lab, pid: i32) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut want = MEMBER_ENV.as_bytes().to_vec();
    want.push(b'=');
    want.extend_from_slice(lab.state_dir().as_os_str().as_encoded_bytes());
    environ.split(|b| *b == 0).any(|var| var == want.as_slice())
}

/// Every live process carrying `lab`'s marker.
pub fn members(lab: &Lab) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_member(lab, *pid) && is_alive(*pid))
        .collect()
}

/// SIGKILLs `pids` and waits until all have exited, then reaps those that are our own
/// children: a caller that started lab processes itself (a test restarting an agent) is left
/// no zombie. The others are zombies of their own parent (init, once `up` has exited), which
/// reaps them. Nothing in the lab holds state worth a graceful stop: `down` deletes the
/// state folder right after.
pub fn kill_all(pids: &[i32], timeout: Duration) -> Result<(), Error> {
    for pid in pids {
        // ESRCH: it exited on its own meanwhile, which is what we want.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
        if left.is_empty() {
            for pid in pids {
                reap_if_child(*pid);
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("processes {left:?} to die"),
                secs: timeout.as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The parent of `pid` (field 4 of `/proc/PID/stat`), while `pid` exists.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields follow the parenthesised command name, which may itself hold spaces.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Reaps `pid` if it is an exited child of ours; does nothing otherwise (not ours, gone, or
/// still running: WNOHANG).
fn reap_if_child(pid: i32) {
    let me = i32::try_from(std::process::id()).ok();
    if me.is_some() && parent_of(pid) == me {
        // ECHILD: a `Child::wait` elsewhere in this process reaped it first, which is as good.
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_but_not_a_member() {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        assert!(is_alive(me));
        assert!(!is_member(&Lab::new("/nonexistent/lab", ""), me));
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn killing_a_child_of_ours_leaves_no_zombie() {
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sleep: {e}"));
        let pid = i32::try_from(child.id()).unwrap_or_else(|e| panic!("{e}"));
        let me = i32::try_from(std::process::id()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parent_of(pid), Some(me));
        // Dropped unwaited, as `up` drops the agents it started.
        drop(child);
        kill_all(&[pid], Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} is left as a zombie of ours"
        );
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\n").unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(log_tail(&log, 2), "b\nc");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
