//! `down`: removes every namespace, process, mount and file a lab made. It trusts no memory
//! of what `up` did: a crash can stop `up` anywhere. It finds
//! - processes by the [`MEMBER_ENV`](crate::lab::MEMBER_ENV) marker, by pid file, and by
//!   living in one of the lab's namespaces;
//! - namespaces by name ([`Lab::owns_netns`]) and by `lab.json`;
//! - mounts by their place under the state folder.
//!
//! Running it again, or on a lab that never existed, does nothing and succeeds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabConfig};
use crate::network::{delete_netns, existing_netns};
use crate::{Error, control, process};

/// Written first thing by `up`. `down` deletes a state folder only when it carries this
/// marker, so a mistyped `TORTIE_LAB_STATE=/home` never costs anyone their files.
pub const MARKER_FILE: &str = ".tortie-lab";

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub processes: usize,
    pub netns: Vec<String>,
    pub mounts: Vec<PathBuf>,
    pub state_dir: bool,
}

/// The lab's namespaces that exist now.
pub fn lab_netns(lab: &Lab) -> Vec<String> {
    let recorded: Vec<String> = LabConfig::load(lab)
        .ok()
        .flatten()
        .map(|c| c.nodes.into_iter().map(|n| n.netns).collect())
        .unwrap_or_default();
    let mut names: Vec<String> = existing_netns()
        .into_iter()
        .filter(|n| lab.owns_netns(n) || recorded.contains(n))
        .collect();
    names.sort();
    names
}

/// The lab's live processes: marked ones, pid-file ones that are marked, and everything
/// inside its namespaces.
pub fn lab_processes(lab: &Lab) -> Vec<i32> {
    let mut pids = process::members(lab);
    let mut pid_files = vec![
        control::etcd_pid_file(lab),
        control::apiserver_pid_file(lab),
    ];
    if let Ok(dir) = std::fs::read_dir(lab.state_dir().join("nodes")) {
        pid_files.extend(dir.filter_map(|e| Some(e.ok()?.path().join("agent.pid"))));
    }
    pids.extend(pid_files.iter().filter_map(|f| process::running(lab, f)));
    for ns in lab_netns(lab) {
        pids.extend(
            crate::netns::NetNs::pids_of(&ns)
                .into_iter()
                .filter(|p| process::is_alive(*p)),
        );
    }
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    pids.retain(|p| *p != me);
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Mount points at or under `dir`, deepest first, from the kernel's table.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        // Field 5 is the mount point, with spaces and the like escaped as octal.
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the lab. Processes first (so nothing recreates what follows), then namespaces,
/// then mounts, then the state folder.
pub fn down(lab: &Lab) -> Result<Removed, Error> {
    let state = lab.state_dir();
    if state.exists()
        && !state.join(MARKER_FILE).exists()
        && std::fs::read_dir(state).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(Error::Invalid(format!(
            "{} has no {MARKER_FILE} marker: not a lab state folder, refusing to delete it",
            state.display()
        )));
    }
    let mut removed = Removed::default();
    // A process may start another while we kill (an agent forking a helper): go round until
    // nothing is left.
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let pids = lab_processes(lab);
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("lab processes {pids:?} to go away"),
                secs: 4.0,
            });
        }
        removed.processes += pids.len();
        process::kill_all(&pids, Duration::from_secs(3))?;
    }
    for ns in lab_netns(lab) {
        delete_netns(&ns)?;
        removed.netns.push(ns);
    }
    for m in mounts_under(state) {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).map_err(|e| Error::Io {
            what: format!("unmounting {}", m.display()),
            source: e.into(),
        })?;
        removed.mounts.push(m);
    }
    match std::fs::remove_dir_all(state) {
        Ok(()) => removed.state_dir = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                what: format!("removing {}", state.display()),
                source,
            });
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }

    #[test]
    fn refuses_a_folder_that_is_not_a_lab() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("precious"), "x").unwrap_or_else(|e| panic!("{e}"));
        let lab = Lab::new(dir.path(), "tl-refuse-");
        assert!(down(&lab).is_err());
        assert!(dir.path().join("precious").exists());
    }

    #[test]
    fn down_on_nothing_succeeds_twice() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let lab = Lab::new(dir.path().join("never-made"), "tl-nothing-");
        assert_eq!(
            down(&lab).unwrap_or_else(|e| panic!("{e}")),
            Removed::default()
        );
        assert_eq!(
            down(&lab).unwrap_or_else(|e| panic!("{e}")),
            Removed::default()
        );
    }
}
