//! ADD, DEL, CHECK, STATUS and GC: the order of agent calls and dataplane changes, and what
//! to undo when a step fails. Generic over [`Agent`] and [`Dataplane`] so every path runs in
//! unit tests without root.

use tortie_api::v1::{
    AllocateReply, AllocateRequest, Attachment, EndpointReadyRequest, GcRequest, Pod,
};
use tracing::{debug, info, warn};

use crate::agent::{Agent, AgentError};
use crate::config::NetConf;
use crate::dataplane::{Dataplane, DataplaneError, PairSpec};
use crate::env::{CniEnv, Command};
use crate::error::{CniError, Code};
use crate::plan;

/// Runs one command. `Ok(Some(json))` is printed on stdout; `Ok(None)` prints nothing
/// (DEL, CHECK, STATUS and GC succeed silently).
pub async fn run<A: Agent, D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &mut A,
    dp: &mut D,
) -> Result<Option<String>, CniError> {
    match env.command {
        Command::Add => add(env, conf, agent, dp).await.map(Some),
        Command::Del => del(env, conf, agent, dp).await.map(|()| None),
        Command::Check => check(env, conf, agent, dp).await.map(|()| None),
        Command::Status => status(conf, agent).await.map(|()| None),
        Command::Gc => gc(conf, agent).await.map(|()| None),
        Command::Version => Ok(Some(crate::version::version_json(Some(
            conf.version.as_str(),
        )))),
    }
}

