//! The phonebook against clients that do not play fair, over real sockets on 127.0.0.1:
//! floods of candidates and registrations, receivers that stop reading, binary frames,
//! idle and half-sent HTTP, made-up tokens, look-alike names and hostile caller names.
//! Each test is bounded to a few seconds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use peercam::signalling::client::{self, ClientEvent, Registration};
use peercam::signalling::protocol::{
    Callee, ClientMessage, ErrorCode, IceCandidate, PROTOCOL_VERSION, Secret, ServerMessage,
};
use peercam::signalling::server::{Limits, PhonebookServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

#[path = "common/ws.rs"]
mod ws;

use ws::{TestPhonebook, WAIT, WsClient};

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// A receive buffer small enough that a client which stops reading backs the server
/// up after a few KiB instead of the megabytes loopback allows by default.
const SMALL_RECEIVE_BUFFER: u32 = 4096;

/// The phonebook under attack, with the limits of the test at hand.
struct Server(TestPhonebook);

impl std::ops::Deref for Server {
    type Target = TestPhonebook;
    fn deref(&self) -> &TestPhonebook {
        &self.0
    }
}

impl Server {
    async fn start(limits: Limits) -> Self {
        Server(TestPhonebook::start(PhonebookServer::new(Vec::new()).with_limits(limits)).await)
    }

    async fn callees(&self) -> Vec<Callee> {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let response = http_exchange(
            &mut stream,
            "GET /api/callees HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body = response.split("\r\n\r\n").nth(1).expect("a body");
        serde_json::from_str(body).expect("the callee list")
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

/// Permissive rates, so that what is tested is the limit at hand and not the rate.
fn unthrottled() -> Limits {
    Limits {
        messages_per_second: 100_000,
        message_burst: 100_000,
        ..Limits::default()
    }
}

/// A client of the abuse tests: the shared raw client and the steps these tests repeat.
struct Peer(WsClient);

impl std::ops::Deref for Peer {
    type Target = WsClient;
    fn deref(&self) -> &WsClient {
        &self.0
    }
}

impl std::ops::DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut WsClient {
        &mut self.0
    }
}

impl Peer {
    async fn connect(addr: SocketAddr) -> Self {
        Peer(WsClient::connect(addr).await)
    }

    /// Connected with a small receive buffer, so that not reading soon backs up.
    async fn connect_small(addr: SocketAddr) -> Self {
        Peer(WsClient::connect_with_receive_buffer(addr, SMALL_RECEIVE_BUFFER).await)
    }

    async fn greet(mut self) -> Self {
        self.send(&hello(None)).await;
        assert!(matches!(self.recv().await, ServerMessage::Welcome { .. }));
        self
    }

    async fn greeted(addr: SocketAddr) -> Self {
        Self::connect(addr).await.greet().await
    }

    /// Everything that arrives until the connection has been quiet for [`QUIET`].
    async fn drain(&mut self) -> Vec<ServerMessage> {
        let mut got = Vec::new();
        while let Some(msg) = self.next_within(QUIET).await {
            got.push(msg);
        }
        got
    }

    async fn register(&mut self, name: &str) {
        self.send(&register(name, json!({"kind": "camera"}))).await;
        assert_eq!(
            self.recv().await,
            ServerMessage::Registered { name: name.into() }
        );
    }
}

fn hello(token: Option<&str>) -> ClientMessage {
    ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        agent: Some("abuse test".into()),
        token: token.map(|t| Secret(t.into())),
    }
}

fn register(name: &str, meta: Value) -> ClientMessage {
    ClientMessage::Register {
        name: name.into(),
        meta,
    }
}

fn call(call_id: &str, callee: &str) -> ClientMessage {
    ClientMessage::Call {
        call_id: call_id.into(),
        callee: callee.into(),
        meta: json!({"callerName": "Ray"}),
        sdp: "v=0\r\n".into(),
    }
}

/// A candidate line near the 1 KiB the phonebook relays, so that few fit in a socket.
fn candidate(call_id: &str, n: usize) -> ClientMessage {
    ClientMessage::Candidate {
        call_id: call_id.into(),
        candidate: Some(IceCandidate {
            candidate: format!(
                "candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host generation 0 network-cost 999 {}",
                40000 + n,
                "x".repeat(900)
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("a1b2".into()),
        }),
    }
}

fn count(msgs: &[ServerMessage], want: impl Fn(&ServerMessage) -> bool) -> usize {
    msgs.iter().filter(|m| want(m)).count()
}

fn is_error(code: ErrorCode) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::Error { code: c, .. } if *c == code)
}

fn is_candidate(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Candidate { .. })
}

