//! Which format a V4L2 camera is read in when `video.input_format` is `auto`: what the
//! camera offers at the configured size and rate ([`super::probe`]), H.264 first (no
//! encoder of ours), then raw, then MJPEG.

use std::path::Path;

use thiserror::Error;

use super::probe::{Format, probe};
use super::settings::{InputFormat, SourceKind, VideoSettings};

/// A camera offers nothing peercam can use at the wanted size and rate.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "the camera offers no usable format at {width}x{height} {fps} fps ({})",
    offered_text(.offered)
)]
pub struct NoUsableFormat {
    /// The wanted width.
    pub width: u32,
    /// The wanted height.
    pub height: u32,
    /// The wanted rate.
    pub fps: u32,
    /// What each usable format offers instead, e.g. `YUYV at 1280x720 only 10 fps`.
    pub offered: Vec<String>,
}

fn offered_text(offered: &[String]) -> String {
    if offered.is_empty() {
        "no raw, MJPEG or H.264 format at all".to_string()
    } else {
        offered.join("; ")
    }
}

/// Picks the input format for a camera: H.264 if it emits it at the size and rate (passed
/// through, no encoder of ours), else raw, else MJPEG; with why.
pub fn pick_input_format(
    formats: &[Format],
    width: u32,
    height: u32,
    fps: u32,
) -> Result<(InputFormat, String), NoUsableFormat> {
    for wanted in [InputFormat::H264, InputFormat::Raw, InputFormat::Mjpeg] {
        if let Some(f) = formats
            .iter()
            .find(|f| f.input_format() == Some(wanted) && f.offers(width, height, fps))
        {
            return Ok((
                wanted,
                format!(
                    "the camera offers {} ({}) at {width}x{height} {fps} fps",
                    f.fourcc, f.description
                ),
            ));
        }
    }
    let offered: Vec<String> = formats
        .iter()
        .filter(|f| f.input_format().is_some())
        .map(|f| {
            let sizes: Vec<String> = f
                .sizes
                .iter()
                .filter(|s| s.size.holds(width, height))
                .flat_map(|s| s.rates.iter().map(|r| format!("{r} fps")))
                .collect();
            if sizes.is_empty() {
                format!("{} not at {width}x{height}", f.fourcc)
            } else {
                format!("{} at {width}x{height} only {}", f.fourcc, sizes.join(", "))
            }
        })
        .collect();
    Err(NoUsableFormat {
        width,
        height,
        fps,
        offered,
    })
}

/// The input format `video` will use, and why: the configured one, or for `auto` what a
/// V4L2 camera offers (raw when it cannot be asked), raw for the other sources.
pub fn resolve_input_format(video: &VideoSettings) -> (InputFormat, String) {
    match (video.source, video.input_format) {
        (SourceKind::V4l2, InputFormat::Auto) => {
            let device = video.device.as_deref().unwrap_or("/dev/video0");
            match probe(Path::new(device)) {
                Ok(camera) => {
                    match pick_input_format(&camera.formats, video.width, video.height, video.fps) {
                        Ok((format, why)) => (format, format!("auto: {why}")),
                        Err(why) => (InputFormat::Raw, format!("auto: {why}; trying raw")),
                    }
                }
                Err(why) => (
                    InputFormat::Raw,
                    format!("auto: cannot ask the camera ({why}); assuming raw"),
                ),
            }
        }
        (SourceKind::V4l2, format) => (format, "set in video.input_format".into()),
        (SourceKind::Test, _) => (InputFormat::Raw, "the test pattern is raw".into()),
        (SourceKind::Libcamera, _) => (InputFormat::Raw, "libcamera delivers raw frames".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::probe::{Rate, Size, SizeRates};

    fn format(fourcc: &str, sizes: &[(u32, u32, &[u32])]) -> Format {
        Format {
            fourcc: fourcc.into(),
            description: fourcc.into(),
            compressed: fourcc != "YUYV",
            sizes: sizes
                .iter()
                .map(|(w, h, rates)| SizeRates {
                    size: Size::Discrete {
                        width: *w,
                        height: *h,
                    },
                    rates: rates.iter().map(|r| Rate::Discrete(1, *r)).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn auto_prefers_h264_then_raw_then_mjpeg_at_the_wanted_size_and_rate() {
        // A typical UVC webcam: YUYV 720p only at 10 fps, MJPEG 720p at 30.
        let webcam = [
            format("YUYV", &[(640, 480, &[30, 15]), (1280, 720, &[10])]),
            format("MJPG", &[(640, 480, &[30]), (1280, 720, &[30, 15])]),
        ];
        let (f, why) = pick_input_format(&webcam, 1280, 720, 30).unwrap();
        assert_eq!(f, InputFormat::Mjpeg, "{why}");
        assert_eq!(
            pick_input_format(&webcam, 640, 480, 30).unwrap().0,
            InputFormat::Raw
        );
        let mut h264cam = webcam.to_vec();
        h264cam.push(format("H264", &[(1280, 720, &[30])]));
        assert_eq!(
            pick_input_format(&h264cam, 1280, 720, 30).unwrap().0,
            InputFormat::H264
        );
        let err = pick_input_format(&webcam, 1920, 1080, 30).unwrap_err();
        assert_eq!(
            err.offered,
            ["YUYV not at 1920x1080", "MJPG not at 1920x1080"]
        );
        let err = pick_input_format(&webcam[..1], 1280, 720, 30)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the camera offers no usable format at 1280x720 30 fps (YUYV at 1280x720 only 10 fps)"
        );
        let err = pick_input_format(&[], 640, 480, 30)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("(no raw, MJPEG or H.264 format at all)"),
            "{err}"
        );
    }
}
