//! The phonebook server end to end: a real listener on 127.0.0.1, real WebSockets, real
//! HTTP. The unit tests in `src/signalling/phonebook.rs` cover the rules; these check
//! that the socket layer delivers them (ordering, closes, size limits, bad frames).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use peercam::signalling::access::CallerMode;
use peercam::signalling::phonebook::MAX_SDP_BYTES;
use peercam::signalling::protocol::{
    Callee, ClientMessage, ErrorCode, IceCandidate, IceServer, PROTOCOL_VERSION, Presence,
    ServerMessage,
};
use peercam::signalling::server::{Limits, PhonebookServer};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use common::ws::{TestPhonebook as Server, WAIT, WsClient};

/// How long "nothing arrives" is watched for; long enough for a loopback round trip.
const QUIET_MS: u64 = 200;

/// Starts a phonebook with `ice_servers` and the default limits.
async fn start_with(ice_servers: Vec<IceServer>) -> Server {
    Server::start(PhonebookServer::new(ice_servers)).await
}

/// A client of the protocol tests: the shared raw client and the steps these tests repeat.
struct Client(WsClient);

impl std::ops::Deref for Client {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut WsClient {
        &mut self.0
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Client(WsClient::connect(addr).await)
    }

    /// Connected and past `hello`/`welcome`.
    async fn greeted(addr: SocketAddr) -> Self {
        let mut client = Self::connect(addr).await;
        client.hello(PROTOCOL_VERSION).await;
        match client.recv().await {
            ServerMessage::Welcome { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    async fn hello(&mut self, version: u32) {
        self.send(&ClientMessage::Hello {
            version,
            agent: Some("phonebook_ws test".into()),
            token: None,
        })
        .await;
    }

    async fn expect_error(&mut self, code: ErrorCode) -> ServerMessage {
        let msg = self.recv().await;
        match &msg {
            ServerMessage::Error { code: got, .. } if *got == code => msg,
            _ => panic!("expected a {code:?} error, got {msg:?}"),
        }
    }

    async fn expect_no_message(&mut self, ms: u64) {
        let quiet = timeout(Duration::from_millis(ms), async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return other,
                }
            }
        })
        .await;
        if let Ok(frame) = quiet {
            panic!("expected nothing for {ms} ms, got {frame:?}");
        }
    }

    /// Waits until the server has closed the connection. A close frame, the end of the
    /// stream and a reset all count: which one a client sees depends on timing.
    async fn expect_closed(&mut self) {
        let closed = timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(other)) => panic!("expected the connection to close, got {other:?}"),
                }
            }
        })
        .await;
        closed.expect("the server closes the connection within 5 s");
    }

    /// A clean close from our side. The server still cleans up after answering the close,
    /// so tests that depend on that cleanup wait for a listener's `callee_removed`.
    async fn close(mut self) {
        let _ = timeout(WAIT, self.ws.close(None)).await;
        let _ = timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    async fn register(&mut self, name: &str, meta: Value) {
        self.send(&ClientMessage::Register {
            name: name.into(),
            meta,
        })
        .await;
        assert_eq!(
            self.recv().await,
            ServerMessage::Registered { name: name.into() }
        );
    }

    async fn listen(&mut self) -> Vec<Callee> {
        self.send(&ClientMessage::Listen).await;
        match self.recv().await {
            ServerMessage::Callees { callees } => callees,
            other => panic!("expected callees, got {other:?}"),
        }
    }

    async fn expect_update(&mut self, name: &str, presence: Presence) -> Callee {
        match self.recv().await {
            ServerMessage::CalleeUpdate { callee } => {
                assert_eq!((callee.name.as_str(), callee.presence), (name, presence));
                callee
            }
            other => panic!("expected callee_update {name} {presence:?}, got {other:?}"),
        }
    }

    /// Unlisten and unregister have no reply; this round trip proves the server has
    /// handled everything this client sent before it.
    async fn sync(&mut self) {
        self.send(&ClientMessage::Unregister {
            name: "sync-marker".into(),
        })
        .await;
        self.expect_error(ErrorCode::NotRegistered).await;
    }
}

