//! The phonebook's signalling protocol: JSON text frames over one WebSocket.
//!
//! Every message is an object whose `type` field names it. The first message a client
//! sends is `hello` with the protocol version it speaks; the server answers `welcome` or
//! an `unsupported_version` error and closes. After that, clients register as callees,
//! listen for the callee list, and place and answer calls; the server relays call
//! messages between the two ends and never looks inside the SDP.
//!
//! Compatibility rules: a new message or a new optional field is added, never a changed
//! one; receivers ignore fields they do not know. `docs/protocol.md` shows one example per
//! message, and a test checks that each example round-trips through these types exactly.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest accepted callee name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Longest accepted call id, in bytes.
pub const MAX_CALL_ID_LEN: usize = 64;

/// A message from a client (a device or a page) to the phonebook server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must come first: states the protocol version the client speaks.
    Hello {
        /// Protocol version, [`PROTOCOL_VERSION`] for this build.
        version: u32,
        /// Free text naming the client software, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// A device token, user token or passphrase, when the phonebook asks for one
        /// (its `welcome` says which `auth` it uses).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<Secret>,
    },
    /// Offer calls under `name`, described by `meta` (shown in the callee list).
    Register {
        /// The callee name, unique on this phonebook.
        name: String,
        /// A JSON object shown to callers: board, resolution, audio, …
        #[serde(default = "empty_object")]
        meta: Value,
    },
    /// Stop being reachable under `name`.
    Unregister {
        /// A name this connection registered.
        name: String,
    },
    /// A callee sets itself to do-not-disturb or back to available.
    SetPresence {
        /// A name this connection registered.
        name: String,
        /// `available` or `dnd`; the other presences are the phonebook's to compute.
        presence: Presence,
    },
    /// Send the full callee list now, then every change as it happens.
    Listen,
    /// Stop the pushed callee changes.
    Unlisten,
    /// Call `callee` with an SDP offer; `call_id` is chosen by the caller.
    Call {
        /// Identifies this call in every later message.
        call_id: String,
        /// The callee name to ring.
        callee: String,
        /// The caller's metadata object, shown to the callee (e.g. `callerName`).
        #[serde(default = "empty_object")]
        meta: Value,
        /// The caller's SDP offer.
        sdp: String,
    },
    /// The callee tells the caller that the call is ringing.
    Ringing {
        /// The call that rings.
        call_id: String,
        /// The callee's SDP answer, sent while it still rings so the caller's media (a
        /// camera's picture) shows before anyone answers; `accept` follows with it again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp: Option<String>,
    },
    /// The callee accepts with its SDP answer.
    Accept {
        /// The call accepted.
        call_id: String,
        /// The callee's SDP answer.
        sdp: String,
    },
    /// The callee declines, with a reason shown to the caller.
    Decline {
        /// The call declined.
        call_id: String,
        /// Human-readable reason, e.g. "Not now".
        reason: String,
    },
    /// A trickled ICE candidate for the other end; `null` means end of candidates.
    Candidate {
        /// The call the candidate belongs to.
        call_id: String,
        /// The candidate, in the browser's `RTCIceCandidateInit` shape.
        candidate: Option<IceCandidate>,
    },
    /// Either end hangs up.
    Hangup {
        /// The call ended.
        call_id: String,
        /// Human-readable reason, e.g. "caller hung up".
        reason: String,
    },
}

