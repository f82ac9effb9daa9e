//! Session access tokens: what a technician presents to a relay to join a session.
//!
//! A token is a JWT signed with Ed25519 by the operator. It names one session (by uid), its
//! device, who may use it and what they may do, and two times: `exp`, when the token itself
//! stops being accepted for new connections (15 minutes after minting, never after the session
//! ends), and `session.endsAt`, when the relay closes the session whatever happens. Signing keys
//! carry an id (`kid`) so keys can rotate with overlap: verifiers trust every published key.
//!
//! Verification takes the current time explicitly, so expiry and clock skew are tested with
//! virtual time; nothing here does I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Issuer of every session token.
pub const ISSUER: &str = "tether-operator";

/// Audience of every session token: the relays.
pub const AUDIENCE: &str = "tether-relay";

/// An unused token expires this long after it was minted.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Default tolerance for clocks that disagree between operator and relay.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Desktop permission carried in a token.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DesktopPermission {
    /// View and control.
    Control,
    /// View only: input is dropped.
    ViewOnly,
    /// No desktop.
    None,
}

/// What the holder of a token may do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    /// Desktop access.
    pub desktop: DesktopPermission,
    /// Shell access.
    pub shell: bool,
    /// File manager access.
    pub files: bool,
    /// Chat.
    pub chat: bool,
    /// Process list and kill.
    pub processes: bool,
    /// The desktop's clipboard, per direction (absent in older tokens: none).
    #[serde(default, skip_serializing_if = "Clipboard::is_none")]
    pub clipboard: Clipboard,
}

impl Permissions {
    /// The same, for someone who may only watch the desktop: view-only instead of control,
    /// nothing pasted to the device. Everything else is unchanged.
    pub fn watching(mut self) -> Self {
        if self.desktop == DesktopPermission::Control {
            self.desktop = DesktopPermission::ViewOnly;
        }
        self.clipboard.to_device = false;
        self
    }
}

/// Which way the desktop's clipboard may travel.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Clipboard {
    /// Technician → device (the viewer's ClientCutText).
    #[serde(default)]
    pub to_device: bool,
    /// Device → technician (the server's ServerCutText).
    #[serde(default)]
    pub from_device: bool,
}

impl Clipboard {
    /// Neither direction.
    pub fn is_none(&self) -> bool {
        !self.to_device && !self.from_device
    }
}

/// Who may use a token (empty lists: anyone holding it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Technicians {
    /// Allowed user names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Allowed groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// Whether the relay records the session.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RecordingPolicy {
    /// Not recorded.
    #[default]
    Disabled,
    /// Recorded; a recording failure is reported and the session goes on.
    Enabled,
    /// Recorded, fail-closed: nobody joins without a working recording, and the session
    /// ends if recording fails.
    Required,
}

/// The session a token is bound to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionClaims {
    /// The RemoteSession's `metadata.uid`.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The Device it connects to.
    pub device: String,
    /// When the session window closes (Unix seconds): the relay's hard deadline.
    pub ends_at: i64,
    /// Who may connect.
    #[serde(default)]
    pub technicians: Technicians,
    /// What they may do.
    pub permissions: Permissions,
    /// Whether the user on the device must consent before anyone joins.
    #[serde(default)]
    pub consent: bool,
    /// The most seconds the user has to answer a consent prompt, from the session's
    /// SessionPolicies; the relay's own timeout applies when it is shorter or this is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_timeout: Option<u32>,
    /// Why the session exists, shown in the consent prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The ticket the session is for (in an external ITSM tool), shown in the consent prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Whether the relay records the session.
    #[serde(default)]
    pub recording: RecordingPolicy,
    /// Whether a desktop's recording keeps keystrokes (otherwise redacted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub record_keystrokes: bool,
}

