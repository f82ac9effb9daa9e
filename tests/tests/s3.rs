//! The test object store itself: versitygw starts, authenticates, round-trips objects and
//! multipart uploads through `object_store`, and can be stopped and restarted with its data.

#![allow(clippy::unwrap_used)] // Tests fail loudly on any unexpected error.

use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tether_e2e::s3::S3Server;

/// Exactly the minimum size S3 accepts for every part but the last.
const FIVE_MIB: usize = 5 * 1024 * 1024;

#[tokio::test]
async fn objects_round_trip_and_list_by_prefix() {
    let s3 = S3Server::start().await;
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(s3.region(), "us-east-1");
    let store = s3.store();
    assert!(s3.list(None).await.is_empty(), "the bucket starts empty");

    for (key, body) in [
        ("sessions/a/recording.cast", "cast"),
        ("sessions/a/events.jsonl", "events"),
        ("sessions/b/recording.cast", "other"),
    ] {
        store
            .put(&Path::from(key), PutPayload::from(body.as_bytes().to_vec()))
            .await
            .unwrap();
    }

    assert_eq!(
        s3.keys(Some("sessions/a")).await,
        ["sessions/a/events.jsonl", "sessions/a/recording.cast"]
    );
    assert_eq!(s3.keys(None).await.len(), 3);
    assert_eq!(s3.get("sessions/a/events.jsonl").await, b"events");
    let listed = s3.list(Some("sessions/b")).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, 5);

    let missing = store.get(&Path::from("sessions/none")).await.unwrap_err();
    assert!(
        matches!(missing, object_store::Error::NotFound { .. }),
        "{missing}"
    );
}

#[tokio::test]
async fn multipart_upload_yields_the_concatenated_parts() {
    let s3 = S3Server::start().await;
    let store = s3.store();
    let path = Path::from("sessions/m/recording.cast");
    let first: Vec<u8> = (0..FIVE_MIB).map(|i| (i % 251) as u8).collect();
    let last = b"the last, small part".to_vec();

    let id = store.create_multipart(&path).await.unwrap();
    let parts = vec![
        store
            .put_part(&path, &id, 0, PutPayload::from(first.clone()))
            .await
            .unwrap(),
        store
            .put_part(&path, &id, 1, PutPayload::from(last.clone()))
            .await
            .unwrap(),
    ];
    // Nothing is visible before the upload is completed.
    assert!(s3.list(Some("sessions/m")).await.is_empty());
    store.complete_multipart(&path, &id, parts).await.unwrap();

    let body = s3.get("sessions/m/recording.cast").await;
    assert_eq!(body.len(), FIVE_MIB + last.len());
    assert!(body[..FIVE_MIB] == first[..], "first part differs");
    assert_eq!(&body[FIVE_MIB..], &last[..]);
}

#[tokio::test]
async fn a_stopped_store_refuses_requests_and_restarts_with_its_data() {
    let mut s3 = S3Server::start().await;
    let store = s3.store();
    let path = Path::from("sessions/r/recording.cast");
    store
        .put(&path, PutPayload::from_static(b"before the outage"))
        .await
        .unwrap();
    let endpoint = s3.endpoint();

    s3.stop();
    assert!(!s3.is_running());
    let err = store.get(&path).await.unwrap_err();
    assert!(
        !matches!(err, object_store::Error::NotFound { .. }),
        "a stopped server cannot answer NotFound: {err}"
    );
    assert!(
        store
            .put(&path, PutPayload::from_static(b"during"))
            .await
            .is_err()
    );

    s3.restart().await;
    assert!(s3.is_running());
    assert_eq!(s3.endpoint(), endpoint, "same port after a restart");
    // The client created before the outage works again, with the same credentials.
    let body = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"before the outage");
    store
        .put(&path, PutPayload::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(s3.get("sessions/r/recording.cast").await, b"after");
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let s3 = S3Server::start().await;
    let impostor = AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_bucket_name(s3.bucket())
        .with_region(s3.region())
        .with_access_key_id(s3.access_key())
        .with_secret_access_key("not-the-secret")
        .with_allow_http(true)
        .build()
        .unwrap();
    let err = impostor
        .put(&Path::from("x"), PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert!(s3.list(None).await.is_empty());
}
