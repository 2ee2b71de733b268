//! The node agent as the plugin sees it: a small trait over the `Cni` and `Status` gRPC
//! services, so commands can be unit-tested with a fake, and the tonic client behind it.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Channel;
use tortie_api::v1::{
    AllocateReply, AllocateRequest, Attachment, CheckRequest, EndpointReadyRequest, GcRequest,
    ReleaseRequest, StatusReply, StatusRequest, cni_client::CniClient, status_client::StatusClient,
};

/// Why an agent call failed, sorted by what the runtime should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The socket is absent or refuses, or the call timed out or the agent says it is busy:
    /// the runtime should retry (CNI code 11).
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    /// The agent understood and said no (pool exhausted, invalid request…).
    #[error("agent refused: {0}")]
    Rejected(String),
}

impl AgentError {
    fn from_status(status: tonic::Status) -> AgentError {
        use tonic::Code::*;
        let text = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            // Transport failures surface as Unknown/Unavailable; Aborted is a lost CAS race
            // inside the agent, worth a retry.
            Unavailable | DeadlineExceeded | Aborted | Cancelled | Unknown => {
                AgentError::Unavailable(text)
            }
            _ => AgentError::Rejected(text),
        }
    }
}

// The binary polls these futures only inside `block_on` on its main thread (its one worker
// thread runs tonic's own tasks), never moving them between threads: no Send needed.
#[allow(async_fn_in_trait)]
pub trait Agent {
    /// Opens the connection ahead of the first call, so ADD can pay for it while it looks
    /// at the pod; an unreachable agent shows here, before anything is changed.
    async fn connect(&mut self) -> Result<(), AgentError>;
    async fn allocate(&mut self, req: AllocateRequest) -> Result<AllocateReply, AgentError>;
    async fn endpoint_ready(&mut self, req: EndpointReadyRequest) -> Result<(), AgentError>;
    /// Returns how many addresses were released (0 for an unknown attachment).
    async fn release(&mut self, attachment: Attachment) -> Result<u32, AgentError>;
    /// The addresses the agent holds for `attachment` (empty when none).
    async fn check(&mut self, attachment: Attachment) -> Result<Vec<String>, AgentError>;
    async fn gc(&mut self, req: GcRequest) -> Result<u32, AgentError>;
    async fn status(&mut self) -> Result<StatusReply, AgentError>;
}

/// The real agent over its unix socket. Connects on first use, so commands that never reach
/// the agent (VERSION, a bad config) pay nothing for it.
pub struct GrpcAgent {
    socket: PathBuf,
    timeout: Duration,
    channel: Option<Channel>,
}

impl GrpcAgent {
    pub fn new(socket: PathBuf, timeout: Duration) -> GrpcAgent {
        GrpcAgent {
            socket,
            timeout,
            channel: None,
        }
    }

    async fn channel(&mut self) -> Result<Channel, AgentError> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let connect = tortie_api::connect_unix(&self.socket);
        let channel = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(AgentError::Unavailable(format!(
                    "cannot connect to {}: {}",
                    self.socket.display(),
                    source_chain(&e)
                )));
            }
            Err(_) => {
                return Err(AgentError::Unavailable(format!(
                    "connecting to {} timed out",
                    self.socket.display()
                )));
            }
        };
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Runs one call under the configured deadline.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AgentError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(AgentError::from_status(status)),
            Err(_) => Err(AgentError::Unavailable(format!(
                "{what} timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

/// "error trying to connect: No such file or directory" instead of only the outer layer.
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        // Some layers already quote their source in their own message.
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cur = s.source();
    }
    text
}

impl Agent for GrpcAgent {
    async fn connect(&mut self) -> Result<(), AgentError> {
        self.channel().await.map(|_| ())
    }

    async fn allocate(&mut self, req: AllocateRequest) -> Result<AllocateReply, AgentError> {
        let mut client = CniClient::new(self.channel().await?);
        self.call("Allocate", client.allocate(req)).await
    }

    async fn endpoint_ready(&mut self, req: EndpointReadyRequest) -> Result<(), AgentError> {
        let mut client = CniClient::new(self.channel().await?);
        self.call("EndpointReady", client.endpoint_ready(req))
            .await
            .map(|_| ())
    }

    async fn release(&mut self, attachment: Attachment) -> Result<u32, AgentError> {
        let mut client = CniClient::new(self.channel().await?);
        let req = ReleaseRequest {
            attachment: Some(attachment),
        };
        self.call("Release", client.release(req))
            .await
            .map(|r| r.released)
    }

    async fn check(&mut self, attachment: Attachment) -> Result<Vec<String>, AgentError> {
        let mut client = CniClient::new(self.channel().await?);
        let req = CheckRequest {
            attachment: Some(attachment),
        };
        self.call("Check", client.check(req))
            .await
            .map(|r| r.addresses)
    }

    async fn gc(&mut self, req: GcRequest) -> Result<u32, AgentError> {
        let mut client = CniClient::new(self.channel().await?);
        self.call("Gc", client.gc(req)).await.map(|r| r.released)
    }

    async fn status(&mut self) -> Result<StatusReply, AgentError> {
        let mut client = StatusClient::new(self.channel().await?);
        self.call("GetStatus", client.get_status(StatusRequest {}))
            .await
    }
}
