//! WebRTC on the device: one webrtc-rs `RTCPeerConnection` per call.
//!
//! We use webrtc-rs's callback-based line, 0.17.x, the maintained end of that API: its
//! `RTCRtpSender::read_rtcp` hands PLI, FIR and REMB to the application directly,
//! `TrackLocalStaticRTP` lets us stamp RTP timestamps from the encoder's PTS, and every
//! call gets its own tracks fed from the shared encoders (see [`crate::media::fanout`]).
//! 0.20 and later are a different API (async, runtime-agnostic, over the sans-I/O `rtc`
//! crate) and would mean rewriting this module rather than upgrading it. From 0.14 the
//! 0.17 line changed no API we call; what it changed underneath: ICE consent checks go out
//! every keepalive interval whatever the media (RFC 7675), SCTP packets are at most 1191
//! bytes (safe on 1280-byte paths), unknown SDP bandwidth types are ignored rather than
//! refused, and each media section of an offer negotiates its own codecs.
//!
//! The choice of crate stays inside this module: the rest of peercam sees [`RtcEngine`],
//! [`CallPeer`], [`PeerEvent`], the browser-less [`Caller`] and what [`receive`] counts
//! of a received track.

mod caller;
mod clock;
mod engine;
mod offer;
mod peer;
mod plan;
pub mod receive;
mod writer;

pub use caller::{CallOptions, Caller, CallerEvent};
pub use clock::RtpClock;
pub use engine::{MediaCaps, RtcEngine};
pub use offer::{OfferSummary, check_offer};
pub use peer::{CallPeer, DATA_CHANNEL_LABEL, Feeds, MAX_TEXT_BYTES, PeerEvent};