/// The camera still holds its name and its connection: a new caller's call rings it,
/// its answer arrives, and everything queued before comes first.
async fn camera_still_answers(addr: SocketAddr, camera: &mut Peer) -> Vec<ServerMessage> {
    let mut caller = Peer::greeted(addr).await;
    caller.send(&call("legit", "cam")).await;
    let mut before = Vec::new();
    loop {
        match camera.recv().await {
            ServerMessage::IncomingCall { call_id, .. } if call_id == "legit" => break,
            other => before.push(other),
        }
    }
    camera
        .send(&ClientMessage::Accept {
            call_id: "legit".into(),
            sdp: "v=0\r\n".into(),
        })
        .await;
    loop {
        match caller.recv().await {
            ServerMessage::Accepted { call_id, .. } if call_id == "legit" => break,
            ServerMessage::CalleeUpdate { .. } => {}
            other => panic!("the caller got {other:?} before its answer"),
        }
    }
    before
}

#[tokio::test]
async fn four_hundred_candidates_in_one_write_are_refused_to_their_sender() {
    let server = Server::start(Limits::default()).await;
    let mut camera = Peer::connect_small(server.addr).await.greet().await;
    camera.register("cam").await;
    let mut page = Peer::greeted(server.addr).await;
    page.send(&ClientMessage::Listen).await;
    assert!(matches!(page.recv().await, ServerMessage::Callees { callees } if callees.len() == 1));

    // Holding a name of its own used to buy the attacker a ten times larger allowance.
    let mut attacker = Peer::greeted(server.addr).await;
    attacker.register("mallory").await;
    attacker.send(&call("a1", "cam")).await;
    attacker
        .send_all((0..400).map(|n| candidate("a1", n)))
        .await;
    let refused = attacker.drain().await;
    let relayed = camera_still_answers(server.addr, &mut camera).await;

    let candidates = count(&relayed, is_candidate);
    println!(
        "400 candidates sent: {candidates} relayed, {} rate_limited errors to the sender",
        count(&refused, is_error(ErrorCode::RateLimited))
    );
    // Its own burst of 60, less hello, register and call.
    assert!(candidates <= 60, "{candidates} relayed");
    assert!(count(&refused, is_error(ErrorCode::RateLimited)) >= 1);
    // The page saw the camera ring and get busy, never leave.
    let seen = page.drain().await;
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, ServerMessage::CalleeRemoved { name } if name == "cam")),
        "{seen:?}"
    );
    assert!(server.callees().await.iter().any(|c| c.name == "cam"));
    server.stop().await;
}

#[tokio::test]
async fn candidates_past_the_limit_of_a_call_get_too_many_candidates() {
    let server = Server::start(unthrottled()).await;
    let mut camera = Peer::connect_small(server.addr).await.greet().await;
    camera.register("cam").await;
    let mut attacker = Peer::greeted(server.addr).await;
    attacker.send(&call("a1", "cam")).await;
    attacker
        .send_all((0..400).map(|n| candidate("a1", n)))
        .await;
    let refused = attacker.drain().await;
    let relayed = camera_still_answers(server.addr, &mut camera).await;
    assert_eq!(count(&relayed, is_candidate), 100);
    assert_eq!(count(&refused, is_error(ErrorCode::TooManyCandidates)), 300);
    assert!(refused.iter().all(|m| matches!(
        m,
        ServerMessage::Error { call_id: Some(id), .. } if id == "a1"
    )));
    server.stop().await;
}

/// Names each backing-up connection registers, inside the documented burst of 60.
const FLOOD_NAMES: usize = 55;

/// Limits that let [`back_up`]'s connections hold their names; the rates are the
/// documented ones.
fn many_names() -> Limits {
    Limits {
        names_per_connection: FLOOD_NAMES,
        ..Limits::default()
    }
}

/// Backs up `listener`'s socket for real: 32 connections register 55 names each with
/// 3.8 KB of meta, about 6.9 MB of callee changes for a listener that does not read,
/// more than loopback's socket buffers take (up to 4 MB with Linux's defaults). The
/// connections are returned so that their names stay.
async fn back_up(addr: SocketAddr, listener: &mut Peer) -> Vec<Peer> {
    listener.send(&ClientMessage::Listen).await;
    assert!(matches!(
        listener.recv().await,
        ServerMessage::Callees { .. }
    ));
    let meta = json!({"kind": "camera", "note": "y".repeat(3800)});
    let mut floods = Vec::new();
    for i in 0..32 {
        let mut flood = Peer::greeted(addr).await;
        flood
            .send_all((0..FLOOD_NAMES).map(|n| register(&format!("f{i}-{n}"), meta.clone())))
            .await;
        floods.push(flood);
    }
    for flood in &mut floods {
        for _ in 0..FLOOD_NAMES {
            let got = flood.recv().await;
            assert!(matches!(got, ServerMessage::Registered { .. }), "{got:?}");
        }
    }
    floods
}

