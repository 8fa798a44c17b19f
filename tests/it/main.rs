//! ferry's integration tests: one binary (as ripgrep does), so the
//! support code compiles and links once. Every test runs against real
//! components on 127.0.0.1 that the tests or `scripts/test` start (see
//! `support/`); only GitHub.com is a fake.

mod support;

mod admin;
mod airflow;
mod airflow_db;
mod airflow_versions;
mod aws;
mod cli;
mod deploy;
mod faults;
mod field_ownership;
mod git_sources;
mod github;
mod helm;
mod jupyterhub;
mod kube_agent;
mod kube_apply;
mod kube_health;
mod kube_plan;
mod kustomize;
mod mlflow_server;
mod monitoring;
mod notify;
mod pages;
mod promotion;
mod publish;
mod secrets;
mod signatures;
mod standup;
mod templates;
mod terraform;
mod webhook;
