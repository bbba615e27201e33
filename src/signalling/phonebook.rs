//! The phonebook's logic, without sockets.
//!
//! [`Phonebook`] takes what a connection said and returns what must be sent to whom
//! ([`Output`]). The WebSocket layer in [`super::server`] only moves text in and out, so
//! every rule here (registration, presence, call routing, errors) is tested by feeding
//! messages and looking at the outputs. Call routing is in `phonebook/calls.rs`.

mod calls;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use tracing::debug;

use super::access::{AccessSettings, Identity, Refused};
use super::limits::Limits;
use super::protocol::{
    Callee, ClientMessage, ErrorCode, IceServer, PROTOCOL_VERSION, Presence, ServerMessage,
    name_key, validate_name,
};
use super::sanitize::for_log;

/// Identifies one client connection.
pub type ConnId = u64;

/// Frames above this size get a `too_large` error instead of being parsed.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub use super::protocol::MAX_SDP_BYTES;

/// Longest ICE candidate line relayed, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

/// Largest `meta` of a registration, in bytes of JSON: every listener gets it with each
/// change of the callee.
pub const MAX_CALLEE_META_BYTES: usize = 4 * 1024;

/// Unanswered calls one connection may have at once, unless set otherwise.
pub const DEFAULT_PENDING_CALLS: usize = super::limits::DEFAULT_PENDING_CALLS;

/// Where the STUN/TURN servers handed out in `welcome` come from: a fixed list, or
/// credentials made fresh for each connection (coturn's time-limited ones).
pub type IceSource = Box<dyn Fn() -> Vec<IceServer> + Send>;

/// What the socket layer must do after the phonebook handled an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this message on that connection.
    Send(ConnId, ServerMessage),
    /// Close that connection (after sending what was queued before).
    Close(ConnId),
}

#[derive(Debug)]
struct Connection {
    greeted: bool,
    listening: bool,
    /// The keys ([`name_key`]) of the names it holds.
    names: BTreeSet<String>,
    identity: Identity,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            greeted: false,
            listening: false,
            names: BTreeSet::new(),
            identity: Identity::Anonymous,
        }
    }
}

#[derive(Debug)]
struct Registration {
    /// The name as it was registered (the key is its [`name_key`]).
    name: String,
    owner: ConnId,
    meta: Value,
    dnd: bool,
}

/// The phonebook: who is registered under which name, who listens, and which calls are
/// being routed between which connections.
pub struct Phonebook {
    server_name: String,
    ice_servers: IceSource,
    access: AccessSettings,
    limits: Limits,
    connections: HashMap<ConnId, Connection>,
    /// By [`name_key`]: `Cam` and `cam` are one name.
    callees: BTreeMap<String, Registration>,
    calls: HashMap<String, calls::Route>,
}

impl std::fmt::Debug for Phonebook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phonebook")
            .field("callees", &self.callees)
            .field("calls", &self.calls)
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

impl Phonebook {
    /// An empty, open phonebook that hands `ice_servers` to every client in `welcome`.
    pub fn new(ice_servers: Vec<IceServer>) -> Self {
        Phonebook {
            server_name: format!("peercam/{}", env!("CARGO_PKG_VERSION")),
            ice_servers: Box::new(move || ice_servers.clone()),
            access: AccessSettings::default(),
            limits: Limits::default(),
            connections: HashMap::new(),
            callees: BTreeMap::new(),
            calls: HashMap::new(),
        }
    }

    /// The same phonebook, letting in only whom `access` allows.
    pub fn with_access(mut self, access: AccessSettings) -> Self {
        self.access = access;
        self
    }

    /// The same phonebook, with the ICE servers made by `source` for each `welcome`.
    pub fn with_ice_source(mut self, source: IceSource) -> Self {
        self.ice_servers = source;
        self
    }

    /// The same phonebook, with `limits` on unanswered calls, names and candidates.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether `conn` holds at least one registered name.
    pub fn holds_a_name(&self, conn: ConnId) -> bool {
        self.connections
            .get(&conn)
            .is_some_and(|c| !c.names.is_empty())
    }

    /// Whether `conn` asked for the callee list and its changes.
    pub fn is_listening(&self, conn: ConnId) -> bool {
        self.connections.get(&conn).is_some_and(|c| c.listening)
    }

    /// The STUN/TURN servers a client gets now.
    pub fn ice_servers(&self) -> Vec<IceServer> {
        (self.ice_servers)()
    }

