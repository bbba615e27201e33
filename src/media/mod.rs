//! Media: one camera pipeline, encoded once, fanned out to every call.
//!
//! [`pipeline`] builds the GStreamer pipeline from the board's settings (source, caps,
//! encoder from the quirks table in [`encode`]), and [`running`] runs it as an
//! [`source::EncodedSource`] that hands out H.264 access units; [`fanout`] runs a source
//! only while someone watches, shares each frame with every viewer, skips a lagging viewer
//! to the next keyframe ([`keyframe`] coalesces the requests) and sets the bitrate from
//! the viewers' estimates ([`bitrate`]). [`replay`] is a source that replays access units
//! on tokio time, for tests on virtual time.

pub mod audio;
pub mod bitrate;
pub mod check;
pub mod choose;
pub mod encode;
pub mod fanout;
pub mod input_format;
pub mod keyframe;
pub mod names;
pub mod pipeline;
pub mod probe;
pub mod registry;
pub mod replay;
pub mod running;
pub mod settings;
pub mod source;
pub mod stamp;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

/// One encoded picture (an H.264 access unit in Annex B byte-stream form, a VP8 frame)
/// or Opus packet, as the encoder produced it.
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
    /// RTP payloads, made by the first viewer that sends the frame and shared by all: each
    /// viewer's retransmission history then holds the same memory, not its own copy.
    payloads: Arc<OnceLock<Vec<Bytes>>>,
}

impl Frame {
    /// A frame as it leaves the encoder.
    pub fn new(data: Bytes, pts: Duration, keyframe: bool, epoch: u64) -> Frame {
        Frame {
            data,
            pts,
            keyframe,
            epoch,
            payloads: Arc::default(),
        }
    }

    /// The frame's RTP payloads, made by `packetize` the first time they are asked for.
    /// Every caller must packetise alike (one codec, one MTU), as the viewers of a feed do.
    pub fn payloads(&self, packetize: impl FnOnce(&Bytes) -> Vec<Bytes>) -> &[Bytes] {
        self.payloads.get_or_init(|| packetize(&self.data))
    }
}

/// An encoded stream a pipeline can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// H.264 video, Annex B access units.
    H264,
    /// VP8 video frames, for callers that offer no H.264.
    Vp8,
    /// Opus audio packets.
    Opus,
}

impl Codec {
    /// Every codec, in the order pipelines are searched for their sinks.
    pub const ALL: [Codec; 3] = [Codec::H264, Codec::Vp8, Codec::Opus];

    /// The name of the appsink that delivers this codec.
    pub fn sink_name(self) -> &'static str {
        match self {
            Codec::H264 => names::H264_SINK,
            Codec::Vp8 => names::VP8_SINK,
            Codec::Opus => names::OPUS_SINK,
        }
    }

    /// The RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::H264 | Codec::Vp8 => 90_000,
            Codec::Opus => 48_000,
        }
    }
}

/// Initialises GStreamer once; safe to call many times.
pub fn init() -> anyhow::Result<()> {
    gstreamer::init().map_err(|err| anyhow::anyhow!("GStreamer could not start: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_made_once_and_shared_by_every_copy_of_a_frame() {
        let frame = Frame::new(
            Bytes::from_static(b"\0\0\0\x01\x65picture"),
            Duration::ZERO,
            true,
            1,
        );
        let copy = frame.clone();
        let mut made = 0;
        let first = frame
            .payloads(|data| {
                made += 1;
                vec![data.slice(4..)]
            })
            .to_vec();
        let second = copy
            .payloads(|_| {
                made += 1;
                Vec::new()
            })
            .to_vec();
        assert_eq!(made, 1);
        assert_eq!(first, second);
        assert_eq!(first[0].as_ptr(), second[0].as_ptr());
    }
}
