//! Tests of the RemoteSession schema: its validation rules evaluated client-side, bounds on names, text and times.

use super::*;
use kube::core::cel::Validator;

fn schema() -> serde_json::Value {
    crate::schema_of("RemoteSession").unwrap()
}

fn object(start: Option<&str>, duration: &str, phase: Option<&str>) -> serde_json::Value {
    let mut o = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": "s"},
        "spec": {"device": "d", "duration": duration},
    });
    if let Some(start) = start {
        o["spec"]["startTime"] = start.into();
    }
    if let Some(phase) = phase {
        o["status"] = serde_json::json!({"phase": phase});
    }
    o
}

fn check(new: &serde_json::Value, old: Option<&serde_json::Value>) -> Result<(), String> {
    Validator::new()
        .validate(&schema(), new, old)
        .map_err(|e| format!("{e:?}"))
}

fn good() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "RemoteSession",
        "metadata": {"name": "s"},
        "spec": {
            "device": "laptop-042",
            "startTime": "2030-01-31T09:00:00Z",
            "duration": "1h",
            "mode": "Interactive",
            "features": Features::default(),
            "recording": "Enabled",
            "technicians": {"users": ["carol"]},
            "reason": "printer",
        },
    })
}

fn with(mut o: serde_json::Value, path: &[&str], value: serde_json::Value) -> serde_json::Value {
    let (last, parents) = path.split_last().unwrap();
    let mut at = &mut o;
    for p in parents {
        at = &mut at[*p];
    }
    at[*last] = value;
    o
}

fn refused(new: &serde_json::Value, old: Option<&serde_json::Value>, message: &str) {
    let err = check(new, old).expect_err(message);
    assert!(err.contains(message), "expected {message:?} in {err}");
}

#[test]
fn what_the_token_and_consent_derive_from_is_fixed_once_the_window_opens() {
    let changes: [(&[&str], serde_json::Value, &str); 7] = [
        (
            &["spec", "device"],
            "laptop-043".into(),
            "device can only be changed",
        ),
        (
            &["spec", "mode"],
            "Unattended".into(),
            "mode can only be changed",
        ),
        (
            &["spec", "features", "shell"],
            false.into(),
            "features can only be changed",
        ),
        (
            &["spec", "recording"],
            "Disabled".into(),
            "recording can only be changed",
        ),
        (
            &["spec", "technicians"],
            serde_json::json!({"users": ["carol", "mallory"]}),
            "technicians can only be changed",
        ),
        (
            &["spec", "reason"],
            "other".into(),
            "reason can only be changed",
        ),
        (
            &["spec", "startTime"],
            "2030-02-01T09:00:00Z".into(),
            "startTime and duration can only be changed",
        ),
    ];
    for (path, value, message) in changes {
        for phase in ["Pending", "Active", "Expired"] {
            let old = with(good(), &["status"], serde_json::json!({"phase": phase}));
            let new = with(old.clone(), path, value.clone());
            refused(&new, Some(&old), message);
        }
        // Positive control: the same change while Scheduled, or before any status.
        let old = with(
            good(),
            &["status"],
            serde_json::json!({"phase": "Scheduled"}),
        );
        let new = with(old.clone(), path, value.clone());
        assert!(check(&new, Some(&old)).is_ok(), "{path:?} while Scheduled");
        assert!(check(&with(good(), path, value), Some(&good())).is_ok());
    }
    // The ticket is not derived into anything: it stays editable.
    let old = with(good(), &["status"], serde_json::json!({"phase": "Active"}));
    let new = with(old.clone(), &["spec", "ticket"], "INC-1".into());
    assert!(check(&new, Some(&old)).is_ok());
    // Removing technicians is a change too.
    let mut new = old.clone();
    new["spec"].as_object_mut().unwrap().remove("technicians");
    refused(&new, Some(&old), "technicians can only be changed");
}

