//! What a receiver makes of a camera's track without decoding it: packets, bytes, pictures
//! (RTP marker bits), keyframes (H.264 IDR or VP8 key frames at the start of a picture)
//! and packets lost (gaps in the sequence numbers). `peercam call` prints it, so a camera
//! can be checked across a network from a terminal.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use webrtc::track::track_remote::TrackRemote;

/// The codecs a counter knows the keyframes of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceivedCodec {
    /// H.264 (RFC 6184 payloads).
    H264,
    /// VP8 (RFC 7741 payloads).
    Vp8,
    /// Anything else (Opus): pictures and keyframes are not counted.
    Other,
}

impl ReceivedCodec {
    /// The codec of a track by its MIME type (`video/H264`).
    pub fn from_mime(mime: &str) -> ReceivedCodec {
        match mime.to_ascii_lowercase().as_str() {
            "video/h264" => ReceivedCodec::H264,
            "video/vp8" => ReceivedCodec::Vp8,
            _ => ReceivedCodec::Other,
        }
    }
}

/// Counts of one received RTP stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RtpCount {
    /// The stream's codec.
    pub codec: ReceivedCodec,
    /// RTP packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Pictures completed (packets with the marker bit; video only).
    pub pictures: u64,
    /// Pictures that start a keyframe (video only).
    pub keyframes: u64,
    /// Packets missing between the ones received (a sequence-number gap), not reordering.
    pub lost: u64,
    /// How long the stream was read, in seconds.
    pub seconds: f64,
    #[serde(skip)]
    last_seq: Option<u16>,
    /// Whether a packet of the picture being received so far started a keyframe.
    #[serde(skip)]
    picture_is_key: bool,
}

impl RtpCount {
    /// Nothing received yet of a `codec` stream.
    pub fn new(codec: ReceivedCodec) -> RtpCount {
        RtpCount {
            codec,
            packets: 0,
            bytes: 0,
            pictures: 0,
            keyframes: 0,
            lost: 0,
            seconds: 0.0,
            last_seq: None,
            picture_is_key: false,
        }
    }

    /// Counts one packet: its sequence number, marker bit and payload.
    pub fn packet(&mut self, seq: u16, marker: bool, payload: &[u8]) {
        self.packets += 1;
        self.bytes += payload.len() as u64;
        if let Some(last) = self.last_seq {
            let ahead = seq.wrapping_sub(last);
            // Ahead by less than half the number space: new; otherwise late or repeated.
            if (1..0x8000).contains(&ahead) {
                self.lost += u64::from(ahead - 1);
                self.last_seq = Some(seq);
            }
        } else {
            self.last_seq = Some(seq);
        }
        if self.codec == ReceivedCodec::Other {
            return;
        }
        // The keyframe's start may come after the parameter sets in the same picture.
        self.picture_is_key |= self.starts_keyframe(payload);
        if marker {
            self.pictures += 1;
            if std::mem::take(&mut self.picture_is_key) {
                self.keyframes += 1;
            }
        }
    }

    /// Pictures per second over the time read.
    pub fn pictures_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.pictures as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Payload bit rate over the time read, in kbit/s.
    pub fn kbps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / 1000.0 / self.seconds
        } else {
            0.0
        }
    }

    fn starts_keyframe(&self, payload: &[u8]) -> bool {
        match self.codec {
            ReceivedCodec::H264 => h264_has_idr(payload),
            // RFC 7741: the payload descriptor, then the VP8 header whose lowest bit is 0
            // on a key frame.
            ReceivedCodec::Vp8 => vp8_header(payload).is_some_and(|h| h & 1 == 0),
            ReceivedCodec::Other => false,
        }
    }
}

/// Whether an H.264 RTP payload carries (the start of) an IDR slice: a single NAL unit of
/// type 5, a STAP-A holding one, or the first fragment of an FU-A of one. The SPS and PPS
/// that precede an IDR come in the same access unit, so the picture is counted once.
fn h264_has_idr(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR => true,
        STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + len) else {
                    return false;
                };
                if nal.first().is_some_and(|b| b & 0x1f == IDR) {
                    return true;
                }
                rest = &rest[2 + len..];
            }
            false
        }
        FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == IDR),
        _ => false,
    }
}

