//! The token signing keys: one key signs, older keys stay trusted for an overlap long enough
//! for every token they signed to expire, so rotation never invalidates a live token. Pure:
//! callers pass the time and persist the state.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use tether_proto::token::{DEFAULT_LEEWAY, SigningKey, TOKEN_LIFETIME, TokenError, VerifyingKey};

/// When signing keys rotate and how long retired keys stay trusted.
#[derive(Clone, Debug)]
pub struct KeySettings {
    /// How long a key signs before a new one takes over.
    pub rotation_interval: Duration,
    /// How long a retired key is still trusted for verification. At least the token lifetime
    /// plus clock leeway, so every token it signed has expired before it goes.
    pub overlap: Duration,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            rotation_interval: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(3600),
        }
    }
}

impl KeySettings {
    /// The overlap actually used: never shorter than a token can live.
    pub fn effective_overlap(&self) -> Duration {
        self.overlap.max(TOKEN_LIFETIME + DEFAULT_LEEWAY)
    }
}

/// One stored key.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// PKCS#8 DER, base64.
    pub pkcs8: String,
    /// When it started signing (Unix seconds).
    pub created_at: i64,
    /// When it stopped signing (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// The signing key and the retired keys still trusted, newest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyRing {
    /// Every key still trusted; the first is the signing key.
    pub keys: Vec<StoredKey>,
}

/// What [`KeyRing::plan`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPlan {
    /// Nothing to do until this time (Unix seconds).
    KeepUntil(i64),
    /// Rotate now.
    Rotate,
}

fn new_key(now: i64) -> Result<StoredKey, TokenError> {
    let suffix: u32 = rand::random();
    let kid = format!("{now}-{suffix:08x}");
    let key = SigningKey::generate(kid.clone())?;
    Ok(StoredKey {
        kid,
        pkcs8: STANDARD.encode(key.pkcs8()),
        created_at: now,
        retired_at: None,
    })
}

impl KeyRing {
    /// A ring with one fresh key.
    pub fn create(now: i64) -> Result<Self, TokenError> {
        Ok(Self {
            keys: vec![new_key(now)?],
        })
    }

    /// Decides whether to rotate (or prune) at `now`.
    pub fn plan(&self, now: i64, settings: &KeySettings) -> KeyPlan {
        let Some(current) = self.keys.first() else {
            return KeyPlan::Rotate;
        };
        let rotate_at = current.created_at + settings.rotation_interval.as_secs() as i64;
        if now >= rotate_at {
            return KeyPlan::Rotate;
        }
        // Also wake up when a retired key's overlap ends, to stop publishing it.
        let overlap = settings.effective_overlap().as_secs() as i64;
        let next_prune = self
            .keys
            .iter()
            .filter_map(|k| k.retired_at.map(|r| r + overlap))
            .min();
        KeyPlan::KeepUntil(next_prune.map_or(rotate_at, |p| p.min(rotate_at)))
    }

    /// Retires the signing key, starts a new one and drops keys whose overlap has ended.
    pub fn rotate(&mut self, now: i64, settings: &KeySettings) -> Result<(), TokenError> {
        for key in &mut self.keys {
            key.retired_at.get_or_insert(now);
        }
        self.keys.insert(0, new_key(now)?);
        self.prune(now, settings);
        Ok(())
    }

