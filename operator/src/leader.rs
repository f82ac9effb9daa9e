//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does:
//! the leader renews the Lease every retry period and gives up (the process exits) when it
//! could not renew for a renew deadline; a standby takes the Lease once the holder has not
//! renewed it for a lease duration, measured on the standby's own clock (no clock-skew
//! assumptions beyond equal rates). Writes carry the Lease's `resourceVersion`, so two
//! candidates that saw the same expired Lease cannot both take it: one gets a conflict.
//!
//! The decisions are the pure [`decide`] and [`claim`]; [`Elector`] does the I/O.
//! `kube-lease-manager` (kube 5) was considered: it has no renew deadline (a renewal that
//! hangs or keeps failing leaves the process believing it leads after its Lease expired), so a
//! second leader could start while the first still reconciles.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How the operator elects its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This process's identity, written as the Lease's `holderIdentity`.
    pub identity: String,
    /// How long a standby waits after the last renewal it saw before it takes the Lease.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    pub retry_period: Duration,
}

/// Why leader election stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The durations do not leave a standby time to notice an expired Lease.
    #[error(
        "invalid leader election timing: need lease duration > renew deadline > retry period > 0"
    )]
    InvalidTiming,
    /// Another process holds the Lease this one was leading on.
    #[error("lost the leader Lease to {holder:?}")]
    Taken {
        /// The new holder.
        holder: String,
    },
    /// The leader could not renew the Lease within the renew deadline.
    #[error("failed to renew the leader Lease within {0:?}")]
    RenewDeadline(Duration),
}

impl ElectionSettings {
    /// Checks the timing as client-go does: the leader must give up (renew deadline) before a
    /// standby may take over (lease duration), and retry at least once in between.
    pub fn validate(&self) -> Result<(), ElectionError> {
        let ok = !self.retry_period.is_zero()
            && self.lease_duration >= Duration::from_secs(1)
            && self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period.mul_f64(JITTER + 1.0);
        if ok {
            Ok(())
        } else {
            Err(ElectionError::InvalidTiming)
        }
    }

    /// `leaseDurationSeconds`, rounded up to whole seconds.
    fn lease_seconds(&self) -> i32 {
        i32::try_from(
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0),
        )
        .unwrap_or(i32::MAX)
    }
}

/// Largest extra fraction of the retry period candidates wait, so they do not retry in step.
const JITTER: f64 = 0.2;

/// The identity of this process: `POD_NAME` when set (the chart sets it), else the host name
/// with a random suffix, so two processes on one host differ.
pub fn identity(pod_name: Option<String>) -> String {
    if let Some(name) = pod_name.filter(|n| !n.is_empty()) {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tether-operator".to_owned());
    let suffix: u64 = rand::random();
    format!("{host}_{suffix:016x}")
}

/// What a candidate last saw of the Lease, and when by its own clock the record last changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `holderIdentity`, `None` when empty.
    pub holder: Option<String>,
    /// `renewTime`, compared only to notice that the holder renewed.
    pub renew_time: Option<Timestamp>,
    /// `leaseDurationSeconds` of the record (the holder's, not ours).
    pub lease_duration: Duration,
    /// Local time when this record was first seen.
    pub observed_at: Timestamp,
}

impl Observed {
    /// The record in `spec` as seen at `now`, keeping the earlier observation time when the
    /// record has not changed since `previous` (so a holder that stopped renewing expires).
    pub fn from_spec(
        spec: Option<&LeaseSpec>,
        previous: Option<&Observed>,
        now: Timestamp,
        default_duration: Duration,
    ) -> Self {
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let renew_time = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
        let lease_duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(default_duration, Duration::from_secs);
        let observed_at = match previous {
            Some(p)
                if p.holder == holder
                    && p.renew_time == renew_time
                    && p.lease_duration == lease_duration =>
            {
                p.observed_at
            }
            _ => now,
        };
        Self {
            holder,
            renew_time,
            lease_duration,
            observed_at,
        }
    }

