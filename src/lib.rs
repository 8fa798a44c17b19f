//! ferry: a GitOps agent for a self-hosted ML platform.
//!
//! Data flows one way: `source` (git mirrors) -> `dags` (validate and
//! publish one commit) -> `status`/`metrics` (report), driven by `agent` and
//! served by `server`. See `../shared/design.md` for the agreed shape.

pub mod agent;
pub mod config;
pub mod dags;
pub mod desired;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod quickstart;
pub mod secret;
pub mod server;
pub mod source;
pub mod status;
pub mod webhook;
