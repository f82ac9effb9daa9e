//! TLS between relays: a replica that forwards a technician to the replica where the device's
//! agent is attached reaches it at its pod address, which the replicas' shared certificate
//! does not name. Both ends therefore identify each other by the certificate's URI SAN (the
//! relay's identity the operator's CA wrote), not by a host name: the server by
//! [`client_config`]'s verifier, the client by [`crate::tls::has_uri`] on the verified chain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use tether_proto::message::ALPN;

use crate::tls::{TlsError, certs, has_uri, key, provider, roots};

/// Accepts a server certificate that chains to the CA and has the URI SAN `uri`, whatever
/// name or address it was reached by.
#[derive(Debug)]
struct PeerVerifier {
    roots: RootCertStore,
    uri: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !has_uri(end_entity, &self.uri) {
            return Err(Error::General(format!(
                "the server's certificate is not a relay's (no URI SAN {})",
                self.uri
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for a relay reaching another relay: it presents the relay's own
/// certificate (`cert_pem`, `key_pem`) and accepts as the server only a certificate issued by
/// `ca_bundle` with the URI SAN `peer_uri`.
pub fn client_config(
    ca_bundle: &str,
    cert_pem: &str,
    key_pem: &str,
    peer_uri: &str,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = PeerVerifier {
        roots: roots(ca_bundle)?,
        uri: peer_uri.to_owned(),
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(
            certs(cert_pem, "relay certificate")?,
            key(key_pem, "relay key")?,
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