    /// Whether the holder's claim still stands at `now`.
    fn valid_at(&self, now: Timestamp) -> bool {
        let expires = self
            .observed_at
            .checked_add(self.lease_duration)
            .unwrap_or(Timestamp::MAX);
        self.holder.is_some() && now < expires
    }
}

/// What a candidate does after looking at the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it, held by us.
    Create,
    /// The Lease is free or its holder stopped renewing: take it.
    Acquire,
    /// We hold the Lease: renew it.
    Renew,
    /// Another holder's claim stands: wait and look again.
    Wait {
        /// The holder.
        holder: String,
    },
    /// We were leading but another identity now holds the Lease.
    Lost {
        /// The holder.
        holder: String,
    },
}

/// The decision of candidate `identity` (`leading` when it believes it holds the Lease) at
/// `now`, given what it observed of the Lease (`None`: there is no Lease).
pub fn decide(
    now: Timestamp,
    identity: &str,
    leading: bool,
    observed: Option<&Observed>,
) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    match &observed.holder {
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) if leading => Decision::Lost {
            holder: holder.clone(),
        },
        Some(holder) if observed.valid_at(now) => Decision::Wait {
            holder: holder.clone(),
        },
        _ => Decision::Acquire,
    }
}

/// The Lease spec after `identity` takes or renews `current` at `now`.
pub fn claim(
    current: Option<&LeaseSpec>,
    settings: &ElectionSettings,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let previous = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if previous.as_deref() != Some(settings.identity.as_str()) {
        spec.acquire_time = Some(MicroTime(now));
        if previous.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_seconds());
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// The Lease spec after its holder releases it at `now`: no holder, and a one-second
/// duration so a candidate that still saw the old record does not wait long (client-go's
/// `ReleaseOnCancel`).
pub fn release(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        acquire_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// This process's part in the election, published to the rest of the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The Lease has not been read yet.
    Unknown,
    /// Another process leads (`None`: nobody yet, this one is about to try again).
    Standby {
        /// The leader.
        leader: Option<String>,
    },
    /// This process holds the Lease.
    Leader,
}

/// The outcome of one attempt to take or renew the Lease.
enum Attempt {
    Held,
    NotHeld(Option<String>),
}

/// Takes the Lease, renews it while leading, releases it when stopped.
pub struct Elector {
    api: Api<Lease>,
    settings: ElectionSettings,
    observed: Option<Observed>,
    leading: bool,
}

impl Elector {
    /// An elector for `settings.lease_name` in `settings.namespace`.
    pub fn new(client: kube::Client, settings: ElectionSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            leading: false,
        }
    }

    /// Runs until `stop` (then releases the Lease if it holds it and returns `Ok`) or until
    /// leadership is lost (an error: the caller must stop reconciling at once). Publishes
    /// the role on `role`.
    pub async fn run(
        mut self,
        role: watch::Sender<Role>,
        stop: CancellationToken,
    ) -> Result<(), ElectionError> {
        let s = self.settings.clone();
        info!(lease = %s.lease_name, namespace = %s.namespace, identity = %s.identity,
            "Started leader election on Lease");
        // Standby: try every retry period until the Lease is ours.
        loop {
            match tokio::time::timeout(s.renew_deadline, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => break,
                Ok(Ok(Attempt::NotHeld(leader))) => {
                    role.send_if_modified(|r| {
                        let next = Role::Standby { leader };
                        let changed = *r != next;
                        if changed {
                            if let Role::Standby { leader: Some(l) } = &next {
                                info!(lease = %s.lease_name, leader = %l, "Observed another leader; standing by");
                            }
                            *r = next;
                        }
                        changed
                    });
                }
                Ok(Err(e)) => warn!(lease = %s.lease_name, error = %crate::error_chain(&e),
                    "Failed to take the leader Lease"),
                Err(_) => warn!(lease = %s.lease_name, "Timed out taking the leader Lease"),
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(jittered(s.retry_period)) => {}
            }
        }
        self.leading = true;
        info!(lease = %s.lease_name, identity = %s.identity, "Became the leader");
        role.send_replace(Role::Leader);
        // Leader: renew every retry period; give up when no renewal succeeded for the deadline.
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.release_lease().await;
                    return Ok(());
                }
                () = tokio::time::sleep(s.retry_period) => {}
            }
            let deadline = renewed + s.renew_deadline;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => renewed = Instant::now(),
                Ok(Ok(Attempt::NotHeld(Some(holder)))) => {
                    self.leading = false;
                    role.send_replace(Role::Standby {
                        leader: Some(holder.clone()),
                    });
                    return Err(ElectionError::Taken { holder });
                }
                // A conflicting write: the next look tells whether another process took it.
                Ok(Ok(Attempt::NotHeld(None))) => {}
                Ok(Err(e)) => warn!(lease = %s.lease_name, error = %crate::error_chain(&e),
                    "Failed to renew the leader Lease"),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                self.leading = false;
                role.send_replace(Role::Standby { leader: None });
                return Err(ElectionError::RenewDeadline(s.renew_deadline));
            }
        }
    }

    /// Reads the Lease and takes, renews or leaves it as [`decide`] says.
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let s = &self.settings;
        let now = Timestamp::now();
        let lease = self.api.get_opt(&s.lease_name).await?;
        let observed = lease.as_ref().map(|l| {
            Observed::from_spec(
                l.spec.as_ref(),
                self.observed.as_ref(),
                now,
                s.lease_duration,
            )
        });
        self.observed.clone_from(&observed);
        let decision = decide(now, &s.identity, self.leading, observed.as_ref());
        debug!(lease = %s.lease_name, ?decision, "Looked at the leader Lease");
        let written = match decision {
            Decision::Wait { holder } | Decision::Lost { holder } => {
                return Ok(Attempt::NotHeld(Some(holder)));
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(s.lease_name.clone()),
                        namespace: Some(s.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_owned(),
                                "tether-operator".to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claim(None, s, now)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Decision::Acquire | Decision::Renew => {
                let mut lease = lease.unwrap_or_default();
                lease.spec = Some(claim(lease.spec.as_ref(), s, now));
                // `replace` sends the resourceVersion we read: a concurrent writer wins, we
                // get a conflict.
                self.api
                    .replace(&s.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = Some(Observed::from_spec(
                    lease.spec.as_ref(),
                    None,
                    now,
                    s.lease_duration,
                ));
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(lease = %s.lease_name, "Lost a race for the leader Lease");
                Ok(Attempt::NotHeld(None))
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up so a standby takes over at once; best effort, bounded by the renew
    /// deadline (the Lease expires by itself otherwise).
    async fn release_lease(&mut self) {
        let s = self.settings.clone();
        let release = async {
            let Some(mut lease) = self.api.get_opt(&s.lease_name).await? else {
                return Ok::<_, kube::Error>(false);
            };
            let held = lease
                .spec
                .as_ref()
                .and_then(|l| l.holder_identity.as_deref())
                == Some(s.identity.as_str());
            if !held {
                return Ok(false);
            }
            lease.spec = lease.spec.as_ref().map(|l| release(l, Timestamp::now()));
            self.api
                .replace(&s.lease_name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        };
        match tokio::time::timeout(s.renew_deadline, release).await {
            Ok(Ok(true)) => info!(lease = %s.lease_name, "Released the leader Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(lease = %s.lease_name, error = %crate::error_chain(&e),
                "Failed to release the leader Lease"),
            Err(_) => warn!(lease = %s.lease_name, "Timed out releasing the leader Lease"),
        }
        self.leading = false;
    }
}

/// `period` plus up to [`JITTER`] of it.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * JITTER)
}

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
