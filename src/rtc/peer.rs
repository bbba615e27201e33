//! One call's peer connection: the answer, trickled candidates, the data channel and the
//! caller's voice.

use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use super::engine::RtcEngine;
use super::offer::check_offer;
use super::writer::{add_track, send_frames};
use crate::media::Codec;
use crate::media::audio::{AudioSettings, Playback};
use crate::media::fanout::{Feed, Subscription};
use crate::signalling::protocol::IceCandidate;

/// The label of the data channel that carries device events and the caller's text.
pub const DATA_CHANNEL_LABEL: &str = "peercam";

/// Longest text accepted from a caller's data channel, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// Something the peer connection wants the call to know.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A local candidate to trickle to the caller; `None` once gathering is complete.
    Candidate(Option<IceCandidate>),
    /// ICE and DTLS are up: media flows.
    Connected,
    /// The caller's data channel is open: events can be sent.
    DataOpen,
    /// The caller sent this text over the data channel.
    Text(String),
    /// A data channel the caller opened (named by its label) closed: for a PeerJS caller
    /// that is the hang-up.
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

/// One call's peer connection, answering the caller's offer with the camera's video (and
/// the microphone's sound), and playing the caller's voice.
pub struct CallPeer {
    pc: Arc<RTCPeerConnection>,
    h264_fmtp: String,
    channel: Arc<Mutex<Option<Arc<RTCDataChannel>>>>,
    playback: Arc<Mutex<Option<Playback>>>,
    video_codec: Codec,
    tasks: Vec<JoinHandle<()>>,
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
        let video = feeds.video.subscribe(video_codec)?;
        let microphone = match (&feeds.audio, summary.opus) {
            (Some(feed), true) => match feed.subscribe(Codec::Opus) {
                Ok(sub) => Some(sub),
                Err(err) => {
                    warn!("the call goes on without the microphone: {err:#}");
                    None
                }
            },
            _ => None,
        };
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
            h264_fmtp: engine.h264_fmtp().to_owned(),
            channel: Arc::default(),
            playback: Arc::default(),
            video_codec,
            tasks: Vec::new(),
        };
        match peer
            .negotiate(offer, video, microphone, audio.clone(), events)
            .await
        {
            Ok((peer, answer)) => Ok((peer, answer)),
            Err(err) => {
                let _ = pc.close().await;
                Err(err)
            }
        }
    }

    async fn negotiate(
        mut self,
        offer: &str,
        video: Subscription,
        microphone: Option<Subscription>,
        audio: AudioSettings,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<(CallPeer, String)> {
        let (connected_tx, connected_rx) = watch::channel(false);
        let mut writers = vec![(self.add_sender(&video).await?, video)];
        if let Some(microphone) = microphone {
            writers.push((self.add_sender(&microphone).await?, microphone));
        }

        let state_events = events.clone();
        self.pc
            .on_peer_connection_state_change(Box::new(move |state: RTCPeerConnectionState| {
                debug!(?state, "peer connection state");
                let event = match state {
                    RTCPeerConnectionState::Connected => {
                        let _ = connected_tx.send(true);
                        Some(PeerEvent::Connected)
                    }
                    RTCPeerConnectionState::Failed => {
                        Some(PeerEvent::Lost("connection lost".into()))
                    }
                    RTCPeerConnectionState::Closed => {
                        Some(PeerEvent::Lost("connection closed".into()))
                    }
                    _ => None,
                };
                if let Some(event) = event {
                    let _ = state_events.send(event);
                }
                Box::pin(async {})
            }));
        let channel_events = events.clone();
        let channel_slot = self.channel.clone();
        self.pc
            .on_data_channel(Box::new(move |channel: Arc<RTCDataChannel>| {
                debug!(label = channel.label(), "caller opened a data channel");
                let label = channel.label().to_owned();
                let closed_events = channel_events.clone();
                let closed_label = label.clone();
                channel.on_close(Box::new(move || {
                    let _ = closed_events.send(PeerEvent::DataClosed(closed_label.clone()));
                    Box::pin(async {})
                }));
                if label != DATA_CHANNEL_LABEL {
                    // PeerJS opens one on every media call; it carries nothing of ours.
                    return Box::pin(async {});
                }
                let open_events = channel_events.clone();
                let opened = channel.clone();
                let slot = channel_slot.clone();
                channel.on_open(Box::new(move || {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
                    let _ = open_events.send(PeerEvent::DataOpen);
                    Box::pin(async {})
                }));
                let text_events = channel_events.clone();
                channel.on_message(Box::new(move |msg: DataChannelMessage| {
                    if msg.data.len() > MAX_TEXT_BYTES {
                        warn!(
                            bytes = msg.data.len(),
                            "data channel message too long; ignored"
                        );
                    } else {
                        let text = String::from_utf8_lossy(&msg.data).into_owned();
                        let _ = text_events.send(PeerEvent::Text(text));
                    }
                    Box::pin(async {})
                }));
                Box::pin(async {})
            }));
        let playback_slot = self.playback.clone();
        self.pc
            .on_track(Box::new(move |track: Arc<TrackRemote>, _, _| {
                if track.kind() == RTPCodecType::Audio && audio.has_speaker() {
                    match Playback::start(&audio, track) {
                        Ok(playback) => {
                            info!("playing the caller's voice");
                            *playback_slot.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(playback);
                        }
                        Err(err) => warn!("cannot play the caller's voice: {err:#}"),
                    }
                }
                Box::pin(async {})
            }));
        let candidate_events = events;
        self.pc
            .on_ice_candidate(Box::new(move |candidate: Option<RTCIceCandidate>| {
                let init = candidate
                    .and_then(|c| c.to_json().ok())
                    .map(|c| IceCandidate {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid,
                        sdp_m_line_index: c.sdp_mline_index,
                        username_fragment: c.username_fragment,
                    });
                let _ = candidate_events.send(PeerEvent::Candidate(init));
                Box::pin(async {})
            }));

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
        let answer = self
            .pc
            .local_description()
            .await
            .context("the answer vanished")?
            .sdp;

        for (track, subscription) in writers {
            self.tasks.push(tokio::spawn(send_frames(
                track,
                subscription,
                connected_rx.clone(),
            )));
        }
        Ok((self, answer))
    }

    /// Adds a track for `subscription`'s stream, and the RTCP reader that turns the
    /// viewer's PLI/FIR into keyframes and its REMB into the encoder's bitrate.
    async fn add_sender(
        &mut self,
        subscription: &Subscription,
    ) -> anyhow::Result<Arc<TrackLocalStaticRTP>> {
        let (track, task) = add_track(&self.pc, subscription, &self.h264_fmtp).await?;
        self.tasks.push(task);
        Ok(track)
    }

    /// The video codec this call sends.
    pub fn video_codec(&self) -> Codec {
        self.video_codec
    }

    /// Decoded audio buffers of the caller's voice played so far.
    pub fn played_audio_buffers(&self) -> u64 {
        self.playback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, Playback::played_buffers)
    }

    /// Adds a candidate the caller trickled.
    pub async fn add_candidate(&self, candidate: IceCandidate) -> anyhow::Result<()> {
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

    /// Sends `text` over the caller's data channel, if it is open.
    pub async fn send_text(&self, text: &str) {
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(channel) = channel
            && let Err(err) = channel.send_text(text.to_owned()).await
        {
            debug!(%err, "cannot send on the data channel");
        }
    }

    /// Waits up to `limit` for what was sent on the data channel to leave, so a last
    /// event is not cut off by closing the connection.
    pub async fn flush(&self, limit: std::time::Duration) {
        let channel = self
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(channel) = channel else { return };
        let deadline = tokio::time::Instant::now() + limit;
        while channel.buffered_amount().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Closes the connection and stops its tasks.
    pub async fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.playback
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Err(err) = self.pc.close().await {
            warn!(%err, "closing a peer connection failed");
        }
    }
}
