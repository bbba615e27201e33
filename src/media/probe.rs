//! What video hardware this machine has: the V4L2 nodes (cameras, and memory-to-memory
//! codecs such as the Pi's bcm2835-codec) through VIDIOC_QUERYCAP and the format, frame
//! size and frame interval enumerations. The pipeline's choices (input format, whether a
//! hardware encoder is there) and the `peercam devices` report both read it; it reads
//! nothing of theirs, so it sits below both.

use std::path::{Path, PathBuf};

use thiserror::Error;
use v4l::capability::Flags as CapFlags;
use v4l::format::description::Flags as FormatFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;

use super::settings::InputFormat;

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

/// Why a V4L2 node could not be asked what it is; each says what to do.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// No such node.
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// The node is there but this user may not open it.
    #[error("cannot open {}: permission denied (add the user to the group video)", .0.display())]
    PermissionDenied(PathBuf),
    /// Opening failed otherwise.
    #[error("cannot open {}: {error}", path.display())]
    Open {
        /// The node.
        path: PathBuf,
        /// What open(2) said.
        error: std::io::Error,
    },
    /// The node is no V4L2 device (or a broken one).
    #[error("{} answers no VIDIOC_QUERYCAP: {error}", path.display())]
    QueryCap {
        /// The node.
        path: PathBuf,
        /// What the ioctl said.
        error: std::io::Error,
    },
}

/// Opens a node.
fn open(path: &Path) -> Result<v4l::Device, ProbeError> {
    if !path.exists() {
        return Err(ProbeError::Missing(path.to_owned()));
    }
    v4l::Device::with_path(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::PermissionDenied => ProbeError::PermissionDenied(path.to_owned()),
        _ => ProbeError::Open {
            path: path.to_owned(),
            error,
        },
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
pub fn probe(path: &Path) -> Result<V4l2Device, ProbeError> {
    let device = open(path)?;
    let caps = device.query_caps().map_err(|error| ProbeError::QueryCap {
        path: path.to_owned(),
        error,
    })?;
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

/// Why a codec device cannot serve as the H.264 encoder.
#[derive(Debug, Error)]
pub enum EncoderDeviceError {
    /// No such node.
    #[error("the codec device {} does not exist (no bcm2835-codec: a Pi 5 or not a Pi)", .0.display())]
    Missing(PathBuf),
    /// The node could not be asked.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A memory-to-memory encoder, but of other codecs.
    #[error("{} ({card}) encodes {} but not H.264", path.display(), codecs.join(", "))]
    NotH264 {
        /// The node.
        path: PathBuf,
        /// The driver's card name.
        card: String,
        /// What it does encode.
        codecs: Vec<String>,
    },
    /// Not a memory-to-memory encoder at all.
    #[error("{} is {card} ({driver}), not a memory-to-memory H.264 encoder", path.display())]
    NotAnEncoder {
        /// The node.
        path: PathBuf,
        /// The driver's card name.
        card: String,
        /// The driver.
        driver: String,
    },
}

/// Checks that `path` is a memory-to-memory H.264 encoder (what v4l2h264enc drives).
pub fn check_h264_encoder(path: &str) -> Result<(), EncoderDeviceError> {
    let path = Path::new(path);
    if !path.exists() {
        return Err(EncoderDeviceError::Missing(path.to_owned()));
    }
    let device = probe(path)?;
    match device.role {
        Role::Encoder(codecs) if codecs.iter().any(|c| c == "H.264") => Ok(()),
        Role::Encoder(codecs) => Err(EncoderDeviceError::NotH264 {
            path: path.to_owned(),
            card: device.card,
            codecs,
        }),
        _ => Err(EncoderDeviceError::NotAnEncoder {
            path: path.to_owned(),
            card: device.card,
            driver: device.driver,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(err, EncoderDeviceError::Missing(_)), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = probe(Path::new("/dev/video-peercam-none")).unwrap_err();
        assert_eq!(err.to_string(), "/dev/video-peercam-none does not exist");
    }
}
