//! `tortie`: the CNI plugin binary. The runtime runs it with `CNI_*` variables and a network
//! config on stdin; the result or error JSON goes to stdout.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin).map(|_| stdin);
    let outcome = tortie_cni::cli::run(|k| std::env::var(k).ok(), read);
    let mut out = std::io::stdout().lock();
    // If stdout is gone there is nobody left to tell; the exit code still says it.
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
