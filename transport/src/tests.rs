//! Both transports end to end on loopback: handshake, client certificates, streams, frames,
//! and the HTTP CONNECT proxy path.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tether_proto::frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::endpoint::{Attempt, Race};

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    sp.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let server = sp.signed_by(&server_key, &ca).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.subject_alt_names.push(SanType::URI(
        "tether://device/kiosks/kiosk-7".try_into().unwrap(),
    ));
    let client = cp.signed_by(&client_key, &ca).unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// A listener for the echo server, on both transports.
async fn echo_server(pki: &Pki) -> Listener {
    let tls = tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca).unwrap();
    Listener::bind("127.0.0.1:0".parse().unwrap(), tls, true)
        .await
        .unwrap()
}

/// Every frame on every stream comes back, after a message naming the client's identity.
async fn serve(listener: Listener) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(incoming) = listener.accept().await {
        tasks.spawn(async move {
            let Ok(conn) = incoming.establish().await else {
                return;
            };
            let identity = conn
                .peer_certificates()
                .and_then(|c| c.first().and_then(tls::agent_identity));
            let mut streams = tokio::task::JoinSet::new();
            while let Some(stream) = conn.accept().await {
                let identity = identity.clone();
                streams.spawn(async move {
                    let (mut r, mut w) = framed(stream);
                    w.message(&serde_json::json!({"identity": identity}))
                        .await
                        .unwrap();
                    while let Ok(Some(frame)) = r.next().await {
                        if w.send(&frame).await.is_err() {
                            break;
                        }
                    }
                    let _ = w.finish().await;
                });
            }
        });
    }
}

fn dial(pki: &Pki, addr: std::net::SocketAddr, prefer: Prefer, client_cert: bool) -> Dial {
    let identity = client_cert.then_some((pki.client_cert.as_str(), pki.client_key.as_str()));
    Dial {
        relay: addr.to_string(),
        tls: tls::client_config(&pki.ca, identity).unwrap(),
        prefer,
        quic_timeout: Duration::from_secs(5),
        proxy: None,
    }
}

async fn round_trip(conn: &Connection) -> serde_json::Value {
    let (mut r, mut w) = framed(conn.open().await.unwrap());
    w.send(&Frame::data(vec![42u8; 100_000])).await.unwrap();
    w.send(&Frame::end_of_data()).await.unwrap();
    let hello: serde_json::Value = r.message().await.unwrap();
    let echoed = r.expect().await.unwrap();
    assert_eq!(echoed, Frame::data(vec![42u8; 100_000]));
    assert_eq!(r.expect().await.unwrap(), Frame::end_of_data());
    hello
}

#[tokio::test]
async fn quic_and_tcp_carry_frames_and_client_identities() {
    let pki = pki();
    let listener = echo_server(&pki).await;
    let addr = listener.local_addr();
    let server = tokio::spawn(serve(listener));

    let quic = dial(&pki, addr, Prefer::Quic, true)
        .connect()
        .await
        .unwrap();
    assert_eq!(quic.transport(), Transport::Quic);
    let hello = round_trip(&quic).await;
    assert_eq!(hello["identity"], serde_json::json!(["kiosks", "kiosk-7"]));

    let tcp = dial(&pki, addr, Prefer::Tcp, false)
        .connect()
        .await
        .unwrap();
    assert_eq!(tcp.transport(), Transport::Tcp);
    let hello = round_trip(&tcp).await;
    assert_eq!(hello["identity"], serde_json::Value::Null);
    // Several streams at once on the multiplexed connection.
    let (a, b) = tokio::join!(round_trip(&tcp), round_trip(&tcp));
    assert_eq!(a, b);
    server.abort();
}

#[tokio::test]
async fn falls_back_to_tcp_when_quic_gets_no_answer() {
    let pki = pki();
    let tls = tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca).unwrap();
    // A relay without QUIC stands for a network that drops UDP.
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, false)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let server = tokio::spawn(serve(listener));
    let mut d = dial(&pki, addr, Prefer::Auto, true);
    // QUIC may take an hour: TCP must not wait for it. (The outer timeout only turns a hang
    // into a failure.)
    d.quic_timeout = Duration::from_secs(3600);
    let (conn, race) = tokio::time::timeout(Duration::from_secs(120), d.connect_racing())
        .await
        .expect("TCP did not wait for the QUIC timeout")
        .unwrap();
    assert_eq!(conn.transport(), Transport::Tcp);
    assert_eq!(
        race,
        Race {
            quic: Attempt::Abandoned,
            tcp: Attempt::Chosen
        }
    );
    round_trip(&conn).await;
    server.abort();
}

