//! Every encoder's quirks in one table, so the pipeline builder never special-cases an
//! encoder by name. Which of them a board gets here is [`super::choose`]'s business.
//!
//! What differs between encoders and lives here: the raw format they must be fed, their
//! low-latency settings, the bitrate's unit and property (and whether and how it can be
//! changed while the pipeline plays: [`EncoderQuirks::bitrate_update`]), the keyframe
//! interval's property, how a keyframe is forced, the caps to request after them so a
//! browser can decode what they emit (constrained baseline; a level for the encoders that
//! need one spelt out), and whether they need a hardware codec device.

use gstreamer as gst;
use gstreamer::prelude::*;
use thiserror::Error;

use super::Codec;

/// How to drive one encoder element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderQuirks {
    /// The GStreamer element name.
    pub element: &'static str,
    /// What it encodes.
    pub codec: Codec,
    /// The Debian package that ships the element (hint for a missing element).
    pub package: &'static str,
    /// Raw format the encoder must be fed.
    pub input_format: &'static str,
    /// Properties for low latency, as `name=value` pairs.
    pub low_latency: &'static str,
    /// How the bitrate is set when the pipeline is built.
    pub bitrate: BitrateControl,
    /// Whether the bitrate can be changed while the pipeline is PLAYING (see
    /// [`EncoderQuirks::bitrate_update`]).
    pub live_bitrate: bool,
    /// The property holding the keyframe interval in frames; `None` means the V4L2
    /// control `h264_i_frame_period` in `extra-controls`.
    pub gop_property: Option<&'static str>,
    /// How a keyframe is forced (a viewer joins, a PLI).
    pub keyframes: KeyframeForcing,
    /// Caps to request after the encoder, so browsers can decode what it emits; empty
    /// for none.
    pub output_caps: &'static str,
    /// Whether the H.264 level must be spelt out in the output caps (computed from the
    /// picture size and rate by [`h264_level`]); software encoders pick it themselves.
    pub level_in_caps: bool,
    /// Whether the encoder runs in hardware (one codec, so one pipeline can use it).
    pub hardware: bool,
    /// The codec device a hardware encoder needs, unless `video.encoder_device` says
    /// otherwise. It is probed with VIDIOC_QUERYCAP before the encoder is chosen.
    pub device: Option<&'static str>,
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

/// How a keyframe is forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeForcing {
    /// The element honours GStreamer's upstream force-key-unit event (sent from the
    /// appsink; SPS/PPS come with it when `all-headers` is set).
    ForceKeyUnitEvent,
    /// The element turns the force-key-unit event into the V4L2 control
    /// `V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME` on the codec: send the same event.
    ForceKeyUnitEventToV4l2Control,
}

/// How to change a running encoder's bitrate; made by [`EncoderQuirks::bitrate_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BitrateUpdate {
    /// Set the property `name` to `value` (already in the encoder's unit). Use
    /// [`BitrateUpdate::apply`], which converts to the property's own integer type.
    Property {
        /// The property.
        name: &'static str,
        /// The value in the property's unit (kbit/s or bit/s).
        value: u64,
    },
    /// Set `extra-controls` to this structure, e.g. `controls,video_bitrate=1500000`:
    /// v4l2 encoders apply it to the open device at once. Only the bitrate is in it; the
    /// GOP and header controls set when the pipeline started stay in force.
    ExtraControls(String),
    /// The encoder cannot change its bitrate while playing: rebuild the pipeline with the
    /// new `bitrate_kbps` instead.
    Rebuild,
}

