//! The boundary between the fan-out and whatever makes encoded frames.
//!
//! An [`EncodedSource`] is started by the feed when the first viewer comes (and again
//! after a failure); the [`RunningSource`] it returns produces frames into a [`Sink`]
//! until it is dropped. The GStreamer pipeline ([`super::running::GstSource`]) is one;
//! [`super::replay::ReplaySource`] replays access units on tokio time, so the fan-out's
//! timing can be tested with `tokio::time::pause`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;

use super::{Codec, Frame};

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// GStreamer could not parse or build the description.
    #[error("cannot build the pipeline {description:?}")]
    Build {
        /// The description given.
        description: String,
        /// GStreamer's reason.
        #[source]
        source: gst::glib::Error,
    },
    /// The description builds a single element, not a pipeline.
    #[error("the description does not make a pipeline")]
    NotAPipeline,
    /// The description names none of the appsinks an encoded stream comes out of.
    #[error(
        "the pipeline has no appsink named {}, {} or {}",
        super::names::H264_SINK,
        super::names::VP8_SINK,
        super::names::OPUS_SINK
    )]
    NoSink,
    /// A GStreamer pipeline without a bus cannot report failures.
    #[error("pipeline without a bus")]
    NoBus,
    /// The pipeline refused to go to PLAYING (a camera in use, a missing device).
    #[error("the pipeline did not start")]
    Start(#[source] gst::StateChangeError),
    /// A source that runs on tokio time was started outside a tokio runtime.
    #[error("this source needs a tokio runtime")]
    NoRuntime,
    /// The source was told to refuse (tests of the restart logic).
    #[error("the source refused to start: {0}")]
    Refused(String),
}

/// Where a running source delivers its frames and reports its failure. Cheap to clone;
/// made by the feed for each run, whose number it carries.
#[derive(Clone)]
pub struct Sink {
    epoch: u64,
    frames: Arc<dyn Fn(Codec, Frame) + Send + Sync>,
    failure: Arc<dyn Fn(u64, String) + Send + Sync>,
}

impl Sink {
    /// A sink for run `epoch`: `frames` gets each frame, `failure` the run's number and
    /// why it failed. Both may be called from any thread and must not block.
    pub fn new(
        epoch: u64,
        frames: impl Fn(Codec, Frame) + Send + Sync + 'static,
        failure: impl Fn(u64, String) + Send + Sync + 'static,
    ) -> Sink {
        Sink {
            epoch,
            frames: Arc::new(frames),
            failure: Arc::new(failure),
        }
    }

    /// Which run of the source this sink belongs to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Delivers one encoded frame of `codec`, stamped with this run's epoch.
    pub fn frame(&self, codec: Codec, data: Bytes, pts: Duration, keyframe: bool) {
        (self.frames)(codec, Frame::new(data, pts, keyframe, self.epoch));
    }

    /// Reports that this run failed or ended; the feed then drops it and starts another.
    pub fn fail(&self, why: impl Into<String>) {
        (self.failure)(self.epoch, why.into());
    }
}

/// Forces keyframes of one stream of a running source, from any thread, without holding
/// the source itself (so it never ends up dropping the source on a streaming thread).
#[derive(Clone)]
pub struct KeyframeTrigger(Arc<dyn Fn() + Send + Sync>);

impl KeyframeTrigger {
    /// A trigger that runs `force`, which must not block.
    pub fn new(force: impl Fn() + Send + Sync + 'static) -> Self {
        KeyframeTrigger(Arc::new(force))
    }

    /// Asks the encoder for a keyframe (with its parameter sets) as soon as it can.
    pub fn force(&self) {
        (self.0)()
    }
}

/// Something that encodes frames when started: a camera pipeline, a microphone, a replay.
pub trait EncodedSource: Send + Sync {
    /// Starts a run that delivers into `sink` until the returned handle is dropped or
    /// the run reports a failure through `sink`.
    fn start(&self, sink: Sink) -> Result<Box<dyn RunningSource>, SourceError>;
}

/// One run of a source. Dropping it stops it (and may block until its threads end).
pub trait RunningSource: Send {
    /// Whether this run produces `codec`.
    fn has(&self, codec: Codec) -> bool;

    /// A trigger for keyframes of `codec`, if this run produces it.
    fn keyframe_trigger(&self, codec: Codec) -> Option<KeyframeTrigger>;

    /// Opens or closes the on-demand VP8 branch, so it costs nothing while nobody
    /// watches it. Sources without one ignore this.
    fn set_vp8(&self, open: bool);

    /// Sets the encoders' bitrate, in kbit/s. Sources that cannot change it ignore this.
    fn set_bitrate(&self, kbps: u32);
}
