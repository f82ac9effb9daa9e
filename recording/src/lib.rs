//! Tether's session recordings.
//!
//! The relay records every session it joins, streaming to object storage while the session
//! runs ([`recorder`]): shell channels as asciicast v2 ([`asciicast`]), desktop channels as
//! timestamped RFB ([`desktop`]), everything else as
//! JSON-lines events ([`events`]), each recording described by a manifest ([`manifest`]).
//! Uploads go out in parts and survive a relay crash ([`upload`]); the store is any
//! `object_store` backend, the local filesystem by default ([`storage`]); [`catalog`] finds,
//! reads, holds and deletes recordings for `kubectl tether` and the operator's retention;
//! [`playback`] decodes desktop recordings into frames for video export and seeking.

#![forbid(unsafe_code)]

pub mod asciicast;
pub mod catalog;
pub mod desktop;
pub mod events;
pub mod layout;
pub mod manifest;
pub mod playback;
pub mod recorder;
pub mod storage;
pub mod upload;

pub use layout::SessionRef;
pub use manifest::{Manifest, ObjectEntry, ObjectKind, State};
pub use recorder::{Recorder, RecorderSettings};
pub use storage::{Storage, StoreConfig};

/// Why a recording operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store's configuration is unusable.
    #[error("invalid recording store {url}: {message}")]
    Config {
        /// The configured URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The store refused or did not answer.
    #[error("failed to {what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Data in the store is not what Tether wrote.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A store error while doing `what`.
    pub fn store(what: impl Into<String>, source: object_store::Error) -> Self {
        Self::Store {
            what: what.into(),
            source,
        }
    }

    /// Whether the object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }
        )
    }
}
