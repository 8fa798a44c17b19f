//! Desired state: one commit of the platform repo, read into typed values.
//! Pure: reads git objects, talks to nothing.

pub mod manifests;
pub mod platform;
pub mod resolve;