fn call(call_id: &str, callee: &str, sdp: &str) -> ClientMessage {
    ClientMessage::Call {
        call_id: call_id.into(),
        callee: callee.into(),
        meta: json!({"callerName": "Ray"}),
        sdp: sdp.into(),
    }
}

fn callee(name: &str, meta: Value, presence: Presence) -> Callee {
    Callee {
        name: name.into(),
        meta,
        presence,
    }
}

/// A device registered as `name` and a caller whose call to it rings (incoming_call seen).
async fn ringing_call(addr: SocketAddr, name: &str, call_id: &str) -> (Client, Client) {
    let mut device = Client::greeted(addr).await;
    device.register(name, json!({"kind": "camera"})).await;
    let mut caller = Client::greeted(addr).await;
    caller.send(&call(call_id, name, "v=0\r\n")).await;
    match device.recv().await {
        ServerMessage::IncomingCall { call_id: id, .. } => assert_eq!(id, call_id),
        other => panic!("expected incoming_call, got {other:?}"),
    }
    (device, caller)
}

#[tokio::test]
async fn hello_gets_welcome_with_the_ice_servers() {
    let ice = vec![IceServer {
        urls: vec!["stun:stun.example.org:3478".into()],
        username: None,
        credential: None,
        secret: None,
        ttl_secs: None,
    }];
    let server = start_with(ice.clone()).await;
    let mut client = Client::connect(server.addr).await;
    client.hello(PROTOCOL_VERSION).await;
    assert_eq!(
        client.recv().await,
        ServerMessage::Welcome {
            version: PROTOCOL_VERSION,
            server: format!("peercam/{}", env!("CARGO_PKG_VERSION")),
            ice_servers: ice,
            auth: CallerMode::Open,
        }
    );
    // A second hello is a protocol error, not a reason to close.
    client.hello(PROTOCOL_VERSION).await;
    client.expect_error(ErrorCode::BadMessage).await;
    assert_eq!(client.listen().await, Vec::new());
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_version_is_refused_and_closed() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut client = Client::connect(server.addr).await;
    client.hello(PROTOCOL_VERSION + 1).await;
    client.expect_error(ErrorCode::UnsupportedVersion).await;
    client.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn a_first_message_other_than_hello_is_refused_and_closed() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut client = Client::connect(server.addr).await;
    client.send(&ClientMessage::Listen).await;
    client.expect_error(ErrorCode::HelloRequired).await;
    client.expect_closed().await;
    server.stop().await;
}

