//! The bell, end to end without a browser: the daemon binary rings "pages" that are
//! webrtc-rs peers on raw phonebook connections and answer the way web/phonebook.js does
//! (the answer early, in `ringing`, then `accept` with it again). What is checked here is
//! what the real parts carry: the device's offer and early media, first answer wins over
//! the phonebook, the hang-up reasons, the door over the data channel, the status, and
//! bad input from the pages. The policy itself is unit-tested in src/device/bell_tests.rs;
//! tests/browser/bell.test.mjs runs the same with Chromium pages.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Daemon;
use common::ws::WsClient;
use peercam::rtc::{Caller, CallerEvent};
use peercam::signalling::protocol::{
    ClientMessage, ErrorCode, IceCandidate, PROTOCOL_VERSION, ServerMessage,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

const WAIT: Duration = Duration::from_secs(10);

/// One call as a page sees it.
struct PageCall {
    pc: Arc<RTCPeerConnection>,
    meta: Value,
    answer: String,
    video_packets: Arc<AtomicU64>,
    audio_packets: Arc<AtomicU64>,
    channel: Arc<Mutex<Option<Arc<RTCDataChannel>>>>,
    events: Arc<Mutex<Vec<Value>>>,
    /// Why it ended, once it has.
    ended: Option<String>,
}

/// A person's page online under `name`: it previews every call at once, as the real page
/// does for a bell call.
struct Page {
    ws: WsClient,
    local_tx: mpsc::UnboundedSender<(String, Option<IceCandidate>)>,
    local: mpsc::UnboundedReceiver<(String, Option<IceCandidate>)>,
    calls: BTreeMap<String, PageCall>,
    errors: Vec<(ErrorCode, Option<String>)>,
}

impl Page {
    async fn online(phonebook: SocketAddr, name: &str) -> Page {
        let mut ws = WsClient::connect(phonebook).await;
        ws.send(&ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: Some("tests/bell.rs".into()),
            token: None,
        })
        .await;
        assert!(matches!(ws.recv().await, ServerMessage::Welcome { .. }));
        ws.send(&ClientMessage::Register {
            name: name.into(),
            meta: json!({"kind": "browser"}),
        })
        .await;
        assert!(matches!(ws.recv().await, ServerMessage::Registered { .. }));
        let (local_tx, local) = mpsc::unbounded_channel();
        Page {
            ws,
            local_tx,
            local,
            calls: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// Handles what arrives until `done` holds, failing after [`WAIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&Page) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
            self.pump(Duration::from_millis(20)).await;
        }
    }

    /// Handles what arrives for `quiet`.
    async fn pump(&mut self, quiet: Duration) {
        let end = tokio::time::Instant::now() + quiet;
        loop {
            tokio::select! {
                msg = self.ws.next_within(quiet) => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => return,
                },
                Some((call_id, candidate)) = self.local.recv() => {
                    self.ws.send(&ClientMessage::Candidate { call_id, candidate }).await;
                }
                _ = tokio::time::sleep_until(end) => return,
            }
        }
    }

    async fn handle(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::IncomingCall {
                call_id, meta, sdp, ..
            } => self.preview(call_id, meta, sdp).await,
            ServerMessage::Candidate {
                call_id,
                candidate: Some(c),
            } => {
                if let Some(call) = self.calls.get(&call_id) {
                    let init = RTCIceCandidateInit {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid,
                        sdp_mline_index: c.sdp_m_line_index,
                        username_fragment: c.username_fragment,
                    };
                    call.pc.add_ice_candidate(init).await.expect("candidate");
                }
            }
            ServerMessage::Hangup { call_id, reason } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.ended = Some(reason);
                    let _ = call.pc.close().await;
                }
            }
            ServerMessage::Error { code, call_id, .. } => self.errors.push((code, call_id)),
            _ => {}
        }
    }

    /// Answers at once and sends the answer in `ringing`: the door shows while it rings.
    async fn preview(&mut self, call_id: String, meta: Value, offer: String) {
        let mut media = MediaEngine::default();
        media.register_default_codecs().unwrap();
        let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
        let mut setting = webrtc::api::setting_engine::SettingEngine::default();
        setting.set_include_loopback_candidate(true);
        setting.set_interface_filter(Box::new(|name: &str| name == "lo"));
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .build();
        let pc = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .unwrap(),
        );
        let (video_packets, audio_packets) = (Arc::default(), Arc::default());
        let (video, audio): (Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::clone(&video_packets), Arc::clone(&audio_packets));
        pc.on_track(Box::new(move |track, _, _| {
            let count = match track.kind() {
                RTPCodecType::Video => video.clone(),
                _ => audio.clone(),
            };
            tokio::spawn(async move {
                while track.read_rtp().await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
            Box::pin(async {})
        }));
        let channel: Arc<Mutex<Option<Arc<RTCDataChannel>>>> = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (slot, log) = (channel.clone(), events.clone());
        pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
            let log = log.clone();
            dc.on_message(Box::new(move |msg: DataChannelMessage| {
                if let Ok(event) = serde_json::from_slice(&msg.data) {
                    log.lock().unwrap().push(event);
                }
                Box::pin(async {})
            }));
            *slot.lock().unwrap() = Some(dc);
            Box::pin(async {})
        }));
        let (tx, id) = (self.local_tx.clone(), call_id.clone());
        pc.on_ice_candidate(Box::new(move |c: Option<RTCIceCandidate>| {
            let candidate = c.and_then(|c| c.to_json().ok()).map(|c| IceCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_m_line_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
            });
            let _ = tx.send((id.clone(), candidate));
            Box::pin(async {})
        }));
        pc.set_remote_description(RTCSessionDescription::offer(offer).unwrap())
            .await
            .unwrap();
        let answer = pc.create_answer(None).await.unwrap();
        pc.set_local_description(answer).await.unwrap();
        let answer = pc.local_description().await.unwrap().sdp;
        self.ws
            .send(&ClientMessage::Ringing {
                call_id: call_id.clone(),
                sdp: Some(answer.clone()),
            })
            .await;
        self.calls.insert(
            call_id,
            PageCall {
                pc,
                meta,
                answer,
                video_packets,
                audio_packets,
                channel,
                events,
                ended: None,
            },
        );
    }

    /// The one call this page has been rung with.
    fn call(&self) -> (&String, &PageCall) {
        assert_eq!(self.calls.len(), 1, "one call rang here");
        self.calls.iter().next().unwrap()
    }

    async fn accept(&mut self) {
        let (id, call) = self.call();
        let msg = ClientMessage::Accept {
            call_id: id.clone(),
            sdp: call.answer.clone(),
        };
        self.ws.send(&msg).await;
    }

    async fn decline(&mut self, reason: &str) {
        let id = self.call().0.clone();
        self.ws
            .send(&ClientMessage::Decline {
                call_id: id,
                reason: reason.into(),
            })
            .await;
    }

    async fn send_text(&self, text: &str) {
        let channel = self.call().1.channel.lock().unwrap().clone();
        channel
            .expect("the device's data channel")
            .send_text(text.to_owned())
            .await
            .expect("sent on the data channel");
    }

    fn video(&self) -> u64 {
        self.call().1.video_packets.load(Ordering::Relaxed)
    }

    fn audio(&self) -> u64 {
        self.call().1.audio_packets.load(Ordering::Relaxed)
    }

    fn ended(&self) -> Option<&str> {
        self.call().1.ended.as_deref()
    }

    fn heard(&self, pick: impl Fn(&Value) -> bool) -> bool {
        self.call().1.events.lock().unwrap().iter().any(pick)
    }
}

