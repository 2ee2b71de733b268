//! Shared harness for the agent's root tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apiserver;
pub mod netns;
