//! The WebRTC stack every call shares: codecs, NACK and RTCP reports, ICE settings, and
//! the one DTLS certificate.

use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::dtls_transport::dtls_role::DTLSRole;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::certificate::RTCCertificate;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::{PayloadType, RTCPFeedback};

use crate::config::IceSettings;
use crate::media::Codec;

const VP8_PAYLOAD_TYPE: PayloadType = 96;
const OPUS_PAYLOAD_TYPE: PayloadType = 111;
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

/// RTP packets a sender keeps per stream to answer NACKs: about 2.5 s of 2 Mbit/s video,
/// far more than a round trip. webrtc-rs keeps 8192 by default, which at ~1.2 kB a packet
/// was most of the 7 MiB each viewer cost.
const NACK_HISTORY_LOG2: u8 = 9;

/// NACK feedback for video, with a sender history of [`NACK_HISTORY_LOG2`] packets.
fn configure_nack(mut registry: Registry, media: &mut MediaEngine) -> Registry {
    use webrtc::interceptor::nack::{generator::Generator, responder::Responder};
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

    /// Whether the board has a VP8 encoder for callers that offer no H.264.
    pub(super) fn vp8(&self) -> bool {
        self.vp8
    }
}

pub(super) fn video_capability(mime: &str, fmtp: &str) -> RTCRtpCodecCapability {
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

pub(super) fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.into(),
        rtcp_feedback: Vec::new(),
    }
}
