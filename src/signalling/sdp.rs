//! The phonebook's reading of an SDP offer: only enough to refuse what no camera could
//! answer (text that does not parse, an offer without video) with a clear reason before
//! it rings anybody; and the two edits WHEP makes to SDP text (candidates written into
//! an answer, candidates read from a trickled fragment). What the device makes of the offer (codecs, directions) is read in
//! `crate::rtc`; this uses the same `sdp` crate directly, so webrtc-rs stays there.

use thiserror::Error;

use super::protocol::{IceCandidate, MAX_SDP_BYTES};

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

/// Writes `candidates` into the media sections of `sdp` they belong to.
pub fn with_candidates(sdp: &str, candidates: &[IceCandidate]) -> String {
    if candidates.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + candidates.len() * 100);
    let mut section: Option<(u16, Option<String>)> = None;
    let mut index: u16 = 0;
    let flush = |out: &mut String, section: &Option<(u16, Option<String>)>| {
        if let Some((line_index, mid)) = section {
            for candidate in candidates.iter().filter(|c| {
                c.sdp_m_line_index == Some(*line_index)
                    || (c.sdp_m_line_index.is_none() && c.sdp_mid.is_some() && c.sdp_mid == *mid)
                    || (c.sdp_m_line_index.is_none() && c.sdp_mid.is_none() && *line_index == 0)
            }) {
                let line = candidate
                    .candidate
                    .strip_prefix("a=")
                    .unwrap_or(&candidate.candidate);
                out.push_str("a=");
                out.push_str(line);
                out.push_str("\r\n");
            }
            out.push_str("a=end-of-candidates\r\n");
        }
    };
    for line in sdp.lines() {
        if line.starts_with("m=") {
            flush(&mut out, &section);
            section = Some((index, None));
            index += 1;
        } else if let (Some(mid), Some((_, slot))) = (line.strip_prefix("a=mid:"), section.as_mut())
        {
            *slot = Some(mid.trim().to_owned());
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    flush(&mut out, &section);
    out
}

/// The candidates in a trickle-ice-sdpfrag body; `None` for `a=end-of-candidates`.
pub fn fragment_candidates(fragment: &str) -> Vec<Option<IceCandidate>> {
    let mut mid = None;
    let mut ufrag = None;
    let mut found = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("a=candidate:") {
            found.push(Some(IceCandidate {
                candidate: format!("candidate:{value}"),
                sdp_mid: mid.clone(),
                sdp_m_line_index: if mid.is_none() { Some(0) } else { None },
                username_fragment: ufrag.clone(),
            }));
        } else if line == "a=end-of-candidates" {
            found.push(None);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\na=sendonly\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n";

    fn candidate(text: &str, mid: Option<&str>, index: Option<u16>) -> IceCandidate {
        IceCandidate {
            candidate: text.into(),
            sdp_mid: mid.map(Into::into),
            sdp_m_line_index: index,
            username_fragment: None,
        }
    }

    #[test]
    fn candidates_land_in_their_sections() {
        let merged = with_candidates(
            ANSWER,
            &[
                candidate(
                    "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
                    Some("0"),
                    Some(0),
                ),
                candidate(
                    "candidate:2 1 udp 2130706431 127.0.0.1 5002 typ host",
                    Some("1"),
                    None,
                ),
            ],
        );
        let video = merged.split("m=audio").next().unwrap();
        let audio = merged.split("m=audio").nth(1).unwrap();
        assert!(video.contains("a=candidate:1 1 udp"), "{merged}");
        assert!(!video.contains("a=candidate:2"), "{merged}");
        assert!(audio.contains("a=candidate:2 1 udp"), "{merged}");
        assert_eq!(merged.matches("a=end-of-candidates").count(), 2);
        assert!(check_offer(&merged).is_ok());
    }

    #[test]
    fn no_candidates_leaves_the_answer_alone() {
        assert_eq!(with_candidates(ANSWER, &[]), ANSWER);
    }

    #[test]
    fn fragments_give_candidates_with_their_mid() {
        let fragment = "a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 1 10.0.0.2 4000 typ host\r\na=end-of-candidates\r\n";
        let found = fragment_candidates(fragment);
        assert_eq!(found.len(), 2);
        let first = found[0].as_ref().unwrap();
        assert_eq!(
            first.candidate,
            "candidate:1 1 udp 1 10.0.0.2 4000 typ host"
        );
        assert_eq!(first.sdp_mid.as_deref(), Some("0"));
        assert_eq!(first.username_fragment.as_deref(), Some("abcd"));
        assert!(found[1].is_none());
    }

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
