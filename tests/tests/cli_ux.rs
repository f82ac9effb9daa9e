//! What a new user meets in `kubectl tether`, end to end with real processes: reaching the
//! cluster and the relay through an HTTP proxy and without UDP, the exit statuses `shell`
//! documents, where a shell starts, file names found by glob and renamed by bare name, and
//! output that says what it shows.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use kube::api::Api;
use tether_crds::Device;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster};
use tether_e2e::dataplane::{session, wait_phase};
use tether_e2e::output::{ok, stderr, stdout};
use tether_e2e::{PATIENCE, control_plane, eventually, workspace_bin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `kubectl tether …` as carol (a technician) in `ns`, with `env` set and no proxy settings
/// but those given.
fn tether_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    tether_as(ns, "carol", args, env)
}

fn tether_as(ns: &str, user: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
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
    let mut cmd = Command::new("kubectl");
    cmd.arg("tether")
        .args(["--context", user, "-n", ns])
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig());
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
        "XDG_CACHE_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// [`tether_env`] off the test's runtime threads, so the in-test proxy keeps serving.
async fn tether_async(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (ns, args, env) = (
        ns.to_owned(),
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        tether_env(&ns, &args, &env)
    })
    .await
    .unwrap()
}

async fn wait_online(cluster: &Cluster, device: &str) {
    let admin = control_plane().client("admin").await.unwrap();
    let api: Api<Device> = Api::namespaced(admin, &cluster.namespace);
    eventually(&format!("{device} is Online"), PATIENCE, || {
        let api = api.clone();
        async move {
            let d = api.get(device).await.ok()?;
            (format!("{:?}", d.status?.presence?) == "Online").then_some(())
        }
    })
    .await;
}

/// A minimal HTTP CONNECT proxy that notes every tunnel's target.
async fn proxy() -> (u16, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut words = head.split_whitespace();
                if words.next() != Some("CONNECT") {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                }
                let target = words.next().unwrap_or_default().to_owned();
                log.lock().unwrap().push(target.clone());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, seen, task)
}

