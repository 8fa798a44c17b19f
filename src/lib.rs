//! ferry: a GitOps agent for a self-hosted ML platform.
//!
//! Data flows one way: `source` (git mirrors) -> `desired`/`dags` (what a
//! commit declares) -> `kubernetes`/`dags` (plan and apply) -> `report`
//! (GitHub), `status` and `metrics`, driven by `agent` and served by
//! `server`; `preview` runs the plan half on pull requests. See `../shared/design.md` for the agreed shape.

pub mod agent;
#[cfg(feature = "aws")]
pub mod aws;
pub mod build;
pub mod config;
pub mod dags;
pub mod desired;
pub mod disk;
pub mod kubernetes;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod preview;
pub mod quickstart;
pub mod report;
pub mod secret;
pub mod server;
pub mod source;
pub mod status;
pub mod webhook;
pub mod yaml;
