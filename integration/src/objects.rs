//! What the lab writes for the apiserver and its clients: the token file (who is who), one
//! kubeconfig per identity, and the objects `up` applies (Nodes, CRDs, tortie's RBAC).
//!
//! Identities. The admin is user `admin` in group `system:masters`. Each node's agent
//! authenticates with its own token as `system:serviceaccount:kube-system:tortie-node`, the
//! user a DaemonSet pod of that ServiceAccount would be. The ClusterRoleBinding in
//! `manifests/tortie.yaml` binds exactly that ServiceAccount, so the agent in the lab has
//! exactly the rights the manifest grants, no more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::lab::{Lab, LabConfig};
use crate::pki::{Pki, new_token};
use crate::{Error, write_file};

/// The agent's Kubernetes identity: its ServiceAccount's user name.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:tortie-node";
const AGENT_GROUPS: &str = "system:serviceaccounts,system:serviceaccounts:kube-system";
const ADMIN_UID: &str = "admin";

/// One line of kube-apiserver's `--token-auth-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub token: String,
    pub user: String,
    /// Also our key: `admin`, or `tortie-node/<node>`.
    pub uid: String,
    pub groups: String,
}

impl TokenEntry {
    fn line(&self) -> String {
        format!(
            "{},{},{},\"{}\"\n",
            self.token, self.user, self.uid, self.groups
        )
    }

    /// Parses a line we wrote; anything else yields `None` (and gets replaced).
    fn parse(line: &str) -> Option<TokenEntry> {
        let mut parts = line.splitn(4, ',');
        let token = parts.next()?.to_string();
        let user = parts.next()?.to_string();
        let uid = parts.next()?.to_string();
        let groups = parts.next()?.trim().trim_matches('"').to_string();
        (!token.is_empty()).then_some(TokenEntry {
            token,
            user,
            uid,
            groups,
        })
    }
}

fn agent_uid(node: &str) -> String {
    format!("tortie-node/{node}")
}

/// The token file for `config`'s nodes plus the admin, keeping tokens already issued.
/// Returns the entries and whether the file changed (the apiserver reads it only at start).
pub fn ensure_tokens(lab: &Lab, config: &LabConfig) -> Result<(Vec<TokenEntry>, bool), Error> {
    let path = lab.token_file();
    let old_text = std::fs::read_to_string(&path).unwrap_or_default();
    let old: BTreeMap<String, TokenEntry> = old_text
        .lines()
        .filter_map(TokenEntry::parse)
        .map(|e| (e.uid.clone(), e))
        .collect();
    let mut wanted = vec![(
        ADMIN_UID.to_string(),
        "admin".to_string(),
        "system:masters".to_string(),
    )];
    for node in &config.nodes {
        wanted.push((
            agent_uid(&node.name),
            AGENT_USER.to_string(),
            AGENT_GROUPS.to_string(),
        ));
    }
    let mut entries = Vec::new();
    for (uid, user, groups) in wanted {
        let entry = match old.get(&uid) {
            Some(e) if e.user == user && e.groups == groups => e.clone(),
            _ => TokenEntry {
                token: new_token()?,
                user,
                uid,
                groups,
            },
        };
        entries.push(entry);
    }
    let text: String = entries.iter().map(TokenEntry::line).collect();
    let changed = text != old_text;
    if changed {
        write_file(&path, text.as_bytes())?;
    }
    Ok((entries, changed))
}

/// A kubeconfig for `user` with a bearer token, trusting the lab's CA. A service account's
/// context defaults to the account's own namespace, as a pod's in-cluster config does (the
/// agent reads BGPPeer passwords from Secrets there).
pub fn kubeconfig(server: &str, ca: &Path, user: &str, token: &str) -> Result<String, Error> {
    let mut context = json!({"cluster": "tortie-lab", "user": user});
    if let Some(namespace) = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split(':').next())
    {
        context["namespace"] = json!(namespace);
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tortie-lab", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "tortie-lab", "context": context}],
        "current-context": "tortie-lab",
    });
    serde_yaml::to_string(&doc).map_err(|e| Error::Invalid(format!("rendering a kubeconfig: {e}")))
}

/// Writes the admin kubeconfig and one per node.
pub fn write_kubeconfigs(
    lab: &Lab,
    config: &LabConfig,
    tokens: &[TokenEntry],
) -> Result<(), Error> {
    let ca = Pki::of(lab).ca_cert;
    let server = lab.apiserver_url();
    let token_of = |uid: &str| {
        tokens
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.token.clone())
            .ok_or_else(|| Error::Invalid(format!("no token issued for {uid}")))
    };
    write_file(
        &lab.admin_kubeconfig(),
        kubeconfig(&server, &ca, "admin", &token_of(ADMIN_UID)?)?.as_bytes(),
    )?;
    for node in &config.nodes {
        let text = kubeconfig(&server, &ca, AGENT_USER, &token_of(&agent_uid(&node.name))?)?;
        write_file(&lab.node_kubeconfig(&node.name), text.as_bytes())?;
    }
    Ok(())
}

