//! What the commands need from the kernel, as a trait: the real implementation
//! ([`crate::netns::Netlink`]) does netlink and setns; unit tests use a recording fake.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::plan::PodPlan;

/// One link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    /// `IFLA_INFO_KIND`, e.g. "veth".
    pub kind: Option<String>,
    pub mac: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// For a veth: the ifindex of its peer (`IFLA_LINK`), in the peer's namespace.
    pub peer_index: Option<u32>,
}

/// A route in the pod's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRouteState {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub scope_link: bool,
}

/// The pod side of an attachment: the link, and (when asked for) its addresses and routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub link: LinkState,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<PodRouteState>,
}

/// The host side of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub link: LinkState,
    /// `net.ipv4.conf.<if>.proxy_arp`.
    pub proxy_arp: bool,
}

/// A veth pair before the allocation is known: names, namespace and a provisional MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSpec {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_ifname: String,
    pub mtu: u32,
}

impl PairSpec {
    pub fn for_plan(plan: &PodPlan) -> PairSpec {
        PairSpec {
            netns: plan.netns.clone(),
            ifname: plan.ifname.clone(),
            host_ifname: plan.host_ifname.clone(),
            mtu: plan.mtu,
        }
    }
}

/// What the wiring made that the result reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub pod_mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    #[error("network namespace {} does not exist", .0.display())]
    NetnsMissing(PathBuf),
    #[error("{op}: {message}")]
    Failed { op: String, message: String },
}

impl DataplaneError {
    pub fn failed(op: impl Into<String>, message: impl ToString) -> DataplaneError {
        DataplaneError::Failed {
            op: op.into(),
            message: message.to_string(),
        }
    }
}

// Async so that pod-namespace work (on its own thread) can overlap agent calls, as DEL's
// link deletion and Release do. The binary polls them only inside `block_on` on its main
// thread: no Send needed.
#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// The pod-side link `ifname` in `netns`, or `None` when the namespace has no such link.
    /// With `detail`, also its addresses and the main table's routes (CHECK); without, only
    /// the link (ADD's pre-check, where every round trip counts).
    async fn pod_state(
        &mut self,
        netns: &Path,
        ifname: &str,
        detail: bool,
    ) -> Result<Option<PodState>, DataplaneError>;

    /// The host-side link `name` in the plugin's own namespace.
    async fn host_state(&mut self, name: &str) -> Result<Option<HostState>, DataplaneError>;

    /// The part of the wiring that needs no allocation, so ADD can do it while Allocate is
    /// in flight: the veth pair in one request (the peer created inside `pair.netns`), with
    /// `pair.mtu` on both ends and both ends down, and the host side's IPv4 sysctls. On
    /// error it may leave a partial pair behind; the caller removes it with
    /// [`Dataplane::delete_host_link`].
    async fn create_pair(&mut self, pair: &PairSpec) -> Result<(), DataplaneError>;

    /// Once the allocation is known, the host side: the IPv6 sysctls when `plan` has IPv6
    /// (before the link is up, as DAD needs), then the link up, with `plan.mtu` when it
    /// differs from `pair_mtu`, the MTU [`Dataplane::create_pair`] used. The agent's route to
    /// the pod needs the host side up. Same cleanup contract as `create_pair`.
    async fn host_up(&mut self, plan: &PodPlan, pair_mtu: u32) -> Result<(), DataplaneError>;

    /// The pod side: its link up (with `plan.mtu` when it differs from `pair_mtu`), its
    /// addresses and routes. Same cleanup contract as `create_pair`.
    async fn configure_pod(
        &mut self,
        plan: &PodPlan,
        pair_mtu: u32,
    ) -> Result<Created, DataplaneError>;

    /// Every step one after the other, for when there is nothing to overlap them with.
    async fn create(&mut self, plan: &PodPlan) -> Result<Created, DataplaneError> {
        self.create_pair(&PairSpec::for_plan(plan)).await?;
        self.host_up(plan, plan.mtu).await?;
        self.configure_pod(plan, plan.mtu).await
    }

    /// Deletes a host-side link (and with it its veth peer). `Ok(false)` if absent.
    async fn delete_host_link(&mut self, name: &str) -> Result<bool, DataplaneError>;

    /// Deletes `ifname` inside `netns`. `Ok(false)` if the link is absent;
    /// `Err(NetnsMissing)` if the namespace is.
    async fn delete_pod_link(&mut self, netns: &Path, ifname: &str)
    -> Result<bool, DataplaneError>;
}

