//! Start-up steps that talk to the apiserver wait for it, as calico-node does: an outage, a
//! restart or a slow answer is retried with capped exponential back-off and jitter, and the
//! step carries on by itself once the apiserver answers. Only an answer that no retry can
//! change (403 Forbidden, an object the apiserver will not take, a malformed object of
//! ours) stops the agent, with that error.
//!
//! Meanwhile the agent has not bound its socket, so the CNI plugin gets "agent
//! unreachable" (CNI code 11, try again later): that is its not-ready.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;
use tortie_ipam::{IpamError, StoreError};

/// The first wait after a failure.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// One attempt that gets no answer in this long counts as a failure (a stopped apiserver,
/// a dropped connection nobody reset) and is tried again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether an error may go away by itself (the apiserver restarting, a network blip), so
/// that the step is worth trying again.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for kube::Error {
    fn is_transient(&self) -> bool {
        match self {
            // 404 too: a restarted apiserver serves the CRDs' resources a moment after the
            // built-in ones, and a Node may be re-registered.
            kube::Error::Api(s) => s.code >= 500 || matches!(s.code, 404 | 408 | 409 | 429),
            // Connection refused or reset, timeouts, TLS handshakes cut short.
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                true
            }
            // Reading a rotated service-account token, or an exec plugin's own outage.
            kube::Error::Auth(_) => true,
            _ => false,
        }
    }
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        match self {
            // `NotFound` on a list: the CRDs are not served (yet). A person may have to
            // install them, and the agent carries on once they do.
            StoreError::Backend(_) | StoreError::NotFound { .. } | StoreError::Conflict { .. } => {
                true
            }
            StoreError::AlreadyExists { .. }
            | StoreError::Malformed { .. }
            | StoreError::Refused { .. } => false,
        }
    }
}

impl Transient for IpamError {
    fn is_transient(&self) -> bool {
        match self {
            IpamError::Store(e) => e.is_transient(),
            IpamError::Contention { .. } => true,
            IpamError::NoPool { .. } | IpamError::Exhausted { .. } => false,
        }
    }
}

/// Capped exponential back-off with jitter: each wait doubles up to the cap, and is then
/// cut by up to a quarter at random, so that agents restarted together by one apiserver
/// outage do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    /// xorshift64 state; never zero.
    seed: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration, seed: u64) -> Backoff {
        // Mixed, so that nearby seeds give unrelated sequences; zero is xorshift's fixed
        // point.
        let mixed = (seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Backoff {
            next: first.min(max),
            max,
            seed: mixed.max(1),
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        // A factor in [0.75, 1.0).
        let factor = 0.75 + 0.25 * ((x >> 11) as f64 / (1u64 << 53) as f64);
        base.mul_f64(factor)
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(FIRST_DELAY, MAX_DELAY, random_seed())
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS: enough to spread agents apart.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs `attempt` until it succeeds or fails for good. Transient failures and attempts that
/// time out are retried with [`Backoff`]; the first is logged as a warning that names the
/// step and why it waits, the rest at debug level, and the success after a wait is logged
/// too. A permanent failure is returned as it is.
pub async fn until_done<T, E>(
    step: &str,
    attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E>
where
    E: Transient + Display,
{
    until_done_with(step, Backoff::default(), ATTEMPT_TIMEOUT, attempt).await
}

/// [`until_done`] with a given back-off and attempt timeout (tests use short ones).
pub async fn until_done_with<T, E>(
    step: &str,
    mut backoff: Backoff,
    attempt_timeout: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E>
where
    E: Transient + Display,
{
    let start = Instant::now();
    let mut failures: u32 = 0;
    loop {
        let why = match tokio::time::timeout(attempt_timeout, attempt()).await {
            Ok(Ok(done)) => {
                if failures > 0 {
                    tracing::info!(
                        step,
                        attempts = failures + 1,
                        waited = ?start.elapsed(),
                        "{step}: done after waiting"
                    );
                }
                return Ok(done);
            }
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {attempt_timeout:?}"),
        };
        failures += 1;
        let delay = backoff.next_delay();
        if failures == 1 {
            tracing::warn!(step, reason = %why, "{step}: waiting (not ready); retrying with back-off until it succeeds");
        } else {
            tracing::debug!(step, reason = %why, attempt = failures, next_in = ?delay, "{step}: still waiting");
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum Fake {
        Transient,
        Permanent,
    }

    impl Display for Fake {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Transient for Fake {
        fn is_transient(&self) -> bool {
            matches!(self, Fake::Transient)
        }
    }

    fn quick() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(4), 7)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn delays_double_up_to_the_cap_and_are_jittered_down_by_at_most_a_quarter() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(8), 42);
        let bases = [250u64, 500, 1000, 2000, 4000, 8000, 8000, 8000];
        let mut seen = std::collections::BTreeSet::new();
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(d <= base && d >= base.mul_f64(0.75), "{d:?} for {base:?}");
            seen.insert(d);
        }
        // Three waits at the cap, all different: jitter, not lockstep.
        assert_eq!(seen.len(), bases.len());
        // Two agents seeded differently wait differently.
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1);
        let mut c = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 2);
        assert_ne!(a.next_delay(), c.next_delay());
    }

    #[test]
    fn transient_failures_are_retried_until_success() {
        let mut calls = 0;
        let got = rt().block_on(until_done_with(
            "test step",
            quick(),
            Duration::from_secs(5),
            async || {
                calls += 1;
                if calls < 4 {
                    Err(Fake::Transient)
                } else {
                    Ok(calls)
                }
            },
        ));
        assert_eq!(got.unwrap(), 4);
    }

    #[test]
    fn a_permanent_failure_stops_at_once() {
        let mut calls = 0;
        let got: Result<(), Fake> = rt().block_on(until_done_with(
            "test step",
            quick(),
            Duration::from_secs(5),
            async || {
                calls += 1;
                if calls < 2 {
                    Err(Fake::Transient)
                } else {
                    Err(Fake::Permanent)
                }
            },
        ));
        assert!(matches!(got, Err(Fake::Permanent)));
        assert_eq!(calls, 2);
    }

    #[test]
    fn an_attempt_without_an_answer_is_abandoned_and_retried() {
        let mut calls = 0;
        let got: Result<u32, Fake> = rt().block_on(until_done_with(
            "test step",
            quick(),
            Duration::from_millis(20),
            async || {
                calls += 1;
                if calls == 1 {
                    std::future::pending::<()>().await;
                }
                Ok(calls)
            },
        ));
        assert_eq!(got.unwrap(), 2);
    }

    #[test]
    fn which_apiserver_answers_are_worth_waiting_for() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            }))
        };
        for code in [500, 502, 503, 504, 404, 408, 409, 429] {
            assert!(api(code).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 405, 410, 422] {
            assert!(!api(code).is_transient(), "{code}");
        }
        assert!(StoreError::Backend("connect".into()).is_transient());
        assert!(
            !StoreError::Refused {
                kind: tortie_ipam::Kind::Pool,
                name: "*".into(),
                reason: "forbidden".into()
            }
            .is_transient()
        );
        assert!(
            !StoreError::Malformed {
                kind: tortie_ipam::Kind::Block,
                name: "10-0-0-0-26".into(),
                reason: "bad record".into()
            }
            .is_transient()
        );
    }
}