#[tokio::test]
async fn quic_is_kept_when_it_answers_within_its_head_start() {
    let pki = pki();
    let listener = echo_server(&pki).await;
    let addr = listener.local_addr();
    let server = tokio::spawn(serve(listener));
    let d = dial(&pki, addr, Prefer::Auto, true);
    // With a head start QUIC cannot miss, TCP is never dialled.
    let (conn, race) = d.race(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(conn.transport(), Transport::Quic);
    assert_eq!(
        race,
        Race {
            quic: Attempt::Chosen,
            tcp: Attempt::NotTried
        }
    );
    round_trip(&conn).await;
    // With the real head start, whichever wins, the connection works.
    let (conn, race) = d.connect_racing().await.unwrap();
    assert!(
        race.quic == Attempt::Chosen || race.tcp == Attempt::Chosen,
        "{race:?}"
    );
    round_trip(&conn).await;
    server.abort();
}

#[tokio::test]
async fn when_neither_transport_connects_both_reasons_are_given() {
    let pki = pki();
    // A port nobody listens on, UDP or TCP.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut d = dial(&pki, addr, Prefer::Auto, false);
    d.quic_timeout = Duration::from_millis(300);
    let err = d.connect().await.unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("QUIC: no answer within 300ms"), "{text}");
    assert!(
        text.contains(&format!("TCP: failed to connect to {addr} over TCP")),
        "{text}"
    );
}

#[tokio::test]
async fn untrusted_servers_are_refused() {
    let pki = pki();
    let other = pki_other();
    let listener = echo_server(&pki).await;
    let addr = listener.local_addr();
    let server = tokio::spawn(serve(listener));
    // Positive control: the same server, trusted, is reached on both transports.
    for prefer in [Prefer::Quic, Prefer::Tcp] {
        let conn = dial(&pki, addr, prefer, false).connect().await.unwrap();
        round_trip(&conn).await;
    }
    // Trusting another CA, each transport refuses the server's certificate and says so.
    for prefer in [Prefer::Quic, Prefer::Tcp] {
        let mut d = dial(&pki, addr, prefer, false);
        d.tls = tls::client_config(&other, None).unwrap();
        let err = d.connect().await.unwrap_err().to_string();
        assert!(
            err.contains("invalid peer certificate"),
            "{prefer:?}: {err}"
        );
    }
    server.abort();
}

fn pki_other() -> String {
    pki().ca
}

/// A minimal HTTP CONNECT proxy: one tunnel per connection.
async fn proxy(
    require_auth: Option<&'static str>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
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
                if let Some(auth) = require_auth
                    && !head.contains(auth)
                {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                        .await;
                    return;
                }
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tcp_goes_through_an_http_connect_proxy() {
    let pki = pki();
    let listener = echo_server(&pki).await;
    let addr = listener.local_addr();
    let server = tokio::spawn(serve(listener));
    let (proxy_addr, proxy_task) = proxy(Some("Proxy-Authorization: Basic dXNlcjpwYXNz")).await;

    let mut d = dial(&pki, addr, Prefer::Tcp, true);
    d.proxy = Some(format!("http://user:pass@{proxy_addr}"));
    let conn = d.connect().await.unwrap();
    round_trip(&conn).await;

    d.proxy = Some(format!("http://user:wrong@{proxy_addr}"));
    let err = d.connect().await.unwrap_err().to_string();
    assert!(err.contains("407"), "{err}");
    // A refusal names the proxy but never its credentials.
    assert!(!err.contains("wrong"), "{err}");
    d.proxy = Some("socks5://nope".into());
    assert!(
        d.connect()
            .await
            .unwrap_err()
            .to_string()
            .contains("only http://")
    );
    // Without a scheme (as HTTPS_PROXY is often written), the proxy is an HTTP proxy.
    let (open_addr, open_task) = proxy(None).await;
    d.proxy = Some(open_addr.to_string());
    round_trip(&d.connect().await.unwrap()).await;
    open_task.abort();
    server.abort();
    proxy_task.abort();
}
