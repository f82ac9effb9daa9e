//! The agent's smaller holes, end to end with real processes: the file manager stays inside its
//! roots through linked directories and leaves no temporary file behind, names the device
//! supplies are shown escaped, a consent command that never answers is killed, chat from the
//! device stays with its session, and the device's user can see and end one session at a time.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use kube::api::Api;
use tether_crds::RemoteSession;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster};
use tether_e2e::dataplane::{session, wait_phase};
use tether_e2e::output::ok;
use tether_e2e::{PATIENCE, control_plane, eventually};

fn tether(ns: &str, args: &[&str]) -> Output {
    tether_e2e::dataplane::kubectl_tether(ns, "carol", args, None)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

async fn phase(cluster: &Cluster, name: &str) -> Option<SessionPhase> {
    let admin = control_plane().client("admin").await.unwrap();
    let api: Api<RemoteSession> = Api::namespaced(admin, &cluster.namespace);
    api.get(name).await.ok()?.status?.phase
}

async fn online(cluster: &Cluster, device: &str) {
    let admin = control_plane().client("admin").await.unwrap();
    let api: Api<tether_crds::Device> = Api::namespaced(admin, &cluster.namespace);
    eventually(&format!("{device} is online"), PATIENCE, || {
        let api = api.clone();
        async move {
            let d = api.get(device).await.ok()?;
            (format!("{:?}", d.status?.presence?) == "Online").then_some(())
        }
    })
    .await;
}

fn upload_temps(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tether-upload-"))
        .collect()
}

fn chat_log(agent: &Agent) -> String {
    std::fs::read_to_string(agent.state.join("chat.log")).unwrap_or_default()
}

#[tokio::test]
async fn the_file_manager_stays_in_its_root_and_device_names_are_shown_escaped() {
    let cluster = Cluster::start("holes-files", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "nas",
        cluster.relay.port,
        &["--consent=always", "--logged-on-user=dana"],
    )
    .await;
    online(&cluster, "nas").await;
    session(
        &cluster,
        "disk",
        serde_json::json!({"device": "nas", "mode": "Unattended"}),
    )
    .await;
    wait_phase(&cluster, "disk", SessionPhase::Active).await;
    let ns = cluster.namespace.clone();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), agent.home.join("linked")).unwrap();

    // mkdir -p through a link that leaves the root: refused by the agent, nothing created.
    let out = tether(
        &ns,
        &[
            "files",
            "disk",
            "mkdir",
            "-p",
            "/home/linked/planted/deeper",
        ],
    );
    let err = refused(&out);
    assert!(
        err.contains("a symbolic link leads outside the allowed roots"),
        "{err}"
    );
    assert!(!outside.path().join("planted").exists());
    // Positive control: the same depth inside the root.
    ok(tether(
        &ns,
        &["files", "disk", "mkdir", "-p", "/home/planted/deeper"],
    ));
    assert!(agent.home.join("planted/deeper").is_dir());

    // A name longer than the file system allows: refused before any data, no temp file.
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("payload.bin");
    std::fs::write(&local, vec![1u8; 100_000]).unwrap();
    let long = format!("/home/{}", "n".repeat(300));
    for _ in 0..3 {
        let out = tether(
            &ns,
            &["files", "disk", "put", local.to_str().unwrap(), &long],
        );
        let err = refused(&out);
        assert!(err.contains("a name is 300 bytes long"), "{err}");
    }
    assert_eq!(upload_temps(&agent.home), Vec::<String>::new());
    // Positive control: a fitting name is stored, still without a temp file left.
    ok(tether(
        &ns,
        &[
            "files",
            "disk",
            "put",
            local.to_str().unwrap(),
            "/home/ok.bin",
        ],
    ));
    assert_eq!(
        std::fs::read(agent.home.join("ok.bin")).unwrap().len(),
        100_000
    );
    assert_eq!(upload_temps(&agent.home), Vec::<String>::new());

    // A file name with a newline and terminal escapes is listed on one line, escaped.
    let hostile = "evil\nfile   link   0   x   forged\u{1b}]0;owned\u{7}";
    std::fs::write(agent.home.join(hostile), b"x").unwrap();
    let listing = ok(tether(&ns, &["files", "disk", "ls", "/home"]));
    assert!(
        !listing.contains('\u{1b}') && !listing.contains('\u{7}'),
        "{listing:?}"
    );
    assert!(
        listing.contains("/home/evil\\nfile   link   0   x   forged\\u{1b}]0;owned\\u{7}"),
        "{listing}"
    );
    assert!(
        !listing
            .lines()
            .any(|l| l.trim_start().starts_with("file   link")),
        "{listing}"
    );
    // One line per entry plus the header: ok.bin, planted, linked, the hostile one.
    assert_eq!(listing.lines().count(), 5, "{listing}");
    // Positive control: ordinary names are shown as they are.
    assert!(listing.contains("/home/ok.bin"), "{listing}");
    let found = ok(tether(&ns, &["files", "disk", "find", "/home", "evil"]));
    assert!(
        found.contains("evil\\nfile") && !found.contains('\u{1b}'),
        "{found:?}"
    );

    // A process whose command line carries a newline and an escape.
    let mut child = Command::new("sleep")
        .arg0("evil\n\u{1b}[2Jsleep")
        .arg("67")
        .spawn()
        .unwrap();
    let ps = ok(tether(&ns, &["ps", "disk"]));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!ps.contains('\u{1b}'), "{ps:?}");
    assert!(ps.contains("evil\\n\\u{1b}[2Jsleep 67"), "{ps}");
}

