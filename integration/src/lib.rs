//! tortie-lab: a whole cluster on one machine, and the harness for end-to-end, interop and
//! bench scenarios.

/// Network namespaces owned by a test or the lab.
pub mod netns;
/// Real BGP routers (BIRD, FRR, GoBGP, ExaBGP) as peers in namespaces, for interop tests.
pub mod routers;
