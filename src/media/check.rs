//! `peercam check`: runs the board's camera pipeline (the same description the daemon
//! uses) for a few seconds, reads the H.264 access units from its `frames` appsink, and
//! reports what came out: frame rate, bitrate, keyframe interval, picture size, profile
//! and level, and the encoder used; or why nothing came out, with what to do about it.
//! Printing the report is the command's business (`crate::cli::check`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::Serialize;

use super::pipeline;
use super::settings::{SourceKind, VideoSettings};

/// What a check measured (or why it failed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// True when H.264 frames came out and no error was posted.
    pub ok: bool,
    /// The board profile.
    pub board: String,
    /// `test`, `v4l2` or `libcamera`.
    pub source: String,
    /// The input format in use.
    pub input_format: String,
    /// The H.264 encoder element, or `passthrough`.
    pub encoder: Option<String>,
    /// Whether the encoder is a hardware one.
    pub hardware: bool,
    /// Encoders skipped before it, with reasons.
    pub skipped: Vec<String>,
    /// Whether the pipeline has the VP8 branch (idle during the check).
    pub vp8_branch: bool,
    /// Picture size from the caps.
    pub width: Option<i32>,
    /// Picture height from the caps.
    pub height: Option<i32>,
    /// H.264 profile from the caps.
    pub profile: Option<String>,
    /// H.264 level from the caps.
    pub level: Option<String>,
    /// How long the pipeline ran, in seconds.
    pub seconds: f64,
    /// Access units received.
    pub frames: u64,
    /// Keyframes among them.
    pub keyframes: u64,
    /// Frames per second, from the timestamps.
    pub fps: f64,
    /// Average bitrate in kbit/s.
    pub bitrate_kbps: f64,
    /// Mean distance between keyframes, in frames.
    pub keyframe_interval_frames: Option<f64>,
    /// Mean distance between keyframes, in seconds.
    pub keyframe_interval_secs: Option<f64>,
    /// What the board asks for.
    pub configured: Configured,
    /// Warnings the pipeline posted.
    pub warnings: Vec<String>,
    /// Why the check failed.
    pub error: Option<String>,
    /// The pipeline description that ran.
    pub pipeline: String,
}

/// The settings the measurements are compared with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Configured {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Target bitrate.
    pub bitrate_kbps: u32,
    /// Frames between keyframes.
    pub keyframe_interval: u32,
}

/// One access unit as the check sees it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    pts: Option<u64>,
    bytes: usize,
    keyframe: bool,
}

#[derive(Default)]
struct Collected {
    frames: Vec<Seen>,
    caps: Option<gst::Caps>,
}

/// Runs the check of `video` (from the board profile `board`) for `duration` and
/// reports; never panics on a broken camera.
pub fn run(board: &str, video: &VideoSettings, duration: Duration) -> CheckReport {
    let mut report = CheckReport {
        board: board.to_owned(),
        source: video.source.as_str().into(),
        configured: Configured {
            width: video.width,
            height: video.height,
            fps: video.fps,
            bitrate_kbps: video.bitrate_kbps,
            keyframe_interval: video.keyframe_interval,
        },
        ..CheckReport::default()
    };
    if let Err(err) = measure(video, duration, &mut report) {
        report.ok = false;
        report.error = Some(format!("{err:#}"));
    }
    report
}

fn measure(
    video: &VideoSettings,
    duration: Duration,
    report: &mut CheckReport,
) -> anyhow::Result<()> {
    super::init()?;
    let plan = pipeline::plan(video)?;
    report.input_format = plan.input.as_str().into();
    report.encoder = Some(plan.encoder_name().into());
    report.hardware = plan.encoder.is_some_and(|q| q.hardware);
    report.skipped = plan.skipped.clone();
    report.vp8_branch = plan.vp8;
    report.pipeline = plan.description.clone();
    plan.check_elements(video)?;
    if video.source == SourceKind::V4l2 {
        let device = video.device.as_deref().unwrap_or("/dev/video0");
        if !Path::new(device).exists() {
            anyhow::bail!(
                "camera missing: {device} does not exist (plug the camera in; \
                 `v4l2-ctl --list-devices` or `peercam devices` lists the cameras)"
            );
        }
    }

    let pipeline = gst::parse::launch(&plan.description)
        .map_err(|err| anyhow!("cannot build the pipeline: {err}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("the description does not make a pipeline"))?;
    let sink = pipeline
        .by_name(super::names::H264_SINK)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| {
            anyhow!(
                "the pipeline has no appsink named {}",
                super::names::H264_SINK
            )
        })?;
    let collected = Arc::new(Mutex::new(Collected::default()));
    let into = collected.clone();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let mut c = into.lock().unwrap_or_else(|e| e.into_inner());
                if c.caps.is_none() {
                    c.caps = sample.caps_owned();
                }
                if let Some(buffer) = sample.buffer() {
                    c.frames.push(Seen {
                        pts: buffer.pts().map(|t| t.nseconds()),
                        bytes: buffer.size(),
                        keyframe: !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
                    });
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );

    let bus = pipeline
        .bus()
        .ok_or_else(|| anyhow!("pipeline without a bus"))?;
    let started = Instant::now();
    let result = play(&pipeline, &bus, duration, report);
    let _ = pipeline.set_state(gst::State::Null);
    report.seconds = round(started.elapsed().as_secs_f64(), 2);
    let collected = collected.lock().unwrap_or_else(|e| e.into_inner());
    summarise(&collected, report);
    result?;
    if report.frames == 0 {
        anyhow::bail!(
            "no H.264 frames came out in {:.1} s (the camera delivered nothing, or the encoder \
             is stuck)",
            report.seconds
        );
    }
    report.ok = true;
    Ok(())
}

/// Plays the pipeline until `duration` has passed or it fails.
fn play(
    pipeline: &gst::Pipeline,
    bus: &gst::Bus,
    duration: Duration,
    report: &mut CheckReport,
) -> anyhow::Result<()> {
    let video_source = report.source.clone();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The reason is on the bus.
        let why = bus
            .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
            .map(|m| error_text(&m, &video_source))
            .unwrap_or_else(|| "the pipeline would not start".into());
        anyhow::bail!("{why}");
    }
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let Some(message) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds(left.as_nanos() as u64),
            &[
                gst::MessageType::Error,
                gst::MessageType::Eos,
                gst::MessageType::Warning,
            ],
        ) else {
            continue;
        };
        match message.view() {
            gst::MessageView::Error(_) => anyhow::bail!("{}", error_text(&message, &video_source)),
            gst::MessageView::Eos(_) => anyhow::bail!("the camera stream ended"),
            gst::MessageView::Warning(w) => report.warnings.push(format!("{}", w.error())),
            _ => {}
        }
    }
}

