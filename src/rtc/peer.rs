//! One call's peer connection: the answer, trickled candidates, the video writer and the
//! RTCP reader.

use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MIME_TYPE_H264, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::dtls_transport::dtls_role::DTLSRole;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::{PayloadType, RTCPFeedback};
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use super::clock::RtpClock;
use crate::config::IceSettings;
use crate::media::fanout::{Subscription, VideoFeed};
use crate::signalling::protocol::IceCandidate;

/// Largest RTP payload; leaves room for headers, SRTP and tunnels under a 1500-byte MTU.
const RTP_PAYLOAD_MTU: usize = 1188;

/// The H.264 profiles we answer with: constrained baseline as browsers and Safari offer
/// it, with the `42e0` and `42 00` prefixes, packetization mode 1 (FU-A).
const H264_FMTPS: &[(PayloadType, &str)] = &[
    (
        102,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    ),
    (
        127,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    ),
];

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
    /// The connection failed or was closed.
    Lost(String),
}

/// Longest text accepted from a caller's data channel, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

/// The WebRTC stack, set up once and shared by every call.
pub struct RtcEngine {
    api: API,
    ice_servers: Vec<RTCIceServer>,
}

impl RtcEngine {
    /// Builds the engine: our H.264 codecs, the default interceptors (NACK, RTCP
    /// reports, TWCC), DTLS server role on answers, and the ICE settings.
    pub fn new(ice: &IceSettings) -> anyhow::Result<Self> {
        let mut media = MediaEngine::default();
        for (payload_type, fmtp) in H264_FMTPS {
            media.register_codec(
                RTCRtpCodecParameters {
                    capability: h264_capability(fmtp),
                    payload_type: *payload_type,
                    ..Default::default()
                },
                RTPCodecType::Video,
            )?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media)?;

        let mut setting = SettingEngine::default();
        // As the DTLS server the device answers the browser's ClientHello at once,
        // saving a round trip before the first picture.
        setting.set_answering_dtls_role(DTLSRole::Server)?;
        // Resolving a browser's .local candidates would send multicast queries; the
        // browser's own connectivity checks reveal its address anyway.
        setting.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        setting.set_include_loopback_candidate(ice.loopback);
        if !ice.interfaces.is_empty() {
            let allowed = ice.interfaces.clone();
            setting.set_interface_filter(Box::new(move |name: &str| {
                allowed.iter().any(|a| a == name)
            }));
        }

        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .build();
        let ice_servers = ice
            .servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        Ok(RtcEngine { api, ice_servers })
    }

    pub(super) fn api(&self) -> &API {
        &self.api
    }

    pub(super) fn ice_servers(&self) -> Vec<RTCIceServer> {
        self.ice_servers.clone()
    }
}

fn h264_capability(fmtp: &str) -> RTCRtpCodecCapability {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_H264.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: vec![
            feedback("goog-remb", ""),
            feedback("transport-cc", ""),
            feedback("ccm", "fir"),
            feedback("nack", ""),
            feedback("nack", "pli"),
        ],
    }
}

/// Checks that `sdp` is an SDP offer with a video section that offers H.264 in
/// packetization mode 1, with an error a caller can read.
pub fn check_offer(sdp: &str) -> anyhow::Result<()> {
    let parsed = webrtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp))
        .map_err(|err| anyhow!("the offer is not valid SDP: {err}"))?;
    let video: Vec<_> = parsed
        .media_descriptions
        .iter()
        .filter(|m| m.media_name.media == "video")
        .collect();
    if video.is_empty() {
        bail!("the offer has no video section: add a receive-only video transceiver");
    }
    let h264 = video.iter().any(|m| {
        m.attributes.iter().any(|a| {
            a.key == "rtpmap"
                && a.value
                    .as_deref()
                    .is_some_and(|v| v.to_ascii_uppercase().contains(" H264/90000"))
        })
    });
    if !h264 {
        bail!("the offer has no H.264 video, which is all this camera sends");
    }
    Ok(())
}

/// One call's peer connection, answering the caller's offer with the camera's video.
pub struct CallPeer {
    pc: Arc<RTCPeerConnection>,
    channel: Arc<Mutex<Option<Arc<RTCDataChannel>>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl CallPeer {
    /// Answers `offer` with a connection that sends the feed's video. Local candidates
    /// and state changes arrive on `events`; the returned string is the SDP answer.
    pub async fn answer(
        engine: &RtcEngine,
        offer: &str,
        feed: &VideoFeed,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<(CallPeer, String)> {
        check_offer(offer)?;
        let subscription = feed.subscribe()?;
        let pc = Arc::new(
            engine
                .api
                .new_peer_connection(RTCConfiguration {
                    ice_servers: engine.ice_servers.clone(),
                    ..Default::default()
                })
                .await?,
        );
        let peer = CallPeer {
            pc: pc.clone(),
            channel: Arc::default(),
            tasks: Vec::new(),
        };
        match peer.negotiate(offer, feed, subscription, events).await {
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
        feed: &VideoFeed,
        subscription: Subscription,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<(CallPeer, String)> {
        let track = Arc::new(TrackLocalStaticRTP::new(
            h264_capability(H264_FMTPS[0].1),
            "video".into(),
            "peercam".into(),
        ));
        let sender = self.pc.add_track(track.clone()).await?;

        let (connected_tx, connected_rx) = watch::channel(false);
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

        let rtcp_feed = feed.clone();
        self.tasks.push(tokio::spawn(async move {
            // Reading RTCP also drives the interceptors (NACK responder, reports).
            while let Ok((packets, _)) = sender.read_rtcp().await {
                for packet in packets {
                    let any = packet.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        debug!("viewer asked for a keyframe");
                        rtcp_feed.request_keyframe();
                    }
                }
            }
        }));
        self.tasks
            .push(tokio::spawn(send_video(track, subscription, connected_rx)));
        Ok((self, answer))
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
        if let Err(err) = self.pc.close().await {
            warn!(%err, "closing a peer connection failed");
        }
    }
}

/// Writes the feed into `track` once the connection is up, starting at a fresh keyframe.
async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    mut subscription: Subscription,
    mut connected: watch::Receiver<bool>,
) {
    if connected.wait_for(|up| *up).await.is_err() {
        return;
    }
    subscription.want_keyframe();
    let mut payloader = H264Payloader::default();
    let mut clock = RtpClock::new(rand::random());
    let mut sequence: u16 = rand::random();
    let mut first = true;
    while let Some(frame) = subscription.next().await {
        if first {
            info!("first keyframe sent to the viewer");
            first = false;
        }
        let timestamp = clock.timestamp(&frame);
        let payloads = match payloader.payload(RTP_PAYLOAD_MTU, &frame.data) {
            Ok(p) => p,
            Err(err) => {
                warn!(%err, "cannot packetise a frame; skipping it");
                continue;
            }
        };
        let last = payloads.len().saturating_sub(1);
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    sequence_number: sequence,
                    timestamp,
                    ..Default::default()
                },
                payload,
            };
            sequence = sequence.wrapping_add(1);
            if let Err(err) = track.write_rtp(&packet).await {
                debug!(%err, "video track closed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_checked_with_readable_errors() {
        let err = check_offer("nonsense").unwrap_err().to_string();
        assert!(err.contains("not valid SDP"), "{err}");
        let audio_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let err = check_offer(audio_only).unwrap_err().to_string();
        assert!(err.contains("no video"), "{err}");
        let vp8 = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        let err = check_offer(vp8).unwrap_err().to_string();
        assert!(err.contains("no H.264"), "{err}");
        let h264 = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        check_offer(h264).unwrap();
    }
}
