//! `peercam call`: calls a camera from a terminal the way a page does and reports what
//! arrives (when it rang, was answered and connected, and the video's pictures, keyframes,
//! rate and losses), so a camera can be checked across a network without a browser.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::config::IceSettings;
use crate::media::Codec;
use crate::rtc::receive::{self, RtpCount};
use crate::rtc::{CallOptions, Caller, CallerEvent, RtcEngine};

/// What to call and for how long.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// The phonebook's WebSocket URL.
    pub phonebook: String,
    /// The callee to call.
    pub callee: String,
    /// The caller name the device shows.
    pub caller_name: String,
    /// A user token or passphrase, for a phonebook that asks for one.
    pub token: Option<String>,
    /// How long to wait for someone to answer.
    pub answer_timeout: Duration,
    /// How long to watch once the video arrives.
    pub watch: Duration,
    /// Also receive the camera's sound.
    pub audio: bool,
    /// ICE servers and interfaces.
    pub ice: IceSettings,
}

/// How the call went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    /// The callee called.
    pub callee: String,
    /// `watched`, `declined`, `ended`, `unanswered` or `failed`.
    pub outcome: &'static str,
    /// The reason the callee or the phonebook gave, if any.
    pub reason: Option<String>,
    /// Milliseconds from placing the call to each step, when it happened.
    pub ringing_ms: Option<u64>,
    /// Accepted.
    pub accepted_ms: Option<u64>,
    /// Media connection (ICE and DTLS) up.
    pub connected_ms: Option<u64>,
    /// The video track arrived.
    pub video_ms: Option<u64>,
    /// What arrived on the video track.
    pub video: Option<RtpCount>,
    /// What arrived on the audio track.
    pub audio: Option<RtpCount>,
    /// The device's data-channel events, as sent.
    pub events: Vec<String>,
}

impl CallReport {
    /// True when video arrived with at least one keyframe: a picture a viewer could show.
    pub fn ok(&self) -> bool {
        self.outcome == "watched"
            && self
                .video
                .as_ref()
                .is_some_and(|v| v.pictures > 0 && v.keyframes > 0)
    }
}

fn ms(since: Instant) -> Option<u64> {
    Some(since.elapsed().as_millis() as u64)
}

