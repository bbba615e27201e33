//! The phonebook's logic, without sockets.
//!
//! [`Phonebook`] takes what a connection said and returns what must be sent to whom
//! ([`Output`]). The WebSocket layer in [`super::server`] only moves text in and out, so
//! every rule here (registration, presence, call routing, errors) is tested by feeding
//! messages and looking at the outputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::access::{AccessSettings, Identity, Refused};
use super::protocol::{
    Callee, ClientMessage, ErrorCode, IceServer, PROTOCOL_VERSION, Presence, ServerMessage,
    validate_call_id, validate_name,
};

/// Identifies one client connection.
pub type ConnId = u64;

/// Frames above this size get a `too_large` error instead of being parsed.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest SDP (offer or answer) relayed, in bytes.
pub const MAX_SDP_BYTES: usize = 32 * 1024;

/// Longest ICE candidate line relayed, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

/// Unanswered calls one connection may have at once, unless set otherwise.
pub const DEFAULT_PENDING_CALLS: usize = 4;

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
    owner: ConnId,
    meta: Value,
    dnd: bool,
}

#[derive(Debug)]
struct Route {
    caller: ConnId,
    callee_conn: ConnId,
    callee: String,
    accepted: bool,
}

/// The phonebook: who is registered under which name, who listens, and which calls are
/// being routed between which connections.
pub struct Phonebook {
    server_name: String,
    ice_servers: IceSource,
    access: AccessSettings,
    pending_calls: usize,
    connections: HashMap<ConnId, Connection>,
    callees: BTreeMap<String, Registration>,
    calls: HashMap<String, Route>,
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
            pending_calls: DEFAULT_PENDING_CALLS,
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

    /// The same phonebook, allowing each connection `limit` unanswered calls at once.
    pub fn with_pending_calls(mut self, limit: usize) -> Self {
        self.pending_calls = limit.max(1);
        self
    }