/// A dataplane in memory that records every call, for the commands' unit tests.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::plan::{HOST_MAC, PodRoute};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        PodState(PathBuf, String),
        HostState(String),
        CreatePair(PairSpec),
        /// The plan, and the MTU the pair was created with (also for `ConfigurePod`).
        HostUp(PodPlan, u32),
        ConfigurePod(PodPlan, u32),
        DeleteHostLink(String),
        DeletePodLink(PathBuf, String),
    }

    /// One veth pair: host side in the plugin's namespace, peer in `netns`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Pair {
        pub host: String,
        pub host_index: u32,
        pub netns: PathBuf,
        pub ifname: String,
        pub pod_index: u32,
        /// The pod end's MTU.
        pub mtu: u32,
        pub host_mtu: u32,
        /// Whether `host_up` brought the host end up.
        pub host_up: bool,
        /// Whether `configure_pod` brought the pod end up.
        pub up: bool,
        pub addresses: Vec<IpNet>,
        pub routes: Vec<PodRouteState>,
        pub proxy_arp: bool,
    }

    #[derive(Debug, Default)]
    pub struct FakeDataplane {
        pub calls: Vec<Call>,
        pub netns: BTreeSet<PathBuf>,
        pub pairs: Vec<Pair>,
        /// Links in pod namespaces that are not ours (e.g. a dummy "eth0").
        pub foreign: BTreeMap<(PathBuf, String), u32>,
        /// Makes `create_pair` make the pair and then fail, as when a sysctl write is refused.
        pub fail_create_pair: bool,
        /// Makes `configure_pod` configure and then fail, as when a route add is refused.
        pub fail_configure: bool,
        next_index: u32,
    }

    impl FakeDataplane {
        pub fn with_netns(path: &str) -> FakeDataplane {
            let mut d = FakeDataplane::default();
            d.netns.insert(PathBuf::from(path));
            d.next_index = 10;
            d
        }

        pub fn pair(&self, host: &str) -> Option<&Pair> {
            self.pairs.iter().find(|p| p.host == host)
        }

        pub fn mutating_calls(&self) -> Vec<&Call> {
            self.calls
                .iter()
                .filter(|c| !matches!(c, Call::PodState(..) | Call::HostState(..)))
                .collect()
        }

        /// The pair `create_pair` made for `plan`, checked against the MTU it was made with.
        fn made_pair(
            &mut self,
            plan: &PodPlan,
            pair_mtu: u32,
        ) -> Result<&mut Pair, DataplaneError> {
            let Some(pair) = self.pairs.iter_mut().find(|p| p.host == plan.host_ifname) else {
                return Err(DataplaneError::failed(
                    format!("set {} up", plan.host_ifname),
                    "No such device (os error 19)",
                ));
            };
            // The pod end keeps create_pair's MTU until configure_pod.
            if pair.mtu != pair_mtu {
                return Err(DataplaneError::failed(
                    "configure",
                    format!("the pair has MTU {}, the caller says {pair_mtu}", pair.mtu),
                ));
            }
            Ok(pair)
        }

        fn index(&mut self) -> u32 {
            self.next_index += 1;
            self.next_index
        }
    }

    pub fn mac_for(index: u32) -> String {
        format!("02:00:00:00:00:{:02x}", index & 0xff)
    }

    impl Dataplane for FakeDataplane {
        async fn pod_state(
            &mut self,
            netns: &Path,
            ifname: &str,
            detail: bool,
        ) -> Result<Option<PodState>, DataplaneError> {
            self.calls
                .push(Call::PodState(netns.to_owned(), ifname.to_owned()));
            if !self.netns.contains(netns) {
                return Err(DataplaneError::NetnsMissing(netns.to_owned()));
            }
            if let Some(&index) = self.foreign.get(&(netns.to_owned(), ifname.to_owned())) {
                let link = LinkState {
                    index,
                    kind: Some("dummy".into()),
                    mac: Some(mac_for(index)),
                    mtu: 1500,
                    up: true,
                    peer_index: None,
                };
                return Ok(Some(PodState {
                    link,
                    addresses: vec![],
                    routes: vec![],
                }));
            }
            Ok(self
                .pairs
                .iter()
                .find(|p| p.netns == netns && p.ifname == ifname)
                .map(|p| PodState {
                    link: LinkState {
                        index: p.pod_index,
                        kind: Some("veth".into()),
                        mac: Some(mac_for(p.pod_index)),
                        mtu: p.mtu,
                        up: p.up,
                        peer_index: Some(p.host_index),
                    },
                    addresses: if detail { p.addresses.clone() } else { vec![] },
                    routes: if detail { p.routes.clone() } else { vec![] },
                }))
        }

        async fn host_state(&mut self, name: &str) -> Result<Option<HostState>, DataplaneError> {
            self.calls.push(Call::HostState(name.to_owned()));
            Ok(self.pair(name).map(|p| HostState {
                link: LinkState {
                    index: p.host_index,
                    kind: Some("veth".into()),
                    mac: Some(crate::plan::format_mac(&HOST_MAC)),
                    mtu: p.host_mtu,
                    up: p.host_up,
                    peer_index: Some(p.pod_index),
                },
                proxy_arp: p.proxy_arp,
            }))
        }

        async fn create_pair(&mut self, pair: &PairSpec) -> Result<(), DataplaneError> {
            self.calls.push(Call::CreatePair(pair.clone()));
            if !self.netns.contains(&pair.netns) {
                return Err(DataplaneError::NetnsMissing(pair.netns.clone()));
            }
            if self.pair(&pair.host_ifname).is_some()
                || self
                    .foreign
                    .contains_key(&(pair.netns.clone(), pair.ifname.clone()))
                || self
                    .pairs
                    .iter()
                    .any(|p| p.netns == pair.netns && p.ifname == pair.ifname)
            {
                return Err(DataplaneError::failed(
                    "create veth",
                    "File exists (os error 17)",
                ));
            }
            let (host_index, pod_index) = (self.index(), self.index());
            self.pairs.push(Pair {
                host: pair.host_ifname.clone(),
                host_index,
                netns: pair.netns.clone(),
                ifname: pair.ifname.clone(),
                pod_index,
                mtu: pair.mtu,
                host_mtu: pair.mtu,
                host_up: false,
                up: false,
                addresses: vec![],
                routes: vec![],
                proxy_arp: true,
            });
            if self.fail_create_pair {
                return Err(DataplaneError::failed(
                    "write 1 to /proc/sys/net/ipv4/conf/x/proxy_arp",
                    "Permission denied (os error 13)",
                ));
            }
            Ok(())
        }

        async fn host_up(&mut self, plan: &PodPlan, pair_mtu: u32) -> Result<(), DataplaneError> {
            self.calls.push(Call::HostUp(plan.clone(), pair_mtu));
            let pair = self.made_pair(plan, pair_mtu)?;
            pair.host_mtu = plan.mtu;
            pair.host_up = true;
            Ok(())
        }

        async fn configure_pod(
            &mut self,
            plan: &PodPlan,
            pair_mtu: u32,
        ) -> Result<Created, DataplaneError> {
            self.calls.push(Call::ConfigurePod(plan.clone(), pair_mtu));
            let fail = self.fail_configure;
            let pair = self.made_pair(plan, pair_mtu)?;
            let pod_index = pair.pod_index;
            pair.routes = plan
                .routes
                .iter()
                .map(|r| match *r {
                    PodRoute::Link { dst } => PodRouteState {
                        dst: IpNet::from(dst),
                        gateway: None,
                        oif: Some(pod_index),
                        scope_link: true,
                    },
                    PodRoute::Via { dst, gw } => PodRouteState {
                        dst,
                        gateway: Some(gw),
                        oif: Some(pod_index),
                        scope_link: false,
                    },
                })
                .collect();
            pair.mtu = plan.mtu;
            pair.up = true;
            pair.addresses = plan.addresses.clone();
            if fail {
                return Err(DataplaneError::failed(
                    "add route",
                    "Network is unreachable (os error 101)",
                ));
            }
            Ok(Created {
                pod_mac: mac_for(pod_index),
            })
        }

        async fn delete_host_link(&mut self, name: &str) -> Result<bool, DataplaneError> {
            self.calls.push(Call::DeleteHostLink(name.to_owned()));
            let before = self.pairs.len();
            self.pairs.retain(|p| p.host != name);
            Ok(self.pairs.len() != before)
        }

        async fn delete_pod_link(
            &mut self,
            netns: &Path,
            ifname: &str,
        ) -> Result<bool, DataplaneError> {
            self.calls
                .push(Call::DeletePodLink(netns.to_owned(), ifname.to_owned()));
            if !self.netns.contains(netns) {
                return Err(DataplaneError::NetnsMissing(netns.to_owned()));
            }
            let before = self.pairs.len();
            self.pairs
                .retain(|p| !(p.netns == netns && p.ifname == ifname));
            Ok(self.pairs.len() != before)
        }
    }
}
