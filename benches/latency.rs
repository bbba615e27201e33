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

use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, caller_engine};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use peercam::media::stamp;
use peercam::rtc::Caller;
use serde_json::json;
use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

/// Decodes `track` and sends the latency of every stamped frame, in milliseconds.
fn decode_latencies(
    track: Arc<TrackRemote>,
    latencies: mpsc::UnboundedSender<u64>,
) -> gst::Pipeline {
    gst::init().expect("GStreamer");
    let caps = format!(
        "application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload={}",
        track.payload_type()
    );
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=rtp is-live=true format=time caps=\"{caps}\" ! rtph264depay ! h264parse ! \
         avdec_h264 ! videoconvert ! video/x-raw,format=I420 ! appsink name=pictures sync=false"
    ))
    .expect("decoder pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = pipeline
        .by_name("pictures")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let now = stamp::now_ms();
                let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(info) = gstreamer_video::VideoInfo::from_caps(caps) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if let Ok(frame) =
                    gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
                    && let Ok(luma) = frame.plane_data(0)
                    && let Some(stamped) = stamp::read_luma(
                        luma,
                        info.stride()[0] as usize,
                        info.width() as usize,
                        info.height() as usize,
                    )
                {
                    let _ = latencies.send(stamp::age_ms(stamped, now));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let src = pipeline
        .by_name("rtp")
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .expect("appsrc");
    pipeline
        .set_state(gst::State::Playing)
        .expect("decoder plays");
    tokio::spawn(async move {
        while let Ok((packet, _)) = track.read_rtp().await {
            if let Ok(bytes) = packet.marshal() {
                let _ = src.push_buffer(gst::Buffer::from_slice(bytes));
            }
        }
    });
    pipeline
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted
        .get(((sorted.len().saturating_sub(1)) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0)
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
            Ok(Some(ms)) if skipped < 30 => {
                skipped += 1;
                let _ = ms;
            }
            Ok(Some(ms)) => samples.push(ms),
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
