//! What video hardware this machine has, for `peercam devices` and for the pipeline's
//! choices: the V4L2 nodes (cameras, and memory-to-memory codecs such as the Pi's
//! bcm2835-codec) through VIDIOC_QUERYCAP and the format, frame size and frame interval
//! enumerations; the H.264 and VP8 encoders in GStreamer's registry; and what a board
//! profile would pick here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use gstreamer as gst;
use gstreamer::prelude::*;
use v4l::capability::Flags as CapFlags;
use v4l::format::description::Flags as FormatFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;

use super::{encode, pipeline};
use crate::config::{InputFormat, Settings, SourceKind, VideoSettings};

/// V4L2 buffer types (videodev2.h).
const BUF_VIDEO_CAPTURE: u32 = 1;
const BUF_VIDEO_OUTPUT: u32 = 2;
const BUF_VIDEO_CAPTURE_MPLANE: u32 = 9;
const BUF_VIDEO_OUTPUT_MPLANE: u32 = 10;

/// Uncompressed formats v4l2src hands on as `video/x-raw` that videoconvert takes.
const RAW_FOURCCS: &[&str] = &[
    "YUYV", "UYVY", "YVYU", "VYUY", "NV12", "NV21", "NV16", "NV61", "YU12", "YV12", "422P", "Y41P",
    "RGB3", "BGR3", "RGBP", "XR24", "AR24", "BA24", "XB24", "GREY",
];

/// Compressed formats a codec can emit or take.
const CODED_FOURCCS: &[(&str, &str)] = &[
    ("H264", "H.264"),
    ("HEVC", "H.265"),
    ("VP80", "VP8"),
    ("VP90", "VP9"),
    ("MJPG", "MJPEG"),
    ("JPEG", "JPEG"),
    ("MPG2", "MPEG-2"),
    ("MPG4", "MPEG-4"),
];

/// What a V4L2 node is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A camera (or a capture interface such as the Pi's unicam, fed by libcamera).
    Capture,
    /// Per-frame metadata of a camera (UVC cameras have one beside the picture node).
    Metadata,
    /// A memory-to-memory encoder to these formats.
    Encoder(Vec<String>),
    /// A memory-to-memory decoder from these formats.
    Decoder(Vec<String>),
    /// A memory-to-memory converter or ISP.
    Converter,
    /// Anything else (output, radio …).
    Other,
}

/// A frame size a format offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Size {
    /// Exactly this size.
    Discrete {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Any size in a range, in steps.
    Stepwise {
        /// Smallest width.
        min_width: u32,
        /// Largest width.
        max_width: u32,
        /// Width step.
        step_width: u32,
        /// Smallest height.
        min_height: u32,
        /// Largest height.
        max_height: u32,
        /// Height step.
        step_height: u32,
    },
}

impl Size {
    /// Whether a picture of `width`x`height` fits this size.
    pub fn holds(&self, width: u32, height: u32) -> bool {
        match *self {
            Size::Discrete {
                width: w,
                height: h,
            } => (w, h) == (width, height),
            Size::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => {
                (min_width..=max_width).contains(&width)
                    && (min_height..=max_height).contains(&height)
                    && (width - min_width).is_multiple_of(step_width.max(1))
                    && (height - min_height).is_multiple_of(step_height.max(1))
            }
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Discrete { width, height } => write!(f, "{width}x{height}"),
            Size::Stepwise {
                min_width,
                max_width,
                step_width,
                min_height,
                max_height,
                step_height,
            } => write!(
                f,
                "{min_width}x{min_height} to {max_width}x{max_height} in steps of {step_width}x{step_height}"
            ),
        }
    }
}

/// Frame rates offered at one size, as frame intervals (seconds per frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rate {
    /// One interval `numerator/denominator` s.
    Discrete(u32, u32),
    /// Any interval from `min` to `max` (fractions) in steps of `step`.
    Stepwise {
        /// Shortest interval (fastest rate).
        min: (u32, u32),
        /// Longest interval (slowest rate).
        max: (u32, u32),
        /// Step.
        step: (u32, u32),
    },
}

fn fps_of((num, den): (u32, u32)) -> f64 {
    if num == 0 {
        0.0
    } else {
        f64::from(den) / f64::from(num)
    }
}

