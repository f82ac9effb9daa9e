//! Tests of the credential authority's rotation on request.

use super::*;

fn secret(annotations: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.into()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_new_rotate_value_is_a_request_once() {
    assert_eq!(rotation_requested(&secret(&[])), None);
    assert_eq!(
        rotation_requested(&secret(&[(ROTATE_ANNOTATION, "2026-01-01T10:00:00Z")])),
        Some("2026-01-01T10:00:00Z".to_owned())
    );
    // Carried out: no request any more.
    assert_eq!(
        rotation_requested(&secret(&[
            (ROTATE_ANNOTATION, "2026-01-01T10:00:00Z"),
            (ROTATED_ANNOTATION, "2026-01-01T10:00:00Z"),
        ])),
        None
    );
    // A new value after that is a new request.
    assert_eq!(
        rotation_requested(&secret(&[
            (ROTATE_ANNOTATION, "again"),
            (ROTATED_ANNOTATION, "2026-01-01T10:00:00Z"),
        ])),
        Some("again".to_owned())
    );
    // An empty value asks for nothing.
    assert_eq!(
        rotation_requested(&secret(&[(ROTATE_ANNOTATION, "")])),
        None
    );
}
