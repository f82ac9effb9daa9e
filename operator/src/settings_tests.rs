//! The operator's flags and what they become.

use super::*;
use clap::Parser;

#[test]
fn relay_pull_secrets_are_secret_names() {
    let args = Args::try_parse_from([
        "tether-operator",
        "--relay-image-pull-secrets=regcred,mirror.v2",
        "--relay-image-pull-policy=Always",
    ])
    .expect("flags parse");
    let relay = Settings::from(&args).relay;
    assert_eq!(relay.pull_secrets, ["regcred", "mirror.v2"]);
    assert_eq!(relay.pull_policy, "Always");
    for bad in ["Regcred", "-x", "a b", "x/y", "dot.", "\u{1b}[2J"] {
        let err = Args::try_parse_from([
            "tether-operator".to_owned(),
            format!("--relay-image-pull-secrets={bad}"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not a Secret name"), "{bad:?}: {err}");
        assert!(!err.contains('\u{1b}'), "escaped: {err:?}");
    }
    let err = Args::try_parse_from(["tether-operator", "--relay-image-pull-policy=Sometimes"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Sometimes"), "{err}");
}

#[test]
fn leader_election_is_on_by_default_and_can_be_turned_off() {
    let on = Args::try_parse_from(["tether-operator"]).expect("defaults parse");
    let election = on.election(Some("op-0".into())).expect("on by default");
    assert_eq!(election.lease_name, "tether-operator");
    assert_eq!(election.namespace, "tether-system");
    assert_eq!(election.identity, "op-0");
    assert_eq!(election.lease_duration, std::time::Duration::from_secs(12));
    assert_eq!(election.renew_deadline, std::time::Duration::from_secs(8));
    assert_eq!(election.retry_period, std::time::Duration::from_secs(2));
    election.validate().expect("the defaults are valid");
    let off =
        Args::try_parse_from(["tether-operator", "--leader-election=false"]).expect("flag parses");
    assert_eq!(off.election(None), None);
    let bare = Args::try_parse_from([
        "tether-operator",
        "--leader-election",
        "--leader-election-id=e2e",
        "--leader-election-retry-period=500ms",
    ])
    .expect("flags parse");
    let election = bare.election(None).expect("on");
    assert_eq!(election.lease_name, "e2e");
    assert_eq!(election.retry_period, std::time::Duration::from_millis(500));
}

#[test]
fn defaults_and_bad_input() {
    let args = Args::try_parse_from(["tether-operator"]).unwrap();
    assert_eq!(
        Settings::from(&args).sessions.max_duration.as_secs(),
        8 * 3600
    );
    let err = Args::try_parse_from(["tether-operator", "--max-session-duration", "8 hours"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn secrets_are_never_flags() {
    for flag in ["--smtp-password=hunter2", "--webhook-token=hunter2"] {
        let err = Args::try_parse_from(["tether-operator", flag])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected argument"), "{flag}: {err}");
    }
    // Positive control: the same secrets from files.
    let dir = std::env::temp_dir().join(format!("tether-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("password");
    let token = dir.join("token");
    std::fs::write(&password, "hunter2\n").unwrap();
    std::fs::write(&token, "s3cret").unwrap();
    let args = Args::try_parse_from([
        "tether-operator",
        "--smtp-host=mail.example.com",
        &format!("--smtp-password-file={}", password.display()),
        "--webhook-url=https://hooks.example.com/tether",
        &format!("--webhook-token-file={}", token.display()),
    ])
    .unwrap();
    assert_eq!(args.email().unwrap().password.as_deref(), Some("hunter2"));
    assert_eq!(args.webhook().unwrap().token.as_deref(), Some("s3cret"));
    let shown = format!("{args:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("s3cret"),
        "{shown}"
    );
    // A missing file is named; nothing else is said about it.
    let err = Args::try_parse_from(["tether-operator", "--webhook-token-file=/nonexistent/t"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed to read /nonexistent/t"), "{err}");
}

#[test]
fn recording_flags() {
    let args = Args::try_parse_from(["tether-operator"]).unwrap();
    let r = Settings::from(&args).recording;
    assert_eq!(r.store, None);
    assert_eq!(r.part_size, 5 * 1024 * 1024);
    assert_eq!(r.flush_interval.as_std().as_secs(), 2);
    assert!(r.retention.is_zero() && !r.retention_enabled());
    assert_eq!(r.sweep_interval.as_secs(), 3600);

    let args = Args::try_parse_from([
        "tether-operator",
        "--recording-store=s3://recordings/tether",
        "--recording-option=endpoint=http://127.0.0.1:9000",
        "--recording-option",
        "allow_http=true",
        "--recording-credentials-secret=recording-s3",
        "--recording-part-size=6291456",
        "--recording-flush-interval=500ms",
        "--recording-retention=2160h",
        "--recording-sweep-interval=10m",
    ])
    .unwrap();
    let r = args.recording();
    assert_eq!(r.store.as_deref(), Some("s3://recordings/tether"));
    assert_eq!(r.options["endpoint"], "http://127.0.0.1:9000");
    assert_eq!(r.options["allow_http"], "true");
    assert_eq!(r.credentials_secret.as_deref(), Some("recording-s3"));
    assert_eq!(r.part_size, 6 * 1024 * 1024);
    assert_eq!(r.flush_interval.as_str(), "500ms");
    assert_eq!(r.retention.as_secs(), 2160 * 3600);
    assert!(r.retention_enabled());
    assert_eq!(r.sweep_interval.as_secs(), 600);
    r.validate().unwrap();

    let err = Args::try_parse_from(["tether-operator", "--recording-part-size=1024"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("minimum part size"), "{err}");
    let args = Args::try_parse_from([
        "tether-operator",
        "--recording-store=s3://b",
        "--recording-option=secret_access_key=hunter2",
    ])
    .unwrap();
    let err = args.recording().validate().unwrap_err().to_string();
    assert!(
        err.contains("credentials Secret") && !err.contains("hunter2"),
        "{err}"
    );
    let err = Args::try_parse_from(["tether-operator", "--recording-retention=90d"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid duration"), "{err}");
}
