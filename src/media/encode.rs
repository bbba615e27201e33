//! Every encoder's quirks in one table, so the pipeline builder never special-cases an
//! encoder by name.

/// How to drive one H.264 encoder element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderQuirks {
    /// The GStreamer element name.
    pub element: &'static str,
    /// Raw format the encoder must be fed.
    pub input_format: &'static str,
    /// Properties for low latency, as `name=value` pairs.
    pub low_latency: &'static str,
    /// How the bitrate is set.
    pub bitrate: BitrateControl,
    /// The property holding the keyframe interval in frames, if any.
    pub gop_property: Option<&'static str>,
    /// Caps to request after the encoder, so browsers can decode what it emits.
    pub output_caps: &'static str,
    /// Whether the encoder runs in hardware (only one pipeline can use it).
    pub hardware: bool,
}

/// How an encoder takes its target bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitrateControl {
    /// A property in kbit/s.
    KbitProperty(&'static str),
    /// A property in bit/s.
    BitProperty(&'static str),
    /// A V4L2 control inside `extra-controls` (bit/s), as the Pi's v4l2h264enc needs on
    /// GStreamer before 1.30.
    V4l2ExtraControl,
}

/// The encoders peercam knows, best first within each kind.
pub const ENCODERS: &[EncoderQuirks] = &[
    EncoderQuirks {
        element: "x264enc",
        // x264enc picks 4:4:4 High without I420 in front, which browsers do not decode.
        input_format: "I420",
        low_latency: "tune=zerolatency speed-preset=ultrafast byte-stream=true",
        bitrate: BitrateControl::KbitProperty("bitrate"),
        gop_property: Some("key-int-max"),
        output_caps: "video/x-h264,profile=constrained-baseline",
        hardware: false,
    },
    EncoderQuirks {
        element: "openh264enc",
        input_format: "I420",
        low_latency: "usage-type=camera rate-control=bitrate complexity=low",
        bitrate: BitrateControl::BitProperty("bitrate"),
        gop_property: Some("gop-size"),
        output_caps: "video/x-h264,profile=constrained-baseline",
        hardware: false,
    },
    EncoderQuirks {
        element: "v4l2h264enc",
        input_format: "I420",
        low_latency: "",
        bitrate: BitrateControl::V4l2ExtraControl,
        gop_property: None,
        output_caps: "video/x-h264,level=(string)3.1,profile=constrained-baseline",
        hardware: true,
    },
];

/// The quirks of the encoder named `element`, if peercam knows it.
pub fn quirks(element: &str) -> Option<&'static EncoderQuirks> {
    ENCODERS.iter().find(|e| e.element == element)
}

impl EncoderQuirks {
    /// The encoder's part of a `gst-launch` description.
    pub fn launch(&self, bitrate_kbps: u32, keyframe_interval: u32) -> String {
        let mut parts = vec![self.element.to_string()];
        if !self.low_latency.is_empty() {
            parts.push(self.low_latency.to_string());
        }
        let mut controls = Vec::new();
        match self.bitrate {
            BitrateControl::KbitProperty(name) => parts.push(format!("{name}={bitrate_kbps}")),
            BitrateControl::BitProperty(name) => {
                parts.push(format!("{name}={}", bitrate_kbps.saturating_mul(1000)))
            }
            BitrateControl::V4l2ExtraControl => {
                controls.push(format!(
                    "video_bitrate={}",
                    bitrate_kbps.saturating_mul(1000)
                ));
            }
        }
        match self.gop_property {
            Some(name) => parts.push(format!("{name}={keyframe_interval}")),
            None => controls.push(format!("h264_i_frame_period={keyframe_interval}")),
        }
        if self.bitrate == BitrateControl::V4l2ExtraControl {
            // SPS/PPS before every IDR, so a viewer can start at any keyframe.
            controls.push("repeat_sequence_header=1".into());
            parts.push(format!(
                "extra-controls=\"controls,{}\"",
                controls.join(",")
            ));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x264_gets_kbit_and_gop() {
        let launch = quirks("x264enc").unwrap().launch(2000, 60);
        assert!(launch.contains("bitrate=2000"), "{launch}");
        assert!(launch.contains("key-int-max=60"), "{launch}");
    }

    #[test]
    fn v4l2_puts_bitrate_and_headers_in_extra_controls() {
        let launch = quirks("v4l2h264enc").unwrap().launch(1500, 30);
        assert!(
            launch.contains("extra-controls=\"controls,video_bitrate=1500000,h264_i_frame_period=30,repeat_sequence_header=1\""),
            "{launch}"
        );
    }

    #[test]
    fn openh264_takes_bits() {
        let launch = quirks("openh264enc").unwrap().launch(800, 30);
        assert!(launch.contains("bitrate=800000"), "{launch}");
    }
}
