//! The `[video]` settings: where the picture comes from and how it is encoded, with the
//! checks that need nothing but the settings themselves. Whether the elements are
//! installed here is the business of [`super::choose`] and the pipeline check.

use serde::Deserialize;
use thiserror::Error;

use super::encode;

/// Where the picture comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// GStreamer's test pattern with a clock.
    Test,
    /// A V4L2 camera (USB webcams).
    V4l2,
    /// A camera module through libcamera.
    Libcamera,
}

impl SourceKind {
    /// The name used in settings and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Test => "test",
            SourceKind::V4l2 => "v4l2",
            SourceKind::Libcamera => "libcamera",
        }
    }
}

/// How a V4L2 camera delivers its pictures (`video.input_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Ask the camera (VIDIOC_ENUM_FMT): H.264 if it emits it at the configured size and
    /// rate, else raw, else MJPEG. Raw for the test pattern and libcamera.
    #[default]
    Auto,
    /// Uncompressed frames (YUYV, NV12 …), converted and encoded here.
    Raw,
    /// Motion JPEG, decoded with `jpegdec` and encoded here.
    Mjpeg,
    /// H.264 from the camera, passed through with no encoder of ours.
    H264,
}

impl InputFormat {
    /// The name used in settings and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Auto => "auto",
            InputFormat::Raw => "raw",
            InputFormat::Mjpeg => "mjpeg",
            InputFormat::H264 => "h264",
        }
    }
}

/// Camera and encoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSettings {
    /// Where the picture comes from.
    pub source: SourceKind,
    /// The device node for `v4l2` (default /dev/video0); the camera name for `libcamera`
    /// (default: the first camera).
    #[serde(default)]
    pub device: Option<String>,
    /// How a `v4l2` camera delivers pictures: auto, raw, mjpeg or h264 (passthrough).
    #[serde(default)]
    pub input_format: InputFormat,
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// The first-choice H.264 encoder element, one of [`encode::ENCODERS`].
    pub encoder: String,
    /// Encoders tried in order when `encoder` is unavailable (element not installed, or
    /// a hardware codec device missing).
    #[serde(default)]
    pub encoder_fallback: Vec<String>,
    /// The codec device a hardware encoder is probed on (v4l2h264enc: /dev/video11 when
    /// not set). GStreamer picks the device itself; this only decides whether to use it.
    #[serde(default)]
    pub encoder_device: Option<String>,
    /// Target bitrate, where the encoder starts.
    pub bitrate_kbps: u32,
    /// Lowest bitrate adaptation may go to.
    #[serde(default = "default_min_bitrate")]
    pub min_bitrate_kbps: u32,
    /// Highest bitrate adaptation may go to.
    #[serde(default = "default_max_bitrate")]
    pub max_bitrate_kbps: u32,
    /// Frames between regular keyframes.
    pub keyframe_interval: u32,
    /// Whether a software VP8 encoder (behind a valve, idle until needed) may serve
    /// callers that offer no H.264.
    #[serde(default = "default_vp8_fallback")]
    pub vp8_fallback: bool,
    /// Draw the capture time into each frame of the test source (for latency
    /// measurements: src/media/stamp.rs).
    #[serde(default)]
    pub stamp: bool,
}

fn default_min_bitrate() -> u32 {
    300
}

fn default_max_bitrate() -> u32 {
    4000
}

fn default_vp8_fallback() -> bool {
    true
}

/// What is wrong with a `[video]` section.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VideoSettingsError {
    /// Width, height or rate is zero or beyond 8K.
    #[error("video size {width}x{height} at {fps} fps is out of range")]
    Size {
        /// `video.width`.
        width: u32,
        /// `video.height`.
        height: u32,
        /// `video.fps`.
        fps: u32,
    },
    /// More frames per second than any camera here delivers.
    #[error("video.fps {0} is out of range 1..240")]
    Fps(u32),
    /// `encoder` or an `encoder_fallback` entry is no H.264 encoder peercam knows.
    #[error("{key}: unknown encoder {name:?}; known H.264 encoders: {known}")]
    UnknownEncoder {
        /// `video.encoder` or `video.encoder_fallback`.
        key: &'static str,
        /// The name given.
        name: String,
        /// The known ones, comma-separated.
        known: String,
    },
    /// The target bitrate is outside what any encoder takes.
    #[error("bitrate_kbps {0} is out of range 50..50000")]
    Bitrate(u32),
    /// The adaptation bounds are outside what any encoder takes.
    #[error(
        "video.min_bitrate_kbps and max_bitrate_kbps must lie within 50..50000 (they are {min} and {max})"
    )]
    BitrateBounds {
        /// `video.min_bitrate_kbps`.
        min: u32,
        /// `video.max_bitrate_kbps`.
        max: u32,
    },
    /// The target is not between the bounds.
    #[error(
        "video bitrates must satisfy min_bitrate_kbps <= bitrate_kbps <= max_bitrate_kbps (they are {min} <= {target} <= {max})"
    )]
    BitrateOrder {
        /// `video.min_bitrate_kbps`.
        min: u32,
        /// `video.bitrate_kbps`.
        target: u32,
        /// `video.max_bitrate_kbps`.
        max: u32,
    },
    /// A keyframe interval of zero frames.
    #[error("keyframe_interval must be at least 1")]
    KeyframeInterval,
    /// MJPEG or H.264 input asked of a source that only delivers raw frames.
    #[error("video.input_format = {:?} needs video.source = \"v4l2\" (a USB camera)", .0.as_str())]
    InputNeedsV4l2(InputFormat),
    /// A device name that cannot go into a pipeline description.
    #[error("video.device {0:?} is not a usable device name")]
    Device(String),
    /// An encoder device that is not a path.
    #[error("video.encoder_device {0:?} must be a path such as /dev/video11")]
    EncoderDevice(String),
}