fn attachment(env: &CniEnv, conf: &NetConf) -> Attachment {
    Attachment {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

fn pod(env: &CniEnv) -> Option<Pod> {
    env.pod.as_ref().map(|p| Pod {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    })
}

fn agent_error(during: &str, e: AgentError) -> CniError {
    match e {
        AgentError::Unavailable(d) => CniError::new(
            Code::TryAgainLater,
            format!("the tortie agent is unavailable ({during})"),
        )
        .with_details(d),
        AgentError::Rejected(d) => CniError::new(
            Code::AgentRejected,
            format!("the tortie agent refused {during}"),
        )
        .with_details(d),
    }
}

fn dataplane_error(e: DataplaneError) -> CniError {
    match e {
        DataplaneError::NetnsMissing(p) => CniError::new(
            Code::UnknownContainer,
            format!("network namespace {} does not exist", p.display()),
        ),
        DataplaneError::Failed { op, message } => {
            CniError::new(Code::Dataplane, format!("{op} failed")).with_details(message)
        }
    }
}

fn netns_of(env: &CniEnv) -> Result<std::path::PathBuf, CniError> {
    env.netns.clone().ok_or_else(|| {
        CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_NETNS is required for {}", env.command.as_str()),
        )
    })
}

/// Code 1 when the config's version predates `command` (which needs cniVersion `needs`).
fn allowed(conf: &NetConf, ok: bool, command: &str, needs: &str) -> Result<(), CniError> {
    if ok {
        return Ok(());
    }
    Err(CniError::new(
        Code::IncompatibleVersion,
        format!("config version {} does not allow {command}", conf.version),
    )
    .with_details(format!("{command} needs cniVersion {needs}")))
}

async fn add<A: Agent, D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &mut A,
    dp: &mut D,
) -> Result<String, CniError> {
    let netns = netns_of(env)?;
    let host_if = env.host_ifname();

    // Look before touching anything: a CNI_IFNAME that is not our own earlier wiring of this
    // pod is someone else's, and ADD must fail without changing it (or allocating). The
    // agent's connection is opened meanwhile, so an unreachable agent also fails the ADD
    // before anything is changed, and Allocate below pays only for its own round trip.
    let (connected, looked) = tokio::join!(agent.connect(), async {
        let existing = dp.pod_state(&netns, &env.ifname, false).await?;
        let host = dp.host_state(&host_if).await?;
        Ok::<_, DataplaneError>((existing, host))
    });
    let (existing, host) = looked.map_err(dataplane_error)?;
    if let Some(pod_link) = &existing
        && !plan::is_our_pair(pod_link, host.as_ref())
    {
        return Err(CniError::new(
            Code::InterfaceExists,
            format!("{} already exists in {}", env.ifname, netns.display()),
        )
        .with_details("tortie does not take over an interface it did not create; pick another CNI_IFNAME or remove it"));
    }
    connected.map_err(|e| agent_error("connect", e))?;

    debug!(
        exists = existing.is_some(),
        host_exists = host.is_some(),
        "looked before wiring"
    );
    let att = attachment(env, conf);
    let request = AllocateRequest {
        attachment: Some(att.clone()),
        pod: pod(env),
    };

    let undo = async |agent: &mut A, dp: &mut D, err: CniError| -> CniError {
        if let Err(e) = dp.delete_host_link(&host_if).await {
            warn!(error = %e, host_if, "cleanup after a failed ADD could not delete the veth");
        }
        if let Err(e) = agent.release(att.clone()).await {
            // The agent's GC frees it later; the runtime will also call DEL.
            warn!(error = %e, "cleanup after a failed ADD could not release the allocation");
        }
        err
    };

    let ready_request = |reply: &AllocateReply| EndpointReadyRequest {
        attachment: Some(att.clone()),
        pod: pod(env),
        host_ifname: host_if.clone(),
        // Verbatim as Allocate returned them (the API's contract): the agent matches them
        // against what it holds, whatever prefix length it chose to send.
        addresses: reply.ips.iter().map(|ip| ip.address.clone()).collect(),
    };
    let (plan, created) = if host.is_some() {
        // A host veth with our name is an earlier wiring of this pod: a repeated ADD of this
        // sandbox (then `existing` is its peer) or a previous sandbox of the same pod. The
        // allocation is the same either way, so wire afresh rather than trust a half-made
        // pair; but only once Allocate has answered, so a failing Allocate never destroys
        // a wiring that works. Rare, so no overlap here.
        let reply = agent
            .allocate(request)
            .await
            .map_err(|e| agent_error("Allocate", e))?;
        debug!(?reply, "allocated");
        let plan = match plan::plan_add(netns, &env.ifname, host_if.clone(), conf.mtu, &reply) {
            Ok(p) => p,
            Err(e) => return Err(undo(agent, dp, e).await),
        };
        info!(host_if, "replacing an earlier veth of this pod");
        if let Err(e) = dp.delete_host_link(&host_if).await {
            return Err(undo(agent, dp, dataplane_error(e)).await);
        }
        let created = match dp.create(&plan).await {
            Ok(c) => c,
            Err(e) => return Err(undo(agent, dp, dataplane_error(e)).await),
        };
        if let Err(e) = agent.endpoint_ready(ready_request(&reply)).await {
            return Err(undo(agent, dp, agent_error("EndpointReady", e)).await);
        }
        (plan, created)
    } else {
        // The pair needs no allocation, so it is made while Allocate is in flight (the
        // datastore write is most of an ADD). Its MTU can only be provisional: the agent's
        // comes with the reply, and `host_up` and `configure_pod` correct the two ends when
        // it differs.
        let pair = PairSpec {
            netns: netns.clone(),
            ifname: env.ifname.clone(),
            host_ifname: host_if.clone(),
            mtu: conf.mtu.unwrap_or(plan::DEFAULT_MTU),
        };
        let (allocated, paired) = tokio::join!(
            async {
                let r = agent.allocate(request).await;
                debug!(ok = r.is_ok(), "Allocate answered");
                r
            },
            async {
                let r = dp.create_pair(&pair).await;
                debug!(ok = r.is_ok(), "veth pair made");
                r
            }
        );
        let reply = match allocated {
            Ok(r) => r,
            Err(e) => {
                // Nothing was allocated: only the pair (whole or partial) is to be undone.
                if let Err(e) = dp.delete_host_link(&host_if).await {
                    warn!(error = %e, host_if, "cleanup after a failed Allocate could not delete the veth");
                }
                return Err(agent_error("Allocate", e));
            }
        };
        debug!(?reply, "allocated");
        if let Err(e) = paired {
            return Err(undo(agent, dp, dataplane_error(e)).await);
        }
        let plan = match plan::plan_add(netns, &env.ifname, host_if.clone(), conf.mtu, &reply) {
            Ok(p) => p,
            Err(e) => return Err(undo(agent, dp, e).await),
        };
        if let Err(e) = dp.host_up(&plan, pair.mtu).await {
            return Err(undo(agent, dp, dataplane_error(e)).await);
        }
        debug!("host end up");
        // With the host end up, the agent can route to the pod while its side is configured
        // (a packet that arrives first finds no address and is dropped; the runtime starts
        // nothing until ADD returns).
        let (configured, ready) = tokio::join!(
            async {
                let r = dp.configure_pod(&plan, pair.mtu).await;
                debug!(ok = r.is_ok(), "pod side configured");
                r
            },
            async {
                let r = agent.endpoint_ready(ready_request(&reply)).await;
                debug!(ok = r.is_ok(), "EndpointReady answered");
                r
            }
        );
        let created = match configured {
            Ok(c) => c,
            Err(e) => return Err(undo(agent, dp, dataplane_error(e)).await),
        };
        if let Err(e) = ready {
            return Err(undo(agent, dp, agent_error("EndpointReady", e)).await);
        }
        (plan, created)
    };

    info!(host_if, addresses = ?plan.addresses, mtu = plan.mtu, "pod wired");
    let ours = plan::add_result(&plan, &created.pod_mac);
    // An earlier plugin's result is passed on with ours appended (SPEC.md: a plugin must
    // pass through, modify or suppress prevResult, never ignore it).
    let result = match conf.prev_result.clone() {
        Some(mut prev) => {
            prev.append(ours);
            prev
        }
        None => ours,
    };
    Ok(result.to_json(conf.version))
}

