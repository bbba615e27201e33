//! What a connection carries: the streams it sends, what it asks to receive, whether its
//! sound waits to be let through, and what becomes of what the other end sends. The
//! device's answers and offers and the browser-less caller differ only in this.

use std::sync::Arc;

use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_remote::TrackRemote;

use crate::media::Codec;
use crate::media::audio::AudioSettings;
use crate::media::fanout::Subscription;

/// What becomes of the other end's tracks.
#[derive(Clone)]
pub(super) enum RemoteTracks {
    /// Its sound plays on the board's speaker, when the board has one; nothing else of
    /// it is read.
    Speaker(AudioSettings),
    /// Every track goes to this function as it arrives, for the caller to read.
    HandOut(Arc<dyn Fn(Arc<TrackRemote>) + Send + Sync>),
}

/// The media of one connection.
pub(super) struct MediaPlan {
    /// The video stream to send.
    pub video: Option<Subscription>,
    /// Ask for the other end's video (an offer's; an answer takes what was offered).
    pub receive_video: bool,
    /// The sound to send: the board's microphone, or a test caller's voice.
    pub audio: Option<Subscription>,
    /// Ask for the other end's sound (an offer's, as for `receive_video`).
    pub receive_audio: bool,
    /// Sound goes neither way until the call is let through (a bell call before someone
    /// answers it); video flows as soon as the connection is up.
    pub gated: bool,
    /// What to do with the other end's tracks.
    pub remote: RemoteTracks,
}

impl MediaPlan {
    /// The codec of the video sent; H.264, what the camera sends, when none is.
    pub fn video_codec(&self) -> Codec {
        self.video.as_ref().map_or(Codec::H264, Subscription::codec)
    }
}

/// The direction of an offered media section that sends when `send` and receives when
/// `receive`; `None` when it would do neither, and so is left out.
pub(super) fn direction(send: bool, receive: bool) -> Option<RTCRtpTransceiverDirection> {
    match RTCRtpTransceiverDirection::from_send_recv(send, receive) {
        RTCRtpTransceiverDirection::Inactive => None,
        direction => Some(direction),
    }
}
