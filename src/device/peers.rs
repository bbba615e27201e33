//! The calls' peer connections as the shell sees them: a factory that answers an offer or
//! makes one, and the few things done to a made peer. The device runs them on webrtc-rs
//! ([`RtcPeers`]); the shell's tests run it with a fake whose peers come when the test
//! says, to check that nothing waits for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::media::Codec;
use crate::media::audio::AudioSettings;
use crate::rtc::{CallPeer, Feeds, PeerEvent, RtcEngine};
use crate::signalling::protocol::IceCandidate;

/// A boxed future, as the traits below return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A made peer and its SDP (the answer, or the offer).
pub type Made = anyhow::Result<(Box<dyn Peer>, String)>;

/// One call's peer connection.
pub trait Peer: Send + Sync {
    /// Adds a candidate of the other end's.
    fn add_candidate(&self, candidate: IceCandidate) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Applies the callee's answer to an offered call (once; a repeated one is fine).
    fn apply_answer<'a>(&'a self, sdp: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;
    /// Lets sound through both ways on an offered call.
    fn open_two_way(&self);
    /// Sends text on the call's data channel, if it is open.
    fn send_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, ()>;
    /// Waits up to `limit` for the data channel to send what it holds.
    fn flush(&self, limit: Duration) -> BoxFuture<'_, ()>;
    /// Closes the connection.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
    /// The video codec sent.
    fn video_codec(&self) -> Codec;
    /// Audio buffers of the other end's voice played so far.
    fn played_audio_buffers(&self) -> u64;
}

/// Makes peers; each reports on `events` from the moment it is made.
pub trait PeerFactory: Send + Sync {
    /// Answers a caller's `offer`.
    fn answer(
        &self,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> BoxFuture<'static, Made>;
    /// Offers the camera, for a call the device places.
    fn offer(&self, events: mpsc::UnboundedSender<PeerEvent>) -> BoxFuture<'static, Made>;
}

/// Peers on webrtc-rs, sending the board's feeds.
pub struct RtcPeers {
    /// The WebRTC stack every call shares.
    pub engine: Arc<RtcEngine>,
    /// The camera and microphone.
    pub feeds: Feeds,
    /// The board's microphone and speaker.
    pub audio: AudioSettings,
}

fn boxed(made: anyhow::Result<(CallPeer, String)>) -> Made {
    made.map(|(peer, sdp)| (Box::new(peer) as Box<dyn Peer>, sdp))
}

impl PeerFactory for RtcPeers {
    fn answer(
        &self,
        offer: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> BoxFuture<'static, Made> {
        let (engine, feeds, audio) = (self.engine.clone(), self.feeds.clone(), self.audio.clone());
        Box::pin(
            async move { boxed(CallPeer::answer(&engine, &offer, &feeds, &audio, events).await) },
        )
    }

    fn offer(&self, events: mpsc::UnboundedSender<PeerEvent>) -> BoxFuture<'static, Made> {
        let (engine, feeds, audio) = (self.engine.clone(), self.feeds.clone(), self.audio.clone());
        Box::pin(async move { boxed(CallPeer::offer(&engine, &feeds, &audio, events).await) })
    }
}

impl Peer for CallPeer {
    fn add_candidate(&self, candidate: IceCandidate) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(CallPeer::add_candidate(self, candidate))
    }

    fn apply_answer<'a>(&'a self, sdp: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(CallPeer::apply_answer(self, sdp))
    }

    fn open_two_way(&self) {
        CallPeer::open_two_way(self)
    }

    fn send_text<'a>(&'a self, text: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(CallPeer::send_text(self, text))
    }

    fn flush(&self, limit: Duration) -> BoxFuture<'_, ()> {
        Box::pin(CallPeer::flush(self, limit))
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(CallPeer::close(*self))
    }

    fn video_codec(&self) -> Codec {
        CallPeer::video_codec(self)
    }

    fn played_audio_buffers(&self) -> u64 {
        CallPeer::played_audio_buffers(self)
    }
}
