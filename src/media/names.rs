//! Names the pipeline descriptions give to elements and the code then looks up by name:
//! one spelling for both sides, so a renamed sink cannot silently stop a stream.

/// The appsink that delivers H.264 access units.
pub const H264_SINK: &str = "frames";
/// The appsink that delivers the on-demand VP8 branch's frames.
pub const VP8_SINK: &str = "vp8frames";
/// The appsink that delivers the microphone's Opus packets.
pub const OPUS_SINK: &str = "opusframes";
/// The valve in front of the on-demand VP8 encoder, closed while nobody watches VP8.
pub const VP8_VALVE: &str = "vp8valve";
/// The tee the camera's raw pictures go into, for the encoder branches to hang off.
pub const RAW_TEE: &str = "raw";
/// The appsrc a caller's RTP audio is pushed into for the speaker.
pub const CALLER_RTP: &str = "rtp";
/// The sink that plays callers' voices (its pad counts the buffers played).
pub const SPEAKER: &str = "speaker";
