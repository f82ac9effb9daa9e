//! Relays that scale out, as processes: three replicas share the operator's relay certificate;
//! the device's agent is attached to one, the technician reaches another (the address the
//! operator hands out), and is forwarded to the replica the Device names, over a connection
//! the replicas authenticate with their certificate. Forwarding is for relays only: a
//! technician who claims to be forwarded, or a relay forwarding a certificate the cluster
//! did not issue, is refused. A replica that goes away (SIGTERM, as when its pod is deleted
//! or its node drained) lets its live session finish within its grace, then its agent moves to
//! another replica and the technician's shell joins again by itself.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, Relay, tether};
use tether_e2e::output::stderr;
use tether_e2e::technician::{self, certificate, connect, hello};
use tether_e2e::{PATIENCE, SYSTEM_NAMESPACE, control_plane, eventually, free_port};
use tether_proto::message::Forwarded;

/// Replica `relay-<port>` on a port of its own, reachable by the others there.
async fn replica() -> Relay {
    replica_with(&[]).await
}

/// [`replica`] with `extra` flags.
async fn replica_with(extra: &[&str]) -> Relay {
    let port = free_port();
    let peer = format!("--peer-address=127.0.0.1:{port}");
    let mut args = vec![peer.as_str()];
    args.extend_from_slice(extra);
    Relay::start(port, &args).await
}