    /// Who a connection proved to be (anonymous until its `hello`).
    pub fn identity(&self, conn: ConnId) -> Option<&Identity> {
        self.connections.get(&conn).map(|c| &c.identity)
    }

    /// A new connection opened.
    pub fn connect(&mut self, conn: ConnId) {
        self.connections.insert(conn, Connection::default());
    }

    /// The registered callees with their presence, in name order (ignoring case).
    pub fn callees(&self) -> Vec<Callee> {
        self.callees
            .keys()
            .filter_map(|key| self.callee_entry(key))
            .collect()
    }

    /// Whether a callee `name` (in any spelling) is registered now.
    pub fn has_callee(&self, name: &str) -> bool {
        self.callees.contains_key(&name_key(name))
    }

    /// The connection holding the name `name` (in any spelling).
    pub fn owner_of(&self, name: &str) -> Option<ConnId> {
        self.callees.get(&name_key(name)).map(|r| r.owner)
    }

    /// Number of calls being routed (ringing or in progress).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Reads one text frame: the message, or the error code and why it is not one.
    pub fn parse_text(text: &str) -> Result<ClientMessage, (ErrorCode, String)> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
                    text.len()
                ),
            ));
        }
        ClientMessage::parse(text).map_err(|why| (ErrorCode::BadMessage, why))
    }

    /// A text frame arrived on `conn`.
    pub fn handle_text(&mut self, conn: ConnId, text: &str) -> Vec<Output> {
        match Self::parse_text(text) {
            Ok(msg) => self.handle(conn, msg),
            Err((code, why)) => self.invalid(conn, code, why),
        }
    }

    /// `conn` sent something that is not a message (unparseable, binary, too large).
    /// Before `hello` that ends the connection with `hello_required`; after it, the
    /// client gets `code` and may go on.
    pub fn invalid(&mut self, conn: ConnId, code: ErrorCode, why: String) -> Vec<Output> {
        // A frame read after the connection was dropped (a stalled client) has nobody to
        // answer, as in `handle`.
        let Some(greeted) = self.connections.get(&conn).map(|c| c.greeted) else {
            return Vec::new();
        };
        if greeted {
            vec![error(conn, code, why, None)]
        } else {
            vec![
                error(
                    conn,
                    ErrorCode::HelloRequired,
                    format!("the first message must be hello with a version ({why})"),
                    None,
                ),
                Output::Close(conn),
            ]
        }
    }

    /// A parsed message arrived on `conn`.
    pub fn handle(&mut self, conn: ConnId, msg: ClientMessage) -> Vec<Output> {
        let Some(state) = self.connections.get_mut(&conn) else {
            return Vec::new();
        };
        if !state.greeted {
            return self.greet(conn, msg);
        }

        match msg {
            ClientMessage::Hello { .. } => vec![error(
                conn,
                ErrorCode::BadMessage,
                "hello was already received on this connection",
                None,
            )],
            ClientMessage::Register { name, meta } => self.register(conn, name, meta),
            ClientMessage::Unregister { name } => self.unregister(conn, &name),
            ClientMessage::SetPresence { name, presence } => {
                self.set_presence(conn, &name, presence)
            }
            ClientMessage::Listen => {
                if let Err(refused) = self.access.may_listen(&state.identity) {
                    return vec![refusal(conn, refused, None)];
                }
                state.listening = true;
                vec![Output::Send(
                    conn,
                    ServerMessage::Callees {
                        callees: self.callees(),
                    },
                )]
            }
            ClientMessage::Unlisten => {
                state.listening = false;
                Vec::new()
            }
            other => self.route(conn, other),
        }
    }

    /// The first message of `conn`, which must be a `hello` of our version.
    fn greet(&mut self, conn: ConnId, msg: ClientMessage) -> Vec<Output> {
        let (version, agent, token) = match msg {
            ClientMessage::Hello {
                version,
                agent,
                token,
            } => (version, agent, token),
            other => {
                return vec![
                    error(
                        conn,
                        ErrorCode::HelloRequired,
                        format!(
                            "the first message must be hello with a version, not {}",
                            other.kind()
                        ),
                        None,
                    ),
                    Output::Close(conn),
                ];
            }
        };
        if version != PROTOCOL_VERSION {
            return vec![
                error(
                    conn,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {version} is not supported; this server speaks version {PROTOCOL_VERSION}"
                    ),
                    None,
                ),
                Output::Close(conn),
            ];
        }
        let agent = agent.as_deref().unwrap_or("");
        match self.access.identify(token.as_ref().map(|t| t.expose())) {
            Ok(identity) => {
                debug!(conn, agent = %for_log(agent), "hello");
                if let Some(state) = self.connections.get_mut(&conn) {
                    state.greeted = true;
                    state.identity = identity;
                }
                vec![Output::Send(
                    conn,
                    ServerMessage::Welcome {
                        version: PROTOCOL_VERSION,
                        server: self.server_name.clone(),
                        ice_servers: (self.ice_servers)(),
                        auth: self.access.callers,
                    },
                )]
            }
            Err(refused) => {
                debug!(conn, agent = %for_log(agent), "hello with a token nobody configured");
                vec![refusal(conn, refused, None), Output::Close(conn)]
            }
        }
    }

    /// `conn` closed: release its names, and tell the other end of each of its calls.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Output> {
        let Some(state) = self.connections.remove(&conn) else {
            return Vec::new();
        };
        // Names go first, so listeners do not see the callee turn available on its way out.
        let removed: Vec<String> = state
            .names
            .iter()
            .filter_map(|key| self.callees.remove(key).map(|r| r.name))
            .collect();
        let mut out = self.end_calls_of(conn);
        for name in removed {
            out.extend(self.to_listeners(ServerMessage::CalleeRemoved { name }));
        }
        out
    }

    fn register(&mut self, conn: ConnId, name: String, meta: Value) -> Vec<Output> {
        if let Err(why) = validate_name(&name) {
            return vec![error(conn, ErrorCode::InvalidName, why, None)];
        }
        if !meta.is_object() {
            return vec![error(
                conn,
                ErrorCode::BadMessage,
                "meta must be a JSON object",
                None,
            )];
        }
        let meta_bytes = meta.to_string().len();
        if meta_bytes > MAX_CALLEE_META_BYTES {
            return vec![error(
                conn,
                ErrorCode::TooLarge,
                format!(
                    "a callee's meta of {meta_bytes} bytes is over the limit of {MAX_CALLEE_META_BYTES}"
                ),
                None,
            )];
        }
        let identity = self.connections.get(&conn).map(|c| &c.identity);
        if let Some(identity) = identity
            && let Err(refused) = self.access.may_register(identity, &name)
        {
            return vec![refusal(conn, refused, None)];
        }
        let key = name_key(&name);
        let held = self.connections.get(&conn).map_or(0, |c| c.names.len());
        match self.callees.get_mut(&key) {
            Some(existing) if existing.owner != conn => {
                return vec![error(
                    conn,
                    ErrorCode::NameTaken,
                    format!(
                        "the name {:?} is registered by another connection",
                        existing.name
                    ),
                    None,
                )];
            }
            // Registering a held name again changes its meta; it keeps its spelling.
            Some(existing) => existing.meta = meta,
            None if held >= self.limits.names_per_connection => {
                return vec![error(
                    conn,
                    ErrorCode::TooManyNames,
                    format!(
                        "this connection holds {held} names already (the limit is {})",
                        self.limits.names_per_connection
                    ),
                    None,
                )];
            }
            None => {
                self.callees.insert(
                    key.clone(),
                    Registration {
                        name,
                        owner: conn,
                        meta,
                        dnd: false,
                    },
                );
            }
        }
        if let Some(state) = self.connections.get_mut(&conn) {
            state.names.insert(key.clone());
        }
        let name = self.callees[&key].name.clone();
        let mut out = vec![Output::Send(conn, ServerMessage::Registered { name })];
        out.extend(self.push_callee(&key));
        out
    }

    fn unregister(&mut self, conn: ConnId, name: &str) -> Vec<Output> {
        let key = name_key(name);
        let owned = self.callees.get(&key).is_some_and(|r| r.owner == conn);
        if !owned {
            return vec![not_registered(conn, name)];
        }
        let name = self
            .callees
            .remove(&key)
            .map_or_else(|| name.into(), |r| r.name);
        if let Some(state) = self.connections.get_mut(&conn) {
            state.names.remove(&key);
        }
        // Calls already ringing or running under that name go on: the callee still holds
        // the connection and can answer or hang up.
        let mut out = vec![Output::Send(
            conn,
            ServerMessage::Unregistered { name: name.clone() },
        )];
        out.extend(self.to_listeners(ServerMessage::CalleeRemoved { name }));
        out
    }

    fn set_presence(&mut self, conn: ConnId, name: &str, presence: Presence) -> Vec<Output> {
        let dnd = match presence {
            Presence::Dnd => true,
            Presence::Available => false,
            other => {
                return vec![error(
                    conn,
                    ErrorCode::BadMessage,
                    format!(
                        "only available and dnd can be set, not {}",
                        serde_json::to_string(&other).unwrap_or_default()
                    ),
                    None,
                )];
            }
        };
        let key = name_key(name);
        match self.callees.get_mut(&key) {
            Some(registration) if registration.owner == conn => {
                if registration.dnd == dnd {
                    return Vec::new();
                }
                registration.dnd = dnd;
                self.push_callee(&key)
            }
            _ => vec![not_registered(conn, name)],
        }
    }

    fn callee_entry(&self, key: &str) -> Option<Callee> {
        self.callees.get(key).map(|r| Callee {
            name: r.name.clone(),
            meta: r.meta.clone(),
            presence: self.presence(key),
        })
    }

    /// Tells the listeners how the callee `key` looks now (after a registration or a
    /// presence change).
    fn push_callee(&self, key: &str) -> Vec<Output> {
        match self.callee_entry(key) {
            Some(callee) => self.to_listeners(ServerMessage::CalleeUpdate { callee }),
            None => Vec::new(),
        }
    }

    fn to_listeners(&self, msg: ServerMessage) -> Vec<Output> {
        let mut listeners: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.listening)
            .map(|(id, _)| *id)
            .collect();
        listeners.sort_unstable();
        listeners
            .into_iter()
            .map(|id| Output::Send(id, msg.clone()))
            .collect()
    }
}

