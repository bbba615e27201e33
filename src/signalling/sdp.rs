//! The phonebook's reading of an SDP offer: only enough to refuse what no camera could
//! answer (text that does not parse, an offer without video) with a clear reason before
//! it rings anybody. What the device makes of the offer (codecs, directions) is read in
//! `crate::rtc`; this uses the same `sdp` crate directly, so webrtc-rs stays there.

use thiserror::Error;

use super::protocol::MAX_SDP_BYTES;

/// Why an offer is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OfferError {
    /// Longer than [`MAX_SDP_BYTES`].
    #[error("the SDP is {0} bytes, over the limit of {MAX_SDP_BYTES}")]
    TooLarge(usize),
    /// Not SDP.
    #[error("the SDP does not parse ({0})")]
    Unparsable(String),
    /// Parses, but has nothing a camera could send.
    #[error("it has no video section")]
    NoVideo,
}

/// The media sections of an offer, by kind (`video`, `audio`, `application` …), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSections(pub Vec<String>);

/// Reads `sdp`: within the size limit, parseable, and with a video section.
pub fn check_offer(sdp: &str) -> Result<OfferSections, OfferError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(OfferError::TooLarge(sdp.len()));
    }
    let mut reader = std::io::Cursor::new(sdp.as_bytes());
    let parsed = ::sdp::SessionDescription::unmarshal(&mut reader)
        .map_err(|err| OfferError::Unparsable(err.to_string()))?;
    let sections: Vec<String> = parsed
        .media_descriptions
        .iter()
        .map(|m| m.media_name.media.clone())
        .collect();
    if !sections.iter().any(|kind| kind == "video") {
        return Err(OfferError::NoVideo);
    }
    Ok(OfferSections(sections))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:1\r\n";

    #[test]
    fn an_offer_with_video_is_read() {
        assert_eq!(
            check_offer(OFFER),
            Ok(OfferSections(vec!["audio".into(), "video".into()]))
        );
    }

    #[test]
    fn malformed_offers_are_refused_with_a_reason() {
        assert!(matches!(
            check_offer("hello"),
            Err(OfferError::Unparsable(_))
        ));
        assert_eq!(
            check_offer("v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"),
            Err(OfferError::NoVideo)
        );
        let audio_only = OFFER.split("m=video").next().unwrap();
        assert_eq!(check_offer(audio_only), Err(OfferError::NoVideo));
    }

    #[test]
    fn offers_over_the_limit_are_refused_before_parsing() {
        let long = format!("{OFFER}{}", "a=x\r\n".repeat(MAX_SDP_BYTES / 5));
        assert_eq!(check_offer(&long), Err(OfferError::TooLarge(long.len())));
    }
}
