//! Every command, version and error path against the recording fakes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use tortie_api::v1::{
    AllocateReply, AllocateRequest, Attachment, EndpointReadyRequest, GcRequest, IpConfig,
    StatusReply,
};

use super::run;
use crate::agent::{Agent, AgentError};
use crate::config::NetConf;
use crate::dataplane::fake::{Call, FakeDataplane};
use crate::env::CniEnv;
use crate::error::{CniError, Code};
use crate::version::Version;

const NETNS: &str = "/run/netns/pod-1";
const KUBELET_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1";

#[derive(Debug, Clone, PartialEq)]
enum AgentCall {
    Allocate(AllocateRequest),
    EndpointReady(EndpointReadyRequest),
    Release(Attachment),
    Check(Attachment),
    Gc(GcRequest),
    Status,
}

/// An agent in memory: allocations by attachment, one address each, same address on repeat.
#[derive(Default)]
struct FakeAgent {
    calls: Vec<AgentCall>,
    held: BTreeMap<(String, String, String), String>,
    next: u8,
    mtu: u32,
    unavailable: bool,
    /// Allocate alone fails with this (the connection works).
    fail_allocate: Option<AgentError>,
    not_ready: bool,
    fail_endpoint_ready: bool,
}

fn key(a: &Attachment) -> (String, String, String) {
    (a.network.clone(), a.container_id.clone(), a.ifname.clone())
}

impl FakeAgent {
    fn new() -> FakeAgent {
        FakeAgent {
            next: 5,
            mtu: 1450,
            ..Default::default()
        }
    }

