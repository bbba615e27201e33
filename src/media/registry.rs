//! The video encoders in GStreamer's registry and the cameras libcamera's device provider
//! sees: what `peercam devices` lists beside the V4L2 nodes.

use gstreamer as gst;
use gstreamer::prelude::*;

/// An encoder element in GStreamer's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GstEncoder {
    /// The element name.
    pub element: String,
    /// `H.264` or `VP8`.
    pub codec: &'static str,
    /// The factory's long name.
    pub long_name: String,
    /// Whether the factory says it is a hardware encoder.
    pub hardware: bool,
}

/// The H.264 and VP8 encoders GStreamer has here, H.264 first.
pub fn gst_encoders() -> Vec<GstEncoder> {
    if super::init().is_err() {
        return Vec::new();
    }
    let mut found: Vec<GstEncoder> =
        gst::ElementFactory::factories_with_type(gst::ElementFactoryType::ENCODER, gst::Rank::NONE)
            .into_iter()
            .filter_map(|factory| {
                let codec = factory.static_pad_templates().iter().find_map(|t| {
                    if t.direction() != gst::PadDirection::Src {
                        return None;
                    }
                    t.caps().iter().find_map(|s| match s.name().as_str() {
                        "video/x-h264" => Some("H.264"),
                        "video/x-vp8" => Some("VP8"),
                        _ => None,
                    })
                })?;
                let element = factory.name().to_string();
                Some(GstEncoder {
                    hardware: factory.klass().contains("Hardware"),
                    long_name: factory.longname().to_string(),
                    codec,
                    element,
                })
            })
            .collect();
    found.sort_by(|a, b| (a.codec != "H.264", &a.element).cmp(&(b.codec != "H.264", &b.element)));
    found
}

/// The cameras libcamera sees, through its GStreamer device provider, if it is installed.
pub fn libcamera_cameras() -> Option<Vec<String>> {
    gst::ElementFactory::find("libcamerasrc")?;
    let provider = gst::DeviceProviderFactory::by_name("libcameraprovider")?;
    Some(
        provider
            .devices()
            .iter()
            .map(|d| d.display_name().to_string())
            .collect(),
    )
}