/// Every encoder peercam knows: the H.264 ones (best first within each kind) and the VP8
/// one used for callers without H.264.
pub const ENCODERS: &[EncoderQuirks] = &[
    EncoderQuirks {
        element: "x264enc",
        codec: Codec::H264,
        package: "gstreamer1.0-plugins-ugly",
        // x264enc picks 4:4:4 High without I420 in front, which browsers do not decode.
        input_format: "I420",
        low_latency: "tune=zerolatency speed-preset=ultrafast byte-stream=true",
        bitrate: BitrateControl::KbitProperty("bitrate"),
        live_bitrate: true,
        gop_property: Some("key-int-max"),
        keyframes: KeyframeForcing::ForceKeyUnitEvent,
        output_caps: "video/x-h264,profile=constrained-baseline",
        level_in_caps: false,
        hardware: false,
        device: None,
    },
    EncoderQuirks {
        element: "openh264enc",
        codec: Codec::H264,
        package: "gstreamer1.0-plugins-bad",
        input_format: "I420",
        low_latency: "usage-type=camera rate-control=bitrate complexity=low",
        bitrate: BitrateControl::BitProperty("bitrate"),
        live_bitrate: true,
        gop_property: Some("gop-size"),
        keyframes: KeyframeForcing::ForceKeyUnitEvent,
        output_caps: "video/x-h264,profile=constrained-baseline",
        level_in_caps: false,
        hardware: false,
        device: None,
    },
    EncoderQuirks {
        element: "v4l2h264enc",
        codec: Codec::H264,
        package: "gstreamer1.0-plugins-good",
        input_format: "I420",
        low_latency: "",
        bitrate: BitrateControl::V4l2ExtraControl,
        live_bitrate: true,
        gop_property: None,
        keyframes: KeyframeForcing::ForceKeyUnitEventToV4l2Control,
        // The bcm2835 codec needs profile and level fixed downstream to negotiate.
        output_caps: "video/x-h264,profile=constrained-baseline",
        level_in_caps: true,
        hardware: true,
        device: Some("/dev/video11"),
    },
    EncoderQuirks {
        element: "vp8enc",
        codec: Codec::Vp8,
        package: "gstreamer1.0-plugins-good",
        input_format: "I420",
        low_latency: "deadline=1 cpu-used=8 end-usage=cbr error-resilient=partitions",
        bitrate: BitrateControl::BitProperty("target-bitrate"),
        // Not flagged as mutable in PLAYING, but vpxenc reconfigures libvpx when set.
        live_bitrate: true,
        gop_property: Some("keyframe-max-dist"),
        keyframes: KeyframeForcing::ForceKeyUnitEvent,
        output_caps: "",
        level_in_caps: false,
        hardware: false,
        device: None,
    },
];

/// The quirks of the encoder named `element`, if peercam knows it (any codec).
pub fn quirks(element: &str) -> Option<&'static EncoderQuirks> {
    ENCODERS.iter().find(|e| e.element == element)
}

/// The quirks of the H.264 encoder named `element`.
pub fn h264_quirks(element: &str) -> Option<&'static EncoderQuirks> {
    quirks(element).filter(|q| q.codec == Codec::H264)
}

/// The H.264 encoders peercam knows.
pub fn h264_encoders() -> impl Iterator<Item = &'static EncoderQuirks> {
    ENCODERS.iter().filter(|q| q.codec == Codec::H264)
}

/// The VP8 encoder of the fallback branch.
pub fn vp8() -> &'static EncoderQuirks {
    quirks("vp8enc").expect("vp8enc is in the table")
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
                parts.push(format!("{name}={}", u64::from(bitrate_kbps) * 1000))
            }
            BitrateControl::V4l2ExtraControl => {
                controls.push(format!("video_bitrate={}", u64::from(bitrate_kbps) * 1000));
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

    /// The caps to put after the encoder for a picture of this size and rate, if any.
    pub fn output_caps_for(&self, width: u32, height: u32, fps: u32) -> Option<String> {
        if self.output_caps.is_empty() {
            return None;
        }
        Some(if self.level_in_caps {
            let level = h264_level(width, height, fps);
            match self.output_caps.split_once(',') {
                Some((media, rest)) => format!("{media},level=(string){level},{rest}"),
                None => format!("{},level=(string){level}", self.output_caps),
            }
        } else {
            self.output_caps.to_string()
        })
    }

    /// How to set a running encoder to `kbps`. Apply it to the encoder element with
    /// [`BitrateUpdate::apply`].
    pub fn bitrate_update(&self, kbps: u32) -> BitrateUpdate {
        if !self.live_bitrate {
            return BitrateUpdate::Rebuild;
        }
        match self.bitrate {
            BitrateControl::KbitProperty(name) => BitrateUpdate::Property {
                name,
                value: u64::from(kbps),
            },
            BitrateControl::BitProperty(name) => BitrateUpdate::Property {
                name,
                value: u64::from(kbps) * 1000,
            },
            BitrateControl::V4l2ExtraControl => BitrateUpdate::ExtraControls(format!(
                "controls,video_bitrate={}",
                u64::from(kbps) * 1000
            )),
        }
    }
}

