//! `peercam devices`: what video hardware this machine has
//! ([`crate::media::probe`], [`crate::media::registry`]) and what the board's settings
//! would make of it here ([`crate::media::pipeline::plan`]).

use std::fmt::Write as _;

use crate::config::Settings;
use crate::media::probe::{Format, Role, probe, video_nodes};
use crate::media::settings::SourceKind;
use crate::media::{encode, pipeline, registry};

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
/// board in `settings` would use here. Call [`crate::media::init`] first.
pub fn report(settings: &Settings) -> String {
    let mut out = String::new();
    nodes(&mut out);
    encoders(&mut out);
    board(&mut out, settings);
    out
}

/// The V4L2 nodes and libcamera's cameras.
fn nodes(out: &mut String) {
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
    if let Some(cameras) = registry::libcamera_cameras() {
        if cameras.is_empty() {
            out.push_str("  libcamera: no camera module found\n");
        }
        for camera in cameras {
            let _ = writeln!(out, "  libcamera: {camera}");
        }
    }
}

/// The H.264 and VP8 encoders GStreamer has, and which peercam knows.
fn encoders(out: &mut String) {
    out.push_str("\nH.264 and VP8 encoders in GStreamer\n");
    let encoders = registry::gst_encoders();
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
            if encode::quirks(&e.element).is_some() {
                ""
            } else {
                ", not in peercam's quirks table"
            }
        );
    }
}

/// What the board's settings come to on this machine: the pipeline plan and its reasons.
fn board(out: &mut String, settings: &Settings) {
    let video = &settings.video;
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
}