/// The first byte of the VP8 payload header after the RFC 7741 descriptor, when this
/// packet starts a partition 0 (S bit set, partition index 0).
fn vp8_header(payload: &[u8]) -> Option<u8> {
    let first = *payload.first()?;
    let starts = first & 0x10 != 0 && first & 0x07 == 0;
    if !starts {
        return None;
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(at)?;
        at += 1;
        if ext & 0x80 != 0 {
            // PictureID: one byte, or two when its M bit is set.
            let id = *payload.get(at)?;
            at += if id & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    payload.get(at).copied()
}

/// Whether `track` carries video.
pub fn is_video(track: &TrackRemote) -> bool {
    track.kind() == webrtc::rtp_transceiver::rtp_codec::RTPCodecType::Video
}

/// Reads `track` for `duration` (or until it ends) and counts what arrived.
pub async fn count(track: Arc<TrackRemote>, duration: Duration) -> RtpCount {
    let mut counted = RtpCount::new(ReceivedCodec::from_mime(
        &track.codec().capability.mime_type,
    ));
    let start = tokio::time::Instant::now();
    let deadline = start + duration;
    while let Ok(Ok((packet, _))) = tokio::time::timeout_at(deadline, track.read_rtp()).await {
        counted.packet(
            packet.header.sequence_number,
            packet.header.marker,
            &packet.payload,
        );
    }
    counted.seconds = start.elapsed().as_secs_f64();
    counted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_pictures_keyframes_and_losses_are_counted() {
        let mut count = RtpCount::new(ReceivedCodec::H264);
        // A keyframe as STAP-A (SPS, PPS, then not the IDR) + FU-A start of the IDR.
        count.packet(10, false, &[24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce]);
        count.packet(11, false, &[28, 0x85, 0xaa]);
        count.packet(12, true, &[28, 0x45, 0xbb]);
        // A P picture in one packet, then one after a gap of two packets.
        count.packet(13, true, &[0x41, 1, 2]);
        count.packet(16, true, &[0x41, 3, 4]);
        // A late, repeated packet changes nothing about losses.
        count.packet(15, true, &[0x41, 5]);
        assert_eq!(count.packets, 6);
        assert_eq!(count.keyframes, 1);
        assert_eq!(count.pictures, 4);
        assert_eq!(count.lost, 2);
    }

    #[test]
    fn an_idr_in_a_single_nal_or_in_a_stap_a_is_a_keyframe() {
        assert!(h264_has_idr(&[0x65, 1]));
        assert!(h264_has_idr(&[24, 0, 1, 0x67, 0, 1, 0x65]));
        assert!(!h264_has_idr(&[24, 0, 1, 0x67, 0, 9, 0x65]), "truncated");
        assert!(!h264_has_idr(&[28, 0x05, 1]), "a middle fragment");
        assert!(!h264_has_idr(&[]));
    }

    #[test]
    fn vp8_key_frames_are_read_past_the_descriptor() {
        let mut count = RtpCount::new(ReceivedCodec::Vp8);
        // X, S set; extension with a two-byte PictureID; VP8 header with P = 0 (key frame).
        count.packet(1, true, &[0x90, 0x80, 0x81, 0x02, 0x10]);
        // S set, no extension, P = 1 (inter frame).
        count.packet(2, true, &[0x10, 0x11]);
        assert_eq!((count.pictures, count.keyframes), (2, 1));
    }

    #[test]
    fn sequence_numbers_wrap_without_counting_a_loss() {
        let mut count = RtpCount::new(ReceivedCodec::Other);
        count.packet(65534, false, &[]);
        count.packet(65535, false, &[]);
        count.packet(0, false, &[]);
        count.packet(2, false, &[]);
        assert_eq!(count.lost, 1);
        assert_eq!(count.pictures, 0);
    }
}