    fn gate(&self) -> Result<(), AgentError> {
        if self.unavailable {
            Err(AgentError::Unavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

impl Agent for FakeAgent {
    async fn connect(&mut self) -> Result<(), AgentError> {
        // Not recorded: it changes nothing the tests look at.
        self.gate()
    }

    async fn allocate(&mut self, req: AllocateRequest) -> Result<AllocateReply, AgentError> {
        self.calls.push(AgentCall::Allocate(req.clone()));
        self.gate()?;
        if let Some(e) = self.fail_allocate.clone() {
            return Err(e);
        }
        let k = key(req
            .attachment
            .as_ref()
            .ok_or_else(|| AgentError::Rejected("no attachment".into()))?);
        let next = &mut self.next;
        let addr = self.held.entry(k).or_insert_with(|| {
            *next += 1;
            format!("10.244.0.{}/32", *next - 1)
        });
        Ok(AllocateReply {
            ips: vec![IpConfig {
                address: addr.clone(),
                gateway: String::new(),
            }],
            mtu: self.mtu,
        })
    }

    async fn endpoint_ready(&mut self, req: EndpointReadyRequest) -> Result<(), AgentError> {
        self.calls.push(AgentCall::EndpointReady(req));
        self.gate()?;
        if self.fail_endpoint_ready {
            Err(AgentError::Rejected("route install failed".into()))
        } else {
            Ok(())
        }
    }

    async fn release(&mut self, a: Attachment) -> Result<u32, AgentError> {
        self.calls.push(AgentCall::Release(a.clone()));
        self.gate()?;
        Ok(self.held.remove(&key(&a)).map_or(0, |_| 1))
    }

    async fn check(&mut self, a: Attachment) -> Result<Vec<String>, AgentError> {
        self.calls.push(AgentCall::Check(a.clone()));
        self.gate()?;
        Ok(self.held.get(&key(&a)).cloned().into_iter().collect())
    }

    async fn gc(&mut self, req: GcRequest) -> Result<u32, AgentError> {
        self.calls.push(AgentCall::Gc(req.clone()));
        self.gate()?;
        let valid: Vec<_> = req.valid_attachments.iter().map(key).collect();
        let before = self.held.len();
        self.held
            .retain(|k, _| k.0 != req.network || valid.contains(k));
        Ok((before - self.held.len()) as u32)
    }

    async fn status(&mut self) -> Result<StatusReply, AgentError> {
        self.calls.push(AgentCall::Status);
        self.gate()?;
        Ok(StatusReply {
            ready: !self.not_ready,
            reason: if self.not_ready {
                "syncing".into()
            } else {
                String::new()
            },
            ..Default::default()
        })
    }
}

fn env(cmd: &str, cid: &str) -> CniEnv {
    let vars: BTreeMap<&str, String> = [
        ("CNI_COMMAND", cmd.to_string()),
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", NETNS.to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_ARGS", KUBELET_ARGS.to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
    ]
    .into_iter()
    .collect();
    CniEnv::parse(|k| vars.get(k).cloned()).unwrap()
}

fn conf(version: Version, extra: Value) -> NetConf {
    let mut c =
        json!({"cniVersion": version.as_str(), "name": "k8s-pod-network", "type": "tortie"});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    NetConf::parse(c.to_string().as_bytes()).unwrap()
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn exec(
    cmd: &str,
    cid: &str,
    c: &NetConf,
    agent: &mut FakeAgent,
    dp: &mut FakeDataplane,
) -> Result<Option<String>, CniError> {
    block_on(run(&env(cmd, cid), c, agent, dp))
}

/// The plain ADD most tests make: container c1, cniVersion 1.0.0, no extra config.
fn add_v1(agent: &mut FakeAgent, dp: &mut FakeDataplane) -> Result<Option<String>, CniError> {
    exec("ADD", "c1", &conf(Version::V1_0_0, json!({})), agent, dp)
}

fn host_if() -> String {
    tortie_api::veth::host_veth_name(Some(("default", "web-0")), "")
}

#[test]
fn add_wires_the_pod_and_reports_in_each_versions_shape() {
    for v in Version::ALL {
        let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
        let out = exec("ADD", "c1", &conf(v, json!({})), &mut agent, &mut dp)
            .unwrap()
            .unwrap();
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(r["cniVersion"], v.as_str());
        assert_eq!(r["interfaces"][0]["name"], host_if().as_str());
        assert_eq!(r["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["sandbox"], NETNS);
        assert_eq!(r["ips"][0]["address"], "10.244.0.5/32");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            v < Version::V1_0_0,
            "{v}"
        );
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            v == Version::V1_1_0,
            "{v}"
        );
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
        );

        let pair = dp.pair(&host_if()).unwrap();
        assert_eq!(
            pair.mtu, 1450,
            "MTU comes from the agent when the config has none"
        );
        assert_eq!(pair.addresses, vec!["10.244.0.5/32".parse().unwrap()]);
        // EndpointReady comes with the host veth and the address.
        let ready = agent.calls.iter().find_map(|c| match c {
            AgentCall::EndpointReady(r) => Some(r.clone()),
            _ => None,
        });
        let ready = ready.unwrap();
        assert_eq!(ready.host_ifname, host_if());
        assert_eq!(ready.addresses, vec!["10.244.0.5/32".to_string()]);
        assert_eq!(ready.pod.unwrap().name, "web-0");
    }
}

#[test]
fn endpoint_ready_echoes_the_allocation_verbatim() {
    // The pod gets a /32 whatever prefix the agent sends; the agent gets its own text back.
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    agent.held.insert(
        ("k8s-pod-network".into(), "c1".into(), "eth0".into()),
        "10.244.0.9/26".into(),
    );
    add_v1(&mut agent, &mut dp).unwrap();
    assert_eq!(
        dp.pair(&host_if()).unwrap().addresses,
        vec!["10.244.0.9/32".parse().unwrap()]
    );
    let sent = agent.calls.iter().find_map(|c| match c {
        AgentCall::EndpointReady(r) => Some(r.addresses.clone()),
        _ => None,
    });
    assert_eq!(sent, Some(vec!["10.244.0.9/26".to_string()]));
}

#[test]
fn config_mtu_overrides_the_agent() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    exec(
        "ADD",
        "c1",
        &conf(Version::V1_0_0, json!({"mtu": 1380})),
        &mut agent,
        &mut dp,
    )
    .unwrap();
    assert_eq!(dp.pair(&host_if()).unwrap().mtu, 1380);
}

#[test]
fn add_appends_to_an_earlier_plugins_result() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    let prev = json!({"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0"}],
                                      "ips": [{"address": "192.0.2.1/32", "interface": 0}], "dns": {"search": ["a"]}}});
    let out = exec(
        "ADD",
        "c1",
        &conf(Version::V1_0_0, prev),
        &mut agent,
        &mut dp,
    )
    .unwrap()
    .unwrap();
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(r["ips"][1]["interface"], 2);
    assert_eq!(r["dns"]["search"][0], "a");
}

#[test]
fn add_refuses_an_interface_it_did_not_make_and_changes_nothing() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    dp.foreign.insert((PathBuf::from(NETNS), "eth0".into()), 3);
    let err = add_v1(&mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::InterfaceExists, "{err}");
    assert!(dp.mutating_calls().is_empty(), "{:?}", dp.calls);
    assert!(
        agent.calls.is_empty(),
        "no allocation for a refused ADD: {:?}",
        agent.calls
    );
}

