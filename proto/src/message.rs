//! Protocol messages, carried as JSON in [`FrameKind::Message`](crate::frame::FrameKind)
//! frames.
//!
//! Every connection (QUIC, or TLS over TCP multiplexed) starts with a *control stream*: the
//! client sends [`Hello`], the relay answers [`Welcome`] or [`Refused`], and the stream then
//! carries [`Control`] messages for the life of the connection. Channels are further streams,
//! always opened by the client side:
//!
//! - a technician opens a stream and sends [`Attach`] (which channel, with what parameters);
//! - the relay asks the agent on its control stream ([`Control::Open`]); the agent opens a
//!   stream and sends [`Join`] with the channel id;
//! - the relay answers the technician with [`Attached`] and splices the two streams frame by
//!   frame, enforcing permissions (view-only drops input) and recording what passes.

use serde::{Deserialize, Serialize};

use crate::token::Permissions;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The TLS ALPN protocol id, for QUIC and TLS over TCP alike.
pub const ALPN: &[u8] = b"tether/1";

/// Picks the version to speak with a client offering `offered`: the highest both support.
pub fn negotiate(offered: &[u16]) -> Option<u16> {
    offered
        .iter()
        .copied()
        .filter(|v| *v == PROTOCOL_VERSION)
        .max()
}

/// Who is connecting.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// A device's agent, authenticated by its client certificate.
    Agent,
    /// A technician, authenticated by a session token.
    Technician,
    /// An agent without a certificate yet, enrolling with a bootstrap token.
    Enroll,
    /// An auditor reading recordings, authenticated by a short-lived client certificate
    /// whose URI SAN (`tether://recordings/<namespace>[/<session>]`) scopes what it may read.
    Auditor,
}

/// What an agent reports about its device.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// Host name.
    pub hostname: String,
    /// Operating system and version.
    pub os: String,
    /// Agent version.
    pub agent_version: String,
    /// Users logged on to the device.
    #[serde(default)]
    pub logged_on_users: Vec<String>,
    /// The agent could not find out who is logged on (`logged_on_users` is then empty and
    /// means nothing): a `Dynamic` session on it asks for consent rather than assume nobody.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logged_on_users_unknown: bool,
}

/// An enrollment: a bootstrap token and a certificate signing request.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    /// The device group (namespace) to enroll into.
    pub namespace: String,
    /// The device name.
    pub device: String,
    /// The group's bootstrap token.
    pub bootstrap_token: String,
    /// The agent's CSR, PEM. Its subject is ignored: the identity is `namespace`/`device`.
    pub csr: String,
}

impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("namespace", &self.namespace)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// The first message of every connection.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Protocol versions the client speaks.
    pub versions: Vec<u16>,
    /// Who is connecting.
    pub role: Role,
    /// Unused by technicians since they authenticate with a certificate (its grant is the
    /// token); kept so older clients get a clear refusal rather than a parse error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// An agent's device report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    /// An enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll: Option<EnrollRequest>,
    /// Client software and version, for logs.
    #[serde(default)]
    pub client: String,
    /// A name the client claims for itself. Never trusted: the relay takes a technician's
    /// name from the certificate the cluster issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub technician: Option<String>,
    /// Set by a relay forwarding a technician to the replica the device's agent is attached
    /// to; refused on any connection that is not a relay's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<Forwarded>,
}

/// A technician one relay forwards to another: the relay that took the technician's
/// connection verified that they hold the certificate's key; the relay the device is on
/// verifies the certificate itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// The technician's certificate chain as they presented it (PEM, leaf first).
    pub certificate: String,
    /// The forwarding relay's name.
    pub relay: String,
    /// The transport the technician reached it over (`quic`, `tcp`).
    pub transport: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("versions", &self.versions)
            .field("role", &self.role)
            .field("has_token", &self.token.is_some())
            .field("agent", &self.agent)
            .field("enroll", &self.enroll)
            .field("client", &self.client)
            .field("technician", &self.technician)
            .field("forwarded", &self.forwarded.as_ref().map(|f| &f.relay))
            .finish()
    }
}

/// What a technician's connection is for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The RemoteSession's uid.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The device.
    pub device: String,
    /// When the relay closes it (Unix seconds).
    pub ends_at: i64,
    /// What the technician may do.
    pub permissions: Permissions,
}

