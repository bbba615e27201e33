//! WebRTC on the device: one webrtc-rs `RTCPeerConnection` per call.
//!
//! We use webrtc-rs's callback-based line (0.14): its `RTCRtpSender::read_rtcp` hands
//! PLI, FIR and REMB to the application directly, `TrackLocalStaticRTP` lets us stamp RTP
//! timestamps from the encoder's PTS, and every call gets its own tracks fed from the
//! shared encoders (see [`crate::media::fanout`]). The choice of crate stays inside this
//! module: the rest of peercam sees [`RtcEngine`], [`CallPeer`], [`PeerEvent`] and the
//! browser-less [`Caller`].

mod caller;
mod clock;
mod peer;
pub mod receive;

pub use caller::{CallOptions, Caller, CallerEvent};
pub use clock::RtpClock;
pub use peer::{CallPeer, Feeds, MediaCaps, OfferSummary, PeerEvent, RtcEngine, check_offer};
