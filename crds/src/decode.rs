//! Reading Tether objects one at a time, so one that does not decode cannot hide the others.
//!
//! The schema refuses what Tether cannot read, but objects stored before a stricter schema, or
//! through a CRD version without a rule, may still be there. Listing or watching them as typed
//! objects fails the whole list on the first bad one: every session in the namespace (or the
//! cluster) would disappear from `kubectl tether list` and from the operator. Listing them as
//! [`DynamicObject`]s and decoding each with [`decode`] keeps the good ones and names the bad.

use std::fmt;

use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use serde::de::DeserializeOwned;

/// An object that the API server returned but that does not decode as its kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Undecodable {
    /// The object's kind, e.g. `RemoteSession`.
    pub kind: String,
    /// Its namespace.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: Option<String>,
    /// Its resourceVersion, to tell one bad version from the next.
    pub resource_version: Option<String>,
    /// Why it does not decode.
    pub error: String,
}

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name)?,
            None => write!(f, "{} {}", self.kind, self.name)?,
        }
        write!(f, " cannot be read: {}", self.error)
    }
}

/// The API resource of `K`, to list or watch it as [`DynamicObject`]s.
pub fn api_resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// Decodes one object as `K`, or says which object could not be decoded and why.
pub fn decode<K>(object: DynamicObject) -> Result<K, Box<Undecodable>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let meta = object.metadata.clone();
    object.try_parse::<K>().map_err(|e| {
        // The error names the bad value; the source chain adds nothing a user can act on.
        let error = match std::error::Error::source(&e) {
            Some(source) => source.to_string(),
            None => e.to_string(),
        };
        Box::new(Undecodable {
            kind: K::kind(&()).into_owned(),
            namespace: meta.namespace,
            name: meta.name.unwrap_or_default(),
            uid: meta.uid,
            resource_version: meta.resource_version,
            error,
        })
    })
}

/// Decodes every object of a list, keeping the order, and returns the good and the bad apart.
pub fn decode_all<K>(objects: Vec<DynamicObject>) -> (Vec<K>, Vec<Undecodable>)
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let mut good = Vec::with_capacity(objects.len());
    let mut bad = Vec::new();
    for object in objects {
        match decode::<K>(object) {
            Ok(k) => good.push(k),
            Err(e) => bad.push(*e),
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RemoteSession;

    fn object(start: &str) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1",
            "kind": "RemoteSession",
            "metadata": {"name": "s", "namespace": "team", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"device": "d", "duration": "30m", "startTime": start},
        }))
        .unwrap()
    }

    #[test]
    fn one_bad_object_is_named_and_the_others_kept() {
        let mut bad = object("2030-01-01T10:00:00.1234567890Z");
        bad.metadata.name = Some("bad".into());
        let (good, bad) = decode_all::<RemoteSession>(vec![
            object("2030-01-01T10:00:00Z"),
            bad,
            object("2030-01-01T11:00:00Z"),
        ]);
        assert_eq!(good.len(), 2);
        assert_eq!(bad.len(), 1);
        let text = bad[0].to_string();
        assert!(
            text.starts_with("RemoteSession team/bad cannot be read: "),
            "{text}"
        );
        assert_eq!(bad[0].uid.as_deref(), Some("u-1"));
        assert_eq!(bad[0].resource_version.as_deref(), Some("7"));
    }
}
