//! The RemoteSession controller, a pipeline of named stages: observe (Device, access Secret)
//! → plan (pure, virtual-time tested) → apply (finalizer, credentials, revocations) → status
//! (server-side apply, Events). Requeued exactly at the session's next boundary: its start,
//! its expiry warning, its token refresh or its end.

pub mod apply;
pub mod gate;
pub mod lenient;
mod live;
pub mod observe;
pub mod plan;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tether_crds::device::Device;
use tether_crds::remote_session::RemoteSession;
use tracing::info;

use super::Context;
use super::policies::PolicyChange;
use super::toolkit::{self, ReconcileError, Retry};
use crate::credentials::CredentialsError;
use plan::{AccessAction, Observed};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "remotesession";

/// A failed reconcile of a RemoteSession.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object is not usable (never true for objects from the API server).
    #[error("invalid RemoteSession: {0}")]
    Invalid(String),
    /// An API request failed.
    #[error("failed to {what}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Issuing or revoking credentials failed.
    #[error("failed to manage the session's credentials")]
    Credentials(#[source] CredentialsError),
    /// The session's Device exists but cannot be read; the session waits until it is fixed.
    #[error("failed to read the session's Device")]
    UnreadableDevice(#[source] Box<tether_crds::decode::Undecodable>),
}

impl ReconcileError for Error {
    fn category(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Kube { .. } => "kube",
            Self::Credentials(_) => "credentials",
            Self::UnreadableDevice(_) => "unreadable",
        }
    }

    /// An invalid session waits for a change. A Device that cannot be read is tried again:
    /// the session says which one until it is fixed.
    fn retry(&self) -> Retry {
        match self {
            Self::Invalid(_) => Retry::OnChange,
            Self::Kube { .. } | Self::Credentials(_) | Self::UnreadableDevice(_) => Retry::Soon,
        }
    }
}

/// Reconciles one RemoteSession.
pub async fn reconcile(session: Arc<RemoteSession>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = session
        .namespace()
        .ok_or_else(|| Error::Invalid("no namespace".into()))?;
    let name = session
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::Invalid("no name".into()))?;
    let api: Api<RemoteSession> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe.
    let observation = observe::observe(&ctx, &session, &namespace, &name).await?;
    // A session that must be recorded becomes Active only while the store answers.
    let phase = session.status.as_ref().and_then(|s| s.phase);
    let store_unavailable = if session.spec.recording
        == tether_crds::remote_session::RecordingPolicy::Required
        && !phase.is_some_and(|p| p == tether_crds::SessionPhase::Active || p.is_terminal())
    {
        ctx.recording_store.check().await.err()
    } else {
        None
    };
    let policy_gate = policy_gate(&ctx, &session, &namespace).await?;
    let consent_timeout = ctx.policies.applicable(&namespace).and_then(|policies| {
        policies
            .iter()
            .filter_map(|(_, p)| p.consent_timeout.as_ref().map(|t| t.as_std()))
            .min()
    });
    let now = Timestamp::now();

    // Plan.
    let plan = plan::plan(
        Observed {
            session: &session,
            device: observation.device.as_ref(),
            access: observation.access,
            now,
            store_unavailable: store_unavailable.as_deref(),
            policy_gate,
            consent_timeout,
        },
        &ctx.settings.sessions,
    );

    // Apply: the finalizer goes on before any credential exists and comes off after they
    // are revoked.
    if plan.finalizer == plan::FinalizerAction::Add {
        apply::finalizer(&api, &name, plan.finalizer).await?;
    }
    match plan.access {
        AccessAction::Mint(grant) => {
            apply::mint(&ctx, &session, &namespace, &name, grant, now).await?
        }
        AccessAction::Delete => {
            // Independent writes: do them at once, the session ends sooner.
            let revoke = async {
                if plan.revoke {
                    apply::revoke(&ctx, &session, now).await
                } else {
                    Ok(())
                }
            };
            tokio::try_join!(apply::delete_access(&ctx, &namespace, &name), revoke)?;
        }
        AccessAction::Keep => {
            if plan.revoke {
                apply::revoke(&ctx, &session, now).await?;
            }
        }
    }

    // Status. A session that stays in the API loses its finalizer first, so whoever reads an
    // ended status also finds it released; a deleted one needs its status written before the
    // finalizer lets it go.
    let remove = plan.finalizer == plan::FinalizerAction::Remove;
    let deleting = session.metadata.deletion_timestamp.is_some();
    if remove && !deleting {
        apply::finalizer(&api, &name, plan.finalizer).await?;
    }
    status::write(&api, &session, &plan, &name).await?;
    if !deleting && let Some(message) = plan::stale_recording(&plan.status) {
        status::mark_recording_failed(&api, &name, &message).await?;
        info!(session = %name, namespace = %namespace, "Marked the recording of a failed RemoteSession failed");
    }
    if remove && deleting {
        apply::finalizer(&api, &name, plan.finalizer).await?;
    }
    if let Some(transition) = &plan.transition {
        if let Some(due) = transition.due {
            let created = session.metadata.creation_timestamp.as_ref().map(|t| t.0);
            ctx.metrics.observe_transition(
                transition.to.as_str(),
                crate::metrics::Lateness::of(due, now, created, ctx.started_at),
            );
        }
        info!(
            session = %name, namespace = %namespace, phase = %transition.to,
            "Moved RemoteSession to a new phase"
        );
    }
    toolkit::publish_events(&ctx, &*session, &plan.events).await;

    Ok(toolkit::finished(
        &ctx,
        CONTROLLER,
        started,
        plan.requeue_after,
    ))
}

