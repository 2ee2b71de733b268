//! tortiectl's commands that read the apiserver instead of an agent, as calicoctl does with
//! the Kubernetes datastore: `ipam show`, `ipam check` and `get`. Each is a pure function
//! from listed objects to text, and a thin `load` that lists them.
//!
//! IPAM objects are read through the agent's own conversions (agent/src/datastore/convert.rs),
//! so tortiectl sees a block exactly as every agent does.

pub mod check;
pub mod get;
pub mod ipam;

/// Why a command could not read what it needs.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("listing {what} in the apiserver: {source}")]
    List {
        what: &'static str,
        source: kube::Error,
    },
    #[error("rendering as {format}: {reason}")]
    Render {
        format: &'static str,
        reason: String,
    },
}

/// Lists every object of a kind, in all namespaces.
async fn list_all<K>(client: &kube::Client, what: &'static str) -> Result<Vec<K>, CtlError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    kube::Api::<K>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| CtlError::List { what, source })
}

/// calicoctl's table (agent/src/node_status.rs draws it) over owned cells.
fn table<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[&str; N]> = rows
        .iter()
        .map(|r| r.each_ref().map(String::as_str))
        .collect();
    crate::node_status::table(headers, &rows)
}
