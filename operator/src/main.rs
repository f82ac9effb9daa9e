//! `tether-operator`: connects to the API server, serves metrics and health, waits to lead
//! (leader election on a Lease, see `leader.rs`), runs the controllers until SIGTERM or Ctrl-C,
//! then shuts down gracefully and releases the Lease. Losing leadership exits non-zero.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser;
use kube::runtime::events::{Recorder, Reporter};
use tether_operator::controllers::Context;
use tether_operator::controllers::remote_session::{self, Scope};
use tether_operator::controllers::{
    assistance_request, device_inventory, enrollment, relay, retention, session_schedule, signers,
};
use tether_operator::credentials::Credentials;
use tether_operator::credentials::ca::unix_now;
use tether_operator::leader::{ElectionError, Elector, Role};
use tether_operator::metrics::{Metrics, SessionPhases};
use tether_operator::settings::{Args, Settings};
use tether_telemetry::Health;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = tether_telemetry::init_logging(&args.logging) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn client(args: &Args) -> Result<kube::Client> {
    let config =
        tether_telemetry::kubeconfig::load(args.kubeconfig.as_deref(), args.context.as_deref())
            .await?;
    kube::Client::try_from(config).context("failed to create the Kubernetes client")
}

async fn run(args: Args) -> Result<()> {
    let started_at = jiff::Timestamp::now();
    let shutdown = CancellationToken::new();
    let client = client(&args).await?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).context("failed to register metrics")?;
    let health = Health::new();

    let settings = Settings::from(&args);
    settings.recording.validate()?;
    match settings.recording.location() {
        Some(store) => info!(
            %store,
            credentials_secret = settings.recording.credentials_secret.as_deref().unwrap_or(""),
            retention = %tether_crds::duration::format_go(settings.recording.retention),
            "Configured session recording"
        ),
        None => info!("Session recording is not configured"),
    }
    // Health and metrics are served from the start, also while this process stands by.
    let http_shutdown = CancellationToken::new();
    let (addr, http) = tether_telemetry::serve(
        args.metrics_addr,
        registry.clone(),
        health.clone(),
        http_shutdown.clone(),
    )
    .await
    .with_context(|| format!("failed to listen on {}", args.metrics_addr))?;
    info!(%addr, "Serving metrics and health");

    let mut signal = std::pin::pin!(tether_telemetry::shutdown_signal());
    let election_stop = CancellationToken::new();
    let mut election = match args.election(std::env::var("POD_NAME").ok()) {
        Some(election) => {
            election.validate()?;
            let (role, roles) = watch::channel(Role::Unknown);
            let task = tokio::spawn(
                Elector::new(client.clone(), election).run(role, election_stop.clone()),
            );
            let mut election = Election { task, roles };
            // Stand by until this process leads. A standby is ready: see "Several operator
            // replicas" in docs/operations/install.md for why.
            let stopped = tokio::select! {
                result = &mut signal => Some(result),
                result = election.leading(&health) => { result?; None }
            };
            if let Some(result) = stopped {
                result?;
                info!("Shutting down");
                election_stop.cancel();
                election.ended().await?;
                return stop_http(http_shutdown, http).await;
            }
            Some(election)
        }
        None => {
            info!("Leader election is off; running the controllers");
            None
        }
    };
    health.set_ready(false);
    let leader_gauge = metrics.leader.clone();
    leader_gauge.set(1);

    let credentials = Arc::new(
        Credentials::load_or_create(
            client.clone(),
            &args.namespace,
            settings.credentials.clone(),
            unix_now(),
        )
        .await
        .context("failed to load the credential authority")?,
    );
    let scope = match &args.watch_namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::Cluster,
    };
    let (policies, policy_changes, request_policy_changes) =
        tether_operator::controllers::policies::watch(client.clone(), &scope, &args.namespace);
    let built = {
        let health = health.clone();
        remote_session::build(client.clone(), &scope, policy_changes, move || {
            if !health.is_ready() {
                info!("Synced RemoteSession cache; ready");
            }
            health.set_ready(true);
        })
    };
    let controller = built.controller;
    let store = controller.store();
    registry
        .register(Box::new(SessionPhases::new(store.clone())?))
        .context("failed to register the sessions gauge")?;

    let notifications = tether_operator::notify::notifier(
        args.email(),
        args.webhook(),
        client.clone(),
        metrics.notifications.clone(),
    )
    .context("failed to set up notifications")?;
    let (notifier, notify_worker) = match notifications {
        Some((n, w)) => (Some(n), Some(w)),
        None => (None, None),
    };
    let requests = assistance_request::build(client.clone(), &scope, request_policy_changes);
    let schedules = session_schedule::build(client.clone(), &scope);

    let settings_recording = settings.recording.clone();
    let client_for_probe = client.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "tether-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client,
        metrics,
        settings,
        credentials: credentials.clone(),
        devices: built.devices,
        sessions: store.clone(),
        sessions_synced: built.sessions_synced,
        policies,
        notifier,
        recording_store: tether_operator::recordings::StoreProbe::new(
            settings_recording,
            client_for_probe,
            args.namespace.clone(),
        ),
        started_at,
    });

    // Every task stops on shutdown, also one whose watch keeps failing (see until_shutdown).
    let mut tasks = tokio::task::JoinSet::new();
    let grace = tether_operator::controllers::SHUTDOWN_GRACE;
    let mut spawn = |name: &'static str, task: futures::future::BoxFuture<'static, ()>| {
        tasks.spawn(tether_operator::controllers::until_shutdown(
            name,
            task,
            shutdown.clone(),
            grace,
        ));
    };
    spawn(
        "remotesession",
        Box::pin(remote_session::run(
            controller,
            ctx.clone(),
            shutdown.clone().cancelled_owned(),
        )),
    );
    spawn(
        "sessionschedule",
        Box::pin(session_schedule::run(
            schedules,
            ctx.clone(),
            shutdown.clone().cancelled_owned(),
        )),
    );
    let ctx_for_tasks = ctx.clone();
    spawn(
        "assistancerequest",
        Box::pin(assistance_request::run(
            requests,
            ctx,
            shutdown.clone().cancelled_owned(),
        )),
    );
    if let Some(worker) = notify_worker {
        spawn("notifications", Box::pin(worker.run(shutdown.clone())));
    }
    spawn(
        "deviceinventory",
        Box::pin(device_inventory::run(
            ctx_for_tasks.client.clone(),
            scope.clone(),
            ctx_for_tasks.clone(),
            shutdown.clone().cancelled_owned(),
        )),
    );
    spawn(
        "enrollment",
        Box::pin(enrollment::run(
            ctx_for_tasks.clone(),
            shutdown.clone().cancelled_owned(),
        )),
    );
    spawn(
        "recordings-signer",
        Box::pin(signers::recordings::run(
            ctx_for_tasks.clone(),
            scope.clone(),
            shutdown.clone().cancelled_owned(),
        )),
    );
    spawn(
        "technician-signer",
        Box::pin(signers::technician::run(
            ctx_for_tasks.clone(),
            scope.clone(),
            shutdown.clone().cancelled_owned(),
        )),
    );
    if ctx_for_tasks.settings.recording.retention_enabled() {
        spawn(
            "retention",
            Box::pin(retention::run(
                ctx_for_tasks.clone(),
                scope.clone(),
                args.namespace.clone(),
                shutdown.clone(),
            )),
        );
    }
    spawn(
        "relay",
        Box::pin(relay::run(
            ctx_for_tasks.clone(),
            args.namespace.clone(),
            ctx_for_tasks.settings.relay.clone(),
            shutdown.clone(),
        )),
    );
    {
        let shutdown = shutdown.clone();
        spawn(
            "credentials",
            Box::pin(async move { credentials.run(shutdown).await }),
        );
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "Started tether-operator"
    );

    let lost = tokio::select! {
        result = &mut signal => { result?; None }
        result = ended(&mut election) => Some(result),
    };
    if let Some(result) = lost {
        // client-go's OnStoppedLeading: stop reconciling at once and exit non-zero, so
        // Kubernetes restarts the process as a standby; no graceful drain, since another
        // replica may already lead.
        leader_gauge.set(0);
        health.set_ready(false);
        shutdown.cancel();
        tasks.abort_all();
        let reason = match result {
            Ok(()) => anyhow::anyhow!("leader election stopped"),
            Err(e) => e,
        };
        return Err(reason.context("stopped leading"));
    }
    info!("Shutting down");
    health.set_ready(false);
    shutdown.cancel();
    while let Some(result) = tasks.join_next().await {
        result.context("a controller task panicked")?;
    }
    // Released only once the controllers stopped, so two processes never reconcile at once.
    leader_gauge.set(0);
    election_stop.cancel();
    if let Some(election) = election {
        election.ended().await?;
    }
    stop_http(http_shutdown, http).await
}

