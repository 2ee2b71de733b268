//! Probes: a TCP connection or a UDP request to a [`serve`](super::serve) server, from inside
//! a namespace, that either brings back the server's [`Answer`] or says why not. Many probes
//! run at once, each on its own thread in its own namespace, so a matrix in which many
//! cells are dropped takes one timeout, not one per cell.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::Answer;
use super::matrix::Probed;
use crate::lab::Lab;
use crate::pod::{self, PodError, PodRef, Protocol};

/// How often a UDP probe sends its datagram again while it waits: a datagram lost on the way
/// is not a policy's drop.
const UDP_RESEND: Duration = Duration::from_millis(200);

/// Where a probe goes: `ADDR:PORT[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.ip, self.port),
            self.protocol
        )
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    /// `10.244.0.5:80`, `10.244.0.5:80/udp`, `[fd00::5]:80/tcp`; TCP when no protocol.
    fn from_str(s: &str) -> Result<Target, String> {
        let (addr, protocol) = match s.rsplit_once('/') {
            Some((addr, proto)) => (addr, proto.parse().map_err(|e| format!("{s:?}: {e}"))?),
            None => (s, Protocol::Tcp),
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: a target is ADDR:PORT[/tcp|/udp]"))?;
        Ok(Target {
            ip: addr.ip(),
            port: addr.port(),
            protocol,
        })
    }
}

/// Why a probe got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Nothing came back in time: what a policy's DROP looks like.
    #[error("timed out")]
    Timeout,
    /// A TCP reset or an ICMP port unreachable: nothing listens there.
    #[error("refused")]
    Refused,
    /// Anything else: no route, a garbled answer, a namespace that is gone.
    #[error("{0}")]
    Other(String),
}

fn failure(e: &std::io::Error) -> Failure {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => Failure::Timeout,
        ConnectionRefused | ConnectionReset => Failure::Refused,
        _ => Failure::Other(e.to_string()),
    }
}

/// Probes `target` from the calling thread's namespace, giving up after `timeout`.
pub fn probe(target: Target, timeout: Duration) -> Result<Answer, Failure> {
    match target.protocol {
        Protocol::Tcp => probe_tcp(target, timeout),
        Protocol::Udp => probe_udp(target, timeout),
        Protocol::Sctp => Err(Failure::Other(
            "the lab probes TCP and UDP only, not SCTP".into(),
        )),
    }
}

fn read_answer(text: &[u8]) -> Result<Answer, Failure> {
    let text = String::from_utf8_lossy(text);
    Answer::parse(&text).ok_or_else(|| Failure::Other(format!("not an answer: {text:?}")))
}

fn probe_tcp(target: Target, timeout: Duration) -> Result<Answer, Failure> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::new(target.ip, target.port);
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| failure(&e))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| failure(&e))?;
    let mut text = Vec::new();
    // The server writes one line and closes; more than this is not our server.
    stream
        .take(512)
        .read_to_end(&mut text)
        .map_err(|e| failure(&e))?;
    read_answer(&text)
}

fn probe_udp(target: Target, timeout: Duration) -> Result<Answer, Failure> {
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = match target.ip {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(|e| failure(&e))?;
    // Connected, so an ICMP port unreachable comes back as ECONNREFUSED.
    socket
        .connect((target.ip, target.port))
        .map_err(|e| failure(&e))?;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        socket.send(b"probe\n").map_err(|e| failure(&e))?;
        socket
            .set_read_timeout(Some(left.min(UDP_RESEND)))
            .map_err(|e| failure(&e))?;
        match socket.recv(&mut buf) {
            Ok(n) => return read_answer(&buf[..n]),
            Err(e) => match failure(&e) {
                Failure::Timeout => continue,
                other => return Err(other),
            },
        }
    }
}

/// Probes `target` from inside namespace `netns`.
pub fn probe_from(netns: &str, target: Target, timeout: Duration) -> Result<Answer, Failure> {
    crate::kube_netns::in_netns(netns, || probe(target, timeout))
        .unwrap_or_else(|e| Err(Failure::Other(format!("entering {netns}: {e}"))))
}

/// Runs every `(namespace, target)` probe at once, one thread each; the results come back
/// in the same order. The whole batch takes about one `timeout`.
pub fn probe_all(probes: &[(String, Target)], timeout: Duration) -> Vec<Result<Answer, Failure>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = probes
            .iter()
            .map(|(netns, target)| scope.spawn(move || probe_from(netns, *target, timeout)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Failure::Other("the probe's thread panicked".into())))
            })
            .collect()
    })
}

