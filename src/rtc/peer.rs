//! One call's peer connection, whichever end offers: the device's answer to a caller's
//! offer, the device's own offer (the bell), and the browser-less caller's. One
//! negotiation for all three: the media, trickled candidates, the data channel, the other
//! end's voice, and sound held back until a call someone was rung for is answered.

mod wiring;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::signaling_state::RTCSignalingState;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use self::wiring::{ChannelSlot, Emit, PlaybackSlot};
use super::engine::RtcEngine;
use super::offer::check_offer;
use super::plan::{MediaPlan, RemoteTracks, direction};
use super::writer::{add_track, send_frames};
use crate::media::Codec;
use crate::media::audio::{AudioSettings, Playback};
use crate::media::fanout::{Feed, Subscription};
use crate::signalling::protocol::IceCandidate;

/// The label of the data channel that carries device events and the other end's text.
pub const DATA_CHANNEL_LABEL: &str = "peercam";

/// Longest text accepted from the other end's data channel, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Most of the other end's candidates kept while its answer has not come: a page trickles
/// a handful.
const MAX_EARLY_CANDIDATES: usize = 64;

/// Longest a closed connection is kept for webrtc-rs's last state change; see [`linger`].
const LINGER: Duration = Duration::from_secs(2);

/// Something the peer connection wants the call to know.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A local candidate to trickle to the other end; `None` once gathering is complete.
    Candidate(Option<IceCandidate>),
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The `peercam` data channel is open: events can be sent.
    DataOpen,
    /// The other end sent this text over the data channel.
    Text(String),
    /// A data channel (named by its label) closed: for a PeerJS caller, whose own
    /// channel it is, that is the hang-up.
    DataClosed(String),
    /// The connection failed or was closed.
    Lost(String),
}

/// The feeds a call can take its media from.
#[derive(Clone)]
pub struct Feeds {
    /// The camera.
    pub video: Feed,
    /// The microphone, if the board has one.
    pub audio: Option<Feed>,
}

