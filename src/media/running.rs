//! The GStreamer implementation of [`EncodedSource`]: a pipeline description run with
//! one appsink per encoded stream it offers ([`names::H264_SINK`], [`names::VP8_SINK`],
//! [`names::OPUS_SINK`]), and the encoders' quirks for changing their bitrate.

use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tracing::warn;

use super::encode::{self, EncoderQuirks};
use super::pipeline::PipelinePlan;
use super::source::{EncodedSource, KeyframeTrigger, RunningSource, Sink, SourceError};
use super::{Codec, names};

/// A GStreamer pipeline description, started afresh for each run.
#[derive(Debug, Clone)]
pub struct GstSource {
    description: String,
    encoders: Vec<&'static EncoderQuirks>,
}

impl GstSource {
    /// Runs `description` as it is: its bitrate is never changed.
    pub fn new(description: impl Into<String>) -> Self {
        GstSource {
            description: description.into(),
            encoders: Vec::new(),
        }
    }

    /// Runs the camera pipeline `plan` describes, retuning its H.264 encoder (none when
    /// the camera's own H.264 is passed through) and its VP8 branch's the way their quirks
    /// say.
    pub fn from_plan(plan: &PipelinePlan) -> Self {
        GstSource {
            description: plan.description.clone(),
            encoders: plan
                .encoder
                .into_iter()
                .chain(plan.vp8.then(encode::vp8))
                .collect(),
        }
    }

    /// The description each run is built from.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Starts a run into `sink`: [`EncodedSource::start`] without the box.
    pub fn run(&self, sink: Sink) -> Result<RunningPipeline, SourceError> {
        let mut running = RunningPipeline::start(&self.description, sink)?;
        running.encoders = self.encoders.clone();
        Ok(running)
    }
}

impl EncodedSource for GstSource {
    fn start(&self, sink: Sink) -> Result<Box<dyn RunningSource>, SourceError> {
        Ok(Box::new(self.run(sink)?))
    }
}

/// A pipeline in the PLAYING state. Dropping it stops it.
pub struct RunningPipeline {
    pipeline: gst::Pipeline,
    sinks: Vec<(Codec, gst_app::AppSink)>,
    encoders: Vec<&'static EncoderQuirks>,
}