async fn del<A: Agent, D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &mut A,
    dp: &mut D,
) -> Result<(), CniError> {
    // Deleting the pod side takes the host side with it. Without a netns (or with one that is
    // gone) the veth died with the namespace; the host name alone is not enough to delete by,
    // since a newer sandbox of the same pod may own it by now.
    let delete = async {
        let Some(netns) = &env.netns else {
            return Ok(());
        };
        debug!("deleting the pod link");
        match dp.delete_pod_link(netns, &env.ifname).await {
            Ok(found) => {
                debug!(found, "pod link deleted");
                Ok(())
            }
            Err(DataplaneError::NetnsMissing(_)) => {
                debug!("netns already gone");
                Ok(())
            }
            Err(e) => Err(dataplane_error(e)),
        }
    };
    // Both at once: unregistering a veth waits for the kernel's RCU grace periods, the
    // release for the datastore. Releasing a moment before the pod's eth0 is gone is
    // harmless: the dying namespace has no host route pointing into it any more.
    let release = async {
        let r = agent.release(attachment(env, conf)).await;
        debug!("release answered");
        r
    };
    let (deleted, released) = tokio::join!(delete, release);
    deleted?;
    let released = released.map_err(|e| agent_error("Release", e))?;
    info!(released, "endpoint released");
    Ok(())
}

async fn check<A: Agent, D: Dataplane>(
    env: &CniEnv,
    conf: &NetConf,
    agent: &mut A,
    dp: &mut D,
) -> Result<(), CniError> {
    allowed(conf, conf.version.has_check(), "CHECK", "0.4.0 or later")?;
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidNetworkConfig,
            "CHECK needs prevResult, and the config has none",
        )
    })?;
    let netns = netns_of(env)?;
    let host_if = env.host_ifname();
    let pod = match dp.pod_state(&netns, &env.ifname, true).await {
        Ok(p) => p,
        Err(DataplaneError::NetnsMissing(p)) => {
            return Err(CniError::new(
                Code::CheckFailed,
                format!("network namespace {} is gone", p.display()),
            ));
        }
        Err(e) => return Err(dataplane_error(e)),
    };
    let host = dp.host_state(&host_if).await.map_err(dataplane_error)?;
    let held = agent
        .check(attachment(env, conf))
        .await
        .map_err(|e| agent_error("Check", e))?;
    plan::check(
        prev,
        &netns.display().to_string(),
        &env.ifname,
        pod.as_ref(),
        &host_if,
        host.as_ref(),
        &held,
    )
}

async fn status<A: Agent>(conf: &NetConf, agent: &mut A) -> Result<(), CniError> {
    allowed(conf, conf.version.has_status_and_gc(), "STATUS", "1.1.0")?;
    match agent.status().await {
        Ok(s) if s.ready => Ok(()),
        Ok(s) => Err(
            CniError::new(Code::NotAvailable, "the tortie agent is not ready")
                .with_details(s.reason),
        ),
        Err(e) => Err(
            CniError::new(Code::NotAvailable, "the tortie agent is unreachable")
                .with_details(e.to_string()),
        ),
    }
}

async fn gc<A: Agent>(conf: &NetConf, agent: &mut A) -> Result<(), CniError> {
    allowed(conf, conf.version.has_status_and_gc(), "GC", "1.1.0")?;
    // Without the list every allocation would look stale: refuse rather than release all.
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidNetworkConfig,
            "GC needs cni.dev/valid-attachments, and the config has none",
        )
    })?;
    let req = GcRequest {
        network: conf.name.clone(),
        valid_attachments: valid
            .iter()
            .map(|v| Attachment {
                network: conf.name.clone(),
                container_id: v.container_id.clone(),
                ifname: v.ifname.clone(),
            })
            .collect(),
    };
    let released = agent.gc(req).await.map_err(|e| agent_error("Gc", e))?;
    info!(released, "garbage collected");
    Ok(())
}

#[cfg(test)]
mod tests;