    /// Drops retired keys whose overlap has ended. Returns whether anything changed.
    pub fn prune(&mut self, now: i64, settings: &KeySettings) -> bool {
        let overlap = settings.effective_overlap().as_secs() as i64;
        let before = self.keys.len();
        self.keys
            .retain(|k| k.retired_at.is_none_or(|r| now < r + overlap));
        before != self.keys.len()
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> Result<SigningKey, TokenError> {
        let stored = self
            .keys
            .first()
            .ok_or_else(|| TokenError::Key("no signing key".into()))?;
        let der = STANDARD.decode(stored.pkcs8.as_bytes()).map_err(|e| {
            TokenError::Key(format!("stored key {} is not base64: {e}", stored.kid))
        })?;
        SigningKey::from_pkcs8(stored.kid.clone(), &der)
    }

    /// Public keys of every trusted key, for relays.
    pub fn verifying_keys(&self) -> Vec<VerifyingKey> {
        self.keys
            .iter()
            .filter_map(|k| {
                let der = STANDARD.decode(k.pkcs8.as_bytes()).ok()?;
                SigningKey::from_pkcs8(k.kid.clone(), &der)
                    .ok()
                    .map(|s| s.verifying_key())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::token::{
        Claims, DesktopPermission, Permissions, SessionClaims, Technicians, Verifier,
    };

    const T0: i64 = 1_800_000_000;
    const HOUR: i64 = 3600;

    fn claims(now: i64) -> Claims {
        Claims::new(
            SessionClaims {
                uid: "u".into(),
                namespace: "ns".into(),
                name: "s".into(),
                device: "d".into(),
                ends_at: now + 4 * HOUR,
                technicians: Technicians::default(),
                permissions: Permissions {
                    desktop: DesktopPermission::None,
                    shell: true,
                    files: false,
                    chat: false,
                    processes: false,
                    clipboard: Default::default(),
                },
                consent: false,
                consent_timeout: None,
                ticket: None,
                reason: None,
                recording: Default::default(),
                record_keystrokes: false,
            },
            "j".into(),
            now,
            now,
        )
    }

    #[test]
    fn rotation_keeps_tokens_of_the_retired_key_valid_until_they_expire() {
        let settings = KeySettings::default();
        let mut ring = KeyRing::create(T0).unwrap();
        assert_eq!(ring.plan(T0, &settings), KeyPlan::KeepUntil(T0 + 24 * HOUR));

        // A token minted just before rotation...
        let minted_at = T0 + 24 * HOUR - 1;
        let token = ring
            .signing_key()
            .unwrap()
            .mint(&claims(minted_at))
            .unwrap();
        assert_eq!(ring.plan(T0 + 24 * HOUR, &settings), KeyPlan::Rotate);
        ring.rotate(T0 + 24 * HOUR, &settings).unwrap();
        assert_eq!(ring.keys.len(), 2);
        // ...still verifies against what is published after rotation, until it expires.
        let verifier = Verifier::new(ring.verifying_keys(), DEFAULT_LEEWAY);
        assert!(verifier.verify(&token, minted_at + 600, None).is_ok());
        // New tokens use the new key.
        let new_token = ring
            .signing_key()
            .unwrap()
            .mint(&claims(T0 + 24 * HOUR))
            .unwrap();
        assert!(verifier.verify(&new_token, T0 + 24 * HOUR, None).is_ok());
        assert_ne!(ring.signing_key().unwrap().kid(), ring.keys[1].kid);

        // The retired key is published until its overlap ends, then dropped.
        assert_eq!(
            ring.plan(T0 + 24 * HOUR + 1, &settings),
            KeyPlan::KeepUntil(T0 + 25 * HOUR)
        );
        assert!(!ring.prune(T0 + 25 * HOUR - 1, &settings));
        assert!(ring.prune(T0 + 25 * HOUR, &settings));
        assert_eq!(ring.keys.len(), 1);
    }

    #[test]
    fn overlap_is_never_shorter_than_a_token_lives() {
        let settings = KeySettings {
            rotation_interval: Duration::from_secs(60),
            overlap: Duration::from_secs(1),
        };
        assert!(settings.effective_overlap() >= TOKEN_LIFETIME);
    }

    #[test]
    fn round_trips_without_leaking_keys_in_debug() {
        let ring = KeyRing::create(T0).unwrap();
        let json = serde_json::to_string(&ring).unwrap();
        assert_eq!(serde_json::from_str::<KeyRing>(&json).unwrap(), ring);
        assert!(!format!("{ring:?}").contains(&ring.keys[0].pkcs8));
    }
}
