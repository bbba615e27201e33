//! Audio for an intercom: the board's microphone encoded once to Opus and shared like the
//! video, and each caller's voice played on the board's speaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::Deserialize;
use tracing::{debug, warn};
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::names;

/// Where the microphone's sound comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MicrophoneKind {
    /// The board has none: calls carry video only.
    #[default]
    None,
    /// A test tone (GStreamer's audiotestsrc).
    Test,
    /// An ALSA capture device.
    Alsa,
}

/// Where callers' voices go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeakerKind {
    /// The board has none: callers' audio is not received.
    #[default]
    None,
    /// Decoded and thrown away (tests, and checking the path without a speaker).
    Fake,
    /// An ALSA playback device.
    Alsa,
}

/// Microphone and speaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioSettings {
    /// The microphone.
    pub microphone: MicrophoneKind,
    /// ALSA device of the microphone.
    pub microphone_device: String,
    /// The speaker.
    pub speaker: SpeakerKind,
    /// ALSA device of the speaker.
    pub speaker_device: String,
    /// Opus bitrate.
    pub bitrate_kbps: u32,
}

impl Default for AudioSettings {
    fn default() -> Self {
        AudioSettings {
            microphone: MicrophoneKind::None,
            microphone_device: "default".into(),
            speaker: SpeakerKind::None,
            speaker_device: "default".into(),
            bitrate_kbps: 32,
        }
    }
}

impl AudioSettings {
    /// Whether calls can carry the board's sound.
    pub fn has_microphone(&self) -> bool {
        self.microphone != MicrophoneKind::None
    }

    /// Whether callers' sound is played.
    pub fn has_speaker(&self) -> bool {
        self.speaker != SpeakerKind::None
    }
}

/// The `gst-launch` description of the microphone pipeline, if the board has one.
pub fn describe_microphone(audio: &AudioSettings) -> Option<String> {
    let source = match audio.microphone {
        MicrophoneKind::None => return None,
        MicrophoneKind::Test => {
            "audiotestsrc is-live=true wave=sine freq=440 volume=0.1".to_owned()
        }
        MicrophoneKind::Alsa => format!("alsasrc device={}", quote(&audio.microphone_device)),
    };
    Some(format!(
        "{source} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 ! \
         opusenc bitrate={} frame-size=20 ! appsink name={} sync=false max-buffers=16 drop=true",
        audio.bitrate_kbps.saturating_mul(1000),
        names::OPUS_SINK,
    ))
}

fn quote(device: &str) -> String {
    format!("\"{}\"", device.replace('"', ""))
}

/// Plays one caller's Opus track until it ends.
pub struct Playback {
    pipeline: gst::Pipeline,
    task: tokio::task::JoinHandle<()>,
    played: Arc<AtomicU64>,
}

impl Playback {
    /// Starts playing `track` on the board's speaker.
    pub fn start(audio: &AudioSettings, track: Arc<TrackRemote>) -> anyhow::Result<Playback> {
        let sink = match audio.speaker {
            SpeakerKind::None => return Err(anyhow!("the board has no speaker")),
            SpeakerKind::Fake => format!("fakesink sync=false name={}", names::SPEAKER),
            SpeakerKind::Alsa => format!(
                "alsasink device={} name={}",
                quote(&audio.speaker_device),
                names::SPEAKER
            ),
        };
        let caps = format!(
            "application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload={}",
            track.payload_type()
        );
        let pipeline = gst::parse::launch(&format!(
            "appsrc name={rtp} is-live=true format=time do-timestamp=true caps=\"{caps}\" ! \
             rtpjitterbuffer latency=60 ! rtpopusdepay ! opusdec plc=true ! audioconvert ! \
             audioresample ! {sink}",
            rtp = names::CALLER_RTP,
        ))
        .context("cannot build the speaker pipeline")?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
        let src = pipeline
            .by_name(names::CALLER_RTP)
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| anyhow!("no appsrc"))?;
        let played = Arc::new(AtomicU64::new(0));
        let counter = played.clone();
        pipeline
            .by_name(names::SPEAKER)
            .and_then(|sink| sink.static_pad("sink"))
            .ok_or_else(|| anyhow!("no speaker sink pad"))?
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                counter.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        pipeline
            .set_state(gst::State::Playing)
            .context("the speaker pipeline did not start")?;
        let task = tokio::spawn(async move {
            let mut packets = 0u64;
            while let Ok((packet, _)) = track.read_rtp().await {
                let Ok(bytes) = packet.marshal() else {
                    continue;
                };
                if src.push_buffer(gst::Buffer::from_slice(bytes)).is_err() {
                    break;
                }
                packets += 1;
            }
            debug!(packets, "caller's audio ended");
        });
        Ok(Playback {
            pipeline,
            task,
            played,
        })
    }

    /// Decoded audio buffers the speaker has received so far (for status and tests).
    pub fn played_buffers(&self) -> u64 {
        self.played.load(Ordering::Relaxed)
    }
}

impl Drop for Playback {
    fn drop(&mut self) {
        self.task.abort();
        if let Err(err) = self.pipeline.set_state(gst::State::Null) {
            warn!(%err, "cannot stop the speaker pipeline");
        }
    }
}