#[test]
fn repeated_add_returns_the_same_address_and_rewires() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    let c = conf(Version::V1_0_0, json!({}));
    let first: Value =
        serde_json::from_str(&exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap().unwrap())
            .unwrap();
    let second: Value =
        serde_json::from_str(&exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap().unwrap())
            .unwrap();
    assert_eq!(first["ips"], second["ips"]);
    assert_eq!(dp.pairs.len(), 1, "one pair, not two: {:?}", dp.pairs);
    assert!(dp.calls.contains(&Call::DeleteHostLink(host_if())));
}

#[test]
fn a_new_sandbox_of_the_same_pod_replaces_the_old_host_veth() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    dp.netns.insert(PathBuf::from("/run/netns/old"));
    let c = conf(Version::V1_0_0, json!({}));
    let mut old = env("ADD", "c0");
    old.netns = Some(PathBuf::from("/run/netns/old"));
    block_on(run(&old, &c, &mut agent, &mut dp)).unwrap();
    exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap();
    assert_eq!(dp.pairs.len(), 1);
    assert_eq!(dp.pairs[0].netns, PathBuf::from(NETNS));
}

#[test]
fn fresh_add_makes_the_pair_with_a_provisional_mtu_and_corrects_it() {
    // No MTU in the config: the pair is made before the agent's 1450 is known, with the
    // plugin's default, and configure_pod gets told so it can set 1450 on both ends.
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    add_v1(&mut agent, &mut dp).unwrap();
    let mutating: Vec<Call> = dp.mutating_calls().into_iter().cloned().collect();
    let [
        Call::CreatePair(pair),
        Call::HostUp(host_plan, host_pair_mtu),
        Call::ConfigurePod(plan, pair_mtu),
    ] = mutating.as_slice()
    else {
        panic!("one pair, then its host end up, then its pod end: {mutating:?}");
    };
    assert_eq!(pair.mtu, crate::plan::DEFAULT_MTU);
    assert_eq!((plan.mtu, *pair_mtu), (1450, crate::plan::DEFAULT_MTU));
    assert_eq!((host_plan, host_pair_mtu), (plan, pair_mtu));
    let p = dp.pair(&host_if()).unwrap();
    assert_eq!(
        (p.mtu, p.host_mtu, p.up, p.host_up),
        (1450, 1450, true, true)
    );
}

#[test]
fn config_mtu_is_the_pairs_mtu_from_the_start() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    exec(
        "ADD",
        "c1",
        &conf(Version::V1_0_0, json!({"mtu": 1380})),
        &mut agent,
        &mut dp,
    )
    .unwrap();
    assert!(
        dp.calls
            .iter()
            .any(|c| matches!(c, Call::CreatePair(p) if p.mtu == 1380)),
        "{:?}",
        dp.calls
    );
    assert!(
        dp.calls
            .iter()
            .any(|c| matches!(c, Call::ConfigurePod(p, 1380) if p.mtu == 1380)),
        "{:?}",
        dp.calls
    );
}

#[test]
fn failed_allocate_deletes_the_pair_made_meanwhile() {
    for (err, code) in [
        (
            AgentError::Rejected("pool exhausted".into()),
            Code::AgentRejected,
        ),
        (
            AgentError::Unavailable("Aborted: lost a CAS race".into()),
            Code::TryAgainLater,
        ),
    ] {
        let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
        agent.fail_allocate = Some(err);
        let got = add_v1(&mut agent, &mut dp).unwrap_err();
        assert_eq!(got.code, code, "{got}");
        assert!(
            dp.calls.iter().any(|c| matches!(c, Call::CreatePair(_))),
            "the pair was made during Allocate: {:?}",
            dp.calls
        );
        assert!(dp.calls.contains(&Call::DeleteHostLink(host_if())));
        assert!(dp.pairs.is_empty(), "{:?}", dp.pairs);
        assert!(
            !dp.calls.iter().any(|c| matches!(c, Call::ConfigurePod(..))),
            "{:?}",
            dp.calls
        );
        // Nothing was allocated, so nothing to release, and the pod was never ready.
        assert!(
            agent
                .calls
                .iter()
                .all(|c| matches!(c, AgentCall::Allocate(_))),
            "{:?}",
            agent.calls
        );
    }
}

