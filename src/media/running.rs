//! A running GStreamer pipeline with one appsink per encoded stream it offers
//! (`frames` for H.264, `vp8frames` for VP8, `opusframes` for Opus).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::{Codec, Frame};

/// A pipeline in the PLAYING state. Dropping it stops it.
pub struct RunningPipeline {
    pipeline: gst::Pipeline,
    sinks: Vec<(Codec, gst_app::AppSink)>,
}

impl RunningPipeline {
    /// Builds `description` and starts it. `on_frame` runs on GStreamer's streaming
    /// threads for every encoded frame of every stream the description has; `on_error`
    /// runs once the pipeline fails or ends, on whichever thread noticed, and must not
    /// block.
    pub fn start(
        description: &str,
        epoch: u64,
        on_frame: impl Fn(Codec, Frame) + Clone + Send + Sync + 'static,
        on_error: impl Fn(String) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let pipeline = gst::parse::launch(description)
            .with_context(|| format!("cannot build the pipeline {description:?}"))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| anyhow!("the description does not make a pipeline"))?;
        super::stamp::attach(&pipeline);
        let mut sinks = Vec::new();
        for codec in Codec::ALL {
            let Some(sink) = pipeline
                .by_name(codec.sink_name())
                .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            else {
                continue;
            };
            let on_frame = on_frame.clone();
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
                        on_frame(
                            codec,
                            Frame::new(Bytes::from_owner(mapped), pts, keyframe, epoch),
                        );
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            sinks.push((codec, sink));
        }
        if sinks.is_empty() {
            bail!("the pipeline has no appsink named frames, vp8frames or opusframes");
        }

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
                gst::MessageView::Eos(_) => on_error("the stream ended".into()),
                _ => {}
            }
            gst::BusSyncReply::Drop
        });

        if let Err(err) = pipeline.set_state(gst::State::Playing) {
            let _ = pipeline.set_state(gst::State::Null);
            bus.unset_sync_handler();
            bail!("the pipeline did not start: {err}");
        }
        Ok(RunningPipeline { pipeline, sinks })
    }

    /// Whether this pipeline produces `codec`.
    pub fn has(&self, codec: Codec) -> bool {
        self.sinks.iter().any(|(c, _)| *c == codec)
    }

    /// A handle that can force keyframes of `codec` from another thread.
    pub fn keyframe_handle(&self, codec: Codec) -> Option<KeyframeHandle> {
        self.sinks
            .iter()
            .find(|(c, _)| *c == codec)
            .map(|(_, sink)| KeyframeHandle(sink.clone()))
    }

    /// Opens or closes the valve in front of an on-demand encoder branch (the VP8 one),
    /// so it costs nothing while nobody watches it.
    pub fn set_valve(&self, name: &str, open: bool) {
        if let Some(valve) = self.pipeline.by_name(name) {
            valve.set_property("drop", !open);
        }
    }

    /// The first element made by the factory `factory`, e.g. the encoder to retune.
    pub fn element(&self, factory: &str) -> Option<gst::Element> {
        self.pipeline
            .iterate_recurse()
            .into_iter()
            .flatten()
            .find(|e| e.factory().is_some_and(|f| f.name() == factory))
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