/// Sends SIGTERM to a process, as the kubelet does to a pod being deleted.
fn sigterm(process: &tether_e2e::ManagedProcess) {
    let pid = process.id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A running `kubectl tether` with its input piped in and its output gathered.
struct Live {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Live {
    fn start(ns: &str, user: &str, args: &[&str]) -> Self {
        use std::process::Stdio;
        let mut child = tether_e2e::dataplane::kubectl_tether_command(ns, user, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let gather = |mut from: Box<dyn std::io::Read + Send>| {
            let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let into = text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    into.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            text
        };
        let stdout = gather(Box::new(child.stdout.take().unwrap()));
        let stderr = gather(Box::new(child.stderr.take().unwrap()));
        let stdin = child.stdin.take().unwrap();
        Self {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    async fn wait_output(&mut self, what: &str) {
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let found = eventually(&format!("the shell printed {what}"), PATIENCE, || {
            let stdout = stdout.clone();
            let exited = self.child.try_wait().ok().flatten().is_some();
            async move {
                if stdout.lock().unwrap().contains(what) {
                    return Some(true);
                }
                exited.then_some(false)
            }
        })
        .await;
        assert!(
            found,
            "the shell exited before printing {what}: {}{}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        );
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the Device says its agent is attached to `relay` at `address`.
async fn attached_to(ns: &str, device: &str, relay: &Relay) {
    let admin = control_plane().client("admin").await.unwrap();
    let api: Api<tether_crds::Device> = Api::namespaced(admin, ns);
    let (name, address) = (
        format!("relay-{}", relay.port),
        format!("127.0.0.1:{}", relay.port),
    );
    eventually(&format!("{device} is attached to {name}"), PATIENCE, || {
        let api = api.clone();
        let (name, address) = (name.clone(), address.clone());
        async move {
            let status = api.get(device).await.ok()?.status?;
            (status.presence == Some(tether_crds::device::Presence::Online)
                && status.relay.as_deref() == Some(name.as_str())
                && status.relay_address.as_deref() == Some(address.as_str()))
            .then_some(())
        }
    })
    .await;
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_technician_reaching_any_replica_reaches_the_device_on_another() {
    // The cluster's relay is the replica technicians are sent to; the agent is on another.
    let cluster = Cluster::start("peers", &[]).await;
    let ns = cluster.namespace.clone();
    let (b, c) = (replica().await, replica().await);
    let _agent = Agent::enroll_and_run(&ns, "till", b.port, &["--consent=always"]).await;
    attached_to(&ns, "till", &b).await;
    cluster
        .apply_session(
            "help",
            serde_json::json!({"device": "till", "mode": "Interactive"}),
        )
        .await;
    cluster.wait_phase("help", SessionPhase::Pending).await;

    let out = tether(
        &ns,
        "carol",
        &[
            "shell",
            "help",
            "--",
            "sh",
            "-c",
            "echo forwarded to $0",
            "replica",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("forwarded to replica"),
        "{}",
        stderr(&out)
    );
    // The first replica carried it; the one the device is on seated the technician (consent,
    // the session's conditions) as for a direct connection; the third saw nothing.
    assert_eq!(
        counter(
            &cluster.relay.metrics().await,
            "tether_relay_forwarded_total"
        ),
        1
    );
    let seated = b.process.log_tail(400);
    assert!(
        seated.contains("Joined a technician to a session"),
        "{seated}"
    );
    assert_eq!(
        counter(&c.metrics().await, "tether_relay_forwarded_total"),
        0
    );
    let active = cluster.wait_phase("help", SessionPhase::Active).await;
    assert!(
        active
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Consented" && c.status == "True")
    );

    // A second command through the third replica: any replica will do.
    let port_c = c.port.to_string();
    let out = tether(
        &ns,
        "carol",
        &[
            "shell",
            "help",
            "--relay",
            &format!("127.0.0.1:{port_c}"),
            "--",
            "echo",
            "again",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("again"));
    assert_eq!(
        counter(&c.metrics().await, "tether_relay_forwarded_total"),
        1
    );
}

#[tokio::test]
async fn only_relays_forward_and_only_certificates_the_cluster_issued() {
    let cluster = Cluster::start("peer-abuse", &[]).await;
    let ns = cluster.namespace.clone();
    let b = replica().await;
    let _agent = Agent::enroll_and_run(&ns, "kiosk", b.port, &[]).await;
    attached_to(&ns, "kiosk", &b).await;
    cluster
        .apply_session(
            "maint",
            serde_json::json!({"device": "kiosk", "mode": "Unattended", "duration": "30m"}),
        )
        .await;
    cluster.wait_phase("maint", SessionPhase::Active).await;
    let carol = certificate("carol", &ns, "maint").await.unwrap().unwrap();

    // A technician who claims to be forwarded (by a relay it is not) is refused, even with
    // a valid certificate of its own to forward.
    let forged = tether_proto::message::Hello {
        forwarded: Some(Forwarded {
            certificate: carol.cert.clone(),
            relay: "relay-elsewhere".into(),
            transport: "quic".into(),
        }),
        ..hello(None, None)
    };
    let raw = connect(b.port, Some(&carol), &forged).await.unwrap();
    let refusal = raw.refusal().unwrap();
    assert!(
        refusal.contains("only relays forward technicians"),
        "{refusal}"
    );

    // With the relays' own certificate (read from its Secret, as only an administrator or
    // the relay can), forwarding works for a certificate the cluster issued…
    let admin = control_plane().client("admin").await.unwrap();
    let secret = Api::<Secret>::namespaced(admin, SYSTEM_NAMESPACE)
        .get("tether-relay-tls")
        .await
        .unwrap();
    let text = |key: &str| String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap();
    let relay_identity = technician::Certificate {
        cert: text("tls.crt"),
        key: text("tls.key"),
        ca: technician::ca_bundle().await.unwrap(),
    };
    let forwarded = |certificate: String| tether_proto::message::Hello {
        forwarded: Some(Forwarded {
            certificate,
            relay: "relay-front".into(),
            transport: "quic".into(),
        }),
        ..hello(None, None)
    };
    let raw = connect(
        b.port,
        Some(&relay_identity),
        &forwarded(carol.cert.clone()),
    )
    .await
    .unwrap();
    assert!(raw.welcomed(), "{:?}", raw.refusal());
    raw.conn.close("done");

    // …and not for one it did not: a certificate signed by another CA, or no certificate.
    let stranger_ca = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    for (what, chain) in [
        ("a certificate of another CA", stranger_ca.pem()),
        ("no certificate", String::new()),
        (
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        ),
    ] {
        let raw = connect(b.port, Some(&relay_identity), &forwarded(chain))
            .await
            .unwrap();
        let refusal = raw
            .refusal()
            .unwrap_or_else(|_| panic!("{what} was welcomed"));
        assert!(
            refusal.contains("forwarded technician certificate does not verify"),
            "{what}: {refusal}"
        );
    }
    // The agent's replica never forwarded anything: the forwarded connections were seated
    // there or refused.
    assert_eq!(
        counter(&b.metrics().await, "tether_relay_forwarded_total"),
        0
    );
    let refused = b.metrics().await;
    assert!(
        refused.contains("reason=\"forwarded_by_non_relay\""),
        "{refused}"
    );
}

#[tokio::test]
async fn a_replica_going_away_moves_its_agent_and_the_shell_goes_on() {
    // Technicians come in through the cluster's relay (A); the agent is on B and knows B, C
    // and A, in that order.
    let cluster = Cluster::start("moving", &[]).await;
    let ns = cluster.namespace.clone();
    let grace = "--drain-grace=3s";
    let (mut b, mut c) = (replica_with(&[grace]).await, replica_with(&[grace]).await);
    let relays = format!(
        "--relay=127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        b.port, c.port, cluster.relay.port
    );
    let agent = Agent::enroll_and_run(&ns, "kiosk", b.port, &["--consent=always", &relays]).await;
    attached_to(&ns, "kiosk", &b).await;
    cluster
        .apply_session(
            "desk",
            serde_json::json!({"device": "kiosk", "mode": "Interactive"}),
        )
        .await;
    cluster.wait_phase("desk", SessionPhase::Pending).await;

    // A login shell, typed into.
    let mut shell = Live::start(&ns, "carol", &["shell", "desk"]);
    shell.type_line("echo one-$((1+1))");
    shell.wait_output("one-2").await;
    cluster.wait_phase("desk", SessionPhase::Active).await;

    // B is told to stop while carol's shell is live on it: it serves the session for its
    // grace, then lets go; the agent moves on to C and the shell joins again by itself.
    let stopped = std::time::Instant::now();
    sigterm(&b.process);
    attached_to(&ns, "kiosk", &c).await;
    let moved = stopped.elapsed();
    println!("agent on the next replica {moved:?} after SIGTERM (grace 3 s)");
    let drained = b.process.log_tail(400);
    assert!(
        drained.contains("The drain's grace is over"),
        "B let go of its live session early:\n{drained}"
    );
    assert!(
        moved >= std::time::Duration::from_secs(3),
        "the live session did not get its grace: {moved:?}"
    );
    shell.type_line("echo two-$((2+2))");
    shell.wait_output("two-4").await;
    let said = shell.stderr();
    assert!(said.contains("connected again"), "{said}");
    assert!(said.contains("a new shell was started"), "{said}");
    // The session went on: still Active, never ended by the move.
    let session = cluster.wait_phase("desk", SessionPhase::Active).await;
    assert!(
        !session
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ended" && c.status == "True")
    );
    let agent_log = std::fs::read_to_string(agent.process.log_path()).unwrap_or_default();
    let on_c = format!("Connected to the relay relay=127.0.0.1:{}", c.port);
    assert!(agent_log.contains(&on_c), "{agent_log}");
    let _ = b.process.terminate(PATIENCE);

    // No session is live on C: SIGTERM there moves the agent at once (to A, next in its
    // list), and C stops without waiting out its grace.
    shell.type_line("exit");
    let exited = eventually("the shell exits", PATIENCE, || {
        let status = shell.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(exited.success(), "{}", shell.stderr());
    let stopped = std::time::Instant::now();
    sigterm(&c.process);
    let admin = control_plane().client("admin").await.unwrap();
    let devices: Api<tether_crds::Device> = Api::namespaced(admin, &ns);
    let a_name = format!("relay-{}", cluster.relay.port);
    eventually("kiosk is attached to A", PATIENCE, || {
        let devices = devices.clone();
        let a_name = a_name.clone();
        async move {
            let status = devices.get("kiosk").await.ok()?.status?;
            (status.presence == Some(tether_crds::device::Presence::Online)
                && status.relay.as_deref() == Some(a_name.as_str()))
            .then_some(())
        }
    })
    .await;
    let moved = stopped.elapsed();
    println!("idle agent on the next replica {moved:?} after SIGTERM");
    assert!(
        moved < std::time::Duration::from_secs(5),
        "the idle agent took {moved:?} to move"
    );
    let status = c.process.terminate(PATIENCE);
    let drained = c.process.log_tail(400);
    assert!(
        drained.contains("Told an agent to move") && !drained.contains("grace is over"),
        "{status}:\n{drained}"
    );
    // And A serves it directly.
    let out = tether(&ns, "carol", &["shell", "desk", "--", "echo", "on-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("on-a"));
}