fn phonebook_of(daemon: &Daemon) -> SocketAddr {
    daemon
        .ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("the daemon's phonebook address")
}

fn press(daemon: &Daemon, line: &str) -> Result<String, String> {
    tokio::task::block_in_place(|| daemon.control(line))
}

fn status(daemon: &Daemon) -> Value {
    tokio::task::block_in_place(|| daemon.status())
}

fn wait_status(daemon: &Daemon, ok: impl Fn(&Value) -> bool) -> Value {
    tokio::task::block_in_place(|| daemon.wait_until(WAIT, ok))
}

/// Presses the bell until it rings whom `reply` says. The device hears of pages that came
/// online through the callee list, a moment after they did: a press before it has heard
/// of them all rings too few (it is hung up, and the pages forget that call) or nobody.
async fn ring(daemon: &Daemon, reply: &str, pages: &mut [&mut Page]) {
    let start = Instant::now();
    loop {
        let got = press(daemon, "bell");
        if got.as_deref() == Ok(reply) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "the press said {got:?}, not {reply:?}"
        );
        if got.as_deref().is_ok_and(|r| r.starts_with("ringing")) {
            assert!(press(daemon, "hangup").is_ok());
            wait_status(daemon, |s| s["calls"] == json!([]));
            for page in pages.iter_mut() {
                page.pump(Duration::from_millis(100)).await;
                page.calls.clear();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pumps every page for a moment, so none holds back what the others wait for.
async fn pump_all(pages: &mut [&mut Page]) {
    for page in pages.iter_mut() {
        page.pump(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bell_rings_the_online_household_with_the_door_showing_and_the_first_answer_wins() {
    let daemon = Daemon::start(
        "front-door",
        &[
            "--set",
            "bell.ring=[\"ray\", \"ada\", \"zed\"]",
            "--set",
            "audio.microphone=\"test\"",
            "--set",
            "audio.speaker=\"fake\"",
            "--set",
            "gpio.door={ line = 6 }",
        ],
    );
    let phonebook = phonebook_of(&daemon);
    let mut ray = Page::online(phonebook, "ray").await;
    let mut ada = Page::online(phonebook, "ada").await;
    let mut bob = Page::online(phonebook, "bob").await;
    // zed never comes: warned about once the device has the callee list.
    tokio::task::block_in_place(|| {
        let start = Instant::now();
        while !daemon.stderr().contains("does not list now") {
            assert!(start.elapsed() < WAIT, "no warning about zed");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let warning = daemon
        .stderr()
        .lines()
        .find(|l| l.contains("does not list now"))
        .map(str::to_owned)
        .unwrap();
    assert!(warning.contains("zed"), "{warning}");

    ring(
        &daemon,
        "ringing ray, ada (not zed offline)",
        &mut [&mut ray, &mut ada],
    )
    .await;
    let rang = |p: &Page| p.calls.len() == 1;
    ray.until("ray's call", rang).await;
    ada.until("ada's call", rang).await;
    let (_, call) = ada.call();
    assert_eq!(call.meta["kind"], "bell");
    assert_eq!(
        call.meta["device"], "front-door",
        "vouched for by the phonebook"
    );
    assert_eq!(call.meta["callerName"], "front-door");
    assert_eq!(call.meta["door"], true);
    bob.pump(Duration::from_millis(300)).await;
    assert!(bob.calls.is_empty(), "bob is not in bell.ring");

    // The door shows on both ringing pages before anyone answers, and no sound goes
    // either way.
    let start = Instant::now();
    while ray.video() < 30 || ada.video() < 30 {
        assert!(start.elapsed() < WAIT, "the door's picture while it rings");
        pump_all(&mut [&mut ray, &mut ada]).await;
    }
    assert_eq!(
        (ray.audio(), ada.audio()),
        (0, 0),
        "no sound before an answer"
    );
    let s = status(&daemon);
    assert_eq!(s["bell"]["state"], "ringing", "{s}");
    assert_eq!(s["bell"]["ringing"], json!(["ray", "ada"]));
    assert_eq!(s["viewers"], 0, "ringing pages are not viewers: {s}");
    let roles: Vec<&Value> = s["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["role"])
        .collect();
    assert_eq!(roles, [&json!("caller"), &json!("caller")]);
    assert!(ada.heard(|e| e["event"] == "bell" && e["state"] == "ringing"));
    assert_eq!(
        press(&daemon, "bell"),
        Err("the bell is already ringing".into())
    );

    // ada answers: her call goes on with sound, ray's stops at once.
    let answered = Instant::now();
    ada.accept().await;
    ray.until("ray told who answered", |p| p.ended().is_some())
        .await;
    assert_eq!(ray.ended(), Some("answered by ada"));
    assert!(
        answered.elapsed() < Duration::from_secs(1),
        "ray stopped ringing after {:?}",
        answered.elapsed()
    );
    ada.until("sound from the door", |p| p.audio() > 20).await;
    ada.until("accepted on the data channel", |p| {
        p.heard(|e| e["event"] == "accepted")
    })
    .await;
    let s = wait_status(&daemon, |s| s["viewers"] == 1);
    assert_eq!(s["bell"]["state"], "answered");
    assert_eq!(s["bell"]["by"], "ada");
    assert_eq!(s["calls"][0]["callee"], "ada");
    assert_eq!(s["indicators"]["on_air_led"], true);
    // ada's page says accept again: nothing changes.
    ada.accept().await;
    ada.pump(Duration::from_millis(200)).await;
    assert_eq!(ada.ended(), None);
    // ray's page answers late: its call is gone.
    ray.accept().await;
    ray.until("unknown_call for the late answer", |p| {
        p.errors
            .iter()
            .any(|(code, _)| *code == ErrorCode::UnknownCall)
    })
    .await;
    assert_eq!(
        press(&daemon, "bell"),
        Err("ada is talking with the door: nobody new is rung".into())
    );

    // Only ada may open the door.
    let mut viewer = Caller::call(
        &common::caller_engine(),
        &daemon.ws,
        "front-door",
        json!({"callerName": "eve"}),
    )
    .await
    .unwrap();
    viewer
        .wait_for(WAIT, |e| matches!(e, CallerEvent::Ringing).then_some(()))
        .await
        .unwrap();
    assert!(press(&daemon, "accept").is_ok());
    viewer
        .wait_for(WAIT, |e| matches!(e, CallerEvent::DataOpen).then_some(()))
        .await
        .unwrap();
    viewer
        .send_text(r#"{"request":"open_door"}"#)
        .await
        .unwrap();
    let refusal = viewer
        .wait_for(WAIT, |e| match e {
            CallerEvent::Data(text) => serde_json::from_str::<Value>(text)
                .ok()
                .filter(|v| v["event"] == "door"),
            _ => None,
        })
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    assert_eq!(refusal["open"], false, "{refusal}");
    assert_eq!(status(&daemon)["indicators"]["door"], false);
    ada.send_text(r#"{"request":"open_door"}"#).await;
    wait_status(&daemon, |s| s["indicators"]["door"] == true);
    ada.until("the door event", |p| {
        p.heard(|e| e["event"] == "door" && e["open"] == true && e["by"] == "ada")
    })
    .await;
    assert!(daemon.stderr().contains("the door was opened"));
    assert!(daemon.stderr().contains("door output (simulated) on=true"));
    // Driven for door_open_secs (3 s), then off.
    let s = tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(5), |s| s["indicators"]["door"] == false)
    });
    assert_eq!(s["indicators"]["door"], false);
    viewer.hang_up("bye").await;

    // ada hangs up: the next press rings again.
    let id = ada.call().0.clone();
    ada.ws
        .send(&ClientMessage::Hangup {
            call_id: id,
            reason: "callee hung up".into(),
        })
        .await;
    wait_status(&daemon, |s| s["viewers"] == 0 && s["calls"] == json!([]));
    assert!(
        press(&daemon, "bell")
            .unwrap()
            .starts_with("ringing ray, ada")
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_and_the_ring_timeout_miss_the_press_and_nobody_online_misses_it_at_once() {
    let daemon = Daemon::start(
        "porch",
        &[
            "--set",
            "bell.ring=[\"ray\", \"ada\"]",
            "--set",
            "bell.ring_timeout_secs=2",
        ],
    );
    assert_eq!(
        press(&daemon, "bell"),
        Ok("nobody to ring (ray offline, ada offline): missed".into())
    );
    assert_eq!(status(&daemon)["bell"]["state"], "missed");

    let phonebook = phonebook_of(&daemon);
    let mut ray = Page::online(phonebook, "ray").await;
    let mut ada = Page::online(phonebook, "ada").await;
    ring(&daemon, "ringing ray, ada", &mut [&mut ray, &mut ada]).await;
    let rang = |p: &Page| p.calls.len() == 1;
    ray.until("ray's call", rang).await;
    ada.until("ada's call", rang).await;
    ada.decline("not home").await;
    // One decline does not stop the others; the timeout ends ray's with "missed".
    ray.until("the ring timeout", |p| p.ended().is_some()).await;
    assert_eq!(ray.ended(), Some("missed"));
    let s = wait_status(&daemon, |s| s["bell"]["state"] == "missed");
    assert_eq!(s["bell"]["declined"][0]["name"], "ada");
    assert_eq!(s["bell"]["declined"][0]["reason"], "not home");
    // The missed press shows on the ring LED for a while.
    assert_eq!(s["calls"], json!([]));
    // A decline of a call that is over gets unknown_call, and nothing else happens.
    ada.decline("late").await;
    ada.until("unknown_call", |p| {
        p.errors
            .iter()
            .any(|(code, _)| *code == ErrorCode::UnknownCall)
    })
    .await;

    // Everyone declines: missed at once, without waiting for the timeout.
    ray.calls.clear();
    ada.calls.clear();
    assert_eq!(press(&daemon, "bell"), Ok("ringing ray, ada".into()));
    ray.until("ray's call", rang).await;
    ada.until("ada's call", rang).await;
    ray.decline("busy").await;
    ada.decline("busy").await;
    let s = wait_status(&daemon, |s| {
        s["bell"]["state"] == "missed" && s["calls"] == json!([])
    });
    assert_eq!(s["bell"]["declined"].as_array().map(Vec::len), Some(2));
    daemon.stop();
}
