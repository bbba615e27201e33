//! One call's peer connection: the answer, trickled candidates, the media writers, the
//! RTCP reader, the data channel and the caller's voice.

use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
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
use webrtc::peer_connection::certificate::RTCCertificate;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::codecs::opus::OpusPayloader;
use webrtc::rtp::codecs::vp8::Vp8Payloader;
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::{PayloadType, RTCPFeedback};
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_remote::TrackRemote;

use super::clock::RtpClock;
use crate::config::IceSettings;
use crate::media::Codec;
use crate::media::audio::{AudioSettings, Playback};
use crate::media::fanout::{Feed, Subscription};
use crate::signalling::protocol::IceCandidate;

/// Largest RTP payload; leaves room for headers, SRTP and tunnels under a 1500-byte MTU.
const RTP_PAYLOAD_MTU: usize = 1188;

const VP8_PAYLOAD_TYPE: PayloadType = 96;
const OPUS_PAYLOAD_TYPE: PayloadType = 111;
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

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

/// RTP packets a sender keeps per stream to answer NACKs: about 2.5 s of 2 Mbit/s video,
/// far more than a round trip. webrtc-rs keeps 8192 by default, which at ~1.2 kB a packet
/// was most of the 7 MiB each viewer cost.
const NACK_HISTORY_LOG2: u8 = 9;

/// NACK feedback for video, with a sender history of [`NACK_HISTORY_LOG2`] packets.
fn configure_nack(mut registry: Registry, media: &mut MediaEngine) -> Registry {
    use webrtc::interceptor::nack::{generator::Generator, responder::Responder};
    use webrtc::rtp_transceiver::RTCPFeedback;
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RTPCodecType::Video,
        );
    }
    registry.add(Box::new(
        Responder::builder().with_log2_size(NACK_HISTORY_LOG2),
    ));
    registry.add(Box::new(Generator::builder()));
    registry
}

/// What the board can send, which decides the codecs the engine answers with.
#[derive(Debug, Clone)]
pub struct MediaCaps {
    /// A VP8 encoder serves callers that offer no H.264.
    pub vp8: bool,
    /// The H.264 profile and level the encoder emits (`42e01f`: constrained baseline,
    /// level 3.1), advertised in the answer.
    pub h264_profile_level_id: String,
}

impl Default for MediaCaps {
    fn default() -> Self {
        MediaCaps {
            vp8: false,
            h264_profile_level_id: "42e01f".into(),
        }
    }
}

/// The fmtp lines for `profile_level_id` (`42e0xx`), also under the `4200` prefix some
/// browsers offer for the same constrained-baseline stream.
fn h264_fmtps(profile_level_id: &str) -> [(PayloadType, String); 2] {
    let level = profile_level_id.get(4..6).unwrap_or("1f");
    let fmtp = |pli: &str| {
        format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={pli}")
    };
    [
        (102, fmtp(profile_level_id)),
        (127, fmtp(&format!("4200{level}"))),
    ]
}

/// The feeds a call can take its media from.
#[derive(Clone)]
pub struct Feeds {
    /// The camera.
    pub video: Feed,
    /// The microphone, if the board has one.
    pub audio: Option<Feed>,
}

/// The WebRTC stack, set up once and shared by every call.
pub struct RtcEngine {
    api: API,
    /// As configured: TURN credentials are made from a secret for each call.
    ice_servers: Vec<crate::signalling::protocol::IceServer>,
    h264_fmtp: String,
    vp8: bool,
    /// The DTLS certificate every connection uses, and when it was made.
    certificate: std::sync::Mutex<Option<(std::time::Instant, RTCCertificate)>>,
}

