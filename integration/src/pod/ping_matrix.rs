//! `ping` without FROM and TO: every pod to every other pod, and every pod to each node but
//! its own (a pod reaches its own node over its veth, not over the routes under test), as one
//! table: a row per source pod, a column per destination, `ok` or `FAIL` in each cell, `-`
//! where nothing is pinged. The pings run in parallel on a bounded number of threads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PodError, records};
use crate::lab::{Lab, LabConfig};

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Not pinged: the pod itself, or its own node.
    Own,
    /// To be pinged.
    Pending,
    Ok,
    Fail,
}

impl Cell {
    fn mark(self) -> &'static str {
        match self {
            Cell::Own => "-",
            Cell::Pending => "?",
            Cell::Ok => "ok",
            Cell::Fail => "FAIL",
        }
    }
}

/// Sources (pods, `namespace/name`) down, destinations (the same pods, then the nodes)
/// across.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingMatrix {
    rows: Vec<String>,
    columns: Vec<String>,
    cells: Vec<Cell>,
}

impl PingMatrix {
    /// The pairs to ping among `pods` (each with the node it runs on) and `nodes`.
    pub fn new(pods: &[(String, String)], nodes: &[String]) -> PingMatrix {
        let rows: Vec<String> = pods.iter().map(|(pod, _)| pod.clone()).collect();
        let columns: Vec<String> = rows.iter().chain(nodes).cloned().collect();
        let cells = pods
            .iter()
            .flat_map(|(pod, node)| {
                columns.iter().map(move |to| {
                    if to == pod || to == node {
                        Cell::Own
                    } else {
                        Cell::Pending
                    }
                })
            })
            .collect();
        PingMatrix {
            rows,
            columns,
            cells,
        }
    }

    /// Every pod the lab added and every node of `config`.
    pub fn of_lab(lab: &Lab, config: &LabConfig) -> Result<PingMatrix, PodError> {
        let pods: Vec<(String, String)> = records(lab)?
            .into_iter()
            .map(|r| (r.pod.to_string(), r.node))
            .collect();
        let nodes: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
        Ok(PingMatrix::new(&pods, &nodes))
    }

    fn pair(&self, cell: usize) -> (&str, &str) {
        let width = self.columns.len();
        (&self.rows[cell / width], &self.columns[cell % width])
    }

    /// Pings every pending pair with `count` echo requests ([`super::ping`]), at most
    /// `threads` at a time, and fills the cells in. Fails when a ping cannot be run at all.
    pub fn ping_all(&mut self, lab: &Lab, count: u32, threads: usize) -> Result<(), PodError> {
        let pending: Vec<usize> = (0..self.cells.len())
            .filter(|&i| self.cells[i] == Cell::Pending)
            .collect();
        let next = AtomicUsize::new(0);
        let this = &*self;
        let results: Vec<Result<(usize, bool), PodError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.clamp(1, pending.len().max(1)))
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        while let Some(&cell) = pending.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let (from, to) = this.pair(cell);
                            done.push(
                                super::ping(lab, from, to, count)
                                    .map(|out| (cell, out.status.success())),
                            );
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| {
                    w.join().unwrap_or_else(|_| {
                        vec![Err(PodError::Invalid("a ping thread panicked".into()))]
                    })
                })
                .collect()
        });
        for result in results {
            let (cell, ok) = result?;
            self.cells[cell] = if ok { Cell::Ok } else { Cell::Fail };
        }
        Ok(())
    }

    /// The pairs whose ping failed, as `(from, to)`, row by row.
    pub fn failures(&self) -> Vec<(&str, &str)> {
        (0..self.cells.len())
            .filter(|&i| self.cells[i] == Cell::Fail)
            .map(|i| self.pair(i))
            .collect()
    }

    /// How many pairs were pinged (or are to be).
    pub fn pairs(&self) -> usize {
        self.cells.iter().filter(|c| **c != Cell::Own).count()
    }

    /// The table: a `from \ to` corner, destinations across, sources down.
    pub fn render(&self) -> String {
        let corner = "from \\ to";
        let first = self
            .rows
            .iter()
            .map(String::len)
            .chain([corner.len()])
            .max()
            .unwrap_or_default();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .map(|c| c.len().max(Cell::Fail.mark().len()))
            .collect();
        let mut out = format!("{corner:<first$}");
        for (column, width) in self.columns.iter().zip(&widths) {
            let _ = write!(out, "  {column:<width$}");
        }
        out.push('\n');
        for (r, row) in self.rows.iter().enumerate() {
            let _ = write!(out, "{row:<first$}");
            for (c, width) in widths.iter().enumerate() {
                let mark = self.cells[r * self.columns.len() + c].mark();
                let _ = write!(out, "  {mark:<width$}");
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_nodes() -> PingMatrix {
        let pods = [
            ("default/a".to_string(), "node-1".to_string()),
            ("default/b".to_string(), "node-2".to_string()),
            ("default/c".to_string(), "node-2".to_string()),
        ];
        PingMatrix::new(&pods, &["node-1".into(), "node-2".into()])
    }

    #[test]
    fn every_pod_pings_every_other_pod_and_the_other_nodes() {
        let m = two_nodes();
        let pairs: Vec<(&str, &str)> = (0..m.cells.len())
            .filter(|&i| m.cells[i] == Cell::Pending)
            .map(|i| m.pair(i))
            .collect();
        assert_eq!(
            pairs,
            [
                ("default/a", "default/b"),
                ("default/a", "default/c"),
                ("default/a", "node-2"),
                ("default/b", "default/a"),
                ("default/b", "default/c"),
                ("default/b", "node-1"),
                ("default/c", "default/a"),
                ("default/c", "default/b"),
                ("default/c", "node-1"),
            ]
        );
        assert_eq!(m.pairs(), 9);
    }

    #[test]
    fn the_table_and_the_failures_name_the_failed_pair() {
        let mut m = two_nodes();
        for cell in &mut m.cells {
            if *cell == Cell::Pending {
                *cell = Cell::Ok;
            }
        }
        let width = m.columns.len();
        // default/c → default/a
        m.cells[2 * width] = Cell::Fail;
        assert_eq!(m.failures(), [("default/c", "default/a")]);
        assert_eq!(
            m.render(),
            "from \\ to  default/a  default/b  default/c  node-1  node-2\n\
             default/a  -          ok         ok         -       ok\n\
             default/b  ok         -          ok         ok      -\n\
             default/c  FAIL       ok         -          ok      -\n"
        );
    }
}
