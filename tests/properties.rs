//! Property tests for the code that takes input from strangers: the protocol decoder, the
//! phonebook's routing and the device's call state machine. Every property runs proptest's
//! default of 256 cases (`PROPTEST_CASES` to change); sequences are up to 60 steps.
//!
//! Messages are built as JSON rather than as Rust values, so that optional fields added to
//! the protocol later do not break these tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peercam::call::{
    Action, Admission, AnswerRules, BUSY, CONNECT_FAILED, CONNECT_TIMEOUT, Call, CallState, Input,
    NO_ANSWER, REPLY_TIMEOUT,
};
use peercam::signalling::phonebook::{ConnId, MAX_MESSAGE_BYTES, Output, Phonebook};
use peercam::signalling::protocol::{ClientMessage, Presence, ServerMessage};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Map, Value, json};

const CLIENT_TAGS: &[&str] = &[
    "hello",
    "register",
    "unregister",
    "set_presence",
    "listen",
    "unlisten",
    "call",
    "ringing",
    "accept",
    "decline",
    "candidate",
    "hangup",
];

const FIELDS: &[&str] = &[
    "type",
    "version",
    "agent",
    "token",
    "name",
    "meta",
    "presence",
    "call_id",
    "callee",
    "sdp",
    "reason",
    "candidate",
    "sdpMid",
    "sdpMLineIndex",
    "usernameFragment",
];

const PRESENCES: &[&str] = &["available", "ringing", "in_call", "dnd"];

/// The error codes of protocol version 1 as first published; later ones may be added.
const ERROR_CODES: &[&str] = &[
    "unsupported_version",
    "hello_required",
    "bad_message",
    "too_large",
    "name_taken",
    "invalid_name",
    "unknown_callee",
    "unknown_call",
    "duplicate_call",
    "not_registered",
];

/// Pieces of JSON that decoders tend to get wrong, spliced into otherwise valid frames.
const FRAGMENTS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "null",
    "true",
    "-0",
    "1e400",
    "-1e400",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "0.1",
    "\\u0000",
    "\\ud800",
    "\\",
    "\"type\":\"call\",",
    "\"type\":\"hello\",",
    "\"meta\":[],",
    "\u{feff}",
    "\u{0}",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_-]{1,8}",
        1 => Just(String::new()),
        2 => any::<String>(),
        1 => "[ -~]{0,40}",
        2 => select(&["cam", "door", "c1", "hello", "dnd", "a b", " lead", "☕", "\u{0}"][..])
            .prop_map(String::from),
    ]
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(FIELDS).prop_map(String::from), 1 => text()]
}

/// Any JSON value, with numbers that survive a round trip through text exactly (the
/// odd floats are covered by the byte-level tests).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(field_name(), json_value(), 0..4)
        .prop_map(|fields| Value::Object(fields.into_iter().collect()))
}

/// Adds `key` to the object when `value` is there.
fn with(mut object: Value, key: &str, value: Option<Value>) -> Value {
    if let (Some(fields), Some(value)) = (object.as_object_mut(), value) {
        fields.insert(key.into(), value);
    }
    object
}

fn candidate_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        3 => (
            text(),
            prop::option::of(text()),
            prop::option::of(any::<u16>()),
            prop::option::of(text()),
        )
            .prop_map(|(line, mid, index, ufrag)| {
                let candidate = json!({ "candidate": line });
                let candidate = with(candidate, "sdpMid", mid.map(Value::from));
                let candidate = with(candidate, "sdpMLineIndex", index.map(Value::from));
                with(candidate, "usernameFragment", ufrag.map(Value::from))
            }),
    ]
}

/// A valid client message of any type, as JSON.
fn client_json() -> impl Strategy<Value = Value> {
    let version = prop_oneof![3 => Just(1u32), 1 => any::<u32>()];
    prop_oneof![
        (version, prop::option::of(text()), prop::option::of(text())).prop_map(
            |(version, agent, token)| {
                let hello = json!({ "type": "hello", "version": version });
                let hello = with(hello, "agent", agent.map(Value::from));
                with(hello, "token", token.map(Value::from))
            }
        ),
        (text(), prop::option::of(json_object())).prop_map(|(name, meta)| with(
            json!({ "type": "register", "name": name }),
            "meta",
            meta
        )),
        text().prop_map(|name| json!({ "type": "unregister", "name": name })),
        (text(), select(PRESENCES)).prop_map(|(name, presence)| json!({
            "type": "set_presence", "name": name, "presence": presence
        })),
        Just(json!({ "type": "listen" })),
        Just(json!({ "type": "unlisten" })),
        (text(), text(), prop::option::of(json_object()), text()).prop_map(
            |(call_id, callee, meta, sdp)| with(
                json!({ "type": "call", "call_id": call_id, "callee": callee, "sdp": sdp }),
                "meta",
                meta
            )
        ),
        text().prop_map(|call_id| json!({ "type": "ringing", "call_id": call_id })),
        (text(), text()).prop_map(|(call_id, sdp)| json!({
            "type": "accept", "call_id": call_id, "sdp": sdp
        })),
        (text(), text()).prop_map(|(call_id, reason)| json!({
            "type": "decline", "call_id": call_id, "reason": reason
        })),
        (text(), candidate_json()).prop_map(|(call_id, candidate)| json!({
            "type": "candidate", "call_id": call_id, "candidate": candidate
        })),
        (text(), text()).prop_map(|(call_id, reason)| json!({
            "type": "hangup", "call_id": call_id, "reason": reason
        })),
    ]
}

fn callee_json() -> impl Strategy<Value = Value> {
    (text(), json_value(), select(PRESENCES)).prop_map(
        |(name, meta, presence)| json!({ "name": name, "meta": meta, "presence": presence }),
    )
}