/// How long one DTLS certificate serves (webrtc-rs makes them valid for two days on armv7).
const CERTIFICATE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl RtcEngine {
    /// Builds the device's engine: our codecs (VP8 only if the board can send it), NACK
    /// and RTCP reports, the DTLS server role on answers, and the ICE settings.
    pub fn new(ice: &IceSettings, caps: MediaCaps) -> anyhow::Result<Self> {
        let mut codecs = vec![Codec::H264, Codec::Opus];
        if caps.vp8 {
            codecs.push(Codec::Vp8);
        }
        RtcEngine::build(ice, &codecs, &caps.h264_profile_level_id, true)
    }

    /// An engine for a caller that offers only `codecs` (to act like a browser that
    /// lacks some), with NACK and RTCP reports.
    pub fn caller(ice: &IceSettings, codecs: &[Codec]) -> anyhow::Result<Self> {
        RtcEngine::build(ice, codecs, "42e01f", false)
    }

    fn build(
        ice: &IceSettings,
        codecs: &[Codec],
        h264_profile_level_id: &str,
        answering_server: bool,
    ) -> anyhow::Result<Self> {
        let mut media = MediaEngine::default();
        let fmtps = h264_fmtps(h264_profile_level_id);
        for codec in codecs {
            let registrations = match codec {
                Codec::H264 => fmtps
                    .iter()
                    .map(|(pt, fmtp)| (*pt, video_capability(MIME_TYPE_H264, fmtp)))
                    .collect(),
                Codec::Vp8 => vec![(VP8_PAYLOAD_TYPE, video_capability(MIME_TYPE_VP8, ""))],
                Codec::Opus => vec![(OPUS_PAYLOAD_TYPE, opus_capability())],
            };
            let kind = if *codec == Codec::Opus {
                RTPCodecType::Audio
            } else {
                RTPCodecType::Video
            };
            for (payload_type, capability) in registrations {
                media.register_codec(
                    RTCRtpCodecParameters {
                        capability,
                        payload_type,
                        ..Default::default()
                    },
                    kind,
                )?;
            }
        }
        // No transport-wide congestion control: without it browsers send REMB, the
        // receiver's own estimate, which is what the encoder's bitrate follows.
        let mut registry = Registry::new();
        registry = configure_nack(registry, &mut media);
        registry = webrtc::api::interceptor_registry::configure_rtcp_reports(registry);

        let mut setting = SettingEngine::default();
        if answering_server {
            // As the DTLS server the device answers the browser's ClientHello at once,
            // saving a round trip before the first picture.
            setting.set_answering_dtls_role(DTLSRole::Server)?;
        }
        // Resolving a browser's .local candidates would send multicast queries; the
        // browser's own connectivity checks reveal its address anyway.
        setting.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        // Candidates the other side's checks reveal before its trickled ones arrive
        // (peer-reflexive) would otherwise wait a second before they may be chosen.
        setting.set_host_acceptance_min_wait(Some(std::time::Duration::ZERO));
        setting.set_prflx_acceptance_min_wait(Some(std::time::Duration::ZERO));
        // webrtc-rs waits 5 s + 25 s of silence before it calls a connection failed, so
        // a caller whose network vanished would hold a viewer slot (and the encoder) for
        // half a minute. Disconnected after 3 s, failed 5 s later, with a keepalive every
        // second so an idle direction is not taken for a dead one (tests/faults.rs).
        setting.set_ice_timeouts(
            Some(std::time::Duration::from_secs(3)),
            Some(std::time::Duration::from_secs(5)),
            Some(std::time::Duration::from_secs(1)),
        );
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
        let ice_servers = ice.servers.clone();
        Ok(RtcEngine {
            api,
            ice_servers,
            h264_fmtp: fmtps[0].1.clone(),
            vp8: codecs.contains(&Codec::Vp8),
            certificate: std::sync::Mutex::new(None),
        })
    }

    /// The certificate for a new connection. Making one (an ECDSA key and a self-signed
    /// certificate) for every call took a good part of the answer's time; browsers keep
    /// theirs too. Renewed once a day.
    pub(super) fn certificate(&self) -> anyhow::Result<RTCCertificate> {
        let mut slot = self.certificate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made, certificate)) = slot.as_ref()
            && made.elapsed() < CERTIFICATE_LIFETIME
        {
            return Ok(certificate.clone());
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let certificate = RTCCertificate::from_key_pair(key)?;
        *slot = Some((std::time::Instant::now(), certificate.clone()));
        Ok(certificate)
    }

    pub(super) fn api(&self) -> &API {
        &self.api
    }

    /// The ICE servers for a new connection, with fresh TURN credentials.
    pub(super) fn ice_servers(&self) -> Vec<RTCIceServer> {
        crate::signalling::protocol::ice_for_client(&self.ice_servers, "peercam")
            .into_iter()
            .map(|s| RTCIceServer {
                urls: s.urls,
                username: s.username.unwrap_or_default(),
                credential: s.credential.unwrap_or_default(),
            })
            .collect()
    }

    pub(super) fn h264_fmtp(&self) -> &str {
        &self.h264_fmtp
    }
}