impl Rate {
    /// Whether this rate is (or, stepwise, includes) `fps` frames per second.
    pub fn holds(&self, fps: u32) -> bool {
        let fps = f64::from(fps);
        match *self {
            Rate::Discrete(num, den) => (fps_of((num, den)) - fps).abs() < 0.01,
            Rate::Stepwise { min, max, .. } => {
                fps <= fps_of(min) + 0.01 && fps + 0.01 >= fps_of(max)
            }
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |f: &mut std::fmt::Formatter<'_>, v: f64| {
            if (v - v.round()).abs() < 0.005 {
                write!(f, "{}", v.round())
            } else {
                write!(f, "{v:.2}")
            }
        };
        match *self {
            Rate::Discrete(num, den) => show(f, fps_of((num, den))),
            Rate::Stepwise { min, max, .. } => {
                show(f, fps_of(max))?;
                f.write_str("-")?;
                show(f, fps_of(min))
            }
        }
    }
}

/// One size of a format with the rates it offers there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeRates {
    /// The size.
    pub size: Size,
    /// Frame rates at that size (for a stepwise size: at the largest one).
    pub rates: Vec<Rate>,
}

/// One pixel format a node offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The four-character code, e.g. `YUYV`, `MJPG`, `H264`.
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Whether the format is compressed.
    pub compressed: bool,
    /// Sizes and rates (capture devices only).
    pub sizes: Vec<SizeRates>,
}

impl Format {
    /// What peercam's `video.input_format` calls this format, if peercam can use it.
    pub fn input_format(&self) -> Option<InputFormat> {
        match self.fourcc.as_str() {
            "H264" => Some(InputFormat::H264),
            "MJPG" | "JPEG" => Some(InputFormat::Mjpeg),
            f if RAW_FOURCCS.contains(&f) => Some(InputFormat::Raw),
            _ => None,
        }
    }

    /// Whether the format offers `width`x`height` at `fps`.
    pub fn offers(&self, width: u32, height: u32, fps: u32) -> bool {
        self.sizes
            .iter()
            .any(|s| s.size.holds(width, height) && s.rates.iter().any(|r| r.holds(fps)))
    }
}

/// A V4L2 node and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4l2Device {
    /// The node, e.g. `/dev/video0`.
    pub path: PathBuf,
    /// The driver, e.g. `uvcvideo`, `bcm2835-codec`.
    pub driver: String,
    /// The card, e.g. the webcam's name.
    pub card: String,
    /// Where it sits, e.g. `usb-0000:01:00.0-1.2`.
    pub bus: String,
    /// What it is for.
    pub role: Role,
    /// The formats it captures (for a codec: the formats it emits).
    pub formats: Vec<Format>,
    /// For a codec: the formats it takes.
    pub input_formats: Vec<Format>,
}

impl V4l2Device {
    /// True for the capture nodes libcamera drives (a CSI camera module): their raw
    /// Bayer frames are for libcamera, not for v4l2src.
    pub fn is_libcamera_node(&self) -> bool {
        matches!(
            self.driver.as_str(),
            "unicam" | "rp1-cfe" | "bcm2835-isp" | "pispbe"
        )
    }
}

/// The `/dev/video*` nodes, in number order.
pub fn video_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, entry.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, path)| path).collect()
}

/// Opens a node, with an error that says what to do.
fn open(path: &Path) -> Result<v4l::Device, String> {
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    v4l::Device::with_path(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot open {}: permission denied (add the user to the group video)",
            path.display()
        ),
        _ => format!("cannot open {}: {err}", path.display()),
    })
}

/// VIDIOC_ENUM_FMT for one buffer type (the v4l crate only enumerates single-planar
/// capture, and the Pi's codec is multi-planar).
fn enum_formats(device: &v4l::Device, buffer_type: u32) -> Vec<v4l::format::Description> {
    let mut formats = Vec::new();
    for index in 0..128 {
        // SAFETY: v4l2_fmtdesc is plain data (zeroed is valid), and VIDIOC_ENUM_FMT
        // writes at most size_of::<v4l2_fmtdesc>() bytes into it.
        let mut desc: v4l::v4l_sys::v4l2_fmtdesc = unsafe { std::mem::zeroed() };
        desc.index = index;
        desc.type_ = buffer_type;
        let result = unsafe {
            v4l::v4l2::ioctl(
                device.handle().fd(),
                v4l::v4l2::vidioc::VIDIOC_ENUM_FMT,
                &mut desc as *mut _ as *mut std::os::raw::c_void,
            )
        };
        if result.is_err() {
            break;
        }
        formats.push(v4l::format::Description::from(desc));
    }
    formats
}