/// An error message from the bus, with a hint for the usual camera troubles.
fn error_text(message: &gst::Message, source: &str) -> String {
    let gst::MessageView::Error(err) = message.view() else {
        return "unknown error".into();
    };
    let element = err.src().map(|s| s.name().to_string()).unwrap_or_default();
    let debug = err.debug().map(|d| d.to_string()).unwrap_or_default();
    let text = format!("{}", err.error());
    let hint = if text.contains("busy") || debug.contains("EBUSY") {
        " (camera busy: another program is using it, e.g. another peercam; `fuser -v /dev/video*` shows which)"
    } else if text.contains("Cannot identify device") || text.contains("does not exist") {
        " (camera missing: `v4l2-ctl --list-devices` lists the cameras)"
    } else if source == "libcamera" && (text.contains("camera") || debug.contains("camera")) {
        " (check the camera cable and `rpicam-hello --list-cameras`)"
    } else if debug.contains("not-negotiated") {
        " (the camera cannot deliver this size, rate or format: `peercam devices` lists what it offers)"
    } else {
        ""
    };
    if debug.is_empty() {
        format!("pipeline error from {element}: {text}{hint}")
    } else {
        format!("pipeline error from {element}: {text}{hint} [{debug}]")
    }
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn summarise(collected: &Collected, report: &mut CheckReport) {
    if let Some(s) = collected.caps.as_ref().and_then(|c| c.structure(0)) {
        report.width = s.get::<i32>("width").ok();
        report.height = s.get::<i32>("height").ok();
        report.profile = s.get::<String>("profile").ok();
        report.level = s.get::<String>("level").ok();
    }
    let frames = &collected.frames;
    report.frames = frames.len() as u64;
    report.keyframes = frames.iter().filter(|f| f.keyframe).count() as u64;
    let pts: Vec<u64> = frames.iter().filter_map(|f| f.pts).collect();
    if pts.len() >= 2 && pts.len() == frames.len() {
        let span = (pts[pts.len() - 1].saturating_sub(pts[0])) as f64 / 1e9;
        if span > 0.0 {
            let n = frames.len() as f64;
            let fps = (n - 1.0) / span;
            report.fps = round(fps, 2);
            let bytes: usize = frames.iter().map(|f| f.bytes).sum();
            // Each frame lasts 1/fps; n frames cover n/fps seconds.
            report.bitrate_kbps = round(bytes as f64 * 8.0 / (n / fps) / 1000.0, 1);
        }
    }
    let keys: Vec<(usize, Option<u64>)> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.keyframe)
        .map(|(i, f)| (i, f.pts))
        .collect();
    if keys.len() >= 2 {
        let gaps = (keys.len() - 1) as f64;
        let (first, last) = (keys[0], keys[keys.len() - 1]);
        report.keyframe_interval_frames = Some(round((last.0 - first.0) as f64 / gaps, 1));
        if let (Some(a), Some(b)) = (first.1, last.1) {
            report.keyframe_interval_secs = Some(round(b.saturating_sub(a) as f64 / 1e9 / gaps, 2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_rate_bitrate_and_keyframes() {
        let frames: Vec<Seen> = (0..91u64)
            .map(|i| Seen {
                pts: Some(i * 1_000_000_000 / 30),
                bytes: 1000,
                keyframe: i % 30 == 0,
            })
            .collect();
        let mut report = CheckReport::default();
        summarise(&Collected { frames, caps: None }, &mut report);
        assert_eq!(report.frames, 91);
        assert_eq!(report.keyframes, 4);
        assert_eq!(report.fps, 30.0);
        // 1000 bytes a frame at 30 fps: 240 kbit/s.
        assert_eq!(report.bitrate_kbps, 240.0);
        assert_eq!(report.keyframe_interval_frames, Some(30.0));
        assert_eq!(report.keyframe_interval_secs, Some(1.0));
    }
}