/// The claims of a session token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Audience, always [`AUDIENCE`].
    pub aud: String,
    /// Subject: `remotesession:<namespace>/<name>`.
    pub sub: String,
    /// Unique token id.
    pub jti: String,
    /// Minted at (Unix seconds).
    pub iat: i64,
    /// Not valid before (Unix seconds).
    pub nbf: i64,
    /// Not accepted for new connections after (Unix seconds).
    pub exp: i64,
    /// The session.
    pub session: SessionClaims,
    /// The one technician this token was issued to (the Kubernetes user the operator checked
    /// when it signed their certificate, which carries this token). The relay admits a
    /// technician only with such a token, inside a certificate for the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technician: Option<String>,
}

/// When a token minted at `now` (Unix seconds) for a session ending at `ends_at` expires:
/// [`TOKEN_LIFETIME`] after minting, never after the session's end. The one place this is
/// computed: the operator's plan decides it, and [`Claims::new`] uses the same rule.
pub fn expiry(now: i64, ends_at: i64) -> i64 {
    now.saturating_add(i64::try_from(TOKEN_LIFETIME.as_secs()).unwrap_or(i64::MAX))
        .min(ends_at)
}

impl Claims {
    /// Claims for `session`, minted at `now`: valid from the later of now and the window's
    /// start (`not_before`), until 15 minutes after minting or the session's end, whichever
    /// comes first ([`expiry`]).
    pub fn new(session: SessionClaims, jti: String, now: i64, not_before: i64) -> Self {
        let exp = expiry(now, session.ends_at);
        Self::granted(session, jti, now, not_before, exp)
    }

    /// Claims for `session` as the operator's plan granted them, minted at `now`: valid from
    /// `not_before` until `expires_at` (both Unix seconds), and never past the session's end.
    pub fn granted(
        session: SessionClaims,
        jti: String,
        now: i64,
        not_before: i64,
        expires_at: i64,
    ) -> Self {
        let exp = expires_at.min(session.ends_at);
        Self {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: format!("remotesession:{}/{}", session.namespace, session.name),
            jti,
            iat: now,
            nbf: not_before.min(exp),
            exp,
            session,
            technician: None,
        }
    }

    /// These claims, narrowed to one technician until `not_after` (never later than they
    /// were valid): the grant a technician certificate carries. The session's list of allowed
    /// technicians is dropped: the operator checked it, and the token names the one admitted.
    pub fn for_technician(
        mut self,
        technician: &str,
        jti: String,
        now: i64,
        not_after: i64,
    ) -> Self {
        self.exp = self.exp.min(not_after).min(self.session.ends_at);
        self.iat = now;
        self.nbf = self.nbf.min(self.exp);
        self.jti = jti;
        self.session.technicians = Technicians::default();
        self.technician = Some(technician.to_owned());
        self
    }
}

/// Why a token was refused, or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed token.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with a key this verifier does not know (never issued, or retired).
    #[error("token signed with unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// Expiry (Unix seconds).
        exp: i64,
        /// The verifier's time.
        now: i64,
    },
    /// Before its not-before time.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// Not-before (Unix seconds).
        nbf: i64,
        /// The verifier's time.
        now: i64,
    },
    /// Valid, but for another session.
    #[error("token is for session {actual}, not {expected}")]
    WrongSession {
        /// The session the caller asked for.
        expected: String,
        /// The session the token names.
        actual: String,
    },
    /// The session was ended and its tokens revoked.
    #[error("token of session {0} was revoked")]
    Revoked(String),
    /// A signing key could not be created or loaded.
    #[error("invalid signing key: {0}")]
    Key(String),
}

impl TokenError {
    /// Low-cardinality reason for metrics (`rejected auths by reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::WrongSession { .. } => "wrong_session",
            Self::Revoked(_) => "revoked",
            Self::Key(_) => "key",
        }
    }
}

/// An Ed25519 key that signs tokens.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key with id `kid`.
    pub fn generate(kid: impl Into<String>) -> Result<Self, TokenError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| TokenError::Key(format!("failed to generate an Ed25519 key: {e}")))?;
        Self::from_pkcs8(kid, pkcs8.as_ref())
    }

    /// Loads a key from its PKCS#8 DER encoding.
    pub fn from_pkcs8(kid: impl Into<String>, der: &[u8]) -> Result<Self, TokenError> {
        use ring::signature::KeyPair;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| TokenError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self {
            kid: kid.into(),
            pkcs8: der.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        })
    }

    /// The key id written into each token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key, PKCS#8 DER, for storing in a Secret.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, for verifiers.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            kid: self.kid.clone(),
            public: STANDARD.encode(&self.public),
        }
    }

    /// Signs `claims` into a token.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| TokenError::Key(format!("failed to sign a token: {e}")))
    }
}

