//! Reporting to GitHub: commit statuses, deployments and the one preview
//! comment per pull request (design: the `report` stage).
//!
//! `reporter` queues and delivers, `ledger` remembers across restarts,
//! `client` makes one classified REST call, `comment` renders previews.

pub mod client;
pub mod comment;
pub mod ledger;
pub mod reporter;

pub use ledger::State;
pub use reporter::{Reporter, Subject};
