use super::*;
use crate::datastore::crd::{BGPConfigurationSpec, BgpPassword};
use kube::api::ObjectMeta;

fn pairs(kv: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// Nodes `node-1` .. `node-N` at 10.0.0.1 .. 10.0.0.N, each with the given labels.
fn nodes(labels: &[&[(&str, &str)]]) -> BTreeMap<String, Arc<Node>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let name = format!("node-{}", i + 1);
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: pairs(l),
                    annotations: pairs(&[(ANNOTATION_IPV4, &format!("10.0.0.{}/24", i + 1))]),
                    ..Default::default()
                },
                ..Default::default()
            };
            (name, Arc::new(node))
        })
        .collect()
}

fn spec() -> BGPPeerSpec {
    BGPPeerSpec {
        node: None,
        node_selector: None,
        peer_ip: None,
        peer_selector: None,
        as_number: None,
        password: None,
        route_reflector_client: None,
        max_restart_time: None,
        keep_original_next_hop: None,
    }
}

fn tor(peer_ip: &str) -> BGPPeerSpec {
    BGPPeerSpec {
        peer_ip: Some(peer_ip.into()),
        as_number: Some(65000),
        ..spec()
    }
}

fn bgp_peers(list: Vec<(&str, BGPPeerSpec)>) -> BTreeMap<String, Arc<BGPPeer>> {
    list.into_iter()
        .map(|(name, spec)| (name.to_owned(), Arc::new(BGPPeer::new(name, spec))))
        .collect()
}

fn mesh_off() -> BTreeMap<String, Arc<BGPConfiguration>> {
    let spec = BGPConfigurationSpec {
        node_to_node_mesh_enabled: Some(false),
        as_number: None,
        listen_port: None,
    };
    [(
        DEFAULT_CONFIGURATION.to_owned(),
        Arc::new(BGPConfiguration::new(DEFAULT_CONFIGURATION, spec)),
    )]
    .into()
}

