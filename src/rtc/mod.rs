//! WebRTC on the device: one webrtc-rs `RTCPeerConnection` per call.
//!
//! We use webrtc-rs's callback-based line (0.14): its `RTCRtpSender::read_rtcp` hands
//! PLI and FIR to the application directly, `TrackLocalStaticRTP` lets us stamp RTP
//! timestamps from the encoder's PTS, and every call gets its own track fed from the
//! shared encoder (see [`crate::media::fanout`]). The choice of crate stays inside this
//! module: the rest of peercam sees [`RtcEngine`], [`CallPeer`] and [`PeerEvent`].

mod caller;
mod clock;
mod peer;

pub use caller::{Caller, CallerEvent};
pub use clock::RtpClock;
pub use peer::{CallPeer, PeerEvent, RtcEngine, check_offer};
