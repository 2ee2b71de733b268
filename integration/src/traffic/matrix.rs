//! Truth tables of who reaches whom, shaped like the Kubernetes e2e network policy suite's:
//! one row per client pod, one column per server pod, `.` where a connection goes through
//! and `X` where it does not. Expected tables are built from the policy's meaning with
//! [`TruthTable::expect_peer`] and its shorthands; observed ones come from probes
//! ([`Probed`]); [`compare`] prints both and where they differ.

use std::fmt::Write as _;

use super::Answer;
use super::probe::Failure;

/// A set of pods named `namespace/name`: any pod ([`Peer::any`]), a namespace's pods
/// ([`Peer::ns`]), pods of one name in every namespace ([`Peer::named`]) or one pod
/// ([`Peer::pod`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
}

impl<'a> Peer<'a> {
    pub fn any() -> Peer<'a> {
        Peer::default()
    }
    pub fn ns(namespace: &'a str) -> Peer<'a> {
        Peer {
            namespace: Some(namespace),
            pod: None,
        }
    }
    pub fn named(pod: &'a str) -> Peer<'a> {
        Peer {
            namespace: None,
            pod: Some(pod),
        }
    }
    pub fn pod(namespace: &'a str, pod: &'a str) -> Peer<'a> {
        Peer {
            namespace: Some(namespace),
            pod: Some(pod),
        }
    }

    /// Whether `pod` (`namespace/name`) is one of this set.
    pub fn matches(&self, pod: &str) -> bool {
        let (ns, name) = pod.split_once('/').unwrap_or(("", pod));
        self.namespace.is_none_or(|n| n == ns) && self.pod.is_none_or(|p| p == name)
    }
}

/// Which client reaches which server: `pods` name the rows (clients) and the columns
/// (servers) alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    pods: Vec<String>,
    cells: Vec<bool>,
}

impl TruthTable {
    /// Every cell `all`.
    pub fn new(pods: &[String], all: bool) -> TruthTable {
        TruthTable {
            pods: pods.to_vec(),
            cells: vec![all; pods.len() * pods.len()],
        }
    }

    pub fn pods(&self) -> &[String] {
        &self.pods
    }

    fn index(&self, pod: &str) -> Option<usize> {
        self.pods.iter().position(|p| p == pod)
    }

    /// Whether `from` reaches `to`; `None` for a pod not in the table.
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        let n = self.pods.len();
        Some(self.cells[self.index(from)? * n + self.index(to)?])
    }

    /// Sets every cell whose client is in `from` and whose server is in `to`; returns how
    /// many cells that covers (0 tells a caller that named a pod the table lacks).
    pub fn expect_peer(&mut self, from: Peer, to: Peer, reaches: bool) -> usize {
        let n = self.pods.len();
        let mut count = 0;
        for i in 0..n {
            for j in 0..n {
                if from.matches(&self.pods[i]) && to.matches(&self.pods[j]) {
                    self.cells[i * n + j] = reaches;
                    count += 1;
                }
            }
        }
        count
    }

    /// One cell: `from` (`namespace/name`) to `to`.
    pub fn expect(&mut self, from: &str, to: &str, reaches: bool) -> usize {
        let (f, t) = (split(from), split(to));
        self.expect_peer(Peer::pod(f.0, f.1), Peer::pod(t.0, t.1), reaches)
    }

    /// Every client to `to`.
    pub fn expect_all_ingress(&mut self, to: &str, reaches: bool) -> usize {
        let t = split(to);
        self.expect_peer(Peer::any(), Peer::pod(t.0, t.1), reaches)
    }

    /// `from` to every server.
    pub fn expect_all_egress(&mut self, from: &str, reaches: bool) -> usize {
        let f = split(from);
        self.expect_peer(Peer::pod(f.0, f.1), Peer::any(), reaches)
    }

    /// Every pod reaches itself: its own address is on its own loopback, and the packets
    /// never leave its namespace for a node that could apply a policy (kubernetes#95879:
    /// the API leaves loopback undefined; the upstream suite ignores those cells).
    pub fn allow_loopback(&mut self) {
        let n = self.pods.len();
        for i in 0..n {
            self.cells[i * n + i] = true;
        }
    }

    /// The cells where `self` and `other` differ, as `(from, to)`; every cell when the
    /// two tables do not name the same pods.
    pub fn differences<'a>(&'a self, other: &TruthTable) -> Vec<(&'a str, &'a str)> {
        let n = self.pods.len();
        let mut out = Vec::new();
        for i in 0..n {
            for j in 0..n {
                if self.pods != other.pods || self.cells[i * n + j] != other.cells[i * n + j] {
                    out.push((self.pods[i].as_str(), self.pods[j].as_str()));
                }
            }
        }
        out
    }

    /// The table as upstream prints it: a `-` corner, server names across, client names
    /// down, and `mark(from, to)` in each cell.
    fn render_with(&self, mark: impl Fn(usize) -> char) -> String {
        let n = self.pods.len();
        let width = self.pods.iter().map(String::len).max().unwrap_or(1).max(1);
        let mut out = format!("{:<width$}", "-");
        for p in &self.pods {
            let _ = write!(out, " {p:<width$}");
        }
        out.push('\n');
        for i in 0..n {
            let _ = write!(out, "{:<width$}", self.pods[i]);
            for j in 0..n {
                let _ = write!(out, " {:<width$}", mark(i * n + j));
            }
            out.push('\n');
        }
        out
    }

    /// `.` where the client reaches the server, `X` where it does not.
    pub fn render(&self) -> String {
        self.render_with(|k| if self.cells[k] { '.' } else { 'X' })
    }
}