/// The running elector: its task and the role it publishes.
struct Election {
    task: tokio::task::JoinHandle<Result<(), ElectionError>>,
    roles: watch::Receiver<Role>,
}

impl Election {
    /// Waits until this process leads; marks a standby ready once it has read the Lease.
    async fn leading(&mut self, health: &Health) -> Result<()> {
        loop {
            let role = self.roles.borrow_and_update().clone();
            match role {
                Role::Leader => return Ok(()),
                Role::Standby { .. } => {
                    if !health.is_ready() {
                        info!("Standing by; ready");
                    }
                    health.set_ready(true);
                }
                Role::Unknown => {}
            }
            if self.roles.changed().await.is_err() {
                // The elector ended before this process led.
                return match (&mut self.task).await {
                    Ok(Ok(())) => Err(anyhow::anyhow!("leader election stopped")),
                    Ok(Err(e)) => Err(e).context("leader election failed"),
                    Err(e) => Err(e).context("the leader election task panicked"),
                };
            }
        }
    }

    /// Waits for the elector to end: `Ok` after a release on shutdown, an error when
    /// leadership was lost.
    async fn ended(self) -> Result<()> {
        self.task
            .await
            .context("the leader election task panicked")?
            .context("lost leadership")
    }
}

/// Waits for the elector to end, forever when leader election is off.
async fn ended(election: &mut Option<Election>) -> Result<()> {
    match election {
        Some(election) => (&mut election.task)
            .await
            .context("the leader election task panicked")?
            .context("lost leadership"),
        None => std::future::pending().await,
    }
}

/// Stops the metrics and health server and waits for it.
async fn stop_http(
    shutdown: CancellationToken,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
) -> Result<()> {
    shutdown.cancel();
    http.await
        .context("the metrics server task panicked")?
        .context("the metrics server failed")?;
    info!("Stopped tether-operator");
    Ok(())
}