#[tokio::test]
async fn a_consent_command_that_never_answers_is_killed() {
    let cluster = Cluster::start("holes-consent", &[]).await;
    let work = tempfile::tempdir().unwrap();
    let pids = work.path().join("pids");
    let slow = format!(
        "--consent=command:sleep 300 & echo $! > {p}; echo $$ >> {p}; sleep 300",
        p = pids.display()
    );
    let _silent = Agent::enroll_and_run(
        &cluster.namespace,
        "silent",
        cluster.relay.port,
        &[&slow, "--consent-timeout=3s", "--logged-on-user=dana"],
    )
    .await;
    let _quick = Agent::enroll_and_run(
        &cluster.namespace,
        "quick",
        cluster.relay.port,
        &["--consent=command:sleep 1", "--logged-on-user=dana"],
    )
    .await;
    online(&cluster, "silent").await;
    online(&cluster, "quick").await;
    session(
        &cluster,
        "ask",
        serde_json::json!({"device": "silent", "mode": "Interactive"}),
    )
    .await;
    wait_phase(&cluster, "ask", SessionPhase::Pending).await;
    let out = tether(&cluster.namespace, &["shell", "ask", "--", "true"]);
    let err = refused(&out);
    assert!(err.contains("ConsentTimedOut"), "{err}");
    let started: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(started.len(), 2);
    eventually(
        "the consent command and what it started are gone",
        PATIENCE,
        || {
            let started = started.clone();
            async move { started.iter().all(|p| !alive(*p)).then_some(()) }
        },
    )
    .await;

    // Positive control: a command that answers in time lets the technician in.
    session(
        &cluster,
        "quick-ask",
        serde_json::json!({"device": "quick", "mode": "Interactive"}),
    )
    .await;
    wait_phase(&cluster, "quick-ask", SessionPhase::Pending).await;
    let out = tether(
        &cluster.namespace,
        &["shell", "quick-ask", "--", "echo", "allowed"],
    );
    assert_eq!(ok(out).trim(), "allowed");
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit(')').next()?.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Starts `kubectl tether chat NAME --wait …` in the background.
fn listen(ns: &str, name: &str, wait: &str) -> tokio::task::JoinHandle<Output> {
    let (ns, name, wait) = (ns.to_owned(), name.to_owned(), wait.to_owned());
    tokio::task::spawn_blocking(move || {
        tether(
            &ns,
            &["chat", &name, "--message", "listening", "--wait", &wait],
        )
    })
}

/// Waits until the agent has opened `n` chat channels in all.
async fn chat_channels_opened(agent: &Agent, n: usize) {
    eventually(&format!("{n} chat channels are open"), PATIENCE, || async {
        let log = std::fs::read_to_string(agent.process.log_path()).unwrap_or_default();
        let opened = log
            .lines()
            // `kind="chat"` in plain logs.
            .filter(|l| l.contains("Opened a channel") && l.contains("chat"))
            .count();
        (opened >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn chat_from_the_device_stays_with_its_session() {
    let cluster = Cluster::start("holes-chat", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "kiosk",
        cluster.relay.port,
        &["--consent=always", "--logged-on-user=dana"],
    )
    .await;
    online(&cluster, "kiosk").await;
    let ns = cluster.namespace.clone();
    for name in ["printer", "wifi"] {
        session(
            &cluster,
            name,
            serde_json::json!({"device": "kiosk", "mode": "Interactive"}),
        )
        .await;
        wait_phase(&cluster, name, SessionPhase::Pending).await;
        ok(tether(&ns, &["files", name, "roots"]));
    }

    // Two sessions live: a message that names none is refused, with the list.
    let out = agent.user(&["say", "which one?"]);
    let err = refused(&out);
    assert!(err.contains("several remote sessions are open"), "{err}");
    assert!(
        err.contains("printer with carol") && err.contains("wifi with carol"),
        "{err}"
    );

    // Two chat channels on printer (a long one and a short one), one on wifi.
    let long = listen(&ns, "printer", "40s");
    let short = listen(&ns, "printer", "20s");
    let other = listen(&ns, "wifi", "20s");
    chat_channels_opened(&agent, 3).await;
    ok(agent.user(&["say", "--session", "printer", "the queue is stuck"]));
    let (long, short, other) = (
        ok(long.await.unwrap()),
        ok(short.await.unwrap()),
        ok(other.await.unwrap()),
    );
    assert!(long.contains("dana: the queue is stuck"), "{long}");
    assert!(short.contains("dana: the queue is stuck"), "{short}");
    assert!(!other.contains("the queue is stuck"), "{other}");

    // A message for wifi while nobody listens there: held for wifi only, and dropped, with the
    // user told, when wifi ends.
    ok(agent.user(&["say", "--session", "wifi", "only for wifi"]));
    let printer = ok(tether(
        &ns,
        &["chat", "printer", "--message", "x", "--wait", "3s"],
    ));
    assert!(!printer.contains("only for wifi"), "{printer}");
    ok(tether(&ns, &["end", "wifi"]));
    eventually("the user is told", PATIENCE, || async {
        chat_log(&agent)
            .contains("Your message \\\"only for wifi\\\" was not delivered")
            .then_some(())
    })
    .await;
    session(
        &cluster,
        "later",
        serde_json::json!({"device": "kiosk", "mode": "Interactive"}),
    )
    .await;
    wait_phase(&cluster, "later", SessionPhase::Pending).await;
    let later = ok(tether(
        &ns,
        &["chat", "later", "--message", "x", "--wait", "3s"],
    ));
    assert!(!later.contains("only for wifi"), "{later}");

    // Positive control: a message held for a live session reaches the next chat opened on it.
    ok(agent.user(&["say", "--session", "printer", "still there?"]));
    let printer = ok(tether(
        &ns,
        &["chat", "printer", "--message", "x", "--wait", "3s"],
    ));
    assert!(printer.contains("dana: still there?"), "{printer}");
}

#[tokio::test]
async fn the_user_sees_who_is_connected_and_ends_one_session() {
    let cluster = Cluster::start("holes-end", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "ws",
        cluster.relay.port,
        &["--consent=always", "--logged-on-user=dana"],
    )
    .await;
    online(&cluster, "ws").await;
    let ns = cluster.namespace.clone();
    // `brief` is inside its last two minutes from the start: the relay counts down at once.
    for (name, duration) in [("printer", "1h"), ("wifi", "1h"), ("brief", "2m")] {
        session(
            &cluster,
            name,
            serde_json::json!({"device": "ws", "mode": "Interactive", "duration": duration}),
        )
        .await;
        wait_phase(&cluster, name, SessionPhase::Pending).await;
        ok(tether(&ns, &["files", name, "roots"]));
        wait_phase(&cluster, name, SessionPhase::Active).await;
    }

    // The user sees both sessions, who joined them and the time left.
    let status = ok(agent.user(&["status"]));
    let row = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status.starts_with("SESSION"), "{status}");
    assert!(row("printer").contains("carol"), "{status}");
    assert!(
        row("printer").contains("59m") || row("printer").contains("1h00m"),
        "{status}"
    );
    assert!(row("wifi").contains("carol"), "{status}");
    // And is told: who joined, and the countdown of the short one.
    eventually("the user is told of the countdown", PATIENCE, || async {
        let log = chat_log(&agent);
        (log.contains("carol joined remote session printer")
            && log.contains("Remote session brief ends in"))
        .then_some(())
    })
    .await;
    ok(agent.user(&["end", "brief"]));
    let done = wait_phase(&cluster, "brief", SessionPhase::Completed).await;
    assert_eq!(done.status.unwrap().reason.as_deref(), Some("EndedByUser"));

    // `end` with two live sessions names neither: refused with the list, nothing ended.
    let err = refused(&agent.user(&["end"]));
    assert!(err.contains("several remote sessions are open"), "{err}");
    assert!(err.contains("printer with carol"), "{err}");
    assert_eq!(phase(&cluster, "printer").await, Some(SessionPhase::Active));
    assert_eq!(phase(&cluster, "wifi").await, Some(SessionPhase::Active));

    // Ending one by name ends that one only.
    ok(agent.user(&["end", "printer"]));
    let done = wait_phase(&cluster, "printer", SessionPhase::Completed).await;
    assert_eq!(done.status.unwrap().reason.as_deref(), Some("EndedByUser"));
    eventually("printer leaves the status", PATIENCE, || async {
        let status = text(&agent.user(&["status"]).stdout);
        (!status.contains("printer") && status.contains("wifi")).then_some(())
    })
    .await;
    assert_eq!(phase(&cluster, "wifi").await, Some(SessionPhase::Active));

    // Positive control: with one live, `end` alone ends it.
    ok(agent.user(&["end"]));
    let done = wait_phase(&cluster, "wifi", SessionPhase::Completed).await;
    assert_eq!(done.status.unwrap().reason.as_deref(), Some("EndedByUser"));
}