/// Reads what waits for `peer` up to the answer of [`camera_still_answers`], keeping
/// the call messages only.
fn calls_only(msgs: Vec<ServerMessage>) -> Vec<ServerMessage> {
    msgs.into_iter()
        .filter(|m| {
            !matches!(
                m,
                ServerMessage::Callees { .. }
                    | ServerMessage::CalleeUpdate { .. }
                    | ServerMessage::CalleeRemoved { .. }
            )
        })
        .collect()
}

#[tokio::test]
async fn six_connections_within_their_bursts_do_not_cost_the_camera_its_connection() {
    let server = Server::start(many_names()).await;
    let mut camera = Peer::connect_small(server.addr).await.greet().await;
    camera.register("cam").await;
    let _floods = back_up(server.addr, &mut camera).await;
    // With the camera's socket full, each sends hello, a call and 57 candidates, all
    // inside the documented burst of 60: more than 256 messages together.
    let mut senders = Vec::new();
    for i in 0..6 {
        let mut sender = Peer::greeted(server.addr).await;
        let id = format!("s{i}");
        sender
            .send_all(std::iter::once(call(&id, "cam")).chain((0..57).map(|n| candidate(&id, n))))
            .await;
        senders.push(sender);
    }
    let answers = futures_util::future::join_all(senders.iter_mut().map(Peer::drain)).await;
    for got in answers {
        assert!(got.is_empty(), "a sender within its burst got {got:?}");
    }
    let relayed = calls_only(camera_still_answers(server.addr, &mut camera).await);
    assert_eq!(count(&relayed, is_candidate), 6 * 57);
    assert_eq!(
        count(&relayed, |m| matches!(
            m,
            ServerMessage::IncomingCall { .. }
        )),
        6
    );
    server.stop().await;
}

#[tokio::test]
async fn a_receiver_that_stops_reading_is_protected_per_sender() {
    let limits = Limits {
        messages_per_second: 10_000,
        message_burst: 10_000,
        ..many_names()
    };
    let server = Server::start(limits).await;
    let mut camera = Peer::connect_small(server.addr).await.greet().await;
    camera.register("cam").await;
    let _floods = back_up(server.addr, &mut camera).await;
    // Four unanswered calls with large offers and 400 candidates, none of which can be
    // written to the camera now: they wait in the phonebook, charged to their sender.
    let mut attacker = Peer::greeted(server.addr).await;
    let offers = (0..4).map(|i| ClientMessage::Call {
        call_id: format!("a{i}"),
        callee: "cam".into(),
        meta: json!({}),
        sdp: format!("v=0\r\n{}", "a=x\r\n".repeat(6000)),
    });
    let candidates = (0..400).map(|n| candidate(&format!("a{}", n % 4), n));
    attacker.send_all(offers.chain(candidates)).await;
    let refused = attacker.drain().await;
    let unread = refused
        .iter()
        .filter(|m| {
            matches!(m, ServerMessage::Error { code: ErrorCode::RateLimited, message, .. }
                if message.contains("not read"))
        })
        .count();
    println!("{unread} of 400 candidates refused: the camera had not read the rest");
    // At most 128 messages or 256 KiB wait: the four offers and some of the candidates.
    assert!(unread >= 400 - 124, "{unread} refused");
    assert_eq!(
        count(&refused, |m| matches!(m, ServerMessage::Error { .. })),
        unread,
        "{refused:?}"
    );
    // Another caller is not held up by the first one's backlog, and the camera, once it
    // reads, has lost nothing but what was refused.
    let relayed = calls_only(camera_still_answers(server.addr, &mut camera).await);
    assert_eq!(count(&relayed, is_candidate), 400 - unread);
    server.stop().await;
}

