//! The data plane end to end, with real processes on loopback: operator, relay (QUIC and TLS
//! over TCP), an enrolled agent that only dials out, and `kubectl tether` as a technician.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster};
use tether_e2e::dataplane::{session, tether, wait_phase, wait_presence};
use tether_e2e::output::{ok, stderr};
use tether_e2e::{PATIENCE, control_plane, workspace_bin};

fn tether_with(ns: &str, user: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    tether_e2e::dataplane::kubectl_tether(ns, user, args, stdin)
}

#[tokio::test]
async fn enroll_consent_and_a_shell_command() {
    let cluster = Cluster::start("shell", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "laptop",
        cluster.relay.port,
        &["--consent=always", "--logged-on-user=dana"],
    )
    .await;
    let device = wait_presence(&cluster, "laptop", true, PATIENCE).await;
    let st = device.status.unwrap();
    assert_eq!(st.logged_on_users, vec!["dana"]);
    assert!(st.enrolled_at.is_some());
    assert!(st.agent_version.is_some() && st.hostname.is_some());

    session(
        &cluster,
        "help",
        serde_json::json!({"device": "laptop", "mode": "Interactive"}),
    )
    .await;
    wait_phase(&cluster, "help", SessionPhase::Pending).await;
    let out = tether(
        &cluster.namespace,
        "carol",
        &[
            "shell",
            "help",
            "--",
            "sh",
            "-c",
            "echo hello from $(hostname); echo oops >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("oops"));
    // Consent was given (scripted yes) and the session is active.
    let active = wait_phase(&cluster, "help", SessionPhase::Active).await;
    let conds = active.status.unwrap().conditions;
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Consented" && c.status == "True" && c.reason == "UserConsented")
    );
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "AgentConnected" && c.status == "True")
    );

    // Stdin reaches the command.
    let out = tether_with(
        &cluster.namespace,
        "carol",
        &["shell", "help", "--", "wc", "-c"],
        Some(b"twelve bytes"),
    );
    assert_eq!(ok(out).trim(), "12");

    // Someone RBAC does not allow to `connect` gets no certificate, so cannot connect: the
    // operator's reason reaches them.
    let out = tether(
        &cluster.namespace,
        "alice",
        &["shell", "help", "--", "true"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("user alice may not connect to RemoteSession help"),
        "{}",
        stderr(&out)
    );

    // Nothing on the device listens: no TCP listening socket belongs to the agent.
    let listening = tcp_listening_inodes();
    let agent_sockets = socket_inodes(agent.process.id());
    assert!(
        !agent_sockets.is_empty(),
        "the agent holds its outbound connection"
    );
    let both: Vec<_> = agent_sockets
        .iter()
        .filter(|i| listening.contains(i))
        .collect();
    assert!(
        both.is_empty(),
        "the agent listens on a TCP socket: {both:?}"
    );
}

/// Inodes of TCP sockets in LISTEN state.
fn tcp_listening_inodes() -> Vec<u64> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) == Some(&"0A")
                && let Some(inode) = cols.get(9).and_then(|i| i.parse().ok())
            {
                out.push(inode);
            }
        }
    }
    out
}

