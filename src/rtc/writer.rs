//! The media writers: one local track per stream of a call, fed from the shared encoders'
//! frames with our own RTP timestamps, and the RTCP reader behind each.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::api::media_engine::{MIME_TYPE_H264, MIME_TYPE_VP8};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::codecs::opus::OpusPayloader;
use webrtc::rtp::codecs::vp8::Vp8Payloader;
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

use super::clock::RtpClock;
use super::engine::{opus_capability, video_capability};
use crate::media::Codec;
use crate::media::fanout::Subscription;

/// Largest RTP payload; leaves room for headers, SRTP and tunnels under a 1500-byte MTU.
const RTP_PAYLOAD_MTU: usize = 1188;

/// Adds a track for `subscription`'s stream to `pc`, and starts the RTCP reader that turns
/// the viewer's PLI/FIR into keyframes and its REMB into the encoder's bitrate. With a
/// `direction` the track gets a transceiver of its own (an offer's); without, the one an
/// offer set later brings (an answer's).
pub(super) async fn add_track(
    pc: &RTCPeerConnection,
    subscription: &Subscription,
    h264_fmtp: &str,
    direction: Option<RTCRtpTransceiverDirection>,
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
    let sender = match direction {
        None => pc.add_track(track.clone()).await?,
        Some(direction) => {
            pc.add_transceiver_from_track(
                track.clone(),
                Some(RTCRtpTransceiverInit {
                    direction,
                    send_encodings: Vec::new(),
                }),
            )
            .await?
            .sender()
            .await
        }
    };
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

/// Writes a stream into `track` once the connection is up and `gate` (if any) is open,
/// starting at a fresh keyframe, with RTP timestamps from the encoder's presentation times.
/// Until then the subscription is not read: joining drops what queued meanwhile.
pub(super) async fn send_frames(
    track: Arc<TrackLocalStaticRTP>,
    mut subscription: Subscription,
    mut connected: watch::Receiver<bool>,
    gate: Option<watch::Receiver<bool>>,
) {
    if connected.wait_for(|up| *up).await.is_err() {
        return;
    }
    if let Some(mut gate) = gate
        && gate.wait_for(|open| *open).await.is_err()
    {
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