/// `host:port` of the API server.
fn api_server() -> String {
    let server = control_plane().server().to_owned();
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_behind_a_proxy_on_a_network_without_udp() {
    // A relay without QUIC stands for a network that drops UDP.
    let cluster = Cluster::start("ux-proxy", &["--no-quic"]).await;
    let ns = cluster.namespace.clone();
    let agent =
        Agent::enroll_and_run(&ns, "laptop", cluster.relay.port, &["--consent=always"]).await;
    wait_online(&cluster, "laptop").await;
    session(
        &cluster,
        "help",
        serde_json::json!({"device": "laptop", "mode": "Unattended", "technicians": {"users": ["carol"]}}),
    )
    .await;
    wait_phase(&cluster, "help", SessionPhase::Active).await;
    let relay = format!("127.0.0.1:{}", cluster.relay.port);
    let api = api_server();
    let (proxy_port, seen, proxy_task) = proxy().await;
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap().to_owned();

    // HTTPS_PROXY carries both the API server's and the relay's connections, and QUIC getting
    // no answer does not stop the command.
    let out = tether_async(
        &ns,
        &["shell", "help", "--", "sh", "-c", "echo via-proxy"],
        &[("HTTPS_PROXY", &proxy_url), ("XDG_CACHE_HOME", &cache_dir)],
    )
    .await;
    assert_eq!(ok(out).trim(), "via-proxy");
    let targets = std::mem::take(&mut *seen.lock().unwrap());
    assert!(targets.contains(&api), "{targets:?}");
    assert!(targets.contains(&relay), "{targets:?}");
    // The command remembered that UDP does not get through to this relay.
    let memory =
        std::fs::read_to_string(cache.path().join("tether").join("udp-blocked.json")).unwrap();
    assert!(memory.contains(&relay), "{memory}");
    // The next command, going straight to TCP, works too.
    let out = tether_async(
        &ns,
        &["shell", "help", "--", "true"],
        &[("HTTPS_PROXY", &proxy_url), ("XDG_CACHE_HOME", &cache_dir)],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // NO_PROXY is checked against the host dialled: the API server excluded, the relay not.
    seen.lock().unwrap().clear();
    let out = tether_async(
        &ns,
        &["shell", "help", "--", "true"],
        &[
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", &api),
            ("XDG_CACHE_HOME", &cache_dir),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let targets = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(targets, vec![relay.clone()]);

    // --proxy for the relay alone: without HTTPS_PROXY the API server is dialled directly.
    let out = tether_async(
        &ns,
        &["shell", "help", "--proxy", &proxy_url, "--", "true"],
        &[("XDG_CACHE_HOME", &cache_dir)],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let targets = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(targets, vec![relay.clone()]);

    // A proxy that is not there: the command fails, naming the proxy (never its password).
    let dead = format!("127.0.0.1:{}", tether_e2e::free_port());
    let out = tether_async(
        &ns,
        &[
            "shell",
            "help",
            "--transport",
            "tcp",
            "--proxy",
            &format!("http://user:secret@{dead}"),
            "--",
            "true",
        ],
        &[("XDG_CACHE_HOME", &cache_dir)],
    )
    .await;
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("HTTP proxy http://{dead}")), "{err}");
    assert!(!err.contains("secret"), "{err}");
    // `--proxy none` goes direct, whatever the environment says.
    let out = tether_async(
        &ns,
        &["shell", "help", "--proxy", "none", "--", "true"],
        &[
            ("HTTPS_PROXY", &format!("http://{dead}")),
            ("NO_PROXY", &api),
            ("XDG_CACHE_HOME", &cache_dir),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    drop(agent);
    proxy_task.abort();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_new_user_sees() {
    let cluster = Cluster::start("ux", &[]).await;
    let ns = cluster.namespace.clone();
    let agent = Agent::enroll_and_run(&ns, "pc", cluster.relay.port, &["--consent=always"]).await;
    wait_online(&cluster, "pc").await;
    session(
        &cluster,
        "help",
        serde_json::json!({"device": "pc", "mode": "Unattended", "duration": "30m"}),
    )
    .await;
    wait_phase(&cluster, "help", SessionPhase::Active).await;
    let run = |args: &[&str]| tether_env(&ns, args, &[]);

    // Exit statuses: the command's own, 128+N for a signal, 255 when there is none.
    assert_eq!(run(&["shell", "help", "--", "true"]).status.code(), Some(0));
    assert_eq!(
        run(&["shell", "help", "--", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let out = run(&["shell", "help", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("killed by SIGTERM"),
        "{}",
        stderr(&out)
    );
    let out = run(&["shell", "nosuch", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    // Other commands: 1 on failure.
    let out = run(&["files", "nosuch", "roots"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // A shell starts in the files root, not in the agent's working directory.
    let pwd = ok(run(&["shell", "help", "--", "pwd"]));
    assert_eq!(
        Path::new(pwd.trim()).canonicalize().unwrap(),
        agent.home.canonicalize().unwrap()
    );

    // `files find` takes a glob matched against whole names; a plain word is part of a name.
    write(&agent.home.join("a.txt"), "a");
    write(&agent.home.join("notes.txt.bak"), "b");
    write(&agent.home.join("docs").join("Report.TXT"), "c");
    write(&agent.home.join("docs").join("b.md"), "d");
    let found = ok(run(&["files", "help", "find", "/home", "*.txt"]));
    assert!(found.contains("/home/a.txt"), "{found}");
    assert!(found.contains("/home/docs/Report.TXT"), "{found}");
    assert!(!found.contains("notes.txt.bak"), "{found}");
    assert!(!found.contains("b.md"), "{found}");
    let found = ok(run(&["files", "help", "find", "/home", "notes"]));
    assert!(found.contains("notes.txt.bak"), "{found}");

    // `files rename` takes a bare new name, in the same directory.
    let renamed = ok(run(&[
        "files",
        "help",
        "rename",
        "/home/docs/Report.TXT",
        "final.txt",
    ]));
    assert!(renamed.contains("/home/docs/final.txt"), "{renamed}");
    assert!(agent.home.join("docs").join("final.txt").is_file());
    assert!(!agent.home.join("docs").join("Report.TXT").exists());

    // `list` says it lists requests; `list --sessions` lists sessions, time left for people.
    let out = run(&["list"]);
    assert!(
        stderr(&out).contains("AssistanceRequests in namespace"),
        "{}",
        stderr(&out)
    );
    let out = tether_as(&ns, "admin", &["list", "--sessions"], &[]);
    let sessions = ok(out);
    let row = sessions.lines().find(|l| l.starts_with("help ")).unwrap();
    let left = row.split_whitespace().nth(4).unwrap();
    assert!(
        left.ends_with('s') && left.contains('m') && left.len() <= 6,
        "{sessions}"
    );

    // `describe`'s timeline: every time the same width, every column aligned.
    let described = ok(tether_as(&ns, "admin", &["describe", "help"], &[]));
    let timeline: Vec<&str> = described
        .lines()
        .skip_while(|l| !l.starts_with("Timeline:"))
        .skip(1)
        .collect();
    assert!(timeline.len() >= 2, "{described}");
    let object_at: Vec<usize> = timeline
        .iter()
        .map(|l| l.find("help").unwrap_or(0))
        .collect();
    assert!(
        object_at.iter().all(|c| *c == object_at[0] && *c > 0),
        "{described}"
    );

    // Help that says what commands take and where flags go.
    let help = ok(run(&["end", "--help"]));
    assert!(help.contains("End RemoteSession NAME"), "{help}");
    let help = ok(run(&["--help"]));
    assert!(help.contains("Exit status:"), "{help}");
    let agent_help = Command::new(workspace_bin("tether-agent"))
        .args(["help", "--help"])
        .output()
        .unwrap();
    assert!(agent_help.status.success(), "{}", stderr(&agent_help));
    assert!(stdout(&agent_help).contains("Usage: tether-agent"));

    // The session ending mid-command: 255, and stderr says why. By the user on the device…
    let ns2 = ns.clone();
    let shell = tokio::task::spawn_blocking(move || {
        tether_env(&ns2, &["shell", "help", "--", "sleep", "64"], &[])
    });
    eventually("the remote sleep runs", PATIENCE, || async {
        let out = Command::new("pgrep")
            .args(["-f", "^sleep 64$"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    assert!(agent.user(&["end"]).status.success());
    let out = shell.await.unwrap();
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(stderr(&out).contains("EndedByUser"), "{}", stderr(&out));
    // …and at its expiry.
    session(
        &cluster,
        "short",
        serde_json::json!({"device": "pc", "mode": "Unattended", "duration": "15s"}),
    )
    .await;
    wait_phase(&cluster, "short", SessionPhase::Active).await;
    let out = run(&["shell", "short", "--", "sleep", "65"]);
    assert_eq!(out.status.code(), Some(255), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the session ended (Expired)"),
        "{}",
        stderr(&out)
    );
}