impl RunningPipeline {
    /// Builds `description` and starts it. Every encoded frame of every stream the
    /// description has goes to `sink` on GStreamer's streaming threads; an error or the
    /// end of the stream is reported once through `sink` on whichever thread noticed.
    pub fn start(description: &str, sink: Sink) -> Result<Self, SourceError> {
        let pipeline = gst::parse::launch(description)
            .map_err(|source| SourceError::Build {
                description: description.to_owned(),
                source,
            })?
            .downcast::<gst::Pipeline>()
            .map_err(|_| SourceError::NotAPipeline)?;
        super::stamp::attach(&pipeline);
        let mut sinks = Vec::new();
        for codec in Codec::ALL {
            let Some(appsink) = pipeline
                .by_name(codec.sink_name())
                .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            else {
                continue;
            };
            let sink = sink.clone();
            appsink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |appsink| {
                        let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                        let buffer = sample.buffer_owned().ok_or(gst::FlowError::Error)?;
                        let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                        let pts = Duration::from_nanos(buffer.pts().map_or(0, |t| t.nseconds()));
                        // The frame keeps GStreamer's buffer alive instead of copying it.
                        let mapped = buffer
                            .into_mapped_buffer_readable()
                            .map_err(|_| gst::FlowError::Error)?;
                        sink.frame(codec, Bytes::from_owner(mapped), pts, keyframe);
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
            sinks.push((codec, appsink));
        }
        if sinks.is_empty() {
            return Err(SourceError::NoSink);
        }

        let bus = pipeline.bus().ok_or(SourceError::NoBus)?;
        bus.set_sync_handler(move |_, msg| {
            match msg.view() {
                gst::MessageView::Error(err) => {
                    let source = err
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default();
                    sink.fail(format!("{source}: {}", err.error()));
                }
                gst::MessageView::Eos(_) => sink.fail("the stream ended"),
                _ => {}
            }
            gst::BusSyncReply::Drop
        });

        if let Err(err) = pipeline.set_state(gst::State::Playing) {
            let _ = pipeline.set_state(gst::State::Null);
            bus.unset_sync_handler();
            return Err(SourceError::Start(err));
        }
        Ok(RunningPipeline {
            pipeline,
            sinks,
            encoders: Vec::new(),
        })
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

impl RunningSource for RunningPipeline {
    fn has(&self, codec: Codec) -> bool {
        self.sinks.iter().any(|(c, _)| *c == codec)
    }

    fn keyframe_trigger(&self, codec: Codec) -> Option<KeyframeTrigger> {
        let (_, appsink) = self.sinks.iter().find(|(c, _)| *c == codec)?;
        let appsink = appsink.clone();
        Some(KeyframeTrigger::new(move || {
            // Upstream from the appsink, so it reaches this stream's encoder alone; with
            // the SPS/PPS in front, for a decoder that starts there.
            let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            appsink.send_event(event);
        }))
    }

    fn set_vp8(&self, open: bool) {
        if let Some(valve) = self.pipeline.by_name(names::VP8_VALVE) {
            valve.set_property("drop", !open);
        }
    }

    fn set_bitrate(&self, kbps: u32) {
        for quirks in &self.encoders {
            let Some(element) = self.element(quirks.element) else {
                continue;
            };
            if let Err(err) = quirks.bitrate_update(kbps).apply(&element) {
                warn!(
                    encoder = quirks.element,
                    "cannot change the bitrate: {err:#}"
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::media::pipeline;

    #[test]
    fn the_plans_encoders_and_vp8_valve_follow_the_feed() {
        crate::media::init().unwrap();
        let settings = Settings::load("dev", None, toml::Table::new()).unwrap();
        let plan = pipeline::plan(&settings.video).unwrap();
        assert!(plan.vp8, "the dev board has the VP8 branch");
        let source = GstSource::from_plan(&plan);
        let running = source.run(Sink::new(1, |_, _| {}, |_, _| {})).unwrap();
        assert!(running.has(Codec::H264) && running.has(Codec::Vp8));
        assert!(!running.has(Codec::Opus) && running.keyframe_trigger(Codec::Opus).is_none());

        running.set_bitrate(1234);
        let mut retuned = Vec::new();
        for quirks in &source.encoders {
            let element = running.element(quirks.element).unwrap();
            let (property, expect) = match quirks.element {
                "x264enc" => ("bitrate", 1234),
                "openh264enc" => ("bitrate", 1_234_000),
                "vp8enc" => ("target-bitrate", 1_234_000),
                other => panic!("no expectation for {other}"),
            };
            let got: i64 = match element.property_value(property).get::<u32>() {
                Ok(v) => v.into(),
                Err(_) => element.property::<i32>(property).into(),
            };
            assert_eq!(got, expect, "{}", quirks.element);
            retuned.push(quirks.element);
        }
        assert_eq!(retuned, [plan.encoder_name(), "vp8enc"]);

        let valve = running.pipeline.by_name(names::VP8_VALVE).unwrap();
        assert!(
            valve.property::<bool>("drop"),
            "closed until a VP8 viewer comes"
        );
        running.set_vp8(true);
        assert!(!valve.property::<bool>("drop"));
        running.set_vp8(false);
        assert!(valve.property::<bool>("drop"));
    }

    #[test]
    fn a_description_without_a_known_appsink_is_refused() {
        crate::media::init().unwrap();
        let err = GstSource::new("videotestsrc ! fakesink")
            .run(Sink::new(1, |_, _| {}, |_, _| {}))
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::NoSink), "{err}");
        let err = GstSource::new("videotestsrc ! nosuchelement")
            .run(Sink::new(1, |_, _| {}, |_, _| {}))
            .err()
            .unwrap();
        assert!(matches!(err, SourceError::Build { .. }), "{err}");
    }
}