/// Why a bitrate update did not reach the encoder.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BitrateError {
    /// The quirks name a property the element does not have.
    #[error("{element} has no property {name:?}")]
    NoProperty {
        /// The element's name in the pipeline.
        element: String,
        /// The property.
        name: &'static str,
    },
    /// The property is not an integer.
    #[error("{element}'s {name:?} is a {type_name}, not an integer")]
    NotInteger {
        /// The element's name in the pipeline.
        element: String,
        /// The property.
        name: &'static str,
        /// Its GLib type.
        type_name: String,
    },
    /// The `extra-controls` text does not parse.
    #[error("{0:?} is not a GStreamer structure")]
    NotStructure(String),
    /// The encoder takes a new bitrate only when the pipeline is rebuilt.
    #[error("{0} cannot change its bitrate while playing")]
    Rebuild(String),
}

impl BitrateUpdate {
    /// Applies the update to a running encoder element, converting the value to the
    /// property's integer type and clamping it to the property's range. Returns an error
    /// for [`BitrateUpdate::Rebuild`], an unknown property or a malformed structure.
    pub fn apply(&self, element: &gst::Element) -> Result<(), BitrateError> {
        match self {
            BitrateUpdate::Property { name, value } => {
                let Some(pspec) = element.find_property(name) else {
                    return Err(BitrateError::NoProperty {
                        element: element.name().to_string(),
                        name,
                    });
                };
                let v = *value;
                let t = pspec.value_type();
                if let Some(p) = pspec.downcast_ref::<gst::glib::ParamSpecUInt>() {
                    let v = v.clamp(p.minimum().into(), p.maximum().into()) as u32;
                    element.set_property(name, v);
                } else if let Some(p) = pspec.downcast_ref::<gst::glib::ParamSpecInt>() {
                    let v = (v.min(i32::MAX as u64) as i32).clamp(p.minimum(), p.maximum());
                    element.set_property(name, v);
                } else if let Some(p) = pspec.downcast_ref::<gst::glib::ParamSpecUInt64>() {
                    element.set_property(name, v.clamp(p.minimum(), p.maximum()));
                } else if let Some(p) = pspec.downcast_ref::<gst::glib::ParamSpecInt64>() {
                    let v = (v.min(i64::MAX as u64) as i64).clamp(p.minimum(), p.maximum());
                    element.set_property(name, v);
                } else {
                    return Err(BitrateError::NotInteger {
                        element: element.name().to_string(),
                        name,
                        type_name: t.to_string(),
                    });
                }
                Ok(())
            }
            BitrateUpdate::ExtraControls(text) => {
                let structure: gst::Structure = text
                    .parse()
                    .map_err(|_| BitrateError::NotStructure(text.clone()))?;
                element.set_property("extra-controls", structure);
                Ok(())
            }
            BitrateUpdate::Rebuild => Err(BitrateError::Rebuild(element.name().to_string())),
        }
    }
}

/// The lowest H.264 level (at least 3.1, what every browser accepts) whose frame size
/// and macroblock rate hold `width`x`height` at `fps`.
pub fn h264_level(width: u32, height: u32, fps: u32) -> &'static str {
    // (level, max frame size in macroblocks, max macroblocks per second), Table A-1.
    const LEVELS: &[(&str, u64, u64)] = &[
        ("3.1", 3_600, 108_000),
        ("3.2", 5_120, 216_000),
        ("4", 8_192, 245_760),
        ("4.2", 8_704, 522_240),
        ("5", 22_080, 589_824),
        ("5.1", 36_864, 983_040),
        ("5.2", 36_864, 2_073_600),
    ];
    let mbs = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let rate = mbs * u64::from(fps);
    LEVELS
        .iter()
        .find(|(_, fs, mbps)| mbs <= *fs && rate <= *mbps)
        .map_or("5.2", |(level, _, _)| level)
}