impl VideoSettings {
    /// Checks the video settings on their own (not whether the elements are installed).
    pub fn validate(&self) -> Result<(), VideoSettingsError> {
        use VideoSettingsError as E;
        let v = self;
        if v.width == 0 || v.height == 0 || v.fps == 0 || v.width > 7680 || v.height > 4320 {
            return Err(E::Size {
                width: v.width,
                height: v.height,
                fps: v.fps,
            });
        }
        if v.fps > 240 {
            return Err(E::Fps(v.fps));
        }
        let named = std::iter::once(("video.encoder", &v.encoder)).chain(
            v.encoder_fallback
                .iter()
                .map(|n| ("video.encoder_fallback", n)),
        );
        for (key, name) in named {
            if encode::h264_quirks(name).is_none() {
                return Err(E::UnknownEncoder {
                    key,
                    name: name.clone(),
                    known: encode::h264_encoders()
                        .map(|e| e.element)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        if !(50..=50_000).contains(&v.bitrate_kbps) {
            return Err(E::Bitrate(v.bitrate_kbps));
        }
        if v.min_bitrate_kbps < 50 || v.max_bitrate_kbps > 50_000 {
            return Err(E::BitrateBounds {
                min: v.min_bitrate_kbps,
                max: v.max_bitrate_kbps,
            });
        }
        if !(v.min_bitrate_kbps <= v.bitrate_kbps && v.bitrate_kbps <= v.max_bitrate_kbps) {
            return Err(E::BitrateOrder {
                min: v.min_bitrate_kbps,
                target: v.bitrate_kbps,
                max: v.max_bitrate_kbps,
            });
        }
        if v.keyframe_interval == 0 {
            return Err(E::KeyframeInterval);
        }
        if v.source != SourceKind::V4l2
            && matches!(v.input_format, InputFormat::Mjpeg | InputFormat::H264)
        {
            return Err(E::InputNeedsV4l2(v.input_format));
        }
        if let Some(device) = &v.device
            && (device.is_empty() || device.contains('"'))
        {
            return Err(E::Device(device.clone()));
        }
        if let Some(device) = &v.encoder_device
            && !device.starts_with('/')
        {
            return Err(E::EncoderDevice(device.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The dev board's `[video]` section, for tests of media that need settings.
    pub(crate) fn dev_video() -> VideoSettings {
        toml::from_str(
            "source = \"test\"\nwidth = 1280\nheight = 720\nfps = 30\nencoder = \"x264enc\"\n\
             bitrate_kbps = 2000\nkeyframe_interval = 60\n",
        )
        .expect("valid video settings")
    }

    #[test]
    fn defaults_fill_the_optional_keys_and_the_result_validates() {
        let v = dev_video();
        assert_eq!((v.min_bitrate_kbps, v.max_bitrate_kbps), (300, 4000));
        assert_eq!(v.input_format, InputFormat::Auto);
        assert!(v.vp8_fallback && !v.stamp);
        assert_eq!(v.validate(), Ok(()));
    }

    #[test]
    fn each_bad_value_gets_its_own_error_and_message() {
        let bad = |change: fn(&mut VideoSettings)| {
            let mut v = dev_video();
            change(&mut v);
            v.validate().unwrap_err()
        };
        assert_eq!(
            bad(|v| v.width = 0),
            VideoSettingsError::Size {
                width: 0,
                height: 720,
                fps: 30
            }
        );
        assert_eq!(bad(|v| v.fps = 241), VideoSettingsError::Fps(241));
        let err = bad(|v| v.encoder_fallback = vec!["vp8enc".into()]);
        assert_eq!(
            err.to_string(),
            "video.encoder_fallback: unknown encoder \"vp8enc\"; known H.264 encoders: \
             x264enc, openh264enc, v4l2h264enc"
        );
        assert_eq!(
            bad(|v| v.bitrate_kbps = 10),
            VideoSettingsError::Bitrate(10)
        );
        let err = bad(|v| v.min_bitrate_kbps = 3000);
        assert!(matches!(err, VideoSettingsError::BitrateOrder { .. }));
        assert!(
            err.to_string().contains("(they are 3000 <= 2000 <= 4000)"),
            "{err}"
        );
        assert_eq!(
            bad(|v| v.keyframe_interval = 0),
            VideoSettingsError::KeyframeInterval
        );
        let err = bad(|v| v.input_format = InputFormat::Mjpeg);
        assert_eq!(
            err.to_string(),
            "video.input_format = \"mjpeg\" needs video.source = \"v4l2\" (a USB camera)"
        );
        assert_eq!(
            bad(|v| v.device = Some("a\"b".into())),
            VideoSettingsError::Device("a\"b".into())
        );
        assert_eq!(
            bad(|v| v.encoder_device = Some("video11".into())),
            VideoSettingsError::EncoderDevice("video11".into())
        );
    }
}