/// A valid server message of any type, as JSON.
fn server_json() -> impl Strategy<Value = Value> {
    let ice_server = (
        prop::collection::vec(text(), 0..3),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(urls, username, credential)| {
            let server = json!({ "urls": urls });
            let server = with(server, "username", username.map(Value::from));
            with(server, "credential", credential.map(Value::from))
        });
    prop_oneof![
        (
            any::<u32>(),
            text(),
            prop::collection::vec(ice_server, 0..3)
        )
            .prop_map(|(version, server, ice_servers)| json!({
                "type": "welcome", "version": version, "server": server, "ice_servers": ice_servers
            })),
        text().prop_map(|name| json!({ "type": "registered", "name": name })),
        text().prop_map(|name| json!({ "type": "unregistered", "name": name })),
        prop::collection::vec(callee_json(), 0..4)
            .prop_map(|callees| json!({ "type": "callees", "callees": callees })),
        callee_json().prop_map(|callee| json!({ "type": "callee_update", "callee": callee })),
        text().prop_map(|name| json!({ "type": "callee_removed", "name": name })),
        (text(), text(), json_value(), text()).prop_map(|(call_id, callee, meta, sdp)| json!({
            "type": "incoming_call", "call_id": call_id, "callee": callee, "meta": meta, "sdp": sdp
        })),
        text().prop_map(|call_id| json!({ "type": "ringing", "call_id": call_id })),
        (text(), text()).prop_map(|(call_id, sdp)| json!({
            "type": "accepted", "call_id": call_id, "sdp": sdp
        })),
        (text(), text()).prop_map(|(call_id, reason)| json!({
            "type": "declined", "call_id": call_id, "reason": reason
        })),
        (text(), candidate_json()).prop_map(|(call_id, candidate)| json!({
            "type": "candidate", "call_id": call_id, "candidate": candidate
        })),
        (text(), text()).prop_map(|(call_id, reason)| json!({
            "type": "hangup", "call_id": call_id, "reason": reason
        })),
        (select(ERROR_CODES), text(), prop::option::of(text())).prop_map(
            |(code, message, call_id)| with(
                json!({ "type": "error", "code": code, "message": message }),
                "call_id",
                call_id.map(Value::from)
            )
        ),
    ]
}

/// A change to the structure of a message: a field replaced, dropped, or the type swapped.
#[derive(Debug, Clone)]
enum Edit {
    Set(String, Value),
    Remove(Index),
    Retag(String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (field_name(), json_value()).prop_map(|(key, value)| Edit::Set(key, value)),
        1 => any::<Index>().prop_map(Edit::Remove),
        2 => prop_oneof![3 => select(CLIENT_TAGS).prop_map(String::from), 1 => text()]
            .prop_map(Edit::Retag),
    ]
}

fn apply_edit(fields: &mut Map<String, Value>, edit: Edit) {
    match edit {
        Edit::Set(key, value) => {
            fields.insert(key, value);
        }
        Edit::Remove(index) if !fields.is_empty() => {
            let key = fields.keys().nth(index.index(fields.len())).cloned();
            if let Some(key) = key {
                fields.remove(&key);
            }
        }
        Edit::Remove(_) => {}
        Edit::Retag(tag) => {
            fields.insert("type".into(), Value::String(tag));
        }
    }
}

/// A change to the bytes of a frame.
#[derive(Debug, Clone)]
enum Splice {
    Replace(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Fragment(Index, &'static str),
    Truncate(Index),
}

fn splice() -> impl Strategy<Value = Splice> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Splice::Replace(at, byte)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Splice::Insert(at, byte)),
        any::<Index>().prop_map(Splice::Delete),
        (any::<Index>(), select(FRAGMENTS)).prop_map(|(at, piece)| Splice::Fragment(at, piece)),
        any::<Index>().prop_map(Splice::Truncate),
    ]
}

fn apply_splice(bytes: &mut Vec<u8>, splice: &Splice) {
    let at = |index: &Index, len: usize| index.index(len + 1);
    match splice {
        Splice::Replace(index, byte) if !bytes.is_empty() => {
            let i = index.index(bytes.len());
            bytes[i] = *byte;
        }
        Splice::Insert(index, byte) => {
            let i = at(index, bytes.len());
            bytes.insert(i, *byte);
        }
        Splice::Delete(index) if !bytes.is_empty() => {
            let i = index.index(bytes.len());
            bytes.remove(i);
        }
        Splice::Fragment(index, piece) => {
            let i = at(index, bytes.len());
            bytes.splice(i..i, piece.bytes());
        }
        Splice::Truncate(index) => {
            let i = at(index, bytes.len());
            bytes.truncate(i);
        }
        Splice::Replace(..) | Splice::Delete(_) => {}
    }
}

/// What every accepted frame must satisfy: its type is the tag it was sent with, and
/// what the server would make of it survives being written out and read again.
fn check_accepted_client(text: &str) -> Result<(), TestCaseError> {
    let Ok(msg) = ClientMessage::parse(text) else {
        return Ok(());
    };
    let value: Value = serde_json::from_str(text).expect("parse accepted it, so it is JSON");
    prop_assert_eq!(value.get("type").and_then(Value::as_str), Some(msg.kind()));
    let again = ClientMessage::parse(&serde_json::to_string(&msg).expect("serialises"));
    prop_assert_eq!(again, Ok(msg));
    Ok(())
}

fn check_accepted_server(text: &str) -> Result<(), TestCaseError> {
    let Ok(msg) = serde_json::from_str::<ServerMessage>(text) else {
        return Ok(());
    };
    let again = serde_json::from_str::<ServerMessage>(&msg.to_text()).map_err(|e| e.to_string());
    prop_assert_eq!(again, Ok(msg));
    Ok(())
}