fn video_capability(mime: &str, fmtp: &str) -> RTCRtpCodecCapability {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    RTCRtpCodecCapability {
        mime_type: mime.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: vec![
            feedback("goog-remb", ""),
            feedback("ccm", "fir"),
            feedback("nack", ""),
            feedback("nack", "pli"),
        ],
    }
}

fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.into(),
        rtcp_feedback: Vec::new(),
    }
}

/// What a caller's offer contains, as far as choosing codecs goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OfferSummary {
    /// A video section offers H.264 in packetization mode 1.
    pub h264: bool,
    /// A video section offers VP8.
    pub vp8: bool,
    /// An audio section offers Opus.
    pub opus: bool,
}

/// Reads `sdp` as an offer, with errors a caller can read.
pub fn check_offer(sdp: &str) -> anyhow::Result<OfferSummary> {
    let parsed = webrtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp))
        .map_err(|err| anyhow!("the offer is not valid SDP: {err}"))?;
    let mut summary = OfferSummary::default();
    let mut video = false;
    for m in &parsed.media_descriptions {
        let rtpmaps: Vec<(String, String)> = m
            .attributes
            .iter()
            .filter(|a| a.key == "rtpmap")
            .filter_map(|a| a.value.as_deref())
            .filter_map(|v| v.split_once(' '))
            .map(|(pt, codec)| (pt.to_owned(), codec.to_ascii_uppercase()))
            .collect();
        let fmtp = |pt: &str| {
            m.attributes
                .iter()
                .filter(|a| a.key == "fmtp")
                .filter_map(|a| a.value.as_deref())
                .find(|v| v.split_once(' ').is_some_and(|(p, _)| p == pt))
                .map(|v| v.to_owned())
                .unwrap_or_default()
        };
        match m.media_name.media.as_str() {
            "video" => {
                video = true;
                for (pt, codec) in &rtpmaps {
                    if codec.starts_with("H264/90000") && fmtp(pt).contains("packetization-mode=1")
                    {
                        summary.h264 = true;
                    }
                    if codec.starts_with("VP8/90000") {
                        summary.vp8 = true;
                    }
                }
            }
            "audio" => {
                summary.opus |= rtpmaps.iter().any(|(_, c)| c.starts_with("OPUS/48000"));
            }
            _ => {}
        }
    }
    if !video {
        bail!("the offer has no video section: add a receive-only video transceiver");
    }
    Ok(summary)
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
        } else if summary.vp8 && engine.vp8 {
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
                .api
                .new_peer_connection(RTCConfiguration {
                    ice_servers: engine.ice_servers(),
                    certificates: vec![engine.certificate()?],
                    ..Default::default()
                })
                .await?,
        );
        let peer = CallPeer {
            pc: pc.clone(),
            h264_fmtp: engine.h264_fmtp.clone(),
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

/// Adds a track for `subscription`'s stream to `pc`, and starts the RTCP reader that turns
/// the viewer's PLI/FIR into keyframes and its REMB into the encoder's bitrate.
pub(super) async fn add_track(
    pc: &RTCPeerConnection,
    subscription: &Subscription,
    h264_fmtp: &str,
) -> anyhow::Result<(Arc<TrackLocalStaticRTP>, JoinHandle<()>)> {
    let (capability, kind) = match subscription.codec() {
        Codec::H264 => (video_capability(MIME_TYPE_H264, h264_fmtp), "video"),
        Codec::Vp8 => (video_capability(MIME_TYPE_VP8, ""), "video"),
        Codec::Opus => (opus_capability(), "audio"),
    };
    let track = Arc::new(TrackLocalStaticRTP::new(
        capability,
        kind.into(),
        "peercam".into(),
    ));
    let sender = pc.add_track(track.clone()).await?;
    let control = subscription.control();
    let task = tokio::spawn(async move {
        // Reading RTCP also drives the interceptors (NACK responder, reports).
        while let Ok((packets, _)) = sender.read_rtcp().await {
            for packet in packets {
                let any = packet.as_any();
                if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                    debug!("viewer asked for a keyframe");
                    control.request_keyframe();
                } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                    debug!(bps = remb.bitrate as u64, "viewer's bandwidth estimate");
                    control.report_estimate(remb.bitrate as u64);
                }
            }
        }
    });
    Ok((track, task))
}

