//! Keeps `docs/protocol.md` honest: every example in it must be a message our types accept
//! and produce byte-for-byte (as JSON values), every message type must have an example, and
//! the error table must only list codes that exist. The same holds for the camera's
//! data-channel events, the control socket's lines and the status object.

use std::collections::BTreeSet;

use peercam::call::{CallState, Role};
use peercam::control::Control;
use peercam::control::Press;
use peercam::gpio::Levels;
use peercam::media::Codec;
use peercam::media::fanout::FeedStats;
use peercam::signalling::events::{
    BellState, BellStatus, DeviceEvent, Side, SkipReason, Skipped, ViewerRequest,
};
use peercam::signalling::protocol::{ClientMessage, ErrorCode, ServerMessage};
use peercam::signalling::status::{CallStatus, Status};
use serde_json::Value;

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

const SERVER_TAGS: &[&str] = &[
    "welcome",
    "registered",
    "unregistered",
    "callees",
    "callee_update",
    "callee_removed",
    "incoming_call",
    "ringing",
    "accepted",
    "declined",
    "candidate",
    "hangup",
    "error",
];

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
    "unauthorized",
    "forbidden",
    "rate_limited",
    "too_many_calls",
    "too_many_names",
    "too_many_candidates",
];

// These matches have no wildcard arm on purpose: adding a variant to the protocol stops the
// build here until the tag lists above (and so the doc) are updated too.
fn server_tag(msg: &ServerMessage) -> &'static str {
    match msg {
        ServerMessage::Welcome { .. } => "welcome",
        ServerMessage::Registered { .. } => "registered",
        ServerMessage::Unregistered { .. } => "unregistered",
        ServerMessage::Callees { .. } => "callees",
        ServerMessage::CalleeUpdate { .. } => "callee_update",
        ServerMessage::CalleeRemoved { .. } => "callee_removed",
        ServerMessage::IncomingCall { .. } => "incoming_call",
        ServerMessage::Ringing { .. } => "ringing",
        ServerMessage::Accepted { .. } => "accepted",
        ServerMessage::Declined { .. } => "declined",
        ServerMessage::Candidate { .. } => "candidate",
        ServerMessage::Hangup { .. } => "hangup",
        ServerMessage::Error { .. } => "error",
    }
}

fn error_code_tag(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::HelloRequired => "hello_required",
        ErrorCode::BadMessage => "bad_message",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::NameTaken => "name_taken",
        ErrorCode::InvalidName => "invalid_name",
        ErrorCode::UnknownCallee => "unknown_callee",
        ErrorCode::UnknownCall => "unknown_call",
        ErrorCode::DuplicateCall => "duplicate_call",
        ErrorCode::NotRegistered => "not_registered",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::TooManyCalls => "too_many_calls",
        ErrorCode::TooManyNames => "too_many_names",
        ErrorCode::TooManyCandidates => "too_many_candidates",
    }
}

struct Example {
    /// 1-based line of the opening fence, so a failure points into the doc.
    line: usize,
    info: String,
    body: String,
}

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

/// Every fenced code block of the doc, with its info string.
fn fenced_blocks(doc: &str) -> Vec<Example> {
    let mut blocks = Vec::new();
    let mut open: Option<Example> = None;
    for (index, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.as_mut() {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Example {
                        line: index + 1,
                        info: info.trim().to_owned(),
                        body: String::new(),
                    });
                }
            }
            Some(block) => {
                if trimmed.starts_with("```") && trimmed.trim_end().trim_matches('`').is_empty() {
                    blocks.push(open.take().expect("a block is open"));
                } else {
                    block.body.push_str(line);
                    block.body.push('\n');
                }
            }
        }
    }
    if let Some(block) = open {
        panic!("code block opened on line {} is never closed", block.line);
    }
    blocks
}

fn examples(info: &str) -> Vec<Example> {
    fenced_blocks(&doc())
        .into_iter()
        .filter(|block| block.info == info)
        .collect()
}

