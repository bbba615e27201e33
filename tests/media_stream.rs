//! The stream for real: fan-out to several webrtc-rs viewers, keyframes on joining and on
//! PLI, codec choice from the offer (VP8 for callers without H.264), a camera pipeline
//! that fails and is rebuilt, and audio both ways with test sources.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, caller_engine, decode, loopback_ice};
use peercam::media::Codec;
use peercam::media::audio::{AudioSettings, MicrophoneKind, describe_microphone};
use peercam::media::fanout::Feed;
use peercam::rtc::{CallOptions, Caller, CallerEvent, RtcEngine};
use serde_json::json;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

const WAIT: Duration = Duration::from_secs(10);

fn status(daemon: &Daemon) -> serde_json::Value {
    tokio::task::block_in_place(|| daemon.status())
}

/// Calls and waits for the connection; returns the call and when it connected.
async fn connect(
    engine: &RtcEngine,
    daemon: &Daemon,
    callee: &str,
    who: &str,
) -> (Caller, Instant) {
    let mut call = Caller::call(engine, &daemon.ws, callee, json!({"callerName": who}))
        .await
        .unwrap();
    call.wait_for(WAIT, |e| matches!(e, CallerEvent::Connected).then_some(()))
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", daemon.stderr()));
    (call, Instant::now())
}

/// With regular keyframes only every 10 s, a viewer that joins late still gets a picture
/// at once: the keyframe forced for it. Two viewers keep decoding on the one encoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_viewer_gets_a_forced_keyframe_and_everyone_shares_one_encoder() {
    let daemon = Daemon::start(
        "fan",
        &["--answer", "auto", "--set", "video.keyframe_interval=300"],
    );
    let engine = caller_engine();
    let mut early = Vec::new();
    for who in ["One", "Two"] {
        let (mut call, _) = connect(&engine, &daemon, "fan", who).await;
        let track = call.track(RTPCodecType::Video, WAIT).await.unwrap();
        early.push((call, tokio::spawn(decode(track, 120, WAIT))));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (mut late, connected_at) = connect(&engine, &daemon, "fan", "Late").await;
    let track = late.track(RTPCodecType::Video, WAIT).await.unwrap();
    let decoded = decode(track, 30, WAIT).await;
    let first = decoded
        .first_frame_at
        .expect("the late viewer decoded something")
        .duration_since(connected_at);
    println!("late viewer: first decoded frame {first:?} after connecting ({decoded:?})");
    assert!(decoded.frames >= 30, "{decoded:?}");
    // Without the forced keyframe it would wait for the next regular one, up to 10 s.
    assert!(
        first < Duration::from_secs(2),
        "first frame after {first:?}"
    );

    for (_, viewer) in early.iter_mut() {
        let decoded = viewer.await.unwrap();
        assert!(decoded.frames >= 120, "{decoded:?}");
    }
    let s = status(&daemon);
    assert_eq!(s["feed"]["starts"], 1, "one encoder: {s}");
    assert_eq!(s["viewers"], 3, "{s}");
}

