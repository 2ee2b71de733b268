use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::lab::Lab;
use crate::pod::{self, AddOptions, ContainerPort, PodRef, PortMapping};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Create a pod on a node: its Pod object, its netns, wired by the node's CNI plugins.
    Add {
        /// `namespace/name`.
        pod: PodRef,
        /// The node it runs on.
        #[arg(long)]
        node: String,
        /// Labels, `k=v,k2=v2`.
        #[arg(long, default_value = "")]
        labels: String,
        /// A hostPort mapping for portmap, `HOST:CONTAINER[/tcp|/udp]` (repeatable).
        #[arg(long = "port")]
        ports: Vec<PortMapping>,
        /// A named container port, `NAME:PORT[/tcp|/udp|/sctp]` (repeatable): the Pod's
        /// `spec.containers[0].ports`, what NetworkPolicy's named ports resolve against.
        #[arg(long = "container-port")]
        container_ports: Vec<ContainerPort>,
        /// Serve on every TCP and UDP container port, answering with the pod's name and the
        /// client's address, from before CNI ADD until the pod is deleted.
        #[arg(long)]
        serve: bool,
    },
    /// Delete a pod: CNI DEL (plugins in reverse order), its netns, its Pod object.
    Del {
        /// `namespace/name`.
        pod: PodRef,
    },
    /// CNI CHECK of a pod, through every plugin of its conflist.
    Check {
        /// `namespace/name`.
        pod: PodRef,
    },
}

/// `k=v,k2=v2` into a map; keys and values as Kubernetes allows them, roughly.
pub fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("label {pair:?}: expected key=value")
        };
        let ok = |s: &str, allow_slash: bool| {
            s.len() <= 253
                && s.chars().all(|c| {
                    c.is_ascii_alphanumeric() || "-_.".contains(c) || (allow_slash && c == '/')
                })
        };
        if k.is_empty() || !ok(k, true) || !ok(v, false) {
            bail!(
                "label {pair:?}: keys and values are letters, digits, '-', '_' and '.' (keys may have a prefix/)"
            );
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

pub fn run(lab: &Lab, args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Add {
            pod,
            node,
            labels,
            ports,
            container_ports,
            serve,
        } => {
            let opts = AddOptions {
                node,
                labels: parse_labels(&labels)?,
                ports,
                container_ports,
                serve,
                conflist: None,
            };
            let record = pod::add(lab, &pod, &opts).with_context(|| format!("pod add {pod}"))?;
            let ips: Vec<String> = record.ips.iter().map(ToString::to_string).collect();
            println!(
                "pod {pod} on {}: {} (netns {}, container {})",
                record.node,
                ips.join(", "),
                lab.pod_netns(&pod.namespace, &pod.name),
                &record.attachment.container_id[..12.min(record.attachment.container_id.len())]
            );
        }
        Action::Del { pod } => {
            pod::del(lab, &pod).with_context(|| format!("pod del {pod}"))?;
            println!("pod {pod} deleted");
        }
        Action::Check { pod } => {
            pod::check(lab, &pod).with_context(|| format!("pod check {pod}"))?;
            println!("pod {pod}: CHECK passed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn pod_add_takes_container_ports() {
        let pod_add = |args: &[&str]| {
            let argv = ["tortie-lab", "pod", "add", "x/a", "--node", "node-1"];
            crate::cli::Cli::try_parse_from(argv.iter().chain(args))
        };
        let cli = pod_add(&[
            "--container-port",
            "serve-80-tcp:80",
            "--container-port",
            "serve-80-udp:80/udp",
            "--container-port",
            "serve-81-sctp:81/sctp",
            "--serve",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let crate::cli::Command::Pod(Args {
            action:
                Action::Add {
                    container_ports,
                    serve,
                    ..
                },
        }) = cli.command
        else {
            panic!("not pod add: {cli:?}")
        };
        assert!(serve);
        let got: Vec<(String, u16, pod::Protocol)> = container_ports
            .into_iter()
            .map(|p| (p.name, p.port, p.protocol))
            .collect();
        assert_eq!(
            got,
            vec![
                ("serve-80-tcp".into(), 80, pod::Protocol::Tcp),
                ("serve-80-udp".into(), 80, pod::Protocol::Udp),
                ("serve-81-sctp".into(), 81, pod::Protocol::Sctp),
            ]
        );
        assert!(pod_add(&["--container-port", "80:serve"]).is_err());
    }

    #[test]
    fn labels_parse() {
        let l =
            parse_labels("app=web,tier=front,example.com/team=a").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.len(), 3);
        assert_eq!(l["example.com/team"], "a");
        assert!(
            parse_labels("")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty()
        );
        assert!(parse_labels("app").is_err());
        assert!(parse_labels("a=b c").is_err());
    }
}
