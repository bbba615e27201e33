//! The camera pipeline: source → convert → encoder → h264parse → appsink, built from the
//! board's settings and handing out one [`Frame`] per access unit.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::Frame;
use super::encode;
use crate::config::{SourceKind, VideoSettings};

/// The `gst-launch` description of the camera pipeline for these settings.
pub fn describe(video: &VideoSettings) -> anyhow::Result<String> {
    let quirks = encode::quirks(&video.encoder).ok_or_else(|| {
        anyhow!(
            "unknown encoder {:?}; known encoders: {}",
            video.encoder,
            encode::ENCODERS
                .iter()
                .map(|e| e.element)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let raw_caps = format!(
        "video/x-raw,width={},height={},framerate={}/1",
        video.width, video.height, video.fps
    );
    let source = match video.source {
        SourceKind::Test => format!(
            "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! {raw_caps} ! \
             clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 40\" halignment=right valignment=bottom"
        ),
        SourceKind::V4l2 => {
            let device = video.device.as_deref().unwrap_or("/dev/video0");
            format!("v4l2src device={device} ! {raw_caps}")
        }
        SourceKind::Libcamera => format!("libcamerasrc ! {raw_caps}"),
    };
    Ok(format!(
        "{source} ! videoconvert ! video/x-raw,format={input} ! {encoder} ! {out_caps} ! \
         h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! \
         appsink name=frames sync=false max-buffers=8 drop=true",
        input = quirks.input_format,
        encoder = quirks.launch(video.bitrate_kbps, video.keyframe_interval),
        out_caps = quirks.output_caps,
    ))
}

/// Checks that every element the settings need is installed, with a message that says
/// which package to install when one is missing.
pub fn check_elements(video: &VideoSettings) -> anyhow::Result<()> {
    let source = match video.source {
        SourceKind::Test => "videotestsrc",
        SourceKind::V4l2 => "v4l2src",
        SourceKind::Libcamera => "libcamerasrc",
    };
    let mut needed = vec![
        (source, "gstreamer1.0-plugins-base / -good"),
        ("videoconvert", "gstreamer1.0-plugins-base"),
        ("h264parse", "gstreamer1.0-plugins-bad"),
        ("appsink", "gstreamer1.0-plugins-base"),
        (
            video.encoder.as_str(),
            "gstreamer1.0-plugins-ugly (x264enc)",
        ),
    ];
    if video.source == SourceKind::Test {
        needed.push(("clockoverlay", "gstreamer1.0-plugins-base"));
    }
    if video.source == SourceKind::Libcamera {
        needed[0].1 = "gstreamer1.0-libcamera";
    }
    for (element, package) in needed {
        if gst::ElementFactory::find(element).is_none() {
            bail!("the GStreamer element {element:?} is missing: install {package}");
        }
    }
    Ok(())
}

/// A pipeline in the PLAYING state. Dropping it stops it.
pub struct RunningPipeline {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
}

impl RunningPipeline {
    /// Builds `description` and starts it. `on_frame` runs on GStreamer's streaming
    /// thread for every access unit; `on_error` runs once the pipeline fails or ends, on
    /// whichever thread noticed, and must not block.
    pub fn start(
        description: &str,
        epoch: u64,
        on_frame: impl Fn(Frame) + Send + Sync + 'static,
        on_error: impl Fn(String) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let pipeline = gst::parse::launch(description)
            .with_context(|| format!("cannot build the pipeline {description:?}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("the description does not make a pipeline"))?;
        let sink = pipeline
            .by_name("frames")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| anyhow!("the pipeline has no appsink named frames"))?;

        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let buffer = sample.buffer_owned().ok_or(gst::FlowError::Error)?;
                    let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    let pts = Duration::from_nanos(buffer.pts().map_or(0, |t| t.nseconds()));
                    // The frame keeps GStreamer's buffer alive instead of copying it.
                    let mapped = buffer
                        .into_mapped_buffer_readable()
                        .map_err(|_| gst::FlowError::Error)?;
                    on_frame(Frame {
                        data: Bytes::from_owner(mapped),
                        pts,
                        keyframe,
                        epoch,
                    });
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );

        let bus = pipeline
            .bus()
            .ok_or_else(|| anyhow!("pipeline without a bus"))?;
        bus.set_sync_handler(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let source = err
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    on_error(format!("{source}: {}", err.error()));
                }
                gst::MessageView::Eos(_) => on_error("the camera stream ended".into()),
                _ => {}
            }
            gst::BusSyncReply::Drop
        });

        if let Err(err) = pipeline.set_state(gst::State::Playing) {
            let _ = pipeline.set_state(gst::State::Null);
            bus.unset_sync_handler();
            bail!("the camera pipeline did not start: {err}");
        }
        Ok(RunningPipeline { pipeline, sink })
    }

    /// A handle that can force keyframes from another thread.
    pub fn keyframe_handle(&self) -> KeyframeHandle {
        KeyframeHandle(self.sink.clone())
    }
}

/// Forces keyframes on a running pipeline without holding the pipeline itself.
#[derive(Clone)]
pub struct KeyframeHandle(gst_app::AppSink);

impl KeyframeHandle {
    /// Asks the encoder for a keyframe with SPS/PPS in front of it.
    pub fn force(&self) {
        let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        self.0.send_event(event);
    }
}

impl Drop for RunningPipeline {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
        if let Some(bus) = self.pipeline.bus() {
            bus.unset_sync_handler();
        }
    }
}