/// The admin's token, for callers that talk HTTP themselves.
pub fn admin_token(lab: &Lab) -> Option<String> {
    let text = std::fs::read_to_string(lab.token_file()).ok()?;
    text.lines()
        .filter_map(TokenEntry::parse)
        .find(|e| e.uid == ADMIN_UID)
        .map(|e| e.token)
}

/// The repository's `manifests/` folder: `TORTIE_MANIFESTS`, else the one next to this crate.
pub fn manifests_dir() -> PathBuf {
    std::env::var_os("TORTIE_MANIFESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("manifests")
        })
}

/// Node objects as a kubelet would register them: the LAN address as InternalIP, and a Ready
/// condition. There is no kubelet in the lab (the lab itself plays kubelet for pods), and no
/// node lifecycle controller that would later mark them NotReady.
pub fn nodes_yaml(config: &LabConfig) -> Result<String, Error> {
    let mut out = String::new();
    for node in &config.nodes {
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    "tortie.dev/lab": "true",
                },
            },
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": node.ip.to_string()},
                    {"type": "Hostname", "address": node.name},
                ],
                "conditions": [{
                    "type": "Ready",
                    "status": "True",
                    "reason": "TortieLab",
                    "message": "lab node: a network namespace with no kubelet",
                }],
            },
        });
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&doc)
                .map_err(|e| Error::Invalid(format!("rendering a Node: {e}")))?,
        );
    }
    Ok(out)
}

/// `kube-system` may not exist yet when the apiserver first reports ready (its bootstrap
/// controller creates it a moment later); applying it first makes the order irrelevant.
pub const KUBE_SYSTEM_YAML: &str =
    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: kube-system\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::NodeConfig;
    use std::net::Ipv4Addr;

    fn config(n: u32) -> LabConfig {
        LabConfig {
            prefix: String::new(),
            pool: "10.244.0.0/16".parse().unwrap_or_else(|e| panic!("{e}")),
            nodes: (1..=n)
                .map(|i| NodeConfig {
                    name: format!("node-{i}"),
                    netns: format!("node-{i}"),
                    ip: Ipv4Addr::new(172, 31, 0, 10 + i as u8),
                })
                .collect(),
            etcd_storage: None,
        }
    }

    #[test]
    fn tokens_survive_a_second_up_and_grow_with_nodes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let lab = Lab::new(dir.path(), "");
        let (first, changed) = ensure_tokens(&lab, &config(2)).unwrap_or_else(|e| panic!("{e}"));
        assert!(changed);
        assert_eq!(first.len(), 3);
        let (again, changed) = ensure_tokens(&lab, &config(2)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!changed, "same nodes: same file, no apiserver restart");
        assert_eq!(first, again);
        let (more, changed) = ensure_tokens(&lab, &config(3)).unwrap_or_else(|e| panic!("{e}"));
        assert!(changed);
        assert_eq!(&more[..3], &first[..]);
        assert_eq!(more[3].user, AGENT_USER);
        let text = std::fs::read_to_string(lab.token_file()).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains(&format!(
            "{},{AGENT_USER},tortie-node/node-3,\"system:serviceaccounts,system:serviceaccounts:kube-system\"",
            more[3].token
        )));
        assert_eq!(admin_token(&lab), Some(first[0].token.clone()));
    }

    #[test]
    fn nodes_carry_their_internal_ip() {
        let yaml = nodes_yaml(&config(2)).unwrap_or_else(|e| panic!("{e}"));
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["metadata"]["name"], "node-2");
        assert_eq!(docs[1]["status"]["addresses"][0]["address"], "172.31.0.12");
    }

    #[test]
    fn kubeconfig_parses_as_one() {
        let text = kubeconfig(
            "https://172.31.0.2:6443",
            Path::new("/x/ca.crt"),
            AGENT_USER,
            "abc",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let parsed: kube::config::Kubeconfig =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.current_context.as_deref(), Some("tortie-lab"));
        assert_eq!(parsed.auth_infos[0].name, AGENT_USER);
        let context = parsed.contexts[0].context.as_ref();
        assert_eq!(
            context.and_then(|c| c.namespace.as_deref()),
            Some("kube-system"),
            "the service account's own namespace"
        );
    }
}