proptest! {
    #[test]
    fn any_string_decodes_without_panicking(text in prop_oneof![
        any::<String>(),
        "[\\[\\]{}\":,0-9a-z_\\\\. -]{0,64}",
    ]) {
        check_accepted_client(&text)?;
        check_accepted_server(&text)?;
    }

    #[test]
    fn any_json_value_decodes_without_panicking(value in prop_oneof![
        json_value(),
        (select(CLIENT_TAGS), json_object()).prop_map(|(tag, mut object)| {
            object["type"] = Value::from(tag);
            object
        }),
    ]) {
        let text = value.to_string();
        check_accepted_client(&text)?;
        check_accepted_server(&text)?;
        if !value.is_object() {
            prop_assert!(ClientMessage::parse(&text).is_err());
        }
    }

    #[test]
    fn valid_client_messages_round_trip(value in client_json()) {
        let text = value.to_string();
        let msg = ClientMessage::parse(&text);
        prop_assert!(msg.is_ok(), "{} was refused: {:?}", text, msg);
        check_accepted_client(&text)?;
    }

    #[test]
    fn valid_server_messages_round_trip(value in server_json()) {
        let text = value.to_string();
        let msg = serde_json::from_str::<ServerMessage>(&text);
        prop_assert!(msg.is_ok(), "{} was refused: {:?}", text, msg);
        check_accepted_server(&text)?;
    }

    #[test]
    fn edited_messages_decode_without_panicking(
        value in prop_oneof![client_json(), server_json()],
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut fields = value.as_object().cloned().expect("messages are objects");
        for edit in edits {
            apply_edit(&mut fields, edit);
        }
        let text = Value::Object(fields).to_string();
        check_accepted_client(&text)?;
        check_accepted_server(&text)?;
    }

    #[test]
    fn spliced_frames_decode_without_panicking(
        value in prop_oneof![client_json(), server_json()],
        splices in prop::collection::vec(splice(), 1..6),
    ) {
        let mut bytes = value.to_string().into_bytes();
        for splice in &splices {
            apply_splice(&mut bytes, splice);
        }
        let text = String::from_utf8_lossy(&bytes);
        check_accepted_client(&text)?;
        check_accepted_server(&text)?;
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{\"a\":"] {
        let text = open.repeat(100_000);
        assert!(ClientMessage::parse(&text).is_err());
        assert!(serde_json::from_str::<ServerMessage>(&text).is_err());
        let register = format!(r#"{{"type":"register","name":"cam","meta":{text}"#);
        assert!(ClientMessage::parse(&register).is_err());
    }
    let mut book = Phonebook::new(Vec::new());
    book.connect(1);
    book.handle_text(1, &json!({ "type": "hello", "version": 1 }).to_string());
    let out = book.handle_text(1, &"[".repeat(MAX_MESSAGE_BYTES / 2));
    assert!(matches!(
        out.as_slice(),
        [Output::Send(1, ServerMessage::Error { .. })]
    ));
}

// The phonebook, fed by several connections at once.

const SLOTS: usize = 4;
const NAMES: &[&str] = &["cam", "door", "pc", "bad name!"];
const CALL_IDS: &[&str] = &["c1", "c2", "c3", "c4", "bad id!"];

/// A message a connection sends, with names and ids from small pools so that they meet.
#[derive(Debug, Clone)]
enum Msg {
    Hello(u32),
    Register(String),
    Unregister(String),
    SetPresence(String, String),
    Listen,
    Unlisten,
    Call(String, String),
    /// A call whose offer is larger than any sane SDP, though the frame is within limits.
    BigCall(String, String),
    Ringing(String),
    Accept(String),
    Decline(String),
    Candidate(String, bool),
    Hangup(String),
}

impl Msg {
    fn to_json(&self) -> Value {
        match self {
            Msg::Hello(version) => json!({ "type": "hello", "version": version }),
            Msg::Register(name) => {
                json!({ "type": "register", "name": name, "meta": { "board": "dev" } })
            }
            Msg::Unregister(name) => json!({ "type": "unregister", "name": name }),
            Msg::SetPresence(name, presence) => {
                json!({ "type": "set_presence", "name": name, "presence": presence })
            }
            Msg::Listen => json!({ "type": "listen" }),
            Msg::Unlisten => json!({ "type": "unlisten" }),
            Msg::Call(call_id, callee) => json!({
                "type": "call", "call_id": call_id, "callee": callee,
                "meta": { "callerName": "Ray", "user": "admin" }, "sdp": "v=0 offer"
            }),
            Msg::BigCall(call_id, callee) => json!({
                "type": "call", "call_id": call_id, "callee": callee,
                "sdp": "a".repeat(MAX_MESSAGE_BYTES * 5 / 8)
            }),
            Msg::Ringing(call_id) => json!({ "type": "ringing", "call_id": call_id }),
            Msg::Accept(call_id) => {
                json!({ "type": "accept", "call_id": call_id, "sdp": "v=0 answer" })
            }
            Msg::Decline(call_id) => {
                json!({ "type": "decline", "call_id": call_id, "reason": "Not now" })
            }
            Msg::Candidate(call_id, end) => json!({
                "type": "candidate", "call_id": call_id,
                "candidate": if *end { Value::Null } else { json!({ "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0" }) }
            }),
            Msg::Hangup(call_id) => {
                json!({ "type": "hangup", "call_id": call_id, "reason": "bye" })
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A new connection in `slot` (replacing the one there), greeted or not.
    Connect {
        slot: usize,
        hello: bool,
    },
    Disconnect(usize),
    /// One end of a call being routed (the n-th by id) sends `reply` about it, so that
    /// calls also get answered and ended, not only refused.
    Follow {
        route: Index,
        from_caller: bool,
        reply: Reply,
    },
    /// `slot` calls a name that is registered now.
    CallKnown {
        slot: usize,
        name: Index,
        call_id: &'static str,
    },
    /// `msg` from `slot`, as text or (as the daemon's own WHEP side does) already parsed.
    /// A slot whose connection is gone sends on the old one: a frame that arrives late.
    Send {
        slot: usize,
        msg: Msg,
        parsed: bool,
    },
    Text {
        slot: usize,
        text: String,
    },
    Oversized(usize),
}

fn msg() -> impl Strategy<Value = Msg> {
    let name = || select(NAMES).prop_map(String::from);
    let id = || select(CALL_IDS).prop_map(String::from);
    prop_oneof![
        1 => prop_oneof![3 => Just(1u32), 1 => any::<u32>()].prop_map(Msg::Hello),
        4 => name().prop_map(Msg::Register),
        1 => name().prop_map(Msg::Unregister),
        1 => (name(), select(PRESENCES)).prop_map(|(name, p)| Msg::SetPresence(name, p.into())),
        2 => Just(Msg::Listen),
        1 => Just(Msg::Unlisten),
        4 => (id(), name()).prop_map(|(id, name)| Msg::Call(id, name)),
        1 => (id(), name()).prop_map(|(id, name)| Msg::BigCall(id, name)),
        1 => id().prop_map(Msg::Ringing),
        1 => id().prop_map(Msg::Accept),
        1 => id().prop_map(Msg::Decline),
        1 => (id(), any::<bool>()).prop_map(|(id, end)| Msg::Candidate(id, end)),
        1 => id().prop_map(Msg::Hangup),
    ]
}

/// What one end of a call says about it.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Ringing,
    Accept,
    Decline,
    Candidate,
    Hangup,
}

impl Reply {
    fn msg(self, call_id: String) -> Msg {
        match self {
            Reply::Ringing => Msg::Ringing(call_id),
            Reply::Accept => Msg::Accept(call_id),
            Reply::Decline => Msg::Decline(call_id),
            Reply::Candidate => Msg::Candidate(call_id, false),
            Reply::Hangup => Msg::Hangup(call_id),
        }
    }
}

fn reply() -> impl Strategy<Value = Reply> {
    select(
        &[
            Reply::Ringing,
            Reply::Accept,
            Reply::Accept,
            Reply::Decline,
            Reply::Candidate,
            Reply::Hangup,
        ][..],
    )
}

fn op() -> impl Strategy<Value = Op> {
    let slot = || 0..SLOTS;
    prop_oneof![
        2 => (slot(), prop::bool::weighted(0.85)).prop_map(|(slot, hello)| Op::Connect { slot, hello }),
        2 => slot().prop_map(Op::Disconnect),
        10 => (any::<Index>(), prop::bool::weighted(0.3), reply())
            .prop_map(|(route, from_caller, reply)| Op::Follow { route, from_caller, reply }),
        5 => (slot(), any::<Index>(), select(CALL_IDS))
            .prop_map(|(slot, name, call_id)| Op::CallKnown { slot, name, call_id }),
        12 => (slot(), msg(), any::<bool>())
            .prop_map(|(slot, msg, parsed)| Op::Send { slot, msg, parsed }),
        1 => (slot(), prop_oneof![any::<String>(), client_json().prop_map(|v| v.to_string())])
            .prop_map(|(slot, text)| Op::Text { slot, text }),
        1 => slot().prop_map(Op::Oversized),
    ]
}

/// A call as the outputs showed it being routed.
#[derive(Debug, Clone)]
struct Route {
    caller: ConnId,
    callee_conn: ConnId,
    callee: String,
    accepted: bool,
}

/// Drives a [`Phonebook`] as the server does, and keeps a model of what it must hold,
/// built only from what it said.
struct Harness {
    book: Phonebook,
    slots: [Option<ConnId>; SLOTS],
    last: [Option<ConnId>; SLOTS],
    next: ConnId,
    live: BTreeSet<ConnId>,
    gone: BTreeSet<ConnId>,
    routes: BTreeMap<String, Route>,
    names: BTreeMap<String, ConnId>,
}

fn call_id_of(msg: &ServerMessage) -> Option<&str> {
    match msg {
        ServerMessage::IncomingCall { call_id, .. }
        | ServerMessage::Ringing { call_id, .. }
        | ServerMessage::Accepted { call_id, .. }
        | ServerMessage::Declined { call_id, .. }
        | ServerMessage::Candidate { call_id, .. }
        | ServerMessage::Hangup { call_id, .. } => Some(call_id),
        _ => None,
    }
}

impl Harness {
    fn new() -> Result<Self, TestCaseError> {
        let mut harness = Harness {
            book: Phonebook::new(Vec::new()),
            slots: [None; SLOTS],
            last: [None; SLOTS],
            next: 1,
            live: BTreeSet::new(),
            gone: BTreeSet::new(),
            routes: BTreeMap::new(),
            names: BTreeMap::new(),
        };
        for slot in 0..SLOTS {
            harness.connect(slot, true)?;
        }
        Ok(harness)
    }

    fn connect(&mut self, slot: usize, hello: bool) -> Result<(), TestCaseError> {
        if let Some(old) = self.slots[slot] {
            self.disconnect(old)?;
        }
        let conn = self.next;
        self.next += 1;
        self.book.connect(conn);
        self.live.insert(conn);
        self.slots[slot] = Some(conn);
        self.last[slot] = Some(conn);
        if hello {
            let out = self
                .book
                .handle_text(conn, &Msg::Hello(1).to_json().to_string());
            prop_assert!(
                matches!(out.as_slice(), [Output::Send(c, ServerMessage::Welcome { .. })] if *c == conn),
                "hello got {:?}",
                out
            );
        }
        Ok(())
    }

    fn disconnect(&mut self, conn: ConnId) -> Result<(), TestCaseError> {
        if !self.live.remove(&conn) {
            return Ok(());
        }
        self.gone.insert(conn);
        for slot in self.slots.iter_mut() {
            if *slot == Some(conn) {
                *slot = None;
            }
        }
        let out = self.book.disconnect(conn);
        let before = self.routes.clone();
        for output in &out {
            let Output::Send(to, msg) = output else {
                return Err(TestCaseError::fail(format!(
                    "disconnecting {conn} closed another connection: {output:?}"
                )));
            };
            self.check_addressee(*to, output)?;
            if let Some(call_id) = call_id_of(msg) {
                let route = before.get(call_id);
                prop_assert!(
                    matches!(msg, ServerMessage::Hangup { .. })
                        && route.is_some_and(|r| (r.caller == conn && r.callee_conn == *to)
                            || (r.callee_conn == conn && r.caller == *to)),
                    "on disconnecting {}: {:?} does not end a call of it (routes {:?})",
                    conn,
                    output,
                    before
                );
            }
        }
        self.routes
            .retain(|_, r| r.caller != conn && r.callee_conn != conn);
        self.names.retain(|_, owner| *owner != conn);
        self.check_state()
    }

    fn check_addressee(&self, to: ConnId, output: &Output) -> Result<(), TestCaseError> {
        prop_assert!(
            !self.gone.contains(&to),
            "{:?} addresses connection {} that was disconnected before",
            output,
            to
        );
        prop_assert!(self.live.contains(&to), "{:?} addresses nobody", output);
        Ok(())
    }

    fn sender(&self, slot: usize) -> Option<ConnId> {
        self.slots[slot].or(self.last[slot])
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Connect { slot, hello } => self.connect(*slot, *hello),
            Op::Disconnect(slot) => match self.slots[*slot] {
                Some(conn) => self.disconnect(conn),
                None => Ok(()),
            },
            Op::Send { slot, msg, parsed } => match self.sender(*slot) {
                Some(conn) => self.send(conn, msg, *parsed),
                None => Ok(()),
            },
            Op::Follow {
                route,
                from_caller,
                reply,
            } => {
                if self.routes.is_empty() {
                    return Ok(());
                }
                let (call_id, r) = self
                    .routes
                    .iter()
                    .nth(route.index(self.routes.len()))
                    .expect("index within the routes");
                let conn = if *from_caller {
                    r.caller
                } else {
                    r.callee_conn
                };
                let msg = reply.msg(call_id.clone());
                self.send(conn, &msg, false)
            }
            Op::CallKnown {
                slot,
                name,
                call_id,
            } => {
                let Some(conn) = self.sender(*slot) else {
                    return Ok(());
                };
                if self.names.is_empty() {
                    return Ok(());
                }
                let name = self.names.keys().nth(name.index(self.names.len()));
                let name = name.expect("index within the names").clone();
                self.send(conn, &Msg::Call(call_id.to_string(), name), false)
            }
            Op::Text { slot, text } => {
                let Some(conn) = self.sender(*slot) else {
                    return Ok(());
                };
                let out = self.book.handle_text(conn, text);
                self.absorb(conn, out)
            }
            Op::Oversized(slot) => {
                let Some(conn) = self.sender(*slot) else {
                    return Ok(());
                };
                let text = format!(
                    r#"{{"type":"register","name":"cam","meta":{{"pad":"{}"}}}}"#,
                    "x".repeat(MAX_MESSAGE_BYTES)
                );
                let out = self.book.handle_text(conn, &text);
                prop_assert!(
                    out.iter()
                        .all(|o| !matches!(o, Output::Send(_, ServerMessage::Registered { .. }))),
                    "an oversized frame was acted on: {:?}",
                    out
                );
                self.absorb(conn, out)
            }
        }
    }

    fn send(&mut self, conn: ConnId, msg: &Msg, parsed: bool) -> Result<(), TestCaseError> {
        let text = msg.to_json().to_string();
        let out = match ClientMessage::parse(&text) {
            Ok(msg) if parsed => self.book.handle(conn, msg),
            _ => self.book.handle_text(conn, &text),
        };
        self.absorb(conn, out)
    }

    /// Checks what `sender`'s frame produced against the model, updates the model, and
    /// disconnects whoever the phonebook closed, as the server does.
    fn absorb(&mut self, sender: ConnId, out: Vec<Output>) -> Result<(), TestCaseError> {
        let before = self.routes.clone();
        let mut closed = Vec::new();
        for output in &out {
            match output {
                Output::Close(to) => {
                    self.check_addressee(*to, output)?;
                    prop_assert_eq!(*to, sender, "a frame closes only its own connection");
                    closed.push(*to);
                }
                Output::Send(to, msg) => {
                    self.check_addressee(*to, output)?;
                    self.check_relay(sender, *to, msg, &before)?;
                    self.learn(sender, *to, msg);
                }
            }
        }
        for conn in closed {
            self.disconnect(conn)?;
        }
        self.check_state()
    }

    /// A call message goes only to an end of that call, and only the right end.
    fn check_relay(
        &self,
        sender: ConnId,
        to: ConnId,
        msg: &ServerMessage,
        before: &BTreeMap<String, Route>,
    ) -> Result<(), TestCaseError> {
        let Some(call_id) = call_id_of(msg) else {
            return Ok(());
        };
        match msg {
            ServerMessage::IncomingCall { callee, .. } => {
                prop_assert!(
                    !before.contains_key(call_id),
                    "call id {} routed twice",
                    call_id
                );
                prop_assert_eq!(
                    self.names.get(callee),
                    Some(&to),
                    "incoming call for {} sent to {}, who does not own the name",
                    callee,
                    to
                );
            }
            ServerMessage::Ringing { .. }
            | ServerMessage::Accepted { .. }
            | ServerMessage::Declined { .. } => {
                let route = before.get(call_id);
                prop_assert!(
                    route.is_some_and(|r| r.callee_conn == sender && r.caller == to),
                    "{:?} from {} to {} is not callee to caller (route {:?})",
                    msg,
                    sender,
                    to,
                    route
                );
            }
            _ => {
                let route = before.get(call_id);
                prop_assert!(
                    route.is_some_and(|r| (r.caller == sender && r.callee_conn == to)
                        || (r.callee_conn == sender && r.caller == to)),
                    "{:?} from {} to {} is not between the ends of the call (route {:?})",
                    msg,
                    sender,
                    to,
                    route
                );
            }
        }
        Ok(())
    }

    fn learn(&mut self, sender: ConnId, to: ConnId, msg: &ServerMessage) {
        match msg {
            ServerMessage::Registered { name } => {
                self.names.insert(name.clone(), to);
            }
            ServerMessage::Unregistered { name } => {
                self.names.remove(name);
            }
            ServerMessage::IncomingCall {
                call_id, callee, ..
            } => {
                self.routes.insert(
                    call_id.clone(),
                    Route {
                        caller: sender,
                        callee_conn: to,
                        callee: callee.clone(),
                        accepted: false,
                    },
                );
            }
            ServerMessage::Accepted { call_id, .. } => {
                if let Some(route) = self.routes.get_mut(call_id) {
                    route.accepted = true;
                }
            }
            ServerMessage::Declined { call_id, .. } | ServerMessage::Hangup { call_id, .. } => {
                self.routes.remove(call_id);
            }
            _ => {}
        }
    }

    fn check_state(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            self.book.active_calls(),
            self.routes.len(),
            "calls routed, against those the outputs announced: {:?}",
            self.routes
        );
        for (call_id, route) in &self.routes {
            prop_assert!(
                self.live.contains(&route.caller) && self.live.contains(&route.callee_conn),
                "call {} still routed to a connection that is gone: {:?}",
                call_id,
                route
            );
        }
        let callees = self.book.callees();
        let listed: Vec<&str> = callees.iter().map(|c| c.name.as_str()).collect();
        let expected: Vec<&str> = self.names.keys().map(String::as_str).collect();
        prop_assert_eq!(listed, expected);
        for callee in &callees {
            let owner = self.names[&callee.name];
            prop_assert!(self.live.contains(&owner));
            let mut own_calls = self
                .routes
                .values()
                .filter(|r| r.callee == callee.name && r.callee_conn == owner)
                .peekable();
            let expected = if own_calls.peek().is_none() {
                Presence::Available
            } else if own_calls.any(|r| r.accepted) {
                Presence::InCall
            } else {
                Presence::Ringing
            };
            if callee.presence != Presence::Dnd {
                prop_assert_eq!(callee.presence, expected, "presence of {:?}", callee);
            }
        }
        Ok(())
    }

    /// Everyone leaves: nothing may stay registered or routed.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        let live: Vec<ConnId> = self.live.iter().copied().collect();
        for conn in live {
            self.disconnect(conn)?;
        }
        prop_assert_eq!(self.book.active_calls(), 0);
        prop_assert!(self.book.callees().is_empty());
        prop_assert!(self.routes.is_empty() && self.names.is_empty());
        Ok(())
    }
}

proptest! {
    #[test]
    fn phonebook_routes_only_between_live_ends(ops in prop::collection::vec(op(), 1..60)) {
        let mut harness = Harness::new()?;
        for op in &ops {
            harness.run(op)?;
        }
        harness.finish()?;
    }
}

/// Found by the property above: a connection that called its own name was sent the
/// hang-up of that call while it was being disconnected.
#[test]
fn a_connection_that_called_itself_is_not_written_to_as_it_leaves() {
    let mut book = Phonebook::new(Vec::new());
    book.connect(1);
    for msg in [
        Msg::Hello(1),
        Msg::Register("cam".into()),
        Msg::Call("c1".into(), "cam".into()),
    ] {
        book.handle_text(1, &msg.to_json().to_string());
    }
    assert_eq!(book.active_calls(), 1);
    assert_eq!(book.disconnect(1), Vec::new());
    assert_eq!(book.active_calls(), 0);
}

/// Found by the property above: a frame read after its connection was dropped (the server
/// drops clients that stop reading) was answered with `hello_required` and a close.
#[test]
fn a_frame_from_a_closed_connection_gets_no_reply() {
    let mut book = Phonebook::new(Vec::new());
    book.connect(1);
    book.handle_text(1, &Msg::Hello(1).to_json().to_string());
    book.disconnect(1);
    assert_eq!(book.handle_text(1, "not json"), Vec::new());
    assert_eq!(
        book.handle_text(1, &"x".repeat(MAX_MESSAGE_BYTES + 1)),
        Vec::new()
    );
    assert_eq!(
        book.handle_text(1, &Msg::Listen.to_json().to_string()),
        Vec::new()
    );
}

// The call state machine, with time passed in.

#[derive(Debug, Clone)]
enum Step {
    Input(Input),
    Advance(Duration),
    Poll,
}

fn reason() -> impl Strategy<Value = String> {
    select(&["Not now", "bye", "connection lost", ""][..]).prop_map(String::from)
}

fn admission() -> impl Strategy<Value = Admission> {
    prop_oneof![
        4 => Just(Admission::Ring),
        2 => Just(Admission::Accept),
        1 => reason().prop_map(Admission::Decline),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => admission().prop_map(Input::Offered),
        3 => Just(Input::Accept),
        2 => reason().prop_map(Input::Decline),
        1 => reason().prop_map(Input::AnswerFailed),
        3 => Just(Input::PeerConnected),
        1 => reason().prop_map(Input::PeerLost),
        2 => reason().prop_map(Input::RemoteHangup),
        2 => reason().prop_map(Input::LocalHangup),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => input().prop_map(Step::Input),
        2 => (0u64..5_000).prop_map(|ms| Step::Advance(Duration::from_millis(ms))),
        2 => prop_oneof![Just(CONNECT_TIMEOUT), (0u64..120).prop_map(Duration::from_secs)]
            .prop_map(Step::Advance),
        3 => Just(Step::Poll),
    ]
}

fn ring_timeout() -> impl Strategy<Value = Duration> {
    prop_oneof![
        6 => (0u64..60).prop_map(Duration::from_secs),
        // `call.ring_timeout_secs` is any u64 the config file holds.
        1 => any::<u64>().prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
}

fn legal(from: CallState, to: CallState) -> bool {
    use CallState::*;
    matches!(
        (from, to),
        (Initial, Ringing | Declined)
            | (Ringing, Accepted | Declined | Ended)
            | (Accepted, Established | Ended | Error)
            | (Established, Ended)
    )
}

/// Everything the call asked its owner to do, over its whole life.
#[derive(Debug, Default)]
struct Ledger {
    rang: usize,
    answered: usize,
    closed: usize,
    told: usize,
    ended_by_caller: bool,
}

/// Applies one batch of actions: the state moves only along legal edges, each reported,
/// and the peer connection and the caller are handled in order.
fn check_actions(
    call: &Call,
    before: CallState,
    input: Option<&Input>,
    actions: &[Action],
    ledger: &mut Ledger,
) -> Result<(), TestCaseError> {
    if before.is_over() {
        prop_assert!(actions.is_empty(), "a finished call acted: {:?}", actions);
        prop_assert_eq!(call.state(), before);
        return Ok(());
    }
    let mut state = before;
    for action in actions {
        match action {
            Action::StateChanged(next, why) => {
                prop_assert!(legal(state, *next), "{:?} -> {:?}", state, next);
                prop_assert_eq!(
                    why.is_some(),
                    next.is_over(),
                    "reason {:?} for {:?}",
                    why,
                    next
                );
                state = *next;
            }
            Action::SendRinging => {
                prop_assert_eq!(ledger.rang, 0, "rang twice");
                ledger.rang += 1;
            }
            Action::Answer => {
                prop_assert!(ledger.rang == 1 && ledger.answered == 0, "{:?}", ledger);
                ledger.answered += 1;
            }
            Action::ClosePeer => {
                prop_assert!(ledger.answered == 1 && ledger.closed == 0, "{:?}", ledger);
                ledger.closed += 1;
            }
            Action::SendDecline(_) | Action::SendHangup(_) => {
                prop_assert_eq!(ledger.told, 0, "the caller was told twice");
                ledger.told += 1;
            }
            Action::OpenMedia => {
                prop_assert!(false, "an incoming call opened a placed call's media")
            }
        }
    }
    prop_assert_eq!(call.state(), state, "actions {:?}", actions);
    if state.is_over() {
        prop_assert!(call.reason().is_some());
        ledger.ended_by_caller = matches!(input, Some(Input::RemoteHangup(_)));
    } else {
        prop_assert_eq!(call.reason(), None);
    }
    // Answering and the Accepted state go together.
    let reached_accepted = matches!(
        state,
        CallState::Accepted | CallState::Established | CallState::Error
    ) || (state == CallState::Ended && ledger.answered == 1);
    prop_assert_eq!(
        ledger.answered == 1,
        reached_accepted,
        "{:?} {:?}",
        state,
        ledger
    );
    Ok(())
}

/// A finished call left nothing open: a peer connection it made is closed, and a caller
/// it rang for heard how it ended (unless the caller ended it).
fn check_closed(call: &Call, ledger: &Ledger) -> Result<(), TestCaseError> {
    if !call.state().is_over() {
        return Ok(());
    }
    prop_assert_eq!(ledger.closed, ledger.answered, "half-open: {:?}", ledger);
    prop_assert_eq!(call.deadline(), None);
    if ledger.ended_by_caller {
        prop_assert_eq!(
            ledger.told,
            0,
            "the caller who hung up was told: {:?}",
            ledger
        );
    } else {
        prop_assert_eq!(ledger.told, 1, "the caller never heard: {:?}", ledger);
    }
    Ok(())
}

proptest! {
    #[test]
    fn calls_end_cleanly_whatever_happens(
        ring in ring_timeout(),
        offer in prop::option::weighted(0.9, admission()),
        steps in prop::collection::vec(step(), 0..60),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut call = Call::new(t0, ring);
        let mut ledger = Ledger::default();
        let steps: Vec<Step> = offer
            .map(|a| Step::Input(Input::Offered(a)))
            .into_iter()
            .chain(steps)
            .collect();
        let offered = steps
            .iter()
            .any(|s| matches!(s, Step::Input(Input::Offered(_))));
        for step in steps {
            let before = call.state();
            let deadline = call.deadline();
            let (input, actions) = match step {
                Step::Advance(by) => {
                    now += by;
                    continue;
                }
                Step::Poll => (None, call.poll(now)),
                Step::Input(input) => {
                    let actions = call.handle(input.clone(), now);
                    (Some(input), actions)
                }
            };
            check_actions(&call, before, input.as_ref(), &actions, &mut ledger)?;
            if input.is_none() {
                // A poll acts exactly when a deadline passed, and ends the call.
                let due = deadline.is_some_and(|d| now >= d);
                prop_assert_eq!(!actions.is_empty(), due, "poll at {:?} past {:?}", now - t0, deadline);
                if due {
                    let expected = match before {
                        CallState::Ringing => vec![
                            Action::SendDecline(NO_ANSWER.into()),
                            Action::StateChanged(CallState::Declined, Some(NO_ANSWER.into())),
                        ],
                        _ => vec![
                            Action::SendHangup(CONNECT_FAILED.into()),
                            Action::ClosePeer,
                            Action::StateChanged(CallState::Ended, Some(CONNECT_FAILED.into())),
                        ],
                    };
                    prop_assert_eq!(actions, expected);
                }
            }
            let deadline = call.deadline();
            match call.state() {
                CallState::Accepted => prop_assert!(deadline.is_some()),
                CallState::Ringing => {}
                _ => prop_assert_eq!(deadline, None),
            }
            prop_assert_ne!(call.state().to_string(), "?");
            check_closed(&call, &ledger)?;
        }
        if !offered {
            prop_assert_eq!(call.state(), CallState::Initial, "only an offer starts a call");
        }
        // No call waits forever on something that has a deadline, and a hang-up at the
        // device (the button, shutting down) ends any call that has started.
        if let Some(due) = call.deadline() {
            let before = call.state();
            let actions = call.poll(due.max(now));
            check_actions(&call, before, None, &actions, &mut ledger)?;
            prop_assert!(call.state().is_over());
        }
        if call.state() != CallState::Initial {
            let before = call.state();
            let input = Input::LocalHangup("shutting down".into());
            let actions = call.handle(input.clone(), now);
            check_actions(&call, before, Some(&input), &actions, &mut ledger)?;
            prop_assert!(call.state().is_over(), "{:?} survived a hang-up", call.state());
            check_closed(&call, &ledger)?;
        }
    }

    /// A call the device places (the bell), fed anything in any order: it moves only
    /// forward, opens its held-back media at most once and only when answered, closes its
    /// peer exactly once, and a hang-up at the device ends it from any state.
    #[test]
    fn placed_calls_end_cleanly_whatever_happens(
        steps in prop::collection::vec(prop_oneof![
            4 => prop_oneof![
                3 => Just(Input::Placed),
                2 => Just(Input::Rang),
                2 => Just(Input::Answered),
                1 => reason().prop_map(Input::Refused),
                1 => reason().prop_map(Input::OfferFailed),
            ].prop_map(Step::Input),
            4 => input().prop_map(Step::Input),
            2 => prop_oneof![Just(REPLY_TIMEOUT), Just(CONNECT_TIMEOUT), (0u64..40).prop_map(Duration::from_secs)]
                .prop_map(Step::Advance),
            2 => Just(Step::Poll),
        ], 0..60),
    ) {
        use CallState::*;
        let t0 = Instant::now();
        let mut now = t0;
        let mut call = Call::outgoing(t0);
        let (mut opened, mut closed, mut hung_up) = (0, 0, 0);
        let forward = |from: CallState, to: CallState| matches!(
            (from, to),
            (Initial, Connecting | Error | Ended)
                | (Connecting, Ringing | Accepted | Established | Declined | Ended)
                | (Ringing, Accepted | Established | Declined | Ended)
                | (Accepted, Established | Ended)
                | (Established, Ended)
        );
        let last = Step::Input(Input::LocalHangup("hung up at the device".into()));
        for step in steps.into_iter().chain([last]) {
            let before = call.state();
            let actions = match step {
                Step::Advance(by) => {
                    now += by;
                    continue;
                }
                Step::Poll => call.poll(now),
                Step::Input(input) => call.handle(input, now),
            };
            if before.is_over() {
                prop_assert!(actions.is_empty(), "a finished call acted: {:?}", actions);
            }
            let mut state = before;
            for action in &actions {
                match action {
                    Action::StateChanged(next, _) => {
                        prop_assert!(forward(state, *next), "{:?} -> {:?}", state, next);
                        state = *next;
                    }
                    Action::OpenMedia => opened += 1,
                    Action::ClosePeer => closed += 1,
                    Action::SendHangup(_) => hung_up += 1,
                    other => prop_assert!(false, "a placed call asked for {:?}", other),
                }
            }
            prop_assert_eq!(call.state(), state);
            prop_assert!(opened <= 1 && closed <= 1 && hung_up <= 1);
            if opened == 1 {
                prop_assert!(matches!(state, Accepted | Established | Ended), "{:?}", state);
            }
            prop_assert_eq!(closed == 1, state.is_over(), "{:?}", state);
        }
        prop_assert!(call.state().is_over(), "{:?} survived a hang-up", call.state());
        prop_assert_eq!(call.deadline(), None);
    }

    #[test]
    fn admission_follows_dnd_then_capacity_then_lists(
        auto in any::<bool>(),
        allow in prop::collection::vec(text(), 0..3),
        max_viewers in 1usize..8,
        caller in prop::option::of(text()),
        active in 0usize..10,
        dnd in any::<bool>(),
    ) {
        let rules = AnswerRules {
            auto,
            allow: allow.clone(),
            max_viewers,
            dnd_reason: "Do not disturb".into(),
        };
        let admission = rules.admit(caller.as_deref(), active, dnd);
        let expected = if dnd {
            Admission::Decline("Do not disturb".into())
        } else if active >= max_viewers {
            Admission::Decline(BUSY.into())
        } else if auto || caller.is_some_and(|c| allow.contains(&c)) {
            Admission::Accept
        } else {
            Admission::Ring
        };
        prop_assert_eq!(admission, expected);
    }
}