#[test]
fn failed_pair_releases_the_allocation() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    dp.fail_create_pair = true;
    let err = add_v1(&mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::Dataplane, "{err}");
    assert!(
        dp.pairs.is_empty(),
        "the partial pair is deleted: {:?}",
        dp.pairs
    );
    assert!(agent.held.is_empty(), "{:?}", agent.held);
    assert!(
        agent
            .calls
            .iter()
            .any(|c| matches!(c, AgentCall::Release(_))),
        "{:?}",
        agent.calls
    );
    assert!(
        !agent
            .calls
            .iter()
            .any(|c| matches!(c, AgentCall::EndpointReady(_))),
        "{:?}",
        agent.calls
    );
    assert!(
        !dp.calls.iter().any(|c| matches!(c, Call::ConfigurePod(..))),
        "{:?}",
        dp.calls
    );
}

#[test]
fn failed_allocate_on_a_re_add_keeps_the_working_wiring() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    let c = conf(Version::V1_0_0, json!({}));
    exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap();
    let before = dp.pairs.clone();
    dp.calls.clear();
    agent.fail_allocate = Some(AgentError::Unavailable("DeadlineExceeded".into()));
    let err = exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::TryAgainLater, "{err}");
    assert!(dp.mutating_calls().is_empty(), "{:?}", dp.calls);
    assert_eq!(dp.pairs, before);
}

#[test]
fn re_add_allocates_before_it_replaces_the_old_pair() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    let c = conf(Version::V1_0_0, json!({}));
    exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap();
    dp.calls.clear();
    agent.calls.clear();
    exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap();
    let mutating: Vec<Call> = dp.mutating_calls().into_iter().cloned().collect();
    // Sequential and with the final MTU from the start: nothing to correct afterwards.
    let [
        Call::DeleteHostLink(h),
        Call::CreatePair(pair),
        Call::HostUp(_, _),
        Call::ConfigurePod(plan, pair_mtu),
    ] = mutating.as_slice()
    else {
        panic!("{mutating:?}");
    };
    assert_eq!(h, &host_if());
    assert_eq!((pair.mtu, plan.mtu, *pair_mtu), (1450, 1450, 1450));
    assert!(matches!(agent.calls[0], AgentCall::Allocate(_)));
    assert_eq!(dp.pair(&host_if()).unwrap().mtu, 1450);
}

#[test]
fn failed_configure_leaves_no_veth_and_no_allocation() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    dp.fail_configure = true;
    let err = add_v1(&mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::Dataplane, "{err}");
    assert!(dp.pairs.is_empty(), "{:?}", dp.pairs);
    assert!(agent.held.is_empty(), "{:?}", agent.held);
}

#[test]
fn failed_endpoint_ready_leaves_no_veth_and_no_allocation() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    agent.fail_endpoint_ready = true;
    let err = add_v1(&mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::AgentRejected, "{err}");
    assert!(dp.pairs.is_empty());
    assert!(agent.held.is_empty());
}

#[test]
fn add_into_a_missing_netns_is_code_3_and_allocates_nothing() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::default());
    let err = add_v1(&mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::UnknownContainer);
    assert!(agent.calls.is_empty());
}

#[test]
fn unreachable_agent_is_try_again_later_and_touches_nothing() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    agent.unavailable = true;
    let c = conf(Version::V1_0_0, json!({}));
    let err = exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap_err();
    assert_eq!(err.code, Code::TryAgainLater, "{err}");
    assert!(dp.mutating_calls().is_empty());
    assert_eq!(
        exec("DEL", "c1", &c, &mut agent, &mut dp).unwrap_err().code,
        Code::TryAgainLater
    );
}

#[test]
fn del_removes_everything_and_is_idempotent() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    let c = conf(Version::V0_3_1, json!({}));
    exec("ADD", "c1", &c, &mut agent, &mut dp).unwrap();
    assert_eq!(exec("DEL", "c1", &c, &mut agent, &mut dp).unwrap(), None);
    assert!(dp.pairs.is_empty());
    assert!(agent.held.is_empty());
    // Again, then with the netns gone, then with no netns at all: all success.
    exec("DEL", "c1", &c, &mut agent, &mut dp).unwrap();
    dp.netns.clear();
    exec("DEL", "c1", &c, &mut agent, &mut dp).unwrap();
    let mut no_ns = env("DEL", "c1");
    no_ns.netns = None;
    block_on(run(&no_ns, &c, &mut agent, &mut dp)).unwrap();
}

fn add_then_prev(v: Version, agent: &mut FakeAgent, dp: &mut FakeDataplane) -> NetConf {
    let out = exec("ADD", "c1", &conf(v, json!({})), agent, dp)
        .unwrap()
        .unwrap();
    let prev: Value = serde_json::from_str(&out).unwrap();
    conf(v, json!({"prevResult": prev}))
}