fn doc_value(example: &Example) -> Value {
    serde_json::from_str(&example.body).unwrap_or_else(|err| {
        panic!(
            "the example on line {} is not JSON: {err}\n{}",
            example.line, example.body
        )
    })
}

fn tag_of(value: &Value) -> &str {
    value
        .get("type")
        .and_then(Value::as_str)
        .expect("every message has a string `type`")
}

#[test]
fn the_doc_has_examples_in_both_directions() {
    // Guards the fence parsing itself: if the info strings drift (say to `json,client`),
    // every other test here would pass vacuously.
    assert!(examples("json client").len() >= CLIENT_TAGS.len());
    assert!(examples("json server").len() >= SERVER_TAGS.len());
}

#[test]
fn client_examples_round_trip() {
    for example in examples("json client") {
        let expected = doc_value(&example);
        let msg: ClientMessage = serde_json::from_value(expected.clone()).unwrap_or_else(|err| {
            panic!(
                "the client example on line {} does not parse: {err}\n{}",
                example.line, example.body
            )
        });
        assert_eq!(
            msg.kind(),
            tag_of(&expected),
            "line {}: parsed as a different message",
            example.line
        );
        let back = serde_json::to_value(&msg).expect("client messages serialise");
        assert_eq!(
            back, expected,
            "the client example on line {} does not serialise back to itself",
            example.line
        );
    }
}

#[test]
fn server_examples_round_trip() {
    for example in examples("json server") {
        let expected = doc_value(&example);
        let msg: ServerMessage = serde_json::from_value(expected.clone()).unwrap_or_else(|err| {
            panic!(
                "the server example on line {} does not parse: {err}\n{}",
                example.line, example.body
            )
        });
        assert_eq!(
            server_tag(&msg),
            tag_of(&expected),
            "line {}: parsed as a different message",
            example.line
        );
        // The wire form is what `to_text` sends, so check that path rather than to_value.
        let back: Value = serde_json::from_str(&msg.to_text()).expect("to_text is JSON");
        assert_eq!(
            back, expected,
            "the server example on line {} does not serialise back to itself",
            example.line
        );
    }
}

fn assert_every_tag_has_an_example(info: &str, tags: &[&str]) {
    let documented: BTreeSet<String> = examples(info)
        .iter()
        .map(|example| tag_of(&doc_value(example)).to_owned())
        .collect();
    let missing: Vec<&&str> = tags
        .iter()
        .filter(|tag| !documented.contains(**tag))
        .collect();
    assert!(
        missing.is_empty(),
        "no `{info}` example for {missing:?} in docs/protocol.md"
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|tag| !tags.contains(&tag.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "`{info}` examples of types the test does not know: {unknown:?}"
    );
}

#[test]
fn every_client_message_type_has_an_example() {
    assert_every_tag_has_an_example("json client", CLIENT_TAGS);
}

#[test]
fn every_server_message_type_has_an_example() {
    assert_every_tag_has_an_example("json server", SERVER_TAGS);
}

#[test]
fn tag_lists_match_the_types() {
    // A sample of every client message, so that a renamed serde tag shows up here rather
    // than as a confusing "missing example" failure.
    let samples = [
        r#"{"type":"hello","version":1}"#,
        r#"{"type":"register","name":"x"}"#,
        r#"{"type":"unregister","name":"x"}"#,
        r#"{"type":"set_presence","name":"x","presence":"dnd"}"#,
        r#"{"type":"listen"}"#,
        r#"{"type":"unlisten"}"#,
        r#"{"type":"call","call_id":"c","callee":"x","sdp":""}"#,
        r#"{"type":"ringing","call_id":"c"}"#,
        r#"{"type":"accept","call_id":"c","sdp":""}"#,
        r#"{"type":"decline","call_id":"c","reason":""}"#,
        r#"{"type":"candidate","call_id":"c","candidate":null}"#,
        r#"{"type":"hangup","call_id":"c","reason":""}"#,
    ];
    let kinds: Vec<&str> = samples
        .iter()
        .map(|text| ClientMessage::parse(text).unwrap().kind())
        .collect();
    assert_eq!(kinds, CLIENT_TAGS);

    for tag in ERROR_CODES {
        let code: ErrorCode = serde_json::from_value(Value::from(*tag)).unwrap();
        assert_eq!(error_code_tag(code), *tag);
    }
}

/// The backticked codes in the first column of the error table.
fn error_table_codes(doc: &str) -> Vec<String> {
    let mut lines = doc.lines().skip_while(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        cells.get(1) != Some(&"code")
    });
    assert!(lines.next().is_some(), "no table with a `code` column");
    let separator = lines.next().expect("the table has a separator row");
    assert!(separator.trim_start().starts_with("|-") || separator.contains("---"));
    lines
        .take_while(|line| line.trim_start().starts_with('|'))
        .map(|row| {
            let first = row.split('|').nth(1).expect("a row has cells").trim();
            first
                .strip_prefix('`')
                .and_then(|cell| cell.strip_suffix('`'))
                .unwrap_or_else(|| panic!("first cell {first:?} is not one backticked code"))
                .to_owned()
        })
        .collect()
}

