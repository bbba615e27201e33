//! The whole path for real: the daemon binary with the test pattern and its embedded
//! phonebook, a webrtc-rs caller, the control socket as the accept button, and
//! GStreamer's avdec_h264 decoding what arrives.

mod common;

use std::time::Duration;

use common::{Daemon, caller_engine, decode};
use peercam::rtc::{Caller, CallerEvent};
use serde_json::json;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_call_delivers_decodable_720p_video() {
    let daemon = Daemon::start("test-cam", &[]);
    let engine = caller_engine();
    let mut call = Caller::call(
        &engine,
        &daemon.ws,
        "test-cam",
        json!({"callerName": "Ray"}),
    )
    .await
    .expect("call placed");
    call.wait_for(Duration::from_secs(10), |e| {
        matches!(e, CallerEvent::Ringing).then_some(())
    })
    .await
    .expect("it rings");
    let status = daemon.status();
    assert_eq!(status["calls"][0]["caller"], "Ray", "{status}");
    assert_eq!(status["calls"][0]["state"], "RINGING", "{status}");

    let reply = tokio::task::block_in_place(|| daemon.control("accept")).expect("accept");
    assert!(reply.contains("Ray"), "{reply}");
    let track = call
        .track(RTPCodecType::Video, Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    let decoded = decode(track, 30, Duration::from_secs(10)).await;
    println!("decoded {decoded:?}");
    assert!(decoded.frames >= 30, "{decoded:?}\n{}", daemon.stderr());
    assert_eq!((decoded.width, decoded.height), (1280, 720));

    call.hang_up("caller hung up").await;
    tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(5), |s| {
            s["calls"].as_array().is_some_and(|c| c.is_empty())
        })
    });
    let status = tokio::task::block_in_place(|| daemon.stop());
    assert!(status.success(), "exit status {status}");
}

/// Two viewers share one encoder; the second one's picture starts from a keyframe forced
/// for it rather than the next regular one (the GOP is two seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_viewer_shares_the_encoder_and_gets_a_keyframe_at_once() {
    let daemon = Daemon::start("shared-cam", &["--answer", "auto"]);
    let engine = caller_engine();

    let mut first = Caller::call(
        &engine,
        &daemon.ws,
        "shared-cam",
        json!({"callerName": "One"}),
    )
    .await
    .unwrap();
    let track = first
        .track(RTPCodecType::Video, Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    let first_viewer = tokio::spawn(decode(track, 90, Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let forced_before = tokio::task::block_in_place(|| daemon.status())["feed"]["forced_keyframes"]
        .as_u64()
        .unwrap();

    let mut second = Caller::call(
        &engine,
        &daemon.ws,
        "shared-cam",
        json!({"callerName": "Two"}),
    )
    .await
    .unwrap();
    let track = second
        .track(RTPCodecType::Video, Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    let late = decode(track, 30, Duration::from_secs(10)).await;
    let early = first_viewer.await.unwrap();
    println!("first viewer {early:?}; late viewer {late:?}");
    assert!(early.frames >= 90, "{early:?}\n{}", daemon.stderr());
    assert!(late.frames >= 30, "{late:?}\n{}", daemon.stderr());
    assert_eq!((late.width, late.height), (1280, 720));

    let status = tokio::task::block_in_place(|| daemon.status());
    assert_eq!(
        status["feed"]["starts"], 1,
        "one encoder for both: {status}"
    );
    assert!(
        status["feed"]["forced_keyframes"].as_u64().unwrap() > forced_before,
        "the late viewer forced a keyframe: {status}"
    );
    assert_eq!(status["viewers"], 2, "{status}");

    first.hang_up("bye").await;
    second.hang_up("bye").await;
    tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(5), |s| s["viewers"] == 0)
    });
}

/// With a remote phonebook, the camera registers there, and registers again by itself
/// after the phonebook restarts; calls work through the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_re_registers_after_the_phonebook_restarts() {
    let mut phonebook = common::StandalonePhonebook::start();
    let url = phonebook.ws();
    let daemon = Daemon::start("porch", &["--phonebook", &url, "--answer", "auto"]);
    assert_eq!(daemon.ws, url);

    phonebook.kill();
    tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(5), |s| s["registered"] == false)
    });
    let restarted = std::time::Instant::now();
    phonebook.restart();
    tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(15), |s| s["registered"] == true)
    });
    println!(
        "re-registered {:?} after the phonebook came back",
        restarted.elapsed()
    );

    let engine = caller_engine();
    let mut call = Caller::call(&engine, &url, "porch", json!({"callerName": "Back"}))
        .await
        .unwrap();
    let track = call
        .track(RTPCodecType::Video, Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    let decoded = decode(track, 10, Duration::from_secs(10)).await;
    assert!(decoded.frames >= 10, "{decoded:?}");
    call.hang_up("bye").await;
}

