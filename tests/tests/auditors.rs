//! Auditors' certificates for reading recordings, with the real operator process and the
//! chart's RBAC: the recordings signer approves or denies by SubjectAccessReview and issues
//! short-lived certificates scoped to what the auditor may read.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tether_e2e::{
    OPERATOR_USER, Operator, PATIENCE, SYSTEM_NAMESPACE, control_plane, eventually,
    install_chart_templates, install_crds,
};

/// A CertificateSigningRequest for the recordings signer, with a fresh key.
fn recordings_csr(
    name: &str,
    namespace: &str,
    session: Option<&str>,
    expiration_seconds: Option<i32>,
) -> k8s_openapi::api::certificates::v1::CertificateSigningRequest {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestSpec,
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    // Whatever the requester writes here is replaced by who the API server says it is.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut annotations = std::collections::BTreeMap::from([(
        "tether.dev/namespace".to_owned(),
        namespace.to_owned(),
    )]);
    if let Some(session) = session {
        annotations.insert("tether.dev/session".into(), session.into());
    }
    CertificateSigningRequest {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: k8s_openapi::ByteString(pem.into_bytes()),
            signer_name: "tether.dev/recordings".into(),
            usages: Some(vec!["client auth".into(), "digital signature".into()]),
            expiration_seconds,
            ..Default::default()
        },
        status: None,
    }
}

/// Waits until a CSR is decided: `Ok(certificate PEM)` or `Err(denial message)`.
async fn decision(
    api: &Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest>,
    name: &str,
) -> Result<String, String> {
    eventually(&format!("CSR {name} is decided"), PATIENCE, || async {
        let status = api.get(name).await.ok()?.status?;
        if let Some(denied) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        {
            return Some(Err(denied.message.clone().unwrap_or_default()));
        }
        let cert = status.certificate.filter(|c| !c.0.is_empty())?;
        Some(Ok(String::from_utf8(cert.0).unwrap()))
    })
    .await
}

fn openssl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs")
}

#[tokio::test]
async fn auditors_get_short_lived_recordings_certificates_only_with_rbac() {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    use k8s_openapi::api::core::v1::ConfigMap;
    let cp = control_plane();
    let admin = cp.client("admin").await.unwrap();
    install_crds(&admin).await.unwrap();
    install_chart_templates(
        &["templates/operator-rbac.yaml", "templates/user-roles.yaml"],
        &[],
    );
    let ns = cp.namespace("auditing").await.unwrap();
    let elsewhere = cp.namespace("not-audited").await.unwrap();
    // dave's group audits this namespace; everyone involved may file CSRs.
    for (user, yaml) in [
        (
            "admin",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: auditors\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tether-auditor\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: auditors\n",
        ),
        (
            "admin",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: e2e-recording-requesters\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: tether-recording-requester\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: auditors\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: requesters\n",
        ),
    ] {
        let out = tether_e2e::kubectl_apply(cp, user, &ns, yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let operator = Operator::start(
        cp,
        OPERATOR_USER,
        &ns,
        &["--relay-address=relay.example.com:443"],
    )
    .await;
    // Another namespace's operator, with its own relay: each decides its own namespace's
    // requests only, so the relay on a certificate is the one serving that namespace.
    let _other = Operator::start(
        cp,
        OPERATOR_USER,
        &elsewhere,
        &["--relay-address=other-relay.example.com:443"],
    )
    .await;

    // alice may not read recordings: denied, naming the missing permission.
    let alice: Api<CertificateSigningRequest> = Api::all(cp.client("alice").await.unwrap());
    let name = format!("{ns}-alice");
    alice
        .create(
            &PostParams::default(),
            &recordings_csr(&name, &ns, None, None),
        )
        .await
        .unwrap();
    let denied = decision(&alice, &name).await.unwrap_err();
    assert_eq!(
        denied,
        format!("user alice may not get remotesessions/recording in namespace {ns}")
    );

    // dave may, for one session of this namespace: a 10-minute certificate for exactly that.
    let dave: Api<CertificateSigningRequest> = Api::all(cp.client("dave").await.unwrap());
    let name = format!("{ns}-dave");
    dave.create(
        &PostParams::default(),
        &recordings_csr(&name, &ns, Some("printer-help"), Some(600)),
    )
    .await
    .unwrap();
    let cert = decision(&dave, &name).await.unwrap();
    let signed = dave.get(&name).await.unwrap();
    assert_eq!(
        signed
            .annotations()
            .get("tether.dev/relay")
            .map(String::as_str),
        Some("relay.example.com:443"),
        "the relay to use is on the request"
    );
    let approved = signed
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Approved")
        .unwrap();
    assert_eq!(approved.reason.as_deref(), Some("AuthorizedByRBAC"));

    // The certificate comes with the CA bundle, which the relay's certificate chains to.
    let trust = Api::<ConfigMap>::namespaced(admin.clone(), SYSTEM_NAMESPACE)
        .get("tether-trust")
        .await
        .unwrap();
    let ca_bundle = trust.data.unwrap()["ca-bundle.crt"].clone();
    assert_eq!(cert.matches("BEGIN CERTIFICATE").count(), 2, "{cert}");
    assert!(cert.ends_with(&ca_bundle), "{cert}");
    let work = tempfile::tempdir().unwrap();
    let cert_file = work.path().join("dave.crt");
    std::fs::write(&cert_file, &cert).unwrap();
    let cert_path = cert_file.to_str().unwrap();
    let shown = openssl(&[
        "x509",
        "-in",
        cert_path,
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("CN=dave") || shown.contains("CN = dave"),
        "{shown}"
    );
    assert!(!shown.contains("admin"), "{shown}");
    assert!(
        shown.contains(&format!("URI:tether://recordings/{ns}/printer-help")),
        "{shown}"
    );
    assert!(shown.contains("TLS Web Client Authentication"), "{shown}");
    // Short-lived: valid now, gone within the 10 minutes asked for.
    assert!(
        openssl(&["x509", "-in", cert_path, "-noout", "-checkend", "540"])
            .status
            .success()
    );
    assert!(
        !openssl(&["x509", "-in", cert_path, "-noout", "-checkend", "601"])
            .status
            .success(),
        "valid for more than the 600 seconds asked for"
    );
    // It chains to the CA the operator publishes, as a client certificate.
    let bundle = work.path().join("ca.crt");
    std::fs::write(&bundle, &ca_bundle).unwrap();
    let verified = openssl(&[
        "verify",
        "-CAfile",
        bundle.to_str().unwrap(),
        "-purpose",
        "sslclient",
        cert_path,
    ]);
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );

    // Not for a namespace dave does not audit (decided by that namespace's operator).
    let name = format!("{ns}-dave-elsewhere");
    dave.create(
        &PostParams::default(),
        &recordings_csr(&name, &elsewhere, None, None),
    )
    .await
    .unwrap();
    assert_eq!(
        decision(&dave, &name).await.unwrap_err(),
        format!("user dave may not get remotesessions/recording in namespace {elsewhere}")
    );
    // Nor with a request that is not a client certificate's.
    let name = format!("{ns}-dave-server");
    let mut server = recordings_csr(&name, &ns, None, None);
    server.spec.usages = Some(vec!["server auth".into()]);
    dave.create(&PostParams::default(), &server).await.unwrap();
    let refused = decision(&dave, &name).await.unwrap_err();
    assert!(refused.contains("server auth"), "{refused}");
    assert!(
        !operator.process.log_tail(200).contains("BEGIN CERTIFICATE"),
        "certificates are not logged"
    );
}
