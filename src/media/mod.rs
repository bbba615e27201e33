//! Media: one camera pipeline, encoded once, fanned out to every call.
//!
//! [`pipeline`] builds the GStreamer pipeline from the board's settings (source, caps,
//! encoder from the quirks table in [`encode`]) and hands out H.264 access units;
//! [`fanout`] runs that pipeline only while someone watches, shares each frame with every
//! viewer, skips a lagging viewer to the next keyframe and coalesces keyframe requests.

pub mod encode;
pub mod fanout;
pub mod pipeline;

use std::time::Duration;

use bytes::Bytes;

/// One H.264 access unit in Annex B byte-stream form, as the encoder produced it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The NAL units of one picture, each after a start code; SPS/PPS precede each IDR.
    pub data: Bytes,
    /// Presentation time on the pipeline's clock.
    pub pts: Duration,
    /// True for an IDR picture a decoder can start from.
    pub keyframe: bool,
    /// Which run of the pipeline made it: timestamps restart when the pipeline does.
    pub epoch: u64,
}

/// Initialises GStreamer once; safe to call many times.
pub fn init() -> anyhow::Result<()> {
    gstreamer::init().map_err(|err| anyhow::anyhow!("GStreamer could not start: {err}"))
}