/// The relay's answer to an accepted [`Hello`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// The version spoken from now on.
    pub version: u16,
    /// The relay's name, for logs.
    pub relay: String,
    /// For technicians: the session joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
    /// For enrollments: the signed client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// For enrollments: the CA bundle to trust (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// Why something was refused.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RefusalCode {
    /// No common protocol version.
    UnsupportedVersion,
    /// Missing or invalid credentials.
    Unauthenticated,
    /// Valid credentials that do not allow this.
    Forbidden,
    /// The session has ended (expired, terminated, revoked).
    SessionEnded,
    /// The session's device is not connected.
    DeviceOffline,
    /// The user refused (or did not answer) the consent prompt.
    ConsentDenied,
    /// The request did not make sense.
    Malformed,
    /// The relay cannot serve it now (shutting down, overloaded).
    Unavailable,
}

/// A refusal, with a sentence for the person on the other side.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    /// Machine-readable code.
    pub code: RefusalCode,
    /// Human-readable explanation.
    pub message: String,
}

/// The relay's answer to a [`Hello`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum HelloReply {
    /// Accepted.
    Welcome(Welcome),
    /// Refused.
    Refused(Refused),
}

/// A channel kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ChannelKind {
    /// A shell (PTY or plain pipes).
    Shell,
    /// The file manager.
    Files,
    /// Chat with the user, including files.
    Chat,
    /// The process list.
    Processes,
    /// The desktop (RFB).
    Desktop,
}

/// The send priority of control streams: above every channel (a countdown, an end or a
/// consent prompt never waits behind data).
pub const CONTROL_PRIORITY: i32 = 16;

impl ChannelKind {
    /// The send priority of this channel's streams, for every sender (agent, relay, CLI):
    /// interactive channels (a keystroke and its echo, the desktop's input and updates, chat)
    /// above bulk ones (file transfers), so typing stays responsive while a file downloads
    /// on the same session.
    pub fn priority(self) -> i32 {
        match self {
            Self::Shell | Self::Chat | Self::Processes | Self::Desktop => 8,
            Self::Files => 0,
        }
    }

    /// Lower-case name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Files => "files",
            Self::Chat => "chat",
            Self::Processes => "processes",
            Self::Desktop => "desktop",
        }
    }

    /// Whether `permissions` allow this channel.
    pub fn allowed_by(self, permissions: &Permissions) -> bool {
        use crate::token::DesktopPermission;
        match self {
            Self::Shell => permissions.shell,
            Self::Files => permissions.files,
            Self::Chat => permissions.chat,
            Self::Processes => permissions.processes,
            Self::Desktop => permissions.desktop != DesktopPermission::None,
        }
    }
}

/// How to start a shell.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShellParams {
    /// Command and arguments; empty for the account's login shell.
    #[serde(default)]
    pub command: Vec<String>,
    /// Run on a PTY (interactive) rather than plain pipes.
    #[serde(default)]
    pub tty: bool,
    /// Terminal width.
    #[serde(default)]
    pub cols: u16,
    /// Terminal height.
    #[serde(default)]
    pub rows: u16,
    /// `TERM` for the PTY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// First message on a technician's channel stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attach {
    /// Which channel.
    pub kind: ChannelKind,
    /// Shell parameters, for [`ChannelKind::Shell`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<ShellParams>,
}

/// The relay's answer on a technician's channel stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum AttachReply {
    /// The channel is joined to the agent; frames flow from here on.
    Attached {
        /// The channel id.
        channel: u64,
    },
    /// Refused.
    Refused(Refused),
}

/// First message on an agent's channel stream: which requested channel this stream is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Join {
    /// The channel id from [`Control::Open`].
    pub channel: u64,
}

