//! What every `bench` scenario prints with its tables, and how it ends: the date, the
//! machine (cores, memory, kernel, load average before and after), the build that was
//! measured, the verdict on each goal, and an exit code a script can rely on (1 when any goal
//! is not met, like a failed test).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

/// Where and when a run happened.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub date: String,
    pub cores: usize,
    pub memory_gb: f64,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    /// The machine as a run starts; [`Machine::finish`] adds the load average after.
    pub fn at_start() -> Machine {
        Machine {
            date: Command::new("date")
                .args(["-u", "+%Y-%m-%d %H:%M UTC"])
                .stdin(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gb: meminfo_kb("MemTotal:") as f64 / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_default(),
            load_before: loadavg(),
            load_after: String::new(),
        }
    }

    pub fn finish(&mut self) {
        self.load_after = loadavg();
    }

    /// `date: …; machine: … cores, … GB, kernel …; load average … before, … after`.
    pub fn line(&self) -> String {
        format!(
            "date: {}; machine: {} cores, {:.1} GB, kernel {}; load average {} before, {} after",
            self.date,
            self.cores,
            self.memory_gb,
            self.kernel,
            self.load_before,
            if self.load_after.is_empty() {
                "?"
            } else {
                &self.load_after
            }
        )
    }
}

/// How this `tortie-lab` was built: the in-process benches measure this build.
pub fn own_build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The build a measured binary comes from, told by where it lives: `scripts/dist` puts the
/// shipped binaries in `target/dist`.
pub fn build_of(binary: &Path) -> String {
    let dir = binary
        .parent()
        .and_then(Path::file_name)
        .and_then(|d| d.to_str())
        .unwrap_or("");
    let kind = match dir {
        "dist" => "scripts/dist (release)",
        "release" => "release",
        "debug" => "debug",
        _ => "unknown build",
    };
    format!("{kind}: {}", binary.display())
}

/// A goal's verdict.
pub fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "-",
    }
}

/// The last line of a run's output.
pub fn verdict(all_met: bool) -> &'static str {
    if all_met {
        "every goal met"
    } else {
        "some goal NOT MET"
    }
}

/// Exit 0 when every goal was met, 1 otherwise; an error that stops a run is exit 1 too,
/// but prints no table.
pub fn exit_code(all_met: bool) -> ExitCode {
    if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_told_by_the_folder() {
        assert!(build_of(Path::new("/w/target/dist/tortie-node")).starts_with("scripts/dist"));
        assert!(build_of(Path::new("/w/target/debug/tortie-node")).starts_with("debug:"));
        assert!(build_of(Path::new("/usr/bin/tortie-node")).starts_with("unknown build:"));
    }

    #[test]
    fn the_machine_line_names_both_loads() {
        let mut m = Machine {
            load_before: "0.50 0.40 0.30".into(),
            ..Machine::default()
        };
        assert!(m.line().contains("0.50 0.40 0.30 before, ? after"));
        m.load_after = "1.00 0.50 0.30".into();
        assert!(m.line().contains("before, 1.00 0.50 0.30 after"));
    }
}
