//! The agent's state directory: its identity, certificate and key (written at enrollment),
//! the CA bundle, the spool directories the user's commands write to, and the live sessions
//! the running agent shares with those commands.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sessions::Sessions;

/// Who this agent is and where it connects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// Device group (namespace).
    pub namespace: String,
    /// Device name.
    pub device: String,
    /// Relay `host:port`.
    pub relay: String,
}

/// Paths in the state directory, and the running agent's live sessions.
#[derive(Clone, Debug)]
pub struct State {
    /// The directory.
    pub dir: PathBuf,
    /// The sessions live on this device (in the running agent; the user's commands read
    /// their snapshot with [`crate::sessions::read_live`]).
    pub live: Sessions,
}

impl State {
    /// The state in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            live: Sessions::new(dir.clone()),
            dir,
        }
    }

    /// `identity.json`.
    pub fn identity_file(&self) -> PathBuf {
        self.dir.join("identity.json")
    }

    /// The client certificate.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    /// The client key.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// The CA bundle.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Where `tether-agent end` leaves requests.
    pub fn control_dir(&self) -> PathBuf {
        self.dir.join("control")
    }

    /// Reads the identity, saying how to enroll when there is none.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        let path = self.identity_file();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; enroll the device first with `tether-agent enroll`",
                path.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Writes the enrollment results.
    pub fn save(&self, identity: &Identity, cert: &str, key: &str, ca: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_private(&self.key_file(), key)?;
        std::fs::write(self.cert_file(), cert)?;
        std::fs::write(self.ca_file(), ca)?;
        std::fs::write(self.identity_file(), serde_json::to_vec_pretty(identity)?)?;
        Ok(())
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
