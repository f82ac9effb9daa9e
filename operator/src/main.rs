//! `tether-operator`: connects to the API server, runs the controllers and serves metrics and
//! health until SIGTERM or Ctrl-C, then shuts down gracefully.

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
use tether_operator::metrics::{Metrics, SessionPhases};
use tether_operator::settings::{Args, Settings};
use tether_telemetry::Health;
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

    let (addr, http) = tether_telemetry::serve(
        args.metrics_addr,
        registry,
        health.clone(),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("failed to listen on {}", args.metrics_addr))?;
    info!(%addr, "Serving metrics and health");

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

    tether_telemetry::shutdown_signal().await?;
    info!("Shutting down");
    health.set_ready(false);
    shutdown.cancel();
    while let Some(result) = tasks.join_next().await {
        result.context("a controller task panicked")?;
    }
    http.await
        .context("the metrics server task panicked")?
        .context("the metrics server failed")?;
    info!("Stopped tether-operator");
    Ok(())
}
