//! The leader elector's decisions in virtual time: acquiring, renewing, expiry measured on
//! the candidate's own clock, releasing, and the checks on its timing.

use super::*;

fn settings() -> ElectionSettings {
    ElectionSettings {
        namespace: "tether-system".into(),
        lease_name: "tether-operator".into(),
        identity: "me".into(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("a valid time")
}

fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        renew_time: Some(MicroTime(at(renewed))),
        ..LeaseSpec::default()
    }
}

fn observe(spec: &LeaseSpec, previous: Option<&Observed>, now: i64) -> Observed {
    Observed::from_spec(Some(spec), previous, at(now), Duration::from_secs(15))
}

#[test]
fn a_missing_lease_is_created() {
    assert_eq!(decide(at(0), "me", false, None), Decision::Create);
}

#[test]
fn a_free_lease_is_taken() {
    let free = LeaseSpec::default();
    assert_eq!(
        decide(at(0), "me", false, Some(&observe(&free, None, 0))),
        Decision::Acquire
    );
    let empty = LeaseSpec {
        holder_identity: Some(String::new()),
        ..LeaseSpec::default()
    };
    assert_eq!(
        decide(at(0), "me", false, Some(&observe(&empty, None, 0))),
        Decision::Acquire
    );
}

#[test]
fn another_holder_is_waited_for_until_it_stops_renewing() {
    let spec = held_by("other", 0);
    let first = observe(&spec, None, 0);
    assert_eq!(
        decide(at(14), "me", false, Some(&first)),
        Decision::Wait {
            holder: "other".into()
        }
    );
    // The same record seen again keeps its first observation time, so it expires.
    let again = observe(&spec, Some(&first), 15);
    assert_eq!(again.observed_at, at(0));
    assert_eq!(decide(at(15), "me", false, Some(&again)), Decision::Acquire);
}

#[test]
fn a_renewal_restarts_the_wait() {
    let first = observe(&held_by("other", 0), None, 0);
    let renewed = observe(&held_by("other", 2), Some(&first), 14);
    assert_eq!(renewed.observed_at, at(14));
    assert_eq!(
        decide(at(28), "me", false, Some(&renewed)),
        Decision::Wait {
            holder: "other".into()
        }
    );
}

#[test]
fn expiry_uses_the_local_clock_not_the_holders_renew_time() {
    // The holder's clock runs an hour behind: its renewTime looks long expired, but it
    // was seen renewing just now.
    let skewed = observe(&held_by("other", -3600), None, 0);
    assert_eq!(
        decide(at(1), "me", false, Some(&skewed)),
        Decision::Wait {
            holder: "other".into()
        }
    );
}

#[test]
fn the_holders_lease_duration_counts() {
    let mut spec = held_by("other", 0);
    spec.lease_duration_seconds = Some(60);
    let seen = observe(&spec, None, 0);
    assert!(matches!(
        decide(at(30), "me", false, Some(&seen)),
        Decision::Wait { .. }
    ));
    assert_eq!(decide(at(60), "me", false, Some(&seen)), Decision::Acquire);
}

#[test]
fn the_holder_renews_and_a_leader_that_sees_another_holder_has_lost() {
    let mine = observe(&held_by("me", 0), None, 0);
    assert_eq!(decide(at(100), "me", true, Some(&mine)), Decision::Renew);
    let theirs = observe(&held_by("other", 0), None, 0);
    assert_eq!(
        decide(at(1), "me", true, Some(&theirs)),
        Decision::Lost {
            holder: "other".into()
        }
    );
}

#[test]
fn claiming_counts_transitions_and_keeps_the_acquire_time_on_renewal() {
    let s = settings();
    let taken = claim(Some(&held_by("other", 0)), &s, at(20));
    assert_eq!(taken.holder_identity.as_deref(), Some("me"));
    assert_eq!(taken.lease_transitions, Some(1));
    assert_eq!(taken.acquire_time, Some(MicroTime(at(20))));
    assert_eq!(taken.lease_duration_seconds, Some(15));
    let renewed = claim(Some(&taken), &s, at(22));
    assert_eq!(renewed.lease_transitions, Some(1));
    assert_eq!(renewed.acquire_time, Some(MicroTime(at(20))));
    assert_eq!(renewed.renew_time, Some(MicroTime(at(22))));
    let created = claim(None, &s, at(0));
    assert_eq!(created.lease_transitions, None);
}

#[test]
fn a_released_lease_is_free_and_short() {
    let released = release(&held_by("me", 0), at(5));
    assert_eq!(released.holder_identity, None);
    assert_eq!(released.lease_duration_seconds, Some(1));
    let seen = observe(&released, None, 5);
    assert_eq!(
        decide(at(5), "other", false, Some(&seen)),
        Decision::Acquire
    );
}

#[test]
fn timing_is_validated() {
    assert!(settings().validate().is_ok());
    let mut s = settings();
    s.renew_deadline = s.lease_duration;
    assert!(s.validate().is_err());
    let mut s = settings();
    s.retry_period = s.renew_deadline;
    assert!(s.validate().is_err());
    let mut s = settings();
    s.retry_period = Duration::ZERO;
    assert!(s.validate().is_err());
    let mut s = settings();
    s.lease_duration = Duration::from_millis(1500);
    assert_eq!(s.lease_seconds(), 2);
}

#[test]
fn identity_prefers_the_pod_name() {
    assert_eq!(
        identity(Some("tether-operator-abc".into())),
        "tether-operator-abc"
    );
    let a = identity(None);
    let b = identity(Some(String::new()));
    assert!(a.contains('_'));
    assert_ne!(a, b, "two processes on one host get different identities");
}