/// Places the call, watches for `watch` once video arrives, hangs up, and reports.
pub async fn run(request: CallRequest) -> anyhow::Result<CallReport> {
    let mut codecs = vec![Codec::H264, Codec::Vp8];
    if request.audio {
        codecs.push(Codec::Opus);
    }
    let engine = RtcEngine::caller(&request.ice, &codecs)?;
    let placed = Instant::now();
    let mut report = CallReport {
        callee: request.callee.clone(),
        outcome: "unanswered",
        ..CallReport::default()
    };
    let mut call = Caller::call_with(
        &engine,
        &request.phonebook,
        &request.callee,
        json!({ "callerName": request.caller_name }),
        CallOptions {
            receive_audio: request.audio,
            token: request.token.clone(),
            ..CallOptions::default()
        },
    )
    .await?;
    let answer_by = placed + request.answer_timeout;
    let mut video = None;
    let mut audio = None;
    // Until the video track arrives (and the audio one, when asked for and offered).
    while video.is_none() {
        let Some(left) = answer_by.checked_duration_since(Instant::now()) else {
            break;
        };
        let Some(event) = call.next(left).await else {
            break;
        };
        match event {
            CallerEvent::Ringing => report.ringing_ms = ms(placed),
            CallerEvent::Accepted => report.accepted_ms = ms(placed),
            CallerEvent::Connected => report.connected_ms = ms(placed),
            CallerEvent::Track(track) if receive::is_video(&track) => {
                report.video_ms = ms(placed);
                video = Some(track);
            }
            CallerEvent::Track(track) => audio = Some(track),
            CallerEvent::Data(text) => report.events.push(text),
            CallerEvent::DataOpen => {}
            CallerEvent::Declined(reason) => {
                report.outcome = "declined";
                report.reason = Some(reason);
                return Ok(report);
            }
            CallerEvent::Hangup(reason) | CallerEvent::Lost(reason) => {
                report.outcome = "ended";
                report.reason = Some(reason);
                return Ok(report);
            }
            CallerEvent::Error(message) => {
                report.outcome = "failed";
                report.reason = Some(message);
                return Ok(report);
            }
        }
    }
    let Some(video) = video else {
        call.hang_up("no answer in time").await;
        return Ok(report);
    };
    report.outcome = "watched";
    let counting_video = tokio::spawn(receive::count(video, request.watch));
    let counting_audio = audio.map(|track| tokio::spawn(receive::count(track, request.watch)));
    // Keep taking the call's events while the tracks are counted.
    let watch_until = Instant::now() + request.watch;
    while let Some(left) = watch_until.checked_duration_since(Instant::now()) {
        match call.next(left).await {
            Some(CallerEvent::Data(text)) => report.events.push(text),
            Some(CallerEvent::Hangup(reason) | CallerEvent::Lost(reason)) => {
                report.outcome = "ended";
                report.reason = Some(reason);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    // A call that ended early is closed first: that ends the tracks, and so the counting.
    let ended = report.outcome == "ended";
    let call = if ended {
        call.hang_up("peercam call: the call ended").await;
        None
    } else {
        Some(call)
    };
    report.video = counting_video.await.ok();
    if let Some(task) = counting_audio {
        report.audio = task.await.ok();
    }
    if let Some(call) = call {
        call.hang_up("peercam call: done watching").await;
    }
    Ok(report)
}

/// The report as lines for a person.
pub fn table(report: &CallReport) -> String {
    let mut out = String::new();
    let step = |out: &mut String, what: &str, at: Option<u64>| {
        if let Some(at) = at {
            let _ = writeln!(out, "{what:<12} after {at} ms");
        }
    };
    let _ = writeln!(out, "called       {:?}", report.callee);
    step(&mut out, "ringing", report.ringing_ms);
    step(&mut out, "accepted", report.accepted_ms);
    step(&mut out, "connected", report.connected_ms);
    step(&mut out, "video track", report.video_ms);
    for (what, stream) in [("video", &report.video), ("audio", &report.audio)] {
        if let Some(s) = stream {
            let _ = write!(
                out,
                "{what:<12} {:?}: {} packets, {:.0} kbit/s over {:.1} s, {} lost",
                s.codec,
                s.packets,
                s.kbps(),
                s.seconds,
                s.lost
            );
            if what == "video" {
                let _ = write!(
                    out,
                    "; {} pictures ({:.1} per second), {} keyframes",
                    s.pictures,
                    s.pictures_per_second(),
                    s.keyframes
                );
            }
            out.push('\n');
        }
    }
    for event in &report.events {
        let _ = writeln!(out, "event        {event}");
    }
    let _ = write!(out, "outcome      {}", report.outcome);
    if let Some(reason) = &report.reason {
        let _ = write!(out, " ({reason})");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtc::receive::ReceivedCodec;

    #[test]
    fn a_report_is_ok_only_with_pictures_and_a_keyframe() {
        let mut video = RtpCount::new(ReceivedCodec::H264);
        video.packet(1, true, &[0x65, 0]);
        video.seconds = 1.0;
        let report = CallReport {
            callee: "door".into(),
            outcome: "watched",
            ringing_ms: Some(3),
            accepted_ms: Some(40),
            video: Some(video.clone()),
            events: vec![r#"{"event":"accepted"}"#.into()],
            ..CallReport::default()
        };
        assert!(report.ok());
        let text = table(&report);
        assert!(text.contains("ringing      after 3 ms"), "{text}");
        assert!(
            text.contains("1 pictures (1.0 per second), 1 keyframes"),
            "{text}"
        );
        assert!(text.ends_with("outcome      watched\n"), "{text}");

        let declined = CallReport {
            outcome: "declined",
            reason: Some("Not now".into()),
            ..CallReport::default()
        };
        assert!(!declined.ok());
        assert!(table(&declined).ends_with("outcome      declined (Not now)\n"));
        let mut no_keyframe = video;
        no_keyframe.keyframes = 0;
        assert!(
            !CallReport {
                outcome: "watched",
                video: Some(no_keyframe),
                ..CallReport::default()
            }
            .ok()
        );
    }
}
