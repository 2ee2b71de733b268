//! The host-side veth's name. The plugin names the veth; the agent finds it again by name
//! after a restart, to restore the pod's host route. Both compute it here, so they agree.

use sha1::{Digest, Sha1};

/// `tort` + the first 11 hex digits of SHA-1(`<namespace>.<pod>`): 15 characters, the
/// kernel's limit (IFNAMSIZ less its NUL), named as Calico names its `cali*` veths.
///
/// Without a pod (outside Kubernetes, where CNI_ARGS carries no `K8S_POD_NAMESPACE` and
/// `K8S_POD_NAME`), or with an empty namespace or name, the container ID stands in for
/// `<namespace>.<pod>`: it is the only name such an attachment has, and it is unique on the
/// node. Only a whole pod counts, so a caller holding a half-filled record cannot name a
/// veth the plugin never made.
pub fn host_veth_name(pod: Option<(&str, &str)>, container_id: &str) -> String {
    let digest = match pod {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
            Sha1::digest(format!("{namespace}.{name}").as_bytes())
        }
        _ => Sha1::digest(container_id.as_bytes()),
    };
    // 11 hex digits: the first 6 bytes give 12, and the last one does not fit.
    let mut name = String::from("tort");
    name.push_str(&hex::encode(&digest[..6])[..11]);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_veth_is_tort_and_11_hex_digits_of_the_sha1_of_namespace_dot_name() {
        // `printf default.web-0 | sha1sum`: 0d7763386da219ddff1faed1cc6576fb9d57d419.
        let name = host_veth_name(Some(("default", "web-0")), "c1");
        assert_eq!(name, "tort0d7763386da");
        assert_eq!(name.len(), 15);
    }

    #[test]
    fn without_a_whole_pod_the_container_id_names_the_veth() {
        // SHA-1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d (FIPS 180-1, appendix A).
        assert_eq!(host_veth_name(None, "abc"), "torta9993e36470");
        assert_eq!(
            host_veth_name(Some(("", "web-0")), "abc"),
            "torta9993e36470"
        );
        assert_eq!(
            host_veth_name(Some(("default", "")), "abc"),
            "torta9993e36470"
        );
    }
}
