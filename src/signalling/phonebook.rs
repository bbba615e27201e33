//! The phonebook's logic, without sockets.
//!
//! [`Phonebook`] takes what a connection said and returns what must be sent to whom
//! ([`Output`]). The WebSocket layer in [`super::server`] only moves text in and out, so
//! every rule here (registration, presence, call routing, errors) is tested by feeding
//! messages and looking at the outputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::protocol::{
    Callee, ClientMessage, ErrorCode, IceServer, PROTOCOL_VERSION, Presence, ServerMessage,
    validate_call_id, validate_name,
};

/// Identifies one client connection.
pub type ConnId = u64;

/// Frames above this size get a `too_large` error instead of being parsed.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What the socket layer must do after the phonebook handled an input.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this message on that connection.
    Send(ConnId, ServerMessage),
    /// Close that connection (after sending what was queued before).
    Close(ConnId),
}

#[derive(Debug, Default)]
struct Connection {
    greeted: bool,
    listening: bool,
    names: BTreeSet<String>,
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
#[derive(Debug)]
pub struct Phonebook {
    server_name: String,
    ice_servers: Vec<IceServer>,
    connections: HashMap<ConnId, Connection>,
    callees: BTreeMap<String, Registration>,
    calls: HashMap<String, Route>,
}

impl Phonebook {
    /// An empty phonebook that hands `ice_servers` to every client in `welcome`.
    pub fn new(ice_servers: Vec<IceServer>) -> Self {
        Phonebook {
            server_name: format!("peercam/{}", env!("CARGO_PKG_VERSION")),
            ice_servers,
            connections: HashMap::new(),
            callees: BTreeMap::new(),
            calls: HashMap::new(),
        }
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
        let greeted = self.connections.get(&conn).is_some_and(|c| c.greeted);
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
                ClientMessage::Hello { version, .. } if version == PROTOCOL_VERSION => {
                    state.greeted = true;
                    vec![Output::Send(
                        conn,
                        ServerMessage::Welcome {
                            version: PROTOCOL_VERSION,
                            server: self.server_name.clone(),
                            ice_servers: self.ice_servers.clone(),
                        },
                    )]
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
            out.push(Output::Send(
                other,
                ServerMessage::Hangup {
                    call_id: call_id.clone(),
                    reason: reason.into(),
                },
            ));
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
}