/// One call's peer connection: it sends the camera's video (and the microphone's sound)
/// and plays the other end's voice, as the answer to a caller's offer
/// ([`CallPeer::answer`]) or as the device's own offer ([`CallPeer::offer`]).
pub struct CallPeer {
    pc: Arc<RTCPeerConnection>,
    channel: ChannelSlot,
    playback: PlaybackSlot,
    video_codec: Codec,
    /// Whether sound goes both ways; false until [`CallPeer::open_two_way`] on a gated call.
    two_way: watch::Sender<bool>,
    remote: tokio::sync::Mutex<Remote>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How far the other end's description has come.
struct Remote {
    /// Its description is applied: candidates can be added.
    described: bool,
    /// Why an answer failed after webrtc-rs had begun to apply it, which it cannot undo:
    /// no other answer can follow.
    spoiled: Option<String>,
    /// Candidates that came before its answer, added once it is applied.
    early: Vec<IceCandidate>,
}

/// Which end of the negotiation this connection is.
enum Role<'a> {
    /// It answers this offer.
    Answer(&'a str),
    /// It makes the offer.
    Offer,
}

impl CallPeer {
    /// Answers `offer` with a connection that sends the feeds' media. Local candidates
    /// and state changes arrive on `events`; the returned string is the SDP answer.
    pub async fn answer(
        engine: &RtcEngine,
        offer: &str,
        feeds: &Feeds,
        audio: &AudioSettings,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<(CallPeer, String)> {
        let summary = check_offer(offer)?;
        let video_codec = if summary.h264 {
            Codec::H264
        } else if summary.vp8 && engine.vp8() {
            Codec::Vp8
        } else if summary.vp8 {
            bail!(
                "the offer has no H.264 video (packetization mode 1), and this board has no VP8 encoder"
            );
        } else {
            bail!(
                "the offer has no H.264 video (packetization mode 1), which is what this camera sends"
            );
        };
        let plan = MediaPlan {
            video: Some(feeds.video.subscribe(video_codec)?),
            receive_video: false,
            audio: feeds
                .audio
                .as_ref()
                .filter(|_| summary.opus)
                .and_then(microphone),
            receive_audio: false,
            gated: false,
            remote: RemoteTracks::Speaker(audio.clone()),
        };
        CallPeer::start(engine, plan, Role::Answer(offer), emit_to(events)).await
    }

    /// Offers a call from the device: the camera's H.264 video, send-only; the
    /// microphone's sound and the other end's on the speaker, as far as the board has
    /// them; and the `peercam` data channel. The sound goes neither way until
    /// [`CallPeer::open_two_way`], while the video flows as soon as the connection is up.
    /// Local candidates and state changes arrive on `events`; the returned string is the
    /// SDP offer, for [`CallPeer::apply_answer`] to complete.
    pub async fn offer(
        engine: &RtcEngine,
        feeds: &Feeds,
        audio: &AudioSettings,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<(CallPeer, String)> {
        let plan = MediaPlan {
            video: Some(feeds.video.subscribe(Codec::H264)?),
            receive_video: false,
            audio: feeds.audio.as_ref().and_then(microphone),
            receive_audio: audio.has_speaker(),
            gated: true,
            remote: RemoteTracks::Speaker(audio.clone()),
        };
        CallPeer::start(engine, plan, Role::Offer, emit_to(events)).await
    }

    /// Offers a connection with `plan`'s media, reporting through `emit`.
    pub(super) async fn offer_with(
        engine: &RtcEngine,
        plan: MediaPlan,
        emit: Emit,
    ) -> anyhow::Result<(CallPeer, String)> {
        CallPeer::start(engine, plan, Role::Offer, emit).await
    }

    async fn start(
        engine: &RtcEngine,
        plan: MediaPlan,
        role: Role<'_>,
        emit: Emit,
    ) -> anyhow::Result<(CallPeer, String)> {
        let pc = Arc::new(
            engine
                .api()
                .new_peer_connection(RTCConfiguration {
                    ice_servers: engine.ice_servers(),
                    certificates: vec![engine.certificate()?],
                    ..Default::default()
                })
                .await?,
        );
        let peer = CallPeer {
            pc: pc.clone(),
            channel: Arc::default(),
            playback: Arc::default(),
            video_codec: plan.video_codec(),
            two_way: watch::channel(!plan.gated).0,
            remote: tokio::sync::Mutex::new(Remote {
                described: matches!(role, Role::Answer(_)),
                spoiled: None,
                early: Vec::new(),
            }),
            tasks: Mutex::default(),
        };
        match peer.negotiate(engine.h264_fmtp(), plan, role, emit).await {
            Ok(done) => Ok(done),
            Err(err) => {
                let _ = pc.close().await;
                Err(err)
            }
        }
    }

    async fn negotiate(
        self,
        h264_fmtp: &str,
        plan: MediaPlan,
        role: Role<'_>,
        emit: Emit,
    ) -> anyhow::Result<(CallPeer, String)> {
        let offering = matches!(role, Role::Offer);
        // An answer's tracks take the transceivers the offer brings (the offer is set after
        // them, and matches them up); an offer's get their own, with their direction.
        let section = |receive: bool| offering.then(|| direction(true, receive)).flatten();
        let mut writers = Vec::new();
        if let Some(video) = plan.video {
            let track = self
                .add_sender(&video, h264_fmtp, section(plan.receive_video))
                .await?;
            writers.push((track, video, None));
        } else if offering && plan.receive_video {
            self.receive(RTPCodecType::Video).await?;
        }
        if let Some(sound) = plan.audio {
            let track = self
                .add_sender(&sound, h264_fmtp, section(plan.receive_audio))
                .await?;
            writers.push((track, sound, plan.gated.then(|| self.two_way.subscribe())));
        } else if offering && plan.receive_audio {
            self.receive(RTPCodecType::Audio).await?;
        }

        let (connected_tx, connected_rx) = watch::channel(false);
        wiring::report_state(&self.pc, emit.clone(), connected_tx);
        wiring::trickle(&self.pc, emit.clone());
        wiring::take_tracks(
            &self.pc,
            plan.remote,
            self.two_way.subscribe(),
            self.playback.clone(),
        );
        let sdp = match role {
            Role::Answer(offer) => {
                wiring::accept_channels(&self.pc, emit, self.channel.clone());
                self.answer_offer(offer).await?
            }
            Role::Offer => {
                // Like a page's: one reliable, ordered channel for text and device events.
                let channel = self
                    .pc
                    .create_data_channel(DATA_CHANNEL_LABEL, None)
                    .await?;
                wiring::serve_channel(&channel, emit, self.channel.clone());
                let offer = self
                    .pc
                    .create_offer(None)
                    .await
                    .map_err(|err| anyhow!("no offer: {err}"))?;
                let sdp = offer.sdp.clone();
                self.pc.set_local_description(offer).await?;
                sdp
            }
        };

        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for (track, subscription, gate) in writers {
            tasks.push(tokio::spawn(send_frames(
                track,
                subscription,
                connected_rx.clone(),
                gate,
            )));
        }
        drop(tasks);
        Ok((self, sdp))
    }

    async fn answer_offer(&self, offer: &str) -> anyhow::Result<String> {
        let offer = RTCSessionDescription::offer(offer.to_owned())
            .map_err(|err| anyhow!("the offer is not valid SDP: {err}"))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|err| anyhow!("the offer cannot be used: {err}"))?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(|err| anyhow!("no answer to this offer: {err}"))?;
        self.pc.set_local_description(answer).await?;
        Ok(self
            .pc
            .local_description()
            .await
            .context("the answer vanished")?
            .sdp)
    }

    /// Adds a track for `subscription`'s stream, and the RTCP reader that turns the
    /// viewer's PLI/FIR into keyframes and its REMB into the encoder's bitrate.
    async fn add_sender(
        &self,
        subscription: &Subscription,
        h264_fmtp: &str,
        direction: Option<RTCRtpTransceiverDirection>,
    ) -> anyhow::Result<Arc<TrackLocalStaticRTP>> {
        let (track, task) = add_track(&self.pc, subscription, h264_fmtp, direction).await?;
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        Ok(track)
    }

    /// Asks for the other end's `kind` of media without sending any.
    async fn receive(&self, kind: RTPCodecType) -> anyhow::Result<()> {
        self.pc
            .add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: Vec::new(),
                }),
            )
            .await?;
        Ok(())
    }

    /// Completes an offered call with the other end's SDP answer. Once one is applied,
    /// another (the same answer sent again when the call is accepted) changes nothing.
    /// An answer that is not SDP changes nothing either; one that is, but cannot be used,
    /// leaves a connection that takes no other (webrtc-rs cannot undo what it began).
    pub async fn apply_answer(&self, sdp: &str) -> anyhow::Result<()> {
        let mut remote = self.remote.lock().await;
        if remote.described {
            return Ok(());
        }
        if let Some(why) = &remote.spoiled {
            bail!("an earlier answer could not be used ({why}), and no other can follow it");
        }
        let answer = RTCSessionDescription::answer(sdp.to_owned())
            .map_err(|err| anyhow!("the answer is not valid SDP: {err}"))?;
        if let Err(err) = self.pc.set_remote_description(answer).await {
            if self.pc.signaling_state() != RTCSignalingState::HaveLocalOffer {
                remote.spoiled = Some(err.to_string());
            }
            bail!("the answer cannot be used: {err}");
        }
        remote.described = true;
        for candidate in std::mem::take(&mut remote.early) {
            if let Err(err) = self.add_described_candidate(candidate).await {
                debug!("{err:#}");
            }
        }
        Ok(())
    }

    /// Lets sound through both ways on an offered call: the microphone is sent and the
    /// other end's voice played from now on. Answered calls carry it from the start.
    pub fn open_two_way(&self) {
        if !self.two_way.send_replace(true) {
            debug!("two-way audio open");
        }
    }

    /// The video codec this call sends.
    pub fn video_codec(&self) -> Codec {
        self.video_codec
    }

    /// Decoded audio buffers of the other end's voice played so far.
    pub fn played_audio_buffers(&self) -> u64 {
        self.playback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Playback::played_buffers)
    }

    /// Adds a candidate the other end trickled; on an offered call, one that comes before
    /// the answer is kept until the answer is applied.
    pub async fn add_candidate(&self, candidate: IceCandidate) -> anyhow::Result<()> {
        {
            let mut remote = self.remote.lock().await;
            if !remote.described {
                if remote.early.len() < MAX_EARLY_CANDIDATES {
                    remote.early.push(candidate);
                } else {
                    debug!("too many candidates before the answer; dropping one");
                }
                return Ok(());
            }
        }
        self.add_described_candidate(candidate).await
    }

    async fn add_described_candidate(&self, candidate: IceCandidate) -> anyhow::Result<()> {
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: candidate.candidate,
                sdp_mid: candidate.sdp_mid,
                sdp_mline_index: candidate.sdp_m_line_index,
                username_fragment: candidate.username_fragment,
            })
            .await
            .map_err(|err| anyhow!("bad ICE candidate: {err}"))
    }

    /// Sends `text` over the data channel, if it is open.
    pub async fn send_text(&self, text: &str) {
        if let Err(err) = self.try_send_text(text).await {
            debug!("{err:#}");
        }
    }

    /// Sends `text` over the data channel, failing if it is not open.
    pub(super) async fn try_send_text(&self, text: &str) -> anyhow::Result<()> {
        let channel = self
            .open_channel()
            .context("the data channel is not open")?;
        channel
            .send_text(text.to_owned())
            .await
            .map_err(|err| anyhow!("cannot send on the data channel: {err}"))?;
        Ok(())
    }

    fn open_channel(&self) -> Option<Arc<webrtc::data_channel::RTCDataChannel>> {
        self.channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `limit` for what was sent on the data channel to leave, so a last
    /// event is not cut off by closing the connection.
    pub async fn flush(&self, limit: Duration) {
        let Some(channel) = self.open_channel() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + limit;
        while channel.buffered_amount().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Tells the other end the picture of `track` was lost (RTCP PLI), as a browser does
    /// after packet loss.
    pub(super) async fn picture_lost(&self, track: &TrackRemote) -> anyhow::Result<()> {
        let pli = webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: track.ssrc(),
        };
        self.pc.write_rtcp(&[Box::new(pli)]).await?;
        Ok(())
    }

    /// Closes the connection and stops its tasks.
    pub async fn close(self) {
        self.shutdown().await;
    }

    /// [`CallPeer::close`] for a peer that is shared.
    pub(super) async fn shutdown(&self) {
        // Our writers and RTCP readers stop before the transports under them close, so
        // none of them writes into or reads from a closed one.
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        self.playback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Err(err) = self.pc.close().await {
            warn!(%err, "closing a peer connection failed");
        }
        linger(self.pc.clone());
    }
}

/// Keeps a closed connection a moment: webrtc-rs hands the ICE agent's last state change
/// (closed) to the connection on a task of its own, which finds the connection's DTLS
/// transport gone if the connection was dropped first, and says so as a warning.
fn linger(pc: Arc<RTCPeerConnection>) {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LINGER;
        while pc.ice_connection_state() != RTCIceConnectionState::Closed
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The task goes on from the state change to the transport at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}

/// Events as the device takes them: on a channel.
fn emit_to(events: mpsc::UnboundedSender<PeerEvent>) -> Emit {
    Arc::new(move |event| {
        let _ = events.send(event);
    })
}

/// The microphone's stream, or none (logged) when it cannot start.
fn microphone(feed: &Feed) -> Option<Subscription> {
    feed.subscribe(Codec::Opus)
        .map_err(|err| warn!("the call goes on without the microphone: {err:#}"))
        .ok()
}

#[cfg(test)]
mod tests;
