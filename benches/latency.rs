//! Glass-to-glass latency as a webrtc-rs viewer sees it: the dev board's test source
//! stamps each frame with its capture time (src/media/stamp.rs); this viewer decodes the
//! call's H.264 with GStreamer (avdec_h264) and reads the stamp back from every decoded
//! frame. Prints p50, p95 and max over `PEERCAM_LATENCY_FRAMES` frames (default 300),
//! 1280x720 at 30 fps, auto-answer, loopback.
//!
//! "Glass" on this side is the moment the decoder hands the frame over: no display, so
//! compare with the browser's figure (tools/latency), which includes its rendering.
//!
//! Run with `cargo bench --bench latency` (or `tools/latency`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Daemon, caller_engine, decode_latencies};
use gstreamer as gst;
use gstreamer::prelude::*;
use peercam::rtc::Caller;
use serde_json::json;
use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    common::stats::percentile(sorted, p).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("latency benchmark: run it with `cargo bench --bench latency` (tools/latency)");
        return;
    }
    let want: usize = std::env::var("PEERCAM_LATENCY_FRAMES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let daemon = Daemon::start("latency", &["--answer", "auto"]);
    let engine = caller_engine();
    let mut call = Caller::call(
        &engine,
        &daemon.ws,
        "latency",
        json!({"callerName": "bench"}),
    )
    .await
    .expect("call");
    let track = call
        .track(RTPCodecType::Video, Duration::from_secs(15))
        .await
        .unwrap_or_else(|err| panic!("no video: {err}\n{}", daemon.stderr()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pipeline = decode_latencies(track, tx);
    let mut samples = Vec::with_capacity(want);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The first second includes the decoder's start; measure the steady state after it.
    let mut skipped = 0;
    while samples.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) if skipped < 30 => skipped += 1,
            Ok(Some(Some(ms))) => samples.push(ms),
            Ok(Some(None)) => {}
            _ => break,
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    call.hang_up("done").await;
    samples.sort_unstable();
    println!(
        "webrtc-rs viewer (decoded with avdec_h264), 1280x720 30 fps, loopback: {} frames, \
         latency p50 {} ms, p95 {} ms, max {} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        samples.last().copied().unwrap_or(0)
    );
    println!(
        "LATENCY_JSON {}",
        json!({"receiver": "webrtc-rs", "frames": samples.len(),
               "p50_ms": percentile(&samples, 0.5), "p95_ms": percentile(&samples, 0.95),
               "max_ms": samples.last().copied().unwrap_or(0)})
    );
    daemon.stop();
}