fn split(pod: &str) -> (&str, &str) {
    pod.split_once('/').unwrap_or(("", pod))
}

/// What a matrix of probes brought back: row `from`, column `to`, as in [`TruthTable`].
#[derive(Debug, Clone)]
pub struct Probed {
    pods: Vec<String>,
    results: Vec<Result<Answer, Failure>>,
}

impl Probed {
    /// `results` holds one result per (client, server) pair, client-major.
    pub fn new(pods: Vec<String>, results: Vec<Result<Answer, Failure>>) -> Probed {
        Probed { pods, results }
    }

    /// The result of the probe from `from` to `to`.
    pub fn result(&self, from: &str, to: &str) -> Option<&Result<Answer, Failure>> {
        let n = self.pods.len();
        let i = self.pods.iter().position(|p| p == from)?;
        let j = self.pods.iter().position(|p| p == to)?;
        self.results.get(i * n + j)
    }

    /// A cell is true when the server that answered is the one probed: an answer from
    /// another pod's server means the address went somewhere it should not.
    pub fn table(&self) -> TruthTable {
        let n = self.pods.len();
        let mut t = TruthTable::new(&self.pods, false);
        for (k, r) in self.results.iter().enumerate().take(n * n) {
            t.cells[k] = matches!(r, Ok(a) if a.identity == self.pods[k % n]);
        }
        t
    }

    /// Why a cell is what it is: `answered by x/a from 10.244.0.5`, or the failure.
    pub fn describe(&self, from: &str, to: &str) -> String {
        match self.result(from, to) {
            Some(Ok(a)) => format!("answered by {} (saw {})", a.identity, a.seen_source),
            Some(Err(e)) => e.to_string(),
            None => "not probed".into(),
        }
    }
}