#[test]
fn references_names_text_and_sizes_are_bounded() {
    assert!(check(&good(), None).is_ok());
    for device in ["../../kube-system/x", "Laptop", "-x", "a.b"] {
        refused(
            &with(good(), &["spec", "device"], device.into()),
            None,
            "device must be the name of a Device",
        );
    }
    refused(
        &with(good(), &["metadata", "name"], "s".repeat(64).into()),
        None,
        "RemoteSession names are at most 63 characters",
    );
    assert!(
        check(
            &with(good(), &["metadata", "name"], "s".repeat(63).into()),
            None
        )
        .is_ok()
    );
    refused(
        &with(good(), &["spec", "reason"], "a\u{1b}[2Jb".into()),
        None,
        "reason must not contain control characters",
    );
    assert!(
        check(
            &with(good(), &["spec", "reason"], "line\n\tindented".into()),
            None
        )
        .is_ok()
    );
    refused(
        &with(
            good(),
            &["spec", "technicians", "users"],
            serde_json::json!(["carol\r"]),
        ),
        None,
        "must not contain control characters",
    );
    refused(
        &with(good(), &["spec", "ticket"], "INC\n1".into()),
        None,
        "ticket must not contain control characters",
    );
    // The token budget counts bytes: 12 names of 128 bytes pass, 13 do not.
    let names = |n: usize| serde_json::json!(vec!["u".repeat(128); n]);
    let spec = |n| {
        with(
            with(
                good(),
                &["spec", "technicians"],
                serde_json::json!({"groups": names(n)}),
            ),
            &["spec", "reason"],
            "r".into(),
        )
    };
    assert!(check(&spec(11), None).is_ok());
    refused(&spec(13), None, "must fit in 1536 bytes");
    // The ticket counts too.
    let long_reason = with(good(), &["spec", "reason"], "r".repeat(1024).into());
    assert!(
        check(
            &with(
                long_reason.clone(),
                &["spec", "ticket"],
                "t".repeat(256).into()
            ),
            None
        )
        .is_ok()
    );
    refused(
        &with(
            with(long_reason, &["spec", "ticket"], "t".repeat(256).into()),
            &["spec", "technicians"],
            serde_json::json!({"groups": names(3)}),
        ),
        None,
        "reason, ticket and technicians together must fit in 1536 bytes",
    );
    // Multi-byte characters count as bytes.
    refused(
        &with(good(), &["spec", "reason"], "é".repeat(1000).into()),
        None,
        "must fit in 1536 bytes",
    );
}

#[test]
fn times_are_real_dates_and_old_values_do_not_break_updates() {
    // February 30 has the right form but is no date: the rule fails to evaluate, which
    // refuses the object (the API server adds the rule's message, tested end to end).
    let err = check(
        &with(
            good(),
            &["spec", "startTime"],
            "2030-02-30T09:00:00Z".into(),
        ),
        None,
    )
    .unwrap_err();
    assert!(err.contains("timestamp"), "{err}");
    assert!(
        check(
            &with(
                good(),
                &["spec", "startTime"],
                "2028-02-29T09:00:00.123456789+02:00".into()
            ),
            None
        )
        .is_ok()
    );
    // A value of another form is the pattern's to refuse; the rule never parses it, so an
    // object stored with one can still be updated (its finalizer removed, its status set).
    let old = with(
        with(
            good(),
            &["spec", "startTime"],
            "2030-01-31t09:00:00z".into(),
        ),
        &["status"],
        serde_json::json!({"phase": "Active"}),
    );
    let mut new = old.clone();
    new["metadata"]["finalizers"] = serde_json::json!([]);
    assert!(
        check(&new, Some(&old)).is_ok(),
        "{:?}",
        check(&new, Some(&old))
    );
}

#[test]
fn duration_rules() {
    assert!(check(&object(None, "30m", None), None).is_ok());
    assert!(check(&object(None, "24h", None), None).is_ok());
    let err = check(&object(None, "-5m", None), None).unwrap_err();
    assert!(err.contains("duration must be positive"), "{err}");
    let err = check(&object(None, "0s", None), None).unwrap_err();
    assert!(err.contains("duration must be positive"), "{err}");
    let err = check(&object(None, "24h1s", None), None).unwrap_err();
    assert!(err.contains("duration must be at most 24h"), "{err}");
}

#[test]
fn reschedule_rule() {
    let t1 = Some("2030-01-01T10:00:00Z");
    let t2 = Some("2030-01-02T10:00:00Z");
    for phase in [None, Some("Scheduled")] {
        let old = object(t1, "1h", phase);
        assert!(
            check(&object(t2, "1h", phase), Some(&old)).is_ok(),
            "{phase:?}"
        );
        assert!(
            check(&object(t1, "2h", phase), Some(&old)).is_ok(),
            "{phase:?}"
        );
    }
    for phase in ["Pending", "Active", "Expired"] {
        let old = object(t1, "1h", Some(phase));
        let moved = check(&object(t2, "1h", Some(phase)), Some(&old)).unwrap_err();
        assert!(
            moved.contains("only be changed while the session is Scheduled"),
            "{moved}"
        );
        assert!(
            check(&object(t1, "2h", Some(phase)), Some(&old)).is_err(),
            "{phase}"
        );
        assert!(
            check(&object(None, "1h", Some(phase)), Some(&old)).is_err(),
            "{phase}"
        );
        // Same value, different spelling: not a change.
        assert!(
            check(&object(t1, "60m", Some(phase)), Some(&old)).is_ok(),
            "{phase}"
        );
    }
}