#[test]
fn the_error_table_lists_real_codes() {
    let codes = error_table_codes(&doc());
    for code in &codes {
        let parsed: Result<ErrorCode, _> = serde_json::from_value(Value::from(code.as_str()));
        assert!(
            parsed.is_ok(),
            "`{code}` in the error table is not an ErrorCode"
        );
    }
    let mut unique = BTreeSet::new();
    for code in &codes {
        assert!(unique.insert(code), "`{code}` is in the error table twice");
    }
    // Clients switch on these codes, so each needs a row saying what it means.
    let undocumented: Vec<&&str> = ERROR_CODES
        .iter()
        .filter(|code| !codes.iter().any(|c| c == **code))
        .collect();
    assert!(
        undocumented.is_empty(),
        "error codes missing from the table: {undocumented:?}"
    );
}

const EVENT_TAGS: &[&str] = &[
    "accepted",
    "viewers",
    "ringing",
    "button",
    "shutting_down",
    "bell",
    "door",
];

// No wildcard arm, as above: a new event stops the build until it is documented.
fn event_tag(event: &DeviceEvent) -> &'static str {
    match event {
        DeviceEvent::Accepted => "accepted",
        DeviceEvent::Viewers { .. } => "viewers",
        DeviceEvent::Ringing { .. } => "ringing",
        DeviceEvent::Button { .. } => "button",
        DeviceEvent::ShuttingDown => "shutting_down",
        DeviceEvent::Bell(_) => "bell",
        DeviceEvent::Door { .. } => "door",
    }
}

#[test]
fn viewer_requests_parse_and_each_has_an_example() {
    let blocks = examples("json request");
    let mut documented = BTreeSet::new();
    for example in &blocks {
        let request = ViewerRequest::parse(&example.body).unwrap_or_else(|| {
            panic!(
                "the request on line {} is not one\n{}",
                example.line, example.body
            )
        });
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            doc_value(example),
            "line {}",
            example.line
        );
        // No wildcard arm: a new request stops the build until it is documented.
        documented.insert(match request {
            ViewerRequest::OpenDoor => "open_door",
        });
    }
    assert_eq!(documented.len(), 1, "every request has an example");
}

