//! The `tortie` CNI plugin: the CNI spec (versions 0.3.0 to 1.1.0), the commands, and the
//! pod's wiring in its network namespace.
//!
//! Map of the crate:
//! - [`env`], [`config`], [`version`], [`result`], [`error`]: the spec's inputs and outputs;
//! - [`plan`]: pure decisions (what to configure, CHECK's verdict; the host veth name is
//!   `tortie_api::veth`, shared with the agent);
//! - [`commands`]: ADD/DEL/CHECK/STATUS/GC over the [`agent::Agent`] and
//!   [`dataplane::Dataplane`] traits;
//! - [`netns`]: the real dataplane (netlink, setns on a dedicated thread, sysctls);
//! - [`agent`]: the gRPC client of the node agent;
//! - [`lock`]: one ADD or DEL of a pod at a time, across plugin processes;
//! - [`cli`]: the binary's whole life: environment and stdin in, stdout and exit code out.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dataplane;
pub mod env;
pub mod error;
pub mod lock;
pub mod netns;
pub mod plan;
pub mod result;
pub mod version;