/// `None` when `probed` shows exactly `expected`; otherwise the report upstream's suite
/// prints: expected, observed and the comparison (`X` where they differ), then each cell
/// that differs with what the probe saw.
pub fn compare(expected: &TruthTable, probed: &Probed) -> Option<String> {
    let observed = probed.table();
    let diff = expected.differences(&observed);
    if diff.is_empty() {
        return None;
    }
    let mut out = String::new();
    let _ = writeln!(out, "expected:\n{}", expected.render());
    let _ = writeln!(out, "observed:\n{}", observed.render());
    if expected.pods == observed.pods {
        let comparison = expected.render_with(|k| {
            if expected.cells[k] == observed.cells[k] {
                '.'
            } else {
                'X'
            }
        });
        let _ = writeln!(out, "comparison (X: differs):\n{comparison}");
    }
    let _ = writeln!(out, "{} cells differ:", diff.len());
    for (from, to) in diff {
        let want = if expected.get(from, to) == Some(true) {
            "should reach"
        } else {
            "should not reach"
        };
        let _ = writeln!(out, "  {from} {want} {to}: {}", probed.describe(from, to));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        ["x", "y"]
            .iter()
            .flat_map(|ns| ["a", "b"].iter().map(move |p| format!("{ns}/{p}")))
            .collect()
    }

    #[test]
    fn peers_select_rows_and_columns() {
        let mut t = TruthTable::new(&pods(), true);
        assert_eq!(t.expect_peer(Peer::any(), Peer::ns("x"), false), 8);
        t.allow_loopback();
        assert_eq!(t.get("y/a", "x/b"), Some(false));
        assert_eq!(t.get("x/a", "x/a"), Some(true));
        assert_eq!(t.get("x/a", "y/b"), Some(true));
        assert_eq!(t.expect("y/a", "x/b", true), 1);
        assert_eq!(t.get("y/a", "x/b"), Some(true));
        assert_eq!(t.expect_all_egress("x/a", false), 4);
        assert_eq!(t.expect_all_ingress("y/b", false), 4);
        assert_eq!(
            t.expect_peer(Peer::named("b"), Peer::pod("y", "a"), false),
            2
        );
        assert_eq!(
            t.expect("z/a", "x/a", false),
            0,
            "z/a is no pod of the table"
        );
        assert_eq!(t.get("z/a", "x/a"), None);
    }

    #[test]
    fn renders_like_upstream_and_reports_what_differs() {
        let pods = pods();
        let mut expected = TruthTable::new(&pods, true);
        expected.expect_all_ingress("x/a", false);
        expected.allow_loopback();
        assert_eq!(
            expected.render(),
            "-   x/a x/b y/a y/b\n\
             x/a .   .   .   .  \n\
             x/b X   .   .   .  \n\
             y/a X   .   .   .  \n\
             y/b X   .   .   .  \n"
        );
        let ip = |s: &str| s.parse().unwrap_or_else(|e| panic!("{e}"));
        let answer = |to: &str| {
            Ok(Answer {
                identity: to.into(),
                seen_source: ip("10.244.0.1"),
            })
        };
        let mut results = Vec::new();
        for from in &pods {
            for to in &pods {
                results.push(match (from.as_str(), to.as_str()) {
                    // Denied as it should be.
                    ("x/b" | "y/b", "x/a") => Err(Failure::Timeout),
                    // Let through although it should not be.
                    ("y/a", "x/a") => answer("x/a"),
                    // Reached the wrong server: not reaching x/b.
                    ("y/b", "x/b") => answer("y/a"),
                    (_, to) => answer(to),
                });
            }
        }
        let probed = Probed::new(pods.clone(), results);
        let report = compare(&expected, &probed).unwrap_or_else(|| panic!("no difference"));
        assert!(report.contains("2 cells differ"), "{report}");
        assert!(
            report.contains("y/a should not reach x/a: answered by x/a (saw 10.244.0.1)"),
            "{report}"
        );
        assert!(
            report.contains("y/b should reach x/b: answered by y/a"),
            "{report}"
        );
        assert!(
            report.contains(
                "comparison (X: differs):\n\
                 -   x/a x/b y/a y/b\n\
                 x/a .   .   .   .  \n\
                 x/b .   .   .   .  \n\
                 y/a X   .   .   .  \n\
                 y/b .   X   .   .  \n"
            ),
            "{report}"
        );
        let same = Probed::new(
            pods.clone(),
            pods.iter()
                .flat_map(|from| {
                    pods.iter().map(move |to| {
                        if to == "x/a" && from != "x/a" {
                            Err(Failure::Timeout)
                        } else {
                            answer(to)
                        }
                    })
                })
                .collect(),
        );
        assert_eq!(compare(&expected, &same), None);
    }
}