/// A pod the lab added: its namespace and first address.
fn located(lab: &Lab, pod: &PodRef) -> Result<(String, IpAddr), PodError> {
    let record = pod::load(lab, pod)?
        .ok_or_else(|| PodError::Invalid(format!("pod {pod}: not a pod the lab added")))?;
    let ip = *record
        .ips
        .first()
        .ok_or_else(|| PodError::Invalid(format!("pod {pod} has no address")))?;
    Ok((lab.pod_netns(&pod.namespace, &pod.name), ip))
}

/// Probes pod `to`'s address on `port`/`protocol` from inside pod `from`. An answer from
/// another server than `to`'s is returned as it is; [`Probed`] judges identities.
pub fn probe_pod(
    lab: &Lab,
    from: &PodRef,
    to: &PodRef,
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Result<Answer, Failure>, PodError> {
    let (netns, _) = located(lab, from)?;
    let (_, ip) = located(lab, to)?;
    Ok(probe_from(&netns, Target { ip, port, protocol }, timeout))
}

/// Probes every pod of `pods` from every pod of `pods` (itself included) on
/// `port`/`protocol`, all at once.
pub fn probe_matrix(
    lab: &Lab,
    pods: &[PodRef],
    port: u16,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Probed, PodError> {
    let located: Vec<(String, IpAddr)> = pods
        .iter()
        .map(|p| located(lab, p))
        .collect::<Result<_, _>>()?;
    let probes: Vec<(String, Target)> = located
        .iter()
        .flat_map(|(netns, _)| {
            located.iter().map(move |(_, ip)| {
                (
                    netns.clone(),
                    Target {
                        ip: *ip,
                        port,
                        protocol,
                    },
                )
            })
        })
        .collect();
    let results = probe_all(&probes, timeout);
    Ok(Probed::new(
        pods.iter().map(ToString::to_string).collect(),
        results,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::serve::{self, Listener};

    #[test]
    fn targets_parse() {
        let t: Target = "10.244.0.5:80".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.port, t.protocol), (80, Protocol::Tcp));
        assert_eq!(t.to_string(), "10.244.0.5:80/tcp");
        let u: Target = "[fd00::5]:53/udp".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((u.port, u.protocol), (53, Protocol::Udp));
        assert_eq!(u.to_string(), "[fd00::5]:53/udp");
        assert!("10.244.0.5".parse::<Target>().is_err());
        assert!("10.244.0.5:80/icmp".parse::<Target>().is_err());
    }

    /// No root needed: probes on loopback get answers, refusals and timeouts.
    #[test]
    fn probes_answer_refuse_and_time_out() {
        let sockets: Vec<serve::Bound> = [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .map(|protocol| serve::bind(Listener { protocol, port: 0 }))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{e}"));
        let port = |i: usize| match &sockets[i] {
            serve::Bound::Tcp(l) => l.local_addr().map(|a| a.port()).unwrap_or_default(),
            serve::Bound::Udp(s) => s.local_addr().map(|a| a.port()).unwrap_or_default(),
        };
        let (tcp, udp) = (port(0), port(1));
        std::thread::spawn(move || serve::run("t/p", sockets));
        let lo: IpAddr = "127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let second = Duration::from_secs(2);
        for (port, protocol) in [(tcp, Protocol::Tcp), (udp, Protocol::Udp)] {
            let a = probe(
                Target {
                    ip: lo,
                    port,
                    protocol,
                },
                second,
            )
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
            assert_eq!((a.identity.as_str(), a.seen_source), ("t/p", lo));
        }
        // A port just freed: nothing listens there.
        let closed = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let r = probe(
                Target {
                    ip: lo,
                    port: closed,
                    protocol,
                },
                second,
            );
            assert_eq!(r, Err(Failure::Refused), "{protocol}");
        }
        // A namespace that does not exist, and a protocol the lab does not probe: every
        // probe says why, none panics, and the batch does not wait.
        let start = Instant::now();
        let nowhere = "tortie-lab-test-no-such-netns".to_string();
        let results = probe_all(
            &[
                (
                    nowhere.clone(),
                    Target {
                        ip: lo,
                        port: tcp,
                        protocol: Protocol::Tcp,
                    },
                ),
                (
                    nowhere,
                    Target {
                        ip: lo,
                        port: 0,
                        protocol: Protocol::Sctp,
                    },
                ),
            ],
            Duration::from_millis(300),
        );
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| matches!(r, Err(Failure::Other(_)))));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