/// Messages on a connection's control stream after the handshake.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Control {
    /// Relay → agent: a technician wants to join a session; ask the user if `consent`.
    Offer {
        /// The session.
        session: SessionInfo,
        /// Who is asking.
        technician: String,
        /// Whether the user must consent.
        consent: bool,
        /// Why the session exists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The ticket the session is for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ticket: Option<String>,
        /// How long the user has to answer.
        timeout_secs: u32,
    },
    /// Agent → relay: the user's answer to an [`Control::Offer`].
    Consent {
        /// The session.
        session_uid: String,
        /// Whether the user agreed.
        granted: bool,
        /// Why not, or how (e.g. `UserConsented`, `ConsentTimedOut`).
        reason: String,
    },
    /// Relay → agent: open a stream for this channel.
    Open {
        /// Channel id to send back in [`Join`].
        channel: u64,
        /// The session.
        session_uid: String,
        /// What the technician attached.
        attach: Attach,
        /// The technician, for logs and the user's awareness.
        technician: String,
        /// What the session's grant allows, as the relay verified it: the agent enforces the
        /// desktop's view-only and clipboard directions itself too, as a second line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        permissions: Option<Permissions>,
    },
    /// Relay → both: the session ends in `seconds_left` seconds.
    Countdown {
        /// The session.
        session_uid: String,
        /// Seconds until the relay closes it.
        seconds_left: i64,
    },
    /// Relay → both: the session is over; its channels are closed.
    Ended {
        /// The session.
        session_uid: String,
        /// Why (`Expired`, `Terminated`, `EndedByUser`, `EndedByTechnician`, …).
        reason: String,
    },
    /// Agent or technician → relay: end the session now.
    End {
        /// The session.
        session_uid: String,
        /// Why.
        reason: String,
    },
    /// Agent → relay: updated device report (e.g. someone logged on).
    Status(AgentInfo),
    /// Relay → all: the relay is shutting down; reconnect elsewhere or later.
    Goodbye {
        /// Why.
        reason: String,
    },
    /// Liveness probe; answered with [`Control::Pong`].
    Ping {
        /// Echoed back.
        n: u64,
    },
    /// Answer to [`Control::Ping`].
    Pong {
        /// The ping's number.
        n: u64,
    },
    /// Relay → technicians: who is in the session now, each with what their grant allows on
    /// the desktop; sent to every technician whenever one joins or leaves. Clients ignore
    /// control messages they do not know, so older ones simply do not show it.
    Participants {
        /// The session.
        session_uid: String,
        /// The technicians joined, in the order they joined.
        technicians: Vec<Participant>,
    },
    /// Technician → relay: a renewed client certificate (PEM, leaf first) for the same key,
    /// identity and session, before the one the connection was opened with expires.
    Renew {
        /// The certificate chain, PEM.
        certificate: String,
    },
    /// Relay → technician: the renewal was accepted; the connection now lasts until
    /// `expires_at` (Unix seconds) unless renewed again.
    Renewed {
        /// The new certificate's expiry.
        expires_at: i64,
    },
}

/// A technician in a session, as [`Control::Participants`] lists them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// The name the cluster vouched for (from the technician's certificate; escape it where
    /// it is shown).
    pub name: String,
    /// What their grant allows on the desktop.
    pub desktop: crate::token::DesktopPermission,
    /// When they joined (Unix seconds).
    pub joined_at: i64,
}

/// Messages on a shell channel (both directions), beside the data frames.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ShellMessage {
    /// Technician → agent: the terminal changed size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Agent → technician: standard error output (pipes mode).
    Stderr {
        /// The bytes, as text (lossy).
        text: String,
    },
    /// Agent → technician: the process exited.
    Exit {
        /// Exit code, if it exited normally.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// Signal name, if it was killed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// Agent → technician: the shell could not start.
    Error {
        /// Why.
        message: String,
    },
}

/// An auditor's request, one per stream (auditor → relay).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum AuditRequest {
    /// The manifests of the namespace's recordings, or of one session's.
    List {
        /// Only this session's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// One recorded object: [`AuditResponse::Sending`], then its bytes as data frames, then
    /// end-of-data.
    Read {
        /// The session's name.
        session: String,
        /// The session's uid (a name can be reused).
        uid: String,
        /// The object's name, as in the manifest.
        object: String,
    },
}

/// The relay's answer to an [`AuditRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(
    tag = "result",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum AuditResponse {
    /// Recording manifests (the recording crate's `Manifest`, as JSON), oldest first.
    Recordings {
        /// The manifests.
        manifests: Vec<serde_json::Value>,
    },
    /// An object follows.
    Sending {
        /// Its size in bytes.
        size: u64,
    },
    /// The request was refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
