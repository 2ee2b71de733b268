//! The gRPC layer over a real unix socket, with recording fakes behind the traits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use tonic::Code;
use tortie_api::v1::cni_client::CniClient;
use tortie_api::v1::status_client::StatusClient;

use super::*;
use crate::attachment::GcOutcome;

/// Hands out 10.9.0.1, .2, … by handle. Shared with the test through an Arc so the test can
/// look inside; fine for a fake.
#[derive(Clone, Default)]
struct FakeIpam {
    state: Arc<Mutex<FakeIpamState>>,
}

#[derive(Default)]
struct FakeIpamState {
    next: u8,
    held: BTreeMap<Handle, Vec<IpNet>>,
    pods: Vec<PodRef>,
    exhausted: bool,
}

impl Ipam for FakeIpam {
    async fn allocate(&self, p: AllocateParams) -> Result<Vec<IpNet>, Failure> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Failure::Internal("poisoned".into()))?;
        if let Some(a) = s.held.get(&p.handle) {
            return Ok(a.clone());
        }
        if s.exhausted {
            return Err(Failure::Exhausted("pool 10.9.0.0/24 is full".into()));
        }
        s.next += 1;
        let addr: IpNet = format!("10.9.0.{}/32", s.next)
            .parse()
            .map_err(|_| Failure::Internal("addr".into()))?;
        s.held.insert(p.handle, vec![addr]);
        s.pods.push(p.pod);
        Ok(vec![addr])
    }
    async fn release(&self, h: &Handle) -> Result<u32, Failure> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Failure::Internal("poisoned".into()))?;
        Ok(s.held.remove(h).map_or(0, |a| a.len() as u32))
    }
    async fn addresses(&self, h: &Handle) -> Result<Vec<IpNet>, Failure> {
        let s = self
            .state
            .lock()
            .map_err(|_| Failure::Internal("poisoned".into()))?;
        Ok(s.held.get(h).cloned().unwrap_or_default())
    }
    async fn gc(&self, network: &str, keep: &[Handle]) -> Result<GcOutcome, Failure> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Failure::Internal("poisoned".into()))?;
        let doomed: Vec<Handle> = s
            .held
            .keys()
            .filter(|h| h.network == network && !keep.contains(h))
            .cloned()
            .collect();
        let mut out = GcOutcome::default();
        for h in doomed {
            s.held.remove(&h);
            out.handles.push(h);
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EpCall {
    Ready(Endpoint),
    Removed(Handle),
}

#[derive(Clone, Default)]
struct FakeEndpoints {
    calls: Arc<Mutex<Vec<EpCall>>>,
}

impl FakeEndpoints {
    fn calls(&self) -> Vec<EpCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Endpoints for FakeEndpoints {
    async fn ready(&self, ep: Endpoint) -> Result<(), Failure> {
        self.calls
            .lock()
            .map_err(|_| Failure::Internal("poisoned".into()))?
            .push(EpCall::Ready(ep));
        Ok(())
    }
    async fn removed(&self, h: &Handle) -> Result<(), Failure> {
        self.calls
            .lock()
            .map_err(|_| Failure::Internal("poisoned".into()))?
            .push(EpCall::Removed(h.clone()));
        Ok(())
    }
}

const TEST_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

struct Harness {
    _dir: tempfile::TempDir,
    sock: std::path::PathBuf,
    ipam: FakeIpam,
    endpoints: FakeEndpoints,
    health: watch::Sender<Health>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Harness {
    async fn start(health: Health) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/agent.sock");
        let listener = bind(&sock).unwrap();
        let ipam = FakeIpam::default();
        let endpoints = FakeEndpoints::default();
        let (health_tx, health_rx) = watch::channel(health);
        let cni = CniService::new(ipam.clone(), endpoints.clone(), 1440, health_rx.clone());
        let status = StatusService::new(
            NodeInfo {
                node_name: "node-1".into(),
                mtu: 1440,
            },
            health_rx,
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_grace(
            listener,
            cni,
            status,
            async {
                let _ = stop_rx.await;
            },
            TEST_GRACE,
        ));
        Harness {
            _dir: dir,
            sock,
            ipam,
            endpoints,
            health: health_tx,
            stop: Some(stop_tx),
            server,
        }
    }

    async fn cni(&self) -> CniClient<tonic::transport::Channel> {
        CniClient::new(tortie_api::connect_unix(&self.sock).await.unwrap())
    }

    async fn status(&self) -> StatusClient<tonic::transport::Channel> {
        StatusClient::new(tortie_api::connect_unix(&self.sock).await.unwrap())
    }
}

fn att(network: &str, cid: &str) -> Option<api::Attachment> {
    Some(api::Attachment {
        network: network.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
    })
}

fn pod(name: &str) -> Option<api::Pod> {
    Some(api::Pod {
        namespace: "default".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
    })
}

fn handle(network: &str, cid: &str) -> Handle {
    Handle {
        network: network.into(),
        container_id: cid.into(),
    }
}

#[tokio::test]
async fn socket_is_root_only() {
    let h = Harness::start(Health::Ready).await;
    let mode = std::fs::metadata(&h.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn allocate_is_idempotent_and_carries_gateway_and_mtu() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    let req = api::AllocateRequest {
        attachment: att("k8s-pod-network", "c1"),
        pod: pod("a"),
    };
    let r1 = c.allocate(req.clone()).await.unwrap().into_inner();
    assert_eq!(
        r1.ips,
        vec![api::IpConfig {
            address: "10.9.0.1/32".into(),
            gateway: "169.254.1.1".into()
        }]
    );
    assert_eq!(r1.mtu, 1440);
    let r2 = c.allocate(req).await.unwrap().into_inner();
    assert_eq!(r1, r2);
    let r3 = c
        .allocate(api::AllocateRequest {
            attachment: att("k8s-pod-network", "c2"),
            pod: pod("b"),
        })
        .await
        .unwrap();
    assert_eq!(r3.into_inner().ips[0].address, "10.9.0.2/32");
    let pods = h.ipam.state.lock().unwrap().pods.clone();
    assert_eq!(
        pods[1],
        PodRef {
            namespace: "default".into(),
            name: "b".into(),
            uid: "uid-b".into()
        }
    );
}

#[tokio::test]
async fn ipv6_addresses_get_the_link_local_gateway() {
    assert_eq!(
        ip_config(&"fd00::5/128".parse().unwrap()).gateway,
        "fe80::ecee:eeff:feee:eeee"
    );
}

#[tokio::test]
async fn pool_exhaustion_is_resource_exhausted() {
    let h = Harness::start(Health::Ready).await;
    h.ipam.state.lock().unwrap().exhausted = true;
    let err = h
        .cni()
        .await
        .allocate(api::AllocateRequest {
            attachment: att("net", "c1"),
            pod: pod("a"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "pool 10.9.0.0/24 is full");
}

#[tokio::test]
async fn bad_attachments_are_invalid_argument() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    let cases = [
        (None, "the request has no attachment"),
        (att("", "c1"), "network name \"\" is invalid"),
        (att("net", ""), "container id \"\" is invalid"),
        (att("net", "c/1"), "container id \"c/1\" is invalid"),
        (att("-net", "c1"), "network name \"-net\" is invalid"),
    ];
    for (attachment, want) in cases {
        let err = c
            .allocate(api::AllocateRequest {
                attachment,
                pod: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(want),
            "{} vs {want}",
            err.message()
        );
    }
}

#[tokio::test]
async fn not_ready_is_unavailable_until_ready() {
    let h = Harness::start(Health::Starting("syncing IPAM".into())).await;
    let mut c = h.cni().await;
    let req = api::AllocateRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
    };
    let err = c.allocate(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "tortie-node is starting: syncing IPAM");
    let st = h
        .status()
        .await
        .get_status(api::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.ready);
    assert_eq!(st.reason, "starting: syncing IPAM");

    h.health.send(Health::Ready).unwrap();
    assert!(c.allocate(req.clone()).await.is_ok());
    let st = h
        .status()
        .await
        .get_status(api::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.ready);
    assert_eq!(
        (st.node_name.as_str(), st.mtu, st.version.as_str()),
        ("node-1", 1440, env!("CARGO_PKG_VERSION"))
    );

    h.health
        .send(Health::Degraded("apiserver unreachable".into()))
        .unwrap();
    let err = c.allocate(req).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::Unavailable,
            "tortie-node is not ready: apiserver unreachable"
        )
    );
}

#[tokio::test]
async fn endpoint_ready_passes_the_endpoint_on() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    c.allocate(api::AllocateRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
    })
    .await
    .unwrap();
    c.endpoint_ready(api::EndpointReadyRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
        host_ifname: "tort0123456789a".into(),
        addresses: vec!["10.9.0.1/32".into()],
    })
    .await
    .unwrap();
    assert_eq!(
        h.endpoints.calls(),
        vec![EpCall::Ready(Endpoint {
            handle: handle("net", "c1"),
            pod: PodRef {
                namespace: "default".into(),
                name: "a".into(),
                uid: "uid-a".into()
            },
            host_ifname: "tort0123456789a".into(),
            addresses: vec!["10.9.0.1/32".parse().unwrap()],
        })]
    );
}