fn on(node: u8) -> ThisNode<'static> {
    const NAMES: [&str; 4] = ["node-0", "node-1", "node-2", "node-3"];
    ThisNode {
        name: NAMES[usize::from(node)],
        ip: Ipv4Addr::new(10, 0, 0, node),
        asn: 64512,
        cluster_id: None,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The peers as `(address, type)`, for short assertions.
fn summary(d: &Desired) -> Vec<(String, &'static str)> {
    d.peers
        .values()
        .map(|p| (p.address.to_string(), p.peer_type.as_str()))
        .collect()
}

#[test]
fn without_bgp_objects_the_mesh_is_every_other_node() {
    let n = nodes(&[&[], &[], &[]]);
    let d = desired_peers(on(2), &n, &BTreeMap::new(), &BTreeMap::new());
    assert_eq!(
        summary(&d),
        [
            ("10.0.0.1".into(), "node-to-node mesh"),
            ("10.0.0.3".into(), "node-to-node mesh")
        ]
    );
    assert!(d.peers[&ip("10.0.0.1")].passive, "the higher address waits");
    assert!(!d.peers[&ip("10.0.0.3")].passive);
    assert!(d.warnings.is_empty());
}

#[test]
fn global_and_node_specific_peers_apply_where_they_should() {
    let n = nodes(&[&[("rack", "r1")], &[("rack", "r2")]]);
    let peers = bgp_peers(vec![
        ("tor", tor("10.0.0.100:1790")),
        (
            "only-node-1",
            BGPPeerSpec {
                node: Some("node-1".into()),
                ..tor("10.0.0.101")
            },
        ),
        (
            "rack-2",
            BGPPeerSpec {
                node_selector: Some("rack in {'r2', 'r3'}".into()),
                ..tor("10.0.0.102")
            },
        ),
    ]);
    let d1 = desired_peers(on(1), &n, &peers, &mesh_off());
    assert_eq!(
        summary(&d1),
        [
            ("10.0.0.100".into(), "global"),
            ("10.0.0.101".into(), "node specific")
        ]
    );
    let global = &d1.peers[&ip("10.0.0.100")];
    assert_eq!(
        (global.port, global.asn, global.passive),
        (1790, 65000, false)
    );
    assert_eq!(global.bgp_peer.as_deref(), Some("tor"));
    assert_eq!(d1.peers[&ip("10.0.0.101")].port, 179);

    let d2 = desired_peers(on(2), &n, &peers, &mesh_off());
    assert_eq!(
        summary(&d2),
        [
            ("10.0.0.100".into(), "global"),
            ("10.0.0.102".into(), "node specific")
        ]
    );
    assert!(d1.warnings.is_empty() && d2.warnings.is_empty());
}

#[test]
fn the_mesh_follows_the_default_bgp_configuration_only() {
    let n = nodes(&[&[], &[]]);
    assert!(
        desired_peers(on(1), &n, &BTreeMap::new(), &mesh_off())
            .peers
            .is_empty()
    );
    let mut other = mesh_off();
    let off = other.remove(DEFAULT_CONFIGURATION).unwrap();
    other.insert("not-default".into(), off);
    assert_eq!(
        desired_peers(on(1), &n, &BTreeMap::new(), &other)
            .peers
            .len(),
        1
    );
}

#[test]
fn a_bgp_peer_at_a_mesh_address_replaces_the_mesh_session() {
    let n = nodes(&[&[], &[]]);
    let peers = bgp_peers(vec![(
        "node-2-as-peer",
        BGPPeerSpec {
            as_number: Some(64512),
            ..tor("10.0.0.2")
        },
    )]);
    let d = desired_peers(on(1), &n, &peers, &BTreeMap::new());
    assert_eq!(summary(&d), [("10.0.0.2".into(), "global")]);
}

#[test]
fn a_peer_selector_peers_both_ways_as_route_reflectors_need() {
    let n = nodes(&[&[("rr", "true")], &[], &[]]);
    let peers = bgp_peers(vec![(
        "to-rr",
        BGPPeerSpec {
            node_selector: Some("all()".into()),
            peer_selector: Some("rr == 'true'".into()),
            ..spec()
        },
    )]);
    // The reflector peers with every client (they select it), the clients with it only.
    let rr = desired_peers(on(1), &n, &peers, &mesh_off());
    assert_eq!(
        summary(&rr),
        [
            ("10.0.0.2".into(), "node specific"),
            ("10.0.0.3".into(), "node specific")
        ]
    );
    assert_eq!(rr.peers[&ip("10.0.0.2")].asn, 64512, "the node's own AS");
    let client = desired_peers(on(3), &n, &peers, &mesh_off());
    assert_eq!(summary(&client), [("10.0.0.1".into(), "node specific")]);
    assert!(
        client.peers[&ip("10.0.0.1")].passive,
        "the higher address waits"
    );
    assert!(rr.warnings.is_empty() && client.warnings.is_empty());
}

#[test]
fn what_cannot_be_carried_out_applies_to_nothing_and_names_the_bgp_peer() {
    let n = nodes(&[&[], &[]]);
    let peers = bgp_peers(vec![
        (
            "bad-selector",
            BGPPeerSpec {
                node_selector: Some("rack == r1".into()),
                ..tor("10.0.0.100")
            },
        ),
        ("v6", tor("[fd00::1]:179")),
        (
            "no-as",
            BGPPeerSpec {
                as_number: None,
                ..tor("10.0.0.101")
            },
        ),
        ("nothing", spec()),
        (
            "bad-restart",
            BGPPeerSpec {
                max_restart_time: Some("120".into()),
                ..tor("10.0.0.102")
            },
        ),
    ]);
    let d = desired_peers(on(1), &n, &peers, &BTreeMap::new());
    assert_eq!(summary(&d), [("10.0.0.2".into(), "node-to-node mesh")]);
    let named: Vec<&str> = d.warnings.iter().map(|w| w.bgp_peer.as_str()).collect();
    assert_eq!(
        named,
        ["bad-restart", "bad-selector", "no-as", "nothing", "v6"]
    );
    assert_eq!(
        d.warnings[1].reason,
        "nodeSelector: selector \"rack == r1\": at offset 8: expected a quoted value"
    );
    assert!(d.warnings[4].reason.contains("IPv6"), "{:?}", d.warnings[4]);
}

#[test]
fn the_first_bgp_peer_by_name_keeps_an_address() {
    let n = nodes(&[&[]]);
    let peers = bgp_peers(vec![("a", tor("10.0.0.100")), ("b", tor("10.0.0.100"))]);
    let d = desired_peers(on(1), &n, &peers, &BTreeMap::new());
    assert_eq!(d.peers[&ip("10.0.0.100")].bgp_peer.as_deref(), Some("a"));
    assert_eq!(d.warnings.len(), 1);
    assert_eq!(d.warnings[0].bgp_peer, "b");
}

#[test]
fn session_settings_come_from_the_bgp_peer() {
    let n = nodes(&[&[]]);
    let mut peer = BGPPeer::new(
        "tor",
        BGPPeerSpec {
            password: Some(BgpPassword {
                secret_key_ref: SecretKeyRef {
                    name: "bgp".into(),
                    key: "tor".into(),
                },
            }),
            route_reflector_client: Some(true),
            max_restart_time: Some("2m".into()),
            keep_original_next_hop: Some(true),
            ..tor("10.0.0.100")
        },
    );
    peer.metadata.annotations = pairs(&[(ANNOTATION_MAX_PREFIXES, "100")]);
    let mut peers: BTreeMap<String, Arc<BGPPeer>> = [("tor".to_owned(), Arc::new(peer))].into();
    let d = desired_peers(on(1), &n, &peers, &BTreeMap::new());
    let p = &d.peers[&ip("10.0.0.100")];
    assert_eq!(p.password.as_ref().map(|r| r.name.as_str()), Some("bgp"));
    assert!(p.route_reflector_client);
    assert_eq!(p.restart_time, Some(120));
    assert_eq!(p.max_prefixes, Some(100));
    assert!(p.keep_original_next_hop);

    let mut bad = (*peers["tor"]).clone();
    bad.metadata.annotations = pairs(&[(ANNOTATION_MAX_PREFIXES, "0")]);
    peers.insert("tor".into(), Arc::new(bad));
    let d = desired_peers(on(1), &n, &peers, &BTreeMap::new());
    assert!(d.peers.is_empty());
    assert_eq!(
        d.warnings[0].reason,
        "tortie.dev/max-prefixes \"0\" is not a positive number"
    );
}

#[test]
fn the_node_as_is_its_own_else_the_bgp_configuration_s_else_64512() {
    let configuration = |as_number: Option<u32>, listen_port: Option<u16>| {
        let spec = BGPConfigurationSpec {
            node_to_node_mesh_enabled: None,
            as_number,
            listen_port,
        };
        let c: BTreeMap<String, Arc<BGPConfiguration>> = [(
            DEFAULT_CONFIGURATION.to_owned(),
            Arc::new(BGPConfiguration::new(DEFAULT_CONFIGURATION, spec)),
        )]
        .into();
        c
    };
    let none = BTreeMap::new();
    assert_eq!(node_settings(None, None, &none).asn, 64512);
    assert_eq!(
        node_settings(None, None, &configuration(None, None)).asn,
        64512
    );
    assert_eq!(
        node_settings(None, None, &configuration(Some(65100), None)).asn,
        65100
    );
    // The node's own AS wins, also when it is 64512 (set, not defaulted).
    assert_eq!(
        node_settings(Some(64512), None, &configuration(Some(65100), None)).asn,
        64512
    );
    // Only `default` counts.
    let other: BTreeMap<String, Arc<BGPConfiguration>> = [(
        "node.node-1".to_owned(),
        configuration(Some(65100), None)[DEFAULT_CONFIGURATION].clone(),
    )]
    .into();
    assert_eq!(node_settings(None, None, &other).asn, 64512);
    assert!(
        node_settings(None, None, &configuration(Some(65100), Some(179)))
            .warnings
            .is_empty()
    );
    let s = node_settings(None, None, &configuration(Some(0), Some(1790)));
    assert_eq!(s.asn, 64512);
    assert_eq!(
        s.warnings,
        [
            "BGPConfiguration \"default\": asNumber 0 is reserved (RFC 7607) and ignored",
            "BGPConfiguration \"default\": listenPort 1790 is not supported; the nodes listen on and connect to port 179"
        ]
    );
}

#[test]
fn a_reflector_takes_the_nodes_its_bgp_peers_select_as_clients() {
    let mut n = nodes(&[&[(LABEL_ROUTE_REFLECTOR, "true")], &[], &[], &[]]);
    // node-4 reflects for the same cluster as node-1: no client of node-1's.
    let mut same_cluster = (*n["node-4"]).clone();
    same_cluster
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_RR_CLUSTER_ID.into(), "10.0.0.1".into());
    n.insert("node-4".into(), Arc::new(same_cluster));
    let peers = bgp_peers(vec![(
        "to-rr",
        BGPPeerSpec {
            node_selector: Some("all()".into()),
            peer_selector: Some(format!("has({LABEL_ROUTE_REFLECTOR}) || has(rr4)")),
            ..spec()
        },
    )]);
    let mut labelled_rr4 = (*n["node-4"]).clone();
    labelled_rr4
        .metadata
        .labels
        .get_or_insert_default()
        .insert("rr4".into(), String::new());
    n.insert("node-4".into(), Arc::new(labelled_rr4));

    let settings = node_settings(None, n.get("node-1").map(|n| n.as_ref()), &mesh_off());
    assert_eq!(
        settings.cluster_id,
        Some(ip("10.0.0.1")),
        "the label: its address"
    );
    let rr = ThisNode {
        cluster_id: settings.cluster_id,
        ..on(1)
    };
    let d = desired_peers(rr, &n, &peers, &mesh_off());
    let clients: Vec<(String, bool)> = d
        .peers
        .values()
        .map(|p| (p.address.to_string(), p.route_reflector_client))
        .collect();
    assert_eq!(
        clients,
        [
            ("10.0.0.2".into(), true),
            ("10.0.0.3".into(), true),
            ("10.0.0.4".into(), false)
        ]
    );
    // A client reflects for nobody, and the mesh is never reflected.
    let client = desired_peers(on(2), &n, &peers, &mesh_off());
    assert!(client.peers.values().all(|p| !p.route_reflector_client));
    let meshed = desired_peers(rr, &n, &BTreeMap::new(), &BTreeMap::new());
    assert_eq!(meshed.peers.len(), 3);
    assert!(meshed.peers.values().all(|p| !p.route_reflector_client));

    let mut bad = (*n["node-2"]).clone();
    bad.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_RR_CLUSTER_ID.into(), "rack-1".into());
    let s = node_settings(None, Some(&bad), &BTreeMap::new());
    assert_eq!(s.cluster_id, None);
    assert_eq!(
        s.warnings,
        [
            "Node \"node-2\": tortie.dev/route-reflector-cluster-id \"rack-1\" is not an IPv4 address (e.g. 244.0.0.1); the node is no route reflector"
        ]
    );
}