/// A message from the phonebook server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to a `hello` with a supported version.
    Welcome {
        /// The protocol version the server will speak.
        version: u32,
        /// Free text naming the server software.
        server: String,
        /// STUN/TURN servers the page should use (may be empty on a LAN).
        #[serde(default)]
        ice_servers: Vec<IceServer>,
        /// Who may call on this phonebook: `open`, `passphrase` or `users`.
        #[serde(default)]
        auth: super::access::CallerMode,
    },
    /// A `register` succeeded.
    Registered {
        /// The name now owned by this connection.
        name: String,
    },
    /// An `unregister` succeeded.
    Unregistered {
        /// The name released.
        name: String,
    },
    /// The full callee list, sent once in reply to `listen`.
    Callees {
        /// Every registered callee.
        callees: Vec<Callee>,
    },
    /// A callee appeared or its presence or metadata changed.
    CalleeUpdate {
        /// The callee as it is now.
        callee: Callee,
    },
    /// A callee went away.
    CalleeRemoved {
        /// The name that is free again.
        name: String,
    },
    /// Sent to a callee: somebody calls.
    IncomingCall {
        /// Identifies the call in every later message.
        call_id: String,
        /// Which of the connection's names was called.
        callee: String,
        /// The caller's metadata object.
        meta: Value,
        /// The caller's SDP offer.
        sdp: String,
    },
    /// Sent to a caller: the callee rings.
    Ringing {
        /// The call that rings.
        call_id: String,
        /// The callee's early SDP answer, when it sent one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp: Option<String>,
    },
    /// Sent to a caller: the callee accepted.
    Accepted {
        /// The call accepted.
        call_id: String,
        /// The callee's SDP answer.
        sdp: String,
    },
    /// Sent to a caller: the callee declined.
    Declined {
        /// The call declined.
        call_id: String,
        /// The callee's reason, verbatim.
        reason: String,
    },
    /// A trickled ICE candidate from the other end.
    Candidate {
        /// The call the candidate belongs to.
        call_id: String,
        /// The candidate; `null` means end of candidates.
        candidate: Option<IceCandidate>,
    },
    /// The other end hung up, or went away.
    Hangup {
        /// The call ended.
        call_id: String,
        /// Why it ended.
        reason: String,
    },
    /// A request failed; the connection stays open unless the code says otherwise.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// The call the error concerns, when there is one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    },
}

/// Stable error codes; new ones may be added, existing ones never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The `hello` named a version this server does not speak; the server closes.
    UnsupportedVersion,
    /// A message other than `hello` came first; the server closes.
    HelloRequired,
    /// The text was not JSON, or not a known message, or a field was invalid.
    BadMessage,
    /// The message was larger than the server accepts.
    TooLarge,
    /// The callee name is registered by another connection.
    NameTaken,
    /// The name is not a valid callee name.
    InvalidName,
    /// No callee of that name is registered.
    UnknownCallee,
    /// No call of that id exists for this connection.
    UnknownCall,
    /// A call with that id already exists.
    DuplicateCall,
    /// The name was not registered by this connection.
    NotRegistered,
    /// No credentials, or unknown ones (`hello.token`); after `hello` the server closes.
    Unauthorized,
    /// The credentials are known but do not allow this (a rule, someone else's name).
    Forbidden,
    /// The connection sends more messages per second than the server accepts; the
    /// message was dropped.
    RateLimited,
    /// The caller already has as many unanswered calls as the server accepts.
    TooManyCalls,
    /// The connection already holds as many names as the server accepts.
    TooManyNames,
    /// This end of the call already sent as many ICE candidates as the server relays;
    /// the candidate was dropped.
    TooManyCandidates,
}

/// A token or passphrase: sent as a plain JSON string, never shown in logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// The secret's text, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Presence of a callee as shown in the phonebook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Registered, nothing going on.
    Available,
    /// At least one call rings and none is in progress.
    Ringing,
    /// At least one call has been accepted.
    InCall,
    /// The callee asked not to be disturbed; calls are declined with its reason.
    Dnd,
}

/// One entry of the phonebook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Callee {
    /// The callee name.
    pub name: String,
    /// The metadata object given at registration.
    pub meta: Value,
    /// What the callee is doing now.
    pub presence: Presence,
}

/// An ICE candidate in the browser's `RTCIceCandidateInit` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line.
    pub candidate: String,
    /// The media stream identification tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of the m-line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// The ICE username fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A STUN or TURN server in the browser's `RTCIceServer` shape.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` or `turn:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Config only, never sent: coturn's `static-auth-secret`, from which short-lived
    /// credentials are made for each client (its "TURN REST API").
    #[serde(default, skip_serializing)]
    pub secret: Option<Secret>,
    /// Config only: how long credentials made from `secret` last, in seconds (a day).
    #[serde(default, skip_serializing)]
    pub ttl_secs: Option<u64>,
}

impl std::fmt::Debug for IceServer {
    // TURN credentials are secrets too: logs get the URLs only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username.as_ref().map(|_| "<redacted>"))
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("secret", &self.secret)
            .finish()
    }
}

