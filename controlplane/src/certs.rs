//! The local control plane's PKI: a throw-away CA, the API server's serving certificate and
//! the service-account signing key, written as PEM files for the Kubernetes binaries.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// PEM files of the local control plane's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate that signed the serving certificate (and any client certificate).
    pub ca_cert: PathBuf,
    /// CA private key, used by kube-controller-manager to sign CSRs.
    pub ca_key: PathBuf,
    /// The API server's serving certificate (127.0.0.1, localhost, the listening address).
    pub serving_cert: PathBuf,
    /// The serving certificate's key.
    pub serving_key: PathBuf,
    /// Private key that signs service-account tokens.
    pub service_account_key: PathBuf,
    /// Public half of the service-account key, which verifies them.
    pub service_account_pub: PathBuf,
    /// The CA certificate in PEM, for kubeconfigs.
    pub ca_pem: String,
}

fn pki_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Pki { what, source }
}

/// Creates a fresh CA, a serving certificate for loopback and `address`, and a service-account
/// key in `dir`.
///
/// A real CA is used (not a self-signed leaf) because rustls refuses a leaf certificate as its
/// own trust anchor.
pub fn generate(dir: &Path, address: std::net::Ipv4Addr) -> Result<Pki, Error> {
    let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err("CA"))?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "tether local control plane CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem_key = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(pki_err("CA"))?;

    let serving_key = KeyPair::generate().map_err(pki_err("serving key"))?;
    let mut serving = CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(pki_err("serving certificate"))?;
    // Loopback, the address it listens on, and the `kubernetes` Service's cluster IP (the
    // first of --service-cluster-ip-range), which pods on a node reach it by.
    for ip in [
        std::net::Ipv4Addr::LOCALHOST,
        address,
        std::net::Ipv4Addr::new(10, 0, 0, 1),
    ] {
        serving
            .subject_alt_names
            .push(SanType::IpAddress(ip.into()));
    }
    serving.subject_alt_names.push(SanType::DnsName(
        "kubernetes.default.svc"
            .try_into()
            .map_err(pki_err("serving certificate"))?,
    ));
    let mut serving_name = DistinguishedName::new();
    serving_name.push(DnType::CommonName, "kube-apiserver");
    serving.distinguished_name = serving_name;
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .map_err(pki_err("serving certificate"))?;

    let sa_key = KeyPair::generate().map_err(pki_err("service-account key"))?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_pub: dir.join("service-account.pub"),
        ca_pem: ca.pem(),
    };
    write_private(&pki.ca_key, &ca_pem_key)?;
    write(&pki.ca_cert, &pki.ca_pem)?;
    write(&pki.serving_cert, &serving_cert.pem())?;
    write_private(&pki.serving_key, &serving_key.serialize_pem())?;
    write_private(&pki.service_account_key, &sa_key.serialize_pem())?;
    write(&pki.service_account_pub, &sa_key.public_key_pem())?;
    Ok(pki)
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        what: format!("failed to write {}", path.display()),
        source,
    })
}

/// Writes a file only its owner can read: keys and token files.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::Io {
            what: format!("failed to create {}", path.display()),
            source,
        })?;
    file.write_all(contents.as_bytes())
        .map_err(|source| Error::Io {
            what: format!("failed to write {}", path.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_a_serving_certificate_for_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), std::net::Ipv4Addr::LOCALHOST).unwrap();
        for path in [
            &pki.ca_cert,
            &pki.ca_key,
            &pki.serving_cert,
            &pki.serving_key,
            &pki.service_account_key,
            &pki.service_account_pub,
        ] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(
                text.starts_with("-----BEGIN "),
                "{} is not PEM",
                path.display()
            );
        }
        let key_mode = std::fs::metadata(&pki.serving_key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);
        // The serving certificate is not the CA certificate: rustls needs a real chain.
        assert_ne!(
            std::fs::read_to_string(&pki.serving_cert).unwrap(),
            pki.ca_pem
        );
    }
}
