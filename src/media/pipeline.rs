//! The camera pipeline's description: source → convert → encoder → h264parse → appsink,
//! built from the board's settings (and the on-demand VP8 branch). It runs as a
//! [`super::running::GstSource`].

use anyhow::{anyhow, bail};
use gstreamer as gst;

use super::settings::{InputFormat, SourceKind, VideoSettings};
use super::{encode, names};

/// How the camera pipeline will be built on this machine, with the reasons for each
/// choice; [`describe`] is its `description`.
#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The `gst-launch` description: appsink [`names::H264_SINK`] (H.264 access units)
    /// and, when `vp8` is true, appsink [`names::VP8_SINK`] behind the closed valve
    /// [`names::VP8_VALVE`].
    pub description: String,
    /// The input format in use (never `auto`).
    pub input: InputFormat,
    /// Why that input format.
    pub input_note: String,
    /// The H.264 encoder; `None` when the camera's own H.264 is passed through.
    pub encoder: Option<&'static encode::EncoderQuirks>,
    /// Encoders skipped before the chosen one, each with the reason.
    pub skipped: Vec<String>,
    /// Whether the description has the VP8 branch.
    pub vp8: bool,
}

impl PipelinePlan {
    /// The element name of the H.264 encoder, or "passthrough".
    pub fn encoder_name(&self) -> &'static str {
        self.encoder.map_or("passthrough", |q| q.element)
    }
}

/// Plans the camera pipeline for these settings here: resolves the input format (asking
/// a V4L2 camera for `auto`) and chooses the encoder ([`super::choose::choose_encoder`]).
pub fn plan(video: &VideoSettings) -> anyhow::Result<PipelinePlan> {
    let (input, input_note) = super::input_format::resolve_input_format(video);
    let (encoder, skipped) = if input == InputFormat::H264 {
        (None, Vec::new())
    } else {
        let (quirks, skipped) = super::choose::choose_encoder(video)?;
        (Some(quirks), skipped)
    };
    Ok(PipelinePlan {
        description: compose(video, input, encoder)?,
        vp8: video.vp8_fallback && input != InputFormat::H264,
        input,
        input_note,
        encoder,
        skipped,
    })
}

/// The `gst-launch` description of the camera pipeline for these settings, with the
/// encoder [`super::choose::choose_encoder`] picks here. [`plan`] says what was chosen and why.
pub fn describe(video: &VideoSettings) -> anyhow::Result<String> {
    Ok(plan(video)?.description)
}

/// Quotes a value for a `gst-launch` description (settings validation keeps `"` out).
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('"', ""))
}

