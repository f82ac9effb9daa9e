//! Agents staying reachable, end to end with real processes: an agent falls back to TLS over
//! TCP when UDP is blocked and comes back after a relay restart, and an agent that vanishes
//! without a word goes Offline within thirty seconds.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use std::process::Command;
use std::time::{Duration, Instant};

use tether_crds::remote_session::SessionPhase;
use tether_e2e::dataplane::{Agent, Cluster, session, tether, wait_phase, wait_presence};
use tether_e2e::output::ok;
use tether_e2e::{PATIENCE, eventually};

#[tokio::test]
async fn agents_fall_back_to_tcp_and_come_back_after_a_relay_restart() {
    // A relay that offers no QUIC stands for a network that drops UDP: the agent, trying
    // QUIC first, falls back to TLS over TCP.
    let cluster = Cluster::start("fallback", &["--no-quic"]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "branch",
        cluster.relay.port,
        &["--consent=always", "--quic-timeout=1s"],
    )
    .await;
    wait_presence(&cluster, "branch", true, PATIENCE).await;
    let metrics = cluster.relay.metrics().await;
    assert!(
        metrics.contains("tether_relay_connections_total{role=\"agent\",transport=\"tcp\"} 1"),
        "{metrics}"
    );
    session(
        &cluster,
        "via-tcp",
        serde_json::json!({"device": "branch", "mode": "Unattended"}),
    )
    .await;
    wait_phase(&cluster, "via-tcp", SessionPhase::Active).await;
    let out = tether(
        &cluster.namespace,
        "carol",
        &[
            "shell",
            "via-tcp",
            "--transport",
            "tcp",
            "--",
            "echo",
            "over tcp",
        ],
    );
    assert_eq!(ok(out).trim(), "over tcp");

    // The relay crashes: the Device goes offline; it comes back and the agent reconnects.
    let Cluster {
        operator,
        relay,
        namespace,
    } = cluster;
    let relay = relay.restart(true).await;
    let cluster = Cluster {
        operator,
        relay,
        namespace,
    };
    wait_presence(&cluster, "branch", true, PATIENCE).await;
    eventually("the agent reconnected", PATIENCE, || async {
        let m = cluster.relay.metrics().await;
        m.contains("tether_relay_agents 1").then_some(())
    })
    .await;
    let out = tether(
        &cluster.namespace,
        "carol",
        &["shell", "via-tcp", "--", "echo", "back"],
    );
    assert_eq!(ok(out).trim(), "back");

    // A graceful relay shutdown tells the agent, which shows as offline at once.
    let Cluster {
        operator,
        mut relay,
        namespace,
    } = cluster;
    relay.process.terminate(Duration::from_secs(20));
    let cluster = Cluster {
        operator,
        relay,
        namespace,
    };
    wait_presence(&cluster, "branch", false, Duration::from_secs(5)).await;
    let log = std::fs::read_to_string(agent.process.log_path()).unwrap_or_default();
    assert!(
        log.contains("the relay said goodbye") || log.contains("Disconnected"),
        "{log}"
    );
}

#[tokio::test]
async fn a_silently_vanished_agent_goes_offline_within_thirty_seconds() {
    let cluster = Cluster::start("silent", &[]).await;
    let agent = Agent::enroll_and_run(
        &cluster.namespace,
        "laptop",
        cluster.relay.port,
        &["--consent=always"],
    )
    .await;
    wait_presence(&cluster, "laptop", true, PATIENCE).await;
    // Frozen: no packets, no goodbye, like a laptop lid closing or a cable pulled.
    let pid = agent.process.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let frozen = Instant::now();
    wait_presence(&cluster, "laptop", false, Duration::from_secs(45)).await;
    let took = frozen.elapsed();
    eprintln!("a silent agent was marked offline after {took:?}");
    assert!(took <= Duration::from_secs(30), "offline after {took:?}");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    // Thawed, it reconnects.
    wait_presence(&cluster, "laptop", true, PATIENCE).await;
}