/// A PLI from a viewer makes the encoder emit a keyframe soon, not at the next GOP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pli_produces_a_keyframe() {
    let daemon = Daemon::start(
        "pli",
        &["--answer", "auto", "--set", "video.keyframe_interval=300"],
    );
    let engine = caller_engine();
    let (mut call, _) = connect(&engine, &daemon, "pli", "Lossy").await;
    let track = call.track(RTPCodecType::Video, WAIT).await.unwrap();
    let reader = tokio::spawn(decode(track.clone(), 1_000, Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = status(&daemon)["feed"]["keyframes"].as_u64().unwrap();
    let asked = Instant::now();
    call.picture_lost(&track).await.unwrap();
    let after = tokio::task::block_in_place(|| {
        daemon.wait_until(WAIT, |s| s["feed"]["keyframes"].as_u64().unwrap() > before)
    });
    println!(
        "keyframe {:?} after the PLI: {}",
        asked.elapsed(),
        after["feed"]
    );
    assert!(asked.elapsed() < Duration::from_secs(3));
    reader.abort();
}

/// A caller that offers VP8 but no H.264 (an old browser, a constrained client) gets
/// VP8 from the on-demand software branch; with that branch disabled it gets a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_h264_get_vp8_or_a_clear_reason() {
    let daemon = Daemon::start("vp8", &["--answer", "auto"]);
    let engine = RtcEngine::caller(&loopback_ice(), &[Codec::Vp8]).unwrap();
    let (mut call, _) = connect(&engine, &daemon, "vp8", "Old").await;
    let track = call.track(RTPCodecType::Video, WAIT).await.unwrap();
    assert_eq!(
        track.codec().capability.mime_type.to_ascii_lowercase(),
        "video/vp8"
    );
    let decoded = decode(track, 30, WAIT).await;
    assert!(decoded.frames >= 30, "{decoded:?}");
    assert_eq!((decoded.width, decoded.height), (1280, 720));
    call.hang_up("bye").await;

    let strict = Daemon::start(
        "h264-only",
        &["--answer", "auto", "--set", "video.vp8_fallback=false"],
    );
    let mut call = Caller::call(&engine, &strict.ws, "h264-only", json!({}))
        .await
        .unwrap();
    let reason = call
        .wait_for(WAIT, |e| match e {
            CallerEvent::Declined(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    let err = reason.expect("declined");
    assert!(err.contains("no H.264"), "{err}");
}

/// A camera failure mid-call: the pipeline is rebuilt after a pause and the viewer's
/// picture resumes at the new pipeline's first keyframe, in the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_camera_is_rebuilt_and_the_call_resumes() {
    let daemon = Daemon::start("flaky", &["--answer", "auto"]);
    let engine = caller_engine();
    let (mut call, _) = connect(&engine, &daemon, "flaky", "Patient").await;
    let track = call.track(RTPCodecType::Video, WAIT).await.unwrap();
    let viewer = tokio::spawn(decode(track, 150, Duration::from_secs(15)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reply = tokio::task::block_in_place(|| daemon.control("fault camera")).unwrap();
    assert!(reply.contains("rebuilt"), "{reply}");
    let rebuilt = tokio::task::block_in_place(|| {
        daemon.wait_until(WAIT, |s| {
            s["feed"]["starts"] == 2 && s["feed"]["failures"] == 1
        })
    });
    println!("rebuilt: {}", rebuilt["feed"]);
    let decoded = viewer.await.unwrap();
    // 1 s before the fault, the pause, then at least 2 s after: 150 frames need both runs.
    assert!(decoded.frames >= 150, "{decoded:?}\n{}", daemon.stderr());
    assert_eq!(status(&daemon)["calls"][0]["state"], "ESTABLISHED");
}

/// An intercom: the board's microphone (a test tone) reaches the caller, and the
/// caller's voice (another test tone) is decoded for the board's speaker (a fake sink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_goes_both_ways() {
    let daemon = Daemon::start(
        "intercom",
        &[
            "--answer",
            "auto",
            "--set",
            "audio.microphone=\"test\"",
            "--set",
            "audio.speaker=\"fake\"",
        ],
    );
    let engine = caller_engine();
    let voice = Feed::new(
        "caller microphone",
        describe_microphone(&AudioSettings {
            microphone: MicrophoneKind::Test,
            ..Default::default()
        })
        .unwrap(),
        None,
        None,
    );
    let mut call = Caller::call_with(
        &engine,
        &daemon.ws,
        "intercom",
        json!({"callerName": "Talker"}),
        CallOptions {
            send_audio: Some(voice),
            receive_audio: true,
            ..CallOptions::default()
        },
    )
    .await
    .unwrap();
    let audio = call.track(RTPCodecType::Audio, WAIT).await.unwrap();
    let heard = decode(audio, 50, WAIT).await;
    println!(
        "caller decoded {} audio buffers from the board",
        heard.frames
    );
    assert!(heard.frames >= 50, "{heard:?}");
    let s = tokio::task::block_in_place(|| {
        daemon.wait_until(WAIT, |s| {
            s["calls"][0]["played_audio_buffers"].as_u64().unwrap_or(0) >= 50
        })
    });
    println!(
        "board played {} buffers of the caller's voice",
        s["calls"][0]["played_audio_buffers"]
    );
    call.hang_up("bye").await;
}