#[tokio::test]
async fn a_name_belongs_to_one_connection_until_it_closes() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut watcher = Client::greeted(server.addr).await;
    watcher.listen().await;

    let mut first = Client::greeted(server.addr).await;
    first
        .register("front-door", json!({"kind": "camera"}))
        .await;
    watcher
        .expect_update("front-door", Presence::Available)
        .await;

    let mut second = Client::greeted(server.addr).await;
    second
        .send(&ClientMessage::Register {
            name: "front-door".into(),
            meta: json!({}),
        })
        .await;
    second.expect_error(ErrorCode::NameTaken).await;

    first.close().await;
    assert_eq!(
        watcher.recv().await,
        ServerMessage::CalleeRemoved {
            name: "front-door".into()
        }
    );
    second
        .register("front-door", json!({"kind": "other"}))
        .await;

    for bad in ["", " padded", "a<b>", "ünïcode", &"x".repeat(65)] {
        second
            .send(&ClientMessage::Register {
                name: bad.into(),
                meta: json!({}),
            })
            .await;
        second.expect_error(ErrorCode::InvalidName).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn listeners_get_the_list_then_every_change() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut cam_a = Client::greeted(server.addr).await;
    cam_a
        .register("cam-a", json!({"kind": "camera", "width": 1280}))
        .await;

    let mut watcher = Client::greeted(server.addr).await;
    assert_eq!(
        watcher.listen().await,
        vec![callee(
            "cam-a",
            json!({"kind": "camera", "width": 1280}),
            Presence::Available
        )]
    );

    let mut cam_b = Client::greeted(server.addr).await;
    cam_b.register("cam-b", json!({"kind": "doorbell"})).await;
    let update = watcher.expect_update("cam-b", Presence::Available).await;
    assert_eq!(update.meta, json!({"kind": "doorbell"}));

    // The caller does not listen, so everything the watcher sees comes from pushes.
    let mut caller = Client::greeted(server.addr).await;
    caller.send(&call("c-1", "cam-a", "offer")).await;
    watcher.expect_update("cam-a", Presence::Ringing).await;
    assert!(matches!(
        cam_a.recv().await,
        ServerMessage::IncomingCall { .. }
    ));

    cam_a
        .send(&ClientMessage::Accept {
            call_id: "c-1".into(),
            sdp: "answer".into(),
        })
        .await;
    watcher.expect_update("cam-a", Presence::InCall).await;

    caller
        .send(&ClientMessage::Hangup {
            call_id: "c-1".into(),
            reason: "bye".into(),
        })
        .await;
    watcher.expect_update("cam-a", Presence::Available).await;
    assert!(matches!(cam_a.recv().await, ServerMessage::Hangup { .. }));

    cam_a
        .send(&ClientMessage::Unregister {
            name: "cam-a".into(),
        })
        .await;
    assert_eq!(
        cam_a.recv().await,
        ServerMessage::Unregistered {
            name: "cam-a".into()
        }
    );
    assert_eq!(
        watcher.recv().await,
        ServerMessage::CalleeRemoved {
            name: "cam-a".into()
        }
    );

    drop(cam_b);
    assert_eq!(
        watcher.recv().await,
        ServerMessage::CalleeRemoved {
            name: "cam-b".into()
        }
    );
    assert_eq!(watcher.listen().await, Vec::new());

    watcher.send(&ClientMessage::Unlisten).await;
    watcher.sync().await;
    cam_a.register("cam-c", json!({})).await;
    watcher.expect_no_message(QUIET_MS).await;
    server.stop().await;
}

#[tokio::test]
async fn a_call_is_relayed_between_the_two_ends() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut device = Client::greeted(server.addr).await;
    device
        .register("front-door", json!({"kind": "camera"}))
        .await;
    let mut caller = Client::greeted(server.addr).await;

    // The server must not touch the SDP or the metadata: CRLFs, non-ASCII, nesting.
    let offer = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=Caméra ☎\r\n";
    let meta = json!({"callerName": "Zoë", "extra": {"list": [1, 2.5, null, true]}});
    caller
        .send(&ClientMessage::Call {
            call_id: "c-7f3a9e2b".into(),
            callee: "front-door".into(),
            meta: meta.clone(),
            sdp: offer.into(),
        })
        .await;
    assert_eq!(
        device.recv().await,
        ServerMessage::IncomingCall {
            call_id: "c-7f3a9e2b".into(),
            callee: "front-door".into(),
            meta,
            sdp: offer.into(),
        }
    );

    device
        .send(&ClientMessage::Ringing {
            call_id: "c-7f3a9e2b".into(),
            sdp: None,
        })
        .await;
    assert_eq!(
        caller.recv().await,
        ServerMessage::Ringing {
            call_id: "c-7f3a9e2b".into(),
            sdp: None,
        }
    );

    let from_caller = IceCandidate {
        candidate: "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("a1b2".into()),
    };
    // Trickle starts before the answer: candidates must flow while it still rings.
    caller
        .send(&ClientMessage::Candidate {
            call_id: "c-7f3a9e2b".into(),
            candidate: Some(from_caller.clone()),
        })
        .await;
    assert_eq!(
        device.recv().await,
        ServerMessage::Candidate {
            call_id: "c-7f3a9e2b".into(),
            candidate: Some(from_caller),
        }
    );

    let answer = "v=0\r\no=- 7235870931843093621 2 IN IP4 127.0.0.1\r\n";
    device
        .send(&ClientMessage::Accept {
            call_id: "c-7f3a9e2b".into(),
            sdp: answer.into(),
        })
        .await;
    assert_eq!(
        caller.recv().await,
        ServerMessage::Accepted {
            call_id: "c-7f3a9e2b".into(),
            sdp: answer.into(),
        }
    );

    let from_device = IceCandidate {
        candidate: "candidate:2 1 udp 1694498815 192.0.2.7 40000 typ srflx".into(),
        sdp_mid: None,
        sdp_m_line_index: Some(0),
        username_fragment: None,
    };
    device
        .send(&ClientMessage::Candidate {
            call_id: "c-7f3a9e2b".into(),
            candidate: Some(from_device.clone()),
        })
        .await;
    assert_eq!(
        caller.recv().await,
        ServerMessage::Candidate {
            call_id: "c-7f3a9e2b".into(),
            candidate: Some(from_device),
        }
    );
    end_of_candidates(&mut device, &mut caller, "c-7f3a9e2b").await;
    end_of_candidates(&mut caller, &mut device, "c-7f3a9e2b").await;

    device
        .send(&ClientMessage::Hangup {
            call_id: "c-7f3a9e2b".into(),
            reason: "device going to sleep".into(),
        })
        .await;
    assert_eq!(
        caller.recv().await,
        ServerMessage::Hangup {
            call_id: "c-7f3a9e2b".into(),
            reason: "device going to sleep".into(),
        }
    );
    device.expect_no_message(QUIET_MS).await;

    // The call is gone: late messages about it are refused, not relayed.
    caller
        .send(&ClientMessage::Candidate {
            call_id: "c-7f3a9e2b".into(),
            candidate: None,
        })
        .await;
    let err = caller.expect_error(ErrorCode::UnknownCall).await;
    assert!(matches!(err, ServerMessage::Error { call_id: Some(id), .. } if id == "c-7f3a9e2b"));

    // Hang-up from the caller's side, while it still rings.
    caller.send(&call("c-second", "front-door", "offer")).await;
    assert!(matches!(
        device.recv().await,
        ServerMessage::IncomingCall { call_id, .. } if call_id == "c-second"
    ));
    caller
        .send(&ClientMessage::Hangup {
            call_id: "c-second".into(),
            reason: "caller hung up".into(),
        })
        .await;
    assert_eq!(
        device.recv().await,
        ServerMessage::Hangup {
            call_id: "c-second".into(),
            reason: "caller hung up".into(),
        }
    );
    caller.expect_no_message(QUIET_MS).await;
    server.stop().await;
}