/// A published verification key: its id and the raw Ed25519 public key in base64.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VerifyingKey {
    /// Key id.
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, base64.
    pub public: String,
}

/// Checks tokens against a set of trusted keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    leeway: i64,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Verifier {
    /// A verifier trusting `keys` (malformed keys are skipped) and tolerating `leeway` of clock
    /// difference.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>, leeway: Duration) -> Self {
        let keys = keys
            .into_iter()
            .filter_map(|k| {
                let raw = STANDARD.decode(k.public.as_bytes()).ok()?;
                (raw.len() == 32).then(|| (k.kid, DecodingKey::from_ed_der(&raw)))
            })
            .collect();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        // Times are checked below against the caller's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        Self {
            keys,
            leeway: leeway.as_secs() as i64,
            validation,
        }
    }

    /// Number of trusted keys.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `token` at time `now` (Unix seconds). With `session_uid`, the token must be
    /// for that session.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        session_uid: Option<&str>,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| TokenError::Malformed("no key id".into()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(e.to_string()),
            }
        })?;
        let claims = data.claims;
        if now > claims.exp + self.leeway {
            return Err(TokenError::Expired {
                exp: claims.exp,
                now,
            });
        }
        if now + self.leeway < claims.nbf {
            return Err(TokenError::NotYetValid {
                nbf: claims.nbf,
                now,
            });
        }
        if let Some(expected) = session_uid
            && expected != claims.session.uid
        {
            return Err(TokenError::WrongSession {
                expected: expected.to_owned(),
                actual: claims.session.uid.clone(),
            });
        }
        Ok(claims)
    }
}

/// Sessions whose tokens are revoked, with when (Unix seconds). Published by the operator as
/// a ConfigMap (`uid: revokedAt`) that relays watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    revoked: BTreeMap<String, i64>,
}

impl Revocations {
    /// Reads the ConfigMap form; entries whose time does not parse are kept as revoked at 0.
    pub fn from_data(data: &BTreeMap<String, String>) -> Self {
        Self {
            revoked: data
                .iter()
                .map(|(uid, at)| (uid.clone(), at.parse().unwrap_or(0)))
                .collect(),
        }
    }

    /// The ConfigMap form.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        self.revoked
            .iter()
            .map(|(uid, at)| (uid.clone(), at.to_string()))
            .collect()
    }

    /// Records that `uid`'s tokens are revoked from `at`.
    pub fn revoke(&mut self, uid: impl Into<String>, at: i64) {
        self.revoked.entry(uid.into()).or_insert(at);
    }

    /// Whether `uid`'s tokens are revoked.
    pub fn is_revoked(&self, uid: &str) -> bool {
        self.revoked.contains_key(uid)
    }

    /// Drops entries revoked before `before`: every token minted before a revocation has
    /// expired [`TOKEN_LIFETIME`] after it, so old entries protect nothing.
    pub fn prune(&mut self, before: i64) -> Vec<String> {
        let old: Vec<String> = self
            .revoked
            .iter()
            .filter(|(_, at)| **at < before)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &old {
            self.revoked.remove(uid);
        }
        old
    }

    /// Number of revoked sessions.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }
}

/// Verifies a token and also refuses it if its session is revoked.
pub fn verify_not_revoked(
    verifier: &Verifier,
    revocations: &Revocations,
    token: &str,
    now: i64,
    session_uid: Option<&str>,
) -> Result<Claims, TokenError> {
    let claims = verifier.verify(token, now, session_uid)?;
    if revocations.is_revoked(&claims.session.uid) {
        return Err(TokenError::Revoked(claims.session.uid));
    }
    Ok(claims)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
