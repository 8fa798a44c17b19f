//! The Kubernetes effector: plan the platform repo's manifests against the
//! cluster (server-side dry runs) and apply that plan with server-side
//! apply, field manager `ferry`, inventory and guarded prune, health.
//! Named `kubernetes` so it never shadows the `kube` crate.

pub mod apply;
pub mod client;
pub mod diff;
pub mod discovery;
pub mod evidence;
pub mod health;
mod hooks;
pub mod ignore;
pub mod inventory;
pub mod last_applied;
pub mod ownership;
pub mod plan;
pub mod secret_values;
pub mod target;