/// The RTP payloads of one frame, with a payloader of its own: the H.264 payloader's only
/// state, SPS and PPS waiting for the next NAL unit, never outlives an access unit (the
/// pipeline's h264parse puts them in each IDR's), so frames packetise alike for every
/// viewer. A frame that cannot be packetised has no payloads and is skipped.
fn packetize(codec: Codec, data: &bytes::Bytes) -> Vec<bytes::Bytes> {
    let mut payloader: Box<dyn Payloader + Send> = match codec {
        Codec::H264 => Box::new(H264Payloader::default()),
        Codec::Vp8 => Box::new(Vp8Payloader::default()),
        Codec::Opus => Box::new(OpusPayloader),
    };
    payloader
        .payload(RTP_PAYLOAD_MTU, data)
        .unwrap_or_else(|err| {
            warn!(%err, ?codec, "cannot packetise a frame; skipping it");
            Vec::new()
        })
}

/// Writes a stream into `track` once the connection is up, starting at a fresh keyframe,
/// with RTP timestamps from the encoder's presentation times.
pub(super) async fn send_frames(
    track: Arc<TrackLocalStaticRTP>,
    mut subscription: Subscription,
    mut connected: watch::Receiver<bool>,
) {
    if connected.wait_for(|up| *up).await.is_err() {
        return;
    }
    let connected_at = std::time::Instant::now();
    subscription.want_keyframe();
    let codec = subscription.codec();
    let video = codec != Codec::Opus;
    let mut clock = RtpClock::new(rand::random(), codec.clock_rate());
    let mut sequence: u16 = rand::random();
    let mut first = true;
    while let Some(frame) = subscription.next().await {
        if first && video {
            info!(
                ?codec,
                waited_ms = connected_at.elapsed().as_millis() as u64,
                "first keyframe sent to the viewer"
            );
        }
        first = false;
        let timestamp = clock.timestamp(&frame);
        let payloads = frame.payloads(|data| packetize(codec, data));
        let last = payloads.len().saturating_sub(1);
        for (i, payload) in payloads.iter().cloned().enumerate() {
            let packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    // Video marks the last packet of a picture.
                    marker: video && i == last,
                    sequence_number: sequence,
                    timestamp,
                    ..Default::default()
                },
                payload,
            };
            sequence = sequence.wrapping_add(1);
            if let Err(err) = track.write_rtp(&packet).await {
                debug!(%err, "track closed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn offers_are_read_with_readable_errors() {
        let err = check_offer("nonsense").unwrap_err().to_string();
        assert!(err.contains("not valid SDP"), "{err}");
        let audio_only =
            format!("{HEAD}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n");
        let err = check_offer(&audio_only).unwrap_err().to_string();
        assert!(err.contains("no video"), "{err}");
    }

    #[test]
    fn unknown_bandwidth_types_are_ignored() {
        // RTCP bandwidth (RFC 3556) as some SIP gateways send it: sdp 0.10 refused any
        // type but CT, AS and TIAS; RFC 8866 says to ignore the ones a parser does not know.
        let offer = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\nb=RS:0\r\nb=RR:0\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n"
        );
        assert!(check_offer(&offer).unwrap().h264);
    }

    #[test]
    fn safari_firefox_and_vp8_only_offers() {
        // Safari: constrained baseline, mode 1 and mode 0.
        let safari = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96 98\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\na=rtpmap:98 H264/90000\r\na=fmtp:98 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n"
        );
        assert!(check_offer(&safari).unwrap().h264);
        // Firefox: VP8 and VP9 first, then H.264 in mode 1 and mode 0.
        let firefox = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 126 97\r\na=rtpmap:120 VP8/90000\r\na=rtpmap:121 VP9/90000\r\na=rtpmap:126 H264/90000\r\na=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1\r\na=rtpmap:97 H264/90000\r\na=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1\r\na=rtpmap:124 rtx/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=rtpmap:109 opus/48000/2\r\n"
        );
        assert_eq!(
            check_offer(&firefox).unwrap(),
            OfferSummary {
                h264: true,
                vp8: true,
                opus: true
            }
        );
        // Only mode 0 is not enough: we send FU-A fragments.
        let mode0 = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 H264/90000\r\na=fmtp:98 packetization-mode=0;profile-level-id=42e01f\r\n"
        );
        assert!(!check_offer(&mode0).unwrap().h264);
        let vp8 = format!(
            "{HEAD}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\nm=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=rtpmap:109 opus/48000/2\r\n"
        );
        assert_eq!(
            check_offer(&vp8).unwrap(),
            OfferSummary {
                h264: false,
                vp8: true,
                opus: true
            }
        );
    }
}