fn error(
    conn: ConnId,
    code: ErrorCode,
    message: impl Into<String>,
    call_id: Option<&str>,
) -> Output {
    Output::Send(conn, ServerMessage::error(code, message, call_id))
}

fn refusal(conn: ConnId, refused: Refused, call_id: Option<&str>) -> Output {
    match refused {
        Refused::Unauthorized(why) => error(conn, ErrorCode::Unauthorized, why, call_id),
        Refused::Forbidden(why) => error(conn, ErrorCode::Forbidden, why, call_id),
    }
}

fn not_registered(conn: ConnId, name: &str) -> Output {
    error(
        conn,
        ErrorCode::NotRegistered,
        format!("the name {name:?} is not registered by this connection"),
        None,
    )
}

fn is_error(out: &[Output]) -> bool {
    matches!(
        out.first(),
        Some(Output::Send(_, ServerMessage::Error { .. }))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signalling::limits::Limits;
    use serde_json::json;

    const DEVICE: ConnId = 1;
    const PAGE: ConnId = 2;
    const OTHER: ConnId = 3;

    fn greeted(book: &mut Phonebook, conn: ConnId) {
        book.connect(conn);
        let out = book.handle(
            conn,
            ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                agent: None,
                token: None,
            },
        );
        assert!(matches!(
            out[0],
            Output::Send(_, ServerMessage::Welcome { .. })
        ));
    }

    fn setup() -> Phonebook {
        let mut book = Phonebook::new(Vec::new());
        for conn in [DEVICE, PAGE, OTHER] {
            greeted(&mut book, conn);
        }
        book.handle(
            DEVICE,
            ClientMessage::Register {
                name: "cam".into(),
                meta: json!({"board": "dev"}),
            },
        );
        book
    }

    fn call(book: &mut Phonebook, id: &str) -> Vec<Output> {
        book.handle(
            PAGE,
            ClientMessage::Call {
                call_id: id.into(),
                callee: "cam".into(),
                meta: json!({"callerName": "Ray"}),
                sdp: "offer".into(),
            },
        )
    }

    fn codes(out: &[Output]) -> Vec<ErrorCode> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(_, ServerMessage::Error { code, .. }) => Some(*code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_message_must_be_hello_of_our_version() {
        let mut book = Phonebook::new(Vec::new());
        book.connect(9);
        let out = book.handle(9, ClientMessage::Listen);
        assert_eq!(codes(&out), vec![ErrorCode::HelloRequired]);
        assert_eq!(out[1], Output::Close(9));

        book.connect(10);
        let out = book.handle(
            10,
            ClientMessage::Hello {
                version: 99,
                agent: None,
                token: None,
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::UnsupportedVersion]);
        assert_eq!(out[1], Output::Close(10));
    }

    #[test]
    fn taken_name_is_refused_and_freed_on_disconnect() {
        let mut book = setup();
        let out = book.handle(
            OTHER,
            ClientMessage::Register {
                name: "cam".into(),
                meta: json!({}),
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::NameTaken]);
        book.disconnect(DEVICE);
        let out = book.handle(
            OTHER,
            ClientMessage::Register {
                name: "cam".into(),
                meta: json!({}),
            },
        );
        assert_eq!(
            out[0],
            Output::Send(OTHER, ServerMessage::Registered { name: "cam".into() })
        );
    }

    #[test]
    fn presence_follows_the_call() {
        let mut book = setup();
        book.handle(PAGE, ClientMessage::Listen);
        let out = call(&mut book, "c1");
        assert!(out.contains(&Output::Send(
            DEVICE,
            ServerMessage::IncomingCall {
                call_id: "c1".into(),
                callee: "cam".into(),
                meta: json!({"callerName": "Ray"}),
                sdp: "offer".into()
            }
        )));
        assert_eq!(book.callees()[0].presence, Presence::Ringing);
        book.handle(
            DEVICE,
            ClientMessage::Accept {
                call_id: "c1".into(),
                sdp: "answer".into(),
            },
        );
        assert_eq!(book.callees()[0].presence, Presence::InCall);
        let out = book.handle(
            PAGE,
            ClientMessage::Hangup {
                call_id: "c1".into(),
                reason: "bye".into(),
            },
        );
        assert_eq!(
            out[0],
            Output::Send(
                DEVICE,
                ServerMessage::Hangup {
                    call_id: "c1".into(),
                    reason: "bye".into()
                }
            )
        );
        assert_eq!(book.callees()[0].presence, Presence::Available);
        assert_eq!(book.active_calls(), 0);
    }

    #[test]
    fn dnd_is_set_by_the_owner_only_and_shown_to_listeners() {
        let mut book = setup();
        book.handle(PAGE, ClientMessage::Listen);
        let out = book.handle(
            DEVICE,
            ClientMessage::SetPresence {
                name: "cam".into(),
                presence: Presence::Dnd,
            },
        );
        assert!(matches!(
            &out[0],
            Output::Send(PAGE, ServerMessage::CalleeUpdate { callee }) if callee.presence == Presence::Dnd
        ));
        let out = book.handle(
            OTHER,
            ClientMessage::SetPresence {
                name: "cam".into(),
                presence: Presence::Available,
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::NotRegistered]);
        let out = book.handle(
            DEVICE,
            ClientMessage::SetPresence {
                name: "cam".into(),
                presence: Presence::InCall,
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::BadMessage]);
        assert_eq!(book.callees()[0].presence, Presence::Dnd);
    }

    #[test]
    fn only_the_callee_may_accept_and_strangers_cannot_inject() {
        let mut book = setup();
        call(&mut book, "c1");
        let out = book.handle(
            PAGE,
            ClientMessage::Accept {
                call_id: "c1".into(),
                sdp: "x".into(),
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::UnknownCall]);
        let out = book.handle(
            OTHER,
            ClientMessage::Candidate {
                call_id: "c1".into(),
                candidate: None,
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::UnknownCall]);
    }

    #[test]
    fn decline_reaches_the_caller_verbatim() {
        let mut book = setup();
        call(&mut book, "c1");
        let out = book.handle(
            DEVICE,
            ClientMessage::Decline {
                call_id: "c1".into(),
                reason: "Not now ☕".into(),
            },
        );
        assert_eq!(
            out[0],
            Output::Send(
                PAGE,
                ServerMessage::Declined {
                    call_id: "c1".into(),
                    reason: "Not now ☕".into()
                }
            )
        );
        assert_eq!(book.active_calls(), 0);
    }

    #[test]
    fn a_disconnect_mid_call_tells_the_other_end() {
        let mut book = setup();
        call(&mut book, "c1");
        let out = book.disconnect(PAGE);
        assert_eq!(
            out[0],
            Output::Send(
                DEVICE,
                ServerMessage::Hangup {
                    call_id: "c1".into(),
                    reason: "caller disconnected".into()
                }
            )
        );
        call_from(&mut book, OTHER, "c2");
        let out = book.disconnect(DEVICE);
        assert!(out.contains(&Output::Send(
            OTHER,
            ServerMessage::Hangup {
                call_id: "c2".into(),
                reason: "callee disconnected".into()
            }
        )));
    }

    fn call_from(book: &mut Phonebook, conn: ConnId, id: &str) {
        book.handle(
            conn,
            ClientMessage::Call {
                call_id: id.into(),
                callee: "cam".into(),
                meta: json!({}),
                sdp: "offer".into(),
            },
        );
    }

    #[test]
    fn bad_input_gets_errors_and_changes_nothing() {
        let mut book = setup();
        assert_eq!(
            codes(&book.handle_text(PAGE, "{not json")),
            vec![ErrorCode::BadMessage]
        );
        assert_eq!(
            codes(&book.handle_text(PAGE, &"x".repeat(MAX_MESSAGE_BYTES + 1))),
            vec![ErrorCode::TooLarge]
        );
        let out = book.handle(
            PAGE,
            ClientMessage::Call {
                call_id: "c1".into(),
                callee: "nobody".into(),
                meta: json!({}),
                sdp: "offer".into(),
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::UnknownCallee]);
        call(&mut book, "c1");
        assert_eq!(
            codes(&call(&mut book, "c1")),
            vec![ErrorCode::DuplicateCall]
        );
        let out = book.handle(
            PAGE,
            ClientMessage::Call {
                call_id: "bad id!".into(),
                callee: "cam".into(),
                meta: json!({}),
                sdp: "offer".into(),
            },
        );
        assert_eq!(codes(&out), vec![ErrorCode::BadMessage]);
        assert_eq!(book.active_calls(), 1);
        assert_eq!(book.callees().len(), 1);
    }

    fn hello_with(book: &mut Phonebook, conn: ConnId, token: Option<&str>) -> Vec<Output> {
        book.connect(conn);
        book.handle(
            conn,
            ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                agent: None,
                token: token.map(|t| crate::signalling::protocol::Secret(t.into())),
            },
        )
    }

    fn guarded() -> Phonebook {
        let access: AccessSettings = toml::from_str(
            r#"
            callers = "users"
            users = { ray = "ray-token-1", eve = "eve-token-1" }
            devices = { cam = "cam-token-1" }
            [[rules]]
            callee = "cam"
            allow = ["ray"]
            "#,
        )
        .unwrap();
        Phonebook::new(Vec::new()).with_access(access)
    }

    #[test]
    fn unknown_tokens_are_turned_away_at_hello() {
        let mut book = guarded();
        let out = hello_with(&mut book, 1, Some("guessed-token"));
        assert_eq!(codes(&out), vec![ErrorCode::Unauthorized]);
        assert_eq!(out[1], Output::Close(1));
        // No token: welcome, but nothing else until it shows one.
        let out = hello_with(&mut book, 2, None);
        assert!(matches!(
            &out[0],
            Output::Send(_, ServerMessage::Welcome { auth, .. }) if *auth == crate::signalling::access::CallerMode::Users
        ));
        assert_eq!(
            codes(&book.handle(2, ClientMessage::Listen)),
            vec![ErrorCode::Unauthorized]
        );
    }

    #[test]
    fn a_device_name_needs_its_token_and_callers_their_rules() {
        let mut book = guarded();
        hello_with(&mut book, DEVICE, Some("cam-token-1"));
        hello_with(&mut book, PAGE, Some("ray-token-1"));
        hello_with(&mut book, OTHER, Some("eve-token-1"));
        let register = |name: &str| ClientMessage::Register {
            name: name.into(),
            meta: json!({}),
        };
        // Eve cannot take the camera's name, even before the camera registers.
        assert_eq!(
            codes(&book.handle(OTHER, register("cam"))),
            vec![ErrorCode::Unauthorized]
        );
        assert!(codes(&book.handle(DEVICE, register("cam"))).is_empty());
        assert!(codes(&book.handle(OTHER, register("eve"))).is_empty());
        assert_eq!(
            codes(&book.handle(OTHER, register("ray"))),
            vec![ErrorCode::Forbidden]
        );
        let call = |id: &str, meta: Value| ClientMessage::Call {
            call_id: id.into(),
            callee: "cam".into(),
            meta,
            sdp: "offer".into(),
        };
        assert_eq!(
            codes(&book.handle(OTHER, call("e1", json!({})))),
            vec![ErrorCode::Forbidden]
        );
        // Ray claims to be someone else; the camera is told who he is.
        let out = book.handle(
            PAGE,
            call("r1", json!({"user": "admin", "callerName": "Ray"})),
        );
        let meta = out
            .iter()
            .find_map(|o| match o {
                Output::Send(DEVICE, ServerMessage::IncomingCall { meta, .. }) => Some(meta),
                _ => None,
            })
            .expect("the camera rings");
        assert_eq!(meta["user"], "ray");
        assert_eq!(meta["callerName"], "Ray");
    }

    #[test]
    fn open_phonebooks_drop_a_claimed_user() {
        let mut book = setup();
        let out = book.handle(
            PAGE,
            ClientMessage::Call {
                call_id: "c1".into(),
                callee: "cam".into(),
                meta: json!({"user": "admin"}),
                sdp: "offer".into(),
            },
        );
        assert!(matches!(
            &out[0],
            Output::Send(DEVICE, ServerMessage::IncomingCall { meta, .. }) if meta.get("user").is_none()
        ));
    }

    #[test]
    fn unanswered_calls_and_sdp_size_are_limited() {
        let mut book = setup().with_limits(Limits {
            pending_calls: 2,
            ..Limits::default()
        });
        assert!(codes(&call(&mut book, "c1")).is_empty());
        assert!(codes(&call(&mut book, "c2")).is_empty());
        assert_eq!(codes(&call(&mut book, "c3")), vec![ErrorCode::TooManyCalls]);
        // Answered calls no longer count.
        book.handle(
            DEVICE,
            ClientMessage::Accept {
                call_id: "c1".into(),
                sdp: "answer".into(),
            },
        );
        assert!(codes(&call(&mut book, "c3")).is_empty());
        let big = book.handle(
            OTHER,
            ClientMessage::Call {
                call_id: "big".into(),
                callee: "cam".into(),
                meta: json!({}),
                sdp: "x".repeat(MAX_SDP_BYTES + 1),
            },
        );
        assert_eq!(codes(&big), vec![ErrorCode::TooLarge]);
        let answer = book.handle(
            DEVICE,
            ClientMessage::Accept {
                call_id: "c2".into(),
                sdp: "x".repeat(MAX_SDP_BYTES + 1),
            },
        );
        assert_eq!(codes(&answer), vec![ErrorCode::TooLarge]);
        assert_eq!(book.active_calls(), 3);
    }

    #[test]
    fn a_bell_may_ring_its_whole_household_at_once() {
        let mut access = AccessSettings::default();
        let household: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
        access.rings.insert("Cam".into(), household.clone());
        let mut book = setup().with_access(access).with_limits(Limits {
            pending_calls: 2,
            ..Limits::default()
        });
        let mut pages = Vec::new();
        for (i, name) in household.iter().enumerate() {
            let conn = 10 + i as ConnId;
            greeted(&mut book, conn);
            book.handle(
                conn,
                ClientMessage::Register {
                    name: name.clone(),
                    meta: json!({}),
                },
            );
            pages.push(conn);
        }
        let ring = |book: &mut Phonebook, conn: ConnId, id: &str, callee: &str| {
            book.handle(
                conn,
                ClientMessage::Call {
                    call_id: id.into(),
                    callee: callee.into(),
                    meta: json!({"kind": "bell"}),
                    sdp: "offer".into(),
                },
            )
        };
        // The camera holds "cam", whose bell rings six: six unanswered calls, not two.
        for (i, name) in household.iter().enumerate() {
            assert!(codes(&ring(&mut book, DEVICE, &format!("b{i}"), name)).is_empty());
        }
        let seventh = ring(&mut book, DEVICE, "b7", "p0");
        assert_eq!(codes(&seventh), vec![ErrorCode::TooManyCalls]);
        // Everyone else keeps the limit.
        assert!(codes(&call(&mut book, "c1")).is_empty());
        assert!(codes(&call(&mut book, "c2")).is_empty());
        assert_eq!(codes(&call(&mut book, "c3")), vec![ErrorCode::TooManyCalls]);
        // The bell's own candidates and hang-ups draw on the larger allowance, as the
        // callee's do; a page's on the calls it placed do not.
        let candidate = ClientMessage::Candidate {
            call_id: "b0".into(),
            candidate: None,
        };
        assert!(book.answers_call(DEVICE, &candidate));
        assert!(book.answers_call(pages[0], &candidate));
        assert!(!book.answers_call(pages[1], &candidate));
        let hangup = ClientMessage::Hangup {
            call_id: "c1".into(),
            reason: "bye".into(),
        };
        assert!(!book.answers_call(PAGE, &hangup));
        assert!(book.answers_call(DEVICE, &hangup), "the callee's");
        let ringing = ClientMessage::Ringing {
            call_id: "c1".into(),
            sdp: None,
        };
        assert!(!book.answers_call(PAGE, &ringing), "only the callee rings");
        let rung = ClientMessage::Ringing {
            call_id: "b0".into(),
            sdp: None,
        };
        assert!(!book.answers_call(DEVICE, &rung));
        assert!(book.answers_call(pages[0], &rung));
    }

    #[test]
    fn names_are_one_whatever_their_case_and_keep_their_spelling() {
        let mut book = setup();
        book.handle(PAGE, ClientMessage::Listen);
        let register = |name: &str| ClientMessage::Register {
            name: name.into(),
            meta: json!({}),
        };
        assert_eq!(
            codes(&book.handle(OTHER, register("Cam"))),
            vec![ErrorCode::NameTaken]
        );
        assert_eq!(
            codes(&book.handle(OTHER, register("CAM"))),
            vec![ErrorCode::NameTaken]
        );
        // A call in another spelling reaches the camera under the name it registered.
        let out = book.handle(
            PAGE,
            ClientMessage::Call {
                call_id: "c1".into(),
                callee: "CaM".into(),
                meta: json!({}),
                sdp: "offer".into(),
            },
        );
        assert!(matches!(
            &out[0],
            Output::Send(DEVICE, ServerMessage::IncomingCall { callee, .. }) if callee == "cam"
        ));
        assert!(book.has_callee("CAM"));
        assert_eq!(book.owner_of("Cam"), Some(DEVICE));
        // The owner unregisters it in any spelling; listeners hear of it as registered.
        let out = book.handle(DEVICE, ClientMessage::Unregister { name: "CAM".into() });
        assert!(out.contains(&Output::Send(
            PAGE,
            ServerMessage::CalleeRemoved { name: "cam".into() }
        )));
        assert!(codes(&book.handle(OTHER, register("Cam"))).is_empty());
        assert_eq!(book.callees()[0].name, "Cam");
    }

    #[test]
    fn names_per_connection_and_callee_meta_are_limited() {
        let mut book = setup().with_limits(Limits {
            names_per_connection: 2,
            ..Limits::default()
        });
        let register = |name: &str, meta: Value| ClientMessage::Register {
            name: name.into(),
            meta,
        };
        // The device holds "cam" already.
        assert!(codes(&book.handle(DEVICE, register("cam-2", json!({})))).is_empty());
        assert_eq!(
            codes(&book.handle(DEVICE, register("cam-3", json!({})))),
            vec![ErrorCode::TooManyNames]
        );
        // A held name may still be registered again (new meta).
        assert!(codes(&book.handle(DEVICE, register("CAM", json!({"fps": 5})))).is_empty());
        assert_eq!(book.callees()[0].meta, json!({"fps": 5}));
        let big = json!({"x": "y".repeat(MAX_CALLEE_META_BYTES)});
        assert_eq!(
            codes(&book.handle(OTHER, register("big", big))),
            vec![ErrorCode::TooLarge]
        );
    }

    #[test]
    fn candidates_per_call_are_limited_for_each_end() {
        let mut book = setup().with_limits(Limits {
            candidates_per_call: 3,
            ..Limits::default()
        });
        call(&mut book, "c1");
        let candidate = |n: u32| ClientMessage::Candidate {
            call_id: "c1".into(),
            candidate: Some(crate::signalling::protocol::IceCandidate {
                candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        };
        for n in 0..3 {
            let out = book.handle(PAGE, candidate(n));
            assert!(matches!(
                &out[0],
                Output::Send(DEVICE, ServerMessage::Candidate { .. })
            ));
        }
        let out = book.handle(PAGE, candidate(3));
        assert_eq!(codes(&out), vec![ErrorCode::TooManyCandidates]);
        assert!(
            matches!(&out[0], Output::Send(PAGE, _)),
            "refused to the sender only"
        );
        // The other end has a count of its own.
        let out = book.handle(DEVICE, candidate(9));
        assert!(matches!(
            &out[0],
            Output::Send(PAGE, ServerMessage::Candidate { .. })
        ));
    }

    #[test]
    fn relay_targets_and_answered_calls() {
        let mut book = setup();
        let ring = ClientMessage::Call {
            call_id: "c1".into(),
            callee: "CAM".into(),
            meta: json!({}),
            sdp: "offer".into(),
        };
        assert_eq!(book.relay_target(PAGE, &ring), Some(DEVICE));
        book.handle(PAGE, ring);
        let candidate = ClientMessage::Candidate {
            call_id: "c1".into(),
            candidate: None,
        };
        assert_eq!(book.relay_target(PAGE, &candidate), Some(DEVICE));
        assert_eq!(book.relay_target(DEVICE, &candidate), Some(PAGE));
        assert_eq!(book.relay_target(OTHER, &candidate), None);
        assert_eq!(book.relay_target(PAGE, &ClientMessage::Listen), None);
        // Only the callee's messages on its own calls draw on the answering allowance (and a
        // bell's on the calls it placed: a_bell_may_ring_its_whole_household_at_once).
        assert!(book.answers_call(DEVICE, &candidate));
        assert!(!book.answers_call(PAGE, &candidate));
        assert!(!book.answers_call(DEVICE, &ClientMessage::Listen));
    }
}
