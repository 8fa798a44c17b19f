//! `ferry run` assembled: leader election, GitHub reporting, the agent,
//! the webhook receiver and the HTTP server, started in that order and
//! stopped cleanly on a signal.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::agent::Agent;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{self, AppState};
use crate::status::StatusStore;

/// Turns true at the first SIGTERM or Ctrl-C; a second one exits at once.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight work (signal again to exit now)");
        let _ = tx.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now; published revisions stay consistent");
        std::process::exit(130);
    });
    rx
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `ferry run`: wait for the leader Lease if asked, then serve HTTP, sync
/// every source and report until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let status = StatusStore::default();
    let metrics = Metrics::new();
    let shutdown = shutdown_signal();
    // Leadership before anything touches the DAGs volume, the cluster or
    // GitHub: even opening the DAGs target cleans up staging directories.
    let site = Arc::new(crate::pages::Site::from_config(&config));
    let listener = server::Listener::bind(config.server.listen, "server.listen").await?;
    let holding = match &config.leader_election {
        Some(leader) => {
            match stand_by(leader, &listener, &status, &metrics, &site, &shutdown).await? {
                Some(holding) => Some(holding),
                None => return Ok(()),
            }
        }
        None => None,
    };
    let reporter = match &config.github {
        Some(github) => crate::report::Reporter::open(
            github,
            &config.cache_dir,
            config.server.listen,
            metrics.clone(),
        )
        .context("cannot start reporting to GitHub")?,
        None => None,
    };
    if reporter.is_some() {
        tracing::info!("reporting to GitHub: commit statuses, deployments, PR previews");
    }
    if let Some(kube) = &config.targets.kubernetes {
        for (ok, line) in crate::desired::tools::check(&kube.helm.binary, &kube.kustomize.binary) {
            if ok {
                tracing::info!("rendering with {line}");
            } else {
                tracing::warn!("{line}");
            }
        }
    }
    let mut agent = Agent::new(&config, status.clone(), metrics.clone(), reporter.clone())?;
    // Where messages link to: as GitHub statuses do, else the address ferry
    // serves on when that is one people can reach.
    let external_url = config
        .github
        .as_ref()
        .and_then(|g| g.external_url.clone())
        .or_else(|| {
            (!config.server.listen.ip().is_unspecified())
                .then(|| format!("http://{}", config.server.listen))
        });
    if let Some(notifier) = crate::notify::Notifier::open(
        &config.notifications,
        &config.cache_dir,
        external_url.as_deref(),
        metrics.clone(),
    )
    .context("cannot start notifications")?
    {
        tracing::info!(receivers = config.notifications.len(), "notifying people");
        if let Some(leader) = &config.leader_election {
            notifier.notify(crate::notify::Event::new(
                crate::notify::EventKind::LeaderAcquired,
                None,
                None,
                &format!(
                    "{} holds the leader Lease {} and syncs now",
                    crate::leader::identity_of(leader),
                    leader.lease_name
                ),
            ));
        }
        agent.set_notifier(notifier);
    }
    let webhook = webhook_receiver(&config, &agent)?;
    let sources = config.sources.len();
    serve_and_run(
        agent,
        reporter,
        &config,
        webhook,
        listener,
        shutdown,
        |addr| {
            tracing::info!(%addr, sources, "ferry running");
        },
    )
    .await?;
    if let Some(holding) = holding {
        let _ = holding.release.send(());
        let _ = holding.task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A held leader Lease: renewed by `task` until `release` fires.
struct Holding {
    release: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves health, readiness (503 with the holder's name) and metrics until
/// this process holds the leader Lease; None when a signal came first. A
/// lost Lease ends the process (exit 1) so nothing syncs without it.
async fn stand_by(
    config: &crate::config::LeaderElectionConfig,
    listener: &server::Listener,
    status: &StatusStore,
    metrics: &Arc<Metrics>,
    site: &Arc<crate::pages::Site>,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Holding>> {
    let mut elector = crate::leader::Elector::new(config).await?;
    let lease = elector.lease().to_string();
    status.set_standby(Some(format!("standing by for the leader Lease {lease}")));
    let (stop_server, server_stop) = watch::channel(false);
    let state = AppState {
        status: status.clone(),
        metrics: metrics.clone(),
        webhook: None,
        site: site.clone(),
    };
    let (addr, server) = server::serve(listener, state, server_stop)?;
    tracing::info!(%addr, identity = elector.identity(), lease = %lease, "standing by for the leader Lease");
    let acquired = elector
        .acquire(&mut shutdown.clone(), |holder| {
            status.set_standby(Some(format!(
                "standing by: the leader Lease {lease} is held by {holder}"
            )))
        })
        .await;
    let _ = stop_server.send(true);
    let _ = server.await;
    status.set_standby(None);
    if !acquired {
        tracing::info!("stopped while standing by");
        return Ok(None);
    }
    tracing::info!(identity = elector.identity(), lease = %lease, "holding the leader Lease");
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        if let crate::leader::Ended::Lost(why) = elector.hold(release_rx).await {
            tracing::error!(reason = %why, "lost the leader Lease; exiting so that nothing syncs without it");
            std::process::exit(1);
        }
    });
    Ok(Some(Holding { release, task }))
}

/// Serves HTTP on `listener` (bound by the caller, see
/// [`server::Listener`]) and runs the agent until SIGTERM or Ctrl-C;
/// `listening` is told the bound address first.
pub async fn serve_and_run(
    agent: Agent,
    reporter: Option<crate::report::Reporter>,
    config: &Config,
    webhook: Option<Arc<crate::webhook::Receiver>>,
    listener: server::Listener,
    shutdown: watch::Receiver<bool>,
    listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    agent.metrics().leader.set(1);
    let state = AppState {
        status: agent.status(),
        metrics: agent.metrics(),
        webhook,
        site: Arc::new(crate::pages::Site::from_config(config)),
    };
    let (addr, server) = server::serve(&listener, state, shutdown.clone())?;
    let admin_server = match &config.server.admin {
        Some(admin) => {
            let state = crate::admin::AdminState {
                status: agent.status(),
                metrics: agent.metrics(),
                suspensions: agent.suspensions(),
                triggers: agent.triggers(),
                token_file: admin.token_file.clone(),
            };
            let (addr, handle) = crate::admin::serve(admin.listen, state, shutdown.clone()).await?;
            tracing::info!(%addr, "admin endpoint (ferry status, sync, suspend, resume)");
            Some(handle)
        }
        None => None,
    };
    listening(addr);
    let reporting = reporter.map(|r| tokio::spawn(r.run(shutdown.clone())));
    agent.run(shutdown).await;
    let _ = server.await;
    if let Some(admin_server) = admin_server {
        let _ = admin_server.await;
    }
    if let Some(reporting) = reporting {
        let _ = reporting.await;
    }
    Ok(())
}

/// The webhook receiver, when configured: one route per source that has a
/// GitHub repository. (`Config::load` has checked the secret file.)
fn webhook_receiver(
    config: &Config,
    agent: &Agent,
) -> anyhow::Result<Option<Arc<crate::webhook::Receiver>>> {
    let Some(secret_file) = config
        .github
        .as_ref()
        .and_then(|g| g.webhook_secret_file.clone())
    else {
        return Ok(None);
    };
    let previews = config.github.as_ref().is_some_and(|g| g.previews);
    let mut handles = agent.handles(previews);
    let routes: Vec<crate::webhook::Route> = config
        .sources
        .iter()
        .filter_map(|s| {
            let at = handles.iter().position(|h| h.name == s.name)?;
            let handle = handles.swap_remove(at);
            Some(crate::webhook::Route {
                repo: s.github_repo()?,
                branch: s.branch.clone(),
                source: s.name.clone(),
                trigger: handle.trigger,
                previews: handle.previews,
            })
        })
        .collect();
    if routes.is_empty() {
        tracing::warn!(
            "webhooks enabled, but no source has a GitHub repository (set sources[].github_repo)"
        );
    }
    Ok(Some(crate::webhook::Receiver::new(
        secret_file,
        routes,
        agent.metrics().webhooks.clone(),
    )))
}