async fn end_of_candidates(from: &mut Client, to: &mut Client, call_id: &str) {
    from.send(&ClientMessage::Candidate {
        call_id: call_id.into(),
        candidate: None,
    })
    .await;
    assert_eq!(
        to.recv().await,
        ServerMessage::Candidate {
            call_id: call_id.into(),
            candidate: None,
        }
    );
}

#[tokio::test]
async fn a_decline_reason_arrives_verbatim() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let (mut device, mut caller) = ringing_call(server.addr, "front-door", "c-decline").await;
    device
        .send(&ClientMessage::Decline {
            call_id: "c-decline".into(),
            reason: "Pas maintenant ☕".into(),
        })
        .await;
    assert_eq!(
        caller.recv().await,
        ServerMessage::Declined {
            call_id: "c-decline".into(),
            reason: "Pas maintenant ☕".into(),
        }
    );
    // A declined call is over: accepting it afterwards must not reach the caller.
    device
        .send(&ClientMessage::Accept {
            call_id: "c-decline".into(),
            sdp: "late".into(),
        })
        .await;
    device.expect_error(ErrorCode::UnknownCall).await;
    caller.expect_no_message(QUIET_MS).await;
    server.stop().await;
}

/// The bell's way round: a registered device calls a page; the page sees which device
/// calls (vouched for by the phonebook, not by the caller), and its early answer in
/// `ringing` reaches the device.
#[tokio::test]
async fn a_device_rings_a_page_that_answers_early() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut page = Client::greeted(server.addr).await;
    page.register("ada", json!({"kind": "browser"})).await;
    let mut door = Client::greeted(server.addr).await;
    door.register("front-door", json!({"kind": "camera"})).await;
    door.send(&ClientMessage::Call {
        call_id: "b-1".into(),
        callee: "ada".into(),
        meta: json!({"kind": "bell", "callerName": "front-door", "device": "back-door"}),
        sdp: "v=0\r\n".into(),
    })
    .await;
    match page.recv().await {
        ServerMessage::IncomingCall { meta, .. } => {
            assert_eq!(
                meta["device"], "front-door",
                "the claimed device is replaced"
            );
            assert_eq!(meta["kind"], "bell");
        }
        other => panic!("expected incoming_call, got {other:?}"),
    }
    let answer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n";
    page.send(&ClientMessage::Ringing {
        call_id: "b-1".into(),
        sdp: Some(answer.into()),
    })
    .await;
    assert_eq!(
        door.recv().await,
        ServerMessage::Ringing {
            call_id: "b-1".into(),
            sdp: Some(answer.into())
        }
    );
    // An early answer is an SDP like any other: no larger than the limit.
    page.send(&ClientMessage::Ringing {
        call_id: "b-1".into(),
        sdp: Some("v".repeat(MAX_SDP_BYTES + 1)),
    })
    .await;
    page.expect_error(ErrorCode::TooLarge).await;
    door.expect_no_message(QUIET_MS).await;

    // A caller that holds no name cannot pose as a device.
    let mut stranger = Client::greeted(server.addr).await;
    stranger
        .send(&ClientMessage::Call {
            call_id: "x-1".into(),
            callee: "ada".into(),
            meta: json!({"kind": "bell", "device": "front-door"}),
            sdp: "v=0\r\n".into(),
        })
        .await;
    match page.recv().await {
        ServerMessage::IncomingCall { meta, .. } => assert_eq!(meta.get("device"), None),
        other => panic!("expected incoming_call, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn calling_an_unknown_callee_is_an_error_with_the_call_id() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut caller = Client::greeted(server.addr).await;
    caller.send(&call("c-lost", "back-door", "offer")).await;
    match caller.expect_error(ErrorCode::UnknownCallee).await {
        ServerMessage::Error { call_id, .. } => assert_eq!(call_id.as_deref(), Some("c-lost")),
        _ => unreachable!(),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_disconnect_mid_call_hangs_up_the_other_end() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;

    // The caller vanishes without a close frame while the call rings.
    let (mut device, caller) = ringing_call(server.addr, "front-door", "c-gone").await;
    drop(caller);
    assert_eq!(
        device.recv().await,
        ServerMessage::Hangup {
            call_id: "c-gone".into(),
            reason: "caller disconnected".into(),
        }
    );

    // The callee closes cleanly in the middle of an accepted call.
    let (mut device2, mut caller2) = ringing_call(server.addr, "back-door", "c-left").await;
    device2
        .send(&ClientMessage::Accept {
            call_id: "c-left".into(),
            sdp: "answer".into(),
        })
        .await;
    assert!(matches!(
        caller2.recv().await,
        ServerMessage::Accepted { .. }
    ));
    device2.close().await;
    assert_eq!(
        caller2.recv().await,
        ServerMessage::Hangup {
            call_id: "c-left".into(),
            reason: "callee disconnected".into(),
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_frames_get_bad_message_and_the_connection_stays_usable() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut bystander = Client::greeted(server.addr).await;
    bystander.listen().await;
    let mut device = Client::greeted(server.addr).await;
    device.register("front-door", json!({})).await;
    bystander
        .expect_update("front-door", Presence::Available)
        .await;

    let mut client = Client::greeted(server.addr).await;
    let bad_frames = [
        Message::text("{not json"),
        Message::text(r#"{"type":"dance"}"#),
        Message::text(r#"{"type":"register"}"#),
        Message::text(r#"[1, 2, 3]"#),
        Message::binary(br#"{"type":"listen"}"#.to_vec()),
    ];
    for frame in bad_frames {
        client.send_raw(frame.clone()).await;
        let msg = client.recv().await;
        assert!(
            matches!(
                msg,
                ServerMessage::Error {
                    code: ErrorCode::BadMessage,
                    call_id: None,
                    ..
                }
            ),
            "{frame:?} got {msg:?}"
        );
    }
    // An invalid field inside a well-formed message is a bad_message too.
    client
        .send(&call("not a valid id!", "front-door", "offer"))
        .await;
    client.expect_error(ErrorCode::BadMessage).await;

    assert_eq!(
        client.listen().await,
        vec![callee("front-door", json!({}), Presence::Available)]
    );
    tokio::join!(
        bystander.expect_no_message(QUIET_MS),
        device.expect_no_message(QUIET_MS)
    );
    assert_eq!(bystander.listen().await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn oversized_frames_get_too_large_or_a_close() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut other = Client::greeted(server.addr).await;

    let mut client = Client::greeted(server.addr).await;
    // Valid JSON, so only the size can be the reason for the error.
    let big = serde_json::to_string(&ClientMessage::Register {
        name: "big".into(),
        meta: json!({"pad": "x".repeat(100 * 1024)}),
    })
    .unwrap();
    client.send_raw(Message::text(big)).await;
    client.expect_error(ErrorCode::TooLarge).await;
    assert_eq!(client.listen().await, Vec::new());

    let huge = "x".repeat(2 * 1024 * 1024);
    // The server may drop the socket while the frame is still being written, so the
    // send itself is allowed to fail.
    let _ = timeout(WAIT, client.ws.send(Message::text(huge))).await;
    client.expect_closed().await;

    let _fresh = Client::greeted(server.addr).await;
    assert_eq!(other.listen().await, Vec::new());
    server.stop().await;
}

/// One GET on a connection of its own.
async fn http_get(addr: SocketAddr, path: &str) -> common::HttpResponse {
    common::http("GET", &format!("http://{addr}{path}"), None, b"", WAIT)
        .await
        .unwrap_or_else(|err| panic!("GET {path}: {err:#}"))
}

#[tokio::test]
async fn http_serves_the_callee_list_and_the_page() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut device = Client::greeted(server.addr).await;
    device
        .register("front-door", json!({"kind": "camera", "fps": 30}))
        .await;
    device.register("back yard", json!({})).await;
    let (_device2, _caller) = ringing_call(server.addr, "garage", "c-http").await;

    let list = http_get(server.addr, "/api/callees").await;
    assert_eq!(list.status, 200);
    assert!(
        list.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "content-type {:?}",
        list.header("content-type")
    );
    let callees: Vec<Callee> = serde_json::from_slice(&list.body).expect("a JSON callee list");
    assert_eq!(
        callees,
        vec![
            callee("back yard", json!({}), Presence::Available),
            callee(
                "front-door",
                json!({"kind": "camera", "fps": 30}),
                Presence::Available
            ),
            callee("garage", json!({"kind": "camera"}), Presence::Ringing),
        ]
    );

    let page = http_get(server.addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "content-type {:?}",
        page.header("content-type")
    );
    let html = String::from_utf8(page.body).expect("UTF-8 page");
    assert!(html.to_ascii_lowercase().starts_with("<!doctype html>"));
    assert!(html.contains("<title>peercam</title>"));

    assert_eq!(http_get(server.addr, "/no-such-file.txt").await.status, 404);
    server.stop().await;
}

// Regressions: a name given up and taken again, and open sockets at shutdown.

#[tokio::test]
async fn a_re_registered_name_starts_available() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut watcher = Client::greeted(server.addr).await;
    watcher.listen().await;
    let (mut old_owner, _caller) = ringing_call(server.addr, "cam", "c-old").await;
    watcher.expect_update("cam", Presence::Available).await;
    watcher.expect_update("cam", Presence::Ringing).await;
    // The old owner lets the name go but keeps its ringing call, as the protocol allows.
    old_owner
        .send(&ClientMessage::Unregister { name: "cam".into() })
        .await;
    assert!(matches!(
        old_owner.recv().await,
        ServerMessage::Unregistered { .. }
    ));
    assert!(matches!(
        watcher.recv().await,
        ServerMessage::CalleeRemoved { .. }
    ));

    let mut new_owner = Client::greeted(server.addr).await;
    new_owner.register("cam", json!({})).await;
    watcher.expect_update("cam", Presence::Available).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_open_websockets() {
    let server = Server::start(PhonebookServer::new(Vec::new())).await;
    let mut client = Client::greeted(server.addr).await;
    server.stop().await;
    client.expect_closed().await;
}

#[tokio::test]
async fn a_flooding_client_is_slowed_and_then_cut_off_while_others_are_served() {
    let limits = Limits {
        messages_per_second: 10,
        message_burst: 20,
        ..Limits::default()
    };
    let server = Server::start(PhonebookServer::new(Vec::new()).with_limits(limits)).await;
    let mut flood = Client::greeted(server.addr).await;
    let mut calm = Client::greeted(server.addr).await;
    let listen = serde_json::to_string(&ClientMessage::Listen).unwrap();
    // The burst is served; what comes beyond it is dropped with one rate_limited error.
    for _ in 0..40 {
        flood.send_raw(Message::text(listen.clone())).await;
    }
    let mut answered = 0;
    let mut limited = 0;
    while let Ok(msg) = timeout(Duration::from_millis(QUIET_MS), flood.recv()).await {
        match msg {
            ServerMessage::Callees { .. } => answered += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    // hello took one from the burst.
    assert!((19..=23).contains(&answered), "{answered} of 40 served");
    // One rate_limited error per burst's worth of dropped messages (21 dropped here).
    assert!((1..=2).contains(&limited), "{limited} rate_limited errors");
    // Everyone else is served as usual meanwhile.
    assert_eq!(calm.listen().await, Vec::new());
    // Ten bursts beyond the limit and the flooding connection is closed.
    for _ in 0..300 {
        if flood.ws.send(Message::text(listen.clone())).await.is_err() {
            break;
        }
    }
    let closed = timeout(WAIT, async {
        loop {
            match flood.ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the flooding client is disconnected");
    assert_eq!(calm.listen().await, Vec::new());
    server.stop().await;
}

#[tokio::test]
async fn connections_per_address_are_limited_with_429() {
    let limits = Limits {
        connections_per_address: 2,
        ..Limits::default()
    };
    let server = Server::start(PhonebookServer::new(Vec::new()).with_limits(limits)).await;
    let first = Client::greeted(server.addr).await;
    let _second = Client::greeted(server.addr).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected HTTP 429, got {:?}", other.map(|_| "a connection")),
    }
    // A closed connection gives its place back.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_camera_gets_ten_times_the_allowance_for_the_calls_it_answers_only() {
    let limits = Limits {
        messages_per_second: 10,
        message_burst: 20,
        ..Limits::default()
    };
    let server = Server::start(PhonebookServer::new(Vec::new()).with_limits(limits)).await;
    let mut camera = Client::greeted(server.addr).await;
    camera.register("cam", json!({})).await;
    let mut callers = Vec::new();
    for i in 0..3 {
        let mut caller = Client::greeted(server.addr).await;
        caller.send(&call(&format!("c{i}"), "cam", "v=0\r\n")).await;
        assert!(matches!(
            camera.recv().await,
            ServerMessage::IncomingCall { .. }
        ));
        callers.push(caller);
    }
    // 150 messages at once on the calls it answers: far over its own burst of 20.
    for n in 0..150 {
        let candidate = ClientMessage::Candidate {
            call_id: format!("c{}", n % 3),
            candidate: Some(IceCandidate {
                candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {} typ host", 40000 + n),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        };
        camera
            .send_raw(Message::text(serde_json::to_string(&candidate).unwrap()))
            .await;
    }
    for caller in &mut callers {
        for _ in 0..50 {
            assert!(matches!(
                caller.recv().await,
                ServerMessage::Candidate { .. }
            ));
        }
    }
    camera.expect_no_message(QUIET_MS).await;
    // Holding a name is no licence to flood with anything else: its own burst was spent
    // on those candidates, so the listens are dropped (with an error).
    let listen = serde_json::to_string(&ClientMessage::Listen).unwrap();
    for _ in 0..30 {
        camera.send_raw(Message::text(listen.clone())).await;
    }
    let mut answered = 0;
    let mut limited = 0;
    while let Ok(msg) = timeout(Duration::from_millis(QUIET_MS), camera.recv()).await {
        match msg {
            ServerMessage::Callees { .. } => answered += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(answered < 15, "{answered} of 30 listens served");
    assert!(limited >= 1);
    server.stop().await;
}