#[tokio::test]
async fn endpoint_ready_refuses_addresses_the_handle_does_not_hold() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    c.allocate(api::AllocateRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
    })
    .await
    .unwrap();
    c.allocate(api::AllocateRequest {
        attachment: att("net", "c2"),
        pod: pod("b"),
    })
    .await
    .unwrap();
    let req = |addrs: Vec<&str>, ifname: &str| api::EndpointReadyRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
        host_ifname: ifname.into(),
        addresses: addrs.into_iter().map(String::from).collect(),
    };
    // c2's address, claimed by c1.
    let err = c
        .endpoint_ready(req(vec!["10.9.0.2/32"], "tortX"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .starts_with("10.9.0.2/32 is not allocated to net.c1"),
        "{}",
        err.message()
    );
    let err = c
        .endpoint_ready(req(vec!["10.9.0.1"], "tortX"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "address \"10.9.0.1\" is not an address with a prefix length"
        )
    );
    let err = c.endpoint_ready(req(vec![], "tortX")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .endpoint_ready(req(vec!["10.9.0.1/32"], "tort-much-too-long-name"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .endpoint_ready(req(vec!["10.9.0.1/32"], "../x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(h.endpoints.calls().is_empty());
}

#[tokio::test]
async fn release_removes_the_endpoint_first_and_is_idempotent() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    c.allocate(api::AllocateRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
    })
    .await
    .unwrap();
    let r = c
        .release(api::ReleaseRequest {
            attachment: att("net", "c1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.released, 1);
    let r = c
        .release(api::ReleaseRequest {
            attachment: att("net", "c1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.released, 0);
    assert_eq!(
        h.endpoints.calls(),
        vec![
            EpCall::Removed(handle("net", "c1")),
            EpCall::Removed(handle("net", "c1"))
        ]
    );
    let chk = c
        .check(api::CheckRequest {
            attachment: att("net", "c1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(chk.addresses.is_empty());
}

#[tokio::test]
async fn check_reports_held_addresses() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    c.allocate(api::AllocateRequest {
        attachment: att("net", "c1"),
        pod: pod("a"),
    })
    .await
    .unwrap();
    let chk = c
        .check(api::CheckRequest {
            attachment: att("net", "c1"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(chk.addresses, vec!["10.9.0.1/32".to_owned()]);
}

#[tokio::test]
async fn gc_releases_what_is_not_valid_in_that_network_only() {
    let h = Harness::start(Health::Ready).await;
    let mut c = h.cni().await;
    for (net, cid) in [
        ("net", "keep"),
        ("net", "leak1"),
        ("net", "leak2"),
        ("net.other", "x"),
    ] {
        c.allocate(api::AllocateRequest {
            attachment: att(net, cid),
            pod: pod(cid),
        })
        .await
        .unwrap();
    }
    let r = c
        .gc(api::GcRequest {
            network: "net".into(),
            valid_attachments: vec![att("net", "keep").unwrap()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.released, 2);
    assert_eq!(
        h.endpoints.calls(),
        vec![
            EpCall::Removed(handle("net", "leak1")),
            EpCall::Removed(handle("net", "leak2"))
        ]
    );
    let held: Vec<Handle> = h.ipam.state.lock().unwrap().held.keys().cloned().collect();
    assert_eq!(held, vec![handle("net", "keep"), handle("net.other", "x")]);

    let err = c
        .gc(api::GcRequest {
            network: "net".into(),
            valid_attachments: vec![att("other", "keep").unwrap()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_for_an_open_connection() {
    let mut h = Harness::start(Health::Ready).await;
    // A client on a runtime nobody polls any more: its connection stays open and never
    // answers the server's GOAWAY, as with a stopped or stuck client process.
    let sock = h.sock.clone();
    let (connected_tx, connected_rx) = std::sync::mpsc::channel::<()>();
    let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c = rt.block_on(async {
            let mut c = CniClient::new(tortie_api::connect_unix(&sock).await.unwrap());
            c.check(api::CheckRequest {
                attachment: att("net", "c1"),
            })
            .await
            .unwrap();
            c
        });
        connected_tx.send(()).unwrap();
        let _ = exit_rx.recv();
        drop(c);
    });
    tokio::task::spawn_blocking(move || connected_rx.recv())
        .await
        .unwrap()
        .unwrap();
    if let Some(stop) = h.stop.take() {
        stop.send(()).unwrap();
    }
    let started = tokio::time::Instant::now();
    tokio::time::timeout(TEST_GRACE * 10, &mut h.server)
        .await
        .expect("the server must stop")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= TEST_GRACE, "{:?}", started.elapsed());
    exit_tx.send(()).unwrap();
    client.join().unwrap();
}

#[tokio::test]
async fn shuts_down_on_request() {
    let mut h = Harness::start(Health::Ready).await;
    if let Some(stop) = h.stop.take() {
        stop.send(()).unwrap();
    }
    (&mut h.server).await.unwrap().unwrap();
}
