//! `tortiectl get ippools|bgppeers|bgpconfig|nodes [-o table|yaml|json]`.
//!
//! Tables show calicoctl's columns for each kind. YAML and JSON show tortie's objects as
//! stored (a `List`, without `managedFields`, as kubectl prints them); for nodes, which are
//! Kubernetes' objects, only what tortie reads from them: name, BGP address and AS.

use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

use super::{CtlError, list_all, table};
use crate::datastore::{self, ANNOTATION_AS, ANNOTATION_IPV4, crd};

/// What `get` lists (the names are calicoctl's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    #[value(name = "ippools")]
    IpPools,
    #[value(name = "bgppeers")]
    BgpPeers,
    #[value(name = "bgpconfig")]
    BgpConfig,
    Nodes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// A node as tortie sees it: its name and the annotations its agent writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub ipv4_address: Option<String>,
    pub as_number: Option<String>,
}

impl NodeView {
    fn of(n: &Node) -> NodeView {
        let annotation = |key: &str| {
            n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
        };
        NodeView {
            name: n.metadata.name.clone().unwrap_or_default(),
            ipv4_address: annotation(ANNOTATION_IPV4),
            as_number: annotation(ANNOTATION_AS),
        }
    }
}

/// Lists `resource` and renders it.
pub async fn get(
    client: &kube::Client,
    resource: Resource,
    format: Format,
) -> Result<String, CtlError> {
    match resource {
        Resource::IpPools => {
            let items: Vec<crd::IPPool> = list_all(client, "IP pools").await?;
            render(items, format, ippools_table)
        }
        Resource::BgpPeers => {
            let items: Vec<crd::BGPPeer> = list_all(client, "BGP peers").await?;
            render(items, format, bgppeers_table)
        }
        Resource::BgpConfig => {
            let items: Vec<crd::BGPConfiguration> = list_all(client, "BGP configurations").await?;
            render(items, format, bgpconfig_table)
        }
        Resource::Nodes => {
            let nodes: Vec<Node> = list_all(client, "nodes").await?;
            let views = nodes.iter().map(NodeView::of).collect();
            render(views, format, nodes_table)
        }
    }
}

/// Objects sorted by name, as a table or as a `List` in YAML or JSON.
fn render<K: Serialize + HasName>(
    mut items: Vec<K>,
    format: Format,
    as_table: fn(&[K]) -> String,
) -> Result<String, CtlError> {
    items.sort_by(|a, b| a.name().cmp(b.name()));
    if format == Format::Table {
        return Ok(as_table(&items));
    }
    let mut list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
    if let Some(items) = list["items"].as_array_mut() {
        for item in items {
            if let Some(meta) = item.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.remove("managedFields");
            }
        }
    }
    let rendered = match format {
        Format::Yaml => serde_yaml::to_string(&list).map_err(|e| e.to_string()),
        _ => serde_json::to_string_pretty(&list)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
    };
    rendered.map_err(|reason| CtlError::Render {
        format: if format == Format::Yaml {
            "YAML"
        } else {
            "JSON"
        },
        reason,
    })
}

/// The name objects are sorted by.
trait HasName {
    fn name(&self) -> &str;
}

impl<K: kube::Resource> HasName for K {
    fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }
}

impl HasName for NodeView {
    fn name(&self) -> &str {
        &self.name
    }
}

fn text<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn ippools_table(pools: &[crd::IPPool]) -> String {
    let rows: Vec<[String; 7]> = pools
        .iter()
        .map(|p| {
            let s = &p.spec;
            // The size agents use: the family's default when unset.
            let block_size = datastore::pool_from_crd(p)
                .map(|pool| pool.block_size().to_string())
                .unwrap_or_else(|_| text(&s.block_size));
            [
                p.name().to_owned(),
                s.cidr.clone(),
                block_size,
                s.nat_outgoing.to_string(),
                format!("{:?}", s.vxlan_mode),
                s.disabled.to_string(),
                s.node_selector.clone().unwrap_or_else(|| "all()".into()),
            ]
        })
        .collect();
    table(
        [
            "NAME",
            "CIDR",
            "BLOCK SIZE",
            "NAT",
            "VXLAN",
            "DISABLED",
            "SELECTOR",
        ],
        &rows,
    )
}

fn bgppeers_table(peers: &[crd::BGPPeer]) -> String {
    let rows: Vec<[String; 4]> = peers
        .iter()
        .map(|p| {
            let s = &p.spec;
            let node = match (&s.node, &s.node_selector) {
                (Some(node), _) => node.clone(),
                (None, Some(selector)) => selector.clone(),
                (None, None) => "(global)".to_owned(),
            };
            let peer = s
                .peer_ip
                .clone()
                .or_else(|| s.peer_selector.clone())
                .unwrap_or_default();
            [p.name().to_owned(), peer, node, text(&s.as_number)]
        })
        .collect();
    table(["NAME", "PEERIP", "NODE", "ASN"], &rows)
}

fn bgpconfig_table(configs: &[crd::BGPConfiguration]) -> String {
    let rows: Vec<[String; 4]> = configs
        .iter()
        .map(|c| {
            let s = &c.spec;
            [
                c.name().to_owned(),
                text(&s.node_to_node_mesh_enabled),
                text(&s.as_number),
                text(&s.listen_port),
            ]
        })
        .collect();
    table(["NAME", "MESHENABLED", "ASNUMBER", "LISTENPORT"], &rows)
}

fn nodes_table(nodes: &[NodeView]) -> String {
    let rows: Vec<[String; 3]> = nodes
        .iter()
        .map(|n| [n.name.clone(), text(&n.as_number), text(&n.ipv4_address)])
        .collect();
    table(["NAME", "ASN", "IPV4"], &rows)
}