    /// Whether `conn` holds at least one registered name.
    pub fn holds_a_name(&self, conn: ConnId) -> bool {
        self.connections
            .get(&conn)
            .is_some_and(|c| !c.names.is_empty())
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

    /// The registered callees with their presence, in name order.
    pub fn callees(&self) -> Vec<Callee> {
        self.callees
            .keys()
            .map(|name| self.callee_entry(name).expect("listed name is registered"))
            .collect()
    }

    /// Number of calls being routed (ringing or in progress).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// A text frame arrived on `conn`.
    pub fn handle_text(&mut self, conn: ConnId, text: &str) -> Vec<Output> {
        if text.len() > MAX_MESSAGE_BYTES {
            return self.invalid(
                conn,
                ErrorCode::TooLarge,
                format!(
                    "message of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
                    text.len()
                ),
            );
        }
        match ClientMessage::parse(text) {
            Ok(msg) => self.handle(conn, msg),
            Err(why) => self.invalid(conn, ErrorCode::BadMessage, why),
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
            return match msg {
                ClientMessage::Hello { version, token, .. } if version == PROTOCOL_VERSION => {
                    match self.access.identify(token.as_ref().map(|t| t.expose())) {
                        Ok(identity) => {
                            state.greeted = true;
                            state.identity = identity;
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
                        Err(refused) => vec![refusal(conn, refused, None), Output::Close(conn)],
                    }
                }
                ClientMessage::Hello { version, .. } => vec![
                    Output::Send(
                        conn,
                        ServerMessage::error(
                            ErrorCode::UnsupportedVersion,
                            format!(
                                "protocol version {version} is not supported; this server speaks version {PROTOCOL_VERSION}"
                            ),
                            None,
                        ),
                    ),
                    Output::Close(conn),
                ],
                other => vec![
                    Output::Send(
                        conn,
                        ServerMessage::error(
                            ErrorCode::HelloRequired,
                            format!(
                                "the first message must be hello with a version, not {}",
                                other.kind()
                            ),
                            None,
                        ),
                    ),
                    Output::Close(conn),
                ],
            };
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
            ClientMessage::Call {
                call_id,
                callee,
                meta,
                sdp,
            } => self.call(conn, call_id, callee, meta, sdp),
            ClientMessage::Ringing { call_id } => {
                self.relay_from_callee(conn, &call_id, |_| ServerMessage::Ringing {
                    call_id: call_id.clone(),
                })
            }
            ClientMessage::Accept { call_id, sdp } if sdp.len() > MAX_SDP_BYTES => {
                vec![sdp_too_large(conn, &call_id, sdp.len())]
            }
            ClientMessage::Accept { call_id, sdp } => self.accept(conn, call_id, sdp),
            ClientMessage::Decline { call_id, reason } => {
                let mut out = self.relay_from_callee(conn, &call_id, |_| ServerMessage::Declined {
                    call_id: call_id.clone(),
                    reason,
                });
                if !is_error(&out) {
                    out.extend(self.end_call(&call_id));
                }
                out
            }
            ClientMessage::Candidate {
                call_id,
                candidate: Some(candidate),
            } if candidate.candidate.len() > MAX_CANDIDATE_BYTES
                || candidate.sdp_mid.as_ref().is_some_and(|m| m.len() > 64)
                || candidate
                    .username_fragment
                    .as_ref()
                    .is_some_and(|u| u.len() > 256) =>
            {
                vec![error(
                    conn,
                    ErrorCode::TooLarge,
                    format!("candidates are limited to {MAX_CANDIDATE_BYTES} bytes"),
                    Some(&call_id),
                )]
            }
            ClientMessage::Candidate { call_id, candidate } => self.relay_to_other_end(
                conn,
                &call_id,
                ServerMessage::Candidate {
                    call_id: call_id.clone(),
                    candidate,
                },
            ),
            ClientMessage::Hangup { call_id, reason } => {
                let mut out = self.relay_to_other_end(
                    conn,
                    &call_id,
                    ServerMessage::Hangup {
                        call_id: call_id.clone(),
                        reason,
                    },
                );
                if !is_error(&out) {
                    out.extend(self.end_call(&call_id));
                }
                out
            }
        }
    }

    /// `conn` closed: release its names, and tell the other end of each of its calls.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Output> {
        let Some(state) = self.connections.remove(&conn) else {
            return Vec::new();
        };
        // Names go first, so listeners do not see the callee turn available on its way out.
        for name in &state.names {
            self.callees.remove(name);
        }
        let mut out = Vec::new();
        let mut ended: Vec<(String, ConnId, &'static str)> = self
            .calls
            .iter()
            .filter_map(|(id, route)| {
                if route.caller == conn {
                    Some((id.clone(), route.callee_conn, "caller disconnected"))
                } else if route.callee_conn == conn {
                    Some((id.clone(), route.caller, "callee disconnected"))
                } else {
                    None
                }
            })
            .collect();
        ended.sort();
        for (call_id, other, reason) in ended {
            // A connection that called one of its own names is both ends: nobody is left.
            if other != conn {
                out.push(Output::Send(
                    other,
                    ServerMessage::Hangup {
                        call_id: call_id.clone(),
                        reason: reason.into(),
                    },
                ));
            }
            out.extend(self.end_call(&call_id));
        }
        for name in state.names {
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
        let identity = self.connections.get(&conn).map(|c| &c.identity);
        if let Some(identity) = identity
            && let Err(refused) = self.access.may_register(identity, &name)
        {
            return vec![refusal(conn, refused, None)];
        }
        match self.callees.get_mut(&name) {
            Some(existing) if existing.owner != conn => {
                return vec![error(
                    conn,
                    ErrorCode::NameTaken,
                    format!("the name {name:?} is registered by another connection"),
                    None,
                )];
            }
            Some(existing) => existing.meta = meta,
            None => {
                self.callees.insert(
                    name.clone(),
                    Registration {
                        owner: conn,
                        meta,
                        dnd: false,
                    },
                );
            }
        }
        if let Some(state) = self.connections.get_mut(&conn) {
            state.names.insert(name.clone());
        }
        let mut out = vec![Output::Send(
            conn,
            ServerMessage::Registered { name: name.clone() },
        )];
        out.extend(self.push_callee(&name));
        out
    }

    fn unregister(&mut self, conn: ConnId, name: &str) -> Vec<Output> {
        let owned = self.callees.get(name).is_some_and(|r| r.owner == conn);
        if !owned {
            return vec![error(
                conn,
                ErrorCode::NotRegistered,
                format!("the name {name:?} is not registered by this connection"),
                None,
            )];
        }
        self.callees.remove(name);
        if let Some(state) = self.connections.get_mut(&conn) {
            state.names.remove(name);
        }
        // Calls already ringing or running under that name go on: the callee still holds
        // the connection and can answer or hang up.
        let mut out = vec![Output::Send(
            conn,
            ServerMessage::Unregistered { name: name.into() },
        )];
        out.extend(self.to_listeners(ServerMessage::CalleeRemoved { name: name.into() }));
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
        match self.callees.get_mut(name) {
            Some(registration) if registration.owner == conn => {
                if registration.dnd == dnd {
                    return Vec::new();
                }
                registration.dnd = dnd;
                self.push_callee(name)
            }
            _ => vec![error(
                conn,
                ErrorCode::NotRegistered,
                format!("the name {name:?} is not registered by this connection"),
                None,
            )],
        }
    }

    fn call(
        &mut self,
        conn: ConnId,
        call_id: String,
        callee: String,
        meta: Value,
        sdp: String,
    ) -> Vec<Output> {
        if let Err(why) = validate_call_id(&call_id) {
            return vec![error(conn, ErrorCode::BadMessage, why, None)];
        }
        if !meta.is_object() {
            return vec![error(
                conn,
                ErrorCode::BadMessage,
                "meta must be a JSON object",
                Some(&call_id),
            )];
        }
        if self.calls.contains_key(&call_id) {
            return vec![error(
                conn,
                ErrorCode::DuplicateCall,
                format!("a call with id {call_id:?} already exists"),
                Some(&call_id),
            )];
        }
        if sdp.len() > MAX_SDP_BYTES {
            return vec![sdp_too_large(conn, &call_id, sdp.len())];
        }
        let identity = self
            .connections
            .get(&conn)
            .map(|c| c.identity.clone())
            .unwrap_or(Identity::Anonymous);
        if let Err(refused) = self.access.may_call(&identity, &callee) {
            return vec![refusal(conn, refused, Some(&call_id))];
        }
        let pending = self
            .calls
            .values()
            .filter(|r| r.caller == conn && !r.accepted)
            .count();
        if pending >= self.pending_calls {
            return vec![error(
                conn,
                ErrorCode::TooManyCalls,
                format!(
                    "{pending} calls of this connection are still unanswered (the limit is {})",
                    self.pending_calls
                ),
                Some(&call_id),
            )];
        }
        // The callee learns who calls from the phonebook, not from what the caller claims.
        let mut meta = meta;
        if let Some(fields) = meta.as_object_mut() {
            match identity.user() {
                Some(user) => fields.insert("user".into(), Value::String(user.into())),
                None => fields.remove("user"),
            };
        }
        let Some(registration) = self.callees.get(&callee) else {
            return vec![error(
                conn,
                ErrorCode::UnknownCallee,
                format!("no callee named {callee:?} is registered"),
                Some(&call_id),
            )];
        };
        let callee_conn = registration.owner;
        self.calls.insert(
            call_id.clone(),
            Route {
                caller: conn,
                callee_conn,
                callee: callee.clone(),
                accepted: false,
            },
        );
        let mut out = vec![Output::Send(
            callee_conn,
            ServerMessage::IncomingCall {
                call_id,
                callee: callee.clone(),
                meta,
                sdp,
            },
        )];
        out.extend(self.push_callee(&callee));
        out
    }

    fn accept(&mut self, conn: ConnId, call_id: String, sdp: String) -> Vec<Output> {
        let mut out = self.relay_from_callee(conn, &call_id, |_| ServerMessage::Accepted {
            call_id: call_id.clone(),
            sdp,
        });
        if is_error(&out) {
            return out;
        }
        if let Some(route) = self.calls.get_mut(&call_id) {
            route.accepted = true;
            let name = route.callee.clone();
            out.extend(self.push_callee(&name));
        }
        out
    }

    /// Relays a message that only the callee of `call_id` may send.
    fn relay_from_callee(
        &self,
        conn: ConnId,
        call_id: &str,
        build: impl FnOnce(&Route) -> ServerMessage,
    ) -> Vec<Output> {
        match self.calls.get(call_id) {
            Some(route) if route.callee_conn == conn => {
                vec![Output::Send(route.caller, build(route))]
            }
            _ => vec![unknown_call(conn, call_id)],
        }
    }

    /// Relays a message that either end of `call_id` may send to the other.
    fn relay_to_other_end(&self, conn: ConnId, call_id: &str, msg: ServerMessage) -> Vec<Output> {
        match self.calls.get(call_id) {
            Some(route) if route.caller == conn => vec![Output::Send(route.callee_conn, msg)],
            Some(route) if route.callee_conn == conn => vec![Output::Send(route.caller, msg)],
            _ => vec![unknown_call(conn, call_id)],
        }
    }

    fn end_call(&mut self, call_id: &str) -> Vec<Output> {
        match self.calls.remove(call_id) {
            Some(route)
                if self
                    .callees
                    .get(&route.callee)
                    .is_some_and(|r| r.owner == route.callee_conn) =>
            {
                self.push_callee(&route.callee)
            }
            _ => Vec::new(),
        }
    }

    fn presence(&self, name: &str) -> Presence {
        let Some(registration) = self.callees.get(name) else {
            return Presence::Available;
        };
        if registration.dnd {
            return Presence::Dnd;
        }
        let owner = registration.owner;
        let mut ringing = false;
        // Calls still held by a connection that gave the name up are not the new owner's.
        for route in self
            .calls
            .values()
            .filter(|r| r.callee == name && r.callee_conn == owner)
        {
            if route.accepted {
                return Presence::InCall;
            }
            ringing = true;
        }
        if ringing {
            Presence::Ringing
        } else {
            Presence::Available
        }
    }

    fn callee_entry(&self, name: &str) -> Option<Callee> {
        self.callees.get(name).map(|r| Callee {
            name: name.into(),
            meta: r.meta.clone(),
            presence: self.presence(name),
        })
    }

    /// Tells the listeners how `name` looks now (after a registration or a presence change).
    fn push_callee(&self, name: &str) -> Vec<Output> {
        match self.callee_entry(name) {
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

fn sdp_too_large(conn: ConnId, call_id: &str, len: usize) -> Output {
    error(
        conn,
        ErrorCode::TooLarge,
        format!("an SDP of {len} bytes is over the limit of {MAX_SDP_BYTES}"),
        Some(call_id),
    )
}

fn unknown_call(conn: ConnId, call_id: &str) -> Output {
    error(
        conn,
        ErrorCode::UnknownCall,
        format!("no call {call_id:?} involves this connection"),
        Some(call_id),
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
        let mut book = setup().with_pending_calls(2);
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
}
