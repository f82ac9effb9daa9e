//! Relays that scale out: any replica takes a technician, wherever the device's agent is
//! attached. A replica whose own agents do not include the session's device looks the Device
//! up (its `status.relay` and `status.relayAddress`, written by the replica the agent is on)
//! and forwards the technician's connection there over a connection of its own, mutually
//! authenticated with the relays' certificate ([`tether_transport::peer`]); every stream the
//! technician opens is carried frame by frame, and the replica the device is on admits,
//! seats, records and ends the session as for a direct connection. One hop at most: a
//! forwarded technician is never forwarded again.
//!
//! Why forwarding and not redirecting the technician: replicas sit behind one Service
//! address, and their pod addresses are not reachable from where technicians are.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::Api;
use rustls::pki_types::CertificateDer;
use tether_crds::contract::relay_certificate;
use tether_crds::device::Presence;
use tether_proto::message::{Attach, Forwarded, Hello, RefusalCode};
use tether_transport::{Connection, Dial, FrameReader, FrameWriter, Prefer, framed};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::env::Env;
use crate::link::{ControlLink, Refusal, refuse};

/// How long reaching another replica may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The client side of relay-to-relay connections: the relay's own certificate, as a client.
/// Empty until the relay's certificate is loaded; replaced when it rotates.
#[derive(Clone, Default)]
pub struct PeerTls(Arc<RwLock<Option<Arc<rustls::ClientConfig>>>>);

impl PeerTls {
    /// Uses the relay certificate `cert_pem`/`key_pem` and trusts `ca_bundle` from now on.
    pub fn set(&self, ca_bundle: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let config = tether_transport::peer::client_config(
            ca_bundle,
            cert_pem,
            key_pem,
            relay_certificate::PEER_URI,
        )
        .map_err(|e| format!("{e:#}"))?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(config));
        Ok(())
    }

    fn get(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A certificate chain as PEM, leaf first.
pub fn pem_chain(chain: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut pem = String::new();
    for cert in chain {
        let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}

/// Whether a verified client certificate is a relay's.
pub fn is_relay(certificate: &CertificateDer<'_>) -> bool {
    tether_transport::tls::has_uri(certificate, relay_certificate::PEER_URI)
}

/// The replica a device's agent is attached to, as its Device says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The replica's name.
    pub relay: String,
    /// Where replicas reach it (`host:port`).
    pub address: String,
}

/// Where another replica says the device's agent is: `None` when the Device is not online,
/// names this relay, or gives no address to reach its relay at.
pub async fn locate(env: &Env, namespace: &str, device: &str) -> Option<Located> {
    let cluster = env.cluster.as_ref()?;
    let api: Api<tether_crds::Device> = Api::namespaced(cluster.client().clone(), namespace);
    let status = match api.get_opt(device).await {
        Ok(found) => found?.status?,
        Err(e) => {
            warn!(error = %e, namespace, device, "Failed to read a Device to find its relay");
            return None;
        }
    };
    let relay = status.relay?;
    let online = status.presence == Some(Presence::Online);
    (online && relay != env.settings.name).then_some(())?;
    Some(Located {
        relay,
        address: status.relay_address?,
    })
}

/// Carries a technician's connection to the replica `to` until either side ends it. The
/// technician's hello is passed on with their certificate chain (`chain`, PEM): the replica
/// the device is on verifies it and decides everything; this one only proved that the
/// technician holds the certificate's key.
pub async fn forward(
    env: &Arc<Env>,
    technician: Connection,
    link: ControlLink,
    hello: Hello,
    chain: String,
    to: Located,
) {
    let ControlLink { reader, writer } = link;
    let Some(tls) = env.peer_tls.get() else {
        let refusal = Refusal::new(
            RefusalCode::Unavailable,
            "the device is attached to another relay replica, which this one cannot reach yet",
            "peer_unavailable",
        );
        refuse(&technician, writer, &env.metrics, refusal).await;
        return;
    };
    let dial = Dial {
        relay: to.address.clone(),
        tls: (*tls).clone(),
        prefer: Prefer::Auto,
        quic_timeout: DIAL_TIMEOUT,
        proxy: None,
    };
    let peer = match tokio::time::timeout(DIAL_TIMEOUT, dial.connect()).await {
        Ok(Ok(peer)) => peer,
        failed => {
            let why = match failed {
                Ok(Err(e)) => format!("{e:#}"),
                _ => format!("no answer within {DIAL_TIMEOUT:?}"),
            };
            warn!(relay = %to.relay, address = %to.address, error = %why, "Failed to reach the relay replica a device is attached to");
            let refusal = Refusal::new(
                RefusalCode::Unavailable,
                format!(
                    "the device is attached to relay replica {}, which did not answer; try again in a few seconds",
                    to.relay
                ),
                "peer_unreachable",
            );
            refuse(&technician, writer, &env.metrics, refusal).await;
            return;
        }
    };
    let hello = Hello {
        forwarded: Some(Forwarded {
            certificate: chain,
            relay: env.settings.name.clone(),
            transport: technician.transport().as_str().to_owned(),
        }),
        ..hello
    };
    let control = match peer.open().await {
        Ok(stream) => stream,
        Err(e) => {
            debug!(error = %e, "Lost a relay replica before forwarding");
            technician.close("the relay replica the device is on went away");
            return;
        }
    };
    let (peer_reader, mut peer_writer) = framed(control);
    peer_writer.set_priority(tether_proto::message::CONTROL_PRIORITY);
    if peer_writer.message(&hello).await.is_err() {
        technician.close("the relay replica the device is on went away");
        return;
    }
    env.metrics.forwarded.inc();
    info!(relay = %to.relay, "Forwarding a technician to the relay replica the device is attached to");
    let mut streams = JoinSet::new();
    streams.spawn(pump(reader, peer_writer));
    streams.spawn(pump(peer_reader, writer));
    loop {
        tokio::select! {
            accepted = technician.accept() => {
                let Some(stream) = accepted else { break };
                let Ok(opened) = peer.open().await else { break };
                let (tech_r, tech_w) = framed(stream);
                let (peer_r, peer_w) = framed(opened);
                streams.spawn(channel(tech_r, peer_w, peer_r, tech_w));
            }
            () = peer.closed() => break,
            () = env.shutdown.cancelled() => break,
            Some(_) = streams.join_next() => {}
        }
    }
    // Whichever side went first, the other learns it; frames already queued get a moment.
    peer.close_and_flush("the technician's connection ended")
        .await;
    technician.close_and_flush("session over").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    streams.shutdown().await;
}

/// One channel stream both ways, at the priority its first frame (the attach) names.
async fn channel(
    mut tech_r: FrameReader,
    mut peer_w: FrameWriter,
    peer_r: FrameReader,
    tech_w: FrameWriter,
) {
    let Ok(Some(first)) = tech_r.next().await else {
        return;
    };
    if let Ok(attach) = first.parse::<Attach>() {
        let priority = attach.kind.priority();
        peer_w.set_priority(priority);
        tech_w.set_priority(priority);
    }
    if peer_w.send(&first).await.is_err() {
        return;
    }
    let back = pump(peer_r, tech_w);
    tokio::join!(pump(tech_r, peer_w), back);
}

/// Copies frames from `from` to `to` until `from` ends (then finishes `to`) or either fails.
async fn pump(mut from: FrameReader, mut to: FrameWriter) {
    while let Ok(Some(frame)) = from.next().await {
        if to.send(&frame).await.is_err() {
            return;
        }
    }
    let _ = to.finish().await;
}