fn fourcc_text(fourcc: v4l::FourCC) -> String {
    fourcc.str().map_or_else(
        |_| format!("{:08x}", u32::from_le_bytes(fourcc.repr)),
        |s| s.trim_end().to_string(),
    )
}

fn fraction(f: v4l::Fraction) -> (u32, u32) {
    (f.numerator, f.denominator)
}

fn rates_at(device: &v4l::Device, fourcc: v4l::FourCC, width: u32, height: u32) -> Vec<Rate> {
    Capture::enum_frameintervals(device, fourcc, width, height)
        .unwrap_or_default()
        .into_iter()
        .map(|i| match i.interval {
            FrameIntervalEnum::Discrete(f) => Rate::Discrete(f.numerator, f.denominator),
            FrameIntervalEnum::Stepwise(s) => Rate::Stepwise {
                min: fraction(s.min),
                max: fraction(s.max),
                step: fraction(s.step),
            },
        })
        .collect()
}

fn formats_of(device: &v4l::Device, buffer_type: u32, with_sizes: bool) -> Vec<Format> {
    enum_formats(device, buffer_type)
        .into_iter()
        .map(|desc| {
            let sizes = if with_sizes {
                Capture::enum_framesizes(device, desc.fourcc)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| match s.size {
                        FrameSizeEnum::Discrete(d) => SizeRates {
                            rates: rates_at(device, desc.fourcc, d.width, d.height),
                            size: Size::Discrete {
                                width: d.width,
                                height: d.height,
                            },
                        },
                        FrameSizeEnum::Stepwise(s) => SizeRates {
                            rates: rates_at(device, desc.fourcc, s.max_width, s.max_height),
                            size: Size::Stepwise {
                                min_width: s.min_width,
                                max_width: s.max_width,
                                step_width: s.step_width,
                                min_height: s.min_height,
                                max_height: s.max_height,
                                step_height: s.step_height,
                            },
                        },
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Format {
                fourcc: fourcc_text(desc.fourcc),
                description: desc.description,
                compressed: desc.flags.contains(FormatFlags::COMPRESSED),
                sizes,
            }
        })
        .collect()
}

fn coded_names(formats: &[Format]) -> Vec<String> {
    formats
        .iter()
        .filter_map(|f| {
            CODED_FOURCCS
                .iter()
                .find(|(code, _)| *code == f.fourcc)
                .map(|(_, name)| name.to_string())
        })
        .collect()
}

/// Asks one node what it is (VIDIOC_QUERYCAP) and what it offers.
pub fn probe(path: &Path) -> Result<V4l2Device, String> {
    let device = open(path)?;
    let caps = device
        .query_caps()
        .map_err(|err| format!("{} answers no VIDIOC_QUERYCAP: {err}", path.display()))?;
    let flags = caps.capabilities;
    let (role, formats, input_formats) =
        if flags.intersects(CapFlags::VIDEO_M2M | CapFlags::VIDEO_M2M_MPLANE) {
            let mplane = flags.contains(CapFlags::VIDEO_M2M_MPLANE);
            let (emit, take) = if mplane {
                (BUF_VIDEO_CAPTURE_MPLANE, BUF_VIDEO_OUTPUT_MPLANE)
            } else {
                (BUF_VIDEO_CAPTURE, BUF_VIDEO_OUTPUT)
            };
            let emits = formats_of(&device, emit, false);
            let takes = formats_of(&device, take, false);
            let role = if !coded_names(&emits).is_empty() {
                Role::Encoder(coded_names(&emits))
            } else if !coded_names(&takes).is_empty() {
                Role::Decoder(coded_names(&takes))
            } else if emits.is_empty() && caps.card.contains("encode") {
                // The formats could not be listed; the card name is all we have.
                Role::Encoder(vec!["H.264".into()])
            } else {
                Role::Converter
            };
            (role, emits, takes)
        } else if flags.intersects(CapFlags::VIDEO_CAPTURE | CapFlags::VIDEO_CAPTURE_MPLANE) {
            let buffer = if flags.contains(CapFlags::VIDEO_CAPTURE) {
                BUF_VIDEO_CAPTURE
            } else {
                BUF_VIDEO_CAPTURE_MPLANE
            };
            (Role::Capture, formats_of(&device, buffer, true), Vec::new())
        } else if flags.contains(CapFlags::META_CAPTURE) {
            (Role::Metadata, Vec::new(), Vec::new())
        } else {
            (Role::Other, Vec::new(), Vec::new())
        };
    Ok(V4l2Device {
        path: path.to_owned(),
        driver: caps.driver,
        card: caps.card,
        bus: caps.bus,
        role,
        formats,
        input_formats,
    })
}

/// Checks that `path` is a memory-to-memory H.264 encoder (what v4l2h264enc drives),
/// returning why not.
pub fn check_h264_encoder(path: &str) -> Result<(), String> {
    let path = Path::new(path);
    if !path.exists() {
        return Err(format!(
            "the codec device {} does not exist (no bcm2835-codec: a Pi 5 or not a Pi)",
            path.display()
        ));
    }
    let device = probe(path)?;
    match &device.role {
        Role::Encoder(codecs) if codecs.iter().any(|c| c == "H.264") => Ok(()),
        Role::Encoder(codecs) => Err(format!(
            "{} ({}) encodes {} but not H.264",
            path.display(),
            device.card,
            codecs.join(", ")
        )),
        _ => Err(format!(
            "{} is {} ({}), not a memory-to-memory H.264 encoder",
            path.display(),
            device.card,
            device.driver
        )),
    }
}

/// Picks the input format for a camera: H.264 if it emits it at the size and rate (passed
/// through, no encoder of ours), else raw, else MJPEG. `Err` says what the camera
/// offers instead.
pub fn pick_input_format(
    formats: &[Format],
    width: u32,
    height: u32,
    fps: u32,
) -> Result<(InputFormat, String), String> {
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
    Err(format!(
        "the camera offers no usable format at {width}x{height} {fps} fps ({})",
        if offered.is_empty() {
            "no raw, MJPEG or H.264 format at all".to_string()
        } else {
            offered.join("; ")
        }
    ))
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
    /// Whether peercam has quirks for it.
    pub known: bool,
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
                    known: encode::quirks(&element).is_some(),
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
fn libcamera_cameras() -> Option<Vec<String>> {
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

fn role_text(role: &Role) -> String {
    match role {
        Role::Capture => "capture".into(),
        Role::Metadata => "metadata (not a picture)".into(),
        Role::Encoder(c) => format!("codec: {} encoder", c.join("/")),
        Role::Decoder(c) => format!("codec: {} decoder", c.join("/")),
        Role::Converter => "codec: converter / ISP".into(),
        Role::Other => "other".into(),
    }
}

/// The report `peercam devices` prints: V4L2 nodes, GStreamer encoders, and what the
/// board in `settings` would use here.
pub fn report(settings: &Settings) -> String {
    let mut out = String::new();
    let video = &settings.video;
    out.push_str("V4L2 video devices\n");
    let nodes = video_nodes();
    if nodes.is_empty() {
        out.push_str(
            "  none: this machine has no /dev/video* nodes (no USB camera plugged in, no \
             camera or codec driver loaded)\n",
        );
    }
    for node in &nodes {
        match probe(node) {
            Err(why) => {
                let _ = writeln!(out, "  {}: {why}", node.display());
            }
            Ok(dev) => {
                let _ = writeln!(
                    out,
                    "  {}  {}  [{}]  driver {}, bus {}",
                    dev.path.display(),
                    dev.card,
                    role_text(&dev.role),
                    dev.driver,
                    dev.bus
                );
                if dev.role == Role::Capture && dev.is_libcamera_node() {
                    out.push_str(
                        "      a CSI camera interface: use it through libcamera \
                         (video.source = \"libcamera\"), not v4l2src\n",
                    );
                }
                if dev.role == Role::Capture {
                    for f in &dev.formats {
                        let _ = writeln!(
                            out,
                            "      {:4}  {}{}",
                            f.fourcc,
                            f.description,
                            if f.compressed { " (compressed)" } else { "" }
                        );
                        for s in &f.sizes {
                            let rates: Vec<String> =
                                s.rates.iter().map(|r| r.to_string()).collect();
                            let _ = writeln!(
                                out,
                                "            {}  {} fps",
                                s.size,
                                if rates.is_empty() {
                                    "?".into()
                                } else {
                                    rates.join(", ")
                                }
                            );
                        }
                    }
                } else if !dev.formats.is_empty() || !dev.input_formats.is_empty() {
                    let list = |fs: &[Format]| {
                        fs.iter()
                            .map(|f| f.fourcc.clone())
                            .collect::<Vec<_>>()
                            .join(" ")
                    };
                    let _ = writeln!(
                        out,
                        "      takes {}; emits {}",
                        list(&dev.input_formats),
                        list(&dev.formats)
                    );
                }
            }
        }
    }
    if let Some(cameras) = libcamera_cameras() {
        if cameras.is_empty() {
            out.push_str("  libcamera: no camera module found\n");
        }
        for camera in cameras {
            let _ = writeln!(out, "  libcamera: {camera}");
        }
    }

    out.push_str("\nH.264 and VP8 encoders in GStreamer\n");
    let encoders = gst_encoders();
    if encoders.is_empty() {
        out.push_str("  none (install gstreamer1.0-plugins-ugly for x264enc)\n");
    }
    for e in &encoders {
        let _ = writeln!(
            out,
            "  {:16} {:6} {:34} {}{}",
            e.element,
            e.codec,
            e.long_name,
            if e.hardware { "hardware" } else { "software" },
            if e.known {
                ""
            } else {
                ", not in peercam's quirks table"
            }
        );
    }

    let _ = writeln!(out, "\nWhat the board {:?} would use here", settings.board);
    let source = match video.source {
        SourceKind::Test => "test pattern (videotestsrc)".to_string(),
        SourceKind::V4l2 => format!(
            "V4L2 camera {} (v4l2src)",
            video.device.as_deref().unwrap_or("/dev/video0")
        ),
        SourceKind::Libcamera => format!(
            "camera module through libcamera (libcamerasrc{})",
            video
                .device
                .as_deref()
                .map(|d| format!(", camera {d}"))
                .unwrap_or_default()
        ),
    };
    let _ = writeln!(out, "  source        {source}");
    let _ = writeln!(
        out,
        "  picture       {}x{} at {} fps, {} kbit/s ({}..{}), keyframe every {} frames",
        video.width,
        video.height,
        video.fps,
        video.bitrate_kbps,
        video.min_bitrate_kbps,
        video.max_bitrate_kbps,
        video.keyframe_interval
    );
    match pipeline::plan(video) {
        Err(err) => {
            let _ = writeln!(out, "  problem       {err:#}");
        }
        Ok(plan) => {
            let _ = writeln!(
                out,
                "  input format  {} ({})",
                plan.input.as_str(),
                plan.input_note
            );
            match plan.encoder {
                Some(q) => {
                    let _ = writeln!(
                        out,
                        "  encoder       {} ({}), constrained baseline, profile-level-id {}",
                        q.element,
                        if q.hardware { "hardware" } else { "software" },
                        encode::profile_level_id(video.width, video.height, video.fps)
                    );
                }
                None => {
                    out.push_str(
                        "  encoder       none: the camera's H.264 is passed through (no bitrate \
                         adaptation; keyframes come at the camera's own interval)\n",
                    );
                }
            }
            for why in &plan.skipped {
                let _ = writeln!(out, "  skipped       {why}");
            }
            let _ = writeln!(
                out,
                "  VP8 fallback  {}",
                if plan.vp8 {
                    "vp8enc behind the valve vp8valve, for callers without H.264"
                } else if video.vp8_fallback {
                    "off: not with H.264 passthrough"
                } else {
                    "off (video.vp8_fallback = false)"
                }
            );
            match plan.check_elements(video) {
                Ok(()) => out.push_str("  elements      all installed\n"),
                Err(err) => {
                    let _ = writeln!(out, "  elements      {err:#}");
                }
            }
            let _ = writeln!(out, "  pipeline      {}", plan.description);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.contains("YUYV not at 1920x1080"), "{err}");
        let err = pick_input_format(&webcam[..1], 1280, 720, 30).unwrap_err();
        assert!(err.contains("YUYV at 1280x720 only 10 fps"), "{err}");
    }

    #[test]
    fn stepwise_sizes_and_rates() {
        let size = Size::Stepwise {
            min_width: 32,
            max_width: 1920,
            step_width: 2,
            min_height: 32,
            max_height: 1080,
            step_height: 2,
        };
        assert!(size.holds(1280, 720));
        assert!(!size.holds(1281, 720));
        assert!(!size.holds(2560, 1440));
        let rate = Rate::Stepwise {
            min: (1, 60),
            max: (1, 1),
            step: (1, 1),
        };
        assert!(rate.holds(30) && rate.holds(60) && !rate.holds(90));
        assert_eq!(rate.to_string(), "1-60");
        assert!(!Rate::Discrete(1001, 30000).holds(30));
        assert_eq!(Rate::Discrete(1001, 30000).to_string(), "29.97");
    }

    #[test]
    fn missing_codec_device_says_so() {
        let err = check_h264_encoder("/dev/video-peercam-none").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
