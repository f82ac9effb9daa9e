//! A technician client built by hand, for tests that try the relay's admission as an attacker
//! would: technician certificates obtained with a CertificateSigningRequest as one of the test
//! users, and a raw handshake that sends whatever `Hello` the test chooses, with or without a
//! certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{CertificateParams, KeyPair};
use tether_proto::message::{Control, Hello, HelloReply, PROTOCOL_VERSION, Role};
use tether_transport::{Connection, Dial, FrameReader, FrameWriter, Prefer, framed, tls};

use crate::{PATIENCE, control_plane, eventually};

/// A signed technician certificate and its key.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The leaf, PEM.
    pub cert: String,
    /// The key, PEM.
    pub key: String,
    /// The CA bundle after the leaf, PEM.
    pub ca: String,
}

/// Files a CertificateSigningRequest for signer `tether.dev/technician` as `user` for
/// `namespace/session` and waits for the operator's decision: `Ok` with the certificate, or
/// `Err` with the denial message.
pub async fn certificate(
    user: &str,
    namespace: &str,
    session: &str,
) -> Result<std::result::Result<Certificate, String>> {
    certificate_with_key(user, namespace, session, &KeyPair::generate()?).await
}

/// [`certificate`] for a given key (a renewal keeps the key).
pub async fn certificate_with_key(
    user: &str,
    namespace: &str,
    session: &str,
    key: &KeyPair,
) -> Result<std::result::Result<Certificate, String>> {
    let client = control_plane().client(user).await?;
    let csr_pem = CertificateParams::new(Vec::<String>::new())?
        .serialize_request(key)?
        .pem()?;
    let name = format!("e2e-technician-{:032x}", crate::dataplane::rand_u128());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([
                ("tether.dev/namespace".to_owned(), namespace.to_owned()),
                ("tether.dev/session".to_owned(), session.to_owned()),
            ])),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(csr_pem.into_bytes()),
            signer_name: "tether.dev/technician".into(),
            usages: Some(vec!["client auth".into(), "digital signature".into()]),
            expiration_seconds: Some(900),
            ..Default::default()
        },
        status: None,
    };
    let api: Api<CertificateSigningRequest> = Api::all(client);
    api.create(&PostParams::default(), &csr)
        .await
        .with_context(|| format!("{user} files a technician certificate request"))?;
    let decided = eventually(
        &format!("the operator decides CertificateSigningRequest {name}"),
        PATIENCE,
        || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let csr = api.get(&name).await.ok()?;
                let status = csr.status?;
                if let Some(c) = status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
                {
                    return Some(Err(c.message.clone().unwrap_or_default()));
                }
                let chain = String::from_utf8(status.certificate?.0).ok()?;
                Some(Ok(chain))
            }
        },
    )
    .await;
    Ok(decided.map(|chain| {
        let end = "-----END CERTIFICATE-----";
        let mut blocks = chain
            .split_inclusive(end)
            .filter(|b| b.contains("BEGIN CERTIFICATE"))
            .map(|b| format!("{}\n", b.trim()));
        let cert = blocks.next().unwrap_or_default();
        Certificate {
            cert,
            key: key.serialize_pem(),
            ca: blocks.collect(),
        }
    }))
}

/// A raw technician connection after its handshake.
pub struct Raw {
    /// The connection.
    pub conn: Connection,
    /// The control stream.
    pub reader: FrameReader,
    /// The control stream.
    pub writer: FrameWriter,
    /// The relay's answer.
    pub reply: HelloReply,
}

/// The CA bundle the relay's certificate chains to (from the operator's trust ConfigMap).
pub async fn ca_bundle() -> Result<String> {
    let admin = control_plane().client("admin").await?;
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin, "tether-system")
        .get("tether-trust")
        .await?;
    cm.data
        .and_then(|d| d.get("ca-bundle.crt").cloned())
        .context("the trust ConfigMap has no CA bundle")
}

/// A technician `Hello` claiming `name` and carrying `token`: what a hand-built client sends.
pub fn hello(name: Option<&str>, token: Option<&str>) -> Hello {
    Hello {
        versions: vec![PROTOCOL_VERSION],
        role: Role::Technician,
        token: token.map(str::to_owned),
        agent: None,
        enroll: None,
        client: "e2e-raw".into(),
        technician: name.map(str::to_owned),
        forwarded: None,
    }
}

/// Connects to the relay on `port` over TCP, presenting `identity` if given, sends `hello` and
/// reads the answer.
pub async fn connect(port: u16, identity: Option<&Certificate>, hello: &Hello) -> Result<Raw> {
    let ca = match identity {
        Some(c) => c.ca.clone(),
        None => ca_bundle().await?,
    };
    let tls = tls::client_config(&ca, identity.map(|c| (c.cert.as_str(), c.key.as_str())))?;
    let dial = Dial {
        relay: format!("127.0.0.1:{port}"),
        tls,
        prefer: Prefer::Tcp,
        quic_timeout: Duration::from_secs(3),
        proxy: None,
    };
    let conn = dial.connect().await?;
    let (mut reader, mut writer) = framed(conn.open().await?);
    writer.message(hello).await?;
    let reply = tokio::time::timeout(Duration::from_secs(90), reader.message::<HelloReply>())
        .await
        .context("the relay did not answer the hello")??;
    Ok(Raw {
        conn,
        reader,
        writer,
        reply,
    })
}

impl Raw {
    /// The refusal's message, or an error if the relay welcomed the client.
    pub fn refusal(&self) -> Result<String> {
        match &self.reply {
            HelloReply::Refused(r) => Ok(r.message.clone()),
            HelloReply::Welcome(_) => bail!("the relay welcomed the client"),
        }
    }

    /// Whether the relay welcomed the client.
    pub fn welcomed(&self) -> bool {
        matches!(self.reply, HelloReply::Welcome(_))
    }

    /// Reads control messages until one matches `want` or the stream ends (`None`).
    pub async fn until(&mut self, want: impl Fn(&Control) -> bool) -> Option<Control> {
        loop {
            match self.reader.message::<Control>().await {
                Ok(m) if want(&m) => return Some(m),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}
