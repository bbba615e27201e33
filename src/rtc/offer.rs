//! Reading a caller's offer before any connection is made: is it SDP, does it have
//! video, and which of our codecs does it offer.

use anyhow::{anyhow, bail};

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
