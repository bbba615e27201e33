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
//! [`CallPeer`] (the answer to a caller's offer, or the device's own offer), [`PeerEvent`],
//! the browser-less [`Caller`] (on the same offerer) and what [`receive`] counts of a
//! received track.

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

/// Log filter directives for webrtc-rs, for the default log filter (after `info`): its
/// crates say only what goes wrong (`warn`), except five spots that warn at every normal
/// start or end of a call, where nothing went wrong, and say only `error`s here:
///
/// * `webrtc_ice::agent::agent_internal`: closing the ICE agent closes the other end's
///   candidates too, which it never opened, and warns for each ("Failed to close
///   candidate …: the agent is closed"); at the start of a call it warns that it checks
///   before the other end's first candidate came ("pingAllCandidates called with no
///   candidate pairs").
/// * `webrtc::peer_connection::peer_connection_internal`: the tasks that wait for unknown
///   RTP and RTCP streams warn when closing the connection ends their SRTP session
///   ("Failed to accept RTP SessionSRTP has been closed").
/// * `webrtc_sctp::association`: closing the association closes the DTLS connection
///   under it before its write loop has sent the data channel's last chunk ("failed to
///   write packets on net_conn: conn is closed"), and the end that closes second reads
///   the other's DTLS close_notify first ("failed to read packets on net_conn: Alert is
///   Fatal or Close Notify").
/// * `webrtc::mux`: packets the other end sent while this one closed find their
///   transport gone ("mux: no endpoint for packet starting with 21"), and the closed
///   socket's read hands the last packet round once more.
/// * `dtls::handshake::handshake_message_client_hello` (the DTLS crate is `dtls` in this
///   line, not `webrtc_dtls`): every browser's ClientHello offers TLS 1.3 extensions
///   (key_share, psk_key_exchange_modes, supported_versions) that DTLS 1.2 does not use,
///   and it warns of each ("Unsupported Extension Type 0 51"), three times per call
///   and candidate pair.
///
/// The same targets' other warnings (STUN messages discarded, a data channel that could
/// not open) go too; `RUST_LOG` replaces the whole filter when set, to see them.
pub const LOG_DIRECTIVES: &str = "webrtc=warn,webrtc_ice=warn,webrtc_srtp=warn,\
webrtc_sctp=warn,webrtc_ice::agent::agent_internal=error,\
webrtc::peer_connection::peer_connection_internal=error,webrtc_sctp::association=error,\
webrtc::mux=error,dtls=warn,dtls::handshake::handshake_message_client_hello=error";
