//! The whole path for real: the daemon binary with the test pattern and its embedded
//! phonebook, a webrtc-rs caller, the control socket as the accept button, and
//! GStreamer's avdec_h264 decoding what arrives.

mod common;

use std::time::Duration;

use common::{Daemon, caller_engine, decode};
use peercam::rtc::{Caller, CallerEvent};
use serde_json::json;

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
        .wait_for(Duration::from_secs(10), |e| match e {
            CallerEvent::Track(t) => Some(t.clone()),
            _ => None,
        })
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
        .wait_for(Duration::from_secs(10), |e| match e {
            CallerEvent::Track(t) => Some(t.clone()),
            _ => None,
        })
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
        .wait_for(Duration::from_secs(10), |e| match e {
            CallerEvent::Track(t) => Some(t.clone()),
            _ => None,
        })
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