/// Inodes of the sockets a process holds.
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sha256_file(path: &std::path::Path) -> String {
    let mut hasher = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

#[tokio::test]
async fn files_transfer_intact_and_stay_confined() {
    let cluster = Cluster::start("files", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "server",
        cluster.relay.port,
        &["--consent=never"],
    )
    .await;
    wait_presence(&cluster, "server", true, PATIENCE).await;
    // Unattended: no consent prompt (the agent would refuse one).
    session(
        &cluster,
        "maint",
        serde_json::json!({"device": "server", "mode": "Unattended"}),
    )
    .await;
    wait_phase(&cluster, "maint", SessionPhase::Active).await;
    let ns = cluster.namespace.clone();

    // 100 MiB up and down, byte-identical.
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&big).unwrap();
        let mut state: u64 = 0x1234_5678;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..100 {
            for b in block.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let sum = sha256_file(&big);
    let out = tether(
        &ns,
        "carol",
        &["cp", big.to_str().unwrap(), "maint:/home/big.bin"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&sum),
        "progress summary with the checksum: {err}"
    );
    assert_eq!(sha256_file(&agent.home.join("big.bin")), sum);
    let back = work.path().join("back.bin");
    ok(tether(
        &ns,
        "carol",
        &["cp", "maint:/home/big.bin", back.to_str().unwrap()],
    ));
    assert_eq!(sha256_file(&back), sum);

    // Every file operation once.
    std::fs::write(agent.home.join("notes.txt"), "first draft").unwrap();
    let files = |args: &[&str]| {
        let mut all = vec!["files", "maint"];
        all.extend_from_slice(args);
        tether(&ns, "carol", &all)
    };
    assert!(ok(files(&["roots"])).contains("/home"));
    ok(files(&["mkdir", "-p", "/home/reports/2026"]));
    ok(files(&[
        "cp",
        "/home/notes.txt",
        "/home/reports/notes-copy.txt",
    ]));
    ok(files(&[
        "rename",
        "/home/reports/notes-copy.txt",
        "/home/reports/copy.txt",
    ]));
    ok(files(&[
        "mv",
        "/home/reports/copy.txt",
        "/home/reports/2026/moved.txt",
    ]));
    let listing = ok(files(&["ls", "/home/reports/2026"]));
    assert!(
        listing.contains("/home/reports/2026/moved.txt"),
        "{listing}"
    );
    assert!(ok(files(&["stat", "/home/notes.txt"])).contains("11"));
    assert!(ok(files(&["find", "/home", "MOVED"])).contains("moved.txt"));
    ok(files(&["zip", "/home/reports.zip", "/home/reports"]));
    assert!(agent.home.join("reports.zip").metadata().unwrap().len() > 0);
    let local_zip = work.path().join("reports.zip");
    ok(files(&[
        "get",
        "/home/reports.zip",
        local_zip.to_str().unwrap(),
    ]));
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&local_zip).unwrap()).unwrap();
    assert!(archive.by_name("reports/2026/moved.txt").is_ok());
    let upload = work.path().join("upload.txt");
    std::fs::write(&upload, "uploaded").unwrap();
    ok(files(&[
        "put",
        upload.to_str().unwrap(),
        "/home/uploaded.txt",
    ]));
    assert_eq!(
        std::fs::read_to_string(agent.home.join("uploaded.txt")).unwrap(),
        "uploaded"
    );
    let again = files(&["put", upload.to_str().unwrap(), "/home/uploaded.txt"]);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    ok(files(&["rm", "-r", "/home/reports"]));
    assert!(!agent.home.join("reports").exists());

    // Edit: download, change, upload only if unchanged on the device meanwhile.
    let edit = Command::new("sh").arg("-c").arg("true").status().unwrap();
    assert!(edit.success());
    let editor_ok = tether_env(
        &ns,
        &["files", "maint", "edit", "/home/notes.txt"],
        &[("EDITOR", "sed -i s/first/final/")],
    );
    ok(editor_ok);
    assert_eq!(
        std::fs::read_to_string(agent.home.join("notes.txt")).unwrap(),
        "final draft"
    );
    let home = agent.home.display().to_string();
    let conflict = tether_env(
        &ns,
        &["files", "maint", "edit", "/home/notes.txt"],
        &[(
            "EDITOR",
            &format!("sh -c 'echo changed-on-device > {home}/notes.txt; echo mine > \"$0\"'"),
        )],
    );
    assert!(!conflict.status.success());
    assert!(
        stderr(&conflict).contains("changed on the device since it was downloaded"),
        "{}",
        stderr(&conflict)
    );

    // Escapes are refused with a clear error.
    std::os::unix::fs::symlink("/etc", agent.home.join("etc-link")).unwrap();
    for (path, expected) in [
        ("/home/../../etc/passwd", "'..' is not allowed"),
        ("/home/etc-link/passwd", "symbolic link leads outside"),
    ] {
        let out = files(&["get", path, work.path().join("x").to_str().unwrap()]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(expected), "{path}: {}", stderr(&out));
    }

    // The process list and kill (the task manager).
    let mut victim = Command::new("sleep").arg("300").spawn().unwrap();
    let ps = ok(tether(&ns, "carol", &["ps", "maint"]));
    assert!(
        ps.contains(&victim.id().to_string()) && ps.contains("sleep 300"),
        "{ps}"
    );
    ok(tether(
        &ns,
        "carol",
        &["kill", "maint", &victim.id().to_string()],
    ));
    assert!(!victim.wait().unwrap().success());

    let metrics = cluster.relay.metrics().await;
    assert!(
        metrics.contains("tether_relay_bytes_total{direction=\"to_agent\",kind=\"files\"}"),
        "{metrics}"
    );
}

fn tether_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cp = control_plane();
    let bin_dir = workspace_bin("kubectl-tether")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("kubectl")
        .arg("tether")
        .args(["--context", "carol", "-n", ns])
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig())
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test]
async fn chat_both_ways_with_files() {
    let cluster = Cluster::start("chat", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "kiosk",
        cluster.relay.port,
        &["--consent=always", "--logged-on-user=dana"],
    )
    .await;
    wait_presence(&cluster, "kiosk", true, PATIENCE).await;
    session(&cluster, "talk", serde_json::json!({"device": "kiosk"})).await;
    wait_phase(&cluster, "talk", SessionPhase::Pending).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("fix.sh");
    std::fs::write(&file, "#!/bin/sh\necho fixed\n").unwrap();

    // The user queues a message and a file before the technician connects.
    let screenshot = work.path().join("screenshot.png");
    std::fs::write(&screenshot, vec![7u8; 50_000]).unwrap();
    assert!(
        agent
            .user(&["say", "hi, the printer is stuck"])
            .status
            .success()
    );
    assert!(
        agent
            .user(&["send-file", screenshot.to_str().unwrap()])
            .status
            .success()
    );

    let downloads = work.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let out = tether(
        &cluster.namespace,
        "carol",
        &[
            "chat",
            "talk",
            "--message",
            "hello, looking now",
            "--send-file",
            file.to_str().unwrap(),
            "--wait",
            "3s",
            "--download-dir",
            downloads.to_str().unwrap(),
        ],
    );
    let stdout = ok(out);
    assert!(
        stdout.contains("dana: hi, the printer is stuck"),
        "{stdout}"
    );
    assert!(stdout.contains("dana sent screenshot.png"), "{stdout}");
    assert_eq!(
        std::fs::read(downloads.join("screenshot.png")).unwrap(),
        vec![7u8; 50_000]
    );
    let log = std::fs::read_to_string(agent.state.join("chat.log")).unwrap();
    assert!(log.contains("hello, looking now"), "{log}");
    assert_eq!(
        std::fs::read_to_string(agent.state.join("inbox/fix.sh")).unwrap(),
        "#!/bin/sh\necho fixed\n"
    );
}
