//! Traffic between pods, for policy and NAT scenarios: [`serve`] runs servers that answer
//! every TCP connection and UDP datagram with who they are and whom they saw, [`probe`]
//! connects to them from inside a namespace (many probes at once, in parallel), and
//! [`matrix`] keeps truth tables of who reaches whom and prints expected against observed.

pub mod matrix;
pub mod probe;
pub mod serve;

use std::net::IpAddr;

/// A server's answer: its identity (`namespace/name` for a pod) and the source address the
/// connection or datagram came from, as the server saw it (after any NAT on the way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub identity: String,
    pub seen_source: IpAddr,
}

impl Answer {
    /// The line a server sends: `<identity> <source address>\n`.
    pub fn line(&self) -> String {
        format!("{} {}\n", self.identity, self.seen_source)
    }

    /// Reads a server's line back; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Answer> {
        let mut words = text.split_whitespace();
        let identity = words.next()?.to_owned();
        let seen_source = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Answer {
            identity,
            seen_source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let a = Answer {
            identity: "x/a".into(),
            seen_source: "10.244.1.7".parse().unwrap_or_else(|e| panic!("{e}")),
        };
        assert_eq!(a.line(), "x/a 10.244.1.7\n");
        assert_eq!(Answer::parse(&a.line()), Some(a));
        assert_eq!(Answer::parse("x/a"), None);
        assert_eq!(Answer::parse("x/a not-an-ip"), None);
        assert_eq!(Answer::parse("x/a 10.0.0.1 extra"), None);
    }
}