/// The description for a resolved input format and encoder, without looking at the
/// machine. Raw pictures go into the tee [`names::RAW_TEE`], so more encoder branches can
/// hang off it: the H.264 one into appsink [`names::H264_SINK`], and with `vp8_fallback` a
/// VP8 one behind the closed valve [`names::VP8_VALVE`] into appsink [`names::VP8_SINK`].
/// H.264 from the camera goes straight to [`names::H264_SINK`].
pub fn compose(
    video: &VideoSettings,
    input: InputFormat,
    encoder: Option<&encode::EncoderQuirks>,
) -> anyhow::Result<String> {
    let size = format!(
        "width={},height={},framerate={}/1",
        video.width, video.height, video.fps
    );
    let raw_caps = format!("video/x-raw,{size}");
    let h264_out = format!(
        "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au ! \
         appsink name={} sync=false max-buffers=8 drop=true",
        names::H264_SINK
    );
    let source = match video.source {
        SourceKind::Test if video.stamp => format!(
            // The stamp is drawn into I420 by a probe on `stamp` (src/media/stamp.rs).
            "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! video/x-raw,format=I420,{size} ! \
             identity name={} silent=true ! \
             clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 40\" halignment=right valignment=bottom",
            super::stamp::ELEMENT
        ),
        SourceKind::Test => format!(
            "videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! {raw_caps} ! \
             clockoverlay time-format=\"%H:%M:%S\" font-desc=\"Sans 40\" halignment=right valignment=bottom"
        ),
        SourceKind::V4l2 => {
            let device = quoted(video.device.as_deref().unwrap_or("/dev/video0"));
            match input {
                InputFormat::H264 => format!("v4l2src device={device} ! video/x-h264,{size}"),
                InputFormat::Mjpeg => {
                    format!("v4l2src device={device} ! image/jpeg,{size} ! jpegdec")
                }
                InputFormat::Raw | InputFormat::Auto => {
                    format!("v4l2src device={device} ! {raw_caps}")
                }
            }
        }
        SourceKind::Libcamera => match &video.device {
            Some(camera) => format!("libcamerasrc camera-name={} ! {raw_caps}", quoted(camera)),
            None => format!("libcamerasrc ! {raw_caps}"),
        },
    };
    if input == InputFormat::H264 {
        if video.source != SourceKind::V4l2 {
            bail!("H.264 passthrough needs a V4L2 camera");
        }
        return Ok(format!("{source} ! {h264_out}"));
    }
    let quirks = encoder.ok_or_else(|| anyhow!("raw pictures need an H.264 encoder"))?;
    let out_caps = quirks
        .output_caps_for(video.width, video.height, video.fps)
        .map(|caps| format!(" ! {caps}"))
        .unwrap_or_default();
    let queue = "queue max-size-buffers=2 leaky=downstream";
    let mut description = format!(
        "{source} ! tee name={tee}  {tee}. ! {queue} ! videoconvert ! video/x-raw,format={input} ! \
         {encoder}{out_caps} ! {h264_out}",
        tee = names::RAW_TEE,
        input = quirks.input_format,
        encoder = quirks.launch(video.bitrate_kbps, video.keyframe_interval),
    );
    if video.vp8_fallback {
        // async=false: this sink gets nothing while the valve is closed, and a sink that
        // never prerolls would hold the whole pipeline out of PLAYING.
        let vp8 = encode::vp8();
        description.push_str(&format!(
            "  {tee}. ! {queue} ! valve name={valve} drop=true ! videoconvert ! \
             video/x-raw,format={input} ! {encoder} ! \
             appsink name={sink} sync=false async=false max-buffers=8 drop=true",
            tee = names::RAW_TEE,
            valve = names::VP8_VALVE,
            sink = names::VP8_SINK,
            input = vp8.input_format,
            encoder = vp8.launch(video.bitrate_kbps, video.keyframe_interval),
        ));
    }
    Ok(description)
}

/// The elements a pipeline for these settings and this input format needs besides the
/// encoders, each with the Debian package that ships it.
fn needed_elements(video: &VideoSettings, input: InputFormat) -> Vec<(&'static str, &'static str)> {
    let mut needed = match video.source {
        SourceKind::Test => vec![
            ("videotestsrc", "gstreamer1.0-plugins-base"),
            ("clockoverlay", "gstreamer1.0-x"),
        ],
        SourceKind::V4l2 => vec![("v4l2src", "gstreamer1.0-plugins-good")],
        SourceKind::Libcamera => vec![("libcamerasrc", "gstreamer1.0-libcamera")],
    };
    needed.extend([
        ("h264parse", "gstreamer1.0-plugins-bad"),
        ("appsink", "gstreamer1.0-plugins-base"),
    ]);
    if input == InputFormat::Mjpeg {
        needed.push(("jpegdec", "gstreamer1.0-plugins-good"));
    }
    if input != InputFormat::H264 {
        needed.extend([
            ("tee", "libgstreamer1.0-0"),
            ("queue", "libgstreamer1.0-0"),
            ("videoconvert", "gstreamer1.0-plugins-base"),
        ]);
        if video.vp8_fallback {
            needed.extend([
                ("valve", "libgstreamer1.0-0"),
                ("vp8enc", encode::vp8().package),
            ]);
        }
    }
    needed
}

impl PipelinePlan {
    /// Checks that every other element this plan needs is installed (the encoder was
    /// checked when it was chosen), with a message that says which package to install.
    pub fn check_elements(&self, video: &VideoSettings) -> anyhow::Result<()> {
        super::init()?;
        let problems: Vec<String> = needed_elements(video, self.input)
            .into_iter()
            .filter(|(element, _)| gst::ElementFactory::find(element).is_none())
            .map(|(element, package)| {
                format!("the GStreamer element {element:?} is missing: install {package}")
            })
            .collect();
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }
}