/// The SDP `profile-level-id` of constrained baseline at [`h264_level`] for this size
/// and rate: `42e01f` for 720p30 and below (what Safari asks for).
pub fn profile_level_id(width: u32, height: u32, fps: u32) -> String {
    let idc = match h264_level(width, height, fps) {
        "3.1" => 31,
        "3.2" => 32,
        "4" => 40,
        "4.2" => 42,
        "5" => 50,
        "5.1" => 51,
        _ => 52,
    };
    format!("42e0{idc:02x}")
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

    #[test]
    fn vp8_is_not_an_h264_encoder() {
        assert!(quirks("vp8enc").is_some());
        assert!(h264_quirks("vp8enc").is_none());
        let launch = vp8().launch(1000, 60);
        assert!(launch.contains("target-bitrate=1000000"), "{launch}");
        assert!(launch.contains("keyframe-max-dist=60"), "{launch}");
    }

    #[test]
    fn levels_follow_size_and_rate() {
        assert_eq!(h264_level(640, 480, 30), "3.1");
        assert_eq!(h264_level(1280, 720, 30), "3.1");
        assert_eq!(h264_level(1280, 720, 60), "3.2");
        assert_eq!(h264_level(1920, 1080, 30), "4");
        assert_eq!(profile_level_id(1280, 720, 30), "42e01f");
        assert_eq!(profile_level_id(1920, 1080, 30), "42e028");
        let caps = quirks("v4l2h264enc")
            .unwrap()
            .output_caps_for(1280, 720, 30)
            .unwrap();
        assert_eq!(
            caps,
            "video/x-h264,level=(string)3.1,profile=constrained-baseline"
        );
        let caps = quirks("x264enc")
            .unwrap()
            .output_caps_for(1920, 1080, 30)
            .unwrap();
        assert_eq!(caps, "video/x-h264,profile=constrained-baseline");
        assert_eq!(vp8().output_caps_for(1280, 720, 30), None);
    }

    #[test]
    fn bitrate_updates_use_each_encoders_unit() {
        assert_eq!(
            quirks("x264enc").unwrap().bitrate_update(1200),
            BitrateUpdate::Property {
                name: "bitrate",
                value: 1200
            }
        );
        assert_eq!(
            quirks("openh264enc").unwrap().bitrate_update(1200),
            BitrateUpdate::Property {
                name: "bitrate",
                value: 1_200_000
            }
        );
        assert_eq!(
            vp8().bitrate_update(1200),
            BitrateUpdate::Property {
                name: "target-bitrate",
                value: 1_200_000
            }
        );
        assert_eq!(
            quirks("v4l2h264enc").unwrap().bitrate_update(1200),
            BitrateUpdate::ExtraControls("controls,video_bitrate=1200000".into())
        );
    }

    #[test]
    fn bitrate_updates_apply_to_real_elements() {
        crate::media::init().unwrap();
        for (name, property, kbps, expect) in [
            ("x264enc", "bitrate", 1234u32, 1234u64),
            ("openh264enc", "bitrate", 1234, 1_234_000),
            ("vp8enc", "target-bitrate", 1234, 1_234_000),
        ] {
            let Ok(element) = gst::ElementFactory::make(name).build() else {
                continue;
            };
            quirks(name)
                .unwrap()
                .bitrate_update(kbps)
                .apply(&element)
                .unwrap();
            let got: u64 = match element.property_value(property).get::<u32>() {
                Ok(v) => v.into(),
                Err(_) => element.property::<i32>(property) as u64,
            };
            assert_eq!(got, expect, "{name}");
        }
        let element = gst::ElementFactory::make("x264enc")
            .name("h264enc")
            .build()
            .unwrap();
        assert_eq!(
            BitrateUpdate::Rebuild.apply(&element),
            Err(BitrateError::Rebuild("h264enc".into()))
        );
        let missing = BitrateUpdate::Property {
            name: "no-such-bitrate",
            value: 1,
        };
        assert_eq!(
            missing.apply(&element).unwrap_err().to_string(),
            "h264enc has no property \"no-such-bitrate\""
        );
        let not_int = BitrateUpdate::Property {
            name: "tune",
            value: 1,
        };
        assert!(matches!(
            not_int.apply(&element),
            Err(BitrateError::NotInteger { name: "tune", .. })
        ));
    }
}
