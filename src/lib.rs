//! ferry: a GitOps agent for a self-hosted ML platform.
//!
//! Data flows one way: `source` (git mirrors) -> `revision` (the narrow
//! artifact) -> `desired` (the gate: a commit read once, rejected whole) ->
//! `targets` (one face: plan, then apply that plan, for `dags`,
//! `kubernetes` and `aws`) -> `verdict` (typed reasons, one policy) ->
//! `report` (GitHub), `status` and `metrics`; driven by `agent`, served by
//! `server`; `preview` is plan without apply. See `docs/architecture.md`.

pub mod admin;
pub mod agent;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod build;
pub mod config;
pub mod daemon;
pub mod dags;
pub mod desired;
pub mod disk;
pub mod http;
pub mod kubernetes;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod oneshot;
pub mod pages;
pub mod preview;
pub mod problem;
pub mod quickstart;
pub mod report;
pub mod revision;
pub mod secret;
pub mod server;
pub mod signature;
pub mod source;
pub mod status;
pub mod suspend;
pub mod targets;
pub mod trigger;
pub mod verdict;
pub mod webhook;
pub mod yaml;
