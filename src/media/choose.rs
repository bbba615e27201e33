//! Which H.264 encoder a board gets on this machine: the configured one, else the first
//! usable fallback, each tried against what is installed (GStreamer's registry) and, for
//! a hardware encoder, what the kernel offers ([`super::probe`]).

use gstreamer as gst;
use thiserror::Error;

use super::encode::{EncoderQuirks, h264_quirks};
use super::probe::{EncoderDeviceError, check_h264_encoder};
use super::settings::VideoSettings;

/// Why one encoder cannot run here.
#[derive(Debug, Error)]
pub enum Unusable {
    /// A hardware encoder's codec device is missing or is no H.264 encoder.
    #[error(transparent)]
    Device(#[from] EncoderDeviceError),
    /// A hardware encoder's element is not registered: GStreamer found no codec for it.
    #[error(
        "the GStreamer element {element} is not registered ({package} registers it only when the \
         kernel has a V4L2 H.264 encoder)"
    )]
    NotRegistered {
        /// The element.
        element: &'static str,
        /// The package that would register it.
        package: &'static str,
    },
    /// A software encoder's element is not installed.
    #[error("the GStreamer element {element} is not installed (apt install {package})")]
    NotInstalled {
        /// The element.
        element: &'static str,
        /// The package that ships it.
        package: &'static str,
    },
}

/// Why no encoder was chosen.
#[derive(Debug, Error)]
pub enum ChooseError {
    /// GStreamer itself would not start, so no element can be looked up.
    #[error("GStreamer could not start: {0}")]
    GStreamer(gst::glib::Error),
    /// Every encoder named was unusable.
    #[error("no usable H.264 encoder: {}", .skipped.join("; "))]
    NoneUsable {
        /// Each encoder tried, with why it was skipped (`name: reason`).
        skipped: Vec<String>,
    },
}

/// Picks the H.264 encoder for `video`: `encoder`, then each of `encoder_fallback` in
/// order, skipping one whose GStreamer element is not installed or (for a hardware
/// encoder) whose codec device is missing or is not a memory-to-memory H.264 encoder.
/// Returns the chosen encoder and, for each one skipped before it, why. Fails naming
/// every reason when none is usable.
pub fn choose_encoder(
    video: &VideoSettings,
) -> Result<(&'static EncoderQuirks, Vec<String>), ChooseError> {
    gst::init().map_err(ChooseError::GStreamer)?;
    choose_encoder_with(video, usable)
}

/// [`choose_encoder`] with the usability test passed in (for tests).
pub fn choose_encoder_with(
    video: &VideoSettings,
    usable: impl Fn(&EncoderQuirks, &VideoSettings) -> Result<(), Vec<Unusable>>,
) -> Result<(&'static EncoderQuirks, Vec<String>), ChooseError> {
    let mut skipped = Vec::new();
    let mut tried: Vec<&str> = Vec::new();
    for name in std::iter::once(&video.encoder).chain(&video.encoder_fallback) {
        if tried.contains(&name.as_str()) {
            continue;
        }
        tried.push(name);
        let Some(quirks) = h264_quirks(name) else {
            skipped.push(format!("{name}: not an H.264 encoder peercam knows"));
            continue;
        };
        match usable(quirks, video) {
            Ok(()) => return Ok((quirks, skipped)),
            Err(why) => {
                let why: Vec<String> = why.iter().map(ToString::to_string).collect();
                skipped.push(format!("{name}: {}", why.join(", and ")));
            }
        }
    }
    Err(ChooseError::NoneUsable { skipped })
}

/// Whether `quirks`' encoder can run here: its element is registered and, for a
/// hardware encoder, its codec device answers VIDIOC_QUERYCAP as an H.264 encoder.
fn usable(quirks: &EncoderQuirks, video: &VideoSettings) -> Result<(), Vec<Unusable>> {
    let mut why = Vec::new();
    if quirks.hardware
        && let Some(device) = video.encoder_device.as_deref().or(quirks.device)
        && let Err(e) = check_h264_encoder(device)
    {
        why.push(Unusable::Device(e));
    }
    if gst::ElementFactory::find(quirks.element).is_none() {
        let (element, package) = (quirks.element, quirks.package);
        why.push(if quirks.hardware {
            Unusable::NotRegistered { element, package }
        } else {
            Unusable::NotInstalled { element, package }
        });
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::settings::tests::dev_video;

    fn video(encoder: &str, fallback: &[&str]) -> VideoSettings {
        let mut v = dev_video();
        v.encoder = encoder.into();
        v.encoder_fallback = fallback.iter().map(|s| s.to_string()).collect();
        v
    }

    fn not_installed(q: &EncoderQuirks) -> Vec<Unusable> {
        vec![Unusable::NotInstalled {
            element: q.element,
            package: q.package,
        }]
    }

    #[test]
    fn choice_walks_the_fallbacks_and_says_why() {
        let v = video("v4l2h264enc", &["openh264enc", "x264enc"]);
        let (chosen, skipped) = choose_encoder_with(&v, |q, _| {
            if q.element == "x264enc" {
                Ok(())
            } else {
                Err(not_installed(q))
            }
        })
        .unwrap();
        assert_eq!(chosen.element, "x264enc");
        assert_eq!(
            skipped,
            [
                "v4l2h264enc: the GStreamer element v4l2h264enc is not installed (apt install gstreamer1.0-plugins-good)",
                "openh264enc: the GStreamer element openh264enc is not installed (apt install gstreamer1.0-plugins-bad)"
            ]
        );
        let err = choose_encoder_with(&v, |q, _| Err(not_installed(q))).unwrap_err();
        let ChooseError::NoneUsable { skipped } = &err else {
            panic!("{err}");
        };
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        let err = err.to_string();
        assert!(
            err.starts_with("no usable H.264 encoder: v4l2h264enc: "),
            "{err}"
        );
        for name in ["v4l2h264enc", "openh264enc", "x264enc"] {
            assert!(
                err.contains(&format!("{name}: the GStreamer element {name}")),
                "{err}"
            );
        }
        // The first choice wins when it is usable.
        let (chosen, skipped) = choose_encoder_with(&v, |_, _| Ok(())).unwrap();
        assert_eq!((chosen.element, skipped.len()), ("v4l2h264enc", 0));
    }

    #[test]
    fn every_reason_for_one_encoder_is_named() {
        let v = video("v4l2h264enc", &[]);
        let err = choose_encoder_with(&v, |q, _| {
            Err(vec![
                Unusable::Device(EncoderDeviceError::Missing("/dev/video11".into())),
                Unusable::NotRegistered {
                    element: q.element,
                    package: q.package,
                },
            ])
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "no usable H.264 encoder: v4l2h264enc: the codec device /dev/video11 does not exist \
             (no bcm2835-codec: a Pi 5 or not a Pi), and the GStreamer element v4l2h264enc is not \
             registered (gstreamer1.0-plugins-good registers it only when the kernel has a V4L2 \
             H.264 encoder)"
        );
    }

    #[test]
    fn hardware_encoder_falls_back_here() {
        // No /dev/video11 and no v4l2h264enc on a build machine.
        if std::path::Path::new("/dev/video11").exists() {
            return;
        }
        let mut v = video("v4l2h264enc", &["x264enc"]);
        v.encoder_device = Some("/dev/video11".into());
        let (chosen, skipped) = choose_encoder(&v).unwrap();
        assert_eq!(chosen.element, "x264enc");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("/dev/video11"), "{skipped:?}");
        assert!(
            skipped[0].contains("v4l2h264enc is not registered"),
            "{skipped:?}"
        );
    }
}