#[test]
fn check_passes_after_add_for_every_version_that_has_it() {
    for v in [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0] {
        let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
        let c = add_then_prev(v, &mut agent, &mut dp);
        assert_eq!(
            exec("CHECK", "c1", &c, &mut agent, &mut dp).unwrap(),
            None,
            "{v}"
        );
        assert!(agent.calls.iter().any(|c| matches!(c, AgentCall::Check(_))));
    }
}

#[test]
fn check_catches_drift() {
    type Break = fn(&mut FakeAgent, &mut FakeDataplane);
    let breaks: [(&str, Break); 6] = [
        ("address removed", |_, dp| dp.pairs[0].addresses.clear()),
        ("default route removed", |_, dp| {
            dp.pairs[0].routes.retain(|r| r.scope_link)
        }),
        ("gateway link route removed", |_, dp| {
            dp.pairs[0].routes.retain(|r| !r.scope_link)
        }),
        ("proxy_arp off", |_, dp| dp.pairs[0].proxy_arp = false),
        ("veth gone", |_, dp| dp.pairs.clear()),
        ("agent lost the allocation", |agent, _| agent.held.clear()),
    ];
    for (what, brk) in breaks {
        let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
        let c = add_then_prev(Version::V1_0_0, &mut agent, &mut dp);
        brk(&mut agent, &mut dp);
        let err = exec("CHECK", "c1", &c, &mut agent, &mut dp).unwrap_err();
        assert_eq!(err.code, Code::CheckFailed, "{what}: {err}");
    }
}

#[test]
fn check_needs_0_4_0_and_a_prev_result() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    let err = exec(
        "CHECK",
        "c1",
        &conf(Version::V0_3_1, json!({})),
        &mut agent,
        &mut dp,
    )
    .unwrap_err();
    assert_eq!(err.code, Code::IncompatibleVersion);
    let err = exec(
        "CHECK",
        "c1",
        &conf(Version::V1_0_0, json!({})),
        &mut agent,
        &mut dp,
    )
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidNetworkConfig);
}

#[test]
fn status_is_50_until_the_agent_is_ready() {
    let c = conf(Version::V1_1_0, json!({}));
    let mut dp = FakeDataplane::default();
    let mut agent = FakeAgent::new();
    assert_eq!(exec("STATUS", "", &c, &mut agent, &mut dp).unwrap(), None);
    agent.not_ready = true;
    let err = exec("STATUS", "", &c, &mut agent, &mut dp).unwrap_err();
    assert_eq!(
        (err.code, err.details.as_str()),
        (Code::NotAvailable, "syncing")
    );
    agent.unavailable = true;
    assert_eq!(
        exec("STATUS", "", &c, &mut agent, &mut dp)
            .unwrap_err()
            .code,
        Code::NotAvailable
    );
    let old = conf(Version::V1_0_0, json!({}));
    assert_eq!(
        exec("STATUS", "", &old, &mut agent, &mut dp)
            .unwrap_err()
            .code,
        Code::IncompatibleVersion
    );
}

#[test]
fn gc_releases_what_is_not_listed() {
    let (mut agent, mut dp) = (FakeAgent::new(), FakeDataplane::with_netns(NETNS));
    dp.netns.insert(PathBuf::from("/run/netns/b"));
    let c = conf(Version::V1_1_0, json!({}));
    exec("ADD", "keep", &c, &mut agent, &mut dp).unwrap();
    let mut other = env("ADD", "leaked");
    other.netns = Some(PathBuf::from("/run/netns/b"));
    other.pod = None;
    block_on(run(&other, &c, &mut agent, &mut dp)).unwrap();
    assert_eq!(agent.held.len(), 2);

    let gc = conf(
        Version::V1_1_0,
        json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
    );
    assert_eq!(exec("GC", "", &gc, &mut agent, &mut dp).unwrap(), None);
    assert_eq!(
        agent.held.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
        vec!["keep"]
    );

    assert_eq!(
        exec("GC", "", &c, &mut agent, &mut dp).unwrap_err().code,
        Code::InvalidNetworkConfig
    );
    assert_eq!(
        exec(
            "GC",
            "",
            &conf(Version::V1_0_0, json!({})),
            &mut agent,
            &mut dp
        )
        .unwrap_err()
        .code,
        Code::IncompatibleVersion
    );
    agent.unavailable = true;
    assert_eq!(
        exec("GC", "", &gc, &mut agent, &mut dp).unwrap_err().code,
        Code::TryAgainLater
    );
}
