//! Relays that scale out, as processes: three replicas share the operator's relay certificate;
//! the device's agent is attached to one, the technician reaches another (the address the
//! operator hands out), and is forwarded to the replica the Device names, over a connection
//! the replicas authenticate with their certificate. Forwarding is for relays only: a
//! technician who claims to be forwarded, or a relay forwarding a certificate the cluster
//! did not issue, is refused.

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
    let port = free_port();
    let peer = format!("--peer-address=127.0.0.1:{port}");
    Relay::start(port, &[peer.as_str()]).await
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