impl IceServer {
    /// The server as a client gets it at `now_unix`: with a `secret`, a username
    /// `<expiry>:<user>` and its HMAC-SHA1 as the credential, as coturn checks them.
    pub fn for_client(&self, now_unix: u64, user: &str) -> IceServer {
        let Some(secret) = &self.secret else {
            return IceServer {
                secret: None,
                ttl_secs: None,
                ..self.clone()
            };
        };
        use base64::Engine;
        let expiry = now_unix + self.ttl_secs.unwrap_or(24 * 3600);
        let username = format!("{expiry}:{user}");
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            secret.expose().as_bytes(),
        );
        let tag = ring::hmac::sign(&key, username.as_bytes());
        IceServer {
            urls: self.urls.clone(),
            username: Some(username),
            credential: Some(base64::engine::general_purpose::STANDARD.encode(tag.as_ref())),
            secret: None,
            ttl_secs: None,
        }
    }
}

/// `servers` as a client gets them now (fresh TURN credentials where there is a secret).
pub fn ice_for_client(servers: &[IceServer], user: &str) -> Vec<IceServer> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    servers.iter().map(|s| s.for_client(now, user)).collect()
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl ClientMessage {
    /// Parses one text frame, with an error that says what is wrong in plain words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|err| format!("not valid JSON: {err}"))?;
        // serde would also take the array form of a tagged enum; the protocol is objects.
        if !value.is_object() {
            return Err("a message is a JSON object with a \"type\" field".into());
        }
        serde_json::from_value(value).map_err(|err| format!("not a valid message: {err}"))
    }

    /// The `type` tag of this message, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Register { .. } => "register",
            ClientMessage::Unregister { .. } => "unregister",
            ClientMessage::SetPresence { .. } => "set_presence",
            ClientMessage::Listen => "listen",
            ClientMessage::Unlisten => "unlisten",
            ClientMessage::Call { .. } => "call",
            ClientMessage::Ringing { .. } => "ringing",
            ClientMessage::Accept { .. } => "accept",
            ClientMessage::Decline { .. } => "decline",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::Hangup { .. } => "hangup",
        }
    }
}

/// Longest SDP (offer or answer) relayed, and longest WHEP offer or candidate fragment
/// accepted, in bytes.
pub const MAX_SDP_BYTES: usize = 32 * 1024;

/// The length of `value` as JSON text, counted as it is written out and not kept.
pub fn wire_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Our message types always serialise; a failure would only undercount.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl ServerMessage {
    /// Serialises to the text frame sent on the wire.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }

    /// The length of [`ServerMessage::to_text`], counted without building the text: what
    /// a queued message is charged, whether it goes out on a socket or stays in-process.
    pub fn wire_len(&self) -> usize {
        wire_len(self)
    }

    /// Builds an error message.
    pub fn error(code: ErrorCode, message: impl Into<String>, call_id: Option<&str>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            call_id: call_id.map(str::to_owned),
        }
    }
}

/// Checks a callee name: 1 to [`MAX_NAME_LEN`] bytes of letters, digits, space, `.`, `_`
/// and `-`, not starting or ending with a space.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("a name has 1 to {MAX_NAME_LEN} characters"));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err("a name does not start or end with a space".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-')))
    {
        return Err(format!(
            "a name uses letters, digits, space, '.', '_' and '-' only, not {bad:?}"
        ));
    }
    Ok(())
}

/// The key a callee name is compared by: names differ in more than case, so `Cam` and
/// `cam` are one name (the phonebook keeps the spelling it was registered with).
pub fn name_key(name: &str) -> String {
    // Names are ASCII (see `validate_name`); anything else never reaches a registration.
    name.to_ascii_lowercase()
}

/// Checks a call id: 1 to [`MAX_CALL_ID_LEN`] bytes of letters, digits, `_` and `-`.
pub fn validate_call_id(call_id: &str) -> Result<(), String> {
    if call_id.is_empty()
        || call_id.len() > MAX_CALL_ID_LEN
        || !call_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(format!(
            "a call id has 1 to {MAX_CALL_ID_LEN} letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("front-door").is_ok());
        assert!(validate_name("Workshop cam 2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(" x").is_err());
        assert!(validate_name("a<b>").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn unknown_type_is_a_readable_error() {
        let err = ClientMessage::parse(r#"{"type":"dance"}"#).unwrap_err();
        assert!(err.contains("dance"), "{err}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let msg = ClientMessage::parse(r#"{"type":"listen","future":1}"#).unwrap();
        assert_eq!(msg, ClientMessage::Listen);
    }
}