#[tokio::test]
async fn a_listener_that_falls_behind_gets_the_whole_list_and_stays() {
    let server = Server::start(many_names()).await;
    let mut page = Peer::connect_small(server.addr).await.greet().await;
    let floods = back_up(server.addr, &mut page).await;
    // The page kept its connection; applying what it gets gives the phonebook's list.
    let names = floods.len() * FLOOD_NAMES;
    let mut view = std::collections::BTreeMap::new();
    let mut got = Vec::new();
    while view.len() < names {
        let msg = page.recv().await;
        match &msg {
            ServerMessage::Callees { callees } => {
                view = callees
                    .iter()
                    .map(|c| (c.name.clone(), c.clone()))
                    .collect();
            }
            ServerMessage::CalleeUpdate { callee } => {
                view.insert(callee.name.clone(), callee.clone());
            }
            other => panic!("the page got {other:?}"),
        }
        got.push(msg);
    }
    println!(
        "{names} registrations reached the page as {} messages",
        got.len()
    );
    assert_eq!(
        view.into_values().collect::<Vec<_>>(),
        server.callees().await
    );
    // What it could not take in time came as one list.
    assert!(got.len() < names, "{} messages", got.len());
    assert!(matches!(got.last(), Some(ServerMessage::Callees { .. })));
    // And it hears of changes as before.
    drop(floods);
    let mut removed = 0;
    while let Some(msg) = page.next_within(Duration::from_secs(2)).await {
        if matches!(msg, ServerMessage::CalleeRemoved { .. }) {
            removed += 1;
        }
        if removed == names {
            break;
        }
        // A list instead of the last removals is as good.
        if matches!(&msg, ServerMessage::Callees { callees } if callees.is_empty()) {
            break;
        }
    }
    assert!(server.callees().await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn names_per_connection_are_limited() {
    let server = Server::start(unthrottled()).await;
    let mut page = Peer::greeted(server.addr).await;
    page.send_all((0..300).map(|n| register(&format!("n{n}"), json!({}))))
        .await;
    let got = page.drain().await;
    assert_eq!(
        count(&got, |m| matches!(m, ServerMessage::Registered { .. })),
        8
    );
    assert_eq!(count(&got, is_error(ErrorCode::TooManyNames)), 292);
    server.stop().await;
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<ClientEvent>) -> ClientEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("an event within 5 s")
        .expect("an event")
}

#[tokio::test]
async fn the_device_notices_a_dropped_connection_within_a_second() {
    let server = Server::start(Limits::default()).await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (_outgoing, outgoing_rx) = mpsc::unbounded_channel();
    let device = tokio::spawn(client::run(
        format!("ws://{}/ws", server.addr),
        Registration {
            name: "cam".into(),
            meta: json!({}),
            token: None,
            tls: None,
            refuse_open: false,
            listen: false,
        },
        events_tx,
        outgoing_rx,
    ));
    assert_eq!(next_event(&mut events).await, ClientEvent::Registered);
    let dropped = Instant::now();
    assert!(server.server.disconnect_callee("CAM"));
    let event = next_event(&mut events).await;
    let noticed = dropped.elapsed();
    println!("the device noticed the dropped connection after {noticed:?}");
    assert!(matches!(event, ClientEvent::Disconnected(_)), "{event:?}");
    assert!(noticed < Duration::from_secs(1), "{noticed:?}");
    // And it is back soon after.
    assert_eq!(next_event(&mut events).await, ClientEvent::Registered);
    assert!(!server.server.disconnect_callee("nobody"));
    device.abort();
    server.stop().await;
}

#[tokio::test]
async fn binary_frames_count_against_the_rate() {
    let limits = Limits {
        messages_per_second: 10,
        message_burst: 20,
        ..Limits::default()
    };
    let server = Server::start(limits).await;
    let mut peer = Peer::greeted(server.addr).await;
    for _ in 0..40 {
        peer.ws.feed(Message::binary(vec![0u8; 16])).await.unwrap();
    }
    peer.ws.flush().await.unwrap();
    let got = peer.drain().await;
    let answered = count(&got, is_error(ErrorCode::BadMessage));
    assert!((19..=23).contains(&answered), "{answered} of 40 answered");
    assert!(count(&got, is_error(ErrorCode::RateLimited)) >= 1);
    // Ten bursts beyond and the connection is cut off, as for text.
    for _ in 0..300 {
        if peer.ws.feed(Message::binary(vec![0u8; 16])).await.is_err() {
            break;
        }
    }
    let _ = peer.ws.flush().await;
    peer.expect_closed().await;
    server.stop().await;
}

/// Writes `request`, then reads until the server closes.
async fn http_exchange(stream: &mut TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// How long until the server closes `stream` (reads EOF or a reset).
async fn closed_after(stream: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
    start.elapsed()
}

#[tokio::test]
async fn idle_and_half_sent_http_connections_are_closed() {
    let limits = Limits {
        header_timeout_secs: 1,
        ..Limits::default()
    };
    let server = Server::start(limits).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 17];
    kept.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n");
    for (what, stream) in [
        ("silent", &mut silent),
        ("half a request", &mut half),
        ("idle after a request", &mut kept),
    ] {
        let after = closed_after(stream, Duration::from_secs(4)).await;
        println!("{what}: closed after {after:?}");
        assert!(after < Duration::from_secs(3), "{what}: {after:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn plain_tcp_connections_are_capped_per_address_and_in_all() {
    let limits = Limits {
        tcp_connections_per_address: 3,
        ..Limits::default()
    };
    let server = Server::start(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // A complete request proves each of the three is being served.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    let after = closed_after(&mut fourth, Duration::from_secs(2)).await;
    println!("the fourth connection from one address was closed after {after:?}");
    // WebSockets count too: a fourth upgrade fails the same way.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .is_err()
    );
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    let mut stream = loop {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            break stream;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = stream.shutdown().await;
    drop(held);

    // The cap on everyone, with the same kind of check.
    let server_all = Server::start(Limits {
        tcp_connections: 2,
        ..Limits::default()
    })
    .await;
    let _a = TcpStream::connect(server_all.addr).await.unwrap();
    let _b = TcpStream::connect(server_all.addr).await.unwrap();
    let mut third = TcpStream::connect(server_all.addr).await.unwrap();
    closed_after(&mut third, Duration::from_secs(2)).await;
    server.stop().await;
    server_all.stop().await;
}

#[tokio::test]
async fn made_up_tokens_are_refused_on_an_open_phonebook() {
    let server = Server::start(Limits::default()).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.send(&hello(Some("not-a-token-anyone-set"))).await;
    assert!(matches!(
        peer.recv().await,
        ServerMessage::Error {
            code: ErrorCode::Unauthorized,
            ..
        }
    ));
    peer.expect_closed().await;

    let whep = |token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let body = "v=0\r\n";
        format!(
            "POST /whep/cam HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let refused = http_exchange(&mut stream, &whep(Some("not-a-token-anyone-set"))).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // Without a token it gets as far as the offer.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let open = http_exchange(&mut stream, &whep(None)).await;
    assert!(open.starts_with("HTTP/1.1 400"), "{open}");
    server.stop().await;
}

#[tokio::test]
async fn a_name_in_another_case_is_the_same_name() {
    let server = Server::start(Limits::default()).await;
    let mut camera = Peer::greeted(server.addr).await;
    camera.register("cam").await;
    let mut other = Peer::greeted(server.addr).await;
    other.send(&register("Cam", json!({}))).await;
    assert!(matches!(
        other.recv().await,
        ServerMessage::Error {
            code: ErrorCode::NameTaken,
            ..
        }
    ));
    other.send(&call("c1", "CAM")).await;
    assert!(matches!(
        camera.recv().await,
        ServerMessage::IncomingCall { callee, .. } if callee == "cam"
    ));
    let names: Vec<String> = server.callees().await.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["cam"]);
    server.stop().await;
}

/// A log writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn peer_text_reaches_the_log_escaped() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime runs on this thread only, the server's tasks included.
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = Server::start(Limits::default()).await;
    let mut camera = Peer::greeted(server.addr).await;
    camera.register("cam").await;
    let mut caller = Peer::connect(server.addr).await;
    caller
        .send(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: Some("evil\r\nINFO forged agent line".into()),
            token: None,
        })
        .await;
    assert!(matches!(caller.recv().await, ServerMessage::Welcome { .. }));
    let hostile = "Ray\nINFO peercam: forged line\x1b[2J\x07\r";
    caller
        .send(&ClientMessage::Call {
            call_id: "c1".into(),
            callee: "cam".into(),
            meta: json!({"callerName": hostile}),
            sdp: "v=0\r\n".into(),
        })
        .await;
    // The camera gets the name as it was sent: only the log escapes it.
    assert!(matches!(
        camera.recv().await,
        ServerMessage::IncomingCall { meta, .. } if meta["callerName"] == hostile
    ));
    server.stop().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains(r"Ray\nINFO peercam: forged line\u{1b}[2J\u{7}\r"),
        "{log}"
    );
    assert!(log.contains(r"evil\r\nINFO forged agent line"), "{log}");
    assert!(!log.contains(['\x1b', '\x07', '\r']), "{log:?}");
    for line in log.lines() {
        assert!(
            !line.starts_with("INFO") && !line.trim_start().starts_with("INFO peercam: forged"),
            "a forged line: {line:?}"
        );
    }
}