/// Sends `hello` and one `call` with `sdp` over a raw WebSocket, and returns the socket.
async fn raw_call(
    url: &str,
    call_id: &str,
    callee: &str,
    sdp: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures_util::SinkExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for msg in [
        json!({"type": "hello", "version": 1}),
        json!({"type": "call", "call_id": call_id, "callee": callee, "meta": {"callerName": "Raw"}, "sdp": sdp}),
    ] {
        ws.send(tokio_tungstenite::tungstenite::Message::Text(
            msg.to_string().into(),
        ))
        .await
        .unwrap();
    }
    ws
}

/// The next message of `type_`, skipping others, within 10 s.
async fn next_of_type(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    type_: &str,
) -> serde_json::Value {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {type_} within 10 s"))
            .expect("socket open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            let msg: serde_json::Value = serde_json::from_str(&text).unwrap();
            if msg["type"] == type_ {
                return msg;
            }
        }
    }
}

/// Garbage or video-less SDP is declined with a reason the caller can read, and the
/// daemon goes on answering good calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offers_are_declined_with_a_reason() {
    let daemon = Daemon::start("strict-cam", &["--answer", "auto"]);
    let mut ws = raw_call(&daemon.ws, "c-garbage", "strict-cam", "this is not SDP").await;
    let declined = next_of_type(&mut ws, "declined").await;
    assert!(
        declined["reason"]
            .as_str()
            .unwrap()
            .contains("not valid SDP"),
        "{declined}"
    );
    let audio_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let mut ws = raw_call(&daemon.ws, "c-audio", "strict-cam", audio_only).await;
    let declined = next_of_type(&mut ws, "declined").await;
    assert!(
        declined["reason"].as_str().unwrap().contains("no video"),
        "{declined}"
    );

    let engine = caller_engine();
    let mut call = Caller::call(&engine, &daemon.ws, "strict-cam", json!({}))
        .await
        .unwrap();
    call.wait_for(Duration::from_secs(10), |e| {
        matches!(e, CallerEvent::Track(_)).then_some(())
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    call.hang_up("bye").await;
}

/// A caller who gives up while it rings stops the ringing at once: nothing is left to
/// accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_while_it_rings_stops_the_ringing() {
    let daemon = Daemon::start("door", &[]);
    let engine = caller_engine();
    let mut call = Caller::call(
        &engine,
        &daemon.ws,
        "door",
        json!({"callerName": "Impatient"}),
    )
    .await
    .unwrap();
    call.wait_for(Duration::from_secs(10), |e| {
        matches!(e, CallerEvent::Ringing).then_some(())
    })
    .await
    .unwrap();
    call.hang_up("caller hung up").await;
    tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(5), |s| {
            s["calls"].as_array().is_some_and(|c| c.is_empty())
        });
        assert_eq!(daemon.control("accept"), Err("no call is ringing".into()));
    });
}

/// With the log filter a user gets (no `RUST_LOG`), a call that is answered, watched and
/// hung up, by the caller and then by the device, logs nothing above info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_call_and_hang_up_log_nothing_above_info() {
    let daemon = Daemon::spawn_via(&["env", "-u", "RUST_LOG"], "127.0.0.1:0", "quiet", &[]);
    tokio::task::block_in_place(|| {
        daemon.wait_until(Duration::from_secs(10), |s| s["registered"] == true)
    });
    let engine = caller_engine();
    for (caller, device_hangs_up) in [("Ray", false), ("Ada", true)] {
        let mut call = Caller::call(&engine, &daemon.ws, "quiet", json!({"callerName": caller}))
            .await
            .unwrap();
        call.wait_for(Duration::from_secs(10), |e| {
            matches!(e, CallerEvent::Ringing).then_some(())
        })
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
        tokio::task::block_in_place(|| daemon.control("accept")).expect("accept");
        let track = call
            .track(RTPCodecType::Video, Duration::from_secs(10))
            .await
            .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
        let decoded = decode(track, 10, Duration::from_secs(10)).await;
        assert!(decoded.frames >= 10, "{decoded:?}\n{}", daemon.stderr());
        if device_hangs_up {
            tokio::task::block_in_place(|| daemon.control("hangup")).expect("hangup");
            call.wait_for(Duration::from_secs(10), |e| {
                matches!(e, CallerEvent::Hangup(_)).then_some(())
            })
            .await
            .unwrap();
        }
        call.hang_up("bye").await;
        tokio::task::block_in_place(|| {
            daemon.wait_until(Duration::from_secs(5), |s| {
                s["calls"].as_array().is_some_and(|c| c.is_empty())
            })
        });
    }
    // What webrtc-rs says as it closes comes within moments of the close.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = daemon.stderr();
    assert!(log.contains("ENDED"), "the calls ended: {log}");
    let warnings = common::warnings(&log);
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
}