#[test]
fn data_channel_events_round_trip_and_each_has_an_example() {
    let blocks = examples("json event");
    assert!(blocks.len() >= EVENT_TAGS.len());
    let mut documented = BTreeSet::new();
    for example in blocks {
        let expected = doc_value(&example);
        let event: DeviceEvent = serde_json::from_value(expected.clone()).unwrap_or_else(|err| {
            panic!(
                "the event on line {} does not parse: {err}\n{}",
                example.line, example.body
            )
        });
        assert_eq!(
            Some(event_tag(&event)),
            expected.get("event").and_then(Value::as_str),
            "line {}",
            example.line
        );
        // What the data channel carries is `to_text`.
        let back: Value = serde_json::from_str(&event.to_text()).expect("to_text is JSON");
        assert_eq!(
            back, expected,
            "the event on line {} does not serialise back to itself",
            example.line
        );
        documented.insert(event_tag(&event));
    }
    let missing: Vec<&&str> = EVENT_TAGS
        .iter()
        .filter(|tag| !documented.contains(**tag))
        .collect();
    assert!(
        missing.is_empty(),
        "no `json event` example for {missing:?}"
    );
}

#[test]
fn control_lines_parse_and_print_back_and_every_request_is_shown() {
    let blocks = examples("text control");
    assert_eq!(blocks.len(), 1, "one block of control lines");
    let mut kinds = BTreeSet::new();
    for line in blocks[0].body.lines() {
        let control = Control::parse(line)
            .unwrap_or_else(|err| panic!("control line {line:?} in the doc: {err}"));
        assert_eq!(control.to_string(), line, "prints back as written");
        kinds.insert(match control {
            Control::Press(Press::Accept) => "accept",
            Control::Press(Press::Decline(_)) => "decline",
            Control::Press(Press::Hangup(_)) => "hangup",
            Control::Press(Press::DoNotDisturb) => "dnd",
            Control::Press(Press::Bell) => "bell",
            Control::Status => "status",
            Control::FaultCamera => "fault camera",
        });
    }
    assert_eq!(
        kinds.len(),
        7,
        "every kind of request has a line: {kinds:?}"
    );
}

#[test]
fn the_status_example_is_what_status_prints() {
    let blocks = examples("json status");
    assert_eq!(blocks.len(), 1, "one status example");
    // Status is only ever printed, so the example is checked against a status built with
    // its values: every field, name and nesting must be what the type serialises.
    let call = |id: &str, caller: &str, callee: Option<&str>, via, state, video| CallStatus {
        id: id.into(),
        caller: caller.into(),
        role: if callee.is_some() {
            Role::Caller
        } else {
            Role::Callee
        },
        callee: callee.map(str::to_owned),
        via,
        state,
        video,
        played_audio_buffers: if callee.is_some() { 412 } else { 0 },
    };
    let status = Status {
        name: "front-door".into(),
        registered: true,
        peerjs: Some(true),
        camera_running: true,
        dnd: false,
        indicators: Levels {
            ring_led: true,
            on_air_led: true,
            buzzer: false,
            door: false,
        },
        viewers: 1,
        feed: FeedStats {
            frames: 5400,
            keyframes: 90,
            forced_keyframes: 2,
            skipped: 0,
            starts: 1,
            failures: 0,
            bitrate_kbps: 2000,
            bitrate_changes: 0,
            estimates: 12,
        },
        microphone: None,
        calls: vec![
            call(
                "b-5e0c11d2-2",
                "front-door",
                Some("ada"),
                Side::Phonebook,
                CallState::Established,
                Some(Codec::H264),
            ),
            call(
                "peerjs-mc_2b7e",
                "Peter",
                None,
                Side::PeerJs,
                CallState::Ringing,
                None,
            ),
        ],
        bell: Some(BellStatus {
            state: BellState::Answered,
            by: Some("ada".into()),
            ringing: Vec::new(),
            skipped: vec![Skipped {
                name: "bob".into(),
                why: SkipReason::Offline,
            }],
            declined: Vec::new(),
        }),
    };
    assert_eq!(
        serde_json::to_value(&status).unwrap(),
        doc_value(&blocks[0]),
        "the status example on line {}",
        blocks[0].line
    );
}
