//! Servers inside a namespace: `tortie-lab serve` binds TCP and UDP ports on every address
//! of its namespace and answers each TCP connection and each UDP datagram with one
//! [`Answer`] line, until it is killed. It says `ready` on stdout once every socket is bound,
//! so whoever starts it ([`spawn`]) knows that a probe from then on finds it listening.
//!
//! A server started in a pod's namespace dies with the pod: `pod del` and `down` kill every
//! process inside a lab namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::Answer;
use crate::Error;
use crate::lab::{Lab, MEMBER_ENV};
use crate::pod::Protocol;

/// The first line `serve` prints once all its sockets are bound.
pub const READY: &str = "ready";

/// How long [`spawn`] waits for the server's `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One port to serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub protocol: Protocol,
    pub port: u16,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// A bound socket, ready to serve.
#[derive(Debug)]
pub enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds `listener` on every address of the calling thread's namespace: `[::]`, which also
/// takes IPv4 (Linux's default `bindv6only=0`), or `0.0.0.0` where IPv6 is not available.
pub fn bind(listener: Listener) -> Result<Bound, Error> {
    let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), listener.port);
    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), listener.port);
    let what = || format!("binding {listener}");
    match listener.protocol {
        Protocol::Tcp => TcpListener::bind(any6)
            .or_else(|_| TcpListener::bind(any4))
            .map(Bound::Tcp)
            .map_err(Error::io(what())),
        Protocol::Udp => UdpSocket::bind(any6)
            .or_else(|_| UdpSocket::bind(any4))
            .map(Bound::Udp)
            .map_err(Error::io(what())),
        Protocol::Sctp => Err(Error::Invalid(format!(
            "{listener}: the lab's server speaks TCP and UDP only"
        ))),
    }
}

/// Serves every bound socket, one thread each, answering as `identity`, until the process
/// is killed: an error on a socket is reported on stderr and serving goes on.
pub fn run(identity: &str, sockets: Vec<Bound>) {
    std::thread::scope(|scope| {
        for socket in sockets {
            scope.spawn(move || match socket {
                Bound::Tcp(l) => serve_tcp(identity, &l),
                Bound::Udp(s) => serve_udp(identity, &s),
            });
        }
    });
}

fn answer(identity: &str, peer: SocketAddr) -> String {
    Answer {
        identity: identity.to_owned(),
        // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        seen_source: peer.ip().to_canonical(),
    }
    .line()
}

fn serve_tcp(identity: &str, listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                // A few bytes into a fresh socket's buffer: the write never waits for the
                // peer; the timeout only guards against the impossible.
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                if let Err(e) = stream.write_all(answer(identity, peer).as_bytes()) {
                    eprintln!("serve: answering {peer} over tcp: {e}");
                }
            }
            // Out of descriptors and the like: say so and keep serving.
            Err(e) => {
                eprintln!("serve: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_udp(identity: &str, socket: &UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(e) = socket.send_to(answer(identity, peer).as_bytes(), peer) {
                    eprintln!("serve: answering {peer} over udp: {e}");
                }
            }
            Err(e) => {
                eprintln!("serve: recv: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Starts `tortie-lab serve` inside `netns`, answering as `identity` on `listeners`, and
/// returns its pid once it is listening. It runs detached (own process group, marked as a
/// member of `lab`, errors appended to `log`) until killed.
pub fn spawn(
    lab: &Lab,
    netns: &str,
    identity: &str,
    listeners: &[Listener],
    log: &Path,
) -> Result<u32, Error> {
    let program =
        crate::agents::sibling_binary("tortie-lab", "TORTIE_LAB_BIN").ok_or_else(|| {
            Error::Invalid(
                "tortie-lab is not built next to this program (cargo build -p tortie-lab), \
             and TORTIE_LAB_BIN is not set"
                    .into(),
            )
        })?;
    if let Some(parent) = log.parent() {
        crate::mkdir(parent)?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io(format!("opening {}", log.display())))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(&program)
        .args(["serve", "--identity", identity]);
    for l in listeners {
        let flag = match l.protocol {
            Protocol::Tcp => "--tcp",
            Protocol::Udp => "--udp",
            Protocol::Sctp => {
                return Err(Error::Invalid(format!(
                    "{l}: the lab's server speaks TCP and UDP only"
                )));
            }
        };
        cmd.arg(flag).arg(l.port.to_string());
    }
    cmd.env(MEMBER_ENV, lab.state_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .process_group(0);
    let mut child = cmd.spawn().map_err(Error::io(format!(
        "starting {} in {netns}",
        program.display()
    )))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
    if line.trim() == READY {
        // Reaps it when it is killed, so that it leaves no zombie behind in a long-lived
        // caller (a test that adds and deletes many pods).
        std::thread::spawn(move || child.wait());
        return Ok(pid);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(Error::Command(format!(
        "serve in {netns} did not get ready: {}",
        crate::process::log_tail(log, 5)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;

    /// No root needed: a server on loopback answers TCP and UDP with its identity and our
    /// address.
    #[test]
    fn answers_tcp_and_udp_with_identity_and_source() {
        let tcp = bind(Listener {
            protocol: Protocol::Tcp,
            port: 0,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let udp = bind(Listener {
            protocol: Protocol::Udp,
            port: 0,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let (tcp_port, udp_port) = match (&tcp, &udp) {
            (Bound::Tcp(t), Bound::Udp(u)) => (
                t.local_addr().map(|a| a.port()).unwrap_or_default(),
                u.local_addr().map(|a| a.port()).unwrap_or_default(),
            ),
            _ => panic!("wrong socket kinds"),
        };
        std::thread::spawn(move || run("t/srv", vec![tcp, udp]));

        let mut stream =
            TcpStream::connect(("127.0.0.1", tcp_port)).unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, "t/srv 127.0.0.1\n");

        let client = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .send_to(b"probe", ("127.0.0.1", udp_port))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 100];
        let n = client.recv(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&buf[..n], b"t/srv 127.0.0.1\n");
    }

    #[test]
    fn sctp_is_refused() {
        assert!(
            bind(Listener {
                protocol: Protocol::Sctp,
                port: 80
            })
            .is_err()
        );
    }
}