/// How long a reconcile waits for the session cache the policy gate reads to fill, at start.
const CACHE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// What the policy gate says about `session` now; only judged while it waits at the gate.
async fn policy_gate(
    ctx: &Context,
    session: &RemoteSession,
    namespace: &str,
) -> Result<gate::Verdict, Error> {
    if !gate::waiting(session) {
        return Ok(gate::Verdict::Admit);
    }
    // Just after the operator started, its session cache may still be filling: give it a
    // moment rather than hold the session for it (it is held, visibly, if it takes longer).
    let synced = || ctx.sessions_synced.load(Ordering::Acquire);
    if !synced() {
        let _ = tokio::time::timeout(CACHE_WAIT, async {
            while !synced() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    // The policies are read fresh: the gate is passed once, and a policy created just
    // before the session must hold it.
    let policies = ctx
        .policies
        .read(&ctx.client, namespace)
        .await
        .map_err(|source| Error::Kube {
            what: format!("read the SessionPolicies of namespace {namespace}"),
            source,
        })?;
    let now = Timestamp::now();
    let applicable: Vec<gate::Applicable<'_>> = policies
        .iter()
        .map(|(name, spec)| gate::Applicable { name, spec })
        .collect();
    let peers = ctx.sessions.state();
    Ok(gate::gate(
        session,
        synced().then_some(applicable.as_slice()),
        peers
            .iter()
            .map(|p| &**p)
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace)),
        now,
    ))
}

pub use super::toolkit::Scope;

/// The controller and the caches its reconciles read.
pub struct Built {
    /// The controller, not yet running.
    pub controller: Controller<RemoteSession>,
    /// Devices, kept current by the controller's own watch.
    pub devices: Store<Device>,
    /// Set once the session cache has listed every session: until then no session is let
    /// past the policy gate (its count of running sessions would be short).
    pub sessions_synced: Arc<AtomicBool>,
}

/// The sessions waiting at the policy gate in `namespace` (`None`: every namespace).
fn waiting_in(
    store: &Store<RemoteSession>,
    namespace: Option<&str>,
) -> Vec<ObjectRef<RemoteSession>> {
    store
        .state()
        .into_iter()
        .filter(|s| namespace.is_none_or(|ns| s.metadata.namespace.as_deref() == Some(ns)))
        .filter(|s| gate::waiting(s) && gate::held_for(s).is_some())
        .map(|s| ObjectRef::from_obj(&*s))
        .collect()
}

/// Builds the controller. It reconciles a session when the session changes, when its access
/// Secret changes (e.g. someone deleted it), and when its Device changes (presence, logged-on
/// users). `on_synced` runs each time the session cache has completed a full list, which is
/// when the operator is ready.
///
/// Readiness is taken from the watch stream rather than `Store::wait_until_ready`: the store's
/// readiness future wakes only one waiter, and the controller itself is already waiting on it.
///
/// Sessions and Devices are watched leniently ([`lenient`]): one that cannot be read is
/// reported and left out, and never stops the list, the watch or readiness.
///
/// Sessions held at the policy gate are woken when a place may have freed (a session of their
/// namespace ended or went away), when a policy that governs them changed (`policy_changes`),
/// and when the caches the gate reads have synced.
pub fn build(
    client: Client,
    scope: &Scope,
    policy_changes: impl futures::Stream<Item = PolicyChange> + Send + 'static,
    on_synced: impl Fn() + Send + Sync + 'static,
) -> Built {
    let reports = lenient::Reports::new(client.clone());
    let (reader, writer) = reflector::store::<RemoteSession>();
    let sessions_synced = Arc::new(AtomicBool::new(false));
    let (wake, woken) = futures::channel::mpsc::unbounded::<ObjectRef<RemoteSession>>();
    let waiting_store = reader.clone();
    let synced_flag = sessions_synced.clone();
    let sessions = reflector(
        writer,
        lenient::watch(
            lenient::dynamic_api::<RemoteSession>(client.clone(), scope.namespace()),
            watcher::Config::default().any_semantic(),
            reports.clone(),
            Some(reader.clone()),
        ),
    )
    .inspect(move |event| {
        let freed = match event {
            Ok(watcher::Event::InitDone) => {
                synced_flag.store(true, Ordering::Release);
                on_synced();
                Some(None)
            }
            // A session that ended or is going away frees its place.
            Ok(watcher::Event::Delete(s)) => Some(s.metadata.namespace.clone()),
            Ok(watcher::Event::Apply(s)) if gate::ended(s) => Some(s.metadata.namespace.clone()),
            _ => None,
        };
        if let Some(namespace) = freed {
            for waiting in waiting_in(&waiting_store, namespace.as_deref()) {
                // The receiver lives as long as the controller that polls this stream.
                let _ = wake.unbounded_send(waiting);
            }
        }
    })
    .applied_objects();

    let (devices, device_writer) = reflector::store::<Device>();
    let device_events = reflector(
        device_writer,
        lenient::watch(
            lenient::dynamic_api::<Device>(client.clone(), scope.namespace()),
            watcher::Config::default().any_semantic(),
            reports,
            Some(devices.clone()),
        ),
    )
    .applied_objects();

    let secrets = watcher(
        scope.api::<Secret>(client),
        watcher::Config::default().labels(tether_crds::contract::access_secret::SELECTOR),
    )
    // Deletions too: a deleted access Secret is issued again.
    .touched_objects();

    let session_index = reader.clone();
    let policy_store = reader.clone();
    let policy_wakes = policy_changes.flat_map(move |change| {
        let namespace = match &change {
            PolicyChange::Namespace(ns) => Some(ns.as_str()),
            PolicyChange::Cluster | PolicyChange::Synced => None,
        };
        futures::stream::iter(waiting_in(&policy_store, namespace))
    });
    let controller = Controller::for_stream(sessions, reader)
        .reconcile_on(woken)
        .reconcile_on(policy_wakes)
        .owns_stream(secrets)
        .watches_stream(device_events, move |device: Device| {
            let namespace = device.namespace();
            let name = device.name_any();
            session_index
                .state()
                .into_iter()
                .filter(|s| s.namespace() == namespace && s.spec.device == name)
                .map(|s| ObjectRef::from_obj(&*s))
                .collect::<Vec<_>>()
        });
    Built {
        controller,
        devices,
        sessions_synced,
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<RemoteSession>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    toolkit::run(CONTROLLER, controller, reconcile, ctx, shutdown).await;
}
